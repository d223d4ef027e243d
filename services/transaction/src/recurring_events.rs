//! The `recurring.*` events: what other services learn of a user's
//! recurring rules (analytics projects cash flow from them with the kit's
//! `schedule`, the code the worker creates occurrences with).
//!
//! Each is recorded in `ledger.outbox` in the transaction that made the
//! change: `recurring.created` when a rule is made, `recurring.updated`
//! when the API changes it and whenever the worker advances it (its
//! `occurrences_created` and `next_occurrence` move), `recurring.deleted`
//! when it goes. `created` and `updated` carry the rule's whole state, so a
//! consumer can replace what it holds by `rule_id`. `version` is the
//! version of the payload's contract: adding a field keeps it, changing or
//! removing one raises it. `docs/events.md` is the reference.
//!
//! The state is read by one query, `select_state!`, for the live events and
//! for the snapshot ([`snapshot`]) alike.

use anyhow::Context;
use chrono::NaiveDate;
use freedumb_kit::db::Db;
use freedumb_kit::events::{SnapshotEvent, SnapshotStream};
use freedumb_kit::schedule::Frequency;
use futures::StreamExt;
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::SCHEMA;
use crate::events::Versioned;

pub const CREATED: &str = "recurring.created";
pub const UPDATED: &str = "recurring.updated";
pub const DELETED: &str = "recurring.deleted";

/// The version of every `recurring.*` payload.
pub const VERSION: u32 = 1;

/// The payload of `recurring.created` and `recurring.updated` (`version`
/// beside these fields).
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct RuleState {
    pub rule_id: Uuid,
    pub user_id: Uuid,
    pub account_id: Uuid,
    /// The account's.
    pub currency: String,
    /// Signed: negative leaves the account.
    pub amount_minor: i64,
    pub payee: Option<String>,
    pub category_id: Option<Uuid>,
    pub frequency: Frequency,
    pub interval: i32,
    pub start_date: NaiveDate,
    /// For monthly and yearly rules; clamped to shorter months.
    pub day_of_month: i16,
    pub end_date: Option<NaiveDate>,
    pub max_occurrences: Option<i32>,
    /// Occurrences created (or skipped past the catch-up window) so far:
    /// the index of the next one in the rule's `Schedule`.
    pub occurrences_created: i32,
    /// `None` once the rule has ended.
    pub next_occurrence: Option<NaiveDate>,
    pub active: bool,
}

/// The payload of `recurring.deleted`.
#[derive(Debug, Serialize)]
pub struct RuleDeleted {
    pub version: u32,
    pub rule_id: Uuid,
    pub user_id: Uuid,
}

/// The one read of a rule's event state (a macro, so that the snapshot's
/// query is a `&'static str` too).
macro_rules! select_state {
    () => {
        "SELECT r.id AS rule_id, r.user_id, r.account_id, a.currency, r.amount AS amount_minor, r.payee, r.category_id,
                r.frequency, r.interval, r.start_date, r.day_of_month, r.end_date, r.max_occurrences,
                r.occurrences_created, r.next_occurrence, r.active
         FROM ledger.recurring_rules r JOIN ledger.accounts a ON a.id = r.account_id"
    };
}

fn payload(state: &RuleState) -> Versioned<'_, RuleState> {
    Versioned { version: VERSION, payload: state }
}

/// Records `kind` (`recurring.created` or `.updated`) with the rule's state
/// as it is now in the caller's database transaction.
pub(crate) async fn changed(conn: &mut PgConnection, kind: &'static str, rule_id: Uuid) -> anyhow::Result<()> {
    let state: RuleState = sqlx::query_as(concat!(select_state!(), " WHERE r.id = $1"))
        .bind(rule_id)
        .fetch_one(&mut *conn)
        .await
        .context("failed to read a recurring rule for its event")?;
    freedumb_kit::events::record(conn, SCHEMA, kind, &payload(&state)).await?;
    Ok(())
}

pub(crate) async fn deleted(conn: &mut PgConnection, rule_id: Uuid, user_id: Uuid) -> anyhow::Result<()> {
    freedumb_kit::events::record(conn, SCHEMA, DELETED, &RuleDeleted { version: VERSION, rule_id, user_id }).await?;
    Ok(())
}

/// One `recurring.created` per rule, streamed in id order.
pub(crate) fn snapshot(db: &Db) -> SnapshotStream<'_> {
    sqlx::query_as::<_, RuleState>(concat!(select_state!(), " ORDER BY r.id"))
        .fetch(&db.pool)
        .map(|state| {
            let state = state.context("failed to read a recurring rule for the snapshot")?;
            SnapshotEvent::new(CREATED, &payload(&state))
        })
        .boxed()
}

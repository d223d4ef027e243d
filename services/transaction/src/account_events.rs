//! The `account.*` events: what other services learn of a user's accounts
//! (analytics needs each account's currency, kind and opening balance for
//! balances and net worth).
//!
//! Each is recorded in `ledger.outbox` in the transaction that made the
//! change, and each carries the account's whole state, so a consumer can
//! replace what it holds by `account_id`, in whatever order they arrive.
//! `account.created` when it is opened, `account.archived` when it is
//! archived, `account.updated` for any other change (un-archiving
//! included). The account number is never in them. `version` is the version
//! of the payload's contract: adding a field keeps it, changing or removing
//! one raises it. `docs/events.md` is the reference.
//!
//! The state is read by one query, `select_state!`, for the live events
//! and for the snapshot ([`snapshot`]) alike.

use anyhow::Context;
use freedumb_kit::db::Db;
use freedumb_kit::events::{SnapshotEvent, SnapshotStream};
use futures::StreamExt;
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::SCHEMA;
use crate::accounts::AccountKind;
use crate::events::Versioned;

pub const CREATED: &str = "account.created";
pub const UPDATED: &str = "account.updated";
pub const ARCHIVED: &str = "account.archived";

/// The version of every `account.*` payload.
pub const VERSION: u32 = 1;

/// The payload of every `account.*` event: the account as it now is.
/// (`version` is beside these fields.)
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct AccountState {
    pub account_id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub kind: AccountKind,
    pub currency: String,
    pub opening_balance_minor: i64,
    pub archived: bool,
}

/// The one read of an account's event state (a macro, so that the
/// snapshot's query is a `&'static str` too).
macro_rules! select_state {
    () => {
        "SELECT id AS account_id, user_id, name, kind, currency, opening_balance AS opening_balance_minor,
                archived_at IS NOT NULL AS archived
         FROM ledger.accounts"
    };
}

fn payload(state: &AccountState) -> Versioned<'_, AccountState> {
    Versioned { version: VERSION, payload: state }
}

/// Records `kind` with the account's state as it is now in the caller's
/// database transaction.
pub(crate) async fn changed(conn: &mut PgConnection, kind: &'static str, account_id: Uuid) -> anyhow::Result<()> {
    let state: AccountState = sqlx::query_as(concat!(select_state!(), " WHERE id = $1"))
        .bind(account_id)
        .fetch_one(&mut *conn)
        .await
        .context("failed to read an account for its event")?;
    freedumb_kit::events::record(conn, SCHEMA, kind, &payload(&state)).await?;
    Ok(())
}

/// One `account.created` per account, archived ones included (with
/// `archived: true`), streamed in id order.
pub(crate) fn snapshot(db: &Db) -> SnapshotStream<'_> {
    sqlx::query_as::<_, AccountState>(concat!(select_state!(), " ORDER BY id"))
        .fetch(&db.pool)
        .map(|state| {
            let state = state.context("failed to read an account for the snapshot")?;
            SnapshotEvent::new(CREATED, &payload(&state))
        })
        .boxed()
}

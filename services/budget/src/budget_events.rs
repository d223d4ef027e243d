//! The `budget.*` events of a budget's life: what other services learn of
//! a user's budgets (analytics sets them against spending).
//!
//! Each is recorded in `budget.outbox` in the transaction that made the
//! change. `budget.created` and `budget.updated` carry the budget's whole
//! state, so a consumer can replace what it holds by `budget_id`;
//! `budget.deleted` names the budget and its owner. `version` is the
//! version of the payload's contract: adding a field keeps it, changing or
//! removing one raises it. `docs/events.md` is the reference.
//!
//! The payload is built by one function, [`BudgetChanged::of`], from the
//! row as stored, for the live events and for the snapshot ([`snapshot`]).

use anyhow::Context;
use chrono::NaiveDate;
use freedumb_kit::db::Db;
use freedumb_kit::events::{SnapshotEvent, SnapshotStream};
use freedumb_kit::period::Period;
use futures::StreamExt;
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::SCHEMA;
use crate::budgets::{self, BudgetRow};

pub const CREATED: &str = "budget.created";
pub const UPDATED: &str = "budget.updated";
pub const DELETED: &str = "budget.deleted";

/// The version of every `budget.created|updated|deleted` payload.
pub const VERSION: u32 = 1;

/// The payload of `budget.created` and `budget.updated`.
#[derive(Debug, Serialize)]
pub struct BudgetChanged<'a> {
    pub version: u32,
    pub budget_id: Uuid,
    pub user_id: Uuid,
    pub category_id: Uuid,
    pub currency: &'a str,
    /// Per period, before any rollover.
    pub amount_minor: i64,
    pub period: Period,
    pub rollover: bool,
    /// The first day of its first period.
    pub starts_on: NaiveDate,
}

impl<'a> BudgetChanged<'a> {
    pub(crate) fn of(row: &'a BudgetRow) -> Self {
        BudgetChanged {
            version: VERSION,
            budget_id: row.id,
            user_id: row.user_id,
            category_id: row.category_id,
            currency: &row.currency,
            amount_minor: row.amount,
            period: row.period,
            rollover: row.rollover,
            starts_on: row.starts_on,
        }
    }
}

/// The payload of `budget.deleted`.
#[derive(Debug, Serialize)]
pub struct BudgetDeleted {
    pub version: u32,
    pub budget_id: Uuid,
    pub user_id: Uuid,
}

/// Records `kind` (`budget.created` or `.updated`) with the budget as
/// stored, on the caller's open transaction.
pub(crate) async fn changed(conn: &mut PgConnection, kind: &'static str, row: &BudgetRow) -> anyhow::Result<()> {
    freedumb_kit::events::record(conn, SCHEMA, kind, &BudgetChanged::of(row)).await?;
    Ok(())
}

pub(crate) async fn deleted(conn: &mut PgConnection, budget_id: Uuid, user_id: Uuid) -> anyhow::Result<()> {
    let payload = BudgetDeleted { version: VERSION, budget_id, user_id };
    freedumb_kit::events::record(conn, SCHEMA, DELETED, &payload).await?;
    Ok(())
}

/// One `budget.created` per budget, streamed in id order.
pub(crate) fn snapshot(db: &Db) -> SnapshotStream<'_> {
    sqlx::query_as::<_, BudgetRow>(budgets::SELECT_ALL_BY_ID)
        .fetch(&db.pool)
        .map(|row| {
            let row = row.context("failed to read a budget for the snapshot")?;
            SnapshotEvent::new(CREATED, &BudgetChanged::of(&row))
        })
        .boxed()
}

//! The events the transaction service records, and their payloads.
//!
//! Each is written to `ledger.outbox` in the transaction that made the
//! change (`freedumb_kit::events::record`) and relayed to RabbitMQ with the
//! routing key as its type. Amounts are integer minor units of `currency`.
//! `transaction.created` and `transaction.updated` carry the whole new state
//! of the transaction, so a consumer can upsert by `transaction_id` and never
//! needs the previous version. Every payload has a `version`, the version of
//! its contract ([`VERSION`]): adding a field keeps it, changing or removing
//! one raises it. `docs/events.md` is the reference.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::SCHEMA;

/// The version of every `transaction.*` payload.
pub const VERSION: u32 = 1;

pub const CREATED: &str = "transaction.created";
pub const UPDATED: &str = "transaction.updated";
pub const DELETED: &str = "transaction.deleted";

/// How a transaction's amount divides among categories: one entry for a
/// plain transaction, one per split for a split one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub category_id: Option<Uuid>,
    /// The category's parent, so a budget on "Food" counts "Groceries".
    pub parent_category_id: Option<Uuid>,
    pub amount_minor: i64,
}

/// The payload of `transaction.created` and `transaction.updated`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransactionState {
    pub transaction_id: Uuid,
    pub user_id: Uuid,
    pub account_id: Uuid,
    pub currency: String,
    pub amount_minor: i64,
    pub date: NaiveDate,
    /// Set on the two legs of a transfer, which budgets do not count as spending.
    pub transfer_id: Option<Uuid>,
    pub allocations: Vec<Allocation>,
}

/// The payload of `transaction.deleted`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransactionDeleted {
    pub transaction_id: Uuid,
    pub user_id: Uuid,
}

/// A payload with its contract's version beside its fields:
/// `{"version": 1, ...}`.
#[derive(Serialize)]
struct Versioned<'a, T> {
    version: u32,
    #[serde(flatten)]
    payload: &'a T,
}

pub async fn changed(conn: &mut PgConnection, kind: &'static str, state: &TransactionState) -> anyhow::Result<()> {
    freedumb_kit::events::record(conn, SCHEMA, kind, &Versioned { version: VERSION, payload: state }).await?;
    Ok(())
}

pub async fn deleted(conn: &mut PgConnection, transaction_id: Uuid, user_id: Uuid) -> anyhow::Result<()> {
    let payload = Versioned { version: VERSION, payload: &TransactionDeleted { transaction_id, user_id } };
    freedumb_kit::events::record(conn, SCHEMA, DELETED, &payload).await?;
    Ok(())
}

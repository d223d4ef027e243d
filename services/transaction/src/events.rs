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
//!
//! A transaction's state is read from the database by one function,
//! [`states`], whichever path changed it (the API, the CSV import, the
//! recurring worker) and for the snapshot ([`snapshot`]), so the payload a
//! consumer catches up from is the payload it would have had live.

use std::collections::HashMap;

use anyhow::Context;
use chrono::NaiveDate;
use freedumb_kit::db::Db;
use freedumb_kit::events::{SnapshotEvent, SnapshotStream};
use futures::{StreamExt, TryStreamExt};
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
    /// As stored: trimmed, `None` when there is none.
    pub payee: Option<String>,
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
pub(crate) struct Versioned<'a, T> {
    pub version: u32,
    #[serde(flatten)]
    pub payload: &'a T,
}

/// Records `kind` (`transaction.created` or `.updated`) for each of `ids`,
/// with its state as it is now in the caller's database transaction.
pub async fn changed(conn: &mut PgConnection, kind: &'static str, ids: &[Uuid]) -> anyhow::Result<()> {
    for state in states(conn, Which::Ids(ids)).await? {
        freedumb_kit::events::record(conn, SCHEMA, kind, &Versioned { version: VERSION, payload: &state }).await?;
    }
    Ok(())
}

/// Which transactions [`states`] reads.
enum Which<'a> {
    Ids(&'a [Uuid]),
    /// A page of the snapshot: the first `limit` after `after`, in id order.
    After {
        after: Option<Uuid>,
        limit: i64,
    },
}

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    user_id: Uuid,
    account_id: Uuid,
    currency: String,
    amount: i64,
    date: NaiveDate,
    payee: Option<String>,
    transfer_id: Option<Uuid>,
    category_id: Option<Uuid>,
    parent_category_id: Option<Uuid>,
}

/// The state of each transaction `which` names, in id order: the one
/// builder of the `transaction.created|updated` payload. A transaction with
/// splits allocates its amount by split (in their order), any other to its
/// category, each with the category's parent.
async fn states(conn: &mut PgConnection, which: Which<'_>) -> anyhow::Result<Vec<TransactionState>> {
    const SELECT: &str = "
        SELECT t.id, t.user_id, t.account_id, a.currency, t.amount, t.date, t.payee, t.transfer_id, t.category_id,
               c.parent_id AS parent_category_id
        FROM ledger.transactions t JOIN ledger.accounts a ON a.id = t.account_id
        LEFT JOIN ledger.categories c ON c.id = t.category_id";
    let rows: Vec<Row> = match which {
        Which::Ids(ids) => sqlx::query_as(&format!("{SELECT} WHERE t.id = ANY($1) ORDER BY t.id"))
            .bind(ids)
            .fetch_all(&mut *conn)
            .await
            .context("failed to read transactions for their events")?,
        Which::After { after, limit } => {
            // The nil id sorts before every real one; a plain `t.id > $1`
            // lets each page start where the last ended in the primary key.
            sqlx::query_as(&format!("{SELECT} WHERE t.id > $1 ORDER BY t.id LIMIT $2"))
                .bind(after.unwrap_or(Uuid::nil()))
                .bind(limit)
                .fetch_all(&mut *conn)
                .await
                .context("failed to read a page of transactions for the snapshot")?
        }
    };
    let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
    let splits: Vec<(Uuid, Option<Uuid>, Option<Uuid>, i64)> = sqlx::query_as(
        "SELECT s.transaction_id, s.category_id, c.parent_id, s.amount FROM ledger.transaction_splits s
         LEFT JOIN ledger.categories c ON c.id = s.category_id
         WHERE s.transaction_id = ANY($1) ORDER BY s.transaction_id, s.position",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .context("failed to read splits for events")?;
    let mut by_transaction: HashMap<Uuid, Vec<Allocation>> = HashMap::new();
    for (transaction_id, category_id, parent_category_id, amount_minor) in splits {
        by_transaction.entry(transaction_id).or_default().push(Allocation {
            category_id,
            parent_category_id,
            amount_minor,
        });
    }
    Ok(rows
        .into_iter()
        .map(|row| {
            let allocations = by_transaction.remove(&row.id).unwrap_or_else(|| {
                vec![Allocation {
                    category_id: row.category_id,
                    parent_category_id: row.parent_category_id,
                    amount_minor: row.amount,
                }]
            });
            TransactionState {
                transaction_id: row.id,
                user_id: row.user_id,
                account_id: row.account_id,
                currency: row.currency,
                amount_minor: row.amount,
                date: row.date,
                payee: row.payee,
                transfer_id: row.transfer_id,
                allocations,
            }
        })
        .collect())
}

/// Transactions per page of the snapshot: enough that the queries cost
/// little per transaction, few enough that a page is small in memory.
const SNAPSHOT_PAGE: i64 = 1000;

/// One `transaction.created` per transaction, in id order, a page at a
/// time (keyset on the id), so a ledger of any size streams in bounded
/// memory. The pages are read in one read-only REPEATABLE READ transaction,
/// so together they are one consistent state.
pub(crate) fn snapshot(db: &Db) -> SnapshotStream<'_> {
    struct Pages {
        tx: sqlx::Transaction<'static, sqlx::Postgres>,
        after: Option<Uuid>,
    }
    let start = async move {
        let mut tx = db.pool.begin().await.context("failed to begin the transactions' snapshot")?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .context("failed to make the snapshot's transaction repeatable")?;
        anyhow::Ok(Pages { tx, after: None })
    };
    futures::stream::once(start)
        .map_ok(|pages| {
            futures::stream::try_unfold(Some(pages), |pages| async move {
                let Some(mut pages) = pages else { return anyhow::Ok(None) };
                let page = states(&mut pages.tx, Which::After { after: pages.after, limit: SNAPSHOT_PAGE }).await?;
                let Some(last) = page.last() else { return Ok(None) };
                pages.after = Some(last.transaction_id);
                // A short page is the last: no query for an empty one.
                let next = (page.len() as i64 == SNAPSHOT_PAGE).then_some(pages);
                Ok(Some((page, next)))
            })
        })
        .try_flatten()
        .map_ok(|page| {
            futures::stream::iter(
                page.into_iter()
                    .map(|state| SnapshotEvent::new(CREATED, &Versioned { version: VERSION, payload: &state })),
            )
        })
        .try_flatten()
        .boxed()
}

pub async fn deleted(conn: &mut PgConnection, transaction_id: Uuid, user_id: Uuid) -> anyhow::Result<()> {
    let payload = Versioned { version: VERSION, payload: &TransactionDeleted { transaction_id, user_id } };
    freedumb_kit::events::record(conn, SCHEMA, DELETED, &payload).await?;
    Ok(())
}

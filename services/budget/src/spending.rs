//! Keeps `budget.spending` current from the transaction service's events,
//! and announces budget thresholds as spending crosses them.
//!
//! `transaction.created` and `.updated` carry the transaction's whole state,
//! so both replace its rows; `.deleted` removes them. Replaying an event
//! therefore changes nothing, on top of the consumer's inbox, which already
//! hands each event id to this handler once. Transfers are not spending.

use anyhow::Context;
use freedumb_kit::date::IsoDate;
use freedumb_kit::events::{Event, EventHandler, HandleError};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::budgets::{self, BudgetRow, THRESHOLDS};
use crate::{SCHEMA, summary};

/// The event this service announces when a budget crosses a threshold.
pub const THRESHOLD_CROSSED: &str = "budget.threshold_crossed";

/// The payload versions of `transaction.*` this build understands.
const TRANSACTION_VERSION: u32 = 1;

/// The transaction service's event payloads (its `events` module), as far
/// as budgets need them. Services share the contract, never the code.
///
/// A transaction's date is an API date (`YYYY-MM-DD`, 1900–9999) by that
/// contract; an event with any other is malformed, and poison.
#[derive(Debug, Deserialize)]
struct TransactionState {
    /// Absent in events recorded before payloads were versioned: those are
    /// version 1.
    #[serde(default = "first_version")]
    version: u32,
    transaction_id: Uuid,
    user_id: Uuid,
    currency: String,
    date: IsoDate,
    transfer_id: Option<Uuid>,
    allocations: Vec<Allocation>,
}

#[derive(Debug, Deserialize)]
struct Allocation {
    category_id: Option<Uuid>,
    parent_category_id: Option<Uuid>,
    amount_minor: i64,
}

#[derive(Debug, Deserialize)]
struct TransactionDeleted {
    #[serde(default = "first_version")]
    version: u32,
    transaction_id: Uuid,
    user_id: Uuid,
}

fn first_version() -> u32 {
    1
}

/// A payload of a version this build does not know is dead-lettered, to be
/// replayed once budgets understand it, rather than misread.
fn check_version(event: &Event, version: u32) -> Result<(), HandleError> {
    if version == TRANSACTION_VERSION {
        return Ok(());
    }
    Err(HandleError::poison(anyhow::anyhow!(
        "a {} event has payload version {version}, and budgets understand {TRANSACTION_VERSION}",
        event.kind
    )))
}

pub struct Spending;

impl EventHandler for Spending {
    fn handle<'a>(&'a self, conn: &'a mut PgConnection, event: &'a Event) -> BoxFuture<'a, Result<(), HandleError>> {
        Box::pin(async move {
            match event.kind.as_str() {
                "transaction.created" | "transaction.updated" => {
                    let state: TransactionState = event.data_as()?;
                    check_version(event, state.version)?;
                    replace(conn, &state).await?;
                    summary::bump(conn, state.user_id).await?;
                    for budget in affected(conn, &state).await? {
                        check_thresholds(conn, &budget, state.date).await?;
                    }
                }
                "transaction.deleted" => {
                    let deleted: TransactionDeleted = event.data_as()?;
                    check_version(event, deleted.version)?;
                    sqlx::query("DELETE FROM budget.spending WHERE transaction_id = $1 AND user_id = $2")
                        .bind(deleted.transaction_id)
                        .bind(deleted.user_id)
                        .execute(&mut *conn)
                        .await?;
                    summary::bump(conn, deleted.user_id).await?;
                }
                // Kinds added later are not ours to fail on.
                _ => {}
            }
            Ok(())
        })
    }
}

async fn replace(conn: &mut PgConnection, state: &TransactionState) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM budget.spending WHERE transaction_id = $1")
        .bind(state.transaction_id)
        .execute(&mut *conn)
        .await
        .context("failed to clear spending")?;
    if state.transfer_id.is_some() {
        return Ok(());
    }
    for (position, allocation) in state.allocations.iter().enumerate() {
        sqlx::query(
            "INSERT INTO budget.spending (transaction_id, position, user_id, category_id, parent_category_id, currency, date, amount)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(state.transaction_id)
        .bind(i16::try_from(position).unwrap_or(i16::MAX))
        .bind(state.user_id)
        .bind(allocation.category_id)
        .bind(allocation.parent_category_id)
        .bind(&state.currency)
        .bind(state.date.get())
        .bind(allocation.amount_minor)
        .execute(&mut *conn)
        .await
        .context("failed to record spending")?;
    }
    Ok(())
}

/// The user's budgets that this transaction's categories count towards.
async fn affected(conn: &mut PgConnection, state: &TransactionState) -> anyhow::Result<Vec<BudgetRow>> {
    let categories: Vec<Uuid> =
        state.allocations.iter().flat_map(|a| [a.category_id, a.parent_category_id]).flatten().collect();
    if categories.is_empty() {
        return Ok(Vec::new());
    }
    Ok(budgets::for_user(conn, state.user_id)
        .await?
        .into_iter()
        .filter(|b| b.currency == state.currency && categories.contains(&b.category_id))
        .collect())
}

/// The payload of `budget.threshold_crossed` (docs/events.md).
#[derive(Debug, Serialize)]
struct ThresholdCrossed {
    /// The payload's contract version.
    version: u32,
    budget_id: Uuid,
    user_id: Uuid,
    category_id: Uuid,
    period_start: IsoDate,
    /// Percent of the budgeted amount: 80 or 100.
    threshold: i16,
    currency: String,
    budgeted_minor: i64,
    spent_minor: i64,
}

/// Announces each threshold the budget has reached in the period containing
/// `date`, once per period and threshold.
pub(crate) async fn check_thresholds(conn: &mut PgConnection, budget: &BudgetRow, date: IsoDate) -> anyhow::Result<()> {
    let measured = budgets::measure(conn, budget, date).await?;
    for threshold in THRESHOLDS {
        if !measured.reached(threshold) {
            continue;
        }
        let first_time = sqlx::query(
            "INSERT INTO budget.threshold_crossings (budget_id, period_start, threshold) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(budget.id)
        .bind(measured.period_start.get())
        .bind(threshold)
        .execute(&mut *conn)
        .await
        .context("failed to record a threshold crossing")?
        .rows_affected()
            == 1;
        if first_time {
            let crossed = ThresholdCrossed {
                version: 1,
                budget_id: budget.id,
                user_id: budget.user_id,
                category_id: budget.category_id,
                period_start: measured.period_start,
                threshold,
                currency: budget.currency.clone(),
                budgeted_minor: measured.budgeted,
                spent_minor: measured.spent,
            };
            freedumb_kit::events::record(conn, SCHEMA, THRESHOLD_CROSSED, &crossed).await?;
        }
    }
    Ok(())
}

//! `budget.created|updated|deleted` (whole states) into `analytics.budgets`.

use anyhow::Context;
use freedumb_kit::date::IsoDate;
use freedumb_kit::events::{Event, EventHandler, HandleError};
use futures::future::BoxFuture;
use serde::Deserialize;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{currency, payload, tombstone};
use freedumb_kit::period::Period;

#[derive(Debug, Deserialize)]
struct Budget {
    budget_id: Uuid,
    user_id: Uuid,
    category_id: Uuid,
    currency: String,
    amount_minor: i64,
    period: Period,
    rollover: bool,
    starts_on: IsoDate,
}

#[derive(Debug, Deserialize)]
struct BudgetDeleted {
    budget_id: Uuid,
    user_id: Uuid,
}

pub struct Budgets;

impl EventHandler for Budgets {
    fn handle<'a>(&'a self, conn: &'a mut PgConnection, event: &'a Event) -> BoxFuture<'a, Result<(), HandleError>> {
        Box::pin(async move {
            match event.kind.as_str() {
                "budget.created" | "budget.updated" => {
                    let b: Budget = payload(event)?;
                    currency(event, &b.currency)?;
                    sqlx::query(
                        "INSERT INTO analytics.budgets AS b
                             (budget_id, user_id, as_of, category_id, currency, amount_minor, period, rollover, starts_on)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                         ON CONFLICT (budget_id) DO UPDATE SET
                             as_of = EXCLUDED.as_of, category_id = EXCLUDED.category_id, currency = EXCLUDED.currency,
                             amount_minor = EXCLUDED.amount_minor, period = EXCLUDED.period,
                             rollover = EXCLUDED.rollover, starts_on = EXCLUDED.starts_on
                         WHERE NOT b.deleted AND b.as_of < EXCLUDED.as_of AND b.user_id = EXCLUDED.user_id",
                    )
                    .bind(b.budget_id)
                    .bind(b.user_id)
                    .bind(event.occurred_at)
                    .bind(b.category_id)
                    .bind(&b.currency)
                    .bind(b.amount_minor)
                    .bind(b.period)
                    .bind(b.rollover)
                    .bind(b.starts_on.get())
                    .execute(conn)
                    .await
                    .context("failed to apply a budget event")?;
                }
                "budget.deleted" => {
                    let d: BudgetDeleted = payload(event)?;
                    tombstone(conn, "budgets", "budget_id", d.budget_id, d.user_id, event).await?;
                }
                _ => {}
            }
            Ok(())
        })
    }
}

//! `investment.valuation_changed` into `analytics.valuations`, and
//! `investment.portfolio_deleted`, which removes a portfolio's valuations
//! and keeps a tombstone so that a late valuation is not kept.

use anyhow::Context;
use freedumb_kit::date::IsoDate;
use freedumb_kit::events::{Event, EventHandler, HandleError};
use futures::future::BoxFuture;
use serde::Deserialize;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{currency, payload};

#[derive(Debug, Deserialize)]
struct Valuation {
    portfolio_id: Uuid,
    user_id: Uuid,
    date: IsoDate,
    base_currency: String,
    market_value_minor: i64,
}

#[derive(Debug, Deserialize)]
struct PortfolioDeleted {
    portfolio_id: Uuid,
    user_id: Uuid,
}

pub struct Investments;

impl EventHandler for Investments {
    fn handle<'a>(&'a self, conn: &'a mut PgConnection, event: &'a Event) -> BoxFuture<'a, Result<(), HandleError>> {
        Box::pin(async move {
            match event.kind.as_str() {
                "investment.valuation_changed" => {
                    let v: Valuation = payload(event)?;
                    currency(event, &v.base_currency)?;
                    sqlx::query(
                        "INSERT INTO analytics.valuations AS v (portfolio_id, day, user_id, currency, market_value_minor, as_of)
                         SELECT $1, $2, $3, $4, $5, $6
                         WHERE NOT EXISTS (SELECT 1 FROM analytics.deleted_portfolios WHERE portfolio_id = $1)
                         ON CONFLICT (portfolio_id, day) DO UPDATE SET
                             currency = EXCLUDED.currency, market_value_minor = EXCLUDED.market_value_minor, as_of = EXCLUDED.as_of
                         WHERE v.as_of < EXCLUDED.as_of AND v.user_id = EXCLUDED.user_id",
                    )
                    .bind(v.portfolio_id)
                    .bind(v.date.get())
                    .bind(v.user_id)
                    .bind(&v.base_currency)
                    .bind(v.market_value_minor)
                    .bind(event.occurred_at)
                    .execute(conn)
                    .await
                    .context("failed to apply a valuation")?;
                }
                "investment.portfolio_deleted" => {
                    let d: PortfolioDeleted = payload(event)?;
                    sqlx::query(
                        "INSERT INTO analytics.deleted_portfolios (portfolio_id, user_id, deleted_at) VALUES ($1, $2, $3)
                         ON CONFLICT (portfolio_id) DO NOTHING",
                    )
                    .bind(d.portfolio_id)
                    .bind(d.user_id)
                    .bind(event.occurred_at)
                    .execute(&mut *conn)
                    .await
                    .context("failed to record a deleted portfolio")?;
                    sqlx::query("DELETE FROM analytics.valuations WHERE portfolio_id = $1 AND user_id = $2")
                        .bind(d.portfolio_id)
                        .bind(d.user_id)
                        .execute(conn)
                        .await
                        .context("failed to delete a portfolio's valuations")?;
                }
                _ => {}
            }
            Ok(())
        })
    }
}

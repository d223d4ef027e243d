//! The investment-price worker (`freedumb worker investment-price`, and part
//! of `serve all`): keeps the daily closes of every held listing in
//! `investment.prices` and announces each portfolio's valuation of the day.
//!
//! A pass:
//!
//! 1. Lists every (symbol, exchange) some portfolio holds in
//!    `investment.listings`.
//! 2. Takes one due listing at a time, `FOR UPDATE SKIP LOCKED`, and keeps it
//!    locked while it asks the price source, so replicas share the listings
//!    and each listing and interval is fetched exactly once. A listing is due
//!    when its closes stop before today (after downtime: every day it missed,
//!    in one range request) or today's close is older than the refresh
//!    interval (`INVESTMENT_PRICE_REFRESH_SECS`, 900). A new listing is
//!    fetched from its oldest open lot's date (at most ten years back).
//! 3. When the source fails, the pass stops: the listing stays due and the
//!    next pass (`INVESTMENT_PRICE_POLL_MS`, 60 000) tries again. An outage
//!    delays the prices; it never fails the worker.
//! 4. For every portfolio whose held listings all have today's close, once a
//!    day: its market value and cost in the base currency into
//!    `investment.valuations` and `investment.valuation_changed` into the
//!    outbox, in one transaction whose row is the guard against a second
//!    announcement by another replica.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::NaiveDate;
use freedumb_kit::Platform;
use freedumb_kit::config::{ConfigError, Env};
use freedumb_kit::date::IsoDate;
use freedumb_kit::db::Db;
use freedumb_kit::events::{SnapshotEvent, SnapshotStream};
use freedumb_kit::money::Currency;
use freedumb_kit::service::{BackgroundTask, CancellationToken};
use futures::StreamExt;
use serde::Serialize;
use uuid::Uuid;

use crate::SCHEMA;
use crate::decimal::{convert, from_db, to_minor};
use crate::market::{Listing, MarketData};

pub const VALUATION_CHANGED: &str = "investment.valuation_changed";

/// The oldest close a new listing is fetched from.
const MAX_BACKFILL_DAYS: u64 = 3660;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// How old today's close may get before it is fetched again.
    pub refresh: Duration,
    /// The sleep between passes.
    pub poll: Duration,
}

impl WorkerConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let poll: u64 = env.parsed_or("INVESTMENT_PRICE_POLL_MS", 60_000, "a number of milliseconds")?;
        Ok(WorkerConfig {
            refresh: env.seconds_or("INVESTMENT_PRICE_REFRESH_SECS", 900)?,
            poll: Duration::from_millis(poll.max(10)),
        })
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Listings whose closes were fetched and stored.
    pub refreshed: usize,
    /// Whether the source failed (and the pass stopped there).
    pub source_failed: bool,
    /// Portfolios whose valuation of the day was announced.
    pub announced: usize,
}

/// The worker as a background task.
pub fn task(platform: &Platform, market: Arc<dyn MarketData>, config: WorkerConfig) -> BackgroundTask {
    let platform = platform.clone();
    BackgroundTask::new("investment-price-worker", move |shutdown: CancellationToken| {
        let (platform, market, config) = (platform.clone(), market.clone(), config.clone());
        async move {
            while !shutdown.is_cancelled() {
                let started = std::time::Instant::now();
                let pass = run_once(&platform, market.as_ref(), config.refresh, IsoDate::today()).await?;
                if pass.refreshed > 0 || pass.announced > 0 {
                    tracing::info!(
                        refreshed = pass.refreshed,
                        announced = pass.announced,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "investment prices refreshed"
                    );
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(config.poll) => {}
                }
            }
            Ok(())
        }
    })
}

#[derive(Debug, sqlx::FromRow)]
struct Due {
    symbol: String,
    exchange: String,
    currency: String,
    closes_through: Option<NaiveDate>,
}

/// One pass. Errors are the database's; the source's end the pass early.
pub async fn run_once(
    platform: &Platform,
    market: &dyn MarketData,
    refresh: Duration,
    today: IsoDate,
) -> anyhow::Result<Pass> {
    let db = &platform.db;
    let mut pass = Pass::default();
    sqlx::query(
        "INSERT INTO investment.listings (symbol, exchange, currency)
         SELECT DISTINCT i.symbol, i.exchange, i.currency
         FROM investment.lots l JOIN investment.instruments i ON i.id = l.instrument_id
         WHERE l.open_quantity > 0
         ON CONFLICT DO NOTHING",
    )
    .execute(&db.pool)
    .await
    .context("failed to list the held listings")?;
    let refresh_secs = i64::try_from(refresh.as_secs()).unwrap_or(i64::MAX);
    loop {
        let mut tx = db.begin().await.context("failed to begin")?;
        let due: Option<Due> = sqlx::query_as(
            "SELECT symbol, exchange, currency, closes_through FROM investment.listings
             WHERE closes_through IS NULL OR closes_through < $1 OR refreshed_at < now() - $2::bigint * interval '1 second'
             ORDER BY refreshed_at NULLS FIRST, symbol, exchange
             LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .bind(today.get())
        .bind(refresh_secs)
        .fetch_optional(tx.conn())
        .await
        .context("failed to take a due listing")?;
        let Some(due) = due else { break };
        let from = match due.closes_through {
            Some(through) if through < today.get() => through.succ_opt().and_then(IsoDate::new).unwrap_or(today),
            Some(_) => today,
            None => {
                let (oldest,): (Option<NaiveDate>,) = sqlx::query_as(
                    "SELECT min(l.acquired_on) FROM investment.lots l JOIN investment.instruments i ON i.id = l.instrument_id
                     WHERE i.symbol = $1 AND i.exchange = $2 AND l.open_quantity > 0",
                )
                .bind(&due.symbol)
                .bind(&due.exchange)
                .fetch_one(tx.conn())
                .await
                .context("failed to find a listing's oldest lot")?;
                let floor = today.get().checked_sub_days(chrono::Days::new(MAX_BACKFILL_DAYS)).unwrap_or(today.get());
                IsoDate::new(oldest.unwrap_or(today.get()).max(floor)).unwrap_or(today)
            }
        };
        let Some(currency) = Currency::from_code(&due.currency) else {
            anyhow::bail!("listing {} on {} has an unknown currency {}", due.symbol, due.exchange, due.currency);
        };
        let listing = Listing { symbol: due.symbol.clone(), exchange: due.exchange.clone(), currency };
        let quotes = match market.closes(&listing, from, today).await {
            Ok(quotes) => quotes,
            Err(err) => {
                tracing::warn!(error = %err, symbol = %due.symbol, exchange = %due.exchange, "no closes this pass; trying again on the next");
                pass.source_failed = true;
                break;
            }
        };
        sqlx::query(
            "INSERT INTO investment.prices (symbol, exchange, date, close, source)
             SELECT $1, $2, d, c::numeric, s FROM UNNEST($3::date[], $4::text[], $5::text[]) AS q(d, c, s)
             ON CONFLICT (symbol, exchange, date) DO UPDATE SET close = EXCLUDED.close, source = EXCLUDED.source",
        )
        .bind(&due.symbol)
        .bind(&due.exchange)
        .bind(quotes.iter().map(|q| q.date.get()).collect::<Vec<_>>())
        .bind(quotes.iter().map(|q| q.price.to_string()).collect::<Vec<_>>())
        .bind(quotes.iter().map(|q| q.source.as_str()).collect::<Vec<_>>())
        .execute(tx.conn())
        .await
        .context("failed to store closes")?;
        sqlx::query(
            "UPDATE investment.listings SET closes_through = $3, refreshed_at = now() WHERE symbol = $1 AND exchange = $2",
        )
        .bind(&due.symbol)
        .bind(&due.exchange)
        .bind(today.get())
        .execute(tx.conn())
        .await
        .context("failed to mark a listing refreshed")?;
        tx.commit().await.context("failed to commit")?;
        pass.refreshed += 1;
    }
    pass.announced = announce(platform, market, today).await?;
    Ok(pass)
}

/// The payload of `investment.valuation_changed` (docs/events.md).
#[derive(Debug, Serialize)]
struct ValuationChanged<'a> {
    version: u32,
    portfolio_id: Uuid,
    user_id: Uuid,
    date: NaiveDate,
    base_currency: &'a str,
    market_value_minor: i64,
    cost_minor: i64,
    unrealised_gain_minor: i64,
}

/// A stored valuation (an `investment.valuations` row with its portfolio's
/// owner and base currency), what the payload is built from.
#[derive(Debug, sqlx::FromRow)]
struct Valuation {
    portfolio_id: Uuid,
    user_id: Uuid,
    date: NaiveDate,
    base_currency: String,
    market_value_minor: i64,
    cost_minor: i64,
}

impl<'a> ValuationChanged<'a> {
    /// The one builder of the payload, for the live event and the snapshot.
    fn of(valuation: &'a Valuation) -> Self {
        ValuationChanged {
            version: 1,
            portfolio_id: valuation.portfolio_id,
            user_id: valuation.user_id,
            date: valuation.date,
            base_currency: &valuation.base_currency,
            market_value_minor: valuation.market_value_minor,
            cost_minor: valuation.cost_minor,
            unrealised_gain_minor: valuation.market_value_minor - valuation.cost_minor,
        }
    }
}

/// One `investment.valuation_changed` per stored valuation, streamed in
/// (portfolio, date) order.
pub(crate) fn snapshot(db: &Db) -> SnapshotStream<'_> {
    sqlx::query_as::<_, Valuation>(
        "SELECT v.portfolio_id, p.user_id, v.date, p.base_currency,
                v.market_value_base_minor AS market_value_minor, v.cost_base_minor AS cost_minor
         FROM investment.valuations v JOIN investment.portfolios p ON p.id = v.portfolio_id
         ORDER BY v.portfolio_id, v.date",
    )
    .fetch(&db.pool)
    .map(|valuation| {
        let valuation = valuation.context("failed to read a valuation for the snapshot")?;
        SnapshotEvent::new(VALUATION_CHANGED, &ValuationChanged::of(&valuation))
    })
    .boxed()
}

#[derive(Debug, sqlx::FromRow)]
struct HeldLot {
    open_quantity: String,
    open_cost_base_minor: i64,
    currency: String,
    close: Option<String>,
}

/// Announces the valuation of the day of every portfolio whose listings
/// all have today's close, once.
async fn announce(platform: &Platform, market: &dyn MarketData, today: IsoDate) -> anyhow::Result<usize> {
    let db = &platform.db;
    let ready: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
        "SELECT p.id, p.user_id, p.base_currency FROM investment.portfolios p
         WHERE EXISTS (SELECT 1 FROM investment.lots l WHERE l.portfolio_id = p.id AND l.open_quantity > 0)
           AND NOT EXISTS (SELECT 1 FROM investment.valuations v WHERE v.portfolio_id = p.id AND v.date = $1)
           AND NOT EXISTS (
               SELECT 1 FROM investment.lots l
               JOIN investment.instruments i ON i.id = l.instrument_id
               LEFT JOIN investment.listings s ON s.symbol = i.symbol AND s.exchange = i.exchange
               WHERE l.portfolio_id = p.id AND l.open_quantity > 0 AND (s.closes_through IS NULL OR s.closes_through < $1))",
    )
    .bind(today.get())
    .fetch_all(&db.pool)
    .await
    .context("failed to find portfolios to value")?;
    let mut announced = 0;
    for (portfolio_id, user_id, base) in ready {
        let base = Currency::from_code(&base).context("a portfolio's base currency")?;
        let lots: Vec<HeldLot> = sqlx::query_as(
            "SELECT l.open_quantity::text AS open_quantity, l.open_cost_base_minor, i.currency,
                    (SELECT c.close::text FROM investment.prices c
                     WHERE c.symbol = i.symbol AND c.exchange = i.exchange AND c.date <= $2
                     ORDER BY c.date DESC LIMIT 1) AS close
             FROM investment.lots l JOIN investment.instruments i ON i.id = l.instrument_id
             WHERE l.portfolio_id = $1 AND l.open_quantity > 0",
        )
        .bind(portfolio_id)
        .bind(today.get())
        .fetch_all(&db.pool)
        .await
        .context("failed to load a portfolio's lots")?;
        let (mut value, mut cost) = (0i64, 0i64);
        let mut complete = true;
        for lot in &lots {
            let currency = Currency::from_code(&lot.currency).context("an instrument's currency")?;
            let Some(close) = lot.close.as_deref().map(from_db).transpose()? else {
                complete = false;
                break;
            };
            let local =
                from_db(&lot.open_quantity)?.checked_mul(close).and_then(|v| to_minor(v, currency)).unwrap_or(0);
            let rate = match market.fx(currency, base, today).await {
                Ok(rate) => rate.rate,
                Err(err) => {
                    tracing::warn!(error = %err, "no FX rate for a valuation this pass");
                    complete = false;
                    break;
                }
            };
            value = value.saturating_add(convert(local, currency, base, rate).unwrap_or(0));
            cost = cost.saturating_add(lot.open_cost_base_minor);
        }
        if !complete {
            continue;
        }
        let mut tx = db.begin().await.context("failed to begin")?;
        let inserted = sqlx::query(
            "INSERT INTO investment.valuations (portfolio_id, date, market_value_base_minor, cost_base_minor)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(portfolio_id)
        .bind(today.get())
        .bind(value)
        .bind(cost)
        .execute(tx.conn())
        .await
        .context("failed to store a valuation")?
        .rows_affected();
        if inserted == 1 {
            let valuation = Valuation {
                portfolio_id,
                user_id,
                date: today.get(),
                base_currency: base.code().to_owned(),
                market_value_minor: value,
                cost_minor: cost,
            };
            let event = ValuationChanged::of(&valuation);
            freedumb_kit::events::record(tx.conn(), SCHEMA, VALUATION_CHANGED, &event).await?;
            announced += 1;
        }
        tx.commit().await.context("failed to commit")?;
    }
    Ok(announced)
}

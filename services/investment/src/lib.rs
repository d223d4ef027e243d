//! The investment service (seed port 3005): portfolios under
//! `/v1/portfolios` (with their activities and valuation), instruments under
//! `/v1/instruments`, holdings with their tax lots under `/v1/holdings`.
//!
//! Activities are what the user records (buys, sells, dividends, splits,
//! cash in and out); everything else is derived from them. Lots and
//! disposals ([`lots`]) are recomputed for the holding an activity touches,
//! in the same transaction, so cost bases and realised gains are always
//! those of the activities in date order. Prices and FX rates come from a
//! [`market::MarketData`] source: Twelve Data's API ([`provider`]) with a
//! key, else a deterministic simulation whose every value says so
//! (`"source": "simulated"`).
//!
//! Money is integer minor units (`freedumb_kit::money`), quantities, prices
//! and rates exact decimals ([`decimal`]); all of them travel as strings.
//! Every row belongs to a user and every query names the caller, so another
//! user's ids answer 404.

mod activities;
pub mod decimal;
mod holdings;
mod import;
mod instruments;
pub mod lots;
pub mod market;
mod performance;
mod portfolios;
pub mod provider;
pub mod returns;
pub mod worker;

use std::sync::Arc;

use axum::extract::FromRef;
use chrono::NaiveDate;
use freedumb_kit::auth::JwtKeys;
use freedumb_kit::config::{ConfigError, Env};
use freedumb_kit::date::IsoDate;
use freedumb_kit::db::Db;
use freedumb_kit::events::{Bus, Relay, SnapshotStream};
use freedumb_kit::service::BackgroundTask;
use freedumb_kit::{Platform, Service};
use sqlx::migrate::Migrator;
use utoipa_axum::router::OpenApiRouter;

use crate::market::{MarketData, Offline};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The Postgres schema this service owns.
pub const SCHEMA: &str = "investment";

pub use activities::{ACTIVITY_DELETED, ACTIVITY_RECORDED};
pub use worker::VALUATION_CHANGED;

pub struct InvestmentService;

impl Service for InvestmentService {
    fn name(&self) -> &'static str {
        "investment"
    }

    fn default_port(&self) -> u16 {
        3005
    }

    fn schema(&self) -> &'static str {
        SCHEMA
    }

    fn migrator(&self) -> &'static Migrator {
        &MIGRATOR
    }

    fn router(&self, platform: &Platform, env: &Env) -> Result<OpenApiRouter, ConfigError> {
        let state = Investments { platform: platform.clone(), market: market_data(platform, env)? };
        Ok(OpenApiRouter::new()
            .merge(portfolios::router())
            .merge(instruments::router())
            .merge(activities::router())
            .merge(import::router())
            .merge(holdings::router())
            .merge(performance::router())
            .with_state(state))
    }

    fn background(&self, platform: &Platform, env: &Env) -> Result<Vec<BackgroundTask>, ConfigError> {
        let bus = Bus::from_env(env, platform)?;
        Ok(vec![Relay::new(platform.db.clone(), SCHEMA, &bus).into_task()])
    }

    /// One `investment.valuation_changed` per stored valuation (the price
    /// worker's, which announced each once).
    fn snapshot<'a>(&'a self, db: &'a Db) -> SnapshotStream<'a> {
        worker::snapshot(db)
    }
}

/// The investment-price worker (`freedumb worker investment-price`): no
/// routes of its own, one background task that stores the held listings'
/// daily closes and announces valuations ([`worker`]). It works on the
/// `investment` schema, which the service owns and migrates.
pub struct InvestmentPriceWorker;

impl Service for InvestmentPriceWorker {
    fn name(&self) -> &'static str {
        "investment-price"
    }

    /// The port of its ops endpoints when run alone.
    fn default_port(&self) -> u16 {
        3105
    }

    /// It serves only /health, /ready and /metrics: no token to verify.
    fn authenticates(&self) -> bool {
        false
    }

    fn schema(&self) -> &'static str {
        SCHEMA
    }

    fn migrator(&self) -> &'static Migrator {
        &MIGRATOR
    }

    fn router(&self, _: &Platform, _: &Env) -> Result<OpenApiRouter, ConfigError> {
        Ok(OpenApiRouter::new())
    }

    fn background(&self, platform: &Platform, env: &Env) -> Result<Vec<BackgroundTask>, ConfigError> {
        let market = market_data(platform, env)?;
        Ok(vec![worker::task(platform, market, worker::WorkerConfig::from_env(env)?)])
    }
}

/// The price source: Twelve Data's API with `MARKET_DATA_API_KEY` (and
/// `MARKET_DATA_API_URL`), else the offline simulation.
fn market_data(platform: &Platform, env: &Env) -> Result<Arc<dyn MarketData>, ConfigError> {
    match provider::Settings::from_env(env)? {
        Some(settings) => {
            let client = provider::TwelveData::new(settings, platform.cache.clone())
                .map_err(|_| ConfigError::malformed("MARKET_DATA_API_URL", "a URL the HTTP client can use"))?;
            Ok(Arc::new(client))
        }
        None => Ok(Arc::new(Offline)),
    }
}

/// A date read back from the `investment` schema as the API may show it.
///
/// Every date column is constrained to 1900-01-01..=9999-12-31, so this
/// never clamps in practice; it keeps reading total rather than panic.
fn stored_date(date: NaiveDate) -> IsoDate {
    IsoDate::new(date).unwrap_or(if date < IsoDate::MIN.get() { IsoDate::MIN } else { IsoDate::MAX })
}

#[derive(Clone)]
struct Investments {
    platform: Platform,
    market: Arc<dyn MarketData>,
}

impl FromRef<Investments> for JwtKeys {
    fn from_ref(s: &Investments) -> Self {
        s.platform.jwt.clone()
    }
}

/// The service's text fields, as the kit's types.
pub(crate) mod text {
    use freedumb_kit::text::{Line, Text};

    /// A portfolio's name.
    pub type PortfolioName = Line<1, 100>;
    /// An instrument's name, such as "Apple Inc."; empty means none.
    pub type InstrumentName = Line<0, 200>;
    /// A note on an activity; empty means none.
    pub type Note = Text<500>;
}

//! The budget service (seed port 3003): budgets per category and period
//! under `/v1/budgets`, savings goals under `/v1/goals`.
//!
//! It never reads the transaction service's tables. Spending reaches it as
//! `transaction.*` events through RabbitMQ (see [`spending`]), and it
//! announces `budget.threshold_crossed` and `goal.reached` the same way,
//! through its own outbox.

mod budgets;
mod goals;
mod period;
pub mod spending;
mod summary;

use axum::extract::FromRef;
use chrono::NaiveDate;
use freedumb_kit::auth::JwtKeys;
use freedumb_kit::config::{ConfigError, Env};
use freedumb_kit::date::IsoDate;
use freedumb_kit::events::{Consumer, ConsumerConfig, Relay, RelayConfig, rabbitmq_url};
use freedumb_kit::idempotency::fingerprint;
use freedumb_kit::service::BackgroundTask;
use freedumb_kit::{Platform, Service};
use sqlx::migrate::Migrator;
use utoipa_axum::router::OpenApiRouter;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The Postgres schema this service owns.
pub const SCHEMA: &str = "budget";

pub use goals::GOAL_REACHED;
pub use spending::THRESHOLD_CROSSED;

pub struct BudgetService;

impl Service for BudgetService {
    fn name(&self) -> &'static str {
        "budget"
    }

    fn default_port(&self) -> u16 {
        3003
    }

    fn schema(&self) -> &'static str {
        SCHEMA
    }

    fn migrator(&self) -> &'static Migrator {
        &MIGRATOR
    }

    fn router(&self, platform: &Platform, _: &Env) -> Result<OpenApiRouter, ConfigError> {
        let state = BudgetState { platform: platform.clone() };
        Ok(OpenApiRouter::new().merge(budgets::router()).merge(goals::router()).with_state(state))
    }

    fn background(&self, platform: &Platform, env: &Env) -> Result<Vec<BackgroundTask>, ConfigError> {
        let url = rabbitmq_url(env)?;
        let exchange = env.get("EVENTS_EXCHANGE").unwrap_or_else(|| freedumb_kit::events::EXCHANGE.to_owned());
        // Queues are named after the exchange, so deployments (and tests)
        // with exchanges of their own never share a queue.
        let queue = format!("{exchange}.budget.transactions");
        let consumer =
            Consumer::new(platform.db.clone(), SCHEMA, url.clone(), &queue, &["transaction.*"], spending::Spending)
                .with_config(ConsumerConfig { exchange: exchange.clone(), ..ConsumerConfig::default() });
        let relay = Relay::new(platform.db.clone(), SCHEMA, url)
            .with_config(RelayConfig { exchange, ..RelayConfig::default() });
        Ok(vec![consumer.into_task(), relay.into_task()])
    }
}

/// A date read back from the `budget` schema as the API may show it.
///
/// Every date column is constrained to 1900-01-01..=9999-12-31 (see the
/// migration `dates_in_range`), so this never clamps in practice; it keeps
/// reading total rather than turning a broken invariant into a panic.
fn stored_date(date: NaiveDate) -> IsoDate {
    IsoDate::new(date).unwrap_or(if date < IsoDate::MIN.get() { IsoDate::MIN } else { IsoDate::MAX })
}

#[derive(Clone)]
struct BudgetState {
    platform: Platform,
}

impl FromRef<BudgetState> for JwtKeys {
    fn from_ref(s: &BudgetState) -> Self {
        s.platform.jwt.clone()
    }
}

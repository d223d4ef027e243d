//! The analytics service (seed port 3006): spending, income against
//! expense, cash flow, net worth, budgets against actual and projected
//! balances under `/v1/analytics`.
//!
//! It never reads another service's tables. Everything it knows arrives as
//! events (docs/events.md) and is kept in its own read models, the
//! projections of the `analytics` schema: per transaction its last state,
//! and per user, currency and day the aggregates the views read, so a view
//! over a year reads a few hundred rows however many transactions there
//! are. [`queries`] holds the views; the routes and the report jobs both
//! call them.

mod money;
pub mod projections;
pub mod queries;
pub mod range;
pub mod reports;
mod routes;

use axum::extract::FromRef;
use freedumb_kit::auth::JwtKeys;
use freedumb_kit::config::{ConfigError, Env};
use freedumb_kit::events::{Bus, Consumer, ConsumerConfig, EventHandler, Subscription};
use freedumb_kit::service::BackgroundTask;
use freedumb_kit::{Platform, Service};
use sqlx::migrate::Migrator;
use utoipa_axum::router::OpenApiRouter;

pub use money::Money;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The Postgres schema this service owns.
pub const SCHEMA: &str = "analytics";

/// `transaction.*`: the transactions projection and the daily aggregates.
pub const TRANSACTIONS: Subscription = Subscription { purpose: "analytics.transactions", bindings: &["transaction.*"] };
/// Accounts, categories and recurring rules, the ledger's other things.
pub const LEDGER: Subscription =
    Subscription { purpose: "analytics.ledger", bindings: &["account.*", "category.*", "recurring.*"] };
pub const BUDGETS: Subscription =
    Subscription { purpose: "analytics.budgets", bindings: &["budget.created", "budget.updated", "budget.deleted"] };
pub const INVESTMENTS: Subscription = Subscription {
    purpose: "analytics.investments",
    bindings: &["investment.valuation_changed", "investment.portfolio_deleted"],
};

static SUBSCRIPTIONS: [Subscription; 4] = [TRANSACTIONS, LEDGER, BUDGETS, INVESTMENTS];

pub struct AnalyticsService;

impl Service for AnalyticsService {
    fn name(&self) -> &'static str {
        "analytics"
    }

    fn default_port(&self) -> u16 {
        3006
    }

    fn schema(&self) -> &'static str {
        SCHEMA
    }

    fn migrator(&self) -> &'static Migrator {
        &MIGRATOR
    }

    fn router(&self, platform: &Platform, _: &Env) -> Result<OpenApiRouter, ConfigError> {
        let state = AnalyticsState { platform: platform.clone() };
        Ok(OpenApiRouter::new().merge(routes::router()).merge(reports::router()).with_state(state))
    }

    fn background(&self, platform: &Platform, env: &Env) -> Result<Vec<BackgroundTask>, ConfigError> {
        // Queues are named for this deployment by the kit; each consumer is
        // built from the subscription the replay reads, so the two agree.
        let bus = Bus::from_env(env, platform)?;
        let transactions = consumer_for(platform, &bus, TRANSACTIONS, projections::transactions::Transactions)
            // Replays and imports arrive by the thousand; one transaction per
            // 500 events is what makes the projection keep up (see
            // `projections::transactions`).
            .with_config(ConsumerConfig { batch_size: 500, ..ConsumerConfig::default() });
        let ledger = consumer_for(platform, &bus, LEDGER, projections::ledger::Ledger);
        let budgets = consumer_for(platform, &bus, BUDGETS, projections::budgets::Budgets);
        let investments = consumer_for(platform, &bus, INVESTMENTS, projections::investments::Investments);
        let mut tasks =
            vec![transactions.into_task(), ledger.into_task(), budgets.into_task(), investments.into_task()];
        tasks.extend(reports::runner::tasks(platform, &reports::RunnerConfig::from_env(env)?));
        Ok(tasks)
    }

    fn subscriptions(&self) -> &'static [Subscription] {
        &SUBSCRIPTIONS
    }
}

fn consumer_for(platform: &Platform, bus: &Bus, subscription: Subscription, handler: impl EventHandler) -> Consumer {
    Consumer::new(platform.db.clone(), SCHEMA, bus, subscription.purpose, subscription.bindings, handler)
}

#[derive(Clone)]
pub struct AnalyticsState {
    pub platform: Platform,
}

impl FromRef<AnalyticsState> for JwtKeys {
    fn from_ref(s: &AnalyticsState) -> Self {
        s.platform.jwt.clone()
    }
}

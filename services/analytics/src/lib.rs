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
mod period;
pub mod queries;
pub mod range;
// Used by the projection view once it lands; kept private until the kit has it.
#[allow(dead_code)]
mod schedule;

use axum::extract::FromRef;
use freedumb_kit::auth::JwtKeys;
use freedumb_kit::config::{ConfigError, Env};
use freedumb_kit::events::Subscription;
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
        Ok(OpenApiRouter::new().with_state(state))
    }

    fn subscriptions(&self) -> &'static [Subscription] {
        &SUBSCRIPTIONS
    }
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

//! The budget service (seed port 3003): budgets per category and period
//! under `/v1/budgets`, savings goals under `/v1/goals`.
//!
//! It never reads the transaction service's tables. Spending reaches it as
//! `transaction.*` events through RabbitMQ (see [`spending`]), the users'
//! categories as `category.*` events (see [`categories`]), and it announces
//! `budget.threshold_crossed`, `goal.reached` and its budgets' changes
//! (`budget.created|updated|deleted`) the same way, through its own outbox.

pub mod budget_events;
mod budgets;
pub mod categories;
mod goals;
pub mod spending;
mod summary;

use axum::extract::FromRef;
use chrono::NaiveDate;
use freedumb_kit::auth::JwtKeys;
use freedumb_kit::config::{ConfigError, Env};
use freedumb_kit::date::IsoDate;
use freedumb_kit::db::Db;
use freedumb_kit::events::{Bus, Consumer, Relay, SnapshotStream, Subscription};
use freedumb_kit::idempotency::fingerprint;
use freedumb_kit::service::BackgroundTask;
use freedumb_kit::{Platform, Service};
use sqlx::migrate::Migrator;
use utoipa_axum::router::OpenApiRouter;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The Postgres schema this service owns.
pub const SCHEMA: &str = "budget";

/// The purpose of the consumer of `transaction.*`: its queue is
/// `<exchange>.<deployment>.budget.transactions`.
pub const SPENDING_QUEUE: &str = "budget.transactions";

/// The queues the service consumes; its consumers are built from these, and
/// `freedumb replay --to budget` reads them to know what goes where.
pub const SUBSCRIPTIONS: &[Subscription] = &[SPENDING, CATEGORIES];
const SPENDING: Subscription = Subscription { purpose: SPENDING_QUEUE, bindings: &["transaction.*"] };
const CATEGORIES: Subscription = Subscription { purpose: categories::CATEGORIES_QUEUE, bindings: &["category.*"] };

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
        // The kit names each queue for this deployment, so deployments
        // sharing a broker never take each other's events.
        let bus = Bus::from_env(env, platform)?;
        let spending =
            Consumer::new(platform.db.clone(), SCHEMA, &bus, SPENDING.purpose, SPENDING.bindings, spending::Spending);
        let categories = Consumer::new(
            platform.db.clone(),
            SCHEMA,
            &bus,
            CATEGORIES.purpose,
            CATEGORIES.bindings,
            categories::Categories,
        );
        let relay = Relay::new(platform.db.clone(), SCHEMA, &bus);
        Ok(vec![spending.into_task(), categories.into_task(), relay.into_task()])
    }

    fn subscriptions(&self) -> &'static [Subscription] {
        SUBSCRIPTIONS
    }

    /// One `budget.created` per budget.
    fn snapshot<'a>(&'a self, db: &'a Db) -> SnapshotStream<'a> {
        budget_events::snapshot(db)
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

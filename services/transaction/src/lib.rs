//! The transaction service (seed port 3002): accounts, categories,
//! transactions (transfers, splits, filters, cursor pagination), CSV import
//! and recurring rules, under `/v1/accounts`, `/v1/categories`,
//! `/v1/transactions` and `/v1/recurring`.
//!
//! Money is integer minor units of the account's currency
//! (`freedumb_kit::money`); amounts travel in JSON as decimal strings.
//! Every row belongs to a user and every query is scoped to the caller, so
//! another user's ids answer 404.

pub mod account_events;
mod account_number;
mod accounts;
mod categories;
pub mod category_events;
pub mod events;
mod import;
mod recurring;
pub mod recurring_events;
mod transactions;

use std::sync::Arc;

use axum::extract::FromRef;
use freedumb_kit::auth::JwtKeys;
use freedumb_kit::config::{ConfigError, Env};
use freedumb_kit::db::Db;
use freedumb_kit::events::{Bus, Relay, SnapshotStream};
use freedumb_kit::idempotency::fingerprint;
use freedumb_kit::service::BackgroundTask;
use freedumb_kit::{Platform, Service};
use futures::StreamExt;
use sqlx::migrate::Migrator;
use utoipa_axum::router::OpenApiRouter;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The Postgres schema this service owns.
pub const SCHEMA: &str = "ledger";

pub struct TransactionService;

impl Service for TransactionService {
    fn name(&self) -> &'static str {
        "transaction"
    }

    fn default_port(&self) -> u16 {
        3002
    }

    fn schema(&self) -> &'static str {
        SCHEMA
    }

    fn migrator(&self) -> &'static Migrator {
        &MIGRATOR
    }

    fn router(&self, platform: &Platform, env: &Env) -> Result<OpenApiRouter, ConfigError> {
        let state = Ledger { platform: platform.clone(), cipher: Arc::new(account_number::Cipher::from_env(env)?) };
        Ok(OpenApiRouter::new()
            .merge(accounts::router())
            .merge(categories::router())
            .merge(transactions::router())
            .merge(import::router())
            .merge(recurring::router())
            .with_state(state))
    }

    fn background(&self, platform: &Platform, env: &Env) -> Result<Vec<BackgroundTask>, ConfigError> {
        let bus = Bus::from_env(env, platform)?;
        Ok(vec![Relay::new(platform.db.clone(), SCHEMA, &bus).into_task()])
    }

    /// `account.created` per account (archived ones too), `category.created`
    /// per category, `transaction.created` per transaction and
    /// `recurring.created` per rule, each the payload of the live event.
    /// Accounts and categories come first, so a consumer usually knows
    /// them before the transactions that name them (order is not promised).
    fn snapshot<'a>(&'a self, db: &'a Db) -> SnapshotStream<'a> {
        account_events::snapshot(db)
            .chain(category_events::snapshot(db))
            .chain(events::snapshot(db))
            .chain(recurring_events::snapshot(db))
            .boxed()
    }
}

/// The recurring worker (`freedumb worker recurring`): no routes of its own
/// (a worker process still serves `/health`, `/ready` and `/metrics`), one
/// background task that creates due occurrences. It works on the `ledger`
/// schema, which the transaction service owns and migrates.
pub struct RecurringWorker;

impl Service for RecurringWorker {
    fn name(&self) -> &'static str {
        "recurring"
    }

    /// The port of its ops endpoints when run alone.
    fn default_port(&self) -> u16 {
        3102
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
        Ok(vec![recurring::worker(platform, recurring::WorkerConfig::from_env(env)?)])
    }
}

pub use recurring::run_once as run_recurring_once;

#[derive(Clone)]
struct Ledger {
    platform: Platform,
    cipher: Arc<account_number::Cipher>,
}

impl FromRef<Ledger> for JwtKeys {
    fn from_ref(s: &Ledger) -> Self {
        s.platform.jwt.clone()
    }
}

/// The ledger's text fields, as the kit's types: the length and the
/// characters allowed are checked when the body is read, and stated in the
/// OpenAPI document from the same type.
pub(crate) mod text {
    use freedumb_kit::text::{Line, Text};

    /// Who was paid, or who paid; empty means none.
    pub type Payee = Line<0, 200>;
    /// A transaction's or rule's description; empty means none.
    pub type Description = Line<0, 500>;
    /// Free notes on a transaction, several lines allowed; empty means none.
    pub type Notes = Text<2000>;
    /// A split's note; empty means none.
    pub type SplitNote = Line<0, 200>;
    /// One tag.
    pub type Tag = Line<1, 40>;
    /// An account's name.
    pub type AccountName = Line<1, 100>;
    /// A category's name, unique among its siblings (ignoring case).
    pub type CategoryName = Line<1, 60>;
}

/// An optional text field, already trimmed and checked by its type: empty
/// means absent.
fn optional_text(value: Option<&str>) -> Option<String> {
    value.filter(|text| !text.is_empty()).map(str::to_owned)
}

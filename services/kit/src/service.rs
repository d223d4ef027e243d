//! The service registry's contract: what a service module provides, and the
//! [`Platform`] it is given.
//!
//! A service is a value implementing [`Service`]; the `freedumb` binary keeps
//! a sorted list of them, and `serve` starts any subset in one process behind
//! one router. Adding a service means writing its module and adding one line
//! to that list: nothing in the kit changes.
//!
//! Besides routes, a service may run [`BackgroundTask`]s (an outbox relay,
//! an event consumer): the server starts them with the HTTP server, restarts
//! them when they fail, and stops them on shutdown.

use std::sync::Arc;

use axum::extract::FromRef;
use futures::future::BoxFuture;
use secrecy::SecretString;
use sqlx::migrate::Migrator;
pub use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;

use crate::auth::{JwtKeys, Revocations};
use crate::cache::{Cache, Redis};
use crate::client_ip::TrustedProxies;
use crate::config::{Config, ConfigError, Env};
use crate::db::{self, Db};
use crate::metrics::Metrics;

pub trait Service: Send + Sync + 'static {
    /// The target name on the command line, such as `auth`.
    fn name(&self) -> &'static str;

    /// The port the seed gives this service (auth 3001, transaction 3002, ...),
    /// used when it is served alone and `PORT` is unset.
    fn default_port(&self) -> u16;

    /// The Postgres schema this service owns.
    fn schema(&self) -> &'static str;

    fn migrator(&self) -> &'static Migrator;

    /// Whether its routes verify access tokens, and so need
    /// `JWT_ACCESS_SECRET`. Workers, which serve only the probes and
    /// metrics, say no and run without the key.
    fn authenticates(&self) -> bool {
        true
    }

    /// The service's routes, already given their state. A service reads its
    /// own settings (secrets, API keys) from `env` here, so a missing one stops
    /// start-up before the port opens.
    fn router(&self, platform: &Platform, env: &Env) -> Result<OpenApiRouter, ConfigError>;

    /// Long-running jobs to run beside the routes, such as
    /// [`crate::events::Relay`] and [`crate::events::Consumer`]. Called once
    /// at start-up, after [`Service::router`]; like it, reads the service's
    /// own settings from `env`. Most services have none.
    fn background(&self, platform: &Platform, env: &Env) -> Result<Vec<BackgroundTask>, ConfigError> {
        let _ = (platform, env);
        Ok(Vec::new())
    }

    /// The queues its consumers read, so `freedumb replay --to NAME` knows
    /// which events go where. Build the consumers from the same constants.
    fn subscriptions(&self) -> &'static [crate::events::Subscription] {
        &[]
    }

    /// Its current state as events (see `events::replay`): for each thing it
    /// owns, the live event that carries its whole state, read from its own
    /// schema. A producer implements it so that a consumer started late
    /// converges; the default has nothing to tell.
    fn snapshot<'a>(&'a self, db: &'a Db) -> crate::events::SnapshotStream<'a> {
        let _ = db;
        Box::pin(futures::stream::empty())
    }
}

type StartFn = dyn FnMut(CancellationToken) -> BoxFuture<'static, anyhow::Result<()>> + Send;

/// A named job that runs until its [`CancellationToken`] is cancelled.
///
/// It is given as a function that starts one run, because the server
/// restarts a run that fails (returns an error or panics) or ends before
/// shutdown, with a growing delay; see `server::BackgroundTasks`. A run should
/// therefore ride out outages of its dependencies by itself and return an
/// error only for what a restart could fix.
pub struct BackgroundTask {
    name: String,
    start: Box<StartFn>,
}

impl BackgroundTask {
    /// `name` labels its log lines and `background_task_restarts_total`; it
    /// must be written in code (such as `outbox-relay:ledger`), not built
    /// from input.
    pub fn new<F, Fut>(name: impl Into<String>, mut start: F) -> Self
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        BackgroundTask { name: name.into(), start: Box::new(move |shutdown| Box::pin(start(shutdown))) }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts one run that stops when `shutdown` is cancelled.
    pub fn start(&mut self, shutdown: CancellationToken) -> BoxFuture<'static, anyhow::Result<()>> {
        (self.start)(shutdown)
    }
}

impl std::fmt::Debug for BackgroundTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackgroundTask").field("name", &self.name).finish_non_exhaustive()
    }
}

/// What every service shares in one process: one pool, one Redis connection,
/// one metrics registry.
#[derive(Clone)]
pub struct Platform {
    pub config: Arc<Config>,
    pub db: Db,
    pub redis: Redis,
    pub cache: Cache,
    pub metrics: Metrics,
    pub jwt: JwtKeys,
    pub trusted_proxies: TrustedProxies,
    /// The process's event consumers that have not bound their queues yet,
    /// which its relays wait for (see [`crate::events::PendingBindings`]).
    pub pending_bindings: crate::events::PendingBindings,
}

impl Platform {
    /// Connections are made lazily: nothing here touches the network.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let metrics = Metrics::new();
        let pool = db::lazy_pool(&config.database_url, config.database_max_connections)?;
        let redis = Redis::new(&config.redis_url, &config.redis_key_prefix)?;
        let revocations = Revocations::new(redis.clone());
        Ok(Platform {
            db: Db::new(pool, metrics.clone()),
            cache: Cache::new(redis.clone(), metrics.clone()),
            redis,
            jwt: match &config.jwt_access_secret {
                Some(secret) => JwtKeys::new(secret, revocations),
                // No route here verifies a token; should one ever try, a key
                // nobody knows makes every token fail verification.
                None => JwtKeys::new(
                    &SecretString::from(format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())),
                    revocations,
                ),
            },
            trusted_proxies: TrustedProxies(Arc::new(config.trusted_proxies.clone())),
            pending_bindings: crate::events::PendingBindings::default(),
            metrics,
            config: Arc::new(config),
        })
    }
}

impl FromRef<Platform> for JwtKeys {
    fn from_ref(p: &Platform) -> Self {
        p.jwt.clone()
    }
}

impl FromRef<Platform> for TrustedProxies {
    fn from_ref(p: &Platform) -> Self {
        p.trusted_proxies.clone()
    }
}

impl FromRef<Platform> for Metrics {
    fn from_ref(p: &Platform) -> Self {
        p.metrics.clone()
    }
}

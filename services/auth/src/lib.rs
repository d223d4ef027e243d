//! The auth service (seed port 3001, routes under `/v1/auth`): register,
//! login, refresh, logout, me.
//!
//! Access tokens are 15-minute HS256 JWTs that every service verifies on its
//! own (see `freedumb_kit::auth`); each names its sign-in (`sid`, the refresh
//! token family), and logout or a reused refresh token records the end of
//! that sign-in in Redis, where every service checks it. Refresh tokens are
//! opaque and rotate on every use (see [`refresh_tokens`]). Logins are
//! throttled (see [`throttle`]). A registration records `user.registered` in
//! `auth.outbox` in its transaction (see [`events`]), which the service's
//! relay publishes.

mod credentials;
pub mod events;
mod password_hash;
mod refresh_tokens;
mod routes;
mod throttle;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use freedumb_kit::auth::JwtKeys;
use freedumb_kit::client_ip::TrustedProxies;
use freedumb_kit::config::{ConfigError, Env};
use freedumb_kit::db::Db;
use freedumb_kit::events::{Bus, Relay, SnapshotStream};
use freedumb_kit::service::BackgroundTask;
use freedumb_kit::{Platform, Service};
use sqlx::migrate::Migrator;
use utoipa_axum::router::OpenApiRouter;

pub use credentials::{Email, Password};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The Postgres schema this service owns.
pub const SCHEMA: &str = "auth";

/// The auth service module.
pub struct AuthService;

impl Service for AuthService {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn default_port(&self) -> u16 {
        3001
    }

    fn schema(&self) -> &'static str {
        SCHEMA
    }

    fn migrator(&self) -> &'static Migrator {
        &MIGRATOR
    }

    fn router(&self, platform: &Platform, env: &Env) -> Result<OpenApiRouter, ConfigError> {
        let settings = Settings::from_env(env)?;
        let state = AuthState {
            platform: platform.clone(),
            hasher: Arc::new(refresh_tokens::TokenHasher::new(env.secret("JWT_REFRESH_SECRET", 32)?)),
            throttle: Arc::new(throttle::Throttle::new(platform.redis.clone(), settings.limits.clone())),
            settings: Arc::new(settings),
        };
        Ok(routes::router(state))
    }

    /// The relay that publishes `auth.outbox` (`user.registered`).
    fn background(&self, platform: &Platform, env: &Env) -> Result<Vec<BackgroundTask>, ConfigError> {
        let bus = Bus::from_env(env, platform)?;
        Ok(vec![Relay::new(platform.db.clone(), SCHEMA, &bus).into_task()])
    }

    /// One `user.registered` per user.
    fn snapshot<'a>(&'a self, db: &'a Db) -> SnapshotStream<'a> {
        events::snapshot(db)
    }
}

#[derive(Debug, Clone)]
struct Settings {
    access_ttl: Duration,
    refresh_ttl: Duration,
    limits: throttle::Limits,
}

impl Settings {
    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Settings {
            access_ttl: env.seconds_or("ACCESS_TOKEN_TTL_SECS", 15 * 60)?,
            refresh_ttl: env.seconds_or("REFRESH_TOKEN_TTL_SECS", 30 * 24 * 3600)?,
            limits: throttle::Limits::from_env(env)?,
        })
    }
}

#[derive(Clone)]
struct AuthState {
    platform: Platform,
    settings: Arc<Settings>,
    hasher: Arc<refresh_tokens::TokenHasher>,
    throttle: Arc<throttle::Throttle>,
}

impl FromRef<AuthState> for JwtKeys {
    fn from_ref(s: &AuthState) -> Self {
        s.platform.jwt.clone()
    }
}

impl FromRef<AuthState> for TrustedProxies {
    fn from_ref(s: &AuthState) -> Self {
        s.platform.trusted_proxies.clone()
    }
}

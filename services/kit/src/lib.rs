//! The service kit: everything a FREEDUMB service shares, so that no service
//! writes it again.
//!
//! - [`config`]: environment variables, validated at start-up.
//! - [`telemetry`]: structured JSON logs.
//! - [`metrics`]: the seed's Prometheus metrics.
//! - [`observe`]: the per-request middleware (request id, log line, metrics, error shape).
//! - [`error`] and [`extract`]: the one error shape, and extractors that use it.
//! - [`money`]: exact amounts in minor units, ISO 4217 currencies.
//! - [`text`] and [`date`]: the text and dates a request may carry (no control characters; `YYYY-MM-DD` in 1900–9999).
//! - [`schedule`] and [`period`]: calendar arithmetic of recurring rules and budget periods, shared by their owners and analytics.
//! - [`idempotency`]: `Idempotency-Key` handling for POST requests.
//! - [`auth`]: access tokens and the [`auth::AuthUser`] extractor.
//! - [`client_ip`]: the client's address through trusted proxies.
//! - [`db`] and [`cache`]: Postgres and Redis.
//! - [`events`]: the transactional outbox, its relay to RabbitMQ, idempotent consumers.
//! - [`openapi`]: what every OpenAPI document shares (common error answers, amount and currency schemas).
//! - [`service`]: the [`service::Service`] contract and the shared [`service::Platform`].
//! - [`server`]: the router, the middleware stack, graceful shutdown, background tasks.
//! - `testing` (feature `testing`): test databases, a cuttable TCP proxy, a test exchange.

pub mod auth;
pub mod cache;
pub mod client_ip;
pub mod config;
pub mod date;
pub mod db;
pub mod error;
pub mod events;
pub mod extract;
pub mod idempotency;
pub mod metrics;
pub mod money;
pub mod observe;
pub mod openapi;
mod ops;
pub mod period;
pub mod schedule;
pub mod server;
pub mod service;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod text;

pub use error::{ApiError, ApiResult, ErrorBody, FieldError, FieldErrors};
pub use service::{Platform, Service};

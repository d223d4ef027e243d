//! Reports: `POST /v1/reports` queues a job, a background runner generates
//! it from the same views as `/v1/analytics` ([`crate::queries`]), and the
//! finished file (CSV or an SVG chart) is downloaded until it expires.
//!
//! - [`jobs`]: the `analytics.report_jobs` table and the job's state machine.
//! - [`runner`]: the background task that claims and runs jobs (`SKIP
//!   LOCKED`, leases, timeouts, retries, cancellation, expiry).
//! - [`csv`] and [`chart`]: the two formats.
//! - `routes`: the HTTP side.

pub mod chart;
pub mod csv;
pub mod jobs;
mod routes;
pub mod runner;

pub(crate) use routes::router;
pub use runner::{Runner, RunnerConfig};

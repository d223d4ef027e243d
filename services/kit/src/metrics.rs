//! Prometheus metrics with the seed's names and labels (section 12.1).
//!
//! Each process (and each test app) owns its own registry rather than the
//! global default one, so two apps in one test binary never mix counts.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds. The seed's `[0.1, 0.5, 1, 2, 5]` cannot tell a
/// 2 ms answer from a 90 ms one, and our latency objectives sit at 25 ms, so
/// the low end is finer; the seed's bounds are all kept.
pub const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0];

/// The label value for requests that matched no route: one value for all of
/// them, so scanners probing random paths cannot blow up the series count.
pub const UNMATCHED_ROUTE: &str = "unmatched";

#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    http_request_duration_seconds: HistogramVec,
    http_requests_total: IntCounterVec,
    active_transactions: IntGauge,
    cache_hits_total: IntCounterVec,
    cache_misses_total: IntCounterVec,
    // Events (see `crate::events`) and background tasks. Their labels are
    // schema, queue and task names written in code, so they stay bounded.
    outbox_published_total: IntCounterVec,
    outbox_pending: IntGaugeVec,
    events_consumed_total: IntCounterVec,
    background_task_restarts_total: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let labels = &["method", "route", "status_code"];
        let http_request_duration_seconds = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "Duration of HTTP requests in seconds")
                .buckets(LATENCY_BUCKETS.to_vec()),
            labels,
        )
        .expect("valid histogram");
        let http_requests_total =
            IntCounterVec::new(Opts::new("http_requests_total", "Total number of HTTP requests"), labels)
                .expect("valid counter");
        let active_transactions =
            IntGauge::new("active_transactions", "Number of active database transactions").expect("valid gauge");
        let cache_hits_total =
            IntCounterVec::new(Opts::new("cache_hits_total", "Total cache hits"), &["cache_key_prefix"])
                .expect("valid counter");
        let cache_misses_total =
            IntCounterVec::new(Opts::new("cache_misses_total", "Total cache misses"), &["cache_key_prefix"])
                .expect("valid counter");
        let outbox_published_total = IntCounterVec::new(
            Opts::new("outbox_published_total", "Events published from the outbox and confirmed by the broker"),
            &["schema"],
        )
        .expect("valid counter");
        let outbox_pending = IntGaugeVec::new(
            Opts::new("outbox_pending", "Events in the outbox not yet published (counted up to 1,000,000)"),
            &["schema"],
        )
        .expect("valid gauge");
        let events_consumed_total = IntCounterVec::new(
            Opts::new(
                "events_consumed_total",
                "Deliveries handled by event consumers, by outcome (processed, duplicate, retried, dead_lettered, foreign)",
            ),
            &["queue", "outcome"],
        )
        .expect("valid counter");
        let background_task_restarts_total = IntCounterVec::new(
            Opts::new("background_task_restarts_total", "Background tasks restarted after failing or returning early"),
            &["task"],
        )
        .expect("valid counter");
        for collector in [
            Box::new(http_request_duration_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_requests_total.clone()),
            Box::new(active_transactions.clone()),
            Box::new(cache_hits_total.clone()),
            Box::new(cache_misses_total.clone()),
            Box::new(outbox_published_total.clone()),
            Box::new(outbox_pending.clone()),
            Box::new(events_consumed_total.clone()),
            Box::new(background_task_restarts_total.clone()),
            // CPU seconds, resident and virtual memory, open and max file
            // descriptors, threads, start time: read from /proc at scrape time.
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        Metrics {
            inner: Arc::new(Inner {
                registry,
                http_request_duration_seconds,
                http_requests_total,
                active_transactions,
                cache_hits_total,
                cache_misses_total,
                outbox_published_total,
                outbox_pending,
                events_consumed_total,
                background_task_restarts_total,
            }),
        }
    }

    pub fn observe_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let status = status.to_string();
        let labels = [method, route, status.as_str()];
        self.inner.http_request_duration_seconds.with_label_values(&labels).observe(elapsed.as_secs_f64());
        self.inner.http_requests_total.with_label_values(&labels).inc();
    }

    pub fn cache_hit(&self, prefix: &str) {
        self.inner.cache_hits_total.with_label_values(&[prefix]).inc();
    }

    pub fn cache_miss(&self, prefix: &str) {
        self.inner.cache_misses_total.with_label_values(&[prefix]).inc();
    }

    pub fn outbox_published(&self, schema: &str, count: u64) {
        self.inner.outbox_published_total.with_label_values(&[schema]).inc_by(count);
    }

    pub fn set_outbox_pending(&self, schema: &str, pending: i64) {
        self.inner.outbox_pending.with_label_values(&[schema]).set(pending);
    }

    /// `outcome` is one of `processed`, `duplicate`, `retried`, `dead_lettered`.
    pub fn event_consumed(&self, queue: &str, outcome: &'static str) {
        self.inner.events_consumed_total.with_label_values(&[queue, outcome]).inc();
    }

    pub fn background_task_restarted(&self, task: &str) {
        self.inner.background_task_restarts_total.with_label_values(&[task]).inc();
    }

    /// Counts a database transaction as open until the guard is dropped.
    pub fn transaction_opened(&self) -> TransactionGauge {
        self.inner.active_transactions.inc();
        TransactionGauge { gauge: self.inner.active_transactions.clone() }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.inner.registry.gather(), &mut out).expect("encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Decrements `active_transactions` when dropped, whether the transaction
/// committed, rolled back or was abandoned by a panic.
pub struct TransactionGauge {
    gauge: IntGauge,
}

impl Drop for TransactionGauge {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Bounds the `method` label: anything but the standard methods is `OTHER`.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_metric_names_are_exposed() {
        let metrics = Metrics::new();
        metrics.observe_request("GET", "/v1/accounts/{id}", 200, Duration::from_millis(3));
        metrics.cache_hit("balance");
        metrics.cache_miss("balance");
        let text = metrics.render();
        for name in [
            "http_request_duration_seconds_bucket",
            "http_requests_total",
            "active_transactions",
            "cache_hits_total",
            "cache_misses_total",
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.contains(r#"route="/v1/accounts/{id}""#));
    }

    #[test]
    fn the_transaction_gauge_falls_back_when_the_guard_drops() {
        let metrics = Metrics::new();
        let guard = metrics.transaction_opened();
        assert!(metrics.render().contains("active_transactions 1"));
        drop(guard);
        assert!(metrics.render().contains("active_transactions 0"));
    }
}

//! The server's side of a run: `/metrics` scraped before and after, and the
//! difference set beside what the client measured.
//!
//! The server counts every request it answered in `http_requests_total` and
//! times it in `http_request_duration_seconds`, both by method, route
//! template and status. A deployment can be several processes (one
//! container per replica of each service), each with its own `/metrics`:
//! every one is scraped and their counters and histogram buckets summed, so
//! the deployment is compared as one server. Subtracting the scrape before
//! the run from the one after gives what this run did (anything else hitting the server at the
//! same time counts too, so run against a quiet server). Counts should agree
//! exactly: a gap means requests that never reached the handler (a gateway's
//! 429, a client time-out) or a request-naming mistake. Server latency is the
//! handler's time, client latency adds queueing, the gateway and the network,
//! so the server's figure must not be the larger one.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context, bail};
use prometheus_parse::{Scrape, Value};
use serde::{Deserialize, Serialize};

/// One scrape of `/metrics`: per (method, route), counts by status and the
/// latency histogram's cumulative buckets.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub routes: HashMap<(String, String), RouteFigures>,
    pub resident_memory_bytes: Option<f64>,
}

/// Figures per (method, route template).
pub type Routes = HashMap<(String, String), RouteFigures>;

#[derive(Debug, Default, Clone)]
pub struct RouteFigures {
    pub requests: f64,
    pub errors: f64,
    /// Cumulative bucket counts by upper bound in seconds, summed over status codes.
    pub buckets: BTreeMap<u64, f64>,
}

/// Scrapes every process of a deployment and sums them; a process that does
/// not answer fails the scrape, as its requests would be missing.
pub async fn scrape_all(client: &reqwest_goose::Client, urls: &[String]) -> anyhow::Result<Snapshot> {
    let mut total = Snapshot::default();
    for url in urls {
        total.add(&scrape(client, url).await?);
    }
    Ok(total)
}

/// Fetches and parses `url` (a `/metrics` endpoint).
pub async fn scrape(client: &reqwest_goose::Client, url: &str) -> anyhow::Result<Snapshot> {
    let response = client
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("failed to scrape {url}"))?;
    if !response.status().is_success() {
        bail!("{url} answered {}", response.status());
    }
    let text = response.text().await.with_context(|| format!("failed to read {url}"))?;
    parse(&text)
}

/// prometheus-parse 0.2 finds a sample's labels with `\{[^}]+\}`, so a
/// route template such as `/v1/accounts/{id}` cuts them short. Braces inside
/// quoted label values are swapped for control characters before parsing,
/// and swapped back in `label`.
const OPEN: char = '\u{1}';
const CLOSE: char = '\u{2}';

fn shield_braces(line: &str) -> String {
    let mut quoted = false;
    let mut escaped = false;
    line.chars()
        .map(|c| {
            let out = match c {
                '{' if quoted => OPEN,
                '}' if quoted => CLOSE,
                _ => c,
            };
            if quoted && c == '\\' && !escaped {
                escaped = true;
                return out;
            }
            if c == '"' && !escaped {
                quoted = !quoted;
            }
            escaped = false;
            out
        })
        .collect()
}

fn label(labels: &prometheus_parse::Labels, name: &str) -> String {
    labels.get(name).unwrap_or_default().replace(OPEN, "{").replace(CLOSE, "}")
}

pub fn parse(text: &str) -> anyhow::Result<Snapshot> {
    let scrape =
        Scrape::parse(text.lines().map(|line| Ok(shield_braces(line)))).context("failed to parse the metrics text")?;
    let mut snapshot = Snapshot::default();
    for sample in scrape.samples {
        let key = || (label(&sample.labels, "method"), label(&sample.labels, "route"));
        match (sample.metric.as_str(), &sample.value) {
            ("http_requests_total", Value::Counter(n) | Value::Untyped(n)) => {
                let figures = snapshot.routes.entry(key()).or_default();
                figures.requests += n;
                if sample.labels.get("status_code").and_then(|s| s.parse::<u16>().ok()).is_some_and(|s| s >= 400) {
                    figures.errors += n;
                }
            }
            ("http_request_duration_seconds", Value::Histogram(buckets)) => {
                let figures = snapshot.routes.entry(key()).or_default();
                for bucket in buckets {
                    *figures.buckets.entry(bound_key(bucket.less_than)).or_default() += bucket.count;
                }
            }
            ("process_resident_memory_bytes", Value::Gauge(n) | Value::Untyped(n)) => {
                snapshot.resident_memory_bytes = Some(*n);
            }
            _ => {}
        }
    }
    Ok(snapshot)
}

/// Bucket bounds as map keys: nanoseconds, with +Inf as `u64::MAX`.
fn bound_key(seconds: f64) -> u64 {
    if seconds.is_infinite() { u64::MAX } else { (seconds * 1e9).round() as u64 }
}

impl Snapshot {
    /// Adds `other`'s figures to these: two processes as one. Counters and
    /// cumulative buckets add up (every process runs the same binary, so
    /// the buckets' bounds are the same); resident memory too.
    pub fn add(&mut self, other: &Snapshot) {
        for (key, theirs) in &other.routes {
            let ours = self.routes.entry(key.clone()).or_default();
            ours.requests += theirs.requests;
            ours.errors += theirs.errors;
            for (bound, count) in &theirs.buckets {
                *ours.buckets.entry(*bound).or_default() += count;
            }
        }
        self.resident_memory_bytes = match (self.resident_memory_bytes, other.resident_memory_bytes) {
            (Some(ours), Some(theirs)) => Some(ours + theirs),
            (ours, theirs) => ours.or(theirs),
        };
    }

    /// What happened between `before` and `self`, per route.
    pub fn since(&self, before: &Snapshot) -> HashMap<(String, String), RouteFigures> {
        let mut delta = HashMap::new();
        for (key, after) in &self.routes {
            let zero = RouteFigures::default();
            let before = before.routes.get(key).unwrap_or(&zero);
            let figures = RouteFigures {
                requests: after.requests - before.requests,
                errors: after.errors - before.errors,
                buckets: after
                    .buckets
                    .iter()
                    .map(|(bound, n)| (*bound, n - before.buckets.get(bound).copied().unwrap_or(0.0)))
                    .collect(),
            };
            if figures.requests > 0.0 {
                delta.insert(key.clone(), figures);
            }
        }
        delta
    }
}

impl RouteFigures {
    /// The `q` quantile in milliseconds, interpolated linearly inside its
    /// bucket as Prometheus' `histogram_quantile` does; `None` without
    /// requests or when it falls in the +Inf bucket.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.buckets.get(&u64::MAX).copied().or_else(|| self.buckets.values().last().copied())?;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut lower_bound, mut lower_count) = (0u64, 0.0);
        for (&bound, &count) in &self.buckets {
            if count >= rank {
                if bound == u64::MAX {
                    return None;
                }
                let width = (bound - lower_bound) as f64;
                let share = if count > lower_count { (rank - lower_count) / (count - lower_count) } else { 1.0 };
                return Some((lower_bound as f64 + width * share) / 1e6);
            }
            (lower_bound, lower_count) = (bound, count);
        }
        None
    }
}

impl RouteFigures {
    /// The edges, in milliseconds, of the bucket the `q` quantile falls in:
    /// all the histogram knows for sure.
    pub fn quantile_bucket_ms(&self, q: f64) -> Option<(f64, f64)> {
        let total = self.buckets.get(&u64::MAX).copied()?;
        let rank = q * total;
        let mut lower = 0u64;
        for (&bound, &count) in &self.buckets {
            if count >= rank && total > 0.0 {
                let upper = if bound == u64::MAX { f64::INFINITY } else { bound as f64 / 1e6 };
                return Some((lower as f64 / 1e6, upper));
            }
            lower = bound;
        }
        None
    }
}

/// One request group, client and server side by side.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub method: String,
    pub route: String,
    pub client_requests: u64,
    pub server_requests: u64,
    pub client_errors: u64,
    pub server_errors: u64,
    pub client_p50_ms: f64,
    pub server_p50_ms: Option<f64>,
    pub client_p99_ms: f64,
    pub server_p99_ms: Option<f64>,
    /// Why this row is beyond tolerance; empty when it is not.
    pub flags: Vec<String>,
}

/// The client's figures for one (method, route).
#[derive(Debug, Default, Clone)]
pub struct ClientFigures {
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Compares per (method, route). `tolerance` is a fraction (0.02 = 2%).
pub fn compare(
    client: &BTreeMap<(String, String), ClientFigures>,
    server: &HashMap<(String, String), RouteFigures>,
    tolerance: f64,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for (key, c) in client {
        let zero = RouteFigures::default();
        let s = server.get(key).unwrap_or(&zero);
        let server_requests = s.requests.round() as u64;
        let server_errors = s.errors.round() as u64;
        let mut flags = Vec::new();
        let off = |a: u64, b: u64| (a.abs_diff(b) as f64) > tolerance * (a.max(b) as f64);
        if off(c.requests, server_requests) {
            flags.push(format!("requests differ: client {} vs server {server_requests}", c.requests));
        }
        if off(c.errors, server_errors) {
            flags.push(format!("errors differ: client {} vs server {server_errors}", c.errors));
        }
        let (server_p50, server_p99) = (s.quantile_ms(0.50), s.quantile_ms(0.99));
        // The server's time is part of the client's, so the server's median
        // cannot be larger. The histogram only knows its bucket: flag when
        // even the bucket's lower edge is above the client's median.
        if let Some((lower, upper)) = s.quantile_bucket_ms(0.50)
            && lower > c.p50_ms * (1.0 + tolerance)
        {
            flags.push(format!("server p50 is {lower}–{upper} ms, above the client's {:.1} ms", c.p50_ms));
        }
        rows.push(Row {
            method: key.0.clone(),
            route: key.1.clone(),
            client_requests: c.requests,
            server_requests,
            client_errors: c.errors,
            server_errors,
            client_p50_ms: c.p50_ms,
            server_p50_ms: server_p50,
            client_p99_ms: c.p99_ms,
            server_p99_ms: server_p99,
            flags,
        });
    }
    rows
}

pub fn markdown(rows: &[Row], tolerance: f64, endpoints: &[String]) -> String {
    let ms = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), |v| format!("{v:.1}"));
    let scraped = match endpoints {
        [] => "`/metrics`".to_owned(),
        [one] => format!("`{one}`"),
        many => format!(
            "the sum of {} processes' `/metrics` ({})",
            many.len(),
            many.iter().map(|url| format!("`{url}`")).collect::<Vec<_>>().join(", ")
        ),
    };
    let mut out = format!(
        "## Server-side cross-check\n\n{scraped} before and after the run; tolerance {:.1}%.\n\n\
         | request | requests client / server | errors client / server | p50 ms client / server | p99 ms client / server | flag |\n\
         | --- | --- | --- | --- | --- | --- |\n",
        tolerance * 100.0
    );
    for row in rows {
        out.push_str(&format!(
            "| {} {} | {} / {} | {} / {} | {:.1} / {} | {:.1} / {} | {} |\n",
            row.method,
            row.route,
            row.client_requests,
            row.server_requests,
            row.client_errors,
            row.server_errors,
            row.client_p50_ms,
            ms(row.server_p50_ms),
            row.client_p99_ms,
            ms(row.server_p99_ms),
            if row.flags.is_empty() { "ok".to_owned() } else { format!("**MISMATCH**: {}", row.flags.join("; ")) }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"
# TYPE http_requests_total counter
http_requests_total{method="GET",route="/v1/transactions",status_code="200"} 10
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{method="GET",route="/v1/transactions",status_code="200",le="0.005"} 5
http_request_duration_seconds_bucket{method="GET",route="/v1/transactions",status_code="200",le="0.01"} 10
http_request_duration_seconds_bucket{method="GET",route="/v1/transactions",status_code="200",le="+Inf"} 10
http_request_duration_seconds_sum{method="GET",route="/v1/transactions",status_code="200"} 0.05
http_request_duration_seconds_count{method="GET",route="/v1/transactions",status_code="200"} 10
"#;
    const AFTER: &str = r#"
# TYPE http_requests_total counter
http_requests_total{method="GET",route="/v1/transactions",status_code="200"} 110
http_requests_total{method="GET",route="/v1/transactions",status_code="500"} 2
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{method="GET",route="/v1/transactions",status_code="200",le="0.005"} 5
http_request_duration_seconds_bucket{method="GET",route="/v1/transactions",status_code="200",le="0.01"} 110
http_request_duration_seconds_bucket{method="GET",route="/v1/transactions",status_code="200",le="+Inf"} 110
http_request_duration_seconds_sum{method="GET",route="/v1/transactions",status_code="200"} 0.8
http_request_duration_seconds_count{method="GET",route="/v1/transactions",status_code="200"} 110
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 31000000
http_requests_total{method="GET",route="/v1/accounts/{id}",status_code="200"} 7
"#;

    fn key() -> (String, String) {
        ("GET".to_owned(), "/v1/transactions".to_owned())
    }

    #[test]
    fn the_difference_of_two_scrapes_is_what_the_run_did() {
        let delta = parse(AFTER).unwrap().since(&parse(BEFORE).unwrap());
        let figures = &delta[&key()];
        assert_eq!(figures.requests, 102.0);
        assert_eq!(figures.errors, 2.0);
        // All 100 new 200s fell between 5 and 10 ms: the median is interpolated to 7.5 ms.
        let p50 = figures.quantile_ms(0.5).unwrap();
        assert!((p50 - 7.5).abs() < 0.01, "{p50}");
        assert_eq!(parse(AFTER).unwrap().resident_memory_bytes, Some(31e6));
    }

    #[test]
    fn route_templates_with_braces_keep_their_labels() {
        let snapshot = parse(AFTER).unwrap();
        let key = ("GET".to_owned(), "/v1/accounts/{id}".to_owned());
        assert_eq!(snapshot.routes[&key].requests, 7.0, "{:?}", snapshot.routes.keys());
    }

    #[test]
    fn counts_that_disagree_beyond_the_tolerance_are_flagged() {
        let delta = parse(AFTER).unwrap().since(&parse(BEFORE).unwrap());
        let client =
            |requests, errors| BTreeMap::from([(key(), ClientFigures { requests, errors, p50_ms: 9.0, p99_ms: 12.0 })]);
        let rows = compare(&client(102, 2), &delta, 0.01);
        assert!(rows[0].flags.is_empty(), "{:?}", rows[0].flags);
        let rows = compare(&client(150, 2), &delta, 0.01);
        assert_eq!(rows[0].flags.len(), 1, "{:?}", rows[0].flags);
        assert!(rows[0].flags[0].contains("client 150 vs server 102"));
    }

    /// Real scrapes of two `freedumb serve auth` processes (two replicas of
    /// one service), taken after replica 0 answered 3 `GET /health` and 2
    /// unauthenticated `GET /v1/auth/me` (401) and replica 1 answered 1 and 4.
    const REPLICA_0: &str = include_str!("../testdata/metrics-replica-0.txt");
    const REPLICA_1: &str = include_str!("../testdata/metrics-replica-1.txt");

    fn get(route: &str) -> (String, String) {
        ("GET".to_owned(), route.to_owned())
    }

    #[test]
    fn the_scrapes_of_two_replicas_add_up_to_one_deployment() {
        let (zero, one) = (parse(REPLICA_0).unwrap(), parse(REPLICA_1).unwrap());
        let mut total = Snapshot::default();
        total.add(&zero);
        total.add(&one);

        let me = &total.routes[&get("/v1/auth/me")];
        assert_eq!((me.requests, me.errors), (6.0, 6.0));
        let health = &total.routes[&get("/health")];
        assert_eq!((health.requests, health.errors), (4.0, 0.0));
        // Every bucket is the sum of the two processes' buckets.
        for (bound, count) in &me.buckets {
            let of = |s: &Snapshot| s.routes[&get("/v1/auth/me")].buckets.get(bound).copied().unwrap_or(0.0);
            assert_eq!(*count, of(&zero) + of(&one), "bucket {bound}");
        }
        assert_eq!(me.buckets[&u64::MAX], 6.0);
        assert_eq!(
            total.resident_memory_bytes,
            Some(zero.resident_memory_bytes.unwrap() + one.resident_memory_bytes.unwrap())
        );

        // A client that sent its 6 requests through a gateway spreading them
        // over both replicas agrees with the sum, and with neither alone.
        let client = BTreeMap::from([(
            get("/v1/auth/me"),
            ClientFigures { requests: 6, errors: 6, p50_ms: 50.0, p99_ms: 80.0 },
        )]);
        let since_start = |s: &Snapshot| s.since(&Snapshot::default());
        let rows = compare(&client, &since_start(&total), 0.01);
        assert!(rows[0].flags.is_empty(), "{:?}", rows[0].flags);
        let rows = compare(&client, &since_start(&zero), 0.01);
        assert!(rows[0].flags.iter().any(|f| f.contains("client 6 vs server 2")), "{:?}", rows[0].flags);
    }

    #[test]
    fn a_server_slower_than_its_client_is_flagged() {
        let delta = parse(AFTER).unwrap().since(&parse(BEFORE).unwrap());
        // The server's median is in its 5–10 ms bucket.
        let client =
            |p50_ms| BTreeMap::from([(key(), ClientFigures { requests: 102, errors: 2, p50_ms, p99_ms: 12.0 })]);
        let rows = compare(&client(2.0), &delta, 0.01);
        assert!(rows[0].flags.iter().any(|f| f.contains("server p50")), "{:?}", rows[0].flags);
        let rows = compare(&client(6.0), &delta, 0.01);
        assert!(rows[0].flags.is_empty(), "within the bucket is not a mismatch: {:?}", rows[0].flags);
    }
}

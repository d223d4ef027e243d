//! The server's side of a run: `/metrics` scraped before and after, and the
//! difference set beside what the client measured.
//!
//! The server counts every request it answered in `http_requests_total` and
//! times it in `http_request_duration_seconds`, both by method, route
//! template and status. A deployment can be several processes (one
//! container per replica of each service), each with its own `/metrics`.
//! Each process's scrape before the run is subtracted from its own scrape
//! after it, and only those differences are summed, so the deployment is
//! compared as one server. Subtracting per process, not the sums, is what
//! shows a process that restarted during the run (its counters began again
//! at zero, which a sum can hide behind another process's growth) or went
//! away: such a process is flagged by name and left out of the sum, as what
//! it did during the run is unknown. Anything else hitting the server at the
//! same time counts too, so run against a quiet server. Counts should agree
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
    /// `process_start_time_seconds`: a different one after the run means the
    /// process restarted in between.
    pub start_time_seconds: Option<f64>,
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
/// not answer fails the scrape, as its figures would be missing (resident
/// memory).
pub async fn scrape_all(client: &reqwest_goose::Client, urls: &[String]) -> anyhow::Result<Snapshot> {
    let mut total = Snapshot::default();
    for url in urls {
        total.add(&scrape(client, url).await?);
    }
    Ok(total)
}

/// Scrapes every process of a deployment, each on its own: the scrape or
/// why it failed, per URL in the order given.
pub async fn scrape_each(client: &reqwest_goose::Client, urls: &[String]) -> Vec<(String, anyhow::Result<Snapshot>)> {
    let mut scrapes = Vec::new();
    for url in urls {
        scrapes.push((url.clone(), scrape(client, url).await));
    }
    scrapes
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
            ("process_start_time_seconds", Value::Gauge(n) | Value::Untyped(n)) => {
                snapshot.start_time_seconds = Some(*n);
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
            self.routes.entry(key.clone()).or_default().add(theirs);
        }
        self.resident_memory_bytes = match (self.resident_memory_bytes, other.resident_memory_bytes) {
            (Some(ours), Some(theirs)) => Some(ours + theirs),
            (ours, theirs) => ours.or(theirs),
        };
    }

    /// What one process did between `before` and `self`, per route; `Err`
    /// says why that is unknown: the process restarted in between (a new
    /// start time, or a counter or bucket that went down, as counters only
    /// go down when a process starts again at zero).
    pub fn since(&self, before: &Snapshot) -> Result<Routes, String> {
        if let (Some(was), Some(is)) = (before.start_time_seconds, self.start_time_seconds)
            // Whole seconds apart: the start time is derived from the boot
            // time and clock ticks, so allow for rounding.
            && (is - was).abs() >= 1.0
        {
            return Err(format!(
                "restarted during the run (process_start_time_seconds {was} before, {is} after): its counters \
                 began again at zero"
            ));
        }
        let zero = RouteFigures::default();
        let mut went_down = Vec::new();
        for (key, was) in &before.routes {
            let is = self.routes.get(key).unwrap_or(&zero);
            let name = || format!("{} {}", key.0, key.1);
            if is.requests < was.requests {
                went_down.push(format!("{} requests {} → {}", name(), was.requests, is.requests));
            } else if is.errors < was.errors {
                went_down.push(format!("{} errors {} → {}", name(), was.errors, is.errors));
            } else if let Some((bound, n)) =
                was.buckets.iter().find(|(bound, n)| is.buckets.get(bound).copied().unwrap_or(0.0) < **n)
            {
                let count = is.buckets.get(bound).copied().unwrap_or(0.0);
                went_down.push(format!("{} latency bucket le={} {n} → {count}", name(), bound_name(*bound)));
            }
        }
        if !went_down.is_empty() {
            went_down.sort();
            return Err(format!("counters went down, so it restarted during the run: {}", went_down.join(", ")));
        }
        let mut delta = HashMap::new();
        for (key, after) in &self.routes {
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
        Ok(delta)
    }
}

/// A bucket's bound as Prometheus writes it (`le="0.005"`, `le="+Inf"`).
fn bound_name(bound: u64) -> String {
    if bound == u64::MAX { "+Inf".to_owned() } else { (bound as f64 / 1e9).to_string() }
}

/// A process of the deployment whose figures for the run are unknown, and
/// why; it is left out of the server's sum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlaggedEndpoint {
    pub url: String,
    pub reason: String,
}

/// What the deployment did during the run: the sum of the per-process
/// differences, and the processes that could not be counted.
#[derive(Debug, Default, Clone)]
pub struct RunFigures {
    pub routes: Routes,
    pub flagged: Vec<FlaggedEndpoint>,
}

/// Subtracts each process's scrape before the run from its own scrape after
/// it, and sums the differences. A process that did not answer after the
/// run, or restarted during it, is flagged rather than summed: its share of
/// the run is unknown, and a wrong total would look like a real one.
pub fn during_run(before: &[(String, Snapshot)], after: &[(String, anyhow::Result<Snapshot>)]) -> RunFigures {
    let mut figures = RunFigures::default();
    for (url, was) in before {
        let delta = match after.iter().find(|(u, _)| u == url).map(|(_, is)| is) {
            Some(Ok(is)) => is.since(was),
            // The root cause alone: the whole chain repeats the URL, twice.
            Some(Err(err)) => Err(format!("answered before the run but not after: {}", err.root_cause())),
            None => Err("answered before the run but was not scraped after it".to_owned()),
        };
        match delta {
            Ok(routes) => {
                for (key, theirs) in routes {
                    figures.routes.entry(key).or_default().add(&theirs);
                }
            }
            Err(reason) => figures.flagged.push(FlaggedEndpoint { url: url.clone(), reason }),
        }
    }
    figures
}

impl RouteFigures {
    fn add(&mut self, other: &RouteFigures) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (bound, count) in &other.buckets {
            *self.buckets.entry(*bound).or_default() += count;
        }
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

pub fn markdown(rows: &[Row], tolerance: f64, endpoints: &[String], flagged: &[FlaggedEndpoint]) -> String {
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
        "## Server-side cross-check\n\n{scraped} before and after the run; tolerance {:.1}%.\n\n",
        tolerance * 100.0
    );
    if !flagged.is_empty() {
        out.push_str(&format!(
            "**FLAGGED**: what {} did during the run is unknown, so the server's figures below leave {} out:\n\n",
            if flagged.len() == 1 { "this process" } else { "these processes" },
            if flagged.len() == 1 { "it" } else { "them" }
        ));
        for endpoint in flagged {
            out.push_str(&format!("- `{}`: {}\n", endpoint.url, endpoint.reason));
        }
        out.push('\n');
    }
    out.push_str(
        "| request | requests client / server | errors client / server | p50 ms client / server | p99 ms client / server | flag |\n\
         | --- | --- | --- | --- | --- | --- |\n",
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
        let delta = parse(AFTER).unwrap().since(&parse(BEFORE).unwrap()).unwrap();
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
        let delta = parse(AFTER).unwrap().since(&parse(BEFORE).unwrap()).unwrap();
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
        let since_start = |s: &Snapshot| s.since(&Snapshot::default()).unwrap();
        let rows = compare(&client, &since_start(&total), 0.01);
        assert!(rows[0].flags.is_empty(), "{:?}", rows[0].flags);
        let rows = compare(&client, &since_start(&zero), 0.01);
        assert!(rows[0].flags.iter().any(|f| f.contains("client 6 vs server 2")), "{:?}", rows[0].flags);
    }

    /// Modified copies of those scrapes (the only change is to the figures):
    /// replica 0 after it restarted during the run and answered 5 `GET
    /// /health` and 1 `GET /v1/auth/me` since, with a new start time; replica
    /// 1 after answering 2 more `GET /health` and 6 more `GET /v1/auth/me`.
    const REPLICA_0_RESTARTED: &str = include_str!("../testdata/metrics-replica-0-restarted.txt");
    const REPLICA_1_LATER: &str = include_str!("../testdata/metrics-replica-1-later.txt");

    const URL_0: &str = "http://127.0.0.1:3001/metrics";
    const URL_1: &str = "http://127.0.0.1:4001/metrics";

    fn requests_and_errors(routes: &Routes, route: &str) -> (f64, f64) {
        routes.get(&get(route)).map_or((0.0, 0.0), |f| (f.requests, f.errors))
    }

    #[test]
    fn a_process_that_restarted_during_the_run_is_flagged_not_summed() {
        let before = vec![(URL_0.to_owned(), parse(REPLICA_0).unwrap()), (URL_1.to_owned(), parse(REPLICA_1).unwrap())];
        let after = vec![(URL_0.to_owned(), parse(REPLICA_0_RESTARTED)), (URL_1.to_owned(), parse(REPLICA_1_LATER))];

        // Summing before subtracting gives totals that look like a run:
        // replica 1's growth hides replica 0's reset.
        let sum = |scrapes: Vec<&Snapshot>| {
            let mut total = Snapshot::default();
            scrapes.into_iter().for_each(|s| total.add(s));
            total
        };
        let summed_after = sum(after.iter().map(|(_, s)| s.as_ref().unwrap()).collect());
        let summed_before = sum(before.iter().map(|(_, s)| s).collect());
        let hidden = summed_after.since(&summed_before).unwrap();
        assert_eq!(requests_and_errors(&hidden, "/health"), (4.0, 0.0));
        assert_eq!(requests_and_errors(&hidden, "/v1/auth/me"), (5.0, 5.0));

        // Per process, replica 0 is flagged with its reason, and the totals
        // are replica 1's alone: what is known of the run.
        let run = during_run(&before, &after);
        assert_eq!(run.flagged.len(), 1, "{:?}", run.flagged);
        assert_eq!(run.flagged[0].url, URL_0);
        assert!(
            run.flagged[0]
                .reason
                .contains("restarted during the run (process_start_time_seconds 1795824502 before, 1795824561 after)"),
            "{}",
            run.flagged[0].reason
        );
        assert_eq!(requests_and_errors(&run.routes, "/health"), (2.0, 0.0));
        assert_eq!(requests_and_errors(&run.routes, "/v1/auth/me"), (6.0, 6.0));
        assert_eq!(run.routes[&get("/v1/auth/me")].buckets[&u64::MAX], 6.0);
    }

    #[test]
    fn without_a_start_time_a_counter_that_went_down_shows_the_restart() {
        let without_start_time = |text: &str| {
            text.lines().filter(|l| !l.contains("process_start_time_seconds")).collect::<Vec<_>>().join("\n")
        };
        let before = parse(&without_start_time(REPLICA_0)).unwrap();
        let after = parse(&without_start_time(REPLICA_0_RESTARTED)).unwrap();
        assert_eq!(after.start_time_seconds, None);
        // `GET /health` went up (3 → 5), `GET /v1/auth/me` down (2 → 1).
        let reason = after.since(&before).unwrap_err();
        assert_eq!(reason, "counters went down, so it restarted during the run: GET /v1/auth/me requests 2 → 1");

        // A route the process no longer knows went down to zero as well.
        let health_only: String =
            REPLICA_0_RESTARTED.lines().filter(|l| !l.contains("/v1/auth/me")).map(|l| format!("{l}\n")).collect();
        let reason = parse(&without_start_time(&health_only)).unwrap().since(&before).unwrap_err();
        assert!(reason.contains("GET /v1/auth/me requests 2 → 0"), "{reason}");
    }

    #[test]
    fn a_process_that_does_not_answer_after_the_run_is_flagged_with_the_reason() {
        let before = vec![(URL_0.to_owned(), parse(REPLICA_0).unwrap()), (URL_1.to_owned(), parse(REPLICA_1).unwrap())];
        let after = vec![
            (URL_0.to_owned(), Err(anyhow::anyhow!("connection refused").context(format!("failed to scrape {URL_0}")))),
            (URL_1.to_owned(), parse(REPLICA_1_LATER)),
        ];
        let run = during_run(&before, &after);
        assert_eq!(
            run.flagged,
            vec![FlaggedEndpoint {
                url: URL_0.to_owned(),
                reason: "answered before the run but not after: connection refused".to_owned(),
            }]
        );
        assert_eq!(requests_and_errors(&run.routes, "/v1/auth/me"), (6.0, 6.0));

        // The report says which process is left out, and why.
        let md = markdown(&[], 0.01, &[URL_0.to_owned(), URL_1.to_owned()], &run.flagged);
        assert!(
            md.contains(&format!(
                "**FLAGGED**: what this process did during the run is unknown, so the server's figures below leave it \
                 out:\n\n- `{URL_0}`: answered before the run but not after: connection refused\n"
            )),
            "{md}"
        );
    }

    #[test]
    fn a_server_slower_than_its_client_is_flagged() {
        let delta = parse(AFTER).unwrap().since(&parse(BEFORE).unwrap()).unwrap();
        // The server's median is in its 5–10 ms bucket.
        let client =
            |p50_ms| BTreeMap::from([(key(), ClientFigures { requests: 102, errors: 2, p50_ms, p99_ms: 12.0 })]);
        let rows = compare(&client(2.0), &delta, 0.01);
        assert!(rows[0].flags.iter().any(|f| f.contains("server p50")), "{:?}", rows[0].flags);
        let rows = compare(&client(6.0), &delta, 0.01);
        assert!(rows[0].flags.is_empty(), "within the bucket is not a mismatch: {:?}", rows[0].flags);
    }
}

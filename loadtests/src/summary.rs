//! What a run leaves besides goose's reports: `summary.json` (the figures
//! `--baseline` compares, stable across goose versions), `summary.md` (the
//! SLO verdicts with a table of every breach, the server-side cross-check,
//! the regressions against a baseline) and the console lines.
//!
//! goose already judges the thresholds and can show a baseline's deltas in
//! its reports; what it lacks, and this adds, is failing on a regression
//! beyond a tolerance and the server's side of the figures.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use goose::metrics::{GooseMetrics, GooseRequestMetricTimingData};
use goose::threshold::ThresholdResult;
use serde::{Deserialize, Serialize};

use crate::crosscheck::{self, ClientFigures};

/// One request group's client-side figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Group {
    /// `METHOD name`, as goose's reports and thresholds name it.
    pub name: String,
    pub requests: u64,
    pub errors: u64,
    pub requests_per_second: f64,
    /// From the coordinated-omission-mitigated times when mitigation is on,
    /// else the raw times.
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    /// p95 and p99 of the requests actually sent, without mitigation's
    /// synthetic ones: what goose's thresholds, so the objectives, judge.
    #[serde(default)]
    pub p95_raw_ms: f64,
    pub p99_raw_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Regression {
    pub group: String,
    pub figure: String,
    pub baseline: f64,
    pub now: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub label: String,
    pub target: String,
    pub scenario: String,
    pub users: usize,
    /// Seconds the metrics cover (goose resets them once every user has started).
    pub duration_seconds: usize,
    pub total: Group,
    pub groups: Vec<Group>,
    pub thresholds: Vec<ThresholdResult>,
    pub crosscheck_tolerance_percent: f64,
    /// The `/metrics` endpoints the cross-check scraped and summed: one per
    /// process of the deployment.
    #[serde(default)]
    pub crosscheck_endpoints: Vec<String>,
    /// Those whose figures for the run are unknown (no answer after the run,
    /// a restart during it), and why: left out of the server's sum.
    #[serde(default)]
    pub crosscheck_flagged_endpoints: Vec<crosscheck::FlaggedEndpoint>,
    pub crosscheck: Vec<crosscheck::Row>,
    /// The platform's peak `process_resident_memory_bytes` during the run,
    /// summed over its processes.
    pub server_peak_resident_bytes: Option<u64>,
    pub baseline_tolerance_percent: f64,
    pub regressions: Vec<Regression>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Response times merged across request groups, for the totals and the
/// cross-check's per-route figures (goose merges only inside the crate).
/// Percentiles read the lower edge of goose's bucket, so they can sit a
/// bucket below the figure goose prints for a single group.
#[derive(Debug, Default, Clone)]
pub struct Times {
    buckets: BTreeMap<u64, usize>,
    count: usize,
    min_us: u64,
    max_us: u64,
}

impl Times {
    pub fn add(&mut self, data: &GooseRequestMetricTimingData) {
        if data.counter == 0 {
            return;
        }
        for (&bucket, &count) in data.times_us.iter() {
            *self.buckets.entry(bucket).or_default() += count;
        }
        self.min_us = if self.count == 0 { data.minimum_time_us } else { self.min_us.min(data.minimum_time_us) };
        self.max_us = self.max_us.max(data.maximum_time_us);
        self.count += data.counter;
    }

    pub fn percentile_us(&self, percent: f64) -> u64 {
        let rank = ((percent * self.count as f64).ceil() as usize).max(1);
        let mut seen = 0;
        for (&bucket, &count) in &self.buckets {
            seen += count;
            if seen >= rank {
                return bucket.clamp(self.min_us, self.max_us);
            }
        }
        self.max_us
    }
}

trait Percentiles {
    fn count(&self) -> usize;
    fn p_us(&self, percent: f64) -> u64;
}

impl Percentiles for GooseRequestMetricTimingData {
    fn count(&self) -> usize {
        self.counter
    }
    fn p_us(&self, percent: f64) -> u64 {
        self.percentile_us(percent as f32)
    }
}

impl Percentiles for Times {
    fn count(&self) -> usize {
        self.count
    }
    fn p_us(&self, percent: f64) -> u64 {
        self.percentile_us(percent)
    }
}

fn group<T: Percentiles>(name: String, raw: &T, co: Option<&T>, errors: u64, seconds: f64) -> Group {
    let judged = co.unwrap_or(raw);
    let requests = raw.count() as u64;
    Group {
        name,
        requests,
        errors,
        requests_per_second: if seconds > 0.0 { requests as f64 / seconds } else { 0.0 },
        p50_ms: ms(judged.p_us(0.50)),
        p95_ms: ms(judged.p_us(0.95)),
        p99_ms: ms(judged.p_us(0.99)),
        p95_raw_ms: ms(raw.p_us(0.95)),
        p99_raw_ms: ms(raw.p_us(0.99)),
    }
}

/// `GET /v1/transactions?limit=50` → (`GET`, `/v1/transactions`).
fn route_of(name: &str) -> (String, String) {
    let (method, path) = name.split_once(' ').unwrap_or(("", name));
    let path = path.split('?').next().unwrap_or(path);
    (method.to_owned(), path.to_owned())
}

impl Summary {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        label: &str,
        target: &str,
        scenario: &str,
        metrics: &GooseMetrics,
        server: Option<(crosscheck::RunFigures, Vec<String>)>,
        crosscheck_tolerance: f64,
        server_peak_resident_bytes: Option<u64>,
        baseline: Option<&Baseline>,
        baseline_tolerance: f64,
    ) -> Summary {
        let seconds = metrics.duration as f64;
        let mut groups: Vec<Group> = metrics
            .requests
            .iter()
            .map(|(name, agg)| {
                group(
                    name.clone(),
                    &agg.raw_data,
                    agg.coordinated_omission_data.as_ref(),
                    agg.fail_count as u64,
                    seconds,
                )
            })
            .collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));

        let mut raw = Times::default();
        let mut co: Option<Times> = None;
        let mut errors = 0;
        for agg in metrics.requests.values() {
            raw.add(&agg.raw_data);
            if let Some(data) = &agg.coordinated_omission_data {
                co.get_or_insert_with(Default::default).add(data);
            }
            errors += agg.fail_count as u64;
        }
        let total = group("all requests".to_owned(), &raw, co.as_ref(), errors, seconds);

        let crosscheck_endpoints = server.as_ref().map(|(_, endpoints)| endpoints.clone()).unwrap_or_default();
        let crosscheck_flagged_endpoints = server.as_ref().map(|(run, _)| run.flagged.clone()).unwrap_or_default();
        let crosscheck = server
            .map(|(server, _)| {
                let mut client: BTreeMap<(String, String), ClientFigures> = BTreeMap::new();
                let mut timings: BTreeMap<(String, String), Times> = BTreeMap::new();
                for (name, agg) in &metrics.requests {
                    let key = route_of(name);
                    let figures = client.entry(key.clone()).or_default();
                    figures.requests += agg.raw_data.counter as u64;
                    figures.errors += agg.fail_count as u64;
                    timings.entry(key).or_default().add(&agg.raw_data);
                }
                for (key, figures) in client.iter_mut() {
                    figures.p50_ms = ms(timings[key].percentile_us(0.50));
                    figures.p99_ms = ms(timings[key].percentile_us(0.99));
                }
                crosscheck::compare(&client, &server.routes, crosscheck_tolerance)
            })
            .unwrap_or_default();

        let mut summary = Summary {
            label: label.to_owned(),
            target: target.to_owned(),
            scenario: scenario.to_owned(),
            users: metrics.maximum_users,
            duration_seconds: metrics.duration,
            total,
            groups,
            thresholds: metrics.thresholds.clone(),
            crosscheck_tolerance_percent: crosscheck_tolerance * 100.0,
            crosscheck_endpoints,
            crosscheck_flagged_endpoints,
            crosscheck,
            server_peak_resident_bytes,
            baseline_tolerance_percent: baseline_tolerance * 100.0,
            regressions: Vec::new(),
        };
        if let Some(baseline) = baseline {
            summary.regressions = regressions(&baseline.summary, &summary, baseline_tolerance);
        }
        summary
    }

    /// Whether the cross-check found something: a request group beyond the
    /// tolerance, or a process whose figures are unknown.
    pub fn crosscheck_flagged(&self) -> bool {
        !self.crosscheck_flagged_endpoints.is_empty() || self.crosscheck.iter().any(|row| !row.flags.is_empty())
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let json = dir.join("summary.json");
        let text = serde_json::to_string_pretty(self).context("failed to serialise the summary")?;
        std::fs::write(&json, text + "\n").with_context(|| format!("failed to write {}", json.display()))?;
        let md = dir.join("summary.md");
        std::fs::write(&md, self.markdown()).with_context(|| format!("failed to write {}", md.display()))
    }

    pub fn markdown(&self) -> String {
        let mut out = format!(
            "# Load test: {} against {}\n\n{}{} users, {} s measured. Latencies in ms, coordinated-omission \
             mitigated; raw: the requests actually sent, without mitigation's synthetic ones, which is what \
             the objectives (goose's thresholds) judge.\n\n\
             | request | requests | errors | req/s | p50 | p95 | p99 | p95 raw | p99 raw |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
            self.scenario,
            self.target,
            if self.label.is_empty() { String::new() } else { format!("{}. ", self.label) },
            self.users,
            self.duration_seconds
        );
        for g in self.groups.iter().chain(std::iter::once(&self.total)) {
            out.push_str(&format!(
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
                g.name,
                g.requests,
                g.errors,
                g.requests_per_second,
                g.p50_ms,
                g.p95_ms,
                g.p99_ms,
                g.p95_raw_ms,
                g.p99_raw_ms
            ));
        }
        if let Some(bytes) = self.server_peak_resident_bytes {
            let processes = match self.crosscheck_endpoints.len() {
                0 | 1 => String::new(),
                n => format!(" (the sum of its {n} processes)"),
            };
            out.push_str(&format!(
                "\nPlatform resident memory, peak during the run{processes}: {:.1} MiB\n",
                bytes as f64 / 1048576.0
            ));
        }
        out.push_str("\n## Service level objectives\n\n");
        if self.thresholds.is_empty() {
            out.push_str("None given.\n");
        } else {
            out.push_str("| objective | observed | verdict |\n| --- | --- | --- |\n");
            for t in &self.thresholds {
                out.push_str(&format!(
                    "| `{}` | {} | {} |\n",
                    t.rule,
                    t.observed,
                    if t.passed { "pass" } else { "**BREACH**" }
                ));
            }
        }
        if !self.crosscheck.is_empty() || !self.crosscheck_flagged_endpoints.is_empty() {
            out.push('\n');
            out.push_str(&crosscheck::markdown(
                &self.crosscheck,
                self.crosscheck_tolerance_percent / 100.0,
                &self.crosscheck_endpoints,
                &self.crosscheck_flagged_endpoints,
            ));
        }
        if !self.regressions.is_empty() {
            out.push_str(&format!(
                "\n## Regressions against the baseline (tolerance {:.0}%)\n\n| request | figure | baseline | now |\n| --- | --- | --- | --- |\n",
                self.baseline_tolerance_percent
            ));
            for r in &self.regressions {
                out.push_str(&format!("| {} | {} | {:.2} | {:.2} |\n", r.group, r.figure, r.baseline, r.now));
            }
        }
        out
    }

    /// The verdicts for the terminal: every breach, mismatch and regression.
    pub fn console(&self) -> String {
        let mut out = format!(
            "\n{}: {} requests, {:.1} req/s, {} errors; p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms",
            self.scenario,
            self.total.requests,
            self.total.requests_per_second,
            self.total.errors,
            self.total.p50_ms,
            self.total.p95_ms,
            self.total.p99_ms
        );
        if (self.total.p95_raw_ms, self.total.p99_raw_ms) != (self.total.p95_ms, self.total.p99_ms) {
            out.push_str(&format!(
                " (coordinated-omission mitigated; the requests actually sent, which the SLOs judge: p95 {:.1} ms, \
                 p99 {:.1} ms)",
                self.total.p95_raw_ms, self.total.p99_raw_ms
            ));
        }
        let breaches: Vec<_> = self.thresholds.iter().filter(|t| !t.passed).collect();
        if breaches.is_empty() {
            out.push_str(&format!("\nSLOs: all {} met", self.thresholds.len()));
        } else {
            out.push_str(&format!(
                "\nSLO breaches ({} of {}):\n  {:<50} {}",
                breaches.len(),
                self.thresholds.len(),
                "objective",
                "observed"
            ));
            for t in breaches {
                out.push_str(&format!("\n  {:<50} {}", t.rule, t.observed));
            }
        }
        for endpoint in &self.crosscheck_flagged_endpoints {
            out.push_str(&format!("\ncross-check flagged, not counted: {}: {}", endpoint.url, endpoint.reason));
        }
        for row in self.crosscheck.iter().filter(|r| !r.flags.is_empty()) {
            out.push_str(&format!("\ncross-check mismatch: {} {}: {}", row.method, row.route, row.flags.join("; ")));
        }
        if !self.crosscheck.is_empty() && !self.crosscheck_flagged() {
            out.push_str(&format!(
                "\ncross-check: client and server agree on {} request groups",
                self.crosscheck.len()
            ));
        }
        if !self.crosscheck_endpoints.is_empty() {
            out.push_str(&format!("\ncross-check scraped: {}", self.crosscheck_endpoints.join(", ")));
        }
        for r in &self.regressions {
            out.push_str(&format!("\nregression: {} {}: {:.2} → {:.2}", r.group, r.figure, r.baseline, r.now));
        }
        out
    }
}

/// Every figure of `now` worse than `before` by more than `tolerance`.
fn regressions(before: &Summary, now: &Summary, tolerance: f64) -> Vec<Regression> {
    let before_groups: HashMap<&str, &Group> =
        before.groups.iter().chain(std::iter::once(&before.total)).map(|g| (g.name.as_str(), g)).collect();
    let mut found = Vec::new();
    for g in now.groups.iter().chain(std::iter::once(&now.total)) {
        let Some(b) = before_groups.get(g.name.as_str()) else { continue };
        let mut check = |figure: &str, was: f64, is: f64, higher_is_worse: bool| {
            let worse = if higher_is_worse { is > was * (1.0 + tolerance) } else { is < was * (1.0 - tolerance) };
            if worse {
                found.push(Regression { group: g.name.clone(), figure: figure.to_owned(), baseline: was, now: is });
            }
        };
        check("p95 ms", b.p95_ms, g.p95_ms, true);
        check("p99 ms", b.p99_ms, g.p99_ms, true);
        check("req/s", b.requests_per_second, g.requests_per_second, false);
        let rate = |g: &Group| if g.requests == 0 { 0.0 } else { g.errors as f64 / g.requests as f64 };
        if rate(g) > rate(b) + tolerance / 10.0 {
            found.push(Regression {
                group: g.name.clone(),
                figure: "error rate".to_owned(),
                baseline: rate(b),
                now: rate(g),
            });
        }
    }
    found
}

/// An earlier run to compare with.
pub struct Baseline {
    pub summary: Summary,
    /// goose's own JSON report of that run, when it is beside the summary:
    /// goose then shows the deltas in its reports.
    pub goose_report: Option<PathBuf>,
}

impl Baseline {
    pub fn load(path: &Path) -> anyhow::Result<Baseline> {
        let file = if path.is_dir() { path.join("summary.json") } else { path.to_owned() };
        let text = std::fs::read_to_string(&file).with_context(|| format!("failed to read {}", file.display()))?;
        let summary: Summary = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a loadtests summary.json", file.display()))?;
        if summary.groups.is_empty() {
            bail!("{} holds no request groups", file.display());
        }
        let report = file.with_file_name("report.json");
        Ok(Baseline { summary, goose_report: report.is_file().then_some(report) })
    }
}

static PEAK_RESIDENT: AtomicU64 = AtomicU64::new(0);

/// Samples the platform's resident memory, summed over its processes, once
/// a second until aborted.
pub async fn sample_memory(client: reqwest_goose::Client, urls: Vec<String>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Ok(snapshot) = crosscheck::scrape_all(&client, &urls).await
            && let Some(bytes) = snapshot.resident_memory_bytes
        {
            PEAK_RESIDENT.fetch_max(bytes as u64, Ordering::Relaxed);
        }
    }
}

pub fn peak_memory() -> Option<u64> {
    Some(PEAK_RESIDENT.load(Ordering::Relaxed)).filter(|&bytes| bytes > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(p95: f64, rps: f64) -> Summary {
        let g = Group {
            name: "GET /v1/transactions?limit=50".to_owned(),
            requests: 1000,
            errors: 0,
            requests_per_second: rps,
            p50_ms: 5.0,
            p95_ms: p95,
            p99_ms: p95 * 1.5,
            p95_raw_ms: p95,
            p99_raw_ms: p95 * 1.5,
        };
        Summary {
            label: String::new(),
            target: "http://127.0.0.1:3000".to_owned(),
            scenario: "readpath".to_owned(),
            users: 64,
            duration_seconds: 60,
            total: Group { name: "all requests".to_owned(), ..g.clone() },
            groups: vec![g],
            thresholds: Vec::new(),
            crosscheck_tolerance_percent: 1.0,
            crosscheck_endpoints: Vec::new(),
            crosscheck_flagged_endpoints: Vec::new(),
            crosscheck: Vec::new(),
            server_peak_resident_bytes: None,
            baseline_tolerance_percent: 10.0,
            regressions: Vec::new(),
        }
    }

    #[test]
    fn changes_within_the_tolerance_are_not_regressions() {
        assert!(regressions(&summary(10.0, 1000.0), &summary(10.9, 910.0), 0.10).is_empty());
    }

    #[test]
    fn slower_or_less_throughput_beyond_the_tolerance_is_a_regression() {
        let found = regressions(&summary(10.0, 1000.0), &summary(12.0, 800.0), 0.10);
        let figures: Vec<_> = found.iter().map(|r| (r.group.as_str(), r.figure.as_str())).collect();
        assert!(figures.contains(&("GET /v1/transactions?limit=50", "p95 ms")), "{figures:?}");
        assert!(figures.contains(&("all requests", "req/s")), "{figures:?}");
    }

    #[test]
    fn the_report_names_every_process_the_cross_check_scraped() {
        let mut s = summary(10.0, 1000.0);
        s.crosscheck_endpoints = vec!["http://127.0.0.1:3001/metrics".into(), "http://127.0.0.1:4001/metrics".into()];
        s.crosscheck = vec![crosscheck::Row {
            method: "GET".into(),
            route: "/v1/transactions".into(),
            client_requests: 1000,
            server_requests: 1000,
            client_errors: 0,
            server_errors: 0,
            client_p50_ms: 5.0,
            server_p50_ms: Some(4.0),
            client_p99_ms: 9.0,
            server_p99_ms: Some(8.0),
            flags: Vec::new(),
        }];
        s.server_peak_resident_bytes = Some(64 * 1048576);
        let md = s.markdown();
        assert!(
            md.contains(
                "the sum of 2 processes' `/metrics` (`http://127.0.0.1:3001/metrics`, `http://127.0.0.1:4001/metrics`)"
            ),
            "{md}"
        );
        assert!(md.contains("peak during the run (the sum of its 2 processes): 64.0 MiB"), "{md}");
        assert!(
            s.console().contains("cross-check scraped: http://127.0.0.1:3001/metrics, http://127.0.0.1:4001/metrics")
        );
        // A summary.json from before the field existed still loads as a baseline.
        let mut old = serde_json::to_value(&s).unwrap();
        old.as_object_mut().unwrap().remove("crosscheck_endpoints");
        assert!(serde_json::from_value::<Summary>(old).unwrap().crosscheck_endpoints.is_empty());
    }

    #[test]
    fn the_raw_percentiles_the_objectives_judge_stand_beside_the_mitigated_ones() {
        let mut s = summary(200.0, 25.0);
        assert!(!s.console().contains("which the SLOs judge"), "nothing to add when they agree");
        s.total.p95_raw_ms = 49.0;
        s.total.p99_raw_ms = 119.0;
        assert!(s.console().contains("p95 200.0 ms, p99 300.0 ms (coordinated-omission mitigated; the requests actually sent, which the SLOs judge: p95 49.0 ms, p99 119.0 ms)"), "{}", s.console());
        assert!(
            s.markdown().contains("| all requests | 1000 | 0 | 25.0 | 5.0 | 200.0 | 300.0 | 49.0 | 119.0 |"),
            "{}",
            s.markdown()
        );
    }

    #[test]
    fn request_names_map_to_the_servers_route_templates() {
        assert_eq!(route_of("GET /v1/transactions?limit=50"), ("GET".into(), "/v1/transactions".into()));
        assert_eq!(route_of("GET /v1/accounts/{id}"), ("GET".into(), "/v1/accounts/{id}".into()));
    }
}

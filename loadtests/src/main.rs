//! `loadtests`: the FREEDUMB load tests, built on goose.
//!
//! `loadtests run` drives the user journeys (`journeys.rs`) against a running
//! platform, judges the service level objectives with goose's thresholds,
//! writes goose's HTML, JSON and Markdown reports and a `summary.json` /
//! `summary.md` of its own into the run folder, and sets the client's
//! figures beside the server's `/metrics` (`crosscheck.rs`).
//! `loadtests ceiling` serves the read path as a bare axum handler doing
//! the same Postgres query, the yardstick for the platform's read path.
//! `cargo xtask loadtest` is the usual way in: it picks the target from an
//! environment, the SLOs from its `[loadtest]` table, every `/metrics` of
//! its deployment, and the run folder.

mod ceiling;
mod crosscheck;
mod journeys;
mod summary;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use goose::config::GooseConfiguration;
use goose::prelude::*;

#[derive(Debug, Parser)]
#[command(name = "loadtests", about = "The FREEDUMB load tests (goose).")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run journeys against a platform (goose's own options follow ours).
    Run(Box<Run>),
    /// Serve GET /v1/transactions as a bare axum handler: one Postgres query.
    Ceiling(ceiling::Ceiling),
}

#[derive(Debug, clap::Args)]
struct Run {
    /// The journeys: the weighted mix, one of them, or `readpath` (the
    /// benchmark's list-a-page loop, not part of the mix).
    #[arg(long, default_value = "mix", value_parser = journeys::SCENARIOS)]
    scenario: String,
    /// Each user's pause between two steps, in milliseconds: MIN or MIN..MAX.
    #[arg(long, default_value = "0", value_parser = parse_think_time)]
    think_time: (Duration, Duration),
    /// Where set-up requests (register, log in, seed data) go; the target
    /// host by default.
    #[arg(long, value_name = "URL")]
    setup_host: Option<String>,
    /// Transactions each `readpath` user creates before reading.
    #[arg(long, default_value_t = 60)]
    seed_transactions: usize,
    /// A `/metrics` of the platform, scraped before and after the run for the
    /// server-side cross-check; repeat it for every process of a deployment
    /// (one per replica): each process's difference is taken on its own and
    /// the differences summed. No cross-check without.
    #[arg(long = "metrics-url", value_name = "URL")]
    metrics_urls: Vec<String>,
    /// How far client and server counts may differ, in percent, before the
    /// cross-check flags a request group.
    #[arg(long, default_value_t = 1.0)]
    crosscheck_tolerance: f64,
    /// Scrape --metrics-url only for the platform's resident memory: no
    /// cross-check, and goose's figures cover the steady state after every
    /// user has started (the benchmark's comparisons).
    #[arg(long)]
    no_crosscheck: bool,
    /// Exit non-zero (2) when the cross-check flags a mismatch, or a process
    /// whose figures are unknown (no answer after the run, a restart).
    #[arg(long)]
    fail_on_mismatch: bool,
    /// An earlier run's summary.json, or its run folder; regressions beyond
    /// --baseline-tolerance fail the run.
    #[arg(long, value_name = "PATH")]
    baseline: Option<PathBuf>,
    /// Allowed regression against --baseline, in percent (p95, p99 up;
    /// throughput down).
    #[arg(long, default_value_t = 10.0)]
    baseline_tolerance: f64,
    /// The run folder: reports and summaries go here.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// A label for this run in the summary (what was targeted, and why).
    #[arg(long, default_value = "")]
    label: String,
    #[command(flatten)]
    goose: GooseConfiguration,
}

fn parse_think_time(text: &str) -> Result<(Duration, Duration), String> {
    let (min, max) = text.split_once("..").unwrap_or((text, text));
    let ms = |s: &str| s.trim().parse::<u64>().map(Duration::from_millis).map_err(|e| format!("{s:?}: {e}"));
    let (min, max) = (ms(min)?, ms(max)?);
    if min > max {
        return Err(format!("{text}: the minimum is above the maximum"));
    }
    Ok((min, max))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: failed to start the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run(run) => runtime.block_on(run.run()),
        Command::Ceiling(ceiling) => runtime.block_on(ceiling.run()).map(|()| Outcome::Passed),
    };
    match result {
        Ok(Outcome::Passed) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(2),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether the run met its objectives; errors running it are `Err`.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed,
}

impl Run {
    async fn run(self) -> anyhow::Result<Outcome> {
        let mut goose = self.goose.clone();
        let host = goose.host.clone().context("--host is required")?;
        std::fs::create_dir_all(&self.out).with_context(|| format!("failed to create {}", self.out.display()))?;
        journeys::configure(journeys::Settings {
            setup_host: self.setup_host.clone().unwrap_or_else(|| host.clone()),
            seed_transactions: self.seed_transactions,
        });

        // Coordinated-omission mitigation on unless asked otherwise: a stall
        // then shows in the percentiles as the requests users would have
        // sent, not as a quiet spell.
        if goose.co_mitigation.is_none() {
            goose.co_mitigation = Some(GooseCoordinatedOmissionMitigation::Average);
        }
        // The SLOs are judged once, at the end: a breach fails the run with a
        // table of every breach, rather than stopping at the first.
        goose.no_threshold_abort = true;
        // The cross-check compares the client's and the server's counts of
        // the same requests, so the client's figures must cover the whole run
        // as the two scrapes do, set-up included: goose would otherwise reset
        // them once every user has started.
        let cross_check = !self.metrics_urls.is_empty() && !self.no_crosscheck;
        if cross_check {
            goose.no_reset_metrics = true;
        }
        for name in ["report.html", "report.json", "report.md"] {
            goose.report_file.push(self.out.join(name).display().to_string());
        }
        let baseline = self.baseline.as_deref().map(summary::Baseline::load).transpose()?;
        if let Some(report) = baseline.as_ref().and_then(|b| b.goose_report.clone()) {
            goose.baseline_file = Some(report.display().to_string());
        }

        let client = reqwest_goose::Client::new();
        // Before the run, a process that does not answer stops it: nothing is
        // lost yet, and the list of processes is likely wrong.
        let before = if cross_check {
            let mut before = Vec::new();
            for (url, scrape) in crosscheck::scrape_each(&client, &self.metrics_urls).await {
                before.push((url, scrape?));
            }
            Some(before)
        } else {
            None
        };
        let sampler = (!self.metrics_urls.is_empty())
            .then(|| tokio::spawn(summary::sample_memory(client.clone(), self.metrics_urls.clone())));

        let mut attack = GooseAttack::initialize_with_config(goose)?;
        for scenario in journeys::scenarios(&self.scenario, self.think_time)? {
            attack = attack.register_scenario(scenario);
        }
        let (metrics, thresholds_failed) = match attack.execute().await {
            Ok(metrics) => (metrics, false),
            Err(GooseError::ThresholdsFailed { metrics, .. }) => (*metrics.0, true),
            Err(err) => return Err(anyhow::Error::new(err).context("the load test failed")),
        };

        let peak_memory = match sampler {
            Some(handle) => {
                handle.abort();
                summary::peak_memory()
            }
            None => None,
        };
        let after_run = AfterRun { host: &host, metrics: &metrics, thresholds_failed, before, peak_memory };
        self.conclude(&client, after_run, baseline.as_ref()).await
    }

    /// Everything after the attack: the second scrape, the summary and the
    /// verdict. Nothing here may lose the run's verdicts: a process that does
    /// not answer after the run (a rollout moved a replica to its other slot,
    /// a restart) is flagged in the cross-check, never an error, and the
    /// summary with its table of breaches is written all the same.
    async fn conclude(
        &self,
        client: &reqwest_goose::Client,
        run: AfterRun<'_>,
        baseline: Option<&summary::Baseline>,
    ) -> anyhow::Result<Outcome> {
        let server = match run.before {
            Some(before) => {
                let after = crosscheck::scrape_each(client, &self.metrics_urls).await;
                Some((crosscheck::during_run(&before, &after), self.metrics_urls.clone()))
            }
            None => None,
        };
        let summary = summary::Summary::new(
            &self.label,
            run.host,
            &self.scenario,
            run.metrics,
            server,
            self.crosscheck_tolerance / 100.0,
            run.peak_memory,
            baseline,
            self.baseline_tolerance / 100.0,
        );
        summary.write(&self.out)?;
        eprintln!("{}", summary.console());
        eprintln!("reports: {}", self.out.display());

        // A flagged cross-check fails the run only when asked (--smoke does):
        // outside the gate it is a finding to read, not a verdict.
        let crosscheck_failed = self.fail_on_mismatch && summary.crosscheck_flagged();
        if run.thresholds_failed || !summary.regressions.is_empty() || crosscheck_failed {
            return Ok(Outcome::Failed);
        }
        debug_assert_eq!(run.thresholds_failed, summary.thresholds.iter().any(|t| !t.passed));
        Ok(Outcome::Passed)
    }
}

/// What the attack left for `Run::conclude`.
struct AfterRun<'a> {
    host: &'a str,
    metrics: &'a GooseMetrics,
    /// Whether goose judged an objective breached.
    thresholds_failed: bool,
    /// Each process's scrape before the run; `None` without a cross-check.
    before: Option<Vec<(String, crosscheck::Snapshot)>>,
    peak_memory: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use goose::threshold::ThresholdResult;

    /// Serves `text` as `/metrics` on a port of its own, for the test's life.
    async fn metrics_server(text: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        let app = axum::Router::new().route("/metrics", axum::routing::get(move || async move { text }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    /// A URL nothing listens on: a replica moved to its other slot.
    fn gone() -> String {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        format!("http://127.0.0.1:{port}/metrics")
    }

    fn run(out: &std::path::Path, urls: &[String], extra: &[&str]) -> Run {
        let mut args = vec!["loadtests", "run", "--host", "http://127.0.0.1:1", "--out", out.to_str().unwrap()];
        for url in urls {
            args.extend(["--metrics-url", url.as_str()]);
        }
        args.extend(extra);
        match Cli::try_parse_from(args).unwrap().command {
            Command::Run(run) => *run,
            Command::Ceiling(_) => unreachable!(),
        }
    }

    #[tokio::test]
    async fn a_process_gone_after_the_run_loses_neither_the_summary_nor_the_breach() {
        let out = std::env::temp_dir().join(format!("loadtests-conclude-{}", std::process::id()));
        std::fs::create_dir_all(&out).unwrap();
        let (moved, staying) = (gone(), metrics_server(include_str!("../testdata/metrics-replica-1-later.txt")).await);
        let before = vec![
            (moved.clone(), crosscheck::parse(include_str!("../testdata/metrics-replica-0.txt")).unwrap()),
            (staying.clone(), crosscheck::parse(include_str!("../testdata/metrics-replica-1.txt")).unwrap()),
        ];
        let breach = ThresholdResult {
            rule: "p95 < 100ms".into(),
            observed: "812ms".into(),
            value: Some(812.0),
            passed: false,
            aborted: false,
        };
        let mut metrics = GooseMetrics::default();
        metrics.thresholds = vec![breach];
        let client = reqwest_goose::Client::new();
        let after_run = |thresholds_failed| AfterRun {
            host: "http://127.0.0.1:1",
            metrics: &metrics,
            thresholds_failed,
            before: Some(before.clone()),
            peak_memory: None,
        };

        // The objective was breached: the run fails with 2, not an error, and
        // the summary shows both the breach and the process left out.
        let urls = [moved.clone(), staying.clone()];
        let outcome = run(&out, &urls, &[]).conclude(&client, after_run(true), None).await.unwrap();
        assert_eq!(outcome, Outcome::Failed);
        let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
        assert!(md.contains("| `p95 < 100ms` | 812ms | **BREACH** |"), "{md}");
        assert!(
            md.contains(&format!("- `{moved}`: answered before the run but not after: Connection refused")),
            "{md}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
        assert_eq!(json["crosscheck_flagged_endpoints"][0]["url"], moved.as_str());
        assert_eq!(json["crosscheck_flagged_endpoints"].as_array().unwrap().len(), 1, "the answering one is counted");

        // Objectives met: the flagged cross-check fails the run only when
        // asked to (`--smoke` passes --fail-on-mismatch), as a mismatch does.
        let mut metrics_met = metrics.clone();
        metrics_met.thresholds[0].passed = true;
        let met = AfterRun { metrics: &metrics_met, ..after_run(false) };
        assert_eq!(run(&out, &urls, &[]).conclude(&client, met, None).await.unwrap(), Outcome::Passed);
        let met = AfterRun { metrics: &metrics_met, ..after_run(false) };
        let gate = run(&out, &urls, &["--fail-on-mismatch"]);
        assert_eq!(gate.conclude(&client, met, None).await.unwrap(), Outcome::Failed);
        std::fs::remove_dir_all(&out).unwrap();
    }
}

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
    /// (one per replica), whose figures are summed. No cross-check without.
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
    /// Exit non-zero when the cross-check flags a mismatch.
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
        let before = if cross_check { Some(crosscheck::scrape_all(&client, &self.metrics_urls).await?) } else { None };
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

        let server = match before {
            Some(before) => Some((crosscheck::scrape_all(&client, &self.metrics_urls).await?, before)),
            None => None,
        };
        let peak_memory = match sampler {
            Some(handle) => {
                handle.abort();
                summary::peak_memory()
            }
            None => None,
        };
        let summary = summary::Summary::new(
            &self.label,
            &host,
            &self.scenario,
            &metrics,
            server.as_ref().map(|(after, before)| (after.since(before), self.metrics_urls.clone())),
            self.crosscheck_tolerance / 100.0,
            peak_memory,
            baseline.as_ref(),
            self.baseline_tolerance / 100.0,
        );
        summary.write(&self.out)?;
        eprintln!("{}", summary.console());
        eprintln!("reports: {}", self.out.display());

        let mismatch = summary.crosscheck.iter().any(|row| !row.flags.is_empty());
        if thresholds_failed || !summary.regressions.is_empty() || (self.fail_on_mismatch && mismatch) {
            return Ok(Outcome::Failed);
        }
        debug_assert_eq!(thresholds_failed, summary.thresholds.iter().any(|t| !t.passed));
        Ok(Outcome::Passed)
    }
}

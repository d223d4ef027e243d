//! `cargo xtask loadtest`: the goose journeys in `loadtests/` against a
//! local deployment, judged against service level objectives.
//!
//! This module picks what a run needs and hands it to the `loadtests`
//! binary, which does the work (the toolkit never links goose): the target
//! (the environment's gateway, or its platform port with `--target
//! platform`), every `/metrics` of the deployment for the server-side
//! cross-check, the objectives (the environment's `[loadtest]` table, plus
//! `--slo`), and a fresh run folder under `target/loadtest/`. The binary exits 2 when
//! an objective is breached or a baseline regressed, after printing a table
//! of every breach; this exits non-zero with it.
//!
//! Every target must be a loopback address: a load test from this command
//! never leaves the machine.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use crate::docker::Engine;
use crate::docker::converge::Running;
use crate::environment::{self, Environment, Kind, Objectives};
use crate::process;

/// Run the goose load test (loadtests/) against a local deployment.
#[derive(Debug, Args)]
pub struct Loadtest {
    /// The environment whose deployment to load, as in environments/NAME.toml
    /// (a local one: `cargo xtask deploy --env NAME` runs it).
    #[arg(long, value_name = "NAME", default_value = "local")]
    env: String,
    /// Where the requests go: the environment's gateway (rate limits and all,
    /// as users see it) or the platform's own port.
    #[arg(long, value_enum, default_value_t = Target::Gateway)]
    target: Target,
    /// A loopback base URL instead of the environment's (a platform started
    /// by hand or by a test).
    #[arg(long, value_name = "URL")]
    host: Option<String>,
    /// A `/metrics` for the cross-check, repeated for each process of the
    /// deployment; their counts and histograms are summed. By default every
    /// process of the environment's deployment that answers (the platform
    /// port of `deploy`, each replica container of `deploy --containers`),
    /// or HOST's when --host is given.
    #[arg(long = "metrics-url", value_name = "URL")]
    metrics_urls: Vec<String>,
    /// Concurrent virtual users.
    #[arg(long, default_value_t = 16)]
    users: usize,
    /// Users started per second.
    #[arg(long, default_value = "8")]
    hatch_rate: String,
    /// How long to hold the users once started, as goose reads it: 60s, 5m.
    #[arg(long, default_value = "60s")]
    duration: String,
    /// The journeys: the weighted mix, one of them, or `readpath` (the
    /// benchmark's list-a-page loop).
    #[arg(long, default_value = "mix", value_parser = ["mix", "onboarding", "daily", "dashboard", "readpath"])]
    scenario: String,
    /// Each user's pause between steps in ms, MIN..MAX; by default 500..1500
    /// through the gateway (whose per-client rate limits a human respects)
    /// and none against the platform.
    #[arg(long, value_name = "MS")]
    think_time: Option<String>,
    /// An extra objective in goose's threshold syntax, such as
    /// "p99<25ms for GET /v1/transactions?limit=50"; repeatable.
    #[arg(long = "slo", value_name = "RULE")]
    slos: Vec<String>,
    /// Ignore the environment's objectives (its [loadtest.objectives], or
    /// [loadtest.smoke] with --smoke); only --slo counts.
    #[arg(long)]
    no_env_slo: bool,
    /// An earlier run's folder or summary.json: a regression beyond
    /// --baseline-tolerance fails the run, and goose's reports show deltas.
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    /// Allowed regression against --baseline, in percent.
    #[arg(long, default_value_t = 10.0)]
    baseline_tolerance: f64,
    /// How far client and server counts may differ, in percent.
    #[arg(long, default_value_t = 1.0)]
    crosscheck_tolerance: f64,
    /// A ten-second, low-rate run that must have zero errors and a clean
    /// cross-check (the CI gate); overrides --users, --hatch-rate, --duration.
    #[arg(long)]
    smoke: bool,
    /// Build `loadtests` with the dev profile (quicker to build; the figures
    /// are not comparable). --smoke implies it.
    #[arg(long)]
    debug: bool,
    /// The benchmark: the read path against the platform and against a bare
    /// axum ceiling, then the journey mix; without think time, so use
    /// --target platform (the gateway's rate limits would answer 429).
    #[arg(long)]
    benchmark: bool,
    /// The ceiling's database: the platform's (the environment's
    /// postgres.url by default).
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// A label for the run folder and the summary.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Gateway,
    Platform,
}

/// The objectives as goose threshold rules, in a fixed order.
pub fn rules(objectives: &Objectives) -> Vec<String> {
    let mut rules = Vec::new();
    if let Some(rate) = objectives.error_rate_percent {
        rules.push(format!("error-rate<={rate}%"));
    }
    if let Some(rps) = objectives.min_requests_per_second {
        rules.push(format!("rps>={rps}"));
    }
    for (request, latency) in &objectives.latency {
        let suffix = if request == "all" { String::new() } else { format!(" for {request}") };
        for (name, bound) in [("p95", &latency.p95), ("p99", &latency.p99)] {
            if let Some(bound) = bound {
                rules.push(format!("{name}<{bound}{suffix}"));
            }
        }
    }
    rules
}

impl Loadtest {
    pub fn run(&self, root: &Path) -> anyhow::Result<()> {
        let environment = environment::load(root, &self.env)?;
        if environment.model.kind != Kind::Local {
            bail!(
                "environment `{}` is a {} environment; load tests run against local deployments only \
                 (`cargo xtask deploy --env NAME`), so that no load leaves this machine",
                self.env,
                environment.model.kind
            );
        }
        let platform = &environment.model.platform;
        let (Some(host), Some(port)) = (platform.host, platform.port) else {
            bail!("environment `{}` has no platform.host or platform.port", self.env);
        };
        let platform_url = base_url(host, port);
        let gateway = &environment.model.gateway;
        let gateway_url =
            base_url(gateway.listen_address.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)), gateway.http_port);
        let target = match (&self.host, self.target) {
            (Some(host), _) => host.trim_end_matches('/').to_owned(),
            (None, Target::Gateway) => gateway_url,
            (None, Target::Platform) => platform_url.clone(),
        };
        require_loopback(&target)?;
        for url in &self.metrics_urls {
            require_loopback(url)?;
        }

        let loadtest = &environment.model.loadtest;
        let mut rules = match (self.no_env_slo, self.smoke) {
            (true, _) => Vec::new(),
            (false, true) => rules(&loadtest.smoke),
            (false, false) => rules(&loadtest.objectives),
        };
        rules.extend(self.slos.iter().cloned());

        let (users, hatch_rate, duration) = if self.smoke {
            (4, "2".to_owned(), "10s".to_owned())
        } else {
            (self.users, self.hatch_rate.clone(), self.duration.clone())
        };
        let through_gateway = self.host.is_none() && self.target == Target::Gateway;
        let think_time = match (&self.think_time, self.smoke, through_gateway) {
            (Some(think), _, _) => think.clone(),
            (None, true, _) => "200..500".to_owned(),
            (None, false, true) => "500..1500".to_owned(),
            (None, false, false) => "0".to_owned(),
        };

        let binary = build_loadtests(root, !(self.debug || self.smoke))?;

        // Looked for after the build, which can take minutes: a rollout in
        // the meantime moves replicas to other ports.
        let metrics_urls = match (self.metrics_urls.as_slice(), &self.host) {
            ([], Some(host)) => vec![format!("{}/metrics", host.trim_end_matches('/'))],
            ([], None) => deployment_metrics(&environment, host)?,
            (urls, _) => urls.to_vec(),
        };
        for url in &metrics_urls {
            require_loopback(url)?;
        }

        if self.benchmark {
            let database_url = match (&self.database_url, &environment.model.postgres.url) {
                (Some(url), _) | (None, Some(url)) => url.clone(),
                (None, None) => bail!("environment `{}` has no postgres.url; pass --database-url", self.env),
            };
            return self.benchmark(root, &binary, &target, &metrics_urls, &database_url);
        }

        let label = if self.smoke { "smoke".to_owned() } else { self.label.clone() };
        let out = run_folder(root, &self.scenario, &label)?;
        let run = Invocation {
            scenario: &self.scenario,
            think_time: &think_time,
            host: &target,
            setup_host: None,
            metrics_urls: &metrics_urls,
            cross_check: true,
            users,
            hatch_rate: &hatch_rate,
            duration: &duration,
            rules: &rules,
            out: &out,
            label: format!("{} {}", self.env, label).trim().to_owned(),
        };
        eprintln!(
            "==> {users} users ({hatch_rate} per second) for {duration} on {target}, scenario {}, think time {think_time} ms",
            self.scenario
        );
        eprintln!("    objectives: {}", if rules.is_empty() { "none".to_owned() } else { rules.join(", ") });
        self.invoke(&binary, &run)
    }

    /// Runs `loadtests run` once; Err when it fails to run or fails its
    /// objectives, baseline or cross-check.
    fn invoke(&self, binary: &Path, run: &Invocation<'_>) -> anyhow::Result<()> {
        let mut cmd = Command::new(binary);
        cmd.arg("run")
            .args(["--scenario", run.scenario, "--think-time", run.think_time])
            .args(["--crosscheck-tolerance", &self.crosscheck_tolerance.to_string()])
            .args(["--baseline-tolerance", &self.baseline_tolerance.to_string()])
            .arg("--out")
            .arg(run.out)
            .args(["--label", &run.label])
            .args(["--host", run.host, "--users", &run.users.to_string()])
            .args(["--increase-rate", run.hatch_rate, "--run-time", run.duration])
            .args(["--quiet", "--no-print-metrics"]);
        for url in run.metrics_urls {
            cmd.args(["--metrics-url", url]);
        }
        if !run.cross_check {
            cmd.arg("--no-crosscheck");
        }
        if let Some(host) = run.setup_host {
            cmd.args(["--setup-host", host]);
        }
        if let Some(baseline) = &self.baseline {
            cmd.arg("--baseline").arg(baseline);
        }
        if self.smoke {
            cmd.arg("--fail-on-mismatch");
        }
        for rule in run.rules {
            cmd.args(["--threshold", rule]);
        }
        let shown = process::display(&cmd);
        let status = cmd.status().with_context(|| format!("failed to start `{shown}`"))?;
        match status.code() {
            Some(0) => Ok(()),
            Some(2) => bail!(
                "the load test failed its objectives, its baseline or its cross-check: see the table above and {}",
                run.out.join("summary.md").display()
            ),
            _ => bail!("`{shown}` failed: {status}"),
        }
    }

    /// The benchmark: the read path against the platform and against the
    /// ceiling (same journey, same database, same pool size), then the
    /// journey mix against the platform, all without think time; a
    /// `benchmark.md` beside the three run folders puts them together.
    fn benchmark(
        &self,
        root: &Path,
        binary: &Path,
        platform_url: &str,
        metrics_urls: &[String],
        database_url: &str,
    ) -> anyhow::Result<()> {
        let dir = run_folder(root, "benchmark", &self.label)?;
        let (users, hatch_rate, duration) = (self.users, self.hatch_rate.as_str(), self.duration.as_str());
        let think_time = self.think_time.clone().unwrap_or_else(|| "0".to_owned());
        let invocation = |scenario: &'static str, host: &'static str, out: PathBuf| (scenario, host, out);
        let runs = [
            invocation("readpath", "platform", dir.join("readpath-platform")),
            invocation("readpath", "ceiling", dir.join("readpath-ceiling")),
            invocation("mix", "platform", dir.join("mix-platform")),
        ];
        let ceiling_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("failed to find a free port for the ceiling")?
            .port();
        let ceiling_url = format!("http://127.0.0.1:{ceiling_port}");
        let mut ceiling_peak_kib = None;
        for (scenario, host, out) in &runs {
            let mut ceiling = None;
            if *host == "ceiling" {
                let mut child = Command::new(binary)
                    .args(["ceiling", "--listen", &format!("127.0.0.1:{ceiling_port}")])
                    .env("DATABASE_URL", database_url)
                    .spawn()
                    .context("failed to start the ceiling")?;
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                while std::net::TcpStream::connect(("127.0.0.1", ceiling_port)).is_err() {
                    if std::time::Instant::now() > deadline || child.try_wait()?.is_some() {
                        let _ = child.kill();
                        bail!("the ceiling did not start listening on {ceiling_url}");
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                ceiling = Some(child);
            }
            eprintln!("==> benchmark: {scenario} against the {host}, {users} users for {duration}");
            let run = Invocation {
                scenario,
                think_time: &think_time,
                host: if *host == "ceiling" { &ceiling_url } else { platform_url },
                setup_host: (*host == "ceiling").then_some(platform_url),
                // Memory is sampled from the platform in every run; the
                // cross-check runs with the mix, whose figures then cover
                // set-up too.
                metrics_urls,
                cross_check: *scenario == "mix",
                users,
                hatch_rate,
                duration,
                rules: &self.slos,
                out,
                label: format!("benchmark: {scenario} against the {host}"),
            };
            let result = self.invoke(binary, &run);
            if let Some(mut child) = ceiling {
                ceiling_peak_kib = peak_resident_kib(child.id());
                let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
                let _ = child.wait();
            }
            result?;
        }
        let report = benchmark_report(&dir, ceiling_peak_kib)?;
        std::fs::write(dir.join("benchmark.md"), &report)
            .with_context(|| format!("failed to write {}", dir.join("benchmark.md").display()))?;
        println!("{report}");
        eprintln!("benchmark: {}", dir.display());
        Ok(())
    }
}

/// One `loadtests run`.
struct Invocation<'a> {
    scenario: &'a str,
    think_time: &'a str,
    host: &'a str,
    setup_host: Option<&'a str>,
    metrics_urls: &'a [String],
    cross_check: bool,
    users: usize,
    hatch_rate: &'a str,
    duration: &'a str,
    rules: &'a [String],
    out: &'a Path,
    label: String,
}

/// Every process of `environment`'s deployment that answers `/metrics`, for
/// the cross-check: the platform port and each worker's port (`cargo xtask
/// deploy` runs `freedumb serve` on the one and each worker on its own), and
/// each running replica container of the environment's project (`deploy
/// --containers` runs one per replica, on the port its labels name). Nothing that is not running is scraped, and idle
/// processes add nothing to the run's counts, so both kinds are looked for
/// and whichever answers counts. Candidates that do not answer are named in
/// a note; none answering is an error.
fn deployment_metrics(environment: &Environment, host: IpAddr) -> anyhow::Result<Vec<String>> {
    let mut candidates: Vec<(u16, String)> = Vec::new();
    if let Some(port) = environment.model.platform.port {
        candidates.push((port, "`freedumb serve` on platform.port".to_owned()));
    }
    for (name, worker) in environment.workers() {
        candidates.push((worker.port, format!("`freedumb worker {name}`")));
    }
    let project = crate::docker::deploy::project(environment);
    let mut notes = Vec::new();
    // Only a running engine can have containers: without one, the platform
    // port is the deployment.
    let labels = BTreeMap::from([(crate::docker::LABEL_PROJECT, project.as_str())]);
    match Engine::connect().and_then(|engine| engine.containers(&labels)) {
        Ok(containers) => {
            for replica in containers.iter().filter_map(Running::from_summary).filter(|r| r.running) {
                let what = format!("{}, container {}", replica.service, replica.name);
                candidates.push((replica.port, what));
            }
        }
        Err(_) => notes.push(format!("replica containers of {project}: the Docker engine does not answer")),
    }
    candidates.sort();
    candidates.dedup_by_key(|(port, _)| *port);

    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(2)).build();
    let mut answering = Vec::new();
    let mut silent = Vec::new();
    for (port, what) in candidates {
        let url = format!("{}/metrics", base_url(host, port));
        match agent.get(&url).call() {
            Ok(_) => answering.push((url, what)),
            Err(err) => silent.push(format!("{url} ({what}): {}", short_error(&err))),
        }
    }
    if answering.is_empty() {
        bail!(
            "no process of environment `{}` answers /metrics ({}); deploy it first (`cargo xtask deploy --env {}`, \
             with or without --containers), or name each process with --metrics-url",
            environment.name,
            silent.join("; "),
            environment.name
        );
    }
    eprintln!(
        "==> cross-check: /metrics of {} process{}: {}",
        answering.len(),
        if answering.len() == 1 { "" } else { "es" },
        answering.iter().map(|(url, what)| format!("{url} ({what})")).collect::<Vec<_>>().join(", ")
    );
    for note in notes.iter().chain(&silent) {
        eprintln!("    not scraped: {note}");
    }
    Ok(answering.into_iter().map(|(url, _)| url).collect())
}

fn short_error(err: &ureq::Error) -> String {
    match err {
        ureq::Error::Status(code, _) => format!("answered {code}"),
        ureq::Error::Transport(transport) => format!("no answer ({})", transport.kind().to_string().to_lowercase()),
    }
}

/// A process's peak resident set (VmHWM), from /proc.
fn peak_resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The benchmark's table, from the three runs' summary.json.
fn benchmark_report(dir: &Path, ceiling_peak_kib: Option<u64>) -> anyhow::Result<String> {
    let load = |name: &str| -> anyhow::Result<serde_json::Value> {
        let path = dir.join(name).join("summary.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("failed to read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("failed to parse {}", path.display()))
    };
    let read_group = |summary: &serde_json::Value| -> serde_json::Value {
        summary["groups"]
            .as_array()
            .and_then(|groups| groups.iter().find(|g| g["name"] == "GET /v1/transactions?limit=50"))
            .cloned()
            .unwrap_or_default()
    };
    let (platform, ceiling, mix) = (load("readpath-platform")?, load("readpath-ceiling")?, load("mix-platform")?);
    let (p, c) = (read_group(&platform), read_group(&ceiling));
    let f = |v: &serde_json::Value, key: &str| v[key].as_f64().unwrap_or(f64::NAN);
    let mib = |v: &serde_json::Value| {
        v["server_peak_resident_bytes"].as_f64().map_or_else(|| "–".to_owned(), |b| format!("{:.1}", b / 1048576.0))
    };
    let row = |what: &str, g: &serde_json::Value, memory: String| {
        format!(
            "| {what} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {memory} |\n",
            f(g, "requests_per_second"),
            f(g, "p50_ms"),
            f(g, "p95_ms"),
            f(g, "p99_ms"),
            g["errors"]
        )
    };
    let mut out = format!(
        "# Benchmark: {} users, {} s each (the mix; the read-path runs likewise)\n\n| run | req/s | p50 ms | p95 ms | p99 ms | errors | peak RSS MiB |\n| --- | --- | --- | --- | --- | --- | --- |\n",
        mix["users"], mix["duration_seconds"]
    );
    out.push_str(&row("journey mix, platform (all requests)", &mix["total"], mib(&mix)));
    out.push_str(&row("read path `GET /v1/transactions?limit=50`, platform", &p, mib(&platform)));
    out.push_str(&row(
        "read path, bare axum ceiling (one query)",
        &c,
        ceiling_peak_kib.map_or_else(|| "–".to_owned(), |kib| format!("{:.1}", kib as f64 / 1024.0)),
    ));
    out.push_str(&format!(
        "\nRead path: {:.0}% of the ceiling's throughput (target ≥ 80%), p99 {:.1} ms (target < 25 ms).\n",
        100.0 * f(&p, "requests_per_second") / f(&c, "requests_per_second"),
        f(&p, "p99_ms")
    ));
    Ok(out)
}

fn base_url(host: IpAddr, port: u16) -> String {
    // A wildcard listen address is reached on loopback.
    let host = match host {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    match host {
        IpAddr::V4(ip) => format!("http://{ip}:{port}"),
        IpAddr::V6(ip) => format!("http://[{ip}]:{port}"),
    }
}

/// Builds the `loadtests` binary and says where it is.
fn build_loadtests(root: &Path, release: bool) -> anyhow::Result<PathBuf> {
    eprintln!("==> building loadtests");
    let mut build = process::cargo();
    build.current_dir(root).arg("build");
    if release {
        build.arg("--release");
    }
    process::run(build.args(["-p", "loadtests"]))?;
    let binary = target_dir(root).join(if release { "release" } else { "debug" }).join("loadtests");
    if !binary.is_file() {
        bail!(
            "cargo built loadtests, but {} does not exist; set CARGO_TARGET_DIR rather than build.target-dir",
            binary.display()
        );
    }
    Ok(binary)
}

/// `deploy --verify`: after a rollout, the smoke run against the deployment
/// as its users reach it; a breach rolls the deployment back.
#[derive(Debug, Default, Clone, Args)]
pub struct Verify {
    /// After the rollout, run the smoke load test (the environment's
    /// [loadtest.smoke] objectives, 4 users for 10 s) against its gateway;
    /// a breach rolls the deployment back and fails the command with the
    /// breach table. The journeys register synthetic users, as any smoke
    /// test of a live environment does.
    #[arg(long)]
    pub verify: bool,
    /// Where --verify sends its requests instead of the environment's
    /// gateway (`https://<gateway.domain>` for a kubernetes environment,
    /// the local gateway's port otherwise).
    #[arg(long, value_name = "URL", requires = "verify")]
    pub verify_url: Option<String>,
}

impl Verify {
    /// Runs the smoke journeys against the deployment just rolled out; when
    /// they breach an objective (or cannot run), `roll_back` runs and the
    /// error says both what failed and that it was rolled back.
    ///
    /// Unlike `cargo xtask loadtest`, the target may be any host, not only
    /// loopback: it is the environment the operator has just deployed, and
    /// the smoke run is a few dozen requests. Without the server-side
    /// cross-check: a remote deployment's `/metrics` are not served through
    /// its gateway.
    pub fn run_or_roll_back(
        &self,
        root: &Path,
        environment: &Environment,
        roll_back: impl FnOnce() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if !self.verify {
            return Ok(());
        }
        let url = match &self.verify_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => gateway_url(environment),
        };
        eprintln!("==> verifying `{}` with the smoke journeys against {url}", environment.name);
        let Err(breach) = smoke(root, environment, &url) else {
            eprintln!("    verified: the smoke objectives hold");
            return Ok(());
        };
        eprintln!("==> verification failed; rolling `{}` back", environment.name);
        match roll_back() {
            Ok(()) => {
                Err(breach
                    .context(format!("`{}` failed verification against {url} and was rolled back", environment.name)))
            }
            Err(rollback) => Err(breach.context(format!(
                "`{}` failed verification against {url}, and so did its rollback: {rollback:#}",
                environment.name
            ))),
        }
    }
}

/// Where an environment's users reach it: its domain over HTTPS on
/// Kubernetes, its gateway's port here otherwise.
pub fn gateway_url(environment: &Environment) -> String {
    let gateway = &environment.model.gateway;
    match environment.model.kind {
        Kind::Kubernetes => format!("https://{}", gateway.domain),
        _ => base_url(gateway.listen_address.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)), gateway.http_port),
    }
}

/// The smoke run of `--verify` against `url`.
fn smoke(root: &Path, environment: &Environment, url: &str) -> anyhow::Result<()> {
    let binary = build_loadtests(root, false)?;
    let out = run_folder(root, "mix", "verify")?;
    let rules = rules(&environment.model.loadtest.smoke);
    let run = Invocation {
        scenario: "mix",
        think_time: "200..500",
        host: url,
        setup_host: None,
        metrics_urls: &[],
        cross_check: false,
        users: 4,
        hatch_rate: "2",
        duration: "10s",
        rules: &rules,
        out: &out,
        label: format!("{} verify", environment.name),
    };
    let settings = Loadtest {
        env: environment.name.clone(),
        target: Target::Gateway,
        host: Some(url.to_owned()),
        metrics_urls: Vec::new(),
        users: run.users,
        hatch_rate: run.hatch_rate.to_owned(),
        duration: run.duration.to_owned(),
        scenario: run.scenario.to_owned(),
        think_time: None,
        slos: Vec::new(),
        no_env_slo: false,
        baseline: None,
        baseline_tolerance: 10.0,
        crosscheck_tolerance: 1.0,
        smoke: false,
        debug: true,
        benchmark: false,
        database_url: None,
        label: "verify".to_owned(),
    };
    settings.invoke(&binary, &run)
}

/// Refuses any URL whose host is not a loopback address (or `localhost`).
fn require_loopback(url: &str) -> anyhow::Result<()> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
    let authority = rest.and_then(|rest| rest.split(['/', '?']).next()).unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
    };
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("{url}: load tests only target loopback addresses (127.0.0.0/8, ::1, localhost)");
    }
    Ok(())
}

fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// `target/loadtest/<UTC time>-<scenario>[-label]`, new for every run.
fn run_folder(root: &Path, scenario: &str, label: &str) -> anyhow::Result<PathBuf> {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).context("the clock is before 1970")?.as_secs();
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    let stamp = format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rest / 3600, rest / 60 % 60, rest % 60);
    let slug: String =
        label.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let name = if slug.trim_matches('-').is_empty() {
        format!("{stamp}-{scenario}")
    } else {
        format!("{stamp}-{scenario}-{}", slug.trim_matches('-'))
    };
    let parent = target_dir(root).join("loadtest");
    for n in 1.. {
        let dir = if n == 1 { parent.join(&name) } else { parent.join(format!("{name}-{n}")) };
        match std::fs::create_dir_all(&parent).and_then(|()| std::fs::create_dir(&dir)) {
            Ok(()) => return Ok(dir),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err).with_context(|| format!("failed to create {}", dir.display())),
        }
    }
    unreachable!()
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to a date.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::process::{Child, Stdio};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::environment::vars;

    #[test]
    fn the_environments_objectives_become_goose_rules() {
        let local = environment::load(&crate::project_root(), "local").unwrap();
        let rules = rules(&local.model.loadtest.objectives);
        assert!(rules.contains(&"error-rate<=1%".to_owned()), "{rules:?}");
        assert!(rules.contains(&"rps>=10".to_owned()), "{rules:?}");
        assert!(rules.contains(&"p99<250ms for GET /v1/transactions?limit=50".to_owned()), "{rules:?}");
        assert!(rules.contains(&"p95<250ms".to_owned()), "`all` judges every request: {rules:?}");
        assert!(rules.contains(&"p99<800ms for POST /v1/auth/login".to_owned()), "{rules:?}");
        // --smoke's objective comes from base.toml, whatever the environment.
        assert_eq!(super::rules(&local.model.loadtest.smoke), ["error-rate<=0%"]);
        let test = environment::load(&crate::project_root(), "test").unwrap();
        assert_eq!(super::rules(&test.model.loadtest.smoke), ["error-rate<=0%"]);
        assert_eq!(test.model.loadtest.objectives, Objectives::default());
    }

    #[test]
    fn only_loopback_targets_are_accepted() {
        for url in ["http://127.0.0.1:3000", "http://127.9.0.1", "http://localhost:8080/x", "http://[::1]:3000"] {
            require_loopback(url).unwrap_or_else(|err| panic!("{url}: {err}"));
        }
        for url in ["http://10.0.0.1:3000", "https://example.com", "http://[2001:db8::1]:80", "ftp://127.0.0.1"] {
            assert!(require_loopback(url).is_err(), "{url} was accepted");
        }
    }

    #[test]
    fn dates_come_out_as_the_calendar_says() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_419), (2025, 11, 27));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    /// A process that answers every request with an empty 200, as many
    /// times as asked, on a port of its own.
    fn answering(times: usize) -> u16 {
        use std::io::{Read, Write};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(times) {
                let mut stream = stream.unwrap();
                let _ = stream.read(&mut [0; 1024]);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            }
        });
        port
    }

    #[test]
    fn the_cross_check_scrapes_the_deployments_processes_that_answer() {
        let mut local = environment::load(&crate::project_root(), "local").unwrap();
        // A project of its own, so that no container of a real deployment
        // on this machine's engine joins in.
        local.name = format!("loadtest-unit-{}", std::process::id());
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);

        // `cargo xtask deploy`: `freedumb serve` on the platform port, and
        // the recurring worker on its own.
        let (serve, worker) = (answering(1), answering(1));
        local.model.platform.port = Some(serve);
        local.model.workers.get_mut("recurring").unwrap().port = worker;
        let mut urls = deployment_metrics(&local, loopback).unwrap();
        urls.sort();
        let mut expected = [serve, worker].map(|port| format!("http://127.0.0.1:{port}/metrics"));
        expected.sort();
        assert_eq!(urls, expected);

        // Nothing deployed: an error that says what to do.
        local.model.platform.port = Some(free_port());
        local.model.workers.get_mut("recurring").unwrap().port = free_port();
        let err = deployment_metrics(&local, loopback).unwrap_err().to_string();
        assert!(err.starts_with(&format!("no process of environment `{}` answers /metrics", local.name)), "{err}");
        assert!(err.contains(&format!("cargo xtask deploy --env {}", local.name)), "{err}");
    }

    /// A `freedumb serve all` of the test's own, on its own database, Redis
    /// key prefix and RabbitMQ exchange; stopped and its database dropped
    /// when the test ends, passed or not.
    struct Platform {
        child: Child,
        database: String,
        url: String,
    }

    impl Platform {
        fn start() -> Platform {
            let root = crate::project_root();
            let binary = crate::freedumb_debug_binary(&root);
            assert!(
                binary.is_file(),
                "{} is missing; `cargo build -p freedumb` (cargo xtask test does)",
                binary.display()
            );
            let environment = environment::load(&root, "local").unwrap();
            let port = free_port();
            let id = format!("loadtest_smoke_{}_{port}", std::process::id());
            let secret = |name: &str| match name {
                "ENCRYPTION_KEY" => "ab".repeat(32),
                _ => format!("{name}-for-the-load-test-smoke-run"),
            };
            let mut env: BTreeMap<String, String> =
                vars::local_process(&environment, port, &secret).into_iter().collect();
            env.insert("DATABASE_URL".into(), format!("postgres://postgres@127.0.0.1:5432/{id}"));
            env.insert("REDIS_KEY_PREFIX".into(), format!("{id}:"));
            env.insert("EVENTS_EXCHANGE".into(), format!("test.events.{id}"));
            env.insert("DEPLOYMENT".into(), id.clone());
            env.insert("LOG_LEVEL".into(), "warn".into());
            let migrate = Command::new(&binary).args(["migrate", "--create-database"]).envs(&env).output().unwrap();
            assert!(
                migrate.status.success(),
                "freedumb migrate failed (are Postgres, Redis and RabbitMQ running? `cargo xtask test` checks): {}",
                String::from_utf8_lossy(&migrate.stderr)
            );
            let child = Command::new(&binary)
                .args(["serve", "all"])
                .envs(&env)
                .stdout(Stdio::null())
                .stderr(if std::env::var_os("TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() })
                .spawn()
                .unwrap();
            let platform = Platform { child, database: id, url: format!("http://127.0.0.1:{port}") };
            let deadline = Instant::now() + Duration::from_secs(60);
            while ureq::get(&format!("{}/ready", platform.url)).call().is_err() {
                assert!(Instant::now() < deadline, "freedumb did not answer /ready within 60 s");
                std::thread::sleep(Duration::from_millis(200));
            }
            platform
        }
    }

    impl Drop for Platform {
        fn drop(&mut self) {
            let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
            let _ = self.child.wait();
            let _ = Command::new("dropdb")
                .args(["-h", "127.0.0.1", "-U", "postgres", "--if-exists", "--force", &self.database])
                .stderr(Stdio::null())
                .status();
            // The budget consumer's durable queues, named after the exchange,
            // and the exchange; best effort (rabbitmqctl is RabbitMQ's own
            // CLI, which `.ci/run` installs with the server). It has no
            // command for exchanges, so that one goes through `eval`.
            for queue in ["budget.transactions", "budget.transactions.dlq"] {
                let _ = Command::new("rabbitmqctl")
                    .args(["delete_queue", &format!("test.events.{}.{queue}", self.database)])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            let exchange = format!("test.events.{}", self.database);
            let _ = Command::new("rabbitmqctl")
                .args([
                    "eval",
                    &format!("rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"{exchange}\">>), false, <<\"test\">>)."),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// The CI gate: `cargo xtask loadtest --smoke` against a platform this
    /// test starts, through the same code path as on the command line. It
    /// fails, never skips, when a backing server is missing.
    #[test]
    fn the_smoke_run_passes_against_a_freshly_started_platform() {
        let platform = Platform::start();
        let smoke = Loadtest {
            env: "local".into(),
            target: Target::Platform,
            host: Some(platform.url.clone()),
            metrics_urls: Vec::new(),
            users: 0,
            hatch_rate: String::new(),
            duration: String::new(),
            scenario: "mix".into(),
            think_time: None,
            slos: Vec::new(),
            no_env_slo: false,
            baseline: None,
            baseline_tolerance: 10.0,
            crosscheck_tolerance: 1.0,
            smoke: true,
            debug: false,
            benchmark: false,
            database_url: None,
            label: String::new(),
        };
        smoke.run(&crate::project_root()).unwrap_or_else(|err| panic!("{err:#}"));
    }
}

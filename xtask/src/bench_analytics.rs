//! `cargo xtask bench-analytics`: the analytics service's performance
//! targets, measured on a platform of its own.
//!
//! 1. A release `freedumb serve all` on a database, Redis prefix, exchange
//!    and deployment of the run's own (nothing is shared with `deploy`).
//! 2. One user with one account; `--transactions` transactions over the
//!    last 365 days written straight into the ledger's tables by one SQL
//!    statement (categories and payees spread over the user's defaults and
//!    a few hundred names; one in eight is income). Going around the API
//!    is the point: the ledger's outbox holds none of them, so analytics
//!    learns them only from `freedumb replay --to analytics`, the backfill.
//! 3. The backfill: how long the replay takes to publish, and how long until
//!    the analytics consumer has handled every transaction (its
//!    `events_consumed_total` in `/metrics`): the consumer's events per
//!    second. Then the projection is checked against the ledger's own sums.
//! 4. Every analytics view over the year, `--requests` times each, one at a
//!    time: p50, p95, p99, max, beside `GET /v1/auth/me` (the cheapest
//!    authenticated request: the floor every view stands on).
//! 5. A yearly report of each kind, CSV and SVG: from `POST /v1/reports`
//!    until it has succeeded.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::deploy::{Profile, freedumb_binary};
use crate::environment::{self, vars};
use crate::process;

/// Measure the analytics service against its targets (backfill rate, view
/// latencies, report generation) on a platform and database of its own.
#[derive(Debug, Args)]
pub struct BenchAnalytics {
    /// Transactions of the one user.
    #[arg(long, default_value_t = 100_000)]
    transactions: u32,
    /// Requests per view, after 10 to warm up.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// The platform's port.
    #[arg(long, default_value_t = 3950)]
    port: u16,
    /// Keep the database (`freedumb_bench_analytics`) afterwards.
    #[arg(long)]
    keep: bool,
}

const DATABASE: &str = "freedumb_bench_analytics";

/// A child process killed when dropped, so an error never leaves one behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl BenchAnalytics {
    pub fn run(&self, root: &Path) -> anyhow::Result<()> {
        let environment = environment::load(root, "local")?;
        let postgres = environment.model.postgres.url.clone().context("environments/local.toml has no postgres.url")?;
        let (server, _) = postgres.rsplit_once('/').context("postgres.url names no database")?;
        let database_url = format!("{server}/{DATABASE}");
        let run = std::process::id();
        let secret = |_: &str| random_hex();
        let mut env = vars::local_process(&environment, self.port, &secret);
        let deployment = format!("bench-{run}");
        for (key, value) in [
            ("DATABASE_URL", database_url.clone()),
            ("DEPLOYMENT", deployment.clone()),
            ("EVENTS_EXCHANGE", format!("freedumb.bench.{run}")),
            ("REDIS_KEY_PREFIX", format!("bench:{run}:")),
            ("LOG_FORMAT", "json".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ] {
            env.retain(|(k, _)| k != key);
            env.push((key.to_owned(), value));
        }
        let psql = Psql { url: database_url.clone() };
        psql.drop_database(server)?;

        eprintln!("==> building freedumb (release)");
        process::run(process::cargo().current_dir(root).args(["build", "--release", "-p", "freedumb"]))?;
        let binary = freedumb_binary(root, std::env::var_os("CARGO_TARGET_DIR").as_deref(), Profile::Release);
        let logs = std::env::temp_dir().join(format!("freedumb-bench-analytics-{run}.log"));
        let log = || fs::OpenOptions::new().create(true).append(true).open(&logs);
        let freedumb = |args: &[&str]| {
            let mut cmd = Command::new(&binary);
            cmd.args(args).envs(env.iter().map(|(k, v)| (k, v)));
            cmd
        };
        let status = freedumb(&["migrate", "all", "--create-database"]).stdout(Stdio::null()).status()?;
        if !status.success() {
            bail!("freedumb migrate failed: {status}");
        }
        eprintln!("==> starting freedumb serve all on port {} (logs: {})", self.port, logs.display());
        let _server = Running(freedumb(&["serve", "all"]).stdout(log()?).stderr(log()?).spawn()?);
        let base = format!("http://127.0.0.1:{}", self.port);
        let api = Api::new(&base);
        api.wait_ready()?;

        let token = api.sign_up()?;
        let me = api.get(&token, "/v1/auth/me")?;
        let user = me["id"].as_str().context("/v1/auth/me names no id")?.to_owned();
        let account = api.post(
            &token,
            "/v1/accounts",
            &json!({"name": "Checking", "kind": "checking", "currency": "EUR", "opening_balance": "2500.00"}),
        )?;
        let account = account["id"].as_str().context("no account id")?.to_owned();
        api.get(&token, "/v1/categories")?; // the user's default categories
        eprintln!("==> writing {} transactions into the ledger", self.transactions);
        let started = Instant::now();
        psql.seed(&user, &account, self.transactions)?;
        eprintln!("    {:.1} s", started.elapsed().as_secs_f64());

        eprintln!("==> backfill: freedumb replay --to analytics");
        let queue = format!("freedumb.bench.{run}.{deployment}.analytics.transactions");
        let before = api.consumed(&queue)?;
        let started = Instant::now();
        let out = freedumb(&["replay", "--to", "analytics"]).stderr(log()?).output()?;
        if !out.status.success() {
            bail!("freedumb replay failed: {}; see {}", out.status, logs.display());
        }
        let published = started.elapsed();
        let wanted = before + u64::from(self.transactions);
        let deadline = Instant::now() + Duration::from_secs(600);
        while api.consumed(&queue)? < wanted {
            if Instant::now() > deadline {
                bail!("analytics did not consume the replay within 10 minutes");
            }
            thread::sleep(Duration::from_millis(20));
        }
        let drained = started.elapsed();

        let (from, to) = psql.range()?;
        let summary = api.get(&token, &format!("/v1/analytics/summary?from={from}&to={to}"))?;
        let (income, expense) = psql.sums(&user)?;
        println!("\n## Backfill of {} transactions (`cargo xtask bench-analytics`)\n", self.transactions);
        println!("| step | time | rate |\n| --- | ---: | ---: |");
        println!("| replay published (all snapshot events) | {:.2} s | |", published.as_secs_f64());
        println!(
            "| analytics consumed every transaction | {:.2} s | {:.0} events/s |",
            drained.as_secs_f64(),
            f64::from(self.transactions) / drained.as_secs_f64()
        );
        println!("\nledger sums over {from}..{to}: income {income}, expense {expense}");
        println!("analytics summary: {}", summary["current"]);

        println!("\n## Views over one year ({from}..{to}), {} requests each, one at a time\n", self.requests);
        println!("| request | p50 ms | p95 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: | ---: |");
        let range = format!("from={from}&to={to}");
        let views = [
            "/v1/auth/me".to_owned(),
            format!("/v1/analytics/spending/categories?{range}"),
            format!("/v1/analytics/spending/payees?{range}&limit=20"),
            format!("/v1/analytics/income-expense?{range}"),
            format!("/v1/analytics/cash-flow?{range}&interval=day"),
            format!("/v1/analytics/cash-flow?{range}&interval=month"),
            format!("/v1/analytics/net-worth?{range}"),
            format!("/v1/analytics/budgets?{range}"),
            format!("/v1/analytics/summary?{range}"),
            "/v1/analytics/projection?days=90".to_owned(),
        ];
        for path in &views {
            let samples = api.time(&token, path, self.requests)?;
            let at = |q: f64| ms(samples[((samples.len() - 1) as f64 * q).round() as usize]);
            println!(
                "| `GET {}` | {:.2} | {:.2} | {:.2} | {:.2} |",
                path.split('?').next().unwrap_or(path),
                at(0.5),
                at(0.95),
                at(0.99),
                ms(samples[samples.len() - 1])
            );
        }

        println!("\n## Yearly reports\n");
        println!("| kind | format | bytes | POST to succeeded |\n| --- | --- | ---: | ---: |");
        for kind in ["spending_by_category", "income_expense", "cash_flow", "net_worth"] {
            for format in ["csv", "svg"] {
                let (took, bytes) = api.report(&token, kind, format, &from, &to)?;
                println!("| {kind} | {format} | {bytes} | {:.0} ms |", ms(took));
            }
        }
        drop(_server);
        if !self.keep {
            psql.drop_database(server)?;
        }
        Ok(())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn random_hex() -> String {
    crate::secrets::random_hex(32).unwrap_or_else(|_| "0".repeat(64))
}

struct Psql {
    url: String,
}

impl Psql {
    fn run(&self, url: &str, sql: &str) -> anyhow::Result<String> {
        let out = Command::new("psql")
            .args([url, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .context("failed to run psql (Debian: postgresql-client)")?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn drop_database(&self, server: &str) -> anyhow::Result<()> {
        self.run(&format!("{server}/postgres"), &format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))?;
        Ok(())
    }

    /// The last 365 days, ending yesterday.
    fn range(&self) -> anyhow::Result<(String, String)> {
        let out = self.run(&self.url, "SELECT current_date - 365, current_date - 1")?;
        let (from, to) = out.split_once('|').context("psql's answer")?;
        Ok((from.to_owned(), to.to_owned()))
    }

    fn seed(&self, user: &str, account: &str, count: u32) -> anyhow::Result<()> {
        // Deterministic spread (no random()): the same run twice seeds the
        // same ledger. Amounts in cents; one row in eight is income.
        self.run(
            &self.url,
            &format!(
                "WITH cats AS (SELECT array_agg(id ORDER BY name) AS ids FROM ledger.categories WHERE user_id = '{user}')
                 INSERT INTO ledger.transactions (id, user_id, account_id, amount, currency_exponent, date, payee, category_id)
                 SELECT gen_random_uuid(), '{user}', '{account}',
                        CASE WHEN i % 8 = 0 THEN 150000 + (i * 7919) % 250000 ELSE -(100 + (i * 104729) % 25000) END,
                        2, current_date - 1 - (i % 365)::int, 'Payee ' || (i * 31) % 400,
                        cats.ids[(1 + (i * 13) % array_length(cats.ids, 1))::int]
                 FROM generate_series(1::bigint, {count}) AS i, cats"
            ),
        )?;
        Ok(())
    }

    fn sums(&self, user: &str) -> anyhow::Result<(String, String)> {
        let out = self.run(
            &self.url,
            &format!(
                "SELECT to_char(sum(amount) FILTER (WHERE amount > 0) / 100.0, 'FM999999999990.00'),
                        to_char(-sum(amount) FILTER (WHERE amount < 0) / 100.0, 'FM999999999990.00')
                 FROM ledger.transactions WHERE user_id = '{user}' AND transfer_id IS NULL"
            ),
        )?;
        let (income, expense) = out.split_once('|').context("psql's answer")?;
        Ok((income.to_owned(), expense.to_owned()))
    }
}

struct Api {
    base: String,
    agent: ureq::Agent,
}

impl Api {
    fn new(base: &str) -> Self {
        Api { base: base.to_owned(), agent: ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build() }
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.agent.get(&format!("{}/ready", self.base)).call().is_ok() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(200));
        }
        bail!("freedumb was not ready within 60 s")
    }

    fn sign_up(&self) -> anyhow::Result<String> {
        let credentials = json!({"email": "bench@example.com", "password": "correct horse battery staple"});
        self.agent.post(&format!("{}/v1/auth/register", self.base)).send_json(credentials.clone())?;
        let tokens: Value =
            self.agent.post(&format!("{}/v1/auth/login", self.base)).send_json(credentials)?.into_json()?;
        Ok(tokens["access_token"].as_str().context("no access token")?.to_owned())
    }

    fn get(&self, token: &str, path: &str) -> anyhow::Result<Value> {
        let response = self
            .agent
            .get(&format!("{}{path}", self.base))
            .set("authorization", &format!("Bearer {token}"))
            .call()
            .with_context(|| format!("GET {path}"))?;
        Ok(response.into_json()?)
    }

    fn post(&self, token: &str, path: &str, body: &Value) -> anyhow::Result<Value> {
        let response = self
            .agent
            .post(&format!("{}{path}", self.base))
            .set("authorization", &format!("Bearer {token}"))
            .send_json(body.clone())
            .with_context(|| format!("POST {path}"))?;
        Ok(response.into_json()?)
    }

    /// Sorted latencies of `count` requests after 10 to warm up.
    fn time(&self, token: &str, path: &str, count: usize) -> anyhow::Result<Vec<Duration>> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {token}");
        let mut samples = Vec::with_capacity(count);
        for n in 0..count + 10 {
            let started = Instant::now();
            let response =
                self.agent.get(&url).set("authorization", &auth).call().with_context(|| format!("GET {path}"))?;
            response.into_string()?;
            if n >= 10 {
                samples.push(started.elapsed());
            }
        }
        samples.sort();
        Ok(samples)
    }

    /// `events_consumed_total` of `queue`, processed and duplicates.
    fn consumed(&self, queue: &str) -> anyhow::Result<u64> {
        let text = self.agent.get(&format!("{}/metrics", self.base)).call()?.into_string()?;
        Ok(text
            .lines()
            .filter(|line| line.starts_with("events_consumed_total{") && line.contains(&format!("queue=\"{queue}\"")))
            .filter(|line| line.contains("outcome=\"processed\"") || line.contains("outcome=\"duplicate\""))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64)
    }

    fn report(&self, token: &str, kind: &str, format: &str, from: &str, to: &str) -> anyhow::Result<(Duration, usize)> {
        let started = Instant::now();
        let job = self.post(token, "/v1/reports", &json!({"kind": kind, "format": format, "from": from, "to": to}))?;
        let id = job["id"].as_str().context("no job id")?.to_owned();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let job = self.get(token, &format!("/v1/reports/{id}"))?;
            match job["status"].as_str() {
                Some("succeeded") => break,
                Some("queued" | "running") if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                _ => bail!("report {kind} {format}: {job}"),
            }
        }
        let took = started.elapsed();
        let body = self
            .agent
            .get(&format!("{}/v1/reports/{id}/download", self.base))
            .set("authorization", &format!("Bearer {token}"))
            .call()?
            .into_string()?;
        Ok((took, body.len()))
    }
}

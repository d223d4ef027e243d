//! The report runner: a background task that takes queued jobs one at a
//! time and generates them.
//!
//! For each job it claims (see [`jobs::claim`]) it runs the generation
//! beside a heartbeat: the generation reads the view in one read-only
//! snapshot and renders the file; the heartbeat renews the lease and stores
//! the progress whenever it moves, at least every third of the lease. The
//! attempt ends in one of four ways:
//!
//! - the file is done: stored in the row, the job `succeeded`;
//! - it failed or ran past `REPORT_TIMEOUT_SECS`: the attempt is recorded
//!   and the job retried after a backoff, or `failed` after the last one;
//! - the heartbeat finds the job no longer the runner's (cancelled, or the
//!   lease lapsed and another runner took it): the runner drops the work
//!   and writes nothing;
//! - the process shuts down: the job is given back (`queued`, the attempt
//!   not counted), so the next runner starts it at once.
//!
//! A runner that dies writes nothing more; its lease lapses and another
//! runner takes the job. Every `REPORT_SWEEP_SECS` the runner also expires
//! reports past their retention.

use std::time::{Duration, Instant};

use anyhow::Context;
use freedumb_kit::Platform;
use freedumb_kit::config::{ConfigError, Env};
use freedumb_kit::db::Db;
use freedumb_kit::service::{BackgroundTask, CancellationToken};
use tokio::sync::watch;
use uuid::Uuid;

use super::jobs::{self, Claimed, Content, Format, Kind};
use super::{chart, csv};
use crate::queries::{self, Interval};

/// The runner's settings, from the environment.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// How long one attempt may take (`REPORT_TIMEOUT_SECS`, 120).
    pub timeout: Duration,
    /// How long a finished report is kept (`REPORT_RETENTION_HOURS`, 168).
    pub retention: Duration,
    /// How long a claim holds without a heartbeat (`REPORT_LEASE_SECS`, 30):
    /// how soon a job whose runner died is taken again.
    pub lease: Duration,
    /// The sleep when no job is runnable (`REPORT_POLL_MS`, 1000).
    pub poll: Duration,
    /// The first retry's delay, doubled for each further one
    /// (`REPORT_BACKOFF_MS`, 5000).
    pub backoff: Duration,
    /// How often expired reports are swept (`REPORT_SWEEP_SECS`, 60).
    pub sweep: Duration,
    /// Runners in this process (`REPORT_WORKERS`, 1); 0 for a process that
    /// only answers the API and leaves the jobs to other replicas.
    pub workers: u8,
}

impl RunnerConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let bounded = |var: &str, default: u64, range: std::ops::RangeInclusive<u64>, what: &str| {
            let expected = format!("a whole number of {what} from {} to {}", range.start(), range.end());
            let value: u64 = env.parsed_or(var, default, &expected)?;
            if range.contains(&value) { Ok(value) } else { Err(ConfigError::malformed(var, &expected)) }
        };
        let workers = bounded("REPORT_WORKERS", 1, 0..=16, "runners")?;
        Ok(RunnerConfig {
            timeout: Duration::from_secs(bounded("REPORT_TIMEOUT_SECS", 120, 1..=3600, "seconds")?),
            // 0 expires a report at the next sweep (for tests); a year at most.
            retention: Duration::from_secs(3600 * bounded("REPORT_RETENTION_HOURS", 168, 0..=8760, "hours")?),
            lease: Duration::from_secs(bounded("REPORT_LEASE_SECS", 30, 1..=3600, "seconds")?),
            poll: Duration::from_millis(bounded("REPORT_POLL_MS", 1000, 10..=600_000, "milliseconds")?),
            backoff: Duration::from_millis(bounded("REPORT_BACKOFF_MS", 5000, 0..=3_600_000, "milliseconds")?),
            sweep: Duration::from_secs(bounded("REPORT_SWEEP_SECS", 60, 1..=86_400, "seconds")?),
            workers: u8::try_from(workers).unwrap_or(1),
        })
    }
}

/// The runners of this process as background tasks.
pub fn tasks(platform: &Platform, config: &RunnerConfig) -> Vec<BackgroundTask> {
    (0..config.workers)
        .map(|_| {
            let (db, config) = (platform.db.clone(), config.clone());
            BackgroundTask::new("report-runner", move |shutdown: CancellationToken| {
                // A new identity per run: a run that failed and restarted
                // must not take over the leases of the one before.
                let runner = Runner::new(db.clone(), config.clone());
                async move { runner.run(shutdown).await }
            })
        })
        .collect()
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// Failed or timed out; retried or failed for good by the table.
    Failed(String),
    /// The job stopped being this runner's (cancelled, or taken over).
    Stopped,
    /// Given back on shutdown.
    Released,
}

pub struct Runner {
    db: Db,
    id: Uuid,
    config: RunnerConfig,
}

impl Runner {
    pub fn new(db: Db, config: RunnerConfig) -> Self {
        Runner { db, id: Uuid::new_v4(), config }
    }

    /// The identity it claims jobs as.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Runs jobs until `shutdown`. An error is the database's; the server
    /// restarts the task after it, and the lease brings the job back.
    pub async fn run(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut last_sweep: Option<Instant> = None;
        // Woken by the NOTIFY of a queued job; the poll stays, for jobs
        // whose lease lapsed, retries that are due, and a lost listener.
        let mut listener = match sqlx::postgres::PgListener::connect_with(&self.db.pool).await {
            Ok(mut listener) => match listener.listen(jobs::NEW_JOB_CHANNEL).await {
                Ok(()) => Some(listener),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot listen for new reports; polling only");
                    None
                }
            },
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for new reports; polling only");
                None
            }
        };
        while !shutdown.is_cancelled() {
            if last_sweep.is_none_or(|at| at.elapsed() >= self.config.sweep) {
                let mut conn = self.db.pool.acquire().await.context("failed to get a connection")?;
                let expired = jobs::sweep(&mut conn).await?;
                if expired > 0 {
                    tracing::info!(expired, "expired reports deleted");
                }
                last_sweep = Some(Instant::now());
            }
            if self.run_one(&shutdown).await?.is_none() {
                let woken = async {
                    match listener.as_mut() {
                        // An error ends the listening; polling goes on.
                        Some(l) => {
                            if l.try_recv().await.is_err() {
                                listener = None;
                            }
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(self.config.poll) => {}
                    () = woken => {}
                }
            }
        }
        Ok(())
    }

    /// Claims the oldest runnable job and runs one attempt of it; `None`
    /// when there was none.
    pub async fn run_one(&self, shutdown: &CancellationToken) -> anyhow::Result<Option<(Claimed, Outcome)>> {
        let mut conn = self.db.pool.acquire().await.context("failed to get a connection")?;
        let Some(job) = jobs::claim(&mut conn, self.id, self.config.lease).await? else { return Ok(None) };
        drop(conn);
        let started = Instant::now();
        let outcome = self.attempt(&job, shutdown).await?;
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &outcome {
            Outcome::Succeeded => tracing::info!(
                report_id = %job.id, kind = job.kind.as_str(), format = job.format.as_str(), attempt = job.attempt,
                elapsed_ms, "report generated"
            ),
            Outcome::Failed(error) => tracing::warn!(
                report_id = %job.id, kind = job.kind.as_str(), attempt = job.attempt, max_attempts = job.max_attempts,
                elapsed_ms, error = %error, "report attempt failed"
            ),
            Outcome::Stopped => {
                tracing::info!(report_id = %job.id, elapsed_ms, "report stopped: cancelled or taken over")
            }
            Outcome::Released => tracing::info!(report_id = %job.id, "report given back on shutdown"),
        }
        Ok(Some((job, outcome)))
    }

    async fn attempt(&self, job: &Claimed, shutdown: &CancellationToken) -> anyhow::Result<Outcome> {
        let (progress, mut progress_seen) = watch::channel(0i16);
        let work = generate(&self.db, job, progress, self.config.timeout);
        tokio::pin!(work);
        let deadline = tokio::time::sleep(self.config.timeout);
        tokio::pin!(deadline);
        let mut beat = tokio::time::interval((self.config.lease / 3).max(Duration::from_millis(100)));
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut conn = self.db.pool.acquire().await.context("failed to get a connection")?;
        let mut progress_open = true;
        loop {
            tokio::select! {
                result = &mut work => {
                    return match result {
                        Ok(content) => {
                            if jobs::succeed(&mut conn, job.id, self.id, &content, self.config.retention).await? {
                                Ok(Outcome::Succeeded)
                            } else {
                                Ok(Outcome::Stopped)
                            }
                        }
                        Err(err) => {
                            let error = format!("{err:#}");
                            jobs::fail_attempt(&mut conn, job.id, self.id, &error, self.config.backoff).await?;
                            Ok(Outcome::Failed(error))
                        }
                    };
                }
                () = &mut deadline => {
                    let error = format!("timed out after {} s", self.config.timeout.as_secs());
                    jobs::fail_attempt(&mut conn, job.id, self.id, &error, self.config.backoff).await?;
                    return Ok(Outcome::Failed(error));
                }
                () = shutdown.cancelled() => {
                    jobs::release(&mut conn, job.id, self.id).await?;
                    return Ok(Outcome::Released);
                }
                changed = progress_seen.changed(), if progress_open => {
                    // The generation dropped its sender: it is about to
                    // finish, and the ticks keep the lease.
                    progress_open = changed.is_ok();
                    let now = *progress_seen.borrow_and_update();
                    if !self.beat(&mut conn, job, now).await {
                        return Ok(Outcome::Stopped);
                    }
                }
                _ = beat.tick() => {
                    let now = *progress_seen.borrow();
                    if !self.beat(&mut conn, job, now).await {
                        return Ok(Outcome::Stopped);
                    }
                }
            }
        }
    }

    /// Whether the job is still ours. A database error is not an answer:
    /// the work goes on, and the lease decides if it stays ours.
    async fn beat(&self, conn: &mut sqlx::PgConnection, job: &Claimed, progress: i16) -> bool {
        match jobs::heartbeat(conn, job.id, self.id, self.config.lease, progress).await {
            Ok(ours) => ours,
            Err(err) => {
                tracing::warn!(report_id = %job.id, error = %format!("{err:#}"), "report heartbeat failed");
                true
            }
        }
    }
}

/// The cash-flow period for a range: days for a month, weeks for half a
/// year, months beyond, so a chart has between 5 and about 190 points.
fn interval_for(days: i64) -> Interval {
    if days <= 31 {
        Interval::Day
    } else if days <= 184 {
        Interval::Week
    } else {
        Interval::Month
    }
}

/// One attempt's work: the view, read in one read-only snapshot (so a
/// report never mixes two moments), then the file. The snapshot's
/// statements are bounded too, a second past the attempt's timeout: the
/// runner's deadline fires first and names the timeout, and the server then
/// ends the abandoned statement rather than keep working for no one.
async fn generate(db: &Db, job: &Claimed, progress: watch::Sender<i16>, timeout: Duration) -> anyhow::Result<Content> {
    let _ = progress.send(5);
    let mut tx = db.begin().await.context("failed to begin a report's snapshot")?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(tx.conn())
        .await
        .context("failed to open a report's snapshot")?;
    sqlx::query(&format!("SET LOCAL statement_timeout = {}", timeout.as_millis() + 1000))
        .execute(tx.conn())
        .await
        .context("failed to bound a report's statements")?;
    let _ = progress.send(10);
    let (user, range) = (job.user_id, job.range);
    // Reading the view is most of the work; rendering is milliseconds.
    let bytes = match job.kind {
        Kind::SpendingByCategory => {
            let view = queries::spending_by_category(tx.conn(), user, range).await?;
            let _ = progress.send(70);
            match job.format {
                Format::Csv => csv::spending_by_category(&view)?,
                Format::Svg => chart::spending_by_category(&view, range)?.into_bytes(),
            }
        }
        Kind::IncomeExpense => {
            let view = queries::income_expense(tx.conn(), user, range).await?;
            let _ = progress.send(70);
            match job.format {
                Format::Csv => csv::income_expense(&view)?,
                Format::Svg => chart::income_expense(&view, range)?.into_bytes(),
            }
        }
        Kind::CashFlow => {
            let view = queries::cash_flow(tx.conn(), user, range, interval_for(range.days())).await?;
            let _ = progress.send(70);
            match job.format {
                Format::Csv => csv::cash_flow(&view)?,
                Format::Svg => chart::cash_flow(&view, range)?.into_bytes(),
            }
        }
        Kind::NetWorth => {
            let view = queries::net_worth(tx.conn(), user, range).await?;
            let _ = progress.send(70);
            match job.format {
                Format::Csv => csv::net_worth(&view)?,
                Format::Svg => chart::net_worth(&view, range)?.into_bytes(),
            }
        }
    };
    tx.commit().await.context("failed to end a report's snapshot")?;
    let _ = progress.send(90);
    Ok(Content {
        bytes,
        content_type: job.format.content_type().to_owned(),
        file_name: format!("{}_{}_{}.{}", job.kind.as_str(), range.from(), range.to(), job.format.as_str()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cash_flow_periods_grow_with_the_range() {
        assert_eq!(interval_for(1), Interval::Day);
        assert_eq!(interval_for(31), Interval::Day);
        assert_eq!(interval_for(32), Interval::Week);
        assert_eq!(interval_for(184), Interval::Week);
        assert_eq!(interval_for(366), Interval::Month);
    }

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let config = RunnerConfig::from_env(&Env::from_map(Default::default())).unwrap();
        assert_eq!(config.timeout, Duration::from_secs(120));
        assert_eq!(config.retention, Duration::from_secs(168 * 3600));
        assert_eq!(config.workers, 1);
    }

    #[test]
    fn a_timeout_of_zero_is_refused_naming_the_variable() {
        let env = Env::from_map([("REPORT_TIMEOUT_SECS".to_owned(), "0".to_owned())].into());
        assert_eq!(RunnerConfig::from_env(&env).unwrap_err().var, "REPORT_TIMEOUT_SECS");
    }
}

//! Background tasks run beside the server: a failing one is restarted, and
//! shutdown stops them all, bounded by the shutdown timeout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use freedumb_kit::config::{Config, ConfigError, Env};
use freedumb_kit::server::Application;
use freedumb_kit::service::BackgroundTask;
use freedumb_kit::{Platform, Service};
use sqlx::migrate::Migrator;
use tokio::sync::oneshot;
use utoipa_axum::router::OpenApiRouter;

use crate::helpers::eventually;

/// What the probe's one background task does.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Fails its first run, panics in its second, then runs until told to stop.
    FailThenPanicThenRun,
    /// Never looks at its shutdown token.
    IgnoreShutdown,
}

struct Probe {
    behaviour: Behaviour,
    runs: Arc<AtomicUsize>,
    stopped: Arc<AtomicBool>,
}

impl Service for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn default_port(&self) -> u16 {
        0
    }
    fn schema(&self) -> &'static str {
        "probe"
    }
    fn migrator(&self) -> &'static Migrator {
        static NONE: Migrator = Migrator::DEFAULT;
        &NONE
    }
    fn router(&self, _: &Platform, _: &Env) -> Result<OpenApiRouter, ConfigError> {
        Ok(OpenApiRouter::new())
    }
    fn background(&self, _: &Platform, _: &Env) -> Result<Vec<BackgroundTask>, ConfigError> {
        let (behaviour, runs, stopped) = (self.behaviour, self.runs.clone(), self.stopped.clone());
        Ok(vec![BackgroundTask::new("probe-task", move |shutdown| {
            let (runs, stopped) = (runs.clone(), stopped.clone());
            async move {
                let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                match (behaviour, run) {
                    (Behaviour::FailThenPanicThenRun, 1) => anyhow::bail!("the broker hiccuped"),
                    (Behaviour::FailThenPanicThenRun, 2) => panic!("a bug in the task"),
                    (Behaviour::FailThenPanicThenRun, _) => {
                        shutdown.cancelled().await;
                        stopped.store(true, Ordering::SeqCst);
                        Ok(())
                    }
                    (Behaviour::IgnoreShutdown, _) => {
                        std::future::pending::<()>().await;
                        Ok(())
                    }
                }
            }
        })])
    }
}

struct Started {
    runs: Arc<AtomicUsize>,
    stopped: Arc<AtomicBool>,
    metrics: freedumb_kit::metrics::Metrics,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(behaviour: Behaviour) -> Started {
    let vars: BTreeMap<String, String> = [
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        // Nothing here touches them: connections are lazy.
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none"),
        ("REDIS_URL", "redis://127.0.0.1:1"),
        ("JWT_ACCESS_SECRET", "0123456789abcdef0123456789abcdef"),
        ("SHUTDOWN_TIMEOUT_SECS", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let env = Env::from_map(vars);
    let config = Config::from_env(&env, 0, "probe").unwrap();
    let probe = Probe { behaviour, runs: Arc::default(), stopped: Arc::default() };
    let app = Application::build(config, &env, &[&probe]).await.unwrap();
    assert_eq!(app.background_tasks(), ["probe-task"]);
    let metrics = app.platform().metrics.clone();
    let (stop, stopped_rx) = oneshot::channel();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped_rx.await;
    }));
    Started { runs: probe.runs, stopped: probe.stopped, metrics, stop, server }
}

#[tokio::test]
async fn a_failing_or_panicking_background_task_is_restarted_and_stopped_on_shutdown() {
    let started = start(Behaviour::FailThenPanicThenRun).await;
    // Restarts wait 1 s, then 2 s.
    eventually("the task is on its third run", Duration::from_secs(10), || async {
        started.runs.load(Ordering::SeqCst) == 3
    })
    .await;
    let metrics = started.metrics.render();
    assert!(metrics.contains(r#"background_task_restarts_total{task="probe-task"} 2"#), "{metrics}");

    started.stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), started.server).await.unwrap().unwrap().unwrap();
    assert!(started.stopped.load(Ordering::SeqCst), "the task saw the shutdown and finished");
    assert_eq!(started.runs.load(Ordering::SeqCst), 3, "no restart after shutdown");
}

#[tokio::test]
async fn a_task_that_ignores_shutdown_is_cut_off_at_the_shutdown_timeout() {
    let started = start(Behaviour::IgnoreShutdown).await;
    eventually("the task runs", Duration::from_secs(5), || async { started.runs.load(Ordering::SeqCst) == 1 }).await;
    let asked = Instant::now();
    started.stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), started.server).await.unwrap().unwrap().unwrap();
    assert!(asked.elapsed() < Duration::from_secs(3), "stopped {:?} after being asked", asked.elapsed());
}

//! End to end against the real Docker engine (`.ci/run` starts one): the
//! offline image is built through the API, migrates as a one-off container,
//! serves on the host network against the local Postgres, Redis and
//! RabbitMQ, shows up in `status` and `logs`, and `down` leaves nothing
//! behind. These tests fail, never skip, when the engine is absent.
//!
//! The image holds the dev-profile `freedumb` (the one the workspace's tests
//! build), so it is tagged and labelled `debug`.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use super::converge::{Action, Apply, Desired, Running, apply, changes, plan, port};
use super::{Engine, LABEL_PROJECT, LABEL_SERVICE, Spec};
use crate::build::{Built, build_offline};
use crate::containers::{self, Row};
use crate::environment::{self, vars};

fn engine() -> Engine {
    Engine::connect().unwrap_or_else(|err| panic!("{err:#}"))
}

fn debug_image(engine: &Engine) -> Built {
    let root = crate::project_root();
    let binary = crate::freedumb_debug_binary(&root);
    assert!(binary.is_file(), "{} is missing; `cargo build -p freedumb` (cargo xtask test does)", binary.display());
    build_offline(engine, &root, &binary, true, 1001, &mut std::io::sink()).unwrap_or_else(|err| panic!("{err:#}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A project of its own per test, and a database of its own; both go when
/// the test ends, whether it passed or not.
struct Deployment<'a> {
    engine: &'a Engine,
    project: String,
    database: String,
}

impl<'a> Deployment<'a> {
    fn new(engine: &'a Engine, test: &str) -> Self {
        let id = format!("{test}_{}_{}", std::process::id(), free_port());
        Deployment { engine, project: format!("freedumb-e2e-{id}").replace('_', "-"), database: format!("e2e_{id}") }
    }

    /// The local environment's variables for one process, on `port`, with
    /// this test's database and Redis key prefix and throwaway secrets.
    fn env(&self, port: u16) -> Vec<(String, String)> {
        let environment = environment::load(&crate::project_root(), "local").unwrap();
        let secret = |name: &str| match name {
            "ENCRYPTION_KEY" => "ab".repeat(32),
            _ => format!("{name}-for-the-docker-end-to-end-test"),
        };
        let mut env = vars::local_process(&environment, port, &secret);
        for (key, value) in env.iter_mut() {
            match key.as_str() {
                "DATABASE_URL" => *value = format!("postgres://postgres@127.0.0.1:5432/{}", self.database),
                "REDIS_KEY_PREFIX" => *value = format!("{}:", self.project),
                "LOG_FORMAT" => *value = "json".to_owned(),
                _ => {}
            }
        }
        env
    }

    fn spec<'s>(&self, image: &'s str, service: &str, command: &[&str], probe: Option<String>, port: u16) -> Spec<'s> {
        Spec {
            image,
            command: command.iter().map(|arg| (*arg).to_owned()).collect(),
            env: self.env(port),
            labels: BTreeMap::from([
                (LABEL_PROJECT.to_owned(), self.project.clone()),
                (LABEL_SERVICE.to_owned(), service.to_owned()),
            ]),
            probe,
            interval: Duration::from_millis(500),
            stop_timeout_secs: 35,
        }
    }
}

impl Drop for Deployment<'_> {
    fn drop(&mut self) {
        if let Err(err) = containers::down(self.engine, &self.project, true) {
            eprintln!("cleaning up {}: {err:#}", self.project);
        }
        let _ = std::process::Command::new("dropdb")
            .args(["-h", "127.0.0.1", "-U", "postgres", "--if-exists", "--force", &self.database])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[test]
fn the_offline_image_migrates_serves_is_listed_and_goes_down() {
    let engine = engine();
    let built = debug_image(&engine);
    assert!(built.image.starts_with("freedumb:") && built.image.ends_with("-debug"), "{}", built.image);
    let deployment = Deployment::new(&engine, "serve");
    let port = free_port();

    // Migrations: a one-off container that must exit 0 before anything serves.
    let migrate = format!("{}-migrate", deployment.project);
    let spec = deployment.spec(&built.image, "migrate", &["migrate", "auth", "--create-database"], None, port);
    engine.run(&migrate, spec.body()).unwrap();
    let code = engine.wait(&migrate).unwrap();
    assert_eq!(code, 0, "migrate failed:\n{}", engine.last_log_lines(&migrate, 20));

    let auth = format!("{}-auth-1", deployment.project);
    let probe = format!("http://127.0.0.1:{port}/ready");
    let spec = deployment.spec(&built.image, "auth", &["serve", "auth"], Some(probe.clone()), port);
    engine.run(&auth, spec.body()).unwrap();
    engine.wait_healthy(&auth, Instant::now() + Duration::from_secs(60)).unwrap_or_else(|err| panic!("{err:#}"));

    let answer = ureq::get(&probe).call().unwrap();
    assert_eq!(answer.status(), 200);
    let rows = containers::status(&engine, &deployment.project).unwrap();
    let summary: Vec<(&str, &str, &str)> =
        rows.iter().map(|row: &Row| (row.service.as_str(), row.state.as_str(), row.health.as_str())).collect();
    assert_eq!(summary, [("auth", "running", "healthy"), ("migrate", "exited", "none")]);
    assert!(rows.iter().all(|row| row.image == built.image && row.restarts == 0), "{rows:?}");
    let mut log = Vec::new();
    engine.logs(&auth, None, false, &mut log).unwrap();
    assert!(String::from_utf8_lossy(&log).contains("\"level\""), "{}", String::from_utf8_lossy(&log));

    let removed = containers::down(&engine, &deployment.project, true).unwrap();
    assert_eq!(removed, [auth, migrate], "the gateway (none here) first, then the rest by name");
    assert!(containers::status(&engine, &deployment.project).unwrap().is_empty());
    assert!(ureq::get(&probe).call().is_err(), "nothing answers once the deployment is down");
}

#[test]
fn a_replica_that_never_gets_healthy_is_reported_with_its_last_log_lines() {
    let engine = engine();
    let built = debug_image(&engine);
    let deployment = Deployment::new(&engine, "broken");
    let port = free_port();
    let name = format!("{}-auth-1", deployment.project);
    let mut spec =
        deployment.spec(&built.image, "auth", &["serve", "auth"], Some(format!("http://127.0.0.1:{port}/ready")), port);
    // A configuration error: freedumb exits 2 at once, naming the variable.
    spec.env.retain(|(key, _)| key != "JWT_ACCESS_SECRET");
    spec.env.push(("JWT_ACCESS_SECRET".to_owned(), "short".to_owned()));

    engine.run(&name, spec.body()).unwrap();
    let err = engine.wait_healthy(&name, Instant::now() + Duration::from_secs(30)).unwrap_err().to_string();

    assert!(err.contains(&name), "{err}");
    assert!(err.contains("JWT_ACCESS_SECRET"), "the log line naming the variable is in the error: {err}");
}

/// Two replicas of auth converge, stay put when nothing changed, roll to a
/// new setting one replica at a time, and a broken setting rolls back by
/// itself to the containers that ran before.
#[test]
fn replicas_converge_roll_forward_and_roll_back_a_broken_change() {
    let engine = engine();
    let built = debug_image(&engine);
    let deployment = Deployment::new(&engine, "converge");
    // Replicas and slots take base..base+1999 and base+10000..base+11999:
    // clear of the `local` and `test` environments' ports and of the
    // ephemeral range (32768 and up), so no client socket can hold one.
    let base_port = 20000 + (std::process::id() % 1000) as u16;
    let migrate = format!("{}-migrate", deployment.project);
    let spec = deployment.spec(&built.image, "migrate", &["migrate", "auth", "--create-database"], None, base_port);
    engine.run(&migrate, spec.body()).unwrap();
    assert_eq!(engine.wait(&migrate).unwrap(), 0, "{}", engine.last_log_lines(&migrate, 20));
    let desired = |env: &[(&str, &str)]| -> Vec<Desired> {
        (0..2)
            .map(|replica| {
                let mut vars: Vec<(String, String)> =
                    deployment.env(base_port).into_iter().filter(|(key, _)| key != "PORT").collect();
                for (key, value) in env {
                    vars.retain(|(k, _)| k != key);
                    vars.push(((*key).to_owned(), (*value).to_owned()));
                }
                Desired {
                    service: "auth".to_owned(),
                    replica,
                    base_port,
                    image: built.image.clone(),
                    command: vec!["serve".to_owned(), "auth".to_owned()],
                    env: vars,
                    probe_path: "/ready".to_owned(),
                }
            })
            .collect()
    };
    let actual = || -> Vec<Running> {
        let mut running: Vec<Running> = engine
            .containers(&BTreeMap::from([(LABEL_PROJECT, deployment.project.as_str())]))
            .unwrap()
            .iter()
            .filter_map(Running::from_summary)
            .collect();
        running.sort_by_key(|r| r.name.clone());
        running
    };
    let mut lines = Vec::new();
    let mut say = |line: &str| lines.push(line.to_owned());
    let mut options =
        Apply { project: &deployment.project, health_timeout: Duration::from_secs(60), say: &mut say, switch: None };

    let first = desired(&[]);
    apply(&engine, &plan(&first, &actual()), &mut options).unwrap_or_else(|err| panic!("{err:#}"));
    assert!(!changes(&plan(&first, &actual())), "a second run with nothing changed changes nothing");
    for replica in 0..2 {
        let url = format!("http://127.0.0.1:{}/ready", port(base_port, replica, 0).unwrap());
        assert_eq!(ureq::get(&url).call().unwrap().status(), 200, "{url}");
    }

    let second = desired(&[("LOG_LEVEL", "debug")]);
    let rollout = plan(&second, &actual());
    assert!(rollout.iter().all(|action| matches!(action, Action::Replace { .. })), "{rollout:?}");
    apply(&engine, &rollout, &mut options).unwrap_or_else(|err| panic!("{err:#}"));
    let after_rollout = actual();
    assert_eq!(after_rollout.iter().map(|r| (r.slot, r.running)).collect::<Vec<_>>(), [(1, true), (1, true)]);
    assert!(!changes(&plan(&second, &after_rollout)));

    // The first replica rolls forward, the second never gets healthy: the
    // first goes back to the container it replaced.
    let mut broken = desired(&[("LOG_LEVEL", "warn")]);
    broken[1] = desired(&[("JWT_ACCESS_SECRET", "short")]).remove(1);
    let err = apply(&engine, &plan(&broken, &after_rollout), &mut options).unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("replica 2 of auth did not become healthy"), "{err}");
    assert!(err.contains("JWT_ACCESS_SECRET"), "its last log lines say why: {err}");
    assert_eq!(actual(), after_rollout, "the previous containers serve again, and nothing else runs");
    assert!(!changes(&plan(&second, &actual())));
}

/// The `test` environment end to end: `deploy --containers` brings up every
/// service behind the gateway container, every route answers through it, a
/// second deploy with nothing changed changes nothing, a new image rolls
/// every replica while a steady load runs through the gateway without one
/// failed request, and `down` leaves no container behind.
#[test]
fn a_rollout_under_load_through_the_gateway_loses_no_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let engine = engine();
    let built = debug_image(&engine);
    let root = crate::project_root();
    let environment = environment::load(&root, "test").unwrap();
    let project = super::deploy::project(&environment);
    struct Down<'a>(&'a Engine, String);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = containers::down(self.0, &self.1, true);
        }
    }
    let _down = Down(&engine, project.clone());
    let gateway = format!("http://127.0.0.1:{}", environment.model.gateway.http_port);

    let started = Instant::now();
    super::deploy::run(&root, &environment, Some(&built.image), true).unwrap_or_else(|err| panic!("{err:#}"));
    eprintln!("deploy to all healthy: {:.1} s", started.elapsed().as_secs_f64());
    // Every routed service answers through the gateway, in our error shape.
    for route in ["/v1/auth/me", "/v1/accounts", "/v1/transactions", "/v1/categories", "/v1/budgets", "/v1/goals"] {
        match ureq::get(&format!("{gateway}{route}")).call() {
            Err(ureq::Error::Status(401, response)) => {
                let body = response.into_string().unwrap();
                assert!(body.contains("\"request_id\""), "{route}: {body}");
            }
            other => panic!("{route}: expected 401 from the service, got {other:?}"),
        }
    }
    let before = containers::status(&engine, &project).unwrap();
    super::deploy::run(&root, &environment, Some(&built.image), true).unwrap();
    assert_eq!(containers::status(&engine, &project).unwrap().len(), before.len(), "nothing changed");

    // A steady load through the gateway, during a rollout to a new image.
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|worker| {
            let stop = Arc::clone(&stop);
            let gateway = gateway.clone();
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
                let routes = ["/v1/auth/me", "/v1/accounts", "/v1/budgets"];
                let (mut served, mut failures) = (0u64, Vec::new());
                let mut i = worker;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let url = format!("{gateway}{}", routes[i % routes.len()]);
                    match agent.get(&url).call() {
                        Err(ureq::Error::Status(401, _)) => served += 1,
                        Ok(response) => failures.push(format!("{url}: {}", response.status())),
                        Err(err) => failures.push(format!("{url}: {err}")),
                    }
                }
                (served, failures)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let tag = format!("{}-rollout", built.image.rsplit_once(':').unwrap().1);
    engine.tag(&built.image, "freedumb", &tag).unwrap();
    let next = format!("freedumb:{tag}");
    let started = Instant::now();
    super::deploy::run(&root, &environment, Some(&next), true).unwrap_or_else(|err| panic!("{err:#}"));
    let rollout = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (mut served, mut failures) = (0, Vec::new());
    for worker in load {
        let (s, f) = worker.join().unwrap();
        served += s;
        failures.extend(f);
    }
    eprintln!(
        "rollout of {} replicas: {:.1} s; {served} requests served through the gateway, {} failed",
        before.iter().filter(|row| row.state == "running" && row.service != "gateway").count(),
        rollout.as_secs_f64(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} requests failed during the rollout: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(served > 100, "only {served} requests ran during the rollout");
    let rows = containers::status(&engine, &project).unwrap();
    assert!(
        rows.iter()
            .filter(|row| !["gateway", "migrate"].contains(&row.service.as_str()))
            .all(|row| row.image == next && row.health == "healthy"),
        "{rows:?}"
    );

    // `rollback` goes back to the image deployed before, the same way.
    assert_eq!(super::deploy::previous(&root, &project).unwrap(), built.image);
    super::deploy::Rollback { env: "test".to_owned() }.run(&root).unwrap_or_else(|err| panic!("{err:#}"));
    let rows = containers::status(&engine, &project).unwrap();
    assert!(
        rows.iter()
            .filter(|row| !["gateway", "migrate"].contains(&row.service.as_str()))
            .all(|row| row.image == built.image && row.health == "healthy"),
        "{rows:?}"
    );

    let removed = containers::down(&engine, &project, true).unwrap();
    assert_eq!(
        removed.first().map(String::as_str),
        Some(format!("{project}-gateway").as_str()),
        "the gateway stops first"
    );
    assert!(containers::status(&engine, &project).unwrap().is_empty(), "down leaves no container behind");
}

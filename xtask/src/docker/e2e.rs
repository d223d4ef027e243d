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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::converge::{Action, Apply, Desired, Running, Servers, apply, changes, plan, port};
use super::{Engine, LABEL_PROJECT, LABEL_SERVICE, Spec};
use crate::build::{Built, build_offline};
use crate::containers::{self, Row};
use crate::environment::{self, Environment, vars};
use crate::progress::{Mode, Progress};

fn engine() -> Engine {
    Engine::connect().unwrap_or_else(|err| panic!("{err:#}"))
}

pub(super) fn debug_image(engine: &Engine) -> Built {
    let root = crate::project_root();
    let binary = crate::freedumb_debug_binary(&root);
    assert!(binary.is_file(), "{} is missing; `cargo build -p freedumb` (cargo xtask test does)", binary.display());
    build_offline(engine, &root, &binary, true, 1001, &Progress::lines()).unwrap_or_else(|err| panic!("{err:#}"))
}

/// A steady load through the gateway: four clients, one request after the
/// other each, on keep-alive connections (as a browser or an SDK would),
/// counting every answer that is not the service's own 401.
struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<std::thread::JoinHandle<(u64, Vec<String>)>>,
}

impl Load {
    fn start(gateway: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..4)
            .map(|worker| {
                let stop = Arc::clone(&stop);
                let gateway = gateway.to_owned();
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
        // Under way before whatever the test does next.
        std::thread::sleep(Duration::from_secs(1));
        Load { stop, workers }
    }

    /// Goes on a second longer, then stops: requests served, failures.
    fn stop(self) -> (u64, Vec<String>) {
        std::thread::sleep(Duration::from_secs(1));
        self.stop.store(true, Ordering::Relaxed);
        let (mut served, mut failures) = (0, Vec::new());
        for worker in self.workers {
            let (s, f) = worker.join().unwrap();
            served += s;
            failures.extend(f);
        }
        (served, failures)
    }
}

fn assert_none_failed(what: &str, served: u64, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} requests failed during {what}: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(served > 100, "only {served} requests ran during {what}");
}

/// Removes what a test deployed of an environment when the test ends,
/// passed or not: the project's containers, its database, and its files
/// under `.local/` (the gateway's configuration, the deployment history,
/// the environment's generated secrets).
struct Down<'a>(&'a Engine, String, String, String);

impl<'a> Down<'a> {
    fn new(engine: &'a Engine, project: &str, environment: &Environment) -> Self {
        let url = environment.model.postgres.url.as_deref().unwrap_or_default();
        let database = url.rsplit('/').next().and_then(|path| path.split('?').next()).unwrap_or_default();
        Down(engine, project.to_owned(), database.to_owned(), environment.name.clone())
    }
}

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = containers::down(self.0, &self.1, true);
        if !self.2.is_empty() {
            drop_database(&self.2);
        }
        let local = crate::project_root().join(".local");
        let _ = std::fs::remove_dir_all(local.join(&self.1));
        let _ = std::fs::remove_dir_all(local.join(&self.3));
    }
}

/// Drops a test's database, connections and all, if it exists.
pub(super) fn drop_database(name: &str) {
    let _ = std::process::Command::new("dropdb")
        .args(["-h", "127.0.0.1", "-U", "postgres", "--if-exists", "--force", name])
        .stderr(std::process::Stdio::null())
        .status();
}

pub(super) fn free_port() -> u16 {
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
                // A deployment of its own, so parallel runs sharing the
                // broker keep their events apart.
                "DEPLOYMENT" => value.clone_from(&self.project),
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
        drop_database(&self.database);
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
                    image_id: built.id.clone(),
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
    let (progress, events) = Progress::captured(Mode::Json);
    let mut options = Apply {
        project: &deployment.project,
        health_timeout: Duration::from_secs(60),
        progress: &progress,
        switch: None,
    };

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
    // A script following `--output json` learns the same.
    let events: Vec<serde_json::Value> = events.text().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let failed = events.iter().find(|e| e["event"] == "replica_failed").expect("a replica_failed event");
    assert_eq!((&failed["service"], &failed["replica"]), (&serde_json::json!("auth"), &serde_json::json!(2)));
    assert!(failed["log"].to_string().contains("JWT_ACCESS_SECRET"), "{failed}");
    let rolled_back: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "rolled_back").collect();
    assert_eq!(rolled_back.len(), 1, "replica 1 went back to its container: {rolled_back:?}");
    assert!(!changes(&plan(&second, &actual())));
}

/// The `test` environment end to end: `deploy --containers` brings up every
/// service behind the gateway container, every route answers through it, a
/// second deploy with nothing changed changes nothing, a new image rolls
/// every replica while a steady load runs through the gateway without one
/// failed request, and `down` leaves no container behind.
#[test]
fn a_rollout_under_load_through_the_gateway_loses_no_request() {
    let engine = engine();
    let built = debug_image(&engine);
    let root = crate::project_root();
    let environment = environment::load(&root, "test").unwrap();
    let project = super::deploy::project(&environment);
    let _down = Down::new(&engine, &project, &environment);
    let gateway = format!("http://127.0.0.1:{}", environment.model.gateway.http_port);
    let progress = Progress::lines();

    let started = Instant::now();
    super::deploy::run(&root, &environment, Some(&built.image), true, &progress)
        .unwrap_or_else(|err| panic!("{err:#}"));
    eprintln!("deploy to all healthy: {:.1} s", started.elapsed().as_secs_f64());
    // Every route of every enabled service, as the model lists them,
    // reaches its service through the gateway: the answer (401 without a
    // token, or the service's own 404 for a bare prefix) is in our error
    // shape, and is not the gateway's "no route".
    let routes: Vec<&String> = environment.services().flat_map(|(_, workload)| workload.routes.keys()).collect();
    assert!(routes.len() >= 7, "the enabled services route {routes:?}");
    for route in routes {
        let (status, body) = match ureq::get(&format!("{gateway}{route}")).call() {
            Err(ureq::Error::Status(status, response)) => (status, response.into_string().unwrap()),
            other => panic!("{route}: expected an error answer from the service, got {other:?}"),
        };
        assert!(
            matches!(status, 401 | 404) && body.contains("\"request_id\"") && !body.contains("no route for this path"),
            "{route} reaches its service: {status} {body}"
        );
    }
    let before = containers::status(&engine, &project).unwrap();
    super::deploy::run(&root, &environment, Some(&built.image), true, &progress).unwrap();
    assert_eq!(containers::status(&engine, &project).unwrap().len(), before.len(), "nothing changed");

    // A steady load through the gateway, during a rollout to a new image.
    let load = Load::start(&gateway);
    let tag = format!("{}-rollout", built.image.rsplit_once(':').unwrap().1);
    engine.tag(&built.image, "freedumb", &tag).unwrap();
    let next = format!("freedumb:{tag}");
    let started = Instant::now();
    super::deploy::run(&root, &environment, Some(&next), true, &progress).unwrap_or_else(|err| panic!("{err:#}"));
    let rollout = started.elapsed();
    let (served, failures) = load.stop();
    eprintln!(
        "rollout of {} replicas: {:.1} s; {served} requests served through the gateway, {} failed",
        before.iter().filter(|row| row.state == "running" && row.service != "gateway").count(),
        rollout.as_secs_f64(),
        failures.len()
    );
    assert_none_failed("the rollout", served, &failures);
    let rows = containers::status(&engine, &project).unwrap();
    assert!(
        rows.iter()
            .filter(|row| !["gateway", "migrate"].contains(&row.service.as_str()))
            .all(|row| row.image == next && row.health == "healthy"),
        "{rows:?}"
    );

    // `rollback` goes back to the image deployed before, the same way.
    assert_eq!(super::deploy::previous(&root, &project).unwrap(), built.image);
    super::deploy::Rollback {
        env: "test".to_owned(),
        output: crate::build::Output::Text,
        kubernetes: Default::default(),
    }
    .roll_back(&root, &progress)
    .unwrap_or_else(|err| panic!("{err:#}"));
    let rows = containers::status(&engine, &project).unwrap();
    assert!(
        rows.iter()
            .filter(|row| !["gateway", "migrate"].contains(&row.service.as_str()))
            .all(|row| row.image == built.image && row.health == "healthy"),
        "{rows:?}"
    );

    let removed = containers::down(&engine, &project, true).unwrap();
    assert!(removed[0].starts_with(&format!("{project}-gateway-")), "the gateway stops first: {removed:?}");
    assert!(containers::status(&engine, &project).unwrap().is_empty(), "down leaves no container behind");
}

/// The `test` environment moved to ports of its own (and a project of its
/// own), so that this test runs next to the rollout test.
fn moved_test_environment(name: &str, shift: u16) -> Environment {
    let mut environment = environment::load(&crate::project_root(), "test").unwrap();
    environment.name = name.to_owned();
    // A database and key prefix of its own too: two tests' migrations must
    // not race to create one database.
    let database = name.replace('-', "_");
    environment.model.postgres.url = Some(format!("postgres://postgres@127.0.0.1:5432/freedumb_{database}"));
    environment.model.platform.redis_key_prefix = format!("freedumb-{name}:");
    environment.model.gateway.http_port += shift;
    for workload in environment.model.services.values_mut().chain(environment.model.workers.values_mut()) {
        workload.port += shift;
    }
    environment
}

/// The gateway's upstreams as the running replicas' labels say.
fn serving(engine: &Engine, project: &str) -> Servers {
    let mut servers = Servers::new();
    for running in engine
        .containers(&BTreeMap::from([(LABEL_PROJECT, project)]))
        .unwrap()
        .iter()
        .filter_map(Running::from_summary)
        .filter(|running| running.running)
    {
        servers.entry(running.service).or_default().push(format!("127.0.0.1:{}", running.port));
    }
    servers
}

/// The gateway containers of `project`: (name, image, state).
fn gateways(project: &str) -> Vec<(String, String, String)> {
    let rows = containers::status(&engine(), project).unwrap();
    rows.into_iter().filter(|row| row.service == "gateway").map(|row| (row.name, row.image, row.state)).collect()
}

/// A new gateway image (here: the same nginx with another label, so another
/// content digest) takes over the gateway's port while a steady load runs
/// through it: the new container starts next to the old one, both with
/// `reuseport`, and the old one leaves gracefully once the new one answers.
/// Not one request fails and exactly one gateway remains. Then a plain
/// `deploy` brings the usual image back, the same way.
#[test]
fn a_new_gateway_image_takes_over_the_port_under_load_without_a_failed_request() {
    // Without it, about one replacement in three lost one connection here.
    assert!(
        super::deploy::migrates_queued_connections(),
        "{} must be 1 (`sysctl -w net.ipv4.tcp_migrate_req=1` as root; .ci/run sets it): else a connection \
         queued on the old gateway as it closes its sockets is reset",
        super::deploy::MIGRATE_REQ
    );
    let engine = engine();
    let built = debug_image(&engine);
    let root = crate::project_root();
    // Services at 7401.., replicas' second slots at 17401..; gateway 18480.
    let environment = moved_test_environment("test-gateway", 400);
    let project = super::deploy::project(&environment);
    let _down = Down::new(&engine, &project, &environment);
    let url = format!("http://127.0.0.1:{}", environment.model.gateway.http_port);
    let progress = Progress::lines();
    super::deploy::run(&root, &environment, Some(&built.image), true, &progress)
        .unwrap_or_else(|err| panic!("{err:#}"));
    let first = gateways(&project);
    assert!(matches!(first.as_slice(), [(_, _, state)] if state == "running"), "{first:?}");

    let nginx = crate::tools::require(&crate::tools::NGINX).unwrap();
    let uid = environment.model.platform.build.uid;
    let labels = BTreeMap::from([("io.freedumb.test".to_owned(), "second".to_owned())]);
    let second = crate::build::build_gateway_labelled(&engine, &nginx, uid, labels, &progress).unwrap();
    assert_ne!(second.image, first[0].1, "another content, another tag");

    let load = Load::start(&url);
    let started = Instant::now();
    let mut gateway =
        super::deploy::Gateway::new(&engine, &root, &environment, &project, second.image.clone(), &progress);
    gateway.switch(&serving(&engine, &project)).unwrap_or_else(|err| panic!("{err:#}"));
    let took_over = started.elapsed();
    let (served, failures) = load.stop();
    eprintln!(
        "gateway replaced under load in {:.2} s; {served} requests served through it, {} failed",
        took_over.as_secs_f64(),
        failures.len()
    );
    assert_none_failed("the gateway's replacement", served, &failures);
    let now = gateways(&project);
    assert!(
        matches!(now.as_slice(), [(name, image, state)] if *image == second.image && state == "running" && *name != first[0].0),
        "exactly one gateway remains, the new one, under the other name: {now:?}"
    );

    // `deploy` with nothing else changed puts the usual gateway image back,
    // and the replicas stay as they are.
    let replicas = serving(&engine, &project);
    let load = Load::start(&url);
    let started = Instant::now();
    super::deploy::run(&root, &environment, Some(&built.image), true, &progress)
        .unwrap_or_else(|err| panic!("{err:#}"));
    let deployed = started.elapsed();
    let (served, failures) = load.stop();
    eprintln!(
        "deploy that replaced the gateway back: {:.2} s; {served} requests served through it, {} failed",
        deployed.as_secs_f64(),
        failures.len()
    );
    assert_none_failed("the deploy that replaced the gateway back", served, &failures);
    let back = gateways(&project);
    assert!(matches!(back.as_slice(), [(_, image, _)] if *image == first[0].1), "{back:?}");
    assert_eq!(serving(&engine, &project), replicas, "no replica was touched");

    // A change of the gateway's own settings, and nothing else, is
    // deployed too (a reload), not taken for "nothing to do".
    let mut changed = moved_test_environment("test-gateway", 400);
    changed.model.gateway.headers.insert("Permissions-Policy".to_owned(), "camera=()".to_owned());
    super::deploy::run(&root, &changed, Some(&built.image), true, &progress).unwrap_or_else(|err| panic!("{err:#}"));
    let answer = ureq::get(&format!("{url}/health")).call().unwrap();
    assert_eq!(answer.header("Permissions-Policy"), Some("camera=()"), "the new header is served");
    assert_eq!(serving(&engine, &project), replicas, "no replica was touched");
    super::deploy::run(&root, &environment, Some(&built.image), true, &progress)
        .unwrap_or_else(|err| panic!("{err:#}"));

    // A gateway that cannot share the port (another user: the kernel keeps
    // a reuseport group to one uid) exits; the one serving stays, alone.
    let other_uid = crate::build::build_gateway(&engine, &nginx, uid + 1, &progress).unwrap();
    let mut gateway = super::deploy::Gateway::new(&engine, &root, &environment, &project, other_uid.image, &progress);
    let err = format!("{:#}", gateway.switch(&serving(&engine, &project)).unwrap_err());
    assert!(err.contains("did not take over") && err.contains(&format!("{} goes on serving", back[0].0)), "{err}");
    assert_eq!(gateways(&project), back, "the gateway that served before is the only one");
    assert_eq!(ureq::get(&format!("{url}/health")).call().map(|r| r.status()).ok(), Some(200));
}

/// A deployment made before gateway slots has one gateway container,
/// `<project>-gateway`, listening without `reuseport`: nothing can bind its
/// port next to it, so the first deploy after the upgrade stops it before
/// starting its successor (a short outage, said as a warning), and every
/// replacement after that is seamless.
#[test]
fn a_gateway_from_before_slots_is_replaced_once_with_a_warning() {
    use bollard::models::{ContainerCreateBody, HostConfig};

    let engine = engine();
    let root = crate::project_root();
    let environment = moved_test_environment("test-legacy-gateway", 500);
    let project = super::deploy::project(&environment);
    let _down = Down::new(&engine, &project, &environment);
    let url = format!("http://127.0.0.1:{}", environment.model.gateway.http_port);
    let nginx = crate::tools::require(&crate::tools::NGINX).unwrap();
    let uid = environment.model.platform.build.uid;
    let image = crate::build::build_gateway(&engine, &nginx, uid, &Progress::lines()).unwrap().image;
    // Nothing needs to answer behind it: nginx serves /health itself.
    let servers: Servers = environment
        .services()
        .map(|(name, workload)| (name.to_owned(), vec![format!("127.0.0.1:{}", workload.port)]))
        .collect();

    // The gateway as the toolkit ran it before: no slot, no reuseport.
    let legacy = format!("{project}-gateway");
    let dir = root.join(".local").join(&project).join("gateway-before-slots");
    let mut files = crate::render::render_gateway(&root, &environment, &servers, &legacy).unwrap();
    let conf = files.get_mut("nginx.conf").unwrap();
    *conf = conf.replace(" reuseport;", ";");
    crate::render::write(&files, &dir.join("conf")).unwrap();
    let body = ContainerCreateBody {
        image: Some(image.clone()),
        labels: Some(
            [(LABEL_PROJECT, project.as_str()), (LABEL_SERVICE, "gateway")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        ),
        host_config: Some(HostConfig {
            network_mode: Some("host".to_owned()),
            binds: Some(vec![format!("{}:{}:ro", dir.display(), super::image::GATEWAY_CONF_DIR)]),
            tmpfs: Some([("/tmp".to_owned(), "rw,size=64m".to_owned())].into_iter().collect()),
            ..Default::default()
        }),
        ..Default::default()
    };
    engine.run(&legacy, body).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ureq::get(&format!("{url}/health")).call().is_err() {
        assert!(Instant::now() < deadline, "{}", engine.last_log_lines(&legacy, 20));
        std::thread::sleep(Duration::from_millis(100));
    }

    let (progress, said) = Progress::captured(Mode::Lines);
    let mut gateway = super::deploy::Gateway::new(&engine, &root, &environment, &project, image.clone(), &progress);
    gateway.switch(&servers).unwrap_or_else(|err| panic!("{err:#}"));

    assert!(said.text().contains(&format!("{legacy} predates gateway slots")), "{}", said.text());
    let now = gateways(&project);
    assert_eq!(now, [(format!("{project}-gateway-a"), image, "running".to_owned())]);
    let answer = ureq::get(&format!("{url}/health")).call().unwrap();
    assert_eq!(answer.header(crate::render::GATEWAY_INSTANCE_HEADER), Some(now[0].0.as_str()));
    let _ = std::fs::remove_dir_all(dir);
}

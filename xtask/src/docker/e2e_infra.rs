//! End to end against the real Docker engine: infrastructure in containers.
//! The `test-infra` environment declares Redis as a container (`image`);
//! since nothing can be pulled here, the test builds that image offline from
//! this machine's `redis-server`, `redis-cli` and shell, and tags it with the
//! name the environment declares. Postgres and RabbitMQ stay external (this
//! machine's). Everything is on the host's network, Redis on a free
//! loopback port. These tests fail, never skip, when the engine is absent.

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bollard::query_parameters::EventsOptionsBuilder;
use futures::StreamExt;

use super::e2e::free_port;
use super::image::{Offline, Program};
use super::infra::{self, LABEL_ROLE, ROLE_INFRA};
use super::{Engine, LABEL_PROJECT};
use crate::containers;
use crate::environment::{self, Environment, Layer};
use crate::progress::{Mode, Progress};
use crate::secrets;

fn engine() -> Engine {
    Engine::connect().unwrap_or_else(|err| panic!("{err:#}"))
}

/// `test-infra` (over base.toml), with Redis moved to `port` and these
/// overrides of its table: what a person would edit in the file.
fn test_infra(name: &str, redis: &str) -> Environment {
    let root = crate::project_root();
    let read = |path: PathBuf| std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let layers = vec![
        Layer { path: "environments/base.toml".into(), text: read(environment::path(&root, "base")) },
        Layer { path: "environments/test-infra.toml".into(), text: read(environment::path(&root, "test-infra")) },
        Layer { path: "(the test's edits)".into(), text: format!("[redis]\n{redis}\n") },
    ];
    let targets = environment::targets::Targets::of_project(&root).unwrap();
    environment::from_layers(name, layers, &targets).unwrap_or_else(|err| panic!("{err}"))
}

/// The offline Redis image, tagged as `environment` names it.
fn redis_image(engine: &Engine, environment: &Environment) -> String {
    let image = environment.model.redis.image.clone().expect("test-infra runs Redis as a container");
    let redis = which("redis-server");
    let labels = BTreeMap::from([("org.opencontainers.image.title".to_owned(), "redis (offline, tests)".to_owned())]);
    let offline = Offline::for_program(Program::Redis, &redis, 1001, labels).unwrap_or_else(|err| panic!("{err:#}"));
    engine.build(offline.context().unwrap(), &image, &mut std::io::sink()).unwrap_or_else(|err| panic!("{err:#}"));
    image
}

fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("{program} is not on PATH (Debian's redis-server package has it)"))
}

fn freedumb_image(engine: &Engine) -> String {
    super::e2e::debug_image(engine).image
}

/// `redis-cli` against the container, authenticated with the deployment's
/// password (through the environment, as the health check does).
fn redis_cli(port: u16, password: Option<&str>, args: &[&str]) -> String {
    let mut cli = Command::new("redis-cli");
    cli.args(["-h", "127.0.0.1", "-p", &port.to_string()]).args(args);
    if let Some(password) = password {
        cli.env("REDISCLI_AUTH", password);
    }
    let output = cli.output().expect("redis-cli runs");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn redis_password(root: &Path, environment: &Environment) -> String {
    let file = super::deploy::secrets_file(root, environment);
    let (secrets, _) = secrets::load_or_generate(&file, &environment.model.secrets.supplied).unwrap();
    secrets.get("REDIS_PASSWORD").expect("generated").to_owned()
}

/// Takes the deployment down (containers, volumes, network), drops its
/// database and removes its generated secrets (`secrets`, the directory
/// of its secrets file) when the test ends, passed or not.
struct Cleanup<'a> {
    engine: &'a Engine,
    project: String,
    database: Option<String>,
    secrets: Option<PathBuf>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Err(err) = containers::down(self.engine, &self.project, true) {
            eprintln!("cleaning up {}: {err:#}", self.project);
        }
        if let Some(dir) = &self.secrets {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(database) = &self.database {
            super::e2e::drop_database(database);
        }
    }
}

/// The engine's container events for one project, as they happen: (time
/// in nanoseconds, container name, action), recorded by a thread of its own.
struct Events {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(i64, String, String)>>,
}

impl Events {
    fn record(project: &str) -> Events {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let thread = {
            let stop = Arc::clone(&stop);
            let filters = HashMap::from([
                ("type".to_owned(), vec!["container".to_owned()]),
                ("label".to_owned(), vec![format!("{LABEL_PROJECT}={project}")]),
            ]);
            std::thread::spawn(move || {
                let engine = engine();
                // From a second ago: nothing this test does is missed while
                // the subscription is being set up.
                let since = (std::time::SystemTime::now() - Duration::from_secs(1))
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs()
                    .to_string();
                let options = EventsOptionsBuilder::new().since(&since).filters(&filters).build();
                engine.runtime.block_on(async {
                    let mut stream = engine.docker.events(Some(options));
                    let _ = ready_tx.send(());
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match tokio::time::timeout(Duration::from_millis(100), stream.next()).await {
                            Ok(Some(Ok(event))) => {
                                let actor = event.actor.unwrap_or_default();
                                let name = actor.attributes.unwrap_or_default().remove("name").unwrap_or_default();
                                seen.push((
                                    event.time_nano.unwrap_or_default(),
                                    name,
                                    event.action.unwrap_or_default(),
                                ));
                            }
                            Ok(Some(Err(err))) => panic!("the engine's event stream failed: {err}"),
                            Ok(None) => break,
                            Err(_) => {}
                        }
                    }
                    seen
                })
            })
        };
        ready.recv().unwrap();
        Events { stop, thread }
    }

    fn stop(self) -> Vec<(i64, String, String)> {
        // Events reach the stream a little after they happen.
        std::thread::sleep(Duration::from_millis(500));
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn first(events: &[(i64, String, String)], container: &str, action: &str) -> i64 {
    events
        .iter()
        .find(|(_, name, what)| name == container && what == action)
        .unwrap_or_else(|| panic!("no `{action}` event of {container} in {events:#?}"))
        .0
}

/// The story of `deploy --containers` with Redis in a container: created
/// with its volume, healthy before the migrations run, untouched by a second
/// deploy, replaced on a changed setting with its data kept, and gone with
/// its volume after `down --volumes`.
#[test]
fn a_redis_container_is_gated_on_health_kept_replaced_on_its_volume_and_taken_down() {
    let engine = engine();
    let root = crate::project_root();
    let port = free_port();
    let first_deploy = test_infra("test-infra", &format!("port = {port}"));
    let project = super::deploy::project(&first_deploy);
    let redis = format!("{project}-redis");
    let volume = infra::volume(&project, "redis_data");
    // test-infra's secrets are generated into .local/test-infra/, like any
    // environment's, and stay there for the next run (not removed).
    let _cleanup = Cleanup {
        engine: &engine,
        project: project.clone(),
        database: Some("freedumb_test_infra".into()),
        secrets: None,
    };
    let redis_image = redis_image(&engine, &first_deploy);
    let image = freedumb_image(&engine);
    let password = redis_password(&root, &first_deploy);

    // First deploy: Redis comes up with its volume, healthy, before migrate.
    let events = Events::record(&project);
    let started = Instant::now();
    super::deploy::run(&root, &first_deploy, Some(&image), true, &Progress::lines())
        .unwrap_or_else(|err| panic!("{err:#}"));
    eprintln!("deploy to all healthy, with a Redis container: {:.1} s", started.elapsed().as_secs_f64());
    let events = events.stop();
    let healthy = first(&events, &redis, "health_status: healthy");
    let migrating = first(&events, &format!("{project}-migrate"), "start");
    assert!(
        healthy < migrating,
        "Redis was healthy {} ms after the migrations started",
        (healthy - migrating) / 1_000_000
    );

    let inspected = engine.inspect(&redis).unwrap();
    assert_eq!(inspected.config.as_ref().and_then(|c| c.image.as_deref()), Some(redis_image.as_str()));
    let health = inspected.state.as_ref().and_then(|s| s.health.as_ref()).and_then(|h| h.status);
    assert_eq!(health.map(|h| h.to_string()).as_deref(), Some("healthy"));
    let labels = BTreeMap::from([(LABEL_PROJECT.to_owned(), project.clone())]);
    assert_eq!(engine.volumes(&labels).unwrap(), std::slice::from_ref(&volume));
    let mounts = inspected.mounts.clone().unwrap_or_default();
    assert!(mounts.iter().any(|m| m.name.as_deref() == Some(volume.as_str())), "{mounts:?}");
    // The password is required, and never on the command line.
    assert!(redis_cli(port, None, &["ping"]).starts_with("NOAUTH"), "Redis answers without a password");
    let command = inspected.config.as_ref().and_then(|c| c.cmd.clone()).unwrap_or_default().join(" ");
    assert!(!command.contains(&password), "the password is on the command line: {command}");
    assert_eq!(redis_cli(port, Some(&password), &["SET", "freedumb:e2e", "kept"]), "OK");
    // Through the platform too: auth's readiness asks Redis.
    assert_eq!(ureq::get("http://127.0.0.1:6001/ready").call().map(|r| r.status()).ok(), Some(200));

    // Nothing changed: nothing is touched, and the deploy says so.
    let (progress, said) = Progress::captured(Mode::Lines);
    super::deploy::run(&root, &first_deploy, Some(&image), true, &progress).unwrap_or_else(|err| panic!("{err:#}"));
    assert!(said.text().contains("nothing to do"), "{}", said.text());
    assert_eq!(engine.inspect(&redis).unwrap().id, inspected.id, "a second deploy leaves Redis alone");

    // A changed setting replaces the container; the data stays in the volume.
    let second_deploy = test_infra("test-infra", &format!("port = {port}\nmax_memory_mb = 32"));
    super::deploy::run(&root, &second_deploy, Some(&image), true, &Progress::lines())
        .unwrap_or_else(|err| panic!("{err:#}"));
    let replaced = engine.inspect(&redis).unwrap();
    assert_ne!(replaced.id, inspected.id, "a new setting means a new container");
    assert_eq!(redis_cli(port, Some(&password), &["CONFIG", "GET", "maxmemory"]), "maxmemory\n33554432");
    assert_eq!(redis_cli(port, Some(&password), &["GET", "freedumb:e2e"]), "kept", "the key survived the replacement");
    assert_eq!(engine.volumes(&labels).unwrap(), std::slice::from_ref(&volume));

    // A replacement that never gets healthy (Redis moved to a port that is
    // taken, so redis-server exits): the deploy fails naming the service,
    // the reason and the new container's log, and the old Redis runs again
    // with its data; no `-old` container is left behind.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let bad_deploy = test_infra("test-infra", &format!("port = {taken_port}\nmax_memory_mb = 32"));
    let started = Instant::now();
    let err = super::deploy::run(&root, &bad_deploy, Some(&image), true, &Progress::lines())
        .expect_err("a Redis that cannot bind its port never gets healthy");
    eprintln!("failed replacement, rolled back: {:.1} s", started.elapsed().as_secs_f64());
    drop(taken);
    let err = format!("{err:#}");
    eprintln!("the failed deploy said: {err}");
    assert!(
        err.contains("redis (freedumb-test-redis:offline): the replacement container did not become healthy"),
        "{err}"
    );
    assert!(
        err.contains("exited with code") || err.contains("crashed") || err.contains("turned unhealthy"),
        "the reason: {err}"
    );
    assert!(err.contains("Address already in use"), "the new container's log: {err}");
    assert!(err.contains(&format!("the old container {redis} runs again")), "{err}");
    assert!(!err.contains(&password), "the password stays out of the error: {err}");
    let restored = engine.inspect(&redis).unwrap();
    assert_eq!(restored.id, replaced.id, "the old container itself is back, not a new one");
    assert_eq!(restored.state.as_ref().and_then(|s| s.running), Some(true));
    assert_eq!(redis_cli(port, Some(&password), &["GET", "freedumb:e2e"]), "kept", "the data is still there");
    let names: Vec<String> = containers::status(&engine, &project).unwrap().into_iter().map(|r| r.name).collect();
    assert!(!names.contains(&infra::backup_name(&redis)), "{names:?}");
    // And the next good deploy finds everything as before the failed one.
    let (progress, said) = Progress::captured(Mode::Lines);
    super::deploy::run(&root, &second_deploy, Some(&image), true, &progress).unwrap_or_else(|err| panic!("{err:#}"));
    assert!(said.text().contains("nothing to do"), "{}", said.text());

    // `down --volumes`: no container, no volume.
    let removed = containers::down(&engine, &project, true).unwrap();
    assert!(removed.contains(&redis), "{removed:?}");
    assert_eq!(removed.last(), Some(&redis), "the infrastructure stops after everything that uses it: {removed:?}");
    assert!(containers::status(&engine, &project).unwrap().is_empty());
    assert!(engine.volumes(&labels).unwrap().is_empty(), "down --volumes removes the named volume");
}

/// An infrastructure image that the engine lacks and no registry gives fails
/// the deploy naming the image and the registry's error, before anything is
/// created.
#[test]
fn an_infrastructure_image_that_cannot_be_pulled_fails_naming_it_and_creates_nothing() {
    let engine = engine();
    let root = crate::project_root();
    let absent = format!("freedumb-test-absent/redis:{}", std::process::id());
    let environment = test_infra("test-infra-absent", &format!("port = {}\nimage = \"{absent}\"", free_port()));
    let project = super::deploy::project(&environment);
    let secrets = super::deploy::secrets_file(&root, &environment).parent().unwrap().to_owned();
    let _cleanup = Cleanup { engine: &engine, project: project.clone(), database: None, secrets: Some(secrets) };

    let err = super::deploy::run(&root, &environment, Some("freedumb:never-used"), true, &Progress::lines())
        .expect_err("the image cannot be pulled");

    let err = format!("{err:#}");
    assert!(
        err.contains(&format!("the image {absent} (for redis) is not on this engine and could not be pulled")),
        "{err}"
    );
    assert!(err.len() > 120, "the registry's error is part of the message: {err}");
    let labels = BTreeMap::from([(LABEL_PROJECT.to_owned(), project.clone())]);
    assert!(containers::status(&engine, &project).unwrap().is_empty(), "no container was created");
    assert!(engine.volumes(&labels).unwrap().is_empty(), "no volume was created");
    let role = BTreeMap::from([(LABEL_PROJECT, project.as_str()), (LABEL_ROLE, ROLE_INFRA)]);
    assert!(engine.containers(&role).unwrap().is_empty());
}

/// `down --volumes` removes every volume it can, even when one of them (or
/// a network) cannot go, and then fails naming each that could not: here a
/// volume that a container of another project still uses.
#[test]
fn down_with_volumes_removes_what_it_can_and_names_everything_it_could_not() {
    let engine = engine();
    let project = format!("freedumb-test-down-{}", std::process::id());
    let labels = BTreeMap::from([(LABEL_PROJECT.to_owned(), project.clone())]);
    let (free, used) = (format!("{project}_free"), format!("{project}_used"));
    let foreign = format!("{project}-foreign");
    // The foreign container goes first when the test ends, so that `down`
    // in the project's cleanup can take the volume it held.
    let _cleanup = Cleanup { engine: &engine, project: project.clone(), database: None, secrets: None };
    struct Foreign<'a>(&'a Engine, String);
    impl Drop for Foreign<'_> {
        fn drop(&mut self) {
            let _ = self.0.remove(&self.1, false);
        }
    }
    let _foreign = Foreign(&engine, foreign.clone());
    assert!(engine.ensure_volume(&free, &labels).unwrap());
    assert!(engine.ensure_volume(&used, &labels).unwrap());
    // Created, never started: holding the volume is enough. Any image the
    // engine has will do; the offline Redis one is built for these tests.
    let image = redis_image(&engine, &test_infra("test-infra", ""));
    let body = bollard::models::ContainerCreateBody {
        image: Some(image),
        host_config: Some(bollard::models::HostConfig {
            binds: Some(vec![format!("{used}:/data")]),
            network_mode: Some("none".to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = bollard::query_parameters::CreateContainerOptionsBuilder::new().name(&foreign).build();
    engine.runtime.block_on(engine.docker.create_container(Some(options), body)).unwrap();

    let err = containers::down(&engine, &project, true).expect_err("a volume in use cannot be removed");

    let err = format!("{err:#}");
    assert!(err.contains("1 of its networks and volumes could not be"), "{err}");
    assert!(err.contains(&format!("failed to remove volume {used}")), "{err}");
    assert_eq!(engine.volumes(&labels).unwrap(), [used], "the free volume was removed all the same");
}

/// An image the engine has but that cannot run the service (one with a
/// single file and no shell for Redis's `sh -c` command): the container is
/// created but cannot start; the deploy fails naming the service and the
/// engine's reason, and no dead container is left under the deployment's
/// name.
#[test]
fn an_infrastructure_container_that_cannot_start_is_removed_and_named() {
    let engine = engine();
    let root = crate::project_root();
    let shell_less = "freedumb-test-no-shell:1";
    let mut context = tar::Builder::new(Vec::new());
    for (path, text) in [("Dockerfile", "FROM scratch\nCOPY empty /empty\n"), ("empty", "")] {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        context.append_data(&mut header, path, text.as_bytes()).unwrap();
    }
    engine.build(context.into_inner().unwrap(), shell_less, &mut std::io::sink()).unwrap_or_else(|e| panic!("{e:#}"));
    let environment = test_infra("test-infra-nostart", &format!("port = {}\nimage = \"{shell_less}\"", free_port()));
    let project = super::deploy::project(&environment);
    let secrets = super::deploy::secrets_file(&root, &environment).parent().unwrap().to_owned();
    let _cleanup = Cleanup { engine: &engine, project: project.clone(), database: None, secrets: Some(secrets) };

    let err = super::deploy::run(&root, &environment, Some("freedumb:never-used"), true, &Progress::lines())
        .expect_err("Redis's command cannot run in this image");

    let err = format!("{err:#}");
    assert!(err.contains(&format!("redis ({shell_less}) could not be started; its container was removed")), "{err}");
    assert!(err.contains(&format!("failed to start container {project}-redis")), "the engine's reason: {err}");
    assert!(containers::status(&engine, &project).unwrap().is_empty(), "no container is left");
}

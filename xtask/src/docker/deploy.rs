//! `cargo xtask deploy --containers` (and `deploy --env dev`): the platform
//! as containers of the offline image on this machine's Docker engine. The
//! infrastructure comes first: backing services with an `image` run as
//! containers (`infra`: pulled when missing, on the project's network and
//! volumes, gated on their health checks), the others are external and only
//! checked. Then one container per replica of each enabled service and
//! worker, on the host's network.
//!
//! Idempotent: the engine is converged to the model (`infra`, `converge`),
//! so a run with nothing changed changes nothing and says so, and a changed
//! image or setting rolls each replica in turn, back to the previous
//! containers if a new one does not become healthy. Migrations run once the
//! infrastructure is healthy and before any replica, as a one-off container
//! that must exit 0.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use bollard::models::{ContainerCreateBody, HealthConfig, HostConfig, RestartPolicy, RestartPolicyNameEnum};

use super::converge::{self, Apply, Desired, Running, Servers};
use super::image::GATEWAY_CONF_DIR;
use super::{Engine, LABEL_PROJECT, LABEL_SERVICE, Spec, infra};
use crate::environment::{Environment, Kind, SecretSource, vars};
use crate::progress::{Event, Progress};
use crate::{backing, build, containers, render, secrets, tools};

/// How long a new replica gets to answer its health check.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// The project label of an environment's containers: compose's project when
/// it has one, else `freedumb-<env>`.
pub fn project(environment: &Environment) -> String {
    match &environment.model.compose {
        Some(compose) => compose.project.clone(),
        None => format!("freedumb-{}", environment.name),
    }
}

/// What `deploy --containers` ends with: the `summary` of `--output json`.
#[derive(Debug, serde::Serialize)]
pub struct Deployed {
    pub project: String,
    pub image: String,
    /// False when the engine already ran exactly this.
    pub changed: bool,
    /// The gateway's URL.
    pub gateway: String,
    pub containers: Vec<containers::Row>,
}

/// Deploys `environment` with `image` (built now when `None`), reporting
/// each step to `progress`, and ends with its `finish`.
pub fn run(
    root: &Path,
    environment: &Environment,
    image: Option<&str>,
    debug: bool,
    progress: &Progress,
) -> anyhow::Result<()> {
    if environment.model.kind == Kind::Kubernetes {
        bail!(
            "environment `{}` is a kubernetes one: `cargo xtask deploy --env {}` rolls it out to its cluster, \
             never as containers here",
            environment.name,
            environment.name
        );
    }
    let started = Instant::now();
    let external = environment.external_backing_services().map_err(anyhow::Error::msg)?;
    if !external.is_empty() {
        progress.step("checking the external infrastructure");
        backing::require_saying(&external, &mut |line| progress.step(line))?;
    }
    let engine = Engine::connect()?;
    let image = match image {
        Some(image) => image.to_owned(),
        None => {
            let binary = build::cargo_build(root, debug, progress)?;
            let uid = environment.model.platform.build.uid;
            build::build_offline(&engine, root, &binary, debug, uid, progress)?.image
        }
    };
    let file = secrets_file(root, environment);
    let (secrets, _) = secrets::load_or_generate(&file, &environment.model.secrets.supplied)?;
    // As compose does for a shared environment (`source = "environment"`),
    // a secret set in the environment of this command wins; the generated
    // file fills in the others.
    let from_environment = environment.model.secrets.source == SecretSource::Environment;
    if from_environment {
        // Said, because it is easy to miss: a database initialised with the
        // file's password keeps it, and a replica given the other fails.
        for name in &environment.model.secrets.supplied {
            if let (Ok(value), Some(stored)) = (std::env::var(name), secrets.get(name))
                && !value.is_empty()
                && value != stored
            {
                progress.warn(format!(
                    "{name} is set in this shell and differs from the one in {}: the shell's is used",
                    file.display()
                ));
            }
        }
    }
    let secret = |name: &str| match std::env::var(name) {
        Ok(value) if from_environment && !value.is_empty() => value,
        _ => secrets.get(name).unwrap_or_default().to_owned(),
    };
    let project = project(environment);
    // Before anything of the platform: an image that cannot be pulled
    // stops the deploy here, and migrations need a healthy database.
    let infra_changed = infra::converge(&engine, environment, &project, &secret, progress)?;

    let nginx = tools::require(&tools::NGINX)?;
    let gateway_image = build::build_gateway(&engine, &nginx, environment.model.platform.build.uid, progress)?.image;
    let mut gateway = Gateway::new(&engine, root, environment, &project, gateway_image, progress);

    let image_id = engine.image_id(&image)?;
    let desired = desired(environment, &image, &image_id, &secret);
    let actual: Vec<Running> = engine
        .containers(&BTreeMap::from([(LABEL_PROJECT, project.as_str())]))?
        .iter()
        .filter_map(Running::from_summary)
        .collect();
    let plan = converge::plan(&desired, &actual);
    if !infra_changed && !converge::changes(&plan) && gateway.is_current(&converge::servers_before(&plan))? {
        record(root, &project, &image)?;
        progress.emit(Event::NothingToDo { project: project.clone(), image: image.clone() });
        return finish(&engine, progress, project, image, false, &gateway.url);
    }

    migrate(&engine, environment, &project, &image, &secret, progress)?;

    progress.emit(converge::plan_event(&project, &image, &plan));
    let mut switch = |servers: &Servers| gateway.switch(servers);
    converge::apply(
        &engine,
        &plan,
        &mut Apply { project: &project, health_timeout: HEALTH_TIMEOUT, progress, switch: Some(&mut switch) },
    )?;
    record(root, &project, &image)?;
    let seconds = started.elapsed().as_secs_f64();
    progress.emit(Event::Converged { project: project.clone(), image: image.clone(), seconds });
    let url = gateway.url.clone();
    finish(&engine, progress, project, image, true, &url)
}

/// The status table and the gateway's URL on stdout, or the `summary`.
fn finish(
    engine: &Engine,
    progress: &Progress,
    project: String,
    image: String,
    changed: bool,
    gateway: &str,
) -> anyhow::Result<()> {
    let containers = containers::status(engine, &project)?;
    let deployed = Deployed { project, image, changed, gateway: gateway.to_owned(), containers };
    progress.finish(
        || format!("{}\nthe gateway: {}\n", containers::table(&deployed.containers), deployed.gateway),
        &deployed,
    );
    Ok(())
}

/// The nginx gateway as containers of the offline gateway image, on the
/// host's network, each with its configuration rendered into
/// `.local/<project>/gateway/<slot>/conf/` and mounted read-only.
///
/// A change of upstreams is a graceful reload (SIGHUP) of the running
/// container: nginx starts workers with the new configuration and lets the
/// old ones finish their requests, so none is cut.
///
/// A new gateway image, or a stopped container, needs a new container, and
/// the port never stops answering meanwhile (as Kamal replaces its proxy's
/// backends): the new container starts in the other slot (`-a`, `-b`) next
/// to the old one, both listening with `reuseport` (SO_REUSEPORT), so the
/// kernel spreads new connections over the two; once a new connection is
/// answered by the new container with the expected upstreams, the old one
/// gets SIGQUIT, closes its listening sockets, finishes its open requests
/// and exits, and is removed. If the new one never answers, it is removed
/// and the old one goes on serving.
pub struct Gateway<'a> {
    engine: &'a Engine,
    root: &'a Path,
    environment: &'a Environment,
    progress: &'a Progress,
    project: String,
    image: String,
    dir: std::path::PathBuf,
    pub url: String,
    /// The files last rendered for the running container, to tell a
    /// changed configuration.
    rendered: Option<render::Files>,
}

/// How long the gateway gets to answer /health after it starts.
const GATEWAY_TIMEOUT: Duration = Duration::from_secs(20);
/// Once a new worker answers, the old ones are closing their listening
/// sockets; a short margin covers a connection one of them accepted just
/// before.
const RELOAD_SETTLE: Duration = Duration::from_millis(250);
/// Seconds an old gateway gets to finish its open requests after SIGQUIT
/// before it is killed: proxied requests wait for freedumb, which drains
/// for up to 30 s.
const GATEWAY_STOP_SECS: i32 = 35;

/// A gateway container, as the engine lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Instance {
    name: String,
    /// `None` for a container of a toolkit before slots, which listens
    /// without `reuseport`: nothing can bind its port next to it.
    slot: Option<u8>,
    image: String,
    running: bool,
}

/// What `Gateway::switch` does with the gateway containers found.
#[derive(Debug, PartialEq, Eq)]
enum Change<'i> {
    /// `current` runs the image: reload it, after removing the `extra`
    /// containers (left by an interrupted run).
    Reload { current: &'i Instance, extra: Vec<&'i Instance> },
    /// Start a container in `slot` next to `old`, then retire `old`; the
    /// `extra` containers go first. `old` without a slot cannot share its
    /// port, so it has to stop before the new one starts.
    Replace { slot: u8, old: Option<&'i Instance>, extra: Vec<&'i Instance> },
}

/// Pure, so that it is tested without an engine.
fn change<'i>(found: &'i [Instance], image: &str) -> Change<'i> {
    let others = |keep: Option<&Instance>| found.iter().filter(|i| Some(*i) != keep).collect::<Vec<_>>();
    if let Some(current) = found.iter().find(|i| i.running && i.image == image && i.slot.is_some()) {
        return Change::Reload { current, extra: others(Some(current)) };
    }
    let old = found.iter().filter(|i| i.running).min_by_key(|i| i.slot.is_none());
    let slot = match old.and_then(|old| old.slot) {
        Some(slot) => 1 - slot.min(1),
        None => 0,
    };
    Change::Replace { slot, old, extra: others(old) }
}

impl<'a> Gateway<'a> {
    pub fn new(
        engine: &'a Engine,
        root: &'a Path,
        environment: &'a Environment,
        project: &str,
        image: String,
        progress: &'a Progress,
    ) -> Self {
        let gateway = &environment.model.gateway;
        let host = match gateway.listen_address {
            Some(address) if !address.is_unspecified() => address.to_string(),
            _ => "127.0.0.1".to_owned(),
        };
        Gateway {
            engine,
            root,
            environment,
            progress,
            project: project.to_owned(),
            image,
            dir: root.join(".local").join(project).join("gateway"),
            url: format!("http://{host}:{}", gateway.http_port),
            rendered: None,
        }
    }

    fn name(&self, slot: u8) -> String {
        format!("{}-gateway-{}", self.project, SLOTS[usize::from(slot.min(1))])
    }

    /// The directory mounted into the container of `slot` (holds `conf/`).
    fn slot_dir(&self, slot: u8) -> std::path::PathBuf {
        self.dir.join(SLOTS[usize::from(slot.min(1))])
    }

    fn instances(&self) -> anyhow::Result<Vec<Instance>> {
        let found = self
            .engine
            .containers(&BTreeMap::from([(LABEL_PROJECT, self.project.as_str()), (LABEL_SERVICE, "gateway")]))?;
        Ok(found
            .iter()
            .map(|c| Instance {
                name: super::container_name(c),
                slot: c.labels.as_ref().and_then(|l| l.get(converge::LABEL_SLOT)).and_then(|s| s.parse().ok()),
                image: c.image.clone().unwrap_or_default(),
                running: super::is_running(c),
            })
            .collect())
    }

    /// Whether exactly one gateway runs, with this image, and was seen
    /// serving the configuration rendered now for `servers` (so a change of
    /// the gateway's own settings, such as headers or rate limits, is
    /// deployed even when no replica changes).
    pub fn is_current(&self, servers: &Servers) -> anyhow::Result<bool> {
        let found = self.instances()?;
        let Change::Reload { current, extra } = change(&found, &self.image) else {
            return Ok(false);
        };
        if !extra.is_empty() {
            return Ok(false);
        }
        let files = render::render_gateway(self.root, self.environment, servers, &current.name)?;
        Ok(self.confirmed(&files, current.slot.unwrap_or_default()))
    }

    /// Renders the upstreams `servers` and makes the gateway use them:
    /// started if it does not run (once every routed service has a replica),
    /// reloaded if it runs this image, replaced without closing the port if
    /// it runs another. The services it now routes (none while it waits).
    pub fn switch(&mut self, servers: &Servers) -> anyhow::Result<converge::Routed> {
        let routed: converge::Routed = self
            .environment
            .services()
            .filter(|(_, w)| !w.routes.is_empty())
            .map(|(name, _)| name.to_owned())
            .collect();
        let complete = routed.iter().all(|service| servers.get(service).is_some_and(|s| !s.is_empty()));
        let found = self.instances()?;
        match change(&found, &self.image) {
            Change::Reload { current, extra } => {
                let files = render::render_gateway(self.root, self.environment, servers, &current.name)?;
                let slot = current.slot.unwrap_or_default();
                // An earlier deploy may have had the container load these.
                let loaded = self.rendered.as_ref() == Some(&files) || self.confirmed(&files, slot);
                if extra.is_empty() && loaded {
                    self.rendered = Some(files);
                    return Ok(routed);
                }
                for instance in extra {
                    self.retire(instance)?;
                }
                let version = self.write(&files, slot)?;
                let started = Instant::now();
                self.engine.kill(&current.name, "HUP")?;
                self.wait_answering(&current.name, version.as_deref())?;
                std::thread::sleep(RELOAD_SETTLE);
                self.confirm(&files, slot)?;
                self.rendered = Some(files);
                self.progress.emit(Event::GatewayReloaded {
                    container: current.name.clone(),
                    upstreams: version.unwrap_or_default(),
                    seconds: started.elapsed().as_secs_f64(),
                });
                Ok(routed)
            }
            Change::Replace { slot, old, extra } => {
                if !complete && old.is_none() {
                    // Nothing serves yet: wait for a replica of every routed service.
                    return Ok(converge::Routed::new());
                }
                self.replace(servers, slot, old, extra).map(|()| routed)
            }
        }
    }

    fn replace(
        &mut self,
        servers: &Servers,
        slot: u8,
        old: Option<&Instance>,
        extra: Vec<&Instance>,
    ) -> anyhow::Result<()> {
        for instance in extra {
            self.retire(instance)?;
        }
        let old = match old {
            Some(old) if old.slot.is_none() => {
                self.progress.warn(format!(
                    "{} predates gateway slots and listens without reuseport: it stops before its replacement \
                     starts, and the port refuses connections meanwhile (this once)",
                    old.name
                ));
                self.retire(old)?;
                None
            }
            old => old,
        };
        if old.is_some() && !migrates_queued_connections() {
            self.progress.warn(format!(
                "{MIGRATE_REQ} is 0: a connection that reaches the old gateway in the instant it closes its \
                 listening sockets is reset (one in a few replacements under a steady load); \
                 `sysctl -w net.ipv4.tcp_migrate_req=1` has the kernel hand it to the new gateway"
            ));
        }
        let name = self.name(slot);
        let files = render::render_gateway(self.root, self.environment, servers, &name)?;
        let version = self.write(&files, slot)?;
        let started = Instant::now();
        // A leftover of an interrupted run in this slot serves nothing.
        self.engine.remove(&name, true)?;
        self.engine.run(&name, self.body(slot))?;
        if let Err(err) = self.wait_answering(&name, version.as_deref()) {
            let _ = self.engine.remove(&name, true);
            let serving = old.map_or_else(String::new, |old| format!("; {} goes on serving", old.name));
            return Err(err.context(format!("the new gateway {name} did not take over{serving}")));
        }
        self.confirm(&files, slot)?;
        self.rendered = Some(files);
        match old {
            Some(old) => {
                self.retire(old)?;
                self.progress.emit(Event::GatewayReplaced {
                    old: old.name.clone(),
                    new: name,
                    image: self.image.clone(),
                    seconds: started.elapsed().as_secs_f64(),
                });
            }
            None => self.progress.emit(Event::GatewayStarted { container: name, image: self.image.clone() }),
        }
        Ok(())
    }

    /// Stops a gateway container gracefully (SIGQUIT: it closes its
    /// listening sockets and finishes its open requests) and removes it.
    fn retire(&self, instance: &Instance) -> anyhow::Result<()> {
        self.engine.stop(&instance.name, GATEWAY_STOP_SECS)?;
        self.engine.remove(&instance.name, true)
    }

    /// Where the digest of the configuration the container of `slot` was
    /// seen serving is kept: written only once a new connection was
    /// answered with it, so a reload nginx refused is never taken as done.
    fn confirmation(&self, slot: u8) -> std::path::PathBuf {
        self.slot_dir(slot).join("confirmed")
    }

    /// Whether the container of `slot` was seen serving `files`.
    fn confirmed(&self, files: &render::Files, slot: u8) -> bool {
        std::fs::read_to_string(self.confirmation(slot)).is_ok_and(|found| found.trim() == digest(files))
    }

    fn confirm(&self, files: &render::Files, slot: u8) -> anyhow::Result<()> {
        let path = self.confirmation(slot);
        std::fs::write(&path, digest(files) + "\n").with_context(|| format!("failed to write {}", path.display()))
    }

    /// Writes `files` for the container of `slot`: their upstreams' version.
    fn write(&self, files: &render::Files, slot: u8) -> anyhow::Result<Option<String>> {
        let dir = self.slot_dir(slot);
        std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
        // Unconfirmed until the container answers with them.
        match std::fs::remove_file(self.confirmation(slot)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(err).with_context(|| format!("failed to remove {}", self.confirmation(slot).display()));
            }
            _ => {}
        }
        render::write(files, &dir.join("conf"))?;
        Ok(render::gateway_upstreams_version(files))
    }

    fn body(&self, slot: u8) -> ContainerCreateBody {
        ContainerCreateBody {
            image: Some(self.image.clone()),
            labels: Some(
                [
                    (LABEL_PROJECT, self.project.clone()),
                    (LABEL_SERVICE, "gateway".to_owned()),
                    (converge::LABEL_SLOT, slot.to_string()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            ),
            healthcheck: Some(HealthConfig { test: Some(vec!["NONE".to_owned()]), ..Default::default() }),
            // nginx's graceful shutdown, whatever the image says.
            stop_signal: Some("SIGQUIT".to_owned()),
            stop_timeout: Some(i64::from(GATEWAY_STOP_SECS)),
            host_config: Some(HostConfig {
                network_mode: Some("host".to_owned()),
                binds: Some(vec![format!("{}:{GATEWAY_CONF_DIR}:ro", self.slot_dir(slot).display())]),
                tmpfs: Some([("/tmp".to_owned(), "rw,size=64m".to_owned())].into_iter().collect()),
                readonly_rootfs: Some(true),
                cap_drop: Some(vec!["ALL".to_owned()]),
                security_opt: Some(vec!["no-new-privileges".to_owned()]),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Waits until a new connection to the gateway's port is answered by
    /// the container `name` with the upstreams' `version`: nginx does not
    /// report the end of a reload, keeps the old configuration if the new
    /// one is refused, and while two containers share the port either may
    /// answer. Fails at once if the container exits (a port it cannot
    /// share, a configuration it refuses).
    fn wait_answering(&self, name: &str, version: Option<&str>) -> anyhow::Result<()> {
        let url = format!("{}/health", self.url);
        let deadline = Instant::now() + GATEWAY_TIMEOUT;
        loop {
            // A new agent each time: a new connection, never an old worker's.
            let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(2)).build();
            let answer = match agent.get(&url).call() {
                Ok(response) => {
                    let header = |key: &str| response.header(key).map(str::to_owned).unwrap_or_default();
                    let (instance, seen) =
                        (header(render::GATEWAY_INSTANCE_HEADER), header(render::GATEWAY_UPSTREAMS_HEADER));
                    if instance == name && version.is_none_or(|version| version == seen) {
                        return Ok(());
                    }
                    format!("it still answers from {instance} with the upstreams of version {seen}")
                }
                Err(err) => err.to_string(),
            };
            let state = self.engine.inspect(name)?.state.unwrap_or_default();
            let exited = state.running == Some(false) || state.restarting == Some(true);
            if exited || Instant::now() >= deadline {
                let what = if exited { "exited" } else { "did not take its new configuration" };
                bail!(
                    "the gateway {name} {what}: {answer}; the last lines of its log:\n{}",
                    self.engine.last_log_lines(name, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Linux (5.14 and later) moves the connections queued on a closing
/// listener to another listener of its `reuseport` group only when this is
/// 1; otherwise they are reset. It is the host's setting (a container on
/// the host's network cannot have its own), so the toolkit reads it and
/// warns, and leaves changing it to the machine's owner (`.ci/run` sets it).
pub const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Whether the kernel hands connections queued on a closing gateway to the
/// new one (see `MIGRATE_REQ`).
pub fn migrates_queued_connections() -> bool {
    std::fs::read_to_string(MIGRATE_REQ).is_ok_and(|value| value.trim() == "1")
}

/// FNV-1a over a configuration's file names and contents.
fn digest(files: &render::Files) -> String {
    let mut hash = crate::digest::Fnv1a::default();
    for (name, text) in files {
        hash.field(name).field(text);
    }
    hash.hex()
}

/// The gateway's container suffixes, by slot.
const SLOTS: [&str; 2] = ["a", "b"];

/// The images a project was deployed with, oldest first, one a line, in
/// `.local/<project>/deployments`: what `rollback` goes back to.
fn history_file(root: &Path, project: &str) -> std::path::PathBuf {
    root.join(".local").join(project).join("deployments")
}

fn history(root: &Path, project: &str) -> anyhow::Result<Vec<String>> {
    let path = history_file(root, project);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text.lines().map(str::to_owned).filter(|line| !line.is_empty()).collect()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(err).with_context(|| format!("failed to read {}", path.display())),
    }
}

/// Appends `image` unless it is the last one deployed already.
fn record(root: &Path, project: &str, image: &str) -> anyhow::Result<()> {
    let mut images = history(root, project)?;
    if images.last().map(String::as_str) == Some(image) {
        return Ok(());
    }
    images.push(image.to_owned());
    let path = history_file(root, project);
    std::fs::create_dir_all(path.parent().expect("has a parent"))
        .and_then(|()| std::fs::write(&path, images.join("\n") + "\n"))
        .with_context(|| format!("failed to write {}", path.display()))
}

/// The image deployed before the current one.
pub fn previous(root: &Path, project: &str) -> anyhow::Result<String> {
    let images = history(root, project)?;
    match images.as_slice() {
        [.., previous, _] => Ok(previous.clone()),
        _ => bail!(
            "{} records no deployment before the current one, so there is nothing to roll back to",
            history_file(root, project).display()
        ),
    }
}

/// Roll a deployment back: a container deployment to the image deployed
/// before the current one (with the environment's current settings),
/// replica by replica as any rollout; a kubernetes environment to the set
/// of objects rolled out before the current one (server-side apply, then
/// the same wait as a deploy).
#[derive(Debug, clap::Args)]
pub struct Rollback {
    /// The environment deployed with `deploy --containers`, or a
    /// kubernetes one (staging, prod).
    #[arg(long, value_name = "NAME", default_value = "local")]
    pub env: String,
    /// `json`: one JSON event per line on stdout, as `deploy --containers
    /// --output json` (the schema is in xtask/src/progress.rs).
    #[arg(long, value_enum, default_value = "text")]
    pub output: build::Output,
    /// A kubernetes environment's cluster, and how to apply there.
    #[command(flatten)]
    pub kubernetes: crate::kube::cli::Apply,
}

impl Rollback {
    pub fn run(&self, root: &Path) -> anyhow::Result<()> {
        let environment = crate::environment::load(root, &self.env)?;
        if environment.model.kind == Kind::Kubernetes {
            return crate::kube::cli::rollback(&environment, &self.kubernetes, self.output);
        }
        Progress::reporting(self.output, |progress| self.roll_back(root, progress))
    }

    /// Rolls back, reporting to `progress`.
    pub fn roll_back(&self, root: &Path, progress: &Progress) -> anyhow::Result<()> {
        let environment = crate::environment::load(root, &self.env)?;
        let project = project(&environment);
        let image = previous(root, &project)?;
        progress.step(format!("rolling {project} back to {image}"));
        run(root, &environment, Some(&image), false, progress)
    }
}

/// Where a container deployment's generated secrets live: `local`'s are
/// the native deploy's (`.local/secrets.env`); every other environment has
/// its own file, since each file holds exactly its environment's
/// `secrets.supplied`, and an infrastructure container's password must stay
/// what its volume was initialised with.
pub fn secrets_file(root: &Path, environment: &Environment) -> std::path::PathBuf {
    match environment.name.as_str() {
        "local" => root.join(secrets::FILE),
        name => root.join(".local").join(name).join("secrets.env"),
    }
}

/// A `freedumb` container's variables: the local process's. The platform's
/// containers use the host's network in every environment (replicas roll on
/// distinct ports, the gateway reaches them on loopback), so in a compose
/// environment, whose infrastructure containers are on the project's bridge
/// and published on 127.0.0.1, each container's URL names 127.0.0.1 and its
/// published port instead of its alias, and the gateway is trusted on
/// loopback rather than at its compose address; the processes listen on
/// loopback only, as in a local environment.
pub fn process_env(environment: &Environment, port: u16, secret: &dyn Fn(&str) -> String) -> Vec<(String, String)> {
    let mut env = vars::local_process(environment, port, secret);
    if environment.model.kind != Kind::Compose {
        return env;
    }
    for (key, value) in env.iter_mut() {
        match key.as_str() {
            "TRUSTED_PROXIES" => *value = "127.0.0.1/32,::1/128".to_owned(),
            // Reached on loopback only; the gateway is the way in.
            "HOST" => *value = "127.0.0.1".to_owned(),
            _ => {}
        }
        for which in environment.used_backings() {
            if which.variable() == key.as_str() && which.model(environment).image.is_some() {
                *value = vars::url_on_loopback(environment, which, secret);
            }
        }
    }
    env
}

/// One `Desired` per replica of each enabled service (`serve NAME`) and
/// worker (`worker NAME`), with the local process's variables.
pub fn desired(
    environment: &Environment,
    image: &str,
    image_id: &str,
    secret: &dyn Fn(&str) -> String,
) -> Vec<Desired> {
    let mut desired = Vec::new();
    let roles = environment.services().map(|w| ("serve", w)).chain(environment.workers().map(|w| ("worker", w)));
    for (verb, (name, workload)) in roles {
        let env: Vec<(String, String)> = process_env(environment, workload.port, secret)
            .into_iter()
            .filter(|(key, _)| key != "PORT")
            .map(|(key, value)| match key.as_str() {
                "SERVICE_NAME" => (key, format!("freedumb-{name}")),
                _ => (key, value),
            })
            .collect();
        for replica in 0..workload.replicas.min.max(1) {
            desired.push(Desired {
                service: name.to_owned(),
                replica,
                base_port: workload.port,
                image: image.to_owned(),
                image_id: image_id.to_owned(),
                command: vec![verb.to_owned(), name.to_owned()],
                env: env.clone(),
                probe_path: workload.probes.readiness.path.clone(),
            });
        }
    }
    desired
}

fn migrate(
    engine: &Engine,
    environment: &Environment,
    project: &str,
    image: &str,
    secret: &dyn Fn(&str) -> String,
    progress: &Progress,
) -> anyhow::Result<()> {
    let name = format!("{project}-migrate");
    progress.emit(Event::MigrateStarted { container: name.clone(), image: image.to_owned() });
    let started = Instant::now();
    engine.remove(&name, true)?;
    let targets: Vec<String> = environment.services().map(|(name, _)| name.to_owned()).collect();
    let spec = Spec {
        image,
        command: ["migrate"]
            .into_iter()
            .map(str::to_owned)
            .chain(targets)
            .chain(["--create-database".to_owned()])
            .collect(),
        env: process_env(environment, 0, secret),
        labels: BTreeMap::from([
            (LABEL_PROJECT.to_owned(), project.to_owned()),
            (LABEL_SERVICE.to_owned(), "migrate".to_owned()),
        ]),
        probe: None,
        interval: Duration::from_secs(1),
        stop_timeout_secs: 10,
    };
    engine.run(&name, spec.body())?;
    let code = engine.wait(&name).context("waiting for the migrations")?;
    if code != 0 {
        bail!(
            "the migrations failed (exit code {code}); the last lines of their log:\n{}",
            engine.last_log_lines(&name, 20)
        );
    }
    progress.emit(Event::MigrateFinished { container: name, seconds: started.elapsed().as_secs_f64() });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_goes_to_the_image_before_the_current_one() {
        let dir = crate::scratch::ScratchDir::new("history");
        let root = dir.path();
        assert!(previous(root, "p").unwrap_err().to_string().contains("nothing to roll back to"));
        for image in ["freedumb:a", "freedumb:b", "freedumb:b"] {
            record(root, "p", image).unwrap();
        }
        assert_eq!(previous(root, "p").unwrap(), "freedumb:a", "a repeated deploy is recorded once");
        record(root, "p", "freedumb:a").unwrap();
        assert_eq!(previous(root, "p").unwrap(), "freedumb:b", "a rollback is a deployment too");
    }

    fn gateway(name: &str, slot: Option<u8>, image: &str, running: bool) -> Instance {
        Instance { name: name.to_owned(), slot, image: image.to_owned(), running }
    }

    #[test]
    fn the_gateway_running_the_image_is_reloaded_and_leftovers_go() {
        let found = [gateway("p-gateway-b", Some(1), "g:1", true), gateway("p-gateway-a", Some(0), "g:0", false)];
        assert_eq!(change(&found, "g:1"), Change::Reload { current: &found[0], extra: vec![&found[1]] });
    }

    #[test]
    fn a_new_gateway_image_starts_in_the_other_slot_next_to_the_running_one() {
        let found = [gateway("p-gateway-a", Some(0), "g:0", true)];
        assert_eq!(change(&found, "g:1"), Change::Replace { slot: 1, old: Some(&found[0]), extra: vec![] });
        let found = [gateway("p-gateway-b", Some(1), "g:0", true), gateway("p-gateway-a", Some(0), "g:1", false)];
        assert_eq!(
            change(&found, "g:1"),
            Change::Replace { slot: 0, old: Some(&found[0]), extra: vec![&found[1]] },
            "a stopped gateway is replaced even when its image matches"
        );
    }

    #[test]
    fn with_nothing_running_the_gateway_starts_in_slot_a() {
        assert_eq!(change(&[], "g:1"), Change::Replace { slot: 0, old: None, extra: vec![] });
    }

    #[test]
    fn only_the_container_gateway_listens_with_reuseport_and_names_itself() {
        let root = crate::project_root();
        let environment = crate::environment::load(&root, "test").unwrap();
        let servers = Servers::from([("auth".to_owned(), vec!["127.0.0.1:17001".to_owned()])]);
        let files = render::render_gateway(&root, &environment, &servers, "p-gateway-b").unwrap();
        let conf = &files["nginx.conf"];
        let listens: Vec<&str> = conf.lines().filter(|line| line.trim_start().starts_with("listen ")).collect();
        assert!(!listens.is_empty() && listens.iter().all(|line| line.ends_with(" reuseport;")), "{listens:?}");
        // The name only on /health, where the toolkit asks, with the
        // security headers repeated (an add_header in a location drops the
        // server's).
        let health = conf.split("location = /health {").nth(1).and_then(|rest| rest.split('}').next()).unwrap();
        assert!(health.contains(r#"add_header X-Gateway-Instance "p-gateway-b" always;"#), "{health}");
        assert!(health.contains(r#"add_header X-Content-Type-Options "nosniff" always;"#), "{health}");
        assert_eq!(conf.matches("X-Gateway-Instance").count(), 1, "not on the API's responses: {conf}");

        // Every other rendering: a second nginx on the port must fail to start.
        for name in ["local", "dev", "test"] {
            let environment = crate::environment::load(&root, name).unwrap();
            let files = render::render(&root, &environment, render::context::Upstreams::Deployed).unwrap();
            let conf = &files["nginx/nginx.conf"];
            assert!(conf.contains("listen ") && !conf.contains("reuseport"), "{name}: {conf}");
        }
    }

    #[test]
    fn a_gateway_from_before_slots_is_the_old_one_and_slot_a_takes_over() {
        let found = [gateway("p-gateway", None, "g:1", true)];
        assert_eq!(change(&found, "g:1"), Change::Replace { slot: 0, old: Some(&found[0]), extra: vec![] });
    }

    /// `dev`'s containers reach the infrastructure at its ports published on
    /// loopback and trust the gateway there; a local environment's
    /// variables are the local process's.
    #[test]
    fn dev_containers_reach_their_infrastructure_on_loopback() {
        let root = crate::project_root();
        let secret = |name: &str| format!("{}-value", name.to_lowercase());
        let dev = crate::environment::load(&root, "dev").unwrap();
        let env: BTreeMap<String, String> = process_env(&dev, 3001, &secret).into_iter().collect();
        assert_eq!(env["DATABASE_URL"], "postgres://freedumb:postgres_password-value@127.0.0.1:5432/freedumb");
        assert_eq!(env["REDIS_URL"], "redis://:redis_password-value@127.0.0.1:6379");
        assert_eq!(env["RABBITMQ_URL"], "amqp://freedumb:rabbitmq_password-value@127.0.0.1:5672/%2f");
        assert_eq!((env["TRUSTED_PROXIES"].as_str(), env["HOST"].as_str()), ("127.0.0.1/32,::1/128", "127.0.0.1"));
        let local = crate::environment::load(&root, "local").unwrap();
        assert_eq!(process_env(&local, 3000, &secret), vars::local_process(&local, 3000, &secret));
    }
}

//! The infrastructure of a container deployment: Postgres, Redis, RabbitMQ
//! (and MongoDB) as containers, for each backing service the environment
//! gives an `image`. A backing service without one is external (a `url`, or
//! a host the deployment reaches) and is only checked, never created.
//!
//! As for the replicas (`converge`), what should run (`Infra`, one per
//! backing service) is compared with what runs (`Existing`, read back from
//! container labels) by a pure `plan`, tested without an engine, and the
//! plan is carried out by `apply`:
//!
//! 1. every image the plan starts is looked up, and pulled through the API
//!    when the engine lacks it, *before anything is created*: an image that
//!    cannot be pulled fails the deploy with the registry's error and leaves
//!    nothing behind for the next run to trip over;
//! 2. the project's network (compose's user-defined bridge, with the
//!    environment's subnet) and named volumes are created when missing;
//! 3. each container to create or replace is started. A replacement stops
//!    the old container first (the two would share a port and a volume, so
//!    infrastructure is not rolled without downtime, as compose does not)
//!    but keeps it, renamed `<name>-old`, until the new one is healthy; a
//!    new one that fails is removed and the old one started again, so a bad
//!    image or setting fails the deploy and leaves the database as it was;
//! 4. every infrastructure container, kept ones too, must pass its health
//!    check (compose's `condition: service_healthy`) before `apply` returns,
//!    so migrations and services never start against a database that is
//!    still initialising.
//!
//! Volumes outlive their containers: a changed image or setting replaces
//! the container and keeps its data; only `down --volumes` removes them.
//!
//! Networking follows the environment's kind. `compose` environments (dev)
//! get the seed's network: a bridge with the environment's subnet, each
//! backing service reachable by its `host` as a DNS alias and published on
//! 127.0.0.1 only. `local` environments use the host's network (the only
//! one an engine started with `--bridge=none --iptables=false` has), each
//! backing service listening on its own `host` and `port` directly.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use bollard::models::{
    ContainerCreateBody, ContainerSummary, EndpointSettings, HealthConfig, HostConfig, NetworkingConfig, PortBinding,
    RestartPolicy, RestartPolicyNameEnum,
};

use super::converge::LABEL_DIGEST;
use super::{Engine, LABEL_PROJECT, LABEL_SERVICE, container_name};
use crate::environment::vars::Which;
use crate::environment::{Environment, Kind};
use crate::progress::{Event, Progress};

/// `infra` on the deployment's infrastructure containers (the replicas,
/// `migrate` and the gateway have none).
pub const LABEL_ROLE: &str = "io.freedumb.role";
pub const ROLE_INFRA: &str = "infra";

/// How long an infrastructure container gets to pass its health check: a
/// first start initialises Postgres' data directory and RabbitMQ's node.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(120);

/// Postgres and RabbitMQ flush on SIGTERM; give them the time compose's
/// users usually give them.
const STOP_TIMEOUT_SECS: i32 = 30;

/// Where the deployment's containers talk to each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Networking {
    /// The host's network: each service binds its own address and port.
    Host,
    /// A user-defined bridge, as compose makes it (`<project>_<project>`).
    Bridge { network: String, subnet: String, gateway_address: IpAddr },
}

impl Networking {
    /// A compose environment's network; the host's for the others.
    pub fn of(environment: &Environment, project: &str) -> Networking {
        match (&environment.model.compose, environment.model.kind) {
            (Some(compose), Kind::Compose) => Networking::Bridge {
                network: format!("{project}_{}", compose.project),
                subnet: compose.subnet.clone(),
                gateway_address: compose.gateway_address,
            },
            _ => Networking::Host,
        }
    }
}

/// One backing service as a container should run it. Its `Debug` shows the
/// names of the variables in `env`, never their values (passwords).
#[derive(Clone, PartialEq, Eq)]
pub struct Infra {
    /// `postgres`, `redis`, ...: the `io.freedumb.service` label.
    pub service: &'static str,
    pub container: String,
    pub image: String,
    pub env: Vec<(String, String)>,
    /// The image's own command when `None`.
    pub command: Option<Vec<String>>,
    /// The health check, as `HealthConfig.test` (`CMD` or `CMD-SHELL` first).
    pub health: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: i64,
    /// Failures in this first stretch do not count (first-start initialisation).
    pub start_period: Duration,
    /// The named volume and where it is mounted.
    pub volume: String,
    pub mount: &'static str,
    /// Bridge only: the DNS alias (the model's `host`), also the hostname, so
    /// that RabbitMQ's node name, and with it its data directory, survives
    /// a replacement.
    pub alias: Option<String>,
    /// Bridge only: (port on 127.0.0.1, port in the container).
    pub published: Vec<(u16, u16)>,
    pub network: Networking,
}

impl Infra {
    /// FNV-1a over every input of the container, in a fixed order (as
    /// `converge::Desired::digest`): equal digests mean nothing changed.
    pub fn digest(&self) -> String {
        let mut hash = crate::digest::Fnv1a::default();
        let mut feed = |part: &str| {
            hash.field(part);
        };
        feed(&self.image);
        let mut env = self.env.clone();
        env.sort();
        for (key, value) in &env {
            feed(key);
            feed(value);
        }
        for arg in self.command.iter().flatten() {
            feed(arg);
        }
        feed("--health");
        self.health.iter().for_each(|part| feed(part));
        for duration in [self.interval, self.timeout, self.start_period] {
            feed(&duration.as_millis().to_string());
        }
        feed(&self.retries.to_string());
        feed(&self.volume);
        feed(self.mount);
        feed(self.alias.as_deref().unwrap_or(""));
        for (host, container) in &self.published {
            feed(&format!("{host}:{container}"));
        }
        // Written out rather than `{:?}` (whose output is no stable format,
        // so a rename would replace every database): the same text `{:?}`
        // gave, so that containers deployed before keep their digest.
        match &self.network {
            Networking::Host => feed("Host"),
            Networking::Bridge { network, subnet, gateway_address } => feed(&format!(
                "Bridge {{ network: \"{network}\", subnet: \"{subnet}\", gateway_address: {gateway_address} }}"
            )),
        }
        hash.hex()
    }

    fn labels(&self, project: &str) -> HashMap<String, String> {
        [
            (LABEL_PROJECT, project.to_owned()),
            (LABEL_SERVICE, self.service.to_owned()),
            (LABEL_ROLE, ROLE_INFRA.to_owned()),
            (LABEL_DIGEST, self.digest()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// What the engine is asked to create.
    pub fn body(&self, project: &str) -> ContainerCreateBody {
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        let (network_mode, networking_config, port_bindings) = match &self.network {
            Networking::Host => ("host".to_owned(), None, None),
            Networking::Bridge { network, .. } => {
                let endpoint = EndpointSettings { aliases: self.alias.clone().map(|a| vec![a]), ..Default::default() };
                let bindings: HashMap<String, Option<Vec<PortBinding>>> = self
                    .published
                    .iter()
                    .map(|(host, container)| {
                        let binding =
                            PortBinding { host_ip: Some("127.0.0.1".to_owned()), host_port: Some(host.to_string()) };
                        (format!("{container}/tcp"), Some(vec![binding]))
                    })
                    .collect();
                (
                    network.clone(),
                    Some(NetworkingConfig { endpoints_config: Some(HashMap::from([(network.clone(), endpoint)])) }),
                    Some(bindings),
                )
            }
        };
        ContainerCreateBody {
            image: Some(self.image.clone()),
            hostname: self.alias.clone(),
            cmd: self.command.clone(),
            env: Some(self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(self.labels(project)),
            healthcheck: Some(HealthConfig {
                test: Some(self.health.clone()),
                interval: Some(nanos(self.interval)),
                timeout: Some(nanos(self.timeout)),
                retries: Some(self.retries),
                start_period: Some(nanos(self.start_period)),
                start_interval: None,
            }),
            exposed_ports: port_bindings.as_ref().map(|bindings| bindings.keys().cloned().collect()),
            host_config: Some(HostConfig {
                network_mode: Some(network_mode),
                binds: Some(vec![format!("{}:{}", self.volume, self.mount)]),
                port_bindings,
                security_opt: Some(vec!["no-new-privileges".to_owned()]),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            networking_config,
            ..Default::default()
        }
    }
}

impl std::fmt::Debug for Infra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: Vec<String> = self.env.iter().map(|(key, _)| format!("{key}=***")).collect();
        f.debug_struct("Infra")
            .field("service", &self.service)
            .field("container", &self.container)
            .field("image", &self.image)
            .field("env", &env)
            .field("command", &self.command)
            .field("health", &self.health)
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("start_period", &self.start_period)
            .field("volume", &self.volume)
            .field("mount", &self.mount)
            .field("alias", &self.alias)
            .field("published", &self.published)
            .field("network", &self.network)
            .finish()
    }
}

/// The backing services this environment runs as containers, in the order
/// they start: Postgres, Redis, RabbitMQ, MongoDB (those its deployed
/// workloads use and that have an `image`).
pub fn desired(
    environment: &Environment,
    project: &str,
    network: &Networking,
    secret: &dyn Fn(&str) -> String,
) -> Vec<Infra> {
    environment
        .used_backings()
        .into_iter()
        .filter_map(|which| {
            let model = which.model(environment);
            let image = model.image.clone()?;
            let host = model.host.clone().unwrap_or_else(|| "127.0.0.1".to_owned());
            let port = model.port.unwrap_or(which.kind().default_port);
            let password = model.password_secret.as_deref().map(secret);
            let user = model.user.clone().unwrap_or_default();
            let database = model.database.clone().unwrap_or_default();
            let on_host = *network == Networking::Host;
            let mut infra = Infra {
                service: which.key(),
                container: format!("{project}-{}", which.key()),
                image,
                env: Vec::new(),
                command: None,
                health: Vec::new(),
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(5),
                retries: 5,
                start_period: Duration::from_secs(60),
                volume: String::new(),
                mount: "",
                alias: (!on_host).then(|| host.clone()),
                published: Vec::new(),
                network: network.clone(),
            };
            let strs = |parts: &[&str]| parts.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>();
            match which {
                Which::Postgres => {
                    infra.env = vec![
                        ("POSTGRES_USER".to_owned(), user.clone()),
                        ("POSTGRES_PASSWORD".to_owned(), password.unwrap_or_default()),
                        ("POSTGRES_DB".to_owned(), database.clone()),
                    ];
                    infra.health = strs(&["CMD", "pg_isready", "-U", user.as_str(), "-d", database.as_str()]);
                    if on_host {
                        let (listen, port) = (format!("listen_addresses={host}"), port.to_string());
                        infra.command = Some(strs(&["postgres", "-c", listen.as_str(), "-p", port.as_str()]));
                        infra.health.extend(strs(&["-h", host.as_str(), "-p", port.as_str()]));
                    }
                    (infra.volume, infra.mount) = (volume(project, "postgres_data"), "/var/lib/postgresql/data");
                    infra.published = vec![(port, 5432)];
                }
                Which::Redis => {
                    // The password reaches redis-server through its
                    // environment, never its command line (`docker inspect`
                    // and `ps` show that), hence the shell, as in the
                    // rendered compose file.
                    let mut server = String::from("exec redis-server");
                    let mut cli = String::from("redis-cli");
                    if let Some(password) = password {
                        infra.env.push(("REDIS_PASSWORD".to_owned(), password));
                        server.push_str(" --requirepass \"$REDIS_PASSWORD\"");
                        cli = "REDISCLI_AUTH=\"$REDIS_PASSWORD\" redis-cli".to_owned();
                    }
                    if let Some(mb) = model.max_memory_mb {
                        server.push_str(&format!(" --maxmemory {mb}mb --maxmemory-policy allkeys-lru"));
                    }
                    if on_host {
                        server.push_str(&format!(" --bind {host} --port {port}"));
                        cli.push_str(&format!(" -h {host} -p {port}"));
                    }
                    infra.command = Some(strs(&["sh", "-c", server.as_str()]));
                    // `redis-cli ping` exits 0 on `NOAUTH Authentication
                    // required` too (seed defect 12): only PONG is healthy.
                    // A test of the answer instead of compose's `| grep`,
                    // so the check needs nothing but a shell.
                    let check = format!("[ \"$({cli} ping)\" = PONG ]");
                    infra.health = strs(&["CMD-SHELL", check.as_str()]);
                    (infra.interval, infra.timeout, infra.start_period) =
                        (Duration::from_secs(1), Duration::from_secs(3), Duration::from_secs(10));
                    (infra.volume, infra.mount) = (volume(project, "redis_data"), "/data");
                    infra.published = vec![(port, 6379)];
                }
                Which::Rabbitmq => {
                    infra.env = vec![
                        ("RABBITMQ_DEFAULT_USER".to_owned(), user),
                        ("RABBITMQ_DEFAULT_PASS".to_owned(), password.unwrap_or_default()),
                    ];
                    if on_host {
                        infra.env.push(("RABBITMQ_NODE_IP_ADDRESS".to_owned(), host.clone()));
                        infra.env.push(("RABBITMQ_NODE_PORT".to_owned(), port.to_string()));
                    }
                    // Each check starts an Erlang VM: every 5 s, not every second.
                    infra.health = strs(&["CMD", "rabbitmq-diagnostics", "-q", "ping"]);
                    (infra.interval, infra.timeout, infra.retries) =
                        (Duration::from_secs(5), Duration::from_secs(10), 6);
                    (infra.volume, infra.mount) = (volume(project, "rabbitmq_data"), "/var/lib/rabbitmq");
                    infra.published = vec![(port, 5672), (15672, 15672)];
                }
                Which::Mongodb => {
                    infra.env = vec![
                        ("MONGO_INITDB_ROOT_USERNAME".to_owned(), user),
                        ("MONGO_INITDB_ROOT_PASSWORD".to_owned(), password.unwrap_or_default()),
                        ("MONGO_INITDB_DATABASE".to_owned(), database),
                    ];
                    if on_host {
                        let port = port.to_string();
                        infra.command = Some(strs(&["mongod", "--bind_ip", host.as_str(), "--port", port.as_str()]));
                    }
                    infra.health = strs(&["CMD", "mongosh", "--quiet", "--eval", "db.adminCommand('ping')"]);
                    infra.interval = Duration::from_secs(5);
                    (infra.volume, infra.mount) = (volume(project, "mongo_data"), "/data/db");
                    infra.published = vec![(port, 27017)];
                }
            }
            if on_host {
                infra.published.clear();
            }
            Some(infra)
        })
        .collect()
}

/// Compose's name for a project's volume, so that a stack brought up with
/// `docker compose` and with this toolkit share their data.
pub fn volume(project: &str, name: &str) -> String {
    format!("{project}_{name}")
}

/// An infrastructure container of the deployment, as its labels describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub name: String,
    pub service: String,
    pub digest: String,
    pub running: bool,
}

impl Existing {
    /// `None` for containers that are not infrastructure.
    pub fn from_summary(summary: &ContainerSummary) -> Option<Existing> {
        let labels = summary.labels.as_ref()?;
        if labels.get(LABEL_ROLE).map(String::as_str) != Some(ROLE_INFRA) {
            return None;
        }
        Some(Existing {
            name: container_name(summary),
            service: labels.get(LABEL_SERVICE)?.clone(),
            digest: labels.get(LABEL_DIGEST).cloned().unwrap_or_default(),
            running: super::is_running(summary),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Keep(Existing),
    Create(Infra),
    /// Stop `old` and set it aside, start `new` on the same volume; remove
    /// `old` once `new` is healthy, or bring it back if `new` fails.
    Replace {
        old: Existing,
        new: Infra,
    },
    /// The service is external now, or no deployed workload uses it: the
    /// container goes, its volume stays.
    Remove(Existing),
}

/// What to do so that `actual` becomes `desired`. Containers are matched by
/// service; a stopped container is replaced even when its digest matches
/// (as `converge::plan` does), and extra ones are removed, last.
pub fn plan(desired: &[Infra], actual: &[Existing]) -> Vec<Step> {
    let mut by_service: BTreeMap<&str, Vec<&Existing>> = BTreeMap::new();
    for existing in actual {
        by_service.entry(existing.service.as_str()).or_default().push(existing);
    }
    let mut steps = Vec::new();
    let mut removals = Vec::new();
    for want in desired {
        let digest = want.digest();
        let mut found = by_service.remove(want.service).unwrap_or_default();
        // The container of this deployment's name first, then a running one.
        found.sort_by_key(|e| (e.name != want.container, !(e.running && e.digest == digest)));
        let mut found = found.into_iter();
        match found.next() {
            Some(old) if old.running && old.digest == digest && old.name == want.container => {
                steps.push(Step::Keep(old.clone()))
            }
            Some(old) => steps.push(Step::Replace { old: old.clone(), new: want.clone() }),
            None => steps.push(Step::Create(want.clone())),
        }
        removals.extend(found.cloned().map(Step::Remove));
    }
    removals.extend(by_service.into_values().flatten().cloned().map(Step::Remove));
    steps.extend(removals);
    steps
}

/// Whether a plan changes anything.
pub fn changes(plan: &[Step]) -> bool {
    plan.iter().any(|step| !matches!(step, Step::Keep(_)))
}

/// The deployment's infrastructure containers as the engine lists them.
pub fn existing(engine: &Engine, project: &str) -> anyhow::Result<Vec<Existing>> {
    let labels = BTreeMap::from([(LABEL_PROJECT, project), (LABEL_ROLE, ROLE_INFRA)]);
    Ok(engine.containers(&labels)?.iter().filter_map(Existing::from_summary).collect())
}

/// Carries out `plan` (see the module documentation for the order) and
/// returns once every container of `desired` is healthy. Returns whether
/// anything changed.
pub fn apply(
    engine: &Engine,
    project: &str,
    network: &Networking,
    desired: &[Infra],
    plan: &[Step],
    progress: &Progress,
) -> anyhow::Result<bool> {
    // 1. Images first: a pull that fails must leave nothing half-created.
    for step in plan {
        if let Step::Create(new) | Step::Replace { new, .. } = step {
            engine.ensure_image(&new.image, new.service, progress)?;
        }
    }
    // 2. The network and the volumes.
    let labels = BTreeMap::from([(LABEL_PROJECT.to_owned(), project.to_owned())]);
    if let Networking::Bridge { network, subnet, .. } = network
        && !desired.is_empty()
        && engine.ensure_network(network, subnet, &labels)?
    {
        progress.emit(Event::NetworkCreated { network: network.clone(), subnet: subnet.clone() });
    }
    for infra in desired {
        if engine.ensure_volume(&infra.volume, &labels)? {
            progress.emit(Event::VolumeCreated { service: infra.service.to_owned(), volume: infra.volume.clone() });
        }
    }
    // 3. Start what is new (in dependency order; none of them depends on
    // another, so they initialise side by side).
    let mut started: BTreeMap<&str, Instant> = BTreeMap::new();
    for step in plan {
        match step {
            Step::Keep(old) => {
                progress.emit(Event::InfraUnchanged { service: old.service.clone(), container: old.name.clone() })
            }
            Step::Create(new) => {
                // A leftover under this name (an interrupted run) would
                // refuse the new container's name.
                engine.remove(&new.container, false)?;
                progress.emit(Event::InfraStarting {
                    service: new.service.to_owned(),
                    container: new.container.clone(),
                    image: new.image.clone(),
                });
                started.insert(new.service, Instant::now());
                start(engine, project, new)?;
            }
            Step::Replace { old, new } => {
                progress.emit(Event::InfraReplacing {
                    service: new.service.to_owned(),
                    container: old.name.clone(),
                    volume: new.volume.clone(),
                });
                progress.emit(Event::InfraStarting {
                    service: new.service.to_owned(),
                    container: new.container.clone(),
                    image: new.image.clone(),
                });
                started.insert(new.service, Instant::now());
                replace(engine, project, old, new, progress)?;
            }
            Step::Remove(old) => {
                engine.stop(&old.name, STOP_TIMEOUT_SECS)?;
                engine.remove(&old.name, false)?;
                progress.emit(Event::InfraRemoved { service: old.service.clone(), container: old.name.clone() });
            }
        }
    }
    // 4. Every one healthy before anything uses it.
    let deadline = Instant::now() + HEALTH_TIMEOUT;
    for infra in desired {
        let since = started.get(infra.service).copied().unwrap_or_else(Instant::now);
        engine.wait_healthy(&infra.container, deadline).with_context(|| {
            format!("{} ({}) did not become healthy, so nothing was migrated or started", infra.service, infra.image)
        })?;
        progress.emit(Event::InfraHealthy {
            service: infra.service.to_owned(),
            container: infra.container.clone(),
            seconds: since.elapsed().as_secs_f64(),
        });
    }
    Ok(changes(plan))
}

/// Creates and starts `infra`'s container; one that was created but could
/// not start (a bad command, a missing binary in the image) is removed, so
/// that no dead container is left under the deployment's name.
fn start(engine: &Engine, project: &str, infra: &Infra) -> anyhow::Result<()> {
    engine.run(&infra.container, infra.body(project)).map_err(|err| {
        let _ = engine.remove(&infra.container, false);
        err.context(format!("{} ({}) could not be started; its container was removed", infra.service, infra.image))
    })
}

/// The name an old infrastructure container has while its replacement
/// starts: kept, stopped, until the new one is healthy.
pub fn backup_name(container: &str) -> String {
    format!("{container}-old")
}

/// Replaces `old` by `new` without losing the way back: the old container
/// is stopped (the two share the volume, and on the host's network the
/// port) and renamed, not removed; the new one must start and pass its
/// health check; only then is the old one removed. When the new one fails,
/// it is removed, the old one gets its name back and, if it was running,
/// is started and must be healthy again; the error names the service, the
/// reason and the new container's last log lines.
fn replace(engine: &Engine, project: &str, old: &Existing, new: &Infra, progress: &Progress) -> anyhow::Result<()> {
    let backup = backup_name(&new.container);
    // Leftovers of an interrupted run under either name would refuse it
    // (the plan removes such strays anyway, after this step); gone before
    // the old container stops, so that nothing fails while it is down.
    if old.name != backup {
        engine.remove(&backup, false)?;
    }
    if old.name != new.container {
        engine.remove(&new.container, false)?;
    }
    engine.stop(&old.name, STOP_TIMEOUT_SECS)?;
    if old.name != backup
        && let Err(err) = engine.rename(&old.name, &backup)
    {
        let restarted = if old.running { engine.start(&old.name).err() } else { None };
        let restarted = restarted.map_or_else(String::new, |e| format!("; and it could not be started again: {e:#}"));
        return Err(err.context(format!("{}: the old container could not be set aside{restarted}", new.service)));
    }
    let tried =
        start(engine, project, new).and_then(|()| engine.wait_healthy(&new.container, Instant::now() + HEALTH_TIMEOUT));
    let Err(failure) = tried else {
        // `false`: the named volume is not the container's to take along.
        return engine.remove(&backup, false);
    };
    let what = format!(
        "{} ({}): the replacement container did not become healthy, so nothing was migrated or started: {failure:#}",
        new.service, new.image
    );
    progress.warn(format!(
        "{}: the new container {} failed; removing it and bringing back the old one",
        new.service, new.container
    ));
    let restored = (|| -> anyhow::Result<()> {
        engine.remove(&new.container, false)?;
        if old.name != backup {
            engine.rename(&backup, &old.name)?;
        }
        if old.running {
            engine.start(&old.name)?;
            engine.wait_healthy(&old.name, Instant::now() + HEALTH_TIMEOUT)?;
        }
        Ok(())
    })();
    match restored {
        Ok(()) if old.running => {
            anyhow::bail!("{what}\nthe old container {} runs again, on the same volume, as before", old.name)
        }
        Ok(()) => anyhow::bail!("{what}\nthe old container {} is back, stopped, as it was found", old.name),
        Err(err) => anyhow::bail!(
            "{what}\nand the old container could not be brought back ({err:#}); it is {} if it exists",
            if engine.inspect(&backup).is_ok() { backup.as_str() } else { old.name.as_str() }
        ),
    }
}

/// Plans and applies the infrastructure of `environment`; whether anything
/// changed.
pub fn converge(
    engine: &Engine,
    environment: &Environment,
    project: &str,
    secret: &dyn Fn(&str) -> String,
    progress: &Progress,
) -> anyhow::Result<bool> {
    let network = Networking::of(environment, project);
    let desired = desired(environment, project, &network, secret);
    let plan = plan(&desired, &existing(engine, project)?);
    if desired.is_empty() && plan.is_empty() {
        return Ok(false);
    }
    progress.step(format!(
        "infrastructure: {}",
        if desired.is_empty() {
            "none in containers".to_owned()
        } else {
            desired.iter().map(|i| format!("{} ({})", i.service, i.image)).collect::<Vec<_>>().join(", ")
        }
    ));
    apply(engine, project, &network, &desired, &plan, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infra(service: &'static str, image: &str) -> Infra {
        Infra {
            service,
            container: format!("p-{service}"),
            image: image.to_owned(),
            env: vec![("REDIS_PASSWORD".to_owned(), "pw".to_owned())],
            command: Some(vec!["sh".to_owned(), "-c".to_owned(), "exec redis-server".to_owned()]),
            health: vec!["CMD-SHELL".to_owned(), "[ \"$(redis-cli ping)\" = PONG ]".to_owned()],
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
            retries: 5,
            start_period: Duration::from_secs(10),
            volume: format!("p_{service}_data"),
            mount: "/data",
            alias: None,
            published: Vec::new(),
            network: Networking::Host,
        }
    }

    fn existing(want: &Infra, running: bool) -> Existing {
        Existing { name: want.container.clone(), service: want.service.to_owned(), digest: want.digest(), running }
    }

    fn kinds(plan: &[Step]) -> Vec<String> {
        plan.iter()
            .map(|step| match step {
                Step::Keep(e) => format!("keep {}", e.name),
                Step::Create(i) => format!("create {} ({})", i.container, i.image),
                Step::Replace { old, new } => format!("replace {} with {}", old.name, new.image),
                Step::Remove(e) => format!("remove {}", e.name),
            })
            .collect()
    }

    #[test]
    fn nothing_running_creates_each_backing_service() {
        let want = [infra("postgres", "postgres:15-alpine"), infra("redis", "redis:7-alpine")];
        let plan = plan(&want, &[]);
        assert_eq!(kinds(&plan), ["create p-postgres (postgres:15-alpine)", "create p-redis (redis:7-alpine)"]);
        assert!(changes(&plan));
    }

    #[test]
    fn the_same_infrastructure_again_keeps_every_container() {
        let want = [infra("postgres", "postgres:15-alpine"), infra("redis", "redis:7-alpine")];
        let actual = [existing(&want[1], true), existing(&want[0], true)];
        let plan = plan(&want, &actual);
        assert_eq!(kinds(&plan), ["keep p-postgres", "keep p-redis"]);
        assert!(!changes(&plan), "a second run with nothing changed changes nothing");
    }

    #[test]
    fn a_changed_image_or_setting_replaces_the_container_on_its_volume() {
        let old = infra("redis", "redis:7.0");
        let mut new = infra("redis", "redis:7.2");
        assert_eq!(
            kinds(&plan(std::slice::from_ref(&new), &[existing(&old, true)])),
            ["replace p-redis with redis:7.2"]
        );
        new.image = old.image.clone();
        new.command.as_mut().unwrap()[2].push_str(" --maxmemory 64mb");
        let plan = plan(std::slice::from_ref(&new), &[existing(&old, true)]);
        match plan.as_slice() {
            [Step::Replace { old: gone, new: next }] => {
                assert_eq!(gone.name, next.container);
                assert_eq!(next.volume, old.volume, "the data stays where it was");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_stopped_container_is_replaced_even_when_it_matches() {
        let want = infra("redis", "redis:7-alpine");
        assert_eq!(
            kinds(&plan(std::slice::from_ref(&want), &[existing(&want, false)])),
            ["replace p-redis with redis:7-alpine"]
        );
    }

    #[test]
    fn a_backing_service_that_became_external_loses_its_container_last() {
        let postgres = infra("postgres", "postgres:15-alpine");
        let redis = infra("redis", "redis:7-alpine");
        let plan = plan(std::slice::from_ref(&postgres), &[existing(&redis, true), existing(&postgres, true)]);
        assert_eq!(kinds(&plan), ["keep p-postgres", "remove p-redis"]);
    }

    #[test]
    fn a_leftover_duplicate_of_a_service_is_removed() {
        let want = infra("redis", "redis:7-alpine");
        let stray = Existing { name: "p-redis-old".to_owned(), ..existing(&want, true) };
        let plan = plan(std::slice::from_ref(&want), &[stray, existing(&want, true)]);
        assert_eq!(kinds(&plan), ["keep p-redis", "remove p-redis-old"]);
    }

    #[test]
    fn the_digest_sees_every_setting_and_ignores_variable_order() {
        let a = infra("redis", "redis:7-alpine");
        let mut b = a.clone();
        b.env.push(("A".to_owned(), "1".to_owned()));
        b.env.reverse();
        let mut c = a.clone();
        c.env.insert(0, ("A".to_owned(), "1".to_owned()));
        assert_eq!(b.digest(), c.digest());
        assert_ne!(a.digest(), b.digest());
        let changes: [fn(&mut Infra); 5] = [
            |i: &mut Infra| i.volume.push('2'),
            |i: &mut Infra| i.health.push("x".to_owned()),
            |i: &mut Infra| i.interval = Duration::from_secs(9),
            |i: &mut Infra| i.published.push((1, 2)),
            |i: &mut Infra| i.alias = Some("redis".to_owned()),
        ];
        for change in changes {
            let mut changed = a.clone();
            change(&mut changed);
            assert_ne!(a.digest(), changed.digest());
        }
    }

    /// The digest is a container label: the same inputs must give the same
    /// digest in every version of the toolkit, or an upgrade would replace
    /// (restart) every database.
    #[test]
    fn the_digest_of_the_same_inputs_never_changes() {
        let on_host = infra("redis", "redis:7-alpine");
        let mut on_bridge = on_host.clone();
        on_bridge.network = Networking::Bridge {
            network: "freedumb_freedumb".to_owned(),
            subnet: "172.28.0.0/24".to_owned(),
            gateway_address: "172.28.0.10".parse().unwrap(),
        };
        // The values of the version that fed `format!("{:?}", network)`.
        assert_eq!(on_host.digest(), "a14f3b6ce5660aef");
        assert_eq!(on_bridge.digest(), "da9535a97fceedaf");
    }

    #[test]
    fn debug_output_names_the_variables_but_never_their_values() {
        let mut redis = infra("redis", "redis:7-alpine");
        redis.env = vec![("REDIS_PASSWORD".to_owned(), "s3cr3t-value".to_owned())];
        for shown in [format!("{redis:?}"), format!("{redis:#?}"), format!("{:?}", Step::Create(redis.clone()))] {
            assert!(!shown.contains("s3cr3t-value"), "{shown}");
            assert!(shown.contains("REDIS_PASSWORD=***") && shown.contains("redis:7-alpine"), "{shown}");
        }
    }

    /// What `deploy --env dev` runs is what the rendered compose file
    /// describes: images, variables, volumes, published ports, aliases,
    /// health checks (Redis's without `grep`) and Redis's command.
    #[test]
    fn dev_runs_the_infrastructure_of_its_rendered_compose_file() {
        let root = crate::project_root();
        let dev = crate::environment::load(&root, "dev").unwrap();
        let network = Networking::of(&dev, "freedumb");
        let bridge = Networking::Bridge {
            network: "freedumb_freedumb".to_owned(),
            subnet: "172.28.0.0/24".to_owned(),
            gateway_address: "172.28.0.10".parse().unwrap(),
        };
        assert_eq!(network, bridge);
        let infra = desired(&dev, "freedumb", &network, &|name| format!("value of {name}"));
        let path = root.join("xtask/golden/dev/docker-compose.yml");
        let compose: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let strings = |value: &serde_yaml::Value| -> Vec<String> {
            value.as_sequence().unwrap().iter().map(|v| v.as_str().unwrap().replace("$$", "$")).collect()
        };

        assert_eq!(infra.iter().map(|i| i.service).collect::<Vec<_>>(), ["postgres", "redis", "rabbitmq"]);
        for infra in &infra {
            let rendered = &compose["services"][infra.service];
            assert_eq!(rendered["image"].as_str(), Some(infra.image.as_str()), "{}", infra.service);
            let keys: Vec<&str> =
                rendered["environment"].as_mapping().unwrap().keys().map(|k| k.as_str().unwrap()).collect();
            assert_eq!(infra.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), keys, "{}", infra.service);
            let volume = format!("freedumb_{}", strings(&rendered["volumes"])[0]);
            assert_eq!(volume, format!("{}:{}", infra.volume, infra.mount));
            let published: Vec<String> =
                infra.published.iter().map(|(host, inside)| format!("127.0.0.1:{host}:{inside}")).collect();
            assert_eq!(published, strings(&rendered["ports"]), "{}", infra.service);
            assert_eq!(infra.alias.as_deref(), Some(infra.service), "reachable as its compose service name");
            if infra.service != "redis" {
                assert_eq!(infra.health, strings(&rendered["healthcheck"]["test"]), "{}", infra.service);
            }
        }
        assert_eq!(infra[1].command.clone().unwrap(), strings(&compose["services"]["redis"]["command"]));
        assert!(infra[1].health[1].starts_with("[ \"$(REDISCLI_AUTH=\"$REDIS_PASSWORD\" redis-cli ping)\" = PONG ]"));
    }

    /// On the host's network (a local environment) Redis listens on its own
    /// address and port, publishes nothing and has no alias; the external
    /// Postgres and RabbitMQ get no container.
    #[test]
    fn test_infra_runs_redis_alone_on_the_host_network_at_its_address_and_port() {
        let root = crate::project_root();
        let environment = crate::environment::load(&root, "test-infra").unwrap();
        let network = Networking::of(&environment, "p");
        assert_eq!(network, Networking::Host);

        let infra = desired(&environment, "p", &network, &|name| format!("value of {name}"));

        let [redis] = infra.as_slice() else { panic!("{infra:?}") };
        assert_eq!((redis.service, redis.container.as_str()), ("redis", "p-redis"));
        assert_eq!(redis.image, "freedumb-test-redis:offline");
        let command = redis.command.clone().unwrap().join(" ");
        assert!(command.ends_with("--maxmemory 64mb --maxmemory-policy allkeys-lru --bind 127.0.0.1 --port 16379"));
        assert!(!command.contains("value of"), "the password stays out of the command line: {command}");
        assert_eq!(redis.env, [("REDIS_PASSWORD".to_owned(), "value of REDIS_PASSWORD".to_owned())]);
        assert!(redis.health[1].contains("redis-cli -h 127.0.0.1 -p 16379 ping"), "{:?}", redis.health);
        assert_eq!((redis.volume.as_str(), redis.mount), ("p_redis_data", "/data"));
        assert!(redis.published.is_empty() && redis.alias.is_none());
    }

    #[test]
    fn on_a_bridge_a_container_is_reachable_by_its_alias_and_published_on_loopback_only() {
        let mut redis = infra("redis", "redis:7-alpine");
        redis.alias = Some("redis".to_owned());
        redis.published = vec![(6379, 6379)];
        redis.network = Networking::Bridge {
            network: "freedumb_freedumb".to_owned(),
            subnet: "172.28.0.0/24".to_owned(),
            gateway_address: "172.28.0.10".parse().unwrap(),
        };
        let body = redis.body("freedumb");
        let host = body.host_config.as_ref().unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("freedumb_freedumb"));
        assert_eq!(host.binds.as_deref(), Some(&["p_redis_data:/data".to_owned()][..]));
        let binding = &host.port_bindings.as_ref().unwrap()["6379/tcp"].as_ref().unwrap()[0];
        assert_eq!((binding.host_ip.as_deref(), binding.host_port.as_deref()), (Some("127.0.0.1"), Some("6379")));
        let endpoint =
            &body.networking_config.as_ref().unwrap().endpoints_config.as_ref().unwrap()["freedumb_freedumb"];
        assert_eq!(endpoint.aliases.as_deref(), Some(&["redis".to_owned()][..]));
        assert_eq!(body.hostname.as_deref(), Some("redis"));
        let labels = body.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_ROLE], ROLE_INFRA);
        assert_eq!(labels[LABEL_DIGEST], redis.digest());

        let on_host = infra("redis", "redis:7-alpine").body("freedumb");
        assert_eq!(on_host.host_config.as_ref().unwrap().network_mode.as_deref(), Some("host"));
        assert!(on_host.networking_config.is_none() && on_host.host_config.unwrap().port_bindings.is_none());
    }
}

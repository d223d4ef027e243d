//! Converging the engine to a deployment: what should run (`Desired`, one
//! per replica), what runs (`Running`, read back from container labels), the
//! plan between them (`plan`, pure, tested without an engine), and carrying
//! it out (`apply`), one replica at a time.
//!
//! Containers use the host's network, so two containers of one replica
//! cannot share a port: each replica has two slots, and a replacement starts
//! in the slot the old container does not use (`port`), is waited on until
//! healthy, and only then is the old one stopped (SIGTERM, which drains its
//! in-flight requests). If the new container does not get healthy in time,
//! it is removed, the old one keeps serving, every replica already replaced
//! in this run is put back on its previous container spec, and the
//! apply fails naming the replica and its last log lines.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use bollard::models::ContainerSummary;

use super::{Engine, LABEL_PROJECT, LABEL_SERVICE, Spec, container_name};
use crate::progress::{Event, Progress};

/// The replica's index within its service.
pub const LABEL_REPLICA: &str = "io.freedumb.replica";
/// 0 or 1: which of the replica's two ports the container uses.
pub const LABEL_SLOT: &str = "io.freedumb.slot";
/// The port the container serves on.
pub const LABEL_PORT: &str = "io.freedumb.port";
/// A digest of everything the container was created from (image, command,
/// variables): a container whose digest differs from the desired one is
/// replaced, one whose digest matches is kept.
pub const LABEL_DIGEST: &str = "io.freedumb.digest";

/// One replica as it should run.
#[derive(Clone)]
pub struct Desired {
    pub service: String,
    pub replica: u32,
    /// The service's own port; the replica's slots are derived from it.
    pub base_port: u16,
    pub image: String,
    /// The image's content id (`sha256:…`): a tag built again with other
    /// content (a `-dirty` tag after an edit) is a change, though the tag
    /// is the same.
    pub image_id: String,
    pub command: Vec<String>,
    /// Without PORT, which depends on the slot.
    pub env: Vec<(String, String)>,
    /// The health check's path (`/ready`).
    pub probe_path: String,
}

/// By hand, so that a `{:?}` never prints the variables' values (secrets
/// among them).
impl std::fmt::Debug for Desired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: Vec<String> = self.env.iter().map(|(key, _)| format!("{key}=***")).collect();
        f.debug_struct("Desired")
            .field("service", &self.service)
            .field("replica", &self.replica)
            .field("base_port", &self.base_port)
            .field("image", &self.image)
            .field("image_id", &self.image_id)
            .field("command", &self.command)
            .field("env", &env)
            .field("probe_path", &self.probe_path)
            .finish()
    }
}

impl Desired {
    /// FNV-1a over every input of the container, in a fixed order: stable
    /// across runs and toolchains, unlike `std`'s hasher.
    pub fn digest(&self) -> String {
        let mut hash = crate::digest::Fnv1a::default();
        let mut feed = |part: &str| {
            hash.field(part);
        };
        feed(&self.image);
        feed(&self.image_id);
        self.command.iter().for_each(|arg| feed(arg));
        let mut env = self.env.clone();
        env.sort();
        for (key, value) in &env {
            feed(key);
            feed(value);
        }
        feed(&self.probe_path);
        hash.hex()
    }
}

/// The port of a replica's slot: the service's port for replica 0 slot 0,
/// then 1000 up per replica and 10000 up for slot 1 (auth 3001: replicas at
/// 3001, 4001, ...; their replacements at 13001, 14001, ...).
pub fn port(base_port: u16, replica: u32, slot: u8) -> anyhow::Result<u16> {
    let port = u32::from(base_port) + 1000 * replica + 10000 * u32::from(slot);
    match u16::try_from(port) {
        Ok(port) => Ok(port),
        Err(_) => bail!("replica {replica} of the service on port {base_port} would need port {port}"),
    }
}

/// A container of the deployment, as its labels describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub name: String,
    pub service: String,
    pub replica: u32,
    pub slot: u8,
    pub port: u16,
    pub digest: String,
    pub running: bool,
}

impl Running {
    /// `None` for containers that are not replicas (a one-off, the gateway).
    pub fn from_summary(summary: &ContainerSummary) -> Option<Running> {
        let labels = summary.labels.as_ref()?;
        Some(Running {
            name: container_name(summary),
            service: labels.get(LABEL_SERVICE)?.clone(),
            replica: labels.get(LABEL_REPLICA)?.parse().ok()?,
            slot: labels.get(LABEL_SLOT)?.parse().ok()?,
            port: labels.get(LABEL_PORT)?.parse().ok()?,
            digest: labels.get(LABEL_DIGEST).cloned().unwrap_or_default(),
            running: super::is_running(summary),
        })
    }
}

#[derive(Debug, Clone)]
pub enum Action {
    Keep(Running),
    Create(Desired),
    /// Start `new` in the other slot, wait until healthy, stop `old`.
    Replace {
        old: Running,
        new: Desired,
    },
    Remove(Running),
}

/// What to do so that `actual` becomes `desired`. Replicas are matched by
/// service and index; a stopped container is replaced even when its digest
/// matches. Extra containers of one replica (left by an interrupted run)
/// are removed. Removals come last, so capacity only ever grows first.
pub fn plan(desired: &[Desired], actual: &[Running]) -> Vec<Action> {
    let mut by_replica: BTreeMap<(&str, u32), Vec<&Running>> = BTreeMap::new();
    for running in actual {
        by_replica.entry((running.service.as_str(), running.replica)).or_default().push(running);
    }
    let mut actions = Vec::new();
    let mut removals = Vec::new();
    for want in desired {
        let digest = want.digest();
        let mut existing = by_replica.remove(&(want.service.as_str(), want.replica)).unwrap_or_default();
        // Prefer a running container with the right digest, then any running one.
        existing.sort_by_key(|r| (!(r.running && r.digest == digest), !r.running, r.slot));
        let mut existing = existing.into_iter();
        match existing.next() {
            Some(current) if current.running && current.digest == digest => actions.push(Action::Keep(current.clone())),
            Some(current) => actions.push(Action::Replace { old: current.clone(), new: want.clone() }),
            None => actions.push(Action::Create(want.clone())),
        }
        removals.extend(existing.cloned().map(Action::Remove));
    }
    removals.extend(by_replica.into_values().flatten().cloned().map(Action::Remove));
    actions.extend(removals);
    actions
}

/// The `plan` event of `plan`: counts, and per service the replicas it
/// changes (the length of the service's progress bar).
pub fn plan_event(project: &str, image: &str, plan: &[Action]) -> Event {
    let (mut create, mut replace, mut remove, mut keep) = (0, 0, 0, 0);
    let mut services: BTreeMap<String, usize> = BTreeMap::new();
    for action in plan {
        let service = match action {
            Action::Keep(_) => {
                keep += 1;
                continue;
            }
            Action::Create(want) => {
                create += 1;
                &want.service
            }
            Action::Replace { new, .. } => {
                replace += 1;
                &new.service
            }
            Action::Remove(running) => {
                remove += 1;
                &running.service
            }
        };
        *services.entry(service.clone()).or_default() += 1;
    }
    Event::Plan { project: project.to_owned(), image: image.to_owned(), create, replace, remove, keep, services }
}

/// Whether a plan changes anything.
pub fn changes(plan: &[Action]) -> bool {
    plan.iter().any(|action| !matches!(action, Action::Keep(_)))
}

/// The container of `want` in `slot`.
fn spec<'a>(project: &str, want: &'a Desired, slot: u8) -> anyhow::Result<(String, Spec<'a>)> {
    let port = port(want.base_port, want.replica, slot)?;
    let name = format!("{project}-{}-{}-{}", want.service, want.replica + 1, ["a", "b"][usize::from(slot)]);
    let mut env = want.env.clone();
    env.push(("PORT".to_owned(), port.to_string()));
    let labels = BTreeMap::from([
        (LABEL_PROJECT.to_owned(), project.to_owned()),
        (LABEL_SERVICE.to_owned(), want.service.clone()),
        (LABEL_REPLICA.to_owned(), want.replica.to_string()),
        (LABEL_SLOT.to_owned(), slot.to_string()),
        (LABEL_PORT.to_owned(), port.to_string()),
        (LABEL_DIGEST.to_owned(), want.digest()),
    ]);
    let spec = Spec {
        image: &want.image,
        command: want.command.clone(),
        env,
        labels,
        probe: Some(format!("http://127.0.0.1:{port}{}", want.probe_path)),
        // Quick enough to gate a rollout on, slow enough that the checks'
        // own log lines do not drown the service's.
        interval: Duration::from_secs(1),
        stop_timeout_secs: STOP_TIMEOUT_SECS,
    };
    Ok((name, spec))
}

/// `freedumb` drains for up to SHUTDOWN_TIMEOUT_SECS (30 s); then SIGKILL.
const STOP_TIMEOUT_SECS: i64 = 35;

/// The addresses of each service's serving replicas, as the gateway's
/// upstreams list them.
pub type Servers = BTreeMap<String, Vec<String>>;

/// Points the gateway at the given replicas (see `Apply::switch`).
pub type Switch<'a> = &'a mut dyn FnMut(&Servers) -> anyhow::Result<Routed>;

/// The services a gateway routes to once switched: none when no gateway
/// runs yet, never a worker.
pub type Routed = std::collections::BTreeSet<String>;

/// Options of `apply`.
pub struct Apply<'a> {
    pub project: &'a str,
    /// How long a new container gets to become healthy.
    pub health_timeout: Duration,
    /// Where each replica's steps are reported.
    pub progress: &'a Progress,
    /// Points the gateway at these replicas, and returns once it sends new
    /// requests only there: the services it routes, none when no gateway
    /// runs yet (it starts once every routed service has a replica). Called after a new replica is healthy and before
    /// the one it replaces is stopped, so no request reaches a stopped
    /// replica.
    pub switch: Option<Switch<'a>>,
}

/// Which replica serves on which port, per service.
#[derive(Debug, Default, Clone)]
struct Serving(BTreeMap<String, BTreeMap<u32, u16>>);

impl Serving {
    fn set(&mut self, service: &str, replica: u32, port: Option<u16>) {
        let replicas = self.0.entry(service.to_owned()).or_default();
        match port {
            Some(port) => replicas.insert(replica, port),
            None => replicas.remove(&replica),
        };
    }

    fn servers(&self) -> Servers {
        self.0
            .iter()
            .map(|(service, replicas)| {
                (service.clone(), replicas.values().map(|port| format!("127.0.0.1:{port}")).collect())
            })
            .collect()
    }
}

/// What serves before `plan` is carried out: its running containers.
fn serving_before(plan: &[Action]) -> Serving {
    let mut serving = Serving::default();
    for action in plan {
        match action {
            Action::Keep(old) | Action::Replace { old, .. } | Action::Remove(old) if old.running => {
                serving.set(&old.service, old.replica, Some(old.port))
            }
            _ => {}
        }
    }
    serving
}

/// The gateway's upstreams before `plan` is carried out (and after, when
/// it changes nothing).
pub fn servers_before(plan: &[Action]) -> Servers {
    serving_before(plan).servers()
}

/// The services a gateway now routes to `serving`.
fn switch(apply: &mut Apply<'_>, serving: &Serving) -> anyhow::Result<Routed> {
    match apply.switch.as_mut() {
        Some(switch) => switch(&serving.servers()),
        None => Ok(Routed::new()),
    }
}

/// Carries out `plan`. On a replica that does not get healthy, puts every
/// replica replaced so far back on the container it replaced (recreated
/// from `previous`, the specs the old containers had) and fails.
pub fn apply(engine: &Engine, plan: &[Action], apply: &mut Apply<'_>) -> anyhow::Result<()> {
    let mut serving = serving_before(plan);
    // The gateway may predate these containers (or not run yet): point it
    // at what serves now before changing anything.
    switch(apply, &serving)?;
    // (the new container, the one it replaced) for the rollback.
    let mut replaced: Vec<(String, Running, u16)> = Vec::new();
    for action in plan {
        let result = match action {
            Action::Keep(running) => {
                apply.progress.emit(Event::Unchanged {
                    service: running.service.clone(),
                    replica: running.replica + 1,
                    container: running.name.clone(),
                });
                Ok(())
            }
            Action::Create(want) => start(engine, apply, want, 0).and_then(|(name, port)| {
                serving.set(&want.service, want.replica, Some(port));
                if switch(apply, &serving)?.contains(&want.service) {
                    apply.progress.emit(Event::TrafficSwitched {
                        service: want.service.clone(),
                        replica: want.replica + 1,
                        container: name,
                    });
                }
                Ok(())
            }),
            Action::Replace { old, new } => {
                let slot = 1 - old.slot.min(1);
                start(engine, apply, new, slot).and_then(|(name, port)| {
                    replaced.push((name.clone(), old.clone(), port));
                    serving.set(&new.service, new.replica, Some(port));
                    if switch(apply, &serving)?.contains(&new.service) {
                        apply.progress.emit(Event::TrafficSwitched {
                            service: new.service.clone(),
                            replica: new.replica + 1,
                            container: name,
                        });
                    }
                    // Stopped, not removed: a rollback starts it again.
                    // SIGTERM: it drains its open requests first.
                    let stopping = Instant::now();
                    engine.stop(&old.name, STOP_TIMEOUT_SECS as i32)?;
                    apply.progress.emit(Event::OldStopped {
                        service: old.service.clone(),
                        replica: old.replica + 1,
                        container: old.name.clone(),
                        seconds: stopping.elapsed().as_secs_f64(),
                    });
                    Ok(())
                })
            }
            Action::Remove(running) => {
                serving.set(&running.service, running.replica, None);
                switch(apply, &serving)
                    .and_then(|_| engine.stop(&running.name, STOP_TIMEOUT_SECS as i32))
                    .and_then(|()| engine.remove(&running.name, true))
                    .map(|()| {
                        apply.progress.emit(Event::Removed {
                            service: running.service.clone(),
                            replica: running.replica + 1,
                            container: running.name.clone(),
                        })
                    })
            }
        };
        if let Err(err) = result {
            // The outermost context names the replica that failed.
            roll_back(engine, apply, &replaced, &mut serving, &err.to_string());
            return Err(err.context("the rollout stopped; every replica is back on its previous container"));
        }
    }
    // Done: the replaced containers are no longer needed.
    for (_, old, _) in &replaced {
        engine.remove(&old.name, true)?;
    }
    Ok(())
}

/// Starts `want` in `slot` and waits until it is healthy: its name and port.
fn start(engine: &Engine, apply: &mut Apply<'_>, want: &Desired, slot: u8) -> anyhow::Result<(String, u16)> {
    let (name, spec) = spec(apply.project, want, slot)?;
    let port = port(want.base_port, want.replica, slot)?;
    // A leftover of an interrupted run in this slot is not serving: replace it.
    engine.remove(&name, true)?;
    let (service, replica) = (want.service.clone(), want.replica + 1);
    apply.progress.emit(Event::ReplicaStarting {
        service: service.clone(),
        replica,
        container: name.clone(),
        image: want.image.clone(),
    });
    let started = Instant::now();
    engine.run(&name, spec.body())?;
    if let Err(err) = engine.wait_healthy(&name, Instant::now() + apply.health_timeout) {
        // The log goes with the container: read it first.
        let log = engine.last_log_lines(&name, 10).lines().map(str::to_owned).collect();
        let _ = engine.remove(&name, true);
        let reason = err.to_string();
        let reason = reason.lines().next().unwrap_or_default().trim_end_matches("; the last lines of its log:");
        apply.progress.emit(Event::ReplicaFailed {
            service: service.clone(),
            replica,
            container: name.clone(),
            reason: reason.to_owned(),
            log,
        });
        return Err(err.context(format!("replica {replica} of {service} did not become healthy")));
    }
    apply.progress.emit(Event::ReplicaHealthy {
        service,
        replica,
        container: name.clone(),
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok((name, port))
}

/// Starts each replaced container again, points the gateway back at it,
/// and removes its replacement, newest first.
fn roll_back(
    engine: &Engine,
    apply: &mut Apply<'_>,
    replaced: &[(String, Running, u16)],
    serving: &mut Serving,
    reason: &str,
) {
    for (new, old, _) in replaced.iter().rev() {
        let result = engine
            .start(&old.name)
            .and_then(|()| engine.wait_healthy(&old.name, Instant::now() + apply.health_timeout))
            .and_then(|()| {
                serving.set(&old.service, old.replica, Some(old.port));
                switch(apply, serving)
            })
            .and_then(|_| engine.stop(new, STOP_TIMEOUT_SECS as i32))
            .and_then(|()| engine.remove(new, true));
        match result {
            Ok(()) => apply.progress.emit(Event::RolledBack {
                service: old.service.clone(),
                replica: old.replica + 1,
                container: old.name.clone(),
                reason: reason.to_owned(),
            }),
            Err(err) => apply.progress.warn(format!("rolling {new} back to {} failed: {err:#}", old.name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(service: &str, replica: u32, image: &str) -> Desired {
        Desired {
            service: service.to_owned(),
            replica,
            base_port: 3001,
            image: image.to_owned(),
            image_id: format!("sha256:{image}"),
            command: vec!["serve".to_owned(), service.to_owned()],
            env: vec![("LOG_LEVEL".to_owned(), "info".to_owned())],
            probe_path: "/ready".to_owned(),
        }
    }

    fn running(want: &Desired, slot: u8, running: bool) -> Running {
        Running {
            name: format!("p-{}-{}-{slot}", want.service, want.replica + 1),
            service: want.service.clone(),
            replica: want.replica,
            slot,
            port: port(want.base_port, want.replica, slot).unwrap(),
            digest: want.digest(),
            running,
        }
    }

    fn kinds(plan: &[Action]) -> Vec<String> {
        plan.iter()
            .map(|action| match action {
                Action::Keep(r) => format!("keep {}", r.name),
                Action::Create(d) => format!("create {}/{}", d.service, d.replica),
                Action::Replace { old, new } => format!("replace {} with {}", old.name, new.image),
                Action::Remove(r) => format!("remove {}", r.name),
            })
            .collect()
    }

    #[test]
    fn nothing_running_creates_every_replica() {
        let want = [desired("auth", 0, "i:1"), desired("auth", 1, "i:1")];
        let plan = plan(&want, &[]);
        assert_eq!(kinds(&plan), ["create auth/0", "create auth/1"]);
        assert!(changes(&plan));
    }

    #[test]
    fn the_same_deployment_again_keeps_everything() {
        let want = [desired("auth", 0, "i:1"), desired("auth", 1, "i:1")];
        let actual = [running(&want[0], 0, true), running(&want[1], 1, true)];
        let plan = plan(&want, &actual);
        assert_eq!(kinds(&plan), ["keep p-auth-1-0", "keep p-auth-2-1"]);
        assert!(!changes(&plan));
    }

    #[test]
    fn a_new_image_or_setting_replaces_each_replica() {
        let old = [desired("auth", 0, "i:1"), desired("auth", 1, "i:1")];
        let actual = [running(&old[0], 0, true), running(&old[1], 0, true)];
        let mut want = [desired("auth", 0, "i:2"), desired("auth", 1, "i:1")];
        want[1].env.push(("LOG_LEVEL".to_owned(), "debug".to_owned()));
        assert_eq!(kinds(&plan(&want, &actual)), ["replace p-auth-1-0 with i:2", "replace p-auth-2-0 with i:1"]);
    }

    #[test]
    fn a_tag_built_again_with_other_content_replaces_each_replica() {
        let old = desired("auth", 0, "freedumb:abc-dirty");
        let actual = [running(&old, 0, true)];
        let mut rebuilt = old.clone();
        rebuilt.image_id = "sha256:after-an-edit".to_owned();
        assert_eq!(kinds(&plan(&[rebuilt], &actual)), ["replace p-auth-1-0 with freedumb:abc-dirty"]);
        assert_eq!(kinds(&plan(&[old], &actual)), ["keep p-auth-1-0"]);
    }

    #[test]
    fn a_desired_replica_never_shows_its_variables_values() {
        let mut want = desired("auth", 0, "i:1");
        want.env.push(("JWT_ACCESS_SECRET".to_owned(), "hunter2-hunter2".to_owned()));
        let shown = format!("{want:?}");
        assert!(shown.contains("JWT_ACCESS_SECRET=***") && !shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn a_stopped_container_is_replaced_even_when_it_matches() {
        let want = [desired("auth", 0, "i:1")];
        assert_eq!(kinds(&plan(&want, &[running(&want[0], 0, false)])), ["replace p-auth-1-0 with i:1"]);
    }

    #[test]
    fn fewer_replicas_or_a_disabled_service_removes_containers_last() {
        let auth = [desired("auth", 0, "i:1"), desired("auth", 1, "i:1")];
        let budget = desired("budget", 0, "i:1");
        let actual = [running(&auth[0], 0, true), running(&auth[1], 0, true), running(&budget, 0, true)];
        let plan = plan(&auth[..1], &actual);
        assert_eq!(kinds(&plan), ["keep p-auth-1-0", "remove p-auth-2-0", "remove p-budget-1-0"]);
    }

    #[test]
    fn a_leftover_second_container_of_a_replica_is_removed() {
        let want = [desired("auth", 0, "i:1")];
        let stale = Running { digest: "old".to_owned(), ..running(&want[0], 1, true) };
        let plan = plan(&want, &[stale, running(&want[0], 0, true)]);
        assert_eq!(kinds(&plan), ["keep p-auth-1-0", "remove p-auth-1-1"]);
    }

    #[test]
    fn the_digest_ignores_variable_order_and_sees_every_value() {
        let mut a = desired("auth", 0, "i:1");
        a.env.push(("A".to_owned(), "1".to_owned()));
        let mut b = a.clone();
        b.env.reverse();
        assert_eq!(a.digest(), b.digest());
        b.env[0].1 = "2".to_owned();
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn slots_and_replicas_get_distinct_ports() {
        assert_eq!(port(3001, 0, 0).unwrap(), 3001);
        assert_eq!(port(3001, 1, 0).unwrap(), 4001);
        assert_eq!(port(3001, 0, 1).unwrap(), 13001);
        assert!(port(60000, 0, 1).is_err());
    }
}

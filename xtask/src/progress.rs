//! What the container and Kubernetes verbs (`build`, `deploy --containers`,
//! `deploy --env staging|prod`, `rollback`) are doing, as they do it. Every step reports an `Event` to one `Progress`,
//! which renders it one of three ways:
//!
//! - **bars**, when stderr is a terminal: each event's line scrolls above a
//!   spinner for the current phase and one bar per service being rolled
//!   (replicas done out of replicas to change; on Kubernetes, one per
//!   Deployment, done when it has rolled out);
//! - **lines**, when it is not (CI logs, the end-to-end tests, `| tee`): one
//!   plain line per event on stderr, nothing redrawn;
//! - **json** (`--output json`), for scripts: one JSON object per line on
//!   stdout (newline-delimited JSON), the last of which is always the
//!   `summary`. Anything meant for people (cargo's and the image builder's
//!   output) stays on stderr.
//!
//! In the first two, the result (the status table, the image built) goes to
//! stdout, so `2>/dev/null` leaves only it.
//!
//! # The JSON events
//!
//! Every object has `event` (its kind, below) and `t`, the seconds since
//! the command started (one decimal). Replicas are numbered from 1, as in
//! container names; `seconds` are durations of the step the event ends.
//!
//! | `event` | other fields |
//! | --- | --- |
//! | `step` | `message`: a phase begins ("checking the external infrastructure") |
//! | `warning` | `message` |
//! | `build_started` | `image` (the tag) |
//! | `build_finished` | `image`, `id`, `size` (bytes), `seconds` |
//! | `migrate_started` | `container`, `image` |
//! | `migrate_finished` | `container`, `seconds` |
//! | `plan` | `project`, `image`, `create`, `replace`, `remove`, `keep` (counts), `services` (service → replicas to change) |
//! | `replica_starting` | `service`, `replica`, `container`, `image` |
//! | `replica_healthy` | `service`, `replica`, `container`, `seconds` (from start to healthy) |
//! | `replica_failed` | `service`, `replica`, `container`, `reason`, `log` (its last lines, an array) |
//! | `traffic_switched` | `service`, `replica`, `container`: the gateway sends that replica's new requests there |
//! | `old_stopped` | `service`, `replica`, `container`, `seconds`: the replaced container drained and stopped |
//! | `removed` | `service`, `replica`, `container` |
//! | `unchanged` | `service`, `replica`, `container` |
//! | `rolled_back` | `service`, `replica`, `container` (serving again), `reason` |
//! | `gateway_started` | `container`, `image` |
//! | `gateway_reloaded` | `container`, `upstreams` (the version it answers with), `seconds` |
//! | `gateway_replaced` | `old`, `new`, `image`, `seconds`: a new gateway container took over the port |
//! | `nothing_to_do` | `project`, `image` |
//! | `converged` | `project`, `image`, `seconds` (the whole deploy) |
//! | `image_pulling` | `image`, `needed_by`: the engine lacks it, the registry is asked |
//! | `image_pulled` | `image`, `seconds` |
//! | `network_created` | `network`, `subnet` |
//! | `volume_created` | `service`, `volume` |
//! | `infra_starting` | `service` (`postgres`, `redis`, ...), `container`, `image` |
//! | `infra_replacing` | `service`, `container` (the one stopped), `volume` (kept) |
//! | `infra_healthy` | `service`, `container`, `seconds` (from start, or from the check, to healthy) |
//! | `infra_unchanged` | `service`, `container` |
//! | `infra_removed` | `service`, `container`: the service is external now; its volume stays |
//! | `object_applied` | `object` (`Deployment.apps freedumb/auth-service`), `action`: `created`, `configured` or `unchanged` (server-side apply, field manager `freedumb`) |
//! | `object_pruned` | `object`: a member of the set no longer rendered, deleted (`--prune`) |
//! | `secret_ready` | `object` (the ExternalSecret), `seconds`: its Secret is synced, the workloads may start |
//! | `rollout_waiting` | `workload` (the Deployment), `message`: what `kubectl rollout status` would say it waits for |
//! | `rolled_out` | `workload`, `seconds` |
//! | `rollout_failed` | `workload`, `pod`, `container`, `reason` (`CrashLoopBackOff`, `ImagePullBackOff`, ..., or the progress deadline), `message`, `events` and `log` (the pod's last events and log lines, arrays) |
//! | `set_rolled_back` | `namespace`, `revision` (the set's revision now serving), `reason` |
//! | `summary` | `ok: true` and the verb's result (`build`: `image`, `id`, `size`; `deploy`: `project`, `image`, `changed`, `gateway`, `containers` as `status --output json` lists them; a Kubernetes `deploy`: `context`, `namespace`, `image`, `changed`, `revision`, `applied`, `pruned`), or `ok: false` and `error` |
//!
//! A script waits for the last line and reads `ok`:
//! `cargo xtask deploy --containers --output json | tail -n1 | jq -e .ok`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
#[cfg(test)]
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::build::Output;

/// Something that happened; see the module documentation for the fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Step {
        message: String,
    },
    Warning {
        message: String,
    },
    BuildStarted {
        image: String,
    },
    BuildFinished {
        image: String,
        id: String,
        size: i64,
        #[serde(serialize_with = "millis")]
        seconds: f64,
    },
    MigrateStarted {
        container: String,
        image: String,
    },
    MigrateFinished {
        container: String,
        #[serde(serialize_with = "millis")]
        seconds: f64,
    },
    Plan {
        project: String,
        image: String,
        create: usize,
        replace: usize,
        remove: usize,
        keep: usize,
        services: BTreeMap<String, usize>,
    },
    ReplicaStarting {
        service: String,
        replica: u32,
        container: String,
        image: String,
    },
    ReplicaHealthy {
        service: String,
        replica: u32,
        container: String,
        #[serde(serialize_with = "millis")]
        seconds: f64,
    },
    ReplicaFailed {
        service: String,
        replica: u32,
        container: String,
        reason: String,
        log: Vec<String>,
    },
    TrafficSwitched {
        service: String,
        replica: u32,
        container: String,
    },
    OldStopped {
        service: String,
        replica: u32,
        container: String,
        #[serde(serialize_with = "millis")]
        seconds: f64,
    },
    Removed {
        service: String,
        replica: u32,
        container: String,
    },
    Unchanged {
        service: String,
        replica: u32,
        container: String,
    },
    RolledBack {
        service: String,
        replica: u32,
        container: String,
        reason: String,
    },
    GatewayStarted {
        container: String,
        image: String,
    },
    GatewayReloaded {
        container: String,
        upstreams: String,
        #[serde(serialize_with = "millis")]
        seconds: f64,
    },
    GatewayReplaced {
        old: String,
        new: String,
        image: String,
        #[serde(serialize_with = "millis")]
        seconds: f64,
    },
    NothingToDo {
        project: String,
        image: String,
    },
    Converged {
        project: String,
        image: String,
        #[serde(serialize_with = "millis")]
        seconds: f64,
    },
    ImagePulling {
        image: String,
        needed_by: String,
    },
    ImagePulled {
        image: String,
        #[serde(serialize_with = "millis")]
        seconds: f64,
    },
    NetworkCreated {
        network: String,
        subnet: String,
    },
    VolumeCreated {
        service: String,
        volume: String,
    },
    InfraStarting {
        service: String,
        container: String,
        image: String,
    },
    InfraReplacing {
        service: String,
        container: String,
        volume: String,
    },
    InfraHealthy {
        service: String,
        container: String,
        #[serde(serialize_with = "millis")]
        seconds: f64,
    },
    InfraUnchanged {
        service: String,
        container: String,
    },
    InfraRemoved {
        service: String,
        container: String,
    },
    ObjectApplied {
        object: String,
        action: String,
    },
    ObjectPruned {
        object: String,
    },
    SecretReady {
        object: String,
        #[serde(serialize_with = "millis")]
        seconds: f64,
    },
    RolloutWaiting {
        workload: String,
        message: String,
    },
    RolledOut {
        workload: String,
        #[serde(serialize_with = "millis")]
        seconds: f64,
    },
    RolloutFailed {
        workload: String,
        pod: String,
        container: String,
        reason: String,
        message: String,
        events: Vec<String>,
        log: Vec<String>,
    },
    SetRolledBack {
        namespace: String,
        revision: u64,
        reason: String,
    },
}

/// Durations to the millisecond: more is noise.
fn millis<S: serde::Serializer>(seconds: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64((seconds * 1000.0).round() / 1000.0)
}

impl Event {
    /// The event as one line for people (the `lines` rendering, and the
    /// log above the bars).
    pub fn line(&self) -> String {
        let mb = |size: i64| size as f64 / 1e6;
        match self {
            Event::Step { message } => format!("==> {message}"),
            Event::Warning { message } => format!("warning: {message}"),
            Event::BuildStarted { image } => format!("==> building image {image}"),
            Event::BuildFinished { image, id, size, seconds } => {
                format!("built {image} ({id}, {:.1} MB) in {seconds:.1} s", mb(*size))
            }
            Event::MigrateStarted { container, image } => {
                format!("==> migrating the database: {container} ({image}), a one-off container")
            }
            Event::MigrateFinished { container, seconds } => format!("{container}: migrated in {seconds:.1} s"),
            Event::Plan { project, image, create, replace, remove, keep, .. } => format!(
                "==> converging {project} to {image}: {create} to create, {replace} to replace one at a time, \
                 {remove} to remove, {keep} unchanged"
            ),
            Event::ReplicaStarting { service, replica, container, image } => {
                format!("  {service} {replica}: starting {container} ({image})")
            }
            Event::ReplicaHealthy { service, replica, container, seconds } => {
                format!("  {service} {replica}: {container} healthy after {seconds:.1} s")
            }
            Event::ReplicaFailed { service, replica, container, reason, log } => {
                let mut line = format!("  {service} {replica}: {container} FAILED: {reason}");
                if !log.is_empty() {
                    line.push_str("; its last log lines:");
                    for entry in log {
                        line.push_str("\n    | ");
                        line.push_str(entry);
                    }
                }
                line
            }
            Event::TrafficSwitched { service, replica, container } => {
                format!("  {service} {replica}: the gateway sends new requests to {container}")
            }
            Event::OldStopped { service, replica, container, seconds } => {
                format!("  {service} {replica}: {container} drained and stopped in {seconds:.1} s")
            }
            Event::Removed { service, replica, container } => format!("  {service} {replica}: removed {container}"),
            Event::Unchanged { service, replica, container } => format!("  {service} {replica}: {container} unchanged"),
            Event::RolledBack { service, replica, container, reason } => {
                format!("  {service} {replica}: rolled back, {container} serves again ({reason})")
            }
            Event::GatewayStarted { container, image } => format!("  gateway: started {container} ({image})"),
            Event::GatewayReloaded { container, upstreams, seconds } => {
                format!("  gateway: {container} reloaded, upstreams {upstreams}, in {seconds:.1} s")
            }
            Event::GatewayReplaced { old, new, image, seconds } => {
                format!("  gateway: {new} ({image}) took over from {old} in {seconds:.1} s")
            }
            Event::NothingToDo { project, image } => {
                format!("{project} already runs {image} with these settings: nothing to do")
            }
            Event::Converged { project, image, seconds } => format!("{project} converged to {image} in {seconds:.1} s"),
            Event::ImagePulling { image, needed_by } => format!("  pulling {image} (for {needed_by})"),
            Event::ImagePulled { image, seconds } => format!("  pulled {image} in {seconds:.1} s"),
            Event::NetworkCreated { network, subnet } => format!("  created network {network} ({subnet})"),
            Event::VolumeCreated { service, volume } => format!("  {service}: created volume {volume}"),
            Event::InfraStarting { service, container, image } => {
                format!("  {service}: starting {container} ({image})")
            }
            Event::InfraReplacing { service, container, volume } => {
                format!("  {service}: replacing {container}, keeping its volume {volume}")
            }
            Event::InfraHealthy { service, container, seconds } => {
                format!("  {service}: {container} healthy after {seconds:.1} s")
            }
            Event::InfraUnchanged { service, container } => format!("  {service}: {container} unchanged"),
            Event::InfraRemoved { service, container } => {
                format!("  {service}: removed {container} (its volume stays)")
            }
            Event::ObjectApplied { object, action } => format!("  {object} {action}"),
            Event::ObjectPruned { object } => format!("  {object} pruned"),
            Event::SecretReady { object, seconds } => format!("  {object} ready after {seconds:.1} s"),
            Event::RolloutWaiting { workload, message } => format!("  {workload}: {message}"),
            Event::RolledOut { workload, seconds } => format!("  {workload}: rolled out in {seconds:.1} s"),
            Event::RolloutFailed { workload, pod, container, reason, message, events, log } => {
                let mut line = format!("  {workload}: FAILED: pod {pod}, container {container}: {reason}");
                if !message.is_empty() {
                    line.push_str(": ");
                    line.push_str(message);
                }
                for (title, entries) in [("its last events", events), ("its last log lines", log)] {
                    if !entries.is_empty() {
                        line.push_str(&format!("\n    {title}:"));
                        for entry in entries {
                            line.push_str("\n    | ");
                            line.push_str(entry);
                        }
                    }
                }
                line
            }
            Event::SetRolledBack { namespace, revision, reason } => {
                format!("==> rolled {namespace} back to revision {revision}, which serves again ({reason})")
            }
        }
    }

    /// The service bar this event moves: the service, the bar's short
    /// message, and whether it completes a replica's change.
    fn service(&self) -> Option<(&str, String, bool)> {
        let (service, replica, what, done) = match self {
            Event::ReplicaStarting { service, replica, container, .. } => {
                (service, replica, format!("starting {container}"), false)
            }
            Event::ReplicaHealthy { service, replica, seconds, .. } => {
                (service, replica, format!("healthy after {seconds:.1} s"), true)
            }
            Event::TrafficSwitched { service, replica, .. } => (service, replica, "traffic switched".to_owned(), false),
            Event::OldStopped { service, replica, .. } => (service, replica, "old one drained".to_owned(), false),
            Event::ReplicaFailed { service, replica, .. } => (service, replica, "FAILED".to_owned(), false),
            Event::RolledBack { service, replica, .. } => (service, replica, "rolled back".to_owned(), false),
            Event::Removed { service, replica, .. } => (service, replica, "removed".to_owned(), true),
            // A Deployment's bar: one step, its rollout.
            Event::RolloutWaiting { workload, message } => return Some((workload, message.clone(), false)),
            Event::RolledOut { workload, seconds } => {
                return Some((workload, format!("rolled out in {seconds:.1} s"), true));
            }
            Event::RolloutFailed { workload, reason, .. } => {
                return Some((workload, format!("FAILED: {reason}"), false));
            }
            _ => return None,
        };
        Some((service.as_str(), format!("replica {replica}: {what}"), done))
    }
}

/// How events are shown (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bars,
    Lines,
    Json,
}

/// Where events go; one per command, shared by reference with every step.
pub struct Progress {
    mode: Mode,
    clock: Box<dyn Fn() -> Duration + Send + Sync>,
    /// Lines (stderr) or JSON (stdout); unused for bars.
    out: Mutex<Box<dyn Write + Send>>,
    bars: Option<Bars>,
}

struct Bars {
    multi: MultiProgress,
    /// The current phase.
    phase: ProgressBar,
    services: Mutex<BTreeMap<String, ProgressBar>>,
    /// Replicas to change per service, from the last plan.
    planned: Mutex<BTreeMap<String, usize>>,
}

impl Progress {
    /// For `--output`: bars on a terminal, plain lines elsewhere, or JSON.
    pub fn new(output: Output) -> Self {
        let mode = match output {
            Output::Json => Mode::Json,
            Output::Text if std::io::stderr().is_terminal() => Mode::Bars,
            Output::Text => Mode::Lines,
        };
        let started = Instant::now();
        let out: Box<dyn Write + Send> = match mode {
            Mode::Json => Box::new(std::io::stdout()),
            Mode::Bars | Mode::Lines => Box::new(std::io::stderr()),
        };
        Self::with(mode, out, Box::new(move || started.elapsed()))
    }

    /// Plain lines on stderr, terminal or not: for tests, which run many
    /// at once.
    #[cfg(test)]
    pub fn lines() -> Self {
        let started = Instant::now();
        Self::with(Mode::Lines, Box::new(std::io::stderr()), Box::new(move || started.elapsed()))
    }

    /// `mode` written to `out` (bars ignore it and draw on stderr), with
    /// `clock` telling the time since the start: what tests inject.
    pub fn with(mode: Mode, out: Box<dyn Write + Send>, clock: Box<dyn Fn() -> Duration + Send + Sync>) -> Self {
        let bars = (mode == Mode::Bars).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let phase = multi.add(ProgressBar::new_spinner());
            phase.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {wide_msg}").expect("a valid template"),
            );
            phase.enable_steady_tick(Duration::from_millis(120));
            Bars { multi, phase, services: Mutex::default(), planned: Mutex::default() }
        });
        Progress { mode, clock, out: Mutex::new(out), bars }
    }

    /// Reports `event`.
    pub fn emit(&self, event: Event) {
        match self.mode {
            Mode::Json => self.json_line(&event, None),
            Mode::Lines => self.write_line(&event.line()),
            Mode::Bars => self.draw(&event),
        }
    }

    /// Shorthand for a `step`.
    pub fn step(&self, message: impl Into<String>) {
        self.emit(Event::Step { message: message.into() });
    }

    /// Shorthand for a `warning`.
    pub fn warn(&self, message: impl Into<String>) {
        self.emit(Event::Warning { message: message.into() });
    }

    /// The verb's result: `text` on stdout for people, or the `summary`
    /// object (`ok: true` and `fields`, which must serialise to an object).
    pub fn finish(&self, text: impl FnOnce() -> String, fields: &impl Serialize) {
        self.clear_bars();
        match self.mode {
            Mode::Json => {
                let fields = serde_json::to_value(fields).expect("serialisable");
                self.json_line(&serde_json::json!({"ok": true}), Some(fields));
            }
            Mode::Bars | Mode::Lines => {
                let text = text();
                if !text.is_empty() {
                    print!("{text}");
                    let _ = std::io::stdout().flush();
                }
            }
        }
    }

    /// Runs a verb with a reporter for `output`, ending its JSON with the
    /// failed `summary` when it fails (a verb that succeeds says `finish`).
    pub fn reporting<T>(output: Output, verb: impl FnOnce(&Progress) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let progress = Progress::new(output);
        let result = verb(&progress);
        if let Err(err) = &result {
            progress.fail(err);
        }
        result
    }

    /// The verb failed: the `summary` with `ok: false` and the error in
    /// JSON (people get the error from `main`, on stderr, as for any verb).
    pub fn fail(&self, err: &anyhow::Error) {
        self.clear_bars();
        if self.mode == Mode::Json {
            self.json_line(&serde_json::json!({"ok": false, "error": format!("{err:#}")}), None);
        }
    }

    /// Runs `f` with the bars hidden, for a child that writes to the
    /// terminal itself (cargo).
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bars {
            Some(bars) => bars.multi.suspend(f),
            None => f(),
        }
    }

    /// Where the image builder's output goes: the phase's message on a
    /// terminal, stderr otherwise (never stdout, which JSON owns).
    pub fn build_log(&self) -> BuildLog<'_> {
        BuildLog { progress: self, pending: Vec::new() }
    }

    fn write_line(&self, line: &str) {
        let mut out = self.out.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// One JSON line: `{"event": kind, "t": ..., ...value, ...extra}`.
    fn json_line(&self, value: &impl Serialize, extra: Option<serde_json::Value>) {
        let t = ((self.clock)().as_secs_f64() * 10.0).round() / 10.0;
        let mut object = serde_json::Map::new();
        let value = serde_json::to_value(value).expect("serialisable");
        let kind = value.get("event").cloned().unwrap_or_else(|| "summary".into());
        object.insert("event".to_owned(), kind);
        object.insert("t".to_owned(), t.into());
        for source in [Some(value), extra].into_iter().flatten() {
            if let serde_json::Value::Object(fields) = source {
                object.extend(fields.into_iter().filter(|(key, _)| key != "event"));
            }
        }
        self.write_line(&serde_json::Value::Object(object).to_string());
    }

    fn draw(&self, event: &Event) {
        let Some(bars) = &self.bars else { return };
        bars.multi.suspend(|| eprintln!("{}", event.line()));
        match event {
            Event::Step { message } => bars.phase.set_message(message.clone()),
            Event::BuildStarted { image } => bars.phase.set_message(format!("building {image}")),
            Event::Plan { services, .. } => {
                *bars.planned.lock().unwrap_or_else(|p| p.into_inner()) = services.clone();
                bars.phase.set_message("rolling out, one replica at a time");
            }
            Event::NothingToDo { .. } | Event::Converged { .. } => bars.phase.set_message("done"),
            _ => {}
        }
        if let Some((service, message, done)) = event.service() {
            let bar = self.service_bar(bars, service);
            if done {
                bar.inc(1);
            }
            bar.set_message(message);
        }
    }

    fn service_bar(&self, bars: &Bars, service: &str) -> ProgressBar {
        let mut services = bars.services.lock().unwrap_or_else(|p| p.into_inner());
        services
            .entry(service.to_owned())
            .or_insert_with(|| {
                let length = bars.planned.lock().unwrap_or_else(|p| p.into_inner()).get(service).copied();
                let bar = bars.multi.add(ProgressBar::new(length.unwrap_or(1) as u64));
                bar.set_style(
                    ProgressStyle::with_template(&format!("{service:>12} [{{bar:20}}] {{pos}}/{{len}} {{wide_msg}}"))
                        .expect("a valid template")
                        .progress_chars("=> "),
                );
                bar
            })
            .clone()
    }

    /// Takes the bars off the terminal for good (the lines above them
    /// already tell what happened), before the result is printed.
    fn clear_bars(&self) {
        if let Some(bars) = &self.bars {
            for bar in std::mem::take(&mut *bars.services.lock().unwrap_or_else(|p| p.into_inner())).values() {
                bar.finish_and_clear();
            }
            bars.phase.finish_and_clear();
            let _ = bars.multi.clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear_bars();
    }
}

/// `Write` for the image builder's stream (see `Progress::build_log`).
pub struct BuildLog<'a> {
    progress: &'a Progress,
    pending: Vec<u8>,
}

impl Write for BuildLog<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &self.progress.bars {
            Some(bars) => {
                self.pending.extend_from_slice(buf);
                if let Some(end) = self.pending.iter().rposition(|b| *b == b'\n') {
                    let text = String::from_utf8_lossy(&self.pending[..end]).into_owned();
                    if let Some(last) = text.lines().rev().find(|line| !line.trim().is_empty()) {
                        bars.phase.set_message(last.trim().to_owned());
                    }
                    self.pending.drain(..=end);
                }
                Ok(buf.len())
            }
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.progress.bars {
            Some(_) => Ok(()),
            None => std::io::stderr().flush(),
        }
    }
}

/// A `Write` that tests read back.
#[cfg(test)]
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

#[cfg(test)]
impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

#[cfg(test)]
impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
impl Progress {
    /// `mode` into a buffer the caller reads back, on a clock that
    /// advances 1.5 s each time it is read: what tests check.
    pub fn captured(mode: Mode) -> (Self, Captured) {
        let captured = Captured::default();
        let ticks = Mutex::new(0u64);
        let clock = Box::new(move || {
            let mut ticks = ticks.lock().unwrap_or_else(|p| p.into_inner());
            *ticks += 1;
            Duration::from_millis(1500 * *ticks)
        });
        (Self::with(mode, Box::new(captured.clone()), clock), captured)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rollout in which the second replica never gets healthy.
    fn a_failed_rollout(progress: &Progress) {
        progress.emit(Event::Plan {
            project: "freedumb-test".into(),
            image: "freedumb:b".into(),
            create: 0,
            replace: 2,
            remove: 0,
            keep: 0,
            services: BTreeMap::from([("auth".into(), 2)]),
        });
        let replica = |n: u32| ("auth".to_owned(), n, format!("freedumb-test-auth-{n}-b"));
        let (service, replica1, container) = replica(1);
        progress.emit(Event::ReplicaStarting {
            service: service.clone(),
            replica: replica1,
            container: container.clone(),
            image: "freedumb:b".into(),
        });
        progress.emit(Event::ReplicaHealthy {
            service: service.clone(),
            replica: replica1,
            container: container.clone(),
            seconds: 1.3,
        });
        progress.emit(Event::TrafficSwitched { service: service.clone(), replica: 1, container: container.clone() });
        let (_, replica2, broken) = replica(2);
        progress.emit(Event::ReplicaFailed {
            service: service.clone(),
            replica: replica2,
            container: broken,
            reason: "exited with code 2".into(),
            log: vec!["JWT_ACCESS_SECRET must be at least 32 bytes".into()],
        });
        progress.emit(Event::RolledBack {
            service,
            replica: 1,
            container: "freedumb-test-auth-1-a".into(),
            reason: "replica 2 of auth did not become healthy".into(),
        });
        progress.fail(&anyhow::anyhow!("replica 2 of auth did not become healthy"));
    }

    #[test]
    fn plain_lines_tell_a_person_what_happened_replica_by_replica() {
        let (progress, out) = Progress::captured(Mode::Lines);
        a_failed_rollout(&progress);
        assert_eq!(
            out.text(),
            "==> converging freedumb-test to freedumb:b: 0 to create, 2 to replace one at a time, 0 to remove, 0 \
             unchanged\n  \
             auth 1: starting freedumb-test-auth-1-b (freedumb:b)\n  \
             auth 1: freedumb-test-auth-1-b healthy after 1.3 s\n  \
             auth 1: the gateway sends new requests to freedumb-test-auth-1-b\n  \
             auth 2: freedumb-test-auth-2-b FAILED: exited with code 2; its last log lines:\n    \
             | JWT_ACCESS_SECRET must be at least 32 bytes\n  \
             auth 1: rolled back, freedumb-test-auth-1-a serves again (replica 2 of auth did not become healthy)\n",
            "the failure itself is printed by main, not twice"
        );
    }

    #[test]
    fn json_is_one_object_per_line_ending_with_the_summary() {
        let (progress, out) = Progress::captured(Mode::Json);
        a_failed_rollout(&progress);
        let lines: Vec<serde_json::Value> =
            out.text().lines().map(|line| serde_json::from_str(line).expect("every line is JSON")).collect();
        let kinds: Vec<&str> = lines.iter().map(|line| line["event"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "plan",
                "replica_starting",
                "replica_healthy",
                "traffic_switched",
                "replica_failed",
                "rolled_back",
                "summary"
            ]
        );
        assert_eq!(
            lines[4],
            serde_json::json!({
                "event": "replica_failed", "t": 7.5, "service": "auth", "replica": 2,
                "container": "freedumb-test-auth-2-b", "reason": "exited with code 2",
                "log": ["JWT_ACCESS_SECRET must be at least 32 bytes"],
            })
        );
        assert_eq!(lines[0]["services"], serde_json::json!({"auth": 2}));
        assert_eq!(
            lines[6],
            serde_json::json!({"event": "summary", "t": 10.5, "ok": false,
                               "error": "replica 2 of auth did not become healthy"})
        );
    }

    #[test]
    fn a_failed_kubernetes_rollout_reads_as_workload_pod_container_reason_events_and_log() {
        let (progress, out) = Progress::captured(Mode::Lines);
        progress.emit(Event::ObjectApplied {
            object: "Deployment.apps freedumb/auth-service".into(),
            action: "configured".into(),
        });
        progress.emit(Event::RolloutWaiting {
            workload: "auth-service".into(),
            message: "1 out of 3 new replicas have been updated".into(),
        });
        progress.emit(Event::RolloutFailed {
            workload: "auth-service".into(),
            pod: "auth-service-7b9c6d5f8-m5v7c".into(),
            container: "auth".into(),
            reason: "CrashLoopBackOff".into(),
            message: "exited with code 2 (Error)".into(),
            events: vec!["BackOff: Back-off restarting failed container auth".into()],
            log: vec!["JWT_ACCESS_SECRET must be at least 32 bytes".into()],
        });
        progress.emit(Event::SetRolledBack {
            namespace: "freedumb".into(),
            revision: 3,
            reason: "auth-service failed".into(),
        });
        assert_eq!(
            out.text(),
            "  Deployment.apps freedumb/auth-service configured\n  \
             auth-service: 1 out of 3 new replicas have been updated\n  \
             auth-service: FAILED: pod auth-service-7b9c6d5f8-m5v7c, container auth: CrashLoopBackOff: exited with \
             code 2 (Error)\n    its last events:\n    | BackOff: Back-off restarting failed container auth\n    \
             its last log lines:\n    | JWT_ACCESS_SECRET must be at least 32 bytes\n\
             ==> rolled freedumb back to revision 3, which serves again (auth-service failed)\n"
        );
    }

    #[test]
    fn a_successful_json_run_ends_with_its_result() {
        let (progress, out) = Progress::captured(Mode::Json);
        progress.emit(Event::NothingToDo { project: "p".into(), image: "freedumb:a".into() });
        progress.finish(|| unreachable!("no text in JSON"), &serde_json::json!({"project": "p", "changed": false}));
        let last: serde_json::Value = serde_json::from_str(out.text().lines().last().unwrap()).unwrap();
        assert_eq!(
            last,
            serde_json::json!({"event": "summary", "t": 3.0, "ok": true, "project": "p", "changed": false})
        );
    }
}

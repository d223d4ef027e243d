//! The Docker Engine API, through bollard: the only way the toolkit talks to
//! an engine (no docker CLI, no compose binary). `Engine` wraps bollard's
//! async client in a small runtime of its own, so the verbs stay plain
//! synchronous code like the rest of xtask.
//!
//! Every container the toolkit creates carries `LABEL_PROJECT` (and the
//! other labels below): `status`, `logs` and `down` find their containers
//! by it, and never touch anything else on the engine.

pub mod converge;
pub mod deploy;
pub mod dockerfile;
#[cfg(test)]
mod e2e;
#[cfg(test)]
mod e2e_infra;
pub mod image;
pub mod infra;
mod resources;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummary, HealthConfig, HealthStatusEnum, HostConfig,
    RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::StreamExt;

/// Holds a lock on this machine for builds of `tag` until dropped. Two
/// builds of one tag at once (two terminals, or tests in parallel) both
/// miss the builder's cache and give the tag two images with different ids
/// (an image's configuration holds its creation time), and a deployment
/// rightly takes another id for another image and rolls every replica;
/// one after the other, the second build is a cache hit with the first's id.
fn build_lock(tag: &str) -> anyhow::Result<std::fs::File> {
    let path = std::env::temp_dir().join(format!("freedumb-build-{}.lock", crate::digest::hex(tag.as_bytes())));
    let file = std::fs::File::create(&path).with_context(|| format!("failed to create {}", path.display()))?;
    file.lock().with_context(|| format!("failed to lock {}", path.display()))?;
    Ok(file)
}

/// The deployment a container belongs to (compose's project).
pub const LABEL_PROJECT: &str = "io.freedumb.project";
/// The service, worker, `migrate` or `gateway`.
pub const LABEL_SERVICE: &str = "io.freedumb.service";

/// A connection to the Docker engine, with the runtime its calls run on.
pub struct Engine {
    docker: Docker,
    runtime: tokio::runtime::Runtime,
}

impl Engine {
    /// Connects to the engine at `DOCKER_HOST` or the local socket, agrees
    /// on an API version (this one speaks 1.41 and newer), and pings it.
    pub fn connect() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("failed to start the runtime for the Docker API")?;
        let docker = runtime.block_on(async {
            let docker = Docker::connect_with_local_defaults()?.negotiate_version().await?;
            docker.ping().await?;
            Ok::<_, bollard::errors::Error>(docker)
        });
        let docker = docker.map_err(|err| {
            anyhow::anyhow!(
                "the Docker engine does not answer at {} ({err}); start it (`dockerd --bridge=none --iptables=false &` \
                 as root, as .ci/run does, or `systemctl start docker`)",
                std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned())
            )
        })?;
        Ok(Engine { docker, runtime })
    }

    /// Builds an image from a tar build context, tagged `tag`, streaming the
    /// builder's output to `out`. Any error in the stream fails the build,
    /// even when the HTTP request itself succeeded. Returns the image id.
    pub fn build(&self, context: Vec<u8>, tag: &str, out: &mut dyn Write) -> anyhow::Result<String> {
        let options = BuildImageOptionsBuilder::new().t(tag).rm(true).forcerm(true).build();
        self.build_with(options, context, tag, out)
    }

    /// `build` with the builder's options spelled out (`options` must tag
    /// the image `tag`).
    pub fn build_with(
        &self,
        options: bollard::query_parameters::BuildImageOptions,
        context: Vec<u8>,
        tag: &str,
        out: &mut dyn Write,
    ) -> anyhow::Result<String> {
        let _one_at_a_time = build_lock(tag)?;
        self.runtime.block_on(async {
            let mut stream = self.docker.build_image(options, None, Some(bollard::body_full(context.into())));
            while let Some(info) = stream.next().await {
                let info = info.context("the engine failed the build")?;
                if let Some(detail) = info.error_detail {
                    bail!("the build failed: {}", detail.message.unwrap_or_default().trim());
                }
                if let Some(line) = info.stream.as_deref().or(info.status.as_deref()) {
                    let _ = out.write_all(line.as_bytes());
                }
            }
            Ok(())
        })?;
        let image = self
            .runtime
            .block_on(self.docker.inspect_image(tag))
            .with_context(|| format!("the build reported success, but the engine has no image {tag}"))?;
        Ok(image.id.unwrap_or_default())
    }

    /// Tags `image` as `repository:tag` too.
    #[cfg(test)]
    pub fn tag(&self, image: &str, repository: &str, tag: &str) -> anyhow::Result<()> {
        let options = bollard::query_parameters::TagImageOptionsBuilder::new().repo(repository).tag(tag).build();
        self.runtime
            .block_on(self.docker.tag_image(image, Some(options)))
            .with_context(|| format!("failed to tag {image} as {repository}:{tag}"))
    }

    /// An image's size in bytes, or `None` when the engine does not have it.
    pub fn image_size(&self, name: &str) -> anyhow::Result<Option<i64>> {
        match self.runtime.block_on(self.docker.inspect_image(name)) {
            Ok(image) => Ok(image.size),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(err) => Err(err).with_context(|| format!("failed to inspect image {name}")),
        }
    }

    /// An image's id (`sha256:...`).
    pub fn image_id(&self, name: &str) -> anyhow::Result<String> {
        let image = self
            .runtime
            .block_on(self.docker.inspect_image(name))
            .with_context(|| format!("failed to inspect image {name}"))?;
        Ok(image.id.unwrap_or_default())
    }

    /// Every container (running or not) with all of `labels`.
    pub fn containers(&self, labels: &BTreeMap<&str, &str>) -> anyhow::Result<Vec<ContainerSummary>> {
        let filters: HashMap<String, Vec<String>> =
            HashMap::from([("label".to_owned(), labels.iter().map(|(k, v)| format!("{k}={v}")).collect())]);
        let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        self.runtime.block_on(self.docker.list_containers(Some(options))).context("failed to list containers")
    }

    pub fn inspect(&self, name: &str) -> anyhow::Result<ContainerInspectResponse> {
        self.runtime
            .block_on(self.docker.inspect_container(name, None))
            .with_context(|| format!("failed to inspect container {name}"))
    }

    /// Creates and starts a container named `name`.
    pub fn run(&self, name: &str, body: ContainerCreateBody) -> anyhow::Result<()> {
        self.runtime.block_on(async {
            let options = CreateContainerOptionsBuilder::new().name(name).build();
            self.docker
                .create_container(Some(options), body)
                .await
                .with_context(|| format!("failed to create container {name}"))?;
            self.docker.start_container(name, None).await.with_context(|| format!("failed to start container {name}"))
        })
    }

    /// Sends a signal to a container's main process (`HUP`: nginx reloads).
    pub fn kill(&self, name: &str, signal: &str) -> anyhow::Result<()> {
        let options = KillContainerOptionsBuilder::new().signal(signal).build();
        self.runtime
            .block_on(self.docker.kill_container(name, Some(options)))
            .with_context(|| format!("failed to send SIG{signal} to container {name}"))
    }

    /// Starts an existing, stopped container.
    pub fn start(&self, name: &str) -> anyhow::Result<()> {
        self.runtime
            .block_on(self.docker.start_container(name, None))
            .with_context(|| format!("failed to start container {name}"))
    }

    /// Renames a container (its id, volume and settings stay).
    pub fn rename(&self, name: &str, to: &str) -> anyhow::Result<()> {
        let options = bollard::query_parameters::RenameContainerOptionsBuilder::new().name(to).build();
        self.runtime
            .block_on(self.docker.rename_container(name, options))
            .with_context(|| format!("failed to rename container {name} to {to}"))
    }

    /// Waits until the container exits and returns its exit code.
    pub fn wait(&self, name: &str) -> anyhow::Result<i64> {
        self.runtime.block_on(async {
            let mut stream = self.docker.wait_container(name, None);
            match stream.next().await {
                Some(Ok(response)) => Ok(response.status_code),
                // bollard reports a non-zero exit as this error.
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
                Some(Err(err)) => Err(err).with_context(|| format!("failed to wait for container {name}")),
                None => bail!("the engine ended the wait for container {name} without an exit code"),
            }
        })
    }

    /// Stops a container gracefully: its stop signal, then SIGKILL after
    /// `timeout_secs`.
    pub fn stop(&self, name: &str, timeout_secs: i32) -> anyhow::Result<()> {
        let options = StopContainerOptionsBuilder::new().t(timeout_secs).build();
        match self.runtime.block_on(self.docker.stop_container(name, Some(options))) {
            // 304: already stopped; 404: no such container, so nothing runs.
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 304 | 404, .. }) => Ok(()),
            Err(err) => Err(err).with_context(|| format!("failed to stop container {name}")),
        }
    }

    /// Removes a container, killing it if it still runs, and its anonymous
    /// volumes with it when `volumes` is set; gone already is fine.
    pub fn remove(&self, name: &str, volumes: bool) -> anyhow::Result<()> {
        let options = RemoveContainerOptionsBuilder::new().force(true).v(volumes).build();
        match self.runtime.block_on(self.docker.remove_container(name, Some(options))) {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            Err(err) => Err(err).with_context(|| format!("failed to remove container {name}")),
        }
    }

    /// Writes a container's log (stdout and stderr, as the process wrote
    /// them) to `out`: the last `tail` lines, or everything, and then new
    /// lines as they come when `follow` is set.
    pub fn logs(&self, name: &str, tail: Option<usize>, follow: bool, out: &mut dyn Write) -> anyhow::Result<()> {
        let tail = tail.map_or_else(|| "all".to_owned(), |n| n.to_string());
        let options = LogsOptionsBuilder::new().stdout(true).stderr(true).follow(follow).tail(&tail).build();
        self.runtime.block_on(async {
            let mut stream = self.docker.logs(name, Some(options));
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.with_context(|| format!("failed to read the log of container {name}"))?;
                out.write_all(&chunk.into_bytes()).context("failed to write the log")?;
                out.flush().context("failed to write the log")?;
            }
            Ok(())
        })
    }

    /// Waits until the container's health check passes. Fails, with the
    /// last lines of its log, when it exits, turns unhealthy, or is still
    /// not healthy at `deadline`.
    pub fn wait_healthy(&self, name: &str, deadline: Instant) -> anyhow::Result<()> {
        loop {
            let inspected = self.inspect(name)?;
            let state = inspected.state.unwrap_or_default();
            let health = state.health.as_ref().and_then(|h| h.status);
            // The engine restarts a crashed replica (unless-stopped), so a
            // crash may show as restarting, or as running again with a
            // restart counted.
            let crashed = state.running == Some(false)
                || state.restarting == Some(true)
                || inspected.restart_count.unwrap_or_default() > 0;
            let failure = match (crashed, health) {
                (_, Some(HealthStatusEnum::HEALTHY)) => return Ok(()),
                // While the engine restarts it, the state shows no exit code
                // (0) rather than the one it crashed with.
                (true, _) if state.running == Some(false) && state.restarting != Some(true) => {
                    Some(format!("exited with code {}", state.exit_code.unwrap_or_default()))
                }
                (true, _) => Some(format!("crashed (restarted {} times)", inspected.restart_count.unwrap_or_default())),
                (_, Some(HealthStatusEnum::UNHEALTHY)) => Some("turned unhealthy".to_owned()),
                _ if Instant::now() >= deadline => Some("was not healthy in time".to_owned()),
                _ => None,
            };
            if let Some(failure) = failure {
                let check = state
                    .health
                    .and_then(|h| h.log)
                    .and_then(|log| log.last().and_then(|result| result.output.clone()))
                    .map(|output| format!("; its last health check said: {}", output.trim()))
                    .unwrap_or_default();
                bail!("{name} {failure}{check}; the last lines of its log:\n{}", self.last_log_lines(name, 20));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The last `lines` lines of a container's log, for error messages.
    pub fn last_log_lines(&self, name: &str, lines: usize) -> String {
        let mut out = Vec::new();
        match self.logs(name, Some(lines), false, &mut out) {
            Ok(()) => String::from_utf8_lossy(&out).trim_end().to_owned(),
            Err(err) => format!("(no log: {err:#})"),
        }
    }
}

/// How a `freedumb` container runs: on the host's network (replicas on
/// distinct ports, traffic on loopback), read-only, without capabilities,
/// restarted by the engine if it crashes, and checked by
/// `freedumb healthcheck --url <probe>` every `interval` (the image's own
/// check runs every 30 s, too slow to gate a rollout on).
pub struct Spec<'a> {
    pub image: &'a str,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
    /// The URL the health check asks, `None` for a one-off (`migrate`).
    pub probe: Option<String>,
    pub interval: Duration,
    /// Seconds between SIGTERM and SIGKILL when the engine stops it.
    pub stop_timeout_secs: i64,
}

impl Spec<'_> {
    pub fn body(&self) -> ContainerCreateBody {
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        // A one-off has no health: it runs to its exit code. `NONE` turns
        // off the image's own check, which would mark it unhealthy.
        let none = HealthConfig { test: Some(vec!["NONE".to_owned()]), ..Default::default() };
        let healthcheck = self.probe.as_ref().map_or(none, |url| HealthConfig {
            test: Some(
                ["CMD", image::BINARY_PATH, "healthcheck", "--url", url].into_iter().map(str::to_owned).collect(),
            ),
            interval: Some(nanos(self.interval)),
            timeout: Some(nanos(Duration::from_secs(3))),
            retries: Some(3),
            start_period: Some(0),
            start_interval: None,
        });
        let one_off = self.probe.is_none();
        ContainerCreateBody {
            image: Some(self.image.to_owned()),
            cmd: Some(self.command.clone()),
            env: Some(self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(self.labels.clone().into_iter().collect()),
            healthcheck: Some(healthcheck),
            stop_timeout: Some(self.stop_timeout_secs),
            host_config: Some(HostConfig {
                network_mode: Some("host".to_owned()),
                readonly_rootfs: Some(true),
                cap_drop: Some(vec!["ALL".to_owned()]),
                security_opt: Some(vec!["no-new-privileges".to_owned()]),
                restart_policy: (!one_off).then_some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// Whether the engine lists the container as running.
pub fn is_running(summary: &ContainerSummary) -> bool {
    summary.state.is_some_and(|state| state.to_string() == "running")
}

/// A container's name as the engine lists it, without the leading `/`.
pub fn container_name(summary: &ContainerSummary) -> String {
    summary
        .names
        .as_ref()
        .and_then(|names| names.first())
        .map(|name| name.trim_start_matches('/').to_owned())
        .or_else(|| summary.id.clone())
        .unwrap_or_default()
}

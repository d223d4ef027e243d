//! `cargo xtask deploy --env local --containers`: the platform as containers
//! of the offline image on this machine's Docker engine, next to the
//! Postgres, Redis and RabbitMQ the environment names by URL (external
//! infrastructure: nothing is pulled). One container per replica of each
//! enabled service and worker, on the host's network.
//!
//! Idempotent: the engine is converged to the model (`converge`), so a run
//! with nothing changed changes nothing and says so, and a changed image or
//! setting rolls each replica in turn, back to the previous containers if a
//! new one does not become healthy. Migrations run first, as a one-off
//! container that must exit 0.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use bollard::models::{ContainerCreateBody, HealthConfig, HostConfig, RestartPolicy, RestartPolicyNameEnum};

use super::converge::{self, Action, Apply, Desired, Running, Servers};
use super::image::GATEWAY_CONF_DIR;
use super::{Engine, LABEL_PROJECT, LABEL_SERVICE, Spec};
use crate::environment::{Environment, Kind, vars};
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

/// Deploys `environment` with `image` (built now when `None`).
pub fn run(root: &Path, environment: &Environment, image: Option<&str>, debug: bool) -> anyhow::Result<()> {
    if environment.model.kind != Kind::Local {
        bail!(
            "deploying environment `{}` ({}) to the Docker engine needs its infrastructure in containers, which \
             this toolkit does not create yet; `--containers` deploys environments whose Postgres, Redis and \
             RabbitMQ are external (kind = \"local\")",
            environment.name,
            environment.model.kind
        );
    }
    let started = Instant::now();
    step("checking the external infrastructure");
    backing::require(&environment.backing_services().map_err(anyhow::Error::msg)?)?;
    let engine = Engine::connect()?;
    let image = match image {
        Some(image) => image.to_owned(),
        None => {
            step("building the image");
            let binary = build::cargo_build(root, debug)?;
            let uid = environment.model.platform.build.uid;
            build::build_offline(&engine, root, &binary, debug, uid, &mut std::io::sink())?.image
        }
    };
    let (secrets, _) = secrets::load_or_generate(&root.join(secrets::FILE), &environment.model.secrets.supplied)?;
    let secret = |name: &str| secrets.get(name).unwrap_or_default().to_owned();
    let project = project(environment);

    let nginx = tools::require(&tools::NGINX)?;
    let gateway_image = build::build_gateway(&engine, &nginx, environment.model.platform.build.uid)?.image;
    let mut gateway = Gateway::new(&engine, root, environment, &project, gateway_image);

    let desired = desired(environment, &image, &secret);
    let actual: Vec<Running> = engine
        .containers(&BTreeMap::from([(LABEL_PROJECT, project.as_str())]))?
        .iter()
        .filter_map(Running::from_summary)
        .collect();
    let plan = converge::plan(&desired, &actual);
    if !converge::changes(&plan) && gateway.is_current()? {
        record(root, &project, &image)?;
        println!("{project} already runs {image} with these settings: nothing to do");
        return Ok(());
    }

    step("migrating the database (a one-off container)");
    migrate(&engine, environment, &project, &image, &secret)?;

    step(&format!("converging {project} to {image}"));
    let creates = plan.iter().filter(|a| matches!(a, Action::Create(_))).count();
    let replaces = plan.iter().filter(|a| matches!(a, Action::Replace { .. })).count();
    let removes = plan.iter().filter(|a| matches!(a, Action::Remove(_))).count();
    eprintln!("{creates} to create, {replaces} to replace one at a time, {removes} to remove");
    let mut say = |line: &str| eprintln!("  {line}");
    let mut switch = |servers: &Servers| gateway.switch(servers);
    converge::apply(
        &engine,
        &plan,
        &mut Apply { project: &project, health_timeout: HEALTH_TIMEOUT, say: &mut say, switch: Some(&mut switch) },
    )?;
    record(root, &project, &image)?;
    eprintln!("converged in {:.1} s", started.elapsed().as_secs_f64());
    print!("{}", containers::table(&containers::status(&engine, &project)?));
    println!("\nthe gateway: {}", gateway.url);
    Ok(())
}

/// The nginx gateway as a container of the offline gateway image, on the
/// host's network, its configuration rendered into `.local/<project>/gateway/conf/`
/// and mounted read-only. A change of upstreams is a graceful reload (SIGHUP):
/// nginx starts workers with the new configuration and lets the old ones
/// finish their requests, so none is cut.
pub struct Gateway<'a> {
    engine: &'a Engine,
    root: &'a Path,
    environment: &'a Environment,
    project: String,
    image: String,
    name: String,
    dir: std::path::PathBuf,
    pub url: String,
    /// The upstreams last rendered, to tell a changed configuration.
    rendered: Option<render::Files>,
}

/// How long the gateway gets to answer /health after it starts.
const GATEWAY_TIMEOUT: Duration = Duration::from_secs(20);
/// Once a new worker answers, the old ones are closing their listening
/// sockets; a short margin covers a connection one of them accepted just
/// before.
const RELOAD_SETTLE: Duration = Duration::from_millis(250);

impl<'a> Gateway<'a> {
    pub fn new(engine: &'a Engine, root: &'a Path, environment: &'a Environment, project: &str, image: String) -> Self {
        let gateway = &environment.model.gateway;
        let host = match gateway.listen_address {
            Some(address) if !address.is_unspecified() => address.to_string(),
            _ => "127.0.0.1".to_owned(),
        };
        Gateway {
            engine,
            root,
            environment,
            project: project.to_owned(),
            image,
            name: format!("{project}-gateway"),
            dir: root.join(".local").join(project).join("gateway"),
            url: format!("http://{host}:{}", gateway.http_port),
            rendered: None,
        }
    }

    /// Whether the gateway runs this image (its upstreams are checked by the
    /// replicas' convergence).
    fn is_current(&self) -> anyhow::Result<bool> {
        let found = self
            .engine
            .containers(&BTreeMap::from([(LABEL_PROJECT, self.project.as_str()), (LABEL_SERVICE, "gateway")]))?;
        Ok(found.iter().any(|c| {
            c.image.as_deref() == Some(self.image.as_str()) && c.state.is_some_and(|s| s.to_string() == "running")
        }))
    }

    /// Renders the upstreams `servers` and makes the gateway use them:
    /// started if it does not run (once every routed service has a replica),
    /// reloaded if it does.
    pub fn switch(&mut self, servers: &Servers) -> anyhow::Result<()> {
        let routed: Vec<&str> =
            self.environment.services().filter(|(_, w)| !w.routes.is_empty()).map(|(name, _)| name).collect();
        let complete = routed.iter().all(|service| servers.get(*service).is_some_and(|s| !s.is_empty()));
        let files = render::render_gateway(self.root, self.environment, servers)?;
        let running = self.is_current()?;
        if !complete && !running {
            return Ok(());
        }
        if running && self.rendered.as_ref() == Some(&files) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).with_context(|| format!("failed to create {}", self.dir.display()))?;
        render::write(&files, &self.dir.join("conf"))?;
        let version = render::gateway_upstreams_version(&files);
        self.rendered = Some(files);
        if running {
            self.engine.kill(&self.name, "HUP")?;
        } else {
            // Another image, or stopped: a new container.
            self.engine.stop(&self.name, 35)?;
            self.engine.remove(&self.name, true)?;
            self.engine.run(&self.name, self.body())?;
        }
        self.wait_answering(version.as_deref())?;
        std::thread::sleep(RELOAD_SETTLE);
        Ok(())
    }

    fn body(&self) -> ContainerCreateBody {
        ContainerCreateBody {
            image: Some(self.image.clone()),
            labels: Some(
                [(LABEL_PROJECT, self.project.as_str()), (LABEL_SERVICE, "gateway")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ),
            healthcheck: Some(HealthConfig { test: Some(vec!["NONE".to_owned()]), ..Default::default() }),
            host_config: Some(HostConfig {
                network_mode: Some("host".to_owned()),
                binds: Some(vec![format!("{}:{GATEWAY_CONF_DIR}:ro", self.dir.display())]),
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

    /// Waits until a new connection to the gateway is answered with the
    /// upstreams' `version`: nginx does not report the end of a reload, and
    /// keeps the old configuration if the new one is refused.
    fn wait_answering(&self, version: Option<&str>) -> anyhow::Result<()> {
        let url = format!("{}/health", self.url);
        let deadline = Instant::now() + GATEWAY_TIMEOUT;
        loop {
            // A new agent each time: a new connection, never an old worker's.
            let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(2)).build();
            let answer = match agent.get(&url).call() {
                Ok(response) => {
                    let seen = response.header(render::GATEWAY_UPSTREAMS_HEADER).map(str::to_owned);
                    if version.is_none() || seen.as_deref() == version {
                        return Ok(());
                    }
                    format!("it still answers with the upstreams of version {}", seen.unwrap_or_default())
                }
                Err(err) => err.to_string(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "the gateway did not take its new configuration: {answer}; the last lines of its log:\n{}",
                    self.engine.last_log_lines(&self.name, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

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

/// Roll a container deployment back to the image deployed before the
/// current one (with the environment's current settings), replica by
/// replica as any rollout.
#[derive(Debug, clap::Args)]
pub struct Rollback {
    /// The environment deployed with `deploy --containers`.
    #[arg(long, value_name = "NAME", default_value = "local")]
    pub env: String,
}

impl Rollback {
    pub fn run(&self, root: &Path) -> anyhow::Result<()> {
        let environment = crate::environment::load(root, &self.env)?;
        let project = project(&environment);
        let image = previous(root, &project)?;
        step(&format!("rolling {project} back to {image}"));
        run(root, &environment, Some(&image), false)
    }
}

fn step(what: &str) {
    eprintln!("==> {what}");
}

/// One `Desired` per replica of each enabled service (`serve NAME`) and
/// worker (`worker NAME`), with the local process's variables.
pub fn desired(environment: &Environment, image: &str, secret: &dyn Fn(&str) -> String) -> Vec<Desired> {
    let mut desired = Vec::new();
    let roles = environment.services().map(|w| ("serve", w)).chain(environment.workers().map(|w| ("worker", w)));
    for (verb, (name, workload)) in roles {
        let env: Vec<(String, String)> = vars::local_process(environment, workload.port, secret)
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
) -> anyhow::Result<()> {
    let name = format!("{project}-migrate");
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
        env: vars::local_process(environment, 0, secret),
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
}

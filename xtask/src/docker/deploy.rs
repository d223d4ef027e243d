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

use super::converge::{self, Action, Apply, Desired, Running};
use super::{Engine, LABEL_PROJECT, LABEL_SERVICE, Spec};
use crate::environment::{Environment, Kind, vars};
use crate::{backing, build, containers, secrets};

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

    let desired = desired(environment, &image, &secret);
    let actual: Vec<Running> = engine
        .containers(&BTreeMap::from([(LABEL_PROJECT, project.as_str())]))?
        .iter()
        .filter_map(Running::from_summary)
        .collect();
    let plan = converge::plan(&desired, &actual);
    if !converge::changes(&plan) {
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
    converge::apply(&engine, &plan, &mut Apply { project: &project, health_timeout: HEALTH_TIMEOUT, say: &mut say })?;
    eprintln!("converged in {:.1} s", started.elapsed().as_secs_f64());
    print!("{}", containers::table(&containers::status(&engine, &project)?));
    Ok(())
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

//! `cargo xtask status`, `logs` and `down`: the containers of a deployment
//! on the Docker engine, found by their project label (never by name, so
//! nothing else on the engine is ever listed, read or removed). For a
//! kubernetes environment, `status` and `logs` ask its cluster instead
//! (`kube/status.rs`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::bail;
use clap::Args;
use serde::Serialize;

use crate::build::Output;
use crate::docker::{self, Engine, LABEL_PROJECT, LABEL_SERVICE, infra};
use crate::environment;

/// Which deployment: the environment's compose project, or one named.
#[derive(Debug, Args)]
pub struct Target {
    /// The environment whose deployment this is (compose.project, or
    /// `freedumb-<NAME>`).
    #[arg(long, value_name = "NAME", default_value = "local")]
    env: String,
    /// The project label to look for, instead of the environment's.
    #[arg(long, value_name = "NAME")]
    project: Option<String>,
    /// A kubernetes environment's cluster.
    #[command(flatten)]
    connect: crate::kube::Connect,
}

impl Target {
    /// The environment, when it is a kubernetes one (then the cluster is
    /// asked, not the engine).
    fn kubernetes(&self, root: &Path) -> anyhow::Result<Option<environment::Environment>> {
        if self.project.is_some() {
            return Ok(None);
        }
        let environment = environment::load(root, &self.env)?;
        Ok((environment.model.kind == environment::Kind::Kubernetes).then_some(environment))
    }

    fn project(&self, root: &Path) -> anyhow::Result<String> {
        if let Some(project) = &self.project {
            return Ok(project.clone());
        }
        Ok(docker::deploy::project(&environment::load(root, &self.env)?))
    }
}

/// Every container of a deployment: image, state, health, restarts, uptime.
#[derive(Debug, Args)]
pub struct Status {
    #[command(flatten)]
    target: Target,
    /// `json` prints one array of objects on stdout, for scripts.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

/// A container's log: the last lines, or everything, or follow it.
#[derive(Debug, Args)]
pub struct Logs {
    /// The service, worker, `migrate` or `gateway` (every replica of it), or
    /// one container's full name.
    service: String,
    #[command(flatten)]
    target: Target,
    /// Keep printing new lines until interrupted.
    #[arg(long, short)]
    follow: bool,
    /// Only the last N lines of each container.
    #[arg(long, value_name = "N")]
    tail: Option<usize>,
}

/// Stop and remove every container of a deployment, and its network.
#[derive(Debug, Args)]
pub struct Down {
    #[command(flatten)]
    target: Target,
    /// Remove the deployment's volumes too (the infrastructure's data).
    #[arg(long)]
    volumes: bool,
}

/// One line of `status`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Row {
    pub name: String,
    pub service: String,
    pub image: String,
    /// created, running, exited, ...
    pub state: String,
    /// healthy, unhealthy, starting, or none when the image has no check.
    pub health: String,
    pub restarts: i64,
    /// The engine's own summary: `Up 3 minutes (healthy)`, `Exited (0) 2 minutes ago`.
    pub status: String,
}

impl Status {
    pub fn run(&self, root: &Path) -> anyhow::Result<()> {
        if let Some(environment) = self.target.kubernetes(root)? {
            return crate::kube::cli::status(&environment, &self.target.connect, self.output);
        }
        let project = self.target.project(root)?;
        let engine = Engine::connect()?;
        let rows = status(&engine, &project)?;
        match self.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&rows).expect("serialisable")),
            Output::Text if rows.is_empty() => println!("no container of project `{project}`"),
            Output::Text => print!("{}", table(&rows)),
        }
        Ok(())
    }
}

impl Logs {
    pub fn run(&self, root: &Path) -> anyhow::Result<()> {
        if let Some(environment) = self.target.kubernetes(root)? {
            return crate::kube::cli::logs(&environment, &self.target.connect, &self.service, self.follow, self.tail);
        }
        let project = self.target.project(root)?;
        let engine = Engine::connect()?;
        let names: Vec<String> = engine
            .containers(&BTreeMap::from([(LABEL_PROJECT, project.as_str())]))?
            .iter()
            .filter(|c| {
                docker::container_name(c) == self.service
                    || c.labels.as_ref().and_then(|l| l.get(LABEL_SERVICE)).is_some_and(|s| *s == self.service)
            })
            .map(docker::container_name)
            .collect();
        match names.as_slice() {
            [] => bail!("project `{project}` has no container of `{}`; `cargo xtask status` lists them", self.service),
            [one] => engine.logs(one, self.tail, self.follow, &mut std::io::stdout()),
            many if self.follow => bail!(
                "`{}` has {} containers ({}); follow one of them by its name",
                self.service,
                many.len(),
                many.join(", ")
            ),
            many => {
                for name in many {
                    println!("==> {name} <==");
                    engine.logs(name, self.tail, false, &mut std::io::stdout())?;
                }
                Ok(())
            }
        }
    }
}

impl Down {
    pub fn run(&self, root: &Path) -> anyhow::Result<()> {
        let project = self.target.project(root)?;
        let engine = Engine::connect()?;
        let labels = BTreeMap::from([(LABEL_PROJECT.to_owned(), project.clone())]);
        let volumes = engine.volumes(&labels)?;
        let removed = down(&engine, &project, self.volumes)?;
        if removed.is_empty() && (volumes.is_empty() || !self.volumes) {
            println!("no container of project `{project}`: nothing to do");
        } else if !removed.is_empty() {
            println!("removed {} containers of project `{project}`: {}", removed.len(), removed.join(", "));
        }
        match (self.volumes, volumes.is_empty()) {
            (_, true) => {}
            (true, false) => println!("removed its volumes: {}", volumes.join(", ")),
            (false, false) => println!("kept its volumes (`down --volumes` removes them): {}", volumes.join(", ")),
        }
        Ok(())
    }
}

/// The containers of `project`, sorted by service and name.
pub fn status(engine: &Engine, project: &str) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for summary in engine.containers(&BTreeMap::from([(LABEL_PROJECT, project)]))? {
        let name = docker::container_name(&summary);
        let inspected = engine.inspect(&name)?;
        let state = inspected.state.as_ref();
        rows.push(Row {
            service: summary.labels.as_ref().and_then(|l| l.get(LABEL_SERVICE)).cloned().unwrap_or_default(),
            image: summary.image.clone().unwrap_or_default(),
            state: summary.state.map(|s| s.to_string()).unwrap_or_default(),
            health: state
                .and_then(|s| s.health.as_ref())
                .and_then(|h| h.status)
                .map_or_else(|| "none".to_owned(), |h| h.to_string()),
            restarts: inspected.restart_count.unwrap_or_default(),
            status: summary.status.clone().unwrap_or_default(),
            name,
        });
    }
    rows.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
    Ok(rows)
}

/// Stops every container of `project` (the gateway first, so that no new
/// request reaches a stopping service; the infrastructure last, once
/// nothing uses it; each with its grace period) and removes them, then the
/// project's network, and with `volumes` its volumes (the infrastructure's
/// data). Returns the names of the containers removed.
pub fn down(engine: &Engine, project: &str, volumes: bool) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<(u8, String)> = engine
        .containers(&BTreeMap::from([(LABEL_PROJECT, project)]))?
        .iter()
        .map(|c| {
            let label = |key: &str| c.labels.as_ref().and_then(|l| l.get(key)).map(String::as_str);
            let rank = match (label(LABEL_SERVICE), label(infra::LABEL_ROLE)) {
                (Some("gateway"), _) => 0,
                (_, Some(infra::ROLE_INFRA)) => 2,
                _ => 1,
            };
            (rank, docker::container_name(c))
        })
        .collect();
    names.sort();
    for (_, name) in &names {
        engine.stop(name, STOP_TIMEOUT_SECS)?;
        engine.remove(name, volumes)?;
    }
    // A network that cannot go (still used by a container of another
    // project) must not keep the volumes: each is tried, and every failure
    // is reported at the end, together.
    let labels = BTreeMap::from([(LABEL_PROJECT.to_owned(), project.to_owned())]);
    let mut errors: Vec<anyhow::Error> = Vec::new();
    match engine.networks(&labels) {
        Ok(networks) => errors.extend(networks.iter().filter_map(|n| engine.remove_network(n).err())),
        Err(err) => errors.push(err),
    }
    if volumes {
        match engine.volumes(&labels) {
            Ok(names) => errors.extend(names.iter().filter_map(|v| engine.remove_volume(v).err())),
            Err(err) => errors.push(err),
        }
    }
    if !errors.is_empty() {
        let listed: Vec<String> = errors.iter().map(|err| format!("- {err:#}")).collect();
        anyhow::bail!(
            "the containers of {project} were removed, but {} of its networks and volumes could not be:\n{}",
            errors.len(),
            listed.join("\n")
        );
    }
    Ok(names.into_iter().map(|(_, name)| name).collect())
}

/// `freedumb` drains for up to SHUTDOWN_TIMEOUT_SECS (30 s by default).
const STOP_TIMEOUT_SECS: i32 = 35;

pub fn table(rows: &[Row]) -> String {
    let header = Row {
        name: "CONTAINER".into(),
        service: "SERVICE".into(),
        image: "IMAGE".into(),
        state: "STATE".into(),
        health: "HEALTH".into(),
        restarts: 0,
        status: "STATUS".into(),
    };
    let cells = |row: &Row, header: bool| {
        let restarts = if header { "RESTARTS".to_owned() } else { row.restarts.to_string() };
        [
            row.name.clone(),
            row.service.clone(),
            row.image.clone(),
            row.state.clone(),
            row.health.clone(),
            restarts,
            row.status.clone(),
        ]
    };
    let all: Vec<[String; 7]> =
        std::iter::once(cells(&header, true)).chain(rows.iter().map(|row| cells(row, false))).collect();
    let widths: Vec<usize> = (0..7).map(|i| all.iter().map(|cells| cells[i].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for cells in &all {
        let line: Vec<String> = cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:width$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_its_columns() {
        let row = Row {
            name: "freedumb-budget-1".into(),
            service: "auth".into(),
            image: "freedumb:abc".into(),
            state: "running".into(),
            health: "healthy".into(),
            restarts: 0,
            status: "Up 3 seconds (healthy)".into(),
        };
        let table = table(&[row]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0].find("SERVICE"), lines[1].find("auth"));
        assert_eq!(lines[0].find("RESTARTS"), lines[1].find("0  "));
        assert!(lines[1].ends_with("Up 3 seconds (healthy)"));
    }
}

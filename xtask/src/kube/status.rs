//! `cargo xtask status --env prod` and `cargo xtask logs SERVICE --env
//! prod`, through the API: each Deployment of the set with its replicas,
//! image, revision, conditions and restarts; every pod of one workload's
//! log, each line prefixed with its pod.

use ::kube::api::{Api, ListParams, LogParams};
use ::kube::{Client, ResourceExt};
use anyhow::{Context, bail};
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;

use super::applyset::{ApplySet, PART_OF_LABEL};
use super::rollout::{self, Progress};

/// One workload of `status`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Row {
    pub workload: String,
    pub desired: i32,
    pub updated: i32,
    pub ready: i32,
    pub available: i32,
    pub image: String,
    pub revision: i64,
    /// `Available=True`, `Progressing=True (NewReplicaSetAvailable)`.
    pub conditions: Vec<String>,
    /// Container restarts over the workload's pods.
    pub restarts: i32,
    /// What `kubectl rollout status` would say.
    pub rollout: String,
}

/// The selector of a Deployment's pods, as a label selector string.
fn selector(deployment: &Deployment) -> String {
    let labels = deployment.spec.as_ref().and_then(|s| s.selector.match_labels.clone()).unwrap_or_default();
    labels.iter().map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>().join(",")
}

/// Whether `pod` carries every label of `deployment`'s selector.
fn selects(deployment: &Deployment, pod: &Pod) -> bool {
    let wanted = deployment.spec.as_ref().and_then(|s| s.selector.match_labels.clone()).unwrap_or_default();
    let labels = pod.labels();
    !wanted.is_empty() && wanted.iter().all(|(key, value)| labels.get(key) == Some(value))
}

/// The status row of a Deployment and its pods (pure).
pub fn row(deployment: &Deployment, pods: &[Pod]) -> Row {
    let status = deployment.status.clone().unwrap_or_default();
    let containers = deployment.spec.as_ref().and_then(|s| s.template.spec.as_ref()).map(|s| s.containers.clone());
    let conditions = status
        .conditions
        .iter()
        .flatten()
        .map(|c| match &c.reason {
            Some(reason) => format!("{}={} ({reason})", c.type_, c.status),
            None => format!("{}={}", c.type_, c.status),
        })
        .collect();
    let restarts = pods
        .iter()
        .filter(|pod| selects(deployment, pod))
        .flat_map(|pod| pod.status.iter().flat_map(|s| s.container_statuses.iter().flatten()))
        .map(|c| c.restart_count)
        .sum();
    Row {
        workload: deployment.name_any(),
        desired: deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
        updated: status.updated_replicas.unwrap_or(0),
        ready: status.ready_replicas.unwrap_or(0),
        available: status.available_replicas.unwrap_or(0),
        image: containers.iter().flatten().filter_map(|c| c.image.clone()).collect::<Vec<_>>().join(","),
        revision: rollout::revision(&deployment.metadata).unwrap_or(0),
        conditions,
        restarts,
        rollout: match rollout::deployment(deployment) {
            Progress::Done(_) => "rolled out".to_owned(),
            Progress::Waiting(message) => message,
            Progress::Failed(message) => format!("FAILED: {message}"),
        },
    }
}

/// The rows of every Deployment of the set in `namespace`.
pub async fn status(client: &Client, namespace: &str) -> anyhow::Result<Vec<Row>> {
    let set = ApplySet::new(namespace);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{PART_OF_LABEL}={}", set.id);
    let listed = deployments
        .list(&ListParams::default().labels(&selector))
        .await
        .with_context(|| format!("failed to list the Deployments of namespace {namespace}"))?;
    let pods =
        pods.list(&ListParams::default()).await.with_context(|| format!("failed to list the pods of {namespace}"))?;
    let mut rows: Vec<Row> = listed
        .items
        .iter()
        .filter(|d| d.labels().get(PART_OF_LABEL) == Some(&set.id))
        .map(|d| row(d, &pods.items))
        .collect();
    rows.sort_by(|a, b| a.workload.cmp(&b.workload));
    Ok(rows)
}

/// `status`'s table for people.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let header = ["WORKLOAD", "DESIRED", "UPDATED", "READY", "AVAILABLE", "REVISION", "RESTARTS", "IMAGE", "ROLLOUT"];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.workload.clone(),
                r.desired.to_string(),
                r.updated.to_string(),
                r.ready.to_string(),
                r.available.to_string(),
                r.revision.to_string(),
                r.restarts.to_string(),
                r.image.clone(),
                r.rollout.clone(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| cells.iter().map(|c| c[i].len()).chain([header[i].len()]).max().unwrap_or(0))
        .collect();
    let mut line = |cells: &[String]| {
        let text: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(&header.map(str::to_owned));
    for (cells, row) in cells.iter().zip(rows) {
        line(cells);
        if !row.conditions.is_empty() {
            line(&[format!("  {}", row.conditions.join(", "))]);
        }
    }
    out
}

/// The Deployment of SERVICE: `auth` is `auth-service`, a worker
/// `recurring` is `worker-recurring`; a Deployment's own name works too.
pub fn workload_names(service: &str) -> [String; 3] {
    [service.to_owned(), format!("{service}-service"), format!("worker-{service}")]
}

/// Writes every line of every pod of `service`'s Deployment to `out`,
/// each prefixed with `[pod]`; with `follow`, until they all end.
pub async fn logs(
    client: &Client,
    namespace: &str,
    service: &str,
    follow: bool,
    tail: Option<i64>,
    out: &mut (dyn std::io::Write + Send),
) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let mut found = None;
    for name in workload_names(service) {
        if let Some(deployment) =
            deployments.get_opt(&name).await.with_context(|| format!("failed to read Deployment {name}"))?
        {
            found = Some(deployment);
            break;
        }
    }
    let Some(deployment) = found else {
        bail!(
            "namespace {namespace} has no Deployment for `{service}` (looked for {}); `cargo xtask status` lists them",
            workload_names(service).join(", ")
        );
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let listed = pods
        .list(&ListParams::default().labels(&selector(&deployment)))
        .await
        .with_context(|| format!("failed to list the pods of {}", deployment.name_any()))?;
    let mut pod_list: Vec<Pod> = listed.items.into_iter().filter(|p| selects(&deployment, p)).collect();
    pod_list.sort_by_key(|p| p.name_any());
    if pod_list.is_empty() {
        bail!("Deployment {namespace}/{} has no pods", deployment.name_any());
    }
    // The serving container: the one named in the Deployment first.
    let container = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .map(|c| c.name.clone());
    let mut streams = Vec::new();
    for pod in &pod_list {
        let name = pod.name_any();
        let params = LogParams { container: container.clone(), follow, tail_lines: tail, ..LogParams::default() };
        let lines = pods
            .log_stream(&name, &params)
            .await
            .with_context(|| format!("failed to read the log of pod {name}"))?
            .lines();
        let prefix = format!("[{name}] ");
        streams.push(lines.map_ok(move |line| format!("{prefix}{line}")).boxed());
    }
    // Interleaved as they arrive, one stream per pod.
    let mut merged = futures::stream::select_all(streams);
    while let Some(line) = merged.next().await {
        let line = line.context("a pod's log stream failed")?;
        writeln!(out, "{line}").context("failed to write the log")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kube/fixtures").join(name);
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn a_row_counts_replicas_restarts_and_says_what_the_rollout_waits_for() {
        let deployment: Deployment = fixture("deployment-rolling.json");
        let pods: Vec<Pod> =
            ["pod-crash-loop.json", "pod-running.json", "pod-old-crash-loop.json"].iter().map(|n| fixture(n)).collect();
        let row = row(&deployment, &pods);
        assert_eq!((row.desired, row.updated, row.ready, row.available), (3, 1, 3, 3));
        assert_eq!(row.revision, 2);
        assert_eq!(row.image, "ghcr.io/freedumb/freedumb:0.1.1");
        assert_eq!(row.restarts, 2 + 41);
        assert_eq!(row.rollout, "1 out of 3 new replicas have been updated");
        assert_eq!(
            row.conditions,
            ["Available=True (MinimumReplicasAvailable)", "Progressing=True (ReplicaSetUpdated)"]
        );
        let table = table(&[row]);
        assert!(table.starts_with("WORKLOAD      DESIRED  UPDATED"), "{table}");
        assert!(table.contains("\n  Available=True (MinimumReplicasAvailable), Progressing=True"), "{table}");
    }

    #[test]
    fn a_service_is_found_by_its_name_or_its_deployments() {
        assert_eq!(workload_names("auth"), ["auth", "auth-service", "worker-auth"]);
    }
}

/// How many lines of each pod `logs` shows without `--tail`.
pub const DEFAULT_TAIL: i64 = 100;

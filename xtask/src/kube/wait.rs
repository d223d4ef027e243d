//! Waiting on the API, by watching it: rollouts (`rollouts`) and an
//! ExternalSecret's Secret (`ready`). Each lists what it needs once, then
//! follows a watch from the list's resourceVersion and judges again on
//! every event, so a pod entering CrashLoopBackOff fails the rollout as soon
//! as the API says so. A watch the server ends (its timeout, or 410 Gone
//! when the resourceVersion is too old) is started again from a fresh list;
//! there is no sleep-and-poll anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ::kube::api::{Api, DynamicObject, ListParams, LogParams, WatchEvent, WatchParams};
use ::kube::discovery::ApiResource;
use ::kube::{Client, Resource, ResourceExt};
use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Event as KubeEvent, Pod};
use serde_json::Value;

use super::rollout::{self, PodFailure, Verdict};
use crate::progress::{Event, Progress};

/// Seconds a watch asks the server to keep it open (below the API server's
/// own limit), after which it is started again.
const WATCH_SECONDS: u32 = 290;
/// A failure's last events and log lines.
const LAST_EVENTS: usize = 5;
const LAST_LOG_LINES: i64 = 20;

/// A watched object's change, whatever its kind.
enum Change {
    Deployment(WatchEvent<Deployment>),
    ReplicaSet(WatchEvent<ReplicaSet>),
    Pod(WatchEvent<Pod>),
}

/// What the namespace holds, by name, as the watches last told.
#[derive(Default)]
struct Seen {
    deployments: BTreeMap<String, Deployment>,
    sets: BTreeMap<String, ReplicaSet>,
    pods: BTreeMap<String, Pod>,
}

/// Applies `event` to `objects`; false when the watch must start over from
/// a fresh list (410 Gone).
fn update<K: Resource + Clone>(objects: &mut BTreeMap<String, K>, event: WatchEvent<K>) -> anyhow::Result<bool> {
    match event {
        WatchEvent::Added(object) | WatchEvent::Modified(object) => {
            objects.insert(object.name_any(), object);
        }
        WatchEvent::Deleted(object) => {
            objects.remove(&object.name_any());
        }
        WatchEvent::Bookmark(_) => {}
        WatchEvent::Error(status) if status.code == 410 => return Ok(false),
        WatchEvent::Error(status) => bail!("the watch failed: {} ({})", status.message, status.reason),
    }
    Ok(true)
}

/// Waits until every Deployment of `workloads` is rolled out as `kubectl
/// rollout status` defines it, failing at the first doomed pod of a new
/// ReplicaSet, a passed progress deadline, or `timeout`.
pub async fn rollouts(
    client: &Client,
    namespace: &str,
    workloads: &BTreeSet<String>,
    timeout: Duration,
    progress: &Progress,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut pending = workloads.clone();
    let mut said: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let all = ListParams::default();
        let (listed_deployments, listed_sets, listed_pods) =
            futures::try_join!(deployments.list(&all), sets.list(&all), pods.list(&all)).with_context(|| {
                format!("failed to list the Deployments, ReplicaSets and Pods of namespace {namespace}")
            })?;
        let mut seen = Seen {
            deployments: listed_deployments.items.iter().map(|o| (o.name_any(), o.clone())).collect(),
            sets: listed_sets.items.into_iter().map(|o| (o.name_any(), o)).collect(),
            pods: listed_pods.items.into_iter().map(|o| (o.name_any(), o)).collect(),
        };
        if judge(client, namespace, &seen, &mut pending, &mut said, started, progress).await? {
            return Ok(());
        }
        let version = |v: Option<String>| v.unwrap_or_else(|| "0".to_owned());
        let params = WatchParams::default().timeout(WATCH_SECONDS);
        let watched_deployments = deployments
            .watch(&params, &version(listed_deployments.metadata.resource_version))
            .await?
            .map_ok(Change::Deployment)
            .boxed();
        let watched_sets = sets
            .watch(&params, &version(listed_sets.metadata.resource_version))
            .await?
            .map_ok(Change::ReplicaSet)
            .boxed();
        let watched_pods =
            pods.watch(&params, &version(listed_pods.metadata.resource_version)).await?.map_ok(Change::Pod).boxed();
        let mut changes =
            futures::stream::select(watched_deployments, futures::stream::select(watched_sets, watched_pods));
        loop {
            let change = match tokio::time::timeout_at(deadline, changes.next()).await {
                Err(_) => bail!(
                    "timed out after {} s waiting for {} to roll out",
                    timeout.as_secs(),
                    pending.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
                // The server closed the watch: list and watch again.
                Ok(None) => break,
                Ok(Some(change)) => change.context("the watch of the rollout failed")?,
            };
            let current = match change {
                Change::Deployment(event) => update(&mut seen.deployments, event)?,
                Change::ReplicaSet(event) => update(&mut seen.sets, event)?,
                Change::Pod(event) => update(&mut seen.pods, event)?,
            };
            if !current {
                break;
            }
            if judge(client, namespace, &seen, &mut pending, &mut said, started, progress).await? {
                return Ok(());
            }
        }
    }
}

/// Judges every pending rollout: true when none is left, an error at the
/// first that failed. Says each one's progress when it changes.
async fn judge(
    client: &Client,
    namespace: &str,
    seen: &Seen,
    pending: &mut BTreeSet<String>,
    said: &mut BTreeMap<String, String>,
    started: Instant,
    progress: &Progress,
) -> anyhow::Result<bool> {
    for workload in pending.clone() {
        let verdict = match seen.deployments.get(&workload) {
            None => Verdict::Waiting("waiting for the Deployment to be created".to_owned()),
            Some(deployment) => rollout::judge(deployment, seen.sets.values(), seen.pods.values()),
        };
        match verdict {
            Verdict::Done(_) => {
                pending.remove(&workload);
                progress
                    .emit(Event::RolledOut { workload: workload.clone(), seconds: started.elapsed().as_secs_f64() });
            }
            Verdict::Waiting(message) => {
                if said.get(&workload) != Some(&message) {
                    progress.emit(Event::RolloutWaiting { workload: workload.clone(), message: message.clone() });
                    said.insert(workload.clone(), message);
                }
            }
            Verdict::Deadline(message) => {
                progress.emit(Event::RolloutFailed {
                    workload: workload.clone(),
                    pod: String::new(),
                    container: String::new(),
                    reason: "ProgressDeadlineExceeded".to_owned(),
                    message: message.clone(),
                    events: Vec::new(),
                    log: Vec::new(),
                });
                bail!("rollout of Deployment {namespace}/{workload} failed: {message}");
            }
            Verdict::Pod(failure) => {
                let pod = seen.pods.get(&failure.pod);
                let (events, log) = evidence(client, namespace, pod, &failure).await;
                progress.emit(Event::RolloutFailed {
                    workload: workload.clone(),
                    pod: failure.pod.clone(),
                    container: failure.container.clone(),
                    reason: failure.reason.clone(),
                    message: failure.message.clone(),
                    events: events.clone(),
                    log: log.clone(),
                });
                bail!("{}", failure_message(namespace, &workload, &failure, &events, &log));
            }
        }
    }
    Ok(pending.is_empty())
}

/// The error of a doomed pod: workload, pod, container, reason, and what
/// the pod's events and log say.
pub fn failure_message(
    namespace: &str,
    workload: &str,
    failure: &PodFailure,
    events: &[String],
    log: &[String],
) -> String {
    let kind = if failure.init { "init container" } else { "container" };
    let mut message = format!(
        "rollout of Deployment {namespace}/{workload} failed: pod {}, {kind} {}: {}",
        failure.pod, failure.container, failure.reason
    );
    if !failure.message.is_empty() {
        message.push_str(&format!(" ({})", failure.message));
    }
    for (title, lines) in [("the pod's last events", events), ("the container's last log lines", log)] {
        if !lines.is_empty() {
            message.push_str(&format!("\n  {title}:"));
            for line in lines {
                message.push_str(&format!("\n    | {line}"));
            }
        }
    }
    message
}

/// The pod's last events ("Reason: message") and its container's last
/// log lines: best effort, since an image that never pulled has no log.
async fn evidence(
    client: &Client,
    namespace: &str,
    pod: Option<&Pod>,
    failure: &PodFailure,
) -> (Vec<String>, Vec<String>) {
    let uid = pod.and_then(|p| p.metadata.uid.clone());
    let events: Api<KubeEvent> = Api::namespaced(client.clone(), namespace);
    // Filtered here rather than by a field selector, which not every
    // server (nor every test server) implements for events.
    let mut events: Vec<KubeEvent> = match events.list(&ListParams::default()).await {
        Ok(list) => list
            .items
            .into_iter()
            .filter(|e| {
                e.involved_object.kind.as_deref() == Some("Pod")
                    && (e.involved_object.uid == uid || e.involved_object.name.as_deref() == Some(&failure.pod))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    events.sort_by_key(|e| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or_else(|| e.event_time.as_ref().map(|t| t.0))
            .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    });
    let events: Vec<String> = events
        .iter()
        .rev()
        .take(LAST_EVENTS)
        .rev()
        .map(|e| format!("{}: {}", e.reason.as_deref().unwrap_or("-"), e.message.as_deref().unwrap_or("").trim()))
        .collect();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = LogParams {
        container: Some(failure.container.clone()),
        previous: failure.previous_log,
        tail_lines: Some(LAST_LOG_LINES),
        ..LogParams::default()
    };
    let log = match pods.logs(&failure.pod, &params).await {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    };
    (events, log)
}

/// Whether an object's `Ready` condition is `True`, and its message.
fn ready(object: &Value) -> (bool, String) {
    let conditions = object.pointer("/status/conditions").and_then(Value::as_array);
    let condition = conditions.into_iter().flatten().find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"));
    let status = condition.and_then(|c| c.get("status")).and_then(Value::as_str);
    let text = |key: &str| condition.and_then(|c| c.get(key)).and_then(Value::as_str).unwrap_or("");
    let message = match condition {
        None => "no Ready condition yet".to_owned(),
        Some(_) => format!("Ready={} {}: {}", status.unwrap_or("Unknown"), text("reason"), text("message")),
    };
    (status == Some("True"), message)
}

/// Waits until the custom resource `name` (an ExternalSecret) says
/// `Ready=True`.
pub async fn until_ready(
    client: &Client,
    resource: &ApiResource,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    let what = format!("{} {namespace}/{name}", resource.kind);
    let mut last = String::from("not created yet");
    loop {
        let listed =
            api.list(&ListParams::default()).await.with_context(|| format!("failed to list {}s", resource.kind))?;
        if let Some(object) = listed.items.iter().find(|o| o.name_any() == name) {
            let (is_ready, message) = ready(&serde_json::to_value(object)?);
            if is_ready {
                return Ok(started.elapsed());
            }
            last = message;
        }
        let version = listed.metadata.resource_version.unwrap_or_else(|| "0".to_owned());
        let mut changes = api.watch(&WatchParams::default().timeout(WATCH_SECONDS), &version).await?.boxed();
        loop {
            let event = match tokio::time::timeout_at(deadline, changes.next()).await {
                Err(_) => bail!("{what} is not Ready after {} s: {last}", timeout.as_secs()),
                Ok(None) => break,
                Ok(Some(event)) => event.with_context(|| format!("the watch of {what} failed"))?,
            };
            match event {
                WatchEvent::Added(object) | WatchEvent::Modified(object) if object.name_any() == name => {
                    let (is_ready, message) = ready(&serde_json::to_value(&object)?);
                    if is_ready {
                        return Ok(started.elapsed());
                    }
                    last = message;
                }
                WatchEvent::Error(status) if status.code == 410 => break,
                WatchEvent::Error(status) => bail!("the watch of {what} failed: {}", status.message),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_external_secret_is_ready_when_its_condition_says_so() {
        let synced = serde_json::json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "SecretSynced", "message": "secret synced"}]}});
        assert_eq!(ready(&synced), (true, "Ready=True SecretSynced: secret synced".into()));
        let failing = serde_json::json!({"status": {"conditions": [
            {"type": "Ready", "status": "False", "reason": "SecretSyncedError", "message": "could not get secret data from provider"}]}});
        assert_eq!(ready(&failing).0, false);
        assert!(ready(&failing).1.contains("could not get secret data"));
        assert_eq!(ready(&serde_json::json!({})), (false, "no Ready condition yet".into()));
    }

    #[test]
    fn a_failure_names_the_workload_pod_container_reason_events_and_log() {
        let failure = PodFailure {
            pod: "auth-service-7b9c6d5f8-m5v7c".into(),
            container: "auth".into(),
            init: false,
            reason: "CrashLoopBackOff".into(),
            message: "exited with code 2 (Error)".into(),
            previous_log: true,
        };
        let message = failure_message(
            "freedumb",
            "auth-service",
            &failure,
            &["BackOff: Back-off restarting failed container auth".into()],
            &["error: JWT_ACCESS_SECRET must be at least 32 bytes".into()],
        );
        assert_eq!(
            message,
            "rollout of Deployment freedumb/auth-service failed: pod auth-service-7b9c6d5f8-m5v7c, container auth: \
             CrashLoopBackOff (exited with code 2 (Error))\n  \
             the pod's last events:\n    | BackOff: Back-off restarting failed container auth\n  \
             the container's last log lines:\n    | error: JWT_ACCESS_SECRET must be at least 32 bytes"
        );
    }
}

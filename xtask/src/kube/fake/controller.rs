//! What kube-controller-manager, the scheduler, the kubelet and the
//! operators would do, one small step at a time ([`super::Config::step`]),
//! so that a waiter really has to watch:
//!
//! - the deployment controller: a ReplicaSet per pod template (named with
//!   its `pod-template-hash`, its revision in
//!   `deployment.kubernetes.io/revision`, an old template's ReplicaSet
//!   adopted again with the next revision), rolling updates within
//!   `maxSurge`/`maxUnavailable` (or Recreate), and the status kubectl's
//!   `rollout status` reads: observedGeneration, the replica counts
//!   (omitted when zero, as the real JSON omits them), and the Available
//!   and Progressing conditions with their real reasons;
//! - the replica set controller: pods for its replicas, and its status;
//! - the kubelet: each pod through scheduling, init containers and
//!   containers, as its [`Behaviour`] says, with container statuses,
//!   Events and log lines; it also refuses, as the real one does, to start
//!   a container whose `secretKeyRef`, `configMapKeyRef` or `envFrom`
//!   names a Secret, ConfigMap or key that is not there
//!   (CreateContainerConfigError), until it is;
//! - the job controller, minimally: a pod per attempt, Complete or Failed;
//! - the horizontal pod autoscaler: a Deployment's replicas within the
//!   HPA's bounds, through the scale subresource;
//! - the garbage collector and the namespace controller: dependents of a
//!   deleted owner (background and foreground), finalizers, terminating
//!   namespaces;
//! - the External Secrets Operator (target Secret, `Ready`) and
//!   cert-manager (`Ready`, the TLS Secret).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::kinds::Resource;
use super::store::{self, Key, State, now};
use super::{Behaviour, Config, SecretSync, Shared};

const MANAGER: &str = "kube-controller-manager";
const NODE: &str = "fake-node-1";

pub async fn run(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(shared.config.step);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        shared.write(|state| step(state, &shared.config));
    }
}

/// What the controllers remember between steps (the real ones keep it in
/// informer caches and in the container runtime).
#[derive(Default)]
pub struct Memory {
    pods: BTreeMap<(String, String), PodSim>,
    /// Per Deployment uid: when it last made progress, and what it looked
    /// like then.
    progress: BTreeMap<String, (Instant, Value)>,
    /// Per custom resource uid and generation: when it was first seen.
    first_seen: BTreeMap<(String, i64), Instant>,
    /// Event names by (involved uid, reason, message), to count repeats.
    events: BTreeMap<(String, String, String), (String, String)>,
}

/// The resources the controllers touch.
struct Kinds {
    deployments: Resource,
    replicasets: Resource,
    pods: Resource,
    events: Resource,
    secrets: Resource,
    jobs: Resource,
    hpas: Resource,
    pvcs: Resource,
}

impl Kinds {
    fn of(state: &State) -> Kinds {
        let r = |name: &str| state.resource_named(name).expect("built in");
        Kinds {
            deployments: r("deployments"),
            replicasets: r("replicasets"),
            pods: r("pods"),
            events: r("events"),
            secrets: r("secrets"),
            jobs: r("jobs"),
            hpas: r("horizontalpodautoscalers"),
            pvcs: r("persistentvolumeclaims"),
        }
    }
}

fn step(state: &mut State, config: &Config) {
    let kinds = Kinds::of(state);
    collect_garbage(state, &kinds);
    autoscale(state, &kinds);
    for deployment in snapshot(state, &kinds.deployments) {
        sync_deployment(state, &kinds, config, &deployment);
    }
    for replicaset in snapshot(state, &kinds.replicasets) {
        sync_replicaset(state, &kinds, &replicaset);
    }
    for job in snapshot(state, &kinds.jobs) {
        sync_job(state, &kinds, &job);
    }
    let pods: Vec<(String, String)> = state.controller.pods.keys().cloned().collect();
    for (namespace, name) in pods {
        run_pod(state, &kinds, &namespace, &name);
    }
    for pvc in snapshot(state, &kinds.pvcs) {
        if pvc.pointer("/status/phase").and_then(Value::as_str) != Some("Bound") {
            let mut bound = pvc.clone();
            bound["status"] = json!({"phase": "Bound", "accessModes": pvc.pointer("/spec/accessModes").cloned().unwrap_or(json!(["ReadWriteOnce"])),
                "capacity": {"storage": pvc.pointer("/spec/resources/requests/storage").cloned().unwrap_or(json!("1Gi"))}});
            write(state, &kinds.pvcs, bound, Some("status"));
        }
    }
    sync_operators(state, &kinds, config);
}

fn snapshot(state: &State, res: &Resource) -> Vec<Value> {
    state.list(res, None).into_iter().filter(|o| o.pointer("/metadata/deletionTimestamp").is_none()).cloned().collect()
}

fn write(state: &mut State, res: &Resource, mut object: Value, subresource: Option<&str>) -> Value {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        // Controllers here write what they just read under the same lock;
        // no precondition is needed.
        meta.remove("resourceVersion");
    }
    state.controller_write(res, object, MANAGER, subresource)
}

fn meta<'a>(object: &'a Value, field: &str) -> &'a str {
    object["metadata"][field].as_str().unwrap_or_default()
}

fn int(object: &Value, pointer: &str) -> i64 {
    object.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn owned_by(state: &State, res: &Resource, namespace: &str, uid: &str) -> Vec<Value> {
    state.list(res, Some(namespace)).into_iter().filter(|o| store::owned_by(o, uid)).cloned().collect()
}

fn owner_reference(owner: &Value) -> Value {
    json!({"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true})
}

// ---------------------------------------------------------------------------
// Deployments

const REVISION: &str = "deployment.kubernetes.io/revision";

/// Whether a Deployment has rolled out, exactly as `kubectl rollout
/// status` decides it (for the tests' own waits).
pub fn rolled_out(deployment: &Value) -> bool {
    let desired = deployment.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
    let updated = int(deployment, "/status/updatedReplicas");
    int(deployment, "/status/observedGeneration") >= int(deployment, "/metadata/generation")
        && updated >= desired
        && int(deployment, "/status/replicas") <= updated
        && int(deployment, "/status/availableReplicas") >= updated
}

/// The pod template without the label the controller adds.
fn bare_template(template: &Value) -> Value {
    let mut template = template.clone();
    if let Some(labels) = template.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
        labels.remove("pod-template-hash");
    }
    template
}

fn template_hash(template: &Value) -> String {
    store::safe_encode(&store::fnv32a(bare_template(template).to_string().as_bytes()).to_string())
}

/// `maxSurge`/`maxUnavailable`: an integer or a percentage of `desired`
/// (surge rounds up, unavailability down).
fn resolve(value: Option<&Value>, desired: i64, round_up: bool, default: &str) -> i64 {
    let text = match value {
        Some(Value::Number(n)) => return n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => s.clone(),
        _ => default.to_owned(),
    };
    match text.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
        Some(percent) if round_up => (desired * percent + 99) / 100,
        Some(percent) => desired * percent / 100,
        None => text.parse().unwrap_or(0),
    }
}

fn revision(object: &Value) -> i64 {
    object
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(REVISION))
        .and_then(Value::as_str)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn set_annotation(object: &mut Value, key: &str, value: String) {
    if !object["metadata"]["annotations"].is_object() {
        object["metadata"]["annotations"] = json!({});
    }
    object["metadata"]["annotations"][key] = json!(value);
}

fn sync_deployment(state: &mut State, kinds: &Kinds, config: &Config, deployment: &Value) {
    let (namespace, name, uid) = (meta(deployment, "namespace"), meta(deployment, "name"), meta(deployment, "uid"));
    let desired = deployment.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
    let template = deployment.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let mut replicasets = owned_by(state, &kinds.replicasets, namespace, uid);
    replicasets.sort_by_key(revision);
    let max_revision = replicasets.iter().map(revision).max().unwrap_or(0);
    let strategy =
        deployment.pointer("/spec/strategy/type").and_then(Value::as_str).unwrap_or("RollingUpdate").to_owned();
    let surge = if strategy == "Recreate" {
        0
    } else {
        resolve(deployment.pointer("/spec/strategy/rollingUpdate/maxSurge"), desired, true, "25%")
    };
    let mut unavailable = if strategy == "Recreate" {
        desired
    } else {
        resolve(deployment.pointer("/spec/strategy/rollingUpdate/maxUnavailable"), desired, false, "25%")
    };
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }

    let mut progressing: Option<(&str, String)> = None;
    let new_rs =
        replicasets.iter().find(|rs| bare_template(&rs["spec"]["template"]) == bare_template(&template)).cloned();
    let new_rs = match new_rs {
        None => {
            let hash = template_hash(&template);
            let rs_name = format!("{name}-{hash}");
            let mut rs_template = template.clone();
            rs_template["metadata"]["labels"]["pod-template-hash"] = json!(hash);
            let mut selector = deployment.pointer("/spec/selector").cloned().unwrap_or(json!({}));
            selector["matchLabels"]["pod-template-hash"] = json!(hash);
            let total: i64 = replicasets.iter().map(|rs| int(rs, "/spec/replicas")).sum();
            let replicas =
                if strategy == "Recreate" && total > 0 { 0 } else { desired.min((desired + surge - total).max(0)) };
            let mut labels = template.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
            labels["pod-template-hash"] = json!(hash);
            let rs = json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": rs_name, "namespace": namespace, "labels": labels,
                    "annotations": {REVISION: (max_revision + 1).to_string(),
                        "deployment.kubernetes.io/desired-replicas": desired.to_string(),
                        "deployment.kubernetes.io/max-replicas": (desired + surge).to_string()},
                    "ownerReferences": [owner_reference(deployment)]},
                "spec": {"replicas": replicas, "minReadySeconds": deployment.pointer("/spec/minReadySeconds").cloned().unwrap_or(json!(0)),
                    "selector": selector, "template": rs_template},
            });
            progressing = Some(("NewReplicaSetCreated", format!("Created new replica set \"{rs_name}\"")));
            let created = write(state, &kinds.replicasets, rs, None);
            if created.is_null() {
                return;
            }
            let message = format!("Scaled up replica set {rs_name} from 0 to {replicas}");
            record_event(
                state,
                kinds,
                deployment,
                controller_event("ScalingReplicaSet", message, "deployment-controller"),
            );
            replicasets.push(created.clone());
            created
        }
        Some(rs) if revision(&rs) < max_revision => {
            // An old template again (a rollback by re-apply): its
            // ReplicaSet is adopted with the next revision.
            let mut adopted = rs.clone();
            set_annotation(&mut adopted, REVISION, (max_revision + 1).to_string());
            progressing = Some(("FoundNewReplicaSet", format!("Found new replica set \"{}\"", meta(&rs, "name"))));
            let adopted = write(state, &kinds.replicasets, adopted, None);
            for rs in replicasets.iter_mut() {
                if meta(rs, "uid") == meta(&adopted, "uid") {
                    *rs = adopted.clone();
                }
            }
            adopted
        }
        Some(rs) => rs,
    };
    let new_uid = meta(&new_rs, "uid").to_owned();
    let new_name = meta(&new_rs, "name").to_owned();
    if revision(deployment) != revision(&new_rs) {
        let mut annotated = deployment.clone();
        set_annotation(&mut annotated, REVISION, revision(&new_rs).to_string());
        write(state, &kinds.deployments, annotated, None);
    }

    // One scaling action per step, as the real controller returns after
    // each (and requeues).
    let paused = deployment.pointer("/spec/paused").and_then(Value::as_bool).unwrap_or(false);
    if !paused && progressing.is_none() {
        let old: Vec<&Value> = replicasets.iter().filter(|rs| meta(rs, "uid") != new_uid).collect();
        let total: i64 = replicasets.iter().map(|rs| int(rs, "/spec/replicas")).sum();
        let new_replicas = int(&new_rs, "/spec/replicas");
        let scale = |state: &mut State, rs: &Value, to: i64| {
            let from = int(rs, "/spec/replicas");
            let direction = if to > from { "up" } else { "down" };
            let message = format!("Scaled {direction} replica set {} from {from} to {to}", meta(rs, "name"));
            record_event(
                state,
                kinds,
                deployment,
                controller_event("ScalingReplicaSet", message, "deployment-controller"),
            );
            let mut scaled = rs.clone();
            scaled["spec"]["replicas"] = json!(to);
            set_annotation(&mut scaled, "deployment.kubernetes.io/desired-replicas", desired.to_string());
            set_annotation(&mut scaled, "deployment.kubernetes.io/max-replicas", (desired + surge).to_string());
            write(state, &kinds.replicasets, scaled, None);
        };
        if strategy == "Recreate" {
            let old_pods: usize =
                old.iter().map(|rs| owned_by(state, &kinds.pods, namespace, meta(rs, "uid")).len()).sum();
            if let Some(rs) = old.iter().find(|rs| int(rs, "/spec/replicas") > 0) {
                scale(state, rs, 0);
            } else if old_pods == 0 && new_replicas != desired {
                scale(state, &new_rs, desired);
            }
        } else if new_replicas > desired {
            scale(state, &new_rs, desired);
        } else if new_replicas < desired && desired + surge - total > 0 {
            scale(state, &new_rs, desired.min(new_replicas + desired + surge - total));
        } else {
            // Old replicas go while enough stay available: unhealthy ones
            // first, then as many as the availability budget allows.
            let min_available = desired - unavailable;
            let new_unavailable = new_replicas - int(&new_rs, "/status/availableReplicas");
            let mut budget = total - min_available - new_unavailable;
            let mut scaled = false;
            for rs in &old {
                let (spec, available) = (int(rs, "/spec/replicas"), int(rs, "/status/availableReplicas"));
                if budget > 0 && spec > available {
                    let by = (spec - available).min(budget);
                    scale(state, rs, spec - by);
                    budget -= by;
                    scaled = true;
                }
            }
            if !scaled {
                let all_available: i64 = replicasets.iter().map(|rs| int(rs, "/status/availableReplicas")).sum();
                let mut budget = all_available - min_available;
                for rs in &old {
                    let spec = int(rs, "/spec/replicas");
                    if budget > 0 && spec > 0 {
                        let by = spec.min(budget);
                        scale(state, rs, spec - by);
                        budget -= by;
                    }
                }
            }
        }
    }

    // The status, from the ReplicaSets as they are now.
    let replicasets: Vec<Value> = owned_by(state, &kinds.replicasets, namespace, uid)
        .into_iter()
        .filter(|rs| rs["metadata"]["deletionTimestamp"].is_null())
        .collect();
    let new_rs = replicasets.iter().find(|rs| meta(rs, "uid") == new_uid).cloned().unwrap_or(new_rs);
    let sum = |pointer: &str| replicasets.iter().map(|rs| int(rs, pointer)).sum::<i64>();
    let (replicas, ready, available) =
        (sum("/status/replicas"), sum("/status/readyReplicas"), sum("/status/availableReplicas"));
    let updated = int(&new_rs, "/status/replicas");
    let spec_total = sum("/spec/replicas");
    let generation = int(deployment, "/metadata/generation");
    let complete = updated == desired && replicas == updated && available == updated;
    let counts = json!([int(&new_rs, "/spec/replicas"), updated, ready, available, replicas, generation]);
    let now_instant = Instant::now();
    let (last_progress, last_counts) =
        state.controller.progress.get(uid).cloned().unwrap_or((now_instant, Value::Null));
    let moved = last_counts != counts;
    if moved || progressing.is_some() {
        state.controller.progress.insert(uid.to_owned(), (now_instant, counts));
    }
    let old_conditions: Vec<Value> =
        deployment.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let old_progressing = old_conditions.iter().find(|c| c["type"] == "Progressing").cloned();
    let old_reason = old_progressing.as_ref().and_then(|c| c["reason"].as_str()).unwrap_or_default().to_owned();
    let deadline =
        Duration::from_secs(deployment.pointer("/spec/progressDeadlineSeconds").and_then(Value::as_u64).unwrap_or(600))
            .min(config.progress_deadline);
    let progressing = if let Some((reason, message)) = progressing {
        Some(("True", reason.to_owned(), message))
    } else if complete {
        Some((
            "True",
            "NewReplicaSetAvailable".to_owned(),
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
        ))
    } else if moved {
        Some(("True", "ReplicaSetUpdated".to_owned(), format!("ReplicaSet \"{new_name}\" is progressing.")))
    } else if old_reason != "ProgressDeadlineExceeded" && now_instant.duration_since(last_progress) > deadline {
        Some((
            "False",
            "ProgressDeadlineExceeded".to_owned(),
            format!("ReplicaSet \"{new_name}\" has timed out progressing."),
        ))
    } else {
        None
    };
    let available_condition = if available >= desired - unavailable {
        ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
    } else {
        ("False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
    };
    let mut conditions = Vec::new();
    conditions.push(condition(
        &old_conditions,
        "Available",
        available_condition.0,
        available_condition.1,
        available_condition.2,
        false,
    ));
    match progressing {
        Some((status, reason, message)) => conditions.push(condition(
            &old_conditions,
            "Progressing",
            status,
            &reason,
            &message,
            reason != "NewReplicaSetAvailable",
        )),
        None => conditions.extend(old_progressing),
    }
    let mut status = json!({"observedGeneration": generation});
    for (field, value) in [
        ("replicas", replicas),
        ("updatedReplicas", updated),
        ("readyReplicas", ready),
        ("availableReplicas", available),
        ("unavailableReplicas", (spec_total.max(desired) - available).max(0)),
    ] {
        if value != 0 {
            status[field] = json!(value);
        }
    }
    status["conditions"] = json!(conditions);
    if deployment.get("status") != Some(&status) {
        let mut with = state
            .get(&kinds.deployments, namespace, meta(deployment, "name"))
            .cloned()
            .unwrap_or_else(|| deployment.clone());
        with["status"] = status;
        write(state, &kinds.deployments, with, Some("status"));
    }
}

/// A condition; its lastTransitionTime moves only when its status does,
/// its lastUpdateTime whenever it is written anew (`touch`) or changes.
fn condition(old: &[Value], kind: &str, status: &str, reason: &str, message: &str, touch: bool) -> Value {
    let now = now();
    let previous = old.iter().find(|c| c["type"] == kind);
    let same = previous.is_some_and(|c| c["status"] == status && c["reason"] == reason && c["message"] == message);
    let transition = match previous {
        Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    let update = match previous {
        Some(c) if same && !touch => c["lastUpdateTime"].clone(),
        Some(c) if same && c["lastUpdateTime"] == json!(now) => c["lastUpdateTime"].clone(),
        _ => json!(now),
    };
    json!({"type": kind, "status": status, "lastUpdateTime": update, "lastTransitionTime": transition, "reason": reason, "message": message})
}

// ---------------------------------------------------------------------------
// ReplicaSets and Jobs

fn sync_replicaset(state: &mut State, kinds: &Kinds, replicaset: &Value) {
    let (namespace, uid) = (meta(replicaset, "namespace").to_owned(), meta(replicaset, "uid").to_owned());
    let want = int(replicaset, "/spec/replicas");
    let mut pods: Vec<Value> = owned_by(state, &kinds.pods, &namespace, &uid)
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect();
    let have = pods.len() as i64;
    if have < want {
        for _ in have..want {
            let pod = new_pod(state, replicaset, &replicaset["spec"]["template"], meta(replicaset, "name"));
            let created = create_pod(state, kinds, pod, owner_name(state, replicaset));
            if created.is_null() {
                break;
            }
            let message = format!("Created pod: {}", meta(&created, "name"));
            record_event(
                state,
                kinds,
                replicaset,
                controller_event("SuccessfulCreate", message, "replicaset-controller"),
            );
            pods.push(created);
        }
    } else if have > want {
        // Not-ready pods go first, then the newest.
        pods.sort_by_key(|pod| {
            (pod_ready(pod), std::cmp::Reverse(meta(pod, "creationTimestamp").to_owned()), meta(pod, "name").to_owned())
        });
        for pod in pods.drain(..(have - want) as usize) {
            delete_pod(state, kinds, &namespace, meta(&pod, "name"));
            let message = format!("Deleted pod: {}", meta(&pod, "name"));
            record_event(
                state,
                kinds,
                replicaset,
                controller_event("SuccessfulDelete", message, "replicaset-controller"),
            );
        }
    }
    let ready = pods.iter().filter(|pod| pod_ready(pod)).count() as i64;
    let mut status = json!({"observedGeneration": int(replicaset, "/metadata/generation")});
    for (field, value) in [
        ("replicas", pods.len() as i64),
        ("fullyLabeledReplicas", pods.len() as i64),
        ("readyReplicas", ready),
        ("availableReplicas", ready),
    ] {
        if value != 0 {
            status[field] = json!(value);
        }
    }
    if replicaset.get("status") != Some(&status) {
        let mut with = state
            .get(&kinds.replicasets, &namespace, meta(replicaset, "name"))
            .cloned()
            .unwrap_or_else(|| replicaset.clone());
        with["status"] = status;
        write(state, &kinds.replicasets, with, Some("status"));
    }
}

/// The Deployment (or Job) a pod's owner belongs to, for its behaviour.
fn owner_name(state: &State, owner: &Value) -> String {
    let _ = state;
    owner
        .pointer("/metadata/ownerReferences/0/name")
        .and_then(Value::as_str)
        .unwrap_or_else(|| meta(owner, "name"))
        .to_owned()
}

fn new_pod(state: &mut State, owner: &Value, template: &Value, base: &str) -> Value {
    let name = format!("{base}-{}", state.suffix());
    let mut metadata = template.get("metadata").cloned().unwrap_or(json!({}));
    metadata["name"] = json!(name);
    metadata["namespace"] = owner["metadata"]["namespace"].clone();
    metadata["ownerReferences"] = json!([owner_reference(owner)]);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template.get("spec").cloned().unwrap_or(json!({}))})
}

fn create_pod(state: &mut State, kinds: &Kinds, pod: Value, workload: String) -> Value {
    let created = write(state, &kinds.pods, pod, None);
    if created.is_null() {
        return created;
    }
    let sim = PodSim::new(state, &created, &workload);
    let key = (meta(&created, "namespace").to_owned(), meta(&created, "name").to_owned());
    state.controller.pods.insert(key, sim);
    created
}

fn delete_pod(state: &mut State, kinds: &Kinds, namespace: &str, name: &str) {
    let _ = state.delete(&kinds.pods, namespace, name, "Background", false);
    state.controller.pods.remove(&(namespace.to_owned(), name.to_owned()));
}

fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|conditions| conditions.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn sync_job(state: &mut State, kinds: &Kinds, job: &Value) {
    let (namespace, uid, name) =
        (meta(job, "namespace").to_owned(), meta(job, "uid").to_owned(), meta(job, "name").to_owned());
    if job
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Complete" || c["type"] == "Failed"))
    {
        return;
    }
    let pods = owned_by(state, &kinds.pods, &namespace, &uid);
    let phase = |pod: &Value| pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or_default().to_owned();
    let succeeded = pods.iter().filter(|p| phase(p) == "Succeeded").count() as i64;
    let failed = pods.iter().filter(|p| phase(p) == "Failed").count() as i64;
    let active = pods.len() as i64 - succeeded - failed;
    let backoff_limit = job.pointer("/spec/backoffLimit").and_then(Value::as_i64).unwrap_or(6);
    let mut status = job.get("status").cloned().unwrap_or(json!({}));
    if status.get("startTime").is_none() {
        status["startTime"] = json!(now());
    }
    let mut conditions = Vec::new();
    if succeeded > 0 {
        status["completionTime"] = json!(now());
        conditions.push(json!({"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastProbeTime": now(), "lastTransitionTime": now()}));
        conditions.push(json!({"type": "Complete", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastProbeTime": now(), "lastTransitionTime": now()}));
    } else if failed > backoff_limit {
        conditions.push(json!({"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit", "lastProbeTime": now(), "lastTransitionTime": now()}));
        conditions.push(json!({"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit", "lastProbeTime": now(), "lastTransitionTime": now()}));
    } else if active == 0 {
        let mut template = job["spec"]["template"].clone();
        template["metadata"]["labels"]["batch.kubernetes.io/job-name"] = json!(name);
        template["metadata"]["labels"]["job-name"] = json!(name);
        template["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] = json!(uid);
        template["metadata"]["labels"]["controller-uid"] = json!(uid);
        let pod = new_pod(state, job, &template, &name);
        create_pod(state, kinds, pod, name.clone());
    }
    for (field, value) in [("active", active.max(0)), ("succeeded", succeeded), ("failed", failed)] {
        match value {
            0 => {
                status.as_object_mut().expect("a map").remove(field);
            }
            n => status[field] = json!(n),
        }
    }
    if !conditions.is_empty() {
        status["conditions"] = json!(conditions);
        status.as_object_mut().expect("a map").remove("active");
    }
    if job.get("status") != Some(&status) {
        let mut with = job.clone();
        with["status"] = status;
        write(state, &kinds.jobs, with, Some("status"));
    }
}

// ---------------------------------------------------------------------------
// The kubelet

#[derive(Debug, Clone)]
enum CState {
    Waiting(String, Option<String>),
    Running(String),
    Terminated { exit: i64, reason: String, started: String, finished: String },
}

#[derive(Debug, Clone)]
struct Container {
    name: String,
    image: String,
    init: bool,
    state: CState,
    last: Option<CState>,
    restarts: u32,
    ready: bool,
    started: bool,
    /// Steps spent in the current state (for back-offs and repeats).
    steps: u32,
    id: String,
}

#[derive(Debug, Clone)]
struct PodSim {
    behaviour: Behaviour,
    /// The container the behaviour strikes (`None`: every main container).
    target: Option<String>,
    scheduled: bool,
    start_time: String,
    /// Pods of Jobs run to completion instead of restarting.
    run_to_completion: bool,
    containers: Vec<Container>,
}

/// `(behaviour, target container)` for a new pod: by its workload's name,
/// else by the first container (init containers first) whose image is
/// scripted.
fn choose(state: &State, workload: &str, containers: &[Container], pod: &Value) -> (Behaviour, Option<String>) {
    let first_with_secret = |only_image: Option<&str>| {
        containers
            .iter()
            .find(|c| only_image.is_none_or(|i| c.image == i) && !secret_refs(pod, &c.name).is_empty())
            .map(|c| c.name.clone())
    };
    let first_main = |only_image: Option<&str>| {
        containers.iter().find(|c| !c.init && only_image.is_none_or(|i| c.image == i)).map(|c| c.name.clone())
    };
    let first_init = |only_image: Option<&str>| {
        containers.iter().find(|c| c.init && only_image.is_none_or(|i| c.image == i)).map(|c| c.name.clone())
    };
    let pick = |behaviour: Behaviour, image: Option<&str>| -> (Behaviour, Option<String>) {
        let target = match behaviour {
            Behaviour::Healthy | Behaviour::ProgressDeadline => None,
            Behaviour::ImagePullBackOff => {
                containers.iter().find(|c| image.is_none_or(|i| c.image == i)).map(|c| c.name.clone())
            }
            Behaviour::CrashLoop => first_main(image),
            Behaviour::MissingSecretKey => first_with_secret(image).or_else(|| first_main(image)),
            Behaviour::FailingInit => first_init(image),
        };
        match (behaviour, &target) {
            (
                Behaviour::CrashLoop
                | Behaviour::FailingInit
                | Behaviour::ImagePullBackOff
                | Behaviour::MissingSecretKey,
                None,
            ) => (Behaviour::Healthy, None),
            _ => (behaviour, target),
        }
    };
    if let Some(behaviour) = state.behaviours.get(workload) {
        return pick(*behaviour, None);
    }
    for container in containers {
        if let Some(behaviour) = state.behaviours.get(&container.image) {
            return pick(*behaviour, Some(&container.image));
        }
    }
    (Behaviour::Healthy, None)
}

impl PodSim {
    fn new(state: &State, pod: &Value, workload: &str) -> PodSim {
        let mut containers = Vec::new();
        let has_init = pod.pointer("/spec/initContainers").and_then(Value::as_array).is_some_and(|c| !c.is_empty());
        let waiting_for = if has_init { "PodInitializing" } else { "ContainerCreating" }.to_owned();
        for (list, init) in [("initContainers", true), ("containers", false)] {
            for c in pod.pointer(&format!("/spec/{list}")).and_then(Value::as_array).into_iter().flatten() {
                containers.push(Container {
                    name: c["name"].as_str().unwrap_or_default().to_owned(),
                    image: c["image"].as_str().unwrap_or_default().to_owned(),
                    init,
                    state: CState::Waiting(waiting_for.clone(), None),
                    last: None,
                    restarts: 0,
                    ready: false,
                    started: false,
                    steps: 0,
                    id: String::new(),
                });
            }
        }
        let (behaviour, target) = choose(state, workload, &containers, pod);
        let run_to_completion =
            pod.pointer("/spec/restartPolicy").and_then(Value::as_str).is_some_and(|p| p != "Always");
        PodSim { behaviour, target, scheduled: false, start_time: now(), run_to_completion, containers }
    }

    fn strikes(&self, container: &Container, behaviour: Behaviour) -> bool {
        self.behaviour == behaviour && self.target.as_deref().is_none_or(|t| t == container.name)
    }
}

/// The `secretKeyRef`s of a container: (secret, key, optional).
fn secret_refs(pod: &Value, container: &str) -> Vec<(String, String)> {
    container_spec(pod, container)
        .and_then(|c| c.get("env"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|env| env.pointer("/valueFrom/secretKeyRef"))
        .map(|r| (r["name"].as_str().unwrap_or_default().to_owned(), r["key"].as_str().unwrap_or_default().to_owned()))
        .collect()
}

fn container_spec<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|list| pod.pointer(&format!("/spec/{list}")).and_then(Value::as_array))
        .flatten()
        .find(|c| c["name"] == name)
}

/// Why the kubelet cannot create the container's configuration, if it
/// cannot: the messages are the kubelet's.
fn config_error(state: &State, kinds: &Kinds, pod: &Value, container: &str) -> Option<String> {
    let namespace = meta(pod, "namespace");
    let spec = container_spec(pod, container)?;
    let configmaps = state.resource_named("configmaps").expect("built in");
    let data_has = |object: &Value, key: &str| {
        object.get("data").and_then(|d| d.get(key)).is_some()
            || object.get("binaryData").and_then(|d| d.get(key)).is_some()
    };
    for env in spec.get("env").and_then(Value::as_array).into_iter().flatten() {
        for (pointer, res, kind, noun) in [
            ("/valueFrom/secretKeyRef", &kinds.secrets, "Secret", "secret"),
            ("/valueFrom/configMapKeyRef", &configmaps, "ConfigMap", "configmap"),
        ] {
            let Some(reference) = env.pointer(pointer) else { continue };
            let (name, key) =
                (reference["name"].as_str().unwrap_or_default(), reference["key"].as_str().unwrap_or_default());
            if reference["optional"] == true {
                continue;
            }
            match state.get(res, namespace, name) {
                None => return Some(format!("{noun} \"{name}\" not found")),
                Some(object) if !data_has(object, key) => {
                    return Some(format!("couldn't find key {key} in {kind} {namespace}/{name}"));
                }
                Some(_) => {}
            }
        }
    }
    for from in spec.get("envFrom").and_then(Value::as_array).into_iter().flatten() {
        for (field, res, noun) in [("secretRef", &kinds.secrets, "secret"), ("configMapRef", &configmaps, "configmap")]
        {
            let Some(reference) = from.get(field) else { continue };
            let name = reference["name"].as_str().unwrap_or_default();
            if reference["optional"] != true && state.get(res, namespace, name).is_none() {
                return Some(format!("{noun} \"{name}\" not found"));
            }
        }
    }
    None
}

struct PodEvent {
    kind: &'static str,
    reason: &'static str,
    message: String,
    field_path: Option<String>,
    component: &'static str,
}

fn controller_event(reason: &'static str, message: String, component: &'static str) -> PodEvent {
    PodEvent { kind: "Normal", reason, message, field_path: None, component }
}

fn normal(reason: &'static str, message: String, container: &str) -> PodEvent {
    PodEvent {
        kind: "Normal",
        reason,
        message,
        field_path: Some(format!("spec.containers{{{container}}}")),
        component: "kubelet",
    }
}

fn warning(reason: &'static str, message: String, container: &str) -> PodEvent {
    PodEvent {
        kind: "Warning",
        reason,
        message,
        field_path: Some(format!("spec.containers{{{container}}}")),
        component: "kubelet",
    }
}

/// One step of the kubelet for one pod.
fn run_pod(state: &mut State, kinds: &Kinds, namespace: &str, name: &str) {
    let Some(pod) = state.get(&kinds.pods, namespace, name).cloned() else {
        state.controller.pods.remove(&(namespace.to_owned(), name.to_owned()));
        return;
    };
    let Some(mut sim) = state.controller.pods.get(&(namespace.to_owned(), name.to_owned())).cloned() else { return };
    let mut events: Vec<PodEvent> = Vec::new();
    let mut logs: Vec<(String, u32, String)> = Vec::new();
    let now = now();
    let uid = meta(&pod, "uid").to_owned();

    if !sim.scheduled {
        sim.scheduled = true;
        events.push(PodEvent {
            kind: "Normal",
            reason: "Scheduled",
            message: format!("Successfully assigned {namespace}/{name} to {NODE}"),
            field_path: None,
            component: "default-scheduler",
        });
    } else {
        // Init containers one after the other; the main containers once
        // every init container has completed.
        let pending_init =
            sim.containers.iter().position(|c| c.init && !matches!(&c.state, CState::Terminated { exit: 0, .. }));
        let indices: Vec<usize> = match pending_init {
            Some(at) => vec![at],
            None => (0..sim.containers.len()).filter(|i| !sim.containers[*i].init).collect(),
        };
        for at in indices {
            let mut c = sim.containers[at].clone();
            c.steps += 1;
            let fail_pull = sim.strikes(&c, Behaviour::ImagePullBackOff);
            let crash = (c.init && sim.strikes(&c, Behaviour::FailingInit))
                || (!c.init && sim.strikes(&c, Behaviour::CrashLoop));
            let never_ready = !c.init && sim.behaviour == Behaviour::ProgressDeadline;
            let instance = c.restarts;
            match c.state.clone() {
                CState::Waiting(reason, _) if reason == "CrashLoopBackOff" => {
                    // Back-off: two steps, then the next run.
                    if c.steps >= 2 {
                        c.state = CState::Running(now.clone());
                        c.steps = 0;
                        c.started = true;
                        events.push(normal("Started", format!("Started container {}", c.name), &c.name));
                        logs.push((c.name.clone(), instance, start_line(&c)));
                    }
                }
                CState::Waiting(_, _) => {
                    let forced = sim.strikes(&c, Behaviour::MissingSecretKey).then(|| {
                        let refs = secret_refs(&pod, &c.name);
                        match refs.first() {
                            Some((secret, key)) => format!("couldn't find key {key} in Secret {namespace}/{secret}"),
                            None => format!("couldn't find key SECRET in Secret {namespace}/{name}"),
                        }
                    });
                    if fail_pull {
                        let pull_error = format!(
                            "rpc error: code = NotFound desc = failed to pull and unpack image \"{0}\": failed to resolve reference \"{0}\": {0}: not found",
                            c.image
                        );
                        let was_backoff = matches!(&c.state, CState::Waiting(r, _) if r == "ImagePullBackOff");
                        let was_pull_error = matches!(&c.state, CState::Waiting(r, _) if r == "ErrImagePull");
                        if !was_backoff && !was_pull_error {
                            events.push(normal("Pulling", format!("Pulling image \"{}\"", c.image), &c.name));
                            events.push(warning(
                                "Failed",
                                format!("Failed to pull image \"{}\": {pull_error}", c.image),
                                &c.name,
                            ));
                            events.push(warning("Failed", "Error: ErrImagePull".to_owned(), &c.name));
                            c.state = CState::Waiting("ErrImagePull".to_owned(), Some(pull_error));
                            c.steps = 0;
                        } else if was_pull_error && c.steps >= 1 {
                            events.push(normal("BackOff", format!("Back-off pulling image \"{}\"", c.image), &c.name));
                            events.push(warning("Failed", "Error: ImagePullBackOff".to_owned(), &c.name));
                            c.state = CState::Waiting(
                                "ImagePullBackOff".to_owned(),
                                Some(format!("Back-off pulling image \"{}\": ErrImagePull: {pull_error}", c.image)),
                            );
                            c.steps = 0;
                        } else if was_backoff && c.steps >= 5 {
                            c.state = CState::Waiting("ErrImagePull".to_owned(), Some(pull_error.clone()));
                            events.push(normal("Pulling", format!("Pulling image \"{}\"", c.image), &c.name));
                            events.push(warning(
                                "Failed",
                                format!("Failed to pull image \"{}\": {pull_error}", c.image),
                                &c.name,
                            ));
                            c.steps = 0;
                        }
                    } else if let Some(message) = forced.or_else(|| config_error(state, kinds, &pod, &c.name)) {
                        if !matches!(&c.state, CState::Waiting(r, m) if r == "CreateContainerConfigError" && m.as_deref() == Some(message.as_str()))
                            || c.steps >= 5
                        {
                            events.push(warning("Failed", format!("Error: {message}"), &c.name));
                            c.steps = 0;
                        }
                        c.state = CState::Waiting("CreateContainerConfigError".to_owned(), Some(message));
                    } else {
                        events.push(normal(
                            "Pulled",
                            format!("Container image \"{}\" already present on machine", c.image),
                            &c.name,
                        ));
                        events.push(normal("Created", format!("Created container: {}", c.name), &c.name));
                        events.push(normal("Started", format!("Started container {}", c.name), &c.name));
                        c.state = CState::Running(now.clone());
                        c.started = true;
                        c.id = format!(
                            "containerd://{:064x}",
                            u128::from(store::fnv32a(format!("{uid}/{}/{}", c.name, c.restarts).as_bytes()))
                        );
                        c.steps = 0;
                        logs.push((c.name.clone(), instance, start_line(&c)));
                    }
                }
                CState::Running(started) => {
                    if crash {
                        for line in crash_lines(&c) {
                            logs.push((c.name.clone(), instance, line));
                        }
                        c.state =
                            CState::Terminated { exit: 1, reason: "Error".to_owned(), started, finished: now.clone() };
                        c.ready = false;
                        c.steps = 0;
                    } else if c.init || sim.run_to_completion {
                        logs.push((c.name.clone(), instance, done_line(&c)));
                        c.state = CState::Terminated {
                            exit: 0,
                            reason: "Completed".to_owned(),
                            started,
                            finished: now.clone(),
                        };
                        c.ready = c.init;
                        c.steps = 0;
                    } else if never_ready {
                        c.ready = false;
                        if c.steps % 3 == 1 {
                            let port = container_port(&pod, &c.name);
                            events.push(warning("Unhealthy", format!("Readiness probe failed: Get \"http://10.244.0.{}:{port}/ready\": dial tcp: connect: connection refused", 10 + c.restarts), &c.name));
                            logs.push((c.name.clone(), instance, format!("{{\"level\":\"WARN\",\"message\":\"not ready: Postgres does not answer\",\"container\":\"{}\"}}", c.name)));
                        }
                    } else if !c.ready {
                        c.ready = true;
                        logs.push((c.name.clone(), instance, ready_line(&c)));
                    }
                }
                CState::Terminated { exit, .. } if exit != 0 && !sim.run_to_completion => {
                    // Restarted after a back-off (init containers too: the
                    // pod's restartPolicy is Always).
                    c.last = Some(c.state.clone());
                    c.restarts += 1;
                    let back_off = 10u32 << c.restarts.saturating_sub(1).min(5);
                    c.state = CState::Waiting(
                        "CrashLoopBackOff".to_owned(),
                        Some(format!(
                            "back-off {back_off}s restarting failed container={} pod={name}_{namespace}({uid})",
                            c.name
                        )),
                    );
                    c.steps = 0;
                    events.push(warning(
                        "BackOff",
                        format!("Back-off restarting failed container {} in pod {name}_{namespace}({uid})", c.name),
                        &c.name,
                    ));
                }
                CState::Terminated { .. } => {}
            }
            sim.containers[at] = c;
        }
    }

    for (container, instance, text) in logs {
        state.append_log(namespace, name, &container, instance, &text);
    }
    for event in events {
        record_event(state, kinds, &pod, event);
    }
    let mut updated = pod.clone();
    if updated["spec"]["nodeName"].is_null() && sim.scheduled {
        updated["spec"]["nodeName"] = json!(NODE);
        write(state, &kinds.pods, updated.clone(), None);
        updated = state.get(&kinds.pods, namespace, name).cloned().unwrap_or(updated);
    }
    let status = pod_status(&sim, &pod);
    if updated.get("status") != Some(&status) {
        updated["status"] = status;
        write(state, &kinds.pods, updated, Some("status"));
    }
    state.controller.pods.insert((namespace.to_owned(), name.to_owned()), sim);
}

fn container_port(pod: &Value, container: &str) -> i64 {
    container_spec(pod, container)
        .and_then(|c| c.pointer("/ports/0/containerPort"))
        .and_then(Value::as_i64)
        .unwrap_or(8080)
}

fn start_line(c: &Container) -> String {
    if c.init {
        format!("{{\"level\":\"INFO\",\"message\":\"applying migrations\",\"container\":\"{}\"}}", c.name)
    } else {
        format!(
            "{{\"level\":\"INFO\",\"message\":\"starting\",\"container\":\"{}\",\"image\":\"{}\"}}",
            c.name, c.image
        )
    }
}

fn ready_line(c: &Container) -> String {
    format!("{{\"level\":\"INFO\",\"message\":\"ready\",\"container\":\"{}\"}}", c.name)
}

fn done_line(c: &Container) -> String {
    if c.init {
        format!("{{\"level\":\"INFO\",\"message\":\"migrations up to date\",\"container\":\"{}\"}}", c.name)
    } else {
        format!("{{\"level\":\"INFO\",\"message\":\"done\",\"container\":\"{}\"}}", c.name)
    }
}

/// What a crashing container prints before it exits 1.
fn crash_lines(c: &Container) -> Vec<String> {
    if c.init {
        vec![format!(
            "error: migration 0007_budget_rollover failed: relation \"rollover\" already exists (container {})",
            c.name
        )]
    } else {
        vec![
            format!(
                "{{\"level\":\"ERROR\",\"message\":\"failed to connect to Postgres: connection refused\",\"container\":\"{}\"}}",
                c.name
            ),
            "error: the service stopped: failed to connect to Postgres".to_owned(),
        ]
    }
}

fn state_json(state: &CState, id: &str) -> Value {
    match state {
        CState::Waiting(reason, message) => {
            let mut waiting = json!({"reason": reason});
            if let Some(message) = message {
                waiting["message"] = json!(message);
            }
            json!({"waiting": waiting})
        }
        CState::Running(started) => json!({"running": {"startedAt": started}}),
        CState::Terminated { exit, reason, started, finished } => {
            json!({"terminated": {"exitCode": exit, "reason": reason, "startedAt": started, "finishedAt": finished, "containerID": id}})
        }
    }
}

fn pod_status(sim: &PodSim, pod: &Value) -> Value {
    let now = now();
    let previous: &[Value] =
        pod.pointer("/status/conditions").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
    let pod_condition = |kind: &str, ok: bool, reason: Option<&str>, message: Option<String>| {
        let status = if ok { "True" } else { "False" };
        let transition = previous
            .iter()
            .find(|c| c["type"] == kind && c["status"] == status)
            .map_or_else(|| json!(now), |c| c["lastTransitionTime"].clone());
        let mut condition =
            json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": transition});
        if let (false, Some(reason)) = (ok, reason) {
            condition["reason"] = json!(reason);
        }
        if let (false, Some(message)) = (ok, message) {
            condition["message"] = json!(message);
        }
        condition
    };
    if !sim.scheduled {
        return json!({"phase": "Pending", "qosClass": "Burstable"});
    }
    let inits: Vec<&Container> = sim.containers.iter().filter(|c| c.init).collect();
    let mains: Vec<&Container> = sim.containers.iter().filter(|c| !c.init).collect();
    let initialized = inits.iter().all(|c| matches!(c.state, CState::Terminated { exit: 0, .. }));
    let incomplete: Vec<&str> = inits
        .iter()
        .filter(|c| !matches!(c.state, CState::Terminated { exit: 0, .. }))
        .map(|c| c.name.as_str())
        .collect();
    let unready: Vec<&str> = mains.iter().filter(|c| !c.ready).map(|c| c.name.as_str()).collect();
    let ready = unready.is_empty() && !sim.run_to_completion;
    let finished = sim.run_to_completion && mains.iter().all(|c| matches!(c.state, CState::Terminated { .. }));
    let phase = if finished {
        if mains.iter().all(|c| matches!(c.state, CState::Terminated { exit: 0, .. })) { "Succeeded" } else { "Failed" }
    } else if initialized && mains.iter().any(|c| c.started) {
        "Running"
    } else {
        "Pending"
    };
    let (not_ready_reason, not_ready_message) = if finished {
        ("PodCompleted", None)
    } else {
        ("ContainersNotReady", Some(format!("containers with unready status: [{}]", unready.join(" "))))
    };
    let statuses = |containers: &[&Container]| -> Vec<Value> {
        containers
            .iter()
            .map(|c| {
                let mut status = json!({
                    "name": c.name, "state": state_json(&c.state, &c.id),
                    "lastState": c.last.as_ref().map_or(json!({}), |last| state_json(last, &c.id)),
                    "ready": c.ready, "restartCount": c.restarts, "image": c.image,
                    "imageID": if c.started { json!(format!("{}@sha256:{:064x}", c.image.split(':').next().unwrap_or_default(), u128::from(store::fnv32a(c.image.as_bytes())))) } else { json!("") },
                    "started": matches!(c.state, CState::Running(_)),
                });
                if !c.id.is_empty() {
                    status["containerID"] = json!(c.id);
                }
                status
            })
            .collect()
    };
    let mut status = json!({
        "phase": phase,
        "conditions": [
            pod_condition("PodReadyToStartContainers", true, None, None),
            pod_condition("Initialized", initialized, Some("ContainersNotInitialized"), Some(format!("containers with incomplete status: [{}]", incomplete.join(" ")))),
            pod_condition("Ready", ready, Some(not_ready_reason), not_ready_message.clone()),
            pod_condition("ContainersReady", ready, Some(not_ready_reason), not_ready_message),
            pod_condition("PodScheduled", true, None, None),
        ],
        "hostIP": "192.0.2.10", "hostIPs": [{"ip": "192.0.2.10"}],
        "podIP": "198.51.100.7", "podIPs": [{"ip": "198.51.100.7"}],
        "startTime": sim.start_time,
        "containerStatuses": statuses(&mains),
        "qosClass": "Burstable",
    });
    if !inits.is_empty() {
        status["initContainerStatuses"] = json!(statuses(&inits));
    }
    status
}

/// A core/v1 Event about `object`; a repeat of the same reason and
/// message counts up, as the kubelet's event recorder does.
fn record_event(state: &mut State, kinds: &Kinds, object: &Value, event: PodEvent) {
    let (namespace, name, uid) =
        (meta(object, "namespace").to_owned(), meta(object, "name").to_owned(), meta(object, "uid").to_owned());
    let now = now();
    let key = (uid.clone(), event.reason.to_owned(), event.message.clone());
    if let Some((ns, event_name)) = state.controller.events.get(&key).cloned() {
        if let Some(mut existing) = state.get(&kinds.events, &ns, &event_name).cloned() {
            existing["count"] = json!(existing["count"].as_i64().unwrap_or(1) + 1);
            existing["lastTimestamp"] = json!(now);
            write(state, &kinds.events, existing, None);
            return;
        }
    }
    let event_name = format!(
        "{name}.{:016x}",
        u64::from(store::fnv32a(format!("{uid}{}{}", state.resource_version(), event.message).as_bytes())) << 16
            | state.resource_version() & 0xffff
    );
    let mut involved = json!({"kind": object["kind"], "namespace": namespace, "name": name, "uid": uid,
        "apiVersion": object["apiVersion"], "resourceVersion": object["metadata"]["resourceVersion"]});
    if let Some(path) = &event.field_path {
        involved["fieldPath"] = json!(path);
    }
    let host = if event.component == "kubelet" { json!(NODE) } else { Value::Null };
    let mut source = json!({"component": event.component});
    if !host.is_null() {
        source["host"] = host.clone();
    }
    let body = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": event_name, "namespace": namespace},
        "involvedObject": involved, "reason": event.reason, "message": event.message,
        "source": source, "firstTimestamp": now, "lastTimestamp": now, "count": 1, "type": event.kind,
        "eventTime": null, "reportingComponent": event.component, "reportingInstance": if host.is_null() { json!("") } else { host },
    });
    write(state, &kinds.events, body, None);
    state.controller.events.insert(key, (namespace, event_name));
}

/// The restart count of a container in a stored pod.
pub fn restart_count(pod: &Value, container: &str) -> u32 {
    ["initContainerStatuses", "containerStatuses"]
        .iter()
        .filter_map(|list| pod.pointer(&format!("/status/{list}")).and_then(Value::as_array))
        .flatten()
        .find(|s| s["name"] == container)
        .and_then(|s| s["restartCount"].as_u64())
        .unwrap_or(0) as u32
}

/// Why a container waits, if it does.
pub fn waiting_reason(pod: &Value, container: &str) -> Option<String> {
    let status = ["initContainerStatuses", "containerStatuses"]
        .iter()
        .filter_map(|list| pod.pointer(&format!("/status/{list}")).and_then(Value::as_array))
        .flatten()
        .find(|s| s["name"] == container);
    match status {
        Some(status) => status.pointer("/state/waiting/reason").and_then(Value::as_str).map(str::to_owned),
        None => Some("ContainerCreating".to_owned()),
    }
}

// ---------------------------------------------------------------------------
// The autoscaler, the garbage collector, the namespace controller

fn autoscale(state: &mut State, kinds: &Kinds) {
    for hpa in snapshot(state, &kinds.hpas) {
        let namespace = meta(&hpa, "namespace").to_owned();
        if hpa.pointer("/spec/scaleTargetRef/kind").and_then(Value::as_str) != Some("Deployment") {
            continue;
        }
        let target = hpa.pointer("/spec/scaleTargetRef/name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let Some(deployment) = state.get(&kinds.deployments, &namespace, &target).cloned() else { continue };
        let (min, max) =
            (hpa.pointer("/spec/minReplicas").and_then(Value::as_i64).unwrap_or(1), int(&hpa, "/spec/maxReplicas"));
        let current = deployment.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
        let desired = current.clamp(min, max.max(min));
        if desired != current {
            let mut scaled = deployment.clone();
            scaled["spec"]["replicas"] = json!(desired);
            if let Some(meta) = scaled["metadata"].as_object_mut() {
                meta.remove("resourceVersion");
            }
            let _ = state.update(
                &kinds.deployments,
                &namespace,
                &target,
                scaled,
                store::Writer { manager: MANAGER, subresource: Some("scale"), dry_run: false },
            );
        }
        let status = json!({"currentReplicas": int(&deployment, "/status/replicas"), "desiredReplicas": desired,
            "conditions": [{"type": "AbleToScale", "status": "True", "reason": "ReadyForNewScale", "message": "recommended size matches current size", "lastTransitionTime": hpa.pointer("/status/conditions/0/lastTransitionTime").cloned().unwrap_or(json!(now()))}]});
        if hpa.get("status") != Some(&status) {
            let mut with = hpa.clone();
            with["status"] = status;
            write(state, &kinds.hpas, with, Some("status"));
        }
    }
}

fn collect_garbage(state: &mut State, kinds: &Kinds) {
    let uids: BTreeSet<String> = state.objects.values().map(|o| meta(o, "uid").to_owned()).collect();
    let resources = state.resources();
    let find = |key: &Key| resources.iter().find(|r| r.group == key.group && r.plural == key.plural).cloned();
    let objects: Vec<(Key, Value)> = state.objects.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (key, object) in objects {
        let Some(res) = find(&key) else { continue };
        let refs = object.pointer("/metadata/ownerReferences").and_then(Value::as_array).cloned().unwrap_or_default();
        if !refs.is_empty() && refs.iter().all(|r| !uids.contains(r["uid"].as_str().unwrap_or_default())) {
            let _ = state.delete(&res, &key.namespace, &key.name, "Background", false);
            if key.plural == "pods" {
                state.controller.pods.remove(&(key.namespace.clone(), key.name.clone()));
            }
            continue;
        }
        if object.pointer("/metadata/deletionTimestamp").is_none() {
            continue;
        }
        let uid = meta(&object, "uid").to_owned();
        let mut finalizers: Vec<String> = object
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(str::to_owned))
            .collect();
        if res.group.is_empty() && res.plural == "namespaces" {
            let inside: Vec<(Key, Resource)> = state
                .objects
                .keys()
                .filter(|k| k.namespace == key.name)
                .filter_map(|k| find(k).map(|r| (k.clone(), r)))
                .collect();
            if inside.is_empty() {
                state.remove(&key);
            } else {
                for (k, r) in inside {
                    let _ = state.delete(&r, &k.namespace, &k.name, "Background", false);
                    if k.plural == "pods" {
                        state.controller.pods.remove(&(k.namespace.clone(), k.name.clone()));
                    }
                }
            }
            continue;
        }
        if finalizers.iter().any(|f| f == "foregroundDeletion") {
            let dependents: Vec<Key> =
                state.objects.iter().filter(|(_, o)| store::owned_by(o, &uid)).map(|(k, _)| k.clone()).collect();
            if dependents.is_empty() {
                finalizers.retain(|f| f != "foregroundDeletion");
                let mut done = object.clone();
                done["metadata"]["finalizers"] = json!(finalizers);
                write(state, &res, done, None);
            } else {
                for k in dependents {
                    if let Some(r) = find(&k) {
                        let _ = state.delete(&r, &k.namespace, &k.name, "Foreground", false);
                    }
                }
            }
            continue;
        }
        if finalizers.is_empty() {
            state.remove(&key);
        }
    }
    let _ = kinds;
}

// ---------------------------------------------------------------------------
// The operators

fn sync_operators(state: &mut State, kinds: &Kinds, config: &Config) {
    if let Some(res) = state.resource_of_kind("external-secrets.io/v1", "ExternalSecret") {
        for es in snapshot(state, &res) {
            sync_external_secret(state, kinds, config, &res, &es);
        }
    }
    if let Some(res) = state.resource_of_kind("cert-manager.io/v1", "Certificate") {
        for certificate in snapshot(state, &res) {
            sync_certificate(state, kinds, config, &res, &certificate);
        }
    }
}

fn due(state: &mut State, object: &Value, delay: Duration) -> bool {
    let key = (meta(object, "uid").to_owned(), int(object, "/metadata/generation"));
    let first = *state.controller.first_seen.entry(key).or_insert_with(Instant::now);
    first.elapsed() >= delay
}

fn ready_condition(object: &Value, status: &str, reason: &str, message: &str) -> Value {
    let transition = object
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready" && c["status"] == status))
        .map_or_else(|| json!(now()), |c| c["lastTransitionTime"].clone());
    json!({"type": "Ready", "status": status, "reason": reason, "message": message, "lastTransitionTime": transition})
}

fn sync_external_secret(state: &mut State, kinds: &Kinds, config: &Config, res: &Resource, es: &Value) {
    let (namespace, name) = (meta(es, "namespace").to_owned(), meta(es, "name").to_owned());
    let generation = int(es, "/metadata/generation");
    let synced_version = format!("{generation}-{:08x}", store::fnv32a(es["metadata"]["labels"].to_string().as_bytes()));
    if es.pointer("/status/syncedResourceVersion").and_then(Value::as_str) == Some(synced_version.as_str())
        || (es.pointer("/status/conditions/0/reason").and_then(Value::as_str) == Some("SecretSyncedError")
            && es.pointer("/status/conditions/0/observedGeneration").and_then(Value::as_i64) == Some(generation))
    {
        return;
    }
    if !due(state, es, config.secret_sync_delay) {
        return;
    }
    let sync = state.secret_syncs.get(&name).cloned().unwrap_or(SecretSync::Ready);
    let mut with = es.clone();
    let omitted = match &sync {
        SecretSync::Never => {
            let mut failed =
                ready_condition(es, "False", "SecretSyncedError", "could not get secret data from provider");
            failed["observedGeneration"] = json!(generation);
            with["status"] = json!({"conditions": [failed], "refreshTime": null});
            record_event(
                state,
                kinds,
                es,
                PodEvent {
                    kind: "Warning",
                    reason: "UpdateFailed",
                    message: "could not get secret data from provider".to_owned(),
                    field_path: None,
                    component: "external-secrets",
                },
            );
            write(state, res, with, Some("status"));
            return;
        }
        SecretSync::Ready => Vec::new(),
        SecretSync::WithoutKeys(keys) => keys.clone(),
    };
    let target = es.pointer("/spec/target/name").and_then(Value::as_str).unwrap_or(&name).to_owned();
    let mut data = serde_json::Map::new();
    for item in es.pointer("/spec/data").and_then(Value::as_array).into_iter().flatten() {
        let key = item["secretKey"].as_str().unwrap_or_default();
        if !key.is_empty() && !omitted.iter().any(|k| k == key) {
            data.insert(key.to_owned(), json!(store::base64_encode(format!("fake-{key}").as_bytes())));
        }
    }
    let mut secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": target, "namespace": namespace, "labels": {"reconcile.external-secrets.io/managed": "true"}},
        "data": data});
    if es.pointer("/spec/target/creationPolicy").and_then(Value::as_str).unwrap_or("Owner") == "Owner" {
        secret["metadata"]["ownerReferences"] = json!([owner_reference(es)]);
    }
    state.controller_write(&kinds.secrets, secret, "external-secrets", None);
    with["status"] = json!({
        "conditions": [ready_condition(es, "True", "SecretSynced", "secret synced")],
        "refreshTime": now(), "syncedResourceVersion": synced_version, "binding": {"name": target},
    });
    record_event(
        state,
        kinds,
        es,
        PodEvent {
            kind: "Normal",
            reason: "Updated",
            message: "secret synced".to_owned(),
            field_path: None,
            component: "external-secrets",
        },
    );
    write(state, res, with, Some("status"));
}

fn sync_certificate(state: &mut State, kinds: &Kinds, config: &Config, res: &Resource, certificate: &Value) {
    let generation = int(certificate, "/metadata/generation");
    if certificate.pointer("/status/conditions/0/observedGeneration").and_then(Value::as_i64) == Some(generation) {
        return;
    }
    if !due(state, certificate, config.secret_sync_delay) {
        return;
    }
    let namespace = meta(certificate, "namespace").to_owned();
    if let Some(secret_name) = certificate.pointer("/spec/secretName").and_then(Value::as_str) {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": secret_name, "namespace": namespace, "annotations": {"cert-manager.io/certificate-name": meta(certificate, "name")}},
            "data": {"tls.crt": store::base64_encode(b"fake certificate"), "tls.key": store::base64_encode(b"fake key")}});
        state.controller_write(&kinds.secrets, secret, "cert-manager-certificates-issuing", None);
    }
    let mut ready = ready_condition(certificate, "True", "Ready", "Certificate is up to date and has not expired");
    ready["observedGeneration"] = json!(generation);
    let mut with = certificate.clone();
    with["status"] =
        json!({"conditions": [ready], "notBefore": now(), "notAfter": "2099-01-01T00:00:00Z", "revision": 1});
    write(state, res, with, Some("status"));
}

// ---------------------------------------------------------------------------
// Tables, for `kubectl get` without `-o`

fn age(object: &Value) -> String {
    let created = object
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    let seconds = created.map_or(0, |t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds().max(0));
    if seconds < 120 { format!("{seconds}s") } else { format!("{}m", seconds / 60) }
}

/// A `meta.k8s.io/v1` Table of `items`, with the columns kubectl prints
/// for Deployments and Pods (Name and Age for everything else).
pub fn table(res: &Resource, items: &[Value], rv: &str) -> Value {
    let column = |name: &str, kind: &str, format: &str| json!({"name": name, "type": kind, "format": format, "description": "", "priority": 0});
    let mut columns = vec![column("Name", "string", "name")];
    let extra: Vec<Value> = match res.plural.as_str() {
        "deployments" => {
            vec![column("Ready", "string", ""), column("Up-to-date", "integer", ""), column("Available", "integer", "")]
        }
        "pods" => vec![column("Ready", "string", ""), column("Status", "string", ""), column("Restarts", "string", "")],
        _ => Vec::new(),
    };
    columns.extend(extra);
    columns.push(column("Age", "string", ""));
    let rows: Vec<Value> = items
        .iter()
        .map(|item| {
            let mut cells = vec![item["metadata"]["name"].clone()];
            match res.plural.as_str() {
                "deployments" => {
                    let desired = item.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
                    cells.push(json!(format!("{}/{desired}", int(item, "/status/readyReplicas"))));
                    cells.push(json!(int(item, "/status/updatedReplicas")));
                    cells.push(json!(int(item, "/status/availableReplicas")));
                }
                "pods" => {
                    let statuses = item.pointer("/status/containerStatuses").and_then(Value::as_array).cloned().unwrap_or_default();
                    let ready = statuses.iter().filter(|s| s["ready"] == true).count();
                    let waiting = statuses.iter().chain(item.pointer("/status/initContainerStatuses").and_then(Value::as_array).into_iter().flatten())
                        .find_map(|s| s.pointer("/state/waiting/reason").and_then(Value::as_str).filter(|r| *r != "PodInitializing" && *r != "ContainerCreating"));
                    let phase = item.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending");
                    let restarts: u64 = statuses.iter().filter_map(|s| s["restartCount"].as_u64()).sum();
                    cells.push(json!(format!("{ready}/{}", statuses.len().max(1))));
                    cells.push(json!(waiting.unwrap_or(phase)));
                    cells.push(json!(restarts.to_string()));
                }
                _ => {}
            }
            cells.push(json!(age(item)));
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": item["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv}, "columnDefinitions": columns, "rows": rows})
}

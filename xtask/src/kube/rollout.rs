//! What a Deployment's, a ReplicaSet's and a Pod's state mean for a rollout:
//! pure functions over the objects the API returns, tested on recorded
//! ones (`fixtures/`). The watching lives in `wait.rs`.
//!
//! "Rolled out" is exactly `kubectl rollout status`
//! (`pkg/polymorphichelpers/rollout_status.go`): nothing counts until the
//! controller has observed the applied generation (right after an apply the
//! status still describes the previous spec, which is why kube-runtime's
//! `is_deployment_completed`, blind to `observedGeneration`, passes at
//! once); then a Progressing condition with reason
//! `ProgressDeadlineExceeded` fails it, and it is done once every replica
//! is updated (`updatedReplicas` reaches `spec.replicas`), no old one is
//! left (`replicas` down to `updatedReplicas`) and every updated one is
//! available. kubectl compares with `<` and `>`, so do we.
//!
//! Failing fast looks at the pods of the *new* ReplicaSet only: the one the
//! Deployment owns whose `deployment.kubernetes.io/revision` is the
//! Deployment's. An old ReplicaSet's pod in a crash loop is the state being
//! replaced, not a verdict on this rollout.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The annotation the Deployment controller numbers revisions with, on the
/// Deployment and on each of its ReplicaSets.
pub const REVISION: &str = "deployment.kubernetes.io/revision";

/// kubectl's `TimedOutReason`.
const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

/// A Deployment's rollout, as `kubectl rollout status` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Rolled out; kubectl's message.
    Done(String),
    /// Still going; kubectl's message, which says what it waits for.
    Waiting(String),
    /// Failed: the progress deadline passed.
    Failed(String),
}

/// The rollout state of `deployment`, as kubectl's `DeploymentStatusViewer`.
pub fn deployment(deployment: &Deployment) -> Progress {
    let name = deployment.metadata.name.as_deref().unwrap_or_default();
    let generation = deployment.metadata.generation.unwrap_or(0);
    let status = deployment.status.clone().unwrap_or_default();
    if generation > status.observed_generation.unwrap_or(0) {
        return Progress::Waiting("waiting for the deployment controller to observe the new spec".to_owned());
    }
    let deadline = status.conditions.iter().flatten().find(|c| c.type_ == "Progressing");
    if let Some(condition) = deadline.filter(|c| c.reason.as_deref() == Some(PROGRESS_DEADLINE_EXCEEDED)) {
        let seconds = deployment.spec.as_ref().and_then(|s| s.progress_deadline_seconds).unwrap_or(600);
        return Progress::Failed(format!(
            "deployment {name} exceeded its progress deadline ({seconds} s): {}",
            condition.message.as_deref().unwrap_or("no message")
        ));
    }
    let replicas = status.replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if let Some(desired) = deployment.spec.as_ref().and_then(|s| s.replicas)
        && updated < desired
    {
        return Progress::Waiting(format!("{updated} out of {desired} new replicas have been updated"));
    }
    if replicas > updated {
        return Progress::Waiting(format!("{} old replicas are pending termination", replicas - updated));
    }
    if available < updated {
        return Progress::Waiting(format!("{available} of {updated} updated replicas are available"));
    }
    Progress::Done(format!("deployment {name} successfully rolled out"))
}

/// The revision annotation of an object, as a number.
pub fn revision(meta: &ObjectMeta) -> Option<i64> {
    meta.annotations.as_ref()?.get(REVISION)?.parse().ok()
}

/// Whether `meta` names `owner` (by uid) as its controller.
fn controlled_by(meta: &ObjectMeta, owner: &ObjectMeta) -> bool {
    let Some(uid) = owner.uid.as_deref() else { return false };
    meta.owner_references.iter().flatten().any(|r| r.controller == Some(true) && r.uid == uid)
}

/// The ReplicaSet of the Deployment's current revision, once the controller
/// has observed the applied spec (before that, the revision annotation is
/// still the previous one's, and its ReplicaSet is the old one).
pub fn new_replica_set<'a>(
    deployment: &Deployment,
    sets: impl IntoIterator<Item = &'a ReplicaSet>,
) -> Option<&'a ReplicaSet> {
    let observed = deployment.status.as_ref().and_then(|s| s.observed_generation).unwrap_or(0);
    if deployment.metadata.generation.unwrap_or(0) > observed {
        return None;
    }
    let wanted = revision(&deployment.metadata)?;
    sets.into_iter()
        .find(|set| controlled_by(&set.metadata, &deployment.metadata) && revision(&set.metadata) == Some(wanted))
}

/// The pods `set` controls.
pub fn pods_of<'a>(set: &ReplicaSet, pods: impl IntoIterator<Item = &'a Pod>) -> Vec<&'a Pod> {
    let mut pods: Vec<&Pod> = pods.into_iter().filter(|pod| controlled_by(&pod.metadata, &set.metadata)).collect();
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    pods
}

/// Why a pod of the new ReplicaSet will not become ready by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFailure {
    pub pod: String,
    pub container: String,
    /// Whether `container` is an init container (the migrations).
    pub init: bool,
    /// The kubelet's reason: `ImagePullBackOff`, `CrashLoopBackOff`, ...,
    /// or `exit code N` for an init container that failed.
    pub reason: String,
    /// The kubelet's message, or the last exit's.
    pub message: String,
    /// Whether the log that says why is the previous instance's (the
    /// container waits to be restarted).
    pub previous_log: bool,
}

/// Waiting reasons that no amount of waiting mends: the kubelet retries
/// them with a growing back-off, and they would hold the rollout until the
/// progress deadline (ten minutes by default).
const DOOMED: [&str; 6] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CrashLoopBackOff",
    // A missing Secret, ConfigMap or key in one (`secretKeyRef`).
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// The first container of `pod` that dooms it, init containers first (a
/// pod runs them first, so theirs is the cause).
pub fn classify(pod: &Pod) -> Option<PodFailure> {
    let status = pod.status.as_ref()?;
    let init = status.init_container_statuses.iter().flatten().map(|s| (s, true));
    let main = status.container_statuses.iter().flatten().map(|s| (s, false));
    init.chain(main).find_map(|(container, init)| {
        let (reason, message) = doomed(container, init)?;
        let state = container.state.as_ref();
        Some(PodFailure {
            pod: pod.metadata.name.clone().unwrap_or_default(),
            container: container.name.clone(),
            init,
            reason,
            message,
            // Waiting to be restarted: the log worth reading is the
            // previous instance's.
            previous_log: state.is_some_and(|s| s.waiting.is_some())
                && container.last_state.as_ref().is_some_and(|s| s.terminated.is_some()),
        })
    })
}

/// Why `container` dooms its pod: (reason, message).
fn doomed(container: &ContainerStatus, init: bool) -> Option<(String, String)> {
    let state = container.state.as_ref();
    if let Some(waiting) = state.and_then(|s| s.waiting.as_ref())
        && let Some(reason) = waiting.reason.as_deref().filter(|r| DOOMED.contains(r))
    {
        let mut message = waiting.message.clone().unwrap_or_default();
        if reason == "CrashLoopBackOff"
            && let Some(last) = container.last_state.as_ref().and_then(|s| s.terminated.as_ref())
        {
            message = format!(
                "exited with code {} ({}); {message}",
                last.exit_code,
                last.reason.as_deref().unwrap_or("Error")
            );
        }
        return Some((reason.to_owned(), message));
    }
    // An init container that exited non-zero: the migrations failed. The
    // kubelet will run it again (and again, backing off), but migrations are
    // idempotent and fail the same way; waiting only delays the verdict.
    if init {
        let terminated = state.and_then(|s| s.terminated.as_ref()).filter(|t| t.exit_code != 0);
        let last = container.last_state.as_ref().and_then(|s| s.terminated.as_ref()).filter(|t| t.exit_code != 0);
        if let Some(exit) = terminated.or(last) {
            let message = exit.message.clone().or_else(|| exit.reason.clone()).unwrap_or_default();
            return Some((format!("exit code {}", exit.exit_code), message));
        }
    }
    None
}

/// A rollout's verdict, from the Deployment and what it owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Done(String),
    Waiting(String),
    /// The progress deadline passed.
    Deadline(String),
    /// A pod of the new ReplicaSet is doomed.
    Pod(PodFailure),
}

/// Judges a rollout: kubectl's verdict first (done is done, a passed
/// deadline fails), then the new ReplicaSet's pods.
pub fn judge<'a>(
    deployment: &Deployment,
    sets: impl IntoIterator<Item = &'a ReplicaSet>,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Verdict {
    let waiting = match self::deployment(deployment) {
        Progress::Done(message) => return Verdict::Done(message),
        Progress::Failed(message) => return Verdict::Deadline(message),
        Progress::Waiting(message) => message,
    };
    if let Some(set) = new_replica_set(deployment, sets)
        && let Some(failure) = pods_of(set, pods).into_iter().find_map(classify)
    {
        return Verdict::Pod(failure);
    }
    Verdict::Waiting(waiting)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kube/fixtures").join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
    }

    fn sets() -> Vec<ReplicaSet> {
        let list: serde_json::Value = fixture("replicasets.json");
        serde_json::from_value(list["items"].clone()).unwrap()
    }

    fn verdict(deployment: &str, pods: &[&str]) -> Verdict {
        let deployment: Deployment = fixture(deployment);
        let pods: Vec<Pod> = pods.iter().map(|name| fixture(name)).collect();
        judge(&deployment, &sets(), &pods)
    }

    #[test]
    fn right_after_an_apply_the_old_status_does_not_count_as_rolled_out() {
        // Every replica counted, all available: but for generation 2, and
        // the apply made generation 3.
        let deployment: Deployment = fixture("deployment-applied.json");
        assert_eq!(
            self::deployment(&deployment),
            Progress::Waiting("waiting for the deployment controller to observe the new spec".into())
        );
    }

    #[test]
    fn a_rollout_waits_for_new_replicas_then_for_old_ones_to_go_then_for_availability() {
        for (fixture_name, message) in [
            ("deployment-rolling.json", "1 out of 3 new replicas have been updated"),
            ("deployment-old-pending.json", "1 old replicas are pending termination"),
            ("deployment-unavailable.json", "2 of 3 updated replicas are available"),
        ] {
            assert_eq!(self::deployment(&fixture(fixture_name)), Progress::Waiting(message.into()), "{fixture_name}");
        }
    }

    #[test]
    fn a_rollout_is_done_when_kubectl_says_so() {
        assert_eq!(
            self::deployment(&fixture("deployment-complete.json")),
            Progress::Done("deployment auth-service successfully rolled out".into())
        );
    }

    #[test]
    fn a_passed_progress_deadline_fails_the_rollout() {
        let Progress::Failed(message) = self::deployment(&fixture("deployment-deadline-exceeded.json")) else {
            panic!("not failed")
        };
        assert_eq!(
            message,
            "deployment auth-service exceeded its progress deadline (600 s): ReplicaSet \"auth-service-7b9c6d5f8\" \
             has timed out progressing."
        );
    }

    #[test]
    fn the_new_replica_set_is_the_one_with_the_deployments_revision() {
        let deployment: Deployment = fixture("deployment-rolling.json");
        let sets = sets();
        let new = new_replica_set(&deployment, &sets).expect("a new ReplicaSet");
        assert_eq!(new.metadata.name.as_deref(), Some("auth-service-7b9c6d5f8"));
        // Before the controller has seen the new spec, the revision
        // annotation is the old one's: no ReplicaSet is called new.
        assert!(new_replica_set(&fixture("deployment-applied.json"), &sets).is_none());
    }

    #[test]
    fn a_pod_of_the_new_replica_set_that_cannot_pull_its_image_fails_the_rollout() {
        for pod in ["pod-image-pull-backoff.json", "pod-err-image-pull.json"] {
            let Verdict::Pod(failure) = verdict("deployment-rolling.json", &["pod-running.json", pod]) else {
                panic!("{pod}: no failure")
            };
            assert_eq!(failure.pod, "auth-service-7b9c6d5f8-7tq2z");
            assert_eq!(
                (failure.container.as_str(), failure.init),
                ("migrate", true),
                "the image is first pulled for it"
            );
            assert!(["ImagePullBackOff", "ErrImagePull"].contains(&failure.reason.as_str()), "{failure:?}");
            assert!(failure.message.contains("0.1.1-typo"), "{failure:?}");
        }
    }

    #[test]
    fn a_crash_looping_pod_of_the_new_replica_set_fails_the_rollout_with_its_exit_code() {
        let Verdict::Pod(failure) = verdict("deployment-rolling.json", &["pod-crash-loop.json"]) else { panic!() };
        assert_eq!(
            failure,
            PodFailure {
                pod: "auth-service-7b9c6d5f8-m5v7c".into(),
                container: "auth".into(),
                init: false,
                reason: "CrashLoopBackOff".into(),
                message: "exited with code 2 (Error); back-off 20s restarting failed container=auth \
                          pod=auth-service-7b9c6d5f8-m5v7c_freedumb(pod-auth-service-7b9c6d5f8-m5v7c)"
                    .into(),
                previous_log: true,
            }
        );
    }

    #[test]
    fn a_missing_secret_key_fails_the_rollout_naming_the_key() {
        let Verdict::Pod(failure) = verdict("deployment-rolling.json", &["pod-missing-secret-key.json"]) else {
            panic!()
        };
        assert_eq!(failure.reason, "CreateContainerConfigError");
        assert_eq!(failure.message, "couldn't find key JWT_ACCESS_SECRET in Secret freedumb/freedumb-secrets");
        assert!(!failure.previous_log);
    }

    #[test]
    fn failed_migrations_fail_the_rollout_at_their_first_exit() {
        let Verdict::Pod(failure) = verdict("deployment-rolling.json", &["pod-init-failed.json"]) else { panic!() };
        assert_eq!((failure.container.as_str(), failure.init), ("migrate", true));
        assert_eq!(failure.reason, "exit code 1");
    }

    #[test]
    fn a_crash_looping_pod_of_the_old_replica_set_is_not_this_rollouts_failure() {
        assert_eq!(
            verdict("deployment-rolling.json", &["pod-old-crash-loop.json", "pod-running.json", "pod-creating.json"]),
            Verdict::Waiting("1 out of 3 new replicas have been updated".into())
        );
    }

    #[test]
    fn pods_are_not_judged_before_the_new_spec_is_observed() {
        // The crash-looping pod belongs to the ReplicaSet that is new *now*;
        // but the Deployment's status is the previous generation's, so its
        // revision is not yet known to be the one applied.
        assert_eq!(
            verdict("deployment-applied.json", &["pod-crash-loop.json"]),
            Verdict::Waiting("waiting for the deployment controller to observe the new spec".into())
        );
    }

    #[test]
    fn a_deadline_is_reported_as_such_even_with_failing_pods() {
        assert!(matches!(verdict("deployment-deadline-exceeded.json", &["pod-crash-loop.json"]), Verdict::Deadline(_)));
    }

    #[test]
    fn a_pod_still_being_created_is_not_a_failure() {
        let pod: Pod = fixture("pod-creating.json");
        assert_eq!(classify(&pod), None);
        assert_eq!(classify(&fixture("pod-running.json")), None);
    }
}

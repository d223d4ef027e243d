//! What `diff` and `deploy --dry-run` show, pure: the live object against
//! what a server-side dry-run apply returns, with the fields the server
//! sets on every write stripped from both (they would differ on every run
//! and say nothing about the change), as one unified diff per object, in
//! the order of the plan.

use serde_json::Value;
use similar::TextDiff;

use super::plan::Key;

/// Metadata the server writes: bookkeeping, never part of a change.
const SERVER_METADATA: [&str; 7] = [
    "managedFields",
    "resourceVersion",
    "generation",
    "uid",
    "creationTimestamp",
    "selfLink",
    "deletionGracePeriodSeconds",
];

/// `object` without what the server sets: `status` and `SERVER_METADATA`;
/// objects' keys sorted, so two serialisations of one object compare equal.
pub fn strip(object: &Value) -> Value {
    let mut object = sorted(object);
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
        if let Some(metadata) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for key in SERVER_METADATA {
                metadata.remove(key);
            }
        }
    }
    object
}

fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&map[k]))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// The name kubectl diff gives an object's file: `apps.v1.Deployment.freedumb.auth-service`.
fn file_name(key: &Key, version: &str) -> String {
    let mut parts = Vec::new();
    if !key.group.is_empty() {
        parts.push(key.group.as_str());
    }
    parts.extend([version, key.kind.as_str()]);
    if let Some(namespace) = &key.namespace {
        parts.push(namespace);
    }
    parts.push(&key.name);
    parts.join(".")
}

fn yaml(value: &Value) -> String {
    serde_yaml::to_string(value).expect("a JSON value is valid YAML")
}

/// A unified diff from `live` (absent: a new object) to `merged` (absent:
/// a pruned one), both stripped; empty when they agree.
pub fn unified(key: &Key, version: &str, live: Option<&Value>, merged: Option<&Value>) -> String {
    let before = live.map(|v| yaml(&strip(v))).unwrap_or_default();
    let after = merged.map(|v| yaml(&strip(v))).unwrap_or_default();
    if before == after {
        return String::new();
    }
    let name = file_name(key, version);
    let old = if live.is_some() { format!("live/{name}") } else { "/dev/null".to_owned() };
    let new = if merged.is_some() { format!("merged/{name}") } else { "/dev/null".to_owned() };
    TextDiff::from_lines(&before, &after).unified_diff().context_radius(3).header(&old, &new).to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key() -> Key {
        Key {
            group: "apps".into(),
            kind: "Deployment".into(),
            namespace: Some("freedumb".into()),
            name: "auth-service".into(),
        }
    }

    fn live() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "auth-service", "namespace": "freedumb",
                "uid": "0d4b3a52", "resourceVersion": "48213", "generation": 2,
                "creationTimestamp": "2025-06-02T09:14:07Z",
                "managedFields": [{"manager": "freedumb", "operation": "Apply"}],
                "labels": {"app.kubernetes.io/name": "auth-service"},
            },
            "spec": {"template": {"spec": {"containers": [{"name": "auth", "image": "freedumb:0.1.0"}]}}},
            "status": {"observedGeneration": 2, "replicas": 3},
        })
    }

    #[test]
    fn what_the_server_sets_is_not_a_difference() {
        let mut dry_run = live();
        dry_run["metadata"]["resourceVersion"] = json!("48999");
        dry_run["metadata"]["managedFields"][0]["time"] = json!("2025-06-03T00:00:00Z");
        dry_run["status"]["replicas"] = json!(4);
        // The server answers with its own key order.
        let reordered: Value =
            serde_json::from_str(&dry_run.to_string().replace("\"apiVersion\":\"apps/v1\",", "")).unwrap();
        let mut reordered = reordered;
        reordered.as_object_mut().unwrap().insert("apiVersion".into(), json!("apps/v1"));
        assert_eq!(unified(&key(), "v1", Some(&live()), Some(&reordered)), "");
    }

    #[test]
    fn a_changed_image_is_one_hunk_named_like_kubectl_diff_names_it() {
        let mut dry_run = live();
        dry_run["spec"]["template"]["spec"]["containers"][0]["image"] = json!("freedumb:0.1.1");
        dry_run["metadata"]["generation"] = json!(3);
        let diff = unified(&key(), "v1", Some(&live()), Some(&dry_run));
        assert!(diff.starts_with(
            "--- live/apps.v1.Deployment.freedumb.auth-service\n+++ merged/apps.v1.Deployment.freedumb.auth-service\n"
        ), "{diff}");
        let changed: Vec<&str> = diff
            .lines()
            .filter(|l| l.starts_with(['-', '+']) && !l.starts_with("---") && !l.starts_with("+++"))
            .collect();
        assert_eq!(changed, ["-      - image: freedumb:0.1.0", "+      - image: freedumb:0.1.1"]);
    }

    #[test]
    fn a_new_object_is_all_additions_and_a_pruned_one_all_removals() {
        let created = unified(&key(), "v1", None, Some(&live()));
        assert!(created.starts_with("--- /dev/null\n+++ merged/"), "{created}");
        assert!(!created.contains("resourceVersion") && !created.contains("status"), "{created}");
        let pruned = unified(&key(), "v1", Some(&live()), None);
        assert!(pruned.starts_with("--- live/apps.v1.Deployment.freedumb.auth-service\n+++ /dev/null\n"), "{pruned}");
    }
}

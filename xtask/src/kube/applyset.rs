//! The inventory: a kubectl ApplySet (KEP-3659), so that `kubectl` sees the
//! same set of objects we do, and what to prune. Pure; the API side reads
//! and writes the parent in `deploy.rs`.
//!
//! The parent is a Secret in the environment's namespace, named
//! `PARENT_NAME`, labelled with the set's id (`applyset.kubernetes.io/id`,
//! computed exactly as kubectl computes it) and annotated with the tool
//! that manages it and the group-kinds of its members; every member carries
//! `applyset.kubernetes.io/part-of: <id>`. `kubectl get deploy -l
//! applyset.kubernetes.io/part-of=<id>` lists what we deployed, and
//! `kubectl apply --applyset` refuses to take over a set whose tooling is
//! ours, as we refuse a set whose tooling is another's.
//!
//! The parent also keeps, in its data, the rendered set last rolled out and
//! the one before it: what a failed rollout goes back to, and what
//! `cargo xtask rollback` goes back to.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, bail};
use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::plan::{Key, Object};

pub const ID_LABEL: &str = "applyset.kubernetes.io/id";
pub const PART_OF_LABEL: &str = "applyset.kubernetes.io/part-of";
pub const TOOLING_ANNOTATION: &str = "applyset.kubernetes.io/tooling";
pub const GROUP_KINDS_ANNOTATION: &str = "applyset.kubernetes.io/contains-group-kinds";
/// Members in namespaces other than the parent's: none here, but kubectl
/// writes it (empty) and reads it, so we do too.
pub const NAMESPACES_ANNOTATION: &str = "applyset.kubernetes.io/additional-namespaces";
/// How many deploys this set has rolled out (ours, for `status`).
pub const REVISION_ANNOTATION: &str = "freedumb.io/revision";

/// The parent Secret's name in the environment's namespace.
pub const PARENT_NAME: &str = "freedumb-applyset";
/// The tool name in `applyset.kubernetes.io/tooling` (`freedumb/v0.1.0`).
pub const TOOL: &str = "freedumb";
/// The parent's data: the rendered set last rolled out, and the one before.
pub const CURRENT_KEY: &str = "current.json";
pub const PREVIOUS_KEY: &str = "previous.json";

/// kubectl's `ApplySet.ID()`: `applyset-<base64url(sha256(name.namespace.kind.group))>-v1`,
/// unpadded (label values must start and end with an alphanumeric).
pub fn id(name: &str, namespace: &str, kind: &str, group: &str) -> String {
    let hashed = Sha256::digest(format!("{name}.{namespace}.{kind}.{group}").as_bytes());
    format!("applyset-{}-v1", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hashed))
}

/// The set of one environment's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplySet {
    pub namespace: String,
    pub id: String,
}

impl ApplySet {
    pub fn new(namespace: &str) -> Self {
        ApplySet { namespace: namespace.to_owned(), id: id(PARENT_NAME, namespace, "Secret", "") }
    }

    /// `freedumb/v<version>`, as kubectl writes `kubectl/v1.32.0`.
    pub fn tooling() -> String {
        format!("{TOOL}/v{}", env!("CARGO_PKG_VERSION"))
    }

    /// The parent Secret to apply: this set's id, tooling and `group_kinds`,
    /// and the rendered sets (`current`, `previous`) in its data.
    pub fn parent(&self, group_kinds: &BTreeSet<String>, record: &Record) -> Value {
        let encode = |objects: &Option<Vec<Value>>| {
            objects.as_ref().map(|objects| {
                let text = serde_json::to_string(objects).expect("serialisable");
                Value::String(base64::engine::general_purpose::STANDARD.encode(text))
            })
        };
        let mut data = serde_json::Map::new();
        if let Some(current) = encode(&record.current) {
            data.insert(CURRENT_KEY.to_owned(), current);
        }
        if let Some(previous) = encode(&record.previous) {
            data.insert(PREVIOUS_KEY.to_owned(), previous);
        }
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": PARENT_NAME,
                "namespace": self.namespace,
                "labels": {
                    ID_LABEL: self.id,
                    "app.kubernetes.io/part-of": "freedumb",
                },
                "annotations": {
                    TOOLING_ANNOTATION: Self::tooling(),
                    GROUP_KINDS_ANNOTATION: group_kinds.iter().cloned().collect::<Vec<_>>().join(","),
                    NAMESPACES_ANNOTATION: "",
                    REVISION_ANNOTATION: record.revision.to_string(),
                },
            },
            "type": "Opaque",
            "data": data,
        })
    }

    /// Reads a live parent: refused when another tool manages it, or when
    /// its id is not this set's (a parent copied from elsewhere).
    pub fn read(&self, parent: &Value) -> anyhow::Result<Parent> {
        let annotations = parent.pointer("/metadata/annotations").and_then(Value::as_object);
        let annotation = |key: &str| annotations.and_then(|a| a.get(key)).and_then(Value::as_str);
        let what = format!("the ApplySet parent Secret {}/{PARENT_NAME}", self.namespace);
        let Some(tooling) = annotation(TOOLING_ANNOTATION) else {
            bail!("{what} exists but has no {TOOLING_ANNOTATION} annotation; refusing to adopt a set no tool claims");
        };
        // kubectl's `toolingBaseName`: everything before the last `/`.
        let base = tooling.rsplit_once('/').map_or(tooling, |(base, _)| base);
        if base != TOOL {
            bail!("{what} is managed by `{tooling}`, not by {TOOL}; refusing to change another tool's set");
        }
        let id = parent.pointer(&format!("/metadata/labels/{}", ID_LABEL.replace('/', "~1"))).and_then(Value::as_str);
        if id != Some(self.id.as_str()) {
            bail!("{what} has {ID_LABEL}={} instead of {}; refusing to use it", id.unwrap_or("(none)"), self.id);
        }
        let group_kinds = annotation(GROUP_KINDS_ANNOTATION)
            .unwrap_or_default()
            .split(',')
            .filter(|gk| !gk.is_empty())
            .map(str::to_owned)
            .collect();
        let data = |key: &str| -> anyhow::Result<Option<Vec<Value>>> {
            let Some(encoded) = parent.pointer(&format!("/data/{key}")).and_then(Value::as_str) else {
                return Ok(None);
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .with_context(|| format!("{what}: {key} is not base64"))?;
            serde_json::from_slice(&bytes).map(Some).with_context(|| format!("{what}: {key} is not a JSON array"))
        };
        let revision = annotation(REVISION_ANNOTATION).and_then(|r| r.parse().ok()).unwrap_or(0);
        Ok(Parent {
            group_kinds,
            record: Record { current: data(CURRENT_KEY)?, previous: data(PREVIOUS_KEY)?, revision },
        })
    }
}

/// What a live parent says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parent {
    /// `contains-group-kinds`: where to look for members.
    pub group_kinds: BTreeSet<String>,
    pub record: Record,
}

/// The rendered sets a parent keeps (the objects as applied).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Record {
    /// The set last rolled out: what a failed rollout goes back to.
    pub current: Option<Vec<Value>>,
    /// The one before: what `rollback` goes back to.
    pub previous: Option<Vec<Value>>,
    /// Successful deploys so far.
    pub revision: u64,
}

impl Record {
    /// After `applied` rolled out.
    pub fn rolled_out(&self, applied: Vec<Value>) -> Record {
        Record { previous: self.current.clone(), current: Some(applied), revision: self.revision + 1 }
    }

    /// After a rollback to `previous` rolled out: the two swap, so a second
    /// rollback goes forward again.
    pub fn rolled_back(&self) -> Record {
        Record { current: self.previous.clone(), previous: self.current.clone(), revision: self.revision + 1 }
    }
}

/// The group-kinds of `objects`, as the parent's annotation lists them.
pub fn group_kinds<'a>(objects: impl IntoIterator<Item = &'a Object>) -> BTreeSet<String> {
    objects.into_iter().map(|o| o.key().group_kind()).collect()
}

/// What `--prune` does with the members no longer rendered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prune {
    /// Deleted.
    pub delete: Vec<Key>,
    /// Kept because deleting them loses data (PersistentVolumeClaims and
    /// Namespaces), unless `--prune-allow-data-loss`.
    pub keep: Vec<Key>,
}

/// Kinds whose deletion deletes data: a PVC's volume, everything in a
/// Namespace.
fn loses_data(key: &Key) -> bool {
    key.group.is_empty() && matches!(key.kind.as_str(), "PersistentVolumeClaim" | "Namespace")
}

/// The members (objects labelled with the set's id) that `rendered` no
/// longer holds, sorted; the parent itself is never one.
pub fn prune(members: &[Key], rendered: &BTreeSet<Key>, parent: &Key, allow_data_loss: bool) -> Prune {
    let mut gone: Vec<Key> = members
        .iter()
        .filter(|key| !rendered.contains(key) && *key != parent)
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    gone.sort();
    let (keep, delete) = gone.into_iter().partition(|key| loses_data(key) && !allow_data_loss);
    Prune { delete, keep }
}

/// The parent's key.
pub fn parent_key(namespace: &str) -> Key {
    Key {
        group: String::new(),
        kind: "Secret".to_owned(),
        namespace: Some(namespace.to_owned()),
        name: PARENT_NAME.to_owned(),
    }
}

/// The objects of a stored set, keyed.
pub fn keyed(objects: &[Value]) -> anyhow::Result<BTreeMap<Key, Object>> {
    objects.iter().map(|value| Object::from_value(value.clone(), "the stored set").map(|o| (o.key(), o))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_the_one_kubectl_computes() {
        // kubectl's own test (pkg/cmd/apply/apply_test.go,
        // TestApplySetParentManagement): `--applyset=my-set -n test`.
        assert_eq!(id("my-set", "test", "Secret", ""), "applyset-0eFHV8ySqp7XoShsGvyWFQD3s96yqwHmzc4e0HR1dsY-v1");
        // Ours in prod, computed by hand with kubectl's algorithm:
        // base64url(sha256("freedumb-applyset.freedumb.Secret.")).
        assert_eq!(ApplySet::new("freedumb").id, "applyset-z-Y91xuR_YFTS3jPEkHZa9xoDKC8YREhPk-p7g0mn6o-v1");
    }

    fn key(kind: &str, name: &str) -> Key {
        let (group, namespace) = match kind {
            "Deployment" => ("apps", Some("freedumb")),
            "Namespace" => ("", None),
            _ => ("", Some("freedumb")),
        };
        Key { group: group.into(), kind: kind.into(), namespace: namespace.map(Into::into), name: name.into() }
    }

    #[test]
    fn prune_deletes_what_is_no_longer_rendered_and_nothing_else() {
        let members = [
            key("Deployment", "auth-service"),
            key("Deployment", "worker-notification"),
            key("Service", "worker-notification"),
            key("Secret", PARENT_NAME),
        ];
        let rendered = BTreeSet::from([key("Deployment", "auth-service"), key("Service", "auth-service")]);
        let prune = prune(&members, &rendered, &parent_key("freedumb"), false);
        // Sorted by group, then kind: the core group first.
        assert_eq!(prune.delete, [key("Service", "worker-notification"), key("Deployment", "worker-notification")]);
        assert!(prune.keep.is_empty());
    }

    #[test]
    fn volumes_and_namespaces_are_pruned_only_when_data_loss_is_allowed() {
        let members = [key("PersistentVolumeClaim", "uploads"), key("Namespace", "freedumb"), key("ConfigMap", "old")];
        let rendered = BTreeSet::new();
        let careful = prune(&members, &rendered, &parent_key("freedumb"), false);
        assert_eq!(careful.delete, [key("ConfigMap", "old")]);
        assert_eq!(careful.keep, [key("Namespace", "freedumb"), key("PersistentVolumeClaim", "uploads")]);
        let reckless = prune(&members, &rendered, &parent_key("freedumb"), true);
        assert_eq!(reckless.delete.len(), 3);
    }

    #[test]
    fn a_parent_round_trips_its_record_and_group_kinds() {
        let set = ApplySet::new("freedumb");
        let record = Record { current: Some(vec![json!({"kind": "ConfigMap"})]), previous: None, revision: 4 };
        let kinds = BTreeSet::from(["Deployment.apps".to_owned(), "ConfigMap".to_owned()]);
        let parent = set.parent(&kinds, &record);
        assert_eq!(parent["metadata"]["annotations"][GROUP_KINDS_ANNOTATION], "ConfigMap,Deployment.apps");
        assert_eq!(
            parent["metadata"]["annotations"][TOOLING_ANNOTATION],
            format!("freedumb/v{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(parent["metadata"]["labels"][ID_LABEL], set.id);
        let read = set.read(&parent).unwrap();
        assert_eq!(read, Parent { group_kinds: kinds, record });
    }

    #[test]
    fn a_set_that_another_tool_manages_is_refused() {
        let set = ApplySet::new("freedumb");
        let mut parent = set.parent(&BTreeSet::new(), &Record::default());
        parent["metadata"]["annotations"][TOOLING_ANNOTATION] = json!("kubectl/v1.32.0");
        let err = set.read(&parent).unwrap_err().to_string();
        assert_eq!(
            err,
            "the ApplySet parent Secret freedumb/freedumb-applyset is managed by `kubectl/v1.32.0`, not by freedumb; \
             refusing to change another tool's set"
        );
    }

    #[test]
    fn a_rollback_swaps_the_sets_so_a_second_one_goes_forward_again() {
        let (a, b) = (vec![json!({"v": "a"})], vec![json!({"v": "b"})]);
        let record = Record::default().rolled_out(a.clone()).rolled_out(b.clone());
        assert_eq!((record.current.as_ref(), record.previous.as_ref(), record.revision), (Some(&b), Some(&a), 2));
        let back = record.rolled_back();
        assert_eq!((back.current.as_ref(), back.previous.as_ref()), (Some(&a), Some(&b)));
    }
}

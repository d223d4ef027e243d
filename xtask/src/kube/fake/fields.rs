//! Field ownership as server-side apply tracks it, without schemas: the set
//! of leaf fields each manager owns (`fieldsV1`), the merge of an applied
//! configuration into the live object, and the conflicts an apply raises.
//!
//! The real server knows each type's schema from OpenAPI; this one infers
//! the little it needs from the values. A list whose items all carry the
//! key fields Kubernetes merges that list by (`name` for containers, env
//! and volumes, `containerPort`+`protocol` for container ports, and so on)
//! is merged item by item, and each item is owned as `k:{...}`; every other
//! list is atomic, one leaf. Maps are granular down to their leaves, and an
//! empty map (`podSelector: {}`) is a leaf of its own.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Elem {
    /// A field of a map: `f:name`.
    Field(String),
    /// An item of a list merged by keys, as the canonical JSON object of
    /// its key fields (sorted by name): `k:{"name":"auth"}`.
    Key(String),
}

/// A path from the object's root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Path(pub Vec<Elem>);

impl fmt::Display for Path {
    /// As structured-merge-diff prints paths in conflict messages:
    /// `.spec.template.spec.containers[name="auth"].image`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for elem in &self.0 {
            match elem {
                Elem::Field(name) => write!(f, ".{name}")?,
                Elem::Key(key) => {
                    let map: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
                    let parts: Vec<String> = map.iter().map(|(name, value)| format!("{name}={value}")).collect();
                    write!(f, "[{}]", parts.join(","))?;
                }
            }
        }
        Ok(())
    }
}

/// The fields one manager owns.
pub type FieldSet = BTreeSet<Path>;

/// Fields no manager ever owns: the object's identity and what the server
/// sets (structured-merge-diff strips the same before it compares).
fn ignored(path: &[Elem]) -> bool {
    match path {
        [Elem::Field(top)] => top == "apiVersion" || top == "kind",
        [Elem::Field(top), Elem::Field(field), ..] if top == "metadata" => matches!(
            field.as_str(),
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
                | "managedFields"
                | "selfLink"
                | "generateName"
        ),
        _ => false,
    }
}

/// The fields a list is merged by, when its items all carry them.
fn list_keys(field: &str, items: &[&Value]) -> Option<Vec<&'static str>> {
    if items.is_empty() {
        return None;
    }
    let all_have = |keys: &[&str]| {
        items.iter().all(|item| item.as_object().is_some_and(|map| keys.iter().all(|key| map.contains_key(*key))))
    };
    let candidates: &[&[&'static str]] = match field {
        "ports" => &[&["containerPort", "protocol"], &["containerPort"], &["port", "protocol"], &["port"]],
        "volumeMounts" | "volumeDevices" => &[&["mountPath"], &["devicePath"]],
        "topologySpreadConstraints" => &[&["topologyKey", "whenUnsatisfiable"]],
        "conditions" => &[&["type"]],
        "ownerReferences" => &[&["uid"]],
        "hostAliases" => &[&["ip"]],
        _ => &[&["name"]],
    };
    candidates.iter().find(|keys| all_have(keys)).map(|keys| keys.to_vec())
}

/// The canonical key of a list item: its key fields as a JSON object.
fn item_key(item: &Value, keys: &[&str]) -> String {
    let mut map = Map::new();
    let mut sorted = keys.to_vec();
    sorted.sort_unstable();
    for key in sorted {
        map.insert(key.to_owned(), item.get(key).cloned().unwrap_or(Value::Null));
    }
    Value::Object(map).to_string()
}

fn key_matches(item: &Value, key: &str) -> bool {
    let wanted: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
    !wanted.is_empty() && wanted.iter().all(|(name, value)| item.get(name) == Some(value))
}

fn keyed_items<'a>(field: &str, list: &'a [Value]) -> Option<(Vec<&'static str>, &'a [Value])> {
    let items: Vec<&Value> = list.iter().collect();
    list_keys(field, &items).map(|keys| (keys, list))
}

/// Every leaf of `value` (plus each keyed list item itself), minus the
/// identity and server-set fields.
pub fn fields_of(value: &Value) -> FieldSet {
    let mut set = FieldSet::new();
    let mut path = Vec::new();
    collect(value, None, &mut path, &mut set);
    set
}

fn collect(value: &Value, field: Option<&str>, path: &mut Vec<Elem>, set: &mut FieldSet) {
    if ignored(path) {
        return;
    }
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (name, child) in map {
                path.push(Elem::Field(name.clone()));
                collect(child, Some(name), path, set);
                path.pop();
            }
        }
        Value::Array(list) if !path.is_empty() => match field.and_then(|field| keyed_items(field, list)) {
            Some((keys, items)) => {
                for item in items {
                    path.push(Elem::Key(item_key(item, &keys)));
                    set.insert(Path(path.clone()));
                    collect(item, None, path, set);
                    path.pop();
                }
            }
            None => {
                set.insert(Path(path.clone()));
            }
        },
        _ => {
            if !path.is_empty() {
                set.insert(Path(path.clone()));
            }
        }
    }
}

/// The value at `path`, if there is one.
pub fn get_at<'a>(value: &'a Value, path: &[Elem]) -> Option<&'a Value> {
    let mut current = value;
    for elem in path {
        current = match elem {
            Elem::Field(name) => current.get(name)?,
            Elem::Key(key) => current.as_array()?.iter().find(|item| key_matches(item, key))?,
        };
    }
    Some(current)
}

/// Removes the value at `path`; then removes the maps and lists it leaves
/// empty on the way up (but never a top-level field such as `spec`),
/// unless `keep` says another manager owns them.
pub fn remove_at(value: &mut Value, path: &[Elem], keep: &dyn Fn(&[Elem]) -> bool) {
    let Some((last, parent_path)) = path.split_last() else { return };
    let Some(parent) = get_at_mut(value, parent_path) else { return };
    match (last, parent) {
        (Elem::Field(name), Value::Object(map)) => {
            map.remove(name);
        }
        (Elem::Key(key), Value::Array(list)) => list.retain(|item| !key_matches(item, key)),
        _ => return,
    }
    for depth in (2..=parent_path.len()).rev() {
        let prefix = &parent_path[..depth];
        let empty = get_at(value, prefix).is_some_and(|v| match v {
            Value::Object(map) => map.is_empty(),
            Value::Array(list) => list.is_empty(),
            _ => false,
        });
        if !empty || keep(prefix) {
            break;
        }
        remove_at_exact(value, prefix);
    }
}

fn remove_at_exact(value: &mut Value, path: &[Elem]) {
    let Some((last, parent_path)) = path.split_last() else { return };
    match (last, get_at_mut(value, parent_path)) {
        (Elem::Field(name), Some(Value::Object(map))) => {
            map.remove(name);
        }
        (Elem::Key(key), Some(Value::Array(list))) => list.retain(|item| !key_matches(item, key)),
        _ => {}
    }
}

fn get_at_mut<'a>(value: &'a mut Value, path: &[Elem]) -> Option<&'a mut Value> {
    let mut current = value;
    for elem in path {
        current = match elem {
            Elem::Field(name) => current.get_mut(name)?,
            Elem::Key(key) => current.as_array_mut()?.iter_mut().find(|item| key_matches(item, key))?,
        };
    }
    Some(current)
}

/// Merges `applied` into `live`: maps field by field, keyed lists item by
/// item (the applied items in their order, then the live items the apply
/// does not name), everything else replaced.
pub fn merge(live: &mut Value, applied: &Value) {
    match (live, applied) {
        (Value::Object(live), Value::Object(applied)) => {
            for (name, value) in applied {
                match live.get_mut(name) {
                    Some(existing) => merge_field(existing, value, name),
                    None => {
                        live.insert(name.clone(), value.clone());
                    }
                }
            }
        }
        (live, applied) => *live = applied.clone(),
    }
}

fn merge_field(live: &mut Value, applied: &Value, field: &str) {
    if live.is_object() && applied.is_object() {
        merge(live, applied);
        return;
    }
    if let (Value::Array(live_items), Value::Array(applied_items)) = (&mut *live, applied) {
        let all: Vec<&Value> = live_items.iter().chain(applied_items.iter()).collect();
        if let Some(keys) = list_keys(field, &all) {
            let mut rest: Vec<Value> = std::mem::take(live_items);
            let mut merged = Vec::with_capacity(applied_items.len() + rest.len());
            for item in applied_items {
                let key = item_key(item, &keys);
                match rest.iter().position(|existing| item_key(existing, &keys) == key) {
                    Some(at) => {
                        let mut existing = rest.remove(at);
                        merge(&mut existing, item);
                        merged.push(existing);
                    }
                    None => merged.push(item.clone()),
                }
            }
            merged.extend(rest);
            *live_items = merged;
            return;
        }
    }
    *live = applied.clone();
}

/// `fieldsV1` of a set: nested `f:`/`k:` maps, `.` marking a keyed item
/// that is owned itself.
pub fn encode(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for elem in &path.0 {
            let name = match elem {
                Elem::Field(name) => format!("f:{name}"),
                Elem::Key(key) => format!("k:{key}"),
            };
            node = node.entry(name).or_insert_with(|| Value::Object(Map::new())).as_object_mut().expect("a map");
        }
        if matches!(path.0.last(), Some(Elem::Key(_))) {
            node.insert(".".to_owned(), Value::Object(Map::new()));
        }
    }
    Value::Object(root)
}

/// The set a `fieldsV1` value describes.
pub fn decode(fields: &Value) -> FieldSet {
    let mut set = FieldSet::new();
    let mut path = Vec::new();
    decode_into(fields, &mut path, &mut set);
    set
}

fn decode_into(node: &Value, path: &mut Vec<Elem>, set: &mut FieldSet) {
    let Some(map) = node.as_object() else { return };
    if map.is_empty() && !path.is_empty() {
        set.insert(Path(path.clone()));
        return;
    }
    for (name, child) in map {
        if name == "." {
            set.insert(Path(path.clone()));
            continue;
        }
        let elem = if let Some(field) = name.strip_prefix("f:") {
            Elem::Field(field.to_owned())
        } else if let Some(key) = name.strip_prefix("k:") {
            // Canonicalise: the real server's keys are sorted already.
            let parsed: Value = serde_json::from_str(key).unwrap_or(Value::Null);
            Elem::Key(parsed.to_string())
        } else {
            continue;
        };
        path.push(elem);
        decode_into(child, path, set);
        path.pop();
    }
}

/// Whether the field at `path` differs between two objects. A keyed list
/// item's own entry (`k:{...}` with `.`) stands for the item's existence;
/// its fields are compared as fields of their own.
pub fn differs(path: &Path, a: &Value, b: &Value) -> bool {
    match path.0.last() {
        Some(Elem::Key(_)) => get_at(a, &path.0).is_some() != get_at(b, &path.0).is_some(),
        _ => get_at(a, &path.0) != get_at(b, &path.0),
    }
}

/// The paths where `before` and `after` differ: leaves added, changed or
/// removed (what an Update operation takes ownership of, or takes away).
pub fn changed(before: &Value, after: &Value) -> FieldSet {
    let old = fields_of(before);
    let new = fields_of(after);
    let mut out = FieldSet::new();
    for path in new.iter() {
        if differs(path, before, after) || !old.contains(path) {
            out.insert(path.clone());
        }
    }
    for path in old.difference(&new) {
        out.insert(path.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn path(s: &str) -> String {
        s.to_owned()
    }

    #[test]
    fn containers_are_owned_item_by_item_and_printed_as_the_server_prints_them() {
        let object = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "auth", "namespace": "freedumb", "labels": {"app": "auth"}},
            "spec": {"template": {"spec": {"containers": [
                {"name": "auth", "image": "a:1", "ports": [{"containerPort": 3001, "protocol": "TCP", "name": "http"}]}
            ]}}}
        });
        let printed: Vec<String> = fields_of(&object).iter().map(ToString::to_string).collect();
        assert_eq!(
            printed,
            [
                path(".metadata.labels.app"),
                path(".spec.template.spec.containers[name=\"auth\"]"),
                path(".spec.template.spec.containers[name=\"auth\"].image"),
                path(".spec.template.spec.containers[name=\"auth\"].name"),
                path(".spec.template.spec.containers[name=\"auth\"].ports[containerPort=3001,protocol=\"TCP\"]"),
                path(
                    ".spec.template.spec.containers[name=\"auth\"].ports[containerPort=3001,protocol=\"TCP\"].containerPort"
                ),
                path(".spec.template.spec.containers[name=\"auth\"].ports[containerPort=3001,protocol=\"TCP\"].name"),
                path(
                    ".spec.template.spec.containers[name=\"auth\"].ports[containerPort=3001,protocol=\"TCP\"].protocol"
                ),
            ]
        );
    }

    #[test]
    fn fields_v1_round_trips_in_the_real_shape() {
        let object = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"podSelector": {}, "list": [1, 2],
            "containers": [{"name": "c", "image": "i"}]}});
        let set = fields_of(&object);
        let encoded = encode(&set);
        assert_eq!(
            encoded,
            json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:spec": {
                "f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {}}},
                "f:list": {}, "f:podSelector": {}}})
        );
        assert_eq!(decode(&encoded), set);
    }

    #[test]
    fn merging_keeps_items_the_apply_does_not_name() {
        let mut live = json!({"spec": {"containers": [{"name": "sidecar", "image": "s"}, {"name": "app", "image": "a:1"}],
            "args": ["x"]}});
        merge(&mut live, &json!({"spec": {"containers": [{"name": "app", "image": "a:2"}], "args": ["y"]}}));
        assert_eq!(
            live,
            json!({"spec": {"containers": [{"name": "app", "image": "a:2"}, {"name": "sidecar", "image": "s"}],
                "args": ["y"]}})
        );
    }

    #[test]
    fn removing_the_last_label_removes_the_empty_map_but_not_metadata() {
        let mut object = json!({"metadata": {"name": "x", "labels": {"a": "1"}}});
        remove_at(
            &mut object,
            &[Elem::Field("metadata".into()), Elem::Field("labels".into()), Elem::Field("a".into())],
            &|_| false,
        );
        assert_eq!(object, json!({"metadata": {"name": "x"}}));
    }

    #[test]
    fn a_changed_image_is_the_only_change() {
        let before = json!({"spec": {"containers": [{"name": "app", "image": "a:1"}]}});
        let after = json!({"spec": {"containers": [{"name": "app", "image": "a:2"}]}});
        let printed: Vec<String> = changed(&before, &after).iter().map(ToString::to_string).collect();
        assert_eq!(printed, [path(".spec.containers[name=\"app\"].image")]);
    }
}

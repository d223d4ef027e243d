//! The objects and their history, and every write as the API server makes
//! it: one global `resourceVersion` counter bumped on each write (and on
//! nothing else), identity fields set by the server, status kept apart from
//! the main resource, defaults, `metadata.generation`, managed fields, and
//! errors as `Status` objects. The HTTP side and the controller write
//! through the same functions, so both leave the same traces.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::fields::{self, Elem, FieldSet, Path};
use super::kinds::{self, Resource};
use super::{Behaviour, Request, SecretSync};

/// Where an object is kept: resource (group and plural), namespace ("" for
/// cluster-scoped objects) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(res: &Resource, namespace: &str, name: &str) -> Key {
        Key {
            group: res.group.clone(),
            plural: res.plural.clone(),
            namespace: if res.namespaced { namespace.to_owned() } else { String::new() },
            name: name.to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One write, as watches replay it.
#[derive(Debug)]
pub struct Change {
    pub rv: u64,
    pub key: Key,
    pub kind: ChangeKind,
    /// The object after the write (for a deletion: as it was, with the
    /// deletion's resourceVersion).
    pub object: Value,
    /// The object before the write, so a filtered watch can tell an object
    /// that left its selector (DELETED) from one that entered it (ADDED).
    pub old: Option<Value>,
}

/// A log line of one container.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// Which run of the container wrote it (its restart count then).
    pub instance: u32,
    pub time: String,
    pub text: String,
}

/// An error as the API server answers it: a `Status` object.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into(), details: Value::Null }
    }

    pub fn not_found(res: &Resource, name: &str) -> ApiError {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", res.group_resource()),
            details: details(res, name),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !self.details.is_null() {
            status["details"] = self.details.clone();
        }
        status
    }
}

fn details(res: &Resource, name: &str) -> Value {
    let mut details = json!({"name": name, "kind": res.plural});
    if !res.group.is_empty() {
        details["group"] = json!(res.group);
    }
    details
}

/// The fake's whole state, behind one mutex.
pub struct State {
    rv: u64,
    serial: u64,
    pub objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<Change>>,
    history_cap: usize,
    changes: broadcast::Sender<Arc<Change>>,
    builtins: Vec<Resource>,
    pub logs: BTreeMap<(String, String, String), Vec<LogLine>>,
    pub log_tx: broadcast::Sender<Arc<LogLine>>,
    pub requests: Vec<Request>,
    pub behaviours: BTreeMap<String, Behaviour>,
    pub secret_syncs: BTreeMap<String, SecretSync>,
    pub controller: super::controller::Memory,
}

/// How a write names its manager in `managedFields`.
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    pub manager: &'a str,
    /// "status" or "scale" for writes through those subresources.
    pub subresource: Option<&'a str>,
    pub dry_run: bool,
}

impl State {
    pub fn new(history_cap: usize) -> State {
        let (changes, _) = broadcast::channel(8192);
        let (log_tx, _) = broadcast::channel(4096);
        let mut state = State {
            rv: 0,
            serial: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_cap,
            changes,
            builtins: kinds::builtins(),
            logs: BTreeMap::new(),
            log_tx,
            requests: Vec::new(),
            behaviours: BTreeMap::new(),
            secret_syncs: BTreeMap::new(),
            controller: Default::default(),
        };
        let namespaces = state.resource_named("namespaces").expect("namespaces are built in");
        for name in ["default", "kube-node-lease", "kube-public", "kube-system"] {
            let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            let writer = Writer { manager: "kube-apiserver", subresource: None, dry_run: false };
            state.create(&namespaces, "", namespace, writer).expect("a fresh store takes the system namespaces");
        }
        state
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Subscribes to every write from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    /// The retained writes after `rv`, or `None` when some of them are no
    /// longer retained (the watch then answers 410 Expired).
    pub fn changes_since(&self, rv: u64) -> Option<Vec<Arc<Change>>> {
        let oldest = self.history.front().map_or(self.rv + 1, |change| change.rv);
        if rv + 1 < oldest && rv < self.rv {
            return None;
        }
        Some(self.history.iter().filter(|change| change.rv > rv).cloned().collect())
    }

    pub fn oldest_retained(&self) -> u64 {
        self.history.front().map_or(self.rv, |change| change.rv)
    }

    /// A fresh uid (deterministic: the n-th object gets the n-th uid).
    pub fn uid(&mut self) -> String {
        self.serial += 1;
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            0x6b8a_0000 + (self.serial >> 16),
            self.serial & 0xffff,
            0,
            0,
            self.serial
        )
    }

    /// Five characters as the controllers name pods (`auth-7d9c-x2x4p`),
    /// from the alphabet Kubernetes uses, deterministic.
    pub fn suffix(&mut self) -> String {
        self.serial += 1;
        let hash = fnv32a(&self.serial.to_le_bytes());
        safe_encode(&format!("{hash:05}")[..5])
    }

    pub fn resources(&self) -> Vec<Resource> {
        let mut all = self.builtins.clone();
        let crds = Key {
            group: "apiextensions.k8s.io".into(),
            plural: "customresourcedefinitions".into(),
            namespace: String::new(),
            name: String::new(),
        };
        for (key, crd) in self.objects.range(crds.clone()..) {
            if key.group != crds.group || key.plural != crds.plural {
                break;
            }
            if crd.pointer("/metadata/deletionTimestamp").is_none() {
                all.extend(kinds::from_crd(crd));
            }
        }
        all
    }

    pub fn resource(&self, group: &str, version: &str, plural: &str) -> Option<Resource> {
        self.resources().into_iter().find(|r| r.group == group && r.version == version && r.plural == plural)
    }

    /// A resource by any name a person would use: `Deployment`, `deploy`,
    /// `deployments`, `deployments.apps`, `ExternalSecret`.
    pub fn resource_named(&self, name: &str) -> Option<Resource> {
        let group = name.split_once('.').map(|(_, group)| group);
        self.resources().into_iter().find(|r| r.answers_to(name) && group.is_none_or(|g| g == r.group))
    }

    pub fn resource_of_kind(&self, api_version: &str, kind: &str) -> Option<Resource> {
        self.resources().into_iter().find(|r| r.api_version() == api_version && r.kind == kind)
    }

    pub fn get(&self, res: &Resource, namespace: &str, name: &str) -> Option<&Value> {
        self.objects.get(&Key::new(res, namespace, name))
    }

    /// The objects of a resource, in one namespace or (`None`) in all, in
    /// key order as etcd lists them.
    pub fn list(&self, res: &Resource, namespace: Option<&str>) -> Vec<&Value> {
        let start =
            Key { group: res.group.clone(), plural: res.plural.clone(), namespace: String::new(), name: String::new() };
        self.objects
            .range(start..)
            .take_while(|(key, _)| key.group == res.group && key.plural == res.plural)
            .filter(|(key, _)| namespace.is_none_or(|ns| !res.namespaced || key.namespace == ns))
            .map(|(_, object)| object)
            .collect()
    }

    /// Stores (or, with `None`, removes) an object: the one place a
    /// resourceVersion is spent, a change recorded and announced.
    fn commit(&mut self, key: Key, object: Option<Value>) -> Value {
        self.rv += 1;
        let rv = self.rv;
        let old = self.objects.get(&key).cloned();
        let (kind, stored) = match object {
            Some(mut object) => {
                object["metadata"]["resourceVersion"] = json!(rv.to_string());
                self.objects.insert(key.clone(), object.clone());
                (if old.is_some() { ChangeKind::Modified } else { ChangeKind::Added }, object)
            }
            None => {
                let mut gone = self.objects.remove(&key).unwrap_or(Value::Null);
                if gone.is_object() {
                    gone["metadata"]["resourceVersion"] = json!(rv.to_string());
                }
                (ChangeKind::Deleted, gone)
            }
        };
        let change = Arc::new(Change { rv, key, kind, object: stored.clone(), old });
        self.history.push_back(change.clone());
        while self.history.len() > self.history_cap {
            self.history.pop_front();
        }
        let _ = self.changes.send(change);
        stored
    }

    fn check_namespace(&self, res: &Resource, namespace: &str, name: &str) -> Result<(), ApiError> {
        if !res.namespaced {
            return Ok(());
        }
        let namespaces = self.builtins.iter().find(|r| r.plural == "namespaces").expect("built in");
        match self.get(namespaces, "", namespace) {
            None => Err(ApiError {
                code: 404,
                reason: "NotFound",
                message: format!("namespaces \"{namespace}\" not found"),
                details: json!({"name": namespace, "kind": "namespaces"}),
            }),
            Some(ns) if ns.pointer("/metadata/deletionTimestamp").is_some() => Err(ApiError {
                code: 403,
                reason: "Forbidden",
                message: format!(
                    "{} \"{}\" is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                    res.group_resource(),
                    name,
                ),
                details: json!({"kind": res.plural}),
            }),
            Some(_) => Ok(()),
        }
    }

    /// POST: creates, or answers 409 AlreadyExists.
    pub fn create(
        &mut self,
        res: &Resource,
        namespace: &str,
        mut object: Value,
        writer: Writer,
    ) -> Result<Value, ApiError> {
        if !object.is_object() {
            return Err(ApiError::bad_request("the body of the request was in an unknown format"));
        }
        let mut name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
        if name.is_empty() {
            if let Some(prefix) = object.pointer("/metadata/generateName").and_then(Value::as_str).map(str::to_owned) {
                name = format!("{prefix}{}", self.suffix());
                object["metadata"]["name"] = json!(name);
            }
        }
        if name.is_empty() {
            return Err(invalid(res, "", "metadata.name", "Required value: name or generateName is required"));
        }
        self.check_namespace(res, namespace, &name)?;
        if self.get(res, namespace, &name).is_some() {
            return Err(ApiError {
                code: 409,
                reason: "AlreadyExists",
                message: format!("{} \"{name}\" already exists", res.group_resource()),
                details: details(res, &name),
            });
        }
        strip_server_fields(&mut object);
        if res.has("status") {
            object.as_object_mut().expect("an object").remove("status");
        }
        let managed =
            update_entries(&[], &Value::Null, &object, writer.manager, &res.api_version(), writer.subresource);
        self.finish(res, namespace, &name, None, object, managed, writer.dry_run)
    }

    /// PATCH with `application/apply-patch+yaml`: server-side apply.
    /// Answers the object and whether it was created.
    pub fn apply(
        &mut self,
        res: &Resource,
        namespace: &str,
        name: &str,
        patch: Value,
        writer: Writer,
        force: bool,
    ) -> Result<(Value, bool), ApiError> {
        let Some(applied) = patch.as_object() else {
            return Err(ApiError::bad_request("error decoding YAML: the apply configuration is not an object"));
        };
        let api_version = applied.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        let kind = applied.get("kind").and_then(Value::as_str).unwrap_or_default();
        if api_version.is_empty() || kind.is_empty() {
            return Err(ApiError::bad_request(
                "invalid object type: /, Kind=: apiVersion and kind must be set in an apply configuration",
            ));
        }
        if api_version != res.api_version() || kind != res.kind {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({api_version}) does not match the expected API version ({}) or the kind ({kind}) does not match ({})",
                res.api_version(),
                res.kind
            )));
        }
        let body_name = patch.pointer("/metadata/name").and_then(Value::as_str).unwrap_or(name);
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if let Some(body_ns) = patch.pointer("/metadata/namespace").and_then(Value::as_str) {
            if res.namespaced && body_ns != namespace {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        if patch.pointer("/metadata/managedFields").is_some_and(|m| !m.is_null()) {
            return Err(ApiError::bad_request("metadata.managedFields must be nil"));
        }
        let live = self.get(res, namespace, name).cloned();
        if live.is_none() {
            self.check_namespace(res, namespace, name)?;
        }

        let mut config = patch.clone();
        if res.has("status") {
            config.as_object_mut().expect("an object").remove("status");
        }
        let live_value = live.clone().unwrap_or_else(|| json!({}));
        let mut managers = managed_entries(&live_value);
        let applied_set = fields::fields_of(&config);
        let me = |entry: &Entry| {
            entry.manager == writer.manager && entry.operation == "Apply" && entry.subresource.is_none()
        };

        // Conflicts: fields another manager owns whose value this apply
        // changes. Equal values are shared ownership, as on the real server.
        let mut conflicts: Vec<(String, Path)> = Vec::new();
        for path in &applied_set {
            if !fields::differs(path, &config, &live_value) {
                continue;
            }
            for entry in managers.iter().filter(|entry| !me(entry)) {
                if entry.fields.contains(path) {
                    conflicts.push((entry.identifier(), path.clone()));
                }
            }
        }
        if !conflicts.is_empty() {
            if !force {
                return Err(conflict_error(conflicts));
            }
            for entry in managers.iter_mut().filter(|entry| !me(entry)) {
                for (_, path) in &conflicts {
                    entry.fields.remove(path);
                }
            }
        }

        // Fields this manager applied before and applies no more go, unless
        // another manager owns them too.
        let mut object = live
            .clone()
            .unwrap_or_else(|| json!({"apiVersion": res.api_version(), "kind": res.kind, "metadata": {"name": name}}));
        let previous: FieldSet =
            managers.iter().find(|entry| me(entry)).map(|entry| entry.fields.clone()).unwrap_or_default();
        let others: Vec<FieldSet> =
            managers.iter().filter(|entry| !me(entry)).map(|entry| entry.fields.clone()).collect();
        let owned_by_others = |path: &[Elem]| others.iter().any(|set| set.iter().any(|p| p.0.starts_with(path)));
        for path in previous.difference(&applied_set) {
            if !owned_by_others(&path.0) {
                fields::remove_at(&mut object, &path.0, &|prefix| {
                    owned_by_others(prefix) || applied_set.iter().any(|p| p.0 == prefix)
                });
            }
        }
        fields::merge(&mut object, &config);
        if res.namespaced {
            object["metadata"]["namespace"] = json!(namespace);
        }
        object["metadata"]["name"] = json!(name);

        let now = now();
        match managers.iter_mut().find(|entry| me(entry)) {
            Some(entry) if entry.fields == applied_set => {}
            Some(entry) => {
                entry.fields = applied_set;
                entry.api_version = res.api_version();
                entry.time = now;
            }
            None => managers.push(Entry {
                manager: writer.manager.to_owned(),
                operation: "Apply".to_owned(),
                api_version: res.api_version(),
                time: now,
                subresource: None,
                fields: applied_set,
            }),
        }
        let created = live.is_none();
        let stored = self.finish(res, namespace, name, live.as_ref(), object, managers, writer.dry_run)?;
        Ok((stored, created))
    }

    /// PUT: replaces the object (or its status); `metadata.resourceVersion`
    /// in the body, when set, must be the live one.
    pub fn update(
        &mut self,
        res: &Resource,
        namespace: &str,
        name: &str,
        mut object: Value,
        writer: Writer,
    ) -> Result<Value, ApiError> {
        let Some(live) = self.get(res, namespace, name).cloned() else {
            return Err(ApiError::not_found(res, name));
        };
        if let Some(rv) = object.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
            if !rv.is_empty() && Some(rv) != live.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
                return Err(ApiError {
                    code: 409,
                    reason: "Conflict",
                    message: format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        res.group_resource()
                    ),
                    details: details(res, name),
                });
            }
        }
        let body_name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or(name).to_owned();
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        strip_server_fields(&mut object);
        object["metadata"]["name"] = json!(name);
        if res.namespaced {
            object["metadata"]["namespace"] = json!(namespace);
        }
        object["apiVersion"] = json!(res.api_version());
        object["kind"] = json!(res.kind);
        // The main resource never changes status, and the status
        // subresource changes nothing else.
        if res.has("status") {
            let map = object.as_object_mut().expect("an object");
            if writer.subresource == Some("status") {
                let status = map.remove("status");
                let mut kept = live.clone();
                match status {
                    Some(status) => kept["status"] = status,
                    None => {
                        kept.as_object_mut().expect("an object").remove("status");
                    }
                }
                object = kept;
            } else {
                map.remove("status");
                if let Some(status) = live.get("status") {
                    object["status"] = status.clone();
                }
            }
        }
        let managers = managed_entries(&live);
        let managers =
            update_entries(&managers, &live, &object, writer.manager, &res.api_version(), writer.subresource);
        self.finish(res, namespace, name, Some(&live), object, managers, writer.dry_run)
    }

    /// PATCH with a JSON merge patch, or a strategic merge patch (merged
    /// here like a merge patch whose named lists merge by name).
    pub fn patch(
        &mut self,
        res: &Resource,
        namespace: &str,
        name: &str,
        patch: &Value,
        strategic: bool,
        writer: Writer,
    ) -> Result<Value, ApiError> {
        let Some(live) = self.get(res, namespace, name).cloned() else {
            return Err(ApiError::not_found(res, name));
        };
        let mut object = live.clone();
        merge_patch(&mut object, patch, strategic);
        object["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
        if let Some(rv) = patch.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
            object["metadata"]["resourceVersion"] = json!(rv);
        }
        self.update(res, namespace, name, object, writer)
    }

    /// The common end of every write: server-set fields, defaults,
    /// generation, managed fields, and no write at all when nothing
    /// changed (the resourceVersion stays, as etcd's store does).
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        res: &Resource,
        namespace: &str,
        name: &str,
        live: Option<&Value>,
        mut object: Value,
        managers: Vec<Entry>,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        object["apiVersion"] = json!(res.api_version());
        object["kind"] = json!(res.kind);
        let first = live.is_none();
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        object["metadata"]["name"] = json!(name);
        if res.namespaced {
            object["metadata"]["namespace"] = json!(namespace);
        }
        match live {
            Some(live) => {
                for field in ["uid", "creationTimestamp", "deletionTimestamp", "generation"] {
                    match live["metadata"].get(field) {
                        Some(value) => object["metadata"][field] = value.clone(),
                        None => {
                            object["metadata"].as_object_mut().expect("a map").remove(field);
                        }
                    }
                }
            }
            None => {
                object["metadata"]["uid"] = json!(self.uid());
                object["metadata"]["creationTimestamp"] = json!(now());
                if res.generation {
                    object["metadata"]["generation"] = json!(1);
                }
            }
        }
        defaults(res, &mut object, live, self);
        if let Some(live) = live {
            if res.generation && spec_changed(live, &object) {
                let generation = live.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(0);
                object["metadata"]["generation"] = json!(generation + 1);
            }
        }
        let managed: Vec<Value> =
            sorted(managers).iter().filter(|entry| !entry.fields.is_empty()).map(Entry::to_json).collect();
        if managed.is_empty() {
            object["metadata"].as_object_mut().expect("a map").remove("managedFields");
        } else {
            object["metadata"]["managedFields"] = Value::Array(managed);
        }
        if let Some(live) = live {
            object["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
            if &object == live {
                return Ok(object);
            }
        }
        if dry_run {
            if first {
                object["metadata"].as_object_mut().expect("a map").remove("resourceVersion");
            }
            return Ok(object);
        }
        Ok(self.commit(Key::new(res, namespace, name), Some(object)))
    }

    /// Removes an object now (after finalizers and dependents: that is the
    /// controller's part). Answers what the real server answers: the
    /// `Status` of a deletion, or the object when it stays (finalizers,
    /// foreground deletion, a terminating namespace).
    pub fn delete(
        &mut self,
        res: &Resource,
        namespace: &str,
        name: &str,
        propagation: &str,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let Some(live) = self.get(res, namespace, name).cloned() else {
            return Err(ApiError::not_found(res, name));
        };
        let finalizers: Vec<String> = live
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        let namespace_object = res.group.is_empty() && res.plural == "namespaces";
        let stays = !finalizers.is_empty() || propagation == "Foreground" || namespace_object;
        if stays {
            let mut marked = live.clone();
            if marked.pointer("/metadata/deletionTimestamp").is_none() {
                marked["metadata"]["deletionTimestamp"] = json!(now());
                marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                if propagation == "Foreground" && !finalizers.iter().any(|f| f == "foregroundDeletion") {
                    let mut with = finalizers.clone();
                    with.push("foregroundDeletion".to_owned());
                    marked["metadata"]["finalizers"] = json!(with);
                }
                if namespace_object {
                    marked["status"]["phase"] = json!("Terminating");
                }
            }
            if dry_run || marked == live {
                return Ok(marked);
            }
            return Ok(self.commit(Key::new(res, namespace, name), Some(marked)));
        }
        if propagation == "Orphan" && !dry_run {
            self.orphan_dependents(&live);
        }
        if !dry_run {
            self.commit(Key::new(res, namespace, name), None);
        }
        if res.group.is_empty() && res.plural == "pods" {
            // Pods answer with the object, as their registry asks for.
            return Ok(live);
        }
        let mut details = details(res, name);
        if let Some(uid) = live.pointer("/metadata/uid") {
            details["uid"] = uid.clone();
        }
        Ok(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}))
    }

    /// Removes an object whatever its finalizers (the controller's end of a
    /// deletion).
    pub fn remove(&mut self, key: &Key) {
        if self.objects.contains_key(key) {
            self.commit(key.clone(), None);
        }
    }

    fn orphan_dependents(&mut self, owner: &Value) {
        let Some(uid) = owner.pointer("/metadata/uid").and_then(Value::as_str) else { return };
        let dependents: Vec<(Key, Value)> = self
            .objects
            .iter()
            .filter(|(_, object)| owned_by(object, uid))
            .map(|(key, object)| (key.clone(), object.clone()))
            .collect();
        for (key, mut object) in dependents {
            if let Some(refs) = object["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
            }
            self.commit(key, Some(object));
        }
    }

    /// A write by a controller: creates or updates with an Update entry
    /// for `manager`, no checks a client would meet. Answers the stored
    /// object.
    pub fn controller_write(
        &mut self,
        res: &Resource,
        object: Value,
        manager: &str,
        subresource: Option<&str>,
    ) -> Value {
        let namespace = object.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default().to_owned();
        let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
        let writer = Writer { manager, subresource, dry_run: false };
        let result = if self.get(res, &namespace, &name).is_some() {
            self.update(res, &namespace, &name, object.clone(), writer)
        } else {
            let status = object.get("status").cloned();
            let created = self.create(res, &namespace, object, writer);
            match (created, status) {
                (Ok(created), Some(status)) if res.has("status") => {
                    let mut with = created;
                    with["status"] = status;
                    self.update(res, &namespace, &name, with, Writer { subresource: Some("status"), ..writer })
                }
                (created, _) => created,
            }
        };
        result.unwrap_or_else(|err| {
            panic!("the fake controller's write of {} {namespace}/{name} failed: {}", res.kind, err.message)
        })
    }

    pub fn append_log(&mut self, namespace: &str, pod: &str, container: &str, instance: u32, text: &str) {
        let line = LogLine {
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
            container: container.to_owned(),
            instance,
            time: now_nanos(),
            text: text.to_owned(),
        };
        self.logs.entry((namespace.to_owned(), pod.to_owned(), container.to_owned())).or_default().push(line.clone());
        let _ = self.log_tx.send(Arc::new(line));
    }
}

/// Whether `object` names `uid` among its owners.
pub fn owned_by(object: &Value, uid: &str) -> bool {
    object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| refs.iter().any(|r| r.get("uid").and_then(Value::as_str) == Some(uid)))
}

fn invalid(res: &Resource, name: &str, field: &str, message: &str) -> ApiError {
    ApiError {
        code: 422,
        reason: "Invalid",
        message: format!("{} \"{name}\" is invalid: {field}: {message}", res.kind),
        details: json!({"name": name, "group": res.group, "kind": res.kind,
            "causes": [{"reason": "FieldValueRequired", "message": message, "field": field}]}),
    }
}

/// Fields a client cannot set: the server's.
fn strip_server_fields(object: &mut Value) {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in [
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "managedFields",
            "selfLink",
        ] {
            metadata.remove(field);
        }
    }
}

/// Whether anything but metadata and status differs.
fn spec_changed(old: &Value, new: &Value) -> bool {
    let rest = |object: &Value| -> Map<String, Value> {
        object
            .as_object()
            .map(|map| {
                map.iter()
                    .filter(|(key, _)| !matches!(key.as_str(), "metadata" | "status" | "apiVersion" | "kind"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    rest(old) != rest(new)
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

impl Entry {
    fn to_json(&self) -> Value {
        let mut entry = json!({
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": fields::encode(&self.fields),
        });
        if let Some(sub) = &self.subresource {
            entry["subresource"] = json!(sub);
        }
        entry
    }

    /// How conflict messages name the manager: appliers by name, updaters
    /// with their API version (and subresource), as the real server does.
    fn identifier(&self) -> String {
        let mut text = format!("{:?}", self.manager);
        if let Some(sub) = &self.subresource {
            text.push_str(&format!(" with subresource {sub:?}"));
        }
        if self.operation == "Update" {
            text.push_str(&format!(" using {}", self.api_version));
        }
        text
    }
}

fn managed_entries(object: &Value) -> Vec<Entry> {
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|entry| Entry {
            manager: entry.get("manager").and_then(Value::as_str).unwrap_or_default().to_owned(),
            operation: entry.get("operation").and_then(Value::as_str).unwrap_or("Update").to_owned(),
            api_version: entry.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_owned(),
            time: entry.get("time").and_then(Value::as_str).unwrap_or_default().to_owned(),
            subresource: entry.get("subresource").and_then(Value::as_str).map(str::to_owned),
            fields: entry.get("fieldsV1").map(fields::decode).unwrap_or_default(),
        })
        .collect()
}

/// The entries after an Update by `manager`: it takes every field the
/// write changed, and the others lose those.
fn update_entries(
    entries: &[Entry],
    before: &Value,
    after: &Value,
    manager: &str,
    api_version: &str,
    subresource: Option<&str>,
) -> Vec<Entry> {
    let changed = fields::changed(before, after);
    let present = fields::fields_of(after);
    let mut out: Vec<Entry> = entries.to_vec();
    let mine = |entry: &Entry| {
        entry.manager == manager
            && entry.operation == "Update"
            && entry.subresource.as_deref() == subresource
            && entry.api_version == api_version
    };
    for entry in out.iter_mut().filter(|entry| !mine(entry)) {
        entry.fields.retain(|path| !changed.contains(path));
    }
    let taken: FieldSet = changed.iter().filter(|path| present.contains(*path)).cloned().collect();
    match out.iter_mut().find(|entry| mine(entry)) {
        Some(entry) => {
            let before = entry.fields.clone();
            entry.fields.extend(taken);
            entry.fields.retain(|path| present.contains(path));
            if entry.fields != before {
                entry.time = now();
            }
        }
        None if !taken.is_empty() => out.push(Entry {
            manager: manager.to_owned(),
            operation: "Update".to_owned(),
            api_version: api_version.to_owned(),
            time: now(),
            subresource: subresource.map(str::to_owned),
            fields: taken,
        }),
        None => {}
    }
    out
}

/// In the server's order: Apply before Update, then by time, manager.
fn sorted(mut entries: Vec<Entry>) -> Vec<Entry> {
    entries.sort_by(|a, b| {
        (&a.operation, &a.time, &a.manager, &a.api_version, &a.subresource).cmp(&(
            &b.operation,
            &b.time,
            &b.manager,
            &b.api_version,
            &b.subresource,
        ))
    });
    entries
}

/// The 409 of an apply whose fields other managers own, worded as the
/// real server words it (structured-merge-diff's conflict message).
fn conflict_error(conflicts: Vec<(String, Path)>) -> ApiError {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(manager, path)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {manager}"), "field": path.to_string()}))
        .collect();
    let message = if let [(manager, path)] = conflicts.as_slice() {
        format!("Apply failed with 1 conflict: conflict with {manager}: {path}")
    } else {
        let mut by_manager: BTreeMap<&str, Vec<&Path>> = BTreeMap::new();
        for (manager, path) in &conflicts {
            by_manager.entry(manager).or_default().push(path);
        }
        let mut lines = Vec::new();
        for (manager, paths) in by_manager {
            lines.push(format!("conflicts with {manager}:"));
            lines.extend(paths.iter().map(|path| format!("- {path}")));
        }
        format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
    };
    ApiError { code: 409, reason: "Conflict", message, details: json!({"causes": causes}) }
}

/// RFC 7386, and with `strategic` lists of named items merged by name.
pub fn merge_patch(target: &mut Value, patch: &Value, strategic: bool) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let map = target.as_object_mut().expect("an object");
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
            continue;
        }
        match (map.get_mut(key), value) {
            (Some(existing @ Value::Array(_)), Value::Array(items))
                if strategic && items.iter().all(|i| i.get("name").is_some()) =>
            {
                let list = existing.as_array_mut().expect("an array");
                for item in items {
                    match list.iter_mut().find(|e| e.get("name") == item.get("name")) {
                        Some(existing) => merge_patch(existing, item, strategic),
                        None => list.push(item.clone()),
                    }
                }
            }
            (Some(existing), value) if value.is_object() => merge_patch(existing, value, strategic),
            (_, value) if value.is_object() => {
                let mut fresh = json!({});
                merge_patch(&mut fresh, value, strategic);
                map.insert(key.clone(), fresh);
            }
            (_, value) => {
                map.insert(key.clone(), value.clone());
            }
        }
    }
}

/// The defaults the real server's defaulting functions fill in, for the
/// fields a person sees in `kubectl get -o yaml`.
fn defaults(res: &Resource, object: &mut Value, live: Option<&Value>, state: &mut State) {
    let set_default = |target: &mut Value, field: &str, value: Value| {
        if target.is_object() && target.get(field).is_none_or(Value::is_null) {
            target[field] = value;
        }
    };
    match (res.group.as_str(), res.plural.as_str()) {
        ("", "namespaces") => {
            let name = object["metadata"]["name"].clone();
            object["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
            set_default(object, "spec", json!({"finalizers": ["kubernetes"]}));
            if live.is_none() {
                object["status"] = json!({"phase": "Active"});
            }
        }
        ("", "secrets") => {
            set_default(object, "type", json!("Opaque"));
            if let Some(Value::Object(string_data)) = object.as_object_mut().and_then(|map| map.remove("stringData")) {
                for (key, value) in string_data {
                    object["data"][key] = json!(base64_encode(value.as_str().unwrap_or_default().as_bytes()));
                }
            }
        }
        ("", "services") => {
            let spec = &mut object["spec"];
            if !spec.is_object() {
                *spec = json!({});
            }
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            set_default(spec, "internalTrafficPolicy", json!("Cluster"));
            let ip = match live.and_then(|live| live.pointer("/spec/clusterIP")) {
                Some(ip) => ip.clone(),
                None => {
                    state.serial += 1;
                    json!(format!("10.96.{}.{}", (state.serial / 250) % 250, state.serial % 250 + 2))
                }
            };
            set_default(spec, "clusterIP", ip.clone());
            set_default(spec, "clusterIPs", json!([ip]));
            set_default(spec, "ipFamilies", json!(["IPv4"]));
            set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for port in ports {
                    set_default(port, "protocol", json!("TCP"));
                    let number = port.get("port").cloned().unwrap_or(Value::Null);
                    set_default(port, "targetPort", number);
                }
            }
            if live.is_none() {
                object["status"] = json!({"loadBalancer": {}});
            }
        }
        ("", "pods") => {
            pod_spec_defaults(&mut object["spec"]);
            if live.is_none() && object.get("status").is_none() {
                object["status"] = json!({"phase": "Pending", "qosClass": "Burstable"});
            }
        }
        ("apps", "deployments") => {
            let spec = &mut object["spec"];
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            set_default(spec, "strategy", json!({"type": "RollingUpdate"}));
            if spec["strategy"]["type"] == "RollingUpdate" {
                set_default(&mut spec["strategy"], "rollingUpdate", json!({}));
                set_default(&mut spec["strategy"]["rollingUpdate"], "maxSurge", json!("25%"));
                set_default(&mut spec["strategy"]["rollingUpdate"], "maxUnavailable", json!("25%"));
            }
            pod_spec_defaults(&mut spec["template"]["spec"]);
        }
        ("apps", "replicasets") => {
            set_default(&mut object["spec"], "replicas", json!(1));
            pod_spec_defaults(&mut object["spec"]["template"]["spec"]);
        }
        ("batch", "jobs") => {
            let spec = &mut object["spec"];
            set_default(spec, "backoffLimit", json!(6));
            set_default(spec, "completions", json!(1));
            set_default(spec, "parallelism", json!(1));
            set_default(spec, "completionMode", json!("NonIndexed"));
            set_default(spec, "suspend", json!(false));
            if spec["template"]["spec"].get("restartPolicy").is_none() {
                spec["template"]["spec"]["restartPolicy"] = json!("Never");
            }
            pod_spec_defaults(&mut spec["template"]["spec"]);
        }
        _ => {}
    }
}

fn pod_spec_defaults(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    let set_default = |target: &mut Value, field: &str, value: Value| {
        if target.is_object() && target.get(field).is_none_or(Value::is_null) {
            target[field] = value;
        }
    };
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "securityContext", json!({}));
    for list in ["initContainers", "containers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for container in containers {
                let latest = container.get("image").and_then(Value::as_str).is_some_and(|image| {
                    let last = image.rsplit('/').next().unwrap_or(image);
                    !last.contains(':') && !image.contains('@') || last.ends_with(":latest")
                });
                set_default(container, "imagePullPolicy", json!(if latest { "Always" } else { "IfNotPresent" }));
                set_default(container, "terminationMessagePath", json!("/dev/termination-log"));
                set_default(container, "terminationMessagePolicy", json!("File"));
                set_default(container, "resources", json!({}));
                if let Some(ports) = container.get_mut("ports").and_then(Value::as_array_mut) {
                    for port in ports {
                        set_default(port, "protocol", json!("TCP"));
                    }
                }
            }
        }
    }
}

/// Now, as the API server writes timestamps (seconds, UTC).
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Now with nanoseconds, as log timestamps are.
pub fn now_nanos() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

pub fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// FNV-1a, 32 bits: what the deployment controller hashes pod templates
/// with.
pub fn fnv32a(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in bytes {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// Kubernetes' `rand.SafeEncodeString`: each byte through an alphabet with
/// no vowels and no look-alike digits, so names read like the real ones.
pub fn safe_encode(text: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    text.bytes().map(|byte| ALPHABET[usize::from(byte) % ALPHABET.len()] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployments(state: &State) -> Resource {
        state.resource_named("deployments").unwrap()
    }

    fn writer(manager: &str) -> Writer<'_> {
        Writer { manager, subresource: None, dry_run: false }
    }

    fn deployment(image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "auth", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "auth"}}, "template": {"metadata": {"labels": {"app": "auth"}},
                "spec": {"containers": [{"name": "auth", "image": image}]}}}})
    }

    #[test]
    fn an_unchanged_apply_writes_nothing() {
        let mut state = State::new(100);
        let res = deployments(&state);
        let (first, created) =
            state.apply(&res, "default", "auth", deployment("a:1"), writer("freedumb"), false).unwrap();
        assert!(created);
        let (second, created) =
            state.apply(&res, "default", "auth", deployment("a:1"), writer("freedumb"), false).unwrap();
        assert!(!created);
        assert_eq!(first, second);
        assert_eq!(first["metadata"]["generation"], 1);
        let (third, _) = state.apply(&res, "default", "auth", deployment("a:2"), writer("freedumb"), false).unwrap();
        assert_eq!(third["metadata"]["generation"], 2);
        assert_ne!(third["metadata"]["resourceVersion"], first["metadata"]["resourceVersion"]);
    }

    #[test]
    fn another_managers_image_conflicts_unless_forced() {
        let mut state = State::new(100);
        let res = deployments(&state);
        state.apply(&res, "default", "auth", deployment("a:1"), writer("freedumb"), false).unwrap();
        let mut edited = state.get(&res, "default", "auth").unwrap().clone();
        edited["spec"]["template"]["spec"]["containers"][0]["image"] = json!("a:hotfix");
        state.update(&res, "default", "auth", edited, writer("kubectl-edit")).unwrap();

        let err = state.apply(&res, "default", "auth", deployment("a:2"), writer("freedumb"), false).unwrap_err();
        assert_eq!(err.code, 409);
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using apps/v1: .spec.template.spec.containers[name=\"auth\"].image"
        );
        assert_eq!(err.details["causes"][0]["reason"], "FieldManagerConflict");

        // The same value is shared ownership, not a conflict.
        state.apply(&res, "default", "auth", deployment("a:hotfix"), writer("freedumb"), false).unwrap();
        let (forced, _) = state.apply(&res, "default", "auth", deployment("a:3"), writer("freedumb"), true).unwrap();
        assert_eq!(forced["spec"]["template"]["spec"]["containers"][0]["image"], "a:3");
    }

    #[test]
    fn a_field_dropped_from_the_apply_is_removed() {
        let mut state = State::new(100);
        let res = deployments(&state);
        let mut with_label = deployment("a:1");
        with_label["metadata"]["labels"] = json!({"team": "core"});
        state.apply(&res, "default", "auth", with_label, writer("freedumb"), false).unwrap();
        let (without, _) = state.apply(&res, "default", "auth", deployment("a:1"), writer("freedumb"), false).unwrap();
        assert!(without["metadata"].get("labels").is_none(), "{without:#}");
    }

    #[test]
    fn objects_need_their_namespace() {
        let mut state = State::new(100);
        let res = deployments(&state);
        let mut elsewhere = deployment("a:1");
        elsewhere["metadata"]["namespace"] = json!("freedumb");
        let err = state.apply(&res, "freedumb", "auth", elsewhere, writer("freedumb"), false).unwrap_err();
        assert_eq!((err.code, err.message.as_str()), (404, "namespaces \"freedumb\" not found"));
    }
}

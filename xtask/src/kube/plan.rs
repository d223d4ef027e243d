//! The apply plan, pure: the objects of a render (`render::render`'s
//! in-memory files, never files on disk), each one's identity, and the
//! order they are applied in.
//!
//! The order is Helm's install order, for what this platform renders: the
//! Namespace first (everything else lives in it), then the policies and
//! configuration the pods read, the ExternalSecret (whose Secret the
//! workloads need: the deploy waits for it to be Ready before the first of
//! them), Services, the workloads, and last what refers to workloads
//! (autoscalers, monitors, Ingresses). Objects of one kind keep their
//! order in the render (files by path, documents in file order), so a plan
//! is the same on every run.

use std::collections::BTreeSet;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::render::Files;

/// One object to apply, as rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// `apps`, or empty for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    /// None for cluster-scoped kinds (the Namespace).
    pub namespace: Option<String>,
    pub name: String,
    /// The rendered file it came from (`k8s/auth-service.yaml`).
    pub file: String,
    pub value: Value,
}

/// An object's identity in the cluster: what prune and the inventory
/// compare (the version is not part of it: one object is served at many).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub group: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl Key {
    /// `Kind.group`, or `Kind` for the core group: how kubectl writes a
    /// GroupKind, and how the ApplySet annotation lists them.
    pub fn group_kind(&self) -> String {
        group_kind(&self.group, &self.kind)
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{} {namespace}/{}", self.group_kind(), self.name),
            None => write!(f, "{} {}", self.group_kind(), self.name),
        }
    }
}

/// `Kind.group`, or `Kind` for the core group.
pub fn group_kind(group: &str, kind: &str) -> String {
    if group.is_empty() { kind.to_owned() } else { format!("{kind}.{group}") }
}

impl Object {
    pub fn key(&self) -> Key {
        Key {
            group: self.group.clone(),
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// Whether the object runs pods that the deploy waits for.
    pub fn is_workload(&self) -> bool {
        self.group == "apps" && self.kind == "Deployment"
    }

    /// From a parsed document; `file` names where it came from.
    pub fn from_value(value: Value, file: &str) -> anyhow::Result<Object> {
        let text = |pointer: &str| value.pointer(pointer).and_then(Value::as_str).map(str::to_owned);
        let api_version = text("/apiVersion").with_context(|| format!("{file}: a document without apiVersion"))?;
        let kind = text("/kind").with_context(|| format!("{file}: a document without kind"))?;
        let name = text("/metadata/name").with_context(|| format!("{file}: a {kind} without metadata.name"))?;
        let (group, version) = match api_version.split_once('/') {
            Some((group, version)) => (group.to_owned(), version.to_owned()),
            None => (String::new(), api_version.clone()),
        };
        let namespace = text("/metadata/namespace");
        if namespace.is_none() && !CLUSTER_SCOPED.contains(&kind.as_str()) {
            bail!("{file}: {kind} {name} has no metadata.namespace; every namespaced object names its own");
        }
        Ok(Object { group, version, kind, namespace, name, file: file.to_owned(), value })
    }
}

/// The cluster-scoped kinds a render may hold. Only the Namespace today;
/// the rest is listed so that a new template gets the rule right.
const CLUSTER_SCOPED: [&str; 6] =
    ["Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "StorageClass", "PersistentVolume"];

/// The Kubernetes objects of a render, in apply order: every document of
/// every `k8s/*.yaml` except the kustomization (which is kustomize's
/// instructions, not an object).
pub fn objects(files: &Files) -> anyhow::Result<Vec<Object>> {
    let mut objects = Vec::new();
    for (path, text) in files {
        if !path.starts_with("k8s/") || !path.ends_with(".yaml") || path == "k8s/kustomization.yaml" {
            continue;
        }
        for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = <Value as serde::Deserialize>::deserialize(document)
                .with_context(|| format!("{path}: document {} is not valid YAML", index + 1))?;
            if value.is_null() {
                continue;
            }
            objects.push(Object::from_value(value, path)?);
        }
    }
    let mut seen = BTreeSet::new();
    for object in &objects {
        if !seen.insert(object.key()) {
            bail!("{}: {} is rendered twice", object.file, object.key());
        }
    }
    objects.sort_by_key(|object| rank(&object.kind));
    Ok(objects)
}

/// Where a kind goes in the apply order (Helm's `InstallOrder`, with the
/// custom resources this platform renders placed by what they need).
pub fn rank(kind: &str) -> usize {
    const ORDER: [&str; 27] = [
        "Namespace",
        "NetworkPolicy",
        "ResourceQuota",
        "LimitRange",
        "PodDisruptionBudget",
        "ServiceAccount",
        "Secret",
        "ConfigMap",
        "StorageClass",
        "PersistentVolume",
        "PersistentVolumeClaim",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        // The Secret every workload reads; the deploy waits for it.
        "ExternalSecret",
        // The TLS Secret the Ingresses name.
        "Certificate",
        "Service",
        "DaemonSet",
        "StatefulSet",
        "Deployment",
        "Job",
        "CronJob",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "Ingress",
    ];
    ORDER.iter().position(|k| *k == kind).unwrap_or(ORDER.len())
}

/// What installs the CRD of a custom resource's API group, for the error
/// that names a missing one.
pub fn installer(group: &str) -> Option<&'static str> {
    match group {
        "external-secrets.io" => Some("the External Secrets Operator (external-secrets)"),
        "cert-manager.io" => Some("cert-manager"),
        "monitoring.coreos.com" => Some("the Prometheus Operator (prometheus-operator, or kube-prometheus-stack)"),
        _ => None,
    }
}

/// The Secrets a workload's pods read (`secretKeyRef`, `secretRef`, secret
/// volumes): its pods cannot start before those exist.
pub fn secrets_needed(workload: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    collect_secret_names(workload.pointer("/spec/template/spec").unwrap_or(&Value::Null), &mut names);
    names
}

fn collect_secret_names(value: &Value, names: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                let name = match key.as_str() {
                    "secretKeyRef" | "secretRef" => inner.get("name"),
                    "secret" => inner.get("secretName"),
                    _ => None,
                };
                if let Some(name) = name.and_then(Value::as_str) {
                    names.insert(name.to_owned());
                }
                collect_secret_names(inner, names);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_secret_names(item, names)),
        _ => {}
    }
}

/// The Secret an ExternalSecret writes: `spec.target.name`, or its own name.
pub fn external_secret_target(external_secret: &Object) -> String {
    external_secret
        .value
        .pointer("/spec/target/name")
        .and_then(Value::as_str)
        .map_or_else(|| external_secret.name.clone(), str::to_owned)
}

/// Sets `label` on every object (metadata.labels), leaving the rest alone.
pub fn label(objects: &mut [Object], label: &str, value: &str) {
    for object in objects {
        let metadata = object.value.as_object_mut().and_then(|o| o.get_mut("metadata")).and_then(Value::as_object_mut);
        if let Some(metadata) = metadata {
            let labels = metadata.entry("labels").or_insert_with(|| Value::Object(Default::default()));
            if let Some(labels) = labels.as_object_mut() {
                labels.insert(label.to_owned(), Value::String(value.to_owned()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::context::Upstreams;

    fn prod() -> Vec<Object> {
        let root = crate::project_root();
        let environment = crate::environment::load(&root, "prod").unwrap();
        objects(&crate::render::render(&root, &environment, Upstreams::Deployed).unwrap()).unwrap()
    }

    #[test]
    fn the_plan_is_every_rendered_object_but_the_kustomization() {
        let objects = prod();
        let kinds: BTreeSet<&str> = objects.iter().map(|o| o.kind.as_str()).collect();
        assert!(!kinds.contains("Kustomization"));
        for kind in
            ["Namespace", "ConfigMap", "ExternalSecret", "Certificate", "Deployment", "Ingress", "ServiceMonitor"]
        {
            assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
        }
        let auth = objects.iter().find(|o| o.kind == "Deployment" && o.name == "auth-service").unwrap();
        assert_eq!((auth.group.as_str(), auth.version.as_str()), ("apps", "v1"));
        assert_eq!(auth.namespace.as_deref(), Some("freedumb"));
        assert_eq!(auth.file, "k8s/auth-service.yaml");
        assert_eq!(auth.key().to_string(), "Deployment.apps freedumb/auth-service");
    }

    #[test]
    fn the_namespace_comes_first_and_the_secret_before_the_workloads_that_read_it() {
        let objects = prod();
        assert_eq!(objects[0].kind, "Namespace");
        let position = |kind: &str| objects.iter().position(|o| o.kind == kind).unwrap();
        let last = |kind: &str| objects.iter().rposition(|o| o.kind == kind).unwrap();
        assert!(last("ConfigMap") < position("Deployment"));
        assert!(last("ExternalSecret") < position("Deployment"));
        assert!(last("Service") < position("Deployment"));
        assert!(last("Certificate") < position("Ingress"));
        assert!(last("Deployment") < position("HorizontalPodAutoscaler"));
        // Within a kind, the render's order: files by name.
        let deployments: Vec<&str> = objects.iter().filter(|o| o.is_workload()).map(|o| o.name.as_str()).collect();
        let mut sorted = deployments.clone();
        sorted.sort();
        assert_eq!(deployments, sorted);
        assert!(deployments.contains(&"auth-service") && deployments.contains(&"worker-recurring"), "{deployments:?}");
    }

    #[test]
    fn every_workload_reads_the_secret_the_external_secret_writes() {
        let objects = prod();
        let external = objects.iter().find(|o| o.kind == "ExternalSecret").unwrap();
        assert_eq!(external_secret_target(external), "freedumb-secrets");
        for workload in objects.iter().filter(|o| o.is_workload()) {
            assert_eq!(
                secrets_needed(&workload.value),
                BTreeSet::from(["freedumb-secrets".to_owned()]),
                "{}",
                workload.name
            );
        }
    }

    #[test]
    fn a_namespaced_object_without_a_namespace_is_refused_naming_its_file() {
        let files = Files::from([(
            "k8s/extra.yaml".to_owned(),
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: stray\n".to_owned(),
        )]);
        let err = objects(&files).unwrap_err().to_string();
        assert_eq!(
            err,
            "k8s/extra.yaml: ConfigMap stray has no metadata.namespace; every namespaced object names its own"
        );
    }

    #[test]
    fn custom_resources_name_what_installs_their_crd() {
        assert_eq!(installer("cert-manager.io"), Some("cert-manager"));
        assert!(installer("external-secrets.io").unwrap().contains("external-secrets"));
        assert!(installer("monitoring.coreos.com").unwrap().contains("prometheus-operator"));
        assert_eq!(installer("apps"), None);
    }
}

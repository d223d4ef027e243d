//! The resources the fake server serves: the built-in kinds the render
//! produces (and the ones their controllers create), and custom resources,
//! which exist only once their CustomResourceDefinition is in the store,
//! exactly as on a real cluster.

use serde_json::{Value, json};

/// One resource of the API, as discovery describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// "" for the core group.
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Subresources served: "status", "scale", "log".
    pub subresources: Vec<&'static str>,
    /// Whether the server keeps `metadata.generation` (bumped when
    /// anything but metadata and status changes).
    pub generation: bool,
    /// Served from a CustomResourceDefinition.
    pub custom: bool,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.clone() } else { format!("{}/{}", self.group, self.version) }
    }

    /// `deployments.apps`, `pods`: how error messages name the resource.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() { self.plural.clone() } else { format!("{}.{}", self.plural, self.group) }
    }

    pub fn has(&self, subresource: &str) -> bool {
        self.subresources.contains(&subresource)
    }

    /// Whether `name` names this resource the way kubectl lets a person
    /// name it: kind, plural, singular or short name, any case.
    pub fn answers_to(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        let name = name.split('.').next().unwrap_or_default();
        self.kind.to_ascii_lowercase() == name
            || self.plural == name
            || self.singular == name
            || self.short_names.iter().any(|short| short == name)
    }
}

/// What every resource here serves (discovery lists them).
pub const VERBS: [&str; 8] = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    short_names: &[&str],
    subresources: &[&'static str],
    generation: bool,
) -> Resource {
    let all =
        matches!(plural, "pods" | "services" | "deployments" | "replicasets" | "jobs" | "horizontalpodautoscalers");
    Resource {
        group: group.to_owned(),
        version: version.to_owned(),
        plural: plural.to_owned(),
        singular: kind.to_ascii_lowercase(),
        kind: kind.to_owned(),
        namespaced,
        short_names: short_names.iter().map(|s| (*s).to_owned()).collect(),
        categories: if all { vec!["all".to_owned()] } else { Vec::new() },
        subresources: subresources.to_vec(),
        generation,
        custom: false,
    }
}

/// The built-in resources, in discovery order.
pub fn builtins() -> Vec<Resource> {
    vec![
        builtin("", "v1", "configmaps", "ConfigMap", true, &["cm"], &[], false),
        builtin("", "v1", "events", "Event", true, &["ev"], &[], false),
        builtin("", "v1", "namespaces", "Namespace", false, &["ns"], &["status"], false),
        builtin("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", true, &["pvc"], &["status"], false),
        builtin("", "v1", "pods", "Pod", true, &["po"], &["status", "log"], false),
        builtin("", "v1", "secrets", "Secret", true, &[], &[], false),
        builtin("", "v1", "serviceaccounts", "ServiceAccount", true, &["sa"], &[], false),
        builtin("", "v1", "services", "Service", true, &["svc"], &["status"], false),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            &["status"],
            true,
        ),
        builtin("apps", "v1", "deployments", "Deployment", true, &["deploy"], &["status", "scale"], true),
        builtin("apps", "v1", "replicasets", "ReplicaSet", true, &["rs"], &["status", "scale"], true),
        builtin(
            "autoscaling",
            "v2",
            "horizontalpodautoscalers",
            "HorizontalPodAutoscaler",
            true,
            &["hpa"],
            &["status"],
            true,
        ),
        builtin("batch", "v1", "jobs", "Job", true, &[], &["status"], true),
        builtin("networking.k8s.io", "v1", "ingresses", "Ingress", true, &["ing"], &["status"], true),
        builtin("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", true, &["netpol"], &[], true),
        builtin("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", true, &["pdb"], &["status"], true),
    ]
}

/// The resource a CustomResourceDefinition object serves, if it is
/// established (every CRD the fake stores is, at once).
pub fn from_crd(crd: &Value) -> Option<Resource> {
    let spec = crd.get("spec")?;
    let names = spec.get("names")?;
    let version = spec
        .get("versions")?
        .as_array()?
        .iter()
        .find(|version| version.get("served").and_then(Value::as_bool).unwrap_or(false))?;
    let strings = |value: Option<&Value>| -> Vec<String> {
        value.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
    };
    let mut subresources = Vec::new();
    if version.pointer("/subresources/status").is_some() {
        subresources.push("status");
    }
    if version.pointer("/subresources/scale").is_some() {
        subresources.push("scale");
    }
    Some(Resource {
        group: spec.get("group")?.as_str()?.to_owned(),
        version: version.get("name")?.as_str()?.to_owned(),
        plural: names.get("plural")?.as_str()?.to_owned(),
        singular: names.get("singular").and_then(Value::as_str).unwrap_or_default().to_owned(),
        kind: names.get("kind")?.as_str()?.to_owned(),
        namespaced: spec.get("scope").and_then(Value::as_str) == Some("Namespaced"),
        short_names: strings(names.get("shortNames")),
        categories: strings(names.get("categories")),
        subresources,
        generation: true,
        custom: true,
    })
}

/// A custom resource a test can install, as its operator's chart would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crd {
    /// `external-secrets.io/v1` ExternalSecret (External Secrets Operator).
    ExternalSecret,
    /// `cert-manager.io/v1` Certificate (cert-manager).
    Certificate,
    /// `monitoring.coreos.com/v1` ServiceMonitor (Prometheus Operator).
    ServiceMonitor,
}

impl Crd {
    pub const ALL: [Crd; 3] = [Crd::ExternalSecret, Crd::Certificate, Crd::ServiceMonitor];

    /// The CustomResourceDefinition object, trimmed to what discovery and
    /// clients read (the schema accepts anything).
    pub fn definition(self) -> Value {
        let (group, version, plural, kind, short, categories): (&str, &str, &str, &str, &[&str], &[&str]) = match self {
            Crd::ExternalSecret => {
                ("external-secrets.io", "v1", "externalsecrets", "ExternalSecret", &["es"], &["external-secrets"])
            }
            Crd::Certificate => {
                ("cert-manager.io", "v1", "certificates", "Certificate", &["cert", "certs"], &["cert-manager"])
            }
            Crd::ServiceMonitor => (
                "monitoring.coreos.com",
                "v1",
                "servicemonitors",
                "ServiceMonitor",
                &["smon"],
                &["prometheus-operator"],
            ),
        };
        let mut versions = vec![json!({
            "name": version,
            "served": true,
            "storage": true,
            "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
            "subresources": if self == Crd::ServiceMonitor { json!({}) } else { json!({"status": {}}) },
        })];
        if self == Crd::ExternalSecret {
            // The operator still serves the beta next to v1.
            versions.push(json!({
                "name": "v1beta1", "served": false, "storage": false,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
            }));
        }
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.{group}")},
            "spec": {
                "group": group,
                "names": {
                    "plural": plural,
                    "singular": kind.to_ascii_lowercase(),
                    "kind": kind,
                    "listKind": format!("{kind}List"),
                    "shortNames": short,
                    "categories": categories,
                },
                "scope": "Namespaced",
                "versions": versions,
            },
        })
    }
}

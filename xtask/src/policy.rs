//! Policy: what every rendered workload must look like, checked on the
//! rendered files themselves (what ships), not on the model. Strict in
//! Kubernetes environments (staging, prod: a finding fails `check`); in a
//! compose environment the compose-level rules are reported as warnings.
//!
//! Each finding names what to change: the environment file and key when the
//! model decides the value, or the template when it is fixed there.

use std::collections::BTreeMap;
use std::fmt;

use serde_yaml::Value;

use crate::environment::{Environment, Kind};
use crate::render::Files;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Where to fix it: `environments/prod.toml:12:1: key `services.auth.x`` or
    /// `templates/k8s/workload.yaml.tera`.
    pub fix: String,
    /// The rendered object: `k8s/auth-service.yaml: Deployment auth-service`.
    pub object: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.fix, self.object, self.message)
    }
}

/// Whether findings fail the check in this environment.
pub fn strict(environment: &Environment) -> bool {
    environment.model.kind == Kind::Kubernetes
}

/// Every finding on the rendered files of `environment`.
pub fn check(environment: &Environment, files: &Files) -> anyhow::Result<Vec<Finding>> {
    let mut findings = Vec::new();
    let mut checker = Checker { environment, findings: &mut findings, by_tag_only: BTreeMap::new() };
    for (path, text) in files {
        if path.starts_with("k8s/") && path.ends_with(".yaml") {
            let documents = documents(path, text)?;
            checker.kubernetes(path, &documents);
        } else if path == "docker-compose.yml" {
            let document: Value =
                serde_yaml::from_str(text).map_err(|err| anyhow::anyhow!("{path} is not YAML: {err}"))?;
            checker.compose(path, &document);
        }
    }
    checker.digests();
    Ok(findings)
}

/// The tag of an image reference, `None` without one: what follows the
/// last `:` after the last `/`, the digest (`@sha256:...`) left aside.
fn tag_of(image: &str) -> Option<&str> {
    let name = image.split_once('@').map_or(image, |(name, _)| name);
    name.rsplit_once(':').map(|(_, tag)| tag).filter(|tag| !tag.contains('/'))
}

/// The YAML documents of a multi-document file, without empty ones.
pub fn documents(path: &str, text: &str) -> anyhow::Result<Vec<Value>> {
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = <Value as serde::Deserialize>::deserialize(document)
            .map_err(|err| anyhow::anyhow!("{path} is not YAML: {err}"))?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

/// `value` at a path of mapping keys, `Null` when absent.
pub fn at<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    static NULL: Value = Value::Null;
    let mut current = value;
    for key in path {
        current = current.get(*key).unwrap_or(&NULL);
    }
    current
}

pub fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).as_str()
}

/// Names that hold secrets by convention; a literal value under such a name
/// is a plaintext secret.
fn looks_secret(name: &str) -> bool {
    ["SECRET", "PASSWORD", "TOKEN", "API_KEY", "ENCRYPTION_KEY", "AUTH_TOKEN", "ACCOUNT_SID"]
        .iter()
        .any(|marker| name.contains(marker))
}

/// A URL with a literal password (`scheme://user:password@`), unless the
/// password is a reference: `$(NAME)` or `${NAME...}`.
fn url_with_literal_password(value: &str) -> bool {
    let Some((_, rest)) = value.split_once("://") else { return false };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let Some((userinfo, _)) = authority.rsplit_once('@') else { return false };
    match userinfo.split_once(':') {
        Some((_, password)) => !(password.is_empty() || password.starts_with("$(") || password.starts_with("${")),
        None => false,
    }
}

struct Checker<'a> {
    environment: &'a Environment,
    findings: &'a mut Vec<Finding>,
    /// Images of ours named by tag only, with the objects that run them.
    by_tag_only: BTreeMap<String, Vec<String>>,
}

const WORKLOAD_TEMPLATE: &str = "templates/k8s/workload.yaml.tera";

impl Checker<'_> {
    /// The model key of a workload object: `auth-service` → `services.auth`.
    fn workload_key(&self, object: &str) -> Vec<String> {
        if let Some(target) = object.strip_suffix("-service") {
            vec!["services".to_owned(), target.to_owned()]
        } else if let Some(target) = object.strip_prefix("worker-") {
            vec!["workers".to_owned(), target.to_owned()]
        } else {
            vec![object.to_owned()]
        }
    }

    fn at_key(&mut self, key: Vec<String>, object: String, message: impl Into<String>) {
        let position = self.environment.layered.position(&key, false);
        let fix = format!("{position}: key `{}`", key.join("."));
        self.findings.push(Finding { fix, object, message: message.into() });
    }

    fn at_template(&mut self, template: &str, object: String, message: impl Into<String>) {
        self.findings.push(Finding { fix: template.to_owned(), object, message: message.into() });
    }

    /// Notes an image of ours (the platform's, or its gateway's) that is
    /// named without a digest.
    fn image_of_ours(&mut self, image: &str, object: &str) {
        if image.starts_with(&self.environment.model.platform.image) && !image.contains("@sha256:") {
            self.by_tag_only.entry(image.to_owned()).or_default().push(object.to_owned());
        }
    }

    /// An environment that requires digests (prod) runs only released
    /// images: a tag can be moved to other content, a digest cannot. One
    /// finding per image, placed in the file that requires it.
    fn digests(&mut self) {
        if !self.environment.model.platform.require_digest {
            return;
        }
        let position = self.environment.layered.position(&["platform".to_owned(), "require_digest".to_owned()], true);
        let file = position.file.display().to_string();
        for (image, objects) in std::mem::take(&mut self.by_tag_only) {
            let key = if image.contains("-gateway:") { "gateway_digest" } else { "digest" };
            let object = match objects.len() {
                1 => objects[0].clone(),
                n => format!("{} and {} more", objects[0], n - 1),
            };
            self.findings.push(Finding {
                fix: format!("{position}: key `platform.{key}`"),
                object,
                message: format!(
                    "image `{image}` is named by tag only, and this environment runs only images named by digest \
                     (platform.require_digest): the release step writes platform.{key} = \"sha256:...\" into \
                     {file}, from the registry's digest of the pushed image (docs/releases.md)"
                ),
            });
        }
    }

    fn kubernetes(&mut self, path: &str, documents: &[Value]) {
        // PDBs and HPAs by the workload they select, to judge disruptions.
        let mut min_replicas: BTreeMap<String, u64> = BTreeMap::new();
        let mut pdbs: BTreeMap<String, (u64, String)> = BTreeMap::new();
        for document in documents {
            let kind = str_at(document, &["kind"]).unwrap_or("");
            let name = str_at(document, &["metadata", "name"]).unwrap_or("").to_owned();
            let object = format!("{path}: {kind} {name}");
            match kind {
                "Secret" if (!at(document, &["data"]).is_null() || !at(document, &["stringData"]).is_null()) => {
                    self.at_template(
                        &format!("templates/{path}.tera"),
                        object,
                        "a Secret with values in a rendered file: supply secrets through the ExternalSecret",
                    );
                }
                "HorizontalPodAutoscaler" => {
                    if let Some(min) = at(document, &["spec", "minReplicas"]).as_u64() {
                        let target = str_at(document, &["spec", "scaleTargetRef", "name"]).unwrap_or("");
                        min_replicas.insert(target.to_owned(), min);
                    }
                }
                "PodDisruptionBudget" => {
                    let min = at(document, &["spec", "minAvailable"]).as_u64().unwrap_or(0);
                    pdbs.insert(name.clone(), (min, object));
                }
                "Deployment" => {
                    if let Some(replicas) = at(document, &["spec", "replicas"]).as_u64() {
                        min_replicas.insert(name.clone(), replicas);
                    }
                    self.deployment(&name, object, document);
                }
                _ => {}
            }
        }
        for (name, replicas) in &min_replicas {
            let key = self.workload_key(name);
            match pdbs.get(name) {
                None => {
                    self.at_template(WORKLOAD_TEMPLATE, format!("{path}: Deployment {name}"), "no PodDisruptionBudget")
                }
                Some((min_available, object)) if min_available >= replicas => {
                    let mut key = key;
                    key.push("min_available".to_owned());
                    self.at_key(
                        key,
                        object.clone(),
                        format!(
                            "minAvailable {min_available} with at least {replicas} replicas allows no disruption: a node \
                             drain would block; make it lower than replicas.min"
                        ),
                    );
                }
                Some(_) => {}
            }
        }
    }

    fn deployment(&mut self, name: &str, object: String, deployment: &Value) {
        let key = self.workload_key(name);
        let with = |rest: &[&str]| {
            let mut path = key.clone();
            path.extend(rest.iter().map(|&part| part.to_owned()));
            path
        };
        let pod = at(deployment, &["spec", "template", "spec"]);
        if at(pod, &["securityContext", "runAsNonRoot"]).as_bool() != Some(true) {
            self.at_template(WORKLOAD_TEMPLATE, object.clone(), "the pod is not runAsNonRoot");
        }
        if str_at(pod, &["securityContext", "seccompProfile", "type"]) != Some("RuntimeDefault") {
            self.at_template(WORKLOAD_TEMPLATE, object.clone(), "the pod's seccomp profile is not RuntimeDefault");
        }
        if at(pod, &["topologySpreadConstraints"]).as_sequence().is_none_or(|list| list.is_empty()) {
            self.at_template(WORKLOAD_TEMPLATE, object.clone(), "no topologySpreadConstraints");
        }
        let containers = at(pod, &["containers"]).as_sequence().cloned().unwrap_or_default();
        let init = at(pod, &["initContainers"]).as_sequence().cloned().unwrap_or_default();
        for (is_init, container) in containers.iter().map(|c| (false, c)).chain(init.iter().map(|c| (true, c))) {
            let container_name = str_at(container, &["name"]).unwrap_or("?");
            let object = format!("{object} container {container_name}");
            for field in [["requests", "cpu"], ["requests", "memory"], ["limits", "cpu"], ["limits", "memory"]] {
                if at(container, &["resources", field[0], field[1]]).is_null() {
                    self.at_key(
                        with(&["resources", field[0], field[1]]),
                        object.clone(),
                        format!("no {} {}", field[1], field[0]),
                    );
                }
            }
            let security = at(container, &["securityContext"]);
            if at(security, &["allowPrivilegeEscalation"]).as_bool() != Some(false) {
                self.at_template(WORKLOAD_TEMPLATE, object.clone(), "allowPrivilegeEscalation is not false");
            }
            if at(security, &["readOnlyRootFilesystem"]).as_bool() != Some(true) {
                self.at_template(WORKLOAD_TEMPLATE, object.clone(), "readOnlyRootFilesystem is not true");
            }
            let drops_all = at(security, &["capabilities", "drop"])
                .as_sequence()
                .is_some_and(|drop| drop.iter().any(|cap| cap.as_str() == Some("ALL")));
            if !drops_all {
                self.at_template(WORKLOAD_TEMPLATE, object.clone(), "capabilities are not all dropped");
            }
            let image = str_at(container, &["image"]).unwrap_or("");
            self.image_of_ours(image, &object);
            match tag_of(image) {
                None | Some("latest") => self.at_key(
                    vec!["platform".to_owned(), "tag".to_owned()],
                    object.clone(),
                    format!("image `{image}` is not pinned: `latest` (or no tag) changes under a running Deployment"),
                ),
                Some(_) => {}
            }
            if str_at(container, &["imagePullPolicy"]) == Some("Always") {
                self.at_template(WORKLOAD_TEMPLATE, object.clone(), "imagePullPolicy Always with a pinned tag");
            }
            for var in at(container, &["env"]).as_sequence().cloned().unwrap_or_default() {
                let var_name = str_at(&var, &["name"]).unwrap_or("");
                if let Some(value) = str_at(&var, &["value"]) {
                    let plaintext = (looks_secret(var_name) && !value.is_empty()) || url_with_literal_password(value);
                    if plaintext {
                        self.at_key(
                            with(&["env", var_name]),
                            object.clone(),
                            format!("{var_name} holds a plaintext secret"),
                        );
                    }
                }
            }
            if is_init {
                continue;
            }
            let liveness = at(container, &["livenessProbe"]);
            let readiness = at(container, &["readinessProbe"]);
            if liveness.is_null() {
                self.at_key(with(&["probes", "liveness"]), object.clone(), "no liveness probe");
            }
            if readiness.is_null() {
                self.at_key(with(&["probes", "readiness"]), object.clone(), "no readiness probe");
            }
            // The same endpoint asks the same question, whatever the timings.
            let endpoint =
                |probe: &Value| (at(probe, &["httpGet", "path"]).clone(), at(probe, &["httpGet", "port"]).clone());
            if !liveness.is_null() && (liveness == readiness || endpoint(liveness) == endpoint(readiness)) {
                self.at_key(
                    with(&["probes", "readiness", "path"]),
                    object.clone(),
                    "liveness and readiness probes are the same: a dependency outage would restart every pod, or \
                     traffic would reach pods that cannot serve",
                );
            }
        }
    }

    fn compose(&mut self, path: &str, document: &Value) {
        const TEMPLATE: &str = "templates/compose/docker-compose.yml.tera";
        let Some(services) = at(document, &["services"]).as_mapping() else { return };
        for (name, service) in services {
            let name = name.as_str().unwrap_or("?");
            let object = format!("{path}: service {name}");
            let image = str_at(service, &["image"]).unwrap_or("");
            self.image_of_ours(image, &object);
            if matches!(tag_of(image), None | Some("latest")) {
                let key = if image.starts_with(&self.environment.model.platform.image) {
                    vec!["platform".to_owned(), "tag".to_owned()]
                } else {
                    vec![name.to_owned(), "image".to_owned()]
                };
                self.at_key(key, object.clone(), format!("image `{image}` is not pinned to a tag"));
            }
            if let Some(environment) = at(service, &["environment"]).as_mapping() {
                for (var, value) in environment {
                    let var = var.as_str().unwrap_or("");
                    let value = value.as_str().unwrap_or("");
                    let literal = !value.is_empty() && !value.starts_with("${");
                    if (looks_secret(var) && literal) || url_with_literal_password(value) {
                        let key = if name.ends_with("-service") || name.starts_with("worker-") {
                            let mut key = self.workload_key(name);
                            key.extend(["env".to_owned(), var.to_owned()]);
                            key
                        } else {
                            vec![name.to_owned()]
                        };
                        self.at_key(key, object.clone(), format!("{var} holds a plaintext secret"));
                    }
                }
            }
            let is_ours = image.starts_with(&self.environment.model.platform.image);
            if is_ours {
                if at(service, &["read_only"]).as_bool() != Some(true) {
                    self.at_template(TEMPLATE, object.clone(), "the root filesystem is not read_only");
                }
                let drops_all = at(service, &["cap_drop"])
                    .as_sequence()
                    .is_some_and(|drop| drop.iter().any(|cap| cap.as_str() == Some("ALL")));
                if !drops_all {
                    self.at_template(TEMPLATE, object.clone(), "capabilities are not all dropped");
                }
                if at(service, &["deploy", "resources", "limits"]).is_null() && name != "migrate" {
                    self.at_template(TEMPLATE, object.clone(), "no resource limits");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_of_a_reference_leaves_its_registry_port_and_digest_aside() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(tag_of("ghcr.io/freedumb/freedumb:0.1.0"), Some("0.1.0"));
        assert_eq!(tag_of(&format!("ghcr.io/freedumb/freedumb:latest@{digest}")), Some("latest"));
        assert_eq!(tag_of(&format!("ghcr.io/freedumb/freedumb@{digest}")), None);
        assert_eq!(tag_of("registry:5000/freedumb"), None);
    }

    #[test]
    fn literal_passwords_in_urls_are_found_and_references_are_not() {
        assert!(url_with_literal_password("postgres://u:hunter2@db:5432/x"));
        assert!(!url_with_literal_password("postgres://u:$(POSTGRES_PASSWORD)@db:5432/x"));
        assert!(!url_with_literal_password("postgres://u:${POSTGRES_PASSWORD:?x}@db:5432/x"));
        assert!(!url_with_literal_password("postgres://postgres@127.0.0.1:5432/x"));
        assert!(!url_with_literal_password("not a url"));
    }
}

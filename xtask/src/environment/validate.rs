//! Rules that span keys, checked after the model is read. Each failure is
//! one [`Error`] at the key to change. The first failure wins: a second one
//! is often a consequence of the first.
//!
//! Policy (what a production workload must look like) is not here but in
//! `crate::policy`, which reads the rendered manifests.

use std::collections::BTreeMap;

use super::targets::Targets;
use super::vars::{self, Which};
use super::{Environment, Error, Kind, Objectives, SecretSource, Workload};

type Result = std::result::Result<(), Error>;

fn key(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|&part| part.to_owned()).collect()
}

/// Variables the platform sets itself; `env` may not set them.
const PLATFORM_VARS: &[&str] = &[
    "DATABASE_URL",
    "DEPLOYMENT",
    "ENVIRONMENT",
    "HOST",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "MONGODB_URL",
    "PORT",
    "RABBITMQ_URL",
    "REDIS_KEY_PREFIX",
    "REDIS_URL",
    "REQUEST_TIMEOUT_SECS",
    "SERVICE_NAME",
    "SHUTDOWN_TIMEOUT_SECS",
    "TRUSTED_PROXIES",
];

pub fn validate(env: &Environment, targets: &Targets) -> Result {
    environment_defaults(env)?;
    kind_sections(env)?;
    names_and_targets(env, targets)?;
    ports(env)?;
    routes(env)?;
    workloads(env)?;
    secrets(env)?;
    backings(env)?;
    gateway(env)?;
    loadtest(env)?;
    images(env)?;
    platform_image(env)?;
    Ok(())
}

/// The platform's image as rendered, `image:tag[@digest]`, is a reference an
/// engine accepts. The digest has a key of its own (where the release step
/// writes it, docs/releases.md), and belongs only where images come from a
/// registry: a local deployment runs what it has just built.
fn platform_image(env: &Environment) -> Result {
    let platform = &env.model.platform;
    let (at, reference) = match &platform.tag {
        Some(tag) if tag.contains('@') => {
            return Err(env.error_at(
                &key(&["platform", "tag"]),
                "a tag holds no digest: write the digest as platform.digest = \"sha256:...\"",
            ));
        }
        Some(tag) => (key(&["platform", "tag"]), format!("{}:{tag}", platform.image)),
        None => (key(&["platform", "image"]), platform.image.clone()),
    };
    image_reference(&reference)
        .map_err(|why| env.error_at(&at, format!("`{reference}` is not an image reference: {why}")))?;
    let set = [
        ("digest", platform.digest.is_some()),
        ("gateway_digest", platform.gateway_digest.is_some()),
        ("require_digest", platform.require_digest),
    ];
    match env.model.kind {
        Kind::Local => {
            if let Some((field, _)) = set.iter().find(|(_, set)| *set) {
                return Err(env.error_at(
                    &key(&["platform", field]),
                    "a local environment runs the images `cargo xtask deploy` builds on this machine, named by \
                     tag; a digest names an image pushed to a registry",
                ));
            }
        }
        Kind::Kubernetes => {
            if platform.gateway_digest.is_some() {
                return Err(env.error_at(
                    &key(&["platform", "gateway_digest"]),
                    "a kubernetes environment's gateway is the cluster's ingress controller: there is no gateway \
                     image of ours to pin",
                ));
            }
        }
        Kind::Compose => {
            if platform.digest.is_some() != platform.gateway_digest.is_some() {
                let (written, missing) =
                    if platform.digest.is_some() { ("digest", "gateway_digest") } else { ("gateway_digest", "digest") };
                return Err(env.error_at(
                    &key(&["platform", written]),
                    format!(
                        "a compose environment runs two images of ours, the services' and the gateway's \
                         (`{}-gateway`): pin both by digest or neither; platform.{missing} is missing",
                        platform.image
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Every image the environment names (the build's base images, each
/// backing service's container) is a reference an engine accepts, so that
/// a typo fails here, at its key, rather than as a registry's error.
fn images(env: &Environment) -> Result {
    let build = &env.model.platform.build;
    let mut named = vec![
        (key(&["platform", "build", "rust_image"]), build.rust_image.as_str()),
        (key(&["platform", "build", "runtime_image"]), build.runtime_image.as_str()),
    ];
    for which in [Which::Postgres, Which::Redis, Which::Rabbitmq, Which::Mongodb] {
        if let Some(image) = which.model(env).image.as_deref() {
            named.push((key(&[which.key(), "image"]), image));
        }
    }
    for (at, image) in named {
        image_reference(image)
            .map_err(|why| env.error_at(&at, format!("`{image}` is not an image reference: {why}")))?;
    }
    Ok(())
}

/// Checks `image` against the engine's reference grammar (simplified):
/// `[registry[:port]/]path[:tag][@algorithm:hex]`, the path lowercase
/// letters and digits with `.`, `_` or `-` between them.
pub fn image_reference(image: &str) -> std::result::Result<(), String> {
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        let (algorithm, hex) =
            digest.split_once(':').ok_or("a digest is `algorithm:hex`, as sha256:<64 hex digits>")?;
        let valid = !algorithm.is_empty()
            && algorithm.chars().all(|c| c.is_ascii_alphanumeric() || "+._-".contains(c))
            && hex.len() >= 32
            && hex.chars().all(|c| c.is_ascii_hexdigit());
        if !valid {
            return Err("a digest is `algorithm:hex`, as sha256:<64 hex digits>".to_owned());
        }
    }
    // A `:` after the last `/` starts the tag; one before it is a port.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].find(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let valid = (1..=128).contains(&tag.len())
            && !tag.starts_with(['.', '-'])
            && tag.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !valid {
            return Err("a tag is up to 128 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`".to_owned());
        }
    }
    let mut components: Vec<&str> = name.split('/').collect();
    // Docker's rule: a first component with a `.` or `:`, or `localhost`,
    // is a registry.
    if components.len() > 1 && (components[0].contains(['.', ':']) || components[0] == "localhost") {
        let registry = components.remove(0);
        let (host, port) = registry.split_once(':').map_or((registry, None), |(h, p)| (h, Some(p)));
        let host_ok = !host.is_empty()
            && host
                .split('.')
                .all(|label| !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !host_ok || port.is_some_and(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit())) {
            return Err(format!("`{registry}` is no registry (a host name, optionally `:port`)"));
        }
    }
    for component in components {
        let valid = !component.is_empty()
            && component.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            && component.starts_with(|c: char| c.is_ascii_alphanumeric())
            && component.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid {
            return Err(format!(
                "`{component}`: a repository's path is lowercase letters and digits, with `.`, `_` or `-` between them"
            ));
        }
    }
    Ok(())
}

/// What a workload is, rather than how an environment runs it: its port,
/// its routes, the secrets and backing services it needs, its request
/// timeout. base.toml says these per service and worker.
const WHAT_A_WORKLOAD_IS: &[&str] = &["port", "routes", "secrets", "uses", "request_timeout_secs"];

/// An environment's `[defaults]` outranks what base.toml says of each
/// service and worker (layers.rs), which is what sizing wants (staging's
/// replicas reach the transaction service). For what a workload is, it would
/// silently replace the workload's own value (`secrets` there would take the
/// refresh-token key from auth), so an environment file may not set those
/// in its `[defaults]`; base.toml's own `[defaults]` may, as the starting
/// point each workload overrides.
fn environment_defaults(env: &Environment) -> Result {
    for name in WHAT_A_WORKLOAD_IS {
        let at = key(&["defaults", name]);
        if env.layered.origins.get(&at).is_some_and(|origin| origin.layer > 0) {
            let hint = if *name == "request_timeout_secs" {
                "; platform.request_timeout_secs is the environment-wide one, for workloads that name none"
            } else {
                ""
            };
            return Err(env.error_at(
                &at,
                format!(
                    "`{name}` says what a workload is, and an environment's [defaults] would replace what \
                     base.toml says of every service and worker: set it in the [services.NAME] or \
                     [workers.NAME] it is about{hint}"
                ),
            ));
        }
    }
    Ok(())
}

fn kind_sections(env: &Environment) -> Result {
    let model = &env.model;
    let source = model.secrets.source;
    let wrong_source = |expected: &str| {
        env.error_at(
            &key(&["secrets", "source"]),
            format!("a {} environment takes its secrets from {expected}", model.kind),
        )
    };
    match model.kind {
        Kind::Local => {
            for (field, value) in [("host", model.platform.host.is_some()), ("port", model.platform.port.is_some())] {
                if !value {
                    return Err(env.error_at(
                        &key(&["platform", field]),
                        format!("missing: a local environment runs `freedumb serve` with this {field}"),
                    ));
                }
            }
            if source != SecretSource::Generated {
                return Err(wrong_source("\"generated\" (.local/secrets.env)"));
            }
        }
        Kind::Compose => {
            if model.compose.is_none() {
                return Err(env.error_at(&key(&["compose"]), "missing: a compose environment needs a [compose] table"));
            }
            if source != SecretSource::Environment {
                return Err(wrong_source("\"environment\" (compose reads them from the shell or .env)"));
            }
        }
        Kind::Kubernetes => {
            if model.kubernetes.is_none() {
                return Err(
                    env.error_at(&key(&["kubernetes"]), "missing: a kubernetes environment needs a [kubernetes] table")
                );
            }
            if model.kubernetes.as_ref().is_some_and(|k| k.context.trim().is_empty()) {
                return Err(env.error_at(
                    &key(&["kubernetes", "context"]),
                    "empty: name the kubeconfig context of the environment's cluster",
                ));
            }
            if source != SecretSource::ExternalSecrets {
                return Err(wrong_source("\"external-secrets\" (never a plain Secret in a shared cluster)"));
            }
            for (field, value) in [
                ("store", &model.secrets.store),
                ("remote_prefix", &model.secrets.remote_prefix),
                ("refresh_interval", &model.secrets.refresh_interval),
            ] {
                if value.is_none() {
                    return Err(env.error_at(&key(&["secrets", field]), "missing: external-secrets needs it"));
                }
            }
        }
    }
    if model.kind != Kind::Local {
        if model.platform.tag.is_none() {
            return Err(env.error_at(&key(&["platform", "tag"]), "missing: the image tag this environment runs"));
        }
        for field in ["host", "port"] {
            let written = env.layered.is_written(&key(&["platform", field]));
            if written {
                return Err(env.error_at(
                    &key(&["platform", field]),
                    format!("only a local environment sets platform.{field}; each service has its own port"),
                ));
            }
        }
        if model.secrets.source == SecretSource::Generated {
            return Err(wrong_source("a shared store"));
        }
    }
    if model.kind != Kind::Kubernetes && model.kubernetes.is_some() {
        return Err(
            env.error_at(&key(&["kubernetes"]), format!("a {} environment has no [kubernetes] table", model.kind))
        );
    }
    if model.kind != Kind::Compose && model.compose.is_some() {
        return Err(env.error_at(&key(&["compose"]), format!("a {} environment has no [compose] table", model.kind)));
    }
    Ok(())
}

/// A lower-case DNS label, as Kubernetes and compose names need.
fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn names_and_targets(env: &Environment, targets: &Targets) -> Result {
    for (collection, known, verb) in [("services", &targets.services, "serve"), ("workers", &targets.workers, "worker")]
    {
        let workloads = if collection == "services" { &env.model.services } else { &env.model.workers };
        for (name, workload) in workloads {
            if !is_dns_label(name) {
                return Err(env.error_at(
                    &key(&[collection, name]),
                    "a name must be lower-case letters, digits and `-`, start with a letter, at most 40 characters",
                ));
            }
            if workload.enabled && !known.iter().any(|known| known == name) {
                return Err(env.error_at(
                    &key(&[collection, name, "enabled"]),
                    format!(
                        "`freedumb {verb} {name}` does not exist yet, so its pods would crash-loop; the binary has: {}",
                        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn all_workloads(env: &Environment) -> impl Iterator<Item = (&'static str, &str, &Workload)> {
    let services = env.model.services.iter().map(|(name, w)| ("services", name.as_str(), w));
    let workers = env.model.workers.iter().map(|(name, w)| ("workers", name.as_str(), w));
    services.chain(workers)
}

fn ports(env: &Environment) -> Result {
    let mut taken: BTreeMap<u16, String> = BTreeMap::new();
    let gateway = &env.model.gateway;
    taken.insert(gateway.http_port, "gateway.http_port".to_owned());
    if gateway.tls
        && let Some(other) = taken.insert(gateway.https_port, "gateway.https_port".to_owned())
    {
        return Err(
            env.error_at(&key(&["gateway", "https_port"]), format!("port {} is also {other}", gateway.https_port))
        );
    }
    if env.model.kind == Kind::Local
        && let Some(port) = env.model.platform.port
        && let Some(other) = taken.insert(port, "platform.port".to_owned())
    {
        return Err(env.error_at(&key(&["platform", "port"]), format!("port {port} is also {other}")));
    }
    for (collection, name, workload) in all_workloads(env) {
        let this = format!("{collection}.{name}.port");
        if let Some(other) = taken.insert(workload.port, this) {
            return Err(env.error_at(
                &key(&[collection, name, "port"]),
                format!("duplicate port {}: it is also {other}", workload.port),
            ));
        }
    }
    Ok(())
}

fn routes(env: &Environment) -> Result {
    let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, workload) in &env.model.services {
        for (prefix, route) in &workload.routes {
            let here = key(&["services", name, "routes", prefix]);
            let valid = prefix.starts_with('/')
                && prefix.len() > 1
                && !prefix.ends_with('/')
                && prefix.chars().all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c));
            if !valid {
                return Err(env.error_at(
                    &here,
                    format!("route `{prefix}` must be a path such as /v1/things: a leading `/`, no trailing `/`"),
                ));
            }
            if let Some(other) = owner.insert(prefix, name) {
                return Err(env.error_at(&here, format!("duplicate route `{prefix}`: services.{other} has it too")));
            }
            match (&route.zone, route.burst) {
                (Some(zone), Some(_)) => {
                    if !env.model.gateway.zones.contains_key(zone) {
                        let hint = super::suggest(zone, env.model.gateway.zones.keys().map(String::as_str))
                            .map(|s| format!("; did you mean `{s}`?"))
                            .unwrap_or_default();
                        let mut at = here.clone();
                        at.push("zone".to_owned());
                        return Err(env.error_at(&at, format!("no rate-limit zone `{zone}` in [gateway.zones]{hint}")));
                    }
                }
                (Some(_), None) => {
                    return Err(
                        env.error_at(&here, "a route with a `zone` needs a `burst` (requests allowed above the rate)")
                    );
                }
                (None, Some(_)) => return Err(env.error_at(&here, "`burst` without a `zone`")),
                (None, None) => {}
            }
            let read = route.read_timeout_secs.unwrap_or(env.model.gateway.read_timeout_secs);
            let request = workload.request_timeout_secs.unwrap_or(env.model.platform.request_timeout_secs);
            if read > request {
                let mut at = here.clone();
                at.push("read_timeout_secs".to_owned());
                return Err(env.error_at(
                    &at,
                    format!(
                        "the gateway waits {read} s for this route, but services.{name} stops a request after \
                         {request} s (its request_timeout_secs), so the longer wait never happens: raise \
                         services.{name}.request_timeout_secs to at least {read}"
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn workloads(env: &Environment) -> Result {
    for (collection, name, workload) in all_workloads(env) {
        let at = |rest: &[&str]| {
            let mut path = key(&[collection, name]);
            path.extend(rest.iter().map(|&part| part.to_owned()));
            path
        };
        if collection == "workers" && !workload.routes.is_empty() {
            return Err(env.error_at(&at(&["routes"]), "a worker has no routes"));
        }
        let replicas = &workload.replicas;
        if replicas.min == 0 {
            return Err(env.error_at(&at(&["replicas", "min"]), "must be at least 1; disable the workload instead"));
        }
        if replicas.min > replicas.max {
            return Err(env.error_at(
                &at(&["replicas", "min"]),
                format!("min replicas ({}) is above max replicas ({})", replicas.min, replicas.max),
            ));
        }
        let resources = &workload.resources;
        if resources.requests.cpu > resources.limits.cpu {
            return Err(env.error_at(&at(&["resources", "requests", "cpu"]), "the CPU request is above its limit"));
        }
        if resources.requests.memory > resources.limits.memory {
            return Err(
                env.error_at(&at(&["resources", "requests", "memory"]), "the memory request is above its limit")
            );
        }
        for (probe, spec) in [
            ("liveness", &workload.probes.liveness),
            ("readiness", &workload.probes.readiness),
            ("startup", &workload.probes.startup),
        ] {
            if !spec.path.starts_with('/') {
                return Err(env.error_at(&at(&["probes", probe, "path"]), "a probe path starts with `/`"));
            }
            if spec.timeout_secs == 0 || spec.period_secs == 0 || spec.failure_threshold == 0 {
                return Err(
                    env.error_at(&at(&["probes", probe]), "periods, timeouts and thresholds must be at least 1")
                );
            }
        }
        for name_ in workload.env.keys() {
            if !is_env_name(name_) {
                return Err(env.error_at(&at(&["env", name_]), "a variable name is upper-case letters, digits and `_`"));
            }
            if PLATFORM_VARS.contains(&name_.as_str()) || workload.secrets.contains(name_) {
                return Err(env.error_at(&at(&["env", name_]), format!("{name_} is set by the platform or a secret")));
            }
        }
        for percent in ["cpu_percent", "memory_percent"] {
            let value = if percent == "cpu_percent" {
                workload.autoscaling.cpu_percent
            } else {
                workload.autoscaling.memory_percent
            };
            if value == 0 {
                return Err(env.error_at(&at(&["autoscaling", percent]), "must be at least 1"));
            }
        }
    }
    Ok(())
}

fn secrets(env: &Environment) -> Result {
    let supplied = &env.model.secrets.supplied;
    for (index, name) in supplied.iter().enumerate() {
        let at = key(&["secrets", "supplied", &index.to_string()]);
        if !is_env_name(name) {
            return Err(env.error_at(&at, format!("`{name}` is not a variable name (upper-case letters, digits, `_`)")));
        }
        if supplied[..index].contains(name) {
            return Err(env.error_at(&at, format!("`{name}` is listed twice")));
        }
    }
    let missing = |name: &str| !supplied.iter().any(|s| s == name);
    let env_file = env.layered.layers.last().map(|layer| layer.path.display().to_string()).unwrap_or_default();
    let never_supplied = |name: &str| {
        format!("secret `{name}` is referenced but never supplied: add it to `secrets.supplied` in {env_file}")
    };
    for (collection, name, workload) in all_workloads(env) {
        if !workload.enabled {
            continue;
        }
        for (index, secret) in workload.secrets.iter().enumerate() {
            if !is_env_name(secret) {
                return Err(env.error_at(
                    &key(&[collection, name, "secrets", &index.to_string()]),
                    format!("`{secret}` is not a variable name"),
                ));
            }
            if missing(secret) {
                return Err(
                    env.error_at(&key(&[collection, name, "secrets", &index.to_string()]), never_supplied(secret))
                );
            }
        }
        for which in vars::backings_of(workload) {
            let model = which.model(env);
            if model.url.is_none()
                && let Some(secret) = &model.password_secret
                && missing(secret)
            {
                return Err(env.error_at(&key(&[which.key(), "password_secret"]), never_supplied(secret)));
            }
        }
    }
    Ok(())
}

fn backings(env: &Environment) -> Result {
    let used: Vec<Which> = {
        let mut used = vec![Which::Postgres, Which::Redis];
        if env.uses(super::Uses::Rabbitmq) || env.model.kind == Kind::Local {
            used.push(Which::Rabbitmq);
        }
        if env.uses(super::Uses::Mongodb) {
            used.push(Which::Mongodb);
        }
        used
    };
    for which in [Which::Postgres, Which::Redis, Which::Rabbitmq, Which::Mongodb] {
        let model = which.model(env);
        let at = |field: &str| key(&[which.key(), field]);
        if let Some(url) = &model.url {
            if env.model.kind != Kind::Local {
                return Err(env.error_at(
                    &at("url"),
                    "a URL is rendered verbatim and may hold a password: outside `local`, give host, port, user \
                     and password_secret instead",
                ));
            }
            which.kind().address(url).map_err(|message| env.error_at(&at("url"), message))?;
            container(env, which)?;
            continue;
        }
        container(env, which)?;
        if !used.contains(&which) {
            continue;
        }
        match model.host.as_deref() {
            None => {
                return Err(env
                    .error_at(&at("host"), format!("missing: a deployed workload connects to {}", which.kind().name)));
            }
            Some(host) if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || ".-".contains(c)) => {
                return Err(env.error_at(&at("host"), "a host name is letters, digits, `.` and `-`"));
            }
            Some(_) => {}
        }
        if env.model.kind == Kind::Compose && model.image.is_none() {
            return Err(env.error_at(&at("image"), "missing: compose runs it as a container of this image"));
        }
        if env.model.kind == Kind::Kubernetes && model.cidr.is_none() {
            return Err(env.error_at(&at("cidr"), "missing: the network the egress NetworkPolicy allows"));
        }
    }
    Ok(())
}

/// A backing service with an `image` is a container the deploy runs (and
/// compose renders); without one it is external. Settings that only a
/// container takes, or that contradict it, are refused where they are.
fn container(env: &Environment, which: Which) -> Result {
    let model = which.model(env);
    let at = |field: &str| key(&[which.key(), field]);
    let name = which.kind().name;
    if model.max_memory_mb.is_some() && (which != Which::Redis || model.image.is_none()) {
        return Err(env.error_at(
            &at("max_memory_mb"),
            format!(
                "only a Redis container takes max_memory_mb (redis-server --maxmemory); {name} here is {}",
                if model.image.is_none() { "external: set its memory where it runs" } else { "not Redis" }
            ),
        ));
    }
    if model.image.is_none() {
        return Ok(());
    }
    if model.url.is_some() {
        return Err(env.error_at(
            &at("image"),
            format!(
                "{name} is either external, named by `url`, or a container of `image` that the deploy runs, not \
                 both: remove one of them"
            ),
        ));
    }
    match env.model.kind {
        Kind::Kubernetes => Err(env.error_at(
            &at("image"),
            format!(
                "a kubernetes environment's {name} is external (a managed service, reached through `cidr`): \
                 remove `image`"
            ),
        )),
        // On the host's network the container listens on `host` itself.
        Kind::Local => match model.host.as_deref().map(str::parse::<std::net::IpAddr>) {
            Some(Ok(address)) if address.is_loopback() => Ok(()),
            Some(_) => Err(env.error_at(
                &at("host"),
                format!(
                    "a {name} container of a local environment runs on this machine's network and listens on \
                     `host`: a loopback address such as 127.0.0.1"
                ),
            )),
            None => Err(env.error_at(
                &at("host"),
                format!("missing: the loopback address the {name} container listens on, such as 127.0.0.1"),
            )),
        },
        Kind::Compose => Ok(()),
    }
}

fn gateway(env: &Environment) -> Result {
    let gateway = &env.model.gateway;
    let valid_domain = !gateway.domain.is_empty()
        && gateway.domain.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-".contains(c));
    if !valid_domain {
        return Err(env.error_at(&key(&["gateway", "domain"]), "a domain is lower-case letters, digits, `.` and `-`"));
    }
    for (name, zone) in &gateway.zones {
        if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') || name.is_empty() {
            return Err(
                env.error_at(&key(&["gateway", "zones", name]), "a zone name is lower-case letters, digits and `_`")
            );
        }
        if zone.requests_per_minute == 0 {
            return Err(env.error_at(&key(&["gateway", "zones", name, "requests_per_minute"]), "must be at least 1"));
        }
    }
    for (name, value) in &gateway.headers {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(env.error_at(&key(&["gateway", "headers", name]), "a header name is letters, digits and `-`"));
        }
        if value.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
            return Err(env.error_at(
                &key(&["gateway", "headers", name]),
                "a header value may not hold `\"`, `\\` or control characters",
            ));
        }
    }
    if env.model.kind == Kind::Kubernetes
        && env.model.gateway.tls
        && env.model.kubernetes.as_ref().is_some_and(|k| k.cluster_issuer.is_empty())
    {
        return Err(env.error_at(&key(&["kubernetes", "cluster_issuer"]), "TLS needs a cert-manager issuer"));
    }
    Ok(())
}

/// The load test's objectives: numbers that can be met, request groups
/// named as goose names them, and p95 bounds that can matter.
fn loadtest(env: &Environment) -> Result {
    let tables = [("objectives", &env.model.loadtest.objectives), ("smoke", &env.model.loadtest.smoke)];
    for (table, objectives) in tables {
        let Objectives { error_rate_percent, min_requests_per_second, latency } = objectives;
        let at = |rest: &[&str]| {
            let mut path = key(&["loadtest", table]);
            path.extend(rest.iter().map(|&part| part.to_owned()));
            path
        };
        if let Some(rate) = *error_rate_percent
            && !(0.0..=100.0).contains(&rate)
        {
            return Err(env.error_at(&at(&["error_rate_percent"]), format!("{rate} is not a percentage (0 to 100)")));
        }
        if let Some(rps) = *min_requests_per_second
            && !(rps.is_finite() && rps > 0.0)
        {
            return Err(env.error_at(
                &at(&["min_requests_per_second"]),
                format!("{rps} requests per second can never be the minimum; give a positive rate or leave it out"),
            ));
        }
        for (group, bounds) in latency {
            if !is_request_group(group) {
                return Err(env.error_at(
                    &at(&["latency", group]),
                    format!(
                        "`{group}` is not a request group: write `all` or `METHOD /path` as the load test's \
                         reports name it, such as `GET /v1/transactions?limit=50`"
                    ),
                ));
            }
            match (bounds.p95, bounds.p99) {
                (None, None) => {
                    return Err(env.error_at(&at(&["latency", group]), "no bound: give p95, p99 or both"));
                }
                (Some(p95), Some(p99)) if p95 > p99 => {
                    return Err(env.error_at(
                        &at(&["latency", group, "p95"]),
                        format!(
                            "the p95 bound ({p95}) is above the p99 bound ({p99}); a 95th percentile is never \
                             above the 99th, so it could never be the one to fail"
                        ),
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// `all`, or an upper-case method, one space and a path: `GET /v1/budgets`.
fn is_request_group(name: &str) -> bool {
    if name == "all" {
        return true;
    }
    let Some((method, path)) = name.split_once(' ') else { return false };
    !method.is_empty()
        && method.chars().all(|c| c.is_ascii_uppercase())
        && path.starts_with('/')
        && !path.chars().any(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::image_reference;

    #[test]
    fn image_references_are_checked_as_an_engine_reads_them() {
        let sha = format!("sha256:{}", "a".repeat(64));
        for good in [
            "postgres".to_owned(),
            "postgres:15-alpine".to_owned(),
            "library/postgres:15".to_owned(),
            "registry:5000/x".to_owned(),
            "registry.example.com:5000/team/x_y.z-w:1.2_rc".to_owned(),
            "localhost/x".to_owned(),
            "freedumb-test-absent.invalid/rust:1".to_owned(),
            format!("x@{sha}"),
            format!("registry:5000/x:1@{sha}"),
        ] {
            assert_eq!(image_reference(&good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("", "lowercase"),
            ("Postgres", "lowercase"),
            ("postgres 15", "lowercase"),
            ("postgres:", "a tag is"),
            ("postgres:-1", "a tag is"),
            ("postgres@sha256:abc", "a digest is"),
            ("registry:port/x", "is no registry"),
            ("x//y", "lowercase"),
            ("-x", "lowercase"),
        ] {
            let err = image_reference(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    /// A typo in an environment's image is refused at its key.
    #[test]
    fn a_malformed_image_is_named_at_its_key() {
        let root = crate::project_root();
        let read = |name: &str| std::fs::read_to_string(crate::environment::path(&root, name)).unwrap();
        let layers = vec![
            crate::environment::Layer { path: "environments/base.toml".into(), text: read("base") },
            crate::environment::Layer { path: "environments/dev.toml".into(), text: read("dev") },
            crate::environment::Layer { path: "(edit)".into(), text: "[redis]\nimage = \"Redis:7\"\n".to_owned() },
        ];
        let targets = crate::environment::targets::Targets::of_project(&root).unwrap();
        let err = crate::environment::from_layers("dev", layers, &targets).expect_err("Redis:7 is refused");
        let err = err.to_string();
        assert!(err.contains("redis.image") && err.contains("`Redis:7` is not an image reference"), "{err}");
    }
}

//! What the templates see: the model, with every derived value computed
//! here. Templates only place values; they never compute, so a number in a
//! rendered file can be traced to one function in this file.

use serde::Serialize;

use crate::environment::vars::{self, Flavor, Role, Value, Which};
use crate::environment::{Environment, Kind, Workload};

/// The gateway's upstream host for every workload when rendering for
/// `cargo xtask check`: nginx resolves upstream names at start-up, and the
/// names of a compose network do not resolve on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstreams {
    /// As deployed: compose service names, or the local process.
    Deployed,
    /// Every upstream at 127.0.0.1, same ports.
    Loopback,
}

#[derive(Debug, Serialize)]
pub struct Context {
    pub env: String,
    pub kind: Kind,
    /// The files this was rendered from, for the header of each output.
    pub sources: String,
    /// The image every workload runs: `image:tag`, with `@digest` when the
    /// environment pins one.
    pub image: String,
    /// What a build tags and a release pushes: `image:tag`, never a digest
    /// (the registry computes that).
    pub built_image: String,
    /// The gateway image (compose), likewise with and without its digest.
    pub gateway_image: String,
    pub built_gateway_image: String,
    /// Whether the images are named by digest: then they come from the
    /// registry (compose pulls them when missing) instead of a local build.
    pub pinned: bool,
    pub platform: PlatformView,
    pub migrate: MigrateView,
    pub gateway: GatewayView,
    pub workloads: Vec<WorkloadView>,
    pub backings: Vec<BackingView>,
    pub shared_env: Vec<EnvView>,
    /// A hash of the shared settings: a pod annotation, so that changing
    /// the ConfigMap rolls the Deployments (envFrom is read at start only).
    pub config_checksum: String,
    pub secrets: SecretsView,
    pub kubernetes: Option<KubernetesView>,
    pub compose: Option<ComposeView>,
}

#[derive(Debug, Serialize)]
pub struct PlatformView {
    pub rust_image: String,
    pub runtime_image: String,
    pub uid: u32,
    pub grace_period_secs: u32,
    pub drain_delay_secs: u32,
    /// Compose's stop_grace_period: the drain plus a margin.
    pub stop_grace_secs: u32,
    /// Targets to migrate (the enabled services, in order).
    pub migrate_targets: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct GatewayView {
    pub domain: String,
    pub tls: bool,
    /// `listen` address prefix, such as `127.0.0.1:`, or empty.
    pub listen: String,
    /// `reuseport` on every `listen`: only the gateway of a container
    /// deployment (`render::render_gateway`), whose replacement starts next
    /// to the old container on the same port (see docker/deploy.rs).
    pub reuseport: bool,
    pub http_port: u16,
    pub https_port: u16,
    pub body_limit_mib: u32,
    pub connect_timeout_secs: u32,
    pub default_read_timeout_secs: u32,
    pub hsts: Option<String>,
    pub zones: Vec<ZoneView>,
    pub headers: Vec<HeaderView>,
    /// Headers for `/health` only (with every one of `headers`, which an
    /// `add_header` in a location would otherwise drop): the container
    /// gateway's identity, which only the toolkit's checks need to see.
    pub health_headers: Vec<HeaderView>,
    pub upstreams: Vec<UpstreamView>,
    pub routes: Vec<RouteView>,
    pub websocket: bool,
    pub requests: AmountsView,
    pub limits: AmountsView,
}

#[derive(Debug, Serialize)]
pub struct ZoneView {
    pub name: String,
    pub requests_per_minute: u32,
    pub size_mib: u32,
}

#[derive(Debug, Serialize)]
pub struct HeaderView {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Serialize)]
pub struct UpstreamView {
    pub name: String,
    /// The service this is the upstream of.
    pub service: String,
    /// One address per replica (one name that compose or Kubernetes
    /// resolves to every replica, outside a container deployment).
    pub servers: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RouteView {
    pub prefix: String,
    /// The prefix as a regular expression that matches it and its sub-paths
    /// only (`/v1/auth` and `/v1/auth/...`, not `/v1/authx`), as an
    /// Ingress `Prefix` path does.
    pub regex: String,
    pub service: String,
    pub upstream: String,
    pub port: u16,
    pub zone: Option<String>,
    pub burst: Option<u32>,
    pub read_timeout_secs: u32,
    pub websocket: bool,
    /// Ingress: the object's name and its rate-limit annotations.
    pub ingress_name: String,
    pub limit_rpm: Option<u32>,
    pub limit_burst_multiplier: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct WorkloadView {
    /// `auth`, `recurring`.
    pub target: String,
    /// The compose service and Kubernetes object name: `auth-service`,
    /// `worker-recurring`.
    pub name: String,
    pub role: &'static str,
    pub args: Vec<String>,
    pub port: u16,
    pub replicas_min: u32,
    pub replicas_max: u32,
    pub autoscaled: bool,
    pub cpu_percent: u32,
    pub memory_percent: u32,
    pub min_available: u32,
    pub requests: AmountsView,
    pub limits: AmountsView,
    pub liveness: ProbeView,
    pub readiness: ProbeView,
    pub startup: ProbeView,
    /// Compose: the readiness probe as a healthcheck, and how long start-up
    /// may take.
    pub healthcheck_start_period_secs: u32,
    /// Compose: what `freedumb healthcheck --url` asks, the readiness path.
    pub healthcheck_url: String,
    pub has_routes: bool,
    pub compose_env: Vec<EnvView>,
    pub kubernetes_env: Vec<KubeEnvView>,
    pub backings: Vec<String>,
    /// Compose services this one waits for, with the condition.
    pub depends_on: Vec<DependsView>,
    /// Kubernetes egress: the backing services' networks and ports.
    pub egress: Vec<EgressView>,
}

#[derive(Debug, Serialize)]
pub struct AmountsView {
    pub cpu: String,
    pub memory: String,
    pub cores: String,
    pub compose_memory: String,
}

#[derive(Debug, Serialize)]
pub struct ProbeView {
    pub path: String,
    pub period_secs: u32,
    pub timeout_secs: u32,
    pub failure_threshold: u32,
}

#[derive(Debug, Serialize)]
pub struct EnvView {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Serialize)]
pub struct KubeEnvView {
    pub name: String,
    pub value: Option<String>,
    pub secret: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DependsView {
    pub service: String,
    pub condition: &'static str,
}

#[derive(Debug, Serialize)]
pub struct EgressView {
    pub name: String,
    pub cidr: String,
    /// Ranges inside `cidr` that stay closed.
    pub except: Vec<String>,
    pub port: u16,
}

/// The private ranges (RFC 1918) and link-local addresses: where a cluster,
/// its nodes and cloud metadata endpoints live, closed to a workload that may
/// call the internet.
const PRIVATE_RANGES: [&str; 4] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"];

#[derive(Debug, Serialize)]
pub struct BackingView {
    pub key: String,
    pub host: String,
    pub port: u16,
    pub image: Option<String>,
    pub user: Option<String>,
    pub database: Option<String>,
    /// Compose interpolation of the password secret.
    pub password: Option<String>,
    pub max_memory_mb: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct SecretsView {
    /// The secrets deployed workloads read, in name order.
    pub referenced: Vec<String>,
    pub store: Option<String>,
    pub remote_prefix: Option<String>,
    pub refresh_interval: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct KubernetesView {
    pub version: String,
    pub namespace: String,
    pub ingress_class: String,
    pub cluster_issuer: String,
    pub tls_secret: String,
    pub ingress_namespace: String,
    pub monitoring_namespace: String,
    pub image_pull_policy: &'static str,
    /// The files under k8s/, for the kustomization.
    pub files: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ComposeView {
    pub project: String,
    pub subnet: String,
    pub gateway_address: String,
    /// `never` for images built on this machine (a pull could only fetch
    /// something else under their name); `missing` for images named by
    /// digest, which can only be the released ones.
    pub pull_policy: &'static str,
}

/// `freedumb migrate`: it needs only the database.
#[derive(Debug, Serialize)]
pub struct MigrateView {
    pub compose_env: Vec<EnvView>,
    pub kubernetes_env: Vec<KubeEnvView>,
}

/// The name of a workload's compose service and Kubernetes objects.
pub fn object_name(role: Role, target: &str) -> String {
    match role {
        Role::Service => format!("{target}-service"),
        Role::Worker => format!("worker-{target}"),
    }
}

fn compose_secret(name: &str) -> String {
    format!("${{{name}:?{name} is not set, see .env.example}}")
}

pub fn build(environment: &Environment, upstreams: Upstreams, k8s_files: Vec<String>) -> Context {
    let model = &environment.model;
    let platform = &model.platform;
    let tag = platform.tag.as_deref().unwrap_or("local");
    let built_image = format!("{}:{tag}", platform.image);
    let built_gateway_image = format!("{}-gateway:{tag}", platform.image);
    let pinned = |built: &str, digest: &Option<crate::environment::Digest>| match digest {
        Some(digest) => format!("{built}@{}", digest.as_str()),
        None => built.to_owned(),
    };
    let image = pinned(&built_image, &platform.digest);
    let gateway_image = pinned(&built_gateway_image, &platform.gateway_digest);

    let workloads: Vec<(Role, &str, &Workload)> = environment
        .services()
        .map(|(name, w)| (Role::Service, name, w))
        .chain(environment.workers().map(|(name, w)| (Role::Worker, name, w)))
        .collect();

    let used: Vec<Which> = {
        let mut used = vec![Which::Postgres, Which::Redis];
        if environment.uses(crate::environment::Uses::Rabbitmq) {
            used.push(Which::Rabbitmq);
        }
        if environment.uses(crate::environment::Uses::Mongodb) {
            used.push(Which::Mongodb);
        }
        used
    };

    let workload_views = workloads
        .iter()
        .map(|&(role, target, workload)| workload_view(environment, role, target, workload, &used))
        .collect();

    let mut referenced: Vec<String> =
        workloads.iter().flat_map(|(_, _, workload)| vars::secrets_of(environment, workload)).collect();
    referenced.sort();
    referenced.dedup();

    let backings = used
        .iter()
        .map(|&which| {
            let backing = which.model(environment);
            BackingView {
                key: which.key().to_owned(),
                host: backing.host.clone().unwrap_or_default(),
                port: backing.port.unwrap_or(which.kind().default_port),
                image: backing.image.clone(),
                user: backing.user.clone(),
                database: backing.database.clone(),
                password: backing.password_secret.as_deref().map(compose_secret),
                max_memory_mb: backing.max_memory_mb,
            }
        })
        .collect();

    let gateway = gateway_view(environment, upstreams);
    let grace = platform.shutdown_timeout_secs + platform.drain_delay_secs + 5;
    Context {
        env: environment.name.clone(),
        kind: model.kind,
        sources: environment
            .layered
            .layers
            .iter()
            .map(|layer| layer.path.display().to_string())
            .collect::<Vec<_>>()
            .join(" + "),
        image,
        built_image,
        gateway_image,
        built_gateway_image,
        pinned: platform.digest.is_some(),
        migrate: migrate_view(environment),
        platform: PlatformView {
            rust_image: platform.build.rust_image.clone(),
            runtime_image: platform.build.runtime_image.clone(),
            uid: platform.build.uid,
            grace_period_secs: grace,
            drain_delay_secs: platform.drain_delay_secs,
            stop_grace_secs: platform.shutdown_timeout_secs + 5,
            migrate_targets: environment.services().map(|(name, _)| name.to_owned()).collect(),
        },
        gateway,
        workloads: workload_views,
        backings,
        shared_env: vars::shared(environment).into_iter().map(|(name, value)| EnvView { name, value }).collect(),
        config_checksum: checksum(vars::shared(environment).iter().map(|(name, value)| format!("{name}={value}\n"))),
        secrets: SecretsView {
            referenced,
            store: model.secrets.store.clone(),
            remote_prefix: model.secrets.remote_prefix.clone(),
            refresh_interval: model.secrets.refresh_interval.clone(),
        },
        kubernetes: model.kubernetes.as_ref().map(|k| KubernetesView {
            version: k.version.clone(),
            namespace: k.namespace.clone(),
            ingress_class: k.ingress_class.clone(),
            cluster_issuer: k.cluster_issuer.clone(),
            tls_secret: k.tls_secret.clone(),
            ingress_namespace: k.ingress_namespace.clone(),
            monitoring_namespace: k.monitoring_namespace.clone(),
            // The tag is pinned and never reused (and with a digest, the
            // reference names the content itself), so a node's cached copy
            // is the right one; `Always` only adds a registry round trip per
            // start (and an outage when the registry is down).
            image_pull_policy: "IfNotPresent",
            files: k8s_files,
        }),
        compose: model.compose.as_ref().map(|c| ComposeView {
            project: c.project.clone(),
            subnet: c.subnet.clone(),
            gateway_address: c.gateway_address.to_string(),
            pull_policy: if platform.digest.is_some() { "missing" } else { "never" },
        }),
    }
}

fn migrate_view(environment: &Environment) -> MigrateView {
    let postgres = &environment.model.postgres;
    let secret = postgres.password_secret.clone().filter(|_| postgres.url.is_none());
    let url = vars::url(environment, Which::Postgres, Flavor::Compose, &|_| String::new());
    let mut compose_env: Vec<EnvView> =
        vars::shared(environment).into_iter().map(|(name, value)| EnvView { name, value }).collect();
    compose_env.push(EnvView { name: "DATABASE_URL".to_owned(), value: url });
    let mut kubernetes_env = Vec::new();
    if let Some(secret) = secret {
        kubernetes_env.push(KubeEnvView { name: secret.clone(), value: None, secret: Some(secret) });
    }
    kubernetes_env.push(KubeEnvView {
        name: "DATABASE_URL".to_owned(),
        value: Some(vars::url(environment, Which::Postgres, Flavor::Kubernetes, &|_| String::new())),
        secret: None,
    });
    MigrateView { compose_env, kubernetes_env }
}

/// FNV-1a, 64 bits, in hex: stable across runs and machines, which is all
/// a change detector needs.
fn checksum(parts: impl Iterator<Item = String>) -> String {
    let mut hash = crate::digest::Fnv1a::default();
    for part in parts {
        hash.bytes(part.as_bytes());
    }
    hash.hex()
}

fn amounts(a: &crate::environment::Amounts) -> AmountsView {
    AmountsView {
        cpu: a.cpu.kubernetes(),
        memory: a.memory.kubernetes(),
        cores: a.cpu.cores(),
        compose_memory: a.memory.compose(),
    }
}

fn probe(probe: &crate::environment::Probe) -> ProbeView {
    ProbeView {
        path: probe.path.clone(),
        period_secs: probe.period_secs,
        timeout_secs: probe.timeout_secs,
        failure_threshold: probe.failure_threshold,
    }
}

fn workload_view(
    environment: &Environment,
    role: Role,
    target: &str,
    workload: &Workload,
    used: &[Which],
) -> WorkloadView {
    let vars = vars::workload(environment, role, target, workload);
    let compose_env = vars::shared(environment)
        .into_iter()
        .map(|(name, value)| EnvView { name, value })
        // Compose writes a password straight into the URL that needs it;
        // only the workload's own secrets are variables of their own.
        .chain(vars.iter().filter(|var| var.value != Value::Secret || workload.secrets.contains(&var.name)).map(
            |var| EnvView {
                name: var.name.clone(),
                value: match &var.value {
                    Value::Plain(value) => value.clone(),
                    Value::Secret => compose_secret(&var.name),
                    Value::Url(which) => vars::url(environment, *which, Flavor::Compose, &|_| String::new()),
                },
            },
        ))
        .collect();
    let kubernetes_env = vars
        .iter()
        .map(|var| match &var.value {
            Value::Plain(value) => KubeEnvView { name: var.name.clone(), value: Some(value.clone()), secret: None },
            Value::Secret => KubeEnvView { name: var.name.clone(), value: None, secret: Some(var.name.clone()) },
            Value::Url(which) => KubeEnvView {
                name: var.name.clone(),
                value: Some(vars::url(environment, *which, Flavor::Kubernetes, &|_| String::new())),
                secret: None,
            },
        })
        .collect();
    let backings_of = vars::backings_of(workload);
    let mut depends_on: Vec<DependsView> = backings_of
        .iter()
        .filter(|which| used.contains(which) && which.model(environment).image.is_some())
        .map(|which| DependsView { service: which.key().to_owned(), condition: "service_healthy" })
        .collect();
    depends_on.push(DependsView { service: "migrate".to_owned(), condition: "service_completed_successfully" });
    let mut egress: Vec<EgressView> = backings_of
        .iter()
        .filter_map(|which| {
            let backing = which.model(environment);
            Some(EgressView {
                name: which.key().to_owned(),
                cidr: backing.cidr.clone()?,
                except: Vec::new(),
                port: backing.port.unwrap_or(which.kind().default_port),
            })
        })
        .collect();
    if workload.internet {
        egress.push(EgressView {
            name: "internet".to_owned(),
            cidr: "0.0.0.0/0".to_owned(),
            except: PRIVATE_RANGES.iter().map(|range| (*range).to_owned()).collect(),
            port: 443,
        });
    }
    let startup = &workload.probes.startup;
    let verb = match role {
        Role::Service => "serve",
        Role::Worker => "worker",
    };
    WorkloadView {
        target: target.to_owned(),
        name: object_name(role, target),
        role: match role {
            Role::Service => "service",
            Role::Worker => "worker",
        },
        args: vec![verb.to_owned(), target.to_owned()],
        port: workload.port,
        replicas_min: workload.replicas.min,
        replicas_max: workload.replicas.max,
        autoscaled: workload.replicas.max > workload.replicas.min,
        cpu_percent: workload.autoscaling.cpu_percent,
        memory_percent: workload.autoscaling.memory_percent,
        min_available: workload.min_available,
        requests: amounts(&workload.resources.requests),
        limits: amounts(&workload.resources.limits),
        liveness: probe(&workload.probes.liveness),
        readiness: probe(&workload.probes.readiness),
        startup: probe(startup),
        healthcheck_start_period_secs: startup.period_secs * startup.failure_threshold,
        healthcheck_url: format!("http://127.0.0.1:{}{}", workload.port, workload.probes.readiness.path),
        has_routes: !workload.routes.is_empty(),
        compose_env,
        kubernetes_env,
        backings: backings_of.iter().map(|which| which.key().to_owned()).collect(),
        depends_on,
        egress,
    }
}

fn gateway_view(environment: &Environment, upstreams: Upstreams) -> GatewayView {
    let model = &environment.model;
    let gateway = &model.gateway;
    let mut upstream_views = Vec::new();
    let mut routes = Vec::new();
    for (target, workload) in environment.services() {
        if workload.routes.is_empty() {
            continue;
        }
        let name = object_name(Role::Service, target);
        let upstream = format!("{}_service", target.replace('-', "_"));
        let server = match (model.kind, upstreams) {
            // One process serves every service on the platform port.
            (Kind::Local, _) => {
                let host = model.platform.host.map_or_else(|| "127.0.0.1".to_owned(), |h| h.to_string());
                let host = if host == "0.0.0.0" { "127.0.0.1".to_owned() } else { host };
                format!("{host}:{}", model.platform.port.unwrap_or(3000))
            }
            (_, Upstreams::Loopback) => format!("127.0.0.1:{}", workload.port),
            (_, Upstreams::Deployed) => format!("{name}:{}", workload.port),
        };
        upstream_views.push(UpstreamView { name: upstream.clone(), service: target.to_owned(), servers: vec![server] });
        for (prefix, route) in &workload.routes {
            let read_timeout_secs = route.read_timeout_secs.unwrap_or(gateway.read_timeout_secs);
            let rpm = route.zone.as_ref().and_then(|zone| gateway.zones.get(zone)).map(|z| z.requests_per_minute);
            // ingress-nginx allows `limit-rpm × limit-burst-multiplier`
            // above the rate; the multiplier is a whole number, so the burst
            // is rounded up to the next multiple of the rate.
            let multiplier = match (rpm, route.burst) {
                (Some(rpm), Some(burst)) => Some(burst.div_ceil(rpm).max(1)),
                _ => None,
            };
            let slug = prefix.trim_matches('/').replace(['/', '.', '_'], "-");
            routes.push(RouteView {
                prefix: prefix.clone(),
                regex: format!("^{}(?:/|$)", prefix.replace('.', "\\.")),
                service: name.clone(),
                upstream: upstream.clone(),
                port: workload.port,
                zone: route.zone.clone(),
                burst: route.burst,
                read_timeout_secs,
                websocket: route.websocket,
                ingress_name: format!("{name}-{slug}"),
                limit_rpm: rpm,
                limit_burst_multiplier: multiplier,
            });
        }
    }
    routes.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    GatewayView {
        domain: gateway.domain.clone(),
        tls: gateway.tls,
        listen: match gateway.listen_address {
            Some(std::net::IpAddr::V6(address)) => format!("[{address}]:"),
            Some(address) => format!("{address}:"),
            None => String::new(),
        },
        http_port: gateway.http_port,
        https_port: gateway.https_port,
        body_limit_mib: gateway.body_limit_mib,
        connect_timeout_secs: gateway.connect_timeout_secs,
        default_read_timeout_secs: gateway.read_timeout_secs,
        hsts: gateway.tls.then(|| format!("max-age={}; includeSubDomains", gateway.hsts_max_age_secs)),
        zones: gateway
            .zones
            .iter()
            .map(|(name, zone)| ZoneView {
                name: name.clone(),
                requests_per_minute: zone.requests_per_minute,
                size_mib: zone.size_mib,
            })
            .collect(),
        headers: gateway
            .headers
            .iter()
            .map(|(name, value)| HeaderView { name: name.clone(), value: value.clone() })
            .collect(),
        health_headers: Vec::new(),
        websocket: routes.iter().any(|route| route.websocket),
        reuseport: false,
        requests: amounts(&gateway.resources.requests),
        limits: amounts(&gateway.resources.limits),
        upstreams: upstream_views,
        routes,
    }
}

//! The environment variables each workload gets, computed once from the
//! model and then written in the notation of each output: literal values
//! for a local process, `${NAME:?...}` interpolation in compose, and
//! `secretKeyRef` plus `$(NAME)` references in Kubernetes.
//!
//! Order matters in Kubernetes: `$(NAME)` expands only variables defined
//! earlier in the same list, so secrets come first and the URLs built from
//! them last. (The seed's Deployment got this wrong; see
//! docs/seed-parity.md.)

use crate::backing::{self, Backing as BackingKind};

use super::{Backing, Environment, Kind, Uses, Workload};

/// How a URL refers to its password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// No password at all: for finding the host and port.
    Plain,
    /// `${NAME:?...}`: compose refuses to start when NAME is unset.
    Compose,
    /// `$(NAME)`: Kubernetes expands an earlier variable of the list.
    Kubernetes,
    /// The value itself, for a local process (the secret is in its
    /// environment, never in a file we render).
    Literal,
}

/// A process's variable before it is written in some notation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Var {
    pub name: String,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Plain(String),
    /// The secret of this name (the variable is named after it).
    Secret,
    /// A backing service's URL, which may embed a password secret.
    Url(Which),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Postgres,
    Redis,
    Rabbitmq,
    Mongodb,
}

impl Which {
    pub fn kind(self) -> &'static BackingKind {
        match self {
            Which::Postgres => &backing::POSTGRES,
            Which::Redis => &backing::REDIS,
            Which::Rabbitmq => &backing::RABBITMQ,
            Which::Mongodb => &backing::MONGODB,
        }
    }

    pub fn variable(self) -> &'static str {
        match self {
            Which::Postgres => "DATABASE_URL",
            Which::Redis => "REDIS_URL",
            Which::Rabbitmq => "RABBITMQ_URL",
            Which::Mongodb => "MONGODB_URL",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Which::Postgres => "postgres",
            Which::Redis => "redis",
            Which::Rabbitmq => "rabbitmq",
            Which::Mongodb => "mongodb",
        }
    }

    pub fn model(self, environment: &Environment) -> &Backing {
        let model = &environment.model;
        match self {
            Which::Postgres => &model.postgres,
            Which::Redis => &model.redis,
            Which::Rabbitmq => &model.rabbitmq,
            Which::Mongodb => &model.mongodb,
        }
    }
}

/// Whether a workload is a service (`serve`) or a worker (`worker`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Service,
    Worker,
}

/// The backing services a workload connects to: Postgres and Redis always
/// (every process reads DATABASE_URL and REDIS_URL), the others by `uses`.
pub fn backings_of(workload: &Workload) -> Vec<Which> {
    let mut list = vec![Which::Postgres, Which::Redis];
    if workload.uses.contains(&Uses::Rabbitmq) {
        list.push(Which::Rabbitmq);
    }
    if workload.uses.contains(&Uses::Mongodb) {
        list.push(Which::Mongodb);
    }
    list
}

/// The secrets a workload reads: its own list and the passwords of the
/// backing services it connects to (those not given as a verbatim URL), in
/// name order, each once.
pub fn secrets_of(environment: &Environment, workload: &Workload) -> Vec<String> {
    let mut secrets: Vec<String> = workload.secrets.clone();
    for which in backings_of(workload) {
        let model = which.model(environment);
        if model.url.is_none()
            && let Some(secret) = &model.password_secret
        {
            secrets.push(secret.clone());
        }
    }
    secrets.sort();
    secrets.dedup();
    secrets
}

/// Variables every process of the environment gets with the same value. In
/// Kubernetes they live in the ConfigMap.
pub fn shared(environment: &Environment) -> Vec<(String, String)> {
    let platform = &environment.model.platform;
    let host = match environment.model.kind {
        Kind::Local => platform.host.map_or_else(|| "127.0.0.1".to_owned(), |host| host.to_string()),
        _ => "0.0.0.0".to_owned(),
    };
    vec![
        // Events never cross deployments (services/kit/src/events): each
        // environment is a deployment of its own, named like it, so two of
        // them sharing a broker keep their queues and events apart.
        ("DEPLOYMENT".to_owned(), environment.name.clone()),
        ("ENVIRONMENT".to_owned(), environment.name.clone()),
        ("HOST".to_owned(), host),
        ("LOG_FORMAT".to_owned(), platform.log_format.as_str().to_owned()),
        ("LOG_LEVEL".to_owned(), platform.log_level.clone()),
        ("REDIS_KEY_PREFIX".to_owned(), platform.redis_key_prefix.clone()),
        ("SHUTDOWN_TIMEOUT_SECS".to_owned(), platform.shutdown_timeout_secs.to_string()),
        ("TRUSTED_PROXIES".to_owned(), trusted_proxies(environment)),
    ]
}

/// The addresses whose X-Real-IP / X-Forwarded-For the services believe:
/// the gateway's, and nothing else.
pub fn trusted_proxies(environment: &Environment) -> String {
    match environment.model.kind {
        // nginx on this machine connects over loopback.
        Kind::Local => "127.0.0.1/32,::1/128".to_owned(),
        Kind::Compose => match &environment.model.compose {
            Some(compose) => format!("{}/32", compose.gateway_address),
            None => String::new(),
        },
        // The ingress controller's pods, somewhere in the pod network.
        Kind::Kubernetes => environment.model.kubernetes.as_ref().map(|k| k.pod_cidr.clone()).unwrap_or_default(),
    }
}

/// The variables of one workload besides the shared ones: its secrets, its
/// own settings, then the URLs (which may refer to the secrets).
pub fn workload(environment: &Environment, role: Role, name: &str, workload: &Workload) -> Vec<Var> {
    let platform = &environment.model.platform;
    let mut vars: Vec<Var> = secrets_of(environment, workload)
        .into_iter()
        .map(|secret| Var { name: secret, value: Value::Secret })
        .collect();
    let service_name = match role {
        Role::Service => format!("freedumb-{name}"),
        Role::Worker => format!("freedumb-worker-{name}"),
    };
    let timeout = workload.request_timeout_secs.unwrap_or(platform.request_timeout_secs);
    vars.push(Var { name: "PORT".to_owned(), value: Value::Plain(workload.port.to_string()) });
    vars.push(Var { name: "REQUEST_TIMEOUT_SECS".to_owned(), value: Value::Plain(timeout.to_string()) });
    vars.push(Var { name: "SERVICE_NAME".to_owned(), value: Value::Plain(service_name) });
    for (key, value) in &workload.env {
        vars.push(Var { name: key.clone(), value: Value::Plain(value.clone()) });
    }
    for which in backings_of(workload) {
        vars.push(Var { name: which.variable().to_owned(), value: Value::Url(which) });
    }
    vars
}

/// The variables of the local processes (`freedumb serve` with every
/// enabled service on the platform port; each enabled worker overrides PORT
/// and SERVICE_NAME), with literal values: `secret` gives a secret's value.
/// The secrets and settings of every enabled workload, each once.
pub fn local_process(environment: &Environment, port: u16, secret: &dyn Fn(&str) -> String) -> Vec<(String, String)> {
    let platform = &environment.model.platform;
    let mut vars = shared(environment);
    let workloads = || environment.services().chain(environment.workers());
    let mut secrets: Vec<String> = workloads().flat_map(|(_, w)| secrets_of(environment, w)).collect();
    secrets.sort();
    secrets.dedup();
    for name in secrets {
        let value = secret(&name);
        vars.push((name, value));
    }
    vars.push(("PORT".to_owned(), port.to_string()));
    vars.push(("REQUEST_TIMEOUT_SECS".to_owned(), platform.request_timeout_secs.to_string()));
    vars.push(("SERVICE_NAME".to_owned(), "freedumb".to_owned()));
    let mut backings = vec![Which::Postgres, Which::Redis, Which::Rabbitmq];
    if environment.uses(Uses::Mongodb) {
        backings.push(Which::Mongodb);
    }
    for which in backings {
        vars.push((which.variable().to_owned(), url(environment, which, Flavor::Literal, secret)));
    }
    let mut extra: Vec<(String, String)> =
        workloads().flat_map(|(_, w)| w.env.iter().map(|(k, v)| (k.clone(), v.clone()))).collect();
    extra.sort();
    extra.dedup();
    vars.extend(extra);
    vars
}

/// The URL of a backing service in the given notation.
pub fn url(environment: &Environment, which: Which, flavor: Flavor, secrets: &dyn Fn(&str) -> String) -> String {
    let model = which.model(environment);
    match &model.url {
        Some(url) => url.clone(),
        None => match flavor {
            Flavor::Literal => backing_url_with(which.kind(), model, &|name| secrets(name)),
            _ => backing_url(which.kind(), model, flavor),
        },
    }
}

/// The literal URL of a backing service at 127.0.0.1 and its port: where a
/// process on the host's network reaches a container published there.
pub fn url_on_loopback(environment: &Environment, which: Which, secrets: &dyn Fn(&str) -> String) -> String {
    let model = which.model(environment);
    let on_loopback = Backing {
        url: None,
        host: Some("127.0.0.1".to_owned()),
        port: model.port,
        database: model.database.clone(),
        user: model.user.clone(),
        password_secret: model.password_secret.clone(),
        image: None,
        cidr: None,
        max_memory_mb: None,
    };
    backing_url_with(which.kind(), &on_loopback, &|name| secrets(name))
}

/// The URL built from a backing service's parts, its password written as
/// `flavor` says.
pub fn backing_url(kind: &BackingKind, model: &Backing, flavor: Flavor) -> String {
    backing_url_with(kind, model, &|secret| match flavor {
        Flavor::Plain | Flavor::Literal => String::new(),
        Flavor::Compose => format!("${{{secret}:?{secret} is not set, see .env.example}}"),
        Flavor::Kubernetes => format!("$({secret})"),
    })
}

fn backing_url_with(kind: &BackingKind, model: &Backing, password: &dyn Fn(&str) -> String) -> String {
    if let Some(url) = &model.url {
        return url.clone();
    }
    let scheme = kind.schemes[0];
    let host = model.host.as_deref().unwrap_or("");
    let port = model.port.unwrap_or(kind.default_port);
    let password = model.password_secret.as_deref().map(password).filter(|p| !p.is_empty());
    let userinfo = match (model.user.as_deref(), password) {
        (Some(user), Some(password)) => format!("{user}:{password}@"),
        (Some(user), None) => format!("{user}@"),
        (None, Some(password)) => format!(":{password}@"),
        (None, None) => String::new(),
    };
    let path = match kind.name {
        "Postgres" => format!("/{}", model.database.as_deref().unwrap_or("")),
        // The default vhost, `/`, escaped.
        "RabbitMQ" => "/%2f".to_owned(),
        "MongoDB" => format!("/{}?authSource=admin", model.database.as_deref().unwrap_or("")),
        _ => String::new(),
    };
    format!("{scheme}://{userinfo}{host}:{port}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backing(user: Option<&str>, secret: Option<&str>) -> Backing {
        Backing {
            url: None,
            host: Some("db".to_owned()),
            port: Some(5432),
            database: Some("freedumb".to_owned()),
            user: user.map(str::to_owned),
            password_secret: secret.map(str::to_owned),
            image: None,
            cidr: None,
            max_memory_mb: None,
        }
    }

    #[test]
    fn urls_refer_to_their_password_in_each_notation() {
        let pg = backing(Some("freedumb"), Some("POSTGRES_PASSWORD"));
        assert_eq!(backing_url(&backing::POSTGRES, &pg, Flavor::Plain), "postgres://freedumb@db:5432/freedumb");
        assert_eq!(
            backing_url(&backing::POSTGRES, &pg, Flavor::Kubernetes),
            "postgres://freedumb:$(POSTGRES_PASSWORD)@db:5432/freedumb"
        );
        assert_eq!(
            backing_url(&backing::POSTGRES, &pg, Flavor::Compose),
            "postgres://freedumb:${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is not set, see .env.example}@db:5432/freedumb"
        );
        let redis = Backing { port: Some(6379), database: None, ..backing(None, Some("REDIS_PASSWORD")) };
        assert_eq!(backing_url(&backing::REDIS, &redis, Flavor::Kubernetes), "redis://:$(REDIS_PASSWORD)@db:6379");
        let rabbit = Backing { port: None, ..backing(Some("freedumb"), None) };
        assert_eq!(backing_url(&backing::RABBITMQ, &rabbit, Flavor::Plain), "amqp://freedumb@db:5672/%2f");
    }
}

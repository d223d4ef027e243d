//! The typed model of an environment, after the layers are merged.
//!
//! Every struct denies unknown keys. Types that have a shape (CPU and memory
//! quantities, log formats, where secrets come from) are parsed here, so the
//! rest of the toolkit works with values that cannot be malformed.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub kind: Kind,
    pub platform: Platform,
    pub gateway: Gateway,
    pub postgres: Backing,
    pub redis: Backing,
    pub rabbitmq: Backing,
    pub mongodb: Backing,
    #[serde(default)]
    pub services: BTreeMap<String, Workload>,
    #[serde(default)]
    pub workers: BTreeMap<String, Workload>,
    pub secrets: Secrets,
    pub kubernetes: Option<Kubernetes>,
    pub compose: Option<Compose>,
    #[serde(default)]
    pub loadtest: Loadtest,
}

/// How an environment runs, which decides what `render` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Native processes on this machine (`cargo xtask deploy`) behind a local
    /// nginx: renders the nginx configuration.
    Local,
    /// A docker compose stack: compose file, nginx, Dockerfile.
    Compose,
    /// A Kubernetes cluster: manifests and Dockerfile.
    Kubernetes,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Local => "local",
            Kind::Compose => "compose",
            Kind::Kubernetes => "kubernetes",
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Platform {
    pub image: String,
    /// The image tag this environment runs. Required outside `local`.
    pub tag: Option<String>,
    /// The registry's digest of `image:tag`: rendered as `image:tag@digest`,
    /// so what runs is exactly what was released, whatever the tag points
    /// at later. Written by the release step (docs/releases.md).
    pub digest: Option<Digest>,
    /// Compose only: the digest of the gateway image (`<image>-gateway:tag`),
    /// which compose runs beside the services.
    pub gateway_digest: Option<Digest>,
    /// `check` fails unless every image of ours is named by digest (prod).
    #[serde(default)]
    pub require_digest: bool,
    /// `local` only: the address and port of `freedumb serve all`.
    pub host: Option<IpAddr>,
    pub port: Option<u16>,
    pub log_level: String,
    pub log_format: LogFormat,
    pub redis_key_prefix: String,
    pub request_timeout_secs: u32,
    pub shutdown_timeout_secs: u32,
    pub drain_delay_secs: u32,
    pub build: Build,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
    Auto,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
            LogFormat::Auto => "auto",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Build {
    pub rust_image: String,
    pub runtime_image: String,
    pub uid: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    pub domain: String,
    pub tls: bool,
    /// The address nginx binds; every address when unset.
    pub listen_address: Option<IpAddr>,
    pub http_port: u16,
    pub https_port: u16,
    pub body_limit_mib: u32,
    pub connect_timeout_secs: u32,
    pub read_timeout_secs: u32,
    pub hsts_max_age_secs: u32,
    /// The gateway container's (compose).
    pub resources: Resources,
    pub zones: BTreeMap<String, Zone>,
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zone {
    pub requests_per_minute: u32,
    /// Shared memory for the zone's counters (about 16 000 addresses per MiB).
    #[serde(default = "default_zone_size")]
    pub size_mib: u32,
}

fn default_zone_size() -> u32 {
    10
}

/// Postgres, Redis, RabbitMQ or MongoDB: either a verbatim `url` (local
/// only: it may hold a password), or its parts, with the password taken
/// from the secret named by `password_secret`.
///
/// With an `image` it is a container that `deploy --containers` runs (and
/// the compose file renders); without one it is external, and a deploy
/// only checks that it answers. `url` and `image` exclude each other.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backing {
    pub url: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub database: Option<String>,
    pub user: Option<String>,
    pub password_secret: Option<String>,
    /// Run it as a container of this image (compose, or a local
    /// environment's container deployment on the host's network).
    pub image: Option<String>,
    /// Kubernetes: the network it lives in, for the egress NetworkPolicy.
    pub cidr: Option<String>,
    /// A Redis container's `--maxmemory` in MiB (evicting least recently used keys).
    pub max_memory_mb: Option<u32>,
}

/// A service (`freedumb serve NAME`) or a worker (`freedumb worker NAME`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub enabled: bool,
    pub port: u16,
    pub replicas: Replicas,
    pub autoscaling: Autoscaling,
    pub resources: Resources,
    pub min_available: u32,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub uses: Vec<Uses>,
    pub probes: Probes,
    /// REQUEST_TIMEOUT_SECS for this workload; the platform's when unset.
    pub request_timeout_secs: Option<u32>,
    /// Whether it calls hosts outside the cluster over HTTPS (the market-data
    /// provider): Kubernetes then lets it reach public addresses on port 443,
    /// and only those (never the private ranges, where the cluster is).
    #[serde(default)]
    pub internet: bool,
    #[serde(default)]
    pub routes: BTreeMap<String, Route>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Uses {
    Rabbitmq,
    Mongodb,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replicas {
    pub min: u32,
    pub max: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Autoscaling {
    pub cpu_percent: u32,
    pub memory_percent: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub requests: Amounts,
    pub limits: Amounts,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Amounts {
    pub cpu: Cpu,
    pub memory: Memory,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probes {
    pub liveness: Probe,
    pub readiness: Probe,
    pub startup: Probe,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub path: String,
    pub period_secs: u32,
    pub timeout_secs: u32,
    pub failure_threshold: u32,
}

/// A public URL prefix a service answers under.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The gateway's rate-limit zone; no limit when unset.
    pub zone: Option<String>,
    pub burst: Option<u32>,
    /// How long the gateway waits for the service; the gateway's default
    /// when unset.
    pub read_timeout_secs: Option<u32>,
    #[serde(default)]
    pub websocket: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    pub source: SecretSource,
    /// The secrets this environment's source provides.
    pub supplied: Vec<String>,
    /// external-secrets: the ClusterSecretStore to read from.
    pub store: Option<String>,
    pub remote_prefix: Option<String>,
    pub refresh_interval: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretSource {
    /// Generated on this machine into `.local/secrets.env` (local only).
    Generated,
    /// Read by compose from the environment or `.env` (`${NAME:?}`).
    Environment,
    /// An ExternalSecret that the External Secrets Operator resolves from
    /// the cluster's secret store.
    ExternalSecrets,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    /// The Kubernetes version the manifests target; `check` validates
    /// against this version's schemas.
    pub version: String,
    /// The kubeconfig context of the cluster this environment belongs to:
    /// `deploy`, `diff`, `rollback`, `status` and `logs` refuse any other.
    pub context: String,
    pub namespace: String,
    pub ingress_class: String,
    pub cluster_issuer: String,
    pub tls_secret: String,
    pub ingress_namespace: String,
    pub monitoring_namespace: String,
    pub pod_cidr: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compose {
    pub project: String,
    pub subnet: String,
    pub gateway_address: IpAddr,
}

/// What `cargo xtask loadtest --env NAME` judges a run by: its service
/// level objectives. `--slo RULE` adds to them, `--no-env-slo` ignores them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Loadtest {
    /// A run of the journeys against this environment's deployment.
    #[serde(default)]
    pub objectives: Objectives,
    /// `--smoke`, the CI gate: a short low-rate run, usually zero errors.
    #[serde(default)]
    pub smoke: Objectives,
}

/// Service level objectives; each one present becomes one goose threshold.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Objectives {
    /// Failed requests over all requests, in percent, at most.
    pub error_rate_percent: Option<f64>,
    /// All requests per second over the run, at least.
    pub min_requests_per_second: Option<f64>,
    /// Latency bounds per request group, named as goose's reports name it
    /// (`GET /v1/transactions?limit=50`), or `all` for every request.
    #[serde(default)]
    pub latency: BTreeMap<String, Latency>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    pub p95: Option<ResponseTime>,
    pub p99: Option<ResponseTime>,
}

/// A response time in microseconds, written with a unit as goose's
/// thresholds take it: `250ms`, `1.5s`, `800us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct ResponseTime(pub u64);

impl TryFrom<String> for ResponseTime {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let expected =
            || format!("invalid response time `{text}`: expected a number with a unit, us, ms or s, such as \"250ms\"");
        let (number, micros_per_unit) = if let Some(number) = text.strip_suffix("us") {
            (number, 1.0)
        } else if let Some(number) = text.strip_suffix("ms") {
            (number, 1_000.0)
        } else if let Some(number) = text.strip_suffix('s') {
            (number, 1_000_000.0)
        } else {
            return Err(expected());
        };
        // Digits with at most one decimal point: no sign, exponent, NaN or
        // inner space, which goose would refuse at the start of a run.
        let plain = !number.is_empty()
            && number.chars().all(|c| c.is_ascii_digit() || c == '.')
            && number.matches('.').count() <= 1
            && number.chars().any(|c| c.is_ascii_digit());
        if !plain {
            return Err(expected());
        }
        let micros = number.parse::<f64>().map_err(|_| expected())? * micros_per_unit;
        if micros.fract() != 0.0 || micros > 3_600_000_000.0 {
            return Err(format!("invalid response time `{text}`: whole microseconds up to an hour"));
        }
        if micros < 1.0 {
            return Err(format!("invalid response time `{text}`: a bound of zero can never be met"));
        }
        Ok(ResponseTime(micros as u64))
    }
}

impl fmt::Display for ResponseTime {
    /// The largest unit that shows it whole: `250ms`, `2s`, `1500ms`, `800us`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            us if us.is_multiple_of(1_000_000) => write!(f, "{}s", us / 1_000_000),
            us if us.is_multiple_of(1_000) => write!(f, "{}ms", us / 1_000),
            us => write!(f, "{us}us"),
        }
    }
}

/// An image's content digest as a registry reports it: `sha256:` and 64
/// lower-case hex digits (the manifest's digest, which `docker buildx
/// imagetools inspect` or `crane digest` print, not the local image id).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Digest(String);

impl TryFrom<String> for Digest {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let hex = text.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) {
            Ok(Digest(text))
        } else {
            Err(format!(
                "invalid digest `{text}`: expected `sha256:` and 64 lower-case hex digits, the digest the registry \
                 reports for the pushed image"
            ))
        }
    }
}

impl Digest {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A CPU quantity in millicores, written as Kubernetes does: `250m`, `2`,
/// `0.5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Cpu(pub u32);

impl TryFrom<String> for Cpu {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let expected = || {
            format!(
                "invalid CPU quantity `{text}`: expected millicores such as \"250m\" or cores such as \"2\" or \"0.5\""
            )
        };
        let millis = match text.strip_suffix('m') {
            Some(millis) => millis.parse::<u32>().map_err(|_| expected())?,
            None => {
                let cores: f64 = text.parse().map_err(|_| expected())?;
                let millis = cores * 1000.0;
                if !(millis.is_finite() && millis >= 1.0 && millis.fract() == 0.0 && millis <= f64::from(u32::MAX)) {
                    return Err(expected());
                }
                millis as u32
            }
        };
        if millis == 0 {
            return Err(expected());
        }
        Ok(Cpu(millis))
    }
}

impl Cpu {
    /// Kubernetes notation: whole cores as `2`, the rest as `250m`.
    pub fn kubernetes(self) -> String {
        if self.0.is_multiple_of(1000) { (self.0 / 1000).to_string() } else { format!("{}m", self.0) }
    }

    /// Compose notation: cores as a decimal, `0.25`.
    pub fn cores(self) -> String {
        let whole = self.0 / 1000;
        let frac = self.0 % 1000;
        if frac == 0 { whole.to_string() } else { format!("{whole}.{}", format!("{frac:03}").trim_end_matches('0')) }
    }
}

/// A memory quantity in MiB, written `256Mi` or `1Gi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Memory(pub u32);

impl TryFrom<String> for Memory {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let expected = || {
            format!(
                "invalid memory quantity `{text}`: expected mebibytes such as \"256Mi\" or gibibytes such as \"1Gi\""
            )
        };
        let (number, factor) = if let Some(number) = text.strip_suffix("Gi") {
            (number, 1024)
        } else if let Some(number) = text.strip_suffix("Mi") {
            (number, 1)
        } else {
            return Err(expected());
        };
        let value: u32 = number.parse().map_err(|_| expected())?;
        match value.checked_mul(factor) {
            Some(mib) if mib > 0 => Ok(Memory(mib)),
            _ => Err(expected()),
        }
    }
}

impl Memory {
    pub fn kubernetes(self) -> String {
        if self.0.is_multiple_of(1024) { format!("{}Gi", self.0 / 1024) } else { format!("{}Mi", self.0) }
    }

    /// Compose (docker) notation, binary units: `512M`, `1G`.
    pub fn compose(self) -> String {
        if self.0.is_multiple_of(1024) { format!("{}G", self.0 / 1024) } else { format!("{}M", self.0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities_parse_and_print_both_ways() {
        for (text, millis, kubernetes, cores) in [
            ("250m", 250, "250m", "0.25"),
            ("2", 2000, "2", "2"),
            ("0.5", 500, "500m", "0.5"),
            ("1500m", 1500, "1500m", "1.5"),
        ] {
            let cpu = Cpu::try_from(text.to_owned()).unwrap();
            assert_eq!(cpu, Cpu(millis), "{text}");
            assert_eq!(cpu.kubernetes(), kubernetes, "{text}");
            assert_eq!(cpu.cores(), cores, "{text}");
        }
        for bad in ["", "0", "0m", "abc", "1.0005", "-1", "250M"] {
            assert!(Cpu::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_quantities_parse_and_print_both_ways() {
        let memory = Memory::try_from("1Gi".to_owned()).unwrap();
        assert_eq!((memory.0, memory.kubernetes(), memory.compose()), (1024, "1Gi".to_owned(), "1G".to_owned()));
        let memory = Memory::try_from("512Mi".to_owned()).unwrap();
        assert_eq!((memory.kubernetes(), memory.compose()), ("512Mi".to_owned(), "512M".to_owned()));
        for bad in ["512", "512M", "0Mi", "1.5Gi", "Mi"] {
            assert!(Memory::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_digest_is_sha256_and_64_lower_case_hex_digits() {
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(Digest::try_from(format!("sha256:{hex}")).unwrap().as_str(), format!("sha256:{hex}"));
        for bad in [
            hex.clone(),
            format!("sha256:{}", &hex[1..]),
            format!("sha256:{hex}0"),
            format!("sha256:{}", hex.to_uppercase()),
            format!("sha512:{hex}"),
            format!("sha256:{}g", &hex[1..]),
            "".to_owned(),
        ] {
            let err = Digest::try_from(bad.clone()).expect_err(&bad);
            assert!(err.contains("64 lower-case hex digits"), "{err}");
        }
    }

    #[test]
    fn response_times_parse_with_a_unit_and_print_in_the_largest_whole_one() {
        for (text, micros, shown) in [
            ("250ms", 250_000, "250ms"),
            ("1.5s", 1_500_000, "1500ms"),
            ("2s", 2_000_000, "2s"),
            ("800us", 800, "800us"),
            ("0.5ms", 500, "500us"),
        ] {
            let time = ResponseTime::try_from(text.to_owned()).unwrap();
            assert_eq!((time.0, time.to_string().as_str()), (micros, shown), "{text}");
        }
        for bad in ["250", "ms", "-5ms", "0ms", "1e3ms", "5 ms", "1.2.3s", "0.5us", "NaNms", "2h"] {
            assert!(ResponseTime::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }
}

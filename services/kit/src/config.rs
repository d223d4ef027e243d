//! Configuration from environment variables, validated once at start-up.
//!
//! Variables keep the seed's names (`PORT`, `DATABASE_URL`, `REDIS_URL`,
//! `JWT_ACCESS_SECRET`, ...). Every read goes through [`Env`], a lookup
//! function, so tests build configurations from a map instead of mutating the
//! process environment. A bad value becomes a [`ConfigError`] that names the
//! variable and what was expected, and never repeats the value itself: a
//! mistyped secret must not end up in a log.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use secrecy::SecretString;

/// A configuration variable that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub var: String,
    pub problem: Problem,
    pub expected: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    Missing,
    Malformed,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.problem {
            Problem::Missing => "is not set",
            Problem::Malformed => "is invalid",
        };
        write!(f, "{} {what}: expected {}", self.var, self.expected)
    }
}

impl std::error::Error for ConfigError {}

type Lookup = dyn Fn(&str) -> Option<String> + Send + Sync;

/// Where configuration values come from: the process environment, or a map
/// in tests.
pub struct Env {
    lookup: Box<Lookup>,
}

impl Env {
    pub fn process() -> Self {
        Env { lookup: Box::new(|k| std::env::var(k).ok()) }
    }

    pub fn from_map(map: BTreeMap<String, String>) -> Self {
        Env { lookup: Box::new(move |k| map.get(k).cloned()) }
    }

    /// The raw value; an empty string counts as unset, the way shells and
    /// compose files leave `FOO=` behind.
    pub fn get(&self, var: &str) -> Option<String> {
        (self.lookup)(var).filter(|v| !v.trim().is_empty())
    }

    pub fn required(&self, var: &str, expected: &str) -> Result<String, ConfigError> {
        self.get(var).ok_or_else(|| ConfigError::missing(var, expected))
    }

    /// A value parsed with `FromStr`, or `default` when unset.
    pub fn parsed_or<T: FromStr>(&self, var: &str, default: T, expected: &str) -> Result<T, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|_| ConfigError::malformed(var, expected)),
        }
    }

    pub fn seconds_or(&self, var: &str, default: u64) -> Result<Duration, ConfigError> {
        let secs: u64 = self.parsed_or(var, default, "a whole number of seconds")?;
        Ok(Duration::from_secs(secs))
    }

    /// A secret: required, at least `min_len` bytes, wrapped so that it is
    /// never printed by `Debug`.
    pub fn secret(&self, var: &str, min_len: usize) -> Result<SecretString, ConfigError> {
        let expected = format!("a secret of at least {min_len} bytes");
        let value = self.required(var, &expected)?;
        if value.len() < min_len {
            return Err(ConfigError::malformed(var, &expected));
        }
        Ok(SecretString::from(value))
    }

    /// A URL whose scheme is one of `schemes`.
    pub fn url(&self, var: &str, schemes: &[&str]) -> Result<SecretString, ConfigError> {
        let expected = format!(
            "a URL starting with {}",
            schemes.iter().map(|s| format!("{s}://")).collect::<Vec<_>>().join(" or ")
        );
        let value = self.required(var, &expected)?;
        let scheme_ok =
            value.split_once("://").is_some_and(|(scheme, rest)| schemes.contains(&scheme) && !rest.is_empty());
        if !scheme_ok {
            return Err(ConfigError::malformed(var, &expected));
        }
        // URLs carry passwords (`postgresql://user:pass@host`), so they are
        // kept as secrets too.
        Ok(SecretString::from(value))
    }
}

impl ConfigError {
    pub fn missing(var: &str, expected: &str) -> Self {
        ConfigError { var: var.to_owned(), problem: Problem::Missing, expected: expected.to_owned() }
    }

    pub fn malformed(var: &str, expected: &str) -> Self {
        ConfigError { var: var.to_owned(), problem: Problem::Malformed, expected: expected.to_owned() }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
    /// JSON unless stdout is a terminal.
    Auto,
}

impl FromStr for LogFormat {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            "auto" => Ok(LogFormat::Auto),
            _ => Err(()),
        }
    }
}

/// Settings shared by every service in the process.
#[derive(Debug, Clone)]
pub struct Config {
    pub port: u16,
    pub host: IpAddr,
    pub environment: String,
    pub service_name: String,
    pub log_level: String,
    pub log_format: LogFormat,
    pub database_url: SecretString,
    pub database_max_connections: u32,
    pub redis_url: SecretString,
    /// Prepended to every Redis key, so several deployments (or tests) can
    /// share one Redis without seeing each other's keys.
    pub redis_key_prefix: String,
    /// `DEPLOYMENT`: which deployment this process belongs to, so that
    /// deployments sharing a broker never consume each other's events
    /// (see [`crate::events::Deployment`]).
    pub deployment: crate::events::Deployment,
    /// The access tokens' signing key; `None` in a process that serves no
    /// authenticated route (a worker), which is then not given the key.
    pub jwt_access_secret: Option<SecretString>,
    pub request_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// Peers whose `X-Real-IP` / `X-Forwarded-For` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
}

impl Config {
    /// Reads the shared settings. `default_port` and `default_service` come
    /// from the targets being served.
    pub fn from_env(env: &Env, default_port: u16, default_service: &str) -> Result<Self, ConfigError> {
        Self::from_env_for(env, default_port, default_service, true)
    }

    /// `from_env` for a process whose targets do (`authenticates`) or do
    /// not verify access tokens: only the first needs `JWT_ACCESS_SECRET`.
    /// Workers run without it, so a compromised worker cannot mint tokens.
    pub fn from_env_for(
        env: &Env,
        default_port: u16,
        default_service: &str,
        authenticates: bool,
    ) -> Result<Self, ConfigError> {
        let log_level = env.get("LOG_LEVEL").unwrap_or_else(|| "info".to_owned());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(ConfigError::malformed(
                "LOG_LEVEL",
                "a level (error, warn, info, debug, trace) or a filter such as info,sqlx=warn",
            ));
        }
        let trusted_proxies = match env.get("TRUSTED_PROXIES") {
            None => vec!["127.0.0.0/8".parse().expect("literal"), "::1/128".parse().expect("literal")],
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<IpNet>().or_else(|_| s.parse::<IpAddr>().map(IpNet::from)))
                .collect::<Result<_, _>>()
                .map_err(|_| {
                    ConfigError::malformed("TRUSTED_PROXIES", "a comma-separated list of IP addresses or CIDR ranges")
                })?,
        };
        let database_url = env.url("DATABASE_URL", &["postgres", "postgresql"])?;
        let deployment = crate::events::Deployment::from_env(env, &database_url)?;
        Ok(Config {
            port: env.parsed_or("PORT", default_port, "a TCP port number (0-65535)")?,
            host: env.parsed_or("HOST", IpAddr::from([0, 0, 0, 0]), "an IP address to listen on")?,
            environment: env.get("ENVIRONMENT").unwrap_or_else(|| "development".to_owned()),
            service_name: env.get("SERVICE_NAME").unwrap_or_else(|| default_service.to_owned()),
            log_level,
            log_format: env.parsed_or("LOG_FORMAT", LogFormat::Auto, "json, text or auto")?,
            database_url,
            database_max_connections: env.parsed_or("DATABASE_MAX_CONNECTIONS", 10, "a number of connections")?,
            redis_url: env.url("REDIS_URL", &["redis", "rediss"])?,
            redis_key_prefix: env.get("REDIS_KEY_PREFIX").unwrap_or_default(),
            deployment,
            jwt_access_secret: if authenticates { Some(env.secret("JWT_ACCESS_SECRET", 32)?) } else { None },
            request_timeout: env.seconds_or("REQUEST_TIMEOUT_SECS", 30)?,
            shutdown_timeout: env.seconds_or("SHUTDOWN_TIMEOUT_SECS", 30)?,
            trusted_proxies,
        })
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_map(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn complete() -> Vec<(&'static str, &'static str)> {
        vec![
            ("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/freedumb"),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("JWT_ACCESS_SECRET", "0123456789abcdef0123456789abcdef"),
        ]
    }

    #[test]
    fn a_complete_environment_gives_defaults_for_the_rest() {
        let config = Config::from_env(&env(&complete()), 3001, "auth").unwrap();
        assert_eq!(config.port, 3001);
        assert_eq!(config.service_name, "auth");
        assert_eq!(config.log_level, "info");
        assert_eq!(config.jwt_access_secret.as_ref().map(|s| s.expose_secret().len()), Some(32));
        assert_eq!(config.deployment.as_str(), "freedumb", "the database's name");
    }

    #[test]
    fn a_missing_secret_is_named_without_a_value() {
        let mut vars = complete();
        vars.retain(|(k, _)| *k != "JWT_ACCESS_SECRET");
        let err = Config::from_env(&env(&vars), 3001, "auth").unwrap_err();
        assert_eq!(err.to_string(), "JWT_ACCESS_SECRET is not set: expected a secret of at least 32 bytes");
    }

    #[test]
    fn a_process_that_verifies_no_token_runs_without_the_access_secret() {
        let mut vars = complete();
        vars.retain(|(k, _)| *k != "JWT_ACCESS_SECRET");
        let config = Config::from_env_for(&env(&vars), 3102, "freedumb-worker-recurring", false).unwrap();
        assert!(config.jwt_access_secret.is_none());
    }

    #[test]
    fn a_short_secret_is_rejected_and_never_echoed() {
        let mut vars = complete();
        vars.push(("JWT_ACCESS_SECRET", "hunter2"));
        vars.retain(|(k, v)| *k != "JWT_ACCESS_SECRET" || *v == "hunter2");
        let err = Config::from_env(&env(&vars), 3001, "auth").unwrap_err();
        assert!(err.to_string().starts_with("JWT_ACCESS_SECRET is invalid"));
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn a_database_url_with_the_wrong_scheme_is_malformed() {
        let mut vars = complete();
        vars[0] = ("DATABASE_URL", "mysql://root:pw@db/x");
        let err = Config::from_env(&env(&vars), 3001, "auth").unwrap_err();
        assert_eq!(err.var, "DATABASE_URL");
        assert_eq!(err.problem, Problem::Malformed);
        assert!(!err.to_string().contains("pw@db"));
    }

    #[test]
    fn a_non_numeric_port_is_malformed() {
        let mut vars = complete();
        vars.push(("PORT", "eighty"));
        let err = Config::from_env(&env(&vars), 3001, "auth").unwrap_err();
        assert_eq!(err.to_string(), "PORT is invalid: expected a TCP port number (0-65535)");
    }

    #[test]
    fn an_empty_value_counts_as_unset() {
        let mut vars = complete();
        vars[1] = ("REDIS_URL", "  ");
        let err = Config::from_env(&env(&vars), 3001, "auth").unwrap_err();
        assert_eq!((err.var.as_str(), err.problem), ("REDIS_URL", Problem::Missing));
    }

    #[test]
    fn trusted_proxies_take_addresses_and_ranges() {
        let mut vars = complete();
        vars.push(("TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.7"));
        let config = Config::from_env(&env(&vars), 3001, "auth").unwrap();
        assert_eq!(config.trusted_proxies.len(), 2);
        vars.pop();
        vars.push(("TRUSTED_PROXIES", "ten.0.0.0"));
        assert_eq!(Config::from_env(&env(&vars), 3001, "auth").unwrap_err().var, "TRUSTED_PROXIES");
    }
}

//! The typed model of an environment file, `environments/<name>.toml`.
//!
//! Only `local` exists so far and the model holds what `cargo xtask deploy`
//! needs for it; it grows into the full environment model with the
//! environments issue. Every struct denies unknown keys: a misspelt key in a
//! deployment file must be an error, not a silently ignored line. Errors
//! point at `file:line:column` and name the key, because the person reading
//! them has the file open in an editor.

use std::fmt;
use std::fs;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use serde::Deserialize;
use toml::Spanned;

use crate::backing::{self, Address, Backing};

/// Where environment files live, relative to the project root.
pub const DIR: &str = "environments";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    pub platform: Platform,
    pub postgres: Service,
    pub redis: Service,
    pub rabbitmq: Service,
}

/// How `freedumb serve all` runs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Platform {
    /// The address to bind (`HOST`).
    pub host: IpAddr,
    /// The one port every service answers on (`PORT`).
    pub port: u16,
    /// `LOG_LEVEL`; `freedumb` validates the filter syntax itself.
    pub log_level: String,
}

/// A backing service, known by its URL. The URL keeps its position in the
/// file so that a bad one can be pointed at after parsing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub url: Spanned<String>,
}

impl Service {
    pub fn url(&self) -> &str {
        self.url.get_ref()
    }
}

impl Environment {
    /// The backing services with their addresses, in the order they are
    /// checked.
    pub fn backing_services(&self) -> Result<Vec<(&'static Backing, Address)>, String> {
        self.services().into_iter().map(|(kind, service)| Ok((kind, kind.address(service.url())?))).collect()
    }

    fn services(&self) -> [(&'static Backing, &Service); 3] {
        [(&backing::POSTGRES, &self.postgres), (&backing::REDIS, &self.redis), (&backing::RABBITMQ, &self.rabbitmq)]
    }
}

/// The file that describes environment `name`.
pub fn path(root: &Path, name: &str) -> PathBuf {
    root.join(DIR).join(format!("{name}.toml"))
}

/// Reads and checks an environment file.
pub fn load(path: &Path) -> anyhow::Result<Environment> {
    let text = fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))?;
    parse(&text).map_err(|err| anyhow!("{}:{err}", path.display()))
}

/// A problem in an environment file: where, which key, what.
#[derive(Debug)]
pub struct Error {
    /// One-based line and column, when toml knows where.
    pub location: Option<(usize, usize)>,
    /// The dotted key at that location, such as `platform.port`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((line, column)) = self.location {
            write!(f, "{line}:{column}:")?;
        }
        if let Some(key) = &self.key {
            write!(f, " key `{key}`:")?;
        }
        write!(f, " {}", self.message)
    }
}

impl std::error::Error for Error {}

pub fn parse(text: &str) -> Result<Environment, Error> {
    let environment: Environment =
        toml::from_str(text).map_err(|err| Error::at(text, err.span(), err.message().to_owned()))?;
    // toml checks types; URLs are strings to it, so check their shape here,
    // before anything tries to connect to them.
    for (kind, service) in environment.services() {
        kind.address(service.url()).map_err(|message| Error::at(text, Some(service.url.span()), message))?;
    }
    Ok(environment)
}

impl Error {
    fn at(text: &str, span: Option<Range<usize>>, message: String) -> Self {
        let start = span.map(|span| span.start.min(text.len()));
        Error {
            location: start.map(|offset| line_and_column(text, offset)),
            key: start.and_then(|offset| key_at(text, offset)),
            message,
        }
    }
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}

/// The dotted key on the line at `offset`: the nearest `[table]` header
/// above it joined with the `key =` on that line, or the header itself when
/// the offset is on one. toml's errors carry only a byte span, and "line 12"
/// alone makes the reader count lines. A heuristic that knows the simple
/// layout of environment files is enough: on lines it does not understand
/// it returns `None` and the error still has its line and column.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let line_end = text[line_start..].find('\n').map_or(text.len(), |newline| line_start + newline);
    let line = text[line_start..line_end].trim();
    if let Some(header) = table_header(line) {
        return Some(header);
    }
    let key = line.split_once('=')?.0.trim();
    if key.is_empty() || key.starts_with('#') {
        return None;
    }
    match text[..line_start].lines().rev().find_map(|line| table_header(line.trim())) {
        Some(table) => Some(format!("{table}.{key}")),
        None => Some(key.to_owned()),
    }
}

fn table_header(line: &str) -> Option<String> {
    let inner = line.strip_prefix('[')?.trim_start_matches('[');
    let (name, _) = inner.split_once(']')?;
    Some(name.trim().to_owned()).filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::ScratchDir;

    const VALID: &str = r#"
[platform]
host = "127.0.0.1"
port = 3000
log_level = "info"

[postgres]
url = "postgres://postgres@127.0.0.1:5432/freedumb"

[redis]
url = "redis://127.0.0.1:6379"

[rabbitmq]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
"#;

    #[test]
    fn the_committed_local_environment_loads() {
        let environment = load(&path(&crate::project_root(), "local")).unwrap();
        assert_eq!(environment.platform.port, 3000);
        assert_eq!(environment.platform.host, IpAddr::from([127, 0, 0, 1]));
        let addresses: Vec<_> = environment
            .backing_services()
            .unwrap()
            .into_iter()
            .map(|(kind, address)| (kind.name, address.to_string()))
            .collect();
        assert_eq!(
            addresses,
            [
                ("Postgres", "127.0.0.1:5432".to_owned()),
                ("Redis", "127.0.0.1:6379".into()),
                ("RabbitMQ", "127.0.0.1:5672".into())
            ]
        );
    }

    #[test]
    fn a_valid_file_parses_into_the_model() {
        let environment = parse(VALID).unwrap();
        assert_eq!(environment.platform.log_level, "info");
        assert_eq!(environment.postgres.url(), "postgres://postgres@127.0.0.1:5432/freedumb");
        assert_eq!(environment.rabbitmq.url(), "amqp://guest:guest@127.0.0.1:5672/%2f");
    }

    #[test]
    fn an_unknown_key_is_rejected_and_named() {
        let text = VALID.replace("log_level = \"info\"", "log_level = \"info\"\nlog_colour = \"green\"");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("platform.log_colour"));
        assert_eq!(err.location, Some((6, 1)));
        assert!(err.message.contains("unknown field `log_colour`"), "{err}");
    }

    #[test]
    fn an_unknown_table_is_rejected_and_named() {
        let err = parse(&format!("{VALID}\n[kafka]\nurl = \"kafka://x\"\n")).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("kafka"));
        assert!(err.message.contains("unknown field `kafka`"), "{err}");
    }

    #[test]
    fn a_missing_key_is_reported() {
        let err = parse(&VALID.replace("port = 3000\n", "")).unwrap_err();
        assert!(err.message.contains("missing field `port`"), "{err}");
    }

    #[test]
    fn a_value_of_the_wrong_type_names_the_file_line_column_and_key() {
        let dir = ScratchDir::new("environment");
        let file = dir.path().join("broken.toml");
        fs::write(&file, VALID.replace("port = 3000", "port = \"3000\"")).unwrap();

        let err = load(&file).unwrap_err().to_string();

        let expected =
            format!("{}:4:8: key `platform.port`: invalid type: string \"3000\", expected u16", file.display());
        assert_eq!(err, expected);
    }

    #[test]
    fn a_url_of_the_wrong_service_is_pointed_at() {
        let err = parse(&VALID.replace("redis://127.0.0.1:6379", "postgres://127.0.0.1:6379")).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("redis.url"));
        assert_eq!(err.location, Some((11, 7)));
        assert!(err.message.starts_with("expected a redis:// or rediss:// URL"), "{err}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = ScratchDir::new("environment");
        let err = load(&dir.path().join("nowhere.toml")).unwrap_err();
        assert!(
            format!("{err:#}").starts_with(&format!("failed to read {}", dir.path().join("nowhere.toml").display()))
        );
    }
}

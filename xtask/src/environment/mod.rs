//! The environment model: `environments/base.toml` with
//! `environments/<name>.toml` laid over it, read into one typed [`Model`].
//!
//! Loading goes in three steps, each of which can fail with one error that
//! names the file, line and key: the TOML of each file, merged
//! ([`layers::merge_with_defaults`]), the shape of the merged table (serde,
//! with `deny_unknown_fields` and a "did you mean" for unknown keys), then
//! the rules that span keys ([`validate`]: duplicate routes and ports,
//! replica bounds, secrets that are referenced but never supplied, ...).
//! Errors point at the file the offending value was written in, because that
//! is the file to edit.

#[cfg(test)]
mod bad_input;
pub mod layers;
pub mod model;
pub mod targets;
pub mod validate;
pub mod vars;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};

pub use self::layers::{KeyPath, Layer, Layered, Position};
pub use self::model::*;
use crate::backing::{self, Address};

/// Where environment files live, relative to the project root.
pub const DIR: &str = "environments";
/// The layer every environment starts from.
pub const BASE: &str = "base";

/// A loaded environment: its name, the model, and where each key came from.
#[derive(Debug)]
pub struct Environment {
    pub name: String,
    pub model: Model,
    pub layered: Layered,
}

/// A problem in the environment files: where, which key, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub position: Position,
    /// The dotted key, such as `services.auth.port`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.position)?;
        if let Some(key) = &self.key {
            write!(f, " key `{key}`:")?;
        }
        write!(f, " {}", self.message)
    }
}

impl std::error::Error for Error {}

/// The file that describes environment `name`.
pub fn path(root: &Path, name: &str) -> PathBuf {
    root.join(DIR).join(format!("{name}.toml"))
}

/// The environments that exist: every `environments/*.toml` but the base.
pub fn names(root: &Path) -> anyhow::Result<Vec<String>> {
    let dir = root.join(DIR);
    let mut names = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("failed to read {}", dir.display()))? {
        let path = entry.with_context(|| format!("failed to read {}", dir.display()))?.path();
        if path.extension().is_some_and(|ext| ext == "toml")
            && let Some(stem) = path.file_stem().and_then(|stem| stem.to_str())
            && stem != BASE
        {
            names.push(stem.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Reads and checks environment `name` of the project at `root`.
pub fn load(root: &Path, name: &str) -> anyhow::Result<Environment> {
    let env_path = path(root, name);
    if name == BASE || !env_path.is_file() {
        let known = names(root).unwrap_or_default();
        return Err(anyhow!(
            "there is no environment `{name}`: {} does not exist; environments are: {}",
            env_path.display(),
            known.join(", ")
        ));
    }
    let mut layers = Vec::new();
    for path in [path(root, BASE), env_path] {
        let text = fs::read_to_string(&path).with_context(|| format!("failed to read {}", path.display()))?;
        layers.push(Layer { path: relative(root, &path), text });
    }
    let targets = targets::Targets::of_project(root)?;
    Ok(from_layers(name, layers, &targets)?)
}

/// Paths in messages are relative to the project root, as a user types them.
fn relative(root: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(root).map_or_else(|_| path.to_path_buf(), Path::to_path_buf)
}

/// Merges, deserializes and validates the layers of environment `name`.
pub fn from_layers(name: &str, layers: Vec<Layer>, targets: &targets::Targets) -> Result<Environment, Error> {
    let layered = layers::merge_with_defaults(layers, "defaults", &["services", "workers"]).map_err(|err| Error {
        position: err.position,
        key: None,
        message: err.message,
    })?;
    let value = toml::Value::Table(layered.table.clone());
    let model: Model = match serde_path_to_error::deserialize(value) {
        Ok(model) => model,
        Err(err) => return Err(shape_error(&layered, err)),
    };
    let environment = Environment { name: name.to_owned(), model, layered };
    validate::validate(&environment, targets)?;
    Ok(environment)
}

/// A serde error on the merged table, placed in the file the key came from.
fn shape_error(layered: &Layered, err: serde_path_to_error::Error<toml::de::Error>) -> Error {
    let mut path: KeyPath = Vec::new();
    for segment in err.path().iter() {
        match segment {
            serde_path_to_error::Segment::Map { key } => path.push(key.clone()),
            serde_path_to_error::Segment::Seq { index } => path.push(index.to_string()),
            serde_path_to_error::Segment::Enum { variant } => path.push(variant.clone()),
            serde_path_to_error::Segment::Unknown => {}
        }
    }
    let inner = err.into_inner();
    let mut message = inner.message().trim().to_owned();
    let unknown = message.starts_with("unknown field") || message.starts_with("unknown variant");
    if unknown && let Some(suggestion) = did_you_mean(&message) {
        message.push_str(&format!("; did you mean `{suggestion}`?"));
    }
    if let Some(missing) = message.strip_prefix("missing field ") {
        // The path ends at the table that lacks the key; name the key too.
        let missing = missing.trim_matches('`').to_owned();
        let position = layered.position(&path, true);
        let mut key = path.clone();
        key.push(missing);
        return Error { position, key: Some(layers::dotted(&key)), message };
    }
    Error {
        position: layered.position(&path, unknown),
        key: (!path.is_empty()).then(|| layers::dotted(&path)),
        message,
    }
}

/// The closest of the alternatives serde lists (`expected one of `a`, `b``)
/// to the unknown name, if one is close enough to be a typo.
fn did_you_mean(message: &str) -> Option<String> {
    let mut quoted = message.split('`').skip(1).step_by(2);
    let unknown = quoted.next()?;
    suggest(unknown, quoted)
}

/// The candidate closest to `word` by edit distance, when it is within a
/// third of the word's length (at least one edit).
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(word, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min()
        .map(|(_, candidate)| candidate.to_owned())
}

/// Edit distance over characters, counting an insertion, a deletion, a
/// substitution or a swap of two neighbours as one edit (optimal string
/// alignment): `auht` is one edit from `auth`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

impl Environment {
    /// An error about `path`, placed where it was written (or where it would
    /// go, for a key that is missing).
    pub fn error_at(&self, path: &[String], message: impl Into<String>) -> Error {
        Error { position: self.layered.position(path, false), key: Some(layers::dotted(path)), message: message.into() }
    }

    /// Services that this environment deploys, in name order.
    pub fn services(&self) -> impl Iterator<Item = (&str, &Workload)> {
        self.model.services.iter().filter(|(_, w)| w.enabled).map(|(name, w)| (name.as_str(), w))
    }

    /// Workers that this environment deploys, in name order.
    pub fn workers(&self) -> impl Iterator<Item = (&str, &Workload)> {
        self.model.workers.iter().filter(|(_, w)| w.enabled).map(|(name, w)| (name.as_str(), w))
    }

    /// Whether any deployed workload uses `what`.
    pub fn uses(&self, what: Uses) -> bool {
        self.services().chain(self.workers()).any(|(_, w)| w.uses.contains(&what))
    }

    /// The backing services the deployed workloads need, in the order they
    /// are checked and started: Postgres and Redis always, RabbitMQ when a
    /// workload uses it (local deploys check it even before one does, as
    /// they always have: the local machine is meant to have it), MongoDB
    /// when a workload uses it.
    pub fn used_backings(&self) -> Vec<vars::Which> {
        use vars::Which;
        let mut used = vec![Which::Postgres, Which::Redis];
        if self.uses(Uses::Rabbitmq) || self.model.kind == Kind::Local {
            used.push(Which::Rabbitmq);
        }
        if self.uses(Uses::Mongodb) {
            used.push(Which::Mongodb);
        }
        used
    }

    /// The backing services every deployed workload needs, with addresses,
    /// in the order they are checked: Postgres and Redis always, RabbitMQ
    /// when a workload uses it.
    pub fn backing_services(&self) -> Result<Vec<(&'static backing::Backing, Address)>, String> {
        self.addresses(self.used_backings().into_iter().filter(|which| *which != vars::Which::Mongodb))
    }

    /// Those of `backing_services` that are external: the ones a deploy
    /// checks instead of running them as containers (which have an `image`).
    pub fn external_backing_services(&self) -> Result<Vec<(&'static backing::Backing, Address)>, String> {
        let external = |which: &vars::Which| which.model(self).image.is_none() && *which != vars::Which::Mongodb;
        self.addresses(self.used_backings().into_iter().filter(external))
    }

    fn addresses(
        &self,
        which: impl Iterator<Item = vars::Which>,
    ) -> Result<Vec<(&'static backing::Backing, Address)>, String> {
        which
            .map(|which| {
                let (kind, model) = (which.kind(), which.model(self));
                let url = model.url.clone().unwrap_or_else(|| vars::backing_url(kind, model, vars::Flavor::Plain));
                Ok((kind, kind.address(&url)?))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_insertions_deletions_and_substitutions() {
        assert_eq!(edit_distance("replica", "replicas"), 1);
        assert_eq!(edit_distance("prot", "port"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn a_close_name_is_suggested_and_a_far_one_is_not() {
        let message = "unknown field `replica`, expected one of `enabled`, `port`, `replicas`";
        assert_eq!(did_you_mean(message).as_deref(), Some("replicas"));
        assert_eq!(did_you_mean("unknown field `colour`, expected one of `enabled`, `port`"), None);
        assert_eq!(suggest("tsl", ["tls", "domain"]).as_deref(), Some("tls"));
    }
}

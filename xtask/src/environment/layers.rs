//! Reading environment files as layers: `base.toml`, then `<env>.toml` on
//! top, then each service over `[defaults]`, into one TOML table, while
//! remembering for every key which file and line it came from.
//!
//! The typed model is deserialized from the merged table, which has lost its
//! positions; the provenance map gives them back, so an error in a value
//! inherited from `base.toml` points at `base.toml`, and one in an override
//! at the environment file.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use toml_edit::{ImDocument, Item, Key, Value};

/// A dotted key path: `["services", "auth", "port"]`.
pub type KeyPath = Vec<String>;

pub fn dotted(path: &[String]) -> String {
    path.join(".")
}

/// One file's text.
#[derive(Debug, Clone)]
pub struct Layer {
    pub path: PathBuf,
    pub text: String,
}

/// Where a key was written: which layer, and the byte span of the key (for
/// "unknown key") and of its value (for "wrong value").
#[derive(Debug, Clone)]
pub struct Origin {
    pub layer: usize,
    pub key: Option<Range<usize>>,
    pub value: Option<Range<usize>>,
}

/// A file position, for messages: `path:line:column`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// The merged table and where each of its keys came from.
#[derive(Debug)]
pub struct Layered {
    pub table: toml::Table,
    pub origins: BTreeMap<KeyPath, Origin>,
    pub layers: Vec<Layer>,
}

impl Layered {
    /// Where `path` was written, falling back to its nearest written
    /// ancestor (a missing key is reported at the table that lacks it), and
    /// finally to the top of the last layer, the environment's own file.
    pub fn position(&self, path: &[String], prefer_key: bool) -> Position {
        for len in (0..=path.len()).rev() {
            if let Some(origin) = self.origins.get(&path[..len]) {
                let span = if prefer_key { origin.key.clone().or(origin.value.clone()) } else { origin.value.clone() };
                let span = span.or(origin.key.clone());
                return self.position_in(origin.layer, span.map_or(0, |span| span.start));
            }
        }
        self.position_in(self.layers.len() - 1, 0)
    }

    pub fn is_written(&self, path: &[String]) -> bool {
        self.origins.contains_key(path)
    }

    fn position_in(&self, layer: usize, offset: usize) -> Position {
        let text = &self.layers[layer].text;
        let (line, column) = line_and_column(text, offset);
        Position { file: self.layers[layer].path.clone(), line, column }
    }
}

pub fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}

/// A syntax error in one file (TOML itself, before any model).
#[derive(Debug)]
pub struct SyntaxError {
    pub position: Position,
    pub message: String,
}

/// Parses and merges the layers in order: later layers win.
pub fn merge(layers: Vec<Layer>) -> Result<Layered, SyntaxError> {
    let mut merged = Layered { table: toml::Table::new(), origins: BTreeMap::new(), layers: Vec::new() };
    for (index, layer) in layers.into_iter().enumerate() {
        let document = match ImDocument::parse(layer.text.as_str()) {
            Ok(document) => document,
            Err(err) => {
                let (line, column) = line_and_column(&layer.text, err.span().map_or(0, |span| span.start));
                let message = err.message().trim().to_owned();
                return Err(SyntaxError { position: Position { file: layer.path, line, column }, message });
            }
        };
        let mut path = Vec::new();
        merge_table(&mut merged.table, document.as_table(), index, &mut path, &mut merged.origins);
        merged.layers.push(layer);
    }
    Ok(merged)
}

/// Lays `[defaults]` under every table of `collection` (`services`,
/// `workers`): a key the service writes wins over the default. The
/// provenance of an inherited key stays the defaults' key, which is where
/// one would change it.
pub fn apply_defaults(layered: &mut Layered, defaults_key: &str, collections: &[&str]) {
    let Some(toml::Value::Table(defaults)) = layered.table.remove(defaults_key) else {
        return;
    };
    let default_origins: Vec<(KeyPath, Origin)> = layered
        .origins
        .iter()
        .filter(|(path, _)| path.first().is_some_and(|first| first == defaults_key) && path.len() > 1)
        .map(|(path, origin)| (path[1..].to_vec(), origin.clone()))
        .collect();
    for collection in collections {
        let Some(toml::Value::Table(items)) = layered.table.get_mut(*collection) else {
            continue;
        };
        for (name, item) in items.iter_mut() {
            let toml::Value::Table(item) = item else { continue };
            let mut combined = defaults.clone();
            overlay(&mut combined, std::mem::take(item));
            *item = combined;
            for (rest, origin) in &default_origins {
                let mut path = vec![(*collection).to_owned(), name.clone()];
                path.extend(rest.iter().cloned());
                layered.origins.entry(path).or_insert_with(|| origin.clone());
            }
        }
    }
}

/// `base` with `top` laid over it: tables merge, everything else replaces.
fn overlay(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(below)), toml::Value::Table(above)) => overlay(below, above),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn record(origins: &mut BTreeMap<KeyPath, Origin>, path: &[String], origin: Origin) {
    // A replaced value takes its children's provenance with it: an array or
    // scalar from a later layer owns its whole subtree.
    origins.retain(|existing, _| !(existing.len() > path.len() && existing.starts_with(path)));
    origins.insert(path.to_vec(), origin);
}

fn merge_table(
    into: &mut toml::Table,
    table: &toml_edit::Table,
    layer: usize,
    path: &mut Vec<String>,
    origins: &mut BTreeMap<KeyPath, Origin>,
) {
    for (key, item) in table.iter() {
        let key_span = table.key(key).and_then(Key::span);
        path.push(key.to_owned());
        merge_item(into, key, item, key_span, layer, path, origins);
        path.pop();
    }
}

fn merge_inline(
    into: &mut toml::Table,
    table: &toml_edit::InlineTable,
    layer: usize,
    path: &mut Vec<String>,
    origins: &mut BTreeMap<KeyPath, Origin>,
) {
    for (key, value) in table.iter() {
        let key_span = table.key(key).and_then(Key::span);
        path.push(key.to_owned());
        merge_value(into, key, value, key_span, layer, path, origins);
        path.pop();
    }
}

fn merge_item(
    into: &mut toml::Table,
    key: &str,
    item: &Item,
    key_span: Option<Range<usize>>,
    layer: usize,
    path: &mut Vec<String>,
    origins: &mut BTreeMap<KeyPath, Origin>,
) {
    match item {
        Item::None => {}
        Item::Value(value) => merge_value(into, key, value, key_span, layer, path, origins),
        Item::Table(table) => {
            if !origins.contains_key(path.as_slice()) || !matches!(into.get(key), Some(toml::Value::Table(_))) {
                record(origins, path, Origin { layer, key: key_span.clone(), value: table.span().or(key_span) });
            }
            let child = table_slot(into, key);
            merge_table(child, table, layer, path, origins);
        }
        Item::ArrayOfTables(array) => {
            record(origins, path, Origin { layer, key: key_span, value: array.span() });
            let mut values = Vec::new();
            for (index, table) in array.iter().enumerate() {
                let mut child = toml::Table::new();
                path.push(index.to_string());
                record(origins, path, Origin { layer, key: table.span(), value: table.span() });
                merge_table(&mut child, table, layer, path, origins);
                path.pop();
                values.push(toml::Value::Table(child));
            }
            into.insert(key.to_owned(), toml::Value::Array(values));
        }
    }
}

fn merge_value(
    into: &mut toml::Table,
    key: &str,
    value: &Value,
    key_span: Option<Range<usize>>,
    layer: usize,
    path: &mut Vec<String>,
    origins: &mut BTreeMap<KeyPath, Origin>,
) {
    match value {
        Value::InlineTable(table) => {
            if !matches!(into.get(key), Some(toml::Value::Table(_))) || !origins.contains_key(path.as_slice()) {
                record(origins, path, Origin { layer, key: key_span, value: table.span() });
            }
            let child = table_slot(into, key);
            merge_inline(child, table, layer, path, origins);
        }
        other => {
            record(origins, path, Origin { layer, key: key_span, value: other.span() });
            if let Value::Array(array) = other {
                for (index, element) in array.iter().enumerate() {
                    path.push(index.to_string());
                    origins.insert(path.clone(), Origin { layer, key: element.span(), value: element.span() });
                    path.pop();
                }
            }
            into.insert(key.to_owned(), plain(other));
        }
    }
}

/// The table at `key`, replacing whatever non-table value was there.
fn table_slot<'a>(into: &'a mut toml::Table, key: &str) -> &'a mut toml::Table {
    if !matches!(into.get(key), Some(toml::Value::Table(_))) {
        into.insert(key.to_owned(), toml::Value::Table(toml::Table::new()));
    }
    match into.get_mut(key) {
        Some(toml::Value::Table(table)) => table,
        _ => unreachable!("a table was just inserted"),
    }
}

/// A toml_edit value as a plain toml value.
fn plain(value: &Value) -> toml::Value {
    match value {
        Value::String(s) => toml::Value::String(s.value().clone()),
        Value::Integer(i) => toml::Value::Integer(*i.value()),
        Value::Float(f) => toml::Value::Float(*f.value()),
        Value::Boolean(b) => toml::Value::Boolean(*b.value()),
        Value::Datetime(d) => {
            toml::Value::String(d.value().to_string()) // environment files have no dates; keep it a string
        }
        Value::Array(array) => toml::Value::Array(array.iter().map(plain).collect()),
        Value::InlineTable(table) => {
            toml::Value::Table(table.iter().map(|(key, value)| (key.to_owned(), plain(value))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str, text: &str) -> Layer {
        Layer { path: PathBuf::from(name), text: text.to_owned() }
    }

    fn path(dotted: &str) -> KeyPath {
        dotted.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn later_layers_override_keys_and_tables_merge() {
        let merged = merge(vec![
            layer("base.toml", "[a]\nx = 1\ny = [1, 2]\n[a.inner]\nz = true\n"),
            layer("env.toml", "[a]\ny = [3]\ninner = { w = 'w' }\n"),
        ])
        .unwrap();
        let a = merged.table["a"].as_table().unwrap();
        assert_eq!(a["x"].as_integer(), Some(1));
        assert_eq!(a["y"].as_array().unwrap().len(), 1);
        assert_eq!(a["inner"]["z"].as_bool(), Some(true));
        assert_eq!(a["inner"]["w"].as_str(), Some("w"));
        assert_eq!(merged.position(&path("a.x"), true).to_string(), "base.toml:2:1");
        assert_eq!(merged.position(&path("a.y"), false).to_string(), "env.toml:2:5");
        assert_eq!(merged.position(&path("a.inner.w"), true).to_string(), "env.toml:3:11");
        // A missing key is placed at its nearest written ancestor.
        assert_eq!(merged.position(&path("a.inner.missing"), true).file, PathBuf::from("base.toml"));
    }

    #[test]
    fn defaults_fill_in_what_an_item_does_not_say_and_keep_their_origin() {
        let mut merged = merge(vec![layer(
            "base.toml",
            "[defaults]\nport = 1\nreplicas = { min = 1, max = 2 }\n[services.a]\nreplicas = { max = 5 }\n",
        )])
        .unwrap();
        apply_defaults(&mut merged, "defaults", &["services", "workers"]);
        let a = &merged.table["services"]["a"];
        assert_eq!(a["port"].as_integer(), Some(1));
        assert_eq!(a["replicas"]["min"].as_integer(), Some(1));
        assert_eq!(a["replicas"]["max"].as_integer(), Some(5));
        assert!(!merged.table.contains_key("defaults"));
        assert_eq!(merged.position(&path("services.a.port"), true).line, 2);
        assert_eq!(merged.position(&path("services.a.replicas.max"), true).line, 5);
    }

    #[test]
    fn a_syntax_error_names_the_file_and_line() {
        let err = merge(vec![layer("base.toml", "a = 1\n"), layer("env.toml", "x = 1\nx = 2\n")]).unwrap_err();
        assert_eq!(err.position.to_string(), "env.toml:2:1");
        assert!(err.message.contains("duplicate key"), "{}", err.message);
    }
}

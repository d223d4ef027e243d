//! Reading environment files as layers: `base.toml`, then `<env>.toml` on
//! top, each file's `[defaults]` laid under every service and worker as it
//! comes ([`merge_with_defaults`]), into one TOML table, while remembering
//! for every key which file and line it came from.
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
#[cfg(test)]
pub fn merge(layers: Vec<Layer>) -> Result<Layered, SyntaxError> {
    merge_layers(layers, None)
}

/// Parses and merges the layers in order, laying the table `defaults_key`
/// (`[defaults]`) under every item of `collections` (`[services.X]`,
/// `[workers.X]`) layer by layer. For an item, from weakest to strongest:
///
/// 1. the base's `[defaults]`,
/// 2. the base's `[services.X]`,
/// 3. the environment's `[defaults]`,
/// 4. the environment's `[services.X]`
///
/// (and so on for further layers): what a file says of every item outranks
/// what an earlier file says of one, and a file's own item outranks its
/// defaults. So `replicas` in staging's `[defaults]` reaches a service whose
/// replicas the base names, as a reader of staging's file expects. The
/// provenance of an inherited key stays the defaults' key, which is where
/// one would change it. The merged table has no `defaults_key`.
pub fn merge_with_defaults(
    layers: Vec<Layer>,
    defaults_key: &str,
    collections: &[&str],
) -> Result<Layered, SyntaxError> {
    merge_layers(layers, Some((defaults_key, collections)))
}

type Origins = BTreeMap<KeyPath, Origin>;

fn merge_layers(layers: Vec<Layer>, defaults: Option<(&str, &[&str])>) -> Result<Layered, SyntaxError> {
    let mut merged = Layered { table: toml::Table::new(), origins: BTreeMap::new(), layers: Vec::new() };
    // The defaults of the layers so far, keyed without `defaults_key`.
    let (mut all_defaults, mut all_default_origins) = (toml::Table::new(), Origins::new());
    for (index, layer) in layers.into_iter().enumerate() {
        let document = match ImDocument::parse(layer.text.as_str()) {
            Ok(document) => document,
            Err(err) => {
                let (line, column) = line_and_column(&layer.text, err.span().map_or(0, |span| span.start));
                let message = err.message().trim().to_owned();
                return Err(SyntaxError { position: Position { file: layer.path, line, column }, message });
            }
        };
        let (mut own, mut own_origins) = (toml::Table::new(), Origins::new());
        merge_table(&mut own, document.as_table(), index, &mut Vec::new(), &mut own_origins);
        if let Some((defaults_key, collections)) = defaults {
            if let Some(toml::Value::Table(layer_defaults)) = own.remove(defaults_key) {
                let default_origins = subtree(&own_origins, &[defaults_key.to_owned()]);
                // Kept under `defaults_key` too, though the merged table has
                // none: a rule about what one file's defaults say (which an
                // environment's may not, validate.rs) needs to know the file.
                for (path, origin) in
                    own_origins.iter().filter(|(path, _)| path.first().is_some_and(|first| first == defaults_key))
                {
                    merged.origins.insert(path.clone(), origin.clone());
                }
                // This layer's defaults outrank what earlier layers said of
                // each item...
                for collection in collections {
                    let Some(toml::Value::Table(items)) = merged.table.get_mut(*collection) else { continue };
                    for (name, item) in items.iter_mut() {
                        let toml::Value::Table(item) = item else { continue };
                        let at = [(*collection).to_owned(), name.clone()];
                        overlay(item, layer_defaults.clone(), &at, &default_origins, &mut merged.origins);
                    }
                }
                overlay(&mut all_defaults, layer_defaults, &[], &default_origins, &mut all_default_origins);
            }
            // ...and an item this layer introduces starts from every
            // layer's defaults.
            for collection in collections {
                let Some(toml::Value::Table(items)) = own.get(*collection) else { continue };
                for (name, item) in items {
                    let exists = merged.table.get(*collection).and_then(|items| items.get(name)).is_some();
                    if exists || !item.is_table() {
                        continue;
                    }
                    let slot = table_slot(table_slot(&mut merged.table, collection), name);
                    let at = [(*collection).to_owned(), name.clone()];
                    overlay(slot, all_defaults.clone(), &at, &all_default_origins, &mut merged.origins);
                }
            }
        }
        overlay(&mut merged.table, own, &[], &own_origins, &mut merged.origins);
        merged.layers.push(layer);
    }
    Ok(merged)
}

/// The origins under `prefix`, keyed by the rest of their path.
fn subtree(origins: &Origins, prefix: &[String]) -> Origins {
    origins
        .iter()
        .filter(|(path, _)| path.len() > prefix.len() && path.starts_with(prefix))
        .map(|(path, origin)| (path[prefix.len()..].to_vec(), origin.clone()))
        .collect()
}

/// `base` (at path `at`) with `top` laid over it: tables merge, everything
/// else replaces, and the provenance follows (`top_origins` is keyed
/// relative to `top`).
fn overlay(base: &mut toml::Table, top: toml::Table, at: &[String], top_origins: &Origins, origins: &mut Origins) {
    for (key, value) in top {
        let mut path = at.to_vec();
        path.push(key.clone());
        let relative = vec![key.clone()];
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(below)), toml::Value::Table(above)) => {
                if !origins.contains_key(&path)
                    && let Some(origin) = top_origins.get(&relative)
                {
                    origins.insert(path.clone(), origin.clone());
                }
                overlay(below, above, &path, &subtree(top_origins, &relative), origins);
            }
            (_, value) => {
                // A replaced value takes its children's provenance with it.
                origins.retain(|existing, _| !existing.starts_with(&path));
                if let Some(origin) = top_origins.get(&relative) {
                    origins.insert(path.clone(), origin.clone());
                }
                for (rest, origin) in subtree(top_origins, &relative) {
                    let mut full = path.clone();
                    full.extend(rest);
                    origins.insert(full, origin);
                }
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
        let merged = merge_with_defaults(
            vec![layer(
                "base.toml",
                "[defaults]\nport = 1\nreplicas = { min = 1, max = 2 }\n[services.a]\nreplicas = { max = 5 }\n",
            )],
            "defaults",
            &["services", "workers"],
        )
        .unwrap();
        let a = &merged.table["services"]["a"];
        assert_eq!(a["port"].as_integer(), Some(1));
        assert_eq!(a["replicas"]["min"].as_integer(), Some(1));
        assert_eq!(a["replicas"]["max"].as_integer(), Some(5));
        assert!(!merged.table.contains_key("defaults"));
        assert_eq!(merged.position(&path("services.a.port"), true).line, 2);
        assert_eq!(merged.position(&path("services.a.replicas.max"), true).line, 5);
    }

    /// Staging's `[defaults] replicas` once lost to the base's
    /// `[services.transaction] replicas`, so staging autoscaled the
    /// transaction service like prod.
    #[test]
    fn an_environments_defaults_outrank_the_bases_items_and_its_own_items_outrank_both() {
        let base = "[defaults]\nreplicas = { min = 2, max = 10 }\nport = 1\n\
                    [services.pinned]\nreplicas = { min = 3, max = 10 }\n\
                    [services.plain]\nport = 2\n";
        let env = "[defaults]\nreplicas = { min = 2, max = 4 }\n\
                   [services.own]\nreplicas = { max = 6 }\n\
                   [services.plain]\nreplicas = { min = 1 }\n";
        let merged =
            merge_with_defaults(vec![layer("base.toml", base), layer("env.toml", env)], "defaults", &["services"])
                .unwrap();
        let replicas = |name: &str| {
            let r = &merged.table["services"][name]["replicas"];
            (r["min"].as_integer().unwrap(), r["max"].as_integer().unwrap())
        };
        // The environment's defaults win over what the base says of one service...
        assert_eq!(replicas("pinned"), (2, 4));
        assert_eq!(merged.position(&path("services.pinned.replicas.max"), true).to_string(), "env.toml:2:23");
        // ...the environment's own service wins over its defaults, key by key...
        assert_eq!(replicas("plain"), (1, 4));
        assert_eq!(merged.position(&path("services.plain.replicas.min"), true).to_string(), "env.toml:6:14");
        // ...a service the environment introduces starts from every layer's defaults...
        assert_eq!(replicas("own"), (2, 6));
        assert_eq!(merged.table["services"]["own"]["port"].as_integer(), Some(1));
        // ...and what no environment layer mentions stays the base's.
        assert_eq!(merged.table["services"]["plain"]["port"].as_integer(), Some(2));
        assert_eq!(merged.position(&path("services.pinned.port"), true).to_string(), "base.toml:3:1");
    }

    #[test]
    fn a_syntax_error_names_the_file_and_line() {
        let err = merge(vec![layer("base.toml", "a = 1\n"), layer("env.toml", "x = 1\nx = 2\n")]).unwrap_err();
        assert_eq!(err.position.to_string(), "env.toml:2:1");
        assert!(err.message.contains("duplicate key"), "{}", err.message);
    }
}

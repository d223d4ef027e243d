//! What the `freedumb` binary can run: the `SERVICES` and `WORKERS` lists
//! of `services/freedumb/src/registry.rs`.
//!
//! An enabled service that the binary cannot serve would crash-loop in every
//! pod, so loading an environment refuses it. xtask never links the service
//! crates, so it reads the registry's source instead: each entry is
//! `&<crate>::<Name>Service` or `&<crate>::<Name>Worker`, and the target is
//! `<Name>` in kebab case (`AuthService` → `auth`, `InvestmentPriceWorker` →
//! `investment-price`), which is the name the type gives itself. A test
//! compares the result with what `freedumb targets` prints, so this reading
//! cannot drift unnoticed.

use std::fs;
use std::path::Path;

use anyhow::{Context, bail};

/// The registry, relative to the project root.
pub const REGISTRY: &str = "services/freedumb/src/registry.rs";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    pub services: Vec<String>,
    pub workers: Vec<String>,
}

impl Targets {
    pub fn of_project(root: &Path) -> anyhow::Result<Self> {
        let path = root.join(REGISTRY);
        let source = fs::read_to_string(&path).with_context(|| format!("failed to read {}", path.display()))?;
        Self::from_registry(&source).with_context(|| format!("failed to read {}", path.display()))
    }

    pub fn from_registry(source: &str) -> anyhow::Result<Self> {
        Ok(Targets {
            services: list(source, "SERVICES", "Service")?.unwrap_or_default(),
            // The registry has had no workers list at times; none then.
            workers: list(source, "WORKERS", "Worker")?.unwrap_or_default(),
        })
    }

    /// Every target, for tests that need no registry.
    #[cfg(test)]
    pub fn everything() -> Self {
        let names = |list: &[&str]| list.iter().map(|&name| name.to_owned()).collect();
        Targets {
            services: names(&[
                "ai",
                "analytics",
                "auth",
                "budget",
                "investment",
                "notification",
                "transaction",
                "websocket",
            ]),
            workers: names(&["investment-price", "notification", "recurring"]),
        }
    }
}

/// The target names in the `static NAME: ... = &[...];` list, or `None`
/// when there is no such list.
fn list(source: &str, name: &str, suffix: &str) -> anyhow::Result<Option<Vec<String>>> {
    let Some(start) = source.find(&format!("static {name}:")) else {
        return Ok(None);
    };
    let rest = &source[start..];
    // `= &[` may be split over lines by rustfmt.
    let Some(list) = rest.split_once('=').and_then(|(_, value)| value.trim_start().strip_prefix("&[")) else {
        bail!("`static {name}` is not followed by `= &[`");
    };
    let Some(end) = list.find("];") else {
        bail!("`static {name}` has no closing `];`");
    };
    let mut names = Vec::new();
    for entry in list[..end].split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
        let type_name = entry.rsplit("::").next().unwrap_or(entry).trim_start_matches('&');
        let Some(stem) = type_name.strip_suffix(suffix).filter(|stem| !stem.is_empty()) else {
            bail!(
                "cannot read the {name} entry `{entry}`: expected `&crate::<Name>{suffix}`; update xtask/src/environment/targets.rs"
            );
        };
        names.push(kebab(stem));
    }
    Ok(Some(names))
}

/// `InvestmentPrice` → `investment-price`.
fn kebab(camel: &str) -> String {
    let mut out = String::new();
    for (index, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if index > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_lists_auth_at_least() {
        let targets = Targets::of_project(&crate::project_root()).unwrap();
        assert!(targets.services.iter().any(|name| name == "auth"), "{targets:?}");
    }

    #[test]
    fn registry_entries_become_target_names() {
        let source = "pub static SERVICES: &[&dyn Service] =\n    &[\n    &freedumb_auth::AuthService,\n    &freedumb_transaction::TransactionService,\n];\n\
                      pub static WORKERS: &[&dyn Service] = &[&freedumb_transaction::RecurringWorker, &x::InvestmentPriceWorker];";
        let targets = Targets::from_registry(source).unwrap();
        assert_eq!(targets.services, ["auth", "transaction"]);
        assert_eq!(targets.workers, ["recurring", "investment-price"]);
        let one_line = "pub static SERVICES: &[&dyn Service] = &[&freedumb_auth::AuthService];";
        assert_eq!(Targets::from_registry(one_line).unwrap().workers, Vec::<String>::new());
        assert!(Targets::from_registry("pub static SERVICES: &[&dyn Service] = &[&other::X];").is_err());
    }

    /// The registry reading agrees with the binary itself. The workspace's
    /// tests build `freedumb` (its integration tests run it) before any test
    /// runs, so under `cargo xtask test` it is always there and fresh.
    #[test]
    fn the_registry_reading_matches_freedumb_targets() {
        let root = crate::project_root();
        let binary = crate::freedumb_debug_binary(&root);
        let modified = |path: &Path| fs::metadata(path).and_then(|m| m.modified()).ok();
        let fresh = match (modified(&binary), modified(&root.join(REGISTRY))) {
            (Some(built), Some(edited)) => built >= edited,
            _ => false,
        };
        assert!(
            fresh,
            "{} is missing or older than {REGISTRY}; run `cargo build -p freedumb` (cargo xtask test does)",
            binary.display()
        );
        let output =
            std::process::Command::new(&binary).arg("targets").output().expect("failed to run freedumb targets");
        assert!(output.status.success(), "freedumb targets failed: {output:?}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        // `NAME port N schema S`, with `(worker: ...)` after a worker.
        let mut listed = Targets { services: Vec::new(), workers: Vec::new() };
        for line in stdout.lines() {
            let Some(name) = line.split_whitespace().next().filter(|name| *name != "all") else { continue };
            if line.contains("worker") {
                listed.workers.push(name.to_owned());
            } else {
                listed.services.push(name.to_owned());
            }
        }
        let read = Targets::of_project(&root).unwrap();
        assert_eq!(
            read,
            listed,
            "{REGISTRY} reads differently from what `{} targets` lists: fix Targets::from_registry",
            binary.display()
        );
    }
}

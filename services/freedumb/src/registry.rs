//! Every service this binary can run, in the order they start.
//!
//! This list is the only place that knows all services (as Loki's
//! `modules.go` is). A new service is a new crate implementing
//! [`freedumb_kit::Service`] plus one line here; `all` picks it up.

use freedumb_kit::Service;

pub static SERVICES: &[&dyn Service] = &[&freedumb_auth::AuthService];

/// The meta-target that stands for every service.
pub const ALL: &str = "all";

/// Resolves target names (`auth`, `all`, comma lists) to services, in
/// registry order and without duplicates.
pub fn resolve(targets: &[String]) -> Result<Vec<&'static dyn Service>, String> {
    let mut wanted = Vec::new();
    for name in targets.iter().flat_map(|t| t.split(',')).map(str::trim).filter(|t| !t.is_empty()) {
        if name == ALL {
            wanted.extend(SERVICES.iter().map(|s| s.name()));
        } else if SERVICES.iter().any(|s| s.name() == name) {
            wanted.push(SERVICES.iter().find(|s| s.name() == name).map(|s| s.name()).unwrap_or(name));
        } else {
            return Err(format!("unknown target `{name}`; targets are: {}", names().join(", ")));
        }
    }
    if wanted.is_empty() {
        return Err(format!("no target given; targets are: {}", names().join(", ")));
    }
    Ok(SERVICES.iter().copied().filter(|s| wanted.contains(&s.name())).collect())
}

/// `all` and every service name.
pub fn names() -> Vec<&'static str> {
    std::iter::once(ALL).chain(SERVICES.iter().map(|s| s.name())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_of(targets: &[&str]) -> Result<Vec<&'static str>, String> {
        resolve(&targets.iter().map(|t| t.to_string()).collect::<Vec<_>>())
            .map(|s| s.iter().map(|s| s.name()).collect())
    }

    #[test]
    fn all_means_every_service_once() {
        assert_eq!(names_of(&["all", "auth"]).unwrap(), SERVICES.iter().map(|s| s.name()).collect::<Vec<_>>());
    }

    #[test]
    fn comma_lists_are_accepted() {
        assert_eq!(names_of(&["auth,"]).unwrap(), vec!["auth"]);
    }

    #[test]
    fn an_unknown_target_lists_the_known_ones() {
        let err = names_of(&["ledger"]).unwrap_err();
        assert!(err.contains("unknown target `ledger`") && err.contains("all, auth"), "{err}");
    }
}

//! Every service this binary can run, in the order they start.
//!
//! This list is the only place that knows all services (as Loki's
//! `modules.go` is). A new service is a new crate implementing
//! [`freedumb_kit::Service`] plus one line here; `all` picks it up.

use freedumb_kit::Service;

pub static SERVICES: &[&dyn Service] = &[
    &freedumb_auth::AuthService,
    &freedumb_transaction::TransactionService,
    &freedumb_budget::BudgetService,
    &freedumb_investment::InvestmentService,
    &freedumb_analytics::AnalyticsService,
];

/// Background workers: no routes of their own, run with `freedumb worker
/// NAME` (and by `serve all`). They use the schemas of the services above.
pub static WORKERS: &[&dyn Service] =
    &[&freedumb_transaction::RecurringWorker, &freedumb_investment::InvestmentPriceWorker];

/// The meta-target that stands for every service.
pub const ALL: &str = "all";

/// Resolves `serve` targets (`auth`, `all`, comma lists) to services, in
/// registry order and without duplicates. `all` is every service and every
/// worker: the whole platform in one process.
pub fn resolve(targets: &[String]) -> Result<Vec<&'static dyn Service>, String> {
    resolve_in(SERVICES, "target", targets, true)
}

/// Resolves `worker` names.
pub fn resolve_workers(names: &[String]) -> Result<Vec<&'static dyn Service>, String> {
    resolve_in(WORKERS, "worker", names, false)
}

fn resolve_in(
    registry: &'static [&'static dyn Service],
    what: &str,
    targets: &[String],
    all_allowed: bool,
) -> Result<Vec<&'static dyn Service>, String> {
    let known = || {
        let mut names: Vec<&str> = registry.iter().map(|s| s.name()).collect();
        if all_allowed {
            names.insert(0, ALL);
        }
        names.join(", ")
    };
    let mut wanted: Vec<&'static dyn Service> = Vec::new();
    for name in targets.iter().flat_map(|t| t.split(',')).map(str::trim).filter(|t| !t.is_empty()) {
        if all_allowed && name == ALL {
            wanted.extend(SERVICES.iter().chain(WORKERS));
        } else if let Some(service) = registry.iter().find(|s| s.name() == name) {
            wanted.push(*service);
        } else {
            return Err(format!("unknown {what} `{name}`; {what}s are: {}", known()));
        }
    }
    if wanted.is_empty() {
        return Err(format!("no {what} given; {what}s are: {}", known()));
    }
    // Registry order, each once.
    Ok(SERVICES.iter().chain(WORKERS).copied().filter(|s| wanted.iter().any(|w| w.name() == s.name())).collect())
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
    fn all_means_every_service_and_worker_once() {
        let everything: Vec<_> = SERVICES.iter().chain(WORKERS).map(|s| s.name()).collect();
        assert_eq!(names_of(&["all", "auth"]).unwrap(), everything);
    }

    #[test]
    fn workers_are_not_serve_targets() {
        assert!(names_of(&["recurring"]).is_err());
        assert_eq!(resolve_workers(&["recurring".to_owned()]).unwrap()[0].name(), "recurring");
    }

    #[test]
    fn comma_lists_are_accepted() {
        assert_eq!(names_of(&["auth,"]).unwrap(), vec!["auth"]);
    }

    #[test]
    fn an_unknown_target_lists_the_known_ones() {
        let err = names_of(&["ledger"]).unwrap_err();
        assert!(
            err.contains("unknown target `ledger`")
                && err.contains("all, auth, transaction, budget, investment, analytics"),
            "{err}"
        );
    }
}

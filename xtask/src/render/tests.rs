//! The rendered files: golden copies, determinism, and consistency between
//! the outputs (nginx, compose, Kubernetes) and the model.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

use super::*;
use crate::environment::targets::Targets;
use crate::environment::{Layer, from_layers};
use crate::policy::{at, documents, str_at};

/// Where the golden copies of each environment's render live.
const GOLDEN: &str = "xtask/golden";

fn root() -> PathBuf {
    crate::project_root()
}

fn layer(root: &Path, name: &str) -> Layer {
    let path = environment::path(root, name);
    Layer { path: path.strip_prefix(root).unwrap().to_path_buf(), text: fs::read_to_string(&path).unwrap() }
}

/// Every service and worker of the seed enabled, over environment `name`:
/// what the platform renders once the binary has all of them.
const EVERYTHING: &str = r#"
[services.transaction]
enabled = true
[services.budget]
enabled = true
[services.ai]
enabled = true
[services.investment]
enabled = true
[services.analytics]
enabled = true
[services.notification]
enabled = true
[services.websocket]
enabled = true
[workers.recurring]
enabled = true
[workers.investment-price]
enabled = true
[workers.notification]
enabled = true
"#;

pub fn everything(name: &str) -> Environment {
    everything_and(name, "")
}

/// `everything(name)` with `extra` laid over it.
pub fn everything_and(name: &str, extra: &str) -> Environment {
    let root = root();
    let layers = vec![
        layer(&root, environment::BASE),
        layer(&root, name),
        Layer { path: PathBuf::from("everything.toml"), text: format!("{EVERYTHING}\n{extra}") },
    ];
    from_layers(name, layers, &Targets::everything()).unwrap_or_else(|err| panic!("{err}"))
}

/// A digest of the right form for tests. Made up: no registry has it, and
/// no environment file may carry it.
pub const TEST_DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
pub const TEST_GATEWAY_DIGEST: &str = "sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

/// An environment as the release step leaves it: what `everything(name)`
/// renders, with the (made-up) digests of a pushed release.
pub fn released(name: &str) -> Environment {
    let gateway = if name == "dev" { format!("gateway_digest = \"{TEST_GATEWAY_DIGEST}\"\n") } else { String::new() };
    everything_and(name, &format!("[platform]\ndigest = \"{TEST_DIGEST}\"\n{gateway}"))
}

fn committed(name: &str) -> Environment {
    environment::load(&root(), name).unwrap_or_else(|err| panic!("{err:#}"))
}

/// The committed render of every environment matches a fresh one. Review
/// the diff, then `UPDATE_GOLDEN=1 cargo test -p xtask golden` to accept it.
#[test]
fn golden_files_match_a_fresh_render_of_every_environment() {
    let root = root();
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|value| value == "1");
    let names = environment::names(&root).unwrap();
    assert_eq!(names, ["dev", "local", "prod", "staging", "test", "test-infra"]);
    let mut stale = Vec::new();
    for name in &names {
        let files = render(&root, &committed(name), Upstreams::Deployed).unwrap();
        let dir = root.join(GOLDEN).join(name);
        if update {
            write(&files, &dir).unwrap();
            continue;
        }
        let diff =
            if dir.is_dir() { compare(&files, &dir).unwrap() } else { format!("{} is missing\n", dir.display()) };
        if !diff.is_empty() {
            stale.push(format!("{name}:\n{diff}"));
        }
    }
    assert!(
        stale.is_empty(),
        "the golden files differ from a fresh render:\n{}\nreview the diff; if it is what you meant, run \
         `UPDATE_GOLDEN=1 cargo test -p xtask golden` and commit {GOLDEN}/",
        stale.join("\n")
    );
}

#[test]
fn rendering_twice_gives_byte_identical_files() {
    let root = root();
    for name in environment::names(&root).unwrap() {
        let first = render(&root, &committed(&name), Upstreams::Deployed).unwrap();
        let second = render(&root, &committed(&name), Upstreams::Deployed).unwrap();
        assert_eq!(first, second, "{name}");
    }
    for name in ["dev", "prod"] {
        assert_eq!(
            render(&root, &everything(name), Upstreams::Deployed).unwrap(),
            render(&root, &everything(name), Upstreams::Deployed).unwrap()
        );
    }
}

#[test]
fn each_kind_of_environment_renders_its_own_outputs() {
    let root = root();
    let paths =
        |name: &str| render(&root, &committed(name), Upstreams::Deployed).unwrap().into_keys().collect::<Vec<_>>();
    assert_eq!(paths("local"), [".rendered", "nginx/nginx.conf", "nginx/proxy_params.conf"]);
    let dev = paths("dev");
    for expected in ["docker-compose.yml", ".env.example", "nginx/nginx.conf", "Dockerfile"] {
        assert!(dev.contains(&expected.to_owned()), "{dev:?}");
    }
    assert!(!dev.iter().any(|path| path.starts_with("k8s/")), "{dev:?}");
    let prod = paths("prod");
    for expected in ["k8s/auth-service.yaml", "k8s/ingress.yaml", "k8s/external-secret.yaml", "k8s/kustomization.yaml"]
    {
        assert!(prod.contains(&expected.to_owned()), "{prod:?}");
    }
    assert!(!prod.iter().any(|path| path.starts_with("nginx/") || path == "docker-compose.yml"), "{prod:?}");
}

#[test]
fn every_seed_service_and_worker_renders_when_enabled() {
    let root = root();
    let prod = render(&root, &everything("prod"), Upstreams::Deployed).unwrap();
    for name in [
        "ai-service",
        "analytics-service",
        "auth-service",
        "budget-service",
        "investment-service",
        "notification-service",
        "transaction-service",
        "websocket-service",
        "worker-investment-price",
        "worker-notification",
        "worker-recurring",
    ] {
        assert!(prod.contains_key(&format!("k8s/{name}.yaml")), "{name}");
    }
    let dev = render(&root, &everything("dev"), Upstreams::Deployed).unwrap();
    let compose: Value = serde_yaml::from_str(&dev["docker-compose.yml"]).unwrap();
    for service in ["rabbitmq", "mongodb", "transaction-service", "worker-recurring", "gateway", "migrate"] {
        assert!(!at(&compose, &["services", service]).is_null(), "{service}");
    }
}

/// A disabled service is modelled but never deployed: its pods would
/// crash-loop on an unknown target.
#[test]
fn disabled_services_are_not_deployed_anywhere() {
    let root = root();
    for name in ["dev", "prod", "local"] {
        let environment = committed(name);
        let disabled: Vec<String> = environment
            .model
            .services
            .iter()
            .filter(|(_, w)| !w.enabled)
            .map(|(name, _)| format!("{name}-service"))
            .collect();
        assert!(!disabled.is_empty());
        let files = render(&root, &environment, Upstreams::Deployed).unwrap();
        for (path, text) in &files {
            for service in &disabled {
                assert!(!text.contains(service.as_str()), "{name}: {path} mentions {service}");
            }
        }
    }
}

// ---- consistency between outputs ------------------------------------------

/// (route prefix, service, port) as the nginx configuration routes it,
/// following `proxy_pass` to the upstream's server.
fn nginx_routes(conf: &str) -> BTreeSet<(String, String, u16)> {
    let mut upstreams: BTreeMap<String, String> = BTreeMap::new();
    let mut current_upstream = None;
    let mut current_location: Option<String> = None;
    let mut routes = Vec::new();
    for line in conf.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("upstream ").and_then(|rest| rest.strip_suffix(" {")) {
            current_upstream = Some(name.to_owned());
        } else if let (Some(upstream), Some(server)) = (&current_upstream, line.strip_prefix("server ")) {
            upstreams.insert(upstream.clone(), server.split_whitespace().next().unwrap().to_owned());
            current_upstream = None;
        } else if let Some(regex) = line.strip_prefix("location ~ ^").and_then(|rest| rest.strip_suffix("(?:/|$) {")) {
            current_location = Some(regex.replace("\\.", "."));
        } else if let (Some(prefix), Some(target)) = (&current_location, line.strip_prefix("proxy_pass http://")) {
            routes.push((prefix.clone(), target.trim_end_matches(';').to_owned()));
            current_location = None;
        }
    }
    routes
        .into_iter()
        .map(|(prefix, upstream)| {
            let server = &upstreams[&upstream];
            let (host, port) = server.rsplit_once(':').unwrap();
            (prefix, host.to_owned(), port.parse().unwrap())
        })
        .collect()
}

/// (route prefix, service, port) as the Ingress objects route it, checked
/// against the Service and the Deployment's container port on the way.
fn ingress_routes(files: &Files) -> BTreeSet<(String, String, u16)> {
    let mut ports: BTreeMap<String, u64> = BTreeMap::new();
    let mut container_ports: BTreeMap<String, u64> = BTreeMap::new();
    for (path, text) in files.iter().filter(|(path, _)| path.starts_with("k8s/")) {
        for document in documents(path, text).unwrap() {
            let name = str_at(&document, &["metadata", "name"]).unwrap_or("").to_owned();
            match str_at(&document, &["kind"]) {
                Some("Service") => {
                    ports.insert(name, at(&document, &["spec", "ports"])[0]["port"].as_u64().unwrap());
                }
                Some("Deployment") => {
                    let container = &at(&document, &["spec", "template", "spec", "containers"])[0];
                    container_ports.insert(name, container["ports"][0]["containerPort"].as_u64().unwrap());
                }
                _ => {}
            }
        }
    }
    assert_eq!(ports, container_ports, "every Service port is its Deployment's container port");
    let mut routes = BTreeSet::new();
    if let Some(text) = files.get("k8s/ingress.yaml") {
        for document in documents("k8s/ingress.yaml", text).unwrap() {
            for rule in at(&document, &["spec", "rules"]).as_sequence().unwrap() {
                for path in at(rule, &["http", "paths"]).as_sequence().unwrap() {
                    assert_eq!(str_at(path, &["pathType"]), Some("Prefix"));
                    let service = str_at(path, &["backend", "service", "name"]).unwrap().to_owned();
                    let port = at(path, &["backend", "service", "port", "number"]).as_u64().unwrap();
                    assert_eq!(ports.get(&service), Some(&port), "the Ingress port of {service} is its Service's");
                    routes.insert((str_at(path, &["path"]).unwrap().to_owned(), service, port as u16));
                }
            }
        }
    }
    routes
}

/// The compose services and the port each listens on (its PORT).
fn compose_ports(compose: &str) -> BTreeMap<String, u16> {
    let compose: Value = serde_yaml::from_str(compose).unwrap();
    at(&compose, &["services"])
        .as_mapping()
        .unwrap()
        .iter()
        .filter_map(|(name, service)| {
            let port = str_at(service, &["environment", "PORT"])?;
            Some((name.as_str().unwrap().to_owned(), port.parse().unwrap()))
        })
        .collect()
}

fn model_routes(environment: &Environment) -> BTreeSet<(String, String, u16)> {
    environment
        .services()
        .flat_map(|(name, w)| w.routes.keys().map(move |prefix| (prefix.clone(), format!("{name}-service"), w.port)))
        .collect()
}

#[test]
fn every_public_route_has_the_same_prefix_service_and_port_in_nginx_the_ingress_and_compose() {
    let root = root();
    for (dev, prod) in [(committed("dev"), committed("prod")), (everything("dev"), everything("prod"))] {
        let dev_files = render(&root, &dev, Upstreams::Deployed).unwrap();
        let prod_files = render(&root, &prod, Upstreams::Deployed).unwrap();
        let expected = model_routes(&prod);
        assert!(!expected.is_empty());
        assert_eq!(model_routes(&dev), expected, "dev and prod deploy the same routes");

        let nginx = nginx_routes(&dev_files["nginx/nginx.conf"]);
        assert_eq!(nginx, expected, "nginx routes");
        let ingress = ingress_routes(&prod_files);
        assert_eq!(ingress, expected, "Ingress routes");
        let compose = compose_ports(&dev_files["docker-compose.yml"]);
        for (prefix, service, port) in &nginx {
            assert_eq!(
                compose.get(service),
                Some(port),
                "{prefix}: nginx's upstream {service}:{port} is a compose service on that port"
            );
        }
    }
    // Locally one process serves every route, on the platform port.
    let local = committed("local");
    let files = render(&root, &local, Upstreams::Deployed).unwrap();
    let routed: BTreeSet<(String, u16)> =
        nginx_routes(&files["nginx/nginx.conf"]).into_iter().map(|(prefix, _, port)| (prefix, port)).collect();
    let expected: BTreeSet<(String, u16)> =
        model_routes(&local).into_iter().map(|(prefix, _, _)| (prefix, 3000)).collect();
    assert_eq!(routed, expected);
}

/// The variables each service reads (services/kit/src/config.rs and each
/// service's own settings). Kept here, apart from the model, so that a
/// model that forgets one fails this test.
fn reads(role_and_name: &str) -> Vec<&'static str> {
    let mut vars = vec![
        "DATABASE_URL",
        "DEPLOYMENT",
        "ENVIRONMENT",
        "HOST",
        "LOG_FORMAT",
        "LOG_LEVEL",
        "PORT",
        "REDIS_KEY_PREFIX",
        "REDIS_URL",
        "REQUEST_TIMEOUT_SECS",
        "SERVICE_NAME",
        "SHUTDOWN_TIMEOUT_SECS",
        "TRUSTED_PROXIES",
    ];
    // Services verify access tokens; workers serve only their probes and
    // run without the key (`Service::authenticates`).
    if role_and_name.ends_with("-service") {
        vars.push("JWT_ACCESS_SECRET");
    }
    vars.extend(match role_and_name {
        // Its relay publishes user.registered.
        "auth-service" => &["JWT_REFRESH_SECRET", "RABBITMQ_URL"][..],
        "transaction-service" => &["ENCRYPTION_KEY", "RABBITMQ_URL"][..],
        "budget-service" => &["RABBITMQ_URL"][..],
        "ai-service" => &["MONGODB_URL", "OPENAI_API_KEY"][..],
        // MARKET_DATA_API_KEY and MARKET_DATA_API_URL are optional: without
        // a key it prices with its offline source (`local`, `test`).
        "investment-service" => &["RABBITMQ_URL"][..],
        // Its consumers; REPORT_* are optional, with defaults.
        "analytics-service" => &["RABBITMQ_URL"][..],
        // Optional too: without a key, the offline simulation.
        "worker-investment-price" => &[][..],
        "notification-service" => &["RABBITMQ_URL", "SENDGRID_API_KEY", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"][..],
        "worker-notification" => &["RABBITMQ_URL"][..],
        _ => &[][..],
    });
    vars
}

#[test]
fn every_variable_a_service_reads_is_supplied_in_every_environment() {
    let root = root();
    for environment in [everything("dev"), committed("dev")] {
        let files = render(&root, &environment, Upstreams::Deployed).unwrap();
        let compose: Value = serde_yaml::from_str(&files["docker-compose.yml"]).unwrap();
        for (name, _) in compose_ports(&files["docker-compose.yml"]) {
            let env = at(&compose, &["services", &name, "environment"]);
            for var in reads(&name) {
                assert!(!at(env, &[var]).is_null(), "dev compose: {name} lacks {var}");
            }
        }
    }
    for environment in [everything("prod"), committed("prod"), committed("staging")] {
        let files = render(&root, &environment, Upstreams::Deployed).unwrap();
        let configmap = &documents("k8s/configmap.yaml", &files["k8s/configmap.yaml"]).unwrap()[0];
        for (path, text) in files.iter().filter(|(path, _)| path.starts_with("k8s/")) {
            for document in documents(path, text).unwrap() {
                if str_at(&document, &["kind"]) != Some("Deployment") {
                    continue;
                }
                let name = str_at(&document, &["metadata", "name"]).unwrap();
                let container = &at(&document, &["spec", "template", "spec", "containers"])[0];
                assert_eq!(str_at(&container["envFrom"][0], &["configMapRef", "name"]), Some("freedumb-config"));
                let listed: BTreeSet<&str> =
                    container["env"].as_sequence().unwrap().iter().filter_map(|var| str_at(var, &["name"])).collect();
                for var in reads(name) {
                    assert!(
                        listed.contains(var) || !at(configmap, &["data", var]).is_null(),
                        "{}: {name} lacks {var}",
                        environment.name
                    );
                }
            }
        }
    }
    let local = committed("local");
    let vars = crate::environment::vars::local_process(&local, 3000, &|_| "x".repeat(64));
    for (service, _) in local.services() {
        for var in reads(&format!("{service}-service")) {
            assert!(vars.iter().any(|(name, _)| name == var), "local: {service} lacks {var}");
        }
    }
}

/// `$(NAME)` in a Kubernetes env value expands only a variable defined
/// earlier in the same list; anything else stays literally `$(NAME)`.
pub fn undefined_references(env: &[Value]) -> Vec<String> {
    let mut defined: BTreeSet<String> = BTreeSet::new();
    let mut problems = Vec::new();
    for var in env {
        let name = str_at(var, &["name"]).unwrap_or("").to_owned();
        if let Some(value) = str_at(var, &["value"]) {
            let mut rest = value;
            while let Some(start) = rest.find("$(") {
                let Some(end) = rest[start..].find(')') else { break };
                let reference = &rest[start + 2..start + end];
                if !defined.contains(reference) {
                    problems.push(format!("{name} refers to $({reference}), which is not defined before it"));
                }
                rest = &rest[start + end..];
            }
        }
        defined.insert(name);
    }
    problems
}

#[test]
fn kubernetes_env_lists_define_every_variable_before_referring_to_it() {
    let root = root();
    for environment in [everything("prod"), committed("staging")] {
        let files = render(&root, &environment, Upstreams::Deployed).unwrap();
        let mut checked = 0;
        for (path, text) in files.iter().filter(|(path, _)| path.starts_with("k8s/")) {
            for document in documents(path, text).unwrap() {
                let pod = at(&document, &["spec", "template", "spec"]);
                for list in ["containers", "initContainers"] {
                    for container in pod[list].as_sequence().into_iter().flatten() {
                        let env = container["env"].as_sequence().unwrap();
                        assert_eq!(undefined_references(env), Vec::<String>::new(), "{path}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked >= 2);
    }
}

/// The seed's own Deployment (section 11.1) fails the same check: it uses
/// $(DATABASE_USER), $(DATABASE_PORT), $(DATABASE_NAME), $(REDIS_HOST) and
/// $(REDIS_PORT), which it never defines, and defines DATABASE_HOST,
/// POSTGRES_PASSWORD and REDIS_PASSWORD after the URLs that use them.
#[test]
fn the_seed_deployment_refers_to_variables_it_never_defines_first() {
    let seed = include_str!("../../fixtures/seed/transaction-service.yaml");
    let deployment = &documents("seed", seed).unwrap()[0];
    let env = at(deployment, &["spec", "template", "spec", "containers"])[0]["env"].as_sequence().unwrap().clone();
    let problems = undefined_references(&env);
    for missing in [
        "DATABASE_USER",
        "POSTGRES_PASSWORD",
        "DATABASE_HOST",
        "DATABASE_PORT",
        "DATABASE_NAME",
        "REDIS_PASSWORD",
        "REDIS_HOST",
        "REDIS_PORT",
    ] {
        assert!(problems.iter().any(|p| p.contains(&format!("$({missing})"))), "{missing}: {problems:?}");
    }
}

#[test]
fn compose_start_up_order_matches_the_kubernetes_probes() {
    let root = root();
    let (dev, prod) = (everything("dev"), everything("prod"));
    let compose: Value =
        serde_yaml::from_str(&render(&root, &dev, Upstreams::Deployed).unwrap()["docker-compose.yml"]).unwrap();
    let prod_files = render(&root, &prod, Upstreams::Deployed).unwrap();
    let workloads = dev
        .services()
        .map(|(name, w)| (format!("{name}-service"), w))
        .chain(dev.workers().map(|(name, w)| (format!("worker-{name}"), w)));
    for (object, workload) in workloads {
        let service = at(&compose, &["services", &object]);
        // Compose gates on the readiness endpoint, as the readiness probe
        // gates traffic.
        let test = service["healthcheck"]["test"].as_sequence().unwrap();
        let url = format!("http://127.0.0.1:{}{}", workload.port, workload.probes.readiness.path);
        assert_eq!(test.last().and_then(Value::as_str), Some(url.as_str()), "{object}");
        // Migrations complete before the service starts (compose), as the
        // init container runs before the container (Kubernetes).
        assert_eq!(str_at(service, &["depends_on", "migrate", "condition"]), Some("service_completed_successfully"));
        for backing in crate::environment::vars::backings_of(workload) {
            assert_eq!(
                str_at(service, &["depends_on", backing.key(), "condition"]),
                Some("service_healthy"),
                "{object}"
            );
        }
        let deployment = documents("k8s", &prod_files[&format!("k8s/{object}.yaml")]).unwrap()[0].clone();
        let pod = at(&deployment, &["spec", "template", "spec"]);
        if object.ends_with("-service") {
            assert_eq!(pod["initContainers"][0]["args"][0].as_str(), Some("migrate"), "{object}");
        }
        let container = &pod["containers"][0];
        assert_eq!(
            str_at(container, &["readinessProbe", "httpGet", "path"]),
            Some(workload.probes.readiness.path.as_str())
        );
        assert_ne!(
            str_at(container, &["livenessProbe", "httpGet", "path"]),
            str_at(container, &["readinessProbe", "httpGet", "path"])
        );
    }
    // The gateway starts once every routed service is ready.
    let gateway = at(&compose, &["services", "gateway", "depends_on"]).as_mapping().unwrap();
    for (name, workload) in dev.services() {
        if !workload.routes.is_empty() {
            let object = Value::from(format!("{name}-service"));
            assert_eq!(str_at(&gateway[&object], &["condition"]), Some("service_healthy"), "{name}");
        }
    }
}

#[test]
fn no_secret_value_is_rendered_for_a_shared_environment() {
    let root = root();
    for name in ["dev", "staging", "prod"] {
        // Prod's policy also wants its images by digest, as released.
        let environment = if name == "prod" { released(name) } else { everything(name) };
        let files = render(&root, &environment, Upstreams::Deployed).unwrap();
        assert_eq!(crate::policy::check(&environment, &files).unwrap(), Vec::new(), "{name}");
        for (path, text) in &files {
            assert!(!text.contains("kind: Secret\n"), "{name}: {path} renders a Secret");
        }
        if let Some(compose) = files.get("docker-compose.yml") {
            let compose: Value = serde_yaml::from_str(compose).unwrap();
            for (service, definition) in at(&compose, &["services"]).as_mapping().unwrap() {
                for (var, value) in definition["environment"].as_mapping().into_iter().flatten() {
                    let (var, value) = (var.as_str().unwrap(), value.as_str().unwrap());
                    if var.contains("SECRET")
                        || var.contains("PASSWORD")
                        || var.ends_with("_KEY")
                        || var.contains("TOKEN")
                    {
                        assert!(value.starts_with("${") && value.contains(":?"), "{service:?}: {var} = {value}");
                    }
                }
            }
        }
    }
}

#[test]
fn the_termination_grace_period_outlasts_the_drain() {
    let root = root();
    let environment = committed("prod");
    let files = render(&root, &environment, Upstreams::Deployed).unwrap();
    let deployment = &documents("k8s", &files["k8s/auth-service.yaml"]).unwrap()[0];
    let pod = at(deployment, &["spec", "template", "spec"]);
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().unwrap();
    let drain = u64::from(environment.model.platform.shutdown_timeout_secs);
    assert!(grace > pre_stop + drain, "grace {grace} ≤ preStop {pre_stop} + drain {drain}");
    // The HPA owns the replica count.
    assert!(at(deployment, &["spec", "replicas"]).is_null());
}

#[test]
fn render_into_a_directory_it_did_not_write_is_refused_and_check_reports_a_diff() {
    let root = root();
    let scratch = crate::scratch::ScratchDir::new("render");
    let foreign = scratch.path().join("gitops");
    fs::create_dir_all(foreign.join(".git")).unwrap();
    fs::write(foreign.join("README.md"), "mine\n").unwrap();
    let files = render(&root, &committed("prod"), Upstreams::Deployed).unwrap();
    let err = write(&files, &foreign).unwrap_err().to_string();
    assert!(err.contains("was not written by `cargo xtask render`"), "{err}");
    assert!(foreign.join("README.md").is_file());

    let out = scratch.path().join("prod");
    write(&files, &out).unwrap();
    assert_eq!(compare(&files, &out).unwrap(), "");
    fs::write(out.join("k8s/namespace.yaml"), "edited\n").unwrap();
    fs::write(out.join("k8s/extra.yaml"), "stray\n").unwrap();
    let diff = compare(&files, &out).unwrap();
    assert!(diff.contains("--- a/k8s/namespace.yaml\n+++ b/k8s/namespace.yaml\n"), "{diff}");
    assert!(diff.contains("-edited\n"), "{diff}");
    assert!(diff.contains("--- a/k8s/extra.yaml\n+++ /dev/null"), "{diff}");
    // Rendering again replaces the directory whole: the stray file goes.
    write(&files, &out).unwrap();
    assert_eq!(compare(&files, &out).unwrap(), "");
}

/// (minReplicas, maxReplicas) of each workload's HorizontalPodAutoscaler,
/// or (replicas, replicas) of a Deployment without one.
fn scaling(files: &Files) -> BTreeMap<String, (u64, u64)> {
    let mut scaling = BTreeMap::new();
    for (path, text) in files.iter().filter(|(path, _)| path.starts_with("k8s/")) {
        for document in documents(path, text).unwrap() {
            let name = str_at(&document, &["metadata", "name"]).unwrap_or("").to_owned();
            match str_at(&document, &["kind"]) {
                Some("HorizontalPodAutoscaler") => {
                    let spec = at(&document, &["spec"]);
                    scaling
                        .insert(name, (spec["minReplicas"].as_u64().unwrap(), spec["maxReplicas"].as_u64().unwrap()));
                }
                Some("Deployment") => {
                    if let Some(replicas) = at(&document, &["spec", "replicas"]).as_u64() {
                        scaling.insert(name, (replicas, replicas));
                    }
                }
                _ => {}
            }
        }
    }
    scaling
}

/// Staging is prod's shape on a smaller scale (its header): its
/// `[defaults] replicas` reaches every service, including the transaction
/// service whose replicas base.toml names; it once autoscaled 3–10 like prod.
#[test]
fn staging_scales_every_service_by_its_own_defaults_and_prod_keeps_its_per_service_replicas() {
    let root = root();
    let staging = scaling(&render(&root, &committed("staging"), Upstreams::Deployed).unwrap());
    assert_eq!(staging["transaction-service"], (2, 4), "staging transaction HPA");
    assert_eq!(staging["auth-service"], (2, 4));
    assert_eq!(staging["budget-service"], (2, 4));
    assert_eq!(staging["worker-recurring"], (1, 1), "one recurring worker, as in prod");
    let prod = scaling(&render(&root, &committed("prod"), Upstreams::Deployed).unwrap());
    assert_eq!(prod["transaction-service"], (3, 10), "prod transaction HPA, from base.toml");
    assert_eq!(prod["auth-service"], (3, 10), "from prod.toml");
    assert_eq!(prod["budget-service"], (2, 10), "base.toml's defaults");
    assert_eq!(prod["worker-recurring"], (1, 1));
}

/// "A smaller scale" for every workload the model has, enabled or not: an
/// environment's [defaults] reaches what base.toml pins (the workers' one
/// replica), so staging must pin them again, and a worker enabled there
/// later must not start at 2–4 replicas where prod runs one.
#[test]
fn staging_never_runs_more_replicas_of_a_workload_than_prod() {
    let (staging, prod) = (committed("staging"), committed("prod"));
    let mut compared = 0;
    for (collection, staging_items, prod_items) in [
        ("services", &staging.model.services, &prod.model.services),
        ("workers", &staging.model.workers, &prod.model.workers),
    ] {
        for (name, small) in staging_items {
            let (small, large) = (&small.replicas, &prod_items[name].replicas);
            assert!(
                small.min <= large.min && small.max <= large.max,
                "{collection}.{name}: staging runs {}–{} replicas, prod {}–{}",
                small.min,
                small.max,
                large.min,
                large.max
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 11, "every seed service and worker");
}

/// The value of the one `name ...;` directive in `conf` (its words after the
/// name), or `None` when there is none.
fn directive<'a>(conf: &'a str, name: &str) -> Option<&'a str> {
    let mut found = conf.lines().filter_map(|line| {
        let line = line.trim();
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        Some(rest.trim_end_matches(';').trim())
    });
    let first = found.next();
    assert!(found.next().is_none(), "`{name}` appears twice");
    first
}

/// Mozilla's "intermediate" TLS (guidelines 6.0, for nginx 1.22 and
/// OpenSSL 3.0): the seed's `HIGH:!aNULL:!MD5` admitted TLS 1.2 suites
/// without forward secrecy (static RSA) and CBC suites. The running
/// gateway's handshakes are in check.rs.
#[test]
fn the_gateway_speaks_mozillas_intermediate_tls() {
    let root = root();
    let dev = committed("dev");
    assert!(dev.model.gateway.tls, "dev terminates TLS");
    let conf = &render(&root, &dev, Upstreams::Deployed).unwrap()["nginx/nginx.conf"];
    let expected = [
        ("ssl_protocols", "TLSv1.2 TLSv1.3"),
        ("ssl_ecdh_curve", "X25519:prime256v1:secp384r1"),
        (
            "ssl_ciphers",
            "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:\
             ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305",
        ),
        ("ssl_prefer_server_ciphers", "off"),
        ("ssl_session_timeout", "1d"),
        ("ssl_session_cache", "shared:SSL:10m"),
        ("ssl_session_tickets", "off"),
    ];
    for (name, value) in expected {
        assert_eq!(directive(conf, name), Some(value), "{name}");
    }
    // Every suite for TLS 1.2 has ECDHE key exchange and an AEAD cipher.
    for suite in directive(conf, "ssl_ciphers").unwrap().split(':') {
        assert!(suite.starts_with("ECDHE-"), "{suite}: no forward secrecy");
        assert!(suite.contains("-GCM-") || suite.ends_with("-CHACHA20-POLY1305"), "{suite}: not AEAD");
    }
    // No DHE suite, so no DH parameters are needed (nginx would skip DHE without them).
    assert_eq!(directive(conf, "ssl_dhparam"), None);
    // Without TLS there is nothing of it.
    let local = &render(&root, &committed("local"), Upstreams::Deployed).unwrap()["nginx/nginx.conf"];
    assert_eq!(directive(local, "ssl_ciphers"), None);
}

/// A worker holds up to worker_connections sockets (a proxied request two)
/// plus files; with the soft limit it inherits (1024 on many systems) the
/// gateway fails near 500 clients, so it raises its own.
#[test]
fn every_gateway_may_open_twice_its_connections_in_files_and_more() {
    let root = root();
    let mut gateways = 0;
    for name in environment::names(&root).unwrap() {
        let files = render(&root, &committed(&name), Upstreams::Deployed).unwrap();
        let Some(conf) = files.get("nginx/nginx.conf") else { continue };
        let number =
            |name: &str| -> u64 { directive(conf, name).unwrap_or_else(|| panic!("no {name}")).parse().unwrap() };
        let (files_limit, connections) = (number("worker_rlimit_nofile"), number("worker_connections"));
        assert!(files_limit > 2 * connections, "{name}: worker_rlimit_nofile {files_limit}, connections {connections}");
        gateways += 1;
    }
    assert_eq!(gateways, 4, "local, dev, test, test-infra");
}

/// A pinned release renders `image:tag@digest` wherever one of our images
/// runs (every container and init container in Kubernetes; every service,
/// the migration and the gateway in compose, which then pulls instead of
/// expecting a local build), while a build still tags `image:tag`.
#[test]
fn a_digest_names_every_image_of_ours_wherever_it_runs() {
    let root = root();
    let files = render(&root, &released("prod"), Upstreams::Deployed).unwrap();
    let ours = format!("ghcr.io/freedumb/freedumb:0.1.0@{TEST_DIGEST}");
    let mut containers = 0;
    for (path, text) in files.iter().filter(|(path, _)| path.starts_with("k8s/")) {
        for document in documents(path, text).unwrap() {
            let pod = at(&document, &["spec", "template", "spec"]);
            for list in ["containers", "initContainers"] {
                for container in at(pod, &[list]).as_sequence().into_iter().flatten() {
                    assert_eq!(str_at(container, &["image"]), Some(ours.as_str()), "{path}");
                    containers += 1;
                }
            }
        }
    }
    assert!(containers >= 11, "{containers} containers");
    assert!(files["Dockerfile"].contains("--target runtime -t ghcr.io/freedumb/freedumb:0.1.0 ."));

    let files = render(&root, &released("dev"), Upstreams::Deployed).unwrap();
    let compose: Value = serde_yaml::from_str(&files["docker-compose.yml"]).unwrap();
    let mut ours_seen = 0;
    for (name, service) in at(&compose, &["services"]).as_mapping().unwrap() {
        let (name, image) = (name.as_str().unwrap(), str_at(service, &["image"]).unwrap());
        let expected = match name {
            "postgres" | "redis" | "rabbitmq" | "mongodb" => continue,
            "gateway" => format!("ghcr.io/freedumb/freedumb-gateway:dev@{TEST_GATEWAY_DIGEST}"),
            _ => format!("ghcr.io/freedumb/freedumb:dev@{TEST_DIGEST}"),
        };
        assert_eq!(image, expected, "{name}");
        assert_eq!(str_at(service, &["pull_policy"]), Some("missing"), "{name}");
        ours_seen += 1;
    }
    assert!(ours_seen >= 12, "{ours_seen}");
    assert!(files["docker-compose.yml"].contains("compose pulls them from the registry when missing"));

    // Unpinned, as committed: tags only, built on this machine.
    let files = render(&root, &committed("dev"), Upstreams::Deployed).unwrap();
    let compose: Value = serde_yaml::from_str(&files["docker-compose.yml"]).unwrap();
    let gateway = at(&compose, &["services", "gateway"]);
    assert_eq!(str_at(gateway, &["image"]), Some("ghcr.io/freedumb/freedumb-gateway:dev"));
    assert_eq!(str_at(gateway, &["pull_policy"]), Some("never"));
}

/// Each NetworkPolicy's egress port 443 rules: (cidr, except), by workload.
fn https_egress(files: &Files) -> BTreeMap<String, Vec<(String, Vec<String>)>> {
    let mut egress = BTreeMap::new();
    for (path, text) in files.iter().filter(|(path, _)| path.starts_with("k8s/")) {
        for document in documents(path, text).unwrap() {
            if str_at(&document, &["kind"]) != Some("NetworkPolicy") {
                continue;
            }
            let name = str_at(&document, &["metadata", "name"]).unwrap_or("").to_owned();
            let rules = at(&document, &["spec", "egress"]).as_sequence().cloned().unwrap_or_default();
            let https: Vec<(String, Vec<String>)> = rules
                .iter()
                .filter(|rule| rule["ports"].as_sequence().is_some_and(|ports| ports.iter().any(|p| p["port"] == 443)))
                .flat_map(|rule| rule["to"].as_sequence().cloned().unwrap_or_default())
                .map(|to| {
                    let block = &to["ipBlock"];
                    let except = block["except"].as_sequence().cloned().unwrap_or_default();
                    (
                        block["cidr"].as_str().unwrap_or("").to_owned(),
                        except.iter().filter_map(|e| e.as_str().map(str::to_owned)).collect(),
                    )
                })
                .collect();
            egress.insert(name, https);
        }
    }
    egress
}

/// The market-data provider is outside the cluster: the investment service
/// and its price worker may reach public addresses over HTTPS, never the
/// private ranges, and no other workload may reach the internet at all.
#[test]
fn only_the_workloads_that_call_a_provider_reach_the_internet() {
    let files = render(&root(), &committed("prod"), Upstreams::Deployed).unwrap();
    let egress = https_egress(&files);
    let public = vec![(
        "0.0.0.0/0".to_owned(),
        ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"].map(str::to_owned).to_vec(),
    )];
    assert_eq!(egress["investment-service"], public);
    assert_eq!(egress["worker-investment-price"], public);
    for (workload, rules) in &egress {
        if !workload.contains("investment") {
            assert!(rules.is_empty(), "{workload} may reach {rules:?} on 443");
        }
    }
}

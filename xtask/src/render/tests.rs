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
    let root = root();
    let layers = vec![
        layer(&root, environment::BASE),
        layer(&root, name),
        Layer { path: PathBuf::from("everything.toml"), text: EVERYTHING.to_owned() },
    ];
    from_layers(name, layers, &Targets::everything()).unwrap_or_else(|err| panic!("{err}"))
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
        "auth-service" => &["JWT_REFRESH_SECRET"][..],
        "transaction-service" => &["ENCRYPTION_KEY", "RABBITMQ_URL"][..],
        "budget-service" => &["RABBITMQ_URL"][..],
        "ai-service" => &["MONGODB_URL", "OPENAI_API_KEY"][..],
        "investment-service" => &["MARKET_DATA_API_KEY", "MARKET_DATA_API_URL"][..],
        "worker-investment-price" => &["MARKET_DATA_API_KEY"][..],
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
        let environment = everything(name);
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

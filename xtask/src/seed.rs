//! The seed's own files (sections 10 and 11, copied verbatim into
//! `xtask/fixtures/seed/`) through the same validators, so that each defect
//! docs/seed-parity.md lists is shown by a real tool, not asserted from
//! reading. These tests pass while the seed is broken in the documented
//! ways.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

use crate::policy::{at, documents, str_at};
use crate::scratch::ScratchDir;
use crate::tools;

fn fixture(name: &str) -> String {
    let path = crate::project_root().join("xtask/fixtures/seed").join(name);
    fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// `nginx -t` on `conf` (with proxy_params.conf beside it when given) in a
/// throwaway prefix with a self-signed certificate: nginx's complaint, or
/// `None` when the configuration passes.
fn nginx_t(conf: &str, proxy_params: Option<&str>) -> Option<String> {
    let nginx = tools::require(&tools::NGINX).unwrap();
    let openssl = tools::require(&tools::OPENSSL).unwrap();
    let dir = ScratchDir::new("seed-nginx");
    let ssl = dir.path().join("ssl");
    fs::create_dir_all(dir.path().join("logs")).unwrap();
    fs::create_dir_all(&ssl).unwrap();
    let status = Command::new(openssl)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=api.freedumb.app", "-keyout"])
        .arg(ssl.join("privkey.pem"))
        .arg("-out")
        .arg(ssl.join("fullchain.pem"))
        .output()
        .unwrap();
    assert!(status.status.success());
    // Only the absolute paths that need root (logs, pid) or files we supply
    // (certificates, proxy_params.conf) move into the prefix.
    let conf = conf
        .replace("/var/log/nginx/", "logs/")
        .replace("/var/run/nginx.pid", "logs/nginx.pid")
        .replace("/etc/nginx/ssl/", &format!("{}/", ssl.display()));
    let conf = match proxy_params {
        Some(params) => {
            fs::write(dir.path().join("proxy_params.conf"), params).unwrap();
            conf.replace("/etc/nginx/proxy_params.conf", &dir.path().join("proxy_params.conf").display().to_string())
        }
        None => conf.replace(
            "/etc/nginx/proxy_params.conf",
            &dir.path().join("missing/proxy_params.conf").display().to_string(),
        ),
    };
    fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let output = Command::new(nginx)
        .arg("-t")
        .arg("-p")
        .arg(format!("{}/", dir.path().display()))
        .args(["-e", "stderr", "-c"])
        .arg(dir.path().join("nginx.conf"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    (!output.status.success()).then_some(text)
}

/// The seed's nginx.conf fails `nginx -t` four times over; each fix reveals
/// the next defect.
#[test]
fn the_seed_nginx_conf_fails_nginx_t_for_each_documented_defect() {
    let seed = fixture("nginx.conf").replace("user nginx;", "# user nginx;");
    let params = fixture("proxy_params.conf");

    // Upstream names are resolved at start-up: nginx will not start while
    // any service is missing (here: none resolves).
    let err = nginx_t(&seed, Some(&params)).expect("the seed passed");
    assert!(err.contains("host not found in upstream \"auth-service:3001\""), "{err}");
    let resolvable = seed.replace("-service:", "-service.invalid:");
    let resolvable: String = resolvable
        .lines()
        .map(|line| match line.trim().strip_prefix("server ").filter(|rest| rest.contains(".invalid:")) {
            Some(rest) => format!("        server 127.0.0.1:{}", rest.split_once(':').unwrap().1),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");

    // 1. proxy_params.conf is included from /etc/nginx, where compose
    //    never mounts it.
    let err = nginx_t(&resolvable, None).expect("passed without proxy_params.conf");
    assert!(err.contains("proxy_params.conf\" failed (2: No such file or directory)"), "{err}");

    // 2. /v1/ai, /v1/analytics and /v1/reports set proxy_read_timeout and
    //    then include a file that sets it again.
    let err = nginx_t(&resolvable, Some(&params)).expect("passed with the duplicate");
    assert!(err.contains("\"proxy_read_timeout\" directive is duplicate"), "{err}");
    let params = params.replace("proxy_read_timeout 30s;", "");

    // 3. /ws proxies to `websocket_service`, which no upstream block (and no
    //    compose service) defines.
    let err = nginx_t(&resolvable, Some(&params)).expect("passed with websocket_service");
    assert!(err.contains("host not found in upstream \"websocket_service\""), "{err}");

    // With the three fixed, it passes.
    let fixed = resolvable.replace("http://websocket_service", "http://127.0.0.1:3008");
    assert_eq!(nginx_t(&fixed, Some(&params)), None);
}

/// Compose v2 refuses the seed's compose file: transaction-service asks for
/// two replicas under one fixed container_name.
#[test]
fn the_seed_compose_file_is_refused_by_compose() {
    let compose = tools::compose().unwrap();
    let dir = ScratchDir::new("seed-compose");
    fs::write(dir.path().join("docker-compose.yml"), fixture("docker-compose.yml")).unwrap();
    let run = |with_secrets: bool| {
        let mut command = Command::new(&compose);
        command.arg("--project-directory").arg(dir.path()).arg("-f").arg(dir.path().join("docker-compose.yml"));
        command.args(["config", "--quiet"]).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
        if with_secrets {
            for var in [
                "POSTGRES_PASSWORD",
                "REDIS_PASSWORD",
                "MONGO_PASSWORD",
                "RABBITMQ_PASSWORD",
                "JWT_ACCESS_SECRET",
                "JWT_REFRESH_SECRET",
                "OPENAI_API_KEY",
                "MARKET_DATA_API_KEY",
                "MARKET_DATA_API_URL",
                "SENDGRID_API_KEY",
                "TWILIO_ACCOUNT_SID",
                "TWILIO_AUTH_TOKEN",
            ] {
                command.env(var, "x");
            }
        }
        command.output().unwrap()
    };
    let output = run(true);
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        text.contains("can't set container_name and transaction-service as container name must be unique"),
        "{text}"
    );
    assert!(text.contains("the attribute `version` is obsolete"), "{text}");
    // Without the secrets, compose substitutes empty strings and says so
    // only in warnings: services start with blank passwords.
    let text = String::from_utf8_lossy(&run(false).stderr).into_owned();
    // (logfmt: the quotes in the message are escaped.)
    assert!(text.contains(r#"The \"JWT_ACCESS_SECRET\" variable is not set. Defaulting to a blank string."#), "{text}");
}

/// The seed's Kubernetes manifests are schema-valid (kubernetes-validate
/// accepts them): their defects are ones only the policy and consistency
/// checks see.
#[test]
fn the_seed_kubernetes_manifests_pass_the_schema_but_not_the_policy() {
    let validate = tools::require(&tools::KUBERNETES_VALIDATE).unwrap();
    let dir = ScratchDir::new("seed-k8s");
    let mut paths: Vec<PathBuf> = Vec::new();
    for name in ["namespace.yaml", "configmap.yaml", "secrets.yaml", "transaction-service.yaml", "ingress.yaml"] {
        let path = dir.path().join(name);
        fs::write(&path, fixture(name)).unwrap();
        paths.push(path);
    }
    let output = Command::new(validate)
        .args(["--kubernetes-version", "1.32", "--strict", "--quiet"])
        .args(&paths)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));

    let environment = crate::environment::load(&crate::project_root(), "prod").unwrap();
    let mut files = crate::render::Files::new();
    for name in ["secrets.yaml", "transaction-service.yaml"] {
        files.insert(format!("k8s/{name}"), fixture(name));
    }
    let findings: Vec<String> =
        crate::policy::check(&environment, &files).unwrap().iter().map(|finding| finding.message.clone()).collect();
    for expected in [
        "a Secret with values in a rendered file",
        "image `freedumb/transaction-service:latest` is not pinned",
        "imagePullPolicy Always with a pinned tag",
        "liveness and readiness probes are the same",
        "the pod is not runAsNonRoot",
        "readOnlyRootFilesystem is not true",
        "capabilities are not all dropped",
        "no topologySpreadConstraints",
        "no PodDisruptionBudget",
    ] {
        assert!(findings.iter().any(|finding| finding.starts_with(expected)), "{expected}: {findings:#?}");
    }
}

fn prefixes_of_nginx(conf: &str) -> BTreeSet<String> {
    conf.lines()
        .filter_map(|line| {
            line.trim().strip_prefix("location /v1/").or_else(|| line.trim().strip_prefix("location /ws"))
        })
        .map(|rest| rest.trim_end_matches(" {").to_owned())
        .map(|rest| if rest.is_empty() { "/ws".to_owned() } else { format!("/v1/{rest}") })
        .collect()
}

/// The seed's Ingress routes six prefixes; its nginx routes fourteen.
#[test]
fn the_seed_ingress_lacks_routes_its_nginx_has() {
    let nginx = prefixes_of_nginx(&fixture("nginx.conf"));
    let ingress: BTreeSet<String> =
        documents("ingress", &fixture("ingress.yaml")).unwrap()[0]["spec"]["rules"][0]["http"]["paths"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|path| str_at(path, &["path"]).unwrap().to_owned())
            .collect();
    let missing: Vec<&String> = nginx.difference(&ingress).collect();
    assert_eq!(
        missing,
        ["/v1/accounts", "/v1/categories", "/v1/goals", "/v1/holdings", "/v1/recurring", "/v1/reports", "/ws"]
    );
    // And it still uses the annotation Kubernetes replaced with
    // spec.ingressClassName in networking.k8s.io/v1.
    let ingress = &documents("ingress", &fixture("ingress.yaml")).unwrap()[0];
    assert!(!at(ingress, &["metadata", "annotations", "kubernetes.io/ingress.class"]).is_null());
    assert!(at(ingress, &["spec", "ingressClassName"]).is_null());
    // Our model routes every one of the seed's nginx prefixes, and only
    // the ones docs/seed-differences.md adds besides.
    let model = crate::render::tests::everything("prod");
    let ours: BTreeSet<String> = model.model.services.values().flat_map(|w| w.routes.keys().cloned()).collect();
    assert!(ours.is_superset(&nginx), "{ours:?}");
    assert_eq!(ours.difference(&nginx).collect::<Vec<_>>(), ["/v1/instruments"]);
}

//! The deployer end to end, against the in-process API server (`fake/`)
//! over real HTTP: the stories of the issue, one test each. Each test has
//! its own server, so they run in parallel.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::applyset::{self, ApplySet};
use super::deploy::{Deployer, Options, Outcome, image_of};
use super::fake::{Behaviour, Crd, FakeApiServer};
use super::{Cluster, Connect, plan, status};
use crate::environment::{self, Environment};
use crate::progress::{Mode, Progress};
use crate::render::{self, context::Upstreams};
use crate::scratch::ScratchDir;

const NS: &str = "freedumb";
const CONTEXT: &str = "freedumb-prod";
/// Prod's Deployments, in name order (`workloads_are_what_prod_renders`
/// keeps this list true).
const WORKLOADS: [&str; 7] = [
    "analytics-service",
    "auth-service",
    "budget-service",
    "investment-service",
    "transaction-service",
    "worker-investment-price",
    "worker-recurring",
];

#[test]
fn workloads_are_what_prod_renders() {
    let mut rendered: Vec<String> = objects(&prod("0.1.0", 'a'))
        .into_iter()
        .filter(|o| o.kind == "Deployment")
        .filter_map(|o| o.value.pointer("/metadata/name").and_then(Value::as_str).map(str::to_owned))
        .collect();
    rendered.sort();
    assert_eq!(rendered, WORKLOADS);
}

/// A digest of 64 `c`s: prod's policy wants images named by digest.
fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

/// The prod environment, running `freedumb:<tag>@<digest>`.
fn prod(tag: &str, digest_char: char) -> Environment {
    let mut environment = environment::load(&crate::project_root(), "prod").unwrap();
    environment.model.platform.tag = Some(tag.to_owned());
    environment.model.platform.digest = Some(digest(digest_char).try_into().unwrap());
    environment
}

fn objects(environment: &Environment) -> Vec<plan::Object> {
    let files = render::render(&crate::project_root(), environment, Upstreams::Deployed).unwrap();
    assert!(crate::policy::check(environment, &files).unwrap().is_empty(), "the test's prod passes its policy");
    plan::objects(&files).unwrap()
}

/// A fake cluster with the operators prod relies on, and a kubeconfig for it.
struct Harness {
    server: FakeApiServer,
    _dir: ScratchDir,
    kubeconfig: PathBuf,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(super::fake::Config::default())
    }

    fn with(config: super::fake::Config) -> Harness {
        let server = FakeApiServer::start_with(config);
        for crd in Crd::ALL {
            server.install_crd(crd);
        }
        let dir = ScratchDir::new("kube-e2e");
        let kubeconfig = server.kubeconfig(dir.path(), CONTEXT, NS);
        Harness { server, _dir: dir, kubeconfig }
    }

    fn connect(&self) -> Connect {
        Connect { context: None, kubeconfig: Some(self.kubeconfig.clone()) }
    }

    /// Deploys `environment` with `options`; the outcome and what the
    /// reporter said (JSON lines, each with the instant it was written).
    fn deploy_with(&self, environment: &Environment, options: Options) -> (anyhow::Result<Outcome>, Said) {
        let said = Said::default();
        let progress = Progress::with(Mode::Json, Box::new(said.clone()), Box::new(Duration::default));
        let cluster = Cluster::connect(&self.connect(), environment).unwrap();
        let objects = objects(environment);
        let image = image_of(&objects);
        let mut deployer = Deployer::new(cluster.client.clone(), &cluster.context, NS, options, &progress);
        let outcome = cluster.block_on(deployer.deploy(objects, &image));
        (outcome, said)
    }

    fn deploy(&self, environment: &Environment) -> Outcome {
        let (outcome, said) = self.deploy_with(environment, Options::default());
        outcome.unwrap_or_else(|err| panic!("{err:#}\n{}", said.text()))
    }

    fn image(&self, workload: &str) -> String {
        let deployment = self.server.object("Deployment", NS, workload).unwrap_or_else(|| panic!("no {workload}"));
        deployment["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap().to_owned()
    }

    /// PATCHes that were not dry runs: what changed the cluster.
    fn real_applies(&self) -> usize {
        self.server.requests().iter().filter(|r| r.method == "PATCH" && r.param("dryRun").is_none()).count()
    }
}

/// The reporter's lines, each with when it was written.
#[derive(Clone, Default)]
struct Said(Arc<Mutex<(Vec<u8>, Vec<(Instant, String)>)>>);

impl Said {
    fn text(&self) -> String {
        self.0.lock().unwrap().1.iter().map(|(_, line)| format!("{line}\n")).collect()
    }

    fn events(&self, kind: &str) -> Vec<(Instant, Value)> {
        let lines = self.0.lock().unwrap().1.clone();
        lines
            .into_iter()
            .map(|(at, line)| (at, serde_json::from_str::<Value>(&line).unwrap()))
            .filter(|(_, event)| event["event"] == kind)
            .collect()
    }
}

impl Write for Said {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut inner = self.0.lock().unwrap();
        inner.0.extend_from_slice(buf);
        while let Some(end) = inner.0.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = inner.0.drain(..=end).collect();
            inner.1.push((Instant::now(), String::from_utf8_lossy(&line).trim_end().to_owned()));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_first_deploy_of_prod_rolls_every_workload_out_and_kubectl_sees_the_set() {
    let harness = Harness::new();
    let started = Instant::now();
    let outcome = harness.deploy(&prod("0.1.0", 'a'));
    eprintln!("a full first deploy of prod against the test server took {:.2} s", started.elapsed().as_secs_f64());
    assert!(outcome.changed);
    assert_eq!(outcome.revision, 1);
    let set = ApplySet::new(NS);
    for workload in WORKLOADS {
        let deployment = harness.server.object("Deployment", NS, workload).unwrap();
        assert_eq!(deployment["metadata"]["labels"][applyset::PART_OF_LABEL], set.id.as_str(), "{workload}");
        let rows = harness.server.list("Pod", NS);
        assert!(
            rows.iter().any(|pod| pod["metadata"]["name"].as_str().unwrap().starts_with(workload)),
            "{workload} has pods"
        );
    }
    let parent = harness.server.object("Secret", NS, applyset::PARENT_NAME).expect("the ApplySet parent");
    assert_eq!(parent["metadata"]["labels"][applyset::ID_LABEL], set.id.as_str());
    let kinds = parent["metadata"]["annotations"][applyset::GROUP_KINDS_ANNOTATION].as_str().unwrap();
    assert!(kinds.contains("Deployment.apps") && kinds.contains("ExternalSecret.external-secrets.io"), "{kinds}");

    // The real kubectl lists the same set by its label.
    let kubectl = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&harness.kubeconfig)
        .args(["get", "deploy", "-n", NS, "-l", &format!("{}={}", applyset::PART_OF_LABEL, set.id), "-o", "name"])
        .output()
        .expect("kubectl runs");
    assert!(kubectl.status.success(), "{}", String::from_utf8_lossy(&kubectl.stderr));
    let names: Vec<String> = String::from_utf8_lossy(&kubectl.stdout).lines().map(str::to_owned).collect();
    assert_eq!(names, WORKLOADS.map(|w| format!("deployment.apps/{w}")));

    // `status` through the API: each workload rolled out at its replicas.
    let cluster = Cluster::connect(&harness.connect(), &prod("0.1.0", 'a')).unwrap();
    let rows = cluster.block_on(status::status(&cluster.client, NS)).unwrap();
    assert_eq!(rows.iter().map(|r| r.workload.as_str()).collect::<Vec<_>>(), WORKLOADS);
    for row in &rows {
        assert_eq!(row.rollout, "rolled out", "{row:?}");
        assert!(row.available >= 1 && row.available == row.desired, "{row:?}");
    }
    // `logs auth`: every pod's lines, each prefixed with its pod.
    let mut out = Vec::new();
    cluster.block_on(status::logs(&cluster.client, NS, "auth", false, Some(5), &mut out)).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(!text.is_empty() && text.lines().all(|line| line.starts_with("[auth-service-")), "{text}");
}

#[test]
fn a_redeploy_with_nothing_changed_applies_nothing_and_says_so() {
    let harness = Harness::new();
    harness.deploy(&prod("0.1.0", 'a'));
    harness.server.clear_requests();
    let started = Instant::now();
    let (outcome, said) = harness.deploy_with(&prod("0.1.0", 'a'), Options::default());
    eprintln!("a no-op re-deploy of prod took {:.2} s", started.elapsed().as_secs_f64());
    let outcome = outcome.unwrap();
    assert!(!outcome.changed);
    assert_eq!(harness.real_applies(), 0, "only dry runs were sent");
    assert_eq!(said.events("nothing_to_do").len(), 1, "{}", said.text());
    assert_eq!(outcome.revision, 1, "no new revision");
}

#[test]
fn an_image_change_rolls_every_workload_and_is_waited_for() {
    let harness = Harness::new();
    harness.deploy(&prod("0.1.0", 'a'));
    let (outcome, said) = harness.deploy_with(&prod("0.1.1", 'b'), Options::default());
    let outcome = outcome.unwrap_or_else(|err| panic!("{err:#}\n{}", said.text()));
    assert_eq!(outcome.revision, 2);
    let rolled: Vec<String> =
        said.events("rolled_out").iter().map(|(_, e)| e["workload"].as_str().unwrap().to_owned()).collect();
    assert_eq!(rolled.len(), WORKLOADS.len(), "{}", said.text());
    for workload in WORKLOADS {
        assert!(harness.image(workload).ends_with(&digest('b')), "{workload}");
        // Rolled out as kubectl means it, when the deploy returned.
        let deployment = harness.server.object("Deployment", NS, workload).unwrap();
        let status = &deployment["status"];
        assert!(status["observedGeneration"].as_i64() >= deployment["metadata"]["generation"].as_i64());
        assert_eq!(status["updatedReplicas"], status["replicas"], "{workload}: no old pods left");
        assert_eq!(status["availableReplicas"], status["updatedReplicas"], "{workload}");
    }
}

/// Deploys a good prod, then one whose new image `behaviour` dooms; the
/// error and what was said. Checks that everything is back on the previous
/// image and rolled out, and returns how long after the API first showed a
/// pod of the new image in `reason` the deployer reported the failure.
fn a_doomed_rollout(behaviour: Behaviour, reason: &str) -> (String, Said, Option<f64>) {
    let harness = match behaviour {
        // The deadline, compressed: the server's default is generous.
        Behaviour::ProgressDeadline => {
            Harness::with(super::fake::Config { progress_deadline: Duration::from_secs(3), ..Default::default() })
        }
        _ => Harness::new(),
    };
    harness.deploy(&prod("0.1.0", 'a'));
    let broken = prod("0.1.1", 'b');
    let image = image_of(&objects(&broken));
    harness.server.behave(&image, behaviour);
    let done = AtomicBool::new(false);
    let (outcome, said, first_seen) = std::thread::scope(|scope| {
        // Reads the server's own store, not the API: the instant the API
        // first shows a doomed pod.
        let watcher = scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if harness.server.list("Pod", NS).iter().any(|pod| shows(pod, &image, reason)) {
                    return Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            None
        });
        let (outcome, said) = harness.deploy_with(&broken, Options::default());
        done.store(true, Ordering::Relaxed);
        (outcome, said, watcher.join().unwrap())
    });
    let err = format!("{:#}", outcome.expect_err("the doomed rollout fails"));
    for workload in WORKLOADS {
        assert!(harness.image(workload).ends_with(&digest('a')), "{workload} is back on the previous image");
        let deployment = harness.server.object("Deployment", NS, workload).unwrap();
        let status = &deployment["status"];
        assert_eq!(status["updatedReplicas"], status["replicas"], "{workload}: the rollback rolled out");
    }
    assert_eq!(said.events("set_rolled_back").len(), 1, "{}", said.text());
    assert!(
        err.contains("the deploy failed and was rolled back: revision 1 of freedumb-prod/freedumb serves again"),
        "{err}"
    );
    let failed = said.events("rollout_failed");
    let (reported, _) = failed.first().expect("a rollout_failed event");
    let latency = first_seen.map(|seen| reported.saturating_duration_since(seen).as_secs_f64());
    (err, said, latency)
}

/// Whether a container of `pod` running `image` waits with `reason`.
fn shows(pod: &Value, image: &str, reason: &str) -> bool {
    ["initContainerStatuses", "containerStatuses"]
        .iter()
        .flat_map(|key| pod["status"][key].as_array().into_iter().flatten())
        .any(|s| s["image"] == image && s["state"]["waiting"]["reason"] == reason)
}

#[test]
fn a_crash_loop_fails_fast_names_pod_container_and_log_and_rolls_back() {
    let (err, _, latency) = a_doomed_rollout(Behaviour::CrashLoop, "CrashLoopBackOff");
    assert!(err.contains("rollout of Deployment freedumb/"), "{err}");
    assert!(err.contains(": CrashLoopBackOff"), "{err}");
    assert!(err.contains(", container "), "{err}");
    assert!(err.contains("the container's last log lines:"), "{err}");
    let seconds = latency.expect("the API showed the crash loop");
    eprintln!("crash loop: failed {seconds:.3} s after the API showed CrashLoopBackOff");
    assert!(seconds < 5.0, "{seconds} s");
}

#[test]
fn an_image_that_cannot_be_pulled_fails_fast_and_rolls_back() {
    // ErrImagePull comes first, and is already doomed.
    let (err, _, latency) = a_doomed_rollout(Behaviour::ImagePullBackOff, "ErrImagePull");
    assert!(err.contains(": ErrImagePull") || err.contains(": ImagePullBackOff"), "{err}");
    assert!(err.contains("the pod's last events:"), "{err}");
    let seconds = latency.expect("the API showed the pull failure");
    eprintln!("image pull: failed {seconds:.3} s after the API showed ErrImagePull");
    assert!(seconds < 5.0, "{seconds} s");
}

#[test]
fn a_missing_secret_key_fails_fast_and_rolls_back() {
    let (err, _, latency) = a_doomed_rollout(Behaviour::MissingSecretKey, "CreateContainerConfigError");
    assert!(err.contains(": CreateContainerConfigError"), "{err}");
    assert!(err.contains("freedumb-secrets"), "the message names the secret: {err}");
    assert!(latency.is_some_and(|s| s < 5.0), "{latency:?}");
}

#[test]
fn failing_migrations_fail_fast_and_roll_back() {
    let (err, _, _) = a_doomed_rollout(Behaviour::FailingInit, "CrashLoopBackOff");
    assert!(err.contains(", init container migrate: "), "{err}");
    assert!(err.contains("exit code 1") || err.contains("CrashLoopBackOff"), "{err}");
}

#[test]
fn a_passed_progress_deadline_fails_and_rolls_back() {
    let (err, _, _) = a_doomed_rollout(Behaviour::ProgressDeadline, "never");
    assert!(err.contains("rollout of Deployment freedumb/"), "{err}");
    assert!(err.contains("exceeded its progress deadline"), "{err}");
}

#[test]
fn prune_removes_a_dropped_workload_and_nothing_else() {
    let harness = Harness::new();
    harness.deploy(&prod("0.1.0", 'a'));
    // Something of someone else's in the same namespace.
    harness
        .server
        .apply_as(
            "kubectl",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "outsider", "namespace": NS}}),
            false,
        )
        .unwrap();
    let mut without_worker = prod("0.1.0", 'a');
    without_worker.model.workers.get_mut("recurring").unwrap().enabled = false;

    let (outcome, said) = harness.deploy_with(&without_worker, Options::default());
    outcome.unwrap();
    assert!(harness.server.object("Deployment", NS, "worker-recurring").is_some(), "kept without --prune");
    assert!(said.text().contains("no longer rendered and stay (--prune deletes them)"), "{}", said.text());

    let (outcome, said) = harness.deploy_with(&without_worker, Options { prune: true, ..Options::default() });
    let outcome = outcome.unwrap();
    let mut pruned = outcome.pruned.clone();
    pruned.sort();
    assert_eq!(
        pruned,
        [
            "Deployment.apps freedumb/worker-recurring",
            "NetworkPolicy.networking.k8s.io freedumb/worker-recurring",
            "PodDisruptionBudget.policy freedumb/worker-recurring",
            "Service freedumb/worker-recurring",
            "ServiceMonitor.monitoring.coreos.com freedumb/worker-recurring",
        ],
        "{}",
        said.text()
    );
    assert!(harness.server.object("Deployment", NS, "worker-recurring").is_none());
    assert!(harness.server.object("ConfigMap", NS, "outsider").is_some(), "outside the set: never touched");
    assert!(harness.server.object("Deployment", NS, "auth-service").is_some());
    assert!(said.text().contains("pruning 5 member(s) no longer rendered"), "{}", said.text());
}

#[test]
fn a_conflict_with_another_field_manager_fails_naming_it_until_forced() {
    let harness = Harness::new();
    harness.deploy(&prod("0.1.0", 'a'));
    harness
        .server
        .apply_as(
            "kubectl-edit",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "freedumb-config", "namespace": NS},
                   "data": {"LOG_LEVEL": "debug"}}),
            true,
        )
        .unwrap();
    let mut changed = prod("0.1.0", 'a');
    changed.model.platform.log_level = "warn".to_owned();
    harness.server.clear_requests();
    let (outcome, _) = harness.deploy_with(&changed, Options::default());
    let err = format!("{:#}", outcome.unwrap_err());
    assert!(
        err.contains("ConfigMap freedumb/freedumb-config: field manager \"kubectl-edit\" owns .data.LOG_LEVEL"),
        "{err}"
    );
    assert_eq!(harness.real_applies(), 0, "nothing was applied");

    let (outcome, said) = harness.deploy_with(&changed, Options { force_conflicts: true, ..Options::default() });
    outcome.unwrap_or_else(|err| panic!("{err:#}\n{}", said.text()));
    let config = harness.server.object("ConfigMap", NS, "freedumb-config").unwrap();
    assert_eq!(config["data"]["LOG_LEVEL"], "warn");
}

#[test]
fn prod_is_refused_on_another_context_before_any_request() {
    let harness = Harness::new();
    // A kubeconfig whose current context is another cluster's.
    let dir = ScratchDir::new("kube-e2e-guard");
    harness.server.kubeconfig(dir.path(), CONTEXT, NS);
    let path = harness.server.kubeconfig(dir.path(), "kind-dev", "default");
    harness.server.clear_requests();
    let connect = Connect { context: None, kubeconfig: Some(path.clone()) };
    let err = Cluster::connect(&connect, &prod("0.1.0", 'a')).err().expect("refused").to_string();
    assert_eq!(
        err,
        "refusing to touch context `kind-dev`: environment `prod` belongs to context `freedumb-prod` \
         (kubernetes.context); pass --context freedumb-prod"
    );
    assert!(harness.server.requests().is_empty());
    let connect = Connect { context: Some(CONTEXT.to_owned()), kubeconfig: Some(path) };
    assert!(Cluster::connect(&connect, &prod("0.1.0", 'a')).is_ok());
}

#[test]
fn diff_says_nothing_then_shows_the_change_without_making_it() {
    let harness = Harness::new();
    harness.deploy(&prod("0.1.0", 'a'));
    let dry = Options { dry_run: true, ..Options::default() };
    let (outcome, _) = harness.deploy_with(&prod("0.1.0", 'a'), dry.clone());
    let outcome = outcome.unwrap();
    assert!(!outcome.changed && outcome.diff.is_empty(), "{}", outcome.diff);

    harness.server.clear_requests();
    let (outcome, _) = harness.deploy_with(&prod("0.1.1", 'b'), dry);
    let outcome = outcome.unwrap();
    assert!(outcome.changed);
    assert!(
        outcome.diff.contains(
            "--- live/apps.v1.Deployment.freedumb.auth-service\n+++ merged/apps.v1.Deployment.freedumb.auth-service\n"
        ),
        "{}",
        outcome.diff
    );
    assert!(
        outcome.diff.contains(&format!("+        image: ghcr.io/freedumb/freedumb:0.1.1@{}", digest('b'))),
        "{}",
        outcome.diff
    );
    assert!(!outcome.diff.contains("resourceVersion") && !outcome.diff.contains("managedFields"), "{}", outcome.diff);
    assert_eq!(harness.real_applies(), 0);
    assert!(harness.image("auth-service").ends_with(&digest('a')));
    // Through the CLI, as `deploy --dry-run` (and `diff`) run it: exit 1.
    let flags = super::cli::Apply { connect: harness.connect(), ..Default::default() };
    let err = super::cli::deploy(&crate::project_root(), &prod("0.1.1", 'b'), &flags, true, crate::build::Output::Json)
        .unwrap_err();
    assert!(err.is::<super::cli::WouldChange>());
    assert!(
        super::cli::deploy(&crate::project_root(), &prod("0.1.0", 'a'), &flags, true, crate::build::Output::Json)
            .is_ok()
    );
}

#[test]
fn rollback_on_demand_goes_to_the_set_before_and_back_again() {
    let harness = Harness::new();
    harness.deploy(&prod("0.1.0", 'a'));
    harness.deploy(&prod("0.1.1", 'b'));
    let progress = Progress::lines();
    let cluster = Cluster::connect(&harness.connect(), &prod("0.1.0", 'a')).unwrap();
    let mut deployer = Deployer::new(cluster.client.clone(), CONTEXT, NS, Options::default(), &progress);
    let outcome = cluster.block_on(deployer.roll_back()).unwrap();
    assert_eq!(outcome.revision, 3);
    assert!(harness.image("auth-service").ends_with(&digest('a')));
    let outcome = cluster.block_on(deployer.roll_back()).unwrap();
    assert_eq!(outcome.revision, 4);
    assert!(harness.image("auth-service").ends_with(&digest('b')));
}

#[test]
fn an_absent_crd_is_named_with_what_installs_it_unless_skipped() {
    let server = FakeApiServer::start();
    server.install_crd(Crd::ExternalSecret);
    server.install_crd(Crd::Certificate);
    let dir = ScratchDir::new("kube-e2e-crd");
    let harness = Harness { kubeconfig: server.kubeconfig(dir.path(), CONTEXT, NS), server, _dir: dir };
    let (outcome, _) = harness.deploy_with(&prod("0.1.0", 'a'), Options::default());
    let err = format!("{:#}", outcome.unwrap_err());
    assert!(err.contains("ServiceMonitor.monitoring.coreos.com freedumb/auth-service"), "{err}");
    assert!(err.contains("install the Prometheus Operator"), "{err}");
    assert!(harness.server.list("Deployment", NS).is_empty(), "nothing applied");
    let (outcome, said) =
        harness.deploy_with(&prod("0.1.0", 'a'), Options { skip_missing_crds: true, ..Options::default() });
    outcome.unwrap_or_else(|err| panic!("{err:#}\n{}", said.text()));
    assert!(said.text().contains("left out: ServiceMonitor.monitoring.coreos.com"), "{}", said.text());
    assert_eq!(harness.server.list("Deployment", NS).len(), WORKLOADS.len());
}

/// A gateway that answers every request with a 503, and counts them.
struct FailingGateway {
    url: String,
    requests: Arc<std::sync::atomic::AtomicUsize>,
}

impl FailingGateway {
    fn start() -> FailingGateway {
        use std::io::{BufRead, BufReader, Read};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counted = counted.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream);
                    loop {
                        // One request: its head, then its body by Content-Length.
                        let mut length = 0;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                                length = value.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0; length];
                        if reader.read_exact(&mut body).is_err() {
                            return;
                        }
                        counted.fetch_add(1, Ordering::SeqCst);
                        let answer = r#"{"code":"unavailable","message":"down"}"#;
                        let response = format!(
                            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                        if reader.get_mut().write_all(response.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FailingGateway { url, requests }
    }
}

#[test]
fn a_rollout_that_fails_its_verification_is_rolled_back() {
    let harness = Harness::new();
    harness.deploy(&prod("0.1.0", 'a'));
    // The rollout itself succeeds: only the smoke journeys find it broken.
    let broken = prod("0.1.1", 'b');
    harness.deploy(&broken);
    assert!(harness.image("auth-service").ends_with(&digest('b')));
    let gateway = FailingGateway::start();
    let verify = crate::loadtest::Verify { verify: true, verify_url: Some(gateway.url.clone()) };
    let flags = super::cli::Apply { connect: harness.connect(), ..Default::default() };
    let err = verify
        .run_or_roll_back(&crate::project_root(), &broken, || {
            super::cli::rollback(&broken, &flags, crate::build::Output::Json)
        })
        .unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("failed verification") && err.contains("was rolled back"), "{err}");
    assert!(gateway.requests.load(Ordering::SeqCst) > 0, "the smoke journeys reached the gateway");
    for workload in WORKLOADS {
        assert!(harness.image(workload).ends_with(&digest('a')), "{workload} runs the set before again");
    }
}

//! An in-process Kubernetes API server for tests (never shipped): real HTTP
//! on 127.0.0.1, speaking the REST API a deployer and kubectl use, with a
//! scriptable controller standing in for kube-controller-manager, the
//! kubelet and the operators the render relies on.
//!
//! What it serves, in the real shapes (status codes, `Status` errors with
//! their reasons, list kinds, resourceVersions):
//!
//! - discovery: `/version`, `/api`, `/apis`, `/api/v1`, `/apis/<g>/<v>`
//!   (legacy discovery; a client asking for aggregated discovery gets the
//!   plain documents and falls back, as against an older server);
//! - GET, LIST (`labelSelector`, `fieldSelector`), WATCH (`watch=1` from a
//!   `resourceVersion`, ADDED/MODIFIED/DELETED, 410 Expired past the
//!   retained history), POST, PUT, DELETE (background, foreground and
//!   orphan propagation, finalizers, terminating namespaces), the `status`
//!   and `scale` subresources and `pods/{name}/log` (`container`,
//!   `tailLines`, `previous`, `timestamps`, `follow`);
//! - server-side apply (`application/apply-patch+yaml`, `fieldManager`,
//!   `force`, `dryRun=All`) with managed fields per manager and the real
//!   server's 409 conflict (`fields.rs` says how much of
//!   structured-merge-diff it reproduces), and merge and strategic-merge
//!   patches;
//! - custom resources only once their CustomResourceDefinition exists
//!   ([`FakeApiServer::install_crd`]).
//!
//! The controller (`controller.rs`) moves Deployments through ReplicaSets
//! and Pods in small steps ([`Config::step`]), each Deployment or image as
//! a test scripted it ([`Behaviour`]), writes Events and container logs,
//! scales Deployments to their HorizontalPodAutoscaler's bounds, collects
//! garbage, and syncs ExternalSecrets into Secrets ([`SecretSync`]).
//!
//! The server runs on a thread of its own with its own runtime, so the
//! synchronous deployer (which blocks on its own runtime, like
//! `docker::Engine`) and async tests alike can talk to it.

mod controller;
mod fields;
mod kinds;
mod select;
mod server;
mod store;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub(crate) use self::kinds::Crd;
use self::store::{State, Writer};

/// What the controller makes of a Deployment's pods (chosen by the
/// Deployment's name or by an image of its pods; see
/// [`FakeApiServer::behave`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Behaviour {
    /// Init containers complete, containers start and become ready.
    Healthy,
    /// The image cannot be pulled: `ErrImagePull`, then `ImagePullBackOff`
    /// (the first container, init containers first, with that image).
    ImagePullBackOff,
    /// The container starts, exits 1, and restarts with growing
    /// restart counts: `CrashLoopBackOff` with `lastState.terminated`.
    CrashLoop,
    /// `CreateContainerConfigError`: a key the container's environment
    /// takes from a Secret is missing (the first `secretKeyRef` of the
    /// first container that has one).
    MissingSecretKey,
    /// The first init container (the migrations) exits 1 and is restarted:
    /// `Init:CrashLoopBackOff`. A pod without init containers is healthy.
    FailingInit,
    /// The containers run but never become ready, until the Deployment's
    /// `Progressing` condition turns False with `ProgressDeadlineExceeded`
    /// after [`Config::progress_deadline`].
    ProgressDeadline,
}

/// What the External Secrets Operator makes of an ExternalSecret (by name;
/// the default is [`SecretSync::Ready`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SecretSync {
    /// After [`Config::secret_sync_delay`]: the target Secret with every
    /// `spec.data[].secretKey`, and `Ready=True` (reason `SecretSynced`).
    Ready,
    /// The provider never answers: `Ready=False` (reason
    /// `SecretSyncedError`), and no Secret.
    Never,
    /// Ready, but the Secret lacks these keys (the store lacks them), so
    /// pods that need one fail with `CreateContainerConfigError`.
    WithoutKeys(Vec<String>),
}

/// A request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub method: String,
    pub path: String,
    /// The raw query string (percent-encoded, as sent).
    pub query: String,
    pub content_type: Option<String>,
    pub user_agent: Option<String>,
    pub body: String,
}

impl Request {
    /// A query parameter, decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes()).find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
    }
}

/// How the fake behaves; [`Config::default`] suits most tests.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The controller's step: each step moves every object one stage on
    /// (a pod scheduled, a container started, a ReplicaSet scaled by one).
    pub step: Duration,
    /// The progress deadline every Deployment gets, compressed from its
    /// `spec.progressDeadlineSeconds` (whichever is shorter).
    pub progress_deadline: Duration,
    /// How long an ExternalSecret takes to sync.
    pub secret_sync_delay: Duration,
    /// The bearer token every request must carry (`None`, the default: no
    /// authentication). kubectl sends no bearer token over plain HTTP, so
    /// only kube-rs tests can set one.
    pub token: Option<String>,
    /// How many writes a watch can resume from before it gets 410 Expired.
    pub watch_history: usize,
    /// Whether the controllers run (`false`: an API server alone, whose
    /// objects change only when a client writes them).
    pub controllers: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            step: Duration::from_millis(20),
            // Long enough that a busy machine (CI on two cores) never
            // turns a slow healthy rollout into a missed deadline; the
            // tests of the deadline itself set a short one.
            progress_deadline: Duration::from_secs(30),
            secret_sync_delay: Duration::from_millis(60),
            token: None,
            watch_history: 100_000,
            controllers: true,
        }
    }
}

/// What the server's threads share.
pub(crate) struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    config: Config,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the state, then wakes whoever waits for a change.
    fn write<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let result = f(&mut self.lock());
        self.changed.notify_all();
        result
    }
}

/// The running server; stops when dropped.
pub(crate) struct FakeApiServer {
    shared: Arc<Shared>,
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeApiServer {
    /// Starts a server with [`Config::default`].
    pub fn start() -> FakeApiServer {
        FakeApiServer::start_with(Config::default())
    }

    pub fn start_with(config: Config) -> FakeApiServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for the fake API server");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let url = format!("http://{}", listener.local_addr().expect("a bound address"));
        let shared =
            Arc::new(Shared { state: Mutex::new(State::new(config.watch_history)), changed: Condvar::new(), config });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fake-kube-apiserver".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the fake API server");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                    let controller = serving.config.controllers.then(|| tokio::spawn(controller::run(serving.clone())));
                    let app = server::router(serving);
                    tokio::select! {
                        served = axum::serve(listener, app) => served.expect("the fake API server serves"),
                        _ = stopped => {}
                    }
                    if let Some(controller) = controller {
                        controller.abort();
                    }
                });
                // Dropping the runtime here ends open watches and log follows.
            })
            .expect("a thread for the fake API server");
        FakeApiServer { shared, url, stop: Some(stop), thread: Some(thread) }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Writes `dir/kubeconfig` with a context `context` (cluster and user
    /// named after it) whose default namespace is `namespace`, and makes it
    /// the current context. A context written before stays in the file, so
    /// two calls give a kubeconfig with two contexts for `--context` and
    /// the context guard. Both kube-rs and kubectl read it.
    pub fn kubeconfig(&self, dir: &Path, context: &str, namespace: &str) -> PathBuf {
        let path = dir.join("kubeconfig");
        let mut config: Value = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_yaml::from_str(&text).ok())
            .unwrap_or_else(|| json!({"apiVersion": "v1", "kind": "Config", "preferences": {}, "clusters": [], "contexts": [], "users": []}));
        let mut user = json!({});
        if let Some(token) = &self.shared.config.token {
            user["token"] = json!(token);
        }
        let entries = [
            ("clusters", json!({"name": context, "cluster": {"server": self.url}})),
            (
                "contexts",
                json!({"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}),
            ),
            ("users", json!({"name": context, "user": user})),
        ];
        for (list, entry) in entries {
            let items = config[list].as_array_mut().expect("a kubeconfig list");
            items.retain(|item| item["name"] != context);
            items.push(entry);
        }
        config["current-context"] = json!(context);
        let text = serde_yaml::to_string(&config).expect("a kubeconfig serialises");
        std::fs::write(&path, text).unwrap_or_else(|err| panic!("failed to write {}: {err}", path.display()));
        path
    }

    /// Installs a CustomResourceDefinition, as the operator's chart would:
    /// from now on discovery lists the kind and its objects can be applied.
    pub fn install_crd(&self, crd: Crd) {
        self.shared.write(|state| {
            let crds = state.resource_named("customresourcedefinitions").expect("built in");
            let mut definition = crd.definition();
            definition["status"] = json!({
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": store::now()},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": store::now()},
                ],
                "acceptedNames": definition["spec"]["names"].clone(),
                "storedVersions": [definition["spec"]["versions"][0]["name"].clone()],
            });
            state.controller_write(&crds, definition, "helm", None);
        });
    }

    /// Scripts the pods of a Deployment: `target` is a Deployment's name or
    /// an image (`ghcr.io/freedumb/freedumb:0.2.0`). Pods created from now
    /// on behave so; a Deployment's name wins over an image.
    pub fn behave(&self, target: &str, behaviour: Behaviour) {
        self.shared.write(|state| state.behaviours.insert(target.to_owned(), behaviour));
    }

    /// Scripts the ExternalSecret `name` (in any namespace).
    pub fn sync_secret(&self, name: &str, sync: SecretSync) {
        self.shared.write(|state| state.secret_syncs.insert(name.to_owned(), sync));
    }

    /// The object, as a GET would answer it. `kind` is any name kubectl
    /// takes (`Deployment`, `deploy`, `externalsecrets`); `namespace` is
    /// ignored for cluster-scoped kinds.
    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let state = self.shared.lock();
        let res = resolve(&state, kind);
        state.get(&res, namespace, name).cloned()
    }

    /// The objects of a kind in `namespace` ("" for all namespaces), in
    /// the order a LIST answers them.
    pub fn list(&self, kind: &str, namespace: &str) -> Vec<Value> {
        let state = self.shared.lock();
        let res = resolve(&state, kind);
        let namespace = (!namespace.is_empty()).then_some(namespace);
        state.list(&res, namespace).into_iter().cloned().collect()
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    /// The log lines of a container so far.
    pub fn logs(&self, namespace: &str, pod: &str, container: &str) -> Vec<String> {
        let state = self.shared.lock();
        let key = (namespace.to_owned(), pod.to_owned(), container.to_owned());
        state.logs.get(&key).into_iter().flatten().map(|line| line.text.clone()).collect()
    }

    /// Server-side apply as another manager would (`kubectl apply
    /// --server-side --field-manager MANAGER`), to set up conflicts.
    pub fn apply_as(&self, manager: &str, object: Value, force: bool) -> Result<Value, String> {
        self.shared.write(|state| {
            let api_version = object["apiVersion"].as_str().unwrap_or_default();
            let kind = object["kind"].as_str().unwrap_or_default();
            let res = state.resource_of_kind(api_version, kind).ok_or_else(|| format!("no {kind} in {api_version}"))?;
            let namespace =
                object.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default().to_owned();
            let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
            let writer = Writer { manager, subresource: None, dry_run: false };
            state
                .apply(&res, &namespace, &name, object, writer, force)
                .map(|(object, _)| object)
                .map_err(|err| err.message)
        })
    }

    /// An Update as another manager would make it (`kubectl edit`,
    /// `kubectl set image`): `change` edits the live object, which is then
    /// written back with `manager` taking the fields it changed.
    pub fn update_as(
        &self,
        manager: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> Value {
        self.shared.write(|state| {
            let res = resolve(state, kind);
            let mut object =
                state.get(&res, namespace, name).cloned().unwrap_or_else(|| panic!("no {kind} {namespace}/{name}"));
            change(&mut object);
            let writer = Writer { manager, subresource: None, dry_run: false };
            state
                .update(&res, namespace, name, object, writer)
                .unwrap_or_else(|err| panic!("update of {kind} {namespace}/{name}: {}", err.message))
        })
    }

    /// Deletes an object as `kubectl delete` does (background propagation).
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> bool {
        self.shared.write(|state| {
            let res = resolve(state, kind);
            state.delete(&res, namespace, name, "Background", false).is_ok()
        })
    }

    /// Waits until `done` holds (checked on every write), or `timeout`
    /// passes; answers whether it held.
    pub fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&FakeApiServer) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.shared.lock().resource_version();
            if done(self) {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return false };
            let guard = self.shared.lock();
            let _unused = self.shared.changed.wait_timeout_while(guard, left, |state| state.resource_version() == seen);
        }
    }

    /// Waits until every Deployment in `namespace` has rolled out as
    /// `kubectl rollout status` means it; answers whether they did.
    pub fn wait_rolled_out(&self, namespace: &str, timeout: Duration) -> bool {
        self.wait_until(timeout, |server| server.list("deployments", namespace).iter().all(controller::rolled_out))
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn resolve(state: &State, kind: &str) -> kinds::Resource {
    state
        .resource_named(kind)
        .unwrap_or_else(|| panic!("the fake API server serves no kind {kind:?} (a CRD not installed?)"))
}

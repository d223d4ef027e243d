//! The fake server as its clients see it: kube-rs (typed with k8s-openapi,
//! so every object must deserialise as the real API's does) and the real
//! kubectl, pointed at it through the kubeconfig it writes.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};

use super::{Behaviour, Config, Crd, FakeApiServer, SecretSync};
use crate::scratch::ScratchDir;

const NS: &str = "freedumb";
const WAIT: Duration = Duration::from_secs(10);

async fn client(server: &FakeApiServer, dir: &ScratchDir) -> kube::Client {
    let path = server.kubeconfig(dir.path(), "fake-prod", NS);
    let kubeconfig = Kubeconfig::read_from(&path).expect("kube-rs reads the kubeconfig");
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("a client config");
    crate::kube::install_crypto();
    kube::Client::try_from(config).expect("a client")
}

fn namespace(server: &FakeApiServer) {
    server
        .apply_as("freedumb", json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}), false)
        .expect("the namespace applies");
}

fn deployment(name: &str, image: &str, replicas: Option<i64>) -> Value {
    let mut deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "labels": {"app.kubernetes.io/name": name}},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": name}},
                "spec": {
                    "initContainers": [{"name": "migrate", "image": image, "args": ["migrate"]}],
                    "containers": [{"name": "app", "image": image, "ports": [{"name": "http", "containerPort": 3001}],
                        "env": [{"name": "JWT_ACCESS_SECRET", "valueFrom": {"secretKeyRef": {"name": "freedumb-secrets", "key": "JWT_ACCESS_SECRET"}}}]}],
                },
            },
        },
    });
    if let Some(replicas) = replicas {
        deployment["spec"]["replicas"] = json!(replicas);
    }
    deployment
}

fn secret(server: &FakeApiServer) {
    server
        .apply_as(
            "freedumb",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "freedumb-secrets", "namespace": NS},
                "stringData": {"JWT_ACCESS_SECRET": "s3cret"}}),
            false,
        )
        .expect("the secret applies");
}

fn apply() -> PatchParams {
    PatchParams::apply("freedumb")
}

fn pods_of(server: &FakeApiServer, deployment: &str) -> Vec<Pod> {
    server
        .list("pods", NS)
        .into_iter()
        .filter(|pod| pod["metadata"]["labels"]["app.kubernetes.io/name"] == deployment)
        .map(|pod| serde_json::from_value(pod).expect("a pod as the API returns it"))
        .collect()
}

fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> Box<kube::core::Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn kube_rs_discovers_built_in_kinds_and_custom_resources_only_once_installed() {
    let server = FakeApiServer::start();
    let dir = ScratchDir::new("fake-kube");
    let client = client(&server, &dir).await;

    for aggregated in [false, true] {
        let discovery = kube::Discovery::new(client.clone());
        let discovery =
            if aggregated { discovery.run_aggregated().await } else { discovery.run().await }.expect("discovery");
        let gvk = kube::core::GroupVersionKind::gvk("apps", "v1", "Deployment");
        let (resource, capabilities) = discovery.resolve_gvk(&gvk).expect("deployments are served");
        assert_eq!(resource.plural, "deployments");
        assert_eq!(capabilities.scope, kube::discovery::Scope::Namespaced);
        assert!(discovery.has_group("policy") && discovery.has_group("networking.k8s.io"));
        assert!(!discovery.has_group("external-secrets.io"), "no ExternalSecret before its CRD is installed");
    }

    server.install_crd(Crd::ExternalSecret);
    let discovery = kube::Discovery::new(client.clone()).run().await.expect("discovery");
    let gvk = kube::core::GroupVersionKind::gvk("external-secrets.io", "v1", "ExternalSecret");
    assert!(discovery.resolve_gvk(&gvk).is_some(), "the installed CRD's kind is discovered");
    assert!(!discovery.has_group("cert-manager.io"));
}

#[tokio::test]
async fn server_side_apply_creates_with_the_real_managed_fields_and_a_no_op_keeps_the_resource_version() {
    // No controllers: only the applies write.
    let server = FakeApiServer::start_with(Config { controllers: false, ..Config::default() });
    let dir = ScratchDir::new("fake-kube");
    let client = client(&server, &dir).await;
    namespace(&server);
    let api: Api<Deployment> = Api::namespaced(client, NS);

    let created =
        api.patch("auth", &apply(), &Patch::Apply(deployment("auth", "app:1", Some(2)))).await.expect("apply creates");
    let meta = &created.metadata;
    assert_eq!(meta.generation, Some(1));
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some() && meta.resource_version.is_some());
    let managed = meta.managed_fields.as_ref().expect("managed fields");
    assert_eq!(managed.len(), 1);
    let entry = &managed[0];
    assert_eq!(
        (
            entry.manager.as_deref(),
            entry.operation.as_deref(),
            entry.api_version.as_deref(),
            entry.fields_type.as_deref()
        ),
        (Some("freedumb"), Some("Apply"), Some("apps/v1"), Some("FieldsV1"))
    );
    let fields = &entry.fields_v1.as_ref().expect("fieldsV1").0;
    assert!(
        fields.pointer("/f:spec/f:template/f:spec/f:containers/k:{\"name\":\"app\"}/f:image").is_some(),
        "{fields:#}"
    );

    let again =
        api.patch("auth", &apply(), &Patch::Apply(deployment("auth", "app:1", Some(2)))).await.expect("apply again");
    assert_eq!(again.metadata.resource_version, meta.resource_version, "nothing changed, nothing written");
    assert_eq!(again.metadata.generation, Some(1));

    let changed =
        api.patch("auth", &apply(), &Patch::Apply(deployment("auth", "app:2", Some(2)))).await.expect("apply a change");
    assert_ne!(changed.metadata.resource_version, meta.resource_version);
    assert_eq!(changed.metadata.generation, Some(2));

    let patches: Vec<_> = server.requests().into_iter().filter(|r| r.method == "PATCH").collect();
    assert_eq!(patches.len(), 3);
    for request in &patches {
        assert_eq!(request.content_type.as_deref(), Some("application/apply-patch+yaml"));
        assert_eq!(request.param("fieldManager").as_deref(), Some("freedumb"));
        assert_eq!(request.param("force"), None, "no force unless asked");
    }
}

#[tokio::test]
async fn an_apply_over_another_managers_field_is_a_409_naming_the_manager_and_the_field() {
    let server = FakeApiServer::start();
    let dir = ScratchDir::new("fake-kube");
    let client = client(&server, &dir).await;
    namespace(&server);
    let api: Api<Deployment> = Api::namespaced(client, NS);
    api.patch("auth", &apply(), &Patch::Apply(deployment("auth", "app:1", Some(2)))).await.expect("apply creates");

    // Someone hot-fixes the image with `kubectl edit`.
    server.update_as("kubectl-edit", "deployment", NS, "auth", |d| {
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("app:hotfix")
    });
    let status = api_error(api.patch("auth", &apply(), &Patch::Apply(deployment("auth", "app:2", Some(2)))).await);
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using apps/v1: .spec.template.spec.containers[name=\"app\"].image"
    );
    let causes = status.details.as_ref().map(|d| d.causes.clone()).unwrap_or_default();
    assert_eq!(causes.len(), 1);
    assert_eq!(causes[0].reason, "FieldManagerConflict");
    assert_eq!(causes[0].message, "conflict with \"kubectl-edit\" using apps/v1");
    assert_eq!(causes[0].field, ".spec.template.spec.containers[name=\"app\"].image");

    // Another applier, and two fields: the message lists them per manager.
    let mut theirs = deployment("auth", "app:theirs", Some(5));
    theirs["spec"]["template"]["spec"]["containers"][0]["image"] = json!("app:theirs");
    api.patch("auth", &PatchParams::apply("helm").force(), &Patch::Apply(theirs)).await.expect("helm forces");
    let status = api_error(api.patch("auth", &apply(), &Patch::Apply(deployment("auth", "app:2", Some(2)))).await);
    assert_eq!(
        status.message,
        "Apply failed with 3 conflicts: conflicts with \"helm\":\n- .spec.replicas\n- .spec.template.spec.containers[name=\"app\"].image\n- .spec.template.spec.initContainers[name=\"migrate\"].image"
    );

    let forced =
        api.patch("auth", &apply().force(), &Patch::Apply(deployment("auth", "app:2", Some(2)))).await.expect("forced");
    assert_eq!(forced.spec.unwrap().template.spec.unwrap().containers[0].image.as_deref(), Some("app:2"));
    let last = server.requests().into_iter().rfind(|r| r.method == "PATCH").unwrap();
    assert_eq!(last.param("force").as_deref(), Some("true"));
}

#[tokio::test]
async fn a_dry_run_apply_answers_the_result_and_stores_nothing() {
    let server = FakeApiServer::start();
    let dir = ScratchDir::new("fake-kube");
    let client = client(&server, &dir).await;
    namespace(&server);
    let api: Api<Deployment> = Api::namespaced(client, NS);

    let dry =
        api.patch("auth", &apply().dry_run(), &Patch::Apply(deployment("auth", "app:1", None))).await.expect("dry run");
    assert_eq!(dry.spec.as_ref().and_then(|s| s.replicas), Some(1), "defaults as the server sets them");
    assert!(dry.metadata.resource_version.is_none());
    assert!(server.object("deployment", NS, "auth").is_none(), "a dry run stores nothing");
    let request = server.requests().into_iter().rfind(|r| r.method == "PATCH").unwrap();
    assert_eq!(request.param("dryRun").as_deref(), Some("All"));

    api.patch("auth", &apply(), &Patch::Apply(deployment("auth", "app:1", None))).await.expect("apply");
    let dry =
        api.patch("auth", &apply().dry_run(), &Patch::Apply(deployment("auth", "app:2", None))).await.expect("dry run");
    assert_eq!(dry.metadata.generation, Some(2), "the generation the change would get");
    assert_eq!(server.object("deployment", NS, "auth").unwrap()["metadata"]["generation"], 1);

    // On an object no controller writes to: the answer keeps the live
    // resourceVersion, since nothing was written.
    let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(api.into_client(), NS);
    let cm = |value: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"a": value}});
    let live = configmaps.patch("settings", &apply(), &Patch::Apply(cm("1"))).await.unwrap();
    let dry = configmaps.patch("settings", &apply().dry_run(), &Patch::Apply(cm("2"))).await.unwrap();
    assert_eq!(dry.data.unwrap()["a"], "2");
    assert_eq!(dry.metadata.resource_version, live.metadata.resource_version);
    assert_eq!(server.object("cm", NS, "settings").unwrap()["data"]["a"], "1");
}

#[tokio::test]
async fn a_watch_from_a_resource_version_sees_the_apply_and_the_controllers_progress() {
    let server = FakeApiServer::start();
    let dir = ScratchDir::new("fake-kube");
    let client = client(&server, &dir).await;
    namespace(&server);
    secret(&server);
    let api: Api<Deployment> = Api::namespaced(client, NS);
    let created = api.patch("auth", &apply(), &Patch::Apply(deployment("auth", "app:1", Some(1)))).await.unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();

    let params = WatchParams::default().fields("metadata.name=auth").timeout(10);
    let mut events = api.watch(&params, &rv).await.expect("watch").boxed();
    let deadline = Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline.into(), events.try_next())
            .await
            .expect("an event in time")
            .expect("a watch event");
        let Some(WatchEvent::Modified(deployment)) = event else { panic!("expected MODIFIED, got {event:?}") };
        let status = deployment.status.clone().unwrap_or_default();
        if status.available_replicas == Some(1) && status.updated_replicas == Some(1) {
            break;
        }
    }
    // An image change: the first event is the apply itself, which the
    // controller has not observed yet; its old status still reads "done",
    // which is why a waiter must compare observedGeneration.
    api.patch("auth", &apply(), &Patch::Apply(deployment("auth", "app:2", Some(1)))).await.unwrap();
    let changed = loop {
        let event =
            tokio::time::timeout_at(deadline.into(), events.try_next()).await.expect("an event in time").unwrap();
        let Some(WatchEvent::Modified(deployment)) = event else { panic!("expected MODIFIED, got {event:?}") };
        if deployment.metadata.generation == Some(2) {
            break deployment;
        }
    };
    let status = changed.status.unwrap();
    assert_eq!(status.observed_generation, Some(1), "the apply comes before the controller sees it");
    assert_eq!((status.updated_replicas, status.available_replicas), (Some(1), Some(1)));
}

#[tokio::test]
async fn a_watch_from_a_version_no_longer_retained_is_told_410_expired() {
    let server = FakeApiServer::start_with(Config { watch_history: 3, ..Config::default() });
    let dir = ScratchDir::new("fake-kube");
    let client = client(&server, &dir).await;
    namespace(&server);
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client, NS);
    for n in 0..5 {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{n}")}, "data": {"n": n.to_string()}});
        api.patch(&format!("cm-{n}"), &apply(), &Patch::Apply(cm)).await.unwrap();
    }
    let mut events = api.watch(&WatchParams::default(), "1").await.expect("watch").boxed();
    match events.try_next().await.expect("an event") {
        Some(WatchEvent::Error(status)) => assert_eq!((status.code, status.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn errors_are_status_objects_with_the_real_reasons() {
    let server = FakeApiServer::start();
    let dir = ScratchDir::new("fake-kube");
    let client = client(&server, &dir).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);

    let status = api_error(deployments.patch("auth", &apply(), &Patch::Apply(deployment("auth", "app:1", None))).await);
    assert_eq!(
        (status.code, status.reason.as_str(), status.message.as_str()),
        (404, "NotFound", "namespaces \"freedumb\" not found")
    );

    namespace(&server);
    let status = api_error(deployments.get("missing").await);
    assert_eq!((status.code, status.message.as_str()), (404, "deployments.apps \"missing\" not found"));

    let ar = kube::discovery::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("external-secrets.io", "v1", "ExternalSecret"),
        "externalsecrets",
    );
    let externals: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), NS, &ar);
    let status = api_error(externals.list(&ListParams::default()).await);
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"), "no CRD, no resource");
}

#[tokio::test]
async fn with_a_token_configured_requests_without_it_are_401() {
    let server = FakeApiServer::start_with(Config { token: Some("t0ken".to_owned()), ..Config::default() });
    let dir = ScratchDir::new("fake-kube");
    let client = client(&server, &dir).await;
    let namespaces: Api<Namespace> = Api::all(client);
    assert!(namespaces.get("default").await.is_ok(), "kube-rs sends the kubeconfig's token");
    let nobody = reqwest_free_get(&format!("{}/api/v1/namespaces", server.url()));
    assert_eq!(nobody.0, 401, "a request without the token is refused: {}", nobody.1);
    assert!(nobody.1.contains("\"reason\":\"Unauthorized\""), "{}", nobody.1);
}

/// A GET without credentials, over a plain TCP connection.
fn reqwest_free_get(url: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let address = url.trim_start_matches("http://");
    let (host, path) = address.split_once('/').map_or((address, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, response)
}

#[tokio::test]
async fn a_healthy_rollout_goes_through_replicasets_and_pods_and_an_image_change_rolls_again() {
    let server = FakeApiServer::start();
    let dir = ScratchDir::new("fake-kube");
    let client = client(&server, &dir).await;
    namespace(&server);
    secret(&server);
    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
    api.patch("auth", &apply(), &Patch::Apply(deployment("auth", "app:1", Some(3)))).await.unwrap();
    assert!(
        server.wait_rolled_out(NS, WAIT),
        "rolled out: {:#}",
        server.object("deploy", NS, "auth").unwrap()["status"]
    );

    let live: Deployment = serde_json::from_value(server.object("deploy", NS, "auth").unwrap()).unwrap();
    assert_eq!(live.metadata.annotations.unwrap()["deployment.kubernetes.io/revision"], "1");
    let status = live.status.unwrap();
    assert_eq!(
        (status.replicas, status.updated_replicas, status.ready_replicas, status.available_replicas),
        (Some(3), Some(3), Some(3), Some(3))
    );
    assert_eq!(status.unavailable_replicas, None, "zero counts are omitted, as in the real JSON");
    let conditions = status.conditions.unwrap();
    let reason = |kind: &str| conditions.iter().find(|c| c.type_ == kind).and_then(|c| c.reason.clone()).unwrap();
    assert_eq!(
        (reason("Available"), reason("Progressing")),
        ("MinimumReplicasAvailable".to_owned(), "NewReplicaSetAvailable".to_owned())
    );
    let pods = pods_of(&server, "auth");
    assert_eq!(pods.len(), 3);
    for pod in &pods {
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert!(status.container_statuses.as_ref().unwrap()[0].ready);
        let init = &status.init_container_statuses.as_ref().unwrap()[0];
        assert_eq!(init.state.as_ref().unwrap().terminated.as_ref().unwrap().reason.as_deref(), Some("Completed"));
    }

    api.patch("auth", &apply(), &Patch::Apply(deployment("auth", "app:2", Some(3)))).await.unwrap();
    assert!(server.wait_until(WAIT, |s| {
        let d = s.object("deploy", NS, "auth").unwrap();
        d["status"]["observedGeneration"] == 2 && super::controller::rolled_out(&d)
    }));
    let replicasets: Vec<ReplicaSet> =
        server.list("rs", NS).into_iter().map(|rs| serde_json::from_value(rs).unwrap()).collect();
    assert_eq!(replicasets.len(), 2);
    let revision =
        |rs: &ReplicaSet| rs.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"].clone();
    let new = replicasets.iter().find(|rs| revision(rs) == "2").expect("a ReplicaSet with revision 2");
    let old = replicasets.iter().find(|rs| revision(rs) == "1").expect("the old ReplicaSet stays, scaled to 0");
    assert_eq!(old.spec.as_ref().unwrap().replicas, Some(0));
    let hash = new.metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    assert!(new.metadata.name.as_ref().unwrap().ends_with(&hash));
    let pods = pods_of(&server, "auth");
    assert_eq!(pods.len(), 3);
    assert!(pods.iter().all(|p| p.metadata.labels.as_ref().unwrap()["pod-template-hash"] == hash), "old pods are gone");

    // Re-applying the first image adopts its ReplicaSet with the next revision.
    api.patch("auth", &apply(), &Patch::Apply(deployment("auth", "app:1", Some(3)))).await.unwrap();
    assert!(server.wait_until(WAIT, |s| {
        let d = s.object("deploy", NS, "auth").unwrap();
        d["status"]["observedGeneration"] == 3 && super::controller::rolled_out(&d)
    }));
    let old: ReplicaSet =
        serde_json::from_value(server.object("rs", NS, old.metadata.name.as_ref().unwrap()).unwrap()).unwrap();
    assert_eq!(revision(&old), "3");
    assert_eq!(server.list("rs", NS).len(), 2);

    // Deleting the Deployment takes its ReplicaSets and pods with it.
    api.delete("auth", &DeleteParams::background()).await.unwrap();
    assert!(server.wait_until(WAIT, |s| s.list("rs", NS).is_empty() && s.list("pods", NS).is_empty()));
}

#[tokio::test]
async fn an_hpa_scales_a_deployment_that_leaves_replicas_to_it() {
    let server = FakeApiServer::start();
    namespace(&server);
    secret(&server);
    server.apply_as("freedumb", deployment("auth", "app:1", None), false).unwrap();
    let hpa = json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "auth", "namespace": NS},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "auth"}, "minReplicas": 3, "maxReplicas": 10}});
    server.apply_as("freedumb", hpa, false).unwrap();
    assert!(server.wait_until(WAIT, |s| {
        let d = s.object("deploy", NS, "auth").unwrap();
        d["spec"]["replicas"] == 3 && super::controller::rolled_out(&d)
    }));
    let deployment = server.object("deploy", NS, "auth").unwrap();
    let managers: Vec<&str> = deployment["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(managers.contains(&"kube-controller-manager"));
    // The render's apply does not name replicas, so it does not fight the HPA.
    server.apply_as("freedumb", deployment_without_replicas(), false).expect("no conflict over replicas");
    assert_eq!(server.object("deploy", NS, "auth").unwrap()["spec"]["replicas"], 3);
}

fn deployment_without_replicas() -> Value {
    deployment("auth", "app:1", None)
}

fn container_status(pod: &Pod, name: &str) -> k8s_openapi::api::core::v1::ContainerStatus {
    let status = pod.status.as_ref().unwrap();
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find(|s| s.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("no status for container {name}"))
}

fn waiting(pod: &Pod, container: &str) -> Option<String> {
    container_status(pod, container).state.and_then(|s| s.waiting).and_then(|w| w.reason)
}

/// Starts `name` with `behaviour` (by image) and waits until a pod shows
/// `done`.
fn failing(behaviour: Behaviour, config: Config, done: impl Fn(&Pod) -> bool) -> (FakeApiServer, Pod) {
    let server = FakeApiServer::start_with(config);
    namespace(&server);
    secret(&server);
    server.behave("app:broken", behaviour);
    server.apply_as("freedumb", deployment("auth", "app:broken", Some(1)), false).unwrap();
    let mut found = None;
    let ok = server.wait_until(WAIT, |s| {
        found = pods_of(s, "auth").into_iter().find(|p| done(p));
        found.is_some()
    });
    assert!(
        ok,
        "no pod got there: {:#?}",
        server.list("pods", NS).iter().map(|p| p["status"].clone()).collect::<Vec<_>>()
    );
    (server, found.unwrap())
}

fn events_of(server: &FakeApiServer, pod: &Pod) -> Vec<Event> {
    let name = pod.metadata.name.clone().unwrap();
    server
        .list("events", NS)
        .into_iter()
        .filter(|e| e["involvedObject"]["name"] == name)
        .map(|e| serde_json::from_value(e).expect("an event as the API returns it"))
        .collect()
}

#[test]
fn an_image_that_cannot_be_pulled_backs_off_with_the_kubelets_events() {
    let (server, pod) = failing(Behaviour::ImagePullBackOff, Config::default(), |p| {
        waiting(p, "migrate").as_deref() == Some("ImagePullBackOff")
    });
    let events = events_of(&server, &pod);
    let messages: Vec<String> = events.iter().filter_map(|e| e.message.clone()).collect();
    assert!(messages.iter().any(|m| m.starts_with("Failed to pull image \"app:broken\"")), "{messages:#?}");
    assert!(messages.iter().any(|m| m == "Error: ImagePullBackOff"));
    assert_eq!(waiting(&pod, "app").as_deref(), Some("PodInitializing"));
    assert_eq!(pod.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));
}

#[test]
fn a_crashing_container_loops_with_restarts_and_its_last_termination() {
    let (server, pod) = failing(Behaviour::CrashLoop, Config::default(), |p| {
        let status = container_status(p, "app");
        status.restart_count >= 2 && waiting(p, "app").as_deref() == Some("CrashLoopBackOff")
    });
    let status = container_status(&pod, "app");
    let last = status.last_state.unwrap().terminated.unwrap();
    assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
    assert!(events_of(&server, &pod).iter().any(|e| e.reason.as_deref() == Some("BackOff")));
    let name = pod.metadata.name.unwrap();
    assert!(server.logs(NS, &name, "app").iter().any(|l| l.contains("failed to connect to Postgres")));
}

#[test]
fn a_missing_secret_key_is_a_create_container_config_error() {
    let (_server, pod) = failing(Behaviour::MissingSecretKey, Config::default(), |p| {
        waiting(p, "app").as_deref() == Some("CreateContainerConfigError")
    });
    let message = container_status(&pod, "app").state.unwrap().waiting.unwrap().message.unwrap();
    assert_eq!(message, "couldn't find key JWT_ACCESS_SECRET in Secret freedumb/freedumb-secrets");
}

#[test]
fn a_pod_whose_secret_does_not_exist_waits_until_it_does() {
    let server = FakeApiServer::start();
    namespace(&server);
    server.apply_as("freedumb", deployment("auth", "app:1", Some(1)), false).unwrap();
    assert!(server.wait_until(WAIT, |s| {
        pods_of(s, "auth").iter().any(|p| waiting(p, "app").as_deref() == Some("CreateContainerConfigError"))
    }));
    let pod = pods_of(&server, "auth").remove(0);
    let message = container_status(&pod, "app").state.unwrap().waiting.unwrap().message.unwrap();
    assert_eq!(message, "secret \"freedumb-secrets\" not found");
    secret(&server);
    assert!(server.wait_rolled_out(NS, WAIT), "the kubelet retries once the Secret is there");
}

#[test]
fn a_failing_init_container_keeps_the_pod_initializing() {
    let (_server, pod) = failing(Behaviour::FailingInit, Config::default(), |p| {
        container_status(p, "migrate").restart_count >= 1
            && waiting(p, "migrate").as_deref() == Some("CrashLoopBackOff")
    });
    let status = pod.status.as_ref().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    let initialized = status.conditions.as_ref().unwrap().iter().find(|c| c.type_ == "Initialized").unwrap();
    assert_eq!(
        (initialized.status.as_str(), initialized.reason.as_deref()),
        ("False", Some("ContainersNotInitialized"))
    );
    let last = container_status(&pod, "migrate").last_state.unwrap().terminated.unwrap();
    assert_eq!(last.exit_code, 1);
    assert_eq!(waiting(&pod, "app").as_deref(), Some("PodInitializing"));
}

#[test]
fn a_deployment_that_never_becomes_available_exceeds_its_progress_deadline() {
    let config = Config { progress_deadline: Duration::from_millis(400), ..Config::default() };
    let (server, _pod) =
        failing(Behaviour::ProgressDeadline, config, |p| container_status(p, "app").started == Some(true));
    let started = Instant::now();
    assert!(server.wait_until(WAIT, |s| {
        let d = s.object("deploy", NS, "auth").unwrap();
        d["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded")
    }));
    let deployment: Deployment = serde_json::from_value(server.object("deploy", NS, "auth").unwrap()).unwrap();
    let progressing =
        deployment.status.unwrap().conditions.unwrap().into_iter().find(|c| c.type_ == "Progressing").unwrap();
    assert_eq!(progressing.status, "False");
    assert!(progressing.message.unwrap().ends_with("has timed out progressing."));
    assert!(started.elapsed() <= server.config().progress_deadline + Duration::from_secs(1));
}

#[tokio::test]
async fn logs_come_per_container_with_the_kubelets_refusals() {
    let server = FakeApiServer::start();
    let dir = ScratchDir::new("fake-kube");
    let client = client(&server, &dir).await;
    namespace(&server);
    secret(&server);
    server.behave("auth", Behaviour::CrashLoop);
    server.apply_as("freedumb", deployment("auth", "app:1", Some(1)), false).unwrap();
    assert!(
        server.wait_until(WAIT, |s| pods_of(s, "auth").iter().any(|p| container_status(p, "app").restart_count >= 1))
    );
    let name = pods_of(&server, "auth").remove(0).metadata.name.unwrap();
    let pods: Api<Pod> = Api::namespaced(client, NS);

    // One container (besides init containers): it is the default.
    let default = pods.logs(&name, &LogParams::default()).await.unwrap();
    assert!(default.contains("failed to connect to Postgres"), "{default}");
    let status =
        api_error(pods.logs(&name, &LogParams { container: Some("sidecar".into()), ..LogParams::default() }).await);
    assert_eq!(
        (status.code, status.message.as_str()),
        (400, format!("container sidecar is not valid for pod {name}").as_str())
    );

    let tail = pods
        .logs(&name, &LogParams { container: Some("app".into()), tail_lines: Some(1), ..LogParams::default() })
        .await
        .unwrap();
    assert_eq!(tail, "error: the service stopped: failed to connect to Postgres\n");
    let migrate =
        pods.logs(&name, &LogParams { container: Some("migrate".into()), ..LogParams::default() }).await.unwrap();
    assert!(migrate.contains("migrations up to date"), "{migrate}");
    let previous = pods
        .logs(&name, &LogParams { container: Some("app".into()), previous: true, ..LogParams::default() })
        .await
        .unwrap();
    assert!(previous.contains("failed to connect to Postgres"));

    // Following: what there is, then each line the next runs write.
    let params = LogParams { container: Some("app".into()), follow: true, ..LogParams::default() };
    let mut lines = pods.log_stream(&name, &params).await.unwrap().lines();
    let mut starts = 0;
    let deadline = Instant::now() + WAIT;
    while starts < 2 {
        let line = tokio::time::timeout_at(deadline.into(), lines.try_next())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("the stream goes on");
        starts += usize::from(line.contains("\"message\":\"starting\""));
    }
}

#[tokio::test]
async fn an_external_secret_becomes_ready_and_writes_its_secret() {
    let server = FakeApiServer::start();
    let dir = ScratchDir::new("fake-kube");
    let client = client(&server, &dir).await;
    namespace(&server);
    server.install_crd(Crd::ExternalSecret);
    server.sync_secret("never", SecretSync::Never);
    let external = |name: &str| {
        json!({"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret", "metadata": {"name": name, "namespace": NS},
            "spec": {"secretStoreRef": {"kind": "ClusterSecretStore", "name": "prod"}, "target": {"name": name, "creationPolicy": "Owner"},
                "data": [{"secretKey": "JWT_ACCESS_SECRET", "remoteRef": {"key": "prod/JWT_ACCESS_SECRET"}}]}})
    };
    let ar = kube::discovery::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("external-secrets.io", "v1", "ExternalSecret"),
        "externalsecrets",
    );
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), NS, &ar);
    for name in ["freedumb-secrets", "never"] {
        let object: kube::api::DynamicObject = serde_json::from_value(external(name)).unwrap();
        api.patch(name, &apply(), &Patch::Apply(object)).await.unwrap();
    }
    let ready = |s: &FakeApiServer, name: &str| {
        s.object("externalsecrets", NS, name)
            .and_then(|es| es["status"]["conditions"][0]["status"].as_str().map(str::to_owned))
    };
    assert!(server.wait_until(WAIT, |s| ready(s, "freedumb-secrets").as_deref() == Some("True")
        && ready(s, "never").as_deref() == Some("False")));
    let secrets: Api<Secret> = Api::namespaced(client, NS);
    let secret = secrets.get("freedumb-secrets").await.expect("the operator wrote the Secret");
    assert!(secret.data.unwrap().contains_key("JWT_ACCESS_SECRET"));
    assert!(secrets.get_opt("never").await.unwrap().is_none());
    assert_eq!(
        server.object("externalsecrets", NS, "never").unwrap()["status"]["conditions"][0]["reason"],
        "SecretSyncedError"
    );
}

// ---------------------------------------------------------------------------
// The real kubectl

fn kubectl(kubeconfig: &Path, cache: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .output()
        .expect("kubectl runs (it is installed at /usr/bin/kubectl)");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn kubectl_gets_deployments_as_json_and_as_a_table_and_waits_for_a_rollout() {
    let server = FakeApiServer::start();
    let dir = ScratchDir::new("fake-kube");
    let kubeconfig = server.kubeconfig(dir.path(), "fake-prod", NS);
    let cache = dir.path().join("cache");
    namespace(&server);
    secret(&server);
    server.apply_as("freedumb", deployment("auth", "app:1", Some(2)), false).unwrap();

    let (ok, out, err) =
        kubectl(&kubeconfig, &cache, &["rollout", "status", "deployment/auth", "-n", NS, "--timeout=20s"]);
    assert!(ok, "kubectl rollout status: {out}{err}");
    assert!(out.contains("successfully rolled out"), "{out}");

    let (ok, out, err) = kubectl(&kubeconfig, &cache, &["get", "deploy", "-n", NS, "-o", "json"]);
    assert!(ok, "kubectl get: {err}");
    let list: Value = serde_json::from_str(&out).expect("kubectl prints JSON");
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"][0]["metadata"]["name"], "auth");
    assert_eq!(list["items"][0]["status"]["availableReplicas"], 2);

    let (ok, out, err) = kubectl(&kubeconfig, &cache, &["get", "deploy", "-n", NS]);
    assert!(ok, "kubectl get (table): {err}");
    let header: Vec<&str> = out.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"], "{out}");
    assert!(out.lines().nth(1).unwrap_or_default().starts_with("auth "), "{out}");

    let pod = server.list("pods", NS)[0]["metadata"]["name"].as_str().unwrap().to_owned();
    let (ok, out, err) = kubectl(&kubeconfig, &cache, &["logs", "-n", NS, &pod, "-c", "app"]);
    assert!(ok, "kubectl logs: {err}");
    assert!(out.contains("\"message\":\"ready\""), "{out}");
}

#[test]
fn kubectl_rollout_status_fails_a_deployment_past_its_progress_deadline() {
    let server =
        FakeApiServer::start_with(Config { progress_deadline: Duration::from_millis(300), ..Config::default() });
    let dir = ScratchDir::new("fake-kube");
    let kubeconfig = server.kubeconfig(dir.path(), "fake-prod", NS);
    namespace(&server);
    secret(&server);
    server.behave("auth", Behaviour::ProgressDeadline);
    server.apply_as("freedumb", deployment("auth", "app:1", Some(1)), false).unwrap();
    let (ok, out, err) = kubectl(
        &kubeconfig,
        &dir.path().join("cache"),
        &["rollout", "status", "deployment/auth", "-n", NS, "--timeout=20s"],
    );
    assert!(!ok, "kubectl rollout status should fail: {out}");
    assert!(err.contains("exceeded its progress deadline"), "{err}");
}

#[test]
fn kubectl_server_side_dry_run_of_the_rendered_prod_manifests_stores_nothing() {
    let root = crate::project_root();
    let environment = crate::environment::load(&root, "prod").expect("prod loads");
    let files =
        crate::render::render(&root, &environment, crate::render::context::Upstreams::Deployed).expect("prod renders");
    let dir = ScratchDir::new("fake-kube");
    let manifests = dir.path().join("k8s");
    std::fs::create_dir(&manifests).unwrap();
    for (path, text) in &files {
        if let Some(name) = path.strip_prefix("k8s/") {
            if name != "kustomization.yaml" {
                std::fs::write(manifests.join(name), text).unwrap();
            }
        }
    }
    let server = FakeApiServer::start();
    let kubeconfig = server.kubeconfig(dir.path(), "fake-prod", NS);
    let cache = dir.path().join("cache");
    for crd in Crd::ALL {
        server.install_crd(crd);
    }
    // A dry run creates nothing, so the namespace has to exist first, as
    // on a real cluster.
    let (ok, out, err) = kubectl(
        &kubeconfig,
        &cache,
        &["apply", "--server-side", "-f", manifests.join("namespace.yaml").to_str().unwrap()],
    );
    assert!(ok, "kubectl apply of the namespace: {out}{err}");
    server.clear_requests();

    let (ok, out, err) = kubectl(
        &kubeconfig,
        &cache,
        &["apply", "--server-side", "--dry-run=server", "-f", manifests.to_str().unwrap()],
    );
    assert!(ok, "kubectl apply --server-side --dry-run=server: {out}{err}");
    assert!(out.contains("deployment.apps/auth-service serverside-applied (server dry run)"), "{out}");
    assert!(
        out.contains("externalsecret.external-secrets.io/freedumb-secrets serverside-applied (server dry run)"),
        "{out}"
    );

    let patches: Vec<_> = server.requests().into_iter().filter(|r| r.method == "PATCH").collect();
    assert!(patches.len() > 20, "every rendered object: {}", patches.len());
    for request in &patches {
        assert_eq!(request.content_type.as_deref(), Some("application/apply-patch+yaml"), "{}", request.path);
        assert_eq!(request.param("dryRun").as_deref(), Some("All"));
        assert_eq!(request.param("fieldManager").as_deref(), Some("kubectl"));
    }
    assert!(server.list("deployments", NS).is_empty(), "a dry run stores nothing");
    let namespace: Namespace = serde_json::from_value(server.object("ns", "", NS).unwrap()).unwrap();
    assert_eq!(namespace.metadata.labels.unwrap()["kubernetes.io/metadata.name"], NS);
}

#[test]
fn an_external_secret_without_a_key_leaves_the_pods_that_need_it_unable_to_start() {
    let server = FakeApiServer::start();
    namespace(&server);
    server.install_crd(Crd::ExternalSecret);
    server.sync_secret("freedumb-secrets", SecretSync::WithoutKeys(vec!["JWT_ACCESS_SECRET".to_owned()]));
    let external = json!({"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
        "metadata": {"name": "freedumb-secrets", "namespace": NS},
        "spec": {"target": {"name": "freedumb-secrets"}, "data": [
            {"secretKey": "JWT_ACCESS_SECRET", "remoteRef": {"key": "prod/JWT_ACCESS_SECRET"}},
            {"secretKey": "REDIS_PASSWORD", "remoteRef": {"key": "prod/REDIS_PASSWORD"}}]}});
    server.apply_as("freedumb", external, false).unwrap();
    assert!(server.wait_until(WAIT, |s| s.object("secret", NS, "freedumb-secrets").is_some()));
    let data = server.object("secret", NS, "freedumb-secrets").unwrap()["data"].clone();
    assert!(data.get("REDIS_PASSWORD").is_some() && data.get("JWT_ACCESS_SECRET").is_none(), "{data}");

    server.apply_as("freedumb", deployment("auth", "app:1", Some(1)), false).unwrap();
    assert!(server.wait_until(WAIT, |s| {
        pods_of(s, "auth").iter().any(|p| waiting(p, "app").as_deref() == Some("CreateContainerConfigError"))
    }));
    let pod = pods_of(&server, "auth").remove(0);
    let message = container_status(&pod, "app").state.unwrap().waiting.unwrap().message.unwrap();
    assert_eq!(message, "couldn't find key JWT_ACCESS_SECRET in Secret freedumb/freedumb-secrets");
    let events = events_of(&server, &pod);
    assert!(
        events.iter().any(
            |e| e.type_.as_deref() == Some("Warning") && e.message.as_deref() == Some(&format!("Error: {message}"))
        )
    );
}

#[tokio::test]
async fn foreground_deletion_removes_the_dependents_first_and_a_terminating_namespace_empties() {
    let server = FakeApiServer::start();
    let dir = ScratchDir::new("fake-kube");
    let client = client(&server, &dir).await;
    namespace(&server);
    secret(&server);
    server.apply_as("freedumb", deployment("auth", "app:1", Some(2)), false).unwrap();
    server.apply_as("freedumb", deployment("budget", "app:1", Some(1)), false).unwrap();
    assert!(server.wait_rolled_out(NS, WAIT));

    let api: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let answer = api.delete("auth", &DeleteParams::foreground()).await.unwrap();
    let deleting = answer.left().expect("a foreground deletion answers the object, which stays for now");
    assert!(deleting.metadata.deletion_timestamp.is_some());
    assert!(deleting.metadata.finalizers.unwrap().contains(&"foregroundDeletion".to_owned()));
    assert!(server.wait_until(WAIT, |s| s.object("deploy", NS, "auth").is_none()));
    assert!(pods_of(&server, "auth").is_empty(), "the dependents went before their owner");
    assert_eq!(pods_of(&server, "budget").len(), 1, "nothing else was touched");
    let scaled: Vec<String> = server
        .list("events", NS)
        .into_iter()
        .filter(|e| e["involvedObject"]["kind"] == "Deployment" && e["involvedObject"]["name"] == "budget")
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect();
    assert!(
        scaled.iter().any(|m| m.starts_with("Scaled up replica set budget-") && m.ends_with(" from 0 to 1")),
        "{scaled:?}"
    );

    assert!(server.delete("namespace", "", NS));
    let namespace: Namespace = serde_json::from_value(server.object("ns", "", NS).unwrap()).unwrap();
    assert_eq!(namespace.status.unwrap().phase.as_deref(), Some("Terminating"));
    let status = api_error(api.patch("late", &apply(), &Patch::Apply(deployment("late", "app:1", None))).await);
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert!(
        status.message.ends_with("unable to create new content in namespace freedumb because it is being terminated"),
        "{}",
        status.message
    );
    assert!(server.wait_until(WAIT, |s| s.object("ns", "", NS).is_none()));
    assert!(server.list("deployments", NS).is_empty() && server.list("pods", NS).is_empty());
}

/// The rendered prod manifests, as objects in file order.
fn rendered_prod() -> Vec<Value> {
    let root = crate::project_root();
    let environment = crate::environment::load(&root, "prod").expect("prod loads");
    let files =
        crate::render::render(&root, &environment, crate::render::context::Upstreams::Deployed).expect("prod renders");
    let mut objects = Vec::new();
    for (path, text) in &files {
        if !path.starts_with("k8s/") || path.ends_with("kustomization.yaml") {
            continue;
        }
        for document in serde_yaml::Deserializer::from_str(text) {
            let value: Value = serde::Deserialize::deserialize(document).expect("a YAML document");
            if value.is_object() {
                objects.push(value);
            }
        }
    }
    objects
}

#[test]
fn the_rendered_prod_set_rolls_out_on_the_fake_cluster() {
    let server = FakeApiServer::start();
    for crd in Crd::ALL {
        server.install_crd(crd);
    }
    let objects = rendered_prod();
    let started = Instant::now();
    // The Namespace first, as on a real cluster; everything else after.
    let (namespaces, rest): (Vec<Value>, Vec<Value>) = objects.into_iter().partition(|o| o["kind"] == "Namespace");
    for object in namespaces.into_iter().chain(rest) {
        let name = format!("{}/{}", object["kind"], object["metadata"]["name"]);
        server.apply_as("freedumb", object, false).unwrap_or_else(|err| panic!("{name}: {err}"));
    }
    let deployments = server.list("deployments", NS);
    assert!(deployments.len() >= 4, "at least auth, budget, transaction and the recurring worker");
    assert!(
        server.wait_rolled_out(NS, Duration::from_secs(20)),
        "{:#?}",
        server
            .list("deployments", NS)
            .iter()
            .map(|d| (d["metadata"]["name"].clone(), d["status"].clone()))
            .collect::<Vec<_>>()
    );
    let elapsed = started.elapsed();
    for deployment in server.list("deployments", NS) {
        let name = deployment["metadata"]["name"].as_str().unwrap().to_owned();
        let minimum = server.object("hpa", NS, &name).map_or(1, |hpa| hpa["spec"]["minReplicas"].as_i64().unwrap());
        assert_eq!(deployment["spec"]["replicas"], minimum, "{name}: the HPA's minimum");
        assert_eq!(pods_of(&server, &name).len() as i64, minimum);
    }
    assert_eq!(
        server.object("externalsecret", NS, "freedumb-secrets").unwrap()["status"]["conditions"][0]["status"],
        "True"
    );
    eprintln!("the rendered prod set rolled out on the fake in {elapsed:?}");
}

#[test]
fn kubectl_applyset_prune_deletes_only_the_sets_dropped_members() {
    let server = FakeApiServer::start();
    let dir = ScratchDir::new("fake-kube");
    let kubeconfig = server.kubeconfig(dir.path(), "fake-prod", NS);
    let cache = dir.path().join("cache");
    namespace(&server);
    let configmap = |name: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {NS}\ndata:\n  a: \"1\"\n")
    };
    let outsider = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "outsider", "namespace": NS}});
    server.apply_as("someone-else", outsider, false).unwrap();
    let apply_set = |files: &[&str]| {
        let path = dir.path().join("set.yaml");
        std::fs::write(&path, files.iter().map(|n| configmap(n)).collect::<Vec<_>>().join("---\n")).unwrap();
        let output = Command::new("kubectl")
            .env("KUBECTL_APPLYSET", "true")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--cache-dir")
            .arg(&cache)
            .args(["apply", "--server-side", "--prune", "--applyset=secret/freedumb-set", "-n", NS, "-f"])
            .arg(&path)
            .output()
            .expect("kubectl runs");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "kubectl apply --applyset: {text}");
        text
    };
    apply_set(&["one", "two"]);
    let parent = server.object("secret", NS, "freedumb-set").expect("kubectl made the ApplySet's parent Secret");
    let id = parent["metadata"]["labels"]["applyset.kubernetes.io/id"].as_str().expect("an applyset id").to_owned();
    assert_eq!(parent["metadata"]["annotations"]["applyset.kubernetes.io/contains-group-kinds"], "ConfigMap");
    assert_eq!(
        server.object("cm", NS, "one").unwrap()["metadata"]["labels"]["applyset.kubernetes.io/part-of"],
        id.as_str()
    );

    let out = apply_set(&["one"]);
    assert!(out.contains("configmap/two pruned"), "{out}");
    assert!(server.object("cm", NS, "two").is_none());
    assert!(server.object("cm", NS, "one").is_some() && server.object("cm", NS, "outsider").is_some());
}

#[test]
fn a_job_completes_or_fails_past_its_backoff_limit() {
    let server = FakeApiServer::start();
    namespace(&server);
    secret(&server);
    server.behave("broken-migrate", Behaviour::CrashLoop);
    for name in ["migrate", "broken-migrate"] {
        let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": NS},
            "spec": {"backoffLimit": 1, "template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "migrate", "image": "app:1", "args": ["migrate"]}]}}}});
        server.apply_as("freedumb", job, false).unwrap();
    }
    let condition = |s: &FakeApiServer, name: &str| -> Option<(String, String)> {
        let job = s.object("job", NS, name)?;
        let conditions = job["status"]["conditions"].as_array()?.clone();
        let last = conditions.iter().find(|c| c["type"] == "Complete" || c["type"] == "Failed")?;
        Some((last["type"].as_str()?.to_owned(), last["reason"].as_str()?.to_owned()))
    };
    assert!(server.wait_until(WAIT, |s| condition(s, "migrate").is_some() && condition(s, "broken-migrate").is_some()));
    assert_eq!(condition(&server, "migrate"), Some(("Complete".to_owned(), "CompletionsReached".to_owned())));
    assert_eq!(condition(&server, "broken-migrate"), Some(("Failed".to_owned(), "BackoffLimitExceeded".to_owned())));
    let job: k8s_openapi::api::batch::v1::Job =
        serde_json::from_value(server.object("job", NS, "broken-migrate").unwrap()).unwrap();
    assert_eq!(job.status.unwrap().failed, Some(2), "the first try and one retry");
}

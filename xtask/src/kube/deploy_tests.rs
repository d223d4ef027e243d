//! The apply's requests, checked one by one as kube-rs's controller
//! examples do (`tower_test::mock::pair` in place of the HTTP connection):
//! what the deployer asks the API server, in what words.

use ::kube::client::Body;
use http::{Request, Response, StatusCode};
use serde_json::json;
use tower_test::mock::{self, Handle};

use super::*;

/// A client whose requests `handle` answers.
fn client() -> (Client, Handle<Request<Body>, Response<Body>>) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// One request as the test reads it.
struct Asked {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    content_type: String,
    body: Value,
}

/// Takes the next request and answers it with `status` and `body`.
async fn answer(handle: &mut Handle<Request<Body>, Response<Body>>, status: StatusCode, body: Value) -> Asked {
    // A deployer that stops asking fails the test instead of hanging it.
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), handle.next_request());
    let (request, send) = next.await.expect("the deployer asks within 10 s").expect("the deployer sends a request");
    let uri = request.uri().clone();
    let query = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key.to_owned(), value.to_owned())
        })
        .collect();
    let content_type =
        request.headers().get(http::header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let method = request.method().to_string();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let sent = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    send.send_response(
        Response::builder().status(status).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap(),
    );
    Asked { method, path: uri.path().to_owned(), query, content_type, body: sent }
}

fn config_map() -> Resolved {
    let value = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "freedumb-config", "namespace": "freedumb", "labels": {"app.kubernetes.io/part-of": "freedumb"}},
        "data": {"LOG_LEVEL": "info"},
    });
    Resolved {
        object: Object::from_value(value, "k8s/configmap.yaml").unwrap(),
        resource: ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
        namespaced: true,
    }
}

fn deployer(client: Client, options: Options, progress: &Progress) -> Deployer<'_> {
    Deployer::new(client, "freedumb-prod", "freedumb", options, progress)
}

#[tokio::test]
async fn a_dry_run_is_a_server_side_apply_by_freedumb_with_dry_run_all_and_without_force() {
    let (client, mut handle) = client();
    let progress = Progress::lines();
    let deployer = deployer(client, Options::default(), &progress);
    let object = config_map();
    let server = tokio::spawn(async move {
        answer(
            &mut handle,
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "freedumb-config"}}),
        )
        .await
    });
    deployer.apply(&object, true).await.unwrap();
    let asked = server.await.unwrap();
    assert_eq!(asked.method, "PATCH");
    assert_eq!(asked.path, "/api/v1/namespaces/freedumb/configmaps/freedumb-config");
    assert_eq!(asked.content_type, "application/apply-patch+yaml");
    assert_eq!(asked.query.get("fieldManager").map(String::as_str), Some("freedumb"));
    assert_eq!(asked.query.get("dryRun").map(String::as_str), Some("All"));
    assert!(!asked.query.contains_key("force"), "force only when asked: {:?}", asked.query);
    // Exactly the rendered object is sent.
    assert_eq!(asked.body, object.object.value);
}

#[tokio::test]
async fn a_real_apply_has_no_dry_run_and_forces_only_with_force_conflicts() {
    for force in [false, true] {
        let (client, mut handle) = client();
        let progress = Progress::lines();
        let options = Options { force_conflicts: force, ..Options::default() };
        let deployer = deployer(client, options, &progress);
        let server = tokio::spawn(async move {
            answer(
                &mut handle,
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "freedumb-config"}}),
            )
            .await
        });
        deployer.apply(&config_map(), false).await.unwrap();
        let asked = server.await.unwrap();
        assert!(!asked.query.contains_key("dryRun"), "{:?}", asked.query);
        assert_eq!(asked.query.get("force").map(String::as_str), force.then_some("true"), "force_conflicts: {force}");
        assert_eq!(asked.query.get("fieldManager").map(String::as_str), Some("freedumb"));
    }
}

#[tokio::test]
async fn a_conflict_with_another_field_manager_names_it_and_its_fields_before_anything_changes() {
    let (client, mut handle) = client();
    let progress = Progress::lines();
    let deployer = deployer(client, Options::default(), &progress);
    let server = tokio::spawn(async move {
        let live = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "freedumb-config", "namespace": "freedumb", "resourceVersion": "7"},
            "data": {"LOG_LEVEL": "debug"},
        });
        let get = answer(&mut handle, StatusCode::OK, live).await;
        // The real API server's answer (staging/src/k8s.io/apiserver's
        // fieldmanager), to an apply without force.
        let conflict = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using v1: .data.LOG_LEVEL",
            "reason": "Conflict",
            "details": {"causes": [{"reason": "FieldManagerConflict", "message": "conflict with \"kubectl-edit\" using v1", "field": ".data.LOG_LEVEL"}]},
            "code": 409,
        });
        let patch = answer(&mut handle, StatusCode::CONFLICT, conflict).await;
        (get, patch)
    });
    let err = deployer.plan(vec![config_map()]).await.unwrap_err().to_string();
    let (get, patch) = server.await.unwrap();
    assert_eq!((get.method.as_str(), patch.method.as_str()), ("GET", "PATCH"));
    assert_eq!(patch.query.get("dryRun").map(String::as_str), Some("All"), "conflicts are found by the dry run");
    assert_eq!(
        err,
        "server-side apply conflicts: another field manager owns fields that freedumb sets (--force-conflicts takes \
         them over):\n  ConfigMap freedumb/freedumb-config: field manager \"kubectl-edit\" owns .data.LOG_LEVEL"
    );
}

#[tokio::test]
async fn an_object_the_server_already_holds_as_rendered_is_unchanged() {
    let (client, mut handle) = client();
    let progress = Progress::lines();
    let deployer = deployer(client, Options::default(), &progress);
    let server = tokio::spawn(async move {
        let live = |version: &str| {
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "freedumb-config", "namespace": "freedumb", "resourceVersion": version,
                             "uid": "u1", "managedFields": [{"manager": "freedumb", "operation": "Apply"}],
                             "labels": {"app.kubernetes.io/part-of": "freedumb"}},
                "data": {"LOG_LEVEL": "info"},
            })
        };
        answer(&mut handle, StatusCode::OK, live("7")).await;
        answer(&mut handle, StatusCode::OK, live("8")).await;
    });
    let planned = deployer.plan(vec![config_map()]).await.unwrap();
    server.await.unwrap();
    assert_eq!(planned[0].action, Action::Unchanged);
}

#[tokio::test]
async fn a_custom_resource_whose_crd_is_absent_is_named_with_what_installs_it() {
    let (client, mut handle) = client();
    let progress = Progress::lines();
    let mut deployer = deployer(client, Options::default(), &progress);
    let external_secret = Object::from_value(
        json!({"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
               "metadata": {"name": "freedumb-secrets", "namespace": "freedumb"}}),
        "k8s/external-secret.yaml",
    )
    .unwrap();
    let server = tokio::spawn(async move {
        let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "the server could not find the requested resource", "reason": "NotFound", "code": 404});
        answer(&mut handle, StatusCode::NOT_FOUND, not_found).await
    });
    let err = deployer.resolve(vec![external_secret]).await.unwrap_err().to_string();
    let asked = server.await.unwrap();
    assert_eq!(asked.path, "/apis/external-secrets.io/v1");
    assert_eq!(
        err,
        "1 rendered object(s) need a CRD the cluster lacks (--skip-missing-crds leaves them out):\n  ExternalSecret.external-secrets.io \
         freedumb/freedumb-secrets (k8s/external-secret.yaml): the cluster does not serve external-secrets.io/v1; install the \
         External Secrets Operator (external-secrets)"
    );
}

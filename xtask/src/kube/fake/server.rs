//! The HTTP side: one handler that reads the path as the API server's
//! router does (`/apis/<group>/<version>/namespaces/<ns>/<plural>/<name>/<sub>`)
//! and answers from the store, in the real server's shapes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::kinds::Resource;
use super::select::Selector;
use super::store::{ApiError, Change, ChangeKind, State, Writer};
use super::{Request, Shared};

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(dispatch).with_state(shared)
}

type Params = BTreeMap<String, String>;

async fn dispatch(
    AxumState(shared): AxumState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header_text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let request = Request {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or_default().to_owned(),
        content_type: header_text(header::CONTENT_TYPE),
        user_agent: header_text(header::USER_AGENT),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    shared.lock().requests.push(request.clone());

    if let Some(token) = &shared.config.token {
        let expected = format!("Bearer {token}");
        if header_text(header::AUTHORIZATION).as_deref() != Some(expected.as_str()) {
            return error(&ApiError::new(401, "Unauthorized", "Unauthorized"));
        }
    }
    let params: Params = form_urlencoded::parse(request.query.as_bytes()).into_owned().collect();
    let host = header_text(header::HOST).unwrap_or_default();
    let accept = header_text(header::ACCEPT).unwrap_or_default();
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let aggregated = accept.contains("g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList");
    let result = match segments.as_slice() {
        ["api" | "apis"] if aggregated => Ok(aggregated_discovery(&shared.lock(), segments[0] == "api")),
        ["version"] => Ok(json_response(StatusCode::OK, version())),
        ["healthz" | "livez" | "readyz"] => Ok((StatusCode::OK, "ok").into_response()),
        ["api"] => Ok(json_response(
            StatusCode::OK,
            json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]}),
        )),
        ["apis"] => Ok(json_response(StatusCode::OK, group_list(&shared.lock()))),
        ["apis", group] => group_document(&shared.lock(), group).map(|doc| json_response(StatusCode::OK, doc)),
        ["api", "v1"] => resource_list(&shared.lock(), "", "v1").map(|doc| json_response(StatusCode::OK, doc)),
        ["apis", group, version] => {
            resource_list(&shared.lock(), group, version).map(|doc| json_response(StatusCode::OK, doc))
        }
        ["openapi", "v3"] => Ok(json_response(StatusCode::OK, openapi_root(&shared.lock()))),
        ["openapi", "v3", "api", "v1"] => {
            openapi_group_version(&shared.lock(), "", "v1").map(|doc| json_response(StatusCode::OK, doc))
        }
        ["openapi", "v3", "apis", group, version] => {
            openapi_group_version(&shared.lock(), group, version).map(|doc| json_response(StatusCode::OK, doc))
        }
        ["api", "v1", rest @ ..] => {
            resource_request(&shared, &method, "", "v1", rest, &params, &request, &accept).await
        }
        ["apis", group, version, rest @ ..] => {
            resource_request(&shared, &method, group, version, rest, &params, &request, &accept).await
        }
        _ => Err(not_found()),
    };
    result.unwrap_or_else(|err| error(&err))
}

fn not_found() -> ApiError {
    ApiError {
        details: json!({}),
        ..ApiError::new(404, "NotFound", "the server could not find the requested resource")
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn error(err: &ApiError) -> Response {
    json_response(StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), err.status())
}

fn version() -> Value {
    json!({
        "major": "1", "minor": "32", "emulationMajor": "1", "emulationMinor": "32",
        "gitVersion": "v1.32.0-fake", "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean", "buildDate": "2024-12-11T00:00:00Z", "goVersion": "go1.23.3",
        "compiler": "gc", "platform": "linux/amd64",
    })
}

/// The groups in discovery order (built-ins first, then custom resources).
fn groups(state: &State) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for res in state.resources() {
        if !res.group.is_empty() && !out.iter().any(|(group, _)| *group == res.group) {
            out.push((res.group.clone(), res.version.clone()));
        }
    }
    out
}

fn group_entry(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

fn group_list(state: &State) -> Value {
    let groups: Vec<Value> = groups(state).iter().map(|(group, version)| group_entry(group, version)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn group_document(state: &State, group: &str) -> Result<Value, ApiError> {
    let (group, version) = groups(state).into_iter().find(|(g, _)| g == group).ok_or_else(not_found)?;
    let mut doc = group_entry(&group, &version);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Ok(doc)
}

fn resource_list(state: &State, group: &str, version: &str) -> Result<Value, ApiError> {
    let resources: Vec<Resource> =
        state.resources().into_iter().filter(|r| r.group == group && r.version == version).collect();
    if resources.is_empty() {
        return Err(not_found());
    }
    let mut entries = Vec::new();
    for res in &resources {
        let mut entry = json!({
            "name": res.plural, "singularName": res.singular, "namespaced": res.namespaced, "kind": res.kind,
            "verbs": super::kinds::VERBS,
            "storageVersionHash": super::store::base64_encode(&super::store::fnv32a(res.group_resource().as_bytes()).to_be_bytes()),
        });
        if !res.short_names.is_empty() {
            entry["shortNames"] = json!(res.short_names);
        }
        if !res.categories.is_empty() {
            entry["categories"] = json!(res.categories);
        }
        entries.push(entry);
        for sub in &res.subresources {
            let mut entry = json!({"name": format!("{}/{sub}", res.plural), "singularName": "", "namespaced": res.namespaced,
                "kind": res.kind, "verbs": ["get", "patch", "update"]});
            match *sub {
                "scale" => {
                    entry["group"] = json!("autoscaling");
                    entry["version"] = json!("v1");
                    entry["kind"] = json!("Scale");
                }
                "log" => entry["verbs"] = json!(["get"]),
                _ => {}
            }
            entries.push(entry);
        }
    }
    let group_version = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    Ok(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": entries}))
}

/// Aggregated discovery (apidiscovery.k8s.io/v2, stable since 1.30): every
/// group's resources in one document, for clients that ask for it
/// (kubectl 1.32, kube-rs `Discovery::run_aggregated`).
fn aggregated_discovery(state: &State, core: bool) -> Response {
    let resources = state.resources();
    let mut groups: Vec<(String, String)> = if core { vec![(String::new(), "v1".to_owned())] } else { groups(state) };
    groups.retain(|(group, _)| core == group.is_empty());
    let items: Vec<Value> = groups
        .iter()
        .map(|(group, version)| {
            let entries: Vec<Value> = resources
                .iter()
                .filter(|r| r.group == *group && r.version == *version)
                .map(|res| {
                    let subresources: Vec<Value> = res
                        .subresources
                        .iter()
                        .map(|sub| {
                            let (kind, verbs) = match *sub {
                                "scale" => (
                                    json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}),
                                    json!(["get", "patch", "update"]),
                                ),
                                "log" => (json!({"group": "", "version": "", "kind": "Pod"}), json!(["get"])),
                                _ => (
                                    json!({"group": "", "version": "", "kind": res.kind}),
                                    json!(["get", "patch", "update"]),
                                ),
                            };
                            json!({"subresource": sub, "responseKind": kind, "verbs": verbs})
                        })
                        .collect();
                    let mut entry = json!({
                        "resource": res.plural,
                        "responseKind": {"group": "", "version": "", "kind": res.kind},
                        "scope": if res.namespaced { "Namespaced" } else { "Cluster" },
                        "singularResource": res.singular,
                        "verbs": super::kinds::VERBS,
                    });
                    if !res.short_names.is_empty() {
                        entry["shortNames"] = json!(res.short_names);
                    }
                    if !res.categories.is_empty() {
                        entry["categories"] = json!(res.categories);
                    }
                    if !subresources.is_empty() {
                        entry["subresources"] = json!(subresources);
                    }
                    entry
                })
                .collect();
            json!({"metadata": {"name": group, "creationTimestamp": null},
                "versions": [{"version": version, "resources": entries, "freshness": "Current"}]})
        })
        .collect();
    let body = json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items});
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")],
        body.to_string(),
    )
        .into_response()
}

/// The OpenAPI v3 index: one document per group-version. kubectl reads it
/// to learn that PATCH takes `fieldValidation` (and then validates on the
/// server instead of downloading schemas).
fn openapi_root(state: &State) -> Value {
    let mut paths = serde_json::Map::new();
    let mut seen = Vec::new();
    for res in state.resources() {
        let path = if res.group.is_empty() {
            format!("api/{}", res.version)
        } else {
            format!("apis/{}/{}", res.group, res.version)
        };
        if !seen.contains(&path) {
            let hash = format!("{:08X}", super::store::fnv32a(path.as_bytes()));
            paths.insert(path.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}));
            seen.push(path);
        }
    }
    json!({"paths": paths})
}

/// A group-version's OpenAPI v3 document, reduced to what clients read:
/// each resource's paths, the PATCH operation with its GVK extension and
/// query parameters. Schemas accept any object (this server validates
/// nothing a schema would).
fn openapi_group_version(state: &State, group: &str, version: &str) -> Result<Value, ApiError> {
    let resources: Vec<Resource> =
        state.resources().into_iter().filter(|r| r.group == group && r.version == version).collect();
    if resources.is_empty() {
        return Err(not_found());
    }
    let prefix = if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for res in &resources {
        let gvk = json!({"group": group, "version": version, "kind": res.kind});
        let parameters: Vec<Value> = ["dryRun", "fieldManager", "fieldValidation", "force"]
            .iter()
            .map(|name| json!({"name": name, "in": "query", "schema": {"type": if *name == "force" { "boolean" } else { "string" }}, "uniqueItems": true}))
            .collect();
        let scope = if res.namespaced { "/namespaces/{namespace}" } else { "" };
        let item = format!("{prefix}{scope}/{}/{{name}}", res.plural);
        let schema_name = format!("io.k8s.fake.{}.{}", if group.is_empty() { "core" } else { group }, res.kind);
        let reference = json!({"$ref": format!("#/components/schemas/{schema_name}")});
        let body = json!({"content": {"application/json": {"schema": reference}}});
        let ok = json!({"200": {"description": "OK", "content": {"application/json": {"schema": reference}}}});
        paths.insert(
            item,
            json!({
                "get": {"operationId": format!("read{}", res.kind), "x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk, "responses": ok},
                "put": {"operationId": format!("replace{}", res.kind), "x-kubernetes-action": "put", "x-kubernetes-group-version-kind": gvk, "requestBody": body, "responses": ok},
                "patch": {"operationId": format!("patch{}", res.kind), "x-kubernetes-action": "patch", "x-kubernetes-group-version-kind": gvk,
                    "parameters": parameters, "requestBody": {"content": {"application/apply-patch+yaml": {"schema": {"type": "object"}},
                        "application/merge-patch+json": {"schema": {"type": "object"}}, "application/strategic-merge-patch+json": {"schema": {"type": "object"}}}},
                    "responses": ok},
                "delete": {"operationId": format!("delete{}", res.kind), "x-kubernetes-action": "delete", "x-kubernetes-group-version-kind": gvk, "responses": ok},
            }),
        );
        paths.insert(
            format!("{prefix}{scope}/{}", res.plural),
            json!({
                "get": {"operationId": format!("list{}", res.kind), "x-kubernetes-action": "list", "x-kubernetes-group-version-kind": gvk, "responses": ok},
                "post": {"operationId": format!("create{}", res.kind), "x-kubernetes-action": "post", "x-kubernetes-group-version-kind": gvk, "requestBody": body, "responses": ok},
            }),
        );
        schemas.insert(
            schema_name,
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true, "x-kubernetes-group-version-kind": [gvk]}),
        );
    }
    Ok(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0-fake"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// What a resource path names.
struct Target {
    res: Resource,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(state: &State, group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if state.resource(group, version, plural).is_some_and(|r| r.namespaced) =>
        {
            (Some((*ns).to_owned()), [&[*plural][..], tail].concat())
        }
        _ => (None, rest.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some((*name).to_owned()), None),
        [plural, name, sub] => (*plural, Some((*name).to_owned()), Some((*sub).to_owned())),
        _ => return Err(not_found()),
    };
    let res = state.resource(group, version, plural).ok_or_else(not_found)?;
    if res.namespaced && namespace.is_none() && name.is_some() {
        return Err(not_found());
    }
    if let Some(sub) = &sub {
        if !res.has(sub) {
            return Err(not_found());
        }
    }
    Ok(Target { res, namespace, name, sub })
}

#[allow(clippy::too_many_arguments)]
async fn resource_request(
    shared: &Arc<Shared>,
    method: &Method,
    group: &str,
    version: &str,
    rest: &[&str],
    params: &Params,
    request: &Request,
    accept: &str,
) -> Result<Response, ApiError> {
    let target = parse_target(&shared.lock(), group, version, rest)?;
    let ns = target.namespace.clone().unwrap_or_default();
    let dry_run = match params.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!("Invalid value: \"{other}\": supported values: \"All\"")));
        }
    };
    let manager = params.get("fieldManager").cloned().unwrap_or_else(|| {
        // As the real server does: the user agent up to its first slash.
        request.user_agent.as_deref().unwrap_or("unknown").split('/').next().unwrap_or("unknown").to_owned()
    });
    let writer = Writer { manager: &manager, subresource: target.sub.as_deref().filter(|s| *s != "log"), dry_run };
    let res = &target.res;
    let table = accept.contains("as=Table");

    match (method.clone(), target.name.as_deref(), target.sub.as_deref()) {
        (Method::GET, None, None) => {
            let labels = Selector::parse(params.get("labelSelector").map_or("", String::as_str))
                .map_err(ApiError::bad_request)?;
            let fields = Selector::parse(params.get("fieldSelector").map_or("", String::as_str))
                .map_err(ApiError::bad_request)?;
            if matches!(params.get("watch").map(String::as_str), Some("1" | "true")) {
                return watch(shared, res.clone(), target.namespace.clone(), labels, fields, params);
            }
            let state = shared.lock();
            let items: Vec<Value> = state
                .list(res, target.namespace.as_deref())
                .into_iter()
                .filter(|object| labels.matches_labels(object) && fields.matches_fields(object))
                .map(|object| list_item(res, object))
                .collect();
            let rv = state.resource_version().to_string();
            if table {
                return Ok(json_response(StatusCode::OK, super::controller::table(res, &items, &rv)));
            }
            Ok(json_response(
                StatusCode::OK,
                json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(),
                    "metadata": {"resourceVersion": rv}, "items": items}),
            ))
        }
        (Method::GET, Some(name), None | Some("status")) => {
            let state = shared.lock();
            let object = state.get(res, &ns, name).cloned().ok_or_else(|| ApiError::not_found(res, name))?;
            if table {
                let rv = state.resource_version().to_string();
                return Ok(json_response(StatusCode::OK, super::controller::table(res, &[object], &rv)));
            }
            Ok(json_response(StatusCode::OK, object))
        }
        (Method::GET, Some(name), Some("scale")) => {
            let state = shared.lock();
            let object = state.get(res, &ns, name).ok_or_else(|| ApiError::not_found(res, name))?;
            Ok(json_response(StatusCode::OK, scale_of(object)))
        }
        (Method::GET, Some(name), Some("log")) => logs(shared, &ns, name, params),
        (Method::POST, None, None) => {
            let object = parse_body(request)?;
            if let Some(body_ns) = object.pointer("/metadata/namespace").and_then(Value::as_str) {
                if res.namespaced && body_ns != ns {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
            }
            let created = shared.write(|state| state.create(res, &ns, object, writer))?;
            Ok(json_response(StatusCode::CREATED, created))
        }
        (Method::PUT, Some(name), None | Some("status")) => {
            let object = parse_body(request)?;
            let updated = shared.write(|state| state.update(res, &ns, name, object, writer))?;
            Ok(json_response(StatusCode::OK, updated))
        }
        (Method::PUT | Method::PATCH, Some(name), Some("scale")) => {
            let body = parse_body(request)?;
            let replicas = body
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .ok_or_else(|| ApiError::bad_request("spec.replicas is required"))?;
            let scaled = shared.write(|state| {
                let mut object = state.get(res, &ns, name).cloned().ok_or_else(|| ApiError::not_found(res, name))?;
                object["spec"]["replicas"] = json!(replicas);
                state.update(res, &ns, name, object, writer)
            })?;
            Ok(json_response(StatusCode::OK, scale_of(&scaled)))
        }
        (Method::PATCH, Some(name), sub @ (None | Some("status"))) => {
            let content_type = request.content_type.as_deref().unwrap_or_default();
            let mime = content_type.split(';').next().unwrap_or_default().trim();
            let force = matches!(params.get("force").map(String::as_str), Some("true" | "1"));
            if force && mime != "application/apply-patch+yaml" {
                return Err(ApiError::bad_request("force is only allowed for apply"));
            }
            match mime {
                "application/apply-patch+yaml" => {
                    if !params.contains_key("fieldManager") {
                        return Err(ApiError::bad_request("fieldManager is required for apply requests"));
                    }
                    if sub.is_some() {
                        return Err(ApiError::bad_request(
                            "apply to the status subresource is not supported by this server",
                        ));
                    }
                    let patch = parse_body(request)?;
                    let (object, created) = shared.write(|state| state.apply(res, &ns, name, patch, writer, force))?;
                    Ok(json_response(if created { StatusCode::CREATED } else { StatusCode::OK }, object))
                }
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                    let patch = parse_body(request)?;
                    let strategic = mime == "application/strategic-merge-patch+json" && !res.custom;
                    if mime == "application/strategic-merge-patch+json" && res.custom {
                        return Err(ApiError::new(
                            415,
                            "UnsupportedMediaType",
                            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                        ));
                    }
                    let object = shared.write(|state| state.patch(res, &ns, name, &patch, strategic, writer))?;
                    Ok(json_response(StatusCode::OK, object))
                }
                other => Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format ({other}) - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
                    ),
                )),
            }
        }
        (Method::DELETE, Some(name), None) => {
            let propagation = propagation(request, params);
            let answer = shared.write(|state| state.delete(res, &ns, name, &propagation, dry_run))?;
            Ok(json_response(StatusCode::OK, answer))
        }
        (Method::DELETE, None, None) => {
            let labels = Selector::parse(params.get("labelSelector").map_or("", String::as_str))
                .map_err(ApiError::bad_request)?;
            let propagation = propagation(request, params);
            let deleted = shared.write(|state| {
                let names: Vec<(String, String)> = state
                    .list(res, target.namespace.as_deref())
                    .into_iter()
                    .filter(|object| labels.matches_labels(object))
                    .map(|object| {
                        let meta = &object["metadata"];
                        (
                            meta["namespace"].as_str().unwrap_or_default().to_owned(),
                            meta["name"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect();
                let mut items = Vec::new();
                for (namespace, name) in names {
                    if let Some(object) = state.get(res, &namespace, &name).cloned() {
                        state.delete(res, &namespace, &name, &propagation, dry_run)?;
                        items.push(list_item(res, &object));
                    }
                }
                Ok::<_, ApiError>(items)
            })?;
            Ok(json_response(
                StatusCode::OK,
                json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(), "metadata": {}, "items": deleted}),
            ))
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource"),
        )),
    }
}

/// Items of a built-in list carry no kind or apiVersion (the typed list
/// encodes them once); custom resources' items keep theirs.
fn list_item(res: &Resource, object: &Value) -> Value {
    let mut item = object.clone();
    if !res.custom {
        if let Some(map) = item.as_object_mut() {
            map.remove("kind");
            map.remove("apiVersion");
        }
    }
    item
}

fn propagation(request: &Request, params: &Params) -> String {
    let from_body = serde_json::from_str::<Value>(&request.body)
        .ok()
        .and_then(|body| body.get("propagationPolicy").and_then(Value::as_str).map(str::to_owned));
    let orphan = serde_json::from_str::<Value>(&request.body)
        .ok()
        .and_then(|body| body.get("orphanDependents").and_then(Value::as_bool));
    params
        .get("propagationPolicy")
        .cloned()
        .or(from_body)
        .or_else(|| (orphan == Some(true)).then(|| "Orphan".to_owned()))
        .unwrap_or_else(|| "Background".to_owned())
}

/// JSON, or YAML (an apply body may be either).
fn parse_body(request: &Request) -> Result<Value, ApiError> {
    if let Ok(value) = serde_json::from_str::<Value>(&request.body) {
        return Ok(value);
    }
    serde_yaml::from_str::<Value>(&request.body)
        .map_err(|err| ApiError::bad_request(format!("error decoding YAML: {err}")))
}

fn scale_of(object: &Value) -> Value {
    let meta = &object["metadata"];
    let selector: Vec<String> = object
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or_default()))
        .collect();
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"]},
        "spec": {"replicas": object.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {"replicas": object.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector.join(",")},
    })
}

/// The watch event a change is for this watch, if any: an object that
/// leaves the selection is DELETED for it, one that enters it ADDED.
fn event_for(
    change: &Change,
    res: &Resource,
    namespace: Option<&str>,
    labels: &Selector,
    fields: &Selector,
) -> Option<(&'static str, Value)> {
    if change.key.group != res.group || change.key.plural != res.plural {
        return None;
    }
    if namespace.is_some_and(|ns| res.namespaced && change.key.namespace != ns) {
        return None;
    }
    let selected = |object: &Value| labels.matches_labels(object) && fields.matches_fields(object);
    let was = change.old.as_ref().is_some_and(selected);
    let is = change.kind != ChangeKind::Deleted && selected(&change.object);
    match (was, is) {
        (false, true) => Some(("ADDED", change.object.clone())),
        (true, true) => Some(("MODIFIED", change.object.clone())),
        (true, false) => Some(("DELETED", change.object.clone())),
        (false, false) => None,
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": kind, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

fn watch(
    shared: &Arc<Shared>,
    res: Resource,
    namespace: Option<String>,
    labels: Selector,
    fields: Selector,
    params: &Params,
) -> Result<Response, ApiError> {
    let rv_param = params.get("resourceVersion").cloned().unwrap_or_default();
    let initial_events = params.get("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = params.get("timeoutSeconds").and_then(|s| s.parse::<u64>().ok()).map(Duration::from_secs);
    let (first, receiver, from) = {
        let state = shared.lock();
        // Subscribed under the lock: nothing written between the snapshot
        // and the live events can be missed or sent twice.
        let receiver = state.subscribe();
        let now = state.resource_version();
        let mut first = Vec::new();
        if rv_param.is_empty() || rv_param == "0" || initial_events {
            for object in state.list(&res, namespace.as_deref()) {
                if labels.matches_labels(object) && fields.matches_fields(object) {
                    first.push(line("ADDED", object));
                }
            }
            if initial_events {
                let bookmark = json!({"kind": res.kind, "apiVersion": res.api_version(),
                    "metadata": {"resourceVersion": now.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
                first.push(line("BOOKMARK", &bookmark));
            }
        } else {
            let since: u64 = rv_param
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv_param:?}")))?;
            match state.changes_since(since) {
                Some(changes) => {
                    for change in changes {
                        if let Some((kind, object)) = event_for(&change, &res, namespace.as_deref(), &labels, &fields) {
                            first.push(line(kind, &object));
                        }
                    }
                }
                None => {
                    let gone = ApiError::new(
                        410,
                        "Expired",
                        format!("too old resource version: {since} ({})", state.oldest_retained()),
                    );
                    first.push(line("ERROR", &gone.status()));
                    let body = futures::stream::iter(first.into_iter().map(Ok::<_, Infallible>));
                    return Ok(stream_response("application/json", Body::from_stream(body)));
                }
            }
        }
        (first, receiver, now)
    };
    let live = futures::stream::unfold(receiver, move |mut receiver| {
        let (res, namespace, labels, fields) = (res.clone(), namespace.clone(), labels.clone(), fields.clone());
        async move {
            loop {
                match receiver.recv().await {
                    Ok(change) if change.rv > from => {
                        if let Some((kind, object)) = event_for(&change, &res, namespace.as_deref(), &labels, &fields) {
                            return Some((line(kind, &object), receiver));
                        }
                    }
                    Ok(_) => {}
                    // A watcher too slow to keep up is dropped, as the real
                    // server drops it; the client watches again.
                    Err(RecvError::Lagged(_) | RecvError::Closed) => return None,
                }
            }
        }
    });
    let events = futures::stream::iter(first).chain(live);
    let body: futures::stream::BoxStream<'static, Bytes> = match timeout {
        Some(timeout) => events.take_until(tokio::time::sleep(timeout)).boxed(),
        None => events.boxed(),
    };
    Ok(stream_response("application/json", Body::from_stream(body.map(Ok::<_, Infallible>))))
}

fn stream_response(content_type: &'static str, body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .expect("a response")
}

/// `pods/{name}/log`, with the kubelet's refusals.
fn logs(shared: &Arc<Shared>, namespace: &str, name: &str, params: &Params) -> Result<Response, ApiError> {
    let state = shared.lock();
    let pods = state.resource_named("pods").expect("built in");
    let pod = state.get(&pods, namespace, name).cloned().ok_or_else(|| ApiError::not_found(&pods, name))?;
    let names = |list: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    };
    let (containers, init) = (names("containers"), names("initContainers"));
    let container = match params.get("container") {
        Some(container) => container.clone(),
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            let mut message =
                format!("a container name must be specified for pod {name}, choose one of: [{}]", containers.join(" "));
            if !init.is_empty() {
                message.push_str(&format!(" or one of the init containers: [{}]", init.join(" ")));
            }
            return Err(ApiError::bad_request(message));
        }
    };
    if !containers.contains(&container) && !init.contains(&container) {
        return Err(ApiError::bad_request(format!("container {container} is not valid for pod {name}")));
    }
    let key = (namespace.to_owned(), name.to_owned(), container.clone());
    let all = state.logs.get(&key).cloned().unwrap_or_default();
    let previous = params.get("previous").is_some_and(|v| v == "true");
    let restarts = super::controller::restart_count(&pod, &container);
    let lines: Vec<_> = if previous {
        if restarts == 0 {
            return Err(ApiError::bad_request(format!(
                "previous terminated container \"{container}\" in pod \"{name}\" not found"
            )));
        }
        all.iter().filter(|line| line.instance + 1 == restarts).cloned().collect()
    } else {
        // The latest instance that wrote anything: a container waiting in
        // CrashLoopBackOff shows the run that crashed, as the kubelet does.
        let latest = all.iter().map(|line| line.instance).max().unwrap_or(0);
        all.iter().filter(|line| line.instance == latest).cloned().collect()
    };
    if lines.is_empty() && !previous {
        if let Some(reason) = super::controller::waiting_reason(&pod, &container) {
            let why = match reason.as_str() {
                "ErrImagePull" | "ImagePullBackOff" => "trying and failing to pull image".to_owned(),
                other => other.to_owned(),
            };
            return Err(ApiError::bad_request(format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: {why}"
            )));
        }
    }
    let tail = params.get("tailLines").and_then(|n| n.parse::<usize>().ok());
    let timestamps = params.get("timestamps").is_some_and(|v| v == "true");
    let skip = tail.map_or(0, |tail| lines.len().saturating_sub(tail));
    let render = move |time: &str, text: &str| {
        if timestamps { format!("{time} {text}\n") } else { format!("{text}\n") }
    };
    let mut text = String::new();
    for line in &lines[skip..] {
        text.push_str(&render(&line.time, &line.text));
    }
    if !params.get("follow").is_some_and(|v| v == "true") {
        return Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response());
    }
    // Follow: what there is, then each new line, until the pod is gone.
    let mut lines_rx = state.log_tx.subscribe();
    let mut changes = state.subscribe();
    drop(state);
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        if tx.send(Bytes::from(text)).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                line = lines_rx.recv() => match line {
                    Ok(line) if line.namespace == namespace && line.pod == name && line.container == container => {
                        if tx.send(Bytes::from(render(&line.time, &line.text))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
                change = changes.recv() => match change {
                    Ok(change) if change.kind == ChangeKind::Deleted && change.key.plural == "pods"
                        && change.key.namespace == namespace && change.key.name == name => return,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                },
            }
        }
    });
    let body = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|bytes| (bytes, rx)) });
    Ok(stream_response("text/plain", Body::from_stream(body.map(Ok::<_, Infallible>))))
}

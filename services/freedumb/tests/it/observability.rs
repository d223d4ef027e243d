//! What an operator sees: metrics labelled by route template, and an API
//! description generated from the code.

use serde_json::Value;

use crate::helpers::spawn_app;

#[tokio::test]
async fn metrics_label_requests_by_route_template_never_by_raw_path() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    for _ in 0..2 {
        assert_eq!(app.get_authed("/v1/auth/me", &user.access_token).await.status(), 200);
    }
    app.get("/v1/nothing/3f1c1a52-0000-0000-0000-000000000000").await;
    app.get("/wp-login.php").await;

    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(text.contains(r#"http_requests_total{method="GET",route="/v1/auth/me",status_code="200"} 2"#), "{text}");
    assert!(text.contains(
        r#"http_request_duration_seconds_bucket{method="GET",route="/v1/auth/me",status_code="200",le="0.005"}"#
    ));
    assert!(text.contains(r#"http_requests_total{method="GET",route="unmatched",status_code="404"} 2"#), "{text}");
    assert!(!text.contains("wp-login") && !text.contains("3f1c1a52"), "raw paths never become labels");
    // The second `me` is served from the cache.
    assert!(text.contains(r#"cache_misses_total{cache_key_prefix="auth_user"} 1"#), "{text}");
    assert!(text.contains(r#"cache_hits_total{cache_key_prefix="auth_user"} 1"#), "{text}");
    for name in
        ["active_transactions 0", "process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"]
    {
        assert!(text.contains(name), "{name} missing");
    }
}

#[tokio::test]
async fn the_openapi_document_covers_every_route_and_error() {
    let app = spawn_app().await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));

    let paths = doc["paths"].as_object().unwrap();
    let mut documented: Vec<String> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object().unwrap().keys().map(move |method| format!("{} {path}", method.to_uppercase()))
        })
        .collect();
    documented.sort();
    // Every route the platform serves; a new route must be added here, and
    // documented, or this fails.
    assert_eq!(
        documented,
        [
            "DELETE /v1/budgets/{id}",
            "DELETE /v1/categories/{id}",
            "DELETE /v1/goals/{id}",
            "DELETE /v1/instruments/{id}",
            "DELETE /v1/portfolios/{id}",
            "DELETE /v1/portfolios/{id}/activities/{activity_id}",
            "DELETE /v1/recurring/{id}",
            "DELETE /v1/transactions/{id}",
            "GET /health",
            "GET /metrics",
            "GET /openapi.json",
            "GET /ready",
            "GET /v1/accounts",
            "GET /v1/accounts/{id}",
            "GET /v1/analytics/budgets",
            "GET /v1/analytics/cash-flow",
            "GET /v1/analytics/income-expense",
            "GET /v1/analytics/net-worth",
            "GET /v1/analytics/projection",
            "GET /v1/analytics/spending/categories",
            "GET /v1/analytics/spending/payees",
            "GET /v1/analytics/summary",
            "GET /v1/auth/me",
            "GET /v1/budgets",
            "GET /v1/budgets/{id}",
            "GET /v1/categories",
            "GET /v1/goals",
            "GET /v1/goals/{id}",
            "GET /v1/holdings",
            "GET /v1/instruments",
            "GET /v1/instruments/{id}",
            "GET /v1/portfolios",
            "GET /v1/portfolios/{id}",
            "GET /v1/portfolios/{id}/activities",
            "GET /v1/portfolios/{id}/activities/{activity_id}",
            "GET /v1/portfolios/{id}/performance",
            "GET /v1/portfolios/{id}/valuation",
            "GET /v1/recurring",
            "GET /v1/recurring/{id}",
            "GET /v1/reports",
            "GET /v1/reports/{id}",
            "GET /v1/reports/{id}/download",
            "GET /v1/transactions",
            "GET /v1/transactions/{id}",
            "PATCH /v1/accounts/{id}",
            "PATCH /v1/budgets/{id}",
            "PATCH /v1/categories/{id}",
            "PATCH /v1/goals/{id}",
            "PATCH /v1/portfolios/{id}",
            "PATCH /v1/recurring/{id}",
            "PATCH /v1/transactions/{id}",
            "POST /v1/accounts",
            "POST /v1/accounts/{id}/archive",
            "POST /v1/accounts/{id}/unarchive",
            "POST /v1/auth/login",
            "POST /v1/auth/logout",
            "POST /v1/auth/refresh",
            "POST /v1/auth/register",
            "POST /v1/budgets",
            "POST /v1/categories",
            "POST /v1/categories/{id}/merge",
            "POST /v1/goals",
            "POST /v1/goals/{id}/contributions",
            "POST /v1/instruments",
            "POST /v1/portfolios",
            "POST /v1/portfolios/{id}/activities",
            "POST /v1/portfolios/{id}/activities/import",
            "POST /v1/recurring",
            "POST /v1/reports",
            "POST /v1/reports/{id}/cancel",
            "POST /v1/transactions",
            "POST /v1/transactions/import",
            "POST /v1/transactions/transfers",
        ]
    );

    // Every request body is described, and every 4xx answer uses the error shape.
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            // Archiving, un-archiving and cancelling are actions on the
            // resource the path names: no body.
            let action = path.ends_with("archive") || path.ends_with("/cancel");
            if method == "patch" || (method == "post" && !action) {
                assert!(op["requestBody"]["content"]["application/json"]["schema"].is_object(), "{method} {path}");
            }
            for (status, response) in op["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    assert_eq!(schema, "#/components/schemas/ErrorBody", "{method} {path} {status}");
                }
            }
        }
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in ["ErrorBody", "FieldError", "RegisterRequest", "LoginRequest", "RefreshRequest", "Tokens", "User"] {
        assert!(schemas.contains_key(name), "schema {name} missing");
    }
    assert_eq!(doc["paths"]["/v1/auth/me"]["get"]["security"][0]["bearer"], serde_json::json!([]));
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
}

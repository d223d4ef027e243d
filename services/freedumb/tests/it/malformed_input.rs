//! Whatever a client sends, it gets a 4xx in the one error shape: never a
//! 500, never axum's plain-text rejections.

use serde_json::json;

use crate::helpers::{error_body, spawn_app};

#[tokio::test]
async fn broken_json_is_a_400() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/v1/auth/login"))
        .header("content-type", "application/json")
        .body(r#"{"email": "a@example.com", "password": "#)
        .send()
        .await
        .unwrap();
    let body = error_body(response, 400).await;
    assert_eq!(body["code"], "malformed_json");
}

#[tokio::test]
async fn a_body_that_is_not_json_is_a_415() {
    let app = spawn_app().await;
    for content_type in [None, Some("text/plain"), Some("application/x-www-form-urlencoded")] {
        let mut request = app.client.post(app.url("/v1/auth/register")).body("email=a@example.com");
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let body = error_body(request.send().await.unwrap(), 415).await;
        assert_eq!(body["code"], "unsupported_media_type", "{content_type:?}");
    }
}

#[tokio::test]
async fn unknown_and_mistyped_fields_are_named() {
    let app = spawn_app().await;
    let body = error_body(
        app.post_json(
            "/v1/auth/register",
            &json!({"email": "a@example.com", "password": "x".repeat(12), "role": "admin"}),
        )
        .await,
        422,
    )
    .await;
    assert!(body["details"][0]["message"].as_str().unwrap().contains("unknown field `role`"), "{body}");

    let body = error_body(app.post_json("/v1/auth/login", &json!({"email": ["a"], "password": "x"})).await, 422).await;
    assert_eq!(body["details"][0]["field"], "email");

    let body = error_body(app.post_json("/v1/auth/refresh", &json!({})).await, 422).await;
    assert!(body["message"].as_str().unwrap().contains("missing field `refresh_token`"), "{body}");

    let body = error_body(app.post_json("/v1/auth/refresh", &json!([1, 2])).await, 422).await;
    assert_eq!(body["code"], "validation_failed");
}

#[tokio::test]
async fn a_body_over_10_mib_is_a_413() {
    let app = spawn_app().await;
    let padding = "x".repeat(10 * 1024 * 1024 + 1);
    let response = app
        .client
        .post(app.url("/v1/auth/login"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"email": "a@example.com", "password": "{padding}"}}"#))
        .send()
        .await
        .unwrap();
    let body = error_body(response, 413).await;
    assert_eq!(body["code"], "payload_too_large");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_error_shape() {
    let app = spawn_app().await;
    let body = error_body(app.get("/v1/nothing/here").await, 404).await;
    assert_eq!(body["code"], "not_found");

    let response = app.client.delete(app.url("/v1/auth/login")).send().await.unwrap();
    assert_eq!(response.headers()["allow"], "POST", "the Allow header survives the rewrite");
    let body = error_body(response, 405).await;
    assert_eq!(body["code"], "method_not_allowed");
}

#[tokio::test]
async fn a_caller_request_id_is_echoed_and_a_hostile_one_replaced() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/health")).header("x-request-id", "trace-me-123").send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me-123");

    let response = app.client.get(app.url("/health")).header("x-request-id", "a".repeat(300)).send().await.unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "a fresh UUID replaces an oversized id: {id}");
}

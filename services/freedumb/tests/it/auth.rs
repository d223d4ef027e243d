//! A user's story with the auth service: sign up, sign in, use the API,
//! stay signed in, sign out, and what happens to an attacker on the way.

use serde_json::{Value, json};

use crate::helpers::{ACCESS_SECRET, PASSWORD, error_body, spawn_app, spawn_app_with, unique_email};

#[tokio::test]
async fn register_login_me_refresh_logout() {
    let app = spawn_app().await;
    let email = unique_email();

    // Register; the email comes back normalised.
    let response = app.register(&format!("  {}  ", email.to_uppercase()), PASSWORD).await;
    assert_eq!(response.status(), 201);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["email"], email);
    assert!(user.get("password_hash").is_none(), "the hash never leaves the service");

    // Log in.
    let response = app.login(&email, PASSWORD).await;
    assert_eq!(response.status(), 200);
    let tokens: Value = response.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 900, "access tokens live 15 minutes");
    let access = tokens["access_token"].as_str().unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap();

    // Me.
    let me: Value = app.get_authed("/v1/auth/me", access).await.json().await.unwrap();
    assert_eq!(me["id"], user["id"]);
    assert_eq!(me["email"], email);

    // Refresh: new tokens, and the new access token works.
    let response = app.refresh(refresh).await;
    assert_eq!(response.status(), 200);
    let rotated: Value = response.json().await.unwrap();
    let next_refresh = rotated["refresh_token"].as_str().unwrap();
    assert_ne!(next_refresh, refresh, "refresh tokens rotate on every use");
    let response = app.get_authed("/v1/auth/me", rotated["access_token"].as_str().unwrap()).await;
    assert_eq!(response.status(), 200);

    // Log out: the refresh token no longer works.
    let response = app.post_json("/v1/auth/logout", &json!({ "refresh_token": next_refresh })).await;
    assert_eq!(response.status(), 204);
    let body = error_body(app.refresh(next_refresh).await, 401).await;
    assert_eq!(body["code"], "unauthorized");
}

#[tokio::test]
async fn refresh_tokens_are_stored_only_as_hashes() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let mut conn = connect(&app.db.url).await;
    let stored: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT token_hash FROM auth.refresh_tokens").fetch_all(&mut conn).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0], user.refresh_token.as_bytes());
    let hashes: Vec<String> =
        sqlx::query_scalar("SELECT password_hash FROM auth.users").fetch_all(&mut conn).await.unwrap();
    assert!(hashes[0].starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "OWASP argon2id parameters: {}", hashes[0]);
}

#[tokio::test]
async fn reusing_a_rotated_refresh_token_revokes_the_whole_sign_in() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;

    // The legitimate client refreshes...
    let rotated: Value = app.refresh(&user.refresh_token).await.json().await.unwrap();
    let current = rotated["refresh_token"].as_str().unwrap().to_owned();

    // ...then a stolen copy of the old token is replayed.
    let body = error_body(app.refresh(&user.refresh_token).await, 401).await;
    assert!(body["message"].as_str().unwrap().contains("already used"), "{body}");

    // Every token of that sign-in is dead now, the current one included.
    error_body(app.refresh(&current).await, 401).await;

    // Another sign-in of the same user is unaffected.
    let other: Value = app.login(&user.email, PASSWORD).await.json().await.unwrap();
    assert_eq!(app.refresh(other["refresh_token"].as_str().unwrap()).await.status(), 200);
}

#[tokio::test]
async fn unknown_email_and_wrong_password_look_the_same() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;

    let wrong_password = error_body(app.login(&user.email, "not the right password").await, 401).await;
    let unknown_email = error_body(app.login(&unique_email(), PASSWORD).await, 401).await;
    let malformed_email = error_body(app.login("not-an-email", PASSWORD).await, 401).await;
    for body in [&unknown_email, &malformed_email] {
        assert_eq!(body["code"], wrong_password["code"]);
        assert_eq!(body["message"], wrong_password["message"]);
    }
}

#[tokio::test]
async fn registration_explains_what_is_wrong_with_each_field() {
    let app = spawn_app().await;

    let body = error_body(app.register("nobody", "short").await, 422).await;
    let fields: Vec<&str> = body["details"].as_array().unwrap().iter().map(|d| d["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["email", "password"]);
    assert_eq!(body["details"][1]["message"], "must be at least 12 characters long");

    let body = error_body(app.register(&unique_email(), "password1234").await, 422).await;
    assert!(body["details"][0]["message"].as_str().unwrap().contains("too common"));
}

#[tokio::test]
async fn an_email_registers_once() {
    let app = spawn_app().await;
    let email = unique_email();
    assert_eq!(app.register(&email, PASSWORD).await.status(), 201);
    let body = error_body(app.register(&email.to_uppercase(), PASSWORD).await, 409).await;
    assert_eq!(body["code"], "email_taken");
}

#[tokio::test]
async fn repeated_failures_lock_the_account_for_a_while() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;

    for _ in 0..5 {
        error_body(app.login(&user.email, "not the right password").await, 401).await;
    }
    let response = app.login(&user.email, PASSWORD).await;
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=900).contains(&retry_after), "Retry-After within the 15-minute window: {retry_after}");
    let body = error_body(response, 429).await;
    assert_eq!(body["code"], "too_many_requests");

    // Other accounts are not affected.
    let other = app.signed_in_user().await;
    assert_eq!(app.login(&other.email, PASSWORD).await.status(), 200);
}

#[tokio::test]
async fn one_address_trying_many_accounts_is_slowed_down() {
    let app = spawn_app_with(|env| {
        env.insert("LOGIN_IP_MAX_ATTEMPTS".into(), "3".into());
    })
    .await;

    // The gateway (a trusted proxy on loopback) passes the client's address.
    for _ in 0..3 {
        error_body(app.login_from("198.51.100.7", &unique_email(), PASSWORD).await, 401).await;
    }
    let response = app.login_from("198.51.100.7", &unique_email(), PASSWORD).await;
    assert!(response.headers().contains_key("retry-after"));
    error_body(response, 429).await;

    // A different client is served.
    error_body(app.login_from("198.51.100.8", &unique_email(), PASSWORD).await, 401).await;
}

#[tokio::test]
async fn protected_routes_want_a_valid_unexpired_token() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let claims: Value = decode_claims(&user.access_token);

    let cases = [
        ("missing", None),
        ("not bearer", Some(format!("Basic {}", "dXNlcjpwYXNz"))),
        ("garbage", Some("Bearer not.a.jwt".to_owned())),
        ("forged", Some(format!("Bearer {}", sign(&claims, "another-secret-that-is-32-bytes-long")))),
        ("expired", Some(format!("Bearer {}", sign(&with_expiry(&claims, -3600), ACCESS_SECRET)))),
    ];
    for (case, header) in cases {
        let mut request = app.client.get(app.url("/v1/auth/me"));
        if let Some(header) = header {
            request = request.header("authorization", header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.headers().get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"), "{case}");
        let body = error_body(response, 401).await;
        if case == "expired" {
            assert_eq!(body["message"], "the access token has expired");
        }
    }

    // The same claims signed with the right key do work: the failures above
    // are about the signature and the expiry, nothing else.
    let resigned = sign(&with_expiry(&claims, 600), ACCESS_SECRET);
    assert_eq!(app.get_authed("/v1/auth/me", &resigned).await.status(), 200);
}

fn decode_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn with_expiry(claims: &Value, seconds_from_now: i64) -> Value {
    let mut claims = claims.clone();
    claims["exp"] = json!(chrono::Utc::now().timestamp() + seconds_from_now);
    claims
}

fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn connect(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url).await.unwrap()
}

//! A sign-in that ends, ends everywhere: after logout, or after a stolen
//! refresh token gives itself away, that sign-in's access tokens are refused
//! by every service, for reads and writes alike, while the user's other
//! sign-ins carry on. And while Redis (where revocations live) is down,
//! protected routes answer 503 rather than guess.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{PASSWORD, SignedIn, TcpProxy, TestApp, error_body, redis_url, spawn_app, spawn_app_with};

impl TestApp {
    async fn logout(&self, refresh_token: &str) -> reqwest::Response {
        self.post_json("/v1/auth/logout", &json!({ "refresh_token": refresh_token })).await
    }

    /// Another sign-in of the same user, as from a second device.
    async fn sign_in_again(&self, user: &SignedIn) -> SignedIn {
        let response = self.login(&user.email, PASSWORD).await;
        assert_eq!(response.status(), 200);
        let tokens: Value = response.json().await.unwrap();
        SignedIn {
            email: user.email.clone(),
            access_token: tokens["access_token"].as_str().unwrap().to_owned(),
            refresh_token: tokens["refresh_token"].as_str().unwrap().to_owned(),
        }
    }

    /// A read and a write in the ledger and in budgets, and the auth
    /// service's own `me`, each answering `status`.
    async fn assert_every_service_answers(&self, user: &SignedIn, status: u16, why: &str) {
        let requests = [
            ("GET", "/v1/auth/me", None),
            ("GET", "/v1/accounts", None),
            (
                "POST",
                "/v1/accounts",
                Some(json!({"name": "Checking", "kind": "checking", "currency": "EUR", "opening_balance": "10.00"})),
            ),
            ("GET", "/v1/goals", None),
            ("POST", "/v1/goals", Some(json!({"name": "Holiday", "currency": "EUR", "target_amount": "500.00"}))),
        ];
        for (method, path, body) in requests {
            let response = self.send(user, method, path, body).await;
            let got = response.status().as_u16();
            if status >= 400 {
                let body = error_body(response, status).await;
                if status == 401 {
                    assert_eq!(body["message"], "the sign-in has ended; sign in again", "{method} {path}: {body}");
                }
            } else {
                assert!((200..300).contains(&got), "{why}: {method} {path} answered {got}");
            }
        }
    }
}

#[tokio::test]
async fn after_logout_that_sign_in_is_refused_everywhere_and_the_others_carry_on() {
    let app = spawn_app().await;
    let laptop = app.signed_in_user().await;
    let phone = app.sign_in_again(&laptop).await;
    app.assert_every_service_answers(&laptop, 200, "before logout").await;

    assert_eq!(app.logout(&laptop.refresh_token).await.status(), 204);

    // The laptop's access token is still signed and unexpired, but its
    // sign-in has ended.
    app.assert_every_service_answers(&laptop, 401, "after logout").await;
    let response = app.send(&laptop, "GET", "/v1/accounts", None).await;
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    // The phone is another sign-in.
    app.assert_every_service_answers(&phone, 200, "another sign-in").await;
}

#[tokio::test]
async fn a_reused_refresh_token_ends_every_access_token_of_its_sign_in() {
    let app = spawn_app().await;
    let victim = app.signed_in_user().await;
    let elsewhere = app.sign_in_again(&victim).await;

    // The victim's client refreshes; an attacker holds the first tokens.
    let rotated: Value = app.refresh(&victim.refresh_token).await.json().await.unwrap();
    let current = SignedIn {
        email: victim.email.clone(),
        access_token: rotated["access_token"].as_str().unwrap().to_owned(),
        refresh_token: rotated["refresh_token"].as_str().unwrap().to_owned(),
    };
    app.assert_every_service_answers(&current, 200, "after a refresh").await;

    // The attacker replays the used refresh token: the whole sign-in ends,
    // the access tokens of before and after the rotation included.
    error_body(app.refresh(&victim.refresh_token).await, 401).await;
    app.assert_every_service_answers(&victim, 401, "the first access token").await;
    app.assert_every_service_answers(&current, 401, "the rotated access token").await;
    app.assert_every_service_answers(&elsewhere, 200, "another sign-in").await;
}

#[tokio::test]
async fn a_refresh_token_that_escaped_its_familys_revocation_is_refused() {
    // A refresh that commits while a logout's revocation of the family is
    // waiting for its row lock leaves a successor the revocation never saw;
    // this reproduces that end state directly.
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let rotated: Value = app.refresh(&user.refresh_token).await.json().await.unwrap();
    let successor = rotated["refresh_token"].as_str().unwrap();
    let mut conn = connect(&app.db.url).await;
    let revoked = sqlx::query("UPDATE auth.refresh_tokens SET revoked_at = now() WHERE used_at IS NOT NULL")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(revoked.rows_affected(), 1, "only the used token is revoked");

    error_body(app.refresh(successor).await, 401).await;
}

#[tokio::test]
async fn a_revocation_lasts_as_long_as_the_access_tokens_it_revokes() {
    let prefix = format!("test:{}:", Uuid::new_v4().simple());
    let app = spawn_app_with(|env| {
        env.insert("REDIS_KEY_PREFIX".into(), prefix.clone());
        env.insert("ACCESS_TOKEN_TTL_SECS".into(), "600".into());
    })
    .await;
    let user = app.signed_in_user().await;
    assert_eq!(app.logout(&user.refresh_token).await.status(), 204);

    let mut redis = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}auth:revoked:*")).query_async(&mut redis).await.unwrap();
    assert_eq!(keys.len(), 1, "one revocation, under the deployment's prefix: {keys:?}");
    let ttl: i64 = redis::cmd("TTL").arg(&keys[0]).query_async(&mut redis).await.unwrap();
    // The token's lifetime plus the verifier's clock leeway and a second
    // for rounding: it outlives every token it revokes, then goes.
    assert!((600..=606).contains(&ttl), "TTL {ttl}");
}

#[tokio::test]
async fn while_redis_is_down_protected_routes_answer_503_and_recover_without_a_restart() {
    let redis: std::net::SocketAddr = "127.0.0.1:6379".parse().unwrap();
    assert!(redis_url().contains("127.0.0.1:6379"), "this test proxies the default Redis address");
    let mut proxy = TcpProxy::start(redis).await;
    let proxied = format!("redis://127.0.0.1:{}", proxy.port);
    let app = spawn_app_with(|env| {
        env.insert("REDIS_URL".into(), proxied.clone());
    })
    .await;
    let laptop = app.signed_in_user().await;
    let phone = app.sign_in_again(&laptop).await;
    app.assert_every_service_answers(&laptop, 200, "before the outage").await;

    proxy.cut().await;
    // Whether a token was revoked cannot be known: refused, and said so.
    for (method, path) in [("GET", "/v1/accounts"), ("GET", "/v1/goals")] {
        let response = app.send(&laptop, method, path, None).await;
        let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=30).contains(&retry_after), "{path}: Retry-After {retry_after}");
        let body = error_body(response, 503).await;
        assert_eq!(body["code"], "unavailable", "{path}: {body}");
    }
    app.assert_every_service_answers(&laptop, 503, "during the outage").await;
    // A logout that cannot reach Redis says so, so the client retries it.
    let body = error_body(app.logout(&laptop.refresh_token).await, 503).await;
    assert_eq!(body["code"], "unavailable");

    proxy.restore().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = app.send(&phone, "GET", "/v1/accounts", None).await.status();
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still {status} 15 s after Redis came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The retried logout finishes the job.
    assert_eq!(app.logout(&laptop.refresh_token).await.status(), 204);
    app.assert_every_service_answers(&laptop, 401, "after the retried logout").await;
    app.assert_every_service_answers(&phone, 200, "another sign-in").await;
}

async fn connect(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url).await.unwrap()
}

#[tokio::test]
async fn the_api_document_says_when_a_token_stops_working() {
    let app = spawn_app().await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    let scheme = doc["components"]["securitySchemes"]["bearer"]["description"].as_str().unwrap_or_default();
    for promise in ["logout", "sign-in has ended", "503", "Retry-After"] {
        assert!(scheme.contains(promise), "the bearer scheme mentions {promise:?}: {scheme:?}");
    }
    let me = &doc["paths"]["/v1/auth/me"]["get"]["responses"];
    assert!(me["401"]["description"].as_str().unwrap().contains("sign-in has ended"), "{me}");
    assert!(me["503"].is_object(), "{me}");
    assert!(doc["paths"]["/v1/auth/logout"]["post"]["responses"]["503"].is_object());
}

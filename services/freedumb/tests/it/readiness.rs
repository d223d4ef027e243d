//! `/ready` follows the dependencies: 503 naming the one that is down, 200
//! again once it is back, with no restart in between.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{TcpProxy, database, error_body, postgres_url, spawn_app, spawn_app_with};

#[tokio::test]
async fn ready_when_postgres_and_redis_answer() {
    let app = spawn_app().await;
    let response = app.get("/ready").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["checks"]["postgres"], "ok");
    assert_eq!(body["checks"]["redis"], "ok");
    assert_eq!(app.get("/health").await.status(), 200);
}

#[tokio::test]
async fn losing_the_database_makes_the_service_unready_until_it_returns() {
    // The app reaches Postgres through a proxy the test can cut.
    let db = database().await;
    let postgres: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    assert!(postgres_url().contains("127.0.0.1:5432"), "this test proxies the default Postgres address");
    let mut proxy = TcpProxy::start(postgres).await;
    let proxied_url = format!("postgres://postgres@127.0.0.1:{}/{}", proxy.port, db.name);
    let app = spawn_app_with(|env| {
        env.insert("DATABASE_URL".into(), proxied_url.clone());
    })
    .await;
    assert_eq!(app.get("/ready").await.status(), 200);

    proxy.cut().await;
    let body = error_body(app.get("/ready").await, 503).await;
    assert_eq!(body["code"], "not_ready");
    assert_eq!(body["details"][0]["field"], "postgres");
    assert!(!body.to_string().contains("127.0.0.1"), "no addresses in a public body: {body}");
    // Liveness is unaffected: a database outage must not restart pods.
    assert_eq!(app.get("/health").await.status(), 200);

    proxy.restore().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = app.get("/ready").await.status();
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still {status} 15 s after Postgres came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(db);
}

#[tokio::test]
async fn an_unreachable_redis_is_named() {
    // Nothing listens on a port we bound and released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let app = spawn_app_with(|env| {
        env.insert("REDIS_URL".into(), format!("redis://127.0.0.1:{port}"));
    })
    .await;
    let body = error_body(app.get("/ready").await, 503).await;
    let failing: Vec<&str> = body["details"].as_array().unwrap().iter().map(|d| d["field"].as_str().unwrap()).collect();
    assert_eq!(failing, ["redis"]);
}

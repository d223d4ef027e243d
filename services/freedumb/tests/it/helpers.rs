//! The test harness: each test gets the platform on a free port, its own
//! Postgres database (created, migrated, dropped), its own Redis key prefix,
//! and a client.
//!
//! The Postgres and Redis on this machine are required. If they are not
//! there, the tests fail and say how to start them; they never pass quietly.

use std::collections::BTreeMap;
use std::sync::Once;

use freedumb::registry::SERVICES;
use freedumb_kit::config::{Config, Env};
use freedumb_kit::server::Application;
pub use freedumb_kit::testing::{TcpProxy, TestBroker, TestDatabase, postgres_url, rabbitmq_url};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use uuid::Uuid;

pub const ACCESS_SECRET: &str = "test-access-secret-0123456789abcdef";
pub const REFRESH_SECRET: &str = "test-refresh-secret-0123456789abcdef";
pub const ENCRYPTION_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
pub const PASSWORD: &str = "correct horse battery staple";

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn init_logs() {
    // Logs go nowhere unless TEST_LOG is set, as in zero2prod.
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let env = base_env("postgres://unused@127.0.0.1/x");
            let config = Config::from_env(&Env::from_map(env), 0, "test").expect("test config is valid");
            let _ = freedumb_kit::telemetry::init(&config);
        }
    });
}

fn base_env(database_url: &str) -> BTreeMap<String, String> {
    [
        ("HOST", "127.0.0.1"),
        ("PORT", "0"),
        ("ENVIRONMENT", "test"),
        ("DATABASE_URL", database_url),
        ("DATABASE_MAX_CONNECTIONS", "5"),
        ("REDIS_URL", &redis_url()),
        ("JWT_ACCESS_SECRET", ACCESS_SECRET),
        ("JWT_REFRESH_SECRET", REFRESH_SECRET),
        ("ENCRYPTION_KEY", ENCRYPTION_KEY),
        ("RABBITMQ_URL", &rabbitmq_url()),
        ("RECURRING_POLL_MS", "100"),
        ("LOG_FORMAT", "json"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A database of the test's own with every service's schema migrated,
/// dropped when the test ends.
pub async fn database() -> TestDatabase {
    let database = TestDatabase::create().await;
    for service in SERVICES {
        database.migrate(service.schema(), service.migrator()).await;
    }
    database
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub db: TestDatabase,
    /// The exchange the platform publishes to, of this test's own.
    pub broker: TestBroker,
    /// Stops the server when the test ends.
    stop: Option<oneshot::Sender<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the platform (`serve all`) with the test environment, changed by
/// `customize`.
pub async fn spawn_app_with(customize: impl FnOnce(&mut BTreeMap<String, String>)) -> TestApp {
    spawn_app_on(database().await, customize).await
}

/// Starts the platform on `db`, a database the test prepared (migrated).
pub async fn spawn_app_on(db: TestDatabase, customize: impl FnOnce(&mut BTreeMap<String, String>)) -> TestApp {
    init_logs();
    let broker = TestBroker::new().await;
    let redis_prefix = format!("test:{}:", Uuid::new_v4().simple());
    let mut vars = base_env(&db.url);
    vars.insert("REDIS_KEY_PREFIX".into(), redis_prefix);
    // Each platform publishes to an exchange of its own, so parallel tests
    // never receive each other's events.
    vars.insert("EVENTS_EXCHANGE".into(), broker.exchange.clone());
    customize(&mut vars);
    let env = Env::from_map(vars);
    let config = Config::from_env(&env, 0, "freedumb").expect("test config is valid");
    let services = freedumb::registry::resolve(&["all".to_owned()]).expect("all resolves");
    let app = Application::build(config, &env, &services).await.expect("the app starts");
    let port = app.port();
    let queues = consumer_queues(&app.background_tasks());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = stop_rx.await;
    }));
    // Events published before a consumer's queue exists would be dropped
    // by the exchange; wait for the consumers like a deployment waits for
    // readiness.
    for queue in &queues {
        broker.delete_on_drop(queue);
        broker.wait_for_consumer(queue, std::time::Duration::from_secs(20)).await;
    }
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client"),
        db,
        broker,
        stop: Some(stop_tx),
    }
}

/// The queues of the event consumers among a process's background tasks
/// (named `event-consumer:<queue>`).
pub fn consumer_queues(tasks: &[&str]) -> Vec<String> {
    tasks.iter().filter_map(|task| task.strip_prefix("event-consumer:")).map(str::to_owned).collect()
}

/// A platform (pool, Redis, metrics) on a test's database, for driving
/// workers directly.
pub fn platform_for(database_url: &str) -> freedumb_kit::Platform {
    let env = Env::from_map(base_env(database_url));
    freedumb_kit::Platform::new(Config::from_env(&env, 0, "test").expect("test config")).expect("platform")
}

/// A registered user's credentials and tokens.
pub struct SignedIn {
    pub email: String,
    pub access_token: String,
    pub refresh_token: String,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client.post(self.url(path)).json(body).send().await.expect("request sent")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("request sent")
    }

    pub async fn get_authed(&self, path: &str, token: &str) -> reqwest::Response {
        self.client.get(self.url(path)).bearer_auth(token).send().await.expect("request sent")
    }

    pub async fn register(&self, email: &str, password: &str) -> reqwest::Response {
        self.post_json("/v1/auth/register", &json!({ "email": email, "password": password })).await
    }

    pub async fn login(&self, email: &str, password: &str) -> reqwest::Response {
        self.post_json("/v1/auth/login", &json!({ "email": email, "password": password })).await
    }

    pub async fn login_from(&self, ip: &str, email: &str, password: &str) -> reqwest::Response {
        self.client
            .post(self.url("/v1/auth/login"))
            .header("x-real-ip", ip)
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn refresh(&self, refresh_token: &str) -> reqwest::Response {
        self.post_json("/v1/auth/refresh", &json!({ "refresh_token": refresh_token })).await
    }

    /// Registers a fresh user and signs in.
    pub async fn signed_in_user(&self) -> SignedIn {
        let email = unique_email();
        assert_eq!(self.register(&email, PASSWORD).await.status(), 201);
        let response = self.login(&email, PASSWORD).await;
        assert_eq!(response.status(), 200);
        let tokens: Value = response.json().await.expect("json");
        SignedIn {
            email,
            access_token: tokens["access_token"].as_str().expect("access token").to_owned(),
            refresh_token: tokens["refresh_token"].as_str().expect("refresh token").to_owned(),
        }
    }
}

impl TestApp {
    /// Stops the platform and hands back its database, to start another
    /// platform on the same data (a restart, an upgrade).
    pub async fn stop(mut self) -> TestDatabase {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The shutdown drains in the background; give it a moment so the
        // next platform does not share the old one's last requests.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        self.db.take()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn unique_email() -> String {
    format!("user-{}@example.com", Uuid::new_v4().simple())
}

/// Asserts the one error shape and returns the body.
pub async fn error_body(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status, "unexpected status");
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(content_type.as_deref(), Some("application/json"), "errors are JSON");
    let request_id = response.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_owned());
    let body: Value = response.json().await.expect("error body is JSON");
    assert!(body["code"].is_string(), "error has a code: {body}");
    assert!(body["message"].is_string(), "error has a message: {body}");
    assert_eq!(body["request_id"].as_str(), request_id.as_deref(), "error names the request id: {body}");
    body
}

//! The binary as an operator runs it: configuration errors, JSON logs, and a
//! SIGTERM that lets in-flight requests finish.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{
    ACCESS_SECRET, ENCRYPTION_KEY, PASSWORD, REFRESH_SECRET, database, rabbitmq_url, redis_url, unique_email,
};

fn freedumb() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_freedumb"));
    // Only what the test sets: nothing leaks in from the developer's shell.
    command.env_clear().env("RUST_BACKTRACE", "1");
    command
}

#[test]
fn a_missing_access_secret_stops_start_up_with_exit_code_2_and_one_line() {
    let output = freedumb()
        .args(["serve", "all"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
        .env("REDIS_URL", redis_url())
        .env("JWT_REFRESH_SECRET", REFRESH_SECRET)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("JWT_ACCESS_SECRET is not set"), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn a_malformed_secret_is_named_but_never_printed() {
    let output = freedumb()
        .args(["serve", "auth"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
        .env("REDIS_URL", redis_url())
        .env("JWT_ACCESS_SECRET", ACCESS_SECRET)
        .env("JWT_REFRESH_SECRET", "sekrit-too-short")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("JWT_REFRESH_SECRET is invalid: expected a secret of at least 32 bytes"), "{stderr}");
    assert!(!stderr.contains("sekrit"), "{stderr}");
}

#[test]
fn an_unknown_target_is_refused_with_the_list_of_targets() {
    let output = freedumb().args(["serve", "ledger"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("unknown target `ledger`") && stderr.contains("all, auth, transaction, budget"),
        "{stderr}"
    );
}

#[test]
fn help_is_available_on_every_level() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["targets", "--help"],
        vec!["healthcheck", "--help"],
    ] {
        let output = freedumb().args(&args).output().unwrap();
        assert!(output.status.success(), "{args:?}");
        assert!(String::from_utf8(output.stdout).unwrap().contains("Usage: freedumb"), "{args:?}");
    }
}

#[tokio::test]
async fn sigterm_finishes_the_request_in_flight_and_logs_are_json() {
    let db = database().await;
    let broker = crate::helpers::TestBroker::new().await;
    // Its deployment is its database's name (DEPLOYMENT is unset).
    for purpose in [freedumb_budget::SPENDING_QUEUE, freedumb_budget::categories::CATEGORIES_QUEUE] {
        broker.delete_on_drop(&format!("{}.{}.{purpose}", broker.exchange, db.name));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = freedumb()
        .args(["serve", "all"])
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("ENVIRONMENT", "test")
        .env("LOG_FORMAT", "json")
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", redis_url())
        .env("REDIS_KEY_PREFIX", format!("test:{}:", uuid::Uuid::new_v4().simple()))
        .env("JWT_ACCESS_SECRET", ACCESS_SECRET)
        .env("JWT_REFRESH_SECRET", REFRESH_SECRET)
        .env("ENCRYPTION_KEY", ENCRYPTION_KEY)
        .env("RABBITMQ_URL", rabbitmq_url())
        .env("EVENTS_EXCHANGE", &broker.exchange)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<_>>());
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_until_up(&client, &base).await;

    // A signed-in request, so a log line names its user.
    let email = unique_email();
    let register = serde_json::json!({ "email": email, "password": PASSWORD });
    assert_eq!(client.post(format!("{base}/v1/auth/register")).json(&register).send().await.unwrap().status(), 201);
    let tokens: Value =
        client.post(format!("{base}/v1/auth/login")).json(&register).send().await.unwrap().json().await.unwrap();
    let me = client
        .get(format!("{base}/v1/auth/me"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let user: Value = me.json().await.unwrap();

    // Start a request and leave its body half-sent.
    let body = serde_json::json!({ "email": unique_email(), "password": PASSWORD }).to_string();
    let (head, tail) = body.split_at(body.len() / 2);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "POST /v1/auth/register HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{head}",
        body.len()
    )
    .unwrap();
    stream.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // SIGTERM, then finish the request.
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(tail.as_bytes()).unwrap();
    let mut response = String::new();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 201"), "the in-flight request completed: {response:?}");

    // The process exits by itself, successfully.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running 10 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");

    let lines = lines.join().unwrap();
    let parsed: Vec<Value> =
        lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}"))).collect();
    for line in &parsed {
        assert_eq!(line["service"], "freedumb", "{line}");
        assert_eq!(line["environment"], "test", "{line}");
        assert!(line["timestamp"].is_string() && line["level"].is_string(), "{line}");
    }
    let me_line = parsed.iter().find(|l| l["route"] == "/v1/auth/me").expect("a request line for /me");
    assert_eq!(me_line["method"], "GET");
    assert_eq!(me_line["status"], 200);
    assert_eq!(me_line["user_id"], user["id"]);
    assert!(me_line["request_id"].is_string() && me_line["latency_ms"].is_number());
    assert!(parsed.iter().any(|l| l["message"] == "stopped"), "shutdown is logged");
    let all = lines.join("\n");
    assert!(!all.contains(PASSWORD) && !all.contains(ACCESS_SECRET), "no secrets in logs");
}

/// A worker verifies no token, so it is not given the signing key: it
/// starts and becomes ready without `JWT_ACCESS_SECRET`.
#[tokio::test]
async fn a_worker_runs_without_the_access_token_secret() {
    let db = database().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = freedumb()
        .args(["worker", "recurring"])
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("LOG_LEVEL", "warn")
        .env("DATABASE_URL", &db.url)
        .env("REDIS_URL", redis_url())
        .env("REDIS_KEY_PREFIX", format!("test:{}:", uuid::Uuid::new_v4().simple()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let base = format!("http://127.0.0.1:{port}");
    while client.get(format!("{base}/ready")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
            panic!("the worker exited with {status}: {stderr}");
        }
        assert!(Instant::now() < deadline, "the worker did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

async fn wait_until_up(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(format!("{base}/ready")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(Instant::now() < deadline, "the server did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn healthcheck_exits_0_for_a_healthy_server_and_1_otherwise() {
    let app = crate::helpers::spawn_app().await;
    let url = app.url("/health");
    let healthy =
        tokio::task::spawn_blocking(move || freedumb().args(["healthcheck", "--url", &url]).output().unwrap())
            .await
            .unwrap();
    assert!(healthy.status.success(), "{}", String::from_utf8_lossy(&healthy.stderr));

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let down = freedumb().args(["healthcheck"]).env("PORT", closed.to_string()).output().unwrap();
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("unhealthy: cannot connect"));

    let missing = tokio::task::spawn_blocking({
        let url = app.url("/nothing");
        move || freedumb().args(["healthcheck", "--url", &url]).output().unwrap()
    })
    .await
    .unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("answered 404"));
}

//! A stub of Twelve Data's `GET /time_series`: it answers with scripted
//! replies, in order, then with its default one; it refuses a request
//! without the key in the `Authorization: apikey <key>` header, as the
//! provider does; and it counts and records what it was asked.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub const KEY: &str = "stub-key-0123456789";

#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn ok(body: &str) -> Self {
        Reply { status: 200, headers: Vec::new(), body: body.to_owned(), delay: Duration::ZERO }
    }

    pub fn status(status: u16, body: &str) -> Self {
        Reply { status, ..Reply::ok(body) }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    pub fn slow(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A series of closes as the provider writes it.
pub fn series(symbol: &str, closes: &[(&str, &str)]) -> String {
    let values: Vec<String> = closes
        .iter()
        .map(|(date, close)| {
            format!(r#"{{"datetime":"{date}","open":"{close}","high":"{close}","low":"{close}","close":"{close}","volume":"100"}}"#)
        })
        .collect();
    format!(
        r#"{{"meta":{{"symbol":"{symbol}","interval":"1day","currency":"USD","type":"Common Stock"}},"values":[{}],"status":"ok"}}"#,
        values.join(",")
    )
}

struct Inner {
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Reply>,
    hits: AtomicUsize,
    queries: Mutex<Vec<String>>,
}

#[derive(Clone)]
pub struct Stub {
    pub url: String,
    inner: Arc<Inner>,
}

impl Stub {
    pub async fn start(default: Reply) -> Stub {
        let inner = Arc::new(Inner {
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(default),
            hits: AtomicUsize::new(0),
            queries: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new().route("/v1/time_series", get(answer)).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Stub { url, inner }
    }

    /// Replies for the next requests, in order.
    pub fn then(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inner.script.lock().unwrap().extend(replies);
    }

    pub fn always(&self, reply: Reply) {
        *self.inner.default.lock().unwrap() = reply;
    }

    /// Requests that reached it with the right key.
    pub fn hits(&self) -> usize {
        self.inner.hits.load(Ordering::SeqCst)
    }

    pub fn queries(&self) -> Vec<String> {
        self.inner.queries.lock().unwrap().clone()
    }
}

async fn answer(State(inner): State<Arc<Inner>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("apikey {KEY}")) {
        let body = r#"{"code":401,"message":"**apikey** parameter is incorrect or not specified","status":"error"}"#;
        return (StatusCode::UNAUTHORIZED, body).into_response();
    }
    let query = query.unwrap_or_default();
    assert!(!query.contains(KEY), "the key never travels in the URL: {query}");
    inner.hits.fetch_add(1, Ordering::SeqCst);
    inner.queries.lock().unwrap().push(query);
    let reply = inner.script.lock().unwrap().pop_front().unwrap_or_else(|| inner.default.lock().unwrap().clone());
    tokio::time::sleep(reply.delay).await;
    let mut response = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    response.headers_mut().insert("content-type", "application/json".parse().unwrap());
    for (name, value) in reply.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

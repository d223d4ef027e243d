//! The ceiling: `GET /v1/transactions` as a bare axum handler that runs the
//! platform's page query once and serialises the rows.
//!
//! It is what the read path would cost with nothing but axum, sqlx and
//! serde: no middleware (request ids, logs, metrics, timeouts), no JWT
//! verification (the user id is read from the token's payload unchecked),
//! no second query for splits. The benchmark runs the same `readpath`
//! journey against it and against the platform, on the same database and
//! the same pool size, and the ratio of the two is the cost of everything
//! the platform adds.

use std::net::SocketAddr;

use anyhow::Context;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

/// The platform's page query (services/transaction/src/transactions.rs,
/// `SELECT` and `list_transactions` without filters), verbatim.
const PAGE_QUERY: &str = "
    SELECT t.id, t.account_id, t.amount, a.currency, t.date, t.payee, t.description, t.category_id, t.tags, t.notes,
           t.transfer_id, t.created_at, t.updated_at,
           (t.amount::numeric / (10::numeric ^ t.currency_exponent))::text AS amount_value
    FROM ledger.transactions t JOIN ledger.accounts a ON a.id = t.account_id
    WHERE t.user_id = $1 ORDER BY t.date DESC, t.id DESC LIMIT $2";

#[derive(Debug, clap::Args)]
pub struct Ceiling {
    /// The platform's database (its `DATABASE_URL`).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// The address to serve on.
    #[arg(long, default_value = "127.0.0.1:3900")]
    listen: SocketAddr,
    /// The pool size: the platform's `DATABASE_MAX_CONNECTIONS` default.
    #[arg(long, default_value_t = 10)]
    max_connections: u32,
}

#[derive(Debug, sqlx::FromRow, Serialize)]
struct Row {
    id: Uuid,
    account_id: Uuid,
    amount: i64,
    currency: String,
    date: NaiveDate,
    payee: Option<String>,
    description: Option<String>,
    category_id: Option<Uuid>,
    tags: Vec<String>,
    notes: Option<String>,
    transfer_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    amount_value: String,
}

#[derive(Serialize)]
struct Page {
    items: Vec<Row>,
    next_cursor: Option<String>,
}

impl Ceiling {
    pub async fn run(self) -> anyhow::Result<()> {
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .connect(&self.database_url)
            .await
            .context("failed to connect to the database")?;
        let app = Router::new().route("/v1/transactions", get(page)).with_state(pool);
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("failed to bind {}", self.listen))?;
        eprintln!("ceiling: serving GET /v1/transactions on http://{}", self.listen);
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("the ceiling server failed")
    }
}

/// The `sub` claim of a bearer token, not verified: the ceiling measures the
/// query, not authentication.
fn user_id(headers: &HeaderMap) -> Option<Uuid> {
    let token = headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")?;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims["sub"].as_str()?.parse().ok()
}

async fn page(State(pool): State<PgPool>, headers: HeaderMap) -> Response {
    let Some(user) = user_id(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    match sqlx::query_as::<_, Row>(PAGE_QUERY).bind(user).bind(51_i64).fetch_all(&pool).await {
        Ok(mut items) => {
            items.truncate(50);
            Json(Page { items, next_cursor: None }).into_response()
        }
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}

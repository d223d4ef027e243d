//! `Idempotency-Key` for POST requests: a retry with the same key and body
//! gets the original answer and creates nothing; the same key with another
//! body is refused.
//!
//! The key is claimed by inserting it in the same database transaction that
//! does the work, and the answer is stored in that transaction too. So the
//! key, the rows it created and the stored answer commit or vanish together,
//! and a concurrent retry waits on the key's unique index until the first
//! attempt has finished, then replays its answer. A failed attempt (any
//! error) rolls back and leaves the key free for the next try.
//!
//! The keys live in `<schema>.idempotency_keys`, which `db::migrate`
//! creates in every service schema (see [`DDL`]).

use std::pin::Pin;

use anyhow::Context;
use axum::extract::FromRequestParts;
use axum::http::{HeaderValue, StatusCode, request::Parts};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use uuid::Uuid;

use crate::db::{Db, Tx};
use crate::error::{ApiError, ApiResult};

/// The kit's table in each service schema, created by `db::migrate` before
/// the service's migrations. Idempotent; a later change is appended as
/// another `IF NOT EXISTS` statement, never an edit.
pub const DDL: &str = r#"
CREATE TABLE IF NOT EXISTS {schema}.idempotency_keys (
    user_id         uuid        NOT NULL,
    key             text        NOT NULL,
    request_hash    bytea       NOT NULL,
    response_status smallint,
    response_body   jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
"#;

pub(crate) async fn create_table(conn: &mut sqlx::PgConnection, schema: &str) -> anyhow::Result<()> {
    crate::db::check_schema(schema)?;
    sqlx::raw_sql(&DDL.replace("{schema}", schema))
        .execute(conn)
        .await
        .with_context(|| format!("failed to create the idempotency table of schema {schema}"))?;
    Ok(())
}

pub const HEADER: &str = "idempotency-key";
/// Set on a replayed answer, as Stripe and the IETF draft do.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// The request's `Idempotency-Key`, if it sent one.
#[derive(Debug, Clone)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(HEADER) else { return Ok(IdempotencyKey(None)) };
        let key = value
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN && k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 255 printable ASCII characters",
                )
            })?;
        Ok(IdempotencyKey(Some(key.to_owned())))
    }
}

/// The header as the OpenAPI document declares it: a handler writes
/// `params(IdempotencyKey)` and gets the rule the extractor above enforces.
impl utoipa::IntoParams for IdempotencyKey {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_KEY_LEN))
            // Printable ASCII without the space: what `is_ascii_graphic` admits.
            .pattern(Some(KEY_PATTERN))
            .examples(["9b2c4c1e-5f0a-4c47-9d1e-0c8f3a2b7d61"]);
        vec![
            ParameterBuilder::new()
                .name("Idempotency-Key")
                .parameter_in(ParameterIn::Header)
                .required(utoipa::openapi::Required::False)
                .description(Some(
                    "A key of the client's choosing (a UUID is a good one). A retry with the same key and body \
                     gets the first answer, marked `Idempotent-Replayed: true`, and creates nothing; the same key \
                     with another body is a 422; while the first request is in progress, a 409.",
                ))
                .schema(Some(schema))
                .build(),
        ]
    }
}

/// The longest key accepted.
const MAX_KEY_LEN: usize = 255;
/// The characters of a key: printable ASCII other than the space.
const KEY_PATTERN: &str = "^[!-~]+$";

/// What a replay is compared by: the route and the request's canonical
/// JSON, hashed.
pub fn fingerprint(route: &str, request: &impl serde::Serialize) -> Vec<u8> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(route.as_bytes());
    hasher.update([0]);
    hasher.update(serde_json::to_vec(request).unwrap_or_default());
    hasher.finalize().to_vec()
}

/// The work of one request, done inside the transaction it is given.
pub type Work<'c> = Pin<Box<dyn Future<Output = ApiResult<(StatusCode, Value)>> + Send + 'c>>;

/// Runs `work` in a transaction, exactly once per `(user, key)`.
///
/// `fingerprint` identifies the request's content (a hash of the body and
/// the route); a replay with a different fingerprint is a 422.
pub async fn run<F>(
    db: &Db,
    schema: &'static str,
    user_id: Uuid,
    key: &IdempotencyKey,
    fingerprint: &[u8],
    work: F,
) -> ApiResult<Response>
where
    F: for<'c> FnOnce(&'c mut Tx) -> Work<'c>,
{
    let mut tx = db.begin().await.context("failed to begin a transaction")?;
    if let Some(key) = &key.0 {
        let claimed = sqlx::query(&format!(
            "INSERT INTO {schema}.idempotency_keys (user_id, key, request_hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
        ))
        .bind(user_id)
        .bind(key)
        .bind(fingerprint)
        .execute(tx.conn())
        .await
        .context("failed to claim an idempotency key")?
        .rows_affected()
            == 1;
        if !claimed {
            return replay(&mut tx, schema, user_id, key, fingerprint).await;
        }
    }
    let (status, body) = work(&mut tx).await?;
    if let Some(key) = &key.0 {
        sqlx::query(&format!(
            "UPDATE {schema}.idempotency_keys SET response_status = $3, response_body = $4 WHERE user_id = $1 AND key = $2"
        ))
        .bind(user_id)
        .bind(key)
        .bind(i16::try_from(status.as_u16()).unwrap_or(200))
        .bind(&body)
        .execute(tx.conn())
        .await
        .context("failed to store an idempotent response")?;
    }
    tx.commit().await.context("failed to commit")?;
    Ok((status, axum::Json(body)).into_response())
}

async fn replay(tx: &mut Tx, schema: &str, user_id: Uuid, key: &str, fingerprint: &[u8]) -> ApiResult<Response> {
    let (hash, status, body): (Vec<u8>, Option<i16>, Option<Value>) = sqlx::query_as(&format!(
        "SELECT request_hash, response_status, response_body FROM {schema}.idempotency_keys WHERE user_id = $1 AND key = $2"
    ))
    .bind(user_id)
    .bind(key)
    .fetch_one(tx.conn())
    .await
    .context("failed to read an idempotency key")?;
    if hash != fingerprint {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request",
        ));
    }
    match (status.and_then(|s| StatusCode::from_u16(u16::try_from(s).ok()?).ok()), body) {
        (Some(status), Some(body)) => {
            let mut response = (status, axum::Json(body)).into_response();
            response.headers_mut().insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
            Ok(response)
        }
        // Only reachable if a row was written without its answer, which the
        // single transaction above rules out; say so rather than guess.
        _ => Err(ApiError::conflict(
            "idempotency_key_in_use",
            "a request with this Idempotency-Key is still in progress",
        )),
    }
}

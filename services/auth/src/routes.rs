//! The `/v1/auth` handlers.

use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use freedumb_kit::auth::AuthUser;
use freedumb_kit::client_ip::ClientIp;
use freedumb_kit::extract::Json;
use freedumb_kit::{ApiError, ApiResult, ErrorBody};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::credentials::{Email, Password};
use crate::{AuthState, events, password_hash, refresh_tokens};

pub(crate) fn router(state: AuthState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me))
        .with_state(state)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Trimmed and lower-cased; the domain must have a dot.
    #[schema(example = "ada@example.com", format = Email, max_length = 254)]
    email: String,
    /// 12 to 128 characters; not a common password, not the email, not one
    /// character repeated.
    #[schema(example = "correct horse battery staple", min_length = 12, max_length = 128)]
    password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct User {
    pub(crate) id: Uuid,
    pub(crate) email: String,
    pub(crate) created_at: DateTime<Utc>,
}

/// Creates an account.
#[utoipa::path(post, path = "/v1/auth/register", tag = "auth", request_body = RegisterRequest, responses(
    (status = 201, body = User),
    (status = 409, body = ErrorBody, description = "the email is already registered"),
    (status = 422, body = ErrorBody, description = "invalid email or password, per field"),
    (status = "4XX", body = ErrorBody),
))]
async fn register(
    State(state): State<AuthState>,
    Json(req): Json<RegisterRequest>,
) -> ApiResult<(StatusCode, Json<User>)> {
    // Both fields are checked, so the client learns every problem at once.
    let email = Email::parse(&req.email);
    let password = Password::parse(&req.password, email.as_ref().ok());
    let (email, password) = match (email, password) {
        (Ok(email), Ok(password)) => (email, password),
        (email, password) => {
            return Err(ApiError::validation([email.err(), password.err()].into_iter().flatten().collect()));
        }
    };
    let password_hash = password_hash::hash(password.expose().to_owned()).await?;
    // Begun after the hash, which takes a while, so no connection is held
    // idle across it.
    let mut tx = state.platform.db.begin().await.context("failed to begin a registration")?;
    let user: Option<User> = sqlx::query_as(
        "INSERT INTO auth.users (id, email, password_hash) VALUES ($1, $2, $3)
         ON CONFLICT (email) DO NOTHING
         RETURNING id, email, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(email.as_str())
    .bind(password_hash)
    .fetch_optional(tx.conn())
    .await
    .context("failed to insert a user")?;
    let user = user.ok_or_else(|| ApiError::conflict("email_taken", "an account with this email already exists"))?;
    // In the same transaction: the account exists if and only if others
    // hear of it.
    events::registered(tx.conn(), &user).await?;
    tx.commit().await.context("failed to commit a registration")?;
    tracing::info!(user_id = %user.id, "account registered");
    Ok((StatusCode::CREATED, Json(user)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(example = "ada@example.com")]
    email: String,
    password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Tokens {
    /// A JWT for `Authorization: Bearer`.
    access_token: String,
    #[schema(example = "Bearer")]
    token_type: &'static str,
    /// Seconds until the access token expires.
    #[schema(example = 900)]
    expires_in: u64,
    /// Opaque; exchange it at `/v1/auth/refresh`. Single use.
    refresh_token: String,
}

fn invalid_credentials() -> ApiError {
    ApiError::unauthorized("the email or password is incorrect")
}

/// Signs in with email and password. An unknown email and a wrong password
/// get the same answer, in the same time.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest, responses(
    (status = 200, body = Tokens),
    (status = 401, body = ErrorBody, description = "wrong email or password"),
    (status = 429, body = ErrorBody, description = "too many attempts; see Retry-After"),
    (status = "4XX", body = ErrorBody),
))]
async fn login(
    State(state): State<AuthState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<LoginRequest>,
) -> ApiResult<Json<Tokens>> {
    // A malformed email cannot belong to an account: same answer as unknown.
    let Ok(email) = Email::parse(&req.email) else {
        return Err(invalid_credentials());
    };
    match state.throttle.admit(ip, &email).await {
        Ok(Ok(())) => {}
        Ok(Err(retry)) => {
            tracing::warn!(client_ip = %ip, "login throttled");
            return Err(ApiError::too_many_requests(retry.0, "too many login attempts; try again later"));
        }
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "login throttle unavailable; refusing logins");
            return Err(ApiError::unavailable("unavailable", "sign-in is temporarily unavailable"));
        }
    }
    let row: Option<(Uuid, String)> = sqlx::query_as("SELECT id, password_hash FROM auth.users WHERE email = $1")
        .bind(email.as_str())
        .fetch_optional(&state.platform.db.pool)
        .await
        .context("failed to look up a user")?;
    let (user_id, stored) = match row {
        Some((id, hash)) => (Some(id), Some(hash)),
        None => (None, None),
    };
    let verified = password_hash::verify(req.password, stored).await?;
    let Some(user_id) = user_id.filter(|_| verified) else {
        state.throttle.record_failure(&email).await.ok();
        return Err(invalid_credentials());
    };
    state.throttle.record_success(&email).await.ok();
    let tokens = start_family(&state, user_id).await?;
    tracing::info!(user_id = %user_id, "signed in");
    Ok(Json(tokens))
}

/// A new token family: the first refresh token of a sign-in.
/// A new token family: the first refresh token of a sign-in. The family's
/// id is the sign-in id (`sid`) of its access tokens.
async fn start_family(state: &AuthState, user_id: Uuid) -> ApiResult<Tokens> {
    let refresh_token = refresh_tokens::generate();
    let family_id = Uuid::now_v7();
    let mut conn = state.platform.db.pool.acquire().await.context("failed to get a database connection")?;
    refresh_tokens::insert(
        &mut conn,
        user_id,
        family_id,
        &state.hasher.hash(&refresh_token),
        expiry(state.settings.refresh_ttl)?,
    )
    .await?;
    tokens(state, user_id, family_id, refresh_token)
}

fn tokens(state: &AuthState, user_id: Uuid, family_id: Uuid, refresh_token: String) -> ApiResult<Tokens> {
    let (access_token, _) = state.platform.jwt.issue(user_id, family_id, state.settings.access_ttl)?;
    Ok(Tokens { access_token, token_type: "Bearer", expires_in: state.settings.access_ttl.as_secs(), refresh_token })
}

/// Refuses the access tokens of sign-in `family_id` in every service.
///
/// Called after the family's revocation has committed: from then on no
/// refresh of the family succeeds, and a refresh that got in first signed
/// its access token before committing, so every token of the sign-in was
/// issued before this call and dies with it. If Redis cannot record it,
/// the client is told to retry (503), and a retry finds the family revoked
/// and records it then.
async fn end_sign_in(state: &AuthState, family_id: Uuid) -> ApiResult<()> {
    state.platform.jwt.revocations().revoke(family_id, state.settings.access_ttl).await.map_err(|err| {
        ApiError::dependency_down("unavailable", "the sign-in could not be ended yet; try again shortly", 5, err)
    })
}

fn expiry(ttl: Duration) -> anyhow::Result<DateTime<Utc>> {
    Ok(Utc::now() + chrono::Duration::from_std(ttl)?)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    refresh_token: String,
}

/// Exchanges a refresh token for new tokens. The old refresh token stops
/// working; presenting it again ends its sign-in: its refresh tokens and its
/// access tokens stop working in every service.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest, responses(
    (status = 200, body = Tokens),
    (status = 401, body = ErrorBody, description = "unknown, expired, revoked or reused token"),
    (status = 503, body = ErrorBody, description = "Redis is down: the sign-in could not be ended; see Retry-After"),
    (status = "4XX", body = ErrorBody),
))]
async fn refresh(State(state): State<AuthState>, Json(req): Json<RefreshRequest>) -> ApiResult<Json<Tokens>> {
    let presented = state.hasher.hash(&req.refresh_token);
    let mut tx = state.platform.db.begin().await.context("failed to begin a transaction")?;
    let Some(token) = refresh_tokens::find_for_update(tx.conn(), &presented).await? else {
        return Err(ApiError::unauthorized("the refresh token is invalid"));
    };
    if let Some(revoked_at) = token.family_revoked_at {
        drop(tx);
        // While the sign-in's access tokens may still be alive, record its
        // end again: the first attempt may have found Redis down.
        let alive_for = state.settings.access_ttl + Duration::from_secs(freedumb_kit::auth::LEEWAY_SECS + 1);
        if Utc::now() < revoked_at + chrono::Duration::from_std(alive_for)? {
            end_sign_in(&state, token.family_id).await?;
        }
        return Err(ApiError::unauthorized("the refresh token has been revoked"));
    }
    if token.used_at.is_some() {
        // Someone holds a copy of a rotated token: end the whole sign-in.
        let revoked = refresh_tokens::revoke_family(tx.conn(), token.family_id).await?;
        tx.commit().await.context("failed to commit a family revocation")?;
        tracing::warn!(user_id = %token.user_id, family_id = %token.family_id, revoked, "refresh token reused; sign-in revoked");
        end_sign_in(&state, token.family_id).await?;
        return Err(ApiError::unauthorized("the refresh token was already used; sign in again"));
    }
    if token.expires_at <= Utc::now() {
        return Err(ApiError::unauthorized("the refresh token has expired"));
    }
    refresh_tokens::mark_used(tx.conn(), token.id).await?;
    let next = refresh_tokens::generate();
    refresh_tokens::insert(
        tx.conn(),
        token.user_id,
        token.family_id,
        &state.hasher.hash(&next),
        expiry(state.settings.refresh_ttl)?,
    )
    .await?;
    // Signed before the commit, so the access token is older than any
    // revocation of the family that waited for this transaction's locks
    // (see `end_sign_in`).
    let tokens = tokens(&state, token.user_id, token.family_id, next)?;
    tx.commit().await.context("failed to commit a token rotation")?;
    Ok(Json(tokens))
}

/// Signs out: the refresh tokens of this sign-in stop working, and so do its
/// access tokens, in every service, on their next request. Other sign-ins of
/// the user are not affected. Answers 204 for unknown and already revoked
/// tokens too, so it can be retried safely; a 503 must be retried.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", request_body = RefreshRequest, responses(
    (status = 204, description = "signed out"),
    (status = 503, body = ErrorBody, description = "Redis is down: the access tokens may still work; retry after Retry-After"),
    (status = "4XX", body = ErrorBody),
))]
async fn logout(State(state): State<AuthState>, Json(req): Json<RefreshRequest>) -> ApiResult<StatusCode> {
    let presented = state.hasher.hash(&req.refresh_token);
    let mut tx = state.platform.db.begin().await.context("failed to begin a transaction")?;
    if let Some(token) = refresh_tokens::find_for_update(tx.conn(), &presented).await? {
        refresh_tokens::revoke_family(tx.conn(), token.family_id).await?;
        tx.commit().await.context("failed to commit a logout")?;
        // Even when the family was revoked before: a retry after a 503
        // finishes the job here.
        end_sign_in(&state, token.family_id).await?;
        tracing::info!(user_id = %token.user_id, "signed out");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The signed-in user.
#[utoipa::path(get, path = "/v1/auth/me", tag = "auth", security(("bearer" = [])), responses(
    (status = 200, body = User),
    (status = 401, body = ErrorBody, description = "missing, invalid or expired access token, or its sign-in has ended (logout, reused refresh token)"),
    (status = 503, body = ErrorBody, description = "Redis is down, so whether the sign-in has ended cannot be checked; see Retry-After"),
))]
async fn me(State(state): State<AuthState>, user: AuthUser) -> ApiResult<Json<User>> {
    let pool = state.platform.db.pool.clone();
    let found = state
        .platform
        .cache
        .get_or_load("auth_user", &user.user_id.to_string(), Duration::from_secs(60), || async move {
            sqlx::query_as::<_, User>("SELECT id, email, created_at FROM auth.users WHERE id = $1")
                .bind(user.user_id)
                .fetch_optional(&pool)
                .await
                .context("failed to load a user")
        })
        .await?;
    found.map(Json).ok_or_else(|| ApiError::unauthorized("the account no longer exists"))
}

//! Bearer access tokens: HS256 JWTs signed with `JWT_ACCESS_SECRET`, each
//! naming the sign-in it belongs to, so a sign-in can end before its tokens
//! expire.
//!
//! The auth service issues them; every service verifies them with
//! [`AuthUser`], an extractor that answers 401 with `WWW-Authenticate:
//! Bearer` when the token is missing, malformed, forged or expired, or when
//! its sign-in has ended (logout, or a reused refresh token).
//!
//! Ended sign-ins are [`Revocations`] in Redis, under the deployment's key
//! prefix, each kept as long as the access tokens it revokes can live.
//! `AuthUser` asks Redis on every request (one `EXISTS` on the shared
//! connection, after the signature checks out, so garbage never costs a
//! round trip). Nothing is cached in the process, so a revocation takes
//! effect on the next request everywhere: a cache of "not revoked" would let
//! a signed-out token work for as long as an entry lives, and a cache of
//! "revoked" would only speed up refusing clients already told to sign in
//! again.
//!
//! While Redis cannot answer, protected routes answer 503 with
//! `Retry-After` (fail closed), reads included: whether a token was revoked
//! is then unknown, and a stolen token is exactly the one that must not be
//! let through. Sign-in already depends on Redis (the login throttle fails
//! closed too) and `/ready` reports it. See `docs/access-tokens.md`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::{header, request::Parts};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::cache::Redis;
use crate::error::ApiError;
use crate::observe::RequestContext;

/// Who issues access tokens, checked on every verification.
pub const ISSUER: &str = "freedumb-auth";

/// How far past `exp` a token is still accepted: clocks within one cluster
/// agree to well under this.
pub const LEEWAY_SECS: u64 = 5;

/// The `Retry-After` of a 503 while revocations cannot be checked: Redis
/// reconnects within a second of coming back.
const REVOCATION_CHECK_RETRY_AFTER_SECS: u64 = 5;

/// How long a request waits for Redis to say whether its sign-in has ended.
/// Redis answers in well under a millisecond; while it is down the shared
/// connection waits out its reconnection backoff (a second or more) and a
/// silent network its 2 s response timeout, and every request would wait
/// with it. Reconnecting goes on in the background either way.
const REVOCATION_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The user's id.
    pub sub: Uuid,
    /// The sign-in (the refresh-token family) the token was issued for;
    /// revoking it ends every access token of that sign-in. Required: a
    /// token without one could not be revoked, so it is refused.
    pub sid: Uuid,
    pub iss: String,
    pub iat: i64,
    pub exp: i64,
    /// Unique per token, for audit logs.
    pub jti: Uuid,
}

/// Signs and verifies access tokens, revocation included.
#[derive(Clone)]
pub struct JwtKeys {
    inner: Arc<Keys>,
}

struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    revocations: Revocations,
}

impl JwtKeys {
    pub fn new(secret: &SecretString, revocations: Revocations) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = LEEWAY_SECS;
        JwtKeys {
            inner: Arc::new(Keys {
                encoding: EncodingKey::from_secret(bytes),
                decoding: DecodingKey::from_secret(bytes),
                validation,
                revocations,
            }),
        }
    }

    /// A signed token for `user_id`'s sign-in `sid`, valid for `ttl`.
    pub fn issue(&self, user_id: Uuid, sid: Uuid, ttl: Duration) -> anyhow::Result<(String, AccessClaims)> {
        let now = chrono::Utc::now().timestamp();
        let claims = AccessClaims {
            sub: user_id,
            sid,
            iss: ISSUER.to_owned(),
            iat: now,
            exp: now + i64::try_from(ttl.as_secs())?,
            jti: Uuid::new_v4(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.inner.encoding)?;
        Ok((token, claims))
    }

    /// Where ended sign-ins are recorded.
    pub fn revocations(&self) -> &Revocations {
        &self.inner.revocations
    }

    /// The claims of `token` if it is genuine, unexpired, and its sign-in
    /// has not ended: what [`AuthUser`] does, for callers that get a token
    /// some other way.
    pub async fn authenticate(&self, token: &str) -> Result<AccessClaims, ApiError> {
        let claims = self.verify(token)?;
        self.ensure_live(&claims).await?;
        Ok(claims)
    }

    /// The signature and the claims, without asking Redis.
    fn verify(&self, token: &str) -> Result<AccessClaims, ApiError> {
        use jsonwebtoken::errors::ErrorKind;
        jsonwebtoken::decode::<AccessClaims>(token, &self.inner.decoding, &self.inner.validation)
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => ApiError::unauthorized("the access token has expired"),
                _ => ApiError::unauthorized("the access token is invalid"),
            })
    }

    /// 401 if the token's sign-in has ended; 503 if that cannot be known.
    async fn ensure_live(&self, claims: &AccessClaims) -> Result<(), ApiError> {
        match self.inner.revocations.is_revoked(claims.sid).await {
            Ok(false) => Ok(()),
            Ok(true) => Err(ApiError::unauthorized("the sign-in has ended; sign in again")),
            Err(err) => Err(ApiError::dependency_down(
                "unavailable",
                "access tokens cannot be checked right now; try again shortly",
                REVOCATION_CHECK_RETRY_AFTER_SECS,
                err,
            )),
        }
    }
}

/// Ended sign-ins, in Redis: one key per sign-in, `auth:revoked:<sid>`
/// under the deployment's prefix, expiring by itself once no access token
/// of that sign-in can be valid any more.
#[derive(Clone)]
pub struct Revocations {
    redis: Redis,
}

impl Revocations {
    pub fn new(redis: Redis) -> Self {
        Revocations { redis }
    }

    fn key(&self, sid: Uuid) -> String {
        self.redis.key(&format!("auth:revoked:{sid}"))
    }

    /// Ends sign-in `sid` for every access token issued for it until now
    /// with a lifetime of at most `access_ttl`. Idempotent: recording it
    /// again only restarts its clock.
    ///
    /// The key lives `access_ttl` plus the verifier's leeway plus one second
    /// (`iat` and the leeway check are whole seconds), so it outlives every
    /// token issued before this call: such a token's `exp` is at most now
    /// plus `access_ttl`.
    pub async fn revoke(&self, sid: Uuid, access_ttl: Duration) -> anyhow::Result<()> {
        let ttl = access_ttl.as_secs() + LEEWAY_SECS + 1;
        let mut conn = self.redis.conn().await?;
        redis::cmd("SET")
            .arg(self.key(sid))
            .arg(1)
            .arg("EX")
            .arg(ttl)
            .query_async::<()>(&mut conn)
            .await
            .context("failed to record an ended sign-in in Redis")?;
        Ok(())
    }

    /// Whether sign-in `sid` has ended; an error if Redis does not answer
    /// within [`REVOCATION_CHECK_TIMEOUT`].
    pub async fn is_revoked(&self, sid: Uuid) -> anyhow::Result<bool> {
        let ask = async {
            let mut conn = self.redis.conn().await?;
            redis::cmd("EXISTS")
                .arg(self.key(sid))
                .query_async(&mut conn)
                .await
                .context("failed to ask Redis whether a sign-in has ended")
        };
        tokio::time::timeout(REVOCATION_CHECK_TIMEOUT, ask).await.unwrap_or_else(|_| {
            Err(anyhow::anyhow!("Redis did not say within {REVOCATION_CHECK_TIMEOUT:?} whether a sign-in has ended"))
        })
    }
}

/// The authenticated caller of a protected route.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser {
    pub user_id: Uuid,
}

impl<S> FromRequestParts<S> for AuthUser
where
    JwtKeys: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("an Authorization: Bearer token is required"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))?;
        let keys = JwtKeys::from_ref(state);
        let claims = keys.verify(token)?;
        // Lets the request log line name the user, refused sign-ins included:
        // the signature says the claims are ours.
        if let Some(ctx) = parts.extensions.get::<Arc<RequestContext>>() {
            ctx.set_user(claims.sub);
        }
        keys.ensure_live(&claims).await?;
        Ok(AuthUser { user_id: claims.sub })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> JwtKeys {
        // Redis is connected on first use, which these tests never make.
        let redis = Redis::new(&SecretString::from("redis://127.0.0.1:1".to_owned()), "").unwrap();
        JwtKeys::new(&SecretString::from(secret.to_owned()), Revocations::new(redis))
    }

    #[test]
    fn a_token_verifies_with_the_key_that_signed_it() {
        let keys = keys("an-access-secret-of-at-least-32-bytes");
        let (user, sid) = (Uuid::new_v4(), Uuid::new_v4());
        let (token, _) = keys.issue(user, sid, Duration::from_secs(900)).unwrap();
        let claims = keys.verify(&token).unwrap();
        assert_eq!((claims.sub, claims.sid), (user, sid));
    }

    #[test]
    fn a_token_without_a_sign_in_id_is_rejected() {
        // Such a token could not be revoked; releases before sign-in ids
        // issued them, and their clients refresh.
        let secret = "an-access-secret-of-at-least-32-bytes";
        let exp = chrono::Utc::now().timestamp() + 600;
        let claims =
            serde_json::json!({"sub": Uuid::new_v4(), "iss": ISSUER, "iat": 0, "exp": exp, "jti": Uuid::new_v4()});
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
                .unwrap();
        let err = keys(secret).verify(&token).unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn a_token_signed_with_another_key_is_rejected() {
        let (token, _) = keys("an-access-secret-of-at-least-32-bytes")
            .issue(Uuid::new_v4(), Uuid::new_v4(), Duration::from_secs(900))
            .unwrap();
        let err = keys("another-secret-entirely-32-bytes-long").verify(&token).unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn an_unsigned_token_is_rejected() {
        // alg "none" must never be accepted.
        let header = base64_url(r#"{"alg":"none","typ":"JWT"}"#);
        let exp = chrono::Utc::now().timestamp() + 600;
        let body = base64_url(&format!(
            r#"{{"sub":"{}","sid":"{}","iss":"{ISSUER}","iat":0,"exp":{exp},"jti":"{}"}}"#,
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4()
        ));
        let err = keys("an-access-secret-of-at-least-32-bytes").verify(&format!("{header}.{body}.")).unwrap_err();
        assert_eq!(err.code(), "unauthorized");
    }

    fn base64_url(s: &str) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = s.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

//! Bearer access tokens: HS256 JWTs signed with `JWT_ACCESS_SECRET`.
//!
//! The auth service issues them; every service verifies them with
//! [`AuthUser`], an extractor that answers 401 with `WWW-Authenticate:
//! Bearer` when the token is missing, malformed, forged or expired.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::{header, request::Parts};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;
use crate::observe::RequestContext;

/// Who issues access tokens, checked on every verification.
pub const ISSUER: &str = "freedumb-auth";

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The user's id.
    pub sub: Uuid,
    pub iss: String,
    pub iat: i64,
    pub exp: i64,
    /// Unique per token, for audit logs.
    pub jti: Uuid,
}

/// Signs and verifies access tokens.
#[derive(Clone)]
pub struct JwtKeys {
    inner: Arc<Keys>,
}

struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl JwtKeys {
    pub fn new(secret: &SecretString) -> Self {
        let bytes = secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        // Clocks within one cluster agree to well under this.
        validation.leeway = 5;
        JwtKeys {
            inner: Arc::new(Keys {
                encoding: EncodingKey::from_secret(bytes),
                decoding: DecodingKey::from_secret(bytes),
                validation,
            }),
        }
    }

    /// A signed token for `user_id`, valid for `ttl`.
    pub fn issue(&self, user_id: Uuid, ttl: Duration) -> anyhow::Result<(String, AccessClaims)> {
        let now = chrono::Utc::now().timestamp();
        let claims = AccessClaims {
            sub: user_id,
            iss: ISSUER.to_owned(),
            iat: now,
            exp: now + i64::try_from(ttl.as_secs())?,
            jti: Uuid::new_v4(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.inner.encoding)?;
        Ok((token, claims))
    }

    pub fn verify(&self, token: &str) -> Result<AccessClaims, ApiError> {
        use jsonwebtoken::errors::ErrorKind;
        jsonwebtoken::decode::<AccessClaims>(token, &self.inner.decoding, &self.inner.validation)
            .map(|data| data.claims)
            .map_err(|err| match err.kind() {
                ErrorKind::ExpiredSignature => ApiError::unauthorized("the access token has expired"),
                _ => ApiError::unauthorized("the access token is invalid"),
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
        let claims = JwtKeys::from_ref(state).verify(token)?;
        // Lets the request log line name the user.
        if let Some(ctx) = parts.extensions.get::<Arc<RequestContext>>() {
            ctx.set_user(claims.sub);
        }
        Ok(AuthUser { user_id: claims.sub })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> JwtKeys {
        JwtKeys::new(&SecretString::from(secret.to_owned()))
    }

    #[test]
    fn a_token_verifies_with_the_key_that_signed_it() {
        let keys = keys("an-access-secret-of-at-least-32-bytes");
        let user = Uuid::new_v4();
        let (token, _) = keys.issue(user, Duration::from_secs(900)).unwrap();
        assert_eq!(keys.verify(&token).unwrap().sub, user);
    }

    #[test]
    fn a_token_signed_with_another_key_is_rejected() {
        let (token, _) =
            keys("an-access-secret-of-at-least-32-bytes").issue(Uuid::new_v4(), Duration::from_secs(900)).unwrap();
        let err = keys("another-secret-entirely-32-bytes-long").verify(&token).unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn an_unsigned_token_is_rejected() {
        // alg "none" must never be accepted.
        let header = base64_url(r#"{"alg":"none","typ":"JWT"}"#);
        let exp = chrono::Utc::now().timestamp() + 600;
        let body = base64_url(&format!(
            r#"{{"sub":"{}","iss":"{ISSUER}","iat":0,"exp":{exp},"jti":"{}"}}"#,
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

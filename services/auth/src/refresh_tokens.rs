//! Refresh tokens: opaque, stored as HMACs, rotated on every use, and
//! revoked by family when a used one comes back.

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use sqlx::PgConnection;
use uuid::Uuid;

/// Hashes tokens with `JWT_REFRESH_SECRET`, so the stored values are useless
/// without the secret as well as without the tokens.
pub struct TokenHasher {
    key: SecretString,
}

impl TokenHasher {
    pub fn new(key: SecretString) -> Self {
        TokenHasher { key }
    }

    pub fn hash(&self, token: &str) -> Vec<u8> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.key.expose_secret().as_bytes()).expect("HMAC takes any key length");
        mac.update(token.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

/// 256 random bits, URL-safe.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Stores a new token of `family_id`.
pub async fn insert(
    conn: &mut PgConnection,
    user_id: Uuid,
    family_id: Uuid,
    token_hash: &[u8],
    expires_at: DateTime<Utc>,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO auth.refresh_tokens (id, family_id, user_id, token_hash, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(Uuid::now_v7())
    .bind(family_id)
    .bind(user_id)
    .bind(token_hash)
    .bind(expires_at)
    .execute(conn)
    .await
    .context("failed to store a refresh token")?;
    Ok(())
}

#[derive(Debug, sqlx::FromRow)]
pub struct StoredToken {
    pub id: Uuid,
    pub family_id: Uuid,
    pub user_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    /// When the token's family (its sign-in) was last revoked, if ever.
    ///
    /// The family, not the token: a refresh that commits while a
    /// revocation's `UPDATE` waits for its row lock inserts a successor the
    /// `UPDATE` never sees (read committed re-checks the rows it found, it
    /// does not look for new ones). That successor is live by its own row,
    /// and refused by its family's.
    pub family_revoked_at: Option<DateTime<Utc>>,
}

/// The token with this hash, locked until the transaction ends, so two
/// concurrent refreshes with one token are serialised.
pub async fn find_for_update(conn: &mut PgConnection, token_hash: &[u8]) -> anyhow::Result<Option<StoredToken>> {
    sqlx::query_as(
        "SELECT t.id, t.family_id, t.user_id, t.expires_at, t.used_at,
                (SELECT max(f.revoked_at) FROM auth.refresh_tokens f WHERE f.family_id = t.family_id)
                    AS family_revoked_at
         FROM auth.refresh_tokens t WHERE t.token_hash = $1 FOR UPDATE OF t",
    )
    .bind(token_hash)
    .fetch_optional(conn)
    .await
    .context("failed to look up a refresh token")
}

pub async fn mark_used(conn: &mut PgConnection, id: Uuid) -> anyhow::Result<()> {
    sqlx::query("UPDATE auth.refresh_tokens SET used_at = now() WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await
        .context("failed to mark a refresh token used")?;
    Ok(())
}

/// Revokes every live token of the family; returns how many.
pub async fn revoke_family(conn: &mut PgConnection, family_id: Uuid) -> anyhow::Result<u64> {
    let done =
        sqlx::query("UPDATE auth.refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL")
            .bind(family_id)
            .execute(conn)
            .await
            .context("failed to revoke a refresh token family")?;
    Ok(done.rows_affected())
}

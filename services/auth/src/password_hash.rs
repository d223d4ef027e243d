//! Password hashing with argon2id at OWASP's recommended parameters
//! (m = 19 MiB, t = 2, p = 1).
//!
//! Hashing takes tens of milliseconds of CPU on purpose, so it runs on the
//! blocking pool and never stalls the async workers.

use std::sync::OnceLock;

use anyhow::Context;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Params, Version};

fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("OWASP parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub async fn hash(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        hasher().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| anyhow::anyhow!("{e}"))
    })
    .await
    .context("the hashing task failed")?
    .context("failed to hash a password")
}

/// Whether `password` matches `stored`. With `stored == None` (no such
/// user) it still does the work of one verification, so a login for an
/// unknown email takes as long as one with a wrong password.
pub async fn verify(password: String, stored: Option<String>) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || {
        let (phc, known) = match &stored {
            Some(phc) => (phc.as_str(), true),
            None => (dummy_hash(), false),
        };
        let parsed = PasswordHash::new(phc).map_err(|e| anyhow::anyhow!("stored password hash is malformed: {e}"))?;
        // Verify with the parameters recorded in the hash, so hashes made
        // with older parameters keep working.
        let matches = Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
        Ok(known && matches)
    })
    .await
    .context("the hashing task failed")?
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        hasher().hash_password(b"no user has this password", &salt).expect("hashing a constant works").to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_own_password_only() {
        let phc = hash("correct horse battery staple".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify("correct horse battery staple".into(), Some(phc.clone())).await.unwrap());
        assert!(!verify("Correct horse battery staple".into(), Some(phc)).await.unwrap());
    }

    #[tokio::test]
    async fn an_unknown_user_never_verifies() {
        assert!(!verify("no user has this password".into(), None).await.unwrap());
    }
}

//! Password hashing with argon2id at OWASP's recommended parameters
//! (m = 19 MiB, t = 2, p = 1).
//!
//! Hashing takes tens of milliseconds of CPU and 19 MiB of memory on
//! purpose, so it runs on the blocking pool, never stalling the async
//! workers, and at most one hash per core runs at a time. Without that
//! bound a burst of sign-ins starts one blocking thread per request, each
//! with its own 19 MiB and its own malloc arena: a load test of 64
//! concurrent users drove the process to gigabytes of resident memory, and
//! an attacker could do the same on purpose. Extra requests queue instead.

use std::sync::OnceLock;

use tokio::sync::Semaphore;

use anyhow::Context;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use argon2::{Algorithm, Argon2, Params, Version};

fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("OWASP parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// One permit per core: hashing is CPU-bound, so more at once only adds
/// memory and latency.
fn permits() -> &'static Semaphore {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())))
}

pub async fn hash(password: String) -> anyhow::Result<String> {
    let _permit = permits().acquire().await.context("the hashing semaphore closed")?;
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
    let _permit = permits().acquire().await.context("the hashing semaphore closed")?;
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_hashes_are_bounded_by_the_cores() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let busy = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..cores * 4)
            .map(|i| {
                let (busy, peak) = (busy.clone(), peak.clone());
                tokio::spawn(async move {
                    let _permit = permits().acquire().await.unwrap();
                    let now = busy.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(5 + i as u64 % 3)).await;
                    busy.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let peak = peak.load(std::sync::atomic::Ordering::SeqCst);
        assert!(peak <= cores && peak >= 1, "peak {peak} with {cores} cores");
    }

    #[tokio::test]
    async fn an_unknown_user_never_verifies() {
        assert!(!verify("no user has this password".into(), None).await.unwrap());
    }
}

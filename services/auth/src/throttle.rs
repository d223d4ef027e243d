//! Login throttling in Redis: attempts per client IP, failures per account.
//!
//! Fixed windows: a counter key per IP and per account, expiring with its
//! window; the key's remaining time is the `Retry-After`. Counting per account
//! slows guessing one password from many addresses; counting per IP slows one
//! address trying many accounts. The account key is a hash of the normalised
//! email, so Redis never holds addresses in clear, and unknown emails are
//! counted exactly like known ones.
//!
//! If Redis is unreachable, logins are refused (503) rather than let through
//! unthrottled; `/ready` reports the outage at the same time.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use freedumb_kit::cache::Redis;
use freedumb_kit::config::{ConfigError, Env};
use sha2::{Digest, Sha256};

use crate::credentials::Email;

#[derive(Debug, Clone)]
pub struct Limits {
    pub ip_max_attempts: u64,
    pub ip_window: Duration,
    pub account_max_failures: u64,
    pub account_window: Duration,
}

impl Limits {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Limits {
            ip_max_attempts: env.parsed_or("LOGIN_IP_MAX_ATTEMPTS", 20, "a number of attempts")?,
            ip_window: env.seconds_or("LOGIN_IP_WINDOW_SECS", 60)?,
            account_max_failures: env.parsed_or("LOGIN_ACCOUNT_MAX_FAILURES", 5, "a number of failures")?,
            account_window: env.seconds_or("LOGIN_ACCOUNT_WINDOW_SECS", 900)?,
        })
    }
}

/// Increments a counter, starting its window on the first hit, and returns
/// the new count and the seconds left in the window. One round trip, atomic.
const INCREMENT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('TTL', KEYS[1])
return {n, ttl}
";

/// Reads a counter and the seconds left in its window.
const READ: &str = r"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
local ttl = redis.call('TTL', KEYS[1])
return {n, ttl}
";

pub struct Throttle {
    redis: Redis,
    limits: Limits,
}

/// A refusal: try again after this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

impl Throttle {
    pub fn new(redis: Redis, limits: Limits) -> Self {
        Throttle { redis, limits }
    }

    fn ip_key(&self, ip: IpAddr) -> String {
        self.redis.key(&format!("auth:login:ip:{ip}"))
    }

    fn account_key(&self, email: &Email) -> String {
        let digest = Sha256::digest(email.as_str().as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.redis.key(&format!("auth:login:account:{hex}"))
    }

    /// Counts this attempt against the IP and checks both limits.
    pub async fn admit(&self, ip: IpAddr, email: &Email) -> anyhow::Result<Result<(), RetryAfter>> {
        let mut conn = self.redis.conn().await?;
        let (attempts, ip_ttl): (u64, i64) = redis::Script::new(INCREMENT)
            .key(self.ip_key(ip))
            .arg(self.limits.ip_window.as_secs().max(1))
            .invoke_async(&mut conn)
            .await
            .context("failed to count a login attempt")?;
        if attempts > self.limits.ip_max_attempts {
            return Ok(Err(RetryAfter(ttl_secs(ip_ttl, self.limits.ip_window))));
        }
        let (failures, account_ttl): (u64, i64) = redis::Script::new(READ)
            .key(self.account_key(email))
            .invoke_async(&mut conn)
            .await
            .context("failed to read an account's login failures")?;
        if failures >= self.limits.account_max_failures {
            return Ok(Err(RetryAfter(ttl_secs(account_ttl, self.limits.account_window))));
        }
        Ok(Ok(()))
    }

    pub async fn record_failure(&self, email: &Email) -> anyhow::Result<()> {
        let mut conn = self.redis.conn().await?;
        let _: (u64, i64) = redis::Script::new(INCREMENT)
            .key(self.account_key(email))
            .arg(self.limits.account_window.as_secs().max(1))
            .invoke_async(&mut conn)
            .await
            .context("failed to count a login failure")?;
        Ok(())
    }

    /// A successful login clears the account's failures.
    pub async fn record_success(&self, email: &Email) -> anyhow::Result<()> {
        let mut conn = self.redis.conn().await?;
        redis::cmd("DEL").arg(self.account_key(email)).query_async::<()>(&mut conn).await?;
        Ok(())
    }
}

/// A TTL of -1 (no expiry, which INCREMENT never leaves) or -2 (just
/// expired) falls back to the whole window.
fn ttl_secs(ttl: i64, window: Duration) -> u64 {
    u64::try_from(ttl).ok().filter(|t| *t > 0).unwrap_or(window.as_secs()).max(1)
}

//! Redis: a lazily connected, self-healing connection, key prefixes, and a
//! read-through cache counted in `cache_hits_total` / `cache_misses_total`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;

use crate::metrics::Metrics;

/// A handle to Redis, cheap to clone.
///
/// The connection is made on first use rather than at start-up, so a
/// service starts and reports not-ready while Redis is down. After that the
/// connection manager reconnects by itself.
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    manager: Arc<OnceCell<ConnectionManager>>,
    prefix: Arc<str>,
}

impl Redis {
    pub fn new(url: &SecretString, prefix: &str) -> anyhow::Result<Self> {
        // redis' parse error can quote the URL, password included.
        let client = redis::Client::open(url.expose_secret())
            .map_err(|_| anyhow::anyhow!("REDIS_URL is not a valid Redis URL"))?;
        Ok(Redis { client, manager: Arc::new(OnceCell::new()), prefix: prefix.into() })
    }

    /// The shared connection.
    pub async fn conn(&self) -> anyhow::Result<ConnectionManager> {
        let manager = self
            .manager
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Duration::from_secs(2))
                    .set_response_timeout(Duration::from_secs(2))
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(self.client.clone(), config).await
            })
            .await
            .context("failed to connect to Redis")?;
        Ok(manager.clone())
    }

    /// `key` with this deployment's prefix.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut conn = self.conn().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await.context("Redis did not answer PING")?;
        Ok(())
    }
}

/// Reads the current version of an entry and the value stored under it, in
/// one round trip.
const VERSIONED_GET: &str = r"
local version = redis.call('GET', KEYS[1]) or '0'
return {version, redis.call('GET', ARGV[1] .. version)}
";

const VERSION_TTL_SECS: u64 = 7 * 24 * 3600;

/// Read-through caching of JSON values.
#[derive(Clone)]
pub struct Cache {
    redis: Redis,
    metrics: Metrics,
}

impl Cache {
    pub fn new(redis: Redis, metrics: Metrics) -> Self {
        Cache { redis, metrics }
    }

    /// The cached value of `prefix:id`, or `load()`'s, stored for `ttl`.
    ///
    /// Redis trouble is never the caller's: a failed read counts as a miss
    /// and a failed write is logged, and the value comes from `load`.
    pub async fn get_or_load<T, E, F, Fut>(
        &self,
        prefix: &'static str,
        id: &str,
        ttl: Duration,
        load: F,
    ) -> Result<Option<T>, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        let key = self.redis.key(&format!("cache:{prefix}:{id}"));
        match self.read(&key).await {
            Ok(Some(value)) => {
                self.metrics.cache_hit(prefix);
                return Ok(Some(value));
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), cache_key_prefix = prefix, "cache read failed; loading from the database")
            }
        }
        self.load_and_store(prefix, Some(key), ttl, load).await
    }

    /// A miss: counts it, loads, and stores the value under `key` (none when
    /// Redis could not even say which key).
    async fn load_and_store<T, E, F, Fut>(
        &self,
        prefix: &'static str,
        key: Option<String>,
        ttl: Duration,
        load: F,
    ) -> Result<Option<T>, E>
    where
        T: Serialize,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        self.metrics.cache_miss(prefix);
        let value = load().await?;
        if let (Some(value), Some(key)) = (&value, key)
            && let Err(err) = self.write(&key, value, ttl).await
        {
            tracing::warn!(error = %format!("{err:#}"), cache_key_prefix = prefix, "cache write failed");
        }
        Ok(value)
    }

    /// Like [`Cache::get_or_load`], for values that writers change often.
    ///
    /// A plain delete-on-write cache has a race: a reader loads the old value
    /// from the database, a writer commits and deletes the key, then the
    /// reader stores the old value, which stays until its TTL ends. Here each
    /// entry lives under a version number that writers [`bump`](Cache::bump)
    /// after committing, so a value loaded before a write is stored under a
    /// version no reader asks for again.
    pub async fn get_or_load_versioned<T, E, F, Fut>(
        &self,
        prefix: &'static str,
        id: &str,
        ttl: Duration,
        load: F,
    ) -> Result<Option<T>, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        let base = self.redis.key(&format!("cache:{prefix}:{id}"));
        let version = match self.read_versioned::<T>(&base).await {
            Ok((_, Some(value))) => {
                self.metrics.cache_hit(prefix);
                return Ok(Some(value));
            }
            Ok((version, None)) => Some(version),
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), cache_key_prefix = prefix, "cache read failed; loading from the database");
                None
            }
        };
        self.load_and_store(prefix, version.map(|v| format!("{base}:v{v}")), ttl, load).await
    }

    /// Moves `prefix:id` to a new version; call after committing a write.
    pub async fn bump(&self, prefix: &'static str, id: &str) {
        let key = self.redis.key(&format!("cache:{prefix}:{id}:version"));
        let result: anyhow::Result<()> = async {
            let mut conn = self.redis.conn().await?;
            redis::pipe()
                .cmd("INCR")
                .arg(&key)
                .ignore()
                // Far longer than any entry's TTL, so an expired version
                // number never meets an entry written under it.
                .cmd("EXPIRE")
                .arg(&key)
                .arg(VERSION_TTL_SECS)
                .ignore()
                .query_async::<()>(&mut conn)
                .await?;
            Ok(())
        }
        .await;
        if let Err(err) = result {
            tracing::warn!(error = %format!("{err:#}"), cache_key_prefix = prefix, "cache version bump failed; entries expire by TTL");
        }
    }

    async fn read_versioned<T: DeserializeOwned>(&self, base: &str) -> anyhow::Result<(u64, Option<T>)> {
        let mut conn = self.redis.conn().await?;
        let (version, raw): (u64, Option<Vec<u8>>) = redis::Script::new(VERSIONED_GET)
            .key(format!("{base}:version"))
            .arg(format!("{base}:v"))
            .invoke_async(&mut conn)
            .await?;
        Ok((version, raw.and_then(|bytes| serde_json::from_slice(&bytes).ok())))
    }

    async fn read<T: DeserializeOwned>(&self, key: &str) -> anyhow::Result<Option<T>> {
        let mut conn = self.redis.conn().await?;
        let raw: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(&mut conn).await?;
        // An entry that no longer parses (an older release wrote it) is a miss.
        Ok(raw.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    async fn write<T: Serialize>(&self, key: &str, value: &T, ttl: Duration) -> anyhow::Result<()> {
        let mut conn = self.redis.conn().await?;
        let bytes = serde_json::to_vec(value)?;
        redis::cmd("SET").arg(key).arg(bytes).arg("EX").arg(ttl.as_secs().max(1)).query_async::<()>(&mut conn).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Redis trouble is never the caller's: with Redis unreachable, every
    /// read is a miss served by `load`, and counted as one. (Requests that
    /// authenticate fail closed without Redis, see `crate::auth`, so this is
    /// shown here rather than through the ledger's routes.)
    #[tokio::test]
    async fn an_unreachable_redis_is_a_counted_miss_served_from_the_source() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let redis = Redis::new(&SecretString::from(format!("redis://127.0.0.1:{closed}")), "test:").unwrap();
        let metrics = Metrics::new();
        let cache = Cache::new(redis, metrics.clone());
        for _ in 0..2 {
            let balance: Option<String> = cache
                .get_or_load_versioned("balance", "account", Duration::from_secs(60), || async {
                    Ok::<_, anyhow::Error>(Some("7.50".to_owned()))
                })
                .await
                .unwrap();
            assert_eq!(balance.as_deref(), Some("7.50"));
        }
        let text = metrics.render();
        assert!(text.contains(r#"cache_misses_total{cache_key_prefix="balance"} 2"#), "{text}");
    }
}

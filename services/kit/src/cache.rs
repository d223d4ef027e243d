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
        self.metrics.cache_miss(prefix);
        let value = load().await?;
        if let Some(value) = &value
            && let Err(err) = self.write(&key, value, ttl).await
        {
            tracing::warn!(error = %format!("{err:#}"), cache_key_prefix = prefix, "cache write failed");
        }
        Ok(value)
    }

    /// Drops `prefix:id`; call after every write to what it caches.
    pub async fn invalidate(&self, prefix: &'static str, id: &str) {
        let key = self.redis.key(&format!("cache:{prefix}:{id}"));
        let result: anyhow::Result<()> = async {
            let mut conn = self.redis.conn().await?;
            redis::cmd("DEL").arg(&key).query_async::<()>(&mut conn).await?;
            Ok(())
        }
        .await;
        if let Err(err) = result {
            tracing::warn!(error = %format!("{err:#}"), cache_key_prefix = prefix, "cache invalidation failed");
        }
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

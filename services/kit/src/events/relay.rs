//! The relay: publishes a schema's outbox to the events exchange.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use secrecy::SecretString;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Backoff, Bus, Event, Outage, PRUNE_EVERY, pause, prune_in_batches, within};
use crate::db::{Db, check_schema};
use crate::service::BackgroundTask;

/// How a relay works; [`Default`] is right for production, tests shorten
/// the delays. (Where it publishes is its [`Bus`].)
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows per batch: one transaction, one wait for confirms.
    pub batch_size: u32,
    /// The pause after a batch that left the outbox empty. Events wait this
    /// long at most while things are healthy.
    pub poll_interval: Duration,
    /// The longest pause between attempts while RabbitMQ or Postgres is
    /// down; the pause doubles from `poll_interval` up to this.
    pub max_backoff: Duration,
    /// How long the broker may take to confirm a batch before the relay
    /// gives up on the connection and tries again.
    pub confirm_timeout: Duration,
    /// Published rows older than this are deleted.
    pub retention: Duration,
    /// How long a relay waits, when it starts, for the consumers of its
    /// process to bind their queues (see [`super::PendingBindings`]); it
    /// publishes anyway after that, with a warning.
    pub bindings_wait: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch_size: 100,
            poll_interval: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            confirm_timeout: Duration::from_secs(10),
            retention: Duration::from_secs(7 * 24 * 3600),
            bindings_wait: Duration::from_secs(30),
        }
    }
}

/// How often the `outbox_pending` gauge is refreshed, and published rows
/// are pruned.
const PENDING_EVERY: Duration = Duration::from_secs(5);

/// Publishes the unpublished rows of `<schema>.outbox`, oldest first, to
/// the bus's exchange, each envelope stamped with the bus's deployment,
/// until shut down. Run one per replica of the service that owns the schema
/// (see [`Relay::into_task`]); they share the work.
///
/// Each batch is one Postgres transaction: lock up to `batch_size` rows
/// (`FOR UPDATE SKIP LOCKED`, so other relays take other rows), publish
/// them as persistent messages, wait for the broker's confirms, mark the
/// confirmed ones published, commit. When RabbitMQ is unreachable nothing is
/// marked, the relay retries with a backoff capped at `max_backoff`, and it
/// logs once when the outage starts and once when it ends.
#[derive(Clone)]
pub struct Relay {
    db: Db,
    schema: String,
    bus: Bus,
    config: Arc<RelayConfig>,
}

impl Relay {
    pub fn new(db: Db, schema: &str, bus: &Bus) -> Self {
        Relay { db, schema: schema.to_owned(), bus: bus.clone(), config: Arc::new(RelayConfig::default()) }
    }

    pub fn with_config(mut self, config: RelayConfig) -> Self {
        self.config = Arc::new(config);
        self
    }

    /// The relay as a background task named `outbox-relay:<schema>`.
    pub fn into_task(self) -> BackgroundTask {
        BackgroundTask::new(format!("outbox-relay:{}", self.schema), move |shutdown| {
            let relay = self.clone();
            async move { relay.run(shutdown).await }
        })
    }

    /// Publishes until `shutdown` is cancelled. Outages of RabbitMQ and
    /// Postgres are waited out; an error means a bad configuration (schema
    /// name, URL, credentials, permissions).
    pub async fn run(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        check_schema(&self.schema)?;
        super::parse_url(self.bus.url())?;
        let config = &self.config;
        let metrics = self.db.metrics();
        let mut broker = Outage::new("rabbitmq", "events stay in the outbox");
        let mut database = Outage::new("postgres", "the outbox cannot be read");
        let mut backoff = Backoff::new(config.poll_interval, config.max_backoff);
        let mut publisher: Option<Publisher> = None;
        let mut next_pending = Instant::now();
        let mut next_prune = Instant::now();
        self.wait_for_bindings(&shutdown).await;
        while !shutdown.is_cancelled() {
            if Instant::now() >= next_pending {
                next_pending = Instant::now() + PENDING_EVERY;
                match self.pending().await {
                    Ok(pending) => metrics.set_outbox_pending(&self.schema, pending),
                    Err(err) => tracing::debug!(error = %format!("{err:#}"), "failed to count pending events"),
                }
            }
            if Instant::now() >= next_prune {
                next_prune = Instant::now() + PRUNE_EVERY;
                if let Err(err) = self.prune().await {
                    tracing::warn!(error = %format!("{err:#}"), "failed to prune published events");
                }
            }
            let active = match publisher.take() {
                Some(active) => active,
                None => match Publisher::open(self.bus.url(), &self.schema, self.bus.exchange()).await {
                    Ok(opened) => opened,
                    Err(err) if super::is_refusal(&err) => {
                        return Err(err.context("rabbitmq refused the outbox relay"));
                    }
                    Err(err) => {
                        broker.failed(&err);
                        if !pause(backoff.next(), &shutdown).await {
                            break;
                        }
                        continue;
                    }
                },
            };
            match self.publish_batch(&active).await {
                Ok(published) => {
                    publisher = Some(active);
                    broker.recovered();
                    database.recovered();
                    backoff.reset();
                    if published > 0 {
                        metrics.outbox_published(&self.schema, published as u64);
                    }
                    // A full batch means more are likely waiting.
                    if published < config.batch_size as usize && !pause(config.poll_interval, &shutdown).await {
                        break;
                    }
                }
                Err(BatchError::Broker(err)) => {
                    // The channel is suspect: start over on a new connection.
                    super::close(active.connection).await;
                    broker.failed(&err);
                    if !pause(backoff.next(), &shutdown).await {
                        break;
                    }
                }
                Err(BatchError::Database(err)) => {
                    publisher = Some(active);
                    database.failed(&err);
                    if !pause(backoff.next(), &shutdown).await {
                        break;
                    }
                }
            }
        }
        if let Some(active) = publisher {
            super::close(active.connection).await;
        }
        Ok(())
    }

    /// Waits (see [`RelayConfig::bindings_wait`]) until the consumers of
    /// this process have bound their queues, so that nothing they must see
    /// is published into an exchange that would drop it.
    async fn wait_for_bindings(&self, shutdown: &CancellationToken) {
        let pending = self.bus.pending();
        if pending.unbound() == 0 {
            return;
        }
        let started = Instant::now();
        let unbound = tokio::select! {
            unbound = pending.wait(self.config.bindings_wait) => unbound,
            () = shutdown.cancelled() => return,
        };
        if unbound == 0 {
            tracing::debug!(
                waited_ms = started.elapsed().as_millis() as u64,
                "the consumers of this process have bound their queues; publishing"
            );
        } else {
            tracing::warn!(
                unbound,
                waited_secs = self.config.bindings_wait.as_secs(),
                "publishing although consumers of this process have not bound their queues yet: events they \
                 should see may be dropped by the exchange until they do (docs/events.md says how to replay)",
            );
        }
    }

    /// Publishes one batch; the number of rows marked published.
    async fn publish_batch(&self, publisher: &Publisher) -> Result<usize, BatchError> {
        let schema = &self.schema;
        let mut tx =
            self.db.begin().await.context("failed to begin a relay transaction").map_err(BatchError::Database)?;
        let rows: Vec<(Uuid, String, String, DateTime<Utc>)> = sqlx::query_as(&format!(
            "SELECT id, routing_key, payload::text, created_at FROM {schema}.outbox \
             WHERE published_at IS NULL ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED"
        ))
        .bind(i64::from(self.config.batch_size))
        .fetch_all(tx.conn())
        .await
        .context("failed to read the outbox")
        .map_err(BatchError::Database)?;
        if rows.is_empty() {
            return Ok(0);
        }

        let mut confirms = Vec::with_capacity(rows.len());
        for (id, routing_key, payload, created_at) in &rows {
            let data = serde_json::from_str(payload)
                .with_context(|| format!("outbox row {id} holds invalid JSON"))
                .map_err(BatchError::Database)?;
            let event = Event {
                id: *id,
                kind: routing_key.clone(),
                deployment: Some(self.bus.deployment().to_string()),
                occurred_at: *created_at,
                data,
            };
            let body = serde_json::to_vec(&event)
                .context("failed to serialise an event envelope")
                .map_err(BatchError::Database)?;
            let properties = BasicProperties::default()
                .with_content_type("application/json".into())
                // Persistent: the broker writes it to disk before confirming.
                .with_delivery_mode(2)
                .with_message_id(id.to_string().into())
                .with_type(routing_key.as_str().into())
                .with_timestamp(u64::try_from(created_at.timestamp()).unwrap_or(0))
                .with_app_id(schema.as_str().into());
            let confirm = publisher
                .channel
                .basic_publish(
                    self.bus.exchange().into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
                .context("failed to publish an event")
                .map_err(BatchError::Broker)?;
            confirms.push(confirm);
        }

        let outcomes = tokio::time::timeout(self.config.confirm_timeout, futures::future::join_all(confirms))
            .await
            .map_err(|_| BatchError::Broker(anyhow::anyhow!("timed out waiting for the broker to confirm events")))?;
        let mut confirmed = Vec::with_capacity(rows.len());
        let mut failure = None;
        for ((id, ..), outcome) in rows.iter().zip(outcomes) {
            match outcome {
                Ok(confirmation) if confirmation.is_ack() => confirmed.push(*id),
                Ok(_) => failure = Some(anyhow::anyhow!("the broker refused (nacked) an event")),
                Err(err) => failure = Some(anyhow::Error::new(err).context("failed to get a publisher confirm")),
            }
        }
        // What the broker confirmed is marked even when others failed, so a
        // flaky broker produces as few duplicates as possible.
        if !confirmed.is_empty() {
            sqlx::query(&format!("UPDATE {schema}.outbox SET published_at = now() WHERE id = ANY($1)"))
                .bind(&confirmed)
                .execute(tx.conn())
                .await
                .context("failed to mark events published")
                .map_err(BatchError::Database)?;
            tx.commit().await.context("failed to commit published events").map_err(BatchError::Database)?;
        }
        match failure {
            Some(err) => Err(BatchError::Broker(err)),
            None => Ok(confirmed.len()),
        }
    }

    /// Unpublished rows, counted up to a million so the count stays cheap
    /// during a long outage.
    async fn pending(&self) -> anyhow::Result<i64> {
        let schema = &self.schema;
        let count = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM (SELECT 1 FROM {schema}.outbox WHERE published_at IS NULL LIMIT 1000000) AS pending"
        ))
        .fetch_one(&self.db.pool)
        .await?;
        Ok(count)
    }

    async fn prune(&self) -> anyhow::Result<()> {
        let schema = &self.schema;
        let sql = format!(
            "DELETE FROM {schema}.outbox WHERE id IN (SELECT id FROM {schema}.outbox \
             WHERE published_at < now() - make_interval(secs => $1) LIMIT $2)"
        );
        prune_in_batches(|batch| {
            sqlx::query(&sql).bind(self.config.retention.as_secs_f64()).bind(batch).execute(&self.db.pool)
        })
        .await
    }
}

enum BatchError {
    /// Publishing failed: reconnect before the next batch.
    Broker(anyhow::Error),
    /// Postgres failed: the connection to RabbitMQ is fine.
    Database(anyhow::Error),
}

/// A connection with one channel in confirm mode.
struct Publisher {
    connection: Connection,
    channel: Channel,
}

impl Publisher {
    async fn open(url: &SecretString, schema: &str, exchange: &str) -> anyhow::Result<Self> {
        let connection = super::connect(url, format!("freedumb outbox relay ({schema})")).await?;
        let channel = within("open a channel", connection.create_channel()).await?;
        within(
            "declare the events exchange",
            channel.exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
                FieldTable::default(),
            ),
        )
        .await?;
        within("enable publisher confirms", channel.confirm_select(ConfirmSelectOptions::default())).await?;
        Ok(Publisher { connection, channel })
    }
}

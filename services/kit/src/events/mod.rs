//! Domain events: a transactional outbox per schema, a relay that publishes
//! it to RabbitMQ, and idempotent consumers.
//!
//! ```text
//!  handler ──(one Postgres transaction)──▶ <schema>.<tables> + <schema>.outbox
//!                                                                  │ Relay (poll, FOR UPDATE SKIP LOCKED)
//!                                                                  ▼
//!                              topic exchange `freedumb.events` (durable, persistent messages,
//!                                                                  │ publisher confirms)
//!                                                                  ▼ bindings such as `transaction.*`
//!                            queue `<name>` (quorum) ──▶ Consumer ──(one transaction)──▶ <schema>.inbox + handler's writes
//!                                  │ rejected (poison, or out of attempts)
//!                                  ▼
//!                 `freedumb.events.dlx` (direct) ──▶ queue `<name>.dlq`
//! ```
//!
//! **Recording.** [`record`] inserts the event into `<schema>.outbox` on the
//! caller's open transaction, so the event exists if and only if the state
//! change committed. Nothing is sent from the request: a RabbitMQ outage
//! never fails a write.
//!
//! **Delivery is at least once.** The [`Relay`] marks a row published only
//! after the broker confirmed it; if the process dies between the confirm and
//! the commit, the row is published again. Several relays may run on one
//! schema (one per replica): `FOR UPDATE SKIP LOCKED` gives each batch to one
//! of them, so duplicates happen only in that failure window. Order is
//! roughly the order of recording, and not guaranteed: consumers must not
//! depend on it.
//!
//! **Consumers deduplicate by event id.** A [`Consumer`] records
//! `(event id, consumer)` in `<schema>.inbox` in the same transaction as the
//! handler's writes, so an event delivered twice is handled once.
//!
//! **Events without a bound queue are dropped** by the exchange, as in any
//! pub/sub. A consumer's queue is durable: declared once, it collects events
//! while its consumer is down. Declare it (start the consumer) before the
//! events it must see are published.
//!
//! The message body is the envelope [`Event`]:
//! `{"id", "type", "occurred_at", "data"}`, where `type` is the routing key
//! (`transaction.created`) and `data` is the payload given to [`record`].

mod consumer;
mod outbox;
mod relay;

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{ConfigError, Env};

pub use consumer::{ATTEMPT_HEADER, Consumer, ConsumerConfig, EventHandler, HandleError, handler_fn};
pub(crate) use outbox::create_tables;
pub use outbox::record;
pub use relay::{Relay, RelayConfig};

/// The topic exchange every service publishes its events to.
pub const EXCHANGE: &str = "freedumb.events";
/// Where consumers' queues send the messages they reject; each consumer's
/// `<queue>.dlq` is bound to it with the queue's name as the routing key.
pub const DEAD_LETTER_EXCHANGE: &str = "freedumb.events.dlx";

/// The variable that holds the broker's URL.
pub const RABBITMQ_URL: &str = "RABBITMQ_URL";

/// An event as it travels: the message body published for each outbox row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// A UUIDv7, unique per recorded event: what consumers deduplicate on.
    pub id: Uuid,
    /// The routing key, such as `transaction.created`.
    #[serde(rename = "type")]
    pub kind: String,
    /// When the recording transaction started (Postgres `now()`).
    pub occurred_at: DateTime<Utc>,
    /// The payload given to [`record`].
    pub data: serde_json::Value,
}

impl Event {
    /// The payload as `T`. A payload that does not fit is a poison message:
    /// redelivering it cannot help.
    pub fn data_as<T: DeserializeOwned>(&self) -> Result<T, HandleError> {
        T::deserialize(&self.data).map_err(|err| {
            HandleError::Poison(
                anyhow::Error::new(err).context(format!("the data of a {} event is malformed", self.kind)),
            )
        })
    }
}

/// Reads [`RABBITMQ_URL`] (an `amqp://` URL, kept secret because it carries
/// the password) for a service's relay and consumers.
///
/// `amqps://` is refused here rather than failing at every connection
/// attempt, because this build has no TLS support (lapin's `rustls` feature
/// is off).
pub fn rabbitmq_url(env: &Env) -> Result<SecretString, ConfigError> {
    let expected = "an amqp:// URL such as amqp://user:password@host:5672/%2f (amqps:// needs a build with TLS)";
    let url = env.url(RABBITMQ_URL, &["amqp"]).map_err(|err| ConfigError { expected: expected.to_owned(), ..err })?;
    parse_url(&url).map_err(|_| ConfigError::malformed(RABBITMQ_URL, expected))?;
    Ok(url)
}

fn parse_url(url: &SecretString) -> anyhow::Result<AMQPUri> {
    // The parser's error may quote the URL, password included.
    url.expose_secret().parse().map_err(|_| anyhow::anyhow!("the RabbitMQ URL is not a valid AMQP URL"))
}

/// How often relays prune published outbox rows and consumers prune their
/// inbox rows past retention.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Rows deleted per statement when pruning, so one prune never holds long
/// locks or writes a huge WAL burst.
const PRUNE_BATCH: i64 = 10_000;

/// Runs `delete_batch` (a `DELETE ... LIMIT` of at most the given number of
/// rows) until a batch deletes fewer than that: the table is pruned.
async fn prune_in_batches<F, Fut>(mut delete_batch: F) -> anyhow::Result<()>
where
    F: FnMut(i64) -> Fut,
    Fut: Future<Output = Result<sqlx::postgres::PgQueryResult, sqlx::Error>>,
{
    loop {
        let deleted = delete_batch(PRUNE_BATCH).await?.rows_affected();
        if deleted < PRUNE_BATCH.unsigned_abs() {
            return Ok(());
        }
    }
}

/// How long connecting (TCP, AMQP handshake) may take before the attempt
/// counts as failed; without it a half-open network could hang a relay.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one broker operation (declare, bind, ack) may take.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect(url: &SecretString, name: String) -> anyhow::Result<Connection> {
    let uri = parse_url(url)?;
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(uri, properties))
        .await
        .map_err(|_| anyhow::anyhow!("timed out connecting to RabbitMQ"))?
        .context("failed to connect to RabbitMQ")
}

/// Whether the broker refused something (wrong credentials, a missing
/// permission, a queue that exists with other arguments) rather than being
/// unreachable. Waiting will not fix a refusal, so it is not treated as an
/// outage: the relay or consumer fails, and the supervisor logs it as an
/// error at every restart.
fn is_refusal(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.downcast_ref::<lapin::Error>().is_some_and(lapin::Error::is_amqp_error))
}

/// Bounds a broker operation by [`OPERATION_TIMEOUT`].
async fn within<T>(what: &str, operation: impl Future<Output = lapin::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(OPERATION_TIMEOUT, operation)
        .await
        .map_err(|_| anyhow::anyhow!("timed out: {what}"))?
        .with_context(|| format!("failed to {what}"))
}

/// Closes a connection politely, without waiting long for a broker that is
/// gone; dropping it would close it too, less cleanly.
async fn close(connection: Connection) {
    let _ = tokio::time::timeout(Duration::from_secs(2), connection.close(200, "bye".into())).await;
}

/// Logs a dependency outage once when it starts and once when it ends,
/// however many attempts fail in between.
struct Outage {
    dependency: &'static str,
    consequence: &'static str,
    since: Option<tokio::time::Instant>,
}

impl Outage {
    fn new(dependency: &'static str, consequence: &'static str) -> Self {
        Outage { dependency, consequence, since: None }
    }

    fn failed(&mut self, err: &anyhow::Error) {
        if self.since.is_none() {
            self.since = Some(tokio::time::Instant::now());
            tracing::warn!(
                dependency = self.dependency,
                error = %format!("{err:#}"),
                "{} is unavailable; {}; retrying until it is back",
                self.dependency,
                self.consequence,
            );
        } else {
            tracing::debug!(dependency = self.dependency, error = %format!("{err:#}"), "still unavailable");
        }
    }

    fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                dependency = self.dependency,
                outage_secs = since.elapsed().as_secs(),
                "{} is available again",
                self.dependency,
            );
        }
    }
}

/// Retry delays: doubling from `min` up to `max`.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max: max.max(min), next: min }
    }

    fn next(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Sleeps for `delay`; `false` if `shutdown` was cancelled first.
async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = shutdown.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env(url: &str) -> Env {
        Env::from_map(BTreeMap::from([(RABBITMQ_URL.to_owned(), url.to_owned())]))
    }

    #[test]
    fn the_envelope_names_the_routing_key_type() {
        let event = Event {
            id: Uuid::now_v7(),
            kind: "transaction.created".into(),
            occurred_at: Utc::now(),
            data: serde_json::json!({ "amount": "12.50" }),
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "transaction.created");
        assert_eq!(json["data"]["amount"], "12.50");
        assert_eq!(serde_json::from_value::<Event>(json).unwrap(), event);
    }

    #[test]
    fn data_that_does_not_fit_is_poison() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Created {
            amount: i64,
        }
        let event = Event {
            id: Uuid::now_v7(),
            kind: "transaction.created".into(),
            occurred_at: Utc::now(),
            data: serde_json::json!({ "amount": "not a number" }),
        };
        assert!(matches!(event.data_as::<Created>(), Err(HandleError::Poison(_))));
    }

    #[test]
    fn an_amqp_url_is_accepted_and_others_are_named_without_their_value() {
        assert!(rabbitmq_url(&env("amqp://guest:guest@127.0.0.1:5672/%2f")).is_ok());
        for bad in ["amqps://user:hunter2@host", "http://user:hunter2@host", "amqp://user:hunter2@host:notaport"] {
            let err = rabbitmq_url(&env(bad)).unwrap_err();
            assert_eq!(err.var, RABBITMQ_URL, "{bad}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        assert_eq!(rabbitmq_url(&Env::from_map(BTreeMap::new())).unwrap_err().problem, crate::config::Problem::Missing);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<_> = (0..4).map(|_| backoff.next().as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        backoff.reset();
        assert_eq!(backoff.next().as_millis(), 100);
    }
}

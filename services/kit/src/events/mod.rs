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
//!        queue `<exchange>.<deployment>.<purpose>` (quorum) ──▶ Consumer ──(one transaction)──▶ <schema>.inbox + handler's writes
//!                                  │ rejected (poison, or out of attempts)
//!                                  ▼
//!                 `freedumb.events.dlx` (direct) ──▶ queue `<queue>.dlq`
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
//! events it must see are published. Within one process this is done for
//! you: a relay publishes nothing until the consumers of its process have
//! bound their queues (see [`PendingBindings`]). Across processes, start
//! a new consumer before its events are published, or replay them.
//!
//! **Events never cross deployments.** Several deployments may share one
//! broker, and with it one exchange. Each consumer's queue is therefore
//! named for its deployment, `<exchange>.<deployment>.<purpose>` (see
//! [`Bus::queue`]), so every deployment receives every event it is bound to
//! rather than a share of them; and the relay stamps each envelope with its
//! deployment, so a consumer drops an event from any other deployment (its
//! queue is bound to the same exchange) without applying it, counts it as
//! `events_consumed_total{outcome="foreign"}` and logs a warning.
//!
//! The message body is the envelope [`Event`]:
//! `{"id", "type", "deployment", "occurred_at", "data"}`, where `type` is the
//! routing key (`transaction.created`) and `data` is the payload given to
//! [`record`]. `docs/events.md` lists the events and their payloads.

mod consumer;
mod outbox;
mod relay;
mod replay;

use std::sync::Arc;
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
use crate::service::Platform;

pub use consumer::{ATTEMPT_HEADER, Consumer, ConsumerConfig, EventHandler, HandleError, handler_fn};
pub(crate) use outbox::create_tables;
pub use outbox::record;
pub use relay::{Relay, RelayConfig};
pub use replay::{ReplayReport, SnapshotEvent, SnapshotStream, Subscription, binding_matches, replay};

/// The topic exchange every service publishes its events to.
pub const EXCHANGE: &str = "freedumb.events";
/// Where consumers' queues send the messages they reject; each consumer's
/// `<queue>.dlq` is bound to it with the queue's name as the routing key.
pub const DEAD_LETTER_EXCHANGE: &str = "freedumb.events.dlx";

/// The variable that holds the broker's URL.
pub const RABBITMQ_URL: &str = "RABBITMQ_URL";
/// The variable that names the exchange; [`EXCHANGE`] when unset.
pub const EVENTS_EXCHANGE: &str = "EVENTS_EXCHANGE";
/// The variable that names the deployment (see [`Deployment`]).
pub const DEPLOYMENT: &str = "DEPLOYMENT";

/// The name of a deployment: every process that works on one set of
/// databases (one `freedumb serve all`, or all the pods of one Kubernetes
/// namespace). Events carry it, consumers' queues are named with it, and a
/// consumer applies only the events of its own deployment.
///
/// 1 to 63 characters: lower-case ASCII letters, digits, `-` and `_`,
/// starting with a letter or digit. No dots, so that a queue name
/// `<exchange>.<deployment>.<purpose>` says where each part ends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Deployment(String);

impl Deployment {
    pub fn new(name: &str) -> Result<Self, InvalidDeployment> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
        if valid { Ok(Deployment(name.to_owned())) } else { Err(InvalidDeployment) }
    }

    /// Reads [`DEPLOYMENT`]. Unset, it is the name of the database in
    /// `database_url`: the processes of one deployment share their
    /// database, so they agree on the name without being told, and two
    /// deployments on one Postgres server cannot. Deployments whose
    /// databases have the same name on different servers, and share a
    /// broker, must set it (the rendered environments always do).
    pub fn from_env(env: &Env, database_url: &SecretString) -> Result<Self, ConfigError> {
        const EXPECTED: &str = "1 to 63 lower-case letters, digits, '-' and '_'";
        if let Some(name) = env.get(DEPLOYMENT) {
            return Deployment::new(name.trim()).map_err(|_| ConfigError::malformed(DEPLOYMENT, EXPECTED));
        }
        let database = crate::db::connect_options(database_url)
            .ok()
            .and_then(|options| options.get_database().map(str::to_owned))
            .ok_or_else(|| {
                ConfigError::missing(
                    DEPLOYMENT,
                    &format!("{EXPECTED} (when unset it is the database named in DATABASE_URL, which names none)"),
                )
            })?;
        Deployment::new(&database).map_err(|_| {
            ConfigError::malformed(
                DEPLOYMENT,
                &format!("{EXPECTED} (it is unset, and the name of the database in DATABASE_URL is not one)"),
            )
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a deployment name must be 1 to 63 lower-case letters, digits, '-' and '_'")]
pub struct InvalidDeployment;

/// A deployment's way to the events: the broker, the exchange, and the
/// deployment whose events its relays stamp and its consumers accept.
/// [`Relay`]s and [`Consumer`]s are made from one.
#[derive(Clone)]
pub struct Bus {
    url: SecretString,
    exchange: String,
    deployment: Deployment,
    pending: PendingBindings,
}

impl Bus {
    /// `url` is the broker's (see [`rabbitmq_url`]); it is never logged.
    /// The relays and consumers made from this bus (and its clones) are
    /// one process's: its relays wait for its consumers' bindings.
    pub fn new(url: SecretString, exchange: impl Into<String>, deployment: Deployment) -> Self {
        Bus { url, exchange: exchange.into(), deployment, pending: PendingBindings::default() }
    }

    /// Reads [`RABBITMQ_URL`] and [`EVENTS_EXCHANGE`], for the deployment
    /// the platform's configuration names, sharing the platform's
    /// [`PendingBindings`] with every other service of the process.
    pub fn from_env(env: &Env, platform: &Platform) -> Result<Self, ConfigError> {
        let exchange = env.get(EVENTS_EXCHANGE).map_or_else(|| EXCHANGE.to_owned(), |e| e.trim().to_owned());
        let mut bus = Bus::new(rabbitmq_url(env)?, exchange, platform.config.deployment.clone());
        bus.pending = platform.pending_bindings.clone();
        Ok(bus)
    }

    /// As [`Bus::from_env`], for a process that runs no service (`freedumb
    /// replay`): the deployment is read as services read it.
    pub fn from_env_alone(env: &Env, database_url: &SecretString) -> Result<Self, ConfigError> {
        let exchange = env.get(EVENTS_EXCHANGE).map_or_else(|| EXCHANGE.to_owned(), |e| e.trim().to_owned());
        Ok(Bus::new(rabbitmq_url(env)?, exchange, Deployment::from_env(env, database_url)?))
    }

    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    pub fn deployment(&self) -> &Deployment {
        &self.deployment
    }

    /// The queue of a consumer with this purpose (such as
    /// `budget.transactions`): `<exchange>.<deployment>.<purpose>`. Named
    /// after the exchange too, so that deployments (and tests) with
    /// exchanges of their own never share a queue either.
    pub fn queue(&self, purpose: &str) -> String {
        format!("{}.{}.{purpose}", self.exchange, self.deployment)
    }

    pub(crate) fn url(&self) -> &SecretString {
        &self.url
    }

    pub(crate) fn pending(&self) -> &PendingBindings {
        &self.pending
    }
}

/// The consumers of one process that have not bound their queues yet.
///
/// In one process (`serve all`) relays and consumers start together, and a
/// relay with rows waiting (a backfill, events recorded while the process
/// was down) would otherwise publish them before a new consumer's queue
/// exists, and the exchange would drop them. So a consumer counts itself
/// here when it becomes a task ([`Consumer::into_task`]) and counts itself
/// out once its queue is declared and bound, and a relay waits, up to its
/// `RelayConfig::bindings_wait`, until none is left before it publishes.
#[derive(Clone, Default)]
pub struct PendingBindings(Arc<tokio::sync::watch::Sender<usize>>);

impl PendingBindings {
    /// One more consumer to wait for; it is counted out by
    /// [`BindingTicket::bound`] (once, however often it is called).
    pub(crate) fn register(&self) -> Arc<BindingTicket> {
        self.0.send_modify(|pending| *pending += 1);
        Arc::new(BindingTicket { pending: self.clone(), bound: std::sync::atomic::AtomicBool::new(false) })
    }

    /// Waits until every registered consumer has bound its queue, or
    /// `timeout`; the consumers still unbound then (0 if none).
    pub(crate) async fn wait(&self, timeout: Duration) -> usize {
        let mut pending = self.0.subscribe();
        let _ = tokio::time::timeout(timeout, pending.wait_for(|n| *n == 0)).await;
        *pending.borrow()
    }

    pub(crate) fn unbound(&self) -> usize {
        *self.0.borrow()
    }
}

/// A consumer's place in [`PendingBindings`].
pub(crate) struct BindingTicket {
    pending: PendingBindings,
    bound: std::sync::atomic::AtomicBool,
}

impl BindingTicket {
    pub(crate) fn bound(&self) {
        if !self.bound.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.pending.0.send_modify(|pending| *pending = pending.saturating_sub(1));
        }
    }
}

/// An event as it travels: the message body published for each outbox row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// A UUIDv7, unique per recorded event: what consumers deduplicate on.
    pub id: Uuid,
    /// The routing key, such as `transaction.created`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The deployment whose relay published it. Consumers apply only their
    /// own deployment's events; an envelope without it (published before
    /// envelopes were stamped) counts as another deployment's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
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
            deployment: Some("prod".into()),
            occurred_at: Utc::now(),
            data: serde_json::json!({ "amount": "12.50" }),
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "transaction.created");
        assert_eq!(json["deployment"], "prod");
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
            deployment: None,
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
    fn deployment_names_are_short_lower_case_words_without_dots() {
        for good in ["local", "prod", "test-infra", "freedumb_test_0123abcd", "0"] {
            assert!(Deployment::new(good).is_ok(), "{good}");
        }
        for bad in ["", "Prod", "a.b", "-x", "_x", "a b", &"a".repeat(64), "tést"] {
            assert!(Deployment::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_deployment_is_the_database_name_unless_it_is_set() {
        let url = SecretString::from("postgres://u:p@db:5432/freedumb_staging?sslmode=require");
        let unset = Env::from_map(BTreeMap::new());
        assert_eq!(Deployment::from_env(&unset, &url).unwrap().as_str(), "freedumb_staging");
        let set = Env::from_map(BTreeMap::from([(DEPLOYMENT.to_owned(), "staging".to_owned())]));
        assert_eq!(Deployment::from_env(&set, &url).unwrap().as_str(), "staging");
        let bad = Env::from_map(BTreeMap::from([(DEPLOYMENT.to_owned(), "Staging.EU".to_owned())]));
        assert_eq!(Deployment::from_env(&bad, &url).unwrap_err().var, DEPLOYMENT);
        // A database name that is no deployment name asks for the variable.
        let odd = SecretString::from("postgres://u:p@db:5432/Freedumb.Prod");
        let err = Deployment::from_env(&unset, &odd).unwrap_err();
        assert_eq!(err.var, DEPLOYMENT);
        assert!(err.to_string().contains("DATABASE_URL"), "{err}");
    }

    #[test]
    fn queues_are_named_for_the_exchange_the_deployment_and_the_purpose() {
        let bus = Bus::new(SecretString::from("amqp://x"), EXCHANGE, Deployment::new("local").unwrap());
        assert_eq!(bus.queue("budget.transactions"), "freedumb.events.local.budget.transactions");
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

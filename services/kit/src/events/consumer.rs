//! Consumers: a durable queue bound to the events exchange, each event
//! handled once per consumer, failures retried and then dead-lettered.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};
use sqlx::PgConnection;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::{
    Backoff, BindingTicket, Bus, DEAD_LETTER_EXCHANGE, Event, Outage, PRUNE_EVERY, pause, prune_in_batches, within,
};
use crate::db::{Db, check_schema};
use crate::service::BackgroundTask;

/// Why a handler could not handle an event.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The event can never be handled (its data does not fit, it refers to
    /// something that cannot exist): it goes to the dead-letter queue at
    /// once.
    #[error("poison event: {0:#}")]
    Poison(anyhow::Error),
    /// It may work later (a lock timeout, the database restarting): it is
    /// retried after a growing delay, and dead-lettered after
    /// `max_attempts`. This is what `?` gives for `sqlx` and `anyhow` errors.
    #[error("transient failure: {0:#}")]
    Transient(anyhow::Error),
}

impl HandleError {
    pub fn poison(err: impl Into<anyhow::Error>) -> Self {
        HandleError::Poison(err.into())
    }

    pub fn transient(err: impl Into<anyhow::Error>) -> Self {
        HandleError::Transient(err.into())
    }
}

impl From<sqlx::Error> for HandleError {
    fn from(err: sqlx::Error) -> Self {
        HandleError::Transient(err.into())
    }
}

impl From<anyhow::Error> for HandleError {
    fn from(err: anyhow::Error) -> Self {
        HandleError::Transient(err)
    }
}

/// What a service does with an event.
///
/// `conn` is inside the transaction that also records the event in the
/// inbox: write with it and the writes commit if and only if the event
/// counts as handled. Do not commit or roll back yourself, and do not call
/// other services: an event may be delivered again until the transaction
/// commits. Events of kinds the handler does not know should be ignored
/// (`Ok`), so publishers can add kinds freely.
///
/// ```no_run
/// use freedumb_kit::events::{Event, EventHandler, HandleError};
/// use futures::future::BoxFuture;
/// use sqlx::PgConnection;
///
/// struct Spending;
///
/// impl EventHandler for Spending {
///     fn handle<'a>(&'a self, conn: &'a mut PgConnection, event: &'a Event) -> BoxFuture<'a, Result<(), HandleError>> {
///         Box::pin(async move {
///             #[derive(serde::Deserialize)]
///             struct Created { category_id: uuid::Uuid, amount_minor: i64 }
///             if event.kind != "transaction.created" {
///                 return Ok(());
///             }
///             let created: Created = event.data_as()?;
///             sqlx::query("UPDATE budget.spending SET spent_minor = spent_minor + $2 WHERE category_id = $1")
///                 .bind(created.category_id)
///                 .bind(created.amount_minor)
///                 .execute(conn)
///                 .await?;
///             Ok(())
///         })
///     }
/// }
/// ```
pub trait EventHandler: Send + Sync + 'static {
    fn handle<'a>(&'a self, conn: &'a mut PgConnection, event: &'a Event) -> BoxFuture<'a, Result<(), HandleError>>;

    /// Several events in one transaction, in order of arrival, when the
    /// consumer's [`ConsumerConfig::batch_size`] is above 1. The default
    /// handles them one by one; a handler overrides it where set-wise SQL
    /// pays (one `INSERT ... SELECT FROM unnest(...)` for the batch).
    ///
    /// The result is the batch's: on any error the whole transaction rolls
    /// back and the consumer handles the same events again one at a time
    /// with [`EventHandler::handle`], so a poison event is dead-lettered
    /// alone and the others still land. It must therefore give the same
    /// writes as handling them one by one, in this order.
    fn handle_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [Event],
    ) -> BoxFuture<'a, Result<(), HandleError>> {
        Box::pin(async move {
            for event in events {
                self.handle(conn, event).await?;
            }
            Ok(())
        })
    }
}

/// A handler from a function or closure that returns a boxed future, for
/// small handlers and tests:
/// `handler_fn(|conn, event| Box::pin(async move { ... }))`.
pub fn handler_fn<F>(handle: F) -> impl EventHandler
where
    F: for<'a> Fn(&'a mut PgConnection, &'a Event) -> BoxFuture<'a, Result<(), HandleError>> + Send + Sync + 'static,
{
    struct FnHandler<F>(F);
    impl<F> EventHandler for FnHandler<F>
    where
        F: for<'a> Fn(&'a mut PgConnection, &'a Event) -> BoxFuture<'a, Result<(), HandleError>>
            + Send
            + Sync
            + 'static,
    {
        fn handle<'a>(
            &'a self,
            conn: &'a mut PgConnection,
            event: &'a Event,
        ) -> BoxFuture<'a, Result<(), HandleError>> {
            (self.0)(conn, event)
        }
    }
    FnHandler(handle)
}

/// How a consumer works; [`Default`] is right for production, tests shorten
/// the delays and use a dead-letter exchange of their own. (The exchange it
/// is bound to is its [`Bus`]'s.)
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The direct exchange rejected messages go to, declared if missing.
    pub dead_letter_exchange: String,
    /// Deliveries the broker sends ahead of the one being handled. They are
    /// handled one at a time, in order of arrival.
    pub prefetch: u16,
    /// Attempts at an event that keeps failing transiently before it is
    /// dead-lettered.
    pub max_attempts: u32,
    /// The delay before the second attempt; it doubles with each attempt up
    /// to `max_retry_delay`. The consumer waits it out before taking the next
    /// delivery, so a failing dependency is not hammered.
    pub retry_delay: Duration,
    pub max_retry_delay: Duration,
    /// How long a handler may take before its attempt counts as failed.
    pub handler_timeout: Duration,
    /// The longest pause between reconnection attempts while RabbitMQ or
    /// Postgres is down.
    pub max_backoff: Duration,
    /// The most deliveries handled in one transaction
    /// ([`EventHandler::handle_batch`]): those that have arrived by the
    /// time the first is taken, never waiting for more. 1 (the default)
    /// handles each alone. The prefetch is raised to at least this.
    pub batch_size: u16,
    /// Inbox rows older than this are deleted. An event redelivered after
    /// that (replayed from the dead-letter queue by hand, say) is handled
    /// again, which is what a replay wants.
    pub inbox_retention: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            dead_letter_exchange: DEAD_LETTER_EXCHANGE.to_owned(),
            prefetch: 16,
            max_attempts: 5,
            retry_delay: Duration::from_secs(1),
            max_retry_delay: Duration::from_secs(30),
            handler_timeout: Duration::from_secs(30),
            max_backoff: Duration::from_secs(10),
            batch_size: 1,
            inbox_retention: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// The header that numbers the attempt a delivery is; absent on the first.
pub const ATTEMPT_HEADER: &str = "freedumb-attempt";

/// Consumes its deployment's queue for `purpose` (bound to the bus's
/// exchange with `bindings`, such as `transaction.*`) into `handler`, until
/// shut down.
///
/// The queue, `<exchange>.<deployment>.<purpose>` ([`Bus::queue`]), is a
/// durable quorum queue whose rejected messages go to the dead-letter
/// exchange and on to `<queue>.dlq`. The queue name is also the consumer's
/// name in `<schema>.inbox`, so name the purpose for what the handler does
/// (`budget.transactions`) and never reuse it for another handler. Removing
/// a binding from `bindings` does not unbind it from an existing queue: do
/// that by hand.
///
/// An event stamped with another deployment (or with none) is acked and
/// dropped before anything else: it is counted as
/// `events_consumed_total{outcome="foreign"}` and logged as a warning (the
/// first one, then at most once a minute with a count), never handled.
///
/// For each delivery, in one Postgres transaction: insert
/// `(event id, queue)` into the inbox (already there: a duplicate, acked and
/// skipped), run the handler, commit; then ack. A malformed envelope or a
/// [`HandleError::Poison`] is rejected without requeueing, so it lands in the
/// dead-letter queue; a [`HandleError::Transient`] (or a panic, or a
/// timeout) is retried: the consumer waits, republishes the message to the
/// tail of its queue with [`ATTEMPT_HEADER`] counted up, and acks the
/// original; after `max_attempts` it is dead-lettered. Counting attempts in
/// a header rather than in the broker's redelivery count means a consumer
/// restart (which returns its prefetched messages) costs no message an
/// attempt.
///
/// When Postgres is down the consumer holds the delivery and waits for it,
/// without spending an attempt: the message is not at fault.
#[derive(Clone)]
pub struct Consumer {
    db: Db,
    schema: String,
    bus: Bus,
    queue: String,
    bindings: Vec<String>,
    handler: Arc<dyn EventHandler>,
    config: Arc<ConsumerConfig>,
    /// Set by [`Consumer::into_task`]: the relays of the process wait for
    /// this consumer's queue to be bound.
    ticket: Option<Arc<BindingTicket>>,
}

/// How a batch went.
enum Batch {
    /// Committed: the ids that were new (the rest were duplicates).
    Handled(std::collections::HashSet<Uuid>),
    /// Shut down while waiting for Postgres.
    Stopped,
    /// Rolled back, to be handled one at a time.
    Failed(anyhow::Error),
}

enum Handled {
    Processed,
    Duplicate,
    Failed(HandleError),
    /// Shut down while waiting for Postgres.
    Stopped,
}

impl Consumer {
    pub fn new(db: Db, schema: &str, bus: &Bus, purpose: &str, bindings: &[&str], handler: impl EventHandler) -> Self {
        Consumer {
            db,
            schema: schema.to_owned(),
            bus: bus.clone(),
            queue: bus.queue(purpose),
            bindings: bindings.iter().map(|b| (*b).to_owned()).collect(),
            handler: Arc::new(handler),
            config: Arc::new(ConsumerConfig::default()),
            ticket: None,
        }
    }

    pub fn with_config(mut self, config: ConsumerConfig) -> Self {
        self.config = Arc::new(config);
        self
    }

    /// The queue it consumes: `<exchange>.<deployment>.<purpose>`.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The consumer as a background task named `event-consumer:<queue>`.
    /// From now on the relays of its bus wait for its queue to be bound
    /// before they publish (see [`super::PendingBindings`]).
    pub fn into_task(mut self) -> BackgroundTask {
        self.ticket = Some(self.bus.pending().register());
        BackgroundTask::new(format!("event-consumer:{}", self.queue), move |shutdown| {
            let consumer = self.clone();
            async move { consumer.run(shutdown).await }
        })
    }

    /// Consumes until `shutdown` is cancelled, reconnecting as needed.
    /// Outages are waited out; an error means a bad configuration (schema,
    /// URL, credentials, permissions, a queue declared with other
    /// arguments).
    pub async fn run(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        check_schema(&self.schema)?;
        super::parse_url(self.bus.url())?;
        anyhow::ensure!(!self.queue.is_empty() && self.queue.len() <= 200, "a queue name must be 1 to 200 bytes");
        anyhow::ensure!(self.config.max_attempts >= 1, "max_attempts must be at least 1");
        let mut broker = Outage::new("rabbitmq", "events wait in the queue");
        let mut database = Outage::new("postgres", "events wait in the queue");
        let mut backoff = Backoff::new(Duration::from_millis(200), self.config.max_backoff);
        let mut next_prune = Instant::now();
        let mut foreign = Foreign::default();
        while !shutdown.is_cancelled() {
            let mut session = match Session::open(self).await {
                Ok(session) => session,
                Err(err) if super::is_refusal(&err) => {
                    return Err(err.context("rabbitmq refused the event consumer"));
                }
                Err(err) => {
                    broker.failed(&err);
                    if !pause(backoff.next(), &shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            broker.recovered();
            backoff.reset();
            if let Some(ticket) = &self.ticket {
                ticket.bound();
            }
            let result = self.consume(&mut session, &shutdown, &mut database, &mut foreign, &mut next_prune).await;
            // Closing returns any prefetched, unhandled messages to the queue.
            super::close(session.connection).await;
            match result {
                Ok(()) => break,
                Err(err) => {
                    broker.failed(&err);
                    if !pause(backoff.next(), &shutdown).await {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Handles deliveries until shutdown (`Ok`) or a broker failure.
    async fn consume(
        &self,
        session: &mut Session,
        shutdown: &CancellationToken,
        database: &mut Outage,
        foreign: &mut Foreign,
        next_prune: &mut Instant,
    ) -> anyhow::Result<()> {
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep_until(*next_prune) => {
                    *next_prune = Instant::now() + PRUNE_EVERY;
                    if let Err(err) = self.prune().await {
                        tracing::warn!(error = %format!("{err:#}"), "failed to prune the inbox");
                    }
                    continue;
                }
                next = session.deliveries.next() => next,
            };
            match next {
                Some(Ok(delivery)) if self.config.batch_size > 1 => {
                    let (batch, failure) = self.gather(delivery, &mut session.deliveries);
                    self.process_batch(&session.channel, batch, shutdown, database, foreign).await?;
                    if let Some(err) = failure {
                        return Err(anyhow::Error::new(err).context("the consumer's connection failed"));
                    }
                }
                Some(Ok(delivery)) => self.process(&session.channel, delivery, shutdown, database, foreign).await?,
                Some(Err(err)) => return Err(anyhow::Error::new(err).context("the consumer's connection failed")),
                None => anyhow::bail!("the broker cancelled the consumer"),
            }
        }
    }

    /// The first delivery and those already prefetched behind it, up to
    /// `batch_size`: a batch never waits for a delivery that has not come.
    /// A failure of the stream met while gathering comes back beside the
    /// batch, to be raised once the batch is settled.
    fn gather(&self, first: Delivery, deliveries: &mut lapin::Consumer) -> (Vec<Delivery>, Option<lapin::Error>) {
        let mut batch = vec![first];
        while batch.len() < usize::from(self.config.batch_size) {
            match deliveries.next().now_or_never() {
                Some(Some(Ok(delivery))) => batch.push(delivery),
                Some(Some(Err(err))) => return (batch, Some(err)),
                // Nothing ready yet, or the stream ended: the next `next()`
                // in `consume` sees the end.
                Some(None) | None => break,
            }
        }
        (batch, None)
    }

    /// Handles one delivery and settles it. Errors are the broker's.
    async fn process(
        &self,
        channel: &Channel,
        delivery: Delivery,
        shutdown: &CancellationToken,
        database: &mut Outage,
        foreign: &mut Foreign,
    ) -> anyhow::Result<()> {
        let Some((delivery, event)) = self.screen(delivery, foreign).await? else {
            return Ok(());
        };
        self.handle_and_settle(channel, delivery, &event, shutdown, database).await
    }

    /// Handles deliveries in one transaction ([`EventHandler::handle_batch`])
    /// and settles them. If the batch fails in any way it is rolled back and
    /// each event is handled alone, so one bad event costs only itself.
    async fn process_batch(
        &self,
        channel: &Channel,
        batch: Vec<Delivery>,
        shutdown: &CancellationToken,
        database: &mut Outage,
        foreign: &mut Foreign,
    ) -> anyhow::Result<()> {
        let mut ready = Vec::with_capacity(batch.len());
        for delivery in batch {
            if let Some(screened) = self.screen(delivery, foreign).await? {
                ready.push(screened);
            }
        }
        if ready.len() <= 1 {
            for (delivery, event) in ready {
                self.handle_and_settle(channel, delivery, &event, shutdown, database).await?;
            }
            return Ok(());
        }
        let span = tracing::info_span!("events", count = ready.len());
        let outcome = self.handle_many(&ready, shutdown, database).instrument(span).await;
        let metrics = self.db.metrics();
        match outcome {
            Batch::Handled(fresh) => {
                let mut counted = std::collections::HashSet::new();
                for (delivery, event) in &ready {
                    within("acknowledge an event", delivery.acker.ack(BasicAckOptions::default())).await?;
                    let first = fresh.contains(&event.id) && counted.insert(event.id);
                    metrics.event_consumed(&self.queue, if first { "processed" } else { "duplicate" });
                }
            }
            Batch::Stopped => {
                for (delivery, _) in &ready {
                    let requeue = BasicNackOptions { requeue: true, ..BasicNackOptions::default() };
                    within("return an event", delivery.acker.nack(requeue)).await?;
                }
            }
            Batch::Failed(err) => {
                tracing::info!(
                    error = %format!("{err:#}"),
                    count = ready.len(),
                    "a batch of events failed; handling them one at a time",
                );
                for (delivery, event) in ready {
                    self.handle_and_settle(channel, delivery, &event, shutdown, database).await?;
                }
            }
        }
        Ok(())
    }

    /// Inbox rows for the whole batch, the handler on the events not seen
    /// before, and one commit.
    async fn handle_many(
        &self,
        ready: &[(Delivery, Event)],
        shutdown: &CancellationToken,
        database: &mut Outage,
    ) -> Batch {
        let Some(mut tx) = self.begin_waiting(shutdown, database).await else {
            return Batch::Stopped;
        };
        let ids: Vec<Uuid> = ready.iter().map(|(_, event)| event.id).collect();
        let schema = &self.schema;
        let inserted: Result<Vec<Uuid>, sqlx::Error> = sqlx::query_scalar(&format!(
            "INSERT INTO {schema}.inbox (event_id, consumer) SELECT DISTINCT id, $2 FROM unnest($1::uuid[]) AS id \
             ON CONFLICT DO NOTHING RETURNING event_id"
        ))
        .bind(&ids)
        .bind(&self.queue)
        .fetch_all(tx.conn())
        .await;
        let fresh: std::collections::HashSet<Uuid> = match inserted {
            Ok(fresh) => fresh.into_iter().collect(),
            Err(err) => return Batch::Failed(err.into()),
        };
        // Each event once, in order of arrival: a duplicate within the
        // batch (a republished retry beside its original) counts once.
        let mut seen = std::collections::HashSet::new();
        let events: Vec<Event> = ready
            .iter()
            .map(|(_, event)| event)
            .filter(|event| fresh.contains(&event.id) && seen.insert(event.id))
            .cloned()
            .collect();
        if !events.is_empty() {
            let handling = AssertUnwindSafe(self.handler.handle_batch(tx.conn(), &events)).catch_unwind();
            match tokio::time::timeout(self.config.handler_timeout, handling).await {
                Err(_) => return Batch::Failed(anyhow::anyhow!("the batch handler timed out")),
                Ok(Err(_panic)) => return Batch::Failed(anyhow::anyhow!("the batch handler panicked")),
                Ok(Ok(Err(err))) => return Batch::Failed(err.into()),
                Ok(Ok(Ok(()))) => {}
            }
        }
        match tx.commit().await {
            Ok(()) => Batch::Handled(fresh),
            Err(err) => Batch::Failed(anyhow::Error::new(err).context("failed to commit the batch's transaction")),
        }
    }

    /// A transaction, waiting out a Postgres outage; `None` on shutdown.
    async fn begin_waiting(&self, shutdown: &CancellationToken, database: &mut Outage) -> Option<crate::db::Tx> {
        let mut backoff = Backoff::new(Duration::from_millis(200), self.config.max_backoff);
        loop {
            match self.db.begin().await {
                Ok(tx) => {
                    database.recovered();
                    return Some(tx);
                }
                Err(err) => {
                    database.failed(&anyhow::Error::new(err).context("failed to begin a transaction"));
                    if !pause(backoff.next(), shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Settles what no handler should see: a message that is no envelope,
    /// another deployment's event, an event past its last attempt. Returns
    /// the others with their envelope.
    async fn screen(&self, delivery: Delivery, foreign: &mut Foreign) -> anyhow::Result<Option<(Delivery, Event)>> {
        let metrics = self.db.metrics();
        let event: Event = match serde_json::from_slice(&delivery.data) {
            Ok(event) => event,
            Err(err) => {
                tracing::warn!(
                    message_id = delivery.properties.message_id().as_ref().map(|id| id.as_str()).unwrap_or(""),
                    error = %err,
                    "a message is not an event envelope; dead-lettering it",
                );
                self.dead_letter(&delivery).await?;
                return Ok(None);
            }
        };
        if event.deployment.as_deref() != Some(self.bus.deployment().as_str()) {
            // Another deployment's event, here because both bind queues to
            // one exchange. Applying it would mix two deployments' data;
            // keeping it (requeue, dead-letter) would only pile it up.
            foreign.dropped(&event, self.bus.deployment().as_str(), &self.queue);
            within("acknowledge a foreign event", delivery.acker.ack(BasicAckOptions::default())).await?;
            metrics.event_consumed(&self.queue, "foreign");
            return Ok(None);
        }
        let attempt = attempt_of(&delivery);
        if attempt > self.config.max_attempts {
            let span = tracing::info_span!("event", event_id = %event.id, event_type = %event.kind, attempt);
            span.in_scope(|| tracing::error!("an event is past its last attempt; dead-lettering it"));
            self.dead_letter(&delivery).await?;
            return Ok(None);
        }
        Ok(Some((delivery, event)))
    }

    /// Handles one screened event alone and settles its delivery.
    async fn handle_and_settle(
        &self,
        channel: &Channel,
        delivery: Delivery,
        event: &Event,
        shutdown: &CancellationToken,
        database: &mut Outage,
    ) -> anyhow::Result<()> {
        let metrics = self.db.metrics();
        let attempt = attempt_of(&delivery);
        let span = tracing::info_span!("event", event_id = %event.id, event_type = %event.kind, attempt);
        async {
            match self.handle(event, shutdown, database).await {
                Handled::Processed => {
                    within("acknowledge an event", delivery.acker.ack(BasicAckOptions::default())).await?;
                    metrics.event_consumed(&self.queue, "processed");
                }
                Handled::Duplicate => {
                    tracing::debug!("an event was handled before; skipping it");
                    within("acknowledge an event", delivery.acker.ack(BasicAckOptions::default())).await?;
                    metrics.event_consumed(&self.queue, "duplicate");
                }
                Handled::Stopped => {
                    let requeue = BasicNackOptions { requeue: true, ..BasicNackOptions::default() };
                    within("return an event", delivery.acker.nack(requeue)).await?;
                }
                Handled::Failed(HandleError::Poison(err)) => {
                    tracing::warn!(error = %format!("{err:#}"), "an event cannot be handled; dead-lettering it");
                    self.dead_letter(&delivery).await?;
                }
                Handled::Failed(HandleError::Transient(err)) if attempt >= self.config.max_attempts => {
                    tracing::error!(
                        error = %format!("{err:#}"),
                        "an event failed on its last attempt; dead-lettering it",
                    );
                    self.dead_letter(&delivery).await?;
                }
                Handled::Failed(HandleError::Transient(err)) => {
                    let delay = self.retry_delay(attempt);
                    tracing::warn!(
                        error = %format!("{err:#}"),
                        retry_in_ms = delay.as_millis() as u64,
                        "an event failed; it will be retried",
                    );
                    if !pause(delay, shutdown).await {
                        let requeue = BasicNackOptions { requeue: true, ..BasicNackOptions::default() };
                        return within("return an event", delivery.acker.nack(requeue)).await.map(drop);
                    }
                    self.retry(channel, &delivery, attempt + 1).await?;
                    metrics.event_consumed(&self.queue, "retried");
                }
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Inbox row, handler and commit in one transaction.
    async fn handle(&self, event: &Event, shutdown: &CancellationToken, database: &mut Outage) -> Handled {
        let Some(mut tx) = self.begin_waiting(shutdown, database).await else {
            return Handled::Stopped;
        };
        let schema = &self.schema;
        let inserted = sqlx::query(&format!(
            "INSERT INTO {schema}.inbox (event_id, consumer) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        ))
        .bind(event.id)
        .bind(&self.queue)
        .execute(tx.conn())
        .await;
        match inserted {
            Err(err) => return Handled::Failed(HandleError::Transient(err.into())),
            // Another delivery of this event committed first. (One still in
            // flight elsewhere makes this insert wait for its outcome.)
            Ok(result) if result.rows_affected() == 0 => return Handled::Duplicate,
            Ok(_) => {}
        }
        let handling = AssertUnwindSafe(self.handler.handle(tx.conn(), event)).catch_unwind();
        match tokio::time::timeout(self.config.handler_timeout, handling).await {
            Err(_) => Handled::Failed(HandleError::Transient(anyhow::anyhow!("the handler timed out"))),
            Ok(Err(_panic)) => Handled::Failed(HandleError::Transient(anyhow::anyhow!("the handler panicked"))),
            Ok(Ok(Err(err))) => Handled::Failed(err),
            Ok(Ok(Ok(()))) => match tx.commit().await {
                Ok(()) => Handled::Processed,
                Err(err) => Handled::Failed(HandleError::Transient(
                    anyhow::Error::new(err).context("failed to commit the handler's transaction"),
                )),
            },
        }
    }

    fn retry_delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(16);
        (self.config.retry_delay * 2u32.pow(doublings)).min(self.config.max_retry_delay)
    }

    /// Puts a copy of the message at the tail of the queue with the next
    /// attempt number, then acks the original. A failure in between leaves
    /// both, which the inbox absorbs.
    async fn retry(&self, channel: &Channel, delivery: &Delivery, next_attempt: u32) -> anyhow::Result<()> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongUInt(next_attempt));
        let properties = delivery.properties.clone().with_headers(headers);
        let confirm = within(
            "republish an event for a retry",
            channel.basic_publish(
                ShortString::from(""),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                &delivery.data,
                properties,
            ),
        )
        .await?;
        let confirmation = within("confirm a retried event", confirm).await?;
        if !confirmation.is_ack() {
            let requeue = BasicNackOptions { requeue: true, ..BasicNackOptions::default() };
            within("return an event", delivery.acker.nack(requeue)).await?;
            anyhow::bail!("the broker refused a retried event");
        }
        within("acknowledge a retried event", delivery.acker.ack(BasicAckOptions::default())).await?;
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery) -> anyhow::Result<()> {
        within("dead-letter an event", delivery.acker.reject(BasicRejectOptions { requeue: false })).await?;
        self.db.metrics().event_consumed(&self.queue, "dead_lettered");
        Ok(())
    }

    async fn prune(&self) -> anyhow::Result<()> {
        let schema = &self.schema;
        let sql = format!(
            "DELETE FROM {schema}.inbox WHERE (event_id, consumer) IN (SELECT event_id, consumer FROM {schema}.inbox \
             WHERE consumer = $1 AND processed_at < now() - make_interval(secs => $2) LIMIT $3)"
        );
        prune_in_batches(|batch| {
            sqlx::query(&sql)
                .bind(&self.queue)
                .bind(self.config.inbox_retention.as_secs_f64())
                .bind(batch)
                .execute(&self.db.pool)
        })
        .await
    }
}

/// How often, at most, dropping other deployments' events is logged after
/// the first: a deployment sharing the exchange sends a steady stream.
const FOREIGN_LOG_EVERY: Duration = Duration::from_secs(60);

/// The warnings about foreign events: the first at once, then one a minute
/// at most, with how many were dropped since the last.
#[derive(Default)]
struct Foreign {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl Foreign {
    fn dropped(&mut self, event: &Event, ours: &str, queue: &str) {
        self.unlogged += 1;
        if self.last_logged.is_some_and(|at| at.elapsed() < FOREIGN_LOG_EVERY) {
            return;
        }
        tracing::warn!(
            event_id = %event.id,
            event_type = %event.kind,
            from_deployment = event.deployment.as_deref().unwrap_or("(none)"),
            deployment = ours,
            queue,
            dropped = self.unlogged,
            "dropped events of another deployment without applying them; deployments that share a broker \
             should each have their own EVENTS_EXCHANGE (or vhost), so they stop receiving each other's",
        );
        self.last_logged = Some(Instant::now());
        self.unlogged = 0;
    }
}

/// The attempt a delivery is, from [`ATTEMPT_HEADER`]; 1 without it.
fn attempt_of(delivery: &Delivery) -> u32 {
    let value = delivery.properties.headers().as_ref().and_then(|headers| headers.inner().get(ATTEMPT_HEADER));
    let attempt = match value {
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::ShortUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortInt(n)) => i64::from(*n),
        _ => 1,
    };
    u32::try_from(attempt.max(1)).unwrap_or(u32::MAX)
}

/// A connection, its channel (confirm mode, for retries) and the consumer.
struct Session {
    connection: Connection,
    channel: Channel,
    deliveries: lapin::Consumer,
}

impl Session {
    /// Connects and declares the topology; every declaration is idempotent,
    /// so each reconnection repeats them all.
    async fn open(consumer: &Consumer) -> anyhow::Result<Self> {
        let config = &consumer.config;
        let queue = consumer.queue.as_str();
        let dead_letters = format!("{queue}.dlq");
        let connection = super::connect(consumer.bus.url(), format!("freedumb event consumer ({queue})")).await?;
        let channel = within("open a channel", connection.create_channel()).await?;
        let durable = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        within(
            "declare the events exchange",
            channel.exchange_declare(
                consumer.bus.exchange().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            ),
        )
        .await?;
        within(
            "declare the dead-letter exchange",
            channel.exchange_declare(
                config.dead_letter_exchange.as_str().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            ),
        )
        .await?;
        // Quorum queues: replicated when the broker is a cluster, and the
        // only kind that dead-letters at least once (below).
        let quorum = |arguments: &mut FieldTable| {
            arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        };
        let durable_queue = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        let mut arguments = FieldTable::default();
        quorum(&mut arguments);
        within(
            "declare the dead-letter queue",
            channel.queue_declare(dead_letters.as_str().into(), durable_queue, arguments),
        )
        .await?;
        within(
            "bind the dead-letter queue",
            channel.queue_bind(
                dead_letters.as_str().into(),
                config.dead_letter_exchange.as_str().into(),
                queue.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;
        // These arguments are fixed for the life of the queue (RabbitMQ
        // refuses a redeclaration that differs), so nothing configurable
        // goes in them: attempts are counted by the consumer.
        let mut arguments = FieldTable::default();
        quorum(&mut arguments);
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(config.dead_letter_exchange.as_str().into()),
        );
        arguments.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(queue.into()));
        // The rejected message leaves this queue only once the dead-letter
        // queue has it; this strategy requires the overflow behaviour.
        arguments.insert("x-dead-letter-strategy".into(), AMQPValue::LongString("at-least-once".into()));
        arguments.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
        within("declare the queue", channel.queue_declare(queue.into(), durable_queue, arguments)).await?;
        for binding in &consumer.bindings {
            within(
                "bind the queue",
                channel.queue_bind(
                    queue.into(),
                    consumer.bus.exchange().into(),
                    binding.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await?;
        }
        // Two batches' worth when batching, so the next batch is already
        // here while one is handled, instead of the broker waiting for acks.
        let prefetch = config.prefetch.max(config.batch_size.saturating_mul(2)).max(1);
        within("set the prefetch", channel.basic_qos(prefetch, BasicQosOptions::default())).await?;
        within("enable publisher confirms", channel.confirm_select(ConfirmSelectOptions::default())).await?;
        let tag = format!("{queue}-{}", Uuid::new_v4().simple());
        let deliveries = within(
            "start consuming",
            channel.basic_consume(queue.into(), tag.into(), BasicConsumeOptions::default(), FieldTable::default()),
        )
        .await?;
        Ok(Session { connection, channel, deliveries })
    }
}

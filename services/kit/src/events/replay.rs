//! Replays: a consumer that starts after its events were published (a new
//! service over existing data, a projection rebuilt on an empty schema)
//! catches up from its producers' **snapshots**, not from old messages.
//!
//! Every producer can describe its current state as events
//! ([`crate::Service::snapshot`]): one `transaction.created` per
//! transaction, one `category.created` per category, and so on, each in the
//! payload of the live event, so a consumer handles them with the code it
//! handles live events with. Payloads carry whole states, so applying a
//! snapshot over a projection that already holds some of it changes
//! nothing that is current. `freedumb replay --to SERVICE` publishes the
//! snapshot events that match a consumer's bindings
//! ([`crate::Service::subscriptions`]) straight to that consumer's queue,
//! through the default exchange: no other consumer sees them.
//!
//! Why snapshots rather than keeping published outbox rows: the outbox is
//! pruned after its retention (`RelayConfig::retention`), and a history of
//! every change replays states that no longer exist; the snapshot is the
//! current state, of any age, in one pass.

use std::collections::BTreeMap;

use anyhow::Context;
use futures::StreamExt;
use futures::stream::BoxStream;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use uuid::Uuid;

use super::{Bus, Event, within};
use crate::Service;
use crate::db::Db;

/// A queue a service consumes: its purpose (the queue is
/// `<exchange>.<deployment>.<purpose>`, [`super::Bus::queue`]) and the
/// routing keys it is bound to. A service declares its subscriptions so
/// that a replay knows where its events go; its consumers are built from
/// the same constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    pub purpose: &'static str,
    pub bindings: &'static [&'static str],
}

impl Subscription {
    /// Whether an event with routing key `kind` reaches this queue.
    pub fn wants(&self, kind: &str) -> bool {
        self.bindings.iter().any(|binding| binding_matches(binding, kind))
    }
}

/// One event of a snapshot: the current state of one thing, as the payload
/// of the live event of `kind` (version field included).
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotEvent {
    pub kind: &'static str,
    pub data: serde_json::Value,
}

impl SnapshotEvent {
    pub fn new(kind: &'static str, data: &impl serde::Serialize) -> anyhow::Result<Self> {
        Ok(SnapshotEvent { kind, data: serde_json::to_value(data)? })
    }
}

/// A producer's snapshot, read in one pass over its own schema.
pub type SnapshotStream<'a> = BoxStream<'a, anyhow::Result<SnapshotEvent>>;

/// Publishes at most this many events before awaiting their confirms.
const CONFIRM_WINDOW: usize = 1_000;

/// What a replay sent: per queue, per event type, how many.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub sent: BTreeMap<String, BTreeMap<&'static str, u64>>,
}

impl ReplayReport {
    pub fn total(&self) -> u64 {
        self.sent.values().flat_map(BTreeMap::values).sum()
    }
}

/// Publishes every `producer`'s snapshot events that `target` subscribes
/// to, straight to `target`'s queues on `bus` (the default exchange, routing
/// key = queue name), persistent and confirmed: no other consumer sees them.
///
/// Each envelope is a new event (a fresh id, so the consumer's inbox lets
/// it through), stamped with `bus`'s deployment and, as `occurred_at`, the
/// moment its producer's snapshot began: a live change recorded after that
/// is newer, and a consumer that keeps the newest state per row (every
/// whole-state projection does) keeps it whichever arrives first. A change
/// in flight while the snapshot starts can be older than the snapshot yet
/// commit after it; run the replay again after a busy period to be sure.
///
/// The target's queues must exist (its consumers declare them when they
/// first start): publishing to a missing queue would lose the events, so
/// a missing one is an error before anything is sent.
pub async fn replay(
    db: &Db,
    bus: &Bus,
    producers: &[&dyn Service],
    target: &dyn Service,
) -> anyhow::Result<ReplayReport> {
    let subscriptions = target.subscriptions();
    anyhow::ensure!(
        !subscriptions.is_empty(),
        "the {} service consumes no events, so there is nothing to replay to it",
        target.name()
    );
    let connection = super::connect(bus.url(), format!("freedumb replay ({})", target.name())).await?;
    let channel = within("open a channel", connection.create_channel()).await?;
    for subscription in subscriptions {
        let queue = bus.queue(subscription.purpose);
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        within("find the queue", channel.queue_declare(queue.as_str().into(), passive, FieldTable::default()))
            .await
            .with_context(|| {
                format!(
                    "the queue {queue} does not exist: start the {} service once (its consumers declare their \
                     queues), then replay",
                    target.name()
                )
            })?;
    }
    within("enable publisher confirms", channel.confirm_select(ConfirmSelectOptions::default())).await?;
    let mut report = ReplayReport::default();
    let mut confirms = Vec::with_capacity(CONFIRM_WINDOW);
    let mut done = Vec::new();
    for producer in producers {
        // Workers share their service's schema, and its snapshot.
        if done.contains(&producer.schema()) {
            continue;
        }
        done.push(producer.schema());
        let started = chrono::Utc::now();
        let mut events = producer.snapshot(db);
        while let Some(event) = events.next().await {
            let event = event.with_context(|| format!("failed to read the {} snapshot", producer.name()))?;
            for subscription in subscriptions.iter().filter(|s| s.wants(event.kind)) {
                let queue = bus.queue(subscription.purpose);
                let id = Uuid::now_v7();
                let envelope = Event {
                    id,
                    kind: event.kind.to_owned(),
                    deployment: Some(bus.deployment().to_string()),
                    occurred_at: started,
                    data: event.data.clone(),
                };
                let body = serde_json::to_vec(&envelope).context("failed to serialise an event envelope")?;
                let properties = BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2)
                    .with_message_id(id.to_string().into())
                    .with_type(event.kind.into())
                    .with_app_id(format!("replay:{}", producer.schema()).into());
                let confirm = within(
                    "publish a snapshot event",
                    channel.basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        properties,
                    ),
                )
                .await?;
                confirms.push(confirm);
                *report.sent.entry(queue).or_default().entry(event.kind).or_default() += 1;
                if confirms.len() >= CONFIRM_WINDOW {
                    await_confirms(&mut confirms).await?;
                }
            }
        }
    }
    await_confirms(&mut confirms).await?;
    super::close(connection).await;
    Ok(report)
}

async fn await_confirms(confirms: &mut Vec<lapin::PublisherConfirm>) -> anyhow::Result<()> {
    for outcome in futures::future::join_all(confirms.drain(..)).await {
        let confirmation = outcome.context("failed to get a publisher confirm")?;
        anyhow::ensure!(confirmation.is_ack(), "the broker refused (nacked) a snapshot event");
    }
    Ok(())
}

/// AMQP topic matching: words separated by `.`, `*` matches one word, `#`
/// zero or more.
pub fn binding_matches(binding: &str, key: &str) -> bool {
    fn matches(pattern: &[&str], words: &[&str]) -> bool {
        match pattern.split_first() {
            None => words.is_empty(),
            Some((&"#", rest)) => (0..=words.len()).any(|skip| matches(rest, &words[skip..])),
            Some((&"*", rest)) => !words.is_empty() && matches(rest, &words[1..]),
            Some((word, rest)) => words.first() == Some(word) && matches(rest, &words[1..]),
        }
    }
    let pattern: Vec<&str> = binding.split('.').collect();
    let words: Vec<&str> = key.split('.').collect();
    matches(&pattern, &words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_bindings_match_as_rabbitmq_does() {
        assert!(binding_matches("transaction.*", "transaction.created"));
        assert!(!binding_matches("transaction.*", "transaction"));
        assert!(!binding_matches("transaction.*", "category.created"));
        assert!(binding_matches("#", "user.registered"));
        assert!(binding_matches("investment.#", "investment.valuation_changed"));
        assert!(binding_matches("user.registered", "user.registered"));
        assert!(!binding_matches("user.registered", "user.registered.again"));
        let subscription = Subscription { purpose: "analytics.ledger", bindings: &["account.*", "category.*"] };
        assert!(subscription.wants("category.merged"));
        assert!(!subscription.wants("budget.created"));
    }
}

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

use futures::stream::BoxStream;

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

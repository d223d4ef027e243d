//! Replays: a consumer that started late gets its producers' snapshots on
//! its own queues, and nobody else does.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use freedumb_kit::config::{ConfigError, Env};
use freedumb_kit::db::Db;
use freedumb_kit::events::{Consumer, SnapshotEvent, SnapshotStream, Subscription, handler_fn, replay};
use freedumb_kit::{Platform, Service};
use serde_json::json;
use sqlx::migrate::Migrator;
use utoipa_axum::router::OpenApiRouter;

use crate::helpers::{DEPLOYMENT, NO_MIGRATIONS, SCHEMA, setup, spawn};

const WAIT: Duration = Duration::from_secs(15);

const SPENDING: &[Subscription] = &[Subscription { purpose: "spending", bindings: &["transaction.*"] }];

/// `Ledger`, a producer whose state is two transactions and a category, or
/// `Spending`, a consumer of transactions only.
enum Role {
    Ledger,
    Spending,
}
use Role::{Ledger, Spending};

impl Service for Role {
    fn name(&self) -> &'static str {
        match self {
            Ledger => "ledger",
            Spending => "spending",
        }
    }
    fn default_port(&self) -> u16 {
        0
    }
    fn schema(&self) -> &'static str {
        SCHEMA
    }
    fn migrator(&self) -> &'static Migrator {
        &NO_MIGRATIONS
    }
    fn router(&self, _: &Platform, _: &Env) -> Result<OpenApiRouter, ConfigError> {
        Ok(OpenApiRouter::new())
    }
    fn subscriptions(&self) -> &'static [Subscription] {
        match self {
            Ledger => &[],
            Spending => SPENDING,
        }
    }
    fn snapshot<'a>(&'a self, _db: &'a Db) -> SnapshotStream<'a> {
        let events = match self {
            Ledger => vec![
                SnapshotEvent::new("transaction.created", &json!({ "version": 1, "amount_minor": -450 })),
                SnapshotEvent::new("category.created", &json!({ "version": 1, "name": "Food" })),
                SnapshotEvent::new("transaction.created", &json!({ "version": 1, "amount_minor": 12000 })),
            ],
            Spending => vec![],
        };
        Box::pin(futures::stream::iter(events))
    }
}

#[tokio::test]
async fn a_replay_sends_the_snapshot_events_a_consumer_binds_to_its_queue_and_nowhere_else() {
    let s = setup().await;
    let bus = s.broker.bus(DEPLOYMENT);
    let queue = s.broker.queue_for(&bus, "spending");
    // Another consumer bound to the same keys: a replay is not for it.
    let bystander = s.broker.watch("transaction.*").await;

    let missing = replay(&s.db, &bus, &[&Ledger], &Spending).await.unwrap_err();
    assert!(format!("{missing:#}").contains(&format!("the queue {queue} does not exist")), "{missing:#}");

    // The consumer's first start declares its queue; it is stopped so the
    // replayed events wait there to be read.
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let consumer = Consumer::new(
        s.db.clone(),
        SCHEMA,
        &bus,
        SPENDING[0].purpose,
        SPENDING[0].bindings,
        handler_fn(move |_, _| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        }),
    );
    let running = spawn(consumer.into_task());
    s.broker.wait_for_consumer(&queue, WAIT).await;
    running.stop().await.unwrap();

    let report = replay(&s.db, &bus, &[&Ledger], &Spending).await.unwrap();
    assert_eq!(report.total(), 2, "{report:?}");
    assert_eq!(report.sent[&queue]["transaction.created"], 2);

    let received = s.broker.take_exactly(&queue, 2, WAIT).await;
    let amounts: Vec<i64> = received.iter().map(|r| r.event().data["amount_minor"].as_i64().unwrap()).collect();
    assert_eq!(amounts, [-450, 12000], "the snapshot's transactions, in its order");
    for r in &received {
        let event = r.event();
        assert_eq!(event.kind, "transaction.created");
        assert_eq!(event.deployment.as_deref(), Some(DEPLOYMENT), "stamped so the consumer accepts it");
    }
    assert!(s.broker.take(&bystander).await.is_none(), "other queues bound to the same keys see nothing");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
}

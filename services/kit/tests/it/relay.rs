//! The outbox and its relay: what commits is published once, what rolls
//! back never is, and nothing is lost while RabbitMQ is unreachable.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;
use freedumb_kit::db;
use freedumb_kit::events::{self, Bus, Deployment, Relay};
use freedumb_kit::testing::{TcpProxy, TestDatabase, rabbitmq_url};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{DEPLOYMENT, NO_MIGRATIONS, SCHEMA, eventually, record, setup, spawn, unpublished};

const ARRIVAL: Duration = Duration::from_secs(15);
const QUIET: Duration = Duration::from_millis(600);

#[tokio::test]
async fn an_event_committed_with_its_transaction_is_published_once_as_a_persistent_envelope_of_its_deployment() {
    let s = setup().await;
    let queue = s.broker.watch("transaction.*").await;
    let recorded_at = Utc::now();
    let id = record(&s.db, "transaction.created", json!({ "amount_minor": 1250, "currency": "EUR" })).await;
    let relay = Relay::new(s.db.clone(), SCHEMA, &s.broker.bus(DEPLOYMENT)).with_config(s.broker.relay_config());
    let relay = spawn(relay.into_task());

    let message = s.broker.take_exactly(&queue, 1, ARRIVAL).await.remove(0);
    assert_eq!(message.delivery_mode, Some(2), "persistent");
    assert_eq!(message.message_id, Some(id.to_string()));
    assert_eq!(message.content_type.as_deref(), Some("application/json"));
    assert_eq!(message.routing_key, "transaction.created");
    let body: Value = serde_json::from_slice(&message.body).unwrap();
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["id", "type", "deployment", "occurred_at", "data"]);
    let event = message.event();
    assert_eq!(event.deployment.as_deref(), Some(DEPLOYMENT), "stamped with the relay's deployment");
    assert_eq!(event.id, id);
    assert_eq!(event.id.get_version_num(), 7, "event ids are UUIDv7");
    assert_eq!(event.kind, "transaction.created");
    assert_eq!(event.data, json!({ "amount_minor": 1250, "currency": "EUR" }));
    assert!((event.occurred_at - recorded_at).num_seconds().abs() < 5, "{}", event.occurred_at);

    eventually("the row is marked published", ARRIVAL, || async { unpublished(&s.db).await == 0 }).await;
    s.broker.assert_quiet(&queue, QUIET).await;
    relay.stop().await.unwrap();
    let metrics = s.db.metrics().render();
    assert!(metrics.contains(r#"outbox_published_total{schema="ledger"} 1"#), "{metrics}");
}

#[tokio::test]
async fn an_event_whose_transaction_rolls_back_is_never_published() {
    let s = setup().await;
    let queue = s.broker.watch("#").await;
    let mut tx = s.db.begin().await.unwrap();
    events::record(tx.conn(), SCHEMA, "transaction.created", &json!({ "which": "rolled back" })).await.unwrap();
    drop(tx);
    let kept = record(&s.db, "transaction.created", json!({ "which": "kept" })).await;
    let relay = Relay::new(s.db.clone(), SCHEMA, &s.broker.bus(DEPLOYMENT)).with_config(s.broker.relay_config());
    let relay = spawn(relay.into_task());

    let message = s.broker.take_exactly(&queue, 1, ARRIVAL).await.remove(0);
    assert_eq!(message.event().id, kept);
    s.broker.assert_quiet(&queue, QUIET).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger.outbox").fetch_one(&s.db.pool).await.unwrap();
    assert_eq!(rows, 1, "the rolled-back event left no row");
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn events_recorded_while_rabbitmq_is_unreachable_are_all_delivered_once_it_is_back() {
    let s = setup().await;
    let queue = s.broker.watch("#").await;
    // The relay reaches RabbitMQ through a proxy the test cuts; the real
    // broker, and the test's own connection to it, stay up.
    assert!(rabbitmq_url().contains("127.0.0.1:5672"), "this test proxies the default RabbitMQ address");
    let rabbitmq: SocketAddr = "127.0.0.1:5672".parse().unwrap();
    let mut proxy = TcpProxy::start(rabbitmq).await;
    let proxied = SecretString::from(rabbitmq_url().replace("127.0.0.1:5672", &format!("127.0.0.1:{}", proxy.port)));
    let bus = Bus::new(proxied, s.broker.exchange.clone(), Deployment::new(DEPLOYMENT).unwrap());
    let relay = Relay::new(s.db.clone(), SCHEMA, &bus).with_config(s.broker.relay_config());
    let relay = spawn(relay.into_task());
    for n in 0..3 {
        record(&s.db, "transaction.created", json!({ "n": n })).await;
    }
    s.broker.take_exactly(&queue, 3, ARRIVAL).await;
    eventually("the first events are marked published", ARRIVAL, || async { unpublished(&s.db).await == 0 }).await;

    proxy.cut().await;
    // Writes go on: recording touches only Postgres.
    let mut during = HashSet::new();
    for n in 0..20 {
        during.insert(record(&s.db, "transaction.updated", json!({ "n": n })).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(unpublished(&s.db).await, 20, "nothing can be marked published while the broker is unreachable");
    assert!(s.broker.take(&queue).await.is_none(), "nothing reached the broker");

    proxy.restore().await;
    let delivered = s.broker.take_exactly(&queue, 20, Duration::from_secs(30)).await;
    let ids: HashSet<Uuid> = delivered.iter().map(|m| m.event().id).collect();
    assert_eq!(ids, during, "every event recorded during the outage arrives, once");
    s.broker.assert_quiet(&queue, QUIET).await;
    eventually("all rows are marked published", ARRIVAL, || async { unpublished(&s.db).await == 0 }).await;
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn two_relays_on_one_outbox_publish_each_event_once() {
    let s = setup().await;
    let queue = s.broker.watch("#").await;
    // Small batches and two pools, as two replicas would have, so the relays
    // really do contend for rows.
    let config = || freedumb_kit::events::RelayConfig { batch_size: 10, ..s.broker.relay_config() };
    let second_db = s.database.db(5);
    let first = spawn(Relay::new(s.db.clone(), SCHEMA, &s.broker.bus(DEPLOYMENT)).with_config(config()).into_task());
    let second =
        spawn(Relay::new(second_db.clone(), SCHEMA, &s.broker.bus(DEPLOYMENT)).with_config(config()).into_task());

    let mut recorded = HashSet::new();
    for batch in 0..30 {
        let mut tx = s.db.begin().await.unwrap();
        for n in 0..10 {
            let data = json!({ "batch": batch, "n": n });
            recorded.insert(events::record(tx.conn(), SCHEMA, "transaction.created", &data).await.unwrap());
        }
        tx.commit().await.unwrap();
    }

    let delivered = s.broker.take_exactly(&queue, 300, Duration::from_secs(60)).await;
    let ids: HashSet<Uuid> = delivered.iter().map(|m| m.event().id).collect();
    assert_eq!(ids.len(), 300, "no event was published twice");
    assert_eq!(ids, recorded);
    s.broker.assert_quiet(&queue, QUIET).await;
    first.stop().await.unwrap();
    second.stop().await.unwrap();
    let published = |metrics: String| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(r#"outbox_published_total{schema="ledger"} "#))
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    let (a, b) = (published(s.db.metrics().render()), published(second_db.metrics().render()));
    assert_eq!(a + b, 300, "the relays' counts add up ({a} + {b})");
}

#[tokio::test]
async fn the_event_tables_survive_repeated_and_concurrent_migrations() {
    let database = TestDatabase::create().await;
    let url = database.secret_url();
    // Three replicas starting at once. (Joined rather than spawned: sqlx's
    // migration future is not `Send` for every lifetime.)
    let migrations = futures::future::join_all((0..3).map(|_| db::migrate(&url, SCHEMA, &NO_MIGRATIONS))).await;
    for migration in migrations {
        migration.expect("concurrent migrations succeed");
    }
    let pool = database.db(2);
    record(&pool, "goal.reached", json!({})).await;
    db::migrate(&url, SCHEMA, &NO_MIGRATIONS).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger.outbox").fetch_one(&pool.pool).await.unwrap();
    assert_eq!(rows, 1, "migrating again keeps the outbox");
    let history: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ledger._sqlx_migrations").fetch_one(&pool.pool).await.unwrap();
    assert_eq!(history, 0, "the kit's tables are not in the service's migration history");
}

#[tokio::test]
async fn a_bad_routing_key_or_schema_is_refused_before_touching_the_database() {
    let s = setup().await;
    let mut tx = s.db.begin().await.unwrap();
    for key in ["", "transaction.*", "Transaction.Created"] {
        assert!(events::record(tx.conn(), SCHEMA, key, &json!({})).await.is_err(), "{key:?}");
    }
    let err = events::record(tx.conn(), "ledger; DROP TABLE x", "a.b", &json!({})).await.unwrap_err();
    assert!(err.to_string().contains("schema name"), "{err:#}");
    // The transaction is still usable: nothing was sent.
    events::record(tx.conn(), SCHEMA, "a.b", &json!({})).await.unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn refused_credentials_stop_the_relay_with_an_error_that_hides_the_password() {
    // A refusal is not an outage: waiting would not fix it, so the relay
    // fails and its supervisor reports it at every restart.
    let s = setup().await;
    let url = SecretString::from(rabbitmq_url().replace("guest:guest@", "guest:not-the-password@"));
    assert!(url.expose_secret().contains("not-the-password"), "this test changes the default credentials");
    let bus = Bus::new(url, s.broker.exchange.clone(), Deployment::new(DEPLOYMENT).unwrap());
    let relay = Relay::new(s.db.clone(), SCHEMA, &bus).with_config(s.broker.relay_config());
    let outcome = tokio::time::timeout(ARRIVAL, relay.run(Default::default())).await.expect("the relay gives up");
    let err = format!("{:#}", outcome.expect_err("the broker refused the relay"));
    assert!(err.contains("refused"), "{err}");
    assert!(!err.contains("not-the-password"), "{err}");
}

//! Consumers: each event handled once, poison dead-lettered, transient
//! failures retried and then dead-lettered, and the whole path from a
//! committed write to another service's handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Utc;
use freedumb_kit::db::Db;
use freedumb_kit::events::{
    ATTEMPT_HEADER, Bus, Consumer, ConsumerConfig, Deployment, Event, HandleError, Relay, handler_fn,
};
use freedumb_kit::testing::{TcpProxy, TestBroker, rabbitmq_url};
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::helpers::{DEPLOYMENT, SCHEMA, Setup, eventually, record, setup, spawn};

const WAIT: Duration = Duration::from_secs(15);

/// What the test handler does on each call.
#[derive(Clone, Copy)]
enum Behaviour {
    Succeed,
    /// Fails transiently on the first `n` calls.
    FailFirst(usize),
    /// Rejects data that is not `{"amount_minor": <integer>}` as poison.
    Strict,
}

/// Writes each event it handles to `ledger.seen`, counting its calls.
fn handler(calls: Arc<AtomicUsize>, behaviour: Behaviour) -> impl freedumb_kit::events::EventHandler {
    handler_fn(move |conn: &mut PgConnection, event: &Event| {
        let calls = calls.clone();
        Box::pin(async move {
            let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
            match behaviour {
                Behaviour::FailFirst(n) if call <= n => {
                    return Err(HandleError::transient(anyhow::anyhow!("the ledger is busy (call {call})")));
                }
                Behaviour::Strict => {
                    #[derive(serde::Deserialize)]
                    #[allow(dead_code)]
                    struct Amount {
                        amount_minor: i64,
                    }
                    event.data_as::<Amount>()?;
                }
                _ => {}
            }
            sqlx::query("INSERT INTO ledger.seen (event_id, kind, data) VALUES ($1, $2, $3::text::jsonb)")
                .bind(event.id)
                .bind(&event.kind)
                .bind(event.data.to_string())
                .execute(conn)
                .await?;
            Ok(())
        })
    })
}

async fn create_seen_table(db: &Db) {
    sqlx::query("CREATE TABLE ledger.seen (event_id uuid NOT NULL, kind text NOT NULL, data jsonb NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
}

async fn seen(db: &Db) -> Vec<(Uuid, String)> {
    sqlx::query_as("SELECT event_id, kind FROM ledger.seen ORDER BY event_id").fetch_all(&db.pool).await.unwrap()
}

async fn inbox_rows(db: &Db) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM ledger.inbox").fetch_one(&db.pool).await.unwrap()
}

/// An envelope as the relay of the stories' deployment publishes it.
fn envelope(kind: &str, data: Value) -> (Uuid, Vec<u8>) {
    envelope_from(Some(DEPLOYMENT), kind, data)
}

fn envelope_from(deployment: Option<&str>, kind: &str, data: Value) -> (Uuid, Vec<u8>) {
    let id = Uuid::now_v7();
    let mut body = json!({ "id": id, "type": kind, "occurred_at": Utc::now(), "data": data });
    if let Some(deployment) = deployment {
        body["deployment"] = json!(deployment);
    }
    (id, serde_json::to_vec(&body).unwrap())
}

fn consumed(db: &Db, queue: &str, outcome: &str) -> u64 {
    let prefix = format!(r#"events_consumed_total{{outcome="{outcome}",queue="{queue}"}} "#);
    db.metrics().render().lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |n| n.parse().unwrap())
}

/// A consumer of `transaction.*` on a queue of the test's own, running and
/// ready for messages.
async fn start_consumer(
    s: &Setup,
    behaviour: Behaviour,
    config: ConsumerConfig,
) -> (String, Arc<AtomicUsize>, crate::helpers::Running) {
    create_seen_table(&s.db).await;
    let bus = s.broker.bus(DEPLOYMENT);
    let queue = s.broker.queue_for(&bus, "spending");
    let calls = Arc::new(AtomicUsize::new(0));
    let consumer =
        Consumer::new(s.db.clone(), SCHEMA, &bus, "spending", &["transaction.*"], handler(calls.clone(), behaviour))
            .with_config(config);
    assert_eq!(consumer.queue(), queue);
    let running = spawn(consumer.into_task());
    s.broker.wait_for_consumer(&queue, WAIT).await;
    (queue, calls, running)
}

async fn settled(broker: &TestBroker, queue: &str) -> bool {
    broker.inspect(queue).await.is_some_and(|(ready, _)| ready == 0)
}

#[tokio::test]
async fn an_event_delivered_twice_is_handled_once() {
    let s = setup().await;
    let (queue, calls, consumer) = start_consumer(&s, Behaviour::Succeed, s.broker.consumer_config()).await;
    let (id, body) = envelope("transaction.created", json!({ "amount_minor": 100 }));
    s.broker.publish("transaction.created", &body).await;
    s.broker.publish("transaction.created", &body).await;

    eventually("both deliveries are settled", WAIT, || async {
        consumed(&s.db, &queue, "processed") + consumed(&s.db, &queue, "duplicate") == 2
    })
    .await;
    assert_eq!(consumed(&s.db, &queue, "duplicate"), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the handler ran once");
    assert_eq!(seen(&s.db).await, [(id, "transaction.created".to_owned())]);
    assert_eq!(inbox_rows(&s.db).await, 1);
    assert!(settled(&s.broker, &queue).await);
    consumer.stop().await.unwrap();
}

#[tokio::test]
async fn poison_messages_land_in_the_dead_letter_queue_and_the_consumer_goes_on() {
    let s = setup().await;
    let (queue, calls, consumer) = start_consumer(&s, Behaviour::Strict, s.broker.consumer_config()).await;
    s.broker.publish("transaction.created", b"this is not an envelope").await;
    let (poison, body) = envelope("transaction.created", json!({ "amount_minor": "twelve" }));
    s.broker.publish("transaction.created", &body).await;
    let (good, body) = envelope("transaction.created", json!({ "amount_minor": 12 }));
    s.broker.publish("transaction.created", &body).await;

    let dead = s.broker.take_exactly(&format!("{queue}.dlq"), 2, WAIT).await;
    assert_eq!(dead[0].body, b"this is not an envelope");
    assert_eq!(dead[1].event().id, poison);
    eventually("the good event is handled", WAIT, || async { seen(&s.db).await.len() == 1 }).await;
    assert_eq!(seen(&s.db).await[0].0, good);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the malformed envelope never reached the handler");
    assert_eq!(inbox_rows(&s.db).await, 1, "a poison event leaves no inbox row, so a fixed replay is handled");
    assert_eq!(consumed(&s.db, &queue, "dead_lettered"), 2);
    consumer.stop().await.unwrap();
}

#[tokio::test]
async fn an_event_that_keeps_failing_is_retried_then_dead_lettered() {
    let s = setup().await;
    let config = ConsumerConfig { max_attempts: 3, ..s.broker.consumer_config() };
    let (queue, calls, consumer) = start_consumer(&s, Behaviour::FailFirst(usize::MAX), config).await;
    let (id, body) = envelope("transaction.deleted", json!({}));
    s.broker.publish("transaction.deleted", &body).await;

    let dead = s.broker.take_exactly(&format!("{queue}.dlq"), 1, WAIT).await.remove(0);
    assert_eq!(dead.event().id, id);
    assert_eq!(calls.load(Ordering::SeqCst), 3, "one call per attempt");
    assert_eq!(consumed(&s.db, &queue, "retried"), 2);
    assert_eq!(consumed(&s.db, &queue, "dead_lettered"), 1);
    assert!(seen(&s.db).await.is_empty() && inbox_rows(&s.db).await == 0, "failed attempts rolled back");
    assert!(settled(&s.broker, &queue).await);
    consumer.stop().await.unwrap();
}

#[tokio::test]
async fn an_event_whose_failure_clears_is_handled_once() {
    let s = setup().await;
    let (queue, calls, consumer) = start_consumer(&s, Behaviour::FailFirst(2), s.broker.consumer_config()).await;
    let (id, body) = envelope("transaction.created", json!({ "amount_minor": 5 }));
    s.broker.publish("transaction.created", &body).await;

    eventually("the event is handled", WAIT, || async { consumed(&s.db, &queue, "processed") == 1 }).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(seen(&s.db).await, [(id, "transaction.created".to_owned())]);
    assert_eq!(s.broker.inspect(&format!("{queue}.dlq")).await.map(|(ready, _)| ready), Some(0));
    consumer.stop().await.unwrap();
}

#[tokio::test]
async fn an_event_from_the_last_attempt_header_is_dead_lettered_without_a_call() {
    // A delivery that already used up its attempts (a consumer crashed
    // while retrying it) is not handled again.
    let s = setup().await;
    let config = ConsumerConfig { max_attempts: 2, ..s.broker.consumer_config() };
    let (queue, calls, consumer) = start_consumer(&s, Behaviour::Succeed, config).await;
    let (id, body) = envelope("transaction.created", json!({}));
    s.broker.publish_with_header("transaction.created", &body, ATTEMPT_HEADER, 3).await;

    let dead = s.broker.take_exactly(&format!("{queue}.dlq"), 1, WAIT).await.remove(0);
    assert_eq!(dead.event().id, id);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    consumer.stop().await.unwrap();
}

#[tokio::test]
async fn events_of_another_deployment_are_counted_and_dropped_never_handled() {
    // Another deployment shares the exchange, so its events reach this
    // deployment's queue too; so may an envelope from before stamping.
    let s = setup().await;
    let (queue, calls, consumer) = start_consumer(&s, Behaviour::Succeed, s.broker.consumer_config()).await;
    let (_, body) = envelope_from(Some("elsewhere"), "transaction.created", json!({ "amount_minor": 500 }));
    s.broker.publish("transaction.created", &body).await;
    let (_, body) = envelope_from(None, "transaction.created", json!({ "amount_minor": 700 }));
    s.broker.publish("transaction.created", &body).await;
    let (ours, body) = envelope("transaction.created", json!({ "amount_minor": 900 }));
    s.broker.publish("transaction.created", &body).await;

    eventually("every delivery is settled", WAIT, || async {
        consumed(&s.db, &queue, "foreign") + consumed(&s.db, &queue, "processed") == 3
    })
    .await;
    assert_eq!(consumed(&s.db, &queue, "foreign"), 2);
    assert_eq!(seen(&s.db).await, [(ours, "transaction.created".to_owned())], "only our deployment's event applied");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "foreign events never reach the handler");
    assert_eq!(inbox_rows(&s.db).await, 1);
    assert!(settled(&s.broker, &queue).await, "foreign events are acked, not requeued");
    assert_eq!(s.broker.inspect(&format!("{queue}.dlq")).await.map(|(ready, _)| ready), Some(0), "nor dead-lettered");
    consumer.stop().await.unwrap();
}

#[tokio::test]
async fn a_relay_waits_for_the_consumers_of_its_process_to_bind_their_queues() {
    // In one process (`serve all`) the relay and the consumers start
    // together. An event already in the outbox (a backfill, say) must not
    // be published before the consumers' queues are bound, or the exchange
    // drops it.
    let s = setup().await;
    create_seen_table(&s.db).await;
    let pending = record(&s.db, "transaction.created", json!({ "amount_minor": 1 })).await;
    let bus = s.broker.bus(DEPLOYMENT);
    let queue = s.broker.queue_for(&bus, "spending");
    let calls = Arc::new(AtomicUsize::new(0));
    let consumer =
        Consumer::new(s.db.clone(), SCHEMA, &bus, "spending", &["transaction.*"], handler(calls, Behaviour::Succeed))
            .with_config(s.broker.consumer_config());
    let relay = Relay::new(s.db.clone(), SCHEMA, &bus).with_config(s.broker.relay_config());
    // Both tasks exist, as after `Service::background`; the relay runs
    // first, and the consumer only a while later.
    let (consumer, relay) = (consumer.into_task(), relay.into_task());
    let relay = spawn(relay);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let consumer = spawn(consumer);

    eventually("the event reaches the consumer", WAIT, || async { !seen(&s.db).await.is_empty() }).await;
    assert_eq!(seen(&s.db).await, [(pending, "transaction.created".to_owned())]);
    assert!(settled(&s.broker, &queue).await);
    relay.stop().await.unwrap();
    consumer.stop().await.unwrap();
}

#[tokio::test]
async fn a_committed_write_reaches_another_services_handler() {
    // The path a transaction takes to the budget service: recorded with the
    // write, relayed, consumed into the consumer's own transaction.
    let s = setup().await;
    let (_queue, calls, consumer) = start_consumer(&s, Behaviour::Succeed, s.broker.consumer_config()).await;
    let relay = Relay::new(s.db.clone(), SCHEMA, &s.broker.bus(DEPLOYMENT)).with_config(s.broker.relay_config());
    let relay = spawn(relay.into_task());

    let created = record(&s.db, "transaction.created", json!({ "amount_minor": 4200 })).await;
    // Not bound: the consumer never sees it.
    record(&s.db, "budget.threshold_crossed", json!({ "percent": 80 })).await;

    eventually("the handler saw the event", WAIT, || async { !seen(&s.db).await.is_empty() }).await;
    assert_eq!(seen(&s.db).await, [(created, "transaction.created".to_owned())]);
    let data: String = sqlx::query_scalar("SELECT data::text FROM ledger.seen WHERE event_id = $1")
        .bind(created)
        .fetch_one(&s.db.pool)
        .await
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&data).unwrap(), json!({ "amount_minor": 4200 }));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    relay.stop().await.unwrap();
    consumer.stop().await.unwrap();
}

#[tokio::test]
async fn a_consumer_cut_off_from_rabbitmq_reconnects_and_handles_what_queued_meanwhile() {
    let s = setup().await;
    create_seen_table(&s.db).await;
    assert!(rabbitmq_url().contains("127.0.0.1:5672"), "this test proxies the default RabbitMQ address");
    let mut proxy = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let proxied = SecretString::from(rabbitmq_url().replace("127.0.0.1:5672", &format!("127.0.0.1:{}", proxy.port)));
    let bus = Bus::new(proxied, s.broker.exchange.clone(), Deployment::new(DEPLOYMENT).unwrap());
    let queue = s.broker.queue_for(&bus, "spending");
    let calls = Arc::new(AtomicUsize::new(0));
    let consumer = Consumer::new(
        s.db.clone(),
        SCHEMA,
        &bus,
        "spending",
        &["transaction.*"],
        handler(calls.clone(), Behaviour::Succeed),
    )
    .with_config(s.broker.consumer_config());
    let consumer = spawn(consumer.into_task());
    s.broker.wait_for_consumer(&queue, WAIT).await;

    proxy.cut().await;
    eventually("the broker sees the consumer go", WAIT, || async {
        s.broker.inspect(&queue).await.is_some_and(|(_, consumers)| consumers == 0)
    })
    .await;
    // The durable queue collects what is published meanwhile.
    let mut published = Vec::new();
    for n in 0..5 {
        let (id, body) = envelope("transaction.created", json!({ "n": n }));
        s.broker.publish("transaction.created", &body).await;
        published.push((id, "transaction.created".to_owned()));
    }
    proxy.restore().await;

    eventually("every queued event is handled", Duration::from_secs(30), || async { seen(&s.db).await.len() == 5 })
        .await;
    assert_eq!(seen(&s.db).await, published);
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    consumer.stop().await.unwrap();
}

#[tokio::test]
async fn a_queue_that_exists_with_other_arguments_stops_the_consumer_with_an_error() {
    let s = setup().await;
    let bus = s.broker.bus(DEPLOYMENT);
    let queue = s.broker.queue_for(&bus, "spending");
    // Someone declared the queue by hand as a classic queue.
    let connection = lapin::Connection::connect(&rabbitmq_url(), Default::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let durable = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(queue.as_str().into(), durable, Default::default()).await.unwrap();

    let calls = Arc::new(AtomicUsize::new(0));
    let consumer =
        Consumer::new(s.db.clone(), SCHEMA, &bus, "spending", &["transaction.*"], handler(calls, Behaviour::Succeed))
            .with_config(s.broker.consumer_config());
    let outcome = tokio::time::timeout(WAIT, consumer.run(Default::default())).await.expect("the consumer gives up");
    let err = format!("{:#}", outcome.expect_err("the broker refused the declaration"));
    assert!(err.contains("refused") && err.contains("PRECONDITION_FAILED"), "{err}");
    let _ = connection.close(200, "bye".into()).await;
}

/// Records the size of every batch it is given, and handles each event as
/// `handler(.., Strict)` does.
struct Batches {
    sizes: Arc<std::sync::Mutex<Vec<usize>>>,
    one: Box<dyn freedumb_kit::events::EventHandler>,
}

impl freedumb_kit::events::EventHandler for Batches {
    fn handle<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        event: &'a Event,
    ) -> futures::future::BoxFuture<'a, Result<(), HandleError>> {
        self.one.handle(conn, event)
    }

    fn handle_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [Event],
    ) -> futures::future::BoxFuture<'a, Result<(), HandleError>> {
        self.sizes.lock().unwrap().push(events.len());
        Box::pin(async move {
            for event in events {
                self.one.handle(conn, event).await?;
            }
            Ok(())
        })
    }
}

#[tokio::test]
async fn a_backlog_is_handled_in_batches_and_a_poison_event_in_one_costs_only_itself() {
    let s = setup().await;
    create_seen_table(&s.db).await;
    let bus = s.broker.bus(DEPLOYMENT);
    let queue = s.broker.queue_for(&bus, "spending");
    let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let make = |sizes: Arc<std::sync::Mutex<Vec<usize>>>| {
        let handler = Batches { sizes, one: Box::new(handler(calls.clone(), Behaviour::Strict)) };
        Consumer::new(s.db.clone(), SCHEMA, &bus, "spending", &["transaction.*"], handler)
            .with_config(ConsumerConfig { batch_size: 100, ..s.broker.consumer_config() })
    };
    // Declare the queue, then let a backlog build up while no consumer runs.
    let first = spawn(make(sizes.clone()).into_task());
    s.broker.wait_for_consumer(&queue, WAIT).await;
    first.stop().await.unwrap();
    let mut good = Vec::new();
    let mut poison = None;
    let mut repeated = None;
    for n in 0..300 {
        let data = if n == 150 { json!({ "amount_minor": "twelve" }) } else { json!({ "amount_minor": n }) };
        let (id, body) = envelope("transaction.created", data);
        if n == 150 {
            poison = Some(id);
        } else {
            good.push(id);
        }
        if n == 10 {
            repeated = Some(body.clone());
        }
        s.broker.publish("transaction.created", &body).await;
    }
    s.broker.publish("transaction.created", &repeated.unwrap()).await;

    let consumer = spawn(make(sizes.clone()).into_task());
    let dead = s.broker.take_exactly(&format!("{queue}.dlq"), 1, WAIT).await;
    assert_eq!(dead[0].event().id, poison.unwrap(), "only the poison event is dead-lettered");
    eventually("every good event is handled", WAIT, || async { seen(&s.db).await.len() == good.len() }).await;
    eventually("the repeat is settled as a duplicate", WAIT, || async { consumed(&s.db, &queue, "duplicate") == 1 })
        .await;
    let mut handled: Vec<Uuid> = seen(&s.db).await.into_iter().map(|(id, _)| id).collect();
    handled.sort();
    good.sort();
    assert_eq!(handled, good, "each good event once, the poison one never");
    assert_eq!(inbox_rows(&s.db).await, 299);
    assert_eq!(consumed(&s.db, &queue, "processed"), 299);
    let sizes = sizes.lock().unwrap().clone();
    assert!(sizes.iter().any(|&n| n > 1), "a backlog is taken in batches: {sizes:?}");
    assert!(sizes.iter().all(|&n| n <= 100), "never more than batch_size: {sizes:?}");
    consumer.stop().await.unwrap();
}

//! Test support for services built on the kit (feature `testing`, for
//! dev-dependencies only): a database of the test's own, a TCP proxy to cut
//! a dependency off, and a RabbitMQ exchange of the test's own with queues to
//! watch it.
//!
//! Everything here talks to the real Postgres and RabbitMQ on this machine
//! (or `TEST_POSTGRES_URL` / `TEST_RABBITMQ_URL`). When they are not there it
//! panics saying how to start them: tests never pass quietly without them.
//! Names carry a random suffix, so tests run in parallel without seeing each
//! other's data or messages, and everything a test creates is removed when
//! its value is dropped.

use std::net::SocketAddr;
use std::sync::{Mutex, Once};
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use secrecy::SecretString;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::db::{self, Db};
use crate::events::{Bus, ConsumerConfig, Deployment, Event, RelayConfig};
use crate::metrics::Metrics;

pub fn postgres_url() -> String {
    std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

pub fn rabbitmq_url() -> String {
    std::env::var("TEST_RABBITMQ_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// Sends logs to the terminal when `TEST_LOG` is set; otherwise they go
/// nowhere.
pub fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug,sqlx=warn,lapin=info"));
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        }
    });
}

/// A database of the test's own (`freedumb_test_<uuid>`), dropped with it.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        init_logs();
        let name = format!("freedumb_test_{}", Uuid::new_v4().simple());
        let url = format!("{}/{name}", postgres_url());
        db::create_database_if_missing(&SecretString::from(url.clone())).await.unwrap_or_else(|err| {
            panic!(
                "the tests need Postgres at {} (trust auth, user postgres): {err:#}\n\
                 start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
                postgres_url()
            )
        });
        TestDatabase { name, url }
    }

    pub fn secret_url(&self) -> SecretString {
        SecretString::from(self.url.clone())
    }

    /// Creates `schema` with the kit's event tables and applies `migrator`.
    pub async fn migrate(&self, schema: &str, migrator: &sqlx::migrate::Migrator) {
        db::migrate(&self.secret_url(), schema, migrator).await.expect("migrations apply");
    }

    /// Moves the database out of `self`, which then owns nothing (and drops
    /// nothing): for a test that restarts a platform on the same data.
    pub fn take(&mut self) -> TestDatabase {
        TestDatabase { name: std::mem::take(&mut self.name), url: std::mem::take(&mut self.url) }
    }

    /// A pool of up to `max_connections` on this database, with metrics of
    /// its own.
    pub fn db(&self, max_connections: u32) -> Db {
        Db::new(db::lazy_pool(&self.secret_url(), max_connections).expect("valid URL"), Metrics::new())
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return; // taken (see `take`)
        }
        // Drop runs outside async; a short-lived runtime on its own thread
        // does the cleanup without blocking the test's runtime.
        let name = self.name.clone();
        let admin = format!("{}/postgres", postgres_url());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}

/// A TCP forwarder standing between the code under test and a dependency,
/// so a test can cut the dependency off and bring it back without touching
/// the real server.
pub struct TcpProxy {
    pub port: u16,
    target: SocketAddr,
    tasks: Option<tokio::task::JoinHandle<()>>,
}

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let mut proxy = TcpProxy { port, target, tasks: None };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: TcpListener) {
        let target = self.target;
        self.tasks = Some(tokio::spawn(async move {
            // Connections live in this set, so aborting the task closes them all.
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { break };
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Refuses new connections and cuts the open ones.
    pub async fn cut(&mut self) {
        if let Some(tasks) = self.tasks.take() {
            tasks.abort();
            let _ = tasks.await;
        }
    }

    /// Accepts connections again, on the same port.
    pub async fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.expect("rebind proxy port");
        self.serve(listener);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(tasks) = self.tasks.take() {
            tasks.abort();
        }
    }
}

/// A message taken from a queue.
#[derive(Debug, Clone)]
pub struct Received {
    pub routing_key: String,
    pub message_id: Option<String>,
    pub delivery_mode: Option<u8>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Received {
    /// The body as an event envelope.
    pub fn event(&self) -> Event {
        serde_json::from_slice(&self.body).expect("the message is an event envelope")
    }
}

/// An events exchange and dead-letter exchange of the test's own on the real
/// broker, and queues to watch them. Dropping it deletes them.
pub struct TestBroker {
    pub exchange: String,
    pub dead_letter_exchange: String,
    connection: Connection,
    channel: Channel,
    /// Queues to delete at the end: consumers' queues and their `.dlq`s.
    queues: Mutex<Vec<String>>,
}

impl TestBroker {
    pub async fn new() -> Self {
        init_logs();
        let suffix = Uuid::new_v4().simple().to_string();
        let connection =
            Connection::connect(&rabbitmq_url(), ConnectionProperties::default()).await.unwrap_or_else(|err| {
                panic!(
                    "the tests need RabbitMQ at 127.0.0.1:5672 (guest/guest), or TEST_RABBITMQ_URL: {err}\n\
                     start it with: service rabbitmq-server start"
                )
            });
        let channel = connection.create_channel().await.expect("open a channel");
        let broker = TestBroker {
            exchange: format!("test.events.{suffix}"),
            dead_letter_exchange: format!("test.events.{suffix}.dlx"),
            connection,
            channel,
            queues: Mutex::new(Vec::new()),
        };
        broker
            .channel
            .exchange_declare(
                broker.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() },
                FieldTable::default(),
            )
            .await
            .expect("declare the test exchange");
        broker
    }

    pub fn url(&self) -> SecretString {
        SecretString::from(rabbitmq_url())
    }

    /// The bus of a deployment named `deployment` on this exchange, as a
    /// deployment's relays and consumers use it.
    pub fn bus(&self, deployment: &str) -> Bus {
        Bus::new(self.url(), self.exchange.clone(), Deployment::new(deployment).expect("a valid deployment name"))
    }

    /// A relay configuration with short delays.
    pub fn relay_config(&self) -> RelayConfig {
        RelayConfig {
            poll_interval: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            confirm_timeout: Duration::from_secs(5),
            ..RelayConfig::default()
        }
    }

    /// A consumer configuration for this dead-letter exchange, with short
    /// delays.
    pub fn consumer_config(&self) -> ConsumerConfig {
        ConsumerConfig {
            dead_letter_exchange: self.dead_letter_exchange.clone(),
            retry_delay: Duration::from_millis(50),
            max_retry_delay: Duration::from_millis(200),
            max_backoff: Duration::from_millis(500),
            ..ConsumerConfig::default()
        }
    }

    /// The queue of the consumer with `purpose` on `bus`; it and its `.dlq`
    /// are deleted with the broker. (The exchange's name is in it, so it is
    /// the test's own.)
    pub fn queue_for(&self, bus: &Bus, purpose: &str) -> String {
        let name = bus.queue(purpose);
        self.delete_on_drop(&name);
        name
    }

    /// Deletes `queue` and its `.dlq` with the broker: for queues that the
    /// code under test declares with names of its own.
    pub fn delete_on_drop(&self, queue: &str) {
        let mut queues = self.queues.lock().expect("not poisoned");
        queues.push(queue.to_owned());
        queues.push(format!("{queue}.dlq"));
    }

    /// A new queue bound to the exchange with `binding`, to watch what is
    /// published. It lives as long as the broker's connection.
    pub async fn watch(&self, binding: &str) -> String {
        let queue = self
            .channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions { exclusive: true, ..QueueDeclareOptions::default() },
                FieldTable::default(),
            )
            .await
            .expect("declare a watch queue");
        let name = queue.name().to_string();
        self.channel
            .queue_bind(
                name.as_str().into(),
                self.exchange.as_str().into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind a watch queue");
        name
    }

    /// Publishes raw bytes to the exchange, as a misbehaving publisher would.
    pub async fn publish(&self, routing_key: &str, body: &[u8]) {
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
    }

    /// Publishes raw bytes with one integer header.
    pub async fn publish_with_header(&self, routing_key: &str, body: &[u8], header: &str, value: u32) {
        let mut headers = FieldTable::default();
        headers.insert(header.into(), lapin::types::AMQPValue::LongUInt(value));
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2).with_headers(headers),
            )
            .await
            .expect("publish");
    }

    /// Takes the next message from `queue`, if there is one.
    pub async fn take(&self, queue: &str) -> Option<Received> {
        let message =
            self.channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.expect("basic.get")?;
        let delivery = message.delivery;
        let properties = &delivery.properties;
        Some(Received {
            routing_key: delivery.routing_key.to_string(),
            message_id: properties.message_id().as_ref().map(|id| id.to_string()),
            delivery_mode: *properties.delivery_mode(),
            content_type: properties.content_type().as_ref().map(|t| t.to_string()),
            body: delivery.data,
        })
    }

    /// Takes messages from `queue` until `count` have arrived, or panics
    /// after `timeout` saying how many did.
    pub async fn take_exactly(&self, queue: &str, count: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut received = Vec::with_capacity(count);
        while received.len() < count {
            match self.take(queue).await {
                Some(message) => received.push(message),
                None => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{} of {count} messages arrived on {queue} within {timeout:?}",
                        received.len()
                    );
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        }
        received
    }

    /// Asserts that nothing more arrives on `queue` within `wait`.
    pub async fn assert_quiet(&self, queue: &str, wait: Duration) {
        tokio::time::sleep(wait).await;
        if let Some(message) = self.take(queue).await {
            panic!("unexpected message on {queue}: {}", String::from_utf8_lossy(&message.body));
        }
    }

    /// The messages ready in `queue` and its consumers, or `None` if it
    /// does not exist.
    pub async fn inspect(&self, queue: &str) -> Option<(u32, u32)> {
        // A passive declaration of a missing queue closes its channel, so it
        // gets one of its own.
        let channel = self.connection.create_channel().await.expect("open a channel");
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() },
                FieldTable::default(),
            )
            .await
            .ok()?;
        let _ = channel.close(200, "bye".into()).await;
        Some((declared.message_count(), declared.consumer_count()))
    }

    /// Waits until `queue` exists and has a consumer, which a kit consumer
    /// starts only once its bindings are in place: events published after
    /// this reach it.
    pub async fn wait_for_consumer(&self, queue: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some((_, consumers)) = self.inspect(queue).await
                && consumers > 0
            {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "no consumer on {queue} within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut *self.queues.lock().unwrap_or_else(|e| e.into_inner()));
        let exchanges = [self.exchange.clone(), self.dead_letter_exchange.clone()];
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let Ok(connection) = Connection::connect(&rabbitmq_url(), ConnectionProperties::default()).await else {
                    return;
                };
                // A failed operation closes its channel, so each gets its own.
                for queue in queues {
                    if let Ok(channel) = connection.create_channel().await {
                        let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
                    }
                }
                for exchange in exchanges {
                    if let Ok(channel) = connection.create_channel().await {
                        let _ =
                            channel.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default()).await;
                    }
                }
                let _ = connection.close(200, "bye".into()).await;
            });
        })
        .join();
    }
}

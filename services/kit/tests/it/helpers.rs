//! What the stories share: a schema with the event tables, and relays and
//! consumers running as they would in a service, stopped when the test ends.

use std::time::Duration;

use freedumb_kit::db::Db;
use freedumb_kit::service::{BackgroundTask, CancellationToken};
use freedumb_kit::testing::{TestBroker, TestDatabase};
use serde_json::Value;
use sqlx::migrate::Migrator;
use uuid::Uuid;

/// The schema the stories record events in.
pub const SCHEMA: &str = "ledger";
/// The deployment the stories' relays and consumers belong to.
pub const DEPLOYMENT: &str = "kit-test";

/// A service without migrations of its own: the kit's tables are enough.
pub static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

pub struct Setup {
    pub database: TestDatabase,
    pub db: Db,
    pub broker: TestBroker,
}

/// A database with the `ledger` schema migrated, and a test exchange.
pub async fn setup() -> Setup {
    let database = TestDatabase::create().await;
    database.migrate(SCHEMA, &NO_MIGRATIONS).await;
    let db = database.db(5);
    let broker = TestBroker::new().await;
    Setup { database, db, broker }
}

/// Records an event in a transaction of its own, committed.
pub async fn record(db: &Db, routing_key: &str, data: Value) -> Uuid {
    let mut tx = db.begin().await.expect("begin");
    let id = freedumb_kit::events::record(tx.conn(), SCHEMA, routing_key, &data).await.expect("record");
    tx.commit().await.expect("commit");
    id
}

pub async fn unpublished(db: &Db) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM ledger.outbox WHERE published_at IS NULL")
        .fetch_one(&db.pool)
        .await
        .expect("count unpublished")
}

/// Waits until `check` holds, or panics naming `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A background task running on its own, as the server would run it; it is
/// stopped when dropped.
pub struct Running {
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub fn spawn(mut task: BackgroundTask) -> Running {
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(task.start(shutdown.clone()));
    Running { shutdown, handle: Some(handle) }
}

impl Running {
    /// Stops the task and returns what its run returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let handle = self.handle.take().expect("not stopped yet");
        tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("the task stops promptly once cancelled")
            .expect("the task did not panic")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

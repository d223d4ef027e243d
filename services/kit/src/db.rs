//! Postgres through sqlx: the pool, per-service migrations, counted
//! transactions.
//!
//! Every service owns one Postgres schema (`auth`, `ledger`, ...), and its
//! SQL names tables with that schema. Migrations run on a connection whose
//! `search_path` is the service's schema, so each service's migration
//! bookkeeping (`<schema>._sqlx_migrations`) is its own and services can be
//! migrated, and later split into their own databases, independently.

use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Postgres, Transaction};

use crate::metrics::{Metrics, TransactionGauge};

pub fn connect_options(url: &SecretString) -> anyhow::Result<PgConnectOptions> {
    let options: PgConnectOptions = url
        .expose_secret()
        .parse()
        // sqlx's parse error can quote the URL, password included.
        .map_err(|_| anyhow::anyhow!("DATABASE_URL is not a valid Postgres URL"))?;
    Ok(options
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500)))
}

/// A pool that connects on first use, so a service starts (and reports
/// not-ready) while Postgres is still coming up.
pub fn lazy_pool(url: &SecretString, max_connections: u32) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(Duration::from_secs(300))
        .connect_lazy_with(connect_options(url)?))
}

/// Schema names are spliced into SQL (they cannot be bind parameters), so
/// only lower-case letters and underscores are accepted.
pub fn check_schema(schema: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !schema.is_empty() && schema.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
        "schema name {schema:?} must be lower-case letters and underscores"
    );
    Ok(())
}

/// Creates `schema` if needed, then the kit's event tables in it
/// (`<schema>.outbox` and `<schema>.inbox`, see [`crate::events`]), then
/// applies the service's migrations to it.
///
/// The event tables come first so a service's migrations may refer to them,
/// and they are not part of the service's migration history: the kit
/// creates them idempotently on every run.
pub async fn migrate(url: &SecretString, schema: &str, migrator: &Migrator) -> anyhow::Result<()> {
    check_schema(schema)?;
    let options = connect_options(url)?.options([("search_path", schema)]);
    let mut conn = PgConnection::connect_with(&options).await.context("failed to connect to Postgres")?;
    // `CREATE ... IF NOT EXISTS` is not safe against itself: two replicas
    // starting at once can both decide to create, and one fails on a unique
    // index. A lock per schema makes them take turns; it is the session's,
    // so closing the connection (on any error too) releases it.
    sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
        .bind(format!("freedumb-kit migrate {schema}"))
        .execute(&mut conn)
        .await
        .with_context(|| format!("failed to lock schema {schema} for migrating"))?;
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .execute(&mut conn)
        .await
        .with_context(|| format!("failed to create schema {schema}"))?;
    // The kit's own tables come first, outside the service's history.
    crate::events::create_tables(&mut conn, schema).await?;
    crate::idempotency::create_table(&mut conn, schema).await?;
    migrator.run(&mut conn).await.with_context(|| format!("failed to apply the migrations of schema {schema}"))?;
    conn.close().await.ok();
    Ok(())
}

/// Creates the database named in the URL when it does not exist, connecting
/// to the server's `postgres` database to do so.
pub async fn create_database_if_missing(url: &SecretString) -> anyhow::Result<bool> {
    let options = connect_options(url)?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut conn = PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .context("failed to connect to Postgres")?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut conn)
        .await?;
    if !exists {
        sqlx::query(&format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("failed to create database {name}"))?;
    }
    conn.close().await.ok();
    Ok(!exists)
}

/// The pool plus the metrics that count its transactions.
#[derive(Clone)]
pub struct Db {
    pub pool: PgPool,
    metrics: Metrics,
}

impl Db {
    pub fn new(pool: PgPool, metrics: Metrics) -> Self {
        Db { pool, metrics }
    }

    /// The registry this pool's transactions are counted in; background
    /// tasks built from a `Db` count their work there too.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Begins a transaction counted in `active_transactions` until it ends.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        let tx = self.pool.begin().await?;
        Ok(Tx { tx, _gauge: self.metrics.transaction_opened() })
    }
}

/// A transaction; dropping it without `commit` rolls back.
pub struct Tx {
    tx: Transaction<'static, Postgres>,
    _gauge: TransactionGauge,
}

impl Tx {
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

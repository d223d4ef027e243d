//! The event tables of a schema, and recording an event in the outbox.

use anyhow::Context;
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::db::check_schema;

/// The kit's tables in each service schema. `db::migrate` runs this before
/// the service's own migrations, on every start-up, so it must stay
/// idempotent: a later change to these tables is written as another
/// `... IF NOT EXISTS` statement appended here, never as an edit. They are
/// kept out of the service's sqlx history (`<schema>._sqlx_migrations`) so
/// that the kit and the service never number migrations against each other.
///
/// - `outbox`: one row per recorded event. `published_at` is set once the
///   broker confirmed the message. The partial index holds only unpublished
///   rows, in the order the relay reads them, so polling an outbox of
///   millions of published rows costs as much as polling an empty one.
///   Published rows are deleted after the relay's retention period.
/// - `inbox`: one row per event a consumer of this schema handled, written
///   in the handler's transaction; its primary key makes a second delivery
///   of the same event a no-op. The consumer (its queue name) is part of the
///   key because a schema may have several consumers that each must see the
///   event once.
const DDL: &str = r#"
CREATE TABLE IF NOT EXISTS {schema}.outbox (
    id uuid PRIMARY KEY,
    routing_key text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unpublished_idx
    ON {schema}.outbox (created_at, id) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_published_at_idx
    ON {schema}.outbox (published_at) WHERE published_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS {schema}.inbox (
    event_id uuid NOT NULL,
    consumer text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, consumer)
);
CREATE INDEX IF NOT EXISTS inbox_processed_at_idx ON {schema}.inbox (processed_at);
"#;

/// Creates `<schema>.outbox` and `<schema>.inbox` if they do not exist, in
/// one transaction. The schema must exist, and the caller must hold
/// `db::migrate`'s lock on it, since `IF NOT EXISTS` races with itself.
pub(crate) async fn create_tables(conn: &mut PgConnection, schema: &str) -> anyhow::Result<()> {
    use sqlx::Connection;

    check_schema(schema)?;
    let mut tx = conn.begin().await.context("failed to begin creating the event tables")?;
    sqlx::raw_sql(&DDL.replace("{schema}", schema))
        .execute(&mut *tx)
        .await
        .with_context(|| format!("failed to create the event tables of schema {schema}"))?;
    tx.commit().await.context("failed to commit the event tables")?;
    Ok(())
}

/// Records an event in `<schema>.outbox`, on the caller's open transaction,
/// and returns its id (a UUIDv7).
///
/// The event is published after the transaction commits, and never if it
/// rolls back. `routing_key` names the event, `<entity>.<what happened>`
/// (`transaction.created`, `budget.threshold_crossed`); consumers bind to
/// patterns of it. `payload` becomes the envelope's `data`: give it ids and
/// amounts as strings or integers, never floats.
///
/// ```no_run
/// # async fn example(db: freedumb_kit::db::Db) -> anyhow::Result<()> {
/// let mut tx = db.begin().await?;
/// // ... the state change, on tx.conn() ...
/// freedumb_kit::events::record(tx.conn(), "ledger", "transaction.created", &serde_json::json!({ "id": "..." }))
///     .await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub async fn record(
    conn: &mut PgConnection,
    schema: &str,
    routing_key: &str,
    payload: &impl Serialize,
) -> anyhow::Result<Uuid> {
    check_schema(schema)?;
    check_routing_key(routing_key)?;
    let payload = serde_json::to_string(payload).context("failed to serialise the event payload")?;
    let id = Uuid::now_v7();
    // The payload travels as text and is cast, which keeps sqlx's `json`
    // feature out of the build.
    sqlx::query(&format!("INSERT INTO {schema}.outbox (id, routing_key, payload) VALUES ($1, $2, $3::jsonb)"))
        .bind(id)
        .bind(routing_key)
        .bind(payload)
        .execute(conn)
        .await
        .with_context(|| format!("failed to record a {routing_key} event"))?;
    Ok(id)
}

/// A routing key is an AMQP short string of dot-separated words. `*` and `#`
/// are binding wildcards: in a published key they would only confuse.
fn check_routing_key(key: &str) -> anyhow::Result<()> {
    let valid = !key.is_empty()
        && key.len() <= 255
        && key.split('.').all(|word| {
            !word.is_empty()
                && word.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        });
    anyhow::ensure!(
        valid,
        "routing key {key:?} must be dot-separated words of lower-case letters, digits, '_' and '-', at most 255 bytes"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_are_dotted_words() {
        for good in ["transaction.created", "budget.threshold_crossed", "goal.reached", "a", "v2.x-y"] {
            assert!(check_routing_key(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "transaction.", "transaction.*", "a.#", "Transaction.Created", "a b", &"a".repeat(256)] {
            assert!(check_routing_key(bad).is_err(), "{bad}");
        }
    }
}

//! The consumers that keep the `analytics` schema's read models, one per
//! queue of [`crate::SUBSCRIPTIONS`].
//!
//! Whole-state events (accounts, transactions, budgets, recurring rules)
//! are applied only when newer than the row's `as_of`, the `occurred_at`
//! of the last event applied, so that any order of delivery converges on
//! the newest state; deletions leave tombstones that nothing revives.
//! `category.*` events are facts, each kept on its own terms (see
//! `ledger`).

pub mod budgets;
pub mod investments;
pub mod ledger;
pub mod transactions;

use anyhow::Context;
use freedumb_kit::events::{Event, HandleError};
use freedumb_kit::money::Currency;
use serde::Deserialize;

/// The payload version of every event this build understands.
const VERSION: u32 = 1;

#[derive(Deserialize)]
struct Versioned {
    /// Absent only in events recorded before payloads were versioned,
    /// which are version 1.
    #[serde(default = "first_version")]
    version: u32,
}

fn first_version() -> u32 {
    1
}

/// The payload as `T`, once its version is known to be one this build
/// reads. Another version is dead-lettered, to be replayed once analytics
/// understands it, rather than misread.
fn payload<T: serde::de::DeserializeOwned>(event: &Event) -> Result<T, HandleError> {
    let Versioned { version } = event.data_as()?;
    if version != VERSION {
        return Err(HandleError::poison(anyhow::anyhow!(
            "a {} event has payload version {version}, and analytics understands {VERSION}",
            event.kind
        )));
    }
    event.data_as()
}

/// A currency code from a payload; an unknown one is poison.
fn currency(event: &Event, code: &str) -> Result<Currency, HandleError> {
    Currency::from_code(code).ok_or_else(|| {
        HandleError::poison(anyhow::anyhow!("a {} event names the unknown currency {code:?}", event.kind))
    })
}

/// A whole-state row whose deletion `event` announces: a tombstone at the
/// event's time, created if the row was never seen, and final. Only the
/// owner's event touches a row (`table` and `key` are written in code).
async fn tombstone(
    conn: &mut sqlx::PgConnection,
    table: &str,
    key: &str,
    id: uuid::Uuid,
    user_id: uuid::Uuid,
    event: &Event,
) -> Result<(), HandleError> {
    sqlx::query(&format!(
        "INSERT INTO analytics.{table} AS t ({key}, user_id, as_of, deleted) VALUES ($1, $2, $3, true)
         ON CONFLICT ({key}) DO UPDATE SET deleted = true, as_of = GREATEST(t.as_of, EXCLUDED.as_of)
         WHERE t.user_id = EXCLUDED.user_id"
    ))
    .bind(id)
    .bind(user_id)
    .bind(event.occurred_at)
    .execute(conn)
    .await
    .with_context(|| format!("failed to apply a {} event", event.kind))?;
    Ok(())
}

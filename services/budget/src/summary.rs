//! Versions for the budget-summary cache.
//!
//! A summary is cached in Redis under the user's version number, which lives
//! in Postgres and is bumped in the same transaction as any change to the
//! user's budgets or spending. Event handlers run inside the kit's consumer
//! transaction and cannot act after its commit, so a Redis-side version
//! (bumped after commit) would not do; this one can never be bumped by a
//! transaction that then rolls back, nor seen before the change it marks.

use anyhow::Context;
use sqlx::PgConnection;
use uuid::Uuid;

/// `cache_key_prefix` of the summaries in the cache metrics.
pub const CACHE_PREFIX: &str = "budget_summary";

pub async fn bump(conn: &mut PgConnection, user_id: Uuid) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO budget.summary_versions (user_id, version) VALUES ($1, 1)
         ON CONFLICT (user_id) DO UPDATE SET version = budget.summary_versions.version + 1",
    )
    .bind(user_id)
    .execute(conn)
    .await
    .context("failed to bump a summary version")?;
    Ok(())
}

pub async fn version(conn: &mut PgConnection, user_id: Uuid) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT version FROM budget.summary_versions WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(conn)
        .await
        .context("failed to read a summary version")?
        .unwrap_or(0))
}

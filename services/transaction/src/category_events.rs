//! The `category.*` events: what other services learn of a user's
//! categories. The budget service keeps a projection of them (which
//! category belongs to whom, and which are gone) and refuses budgets on
//! categories that are not the caller's.
//!
//! Each is recorded in `ledger.outbox` in the transaction that made the
//! change. Every payload names the category and its owner, so a consumer can
//! act on any of them without having seen the others, in whatever order
//! they arrive. `version` is the version of the payload's contract: adding a
//! field keeps it, changing or removing one raises it. `docs/events.md` is
//! the reference; the migration `*_category_events.sql` writes
//! `category.created` in SQL too (the backfill) and must stay in step.

use anyhow::Context;
use freedumb_kit::db::Db;
use freedumb_kit::events::{SnapshotEvent, SnapshotStream};
use futures::StreamExt;
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::SCHEMA;

pub const CREATED: &str = "category.created";
pub const RENAMED: &str = "category.renamed";
pub const MERGED: &str = "category.merged";
pub const DELETED: &str = "category.deleted";

/// The version of every `category.*` payload.
pub const VERSION: u32 = 1;

/// `category.created`: a category exists, with this name, under this parent
/// (`null` for a top-level one).
#[derive(Debug, Serialize)]
pub struct Created<'a> {
    pub version: u32,
    pub category_id: Uuid,
    pub user_id: Uuid,
    pub name: &'a str,
    pub parent_id: Option<Uuid>,
}

impl<'a> Created<'a> {
    /// The one builder of the payload, for the live event and the snapshot.
    pub fn new(user_id: Uuid, category_id: Uuid, name: &'a str, parent_id: Option<Uuid>) -> Self {
        Created { version: VERSION, category_id, user_id, name, parent_id }
    }
}

/// `category.renamed`: the category has a new name.
#[derive(Debug, Serialize)]
pub struct Renamed<'a> {
    pub version: u32,
    pub category_id: Uuid,
    pub user_id: Uuid,
    pub name: &'a str,
}

/// `category.merged`: the category is gone; its transactions, splits and
/// subcategories now belong to `into_category_id`.
#[derive(Debug, Serialize)]
pub struct Merged {
    pub version: u32,
    pub category_id: Uuid,
    pub user_id: Uuid,
    pub into_category_id: Uuid,
}

/// `category.deleted`: the category is gone; its transactions are
/// uncategorised.
#[derive(Debug, Serialize)]
pub struct Deleted {
    pub version: u32,
    pub category_id: Uuid,
    pub user_id: Uuid,
}

pub async fn created(
    conn: &mut PgConnection,
    user_id: Uuid,
    category_id: Uuid,
    name: &str,
    parent_id: Option<Uuid>,
) -> anyhow::Result<()> {
    freedumb_kit::events::record(conn, SCHEMA, CREATED, &Created::new(user_id, category_id, name, parent_id)).await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct CategoryRow {
    id: Uuid,
    user_id: Uuid,
    name: String,
    parent_id: Option<Uuid>,
}

/// One `category.created` per category, streamed in id order (a
/// subcategory may come before its parent, as live events may arrive).
pub(crate) fn snapshot(db: &Db) -> SnapshotStream<'_> {
    sqlx::query_as::<_, CategoryRow>("SELECT id, user_id, name, parent_id FROM ledger.categories ORDER BY id")
        .fetch(&db.pool)
        .map(|row| {
            let row = row.context("failed to read a category for the snapshot")?;
            SnapshotEvent::new(CREATED, &Created::new(row.user_id, row.id, &row.name, row.parent_id))
        })
        .boxed()
}

pub async fn renamed(conn: &mut PgConnection, user_id: Uuid, category_id: Uuid, name: &str) -> anyhow::Result<()> {
    let payload = Renamed { version: VERSION, category_id, user_id, name };
    freedumb_kit::events::record(conn, SCHEMA, RENAMED, &payload).await?;
    Ok(())
}

pub async fn merged(
    conn: &mut PgConnection,
    user_id: Uuid,
    category_id: Uuid,
    into_category_id: Uuid,
) -> anyhow::Result<()> {
    let payload = Merged { version: VERSION, category_id, user_id, into_category_id };
    freedumb_kit::events::record(conn, SCHEMA, MERGED, &payload).await?;
    Ok(())
}

pub async fn deleted(conn: &mut PgConnection, user_id: Uuid, category_id: Uuid) -> anyhow::Result<()> {
    freedumb_kit::events::record(conn, SCHEMA, DELETED, &Deleted { version: VERSION, category_id, user_id }).await?;
    Ok(())
}

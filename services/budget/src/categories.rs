//! What budgets know of the ledger's categories: `budget.categories`, kept
//! from the transaction service's `category.*` events, and the check that a
//! budget's category is the caller's own.
//!
//! The projection holds only what budgets need: each category's owner, and
//! whether it is gone. Every event names the category and its owner, so
//! each is applied on its own, in any order: `created` and `renamed` add a
//! category that is missing, `merged` and `deleted` mark it removed for
//! good (a late `created` never revives it). Applying an event twice
//! changes nothing, on top of the consumer's inbox.
//!
//! **While the projection catches up.** A category reaches budgets a moment
//! after the ledger commits it (the relay's poll plus the consumer; well
//! under a second when both are healthy, longer while RabbitMQ is away).
//! Until then its id is unknown here, and a budget on it is refused like
//! any unknown id, with a 422 `unknown_category` whose message says to
//! retry. Accepting unknown ids instead would accept ids that will never
//! exist, which is the defect this check is for; another user's id and a
//! removed one get the same answer, so the answer says nothing about
//! categories that are not the caller's.

use anyhow::Context;
use axum::http::StatusCode;
use freedumb_kit::events::{Event, EventHandler, HandleError};
use freedumb_kit::{ApiError, ApiResult, FieldError};
use futures::future::BoxFuture;
use serde::Deserialize;
use sqlx::PgConnection;
use uuid::Uuid;

/// The purpose of the consumer of `category.*`: its queue is
/// `<exchange>.<deployment>.budget.categories`.
pub const CATEGORIES_QUEUE: &str = "budget.categories";

/// The payload versions this build understands (docs/events.md).
const VERSION: u32 = 1;

/// The fields of every `category.*` payload that budgets read. Services
/// share the contract, never the code.
#[derive(Debug, Deserialize)]
struct Category {
    version: u32,
    category_id: Uuid,
    user_id: Uuid,
}

/// `category.merged` also names the category that absorbed this one.
#[derive(Debug, Deserialize)]
struct Merged {
    into_category_id: Uuid,
}

pub struct Categories;

impl EventHandler for Categories {
    fn handle<'a>(&'a self, conn: &'a mut PgConnection, event: &'a Event) -> BoxFuture<'a, Result<(), HandleError>> {
        Box::pin(async move {
            let kind = event.kind.as_str();
            if !matches!(kind, "category.created" | "category.renamed" | "category.merged" | "category.deleted") {
                // Kinds added later are not ours to fail on.
                return Ok(());
            }
            let category: Category = event.data_as()?;
            if category.version != VERSION {
                // A contract this build does not know: dead-letter it, to be
                // replayed once budgets understand it, rather than guess.
                return Err(HandleError::poison(anyhow::anyhow!(
                    "a {kind} event has payload version {}, and budgets understand {VERSION}",
                    category.version
                )));
            }
            match kind {
                "category.created" | "category.renamed" => known(conn, category.category_id, category.user_id).await?,
                _ => {
                    if kind == "category.merged" {
                        // The category it merged into is the same user's and
                        // alive, whether or not its own event came first.
                        let merged: Merged = event.data_as()?;
                        known(conn, merged.into_category_id, category.user_id).await?;
                    }
                    removed(conn, category.category_id, category.user_id).await?;
                }
            }
            Ok(())
        })
    }
}

async fn known(conn: &mut PgConnection, id: Uuid, user_id: Uuid) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO budget.categories (id, user_id) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
        .bind(id)
        .bind(user_id)
        .execute(conn)
        .await
        .context("failed to record a category")?;
    Ok(())
}

async fn removed(conn: &mut PgConnection, id: Uuid, user_id: Uuid) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO budget.categories (id, user_id, removed_at) VALUES ($1, $2, now())
         ON CONFLICT (id) DO UPDATE SET removed_at = COALESCE(budget.categories.removed_at, now()), updated_at = now()",
    )
    .bind(id)
    .bind(user_id)
    .execute(conn)
    .await
    .context("failed to record a removed category")?;
    Ok(())
}

/// `Ok` if `category_id` is, as far as budgets know, a category of the
/// user's that still exists; otherwise the 422 described in the module doc.
pub(crate) async fn require_own(conn: &mut PgConnection, user_id: Uuid, category_id: Uuid) -> ApiResult<()> {
    let own: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM budget.categories WHERE id = $1 AND user_id = $2 AND removed_at IS NULL)",
    )
    .bind(category_id)
    .bind(user_id)
    .fetch_one(conn)
    .await
    .context("failed to look up a category")?;
    if own {
        return Ok(());
    }
    let problem = "no such category of yours; one created a moment ago may not have reached budgets yet, \
                   so retry in a few seconds";
    Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, UNKNOWN_CATEGORY, format!("category_id: {problem}"))
        .with_details(vec![FieldError::new("category_id", problem)]))
}

/// The error code of [`require_own`]'s refusal.
pub const UNKNOWN_CATEGORY: &str = "unknown_category";

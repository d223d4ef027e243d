//! `/v1/categories`: a default set for every user, custom ones, one level of
//! parent/child, rename, merge, delete.
//!
//! Defaults are created the first time a user touches categories, in the
//! same transaction that marks the user as done, so concurrent first
//! requests create them once.

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use freedumb_kit::auth::AuthUser;
use freedumb_kit::extract::{Json, Path};
use freedumb_kit::idempotency::{self, IdempotencyKey};
use freedumb_kit::{ApiError, ApiResult, ErrorBody};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::text::CategoryName;
use crate::{Ledger, SCHEMA, category_events, fingerprint, recurring_events};

pub(crate) fn router() -> OpenApiRouter<Ledger> {
    OpenApiRouter::new()
        .routes(routes!(list_categories, create_category))
        .routes(routes!(rename_category, delete_category))
        .routes(routes!(merge_category))
}

/// Every user's starting categories: top-level names and their children.
const DEFAULTS: &[(&str, &[&str])] = &[
    ("Income", &["Salary", "Interest", "Other income"]),
    ("Housing", &["Rent", "Utilities", "Maintenance"]),
    ("Food", &["Groceries", "Restaurants"]),
    ("Transport", &["Fuel", "Public transport"]),
    ("Health", &[]),
    ("Shopping", &[]),
    ("Entertainment", &[]),
    ("Travel", &[]),
    ("Education", &[]),
    ("Gifts", &[]),
    ("Fees", &[]),
];

#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Category {
    id: Uuid,
    name: String,
    /// The parent, for a subcategory.
    parent_id: Option<Uuid>,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CategoryList {
    items: Vec<Category>,
}

async fn ensure_defaults(conn: &mut PgConnection, user_id: Uuid) -> anyhow::Result<()> {
    let first = sqlx::query("INSERT INTO ledger.category_defaults (user_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(user_id)
        .execute(&mut *conn)
        .await
        .context("failed to mark default categories")?
        .rows_affected()
        == 1;
    if !first {
        return Ok(());
    }
    for (parent, children) in DEFAULTS {
        let parent_id = Uuid::now_v7();
        insert(conn, user_id, parent_id, parent, None).await?;
        for child in *children {
            insert(conn, user_id, Uuid::now_v7(), child, Some(parent_id)).await?;
        }
    }
    Ok(())
}

async fn insert(
    conn: &mut PgConnection,
    user_id: Uuid,
    id: Uuid,
    name: &str,
    parent_id: Option<Uuid>,
) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO ledger.categories (id, user_id, name, parent_id) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(user_id)
        .bind(name)
        .bind(parent_id)
        .execute(&mut *conn)
        .await
        .context("failed to insert a category")?;
    category_events::created(conn, user_id, id, name, parent_id).await
}

/// The caller's category, or 404.
pub(crate) async fn find(conn: &mut PgConnection, user_id: Uuid, id: Uuid) -> ApiResult<Category> {
    sqlx::query_as("SELECT id, name, parent_id, created_at FROM ledger.categories WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user_id)
        .fetch_optional(conn)
        .await
        .context("failed to load a category")?
        .ok_or_else(|| ApiError::not_found("no such category"))
}

/// The caller's category for a field of a request. Unknown ids and other
/// users' ids alike are a 404 naming the field.
pub(crate) async fn require(conn: &mut PgConnection, user_id: Uuid, field: &str, id: Uuid) -> ApiResult<Category> {
    match find(conn, user_id, id).await {
        Err(err) if err.status() == StatusCode::NOT_FOUND => {
            Err(ApiError::not_found(format!("{field}: no such category")))
        }
        other => other,
    }
}

fn name_taken(err: &sqlx::Error) -> bool {
    err.as_database_error().and_then(|e| e.constraint()) == Some("categories_name_idx")
}

/// The caller's categories, parents before their children.
#[utoipa::path(get, path = "/v1/categories", tag = "categories", security(("bearer" = [])),
    responses((status = 200, body = CategoryList), (status = "4XX", body = ErrorBody)))]
async fn list_categories(State(state): State<Ledger>, user: AuthUser) -> ApiResult<Json<CategoryList>> {
    let mut tx = state.platform.db.begin().await.context("failed to begin")?;
    ensure_defaults(tx.conn(), user.user_id).await?;
    let items = sqlx::query_as(
        "SELECT c.id, c.name, c.parent_id, c.created_at FROM ledger.categories c
         LEFT JOIN ledger.categories p ON p.id = c.parent_id
         WHERE c.user_id = $1
         ORDER BY lower(COALESCE(p.name, c.name)), c.parent_id NULLS FIRST, lower(c.name)",
    )
    .bind(user.user_id)
    .fetch_all(tx.conn())
    .await
    .context("failed to list categories")?;
    tx.commit().await.context("failed to commit")?;
    Ok(Json(CategoryList { items }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCategory {
    #[schema(example = "Coffee")]
    name: CategoryName,
    /// A top-level category to nest under.
    parent_id: Option<Uuid>,
}

/// Adds a category.
#[utoipa::path(post, path = "/v1/categories", tag = "categories", security(("bearer" = [])), request_body = CreateCategory,
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key and body return the first answer")),
    responses((status = 201, body = Category), (status = 409, body = ErrorBody, description = "the name exists among its siblings"),
        (status = "4XX", body = ErrorBody)))]
async fn create_category(
    State(state): State<Ledger>,
    user: AuthUser,
    key: IdempotencyKey,
    Json(req): Json<CreateCategory>,
) -> ApiResult<axum::response::Response> {
    let name = req.name.to_string();
    let fp = fingerprint("POST /v1/categories", &req);
    idempotency::run(&state.platform.db, SCHEMA, user.user_id, &key, &fp, move |tx| {
        Box::pin(async move {
            ensure_defaults(tx.conn(), user.user_id).await?;
            if let Some(parent_id) = req.parent_id {
                let parent = require(tx.conn(), user.user_id, "parent_id", parent_id).await?;
                if parent.parent_id.is_some() {
                    return Err(ApiError::field(
                        "parent_id",
                        "categories nest one level deep: the parent must be a top-level category",
                    ));
                }
            }
            let id = Uuid::now_v7();
            let inserted =
                sqlx::query("INSERT INTO ledger.categories (id, user_id, name, parent_id) VALUES ($1, $2, $3, $4)")
                    .bind(id)
                    .bind(user.user_id)
                    .bind(&name)
                    .bind(req.parent_id)
                    .execute(tx.conn())
                    .await;
            match inserted {
                Err(err) if name_taken(&err) => {
                    return Err(ApiError::conflict("category_exists", "a category with this name already exists here"));
                }
                other => other.context("failed to insert a category")?,
            };
            category_events::created(tx.conn(), user.user_id, id, &name, req.parent_id).await?;
            let category = find(tx.conn(), user.user_id, id).await?;
            Ok((StatusCode::CREATED, serde_json::to_value(category).context("serialise")?))
        })
    })
    .await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameCategory {
    name: CategoryName,
}

/// Renames a category.
#[utoipa::path(patch, path = "/v1/categories/{id}", tag = "categories", security(("bearer" = [])), params(("id" = Uuid, Path)),
    request_body = RenameCategory, responses((status = 200, body = Category), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = "4XX", body = ErrorBody)))]
async fn rename_category(
    State(state): State<Ledger>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Json(req): Json<RenameCategory>,
) -> ApiResult<Json<Category>> {
    let name = req.name.to_string();
    let mut tx = state.platform.db.begin().await.context("failed to begin")?;
    find(tx.conn(), user.user_id, id).await?;
    let renamed = sqlx::query("UPDATE ledger.categories SET name = $3 WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user.user_id)
        .bind(&name)
        .execute(tx.conn())
        .await;
    match renamed {
        Err(err) if name_taken(&err) => {
            return Err(ApiError::conflict("category_exists", "a category with this name already exists here"));
        }
        other => other.context("failed to rename a category")?,
    };
    category_events::renamed(tx.conn(), user.user_id, id, &name).await?;
    let category = find(tx.conn(), user.user_id, id).await?;
    tx.commit().await.context("failed to commit")?;
    Ok(Json(category))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeCategory {
    /// The category that absorbs this one.
    into: Uuid,
}

/// Merges this category into another: its transactions, splits and
/// subcategories move there, and it is deleted.
#[utoipa::path(post, path = "/v1/categories/{id}/merge", tag = "categories", security(("bearer" = [])), params(("id" = Uuid, Path)),
    request_body = MergeCategory, responses((status = 200, body = Category), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = "4XX", body = ErrorBody)))]
async fn merge_category(
    State(state): State<Ledger>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Json(req): Json<MergeCategory>,
) -> ApiResult<Json<Category>> {
    let mut tx = state.platform.db.begin().await.context("failed to begin")?;
    find(tx.conn(), user.user_id, id).await?;
    if req.into == id {
        return Err(ApiError::field("into", "cannot merge a category into itself"));
    }
    let target = require(tx.conn(), user.user_id, "into", req.into).await?;
    let has_children: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM ledger.categories WHERE parent_id = $1)")
        .bind(id)
        .fetch_one(tx.conn())
        .await
        .context("failed to look for subcategories")?;
    if has_children && target.parent_id.is_some() {
        return Err(ApiError::conflict(
            "category_has_children",
            "a category with subcategories can only merge into a top-level category",
        ));
    }
    if target.parent_id == Some(id) {
        return Err(ApiError::field("into", "cannot merge a category into its own subcategory"));
    }
    for sql in [
        "UPDATE ledger.transactions SET category_id = $2, updated_at = now() WHERE category_id = $1",
        "UPDATE ledger.transaction_splits SET category_id = $2 WHERE category_id = $1",
    ] {
        sqlx::query(sql).bind(id).bind(req.into).execute(tx.conn()).await.context("failed to move transactions")?;
    }
    let moved = sqlx::query("UPDATE ledger.categories SET parent_id = $2 WHERE parent_id = $1")
        .bind(id)
        .bind(req.into)
        .execute(tx.conn())
        .await;
    match moved {
        Err(err) if name_taken(&err) => {
            return Err(ApiError::conflict("category_exists", "a subcategory's name already exists under the target"));
        }
        other => other.context("failed to move subcategories")?,
    };
    let rules = rules_on(tx.conn(), id).await?;
    sqlx::query("DELETE FROM ledger.categories WHERE id = $1")
        .bind(id)
        .execute(tx.conn())
        .await
        .context("failed to delete a category")?;
    category_events::merged(tx.conn(), user.user_id, id, req.into).await?;
    rules_changed(tx.conn(), &rules).await?;
    tx.commit().await.context("failed to commit")?;
    Ok(Json(target))
}

/// Deletes a category; its transactions become uncategorised. A category
/// with subcategories must be emptied or merged first.
#[utoipa::path(delete, path = "/v1/categories/{id}", tag = "categories", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = "4XX", body = ErrorBody)))]
async fn delete_category(State(state): State<Ledger>, user: AuthUser, Path(id): Path<Uuid>) -> ApiResult<StatusCode> {
    let mut tx = state.platform.db.begin().await.context("failed to begin")?;
    find(tx.conn(), user.user_id, id).await?;
    let rules = rules_on(tx.conn(), id).await?;
    let deleted = sqlx::query("DELETE FROM ledger.categories WHERE id = $1").bind(id).execute(tx.conn()).await;
    match deleted {
        Err(err) if err.as_database_error().is_some_and(|e| e.is_foreign_key_violation()) => {
            return Err(ApiError::conflict("category_has_children", "delete or merge its subcategories first"));
        }
        other => other.context("failed to delete a category")?,
    };
    category_events::deleted(tx.conn(), user.user_id, id).await?;
    rules_changed(tx.conn(), &rules).await?;
    tx.commit().await.context("failed to commit")?;
    Ok(StatusCode::NO_CONTENT)
}

/// The recurring rules on a category, which its deletion uncategorises
/// (`ON DELETE SET NULL`).
async fn rules_on(conn: &mut PgConnection, category_id: Uuid) -> anyhow::Result<Vec<Uuid>> {
    sqlx::query_scalar("SELECT id FROM ledger.recurring_rules WHERE category_id = $1 ORDER BY id")
        .bind(category_id)
        .fetch_all(conn)
        .await
        .context("failed to find the recurring rules on a category")
}

/// A rule's `recurring.updated` after its category went: its whole state
/// changed (`category_id` is now null), which the category event alone
/// does not say.
async fn rules_changed(conn: &mut PgConnection, rules: &[Uuid]) -> anyhow::Result<()> {
    for rule in rules {
        recurring_events::changed(conn, recurring_events::UPDATED, *rule).await?;
    }
    Ok(())
}

//! `/v1/portfolios`: create, list, get, rename or change the cost method,
//! delete. A portfolio's base currency is fixed at creation: every base
//! amount in it was converted into that currency.

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use freedumb_kit::auth::AuthUser;
use freedumb_kit::extract::{Json, Path};
use freedumb_kit::idempotency::{self, IdempotencyKey, fingerprint};
use freedumb_kit::money::Currency;
use freedumb_kit::{ApiError, ApiResult, FieldError};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::lots::CostMethod;
use crate::text::PortfolioName;
use crate::{Investments, SCHEMA, activities};

pub(crate) fn router() -> OpenApiRouter<Investments> {
    OpenApiRouter::new().routes(routes!(create_portfolio, list_portfolios)).routes(routes!(
        get_portfolio,
        update_portfolio,
        delete_portfolio
    ))
}

pub const PORTFOLIO_UPDATED: &str = "investment.portfolio_updated";
pub const PORTFOLIO_DELETED: &str = "investment.portfolio_deleted";

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct PortfolioRow {
    pub id: Uuid,
    name: String,
    base_currency: String,
    cost_method: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl PortfolioRow {
    pub fn base(&self) -> anyhow::Result<Currency> {
        Currency::from_code(&self.base_currency)
            .with_context(|| format!("portfolio {} has unknown currency {}", self.id, self.base_currency))
    }

    pub fn method(&self) -> anyhow::Result<CostMethod> {
        CostMethod::from_db(&self.cost_method)
    }

    fn into_portfolio(self) -> anyhow::Result<Portfolio> {
        Ok(Portfolio {
            id: self.id,
            base_currency: self.base()?.code().to_owned(),
            cost_method: self.method()?,
            name: self.name,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Portfolio {
    id: Uuid,
    name: String,
    /// Every base amount of the portfolio is in this currency.
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    base_currency: String,
    cost_method: CostMethod,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const SELECT: &str = "SELECT id, name, base_currency, cost_method, created_at, updated_at FROM investment.portfolios";

/// The caller's portfolio, or 404: another user's does not exist for them.
/// `lock` takes the row for the transaction, which serialises the writes
/// that rebuild the portfolio's lots.
pub(crate) async fn find(conn: &mut PgConnection, user_id: Uuid, id: Uuid, lock: bool) -> ApiResult<PortfolioRow> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    sqlx::query_as(&format!("{SELECT} WHERE id = $1 AND user_id = $2{lock}"))
        .bind(id)
        .bind(user_id)
        .fetch_optional(conn)
        .await
        .context("failed to load a portfolio")?
        .ok_or_else(|| ApiError::not_found("no such portfolio"))
}

/// The caller's portfolios, oldest first.
pub(crate) async fn all(conn: &mut PgConnection, user_id: Uuid) -> ApiResult<Vec<PortfolioRow>> {
    Ok(sqlx::query_as(&format!("{SELECT} WHERE user_id = $1 ORDER BY created_at, id"))
        .bind(user_id)
        .fetch_all(conn)
        .await
        .context("failed to list portfolios")?)
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePortfolio {
    #[schema(example = "Retirement")]
    name: PortfolioName,
    /// The currency values, costs and gains are added up in.
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode, example = "EUR")]
    base_currency: String,
    /// Default `fifo`.
    cost_method: Option<CostMethod>,
}

/// The payload of `investment.portfolio_updated` and
/// `investment.portfolio_deleted` (docs/events.md).
#[derive(Debug, Serialize)]
struct PortfolioEvent<'a> {
    version: u32,
    portfolio_id: Uuid,
    user_id: Uuid,
    base_currency: &'a str,
    cost_method: &'a str,
}

/// Opens a portfolio.
#[utoipa::path(post, path = "/v1/portfolios", tag = "portfolios", security(("bearer" = [])), request_body = CreatePortfolio,
    params(IdempotencyKey), responses((status = 201, body = Portfolio)))]
async fn create_portfolio(
    State(state): State<Investments>,
    user: AuthUser,
    key: IdempotencyKey,
    Json(req): Json<CreatePortfolio>,
) -> ApiResult<axum::response::Response> {
    let base = Currency::from_code(req.base_currency.trim()).ok_or_else(|| {
        ApiError::validation(vec![FieldError::new("base_currency", "must be a supported ISO 4217 code")])
    })?;
    let fp = fingerprint("POST /v1/portfolios", &req);
    idempotency::run(&state.platform.db, SCHEMA, user.user_id, &key, &fp, move |tx| {
        Box::pin(async move {
            let id = Uuid::now_v7();
            let method = req.cost_method.unwrap_or(CostMethod::Fifo);
            sqlx::query(
                "INSERT INTO investment.portfolios (id, user_id, name, base_currency, cost_method) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(user.user_id)
            .bind(req.name.as_str())
            .bind(base.code())
            .bind(method.as_str())
            .execute(tx.conn())
            .await
            .context("failed to insert a portfolio")?;
            let portfolio = find(tx.conn(), user.user_id, id, false).await?.into_portfolio()?;
            Ok((StatusCode::CREATED, serde_json::to_value(portfolio).context("serialise")?))
        })
    })
    .await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PortfolioList {
    items: Vec<Portfolio>,
}

/// The caller's portfolios, oldest first.
#[utoipa::path(get, path = "/v1/portfolios", tag = "portfolios", security(("bearer" = [])),
    responses((status = 200, body = PortfolioList)))]
async fn list_portfolios(State(state): State<Investments>, user: AuthUser) -> ApiResult<Json<PortfolioList>> {
    let mut conn = state.platform.db.pool.acquire().await.context("failed to get a connection")?;
    let rows = all(&mut conn, user.user_id).await?;
    let items = rows.into_iter().map(PortfolioRow::into_portfolio).collect::<anyhow::Result<_>>()?;
    Ok(Json(PortfolioList { items }))
}

/// One portfolio.
#[utoipa::path(get, path = "/v1/portfolios/{id}", tag = "portfolios", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Portfolio)))]
async fn get_portfolio(
    State(state): State<Investments>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Portfolio>> {
    let mut conn = state.platform.db.pool.acquire().await.context("failed to get a connection")?;
    Ok(Json(find(&mut conn, user.user_id, id, false).await?.into_portfolio()?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePortfolio {
    name: Option<PortfolioName>,
    /// A new method re-measures every sale already recorded: its cost and
    /// realised gain, and the cost of what is still held.
    cost_method: Option<CostMethod>,
}

/// Renames a portfolio or changes its cost method. The base currency cannot
/// change: every base amount in it was converted into that currency.
#[utoipa::path(patch, path = "/v1/portfolios/{id}", tag = "portfolios", security(("bearer" = [])), params(("id" = Uuid, Path)),
    request_body = UpdatePortfolio, responses((status = 200, body = Portfolio)))]
async fn update_portfolio(
    State(state): State<Investments>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Json(req): Json<UpdatePortfolio>,
) -> ApiResult<Json<Portfolio>> {
    let mut tx = state.platform.db.begin().await.context("failed to begin")?;
    let current = find(tx.conn(), user.user_id, id, true).await?;
    sqlx::query(
        "UPDATE investment.portfolios SET name = COALESCE($3, name), cost_method = COALESCE($4, cost_method), updated_at = now()
         WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(user.user_id)
    .bind(req.name.as_ref().map(|n| n.as_str()))
    .bind(req.cost_method.map(CostMethod::as_str))
    .execute(tx.conn())
    .await
    .context("failed to update a portfolio")?;
    let updated = find(tx.conn(), user.user_id, id, false).await?;
    if updated.method()? != current.method()? {
        // Only the method changed how sales are measured; no sale can
        // become an oversell by it, since quantities do not depend on it.
        activities::rebuild_portfolio(tx.conn(), &updated).await?;
    }
    let event = PortfolioEvent {
        version: 1,
        portfolio_id: id,
        user_id: user.user_id,
        base_currency: &updated.base_currency,
        cost_method: &updated.cost_method,
    };
    freedumb_kit::events::record(tx.conn(), SCHEMA, PORTFOLIO_UPDATED, &event).await?;
    let portfolio = updated.into_portfolio()?;
    tx.commit().await.context("failed to commit")?;
    Ok(Json(portfolio))
}

/// Deletes a portfolio with its activities, lots and disposals.
#[utoipa::path(delete, path = "/v1/portfolios/{id}", tag = "portfolios", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 204, description = "deleted")))]
async fn delete_portfolio(
    State(state): State<Investments>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    let mut tx = state.platform.db.begin().await.context("failed to begin")?;
    let current = find(tx.conn(), user.user_id, id, true).await?;
    sqlx::query("DELETE FROM investment.portfolios WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user.user_id)
        .execute(tx.conn())
        .await
        .context("failed to delete a portfolio")?;
    let event = PortfolioEvent {
        version: 1,
        portfolio_id: id,
        user_id: user.user_id,
        base_currency: &current.base_currency,
        cost_method: &current.cost_method,
    };
    freedumb_kit::events::record(tx.conn(), SCHEMA, PORTFOLIO_DELETED, &event).await?;
    tx.commit().await.context("failed to commit")?;
    Ok(StatusCode::NO_CONTENT)
}

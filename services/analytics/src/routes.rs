//! `/v1/analytics/*`: the views of [`crate::queries`] over HTTP, for the
//! signed-in user. Every answer is per currency, never converted, with
//! money as decimal strings.

use anyhow::Context;
use axum::extract::State;
use freedumb_kit::auth::AuthUser;
use freedumb_kit::date::IsoDate;
use freedumb_kit::extract::{Json, Query};
use freedumb_kit::{ApiError, ApiResult, ErrorBody};
use serde::Deserialize;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AnalyticsState;
use crate::queries::{self, Interval, MAX_PAYEES, MAX_PROJECTION_DAYS};
use crate::range::{Range, RangeQuery};

pub(crate) fn router() -> OpenApiRouter<AnalyticsState> {
    OpenApiRouter::new()
        .routes(routes!(spending_by_category))
        .routes(routes!(spending_by_payee))
        .routes(routes!(income_expense))
        .routes(routes!(cash_flow))
        .routes(routes!(net_worth))
        .routes(routes!(budgets))
        .routes(routes!(summary))
        .routes(routes!(projection))
}

/// Why a range is refused (the 422 of every range view).
const RANGE_RULES: &str = "`to` is before `from`, or more than 3 years (36 months) after it; `details` names `to`";

async fn connection(state: &AnalyticsState) -> ApiResult<PoolConnection<Postgres>> {
    Ok(state.platform.db.pool.acquire().await.context("failed to get a connection")?)
}

/// Spending per category, each top-level category with its subcategories
/// rolled up into it (its own amount, its children's, and the total), and
/// uncategorised spending as a row of its own. Spending is money out minus
/// money in (refunds); transfers between the user's accounts are not
/// spending. Per currency.
#[utoipa::path(get, path = "/v1/analytics/spending/categories", tag = "analytics", security(("bearer" = [])),
    params(RangeQuery),
    responses((status = 200, body = queries::CategorySpending), (status = 422, body = ErrorBody, description = RANGE_RULES)))]
async fn spending_by_category(
    State(state): State<AnalyticsState>,
    user: AuthUser,
    Query(q): Query<RangeQuery>,
) -> ApiResult<Json<queries::CategorySpending>> {
    let range = q.range()?;
    let mut conn = connection(&state).await?;
    Ok(Json(queries::spending_by_category(&mut conn, user.user_id, range).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PayeeQuery {
    /// The first day, included.
    #[param(inline)]
    from: IsoDate,
    /// The last day, included; on or after `from`, at most 3 years after it.
    #[param(inline)]
    to: IsoDate,
    /// The most payees per currency; default 10.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<u32>,
}

/// Spending per payee, largest first: the top payees. Payees that differ
/// only in case or spacing are one; transfers are left out. Per currency.
#[utoipa::path(get, path = "/v1/analytics/spending/payees", tag = "analytics", security(("bearer" = [])),
    params(PayeeQuery),
    responses((status = 200, body = queries::PayeeSpending),
        (status = 422, body = ErrorBody, description = "`to` is before `from` or more than 3 years after it, or `limit` is not 1 to 100; `details` names the parameter")))]
async fn spending_by_payee(
    State(state): State<AnalyticsState>,
    user: AuthUser,
    Query(q): Query<PayeeQuery>,
) -> ApiResult<Json<queries::PayeeSpending>> {
    let range = Range::new(q.from, q.to)?;
    let limit = q.limit.unwrap_or(10);
    if !(1..=MAX_PAYEES).contains(&limit) {
        return Err(ApiError::field("limit", format!("must be 1 to {MAX_PAYEES}")));
    }
    let mut conn = connection(&state).await?;
    Ok(Json(queries::spending_by_payee(&mut conn, user.user_id, range, limit).await?))
}

/// Income against expense per calendar month (every month the range
/// touches, zeros included), and over the whole range. Transfers are
/// neither. Per currency.
#[utoipa::path(get, path = "/v1/analytics/income-expense", tag = "analytics", security(("bearer" = [])),
    params(RangeQuery),
    responses((status = 200, body = queries::IncomeExpense), (status = 422, body = ErrorBody, description = RANGE_RULES)))]
async fn income_expense(
    State(state): State<AnalyticsState>,
    user: AuthUser,
    Query(q): Query<RangeQuery>,
) -> ApiResult<Json<queries::IncomeExpense>> {
    let range = q.range()?;
    let mut conn = connection(&state).await?;
    Ok(Json(queries::income_expense(&mut conn, user.user_id, range).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CashFlowQuery {
    /// The first day, included.
    #[param(inline)]
    from: IsoDate,
    /// The last day, included; on or after `from`, at most 3 years after it.
    #[param(inline)]
    to: IsoDate,
    /// The length of a period: `day`, `week` (ISO, Monday first) or
    /// `month`; default `month`.
    #[param(inline)]
    interval: Option<Interval>,
}

/// Money in, money out, transfers, the net change and the closing balance
/// of the user's accounts per period. Investments are not in it (see
/// net worth). Per currency.
#[utoipa::path(get, path = "/v1/analytics/cash-flow", tag = "analytics", security(("bearer" = [])),
    params(CashFlowQuery),
    responses((status = 200, body = queries::CashFlow), (status = 422, body = ErrorBody, description = RANGE_RULES)))]
async fn cash_flow(
    State(state): State<AnalyticsState>,
    user: AuthUser,
    Query(q): Query<CashFlowQuery>,
) -> ApiResult<Json<queries::CashFlow>> {
    let range = Range::new(q.from, q.to)?;
    let mut conn = connection(&state).await?;
    Ok(Json(queries::cash_flow(&mut conn, user.user_id, range, q.interval.unwrap_or_default()).await?))
}

/// Net worth per day: the accounts' balances (opening balances plus every
/// transaction up to the day) and each portfolio's latest valuation on or
/// before the day. Per currency: a portfolio counts in its base currency.
#[utoipa::path(get, path = "/v1/analytics/net-worth", tag = "analytics", security(("bearer" = [])),
    params(RangeQuery),
    responses((status = 200, body = queries::NetWorth), (status = 422, body = ErrorBody, description = RANGE_RULES)))]
async fn net_worth(
    State(state): State<AnalyticsState>,
    user: AuthUser,
    Query(q): Query<RangeQuery>,
) -> ApiResult<Json<queries::NetWorth>> {
    let range = q.range()?;
    let mut conn = connection(&state).await?;
    Ok(Json(queries::net_worth(&mut conn, user.user_id, range).await?))
}

/// Each budget's periods that overlap the range, budgeted against actual:
/// what was spent on the category and its subcategories, in the budget's
/// currency, with rollover as the budget service counts it.
#[utoipa::path(get, path = "/v1/analytics/budgets", tag = "analytics", security(("bearer" = [])),
    params(RangeQuery),
    responses((status = 200, body = queries::BudgetsActual), (status = 422, body = ErrorBody, description = RANGE_RULES)))]
async fn budgets(
    State(state): State<AnalyticsState>,
    user: AuthUser,
    Query(q): Query<RangeQuery>,
) -> ApiResult<Json<queries::BudgetsActual>> {
    let range = q.range()?;
    let mut conn = connection(&state).await?;
    Ok(Json(queries::budgets(&mut conn, user.user_id, range).await?))
}

/// Income, expense, net and the top five categories for the range, each
/// against the range of equal length just before it, with the change in
/// money and in percent (null when the previous was zero). Per currency.
#[utoipa::path(get, path = "/v1/analytics/summary", tag = "analytics", security(("bearer" = [])),
    params(RangeQuery),
    responses((status = 200, body = queries::Summary), (status = 422, body = ErrorBody, description = RANGE_RULES)))]
async fn summary(
    State(state): State<AnalyticsState>,
    user: AuthUser,
    Query(q): Query<RangeQuery>,
) -> ApiResult<Json<queries::Summary>> {
    let range = q.range()?;
    let mut conn = connection(&state).await?;
    Ok(Json(queries::summary(&mut conn, user.user_id, range).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProjectionQuery {
    /// How many days after today to project; default 90.
    #[param(minimum = 1, maximum = 365)]
    days: Option<u16>,
}

/// The balance per currency for each of the next `days` days, from
/// today's balances and the future occurrences of the active recurring
/// rules, which it lists.
#[utoipa::path(get, path = "/v1/analytics/projection", tag = "analytics", security(("bearer" = [])),
    params(ProjectionQuery),
    responses((status = 200, body = queries::Projection),
        (status = 422, body = ErrorBody, description = "`days` is not 1 to 365; `details` names it")))]
async fn projection(
    State(state): State<AnalyticsState>,
    user: AuthUser,
    Query(q): Query<ProjectionQuery>,
) -> ApiResult<Json<queries::Projection>> {
    let days = q.days.unwrap_or(90);
    if !(1..=MAX_PROJECTION_DAYS).contains(&days) {
        return Err(ApiError::field("days", format!("must be 1 to {MAX_PROJECTION_DAYS}")));
    }
    let mut conn = connection(&state).await?;
    Ok(Json(queries::projection(&mut conn, user.user_id, IsoDate::today(), days).await?))
}

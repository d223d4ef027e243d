//! `/v1/budgets`: an amount per category per period, and how much of it is
//! spent.
//!
//! Spending comes from `budget.spending`, which the transaction events keep
//! current (see `spending`). A budget on a parent category counts its
//! subcategories too. Only transactions in the budget's currency count.
//! With rollover, what was left (or overspent) in earlier periods since the
//! budget began is added to this period's amount. Each change records its
//! `budget.*` event (see `budget_events`) in its transaction.

use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, NaiveDate, Utc};
use freedumb_kit::auth::AuthUser;
use freedumb_kit::date::IsoDate;
use freedumb_kit::extract::{Json, Path, Query};
use freedumb_kit::idempotency::{self, IdempotencyKey};
use freedumb_kit::money::Currency;
use freedumb_kit::{ApiError, ApiResult, ErrorBody, FieldError, FieldErrors};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use freedumb_kit::period::Period;

use crate::{BudgetState, SCHEMA, budget_events, fingerprint, stored_date, summary};

pub(crate) fn router() -> OpenApiRouter<BudgetState> {
    OpenApiRouter::new().routes(routes!(create_budget, list_budgets)).routes(routes!(
        get_budget,
        update_budget,
        delete_budget
    ))
}

/// Where `budget.threshold_crossed` fires, in percent of the budgeted amount.
pub const THRESHOLDS: [i16; 2] = [80, 100];

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct BudgetRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub category_id: Uuid,
    pub currency: String,
    pub amount: i64,
    pub period: Period,
    pub rollover: bool,
    pub starts_on: NaiveDate,
    pub created_at: DateTime<Utc>,
}

/// A budget as of one period.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BudgetStatus {
    id: Uuid,
    category_id: Uuid,
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    currency: String,
    period: Period,
    /// The amount per period, as set.
    #[schema(value_type = freedumb_kit::openapi::PositiveAmount)]
    amount: String,
    rollover: bool,
    period_start: IsoDate,
    /// The last day of the period, inclusive; 9999-12-31 for the one period
    /// that runs past it (the ISO week of 9999-12-31 ends on 10000-01-02, a
    /// date the API does not write, and nothing can be spent after
    /// 9999-12-31).
    period_end: IsoDate,
    /// This period's amount plus, with rollover, what earlier periods left
    /// over (or minus what they overspent).
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    budgeted: String,
    /// Money out minus refunds in the period.
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    spent: String,
    /// Budgeted minus spent; negative when overspent.
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    remaining: String,
    /// Spent as a percentage of budgeted, one decimal; null when nothing is budgeted.
    #[schema(example = "82.0", pattern = r"^-?[0-9]+\.[0-9]$")]
    percent_used: Option<String>,
    created_at: DateTime<Utc>,
}

/// The numbers behind a status, in minor units.
pub(crate) struct Measured {
    pub period_start: IsoDate,
    pub budgeted: i64,
    pub spent: i64,
    /// Tenths of a percent, or `None` when nothing is budgeted.
    pub per_mille: Option<i64>,
}

impl Measured {
    /// Whether `threshold` percent is reached.
    pub fn reached(&self, threshold: i16) -> bool {
        match self.per_mille {
            Some(per_mille) => per_mille >= i64::from(threshold) * 10,
            None => self.spent > 0,
        }
    }
}

/// Money out in `[from, to)` for the category (and its subcategories).
async fn spent(conn: &mut PgConnection, row: &BudgetRow, from: IsoDate, to: NaiveDate) -> anyhow::Result<i64> {
    sqlx::query_scalar(
        "SELECT COALESCE(-SUM(amount), 0)::bigint FROM budget.spending
         WHERE user_id = $1 AND currency = $2 AND (category_id = $3 OR parent_category_id = $3) AND date >= $4 AND date < $5",
    )
    .bind(row.user_id)
    .bind(&row.currency)
    .bind(row.category_id)
    .bind(from.get())
    .bind(to)
    .fetch_one(conn)
    .await
    .context("failed to sum spending")
}

pub(crate) async fn measure(conn: &mut PgConnection, row: &BudgetRow, date: IsoDate) -> anyhow::Result<Measured> {
    let period_start = row.period.start_of(date);
    let next = row.period.next(period_start);
    let spent_now = spent(conn, row, period_start, next).await?;
    let first = row.period.start_of(stored_date(row.starts_on));
    let carried = if row.rollover && period_start > first {
        let periods = row.period.count_between(first, period_start);
        let spent_before = spent(conn, row, first, period_start.get()).await?;
        row.amount.saturating_mul(periods).saturating_sub(spent_before)
    } else {
        0
    };
    let budgeted = row.amount.saturating_add(carried);
    let per_mille =
        (budgeted > 0).then(|| i64::try_from(i128::from(spent_now) * 1000 / i128::from(budgeted)).unwrap_or(i64::MAX));
    Ok(Measured { period_start, budgeted, spent: spent_now, per_mille })
}

pub(crate) async fn status(conn: &mut PgConnection, row: &BudgetRow, date: IsoDate) -> anyhow::Result<BudgetStatus> {
    let currency = Currency::from_code(&row.currency).with_context(|| format!("unknown currency {}", row.currency))?;
    let m = measure(conn, row, date).await?;
    let period_end = row.period.last_day(m.period_start);
    Ok(BudgetStatus {
        id: row.id,
        category_id: row.category_id,
        currency: row.currency.clone(),
        period: row.period,
        amount: currency.format(row.amount),
        rollover: row.rollover,
        period_start: m.period_start,
        period_end,
        budgeted: currency.format(m.budgeted),
        spent: currency.format(m.spent),
        remaining: currency.format(m.budgeted.saturating_sub(m.spent)),
        percent_used: m.per_mille.map(|p| format!("{}{}.{}", if p < 0 { "-" } else { "" }, p.abs() / 10, p.abs() % 10)),
        created_at: row.created_at,
    })
}

macro_rules! select {
    () => {
        "SELECT id, user_id, category_id, currency, amount, period, rollover, starts_on, created_at FROM budget.budgets"
    };
}
const SELECT: &str = select!();
/// Every budget, for the snapshot: the rows the live events are built from.
pub(crate) const SELECT_ALL_BY_ID: &str = concat!(select!(), " ORDER BY id");

async fn find(conn: &mut PgConnection, user_id: Uuid, id: Uuid) -> ApiResult<BudgetRow> {
    sqlx::query_as(&format!("{SELECT} WHERE id = $1 AND user_id = $2"))
        .bind(id)
        .bind(user_id)
        .fetch_optional(conn)
        .await
        .context("failed to load a budget")?
        .ok_or_else(|| ApiError::not_found("no such budget"))
}

pub(crate) async fn for_user(conn: &mut PgConnection, user_id: Uuid) -> anyhow::Result<Vec<BudgetRow>> {
    sqlx::query_as(&format!("{SELECT} WHERE user_id = $1 ORDER BY created_at, id"))
        .bind(user_id)
        .fetch_all(conn)
        .await
        .context("failed to list budgets")
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBudget {
    /// A category of the caller's, from `/v1/categories`. Budgets learn of
    /// categories from the ledger's events, a moment after a category is
    /// created: until then (and for any id that is not the caller's, or a
    /// merged or deleted category) the answer is a 422 `unknown_category`,
    /// and a category created a moment ago is worth a retry.
    category_id: Uuid,
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    currency: String,
    /// Per period.
    #[schema(value_type = freedumb_kit::openapi::PositiveAmount)]
    amount: String,
    period: Period,
    /// Carry what is left (or overspent) into the next period; default false.
    #[serde(default)]
    rollover: bool,
    /// When the budget begins (the start of the period containing it);
    /// default: the start of the current period.
    starts_on: Option<IsoDate>,
}

/// What a budget's amount must be beyond its schema, for the 422s.
const AMOUNT_RULES: &str = "`amount` has more decimals than the currency's minor unit or exceeds 10^15 minor units";
/// What a new budget's 422 can also mean.
const AMOUNT_RULES_OR_UNKNOWN_CATEGORY: &str = "`amount` has more decimals than the currency's minor unit or \
exceeds 10^15 minor units; or `unknown_category`: `category_id` is not a category of the caller's that budgets \
know of yet (retry shortly if it was just created: categories reach budgets through events)";

fn parse_currency_amount(currency: &str, amount: &str) -> Result<(Currency, i64), ApiError> {
    let mut errors = FieldErrors::default();
    let currency = errors.keep(
        Currency::from_code(currency.trim())
            .ok_or_else(|| FieldError::new("currency", "must be a supported ISO 4217 code")),
    );
    let amount =
        currency.and_then(|c| errors.keep(c.parse(amount).map_err(|e| FieldError::new("amount", e.to_string()))));
    if let Some(amount) = amount
        && amount <= 0
    {
        errors.push(FieldError::new("amount", "must be positive"));
    }
    match (currency, amount, errors.is_empty()) {
        (Some(currency), Some(amount), true) => Ok((currency, amount)),
        _ => Err(errors.into_error()),
    }
}

/// Sets a budget for a category and period.
///
/// The category must be one of the caller's that budgets know of. Budgets
/// learn of categories from the transaction service's `category.*` events,
/// usually well under a second after the change: a category created a
/// moment ago may still be unknown, and is refused with a 422
/// `unknown_category` naming `category_id`; retrying after a short pause
/// (with the same `Idempotency-Key`, if any) succeeds once it has arrived.
/// The same answer is given for an id that does not exist, another user's
/// category, and a merged or deleted one. (Accepting unknown ids would
/// accept ids that will never exist.)
#[utoipa::path(post, path = "/v1/budgets", tag = "budgets", security(("bearer" = [])), request_body = CreateBudget,
    params(IdempotencyKey),
    responses((status = 201, body = BudgetStatus), (status = 409, body = ErrorBody, description = "the category has a budget for this period already"),
        (status = 422, body = ErrorBody, description = AMOUNT_RULES_OR_UNKNOWN_CATEGORY)))]
async fn create_budget(
    State(state): State<BudgetState>,
    user: AuthUser,
    key: IdempotencyKey,
    Json(req): Json<CreateBudget>,
) -> ApiResult<axum::response::Response> {
    let (currency, amount) = parse_currency_amount(&req.currency, &req.amount)?;
    let today = IsoDate::today();
    let starts_on = req.period.start_of(req.starts_on.unwrap_or(today));
    let fp = fingerprint("POST /v1/budgets", &req);
    idempotency::run(&state.platform.db, SCHEMA, user.user_id, &key, &fp, move |tx| {
        Box::pin(async move {
            crate::categories::require_own(tx.conn(), user.user_id, req.category_id).await?;
            let id = Uuid::now_v7();
            let inserted = sqlx::query(
                "INSERT INTO budget.budgets (id, user_id, category_id, currency, amount, period, rollover, starts_on)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (user_id, category_id, period) DO NOTHING",
            )
            .bind(id)
            .bind(user.user_id)
            .bind(req.category_id)
            .bind(currency.code())
            .bind(amount)
            .bind(req.period)
            .bind(req.rollover)
            .bind(starts_on.get())
            .execute(tx.conn())
            .await
            .context("failed to insert a budget")?
            .rows_affected();
            if inserted == 0 {
                return Err(ApiError::conflict("budget_exists", "this category already has a budget for this period"));
            }
            summary::bump(tx.conn(), user.user_id).await?;
            let row = find(tx.conn(), user.user_id, id).await?;
            budget_events::changed(tx.conn(), budget_events::CREATED, &row).await?;
            crate::spending::check_thresholds(tx.conn(), &row, today).await?;
            let status = status(tx.conn(), &row, today).await?;
            Ok((StatusCode::CREATED, serde_json::to_value(status).context("serialise")?))
        })
    })
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AsOf {
    /// Report the period containing this date; default today. The period is
    /// the ISO week, month or year around it; the week of 9999-12-31 is
    /// reported as ending on 9999-12-31, the last date the API writes.
    #[param(inline)]
    date: Option<IsoDate>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BudgetList {
    items: Vec<BudgetStatus>,
}

/// Every budget of the caller's with its status for one period.
#[utoipa::path(get, path = "/v1/budgets", tag = "budgets", security(("bearer" = [])), params(AsOf),
    responses((status = 200, body = BudgetList)))]
async fn list_budgets(
    State(state): State<BudgetState>,
    user: AuthUser,
    Query(q): Query<AsOf>,
) -> ApiResult<Json<BudgetList>> {
    let date = q.date.unwrap_or_else(IsoDate::today);
    Ok(Json(BudgetList { items: statuses(&state, user.user_id, date).await? }))
}

/// The caller's budget statuses for `date`, through the summary cache.
async fn statuses(state: &BudgetState, user_id: Uuid, date: IsoDate) -> ApiResult<Vec<BudgetStatus>> {
    let pool = state.platform.db.pool.clone();
    let mut conn = pool.acquire().await.context("failed to get a connection")?;
    // The version comes from Postgres, written in the same transactions as
    // the spending, so a cached summary can never outlive a change.
    let version = summary::version(&mut conn, user_id).await?;
    let cached = state
        .platform
        .cache
        .get_or_load(
            summary::CACHE_PREFIX,
            &format!("{user_id}:{version}:{date}"),
            Duration::from_secs(300),
            || async move {
                let mut items = Vec::new();
                for row in for_user(&mut conn, user_id).await? {
                    items.push(status(&mut conn, &row, date).await?);
                }
                anyhow::Ok(Some(items))
            },
        )
        .await?;
    Ok(cached.unwrap_or_default())
}

/// One budget's status.
#[utoipa::path(get, path = "/v1/budgets/{id}", tag = "budgets", security(("bearer" = [])), params(("id" = Uuid, Path), AsOf),
    responses((status = 200, body = BudgetStatus)))]
async fn get_budget(
    State(state): State<BudgetState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Query(q): Query<AsOf>,
) -> ApiResult<Json<BudgetStatus>> {
    let date = q.date.unwrap_or_else(IsoDate::today);
    statuses(&state, user.user_id, date)
        .await?
        .into_iter()
        .find(|s| s.id == id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("no such budget"))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBudget {
    /// The new amount per period.
    #[schema(value_type = Option<freedumb_kit::openapi::PositiveAmount>)]
    amount: Option<String>,
    rollover: Option<bool>,
}

/// Changes a budget's amount or rollover.
#[utoipa::path(patch, path = "/v1/budgets/{id}", tag = "budgets", security(("bearer" = [])), params(("id" = Uuid, Path)),
    request_body = UpdateBudget,
    responses((status = 200, body = BudgetStatus), (status = 422, body = ErrorBody, description = AMOUNT_RULES)))]
async fn update_budget(
    State(state): State<BudgetState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Json(req): Json<UpdateBudget>,
) -> ApiResult<Json<BudgetStatus>> {
    let today = IsoDate::today();
    let mut tx = state.platform.db.begin().await.context("failed to begin")?;
    let current = find(tx.conn(), user.user_id, id).await?;
    let amount = match &req.amount {
        Some(amount) => Some(parse_currency_amount(&current.currency, amount)?.1),
        None => None,
    };
    sqlx::query("UPDATE budget.budgets SET amount = COALESCE($2, amount), rollover = COALESCE($3, rollover), updated_at = now() WHERE id = $1")
        .bind(id)
        .bind(amount)
        .bind(req.rollover)
        .execute(tx.conn())
        .await
        .context("failed to update a budget")?;
    summary::bump(tx.conn(), user.user_id).await?;
    let row = find(tx.conn(), user.user_id, id).await?;
    budget_events::changed(tx.conn(), budget_events::UPDATED, &row).await?;
    // A smaller budget can cross a threshold without any new spending.
    crate::spending::check_thresholds(tx.conn(), &row, today).await?;
    let status = status(tx.conn(), &row, today).await?;
    tx.commit().await.context("failed to commit")?;
    Ok(Json(status))
}

/// Deletes a budget.
#[utoipa::path(delete, path = "/v1/budgets/{id}", tag = "budgets", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 204, description = "deleted")))]
async fn delete_budget(
    State(state): State<BudgetState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    let mut tx = state.platform.db.begin().await.context("failed to begin")?;
    let done = sqlx::query("DELETE FROM budget.budgets WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user.user_id)
        .execute(tx.conn())
        .await
        .context("failed to delete a budget")?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("no such budget"));
    }
    summary::bump(tx.conn(), user.user_id).await?;
    budget_events::deleted(tx.conn(), id, user.user_id).await?;
    tx.commit().await.context("failed to commit")?;
    Ok(StatusCode::NO_CONTENT)
}

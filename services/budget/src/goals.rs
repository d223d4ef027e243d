//! `/v1/goals`: a target amount (and date), contributions towards it,
//! progress, and a projected completion date.
//!
//! The projection assumes saving continues at the average daily rate since
//! the first contribution: `remaining × days so far ÷ saved`, rounded up, in
//! integer arithmetic. A projection past 9999-12-31, the last date the API
//! writes, is no date but the reason `beyond_range` (see [`Projection`]).
//! Reaching the target records `goal.reached`, once.

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, NaiveDate, Utc};
use freedumb_kit::auth::AuthUser;
use freedumb_kit::date::IsoDate;
use freedumb_kit::extract::{Json, Path};
use freedumb_kit::idempotency::{self, IdempotencyKey};
use freedumb_kit::money::Currency;
use freedumb_kit::text::{Line, Text};
use freedumb_kit::{ApiError, ApiResult, ErrorBody, FieldError, FieldErrors};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::{BudgetState, SCHEMA, fingerprint, stored_date};

pub(crate) fn router() -> OpenApiRouter<BudgetState> {
    OpenApiRouter::new()
        .routes(routes!(create_goal, list_goals))
        .routes(routes!(get_goal, update_goal, delete_goal))
        .routes(routes!(contribute))
}

pub const GOAL_REACHED: &str = "goal.reached";

/// A goal's name: one line of 1 to 100 characters.
type GoalName = Line<1, 100>;
/// A contribution's note: up to 200 characters, line breaks allowed.
type Note = Text<200>;

#[derive(Debug, sqlx::FromRow)]
struct GoalRow {
    id: Uuid,
    name: String,
    currency: String,
    target_amount: i64,
    target_date: Option<NaiveDate>,
    reached_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    saved: i64,
    first_contribution: Option<NaiveDate>,
}

/// Why `projected_completion` is a date, or null: `projected` (it is the
/// day the target is met at the average daily rate since the first
/// contribution), `reached` (saved meets the target; nothing to project),
/// `no_saving` (nothing saved on balance yet, so no rate to extend),
/// `beyond_range` (at that rate the target is met after 9999-12-31, the
/// last date the API writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Projection {
    Projected,
    Reached,
    NoSaving,
    BeyondRange,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Goal {
    id: Uuid,
    name: String,
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    currency: String,
    #[schema(value_type = freedumb_kit::openapi::PositiveAmount)]
    target_amount: String,
    target_date: Option<IsoDate>,
    /// The sum of contributions; negative if more was taken out than put in.
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    saved: String,
    /// What is still missing; zero once saved meets the target.
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    remaining: String,
    /// Saved as a percentage of the target, one decimal.
    #[schema(example = "25.0", pattern = r"^-?[0-9]+\.[0-9]$")]
    percent: String,
    /// When the target is met at the average rate so far; null unless
    /// `projection` is `projected`.
    projected_completion: Option<IsoDate>,
    projection: Projection,
    /// Whether the projection meets the target date: true once saved meets
    /// the target, false for a projection beyond 9999-12-31; null without a
    /// target date or a projection.
    on_track: Option<bool>,
    reached_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

const SELECT: &str = "
    SELECT g.id, g.user_id, g.name, g.currency, g.target_amount, g.target_date, g.reached_at, g.created_at,
           COALESCE((SELECT SUM(c.amount) FROM budget.goal_contributions c WHERE c.goal_id = g.id), 0)::bigint AS saved,
           (SELECT MIN(c.date) FROM budget.goal_contributions c WHERE c.goal_id = g.id) AS first_contribution
    FROM budget.goals g";

async fn find(conn: &mut PgConnection, user_id: Uuid, id: Uuid) -> ApiResult<GoalRow> {
    sqlx::query_as(&format!("{SELECT} WHERE g.id = $1 AND g.user_id = $2"))
        .bind(id)
        .bind(user_id)
        .fetch_optional(conn)
        .await
        .context("failed to load a goal")?
        .ok_or_else(|| ApiError::not_found("no such goal"))
}

/// When saving at the average rate so far meets the target: days needed,
/// rounded up, from today; `first` is the first contribution's date.
fn projection(saved: i64, remaining: i64, first: Option<IsoDate>, today: IsoDate) -> (Projection, Option<IsoDate>) {
    if remaining <= 0 {
        return (Projection::Reached, None);
    }
    let Some(first) = first.filter(|_| saved > 0) else {
        return (Projection::NoSaving, None);
    };
    let elapsed = i128::from((today.get() - first.get()).num_days().max(1));
    let days = (i128::from(remaining) * elapsed + i128::from(saved) - 1) / i128::from(saved);
    match u64::try_from(days).ok().and_then(|days| today.checked_add_days(days)) {
        Some(date) => (Projection::Projected, Some(date)),
        None => (Projection::BeyondRange, None),
    }
}

impl GoalRow {
    fn into_goal(self, today: IsoDate) -> anyhow::Result<Goal> {
        let currency =
            Currency::from_code(&self.currency).with_context(|| format!("unknown currency {}", self.currency))?;
        let remaining = (self.target_amount - self.saved).max(0);
        let per_mille = i128::from(self.saved) * 1000 / i128::from(self.target_amount);
        let (outlook, projected) = projection(self.saved, remaining, self.first_contribution.map(stored_date), today);
        let target_date = self.target_date.map(stored_date);
        Ok(Goal {
            id: self.id,
            name: self.name,
            currency: currency.code().to_owned(),
            target_amount: currency.format(self.target_amount),
            target_date,
            saved: currency.format(self.saved),
            remaining: currency.format(remaining),
            percent: format!(
                "{}{}.{}",
                if per_mille < 0 { "-" } else { "" },
                per_mille.abs() / 10,
                per_mille.abs() % 10
            ),
            on_track: match (outlook, projected, target_date) {
                (Projection::Reached, _, _) => Some(true),
                (Projection::Projected, Some(projected), Some(target)) => Some(projected <= target),
                // Every target date is on or before 9999-12-31.
                (Projection::BeyondRange, _, Some(_)) => Some(false),
                _ => None,
            },
            projected_completion: projected,
            projection: outlook,
            reached_at: self.reached_at,
            created_at: self.created_at,
        })
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateGoal {
    name: GoalName,
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    currency: String,
    #[schema(value_type = freedumb_kit::openapi::PositiveAmount)]
    target_amount: String,
    target_date: Option<IsoDate>,
}

/// What a target amount must be beyond its schema, for the 422s.
const TARGET_RULES: &str =
    "`target_amount` has more decimals than the currency's minor unit or exceeds 10^15 minor units";

fn parse_target(currency: Currency, text: &str) -> Result<i64, FieldError> {
    match currency.parse(text) {
        Ok(amount) if amount > 0 => Ok(amount),
        Ok(_) => Err(FieldError::new("target_amount", "must be positive")),
        Err(err) => Err(FieldError::new("target_amount", err.to_string())),
    }
}

/// Creates a savings goal.
#[utoipa::path(post, path = "/v1/goals", tag = "goals", security(("bearer" = [])), request_body = CreateGoal,
    params(IdempotencyKey),
    responses((status = 201, body = Goal), (status = 422, body = ErrorBody, description = TARGET_RULES)))]
async fn create_goal(
    State(state): State<BudgetState>,
    user: AuthUser,
    key: IdempotencyKey,
    Json(req): Json<CreateGoal>,
) -> ApiResult<axum::response::Response> {
    let mut errors = FieldErrors::default();
    let currency = errors.keep(
        Currency::from_code(req.currency.trim())
            .ok_or_else(|| FieldError::new("currency", "must be a supported ISO 4217 code")),
    );
    let target = currency.and_then(|c| errors.keep(parse_target(c, &req.target_amount)));
    let (Some(currency), Some(target), true) = (currency, target, errors.is_empty()) else {
        return Err(errors.into_error());
    };
    let fp = fingerprint("POST /v1/goals", &req);
    idempotency::run(&state.platform.db, SCHEMA, user.user_id, &key, &fp, move |tx| {
        Box::pin(async move {
            let id = Uuid::now_v7();
            sqlx::query("INSERT INTO budget.goals (id, user_id, name, currency, target_amount, target_date) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(id)
                .bind(user.user_id)
                .bind(req.name.as_str())
                .bind(currency.code())
                .bind(target)
                .bind(req.target_date.map(IsoDate::get))
                .execute(tx.conn())
                .await
                .context("failed to insert a goal")?;
            let goal = find(tx.conn(), user.user_id, id).await?.into_goal(IsoDate::today())?;
            Ok((StatusCode::CREATED, serde_json::to_value(goal).context("serialise")?))
        })
    })
    .await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GoalList {
    items: Vec<Goal>,
}

/// The caller's goals with their progress.
#[utoipa::path(get, path = "/v1/goals", tag = "goals", security(("bearer" = [])),
    responses((status = 200, body = GoalList)))]
async fn list_goals(State(state): State<BudgetState>, user: AuthUser) -> ApiResult<Json<GoalList>> {
    let rows: Vec<GoalRow> = sqlx::query_as(&format!("{SELECT} WHERE g.user_id = $1 ORDER BY g.created_at, g.id"))
        .bind(user.user_id)
        .fetch_all(&state.platform.db.pool)
        .await
        .context("failed to list goals")?;
    let today = IsoDate::today();
    Ok(Json(GoalList { items: rows.into_iter().map(|r| r.into_goal(today)).collect::<anyhow::Result<_>>()? }))
}

/// One goal with its progress.
#[utoipa::path(get, path = "/v1/goals/{id}", tag = "goals", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Goal)))]
async fn get_goal(State(state): State<BudgetState>, user: AuthUser, Path(id): Path<Uuid>) -> ApiResult<Json<Goal>> {
    let mut conn = state.platform.db.pool.acquire().await.context("failed to get a connection")?;
    Ok(Json(find(&mut conn, user.user_id, id).await?.into_goal(IsoDate::today())?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateGoal {
    name: Option<GoalName>,
    #[schema(value_type = Option<freedumb_kit::openapi::PositiveAmount>)]
    target_amount: Option<String>,
    target_date: Option<IsoDate>,
}

/// Renames a goal or changes its target.
#[utoipa::path(patch, path = "/v1/goals/{id}", tag = "goals", security(("bearer" = [])), params(("id" = Uuid, Path)), request_body = UpdateGoal,
    responses((status = 200, body = Goal), (status = 422, body = ErrorBody, description = TARGET_RULES)))]
async fn update_goal(
    State(state): State<BudgetState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Json(req): Json<UpdateGoal>,
) -> ApiResult<Json<Goal>> {
    let mut tx = state.platform.db.begin().await.context("failed to begin")?;
    let current = find(tx.conn(), user.user_id, id).await?;
    let currency = Currency::from_code(&current.currency).context("unknown currency")?;
    let target = req
        .target_amount
        .as_deref()
        .map(|t| parse_target(currency, t))
        .transpose()
        .map_err(|e| ApiError::validation(vec![e]))?;
    sqlx::query(
        "UPDATE budget.goals SET name = COALESCE($2, name), target_amount = COALESCE($3, target_amount),
                target_date = COALESCE($4, target_date), updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(req.name.as_ref().map(|n| n.as_str()))
    .bind(target)
    .bind(req.target_date.map(IsoDate::get))
    .execute(tx.conn())
    .await
    .context("failed to update a goal")?;
    mark_if_reached(tx.conn(), user.user_id, id).await?;
    let goal = find(tx.conn(), user.user_id, id).await?.into_goal(IsoDate::today())?;
    tx.commit().await.context("failed to commit")?;
    Ok(Json(goal))
}

/// Deletes a goal and its contributions.
#[utoipa::path(delete, path = "/v1/goals/{id}", tag = "goals", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 204, description = "deleted")))]
async fn delete_goal(State(state): State<BudgetState>, user: AuthUser, Path(id): Path<Uuid>) -> ApiResult<StatusCode> {
    let done = sqlx::query("DELETE FROM budget.goals WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user.user_id)
        .execute(&state.platform.db.pool)
        .await
        .context("failed to delete a goal")?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("no such goal"));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Contribution {
    /// In the goal's currency; negative for a withdrawal.
    #[schema(value_type = freedumb_kit::openapi::NonZeroAmount)]
    amount: String,
    /// Default today.
    date: Option<IsoDate>,
    /// An empty note is no note.
    note: Option<Note>,
}

/// Adds money to a goal (or takes some out).
#[utoipa::path(post, path = "/v1/goals/{id}/contributions", tag = "goals", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "the goal"), IdempotencyKey), request_body = Contribution,
    responses((status = 201, body = Goal),
        (status = 422, body = ErrorBody, description = "`amount` has more decimals than the goal's currency's minor unit or exceeds 10^15 minor units")))]
async fn contribute(
    State(state): State<BudgetState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    key: IdempotencyKey,
    Json(req): Json<Contribution>,
) -> ApiResult<axum::response::Response> {
    let fp = fingerprint(&format!("POST /v1/goals/{id}/contributions"), &req);
    idempotency::run(&state.platform.db, SCHEMA, user.user_id, &key, &fp, move |tx| {
        Box::pin(async move {
            let goal = find(tx.conn(), user.user_id, id).await?;
            let currency = Currency::from_code(&goal.currency).context("unknown currency")?;
            let amount = currency.parse(&req.amount).map_err(|e| ApiError::field("amount", e.to_string()))?;
            if amount == 0 {
                return Err(ApiError::field("amount", "must not be zero"));
            }
            let note = req.note.clone().and_then(Note::non_empty);
            sqlx::query(
                "INSERT INTO budget.goal_contributions (id, goal_id, amount, date, note) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(Uuid::now_v7())
            .bind(id)
            .bind(amount)
            .bind(req.date.unwrap_or_else(IsoDate::today).get())
            .bind(note)
            .execute(tx.conn())
            .await
            .context("failed to insert a contribution")?;
            mark_if_reached(tx.conn(), user.user_id, id).await?;
            let goal = find(tx.conn(), user.user_id, id).await?.into_goal(IsoDate::today())?;
            Ok((StatusCode::CREATED, serde_json::to_value(goal).context("serialise")?))
        })
    })
    .await
}

/// The payload of `goal.reached` (docs/events.md).
#[derive(Debug, Serialize)]
struct GoalReached {
    /// The payload's contract version.
    version: u32,
    goal_id: Uuid,
    user_id: Uuid,
    name: String,
    currency: String,
    target_minor: i64,
    saved_minor: i64,
}

/// Marks the goal reached and records `goal.reached`, the first time saved
/// meets the target.
async fn mark_if_reached(conn: &mut PgConnection, user_id: Uuid, id: Uuid) -> ApiResult<()> {
    let goal = find(conn, user_id, id).await?;
    if goal.reached_at.is_some() || goal.saved < goal.target_amount {
        return Ok(());
    }
    sqlx::query("UPDATE budget.goals SET reached_at = now() WHERE id = $1 AND reached_at IS NULL")
        .bind(id)
        .execute(&mut *conn)
        .await
        .context("failed to mark a goal reached")?;
    let reached = GoalReached {
        version: 1,
        goal_id: id,
        user_id,
        name: goal.name,
        currency: goal.currency,
        target_minor: goal.target_amount,
        saved_minor: goal.saved,
    };
    freedumb_kit::events::record(conn, SCHEMA, GOAL_REACHED, &reached).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> IsoDate {
        IsoDate::parse(s).unwrap()
    }

    #[test]
    fn the_projection_extends_the_average_rate() {
        // 100 saved over 10 days: 10 a day; 250 to go is 25 more days.
        let projected = (Projection::Projected, Some(d("2026-12-06")));
        assert_eq!(projection(100, 250, Some(d("2026-11-01")), d("2026-11-11")), projected);
        // Rounded up: 1 a day over 3 days, 1 left, is one more day.
        let projected = (Projection::Projected, Some(d("2026-11-05")));
        assert_eq!(projection(3, 1, Some(d("2026-11-01")), d("2026-11-04")), projected);
    }

    #[test]
    fn nothing_saved_or_nothing_left_has_no_projection() {
        let today = d("2026-11-11");
        assert_eq!(projection(0, 100, Some(d("2026-11-01")), today), (Projection::NoSaving, None));
        assert_eq!(projection(-5, 100, Some(d("2026-11-01")), today), (Projection::NoSaving, None));
        assert_eq!(projection(0, 100, None, today), (Projection::NoSaving, None));
        assert_eq!(projection(100, 0, Some(d("2026-11-01")), today), (Projection::Reached, None));
    }

    #[test]
    fn a_projection_past_9999_has_no_date_but_a_reason() {
        // One cent a century, a million to go.
        assert_eq!(projection(1, 99_999_999, Some(d("1926-11-11")), d("2026-11-11")), (Projection::BeyondRange, None));
        // The last day the API writes is still a date.
        assert_eq!(
            projection(1, 1, Some(d("9999-12-30")), d("9999-12-30")),
            (Projection::Projected, Some(IsoDate::MAX))
        );
        assert_eq!(projection(1, 1, Some(IsoDate::MAX), IsoDate::MAX), (Projection::BeyondRange, None));
        // Amounts and spans at their limits do not overflow.
        assert_eq!(projection(1, i64::MAX, Some(IsoDate::MIN), IsoDate::MAX), (Projection::BeyondRange, None));
    }
}

//! `/v1/recurring`: rules that create transactions on a schedule, and the
//! worker (`freedumb worker recurring`) that creates them.
//!
//! Exactly once, with any number of workers: a worker takes due rules with
//! `FOR UPDATE SKIP LOCKED`, so two workers never hold the same rule, and
//! every occurrence is inserted with its `(rule, date)` pair under a unique
//! index, so even a rule processed twice cannot create an occurrence twice.
//! After downtime a worker catches up: it creates every occurrence whose
//! date has passed, oldest first.
//!
//! Every change to a rule, the worker's advances included, records its
//! `recurring.*` event (see `recurring_events`) in its transaction.

use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, NaiveDate, Utc};
use freedumb_kit::auth::AuthUser;
use freedumb_kit::config::{ConfigError, Env};
use freedumb_kit::date::IsoDate;
use freedumb_kit::db::Db;
use freedumb_kit::extract::{Json, Path};
use freedumb_kit::idempotency::{self, IdempotencyKey};
use freedumb_kit::money::Currency;
use freedumb_kit::service::{BackgroundTask, CancellationToken};
use freedumb_kit::{ApiError, ApiResult, ErrorBody, FieldError, FieldErrors, Platform};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use freedumb_kit::schedule::{Frequency, Schedule};

use crate::accounts::{BALANCE_CACHE, parse_amount};
use crate::text::{Description, Payee, Tag};
use crate::{Ledger, SCHEMA, categories, events, fingerprint, optional_text, recurring_events, transactions};

pub(crate) fn router() -> OpenApiRouter<Ledger> {
    OpenApiRouter::new().routes(routes!(create_rule, list_rules)).routes(routes!(get_rule, update_rule, delete_rule))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRule {
    account_id: Uuid,
    /// Signed decimal string, as for a transaction.
    #[schema(value_type = freedumb_kit::openapi::Amount, example = "-1200.00")]
    amount: String,
    payee: Option<Payee>,
    description: Option<Description>,
    category_id: Option<Uuid>,
    /// At most 20; repeats (ignoring case) are kept once.
    #[serde(default)]
    #[schema(max_items = 20)]
    tags: Vec<Tag>,
    frequency: Frequency,
    /// Every `interval` days, weeks, months or years; default 1.
    #[schema(minimum = 1, maximum = 1000)]
    interval: Option<u32>,
    /// At most 366 days before today (UTC): the worker creates past
    /// occurrences too, and a year is as far back as a catch-up reaches.
    start_date: IsoDate,
    /// Monthly and yearly rules: the day (1-31), clamped to shorter months.
    /// Default: the start date's day.
    #[schema(minimum = 1, maximum = 31)]
    day_of_month: Option<u32>,
    /// Not before `start_date`.
    end_date: Option<IsoDate>,
    /// Stop after this many occurrences.
    #[schema(minimum = 1, maximum = 100000)]
    count: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Rule {
    id: Uuid,
    account_id: Uuid,
    amount: String,
    currency: String,
    payee: Option<String>,
    description: Option<String>,
    category_id: Option<Uuid>,
    tags: Vec<String>,
    frequency: Frequency,
    interval: i32,
    #[schema(value_type = IsoDate)]
    start_date: NaiveDate,
    day_of_month: i16,
    #[schema(value_type = Option<IsoDate>)]
    end_date: Option<NaiveDate>,
    count: Option<i32>,
    occurrences_created: i32,
    /// The next date the worker will create a transaction for; null once
    /// the rule has ended (or its next date would be after 9999-12-31).
    #[schema(value_type = Option<IsoDate>)]
    next_occurrence: Option<NaiveDate>,
    active: bool,
    created_at: DateTime<Utc>,
}

#[derive(Debug, sqlx::FromRow)]
struct RuleRow {
    id: Uuid,
    user_id: Uuid,
    account_id: Uuid,
    amount: i64,
    currency: String,
    payee: Option<String>,
    description: Option<String>,
    category_id: Option<Uuid>,
    tags: Vec<String>,
    frequency: Frequency,
    interval: i32,
    start_date: NaiveDate,
    day_of_month: i16,
    end_date: Option<NaiveDate>,
    max_occurrences: Option<i32>,
    occurrences_created: i32,
    next_occurrence: Option<NaiveDate>,
    active: bool,
    created_at: DateTime<Utc>,
}

impl RuleRow {
    fn schedule(&self) -> Schedule {
        Schedule {
            frequency: self.frequency,
            interval: u32::try_from(self.interval).unwrap_or(1),
            start: self.start_date,
            day_of_month: u32::try_from(self.day_of_month).unwrap_or(1),
            end: self.end_date,
            max_occurrences: self.max_occurrences.and_then(|m| u32::try_from(m).ok()),
        }
    }

    fn into_rule(self) -> anyhow::Result<Rule> {
        let currency =
            Currency::from_code(&self.currency).with_context(|| format!("unknown currency {}", self.currency))?;
        Ok(Rule {
            id: self.id,
            account_id: self.account_id,
            amount: currency.format(self.amount),
            currency: self.currency,
            payee: self.payee,
            description: self.description,
            category_id: self.category_id,
            tags: self.tags,
            frequency: self.frequency,
            interval: self.interval,
            start_date: self.start_date,
            day_of_month: self.day_of_month,
            end_date: self.end_date,
            count: self.max_occurrences,
            occurrences_created: self.occurrences_created,
            next_occurrence: self.next_occurrence,
            active: self.active,
            created_at: self.created_at,
        })
    }
}

const SELECT: &str = "
    SELECT r.id, r.user_id, r.account_id, r.amount, a.currency, r.payee, r.description, r.category_id, r.tags, r.frequency,
           r.interval, r.start_date, r.day_of_month, r.end_date, r.max_occurrences, r.occurrences_created, r.next_occurrence,
           r.active, r.created_at
    FROM ledger.recurring_rules r JOIN ledger.accounts a ON a.id = r.account_id";

async fn find(conn: &mut PgConnection, user_id: Uuid, id: Uuid) -> ApiResult<RuleRow> {
    sqlx::query_as(&format!("{SELECT} WHERE r.id = $1 AND r.user_id = $2"))
        .bind(id)
        .bind(user_id)
        .fetch_optional(conn)
        .await
        .context("failed to load a recurring rule")?
        .ok_or_else(|| ApiError::not_found("no such recurring rule"))
}

/// Creates a rule; the worker creates its transactions as they fall due,
/// past ones included.
#[utoipa::path(post, path = "/v1/recurring", tag = "recurring", security(("bearer" = [])), request_body = CreateRule,
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key and body return the first answer")),
    responses((status = 201, body = Rule), (status = "4XX", body = ErrorBody)))]
async fn create_rule(
    State(state): State<Ledger>,
    user: AuthUser,
    key: IdempotencyKey,
    Json(req): Json<CreateRule>,
) -> ApiResult<axum::response::Response> {
    let fp = fingerprint("POST /v1/recurring", &req);
    idempotency::run(&state.platform.db, SCHEMA, user.user_id, &key, &fp, move |tx| {
        Box::pin(async move {
            let account = transactions::open_account(tx.conn(), user.user_id, "account_id", req.account_id).await?;
            let currency = account.currency()?;
            let mut errors = FieldErrors::default();
            let amount = errors.keep(parse_amount("amount", currency, &req.amount));
            let tags = errors.keep(transactions::parse_tags(&req.tags));
            let start_date = req.start_date.get();
            let earliest = earliest_start(IsoDate::today());
            if start_date < earliest {
                errors.push(FieldError::new(
                    "start_date",
                    format!("must be {earliest} or later: a rule may start at most {CATCH_UP_DAYS} days ago"),
                ));
            }
            let end_date = req.end_date.map(IsoDate::get);
            let interval = req.interval.unwrap_or(1);
            if !(1..=1000).contains(&interval) {
                errors.push(FieldError::new("interval", "must be 1 to 1000"));
            }
            let day_of_month = req.day_of_month.unwrap_or_else(|| chrono::Datelike::day(&start_date));
            if !(1..=31).contains(&day_of_month) {
                errors.push(FieldError::new("day_of_month", "must be 1 to 31"));
            }
            if end_date.is_some_and(|end| end < start_date) {
                errors.push(FieldError::new("end_date", "must not be before start_date"));
            }
            if req.count.is_some_and(|c| c == 0 || c > 100_000) {
                errors.push(FieldError::new("count", "must be 1 to 100000"));
            }
            let (Some(amount), Some(tags), true) = (amount, tags, errors.is_empty()) else {
                return Err(errors.into_error());
            };
            let payee = optional_text(req.payee.as_deref());
            let description = optional_text(req.description.as_deref());
            if let Some(category_id) = req.category_id {
                categories::require(tx.conn(), user.user_id, "category_id", category_id).await?;
            }
            let schedule = Schedule {
                frequency: req.frequency,
                interval,
                start: start_date,
                day_of_month,
                end: end_date,
                max_occurrences: req.count,
            };
            let id = Uuid::now_v7();
            sqlx::query(
                "INSERT INTO ledger.recurring_rules (id, user_id, account_id, amount, payee, description, category_id, tags, frequency,
                     interval, start_date, day_of_month, end_date, max_occurrences, next_occurrence)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            )
            .bind(id)
            .bind(user.user_id)
            .bind(account.id)
            .bind(amount)
            .bind(payee)
            .bind(description)
            .bind(req.category_id)
            .bind(&tags)
            .bind(req.frequency)
            .bind(i32::try_from(interval).unwrap_or(1))
            .bind(start_date)
            .bind(i16::try_from(day_of_month).unwrap_or(1))
            .bind(end_date)
            .bind(req.count.and_then(|c| i32::try_from(c).ok()))
            .bind(schedule.occurrence(0))
            .execute(tx.conn())
            .await
            .context("failed to insert a recurring rule")?;
            recurring_events::changed(tx.conn(), recurring_events::CREATED, id).await?;
            let rule = find(tx.conn(), user.user_id, id).await?.into_rule()?;
            Ok((StatusCode::CREATED, serde_json::to_value(rule).context("serialise")?))
        })
    })
    .await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RuleList {
    items: Vec<Rule>,
}

/// The caller's recurring rules.
#[utoipa::path(get, path = "/v1/recurring", tag = "recurring", security(("bearer" = [])),
    responses((status = 200, body = RuleList), (status = "4XX", body = ErrorBody)))]
async fn list_rules(State(state): State<Ledger>, user: AuthUser) -> ApiResult<Json<RuleList>> {
    let rows: Vec<RuleRow> = sqlx::query_as(&format!("{SELECT} WHERE r.user_id = $1 ORDER BY r.created_at, r.id"))
        .bind(user.user_id)
        .fetch_all(&state.platform.db.pool)
        .await
        .context("failed to list recurring rules")?;
    Ok(Json(RuleList { items: rows.into_iter().map(RuleRow::into_rule).collect::<anyhow::Result<_>>()? }))
}

/// One rule.
#[utoipa::path(get, path = "/v1/recurring/{id}", tag = "recurring", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Rule), (status = 404, body = ErrorBody), (status = "4XX", body = ErrorBody)))]
async fn get_rule(State(state): State<Ledger>, user: AuthUser, Path(id): Path<Uuid>) -> ApiResult<Json<Rule>> {
    let mut conn = state.platform.db.pool.acquire().await.context("failed to get a connection")?;
    Ok(Json(find(&mut conn, user.user_id, id).await?.into_rule()?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRule {
    #[schema(value_type = Option<freedumb_kit::openapi::Amount>)]
    amount: Option<String>,
    /// Empty removes it.
    payee: Option<Payee>,
    /// Empty removes it.
    description: Option<Description>,
    /// Pause (false) or resume (true). A resumed rule catches up.
    active: Option<bool>,
}

/// Changes what future occurrences look like, or pauses the rule. The
/// schedule itself is fixed: end the rule and create another.
#[utoipa::path(patch, path = "/v1/recurring/{id}", tag = "recurring", security(("bearer" = [])), params(("id" = Uuid, Path)),
    request_body = UpdateRule, responses((status = 200, body = Rule), (status = 404, body = ErrorBody), (status = "4XX", body = ErrorBody)))]
async fn update_rule(
    State(state): State<Ledger>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Json(req): Json<UpdateRule>,
) -> ApiResult<Json<Rule>> {
    let mut tx = state.platform.db.begin().await.context("failed to begin")?;
    let current = find(tx.conn(), user.user_id, id).await?;
    let currency = Currency::from_code(&current.currency).context("unknown currency")?;
    let mut errors = FieldErrors::default();
    let amount = req.amount.as_deref().and_then(|a| errors.keep(parse_amount("amount", currency, a)));
    // Some(None): the field was sent empty, which clears it.
    let payee = req.payee.as_deref().map(|p| optional_text(Some(p)));
    let description = req.description.as_deref().map(|d| optional_text(Some(d)));
    errors.finish()?;
    sqlx::query(
        "UPDATE ledger.recurring_rules SET amount = COALESCE($2, amount),
                payee = CASE WHEN $3 THEN $4 ELSE payee END,
                description = CASE WHEN $5 THEN $6 ELSE description END,
                active = COALESCE($7, active), updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(amount)
    .bind(payee.is_some())
    .bind(payee.flatten())
    .bind(description.is_some())
    .bind(description.flatten())
    .bind(req.active)
    .execute(tx.conn())
    .await
    .context("failed to update a recurring rule")?;
    recurring_events::changed(tx.conn(), recurring_events::UPDATED, id).await?;
    let rule = find(tx.conn(), user.user_id, id).await?.into_rule()?;
    tx.commit().await.context("failed to commit")?;
    Ok(Json(rule))
}

/// Deletes a rule. Transactions it already created stay.
#[utoipa::path(delete, path = "/v1/recurring/{id}", tag = "recurring", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody), (status = "4XX", body = ErrorBody)))]
async fn delete_rule(State(state): State<Ledger>, user: AuthUser, Path(id): Path<Uuid>) -> ApiResult<StatusCode> {
    let mut tx = state.platform.db.begin().await.context("failed to begin")?;
    let done = sqlx::query("DELETE FROM ledger.recurring_rules WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user.user_id)
        .execute(tx.conn())
        .await
        .context("failed to delete a recurring rule")?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found("no such recurring rule"));
    }
    recurring_events::deleted(tx.conn(), id, user.user_id).await?;
    tx.commit().await.context("failed to commit")?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rules taken per worker transaction.
const RULES_PER_BATCH: i64 = 50;
/// Occurrences one rule may create per batch, so a rule that is far behind
/// catches up over several short transactions instead of one long one.
const OCCURRENCES_PER_BATCH: u32 = 400;
/// How far back a catch-up reaches, in days: a new rule may start at most
/// this long ago, and a rule resumed after a longer pause (or a worker down
/// for longer) skips the occurrences before the window rather than create
/// them. So one catch-up creates at most 367 occurrences of a daily rule,
/// never the ~740,000 of a rule starting in year 0 (issue 10).
pub const CATCH_UP_DAYS: u64 = 366;

/// The earliest start date a rule created `today` may have.
fn earliest_start(today: IsoDate) -> NaiveDate {
    today.get().checked_sub_days(chrono::Days::new(CATCH_UP_DAYS)).unwrap_or(freedumb_kit::date::MIN)
}

/// The worker's settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Sleep between passes when nothing was due.
    pub poll_interval: Duration,
}

impl WorkerConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let millis: u64 = env.parsed_or("RECURRING_POLL_MS", 30_000, "a number of milliseconds")?;
        Ok(WorkerConfig { poll_interval: Duration::from_millis(millis.max(10)) })
    }
}

/// The worker as a background task.
pub fn worker(platform: &Platform, config: WorkerConfig) -> BackgroundTask {
    let platform = platform.clone();
    BackgroundTask::new("recurring-worker", move |shutdown: CancellationToken| {
        let platform = platform.clone();
        let config = config.clone();
        async move {
            while !shutdown.is_cancelled() {
                let today = Utc::now().date_naive();
                let processed = run_once(&platform, today).await?;
                if processed < usize::try_from(RULES_PER_BATCH).unwrap_or(usize::MAX) {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(config.poll_interval) => {}
                    }
                }
            }
            Ok(())
        }
    })
}

/// One pass: creates the due occurrences of up to a batch of rules, in one
/// transaction. Returns how many rules it took.
pub async fn run_once(platform: &Platform, today: NaiveDate) -> anyhow::Result<usize> {
    let db: &Db = &platform.db;
    let mut tx = db.begin().await.context("failed to begin")?;
    let rules: Vec<RuleRow> = sqlx::query_as(&format!(
        "{SELECT} WHERE r.active AND r.next_occurrence <= $1 ORDER BY r.next_occurrence LIMIT $2 FOR UPDATE OF r SKIP LOCKED"
    ))
    .bind(today)
    .bind(RULES_PER_BATCH)
    .fetch_all(tx.conn())
    .await
    .context("failed to take due recurring rules")?;
    let mut touched = Vec::new();
    for rule in &rules {
        let schedule = rule.schedule();
        let currency = Currency::from_code(&rule.currency).context("unknown currency")?;
        let mut n = u32::try_from(rule.occurrences_created).unwrap_or(0);
        // Occurrences before the catch-up window are skipped, not created.
        let window_start = today.checked_sub_days(chrono::Days::new(CATCH_UP_DAYS)).unwrap_or(today);
        let skipped_from = n;
        while schedule.occurrence(n).is_some_and(|d| d < window_start) {
            n += 1;
        }
        if n > skipped_from {
            tracing::warn!(
                rule_id = %rule.id,
                skipped = n - skipped_from,
                window_days = CATCH_UP_DAYS,
                "recurring occurrences older than the catch-up window were skipped"
            );
        }
        let mut created_now = 0;
        let mut created_ids = Vec::new();
        while let Some(date) = schedule.occurrence(n).filter(|d| *d <= today) {
            if created_now == OCCURRENCES_PER_BATCH {
                break;
            }
            let id = Uuid::now_v7();
            let inserted = sqlx::query(
                "INSERT INTO ledger.transactions (id, user_id, account_id, amount, currency_exponent, date, payee, description,
                     category_id, tags, recurring_rule_id, occurrence_date)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $6)
                 ON CONFLICT (recurring_rule_id, occurrence_date) WHERE recurring_rule_id IS NOT NULL DO NOTHING",
            )
            .bind(id)
            .bind(rule.user_id)
            .bind(rule.account_id)
            .bind(rule.amount)
            .bind(i16::from(currency.exponent()))
            .bind(date)
            .bind(&rule.payee)
            .bind(&rule.description)
            .bind(rule.category_id)
            .bind(&rule.tags)
            .bind(rule.id)
            .execute(tx.conn())
            .await
            .context("failed to create a recurring occurrence")?
            .rows_affected()
                == 1;
            if inserted {
                created_ids.push(id);
            }
            n += 1;
            created_now += 1;
        }
        events::changed(tx.conn(), events::CREATED, &created_ids).await?;
        let occurrences_created = i32::try_from(n).unwrap_or(i32::MAX);
        let next_occurrence = schedule.occurrence(n);
        sqlx::query("UPDATE ledger.recurring_rules SET occurrences_created = $2, next_occurrence = $3, updated_at = now() WHERE id = $1")
            .bind(rule.id)
            .bind(occurrences_created)
            .bind(next_occurrence)
            .execute(tx.conn())
            .await
            .context("failed to advance a recurring rule")?;
        // The rule's state moved: say so in the same transaction, so its
        // consumers' `next_occurrence` is never behind the ledger's.
        if (occurrences_created, next_occurrence) != (rule.occurrences_created, rule.next_occurrence) {
            recurring_events::changed(tx.conn(), recurring_events::UPDATED, rule.id).await?;
        }
        if created_now > 0 {
            touched.push((rule.user_id, rule.account_id));
        }
    }
    tx.commit().await.context("failed to commit recurring occurrences")?;
    for (user_id, account_id) in touched {
        platform.cache.bump(BALANCE_CACHE, &format!("{user_id}:{account_id}")).await;
    }
    if !rules.is_empty() {
        tracing::info!(rules = rules.len(), "recurring occurrences created");
    }
    Ok(rules.len())
}

//! `/v1/transactions`: create, get, update, delete, list; transfers and
//! splits.
//!
//! Amounts are signed minor units of the account's currency (negative
//! leaves the account) and decimal strings in JSON. A split transaction has
//! no category of its own; its splits carry the categories and sum exactly
//! to its amount. A transfer is two transactions, one per account, created
//! and deleted together in one database transaction.

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, NaiveDate, Utc};
use freedumb_kit::auth::AuthUser;
use freedumb_kit::date::IsoDate;
use freedumb_kit::db::Tx;
use freedumb_kit::extract::{Json, Path, Query};
use freedumb_kit::idempotency::{self, IdempotencyKey};
use freedumb_kit::money::Currency;
use freedumb_kit::text::Line;
use freedumb_kit::{ApiError, ApiResult, ErrorBody, FieldError, FieldErrors};
use serde::{Deserialize, Deserializer, Serialize};
use sqlx::{PgConnection, Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::accounts::{self, AccountRow, parse_amount};
use crate::text::{Description, Notes, Payee, SplitNote, Tag};
use crate::{Ledger, SCHEMA, categories, events, fingerprint, optional_text};

pub(crate) fn router() -> OpenApiRouter<Ledger> {
    OpenApiRouter::new()
        .routes(routes!(create_transaction, list_transactions))
        .routes(routes!(create_transfer))
        .routes(routes!(get_transaction, update_transaction, delete_transaction))
}

const MAX_SPLITS: usize = 50;
const MAX_TAGS: usize = 20;
const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 200;

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitInput {
    category_id: Option<Uuid>,
    /// Decimal string; the splits of a transaction sum to its amount.
    #[schema(value_type = freedumb_kit::openapi::Amount, example = "-20.00")]
    amount: String,
    note: Option<SplitNote>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTransaction {
    account_id: Uuid,
    /// Signed decimal string in the account's currency; negative is money out.
    #[schema(value_type = freedumb_kit::openapi::Amount, example = "-42.50")]
    amount: String,
    date: IsoDate,
    payee: Option<Payee>,
    description: Option<Description>,
    /// Omit (or null) for uncategorised; not allowed together with `splits`.
    category_id: Option<Uuid>,
    /// At most 20; repeats (ignoring case) are kept once.
    #[serde(default)]
    #[schema(max_items = 20)]
    tags: Vec<Tag>,
    notes: Option<Notes>,
    /// Two or more parts (at most 50) that sum to `amount`, each with its
    /// category; `[]` means none.
    #[serde(default)]
    splits: Vec<SplitInput>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Split {
    category_id: Option<Uuid>,
    amount: String,
    note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Transaction {
    id: Uuid,
    account_id: Uuid,
    #[schema(example = "-42.50")]
    amount: String,
    currency: String,
    #[schema(value_type = IsoDate)]
    date: NaiveDate,
    payee: Option<String>,
    description: Option<String>,
    category_id: Option<Uuid>,
    tags: Vec<String>,
    notes: Option<String>,
    splits: Vec<Split>,
    /// Shared by the two legs of a transfer.
    transfer_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    id: Uuid,
    account_id: Uuid,
    amount: i64,
    currency: String,
    date: NaiveDate,
    payee: Option<String>,
    description: Option<String>,
    category_id: Option<Uuid>,
    tags: Vec<String>,
    notes: Option<String>,
    transfer_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// The amount as an exact decimal string, for amount cursors.
    amount_value: String,
    /// Whether the transaction has splits, so a page without any costs one
    /// database round trip instead of two.
    has_splits: bool,
}

#[derive(Debug, sqlx::FromRow)]
struct SplitRow {
    transaction_id: Uuid,
    category_id: Option<Uuid>,
    amount: i64,
    note: Option<String>,
}

const SELECT: &str = "
    SELECT t.id, t.account_id, t.amount, a.currency, t.date, t.payee, t.description, t.category_id, t.tags, t.notes,
           t.transfer_id, t.created_at, t.updated_at,
           (t.amount::numeric / (10::numeric ^ t.currency_exponent))::text AS amount_value,
           EXISTS (SELECT 1 FROM ledger.transaction_splits s WHERE s.transaction_id = t.id) AS has_splits
    FROM ledger.transactions t JOIN ledger.accounts a ON a.id = t.account_id";

/// Rows with their splits, in the rows' order.
async fn with_splits(conn: &mut PgConnection, rows: Vec<Row>) -> ApiResult<Vec<Transaction>> {
    let ids: Vec<Uuid> = rows.iter().filter(|r| r.has_splits).map(|r| r.id).collect();
    let splits: Vec<SplitRow> = if ids.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT transaction_id, category_id, amount, note FROM ledger.transaction_splits
             WHERE transaction_id = ANY($1) ORDER BY transaction_id, position",
        )
        .bind(&ids)
        .fetch_all(conn)
        .await
        .context("failed to load splits")?
    };
    rows.into_iter()
        .map(|row| {
            let currency =
                Currency::from_code(&row.currency).with_context(|| format!("unknown currency {}", row.currency))?;
            Ok(Transaction {
                id: row.id,
                account_id: row.account_id,
                amount: currency.format(row.amount),
                currency: row.currency,
                date: row.date,
                payee: row.payee,
                description: row.description,
                category_id: row.category_id,
                tags: row.tags,
                notes: row.notes,
                splits: splits
                    .iter()
                    .filter(|s| s.transaction_id == row.id)
                    .map(|s| Split {
                        category_id: s.category_id,
                        amount: currency.format(s.amount),
                        note: s.note.clone(),
                    })
                    .collect(),
                transfer_id: row.transfer_id,
                created_at: row.created_at,
                updated_at: row.updated_at,
            })
        })
        .collect()
}

/// The caller's transaction, or 404.
async fn load(conn: &mut PgConnection, user_id: Uuid, id: Uuid) -> ApiResult<Transaction> {
    let row: Row = sqlx::query_as(&format!("{SELECT} WHERE t.id = $1 AND t.user_id = $2"))
        .bind(id)
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await
        .context("failed to load a transaction")?
        .ok_or_else(|| ApiError::not_found("no such transaction"))?;
    Ok(with_splits(conn, vec![row]).await?.remove(0))
}

/// An account of the caller's that can take new transactions, for the
/// request field `field`.
pub(crate) async fn open_account(
    conn: &mut PgConnection,
    user_id: Uuid,
    field: &str,
    id: Uuid,
) -> ApiResult<AccountRow> {
    let account = match accounts::find(conn, user_id, id).await {
        // Another user's account is as absent as a made-up id: 404, naming the field.
        Err(err) if err.status() == StatusCode::NOT_FOUND => {
            return Err(ApiError::not_found(format!("{field}: no such account")));
        }
        other => other?,
    };
    if account.archived_at.is_some() {
        return Err(ApiError::conflict(
            "account_archived",
            "the account is archived; unarchive it to add transactions",
        ));
    }
    Ok(account)
}

/// Tags once each (ignoring case), at most [`MAX_TAGS`]; each is trimmed
/// and checked by its type.
pub(crate) fn parse_tags(tags: &[Tag]) -> Result<Vec<String>, FieldError> {
    let mut out: Vec<String> = Vec::new();
    for tag in tags {
        let tag = tag.as_str();
        if !out.iter().any(|t| t.eq_ignore_ascii_case(tag)) {
            out.push(tag.to_owned());
        }
    }
    if out.len() > MAX_TAGS {
        return Err(FieldError::new("tags", format!("at most {MAX_TAGS} tags")));
    }
    Ok(out)
}

/// Splits in minor units, checked against `total`.
fn parse_splits(
    currency: Currency,
    total: i64,
    splits: &[SplitInput],
) -> Result<Vec<(Option<Uuid>, i64, Option<String>)>, Vec<FieldError>> {
    if splits.is_empty() {
        return Ok(Vec::new());
    }
    if splits.len() < 2 || splits.len() > MAX_SPLITS {
        return Err(vec![FieldError::new("splits", format!("a split transaction has 2 to {MAX_SPLITS} parts"))]);
    }
    let mut errors = Vec::new();
    let mut parsed = Vec::new();
    for (i, split) in splits.iter().enumerate() {
        let amount = parse_amount(&format!("splits[{i}].amount"), currency, &split.amount);
        match amount {
            Ok(amount) => parsed.push((split.category_id, amount, optional_text(split.note.as_deref()))),
            Err(err) => errors.push(err),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let sum: i64 = parsed.iter().map(|(_, amount, _)| *amount).sum();
    if sum != total {
        return Err(vec![FieldError::new(
            "splits",
            format!("the splits sum to {} but the amount is {}", currency.format(sum), currency.format(total)),
        )]);
    }
    Ok(parsed)
}

struct NewTransaction {
    account: Uuid,
    amount: i64,
    exponent: u8,
    date: NaiveDate,
    payee: Option<String>,
    description: Option<String>,
    category_id: Option<Uuid>,
    tags: Vec<String>,
    notes: Option<String>,
    splits: Vec<(Option<Uuid>, i64, Option<String>)>,
    transfer_id: Option<Uuid>,
}

async fn insert(tx: &mut Tx, user_id: Uuid, new: &NewTransaction) -> ApiResult<Uuid> {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO ledger.transactions
            (id, user_id, account_id, amount, currency_exponent, date, payee, description, category_id, tags, notes, transfer_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(id)
    .bind(user_id)
    .bind(new.account)
    .bind(new.amount)
    .bind(i16::from(new.exponent))
    .bind(new.date)
    .bind(&new.payee)
    .bind(&new.description)
    .bind(new.category_id)
    .bind(&new.tags)
    .bind(&new.notes)
    .bind(new.transfer_id)
    .execute(tx.conn())
    .await
    .context("failed to insert a transaction")?;
    replace_splits(tx.conn(), id, &new.splits).await?;
    Ok(id)
}

async fn replace_splits(
    conn: &mut PgConnection,
    id: Uuid,
    splits: &[(Option<Uuid>, i64, Option<String>)],
) -> ApiResult<()> {
    sqlx::query("DELETE FROM ledger.transaction_splits WHERE transaction_id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await
        .context("failed to clear splits")?;
    for (position, (category_id, amount, note)) in splits.iter().enumerate() {
        sqlx::query("INSERT INTO ledger.transaction_splits (transaction_id, position, category_id, amount, note) VALUES ($1, $2, $3, $4, $5)")
            .bind(id)
            .bind(i16::try_from(position).unwrap_or(i16::MAX))
            .bind(category_id)
            .bind(amount)
            .bind(note)
            .execute(&mut *conn)
            .await
            .context("failed to insert a split")?;
    }
    Ok(())
}

async fn check_categories(
    conn: &mut PgConnection,
    user_id: Uuid,
    category_id: Option<Uuid>,
    splits: &[(Option<Uuid>, i64, Option<String>)],
) -> ApiResult<()> {
    if let Some(id) = category_id {
        categories::require(conn, user_id, "category_id", id).await?;
    }
    for (i, (category_id, _, _)) in splits.iter().enumerate() {
        if let Some(id) = category_id {
            categories::require(conn, user_id, &format!("splits[{i}].category_id"), *id).await?;
        }
    }
    Ok(())
}

/// Records `kind` (`transaction.created` or `.updated`) with the
/// transaction's state as it is now in this database transaction.
async fn record_state(conn: &mut PgConnection, kind: &'static str, id: Uuid) -> ApiResult<()> {
    events::changed(conn, kind, &[id]).await?;
    Ok(())
}

/// Records a transaction.
#[utoipa::path(post, path = "/v1/transactions", tag = "transactions", security(("bearer" = [])), request_body = CreateTransaction,
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key and body return the first answer")),
    responses((status = 201, body = Transaction), (status = "4XX", body = ErrorBody)))]
async fn create_transaction(
    State(state): State<Ledger>,
    user: AuthUser,
    key: IdempotencyKey,
    Json(req): Json<CreateTransaction>,
) -> ApiResult<axum::response::Response> {
    let fp = fingerprint("POST /v1/transactions", &req);
    let account_id = req.account_id;
    let response = idempotency::run(&state.platform.db, SCHEMA, user.user_id, &key, &fp, move |tx| {
        Box::pin(async move {
            let account = open_account(tx.conn(), user.user_id, "account_id", req.account_id).await?;
            let currency = account.currency()?;
            let new = validate_new(&req, currency)?;
            check_categories(tx.conn(), user.user_id, new.category_id, &new.splits).await?;
            let id = insert(tx, user.user_id, &new).await?;
            record_state(tx.conn(), events::CREATED, id).await?;
            let created = load(tx.conn(), user.user_id, id).await?;
            Ok((StatusCode::CREATED, serde_json::to_value(created).context("serialise")?))
        })
    })
    .await?;
    accounts::changed(&state, user.user_id, &[account_id]).await;
    Ok(response)
}

fn validate_new(req: &CreateTransaction, currency: Currency) -> ApiResult<NewTransaction> {
    let amount = parse_amount("amount", currency, &req.amount);
    let tags = parse_tags(&req.tags);
    let mut errors: Vec<FieldError> =
        [amount.as_ref().err(), tags.as_ref().err()].into_iter().flatten().cloned().collect();
    if req.category_id.is_some() && !req.splits.is_empty() {
        errors.push(FieldError::new("category_id", "a split transaction takes its categories from its splits"));
    }
    let splits = match &amount {
        Ok(total) => parse_splits(currency, *total, &req.splits).unwrap_or_else(|e| {
            errors.extend(e);
            Vec::new()
        }),
        Err(_) => Vec::new(),
    };
    let (Ok(amount), Ok(tags), true) = (amount, tags, errors.is_empty()) else {
        return Err(ApiError::validation(errors));
    };
    Ok(NewTransaction {
        account: req.account_id,
        amount,
        exponent: currency.exponent(),
        date: req.date.get(),
        payee: optional_text(req.payee.as_deref()),
        description: optional_text(req.description.as_deref()),
        category_id: req.category_id,
        tags,
        notes: optional_text(req.notes.as_deref()),
        splits,
        transfer_id: None,
    })
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTransfer {
    from_account_id: Uuid,
    to_account_id: Uuid,
    /// Positive decimal string; both accounts must share a currency.
    #[schema(value_type = freedumb_kit::openapi::PositiveAmount, example = "250.00")]
    amount: String,
    date: IsoDate,
    description: Option<Description>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Transfer {
    transfer_id: Uuid,
    /// The leg leaving `from_account_id` (negative).
    from: Transaction,
    /// The leg arriving in `to_account_id` (positive).
    to: Transaction,
}

/// Moves money between two of the caller's accounts: two transactions,
/// written together or not at all.
#[utoipa::path(post, path = "/v1/transactions/transfers", tag = "transactions", security(("bearer" = [])), request_body = CreateTransfer,
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key and body return the first answer")),
    responses((status = 201, body = Transfer), (status = "4XX", body = ErrorBody)))]
async fn create_transfer(
    State(state): State<Ledger>,
    user: AuthUser,
    key: IdempotencyKey,
    Json(req): Json<CreateTransfer>,
) -> ApiResult<axum::response::Response> {
    if req.from_account_id == req.to_account_id {
        return Err(ApiError::field("to_account_id", "must differ from from_account_id"));
    }
    let fp = fingerprint("POST /v1/transactions/transfers", &req);
    let accounts_touched = [req.from_account_id, req.to_account_id];
    let response = idempotency::run(&state.platform.db, SCHEMA, user.user_id, &key, &fp, move |tx| {
        Box::pin(async move {
            let from = open_account(tx.conn(), user.user_id, "from_account_id", req.from_account_id).await?;
            let to = open_account(tx.conn(), user.user_id, "to_account_id", req.to_account_id).await?;
            if from.currency != to.currency {
                return Err(ApiError::field(
                    "to_account_id",
                    "transfers between currencies are not supported; both accounts must share one",
                ));
            }
            let currency = from.currency()?;
            let amount = parse_amount("amount", currency, &req.amount).map_err(|e| ApiError::validation(vec![e]))?;
            if amount <= 0 {
                return Err(ApiError::field("amount", "must be positive"));
            }
            let description = optional_text(req.description.as_deref());
            let transfer_id = Uuid::now_v7();
            let leg = |account: Uuid, amount: i64| NewTransaction {
                account,
                amount,
                exponent: currency.exponent(),
                date: req.date.get(),
                payee: None,
                description: description.clone(),
                category_id: None,
                tags: Vec::new(),
                notes: None,
                splits: Vec::new(),
                transfer_id: Some(transfer_id),
            };
            let out_id = insert(tx, user.user_id, &leg(from.id, -amount)).await?;
            let in_id = insert(tx, user.user_id, &leg(to.id, amount)).await?;
            record_state(tx.conn(), events::CREATED, out_id).await?;
            record_state(tx.conn(), events::CREATED, in_id).await?;
            let transfer = Transfer {
                transfer_id,
                from: load(tx.conn(), user.user_id, out_id).await?,
                to: load(tx.conn(), user.user_id, in_id).await?,
            };
            Ok((StatusCode::CREATED, serde_json::to_value(transfer).context("serialise")?))
        })
    })
    .await?;
    accounts::changed(&state, user.user_id, &accounts_touched).await;
    Ok(response)
}

/// One transaction.
#[utoipa::path(get, path = "/v1/transactions/{id}", tag = "transactions", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Transaction), (status = 404, body = ErrorBody), (status = "4XX", body = ErrorBody)))]
async fn get_transaction(
    State(state): State<Ledger>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Transaction>> {
    let mut conn = state.platform.db.pool.acquire().await.context("failed to get a connection")?;
    Ok(Json(load(&mut conn, user.user_id, id).await?))
}

/// `null` and absent are different for these fields: absent keeps the
/// value, `null` clears it.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(de: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(de).map(Some)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTransaction {
    #[schema(value_type = Option<freedumb_kit::openapi::Amount>)]
    amount: Option<String>,
    date: Option<IsoDate>,
    /// null or empty removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Payee>)]
    payee: Option<Option<Payee>>,
    /// null or empty removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Description>)]
    description: Option<Option<Description>>,
    /// A category, or null for uncategorised.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Uuid>)]
    category_id: Option<Option<Uuid>>,
    /// Replaces the tags; at most 20.
    #[schema(max_items = 20)]
    tags: Option<Vec<Tag>>,
    /// null or empty removes them.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Notes>)]
    notes: Option<Option<Notes>>,
    /// Replaces the splits; `[]` removes them.
    splits: Option<Vec<SplitInput>>,
}

/// Changes a transaction. A transfer leg's amount cannot change on its own:
/// delete the transfer and record it again.
#[utoipa::path(patch, path = "/v1/transactions/{id}", tag = "transactions", security(("bearer" = [])), params(("id" = Uuid, Path)),
    request_body = UpdateTransaction,
    responses((status = 200, body = Transaction), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = "4XX", body = ErrorBody)))]
async fn update_transaction(
    State(state): State<Ledger>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Json(req): Json<UpdateTransaction>,
) -> ApiResult<Json<Transaction>> {
    let mut tx = state.platform.db.begin().await.context("failed to begin")?;
    let current: Row = sqlx::query_as(&format!("{SELECT} WHERE t.id = $1 AND t.user_id = $2 FOR UPDATE OF t"))
        .bind(id)
        .bind(user.user_id)
        .fetch_optional(tx.conn())
        .await
        .context("failed to load a transaction")?
        .ok_or_else(|| ApiError::not_found("no such transaction"))?;
    let currency = Currency::from_code(&current.currency).context("unknown currency")?;
    if current.transfer_id.is_some() && (req.amount.is_some() || req.splits.as_ref().is_some_and(|s| !s.is_empty())) {
        return Err(ApiError::conflict(
            "transfer_leg",
            "a transfer's amount changes on both legs: delete the transfer and record it again",
        ));
    }
    let mut errors = FieldErrors::default();
    let amount =
        req.amount.as_deref().and_then(|a| errors.keep(parse_amount("amount", currency, a))).unwrap_or(current.amount);
    let payee = match &req.payee {
        Some(p) => optional_text(p.as_deref()),
        None => current.payee.clone(),
    };
    let description = match &req.description {
        Some(d) => optional_text(d.as_deref()),
        None => current.description.clone(),
    };
    let notes = match &req.notes {
        Some(n) => optional_text(n.as_deref()),
        None => current.notes.clone(),
    };
    let tags = match &req.tags {
        Some(tags) => errors.keep(parse_tags(tags)).unwrap_or_default(),
        None => current.tags.clone(),
    };
    let existing_splits: Vec<SplitInput> = with_splits(tx.conn(), vec![current.clone()])
        .await?
        .remove(0)
        .splits
        .into_iter()
        .map(|s| SplitInput {
            category_id: s.category_id,
            amount: s.amount,
            // Stored notes passed the same check on the way in.
            note: s.note.as_deref().and_then(|n| SplitNote::parse(n).ok()),
        })
        .collect();
    let split_inputs = req.splits.clone().unwrap_or(existing_splits);
    let category_id = match req.category_id {
        Some(c) => c,
        None if !split_inputs.is_empty() => None,
        None => current.category_id,
    };
    if category_id.is_some() && !split_inputs.is_empty() {
        errors.push(FieldError::new("category_id", "a split transaction takes its categories from its splits"));
    }
    let splits = parse_splits(currency, amount, &split_inputs).unwrap_or_else(|e| {
        errors.extend(e);
        Vec::new()
    });
    errors.finish()?;
    check_categories(tx.conn(), user.user_id, category_id, &splits).await?;
    sqlx::query(
        "UPDATE ledger.transactions SET amount = $2, date = $3, payee = $4, description = $5, category_id = $6, tags = $7,
                notes = $8, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(amount)
    .bind(req.date.map_or(current.date, IsoDate::get))
    .bind(payee)
    .bind(description)
    .bind(category_id)
    .bind(tags)
    .bind(notes)
    .execute(tx.conn())
    .await
    .context("failed to update a transaction")?;
    replace_splits(tx.conn(), id, &splits).await?;
    record_state(tx.conn(), events::UPDATED, id).await?;
    let updated = load(tx.conn(), user.user_id, id).await?;
    tx.commit().await.context("failed to commit")?;
    accounts::changed(&state, user.user_id, &[current.account_id]).await;
    Ok(Json(updated))
}

/// Deletes a transaction; deleting either leg of a transfer deletes both.
#[utoipa::path(delete, path = "/v1/transactions/{id}", tag = "transactions", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 204, description = "deleted"), (status = 404, body = ErrorBody), (status = "4XX", body = ErrorBody)))]
async fn delete_transaction(
    State(state): State<Ledger>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    let mut tx = state.platform.db.begin().await.context("failed to begin")?;
    let found: Option<(Uuid, Option<Uuid>)> = sqlx::query_as(
        "SELECT account_id, transfer_id FROM ledger.transactions WHERE id = $1 AND user_id = $2 FOR UPDATE",
    )
    .bind(id)
    .bind(user.user_id)
    .fetch_optional(tx.conn())
    .await
    .context("failed to load a transaction")?;
    let (_, transfer_id) = found.ok_or_else(|| ApiError::not_found("no such transaction"))?;
    let deleted: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "DELETE FROM ledger.transactions
         WHERE user_id = $2 AND (id = $1 OR (transfer_id IS NOT NULL AND transfer_id = $3))
         RETURNING id, account_id",
    )
    .bind(id)
    .bind(user.user_id)
    .bind(transfer_id)
    .fetch_all(tx.conn())
    .await
    .context("failed to delete a transaction")?;
    for (deleted_id, _) in &deleted {
        events::deleted(tx.conn(), *deleted_id, user.user_id).await?;
    }
    let touched: Vec<Uuid> = deleted.iter().map(|(_, account)| *account).collect();
    tx.commit().await.context("failed to commit")?;
    accounts::changed(&state, user.user_id, &touched).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Sort {
    /// Newest first (the default).
    #[default]
    #[serde(rename = "-date")]
    DateDesc,
    #[serde(rename = "date")]
    DateAsc,
    #[serde(rename = "-amount")]
    AmountDesc,
    #[serde(rename = "amount")]
    AmountAsc,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListTransactions {
    account_id: Option<Uuid>,
    /// Matches the category, its subcategories, and splits in them.
    category_id: Option<Uuid>,
    /// First date, inclusive.
    #[param(inline)]
    from: Option<IsoDate>,
    /// Last date, inclusive.
    #[param(inline)]
    to: Option<IsoDate>,
    /// Decimal string; compared exactly in each transaction's currency.
    #[param(value_type = Option<String>, pattern = r"^-?[0-9]+(\.[0-9]+)?$", max_length = 40)]
    min_amount: Option<String>,
    #[param(value_type = Option<String>, pattern = r"^-?[0-9]+(\.[0-9]+)?$", max_length = 40)]
    max_amount: Option<String>,
    /// Text in the payee or description (case-insensitive).
    #[param(inline)]
    q: Option<Line<0, 200>>,
    /// A tag, compared ignoring case; empty means any.
    #[param(inline)]
    tag: Option<Line<0, 40>>,
    #[param(inline)]
    sort: Option<Sort>,
    /// Default 50.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TransactionPage {
    items: Vec<Transaction>,
    /// Pass as `cursor` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

/// Where a page ended: the sort key and id of its last row. Keyset
/// pagination, so rows inserted meanwhile never shift later pages.
#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    sort: Sort,
    key: String,
    id: Uuid,
}

impl Cursor {
    fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    fn decode(text: &str, sort: Sort) -> ApiResult<Self> {
        let bad = || ApiError::bad_request("invalid_query", "cursor is not a cursor from this listing");
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
        let cursor: Cursor = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        if cursor.sort != sort {
            return Err(ApiError::bad_request("invalid_query", "cursor belongs to a listing with another sort order"));
        }
        let key_ok = match sort {
            Sort::DateAsc | Sort::DateDesc => cursor.key.parse::<NaiveDate>().is_ok(),
            Sort::AmountAsc | Sort::AmountDesc => is_decimal(&cursor.key),
        };
        if !key_ok {
            return Err(bad());
        }
        Ok(cursor)
    }
}

fn is_decimal(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, "0"));
    text.len() <= 40
        && !whole.is_empty()
        && !fraction.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.bytes().all(|b| b.is_ascii_digit())
}

/// The caller's transactions, filtered, sorted, a page at a time.
#[utoipa::path(get, path = "/v1/transactions", tag = "transactions", security(("bearer" = [])), params(ListTransactions),
    responses((status = 200, body = TransactionPage), (status = "4XX", body = ErrorBody)))]
async fn list_transactions(
    State(state): State<Ledger>,
    user: AuthUser,
    Query(q): Query<ListTransactions>,
) -> ApiResult<Json<TransactionPage>> {
    let sort = q.sort.unwrap_or_default();
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit must be 1 to {MAX_PAGE}")));
    }
    for (name, value) in [("min_amount", &q.min_amount), ("max_amount", &q.max_amount)] {
        if value.as_deref().is_some_and(|v| !is_decimal(v)) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("{name} must be a decimal number such as -12.50"),
            ));
        }
    }
    let cursor = q.cursor.as_deref().map(|c| Cursor::decode(c, sort)).transpose()?;

    let mut sql: QueryBuilder<Postgres> = QueryBuilder::new(SELECT);
    sql.push(" WHERE t.user_id = ").push_bind(user.user_id);
    if let Some(account_id) = q.account_id {
        sql.push(" AND t.account_id = ").push_bind(account_id);
    }
    if let Some(category_id) = q.category_id {
        sql.push(" AND (t.category_id IN (SELECT id FROM ledger.categories WHERE user_id = ")
            .push_bind(user.user_id)
            .push(" AND (id = ")
            .push_bind(category_id)
            .push(" OR parent_id = ")
            .push_bind(category_id)
            .push(")) OR EXISTS (SELECT 1 FROM ledger.transaction_splits s JOIN ledger.categories c ON c.id = s.category_id")
            .push(" WHERE s.transaction_id = t.id AND (c.id = ")
            .push_bind(category_id)
            .push(" OR c.parent_id = ")
            .push_bind(category_id)
            .push(")))");
    }
    if let Some(from) = q.from.map(IsoDate::get) {
        sql.push(" AND t.date >= ").push_bind(from);
    }
    if let Some(to) = q.to.map(IsoDate::get) {
        sql.push(" AND t.date <= ").push_bind(to);
    }
    const VALUE: &str = "(t.amount::numeric / (10::numeric ^ t.currency_exponent))";
    if let Some(min) = &q.min_amount {
        sql.push(format!(" AND {VALUE} >= ")).push_bind(min.clone()).push("::numeric");
    }
    if let Some(max) = &q.max_amount {
        sql.push(format!(" AND {VALUE} <= ")).push_bind(max.clone()).push("::numeric");
    }
    if let Some(text) = q.q.as_deref().filter(|t| !t.is_empty()) {
        let pattern = format!("%{}%", text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        sql.push(" AND (t.payee ILIKE ")
            .push_bind(pattern.clone())
            .push(" OR t.description ILIKE ")
            .push_bind(pattern)
            .push(")");
    }
    if let Some(tag) = q.tag.as_deref().filter(|t| !t.is_empty()) {
        sql.push(" AND ").push_bind(tag.to_owned()).push(" = ANY(t.tags)");
    }
    let (key_sql, direction, op) = match sort {
        Sort::DateDesc => ("t.date", "DESC", "<"),
        Sort::DateAsc => ("t.date", "ASC", ">"),
        Sort::AmountDesc => (VALUE, "DESC", "<"),
        Sort::AmountAsc => (VALUE, "ASC", ">"),
    };
    if let Some(cursor) = &cursor {
        let cast = if matches!(sort, Sort::DateAsc | Sort::DateDesc) { "::date" } else { "::numeric" };
        sql.push(format!(" AND ({key_sql}, t.id) {op} ("))
            .push_bind(cursor.key.clone())
            .push(format!("{cast}, "))
            .push_bind(cursor.id)
            .push(")");
    }
    sql.push(format!(" ORDER BY {key_sql} {direction}, t.id {direction} LIMIT ")).push_bind(limit + 1);

    let mut conn = state.platform.db.pool.acquire().await.context("failed to get a connection")?;
    let mut rows: Vec<Row> = sql.build_query_as().fetch_all(&mut *conn).await.context("failed to list transactions")?;
    let next_cursor = if rows.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
        rows.pop();
        rows.last().map(|last| {
            let key = match sort {
                Sort::DateAsc | Sort::DateDesc => last.date.to_string(),
                Sort::AmountAsc | Sort::AmountDesc => last.amount_value.clone(),
            };
            Cursor { sort, key, id: last.id }.encode()
        })
    } else {
        None
    };
    let items = with_splits(&mut conn, rows).await?;
    Ok(Json(TransactionPage { items, next_cursor }))
}

//! `/v1/accounts`: create, list, get, update, archive.
//!
//! A balance is never stored: it is the opening balance plus the sum of the
//! account's transactions, computed by Postgres, so it is right under
//! concurrent writes by construction. Reads of one account go through a
//! versioned Redis cache (`balance`) that every write to the account bumps.
//! Every change records its `account.*` event (see `account_events`) in
//! its transaction.

use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use freedumb_kit::auth::AuthUser;
use freedumb_kit::extract::{Json, Path, Query};
use freedumb_kit::idempotency::{self, IdempotencyKey};
use freedumb_kit::money::Currency;
use freedumb_kit::{ApiError, ApiResult, ErrorBody, FieldError};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::account_events;
use crate::account_number::{self, Cipher};
use crate::text::AccountName;
use crate::{Ledger, SCHEMA, fingerprint};

pub(crate) fn router() -> OpenApiRouter<Ledger> {
    OpenApiRouter::new()
        .routes(routes!(create_account, list_accounts))
        .routes(routes!(get_account, update_account))
        .routes(routes!(archive_account))
        .routes(routes!(unarchive_account))
}

/// The cache prefix of one account's balance.
pub(crate) const BALANCE_CACHE: &str = "balance";
const BALANCE_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum AccountKind {
    Checking,
    Savings,
    CreditCard,
    Cash,
    Loan,
    Investment,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    #[schema(example = "Everyday checking")]
    name: AccountName,
    kind: AccountKind,
    /// ISO 4217 code.
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode, example = "EUR")]
    currency: String,
    /// A decimal string in the account's currency; default "0".
    #[schema(value_type = Option<freedumb_kit::openapi::Amount>, example = "1250.00")]
    opening_balance: Option<String>,
    /// 4 to 34 letters and digits (an IBAN, say); spaces and hyphens are
    /// ignored; empty means none. Stored encrypted; only its last four
    /// characters are ever shown.
    #[schema(example = "DE89 3704 0044 0532 0130 00", pattern = r"^[ -]*([A-Za-z0-9][ -]*){4,34}$|^ *$")]
    account_number: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Account {
    id: Uuid,
    name: String,
    kind: AccountKind,
    currency: String,
    /// Decimal string.
    #[schema(example = "1250.00")]
    opening_balance: String,
    /// Opening balance plus every transaction; decimal string.
    #[schema(example = "1187.66")]
    balance: String,
    /// Masked, such as "••••3000".
    account_number: Option<String>,
    archived: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct AccountRow {
    pub id: Uuid,
    name: String,
    kind: AccountKind,
    pub currency: String,
    opening_balance: i64,
    account_number_last4: Option<String>,
    pub archived_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    balance: i64,
}

impl AccountRow {
    pub fn currency(&self) -> anyhow::Result<Currency> {
        Currency::from_code(&self.currency)
            .with_context(|| format!("account {} has unknown currency {}", self.id, self.currency))
    }

    fn into_account(self) -> anyhow::Result<Account> {
        let currency = self.currency()?;
        Ok(Account {
            id: self.id,
            name: self.name,
            kind: self.kind,
            currency: self.currency,
            opening_balance: currency.format(self.opening_balance),
            balance: currency.format(self.balance),
            account_number: self.account_number_last4.as_deref().map(account_number::masked),
            archived: self.archived_at.is_some(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

const SELECT_ACCOUNT: &str = "
    SELECT a.id, a.name, a.kind, a.currency, a.opening_balance, a.account_number_last4, a.archived_at,
           a.created_at, a.updated_at,
           a.opening_balance + COALESCE((SELECT SUM(t.amount) FROM ledger.transactions t WHERE t.account_id = a.id), 0)::bigint
               AS balance
    FROM ledger.accounts a";

/// The caller's account, or 404: another user's account does not exist for them.
pub(crate) async fn find(conn: &mut PgConnection, user_id: Uuid, id: Uuid) -> ApiResult<AccountRow> {
    sqlx::query_as::<_, AccountRow>(&format!("{SELECT_ACCOUNT} WHERE a.id = $1 AND a.user_id = $2"))
        .bind(id)
        .bind(user_id)
        .fetch_optional(conn)
        .await
        .context("failed to load an account")?
        .ok_or_else(|| ApiError::not_found("no such account"))
}

fn parse_currency(code: &str) -> Result<Currency, FieldError> {
    Currency::from_code(code.trim())
        .ok_or_else(|| FieldError::new("currency", "must be a supported ISO 4217 code such as EUR or USD"))
}

pub(crate) fn parse_amount(field: &str, currency: Currency, text: &str) -> Result<i64, FieldError> {
    currency.parse(text).map_err(|err| FieldError::new(field, err.to_string()))
}

/// Opens an account.
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", security(("bearer" = [])), request_body = CreateAccount,
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key and body return the first answer")),
    responses((status = 201, body = Account), (status = "4XX", body = ErrorBody)))]
async fn create_account(
    State(state): State<Ledger>,
    user: AuthUser,
    key: IdempotencyKey,
    Json(req): Json<CreateAccount>,
) -> ApiResult<axum::response::Response> {
    let currency = parse_currency(&req.currency);
    let opening = match &currency {
        Ok(currency) => req.opening_balance.as_deref().map_or(Ok(0), |t| parse_amount("opening_balance", *currency, t)),
        Err(_) => Ok(0),
    };
    let number = match req.account_number.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
        None => Ok(None),
        Some(raw) => account_number::normalise(raw)
            .map(Some)
            .ok_or_else(|| FieldError::new("account_number", "must be 4 to 34 letters and digits")),
    };
    let errors: Vec<FieldError> = [currency.as_ref().err(), opening.as_ref().err(), number.as_ref().err()]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let (Ok(currency), Ok(opening), Ok(number)) = (currency, opening, number) else {
        return Err(ApiError::validation(errors));
    };
    let cipher = state.cipher.clone();
    let fp = fingerprint("POST /v1/accounts", &req);
    idempotency::run(&state.platform.db, SCHEMA, user.user_id, &key, &fp, move |tx| {
        Box::pin(async move {
            let id = Uuid::now_v7();
            let (sealed, last4) = match &number {
                Some(number) => (Some(cipher.seal(id, number)?), Some(account_number::last4(number))),
                None => (None, None),
            };
            sqlx::query(
                "INSERT INTO ledger.accounts (id, user_id, name, kind, currency, opening_balance, account_number_enc, account_number_last4)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(id)
            .bind(user.user_id)
            .bind(req.name.as_str())
            .bind(req.kind)
            .bind(currency.code())
            .bind(opening)
            .bind(sealed)
            .bind(last4)
            .execute(tx.conn())
            .await
            .context("failed to insert an account")?;
            account_events::changed(tx.conn(), account_events::CREATED, id).await?;
            let account = find(tx.conn(), user.user_id, id).await?.into_account()?;
            Ok((StatusCode::CREATED, serde_json::to_value(account).context("serialise")?))
        })
    })
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListAccounts {
    /// Include archived accounts; default false.
    #[serde(default)]
    include_archived: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AccountList {
    items: Vec<Account>,
}

/// The caller's accounts, oldest first, with balances.
#[utoipa::path(get, path = "/v1/accounts", tag = "accounts", security(("bearer" = [])), params(ListAccounts),
    responses((status = 200, body = AccountList), (status = "4XX", body = ErrorBody)))]
async fn list_accounts(
    State(state): State<Ledger>,
    user: AuthUser,
    Query(q): Query<ListAccounts>,
) -> ApiResult<Json<AccountList>> {
    let rows: Vec<AccountRow> = sqlx::query_as(&format!(
        "{SELECT_ACCOUNT} WHERE a.user_id = $1 AND ($2 OR a.archived_at IS NULL) ORDER BY a.created_at, a.id"
    ))
    .bind(user.user_id)
    .bind(q.include_archived)
    .fetch_all(&state.platform.db.pool)
    .await
    .context("failed to list accounts")?;
    let items = rows.into_iter().map(AccountRow::into_account).collect::<anyhow::Result<_>>()?;
    Ok(Json(AccountList { items }))
}

/// One account with its balance.
#[utoipa::path(get, path = "/v1/accounts/{id}", tag = "accounts", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Account), (status = 404, body = ErrorBody), (status = "4XX", body = ErrorBody)))]
async fn get_account(State(state): State<Ledger>, user: AuthUser, Path(id): Path<Uuid>) -> ApiResult<Json<Account>> {
    let pool = state.platform.db.pool.clone();
    // The cache key is per user and account, so a hit can never serve one
    // user another user's account.
    let cache_id = format!("{}:{id}", user.user_id);
    let account = state
        .platform
        .cache
        .get_or_load_versioned(BALANCE_CACHE, &cache_id, BALANCE_TTL, || async move {
            let mut conn = pool.acquire().await.context("failed to get a connection")?;
            match find(&mut conn, user.user_id, id).await {
                Ok(row) => Ok(Some(row.into_account()?)),
                Err(err) if err.status() == StatusCode::NOT_FOUND => Ok(None),
                Err(err) => Err(err),
            }
        })
        .await?;
    account.map(Json).ok_or_else(|| ApiError::not_found("no such account"))
}

/// Invalidates the cached view of accounts after a committed write.
pub(crate) async fn changed(state: &Ledger, user_id: Uuid, account_ids: &[Uuid]) {
    for id in account_ids {
        state.platform.cache.bump(BALANCE_CACHE, &format!("{user_id}:{id}")).await;
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAccount {
    name: Option<AccountName>,
    kind: Option<AccountKind>,
    /// Decimal string in the account's currency.
    #[schema(value_type = Option<freedumb_kit::openapi::Amount>)]
    opening_balance: Option<String>,
    /// A new number (4 to 34 letters and digits; spaces and hyphens are
    /// ignored), or "" to remove it.
    #[schema(pattern = r"^[ -]*([A-Za-z0-9][ -]*){4,34}$|^ *$")]
    account_number: Option<String>,
}

/// Renames an account, changes its kind, opening balance or number. The
/// currency cannot change: existing amounts are in it.
#[utoipa::path(patch, path = "/v1/accounts/{id}", tag = "accounts", security(("bearer" = [])), params(("id" = Uuid, Path)),
    request_body = UpdateAccount, responses((status = 200, body = Account), (status = 404, body = ErrorBody), (status = "4XX", body = ErrorBody)))]
async fn update_account(
    State(state): State<Ledger>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Json(req): Json<UpdateAccount>,
) -> ApiResult<Json<Account>> {
    let mut tx = state.platform.db.begin().await.context("failed to begin")?;
    let current = find(tx.conn(), user.user_id, id).await?;
    let currency = current.currency()?;
    let opening = req.opening_balance.as_deref().map(|t| parse_amount("opening_balance", currency, t)).transpose();
    let number = match req.account_number.as_deref().map(str::trim) {
        None => Ok(None),
        Some("") => Ok(Some(None)),
        Some(raw) => account_number::normalise(raw)
            .map(|n| Some(Some(n)))
            .ok_or_else(|| FieldError::new("account_number", "must be 4 to 34 letters and digits")),
    };
    let errors: Vec<FieldError> =
        [opening.as_ref().err(), number.as_ref().err()].into_iter().flatten().cloned().collect();
    let (Ok(opening), Ok(number)) = (opening, number) else {
        return Err(ApiError::validation(errors));
    };
    sqlx::query(
        "UPDATE ledger.accounts SET name = COALESCE($3, name), kind = COALESCE($4, kind),
                opening_balance = COALESCE($5, opening_balance), updated_at = now()
         WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(user.user_id)
    .bind(req.name.as_deref())
    .bind(req.kind)
    .bind(opening)
    .execute(tx.conn())
    .await
    .context("failed to update an account")?;
    if let Some(number) = number {
        set_number(tx.conn(), &state.cipher, id, number.as_deref()).await?;
    }
    account_events::changed(tx.conn(), account_events::UPDATED, id).await?;
    let account = find(tx.conn(), user.user_id, id).await?.into_account()?;
    tx.commit().await.context("failed to commit")?;
    changed(&state, user.user_id, &[id]).await;
    Ok(Json(account))
}

async fn set_number(conn: &mut PgConnection, cipher: &Cipher, id: Uuid, number: Option<&str>) -> ApiResult<()> {
    let (sealed, last4) = match number {
        Some(number) => (Some(cipher.seal(id, number)?), Some(account_number::last4(number))),
        None => (None, None),
    };
    sqlx::query("UPDATE ledger.accounts SET account_number_enc = $2, account_number_last4 = $3 WHERE id = $1")
        .bind(id)
        .bind(sealed)
        .bind(last4)
        .execute(conn)
        .await
        .context("failed to store an account number")?;
    Ok(())
}

async fn set_archived(state: &Ledger, user: AuthUser, id: Uuid, archived: bool) -> ApiResult<Json<Account>> {
    let mut tx = state.platform.db.begin().await.context("failed to begin")?;
    let was_archived = find(tx.conn(), user.user_id, id).await?.archived_at.is_some();
    sqlx::query(
        "UPDATE ledger.accounts SET archived_at = CASE WHEN $3 THEN COALESCE(archived_at, now()) END, updated_at = now()
         WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(user.user_id)
    .bind(archived)
    .execute(tx.conn())
    .await
    .context("failed to archive an account")?;
    // Archiving an archived account (or bringing back one that is not)
    // changes nothing, and says nothing.
    match (was_archived, archived) {
        (false, true) => account_events::changed(tx.conn(), account_events::ARCHIVED, id).await?,
        (true, false) => account_events::changed(tx.conn(), account_events::UPDATED, id).await?,
        _ => {}
    }
    let account = find(tx.conn(), user.user_id, id).await?.into_account()?;
    tx.commit().await.context("failed to commit")?;
    changed(state, user.user_id, &[id]).await;
    Ok(Json(account))
}

/// Archives an account: it keeps its transactions and balance, leaves the
/// default listing, and takes no new transactions.
#[utoipa::path(post, path = "/v1/accounts/{id}/archive", tag = "accounts", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Account), (status = 404, body = ErrorBody), (status = "4XX", body = ErrorBody)))]
async fn archive_account(
    State(state): State<Ledger>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Account>> {
    set_archived(&state, user, id, true).await
}

/// Brings an archived account back.
#[utoipa::path(post, path = "/v1/accounts/{id}/unarchive", tag = "accounts", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Account), (status = 404, body = ErrorBody), (status = "4XX", body = ErrorBody)))]
async fn unarchive_account(
    State(state): State<Ledger>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Account>> {
    set_archived(&state, user, id, false).await
}

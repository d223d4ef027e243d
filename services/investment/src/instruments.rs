//! `/v1/instruments`: the securities a user trades (a symbol on an
//! exchange, its asset class and the currency it is quoted in). Each user
//! has their own; prices are looked up by symbol and exchange.

use std::borrow::Cow;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use freedumb_kit::auth::AuthUser;
use freedumb_kit::extract::{Json, Path};
use freedumb_kit::idempotency::{self, IdempotencyKey, fingerprint};
use freedumb_kit::money::Currency;
use freedumb_kit::{ApiError, ApiResult, ErrorBody, FieldError, FieldErrors};
use serde::{Deserialize, Deserializer, Serialize};
use sqlx::PgConnection;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::market::Listing;
use crate::text::InstrumentName;
use crate::{Investments, SCHEMA};

pub(crate) fn router() -> OpenApiRouter<Investments> {
    OpenApiRouter::new()
        .routes(routes!(create_instrument, list_instruments))
        .routes(routes!(get_instrument, delete_instrument))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum AssetClass {
    Equity,
    Etf,
    Fund,
    Bond,
    Crypto,
    Commodity,
    Other,
}

/// A ticker symbol as exchanges and data providers write them (`AAPL`,
/// `BRK.B`, `7203`, `BTC-USD`, `^GSPC`): 1 to 20 letters, digits and
/// `.-/^=_`, kept in capitals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol(String);

/// An exchange: a market identifier code such as `XNAS` or `XETR`, or a
/// provider's short name such as `NASDAQ`: 1 to 12 letters and digits, kept
/// in capitals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange(String);

impl Symbol {
    const PATTERN: &str = r"^[A-Za-z0-9.\-/^=_]{1,20}$";

    pub fn parse(raw: &str) -> Result<Symbol, String> {
        let ok =
            (1..=20).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b".-/^=_".contains(&b));
        ok.then(|| Symbol(raw.to_ascii_uppercase()))
            .ok_or_else(|| "must be 1 to 20 letters, digits and . - / ^ = _".to_owned())
    }
}

impl Exchange {
    const PATTERN: &str = r"^[A-Za-z0-9]{1,12}$";

    pub fn parse(raw: &str) -> Result<Exchange, String> {
        let ok = (1..=12).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_alphanumeric());
        ok.then(|| Exchange(raw.to_ascii_uppercase())).ok_or_else(|| "must be 1 to 12 letters and digits".to_owned())
    }
}

macro_rules! code_type {
    ($ty:ident, $description:expr, $example:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = Cow::<'de, str>::deserialize(d).map_err(|_| serde::de::Error::custom("expected a string"))?;
                $ty::parse(&raw).map_err(serde::de::Error::custom)
            }
        }

        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some($ty::PATTERN))
                    .description(Some($description))
                    .examples([$example])
                    .into()
            }
        }

        impl ToSchema for $ty {}
    };
}

code_type!(Symbol, "1 to 20 letters, digits and `.-/^=_`; stored in capitals.", "AAPL");
code_type!(
    Exchange,
    "A market identifier code (XNAS, XETR) or 1 to 12 letters and digits; stored in capitals.",
    "XNAS"
);

#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct InstrumentRow {
    pub id: Uuid,
    pub symbol: String,
    pub exchange: String,
    asset_class: AssetClass,
    currency: String,
    name: Option<String>,
    created_at: DateTime<Utc>,
}

impl InstrumentRow {
    pub fn currency(&self) -> anyhow::Result<Currency> {
        Currency::from_code(&self.currency)
            .with_context(|| format!("instrument {} has unknown currency {}", self.id, self.currency))
    }

    pub fn listing(&self) -> anyhow::Result<Listing> {
        Ok(Listing { symbol: self.symbol.clone(), exchange: self.exchange.clone(), currency: self.currency()? })
    }

    pub fn view(&self) -> Instrument {
        Instrument {
            id: self.id,
            symbol: self.symbol.clone(),
            exchange: self.exchange.clone(),
            asset_class: self.asset_class,
            currency: self.currency.clone(),
            name: self.name.clone(),
            created_at: self.created_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Instrument {
    id: Uuid,
    #[schema(example = "AAPL")]
    symbol: String,
    #[schema(example = "XNAS")]
    exchange: String,
    asset_class: AssetClass,
    /// The currency it is quoted and traded in.
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    currency: String,
    name: Option<String>,
    created_at: DateTime<Utc>,
}

pub(crate) const SELECT: &str =
    "SELECT id, symbol, exchange, asset_class, currency, name, created_at FROM investment.instruments";

/// The caller's instrument, or 404.
pub(crate) async fn find(conn: &mut PgConnection, user_id: Uuid, id: Uuid) -> ApiResult<InstrumentRow> {
    find_optional(conn, user_id, id).await?.ok_or_else(|| ApiError::not_found("no such instrument"))
}

pub(crate) async fn find_optional(
    conn: &mut PgConnection,
    user_id: Uuid,
    id: Uuid,
) -> ApiResult<Option<InstrumentRow>> {
    Ok(sqlx::query_as(&format!("{SELECT} WHERE id = $1 AND user_id = $2"))
        .bind(id)
        .bind(user_id)
        .fetch_optional(conn)
        .await
        .context("failed to load an instrument")?)
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInstrument {
    symbol: Symbol,
    exchange: Exchange,
    asset_class: AssetClass,
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode, example = "USD")]
    currency: String,
    /// Empty means none.
    #[schema(example = "Apple Inc.")]
    name: Option<InstrumentName>,
}

/// Adds an instrument. A symbol is one instrument per exchange: the same
/// symbol and exchange again is a 409 naming the existing one.
#[utoipa::path(post, path = "/v1/instruments", tag = "instruments", security(("bearer" = [])), request_body = CreateInstrument,
    params(IdempotencyKey),
    responses((status = 201, body = Instrument),
        (status = 409, body = ErrorBody, description = "the caller already has an instrument with this symbol on this exchange")))]
async fn create_instrument(
    State(state): State<Investments>,
    user: AuthUser,
    key: IdempotencyKey,
    Json(req): Json<CreateInstrument>,
) -> ApiResult<axum::response::Response> {
    let mut errors = FieldErrors::default();
    let currency = errors.keep(
        Currency::from_code(req.currency.trim())
            .ok_or_else(|| FieldError::new("currency", "must be a supported ISO 4217 code")),
    );
    let (Some(currency), true) = (currency, errors.is_empty()) else { return Err(errors.into_error()) };
    let fp = fingerprint("POST /v1/instruments", &req);
    idempotency::run(&state.platform.db, SCHEMA, user.user_id, &key, &fp, move |tx| {
        Box::pin(async move {
            let id = Uuid::now_v7();
            let inserted = sqlx::query(
                "INSERT INTO investment.instruments (id, user_id, symbol, exchange, asset_class, currency, name)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (user_id, symbol, exchange) DO NOTHING",
            )
            .bind(id)
            .bind(user.user_id)
            .bind(&req.symbol.0)
            .bind(&req.exchange.0)
            .bind(req.asset_class)
            .bind(currency.code())
            .bind(req.name.clone().and_then(InstrumentName::non_empty))
            .execute(tx.conn())
            .await
            .context("failed to insert an instrument")?
            .rows_affected();
            if inserted == 0 {
                let (existing,): (Uuid,) = sqlx::query_as(
                    "SELECT id FROM investment.instruments WHERE user_id = $1 AND symbol = $2 AND exchange = $3",
                )
                .bind(user.user_id)
                .bind(&req.symbol.0)
                .bind(&req.exchange.0)
                .fetch_one(tx.conn())
                .await
                .context("failed to find an existing instrument")?;
                return Err(ApiError::conflict(
                    "instrument_exists",
                    format!("{} on {} is already instrument {existing}", req.symbol.0, req.exchange.0),
                ));
            }
            let instrument = find(tx.conn(), user.user_id, id).await?.view();
            Ok((StatusCode::CREATED, serde_json::to_value(instrument).context("serialise")?))
        })
    })
    .await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InstrumentList {
    items: Vec<Instrument>,
}

/// The caller's instruments, by symbol.
#[utoipa::path(get, path = "/v1/instruments", tag = "instruments", security(("bearer" = [])),
    responses((status = 200, body = InstrumentList)))]
async fn list_instruments(State(state): State<Investments>, user: AuthUser) -> ApiResult<Json<InstrumentList>> {
    let rows: Vec<InstrumentRow> = sqlx::query_as(&format!("{SELECT} WHERE user_id = $1 ORDER BY symbol, exchange"))
        .bind(user.user_id)
        .fetch_all(&state.platform.db.pool)
        .await
        .context("failed to list instruments")?;
    Ok(Json(InstrumentList { items: rows.iter().map(InstrumentRow::view).collect() }))
}

/// One instrument.
#[utoipa::path(get, path = "/v1/instruments/{id}", tag = "instruments", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 200, body = Instrument)))]
async fn get_instrument(
    State(state): State<Investments>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Instrument>> {
    let mut conn = state.platform.db.pool.acquire().await.context("failed to get a connection")?;
    Ok(Json(find(&mut conn, user.user_id, id).await?.view()))
}

/// Deletes an instrument no activity refers to.
#[utoipa::path(delete, path = "/v1/instruments/{id}", tag = "instruments", security(("bearer" = [])), params(("id" = Uuid, Path)),
    responses((status = 204, description = "deleted"),
        (status = 409, body = ErrorBody, description = "activities refer to it; delete them first")))]
async fn delete_instrument(
    State(state): State<Investments>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<StatusCode> {
    let mut tx = state.platform.db.begin().await.context("failed to begin")?;
    find(tx.conn(), user.user_id, id).await?;
    let (used,): (bool,) =
        sqlx::query_as("SELECT EXISTS (SELECT 1 FROM investment.activities WHERE instrument_id = $1)")
            .bind(id)
            .fetch_one(tx.conn())
            .await
            .context("failed to check an instrument's activities")?;
    if used {
        return Err(ApiError::conflict("instrument_in_use", "activities refer to this instrument; delete them first"));
    }
    sqlx::query("DELETE FROM investment.instruments WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user.user_id)
        .execute(tx.conn())
        .await
        .context("failed to delete an instrument")?;
    tx.commit().await.context("failed to commit")?;
    Ok(StatusCode::NO_CONTENT)
}

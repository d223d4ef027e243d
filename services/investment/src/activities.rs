//! `/v1/portfolios/{id}/activities`: record, list, read and delete what
//! happened in a portfolio.
//!
//! One request type carries every kind; which fields a kind takes is the
//! table [`FIELDS`], and the OpenAPI document states it from the same table
//! (one schema per kind, `oneOf`), so the document and the server cannot
//! disagree. A field a kind does not use is refused rather than ignored.
//!
//! | kind | instrument | what it records | cash |
//! | --- | --- | --- | --- |
//! | `buy` | yes | `quantity` at `unit_price`, plus `fee`: a new lot | −(gross + fee) |
//! | `sell` | yes | `quantity` at `unit_price`, less `fee`: disposals, realised gain | gross − fee |
//! | `transfer_in` | yes | `quantity` arriving at a cost of `unit_price` each: a new lot | none |
//! | `transfer_out` | yes | `quantity` leaving at cost: disposals without a gain | none |
//! | `split` | yes | `ratio` `to:from` applied to every open lot | none |
//! | `dividend` | yes | `amount` in the instrument's currency | +amount |
//! | `interest` | no | `amount` in `currency` (default the base currency) | +amount |
//! | `fee` | no | `amount` in `currency` | −amount |
//! | `deposit`, `withdrawal` | no | `amount` in `currency` | ±amount |
//!
//! Gross is `quantity × unit_price` rounded half away from zero to the
//! currency's minor unit. Each activity stores the FX rate from its
//! currency to the portfolio's base currency on its date: costs and income
//! in the base currency use the rate of their own date.
//!
//! A trade, split or transfer rebuilds the holding's lots ([`crate::lots`])
//! in the same transaction, under a lock on the portfolio: a sale of more
//! than is held on its date, or one that a backdated activity or a deletion
//! would leave selling more than is held, is refused.

use std::collections::BTreeMap;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, NaiveDate, Utc};
use freedumb_kit::auth::AuthUser;
use freedumb_kit::date::IsoDate;
use freedumb_kit::extract::{Json, Path};
use freedumb_kit::idempotency::{self, IdempotencyKey, fingerprint};
use freedumb_kit::money::Currency;
use freedumb_kit::{ApiError, ApiResult, ErrorBody, FieldError, FieldErrors};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::decimal::{Quantity, Ratio, UnitPrice, convert, from_db, show, to_minor};
use crate::lots::{self, LotError, Money2, Step};
use crate::market::{MarketData, MarketError, Source};
use crate::portfolios::{self, PortfolioRow};
use crate::text::Note;
use crate::{Investments, SCHEMA, instruments, stored_date};

pub(crate) fn router() -> OpenApiRouter<Investments> {
    OpenApiRouter::new()
        .routes(routes!(create_activity, list_activities))
        .routes(routes!(get_activity, delete_activity))
}

pub const ACTIVITY_RECORDED: &str = "investment.activity_recorded";
pub const ACTIVITY_DELETED: &str = "investment.activity_deleted";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Kind {
    Buy,
    Sell,
    Dividend,
    Interest,
    Fee,
    Split,
    Deposit,
    Withdrawal,
    TransferIn,
    TransferOut,
}

impl Kind {
    pub(crate) const ALL: [Kind; 10] = [
        Kind::Buy,
        Kind::Sell,
        Kind::Dividend,
        Kind::Interest,
        Kind::Fee,
        Kind::Split,
        Kind::Deposit,
        Kind::Withdrawal,
        Kind::TransferIn,
        Kind::TransferOut,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Buy => "buy",
            Kind::Sell => "sell",
            Kind::Dividend => "dividend",
            Kind::Interest => "interest",
            Kind::Fee => "fee",
            Kind::Split => "split",
            Kind::Deposit => "deposit",
            Kind::Withdrawal => "withdrawal",
            Kind::TransferIn => "transfer_in",
            Kind::TransferOut => "transfer_out",
        }
    }

    /// Whether it changes the holding's lots.
    pub(crate) fn moves_lots(self) -> bool {
        matches!(self, Kind::Buy | Kind::Sell | Kind::Split | Kind::TransferIn | Kind::TransferOut)
    }
}

/// The optional fields of a request; `kind` and `date` are always required.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    InstrumentId,
    Quantity,
    UnitPrice,
    Fee,
    Amount,
    Currency,
    Ratio,
    Note,
}

impl Field {
    const ALL: [Field; 8] = [
        Field::InstrumentId,
        Field::Quantity,
        Field::UnitPrice,
        Field::Fee,
        Field::Amount,
        Field::Currency,
        Field::Ratio,
        Field::Note,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Field::InstrumentId => "instrument_id",
            Field::Quantity => "quantity",
            Field::UnitPrice => "unit_price",
            Field::Fee => "fee",
            Field::Amount => "amount",
            Field::Currency => "currency",
            Field::Ratio => "ratio",
            Field::Note => "note",
        }
    }

    fn schema(self) -> RefOr<Schema> {
        match self {
            Field::InstrumentId => ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Uuid)))
                .description(Some("One of the caller's instruments."))
                .into(),
            Field::Quantity => Quantity::schema(),
            Field::UnitPrice => UnitPrice::schema(),
            Field::Fee => with_description(
                freedumb_kit::openapi::NonNegativeAmount::schema(),
                "The broker's fee in the instrument's currency; default 0. A sale's fee is at most its gross amount.",
            ),
            Field::Amount => freedumb_kit::openapi::PositiveAmount::schema(),
            Field::Currency => with_description(
                freedumb_kit::openapi::CurrencyCode::schema(),
                "The currency of `amount`; default the portfolio's base currency.",
            ),
            Field::Ratio => Ratio::schema(),
            Field::Note => Note::schema(),
        }
    }
}

fn with_description(schema: RefOr<Schema>, description: &str) -> RefOr<Schema> {
    match schema {
        RefOr::T(Schema::Object(mut object)) => {
            object.description = Some(description.to_owned());
            RefOr::T(Schema::Object(object))
        }
        other => other,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    Required,
    Optional,
}

use Field as F;
use Need::{Optional as O, Required as R};

/// Which fields each kind takes. Every other field is refused.
/// (`pub(crate)` for the CSV import, which keeps only these of a row.)
const FIELDS: &[(Kind, &[(Field, Need)])] = &[
    (Kind::Buy, &[(F::InstrumentId, R), (F::Quantity, R), (F::UnitPrice, R), (F::Fee, O), (F::Note, O)]),
    (Kind::Sell, &[(F::InstrumentId, R), (F::Quantity, R), (F::UnitPrice, R), (F::Fee, O), (F::Note, O)]),
    (Kind::TransferIn, &[(F::InstrumentId, R), (F::Quantity, R), (F::UnitPrice, R), (F::Note, O)]),
    (Kind::TransferOut, &[(F::InstrumentId, R), (F::Quantity, R), (F::Note, O)]),
    (Kind::Split, &[(F::InstrumentId, R), (F::Ratio, R), (F::Note, O)]),
    (Kind::Dividend, &[(F::InstrumentId, R), (F::Amount, R), (F::Note, O)]),
    (Kind::Interest, &[(F::Amount, R), (F::Currency, O), (F::Note, O)]),
    (Kind::Fee, &[(F::Amount, R), (F::Currency, O), (F::Note, O)]),
    (Kind::Deposit, &[(F::Amount, R), (F::Currency, O), (F::Note, O)]),
    (Kind::Withdrawal, &[(F::Amount, R), (F::Currency, O), (F::Note, O)]),
];

pub(crate) fn fields_of(kind: Kind) -> &'static [(Field, Need)] {
    FIELDS.iter().find(|(k, _)| *k == kind).map(|(_, fields)| *fields).unwrap_or(&[])
}

/// An activity to record. Which fields apply depends on `kind`; see the
/// schema of each kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewActivity {
    pub(crate) kind: Kind,
    pub(crate) date: IsoDate,
    pub(crate) instrument_id: Option<Uuid>,
    pub(crate) quantity: Option<Quantity>,
    pub(crate) unit_price: Option<UnitPrice>,
    pub(crate) fee: Option<String>,
    pub(crate) amount: Option<String>,
    pub(crate) currency: Option<String>,
    pub(crate) ratio: Option<Ratio>,
    pub(crate) note: Option<Note>,
}

impl NewActivity {
    fn has(&self, field: Field) -> bool {
        match field {
            F::InstrumentId => self.instrument_id.is_some(),
            F::Quantity => self.quantity.is_some(),
            F::UnitPrice => self.unit_price.is_some(),
            F::Fee => self.fee.is_some(),
            F::Amount => self.amount.is_some(),
            F::Currency => self.currency.is_some(),
            F::Ratio => self.ratio.is_some(),
            F::Note => self.note.is_some(),
        }
    }

    /// The fields this kind requires and the ones it does not use.
    pub(crate) fn check_fields(&self, errors: &mut FieldErrors) {
        let allowed = fields_of(self.kind);
        for field in Field::ALL {
            match allowed.iter().find(|(f, _)| *f == field).map(|(_, need)| *need) {
                Some(Need::Required) if !self.has(field) => {
                    errors.push(FieldError::new(field.name(), format!("is required for a {}", self.kind.as_str())))
                }
                None if self.has(field) => {
                    errors.push(FieldError::new(field.name(), format!("is not used by a {}", self.kind.as_str())))
                }
                _ => {}
            }
        }
    }
}

/// The request's schema: one object per kind, from [`FIELDS`].
pub struct NewActivityDoc;

impl PartialSchema for NewActivityDoc {
    fn schema() -> RefOr<Schema> {
        let mut one_of = OneOfBuilder::new().description(Some(
            "One schema per `kind`: the fields it requires and the ones it takes; any other field is refused. \
             `date` is today or earlier.",
        ));
        for kind in Kind::ALL {
            let mut object = ObjectBuilder::new()
                .title(Some(kind.as_str()))
                .schema_type(Type::Object)
                .property("kind", ObjectBuilder::new().schema_type(Type::String).enum_values(Some([kind.as_str()])))
                .required("kind")
                .property("date", IsoDate::schema())
                .required("date")
                .additional_properties(Some(AdditionalProperties::FreeForm(false)));
            for (field, need) in fields_of(kind) {
                object = object.property(field.name(), field.schema());
                if *need == Need::Required {
                    object = object.required(field.name());
                }
            }
            one_of = one_of.item(object);
        }
        one_of.into()
    }
}

impl ToSchema for NewActivityDoc {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("NewActivity")
    }
}

/// An FX rate as the API shows it: from a currency to the portfolio's base
/// currency, with who produced it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Fx {
    /// One unit of `from` is `rate` units of `to`.
    #[schema(value_type = crate::decimal::DecimalOut)]
    pub rate: String,
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    pub from: String,
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    pub to: String,
    pub date: IsoDate,
    /// `simulated` for the offline source's rates, `identity` for a
    /// currency into itself.
    pub source: Source,
}

/// What a sale or transfer out took from one lot.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DisposalView {
    /// The lot: the id of the acquisition (buy or transfer in) that opened it.
    lot_id: Uuid,
    acquired_on: IsoDate,
    #[schema(value_type = crate::decimal::QuantityOut)]
    quantity: String,
    /// In the instrument's currency.
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    cost: String,
    /// In the base currency, at the FX rate of the acquisition.
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    cost_base: String,
    /// Null for a transfer out.
    #[schema(value_type = Option<freedumb_kit::openapi::Amount>)]
    proceeds: Option<String>,
    /// At the FX rate of the sale.
    #[schema(value_type = Option<freedumb_kit::openapi::Amount>)]
    proceeds_base: Option<String>,
    #[schema(value_type = Option<freedumb_kit::openapi::Amount>)]
    gain: Option<String>,
    /// Includes the currency's move between acquisition and sale.
    #[schema(value_type = Option<freedumb_kit::openapi::Amount>)]
    gain_base: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Activity {
    id: Uuid,
    portfolio_id: Uuid,
    kind: Kind,
    date: IsoDate,
    instrument_id: Option<Uuid>,
    #[schema(value_type = Option<crate::decimal::QuantityOut>)]
    quantity: Option<String>,
    #[schema(value_type = Option<crate::decimal::DecimalOut>)]
    unit_price: Option<String>,
    /// `quantity × unit_price`, rounded to the currency's minor unit.
    #[schema(value_type = Option<freedumb_kit::openapi::Amount>)]
    gross: Option<String>,
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    fee: String,
    #[schema(value_type = Option<freedumb_kit::openapi::Amount>)]
    amount: Option<String>,
    #[schema(value_type = Option<String>, example = "3:1")]
    ratio: Option<String>,
    /// The currency of every amount of the activity: the instrument's for a
    /// trade or dividend.
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    currency: String,
    /// The cash it moved: negative out, positive in, zero for splits and
    /// transfers.
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    cash: String,
    /// `cash` in the base currency at `fx`.
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    cash_base: String,
    fx: Fx,
    /// A sale's realised gain: proceeds less the cost of its disposals.
    #[schema(value_type = Option<freedumb_kit::openapi::Amount>)]
    realised_gain: Option<String>,
    #[schema(value_type = Option<freedumb_kit::openapi::Amount>)]
    realised_gain_base: Option<String>,
    /// For a sale or transfer out: the lots it took from, oldest first.
    disposals: Vec<DisposalView>,
    note: Option<String>,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct ActivityRow {
    id: Uuid,
    portfolio_id: Uuid,
    kind: Kind,
    date: NaiveDate,
    instrument_id: Option<Uuid>,
    quantity: Option<String>,
    unit_price: Option<String>,
    gross_minor: Option<i64>,
    fee_minor: i64,
    amount_minor: Option<i64>,
    ratio_to: Option<i32>,
    ratio_from: Option<i32>,
    cash_minor: i64,
    cash_currency: String,
    cash_base_minor: i64,
    fx_rate: String,
    fx_source: String,
    note: Option<String>,
    created_at: DateTime<Utc>,
}

const SELECT: &str = "
    SELECT a.id, a.portfolio_id, a.kind, a.date, a.instrument_id, a.quantity::text AS quantity,
           a.unit_price::text AS unit_price, a.gross_minor, a.fee_minor, a.amount_minor, a.ratio_to, a.ratio_from,
           a.cash_minor, a.cash_currency, a.cash_base_minor, a.fx_rate::text AS fx_rate, a.fx_source, a.note, a.created_at
    FROM investment.activities a";

#[derive(Debug, sqlx::FromRow)]
struct DisposalRow {
    activity_id: Uuid,
    lot_activity_id: Uuid,
    acquired_on: NaiveDate,
    quantity: String,
    cost_minor: i64,
    cost_base_minor: i64,
    proceeds_minor: Option<i64>,
    proceeds_base_minor: Option<i64>,
}

impl ActivityRow {
    fn into_activity(self, base: Currency, disposals: Vec<DisposalRow>) -> anyhow::Result<Activity> {
        let currency = Currency::from_code(&self.cash_currency)
            .with_context(|| format!("activity {} has unknown currency {}", self.id, self.cash_currency))?;
        let disposals: Vec<DisposalView> = disposals
            .into_iter()
            .map(|d| {
                Ok(DisposalView {
                    lot_id: d.lot_activity_id,
                    acquired_on: stored_date(d.acquired_on),
                    quantity: show(from_db(&d.quantity)?),
                    cost: currency.format(d.cost_minor),
                    cost_base: base.format(d.cost_base_minor),
                    proceeds: d.proceeds_minor.map(|p| currency.format(p)),
                    proceeds_base: d.proceeds_base_minor.map(|p| base.format(p)),
                    gain: d.proceeds_minor.map(|p| currency.format(p - d.cost_minor)),
                    gain_base: d.proceeds_base_minor.map(|p| base.format(p - d.cost_base_minor)),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let sold = self.kind == Kind::Sell;
        let gain = |parse: fn(&DisposalView) -> (Option<&String>, &String), c: Currency| -> Option<String> {
            sold.then(|| {
                let total: i64 = disposals
                    .iter()
                    .map(|d| {
                        let (proceeds, cost) = parse(d);
                        proceeds.and_then(|p| c.parse(p).ok()).unwrap_or(0) - c.parse(cost).unwrap_or(0)
                    })
                    .sum();
                c.format(total)
            })
        };
        let realised_gain = gain(|d| (d.proceeds.as_ref(), &d.cost), currency);
        let realised_gain_base = gain(|d| (d.proceeds_base.as_ref(), &d.cost_base), base);
        Ok(Activity {
            id: self.id,
            portfolio_id: self.portfolio_id,
            kind: self.kind,
            date: stored_date(self.date),
            instrument_id: self.instrument_id,
            quantity: self.quantity.as_deref().map(from_db).transpose()?.map(show),
            unit_price: self.unit_price.as_deref().map(from_db).transpose()?.map(show),
            gross: self.gross_minor.map(|g| currency.format(g)),
            fee: currency.format(self.fee_minor),
            amount: self.amount_minor.map(|a| currency.format(a)),
            ratio: self.ratio_to.zip(self.ratio_from).map(|(to, from)| format!("{to}:{from}")),
            currency: currency.code().to_owned(),
            cash: currency.format(self.cash_minor),
            cash_base: base.format(self.cash_base_minor),
            fx: Fx {
                rate: show(from_db(&self.fx_rate)?),
                from: currency.code().to_owned(),
                to: base.code().to_owned(),
                date: stored_date(self.date),
                source: Source::from_db(&self.fx_source)?,
            },
            realised_gain,
            realised_gain_base,
            disposals,
            note: self.note,
            created_at: self.created_at,
        })
    }
}

async fn disposals_of(
    conn: &mut PgConnection,
    activity_ids: &[Uuid],
) -> anyhow::Result<BTreeMap<Uuid, Vec<DisposalRow>>> {
    let rows: Vec<DisposalRow> = sqlx::query_as(
        "SELECT d.activity_id, d.lot_activity_id, l.date AS acquired_on, d.quantity::text AS quantity, d.cost_minor,
                d.cost_base_minor, d.proceeds_minor, d.proceeds_base_minor
         FROM investment.lot_disposals d JOIN investment.activities l ON l.id = d.lot_activity_id
         WHERE d.activity_id = ANY($1) ORDER BY d.activity_id, d.position",
    )
    .bind(activity_ids)
    .fetch_all(conn)
    .await
    .context("failed to load disposals")?;
    let mut by_activity: BTreeMap<Uuid, Vec<DisposalRow>> = BTreeMap::new();
    for row in rows {
        by_activity.entry(row.activity_id).or_default().push(row);
    }
    Ok(by_activity)
}

async fn load(conn: &mut PgConnection, portfolio: &PortfolioRow, id: Uuid) -> ApiResult<Activity> {
    let row: ActivityRow = sqlx::query_as(&format!("{SELECT} WHERE a.id = $1 AND a.portfolio_id = $2"))
        .bind(id)
        .bind(portfolio.id)
        .fetch_optional(&mut *conn)
        .await
        .context("failed to load an activity")?
        .ok_or_else(|| ApiError::not_found("no such activity"))?;
    let mut disposals = disposals_of(conn, &[id]).await?;
    Ok(row.into_activity(portfolio.base()?, disposals.remove(&id).unwrap_or_default())?)
}

/// What a request becomes once its amounts are read in its currency.
pub(crate) struct Effects {
    currency: Currency,
    gross: Option<i64>,
    fee: i64,
    amount: Option<i64>,
    cash: i64,
}

fn money(field: &str, currency: Currency, text: &str, positive: bool) -> Result<i64, FieldError> {
    match currency.parse(text) {
        Ok(value) if positive && value <= 0 => Err(FieldError::new(field, "must be greater than zero")),
        Ok(value) if value < 0 => Err(FieldError::new(field, "must not be negative")),
        Ok(value) => Ok(value),
        Err(err) => Err(FieldError::new(field, err.to_string())),
    }
}

/// The caller's instrument the request names, or a 422 naming
/// `instrument_id`: another user's is no more tradeable than none.
async fn instrument_of(
    conn: &mut PgConnection,
    user_id: Uuid,
    req: &NewActivity,
) -> ApiResult<Option<instruments::InstrumentRow>> {
    match req.instrument_id {
        Some(id) => Ok(Some(
            instruments::find_optional(conn, user_id, id)
                .await?
                .ok_or_else(|| ApiError::field("instrument_id", "is not one of your instruments"))?,
        )),
        None => Ok(None),
    }
}

/// Reads the amounts in the activity's currency (the instrument's, else
/// `currency`, else the base currency) and works out its cash.
pub(crate) fn effects(
    req: &NewActivity,
    instrument: Option<&instruments::InstrumentRow>,
    base: Currency,
) -> Result<Effects, Vec<FieldError>> {
    let mut errors: Vec<FieldError> = Vec::new();
    let mut keep = |result: Result<i64, FieldError>| result.map_err(|e| errors.push(e)).ok();
    let currency = match (instrument, req.currency.as_deref()) {
        (Some(instrument), _) => {
            instrument.currency().map_err(|e| vec![FieldError::new("instrument_id", e.to_string())])?
        }
        (None, Some(code)) => Currency::from_code(code.trim())
            .ok_or_else(|| vec![FieldError::new("currency", "must be a supported ISO 4217 code")])?,
        (None, None) => base,
    };
    let fee = req.fee.as_deref().map(|f| keep(money("fee", currency, f, false))).unwrap_or(Some(0));
    let amount = req.amount.as_deref().and_then(|a| keep(money("amount", currency, a, true)));
    let gross = match (req.quantity, req.unit_price) {
        (Some(q), Some(p)) => keep(
            q.get()
                .checked_mul(p.get())
                .and_then(|gross| to_minor(gross, currency))
                .ok_or_else(|| FieldError::new("unit_price", "quantity × unit_price is more than 10^15 minor units")),
        ),
        _ => None,
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let fee = fee.unwrap_or(0);
    let cash = match req.kind {
        Kind::Buy => -(gross.unwrap_or(0) + fee),
        Kind::Sell => {
            let gross = gross.unwrap_or(0);
            if fee > gross {
                return Err(vec![FieldError::new(
                    "fee",
                    "must not be more than the sale's gross amount (quantity × unit_price)",
                )]);
            }
            gross - fee
        }
        Kind::Dividend | Kind::Interest | Kind::Deposit => amount.unwrap_or(0),
        Kind::Fee | Kind::Withdrawal => -amount.unwrap_or(0),
        Kind::Split | Kind::TransferIn | Kind::TransferOut => 0,
    };
    Ok(Effects { currency, gross, fee, amount, cash })
}

/// The payload of `investment.activity_recorded` (docs/events.md).
#[derive(Debug, Serialize)]
struct ActivityRecorded<'a> {
    version: u32,
    activity_id: Uuid,
    user_id: Uuid,
    portfolio_id: Uuid,
    kind: &'a str,
    date: NaiveDate,
    instrument_id: Option<Uuid>,
    currency: &'a str,
    cash_minor: i64,
    base_currency: &'a str,
    cash_base_minor: i64,
}

/// The payload of `investment.activity_deleted`.
#[derive(Debug, Serialize)]
struct ActivityDeleted {
    version: u32,
    activity_id: Uuid,
    user_id: Uuid,
    portfolio_id: Uuid,
}

/// Records an activity. A trade, transfer or split updates the holding's
/// lots at once; a sale's answer carries its disposals and realised gain.
#[utoipa::path(post, path = "/v1/portfolios/{id}/activities", tag = "activities", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "the portfolio"), IdempotencyKey), request_body = NewActivityDoc,
    responses((status = 201, body = Activity),
        (status = 422, body = ErrorBody, description = "a field the kind requires is missing or one it does not use is given; \
`instrument_id` is not one of the caller's instruments; `date` is after today; an amount has more decimals than its \
currency's minor unit; `quantity × unit_price` exceeds 10^15 minor units; a sale's `fee` exceeds its gross; \
`quantity` is more than is held on `date`, or leaves a later sale selling more than is held; a split makes a lot \
larger than 10^18 units")))]
async fn create_activity(
    State(state): State<Investments>,
    user: AuthUser,
    Path(portfolio_id): Path<Uuid>,
    key: IdempotencyKey,
    Json(req): Json<NewActivity>,
) -> ApiResult<axum::response::Response> {
    let mut errors = FieldErrors::default();
    req.check_fields(&mut errors);
    if req.date > IsoDate::today() {
        errors.push(FieldError::new("date", "must not be after today: an activity records what happened"));
    }
    errors.finish()?;
    let fp = fingerprint(&format!("POST /v1/portfolios/{portfolio_id}/activities"), &req);
    let market = state.market.clone();
    idempotency::run(&state.platform.db, SCHEMA, user.user_id, &key, &fp, move |tx| {
        Box::pin(async move {
            let portfolio = portfolios::find(tx.conn(), user.user_id, portfolio_id, true).await?;
            let base = portfolio.base()?;
            let instrument = instrument_of(tx.conn(), user.user_id, &req).await?;
            let effects = effects(&req, instrument.as_ref(), base).map_err(ApiError::validation)?;
            let id = record(tx.conn(), market.as_ref(), user.user_id, &portfolio, &req, &effects, None)
                .await?
                .context("an activity without an import fingerprint is always inserted")?;
            if let (true, Some(instrument)) = (req.kind.moves_lots(), &instrument) {
                rebuild_holding(tx.conn(), &portfolio, instrument.id).await.map_err(|err| refusal(err, id))?;
            }
            let activity = load(tx.conn(), &portfolio, id).await?;
            Ok((StatusCode::CREATED, serde_json::to_value(activity).context("serialise")?))
        })
    })
    .await
}

/// Inserts an activity with its FX rate and cash in the base currency, and
/// records `investment.activity_recorded`; the caller rebuilds the holding.
/// With an import fingerprint already in the portfolio it inserts nothing
/// and answers `None`.
pub(crate) async fn record(
    conn: &mut PgConnection,
    market: &dyn MarketData,
    user_id: Uuid,
    portfolio: &PortfolioRow,
    req: &NewActivity,
    effects: &Effects,
    import_hash: Option<&str>,
) -> ApiResult<Option<Uuid>> {
    let base = portfolio.base()?;
    let fx = market.fx(effects.currency, base, req.date).await.map_err(MarketError::into_api)?;
    let cash_base = convert(effects.cash, effects.currency, base, fx.rate)
        .ok_or_else(|| ApiError::field("amount", "is more than 10^15 minor units in the base currency"))?;
    let id = Uuid::now_v7();
    let inserted = sqlx::query(
        "INSERT INTO investment.activities (id, user_id, portfolio_id, kind, date, instrument_id, quantity, unit_price,
             gross_minor, fee_minor, amount_minor, ratio_to, ratio_from, cash_minor, cash_currency, cash_base_minor,
             fx_rate, fx_source, note, import_hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7::numeric, $8::numeric, $9, $10, $11, $12, $13, $14, $15, $16, $17::numeric, $18, $19, $20)
         ON CONFLICT (portfolio_id, import_hash) WHERE import_hash IS NOT NULL DO NOTHING",
    )
    .bind(id)
    .bind(user_id)
    .bind(portfolio.id)
    .bind(req.kind)
    .bind(req.date.get())
    .bind(req.instrument_id)
    .bind(req.quantity.map(|q| q.get().to_string()))
    .bind(req.unit_price.map(|p| p.get().to_string()))
    .bind(effects.gross)
    .bind(effects.fee)
    .bind(effects.amount)
    .bind(req.ratio.map(|r| r.to as i32))
    .bind(req.ratio.map(|r| r.from as i32))
    .bind(effects.cash)
    .bind(effects.currency.code())
    .bind(cash_base)
    .bind(fx.rate.to_string())
    .bind(fx.source.as_str())
    .bind(req.note.clone().and_then(Note::non_empty))
    .bind(import_hash)
    .execute(&mut *conn)
    .await
    .context("failed to insert an activity")?
    .rows_affected();
    if inserted == 0 {
        return Ok(None);
    }
    let recorded = ActivityRecorded {
        version: 1,
        activity_id: id,
        user_id,
        portfolio_id: portfolio.id,
        kind: req.kind.as_str(),
        date: req.date.get(),
        instrument_id: req.instrument_id,
        currency: effects.currency.code(),
        cash_minor: effects.cash,
        base_currency: base.code(),
        cash_base_minor: cash_base,
    };
    freedumb_kit::events::record(conn, SCHEMA, ACTIVITY_RECORDED, &recorded).await?;
    Ok(Some(id))
}

/// Why a rebuild refused the holding, as the answer to the request that
/// caused it: `this` is the activity being recorded (or deleted).
#[derive(Debug)]
pub(crate) enum Refusal {
    Lots(LotError, NaiveDate),
    Api(ApiError),
}

impl From<ApiError> for Refusal {
    fn from(err: ApiError) -> Self {
        Refusal::Api(err)
    }
}

impl From<anyhow::Error> for Refusal {
    fn from(err: anyhow::Error) -> Self {
        Refusal::Api(ApiError::internal(err))
    }
}

pub(crate) fn refusal(refusal: Refusal, this: Uuid) -> ApiError {
    match refusal {
        Refusal::Api(err) => err,
        Refusal::Lots(LotError::Oversold { activity, held, wanted }, date) if activity == this => ApiError::field(
            "quantity",
            format!("is more than is held on {date}: {} of {} units", show(wanted), show(held)),
        ),
        Refusal::Lots(LotError::Oversold { held, wanted, .. }, date) => ApiError::field(
            "quantity",
            format!("leaves the disposal of {date} taking more than is held: {} of {} units", show(wanted), show(held)),
        ),
        Refusal::Lots(LotError::TooLarge { .. }, date) => {
            ApiError::field("ratio", format!("makes a lot larger than 10^18 units (the split of {date})"))
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
struct StepRow {
    id: Uuid,
    kind: Kind,
    date: NaiveDate,
    quantity: Option<String>,
    gross_minor: Option<i64>,
    fee_minor: i64,
    ratio_to: Option<i32>,
    ratio_from: Option<i32>,
    cash_currency: String,
    fx_rate: String,
}

/// Recomputes the lots and disposals of one holding from its activities.
pub(crate) async fn rebuild_holding(
    conn: &mut PgConnection,
    portfolio: &PortfolioRow,
    instrument_id: Uuid,
) -> Result<(), Refusal> {
    let base = portfolio.base()?;
    let rows: Vec<StepRow> = sqlx::query_as(
        "SELECT id, kind, date, quantity::text AS quantity, gross_minor, fee_minor, ratio_to, ratio_from, cash_currency,
                fx_rate::text AS fx_rate
         FROM investment.activities
         WHERE portfolio_id = $1 AND instrument_id = $2 AND kind IN ('buy', 'sell', 'split', 'transfer_in', 'transfer_out')
         ORDER BY date, seq",
    )
    .bind(portfolio.id)
    .bind(instrument_id)
    .fetch_all(&mut *conn)
    .await
    .context("failed to load a holding's activities")?;
    let mut steps = Vec::with_capacity(rows.len());
    let mut dates = BTreeMap::new();
    for row in &rows {
        dates.insert(row.id, row.date);
        let currency = Currency::from_code(&row.cash_currency).context("an activity's currency")?;
        let rate = from_db(&row.fx_rate)?;
        let in_both = |local: i64| -> anyhow::Result<Money2> {
            let base = convert(local, currency, base, rate).context("a stored amount converts within bounds")?;
            Ok(Money2 { local, base })
        };
        let quantity = || -> anyhow::Result<Decimal> { from_db(row.quantity.as_deref().context("a quantity")?) };
        let gross = row.gross_minor.unwrap_or(0);
        let step = match row.kind {
            Kind::Buy => Step::Acquire { quantity: quantity()?, cost: in_both(gross + row.fee_minor)? },
            Kind::TransferIn => Step::Acquire { quantity: quantity()?, cost: in_both(gross)? },
            Kind::Sell => Step::Dispose { quantity: quantity()?, proceeds: Some(in_both(gross - row.fee_minor)?) },
            Kind::TransferOut => Step::Dispose { quantity: quantity()?, proceeds: None },
            Kind::Split => Step::Split {
                to: row.ratio_to.and_then(|n| u32::try_from(n).ok()).context("a split's ratio")?,
                from: row.ratio_from.and_then(|n| u32::try_from(n).ok()).context("a split's ratio")?,
            },
            _ => continue,
        };
        steps.push(lots::Activity { id: row.id, step });
    }
    let method = portfolio.method()?;
    let holding = lots::replay(method, &steps).map_err(|err| {
        let activity = match &err {
            LotError::Oversold { activity, .. } | LotError::TooLarge { activity } => *activity,
        };
        Refusal::Lots(err, dates.get(&activity).copied().unwrap_or_default())
    })?;
    store_holding(conn, portfolio.id, instrument_id, &dates, &holding).await?;
    Ok(())
}

async fn store_holding(
    conn: &mut PgConnection,
    portfolio_id: Uuid,
    instrument_id: Uuid,
    dates: &BTreeMap<Uuid, NaiveDate>,
    holding: &lots::Holding,
) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM investment.lot_disposals WHERE portfolio_id = $1 AND instrument_id = $2")
        .bind(portfolio_id)
        .bind(instrument_id)
        .execute(&mut *conn)
        .await
        .context("failed to clear disposals")?;
    sqlx::query("DELETE FROM investment.lots WHERE portfolio_id = $1 AND instrument_id = $2")
        .bind(portfolio_id)
        .bind(instrument_id)
        .execute(&mut *conn)
        .await
        .context("failed to clear lots")?;
    let lots = &holding.lots;
    sqlx::query(
        "INSERT INTO investment.lots (activity_id, portfolio_id, instrument_id, position, acquired_on, quantity, open_quantity,
             cost_minor, open_cost_minor, cost_base_minor, open_cost_base_minor)
         SELECT a, $1, $2, p, d, q::numeric, o::numeric, c, oc, cb, ocb
         FROM UNNEST($3::uuid[], $4::int[], $5::date[], $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[])
              AS r(a, p, d, q, o, c, oc, cb, ocb)",
    )
    .bind(portfolio_id)
    .bind(instrument_id)
    .bind(lots.iter().map(|l| l.activity_id).collect::<Vec<_>>())
    .bind((0..lots.len() as i32).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| dates.get(&l.activity_id).copied().unwrap_or_default()).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.quantity.to_string()).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.open_quantity.to_string()).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.cost.local).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.open_cost.local).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.cost.base).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.open_cost.base).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await
    .context("failed to store lots")?;
    let ds = &holding.disposals;
    sqlx::query(
        "INSERT INTO investment.lot_disposals (activity_id, lot_activity_id, portfolio_id, instrument_id, position, quantity,
             cost_minor, cost_base_minor, proceeds_minor, proceeds_base_minor)
         SELECT a, l, $1, $2, p, q::numeric, c, cb, pr, prb
         FROM UNNEST($3::uuid[], $4::uuid[], $5::smallint[], $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[])
              AS r(a, l, p, q, c, cb, pr, prb)",
    )
    .bind(portfolio_id)
    .bind(instrument_id)
    .bind(ds.iter().map(|d| d.activity_id).collect::<Vec<_>>())
    .bind(ds.iter().map(|d| d.lot_activity_id).collect::<Vec<_>>())
    .bind(ds.iter().map(|d| d.position).collect::<Vec<_>>())
    .bind(ds.iter().map(|d| d.quantity.to_string()).collect::<Vec<_>>())
    .bind(ds.iter().map(|d| d.cost.local).collect::<Vec<_>>())
    .bind(ds.iter().map(|d| d.cost.base).collect::<Vec<_>>())
    .bind(ds.iter().map(|d| d.proceeds.map(|p| p.local)).collect::<Vec<_>>())
    .bind(ds.iter().map(|d| d.proceeds.map(|p| p.base)).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await
    .context("failed to store disposals")?;
    Ok(())
}

/// Recomputes every holding of a portfolio (after its cost method changed).
pub(crate) async fn rebuild_portfolio(conn: &mut PgConnection, portfolio: &PortfolioRow) -> ApiResult<()> {
    let instruments: Vec<(Uuid,)> = sqlx::query_as(
        "SELECT DISTINCT instrument_id FROM investment.activities WHERE portfolio_id = $1 AND instrument_id IS NOT NULL",
    )
    .bind(portfolio.id)
    .fetch_all(&mut *conn)
    .await
    .context("failed to list a portfolio's instruments")?;
    for (instrument_id,) in instruments {
        rebuild_holding(conn, portfolio, instrument_id).await.map_err(|err| refusal(err, Uuid::nil()))?;
    }
    Ok(())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ActivityList {
    items: Vec<Activity>,
}

/// A portfolio's activities in the order they apply: by date, then in the
/// order recorded.
#[utoipa::path(get, path = "/v1/portfolios/{id}/activities", tag = "activities", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "the portfolio")), responses((status = 200, body = ActivityList)))]
async fn list_activities(
    State(state): State<Investments>,
    user: AuthUser,
    Path(portfolio_id): Path<Uuid>,
) -> ApiResult<Json<ActivityList>> {
    let mut conn = state.platform.db.pool.acquire().await.context("failed to get a connection")?;
    let portfolio = portfolios::find(&mut conn, user.user_id, portfolio_id, false).await?;
    let rows: Vec<ActivityRow> = sqlx::query_as(&format!("{SELECT} WHERE a.portfolio_id = $1 ORDER BY a.date, a.seq"))
        .bind(portfolio.id)
        .fetch_all(&mut *conn)
        .await
        .context("failed to list activities")?;
    let disposing: Vec<Uuid> =
        rows.iter().filter(|r| matches!(r.kind, Kind::Sell | Kind::TransferOut)).map(|r| r.id).collect();
    let mut disposals = disposals_of(&mut conn, &disposing).await?;
    let base = portfolio.base()?;
    let items = rows
        .into_iter()
        .map(|row| {
            let mine = disposals.remove(&row.id).unwrap_or_default();
            row.into_activity(base, mine)
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Json(ActivityList { items }))
}

/// One activity, with a sale's disposals.
#[utoipa::path(get, path = "/v1/portfolios/{id}/activities/{activity_id}", tag = "activities", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "the portfolio"), ("activity_id" = Uuid, Path)),
    responses((status = 200, body = Activity)))]
async fn get_activity(
    State(state): State<Investments>,
    user: AuthUser,
    Path((portfolio_id, id)): Path<(Uuid, Uuid)>,
) -> ApiResult<Json<Activity>> {
    let mut conn = state.platform.db.pool.acquire().await.context("failed to get a connection")?;
    let portfolio = portfolios::find(&mut conn, user.user_id, portfolio_id, false).await?;
    Ok(Json(load(&mut conn, &portfolio, id).await?))
}

/// Deletes an activity and re-measures its holding. A buy whose units a
/// later sale needs cannot go: delete the sale first.
#[utoipa::path(delete, path = "/v1/portfolios/{id}/activities/{activity_id}", tag = "activities", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "the portfolio"), ("activity_id" = Uuid, Path)),
    responses((status = 204, description = "deleted"),
        (status = 409, body = ErrorBody, description = "without it, a later sale or transfer out would take more than is held")))]
async fn delete_activity(
    State(state): State<Investments>,
    user: AuthUser,
    Path((portfolio_id, id)): Path<(Uuid, Uuid)>,
) -> ApiResult<StatusCode> {
    let mut tx = state.platform.db.begin().await.context("failed to begin")?;
    let portfolio = portfolios::find(tx.conn(), user.user_id, portfolio_id, true).await?;
    let deleted: Option<(Kind, Option<Uuid>)> = sqlx::query_as(
        "DELETE FROM investment.activities WHERE id = $1 AND portfolio_id = $2 AND user_id = $3 RETURNING kind, instrument_id",
    )
    .bind(id)
    .bind(portfolio.id)
    .bind(user.user_id)
    .fetch_optional(tx.conn())
    .await
    .context("failed to delete an activity")?;
    let Some((kind, instrument_id)) = deleted else { return Err(ApiError::not_found("no such activity")) };
    if let (true, Some(instrument_id)) = (kind.moves_lots(), instrument_id) {
        match rebuild_holding(tx.conn(), &portfolio, instrument_id).await {
            Ok(()) => {}
            Err(Refusal::Lots(LotError::Oversold { held, wanted, .. }, date)) => {
                return Err(ApiError::conflict(
                    "activity_needed",
                    format!(
                        "without it, the disposal of {date} would take {} units when {} are held; delete that first",
                        show(wanted),
                        show(held)
                    ),
                ));
            }
            Err(other) => return Err(refusal(other, id)),
        }
    }
    let deleted = ActivityDeleted { version: 1, activity_id: id, user_id: user.user_id, portfolio_id: portfolio.id };
    freedumb_kit::events::record(tx.conn(), SCHEMA, ACTIVITY_DELETED, &deleted).await?;
    tx.commit().await.context("failed to commit")?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_fields_listed_once() {
        for kind in Kind::ALL {
            let fields = fields_of(kind);
            assert!(!fields.is_empty(), "{kind:?}");
            for (i, (field, _)) in fields.iter().enumerate() {
                assert!(!fields[i + 1..].iter().any(|(f, _)| f == field), "{kind:?} lists {field:?} twice");
            }
        }
    }

    #[test]
    fn the_schema_of_each_kind_says_what_it_requires() {
        let json = serde_json::to_value(NewActivityDoc::schema()).unwrap();
        let variants = json["oneOf"].as_array().unwrap();
        assert_eq!(variants.len(), Kind::ALL.len());
        let buy = variants.iter().find(|v| v["title"] == "buy").unwrap();
        let required: Vec<&str> = buy["required"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
        assert_eq!(required, ["kind", "date", "instrument_id", "quantity", "unit_price"]);
        assert_eq!(buy["additionalProperties"], false);
        assert!(buy["properties"].get("amount").is_none());
    }

    fn request(json: serde_json::Value) -> NewActivity {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_field_the_kind_does_not_use_is_refused_and_a_missing_one_named() {
        let mut errors = FieldErrors::default();
        request(serde_json::json!({"kind": "deposit", "date": "2026-01-02", "quantity": "1"}))
            .check_fields(&mut errors);
        let err = errors.into_error();
        let body = format!("{err:?}");
        assert!(body.contains("the request has invalid fields"), "{body}");
        let mut errors = FieldErrors::default();
        request(serde_json::json!({"kind": "deposit", "date": "2026-01-02", "amount": "1.00"}))
            .check_fields(&mut errors);
        assert!(errors.is_empty());
    }
}

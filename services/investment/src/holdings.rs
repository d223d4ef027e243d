//! `/v1/holdings` and `/v1/portfolios/{id}/valuation`: what is held, what it
//! cost, what it is worth at the latest price, and what was gained.
//!
//! Per holding (one instrument in one portfolio):
//!
//! - `quantity`: the open lots' quantities; `cost`: their open cost (fees
//!   included) in the instrument's currency, `cost_base` in the base
//!   currency at each lot's acquisition-date rate.
//! - `market_value = quantity × price` at the latest close, rounded to the
//!   currency's minor unit; `market_value_base` at today's rate.
//! - `unrealised_gain = market_value − cost` (and in base: `market_value_base
//!   − cost_base`, which includes the currency's move since each purchase).
//! - `realised_gain`: the sum over sales of proceeds less cost of disposals;
//!   `dividends`: dividends received, in base at each payment's rate.
//!
//! Every price and rate says where it came from (`source`); a valuation
//! lists the sources of all the values it added up.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use axum::extract::State;
use chrono::NaiveDate;
use freedumb_kit::auth::AuthUser;
use freedumb_kit::date::IsoDate;
use freedumb_kit::extract::{Json, Path, Query};
use freedumb_kit::money::Currency;
use freedumb_kit::{ApiResult, ErrorBody};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::activities::Fx;
use crate::decimal::{PRICE_DECIMALS, convert, from_db, show, to_major, to_minor};
use crate::instruments::{self, Instrument, InstrumentRow};
use crate::market::{MarketData, MarketError, Source};
use crate::portfolios::{self, PortfolioRow};
use crate::{Investments, stored_date};

pub(crate) fn router() -> OpenApiRouter<Investments> {
    OpenApiRouter::new().routes(routes!(list_holdings)).routes(routes!(valuation))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HoldingsQuery {
    /// Only this portfolio's holdings; a portfolio that is not the caller's
    /// is a 404.
    portfolio_id: Option<Uuid>,
    /// Include holdings sold out (quantity 0), for their realised gains and
    /// dividends; default false.
    #[serde(default)]
    include_closed: bool,
}

/// A closing price per unit.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Price {
    #[schema(value_type = crate::decimal::DecimalOut)]
    value: String,
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    currency: String,
    date: IsoDate,
    /// `simulated` while the platform runs on the offline source.
    source: Source,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LotView {
    /// The acquisition (buy or transfer in) that opened the lot.
    id: Uuid,
    acquired_on: IsoDate,
    /// Acquired, split-adjusted.
    #[schema(value_type = crate::decimal::QuantityOut)]
    quantity: String,
    #[schema(value_type = crate::decimal::QuantityOut)]
    open_quantity: String,
    /// The open part's cost in the instrument's currency.
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    cost: String,
    /// The open part's cost in the base currency, at the acquisition's rate.
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    cost_base: String,
    /// `cost / open_quantity`, to 8 decimals.
    #[schema(value_type = crate::decimal::DecimalOut)]
    unit_cost: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Holding {
    portfolio_id: Uuid,
    instrument: Instrument,
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    base_currency: String,
    #[schema(value_type = crate::decimal::QuantityOut)]
    quantity: String,
    /// In the instrument's currency (its `currency`).
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    cost: String,
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    cost_base: String,
    /// `cost / quantity`, to 8 decimals; null when nothing is held.
    #[schema(value_type = Option<crate::decimal::DecimalOut>)]
    average_cost: Option<String>,
    /// The latest close; null when nothing is held.
    price: Option<Price>,
    /// The instrument's currency to the base currency today; null when
    /// nothing is held.
    fx: Option<Fx>,
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    market_value: String,
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    market_value_base: String,
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    unrealised_gain: String,
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    unrealised_gain_base: String,
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    realised_gain: String,
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    realised_gain_base: String,
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    dividends: String,
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    dividends_base: String,
    /// The open lots, in the order a FIFO sale takes them.
    lots: Vec<LotView>,
    #[serde(skip)]
    totals: Totals,
}

/// A holding's base amounts, for the valuation's sums.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    market_value: i64,
    cost: i64,
    realised: i64,
    dividends: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HoldingList {
    items: Vec<Holding>,
}

#[derive(Debug, sqlx::FromRow)]
struct LotRow {
    portfolio_id: Uuid,
    instrument_id: Uuid,
    activity_id: Uuid,
    acquired_on: NaiveDate,
    quantity: String,
    open_quantity: String,
    open_cost_minor: i64,
    open_cost_base_minor: i64,
}

#[derive(Default)]
struct Parts {
    lots: Vec<LotRow>,
    realised: (i64, i64),
    dividends: (i64, i64),
}

/// The holdings of the given portfolios, valued today.
async fn holdings_of(
    conn: &mut PgConnection,
    market: &dyn MarketData,
    user_id: Uuid,
    portfolios: &[PortfolioRow],
    include_closed: bool,
) -> ApiResult<Vec<Holding>> {
    let ids: Vec<Uuid> = portfolios.iter().map(|p| p.id).collect();
    let mut parts: BTreeMap<(Uuid, Uuid), Parts> = BTreeMap::new();
    let lots: Vec<LotRow> = sqlx::query_as(
        "SELECT portfolio_id, instrument_id, activity_id, acquired_on, quantity::text AS quantity,
                open_quantity::text AS open_quantity, open_cost_minor, open_cost_base_minor
         FROM investment.lots WHERE portfolio_id = ANY($1) AND open_quantity > 0 ORDER BY portfolio_id, instrument_id, position",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .context("failed to load lots")?;
    for lot in lots {
        parts.entry((lot.portfolio_id, lot.instrument_id)).or_default().lots.push(lot);
    }
    let realised: Vec<(Uuid, Uuid, i64, i64)> = sqlx::query_as(
        "SELECT portfolio_id, instrument_id, SUM(proceeds_minor - cost_minor)::bigint, SUM(proceeds_base_minor - cost_base_minor)::bigint
         FROM investment.lot_disposals WHERE portfolio_id = ANY($1) AND proceeds_minor IS NOT NULL GROUP BY 1, 2",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .context("failed to sum realised gains")?;
    for (portfolio, instrument, local, base) in realised {
        parts.entry((portfolio, instrument)).or_default().realised = (local, base);
    }
    let dividends: Vec<(Uuid, Uuid, i64, i64)> = sqlx::query_as(
        "SELECT portfolio_id, instrument_id, SUM(cash_minor)::bigint, SUM(cash_base_minor)::bigint
         FROM investment.activities WHERE portfolio_id = ANY($1) AND kind = 'dividend' GROUP BY 1, 2",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .context("failed to sum dividends")?;
    for (portfolio, instrument, local, base) in dividends {
        parts.entry((portfolio, instrument)).or_default().dividends = (local, base);
    }
    let instrument_ids: Vec<Uuid> = parts.keys().map(|(_, i)| *i).collect::<BTreeSet<_>>().into_iter().collect();
    let instruments: BTreeMap<Uuid, InstrumentRow> =
        sqlx::query_as::<_, InstrumentRow>(&format!("{} WHERE user_id = $1 AND id = ANY($2)", instruments::SELECT))
            .bind(user_id)
            .bind(&instrument_ids)
            .fetch_all(&mut *conn)
            .await
            .context("failed to load instruments")?
            .into_iter()
            .map(|i| (i.id, i))
            .collect();

    let today = IsoDate::today();
    let mut holdings = Vec::new();
    for portfolio in portfolios {
        let base = portfolio.base()?;
        let mut mine: Vec<(&InstrumentRow, Parts)> = Vec::new();
        let keys: Vec<(Uuid, Uuid)> = parts.keys().filter(|(p, _)| *p == portfolio.id).copied().collect();
        for key in keys {
            let part = parts.remove(&key).unwrap_or_default();
            let instrument = instruments.get(&key.1).context("a holding's instrument")?;
            mine.push((instrument, part));
        }
        mine.sort_by(|a, b| (&a.0.symbol, &a.0.exchange).cmp(&(&b.0.symbol, &b.0.exchange)));
        for (instrument, part) in mine {
            if part.lots.is_empty() && !include_closed {
                continue;
            }
            holdings.push(holding(market, portfolio.id, base, instrument, part, today).await?);
        }
    }
    Ok(holdings)
}

async fn holding(
    market: &dyn MarketData,
    portfolio_id: Uuid,
    base: Currency,
    instrument: &InstrumentRow,
    part: Parts,
    today: IsoDate,
) -> ApiResult<Holding> {
    let currency = instrument.currency()?;
    let mut quantity = Decimal::ZERO;
    let (mut cost, mut cost_base) = (0i64, 0i64);
    let mut lots = Vec::with_capacity(part.lots.len());
    for lot in &part.lots {
        let open = from_db(&lot.open_quantity)?;
        quantity += open;
        cost += lot.open_cost_minor;
        cost_base += lot.open_cost_base_minor;
        lots.push(LotView {
            id: lot.activity_id,
            acquired_on: stored_date(lot.acquired_on),
            quantity: show(from_db(&lot.quantity)?),
            open_quantity: show(open),
            cost: currency.format(lot.open_cost_minor),
            cost_base: base.format(lot.open_cost_base_minor),
            unit_cost: unit(lot.open_cost_minor, currency, open).unwrap_or_default(),
        });
    }
    let (price, fx, market_value, market_value_base) = if quantity.is_zero() {
        (None, None, 0, 0)
    } else {
        let quote = market.close(&instrument.listing()?, today).await.map_err(MarketError::into_api)?;
        let rate = market.fx(currency, base, today).await.map_err(MarketError::into_api)?;
        let value = quantity.checked_mul(quote.price).and_then(|v| to_minor(v, currency)).unwrap_or(i64::MAX);
        let value_base = convert(value, currency, base, rate.rate).unwrap_or(i64::MAX);
        let price = Price {
            value: show(quote.price),
            currency: currency.code().to_owned(),
            date: quote.date,
            source: quote.source,
        };
        let fx = Fx {
            rate: show(rate.rate),
            from: currency.code().to_owned(),
            to: base.code().to_owned(),
            date: rate.date,
            source: rate.source,
        };
        (Some(price), Some(fx), value, value_base)
    };
    Ok(Holding {
        portfolio_id,
        instrument: instrument.view(),
        base_currency: base.code().to_owned(),
        quantity: show(quantity),
        cost: currency.format(cost),
        cost_base: base.format(cost_base),
        average_cost: unit(cost, currency, quantity),
        price,
        fx,
        market_value: currency.format(market_value),
        market_value_base: base.format(market_value_base),
        unrealised_gain: currency.format(market_value - cost),
        unrealised_gain_base: base.format(market_value_base - cost_base),
        realised_gain: currency.format(part.realised.0),
        realised_gain_base: base.format(part.realised.1),
        dividends: currency.format(part.dividends.0),
        dividends_base: base.format(part.dividends.1),
        lots,
        totals: Totals {
            market_value: market_value_base,
            cost: cost_base,
            realised: part.realised.1,
            dividends: part.dividends.1,
        },
    })
}

/// A cost per unit, to [`PRICE_DECIMALS`]; `None` for no units.
fn unit(cost: i64, currency: Currency, quantity: Decimal) -> Option<String> {
    (!quantity.is_zero()).then(|| {
        let per = to_major(cost, currency).checked_div(quantity).unwrap_or_default();
        show(per.round_dp(PRICE_DECIMALS))
    })
}

/// The caller's holdings with their lots, costs, value at the latest price
/// and gains, by portfolio (oldest first), then symbol.
#[utoipa::path(get, path = "/v1/holdings", tag = "holdings", security(("bearer" = [])), params(HoldingsQuery),
    responses((status = 200, body = HoldingList),
        (status = 404, body = ErrorBody, description = "`portfolio_id` is not one of the caller's portfolios")))]
async fn list_holdings(
    State(state): State<Investments>,
    user: AuthUser,
    Query(q): Query<HoldingsQuery>,
) -> ApiResult<Json<HoldingList>> {
    let mut conn = state.platform.db.pool.acquire().await.context("failed to get a connection")?;
    let portfolios = match q.portfolio_id {
        Some(id) => vec![portfolios::find(&mut conn, user.user_id, id, false).await?],
        None => portfolios::all(&mut conn, user.user_id).await?,
    };
    let items = holdings_of(&mut conn, state.market.as_ref(), user.user_id, &portfolios, q.include_closed).await?;
    Ok(Json(HoldingList { items }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CashBalance {
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    currency: String,
    /// Deposits, sale proceeds, dividends and interest, less withdrawals,
    /// purchases and fees; negative if more was spent than recorded coming in.
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    balance: String,
    fx: Fx,
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    balance_base: String,
}

/// A portfolio's worth today, in its base currency.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Valuation {
    portfolio_id: Uuid,
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    base_currency: String,
    date: IsoDate,
    /// The holdings at the latest prices and today's rates.
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    market_value: String,
    /// What the open lots cost, at their acquisition dates' rates.
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    cost: String,
    /// `market_value − cost`.
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    unrealised_gain: String,
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    realised_gain: String,
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    dividends: String,
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    interest: String,
    /// Fees recorded as activities of kind `fee`; a trade's own fee is in
    /// its cost or proceeds.
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    fees: String,
    /// Per currency, converted at today's rates.
    cash: Vec<CashBalance>,
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    cash_base: String,
    /// `market_value + cash_base`.
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    total_value: String,
    /// Who produced the prices and rates these figures rest on (`simulated`
    /// while the platform runs offline); empty when none was needed.
    sources: Vec<Source>,
    /// Holdings with units held.
    holdings: usize,
}

/// A portfolio's market value, cost, gains, income and cash today, in its
/// base currency.
#[utoipa::path(get, path = "/v1/portfolios/{id}/valuation", tag = "holdings", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "the portfolio")), responses((status = 200, body = Valuation)))]
async fn valuation(
    State(state): State<Investments>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> ApiResult<Json<Valuation>> {
    let mut conn = state.platform.db.pool.acquire().await.context("failed to get a connection")?;
    let portfolio = portfolios::find(&mut conn, user.user_id, id, false).await?;
    let base = portfolio.base()?;
    let market = state.market.as_ref();
    // Closed holdings too, for their realised gains and dividends; they hold
    // nothing, so they add nothing to value or cost and need no price.
    let holdings = holdings_of(&mut conn, market, user.user_id, std::slice::from_ref(&portfolio), true).await?;
    let mut sources = BTreeSet::new();
    let mut totals = Totals::default();
    for holding in &holdings {
        totals.market_value += holding.totals.market_value;
        totals.cost += holding.totals.cost;
        totals.realised += holding.totals.realised;
        totals.dividends += holding.totals.dividends;
        sources.extend(holding.price.iter().map(|p| p.source));
        sources.extend(holding.fx.iter().map(|f| f.source));
    }
    let open = holdings.iter().filter(|h| h.price.is_some()).count();
    let income: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, SUM(cash_base_minor)::bigint FROM investment.activities
         WHERE portfolio_id = $1 AND kind IN ('interest', 'fee') GROUP BY kind",
    )
    .bind(portfolio.id)
    .fetch_all(&mut *conn)
    .await
    .context("failed to sum interest and fees")?;
    let of = |kind: &str| income.iter().find(|(k, _)| k == kind).map_or(0, |(_, v)| *v);
    let balances: Vec<(String, i64)> = sqlx::query_as(
        "SELECT cash_currency, SUM(cash_minor)::bigint FROM investment.activities
         WHERE portfolio_id = $1 GROUP BY cash_currency HAVING SUM(cash_minor) <> 0 ORDER BY cash_currency",
    )
    .bind(portfolio.id)
    .fetch_all(&mut *conn)
    .await
    .context("failed to sum cash")?;
    let today = IsoDate::today();
    let mut cash = Vec::with_capacity(balances.len());
    let mut cash_base = 0i64;
    for (code, balance) in balances {
        let currency = Currency::from_code(&code).with_context(|| format!("unknown currency {code}"))?;
        let rate = market.fx(currency, base, today).await.map_err(MarketError::into_api)?;
        let in_base = convert(balance, currency, base, rate.rate).unwrap_or(i64::MAX);
        sources.insert(rate.source);
        cash_base += in_base;
        cash.push(CashBalance {
            currency: code,
            balance: currency.format(balance),
            fx: Fx {
                rate: show(rate.rate),
                from: currency.code().to_owned(),
                to: base.code().to_owned(),
                date: rate.date,
                source: rate.source,
            },
            balance_base: base.format(in_base),
        });
    }
    // A currency converted into itself is no one's value to disclose.
    sources.remove(&Source::Identity);
    Ok(Json(Valuation {
        portfolio_id: portfolio.id,
        base_currency: base.code().to_owned(),
        date: today,
        market_value: base.format(totals.market_value),
        cost: base.format(totals.cost),
        unrealised_gain: base.format(totals.market_value - totals.cost),
        realised_gain: base.format(totals.realised),
        dividends: base.format(totals.dividends),
        interest: base.format(of("interest")),
        fees: base.format(-of("fee")),
        cash,
        cash_base: base.format(cash_base),
        total_value: base.format(totals.market_value + cash_base),
        sources: sources.into_iter().collect(),
        holdings: open,
    }))
}

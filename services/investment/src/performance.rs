//! `GET /v1/portfolios/{id}/performance`: the daily value history of a
//! period and its time- and money-weighted returns ([`crate::returns`]),
//! each with and without the currency effect.
//!
//! The history is computed on read from the activities: each day's
//! quantities (splits applied) at that day's close, plus each currency's
//! cash, in the base currency. *With* the currency effect every amount of a
//! day is converted at that day's rate; *without* it, at the rates of the
//! day before the period, so only prices (and flows) move the value.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use axum::extract::State;
use chrono::{Days, NaiveDate};
use freedumb_kit::auth::AuthUser;
use freedumb_kit::date::IsoDate;
use freedumb_kit::extract::{Json, Path, Query};
use freedumb_kit::money::Currency;
use freedumb_kit::{ApiError, ApiResult, ErrorBody, FieldError, FieldErrors};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::activities::Kind;
use crate::decimal::{convert, from_db, round_quantity, show, to_minor};
use crate::instruments::{self, InstrumentRow};
use crate::market::{LOOKBACK_DAYS, MarketData, MarketError, Source};
use crate::portfolios::{self, PortfolioRow};
use crate::returns::{self, Day};
use crate::{Investments, stored_date};

pub(crate) fn router() -> OpenApiRouter<Investments> {
    OpenApiRouter::new().routes(routes!(performance))
}

/// The longest period one request values day by day: ten years.
const MAX_DAYS: i64 = 3660;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PerformanceQuery {
    /// The first day; default the first activity's date (today without any).
    #[param(inline)]
    from: Option<IsoDate>,
    /// The last day; default today. At most 3,660 days after `from`, not
    /// before it, not after today.
    #[param(inline)]
    to: Option<IsoDate>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DayValue {
    date: IsoDate,
    /// The value at the end of the day: holdings at the close plus cash.
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    value: String,
    /// The day's external flow (deposits, withdrawals, transfers).
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    flow: String,
    /// As `value`, at the rates of the day before the period.
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    value_without_currency: String,
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    flow_without_currency: String,
}

/// A return as a decimal fraction (`"0.05"` is 5%), to 8 places; null when
/// the period has none (nothing invested, or no money both ways).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Performance {
    portfolio_id: Uuid,
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    base_currency: String,
    from: IsoDate,
    to: IsoDate,
    /// The value at the end of the day before `from`.
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    start_value: String,
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    end_value: String,
    /// The sum of the period's external flows.
    #[schema(value_type = freedumb_kit::openapi::Amount)]
    net_flows: String,
    /// Time-weighted, with the currency effect: over the period, not annualised.
    #[schema(value_type = Option<crate::decimal::DecimalOut>)]
    time_weighted: Option<String>,
    #[schema(value_type = Option<crate::decimal::DecimalOut>)]
    time_weighted_without_currency: Option<String>,
    /// Money-weighted (XIRR), with the currency effect: annualised.
    #[schema(value_type = Option<crate::decimal::DecimalOut>)]
    money_weighted: Option<String>,
    #[schema(value_type = Option<crate::decimal::DecimalOut>)]
    money_weighted_without_currency: Option<String>,
    /// Every day of the period.
    history: Vec<DayValue>,
    /// Who produced the prices and rates of the history.
    sources: Vec<Source>,
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    kind: Kind,
    date: NaiveDate,
    instrument_id: Option<Uuid>,
    quantity: Option<String>,
    ratio_to: Option<i32>,
    ratio_from: Option<i32>,
    cash_minor: i64,
    cash_currency: String,
}

/// What the portfolio holds at the end of a day.
#[derive(Default)]
struct Holdings {
    quantities: BTreeMap<Uuid, Decimal>,
    cash: BTreeMap<&'static str, i64>,
}

/// Daily series by date, looked up as "the last on or before".
struct Series(BTreeMap<NaiveDate, Decimal>);

impl Series {
    fn on(&self, day: IsoDate, what: &str) -> ApiResult<Decimal> {
        self.0
            .range(..=day.get())
            .next_back()
            .map(|(_, v)| *v)
            .ok_or_else(|| MarketError::NoData(format!("{what} on or shortly before {day}")).into_api())
    }
}

/// The days of a period with and without the currency effect, and the
/// value at the end of the day before it, for each.
struct History {
    start: (i64, i64),
    days: Vec<(IsoDate, Day, Day)>,
    sources: BTreeSet<Source>,
}

async fn history(
    conn: &mut PgConnection,
    market: &dyn MarketData,
    user_id: Uuid,
    portfolio: &PortfolioRow,
    before: IsoDate,
    to: IsoDate,
) -> ApiResult<History> {
    let base = portfolio.base()?;
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT kind, date, instrument_id, quantity::text AS quantity, ratio_to, ratio_from, cash_minor, cash_currency
         FROM investment.activities WHERE portfolio_id = $1 AND date <= $2 ORDER BY date, seq",
    )
    .bind(portfolio.id)
    .bind(to.get())
    .fetch_all(&mut *conn)
    .await
    .context("failed to load activities")?;
    let ids: Vec<Uuid> = rows.iter().filter_map(|r| r.instrument_id).collect::<BTreeSet<_>>().into_iter().collect();
    let instruments: BTreeMap<Uuid, InstrumentRow> =
        sqlx::query_as::<_, InstrumentRow>(&format!("{} WHERE user_id = $1 AND id = ANY($2)", instruments::SELECT))
            .bind(user_id)
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await
            .context("failed to load instruments")?
            .into_iter()
            .map(|i| (i.id, i))
            .collect();

    // One range per instrument and currency, not one request per day.
    let first = lookback(before);
    let mut sources = BTreeSet::new();
    let mut prices: BTreeMap<Uuid, Series> = BTreeMap::new();
    for instrument in instruments.values() {
        let quotes = market.closes(&instrument.listing()?, first, to).await.map_err(MarketError::into_api)?;
        sources.extend(quotes.iter().map(|q| q.source));
        prices.insert(instrument.id, Series(quotes.into_iter().map(|q| (q.date.get(), q.price)).collect()));
    }
    let mut currencies: BTreeSet<&'static str> =
        rows.iter().filter_map(|r| Currency::from_code(&r.cash_currency)).map(Currency::code).collect();
    for instrument in instruments.values() {
        currencies.insert(instrument.currency()?.code());
    }
    let mut rates: BTreeMap<&'static str, Series> = BTreeMap::new();
    for code in currencies {
        let currency = Currency::from_code(code).context("a known currency")?;
        let series = if currency == base {
            Series(BTreeMap::from([(first.get(), Decimal::ONE)]))
        } else {
            let rates = market.rates(currency, base, first, to).await.map_err(MarketError::into_api)?;
            sources.extend(rates.iter().map(|r| r.source));
            Series(rates.into_iter().map(|r| (r.date.get(), r.rate)).collect())
        };
        rates.insert(code, series);
    }
    let rate_on = |currency: Currency, day: IsoDate| -> ApiResult<Decimal> {
        rates.get(currency.code()).context("a rate series of every currency")?.on(day, &format!("{currency}/{base}"))
    };
    let price_on = |instrument: &InstrumentRow, day: IsoDate| -> ApiResult<Decimal> {
        prices.get(&instrument.id).context("a price series of every instrument")?.on(day, &instrument.symbol)
    };
    // Amounts in the base currency, at the day's rate and at the day before the period's.
    let both = |minor: i64, currency: Currency, day: IsoDate| -> ApiResult<(i64, i64)> {
        let today = convert(minor, currency, base, rate_on(currency, day)?).unwrap_or(i64::MAX);
        let frozen = convert(minor, currency, base, rate_on(currency, before)?).unwrap_or(i64::MAX);
        Ok((today, frozen))
    };

    let mut state = Holdings::default();
    let mut next = 0;
    let mut days = Vec::new();
    let mut start = (0, 0);
    let mut day = before;
    loop {
        let (mut flow, mut flow_frozen) = (0i64, 0i64);
        while next < rows.len() && rows[next].date <= day.get() {
            let row = &rows[next];
            next += 1;
            let currency = Currency::from_code(&row.cash_currency).context("an activity's currency")?;
            *state.cash.entry(currency.code()).or_default() += row.cash_minor;
            let counts = row.date == day.get() && day != before;
            let quantity = row.quantity.as_deref().map(from_db).transpose()?;
            let Some(instrument) = row.instrument_id.and_then(|id| instruments.get(&id)) else {
                if counts && matches!(row.kind, Kind::Deposit | Kind::Withdrawal) {
                    let (today, frozen) = both(row.cash_minor, currency, day)?;
                    flow += today;
                    flow_frozen += frozen;
                }
                continue;
            };
            let held = state.quantities.entry(instrument.id).or_default();
            match (row.kind, quantity) {
                (Kind::Buy | Kind::TransferIn, Some(q)) => *held += q,
                (Kind::Sell | Kind::TransferOut, Some(q)) => *held -= q,
                (Kind::Split, _) => {
                    if let (Some(to), Some(from)) = (row.ratio_to, row.ratio_from) {
                        *held = round_quantity(*held * Decimal::from(to) / Decimal::from(from));
                    }
                }
                _ => {}
            }
            if counts && matches!(row.kind, Kind::TransferIn | Kind::TransferOut) {
                let currency = instrument.currency()?;
                let local = to_minor(quantity.unwrap_or_default() * price_on(instrument, day)?, currency).unwrap_or(0);
                let signed = if row.kind == Kind::TransferIn { local } else { -local };
                let (today, frozen) = both(signed, currency, day)?;
                flow += today;
                flow_frozen += frozen;
            }
        }
        let (mut value, mut value_frozen) = (0i64, 0i64);
        for (id, quantity) in &state.quantities {
            if quantity.is_zero() {
                continue;
            }
            let instrument = &instruments[id];
            let currency = instrument.currency()?;
            let local = quantity
                .checked_mul(price_on(instrument, day)?)
                .and_then(|v| to_minor(v, currency))
                .unwrap_or(i64::MAX);
            let (today, frozen) = both(local, currency, day)?;
            value = value.saturating_add(today);
            value_frozen = value_frozen.saturating_add(frozen);
        }
        for (code, balance) in &state.cash {
            let (today, frozen) = both(*balance, Currency::from_code(code).context("a cash currency")?, day)?;
            value = value.saturating_add(today);
            value_frozen = value_frozen.saturating_add(frozen);
        }
        if day == before {
            start = (value, value_frozen);
        } else {
            days.push((day, Day { value, flow }, Day { value: value_frozen, flow: flow_frozen }));
        }
        if day >= to {
            break;
        }
        day = day.checked_add_days(1).context("a day of the period within the range")?;
    }
    Ok(History { start, days, sources })
}

fn lookback(on: IsoDate) -> IsoDate {
    on.get().checked_sub_days(Days::new(LOOKBACK_DAYS)).and_then(IsoDate::new).unwrap_or(IsoDate::MIN)
}

/// A portfolio's value day by day over a period, and its returns.
///
/// `V(d)` is the value at the end of day `d` (holdings at the day's close plus
/// cash, in the base currency), `V(s)` at the end of the day before `from`,
/// `F(d)` the day's external flow (deposits − withdrawals + transfers in −
/// transfers out at the day's close; buys, sells, dividends, interest and
/// fees stay inside the portfolio), taken to arrive at the start of its day.
///
/// - `time_weighted` = ∏ over the days of (V(d) / (V(d−1) + F(d))) − 1, over
///   the period (not annualised); a day with V(d−1) + F(d) ≤ 0 counts as 1.
/// - `money_weighted` (XIRR) = the annual r with
///   −V(s) − Σ F(d)·(1+r)^(−t(d)) + V(to)·(1+r)^(−t(to)) = 0, t(d) = days
///   from s to d / 365; null without money both ways.
/// - `…_without_currency`: the same with every amount converted at the rates
///   of the day before `from`, so only prices and flows move it.
///
/// Returns are decimal fractions to 8 places (`"0.05"` is 5%).
#[utoipa::path(get, path = "/v1/portfolios/{id}/performance", tag = "holdings", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "the portfolio"), PerformanceQuery),
    responses((status = 200, body = Performance),
        (status = 422, body = ErrorBody, description = "`to` is before `from`, after today, or more than 3,660 days after \
`from`; `from` is 1900-01-01 (the period needs the day before it)")))]
async fn performance(
    State(state): State<Investments>,
    user: AuthUser,
    Path(id): Path<Uuid>,
    Query(q): Query<PerformanceQuery>,
) -> ApiResult<Json<Performance>> {
    let mut conn = state.platform.db.pool.acquire().await.context("failed to get a connection")?;
    let portfolio = portfolios::find(&mut conn, user.user_id, id, false).await?;
    let base = portfolio.base()?;
    let today = IsoDate::today();
    let first: Option<(NaiveDate,)> =
        sqlx::query_as("SELECT min(date) FROM investment.activities WHERE portfolio_id = $1 HAVING count(*) > 0")
            .bind(portfolio.id)
            .fetch_optional(&mut *conn)
            .await
            .context("failed to find the first activity")?;
    let to = q.to.unwrap_or(today);
    let from = q.from.unwrap_or_else(|| first.map(|(d,)| stored_date(d)).unwrap_or(today).min(to));
    let mut errors = FieldErrors::default();
    if to > today {
        errors.push(FieldError::new("to", "must not be after today"));
    }
    if to < from {
        errors.push(FieldError::new("to", "must not be before `from`"));
    } else if (to.get() - from.get()).num_days() >= MAX_DAYS {
        errors.push(FieldError::new("to", format!("must be less than {MAX_DAYS} days after `from`")));
    }
    let before = from.get().checked_sub_days(Days::new(1)).and_then(IsoDate::new);
    if before.is_none() {
        errors.push(FieldError::new("from", "must be after 1900-01-01: the period starts from the day before it"));
    }
    errors.finish()?;
    let before = before.ok_or_else(|| ApiError::field("from", "must be after 1900-01-01"))?;

    let history = history(&mut conn, state.market.as_ref(), user.user_id, &portfolio, before, to).await?;
    let with: Vec<Day> = history.days.iter().map(|(_, with, _)| *with).collect();
    let without: Vec<Day> = history.days.iter().map(|(_, _, without)| *without).collect();
    let text = |r: Option<Decimal>| r.map(show);
    let mut sources = history.sources;
    sources.remove(&Source::Identity);
    Ok(Json(Performance {
        portfolio_id: portfolio.id,
        base_currency: base.code().to_owned(),
        from,
        to,
        start_value: base.format(history.start.0),
        end_value: base.format(with.last().map_or(history.start.0, |d| d.value)),
        net_flows: base.format(with.iter().map(|d| d.flow).sum()),
        time_weighted: text(returns::time_weighted(history.start.0, &with)),
        time_weighted_without_currency: text(returns::time_weighted(history.start.1, &without)),
        money_weighted: text(returns::money_weighted(&returns::investor_flows(history.start.0, &with))),
        money_weighted_without_currency: text(returns::money_weighted(&returns::investor_flows(
            history.start.1,
            &without,
        ))),
        history: history
            .days
            .iter()
            .map(|(date, with, without)| DayValue {
                date: *date,
                value: base.format(with.value),
                flow: base.format(with.flow),
                value_without_currency: base.format(without.value),
                flow_without_currency: base.format(without.flow),
            })
            .collect(),
        sources: sources.into_iter().collect(),
    }))
}

//! Where prices and FX rates come from: the [`MarketData`] trait, and
//! [`Offline`], the source the platform uses without a provider key.
//!
//! Every value carries its [`Source`], which the API shows beside it, so a
//! simulated price can never pass for a market one. The HTTP client of a
//! real provider, [`crate::provider::TwelveData`], implements the same
//! trait; a deployment without `MARKET_DATA_API_KEY` runs offline.
//!
//! The offline source is deterministic: the same symbol, exchange and date
//! always give the same price, on every machine, computed in exact decimal
//! arithmetic from a hash (no clock, no state, no floats), so tests and a
//! person trying the platform see the same numbers.

use freedumb_kit::date::IsoDate;
use freedumb_kit::money::Currency;
use futures::future::BoxFuture;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::decimal::RATE_DECIMALS;

/// Who produced a price or a rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The offline source's deterministic simulation: not a market price.
    Simulated,
    /// A currency converted into itself: exactly 1, from no one.
    Identity,
    /// Twelve Data's API (`provider::TwelveData`).
    TwelveData,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Simulated => "simulated",
            Source::Identity => "identity",
            Source::TwelveData => "twelve_data",
        }
    }

    pub fn from_db(text: &str) -> anyhow::Result<Source> {
        match text {
            "simulated" => Ok(Source::Simulated),
            "identity" => Ok(Source::Identity),
            "twelve_data" => Ok(Source::TwelveData),
            other => anyhow::bail!("unknown price source {other:?}"),
        }
    }
}

/// What a price is looked up by.
#[derive(Debug, Clone)]
pub struct Listing {
    pub symbol: String,
    pub exchange: String,
    pub currency: Currency,
}

/// A closing price per unit, in the listing's currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    pub price: Decimal,
    pub date: IsoDate,
    pub source: Source,
}

/// One unit of `from` is `rate` units of `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FxRate {
    pub rate: Decimal,
    pub date: IsoDate,
    pub source: Source,
}

/// Why a price or rate could not be had. None of them is the caller's
/// fault: the API answers 503 with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarketError {
    /// Down, timing out, answering 5xx, or the circuit is open.
    #[error("the market-data provider is unavailable: {0}")]
    Unavailable(String),
    /// It said to come back later, in more seconds than a request waits.
    #[error("the market-data provider limits our requests; retry after {0} s")]
    RateLimited(u64),
    /// It answered something that is not what its API documents.
    #[error("the market-data provider's answer is malformed: {0}")]
    Malformed(String),
    /// It has no price for this listing (or rate) on or shortly before the date.
    #[error("no price: {0}")]
    NoData(String),
}

impl MarketError {
    /// The API's answer: 503 `market_data_unavailable`, saying when to retry.
    pub fn into_api(self) -> freedumb_kit::ApiError {
        let retry = match &self {
            MarketError::RateLimited(secs) => *secs,
            _ => 30,
        };
        let message = match &self {
            MarketError::NoData(what) => format!("no market price is available for {what}; retry later"),
            _ => "market data is unavailable at the moment; retry later".to_owned(),
        };
        freedumb_kit::ApiError::dependency_down("market_data_unavailable", message, retry, anyhow::Error::new(self))
    }
}

/// How far back a close or rate may be from the day it is asked for:
/// weekends, holidays, a market closed for a week.
pub const LOOKBACK_DAYS: u64 = 10;

fn lookback(on: IsoDate) -> IsoDate {
    on.get().checked_sub_days(chrono::Days::new(LOOKBACK_DAYS)).and_then(IsoDate::new).unwrap_or(IsoDate::MIN)
}

/// A source of daily closing prices and FX rates.
pub trait MarketData: Send + Sync + 'static {
    /// The closes of `listing` on the trading days of `from..=to`, oldest first.
    fn closes<'a>(
        &'a self,
        listing: &'a Listing,
        from: IsoDate,
        to: IsoDate,
    ) -> BoxFuture<'a, Result<Vec<Quote>, MarketError>>;

    /// The daily rates from `from` into `to` on the days of `start..=end`,
    /// oldest first.
    fn rates(
        &self,
        from: Currency,
        to: Currency,
        start: IsoDate,
        end: IsoDate,
    ) -> BoxFuture<'_, Result<Vec<FxRate>, MarketError>>;

    /// The close on `on`, or on the last trading day before it.
    fn close<'a>(&'a self, listing: &'a Listing, on: IsoDate) -> BoxFuture<'a, Result<Quote, MarketError>> {
        Box::pin(async move {
            let quotes = self.closes(listing, lookback(on), on).await?;
            quotes.into_iter().rev().find(|q| q.date <= on).ok_or_else(|| {
                MarketError::NoData(format!("{} on {} on or shortly before {on}", listing.symbol, listing.exchange))
            })
        })
    }

    /// The rate from `from` to `to` on `on`, or the last day before it.
    fn fx(&self, from: Currency, to: Currency, on: IsoDate) -> BoxFuture<'_, Result<FxRate, MarketError>> {
        Box::pin(async move {
            if from == to {
                return Ok(FxRate { rate: Decimal::ONE, date: on, source: Source::Identity });
            }
            let rates = self.rates(from, to, lookback(on), on).await?;
            rates
                .into_iter()
                .rev()
                .find(|r| r.date <= on)
                .ok_or_else(|| MarketError::NoData(format!("{from}/{to} on or shortly before {on}")))
        })
    }
}

/// Deterministic simulated prices and FX rates.
///
/// A price is a base level from the listing's hash (the equivalent of 10 to
/// 500 US dollars), moved by two triangle waves (a yearly swing of ±20%, a
/// ten-year one of ±30%, each with a phase from the hash) and a daily
/// wobble of ±2% from the hash of the listing and the date, then rounded to
/// the currency's minor unit. A rate is the quotient of two currencies'
/// simulated units per US dollar: a reference level near the market's
/// (1 USD = 0.92 EUR, 150 JPY, ...) moved by ±5% over two years and ±0.5%
/// a day, rounded to 10 decimals.
#[derive(Debug, Clone, Copy, Default)]
pub struct Offline;

impl Offline {
    pub fn close_of(listing: &Listing, on: IsoDate) -> Quote {
        let key = format!("{}\u{1f}{}", listing.symbol, listing.exchange);
        let seed = hash(&key);
        let base_usd = Decimal::new(1000 + (seed % 49_001) as i64, 2);
        let day = day_number(on);
        let level = Decimal::ONE
            + Decimal::new(20, 2) * triangle(day + ((seed >> 16) % 365) as i64, 365)
            + Decimal::new(30, 2) * triangle(day + ((seed >> 32) % 3650) as i64, 3650);
        let wobble = Decimal::ONE + Decimal::new(wobble(&format!("{key}\u{1f}{on}"), 200), 4);
        let in_usd = base_usd * level * wobble;
        let price = in_usd * units_per_usd(listing.currency, on);
        let places = u32::from(listing.currency.exponent());
        // The smallest price is one minor unit: a simulated price is never zero.
        let price = price.round_dp(places).max(Decimal::new(1, places));
        Quote { price, date: on, source: Source::Simulated }
    }

    pub fn fx_of(from: Currency, to: Currency, on: IsoDate) -> FxRate {
        if from == to {
            return FxRate { rate: Decimal::ONE, date: on, source: Source::Identity };
        }
        let rate = (units_per_usd(to, on) / units_per_usd(from, on)).round_dp(RATE_DECIMALS);
        FxRate { rate, date: on, source: Source::Simulated }
    }
}

impl MarketData for Offline {
    fn closes<'a>(
        &'a self,
        listing: &'a Listing,
        from: IsoDate,
        to: IsoDate,
    ) -> BoxFuture<'a, Result<Vec<Quote>, MarketError>> {
        let quotes = days(from, to).map(|on| Offline::close_of(listing, on)).collect();
        Box::pin(futures::future::ready(Ok(quotes)))
    }

    fn rates(
        &self,
        from: Currency,
        to: Currency,
        start: IsoDate,
        end: IsoDate,
    ) -> BoxFuture<'_, Result<Vec<FxRate>, MarketError>> {
        let rates = days(start, end).map(|on| Offline::fx_of(from, to, on)).collect();
        Box::pin(futures::future::ready(Ok(rates)))
    }

    // One day is computed directly rather than through a range.
    fn close<'a>(&'a self, listing: &'a Listing, on: IsoDate) -> BoxFuture<'a, Result<Quote, MarketError>> {
        Box::pin(futures::future::ready(Ok(Offline::close_of(listing, on))))
    }

    fn fx(&self, from: Currency, to: Currency, on: IsoDate) -> BoxFuture<'_, Result<FxRate, MarketError>> {
        Box::pin(futures::future::ready(Ok(Offline::fx_of(from, to, on))))
    }
}

/// Every calendar day of `from..=to` (the simulation trades every day).
fn days(from: IsoDate, to: IsoDate) -> impl Iterator<Item = IsoDate> {
    std::iter::successors(Some(from), move |d| d.checked_add_days(1)).take_while(move |d| *d <= to)
}

/// Roughly what one US dollar buys, as the reference level of the
/// simulation; a currency not listed gets a level from its code's hash.
const REFERENCE_PER_USD: &[(&str, i64, u32)] = &[
    ("AUD", 152, 2),
    ("CAD", 136, 2),
    ("CHF", 88, 2),
    ("CNY", 720, 2),
    ("EUR", 92, 2),
    ("GBP", 79, 2),
    ("HKD", 780, 2),
    ("INR", 8300, 2),
    ("JPY", 150, 0),
    ("KWD", 307, 3),
    ("NOK", 1060, 2),
    ("SEK", 1050, 2),
    ("USD", 1, 0),
];

fn units_per_usd(currency: Currency, on: IsoDate) -> Decimal {
    if currency.code() == "USD" {
        return Decimal::ONE;
    }
    let reference = REFERENCE_PER_USD
        .iter()
        .find(|(code, _, _)| *code == currency.code())
        .map(|&(_, units, scale)| Decimal::new(units, scale))
        .unwrap_or_else(|| Decimal::new(50 + (hash(currency.code()) % 2000) as i64, 2));
    let day = day_number(on);
    let seed = hash(currency.code());
    let level = Decimal::ONE + Decimal::new(5, 2) * triangle(day + (seed % 730) as i64, 730);
    let wobble = Decimal::ONE + Decimal::new(wobble(&format!("fx\u{1f}{}\u{1f}{on}", currency.code()), 50), 4);
    reference * level * wobble
}

/// The first 8 bytes of SHA-256: stable across platforms and releases,
/// unlike `std`'s hasher.
fn hash(text: &str) -> u64 {
    let digest = Sha256::digest(text.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// A whole number in `-spread..=spread` from the hash of `text`.
fn wobble(text: &str, spread: u64) -> i64 {
    (hash(text) % (2 * spread + 1)) as i64 - spread as i64
}

/// Days since 2000-01-01 (negative before it).
fn day_number(on: IsoDate) -> i64 {
    let epoch = chrono::NaiveDate::from_ymd_opt(2000, 1, 1).expect("a date");
    (on.get() - epoch).num_days()
}

/// A triangle wave of `period` days in `-1..=1`, exact.
fn triangle(day: i64, period: i64) -> Decimal {
    let phase = day.rem_euclid(period);
    let x = Decimal::from(4 * phase) / Decimal::from(period);
    if 2 * phase < period { x - Decimal::ONE } else { Decimal::from(3) - x }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(symbol: &str, currency: &str) -> Listing {
        Listing { symbol: symbol.into(), exchange: "XNAS".into(), currency: Currency::from_code(currency).unwrap() }
    }

    fn d(s: &str) -> IsoDate {
        IsoDate::parse(s).unwrap()
    }

    #[test]
    fn the_same_listing_and_date_give_the_same_price() {
        let a = Offline::close_of(&listing("AAPL", "USD"), d("2026-03-02"));
        assert_eq!(a, Offline::close_of(&listing("AAPL", "USD"), d("2026-03-02")));
        assert_ne!(a.price, Offline::close_of(&listing("AAPL", "USD"), d("2026-03-03")).price);
        assert_ne!(a.price, Offline::close_of(&listing("MSFT", "USD"), d("2026-03-02")).price);
        assert_eq!(a.source, Source::Simulated);
    }

    #[test]
    fn prices_are_positive_in_the_currency_s_minor_unit_for_every_date() {
        for (symbol, currency) in [("AAPL", "USD"), ("7203", "JPY"), ("SAP", "EUR"), ("X", "KWD")] {
            for date in ["1900-01-01", "1999-12-31", "2026-12-03", "9999-12-31"] {
                let quote = Offline::close_of(&listing(symbol, currency), d(date));
                let currency = Currency::from_code(currency).unwrap();
                assert!(quote.price > Decimal::ZERO, "{symbol} {date}");
                assert!(quote.price.scale() <= u32::from(currency.exponent()), "{symbol} {date} {}", quote.price);
            }
        }
    }

    #[test]
    fn a_currency_into_itself_is_exactly_one_and_says_so() {
        let usd = Currency::from_code("USD").unwrap();
        let rate = Offline::fx_of(usd, usd, d("2026-01-01"));
        assert_eq!((rate.rate, rate.source), (Decimal::ONE, Source::Identity));
    }

    #[test]
    fn rates_are_near_the_reference_and_each_other_s_inverse() {
        let usd = Currency::from_code("USD").unwrap();
        let eur = Currency::from_code("EUR").unwrap();
        let rate = Offline::fx_of(usd, eur, d("2026-01-01")).rate;
        assert!(rate > Decimal::new(85, 2) && rate < Decimal::new(99, 2), "{rate}");
        let back = Offline::fx_of(eur, usd, d("2026-01-01")).rate;
        let product = (rate * back).round_dp(6);
        assert_eq!(product, Decimal::ONE, "{rate} × {back}");
    }
}

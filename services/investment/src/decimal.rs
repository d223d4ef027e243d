//! Exact decimals for what is not money: share quantities, unit prices and
//! FX rates, and the one way each of them becomes money.
//!
//! Why `rust_decimal` and not a fixed-point `i128` of 10^-8 units: the
//! numbers here are multiplied and divided by one another (quantity × price,
//! amount × rate, a split's `to / from`, a lot's share of a sale), and each
//! product has its own scale before it is rounded once, at the end, to a
//! currency's minor unit. A base-10 decimal with a 96-bit mantissa (28
//! significant digits) does exactly that with checked arithmetic and an
//! explicit rounding strategy; a fixed-point integer would have to pick one
//! scale for all of them or carry its own rescaling code. It is never a
//! float, and in Postgres it is `NUMERIC`, read and written as text (as the
//! outbox does with JSON), so sqlx needs no extra feature.
//!
//! In JSON every one of them is a string: quantities and prices in, plain
//! `digits[.digits]` with a stated pattern; out, without trailing zeros.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use freedumb_kit::money::{Currency, MAX_MINOR};
pub use rust_decimal::Decimal;
use rust_decimal::RoundingStrategy;
use rust_decimal::prelude::ToPrimitive;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

/// Decimal places a quantity keeps: fractional shares to 10^-8, as brokers
/// of fractional shares and crypto exchanges report them.
pub const QUANTITY_DECIMALS: u32 = 8;
/// Decimal places of a unit price: sub-cent prices (penny stocks, crypto).
pub const PRICE_DECIMALS: u32 = 8;
/// Decimal places an FX rate keeps.
pub const RATE_DECIMALS: u32 = 10;

/// How every decimal becomes money: half away from zero, the commercial
/// rounding a broker's statement uses.
const MONEY_ROUNDING: RoundingStrategy = RoundingStrategy::MidpointAwayFromZero;

/// Parses `digits[.digits]` (no sign, no exponent, no spaces) with at most
/// `whole` digits before the point and `places` after it. The message is a
/// fragment to follow the field's name.
fn parse_plain(text: &str, whole: usize, places: u32) -> Result<Decimal, String> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || (text.contains('.') && !digits(frac)) {
        return Err("must be a decimal number such as \"12.5\", written as a string".to_owned());
    }
    if frac.len() > places as usize {
        return Err(format!("has more than {places} decimal places"));
    }
    if int.trim_start_matches('0').len() > whole {
        return Err(format!("must be less than 10^{whole}"));
    }
    Decimal::from_str_exact(text).map_err(|_| "is not a decimal number".to_owned())
}

fn string_schema(pattern: &str, description: &str, example: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .description(Some(description))
        .examples([example])
        .into()
}

/// A number of shares (units, coins) greater than zero: at most 12 whole
/// digits and 8 decimals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity(Decimal);

impl Quantity {
    pub fn parse(text: &str) -> Result<Quantity, String> {
        let value = parse_plain(text, 12, QUANTITY_DECIMALS)?;
        if value.is_zero() {
            return Err("must be greater than zero".to_owned());
        }
        Ok(Quantity(value))
    }

    pub fn get(self) -> Decimal {
        self.0
    }
}

/// A unit price in the instrument's currency, zero or more (shares received
/// as a gift cost nothing): at most 9 whole digits and 8 decimals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitPrice(Decimal);

impl UnitPrice {
    pub fn parse(text: &str) -> Result<UnitPrice, String> {
        parse_plain(text, 9, PRICE_DECIMALS).map(UnitPrice)
    }

    pub fn get(self) -> Decimal {
        self.0
    }
}

/// A split: `to` new shares for every `from` held, written `"to:from"`
/// (`"3:1"` triples a holding, `"1:10"` is a reverse split).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    pub to: u32,
    pub from: u32,
}

impl Ratio {
    /// The largest term: a million to one is beyond any split on record.
    const MAX_TERM: u32 = 999_999;

    pub fn parse(text: &str) -> Result<Ratio, String> {
        const FORM: &str = "must be two whole numbers from 1 to 999999 written \"to:from\", such as \"3:1\"";
        let (to, from) = text.split_once(':').ok_or(FORM)?;
        let term = |s: &str| {
            (!s.is_empty() && s.len() <= 6 && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0'))
                .then(|| s.parse::<u32>().ok())
                .flatten()
                .filter(|n| (1..=Self::MAX_TERM).contains(n))
        };
        match (term(to), term(from)) {
            (Some(to), Some(from)) if to == from => {
                Err("must change the number of shares (to and from differ)".to_owned())
            }
            (Some(to), Some(from)) => Ok(Ratio { to, from }),
            _ => Err(FORM.to_owned()),
        }
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.to, self.from)
    }
}

macro_rules! string_type {
    ($ty:ident, $pattern:expr, $description:expr, $example:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = Cow::<'de, str>::deserialize(d).map_err(|_| serde::de::Error::custom("expected a string"))?;
                $ty::parse(&raw).map_err(serde::de::Error::custom)
            }
        }

        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                string_schema($pattern, $description, $example)
            }
        }

        impl ToSchema for $ty {}
    };
}

// What the parsers accept, as patterns. Quantity's zero-fraction form ends
// in a non-zero digit, a subset of what the parser takes (`0.10`), which
// is all a schema must promise.
string_type!(
    Quantity,
    r"^([1-9][0-9]{0,11}(\.[0-9]{1,8})?|0\.[0-9]{0,7}[1-9])$",
    "A number of units greater than zero, as a decimal string: at most 12 whole digits and 8 decimals \
     (fractional shares). Never a JSON number, so no client parses it into a float.",
    "12.5"
);
string_type!(
    UnitPrice,
    r"^(0|[1-9][0-9]{0,8})(\.[0-9]{1,8})?$",
    "A price per unit in the instrument's currency, zero or more, as a decimal string: at most 9 whole \
     digits and 8 decimals.",
    "187.42"
);
string_type!(
    Ratio,
    r"^[1-9][0-9]{0,5}:[1-9][0-9]{0,5}$",
    "`to:from`: `to` new units for every `from` held (\"3:1\" triples a holding, \"1:10\" is a reverse \
     split); the two differ.",
    "3:1"
);

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl Serialize for UnitPrice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl Serialize for Ratio {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A decimal as the API writes it: no trailing zeros, no exponent (`"10"`,
/// `"2.5"`, `"0.00000001"`).
pub fn show(value: Decimal) -> String {
    value.normalize().to_string()
}

/// The schema of a quantity the API writes (never negative).
pub struct QuantityOut;

impl PartialSchema for QuantityOut {
    fn schema() -> RefOr<Schema> {
        string_schema(r"^[0-9]+(\.[0-9]+)?$", "A number of units as a decimal string, without trailing zeros.", "12.5")
    }
}

impl ToSchema for QuantityOut {}

/// The schema of a price or FX rate the API writes.
pub struct DecimalOut;

impl PartialSchema for DecimalOut {
    fn schema() -> RefOr<Schema> {
        string_schema(
            r"^-?[0-9]+(\.[0-9]+)?$",
            "An exact decimal as a string, without trailing zeros; never a JSON number.",
            "1.0842",
        )
    }
}

impl ToSchema for DecimalOut {}

/// A decimal read back from a `NUMERIC` column as text.
pub fn from_db(text: &str) -> anyhow::Result<Decimal> {
    Decimal::from_str(text).map_err(|err| anyhow::anyhow!("a stored decimal {text:?} does not parse: {err}"))
}

/// An amount of `currency` in major units (such as `quantity × price`) as
/// minor units, rounded half away from zero; `None` beyond ±10^15 minor
/// units, the platform's bound on any amount.
pub fn to_minor(major: Decimal, currency: Currency) -> Option<i64> {
    let exponent = u32::from(currency.exponent());
    let scaled =
        major.round_dp_with_strategy(exponent, MONEY_ROUNDING).checked_mul(Decimal::from(10i64.pow(exponent)))?;
    scaled.to_i64().filter(|minor| minor.abs() <= MAX_MINOR)
}

/// Minor units of `currency` as an exact decimal in major units.
pub fn to_major(minor: i64, currency: Currency) -> Decimal {
    Decimal::new(minor, u32::from(currency.exponent()))
}

/// `minor` units of `from` in `to`, at `rate` (one unit of `from` is `rate`
/// units of `to`), rounded once to `to`'s minor unit.
pub fn convert(minor: i64, from: Currency, to: Currency, rate: Decimal) -> Option<i64> {
    to_minor(to_major(minor, from).checked_mul(rate)?, to)
}

/// `part / whole` of `minor`, rounded to a whole minor unit: a lot's share of
/// a cost, a disposal's share of proceeds. `whole` is never zero.
pub fn share(minor: i64, part: Decimal, whole: Decimal) -> Option<i64> {
    let exact = Decimal::from(minor).checked_mul(part)?.checked_div(whole)?;
    exact.round_dp_with_strategy(0, MONEY_ROUNDING).to_i64()
}

/// A quantity rounded to [`QUANTITY_DECIMALS`] (after a split), half to even
/// so that rounding has no drift over many lots.
pub fn round_quantity(value: Decimal) -> Decimal {
    value.round_dp_with_strategy(QUANTITY_DECIMALS, RoundingStrategy::MidpointNearestEven)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::from_code("USD").unwrap()
    }

    fn dec(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    #[test]
    fn quantities_take_eight_decimals_and_nothing_else() {
        assert_eq!(Quantity::parse("0.00000001").unwrap().get(), dec("0.00000001"));
        assert_eq!(Quantity::parse("999999999999.99999999").unwrap().get(), dec("999999999999.99999999"));
        assert_eq!(Quantity::parse("0.000000001").unwrap_err(), "has more than 8 decimal places");
        assert_eq!(Quantity::parse("1000000000000").unwrap_err(), "must be less than 10^12");
        assert_eq!(Quantity::parse("0").unwrap_err(), "must be greater than zero");
        for bad in ["", "-1", "+1", "1e3", ".5", "5.", "1,5", " 1", "NaN", "0x10"] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_price_may_be_zero_but_not_negative() {
        assert!(UnitPrice::parse("0").is_ok());
        assert!(UnitPrice::parse("-1").is_err());
        assert_eq!(UnitPrice::parse("0.00012345").unwrap().get(), dec("0.00012345"));
    }

    #[test]
    fn a_ratio_is_to_colon_from() {
        assert_eq!(Ratio::parse("3:1"), Ok(Ratio { to: 3, from: 1 }));
        assert_eq!(Ratio::parse("1:10"), Ok(Ratio { to: 1, from: 10 }));
        for bad in ["3", "0:1", "1:0", "03:1", "1:1", "1000000:1", "3:1:1", "-3:1", "3.5:1"] {
            assert!(Ratio::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn money_is_rounded_once_half_away_from_zero() {
        assert_eq!(to_minor(dec("3") * dec("33.335"), usd()), Some(10001)); // 100.005 → 100.01
        assert_eq!(to_minor(dec("-100.005"), usd()), Some(-10001));
        assert_eq!(to_minor(dec("10000000000000.01"), usd()), None);
        let jpy = Currency::from_code("JPY").unwrap();
        assert_eq!(convert(10000, usd(), jpy, dec("151.235")), Some(15124)); // 100 USD
        let kwd = Currency::from_code("KWD").unwrap();
        assert_eq!(convert(15124, jpy, kwd, dec("0.002")), Some(30248));
    }

    #[test]
    fn shares_of_a_cost_round_to_whole_minor_units() {
        assert_eq!(share(1000, dec("1"), dec("3")), Some(333));
        assert_eq!(share(1000, dec("2"), dec("3")), Some(667));
        assert_eq!(share(-1000, dec("1"), dec("2")), Some(-500));
    }

    #[test]
    fn decimals_are_written_without_trailing_zeros() {
        assert_eq!(show(dec("10.00000000")), "10");
        assert_eq!(show(dec("2.50")), "2.5");
        assert_eq!(show(dec("0.00000001")), "0.00000001");
    }
}

//! Exact money: integer minor units and ISO 4217 currencies.
//!
//! Amounts are `i64` counts of a currency's minor unit (cents for USD, yen
//! for JPY, fils for KWD). In JSON they travel as decimal strings
//! (`"-12.34"`), so no client ever parses them into a float; in Postgres
//! they are `bigint`. Nothing here, or anywhere in the services, touches
//! `f32`/`f64` for money.

use std::fmt;

/// An ISO 4217 currency the platform accepts, with its minor-unit exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: &'static str,
    exponent: u8,
}

/// The currencies accepted, with their exponents from ISO 4217. Sorted by
/// code; a test keeps it so.
const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("MYR", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PEN", 2),
    ("PHP", 2),
    ("PLN", 2),
    ("RON", 2),
    ("SAR", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TND", 3),
    ("TRY", 2),
    ("TWD", 2),
    ("UAH", 2),
    ("USD", 2),
    ("VND", 0),
    ("ZAR", 2),
];

impl Currency {
    /// Every currency accepted, by code (the OpenAPI document lists them).
    pub fn all() -> impl Iterator<Item = Currency> {
        CURRENCIES.iter().map(|&(code, exponent)| Currency { code, exponent })
    }

    /// The currency with this code (upper-case, as ISO 4217 writes it).
    pub fn from_code(code: &str) -> Option<Currency> {
        CURRENCIES
            .binary_search_by(|(c, _)| (*c).cmp(code))
            .ok()
            .map(|i| Currency { code: CURRENCIES[i].0, exponent: CURRENCIES[i].1 })
    }

    pub fn code(self) -> &'static str {
        self.code
    }

    /// Digits after the decimal point: 2 for EUR, 0 for JPY, 3 for KWD.
    pub fn exponent(self) -> u8 {
        self.exponent
    }

    /// Parses a decimal string (`"12.34"`, `"-0.5"`, `"100"`) into minor
    /// units. More decimals than the currency has are an error, not a
    /// rounding.
    pub fn parse(self, text: &str) -> Result<i64, AmountError> {
        parse_minor(text, self.exponent)
    }

    /// Minor units as a decimal string with exactly `exponent` decimals.
    pub fn format(self, minor: i64) -> String {
        format_minor(minor, self.exponent)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

/// Why a string is not an amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("must be a decimal number such as \"12.34\" or \"-5\"")]
    Malformed,
    #[error("has more than {0} decimal places")]
    TooPrecise(u8),
    #[error("is too large")]
    TooLarge,
}

/// A decimal string to minor units, exactly.
pub fn parse_minor(text: &str, exponent: u8) -> Result<i64, AmountError> {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, fraction) = match digits.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (digits, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) || (digits.contains('.') && fraction.is_empty())
    {
        return Err(AmountError::Malformed);
    }
    if fraction.len() > usize::from(exponent) {
        return Err(AmountError::TooPrecise(exponent));
    }
    let scale = 10i64.checked_pow(u32::from(exponent)).ok_or(AmountError::TooLarge)?;
    let whole: i64 = whole.parse().map_err(|_| AmountError::TooLarge)?;
    let padded = format!("{fraction:0<width$}", width = usize::from(exponent));
    let fraction: i64 = if padded.is_empty() { 0 } else { padded.parse().map_err(|_| AmountError::Malformed)? };
    let minor = whole.checked_mul(scale).and_then(|w| w.checked_add(fraction)).ok_or(AmountError::TooLarge)?;
    // Amounts beyond ±10^15 minor units are no one's personal finances and
    // leave headroom for sums of many of them.
    if minor > MAX_MINOR {
        return Err(AmountError::TooLarge);
    }
    Ok(if negative { -minor } else { minor })
}

/// The largest absolute amount accepted, in minor units.
pub const MAX_MINOR: i64 = 1_000_000_000_000_000;

pub fn format_minor(minor: i64, exponent: u8) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    if exponent == 0 {
        return format!("{sign}{abs}");
    }
    let scale = 10u64.pow(u32::from(exponent));
    format!("{sign}{}.{:0width$}", abs / scale, abs % scale, width = usize::from(exponent))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::from_code("USD").unwrap()
    }

    #[test]
    fn the_currency_table_is_sorted_for_binary_search() {
        assert!(CURRENCIES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn amounts_parse_exactly() {
        assert_eq!(usd().parse("12.34"), Ok(1234));
        assert_eq!(usd().parse("-0.5"), Ok(-50));
        assert_eq!(usd().parse("100"), Ok(10000));
        assert_eq!(usd().parse("+7.01"), Ok(701));
        // 0.1 + 0.2 is 0.3 here.
        assert_eq!(usd().parse("0.1").unwrap() + usd().parse("0.2").unwrap(), usd().parse("0.3").unwrap());
    }

    #[test]
    fn currencies_without_minor_units_take_whole_numbers() {
        let jpy = Currency::from_code("JPY").unwrap();
        assert_eq!(jpy.parse("1500"), Ok(1500));
        assert_eq!(jpy.parse("1500.5"), Err(AmountError::TooPrecise(0)));
        assert_eq!(jpy.format(-1500), "-1500");
    }

    #[test]
    fn three_decimal_currencies_keep_three() {
        let kwd = Currency::from_code("KWD").unwrap();
        assert_eq!(kwd.parse("1.005"), Ok(1005));
        assert_eq!(kwd.format(1005), "1.005");
    }

    #[test]
    fn extra_precision_is_refused_not_rounded() {
        assert_eq!(usd().parse("1.005"), Err(AmountError::TooPrecise(2)));
    }

    #[test]
    fn malformed_amounts_are_refused() {
        for bad in ["", "-", "abc", "1e5", "1.2.3", ".5", "5.", "1,000.00", "NaN", "inf", "--1", " - 1"] {
            assert_eq!(usd().parse(bad), Err(AmountError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn huge_amounts_are_refused() {
        assert_eq!(usd().parse("99999999999999999999"), Err(AmountError::TooLarge));
        assert_eq!(usd().parse("10000000000000.01"), Err(AmountError::TooLarge));
    }

    #[test]
    fn formatting_round_trips() {
        for minor in [0, 1, -1, 99, -100, 123456, -987654321, MAX_MINOR, -MAX_MINOR] {
            assert_eq!(usd().parse(&usd().format(minor)), Ok(minor), "{minor}");
        }
        assert_eq!(usd().format(-5), "-0.05");
    }

    #[test]
    fn unknown_or_lower_case_codes_are_not_currencies() {
        assert!(Currency::from_code("XYZ").is_none());
        assert!(Currency::from_code("usd").is_none());
    }
}

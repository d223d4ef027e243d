//! Calendar dates as the API speaks them: canonical `YYYY-MM-DD` between
//! [`MIN`] (1900-01-01) and [`MAX`] (9999-12-31), in bodies, query strings
//! and CSV alike.
//!
//! chrono alone accepts `2026-1-1`, `+10000-01-01` and `-0001-01-01`, and
//! prints a year past 9999 as `+10000-…`, which is not a JSON Schema `date`.
//! The range is a decision: a personal-finance ledger has no business
//! before 1900, and a four-digit year keeps every date the server emits in
//! RFC 3339's `full-date`. Computations that could leave the range (a
//! budget period's end, a goal's projection) use [`IsoDate::new`] or
//! [`IsoDate::checked_add_days`] and answer a 422 or a `null` with a reason
//! rather than emit such a date.
//!
//! The type is not called `Date` because utoipa takes any type of that name
//! for chrono's and would skip this schema (with its range pattern).

use std::borrow::Cow;
use std::fmt;

use chrono::{Datelike, Days, NaiveDate};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::{PartialSchema, ToSchema};

/// The first date the API accepts or emits.
pub const MIN: NaiveDate = NaiveDate::from_ymd_opt(1900, 1, 1).expect("a valid date");
/// The last date the API accepts or emits.
pub const MAX: NaiveDate = NaiveDate::from_ymd_opt(9999, 12, 31).expect("a valid date");

/// Years 1900–9999, months 01–12, days 01–31 (the calendar decides the rest).
pub const PATTERN: &str = r"^(19[0-9]{2}|[2-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$";

/// A date within [`MIN`]`..=`[`MAX`], parsed only from `YYYY-MM-DD`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IsoDate(NaiveDate);

/// Why a text is not an [`IsoDate`]; its `Display` is a fragment to follow
/// the field's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    #[error("must be a date in the form YYYY-MM-DD")]
    Form,
    #[error("is not a date of the calendar")]
    Calendar,
    #[error("must be between 1900-01-01 and 9999-12-31")]
    Range,
}

impl IsoDate {
    pub const MIN: IsoDate = IsoDate(MIN);
    pub const MAX: IsoDate = IsoDate(MAX);

    /// The date, if it is within the range.
    pub fn new(date: NaiveDate) -> Option<IsoDate> {
        (MIN..=MAX).contains(&date).then_some(IsoDate(date))
    }

    /// Checks a date for a field: out of range is [`DateError::Range`].
    pub fn in_range(date: NaiveDate) -> Result<IsoDate, DateError> {
        Self::new(date).ok_or(DateError::Range)
    }

    /// Parses exactly `YYYY-MM-DD` (ASCII digits, no sign, no spaces).
    pub fn parse(text: &str) -> Result<IsoDate, DateError> {
        let b = text.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' || !digits(0..4) || !digits(5..7) || !digits(8..10) {
            return Err(DateError::Form);
        }
        let num = |r: std::ops::Range<usize>| text[r].parse::<u32>().expect("ascii digits");
        let date = NaiveDate::from_ymd_opt(num(0..4) as i32, num(5..7), num(8..10)).ok_or(DateError::Calendar)?;
        Self::in_range(date)
    }

    /// Today in UTC: always within the range for the next 7,973 years.
    pub fn today() -> IsoDate {
        IsoDate::new(chrono::Utc::now().date_naive()).unwrap_or(IsoDate::MAX)
    }

    pub fn get(self) -> NaiveDate {
        self.0
    }

    /// `self + days`, if that is still within the range.
    pub fn checked_add_days(self, days: u64) -> Option<IsoDate> {
        self.0.checked_add_days(Days::new(days)).and_then(IsoDate::new)
    }

    pub fn year(self) -> i32 {
        self.0.year()
    }
}

impl From<IsoDate> for NaiveDate {
    fn from(date: IsoDate) -> NaiveDate {
        date.0
    }
}

impl fmt::Display for IsoDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Four digits by construction: the range keeps the year in 1900–9999.
        write!(f, "{}", self.0.format("%Y-%m-%d"))
    }
}

impl fmt::Debug for IsoDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for IsoDate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IsoDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Cow::<'de, str>::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a date string in the form YYYY-MM-DD"))?;
        IsoDate::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl PartialSchema for IsoDate {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Date)))
            .pattern(Some(PATTERN))
            .description(Some("A date `YYYY-MM-DD` between 1900-01-01 and 9999-12-31."))
            .examples(["2026-11-27"])
            .into()
    }
}

impl ToSchema for IsoDate {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("IsoDate")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_form_is_accepted() {
        assert_eq!(IsoDate::parse("2026-11-27").unwrap().to_string(), "2026-11-27");
        assert_eq!(IsoDate::parse("9999-12-31").unwrap(), IsoDate::MAX);
        assert_eq!(IsoDate::parse("1900-01-01").unwrap(), IsoDate::MIN);
    }

    #[test]
    fn other_forms_are_refused() {
        for text in
            ["2026-1-1", "+10000-01-01", "-0001-01-01", "10000-01-01", " 2026-01-01", "2026/01/01", "２０２６-01-01"]
        {
            assert_eq!(IsoDate::parse(text), Err(DateError::Form), "{text}");
        }
    }

    #[test]
    fn dates_the_calendar_does_not_have_are_refused() {
        assert_eq!(IsoDate::parse("2026-02-30"), Err(DateError::Calendar));
        assert_eq!(IsoDate::parse("2026-13-01"), Err(DateError::Calendar));
    }

    #[test]
    fn dates_outside_the_range_are_refused() {
        assert_eq!(IsoDate::parse("0000-01-01"), Err(DateError::Range));
        assert_eq!(IsoDate::parse("1899-12-31"), Err(DateError::Range));
        assert_eq!(IsoDate::MAX.checked_add_days(1), None);
    }

    #[test]
    fn the_pattern_agrees_with_the_parser_on_the_edges() {
        // No regex engine in the kit: the pattern's year alternatives spelled out.
        assert!(PATTERN.starts_with(r"^(19[0-9]{2}|[2-9][0-9]{3})-"));
        let json = serde_json::to_value(IsoDate::schema()).unwrap();
        assert_eq!(json["format"], "date");
        assert_eq!(json["pattern"], PATTERN);
    }

    #[test]
    fn a_bad_date_in_json_says_the_form() {
        let err = serde_json::from_str::<IsoDate>("\"2026-1-1\"").unwrap_err();
        assert!(err.to_string().starts_with("must be a date in the form YYYY-MM-DD"), "{err}");
    }
}

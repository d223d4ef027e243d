//! The date range every analytics view is asked for.
//!
//! A [`Range`] is validated once, where it enters (a query string, a report
//! job's parameters), so the views and the report jobs can rely on it: `to`
//! is on or after `from`, and the range spans at most three years, which
//! bounds every answer (at most 1,097 daily rows per currency).

use chrono::{Days, Months, NaiveDate};
use freedumb_kit::date::IsoDate;
use freedumb_kit::{ApiError, FieldError};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The longest range a view answers for, in months.
pub const MAX_MONTHS: u32 = 36;

/// `from..=to`, both days included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "RangeQuery")]
pub struct Range {
    from: IsoDate,
    to: IsoDate,
}

/// Why a range is refused: the field to blame and a fragment to follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRange {
    pub field: &'static str,
    pub message: &'static str,
}

impl std::fmt::Display for InvalidRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` {}", self.field, self.message)
    }
}

impl From<InvalidRange> for ApiError {
    fn from(err: InvalidRange) -> ApiError {
        ApiError::validation(vec![FieldError::new(err.field, err.message)])
    }
}

impl Range {
    pub fn new(from: IsoDate, to: IsoDate) -> Result<Range, InvalidRange> {
        if to < from {
            return Err(InvalidRange { field: "to", message: "must be on or after `from`" });
        }
        // `from + 36 months` may pass 9999-12-31; then any `to` is near enough.
        if from.get().checked_add_months(Months::new(MAX_MONTHS)).is_some_and(|limit| to.get() > limit) {
            return Err(InvalidRange { field: "to", message: "must be at most 3 years after `from`" });
        }
        Ok(Range { from, to })
    }

    pub fn from(self) -> IsoDate {
        self.from
    }

    pub fn to(self) -> IsoDate {
        self.to
    }

    /// The number of days in it, both ends included (1 to 1,097).
    pub fn days(self) -> i64 {
        (self.to.get() - self.from.get()).num_days() + 1
    }

    /// The day after `to`: an exclusive bound for queries, never shown (it
    /// may be 10000-01-01).
    pub fn end_exclusive(self) -> NaiveDate {
        self.to.get().checked_add_days(Days::new(1)).unwrap_or(self.to.get())
    }

    /// The range of equal length that ends the day before this one starts,
    /// or `None` when it would start before 1900-01-01.
    pub fn previous(self) -> Option<Range> {
        let to = IsoDate::new(self.from.get().pred_opt()?)?;
        let from = IsoDate::new(self.from.get().checked_sub_days(Days::new(u64::try_from(self.days()).ok()?))?)?;
        Some(Range { from, to })
    }

    /// Every day in it, in order.
    pub fn each_day(self) -> impl Iterator<Item = NaiveDate> {
        self.from.get().iter_days().take_while(move |day| *day <= self.to.get())
    }
}

/// The query parameters of a range: `?from=YYYY-MM-DD&to=YYYY-MM-DD`.
#[derive(Debug, Clone, Copy, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RangeQuery {
    /// The first day, included.
    #[param(inline)]
    pub from: IsoDate,
    /// The last day, included: on or after `from` and at most 3 years
    /// (36 months) after it, or the answer is a 422 naming `to`.
    #[param(inline)]
    pub to: IsoDate,
}

impl RangeQuery {
    pub fn range(self) -> Result<Range, ApiError> {
        Ok(Range::new(self.from, self.to)?)
    }
}

impl TryFrom<RangeQuery> for Range {
    type Error = InvalidRange;

    fn try_from(q: RangeQuery) -> Result<Range, InvalidRange> {
        Range::new(q.from, q.to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> IsoDate {
        IsoDate::parse(s).unwrap()
    }

    #[test]
    fn a_single_day_is_a_range() {
        let range = Range::new(d("2026-03-01"), d("2026-03-01")).unwrap();
        assert_eq!(range.days(), 1);
        assert_eq!(range.each_day().count(), 1);
    }

    #[test]
    fn to_before_from_is_refused_naming_to() {
        assert_eq!(Range::new(d("2026-03-02"), d("2026-03-01")).unwrap_err().field, "to");
    }

    #[test]
    fn three_years_is_the_longest_range() {
        assert!(Range::new(d("2024-01-01"), d("2027-01-01")).is_ok());
        assert_eq!(Range::new(d("2024-01-01"), d("2027-01-02")).unwrap_err().field, "to");
        assert!(Range::new(d("9998-01-01"), d("9999-12-31")).is_ok());
    }

    #[test]
    fn the_previous_range_has_the_same_length_and_ends_the_day_before() {
        let range = Range::new(d("2026-03-01"), d("2026-03-31")).unwrap();
        let previous = range.previous().unwrap();
        assert_eq!((previous.from(), previous.to()), (d("2026-01-29"), d("2026-02-28")));
        assert_eq!(previous.days(), range.days());
        assert_eq!(Range::new(d("1900-01-01"), d("1900-01-05")).unwrap().previous(), None);
    }

    #[test]
    fn a_deserialised_range_is_validated() {
        let err = serde_json::from_str::<Range>(r#"{"from": "2026-03-02", "to": "2026-03-01"}"#).unwrap_err();
        assert!(err.to_string().contains("`to` must be on or after `from`"), "{err}");
    }
}

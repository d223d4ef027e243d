//! Budget periods: ISO weeks (Monday first), calendar months, calendar years.

use chrono::{Datelike, Days, Months, NaiveDate};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Period {
    Weekly,
    Monthly,
    Yearly,
}

impl Period {
    /// The first day of the period containing `date`.
    pub fn start_of(self, date: NaiveDate) -> NaiveDate {
        match self {
            Period::Weekly => date - Days::new(u64::from(date.weekday().num_days_from_monday())),
            Period::Monthly => date.with_day(1).unwrap_or(date),
            Period::Yearly => NaiveDate::from_ymd_opt(date.year(), 1, 1).unwrap_or(date),
        }
    }

    /// The first day of the next period, for a period starting on `start`.
    pub fn next(self, start: NaiveDate) -> NaiveDate {
        match self {
            Period::Weekly => start + Days::new(7),
            Period::Monthly => start.checked_add_months(Months::new(1)).unwrap_or(start),
            Period::Yearly => start.checked_add_months(Months::new(12)).unwrap_or(start),
        }
    }

    /// Whole periods from the one starting on `from` to the one starting on
    /// `to` (both period starts, `from <= to`).
    pub fn count_between(self, from: NaiveDate, to: NaiveDate) -> i64 {
        match self {
            Period::Weekly => (to - from).num_days() / 7,
            Period::Monthly => i64::from((to.year() - from.year()) * 12 + to.month() as i32 - from.month() as i32),
            Period::Yearly => i64::from(to.year() - from.year()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn weeks_start_on_monday() {
        assert_eq!(Period::Weekly.start_of(d("2026-11-29")), d("2026-11-23"));
        assert_eq!(Period::Weekly.start_of(d("2026-11-23")), d("2026-11-23"));
    }

    #[test]
    fn months_and_years_start_on_the_first() {
        assert_eq!(Period::Monthly.start_of(d("2026-02-28")), d("2026-02-01"));
        assert_eq!(Period::Monthly.next(d("2026-12-01")), d("2027-01-01"));
        assert_eq!(Period::Yearly.start_of(d("2026-11-27")), d("2026-01-01"));
    }

    #[test]
    fn periods_are_counted_whole() {
        assert_eq!(Period::Monthly.count_between(d("2025-11-01"), d("2026-02-01")), 3);
        assert_eq!(Period::Weekly.count_between(d("2026-11-02"), d("2026-11-23")), 3);
    }
}

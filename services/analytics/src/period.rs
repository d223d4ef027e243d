//! Budget periods: ISO weeks (Monday first), calendar months, calendar years.
//!
//! Periods are reckoned on [`IsoDate`]s, so every date a status names is one
//! the API can write. The first date the API knows, 1900-01-01, is a Monday
//! and the first of a month and a year, so the period containing any
//! `IsoDate` starts within the range. Its end may not: the ISO week of
//! 9999-12-31 runs to 10000-01-02. [`Period::last_day`] then answers
//! 9999-12-31, the last day of the period the API can name; no spending can
//! fall after it, since no transaction is dated later.

use chrono::{Datelike, Days, Months, NaiveDate};
use freedumb_kit::date::IsoDate;
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
    pub fn start_of(self, date: IsoDate) -> IsoDate {
        let day = date.get();
        let start = match self {
            Period::Weekly => day - Days::new(u64::from(day.weekday().num_days_from_monday())),
            Period::Monthly => day.with_day(1).unwrap_or(day),
            Period::Yearly => NaiveDate::from_ymd_opt(day.year(), 1, 1).unwrap_or(day),
        };
        // Never earlier than 1900-01-01, a Monday and a New Year's Day (see
        // the module's note); `MIN` keeps the function total all the same.
        IsoDate::new(start).unwrap_or(IsoDate::MIN)
    }

    /// The first day of the next period, for a period starting on `start`:
    /// an exclusive bound for queries, never shown, so it may lie past
    /// 9999-12-31.
    pub fn next(self, start: IsoDate) -> NaiveDate {
        let start = start.get();
        match self {
            Period::Weekly => start + Days::new(7),
            Period::Monthly => start.checked_add_months(Months::new(1)).unwrap_or(start),
            Period::Yearly => start.checked_add_months(Months::new(12)).unwrap_or(start),
        }
    }

    /// The last day of the period starting on `start`, inclusive, or
    /// 9999-12-31 for a period that runs past it.
    pub fn last_day(self, start: IsoDate) -> IsoDate {
        self.next(start).pred_opt().and_then(IsoDate::new).unwrap_or(IsoDate::MAX)
    }

    /// Whole periods from the one starting on `from` to the one starting on
    /// `to` (both period starts, `from <= to`).
    pub fn count_between(self, from: IsoDate, to: IsoDate) -> i64 {
        let (from, to) = (from.get(), to.get());
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

    fn d(s: &str) -> IsoDate {
        IsoDate::parse(s).unwrap()
    }

    #[test]
    fn weeks_start_on_monday() {
        assert_eq!(Period::Weekly.start_of(d("2026-11-29")), d("2026-11-23"));
        assert_eq!(Period::Weekly.start_of(d("2026-11-23")), d("2026-11-23"));
    }

    #[test]
    fn months_and_years_start_on_the_first() {
        assert_eq!(Period::Monthly.start_of(d("2026-02-28")), d("2026-02-01"));
        assert_eq!(Period::Monthly.next(d("2026-12-01")), d("2027-01-01").get());
        assert_eq!(Period::Yearly.start_of(d("2026-11-27")), d("2026-01-01"));
    }

    #[test]
    fn periods_are_counted_whole() {
        assert_eq!(Period::Monthly.count_between(d("2025-11-01"), d("2026-02-01")), 3);
        assert_eq!(Period::Weekly.count_between(d("2026-11-02"), d("2026-11-23")), 3);
    }

    #[test]
    fn the_first_period_of_every_kind_starts_on_1900_01_01() {
        for period in [Period::Weekly, Period::Monthly, Period::Yearly] {
            assert_eq!(period.start_of(d("1900-01-01")), IsoDate::MIN, "{period:?}");
            assert_eq!(period.start_of(d("1900-01-06")), IsoDate::MIN, "{period:?}");
        }
    }

    #[test]
    fn a_period_running_past_9999_ends_on_9999_12_31() {
        let week = Period::Weekly.start_of(IsoDate::MAX);
        assert_eq!(week, d("9999-12-27"));
        assert_eq!(Period::Weekly.last_day(week), IsoDate::MAX);
        // Still counted to its true end.
        assert_eq!(Period::Weekly.next(week).to_string(), "+10000-01-03");
        assert_eq!(Period::Monthly.last_day(d("9999-12-01")), IsoDate::MAX);
        assert_eq!(Period::Yearly.last_day(d("9999-01-01")), IsoDate::MAX);
        assert_eq!(Period::Monthly.last_day(d("2026-02-01")), d("2026-02-28"));
    }
}

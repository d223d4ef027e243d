//! When a recurring rule's occurrences fall.
//!
//! Occurrence `n` is computed from the start date and `n` directly, never
//! from occurrence `n - 1`: a monthly rule on the 31st gives Jan 31, Feb 28,
//! Mar 31, not Jan 31, Feb 28, Mar 28.

use chrono::{Datelike, Days, Months, NaiveDate};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, sqlx::Type)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Frequency {
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub frequency: Frequency,
    pub interval: u32,
    pub start: NaiveDate,
    /// For monthly and yearly rules; clamped to the month's last day.
    pub day_of_month: u32,
    pub end: Option<NaiveDate>,
    pub max_occurrences: Option<u32>,
}

impl Schedule {
    /// The date of occurrence `n` (0-based, counting only occurrences on or
    /// after the start date), or `None` past the rule's end or count.
    pub fn occurrence(&self, n: u32) -> Option<NaiveDate> {
        if self.max_occurrences.is_some_and(|max| n >= max) {
            return None;
        }
        let date = self.nth(n.checked_add(self.offset())?)?;
        // No date past the API's range is ever stored or shown.
        if date > freedumb_kit::date::MAX {
            return None;
        }
        match self.end {
            Some(end) if date > end => None,
            _ => Some(date),
        }
    }

    /// The `n`th step from the start month, before any end or count.
    fn nth(&self, n: u32) -> Option<NaiveDate> {
        let step = n.checked_mul(self.interval)?;
        match self.frequency {
            Frequency::Daily => self.start.checked_add_days(Days::new(u64::from(step))),
            Frequency::Weekly => self.start.checked_add_days(Days::new(u64::from(step) * 7)),
            Frequency::Monthly => {
                clamp(self.start.with_day(1)?.checked_add_months(Months::new(step))?, self.day_of_month)
            }
            Frequency::Yearly => clamp(
                self.start.with_day(1)?.checked_add_months(Months::new(step.checked_mul(12)?))?,
                self.day_of_month,
            ),
        }
    }

    /// 1 when the start month's own occurrence falls before the start date
    /// (day 5 for a monthly rule starting on the 20th), so it is skipped.
    fn offset(&self) -> u32 {
        match self.nth(0) {
            Some(date) if date < self.start => 1,
            _ => 0,
        }
    }
}

/// The `day`th of `first_of_month`'s month, or its last day if shorter.
fn clamp(first_of_month: NaiveDate, day: u32) -> Option<NaiveDate> {
    let next_month = first_of_month.checked_add_months(Months::new(1))?;
    let last = next_month.pred_opt()?.day();
    first_of_month.with_day(day.min(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn dates(schedule: &Schedule, count: u32) -> Vec<String> {
        (0..).map_while(|n| schedule.occurrence(n)).take(count as usize).map(|d| d.to_string()).collect()
    }

    fn monthly(start: &str, day: u32) -> Schedule {
        Schedule {
            frequency: Frequency::Monthly,
            interval: 1,
            start: date(start),
            day_of_month: day,
            end: None,
            max_occurrences: None,
        }
    }

    #[test]
    fn the_31st_clamps_to_each_months_end_without_drifting() {
        assert_eq!(dates(&monthly("2026-01-31", 31), 4), ["2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30"]);
    }

    #[test]
    fn leap_days_clamp_in_other_years() {
        let yearly = Schedule { frequency: Frequency::Yearly, ..monthly("2028-02-29", 29) };
        assert_eq!(dates(&yearly, 3), ["2028-02-29", "2029-02-28", "2030-02-28"]);
    }

    #[test]
    fn a_day_before_the_start_date_begins_next_month() {
        assert_eq!(dates(&monthly("2026-01-20", 5), 2), ["2026-02-05", "2026-03-05"]);
    }

    #[test]
    fn intervals_multiply_the_step() {
        let fortnightly = Schedule { frequency: Frequency::Weekly, interval: 2, ..monthly("2026-11-02", 2) };
        assert_eq!(dates(&fortnightly, 3), ["2026-11-02", "2026-11-16", "2026-11-30"]);
        let quarterly = Schedule { interval: 3, ..monthly("2026-11-15", 15) };
        assert_eq!(dates(&quarterly, 3), ["2026-11-15", "2027-02-15", "2027-05-15"]);
    }

    #[test]
    fn a_rule_ends_at_its_end_date_or_count() {
        let daily = Schedule { frequency: Frequency::Daily, end: Some(date("2026-11-03")), ..monthly("2026-11-01", 1) };
        assert_eq!(dates(&daily, 10), ["2026-11-01", "2026-11-02", "2026-11-03"]);
        let counted = Schedule { max_occurrences: Some(2), ..monthly("2026-11-01", 1) };
        assert_eq!(dates(&counted, 10), ["2026-11-01", "2026-12-01"]);
    }
}

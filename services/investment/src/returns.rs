//! Returns over a period, from a daily series of values and external flows.
//! Pure, exact decimal arithmetic (no floats); the formulas are the API's.
//!
//! - `V(d)` is the portfolio's value at the end of day `d` (holdings at the
//!   day's close plus cash), `V(s)` at the end of the day before the period.
//! - `F(d)` is the day's net external flow: deposits less withdrawals, plus
//!   transfers in less transfers out at the day's close. Buys, sells,
//!   dividends, interest and fees move money inside the portfolio and are
//!   not flows. A flow is taken to arrive at the start of its day.
//!
//! **Time-weighted return** (daily linking around the flows):
//! `TWR = ∏ over the days d of the period of (V(d) / (V(d−1) + F(d))) − 1`;
//! a day with nothing invested (`V(d−1) + F(d) ≤ 0`) contributes a factor
//! of 1. It measures the investments, whatever money came and went.
//!
//! **Money-weighted return** (XIRR): the annual rate `r` with
//! `−V(s) − Σ F(d) / (1 + r)^(t(d)) + V(e) / (1 + r)^(t(e)) = 0`, where
//! `t(d)` is the days from the start `s` to `d` over 365 (as spreadsheets'
//! XIRR). It measures the investor's experience, timing of flows included.
//! There is no such rate unless money goes both ways (`null` then).

use rust_decimal::Decimal;
use rust_decimal::MathematicalOps;

/// One day of the series, in minor units of the base currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Day {
    pub value: i64,
    pub flow: i64,
}

/// Decimal places a return keeps.
pub const PLACES: u32 = 8;
/// Decimal places kept between steps: far beyond what is shown, bounded so
/// that products of thousands of days stay inside 28 digits.
const WORKING: u32 = 20;

/// The time-weighted return of `days` after a day ending at `start`, or
/// `None` when nothing was invested on any day.
pub fn time_weighted(start: i64, days: &[Day]) -> Option<Decimal> {
    let mut growth = Decimal::ONE;
    let mut previous = start;
    let mut invested_on_some_day = false;
    for day in days {
        let invested = previous.checked_add(day.flow)?;
        if invested > 0 {
            let factor = Decimal::from(day.value).checked_div(Decimal::from(invested))?;
            growth = growth.checked_mul(factor)?.round_dp(WORKING);
            invested_on_some_day = true;
        }
        previous = day.value;
    }
    invested_on_some_day.then(|| (growth - Decimal::ONE).round_dp(PLACES))
}

/// A cash flow from the investor's side: negative when they put money in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Days since the first flow.
    pub day: i64,
    pub amount: i64,
}

/// The investor's flows of a period: the start value put in, each day's
/// flow, the end value taken out.
pub fn investor_flows(start: i64, days: &[Day]) -> Vec<Flow> {
    let mut flows = Vec::with_capacity(days.len() + 2);
    if start != 0 {
        flows.push(Flow { day: 0, amount: -start });
    }
    for (i, day) in days.iter().enumerate() {
        if day.flow != 0 {
            flows.push(Flow { day: i as i64 + 1, amount: -day.flow });
        }
    }
    if let Some(last) = days.last() {
        flows.push(Flow { day: days.len() as i64, amount: last.value });
    }
    flows
}

/// `Σ amount / (1 + rate)^(day / 365)` and its derivative in `rate`.
fn npv(flows: &[Flow], rate: Decimal) -> Option<(Decimal, Decimal)> {
    let base = (Decimal::ONE + rate).checked_ln()?;
    let year = Decimal::from(365);
    let (mut value, mut slope) = (Decimal::ZERO, Decimal::ZERO);
    for flow in flows {
        let t = Decimal::from(flow.day) / year;
        // exp(−t·ln(1 + r)); far below one unit it is nothing.
        let discount = (-t * base).checked_exp().unwrap_or(Decimal::ZERO);
        let amount = Decimal::from(flow.amount);
        value = value.checked_add(amount.checked_mul(discount)?)?;
        slope = slope.checked_sub(t.checked_mul(amount)?.checked_mul(discount)?.checked_div(Decimal::ONE + rate)?)?;
    }
    Some((value, slope))
}

/// The money-weighted annual return of `flows`, or `None` without money
/// both ways or a rate between −99.99% and 10^6 that balances them.
pub fn money_weighted(flows: &[Flow]) -> Option<Decimal> {
    if !(flows.iter().any(|f| f.amount < 0) && flows.iter().any(|f| f.amount > 0)) {
        return None;
    }
    let sign = |rate: Decimal| npv(flows, rate).map(|(v, _)| v.is_sign_negative() && !v.is_zero());
    let mut low = Decimal::new(-9999, 4);
    let mut high = Decimal::ONE;
    let low_negative = sign(low)?;
    while sign(high)? == low_negative {
        high *= Decimal::TEN;
        if high > Decimal::from(1_000_000) {
            return None;
        }
    }
    // Newton's steps inside the bracket, bisection when a step leaves it.
    let mut rate = Decimal::new(1, 1).clamp(low, high);
    let tolerance = Decimal::new(1, 12);
    for _ in 0..200 {
        let (value, slope) = npv(flows, rate)?;
        if value.is_zero() {
            break;
        }
        if (value.is_sign_negative()) == low_negative {
            low = rate;
        } else {
            high = rate;
        }
        let newton = (!slope.is_zero()).then(|| rate - value / slope).filter(|next| *next > low && *next < high);
        let next = newton.unwrap_or((low + high) / Decimal::TWO);
        let step = (next - rate).abs();
        rate = next.round_dp(WORKING);
        if step < tolerance {
            break;
        }
    }
    Some(rate.round_dp(PLACES))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    #[test]
    fn daily_linking_takes_a_deposit_out_of_the_performance() {
        // 100 → 110 (+10%); 50 deposited at the start of day 2, 165 at its end:
        // 165 / 160 = +3.125%. 1.1 × 1.03125 − 1 = 0.134375.
        let days = [Day { value: 110, flow: 0 }, Day { value: 165, flow: 50 }];
        assert_eq!(time_weighted(100, &days), Some(dec("0.134375")));
    }

    #[test]
    fn a_portfolio_that_only_received_money_has_no_return() {
        let days = [Day { value: 100, flow: 100 }, Day { value: 100, flow: 0 }];
        assert_eq!(time_weighted(0, &days), Some(Decimal::ZERO));
        assert_eq!(time_weighted(0, &[Day { value: 0, flow: 0 }]), None);
    }

    #[test]
    fn a_day_with_nothing_invested_is_skipped() {
        // Everything withdrawn on day 1, then 100 deposited and grown to 120.
        let days = [Day { value: 0, flow: -100 }, Day { value: 120, flow: 100 }];
        assert_eq!(time_weighted(100, &days), Some(dec("0.2")));
    }

    #[test]
    fn xirr_of_one_year_at_ten_percent() {
        let flows = [Flow { day: 0, amount: -1000 }, Flow { day: 365, amount: 1100 }];
        assert_eq!(money_weighted(&flows), Some(dec("0.1")));
    }

    #[test]
    fn xirr_weighs_money_by_the_time_it_was_invested() {
        // 1000 in at day 0, 1000 more at day 182 (half a year by 365), 2200
        // out at day 365: (1 + r) + (1 + r)^(183/365) = 2.2, r ≈ 0.1346 (a
        // simple return on the average capital, 200 / 1500, is 0.133).
        let flows = [Flow { day: 0, amount: -1000 }, Flow { day: 182, amount: -1000 }, Flow { day: 365, amount: 2200 }];
        let r = money_weighted(&flows).unwrap();
        let check = Decimal::ONE + r + (Decimal::ONE + r).powd(dec("183") / dec("365"));
        assert!((check - dec("2.2")).abs() < dec("0.000001"), "{r}: {check}");
        assert!(r > dec("0.134") && r < dec("0.135"), "{r}");
    }

    #[test]
    fn xirr_of_a_loss_is_negative_and_needs_money_both_ways() {
        let flows = [Flow { day: 0, amount: -1000 }, Flow { day: 730, amount: 810 }];
        // (1 + r)^2 = 0.81
        assert_eq!(money_weighted(&flows), Some(dec("-0.1")));
        assert_eq!(money_weighted(&[Flow { day: 0, amount: -5 }, Flow { day: 1, amount: -5 }]), None);
    }

    #[test]
    fn the_investor_s_flows_are_the_start_each_flow_and_the_end() {
        let days = [Day { value: 110, flow: 0 }, Day { value: 165, flow: 50 }];
        assert_eq!(
            investor_flows(100, &days),
            [Flow { day: 0, amount: -100 }, Flow { day: 2, amount: -50 }, Flow { day: 2, amount: 165 }]
        );
    }
}

//! Tax lots: what a portfolio's activities in one instrument leave open,
//! what each sale took from which lot, and at what cost.
//!
//! Pure: [`replay`] takes the activities of one holding in order (date, then
//! the order they were recorded) and returns every lot and disposal. The
//! service stores the result in the same transaction as the activity that
//! changed it, so a backdated buy or a deleted sale is reflected exactly as
//! if the activities had been recorded in date order.
//!
//! - An acquisition (buy, transfer in) opens a lot at its cost: quantity ×
//!   unit price plus fee, in the instrument's currency, and the same in the
//!   portfolio's base currency at the FX rate of its date.
//! - A disposal (sell, transfer out) takes its quantity from the oldest open
//!   lots first. Its cost is, by the portfolio's [`CostMethod`], **fifo**:
//!   each lot's own cost for the part taken (`open cost × taken / open`);
//!   **average**: the holding's average cost (`open cost of all lots × sold /
//!   held`), after which the remaining cost is spread over the open lots by
//!   quantity, so every open share carries the average. A sale's proceeds
//!   (net of its fee) are shared over its disposals by quantity; its
//!   realised gain is proceeds less cost. Shares of money are rounded half
//!   away from zero to a minor unit, and the last part takes the remainder,
//!   so the parts always sum to the whole.
//! - A split `to:from` multiplies every lot's quantity by `to / from`
//!   (rounded to 8 decimals, half to even; an open lot is never rounded
//!   away) and keeps its cost: the cost per share falls accordingly.
//! - Disposing of more than is open is refused, naming the activity.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::decimal::{QUANTITY_DECIMALS, round_quantity, share};

/// How a sale's cost is measured: a per-portfolio choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CostMethod {
    /// First in, first out: the oldest lots' own cost.
    Fifo,
    /// The holding's average cost per unit.
    Average,
}

impl CostMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            CostMethod::Fifo => "fifo",
            CostMethod::Average => "average",
        }
    }

    pub fn from_db(text: &str) -> anyhow::Result<CostMethod> {
        match text {
            "fifo" => Ok(CostMethod::Fifo),
            "average" => Ok(CostMethod::Average),
            other => anyhow::bail!("unknown cost method {other:?}"),
        }
    }
}

/// Money in the instrument's currency and in the portfolio's base currency,
/// in minor units of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Money2 {
    pub local: i64,
    pub base: i64,
}

impl Money2 {
    fn minus(self, other: Money2) -> Money2 {
        Money2 { local: self.local - other.local, base: self.base - other.base }
    }

    fn share(self, part: Decimal, whole: Decimal) -> Money2 {
        // Shares of amounts within ±10^15 minor units never overflow.
        Money2 {
            local: share(self.local, part, whole).unwrap_or(self.local),
            base: share(self.base, part, whole).unwrap_or(self.base),
        }
    }
}

/// What one activity does to a holding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Acquire {
        quantity: Decimal,
        cost: Money2,
    },
    /// `proceeds` is `None` for a transfer out: nothing was sold.
    Dispose {
        quantity: Decimal,
        proceeds: Option<Money2>,
    },
    Split {
        to: u32,
        from: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    pub id: Uuid,
    pub step: Step,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lot {
    /// The acquisition that opened it.
    pub activity_id: Uuid,
    /// Split-adjusted.
    pub quantity: Decimal,
    pub open_quantity: Decimal,
    pub cost: Money2,
    pub open_cost: Money2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disposal {
    /// The sale or transfer out.
    pub activity_id: Uuid,
    pub lot_activity_id: Uuid,
    pub position: i16,
    pub quantity: Decimal,
    pub cost: Money2,
    pub proceeds: Option<Money2>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Holding {
    pub lots: Vec<Lot>,
    pub disposals: Vec<Disposal>,
}

impl Holding {
    pub fn open_quantity(&self) -> Decimal {
        self.lots.iter().map(|l| l.open_quantity).sum()
    }
}

/// Why the activities cannot stand in this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LotError {
    /// `activity` disposes of `wanted` when only `held` is open.
    Oversold { activity: Uuid, held: Decimal, wanted: Decimal },
    /// `activity` (a split) makes a lot larger than [`MAX_QUANTITY`].
    TooLarge { activity: Uuid },
}

/// The largest open quantity a split may leave: well inside `NUMERIC(38, 8)`
/// and `Decimal`'s 28 digits.
pub fn max_quantity() -> Decimal {
    Decimal::from(10u64.pow(18))
}

/// The lots and disposals of one holding's activities, in order.
pub fn replay(method: CostMethod, activities: &[Activity]) -> Result<Holding, LotError> {
    let mut holding = Holding::default();
    for activity in activities {
        match activity.step {
            Step::Acquire { quantity, cost } => holding.lots.push(Lot {
                activity_id: activity.id,
                quantity,
                open_quantity: quantity,
                cost,
                open_cost: cost,
            }),
            Step::Dispose { quantity, proceeds } => dispose(&mut holding, method, activity.id, quantity, proceeds)?,
            Step::Split { to, from } => split(&mut holding, activity.id, to, from)?,
        }
    }
    Ok(holding)
}

fn dispose(
    holding: &mut Holding,
    method: CostMethod,
    id: Uuid,
    wanted: Decimal,
    proceeds: Option<Money2>,
) -> Result<(), LotError> {
    let held = holding.open_quantity();
    if wanted > held {
        return Err(LotError::Oversold { activity: id, held, wanted });
    }
    let pool: Money2 = holding.lots.iter().fold(Money2::default(), |sum, lot| Money2 {
        local: sum.local + lot.open_cost.local,
        base: sum.base + lot.open_cost.base,
    });
    // The average method's cost of the whole sale, shared over its lots below.
    let average_cost = if wanted == held { pool } else { pool.share(wanted, held) };
    let mut remaining = wanted;
    let mut taken: Vec<(usize, Decimal, Money2)> = Vec::new();
    for (index, lot) in holding.lots.iter_mut().enumerate() {
        if remaining.is_zero() {
            break;
        }
        if lot.open_quantity.is_zero() {
            continue;
        }
        let take = remaining.min(lot.open_quantity);
        let cost = if take == lot.open_quantity { lot.open_cost } else { lot.open_cost.share(take, lot.open_quantity) };
        lot.open_quantity -= take;
        lot.open_cost = lot.open_cost.minus(cost);
        remaining -= take;
        taken.push((index, take, cost));
    }
    if method == CostMethod::Average {
        // Every part of the sale at the average; the open lots keep the rest
        // of the pool, spread by quantity.
        let count = taken.len();
        let mut left = average_cost;
        for (i, part) in taken.iter_mut().enumerate() {
            let cost = if i + 1 == count { left } else { average_cost.share(part.1, wanted) };
            part.2 = cost;
            left = left.minus(cost);
        }
        reapportion(holding, pool.minus(average_cost));
    }
    let mut proceeds_left = proceeds;
    let count = taken.len();
    for (position, (index, quantity, cost)) in taken.into_iter().enumerate() {
        let part = match (proceeds, proceeds_left) {
            (Some(total), Some(left)) => {
                let part = if position + 1 == count { left } else { total.share(quantity, wanted) };
                proceeds_left = Some(left.minus(part));
                Some(part)
            }
            _ => None,
        };
        holding.disposals.push(Disposal {
            activity_id: id,
            lot_activity_id: holding.lots[index].activity_id,
            position: i16::try_from(position).unwrap_or(i16::MAX),
            quantity,
            cost,
            proceeds: part,
        });
    }
    Ok(())
}

/// Spreads `cost` over the open lots by open quantity; closed lots keep none.
fn reapportion(holding: &mut Holding, cost: Money2) {
    let open: Decimal = holding.open_quantity();
    let open_lots: Vec<usize> =
        holding.lots.iter().enumerate().filter(|(_, l)| !l.open_quantity.is_zero()).map(|(i, _)| i).collect();
    let mut left = cost;
    for (n, &i) in open_lots.iter().enumerate() {
        let lot = &mut holding.lots[i];
        let part = if n + 1 == open_lots.len() { left } else { cost.share(lot.open_quantity, open) };
        lot.open_cost = part;
        left = left.minus(part);
    }
    for lot in holding.lots.iter_mut().filter(|l| l.open_quantity.is_zero()) {
        lot.open_cost = Money2::default();
    }
}

fn split(holding: &mut Holding, id: Uuid, to: u32, from: u32) -> Result<(), LotError> {
    let (to, from) = (Decimal::from(to), Decimal::from(from));
    let scale = |q: Decimal| q.checked_mul(to).and_then(|q| q.checked_div(from)).map(round_quantity);
    let smallest = Decimal::new(1, QUANTITY_DECIMALS);
    for lot in &mut holding.lots {
        let quantity = scale(lot.quantity).ok_or(LotError::TooLarge { activity: id })?;
        let open = scale(lot.open_quantity).ok_or(LotError::TooLarge { activity: id })?;
        if open > max_quantity() {
            return Err(LotError::TooLarge { activity: id });
        }
        lot.quantity = quantity.max(smallest);
        lot.open_quantity = if lot.open_quantity.is_zero() { open } else { open.max(smallest) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn buy(n: u128, quantity: &str, local: i64, base: i64) -> Activity {
        Activity { id: id(n), step: Step::Acquire { quantity: dec(quantity), cost: Money2 { local, base } } }
    }

    fn sell(n: u128, quantity: &str, local: i64, base: i64) -> Activity {
        Activity { id: id(n), step: Step::Dispose { quantity: dec(quantity), proceeds: Some(Money2 { local, base }) } }
    }

    fn gain(holding: &Holding, sale: u128) -> Money2 {
        holding.disposals.iter().filter(|d| d.activity_id == id(sale)).fold(Money2::default(), |sum, d| {
            let p = d.proceeds.unwrap();
            Money2 { local: sum.local + p.local - d.cost.local, base: sum.base + p.base - d.cost.base }
        })
    }

    #[test]
    fn fifo_takes_the_oldest_lots_first_over_partial_sales() {
        // 10 @ 100.00, then 10 @ 120.00; sell 5 @ 130.00, then 10 @ 140.00.
        let holding = replay(
            CostMethod::Fifo,
            &[
                buy(1, "10", 100_000, 100_000),
                buy(2, "10", 120_000, 120_000),
                sell(3, "5", 65_000, 65_000),
                sell(4, "10", 140_000, 140_000),
            ],
        )
        .unwrap();
        // First sale: 5 of lot 1 at 100.00 each: gain 5 × 30.00.
        assert_eq!(gain(&holding, 3).local, 15_000);
        // Second: the other 5 of lot 1 (cost 500.00) and 5 of lot 2 (600.00): 1400 − 1100.
        assert_eq!(gain(&holding, 4).local, 30_000);
        let second: Vec<_> = holding.disposals.iter().filter(|d| d.activity_id == id(4)).collect();
        assert_eq!(second.len(), 2);
        assert_eq!((second[0].lot_activity_id, second[0].quantity), (id(1), dec("5")));
        assert_eq!((second[1].lot_activity_id, second[1].quantity), (id(2), dec("5")));
        assert_eq!(second[0].proceeds.unwrap().local + second[1].proceeds.unwrap().local, 140_000);
        // What is left: 5 of lot 2, at its own cost.
        assert_eq!(holding.open_quantity(), dec("5"));
        assert_eq!(holding.lots[1].open_cost.local, 60_000);
        assert_eq!(holding.lots[0].open_cost.local, 0);
    }

    #[test]
    fn average_cost_sells_at_the_holding_s_average() {
        // 10 @ 1.00 and 10 @ 3.00: average 2.00. Sell 10 @ 2.50.
        let holding = replay(
            CostMethod::Average,
            &[buy(1, "10", 1_000, 1_000), buy(2, "10", 3_000, 3_000), sell(3, "10", 2_500, 2_500)],
        )
        .unwrap();
        assert_eq!(gain(&holding, 3).local, 500);
        // The 10 left carry the rest of the pool: 20.00, still 2.00 each.
        assert_eq!(holding.lots.iter().map(|l| l.open_cost.local).sum::<i64>(), 2_000);
        assert!(holding.lots.iter().all(|l| l.open_cost.local >= 0));
    }

    #[test]
    fn shares_of_money_always_sum_to_the_whole() {
        // Three lots of 1; sell 3 for 10.00: 3.33 + 3.33 + 3.34.
        let holding = replay(
            CostMethod::Fifo,
            &[buy(1, "1", 100, 100), buy(2, "1", 100, 100), buy(3, "1", 100, 100), sell(4, "3", 1_000, 1_001)],
        )
        .unwrap();
        let proceeds: Vec<i64> = holding.disposals.iter().map(|d| d.proceeds.unwrap().local).collect();
        assert_eq!(proceeds, [333, 333, 334]);
        assert_eq!(holding.disposals.iter().map(|d| d.proceeds.unwrap().base).sum::<i64>(), 1_001);
    }

    #[test]
    fn a_split_adjusts_every_open_lot_and_keeps_its_cost() {
        let holding = replay(
            CostMethod::Fifo,
            &[
                buy(1, "10", 100_000, 90_000),
                buy(2, "5", 60_000, 54_000),
                sell(3, "4", 48_000, 44_000),
                Activity { id: id(4), step: Step::Split { to: 3, from: 1 } },
                sell(5, "18", 80_000, 72_000),
            ],
        )
        .unwrap();
        // After the split: lot 1 has (10 − 4) × 3 = 18 open, lot 2 15.
        assert_eq!(holding.lots[0].quantity, dec("30"));
        assert_eq!(holding.lots[1].open_quantity, dec("15"));
        // Selling the 18 takes exactly lot 1's open cost: 6 × 100.00.
        assert_eq!(holding.disposals.last().unwrap().cost.local, 60_000);
        assert_eq!(gain(&holding, 5).local, 20_000);
        assert_eq!(holding.lots[1].open_cost, Money2 { local: 60_000, base: 54_000 });
    }

    #[test]
    fn a_reverse_split_rounds_to_eight_decimals() {
        let holding = replay(
            CostMethod::Fifo,
            &[buy(1, "1", 100, 100), Activity { id: id(2), step: Step::Split { to: 1, from: 3 } }],
        )
        .unwrap();
        assert_eq!(holding.lots[0].open_quantity, dec("0.33333333"));
    }

    #[test]
    fn selling_more_than_is_held_is_refused_naming_the_sale() {
        let err = replay(CostMethod::Fifo, &[buy(1, "2", 100, 100), sell(2, "1", 60, 60), sell(3, "1.5", 90, 90)])
            .unwrap_err();
        assert_eq!(err, LotError::Oversold { activity: id(3), held: dec("1"), wanted: dec("1.5") });
    }

    #[test]
    fn a_transfer_out_takes_lots_without_a_gain() {
        let holding = replay(
            CostMethod::Fifo,
            &[
                buy(1, "4", 400, 400),
                Activity { id: id(2), step: Step::Dispose { quantity: dec("1"), proceeds: None } },
            ],
        )
        .unwrap();
        assert_eq!(holding.disposals[0].proceeds, None);
        assert_eq!(holding.disposals[0].cost.local, 100);
        assert_eq!(holding.open_quantity(), dec("3"));
    }
}

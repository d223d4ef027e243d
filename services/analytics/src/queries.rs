//! The analytics views: one `pub async fn` per view, each reading the daily
//! aggregates of the projections (never the transactions one by one), for
//! one user and a validated [`Range`].
//!
//! The HTTP handlers (`routes`) and the report jobs (`reports`) both call
//! these, so a report says exactly what the API says. Every answer is per
//! currency: amounts of different currencies are never added together or
//! converted.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::Context;
use chrono::{Datelike, Days, Months, NaiveDate};
use freedumb_kit::date::IsoDate;
use freedumb_kit::money::Currency;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::money::{self, Money};
use crate::projections::transactions::UNCATEGORISED;
use crate::range::Range;
use freedumb_kit::period::Period;
use freedumb_kit::schedule::{Frequency, Schedule};

// ---------------------------------------------------------------- spending by category

/// Spending per category over a range, per currency.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CategorySpending {
    pub from: IsoDate,
    pub to: IsoDate,
    pub currencies: Vec<CurrencyCategories>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CurrencyCategories {
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    pub currency: String,
    /// Every category's spending together, uncategorised included.
    pub total: Money,
    /// Top-level categories (and the uncategorised row), largest total first.
    pub categories: Vec<CategoryTotal>,
}

/// A top-level category with its subcategories rolled up into it. Spending
/// is money out minus money in (refunds), transfers left out; a category
/// that mostly receives money (salary) comes out negative.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CategoryTotal {
    /// Null for the uncategorised row.
    pub category_id: Option<Uuid>,
    /// Null for the uncategorised row, and for a category whose
    /// `category.created` has not arrived yet.
    pub name: Option<String>,
    /// Spent on the category itself.
    pub amount: Money,
    /// `amount` plus every child's.
    pub total: Money,
    /// Largest first.
    pub children: Vec<CategoryAmount>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CategoryAmount {
    pub category_id: Uuid,
    pub name: Option<String>,
    pub amount: Money,
}

pub async fn spending_by_category(
    conn: &mut PgConnection,
    user_id: Uuid,
    range: Range,
) -> anyhow::Result<CategorySpending> {
    let rows = category_sums(conn, user_id, range).await?;
    let categories = Categories::load(conn, user_id).await?;
    let mut currencies = Vec::new();
    for (code, sums) in rows {
        let currency = money::currency(&code)?;
        let tops = categories.roll_up(&sums);
        let total = tops.iter().map(|t| t.total).sum();
        let categories = tops.into_iter().map(|t| t.into_total(currency, &categories)).collect();
        currencies.push(CurrencyCategories { currency: code, total: Money::new(currency, total), categories });
    }
    Ok(CategorySpending { from: range.from(), to: range.to(), currencies })
}

// ---------------------------------------------------------------- spending by payee

/// The most a payee list holds.
pub const MAX_PAYEES: u32 = 100;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PayeeSpending {
    pub from: IsoDate,
    pub to: IsoDate,
    pub currencies: Vec<CurrencyPayees>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CurrencyPayees {
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    pub currency: String,
    /// Largest spending first, at most `limit`.
    pub payees: Vec<PayeeTotal>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PayeeTotal {
    /// As last written on one of its transactions; payees that differ only
    /// in case or spacing are one. Null for transactions without a payee.
    pub payee: Option<String>,
    /// Money out minus money in, transfers left out.
    pub amount: Money,
    pub transactions: i64,
}

pub async fn spending_by_payee(
    conn: &mut PgConnection,
    user_id: Uuid,
    range: Range,
    limit: u32,
) -> anyhow::Result<PayeeSpending> {
    // Whole months from `monthly_payees`, the days before the first and
    // after the last whole month from `daily_payees`.
    let parts = MonthParts::of(range);
    let rows: Vec<(String, Option<String>, i64, i64)> = sqlx::query_as(
        "SELECT currency, (array_agg(payee ORDER BY day DESC) FILTER (WHERE payee IS NOT NULL))[1],
                (-SUM(amount_minor))::int8, SUM(transactions)::int8
         FROM (SELECT currency, payee_key, payee, day, amount_minor, transactions FROM analytics.daily_payees
               WHERE user_id = $1 AND (day BETWEEN $2 AND $3 OR day BETWEEN $4 AND $5)
               UNION ALL
               SELECT currency, payee_key, payee, month, amount_minor, transactions FROM analytics.monthly_payees
               WHERE user_id = $1 AND month BETWEEN $6 AND $7) AS payees
         GROUP BY currency, payee_key HAVING SUM(transactions) > 0
         ORDER BY currency, 3 DESC, 2",
    )
    .bind(user_id)
    .bind(parts.head.map(|(from, _)| from))
    .bind(parts.head.map(|(_, to)| to))
    .bind(parts.tail.map(|(from, _)| from))
    .bind(parts.tail.map(|(_, to)| to))
    .bind(parts.months.map(|(from, _)| from))
    .bind(parts.months.map(|(_, to)| to))
    .fetch_all(conn)
    .await
    .context("failed to sum spending per payee")?;
    let mut currencies: Vec<CurrencyPayees> = Vec::new();
    for (code, payee, spent, transactions) in rows {
        let currency = money::currency(&code)?;
        if currencies.last().is_none_or(|c| c.currency != code) {
            currencies.push(CurrencyPayees { currency: code, payees: Vec::new() });
        }
        let payees = &mut currencies.last_mut().expect("pushed above").payees;
        if payees.len() < limit as usize {
            payees.push(PayeeTotal { payee, amount: Money::new(currency, spent), transactions });
        }
    }
    Ok(PayeeSpending { from: range.from(), to: range.to(), currencies })
}

/// A range cut into the days before its first whole month (`head`), its
/// whole months (`months`, as their first days) and the days after them
/// (`tail`), each inclusive, `None` when empty (bound as NULL, which
/// `BETWEEN` matches nowhere).
#[derive(Debug, PartialEq, Eq)]
struct MonthParts {
    head: Option<(NaiveDate, NaiveDate)>,
    months: Option<(NaiveDate, NaiveDate)>,
    tail: Option<(NaiveDate, NaiveDate)>,
}

impl MonthParts {
    fn of(range: Range) -> MonthParts {
        let (from, to) = (range.from().get(), range.to().get());
        let first_of = |d: NaiveDate| d.with_day(1).unwrap_or(d);
        let next_month = |d: NaiveDate| first_of(d).checked_add_months(Months::new(1));
        // December 9999 has no next month; its last day is the last date.
        let last_of = |d: NaiveDate| next_month(d).and_then(|n| n.pred_opt()).unwrap_or(IsoDate::MAX.get());
        let first = if from.day() == 1 { Some(from) } else { next_month(from) };
        let last_end = if to == last_of(to) { Some(to) } else { first_of(to).pred_opt() };
        match (first, last_end) {
            (Some(first), Some(last_end)) if first <= last_end => MonthParts {
                head: (from < first).then(|| (from, first.pred_opt().unwrap_or(from))),
                months: Some((first, first_of(last_end))),
                tail: (last_end < to).then(|| (last_end.succ_opt().unwrap_or(to), to)),
            },
            _ => MonthParts { head: Some((from, to)), months: None, tail: None },
        }
    }
}

// ---------------------------------------------------------------- income against expense

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IncomeExpense {
    pub from: IsoDate,
    pub to: IsoDate,
    pub currencies: Vec<CurrencyIncomeExpense>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CurrencyIncomeExpense {
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    pub currency: String,
    pub income: Money,
    pub expense: Money,
    pub net: Money,
    /// Every calendar month the range touches, in order, zeros included.
    pub months: Vec<MonthIncomeExpense>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MonthIncomeExpense {
    /// `YYYY-MM`.
    #[schema(example = "2026-03", pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])$")]
    pub month: String,
    /// Money in, transfers left out.
    pub income: Money,
    /// Money out as a positive amount, transfers left out.
    pub expense: Money,
    /// `income - expense`.
    pub net: Money,
}

pub async fn income_expense(conn: &mut PgConnection, user_id: Uuid, range: Range) -> anyhow::Result<IncomeExpense> {
    let rows: Vec<(String, NaiveDate, i64, i64)> = sqlx::query_as(
        "SELECT currency, date_trunc('month', day)::date, SUM(income_minor)::int8, SUM(expense_minor)::int8
         FROM analytics.daily_totals WHERE user_id = $1 AND day BETWEEN $2 AND $3
         GROUP BY 1, 2 HAVING SUM(transactions) > 0 ORDER BY 1, 2",
    )
    .bind(user_id)
    .bind(range.from().get())
    .bind(range.to().get())
    .fetch_all(conn)
    .await
    .context("failed to sum income and expense per month")?;
    let mut by_currency: BTreeMap<String, BTreeMap<NaiveDate, (i64, i64)>> = BTreeMap::new();
    for (code, month, income, expense) in rows {
        by_currency.entry(code).or_default().insert(month, (income, expense));
    }
    let months = months_of(range);
    let mut currencies = Vec::new();
    for (code, sums) in by_currency {
        let currency = money::currency(&code)?;
        let m = |minor| Money::new(currency, minor);
        let (income, expense) = sums.values().fold((0, 0), |(i, e), (mi, me)| (i + mi, e + me));
        let months = months
            .iter()
            .map(|month| {
                let (income, expense) = sums.get(month).copied().unwrap_or_default();
                MonthIncomeExpense {
                    month: month.format("%Y-%m").to_string(),
                    income: m(income),
                    expense: m(expense),
                    net: m(income - expense),
                }
            })
            .collect();
        currencies.push(CurrencyIncomeExpense {
            currency: code,
            income: m(income),
            expense: m(expense),
            net: m(income - expense),
            months,
        });
    }
    Ok(IncomeExpense { from: range.from(), to: range.to(), currencies })
}

// ---------------------------------------------------------------- cash flow

/// The length of a cash-flow period: a day, an ISO week (Monday first) or
/// a calendar month. The first and last periods are cut to the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Interval {
    Day,
    Week,
    #[default]
    Month,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CashFlow {
    pub from: IsoDate,
    pub to: IsoDate,
    pub interval: Interval,
    pub currencies: Vec<CurrencyCashFlow>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CurrencyCashFlow {
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    pub currency: String,
    /// The balance of the user's accounts in this currency at the end of
    /// the day before `from`: opening balances plus every transaction dated
    /// earlier.
    pub opening_balance: Money,
    pub periods: Vec<CashFlowPeriod>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CashFlowPeriod {
    pub start: IsoDate,
    /// Inclusive.
    pub end: IsoDate,
    /// Money in, transfers left out.
    pub inflow: Money,
    /// Money out as a positive amount, transfers left out.
    pub outflow: Money,
    /// Transfers in minus transfers out: zero between accounts of one
    /// currency, not between currencies.
    pub transfers: Money,
    /// `inflow - outflow + transfers`: the change of the balance.
    pub net: Money,
    /// The balance at the end of `end`.
    pub closing_balance: Money,
}

pub async fn cash_flow(
    conn: &mut PgConnection,
    user_id: Uuid,
    range: Range,
    interval: Interval,
) -> anyhow::Result<CashFlow> {
    let opening = balances_before(conn, user_id, range.from().get()).await?;
    let days = daily_totals(conn, user_id, range).await?;
    let periods = periods_of(range, interval);
    let mut currencies = Vec::new();
    for (code, opening) in opening {
        let currency = money::currency(&code)?;
        let m = |minor| Money::new(currency, minor);
        let days = days.get(&code);
        let mut balance = opening;
        let mut out = Vec::with_capacity(periods.len());
        for &(start, end) in &periods {
            let mut sum = DayTotals::default();
            if let Some(days) = days {
                for (_, day) in days.range(start.get()..=end.get()) {
                    sum.add(day);
                }
            }
            let net = sum.income - sum.expense + sum.transfers;
            balance += net;
            out.push(CashFlowPeriod {
                start,
                end,
                inflow: m(sum.income),
                outflow: m(sum.expense),
                transfers: m(sum.transfers),
                net: m(net),
                closing_balance: m(balance),
            });
        }
        currencies.push(CurrencyCashFlow { currency: code, opening_balance: m(opening), periods: out });
    }
    Ok(CashFlow { from: range.from(), to: range.to(), interval, currencies })
}

// ---------------------------------------------------------------- net worth

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NetWorth {
    pub from: IsoDate,
    pub to: IsoDate,
    pub currencies: Vec<CurrencyNetWorth>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CurrencyNetWorth {
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    pub currency: String,
    /// Every day of the range, in order.
    pub days: Vec<NetWorthDay>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NetWorthDay {
    pub date: IsoDate,
    /// Opening balances plus every transaction dated up to this day.
    pub accounts: Money,
    /// Each portfolio (with this base currency) at its latest valuation on
    /// or before this day; cash held in portfolios is not in it.
    pub investments: Money,
    /// `accounts + investments`.
    pub total: Money,
}

pub async fn net_worth(conn: &mut PgConnection, user_id: Uuid, range: Range) -> anyhow::Result<NetWorth> {
    let opening = balances_before(conn, user_id, range.from().get()).await?;
    let days = daily_totals(conn, user_id, range).await?;
    let valuations = Valuations::load(conn, user_id, range).await?;
    let mut codes: BTreeSet<String> = opening.keys().cloned().collect();
    codes.extend(valuations.currencies());
    let mut currencies = Vec::new();
    for code in codes {
        let currency = money::currency(&code)?;
        let m = |minor| Money::new(currency, minor);
        let empty = BTreeMap::new();
        let days = days.get(&code).unwrap_or(&empty);
        let mut accounts = opening.get(&code).copied().unwrap_or(0);
        let mut investments = valuations.walk(code.as_str());
        let mut out = Vec::with_capacity(usize::try_from(range.days()).unwrap_or(0));
        for date in range.each_day() {
            if let Some(day) = days.get(&date) {
                accounts += day.income - day.expense + day.transfers;
            }
            let invested = investments.on(date);
            out.push(NetWorthDay {
                date: IsoDate::new(date).unwrap_or(IsoDate::MAX),
                accounts: m(accounts),
                investments: m(invested),
                total: m(accounts + invested),
            });
        }
        drop(investments);
        currencies.push(CurrencyNetWorth { currency: code, days: out });
    }
    Ok(NetWorth { from: range.from(), to: range.to(), currencies })
}

// ---------------------------------------------------------------- budgets against actual

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BudgetsActual {
    pub from: IsoDate,
    pub to: IsoDate,
    pub budgets: Vec<BudgetActual>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BudgetActual {
    pub budget_id: Uuid,
    pub category_id: Uuid,
    pub category_name: Option<String>,
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    pub currency: String,
    pub period: Period,
    pub rollover: bool,
    /// Every period of the budget that overlaps the range (and starts on or
    /// after the budget's first), in order.
    pub periods: Vec<BudgetPeriodActual>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BudgetPeriodActual {
    pub start: IsoDate,
    /// Inclusive; the whole period, even where it passes the range's end.
    pub end: IsoDate,
    /// The budget's amount plus, with rollover, what the earlier periods
    /// left over (or minus what they overspent).
    pub budgeted: Money,
    /// Spent on the category and its subcategories in the period: money
    /// out minus refunds, in the budget's currency.
    pub actual: Money,
    /// `budgeted - actual`.
    pub remaining: Money,
}

pub async fn budgets(conn: &mut PgConnection, user_id: Uuid, range: Range) -> anyhow::Result<BudgetsActual> {
    type BudgetRow = (Uuid, Uuid, String, i64, Period, bool, NaiveDate);
    let rows: Vec<BudgetRow> = sqlx::query_as(
        "SELECT budget_id, category_id, currency, amount_minor, period, rollover, starts_on
         FROM analytics.budgets WHERE user_id = $1 AND NOT deleted AND starts_on <= $2 ORDER BY starts_on, budget_id",
    )
    .bind(user_id)
    .bind(range.to().get())
    .fetch_all(&mut *conn)
    .await
    .context("failed to load budgets")?;
    let categories = Categories::load(conn, user_id).await?;
    let mut budgets = Vec::with_capacity(rows.len());
    for (budget_id, category_id, code, amount, period, rollover, starts_on) in rows {
        let currency = money::currency(&code)?;
        let m = |minor| Money::new(currency, minor);
        let first = period.start_of(stored_date(starts_on));
        let mut start = period.start_of(range.from()).max(first);
        // The periods shown, and what each spent on the category (and its
        // children, and what was merged into either).
        let mut shown = Vec::new();
        while start <= range.to() {
            shown.push((start, period.next(start)));
            match IsoDate::new(period.next(start)) {
                Some(next) => start = next,
                None => break,
            }
        }
        let Some(&(window_start, _)) = shown.first() else { continue };
        let window_end = shown.last().map_or(window_start.get(), |&(_, end)| end);
        let spent_rows: Vec<(Uuid, NaiveDate, i64)> = sqlx::query_as(
            "SELECT category_id, day, amount_minor FROM analytics.daily_categories
             WHERE user_id = $1 AND currency = $2 AND day >= $3 AND day < $4 AND category_id <> $5",
        )
        .bind(user_id)
        .bind(&code)
        .bind(window_start.get())
        .bind(window_end)
        .bind(UNCATEGORISED)
        .fetch_all(&mut *conn)
        .await
        .context("failed to load a budget's spending")?;
        let counts = |category: Uuid| categories.counts_towards(category, category_id);
        let mut carried = 0;
        if rollover && window_start > first {
            let before: Vec<(Uuid, i64)> = sqlx::query_as(
                "SELECT category_id, SUM(amount_minor)::int8 FROM analytics.daily_categories
                 WHERE user_id = $1 AND currency = $2 AND day >= $3 AND day < $4 AND category_id <> $5
                 GROUP BY category_id",
            )
            .bind(user_id)
            .bind(&code)
            .bind(first.get())
            .bind(window_start.get())
            .bind(UNCATEGORISED)
            .fetch_all(&mut *conn)
            .await
            .context("failed to sum a budget's earlier spending")?;
            let spent_before: i64 = -before.iter().filter(|(c, _)| counts(*c)).map(|(_, a)| a).sum::<i64>();
            carried = amount.saturating_mul(period.count_between(first, window_start)).saturating_sub(spent_before);
        }
        let mut periods = Vec::with_capacity(shown.len());
        for (start, next) in shown {
            let actual: i64 = -spent_rows
                .iter()
                .filter(|(c, day, _)| *day >= start.get() && *day < next && counts(*c))
                .map(|(_, _, a)| a)
                .sum::<i64>();
            let budgeted = amount.saturating_add(carried);
            if rollover {
                carried = budgeted.saturating_sub(actual);
            }
            periods.push(BudgetPeriodActual {
                start,
                end: period.last_day(start),
                budgeted: m(budgeted),
                actual: m(actual),
                remaining: m(budgeted.saturating_sub(actual)),
            });
        }
        budgets.push(BudgetActual {
            budget_id,
            category_id,
            category_name: categories.name(category_id),
            currency: code,
            period,
            rollover,
            periods,
        });
    }
    Ok(BudgetsActual { from: range.from(), to: range.to(), budgets })
}

// ---------------------------------------------------------------- summary

/// How many categories a summary names per currency.
pub const TOP_CATEGORIES: usize = 5;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Summary {
    pub from: IsoDate,
    pub to: IsoDate,
    /// The range of equal length just before; null when it would start
    /// before 1900-01-01 (then every `previous` is zero).
    pub previous_from: Option<IsoDate>,
    pub previous_to: Option<IsoDate>,
    /// Income, expense and net in the range, per currency.
    pub current: Vec<RangeTotals>,
    /// The same for the previous range (empty when there is none).
    pub previous: Vec<RangeTotals>,
    /// The changes from the previous range, per currency.
    pub currencies: Vec<CurrencySummary>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RangeTotals {
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    pub currency: String,
    /// Money in, transfers left out.
    pub income: Money,
    /// Money out as a positive amount, transfers left out.
    pub expense: Money,
    /// `income - expense`.
    pub net: Money,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CurrencySummary {
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    pub currency: String,
    pub income: Change,
    pub expense: Change,
    pub net: Change,
    /// The top-level categories spent on most in the range (subcategories
    /// rolled up), at most five, each against the previous range.
    pub top_categories: Vec<CategoryChange>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Change {
    pub current: Money,
    pub previous: Money,
    /// `current - previous`.
    pub change: Money,
    /// `change / |previous|` in percent, rounded half away from zero to two
    /// decimals; null when `previous` is zero.
    #[schema(example = "-12.50", pattern = r"^-?[0-9]+\.[0-9]{2}$")]
    pub percent: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CategoryChange {
    /// Null for uncategorised spending.
    pub category_id: Option<Uuid>,
    pub name: Option<String>,
    pub amount: Change,
}

pub async fn summary(conn: &mut PgConnection, user_id: Uuid, range: Range) -> anyhow::Result<Summary> {
    let previous = range.previous();
    let current_totals = totals(conn, user_id, Some(range)).await?;
    let previous_totals = totals(conn, user_id, previous).await?;
    let categories = Categories::load(conn, user_id).await?;
    let current_spending = category_sums(conn, user_id, range).await?;
    let previous_spending = match previous {
        Some(previous) => category_sums(conn, user_id, previous).await?,
        None => BTreeMap::new(),
    };
    let mut codes: BTreeSet<&String> = current_totals.keys().collect();
    codes.extend(previous_totals.keys());
    codes.extend(current_spending.keys());
    let range_totals = |totals: &HashMap<String, (i64, i64)>| -> anyhow::Result<Vec<RangeTotals>> {
        let mut out: Vec<RangeTotals> = Vec::with_capacity(totals.len());
        for (code, &(income, expense)) in totals {
            let currency = money::currency(code)?;
            let m = |minor| Money::new(currency, minor);
            out.push(RangeTotals {
                currency: code.clone(),
                income: m(income),
                expense: m(expense),
                net: m(income - expense),
            });
        }
        out.sort_by(|a, b| a.currency.cmp(&b.currency));
        Ok(out)
    };
    let current = range_totals(&current_totals)?;
    let previous_range_totals = range_totals(&previous_totals)?;
    let mut currencies = Vec::new();
    for code in codes {
        let currency = money::currency(code)?;
        let (income, expense) = current_totals.get(code).copied().unwrap_or_default();
        let (previous_income, previous_expense) = previous_totals.get(code).copied().unwrap_or_default();
        let now = current_spending.get(code).map(|sums| categories.roll_up(sums)).unwrap_or_default();
        let before = previous_spending.get(code).map(|sums| categories.roll_up(sums)).unwrap_or_default();
        let top_categories = now
            .iter()
            .filter(|top| top.total > 0)
            .take(TOP_CATEGORIES)
            .map(|top| {
                let previous = before.iter().find(|b| b.category_id == top.category_id).map_or(0, |b| b.total);
                CategoryChange {
                    category_id: top.category_id,
                    name: top.category_id.and_then(|id| categories.name(id)),
                    amount: Change::new(currency, top.total, previous),
                }
            })
            .collect();
        currencies.push(CurrencySummary {
            currency: code.clone(),
            income: Change::new(currency, income, previous_income),
            expense: Change::new(currency, expense, previous_expense),
            net: Change::new(currency, income - expense, previous_income - previous_expense),
            top_categories,
        });
    }
    Ok(Summary {
        from: range.from(),
        to: range.to(),
        previous_from: previous.map(Range::from),
        previous_to: previous.map(Range::to),
        current,
        previous: previous_range_totals,
        currencies,
    })
}

// ---------------------------------------------------------------- projected balances

/// The longest projection, in days.
pub const MAX_PROJECTION_DAYS: u16 = 365;

/// Named `BalanceProjection` in the document: budgets' goals have a
/// `Projection` of their own.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = BalanceProjection)]
pub struct Projection {
    /// Today (UTC): the balances start from the end of it.
    pub today: IsoDate,
    /// The last day projected.
    pub to: IsoDate,
    pub currencies: Vec<CurrencyProjection>,
    /// Every occurrence of the active recurring rules from tomorrow to
    /// `to`, by date.
    pub occurrences: Vec<Occurrence>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CurrencyProjection {
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    pub currency: String,
    /// Opening balances plus every transaction dated today or earlier.
    pub balance_today: Money,
    /// Each day from tomorrow to `to`: the balance at its end.
    pub days: Vec<ProjectedDay>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProjectedDay {
    pub date: IsoDate,
    pub balance: Money,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Occurrence {
    pub date: IsoDate,
    pub rule_id: Uuid,
    pub account_id: Uuid,
    #[schema(value_type = freedumb_kit::openapi::CurrencyCode)]
    pub currency: String,
    /// Signed: negative leaves the account.
    pub amount: Money,
    pub payee: Option<String>,
    pub category_id: Option<Uuid>,
}

/// `days` (1 to [`MAX_PROJECTION_DAYS`], checked by the caller) after `today`.
pub async fn projection(
    conn: &mut PgConnection,
    user_id: Uuid,
    today: IsoDate,
    days: u16,
) -> anyhow::Result<Projection> {
    let to = today.checked_add_days(u64::from(days)).unwrap_or(IsoDate::MAX);
    let tomorrow = today.get().succ_opt().unwrap_or(today.get());
    let balances = balances_before(conn, user_id, tomorrow).await?;
    type RuleRow = (
        Uuid,
        Uuid,
        String,
        i64,
        Option<String>,
        Option<Uuid>,
        Frequency,
        i32,
        NaiveDate,
        i32,
        Option<NaiveDate>,
        Option<i32>,
        i32,
    );
    let rules: Vec<RuleRow> = sqlx::query_as(
        "SELECT rule_id, account_id, currency, amount_minor, payee, category_id, frequency, \"interval\", start_date,
                day_of_month, end_date, max_occurrences, occurrences_created
         FROM analytics.recurring_rules
         WHERE user_id = $1 AND NOT deleted AND active AND next_occurrence IS NOT NULL AND next_occurrence <= $2",
    )
    .bind(user_id)
    .bind(to.get())
    .fetch_all(&mut *conn)
    .await
    .context("failed to load recurring rules")?;
    let mut occurrences = Vec::new();
    for (rule_id, account_id, code, amount, payee, category_id, frequency, interval, start, day, end, max, created) in
        rules
    {
        let currency = money::currency(&code)?;
        let schedule = Schedule {
            frequency,
            interval: u32::try_from(interval).unwrap_or(1).max(1),
            start,
            day_of_month: u32::try_from(day).unwrap_or(1),
            end,
            max_occurrences: max.and_then(|m| u32::try_from(m).ok()),
        };
        // Occurrence `occurrences_created` is the next one the worker makes;
        // the bound keeps a daily rule over a year at 366 steps and any
        // rule finite.
        let first = u32::try_from(created).unwrap_or(0);
        for n in first..first.saturating_add(MAX_STEPS) {
            let Some(date) = schedule.occurrence(n) else { break };
            if date > to.get() {
                break;
            }
            if date < tomorrow {
                continue;
            }
            occurrences.push(Occurrence {
                date: IsoDate::new(date).unwrap_or(IsoDate::MAX),
                rule_id,
                account_id,
                currency: code.clone(),
                amount: Money::new(currency, amount),
                payee: payee.clone(),
                category_id,
            });
        }
    }
    occurrences.sort_by(|a, b| (a.date, &a.currency, a.rule_id).cmp(&(b.date, &b.currency, b.rule_id)));
    let mut codes: BTreeSet<String> = balances.keys().cloned().collect();
    codes.extend(occurrences.iter().map(|o| o.currency.clone()));
    let mut currencies = Vec::new();
    for code in codes {
        let currency = money::currency(&code)?;
        let balance_today = balances.get(&code).copied().unwrap_or(0);
        let mut balance = balance_today;
        let mut out = Vec::new();
        let mut pending = occurrences.iter().filter(|o| o.currency == code).peekable();
        let mut date = tomorrow;
        while date <= to.get() {
            while let Some(o) = pending.next_if(|o| o.date.get() == date) {
                balance += o.amount.minor();
            }
            out.push(ProjectedDay {
                date: IsoDate::new(date).unwrap_or(IsoDate::MAX),
                balance: Money::new(currency, balance),
            });
            let Some(next) = date.succ_opt() else { break };
            date = next;
        }
        currencies.push(CurrencyProjection {
            currency: code,
            balance_today: Money::new(currency, balance_today),
            days: out,
        });
    }
    Ok(Projection { today, to, currencies, occurrences })
}

// ---------------------------------------------------------------- shared reading

/// The most occurrences of one rule a projection steps through.
const MAX_STEPS: u32 = 10_000;

/// A date read back from this schema: every one came from an event as an
/// `IsoDate`, so this never clamps in practice.
fn stored_date(date: NaiveDate) -> IsoDate {
    IsoDate::new(date).unwrap_or(if date < IsoDate::MIN.get() { IsoDate::MIN } else { IsoDate::MAX })
}

/// Per currency, each category's net allocation amount in the range
/// (signed: spending is negative), the nil id for uncategorised.
async fn category_sums(
    conn: &mut PgConnection,
    user_id: Uuid,
    range: Range,
) -> anyhow::Result<BTreeMap<String, Vec<(Uuid, i64)>>> {
    let rows: Vec<(String, Uuid, i64)> = sqlx::query_as(
        "SELECT currency, category_id, SUM(amount_minor)::int8 FROM analytics.daily_categories
         WHERE user_id = $1 AND day BETWEEN $2 AND $3 GROUP BY currency, category_id",
    )
    .bind(user_id)
    .bind(range.from().get())
    .bind(range.to().get())
    .fetch_all(conn)
    .await
    .context("failed to sum spending per category")?;
    let mut sums: BTreeMap<String, Vec<(Uuid, i64)>> = BTreeMap::new();
    for (currency, category, amount) in rows {
        sums.entry(currency).or_default().push((category, amount));
    }
    Ok(sums)
}

struct CategoryRow {
    name: Option<String>,
    parent_id: Option<Uuid>,
    removed: bool,
    merged_into: Option<Uuid>,
}

/// A user's categories as the projection knows them, to report spending
/// under each category's current place: a merged category's spending under
/// the category it was merged into, a deleted one's as uncategorised, a
/// subcategory's rolled up into its parent.
struct Categories(HashMap<Uuid, CategoryRow>);

/// A top-level category's spending (positive is money out).
#[derive(Debug, Default, Clone)]
struct Top {
    category_id: Option<Uuid>,
    own: i64,
    total: i64,
    children: BTreeMap<Uuid, i64>,
}

impl Categories {
    async fn load(conn: &mut PgConnection, user_id: Uuid) -> anyhow::Result<Categories> {
        type Row = (Uuid, Option<String>, Option<Uuid>, bool, Option<Uuid>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT category_id, name, parent_id, removed, merged_into FROM analytics.categories WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_all(conn)
        .await
        .context("failed to load categories")?;
        Ok(Categories(
            rows.into_iter()
                .map(|(id, name, parent_id, removed, merged_into)| {
                    (id, CategoryRow { name, parent_id, removed, merged_into })
                })
                .collect(),
        ))
    }

    /// Where a category's spending belongs now: itself, what it was merged
    /// into (followed to the end), or `None` (uncategorised) once deleted.
    /// A category not known yet stands for itself.
    fn resolve(&self, id: Uuid) -> Option<Uuid> {
        let mut current = id;
        // Merges cannot form a cycle in the ledger; the bound keeps a
        // broken projection from looping.
        for _ in 0..16 {
            if current == UNCATEGORISED {
                return None;
            }
            match self.0.get(&current) {
                Some(row) if row.removed => current = row.merged_into?,
                _ => return Some(current),
            }
        }
        Some(current)
    }

    /// The top-level category a (resolved) category rolls up into.
    fn top(&self, id: Uuid) -> Uuid {
        self.0
            .get(&id)
            .and_then(|row| row.parent_id)
            .and_then(|parent| self.resolve(parent))
            .filter(|parent| *parent != id)
            .unwrap_or(id)
    }

    fn name(&self, id: Uuid) -> Option<String> {
        self.0.get(&id).and_then(|row| row.name.clone())
    }

    /// Whether spending recorded under `category` counts towards a budget
    /// on `budgeted`: the category itself and its children, as they are now.
    fn counts_towards(&self, category: Uuid, budgeted: Uuid) -> bool {
        self.resolve(category).is_some_and(|resolved| resolved == budgeted || self.top(resolved) == budgeted)
    }

    /// Net allocation amounts per category into top-level rows, largest
    /// spending first; rows that come to nothing are left out.
    fn roll_up(&self, sums: &[(Uuid, i64)]) -> Vec<Top> {
        let mut tops: BTreeMap<Option<Uuid>, Top> = BTreeMap::new();
        for &(category, amount) in sums {
            let spent = -amount;
            match self.resolve(category) {
                None => tops.entry(None).or_default().own += spent,
                Some(resolved) => {
                    let top = self.top(resolved);
                    let row = tops.entry(Some(top)).or_insert_with(|| Top { category_id: Some(top), ..Top::default() });
                    if top == resolved {
                        row.own += spent;
                    } else {
                        *row.children.entry(resolved).or_default() += spent;
                    }
                }
            }
        }
        let mut tops: Vec<Top> = tops
            .into_values()
            .map(|mut top| {
                top.children.retain(|_, amount| *amount != 0);
                top.total = top.own + top.children.values().sum::<i64>();
                top
            })
            .filter(|top| top.own != 0 || !top.children.is_empty())
            .collect();
        tops.sort_by(|a, b| b.total.cmp(&a.total).then(a.category_id.cmp(&b.category_id)));
        tops
    }
}

impl Top {
    fn into_total(self, currency: Currency, categories: &Categories) -> CategoryTotal {
        let mut children: Vec<CategoryAmount> = self
            .children
            .into_iter()
            .map(|(id, amount)| CategoryAmount {
                category_id: id,
                name: categories.name(id),
                amount: Money::new(currency, amount),
            })
            .collect();
        children.sort_by(|a, b| b.amount.minor().cmp(&a.amount.minor()).then(a.category_id.cmp(&b.category_id)));
        CategoryTotal {
            category_id: self.category_id,
            name: self.category_id.and_then(|id| categories.name(id)),
            amount: Money::new(currency, self.own),
            total: Money::new(currency, self.total),
            children,
        }
    }
}

/// The first day of every calendar month the range touches.
fn months_of(range: Range) -> Vec<NaiveDate> {
    let mut month = range.from().get().with_day(1).unwrap_or(range.from().get());
    let mut months = Vec::new();
    while month <= range.to().get() {
        months.push(month);
        match month.checked_add_months(Months::new(1)) {
            Some(next) => month = next,
            None => break,
        }
    }
    months
}

/// The periods of a cash flow: `interval`s cut to the range, each `(start,
/// end)` inclusive.
fn periods_of(range: Range, interval: Interval) -> Vec<(IsoDate, IsoDate)> {
    let mut periods = Vec::new();
    let mut start = range.from().get();
    while start <= range.to().get() {
        let next = match interval {
            Interval::Day => start.succ_opt(),
            Interval::Week => start.checked_add_days(Days::new(u64::from(7 - start.weekday().num_days_from_monday()))),
            Interval::Month => start.with_day(1).and_then(|first| first.checked_add_months(Months::new(1))),
        };
        let end = next.and_then(|n| n.pred_opt()).map_or(range.to().get(), |end| end.min(range.to().get()));
        periods.push((stored_date(start), stored_date(end)));
        match next {
            Some(next) => start = next,
            None => break,
        }
    }
    periods
}

/// Per currency, the user's accounts' balance at the end of the day
/// before `before`: opening balances plus every transaction dated earlier.
/// Every currency of an account is there, with or without transactions.
async fn balances_before(
    conn: &mut PgConnection,
    user_id: Uuid,
    before: NaiveDate,
) -> anyhow::Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT currency, SUM(amount)::int8 FROM (
             SELECT currency, opening_balance_minor AS amount FROM analytics.accounts WHERE user_id = $1
             UNION ALL
             SELECT currency, SUM(income_minor - expense_minor + transfers_in_minor - transfers_out_minor)
             FROM analytics.daily_totals WHERE user_id = $1 AND day < $2 GROUP BY currency
         ) balances GROUP BY currency",
    )
    .bind(user_id)
    .bind(before)
    .fetch_all(conn)
    .await
    .context("failed to sum balances")?;
    Ok(rows.into_iter().collect())
}

#[derive(Debug, Default, Clone, Copy)]
struct DayTotals {
    income: i64,
    expense: i64,
    /// In minus out.
    transfers: i64,
}

impl DayTotals {
    fn add(&mut self, other: &DayTotals) {
        self.income += other.income;
        self.expense += other.expense;
        self.transfers += other.transfers;
    }
}

async fn daily_totals(
    conn: &mut PgConnection,
    user_id: Uuid,
    range: Range,
) -> anyhow::Result<HashMap<String, BTreeMap<NaiveDate, DayTotals>>> {
    let rows: Vec<(String, NaiveDate, i64, i64, i64)> = sqlx::query_as(
        "SELECT currency, day, income_minor, expense_minor, transfers_in_minor - transfers_out_minor
         FROM analytics.daily_totals WHERE user_id = $1 AND day BETWEEN $2 AND $3",
    )
    .bind(user_id)
    .bind(range.from().get())
    .bind(range.to().get())
    .fetch_all(conn)
    .await
    .context("failed to read the daily totals")?;
    let mut days: HashMap<String, BTreeMap<NaiveDate, DayTotals>> = HashMap::new();
    for (currency, day, income, expense, transfers) in rows {
        days.entry(currency).or_default().insert(day, DayTotals { income, expense, transfers });
    }
    Ok(days)
}

/// Income and expense per currency over a range (none for `None`).
async fn totals(
    conn: &mut PgConnection,
    user_id: Uuid,
    range: Option<Range>,
) -> anyhow::Result<HashMap<String, (i64, i64)>> {
    let Some(range) = range else { return Ok(HashMap::new()) };
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT currency, SUM(income_minor)::int8, SUM(expense_minor)::int8 FROM analytics.daily_totals
         WHERE user_id = $1 AND day BETWEEN $2 AND $3 GROUP BY currency HAVING SUM(transactions) > 0",
    )
    .bind(user_id)
    .bind(range.from().get())
    .bind(range.to().get())
    .fetch_all(conn)
    .await
    .context("failed to sum income and expense")?;
    Ok(rows.into_iter().map(|(currency, income, expense)| (currency, (income, expense))).collect())
}

/// The valuations a net-worth history needs: each portfolio's latest
/// before the range, and every one in it.
struct Valuations {
    /// `(day, portfolio, currency, market value)`, by day; those before the
    /// range first.
    rows: Vec<(NaiveDate, Uuid, String, i64)>,
}

impl Valuations {
    async fn load(conn: &mut PgConnection, user_id: Uuid, range: Range) -> anyhow::Result<Valuations> {
        let rows = sqlx::query_as(
            "(SELECT DISTINCT ON (portfolio_id) day, portfolio_id, currency, market_value_minor
              FROM analytics.valuations WHERE user_id = $1 AND day < $2 ORDER BY portfolio_id, day DESC)
             UNION ALL
             (SELECT day, portfolio_id, currency, market_value_minor
              FROM analytics.valuations WHERE user_id = $1 AND day BETWEEN $2 AND $3)
             ORDER BY 1, 2",
        )
        .bind(user_id)
        .bind(range.from().get())
        .bind(range.to().get())
        .fetch_all(conn)
        .await
        .context("failed to read valuations")?;
        Ok(Valuations { rows })
    }

    fn currencies(&self) -> impl Iterator<Item = String> + '_ {
        self.rows.iter().map(|(_, _, currency, _)| currency.clone())
    }

    fn walk<'a>(&'a self, currency: &'a str) -> ValuationWalk<'a> {
        ValuationWalk {
            rows: (Box::new(self.rows.iter().filter(move |(_, _, c, _)| c == currency)) as Box<dyn Iterator<Item = _>>)
                .peekable(),
            latest: HashMap::new(),
        }
    }
}

type ValuationRow = (NaiveDate, Uuid, String, i64);

/// Steps through the days in order, keeping each portfolio's latest value.
struct ValuationWalk<'a> {
    rows: std::iter::Peekable<Box<dyn Iterator<Item = &'a ValuationRow> + 'a>>,
    latest: HashMap<Uuid, i64>,
}

impl ValuationWalk<'_> {
    /// The investments' value on `date` (called with ascending dates).
    fn on(&mut self, date: NaiveDate) -> i64 {
        while let Some((_, portfolio, _, value)) = self.rows.next_if(|(day, ..)| *day <= date) {
            self.latest.insert(*portfolio, *value);
        }
        self.latest.values().sum()
    }
}

impl Change {
    fn new(currency: Currency, current: i64, previous: i64) -> Change {
        let change = current - previous;
        Change {
            current: Money::new(currency, current),
            previous: Money::new(currency, previous),
            change: Money::new(currency, change),
            percent: percent(change, previous),
        }
    }
}

/// `change / |previous|` in percent with two decimals, rounded half away
/// from zero, in integers: `None` when `previous` is zero.
fn percent(change: i64, previous: i64) -> Option<String> {
    if previous == 0 {
        return None;
    }
    let numerator = i128::from(change) * 10_000;
    let denominator = i128::from(previous).abs();
    let mut hundredths = numerator / denominator;
    if (numerator % denominator).abs() * 2 >= denominator {
        hundredths += numerator.signum();
    }
    let sign = if hundredths < 0 { "-" } else { "" };
    let abs = hundredths.abs();
    Some(format!("{sign}{}.{:02}", abs / 100, abs % 100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_changes_are_exact_to_the_hundredth() {
        assert_eq!(percent(50, 200).as_deref(), Some("25.00"));
        assert_eq!(percent(-100, 300).as_deref(), Some("-33.33"));
        assert_eq!(percent(200, 300).as_deref(), Some("66.67"));
        assert_eq!(percent(1, 200_000).as_deref(), Some("0.00"));
        assert_eq!(percent(-1, 200_000).as_deref(), Some("0.00"));
        assert_eq!(percent(100, -100).as_deref(), Some("100.00"));
        assert_eq!(percent(5, 0), None);
    }

    fn d(s: &str) -> IsoDate {
        IsoDate::parse(s).unwrap()
    }

    #[test]
    fn a_range_is_cut_into_its_whole_months_and_the_days_at_its_ends() {
        let parts = |from: &str, to: &str| MonthParts::of(Range::new(d(from), d(to)).unwrap());
        let days = |a: &str, b: &str| Some((d(a).get(), d(b).get()));
        // A year from the 3rd: the partial months at both ends are days.
        assert_eq!(
            parts("2025-12-03", "2026-12-02"),
            MonthParts {
                head: days("2025-12-03", "2025-12-31"),
                months: days("2026-01-01", "2026-11-01"),
                tail: days("2026-12-01", "2026-12-02"),
            }
        );
        // Whole months only.
        assert_eq!(
            parts("2026-01-01", "2026-02-28"),
            MonthParts { head: None, months: days("2026-01-01", "2026-02-01"), tail: None }
        );
        // Inside one month, or across two without a whole one: all days.
        for (from, to) in [("2026-03-04", "2026-03-17"), ("2026-01-15", "2026-02-14"), ("2026-05-09", "2026-05-09")] {
            assert_eq!(parts(from, to), MonthParts { head: days(from, to), months: None, tail: None });
        }
        // The last month there is.
        assert_eq!(
            parts("9999-11-15", "9999-12-31"),
            MonthParts { head: days("9999-11-15", "9999-11-30"), months: days("9999-12-01", "9999-12-01"), tail: None }
        );
    }

    #[test]
    fn cash_flow_periods_are_cut_to_the_range() {
        let range = Range::new(d("2026-03-04"), d("2026-03-17")).unwrap();
        let weeks: Vec<_> = periods_of(range, Interval::Week).into_iter().map(|(s, e)| format!("{s}..{e}")).collect();
        assert_eq!(weeks, ["2026-03-04..2026-03-08", "2026-03-09..2026-03-15", "2026-03-16..2026-03-17"]);
        let months = periods_of(Range::new(d("2026-01-31"), d("2026-03-01")).unwrap(), Interval::Month);
        assert_eq!(months.len(), 3);
        assert_eq!(periods_of(range, Interval::Day).len(), 14);
    }

    #[test]
    fn merged_categories_report_under_their_new_home_and_children_roll_up() {
        let (food, groceries, old, gone) =
            (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3), Uuid::from_u128(4));
        let row = |name: &str, parent, removed, merged_into| CategoryRow {
            name: Some(name.to_owned()),
            parent_id: parent,
            removed,
            merged_into,
        };
        let categories = Categories(HashMap::from([
            (food, row("Food", None, false, None)),
            (groceries, row("Groceries", Some(food), false, None)),
            (old, row("Supermarket", None, true, Some(groceries))),
            (gone, row("Gone", None, true, None)),
        ]));
        let tops = categories.roll_up(&[(food, -100), (groceries, -250), (old, -50), (gone, -7), (UNCATEGORISED, -3)]);
        assert_eq!(tops.len(), 2);
        assert_eq!((tops[0].category_id, tops[0].own, tops[0].total), (Some(food), 100, 400));
        assert_eq!(tops[0].children.get(&groceries), Some(&300));
        assert_eq!((tops[1].category_id, tops[1].own), (None, 10));
        assert!(categories.counts_towards(old, food) && categories.counts_towards(groceries, groceries));
        assert!(!categories.counts_towards(food, groceries));
    }
}

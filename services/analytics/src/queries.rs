//! The analytics views: one `pub async fn` per view, each reading the daily
//! aggregates of the projections (never the transactions one by one), for
//! one user and a validated [`Range`].
//!
//! The HTTP handlers (`routes`) and the report jobs (`reports`) both call
//! these, so a report says exactly what the API says. Every answer is per
//! currency: amounts of different currencies are never added together or
//! converted.

use freedumb_kit::date::IsoDate;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::money::Money;
use crate::period::Period;
use crate::range::Range;

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
    let _ = (conn, user_id);
    Ok(CategorySpending { from: range.from(), to: range.to(), currencies: Vec::new() })
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
    let _ = (conn, user_id, limit);
    Ok(PayeeSpending { from: range.from(), to: range.to(), currencies: Vec::new() })
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
    let _ = (conn, user_id);
    Ok(IncomeExpense { from: range.from(), to: range.to(), currencies: Vec::new() })
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
    let _ = (conn, user_id);
    Ok(CashFlow { from: range.from(), to: range.to(), interval, currencies: Vec::new() })
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
    let _ = (conn, user_id);
    Ok(NetWorth { from: range.from(), to: range.to(), currencies: Vec::new() })
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
    let _ = (conn, user_id);
    Ok(BudgetsActual { from: range.from(), to: range.to(), budgets: Vec::new() })
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
    pub currencies: Vec<CurrencySummary>,
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
    let _ = (conn, user_id);
    let previous = range.previous();
    Ok(Summary {
        from: range.from(),
        to: range.to(),
        previous_from: previous.map(Range::from),
        previous_to: previous.map(Range::to),
        currencies: Vec::new(),
    })
}

// ---------------------------------------------------------------- projected balances

/// The longest projection, in days.
pub const MAX_PROJECTION_DAYS: u16 = 365;

#[derive(Debug, Clone, Serialize, ToSchema)]
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
    let _ = (conn, user_id);
    let to = today.checked_add_days(u64::from(days)).unwrap_or(IsoDate::MAX);
    Ok(Projection { today, to, currencies: Vec::new(), occurrences: Vec::new() })
}

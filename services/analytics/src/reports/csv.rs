//! Reports as CSV: a header row, then one row per item of the view, per
//! currency. Amounts are the views' exact decimal strings (`Money`'s
//! `Display`, the currency's minor unit), always next to a `currency`
//! column: nothing is converted or added across currencies. Quoting is the
//! `csv` crate's, RFC 4180: a field with a comma, a quote or a line break is
//! quoted and its quotes doubled; lines end in CRLF as the RFC has them.

use csv::{Terminator, WriterBuilder};

use crate::queries::{CashFlow, CategorySpending, IncomeExpense, NetWorth};

fn writer() -> csv::Writer<Vec<u8>> {
    WriterBuilder::new().terminator(Terminator::CRLF).from_writer(Vec::new())
}

fn finish(writer: csv::Writer<Vec<u8>>) -> anyhow::Result<Vec<u8>> {
    writer.into_inner().map_err(|err| anyhow::anyhow!("failed to finish a CSV report: {}", err.error()))
}

/// One row per top-level category and one per subcategory under it (its
/// parent named), largest first as the view orders them. `amount` is what
/// was spent on the category itself; `total` adds its subcategories, and is
/// empty on a subcategory's row. An empty `category_id` is the
/// uncategorised spending.
pub fn spending_by_category(view: &CategorySpending) -> anyhow::Result<Vec<u8>> {
    let mut out = writer();
    out.write_record([
        "currency",
        "category_id",
        "category",
        "parent_category_id",
        "parent_category",
        "amount",
        "total",
    ])?;
    for currency in &view.currencies {
        for category in &currency.categories {
            let id = category.category_id.map(|id| id.to_string()).unwrap_or_default();
            let name = category.name.clone().unwrap_or_default();
            out.write_record([
                currency.currency.as_str(),
                &id,
                &name,
                "",
                "",
                &category.amount.to_string(),
                &category.total.to_string(),
            ])?;
            for child in &category.children {
                out.write_record([
                    currency.currency.as_str(),
                    &child.category_id.to_string(),
                    child.name.as_deref().unwrap_or_default(),
                    &id,
                    &name,
                    &child.amount.to_string(),
                    "",
                ])?;
            }
        }
    }
    finish(out)
}

/// One row per currency and month.
pub fn income_expense(view: &IncomeExpense) -> anyhow::Result<Vec<u8>> {
    let mut out = writer();
    out.write_record(["currency", "month", "income", "expense", "net"])?;
    for currency in &view.currencies {
        for month in &currency.months {
            out.write_record([
                currency.currency.as_str(),
                &month.month,
                &month.income.to_string(),
                &month.expense.to_string(),
                &month.net.to_string(),
            ])?;
        }
    }
    finish(out)
}

/// One row per currency and period.
pub fn cash_flow(view: &CashFlow) -> anyhow::Result<Vec<u8>> {
    let mut out = writer();
    out.write_record(["currency", "start", "end", "inflow", "outflow", "transfers", "net", "closing_balance"])?;
    for currency in &view.currencies {
        for period in &currency.periods {
            out.write_record([
                currency.currency.as_str(),
                &period.start.to_string(),
                &period.end.to_string(),
                &period.inflow.to_string(),
                &period.outflow.to_string(),
                &period.transfers.to_string(),
                &period.net.to_string(),
                &period.closing_balance.to_string(),
            ])?;
        }
    }
    finish(out)
}

/// One row per currency and day.
pub fn net_worth(view: &NetWorth) -> anyhow::Result<Vec<u8>> {
    let mut out = writer();
    out.write_record(["currency", "date", "accounts", "investments", "total"])?;
    for currency in &view.currencies {
        for day in &currency.days {
            out.write_record([
                currency.currency.as_str(),
                &day.date.to_string(),
                &day.accounts.to_string(),
                &day.investments.to_string(),
                &day.total.to_string(),
            ])?;
        }
    }
    finish(out)
}

#[cfg(test)]
mod tests {
    use freedumb_kit::date::IsoDate;
    use freedumb_kit::money::Currency;
    use uuid::Uuid;

    use super::*;
    use crate::Money;
    use crate::queries::{CategoryAmount, CategoryTotal, CurrencyCategories};

    #[test]
    fn names_with_commas_and_quotes_are_quoted_and_amounts_stay_exact() {
        let eur = Currency::from_code("EUR").unwrap();
        let food = Uuid::nil();
        let view = CategorySpending {
            from: IsoDate::parse("2026-01-01").unwrap(),
            to: IsoDate::parse("2026-12-31").unwrap(),
            currencies: vec![CurrencyCategories {
                currency: "EUR".into(),
                total: Money::new(eur, 123_457),
                categories: vec![CategoryTotal {
                    category_id: Some(food),
                    name: Some("Food, \"fresh\"".into()),
                    amount: Money::new(eur, 100_000),
                    total: Money::new(eur, 123_456),
                    children: vec![CategoryAmount {
                        category_id: food,
                        name: Some("Line\nbreak".into()),
                        amount: Money::new(eur, 23_456),
                    }],
                }],
            }],
        };
        let text = String::from_utf8(spending_by_category(&view).unwrap()).unwrap();
        let id = food.to_string();
        assert_eq!(
            text,
            format!(
                "currency,category_id,category,parent_category_id,parent_category,amount,total\r\n\
                 EUR,{id},\"Food, \"\"fresh\"\"\",,,1000.00,1234.56\r\n\
                 EUR,{id},\"Line\nbreak\",{id},\"Food, \"\"fresh\"\"\",234.56,\r\n"
            )
        );
    }
}

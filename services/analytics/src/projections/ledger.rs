//! The ledger's other things: `account.*` and `recurring.*` (whole states)
//! and `category.*` (facts), into `analytics.accounts`,
//! `analytics.recurring_rules` and `analytics.categories`.

use anyhow::Context;
use freedumb_kit::date::IsoDate;
use freedumb_kit::events::{Event, EventHandler, HandleError};
use futures::future::BoxFuture;
use serde::Deserialize;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{currency, payload, tombstone};

#[derive(Debug, Deserialize)]
struct Account {
    account_id: Uuid,
    user_id: Uuid,
    name: String,
    kind: String,
    currency: String,
    opening_balance_minor: i64,
    archived: bool,
}

#[derive(Debug, Deserialize)]
struct CategoryCreated {
    category_id: Uuid,
    user_id: Uuid,
    name: String,
    parent_id: Option<Uuid>,
}

#[derive(Debug, Deserialize)]
struct CategoryRenamed {
    category_id: Uuid,
    user_id: Uuid,
    name: String,
}

#[derive(Debug, Deserialize)]
struct CategoryMerged {
    category_id: Uuid,
    user_id: Uuid,
    into_category_id: Uuid,
}

#[derive(Debug, Deserialize)]
struct CategoryDeleted {
    category_id: Uuid,
    user_id: Uuid,
}

#[derive(Debug, Deserialize)]
struct Rule {
    rule_id: Uuid,
    user_id: Uuid,
    account_id: Uuid,
    currency: String,
    amount_minor: i64,
    payee: Option<String>,
    category_id: Option<Uuid>,
    frequency: freedumb_kit::schedule::Frequency,
    interval: u32,
    start_date: IsoDate,
    day_of_month: u32,
    end_date: Option<IsoDate>,
    max_occurrences: Option<u32>,
    occurrences_created: u32,
    next_occurrence: Option<IsoDate>,
    active: bool,
}

#[derive(Debug, Deserialize)]
struct RuleDeleted {
    rule_id: Uuid,
    user_id: Uuid,
}

fn int(event: &Event, field: &str, value: u32) -> Result<i32, HandleError> {
    i32::try_from(value)
        .map_err(|_| HandleError::poison(anyhow::anyhow!("a {} event's {field} is out of range", event.kind)))
}

pub struct Ledger;

impl EventHandler for Ledger {
    fn handle<'a>(&'a self, conn: &'a mut PgConnection, event: &'a Event) -> BoxFuture<'a, Result<(), HandleError>> {
        Box::pin(async move {
            match event.kind.as_str() {
                "account.created" | "account.updated" | "account.archived" => account(conn, event).await,
                "category.created" | "category.renamed" | "category.merged" | "category.deleted" => {
                    category(conn, event).await
                }
                "recurring.created" | "recurring.updated" | "recurring.deleted" => rule(conn, event).await,
                _ => Ok(()),
            }
        })
    }
}

async fn account(conn: &mut PgConnection, event: &Event) -> Result<(), HandleError> {
    let a: Account = payload(event)?;
    currency(event, &a.currency)?;
    sqlx::query(
        "INSERT INTO analytics.accounts AS a
             (account_id, user_id, name, kind, currency, opening_balance_minor, archived, as_of)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (account_id) DO UPDATE SET
             name = EXCLUDED.name, kind = EXCLUDED.kind, currency = EXCLUDED.currency,
             opening_balance_minor = EXCLUDED.opening_balance_minor, archived = EXCLUDED.archived, as_of = EXCLUDED.as_of
         WHERE a.as_of < EXCLUDED.as_of AND a.user_id = EXCLUDED.user_id",
    )
    .bind(a.account_id)
    .bind(a.user_id)
    .bind(&a.name)
    .bind(&a.kind)
    .bind(&a.currency)
    .bind(a.opening_balance_minor)
    .bind(a.archived)
    .bind(event.occurred_at)
    .execute(conn)
    .await
    .context("failed to apply an account event")?;
    Ok(())
}

/// `created` and `renamed` set the name when newer than the name held;
/// `created` alone knows the parent. `merged` and `deleted` remove the
/// category for good: a late `created` fills in its name and parent but
/// never brings it back.
async fn category(conn: &mut PgConnection, event: &Event) -> Result<(), HandleError> {
    let query = match event.kind.as_str() {
        "category.created" => {
            let c: CategoryCreated = payload(event)?;
            sqlx::query(
                "INSERT INTO analytics.categories AS c (category_id, user_id, name, name_as_of, parent_id)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (category_id) DO UPDATE SET
                     parent_id = EXCLUDED.parent_id,
                     name = CASE WHEN c.name_as_of IS NULL OR c.name_as_of < EXCLUDED.name_as_of THEN EXCLUDED.name ELSE c.name END,
                     name_as_of = GREATEST(c.name_as_of, EXCLUDED.name_as_of)
                 WHERE c.user_id = EXCLUDED.user_id",
            )
            .bind(c.category_id)
            .bind(c.user_id)
            .bind(c.name)
            .bind(event.occurred_at)
            .bind(c.parent_id)
        }
        "category.renamed" => {
            let c: CategoryRenamed = payload(event)?;
            sqlx::query(
                "INSERT INTO analytics.categories AS c (category_id, user_id, name, name_as_of) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (category_id) DO UPDATE SET name = EXCLUDED.name, name_as_of = EXCLUDED.name_as_of
                 WHERE c.user_id = EXCLUDED.user_id AND (c.name_as_of IS NULL OR c.name_as_of < EXCLUDED.name_as_of)",
            )
            .bind(c.category_id)
            .bind(c.user_id)
            .bind(c.name)
            .bind(event.occurred_at)
        }
        "category.merged" => {
            let c: CategoryMerged = payload(event)?;
            sqlx::query(
                "INSERT INTO analytics.categories AS c (category_id, user_id, removed, merged_into) VALUES ($1, $2, true, $3)
                 ON CONFLICT (category_id) DO UPDATE SET removed = true, merged_into = EXCLUDED.merged_into
                 WHERE c.user_id = EXCLUDED.user_id",
            )
            .bind(c.category_id)
            .bind(c.user_id)
            .bind(c.into_category_id)
        }
        _ => {
            let c: CategoryDeleted = payload(event)?;
            sqlx::query(
                "INSERT INTO analytics.categories AS c (category_id, user_id, removed) VALUES ($1, $2, true)
                 ON CONFLICT (category_id) DO UPDATE SET removed = true WHERE c.user_id = EXCLUDED.user_id",
            )
            .bind(c.category_id)
            .bind(c.user_id)
        }
    };
    query.execute(conn).await.context("failed to apply a category event")?;
    Ok(())
}

async fn rule(conn: &mut PgConnection, event: &Event) -> Result<(), HandleError> {
    if event.kind == "recurring.deleted" {
        let d: RuleDeleted = payload(event)?;
        tombstone(conn, "recurring_rules", "rule_id", d.rule_id, d.user_id, event).await?;
        return Ok(());
    }
    let r: Rule = payload(event)?;
    currency(event, &r.currency)?;
    let (interval, day_of_month) = (int(event, "interval", r.interval)?, int(event, "day_of_month", r.day_of_month)?);
    let max_occurrences = r.max_occurrences.map(|m| int(event, "max_occurrences", m)).transpose()?;
    let created = int(event, "occurrences_created", r.occurrences_created)?;
    sqlx::query(
        "INSERT INTO analytics.recurring_rules AS r
             (rule_id, user_id, as_of, account_id, currency, amount_minor, payee, category_id, frequency, \"interval\",
              start_date, day_of_month, end_date, max_occurrences, occurrences_created, next_occurrence, active)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
         ON CONFLICT (rule_id) DO UPDATE SET
             as_of = EXCLUDED.as_of, account_id = EXCLUDED.account_id, currency = EXCLUDED.currency,
             amount_minor = EXCLUDED.amount_minor, payee = EXCLUDED.payee, category_id = EXCLUDED.category_id,
             frequency = EXCLUDED.frequency, \"interval\" = EXCLUDED.\"interval\", start_date = EXCLUDED.start_date,
             day_of_month = EXCLUDED.day_of_month, end_date = EXCLUDED.end_date,
             max_occurrences = EXCLUDED.max_occurrences, occurrences_created = EXCLUDED.occurrences_created,
             next_occurrence = EXCLUDED.next_occurrence, active = EXCLUDED.active
         WHERE NOT r.deleted AND r.as_of < EXCLUDED.as_of AND r.user_id = EXCLUDED.user_id",
    )
    .bind(r.rule_id)
    .bind(r.user_id)
    .bind(event.occurred_at)
    .bind(r.account_id)
    .bind(&r.currency)
    .bind(r.amount_minor)
    .bind(&r.payee)
    .bind(r.category_id)
    .bind(r.frequency)
    .bind(interval)
    .bind(r.start_date.get())
    .bind(day_of_month)
    .bind(r.end_date.map(IsoDate::get))
    .bind(max_occurrences)
    .bind(created)
    .bind(r.next_occurrence.map(IsoDate::get))
    .bind(r.active)
    .execute(conn)
    .await
    .context("failed to apply a recurring event")?;
    Ok(())
}

//! `transaction.*` into `analytics.transactions` (each transaction's last
//! state) and the daily aggregates the views read.
//!
//! A batch is applied set-wise: the batch's transactions' stored states are
//! loaded in one query, the events are applied to them in memory in order
//! of arrival, the difference between each transaction's old and new
//! contributions is summed per aggregate row in Rust, and each table gets
//! its deltas in one `INSERT ... SELECT FROM unnest(...) ON CONFLICT DO
//! UPDATE`. [`EventHandler::handle`] is the same code with a batch of one,
//! so handling events one by one and in batches cannot differ.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use freedumb_kit::date::IsoDate;
use freedumb_kit::events::{Event, EventHandler, HandleError};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{currency, payload};

pub const CREATED: &str = "transaction.created";
pub const UPDATED: &str = "transaction.updated";
pub const DELETED: &str = "transaction.deleted";

/// The payload of `transaction.created` and `.updated`, as far as analytics
/// needs it.
#[derive(Debug, Deserialize)]
struct Changed {
    transaction_id: Uuid,
    user_id: Uuid,
    account_id: Uuid,
    currency: String,
    amount_minor: i64,
    date: IsoDate,
    transfer_id: Option<Uuid>,
    /// Added to the payload by issue 13; absent in older events.
    #[serde(default)]
    payee: Option<String>,
    allocations: Vec<Allocation>,
}

#[derive(Debug, Deserialize)]
struct Deleted {
    transaction_id: Uuid,
    user_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Allocation {
    category_id: Option<Uuid>,
    amount_minor: i64,
}

/// A transaction's state as it counts towards the aggregates.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    account_id: Uuid,
    currency: String,
    amount_minor: i64,
    date: NaiveDate,
    transfer_id: Option<Uuid>,
    payee: Option<String>,
    allocations: Vec<Allocation>,
}

/// A row of `analytics.transactions`: `state` is `None` in a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    user_id: Uuid,
    as_of: DateTime<Utc>,
    state: Option<State>,
}

/// One event, read.
enum Change {
    Upsert { user_id: Uuid, transaction_id: Uuid, state: State },
    Delete { user_id: Uuid, transaction_id: Uuid },
}

impl Change {
    fn read(event: &Event) -> Result<Option<Change>, HandleError> {
        Ok(Some(match event.kind.as_str() {
            CREATED | UPDATED => {
                let c: Changed = payload(event)?;
                currency(event, &c.currency)?;
                Change::Upsert {
                    user_id: c.user_id,
                    transaction_id: c.transaction_id,
                    state: State {
                        account_id: c.account_id,
                        currency: c.currency,
                        amount_minor: c.amount_minor,
                        date: c.date.get(),
                        transfer_id: c.transfer_id,
                        payee: c.payee,
                        allocations: c.allocations,
                    },
                }
            }
            DELETED => {
                let d: Deleted = payload(event)?;
                Change::Delete { user_id: d.user_id, transaction_id: d.transaction_id }
            }
            // Kinds added later are not ours to fail on.
            _ => return Ok(None),
        }))
    }

    fn ids(&self) -> (Uuid, Uuid) {
        match self {
            Change::Upsert { user_id, transaction_id, .. } | Change::Delete { user_id, transaction_id } => {
                (*user_id, *transaction_id)
            }
        }
    }
}

/// The payee as the views group it: trimmed, inner white space collapsed,
/// lower-cased; `""` for none.
pub(crate) fn payee_key(payee: Option<&str>) -> String {
    payee.map(|p| p.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()).unwrap_or_default()
}

/// The nil UUID stands for "uncategorised" in `daily_categories`, whose key
/// cannot hold a null.
pub(crate) const UNCATEGORISED: Uuid = Uuid::nil();

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Totals {
    income: i64,
    expense: i64,
    transfers_in: i64,
    transfers_out: i64,
    transactions: i32,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct PayeeDelta {
    amount: i64,
    transactions: i32,
    /// The spelling of the newest state that has this key.
    display: Option<String>,
}

/// The sum of many contributions, per aggregate row. Ordered maps, so
/// every batch writes its rows in key order and two batches never wait on
/// each other's rows in opposite orders.
#[derive(Default)]
struct Deltas {
    totals: BTreeMap<(Uuid, String, NaiveDate), Totals>,
    categories: BTreeMap<(Uuid, String, NaiveDate, Uuid), i64>,
    payees: BTreeMap<(Uuid, String, NaiveDate, String), PayeeDelta>,
    accounts: BTreeMap<(Uuid, Uuid, NaiveDate), (String, i64)>,
}

impl Deltas {
    /// Adds (`sign` 1) or takes back (`sign` -1) what a state contributes.
    fn add(&mut self, user_id: Uuid, state: &State, sign: i64) {
        let amount = state.amount_minor * sign;
        let count = i32::try_from(sign).unwrap_or(0);
        let day = state.date;
        let totals = self.totals.entry((user_id, state.currency.clone(), day)).or_default();
        totals.transactions += count;
        let positive = state.amount_minor > 0;
        match (state.transfer_id.is_some(), positive) {
            (false, true) => totals.income += amount,
            (false, false) => totals.expense -= amount,
            (true, true) => totals.transfers_in += amount,
            (true, false) => totals.transfers_out -= amount,
        }
        let account = self.accounts.entry((user_id, state.account_id, day)).or_insert((state.currency.clone(), 0));
        account.1 += amount;
        // Transfers move money between one's own accounts: they are neither
        // spending nor a payee's.
        if state.transfer_id.is_some() {
            return;
        }
        for allocation in &state.allocations {
            let category = allocation.category_id.unwrap_or(UNCATEGORISED);
            *self.categories.entry((user_id, state.currency.clone(), day, category)).or_default() +=
                allocation.amount_minor * sign;
        }
        let payee =
            self.payees.entry((user_id, state.currency.clone(), day, payee_key(state.payee.as_deref()))).or_default();
        payee.amount += amount;
        payee.transactions += count;
        if sign > 0 {
            payee.display = state.payee.as_deref().map(|p| p.trim().to_owned());
        }
    }
}

pub struct Transactions;

impl EventHandler for Transactions {
    fn handle<'a>(&'a self, conn: &'a mut PgConnection, event: &'a Event) -> BoxFuture<'a, Result<(), HandleError>> {
        self.handle_batch(conn, std::slice::from_ref(event))
    }

    fn handle_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [Event],
    ) -> BoxFuture<'a, Result<(), HandleError>> {
        Box::pin(apply(conn, events))
    }
}

async fn apply(conn: &mut PgConnection, events: &[Event]) -> Result<(), HandleError> {
    let mut changes = Vec::with_capacity(events.len());
    for event in events {
        if let Some(change) = Change::read(event)? {
            changes.push((event.occurred_at, change));
        }
    }
    if changes.is_empty() {
        return Ok(());
    }
    let mut users: Vec<Uuid> = changes.iter().map(|(_, c)| c.ids().0).collect();
    users.sort_unstable();
    users.dedup();
    lock_users(conn, &users).await?;
    let ids: Vec<Uuid> = changes.iter().map(|(_, c)| c.ids().1).collect();
    let stored = load(conn, &ids).await?;

    // Each transaction's row before the batch and after it, in memory.
    let mut before: HashMap<Uuid, Option<Row>> = HashMap::new();
    let mut after: HashMap<Uuid, Row> = HashMap::new();
    for (occurred_at, change) in changes {
        let (user_id, id) = change.ids();
        let current = after.get(&id).cloned().or_else(|| stored.get(&id).cloned());
        before.entry(id).or_insert_with(|| stored.get(&id).cloned());
        if let Some(current) = &current {
            if current.user_id != user_id {
                return Err(HandleError::poison(anyhow::anyhow!(
                    "an event gives transaction {id} to another user than the one it belongs to"
                )));
            }
            // A tombstone is final (ids are never reused), and an event no
            // newer than the state applied is out of date.
            if current.state.is_none() || current.as_of >= occurred_at {
                continue;
            }
        }
        let state = match change {
            Change::Upsert { state, .. } => Some(state),
            Change::Delete { .. } => None,
        };
        after.insert(id, Row { user_id, as_of: occurred_at, state });
    }

    let mut deltas = Deltas::default();
    let mut rows: Vec<(Uuid, Row)> = Vec::new();
    for (id, row) in after {
        let old = before.remove(&id).flatten();
        if old.as_ref() == Some(&row) {
            continue;
        }
        if let Some(old_state) = old.as_ref().and_then(|o| o.state.as_ref()) {
            deltas.add(row.user_id, old_state, -1);
        }
        if let Some(new_state) = &row.state {
            deltas.add(row.user_id, new_state, 1);
        }
        rows.push((id, row));
    }
    rows.sort_unstable_by_key(|(id, _)| *id);
    save(conn, &rows).await?;
    write_deltas(conn, deltas).await?;
    Ok(())
}

/// Serialises the batches of one user (replicas of this consumer may take
/// batches of one queue at once): two batches that both saw a transaction
/// missing, or both loaded its old state, would otherwise count it twice.
/// Taken in id order, so batches never wait on each other in a cycle.
async fn lock_users(conn: &mut PgConnection, users: &[Uuid]) -> anyhow::Result<()> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtext('analytics.transactions'), hashtext(u::text))
         FROM unnest($1::uuid[]) WITH ORDINALITY AS t(u, n) ORDER BY n",
    )
    .bind(users)
    .execute(conn)
    .await
    .context("failed to lock the batch's users")?;
    Ok(())
}

type Stored = (
    Uuid,
    Uuid,
    DateTime<Utc>,
    bool,
    Option<Uuid>,
    Option<String>,
    Option<i64>,
    Option<NaiveDate>,
    Option<Uuid>,
    Option<String>,
    Option<String>,
);

async fn load(conn: &mut PgConnection, ids: &[Uuid]) -> anyhow::Result<HashMap<Uuid, Row>> {
    let stored: Vec<Stored> = sqlx::query_as(
        "SELECT transaction_id, user_id, as_of, deleted, account_id, currency, amount_minor, date, transfer_id, payee,
                allocations::text
         FROM analytics.transactions WHERE transaction_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
    .context("failed to load the batch's transactions")?;
    let mut rows = HashMap::with_capacity(stored.len());
    for (id, user_id, as_of, deleted, account_id, currency, amount, date, transfer_id, payee, allocations) in stored {
        let state = match (deleted, account_id, currency, amount, date, allocations) {
            (false, Some(account_id), Some(currency), Some(amount_minor), Some(date), Some(allocations)) => {
                Some(State {
                    account_id,
                    currency,
                    amount_minor,
                    date,
                    transfer_id,
                    payee,
                    allocations: serde_json::from_str(&allocations)
                        .with_context(|| format!("the stored allocations of transaction {id} are malformed"))?,
                })
            }
            _ => None,
        };
        rows.insert(id, Row { user_id, as_of, state });
    }
    Ok(rows)
}

async fn save(conn: &mut PgConnection, rows: &[(Uuid, Row)]) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let n = rows.len();
    let (mut ids, mut users, mut as_ofs, mut deleted) =
        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut accounts, mut currencies, mut amounts, mut dates, mut transfers, mut payees, mut allocations) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, row) in rows {
        ids.push(*id);
        users.push(row.user_id);
        as_ofs.push(row.as_of);
        deleted.push(row.state.is_none());
        let state = row.state.as_ref();
        accounts.push(state.map(|s| s.account_id));
        currencies.push(state.map(|s| s.currency.clone()));
        amounts.push(state.map(|s| s.amount_minor));
        dates.push(state.map(|s| s.date));
        transfers.push(state.and_then(|s| s.transfer_id));
        payees.push(state.and_then(|s| s.payee.clone()));
        allocations.push(state.map(|s| serde_json::to_string(&s.allocations)).transpose()?);
    }
    sqlx::query(
        "INSERT INTO analytics.transactions AS t
             (transaction_id, user_id, as_of, deleted, account_id, currency, amount_minor, date, transfer_id, payee, allocations)
         SELECT id, u, a, d, acc, cur, amt, day, tr, p, al::jsonb
         FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::bool[], $5::uuid[], $6::text[], $7::int8[],
                     $8::date[], $9::uuid[], $10::text[], $11::text[]) AS x(id, u, a, d, acc, cur, amt, day, tr, p, al)
         ON CONFLICT (transaction_id) DO UPDATE SET
             as_of = EXCLUDED.as_of, deleted = EXCLUDED.deleted, account_id = EXCLUDED.account_id,
             currency = EXCLUDED.currency, amount_minor = EXCLUDED.amount_minor, date = EXCLUDED.date,
             transfer_id = EXCLUDED.transfer_id, payee = EXCLUDED.payee, allocations = EXCLUDED.allocations",
    )
    .bind(ids)
    .bind(users)
    .bind(as_ofs)
    .bind(deleted)
    .bind(accounts)
    .bind(currencies)
    .bind(amounts)
    .bind(dates)
    .bind(transfers)
    .bind(payees)
    .bind(allocations)
    .execute(conn)
    .await
    .context("failed to save the batch's transactions")?;
    Ok(())
}

async fn write_deltas(conn: &mut PgConnection, deltas: Deltas) -> anyhow::Result<()> {
    let totals: Vec<_> = deltas.totals.into_iter().filter(|(_, t)| *t != Totals::default()).collect();
    if !totals.is_empty() {
        let mut cols = (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for ((user, currency, day), t) in totals {
            cols.0.push(user);
            cols.1.push(currency);
            cols.2.push(day);
            cols.3.push(t.income);
            cols.4.push(t.expense);
            cols.5.push(t.transfers_in);
            cols.6.push(t.transfers_out);
            cols.7.push(t.transactions);
        }
        sqlx::query(
            "INSERT INTO analytics.daily_totals AS d
                 (user_id, currency, day, income_minor, expense_minor, transfers_in_minor, transfers_out_minor, transactions)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::date[], $4::int8[], $5::int8[], $6::int8[], $7::int8[], $8::int4[])
             ON CONFLICT (user_id, currency, day) DO UPDATE SET
                 income_minor = d.income_minor + EXCLUDED.income_minor,
                 expense_minor = d.expense_minor + EXCLUDED.expense_minor,
                 transfers_in_minor = d.transfers_in_minor + EXCLUDED.transfers_in_minor,
                 transfers_out_minor = d.transfers_out_minor + EXCLUDED.transfers_out_minor,
                 transactions = d.transactions + EXCLUDED.transactions",
        )
        .bind(cols.0)
        .bind(cols.1)
        .bind(cols.2)
        .bind(cols.3)
        .bind(cols.4)
        .bind(cols.5)
        .bind(cols.6)
        .bind(cols.7)
        .execute(&mut *conn)
        .await
        .context("failed to update the daily totals")?;
    }

    let categories: Vec<_> = deltas.categories.into_iter().filter(|(_, amount)| *amount != 0).collect();
    if !categories.is_empty() {
        let mut cols = (vec![], vec![], vec![], vec![], vec![]);
        for ((user, currency, day, category), amount) in categories {
            cols.0.push(user);
            cols.1.push(currency);
            cols.2.push(day);
            cols.3.push(category);
            cols.4.push(amount);
        }
        sqlx::query(
            "INSERT INTO analytics.daily_categories AS d (user_id, currency, day, category_id, amount_minor)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::date[], $4::uuid[], $5::int8[])
             ON CONFLICT (user_id, currency, day, category_id) DO UPDATE SET amount_minor = d.amount_minor + EXCLUDED.amount_minor",
        )
        .bind(cols.0)
        .bind(cols.1)
        .bind(cols.2)
        .bind(cols.3)
        .bind(cols.4)
        .execute(&mut *conn)
        .await
        .context("failed to update the daily categories")?;
    }

    let payees: Vec<_> = deltas
        .payees
        .into_iter()
        .filter(|(_, p)| p.amount != 0 || p.transactions != 0 || p.display.is_some())
        .collect();
    // The same deltas by calendar month, so a view over a year reads twelve
    // months of payees instead of 365 days of them. The map runs in day
    // order, so the newest day's spelling is the month's.
    let mut monthly: BTreeMap<(Uuid, String, NaiveDate, String), PayeeDelta> = BTreeMap::new();
    for ((user, currency, day, key), p) in &payees {
        let month = day.with_day(1).unwrap_or(*day);
        let total = monthly.entry((*user, currency.clone(), month, key.clone())).or_default();
        total.amount += p.amount;
        total.transactions += p.transactions;
        if p.display.is_some() {
            total.display = p.display.clone();
        }
    }
    upsert_payees(conn, "daily_payees", "day", payees).await?;
    upsert_payees(conn, "monthly_payees", "month", monthly.into_iter().collect()).await?;

    let accounts: Vec<_> = deltas.accounts.into_iter().filter(|(_, (_, net))| *net != 0).collect();
    if !accounts.is_empty() {
        let mut cols = (vec![], vec![], vec![], vec![], vec![]);
        for ((user, account, day), (currency, net)) in accounts {
            cols.0.push(user);
            cols.1.push(account);
            cols.2.push(currency);
            cols.3.push(day);
            cols.4.push(net);
        }
        sqlx::query(
            "INSERT INTO analytics.daily_accounts AS d (user_id, account_id, currency, day, net_minor)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::date[], $5::int8[])
             ON CONFLICT (user_id, account_id, day) DO UPDATE SET net_minor = d.net_minor + EXCLUDED.net_minor",
        )
        .bind(cols.0)
        .bind(cols.1)
        .bind(cols.2)
        .bind(cols.3)
        .bind(cols.4)
        .execute(&mut *conn)
        .await
        .context("failed to update the daily account changes")?;
    }
    Ok(())
}

/// Adds payee deltas to `analytics.<table>`, keyed by `<period>` (a day, or
/// the first of a month).
async fn upsert_payees(
    conn: &mut PgConnection,
    table: &str,
    period: &str,
    rows: Vec<((Uuid, String, NaiveDate, String), PayeeDelta)>,
) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut cols = (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for ((user, currency, day, key), p) in rows {
        cols.0.push(user);
        cols.1.push(currency);
        cols.2.push(day);
        cols.3.push(key);
        cols.4.push(p.display);
        cols.5.push(p.amount);
        cols.6.push(p.transactions);
    }
    sqlx::query(&format!(
        "INSERT INTO analytics.{table} AS d (user_id, currency, {period}, payee_key, payee, amount_minor, transactions)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::date[], $4::text[], $5::text[], $6::int8[], $7::int4[])
         ON CONFLICT (user_id, currency, {period}, payee_key) DO UPDATE SET
             payee = COALESCE(EXCLUDED.payee, d.payee),
             amount_minor = d.amount_minor + EXCLUDED.amount_minor,
             transactions = d.transactions + EXCLUDED.transactions"
    ))
    .bind(cols.0)
    .bind(cols.1)
    .bind(cols.2)
    .bind(cols.3)
    .bind(cols.4)
    .bind(cols.5)
    .bind(cols.6)
    .execute(&mut *conn)
    .await
    .with_context(|| format!("failed to update the {table}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payees_that_differ_in_case_and_spacing_are_one() {
        assert_eq!(payee_key(Some("  Corner   Café ")), "corner café");
        assert_eq!(payee_key(Some("CORNER CAFÉ")), "corner café");
        assert_eq!(payee_key(None), "");
    }
}

//! A batch of transaction events writes exactly what the same events one
//! by one write (the consumer falls back to one by one when a batch fails,
//! so the two must agree), and fast enough for replays and imports.

use std::time::Instant;

use chrono::{Days, NaiveDate, TimeDelta, Utc};
use freedumb_analytics::projections::transactions::Transactions;
use freedumb_kit::events::{Event, EventHandler};
use freedumb_kit::testing::TestDatabase;
use serde_json::json;
use uuid::Uuid;

/// A user's year: creations over many days, payees and categories in two
/// currencies, then edits and deletions, some of them out of order.
fn a_year_of_events(user: Uuid, count: usize) -> Vec<Event> {
    let start = Utc::now() - TimeDelta::hours(1);
    let categories: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    let accounts = [Uuid::now_v7(), Uuid::now_v7()];
    let mut ids = Vec::new();
    let mut events = Vec::new();
    let state = |id: Uuid, n: usize, amount: i64| {
        let currency = if n.is_multiple_of(10) { "USD" } else { "EUR" };
        let day = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + Days::new((n % 365) as u64);
        json!({"version": 1, "transaction_id": id, "user_id": user, "account_id": accounts[usize::from(n.is_multiple_of(10))],
               "currency": currency, "amount_minor": amount, "date": day, "transfer_id": null,
               "payee": format!("Shop {}", n % 200),
               "allocations": [{"category_id": if n.is_multiple_of(7) { None } else { Some(categories[n % 20]) },
                                "parent_category_id": null, "amount_minor": amount}]})
    };
    let event = |kind: &str, at: usize, data| Event {
        id: Uuid::now_v7(),
        kind: kind.to_owned(),
        deployment: Some("test".to_owned()),
        occurred_at: start + TimeDelta::milliseconds(at as i64),
        data,
    };
    for n in 0..count {
        let id = Uuid::now_v7();
        ids.push(id);
        let amount = if n.is_multiple_of(20) { 250_000 } else { -((n as i64 * 7919) % 9_000 + 100) };
        events.push(event("transaction.created", n, state(id, n, amount)));
    }
    for (k, id) in ids.iter().enumerate().step_by(11) {
        let at = count + k;
        if k.is_multiple_of(2) {
            events.push(event("transaction.updated", at, state(*id, k + 3, -4_242)));
        } else {
            events.push(event("transaction.deleted", at, json!({"version": 1, "transaction_id": id, "user_id": user})));
        }
        // An update that lost the race with the one above: out of date.
        events.push(event("transaction.updated", at - 1, state(*id, k, -1)));
    }
    events
}

async fn apply(database: &TestDatabase, events: &[Event], batch: usize) -> f64 {
    let db = database.db(2);
    let started = Instant::now();
    for chunk in events.chunks(batch) {
        let mut tx = db.pool.begin().await.unwrap();
        if batch == 1 {
            Transactions.handle(&mut tx, &chunk[0]).await.unwrap();
        } else {
            Transactions.handle_batch(&mut tx, chunk).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    events.len() as f64 / started.elapsed().as_secs_f64()
}

/// Every projection table as text, in a fixed order.
async fn projection(database: &TestDatabase) -> Vec<String> {
    let db = database.db(2);
    let mut rows = Vec::new();
    // Rows that came to nothing are left out: one event at a time may add
    // a row and take it back, where a batch nets the two out unwritten.
    for (table, filter, order) in [
        ("transactions", "true", "transaction_id"),
        (
            "daily_totals",
            "(income_minor, expense_minor, transfers_in_minor, transfers_out_minor, transactions) <> (0, 0, 0, 0, 0)",
            "user_id, currency, day",
        ),
        ("daily_categories", "amount_minor <> 0", "user_id, currency, day, category_id"),
        ("daily_payees", "(amount_minor, transactions) <> (0, 0)", "user_id, currency, day, payee_key"),
        ("daily_accounts", "net_minor <> 0", "user_id, account_id, day"),
    ] {
        let table_rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT t::text FROM analytics.{table} t WHERE {filter} ORDER BY {order}"))
                .fetch_all(&db.pool)
                .await
                .unwrap();
        rows.push(format!("{table}: {} rows", table_rows.len()));
        rows.extend(table_rows);
    }
    rows
}

async fn migrated() -> TestDatabase {
    let database = TestDatabase::create().await;
    let service = &freedumb_analytics::AnalyticsService;
    database.migrate(freedumb_kit::Service::schema(service), freedumb_kit::Service::migrator(service)).await;
    database
}

#[tokio::test]
async fn batches_write_what_the_same_events_write_one_by_one() {
    let events = a_year_of_events(Uuid::now_v7(), 3_000);
    let (one_by_one, batched) = (migrated().await, migrated().await);
    apply(&one_by_one, &events, 1).await;
    apply(&batched, &events, 500).await;
    let expected = projection(&one_by_one).await;
    assert!(expected.len() > 3_000, "the story wrote too little: {}", expected.len());
    assert_eq!(projection(&batched).await, expected);
}

/// The target is 5,000 a second (release build). A debug build on two
/// shared cores makes 4,200 to 5,800 (by load), so there the floor is 2,000: far
/// above what a statement per event gives (about 50 a second, one commit
/// each), which is the regression this guards against.
#[tokio::test]
async fn the_projection_takes_thousands_of_creations_a_second_in_batches_of_500() {
    let events: Vec<Event> =
        a_year_of_events(Uuid::now_v7(), 20_000).into_iter().filter(|e| e.kind == "transaction.created").collect();
    let database = migrated().await;
    let rate = apply(&database, &events, 500).await;
    println!("{rate:.0} transaction.created events a second");
    let floor = if cfg!(debug_assertions) { 2_000.0 } else { 5_000.0 };
    assert!(rate >= floor, "{rate:.0} events a second, short of {floor}");
}

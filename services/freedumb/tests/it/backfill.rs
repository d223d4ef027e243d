//! A fresh analytics deployment over existing data converges to the same
//! numbers as one that ran all along: the platform runs live while a user
//! imports a year of bank exports and edits them; then analytics starts
//! again on an empty schema, `freedumb replay --to analytics` re-sends the
//! producers' current state to its queues only, and every view answers
//! exactly what it answered live.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use freedumb_kit::config::Env;
use serde_json::{Value, json};

use crate::helpers::{SignedIn, TestApp, spawn_app, spawn_app_on};

const RANGE: &str = "from=2026-01-01&to=2026-11-30";

/// Every view of the user's analytics, by path.
async fn views(app: &TestApp, user: &SignedIn) -> BTreeMap<&'static str, Value> {
    let mut answers = BTreeMap::new();
    for (name, path) in [
        ("categories", format!("/v1/analytics/spending/categories?{RANGE}")),
        ("payees", format!("/v1/analytics/spending/payees?{RANGE}&limit=100")),
        ("income_expense", format!("/v1/analytics/income-expense?{RANGE}")),
        ("cash_flow", format!("/v1/analytics/cash-flow?{RANGE}&interval=month")),
        ("net_worth", format!("/v1/analytics/net-worth?{RANGE}")),
        ("budgets", format!("/v1/analytics/budgets?{RANGE}")),
        ("summary", format!("/v1/analytics/summary?{RANGE}")),
        ("projection", "/v1/analytics/projection?days=60".to_owned()),
    ] {
        answers.insert(name, app.ok(user, "GET", &path, None).await);
    }
    answers
}

/// Waits until the views stop changing: the same answers twice, half a
/// second apart, with the expected number of transactions behind them.
async fn settled_views(app: &TestApp, user: &SignedIn, expense: &str) -> BTreeMap<&'static str, Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = BTreeMap::new();
    loop {
        let now = views(app, user).await;
        let total = now["summary"]["current"].to_string();
        if now == last && total.contains(expense) {
            return now;
        }
        assert!(Instant::now() < deadline, "the views never settled on an expense of {expense}: {total}");
        last = now;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A year of a bank's exports: 10,000 rows over 50 payees.
fn export() -> String {
    let mut csv = String::from("Date,Payee,Amount\n");
    for n in 0..10_000u32 {
        let day = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + chrono::Days::new(u64::from(n % 334));
        let (payee, cents) = if n % 20 == 0 {
            ("Employer".to_owned(), 180_000 + i64::from(n % 7) * 1_000)
        } else {
            (format!("Shop {}", n % 50), -(150 + i64::from((n * 7919) % 9_000)))
        };
        csv.push_str(&format!("{day},{payee},{}.{:02}\n", cents / 100, (cents % 100).abs()));
    }
    csv
}

#[tokio::test]
async fn a_fresh_analytics_converges_through_a_replay_to_the_numbers_of_one_that_ran_live() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let checking = app.account(&user, "EUR", "1500.00").await;
    let travel = app.account(&user, "USD", "200.00").await;
    let summary = app
        .ok(
            &user,
            "POST",
            "/v1/transactions/import",
            Some(json!({
                "account_id": checking["id"],
                "csv": export(),
                "mapping": {"date": "Date", "payee": "Payee", "amount": "Amount"}
            })),
        )
        .await;
    assert_eq!(summary["created"], 10_000, "{summary}");

    // Edits after the import: categorise, change, delete, another currency.
    let categories = app.ok(&user, "GET", "/v1/categories", None).await;
    let food = categories["items"].as_array().unwrap().iter().find(|c| c["name"] == "Food").unwrap()["id"].clone();
    let page = app.ok(&user, "GET", "/v1/transactions?limit=30", None).await;
    let listed = page["items"].as_array().unwrap();
    for (n, transaction) in listed.iter().enumerate() {
        let path = format!("/v1/transactions/{}", transaction["id"].as_str().unwrap());
        match n % 3 {
            0 => drop(app.ok(&user, "PATCH", &path, Some(json!({"category_id": food}))).await),
            1 => drop(app.ok(&user, "PATCH", &path, Some(json!({"amount": "-99.99", "payee": "Corner shop"}))).await),
            _ => drop(app.send(&user, "DELETE", &path, None).await),
        }
    }
    app.ok(
        &user,
        "POST",
        "/v1/transactions",
        Some(json!({"account_id": travel["id"], "amount": "-45.10", "date": "2026-06-02", "payee": "Taxi"})),
    )
    .await;
    app.ok(
        &user,
        "POST",
        "/v1/recurring",
        Some(json!({"account_id": checking["id"], "amount": "-950.00", "payee": "Landlord",
                    "frequency": "monthly", "start_date": "2026-12-20"})),
    )
    .await;
    // The budget service learns categories from events: retry until it has.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = app
            .send(
                &user,
                "POST",
                "/v1/budgets",
                Some(json!({"category_id": food, "currency": "EUR", "amount": "400.00", "period": "monthly",
                            "starts_on": "2026-01-01"})),
            )
            .await;
        if response.status().is_success() {
            break;
        }
        assert!(Instant::now() < deadline, "the budget was refused: {}", response.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // What the user expects analytics to say, from the ledger's own sums.
    let expense: i64 = sqlx::query_scalar(
        "SELECT -sum(amount)::bigint FROM ledger.transactions t JOIN ledger.accounts a ON a.id = t.account_id \
         WHERE a.currency = 'EUR' AND t.amount < 0 AND t.date BETWEEN '2026-01-01' AND '2026-11-30'",
    )
    .fetch_one(&app.db.db(2).pool)
    .await
    .unwrap();
    let expense = format!("{}.{:02}", expense / 100, expense % 100);
    let live = settled_views(&app, &user, &expense).await;

    // A new analytics: its schema dropped and migrated again, the platform
    // restarted on the same data (with an exchange of its own, so nothing
    // of the first run's queues reaches it), and the replay.
    let db = app.stop().await;
    sqlx::query("DROP SCHEMA analytics CASCADE").execute(&db.db(2).pool).await.unwrap();
    let analytics = freedumb::registry::resolve(&["analytics".to_owned()]).unwrap()[0];
    db.migrate(analytics.schema(), analytics.migrator()).await;
    let mut env = BTreeMap::new();
    let app = spawn_app_on(db, |vars| env = vars.clone()).await;
    let fresh = views(&app, &user).await;
    assert_ne!(fresh, live, "the new analytics starts empty");
    freedumb::cli::replay("analytics", &Env::from_map(env)).await.expect("the replay runs");

    let replayed = settled_views(&app, &user, &expense).await;
    for (view, answer) in &live {
        assert_eq!(&replayed[view], answer, "the {view} view differs after the replay");
    }
}

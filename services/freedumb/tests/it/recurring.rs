//! Rent on the first of every month: the worker creates each occurrence
//! exactly once, catches up after downtime, and several workers racing do
//! not double anything.

use chrono::{Datelike, Days, Utc};
use serde_json::json;

use crate::helpers::{error_body, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_rule_catches_up_on_every_past_occurrence_once() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let account = app.account(&user, "USD", "0").await;
    let today = Utc::now().date_naive();
    let start = today.checked_sub_days(Days::new(9)).unwrap();
    let rule = app
        .ok(
            &user,
            "POST",
            "/v1/recurring",
            Some(json!({"account_id": account["id"], "amount": "-1.00", "payee": "Daily",
            "frequency": "daily", "start_date": start.to_string()})),
        )
        .await;
    assert_eq!(rule["next_occurrence"], start.to_string());

    // `serve all` runs the worker; it polls every 100 ms in tests.
    let id = rule["id"].as_str().unwrap();
    let rule = wait_for(&app, &user, id, |rule| rule["occurrences_created"] == 10).await;
    assert_eq!(rule["next_occurrence"], today.checked_add_days(Days::new(1)).unwrap().to_string());
    assert_eq!(app.balance(&user, &account).await, "-10.00");
    let listed = app.ok(&user, "GET", "/v1/transactions?limit=50", None).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 10);
}

async fn wait_for(
    app: &crate::helpers::TestApp,
    user: &crate::helpers::SignedIn,
    id: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let rule = app.ok(user, "GET", &format!("/v1/recurring/{id}"), None).await;
        if done(&rule) {
            return rule;
        }
        assert!(std::time::Instant::now() < deadline, "the worker did not get there: {rule}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn three_workers_racing_create_each_occurrence_exactly_once() {
    // The three below are the only workers.
    let app = spawn_app_without_worker().await;
    let user = app.signed_in_user().await;
    let account = app.account(&user, "USD", "0").await;
    let today = Utc::now().date_naive();
    let mut expected = 0;
    for (i, days_back) in [300u64, 95, 35, 3].into_iter().enumerate() {
        let start = today.checked_sub_days(Days::new(days_back)).unwrap();
        let frequency = ["daily", "weekly", "monthly", "daily"][i];
        app.ok(
            &user,
            "POST",
            "/v1/recurring",
            Some(json!({"account_id": account["id"], "amount": "-1.00",
            "frequency": frequency, "start_date": start.to_string()})),
        )
        .await;
        expected += match frequency {
            "daily" => days_back + 1,
            "weekly" => days_back / 7 + 1,
            _ => months_between(start, today) + 1,
        };
    }

    let platform = crate::helpers::platform_for(&app.db.url);
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let platform = platform.clone();
            tokio::spawn(async move {
                // Each pass takes a batch; keep going until nothing is due.
                while freedumb_transaction::run_recurring_once(&platform, today).await.unwrap() > 0 {}
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }

    let mut conn = sqlx::Connection::connect(&app.db.url).await.map(|c: sqlx::PgConnection| c).unwrap();
    let (count, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT (recurring_rule_id, occurrence_date)) FROM ledger.transactions WHERE recurring_rule_id IS NOT NULL",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(count, distinct, "no occurrence twice");
    assert_eq!(count as u64, expected, "every due occurrence, the 300-day backlog included");
    assert_eq!(app.balance(&user, &account).await, format!("-{expected}.00"));
}

/// A platform whose own recurring worker polls once an hour: after its
/// first pass (before any rule exists) it stays out of the test's way.
async fn spawn_app_without_worker() -> crate::helpers::TestApp {
    spawn_app_with(|env| {
        env.insert("RECURRING_POLL_MS".into(), "3600000".into());
    })
    .await
}

fn months_between(start: chrono::NaiveDate, today: chrono::NaiveDate) -> u64 {
    let months = (today.year() - start.year()) * 12 + today.month() as i32 - start.month() as i32;
    (months - i32::from(today.day() < start.day())) as u64
}

#[tokio::test]
async fn a_rule_with_a_bad_schedule_is_a_422() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let account = app.account(&user, "USD", "0").await;
    let today = Utc::now().date_naive();
    let yesterday = today.pred_opt().unwrap().to_string();
    let today = today.to_string();
    for bad in [
        json!({"account_id": account["id"], "amount": "-1", "frequency": "hourly", "start_date": today}),
        json!({"account_id": account["id"], "amount": "-1", "frequency": "daily", "start_date": today, "interval": 0}),
        json!({"account_id": account["id"], "amount": "-1", "frequency": "monthly", "start_date": today, "day_of_month": 32}),
        json!({"account_id": account["id"], "amount": "-1", "frequency": "daily", "start_date": today, "end_date": yesterday}),
        json!({"account_id": account["id"], "amount": "-1", "frequency": "daily", "start_date": today, "count": 0}),
    ] {
        error_body(app.send(&user, "POST", "/v1/recurring", Some(bad)).await, 422).await;
    }
}

#[tokio::test]
async fn a_rule_starts_at_most_a_year_ago() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let account = app.account(&user, "USD", "0").await;
    let today = Utc::now().date_naive();
    let days_ago = |days| today.checked_sub_days(Days::new(days)).unwrap().to_string();
    let rule =
        |start: String| json!({"account_id": account["id"], "amount": "-1", "frequency": "daily", "start_date": start});
    // Year 0 once made the worker create ~740,000 occurrences.
    for start in ["0000-01-01".to_owned(), "1900-01-01".to_owned(), days_ago(367)] {
        let body = error_body(app.send(&user, "POST", "/v1/recurring", Some(rule(start.clone()))).await, 422).await;
        assert_eq!(body["details"][0]["field"], "start_date", "{start}: {body}");
    }
    app.ok(&user, "POST", "/v1/recurring", Some(rule(days_ago(366)))).await;
}

#[tokio::test]
async fn a_catch_up_after_a_long_outage_creates_at_most_a_year_of_occurrences() {
    // The test drives the passes with a `today` three years on, as after a
    // worker down that long.
    let app = spawn_app_without_worker().await;
    let user = app.signed_in_user().await;
    let account = app.account(&user, "USD", "0").await;
    let today = Utc::now().date_naive();
    let rule = app
        .ok(
            &user,
            "POST",
            "/v1/recurring",
            Some(json!({"account_id": account["id"], "amount": "-1",
            "frequency": "daily", "start_date": today.to_string()})),
        )
        .await;
    let later = today.checked_add_days(Days::new(3 * 365)).unwrap();
    let platform = crate::helpers::platform_for(&app.db.url);
    let mut passes = 0;
    while freedumb_transaction::run_recurring_once(&platform, later).await.unwrap() > 0 {
        passes += 1;
        assert!(passes < 10, "the catch-up does not end");
    }
    let rule = app.ok(&user, "GET", &format!("/v1/recurring/{}", rule["id"].as_str().unwrap()), None).await;
    assert_eq!(rule["next_occurrence"], later.succ_opt().unwrap().to_string());
    let mut conn = sqlx::Connection::connect(&app.db.url).await.map(|c: sqlx::PgConnection| c).unwrap();
    let (count, first): (i64, chrono::NaiveDate) =
        sqlx::query_as("SELECT count(*), min(date) FROM ledger.transactions WHERE recurring_rule_id IS NOT NULL")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(count, 367, "the window's occurrences, no more");
    assert_eq!(first, later.checked_sub_days(Days::new(366)).unwrap());
}

//! Budgets follow the ledger through events: spending moves the budget, and
//! crossing 80% and 100% is announced once per period. Goals track savings.

use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};

use crate::helpers::{SignedIn, TestApp, error_body, spawn_app};

/// Polls a budget until `done` holds: spending arrives asynchronously.
async fn budget_until(app: &TestApp, user: &SignedIn, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let budget = app.ok(user, "GET", &format!("/v1/budgets/{id}"), None).await;
        if done(&budget) {
            return budget;
        }
        assert!(std::time::Instant::now() < deadline, "the budget never got there: {budget}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl TestApp {
    /// Creates a budget as a client should: the budget service learns of a
    /// category from the ledger's events, a moment after it is created, and
    /// until then refuses it with a 422 `unknown_category` that says to
    /// retry.
    pub async fn create_budget(&self, user: &SignedIn, body: Value) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let response = self.send(user, "POST", "/v1/budgets", Some(body.clone())).await;
            let status = response.status();
            let answer: Value = response.json().await.unwrap();
            if status == 201 {
                return answer;
            }
            assert_eq!((status.as_u16(), answer["code"].as_str()), (422, Some("unknown_category")), "{answer}");
            assert!(std::time::Instant::now() < deadline, "the category never reached budgets: {answer}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn category(categories: &Value, name: &str) -> Value {
    categories["items"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()["id"].clone()
}

#[tokio::test]
async fn spending_moves_the_budget_and_thresholds_are_announced_once() {
    let app = spawn_app().await;
    // Thresholds only: the budget's own budget.created|updated are not this story's.
    let announcements = app.broker.watch("budget.threshold_crossed").await;
    let user = app.signed_in_user().await;
    let account = app.account(&user, "USD", "1000.00").await;
    let savings = app.account(&user, "USD", "0").await;
    let categories = app.ok(&user, "GET", "/v1/categories", None).await;
    let (food, groceries) = (category(&categories, "Food"), category(&categories, "Groceries"));
    let today = Utc::now().date_naive().to_string();

    let budget = app
        .create_budget(&user, json!({"category_id": food, "currency": "USD", "amount": "100.00", "period": "monthly"}))
        .await;
    assert_eq!(budget["spent"], "0.00");
    let id = budget["id"].as_str().unwrap().to_owned();
    let spend = |amount: &'static str| {
        app.ok(
            &user,
            "POST",
            "/v1/transactions",
            Some(json!({"account_id": account["id"], "amount": amount, "date": today, "category_id": groceries})),
        )
    };

    // A budget on Food counts Groceries, its subcategory.
    spend("-50.00").await;
    let budget = budget_until(&app, &user, &id, |b| b["spent"] == "50.00").await;
    assert_eq!((budget["remaining"].as_str(), budget["percent_used"].as_str()), (Some("50.00"), Some("50.0")));
    app.broker.assert_quiet(&announcements, Duration::from_millis(300)).await;

    // Transfers are not spending.
    app.ok(
        &user,
        "POST",
        "/v1/transactions/transfers",
        Some(json!({"from_account_id": account["id"], "to_account_id": savings["id"],
        "amount": "500.00", "date": today})),
    )
    .await;

    spend("-35.00").await;
    let crossed = app.broker.take_exactly(&announcements, 1, Duration::from_secs(15)).await;
    let event = crossed[0].event();
    assert_eq!(event.kind, "budget.threshold_crossed");
    assert_eq!(event.data["threshold"], 80);
    assert_eq!(event.data["version"], 1);
    assert_eq!(event.data["spent_minor"], 8500);

    spend("-20.00").await;
    let crossed = app.broker.take_exactly(&announcements, 1, Duration::from_secs(15)).await;
    assert_eq!(crossed[0].event().data["threshold"], 100);
    let budget = budget_until(&app, &user, &id, |b| b["spent"] == "105.00").await;
    assert_eq!((budget["remaining"].as_str(), budget["percent_used"].as_str()), (Some("-5.00"), Some("105.0")));

    // More spending in the same period announces nothing new.
    spend("-1.00").await;
    budget_until(&app, &user, &id, |b| b["spent"] == "106.00").await;
    app.broker.assert_quiet(&announcements, Duration::from_millis(500)).await;

    // A deleted transaction stops counting.
    let listed = app.ok(&user, "GET", "/v1/transactions?q=&limit=200", None).await;
    let first = listed["items"].as_array().unwrap().iter().find(|t| t["amount"] == "-50.00").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.ok(&user, "DELETE", &format!("/v1/transactions/{first}"), None).await;
    budget_until(&app, &user, &id, |b| b["spent"] == "56.00").await;
}

#[tokio::test]
async fn rollover_carries_what_earlier_periods_left() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let account = app.account(&user, "USD", "0").await;
    let categories = app.ok(&user, "GET", "/v1/categories", None).await;
    let travel = category(&categories, "Travel");
    let budget = app
        .create_budget(
            &user,
            json!({"category_id": travel, "currency": "USD", "amount": "100.00",
            "period": "monthly", "rollover": true, "starts_on": "2026-01-01"}),
        )
        .await;
    let id = budget["id"].as_str().unwrap().to_owned();
    app.ok(
        &user,
        "POST",
        "/v1/transactions",
        Some(json!({"account_id": account["id"], "amount": "-30.00", "date": "2026-01-15", "category_id": travel})),
    )
    .await;
    app.ok(
        &user,
        "POST",
        "/v1/transactions",
        Some(json!({"account_id": account["id"], "amount": "-150.00", "date": "2026-02-10", "category_id": travel})),
    )
    .await;
    // January left 70, February overspent 50: March has 100 + 70 - 50.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let march = app.ok(&user, "GET", &format!("/v1/budgets/{id}?date=2026-03-05"), None).await;
        if march["budgeted"] == "120.00" {
            assert_eq!(march["period_start"], "2026-03-01");
            assert_eq!(march["spent"], "0.00");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{march}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let february = app.ok(&user, "GET", &format!("/v1/budgets/{id}?date=2026-02-28"), None).await;
    assert_eq!((february["budgeted"].as_str(), february["spent"].as_str()), (Some("170.00"), Some("150.00")));
}

#[tokio::test]
async fn a_goal_shows_progress_and_is_announced_when_reached() {
    let app = spawn_app().await;
    let reached = app.broker.watch("goal.reached").await;
    let user = app.signed_in_user().await;
    let goal = app
        .ok(
            &user,
            "POST",
            "/v1/goals",
            Some(json!({"name": "Bike", "currency": "EUR", "target_amount": "1000.00", "target_date": "2030-01-01"})),
        )
        .await;
    let id = goal["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/goals/{id}/contributions");
    let today = Utc::now().date_naive();
    let ten_days_ago = (today - chrono::Days::new(10)).to_string();

    let progress = app.ok(&user, "POST", &path, Some(json!({"amount": "400.00", "date": ten_days_ago}))).await;
    assert_eq!(
        (progress["saved"].as_str(), progress["remaining"].as_str(), progress["percent"].as_str()),
        (Some("400.00"), Some("600.00"), Some("40.0"))
    );
    // 40 a day for 10 days; 600 more takes 15 days.
    assert_eq!(progress["projected_completion"], (today + chrono::Days::new(15)).to_string());
    assert_eq!(progress["on_track"], true);
    app.broker.assert_quiet(&reached, Duration::from_millis(300)).await;

    let done = app.ok(&user, "POST", &path, Some(json!({"amount": "600.00"}))).await;
    assert!(done["reached_at"].is_string());
    let events = app.broker.take_exactly(&reached, 1, Duration::from_secs(15)).await;
    assert_eq!(events[0].event().data["goal_id"], id.as_str());
    assert_eq!(events[0].event().data["version"], 1);

    // Only once.
    app.ok(&user, "POST", &path, Some(json!({"amount": "5.00"}))).await;
    app.broker.assert_quiet(&reached, Duration::from_millis(500)).await;
    error_body(app.send(&user, "POST", &path, Some(json!({"amount": "0"}))).await, 422).await;
}

#[tokio::test]
async fn budgets_and_goals_belong_to_their_owner() {
    let app = spawn_app().await;
    let owner = app.signed_in_user().await;
    let intruder = app.signed_in_user().await;
    let categories = app.ok(&owner, "GET", "/v1/categories", None).await;
    let budget = app
        .create_budget(
            &owner,
            json!({"category_id": category(&categories, "Gifts"), "currency": "USD", "amount": "10.00", "period": "weekly"}),
        )
        .await;
    let goal = app
        .ok(&owner, "POST", "/v1/goals", Some(json!({"name": "Car", "currency": "USD", "target_amount": "10.00"})))
        .await;
    let (b, g) = (budget["id"].as_str().unwrap(), goal["id"].as_str().unwrap());
    for (method, path, body) in [
        ("GET", format!("/v1/budgets/{b}"), None),
        ("PATCH", format!("/v1/budgets/{b}"), Some(json!({"amount": "1.00"}))),
        ("DELETE", format!("/v1/budgets/{b}"), None),
        ("GET", format!("/v1/goals/{g}"), None),
        ("PATCH", format!("/v1/goals/{g}"), Some(json!({"name": "mine"}))),
        ("DELETE", format!("/v1/goals/{g}"), None),
        ("POST", format!("/v1/goals/{g}/contributions"), Some(json!({"amount": "1.00"}))),
    ] {
        error_body(app.send(&intruder, method, &path, body).await, 404).await;
    }
    assert_eq!(app.ok(&intruder, "GET", "/v1/budgets", None).await["items"].as_array().unwrap().len(), 0);
    assert_eq!(app.ok(&owner, "GET", &format!("/v1/goals/{g}"), None).await["saved"], "0.00");
    // Bad input is a 4xx.
    for body in [
        json!({"category_id": uuid::Uuid::new_v4(), "currency": "USD", "amount": "-5", "period": "monthly"}),
        json!({"category_id": uuid::Uuid::new_v4(), "currency": "USD", "amount": "5", "period": "daily"}),
        json!({"category_id": "nope", "currency": "USD", "amount": "5", "period": "monthly"}),
    ] {
        let response = app.send(&owner, "POST", "/v1/budgets", Some(body)).await;
        let status = response.status().as_u16();
        error_body(response, status).await;
        assert_eq!(status, 422);
    }
    error_body(app.send(&owner, "GET", "/v1/budgets?date=someday", None).await, 400).await;
}

/// Posts a budget on `category` until the answer is no longer `pending`
/// (a status the budget service gives while it has not heard of a change
/// yet), and returns the final answer.
async fn budget_answer_once_known(
    app: &TestApp,
    user: &SignedIn,
    category: &Value,
    period: &str,
    pending: &[u16],
) -> (u16, Value) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let body = json!({"category_id": category, "currency": "USD", "amount": "10.00", "period": period});
        let response = app.send(user, "POST", "/v1/budgets", Some(body)).await;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap();
        if !pending.contains(&status) {
            return (status, answer);
        }
        assert!(std::time::Instant::now() < deadline, "budgets never heard of the change: {status} {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_unknown_category(answer: &Value) {
    assert_eq!(answer["code"], "unknown_category", "{answer}");
    assert_eq!(answer["details"][0]["field"], "category_id", "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(message.starts_with("category_id: ") && message.contains("retry"), "{message}");
}

#[tokio::test]
async fn a_budget_is_refused_for_a_category_that_is_not_the_callers_own() {
    let app = spawn_app().await;
    let owner = app.signed_in_user().await;
    let stranger = app.signed_in_user().await;
    let categories = app.ok(&owner, "GET", "/v1/categories", None).await;
    let food = category(&categories, "Food");
    app.create_budget(&owner, json!({"category_id": food, "currency": "USD", "amount": "10.00", "period": "monthly"}))
        .await;

    // Budgets know the owner's Food now, and refuse it to anyone else
    // exactly as they refuse an id that never existed.
    for category_id in [food.clone(), json!(uuid::Uuid::now_v7())] {
        let body = json!({"category_id": category_id, "currency": "USD", "amount": "10.00", "period": "weekly"});
        let answer = error_body(app.send(&stranger, "POST", "/v1/budgets", Some(body)).await, 422).await;
        assert_unknown_category(&answer);
    }
    assert_eq!(app.ok(&stranger, "GET", "/v1/budgets", None).await["items"], json!([]));
}

#[tokio::test]
async fn a_deleted_or_merged_category_takes_no_new_budget_once_budgets_hear_of_it() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let categories = app.ok(&user, "GET", "/v1/categories", None).await;
    let (travel, gifts, shopping) =
        (category(&categories, "Travel"), category(&categories, "Gifts"), category(&categories, "Shopping"));
    // Known to budgets before they change.
    for known in [&travel, &gifts] {
        app.create_budget(
            &user,
            json!({"category_id": known, "currency": "USD", "amount": "1.00", "period": "yearly"}),
        )
        .await;
    }

    app.ok(&user, "DELETE", &format!("/v1/categories/{}", travel.as_str().unwrap()), None).await;
    app.ok(
        &user,
        "POST",
        &format!("/v1/categories/{}/merge", gifts.as_str().unwrap()),
        Some(json!({"into": shopping})),
    )
    .await;

    // Until the event arrives a new budget may still be taken (201, then
    // 409 for the same period); after it, never.
    for gone in [&travel, &gifts] {
        let (status, answer) = budget_answer_once_known(&app, &user, gone, "monthly", &[201, 409]).await;
        assert_eq!(status, 422, "{answer}");
        assert_unknown_category(&answer);
    }
    // The category it merged into takes budgets as before.
    app.create_budget(
        &user,
        json!({"category_id": shopping, "currency": "USD", "amount": "1.00", "period": "monthly"}),
    )
    .await;
}

#[tokio::test]
async fn category_events_apply_in_any_order_and_an_unknown_version_is_dead_lettered() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let me: Value = app.get_authed("/v1/auth/me", &user.access_token).await.json().await.unwrap();
    // Events as the ledger of this deployment (named after its database)
    // publishes them; delivery order is not guaranteed.
    let app = &app;
    let publish = move |kind: &'static str, data: Value| {
        let envelope = json!({"id": uuid::Uuid::now_v7(), "type": kind, "deployment": app.db.name,
            "occurred_at": Utc::now(), "data": data});
        async move { app.broker.publish(kind, &serde_json::to_vec(&envelope).unwrap()).await }
    };
    let (gone, kept, future) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let of_user = |id: uuid::Uuid| json!({"version": 1, "category_id": id, "user_id": me["id"]});

    // A deletion that overtook the creation: the category stays gone.
    publish("category.deleted", of_user(gone)).await;
    publish("category.created", json!({"name": "Late", "parent_id": null}).merge(of_user(gone))).await;
    // A rename is enough to learn of a category whose creation is still on its way.
    publish("category.renamed", json!({"name": "Renamed"}).merge(of_user(kept))).await;
    // A contract this build does not know is not guessed at.
    publish("category.created", json!({"version": 2, "category_id": future, "user_id": me["id"], "label": "?"})).await;

    app.create_budget(&user, json!({"category_id": kept, "currency": "USD", "amount": "5.00", "period": "monthly"}))
        .await;
    let dead_letters =
        format!("{}.{}.{}.dlq", app.broker.exchange, app.db.name, freedumb_budget::categories::CATEGORIES_QUEUE);
    let dead = app.broker.take_exactly(&dead_letters, 1, Duration::from_secs(15)).await;
    assert_eq!(dead[0].event().data["category_id"], json!(future));
    for refused in [gone, future] {
        let body = json!({"category_id": refused, "currency": "USD", "amount": "5.00", "period": "monthly"});
        assert_unknown_category(&error_body(app.send(&user, "POST", "/v1/budgets", Some(body)).await, 422).await);
    }
}

trait Merge {
    fn merge(self, other: Value) -> Value;
}

impl Merge for Value {
    /// The fields of both objects.
    fn merge(mut self, other: Value) -> Value {
        if let (Some(mine), Value::Object(theirs)) = (self.as_object_mut(), other) {
            mine.extend(theirs);
        }
        self
    }
}

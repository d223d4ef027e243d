//! What the producers tell others: every change to a user, an account, a
//! recurring rule or a budget is recorded once in its service's outbox, in
//! the change's transaction (a refused change records nothing), with the
//! whole state the contract names; and each service's snapshot says, for
//! the same state, exactly what the live event said.

use std::time::Duration;

use chrono::{Datelike, Days, Utc};
use freedumb_kit::Service;
use freedumb_kit::events::SnapshotEvent;
use futures::TryStreamExt;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, SignedIn, TestApp, platform_for, spawn_app, unique_email};

/// The outbox rows of `schema` whose routing key is one of `kinds`, in the
/// order they were recorded (the ids are UUIDv7).
async fn outbox(app: &TestApp, schema: &str, kinds: &[&str]) -> Vec<(String, Value)> {
    let mut conn: sqlx::PgConnection = sqlx::Connection::connect(&app.db.url).await.unwrap();
    let rows: Vec<(String, String)> = sqlx::query_as(&format!(
        "SELECT routing_key, payload::text FROM {schema}.outbox WHERE routing_key = ANY($1) ORDER BY id"
    ))
    .bind(kinds.iter().map(|k| (*k).to_owned()).collect::<Vec<_>>())
    .fetch_all(&mut conn)
    .await
    .unwrap();
    rows.into_iter().map(|(kind, payload)| (kind, serde_json::from_str(&payload).unwrap())).collect()
}

fn kinds(rows: &[(String, Value)]) -> Vec<&str> {
    rows.iter().map(|(kind, _)| kind.as_str()).collect()
}

/// The last live payload recorded about the thing `field` = `id` names.
fn last_about<'a>(rows: &'a [(String, Value)], field: &str, id: &Value) -> &'a Value {
    rows.iter().rev().map(|(_, payload)| payload).find(|payload| &payload[field] == id).expect("a live event about it")
}

async fn snapshot(app: &TestApp, service: &dyn Service) -> Vec<SnapshotEvent> {
    let platform = platform_for(&app.db.url);
    service.snapshot(&platform.db).try_collect().await.unwrap()
}

async fn user_id(app: &TestApp, user: &SignedIn) -> Value {
    let me: Value = app.get_authed("/v1/auth/me", &user.access_token).await.json().await.unwrap();
    me["id"].clone()
}

fn category(categories: &Value, name: &str) -> Value {
    categories["items"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()["id"].clone()
}

#[tokio::test]
async fn a_registration_is_announced_once_and_the_snapshot_says_the_same() {
    let app = spawn_app().await;
    let published = app.broker.watch("user.registered").await;
    let email = unique_email();
    let response = app.register(&email, PASSWORD).await;
    assert_eq!(response.status(), 201);
    let user: Value = response.json().await.unwrap();
    // Taken: refused, and nothing said.
    assert_eq!(app.register(&email, PASSWORD).await.status(), 409);

    let live = outbox(&app, "auth", &["user.registered"]).await;
    assert_eq!(
        live,
        [(
            "user.registered".to_owned(),
            json!({"version": 1, "user_id": user["id"], "email": email, "registered_at": user["created_at"]})
        )]
    );
    // The auth service's own relay publishes it.
    let delivered = app.broker.take_exactly(&published, 1, Duration::from_secs(15)).await;
    assert_eq!(delivered[0].event().data, live[0].1);

    let snapshot = snapshot(&app, &freedumb_auth::AuthService).await;
    assert_eq!(snapshot, [SnapshotEvent { kind: "user.registered", data: live[0].1.clone() }]);
}

#[tokio::test]
async fn every_account_change_is_announced_with_its_whole_state_and_the_snapshot_matches_the_last() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let user_id = user_id(&app, &user).await;
    let account = app.account(&user, "USD", "12.50").await;
    let path = format!("/v1/accounts/{}", account["id"].as_str().unwrap());

    // A refused change records nothing.
    let refused = app.send(&user, "PATCH", &path, Some(json!({"name": "Bills", "opening_balance": "1.999"}))).await;
    assert_eq!(refused.status(), 422);
    app.ok(&user, "PATCH", &path, Some(json!({"name": "Bills", "kind": "savings"}))).await;
    app.ok(&user, "POST", &format!("{path}/archive"), None).await;
    // Archiving it again changes nothing, and says nothing.
    app.ok(&user, "POST", &format!("{path}/archive"), None).await;
    app.ok(&user, "POST", &format!("{path}/unarchive"), None).await;
    app.ok(&user, "POST", &format!("{path}/archive"), None).await;

    let live = outbox(&app, "ledger", &["account.created", "account.updated", "account.archived"]).await;
    assert_eq!(
        kinds(&live),
        ["account.created", "account.updated", "account.archived", "account.updated", "account.archived"]
    );
    let state = |name: &str, kind: &str, archived: bool| {
        json!({"version": 1, "account_id": account["id"], "user_id": user_id, "name": name, "kind": kind,
               "currency": "USD", "opening_balance_minor": 1250, "archived": archived})
    };
    assert_eq!(live[0].1, state("Checking", "checking", false));
    assert_eq!(live[1].1, state("Bills", "savings", false));
    assert_eq!(live[2].1, state("Bills", "savings", true));
    assert_eq!(live[3].1, state("Bills", "savings", false));

    // Archived accounts are in the snapshot, as they now are.
    let snapshot = snapshot(&app, &freedumb_transaction::TransactionService).await;
    let accounts: Vec<_> = snapshot.iter().filter(|e| e.kind == "account.created").collect();
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0].data, live[4].1);
    assert_eq!(accounts[0].data["archived"], true);
}

#[tokio::test]
async fn transactions_carry_their_payee_and_the_ledgers_snapshot_says_what_the_live_events_said() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let user_id = user_id(&app, &user).await;
    let account = app.account(&user, "USD", "0").await;
    let categories = app.ok(&user, "GET", "/v1/categories", None).await;
    let (food, groceries, restaurants) =
        (category(&categories, "Food"), category(&categories, "Groceries"), category(&categories, "Restaurants"));

    let plain = app
        .ok(
            &user,
            "POST",
            "/v1/transactions",
            Some(json!({"account_id": account["id"], "amount": "-12.50",
            "date": "2026-11-20", "payee": "  Corner Shop ", "category_id": groceries})),
        )
        .await;
    let split = app
        .ok(
            &user,
            "POST",
            "/v1/transactions",
            Some(json!({"account_id": account["id"], "amount": "-100.00",
            "date": "2026-11-21", "splits": [{"category_id": groceries, "amount": "-60.00"},
            {"category_id": restaurants, "amount": "-40.00"}]})),
        )
        .await;
    // An emptied payee is none.
    let path = format!("/v1/transactions/{}", plain["id"].as_str().unwrap());
    app.ok(&user, "PATCH", &path, Some(json!({"payee": ""}))).await;
    let rule = app
        .ok(
            &user,
            "POST",
            "/v1/recurring",
            Some(json!({"account_id": account["id"], "amount": "-9.99",
            "payee": "Gym", "frequency": "monthly", "start_date": "2099-01-15"})),
        )
        .await;

    let live = outbox(&app, "ledger", &["transaction.created", "transaction.updated"]).await;
    assert_eq!(kinds(&live), ["transaction.created", "transaction.created", "transaction.updated"]);
    let plain_state = |payee: Value| {
        json!({"version": 1, "transaction_id": plain["id"], "user_id": user_id, "account_id": account["id"],
               "currency": "USD", "amount_minor": -1250, "date": "2026-11-20", "payee": payee, "transfer_id": null,
               "allocations": [{"category_id": groceries, "parent_category_id": food, "amount_minor": -1250}]})
    };
    assert_eq!(live[0].1, plain_state(json!("Corner Shop")));
    assert_eq!(live[2].1, plain_state(Value::Null));
    assert_eq!(
        live[1].1["allocations"],
        json!([{"category_id": groceries, "parent_category_id": food, "amount_minor": -6000},
               {"category_id": restaurants, "parent_category_id": food, "amount_minor": -4000}])
    );

    // The snapshot: every account, category, transaction and rule, each as
    // its last live event had it.
    let snapshot = snapshot(&app, &freedumb_transaction::TransactionService).await;
    let of = |kind: &str| snapshot.iter().filter(move |e| e.kind == kind).collect::<Vec<_>>();
    let transactions = of("transaction.created");
    assert_eq!(transactions.len(), 2);
    for event in &transactions {
        assert_eq!(&event.data, last_about(&live, "transaction_id", &event.data["transaction_id"]));
    }
    assert!(transactions.iter().any(|e| e.data["transaction_id"] == split["id"]));

    let live_categories = outbox(&app, "ledger", &["category.created"]).await;
    let snapshot_categories = of("category.created");
    assert_eq!(snapshot_categories.len(), categories["items"].as_array().unwrap().len());
    for event in snapshot_categories {
        assert_eq!(&event.data, last_about(&live_categories, "category_id", &event.data["category_id"]));
    }

    let live_accounts = outbox(&app, "ledger", &["account.created"]).await;
    assert_eq!(of("account.created").iter().map(|e| e.data.clone()).collect::<Vec<_>>(), [live_accounts[0].1.clone()]);

    let live_rules = outbox(&app, "ledger", &["recurring.created"]).await;
    let rules = of("recurring.created");
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].data, *last_about(&live_rules, "rule_id", &rule["id"]));
}

#[tokio::test]
async fn a_recurring_rule_is_announced_as_made_as_the_worker_advances_it_as_paused_and_as_deleted() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let user_id = user_id(&app, &user).await;
    let account = app.account(&user, "EUR", "0").await;
    let today = Utc::now().date_naive();
    let start = today.checked_sub_days(Days::new(35)).unwrap();
    let body = json!({"account_id": account["id"], "amount": "-9.99", "payee": "Gym", "frequency": "monthly",
                      "start_date": start.to_string(), "count": 5});

    // Refused: nothing is recorded.
    let mut bad = body.clone();
    bad["interval"] = json!(0);
    assert_eq!(app.send(&user, "POST", "/v1/recurring", Some(bad)).await.status(), 422);

    let rule = app.ok(&user, "POST", "/v1/recurring", Some(body)).await;
    let id = rule["id"].as_str().unwrap().to_owned();
    let kinds_of_rules = ["recurring.created", "recurring.updated", "recurring.deleted"];
    let state = |occurrences: i64, next: Value, active: bool| {
        json!({"version": 1, "rule_id": id, "user_id": user_id, "account_id": account["id"], "currency": "EUR",
               "amount_minor": -999, "payee": "Gym", "category_id": null, "frequency": "monthly", "interval": 1,
               "start_date": start.to_string(), "day_of_month": start.day(), "end_date": null,
               "max_occurrences": 5, "occurrences_created": occurrences, "next_occurrence": next, "active": active})
    };

    // The worker creates the two occurrences due (the platform's own worker
    // may get there first; either way the rule advances once).
    let platform = platform_for(&app.db.url);
    while freedumb_transaction::run_recurring_once(&platform, today).await.unwrap() > 0 {}
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let advanced = loop {
        let rule = app.ok(&user, "GET", &format!("/v1/recurring/{id}"), None).await;
        if rule["occurrences_created"] == 2 {
            break rule;
        }
        assert!(std::time::Instant::now() < deadline, "the rule never advanced: {rule}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Nothing more is due today: no more advances, no more events.
    while freedumb_transaction::run_recurring_once(&platform, today).await.unwrap() > 0 {}

    app.ok(&user, "PATCH", &format!("/v1/recurring/{id}"), Some(json!({"active": false}))).await;
    let snapshot = snapshot(&app, &freedumb_transaction::TransactionService).await;
    assert_eq!(app.send(&user, "DELETE", &format!("/v1/recurring/{id}"), None).await.status(), 204);

    let live = outbox(&app, "ledger", &kinds_of_rules).await;
    assert_eq!(kinds(&live), ["recurring.created", "recurring.updated", "recurring.updated", "recurring.deleted"]);
    assert_eq!(live[0].1, state(0, json!(start.to_string()), true));
    assert_eq!(live[1].1, state(2, advanced["next_occurrence"].clone(), true));
    assert_eq!(live[2].1, state(2, advanced["next_occurrence"].clone(), false));
    assert_eq!(live[3].1, json!({"version": 1, "rule_id": id, "user_id": user_id}));

    // Its occurrences were announced in the same pass, with the payee.
    let created = outbox(&app, "ledger", &["transaction.created"]).await;
    assert_eq!(created.len(), 2);
    assert!(created.iter().all(|(_, p)| p["payee"] == "Gym" && p["amount_minor"] == -999), "{created:?}");

    // The snapshot taken before the deletion had the paused rule as its
    // last event did.
    let rules: Vec<_> = snapshot.iter().filter(|e| e.kind == "recurring.created").collect();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].data, live[2].1);
}

#[tokio::test]
async fn every_budget_change_is_announced_in_its_transaction_and_the_snapshot_matches() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let user_id = user_id(&app, &user).await;
    let categories = app.ok(&user, "GET", "/v1/categories", None).await;
    let (food, housing) = (category(&categories, "Food"), category(&categories, "Housing"));
    let today = Utc::now().date_naive();
    let first_of_month = today.with_day(1).unwrap().to_string();

    let monthly = app
        .create_budget(&user, json!({"category_id": food, "currency": "USD", "amount": "100.00", "period": "monthly"}))
        .await;
    let yearly = app
        .create_budget(
            &user,
            json!({"category_id": housing, "currency": "EUR", "amount": "1200", "period": "yearly",
                   "rollover": true, "starts_on": "2025-03-04"}),
        )
        .await;
    let monthly_path = format!("/v1/budgets/{}", monthly["id"].as_str().unwrap());
    // Refused: nothing is recorded.
    assert_eq!(app.send(&user, "PATCH", &monthly_path, Some(json!({"amount": "0"}))).await.status(), 422);
    app.ok(&user, "PATCH", &monthly_path, Some(json!({"amount": "80.00", "rollover": true}))).await;
    assert_eq!(app.send(&user, "DELETE", &monthly_path, None).await.status(), 204);

    let live = outbox(&app, "budget", &["budget.created", "budget.updated", "budget.deleted"]).await;
    assert_eq!(kinds(&live), ["budget.created", "budget.created", "budget.updated", "budget.deleted"]);
    assert_eq!(
        live[0].1,
        json!({"version": 1, "budget_id": monthly["id"], "user_id": user_id, "category_id": food, "currency": "USD",
               "amount_minor": 10000, "period": "monthly", "rollover": false, "starts_on": first_of_month})
    );
    assert_eq!(
        live[1].1,
        json!({"version": 1, "budget_id": yearly["id"], "user_id": user_id, "category_id": housing, "currency": "EUR",
               "amount_minor": 120000, "period": "yearly", "rollover": true, "starts_on": "2025-01-01"})
    );
    assert_eq!((&live[2].1["amount_minor"], &live[2].1["rollover"]), (&json!(8000), &json!(true)));
    assert_eq!(live[3].1, json!({"version": 1, "budget_id": monthly["id"], "user_id": user_id}));

    // The deleted budget is gone from the snapshot; the other is as it was announced.
    let snapshot = snapshot(&app, &freedumb_budget::BudgetService).await;
    assert_eq!(snapshot, [SnapshotEvent { kind: "budget.created", data: live[1].1.clone() }]);
}

#[tokio::test]
async fn the_budget_service_declares_the_queues_its_consumers_read() {
    let subscriptions = freedumb_budget::BudgetService.subscriptions();
    let purposes: Vec<_> = subscriptions.iter().map(|s| s.purpose).collect();
    assert_eq!(purposes, [freedumb_budget::SPENDING_QUEUE, freedumb_budget::categories::CATEGORIES_QUEUE]);
    assert!(subscriptions[0].wants("transaction.deleted") && !subscriptions[0].wants("category.created"));
    assert!(subscriptions[1].wants("category.merged") && !subscriptions[1].wants("budget.created"));
    // The consumers the service runs read exactly those queues.
    let app = spawn_app().await;
    for purpose in purposes {
        let queue = format!("{}.{}.{purpose}", app.broker.exchange, app.db.name);
        app.broker.wait_for_consumer(&queue, Duration::from_secs(5)).await;
    }
}

#[tokio::test]
async fn the_transactions_snapshot_pages_through_a_large_ledger_once_each_in_id_order() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let account = app.account(&user, "USD", "0").await;
    let mut conn: sqlx::PgConnection = sqlx::Connection::connect(&app.db.url).await.unwrap();
    // More than two pages, the last one short.
    let count = 2_345;
    sqlx::query(
        "INSERT INTO ledger.transactions (id, user_id, account_id, amount, currency_exponent, date, payee)
         SELECT gen_random_uuid(), a.user_id, a.id, -n, 2, DATE '2026-01-01' + (n % 300), 'Payee ' || n
         FROM ledger.accounts a, generate_series(1, $2) AS n WHERE a.id = $1",
    )
    .bind(uuid::Uuid::parse_str(account["id"].as_str().unwrap()).unwrap())
    .bind(count)
    .execute(&mut conn)
    .await
    .unwrap();

    let snapshot = snapshot(&app, &freedumb_transaction::TransactionService).await;
    let ids: Vec<String> = snapshot
        .iter()
        .filter(|e| e.kind == "transaction.created")
        .map(|e| e.data["transaction_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), count as usize);
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "each once, in id order");
}

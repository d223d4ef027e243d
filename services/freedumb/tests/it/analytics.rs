//! Analytics follows the ledger, budgets and investments through their
//! events: a user's money shows up in spending, income against expense,
//! cash flow and net worth to the cent, per currency, whatever order the
//! events arrive in, and never in another user's answers.
//!
//! The events are published here as their producers publish them (the
//! contract in docs/events.md, stamped with this deployment), each with the
//! `occurred_at` the story needs, so that the order of delivery is the
//! test's to choose.

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{SignedIn, TestApp, error_body, spawn_app};

const MARCH: &str = "from=2026-03-01&to=2026-03-31";

/// The producers of this deployment, as analytics hears them.
struct Producers<'a> {
    app: &'a TestApp,
    user_id: Value,
    /// Events are stamped a millisecond apart from here, in the order the
    /// test says they happened (not the order they are published in).
    epoch: DateTime<Utc>,
}

impl<'a> Producers<'a> {
    async fn of(app: &'a TestApp, user: &SignedIn) -> Producers<'a> {
        let me: Value = app.get_authed("/v1/auth/me", &user.access_token).await.json().await.unwrap();
        Producers { app, user_id: me["id"].clone(), epoch: Utc::now() }
    }

    /// Publishes `kind` as having happened at step `at` of the story.
    async fn publish(&self, at: i64, kind: &str, mut data: Value) {
        data["version"] = json!(1);
        data["user_id"] = self.user_id.clone();
        let envelope = json!({"id": Uuid::now_v7(), "type": kind, "deployment": self.app.db.name,
            "occurred_at": self.epoch + TimeDelta::milliseconds(at), "data": data});
        self.app.broker.publish(kind, &serde_json::to_vec(&envelope).unwrap()).await;
    }

    async fn account(&self, at: i64, currency: &str, opening_minor: i64) -> Uuid {
        let id = Uuid::now_v7();
        self.publish(
            at,
            "account.created",
            json!({"account_id": id, "name": "Checking", "kind": "checking", "currency": currency,
                   "opening_balance_minor": opening_minor, "archived": false}),
        )
        .await;
        id
    }

    async fn category(&self, at: i64, name: &str, parent: Option<Uuid>) -> Uuid {
        let id = Uuid::now_v7();
        self.publish(at, "category.created", json!({"category_id": id, "name": name, "parent_id": parent})).await;
        id
    }

    /// `transaction.created` or `.updated` with the whole state.
    async fn transaction(&self, at: i64, kind: &str, id: Uuid, t: &Tx) {
        self.publish(
            at,
            kind,
            json!({"transaction_id": id, "account_id": t.account, "currency": t.currency, "amount_minor": t.amount,
                   "date": t.date, "transfer_id": t.transfer, "payee": t.payee,
                   "allocations": [{"category_id": t.category, "parent_category_id": null, "amount_minor": t.amount}]}),
        )
        .await;
    }

    async fn deleted(&self, at: i64, id: Uuid) {
        self.publish(at, "transaction.deleted", json!({"transaction_id": id})).await;
    }
}

#[derive(Clone)]
struct Tx {
    account: Uuid,
    currency: &'static str,
    amount: i64,
    date: &'static str,
    payee: Option<&'static str>,
    category: Option<Uuid>,
    transfer: Option<Uuid>,
}

impl Tx {
    fn new(account: Uuid, amount: i64, date: &'static str) -> Tx {
        Tx { account, currency: "EUR", amount, date, payee: None, category: None, transfer: None }
    }
}

/// Polls a view until `done` holds: events arrive asynchronously.
async fn view_until(app: &TestApp, user: &SignedIn, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = app.ok(user, "GET", path, None).await;
        if done(&answer) {
            return answer;
        }
        assert!(Instant::now() < deadline, "{path} never got there: {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The one currency's entry of a per-currency answer.
fn of<'v>(answer: &'v Value, list: &str, currency: &str) -> &'v Value {
    answer[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in {answer}"))
        .iter()
        .find(|c| c["currency"] == currency)
        .unwrap_or_else(|| panic!("no {currency} in {answer}"))
}

fn has(answer: &Value, list: &str, currency: &str) -> bool {
    answer[list].as_array().is_some_and(|l| l.iter().any(|c| c["currency"] == currency))
}

fn day<'v>(net_worth: &'v Value, currency: &str, date: &str) -> &'v Value {
    of(net_worth, "currencies", currency)["days"].as_array().unwrap().iter().find(|d| d["date"] == date).unwrap()
}

#[tokio::test]
async fn a_users_month_shows_in_every_view_to_the_cent() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let ledger = Producers::of(&app, &user).await;
    let checking = ledger.account(0, "EUR", 100_000).await;
    let savings = ledger.account(1, "EUR", 0).await;
    let food = ledger.category(2, "Food", None).await;
    let groceries = ledger.category(3, "Groceries", Some(food)).await;
    let salary = ledger.category(4, "Salary", None).await;
    let transfer = Some(Uuid::now_v7());
    for (at, t) in [
        // February: before the range, so only in opening balances.
        (9, Tx { payee: Some("Kiosk"), ..Tx::new(checking, -5_000, "2026-02-27") }),
        (10, Tx { payee: Some("Employer"), category: Some(salary), ..Tx::new(checking, 250_000, "2026-03-01") }),
        (11, Tx { payee: Some("Corner Shop"), category: Some(groceries), ..Tx::new(checking, -4_550, "2026-03-02") }),
        (12, Tx { payee: Some(" corner  shop"), category: Some(food), ..Tx::new(checking, -1_000, "2026-03-05") }),
        (13, Tx { payee: Some("Kiosk"), ..Tx::new(checking, -250, "2026-03-05") }),
        (14, Tx { transfer, ..Tx::new(checking, -20_000, "2026-03-10") }),
        (15, Tx { transfer, ..Tx::new(savings, 20_000, "2026-03-10") }),
    ] {
        ledger.transaction(at, "transaction.created", Uuid::now_v7(), &t).await;
    }
    let portfolio = Uuid::now_v7();
    ledger
        .publish(
            20,
            "investment.valuation_changed",
            json!({"portfolio_id": portfolio, "date": "2026-03-03", "base_currency": "EUR",
                   "market_value_minor": 500_000, "cost_minor": 450_000, "unrealised_gain_minor": 50_000}),
        )
        .await;

    // Spending: Groceries rolls up into Food; the transfer is not spending.
    // (One queue delivers the transactions in order: once the last is in,
    // all are.)
    let path = format!("/v1/analytics/spending/categories?{MARCH}");
    let spending = view_until(&app, &user, &path, |a| {
        // The categories come through a queue of their own.
        has(a, "currencies", "EUR")
            && of(a, "currencies", "EUR")["total"] == "-2442.00"
            && of(a, "currencies", "EUR")["categories"][0]["children"][0]["name"] == "Groceries"
    })
    .await;
    let eur = of(&spending, "currencies", "EUR");
    let rows = eur["categories"].as_array().unwrap();
    assert_eq!(rows[0]["name"], "Food");
    assert_eq!((rows[0]["amount"].as_str(), rows[0]["total"].as_str()), (Some("10.00"), Some("55.50")));
    assert_eq!(rows[0]["children"], json!([{"category_id": groceries, "name": "Groceries", "amount": "45.50"}]));
    assert_eq!((rows[1]["category_id"].clone(), rows[1]["total"].as_str()), (Value::Null, Some("2.50")));
    assert_eq!((rows[2]["name"].as_str(), rows[2]["total"].as_str()), (Some("Salary"), Some("-2500.00")));
    assert_eq!(eur["total"], "-2442.00");

    // Payees: one corner shop however it was spelt, the largest first.
    let payees = app.ok(&user, "GET", &format!("/v1/analytics/spending/payees?{MARCH}&limit=2"), None).await;
    let payees = &of(&payees, "currencies", "EUR")["payees"];
    assert_eq!(payees[0]["amount"], "55.50");
    assert_eq!(payees[0]["transactions"], 2);
    assert_eq!(payees[1], json!({"payee": "Kiosk", "amount": "2.50", "transactions": 1}));
    assert_eq!(payees.as_array().unwrap().len(), 2, "limit=2 keeps two: {payees}");

    let months = app.ok(&user, "GET", "/v1/analytics/income-expense?from=2026-02-01&to=2026-03-31", None).await;
    let eur = of(&months, "currencies", "EUR");
    assert_eq!(
        eur["months"],
        json!([{"month": "2026-02", "income": "0.00", "expense": "50.00", "net": "-50.00"},
               {"month": "2026-03", "income": "2500.00", "expense": "58.00", "net": "2442.00"}])
    );
    assert_eq!((eur["income"].as_str(), eur["expense"].as_str()), (Some("2500.00"), Some("108.00")));

    // Cash flow: both accounts' balances; the transfer nets to nothing.
    let flow = app.ok(&user, "GET", &format!("/v1/analytics/cash-flow?{MARCH}&interval=month"), None).await;
    let eur = of(&flow, "currencies", "EUR");
    assert_eq!(eur["opening_balance"], "950.00");
    assert_eq!(
        eur["periods"],
        json!([{"start": "2026-03-01", "end": "2026-03-31", "inflow": "2500.00", "outflow": "58.00",
                "transfers": "0.00", "net": "2442.00", "closing_balance": "3392.00"}])
    );
    let weeks = app.ok(&user, "GET", &format!("/v1/analytics/cash-flow?{MARCH}&interval=week"), None).await;
    let weeks = of(&weeks, "currencies", "EUR")["periods"].as_array().unwrap().clone();
    assert_eq!((weeks[0]["start"].as_str(), weeks[0]["end"].as_str()), (Some("2026-03-01"), Some("2026-03-01")));
    assert_eq!(
        (weeks[1]["start"].as_str(), weeks[1]["closing_balance"].as_str()),
        (Some("2026-03-02"), Some("3392.00"))
    );

    // Net worth: accounts day by day, and the portfolio from its valuation on.
    let worth = view_until(&app, &user, &format!("/v1/analytics/net-worth?{MARCH}"), |a| {
        has(a, "currencies", "EUR") && day(a, "EUR", "2026-03-31")["investments"] == "5000.00"
    })
    .await;
    assert_eq!(
        day(&worth, "EUR", "2026-03-01"),
        &json!({"date": "2026-03-01", "accounts": "3450.00", "investments": "0.00", "total": "3450.00"})
    );
    assert_eq!(day(&worth, "EUR", "2026-03-03")["total"], "8404.50");
    assert_eq!(day(&worth, "EUR", "2026-03-31")["accounts"], "3392.00");
    assert_eq!(of(&worth, "currencies", "EUR")["days"].as_array().unwrap().len(), 31);

    // The summary against February.
    let summary = app.ok(&user, "GET", "/v1/analytics/summary?from=2026-03-01&to=2026-03-28", None).await;
    let eur = of(&summary, "currencies", "EUR");
    assert_eq!(summary["previous_from"], "2026-02-01");
    assert_eq!(eur["expense"], json!({"current": "58.00", "previous": "50.00", "change": "8.00", "percent": "16.00"}));
    assert_eq!(eur["income"]["percent"], Value::Null);
    assert_eq!(eur["top_categories"][0]["name"], "Food");
}

#[tokio::test]
async fn updates_and_deletions_move_the_numbers() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let ledger = Producers::of(&app, &user).await;
    let account = ledger.account(0, "EUR", 0).await;
    let (lunch, taxi) = (Uuid::now_v7(), Uuid::now_v7());
    ledger.transaction(1, "transaction.created", lunch, &Tx::new(account, -1_200, "2026-03-04")).await;
    ledger.transaction(2, "transaction.created", taxi, &Tx::new(account, -3_000, "2026-03-04")).await;
    let path = format!("/v1/analytics/income-expense?{MARCH}");
    view_until(&app, &user, &path, |a| has(a, "currencies", "EUR") && of(a, "currencies", "EUR")["expense"] == "42.00")
        .await;

    // Lunch was dearer and a day later; the taxi never happened.
    ledger.transaction(3, "transaction.updated", lunch, &Tx::new(account, -1_550, "2026-03-05")).await;
    ledger.deleted(4, taxi).await;
    view_until(&app, &user, &path, |a| of(a, "currencies", "EUR")["expense"] == "15.50").await;
    let worth = app.ok(&user, "GET", &format!("/v1/analytics/net-worth?{MARCH}"), None).await;
    assert_eq!(day(&worth, "EUR", "2026-03-04")["accounts"], "0.00");
    assert_eq!(day(&worth, "EUR", "2026-03-05")["accounts"], "-15.50");
}

#[tokio::test]
async fn events_delivered_out_of_order_converge_on_the_latest_state() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let ledger = Producers::of(&app, &user).await;
    let account = ledger.account(0, "EUR", 0).await;
    let (edited, gone, kept) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());

    // An update that overtook its creation: the creation is out of date.
    ledger.transaction(20, "transaction.updated", edited, &Tx::new(account, -700, "2026-03-02")).await;
    ledger.transaction(10, "transaction.created", edited, &Tx::new(account, -500, "2026-03-01")).await;
    // A deletion that overtook the last update: the transaction stays gone.
    ledger.transaction(11, "transaction.created", gone, &Tx::new(account, -9_900, "2026-03-03")).await;
    ledger.deleted(30, gone).await;
    ledger.transaction(21, "transaction.updated", gone, &Tx::new(account, -8_800, "2026-03-03")).await;
    // A deletion before anything: a late creation does not bring it back.
    ledger.deleted(40, kept).await;
    ledger.transaction(12, "transaction.created", kept, &Tx::new(account, -100_000, "2026-03-03")).await;
    // A marker, last, to know the others were handled.
    ledger.transaction(50, "transaction.created", Uuid::now_v7(), &Tx::new(account, 1, "2026-03-31")).await;

    let months = view_until(&app, &user, &format!("/v1/analytics/income-expense?{MARCH}"), |a| {
        has(a, "currencies", "EUR") && of(a, "currencies", "EUR")["income"] == "0.01"
    })
    .await;
    assert_eq!(of(&months, "currencies", "EUR")["expense"], "7.00");
    let worth = app.ok(&user, "GET", &format!("/v1/analytics/net-worth?{MARCH}"), None).await;
    assert_eq!(day(&worth, "EUR", "2026-03-01")["accounts"], "0.00");
    assert_eq!(day(&worth, "EUR", "2026-03-03")["accounts"], "-7.00");
}

#[tokio::test]
async fn two_currencies_are_reported_apart_and_never_converted() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let ledger = Producers::of(&app, &user).await;
    let euros = ledger.account(0, "EUR", 10_000).await;
    let yen = ledger.account(1, "JPY", 50_000).await;
    ledger.transaction(2, "transaction.created", Uuid::now_v7(), &Tx::new(euros, -1_999, "2026-03-02")).await;
    ledger
        .transaction(
            3,
            "transaction.created",
            Uuid::now_v7(),
            &Tx { currency: "JPY", ..Tx::new(yen, -1_200, "2026-03-02") },
        )
        .await;

    let flow = view_until(&app, &user, &format!("/v1/analytics/cash-flow?{MARCH}"), |a| {
        has(a, "currencies", "JPY") && of(a, "currencies", "JPY")["periods"][0]["outflow"] == "1200"
    })
    .await;
    assert_eq!(flow["currencies"].as_array().unwrap().len(), 2);
    assert_eq!(of(&flow, "currencies", "EUR")["periods"][0]["closing_balance"], "80.01");
    assert_eq!(of(&flow, "currencies", "JPY")["periods"][0]["closing_balance"], "48800");
    let spending = app.ok(&user, "GET", &format!("/v1/analytics/spending/categories?{MARCH}"), None).await;
    assert_eq!(of(&spending, "currencies", "EUR")["total"], "19.99");
    assert_eq!(of(&spending, "currencies", "JPY")["total"], "1200");
}

/// Every view, for one user.
const VIEWS: [&str; 8] = [
    "/v1/analytics/spending/categories?from=2026-01-01&to=2026-12-31",
    "/v1/analytics/spending/payees?from=2026-01-01&to=2026-12-31",
    "/v1/analytics/income-expense?from=2026-01-01&to=2026-12-31",
    "/v1/analytics/cash-flow?from=2026-01-01&to=2026-12-31&interval=week",
    "/v1/analytics/net-worth?from=2026-01-01&to=2026-12-31",
    "/v1/analytics/budgets?from=2026-01-01&to=2026-12-31",
    "/v1/analytics/summary?from=2026-01-01&to=2026-12-31",
    "/v1/analytics/projection?days=365",
];

#[tokio::test]
async fn another_user_sees_none_of_a_users_numbers_in_any_view() {
    let app = spawn_app().await;
    let alice = app.signed_in_user().await;
    let bob = app.signed_in_user().await;
    let ledger = Producers::of(&app, &alice).await;
    let account = ledger.account(0, "EUR", 100_000).await;
    let food = ledger.category(1, "Food", None).await;
    ledger
        .transaction(
            2,
            "transaction.created",
            Uuid::now_v7(),
            &Tx { payee: Some("Shop"), category: Some(food), ..Tx::new(account, -4_200, "2026-03-02") },
        )
        .await;
    ledger
        .publish(
            3,
            "budget.created",
            json!({"budget_id": Uuid::now_v7(), "category_id": food, "currency": "EUR",
            "amount_minor": 10_000, "period": "monthly", "rollover": false, "starts_on": "2026-01-01"}),
        )
        .await;
    let tomorrow = (Utc::now().date_naive() + chrono::Days::new(1)).to_string();
    ledger
        .publish(
            4,
            "recurring.created",
            json!({"rule_id": Uuid::now_v7(), "account_id": account, "currency": "EUR",
            "amount_minor": -95_000, "payee": "Landlord", "category_id": null, "frequency": "monthly", "interval": 1,
            "start_date": tomorrow, "day_of_month": 1, "end_date": null, "max_occurrences": null,
            "occurrences_created": 0, "next_occurrence": tomorrow, "active": true}),
        )
        .await;
    ledger
        .publish(
            5,
            "investment.valuation_changed",
            json!({"portfolio_id": Uuid::now_v7(), "date": "2026-03-03",
            "base_currency": "EUR", "market_value_minor": 1, "cost_minor": 1, "unrealised_gain_minor": 0}),
        )
        .await;
    // Alice sees all of it.
    view_until(&app, &alice, VIEWS[5], |a| a["budgets"][0]["periods"][2]["actual"] == "42.00").await;
    let projection =
        view_until(&app, &alice, VIEWS[7], |a| a["occurrences"].as_array().is_some_and(|o| !o.is_empty())).await;
    assert_eq!(projection["occurrences"][0]["amount"], "-950.00");
    view_until(&app, &alice, VIEWS[4], |a| {
        has(a, "currencies", "EUR") && day(a, "EUR", "2026-12-31")["investments"] == "0.01"
    })
    .await;

    for path in VIEWS {
        let answer = app.ok(&bob, "GET", path, None).await;
        let lists: Vec<&Value> = ["currencies", "budgets", "occurrences", "current", "previous"]
            .iter()
            .filter_map(|k| answer.get(*k))
            .collect();
        assert!(!lists.is_empty(), "{path}: {answer}");
        for list in lists {
            assert_eq!(list, &json!([]), "{path} shows Bob Alice's numbers: {answer}");
        }
    }
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_parameter() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    for (path, status, field) in [
        ("/v1/analytics/income-expense?from=2026-03-02&to=2026-03-01", 422, "to"),
        ("/v1/analytics/net-worth?from=2020-01-01&to=2023-01-02", 422, "to"),
        ("/v1/analytics/summary?from=2026-13-01&to=2026-12-31", 400, "from"),
        ("/v1/analytics/budgets?from=2026-01-01&to=31.12.2026", 400, "to"),
        ("/v1/analytics/spending/categories?from=2026-01-01", 400, "query"),
        ("/v1/analytics/spending/payees?from=2026-01-01&to=2026-12-31&limit=0", 422, "limit"),
        ("/v1/analytics/spending/payees?from=2026-01-01&to=2026-12-31&limit=101", 422, "limit"),
        ("/v1/analytics/spending/payees?from=2026-01-01&to=2026-12-31&limit=-1", 400, "limit"),
        ("/v1/analytics/cash-flow?from=2026-01-01&to=2026-12-31&interval=fortnight", 400, "interval"),
        ("/v1/analytics/projection?days=0", 422, "days"),
        ("/v1/analytics/projection?days=366", 422, "days"),
        ("/v1/analytics/projection?days=many", 400, "days"),
    ] {
        let body = error_body(app.send(&user, "GET", path, None).await, status).await;
        let fields: Vec<&str> =
            body["details"].as_array().unwrap().iter().filter_map(|d| d["field"].as_str()).collect();
        assert!(fields.contains(&field), "{path}: expected {field} named in {body}");
    }
    // Without a token there is nothing to see.
    assert_eq!(app.get(VIEWS[0]).await.status(), 401);
}

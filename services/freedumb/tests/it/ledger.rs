//! A user's money: accounts, categories, transactions, transfers, splits,
//! listing, idempotent retries, and nobody else seeing any of it.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::helpers::{SignedIn, TestApp, error_body, spawn_app};

impl TestApp {
    pub async fn send(&self, user: &SignedIn, method: &str, path: &str, body: Option<Value>) -> reqwest::Response {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, self.url(path)).bearer_auth(&user.access_token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    pub async fn ok(&self, user: &SignedIn, method: &str, path: &str, body: Option<Value>) -> Value {
        let response = self.send(user, method, path, body).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() }
    }

    pub async fn account(&self, user: &SignedIn, currency: &str, opening: &str) -> Value {
        self.ok(
            user,
            "POST",
            "/v1/accounts",
            Some(json!({"name": "Checking", "kind": "checking", "currency": currency, "opening_balance": opening})),
        )
        .await
    }

    pub async fn spend(&self, user: &SignedIn, account: &Value, amount: &str, date: &str) -> Value {
        self.ok(
            user,
            "POST",
            "/v1/transactions",
            Some(json!({"account_id": account["id"], "amount": amount, "date": date, "payee": "Shop"})),
        )
        .await
    }

    pub async fn balance(&self, user: &SignedIn, account: &Value) -> String {
        let path = format!("/v1/accounts/{}", account["id"].as_str().unwrap());
        self.ok(user, "GET", &path, None).await["balance"].as_str().unwrap().to_owned()
    }
}

#[tokio::test]
async fn an_account_keeps_its_balance_and_hides_its_number() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let account = app
        .ok(
            &user,
            "POST",
            "/v1/accounts",
            Some(json!({
                "name": "  Everyday  ", "kind": "checking", "currency": "EUR",
                "opening_balance": "1250.00", "account_number": "DE89 3704 0044 0532 0130 00"
            })),
        )
        .await;
    assert_eq!(account["name"], "Everyday");
    assert_eq!(account["balance"], "1250.00");
    assert_eq!(account["account_number"], "••••3000");

    app.spend(&user, &account, "-42.50", "2026-11-01").await;
    app.spend(&user, &account, "0.10", "2026-11-02").await;
    app.spend(&user, &account, "0.20", "2026-11-03").await;
    assert_eq!(app.balance(&user, &account).await, "1207.80", "exact: 1250 - 42.5 + 0.1 + 0.2");

    // The number is encrypted at rest.
    let mut conn = connect(&app.db.url).await;
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT account_number_enc FROM ledger.accounts").fetch_one(&mut conn).await.unwrap();
    assert!(!String::from_utf8_lossy(&stored).contains("0532013000"));

    // Archived accounts leave the listing and take no new transactions.
    let id = account["id"].as_str().unwrap();
    app.ok(&user, "POST", &format!("/v1/accounts/{id}/archive"), None).await;
    let listed = app.ok(&user, "GET", "/v1/accounts", None).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 0);
    let all = app.ok(&user, "GET", "/v1/accounts?include_archived=true", None).await;
    assert_eq!(all["items"][0]["archived"], true);
    let body = error_body(
        app.send(
            &user,
            "POST",
            "/v1/transactions",
            Some(json!({"account_id": id, "amount": "-1.00", "date": "2026-11-04"})),
        )
        .await,
        409,
    )
    .await;
    assert_eq!(body["code"], "account_archived");
}

#[tokio::test]
async fn amounts_keep_the_precision_of_their_currency() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let yen = app.account(&user, "JPY", "10000").await;
    assert_eq!(app.spend(&user, &yen, "-1500", "2026-11-01").await["amount"], "-1500");
    let body = error_body(
        app.send(
            &user,
            "POST",
            "/v1/transactions",
            Some(json!({"account_id": yen["id"], "amount": "-15.5", "date": "2026-11-01"})),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(body["details"][0]["field"], "amount");
    // A number instead of a string is refused: amounts never pass through floats.
    error_body(
        app.send(
            &user,
            "POST",
            "/v1/transactions",
            Some(json!({"account_id": yen["id"], "amount": -15, "date": "2026-11-01"})),
        )
        .await,
        422,
    )
    .await;
}

#[tokio::test]
async fn a_transfer_moves_money_atomically_and_leaves_together() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let checking = app.account(&user, "USD", "500.00").await;
    let savings = app.account(&user, "USD", "0").await;
    let transfer = app
        .ok(&user, "POST", "/v1/transactions/transfers", Some(json!({
            "from_account_id": checking["id"], "to_account_id": savings["id"], "amount": "200.00", "date": "2026-11-05"
        })))
        .await;
    assert_eq!(transfer["from"]["amount"], "-200.00");
    assert_eq!(transfer["to"]["amount"], "200.00");
    assert_eq!(app.balance(&user, &checking).await, "300.00");
    assert_eq!(app.balance(&user, &savings).await, "200.00");

    // A leg's amount cannot change alone.
    let leg = transfer["from"]["id"].as_str().unwrap();
    error_body(
        app.send(&user, "PATCH", &format!("/v1/transactions/{leg}"), Some(json!({"amount": "-1.00"}))).await,
        409,
    )
    .await;

    // Deleting one leg deletes both.
    app.ok(&user, "DELETE", &format!("/v1/transactions/{leg}"), None).await;
    assert_eq!(app.balance(&user, &checking).await, "500.00");
    assert_eq!(app.balance(&user, &savings).await, "0.00");

    // Between currencies there is no rate to use.
    let euros = app.account(&user, "EUR", "0").await;
    error_body(
        app.send(
            &user,
            "POST",
            "/v1/transactions/transfers",
            Some(json!({
                "from_account_id": checking["id"], "to_account_id": euros["id"], "amount": "1.00", "date": "2026-11-05"
            })),
        )
        .await,
        422,
    )
    .await;
}

#[tokio::test]
async fn splits_must_add_up_to_the_amount() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let account = app.account(&user, "USD", "0").await;
    let categories = app.ok(&user, "GET", "/v1/categories", None).await;
    let id_of =
        |name: &str| categories["items"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()["id"].clone();
    let (groceries, restaurants) = (id_of("Groceries"), id_of("Restaurants"));

    let body = json!({"account_id": account["id"], "amount": "-100.00", "date": "2026-11-06", "splits": [
        {"category_id": groceries, "amount": "-60.00"}, {"category_id": restaurants, "amount": "-39.99"}]});
    let error = error_body(app.send(&user, "POST", "/v1/transactions", Some(body)).await, 422).await;
    assert!(error["message"].as_str().unwrap().contains("sum to -99.99 but the amount is -100.00"), "{error}");

    let split = app
        .ok(&user, "POST", "/v1/transactions", Some(json!({"account_id": account["id"], "amount": "-100.00", "date": "2026-11-06", "splits": [
            {"category_id": groceries, "amount": "-60.00"}, {"category_id": restaurants, "amount": "-40.00", "note": "lunch"}]})))
        .await;
    assert_eq!(split["splits"].as_array().unwrap().len(), 2);
    assert_eq!(split["category_id"], Value::Null);

    // Filtering by the parent category finds the split through its children.
    let food = id_of("Food");
    let page = app.ok(&user, "GET", &format!("/v1/transactions?category_id={}", food.as_str().unwrap()), None).await;
    assert_eq!(page["items"][0]["id"], split["id"]);
}

#[tokio::test]
async fn categories_start_with_defaults_and_can_be_merged_and_deleted() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let account = app.account(&user, "USD", "0").await;
    let defaults = app.ok(&user, "GET", "/v1/categories", None).await["items"].as_array().unwrap().len();
    assert!(defaults >= 15, "{defaults} default categories");

    let coffee = app.ok(&user, "POST", "/v1/categories", Some(json!({"name": "Coffee"}))).await;
    let cafe = app.ok(&user, "POST", "/v1/categories", Some(json!({"name": "Cafés"}))).await;
    let beans =
        app.ok(&user, "POST", "/v1/categories", Some(json!({"name": "Beans", "parent_id": coffee["id"]}))).await;
    // One level only.
    error_body(
        app.send(&user, "POST", "/v1/categories", Some(json!({"name": "Espresso", "parent_id": beans["id"]}))).await,
        422,
    )
    .await;
    // Names are unique among siblings, whatever the case.
    error_body(app.send(&user, "POST", "/v1/categories", Some(json!({"name": "coffee"}))).await, 409).await;

    let spent = app
        .ok(&user, "POST", "/v1/transactions", Some(json!({"account_id": account["id"], "amount": "-3.20", "date": "2026-11-07", "category_id": cafe["id"]})))
        .await;
    let renamed = app
        .ok(&user, "PATCH", &format!("/v1/categories/{}", cafe["id"].as_str().unwrap()), Some(json!({"name": "Cafes"})))
        .await;
    assert_eq!(renamed["name"], "Cafes");

    // Merging moves the transactions.
    app.ok(
        &user,
        "POST",
        &format!("/v1/categories/{}/merge", cafe["id"].as_str().unwrap()),
        Some(json!({"into": coffee["id"]})),
    )
    .await;
    let moved = app.ok(&user, "GET", &format!("/v1/transactions/{}", spent["id"].as_str().unwrap()), None).await;
    assert_eq!(moved["category_id"], coffee["id"]);

    // A parent with children cannot be deleted; a leaf can, and its
    // transactions become uncategorised.
    error_body(
        app.send(&user, "DELETE", &format!("/v1/categories/{}", coffee["id"].as_str().unwrap()), None).await,
        409,
    )
    .await;
    app.ok(&user, "DELETE", &format!("/v1/categories/{}", beans["id"].as_str().unwrap()), None).await;
    app.ok(&user, "DELETE", &format!("/v1/categories/{}", coffee["id"].as_str().unwrap()), None).await;
    let orphan = app.ok(&user, "GET", &format!("/v1/transactions/{}", spent["id"].as_str().unwrap()), None).await;
    assert_eq!(orphan["category_id"], Value::Null);
    assert_eq!(app.balance(&user, &account).await, "-3.20", "deleting a category loses no money");
}

#[tokio::test]
async fn updates_change_what_they_name_and_nothing_else() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let account = app.account(&user, "USD", "0").await;
    let created = app
        .ok(
            &user,
            "POST",
            "/v1/transactions",
            Some(json!({"account_id": account["id"], "amount": "-10.00", "date": "2026-11-08",
            "payee": "Bakery", "notes": "bread", "tags": ["food", "Food", "weekly"]})),
        )
        .await;
    assert_eq!(created["tags"], json!(["food", "weekly"]), "tags are de-duplicated");
    let id = created["id"].as_str().unwrap();
    let updated = app
        .ok(&user, "PATCH", &format!("/v1/transactions/{id}"), Some(json!({"amount": "-12.00", "notes": null})))
        .await;
    assert_eq!(updated["amount"], "-12.00");
    assert_eq!(updated["payee"], "Bakery", "absent fields are kept");
    assert_eq!(updated["notes"], Value::Null, "null clears");
    assert_eq!(app.balance(&user, &account).await, "-12.00");
    app.ok(&user, "DELETE", &format!("/v1/transactions/{id}"), None).await;
    error_body(app.send(&user, "GET", &format!("/v1/transactions/{id}"), None).await, 404).await;
    assert_eq!(app.balance(&user, &account).await, "0.00");
}

#[tokio::test]
async fn listing_filters_sorts_and_pages_stably_while_rows_arrive() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let account = app.account(&user, "USD", "0").await;
    for (i, day) in (1..=7).enumerate() {
        app.ok(&user, "POST", "/v1/transactions", Some(json!({"account_id": account["id"], "amount": format!("-{}.00", i + 1),
            "date": format!("2026-10-{day:02}"), "payee": if i % 2 == 0 { "Corner Shop" } else { "Rail" }, "tags": ["t"]}))).await;
    }

    // Page one of three, newest first.
    let first = app.ok(&user, "GET", "/v1/transactions?limit=3", None).await;
    let dates: Vec<&str> = first["items"].as_array().unwrap().iter().map(|t| t["date"].as_str().unwrap()).collect();
    assert_eq!(dates, ["2026-10-07", "2026-10-06", "2026-10-05"]);

    // New rows arrive, newer and older than the cursor.
    app.spend(&user, &account, "-100.00", "2026-10-31").await;
    app.spend(&user, &account, "-100.00", "2026-10-05").await;

    let mut seen: Vec<String> = dates.iter().map(|d| d.to_string()).collect();
    let mut cursor = first["next_cursor"].as_str().map(str::to_owned);
    let mut ids = HashSet::new();
    while let Some(c) = cursor {
        let page = app.ok(&user, "GET", &format!("/v1/transactions?limit=3&cursor={c}"), None).await;
        for t in page["items"].as_array().unwrap() {
            assert!(ids.insert(t["id"].as_str().unwrap().to_owned()), "no row twice");
            seen.push(t["date"].as_str().unwrap().to_owned());
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }
    assert!(!seen.contains(&"2026-10-31".to_owned()), "rows newer than the cursor do not shift later pages");
    assert!(seen.windows(2).all(|w| w[0] >= w[1]), "{seen:?}");
    assert!(seen.iter().filter(|d| *d == "2026-10-01").count() == 1, "nothing skipped: {seen:?}");

    // Filters.
    let shop = app.ok(&user, "GET", "/v1/transactions?q=corner%20shop", None).await;
    assert_eq!(shop["items"].as_array().unwrap().len(), 4);
    let range = app.ok(&user, "GET", "/v1/transactions?from=2026-10-02&to=2026-10-04&sort=date", None).await;
    let dates: Vec<&str> = range["items"].as_array().unwrap().iter().map(|t| t["date"].as_str().unwrap()).collect();
    assert_eq!(dates, ["2026-10-02", "2026-10-03", "2026-10-04"]);
    let amounts = app.ok(&user, "GET", "/v1/transactions?min_amount=-5&max_amount=-3.00&sort=amount", None).await;
    let values: Vec<&str> =
        amounts["items"].as_array().unwrap().iter().map(|t| t["amount"].as_str().unwrap()).collect();
    assert_eq!(values, ["-5.00", "-4.00", "-3.00"]);
    let wildcard = app.ok(&user, "GET", "/v1/transactions?q=%25", None).await;
    assert_eq!(wildcard["items"].as_array().unwrap().len(), 0, "% is matched literally");

    // Bad parameters are 400s.
    for query in
        ["limit=0", "limit=500", "sort=sideways", "from=yesterday", "min_amount=1e3", "cursor=garbage", "colour=red"]
    {
        error_body(app.send(&user, "GET", &format!("/v1/transactions?{query}"), None).await, 400).await;
    }
    let wrong_sort = first["next_cursor"].as_str().unwrap();
    error_body(app.send(&user, "GET", &format!("/v1/transactions?sort=amount&cursor={wrong_sort}"), None).await, 400)
        .await;
}

#[tokio::test]
async fn a_retried_post_creates_once_and_a_reused_key_is_refused() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let account = app.account(&user, "USD", "0").await;
    let body = json!({"account_id": account["id"], "amount": "-9.99", "date": "2026-11-09"});
    let post = |key: &'static str, body: Value| {
        app.client
            .post(app.url("/v1/transactions"))
            .bearer_auth(&user.access_token)
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };

    let first = post("retry-1", body.clone()).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = post("retry-1", body.clone()).await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first, "the original answer, byte for byte");

    // Concurrent retries of a new key still create one row.
    let (a, b, c) =
        tokio::join!(post("retry-2", body.clone()), post("retry-2", body.clone()), post("retry-2", body.clone()));
    let mut ids = HashSet::new();
    for response in [a, b, c] {
        ids.insert(response.unwrap().json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(app.balance(&user, &account).await, "-19.98", "two transactions in all");

    let reused =
        post("retry-1", json!({"account_id": account["id"], "amount": "-1.00", "date": "2026-11-09"})).await.unwrap();
    let error = error_body(reused, 422).await;
    assert_eq!(error["code"], "idempotency_key_reused");
}

#[tokio::test]
async fn the_balance_is_exact_with_eight_concurrent_writers() {
    let app = std::sync::Arc::new(spawn_app().await);
    let user = std::sync::Arc::new(app.signed_in_user().await);
    let account = app.account(&user, "USD", "1000.00").await;
    let mut writers = Vec::new();
    for writer in 0..8i64 {
        let (app, user, account) = (app.clone(), user.clone(), account.clone());
        writers.push(tokio::spawn(async move {
            let mut sum = 0i64;
            for i in 0..20i64 {
                let cents = (writer * 37 + i * 11) % 997 - 498;
                sum += cents;
                let amount =
                    format!("{}{}.{:02}", if cents < 0 { "-" } else { "" }, cents.abs() / 100, cents.abs() % 100);
                app.spend(&user, &account, &amount, "2026-11-10").await;
                // Reads race the writes, so a stale cached balance would show.
                app.balance(&user, &account).await;
            }
            sum
        }));
    }
    let mut total = 100_000i64;
    for writer in writers {
        total += writer.await.unwrap();
    }
    let expected = format!("{}{}.{:02}", if total < 0 { "-" } else { "" }, total.abs() / 100, total.abs() % 100);
    assert_eq!(app.balance(&user, &account).await, expected);
    let listed = app.ok(&user, "GET", "/v1/accounts", None).await;
    assert_eq!(listed["items"][0]["balance"], expected.as_str());
}

#[tokio::test]
async fn another_users_ids_are_404_everywhere() {
    let app = spawn_app().await;
    let owner = app.signed_in_user().await;
    let intruder = app.signed_in_user().await;
    let account = app.account(&owner, "USD", "100.00").await;
    let other = app.account(&owner, "USD", "0").await;
    let spent = app.spend(&owner, &account, "-1.00", "2026-11-12").await;
    let category = app.ok(&owner, "POST", "/v1/categories", Some(json!({"name": "Private"}))).await;
    let intruder_account = app.account(&intruder, "USD", "0").await;
    let rule = app
        .ok(&owner, "POST", "/v1/recurring", Some(json!({"account_id": account["id"], "amount": "-1.00", "frequency": "monthly", "start_date": "2099-01-01"})))
        .await;
    let (a, t, c) = (account["id"].as_str().unwrap(), spent["id"].as_str().unwrap(), category["id"].as_str().unwrap());
    let r = rule["id"].as_str().unwrap();

    let attempts: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", format!("/v1/accounts/{a}"), None),
        ("PATCH", format!("/v1/accounts/{a}"), Some(json!({"name": "mine now"}))),
        ("POST", format!("/v1/accounts/{a}/archive"), None),
        ("POST", format!("/v1/accounts/{a}/unarchive"), None),
        ("GET", format!("/v1/transactions/{t}"), None),
        ("PATCH", format!("/v1/transactions/{t}"), Some(json!({"amount": "-1000.00"}))),
        ("DELETE", format!("/v1/transactions/{t}"), None),
        (
            "POST",
            "/v1/transactions".to_owned(),
            Some(json!({"account_id": a, "amount": "-1.00", "date": "2026-11-12"})),
        ),
        (
            "POST",
            "/v1/transactions".to_owned(),
            Some(
                json!({"account_id": intruder_account["id"], "amount": "-1.00", "date": "2026-11-12", "category_id": c}),
            ),
        ),
        (
            "POST",
            "/v1/transactions/transfers".to_owned(),
            Some(
                json!({"from_account_id": a, "to_account_id": intruder_account["id"], "amount": "50.00", "date": "2026-11-12"}),
            ),
        ),
        (
            "POST",
            "/v1/transactions/transfers".to_owned(),
            Some(
                json!({"from_account_id": intruder_account["id"], "to_account_id": other["id"], "amount": "1.00", "date": "2026-11-12"}),
            ),
        ),
        ("PATCH", format!("/v1/categories/{c}"), Some(json!({"name": "renamed"}))),
        ("DELETE", format!("/v1/categories/{c}"), None),
        ("POST", format!("/v1/categories/{c}/merge"), Some(json!({"into": c}))),
        ("POST", "/v1/categories".to_owned(), Some(json!({"name": "Sub", "parent_id": c}))),
        ("GET", format!("/v1/recurring/{r}"), None),
        ("PATCH", format!("/v1/recurring/{r}"), Some(json!({"active": false}))),
        ("DELETE", format!("/v1/recurring/{r}"), None),
        (
            "POST",
            "/v1/recurring".to_owned(),
            Some(json!({"account_id": a, "amount": "-1.00", "frequency": "daily", "start_date": "2026-11-12"})),
        ),
        (
            "POST",
            "/v1/transactions/import".to_owned(),
            Some(
                json!({"account_id": a, "csv": "date,amount\n2026-11-12,-1.00\n", "mapping": {"date": "date", "amount": "amount"}}),
            ),
        ),
    ];
    for (method, path, body) in attempts {
        let response = app.send(&intruder, method, &path, body).await;
        let status = response.status();
        assert_eq!(status, 404, "{method} {path}");
        error_body(response, 404).await;
    }
    // Nothing leaked into the intruder's view, and nothing changed.
    assert_eq!(app.ok(&intruder, "GET", "/v1/transactions", None).await["items"].as_array().unwrap().len(), 0);
    assert_eq!(app.ok(&intruder, "GET", "/v1/recurring", None).await["items"].as_array().unwrap().len(), 0);
    assert_eq!(app.ok(&owner, "GET", &format!("/v1/recurring/{r}"), None).await["active"], true);
    assert_eq!(app.balance(&owner, &account).await, "99.00");
    assert_eq!(app.ok(&owner, "GET", &format!("/v1/accounts/{a}"), None).await["name"], "Checking");
}

#[tokio::test]
async fn bad_input_on_every_ledger_endpoint_is_a_4xx() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let account = app.account(&user, "USD", "0").await;
    let a = account["id"].as_str().unwrap();
    let cases: Vec<(&str, String, Value)> = vec![
        ("POST", "/v1/accounts".into(), json!({"name": "", "kind": "checking", "currency": "USD"})),
        ("POST", "/v1/accounts".into(), json!({"name": "x", "kind": "piggy_bank", "currency": "USD"})),
        ("POST", "/v1/accounts".into(), json!({"name": "x", "kind": "cash", "currency": "DOGE"})),
        (
            "POST",
            "/v1/accounts".into(),
            json!({"name": "x", "kind": "cash", "currency": "USD", "opening_balance": "1.234"}),
        ),
        (
            "POST",
            "/v1/accounts".into(),
            json!({"name": "x", "kind": "cash", "currency": "USD", "account_number": "12"}),
        ),
        ("PATCH", format!("/v1/accounts/{a}"), json!({"currency": "EUR"})),
        ("POST", "/v1/transactions".into(), json!({"account_id": a, "amount": "ten", "date": "2026-11-13"})),
        ("POST", "/v1/transactions".into(), json!({"account_id": a, "amount": "-1.00", "date": "2026-13-45"})),
        (
            "POST",
            "/v1/transactions".into(),
            json!({"account_id": "not-a-uuid", "amount": "-1.00", "date": "2026-11-13"}),
        ),
        (
            "POST",
            "/v1/transactions".into(),
            json!({"account_id": a, "amount": "-1.00", "date": "2026-11-13", "tags": ["x".repeat(41)]}),
        ),
        (
            "POST",
            "/v1/transactions".into(),
            json!({"account_id": a, "amount": "-1.00", "date": "2026-11-13", "splits": [{"amount": "-1.00"}]}),
        ),
        (
            "POST",
            "/v1/transactions/transfers".into(),
            json!({"from_account_id": a, "to_account_id": a, "amount": "1.00", "date": "2026-11-13"}),
        ),
        ("POST", "/v1/categories".into(), json!({"name": " "})),
        ("POST", "/v1/categories".into(), json!({"name": "x", "colour": "red"})),
    ];
    for (method, path, body) in cases {
        let response = app.send(&user, method, &path, Some(body.clone())).await;
        let status = response.status().as_u16();
        assert!((400..500).contains(&status), "{method} {path} {body}: {status}");
        error_body(response, status).await;
    }
    for path in ["/v1/accounts/not-a-uuid", "/v1/transactions/42", "/v1/categories/x/merge"] {
        let method = if path.ends_with("merge") { "POST" } else { "GET" };
        error_body(app.send(&user, method, path, Some(json!({"into": a}))).await, 400).await;
    }
    // Without a token, every route is a 401.
    for (method, path) in [("GET", "/v1/accounts"), ("POST", "/v1/transactions"), ("GET", "/v1/categories")] {
        let response = app
            .client
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), app.url(path))
            .send()
            .await
            .unwrap();
        error_body(response, 401).await;
    }
}

async fn connect(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url).await.unwrap()
}

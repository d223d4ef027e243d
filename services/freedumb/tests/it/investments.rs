//! The investment service as its users meet it: a portfolio, instruments,
//! buys, sells, a split and a dividend, and the holdings, lots, gains and
//! valuation that follow, with answers worked out by hand (and, for the
//! base-currency amounts, from the rate each answer shows, independently of
//! the service's arithmetic); another user's ids are 404 everywhere, and
//! bad input is a 4xx naming the field.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{SignedIn, TestApp, error_body, spawn_app};

impl TestApp {
    async fn portfolio(&self, user: &SignedIn, base: &str, method: &str) -> String {
        let body = json!({"name": "Brokerage", "base_currency": base, "cost_method": method});
        self.ok(user, "POST", "/v1/portfolios", Some(body)).await["id"].as_str().unwrap().to_owned()
    }

    async fn instrument(&self, user: &SignedIn, symbol: &str, currency: &str) -> String {
        let body = json!({"symbol": symbol, "exchange": "XNAS", "asset_class": "equity", "currency": currency});
        self.ok(user, "POST", "/v1/instruments", Some(body)).await["id"].as_str().unwrap().to_owned()
    }

    async fn activity(&self, user: &SignedIn, portfolio: &str, body: Value) -> Value {
        self.ok(user, "POST", &format!("/v1/portfolios/{portfolio}/activities"), Some(body)).await
    }

    async fn holding(&self, user: &SignedIn, portfolio: &str) -> Value {
        let holdings = self.ok(user, "GET", &format!("/v1/holdings?portfolio_id={portfolio}"), None).await;
        let items = holdings["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{holdings}");
        items[0].clone()
    }
}

fn trade(kind: &str, instrument: &str, date: &str, quantity: &str, price: &str, fee: &str) -> Value {
    json!({"kind": kind, "instrument_id": instrument, "date": date, "quantity": quantity, "unit_price": price, "fee": fee})
}

/// A two-decimal amount string as cents.
fn cents(text: &Value) -> i64 {
    let text = text.as_str().unwrap_or_else(|| panic!("an amount string: {text}"));
    let (negative, digits) = text.strip_prefix('-').map_or((false, text), |rest| (true, rest));
    let (whole, fraction) = digits.split_once('.').expect("two decimals");
    assert_eq!(fraction.len(), 2, "{text}");
    let value = whole.parse::<i64>().unwrap() * 100 + fraction.parse::<i64>().unwrap();
    if negative { -value } else { value }
}

/// `cents × rate`, rounded half away from zero to a cent: the conversion
/// done here in integers, from the rate string the API showed.
fn convert(cents: i64, rate: &Value) -> i64 {
    let rate = rate.as_str().unwrap();
    let (whole, fraction) = rate.split_once('.').unwrap_or((rate, ""));
    let scale = 10i128.pow(fraction.len() as u32);
    let mantissa: i128 = format!("{whole}{fraction}").parse().unwrap();
    let exact = i128::from(cents) * mantissa;
    let rounded = (exact.abs() + scale / 2) / scale;
    (if exact < 0 { -rounded } else { rounded }) as i64
}

/// A price with at most two decimals, as cents.
fn price_cents(price: &Value) -> i64 {
    let text = price.as_str().unwrap();
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    whole.parse::<i64>().unwrap() * 100 + format!("{fraction:0<2}").parse::<i64>().unwrap()
}

#[tokio::test]
async fn fifo_over_partial_sales_a_split_and_a_dividend() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let portfolio = app.portfolio(&user, "USD", "fifo").await;
    let acme = app.instrument(&user, "ACME", "USD").await;

    app.activity(&user, &portfolio, json!({"kind": "deposit", "date": "2025-01-02", "amount": "10000.00"})).await;
    let first = app.activity(&user, &portfolio, trade("buy", &acme, "2025-01-10", "10", "100.00", "5.00")).await;
    assert_eq!((first["gross"].as_str(), first["cash"].as_str()), (Some("1000.00"), Some("-1005.00")));
    let second = app.activity(&user, &portfolio, trade("buy", &acme, "2025-02-10", "10", "120.00", "5.00")).await;

    // 5 of the first lot (1005.00 for 10): cost 502.50; proceeds 650.00 − 5.00.
    let sale = app.activity(&user, &portfolio, trade("sell", &acme, "2025-03-10", "5", "130.00", "5.00")).await;
    assert_eq!(sale["realised_gain"], "142.50", "{sale}");
    assert_eq!(sale["disposals"].as_array().unwrap().len(), 1);
    assert_eq!(sale["disposals"][0]["lot_id"], first["id"]);
    assert_eq!(
        (sale["disposals"][0]["cost"].as_str(), sale["disposals"][0]["quantity"].as_str()),
        (Some("502.50"), Some("5"))
    );

    // 3 for 1: the first lot's 5 open become 15, the second lot's 10 become 30; costs stay.
    app.activity(
        &user,
        &portfolio,
        json!({"kind": "split", "instrument_id": acme, "date": "2025-04-01", "ratio": "3:1"}),
    )
    .await;
    let holding = app.holding(&user, &portfolio).await;
    assert_eq!(holding["quantity"], "45");
    let lots = holding["lots"].as_array().unwrap();
    assert_eq!((lots[0]["open_quantity"].as_str(), lots[0]["cost"].as_str()), (Some("15"), Some("502.50")));
    assert_eq!((lots[1]["open_quantity"].as_str(), lots[1]["cost"].as_str()), (Some("30"), Some("1205.00")));
    assert_eq!(lots[1]["unit_cost"], "40.16666667");

    app.activity(
        &user,
        &portfolio,
        json!({"kind": "dividend", "instrument_id": acme, "date": "2025-05-01", "amount": "12.34"}),
    )
    .await;
    // 20 after the split: all 15 of the first lot (502.50) and 5 of the
    // second (1205.00 × 5/30 = 200.83); proceeds 1000.00.
    let sale = app.activity(&user, &portfolio, trade("sell", &acme, "2025-06-02", "20", "50", "0")).await;
    let disposals = sale["disposals"].as_array().unwrap();
    assert_eq!(disposals.len(), 2);
    assert_eq!((disposals[0]["lot_id"].clone(), disposals[0]["cost"].as_str()), (first["id"].clone(), Some("502.50")));
    assert_eq!((disposals[1]["lot_id"].clone(), disposals[1]["cost"].as_str()), (second["id"].clone(), Some("200.83")));
    assert_eq!(cents(&disposals[0]["proceeds"]) + cents(&disposals[1]["proceeds"]), 100_000);
    assert_eq!(sale["realised_gain"], "296.67");

    let holding = app.holding(&user, &portfolio).await;
    assert_eq!(holding["quantity"], "25");
    assert_eq!(holding["cost"], "1004.17");
    assert_eq!(holding["realised_gain"], "439.17");
    assert_eq!(holding["dividends"], "12.34");
    // Valued at the latest (simulated) close, and marked as such.
    assert_eq!(holding["price"]["source"], "simulated");
    let value = 25 * price_cents(&holding["price"]["value"]);
    assert_eq!(cents(&holding["market_value"]), value);
    assert_eq!(cents(&holding["unrealised_gain"]), value - 100_417);
    assert_eq!(holding["market_value_base"], holding["market_value"], "a USD holding in a USD portfolio");

    // Cash: 10000 − 1005 − 1205 + 645 + 12.34 + 1000.
    let valuation = app.ok(&user, "GET", &format!("/v1/portfolios/{portfolio}/valuation"), None).await;
    assert_eq!(valuation["cash_base"], "9447.34", "{valuation}");
    assert_eq!(cents(&valuation["market_value"]), value);
    assert_eq!(cents(&valuation["total_value"]), value + 944_734);
    assert_eq!((valuation["realised_gain"].as_str(), valuation["dividends"].as_str()), (Some("439.17"), Some("12.34")));
    assert_eq!(valuation["sources"], json!(["simulated"]));
    assert_eq!(valuation["holdings"], 1);
}

#[tokio::test]
async fn costs_in_the_base_currency_use_the_rate_of_each_date() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let portfolio = app.portfolio(&user, "EUR", "fifo").await;
    let usd_stock = app.instrument(&user, "WIDG", "USD").await;

    let buy = app.activity(&user, &portfolio, trade("buy", &usd_stock, "2025-01-10", "10", "100.00", "0")).await;
    assert_eq!(
        (buy["currency"].as_str(), buy["fx"]["from"].as_str(), buy["fx"]["to"].as_str()),
        (Some("USD"), Some("USD"), Some("EUR"))
    );
    assert_eq!(buy["fx"]["source"], "simulated");
    let cost_base = convert(100_000, &buy["fx"]["rate"]);
    assert_eq!(cents(&buy["cash_base"]), -cost_base);

    let sale = app.activity(&user, &portfolio, trade("sell", &usd_stock, "2025-06-10", "4", "110.00", "0")).await;
    assert_ne!(sale["fx"]["rate"], buy["fx"]["rate"], "another date, another rate");
    let disposal = &sale["disposals"][0];
    // Cost at the purchase's rate, proceeds at the sale's.
    let sold_cost_base = (cost_base * 4 + 5) / 10;
    assert_eq!(cents(&disposal["cost_base"]), sold_cost_base);
    let proceeds_base = convert(44_000, &sale["fx"]["rate"]);
    assert_eq!(cents(&disposal["proceeds_base"]), proceeds_base);
    assert_eq!(sale["realised_gain"], "40.00");
    assert_eq!(cents(&sale["realised_gain_base"]), proceeds_base - sold_cost_base);

    let holding = app.holding(&user, &portfolio).await;
    assert_eq!((holding["cost"].as_str(), holding["base_currency"].as_str()), (Some("600.00"), Some("EUR")));
    assert_eq!(cents(&holding["cost_base"]), cost_base - sold_cost_base);
    let value = 6 * price_cents(&holding["price"]["value"]);
    let value_base = convert(value, &holding["fx"]["rate"]);
    assert_eq!(cents(&holding["market_value_base"]), value_base);
    assert_eq!(cents(&holding["unrealised_gain_base"]), value_base - (cost_base - sold_cost_base));
    assert_eq!(holding["fx"]["date"], holding["price"]["date"], "valued at today's rate");
}

#[tokio::test]
async fn the_average_cost_method_is_a_portfolio_choice_and_changing_it_remeasures_sales() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let portfolio = app.portfolio(&user, "USD", "average").await;
    let coin = app.instrument(&user, "COIN", "USD").await;
    app.activity(&user, &portfolio, trade("buy", &coin, "2025-01-10", "10", "1", "0")).await;
    app.activity(&user, &portfolio, trade("buy", &coin, "2025-01-11", "10", "3", "0")).await;
    let sale = app.activity(&user, &portfolio, trade("sell", &coin, "2025-01-12", "10", "2.5", "0")).await;
    // At the average of 2.00: 25.00 − 20.00.
    assert_eq!(sale["realised_gain"], "5.00");
    let holding = app.holding(&user, &portfolio).await;
    assert_eq!((holding["cost"].as_str(), holding["average_cost"].as_str()), (Some("20.00"), Some("2")));

    app.ok(&user, "PATCH", &format!("/v1/portfolios/{portfolio}"), Some(json!({"cost_method": "fifo"}))).await;
    let holding = app.holding(&user, &portfolio).await;
    // FIFO sells the 10 at 1.00: 25.00 − 10.00, and the 10 at 3.00 remain.
    assert_eq!((holding["realised_gain"].as_str(), holding["cost"].as_str()), (Some("15.00"), Some("30.00")));
    let id = sale["id"].as_str().unwrap();
    let sale = app.ok(&user, "GET", &format!("/v1/portfolios/{portfolio}/activities/{id}"), None).await;
    assert_eq!(sale["realised_gain"], "15.00");
}

#[tokio::test]
async fn selling_more_than_is_held_is_refused_naming_the_quantity() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let portfolio = app.portfolio(&user, "USD", "fifo").await;
    let acme = app.instrument(&user, "ACME", "USD").await;
    let path = format!("/v1/portfolios/{portfolio}/activities");
    let buy = app.activity(&user, &portfolio, trade("buy", &acme, "2025-03-01", "2", "10", "0")).await;

    let body = error_body(
        app.send(&user, "POST", &path, Some(trade("sell", &acme, "2025-03-02", "2.5", "10", "0"))).await,
        422,
    )
    .await;
    assert_eq!(body["details"][0]["field"], "quantity", "{body}");
    assert!(body["message"].as_str().unwrap().contains("2.5 of 2"), "{body}");
    // Before the buy there was nothing to sell.
    let body =
        error_body(app.send(&user, "POST", &path, Some(trade("sell", &acme, "2025-02-28", "1", "10", "0"))).await, 422)
            .await;
    assert_eq!(body["details"][0]["field"], "quantity", "{body}");
    // A transfer out is held to the same rule.
    let out = json!({"kind": "transfer_out", "instrument_id": acme, "date": "2025-03-05", "quantity": "3"});
    assert_eq!(
        error_body(app.send(&user, "POST", &path, Some(out)).await, 422).await["details"][0]["field"],
        "quantity"
    );

    // A backdated sale that would leave a later one short is refused too.
    let sale = app.activity(&user, &portfolio, trade("sell", &acme, "2025-03-10", "2", "12", "0")).await;
    let body =
        error_body(app.send(&user, "POST", &path, Some(trade("sell", &acme, "2025-03-05", "1", "11", "0"))).await, 422)
            .await;
    assert!(body["message"].as_str().unwrap().contains("2025-03-10"), "names the later sale: {body}");

    // The buy cannot go while the sale needs it; once the sale is gone, it can.
    let buy_path = format!("{path}/{}", buy["id"].as_str().unwrap());
    let body = error_body(app.send(&user, "DELETE", &buy_path, None).await, 409).await;
    assert_eq!(body["code"], "activity_needed", "{body}");
    app.ok(&user, "DELETE", &format!("{path}/{}", sale["id"].as_str().unwrap()), None).await;
    app.ok(&user, "DELETE", &buy_path, None).await;
    let holdings =
        app.ok(&user, "GET", &format!("/v1/holdings?portfolio_id={portfolio}&include_closed=true"), None).await;
    assert_eq!(holdings["items"], json!([]), "nothing left: {holdings}");
}

#[tokio::test]
async fn a_retried_activity_with_its_idempotency_key_is_recorded_once_and_announced() {
    let app = spawn_app().await;
    let announced = app.broker.watch("investment.#").await;
    let user = app.signed_in_user().await;
    let portfolio = app.portfolio(&user, "USD", "fifo").await;
    let path = format!("/v1/portfolios/{portfolio}/activities");
    let body = json!({"kind": "deposit", "date": "2025-01-02", "amount": "250.00", "note": "first\nsecond line"});
    let send = || {
        app.client
            .post(app.url(&path))
            .bearer_auth(&user.access_token)
            .header("Idempotency-Key", "deposit-1")
            .json(&body)
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = send().await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);
    let list = app.ok(&user, "GET", &path, None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["note"], "first\nsecond line");

    let events = app.broker.take_exactly(&announced, 1, Duration::from_secs(15)).await;
    let event = events[0].event();
    assert_eq!(event.kind, "investment.activity_recorded");
    assert_eq!(event.data["activity_id"], first["id"]);
    assert_eq!((event.data["cash_minor"].as_i64(), event.data["version"].as_i64()), (Some(25_000), Some(1)));
}

#[tokio::test]
async fn another_user_s_ids_are_404_on_every_endpoint() {
    let app = spawn_app().await;
    let owner = app.signed_in_user().await;
    let portfolio = app.portfolio(&owner, "USD", "fifo").await;
    let acme = app.instrument(&owner, "ACME", "USD").await;
    let buy = app.activity(&owner, &portfolio, trade("buy", &acme, "2025-01-10", "1", "10", "0")).await;
    let activity = buy["id"].as_str().unwrap();

    let stranger = app.signed_in_user().await;
    let theirs = app.portfolio(&stranger, "USD", "fifo").await;
    let deposit = json!({"kind": "deposit", "date": "2025-01-02", "amount": "1.00"});
    let activities = format!("/v1/portfolios/{portfolio}/activities");
    let requests: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", format!("/v1/portfolios/{portfolio}"), None),
        ("PATCH", format!("/v1/portfolios/{portfolio}"), Some(json!({"name": "Mine now"}))),
        ("GET", format!("/v1/portfolios/{portfolio}/valuation"), None),
        ("GET", format!("/v1/portfolios/{portfolio}/performance"), None),
        ("GET", activities.clone(), None),
        ("POST", activities.clone(), Some(deposit)),
        ("GET", format!("{activities}/{activity}"), None),
        ("DELETE", format!("{activities}/{activity}"), None),
        ("GET", format!("/v1/holdings?portfolio_id={portfolio}"), None),
        ("GET", format!("/v1/instruments/{acme}"), None),
        ("DELETE", format!("/v1/instruments/{acme}"), None),
        ("DELETE", format!("/v1/portfolios/{portfolio}"), None),
        // The owner's activity through the stranger's own portfolio.
        ("GET", format!("/v1/portfolios/{theirs}/activities/{activity}"), None),
        ("DELETE", format!("/v1/portfolios/{theirs}/activities/{activity}"), None),
    ];
    for (method, path, body) in requests {
        let body = error_body(app.send(&stranger, method, &path, body).await, 404).await;
        assert_eq!(body["code"], "not_found", "{method} {path}");
    }
    // The owner's instrument is not one the stranger can trade.
    let path = format!("/v1/portfolios/{theirs}/activities");
    let body = error_body(
        app.send(&stranger, "POST", &path, Some(trade("buy", &acme, "2025-01-10", "1", "1", "0"))).await,
        422,
    )
    .await;
    assert_eq!(body["details"][0]["field"], "instrument_id");
    // Lists show only one's own, and the owner's data is untouched.
    for path in ["/v1/instruments", "/v1/holdings"] {
        assert_eq!(app.ok(&stranger, "GET", path, None).await["items"], json!([]), "{path}");
    }
    assert_eq!(app.ok(&stranger, "GET", "/v1/portfolios", None).await["items"].as_array().unwrap().len(), 1);
    assert_eq!(app.holding(&owner, &portfolio).await["quantity"], "1");
    assert_eq!(app.ok(&owner, "GET", &format!("/v1/portfolios/{portfolio}"), None).await["name"], "Brokerage");
}

/// The `details[].field` values of a 4xx answer.
async fn fields(response: reqwest::Response, status: u16) -> Vec<String> {
    let body = error_body(response, status).await;
    body["details"].as_array().unwrap_or(&Vec::new()).iter().map(|d| d["field"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn bad_input_is_refused_on_every_endpoint_naming_the_field() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let portfolio = app.portfolio(&user, "USD", "fifo").await;
    let acme = app.instrument(&user, "ACME", "USD").await;
    let yen = app.instrument(&user, "7203", "JPY").await;

    // Portfolios.
    let cases = [
        (json!({"name": "a\u{0}b", "base_currency": "USD"}), "name"),
        (json!({"name": "   ", "base_currency": "USD"}), "name"),
        (json!({"name": "P", "base_currency": "XYZ"}), "base_currency"),
        (json!({"name": "P", "base_currency": "USD", "cost_method": "lifo"}), "cost_method"),
        (json!({"name": "P"}), "body"),
        (json!(["P", "USD"]), "body"),
    ];
    for (body, field) in cases {
        let response = app.send(&user, "POST", "/v1/portfolios", Some(body.clone())).await;
        assert_eq!(fields(response, 422).await, [field], "{body}");
    }
    let path = format!("/v1/portfolios/{portfolio}");
    assert_eq!(fields(app.send(&user, "PATCH", &path, Some(json!({"name": ""}))).await, 422).await, ["name"]);
    assert_eq!(
        fields(app.send(&user, "PATCH", &path, Some(json!({"base_currency": "EUR"}))).await, 422).await,
        ["base_currency"],
        "the base currency cannot change"
    );
    error_body(app.send(&user, "GET", "/v1/portfolios/not-a-uuid", None).await, 400).await;

    // Instruments.
    let cases = [
        (json!({"symbol": "A B", "exchange": "XNAS", "asset_class": "equity", "currency": "USD"}), "symbol"),
        (json!({"symbol": "", "exchange": "XNAS", "asset_class": "equity", "currency": "USD"}), "symbol"),
        (json!({"symbol": "X", "exchange": "X-NAS", "asset_class": "equity", "currency": "USD"}), "exchange"),
        (json!({"symbol": "X", "exchange": "XNAS", "asset_class": "stock", "currency": "USD"}), "asset_class"),
        (json!({"symbol": "X", "exchange": "XNAS", "asset_class": "equity", "currency": "usd"}), "currency"),
        (
            json!({"symbol": "X", "exchange": "XNAS", "asset_class": "equity", "currency": "USD", "name": "a\nb"}),
            "name",
        ),
    ];
    for (body, field) in cases {
        let response = app.send(&user, "POST", "/v1/instruments", Some(body.clone())).await;
        assert_eq!(fields(response, 422).await, [field], "{body}");
    }
    let again = json!({"symbol": "acme", "exchange": "xnas", "asset_class": "etf", "currency": "USD"});
    let body = error_body(app.send(&user, "POST", "/v1/instruments", Some(again)).await, 409).await;
    assert_eq!(body["code"], "instrument_exists", "symbols are kept in capitals: {body}");
    // Activities: each kind's fields, and each field's rule.
    let path = format!("/v1/portfolios/{portfolio}/activities");
    let tomorrow = (chrono::Utc::now().date_naive() + chrono::Days::new(1)).to_string();
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (json!({"kind": "buy", "instrument_id": acme, "date": "2025-01-02", "unit_price": "1"}), vec!["quantity"]),
        (
            json!({"kind": "buy", "instrument_id": acme, "date": "2025-01-02", "quantity": "1", "unit_price": "1", "amount": "1.00"}),
            vec!["amount"],
        ),
        (json!({"kind": "deposit", "date": "2025-01-02", "amount": "1.00", "ratio": "2:1"}), vec!["ratio"]),
        (json!({"kind": "split", "instrument_id": acme, "date": "2025-01-02"}), vec!["ratio"]),
        (trade("buy", &acme, "2025-01-02", "1.000000001", "1", "0"), vec!["quantity"]),
        (trade("buy", &acme, "2025-01-02", "-1", "1", "0"), vec!["quantity"]),
        (trade("buy", &acme, "2025-01-02", "0", "1", "0"), vec!["quantity"]),
        (
            json!({"kind": "buy", "instrument_id": acme, "date": "2025-01-02", "quantity": 1, "unit_price": "1"}),
            vec!["quantity"],
        ),
        (trade("buy", &acme, "2025-01-02", "1", "abc", "0"), vec!["unit_price"]),
        (trade("buy", &acme, "2025-01-02", "999999999999", "999999999", "0"), vec!["unit_price"]),
        (trade("buy", &acme, "2025-01-02", "1", "1", "0.001"), vec!["fee"]),
        (trade("buy", &acme, "2025-01-02", "1", "1", "-1.00"), vec!["fee"]),
        (trade("buy", &acme, &tomorrow, "1", "1", "0"), vec!["date"]),
        (trade("buy", &acme, "2025-1-2", "1", "1", "0"), vec!["date"]),
        (trade("buy", &acme, "1899-12-31", "1", "1", "0"), vec!["date"]),
        (trade("gift", &acme, "2025-01-02", "1", "1", "0"), vec!["kind"]),
        (json!({"kind": "split", "instrument_id": acme, "date": "2025-01-02", "ratio": "0:1"}), vec!["ratio"]),
        (json!({"kind": "split", "instrument_id": acme, "date": "2025-01-02", "ratio": "2:2"}), vec!["ratio"]),
        (json!({"kind": "deposit", "date": "2025-01-02", "amount": "0"}), vec!["amount"]),
        (json!({"kind": "deposit", "date": "2025-01-02", "amount": "1.00", "currency": "XYZ"}), vec!["currency"]),
        (json!({"kind": "dividend", "instrument_id": yen, "date": "2025-01-02", "amount": "1.5"}), vec!["amount"]),
        (json!({"kind": "fee", "date": "2025-01-02", "amount": "1.00", "note": "a\u{1b}b"}), vec!["note"]),
        (json!({"kind": "deposit", "date": "2025-01-02", "amount": "1.00", "surprise": true}), vec!["surprise"]),
        (
            json!({"kind": "buy", "instrument_id": "not-a-uuid", "date": "2025-01-02", "quantity": "1", "unit_price": "1"}),
            vec!["instrument_id"],
        ),
        (
            json!({"kind": "buy", "date": "2025-01-02", "quantity": "1", "unit_price": "1", "currency": "USD"}),
            vec!["instrument_id", "currency"],
        ),
    ];
    for (body, expected) in cases {
        let response = app.send(&user, "POST", &path, Some(body.clone())).await;
        assert_eq!(fields(response, 422).await, expected, "{body}");
    }
    app.activity(&user, &portfolio, trade("buy", &acme, "2025-01-02", "1", "1.50", "0")).await;
    let body = error_body(app.send(&user, "DELETE", &format!("/v1/instruments/{acme}"), None).await, 409).await;
    assert_eq!(body["code"], "instrument_in_use");
    let body = trade("sell", &acme, "2025-01-03", "1", "1.50", "2.00");
    assert_eq!(fields(app.send(&user, "POST", &path, Some(body)).await, 422).await, ["fee"], "a fee above the gross");
    error_body(app.send(&user, "GET", &format!("{path}/not-a-uuid"), None).await, 400).await;
    error_body(app.send(&user, "DELETE", &format!("{path}/{}", uuid::Uuid::new_v4()), None).await, 404).await;

    // Holdings.
    for query in ["portfolio_id=nope", "include_closed=maybe", "extra=1"] {
        error_body(app.send(&user, "GET", &format!("/v1/holdings?{query}"), None).await, 400).await;
    }
    error_body(app.send(&user, "GET", &format!("/v1/holdings?portfolio_id={}", uuid::Uuid::new_v4()), None).await, 404)
        .await;
    error_body(app.send(&user, "GET", "/v1/portfolios/nope/valuation", None).await, 400).await;

    // Performance: the period's bounds.
    let performance = format!("/v1/portfolios/{portfolio}/performance");
    for (query, field) in [
        ("from=2025-02-01&to=2025-01-01", "to"),
        (&*format!("to={tomorrow}"), "to"),
        ("from=2000-01-01&to=2010-12-31", "to"),
        ("from=1900-01-01&to=1900-01-02", "from"),
    ] {
        let response = app.send(&user, "GET", &format!("{performance}?{query}"), None).await;
        assert_eq!(fields(response, 422).await, [field], "{query}");
    }
    error_body(app.send(&user, "GET", &format!("{performance}?from=2025-13-01"), None).await, 400).await;
}

#[tokio::test]
async fn the_openapi_document_states_the_service_s_routes_and_rules() {
    let app = spawn_app().await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    for path in [
        "/v1/portfolios",
        "/v1/portfolios/{id}",
        "/v1/portfolios/{id}/activities",
        "/v1/portfolios/{id}/activities/{activity_id}",
        "/v1/portfolios/{id}/activities/import",
        "/v1/portfolios/{id}/valuation",
        "/v1/portfolios/{id}/performance",
        "/v1/instruments",
        "/v1/instruments/{id}",
        "/v1/holdings",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    let request = &doc["components"]["schemas"]["NewActivity"];
    let kinds: Vec<&str> = request["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["properties"]["kind"]["enum"][0].as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), 10, "{kinds:?}");
    let quantity = &doc["components"]["schemas"]["NewActivity"]["oneOf"][0]["properties"]["quantity"];
    // Its import is its own schema, not the ledger's of the same shape.
    let import = &doc["paths"]["/v1/portfolios/{id}/activities/import"]["post"]["requestBody"]["content"]["application/json"]
        ["schema"]["$ref"];
    let import = &doc["components"]["schemas"][import.as_str().unwrap().rsplit('/').next().unwrap()];
    assert!(
        import["properties"].get("mapping").is_some() && import["properties"].get("account_id").is_none(),
        "{import}"
    );
    assert!(quantity["pattern"].as_str().unwrap().contains("{0,11}"), "{quantity}");
}

#[tokio::test]
async fn a_broker_export_is_imported_once_and_a_file_that_oversells_imports_nothing() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let portfolio = app.portfolio(&user, "USD", "fifo").await;
    app.instrument(&user, "ACME", "USD").await;
    let path = format!("/v1/portfolios/{portfolio}/activities/import");
    // A European broker's export: semicolons, day-first dates, decimal
    // commas, sales and fees as negative numbers, its own word for dividends.
    let csv = "Date;Type;Symbol;Shares;Price;Commission;Amount;Currency;Comment\n\
               02.01.2025;Deposit;;;;;5.000,00;USD;\n\
               10.01.2025;BUY;ACME;10;100,00;-5,00;-1.005,00;;first lot\n\
               10.02.2025;BUY;ACME;10;120,00;0;;;\n\
               10.03.2025;SELL;ACME;-15;130,00;0;;;\n\
               01.04.2025;DIV;ACME;;;;4,20;;\n\
               05.04.2025;SPLIT;ACME;;;;;;\n\
               06.04.2025;BUY;NOPE;1;1;;;;\n\
               07.04.2025;GIFT;ACME;1;1;;;;\n";
    let mapping = json!({"date": "Date", "kind": "Type", "symbol": "Symbol", "quantity": "Shares", "unit_price": "Price",
        "fee": "Commission", "amount": "Amount", "currency": "Currency", "note": "Comment"});
    let body = json!({"csv": csv, "mapping": mapping, "kinds": {"DIV": "dividend"}, "date_format": "%d.%m.%Y",
        "delimiter": ";", "decimal_comma": true});
    let summary = app.ok(&user, "POST", &path, Some(body.clone())).await;
    assert_eq!((summary["created"].as_u64(), summary["rejected"].as_u64()), (Some(5), Some(3)), "{summary}");
    let rows: Vec<u64> = summary["rejections"].as_array().unwrap().iter().map(|r| r["row"].as_u64().unwrap()).collect();
    assert_eq!(rows, [7, 8, 9], "{summary}");
    assert!(summary["rejections"][0]["reason"].as_str().unwrap().contains("needs ratio"), "{summary}");
    assert!(summary["rejections"][1]["reason"].as_str().unwrap().contains("NOPE"), "{summary}");

    let holding = app.holding(&user, &portfolio).await;
    assert_eq!((holding["quantity"].as_str(), holding["cost"].as_str()), (Some("5"), Some("600.00")));
    assert_eq!((holding["realised_gain"].as_str(), holding["dividends"].as_str()), (Some("345.00"), Some("4.20")));
    let valuation = app.ok(&user, "GET", &format!("/v1/portfolios/{portfolio}/valuation"), None).await;
    // 5000 − 1005 − 1200 + 1950 + 4.20
    assert_eq!(valuation["cash_base"], "4749.20");
    let activities = app.ok(&user, "GET", &format!("/v1/portfolios/{portfolio}/activities"), None).await;
    assert_eq!(activities["items"][1]["note"], "first lot");
    assert_eq!(activities["items"][1]["fee"], "5.00");

    // The same file again: every good row is already there.
    let again = app.ok(&user, "POST", &path, Some(body)).await;
    assert_eq!((again["created"].as_u64(), again["skipped"].as_u64()), (Some(0), Some(5)), "{again}");

    // A file selling more than is held imports nothing and names the row.
    let oversold = "Date;Type;Symbol;Shares;Price\n11.04.2025;BUY;ACME;1;1,00\n12.04.2025;SELL;ACME;-7;1,00\n";
    let mapping =
        json!({"date": "Date", "kind": "Type", "symbol": "Symbol", "quantity": "Shares", "unit_price": "Price"});
    let body = json!({"csv": oversold, "mapping": mapping, "date_format": "%d.%m.%Y", "delimiter": ";", "decimal_comma": true});
    let refused = error_body(app.send(&user, "POST", &path, Some(body)).await, 422).await;
    assert_eq!(refused["details"][0]["field"], "csv", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("row 3"), "{refused}");
    assert_eq!(app.holding(&user, &portfolio).await["quantity"], "5", "nothing was imported");

    // A mapping naming a column the file lacks.
    let body = json!({"csv": "Date,Type\n", "mapping": {"date": "Date", "kind": "Kind"}});
    assert_eq!(fields(app.send(&user, "POST", &path, Some(body)).await, 422).await, ["mapping.kind"]);
}

fn days_ago(days: u64) -> String {
    (chrono::Utc::now().date_naive() - chrono::Days::new(days)).to_string()
}

#[tokio::test]
async fn foreign_cash_gains_only_through_the_currency_and_the_returns_say_so() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let portfolio = app.portfolio(&user, "EUR", "fifo").await;
    let deposit = json!({"kind": "deposit", "date": days_ago(30), "amount": "1000.00", "currency": "USD"});
    let deposit = app.activity(&user, &portfolio, deposit).await;

    let path = format!("/v1/portfolios/{portfolio}/performance?from={}", days_ago(29));
    let performance = app.ok(&user, "GET", &path, None).await;
    assert_eq!(performance["history"].as_array().unwrap().len(), 30);
    // Held at the rates of the day before the period, 1000 USD never moves.
    assert_eq!(performance["time_weighted_without_currency"], "0", "{performance}");
    assert_eq!(performance["money_weighted_without_currency"], "0");
    // With the currency: the euro value at today's rate over the value at
    // the deposit's (the day before the period), each rounded to a cent.
    let valuation = app.ok(&user, "GET", &format!("/v1/portfolios/{portfolio}/valuation"), None).await;
    let start = convert(100_000, &deposit["fx"]["rate"]);
    let end = convert(100_000, &valuation["cash"][0]["fx"]["rate"]);
    assert_eq!((cents(&performance["start_value"]), cents(&performance["end_value"])), (start, end));
    assert_eq!(performance["end_value"], valuation["total_value"]);
    let expected = end as f64 / start as f64 - 1.0;
    let twr: f64 = performance["time_weighted"].as_str().unwrap().parse().unwrap();
    assert!((twr - expected).abs() < 1e-8, "{twr} against {expected}");
    assert_eq!(performance["sources"], json!(["simulated"]));
}

#[tokio::test]
async fn time_and_money_weighted_returns_agree_with_the_history_they_come_from() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let portfolio = app.portfolio(&user, "USD", "fifo").await;
    let acme = app.instrument(&user, "ACME", "USD").await;
    let deposit = |date: String, amount: &str| json!({"kind": "deposit", "date": date, "amount": amount});
    app.activity(&user, &portfolio, deposit(days_ago(40), "10000.00")).await;
    app.activity(&user, &portfolio, trade("buy", &acme, &days_ago(39), "10", "100", "1.00")).await;
    app.activity(&user, &portfolio, trade("sell", &acme, &days_ago(20), "5", "150", "1.00")).await;
    app.activity(&user, &portfolio, deposit(days_ago(15), "500.00")).await;
    app.activity(&user, &portfolio, json!({"kind": "withdrawal", "date": days_ago(10), "amount": "200.00"})).await;
    app.activity(
        &user,
        &portfolio,
        json!({"kind": "dividend", "instrument_id": acme, "date": days_ago(5), "amount": "3.00"}),
    )
    .await;

    // From the first activity (the default) to today (the default).
    let performance = app.ok(&user, "GET", &format!("/v1/portfolios/{portfolio}/performance"), None).await;
    assert_eq!(
        (performance["from"].as_str(), performance["start_value"].as_str()),
        (Some(&*days_ago(40)), Some("0.00"))
    );
    assert_eq!(performance["net_flows"], "10300.00");
    let history = performance["history"].as_array().unwrap();
    assert_eq!(history.len(), 41);
    let valuation = app.ok(&user, "GET", &format!("/v1/portfolios/{portfolio}/valuation"), None).await;
    assert_eq!(performance["end_value"], valuation["total_value"], "two ways to the same value");
    // The first day: the 10000 deposited, nothing bought yet.
    assert_eq!(cents(&history[0]["value"]), 1_000_000);
    assert_eq!(history[0]["flow"], "10000.00");

    // Daily linking, recomputed here from the history the answer shows.
    let mut previous = 0i64;
    let mut growth = 1.0f64;
    for day in history {
        let (value, flow) = (cents(&day["value"]), cents(&day["flow"]));
        if previous + flow > 0 {
            growth *= value as f64 / (previous + flow) as f64;
        }
        previous = value;
    }
    let twr: f64 = performance["time_weighted"].as_str().unwrap().parse().unwrap();
    assert!((twr - (growth - 1.0)).abs() < 1e-7, "{twr} against {}", growth - 1.0);

    // The money-weighted rate balances the investor's flows.
    let rate: f64 = performance["money_weighted"].as_str().unwrap().parse().unwrap();
    let mut npv = 0.0;
    for (i, day) in history.iter().enumerate() {
        npv -= cents(&day["flow"]) as f64 / (1.0 + rate).powf((i + 1) as f64 / 365.0);
    }
    npv += cents(&history[40]["value"]) as f64 / (1.0 + rate).powf(41.0 / 365.0);
    assert!(npv.abs() < 1.0, "a residue of {npv} cents at {rate}");
    // A US dollar portfolio of US dollar holdings has no currency effect.
    assert_eq!(performance["time_weighted_without_currency"], performance["time_weighted"]);
    assert_eq!(performance["money_weighted_without_currency"], performance["money_weighted"]);
}

/// A provider that quotes every symbol at `close` (pairs at `rate`) on every
/// day it is asked for, counting the requests that carried its key; or
/// fails with 500 once `broken` is set.
struct Provider {
    url: String,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

const PROVIDER_KEY: &str = "provider-key-for-tests";

async fn provider(close: &'static str, rate: &'static str) -> Provider {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let broken = std::sync::Arc::new(AtomicBool::new(false));
    let (counted, failing) = (hits.clone(), broken.clone());
    let answer = move |headers: axum::http::HeaderMap,
                       axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>| {
        let (counted, failing) = (counted.clone(), failing.clone());
        async move {
            if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("apikey {PROVIDER_KEY}")) {
                return (axum::http::StatusCode::UNAUTHORIZED, String::new());
            }
            counted.fetch_add(1, Ordering::SeqCst);
            if failing.load(Ordering::SeqCst) {
                return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, String::new());
            }
            let price = if q["symbol"].contains('/') { rate } else { close };
            let (mut day, end) = (
                q["start_date"].parse::<chrono::NaiveDate>().unwrap(),
                q["end_date"].parse::<chrono::NaiveDate>().unwrap(),
            );
            let mut values = Vec::new();
            while day <= end {
                values.push(json!({"datetime": day.to_string(), "close": price}));
                day = day.succ_opt().unwrap();
            }
            (
                axum::http::StatusCode::OK,
                json!({"meta": {"symbol": q["symbol"]}, "values": values, "status": "ok"}).to_string(),
            )
        }
    };
    let app = axum::Router::new().route("/v1/time_series", axum::routing::get(answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Provider { url, hits, broken }
}

#[tokio::test]
async fn with_a_provider_key_prices_and_rates_are_the_provider_s_and_its_outage_is_a_503() {
    let provider = provider("150.00", "0.9").await;
    let url = provider.url.clone();
    let app = crate::helpers::spawn_app_with(|env| {
        env.insert("MARKET_DATA_API_KEY".into(), PROVIDER_KEY.into());
        env.insert("MARKET_DATA_API_URL".into(), url);
        env.insert("MARKET_DATA_ATTEMPTS".into(), "1".into());
    })
    .await;
    let user = app.signed_in_user().await;
    let portfolio = app.portfolio(&user, "EUR", "fifo").await;
    let acme = app.instrument(&user, "ACME", "USD").await;

    let buy = app.activity(&user, &portfolio, trade("buy", &acme, &days_ago(5), "10", "100", "0")).await;
    assert_eq!((buy["fx"]["rate"].as_str(), buy["fx"]["source"].as_str()), (Some("0.9"), Some("twelve_data")));
    assert_eq!(buy["cash_base"], "-900.00");
    let holding = app.holding(&user, &portfolio).await;
    assert_eq!(
        (holding["price"]["value"].as_str(), holding["price"]["source"].as_str()),
        (Some("150"), Some("twelve_data"))
    );
    assert_eq!(
        (holding["market_value_base"].as_str(), holding["unrealised_gain_base"].as_str()),
        (Some("1350.00"), Some("450.00"))
    );
    let valuation = app.ok(&user, "GET", &format!("/v1/portfolios/{portfolio}/valuation"), None).await;
    assert_eq!(valuation["sources"], json!(["twelve_data"]));
    let before = provider.hits.load(std::sync::atomic::Ordering::SeqCst);
    app.holding(&user, &portfolio).await;
    assert_eq!(provider.hits.load(std::sync::atomic::Ordering::SeqCst), before, "served from the cache");

    // A quote the cache does not have, while the provider fails: a 503 that says when to retry.
    provider.broken.store(true, std::sync::atomic::Ordering::SeqCst);
    let path = format!("/v1/portfolios/{portfolio}/performance?from={}", days_ago(30));
    let response = app.send(&user, "GET", &path, None).await;
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(error_body(response, 503).await["code"], "market_data_unavailable");
}

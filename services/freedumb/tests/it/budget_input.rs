//! What the budget service refuses, and the dates it never emits: an array
//! is not a budget update, a goal's name is one line without control
//! characters, dates are `YYYY-MM-DD` within 1900-01-01..=9999-12-31 on the
//! way in and on the way out, and the OpenAPI document says all of it.

use serde_json::{Value, json};

use crate::helpers::{SignedIn, TestApp, error_body, spawn_app};

/// The `details[].field` values of a 4xx answer.
async fn fields(response: reqwest::Response, status: u16) -> Vec<String> {
    let body = error_body(response, status).await;
    body["details"].as_array().unwrap_or(&Vec::new()).iter().map(|d| d["field"].as_str().unwrap().to_owned()).collect()
}

async fn weekly_budget(app: &TestApp, user: &SignedIn) -> Value {
    let categories = app.ok(user, "GET", "/v1/categories", None).await;
    let food = categories["items"].as_array().unwrap().iter().find(|c| c["name"] == "Food").unwrap()["id"].clone();
    app.create_budget(user, json!({"category_id": food, "currency": "USD", "amount": "100.00", "period": "weekly"}))
        .await
}

async fn goal(app: &TestApp, user: &SignedIn, body: Value) -> Value {
    app.ok(user, "POST", "/v1/goals", Some(body)).await
}

/// Whether `text` is a date the API may emit: four-digit year, no sign.
fn is_api_date(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && (text[..4].parse::<u32>().is_ok_and(|y| (1900..=9999).contains(&y)))
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

#[tokio::test]
async fn an_array_is_not_a_budget_update() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let budget = weekly_budget(&app, &user).await;
    let path = format!("/v1/budgets/{}", budget["id"].as_str().unwrap());

    let body = error_body(app.send(&user, "PATCH", &path, Some(json!([null, null]))).await, 422).await;
    assert_eq!(body["details"][0]["field"], "body", "{body}");
    assert!(!body.to_string().contains("struct"), "no Rust type names: {body}");
    assert_eq!(app.ok(&user, "GET", &path, None).await["amount"], "100.00");
}

#[tokio::test]
async fn names_and_notes_with_control_characters_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;

    for name in ["a\u{0}b", "line\nbreak", "tab\tbed", "bell\u{7}", "   ", &"x".repeat(101)] {
        let response = app
            .send(&user, "POST", "/v1/goals", Some(json!({"name": name, "currency": "EUR", "target_amount": "10.00"})))
            .await;
        assert_eq!(fields(response, 422).await, ["name"], "{name:?}");
    }
    // The rule the service always had: 1 to 100 characters after trimming.
    let bike = goal(
        &app,
        &user,
        json!({"name": format!("  {}  ", "é".repeat(100)), "currency": "EUR", "target_amount": "10.00"}),
    )
    .await;
    assert_eq!(bike["name"], "é".repeat(100));
    let id = bike["id"].as_str().unwrap();

    let response = app.send(&user, "PATCH", &format!("/v1/goals/{id}"), Some(json!({"name": "a\u{0}b"}))).await;
    assert_eq!(fields(response, 422).await, ["name"]);

    // A note may span lines; it may not carry NUL or other control characters.
    let path = format!("/v1/goals/{id}/contributions");
    for note in ["a\u{0}b", "escape\u{1b}[2J", &"n".repeat(201)] {
        let response = app.send(&user, "POST", &path, Some(json!({"amount": "1.00", "note": note}))).await;
        assert_eq!(fields(response, 422).await, ["note"], "{note:?}");
    }
    app.ok(&user, "POST", &path, Some(json!({"amount": "1.00", "note": "first line\nsecond line"}))).await;
    assert_eq!(app.ok(&user, "GET", &format!("/v1/goals/{id}"), None).await["saved"], "1.00");
}

#[tokio::test]
async fn dates_must_be_canonical_and_within_the_range() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let bike = goal(&app, &user, json!({"name": "Bike", "currency": "EUR", "target_amount": "10.00"})).await;
    let contributions = format!("/v1/goals/{}/contributions", bike["id"].as_str().unwrap());
    let categories = app.ok(&user, "GET", "/v1/categories", None).await;
    let travel = categories["items"].as_array().unwrap().iter().find(|c| c["name"] == "Travel").unwrap()["id"].clone();

    for date in ["2026-1-1", "+10000-01-01", "-0001-01-01", "1000-01-01", "1899-12-31", "2026-02-30", "20260101"] {
        let response = app.send(&user, "POST", &contributions, Some(json!({"amount": "1.00", "date": date}))).await;
        assert_eq!(fields(response, 422).await, ["date"], "{date}");
        let response = app
            .send(
                &user,
                "POST",
                "/v1/goals",
                Some(json!({"name": "Car", "currency": "EUR", "target_amount": "1.00", "target_date": date})),
            )
            .await;
        assert_eq!(fields(response, 422).await, ["target_date"], "{date}");
        let response = app
            .send(&user, "POST", "/v1/budgets", Some(json!({"category_id": travel, "currency": "USD", "amount": "1.00", "period": "monthly", "starts_on": date})))
            .await;
        assert_eq!(fields(response, 422).await, ["starts_on"], "{date}");
        // In a query string a malformed date is a malformed request: a 400 naming it.
        let response = app.send(&user, "GET", &format!("/v1/budgets?date={}", date.replace('+', "%2B")), None).await;
        assert_eq!(fields(response, 400).await, ["date"], "{date}");
    }
    // Nothing was saved on the way.
    assert_eq!(app.ok(&user, "GET", &contributions.replace("/contributions", ""), None).await["saved"], "0.00");
    assert_eq!(app.ok(&user, "GET", "/v1/goals", None).await["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_week_that_runs_past_9999_ends_on_9999_12_31() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let budget = weekly_budget(&app, &user).await;
    let id = budget["id"].as_str().unwrap();

    // 9999-12-31 is a Friday: its ISO week runs to 10000-01-02, a day the API
    // cannot name, so the period ends on the last day it can.
    let last = app.ok(&user, "GET", &format!("/v1/budgets/{id}?date=9999-12-31"), None).await;
    assert_eq!(
        (last["period_start"].as_str(), last["period_end"].as_str()),
        (Some("9999-12-27"), Some("9999-12-31")),
        "{last}"
    );
    let listed = app.ok(&user, "GET", "/v1/budgets?date=9999-12-31", None).await;
    assert_eq!(listed["items"][0]["period_end"], "9999-12-31");
    // The first week the API knows starts on its first day, a Monday.
    let first = app.ok(&user, "GET", &format!("/v1/budgets/{id}?date=1900-01-03"), None).await;
    assert_eq!(
        (first["period_start"].as_str(), first["period_end"].as_str()),
        (Some("1900-01-01"), Some("1900-01-07"))
    );
    for status in [&last, &first, &listed["items"][0]] {
        for field in ["period_start", "period_end"] {
            assert!(is_api_date(status[field].as_str().unwrap()), "{field}: {status}");
        }
    }
}

#[tokio::test]
async fn a_projection_past_9999_is_null_with_a_reason() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let house = goal(
        &app,
        &user,
        json!({"name": "House", "currency": "EUR", "target_amount": "1000000.00", "target_date": "2040-01-01"}),
    )
    .await;
    assert_eq!((house["projected_completion"].clone(), house["projection"].as_str()), (Value::Null, Some("no_saving")));
    let path = format!("/v1/goals/{}/contributions", house["id"].as_str().unwrap());

    // One cent over 126 years: the remaining 999,999.99 would take some
    // 12 trillion days at that rate, far past 9999-12-31.
    let progress = app.ok(&user, "POST", &path, Some(json!({"amount": "0.01", "date": "1900-01-01"}))).await;
    assert_eq!(progress["projected_completion"], Value::Null, "{progress}");
    assert_eq!(progress["projection"], "beyond_range");
    assert_eq!(progress["on_track"], false, "a target date before 9999-12-31 is missed");
    assert!(!progress.to_string().contains('+'), "{progress}");

    // A rate that gets there in time projects a date.
    let progress = app.ok(&user, "POST", &path, Some(json!({"amount": "999000.00", "date": "1900-01-01"}))).await;
    assert_eq!(progress["projection"], "projected", "{progress}");
    assert!(is_api_date(progress["projected_completion"].as_str().unwrap()), "{progress}");
    assert_eq!(progress["on_track"], true);

    let done = app.ok(&user, "POST", &path, Some(json!({"amount": "1000.00"}))).await;
    assert_eq!((done["projected_completion"].clone(), done["projection"].as_str()), (Value::Null, Some("reached")));
}

#[tokio::test]
async fn the_database_keeps_dates_in_the_range_too() {
    // What the service reads back is shown as is, so the schema holds the
    // rule as well: a row dated outside the range cannot be written.
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let bike = goal(&app, &user, json!({"name": "Bike", "currency": "EUR", "target_amount": "10.00"})).await;
    let pool = app.db.db(1).pool;
    for date in ["1000-01-01", "10000-01-01"] {
        let inserted = sqlx::query(
            "INSERT INTO budget.goal_contributions (id, goal_id, amount, date) VALUES (gen_random_uuid(), $1::uuid, 1, $2::date)",
        )
        .bind(bike["id"].as_str().unwrap())
        .bind(date)
        .execute(&pool)
        .await;
        let err = inserted.expect_err(date).to_string();
        assert!(err.contains("goal_contributions_date_in_range"), "{err}");
    }
}

/// Follows a `$ref` into the document's components.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.strip_prefix("#/components/schemas/").unwrap();
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => schema,
    }
}

/// The property `field` of a component schema, resolved.
fn property<'a>(doc: &'a Value, schema: &str, field: &str) -> &'a Value {
    let property = &doc["components"]["schemas"][schema]["properties"][field];
    assert!(!property.is_null(), "{schema}.{field} is not documented");
    // `Option<T>` of a referenced type comes as `oneOf: [null, $ref]`.
    if let Some(alternatives) = property["oneOf"].as_array() {
        let named = alternatives.iter().find(|s| s["type"] != "null").unwrap();
        return resolve(doc, named);
    }
    resolve(doc, property)
}

fn statuses(doc: &Value, method: &str, path: &str) -> Vec<String> {
    let responses = doc["paths"][path][method]["responses"].as_object().unwrap_or_else(|| panic!("{method} {path}"));
    let mut statuses: Vec<String> = responses.keys().cloned().collect();
    statuses.sort();
    statuses
}

#[tokio::test]
async fn the_openapi_document_states_the_budget_rules() {
    let app = spawn_app().await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();

    // Names and notes carry their lengths and the control-character rule.
    let name = property(&doc, "CreateGoal", "name");
    assert_eq!((name["minLength"].as_u64(), name["maxLength"].as_u64()), (Some(1), Some(100)), "{name}");
    assert!(name["pattern"].as_str().unwrap().contains(r"\u0000"), "{name}");
    assert_eq!(property(&doc, "UpdateGoal", "name")["maxLength"], 100);
    assert_eq!(property(&doc, "Contribution", "note")["maxLength"], 200);

    // Dates: the range in the pattern, in bodies, queries and answers.
    for (schema, field) in [
        ("CreateGoal", "target_date"),
        ("Contribution", "date"),
        ("CreateBudget", "starts_on"),
        ("BudgetStatus", "period_end"),
        ("Goal", "projected_completion"),
    ] {
        let date = property(&doc, schema, field);
        assert_eq!(date["format"], "date", "{schema}.{field}");
        assert!(date["pattern"].as_str().is_some_and(|p| p.contains("19[0-9]{2}")), "{schema}.{field}: {date}");
    }
    let as_of = doc["paths"]["/v1/budgets/{id}"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "date")
        .unwrap();
    assert!(resolve(&doc, &as_of["schema"])["pattern"].is_string(), "{as_of}");
    let reasons = property(&doc, "Goal", "projection");
    assert_eq!(reasons["enum"], json!(["projected", "reached", "no_saving", "beyond_range"]), "{reasons}");

    // Money and currencies point at the kit's schemas.
    for (schema, field, kind) in [
        ("CreateBudget", "amount", "PositiveAmount"),
        ("UpdateBudget", "amount", "PositiveAmount"),
        ("CreateGoal", "target_amount", "PositiveAmount"),
        ("UpdateGoal", "target_amount", "PositiveAmount"),
        ("Contribution", "amount", "NonZeroAmount"),
        ("BudgetStatus", "remaining", "Amount"),
        ("Goal", "saved", "Amount"),
        ("CreateBudget", "currency", "CurrencyCode"),
        ("CreateGoal", "currency", "CurrencyCode"),
        ("Goal", "currency", "CurrencyCode"),
    ] {
        let got = property(&doc, schema, field);
        let want = &doc["components"]["schemas"][kind];
        assert!(!want.is_null() && got == want, "{schema}.{field} should be {kind}: {got}");
    }

    // The contribution route declares its goal, and every answer is listed.
    let parameters = doc["paths"]["/v1/goals/{id}/contributions"]["post"]["parameters"].as_array().unwrap();
    let names: Vec<&str> = parameters.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"id") && names.contains(&"Idempotency-Key"), "{names:?}");
    let key = parameters.iter().find(|p| p["name"] == "Idempotency-Key").unwrap();
    assert_eq!(key["schema"]["maxLength"], 255);
    for (method, path, expected) in [
        (
            "post",
            "/v1/goals/{id}/contributions",
            &["201", "400", "401", "404", "408", "409", "413", "415", "422", "500", "503"][..],
        ),
        ("post", "/v1/budgets", &["201", "400", "401", "408", "409", "413", "415", "422", "500", "503"]),
        ("get", "/v1/budgets/{id}", &["200", "400", "401", "404", "408", "500", "503"]),
        ("patch", "/v1/budgets/{id}", &["200", "400", "401", "404", "408", "413", "415", "422", "500", "503"]),
        ("get", "/v1/goals", &["200", "401", "408", "500", "503"]),
    ] {
        assert_eq!(statuses(&doc, method, path), expected, "{method} {path}");
    }
}

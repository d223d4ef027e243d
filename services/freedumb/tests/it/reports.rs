//! Reports: a user asks for one, follows the job while a runner generates
//! it, and downloads the CSV or the chart. Jobs survive a runner that dies,
//! time out and are retried a bounded number of times, can be cancelled,
//! expire, and are nobody else's business.

use std::time::{Duration, Instant};

use freedumb_analytics::reports::jobs;
use serde_json::{Value, json};
use sqlx::Connection;
use uuid::Uuid;

use crate::helpers::{SignedIn, TestApp, error_body, spawn_app_on, spawn_app_with};

const YEAR: (&str, &str) = ("2026-01-01", "2026-12-31");

/// The settings every report test runs with: a runner that looks for work
/// often, short leases and backoffs, so the stories take seconds.
fn quick(vars: &mut std::collections::BTreeMap<String, String>) {
    for (name, value) in [("REPORT_POLL_MS", "50"), ("REPORT_LEASE_SECS", "1"), ("REPORT_BACKOFF_MS", "100")] {
        vars.insert(name.into(), value.into());
    }
}

impl TestApp {
    /// Asks for a report and checks the 202 and its `Location`.
    async fn request_report(&self, user: &SignedIn, kind: &str, format: &str) -> Value {
        let response = self
            .send(
                user,
                "POST",
                "/v1/reports",
                Some(json!({"kind": kind, "from": YEAR.0, "to": YEAR.1, "format": format})),
            )
            .await;
        assert_eq!(response.status(), 202);
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let job: Value = response.json().await.unwrap();
        assert_eq!(location, format!("/v1/reports/{}", job["id"].as_str().unwrap()));
        assert_eq!(job["links"]["self"], location);
        job
    }

    /// Polls a job until `done` holds.
    async fn report_until(&self, user: &SignedIn, id: &Value, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let job = self.ok(user, "GET", &format!("/v1/reports/{}", id.as_str().unwrap()), None).await;
            if done(&job) {
                return job;
            }
            assert!(Instant::now() < deadline, "the report never got there: {job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn succeeded(&self, user: &SignedIn, job: &Value) -> Value {
        let job = self.report_until(user, &job["id"], |j| j["status"] != "queued" && j["status"] != "running").await;
        assert_eq!(job["status"], "succeeded", "{job}");
        job
    }

    async fn download(&self, user: &SignedIn, job: &Value) -> reqwest::Response {
        self.send(user, "GET", &format!("/v1/reports/{}/download", job["id"].as_str().unwrap()), None).await
    }

    /// Waits until analytics has seen the user's spending (it learns of it
    /// from events, a moment after the ledger).
    async fn spending_reaches(&self, user: &SignedIn, currency: &str, total: &str) {
        let path = format!("/v1/analytics/spending/categories?from={}&to={}", YEAR.0, YEAR.1);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let view = self.ok(user, "GET", &path, None).await;
            let seen = view["currencies"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["currency"] == currency)
                .map(|c| c["total"].clone());
            if seen.as_ref().and_then(Value::as_str) == Some(total) {
                return;
            }
            assert!(Instant::now() < deadline, "analytics never saw {total} {currency}: {view}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Holds an exclusive lock on the projections the views read, so a report
/// attempt hangs as it would behind a stuck database, until [`unstall`].
async fn stall_the_views(app: &TestApp) -> sqlx::PgConnection {
    let mut conn = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    sqlx::raw_sql(
        "BEGIN; LOCK TABLE analytics.daily_totals, analytics.daily_categories, analytics.daily_payees,
                analytics.categories, analytics.accounts, analytics.valuations IN ACCESS EXCLUSIVE MODE",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn
}

async fn unstall(conn: sqlx::PgConnection) {
    conn.close().await.unwrap();
}

/// The texts of an SVG's `<text>` elements; the SVG must be well-formed XML.
fn svg_texts(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).expect("the chart is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).map(|t| t.trim().to_owned()).collect()
}

fn category(categories: &Value, name: &str) -> Value {
    categories["items"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()["id"].clone()
}

#[tokio::test]
async fn a_report_is_queued_run_and_downloaded_as_csv_and_as_a_chart() {
    let app = spawn_app_with(quick).await;
    let user = app.signed_in_user().await;
    let euros = app.account(&user, "EUR", "1000.00").await;
    let dollars = app.account(&user, "USD", "50.00").await;
    let categories = app.ok(&user, "GET", "/v1/categories", None).await;
    let (food, groceries) = (category(&categories, "Food"), category(&categories, "Groceries"));
    for (account, amount, date, category) in [
        (&euros, "-12.34", "2026-03-02", &groceries),
        (&euros, "-100.01", "2026-03-05", &food),
        (&euros, "2500.00", "2026-04-01", &Value::Null),
        (&dollars, "-0.99", "2026-05-01", &groceries),
    ] {
        let body = json!({"account_id": account["id"], "amount": amount, "date": date, "category_id": category});
        app.ok(&user, "POST", "/v1/transactions", Some(body)).await;
    }
    app.spending_reaches(&user, "USD", "0.99").await;
    app.spending_reaches(&user, "EUR", "-2387.65").await;

    // The answer comes at once, queued; the runner takes it from there.
    let job = app.request_report(&user, "spending_by_category", "csv").await;
    assert_eq!(
        (job["status"].as_str(), job["progress"].as_i64(), job["attempts"].as_i64()),
        (Some("queued"), Some(0), Some(0))
    );
    assert_eq!(
        (job["kind"].as_str(), job["format"].as_str(), job["max_attempts"].as_i64()),
        (Some("spending_by_category"), Some("csv"), Some(3))
    );
    let done = app.succeeded(&user, &job).await;
    assert_eq!(
        (done["progress"].as_i64(), done["attempts"].as_i64(), done["error"].as_str()),
        (Some(100), Some(1), None)
    );
    for at in ["started_at", "finished_at", "expires_at"] {
        assert!(done[at].is_string(), "{at}: {done}");
    }
    assert_eq!(done["links"]["download"], format!("/v1/reports/{}/download", job["id"].as_str().unwrap()));
    assert_eq!(done["links"]["cancel"], Value::Null);

    let response = app.download(&user, &job).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(
        response.headers()["content-disposition"],
        "attachment; filename=\"spending_by_category_2026-01-01_2026-12-31.csv\""
    );
    let csv = response.text().await.unwrap();
    let rows: Vec<&str> = csv.split("\r\n").collect();
    let (food, groceries) = (food.as_str().unwrap(), groceries.as_str().unwrap());
    assert_eq!(rows[0], "currency,category_id,category,parent_category_id,parent_category,amount,total");
    // Food holds Groceries: its own 100.01 and the rolled-up 112.35, exact.
    assert!(rows.contains(&&*format!("EUR,{food},Food,,,100.01,112.35")), "{csv}");
    assert!(rows.contains(&&*format!("EUR,{groceries},Groceries,{food},Food,12.34,")), "{csv}");
    assert!(rows.contains(&"EUR,,,,,-2500.00,-2500.00"), "uncategorised income: {csv}");
    assert!(rows.contains(&&*format!("USD,{groceries},Groceries,{food},Food,0.99,")), "{csv}");

    // The same as a chart: bars, one panel and legend per currency.
    let job = app.request_report(&user, "spending_by_category", "svg").await;
    app.succeeded(&user, &job).await;
    let response = app.download(&user, &job).await;
    assert_eq!(response.headers()["content-type"], "image/svg+xml");
    let texts = svg_texts(&response.text().await.unwrap());
    for expected in
        ["Spending by category, 2026-01-01 to 2026-12-31", "Spending (EUR)", "Spending (USD)", "Food", "112.35", "0.99"]
    {
        assert!(texts.iter().any(|t| t == expected), "{expected} is on the chart: {texts:?}");
    }

    // Grouped bars for income and expense, lines for cash flow and net worth.
    for (kind, title, series) in [
        ("income_expense", "Income and expense", &["Income (EUR)", "Expense (EUR)", "Income (USD)"][..]),
        ("cash_flow", "Cash flow", &["Closing balance (EUR)", "Net (EUR)", "Closing balance (USD)"][..]),
        ("net_worth", "Net worth", &["Net worth (EUR)", "Net worth (USD)"][..]),
    ] {
        let job = app.request_report(&user, kind, "svg").await;
        app.succeeded(&user, &job).await;
        let texts = svg_texts(&app.download(&user, &job).await.text().await.unwrap());
        assert!(texts.contains(&format!("{title}, 2026-01-01 to 2026-12-31")), "{kind}: {texts:?}");
        for name in series {
            assert!(texts.iter().any(|t| t == name), "{kind} has {name}: {texts:?}");
        }
    }
    let job = app.request_report(&user, "income_expense", "csv").await;
    app.succeeded(&user, &job).await;
    let csv = app.download(&user, &job).await.text().await.unwrap();
    assert!(csv.starts_with("currency,month,income,expense,net\r\n"), "{csv}");
    assert!(csv.contains("\r\nEUR,2026-03,0.00,112.35,-112.35\r\n"), "{csv}");
    assert!(csv.contains("\r\nEUR,2026-04,2500.00,0.00,2500.00\r\n"), "{csv}");

    // The caller's jobs, newest first, a page at a time.
    let page = app.ok(&user, "GET", "/v1/reports?limit=5", None).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 5);
    assert_eq!(page["items"][0]["id"], job["id"]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = app.ok(&user, "GET", &format!("/v1/reports?limit=5&cursor={cursor}"), None).await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest["items"][0]["kind"], "spending_by_category");
    assert_eq!(rest["next_cursor"], Value::Null);
}

#[tokio::test]
async fn a_retried_request_with_the_same_idempotency_key_gets_the_same_job() {
    let app = spawn_app_with(quick).await;
    let user = app.signed_in_user().await;
    let body = json!({"kind": "net_worth", "from": YEAR.0, "to": YEAR.1, "format": "csv"});
    let send = || {
        app.client
            .post(app.url("/v1/reports"))
            .bearer_auth(&user.access_token)
            .header("Idempotency-Key", "report-1")
            .json(&body)
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 202);
    let location = first.headers()["location"].clone();
    let first: Value = first.json().await.unwrap();
    let again = send().await.unwrap();
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["location"], location);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(app.ok(&user, "GET", "/v1/reports", None).await["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_job_whose_runner_died_is_finished_by_the_next_process() {
    // A process that answers the API but runs no reports.
    let first = spawn_app_with(|vars| {
        vars.insert("REPORT_WORKERS".into(), "0".into());
    })
    .await;
    let user = first.signed_in_user().await;
    let job = first.request_report(&user, "income_expense", "csv").await;

    // A runner claims it with a one-second lease, then dies: it never
    // renews the lease, and its process stops.
    let mut conn = sqlx::PgConnection::connect(&first.db.url).await.unwrap();
    let claimed =
        jobs::claim(&mut conn, Uuid::new_v4(), Duration::from_secs(1)).await.unwrap().expect("a job to claim");
    assert_eq!((claimed.id.to_string(), claimed.attempt), (job["id"].as_str().unwrap().to_owned(), 1));
    assert!(
        jobs::claim(&mut conn, Uuid::new_v4(), Duration::from_secs(1)).await.unwrap().is_none(),
        "held by its lease"
    );
    drop(conn);
    let running = first.report_until(&user, &job["id"], |_| true).await;
    assert_eq!((running["status"].as_str(), running["attempts"].as_i64()), (Some("running"), Some(1)));
    let db = first.stop().await;

    // The next process takes it once the lease has lapsed and finishes it.
    let second = spawn_app_on(db, quick).await;
    let done = second.succeeded(&user, &job).await;
    assert_eq!(done["attempts"], 2);
    assert_eq!(second.download(&user, &job).await.status(), 200);
}

#[tokio::test]
async fn an_attempt_that_times_out_is_retried_and_the_job_fails_after_three() {
    let app = spawn_app_with(|vars| {
        quick(vars);
        vars.insert("REPORT_TIMEOUT_SECS".into(), "1".into());
    })
    .await;
    let user = app.signed_in_user().await;
    let stall = stall_the_views(&app).await;

    let job = app.request_report(&user, "spending_by_category", "svg").await;
    let running = app.report_until(&user, &job["id"], |j| j["status"] == "running").await;
    assert_eq!(running["attempts"], 1);
    let failed = app.report_until(&user, &job["id"], |j| j["status"] == "failed").await;
    assert_eq!(failed["attempts"], 3, "{failed}");
    assert_eq!(failed["error"], "timed out after 1 s");
    assert!(failed["finished_at"].is_string(), "{failed}");
    let body = error_body(app.download(&user, &job).await, 409).await;
    assert_eq!(body["code"], "report_failed");
    unstall(stall).await;

    // It stays failed: no fourth attempt.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = app.ok(&user, "GET", &format!("/v1/reports/{}", job["id"].as_str().unwrap()), None).await;
    assert_eq!((later["status"].as_str(), later["attempts"].as_i64()), (Some("failed"), Some(3)));
}

#[tokio::test]
async fn a_cancelled_report_stops_its_runner_and_a_finished_one_cannot_be_cancelled() {
    let app = spawn_app_with(quick).await;
    let user = app.signed_in_user().await;
    let stall = stall_the_views(&app).await;
    let job = app.request_report(&user, "cash_flow", "csv").await;
    let id = job["id"].as_str().unwrap().to_owned();
    app.report_until(&user, &job["id"], |j| j["status"] == "running").await;

    let cancelled = app.ok(&user, "POST", &format!("/v1/reports/{id}/cancel"), None).await;
    assert_eq!((cancelled["status"].as_str(), &cancelled["links"]["cancel"]), (Some("cancelled"), &Value::Null));
    assert!(cancelled["finished_at"].is_string());
    let again = error_body(app.send(&user, "POST", &format!("/v1/reports/{id}/cancel"), None).await, 409).await;
    assert_eq!(again["code"], "report_finished");
    assert_eq!(error_body(app.download(&user, &job).await, 409).await["code"], "report_failed");

    // The runner notices at its next heartbeat and moves on; once the
    // database answers again it writes nothing over the cancellation.
    unstall(stall).await;
    let next = app.request_report(&user, "cash_flow", "csv").await;
    app.succeeded(&user, &next).await;
    let after = app.ok(&user, "GET", &format!("/v1/reports/{id}"), None).await;
    assert_eq!((after["status"].as_str(), after["attempts"].as_i64()), (Some("cancelled"), Some(1)), "{after}");
    let finished = error_body(
        app.send(&user, "POST", &format!("/v1/reports/{}/cancel", next["id"].as_str().unwrap()), None).await,
        409,
    )
    .await;
    assert_eq!(finished["code"], "report_finished");
}

#[tokio::test]
async fn a_report_past_its_retention_is_gone() {
    let app = spawn_app_with(|vars| {
        quick(vars);
        vars.insert("REPORT_RETENTION_HOURS".into(), "0".into());
        vars.insert("REPORT_SWEEP_SECS".into(), "1".into());
    })
    .await;
    let user = app.signed_in_user().await;
    let job = app.request_report(&user, "net_worth", "svg").await;
    let expired = app.report_until(&user, &job["id"], |j| j["status"] == "expired").await;
    assert_eq!(expired["links"]["download"], Value::Null);
    assert_eq!(error_body(app.download(&user, &job).await, 410).await["code"], "report_expired");

    // The sweep deletes the file itself.
    let mut conn = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, gone): (String, bool) =
            sqlx::query_as("SELECT status, content IS NULL FROM analytics.report_jobs WHERE id = $1::uuid")
                .bind(job["id"].as_str().unwrap())
                .fetch_one(&mut conn)
                .await
                .unwrap();
        if (status.as_str(), gone) == ("expired", true) {
            break;
        }
        assert!(Instant::now() < deadline, "the sweep never deleted the file");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn another_user_cannot_read_download_or_cancel_a_report() {
    let app = spawn_app_with(quick).await;
    let (alice, bob) = (app.signed_in_user().await, app.signed_in_user().await);
    let job = app.request_report(&alice, "spending_by_category", "csv").await;
    app.succeeded(&alice, &job).await;
    let id = job["id"].as_str().unwrap();
    for (method, path) in [
        ("GET", format!("/v1/reports/{id}")),
        ("GET", format!("/v1/reports/{id}/download")),
        ("POST", format!("/v1/reports/{id}/cancel")),
    ] {
        error_body(app.send(&bob, method, &path, None).await, 404).await;
    }
    assert_eq!(app.ok(&bob, "GET", "/v1/reports", None).await["items"], json!([]));
    assert_eq!(app.ok(&alice, "GET", "/v1/reports", None).await["items"][0]["id"], job["id"]);
}

#[tokio::test]
async fn bad_report_requests_are_refused_naming_the_field() {
    let app = spawn_app_with(quick).await;
    let user = app.signed_in_user().await;
    let valid = json!({"kind": "cash_flow", "from": "2026-01-01", "to": "2026-03-31", "format": "csv"});
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        body[field] = value;
        body
    };
    for (body, field) in [
        (with("kind", json!("pie")), "kind"),
        (with("format", json!("png")), "format"),
        (with("to", json!("2025-12-31")), "to"),
        (with("to", json!("2029-01-02")), "to"),
        (with("from", json!("2026-02-30")), "from"),
    ] {
        let response = app.send(&user, "POST", "/v1/reports", Some(body.clone())).await;
        let error = error_body(response, 422).await;
        let fields: Vec<&str> =
            error["details"].as_array().unwrap().iter().filter_map(|d| d["field"].as_str()).collect();
        assert!(fields.iter().any(|f| f.starts_with(field)), "{body}: {error}");
    }
    let mut missing = valid.clone();
    missing.as_object_mut().unwrap().remove("format");
    error_body(app.send(&user, "POST", "/v1/reports", Some(missing)).await, 422).await;
    error_body(app.send(&user, "POST", "/v1/reports", Some(with("extra", json!(1)))).await, 422).await;
    error_body(app.send(&user, "GET", "/v1/reports?cursor=nonsense", None).await, 400).await;
    error_body(app.send(&user, "GET", "/v1/reports?limit=0", None).await, 400).await;
    error_body(app.send(&user, "GET", "/v1/reports/not-a-uuid", None).await, 400).await;
    error_body(app.send(&user, "GET", &format!("/v1/reports/{}", Uuid::new_v4()), None).await, 404).await;
    assert_eq!(app.ok(&user, "GET", "/v1/reports", None).await["items"], json!([]), "nothing was queued");
}

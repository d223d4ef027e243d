//! A bank export comes in: new rows are created, rows seen before are
//! skipped, broken rows are named, and a big file goes in one request.

use std::time::Instant;

use serde_json::{Value, json};

use crate::helpers::{error_body, spawn_app};

const EXPORT: &str = "\
Booking date,Payee,Memo,Amount
2026-10-01,Grocer,weekly shop,-54.20
2026-10-01,Cafe,flat white,-3.50
2026-10-01,Cafe,flat white,-3.50
2026-10-02,Employer,salary,\"2,500.00\"
2026-10-03,Cinema,,-12.00
yesterday,Broken,bad date,-1.00
2026-10-04,Broken,bad amount,twelve
2026-10-05,Broken,too precise,-1.005
2026-10-06,Broken,,
";

fn import_body(account: &Value, csv: &str) -> Value {
    json!({
        "account_id": account["id"],
        "csv": csv,
        "mapping": {"date": "Booking date", "payee": "Payee", "description": "Memo", "amount": "Amount"}
    })
}

#[tokio::test]
async fn an_export_imports_once_and_names_its_bad_rows() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let account = app.account(&user, "USD", "0").await;

    let summary = app.ok(&user, "POST", "/v1/transactions/import", Some(import_body(&account, EXPORT))).await;
    assert_eq!(summary["created"], 5, "two identical coffees are two transactions: {summary}");
    assert_eq!(summary["skipped"], 0);
    assert_eq!(summary["rejected"], 4);
    let rows: Vec<u64> = summary["rejections"].as_array().unwrap().iter().map(|r| r["row"].as_u64().unwrap()).collect();
    assert_eq!(rows, [7, 8, 9, 10], "row numbers count the header as row 1");
    assert!(summary["rejections"][0]["reason"].as_str().unwrap().contains("does not match"));
    assert!(summary["rejections"][3]["reason"].as_str().unwrap().contains("missing"));
    assert_eq!(app.balance(&user, &account).await, "2426.80");

    // The same file again, and an overlapping export with one new row.
    let again = app.ok(&user, "POST", "/v1/transactions/import", Some(import_body(&account, EXPORT))).await;
    assert_eq!((again["created"].as_u64(), again["skipped"].as_u64()), (Some(0), Some(5)));
    let overlap = "Booking date,Payee,Memo,Amount\n2026-10-03,Cinema,,-12.00\n2026-10-07,Bakery,,-4.00\n";
    let third = app.ok(&user, "POST", "/v1/transactions/import", Some(import_body(&account, overlap))).await;
    assert_eq!((third["created"].as_u64(), third["skipped"].as_u64()), (Some(1), Some(1)));
    assert_eq!(app.balance(&user, &account).await, "2422.80");
}

#[tokio::test]
async fn european_exports_with_debit_and_credit_columns_import() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let account = app.account(&user, "EUR", "0").await;
    let csv = "Datum;Empfänger;Soll;Haben\n01.10.2026;Miete;1.200,00;\n02.10.2026;Gehalt;;3.456,78\n";
    let body = json!({"account_id": account["id"], "csv": csv, "delimiter": ";", "date_format": "%d.%m.%Y", "decimal_comma": true,
        "mapping": {"date": "Datum", "payee": "Empfänger", "debit": "Soll", "credit": "Haben"}});
    let summary = app.ok(&user, "POST", "/v1/transactions/import", Some(body)).await;
    assert_eq!(summary["created"], 2, "{summary}");
    assert_eq!(app.balance(&user, &account).await, "2256.78");
}

#[tokio::test]
async fn a_mapping_that_does_not_fit_the_file_is_a_422() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let account = app.account(&user, "USD", "0").await;
    let mut body = import_body(&account, EXPORT);
    body["mapping"]["amount"] = json!("Betrag");
    let error = error_body(app.send(&user, "POST", "/v1/transactions/import", Some(body)).await, 422).await;
    assert_eq!(error["details"][0]["field"], "mapping.amount");
    let mut body = import_body(&account, EXPORT);
    body["mapping"]["debit"] = json!("Amount");
    error_body(app.send(&user, "POST", "/v1/transactions/import", Some(body)).await, 422).await;
}

#[tokio::test]
async fn ten_thousand_rows_import_in_one_request() {
    let app = spawn_app().await;
    let user = app.signed_in_user().await;
    let account = app.account(&user, "USD", "0").await;
    let mut csv = String::from("date,payee,amount\n");
    let mut total = 0i64;
    for i in 0..10_000i64 {
        let cents = (i * 7919) % 20_000 - 10_000;
        total += cents;
        let sign = if cents < 0 { "-" } else { "" };
        csv.push_str(&format!(
            "2026-{:02}-{:02},Payee {},{sign}{}.{:02}\n",
            i % 12 + 1,
            i % 28 + 1,
            i % 97,
            cents.abs() / 100,
            cents.abs() % 100
        ));
    }
    let body = json!({"account_id": account["id"], "csv": csv, "mapping": {"date": "date", "payee": "payee", "amount": "amount"}});
    let started = Instant::now();
    let summary = app.ok(&user, "POST", "/v1/transactions/import", Some(body)).await;
    eprintln!("imported 10,000 rows in {:?} (debug build)", started.elapsed());
    assert_eq!(summary["created"], 10_000, "{}", summary["rejections"]);
    let sign = if total < 0 { "-" } else { "" };
    assert_eq!(app.balance(&user, &account).await, format!("{sign}{}.{:02}", total.abs() / 100, total.abs() % 100));
}

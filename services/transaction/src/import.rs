//! `POST /v1/transactions/import`: a bank's CSV export plus a column
//! mapping, into one account.
//!
//! Every row gets a fingerprint: the account, date, amount, payee and
//! description, plus how many identical rows came before it in the file (two
//! coffees on one day are two transactions). Re-importing a file, or an
//! export that overlaps an earlier one, finds the fingerprints already stored
//! (a unique index per account) and skips those rows. Rows that do not parse
//! are rejected one by one with their row number; the good rows still go in.
//! All created rows are written in one statement and one transaction.

use std::collections::HashMap;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::NaiveDate;
use freedumb_kit::auth::AuthUser;
use freedumb_kit::date::IsoDate;
use freedumb_kit::extract::Json;
use freedumb_kit::idempotency::{self, IdempotencyKey};
use freedumb_kit::money::{AmountError, Currency};
use freedumb_kit::{ApiError, ApiResult, ErrorBody};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::{Ledger, SCHEMA, accounts, events, fingerprint, transactions};

pub(crate) fn router() -> OpenApiRouter<Ledger> {
    OpenApiRouter::new().routes(routes!(import_csv))
}

/// Rows per request: a year of a busy account several times over, and well
/// inside the 10 MiB body limit.
const MAX_ROWS: usize = 50_000;

/// Which CSV column holds what: a header name, or a 0-based index when the
/// file has no header row.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Column {
    Name(String),
    Index(u32),
}

// By hand: the derive cannot bound the index, and an index past u32 is
// refused by the parser.
impl utoipa::PartialSchema for Column {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::String).description(Some("a header name")))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0))
                    .maximum(Some(u32::MAX))
                    .description(Some("a 0-based column index")),
            )
            .into()
    }
}

impl ToSchema for Column {}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    date: Column,
    /// One signed amount column; or use `debit` and `credit`.
    amount: Option<Column>,
    /// Money out, as a positive number (becomes negative).
    debit: Option<Column>,
    /// Money in, as a positive number.
    credit: Option<Column>,
    payee: Option<Column>,
    description: Option<Column>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    account_id: Uuid,
    /// The file's text (at most 50,000 rows). Tab, line feed and carriage
    /// return are its only control characters.
    #[schema(value_type = freedumb_kit::text::Text<10485760>)]
    csv: String,
    mapping: Mapping,
    /// chrono format of the date column; default `%Y-%m-%d`.
    #[schema(example = "%d/%m/%Y")]
    date_format: Option<String>,
    /// The field separator: one printable ASCII character other than the
    /// double quote, or a tab; default ",".
    #[schema(min_length = 1, max_length = 1, pattern = r#"^[\t !#-~]$"#)]
    delimiter: Option<char>,
    /// Whether the first row names the columns; default true.
    has_header: Option<bool>,
    /// Amounts written `1.234,56`: dots group thousands, the comma is decimal.
    #[serde(default)]
    decimal_comma: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Rejection {
    /// The row's number in the file, counting the header as row 1.
    row: usize,
    reason: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImportSummary {
    created: usize,
    /// Rows imported before (same fingerprint).
    skipped: usize,
    rejected: usize,
    rejections: Vec<Rejection>,
}

struct ParsedRow {
    date: NaiveDate,
    amount: i64,
    payee: Option<String>,
    description: Option<String>,
    hash: String,
}

fn resolve(column: &Column, headers: Option<&csv::StringRecord>, field: &str) -> ApiResult<usize> {
    match (column, headers) {
        (Column::Index(i), _) => Ok(*i as usize),
        (Column::Name(name), Some(headers)) => {
            headers.iter().position(|h| h.trim().eq_ignore_ascii_case(name.trim())).ok_or_else(|| {
                ApiError::field(&format!("mapping.{field}"), format!("the file has no column named {name:?}"))
            })
        }
        (Column::Name(_), None) => {
            Err(ApiError::field(&format!("mapping.{field}"), "without a header row, columns are numbers"))
        }
    }
}

fn parse_amount(text: &str, currency: Currency, decimal_comma: bool) -> Result<i64, AmountError> {
    let mut text = text.trim().replace([' ', '\u{a0}', '\''], "");
    if decimal_comma {
        text = text.replace('.', "").replace(',', ".");
    } else {
        text = text.replace(',', "");
    }
    // Some banks write debits as (12.34).
    if let Some(inner) = text.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
        text = format!("-{inner}");
    }
    currency.parse(&text)
}

/// Imports a bank export.
#[utoipa::path(post, path = "/v1/transactions/import", tag = "transactions", security(("bearer" = [])), request_body = ImportRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "retries with the same key and body return the first answer")),
    responses((status = 200, body = ImportSummary), (status = "4XX", body = ErrorBody)))]
async fn import_csv(
    State(state): State<Ledger>,
    user: AuthUser,
    key: IdempotencyKey,
    Json(req): Json<ImportRequest>,
) -> ApiResult<axum::response::Response> {
    let fp = fingerprint("POST /v1/transactions/import", &req);
    let account_id = req.account_id;
    let response = idempotency::run(&state.platform.db, SCHEMA, user.user_id, &key, &fp, move |tx| {
        Box::pin(async move {
            let account = transactions::open_account(tx.conn(), user.user_id, "account_id", req.account_id).await?;
            let currency = account.currency()?;
            let (rows, mut rejections) = parse_file(&req, currency)?;

            let hashes: Vec<&str> = rows.iter().map(|r| r.hash.as_str()).collect();
            let ids: Vec<Uuid> = rows.iter().map(|_| Uuid::now_v7()).collect();
            let created: Vec<(Uuid, String)> = sqlx::query_as(
                "INSERT INTO ledger.transactions (id, user_id, account_id, amount, currency_exponent, date, payee, description, import_hash)
                 SELECT id, $1, $2, amount, $3, date, payee, description, hash
                 FROM UNNEST($4::uuid[], $5::bigint[], $6::date[], $7::text[], $8::text[], $9::text[])
                      AS r(id, amount, date, payee, description, hash)
                 ON CONFLICT (account_id, import_hash) WHERE import_hash IS NOT NULL DO NOTHING
                 RETURNING id, import_hash",
            )
            .bind(user.user_id)
            .bind(account.id)
            .bind(i16::from(currency.exponent()))
            .bind(&ids)
            .bind(rows.iter().map(|r| r.amount).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.date).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.payee.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.description.clone()).collect::<Vec<_>>())
            .bind(&hashes)
            .fetch_all(tx.conn())
            .await
            .context("failed to insert imported transactions")?;
            let created_ids: Vec<Uuid> = created.iter().map(|(id, _)| *id).collect();
            events::changed(tx.conn(), events::CREATED, &created_ids).await?;
            rejections.sort_by_key(|r| r.row);
            let summary = ImportSummary {
                created: created.len(),
                skipped: rows.len() - created.len(),
                rejected: rejections.len(),
                rejections,
            };
            Ok((StatusCode::OK, serde_json::to_value(summary).context("serialise")?))
        })
    })
    .await?;
    accounts::changed(&state, user.user_id, &[account_id]).await;
    Ok(response)
}

/// The file's good rows and the reasons for the bad ones.
fn parse_file(req: &ImportRequest, currency: Currency) -> ApiResult<(Vec<ParsedRow>, Vec<Rejection>)> {
    let delimiter = req.delimiter.unwrap_or(',');
    if !(delimiter == '\t' || delimiter.is_ascii_graphic() || delimiter == ' ') || delimiter == '"' {
        return Err(ApiError::field(
            "delimiter",
            "must be one printable ASCII character other than the double quote, or a tab",
        ));
    }
    let date_format = req.date_format.as_deref().unwrap_or("%Y-%m-%d");
    if chrono::format::StrftimeItems::new(date_format).any(|i| matches!(i, chrono::format::Item::Error)) {
        return Err(ApiError::field("date_format", "is not a valid chrono date format"));
    }
    let has_header = req.has_header.unwrap_or(true);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter as u8)
        .has_headers(has_header)
        .flexible(true)
        .from_reader(req.csv.as_bytes());
    let headers = if has_header {
        Some(
            reader.headers().map_err(|e| ApiError::field("csv", format!("the header row is unreadable: {e}")))?.clone(),
        )
    } else {
        None
    };
    let m = &req.mapping;
    let date_col = resolve(&m.date, headers.as_ref(), "date")?;
    let amount_cols = match (&m.amount, &m.debit, &m.credit) {
        (Some(amount), None, None) => (Some(resolve(amount, headers.as_ref(), "amount")?), None, None),
        (None, debit, credit) if debit.is_some() || credit.is_some() => (
            None,
            debit.as_ref().map(|c| resolve(c, headers.as_ref(), "debit")).transpose()?,
            credit.as_ref().map(|c| resolve(c, headers.as_ref(), "credit")).transpose()?,
        ),
        _ => return Err(ApiError::field("mapping.amount", "map either amount, or debit and/or credit")),
    };
    let payee_col = m.payee.as_ref().map(|c| resolve(c, headers.as_ref(), "payee")).transpose()?;
    let description_col = m.description.as_ref().map(|c| resolve(c, headers.as_ref(), "description")).transpose()?;

    let mut rows = Vec::new();
    let mut rejections = Vec::new();
    let mut seen: HashMap<String, u32> = HashMap::new();
    let first_row = if has_header { 2 } else { 1 };
    for (i, record) in reader.records().enumerate() {
        let row = first_row + i;
        if i >= MAX_ROWS {
            return Err(ApiError::field("csv", format!("has more than {MAX_ROWS} rows; split the file")));
        }
        let record = match record {
            Ok(record) => record,
            Err(err) => {
                rejections.push(Rejection { row, reason: format!("unreadable row: {err}") });
                continue;
            }
        };
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let cell = |col: usize| record.get(col).map(str::trim).filter(|c| !c.is_empty());
        let date = match cell(date_col).map(|d| NaiveDate::parse_from_str(d, date_format)) {
            Some(Ok(date)) if IsoDate::new(date).is_some() => date,
            Some(Ok(date)) => {
                rejections.push(Rejection {
                    row,
                    reason: format!("the date {date} is not between 1900-01-01 and 9999-12-31"),
                });
                continue;
            }
            Some(Err(_)) => {
                rejections.push(Rejection {
                    row,
                    reason: format!("date {:?} does not match {date_format}", cell(date_col).unwrap_or("")),
                });
                continue;
            }
            None => {
                rejections.push(Rejection { row, reason: "the date is missing".into() });
                continue;
            }
        };
        let amount = match amount_cols {
            (Some(col), _, _) => cell(col).map(|a| parse_amount(a, currency, req.decimal_comma)),
            (None, debit, credit) => {
                let debit =
                    debit.and_then(cell).map(|a| parse_amount(a, currency, req.decimal_comma).map(|v| -v.abs()));
                let credit = credit.and_then(cell).map(|a| parse_amount(a, currency, req.decimal_comma).map(i64::abs));
                match (debit, credit) {
                    (Some(Err(e)), _) | (_, Some(Err(e))) => Some(Err(e)),
                    (Some(Ok(d)), Some(Ok(c))) => Some(Ok(d + c)),
                    (Some(ok), None) | (None, Some(ok)) => Some(ok),
                    (None, None) => None,
                }
            }
        };
        let amount = match amount {
            Some(Ok(amount)) => amount,
            Some(Err(err)) => {
                rejections.push(Rejection { row, reason: format!("the amount {err}") });
                continue;
            }
            None => {
                rejections.push(Rejection { row, reason: "the amount is missing".into() });
                continue;
            }
        };
        let payee = payee_col.and_then(cell).map(|p| p.chars().take(200).collect::<String>());
        let description = description_col.and_then(cell).map(|d| d.chars().take(500).collect::<String>());
        let content = format!(
            "{}\u{1f}{date}\u{1f}{amount}\u{1f}{}\u{1f}{}",
            req.account_id,
            payee.as_deref().unwrap_or(""),
            description.as_deref().unwrap_or("")
        );
        let ordinal = seen.entry(content.clone()).or_insert(0);
        *ordinal += 1;
        let hash = hex::encode(Sha256::digest(format!("{content}\u{1f}{ordinal}").as_bytes()));
        rows.push(ParsedRow { date, amount, payee, description, hash });
    }
    Ok((rows, rejections))
}

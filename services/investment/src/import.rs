//! `POST /v1/portfolios/{id}/activities/import`: a broker's CSV export and
//! a column mapping, into one portfolio, the way the ledger imports a bank's
//! (`services/transaction/src/import.rs`).
//!
//! Each row becomes the activity its `kind` column names (a kind's name, or
//! a label of the file mapped in `kinds`), with the fields that kind takes
//! ([`activities::fields_of`]); cells of other mapped columns are ignored,
//! since one file has one set of columns for every kind. Brokers write money
//! out and sales as negative numbers: quantities, fees and amounts are read
//! without their sign, and the kind says the direction. The instrument is
//! the caller's instrument with the row's symbol (and exchange, when that is
//! mapped too).
//!
//! Every row gets a fingerprint (the portfolio, its cells, and how many
//! identical rows came before it in the file), and a portfolio stores each
//! fingerprint once: re-importing a file, or an export overlapping an
//! earlier one, skips the rows already there. A row that does not parse is
//! rejected with its number and reason and the others go in. Then every
//! holding the file touched is rebuilt once; if the file sells more than is
//! held, nothing is imported and the 422 names the row.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::NaiveDate;
use freedumb_kit::auth::AuthUser;
use freedumb_kit::date::IsoDate;
use freedumb_kit::extract::{Json, Path};
use freedumb_kit::idempotency::{self, IdempotencyKey, fingerprint};
use freedumb_kit::{ApiError, ApiResult, ErrorBody, FieldErrors};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::activities::{self, Field, Kind, NewActivity, Refusal};
use crate::decimal::{Quantity, Ratio, UnitPrice, show};
use crate::instruments::{self, InstrumentRow};
use crate::lots::LotError;
use crate::text::Note;
use crate::{Investments, SCHEMA, portfolios};

pub(crate) fn router() -> OpenApiRouter<Investments> {
    OpenApiRouter::new().routes(routes!(import_csv))
}

/// Rows per request: years of a busy account, well inside the 10 MiB body.
const MAX_ROWS: usize = 20_000;

/// Which CSV column holds what: a header name, or a 0-based index when the
/// file has no header row.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Column {
    Name(String),
    Index(u32),
}

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

impl ToSchema for Column {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("ActivityColumn")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivityMapping {
    date: Column,
    kind: Column,
    /// The instrument's symbol, for trades, splits, transfers and dividends.
    symbol: Option<Column>,
    /// Needed only when the caller has the same symbol on two exchanges.
    exchange: Option<Column>,
    quantity: Option<Column>,
    unit_price: Option<Column>,
    fee: Option<Column>,
    amount: Option<Column>,
    currency: Option<Column>,
    ratio: Option<Column>,
    note: Option<Column>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivityImport {
    /// The file's text (at most 20,000 rows). Tab, line feed and carriage
    /// return are its only control characters.
    #[schema(value_type = freedumb_kit::text::Text<10485760>)]
    csv: String,
    mapping: ActivityMapping,
    /// The file's labels of kinds, such as `{"BUY": "buy", "DIV": "dividend"}`,
    /// compared ignoring case; a label not listed must be a kind's name.
    #[serde(default)]
    kinds: KindLabels,
    /// chrono format of the date column; default `%Y-%m-%d`.
    #[schema(example = "%d/%m/%Y")]
    date_format: Option<String>,
    /// The field separator: one printable ASCII character other than the
    /// double quote, or a tab; default ",".
    #[schema(min_length = 1, max_length = 1, pattern = r#"^[\t !#-~]$"#)]
    delimiter: Option<char>,
    /// Whether the first row names the columns; default true.
    has_header: Option<bool>,
    /// Numbers written `1.234,56`: dots group thousands, the comma is decimal.
    #[serde(default)]
    decimal_comma: bool,
}

/// File labels to kinds. Its schema says what the `Json` extractor checks of
/// every key: no NUL or other control characters.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KindLabels(BTreeMap<String, Kind>);

impl utoipa::PartialSchema for KindLabels {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(
                ObjectBuilder::new().schema_type(Type::String).pattern(Some(freedumb_kit::text::BODY_PATTERN)),
            ))
            .additional_properties(Some(AdditionalProperties::RefOr(Kind::schema())))
            .into()
    }
}

impl ToSchema for KindLabels {}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ActivityRejection {
    /// The row's number in the file, counting the header as row 1.
    row: usize,
    reason: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ActivityImportSummary {
    created: usize,
    /// Rows imported before (same fingerprint).
    skipped: usize,
    rejected: usize,
    rejections: Vec<ActivityRejection>,
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

/// A number as a file writes it, as the API reads it: no grouping, a point
/// for the decimals, no sign.
fn plain_number(cell: &str, decimal_comma: bool) -> String {
    let mut text = cell.trim().replace([' ', '\u{a0}', '\''], "");
    if decimal_comma {
        text = text.replace('.', "").replace(',', ".");
    } else {
        text = text.replace(',', "");
    }
    if let Some(inner) = text.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
        text = inner.to_owned();
    }
    text.trim_start_matches(['-', '+']).to_owned()
}

/// The columns of each field, resolved against the file.
struct Columns {
    date: usize,
    kind: usize,
    symbol: Option<usize>,
    exchange: Option<usize>,
    fields: Vec<(Field, usize)>,
}

fn columns(m: &ActivityMapping, headers: Option<&csv::StringRecord>) -> ApiResult<Columns> {
    let optional =
        |column: &Option<Column>, field: &str| column.as_ref().map(|c| resolve(c, headers, field)).transpose();
    let mut fields = Vec::new();
    for (field, column) in [
        (Field::Quantity, &m.quantity),
        (Field::UnitPrice, &m.unit_price),
        (Field::Fee, &m.fee),
        (Field::Amount, &m.amount),
        (Field::Currency, &m.currency),
        (Field::Ratio, &m.ratio),
        (Field::Note, &m.note),
    ] {
        if let Some(index) = optional(column, field.name())? {
            fields.push((field, index));
        }
    }
    Ok(Columns {
        date: resolve(&m.date, headers, "date")?,
        kind: resolve(&m.kind, headers, "kind")?,
        symbol: optional(&m.symbol, "symbol")?,
        exchange: optional(&m.exchange, "exchange")?,
        fields,
    })
}

/// One row read into a request, or why not.
fn parse_row(
    req: &ActivityImport,
    cols: &Columns,
    record: &csv::StringRecord,
    date_format: &str,
    instruments: &[InstrumentRow],
) -> Result<(NewActivity, Option<InstrumentRow>, String), String> {
    let cell = |col: usize| record.get(col).map(str::trim).filter(|c| !c.is_empty());
    let date = match cell(cols.date).map(|d| NaiveDate::parse_from_str(d, date_format)) {
        Some(Ok(date)) => {
            IsoDate::new(date).ok_or(format!("the date {date} is not between 1900-01-01 and 9999-12-31"))?
        }
        Some(Err(_)) => return Err(format!("date {:?} does not match {date_format}", cell(cols.date).unwrap_or(""))),
        None => return Err("the date is missing".into()),
    };
    if date > IsoDate::today() {
        return Err(format!("the date {date} is after today"));
    }
    let label = cell(cols.kind).ok_or("the kind is missing")?;
    let kind = req
        .kinds
        .0
        .iter()
        .find(|(l, _)| l.trim().eq_ignore_ascii_case(label))
        .map(|(_, kind)| *kind)
        .or_else(|| Kind::ALL.into_iter().find(|k| k.as_str().eq_ignore_ascii_case(label)))
        .ok_or_else(|| format!("the kind {label:?} is neither a kind nor a label in `kinds`"))?;
    let uses = |field: Field| activities::fields_of(kind).iter().any(|(f, _)| *f == field);
    let instrument = if uses(Field::InstrumentId) {
        let symbol = cols.symbol.and_then(cell).ok_or_else(|| format!("a {} needs a symbol", kind.as_str()))?;
        let exchange = cols.exchange.and_then(cell);
        let matching: Vec<&InstrumentRow> = instruments
            .iter()
            .filter(|i| i.symbol.eq_ignore_ascii_case(symbol))
            .filter(|i| exchange.is_none_or(|e| i.exchange.eq_ignore_ascii_case(e)))
            .collect();
        match matching.as_slice() {
            [one] => Some((*one).clone()),
            [] => return Err(format!("no instrument of yours has the symbol {symbol:?}; add it first")),
            _ => return Err(format!("{symbol:?} is on several exchanges; map the `exchange` column")),
        }
    } else {
        None
    };
    let mut activity = NewActivity {
        kind,
        date,
        instrument_id: instrument.as_ref().map(|i| i.id),
        quantity: None,
        unit_price: None,
        fee: None,
        amount: None,
        currency: None,
        ratio: None,
        note: None,
    };
    let decimal_comma = req.decimal_comma;
    for (field, col) in &cols.fields {
        let Some(text) = cell(*col).filter(|_| uses(*field)) else { continue };
        let bad = |why: String| format!("{} {why}", field.name());
        match field {
            Field::Quantity => {
                activity.quantity = Some(Quantity::parse(&plain_number(text, decimal_comma)).map_err(bad)?)
            }
            Field::UnitPrice => {
                activity.unit_price = Some(UnitPrice::parse(&plain_number(text, decimal_comma)).map_err(bad)?)
            }
            Field::Fee => activity.fee = Some(plain_number(text, decimal_comma)),
            Field::Amount => activity.amount = Some(plain_number(text, decimal_comma)),
            Field::Currency => activity.currency = Some(text.to_ascii_uppercase()),
            Field::Ratio => activity.ratio = Some(Ratio::parse(text).map_err(bad)?),
            Field::Note => activity.note = Some(Note::parse(text).map_err(bad)?),
            Field::InstrumentId => {}
        }
    }
    let mut errors = FieldErrors::default();
    activity.check_fields(&mut errors);
    if !errors.is_empty() {
        let missing: Vec<&str> = activities::fields_of(kind)
            .iter()
            .filter(|(f, need)| *need == activities::Need::Required && !activity_has(&activity, *f))
            .map(|(f, _)| f.name())
            .collect();
        return Err(format!("a {} needs {}", kind.as_str(), missing.join(" and ")));
    }
    let content = [
        kind.as_str().to_owned(),
        date.to_string(),
        instrument.as_ref().map(|i| i.id.to_string()).unwrap_or_default(),
        serde_json::to_string(&activity).unwrap_or_default(),
    ]
    .join("\u{1f}");
    Ok((activity, instrument, content))
}

fn activity_has(activity: &NewActivity, field: Field) -> bool {
    match field {
        Field::InstrumentId => activity.instrument_id.is_some(),
        Field::Quantity => activity.quantity.is_some(),
        Field::UnitPrice => activity.unit_price.is_some(),
        Field::Fee => activity.fee.is_some(),
        Field::Amount => activity.amount.is_some(),
        Field::Currency => activity.currency.is_some(),
        Field::Ratio => activity.ratio.is_some(),
        Field::Note => activity.note.is_some(),
    }
}

/// Imports a broker's export of activities.
#[utoipa::path(post, path = "/v1/portfolios/{id}/activities/import", tag = "activities", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "the portfolio"), IdempotencyKey), request_body = ActivityImport,
    responses((status = 200, body = ActivityImportSummary),
        (status = 422, body = ErrorBody, description = "the mapping names a column the file lacks; the file has more \
than 20,000 rows; `delimiter` or `date_format` is unusable; or the file sells more than is held (`csv`, naming the row), \
in which case nothing is imported")))]
async fn import_csv(
    State(state): State<Investments>,
    user: AuthUser,
    Path(portfolio_id): Path<Uuid>,
    key: IdempotencyKey,
    Json(req): Json<ActivityImport>,
) -> ApiResult<axum::response::Response> {
    let fp = fingerprint(&format!("POST /v1/portfolios/{portfolio_id}/activities/import"), &req);
    let market = state.market.clone();
    idempotency::run(&state.platform.db, SCHEMA, user.user_id, &key, &fp, move |tx| {
        Box::pin(async move {
            let portfolio = portfolios::find(tx.conn(), user.user_id, portfolio_id, true).await?;
            let base = portfolio.base()?;
            let delimiter = req.delimiter.unwrap_or(',');
            if !(delimiter == '\t' || delimiter.is_ascii_graphic() || delimiter == ' ') || delimiter == '"' {
                return Err(ApiError::field(
                    "delimiter",
                    "must be one printable ASCII character other than the double quote, or a tab",
                ));
            }
            let date_format = req.date_format.clone().unwrap_or_else(|| "%Y-%m-%d".to_owned());
            if chrono::format::StrftimeItems::new(&date_format).any(|i| matches!(i, chrono::format::Item::Error)) {
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
                    reader
                        .headers()
                        .map_err(|e| ApiError::field("csv", format!("the header row is unreadable: {e}")))?
                        .clone(),
                )
            } else {
                None
            };
            let cols = columns(&req.mapping, headers.as_ref())?;
            let owned: Vec<InstrumentRow> = sqlx::query_as(&format!("{} WHERE user_id = $1", instruments::SELECT))
                .bind(user.user_id)
                .fetch_all(tx.conn())
                .await
                .context("failed to load instruments")?;

            let first_row = if has_header { 2 } else { 1 };
            let mut rejections = Vec::new();
            let (mut created, mut skipped) = (0, 0);
            let mut seen: HashMap<String, u32> = HashMap::new();
            let mut rows_of: BTreeMap<Uuid, usize> = BTreeMap::new();
            let mut touched: BTreeSet<Uuid> = BTreeSet::new();
            for (i, record) in reader.records().enumerate() {
                let row = first_row + i;
                if i >= MAX_ROWS {
                    return Err(ApiError::field("csv", format!("has more than {MAX_ROWS} rows; split the file")));
                }
                let record = match record {
                    Ok(record) if record.iter().all(|f| f.trim().is_empty()) => continue,
                    Ok(record) => record,
                    Err(err) => {
                        rejections.push(ActivityRejection { row, reason: format!("unreadable row: {err}") });
                        continue;
                    }
                };
                let (activity, instrument, content) = match parse_row(&req, &cols, &record, &date_format, &owned) {
                    Ok(parsed) => parsed,
                    Err(reason) => {
                        rejections.push(ActivityRejection { row, reason });
                        continue;
                    }
                };
                let effects = match activities::effects(&activity, instrument.as_ref(), base) {
                    Ok(effects) => effects,
                    Err(errors) => {
                        let reason = errors.iter().map(|e| format!("{} {}", e.field, e.message)).collect::<Vec<_>>();
                        rejections.push(ActivityRejection { row, reason: reason.join("; ") });
                        continue;
                    }
                };
                let content = format!("{}\u{1f}{content}", portfolio.id);
                let ordinal = seen.entry(content.clone()).or_insert(0);
                *ordinal += 1;
                let hash = hex(&Sha256::digest(format!("{content}\u{1f}{ordinal}").as_bytes()));
                let recorded = activities::record(
                    tx.conn(),
                    market.as_ref(),
                    user.user_id,
                    &portfolio,
                    &activity,
                    &effects,
                    Some(&hash),
                )
                .await;
                match recorded {
                    Ok(Some(id)) => {
                        created += 1;
                        rows_of.insert(id, row);
                        if let (true, Some(instrument)) = (activity.kind.moves_lots(), &instrument) {
                            touched.insert(instrument.id);
                        }
                    }
                    Ok(None) => skipped += 1,
                    Err(err) if err.status() == StatusCode::UNPROCESSABLE_ENTITY => {
                        rejections.push(ActivityRejection {
                            row,
                            reason: "the amount is too large in the base currency".into(),
                        });
                    }
                    Err(err) => return Err(err),
                }
            }
            for instrument_id in touched {
                if let Err(refusal) = activities::rebuild_holding(tx.conn(), &portfolio, instrument_id).await {
                    return Err(match refusal {
                        Refusal::Lots(LotError::Oversold { activity, held, wanted }, date) => {
                            let which = rows_of.get(&activity).map_or_else(
                                || format!("the disposal of {date} already recorded"),
                                |row| format!("row {row}"),
                            );
                            ApiError::field(
                                "csv",
                                format!(
                                    "{which} takes more than is held on {date}: {} of {} units; nothing was imported",
                                    show(wanted),
                                    show(held)
                                ),
                            )
                        }
                        other => activities::refusal(other, Uuid::nil()),
                    });
                }
            }
            rejections.sort_by_key(|r| r.row);
            let summary = ActivityImportSummary { created, skipped, rejected: rejections.len(), rejections };
            Ok((StatusCode::OK, serde_json::to_value(summary).context("serialise")?))
        })
    })
    .await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! The user journeys: goose scenarios that walk the public API the way a
//! person does, each virtual user on data of its own.
//!
//! Every virtual user registers its own account (a fresh e-mail address) and
//! sends from its own loopback source address (127.64.0.0/10 and up), so to
//! the gateway's per-IP rate limits and the login throttle it is one client
//! among many, as real users are, and no user ever reads or writes what
//! another created. Request names are `METHOD <route template>`, with a
//! `?what` suffix where one route carries two request groups; the
//! server-side cross-check strips the suffix to find the server's route.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use goose::goose::GooseResponse;
use goose::prelude::*;
use serde_json::{Value, json};
use uuid::Uuid;

/// The journeys, by the name `--scenario` takes.
pub const SCENARIOS: [&str; 5] = ["mix", "onboarding", "daily", "dashboard", "readpath"];

/// The read path the benchmark compares with the ceiling.
pub const READ_PATH: &str = "/v1/transactions?limit=50";

/// Settings every journey reads, fixed before the attack starts.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where set-up requests go (register, log in, seed data). The same as
    /// the target host, except when the target is the ceiling, which serves
    /// only the read path.
    pub setup_host: String,
    /// Transactions each `readpath` user seeds before it starts reading, so
    /// that a page of 50 is full.
    pub seed_transactions: usize,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

pub fn configure(settings: Settings) {
    SETTINGS.set(settings).expect("journeys configured twice");
}

fn settings() -> &'static Settings {
    SETTINGS.get().expect("journeys used before configure()")
}

/// Builds the scenarios `name` selects, with `think` as every user's wait
/// between two steps.
pub fn scenarios(name: &str, think: (Duration, Duration)) -> Result<Vec<Scenario>, GooseError> {
    let onboarding = || {
        scenario!("onboarding")
            .set_weight(1)?
            .set_wait_time(think.0, think.1)?
            .register_transaction(transaction!(onboard).set_name("onboard"))
            .pipe(Ok::<_, GooseError>)
    };
    let daily = || {
        scenario!("daily")
            .set_weight(6)?
            .set_wait_time(think.0, think.1)?
            .register_transaction(transaction!(set_up_daily).set_on_start().set_name("set up"))
            .register_transaction(transaction!(list_page).set_name("list a page").set_weight(3)?)
            .register_transaction(transaction!(add_transaction).set_name("add a transaction").set_weight(2)?)
            .register_transaction(transaction!(filter).set_name("filter"))
            .register_transaction(transaction!(balance).set_name("balance"))
            .register_transaction(transaction!(check_budget).set_name("check the budget"))
            .pipe(Ok::<_, GooseError>)
    };
    let dashboard = || {
        // A dashboard loads six requests at once, and a person then looks at
        // it for a while: six times the think time keeps this user's request
        // rate near the others' (and under the gateway's per-client limit).
        scenario!("dashboard")
            .set_weight(3)?
            .set_wait_time(think.0 * 6, think.1 * 6)?
            .register_transaction(transaction!(set_up_dashboard).set_on_start().set_name("set up"))
            .register_transaction(transaction!(dashboard_view).set_name("dashboard"))
            .pipe(Ok::<_, GooseError>)
    };
    let readpath = || {
        scenario!("readpath")
            .set_wait_time(think.0, think.1)?
            .register_transaction(transaction!(set_up_readpath).set_on_start().set_name("set up"))
            .register_transaction(transaction!(read_page).set_name("read a page"))
            .pipe(Ok::<_, GooseError>)
    };
    Ok(match name {
        "mix" => vec![onboarding()?, daily()?, dashboard()?],
        "onboarding" => vec![onboarding()?],
        "daily" => vec![daily()?],
        "dashboard" => vec![dashboard()?],
        "readpath" => vec![readpath()?],
        other => unreachable!("unknown scenario {other}; clap checks the names"),
    })
}

/// `value.pipe(f)`: keeps the builder chains above in one expression.
trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

/// What a virtual user knows about itself.
#[derive(Debug, Clone)]
struct Session {
    token: String,
    account_id: String,
    category_id: String,
}

/// A new loopback source address for each identity: 127.64.0.1, .2, ...
/// Linux routes all of 127.0.0.0/8 to the loopback interface, so binding to
/// any of them needs no set-up, and the traffic never leaves the machine.
fn next_source_address() -> IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % (1 << 22);
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 64, 0, 0)) + n))
}

/// Gives the user a client of its own, sending from a fresh source address.
async fn new_identity(user: &mut GooseUser) -> TransactionResult {
    let builder = reqwest_goose::Client::builder()
        .local_address(next_source_address())
        .timeout(Duration::from_secs(60))
        .user_agent("freedumb-loadtests");
    user.set_client_builder(builder).await?;
    Ok(())
}

fn fail(what: impl std::fmt::Display) -> Box<TransactionError> {
    Box::new(TransactionError::Custom(what.to_string()))
}

/// One request. `name` is what the reports call it; `path` may be a full URL
/// (set-up requests to another host). A status other than `expect` is a
/// failure in goose's figures, and an error here, so the journey stops.
async fn call(
    user: &mut GooseUser,
    method: GooseMethod,
    path: &str,
    name: &str,
    expect: u16,
    body: Option<&Value>,
    idempotency_key: bool,
) -> Result<Value, Box<TransactionError>> {
    let mut builder = user.get_request_builder(&method, path)?;
    if let Some(session) = user.get_session_data::<Session>() {
        builder = builder.bearer_auth(&session.token);
    }
    if let Some(body) = body {
        builder = builder.json(body);
    }
    if idempotency_key {
        builder = builder.header("idempotency-key", Uuid::new_v4().to_string());
    }
    let request = GooseRequest::builder()
        .method(method)
        .path(path)
        .name(name)
        .expect_status_code(expect)
        .set_request_builder(builder)
        .build();
    let GooseResponse { response, .. } = user.request(request).await?;
    let response = response.map_err(|err| fail(format!("{name}: {err}")))?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(|err| fail(format!("{name}: {err}")))?;
    if status != expect {
        return Err(fail(format!("{name}: expected {expect}, got {status}: {text}")));
    }
    if text.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).map_err(|err| fail(format!("{name}: {err}")))
}

fn setup_url(path: &str) -> String {
    format!("{}{path}", settings().setup_host.trim_end_matches('/'))
}

fn id_of(value: &Value, what: &str) -> Result<String, Box<TransactionError>> {
    value["id"].as_str().map(str::to_owned).ok_or_else(|| fail(format!("{what}: no id in {value}")))
}

/// Register, log in, open an account and make a category: the onboarding
/// journey, and every other journey's set-up. `host` is `setup_url` for
/// set-up and the target for the onboarding journey itself.
async fn onboard_with(user: &mut GooseUser, url: fn(&str) -> String) -> Result<Session, Box<TransactionError>> {
    new_identity(user).await?;
    let email = format!("load-{}@example.com", Uuid::new_v4().simple());
    let credentials = json!({"email": email, "password": "load test password, long enough"});
    call(user, GooseMethod::Post, &url("/v1/auth/register"), "/v1/auth/register", 201, Some(&credentials), false)
        .await?;
    let tokens =
        call(user, GooseMethod::Post, &url("/v1/auth/login"), "/v1/auth/login", 200, Some(&credentials), false).await?;
    let token = tokens["access_token"].as_str().ok_or_else(|| fail("login: no access_token"))?.to_owned();
    user.set_session_data(Session { token, account_id: String::new(), category_id: String::new() });
    let account = json!({"name": "Everyday", "kind": "checking", "currency": "USD", "opening_balance": "2500.00"});
    let account =
        call(user, GooseMethod::Post, &url("/v1/accounts"), "/v1/accounts", 201, Some(&account), true).await?;
    call(user, GooseMethod::Get, &url("/v1/categories"), "/v1/categories", 200, None, false).await?;
    let category = json!({"name": "Groceries (load)"});
    let category =
        call(user, GooseMethod::Post, &url("/v1/categories"), "/v1/categories", 201, Some(&category), true).await?;
    let session = Session {
        token: session(user)?.token,
        account_id: id_of(&account, "account")?,
        category_id: id_of(&category, "category")?,
    };
    user.set_session_data(session.clone());
    Ok(session)
}

fn relative(path: &str) -> String {
    path.to_owned()
}

async fn onboard(user: &mut GooseUser) -> TransactionResult {
    onboard_with(user, relative).await.map(drop)
}

fn transaction_body(session: &Session, n: usize) -> Value {
    let day = 1 + n % 27;
    json!({
        "account_id": session.account_id,
        "amount": format!("-{}.{:02}", 5 + n % 90, n % 100),
        "date": format!("2026-11-{day:02}"),
        "payee": format!("Corner shop {}", n % 7),
        "category_id": session.category_id,
    })
}

async fn seed(user: &mut GooseUser, session: &Session, count: usize, url: fn(&str) -> String) -> TransactionResult {
    for n in 0..count {
        let body = transaction_body(session, n);
        call(user, GooseMethod::Post, &url("/v1/transactions"), "/v1/transactions", 201, Some(&body), true).await?;
    }
    Ok(())
}

async fn set_up_daily(user: &mut GooseUser) -> TransactionResult {
    let session = onboard_with(user, setup_url).await?;
    seed(user, &session, 5, setup_url).await?;
    budget(user, &session, "400.00").await
}

async fn set_up_dashboard(user: &mut GooseUser) -> TransactionResult {
    let session = onboard_with(user, setup_url).await?;
    seed(user, &session, 10, setup_url).await?;
    budget(user, &session, "250.00").await
}

/// How long set-up gives the budget service to learn of the user's new
/// category before budgeting it.
const CATEGORY_ARRIVAL: Duration = Duration::from_secs(1);

/// A monthly budget on the session's category. Budgets learn of a category
/// from the ledger's events, a moment after it is created, and refuse it
/// with a 422 `unknown_category` until then (docs/events.md). Set-up does
/// what a client should: it budgets last, after a pause, and retries while
/// the category is unknown. A retry is a failed request like any other, so
/// a slow projection shows in the run's errors rather than hiding.
async fn budget(user: &mut GooseUser, session: &Session, amount: &str) -> TransactionResult {
    let budget = json!({"category_id": session.category_id, "currency": "USD", "amount": amount, "period": "monthly"});
    tokio::time::sleep(CATEGORY_ARRIVAL).await;
    let mut attempts = 0;
    loop {
        match call(user, GooseMethod::Post, &setup_url("/v1/budgets"), "/v1/budgets", 201, Some(&budget), true).await {
            Ok(_) => return Ok(()),
            Err(err)
                if attempts < 20 && matches!(&*err, TransactionError::Custom(m) if m.contains("unknown_category")) =>
            {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Seeds with one CSV import rather than a request per row, so that set-up
/// is over within the first second or two of a benchmark run.
async fn set_up_readpath(user: &mut GooseUser) -> TransactionResult {
    let session = onboard_with(user, setup_url).await?;
    let mut csv = String::from("date,amount,payee\n");
    for n in 0..settings().seed_transactions {
        csv.push_str(&format!(
            "2026-{:02}-{:02},-{}.{:02},Corner shop {}\n",
            1 + n % 11,
            1 + n % 28,
            5 + n % 90,
            n % 100,
            n % 7
        ));
    }
    let body = json!({
        "account_id": session.account_id,
        "csv": csv,
        "mapping": {"date": "date", "amount": "amount", "payee": "payee"},
    });
    let summary = call(
        user,
        GooseMethod::Post,
        &setup_url("/v1/transactions/import"),
        "/v1/transactions/import",
        200,
        Some(&body),
        true,
    )
    .await?;
    if summary["created"].as_u64() != Some(settings().seed_transactions as u64) {
        return Err(fail(format!("import: {summary}")));
    }
    Ok(())
}

/// The user's session; a journey whose set-up failed (the platform down,
/// say) has none, and its steps fail rather than panic the user's task.
fn session(user: &GooseUser) -> Result<Session, Box<TransactionError>> {
    user.get_session_data::<Session>().cloned().ok_or_else(|| fail("no session: the set-up of this user failed"))
}

async fn list_page(user: &mut GooseUser) -> TransactionResult {
    call(user, GooseMethod::Get, READ_PATH, READ_PATH, 200, None, false).await.map(drop)
}

async fn add_transaction(user: &mut GooseUser) -> TransactionResult {
    let s = session(user)?;
    let body = transaction_body(&s, user.get_iterations());
    call(user, GooseMethod::Post, "/v1/transactions", "/v1/transactions", 201, Some(&body), true).await.map(drop)
}

async fn filter(user: &mut GooseUser) -> TransactionResult {
    let s = session(user)?;
    let path =
        format!("/v1/transactions?category_id={}&from=2026-11-01&to=2026-11-30&min_amount=-60&limit=20", s.category_id);
    call(user, GooseMethod::Get, &path, "/v1/transactions?filtered", 200, None, false).await.map(drop)
}

async fn balance(user: &mut GooseUser) -> TransactionResult {
    let s = session(user)?;
    let path = format!("/v1/accounts/{}", s.account_id);
    call(user, GooseMethod::Get, &path, "/v1/accounts/{id}", 200, None, false).await.map(drop)
}

async fn check_budget(user: &mut GooseUser) -> TransactionResult {
    call(user, GooseMethod::Get, "/v1/budgets", "/v1/budgets", 200, None, false).await.map(drop)
}

/// The read-heavy view a dashboard loads at once.
async fn dashboard_view(user: &mut GooseUser) -> TransactionResult {
    let s = session(user)?;
    call(user, GooseMethod::Get, "/v1/accounts", "/v1/accounts", 200, None, false).await?;
    let path = format!("/v1/accounts/{}", s.account_id);
    call(user, GooseMethod::Get, &path, "/v1/accounts/{id}", 200, None, false).await?;
    call(user, GooseMethod::Get, READ_PATH, READ_PATH, 200, None, false).await?;
    call(user, GooseMethod::Get, "/v1/budgets", "/v1/budgets", 200, None, false).await?;
    call(user, GooseMethod::Get, "/v1/goals", "/v1/goals", 200, None, false).await?;
    call(user, GooseMethod::Get, "/v1/categories", "/v1/categories", 200, None, false).await.map(drop)
}

async fn read_page(user: &mut GooseUser) -> TransactionResult {
    call(user, GooseMethod::Get, READ_PATH, READ_PATH, 200, None, false).await.map(drop)
}

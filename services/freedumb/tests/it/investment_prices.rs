//! The investment-price worker: replicas racing share the listings (each
//! fetched once) and announce each portfolio's valuation once; after a gap
//! it backfills the closes it missed in one request; an outage of the
//! source delays it and never fails it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use freedumb_investment::market::{FxRate, Listing, MarketData, MarketError, Offline, Quote};
use freedumb_investment::worker::{Pass, run_once};
use freedumb_kit::date::IsoDate;
use freedumb_kit::money::Currency;
use futures::future::BoxFuture;
use serde_json::json;

use crate::helpers::{SignedIn, TestApp, platform_for, spawn_app_with};

/// The offline source, counting the ranges of closes it is asked for, or
/// failing while `down` is set.
#[derive(Default)]
struct Counting {
    asked: Mutex<Vec<(String, IsoDate, IsoDate)>>,
    down: AtomicBool,
}

impl MarketData for Counting {
    fn closes<'a>(
        &'a self,
        listing: &'a Listing,
        from: IsoDate,
        to: IsoDate,
    ) -> BoxFuture<'a, Result<Vec<Quote>, MarketError>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(MarketError::Unavailable("down for the test".into()));
            }
            self.asked.lock().unwrap().push((listing.symbol.clone(), from, to));
            // Another replica has a chance to take the same listing meanwhile.
            tokio::time::sleep(Duration::from_millis(50)).await;
            Offline.closes(listing, from, to).await
        })
    }

    fn rates(
        &self,
        from: Currency,
        to: Currency,
        start: IsoDate,
        end: IsoDate,
    ) -> BoxFuture<'_, Result<Vec<FxRate>, MarketError>> {
        Offline.rates(from, to, start, end)
    }
}

fn ago(days: u64) -> IsoDate {
    IsoDate::today().get().checked_sub_days(chrono::Days::new(days)).and_then(IsoDate::new).unwrap()
}

async fn quiet_app() -> TestApp {
    // The platform's own worker makes its first pass at start-up, then sleeps.
    spawn_app_with(|env| {
        env.insert("INVESTMENT_PRICE_POLL_MS".into(), "3600000".into());
    })
    .await
}

async fn holding(app: &TestApp, user: &SignedIn, base: &str, symbols: &[(&str, &str)]) -> String {
    let portfolio = app.ok(user, "POST", "/v1/portfolios", Some(json!({"name": "P", "base_currency": base}))).await;
    let portfolio = portfolio["id"].as_str().unwrap().to_owned();
    for (symbol, currency) in symbols {
        let body = json!({"symbol": symbol, "exchange": "XNAS", "asset_class": "equity", "currency": currency});
        let response = app.send(user, "POST", "/v1/instruments", Some(body)).await;
        let instrument: serde_json::Value = if response.status() == 409 {
            let list = app.ok(user, "GET", "/v1/instruments", None).await;
            list["items"].as_array().unwrap().iter().find(|i| i["symbol"] == *symbol).unwrap().clone()
        } else {
            response.json().await.unwrap()
        };
        let buy = json!({"kind": "buy", "instrument_id": instrument["id"], "date": ago(5).to_string(), "quantity": "3", "unit_price": "10"});
        app.ok(user, "POST", &format!("/v1/portfolios/{portfolio}/activities"), Some(buy)).await;
    }
    portfolio
}

async fn prices(app: &TestApp, symbol: &str) -> i64 {
    let pool = sqlx::PgPool::connect(&app.db.url).await.unwrap();
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM investment.prices WHERE symbol = $1")
        .bind(symbol)
        .fetch_one(&pool)
        .await
        .unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_racing_fetch_each_listing_once_and_announce_each_portfolio_once() {
    let app = quiet_app().await;
    let announced = app.broker.watch("investment.valuation_changed").await;
    let user = app.signed_in_user().await;
    holding(&app, &user, "EUR", &[("AAA", "USD"), ("BBB", "EUR"), ("CCC", "GBP")]).await;
    holding(&app, &user, "USD", &[("AAA", "USD")]).await;

    let market = Counting::default();
    let platforms: Vec<_> = (0..3).map(|_| platform_for(&app.db.url)).collect();
    let today = IsoDate::today();
    let passes: Vec<Pass> =
        futures::future::join_all(platforms.iter().map(|p| run_once(p, &market, Duration::from_secs(900), today)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();

    let mut asked: Vec<String> = market.asked.lock().unwrap().iter().map(|(s, _, _)| s.clone()).collect();
    asked.sort();
    assert_eq!(asked, ["AAA", "BBB", "CCC"], "each listing once, though two portfolios hold AAA");
    assert_eq!(passes.iter().map(|p| p.refreshed).sum::<usize>(), 3, "{passes:?}");
    assert_eq!(passes.iter().map(|p| p.announced).sum::<usize>(), 2, "{passes:?}");
    // From the oldest open lot to today.
    assert_eq!(market.asked.lock().unwrap()[0].1, ago(5));
    assert_eq!(prices(&app, "AAA").await, 6);

    let events = app.broker.take_exactly(&announced, 2, Duration::from_secs(15)).await;
    for event in &events {
        let event = event.event();
        assert_eq!((event.data["version"].as_i64(), event.data["date"].as_str()), (Some(1), Some(&*today.to_string())));
        assert!(event.data["market_value_minor"].as_i64().unwrap() > 0, "{:?}", event.data);
    }
    app.broker.assert_quiet(&announced, Duration::from_millis(500)).await;

    // Nothing is due again until today's close is older than the refresh interval.
    let again = run_once(&platforms[0], &market, Duration::from_secs(900), today).await.unwrap();
    assert_eq!(again, Pass::default());
    assert_eq!(market.asked.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn after_ten_days_down_the_missed_closes_come_in_one_request() {
    let app = quiet_app().await;
    let user = app.signed_in_user().await;
    holding(&app, &user, "USD", &[("GAP", "USD")]).await;
    let platform = platform_for(&app.db.url);
    let market = Counting::default();
    let today = IsoDate::today();
    run_once(&platform, &market, Duration::from_secs(900), today).await.unwrap();

    // The worker was down: the last close it stored is eleven days old
    // (as if the lots were older and it had run until then).
    let pool = sqlx::PgPool::connect(&app.db.url).await.unwrap();
    sqlx::query("UPDATE investment.listings SET closes_through = $1 WHERE symbol = 'GAP'")
        .bind(ago(11).get())
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM investment.prices WHERE symbol = 'GAP' AND date > $1")
        .bind(ago(11).get())
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(prices(&app, "GAP").await, 0);

    let pass = run_once(&platform, &market, Duration::from_secs(900), today).await.unwrap();
    assert_eq!(pass.refreshed, 1);
    assert_eq!(market.asked.lock().unwrap().last().unwrap(), &("GAP".to_owned(), ago(10), today));
    assert_eq!(prices(&app, "GAP").await, 11, "every day missed, today included");
}

#[tokio::test]
async fn an_outage_of_the_source_delays_the_worker_and_never_fails_it() {
    let app = quiet_app().await;
    let user = app.signed_in_user().await;
    holding(&app, &user, "USD", &[("OUT", "USD")]).await;
    let platform = platform_for(&app.db.url);
    let market = Counting::default();
    market.down.store(true, Ordering::SeqCst);
    let today = IsoDate::today();

    let pass = run_once(&platform, &market, Duration::from_secs(900), today).await.unwrap();
    assert_eq!(pass, Pass { refreshed: 0, source_failed: true, announced: 0 });
    assert_eq!(prices(&app, "OUT").await, 0);

    market.down.store(false, Ordering::SeqCst);
    let pass = run_once(&platform, &market, Duration::from_secs(900), today).await.unwrap();
    assert_eq!(pass, Pass { refreshed: 1, source_failed: false, announced: 1 });
}

#[tokio::test]
async fn the_snapshot_has_each_stored_valuation_as_it_was_announced() {
    let app = quiet_app().await;
    let user = app.signed_in_user().await;
    holding(&app, &user, "EUR", &[("AAA", "USD"), ("BBB", "EUR")]).await;
    let platform = platform_for(&app.db.url);
    let today = IsoDate::today();
    let pass = run_once(&platform, &Offline, Duration::from_secs(900), today).await.unwrap();
    assert_eq!(pass.announced, 1, "{pass:?}");

    let pool = sqlx::PgPool::connect(&app.db.url).await.unwrap();
    let live: Vec<(String,)> = sqlx::query_as(
        "SELECT payload::text FROM investment.outbox WHERE routing_key = 'investment.valuation_changed' ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let live: Vec<serde_json::Value> = live.iter().map(|(p,)| serde_json::from_str(p).unwrap()).collect();
    assert_eq!(live.len(), 1);

    use freedumb_kit::Service;
    use futures::TryStreamExt;
    let snapshot: Vec<_> = freedumb_investment::InvestmentService.snapshot(&platform.db).try_collect().await.unwrap();
    assert_eq!(
        snapshot,
        [freedumb_kit::events::SnapshotEvent { kind: "investment.valuation_changed", data: live[0].clone() }]
    );
}

//! The Twelve Data client against its stub: the key in the header, series
//! cached in Redis and counted, 429s waited out or passed on, 5xx and
//! timeouts retried then reported, malformed bodies named and never cached,
//! and a circuit that opens while the provider keeps failing.

use std::time::{Duration, Instant};

use freedumb_investment::market::{Listing, MarketData, MarketError, Source};
use freedumb_investment::provider::{Settings, TwelveData};
use freedumb_kit::cache::{Cache, Redis};
use freedumb_kit::date::IsoDate;
use freedumb_kit::metrics::Metrics;
use freedumb_kit::money::Currency;
use secrecy::SecretString;

use crate::stub::{KEY, Reply, Stub, series};

fn settings(stub: &Stub) -> Settings {
    Settings {
        url: stub.url.clone(),
        key: SecretString::from(KEY),
        timeout: Duration::from_millis(500),
        attempts: 3,
        backoff: Duration::from_millis(10),
        max_retry_after: Duration::from_secs(2),
        breaker_failures: 3,
        breaker_cooldown: Duration::from_millis(400),
    }
}

/// A client of the stub with a Redis prefix of the test's own, and its metrics.
fn client_of(settings: Settings) -> (TwelveData, Metrics) {
    let url = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let metrics = Metrics::new();
    let cache = Cache::new(Redis::new(&SecretString::from(url), &prefix).unwrap(), metrics.clone());
    (TwelveData::new(settings, cache).unwrap(), metrics)
}

fn d(text: &str) -> IsoDate {
    IsoDate::parse(text).unwrap()
}

fn acme() -> Listing {
    Listing { symbol: "ACME".into(), exchange: "XNAS".into(), currency: Currency::from_code("USD").unwrap() }
}

fn counter(metrics: &Metrics, name: &str) -> u64 {
    let line = format!("{name}{{cache_key_prefix=\"market-data\"}} ");
    metrics.render().lines().find_map(|l| l.strip_prefix(&line).map(|v| v.parse().unwrap())).unwrap_or(0)
}

const TWO_DAYS: &[(&str, &str)] = &[("2025-03-03", "101.25"), ("2025-03-04", "102.50")];

#[tokio::test]
async fn closes_are_asked_with_the_key_in_the_header_and_then_served_from_redis() {
    let stub = Stub::start(Reply::ok(&series("ACME", TWO_DAYS))).await;
    let (client, metrics) = client_of(settings(&stub));

    let quotes = client.closes(&acme(), d("2025-03-01"), d("2025-03-05")).await.unwrap();
    assert_eq!(quotes.len(), 2);
    assert_eq!(
        (quotes[1].date, quotes[1].price.to_string(), quotes[1].source),
        (d("2025-03-04"), "102.50".into(), Source::TwelveData)
    );
    let query = &stub.queries()[0];
    for part in ["symbol=ACME", "mic_code=XNAS", "interval=1day", "start_date=2025-03-01", "end_date=2025-03-05"] {
        assert!(query.contains(part), "{query} lacks {part}");
    }
    let again = client.closes(&acme(), d("2025-03-01"), d("2025-03-05")).await.unwrap();
    assert_eq!(again, quotes);
    assert_eq!(stub.hits(), 1, "the second came from the cache");
    assert_eq!((counter(&metrics, "cache_misses_total"), counter(&metrics, "cache_hits_total")), (1, 1));

    // One day's close is the last trading day's on or before it.
    let stub = Stub::start(Reply::ok(&series("ACME", TWO_DAYS))).await;
    let (weekday_client, _) = client_of(settings(&stub));
    let sunday = weekday_client.close(&acme(), d("2025-03-09")).await.unwrap();
    assert_eq!((sunday.date, sunday.price.to_string()), (d("2025-03-04"), "102.50".into()));
}

#[tokio::test]
async fn rates_are_the_pair_s_series_and_a_currency_into_itself_asks_no_one() {
    let stub = Stub::start(Reply::ok(&series("USD/EUR", &[("2025-03-04", "0.9234")]))).await;
    let (client, _) = client_of(settings(&stub));
    let usd = Currency::from_code("USD").unwrap();
    let eur = Currency::from_code("EUR").unwrap();
    let rate = client.fx(usd, eur, d("2025-03-04")).await.unwrap();
    assert_eq!((rate.rate.to_string(), rate.source), ("0.9234".into(), Source::TwelveData));
    assert!(stub.queries()[0].contains("symbol=USD%2FEUR"), "{:?}", stub.queries());
    assert!(!stub.queries()[0].contains("exchange"), "a pair has no exchange");
    let same = client.fx(eur, eur, d("2025-03-04")).await.unwrap();
    assert_eq!(same.source, Source::Identity);
    assert_eq!(stub.hits(), 1);
}

#[tokio::test]
async fn a_429_is_waited_out_for_its_retry_after_and_a_longer_one_is_passed_on() {
    let stub = Stub::start(Reply::ok(&series("ACME", TWO_DAYS))).await;
    stub.then(
        [Reply::status(429, r#"{"code":429,"message":"slow down","status":"error"}"#).header("retry-after", "1")],
    );
    let (client, _) = client_of(settings(&stub));
    let started = Instant::now();
    client.closes(&acme(), d("2025-03-01"), d("2025-03-05")).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1), "waited {:?}", started.elapsed());
    assert_eq!(stub.hits(), 2);

    // More than the 2 s a request may wait: answered at once, with the wait.
    stub.then([Reply::status(429, "{}").header("retry-after", "120")]);
    let started = Instant::now();
    let err = client.closes(&acme(), d("2025-02-01"), d("2025-02-05")).await.unwrap_err();
    assert_eq!(err, MarketError::RateLimited(120));
    assert!(started.elapsed() < Duration::from_millis(500));
    // The provider's 200-with-an-error-body form of the same.
    let out_of_credits = Reply::ok(r#"{"code":429,"message":"You have run out of API credits","status":"error"}"#);
    stub.then(std::iter::repeat_n(out_of_credits, 3));
    let err = client.closes(&acme(), d("2025-01-01"), d("2025-01-05")).await.unwrap_err();
    assert!(matches!(err, MarketError::RateLimited(_)), "{err:?}");
}

#[tokio::test]
async fn server_errors_are_retried_then_reported_and_nothing_is_cached() {
    let stub = Stub::start(Reply::status(503, "upstream down")).await;
    let (client, metrics) = client_of(settings(&stub));
    let err = client.closes(&acme(), d("2025-03-01"), d("2025-03-05")).await.unwrap_err();
    assert!(matches!(&err, MarketError::Unavailable(why) if why.contains("503")), "{err:?}");
    assert_eq!(stub.hits(), 3, "three attempts");

    stub.always(Reply::ok(&series("ACME", TWO_DAYS)));
    assert_eq!(client.closes(&acme(), d("2025-03-01"), d("2025-03-05")).await.unwrap().len(), 2);
    assert_eq!(stub.hits(), 4, "the failure was not cached");
    assert_eq!(counter(&metrics, "cache_hits_total"), 0);
}

#[tokio::test]
async fn a_malformed_body_is_named_and_not_cached_and_no_data_is_not_a_failure() {
    let stub = Stub::start(Reply::ok("<html>maintenance</html>")).await;
    let (client, _) = client_of(settings(&stub));
    let err = client.closes(&acme(), d("2025-03-01"), d("2025-03-05")).await.unwrap_err();
    assert!(matches!(&err, MarketError::Malformed(why) if why.contains("not its JSON")), "{err:?}");
    stub.always(Reply::ok(r#"{"status":"ok","values":[{"datetime":"2025-03-03","close":"-1"}]}"#));
    let err = client.closes(&acme(), d("2025-03-01"), d("2025-03-05")).await.unwrap_err();
    assert!(matches!(&err, MarketError::Malformed(why) if why.contains("positive decimal")), "{err:?}");
    assert_eq!(stub.hits(), 2, "neither was retried nor cached");

    stub.always(Reply::ok(r#"{"code":400,"message":"No data is available on the specified dates.","status":"error"}"#));
    let err = client.closes(&acme(), d("2025-03-01"), d("2025-03-05")).await.unwrap_err();
    assert!(matches!(err, MarketError::NoData(_)), "{err:?}");
}

#[tokio::test]
async fn a_provider_slower_than_the_timeout_is_an_error_not_a_hang() {
    let stub = Stub::start(Reply::ok(&series("ACME", TWO_DAYS)).slow(Duration::from_secs(3))).await;
    let (client, _) = client_of(Settings { attempts: 1, ..settings(&stub) });
    let started = Instant::now();
    let err = client.closes(&acme(), d("2025-03-01"), d("2025-03-05")).await.unwrap_err();
    assert!(matches!(&err, MarketError::Unavailable(why) if why.contains("timed out")), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[tokio::test]
async fn the_circuit_opens_after_failures_in_a_row_and_lets_one_through_after_its_cooldown() {
    let stub = Stub::start(Reply::status(500, "broken")).await;
    let (client, _) = client_of(Settings { attempts: 1, ..settings(&stub) });
    for _ in 0..3 {
        client.closes(&acme(), d("2025-03-01"), d("2025-03-05")).await.unwrap_err();
    }
    assert_eq!(stub.hits(), 3);
    let err = client.closes(&acme(), d("2025-03-01"), d("2025-03-05")).await.unwrap_err();
    assert!(matches!(&err, MarketError::Unavailable(why) if why.contains("circuit is open")), "{err:?}");
    assert_eq!(stub.hits(), 3, "an open circuit asks no one");

    tokio::time::sleep(Duration::from_millis(450)).await;
    stub.always(Reply::ok(&series("ACME", TWO_DAYS)));
    client.closes(&acme(), d("2025-03-01"), d("2025-03-05")).await.unwrap();
    assert_eq!(stub.hits(), 4, "one went through, and closed it");
    client.closes(&acme(), d("2025-04-01"), d("2025-04-05")).await.unwrap();
}

#[tokio::test]
async fn a_refused_key_is_reported_as_such() {
    let stub = Stub::start(Reply::ok("{}")).await;
    let (client, _) = client_of(Settings { key: SecretString::from("wrong"), ..settings(&stub) });
    let err = client.closes(&acme(), d("2025-03-01"), d("2025-03-05")).await.unwrap_err();
    assert!(matches!(&err, MarketError::Unavailable(why) if why.contains("refused the key")), "{err:?}");
    assert_eq!(stub.hits(), 0);
}

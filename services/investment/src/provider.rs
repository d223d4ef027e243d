//! The market-data provider's HTTP client: Twelve Data's REST API
//! (`https://api.twelvedata.com`, documented at twelvedata.com/docs).
//!
//! One endpoint serves both needs: `GET /time_series` with `interval=1day`,
//! for a listing (`symbol` plus `mic_code` for an ISO 10383 code such as
//! XNAS, else `exchange` such as NASDAQ) or an FX pair (`symbol=USD/EUR`).
//! The key travels as `Authorization: apikey <key>`, as the API documents,
//! never in the URL (which ends up in logs). An answer is
//! `{"meta": {...}, "values": [{"datetime": "2026-01-02", "close": "185.64", ...}], "status": "ok"}`
//! with prices as decimal strings, or `{"code": 404, "message": "...",
//! "status": "error"}`, sometimes with HTTP 200.
//!
//! - **Timeouts**: connecting and the whole request (`MARKET_DATA_TIMEOUT_MS`).
//! - **Retries**: a timeout, a refused connection or a 5xx is tried again, up
//!   to `MARKET_DATA_ATTEMPTS` in all, after an exponential backoff with full
//!   jitter (a random wait up to `MARKET_DATA_BACKOFF_MS × 2^attempt`).
//! - **429**: its `Retry-After` is honoured when it is at most
//!   `MARKET_DATA_MAX_RETRY_AFTER_SECS`; a longer one fails at once with it,
//!   and the API passes it on as its own `Retry-After`.
//! - **Circuit breaker**: after `MARKET_DATA_BREAKER_FAILURES` requests in a
//!   row failed (after their retries), calls fail at once for
//!   `MARKET_DATA_BREAKER_COOLDOWN_SECS`; then one is let through, and its
//!   outcome closes or reopens the circuit. "No data" and 429s are answers,
//!   not failures.
//! - **Cache**: each series in Redis (the kit's `Cache`, counted in
//!   `cache_hits_total` / `cache_misses_total` as `market-data`), for a day
//!   when it ends before today (past closes do not change), else for ten
//!   minutes. Errors are never cached.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use freedumb_kit::cache::Cache;
use freedumb_kit::config::{ConfigError, Env};
use freedumb_kit::date::IsoDate;
use freedumb_kit::money::Currency;
use futures::future::BoxFuture;
use rand::Rng;
use rust_decimal::Decimal;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::market::{FxRate, Listing, MarketData, MarketError, Quote, Source};

/// The cache prefix of provider series (and the label of its metrics).
pub const CACHE: &str = "market-data";

/// How the client talks to the provider; from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub key: SecretString,
    pub timeout: Duration,
    pub attempts: u32,
    pub backoff: Duration,
    pub max_retry_after: Duration,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
}

impl Settings {
    /// `None` without `MARKET_DATA_API_KEY`: the platform runs offline.
    pub fn from_env(env: &Env) -> Result<Option<Settings>, ConfigError> {
        let Some(key) = env.get("MARKET_DATA_API_KEY") else { return Ok(None) };
        let url = env.url("MARKET_DATA_API_URL", &["https", "http"])?;
        let millis = |var: &str, default: u64| -> Result<Duration, ConfigError> {
            Ok(Duration::from_millis(env.parsed_or(var, default, "a whole number of milliseconds")?))
        };
        let count = |var: &str, default: u32| -> Result<u32, ConfigError> {
            let n: u32 = env.parsed_or(var, default, "a whole number from 1 to 10")?;
            if (1..=10).contains(&n) { Ok(n) } else { Err(ConfigError::malformed(var, "a whole number from 1 to 10")) }
        };
        Ok(Some(Settings {
            url: url.expose_secret().trim_end_matches('/').to_owned(),
            key: SecretString::from(key),
            timeout: millis("MARKET_DATA_TIMEOUT_MS", 5_000)?,
            attempts: count("MARKET_DATA_ATTEMPTS", 3)?,
            backoff: millis("MARKET_DATA_BACKOFF_MS", 200)?,
            max_retry_after: env.seconds_or("MARKET_DATA_MAX_RETRY_AFTER_SECS", 10)?,
            breaker_failures: count("MARKET_DATA_BREAKER_FAILURES", 5)?,
            breaker_cooldown: env.seconds_or("MARKET_DATA_BREAKER_COOLDOWN_SECS", 30)?,
        }))
    }
}

/// Consecutive failures, and until when calls fail at once.
#[derive(Debug, Default)]
struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
}

/// Twelve Data's API as a [`MarketData`] source.
#[derive(Clone)]
pub struct TwelveData {
    http: reqwest::Client,
    settings: Arc<Settings>,
    cache: Cache,
    breaker: Arc<Mutex<Breaker>>,
}

/// One daily close as cached.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Point {
    date: IsoDate,
    close: Decimal,
}

#[derive(Debug, Deserialize)]
struct Answer {
    status: Option<String>,
    code: Option<u16>,
    message: Option<String>,
    values: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
struct Value {
    datetime: String,
    close: String,
}

/// What one attempt came to.
enum Attempt {
    Done(Result<Vec<Point>, MarketError>),
    /// Worth another try after a wait (at least the given one).
    Retry(MarketError, Option<Duration>),
}

impl TwelveData {
    pub fn new(settings: Settings, cache: Cache) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.timeout)
            .timeout(settings.timeout)
            .user_agent(concat!("freedumb-investment/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(TwelveData { http, settings: Arc::new(settings), cache, breaker: Arc::default() })
    }

    /// The daily closes of `symbol` in `from..=to`, from the cache or the API.
    async fn series(
        &self,
        symbol: &str,
        exchange: Option<&str>,
        from: IsoDate,
        to: IsoDate,
    ) -> Result<Vec<Point>, MarketError> {
        let id = format!("{symbol}|{}|{from}|{to}", exchange.unwrap_or(""));
        let ttl = if to < IsoDate::today() { Duration::from_secs(24 * 3600) } else { Duration::from_secs(600) };
        let points = self
            .cache
            .get_or_load(CACHE, &id, ttl, || async { self.fetch(symbol, exchange, from, to).await.map(Some) })
            .await?;
        Ok(points.unwrap_or_default())
    }

    fn admit(&self) -> Result<(), MarketError> {
        let breaker = self.breaker.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match breaker.open_until {
            Some(until) if Instant::now() < until => Err(MarketError::Unavailable(format!(
                "the circuit is open after {} failed requests in a row; it lets one through in {} s",
                breaker.failures,
                until.saturating_duration_since(Instant::now()).as_secs().max(1)
            ))),
            _ => Ok(()),
        }
    }

    fn settle(&self, outcome: &Result<Vec<Point>, MarketError>) {
        let mut breaker = self.breaker.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match outcome {
            Ok(_) | Err(MarketError::NoData(_) | MarketError::RateLimited(_)) => *breaker = Breaker::default(),
            Err(_) => {
                breaker.failures += 1;
                if breaker.failures >= self.settings.breaker_failures {
                    breaker.open_until = Some(Instant::now() + self.settings.breaker_cooldown);
                }
            }
        }
    }

    async fn fetch(
        &self,
        symbol: &str,
        exchange: Option<&str>,
        from: IsoDate,
        to: IsoDate,
    ) -> Result<Vec<Point>, MarketError> {
        self.admit()?;
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            match self.attempt(symbol, exchange, from, to).await {
                Attempt::Done(outcome) => break outcome,
                Attempt::Retry(err, _) if attempt >= self.settings.attempts => break Err(err),
                Attempt::Retry(err, wait) => {
                    let ceiling = self.settings.backoff.saturating_mul(1 << (attempt - 1).min(16));
                    let jitter = Duration::from_millis(rand::thread_rng().gen_range(0..=ceiling.as_millis() as u64));
                    let wait = wait.map_or(jitter, |w| w.max(jitter));
                    tracing::warn!(error = %err, symbol, attempt, wait_ms = wait.as_millis() as u64, "market-data request failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        self.settle(&outcome);
        if let Err(err) = &outcome {
            tracing::warn!(error = %err, symbol, "market-data request failed");
        }
        outcome
    }

    async fn attempt(&self, symbol: &str, exchange: Option<&str>, from: IsoDate, to: IsoDate) -> Attempt {
        let mut query = vec![
            ("symbol", symbol.to_owned()),
            ("interval", "1day".to_owned()),
            ("start_date", from.to_string()),
            ("end_date", to.to_string()),
            ("order", "asc".to_owned()),
            ("outputsize", "5000".to_owned()),
        ];
        if let Some(exchange) = exchange {
            // ISO 10383 operating MICs are four letters starting with X.
            let is_mic = exchange.len() == 4 && exchange.starts_with('X');
            query.push((if is_mic { "mic_code" } else { "exchange" }, exchange.to_owned()));
        }
        let request = self
            .http
            .get(format!("{}/time_series", self.settings.url))
            .header("authorization", format!("apikey {}", self.settings.key.expose_secret()))
            .query(&query);
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => {
                let what = if err.is_timeout() { "timed out" } else { "could not be reached" };
                return Attempt::Retry(MarketError::Unavailable(format!("the request {what}")), None);
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(err) => {
                let what = if err.is_timeout() { "timed out" } else { "broke off" };
                return Attempt::Retry(MarketError::Unavailable(format!("the answer {what}")), None);
            }
        };
        if status.as_u16() == 429 {
            return self.rate_limited(retry_after);
        }
        if status.is_server_error() {
            return Attempt::Retry(MarketError::Unavailable(format!("it answered {status}")), None);
        }
        let answer: Answer = match serde_json::from_slice(&body) {
            Ok(answer) => answer,
            Err(err) => {
                return Attempt::Done(Err(MarketError::Malformed(format!(
                    "{status} with a body that is not its JSON ({err})"
                ))));
            }
        };
        if answer.status.as_deref() == Some("error") || !status.is_success() {
            let code = answer.code.unwrap_or(status.as_u16());
            let message = answer.message.unwrap_or_default();
            return match code {
                429 => self.rate_limited(retry_after),
                400 | 404 => {
                    Attempt::Done(Err(MarketError::NoData(format!("{symbol} from {from} to {to} ({message})"))))
                }
                401 | 403 => Attempt::Done(Err(MarketError::Unavailable(format!("it refused the key ({code})")))),
                500..=599 => Attempt::Retry(MarketError::Unavailable(format!("it answered {code}: {message}")), None),
                _ => Attempt::Done(Err(MarketError::Unavailable(format!("it answered {code}: {message}")))),
            };
        }
        let Some(values) = answer.values else {
            return Attempt::Done(Err(MarketError::Malformed("an answer without `values`".into())));
        };
        let mut points = Vec::with_capacity(values.len());
        for value in values {
            let date = value.datetime.get(..10).and_then(|d| IsoDate::parse(d).ok());
            let close = value.close.parse::<Decimal>().ok().filter(|c| *c > Decimal::ZERO);
            match (date, close) {
                (Some(date), Some(close)) => points.push(Point { date, close }),
                _ => {
                    return Attempt::Done(Err(MarketError::Malformed(format!(
                        "a value {:?} closing at {:?} is not a date and a positive decimal",
                        value.datetime, value.close
                    ))));
                }
            }
        }
        points.sort_by_key(|p| p.date);
        Attempt::Done(Ok(points))
    }

    fn rate_limited(&self, retry_after: Option<u64>) -> Attempt {
        match retry_after {
            Some(secs) if Duration::from_secs(secs) > self.settings.max_retry_after => {
                Attempt::Done(Err(MarketError::RateLimited(secs)))
            }
            secs => Attempt::Retry(MarketError::RateLimited(secs.unwrap_or(1)), secs.map(Duration::from_secs)),
        }
    }
}

impl MarketData for TwelveData {
    fn closes<'a>(
        &'a self,
        listing: &'a Listing,
        from: IsoDate,
        to: IsoDate,
    ) -> BoxFuture<'a, Result<Vec<Quote>, MarketError>> {
        Box::pin(async move {
            let points = self.series(&listing.symbol, Some(&listing.exchange), from, to).await?;
            Ok(points.into_iter().map(|p| Quote { price: p.close, date: p.date, source: Source::TwelveData }).collect())
        })
    }

    fn rates(
        &self,
        from: Currency,
        to: Currency,
        start: IsoDate,
        end: IsoDate,
    ) -> BoxFuture<'_, Result<Vec<FxRate>, MarketError>> {
        Box::pin(async move {
            if from == to {
                return Ok(vec![FxRate { rate: Decimal::ONE, date: end, source: Source::Identity }]);
            }
            let points = self.series(&format!("{from}/{to}"), None, start, end).await?;
            Ok(points.into_iter().map(|p| FxRate { rate: p.close, date: p.date, source: Source::TwelveData }).collect())
        })
    }
}

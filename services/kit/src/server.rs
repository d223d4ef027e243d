//! Building and running the HTTP server for a set of services, and the
//! services' background tasks beside it.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::config::{Config, ConfigError, Env};
use crate::error::{ApiError, ErrorBody};
use crate::metrics::Metrics;
use crate::service::{BackgroundTask, CancellationToken, Platform, Service};
use crate::{observe, ops};

/// The largest request body accepted: the seed's `client_max_body_size 10M`.
pub const BODY_LIMIT_BYTES: usize = 10 * 1024 * 1024;

/// The longest request target (path and query) a handler sees; a longer one
/// is a 414 with an [`ErrorBody`](crate::ErrorBody). hyper refuses targets
/// from 65,535 bytes on by itself, with an empty 414, and header lines it
/// cannot parse (a NUL byte in a value) with an empty 400, before any of
/// our code runs: this limit is well below hyper's, so only a target hyper
/// would refuse anyway goes without our body. 8 KiB is nginx's default for a
/// request line, which the gateway in front keeps.
pub const URI_LIMIT_BYTES: usize = 8 * 1024;

/// Why a process could not start. A configuration error exits with code 2.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

#[derive(OpenApi)]
#[openapi(
    info(title = "FREEDUMB API", description = "The FREEDUMB personal-finance platform."),
    modifiers(&BearerAuth),
    components(schemas(ErrorBody)),
)]
struct BaseDoc;

struct BearerAuth;

/// What every operation secured by `bearer` answers about its token.
const BEARER_DESCRIPTION: &str = "An access token from `POST /v1/auth/login` or `/v1/auth/refresh`. \
Every secured operation answers 401 (with `WWW-Authenticate: Bearer`) when the token is missing, \
malformed, forged or expired, or when its sign-in has ended: after `POST /v1/auth/logout`, or after \
a used refresh token of that sign-in was presented again. Other sign-ins of the user keep working. \
It answers 503 with `Retry-After` while the store of ended sign-ins (Redis) cannot be reached, \
because whether the token is still good is then unknown.";

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(BEARER_DESCRIPTION))
                    .build(),
            ),
        );
    }
}

/// The complete router of `services` with the middleware stack, and its
/// OpenAPI document.
pub fn router(
    platform: &Platform,
    env: &Env,
    services: &[&dyn Service],
) -> Result<(Router, utoipa::openapi::OpenApi), ConfigError> {
    let openapi_slot = Arc::new(OnceLock::new());
    let mut api = OpenApiRouter::with_openapi(BaseDoc::openapi()).merge(ops::routes(platform, openapi_slot.clone()));
    for service in services {
        api = api.merge(service.router(platform, env)?);
    }
    let (router, mut doc) = api.split_for_parts();
    // After the merge, so every service's operations get the common answers.
    crate::openapi::complete(&mut doc);
    openapi_slot.set(doc.to_json().expect("an OpenAPI document serialises")).expect("set once");

    let config = &platform.config;
    // `Router::layer` wraps every route and the fallback one by one; the
    // last layer added runs first.
    let router = router
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT_BYTES))
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, config.request_timeout))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal(anyhow::anyhow!("a request handler panicked")).into_response()
        }))
        .layer(axum::middleware::from_fn(limit_uri))
        .layer(axum::middleware::from_fn_with_state(platform.metrics.clone(), observe::observe));
    Ok((router, doc))
}

/// Refuses a request target longer than [`URI_LIMIT_BYTES`] before routing.
async fn limit_uri(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let length = req.uri().path_and_query().map_or(0, |target| target.as_str().len());
    if length > URI_LIMIT_BYTES {
        return ApiError::new(
            axum::http::StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is {length} bytes; at most {URI_LIMIT_BYTES} are accepted"),
        )
        .into_response();
    }
    next.run(req).await
}

/// A server bound to its port, not yet serving.
pub struct Application {
    listener: TcpListener,
    router: Router,
    platform: Platform,
    background: Vec<BackgroundTask>,
}

impl Application {
    /// Reads the process's shared configuration, builds the services' router
    /// and binds the port (`PORT=0` picks a free one, as tests do).
    pub async fn build(config: Config, env: &Env, services: &[&dyn Service]) -> Result<Self, StartError> {
        let platform = Platform::new(config)?;
        let (router, _) = router(&platform, env, services)?;
        let mut background = Vec::new();
        for service in services {
            background.extend(service.background(&platform, env)?);
        }
        let addr = SocketAddr::new(platform.config.host, platform.config.port);
        let listener = TcpListener::bind(addr).await.with_context(|| format!("failed to listen on {addr}"))?;
        Ok(Application { listener, router, platform, background })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// The names of the background tasks `run_until_stopped` will start.
    pub fn background_tasks(&self) -> Vec<&str> {
        self.background.iter().map(BackgroundTask::name).collect()
    }

    /// Serves, and runs the services' background tasks, until `shutdown`
    /// resolves; then stops accepting, lets in-flight requests finish and
    /// background tasks stop (together bounded by `SHUTDOWN_TIMEOUT_SECS`)
    /// and closes the database pool.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Application { listener, router, platform, background } = self;
        let background = BackgroundTasks::start(background, &platform.metrics);
        let (drain_tx, mut drain_rx) = tokio::sync::watch::channel(false);
        let server = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = drain_rx.changed().await;
            });
        let mut server = tokio::spawn(server.into_future());
        tokio::select! {
            result = &mut server => {
                background.stop(platform.config.shutdown_timeout).await;
                return result.context("the server task failed")?.context("the server stopped");
            }
            () = shutdown => {}
        }
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = drain_tx.send(true);
        background.cancel();
        let deadline = platform.config.shutdown_timeout;
        let started = Instant::now();
        match tokio::time::timeout(deadline, &mut server).await {
            Ok(result) => result.context("the server task failed")?.context("the server stopped")?,
            Err(_) => {
                tracing::warn!(
                    deadline_secs = deadline.as_secs(),
                    "requests still running at the shutdown deadline were cut off"
                );
                server.abort();
            }
        }
        // Background tasks had the same head start; they get what is left.
        background.stop(deadline.saturating_sub(started.elapsed())).await;
        platform.db.pool.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The first delay before a failed background task is restarted; it doubles
/// with each failure in a row, up to [`RESTART_DELAY_MAX`].
const RESTART_DELAY_MIN: Duration = Duration::from_secs(1);
const RESTART_DELAY_MAX: Duration = Duration::from_secs(60);
/// A run that lasted this long counts as healthy: the next failure starts
/// over at the shortest delay.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Background tasks under supervision.
///
/// A run that fails (returns an error, panics, or returns before shutdown)
/// is logged with its cause chain and restarted after a delay that grows
/// from 1 s to 60 s. We restart rather than stop the process because the
/// tasks are side jobs of a process whose HTTP API must stay up: an outbox
/// relay that trips over a RabbitMQ failover must not take the write API
/// down with it, and a crash loop of the whole process would be worse than a
/// slow retry loop of one task. The restarts are counted in
/// `background_task_restarts_total{task}` for alerting.
pub struct BackgroundTasks {
    shutdown: CancellationToken,
    supervisors: Vec<(String, AbortOnDrop<()>)>,
}

impl BackgroundTasks {
    /// Starts each task on its own tokio task.
    pub fn start(tasks: Vec<BackgroundTask>, metrics: &Metrics) -> Self {
        let shutdown = CancellationToken::new();
        let supervisors = tasks
            .into_iter()
            .map(|task| {
                let name = task.name().to_owned();
                let span = tracing::info_span!("background", task = %name);
                let handle = tokio::spawn(supervise(task, shutdown.clone(), metrics.clone()).instrument(span));
                (name, AbortOnDrop(handle))
            })
            .collect();
        BackgroundTasks { shutdown, supervisors }
    }

    /// Asks every task to stop, without waiting.
    pub fn cancel(&self) {
        self.shutdown.cancel();
    }

    /// Asks every task to stop and waits up to `deadline` for them; the ones
    /// still running then are aborted.
    pub async fn stop(self, deadline: Duration) {
        self.shutdown.cancel();
        let until = Instant::now() + deadline;
        for (name, mut supervisor) in self.supervisors {
            if tokio::time::timeout_at(until, &mut supervisor.0).await.is_err() {
                tracing::warn!(task = %name, "a background task still running at the shutdown deadline was aborted");
            }
        }
    }
}

/// Aborts the task when dropped, so an abandoned supervisor (and the run it
/// owns) does not outlive its owner.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn supervise(mut task: BackgroundTask, shutdown: CancellationToken, metrics: Metrics) {
    let mut delay = RESTART_DELAY_MIN;
    loop {
        let started = Instant::now();
        // Each run is a task of its own, so a panic ends the run, not the
        // supervisor.
        let mut run = AbortOnDrop(tokio::spawn(task.start(shutdown.clone()).in_current_span()));
        let outcome = (&mut run.0).await;
        let stopping = shutdown.is_cancelled();
        match outcome {
            Ok(Ok(())) if stopping => return,
            Ok(Ok(())) => tracing::warn!("background task ended before shutdown; restarting it"),
            Ok(Err(err)) => tracing::error!(error = %format!("{err:#}"), "background task failed"),
            Err(panic) => tracing::error!(error = %panic_message(panic), "background task panicked"),
        }
        if stopping {
            return;
        }
        if started.elapsed() >= HEALTHY_RUN {
            delay = RESTART_DELAY_MIN;
        }
        tracing::info!(delay_ms = delay.as_millis() as u64, "restarting background task");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
        metrics.background_task_restarted(task.name());
        delay = (delay * 2).min(RESTART_DELAY_MAX);
    }
}

fn panic_message(err: tokio::task::JoinError) -> String {
    match err.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned()),
        Err(err) => err.to_string(),
    }
}

/// Resolves on SIGTERM (Kubernetes, Docker) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    //! The middleware stack, driven without a socket: a throwaway service
    //! with a path parameter, a slow route and a panicking route.

    use std::collections::BTreeMap;
    use std::time::Duration;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use serde_json::Value;
    use tower::ServiceExt;
    use utoipa_axum::routes;
    use uuid::Uuid;

    use super::*;
    use crate::extract::Path;

    struct Probe;

    #[utoipa::path(get, path = "/v1/probe/{id}", params(("id" = Uuid, Path)), responses((status = 200, body = String)))]
    async fn by_id(Path(id): Path<Uuid>) -> String {
        id.to_string()
    }

    #[utoipa::path(get, path = "/v1/probe/slow", responses((status = 200)))]
    async fn slow() -> &'static str {
        tokio::time::sleep(Duration::from_secs(5)).await;
        "done"
    }

    #[utoipa::path(get, path = "/v1/probe/panic", responses((status = 200)))]
    async fn panics() -> &'static str {
        panic!("a bug")
    }

    impl Service for Probe {
        fn name(&self) -> &'static str {
            "probe"
        }
        fn default_port(&self) -> u16 {
            0
        }
        fn schema(&self) -> &'static str {
            "probe"
        }
        fn migrator(&self) -> &'static sqlx::migrate::Migrator {
            static NONE: sqlx::migrate::Migrator = sqlx::migrate::Migrator::DEFAULT;
            &NONE
        }
        fn router(&self, _: &Platform, _: &Env) -> Result<OpenApiRouter, ConfigError> {
            Ok(OpenApiRouter::new().routes(routes!(slow)).routes(routes!(panics)).routes(routes!(by_id)))
        }
    }

    fn app() -> (Router, Platform) {
        let vars: BTreeMap<String, String> = [
            ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none"),
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("JWT_ACCESS_SECRET", "0123456789abcdef0123456789abcdef"),
            ("REQUEST_TIMEOUT_SECS", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let env = Env::from_map(vars);
        let platform = Platform::new(Config::from_env(&env, 0, "probe").unwrap()).unwrap();
        let (router, _) = router(&platform, &env, &[&Probe]).unwrap();
        (router, platform)
    }

    async fn get(router: &Router, path: &str) -> (StatusCode, Value) {
        let response = router.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(body["request_id"], request_id.as_str(), "errors carry the request id");
        }
        (status, body)
    }

    #[tokio::test]
    async fn a_malformed_path_parameter_is_a_400_naming_it() {
        let (router, _) = app();
        let (status, body) = get(&router, "/v1/probe/not-a-uuid").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["code"], "invalid_path_parameter");
        let id = Uuid::new_v4();
        let response =
            router.oneshot(Request::get(format!("/v1/probe/{id}")).body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_nul_byte_in_a_path_segment_is_a_400_naming_the_parameter() {
        let (router, _) = app();
        let (status, body) = get(&router, "/v1/probe/a%00b").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["code"], "invalid_path_parameter");
        assert_eq!(body["details"][0]["field"], "id");
    }

    #[tokio::test]
    async fn a_request_target_past_the_limit_is_a_414_with_our_body() {
        let (router, _) = app();
        let cursor = "x".repeat(URI_LIMIT_BYTES);
        let (status, body) = get(&router, &format!("/v1/probe/slow?cursor={cursor}")).await;
        assert_eq!(status, StatusCode::URI_TOO_LONG);
        assert_eq!(body["code"], "uri_too_long");
        assert!(body["request_id"].is_string(), "{body}");
    }

    #[tokio::test]
    async fn a_slow_handler_is_cut_off_at_the_request_timeout() {
        let (router, _) = app();
        let (status, body) = get(&router, "/v1/probe/slow").await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(body["code"], "timeout");
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_500_without_details() {
        let (router, platform) = app();
        let (status, body) = get(&router, "/v1/probe/panic").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["message"], "an internal error occurred");
        let metrics = platform.metrics.render();
        assert!(metrics.contains(r#"route="/v1/probe/panic",status_code="500""#), "{metrics}");
    }

    #[tokio::test]
    async fn routes_are_labelled_by_template() {
        let (router, platform) = app();
        get(&router, &format!("/v1/probe/{}", Uuid::new_v4())).await;
        assert!(platform.metrics.render().contains(r#"route="/v1/probe/{id}""#));
    }
}

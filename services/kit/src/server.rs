//! Building and running the HTTP server for a set of services.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::config::{Config, ConfigError, Env};
use crate::error::{ApiError, ErrorBody};
use crate::service::{Platform, Service};
use crate::{observe, ops};

/// The largest request body accepted: the seed's `client_max_body_size 10M`.
pub const BODY_LIMIT_BYTES: usize = 10 * 1024 * 1024;

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

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
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
    let (router, doc) = api.split_for_parts();
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
        .layer(axum::middleware::from_fn_with_state(platform.metrics.clone(), observe::observe));
    Ok((router, doc))
}

/// A server bound to its port, not yet serving.
pub struct Application {
    listener: TcpListener,
    router: Router,
    platform: Platform,
}

impl Application {
    /// Reads the process's shared configuration, builds the services' router
    /// and binds the port (`PORT=0` picks a free one, as tests do).
    pub async fn build(config: Config, env: &Env, services: &[&dyn Service]) -> Result<Self, StartError> {
        let platform = Platform::new(config)?;
        let (router, _) = router(&platform, env, services)?;
        let addr = SocketAddr::new(platform.config.host, platform.config.port);
        let listener = TcpListener::bind(addr).await.with_context(|| format!("failed to listen on {addr}"))?;
        Ok(Application { listener, router, platform })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight
    /// requests finish (bounded by `SHUTDOWN_TIMEOUT_SECS`) and closes the
    /// database pool.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Application { listener, router, platform } = self;
        let (drain_tx, mut drain_rx) = tokio::sync::watch::channel(false);
        let server = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = drain_rx.changed().await;
            });
        let mut server = tokio::spawn(server.into_future());
        tokio::select! {
            result = &mut server => return result.context("the server task failed")?.context("the server stopped"),
            () = shutdown => {}
        }
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = drain_tx.send(true);
        let deadline = platform.config.shutdown_timeout;
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
        platform.db.pool.close().await;
        tracing::info!("stopped");
        Ok(())
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

//! The HTTP side on `HTTP_ADDR`: the dashboard page, Prometheus metrics,
//! plain health checks, and the JSON endpoints of `rest`.

use std::sync::Arc;

use axum::{
    Router,
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
    middleware,
    response::{Html, IntoResponse},
    routing::get,
};

use super::{
    JobsApi, limits::http_guard, observe::HttpLayer, origin::same_origin_writes, scrape::Scrape,
};
use crate::{
    health::Health,
    metrics::{self, Metrics},
    watch::WatchHub,
};

/// State of the HTTP handlers.
#[derive(Clone)]
pub struct HttpState {
    /// What `/metrics` reads from PostgreSQL and Redis.
    pub scrape: Arc<Scrape>,
    pub health: Health,
    pub metrics: Arc<Metrics>,
    /// Its open streams are a gauge.
    pub hub: WatchHub,
}

/// The dashboard: one self-contained page (inline CSS and JavaScript, no
/// build step, nothing fetched from elsewhere) that polls `/api/v1/stats`
/// and `/api/v1/translation-jobs`, and follows the job it shows through
/// `/api/v1/translation-jobs/{id}/events`.
const DASHBOARD: &str = include_str!("dashboard.html");

/// `/` (the dashboard), `/metrics`, `/healthz` (the process is alive),
/// `/readyz` (it can serve: PostgreSQL reached and migrated) and
/// `/api/v1/...` (behind the job service's limits; see `limits`). Unknown
/// paths and methods get the API's JSON error body. Every route is counted
/// and timed (and traced) by its template.
pub fn router(state: HttpState, api: JobsApi) -> Router {
    let limits = api.limits().clone();
    let max_body = limits.settings().max_message_size;
    let observe = HttpLayer::new(state.metrics.clone());
    Router::new()
        .route("/", get(dashboard))
        .merge(probes_and_metrics())
        .with_state(state)
        .merge(
            super::rest::routes()
                .with_state(api)
                .layer(middleware::from_fn_with_state(limits, http_guard))
                .layer(DefaultBodyLimit::max(max_body))
                .layer(middleware::from_fn(same_origin_writes)),
        )
        .route_layer(observe)
        .fallback(super::rest::not_found)
        .method_not_allowed_fallback(super::rest::method_not_allowed)
}

/// `MANAGEMENT_ADDR`: `/healthz`, `/readyz` and `/metrics` only, never the
/// job API or the dashboard. Plain HTTP, for probes and scrapes on the
/// cluster network (Kubernetes' HTTP probes cannot present a client
/// certificate, and its gRPC probes cannot speak TLS).
pub fn management_router(state: HttpState) -> Router {
    let observe = HttpLayer::new(state.metrics.clone());
    probes_and_metrics()
        .with_state(state)
        .route_layer(observe)
        .fallback(super::rest::not_found)
        .method_not_allowed_fallback(super::rest::method_not_allowed)
}

fn probes_and_metrics() -> Router<HttpState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn dashboard() -> impl IntoResponse {
    (
        [
            ("cache-control", "no-cache"),
            // The page loads nothing from elsewhere; the browser enforces it.
            (
                "content-security-policy",
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
            ),
        ],
        Html(DASHBOARD),
    )
}

async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.health.is_live() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not live\n")
    }
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    let mut gauges = state.scrape.gauges().await;
    gauges.open_watch_streams = state.hub.open_streams();
    (
        [("content-type", metrics::CONTENT_TYPE)],
        state.metrics.render(&gauges),
    )
}

//! The HTTP side on `HTTP_ADDR`: the dashboard page, Prometheus metrics,
//! plain health checks, and the JSON endpoints of `rest`.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
    middleware,
    response::{Html, IntoResponse},
    routing::get,
};
use sqlx::PgPool;

use super::{JobsApi, limits::http_guard, observe::HttpLayer, origin::same_origin_writes};
use crate::{
    health::Health,
    metrics::{self, Gauges, Metrics},
    queue::{Lane, RedisQueue},
    watch::WatchHub,
};

/// Longest a scrape waits for PostgreSQL and Redis (read side by side)
/// before reporting them down.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// State of the HTTP handlers.
#[derive(Clone)]
pub struct HttpState {
    pub pool: PgPool,
    pub queue: RedisQueue,
    pub health: Health,
    pub metrics: Arc<Metrics>,
    /// Its open streams are a gauge.
    pub hub: WatchHub,
}

/// The dashboard: one self-contained page (inline CSS and JavaScript, no
/// build step, nothing fetched from elsewhere) that polls `/api/v1/stats`
/// and `/api/v1/translation-jobs`.
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
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
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
    let gauges = gauges(&state).await;
    (
        [("content-type", metrics::CONTENT_TYPE)],
        state.metrics.render(&gauges),
    )
}

/// Reads the outbox backlog from PostgreSQL and the policy and lane
/// lengths from Redis, side by side, within [`SCRAPE_TIMEOUT`]: a scrape
/// never hangs on a dead peer, it reports it down.
async fn gauges(state: &HttpState) -> Gauges {
    let mut gauges = Gauges {
        open_watch_streams: state.hub.open_streams(),
        ..Gauges::default()
    };
    let backlog = tokio::time::timeout(
        SCRAPE_TIMEOUT,
        sqlx::query_as::<_, (i64, Option<f64>)>(
            "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8 FROM outbox",
        )
        .fetch_one(&state.pool),
    );
    let redis = tokio::time::timeout(SCRAPE_TIMEOUT, redis_readings(&state.queue));
    let (backlog, redis) = tokio::join!(backlog, redis);
    if let Ok(Ok((count, oldest))) = backlog {
        gauges.database_up = true;
        gauges.outbox_backlog = Some(count);
        gauges.outbox_oldest_age = oldest.map(|secs| Duration::from_secs_f64(secs.max(0.0)));
    }
    if let Ok((policy, lanes)) = redis {
        gauges.redis_up = !lanes.is_empty();
        gauges.redis_maxmemory_policy = policy;
        gauges.lane_lengths = lanes;
    }
    gauges
}

/// Redis's `maxmemory-policy` (when `CONFIG GET` is allowed) and the length
/// of each lane, up to the first that cannot be read.
async fn redis_readings(queue: &RedisQueue) -> (Option<String>, Vec<(&'static str, u64)>) {
    let mut lanes = Vec::with_capacity(Lane::ALL.len());
    if !queue.is_connected() {
        return (None, lanes);
    }
    let policy = queue.maxmemory_policy().await.ok();
    for lane in Lane::ALL {
        match queue.queue_length(lane).await {
            Ok(length) => lanes.push((lane.as_str(), length)),
            Err(_) => break,
        }
    }
    (policy, lanes)
}

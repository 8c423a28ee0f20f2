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

use super::{JobsApi, limits::http_guard};
use crate::{
    health::Health,
    metrics::{Gauges, Metrics},
    queue::{Lane, RedisQueue},
};

/// Longest a scrape waits for PostgreSQL or Redis before reporting it down.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// State of the HTTP handlers.
#[derive(Clone)]
pub struct HttpState {
    pub pool: PgPool,
    pub queue: RedisQueue,
    pub health: Health,
    pub metrics: Arc<Metrics>,
}

/// The dashboard: one self-contained page (inline CSS and JavaScript, no
/// build step, nothing fetched from elsewhere) that polls `/api/v1/stats`
/// and `/api/v1/translation-jobs`.
const DASHBOARD: &str = include_str!("dashboard.html");

/// `/` (the dashboard), `/metrics`, `/healthz` (the process is alive),
/// `/readyz` (it can serve: PostgreSQL reached and migrated) and
/// `/api/v1/...` (behind the job service's limits; see `limits`). Unknown
/// paths and methods get the API's JSON error body.
pub fn router(state: HttpState, api: JobsApi) -> Router {
    let limits = api.limits().clone();
    let max_body = limits.settings().max_message_size;
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
                .layer(DefaultBodyLimit::max(max_body)),
        )
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
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(&gauges),
    )
}

/// Reads the outbox backlog and the lane lengths, each bounded in time.
async fn gauges(state: &HttpState) -> Gauges {
    let mut gauges = Gauges::default();
    let backlog = tokio::time::timeout(
        SCRAPE_TIMEOUT,
        sqlx::query_as::<_, (i64, Option<f64>)>(
            "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8 FROM outbox",
        )
        .fetch_one(&state.pool),
    )
    .await;
    if let Ok(Ok((count, oldest))) = backlog {
        gauges.database_up = true;
        gauges.outbox_backlog = Some(count);
        gauges.outbox_oldest_age = oldest.map(|secs| Duration::from_secs_f64(secs.max(0.0)));
    }
    if state.queue.is_connected() {
        if let Ok(Ok(policy)) =
            tokio::time::timeout(SCRAPE_TIMEOUT, state.queue.maxmemory_policy()).await
        {
            gauges.redis_maxmemory_policy = Some(policy);
        }
        for lane in Lane::ALL {
            match tokio::time::timeout(SCRAPE_TIMEOUT, state.queue.queue_length(lane)).await {
                Ok(Ok(length)) => {
                    gauges.redis_up = true;
                    gauges.lane_lengths.push((lane.as_str(), length));
                }
                _ => break,
            }
        }
    }
    gauges
}

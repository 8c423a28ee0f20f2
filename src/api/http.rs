//! The HTTP side on `HTTP_ADDR`: Prometheus metrics, plain health checks,
//! and the JSON job endpoints of `rest`.

use std::{sync::Arc, time::Duration};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use sqlx::PgPool;

use super::{JobsApi, observe::HttpLayer};
use crate::{
    health::Health,
    metrics::{self, Gauges, Metrics},
    queue::{Lane, RedisQueue},
    watch::WatchHub,
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
    /// Its open streams are a gauge.
    pub hub: WatchHub,
}

/// `/metrics`, `/healthz` (the process is alive), `/readyz` (it can
/// serve: PostgreSQL reached and migrated) and `/api/v1/translation-jobs`.
/// Every route is counted and timed (and traced) by its template.
pub fn router(state: HttpState, api: JobsApi) -> Router {
    let observe = HttpLayer::new(state.metrics.clone());
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
        .merge(super::rest::routes().with_state(api))
        .route_layer(observe)
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

/// Reads the outbox backlog and the lane lengths, each bounded in time.
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

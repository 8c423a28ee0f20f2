//! HTTP JSON on `HTTP_ADDR`: the Go service's create and get endpoints, and
//! list, cancel, retry, queue statistics and the dead-letter redrive, with
//! the same validation and errors as gRPC. Each handler reads the request
//! into its proto form, calls the same `JobsApi` method as gRPC, and writes
//! the JSON of `api::json`.

use std::collections::HashMap;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{
        Path, Query, State,
        rejection::{BytesRejection, PathRejection, QueryRejection},
    },
    http::{Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tonic::Code;

use super::{
    body,
    caller::Caller,
    events::job_events,
    grpc::JobsApi,
    json::{JobPageJson, RedriveJson, StatsJson, job_json},
    status::HttpError,
    wire,
};
use crate::{
    jobs::{JobView, fields::FieldError},
    proto,
};

/// The JSON routes under `/api/v1`.
pub fn routes() -> Router<JobsApi> {
    Router::new()
        .route("/api/v1/translation-jobs", post(create).get(list))
        .route("/api/v1/translation-jobs/{id}", get(read))
        .route("/api/v1/translation-jobs/{id}/events", get(job_events))
        .route("/api/v1/translation-jobs/{id}/cancel", post(cancel))
        .route("/api/v1/translation-jobs/{id}/retry", post(retry))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/dead-letters/redrive", post(redrive))
}

/// Any path no route serves: the same JSON error body as every other error.
pub async fn not_found(method: Method, uri: Uri) -> HttpError {
    HttpError::new(
        StatusCode::NOT_FOUND,
        Code::NotFound,
        format!(
            "no route for {method} {}; the API is under /api/v1/translation-jobs",
            uri.path()
        ),
    )
}

/// A known path with a method it does not serve (axum adds the `Allow`
/// header).
pub async fn method_not_allowed(method: Method, uri: Uri) -> HttpError {
    // grpc-gateway answers the same way: UNIMPLEMENTED with 405.
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        Code::Unimplemented,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn create(
    State(api): State<JobsApi>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let body = body?;
    // Counted before anything is built: an array of a million entries is
    // refused without becoming a million values.
    wire::check_create_json(&body, &api.wire_limits())?;
    let request = body::create_request(&body)?;
    let (job, replayed) = api.create(caller, request).await?;
    let status = if replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(job_json(&job))).into_response())
}

/// `?page_size=&page_token=&status=&novel_id=&view=` (or their proto JSON
/// names). Without `view`, jobs come without their subtasks (BASIC).
async fn list(
    State(api): State<JobsApi>,
    caller: Caller,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, HttpError> {
    let Query(params) = query?;
    let param = |name: &str, json_name: &str| {
        params
            .get(name)
            .or_else(|| params.get(json_name))
            .map(String::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let page_size = match param("page_size", "pageSize").trim() {
        "" => 0,
        raw => raw.parse().map_err(|_| {
            FieldError::new("page_size", format!("must be a whole number, got {raw:?}"))
        })?,
    };
    let status = param("status", "status");
    let view = param("view", "view");
    let request = proto::ListTranslationJobsRequest {
        page_size,
        page_token: param("page_token", "pageToken"),
        status: body::status_by_name(&status).ok_or_else(|| {
            FieldError::new(
                "status",
                format!(
                    "must be PENDING, IN_PROGRESS, COMPLETED, FAILED or CANCELLED, got {status:?}"
                ),
            )
        })?,
        novel_id: param("novel_id", "novelId"),
        view: body::view_by_name(&view).ok_or_else(|| {
            FieldError::new("view", format!("must be BASIC or FULL, got {view:?}"))
        })?,
    };
    let page = api.list(&caller, &request).await?;
    Ok(Json(JobPageJson::from(&page)).into_response())
}

async fn read(
    State(api): State<JobsApi>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, HttpError> {
    let Path(id) = id?;
    let job = api.get(&caller, &id, JobView::Full).await?;
    Ok(Json(job_json(&job)).into_response())
}

async fn cancel(
    State(api): State<JobsApi>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, HttpError> {
    let Path(id) = id?;
    let job = api.cancel(&caller, &id).await?;
    Ok(Json(job_json(&job)).into_response())
}

async fn retry(
    State(api): State<JobsApi>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, HttpError> {
    let Path(id) = id?;
    let job = api.retry(&caller, &id).await?;
    Ok(Json(job_json(&job)).into_response())
}

async fn stats(State(api): State<JobsApi>, caller: Caller) -> Result<Response, HttpError> {
    let stats = api.queue_stats(&caller).await?;
    Ok(Json(StatsJson::from(&stats)).into_response())
}

/// Body `{"limit": N}`, or empty for the default.
async fn redrive(
    State(api): State<JobsApi>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let request = body::redrive_request(&body?)?;
    let redriven = api.redrive(&caller, &request).await?;
    Ok(Json(RedriveJson::from(&redriven)).into_response())
}

//! HTTP JSON for the old callers: the Go service's create and get endpoints
//! on `HTTP_ADDR`, with the same validation and errors as gRPC.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderValue, StatusCode, header::WWW_AUTHENTICATE},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use tonic::Code;

use super::{JobsApi, convert::Caller, proto, status::ApiError};
use crate::jobs::{JobView, fields::FieldError};

/// `POST /api/v1/translation-jobs`, `GET /api/v1/translation-jobs/{id}`,
/// `POST /api/v1/translation-jobs/{id}/cancel` and `.../retry`.
pub fn routes() -> Router<JobsApi> {
    Router::new()
        .route("/api/v1/translation-jobs", post(create))
        .route("/api/v1/translation-jobs/{id}", get(read))
        .route("/api/v1/translation-jobs/{id}/cancel", post(cancel))
        .route("/api/v1/translation-jobs/{id}/retry", post(retry))
}

/// The old service's request body; every field but the first two optional.
/// `null` counts as absent, as it did for the Go service.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct CreateBody {
    #[serde(deserialize_with = "nullable")]
    novel_id: String,
    #[serde(deserialize_with = "nullable")]
    target_lang: String,
    #[serde(deserialize_with = "nullable")]
    source_lang: String,
    #[serde(deserialize_with = "nullable")]
    target_fields: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    enable_code_filter: bool,
    #[serde(deserialize_with = "nullable")]
    output_dir: String,
    /// `low`, `normal` or `high` (or the gRPC names).
    #[serde(deserialize_with = "nullable")]
    priority: String,
    #[serde(deserialize_with = "nullable")]
    subtasks: Vec<SubtaskBody>,
    #[serde(deserialize_with = "nullable")]
    request_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SubtaskBody {
    #[serde(deserialize_with = "nullable")]
    entity_type: String,
    #[serde(deserialize_with = "nullable")]
    entity_id: String,
}

/// Reads `null` as the type's default.
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Debug, Serialize)]
struct SubtaskJson {
    id: String,
    entity_type: String,
    entity_id: String,
    status: &'static str,
    attempts: i32,
    error: Option<String>,
    update_time: Option<String>,
}

#[derive(Debug, Serialize)]
struct JobJson {
    id: String,
    user_id: String,
    novel_id: String,
    source_lang: String,
    target_lang: String,
    target_fields: Vec<String>,
    enable_code_filter: bool,
    output_dir: String,
    priority: &'static str,
    status: &'static str,
    subtasks: Vec<SubtaskJson>,
    completed_subtasks: i32,
    total_subtasks: i32,
    attempts: i32,
    error: Option<String>,
    request_id: Option<String>,
    create_time: Option<String>,
    update_time: Option<String>,
    publish_time: Option<String>,
}

#[derive(Debug, Serialize)]
struct ErrorJson {
    error: ErrorDetail,
}

#[derive(Debug, Serialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// An error answered as JSON with the HTTP status matching its gRPC code.
pub struct HttpError(pub(super) tonic::Status);

impl From<ApiError> for HttpError {
    fn from(error: ApiError) -> Self {
        Self(error.into())
    }
}

impl From<FieldError> for HttpError {
    fn from(error: FieldError) -> Self {
        ApiError::from(error).into()
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = match self.0.code() {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let code = format!("{:?}", self.0.code());
        let body = ErrorJson {
            error: ErrorDetail {
                code: screaming_snake(&code),
                message: self.0.message().to_owned(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750: how to authenticate, and that this token was bad.
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"translation-jobs\""),
            );
        }
        response
    }
}

/// `InvalidArgument` -> `INVALID_ARGUMENT`, as gRPC names its codes.
fn screaming_snake(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (index, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && index > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn priority(raw: &str) -> Result<proto::Priority, FieldError> {
    match raw.to_ascii_lowercase().as_str() {
        "" | "priority_unspecified" => Ok(proto::Priority::Unspecified),
        "low" | "priority_low" => Ok(proto::Priority::Low),
        "normal" | "priority_normal" => Ok(proto::Priority::Normal),
        "high" | "priority_high" => Ok(proto::Priority::High),
        _ => Err(FieldError::new(
            "priority",
            format!("must be low, normal or high, got {raw:?}"),
        )),
    }
}

async fn create(
    State(api): State<JobsApi>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, HttpError> {
    let body: CreateBody = serde_json::from_slice(&body)
        .map_err(|error| FieldError::new("body", format!("is not a valid job request: {error}")))?;
    let request = proto::CreateTranslationJobRequest {
        novel_id: body.novel_id,
        target_lang: body.target_lang,
        source_lang: body.source_lang,
        target_fields: body.target_fields,
        enable_code_filter: body.enable_code_filter,
        output_dir: body.output_dir,
        priority: priority(&body.priority)?.into(),
        subtasks: body
            .subtasks
            .into_iter()
            .map(|s| proto::SubtaskSpec {
                entity_type: s.entity_type,
                entity_id: s.entity_id,
            })
            .collect(),
        request_id: body.request_id,
    };
    let (job, replayed) = api.create(caller, request).await?;
    let status = if replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(job_json(&job))).into_response())
}

async fn read(
    State(api): State<JobsApi>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let job = api.get(&caller, &id, JobView::Full).await?;
    Ok(Json(job_json(&job)).into_response())
}

async fn cancel(
    State(api): State<JobsApi>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let job = api.cancel(&caller, &id).await?;
    Ok(Json(job_json(&job)).into_response())
}

async fn retry(
    State(api): State<JobsApi>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let job = api.retry(&caller, &id).await?;
    Ok(Json(job_json(&job)).into_response())
}

fn time(timestamp: Option<&prost_types::Timestamp>) -> Option<String> {
    let timestamp = timestamp?;
    let nanos = u32::try_from(timestamp.nanos).ok()?;
    DateTime::<Utc>::from_timestamp(timestamp.seconds, nanos)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

fn status_name(status: proto::JobStatus) -> &'static str {
    match status {
        proto::JobStatus::Unspecified => "UNSPECIFIED",
        proto::JobStatus::Pending => "PENDING",
        proto::JobStatus::InProgress => "IN_PROGRESS",
        proto::JobStatus::Completed => "COMPLETED",
        proto::JobStatus::Failed => "FAILED",
        proto::JobStatus::Cancelled => "CANCELLED",
    }
}

fn priority_name(priority: proto::Priority) -> &'static str {
    match priority {
        proto::Priority::Low => "LOW",
        proto::Priority::Unspecified | proto::Priority::Normal => "NORMAL",
        proto::Priority::High => "HIGH",
    }
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

fn job_json(job: &proto::TranslationJob) -> JobJson {
    JobJson {
        id: job.id.clone(),
        user_id: job.user_id.clone(),
        novel_id: job.novel_id.clone(),
        source_lang: job.source_lang.clone(),
        target_lang: job.target_lang.clone(),
        target_fields: job.target_fields.clone(),
        enable_code_filter: job.enable_code_filter,
        output_dir: job.output_dir.clone(),
        priority: priority_name(job.priority()),
        status: status_name(job.status()),
        subtasks: job
            .subtasks
            .iter()
            .map(|s| SubtaskJson {
                id: s.id.clone(),
                entity_type: s.entity_type.clone(),
                entity_id: s.entity_id.clone(),
                status: status_name(s.status()),
                attempts: s.attempts,
                error: non_empty(&s.error),
                update_time: time(s.update_time.as_ref()),
            })
            .collect(),
        completed_subtasks: job.completed_subtasks,
        total_subtasks: job.total_subtasks,
        attempts: job.attempts,
        error: non_empty(&job.error),
        request_id: non_empty(&job.request_id),
        create_time: time(job.create_time.as_ref()),
        update_time: time(job.update_time.as_ref()),
        publish_time: time(job.publish_time.as_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_code_names_are_screaming_snake_case() {
        assert_eq!(screaming_snake("InvalidArgument"), "INVALID_ARGUMENT");
        assert_eq!(screaming_snake("NotFound"), "NOT_FOUND");
        assert_eq!(screaming_snake("Internal"), "INTERNAL");
    }

    #[test]
    fn null_fields_count_as_absent() {
        let body: CreateBody = serde_json::from_str(
            r#"{"novel_id": "n", "target_lang": "en", "target_fields": null,
                "source_lang": null, "enable_code_filter": null, "subtasks": null}"#,
        )
        .unwrap();
        assert!(body.target_fields.is_empty());
        assert!(body.source_lang.is_empty());
        assert!(!body.enable_code_filter);
        assert!(body.subtasks.is_empty());
    }

    #[test]
    fn priorities_accept_short_and_grpc_names() {
        assert_eq!(priority("HIGH").unwrap(), proto::Priority::High);
        assert_eq!(priority("priority_low").unwrap(), proto::Priority::Low);
        assert_eq!(priority("").unwrap(), proto::Priority::Unspecified);
        assert_eq!(priority("urgent").unwrap_err().field, "priority");
    }
}

//! The JSON shapes of the HTTP API, which the CLI's `--json` prints too:
//! jobs with their status and priority as the stored strings (`PENDING`,
//! `HIGH`) and times in RFC 3339, queue statistics, redrive results and
//! errors.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::convert::job_to_proto;
use crate::{jobs::Redriven, proto, stats::QueueStats};

#[derive(Debug, Serialize)]
pub struct SubtaskJson {
    pub id: String,
    pub entity_type: String,
    pub entity_id: String,
    pub status: &'static str,
    pub attempts: i32,
    pub error: Option<String>,
    pub update_time: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct JobJson {
    pub id: String,
    pub user_id: String,
    pub novel_id: String,
    pub source_lang: String,
    pub target_lang: String,
    pub target_fields: Vec<String>,
    pub enable_code_filter: bool,
    pub output_dir: String,
    pub priority: &'static str,
    pub status: &'static str,
    pub subtasks: Vec<SubtaskJson>,
    pub completed_subtasks: i32,
    pub total_subtasks: i32,
    pub attempts: i32,
    pub error: Option<String>,
    pub request_id: Option<String>,
    pub create_time: Option<String>,
    pub update_time: Option<String>,
    pub publish_time: Option<String>,
    pub schedule_time: Option<String>,
    pub max_attempts: i32,
    pub failed_attempts: i32,
    pub retryable: bool,
}

/// A timestamp in RFC 3339 with microseconds, UTC.
pub fn time(timestamp: Option<&prost_types::Timestamp>) -> Option<String> {
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

/// A job as JSON.
pub fn job_json(job: &proto::TranslationJob) -> JobJson {
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
        schedule_time: time(job.schedule_time.as_ref()),
        max_attempts: job.max_attempts,
        failed_attempts: job.failed_attempts,
        retryable: job.retryable,
    }
}

/// One page of jobs.
#[derive(Debug, Serialize)]
pub struct JobPageJson {
    pub jobs: Vec<JobJson>,
    /// Pass as `page_token` for the next page; empty on the last one.
    pub next_page_token: String,
}

impl From<&proto::ListTranslationJobsResponse> for JobPageJson {
    fn from(page: &proto::ListTranslationJobsResponse) -> Self {
        Self {
            jobs: page.jobs.iter().map(job_json).collect(),
            next_page_token: page.next_page_token.clone(),
        }
    }
}

/// One Redis list.
#[derive(Debug, Serialize)]
pub struct LaneJson {
    pub lane: &'static str,
    pub key: String,
    pub length: i64,
    /// Messages ever pushed onto the lane since Redis's data began.
    pub pushed: i64,
}

/// Queue statistics.
#[derive(Debug, Serialize)]
pub struct StatsJson {
    pub queue: String,
    pub redis_reachable: bool,
    pub redis_maxmemory_policy: String,
    /// Empty when Redis is unreachable.
    pub lanes: Vec<LaneJson>,
    /// Exact up to 10,000 rows, PostgreSQL's estimate above.
    pub outbox_backlog: i64,
    /// Whether `outbox_backlog` (and `backlog`) is an estimate.
    pub outbox_backlog_estimated: bool,
    /// `null` when the outbox is empty.
    pub oldest_unpublished_age_seconds: Option<f64>,
    pub dead_letters: i64,
    /// Waiting jobs as backpressure counts them (lanes but dead, plus outbox).
    pub backlog: i64,
    /// `QUEUE_MAX_BACKLOG`; 0 means no limit.
    pub backlog_limit: u64,
    /// Sum of the lanes' `pushed`: its growth over time is the relay's rate.
    pub pushed_total: i64,
}

impl From<&QueueStats> for StatsJson {
    fn from(stats: &QueueStats) -> Self {
        Self {
            queue: stats.queue.as_str().to_owned(),
            redis_reachable: stats.redis_reachable,
            redis_maxmemory_policy: stats.redis_maxmemory_policy.clone(),
            lanes: stats
                .lanes
                .iter()
                .map(|lane| LaneJson {
                    lane: lane.lane.as_str(),
                    key: lane.key.clone(),
                    length: lane.length,
                    pushed: lane.pushed,
                })
                .collect(),
            outbox_backlog: stats.outbox_backlog,
            outbox_backlog_estimated: stats.outbox_backlog_estimated,
            oldest_unpublished_age_seconds: stats
                .oldest_unpublished_age
                .map(|age| age.as_secs_f64()),
            dead_letters: stats.dead_letters,
            backlog: stats.backlog,
            backlog_limit: stats.backlog_limit,
            pushed_total: stats.pushed_total(),
        }
    }
}

/// What a redrive did.
#[derive(Debug, Serialize)]
pub struct RedriveJson {
    /// The jobs queued again (PENDING, each under a new attempt).
    pub jobs: Vec<JobJson>,
    pub stale_count: usize,
    pub unreadable_count: usize,
    pub dead_letters_remaining: u64,
}

impl From<&Redriven> for RedriveJson {
    fn from(redriven: &Redriven) -> Self {
        Self {
            jobs: redriven
                .jobs
                .iter()
                .map(|job| job_json(&job_to_proto(job)))
                .collect(),
            stale_count: redriven.stale,
            unreadable_count: redriven.unreadable,
            dead_letters_remaining: redriven.remaining,
        }
    }
}

impl From<&proto::RedriveDeadLettersResponse> for RedriveJson {
    fn from(response: &proto::RedriveDeadLettersResponse) -> Self {
        Self {
            jobs: response.jobs.iter().map(job_json).collect(),
            stale_count: usize::try_from(response.stale_count).unwrap_or(0),
            unreadable_count: usize::try_from(response.unreadable_count).unwrap_or(0),
            dead_letters_remaining: u64::try_from(response.dead_letters_remaining).unwrap_or(0),
        }
    }
}

/// Every error: `{"error": {"code": "INVALID_ARGUMENT", "message": "..."}}`,
/// the code being the gRPC code's name.
#[derive(Debug, Serialize)]
pub struct ErrorJson {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl ErrorJson {
    pub fn new(code: tonic::Code, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code_name(code),
                message: message.into(),
            },
        }
    }
}

/// `InvalidArgument` -> `INVALID_ARGUMENT`, as gRPC names its codes.
pub fn code_name(code: tonic::Code) -> String {
    let camel = format!("{code:?}");
    let mut out = String::with_capacity(camel.len() + 4);
    for (index, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && index > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_code_names_are_screaming_snake_case() {
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(tonic::Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(tonic::Code::Internal), "INTERNAL");
    }
}

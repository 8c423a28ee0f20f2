//! Requests into domain types and domain types into responses.

use std::collections::HashSet;

use chrono::{DateTime, SubsecRound, Utc};

use uuid::Uuid;

use crate::{
    jobs::{
        Job, JobStatus, JobView, ListQuery, NewJob, Priority, Redriven, SubtaskCounts,
        fields::{
            FieldError, LanguageTag, OutputDir, RequestId, SubtaskSpec, TargetFields, UserId,
            parse_uuid,
        },
    },
    proto,
    stats::QueueStats,
};

/// Page size when the caller gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Larger page sizes are reduced to this.
pub const MAX_PAGE_SIZE: u32 = 500;

/// Parses a list request; the page token must come from the same filters.
pub fn list_query(request: &proto::ListTranslationJobsRequest) -> Result<ListQuery, FieldError> {
    let limit = match request.page_size {
        0 => DEFAULT_PAGE_SIZE,
        size if size < 0 => {
            return Err(FieldError::new("page_size", "must not be negative"));
        }
        size => u32::try_from(size)
            .unwrap_or(MAX_PAGE_SIZE)
            .min(MAX_PAGE_SIZE),
    };
    let status = match proto::JobStatus::try_from(request.status) {
        Ok(proto::JobStatus::Unspecified) => None,
        Ok(proto::JobStatus::Pending) => Some(JobStatus::Pending),
        Ok(proto::JobStatus::InProgress) => Some(JobStatus::InProgress),
        Ok(proto::JobStatus::Completed) => Some(JobStatus::Completed),
        Ok(proto::JobStatus::Failed) => Some(JobStatus::Failed),
        Ok(proto::JobStatus::Cancelled) => Some(JobStatus::Cancelled),
        Err(_) => {
            return Err(FieldError::new(
                "status",
                format!("unknown value {}", request.status),
            ));
        }
    };
    let novel_id = if request.novel_id.is_empty() {
        None
    } else {
        Some(parse_uuid("novel_id", &request.novel_id)?)
    };
    let mut query = ListQuery {
        status,
        novel_id,
        before: None,
        limit,
        view: job_view(request.view, JobView::Basic)?,
    };
    if !request.page_token.is_empty() {
        query.before = Some(parse_page_token(&request.page_token, &query)?);
    }
    Ok(query)
}

/// The view a request asks for (field `view`); `default` when unspecified.
pub fn job_view(raw: i32, default: JobView) -> Result<JobView, FieldError> {
    match proto::TranslationJobView::try_from(raw) {
        Ok(proto::TranslationJobView::Unspecified) => Ok(default),
        Ok(proto::TranslationJobView::Basic) => Ok(JobView::Basic),
        Ok(proto::TranslationJobView::Full) => Ok(JobView::Full),
        Err(_) => Err(FieldError::new(
            "view",
            format!(
                "unknown value {raw}; use TRANSLATION_JOB_VIEW_BASIC or TRANSLATION_JOB_VIEW_FULL"
            ),
        )),
    }
}

/// The opaque token of the page after the one ending with `last`: the id
/// and a fingerprint of the filters, so a token is not reused with others.
pub fn page_token(last: Uuid, query: &ListQuery) -> String {
    format!("{}{:08x}", last.simple(), filter_fingerprint(query))
}

fn parse_page_token(token: &str, query: &ListQuery) -> Result<Uuid, FieldError> {
    let invalid = || {
        FieldError::new(
            "page_token",
            "is not a next_page_token of this listing (with these filters)",
        )
    };
    if token.len() != 40 || !token.is_ascii() {
        return Err(invalid());
    }
    let (id, fingerprint) = token.split_at(32);
    let id = Uuid::try_parse(id).map_err(|_| invalid())?;
    let fingerprint = u32::from_str_radix(fingerprint, 16).map_err(|_| invalid())?;
    if fingerprint != filter_fingerprint(query) {
        return Err(invalid());
    }
    Ok(id)
}

/// FNV-1a over the filters.
fn filter_fingerprint(query: &ListQuery) -> u32 {
    let text = format!(
        "{}|{}",
        query.status.map_or("", JobStatus::as_str),
        query.novel_id.map(|id| id.to_string()).unwrap_or_default()
    );
    text.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// Failed attempts a job may be given at most (`max_attempts`).
pub const MAX_MAX_ATTEMPTS: i32 = 100;
/// A job's `max_attempts` when the create request has none
/// (`JOB_MAX_ATTEMPTS`'s default): a failure is final.
pub const DEFAULT_JOB_MAX_ATTEMPTS: i32 = 1;
/// The furthest ahead a `schedule_time` may be (`MAX_SCHEDULE_AHEAD`'s
/// default).
pub const DEFAULT_MAX_SCHEDULE_AHEAD: std::time::Duration =
    std::time::Duration::from_secs(30 * 24 * 3600);

/// What a create request is checked against and completed with.
#[derive(Debug, Clone, Copy)]
pub struct CreateRules {
    /// `MAX_SUBTASKS_PER_JOB`.
    pub max_subtasks: usize,
    /// `JOB_MAX_ATTEMPTS`: a job's `max_attempts` when the request has none.
    pub default_max_attempts: i32,
    /// `MAX_SCHEDULE_AHEAD`: how far ahead `schedule_time` may be.
    pub max_schedule_ahead: std::time::Duration,
}

impl CreateRules {
    /// The defaults, with `max_subtasks` subtasks per job.
    pub fn with_max_subtasks(max_subtasks: usize) -> Self {
        Self {
            max_subtasks,
            default_max_attempts: DEFAULT_JOB_MAX_ATTEMPTS,
            max_schedule_ahead: DEFAULT_MAX_SCHEDULE_AHEAD,
        }
    }
}

/// Parses a create request. Every problem names its field.
pub fn new_job(
    user_id: UserId,
    request: proto::CreateTranslationJobRequest,
    rules: &CreateRules,
) -> Result<NewJob, FieldError> {
    let max_subtasks = rules.max_subtasks;
    let novel_id = parse_uuid("novel_id", &request.novel_id)?;
    let target_lang = LanguageTag::parse("target_lang", &request.target_lang)?;
    let source_lang = LanguageTag::parse_optional("source_lang", &request.source_lang)?;
    let target_fields = TargetFields::parse("target_fields", &request.target_fields)?;
    let output_dir = OutputDir::parse("output_dir", &request.output_dir)?;
    let priority = priority(request.priority)?;
    let request_id = RequestId::parse_optional("request_id", &request.request_id)?;
    let schedule_time = schedule_time(request.schedule_time, rules.max_schedule_ahead)?;
    let max_attempts = max_attempts(request.max_attempts, rules.default_max_attempts)?;

    if request.subtasks.len() > max_subtasks {
        return Err(FieldError::new(
            "subtasks",
            format!(
                "at most {max_subtasks} subtasks per job, got {}",
                request.subtasks.len()
            ),
        ));
    }
    let mut subtasks = Vec::with_capacity(request.subtasks.len().max(1));
    // Duplicates found with a set: a job may have thousands of subtasks.
    let mut seen: HashSet<(&str, &str)> = HashSet::with_capacity(request.subtasks.len());
    for (index, spec) in request.subtasks.iter().enumerate() {
        SubtaskSpec::check_item("subtasks", index, &spec.entity_type, &spec.entity_id)?;
        if !seen.insert((spec.entity_type.as_str(), spec.entity_id.as_str())) {
            return Err(FieldError::new(
                format!("subtasks[{index}]"),
                format!(
                    "duplicates an earlier subtask ({} {})",
                    spec.entity_type, spec.entity_id
                ),
            ));
        }
    }
    drop(seen);
    // Checked: the request's strings move into the job.
    subtasks.extend(request.subtasks.into_iter().map(|spec| SubtaskSpec {
        entity_type: spec.entity_type,
        entity_id: spec.entity_id,
    }));
    if subtasks.is_empty() {
        subtasks.push(SubtaskSpec::novel(novel_id));
    }

    Ok(NewJob {
        user_id,
        novel_id,
        target_lang,
        source_lang,
        target_fields,
        enable_code_filter: request.enable_code_filter,
        output_dir,
        priority,
        subtasks,
        request_id,
        traceparent: None,
        schedule_time,
        max_attempts,
    })
}

/// `schedule_time`: None for unset or not in the future (now), refused
/// beyond `max_ahead` or when it is not a valid time.
fn schedule_time(
    raw: Option<prost_types::Timestamp>,
    max_ahead: std::time::Duration,
) -> Result<Option<DateTime<Utc>>, FieldError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let time = u32::try_from(raw.nanos)
        .ok()
        .and_then(|nanos| DateTime::<Utc>::from_timestamp(raw.seconds, nanos))
        .ok_or_else(|| {
            FieldError::new(
                "schedule_time",
                format!(
                    "is not a valid time (seconds {}, nanos {})",
                    raw.seconds, raw.nanos
                ),
            )
        })?;
    // PostgreSQL keeps microseconds: the job answers what it stores.
    let time = time.trunc_subsecs(6);
    let now = Utc::now();
    if time <= now {
        return Ok(None);
    }
    let ahead = (time - now).to_std().unwrap_or_default();
    if ahead > max_ahead {
        return Err(FieldError::new(
            "schedule_time",
            format!(
                "{} is {} ahead; at most {} (MAX_SCHEDULE_AHEAD)",
                time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                humantime::format_duration(std::time::Duration::from_secs(ahead.as_secs())),
                humantime::format_duration(max_ahead)
            ),
        ));
    }
    Ok(Some(time))
}

/// `max_attempts`: 0 means the default; 1 to [`MAX_MAX_ATTEMPTS`].
fn max_attempts(raw: i32, default: i32) -> Result<i32, FieldError> {
    match raw {
        0 => Ok(default),
        1..=MAX_MAX_ATTEMPTS => Ok(raw),
        _ => Err(FieldError::new(
            "max_attempts",
            format!(
                "must be between 1 and {MAX_MAX_ATTEMPTS} (0 or absent: JOB_MAX_ATTEMPTS), got {raw}"
            ),
        )),
    }
}

fn priority(raw: i32) -> Result<Priority, FieldError> {
    match proto::Priority::try_from(raw) {
        Ok(proto::Priority::Unspecified | proto::Priority::Normal) => Ok(Priority::Normal),
        Ok(proto::Priority::Low) => Ok(Priority::Low),
        Ok(proto::Priority::High) => Ok(Priority::High),
        Err(_) => Err(FieldError::new(
            "priority",
            format!("unknown value {raw}; use PRIORITY_LOW, PRIORITY_NORMAL or PRIORITY_HIGH"),
        )),
    }
}

fn priority_to_proto(priority: Priority) -> proto::Priority {
    match priority {
        Priority::Low => proto::Priority::Low,
        Priority::Normal => proto::Priority::Normal,
        Priority::High => proto::Priority::High,
    }
}

pub fn status_to_proto(status: JobStatus) -> proto::JobStatus {
    match status {
        JobStatus::Pending => proto::JobStatus::Pending,
        JobStatus::InProgress => proto::JobStatus::InProgress,
        JobStatus::Completed => proto::JobStatus::Completed,
        JobStatus::Failed => proto::JobStatus::Failed,
        JobStatus::Cancelled => proto::JobStatus::Cancelled,
    }
}

fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        // Always below 2e9, so the cast cannot wrap.
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The response for one job.
pub fn job_to_proto(job: &Job) -> proto::TranslationJob {
    proto::TranslationJob {
        id: job.id.to_string(),
        user_id: job.user_id.clone(),
        novel_id: job.novel_id.to_string(),
        source_lang: job.source_lang.clone(),
        target_lang: job.target_lang.clone(),
        target_fields: job.target_fields.clone(),
        enable_code_filter: job.enable_code_filter,
        output_dir: job.output_dir.clone(),
        priority: priority_to_proto(job.priority).into(),
        status: status_to_proto(job.status).into(),
        subtasks: job
            .subtasks
            .iter()
            .map(|s| proto::Subtask {
                id: s.id.to_string(),
                entity_type: s.entity_type.clone(),
                entity_id: s.entity_id.clone(),
                status: status_to_proto(s.status.0).into(),
                attempts: s.attempts,
                error: s.error.clone().unwrap_or_default(),
                update_time: Some(timestamp(s.updated_at)),
            })
            .collect(),
        completed_subtasks: count(job.completed_subtasks()),
        total_subtasks: count(job.subtasks.len()),
        attempts: job.attempts,
        error: job.error.clone().unwrap_or_default(),
        request_id: job.request_id.clone().unwrap_or_default(),
        create_time: Some(timestamp(job.created_at)),
        update_time: Some(timestamp(job.updated_at)),
        publish_time: job.published_at.map(timestamp),
        schedule_time: job.scheduled_at.map(timestamp),
        max_attempts: job.max_attempts,
        failed_attempts: job.failures,
        retryable: job.retryable,
    }
}

/// The response for one job without its subtasks (the BASIC view), with
/// the counts PostgreSQL made.
pub fn job_summary_to_proto(job: &Job, counts: SubtaskCounts) -> proto::TranslationJob {
    let mut summary = job_to_proto(job);
    summary.subtasks.clear();
    summary.completed_subtasks = i32::try_from(counts.completed).unwrap_or(i32::MAX);
    summary.total_subtasks = i32::try_from(counts.total).unwrap_or(i32::MAX);
    summary
}

/// A duration as protobuf's `Duration`.
fn duration(duration: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        // Always below 1e9, so the cast cannot wrap.
        nanos: duration.subsec_nanos() as i32,
    }
}

/// The response of GetQueueStats.
pub fn stats_to_proto(stats: &QueueStats) -> proto::QueueStats {
    proto::QueueStats {
        lanes: stats
            .lanes
            .iter()
            .map(|lane| proto::LaneStats {
                lane: lane.lane.as_str().to_owned(),
                key: lane.key.clone(),
                length: lane.length,
                pushed_count: lane.pushed,
            })
            .collect(),
        outbox_backlog: stats.outbox_backlog,
        outbox_backlog_estimated: stats.outbox_backlog_estimated,
        oldest_unpublished_age: stats.oldest_unpublished_age.map(duration),
        dead_letters: stats.dead_letters,
        redis_reachable: stats.redis_reachable,
        backlog: stats.backlog,
        backlog_limit: i64::try_from(stats.backlog_limit).unwrap_or(i64::MAX),
        redis_maxmemory_policy: stats.redis_maxmemory_policy.clone(),
        queue: stats.queue.as_str().to_owned(),
    }
}

/// The response of RedriveDeadLetters.
pub fn redriven_to_proto(redriven: &Redriven) -> proto::RedriveDeadLettersResponse {
    proto::RedriveDeadLettersResponse {
        jobs: redriven.jobs.iter().map(job_to_proto).collect(),
        stale_count: count(redriven.stale),
        unreadable_count: count(redriven.unreadable),
        dead_letters_remaining: i64::try_from(redriven.remaining).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOVEL: &str = "0b9e8f0e-6b5c-4e6b-8d5e-3f6a2b1c0d9e";

    fn request() -> proto::CreateTranslationJobRequest {
        proto::CreateTranslationJobRequest {
            novel_id: NOVEL.into(),
            target_lang: "en".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_minimal_request_gets_the_defaults_and_one_novel_subtask() {
        let job = new_job(
            UserId::default(),
            request(),
            &CreateRules::with_max_subtasks(10),
        )
        .unwrap();
        assert_eq!(
            job.target_fields.as_slice(),
            ["title", "description", "content"]
        );
        assert_eq!(job.output_dir.as_str(), "outputs/novel_jobs");
        assert_eq!(job.priority, Priority::Normal);
        assert_eq!(job.subtasks, vec![SubtaskSpec::novel(job.novel_id)]);
        assert_eq!(job.subtasks[0].entity_type, "novel");
        assert_eq!(job.subtasks[0].entity_id, NOVEL);
    }

    #[test]
    fn too_many_or_duplicate_subtasks_are_refused() {
        let spec = |id: &str| proto::SubtaskSpec {
            entity_type: "chapter".into(),
            entity_id: id.into(),
        };
        let mut many = request();
        many.subtasks = (0..3).map(|i| spec(&i.to_string())).collect();
        assert_eq!(
            new_job(UserId::default(), many, &CreateRules::with_max_subtasks(2))
                .unwrap_err()
                .field,
            "subtasks"
        );
        let mut twice = request();
        twice.subtasks = vec![spec("1"), spec("2"), spec("1")];
        assert_eq!(
            new_job(
                UserId::default(),
                twice,
                &CreateRules::with_max_subtasks(10)
            )
            .unwrap_err()
            .field,
            "subtasks[2]"
        );
    }

    #[test]
    fn page_tokens_round_trip_and_are_tied_to_their_filters() {
        let mut request = proto::ListTranslationJobsRequest::default();
        let query = list_query(&request).unwrap();
        assert_eq!(query.limit, DEFAULT_PAGE_SIZE);
        let last = Uuid::now_v7();
        request.page_token = page_token(last, &query);
        assert_eq!(list_query(&request).unwrap().before, Some(last));

        request.status = proto::JobStatus::Failed.into();
        assert_eq!(list_query(&request).unwrap_err().field, "page_token");
        request.page_token = "garbage".into();
        assert_eq!(list_query(&request).unwrap_err().field, "page_token");
    }

    #[test]
    fn page_sizes_default_and_cap() {
        let mut request = proto::ListTranslationJobsRequest {
            page_size: 10_000,
            ..Default::default()
        };
        assert_eq!(list_query(&request).unwrap().limit, MAX_PAGE_SIZE);
        request.page_size = -1;
        assert_eq!(list_query(&request).unwrap_err().field, "page_size");
    }

    #[test]
    fn unknown_priority_values_are_refused() {
        let mut bad = request();
        bad.priority = 42;
        assert_eq!(
            new_job(UserId::default(), bad, &CreateRules::with_max_subtasks(10))
                .unwrap_err()
                .field,
            "priority"
        );
    }
}

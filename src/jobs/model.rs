//! Jobs and subtasks as the service sees them.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::fields::{
    LanguageTag, OutputDir, RequestId, SubtaskSpec, TargetFields, TraceParent, UserId,
};
use crate::queue::{JobMessage, Lane};

/// Status of a job or a subtask, stored as the upper-case string that
/// workers write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    Pending,
    InProgress,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Pending,
        JobStatus::InProgress,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "PENDING",
            JobStatus::InProgress => "IN_PROGRESS",
            JobStatus::Completed => "COMPLETED",
            JobStatus::Failed => "FAILED",
            JobStatus::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        JobStatus::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// No worker or reaper moves a job out of these by itself.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// Which lane a job is published to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "LOW",
            Priority::Normal => "NORMAL",
            Priority::High => "HIGH",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [Priority::Low, Priority::Normal, Priority::High]
            .into_iter()
            .find(|p| p.as_str() == raw)
    }

    pub fn lane(self) -> Lane {
        match self {
            Priority::Low => Lane::Low,
            Priority::Normal => Lane::Normal,
            Priority::High => Lane::High,
        }
    }
}

/// A checked request to create a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub user_id: UserId,
    pub novel_id: Uuid,
    pub target_lang: LanguageTag,
    pub source_lang: Option<LanguageTag>,
    pub target_fields: TargetFields,
    pub enable_code_filter: bool,
    pub output_dir: OutputDir,
    pub priority: Priority,
    /// Never empty: when the caller gives none, one subtask for the novel.
    pub subtasks: Vec<SubtaskSpec>,
    pub request_id: Option<RequestId>,
    /// The caller's W3C trace context, passed on in the message.
    pub traceparent: Option<TraceParent>,
    /// When the message is due; None: now.
    pub schedule_time: Option<DateTime<Utc>>,
    /// How many attempts may fail before a failure is final (at least 1).
    pub max_attempts: i32,
}

/// One entity of a job.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Subtask {
    pub id: Uuid,
    pub entity_type: String,
    pub entity_id: String,
    #[sqlx(try_from = "String")]
    pub status: StoredStatus,
    pub attempts: i32,
    pub error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// A stored job with its subtasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: Uuid,
    pub user_id: String,
    pub novel_id: Uuid,
    pub source_lang: String,
    pub target_lang: String,
    pub target_fields: Vec<String>,
    pub enable_code_filter: bool,
    pub output_dir: String,
    pub priority: Priority,
    pub status: JobStatus,
    pub attempts: i32,
    pub error: Option<String>,
    pub request_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
    /// When the current attempt's message is due (a schedule or a retry's
    /// backoff); None when it was queued at once.
    pub scheduled_at: Option<DateTime<Utc>>,
    pub max_attempts: i32,
    /// Attempts that failed since creation or the last retry by hand.
    pub failures: i32,
    /// False once a worker said a retry cannot help.
    pub retryable: bool,
    pub subtasks: Vec<Subtask>,
}

impl Job {
    pub fn completed_subtasks(&self) -> usize {
        self.subtasks
            .iter()
            .filter(|s| s.status.0 == JobStatus::Completed)
            .count()
    }

    /// The message the workers receive for this job's current attempt.
    pub fn message(&self) -> JobMessage {
        JobMessage {
            job_id: self.id.to_string(),
            target_lang: self.target_lang.clone(),
            source_lang: self.source_lang.clone(),
            output_dir: self.output_dir.clone(),
            target_fields: self.target_fields.clone(),
            enable_code_filter: self.enable_code_filter,
            attempt: self.attempts,
            traceparent: None,
        }
    }
}

/// A status read from the database, where a worker may have written it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredStatus(pub JobStatus);

impl TryFrom<String> for StoredStatus {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        JobStatus::parse(&raw)
            .map(StoredStatus)
            .ok_or_else(|| format!("unknown status {raw:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_stored_strings() {
        for status in JobStatus::ALL {
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(JobStatus::parse("pending"), None);
    }

    #[test]
    fn priorities_map_to_lanes() {
        assert_eq!(Priority::High.lane(), Lane::High);
        assert_eq!(Priority::Normal.lane(), Lane::Normal);
        assert_eq!(Priority::Low.lane(), Lane::Low);
        assert_eq!(Priority::default(), Priority::Normal);
    }
}

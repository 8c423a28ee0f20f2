//! The change events the table triggers send on `translation_job_events`
//! (see the migrations): the changed row's state, so a watcher applies it
//! without reading the job.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

/// One change, as the trigger encoded it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    Job(JobChange),
    Subtask(SubtaskChange),
}

/// A job's status, attempts or error changed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JobChange {
    pub job_id: Uuid,
    /// The writing transaction's id (xid8), to tell whether a snapshot
    /// already holds the change.
    #[serde(deserialize_with = "xid")]
    pub xid: u64,
    pub status: String,
    pub attempts: i32,
    #[serde(default)]
    pub error: Option<String>,
    /// The error was too long for a notification: read the job instead.
    #[serde(default)]
    pub reread: bool,
    /// Microseconds since the Unix epoch.
    pub updated_at: i64,
}

/// A subtask's status, attempts or error changed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SubtaskChange {
    pub job_id: Uuid,
    #[serde(deserialize_with = "xid")]
    pub xid: u64,
    pub subtask_id: Uuid,
    pub status: String,
    pub attempts: i32,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub reread: bool,
    pub updated_at: i64,
}

impl Change {
    /// Parses a notification payload. `None` for something else (an older
    /// version's bare job id is handled by the listener).
    pub fn parse(payload: &str) -> Option<Self> {
        serde_json::from_str(payload).ok()
    }

    /// The job id of a payload the triggers wrote, found without parsing
    /// the rest: a process checks whether it watches the job before it
    /// parses the event (it receives the events of every job any replica
    /// watches). `None` when the payload has no such key.
    pub fn peek_job_id(payload: &str) -> Option<Uuid> {
        let key = payload.find("\"job_id\"")?;
        let value = payload[key + "\"job_id\"".len()..]
            .trim_start()
            .strip_prefix(':')?
            .trim_start()
            .strip_prefix('"')?;
        Uuid::try_parse(value.get(..36)?).ok()
    }

    pub fn job_id(&self) -> Uuid {
        match self {
            Change::Job(change) => change.job_id,
            Change::Subtask(change) => change.job_id,
        }
    }

    pub fn xid(&self) -> u64 {
        match self {
            Change::Job(change) => change.xid,
            Change::Subtask(change) => change.xid,
        }
    }
}

/// The trigger's `updated_at` as a time.
pub fn micros_to_time(micros: i64) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_micros(micros)
}

fn xid<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_triggers_send() {
        let job = Change::parse(
            r#"{"kind" : "job", "job_id" : "0b9e8f0e-6b5c-4e6b-8d5e-3f6a2b1c0d9e", "xid" : "7419", "status" : "IN_PROGRESS", "attempts" : 1, "error" : null, "updated_at" : 1764407468123456}"#,
        )
        .unwrap();
        assert_eq!(job.xid(), 7419);
        let Change::Job(job) = job else {
            panic!("a job change")
        };
        assert_eq!(job.status, "IN_PROGRESS");
        assert!(!job.reread);

        let subtask = Change::parse(
            r#"{"kind" : "subtask", "job_id" : "0b9e8f0e-6b5c-4e6b-8d5e-3f6a2b1c0d9e", "xid" : "12", "subtask_id" : "0b9e8f0e-6b5c-4e6b-8d5e-3f6a2b1c0d9f", "status" : "COMPLETED", "attempts" : 1, "reread" : true, "updated_at" : 1}"#,
        )
        .unwrap();
        assert!(matches!(
            subtask,
            Change::Subtask(SubtaskChange { reread: true, .. })
        ));
        assert_eq!(Change::parse("0b9e8f0e-6b5c-4e6b-8d5e-3f6a2b1c0d9e"), None);
    }

    #[test]
    fn the_job_id_is_found_without_parsing_the_event() {
        let id = Uuid::parse_str("0b9e8f0e-6b5c-4e6b-8d5e-3f6a2b1c0d9e").unwrap();
        assert_eq!(
            Change::peek_job_id(
                r#"{"kind" : "subtask", "job_id" : "0b9e8f0e-6b5c-4e6b-8d5e-3f6a2b1c0d9e", "xid" : "12"}"#
            ),
            Some(id)
        );
        assert_eq!(
            Change::peek_job_id(
                r#"{"kind":"job","job_id":"0b9e8f0e-6b5c-4e6b-8d5e-3f6a2b1c0d9e"}"#
            ),
            Some(id)
        );
        assert_eq!(
            Change::peek_job_id(r#"{"kind" : "job", "job_id" : 7}"#),
            None
        );
        assert_eq!(Change::peek_job_id(r#"{"job_id" : "0b9e8f0e"}"#), None);
        assert_eq!(
            Change::peek_job_id("0b9e8f0e-6b5c-4e6b-8d5e-3f6a2b1c0d9e"),
            None
        );
    }
}

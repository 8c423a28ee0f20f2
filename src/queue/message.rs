//! The JSON message a worker pops from the Redis list.
//!
//! The keys and their omit-when-empty behaviour are a fixed contract with the
//! Python workers: they are exactly those of the older Go service's
//! `TranslationJobMessage`. Keys may be added (a worker reading a dict ignores
//! them) but never renamed or dropped.

use serde::{Deserialize, Serialize};

/// One job as the workers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    pub job_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_lang: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_lang: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output_dir: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_fields: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub enable_code_filter: bool,
    /// Not in the Go struct: the job's `attempts` when this message was
    /// queued. A worker claims and updates the job only while `attempts`
    /// still equals it, so a stale copy never runs beside a fresh one.
    /// Always present (0 for a new job).
    #[serde(default)]
    pub attempt: i32,
    /// Not in the Go struct: the caller's W3C trace context, so a worker can
    /// continue the trace. Only present when the caller sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl JobMessage {
    /// The exact bytes pushed onto the list.
    pub fn to_json(&self) -> String {
        // Serialising a struct of strings, a vector of strings and a bool
        // cannot fail; the fallback keeps this function total anyway.
        serde_json::to_string(self)
            .unwrap_or_else(|_| format!("{{\"job_id\":\"{}\"}}", self.job_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> JobMessage {
        JobMessage {
            job_id: "4f1c2a9e-0000-4000-8000-000000000001".into(),
            target_lang: "en".into(),
            source_lang: "ja".into(),
            output_dir: "outputs/novel_jobs".into(),
            target_fields: vec!["title".into(), "description".into(), "content".into()],
            enable_code_filter: true,
            attempt: 0,
            traceparent: None,
        }
    }

    #[test]
    fn serializes_every_key_in_the_go_struct_order() {
        assert_eq!(
            full().to_json(),
            r#"{"job_id":"4f1c2a9e-0000-4000-8000-000000000001","target_lang":"en","source_lang":"ja","output_dir":"outputs/novel_jobs","target_fields":["title","description","content"],"enable_code_filter":true,"attempt":0}"#
        );
    }

    #[test]
    fn omits_empty_strings_empty_lists_and_false() {
        let message = JobMessage {
            job_id: "j".into(),
            target_lang: String::new(),
            source_lang: String::new(),
            output_dir: String::new(),
            target_fields: Vec::new(),
            enable_code_filter: false,
            attempt: 2,
            traceparent: None,
        };
        assert_eq!(message.to_json(), r#"{"job_id":"j","attempt":2}"#);
    }

    #[test]
    fn omits_only_the_source_lang_when_it_is_the_only_empty_field() {
        let message = JobMessage {
            source_lang: String::new(),
            enable_code_filter: false,
            ..full()
        };
        assert_eq!(
            message.to_json(),
            r#"{"job_id":"4f1c2a9e-0000-4000-8000-000000000001","target_lang":"en","output_dir":"outputs/novel_jobs","target_fields":["title","description","content"],"attempt":0}"#
        );
    }

    #[test]
    fn a_trace_context_is_an_extra_key_at_the_end() {
        let message = JobMessage {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            ..full()
        };
        assert!(message.to_json().ends_with(
            r#""enable_code_filter":true,"attempt":0,"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#
        ));
    }

    #[test]
    fn reads_back_what_it_writes() {
        let message = full();
        let parsed: JobMessage = serde_json::from_str(&message.to_json()).unwrap();
        assert_eq!(parsed, message);
    }
}

//! Reading HTTP JSON request bodies into proto requests, as the proto3 JSON
//! mapping does: every field by its proto name (`novel_id`) or its JSON
//! name (`novelId`), `null` as absent, enums by name or number. A value of
//! the wrong type is refused naming its field (`novel_id: must be a string,
//! got a number`), like every other error. Unknown fields are ignored, as
//! the old Go service ignored them.

use serde_json::{Map, Value};

use crate::{jobs::fields::FieldError, proto};

/// A JSON object and where it sits in the request (`""`, `subtasks[2].`).
pub struct Object<'a> {
    fields: &'a Map<String, Value>,
    path: String,
}

/// The body as a JSON object.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, FieldError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(FieldError::new(
            "body",
            "is empty; send a JSON object such as {\"novel_id\": \"...\", \"target_lang\": \"en\"}",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(other) => Err(FieldError::new(
            "body",
            format!("must be a JSON object, got {}", kind(&other)),
        )),
        Err(error) => Err(FieldError::new(
            "body",
            format!("is not valid JSON: {error}"),
        )),
    }
}

/// What kind of JSON value this is, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `novel_id` -> `novelId`, the proto3 JSON name of a field.
fn json_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

impl<'a> Object<'a> {
    pub fn new(fields: &'a Map<String, Value>) -> Self {
        Self {
            fields,
            path: String::new(),
        }
    }

    fn path(&self, name: &str) -> String {
        format!("{}{name}", self.path)
    }

    fn error(&self, name: &str, reason: impl Into<String>) -> FieldError {
        FieldError::new(self.path(name), reason)
    }

    /// The field's value by either name; `None` when absent or `null`.
    fn get(&self, name: &str) -> Result<Option<&'a Value>, FieldError> {
        let camel = json_name(name);
        let by_name = self.fields.get(name).filter(|v| !v.is_null());
        let by_json_name = if camel == name {
            None
        } else {
            self.fields.get(&camel).filter(|v| !v.is_null())
        };
        match (by_name, by_json_name) {
            (Some(_), Some(_)) => Err(self.error(
                name,
                format!("is given twice, as {name} and as {camel}; send one"),
            )),
            (value, None) | (None, value) => Ok(value),
        }
    }

    fn wrong_type(&self, name: &str, wanted: &str, value: &Value) -> FieldError {
        self.error(name, format!("must be {wanted}, got {}", kind(value)))
    }

    /// A string field; absent means empty.
    pub fn string(&self, name: &str) -> Result<String, FieldError> {
        match self.get(name)? {
            None => Ok(String::new()),
            Some(Value::String(text)) => Ok(text.clone()),
            Some(other) => Err(self.wrong_type(name, "a string", other)),
        }
    }

    /// A boolean field; absent means false.
    pub fn boolean(&self, name: &str) -> Result<bool, FieldError> {
        match self.get(name)? {
            None => Ok(false),
            Some(Value::Bool(value)) => Ok(*value),
            Some(other) => Err(self.wrong_type(name, "true or false", other)),
        }
    }

    /// A whole number field; absent means 0.
    pub fn integer(&self, name: &str) -> Result<i64, FieldError> {
        match self.get(name)? {
            None => Ok(0),
            Some(Value::Number(number)) => number
                .as_i64()
                .ok_or_else(|| self.error(name, format!("must be a whole number, got {number}"))),
            // proto3 JSON also writes 64-bit integers as strings.
            Some(Value::String(text)) => text
                .trim()
                .parse()
                .map_err(|_| self.error(name, format!("must be a whole number, got {text:?}"))),
            Some(other) => Err(self.wrong_type(name, "a whole number", other)),
        }
    }

    /// A whole number field that fits an `int32`; absent means 0.
    pub fn int32(&self, name: &str) -> Result<i32, FieldError> {
        let value = self.integer(name)?;
        i32::try_from(value).map_err(|_| self.error(name, format!("is out of range: {value}")))
    }

    /// An RFC 3339 time (`2026-12-24T18:00:00Z`, `...+01:00`); absent means
    /// unset.
    pub fn timestamp(&self, name: &str) -> Result<Option<prost_types::Timestamp>, FieldError> {
        match self.get(name)? {
            None => Ok(None),
            Some(Value::String(text)) => {
                let time = chrono::DateTime::parse_from_rfc3339(text.trim()).map_err(|_| {
                    self.error(
                        name,
                        format!(
                            "must be an RFC 3339 time such as 2026-12-24T18:00:00Z, got {text:?}"
                        ),
                    )
                })?;
                Ok(Some(prost_types::Timestamp {
                    seconds: time.timestamp(),
                    // Always below 2e9, so the cast cannot wrap.
                    nanos: time.timestamp_subsec_nanos() as i32,
                }))
            }
            Some(other) => Err(self.wrong_type(name, "an RFC 3339 time string", other)),
        }
    }

    fn array(&self, name: &str) -> Result<&'a [Value], FieldError> {
        match self.get(name)? {
            None => Ok(&[]),
            Some(Value::Array(items)) => Ok(items),
            Some(other) => Err(self.wrong_type(name, "an array", other)),
        }
    }

    /// An array of strings; absent means empty.
    pub fn strings(&self, name: &str) -> Result<Vec<String>, FieldError> {
        self.array(name)?
            .iter()
            .enumerate()
            .map(|(index, item)| match item {
                Value::String(text) => Ok(text.clone()),
                other => Err(self.wrong_type(&format!("{name}[{index}]"), "a string", other)),
            })
            .collect()
    }

    /// An array of objects; absent means empty.
    pub fn objects(&self, name: &str) -> Result<Vec<Object<'a>>, FieldError> {
        self.array(name)?
            .iter()
            .enumerate()
            .map(|(index, item)| match item {
                Value::Object(fields) => Ok(Object {
                    fields,
                    path: format!("{}{name}[{index}].", self.path),
                }),
                other => Err(self.wrong_type(&format!("{name}[{index}]"), "an object", other)),
            })
            .collect()
    }

    /// An enum by its name (or a short form that `by_name` accepts) or its
    /// number; absent means 0.
    pub fn enumeration(
        &self,
        name: &str,
        by_name: impl Fn(&str) -> Option<i32>,
        valid: impl Fn(i32) -> bool,
        expected: &str,
    ) -> Result<i32, FieldError> {
        match self.get(name)? {
            None => Ok(0),
            Some(Value::String(text)) => by_name(text)
                .ok_or_else(|| self.error(name, format!("must be {expected}, got {text:?}"))),
            Some(Value::Number(number)) => number
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .filter(|n| valid(*n))
                .ok_or_else(|| self.error(name, format!("must be {expected}, got {number}"))),
            Some(other) => Err(self.wrong_type(name, expected, other)),
        }
    }
}

/// `low`, `normal`, `high` or the proto names, any case.
pub fn priority_by_name(raw: &str) -> Option<i32> {
    let priority = match raw.to_ascii_lowercase().as_str() {
        "" | "priority_unspecified" => proto::Priority::Unspecified,
        "low" | "priority_low" => proto::Priority::Low,
        "normal" | "priority_normal" => proto::Priority::Normal,
        "high" | "priority_high" => proto::Priority::High,
        _ => return None,
    };
    Some(priority.into())
}

/// `FAILED`, `failed` or `JOB_STATUS_FAILED`; empty means any.
pub fn status_by_name(raw: &str) -> Option<i32> {
    let upper = raw.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("JOB_STATUS_").unwrap_or(&upper);
    let status = match bare {
        "" | "UNSPECIFIED" => proto::JobStatus::Unspecified,
        "PENDING" => proto::JobStatus::Pending,
        "IN_PROGRESS" => proto::JobStatus::InProgress,
        "COMPLETED" => proto::JobStatus::Completed,
        "FAILED" => proto::JobStatus::Failed,
        "CANCELLED" => proto::JobStatus::Cancelled,
        _ => return None,
    };
    Some(status.into())
}

/// A `TranslationJobView` by name (`basic`, `FULL`,
/// `TRANSLATION_JOB_VIEW_BASIC`; empty is the method's default).
pub fn view_by_name(raw: &str) -> Option<i32> {
    let upper = raw.trim().to_ascii_uppercase();
    let bare = upper
        .strip_prefix("TRANSLATION_JOB_VIEW_")
        .unwrap_or(&upper);
    let view = match bare {
        "" | "UNSPECIFIED" => proto::TranslationJobView::Unspecified,
        "BASIC" => proto::TranslationJobView::Basic,
        "FULL" => proto::TranslationJobView::Full,
        _ => return None,
    };
    Some(view.into())
}

/// A create request from the body of `POST /api/v1/translation-jobs`.
pub fn create_request(body: &[u8]) -> Result<proto::CreateTranslationJobRequest, FieldError> {
    let fields = parse_object(body)?;
    let object = Object::new(&fields);
    Ok(proto::CreateTranslationJobRequest {
        novel_id: object.string("novel_id")?,
        target_lang: object.string("target_lang")?,
        source_lang: object.string("source_lang")?,
        target_fields: object.strings("target_fields")?,
        enable_code_filter: object.boolean("enable_code_filter")?,
        output_dir: object.string("output_dir")?,
        priority: object.enumeration(
            "priority",
            priority_by_name,
            |n| proto::Priority::try_from(n).is_ok(),
            "low, normal or high",
        )?,
        subtasks: object
            .objects("subtasks")?
            .iter()
            .map(|subtask| {
                Ok(proto::SubtaskSpec {
                    entity_type: subtask.string("entity_type")?,
                    entity_id: subtask.string("entity_id")?,
                })
            })
            .collect::<Result<_, FieldError>>()?,
        request_id: object.string("request_id")?,
        schedule_time: object.timestamp("schedule_time")?,
        max_attempts: object.int32("max_attempts")?,
    })
}

/// A redrive request from the body of `POST /api/v1/dead-letters/redrive`;
/// an empty body means the defaults.
pub fn redrive_request(body: &[u8]) -> Result<proto::RedriveDeadLettersRequest, FieldError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(proto::RedriveDeadLettersRequest::default());
    }
    let fields = parse_object(body)?;
    let limit = Object::new(&fields).integer("limit")?;
    Ok(proto::RedriveDeadLettersRequest {
        limit: i32::try_from(limit)
            .map_err(|_| FieldError::new("limit", format!("must be at most {}", i32::MAX)))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(body: &str) -> Result<proto::CreateTranslationJobRequest, FieldError> {
        create_request(body.as_bytes())
    }

    #[test]
    fn a_wrong_type_names_the_field() {
        let error = create(r#"{"novel_id": 5}"#).unwrap_err();
        assert_eq!(
            error.to_string(),
            "novel_id: must be a string, got a number"
        );
        let error = create(r#"{"target_fields": ["title", 3]}"#).unwrap_err();
        assert_eq!(error.field, "target_fields[1]");
        let error = create(r#"{"subtasks": [{"entity_type": "c", "entity_id": 1}]}"#).unwrap_err();
        assert_eq!(error.field, "subtasks[0].entity_id");
        let error = create(r#"{"enable_code_filter": "yes"}"#).unwrap_err();
        assert_eq!(error.field, "enable_code_filter");
        let error = create(r#"{"subtasks": {}}"#).unwrap_err();
        assert_eq!(
            error.to_string(),
            "subtasks: must be an array, got an object"
        );
    }

    #[test]
    fn proto_json_names_are_accepted_too() {
        let request = create(
            r#"{"novelId": "n", "targetLang": "en", "sourceLang": "ja", "targetFields": ["title"],
                "enableCodeFilter": true, "outputDir": "o", "requestId": "r",
                "subtasks": [{"entityType": "chapter", "entityId": "1"}], "priority": "PRIORITY_HIGH"}"#,
        )
        .unwrap();
        assert_eq!(request.novel_id, "n");
        assert_eq!(request.target_lang, "en");
        assert_eq!(request.source_lang, "ja");
        assert_eq!(request.target_fields, ["title"]);
        assert!(request.enable_code_filter);
        assert_eq!(request.output_dir, "o");
        assert_eq!(request.request_id, "r");
        assert_eq!(request.subtasks[0].entity_type, "chapter");
        assert_eq!(request.subtasks[0].entity_id, "1");
        assert_eq!(request.priority(), proto::Priority::High);
        let error = create(r#"{"novel_id": "a", "novelId": "b"}"#).unwrap_err();
        assert_eq!(error.field, "novel_id");
    }

    #[test]
    fn null_fields_count_as_absent() {
        let request = create(
            r#"{"novel_id": "n", "target_lang": "en", "target_fields": null,
                "source_lang": null, "enable_code_filter": null, "subtasks": null, "priority": null}"#,
        )
        .unwrap();
        assert!(request.target_fields.is_empty());
        assert!(request.source_lang.is_empty());
        assert!(!request.enable_code_filter);
        assert!(request.subtasks.is_empty());
        assert_eq!(request.priority(), proto::Priority::Unspecified);
    }

    #[test]
    fn priorities_accept_short_and_proto_names_and_numbers() {
        let priority =
            |raw: &str| create(&format!(r#"{{"priority": {raw}}}"#)).map(|r| r.priority());
        assert_eq!(priority(r#""HIGH""#).unwrap(), proto::Priority::High);
        assert_eq!(priority(r#""priority_low""#).unwrap(), proto::Priority::Low);
        assert_eq!(priority("3").unwrap(), proto::Priority::High);
        assert_eq!(priority(r#""urgent""#).unwrap_err().field, "priority");
        assert_eq!(priority("42").unwrap_err().field, "priority");
    }

    #[test]
    fn bodies_that_are_not_objects_are_refused_as_body() {
        for bad in ["", "  ", "{not json", "[]", "5"] {
            assert_eq!(create(bad).unwrap_err().field, "body", "{bad:?}");
        }
    }

    #[test]
    fn statuses_accept_short_and_proto_names() {
        assert_eq!(
            status_by_name("failed"),
            Some(proto::JobStatus::Failed.into())
        );
        assert_eq!(
            status_by_name("JOB_STATUS_IN_PROGRESS"),
            Some(proto::JobStatus::InProgress.into())
        );
        assert_eq!(status_by_name(""), Some(0));
        assert_eq!(status_by_name("done"), None);
    }

    #[test]
    fn redrive_bodies_may_be_empty() {
        assert_eq!(redrive_request(b"").unwrap().limit, 0);
        assert_eq!(redrive_request(br#"{"limit": 5}"#).unwrap().limit, 5);
        assert_eq!(
            redrive_request(br#"{"limit": "x"}"#).unwrap_err().field,
            "limit"
        );
    }
}

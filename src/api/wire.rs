//! Counting a request's repeated fields before it is decoded.
//!
//! An empty entry of a repeated field costs two bytes on the wire and tens
//! of bytes decoded: a 2 MB `BatchCreateTranslationJobs` of a million empty
//! requests, or a create with a million empty subtasks, decodes to hundreds
//! of MB before any check of the decoded message runs. The counts here are
//! read from the protobuf wire format (gRPC) or the JSON text (HTTP) without
//! materialising anything, and a request over a limit is refused with the
//! same INVALID_ARGUMENT, naming the field, that the decoded check gives.

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::jobs::fields::{FieldError, MAX_TARGET_FIELDS};

/// The limits the counts are held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLimits {
    /// `MAX_SUBTASKS_PER_JOB`.
    pub max_subtasks: usize,
    /// `MAX_BATCH_SIZE`.
    pub max_batch: usize,
}

/// `CreateTranslationJobRequest`: `target_fields` = 4, `subtasks` = 8.
const CREATE_TARGET_FIELDS: u64 = 4;
const CREATE_SUBTASKS: u64 = 8;
/// `BatchCreateTranslationJobsRequest`: `requests` = 1.
const BATCH_REQUESTS: u64 = 1;

/// Protobuf wire types.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LENGTH_DELIMITED: u64 = 2;
const FIXED32: u64 = 5;

fn too_many_subtasks(path: &str, limits: &WireLimits, count: usize) -> FieldError {
    FieldError::new(
        format!("{path}subtasks"),
        format!(
            "at most {} subtasks per job, got {count}",
            limits.max_subtasks
        ),
    )
}

fn too_many_target_fields(path: &str, count: usize) -> FieldError {
    FieldError::new(
        format!("{path}target_fields"),
        format!("must name at most {MAX_TARGET_FIELDS} fields, got {count}"),
    )
}

fn too_many_requests(limits: &WireLimits, count: usize) -> FieldError {
    FieldError::new(
        "requests",
        format!("at most {} jobs per batch, got {count}", limits.max_batch),
    )
}

/// One field of an encoded message: its number and, for a length-delimited
/// one, its bytes. `None` at the end; malformed input ends the walk (the
/// decoder then refuses it with its own error).
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Fields<'a> {
    type Item = (u64, Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let key = varint(&mut self.rest)?;
        let (number, wire_type) = (key >> 3, key & 7);
        match wire_type {
            VARINT => {
                varint(&mut self.rest)?;
                Some((number, None))
            }
            FIXED64 => self.skip(8).map(|()| (number, None)),
            FIXED32 => self.skip(4).map(|()| (number, None)),
            LENGTH_DELIMITED => {
                let length = usize::try_from(varint(&mut self.rest)?).ok()?;
                let bytes = self.rest.get(..length)?;
                self.rest = &self.rest[length..];
                Some((number, Some(bytes)))
            }
            // Groups (deprecated) and unknown wire types: not ours to judge.
            _ => None,
        }
    }
}

impl Fields<'_> {
    fn skip(&mut self, length: usize) -> Option<()> {
        self.rest = self.rest.get(length..)?;
        Some(())
    }
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Checks an encoded `CreateTranslationJobRequest` (`path` is where it sits:
/// `""`, or `requests[3].` in a batch).
pub fn check_create(message: &[u8], limits: &WireLimits, path: &str) -> Result<(), FieldError> {
    let (mut subtasks, mut target_fields) = (0usize, 0usize);
    for (number, bytes) in (Fields { rest: message }) {
        match (number, bytes) {
            (CREATE_SUBTASKS, Some(_)) => subtasks += 1,
            (CREATE_TARGET_FIELDS, Some(_)) => target_fields += 1,
            _ => {}
        }
    }
    if subtasks > limits.max_subtasks {
        return Err(too_many_subtasks(path, limits, subtasks));
    }
    if target_fields > MAX_TARGET_FIELDS {
        return Err(too_many_target_fields(path, target_fields));
    }
    Ok(())
}

/// Checks an encoded `BatchCreateTranslationJobsRequest`: the number of
/// requests, then each request's own counts.
pub fn check_batch(message: &[u8], limits: &WireLimits) -> Result<(), FieldError> {
    let requests = || {
        (Fields { rest: message })
            .filter(|(number, bytes)| *number == BATCH_REQUESTS && bytes.is_some())
            .filter_map(|(_, bytes)| bytes)
    };
    let count = requests().count();
    if count > limits.max_batch {
        return Err(too_many_requests(limits, count));
    }
    for (index, request) in requests().enumerate() {
        check_create(request, limits, &format!("requests[{index}]."))?;
    }
    Ok(())
}

/// Checks an HTTP JSON create body (`novel_id` or `novelId` style names)
/// by walking its text: arrays are counted, never built. Anything that is
/// not a JSON object passes, for the parser to refuse with its own error.
pub fn check_create_json(body: &[u8], limits: &WireLimits) -> Result<(), FieldError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    match deserializer.deserialize_any(CreateCounts { limits }) {
        Ok(()) => Ok(()),
        Err(error) => match error.classify() {
            // Our own refusal travels as a custom error with its field.
            serde_json::error::Category::Data => Err(refusal_of(&error.to_string())),
            _ => Ok(()),
        },
    }
}

/// Carries a refusal through serde's error type as `field\u{0}reason`.
fn refusal(error: FieldError) -> String {
    format!("{}\u{0}{}", error.field, error.reason)
}

fn refusal_of(text: &str) -> FieldError {
    // serde_json appends " at line L column C".
    let text = text.rsplit_once(" at line ").map_or(text, |(head, _)| head);
    match text.split_once('\u{0}') {
        Some((field, reason)) => FieldError::new(field.to_owned(), reason.to_owned()),
        None => FieldError::new("body", text.to_owned()),
    }
}

struct CreateCounts<'a> {
    limits: &'a WireLimits,
}

impl<'de> Visitor<'de> for CreateCounts<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "subtasks" => {
                    let count = map.next_value_seed(Count)?;
                    if count > self.limits.max_subtasks {
                        return Err(de::Error::custom(refusal(too_many_subtasks(
                            "",
                            self.limits,
                            count,
                        ))));
                    }
                }
                "target_fields" | "targetFields" => {
                    let count = map.next_value_seed(Count)?;
                    if count > MAX_TARGET_FIELDS {
                        return Err(de::Error::custom(refusal(too_many_target_fields(
                            "", count,
                        ))));
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    // Not an object: the parser says what is wrong.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// The number of elements of an array value (0 for anything else).
struct Count;

impl<'de> de::DeserializeSeed<'de> for Count {
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_any(CountVisitor)
    }
}

struct CountVisitor;

impl<'de> Visitor<'de> for CountVisitor {
    type Value = usize;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut count = 0;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            count += 1;
        }
        Ok(count)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(0)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<usize, E> {
        Ok(0)
    }
    fn visit_unit<E: de::Error>(self) -> Result<usize, E> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::proto::{
        BatchCreateTranslationJobsRequest, CreateTranslationJobRequest, SubtaskSpec,
    };

    const LIMITS: WireLimits = WireLimits {
        max_subtasks: 3,
        max_batch: 2,
    };

    fn create(subtasks: usize, target_fields: usize) -> CreateTranslationJobRequest {
        CreateTranslationJobRequest {
            novel_id: "n".into(),
            target_lang: "en".into(),
            target_fields: vec![String::new(); target_fields],
            subtasks: vec![SubtaskSpec::default(); subtasks],
            ..Default::default()
        }
    }

    #[test]
    fn repeated_fields_are_counted_on_the_wire() {
        assert!(check_create(&create(3, 32).encode_to_vec(), &LIMITS, "").is_ok());
        let error = check_create(&create(4, 0).encode_to_vec(), &LIMITS, "").unwrap_err();
        assert_eq!(error.field, "subtasks");
        assert_eq!(error.reason, "at most 3 subtasks per job, got 4");
        let error = check_create(&create(0, 33).encode_to_vec(), &LIMITS, "").unwrap_err();
        assert_eq!(error.field, "target_fields");

        let batch = |requests: Vec<CreateTranslationJobRequest>| {
            BatchCreateTranslationJobsRequest { requests }.encode_to_vec()
        };
        assert!(check_batch(&batch(vec![create(3, 1), create(0, 0)]), &LIMITS).is_ok());
        let error = check_batch(&batch(vec![create(0, 0); 3]), &LIMITS).unwrap_err();
        assert_eq!(
            (error.field.as_str(), error.reason.as_str()),
            ("requests", "at most 2 jobs per batch, got 3")
        );
        let error = check_batch(&batch(vec![create(1, 0), create(9, 0)]), &LIMITS).unwrap_err();
        assert_eq!(error.field, "requests[1].subtasks");
        // Garbage is left to the decoder.
        assert!(check_batch(&[0xff, 0xff, 0xff], &LIMITS).is_ok());
        assert!(check_create(&[0x42], &LIMITS, "").is_ok());
    }

    #[test]
    fn json_arrays_are_counted_without_being_built() {
        let ok = br#"{"novel_id":"n","subtasks":[{},{},{}],"targetFields":["a"],"x":[1,[2]]}"#;
        assert!(check_create_json(ok, &LIMITS).is_ok());
        let error =
            check_create_json(br#"{"subtasks":[0,0,0,0],"novel_id":"n"}"#, &LIMITS).unwrap_err();
        assert_eq!(error.field, "subtasks");
        assert_eq!(error.reason, "at most 3 subtasks per job, got 4");
        let fields = format!(r#"{{"target_fields":[{}]}}"#, vec!["0"; 33].join(","));
        let error = check_create_json(fields.as_bytes(), &LIMITS).unwrap_err();
        assert_eq!(error.field, "target_fields");
        // Not JSON, not an object, a wrong type: the parser's business.
        for body in [&b"{nope"[..], b"[1,2]", b"\"s\"", br#"{"subtasks":5}"#, b""] {
            assert!(check_create_json(body, &LIMITS).is_ok(), "{body:?}");
        }
    }
}

//! Checked values of a new job. Requests are parsed into these types at the
//! edge, so the code behind it never sees an unchecked string.

use std::fmt;

use uuid::Uuid;

use super::subtags;

/// Longest language tag accepted (BCP 47 allows 35 characters for the
/// common forms).
pub const MAX_LANGUAGE_TAG_LEN: usize = 35;
/// Most target fields one job may name.
pub const MAX_TARGET_FIELDS: usize = 32;
/// Longest target field name.
pub const MAX_TARGET_FIELD_LEN: usize = 64;
/// Longest output directory, in bytes.
pub const MAX_OUTPUT_DIR_LEN: usize = 255;
/// Longest subtask entity type.
pub const MAX_ENTITY_TYPE_LEN: usize = 64;
/// Longest subtask entity id.
pub const MAX_ENTITY_ID_LEN: usize = 256;
/// Longest idempotency key.
pub const MAX_REQUEST_ID_LEN: usize = 128;
/// Longest user id taken from the caller's metadata.
pub const MAX_USER_ID_LEN: usize = 128;

/// Fields a worker translates when the caller names none.
pub const DEFAULT_TARGET_FIELDS: [&str; 3] = ["title", "description", "content"];
/// Where a worker writes when the caller names no directory.
pub const DEFAULT_OUTPUT_DIR: &str = "outputs/novel_jobs";
/// Entity type of the subtask created when the caller gives none.
pub const NOVEL_ENTITY_TYPE: &str = "novel";

/// A request field that is missing or malformed, named by its path in the
/// request (`target_lang`, `subtasks[2].entity_id`, `requests[4].novel_id`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Prefixes the field path, e.g. `requests[3].` for a batch item.
    pub fn within(self, prefix: &str) -> Self {
        Self {
            field: format!("{prefix}{}", self.field),
            reason: self.reason,
        }
    }
}

/// Shows a caller's value in an error message without echoing megabytes.
fn shown(raw: &str) -> String {
    const SHOWN: usize = 40;
    if raw.chars().count() <= SHOWN {
        format!("{raw:?}")
    } else {
        let head: String = raw.chars().take(SHOWN).collect();
        format!("{head:?}...")
    }
}

/// Parses a UUID field.
pub fn parse_uuid(field: &str, raw: &str) -> Result<Uuid, FieldError> {
    if raw.is_empty() {
        return Err(FieldError::new(field, "is required (a UUID)"));
    }
    Uuid::try_parse(raw)
        .map_err(|_| FieldError::new(field, format!("must be a UUID, got {}", shown(raw))))
}

/// A BCP 47 language tag in its canonical case (`en`, `pt-BR`,
/// `zh-Hant-TW`), its language, script and region checked against ISO 639,
/// ISO 15924, ISO 3166-1 and UN M.49 (see `subtags`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanguageTag(String);

/// Examples named in error messages.
const LANGUAGE_TAG_EXAMPLES: &str = "such as \"en\", \"pt-BR\" or \"zh-Hant-TW\"";

impl LanguageTag {
    /// Parses and canonicalises a tag: `EN` -> `en`, `pt-br` -> `pt-BR`,
    /// `zh-hant-tw` -> `zh-Hant-TW`, and a three-letter language code that
    /// has a two-letter one to it (`eng` -> `en`), as BCP 47 asks.
    /// Variants, extensions and private-use parts are checked for form only.
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        if raw.is_empty() {
            return Err(FieldError::new(
                field,
                "is required (a language tag such as \"en\")",
            ));
        }
        if raw.len() > MAX_LANGUAGE_TAG_LEN {
            return Err(FieldError::new(
                field,
                format!("must be at most {MAX_LANGUAGE_TAG_LEN} characters"),
            ));
        }
        let malformed = || {
            FieldError::new(
                field,
                format!(
                    "must be a BCP 47 language tag {LANGUAGE_TAG_EXAMPLES}, got {}",
                    shown(raw)
                ),
            )
        };
        if raw.contains('_') && !raw.contains('-') {
            return Err(FieldError::new(
                field,
                format!(
                    "must separate its parts with '-', not '_' (\"{}\"), got {}",
                    raw.replace('_', "-"),
                    shown(raw)
                ),
            ));
        }
        let parts: Vec<&str> = raw.split('-').collect();
        if parts.iter().any(|part| {
            part.is_empty() || part.len() > 8 || !part.chars().all(|c| c.is_ascii_alphanumeric())
        }) {
            return Err(malformed());
        }
        let unknown = |part: &str, what: &str| {
            FieldError::new(field, format!("{part:?} in {} is not {what}", shown(raw)))
        };
        let letters = |part: &str| part.chars().all(|c| c.is_ascii_alphabetic());
        let mut canonical: Vec<String> = Vec::with_capacity(parts.len());
        let mut rest = parts.iter().copied().peekable();

        // Language: 2 or 3 letters from ISO 639.
        let language = rest.next().unwrap_or_default().to_ascii_lowercase();
        if !letters(&language) || language.len() > 3 || language.len() < 2 {
            return Err(if letters(&language) && language.len() > 3 {
                FieldError::new(
                    field,
                    format!(
                        "must be a language tag {LANGUAGE_TAG_EXAMPLES} (an ISO 639 language code first), got {}",
                        shown(raw)
                    ),
                )
            } else {
                malformed()
            });
        }
        if !subtags::is_language(&language) {
            return Err(unknown(&language, "an ISO 639 language code"));
        }
        canonical.push(subtags::shorter_language(&language).map_or(language, str::to_owned));
        // Extended language subtags: up to three of 3 letters.
        for _ in 0..3 {
            match rest.peek() {
                Some(part) if part.len() == 3 && letters(part) => {
                    let extlang = part.to_ascii_lowercase();
                    if !subtags::is_language(&extlang) {
                        return Err(unknown(&extlang, "an ISO 639 language code"));
                    }
                    canonical.push(extlang);
                    rest.next();
                }
                _ => break,
            }
        }
        // Script: 4 letters from ISO 15924, title case.
        if let Some(part) = rest.next_if(|part| part.len() == 4 && letters(part)) {
            let mut script = part.to_ascii_lowercase();
            script[..1].make_ascii_uppercase();
            if !subtags::is_script(&script) {
                return Err(unknown(&script, "an ISO 15924 script code"));
            }
            canonical.push(script);
        }
        // Region: 2 letters from ISO 3166-1, or 3 digits from UN M.49.
        if let Some(part) = rest.next_if(|part| {
            (part.len() == 2 && letters(part))
                || (part.len() == 3 && part.chars().all(|c| c.is_ascii_digit()))
        }) {
            let region = part.to_ascii_uppercase();
            if !subtags::is_region(&region) {
                return Err(unknown(
                    &region,
                    "an ISO 3166-1 region or UN M.49 area code",
                ));
            }
            canonical.push(region);
        }
        // Variants (5-8 characters, or a digit and 3 more), extensions (a
        // singleton and parts of 2-8) and private use (x and parts of 1-8):
        // form only, lower case.
        while let Some(part) = rest.next() {
            let part = part.to_ascii_lowercase();
            let variant = part.len() >= 5
                || (part.len() == 4 && part.starts_with(|c: char| c.is_ascii_digit()));
            if variant {
                if canonical.contains(&part) {
                    return Err(malformed());
                }
                canonical.push(part);
                continue;
            }
            if part.len() != 1 {
                return Err(malformed());
            }
            let private = part == "x";
            canonical.push(part);
            let min = if private { 1 } else { 2 };
            let mut count = 0;
            while let Some(next) = rest.next_if(|next| private || next.len() >= min) {
                canonical.push(next.to_ascii_lowercase());
                count += 1;
            }
            if count == 0 {
                return Err(malformed());
            }
        }
        Ok(Self(canonical.join("-")))
    }

    /// An optional tag: empty means absent.
    pub fn parse_optional(field: &str, raw: &str) -> Result<Option<Self>, FieldError> {
        if raw.is_empty() {
            Ok(None)
        } else {
            Self::parse(field, raw).map(Some)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The fields a worker translates: non-empty identifiers, no duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetFields(Vec<String>);

impl TargetFields {
    /// Parses the list; an empty list means the defaults.
    pub fn parse(field: &str, raw: &[String]) -> Result<Self, FieldError> {
        if raw.is_empty() {
            return Ok(Self::default());
        }
        if raw.len() > MAX_TARGET_FIELDS {
            return Err(FieldError::new(
                field,
                format!(
                    "must name at most {MAX_TARGET_FIELDS} fields, got {}",
                    raw.len()
                ),
            ));
        }
        for (index, name) in raw.iter().enumerate() {
            let item = format!("{field}[{index}]");
            let mut chars = name.chars();
            let valid = match chars.next() {
                Some(first) => {
                    (first.is_ascii_alphabetic() || first == '_')
                        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
                }
                None => false,
            };
            if !valid || name.len() > MAX_TARGET_FIELD_LEN {
                return Err(FieldError::new(
                    item,
                    format!(
                        "must be an identifier (letters, digits, '_'; at most {MAX_TARGET_FIELD_LEN}), got {}",
                        shown(name)
                    ),
                ));
            }
            if raw[..index].contains(name) {
                return Err(FieldError::new(item, format!("duplicates {}", shown(name))));
            }
        }
        Ok(Self(raw.to_vec()))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl Default for TargetFields {
    fn default() -> Self {
        Self(
            DEFAULT_TARGET_FIELDS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        )
    }
}

/// A relative directory without `..`, where the worker writes its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputDir(String);

impl OutputDir {
    /// Parses the directory; empty means the default.
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        if raw.is_empty() {
            return Ok(Self::default());
        }
        if raw.len() > MAX_OUTPUT_DIR_LEN {
            return Err(FieldError::new(
                field,
                format!("must be at most {MAX_OUTPUT_DIR_LEN} bytes"),
            ));
        }
        if raw.starts_with('/') || raw.starts_with('\\') || raw.contains(':') {
            return Err(FieldError::new(
                field,
                format!("must be a relative path, got {}", shown(raw)),
            ));
        }
        if raw.chars().any(|c| c.is_control() || c == '\\') {
            return Err(FieldError::new(
                field,
                "must not contain control characters or backslashes",
            ));
        }
        if raw.split('/').any(|part| part == "..") {
            return Err(FieldError::new(
                field,
                format!("must not contain \"..\", got {}", shown(raw)),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for OutputDir {
    fn default() -> Self {
        Self(DEFAULT_OUTPUT_DIR.to_owned())
    }
}

/// Checks a short free-text identifier: non-empty, bounded, no control
/// characters.
fn parse_text(field: &str, raw: &str, max: usize) -> Result<String, FieldError> {
    match text_problem(raw, max) {
        Some(reason) => Err(FieldError::new(field, reason)),
        None => Ok(raw.to_owned()),
    }
}

/// What is wrong with a short free-text identifier, if anything. (The
/// field's name is built only for an error: a create checks two texts per
/// subtask.)
fn text_problem(raw: &str, max: usize) -> Option<String> {
    if raw.is_empty() {
        return Some("is required".into());
    }
    if raw.len() > max {
        return Some(format!("must be at most {max} bytes"));
    }
    if raw.chars().any(char::is_control) {
        return Some("must not contain control characters".into());
    }
    None
}

/// One entity to translate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubtaskSpec {
    pub entity_type: String,
    pub entity_id: String,
}

impl SubtaskSpec {
    pub fn parse(field: &str, entity_type: &str, entity_id: &str) -> Result<Self, FieldError> {
        Self::check(entity_type, entity_id, || field.to_owned())?;
        Ok(Self {
            entity_type: entity_type.to_owned(),
            entity_id: entity_id.to_owned(),
        })
    }

    /// Checks item `index` of the list `list` (`subtasks[3]`) without
    /// copying it; the caller then moves the strings into a `SubtaskSpec`.
    pub fn check_item(
        list: &str,
        index: usize,
        entity_type: &str,
        entity_id: &str,
    ) -> Result<(), FieldError> {
        Self::check(entity_type, entity_id, || format!("{list}[{index}]"))
    }

    fn check(
        entity_type: &str,
        entity_id: &str,
        field: impl Fn() -> String,
    ) -> Result<(), FieldError> {
        if let Some(reason) = text_problem(entity_type, MAX_ENTITY_TYPE_LEN) {
            return Err(FieldError::new(format!("{}.entity_type", field()), reason));
        }
        if let Some(reason) = text_problem(entity_id, MAX_ENTITY_ID_LEN) {
            return Err(FieldError::new(format!("{}.entity_id", field()), reason));
        }
        Ok(())
    }

    /// The subtask for the novel itself.
    pub fn novel(novel_id: Uuid) -> Self {
        Self {
            entity_type: NOVEL_ENTITY_TYPE.to_owned(),
            entity_id: novel_id.to_string(),
        }
    }
}

/// An idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// Empty means no key.
    pub fn parse_optional(field: &str, raw: &str) -> Result<Option<Self>, FieldError> {
        if raw.is_empty() {
            return Ok(None);
        }
        parse_text(field, raw, MAX_REQUEST_ID_LEN).map(|s| Some(Self(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The caller on whose behalf a job is created. Empty when the caller did
/// not say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserId(String);

impl UserId {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        if raw.is_empty() {
            return Ok(Self::default());
        }
        parse_text(field, raw, MAX_USER_ID_LEN).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A W3C `traceparent` value (`00-<trace id>-<parent id>-<flags>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent(String);

impl TraceParent {
    /// A well-formed value, or `None`: per the W3C spec an invalid trace
    /// context is ignored, never a reason to refuse the request.
    pub fn parse(raw: &str) -> Option<Self> {
        let parts: Vec<&str> = raw.trim().split('-').collect();
        let hex = |part: &str, len: usize| {
            part.len() == len
                && part
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let [version, trace_id, parent_id, flags] = parts.as_slice() else {
            return None;
        };
        let valid = hex(version, 2)
            && *version != "ff"
            && hex(trace_id, 32)
            && trace_id.bytes().any(|b| b != b'0')
            && hex(parent_id, 16)
            && parent_id.bytes().any(|b| b != b'0')
            && hex(flags, 2);
        valid.then(|| Self(raw.trim().to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_tags_accept_common_forms() {
        for tag in [
            "en",
            "pt-BR",
            "zh-Hant-TW",
            "es-419",
            "yue",
            "sr-Latn",
            "de-CH-1901",
            "en-US-x-twain",
            "zh-yue-HK",
            "qaa",
        ] {
            assert_eq!(
                LanguageTag::parse("target_lang", tag).unwrap().as_str(),
                tag
            );
        }
    }

    #[test]
    fn language_tags_are_canonicalised() {
        for (raw, canonical) in [
            ("EN", "en"),
            ("pt-br", "pt-BR"),
            ("zh-hant-tw", "zh-Hant-TW"),
            ("ZH-HANS", "zh-Hans"),
            ("eng", "en"),
            ("fre-ca", "fr-CA"),
            ("EN-us-X-Twain", "en-US-x-twain"),
        ] {
            assert_eq!(
                LanguageTag::parse("target_lang", raw).unwrap().as_str(),
                canonical,
                "{raw}"
            );
        }
    }

    #[test]
    fn language_tags_must_use_real_subtags() {
        let reason = |raw: &str| LanguageTag::parse("target_lang", raw).unwrap_err().reason;
        assert!(
            reason("English").contains("an ISO 639 language code first"),
            "{}",
            reason("English")
        );
        assert!(reason("xx").contains("\"xx\" in \"xx\" is not an ISO 639 language code"));
        assert!(reason("en-Abcd").contains("ISO 15924"));
        assert!(reason("en-UK").contains("ISO 3166-1"));
        assert!(reason("en_US").contains("\"en-US\""));
        assert!(LanguageTag::parse("source_lang", "pt-BR-BR").is_err());
        assert!(LanguageTag::parse("source_lang", "en-a").is_err());
    }

    #[test]
    fn language_tags_refuse_garbage_and_name_the_field() {
        for tag in [
            "e",
            "en_US",
            "en-",
            "-en",
            "english language",
            "1a",
            "en--US",
        ] {
            let error = LanguageTag::parse("target_lang", tag).unwrap_err();
            assert_eq!(error.field, "target_lang", "{tag}");
        }
        let long = "a".repeat(MAX_LANGUAGE_TAG_LEN + 1);
        assert!(LanguageTag::parse("source_lang", &long).is_err());
        assert_eq!(
            LanguageTag::parse("target_lang", "")
                .unwrap_err()
                .to_string(),
            "target_lang: is required (a language tag such as \"en\")"
        );
    }

    #[test]
    fn empty_target_fields_mean_the_defaults() {
        assert_eq!(
            TargetFields::parse("target_fields", &[])
                .unwrap()
                .as_slice(),
            ["title", "description", "content"]
        );
    }

    #[test]
    fn target_fields_must_be_distinct_identifiers() {
        let bad = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
            TargetFields::parse("target_fields", &names).unwrap_err()
        };
        assert_eq!(bad(&["title", ""]).field, "target_fields[1]");
        assert_eq!(bad(&["ti tle"]).field, "target_fields[0]");
        assert_eq!(bad(&["title", "title"]).field, "target_fields[1]");
        assert_eq!(bad(&["9lives"]).field, "target_fields[0]");
    }

    #[test]
    fn output_dir_must_stay_relative_and_inside() {
        assert_eq!(
            OutputDir::parse("output_dir", "").unwrap().as_str(),
            DEFAULT_OUTPUT_DIR
        );
        assert!(OutputDir::parse("output_dir", "outputs/fr").is_ok());
        for bad in [
            "/etc",
            "../up",
            "a/../../b",
            "a/..",
            "C:\\x",
            "a\\b",
            "a\u{0}b",
        ] {
            assert!(OutputDir::parse("output_dir", bad).is_err(), "{bad:?}");
        }
        assert!(OutputDir::parse("output_dir", &"a".repeat(MAX_OUTPUT_DIR_LEN + 1)).is_err());
    }

    #[test]
    fn subtask_strings_are_required_and_bounded() {
        assert_eq!(
            SubtaskSpec::parse("subtasks[0]", "", "x")
                .unwrap_err()
                .field,
            "subtasks[0].entity_type"
        );
        assert_eq!(
            SubtaskSpec::parse("subtasks[2]", "chapter", "")
                .unwrap_err()
                .field,
            "subtasks[2].entity_id"
        );
        assert!(SubtaskSpec::parse("s", "chapter", &"x".repeat(MAX_ENTITY_ID_LEN + 1)).is_err());
    }

    #[test]
    fn trace_contexts_are_kept_when_well_formed_and_dropped_otherwise() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(TraceParent::parse(good).unwrap().as_str(), good);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn uuids_are_checked_and_errors_quote_a_bounded_value() {
        assert!(parse_uuid("novel_id", "0b9e8f0e-6b5c-4e6b-8d5e-3f6a2b1c0d9e").is_ok());
        let error = parse_uuid("novel_id", &"z".repeat(1000)).unwrap_err();
        assert_eq!(error.field, "novel_id");
        assert!(error.reason.len() < 100, "{}", error.reason);
    }
}

//! Property tests (proptest): request parsing accepts exactly the shapes
//! the README documents and never panics on anything; the queue message is
//! always what the old Go service's struct decodes to the same values;
//! connection strings never keep their passwords in the logged form.
//!
//! The rules below are written again from the README's field table, on
//! purpose independently of `jobs::fields`.

use proptest::{collection, option, prelude::*};
use serde::Deserialize;
use translation_jobs::{
    api::{
        auth::{AuthSettings, Authenticator},
        caller,
        convert::{self, MAX_PAGE_SIZE},
        proto::{self, CreateTranslationJobRequest, ListTranslationJobsRequest},
    },
    jobs::fields::{
        LanguageTag, OutputDir, RequestId, SubtaskSpec, TargetFields, TraceParent, UserId,
    },
    queue::JobMessage,
    redact::redact_url,
};

// ---------------------------------------------------------------------------
// The documented rules (README, "CreateTranslationJobRequest").

/// The form every accepted language tag has (`en`, `pt-BR`, `zh-Hant-TW`):
/// 2 to 8 letters, then `-` and 1 to 8 letters or digits, any number of
/// times; at most 35 characters. The README adds that the subtags must be
/// real ISO codes (so `English`, `xx` and `en-UK` are refused too): a tag
/// without this form is always refused, one with it only when its subtags
/// are real.
fn language_tag_form_ok(s: &str) -> bool {
    let mut parts = s.split('-');
    let primary = parts.next().unwrap_or("");
    s.len() <= 35
        && (2..=8).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// `[A-Za-z_][A-Za-z0-9_]*`, at most 64 characters.
fn identifier_ok(s: &str) -> bool {
    let mut bytes = s.bytes();
    s.len() <= 64
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Relative, no `..` segment, no `:`, backslash or control character, at
/// most 255 bytes. Empty means the default.
fn output_dir_ok(s: &str) -> bool {
    s.len() <= 255
        && !s.starts_with('/')
        && !s.contains(':')
        && !s.contains('\\')
        && !s.chars().any(char::is_control)
        && !s.split('/').any(|segment| segment == "..")
}

/// Non-empty, at most `max` bytes, no control characters.
fn text_ok(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && !s.chars().any(char::is_control)
}

// ---------------------------------------------------------------------------
// Generators: values built from the rules, and anything at all.

/// Real tags in any letter case, with the canonical form the README
/// documents: the language in lower case (a three-letter code with a
/// two-letter one becomes it), the script in title case, the region in
/// upper case.
fn language_tag_with_canonical() -> impl Strategy<Value = (String, String)> {
    let language = prop::sample::select(vec![
        ("en", "en"),
        ("eng", "en"),
        ("pt", "pt"),
        ("zh", "zh"),
        ("ja", "ja"),
        ("de", "de"),
        ("deu", "de"),
        ("fr", "fr"),
        ("yue", "yue"),
        ("es", "es"),
    ]);
    let script = option::of(prop::sample::select(vec!["Hant", "Hans", "Latn", "Cyrl"]));
    let region = option::of(prop::sample::select(vec![
        "BR", "TW", "US", "GB", "419", "CN",
    ]));
    (language, script, region, any::<u64>()).prop_map(|((raw, canonical), script, region, case)| {
        let mut given = vec![raw.to_owned()];
        let mut expected = vec![canonical.to_owned()];
        if let Some(script) = script {
            given.push(script.to_owned());
            expected.push(script.to_owned());
        }
        if let Some(region) = region {
            given.push(region.to_owned());
            expected.push(region.to_owned());
        }
        // Scramble the case of the given tag, letter by letter.
        let scrambled: String = given
            .join("-")
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if case >> (i % 64) & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        (scrambled, expected.join("-"))
    })
}

fn language_tag() -> impl Strategy<Value = String> {
    language_tag_with_canonical().prop_map(|(tag, _)| tag)
}

fn identifier() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_]{0,63}"
}

fn output_dir() -> impl Strategy<Value = String> {
    collection::vec("[a-zA-Z0-9_. é日-]{1,24}", 1..6)
        .prop_map(|segments| segments.join("/"))
        .prop_filter("valid", |s| output_dir_ok(s))
}

fn text(max_chars: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[^\\p{{Cc}}]{{1,{max_chars}}}")).unwrap()
}

/// Mostly plausible, sometimes anything: both sides of every rule get
/// exercised.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-zA-Z0-9_./:\\\\ -]{0,40}",
        "[a-z]{1,9}(-[a-zA-Z0-9]{0,9}){0,4}",
        "(\\.\\.|[a-z]{1,3}|/){0,6}",
    ]
}

fn uuid_text() -> impl Strategy<Value = String> {
    (any::<u128>(), any::<bool>()).prop_map(|(n, upper)| {
        let id = uuid::Uuid::from_u128(n).to_string();
        if upper { id.to_uppercase() } else { id }
    })
}

fn subtasks(max: usize) -> impl Strategy<Value = Vec<proto::SubtaskSpec>> {
    collection::vec(("[a-z_]{1,16}", text(40)), 0..max).prop_map(|specs| {
        let mut seen = std::collections::HashSet::new();
        specs
            .into_iter()
            .filter(|spec| seen.insert(spec.clone()))
            .map(|(entity_type, entity_id)| proto::SubtaskSpec {
                entity_type,
                entity_id,
            })
            .collect()
    })
}

const MAX_SUBTASKS: usize = 20;

/// A request every documented rule accepts.
fn valid_request() -> impl Strategy<Value = CreateTranslationJobRequest> {
    (
        uuid_text(),
        language_tag(),
        option::of(language_tag()),
        collection::hash_set(identifier(), 0..=32),
        any::<bool>(),
        option::of(output_dir()),
        0..=3_i32,
        subtasks(MAX_SUBTASKS),
        option::of(text(32)),
    )
        .prop_map(
            |(novel, target, source, fields, code_filter, dir, priority, subtasks, key)| {
                CreateTranslationJobRequest {
                    novel_id: novel,
                    target_lang: target,
                    source_lang: source.unwrap_or_default(),
                    target_fields: fields.into_iter().collect(),
                    enable_code_filter: code_filter,
                    output_dir: dir.unwrap_or_default(),
                    priority,
                    subtasks,
                    request_id: key.unwrap_or_default(),
                    schedule_time: None,
                    max_attempts: 0,
                }
            },
        )
}

/// Which field a broken request breaks, and how.
#[derive(Debug, Clone)]
enum Break {
    NovelId(String),
    TargetLang(String),
    SourceLang(String),
    TargetField(String),
    OutputDir(String),
    Priority(i32),
    RequestId(String),
    EntityId(String),
}

fn breakage() -> impl Strategy<Value = Break> {
    prop_oneof![
        any_text()
            .prop_filter("not a UUID", |s| uuid::Uuid::try_parse(s).is_err())
            .prop_map(Break::NovelId),
        any_text()
            .prop_filter("invalid", |s| !language_tag_form_ok(s))
            .prop_map(Break::TargetLang),
        any_text()
            .prop_filter("invalid, not empty", |s| !s.is_empty()
                && !language_tag_form_ok(s))
            .prop_map(Break::SourceLang),
        any_text()
            .prop_filter("invalid", |s| !identifier_ok(s))
            .prop_map(Break::TargetField),
        prop_oneof![any_text(), "[a-z]{200,300}"]
            .prop_filter("invalid", |s| !s.is_empty() && !output_dir_ok(s))
            .prop_map(Break::OutputDir),
        prop_oneof![i32::MIN..0, 4..=i32::MAX].prop_map(Break::Priority),
        prop_oneof![any_text(), "[a-z]{129,200}"]
            .prop_filter("invalid, not empty", |s| !s.is_empty() && !text_ok(s, 128))
            .prop_map(Break::RequestId),
        prop_oneof![
            Just(String::new()),
            "[a-z]{257,300}",
            "[a-z]{0,5}\u{7}[a-z]{0,5}"
        ]
        .prop_map(Break::EntityId),
    ]
}

/// Applies the break; returns the field path the error must name.
fn apply(request: &mut CreateTranslationJobRequest, broken: Break) -> String {
    match broken {
        Break::NovelId(v) => {
            request.novel_id = v;
            "novel_id".into()
        }
        Break::TargetLang(v) => {
            request.target_lang = v;
            "target_lang".into()
        }
        Break::SourceLang(v) => {
            request.source_lang = v;
            "source_lang".into()
        }
        Break::TargetField(v) => {
            request.target_fields.retain(|f| *f != v);
            request.target_fields.truncate(31);
            request.target_fields.push(v);
            format!("target_fields[{}]", request.target_fields.len() - 1)
        }
        Break::OutputDir(v) => {
            request.output_dir = v;
            "output_dir".into()
        }
        Break::Priority(v) => {
            request.priority = v;
            "priority".into()
        }
        Break::RequestId(v) => {
            request.request_id = v;
            "request_id".into()
        }
        Break::EntityId(v) => {
            request.subtasks.push(proto::SubtaskSpec {
                entity_type: "chapter".into(),
                entity_id: v,
            });
            format!("subtasks[{}].entity_id", request.subtasks.len() - 1)
        }
    }
}

// ---------------------------------------------------------------------------
// The Go struct the workers' contract comes from, and how Go's encoding/json
// decodes into it:
//
//     type TranslationJobMessage struct {
//         JobID            string   `json:"job_id"`
//         TargetLang       string   `json:"target_lang,omitempty"`
//         SourceLang       string   `json:"source_lang,omitempty"`
//         OutputDir        string   `json:"output_dir,omitempty"`
//         TargetFields     []string `json:"target_fields,omitempty"`
//         EnableCodeFilter bool     `json:"enable_code_filter,omitempty"`
//     }
//
// Keys are matched exactly, else case-insensitively; unknown keys are
// ignored; for a repeated key the last one wins; a missing key leaves the
// zero value.

const GO_KEYS: [&str; 6] = [
    "job_id",
    "target_lang",
    "source_lang",
    "output_dir",
    "target_fields",
    "enable_code_filter",
];

#[derive(Debug, Default, PartialEq, Eq)]
struct GoMessage {
    job_id: String,
    target_lang: String,
    source_lang: String,
    output_dir: String,
    target_fields: Vec<String>,
    enable_code_filter: bool,
}

/// A JSON object's members in document order, repeats kept.
struct Members(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

fn go_decode(json: &str) -> Result<GoMessage, String> {
    let Members(members) = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let mut message = GoMessage::default();
    for (key, value) in members {
        let field = GO_KEYS
            .iter()
            .find(|k| **k == key)
            .or_else(|| GO_KEYS.iter().find(|k| k.eq_ignore_ascii_case(&key)));
        let Some(field) = field else { continue };
        if value.is_null() {
            continue;
        }
        let text = || {
            value
                .as_str()
                .map(str::to_owned)
                .ok_or(format!("{key}: not a string"))
        };
        match *field {
            "job_id" => message.job_id = text()?,
            "target_lang" => message.target_lang = text()?,
            "source_lang" => message.source_lang = text()?,
            "output_dir" => message.output_dir = text()?,
            "target_fields" => {
                message.target_fields = value
                    .as_array()
                    .ok_or(format!("{key}: not an array"))?
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned).ok_or(format!("{key}: item")))
                    .collect::<Result<_, _>>()?;
            }
            _ => {
                message.enable_code_filter = value.as_bool().ok_or(format!("{key}: not a bool"))?
            }
        }
    }
    Ok(message)
}

fn job_message() -> impl Strategy<Value = JobMessage> {
    let text = || {
        prop_oneof![
            Just(String::new()),
            any::<String>(),
            "[a-z\"\\\\/<>&\u{2028}]{0,8}"
        ]
    };
    (
        text(),
        text(),
        text(),
        text(),
        collection::vec(text(), 0..5),
        any::<bool>(),
        any::<i32>(),
        option::of(text()),
    )
        .prop_map(
            |(
                job_id,
                target_lang,
                source_lang,
                output_dir,
                target_fields,
                code,
                attempt,
                trace,
            )| {
                JobMessage {
                    job_id,
                    target_lang,
                    source_lang,
                    output_dir,
                    target_fields,
                    enable_code_filter: code,
                    attempt,
                    traceparent: trace,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn real_language_tags_are_accepted_in_canonical_form(
        (raw, canonical) in language_tag_with_canonical()
    ) {
        let parsed = LanguageTag::parse("target_lang", &raw);
        prop_assert!(parsed.is_ok(), "{:?}: {:?}", raw, parsed.err());
        prop_assert_eq!(parsed.map(|tag| tag.as_str().to_owned()).unwrap_or_default(), canonical);
    }

    #[test]
    fn language_tags_without_the_documented_form_are_refused_naming_the_field(
        raw in any_text()
    ) {
        match LanguageTag::parse("target_lang", &raw) {
            Ok(tag) => {
                prop_assert!(language_tag_form_ok(&raw), "accepted {:?}", raw);
                prop_assert!(language_tag_form_ok(tag.as_str()));
                // Canonicalising changes case and may shorten the language
                // code; it never adds, drops or reorders subtags.
                prop_assert_eq!(tag.as_str().split('-').count(), raw.split('-').count());
                prop_assert_eq!(
                    tag.as_str().split('-').skip(1).map(str::to_ascii_lowercase).collect::<Vec<_>>(),
                    raw.split('-').skip(1).map(str::to_ascii_lowercase).collect::<Vec<_>>()
                );
            }
            Err(error) => prop_assert_eq!(error.field, "target_lang"),
        }
    }

    #[test]
    fn target_fields_are_accepted_exactly_as_documented(
        names in collection::vec(prop_oneof![identifier(), any_text()], 0..40)
    ) {
        let distinct = names.iter().enumerate().all(|(i, n)| !names[..i].contains(n));
        let expected = names.len() <= 32 && distinct && names.iter().all(|n| identifier_ok(n));
        let parsed = TargetFields::parse("target_fields", &names);
        prop_assert_eq!(parsed.is_ok(), expected, "{:?}", names);
        match parsed {
            Ok(fields) if names.is_empty() => {
                prop_assert_eq!(fields.as_slice(), ["title", "description", "content"]);
            }
            Ok(fields) => prop_assert_eq!(fields.as_slice(), names.as_slice()),
            Err(error) if names.len() > 32 => prop_assert_eq!(error.field, "target_fields"),
            Err(error) => prop_assert!(error.field.starts_with("target_fields["), "{}", error.field),
        }
    }

    #[test]
    fn output_dirs_are_accepted_exactly_as_documented(
        raw in prop_oneof![output_dir(), any_text(), "[a-z/]{250,260}"]
    ) {
        prop_assert_eq!(OutputDir::parse("output_dir", &raw).is_ok(), output_dir_ok(&raw), "{:?}", raw);
    }

    #[test]
    fn subtasks_request_ids_and_user_ids_are_accepted_exactly_as_documented(
        a in prop_oneof![text(70), any_text()],
        b in prop_oneof![text(300), any_text()],
    ) {
        prop_assert_eq!(
            SubtaskSpec::parse("subtasks[0]", &a, &b).is_ok(),
            text_ok(&a, 64) && text_ok(&b, 256)
        );
        prop_assert_eq!(
            RequestId::parse_optional("request_id", &b).is_ok(),
            b.is_empty() || text_ok(&b, 128)
        );
        prop_assert_eq!(
            UserId::parse("x-user-id", &a).is_ok(),
            a.is_empty() || text_ok(&a, 128)
        );
    }

    #[test]
    fn every_request_built_from_the_rules_is_accepted_as_given(request in valid_request()) {
        let job = convert::new_job(UserId::default(), request.clone(), &convert::CreateRules::with_max_subtasks(MAX_SUBTASKS));
        let job = match job {
            Ok(job) => job,
            Err(error) => return Err(TestCaseError::fail(format!("{error} for {request:?}"))),
        };
        prop_assert_eq!(job.novel_id.to_string(), request.novel_id.to_lowercase());
        // Language tags come back canonical (case, shortest code).
        prop_assert_eq!(
            job.target_lang.as_str(),
            LanguageTag::parse("target_lang", &request.target_lang)
                .map(|tag| tag.as_str().to_owned())
                .unwrap_or_default()
        );
        prop_assert_eq!(job.enable_code_filter, request.enable_code_filter);
        if !request.target_fields.is_empty() {
            prop_assert_eq!(job.target_fields.as_slice(), request.target_fields.as_slice());
        }
        if request.subtasks.is_empty() {
            prop_assert_eq!(job.subtasks.len(), 1);
        } else {
            prop_assert_eq!(job.subtasks.len(), request.subtasks.len());
        }
    }

    #[test]
    fn a_request_with_one_broken_field_is_refused_naming_that_field(
        request in valid_request(),
        broken in breakage(),
    ) {
        let mut request = request;
        let field = apply(&mut request, broken);
        let error = convert::new_job(UserId::default(), request, &convert::CreateRules::with_max_subtasks(MAX_SUBTASKS + 1))
            .expect_err("a broken request");
        prop_assert_eq!(error.field, field);
    }

    #[test]
    fn no_request_makes_parsing_panic(
        novel_id in any_text(),
        target_lang in any_text(),
        source_lang in any_text(),
        target_fields in collection::vec(any_text(), 0..40),
        output_dir in any_text(),
        priority in any::<i32>(),
        subtasks in collection::vec((any_text(), any_text()), 0..8),
        request_id in any_text(),
        max in 0..10_usize,
        schedule in option::of((any::<i64>(), any::<i32>())),
        max_attempts in any::<i32>(),
    ) {
        let request = CreateTranslationJobRequest {
            novel_id,
            target_lang,
            source_lang,
            target_fields,
            enable_code_filter: false,
            output_dir,
            priority,
            subtasks: subtasks
                .into_iter()
                .map(|(entity_type, entity_id)| proto::SubtaskSpec { entity_type, entity_id })
                .collect(),
            request_id,
            schedule_time: schedule.map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
            max_attempts,
        };
        let _ = convert::new_job(UserId::default(), request, &convert::CreateRules::with_max_subtasks(max));
    }

    #[test]
    fn no_list_request_makes_parsing_panic_and_page_sizes_stay_bounded(
        page_size in any::<i32>(),
        page_token in any_text(),
        status in any::<i32>(),
        novel_id in prop_oneof![Just(String::new()), uuid_text(), any_text()],
        view in any::<i32>(),
    ) {
        let request = ListTranslationJobsRequest { page_size, page_token, status, novel_id, view };
        if let Ok(query) = convert::list_query(&request) {
            prop_assert!(query.limit >= 1 && query.limit <= MAX_PAGE_SIZE);
            prop_assert!(page_size >= 0);
        }
    }

    #[test]
    fn no_header_value_makes_caller_parsing_panic(
        authorization in option::of(collection::vec(any::<u8>(), 0..200)),
        bearer in any_text(),
        user_id in option::of(collection::vec(any::<u8>(), 0..200)),
        traceparent in any_text(),
    ) {
        let secured = Authenticator::new(&AuthSettings {
            hs256_secret: Some(b"0123456789abcdef0123456789abcdef".to_vec()),
            ..AuthSettings::default()
        });
        let open = Authenticator::open();
        for auth in [&secured, &open] {
            let _ = auth.authenticate(authorization.as_deref(), user_id.as_deref());
            let header = format!("Bearer {bearer}");
            let checked = auth.authenticate(Some(header.as_bytes()), None);
            if !auth.is_open() {
                prop_assert!(checked.is_err(), "a random token was accepted: {bearer:?}");
            }
        }
        let _ = caller::user_id_from(user_id.as_deref());
        let _ = TraceParent::parse(&traceparent);
    }

    #[test]
    fn the_message_is_what_the_go_struct_decodes_to_the_same_values(message in job_message()) {
        let json = message.to_json();

        // Keys present or absent exactly as omitempty says, in the struct's
        // order, then the extra keys.
        let Members(members) = serde_json::from_str(&json).unwrap();
        let keys: Vec<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
        let mut expected = vec!["job_id"];
        if !message.target_lang.is_empty() { expected.push("target_lang"); }
        if !message.source_lang.is_empty() { expected.push("source_lang"); }
        if !message.output_dir.is_empty() { expected.push("output_dir"); }
        if !message.target_fields.is_empty() { expected.push("target_fields"); }
        if message.enable_code_filter { expected.push("enable_code_filter"); }
        expected.push("attempt");
        if message.traceparent.is_some() { expected.push("traceparent"); }
        prop_assert_eq!(keys, expected);

        // A Go-like decoder sees the same values and ignores the extras.
        let go = go_decode(&json).map_err(TestCaseError::fail)?;
        prop_assert_eq!(go, GoMessage {
            job_id: message.job_id.clone(),
            target_lang: message.target_lang.clone(),
            source_lang: message.source_lang.clone(),
            output_dir: message.output_dir.clone(),
            target_fields: message.target_fields.clone(),
            enable_code_filter: message.enable_code_filter,
        });

        // And the service reads back exactly what it wrote.
        let back: JobMessage = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, message);
    }

    #[test]
    fn logged_redis_urls_never_keep_a_password(
        user in "[a-z]{0,8}",
        password in "[A-Za-z0-9!$&'()*+,;=._~/-]{6,30}",
        sentinel in "[A-Za-z0-9._~-]{6,30}",
        host in "[a-z]{1,10}(\\.[a-z]{1,5}){0,2}",
        scheme in prop_oneof![Just("redis"), Just("rediss"), Just("redis-cluster"), Just("redis-sentinel")],
    ) {
        let url = format!(
            "{scheme}://{user}:{password}@{host}:6379/0?sentinelServiceName=main&sentinelPassword={sentinel}&node={host}:26379"
        );
        let shown = redact_url(&url);
        let visible = url.replace(&password, "").replace(&sentinel, "");
        prop_assume!(!visible.contains(&password) && !visible.contains(&sentinel));
        prop_assert!(!shown.contains(&password), "{}", shown);
        prop_assert!(!shown.contains(&sentinel), "{}", shown);
        prop_assert!(shown.contains(&host), "{}", shown);
    }
}

#[test]
fn the_go_decoder_model_matches_go_on_hand_picked_documents() {
    // Case-insensitive keys, unknown keys, null, repeated keys (last wins).
    let go = go_decode(
        r#"{"JOB_ID":"a","job_id":"b","Target_Lang":"en","source_lang":null,
            "attempt":3,"traceparent":"x","target_fields":["t"],"Enable_Code_Filter":true}"#,
    )
    .unwrap();
    assert_eq!(
        go,
        GoMessage {
            job_id: "b".into(),
            target_lang: "en".into(),
            source_lang: String::new(),
            output_dir: String::new(),
            target_fields: vec!["t".into()],
            enable_code_filter: true,
        }
    );
}

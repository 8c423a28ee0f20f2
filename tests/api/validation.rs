//! Every invalid field is refused with INVALID_ARGUMENT naming it, and
//! nothing is stored.

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tonic::Code;
use translation_jobs::api::proto::{CreateTranslationJobRequest, SubtaskSpec};

use crate::support::{TestApp, counts, create_request};

type Mutation = fn(&mut CreateTranslationJobRequest);

fn cases() -> Vec<(&'static str, &'static str, Mutation)> {
    vec![
        ("missing novel_id", "novel_id", |r| r.novel_id.clear()),
        ("novel_id not a UUID", "novel_id", |r| {
            r.novel_id = "novel-1".into()
        }),
        ("missing target_lang", "target_lang", |r| {
            r.target_lang.clear()
        }),
        ("target_lang not a tag", "target_lang", |r| {
            r.target_lang = "English please".into()
        }),
        ("target_lang too long", "target_lang", |r| {
            r.target_lang = "a".repeat(36)
        }),
        ("source_lang not a tag", "source_lang", |r| {
            r.source_lang = "e_n".into()
        }),
        ("empty target field", "target_fields[1]", |r| {
            r.target_fields = vec!["title".into(), String::new()]
        }),
        ("target field not an identifier", "target_fields[0]", |r| {
            r.target_fields = vec!["ti-tle".into()]
        }),
        ("absolute output_dir", "output_dir", |r| {
            r.output_dir = "/etc/cron.d".into()
        }),
        ("output_dir escaping", "output_dir", |r| {
            r.output_dir = "outputs/../../x".into()
        }),
        ("output_dir too long", "output_dir", |r| {
            r.output_dir = "a".repeat(300)
        }),
        ("unknown priority", "priority", |r| r.priority = 9),
        ("empty entity_type", "subtasks[1].entity_type", |r| {
            r.subtasks = vec![
                SubtaskSpec {
                    entity_type: "chapter".into(),
                    entity_id: "1".into(),
                },
                SubtaskSpec {
                    entity_type: String::new(),
                    entity_id: "2".into(),
                },
            ]
        }),
        ("empty entity_id", "subtasks[0].entity_id", |r| {
            r.subtasks = vec![SubtaskSpec {
                entity_type: "chapter".into(),
                entity_id: String::new(),
            }]
        }),
        ("entity_id too long", "subtasks[0].entity_id", |r| {
            r.subtasks = vec![SubtaskSpec {
                entity_type: "chapter".into(),
                entity_id: "x".repeat(300),
            }]
        }),
        ("duplicate subtask", "subtasks[1]", |r| {
            let spec = SubtaskSpec {
                entity_type: "chapter".into(),
                entity_id: "1".into(),
            };
            r.subtasks = vec![spec.clone(), spec];
        }),
        ("too many subtasks", "subtasks", |r| {
            r.subtasks = (0..6)
                .map(|i| SubtaskSpec {
                    entity_type: "chapter".into(),
                    entity_id: i.to_string(),
                })
                .collect()
        }),
        ("request_id with a control character", "request_id", |r| {
            r.request_id = "a\nb".into()
        }),
    ]
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn each_invalid_field_is_refused_by_name_and_nothing_is_stored(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::spawn_with(
        database.clone(),
        crate::support::SHARED_REDIS_URL,
        crate::support::unique_queue(),
        &[("MAX_SUBTASKS_PER_JOB", "5")],
    )
    .await;
    app.wait_ready().await;

    for (case, field, mutate) in cases() {
        let mut request = create_request();
        mutate(&mut request);
        let error = app
            .client
            .create_translation_job(request)
            .await
            .expect_err(case);
        assert_eq!(
            error.code(),
            Code::InvalidArgument,
            "{case}: {}",
            error.message()
        );
        assert!(
            error.message().starts_with(&format!("{field}: ")),
            "{case}: expected the message to name {field}, got {:?}",
            error.message()
        );
    }

    let pool = PgPool::connect_with(database).await.unwrap();
    assert_eq!(counts(&pool).await, (0, 0, 0));
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_malformed_user_id_header_is_refused(_: PgPoolOptions, database: PgConnectOptions) {
    let mut app = TestApp::ready(database).await;
    let mut request = tonic::Request::new(create_request());
    request
        .metadata_mut()
        .insert("x-user-id", "x".repeat(200).parse().unwrap());
    let error = app
        .client
        .create_translation_job(request)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().starts_with("x-user-id: "),
        "{}",
        error.message()
    );
    app.stop().await;
}

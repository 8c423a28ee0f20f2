//! No request is materialised before it is known to fit: a request of a
//! million empty entries (two bytes each on the wire, tens of bytes each
//! decoded) is refused naming its field while the real binary's peak
//! resident memory grows by less than 64 MiB.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic::Code;
use translation_jobs::api::proto::{
    BatchCreateTranslationJobsRequest, CreateTranslationJobRequest, SubtaskSpec,
    translation_job_service_client::TranslationJobServiceClient,
};

use crate::{
    binary::{Binary, database_url},
    support::{
        NOVEL_ID, SHARED_REDIS_URL, cleanup, create_request, http_request, redis_client,
        unique_queue,
    },
};

const MILLION: usize = 1_000_000;
const BOUND_BYTES: u64 = 64 * 1024 * 1024;

/// The process's peak resident set (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib * 1024
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_million_empty_entries_are_refused_before_they_are_decoded(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let queue = unique_queue();
    let mut binary = Binary::start_ready(
        &[
            ("DATABASE_URL", database_url(&database)),
            ("REDIS_URL", SHARED_REDIS_URL.into()),
            ("TRANSLATION_QUEUE", queue.as_str().into()),
        ],
        &[],
    )
    .await;
    let mut client =
        TranslationJobServiceClient::connect(format!("http://127.0.0.1:{}", binary.grpc_port))
            .await
            .unwrap()
            .max_encoding_message_size(8 * 1024 * 1024);
    // Warm: one real create, so the pools and the first call's allocations
    // are part of the baseline.
    client
        .create_translation_job(create_request())
        .await
        .unwrap();
    let before = peak_rss(binary.pid());

    let batch = BatchCreateTranslationJobsRequest {
        requests: vec![CreateTranslationJobRequest::default(); MILLION],
    };
    let refused = client
        .batch_create_translation_jobs(batch)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().starts_with("requests: "), "{refused:?}");

    let create = CreateTranslationJobRequest {
        subtasks: vec![SubtaskSpec::default(); MILLION],
        ..create_request()
    };
    let refused = client.create_translation_job(create).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().starts_with("subtasks: "), "{refused:?}");

    let grown = peak_rss(binary.pid()).saturating_sub(before);
    assert!(
        grown < BOUND_BYTES,
        "over gRPC the peak resident memory grew by {} MiB",
        grown / (1024 * 1024)
    );

    // The same over HTTP: a 3 MB body of "subtasks":[0,0,...].
    let body = format!(
        r#"{{"novel_id":"{NOVEL_ID}","target_lang":"en","subtasks":[{}0]}}"#,
        "0,".repeat(1_500_000)
    );
    let (status, answer) = http_request(
        "POST",
        &format!(
            "http://127.0.0.1:{}/api/v1/translation-jobs",
            binary.http_port
        ),
        Some(&body),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("subtasks: at most"), "{answer}");

    let grown = peak_rss(binary.pid()).saturating_sub(before);
    println!(
        "inflation: peak resident memory grew by {} KiB",
        grown / 1024
    );
    assert!(
        grown < BOUND_BYTES,
        "the peak resident memory grew by {} MiB",
        grown / (1024 * 1024)
    );
    binary.terminate(std::time::Duration::from_secs(30)).await;
    cleanup(&redis_client(SHARED_REDIS_URL).await, &queue).await;
}

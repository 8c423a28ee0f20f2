//! `schedule_time`: a job is PENDING at once and its message reaches its
//! lane at that time, not before; a time in the past means now; too far
//! ahead is refused naming the field; a cancel before the time means the
//! message is never pushed. Timings are measured against the running
//! service, not computed.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tonic::Code;
use translation_jobs::{
    api::proto::{CancelTranslationJobRequest, GetTranslationJobRequest, JobStatus},
    queue::Lane,
};

use crate::support::{
    SHARED_REDIS_URL, TestApp, cleanup, create_request, http_request, messages, redis_client,
    unique_queue,
};

fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

fn time_of(timestamp: &prost_types::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(timestamp.seconds, timestamp.nanos as u32).unwrap()
}

/// Polls the lane every 5 ms until it holds `count` messages; the time it
/// first saw them.
async fn arrival(
    redis: &fred::prelude::Client,
    app: &TestApp,
    lane: Lane,
    count: usize,
    patience: Duration,
) -> Option<DateTime<Utc>> {
    let deadline = tokio::time::Instant::now() + patience;
    while tokio::time::Instant::now() < deadline {
        if messages(redis, &app.queue, lane).await.len() >= count {
            return Some(Utc::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_scheduled_job_reaches_its_lane_at_its_time_and_not_before(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database).await;
    let redis = redis_client(SHARED_REDIS_URL).await;

    let at = (Utc::now() + chrono::Duration::milliseconds(2500)).trunc_subsecs(6);
    let mut request = create_request();
    request.schedule_time = Some(timestamp(at));
    let job = app
        .client
        .create_translation_job(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.status(), JobStatus::Pending, "PENDING at once");
    assert_eq!(job.schedule_time, Some(timestamp(at)));

    let arrived = arrival(&redis, &app, Lane::Normal, 1, Duration::from_secs(10))
        .await
        .expect("the message arrives");
    let late = arrived - at;
    eprintln!(
        "scheduled create: message seen {} ms after schedule_time",
        late.num_milliseconds()
    );
    assert!(
        late >= chrono::Duration::zero(),
        "pushed {} ms before its time",
        -late.num_milliseconds()
    );
    assert!(
        late < chrono::Duration::milliseconds(1200),
        "pushed {} ms after its time",
        late.num_milliseconds()
    );
    let pushed = messages(&redis, &app.queue, Lane::Normal).await;
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0].job_id, job.id);
    assert_eq!(pushed[0].attempt, 0);

    // The relay records the publication in the transaction of its push,
    // which commits just after the message is in Redis.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let read = loop {
        let read = app
            .client
            .get_translation_job(GetTranslationJobRequest {
                id: job.id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if read.publish_time.is_some() || tokio::time::Instant::now() > deadline {
            break read;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(read.schedule_time, Some(timestamp(at)));
    assert!(time_of(read.publish_time.as_ref().expect("published")) >= at);
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_time_in_the_past_means_now_and_too_far_ahead_is_refused(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::spawn_with(
        database,
        SHARED_REDIS_URL,
        unique_queue(),
        &[("MAX_SCHEDULE_AHEAD", "1h")],
    )
    .await;
    app.wait_ready().await;
    let redis = redis_client(SHARED_REDIS_URL).await;

    let mut past = create_request();
    past.schedule_time = Some(timestamp(Utc::now() - chrono::Duration::hours(3)));
    let job = app
        .client
        .create_translation_job(past)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.schedule_time, None, "a past time is no schedule");
    arrival(&redis, &app, Lane::Normal, 1, Duration::from_secs(5))
        .await
        .expect("queued at once");

    let mut far = create_request();
    far.schedule_time = Some(timestamp(Utc::now() + chrono::Duration::hours(2)));
    let refused = app.client.create_translation_job(far).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("schedule_time")
            && refused.message().contains("MAX_SCHEDULE_AHEAD"),
        "{}",
        refused.message()
    );

    let mut broken = create_request();
    broken.schedule_time = Some(prost_types::Timestamp {
        seconds: i64::MAX,
        nanos: 0,
    });
    let refused = app.client.create_translation_job(broken).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("schedule_time"),
        "{}",
        refused.message()
    );
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_job_cancelled_before_its_time_is_never_pushed(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database.clone()).await;
    let pool = PgPool::connect_with(database).await.unwrap();
    let redis = redis_client(SHARED_REDIS_URL).await;

    let at = Utc::now() + chrono::Duration::milliseconds(1500);
    let mut request = create_request();
    request.schedule_time = Some(timestamp(at));
    let job = app
        .client
        .create_translation_job(request)
        .await
        .unwrap()
        .into_inner();
    let cancelled = app
        .client
        .cancel_translation_job(CancelTranslationJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.status(), JobStatus::Cancelled);

    // Well past the time: nothing was pushed, nothing waits.
    let seen = arrival(&redis, &app, Lane::Normal, 1, Duration::from_millis(3000)).await;
    assert_eq!(seen, None, "a cancelled scheduled job was pushed");
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_scheduled")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(waiting, 0);
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn http_takes_schedule_time_as_rfc3339_and_shows_it(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let app = TestApp::ready(database).await;
    let url = format!("http://{}/api/v1/translation-jobs", app.http_addr);
    let at = (Utc::now() + chrono::Duration::hours(1))
        .trunc_subsecs(6)
        .to_rfc3339();
    let body = format!(
        r#"{{"novel_id":"{}","target_lang":"en","schedule_time":"{at}","max_attempts":4}}"#,
        crate::support::NOVEL_ID
    );
    let (status, answer) = http_request("POST", &url, Some(&body), &[]).await.unwrap();
    assert_eq!(status, 201, "{answer}");
    let job: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let shown: DateTime<Utc> = job["schedule_time"].as_str().unwrap().parse().unwrap();
    let asked: DateTime<Utc> = at.parse().unwrap();
    assert_eq!(shown, asked);
    assert_eq!(job["max_attempts"], 4);
    assert_eq!(job["failed_attempts"], 0);
    assert_eq!(job["retryable"], true);

    let body = format!(
        r#"{{"novel_id":"{}","target_lang":"en","schedule_time":"tomorrow"}}"#,
        crate::support::NOVEL_ID
    );
    let (status, answer) = http_request("POST", &url, Some(&body), &[]).await.unwrap();
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("schedule_time") && answer.contains("RFC 3339"),
        "{answer}"
    );
    let redis = redis_client(SHARED_REDIS_URL).await;
    cleanup(&redis, &app.queue).await;
    app.stop().await;
}

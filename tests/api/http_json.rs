//! The HTTP JSON endpoints of the old service.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use translation_jobs::queue::Lane;

use crate::support::{
    NOVEL_ID, SHARED_REDIS_URL, TestApp, http_request, redis_client, wait_for_messages,
};

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn post_creates_a_job_and_get_returns_it(_: PgPoolOptions, database: PgConnectOptions) {
    let app = TestApp::ready(database).await;
    let redis = redis_client(SHARED_REDIS_URL).await;
    let base = format!("http://{}/api/v1/translation-jobs", app.http_addr);

    let body = format!(r#"{{"novel_id": "{NOVEL_ID}", "target_lang": "en"}}"#);
    let (status, created) = http_request("POST", &base, Some(&body), &[("x-user-id", "go-caller")])
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    let created = json(&created);
    assert_eq!(created["status"], "PENDING");
    assert_eq!(created["novel_id"], NOVEL_ID);
    assert_eq!(created["user_id"], "go-caller");
    assert_eq!(created["priority"], "NORMAL");
    assert_eq!(created["total_subtasks"], 1);
    assert_eq!(created["output_dir"], "outputs/novel_jobs");
    let id = created["id"].as_str().unwrap().to_owned();

    let found = wait_for_messages(&redis, &app.queue, Lane::Normal, 1).await;
    assert_eq!(found[0].job_id, id);

    let (status, read) = http_request("GET", &format!("{base}/{id}"), None, &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(json(&read)["id"], id.as_str());

    let high = format!(
        r#"{{"novel_id": "{NOVEL_ID}", "target_lang": "de", "priority": "high",
            "subtasks": [{{"entity_type": "chapter", "entity_id": "1"}}], "request_id": "r1"}}"#
    );
    let (status, first) = http_request("POST", &base, Some(&high), &[]).await.unwrap();
    assert_eq!(status, 201, "{first}");
    let (status, again) = http_request("POST", &base, Some(&high), &[]).await.unwrap();
    assert_eq!(status, 200, "a replay answers 200 with the same job");
    assert_eq!(json(&first)["id"], json(&again)["id"]);
    wait_for_messages(&redis, &app.queue, Lane::High, 1).await;

    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn errors_are_json_with_matching_http_statuses(_: PgPoolOptions, database: PgConnectOptions) {
    let app = TestApp::ready(database).await;
    let base = format!("http://{}/api/v1/translation-jobs", app.http_addr);

    let cases = [
        (r#"{"target_lang": "en"}"#.to_owned(), 400, "novel_id: "),
        (
            format!(r#"{{"novel_id": "{NOVEL_ID}", "target_lang": "??"}}"#),
            400,
            "target_lang: ",
        ),
        (
            format!(r#"{{"novel_id": "{NOVEL_ID}", "target_lang": "en", "priority": "asap"}}"#),
            400,
            "priority: ",
        ),
        ("{not json".to_owned(), 400, "body: "),
        (r#"{"novel_id": 5}"#.to_owned(), 400, "body: "),
    ];
    for (body, expected, prefix) in cases {
        let (status, answer) = http_request("POST", &base, Some(&body), &[]).await.unwrap();
        assert_eq!(status, expected, "{body}: {answer}");
        let answer = json(&answer);
        assert_eq!(answer["error"]["code"], "INVALID_ARGUMENT");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(prefix), "{body}: {message}");
    }

    let (status, answer) = http_request(
        "GET",
        &format!("{base}/7d4f6c1e-2b3a-4c5d-8e9f-0a1b2c3d4e5f"),
        None,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, 404);
    assert_eq!(json(&answer)["error"]["code"], "NOT_FOUND");
    let (status, _) = http_request("GET", &format!("{base}/nope"), None, &[])
        .await
        .unwrap();
    assert_eq!(status, 400);
    app.stop().await;
}

//! Cross-site writes on the HTTP API are refused with 403 and the JSON
//! error body; requests without browser headers and same-origin ones work.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::support::{NOVEL_ID, TestApp, http_request};

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn writes_from_another_site_are_refused_and_others_served(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let pool = sqlx::PgPool::connect_with(database.clone()).await.unwrap();
    let app = TestApp::ready(database).await;
    let host = app.http_addr.to_string();
    let base = format!("http://{host}/api/v1/translation-jobs");
    let body = format!(r#"{{"novel_id": "{NOVEL_ID}", "target_lang": "en"}}"#);
    let same_origin = format!("http://{host}");
    let count = |_: &TestApp| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM translation_jobs")
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };

    for headers in [
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site")],
        vec![("origin", "http://evil.example")],
        vec![("origin", "null"), ("sec-fetch-site", "same-origin")],
    ] {
        let (status, answer) = http_request("POST", &base, Some(&body), &headers)
            .await
            .unwrap();
        assert_eq!(status, 403, "{headers:?}: {answer}");
        let error: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(error["error"]["code"], "PERMISSION_DENIED", "{answer}");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("refused"),
            "{answer}"
        );
    }
    assert_eq!(count(&app).await, 0, "nothing created");

    for headers in [
        vec![],
        vec![
            ("sec-fetch-site", "same-origin"),
            ("origin", same_origin.as_str()),
        ],
        vec![("sec-fetch-site", "none")],
    ] {
        let (status, answer) = http_request("POST", &base, Some(&body), &headers)
            .await
            .unwrap();
        assert_eq!(status, 201, "{headers:?}: {answer}");
    }
    assert_eq!(count(&app).await, 3);
    // Reads are not writes: a page of another site may not read the answer
    // (no CORS headers), and the GET changes nothing.
    let (status, _) = http_request("GET", &base, None, &[("sec-fetch-site", "cross-site")])
        .await
        .unwrap();
    assert_eq!(status, 200);
    app.stop().await;
}

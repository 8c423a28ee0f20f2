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
        (
            r#"{"novel_id": 5}"#.to_owned(),
            400,
            "novel_id: must be a string, got a number",
        ),
        (
            format!(r#"{{"novel_id": "{NOVEL_ID}", "target_lang": "English"}}"#),
            400,
            "target_lang: must be a language tag",
        ),
        (
            format!(
                r#"{{"novel_id": "{NOVEL_ID}", "targetLang": "en", "subtasks": [{{"entityType": 1}}]}}"#
            ),
            400,
            "subtasks[0].entity_type: must be a string",
        ),
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

/// POSTs a body of `length` bytes and reads the answer, which may come
/// before the body is sent in full (the server stops reading at its limit).
async fn post_large_body(addr: std::net::SocketAddr, path: &str, length: usize) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    let sending = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0;
        while sent < length {
            let n = chunk.len().min(length - sent);
            writer.write_all(&chunk[..n]).await?;
            sent += n;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut response = Vec::new();
    let mut buffer = [0u8; 8192];
    let answer = tokio::time::timeout(crate::support::PATIENCE, async {
        loop {
            let n = reader.read(&mut buffer).await.unwrap_or(0);
            response.extend_from_slice(&buffer[..n]);
            let text = String::from_utf8_lossy(&response).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if body.len() >= length || n == 0 {
                    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                    return (status, body.to_owned());
                }
            }
            assert!(n > 0, "the connection closed without an answer");
        }
    })
    .await
    .expect("an answer in time");
    sending.abort();
    answer
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn unknown_routes_wrong_methods_and_huge_bodies_get_the_same_json_error(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let app = TestApp::ready(database).await;
    let base = format!("http://{}", app.http_addr);

    let (status, body) = http_request("GET", &format!("{base}/api/v1/nothing"), None, &[])
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert_eq!(json(&body)["error"]["code"], "NOT_FOUND");
    let (status, body) = http_request(
        "DELETE",
        &format!("{base}/api/v1/translation-jobs"),
        None,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, 405);
    assert_eq!(json(&body)["error"]["code"], "UNIMPLEMENTED");
    assert!(
        json(&body)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("DELETE")
    );
    // Over the 4 MiB message limit: the same code and message as gRPC.
    let (status, body) = post_large_body(app.http_addr, "/api/v1/translation-jobs", 5 << 20).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(json(&body)["error"]["code"], "OUT_OF_RANGE");
    assert!(
        json(&body)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit of 4194304 bytes")
    );
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn bodies_take_proto_json_names_and_languages_come_back_canonical(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let app = TestApp::ready(database).await;
    let base = format!("http://{}/api/v1/translation-jobs", app.http_addr);
    let body = format!(
        r#"{{"novelId": "{NOVEL_ID}", "targetLang": "pt-br", "sourceLang": "ZH-hant-tw",
            "enableCodeFilter": true, "priority": "PRIORITY_LOW"}}"#
    );
    let (status, created) = http_request("POST", &base, Some(&body), &[]).await.unwrap();
    assert_eq!(status, 201, "{created}");
    let created = json(&created);
    assert_eq!(created["target_lang"], "pt-BR");
    assert_eq!(created["source_lang"], "zh-Hant-TW");
    assert_eq!(created["enable_code_filter"], true);
    assert_eq!(created["priority"], "LOW");
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn list_and_stats_routes_answer_json_and_the_dashboard_is_served(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database).await;
    let first = app.create().await;
    let second = app.create().await;
    let base = format!("http://{}", app.http_addr);

    let (status, page) = http_request(
        "GET",
        &format!("{base}/api/v1/translation-jobs?page_size=1&status=pending"),
        None,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{page}");
    let page = json(&page);
    assert_eq!(page["jobs"][0]["id"], second.id.as_str(), "newest first");
    let token = page["next_page_token"].as_str().unwrap().to_owned();
    let (_, next) = http_request(
        "GET",
        &format!("{base}/api/v1/translation-jobs?pageSize=1&status=PENDING&pageToken={token}"),
        None,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(json(&next)["jobs"][0]["id"], first.id.as_str());
    let (status, bad) = http_request(
        "GET",
        &format!("{base}/api/v1/translation-jobs?status=done"),
        None,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(status, 400);
    assert!(
        json(&bad)["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("status: ")
    );

    // The service's Redis connection comes up in the background (and a
    // busy machine may outrun the stats' Redis timeout): until it answers,
    // the stats say so and carry no lanes.
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    let stats = loop {
        let (status, stats) = http_request("GET", &format!("{base}/api/v1/stats"), None, &[])
            .await
            .unwrap();
        assert_eq!(status, 200, "{stats}");
        let stats = json(&stats);
        if stats["redis_reachable"] == true {
            break stats;
        }
        assert_eq!(stats["lanes"].as_array().unwrap().len(), 0, "{stats}");
        assert!(
            std::time::Instant::now() < deadline,
            "Redis never reachable: {stats}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(stats["queue"], app.queue.as_str());
    assert_eq!(stats["lanes"].as_array().unwrap().len(), 4);
    assert!(stats["pushed_total"].as_i64().is_some());

    let (status, page) = http_request("GET", &format!("{base}/"), None, &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("<title>translation-jobs</title>"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "nothing from elsewhere"
    );
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn listen_addresses_may_be_host_names(_: PgPoolOptions, database: PgConnectOptions) {
    let mut app = TestApp::spawn_with(
        database,
        SHARED_REDIS_URL,
        crate::support::unique_queue(),
        &[("GRPC_ADDR", "localhost:0"), ("HTTP_ADDR", "localhost:0")],
    )
    .await;
    app.wait_ready().await;
    assert!(app.grpc_addr.ip().is_loopback());
    let _ = app.create().await;
    app.stop().await;
}

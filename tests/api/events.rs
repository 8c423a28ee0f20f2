//! `GET /api/v1/translation-jobs/{id}/events`: the job, then one server-sent
//! event per change made by plain SQL (as workers make them), ending after a
//! final status or at shutdown; scoped, checked and limited like the other
//! routes and like gRPC watch streams. Read over a raw socket, chunk by
//! chunk, so that a body that ends cleanly is told apart from a connection
//! that is cut.

use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};
use tokio_stream::StreamExt;
use tonic::Code;
use translation_jobs::api::{
    events::KEEP_ALIVE,
    proto::{SubtaskSpec, WatchTranslationJobRequest},
};

use crate::{
    auth::{SECRET, authorized, token},
    support::{
        NOVEL_ID, PATIENCE, SHARED_REDIS_URL, TestApp, create_request, http_get, http_request,
        unique_queue,
    },
};

/// One server-sent event.
#[derive(Debug)]
struct SseEvent {
    event: String,
    id: String,
    data: Value,
}

/// What an event stream carries.
#[derive(Debug)]
enum Item {
    Event(SseEvent),
    /// A comment line (`: keep-alive`), without its colon.
    Comment(String),
}

/// An HTTP answer: the status, the head (lower-cased) and, for an event
/// stream, its body as it arrives; otherwise the whole body.
struct Answer {
    status: u16,
    head: String,
    stream: Option<EventStream>,
    body: String,
}

/// A `text/event-stream` body, read chunk by chunk.
struct EventStream {
    reader: BufReader<TcpStream>,
    /// Decoded text not yet handed out.
    text: String,
    /// The last (empty) chunk arrived: the body ended cleanly.
    ended: bool,
}

impl EventStream {
    /// Reads one chunk; panics when the connection ends before the last
    /// chunk (a cut stream, not an ended one).
    async fn read_chunk(&mut self) {
        let mut size = String::new();
        let read = self.reader.read_line(&mut size).await.unwrap();
        assert!(read > 0, "the connection closed before the body's end");
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        let mut chunk = vec![0; size + 2];
        self.reader.read_exact(&mut chunk).await.unwrap();
        assert!(chunk.ends_with(b"\r\n"), "a chunk ends with CRLF");
        chunk.truncate(size);
        if size == 0 {
            self.ended = true;
        }
        self.text.push_str(std::str::from_utf8(&chunk).unwrap());
    }

    /// The next event or comment; `None` when the body ended cleanly.
    async fn next_item(&mut self) -> Option<Item> {
        loop {
            if let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                if let Some(comment) = block.strip_prefix(':') {
                    return Some(Item::Comment(comment.trim().to_owned()));
                }
                let mut event = SseEvent {
                    event: String::new(),
                    id: String::new(),
                    data: Value::Null,
                };
                for line in block.trim_end_matches('\n').lines() {
                    let (name, value) = line
                        .split_once(": ")
                        .unwrap_or_else(|| panic!("not a field: {line:?} in {block:?}"));
                    match name {
                        "event" => event.event = value.to_owned(),
                        "id" => event.id = value.to_owned(),
                        "data" => event.data = serde_json::from_str(value).unwrap(),
                        other => panic!("unexpected field {other}: {block:?}"),
                    }
                }
                return Some(Item::Event(event));
            }
            if self.ended {
                assert_eq!(self.text, "", "the body ended inside an event");
                return None;
            }
            self.read_chunk().await;
        }
    }

    /// The next event, past any comments; `None` when the body ended
    /// cleanly.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            match self.next_item().await? {
                Item::Event(event) => return Some(event),
                Item::Comment(_) => continue,
            }
        }
    }

    /// The next event within [`PATIENCE`].
    async fn next_in_time(&mut self) -> Option<SseEvent> {
        tokio::time::timeout(PATIENCE, self.next())
            .await
            .expect("an event, or the end, in time")
    }
}

/// `GET /api/v1/translation-jobs/{id}/events` with `headers`.
async fn open(app: &TestApp, id: &str, headers: &[(&str, &str)]) -> Answer {
    let host = app.http_addr.to_string();
    let stream = TcpStream::connect(&host).await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut request = format!(
        "GET /api/v1/translation-jobs/{id}/events HTTP/1.1\r\nHost: {host}\r\n\
         Accept: text/event-stream\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    reader
        .get_mut()
        .write_all(request.as_bytes())
        .await
        .unwrap();
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    if head.contains("content-type: text/event-stream") {
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        return Answer {
            status,
            head,
            stream: Some(EventStream {
                reader,
                text: String::new(),
                ended: false,
            }),
            body: String::new(),
        };
    }
    let mut body = String::new();
    reader.read_to_string(&mut body).await.unwrap();
    Answer {
        status,
        head,
        stream: None,
        body,
    }
}

/// An answer that is an event stream: its stream.
fn streaming(answer: Answer) -> EventStream {
    assert_eq!(answer.status, 200, "{}{}", answer.head, answer.body);
    answer.stream.expect("an event stream")
}

/// An error answer: its status and its `{"error": {"code", "message"}}`.
fn refused(answer: Answer) -> (u16, String, String) {
    assert!(answer.stream.is_none(), "an error, not a stream");
    let body: Value = serde_json::from_str(&answer.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", answer.body));
    (
        answer.status,
        body["error"]["code"].as_str().unwrap().to_owned(),
        body["error"]["message"].as_str().unwrap().to_owned(),
    )
}

async fn app_with(database: PgConnectOptions, overrides: &[(&str, &str)]) -> TestApp {
    let app = TestApp::spawn_with(database, SHARED_REDIS_URL, unique_queue(), overrides).await;
    app.wait_ready().await;
    app
}

/// The job as `GET /api/v1/translation-jobs/{id}` answers it.
async fn get_json(app: &TestApp, id: &str, headers: &[(&str, &str)]) -> Value {
    let url = format!("http://{}/api/v1/translation-jobs/{id}", app.http_addr);
    let (status, body) = http_request("GET", &url, None, headers).await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The job as GET answers it once the relay has published it. A watch
/// stream reports `publish_time` as of its last read of the job (no change
/// event carries it), so a test that compares events with GET waits for it
/// first.
async fn published(app: &TestApp, id: &str, headers: &[(&str, &str)]) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let job = get_json(app, id, headers).await;
        if !job["publish_time"].is_null() {
            return job;
        }
        assert!(Instant::now() < deadline, "the job was never published");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn execute(pool: &PgPool, statement: &str, id: &str) {
    sqlx::query(statement).bind(id).execute(pool).await.unwrap();
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn the_job_comes_first_then_each_change_and_a_final_status_ends_the_body(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    // A short RPC_TIMEOUT: the stream outlives it, as gRPC watch streams do.
    let mut app = app_with(database.clone(), &[("RPC_TIMEOUT", "1s")]).await;
    let pool = PgPool::connect_with(database).await.unwrap();
    let mut request = create_request();
    request.subtasks = (1..=2)
        .map(|i| SubtaskSpec {
            entity_type: "chapter".into(),
            entity_id: i.to_string(),
        })
        .collect();
    let job = app
        .client
        .create_translation_job(request)
        .await
        .unwrap()
        .into_inner();
    let published = published(&app, &job.id, &[]).await;

    let answer = open(&app, &job.id, &[]).await;
    assert!(
        answer.head.contains("cache-control: no-cache"),
        "{}",
        answer.head
    );
    assert!(
        answer.head.contains("x-accel-buffering: no"),
        "{}",
        answer.head
    );
    let mut events = streaming(answer);

    let first = events.next_in_time().await.expect("the job first");
    assert_eq!((first.event.as_str(), first.id.as_str()), ("job", "1"));
    assert_eq!(first.data, published, "the same JSON as GET");
    assert_eq!(first.data["status"], "PENDING");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    execute(
        &pool,
        "UPDATE translation_jobs SET status = 'IN_PROGRESS' WHERE id = $1::uuid",
        &job.id,
    )
    .await;
    let claimed = events.next_in_time().await.expect("the claim");
    assert_eq!((claimed.event.as_str(), claimed.id.as_str()), ("job", "2"));
    assert_eq!(claimed.data["status"], "IN_PROGRESS");

    execute(
        &pool,
        "UPDATE translation_subtasks SET status = 'COMPLETED' WHERE job_id = $1::uuid AND entity_id = '1'",
        &job.id,
    )
    .await;
    let progress = events.next_in_time().await.expect("the progress");
    assert_eq!(progress.data["completed_subtasks"], 1);
    assert_eq!(progress.data["subtasks"][0]["status"], "COMPLETED");

    execute(
        &pool,
        "UPDATE translation_jobs SET status = 'FAILED', error = 'out of credits' WHERE id = $1::uuid",
        &job.id,
    )
    .await;
    let last = events.next_in_time().await.expect("the final status");
    assert_eq!(last.data["status"], "FAILED");
    assert_eq!(last.data["error"], "out of credits");
    assert_eq!(last.data, get_json(&app, &job.id, &[]).await);
    assert!(
        events.next_in_time().await.is_none(),
        "the body ends after a final status"
    );
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_cancel_ends_the_stream_with_the_job_as_get_has_it_subtasks_cancelled_too(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let app = app_with(database, &[]).await;
    let base = format!("http://{}/api/v1/translation-jobs", app.http_addr);
    let body = format!(
        r#"{{"novel_id": "{NOVEL_ID}", "target_lang": "en",
            "subtasks": [{{"entity_type": "chapter", "entity_id": "1"}},
                         {{"entity_type": "chapter", "entity_id": "2"}}]}}"#
    );
    let (status, created) = http_request("POST", &base, Some(&body), &[]).await.unwrap();
    assert_eq!(status, 201, "{created}");
    let id = serde_json::from_str::<Value>(&created).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    published(&app, &id, &[]).await;
    let mut events = streaming(open(&app, &id, &[]).await);
    events.next_in_time().await.expect("the job");

    // One transaction marks the job CANCELLED, then its subtasks.
    let (status, cancelled) = http_request("POST", &format!("{base}/{id}/cancel"), None, &[])
        .await
        .unwrap();
    assert_eq!(status, 200, "{cancelled}");
    let mut last = None;
    while let Some(event) = events.next_in_time().await {
        last = Some(event.data);
    }
    let last = last.expect("the cancel");
    assert_eq!(last["status"], "CANCELLED");
    assert_eq!(
        last["subtasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|subtask| subtask["status"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["CANCELLED", "CANCELLED"],
        "the last event is the job as that transaction left it"
    );
    assert_eq!(last, get_json(&app, &id, &[]).await);
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn events_are_scoped_to_the_caller_and_checked_like_get(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let app = app_with(database, &[("AUTH_JWT_SECRET", SECRET)]).await;
    let alice = format!("Bearer {}", token("alice", None));
    let bob = format!("Bearer {}", token("bob", None));
    let job = app
        .client
        .clone()
        .create_translation_job(authorized(create_request(), &token("alice", None)))
        .await
        .unwrap()
        .into_inner();
    let published = published(&app, &job.id, &[("authorization", &alice)]).await;

    let (status, code, _) = refused(open(&app, &job.id, &[]).await);
    assert_eq!((status, code.as_str()), (401, "UNAUTHENTICATED"));
    let (status, code, _) = refused(open(&app, &job.id, &[("authorization", &bob)]).await);
    assert_eq!(
        (status, code.as_str()),
        (404, "NOT_FOUND"),
        "another caller's job, as GET answers"
    );
    let (status, code, message) = refused(open(&app, "nope", &[("authorization", &alice)]).await);
    assert_eq!((status, code.as_str()), (400, "INVALID_ARGUMENT"));
    assert!(message.starts_with("id: "), "{message}");

    let mut events = streaming(open(&app, &job.id, &[("authorization", &alice)]).await);
    let first = events.next_in_time().await.unwrap();
    assert_eq!(first.data["user_id"], "alice");
    assert_eq!(first.data, published);
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn event_streams_share_max_watch_streams_with_grpc_and_are_refused_with_429_when_full(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = app_with(database, &[("MAX_WATCH_STREAMS", "1")]).await;
    let job = app.create().await;
    let watch = || WatchTranslationJobRequest { id: job.id.clone() };
    let mut grpc = app
        .client
        .watch_translation_job(watch())
        .await
        .unwrap()
        .into_inner();
    assert!(grpc.next().await.unwrap().is_ok());

    let (status, code, message) = refused(open(&app, &job.id, &[]).await);
    assert_eq!((status, code.as_str()), (429, "RESOURCE_EXHAUSTED"));
    assert!(message.contains("MAX_WATCH_STREAMS"), "{message}");

    // The gRPC stream ends: its place comes back, and an event stream takes it.
    drop(grpc);
    let deadline = Instant::now() + PATIENCE;
    let mut events = loop {
        let answer = open(&app, &job.id, &[]).await;
        if answer.status == 200 {
            break streaming(answer);
        }
        assert_eq!(refused(answer).0, 429);
        assert!(Instant::now() < deadline, "the place never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    events.next_in_time().await.expect("the job");

    let refused_grpc = app.client.watch_translation_job(watch()).await.unwrap_err();
    assert_eq!(
        refused_grpc.code(),
        Code::ResourceExhausted,
        "{refused_grpc:?}"
    );
    let metrics = http_get(&format!("http://{}/metrics", app.http_addr))
        .await
        .unwrap()
        .1;
    assert!(
        metrics
            .lines()
            .any(|line| line == "translation_watch_streams 1"),
        "the open-streams gauge counts it: {metrics}"
    );
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_callers_event_streams_count_toward_its_share_of_watch_streams(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let app = app_with(
        database,
        &[
            ("AUTH_JWT_SECRET", SECRET),
            ("MAX_WATCH_STREAMS_PER_CALLER", "1"),
        ],
    )
    .await;
    let create_as = |user: &'static str| {
        let mut client = app.client.clone();
        async move {
            client
                .create_translation_job(authorized(create_request(), &token(user, None)))
                .await
                .unwrap()
                .into_inner()
                .id
        }
    };
    let (alices_job, bobs_job) = (create_as("alice").await, create_as("bob").await);
    let alice = format!("Bearer {}", token("alice", None));
    let bob = format!("Bearer {}", token("bob", None));

    let mut first = streaming(open(&app, &alices_job, &[("authorization", &alice)]).await);
    first.next_in_time().await.unwrap();
    let (status, code, message) =
        refused(open(&app, &alices_job, &[("authorization", &alice)]).await);
    assert_eq!((status, code.as_str()), (429, "RESOURCE_EXHAUSTED"));
    assert!(
        message.contains("MAX_WATCH_STREAMS_PER_CALLER"),
        "{message}"
    );
    let grpc = app
        .client
        .clone()
        .watch_translation_job(authorized(
            WatchTranslationJobRequest {
                id: alices_job.clone(),
            },
            &token("alice", None),
        ))
        .await
        .unwrap_err();
    assert_eq!(
        grpc.code(),
        Code::ResourceExhausted,
        "the same share over gRPC"
    );

    let mut bobs = streaming(open(&app, &bobs_job, &[("authorization", &bob)]).await);
    assert_eq!(bobs.next_in_time().await.unwrap().data["user_id"], "bob");
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn shutdown_ends_an_open_event_stream_and_is_not_held_up_by_it(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = app_with(database, &[]).await;
    let job = app.create().await;
    let mut events = streaming(open(&app, &job.id, &[]).await);
    events.next_in_time().await.expect("the job");

    tokio::time::timeout(Duration::from_secs(5), app.stop())
        .await
        .expect("shutdown does not wait for open streams");
    assert!(
        events.next_in_time().await.is_none(),
        "the body ends cleanly, with no further event"
    );
}

/// Waits a little longer than [`KEEP_ALIVE`] (15 s), which is also longer
/// than the HTTP listener's header-read timeout (10 s).
#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_quiet_stream_gets_keep_alive_comments_and_outlives_the_header_read_timeout(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = app_with(database.clone(), &[]).await;
    let pool = PgPool::connect_with(database).await.unwrap();
    let job = app.create().await;
    let mut events = streaming(open(&app, &job.id, &[]).await);
    events.next_in_time().await.expect("the job");

    let started = Instant::now();
    let quiet = tokio::time::timeout(KEEP_ALIVE + PATIENCE, events.next_item())
        .await
        .expect("something within the keep-alive interval");
    assert!(
        matches!(&quiet, Some(Item::Comment(text)) if text == "keep-alive"),
        "{quiet:?}"
    );
    assert!(
        started.elapsed() >= KEEP_ALIVE - Duration::from_secs(1),
        "after a quiet interval, not at once"
    );

    execute(
        &pool,
        "UPDATE translation_jobs SET status = 'CANCELLED' WHERE id = $1::uuid",
        &job.id,
    )
    .await;
    let last = events
        .next_in_time()
        .await
        .expect("the change still arrives");
    assert_eq!(last.data["status"], "CANCELLED");
    assert!(events.next_in_time().await.is_none());
    app.stop().await;
}

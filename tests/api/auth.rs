//! Bearer-token authentication and per-caller scoping: every RPC of the job
//! service and every HTTP job route refuses a missing or bad token, a
//! caller sees and changes only its own jobs (another caller's job is
//! NOT_FOUND), the admin scope sees everything, and health and reflection
//! stay open.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio_stream::StreamExt;
use tonic::{Code, Request, Status};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use translation_jobs::{
    api::{
        convert,
        proto::{
            BatchCreateTranslationJobsRequest, CancelTranslationJobRequest, GetQueueStatsRequest,
            GetTranslationJobRequest, ListTranslationJobsRequest, RetryTranslationJobRequest,
            TranslationJob, WatchTranslationJobRequest,
        },
    },
    jobs::{self, JobError, ListQuery, Scope, fields::UserId},
};

use crate::support::{NOVEL_ID, SHARED_REDIS_URL, TestApp, create_request, unique_queue};

/// The HS256 secret of these tests (32 bytes, the least accepted).
pub const SECRET: &str = "test-secret-0123456789abcdef0123";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token for `sub`, valid for a minute, with `scope` if given.
pub fn token(sub: &str, scope: Option<&str>) -> String {
    let mut claims = json!({"sub": sub, "exp": now() + 60, "iat": now()});
    if let Some(scope) = scope {
        claims["scope"] = json!(scope);
    }
    sign(Algorithm::HS256, &claims, SECRET.as_bytes())
}

fn sign(algorithm: Algorithm, claims: &serde_json::Value, secret: &[u8]) -> String {
    encode(
        &Header::new(algorithm),
        claims,
        &EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap()
}

/// A request carrying `authorization: Bearer <token>`.
pub fn authorized<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ASCII token"),
    );
    request
}

/// A service requiring HS256 tokens signed with [`SECRET`], ready.
async fn secured(database: PgConnectOptions) -> TestApp {
    let app = TestApp::spawn_with(
        database,
        SHARED_REDIS_URL,
        unique_queue(),
        &[("AUTH_JWT_SECRET", SECRET)],
    )
    .await;
    app.wait_ready().await;
    app
}

/// A raw HTTP/1.1 exchange: (status, head, body).
async fn http(
    method: &str,
    url: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let mut request = format!("{method} /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or("");
    request.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn assert_unauthenticated<T: std::fmt::Debug>(result: Result<T, Status>, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn every_rpc_refuses_missing_and_bad_tokens_while_health_and_reflection_stay_open(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = secured(database).await;
    let id = uuid::Uuid::now_v7().to_string();
    let c = &mut app.client;

    assert_unauthenticated(c.create_translation_job(create_request()).await, "create");
    assert_unauthenticated(
        c.get_translation_job(GetTranslationJobRequest {
            id: id.clone(),
            ..Default::default()
        })
        .await,
        "get",
    );
    assert_unauthenticated(
        c.list_translation_jobs(ListTranslationJobsRequest::default())
            .await,
        "list",
    );
    assert_unauthenticated(
        c.cancel_translation_job(CancelTranslationJobRequest { id: id.clone() })
            .await,
        "cancel",
    );
    assert_unauthenticated(
        c.retry_translation_job(RetryTranslationJobRequest { id: id.clone() })
            .await,
        "retry",
    );
    assert_unauthenticated(
        c.batch_create_translation_jobs(BatchCreateTranslationJobsRequest {
            requests: vec![create_request()],
        })
        .await,
        "batch",
    );
    assert_unauthenticated(
        c.watch_translation_job(WatchTranslationJobRequest { id: id.clone() })
            .await,
        "watch",
    );
    assert_unauthenticated(
        c.get_queue_stats(GetQueueStatsRequest {}).await,
        "queue stats",
    );

    // x-user-id names nobody once tokens are required.
    let mut impostor = Request::new(create_request());
    impostor
        .metadata_mut()
        .insert("x-user-id", "alice".parse().unwrap());
    assert_unauthenticated(c.create_translation_job(impostor).await, "x-user-id alone");

    let expired = sign(
        Algorithm::HS256,
        &json!({"sub": "alice", "exp": now() - 3600}),
        SECRET.as_bytes(),
    );
    let other_secret = sign(
        Algorithm::HS256,
        &json!({"sub": "alice", "exp": now() + 60}),
        b"another-secret-0123456789abcdefgh",
    );
    let not_yet = sign(
        Algorithm::HS256,
        &json!({"sub": "alice", "exp": now() + 7200, "nbf": now() + 3600}),
        SECRET.as_bytes(),
    );
    let good = token("alice", None);
    let alg_none = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
        good.split('.').nth(1).unwrap()
    );
    for (what, value) in [
        ("expired", format!("Bearer {expired}")),
        ("badly signed", format!("Bearer {other_secret}")),
        ("not yet valid", format!("Bearer {not_yet}")),
        ("alg none", format!("Bearer {alg_none}")),
        ("malformed", "Bearer abc.def".to_owned()),
        ("not bearer", format!("Basic {good}")),
    ] {
        let mut request = Request::new(create_request());
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
        let status = c.create_translation_job(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{what}");
        assert!(
            !status.message().contains(&good[..20]),
            "{what}: {}",
            status.message()
        );
    }

    // Probes and grpcurl's discovery need no token.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "readiness".into(),
        })
        .await;
    assert!(health.is_ok(), "{health:?}");
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
    let listed = reflection
        .server_reflection_info(tokio_stream::iter([
            tonic_reflection::pb::v1::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(
                    tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                        String::new(),
                    ),
                ),
            },
        ]))
        .await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap();
    assert!(listed.is_ok(), "{listed:?}");

    // With a good token the same call goes through.
    let created = c
        .create_translation_job(authorized(create_request(), &good))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.user_id, "alice");
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn another_callers_job_is_not_found_for_every_rpc(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = secured(database.clone()).await;
    let pool = PgPool::connect_with(database).await.unwrap();
    let (alice, bob) = (token("alice", None), token("bob", None));
    let c = &mut app.client;

    let mut request = create_request();
    request.request_id = "order-1".into();
    let alices = c
        .create_translation_job(authorized(request.clone(), &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(alices.user_id, "alice");
    let id = alices.id.clone();

    let not_found = |result: Result<tonic::Response<TranslationJob>, Status>, what: &str| {
        let status = result.expect_err(what);
        assert_eq!(status.code(), Code::NotFound, "{what}: {status:?}");
    };
    not_found(
        c.get_translation_job(authorized(
            GetTranslationJobRequest {
                id: id.clone(),
                ..Default::default()
            },
            &bob,
        ))
        .await,
        "get",
    );
    not_found(
        c.cancel_translation_job(authorized(
            CancelTranslationJobRequest { id: id.clone() },
            &bob,
        ))
        .await,
        "cancel",
    );
    sqlx::query("UPDATE translation_jobs SET status = 'FAILED' WHERE id = $1::uuid")
        .bind(&id)
        .execute(&pool)
        .await
        .unwrap();
    not_found(
        c.retry_translation_job(authorized(
            RetryTranslationJobRequest { id: id.clone() },
            &bob,
        ))
        .await,
        "retry",
    );
    let watch = c
        .watch_translation_job(authorized(
            WatchTranslationJobRequest { id: id.clone() },
            &bob,
        ))
        .await;
    assert_eq!(watch.unwrap_err().code(), Code::NotFound, "watch");
    let listed = c
        .list_translation_jobs(authorized(ListTranslationJobsRequest::default(), &bob))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.jobs.is_empty(), "{:?}", listed.jobs);

    // Bob's request_id lives in bob's namespace: the same key makes a new
    // job, it neither returns alice's nor names it in an error.
    let mut different = request.clone();
    different.target_lang = "fr".into();
    let bobs = c
        .create_translation_job(authorized(different.clone(), &bob))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(bobs.id, id);
    assert_eq!(bobs.user_id, "bob");
    let batch = c
        .batch_create_translation_jobs(authorized(
            BatchCreateTranslationJobsRequest {
                requests: vec![different.clone()],
            },
            &bob,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.jobs[0].id, bobs.id, "a replay of bob's own job");
    // Alice reusing her key for another request is told about her own job.
    let reused = c
        .create_translation_job(authorized(different, &alice))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists);
    assert!(reused.message().contains(&id), "{}", reused.message());
    assert!(!reused.message().contains(&bobs.id), "{}", reused.message());

    // Alice still sees and changes her own job; bob's stays out of her list.
    let own = c
        .retry_translation_job(authorized(
            RetryTranslationJobRequest { id: id.clone() },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.id, id);
    let listed = c
        .list_translation_jobs(authorized(ListTranslationJobsRequest::default(), &alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .jobs
            .iter()
            .map(|j| j.id.as_str())
            .collect::<Vec<_>>(),
        [id.as_str()]
    );
    let mut stream = c
        .watch_translation_job(authorized(
            WatchTranslationJobRequest { id: id.clone() },
            &alice,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.next().await.unwrap().unwrap().id, id);
    drop(stream);

    // GetQueueStats is for administrators only.
    let denied = c
        .get_queue_stats(authorized(GetQueueStatsRequest {}, &alice))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains("translation.admin"),
        "{}",
        denied.message()
    );
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn the_admin_scope_sees_every_job_and_reads_queue_stats(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = secured(database).await;
    let admin = token("operator", Some("openid translation.admin"));
    let c = &mut app.client;
    let mut ids = Vec::new();
    for caller in ["alice", "bob"] {
        ids.push(
            c.create_translation_job(authorized(create_request(), &token(caller, None)))
                .await
                .unwrap()
                .into_inner()
                .id,
        );
    }
    let listed = c
        .list_translation_jobs(authorized(ListTranslationJobsRequest::default(), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), 2);
    let bobs = c
        .cancel_translation_job(authorized(
            CancelTranslationJobRequest { id: ids[1].clone() },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bobs.user_id, "bob");
    let stats = c
        .get_queue_stats(authorized(GetQueueStatsRequest {}, &admin))
        .await;
    assert!(stats.is_ok(), "{stats:?}");
    // The list-style scp claim works as well.
    let scp = sign(
        Algorithm::HS256,
        &json!({"sub": "ops", "exp": now() + 60, "scp": ["translation.admin"]}),
        SECRET.as_bytes(),
    );
    assert!(
        c.get_queue_stats(authorized(GetQueueStatsRequest {}, &scp))
            .await
            .is_ok()
    );
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn http_job_routes_answer_401_with_a_bearer_challenge_and_scope_by_caller(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let app = secured(database).await;
    let base = format!("http://{}/api/v1/translation-jobs", app.http_addr);
    let body = format!(r#"{{"novel_id": "{NOVEL_ID}", "target_lang": "en"}}"#);

    let (status, head, error) = http("POST", &base, Some(&body), &[]).await;
    assert_eq!(status, 401, "{error}");
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    let error: serde_json::Value = serde_json::from_str(&error).unwrap();
    assert_eq!(error["error"]["code"], "UNAUTHENTICATED");
    let (status, head, _) = http(
        "GET",
        &format!("{base}/{}", uuid::Uuid::now_v7()),
        None,
        &[("authorization", "Bearer nonsense")],
    )
    .await;
    assert_eq!(status, 401);
    assert!(head.contains("www-authenticate: bearer"), "{head}");

    let alice = format!("Bearer {}", token("alice", None));
    let bob = format!("Bearer {}", token("bob", None));
    let (status, _, created) = http("POST", &base, Some(&body), &[("authorization", &alice)]).await;
    assert_eq!(status, 201, "{created}");
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(created["user_id"], "alice");
    let id = created["id"].as_str().unwrap();
    for (method, path) in [
        ("GET", format!("{base}/{id}")),
        ("POST", format!("{base}/{id}/cancel")),
        ("POST", format!("{base}/{id}/retry")),
    ] {
        let (status, _, body) = http(method, &path, None, &[("authorization", &bob)]).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        let (status, _, body) = http(method, &path, None, &[("authorization", &alice)]).await;
        assert_ne!(status, 404, "{method} {path}: {body}");
    }
    // Health and metrics stay open.
    let (status, _, _) = http(
        "GET",
        &format!("http://{}/readyz", app.http_addr),
        None,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn without_keys_the_service_runs_open_with_x_user_id_as_before(
    _: PgPoolOptions,
    database: PgConnectOptions,
) {
    let mut app = TestApp::ready(database).await;
    let mut request = Request::new(create_request());
    request
        .metadata_mut()
        .insert("x-user-id", "billing".parse().unwrap());
    let job = app
        .client
        .create_translation_job(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.user_id, "billing");
    // Anyone reads and changes any job, and reads the queue statistics.
    let mut other = Request::new(CancelTranslationJobRequest { id: job.id.clone() });
    other
        .metadata_mut()
        .insert("x-user-id", "someone-else".parse().unwrap());
    assert!(app.client.cancel_translation_job(other).await.is_ok());
    assert!(
        app.client
            .get_queue_stats(GetQueueStatsRequest {})
            .await
            .is_ok()
    );
    // A token is ignored rather than refused.
    let with_token = authorized(create_request(), "whatever");
    assert!(app.client.create_translation_job(with_token).await.is_ok());
    app.stop().await;
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn scoped_domain_queries_treat_another_callers_job_as_missing(pool: PgPool) {
    let user = |name: &str| UserId::parse("user_id", name).unwrap();
    let new = convert::new_job(
        user("alice"),
        create_request(),
        &convert::CreateRules::with_max_subtasks(10),
    )
    .unwrap();
    let job = jobs::create_job(&pool, &new).await.unwrap().job;
    let (alice, bob) = (Scope::Owner(user("alice")), Scope::Owner(user("bob")));

    let missing = |result: Result<(), JobError>, what: &str| {
        assert!(
            matches!(result, Err(JobError::NotFound(id)) if id == job.id),
            "{what}: {result:?}"
        );
    };
    missing(jobs::get_job(&pool, job.id, &bob).await.map(drop), "get");
    missing(
        jobs::get_job_basic(&pool, job.id, &bob).await.map(drop),
        "get basic",
    );
    missing(
        jobs::read_job_with_snapshot(&pool, job.id, &bob)
            .await
            .map(drop),
        "watch read",
    );
    missing(
        jobs::cancel_job(&pool, job.id, &bob).await.map(drop),
        "cancel",
    );
    missing(
        jobs::retry_job(&pool, job.id, &bob).await.map(drop),
        "retry",
    );
    let query = ListQuery {
        limit: 10,
        ..Default::default()
    };
    assert!(
        jobs::list_jobs(&pool, &query, &bob)
            .await
            .unwrap()
            .jobs
            .is_empty()
    );

    assert_eq!(
        jobs::get_job(&pool, job.id, &alice).await.unwrap().id,
        job.id
    );
    assert_eq!(
        jobs::list_jobs(&pool, &query, &alice)
            .await
            .unwrap()
            .jobs
            .len(),
        1
    );
    assert_eq!(
        jobs::list_jobs(&pool, &query, &Scope::All)
            .await
            .unwrap()
            .jobs
            .len(),
        1
    );
    let cancelled = jobs::cancel_job(&pool, job.id, &alice).await.unwrap();
    assert_eq!(cancelled.id, job.id);
    assert!(jobs::retry_job(&pool, job.id, &Scope::All).await.is_ok());
}

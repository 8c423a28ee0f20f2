//! `GET /api/v1/translation-jobs/{id}/events`: a job's changes as
//! server-sent events, for browsers (`EventSource`) and `curl -N`.
//!
//! The same stream as gRPC's WatchTranslationJob (`JobsApi::watch`: the
//! LISTEN hub, no polling, the same watch-stream limits), framed as
//! `text/event-stream`: the job first, then one `job` event per change,
//! each the JSON of `GET /api/v1/translation-jobs/{id}`; a comment every
//! [`KEEP_ALIVE`] so that proxies keep an idle stream open. The response
//! ends after a final status (COMPLETED, FAILED, CANCELLED) and at
//! shutdown; a job that can no longer be read ends it with one `error`
//! event holding the API's error JSON.
//!
//! Errors before the stream starts (bad id, another caller's job, a full
//! limit) are the usual JSON error answers. The request's place among the
//! calls in flight and its `RPC_TIMEOUT` end when the stream starts: only
//! the watch-stream limits count an open stream.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::{Path, State, rejection::PathRejection},
    http::{HeaderName, HeaderValue},
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures_util::StreamExt as _;

use super::{
    caller::Caller,
    convert,
    grpc::{JobsApi, WatchStates},
    json::{ErrorJson, job_json},
    status::{ApiError, HttpError},
};
use crate::proto;

/// Longest a stream stays silent: then it sends a comment line, so that
/// proxies and load balancers do not close it as idle (most wait 30 to
/// 60 s).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The text of the keep-alive comment (`: keep-alive`).
const KEEP_ALIVE_TEXT: &str = "keep-alive";

/// Name of the events that carry the job.
const JOB_EVENT: &str = "job";

/// Name of the one event sent when the job can no longer be read.
const ERROR_EVENT: &str = "error";

/// Tells nginx (and proxies that honour it) not to buffer the stream.
const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// The handler: authenticated and checked like `GET .../{id}`, then the
/// stream.
pub async fn job_events(
    State(api): State<JobsApi>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, HttpError> {
    let Path(id) = id?;
    let states = api
        .watch(&caller, &id, |state| {
            state.map(convert::job_to_proto).map_err(ApiError::from)
        })
        .await?;
    Ok(event_stream(states))
}

/// The response: one event per state until the stream ends.
fn event_stream(states: WatchStates<Result<proto::TranslationJob, ApiError>>) -> Response {
    // `id:` is the event's number within this stream. A client that
    // reconnects gets the job's current state first in any case, so the
    // Last-Event-ID header it sends back is not needed and not read.
    let events = states
        .enumerate()
        .map(|(index, state)| Ok::<_, Infallible>(event(index + 1, state)));
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text(KEEP_ALIVE_TEXT))
        .into_response();
    response
        .headers_mut()
        .insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    response
}

/// One state of the job as a `job` event, or the error that ends the
/// stream as an `error` event.
fn event(number: usize, state: Result<proto::TranslationJob, ApiError>) -> Event {
    let framed = match state {
        Ok(job) => Event::default()
            .event(JOB_EVENT)
            .id(number.to_string())
            .json_data(job_json(&job)),
        Err(error) => {
            let status = tonic::Status::from(error);
            Event::default()
                .event(ERROR_EVENT)
                .id(number.to_string())
                .json_data(ErrorJson::new(status.code(), status.message()))
        }
    };
    // Serialising these plain structs cannot fail; should it ever, the
    // client still gets an event rather than a cut connection.
    framed.unwrap_or_else(|_| Event::default().event(ERROR_EVENT).data("{}"))
}

#[cfg(test)]
mod tests {
    use axum::{
        body::Body,
        http::header::{CACHE_CONTROL, CONTENT_TYPE},
    };
    use http_body_util::BodyExt as _;
    use tokio::sync::mpsc;

    use super::*;

    fn job(status: proto::JobStatus) -> proto::TranslationJob {
        proto::TranslationJob {
            id: "0b9e8f0e-6b5c-4e6b-8d5e-3f6a2b1c0d9e".into(),
            status: status as i32,
            ..Default::default()
        }
    }

    /// The next piece of the body, as text; `None` at its end. Fails when
    /// nothing comes within two keep-alive intervals (at once, on a paused
    /// clock) rather than waiting for ever.
    async fn next(body: &mut Body) -> Option<String> {
        let frame = tokio::time::timeout(KEEP_ALIVE * 2, body.frame())
            .await
            .expect("a frame, or the end, in time")?
            .expect("no body error");
        Some(String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap())
    }

    #[tokio::test]
    async fn each_state_is_a_named_numbered_event_of_the_http_json_and_the_end_ends_the_body() {
        let (sender, receiver) = mpsc::channel(4);
        let response = event_stream(WatchStates::new(receiver));
        assert_eq!(response.headers()[CONTENT_TYPE], "text/event-stream");
        assert_eq!(response.headers()[CACHE_CONTROL], "no-cache");
        assert_eq!(response.headers()["x-accel-buffering"], "no");
        let mut body = response.into_body();

        for status in [proto::JobStatus::Pending, proto::JobStatus::Completed] {
            sender.send(Box::new(Ok(job(status)))).await.unwrap();
        }
        drop(sender);
        for (number, status) in [
            (1, proto::JobStatus::Pending),
            (2, proto::JobStatus::Completed),
        ] {
            let json = serde_json::to_string(&job_json(&job(status))).unwrap();
            assert_eq!(
                next(&mut body).await.unwrap(),
                format!("event: job\nid: {number}\ndata: {json}\n\n")
            );
        }
        assert_eq!(
            next(&mut body).await,
            None,
            "the body ends with the channel"
        );
    }

    #[tokio::test]
    async fn a_failed_read_is_an_error_event_with_the_apis_error_json() {
        let (sender, receiver) = mpsc::channel(4);
        let mut body = event_stream(WatchStates::new(receiver)).into_body();
        sender
            .send(Box::new(Err(ApiError::Job(
                crate::jobs::JobError::Database(sqlx::Error::PoolTimedOut),
            ))))
            .await
            .unwrap();
        let text = next(&mut body).await.unwrap();
        assert!(text.starts_with("event: error\nid: 1\n"), "{text}");
        let data = text
            .lines()
            .find_map(|line| line.strip_prefix("data: "))
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(json["error"]["code"], "UNAVAILABLE");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_sends_a_keep_alive_comment_every_interval() {
        let (sender, receiver) = mpsc::channel(4);
        let mut body = event_stream(WatchStates::new(receiver)).into_body();
        let started = tokio::time::Instant::now();
        for _ in 0..2 {
            assert_eq!(next(&mut body).await.unwrap(), ": keep-alive\n\n");
        }
        assert_eq!(started.elapsed(), KEEP_ALIVE * 2);

        // An event puts the next comment off by a whole interval.
        tokio::time::sleep(Duration::from_secs(5)).await;
        sender
            .send(Box::new(Ok(job(proto::JobStatus::Pending))))
            .await
            .unwrap();
        assert!(next(&mut body).await.unwrap().starts_with("event: job\n"));
        let sent = tokio::time::Instant::now();
        assert_eq!(next(&mut body).await.unwrap(), ": keep-alive\n\n");
        assert_eq!(sent.elapsed(), KEEP_ALIVE);
    }
}

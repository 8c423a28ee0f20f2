//! Watch mode: creates one job per stream, opens `--watchers`
//! WatchTranslationJob streams and `--sse-watchers` server-sent event
//! streams on them (each on its own HTTP/1.1 connection, or with
//! `--sse-http2` over as many HTTP/2 connections as gRPC uses), reads the
//! first state of each, prints `open`, and holds them all for `--duration`,
//! so that an outside script can measure the service's memory while they
//! are open.

use std::{process::ExitCode, time::Duration};

use futures_util::{StreamExt as _, stream};
use http_body_util::{BodyExt as _, Empty};
use hyper::{
    body::{Bytes, Incoming},
    client::conn::http2::SendRequest,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tonic::{Streaming, transport::Channel};
use translation_jobs::api::proto::{
    BatchCreateTranslationJobsRequest, TranslationJob, WatchTranslationJobRequest,
    translation_job_service_client::TranslationJobServiceClient,
};

use super::{Options, request};

/// Streams being opened at the same time.
const OPENING_AT_ONCE: usize = 64;
/// Jobs per BatchCreateTranslationJobs call.
const CREATE_BATCH: usize = 100;
/// Longest a stream may take to send its first state.
const FIRST_STATE_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(clients: &[TranslationJobServiceClient<Channel>], options: &Options) -> ExitCode {
    match open_and_hold(clients, options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("loadgen: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn open_and_hold(
    clients: &[TranslationJobServiceClient<Channel>],
    options: &Options,
) -> Result<(), String> {
    let ids = create_jobs(
        &clients[0],
        options.watchers + options.sse_watchers,
        options,
    )
    .await?;
    let (grpc_ids, sse_ids) = ids.split_at(options.watchers);
    let grpc = stream::iter(grpc_ids.iter().enumerate())
        .map(|(index, id)| open_grpc(clients[index % clients.len()].clone(), id.clone()))
        .buffer_unordered(OPENING_AT_ONCE)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let sse = if options.sse_http2 {
        let connections = http2_connections(&options.http_addr, clients.len()).await?;
        stream::iter(sse_ids.iter().enumerate())
            .map(|(index, id)| open_sse_http2(&connections[index % connections.len()], id))
            .buffer_unordered(OPENING_AT_ONCE)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .map(|opened| opened.map(SseStream::Http2))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        stream::iter(sse_ids)
            .map(|id| open_sse(&options.http_addr, id))
            .buffer_unordered(OPENING_AT_ONCE)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .map(|opened| opened.map(SseStream::Http1))
            .collect::<Result<Vec<_>, _>>()?
    };
    println!("watchers={} sse_watchers={} open", grpc.len(), sse.len());
    tokio::time::sleep(options.duration).await;
    println!(
        "watchers={} sse_watchers={} held {:?}",
        grpc.len(),
        sse.len(),
        options.duration
    );
    Ok(())
}

async fn create_jobs(
    client: &TranslationJobServiceClient<Channel>,
    count: usize,
    options: &Options,
) -> Result<Vec<String>, String> {
    let mut client = client.clone();
    let mut ids = Vec::with_capacity(count);
    while ids.len() < count {
        let batch = BatchCreateTranslationJobsRequest {
            requests: (0..(count - ids.len()).min(CREATE_BATCH))
                .map(|_| request(1, options.mix))
                .collect(),
        };
        let created = client
            .batch_create_translation_jobs(batch)
            .await
            .map_err(|status| format!("cannot create the watched jobs: {status}"))?;
        ids.extend(created.into_inner().jobs.into_iter().map(|job| job.id));
    }
    Ok(ids)
}

/// A WatchTranslationJob stream that has sent its first state.
async fn open_grpc(
    mut client: TranslationJobServiceClient<Channel>,
    id: String,
) -> Result<Streaming<TranslationJob>, String> {
    let mut stream = client
        .watch_translation_job(WatchTranslationJobRequest { id })
        .await
        .map_err(|status| format!("cannot watch: {status}"))?
        .into_inner();
    match tokio::time::timeout(FIRST_STATE_TIMEOUT, stream.message()).await {
        Ok(Ok(Some(_))) => Ok(stream),
        Ok(Ok(None)) => Err("a watch stream ended before its first state".into()),
        Ok(Err(status)) => Err(format!("watch stream failed: {status}")),
        Err(_) => Err("a watch stream sent no state in 30 s".into()),
    }
}

/// An event stream over its own HTTP/1.1 connection that has sent its
/// first event (the answer's head, then one event ending in a blank line).
async fn open_sse(addr: &str, id: &str) -> Result<TcpStream, String> {
    let mut connection = TcpStream::connect(addr)
        .await
        .map_err(|error| format!("cannot connect to {addr}: {error}"))?;
    let head = format!(
        "GET /api/v1/translation-jobs/{id}/events HTTP/1.1\r\nHost: {addr}\r\n\
         Accept: text/event-stream\r\n\r\n"
    );
    connection
        .write_all(head.as_bytes())
        .await
        .map_err(|error| format!("cannot send the events request: {error}"))?;
    let mut received = Vec::new();
    let first_event = async {
        let mut buffer = [0u8; 4096];
        loop {
            let read = connection
                .read(&mut buffer)
                .await
                .map_err(|error| format!("event stream failed: {error}"))?;
            if read == 0 {
                return Err(format!(
                    "event stream closed before its first event: {}",
                    String::from_utf8_lossy(&received)
                ));
            }
            received.extend_from_slice(&buffer[..read]);
            let text = String::from_utf8_lossy(&received);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                if !head.starts_with("HTTP/1.1 200") {
                    return Err(format!("events request refused: {head}"));
                }
                if body.contains("\n\n") {
                    return Ok(());
                }
            }
        }
    };
    tokio::time::timeout(FIRST_STATE_TIMEOUT, first_event)
        .await
        .map_err(|_| "an event stream sent no event in 30 s".to_string())??;
    Ok(connection)
}

/// An open event stream, held until the end.
enum SseStream {
    Http1(#[allow(dead_code)] TcpStream),
    Http2(#[allow(dead_code)] Incoming),
}

/// `count` HTTP/2 connections (prior knowledge) to the HTTP listener.
async fn http2_connections(
    addr: &str,
    count: usize,
) -> Result<Vec<SendRequest<Empty<Bytes>>>, String> {
    let mut senders = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|error| format!("cannot connect to {addr}: {error}"))?;
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .map_err(|error| format!("HTTP/2 handshake with {addr}: {error}"))?;
        tokio::spawn(connection);
        senders.push(sender);
    }
    Ok(senders)
}

/// An event stream over a shared HTTP/2 connection that has sent its first
/// event.
async fn open_sse_http2(sender: &SendRequest<Empty<Bytes>>, id: &str) -> Result<Incoming, String> {
    let request = hyper::Request::get(format!("/api/v1/translation-jobs/{id}/events"))
        .header("accept", "text/event-stream")
        .body(Empty::new())
        .map_err(|error| format!("events request: {error}"))?;
    let response = sender
        .clone()
        .send_request(request)
        .await
        .map_err(|error| format!("events request failed: {error}"))?;
    if response.status() != 200 {
        return Err(format!("events request refused: {}", response.status()));
    }
    let mut body = response.into_body();
    let first_event = async {
        let mut received = Vec::new();
        while !String::from_utf8_lossy(&received).contains("\n\n") {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        received.extend_from_slice(&data);
                    }
                }
                Some(Err(error)) => return Err(format!("event stream failed: {error}")),
                None => return Err("event stream ended before its first event".to_string()),
            }
        }
        Ok(())
    };
    tokio::time::timeout(FIRST_STATE_TIMEOUT, first_event)
        .await
        .map_err(|_| "an event stream sent no event in 30 s".to_string())??;
    Ok(body)
}

//! Load generator: drives CreateTranslationJob over gRPC and reports the
//! achieved rate, latency percentiles and errors by status code.
//!
//! ```text
//! loadgen [--addr http://127.0.0.1:50051] [--concurrency 32] [--duration 10s]
//!         [--warmup 2s] [--subtasks 10] [--rate 0]
//! ```
//! `--rate 0` (the default) is a closed loop: each of the `--concurrency`
//! callers sends its next request as soon as the previous one answered. A
//! positive rate is an open loop: requests start on a fixed schedule
//! whatever the latency, with at most `--concurrency` in flight.

use std::{
    collections::BTreeMap,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tonic::transport::{Channel, Endpoint};
use translation_jobs::api::proto::{
    CreateTranslationJobRequest, SubtaskSpec,
    translation_job_service_client::TranslationJobServiceClient,
};

struct Options {
    addr: String,
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
    subtasks: usize,
    rate: f64,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        addr: "http://127.0.0.1:50051".into(),
        concurrency: 32,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        subtasks: 10,
        rate: 0.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let duration = |raw: String| {
            humantime::parse_duration(&raw).map_err(|_| format!("{flag}: not a duration: {raw}"))
        };
        match flag.as_str() {
            "--addr" => options.addr = value()?,
            "--concurrency" => {
                options.concurrency = value()?.parse().map_err(|_| "--concurrency: a number")?
            }
            "--duration" => options.duration = duration(value()?)?,
            "--warmup" => options.warmup = duration(value()?)?,
            "--subtasks" => {
                options.subtasks = value()?.parse().map_err(|_| "--subtasks: a number")?
            }
            "--rate" => options.rate = value()?.parse().map_err(|_| "--rate: a number")?,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if options.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    Ok(options)
}

fn request(subtasks: usize) -> CreateTranslationJobRequest {
    CreateTranslationJobRequest {
        novel_id: uuid::Uuid::new_v4().to_string(),
        target_lang: "en".into(),
        source_lang: "ja".into(),
        subtasks: (0..subtasks)
            .map(|i| SubtaskSpec {
                entity_type: "chapter".into(),
                entity_id: format!("chapter-{i}"),
            })
            .collect(),
        ..Default::default()
    }
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: BTreeMap<String, u64>,
}

async fn one_call(
    client: &mut TranslationJobServiceClient<Channel>,
    subtasks: usize,
    tally: &Mutex<Tally>,
    measure: bool,
) {
    let started = Instant::now();
    let result = client.create_translation_job(request(subtasks)).await;
    if !measure {
        return;
    }
    let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
    match result {
        Ok(_) => tally.latencies.push(started.elapsed()),
        Err(status) => {
            *tally
                .errors
                .entry(format!("{:?}", status.code()))
                .or_default() += 1
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("loadgen: {message}");
            }
            eprintln!(
                "usage: loadgen [--addr URL] [--concurrency N] [--duration 10s] [--warmup 2s] [--subtasks N] [--rate PER_SECOND]"
            );
            return ExitCode::from(2);
        }
    };
    let channel = match Endpoint::from_shared(options.addr.clone()) {
        Ok(endpoint) => endpoint.tcp_nodelay(true),
        Err(error) => {
            eprintln!("loadgen: bad --addr: {error}");
            return ExitCode::from(2);
        }
    };
    // One HTTP/2 connection per 8 callers, so the client is not the bottleneck.
    let connections = options.concurrency.div_ceil(8);
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        match channel.connect().await {
            Ok(channel) => clients.push(TranslationJobServiceClient::new(channel)),
            Err(error) => {
                eprintln!("loadgen: cannot connect to {}: {error}", options.addr);
                return ExitCode::FAILURE;
            }
        }
    }

    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let measure_from = start + options.warmup;
    let end = measure_from + options.duration;
    let mut tasks = Vec::new();
    let interval = (options.rate > 0.0)
        .then(|| Duration::from_secs_f64(options.concurrency as f64 / options.rate));
    for worker in 0..options.concurrency {
        let mut client = clients[worker % connections].clone();
        let tally = tally.clone();
        let subtasks = options.subtasks;
        let rate = options.rate;
        tasks.push(tokio::spawn(async move {
            // Open loop: each caller owns an evenly spaced share of the schedule.
            let mut next = interval.map(|_| start + Duration::from_secs_f64(worker as f64 / rate));
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                if let (Some(every), Some(at)) = (interval, next.as_mut()) {
                    if *at > now {
                        tokio::time::sleep_until((*at).into()).await;
                    }
                    *at += every;
                }
                let measure = Instant::now() >= measure_from;
                one_call(&mut client, subtasks, &tally, measure).await;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }

    let tally = tally.lock().unwrap_or_else(|e| e.into_inner());
    let mut latencies = tally.latencies.clone();
    latencies.sort_unstable();
    let ok = latencies.len();
    let seconds = options.duration.as_secs_f64();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "mode={} concurrency={} subtasks={} duration={:?}",
        if interval.is_some() {
            format!("open rate={}/s", options.rate)
        } else {
            "closed".into()
        },
        options.concurrency,
        options.subtasks,
        options.duration
    );
    println!("ok={ok} rate={:.0}/s", ok as f64 / seconds);
    println!(
        "latency_ms p50={:.2} p90={:.2} p99={:.2} max={:.2}",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 90.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default())
    );
    if tally.errors.is_empty() {
        println!("errors=0");
    } else {
        for (code, count) in &tally.errors {
            println!("errors code={code} count={count}");
        }
    }
    ExitCode::SUCCESS
}

//! Load generator: drives CreateTranslationJob over gRPC and reports the
//! achieved rate, latency percentiles and errors by status code; with
//! `--consume`, an embedded consumer moves messages off the lanes and
//! reports how long a job took from its create answer to being visible in
//! Redis.
//!
//! ```text
//! loadgen [--addr http://127.0.0.1:50051] [--concurrency 32] [--duration 10s]
//!         [--warmup 2s] [--subtasks 10] [--rate 0] [--priority-mix high:0,normal:100,low:0]
//!         [--consume] [--redis-url redis://127.0.0.1:6379/0] [--queue translation_jobs]
//! loadgen --watchers 1000 [--duration 10s]     # hold 1,000 WatchTranslationJob streams
//! loadgen --sse-watchers 1000 [--sse-http2] [--http-addr 127.0.0.1:8000]   # as server-sent events
//! ```
//! `--rate 0` (the default) is a closed loop: each of the `--concurrency`
//! callers sends its next request as soon as the previous one answered. A
//! positive rate is an open loop: requests start on a fixed schedule
//! whatever the latency, with at most `--concurrency` in flight; a schedule
//! the service cannot keep shows as a lower achieved rate.
//!
//! The create answer is sent after the commit, so "answer received" is a
//! slightly late stand-in for the commit and "popped" a slightly late one
//! for the push: the figure is commit-to-visible plus a little client time.
//!
//! The consumer never pops: it moves messages into a processing list
//! (`{queue}:loadgen:processing`, one atomic script, see `move.lua`), and at
//! the end counts from that list. A reply lost on the way (Redis killed
//! mid-command) leaves the message in the list, where the final count finds
//! it, so the consumer's own losses are never counted as the service's:
//! `missing` is an acknowledged job with no message anywhere in Redis.

mod watch;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    process::ExitCode,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use fred::{
    prelude::{Builder, Client, ClientLike, Config, KeysInterface, ListInterface, ReconnectPolicy},
    types::{lists::LMoveDirection, scripts::Script},
};
use tonic::transport::{Channel, Endpoint};
use translation_jobs::{
    api::proto::{
        CreateTranslationJobRequest, Priority, SubtaskSpec,
        translation_job_service_client::TranslationJobServiceClient,
    },
    queue::{JobMessage, Lane, QueueName},
};

/// Callers sharing one HTTP/2 connection.
const CALLERS_PER_CONNECTION: usize = 8;
/// How long the consumer keeps popping after the load stops.
const CONSUMER_GRACE: Duration = Duration::from_secs(10);
/// Most messages one move takes.
const MOVE_BATCH: usize = 1000;
/// How long one blocking move waits on the normal lane when all lanes were
/// empty (a message on another lane waits at most this long to be seen).
const MOVE_WAIT_SECS: f64 = 0.01;

struct Options {
    addr: String,
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
    subtasks: usize,
    rate: f64,
    /// Weights of high, normal and low.
    mix: [u32; 3],
    consume: bool,
    redis_url: String,
    queue: String,
    /// Watch mode: open this many WatchTranslationJob streams (one per new
    /// job) and hold them for `--duration`, instead of creating load.
    watchers: usize,
    /// The same over HTTP: this many event streams
    /// (`GET /api/v1/translation-jobs/{id}/events`, one connection each).
    sse_watchers: usize,
    /// Where the HTTP API listens, for `--sse-watchers`.
    http_addr: String,
    /// The event streams over HTTP/2 connections instead of one HTTP/1.1
    /// connection each.
    sse_http2: bool,
}

fn parse_mix(raw: &str) -> Result<[u32; 3], String> {
    let mut mix = [0; 3];
    for part in raw.split(',') {
        let (name, weight) = part
            .split_once(':')
            .ok_or(format!("--priority-mix: expected name:weight, got {part}"))?;
        let weight: u32 = weight
            .parse()
            .map_err(|_| format!("--priority-mix: bad weight {weight}"))?;
        let slot = match name {
            "high" => 0,
            "normal" => 1,
            "low" => 2,
            other => return Err(format!("--priority-mix: unknown priority {other}")),
        };
        mix[slot] = weight;
    }
    if mix.iter().sum::<u32>() == 0 {
        return Err("--priority-mix: the weights add up to 0".into());
    }
    Ok(mix)
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        addr: "http://127.0.0.1:50051".into(),
        concurrency: 32,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        subtasks: 10,
        rate: 0.0,
        mix: [0, 1, 0],
        consume: false,
        redis_url: "redis://127.0.0.1:6379/0".into(),
        queue: "translation_jobs".into(),
        watchers: 0,
        sse_watchers: 0,
        http_addr: "127.0.0.1:8000".into(),
        sse_http2: false,
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
            "--priority-mix" => options.mix = parse_mix(&value()?)?,
            "--consume" => options.consume = true,
            "--redis-url" => options.redis_url = value()?,
            "--queue" => options.queue = value()?,
            "--watchers" => {
                options.watchers = value()?.parse().map_err(|_| "--watchers: a number")?
            }
            "--sse-watchers" => {
                options.sse_watchers = value()?.parse().map_err(|_| "--sse-watchers: a number")?
            }
            "--http-addr" => options.http_addr = value()?,
            "--sse-http2" => options.sse_http2 = true,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if options.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    Ok(options)
}

fn request(subtasks: usize, mix: [u32; 3]) -> CreateTranslationJobRequest {
    let total: u32 = mix.iter().sum();
    let pick = fastrand::u32(0..total);
    let priority = if pick < mix[0] {
        Priority::High
    } else if pick < mix[0] + mix[1] {
        Priority::Normal
    } else {
        Priority::Low
    };
    CreateTranslationJobRequest {
        novel_id: uuid::Uuid::new_v4().to_string(),
        target_lang: "en".into(),
        source_lang: "ja".into(),
        priority: priority.into(),
        subtasks: (0..subtasks)
            .map(|i| SubtaskSpec {
                entity_type: "chapter".into(),
                entity_id: format!("chapter-{i}"),
            })
            .collect(),
        ..Default::default()
    }
}

/// What the callers and the consumer record.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: BTreeMap<String, u64>,
    /// When each measured job's create answer arrived.
    answered: HashMap<String, Instant>,
    /// Jobs popped before their answer was recorded, with the pop time.
    popped_early: HashMap<String, Instant>,
    visible: Vec<Duration>,
    seen: HashSet<String>,
    duplicates: u64,
    /// Messages found only in the processing list at the end (their move's
    /// reply was lost).
    recovered: u64,
}

fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn one_call(
    client: &mut TranslationJobServiceClient<Channel>,
    options: (usize, [u32; 3]),
    tally: &Mutex<Tally>,
    measure: bool,
) {
    let started = Instant::now();
    let result = client
        .create_translation_job(request(options.0, options.1))
        .await;
    let answered = Instant::now();
    if !measure {
        return;
    }
    let mut tally = lock(tally);
    match result {
        Ok(job) => {
            tally.latencies.push(answered - started);
            let id = job.into_inner().id;
            match tally.popped_early.remove(&id) {
                Some(_) => tally.visible.push(Duration::ZERO),
                None => {
                    tally.answered.insert(id, answered);
                }
            }
        }
        Err(status) => {
            *tally
                .errors
                .entry(format!("{:?}", status.code()))
                .or_default() += 1
        }
    }
}

/// The consumer's processing list: where every moved message stays.
fn processing_key(queue: &QueueName) -> String {
    queue.tagged("loadgen:processing")
}

/// Records moved messages (the first as seen at `first_at`, the rest at
/// `rest_at`).
fn record(tally: &Mutex<Tally>, payloads: Vec<String>, first_at: Instant, rest_at: Instant) {
    let mut tally = lock(tally);
    for (index, payload) in payloads.into_iter().enumerate() {
        let now = if index == 0 { first_at } else { rest_at };
        let Ok(message) = serde_json::from_str::<JobMessage>(&payload) else {
            continue;
        };
        if !tally.seen.insert(message.job_id.clone()) {
            tally.duplicates += 1;
            continue;
        }
        match tally.answered.remove(&message.job_id) {
            Some(answered) => tally.visible.push(now.saturating_duration_since(answered)),
            None => {
                tally.popped_early.insert(message.job_id, now);
            }
        }
    }
}

/// Moves messages off every lane until `stop` and records when each job
/// became visible. Keeps going through Redis outages (it is used to
/// measure them).
async fn consume(options: &Options, tally: Arc<Mutex<Tally>>, stop: Instant) -> Result<(), String> {
    let queue = QueueName::parse(&options.queue).map_err(|e| format!("--queue: {e}"))?;
    let client = consumer_client(&options.redis_url)?;
    let processing = processing_key(&queue);
    // A list left by an earlier run would count its jobs as this run's.
    let _: Result<i64, _> = client.del(&processing).await;
    let script = Script::from_lua(include_str!("move.lua"));
    let mut keys: Vec<String> = Lane::WAITING.iter().map(|lane| queue.key(*lane)).collect();
    keys.push(processing.clone());
    while Instant::now() < stop {
        let moved: Result<Vec<String>, _> = script
            .evalsha_with_reload(&client, keys.clone(), vec![MOVE_BATCH.to_string()])
            .await;
        match moved {
            Ok(payloads) if !payloads.is_empty() => {
                let now = Instant::now();
                record(&tally, payloads, now, now);
            }
            Ok(_) => {
                // All empty: block on the normal lane for a moment.
                let waited: Result<Option<String>, _> = client
                    .blmove(
                        queue.key(Lane::Normal),
                        processing.as_str(),
                        LMoveDirection::Left,
                        LMoveDirection::Right,
                        MOVE_WAIT_SECS,
                    )
                    .await;
                if let Ok(Some(payload)) = waited {
                    let now = Instant::now();
                    record(&tally, vec![payload], now, now);
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let _ = client.quit().await;
    Ok(())
}

fn consumer_client(url: &str) -> Result<Client, String> {
    let mut config = Config::from_url(url).map_err(|e| format!("--redis-url: {e}"))?;
    config.fail_fast = false;
    let client = Builder::from_config(config)
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(5))
        .set_policy(ReconnectPolicy::new_constant(0, 50))
        .build()
        .map_err(|e| e.to_string())?;
    let _connection = client.connect();
    Ok(client)
}

/// The final count: everything the processing list holds (a message whose
/// move reply was lost is there too). Counts duplicates from the list
/// itself, by (job_id, attempt), and deletes the list.
async fn settle(options: &Options, tally: &Mutex<Tally>) -> Result<(), String> {
    let queue = QueueName::parse(&options.queue).map_err(|e| format!("--queue: {e}"))?;
    let client = consumer_client(&options.redis_url)?;
    client
        .wait_for_connect()
        .await
        .map_err(|e| format!("Redis for the final count: {e}"))?;
    let processing = processing_key(&queue);
    let held: Vec<String> = client
        .lrange(&processing, 0, -1)
        .await
        .map_err(|e| format!("LRANGE {processing}: {e}"))?;
    let mut copies: HashMap<(String, i32), u64> = HashMap::new();
    {
        let mut tally = lock(tally);
        for payload in &held {
            let Ok(message) = serde_json::from_str::<JobMessage>(payload) else {
                continue;
            };
            *copies
                .entry((message.job_id.clone(), message.attempt))
                .or_default() += 1;
            if tally.seen.insert(message.job_id.clone()) {
                tally.recovered += 1;
                tally.answered.remove(&message.job_id);
            }
        }
        tally.duplicates = copies.values().map(|n| n - 1).sum();
    }
    let _: Result<i64, _> = client.del(&processing).await;
    let _ = client.quit().await;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn print_latencies(label: &str, mut values: Vec<Duration>) {
    values.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label} p50={:.2} p90={:.2} p99={:.2} max={:.2}",
        ms(percentile(&values, 50.0)),
        ms(percentile(&values, 90.0)),
        ms(percentile(&values, 99.0)),
        ms(values.last().copied().unwrap_or_default())
    );
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
                "usage: loadgen [--addr URL] [--concurrency N] [--duration 10s] [--warmup 2s] \
                 [--subtasks N] [--rate PER_SECOND] [--priority-mix high:W,normal:W,low:W] \
                 [--consume] [--redis-url URL] [--queue NAME] [--watchers N] \
                 [--sse-watchers N] [--sse-http2] [--http-addr HOST:PORT]"
            );
            return ExitCode::from(2);
        }
    };
    let endpoint = match Endpoint::from_shared(options.addr.clone()) {
        Ok(endpoint) => endpoint.tcp_nodelay(true),
        Err(error) => {
            eprintln!("loadgen: bad --addr: {error}");
            return ExitCode::from(2);
        }
    };
    let connections = options.concurrency.div_ceil(CALLERS_PER_CONNECTION);
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        match endpoint.connect().await {
            Ok(channel) => clients.push(TranslationJobServiceClient::new(channel)),
            Err(error) => {
                eprintln!("loadgen: cannot connect to {}: {error}", options.addr);
                return ExitCode::FAILURE;
            }
        }
    }

    if options.watchers > 0 || options.sse_watchers > 0 {
        return watch::run(&clients, &options).await;
    }

    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let measure_from = start + options.warmup;
    let end = measure_from + options.duration;
    let consumer = if options.consume {
        let tally = tally.clone();
        let stop = end + CONSUMER_GRACE;
        let consumer_options = Options {
            addr: String::new(),
            redis_url: options.redis_url.clone(),
            queue: options.queue.clone(),
            http_addr: String::new(),
            ..options
        };
        Some(tokio::spawn(async move {
            consume(&consumer_options, tally, stop).await
        }))
    } else {
        None
    };

    let interval = (options.rate > 0.0)
        .then(|| Duration::from_secs_f64(options.concurrency as f64 / options.rate));
    let mut callers = Vec::new();
    for caller in 0..options.concurrency {
        let mut client = clients[caller % connections].clone();
        let tally = tally.clone();
        let shape = (options.subtasks, options.mix);
        let rate = options.rate;
        callers.push(tokio::spawn(async move {
            // Open loop: each caller owns an evenly spaced share of the schedule.
            let mut next = interval.map(|_| start + Duration::from_secs_f64(caller as f64 / rate));
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
                one_call(&mut client, shape, &tally, measure).await;
            }
        }));
    }
    for caller in callers {
        let _ = caller.await;
    }
    if let Some(consumer) = consumer {
        // Stop early once every measured job was seen.
        let deadline = Instant::now() + CONSUMER_GRACE;
        while Instant::now() < deadline && !lock(&tally).answered.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        consumer.abort();
        if let Ok(Ok(Err(error))) = tokio::time::timeout(Duration::from_secs(1), consumer).await {
            eprintln!("loadgen: consumer: {error}");
        }
        let settled = tokio::time::timeout(CONSUMER_GRACE, settle(&options, &tally)).await;
        match settled {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("loadgen: final count: {error}"),
            Err(_) => eprintln!("loadgen: final count: Redis did not answer"),
        }
    }

    let tally = lock(&tally);
    let ok = tally.latencies.len();
    let seconds = options.duration.as_secs_f64();
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
    print_latencies("latency_ms", tally.latencies.clone());
    if tally.errors.is_empty() {
        println!("errors=0");
    } else {
        for (code, count) in &tally.errors {
            println!("errors code={code} count={count}");
        }
    }
    if options.consume {
        println!(
            "visible={} missing={} duplicates={} recovered_from_processing={}",
            tally.visible.len(),
            tally.answered.len(),
            tally.duplicates,
            tally.recovered
        );
        print_latencies("commit_to_redis_ms", tally.visible.clone());
    }
    ExitCode::SUCCESS
}

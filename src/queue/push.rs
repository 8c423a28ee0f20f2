//! The relay's idempotent push: one script call per batch, every lane at
//! once (they share a cluster slot). See `push.lua` for the order of its
//! effects and what the markers remember.

use std::{collections::BTreeMap, time::Duration};

use fred::prelude::Value;
use tracing::instrument;

use super::{Lane, QueueError, RedisQueue};

/// Outbox ids per marker key. A marker key holds a 4-byte token per id:
/// 1000 ids make a 4000-byte string, which with Redis's string header still
/// fits jemalloc's 4 KiB size class (1024 ids would take the 5 KiB one).
pub const MARKER_BLOCK_IDS: i64 = 1000;
/// Bytes per id in a marker key.
const MARKER_SLOT_BYTES: i64 = 4;

/// Bytes of packed metadata per message (see `push.lua`).
const META_BYTES: usize = 9;
// The packed offsets and key indexes are 16-bit.
const _: () = assert!(MARKER_BLOCK_IDS * MARKER_SLOT_BYTES <= u16::MAX as i64);
const _: () = assert!(MAX_MESSAGES_PER_SCRIPT + 8 <= u16::MAX as usize);

/// Most messages sent in one script call; Lua's `unpack` has a stack limit.
pub const MAX_MESSAGES_PER_SCRIPT: usize = 1000;

/// One message to push, identified by its outbox row.
#[derive(Debug, Clone, Copy)]
pub struct OutboxMessage<'a> {
    pub outbox_id: i64,
    /// The row's random token: tells it from an earlier row with the same id.
    pub token: i32,
    pub lane: Lane,
    pub payload: &'a str,
}

/// Where one message ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Its position in its lane (the lane's push counter after it); for a
    /// message an earlier attempt had pushed, the counter now, which is at
    /// least its real position.
    pub seq: i64,
    /// False when an earlier, uncommitted attempt had already pushed it.
    pub pushed: bool,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// Every message is on its lane, once; placements in message order.
    Done(Vec<Placement>),
    /// Redis does not hold the generation the caller expected (it lost its
    /// data, or another process started a new generation): nothing was
    /// written.
    StaleGeneration { found: Option<i64> },
}

impl RedisQueue {
    /// Pushes messages onto their lanes, each lane in the given order, each
    /// message at most once per (outbox id, token) within `marker_ttl`, and
    /// only while Redis holds `generation`. With a [`ReplicaWait`](super::ReplicaWait)
    /// set, done only once enough replicas hold the push.
    // Debug: the relay logs failed drains itself, throttled; a push that
    // keeps failing (no replica confirms while one is down) would otherwise
    // log an error on every retry.
    #[instrument(skip_all, fields(count = messages.len()), err(level = "debug"))]
    pub async fn push(
        &self,
        generation: i64,
        marker_ttl: Duration,
        messages: &[OutboxMessage<'_>],
    ) -> Result<PushOutcome, QueueError> {
        let watch = self.watch_connection().await;
        let mut placements = Vec::with_capacity(messages.len());
        for chunk in messages.chunks(MAX_MESSAGES_PER_SCRIPT) {
            let (keys, args) = self.push_arguments(generation, marker_ttl, chunk);
            let reply: Vec<Value> = self
                .push
                .evalsha_with_reload(&self.pusher, keys, args)
                .await?;
            match parse_push_reply(reply, chunk.len())? {
                PushOutcome::Done(done) => placements.extend(done),
                stale @ PushOutcome::StaleGeneration { .. } => return Ok(stale),
            }
        }
        if let Some(watch) = watch {
            self.confirm_replicated(watch).await?;
        }
        Ok(PushOutcome::Done(placements))
    }

    fn push_arguments(
        &self,
        generation: i64,
        marker_ttl: Duration,
        messages: &[OutboxMessage<'_>],
    ) -> (Vec<String>, Vec<Value>) {
        let lanes: Vec<Lane> = {
            let mut used: Vec<Lane> = messages.iter().map(|m| m.lane).collect();
            used.sort_unstable();
            used.dedup();
            used
        };
        let mut keys = Vec::with_capacity(1 + lanes.len() + 2);
        keys.push(self.queue.tagged("state"));
        keys.extend(lanes.iter().map(|lane| self.queue.key(*lane)));
        let mut args = Vec::with_capacity(5 + lanes.len() + messages.len());
        args.push(Value::String(generation.to_string().into()));
        args.push(Value::Integer(
            i64::try_from(marker_ttl.as_secs().max(1)).unwrap_or(i64::MAX),
        ));
        args.push(Value::Integer(MARKER_BLOCK_IDS * MARKER_SLOT_BYTES));
        args.push(Value::Integer(lanes.len() as i64));
        args.extend(lanes.iter().map(|lane| Value::String(lane.as_str().into())));

        // Per message: lane key index (1 byte), marker key index (2),
        // offset in the marker (2), token (4); see push.lua.
        let mut meta = Vec::with_capacity(messages.len() * META_BYTES);
        let mut markers: BTreeMap<i64, u16> = BTreeMap::new();
        for message in messages {
            let lane_index = 2 + lanes.iter().position(|l| *l == message.lane).unwrap_or(0);
            let block = message.outbox_id.div_euclid(MARKER_BLOCK_IDS);
            let marker_index = *markers.entry(block).or_insert_with(|| {
                keys.push(self.queue.tagged(&format!("pushed:{block}")));
                // At most 1 + lanes + MAX_MESSAGES_PER_SCRIPT keys.
                u16::try_from(keys.len()).unwrap_or(u16::MAX)
            });
            let offset = message.outbox_id.rem_euclid(MARKER_BLOCK_IDS) * MARKER_SLOT_BYTES;
            meta.push(u8::try_from(lane_index).unwrap_or(u8::MAX));
            meta.extend_from_slice(&marker_index.to_be_bytes());
            meta.extend_from_slice(&u16::try_from(offset).unwrap_or(u16::MAX).to_be_bytes());
            meta.extend_from_slice(&message.token.to_be_bytes());
        }
        args.push(Value::Bytes(meta.into()));
        args.extend(
            messages
                .iter()
                .map(|message| Value::String(message.payload.into())),
        );
        (keys, args)
    }

    /// The marker key of an outbox id (tests delete it to simulate a marker
    /// that expired).
    pub fn marker_key(&self, outbox_id: i64) -> String {
        self.queue.tagged(&format!(
            "pushed:{}",
            outbox_id.div_euclid(MARKER_BLOCK_IDS)
        ))
    }
}

fn parse_push_reply(reply: Vec<Value>, expected: usize) -> Result<PushOutcome, QueueError> {
    let mut values = reply.into_iter();
    match values.next().and_then(|v| v.as_i64()) {
        Some(-1) => {
            let found = values.next().and_then(|v| v.as_i64());
            Ok(PushOutcome::StaleGeneration { found })
        }
        Some(1) => {
            let placements: Vec<Placement> = values
                .map(|v| match v.as_i64() {
                    Some(seq) if seq >= 1 => Ok(Placement { seq, pushed: true }),
                    Some(skipped) if skipped <= -1 => Ok(Placement {
                        seq: -1 - skipped,
                        pushed: false,
                    }),
                    _ => Err(QueueError::Reply(format!("push position {v:?}"))),
                })
                .collect::<Result<_, _>>()?;
            if placements.len() == expected {
                Ok(PushOutcome::Done(placements))
            } else {
                Err(QueueError::Reply(format!(
                    "{} positions for {expected} messages",
                    placements.len()
                )))
            }
        }
        other => Err(QueueError::Reply(format!("push status {other:?}"))),
    }
}

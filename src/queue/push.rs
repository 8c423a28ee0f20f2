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
const META_BYTES: usize = 8;
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
            let layout = Layout::of(chunk);
            let (keys, args) = self.push_arguments(generation, marker_ttl, chunk, &layout);
            let reply: Vec<Value> = self
                .push
                .evalsha_with_reload(&self.pusher, keys, args)
                .await?;
            match parse_push_reply(reply, &layout)? {
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
        layout: &Layout,
    ) -> (Vec<String>, Vec<Value>) {
        let mut keys = Vec::with_capacity(1 + layout.lanes.len() + 2);
        keys.push(self.queue.tagged("state"));
        keys.extend(layout.lanes.iter().map(|lane| self.queue.key(*lane)));
        let mut args = Vec::with_capacity(7 + 2 * layout.lanes.len() + messages.len());
        args.push(Value::String(generation.to_string().into()));
        args.push(Value::Integer(
            i64::try_from(marker_ttl.as_secs().max(1)).unwrap_or(i64::MAX),
        ));
        args.push(Value::Integer(MARKER_BLOCK_IDS * MARKER_SLOT_BYTES));
        args.push(Value::Integer(layout.lanes.len() as i64));
        args.extend(
            layout
                .lanes
                .iter()
                .map(|lane| Value::String(lane.as_str().into())),
        );
        args.extend(
            layout
                .lane_counts
                .iter()
                .map(|&count| Value::Integer(count as i64)),
        );

        // The slots in id order, one per outbox id (a repeated id keeps its
        // last token), grouped into runs of adjacent slots; see push.lua.
        let mut slots: Vec<(i64, i64, i32)> = messages
            .iter()
            .map(|m| {
                (
                    m.outbox_id.div_euclid(MARKER_BLOCK_IDS),
                    m.outbox_id.rem_euclid(MARKER_BLOCK_IDS) * MARKER_SLOT_BYTES,
                    m.token,
                )
            })
            .collect();
        slots.sort_by_key(|&(block, offset, _)| (block, offset));
        slots.dedup_by(|later, earlier| {
            let same = (later.0, later.1) == (earlier.0, earlier.1);
            if same {
                earlier.2 = later.2;
            }
            same
        });
        // Marker key index (into KEYS, 1-based) of each block, in block order.
        let mut markers: BTreeMap<i64, u16> = BTreeMap::new();
        let mut runs: Vec<Run> = Vec::new();
        let mut tokens = Vec::with_capacity(slots.len() * MARKER_SLOT_BYTES as usize);
        for &(block, offset, token) in &slots {
            let marker = *markers.entry(block).or_insert_with(|| {
                keys.push(self.queue.tagged(&format!("pushed:{block}")));
                // At most 1 + lanes + MAX_MESSAGES_PER_SCRIPT keys.
                u16::try_from(keys.len()).unwrap_or(u16::MAX)
            });
            let offset = u16::try_from(offset).unwrap_or(u16::MAX);
            match runs.last_mut() {
                Some(run)
                    if run.marker == marker
                        && u32::from(run.offset) + 4 * u32::from(run.slots)
                            == u32::from(offset) =>
                {
                    run.slots += 1;
                }
                _ => runs.push(Run {
                    marker,
                    offset,
                    slots: 1,
                }),
            }
            tokens.extend_from_slice(&token.to_be_bytes());
        }
        let mut packed_runs = Vec::with_capacity(runs.len() * RUN_BYTES);
        for run in &runs {
            packed_runs.extend_from_slice(&run.marker.to_be_bytes());
            packed_runs.extend_from_slice(&run.offset.to_be_bytes());
            packed_runs.extend_from_slice(&run.slots.to_be_bytes());
        }
        args.push(Value::Bytes(packed_runs.into()));
        args.push(Value::Bytes(tokens.into()));

        // Per message, in payload order: marker key index (2), offset in
        // the marker (2), token (4).
        let mut meta = Vec::with_capacity(messages.len() * META_BYTES);
        for &index in &layout.order {
            let message = &messages[index];
            let block = message.outbox_id.div_euclid(MARKER_BLOCK_IDS);
            let marker = markers.get(&block).copied().unwrap_or(u16::MAX);
            let offset = message.outbox_id.rem_euclid(MARKER_BLOCK_IDS) * MARKER_SLOT_BYTES;
            meta.extend_from_slice(&marker.to_be_bytes());
            meta.extend_from_slice(&u16::try_from(offset).unwrap_or(u16::MAX).to_be_bytes());
            meta.extend_from_slice(&message.token.to_be_bytes());
        }
        args.push(Value::Bytes(meta.into()));
        args.extend(
            layout
                .order
                .iter()
                .map(|&index| Value::String(messages[index].payload.into())),
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

/// How a chunk of messages is laid out in the script's arguments: grouped
/// by lane, each lane in the given order.
struct Layout {
    /// The lanes used, in `Lane` order.
    lanes: Vec<Lane>,
    /// How many messages each of `lanes` gets.
    lane_counts: Vec<usize>,
    /// The messages' indexes in payload order.
    order: Vec<usize>,
}

impl Layout {
    fn of(messages: &[OutboxMessage<'_>]) -> Self {
        let mut lanes: Vec<Lane> = messages.iter().map(|m| m.lane).collect();
        lanes.sort_unstable();
        lanes.dedup();
        let mut order = Vec::with_capacity(messages.len());
        let mut lane_counts = Vec::with_capacity(lanes.len());
        for lane in &lanes {
            let before = order.len();
            order.extend((0..messages.len()).filter(|&i| messages[i].lane == *lane));
            lane_counts.push(order.len() - before);
        }
        Self {
            lanes,
            lane_counts,
            order,
        }
    }
}

/// Adjacent marker slots of one marker key.
struct Run {
    marker: u16,
    offset: u16,
    slots: u16,
}

/// Bytes per packed run (see `push.lua`).
const RUN_BYTES: usize = 6;

/// Reads the script's reply: the lanes' counters, then the messages skipped
/// as already pushed; gives each message its position, in message order.
fn parse_push_reply(reply: Vec<Value>, layout: &Layout) -> Result<PushOutcome, QueueError> {
    let mut values = reply.into_iter();
    match values.next().and_then(|v| v.as_i64()) {
        Some(-1) => {
            let found = values.next().and_then(|v| v.as_i64());
            Ok(PushOutcome::StaleGeneration { found })
        }
        Some(1) => {
            let mut numbers = values.map(|v| {
                v.as_i64()
                    .ok_or_else(|| QueueError::Reply(format!("push reply value {v:?}")))
            });
            let counters: Vec<i64> = numbers
                .by_ref()
                .take(layout.lanes.len())
                .collect::<Result<_, _>>()?;
            if counters.len() != layout.lanes.len() {
                return Err(QueueError::Reply(format!(
                    "{} lane counters for {} lanes",
                    counters.len(),
                    layout.lanes.len()
                )));
            }
            let total = layout.order.len();
            let mut skipped = vec![false; total];
            for number in numbers {
                let number = number?;
                match usize::try_from(number) {
                    Ok(at @ 1..) if at <= total && !skipped[at - 1] => skipped[at - 1] = true,
                    _ => {
                        return Err(QueueError::Reply(format!(
                            "skipped message {number} of {total}"
                        )));
                    }
                }
            }
            let mut placements = vec![
                Placement {
                    seq: 0,
                    pushed: false
                };
                total
            ];
            let mut first = 0;
            for (&count, &counter) in layout.lane_counts.iter().zip(&counters) {
                let lane = first..first + count;
                let fresh = skipped[lane.clone()].iter().filter(|s| !**s).count() as i64;
                if counter < fresh {
                    return Err(QueueError::Reply(format!(
                        "lane counter {counter} below the {fresh} messages pushed"
                    )));
                }
                let mut pushed = 0;
                for at in lane {
                    placements[layout.order[at]] = if skipped[at] {
                        Placement {
                            seq: counter,
                            pushed: false,
                        }
                    } else {
                        pushed += 1;
                        Placement {
                            seq: counter - fresh + pushed,
                            pushed: true,
                        }
                    };
                }
                first += count;
            }
            Ok(PushOutcome::Done(placements))
        }
        other => Err(QueueError::Reply(format!("push status {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(outbox_id: i64, lane: Lane) -> OutboxMessage<'static> {
        OutboxMessage {
            outbox_id,
            token: 1,
            lane,
            payload: "",
        }
    }

    fn ints(values: &[i64]) -> Vec<Value> {
        values.iter().map(|&v| Value::Integer(v)).collect()
    }

    #[test]
    fn messages_are_grouped_by_lane_each_lane_in_the_given_order() {
        let messages = [
            message(1, Lane::Normal),
            message(2, Lane::High),
            message(3, Lane::Normal),
            message(4, Lane::Low),
            message(5, Lane::High),
        ];
        let layout = Layout::of(&messages);
        assert_eq!(layout.lanes, [Lane::High, Lane::Normal, Lane::Low]);
        assert_eq!(layout.lane_counts, [2, 2, 1]);
        assert_eq!(layout.order, [1, 4, 0, 2, 3]);
    }

    #[test]
    fn positions_follow_the_lane_counters_and_skipped_messages_get_the_counter() {
        let messages = [
            message(1, Lane::Normal),
            message(2, Lane::High),
            message(3, Lane::Normal),
            message(4, Lane::Normal),
        ];
        let layout = Layout::of(&messages);
        // Payload order: 2 (high), then 1, 3, 4 (normal); the third payload
        // (id 3) was pushed before.
        let reply = ints(&[1, 7, 20, 3]);
        let at = |seq, pushed| Placement { seq, pushed };
        assert_eq!(
            parse_push_reply(reply, &layout).unwrap(),
            PushOutcome::Done(vec![at(19, true), at(7, true), at(20, false), at(20, true)])
        );
    }

    #[test]
    fn a_stale_generation_is_reported_with_what_redis_holds() {
        let layout = Layout::of(&[message(1, Lane::Normal)]);
        let reply = vec![Value::Integer(-1), Value::String("4".into())];
        assert_eq!(
            parse_push_reply(reply, &layout).unwrap(),
            PushOutcome::StaleGeneration { found: Some(4) }
        );
        let reply = vec![Value::Integer(-1), Value::Null];
        assert_eq!(
            parse_push_reply(reply, &layout).unwrap(),
            PushOutcome::StaleGeneration { found: None }
        );
    }

    #[test]
    fn a_malformed_reply_is_an_error_naming_what_is_wrong() {
        let layout = Layout::of(&[message(1, Lane::Normal), message(2, Lane::High)]);
        for (reply, expected) in [
            (ints(&[1, 5]), "1 lane counters for 2 lanes"),
            (ints(&[1, 5, 5, 3]), "skipped message 3 of 2"),
            (ints(&[1, 5, 5, 0]), "skipped message 0 of 2"),
            (ints(&[1, 5, 5, 1, 1]), "skipped message 1 of 2"),
            (
                ints(&[1, 0, 5]),
                "lane counter 0 below the 1 messages pushed",
            ),
            (ints(&[2]), "push status Some(2)"),
            (vec![], "push status None"),
        ] {
            match parse_push_reply(reply, &layout) {
                Err(QueueError::Reply(message)) => assert_eq!(message, expected),
                other => panic!("{expected}: {other:?}"),
            }
        }
    }
}

//! Pushing a claimed round to Redis under the current generation, and
//! finding the pushes a Redis failover lost.

use std::sync::atomic::Ordering;

use uuid::Uuid;

use super::{Relay, RelayError, claim::Claimed};
use crate::{
    db::bounded,
    outbox::generation,
    queue::{Lane, OutboxMessage, Placement, PushOutcome},
};

/// A rollback found by a push, recorded for the reaper (see
/// `jobs::requeue_rolled_back`): the lane's counter before and after the
/// push, the jobs the push put there, and a time before the push.
const RECORD_ROLLBACK: &str = "INSERT INTO lane_rollbacks \
         (queue, generation, lane, after_seq, own_up_to, own_jobs, pushed_before) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// Where the claimed rows' messages went.
#[derive(Debug, Clone)]
pub struct Published {
    pub(super) generation: i64,
    pub placements: Vec<Placement>,
}

impl Published {
    /// Messages that reached a lane now (the rest had been pushed by an
    /// earlier attempt that did not commit).
    pub fn pushed(&self) -> u64 {
        self.placements.iter().filter(|p| p.pushed).count() as u64
    }
}

impl Relay {
    /// Pushes the claimed rows, each lane in id order, under the current
    /// Redis generation (settling it first when unknown), and records a
    /// rollback the push finds (see `find_rollbacks`).
    pub async fn publish(&self, claimed: &Claimed) -> Result<Published, RelayError> {
        let generation = match self.generation.load(Ordering::Acquire) {
            0 => self.settle_generation().await?,
            known => known,
        };
        let messages: Vec<OutboxMessage<'_>> = claimed
            .rows
            .iter()
            .map(|row| OutboxMessage {
                outbox_id: row.id,
                token: row.token,
                lane: Lane::parse(&row.lane).unwrap_or_else(|| {
                    tracing::warn!(outbox_id = row.id, lane = %row.lane, "unknown lane; using the normal one");
                    Lane::Normal
                }),
                payload: &row.payload,
            })
            .collect();
        match self
            .queue
            .push(generation, self.settings.marker_ttl, &messages)
            .await?
        {
            PushOutcome::Done(placements) => {
                self.find_rollbacks(claimed, &messages, &placements, generation)
                    .await?;
                Ok(Published {
                    generation,
                    placements,
                })
            }
            PushOutcome::StaleGeneration { found } => {
                // Settle it on the next drain; this batch rolls back untouched.
                self.generation.store(0, Ordering::Release);
                Err(RelayError::StaleGeneration {
                    expected: generation,
                    found,
                })
            }
        }
    }

    /// Compares each lane's counter before this push with the highest
    /// position recorded before it (by any relay, read with the claim, or
    /// seen by this one's earlier pushes, which may not be committed yet).
    /// A counter below it means Redis lost pushes: the positions above the
    /// counter now go to new messages, so the reaper could no longer tell
    /// the lost messages by their position. The rollback is recorded for the
    /// reaper, which queues the lost jobs again, and the reaper is woken.
    /// (The messages of `claimed.rows` are `messages`, in the same order.)
    async fn find_rollbacks(
        &self,
        claimed: &Claimed,
        messages: &[OutboxMessage<'_>],
        placements: &[Placement],
        generation: i64,
    ) -> Result<(), RelayError> {
        // Per lane: its counter before the push, and after it.
        let mut lanes: Vec<(Lane, i64, i64)> = Vec::new();
        for (message, placement) in messages.iter().zip(placements) {
            let before = if placement.pushed {
                placement.seq - 1
            } else {
                placement.seq
            };
            match lanes.iter_mut().find(|(lane, _, _)| *lane == message.lane) {
                Some((_, low, high)) => {
                    *low = (*low).min(before);
                    *high = (*high).max(placement.seq);
                }
                None => lanes.push((message.lane, before, placement.seq)),
            }
        }
        // Until the counter passes the highest position recorded, every push
        // finds the rollback again (from PostgreSQL's record, or from this
        // relay's own earlier pushes): each records the positions it took,
        // so that the reaper tells the lost messages there from its own.
        let mut rolled_back = Vec::new();
        {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            seen.retain(|(pushed_under, _), _| *pushed_under == generation);
            for (lane, before, after) in lanes {
                let seen = seen.entry((generation, lane)).or_insert(0);
                let highest = claimed.recorded.highest(generation, lane).max(*seen);
                if before < highest {
                    rolled_back.push((lane, before, after, highest));
                }
                *seen = (*seen).max(after);
            }
        }
        let Some(pushed_before) = claimed.recorded.at else {
            return Ok(());
        };
        for &(lane, before, after, highest) in &rolled_back {
            let own_jobs: Vec<Uuid> = claimed
                .rows
                .iter()
                .zip(messages)
                .filter(|(_, message)| message.lane == lane)
                .map(|(row, _)| row.job_id)
                .collect();
            tracing::warn!(
                lane = %lane.as_str(),
                counter = before,
                recorded = highest,
                "Redis lost pushes (its push counter is below a recorded position: a failover to a \
                 replica that missed them); their jobs are queued again"
            );
            bounded(
                self.settings.call_timeout,
                sqlx::query(RECORD_ROLLBACK)
                    .bind(self.queue.queue().as_str())
                    .bind(generation)
                    .bind(lane.as_str())
                    .bind(before)
                    .bind(after)
                    .bind(&own_jobs)
                    .bind(pushed_before)
                    .execute(&self.pool),
            )
            .await?;
        }
        if !rolled_back.is_empty() {
            self.lost_data.wake();
        }
        Ok(())
    }

    /// Settles the generation with PostgreSQL and Redis (see
    /// `outbox::generation`); wakes the reaper when Redis had lost data.
    async fn settle_generation(&self) -> Result<i64, RelayError> {
        let synced = generation::sync(
            &self.pool,
            &self.queue,
            &self.owner,
            self.settings.call_timeout,
        )
        .await?;
        if synced.lost {
            self.lost_data.wake();
        }
        self.generation.store(synced.generation, Ordering::Release);
        Ok(synced.generation)
    }
}

//! Committing a pushed round: each claiming transaction records the
//! publications of the rows it deleted (time, attempt, lane, position,
//! generation), raises the lanes' recorded positions, and commits.

use std::{collections::HashMap, sync::atomic::Ordering, time::Duration};

use chrono::Utc;
use futures_util::future::join_all;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::{
    Drained, Relay, RelayError,
    claim::{Claimed, OutboxRow},
    publish::Published,
};
use crate::db::bounded;

/// The publications of one claiming transaction, one row per job, and the
/// highest position recorded per lane raised to the round's ($7, $8: one
/// part of a round does that for the whole round; in lane order, so that
/// concurrent rounds lock those rows in one order).
const INSERT_PUBLICATIONS: &str = "WITH recorded AS (INSERT INTO job_publications \
         (job_id, published_at, attempt, lane, seq, generation) \
     SELECT u.job_id, clock_timestamp(), u.attempt, u.lane, u.seq, $5 \
     FROM UNNEST($1::uuid[], $2::int[], $3::text[], $4::int8[]) AS u (job_id, attempt, lane, seq)) \
     INSERT INTO lane_positions AS m (queue, generation, lane, seq) \
     SELECT $6, $5, u.lane, u.seq FROM UNNEST($7::text[], $8::int8[]) AS u (lane, seq) \
     ORDER BY u.lane \
     ON CONFLICT (queue, generation, lane) DO UPDATE SET seq = excluded.seq \
     WHERE m.seq < excluded.seq";

/// The same where a job may already have one: the newer attempt wins.
const UPSERT_PUBLICATIONS: &str = "WITH recorded AS (INSERT INTO job_publications AS p \
         (job_id, published_at, attempt, lane, seq, generation) \
     SELECT u.job_id, clock_timestamp(), u.attempt, u.lane, u.seq, $5 \
     FROM UNNEST($1::uuid[], $2::int[], $3::text[], $4::int8[]) AS u (job_id, attempt, lane, seq) \
     ON CONFLICT (job_id) DO UPDATE SET \
         published_at = excluded.published_at, attempt = excluded.attempt, \
         lane = excluded.lane, seq = excluded.seq, generation = excluded.generation \
     WHERE excluded.attempt >= p.attempt) \
     INSERT INTO lane_positions AS m (queue, generation, lane, seq) \
     SELECT $6, $5, u.lane, u.seq FROM UNNEST($7::text[], $8::int8[]) AS u (lane, seq) \
     ORDER BY u.lane \
     ON CONFLICT (queue, generation, lane) DO UPDATE SET seq = excluded.seq \
     WHERE m.seq < excluded.seq";

/// The publications one claiming transaction records.
#[derive(Default)]
struct Records<'a> {
    job_ids: Vec<Uuid>,
    attempts: Vec<i32>,
    lanes: Vec<&'a str>,
    seqs: Vec<i64>,
    /// The round's highest position per lane, in lane order (in one part
    /// of the round only).
    highest_lanes: Vec<&'a str>,
    highest_seqs: Vec<i64>,
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(database) if database.code().as_deref() == Some("23505"))
}

impl Relay {
    /// Records where each message went (the job's publication: time,
    /// attempt, lane, position, generation) and commits, every claiming
    /// transaction at once, each recording the rows it deleted.
    pub async fn commit(
        &self,
        claimed: Claimed,
        published: Published,
    ) -> Result<Drained, RelayError> {
        let Claimed {
            parts,
            rows,
            part_of,
            started,
            recorded: _,
        } = claimed;
        // A job can have two rows in one round (a stale attempt's and the
        // new one's): record the newest attempt only, once.
        let mut latest: HashMap<Uuid, usize> = HashMap::with_capacity(rows.len());
        for (index, row) in rows.iter().enumerate() {
            let entry = latest.entry(row.job_id).or_insert(index);
            if row.attempt >= rows[*entry].attempt {
                *entry = index;
            }
        }
        let mut records: Vec<Records> = (0..parts.len()).map(|_| Records::default()).collect();
        for index in latest.into_values() {
            let (row, placement) = (&rows[index], &published.placements[index]);
            let record = &mut records[part_of[index]];
            record.job_ids.push(row.job_id);
            record.attempts.push(row.attempt);
            record.lanes.push(&row.lane);
            record.seqs.push(placement.seq);
        }
        // The round's highest position per lane, raised by its first part.
        if let Some(first) = records.first_mut() {
            let mut highest: Vec<(&str, i64)> = Vec::new();
            for (row, placement) in rows.iter().zip(&published.placements) {
                match highest.iter_mut().find(|(lane, _)| *lane == row.lane) {
                    Some((_, seq)) => *seq = (*seq).max(placement.seq),
                    None => highest.push((&row.lane, placement.seq)),
                }
            }
            highest.sort_unstable();
            first.highest_lanes = highest.iter().map(|(lane, _)| *lane).collect();
            first.highest_seqs = highest.iter().map(|(_, seq)| *seq).collect();
        }
        let commits = parts
            .into_iter()
            .zip(&records)
            .map(|(tx, record)| self.record_and_commit(tx, record, published.generation));
        let outcomes = join_all(commits).await;
        // Parts that committed are done; a failed one's rows come back and
        // their push is skipped by the markers.
        outcomes.into_iter().collect::<Result<(), _>>()?;
        let drained = Drained {
            claimed: rows.len(),
            pushed: published.pushed(),
        };
        self.record(&rows, drained, started.elapsed());
        Ok(drained)
    }

    /// Inserts the publications of one claiming transaction and commits it.
    ///
    /// A plain insert: a job has no publication row when its message is
    /// queued (queueing it again deletes the old one, see
    /// `jobs::forget_messages`), so the upsert's conflict check is work for
    /// nothing in the normal case. Should a row exist anyway (an outbox row
    /// written by hand for a job already published), the insert fails, the
    /// round rolls back, and the retry records with an upsert.
    async fn record_and_commit(
        &self,
        mut tx: Transaction<'static, Postgres>,
        records: &Records<'_>,
        generation: i64,
    ) -> Result<(), RelayError> {
        let timeout = self.settings.call_timeout;
        if !records.job_ids.is_empty() {
            let upsert = self.upsert_publications.load(Ordering::Acquire);
            let inserted = bounded(
                timeout,
                sqlx::query(if upsert {
                    UPSERT_PUBLICATIONS
                } else {
                    INSERT_PUBLICATIONS
                })
                .bind(&records.job_ids)
                .bind(&records.attempts)
                .bind(&records.lanes)
                .bind(&records.seqs)
                .bind(generation)
                .bind(self.queue.queue().as_str())
                .bind(&records.highest_lanes)
                .bind(&records.highest_seqs)
                .execute(&mut *tx),
            )
            .await;
            match inserted {
                Ok(_) if upsert => self.upsert_publications.store(false, Ordering::Release),
                Ok(_) => {}
                Err(error) => {
                    if is_unique_violation(&error) {
                        tracing::info!(
                            "a published job already had a publication; recording with an upsert on retry"
                        );
                        self.upsert_publications.store(true, Ordering::Release);
                    }
                    return Err(error.into());
                }
            }
        }
        bounded(timeout, tx.commit()).await?;
        Ok(())
    }

    fn record(&self, rows: &[OutboxRow], drained: Drained, took: Duration) {
        let claimed = drained.claimed as u64;
        self.metrics
            .relay_published(drained.pushed, claimed.saturating_sub(drained.pushed), took);
        if let Some(oldest) = rows.iter().map(|r| r.created_at).min() {
            let lag = (Utc::now() - oldest).to_std().unwrap_or_default();
            self.metrics.relay_lag(lag);
        }
        for row in rows {
            tracing::debug!(job_id = %row.job_id, outbox_id = row.id, lane = %row.lane, attempt = row.attempt, "published");
        }
    }
}

//! How many messages wait in the outbox and how old the oldest is, read
//! without walking the table: `/metrics`, GetQueueStats (and the dashboard
//! that polls it) and backpressure read this often, and the outbox is
//! largest exactly when Redis is down and every create waits in it.
//!
//! Rows are counted one by one up to a bound ([`EXACT_UP_TO`] by default);
//! beyond it the figure is PostgreSQL's live-row estimate of the table
//! (`pg_stat_user_tables.n_live_tup`, kept by every insert and delete that
//! commits, a second or so behind), never below the bound. The age of the
//! oldest message is read from the rows with the lowest ids, through the
//! primary key.

use std::time::Duration;

use sqlx::PgExecutor;

/// Outbox rows counted exactly; above this the figure is an estimate.
pub const EXACT_UP_TO: i64 = 10_000;

/// Rows with the lowest ids among which the oldest is looked for. Ids are
/// handed out in insert order and `created_at` is its transaction's start,
/// so the oldest row is among the first few; a long transaction that
/// inserted late is the exception this margin covers.
const OLDEST_AMONG: i64 = 100;

/// One reading of the outbox.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutboxSize {
    /// Rows not yet published: exact when `estimated` is false, else
    /// PostgreSQL's estimate, at least the bound counted up to plus one.
    pub rows: i64,
    /// Whether `rows` passed the bound counted up to and is an estimate.
    pub estimated: bool,
    /// Age of the oldest row; `None` when the outbox is empty.
    pub oldest_age: Option<Duration>,
}

/// Reads the outbox in one statement: rows counted up to `count_up_to`
/// (at most `count_up_to + 1` rows read), the estimate beyond, and the age
/// of the oldest row.
pub async fn outbox_size(
    executor: impl PgExecutor<'_>,
    count_up_to: i64,
) -> Result<OutboxSize, sqlx::Error> {
    let (counted, live, oldest): (i64, Option<i64>, Option<f64>) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox LIMIT $1) AS capped), \
                (SELECT n_live_tup FROM pg_stat_user_tables WHERE relid = 'outbox'::regclass), \
                extract(epoch FROM now() - (SELECT min(created_at) FROM \
                    (SELECT created_at FROM outbox ORDER BY id LIMIT $2) AS first))::float8",
    )
    .bind(count_up_to.saturating_add(1))
    .bind(OLDEST_AMONG)
    .fetch_one(executor)
    .await?;
    Ok(size_of(counted, live, oldest, count_up_to))
}

/// The reading from what the statement returned.
fn size_of(counted: i64, live: Option<i64>, oldest: Option<f64>, count_up_to: i64) -> OutboxSize {
    let estimated = counted > count_up_to;
    OutboxSize {
        rows: if estimated {
            live.unwrap_or(0).max(counted)
        } else {
            counted
        },
        estimated,
        oldest_age: oldest.map(|secs| Duration::from_secs_f64(secs.max(0.0))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_rows_are_exact_up_to_the_bound_and_the_estimate_beyond_never_below_it() {
        let exact = size_of(7, Some(1_000_000), Some(2.5), EXACT_UP_TO);
        assert_eq!((exact.rows, exact.estimated), (7, false));
        assert_eq!(exact.oldest_age, Some(Duration::from_millis(2500)));
        let at_bound = size_of(EXACT_UP_TO, Some(0), None, EXACT_UP_TO);
        assert_eq!((at_bound.rows, at_bound.estimated), (EXACT_UP_TO, false));
        let large = size_of(EXACT_UP_TO + 1, Some(1_000_000), Some(60.0), EXACT_UP_TO);
        assert_eq!((large.rows, large.estimated), (1_000_000, true));
        // Statistics just reset (a crash of PostgreSQL): never below what
        // was counted.
        let reset = size_of(EXACT_UP_TO + 1, Some(12), None, EXACT_UP_TO);
        assert_eq!((reset.rows, reset.estimated), (EXACT_UP_TO + 1, true));
        let clock_skew = size_of(1, None, Some(-0.2), EXACT_UP_TO);
        assert_eq!(clock_skew.oldest_age, Some(Duration::ZERO));
    }
}

//! `stats`: the same reading as GetQueueStats and the dashboard.

use std::io::Write;

use super::{
    CliError, Context, print_json,
    table::{Table, pairs},
};
use crate::{api::json::StatsJson, jobs::JobError, stats::read_stats};

pub async fn stats(context: &Context) -> Result<(), CliError> {
    let queue = context.redis().await?;
    let stats = read_stats(
        &context.pool,
        &queue,
        context.settings.queue_max_backlog,
        context.call_timeout(),
    )
    .await;
    queue.quit().await;
    let stats = StatsJson::from(&stats.map_err(JobError::Database)?);
    if context.json {
        return print_json(&stats);
    }
    let mut out = std::io::stdout().lock();
    let mut lanes = Table::new(&["LANE", "KEY", "LENGTH", "PUSHED"]);
    for lane in &stats.lanes {
        lanes.row(vec![
            lane.lane.to_owned(),
            lane.key.clone(),
            lane.length.to_string(),
            lane.pushed.to_string(),
        ]);
    }
    lanes.write(&mut out)?;
    writeln!(out)?;
    let limit = match stats.backlog_limit {
        0 => "no limit".to_owned(),
        limit => format!("limit {limit}"),
    };
    // Past the rows counted one by one, PostgreSQL's estimate.
    let about = |figure: i64| {
        if stats.outbox_backlog_estimated {
            format!("about {figure} (estimate)")
        } else {
            figure.to_string()
        }
    };
    let oldest = stats
        .oldest_unpublished_age_seconds
        .map_or("-".to_owned(), |secs| format!("{secs:.3}s"));
    let policy = match stats.redis_maxmemory_policy.as_str() {
        "" => "unknown (CONFIG GET refused)".to_owned(),
        "noeviction" => "noeviction".to_owned(),
        other => format!("{other} (not noeviction: Redis may drop queued messages)"),
    };
    pairs(
        &mut out,
        &[
            ("queue", stats.queue.clone()),
            ("outbox backlog", about(stats.outbox_backlog)),
            ("oldest unpublished", oldest),
            ("dead letters", stats.dead_letters.to_string()),
            (
                "waiting (backpressure)",
                format!("{} ({limit})", about(stats.backlog)),
            ),
            ("redis maxmemory-policy", policy),
        ],
    )?;
    Ok(())
}

//! `get`, `list`, `cancel`, `retry` and `redrive-dead`.

use std::io::Write;

use super::{
    CliError, Context, print_json,
    table::{Table, cut, pairs},
};
use crate::{
    api::{
        body::status_by_name,
        convert,
        json::{JobJson, JobPageJson, RedriveJson, job_json},
        proto,
    },
    db::bounded,
    jobs::{self, Job, Scope, fields::FieldError, fields::parse_uuid},
};

/// Widest error shown in a table cell.
const ERROR_WIDTH: usize = 60;

fn view(job: &Job) -> JobJson {
    job_json(&convert::job_to_proto(job))
}

fn or_dash(text: Option<&str>) -> String {
    match text {
        Some(text) if !text.is_empty() => text.to_owned(),
        _ => "-".to_owned(),
    }
}

/// A job as `key  value` lines and a table of its subtasks.
fn print_job(job: &JobJson) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    let source = if job.source_lang.is_empty() {
        "(detect)"
    } else {
        &job.source_lang
    };
    pairs(
        &mut out,
        &[
            ("id", job.id.clone()),
            ("status", job.status.to_owned()),
            ("attempt", job.attempts.to_string()),
            (
                "failed attempts",
                format!(
                    "{} of {}{}",
                    job.failed_attempts,
                    job.max_attempts,
                    if job.retryable {
                        ""
                    } else {
                        " (not retryable)"
                    }
                ),
            ),
            ("novel_id", job.novel_id.clone()),
            ("languages", format!("{source} -> {}", job.target_lang)),
            ("priority", job.priority.to_owned()),
            (
                "progress",
                format!(
                    "{} of {} subtasks completed",
                    job.completed_subtasks, job.total_subtasks
                ),
            ),
            ("target_fields", job.target_fields.join(", ")),
            ("output_dir", job.output_dir.clone()),
            ("user_id", or_dash(Some(&job.user_id))),
            ("request_id", or_dash(job.request_id.as_deref())),
            ("error", or_dash(job.error.as_deref())),
            ("created", or_dash(job.create_time.as_deref())),
            ("updated", or_dash(job.update_time.as_deref())),
            ("scheduled", or_dash(job.schedule_time.as_deref())),
            ("published", or_dash(job.publish_time.as_deref())),
        ],
    )?;
    if !job.subtasks.is_empty() {
        writeln!(out)?;
        let mut table = Table::new(&["SUBTASK", "ENTITY", "STATUS", "ATTEMPTS", "ERROR"]);
        for subtask in &job.subtasks {
            table.row(vec![
                subtask.id.clone(),
                format!("{} {}", subtask.entity_type, subtask.entity_id),
                subtask.status.to_owned(),
                subtask.attempts.to_string(),
                cut(&or_dash(subtask.error.as_deref()), ERROR_WIDTH),
            ]);
        }
        table.write(&mut out)?;
    }
    Ok(())
}

/// Jobs as one table row each.
fn print_jobs(jobs: &[JobJson], out: &mut impl Write) -> Result<(), CliError> {
    let mut table = Table::new(&[
        "ID", "STATUS", "ATTEMPT", "PRIORITY", "LANG", "PROGRESS", "CREATED", "ERROR",
    ]);
    for job in jobs {
        table.row(vec![
            job.id.clone(),
            job.status.to_owned(),
            job.attempts.to_string(),
            job.priority.to_owned(),
            job.target_lang.clone(),
            format!("{}/{}", job.completed_subtasks, job.total_subtasks),
            or_dash(job.create_time.as_deref()),
            cut(&or_dash(job.error.as_deref()), ERROR_WIDTH),
        ]);
    }
    table.write(out)?;
    Ok(())
}

fn show(context: &Context, job: &Job) -> Result<(), CliError> {
    let job = view(job);
    if context.json {
        print_json(&job)
    } else {
        print_job(&job)
    }
}

pub async fn get(context: &Context, id: &str) -> Result<(), CliError> {
    let id = parse_uuid("id", id)?;
    let job = bounded(
        context.call_timeout(),
        jobs::get_job(&context.pool, id, &Scope::All),
    )
    .await?;
    show(context, &job)
}

pub async fn list(
    context: &Context,
    status: Option<&str>,
    novel_id: Option<&str>,
    limit: u32,
) -> Result<(), CliError> {
    let status = status.unwrap_or_default();
    let request = proto::ListTranslationJobsRequest {
        page_size: i32::try_from(limit.max(1)).unwrap_or(i32::MAX),
        page_token: String::new(),
        status: status_by_name(status).ok_or_else(|| {
            FieldError::new(
                "--status",
                format!(
                    "must be pending, in_progress, completed, failed or cancelled, got {status:?}"
                ),
            )
        })?,
        novel_id: novel_id.unwrap_or_default().to_owned(),
        // The table shows each job's progress; a page is small.
        view: proto::TranslationJobView::Full.into(),
    };
    let query = convert::list_query(&request).map_err(|error| {
        FieldError::new(format!("--{}", error.field.replace('_', "-")), error.reason)
    })?;
    let page = bounded(
        context.call_timeout(),
        jobs::list_jobs(&context.pool, &query, &Scope::All),
    )
    .await?;
    let response = proto::ListTranslationJobsResponse {
        next_page_token: match (page.more, page.jobs.last()) {
            (true, Some(last)) => convert::page_token(last.id, &query),
            _ => String::new(),
        },
        jobs: page.jobs.iter().map(convert::job_to_proto).collect(),
    };
    let page_json = JobPageJson::from(&response);
    if context.json {
        return print_json(&page_json);
    }
    let mut out = std::io::stdout().lock();
    if page_json.jobs.is_empty() {
        writeln!(out, "no jobs")?;
        return Ok(());
    }
    print_jobs(&page_json.jobs, &mut out)?;
    if page.more {
        writeln!(out, "(more jobs follow: raise --limit or filter)")?;
    }
    Ok(())
}

pub async fn cancel(context: &Context, id: &str) -> Result<(), CliError> {
    let id = parse_uuid("id", id)?;
    let job = bounded(
        context.call_timeout(),
        jobs::cancel_job(&context.pool, id, &Scope::All),
    )
    .await?;
    show(context, &job)
}

pub async fn retry(context: &Context, id: &str) -> Result<(), CliError> {
    let id = parse_uuid("id", id)?;
    let job = bounded(
        context.call_timeout(),
        jobs::retry_job(&context.pool, id, &Scope::All),
    )
    .await?;
    show(context, &job)
}

pub async fn redrive(context: &Context, limit: usize) -> Result<(), CliError> {
    let queue = context.redis().await?;
    let redriven =
        jobs::redrive_dead_letters(&context.pool, &queue, limit.max(1), context.call_timeout())
            .await;
    queue.quit().await;
    let redriven = RedriveJson::from(&redriven?);
    if context.json {
        return print_json(&redriven);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "redriven {} jobs (queued again as a new attempt); {} stale and {} unreadable dead letters; {} dead letters left",
        redriven.jobs.len(),
        redriven.stale_count,
        redriven.unreadable_count,
        redriven.dead_letters_remaining
    )?;
    if !redriven.jobs.is_empty() {
        writeln!(out)?;
        print_jobs(&redriven.jobs, &mut out)?;
    }
    Ok(())
}

//! What `jobq` prints: JSON documents (`snake_case` keys, RFC 3339 times, lower-case
//! statuses) and their human-readable forms.

use std::fmt::Write;
use std::time::SystemTime;

use jobq_client::{EventKind, Job, JobEvent, JobStatus, Quota, QuotaWindow};
use serde_json::{Value, json};

/// A status as the command line and the database name it: `queued`, `completed`, ...
fn status_name(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Unspecified => "unspecified",
        JobStatus::Queued => "queued",
        JobStatus::Processing => "processing",
        JobStatus::Completed => "completed",
        JobStatus::Failed => "failed",
        JobStatus::Cancelled => "cancelled",
    }
}

fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Snapshot => "snapshot",
        EventKind::Created => "created",
        EventKind::Updated => "updated",
    }
}

/// RFC 3339 in UTC, to the nanosecond the server keeps (for JSON).
fn time(at: SystemTime) -> String {
    prost_types::Timestamp::from(at).to_string()
}

/// RFC 3339 in UTC, to the second (for people).
fn short_time(at: SystemTime) -> String {
    let mut timestamp = prost_types::Timestamp::from(at);
    timestamp.nanos = 0;
    timestamp.to_string()
}

pub fn yes_no(flag: bool) -> String {
    if flag { "yes" } else { "no" }.to_owned()
}

/// The confidence as the shortest decimal that reads back as the same `f32`
/// (0.9, not the 0.8999999761581421 a plain widening to f64 gives).
fn confidence(value: f32) -> Value {
    value
        .to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

pub fn job_json(job: &Job) -> Value {
    json!({
        "id": job.id.to_string(),
        "user_id": job.user_id.to_string(),
        "status": status_name(job.status),
        "image_url": job.image_url,
        "image_sha256": job.image_sha256,
        "schema_version": job.schema_version,
        "prompt_version": job.prompt_version,
        "result": job.result,
        "error_message": job.error_message,
        "retry_count": job.retry_count,
        "retry_of_job_id": job.retry_of_job_id.map(|id| id.to_string()),
        "attempt": job.attempt,
        "token_usage": job.token_usage.as_ref().map(|usage| json!({
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "model": usage.model,
            "cost_usd": usage.cost_usd,
            "extras": usage.extras,
        })),
        "confidence": job.confidence.map_or(Value::Null, confidence),
        "uncertain_items": job.uncertain_items,
        "superfluous_text": job.superfluous_text,
        "processing_time_seconds": job.processing_time.map(|d| d.as_secs_f64()),
        "created_at": time(job.created_at),
        "updated_at": time(job.updated_at),
        "started_at": job.started_at.map(time),
        "completed_at": job.completed_at.map(time),
        "version": job.version,
        "cancel_requested": job.cancel_requested,
    })
}

/// One job as `key: value` rows: what is set, in reading order.
pub fn job_rows(job: &Job) -> Vec<(&'static str, String)> {
    let mut rows = vec![
        ("id", job.id.to_string()),
        ("user_id", job.user_id.to_string()),
        ("status", status_name(job.status).to_owned()),
        ("image_url", job.image_url.clone()),
        ("image_sha256", job.image_sha256.clone()),
        ("schema_version", job.schema_version.clone()),
        ("prompt_version", job.prompt_version.clone()),
        ("created_at", short_time(job.created_at)),
        ("updated_at", short_time(job.updated_at)),
    ];
    let optional = [
        ("started_at", job.started_at.map(short_time)),
        ("completed_at", job.completed_at.map(short_time)),
        ("attempt", Some(job.attempt.to_string())),
        ("retry_count", Some(job.retry_count.to_string())),
        (
            "retry_of_job_id",
            job.retry_of_job_id.map(|id| id.to_string()),
        ),
        (
            "cancel_requested",
            job.cancel_requested.then(|| "yes".to_owned()),
        ),
        ("error_message", job.error_message.clone()),
        (
            "processing_time",
            job.processing_time
                .map(|d| format!("{:.3}s", d.as_secs_f64())),
        ),
        ("confidence", job.confidence.map(|c| c.to_string())),
        (
            "token_usage",
            job.token_usage.as_ref().map(|usage| {
                format!(
                    "{} in, {} out, {}, ${}",
                    usage.input_tokens, usage.output_tokens, usage.model, usage.cost_usd
                )
            }),
        ),
        (
            "uncertain_items",
            (!job.uncertain_items.is_empty())
                .then(|| Value::from(job.uncertain_items.clone()).to_string()),
        ),
        (
            "superfluous_text",
            (!job.superfluous_text.is_empty())
                .then(|| Value::from(job.superfluous_text.clone()).to_string()),
        ),
        ("result", job.result.as_ref().map(Value::to_string)),
    ];
    rows.extend(
        optional
            .into_iter()
            .filter_map(|(key, value)| Some((key, value?))),
    );
    rows
}

/// `key: value` lines, the values aligned.
pub fn key_values(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(key, _)| key.len() + 1).max().unwrap_or(0);
    rows.iter().fold(String::new(), |mut text, (key, value)| {
        // Writing to a String cannot fail.
        let _ = writeln!(text, "{:<width$} {value}", format!("{key}:"));
        text
    })
}

/// Columns padded to their widest cell; the last one is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|cell| (*cell).to_owned()).collect();
    std::iter::once(&header)
        .chain(rows)
        .fold(String::new(), |mut text, row| {
            let last = row.len().saturating_sub(1);
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if i == last {
                    text.push_str(cell);
                } else {
                    let _ = write!(text, "{cell:<width$}  ");
                }
            }
            text.push('\n');
            text
        })
}

pub fn job_table(jobs: &[Job], next_page_token: Option<&str>) -> String {
    let mut text = if jobs.is_empty() {
        "no jobs\n".to_owned()
    } else {
        let rows: Vec<Vec<String>> = jobs
            .iter()
            .map(|job| {
                vec![
                    job.id.to_string(),
                    status_name(job.status).to_owned(),
                    short_time(job.created_at),
                    job.retry_count.to_string(),
                    job.image_url.clone(),
                ]
            })
            .collect();
        table(&["ID", "STATUS", "CREATED", "RETRIES", "IMAGE URL"], &rows)
    };
    if let Some(token) = next_page_token {
        let _ = writeln!(text, "more: --page-token {token} (or --all)");
    }
    text
}

fn window_json(window: &QuotaWindow) -> Value {
    json!({
        "used": window.used,
        "limit": window.limit,
        "resets_at": window.resets_at.map(time),
    })
}

pub fn quota_json(quota: &Quota) -> Value {
    json!({
        "plan": quota.plan,
        "allowed": quota.allowed,
        "reason": quota.reason,
        "monthly": window_json(&quota.monthly),
        "hourly": window_json(&quota.hourly),
    })
}

fn window_text(window: &QuotaWindow) -> String {
    let mut text = match window.limit {
        Some(limit) => format!("{} of {limit} used", window.used),
        None => format!("{} used (unlimited)", window.used),
    };
    if let Some(at) = window.resets_at {
        let _ = write!(text, ", resets {}", short_time(at));
    }
    text
}

pub fn quota_text(quota: &Quota) -> String {
    let allowed = match (quota.allowed, &quota.reason) {
        (true, _) => "yes".to_owned(),
        (false, Some(reason)) => format!("no ({reason})"),
        (false, None) => "no".to_owned(),
    };
    key_values(&[
        ("plan", quota.plan.clone()),
        ("allowed", allowed),
        ("monthly", window_text(&quota.monthly)),
        ("hourly", window_text(&quota.hourly)),
    ])
}

pub fn event_json(event: &JobEvent) -> Value {
    json!({
        "kind": kind_name(event.kind),
        "resume_token": event.resume_token,
        "job": job_json(&event.job),
    })
}

/// One event in one line: the job's last change, kind, id, status.
pub fn event_line(event: &JobEvent) -> String {
    let job = &event.job;
    let mut status = status_name(job.status).to_owned();
    if job.cancel_requested && job.status == JobStatus::Processing {
        status.push_str(" (cancel requested)");
    }
    format!(
        "{}  {:<8}  {}  {status}\n",
        short_time(job.updated_at),
        kind_name(event.kind),
        job.id
    )
}

/// A JSON document, pretty-printed, with a final newline.
pub fn document(value: &Value) -> String {
    format!("{value:#}\n")
}

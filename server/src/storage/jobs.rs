//! Statements on `menu_extraction_jobs`.

use sqlx::{PgConnection, Postgres, Transaction};

use super::{Storage, StorageError};
use crate::job::{Job, JobId, ListQuery, NewJob, Submitted, UserId};

/// The columns of [`Job`], in one place for every statement that returns jobs.
macro_rules! job_columns {
    () => {
        "id, user_id, image_url, image_hash, status, schema_version, prompt_version, \
         result, error_message, processing_time, retry_count, retry_of_job_id, attempt, \
         token_usage, confidence, uncertain_items, superfluous_text, created_at, \
         updated_at, started_at, completed_at, version, cancel_requested"
    };
}

impl Storage {
    /// Submits a job: returns the live job that matches it (unless `force`), or
    /// inserts a new one, in one transaction.
    ///
    /// Concurrent identical submissions cannot create two jobs: the unique partial
    /// index `menu_extraction_jobs_live_submission` arbitrates the insert, and the
    /// loser of the race reads the winner's job.
    pub async fn submit_job(&self, new: &NewJob) -> Result<Submitted, StorageError> {
        let mut tx = self.pool.begin().await?;
        let submitted = submit_in(&mut tx, new).await?;
        tx.commit().await?;
        Ok(submitted)
    }

    /// The job `id` if `user_id` owns it.
    pub async fn get_job(&self, id: JobId, user_id: UserId) -> Result<Option<Job>, StorageError> {
        let job = sqlx::query_as::<_, Job>(concat!(
            "SELECT ",
            job_columns!(),
            " FROM menu_extraction_jobs WHERE id = $1 AND user_id = $2"
        ))
        .bind(id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(job)
    }

    /// A page of a user's jobs, newest first (by `created_at`, then `id`), and
    /// whether more follow.
    pub async fn list_jobs(&self, query: &ListQuery) -> Result<(Vec<Job>, bool), StorageError> {
        let status = query.status.map(|s| s.as_str());
        let limit = i64::from(query.page_size) + 1;
        // Two statements rather than one with `$n IS NULL OR ...`, so that the
        // keyset condition is always an index condition on
        // menu_extraction_jobs_user_created (a generic plan could not use it).
        let mut jobs = match query.after {
            None => {
                sqlx::query_as::<_, Job>(concat!(
                    "SELECT ",
                    job_columns!(),
                    " FROM menu_extraction_jobs
                     WHERE user_id = $1 AND ($2::text IS NULL OR status = $2)
                     ORDER BY created_at DESC, id DESC
                     LIMIT $3"
                ))
                .bind(query.user_id)
                .bind(status)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            Some(after) => {
                sqlx::query_as::<_, Job>(concat!(
                    "SELECT ",
                    job_columns!(),
                    " FROM menu_extraction_jobs
                     WHERE user_id = $1 AND ($2::text IS NULL OR status = $2)
                       AND (created_at, id) < ($3, $4)
                     ORDER BY created_at DESC, id DESC
                     LIMIT $5"
                ))
                .bind(query.user_id)
                .bind(status)
                .bind(after.created_at)
                .bind(after.id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        let more = jobs.len() > query.page_size as usize;
        jobs.truncate(query.page_size as usize);
        Ok((jobs, more))
    }
}

async fn submit_in(
    tx: &mut Transaction<'static, Postgres>,
    new: &NewJob,
) -> Result<Submitted, StorageError> {
    // Seam for per-user limits: lock the user's usage row here, so that everything
    // below runs one submission per user at a time across all servers.
    if !new.force
        && let Some(job) = find_live_match(tx, new).await?
    {
        return Ok(Submitted {
            job,
            deduplicated: true,
        });
    }
    // Seam for per-user limits: check the rolling hour and the month here; a
    // refusal returns before the insert and the transaction rolls back.
    if let Some(job) = insert(tx, new).await? {
        return Ok(Submitted {
            job,
            deduplicated: false,
        });
    }
    // The insert lost to a concurrent identical submission that committed first
    // (ON CONFLICT waited for it). This statement's fresh snapshot sees its job.
    match find_live_match(tx, new).await? {
        Some(job) => Ok(Submitted {
            job,
            deduplicated: true,
        }),
        // The winner's job stopped being live in between (cancelled or failed at
        // once); a caller's retry will insert.
        None => Err(StorageError::SerializationFailure(sqlx::Error::Protocol(
            "a concurrent identical submission changed while this one was deduplicated against it"
                .into(),
        ))),
    }
}

/// The newest live job of the same user and submission, exempt ones included.
async fn find_live_match(
    conn: &mut PgConnection,
    new: &NewJob,
) -> Result<Option<Job>, StorageError> {
    let job = sqlx::query_as::<_, Job>(concat!(
        "SELECT ",
        job_columns!(),
        " FROM menu_extraction_jobs
         WHERE user_id = $1 AND image_hash = $2 AND schema_version = $3 AND prompt_version = $4
           AND status IN ('queued', 'processing', 'completed')
         ORDER BY created_at DESC, id DESC
         LIMIT 1"
    ))
    .bind(new.user_id)
    .bind(&new.image_sha256)
    .bind(&new.schema_version)
    .bind(&new.prompt_version)
    .fetch_optional(conn)
    .await?;
    Ok(job)
}

/// Inserts the job, or returns `None` when a live identical job (not exempt) got
/// there first.
async fn insert(conn: &mut PgConnection, new: &NewJob) -> Result<Option<Job>, StorageError> {
    let job = sqlx::query_as::<_, Job>(concat!(
        "INSERT INTO menu_extraction_jobs
             (id, user_id, image_url, image_hash, schema_version, prompt_version, status, dedup_exempt)
         VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7)
         ON CONFLICT (user_id, image_hash, schema_version, prompt_version)
             WHERE status IN ('queued', 'processing', 'completed') AND NOT dedup_exempt
             DO NOTHING
         RETURNING ",
        job_columns!()
    ))
    .bind(JobId::generate())
    .bind(new.user_id)
    .bind(&new.image_url)
    .bind(&new.image_sha256)
    .bind(&new.schema_version)
    .bind(&new.prompt_version)
    .bind(new.force)
    .fetch_optional(conn)
    .await?;
    Ok(job)
}

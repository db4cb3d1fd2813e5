//! Statements on `menu_extraction_jobs`.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::{Storage, StorageError, usage};
use crate::job::{Job, JobId, JobStatus, ListQuery, NewJob, UserId};
use crate::plans::Plans;
use crate::quota::QuotaStatus;

/// What a submission came to.
#[derive(Debug, Clone)]
pub enum SubmitOutcome {
    /// A new job.
    Created(Job),
    /// The live job that already matched; nothing was counted.
    Deduplicated(Job),
    /// A limit refused it (`refusal` is set); nothing was written.
    Refused(QuotaStatus),
    /// The user's earlier submission with the same `request_id` asked for
    /// something else; nothing was written.
    RequestIdReused,
}

/// What a cancellation came to.
#[derive(Debug, Clone)]
pub enum CancelOutcome {
    /// Cancelled, or marked cancel-requested while processing.
    Done(Box<Job>),
    /// No such job of this user.
    NotFound,
    /// The job had already finished; its stored status.
    Finished(String),
}

/// What a retry came to.
#[derive(Debug, Clone)]
pub enum RetryOutcome {
    /// A new queued job.
    Created(Job),
    /// The retry made earlier for the same failed job.
    Existing(Job),
    /// No such job of this user.
    NotFound,
    /// The job is not failed; its stored status.
    InvalidStatus(String),
    /// The failed job is itself the last allowed retry.
    MaxRetriesExceeded {
        /// Its retry count.
        retry_count: i32,
    },
}

impl Storage {
    /// Submits a job in one transaction, under the user's submission lock: returns
    /// the live job that matches it (unless `force`; that costs nothing), or checks
    /// the rolling hour and then the month against the user's plan and inserts a new
    /// job, or refuses and writes nothing.
    ///
    /// Concurrent identical submissions cannot create two jobs even without the
    /// lock (a legacy writer, say): the unique partial index
    /// `menu_extraction_jobs_live_submission` arbitrates the insert, and the loser
    /// of the race reads the winner's job.
    pub async fn submit_job(
        &self,
        new: &NewJob,
        plans: &Plans,
    ) -> Result<SubmitOutcome, StorageError> {
        let mut tx = self.pool.begin().await?;
        let now = usage::lock_user(&mut tx, new.user_id).await?;
        if let Some(request_id) = new.request_id
            && let Some(job) = find_by_request_id(&mut tx, new, request_id).await?
        {
            tx.commit().await?;
            let same = job.image_url == new.image_url
                && job.image_sha256.as_deref() == Some(new.image_sha256.as_str())
                && job.schema_version == new.schema_version
                && job.prompt_version == new.prompt_version;
            return Ok(if same {
                SubmitOutcome::Deduplicated(job)
            } else {
                SubmitOutcome::RequestIdReused
            });
        }
        if !new.force
            && let Some(job) = find_live_match(&mut tx, new).await?
        {
            tx.commit().await?;
            return Ok(SubmitOutcome::Deduplicated(job));
        }
        let status = usage::evaluate(&mut tx, new.user_id, plans, now).await?;
        if status.refusal.is_some() {
            tx.rollback().await?;
            return Ok(SubmitOutcome::Refused(status));
        }
        let outcome = match insert(&mut tx, new, now).await? {
            Some(job) => SubmitOutcome::Created(job),
            // The insert lost to an identical job committed meanwhile by a writer
            // that does not take the lock (ON CONFLICT waited for it); this
            // statement's fresh snapshot sees it.
            None => match find_live_match(&mut tx, new).await? {
                Some(job) => SubmitOutcome::Deduplicated(job),
                None => {
                    return Err(StorageError::SerializationFailure(sqlx::Error::Protocol(
                        "an identical job changed while this submission was deduplicated against it".into(),
                    )));
                }
            },
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Retries the failed job `id` of `user_id` (see [`RetryOutcome`]). Retries
    /// are not counted against any limit.
    pub async fn retry_job(
        &self,
        id: JobId,
        user_id: UserId,
        max_retries: i32,
    ) -> Result<RetryOutcome, StorageError> {
        let mut tx = self.pool.begin().await?;
        // Locking the failed job serialises concurrent retries of it.
        let failed = sqlx::query_as::<_, Job>(concat!(
            "SELECT ",
            job_columns!(),
            " FROM menu_extraction_jobs WHERE id = $1 AND user_id = $2 FOR UPDATE"
        ))
        .bind(id)
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(failed) = failed else {
            return Ok(RetryOutcome::NotFound);
        };
        if JobStatus::parse(&failed.status) != Some(JobStatus::Failed) {
            return Ok(RetryOutcome::InvalidStatus(failed.status));
        }
        let existing = sqlx::query_as::<_, Job>(concat!(
            "SELECT ",
            job_columns!(),
            " FROM menu_extraction_jobs WHERE retry_of_job_id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(retry) = existing {
            tx.commit().await?;
            return Ok(RetryOutcome::Existing(retry));
        }
        if failed.retry_count >= max_retries {
            return Ok(RetryOutcome::MaxRetriesExceeded {
                retry_count: failed.retry_count,
            });
        }
        // A retry is exempt from deduplication: it must exist even when the user
        // has since submitted the same photo again (later submissions still find it).
        let retry = sqlx::query_as::<_, Job>(concat!(
            "INSERT INTO menu_extraction_jobs
                 (id, user_id, image_url, image_hash, schema_version, prompt_version, status,
                  retry_count, retry_of_job_id, dedup_exempt)
             SELECT $1, user_id, image_url, image_hash, schema_version, prompt_version, 'queued',
                    retry_count + 1, id, true
             FROM menu_extraction_jobs WHERE id = $2
             RETURNING ",
            job_columns!()
        ))
        .bind(JobId::generate())
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(RetryOutcome::Created(retry))
    }

    /// Cancels `user_id`'s job `id`: a QUEUED job becomes CANCELLED at once; a
    /// PROCESSING one is marked cancel-requested (its worker learns it from
    /// Heartbeat, and its CompleteJob or FailJob settles it as CANCELLED). Asking
    /// again while it is processing changes nothing.
    pub async fn cancel_job(
        &self,
        id: JobId,
        user_id: UserId,
    ) -> Result<CancelOutcome, StorageError> {
        let job = sqlx::query_as::<_, Job>(concat!(
            "UPDATE menu_extraction_jobs
             SET status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,
                 completed_at = CASE WHEN status = 'queued' THEN now() ELSE completed_at END,
                 cancel_requested = (status = 'processing')
             WHERE id = $1 AND user_id = $2 AND status IN ('queued', 'processing')
             RETURNING ",
            job_columns!()
        ))
        .bind(id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(job) = job {
            return Ok(CancelOutcome::Done(Box::new(job)));
        }
        Ok(match self.get_job(id, user_id).await? {
            Some(job) => CancelOutcome::Finished(job.status),
            None => CancelOutcome::NotFound,
        })
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

/// The job `new.user_id` submitted earlier with `request_id`. The user's lock,
/// held by the caller, keeps a concurrent submission with the same key from
/// inserting between this read and the caller's insert.
async fn find_by_request_id(
    conn: &mut PgConnection,
    new: &NewJob,
    request_id: uuid::Uuid,
) -> Result<Option<Job>, StorageError> {
    let job = sqlx::query_as::<_, Job>(concat!(
        "SELECT ",
        job_columns!(),
        " FROM menu_extraction_jobs WHERE user_id = $1 AND submit_request_id = $2"
    ))
    .bind(new.user_id)
    .bind(request_id)
    .fetch_optional(conn)
    .await?;
    Ok(job)
}

/// Inserts the job, created at `now`, or returns `None` when a live identical job
/// (not exempt) got there first.
async fn insert(
    conn: &mut PgConnection,
    new: &NewJob,
    now: DateTime<Utc>,
) -> Result<Option<Job>, StorageError> {
    let job = sqlx::query_as::<_, Job>(concat!(
        "INSERT INTO menu_extraction_jobs
             (id, user_id, image_url, image_hash, schema_version, prompt_version, status, dedup_exempt,
              created_at, updated_at, submit_request_id)
         VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $8, $9)
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
    .bind(now)
    .bind(new.request_id)
    .fetch_optional(conn)
    .await?;
    Ok(job)
}

//! Statements on `menu_extraction_jobs`.

use super::{Storage, StorageError};
use crate::job::{Job, JobId, JobStatus, ListQuery, UserId};

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
        // That index orders by the id's bytes, `uuid_send(id)`, which is the
        // id's own order (migration 0014 says why it does not hold the id).
        let mut jobs = match query.after {
            None => {
                sqlx::query_as::<_, Job>(concat!(
                    "SELECT ",
                    job_columns!(),
                    " FROM menu_extraction_jobs
                     WHERE user_id = $1 AND ($2::text IS NULL OR status = $2)
                     ORDER BY created_at DESC, uuid_send(id) DESC
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
                       AND (created_at, uuid_send(id)) < ($3, uuid_send($4))
                     ORDER BY created_at DESC, uuid_send(id) DESC
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

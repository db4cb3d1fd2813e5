//! Reads for WatchJobs and the change feed: a job set and the snapshot it was read
//! at, in one REPEATABLE READ transaction so the two agree.

use sqlx::{PgConnection, Postgres, Transaction};

use super::{Storage, StorageError};
use crate::job::{Job, JobId, UserId};
use crate::resume::{Position, Snapshot};

/// A job and the transaction that last changed it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChangedJob {
    /// The job as committed.
    #[sqlx(flatten)]
    pub job: Job,
    /// The transaction that last changed it (0 for a legacy row never changed).
    pub changed_xid: i64,
}

impl ChangedJob {
    /// `changed_xid` as Postgres's unsigned xid8.
    pub fn xid(&self) -> u64 {
        u64::try_from(self.changed_xid).unwrap_or_default()
    }
}

/// Which jobs a stream watches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchFilter {
    /// One user's jobs, or every user's.
    pub user_id: Option<UserId>,
    /// Only these jobs (empty: no restriction).
    pub job_ids: Vec<JobId>,
}

impl WatchFilter {
    /// Whether the job `id` of `user_id` is one the stream watches (the same
    /// test the catch-up query makes in SQL).
    pub fn matches(&self, id: JobId, user_id: Option<UserId>) -> bool {
        self.user_id.is_none_or(|user| user_id == Some(user))
            && (self.job_ids.is_empty() || self.job_ids.contains(&id))
    }
}

macro_rules! changed_columns {
    () => {
        concat!(
            job_columns!(),
            ", COALESCE(changed_xid::text::bigint, 0) AS changed_xid"
        )
    };
}

async fn read_snapshot(conn: &mut PgConnection) -> Result<Snapshot, StorageError> {
    let text: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
        .fetch_one(conn)
        .await?;
    Snapshot::parse(&text).ok_or_else(|| {
        StorageError::Other(sqlx::Error::Protocol(format!(
            "unreadable snapshot `{text}`"
        )))
    })
}

async fn repeatable_read(
    storage: &Storage,
) -> Result<Transaction<'static, Postgres>, StorageError> {
    let mut tx = storage.pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

impl Storage {
    /// The snapshot of now.
    pub async fn current_snapshot(&self) -> Result<Snapshot, StorageError> {
        let mut conn = self.pool.acquire().await?;
        read_snapshot(&mut conn).await
    }

    /// Every job changed after `from` (not visible in it), by version, and the
    /// snapshot they were read at.
    pub async fn changes_since(
        &self,
        from: &Position,
        filter: &WatchFilter,
    ) -> Result<(Vec<ChangedJob>, Snapshot), StorageError> {
        let mut tx = repeatable_read(self).await?;
        let now = read_snapshot(&mut tx).await?;
        let (within_version, within_to) = match &from.within {
            Some((version, to)) => (
                Some(i64::try_from(*version).unwrap_or(i64::MAX)),
                Some(to.to_string()),
            ),
            None => (None, None),
        };
        let ids: Vec<uuid::Uuid> = filter.job_ids.iter().map(|id| id.0).collect();
        let jobs = sqlx::query_as::<_, ChangedJob>(concat!(
            "SELECT ",
            changed_columns!(),
            " FROM menu_extraction_jobs
             WHERE changed_xid >= pg_snapshot_xmin($1::text::pg_snapshot)
               AND NOT pg_visible_in_snapshot(changed_xid, $1::text::pg_snapshot)
               AND ($2::text IS NULL
                    OR NOT pg_visible_in_snapshot(changed_xid, $2::text::pg_snapshot)
                    OR version > $3)
               AND ($4::uuid IS NULL OR user_id = $4)
               AND (cardinality($5::uuid[]) = 0 OR id = ANY($5))
             ORDER BY version"
        ))
        .bind(from.base.to_string())
        .bind(within_to)
        .bind(within_version)
        .bind(filter.user_id)
        .bind(ids)
        .fetch_all(&mut *tx)
        .await?;
        tx.rollback().await?;
        Ok((jobs, now))
    }

    /// The jobs a new stream starts with: the named jobs (finished or not), or the
    /// unfinished jobs of the user (or of everyone), by version, and the snapshot
    /// they were read at.
    pub async fn watch_snapshot(
        &self,
        filter: &WatchFilter,
    ) -> Result<(Vec<ChangedJob>, Snapshot), StorageError> {
        let mut tx = repeatable_read(self).await?;
        let now = read_snapshot(&mut tx).await?;
        let ids: Vec<uuid::Uuid> = filter.job_ids.iter().map(|id| id.0).collect();
        let jobs = sqlx::query_as::<_, ChangedJob>(concat!(
            "SELECT ",
            changed_columns!(),
            " FROM menu_extraction_jobs
             WHERE ($1::uuid IS NULL OR user_id = $1)
               AND CASE WHEN cardinality($2::uuid[]) = 0 THEN status IN ('queued', 'processing')
                        ELSE id = ANY($2) END
             ORDER BY version"
        ))
        .bind(filter.user_id)
        .bind(ids)
        .fetch_all(&mut *tx)
        .await?;
        tx.rollback().await?;
        Ok((jobs, now))
    }
}

//! Plans of users, and the usage counts behind every limit decision.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::{Storage, StorageError};
use crate::job::UserId;
use crate::plans::{Limit, Plans};
use crate::quota::{self, QuotaStatus, Usage};

impl Storage {
    /// Puts `user_id` on `plan` (the caller checked that the plan exists).
    pub async fn set_user_plan(&self, user_id: UserId, plan: &str) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO user_plans (user_id, plan) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE SET plan = EXCLUDED.plan, updated_at = now()",
        )
        .bind(user_id)
        .bind(plan)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The plan stored for `user_id`, if any.
    pub async fn stored_plan(&self, user_id: UserId) -> Result<Option<String>, StorageError> {
        let mut conn = self.pool.acquire().await?;
        stored_plan(&mut conn, user_id).await
    }

    /// What SubmitJob would decide for `user_id` now. It takes the same per-user
    /// lock as a submission, so it never sees one half done.
    pub async fn quota_status(
        &self,
        user_id: UserId,
        plans: &Plans,
    ) -> Result<QuotaStatus, StorageError> {
        let mut tx = self.pool.begin().await?;
        let now = lock_user(&mut tx, user_id).await?;
        let status = evaluate(&mut tx, user_id, plans, now).await?;
        tx.rollback().await?;
        Ok(status)
    }
}

/// Takes the user's submission lock for the rest of the transaction and returns
/// the instant it was granted: the instant every limit is judged at, and the
/// `created_at` of a job inserted under it.
///
/// The lock is a transaction-scoped advisory lock keyed by the user id: it holds
/// across every server process on the database, writes nothing (no row to create,
/// update or vacuum per submission), and is released by commit or rollback. Two
/// users whose ids share a key only wait for each other; they never share limits.
pub(crate) async fn lock_user(
    conn: &mut PgConnection,
    user_id: UserId,
) -> Result<DateTime<Utc>, StorageError> {
    let now = sqlx::query_scalar(
        "SELECT clock_timestamp() FROM (SELECT pg_advisory_xact_lock($1)) AS locked",
    )
    .bind(lock_key(user_id))
    .fetch_one(conn)
    .await?;
    Ok(now)
}

/// A 64-bit advisory lock key for a user: the two halves of the UUID folded.
fn lock_key(user_id: UserId) -> i64 {
    let (high, low) = user_id.0.as_u64_pair();
    i64::from_ne_bytes((high ^ low).to_ne_bytes())
}

async fn stored_plan(
    conn: &mut PgConnection,
    user_id: UserId,
) -> Result<Option<String>, StorageError> {
    let plan = sqlx::query_scalar("SELECT plan FROM user_plans WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(conn)
        .await?;
    Ok(plan)
}

/// The user's plan and usage at `now`, and the decision on one more new job.
pub(crate) async fn evaluate(
    conn: &mut PgConnection,
    user_id: UserId,
    plans: &Plans,
    now: DateTime<Utc>,
) -> Result<QuotaStatus, StorageError> {
    let stored = stored_plan(conn, user_id).await?;
    let plan = plans.effective(stored.as_deref());
    let (month_start, _) = quota::month_bounds(now);
    let hour_start = now - quota::hour();
    // For a full hour, the job whose leaving frees a slot is the (used - limit + 1)-th
    // oldest; otherwise (and for an unlimited hour) the oldest.
    let hourly_limit = match plan.hourly_jobs {
        Limit::Unlimited => None,
        Limit::AtMost(n) => Some(i64::from(n)),
    };
    let (monthly_used, hourly_used, leaving): (i64, i64, Option<DateTime<Utc>>) = sqlx::query_as(
        "WITH counted AS (
             SELECT count(*) FILTER (WHERE created_at >= $2) AS monthly_used,
                    count(*) FILTER (WHERE created_at > $3) AS hourly_used,
                    array_agg(created_at ORDER BY created_at) FILTER (WHERE created_at > $3) AS hourly
             FROM menu_extraction_jobs
             WHERE user_id = $1 AND retry_count = 0 AND created_at >= LEAST($2, $3)
         )
         SELECT monthly_used, hourly_used,
                hourly[CASE WHEN $4::bigint IS NULL THEN 1 ELSE GREATEST(hourly_used - $4::bigint, 0) + 1 END]
         FROM counted",
    )
    .bind(user_id)
    .bind(month_start)
    .bind(hour_start)
    .bind(hourly_limit)
    .fetch_one(conn)
    .await?;
    let usage = Usage {
        now,
        monthly_used,
        hourly_used,
        hourly_slot_at: leaving.map(|at| at + quota::hour()),
    };
    Ok(quota::decide(plan, usage))
}

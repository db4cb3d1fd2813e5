//! Plans of users, and the usage counts behind every limit decision.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres, Row, Transaction};

use super::{Storage, StorageError};
use crate::job::UserId;
use crate::plans::{Limit, Plan, Plans};
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
        let plan = sqlx::query_scalar("SELECT plan FROM user_plans WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(plan)
    }

    /// What SubmitJob would decide for `user_id` now. It takes the same per-user
    /// lock as a submission, so it never sees one half done.
    pub async fn quota_status(
        &self,
        user_id: UserId,
        plans: &Plans,
    ) -> Result<QuotaStatus, StorageError> {
        let mut tx = begin_locked(&self.pool, &[user_id]).await?;
        let head = sqlx::query(concat!("WITH ", submission_head!(), " SELECT * FROM head"))
            .bind(vec![user_id.0])
            .fetch_one(&mut *tx)
            .await?;
        let (now, stored) = read_head(&head)?;
        let request = UsageRequest {
            user_id,
            plan: plans.effective(stored.get(&user_id).map(String::as_str)),
            submissions: 1,
            report: true,
        };
        let mut standing = usage(&mut tx, std::slice::from_ref(&request), now).await?;
        tx.rollback().await?;
        let standing = standing
            .remove(&user_id)
            .ok_or_else(|| StorageError::Other(sqlx::Error::RowNotFound))?;
        Ok(standing.decide())
    }
}

/// How a submission transaction's statements are planned: once per pooled
/// connection (a generic plan), where every other statement is planned at each
/// execution (see `Storage::open`). Planning the lookup cost more than running
/// it (issue 8's submit profile: 1.1 ms against 0.6 ms a batch under load). A
/// generic plan is made from the statistics of its time and kept until the
/// next ANALYZE, so these statements are written and planned not to depend on
/// them: with sequential scans off, each finds its rows by index, and the
/// lookup's per-submission subqueries stay lookups (see
/// [`super::submit::LOOKUP`]), even when the plan was made on an empty table.
#[doc(hidden)]
pub const SUBMISSION_PLANNING: &str =
    "SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off";

/// Begins a transaction holding the submission locks of `users` in one round
/// trip: the keys are integers formatted here, so they travel in the `BEGIN`
/// query's text rather than as the parameters of a statement of their own.
/// Read the clock and plans afterwards with [`submission_head!`] (the instant
/// every limit is judged at, and the `created_at` of the jobs inserted under
/// the locks), and see [`SUBMISSION_PLANNING`] for how the transaction's
/// statements are planned.
///
/// A lock is a transaction-scoped advisory lock keyed by the user id: it holds
/// across every server process on the database, writes nothing (no row to
/// create, update or vacuum per submission), and is released by commit or
/// rollback. Locks are taken in key order, so two transactions locking several
/// users never wait for each other in a cycle. Two users whose ids share a key
/// only wait for each other; they never share limits.
///
/// The transaction is begun on a task of its own: sqlx counts a transaction
/// as begun only once `BEGIN` has answered, so a caller dropped while the locks
/// are awaited would otherwise hand its connection back to the pool inside a
/// transaction. On its own task the `BEGIN` always finishes, and a transaction
/// nobody takes is rolled back when dropped.
pub(crate) async fn begin_locked(
    pool: &PgPool,
    users: &[UserId],
) -> Result<Transaction<'static, Postgres>, StorageError> {
    let mut keys: Vec<i64> = users.iter().map(|&user| lock_key(user)).collect();
    keys.sort_unstable();
    keys.dedup();
    let keys: Vec<String> = keys.iter().map(i64::to_string).collect();
    let begin = format!(
        "BEGIN; {SUBMISSION_PLANNING}; SELECT count(pg_advisory_xact_lock(key)) \
         FROM (SELECT key FROM unnest(ARRAY[{}]::bigint[]) WITH ORDINALITY AS k(key, n) ORDER BY n) AS keys",
        keys.join(", ")
    );
    let pool = pool.clone();
    let begun = tokio::spawn(async move { pool.begin_with(AssertSqlSafe(begin)).await })
        .await
        .map_err(|_| {
            StorageError::Other(sqlx::Error::Protocol("the BEGIN task was lost".into()))
        })?;
    Ok(begun?)
}

/// The clock and plans of [`submission_head!`], read from a row that has its
/// columns.
pub(crate) fn read_head(
    row: &PgRow,
) -> Result<(DateTime<Utc>, HashMap<UserId, String>), StorageError> {
    let now: DateTime<Utc> = row.try_get("now")?;
    let users: Option<Vec<uuid::Uuid>> = row.try_get("plan_users")?;
    let plans: Option<Vec<String>> = row.try_get("plans")?;
    let plans = users
        .unwrap_or_default()
        .into_iter()
        .map(UserId)
        .zip(plans.unwrap_or_default())
        .collect();
    Ok((now, plans))
}

/// A 64-bit advisory lock key for a user: the two halves of the UUID folded.
fn lock_key(user_id: UserId) -> i64 {
    let (high, low) = user_id.0.as_u64_pair();
    i64::from_ne_bytes((high ^ low).to_ne_bytes())
}

/// A user whose usage a transaction needs, under their lock.
#[derive(Debug)]
pub(crate) struct UsageRequest<'a> {
    pub user_id: UserId,
    /// The plan in force.
    pub plan: &'a Plan,
    /// How many submissions of theirs the transaction decides (at least 1).
    pub submissions: usize,
    /// Whether the figures are reported even when the plan limits nothing
    /// (CheckQuota). Otherwise a user whose plan has no limit at all is not
    /// counted: nothing could refuse them, and no figure is shown.
    pub report: bool,
}

/// A user's usage at the transaction's instant, and the new jobs it has
/// created for them so far.
#[derive(Debug)]
pub(crate) struct Standing<'a> {
    plan: &'a Plan,
    now: DateTime<Utc>,
    monthly_used: i64,
    hourly_used: i64,
    /// The 1-based position in the hour's jobs (oldest first) of `leaving[0]`.
    first: i64,
    /// The hour's jobs from position `first` on, as many as the transaction's
    /// submissions could need.
    leaving: Vec<DateTime<Utc>>,
    created: i64,
}

impl<'a> Standing<'a> {
    /// A user whose plan limits nothing, not counted.
    fn uncounted(plan: &'a Plan, now: DateTime<Utc>) -> Self {
        Self {
            plan,
            now,
            monthly_used: 0,
            hourly_used: 0,
            first: 1,
            leaving: Vec::new(),
            created: 0,
        }
    }

    /// The decision on one more new job, counting the ones created so far.
    pub fn decide(&self) -> QuotaStatus {
        let hourly_used = self.hourly_used + self.created;
        // For a full hour, the job whose leaving frees a slot is the
        // (used - limit + 1)-th oldest; otherwise (and for an unlimited hour) the
        // oldest. Jobs created by this transaction are the newest, at `now`.
        let position = match self.plan.hourly_jobs {
            Limit::Unlimited => 1,
            Limit::AtMost(limit) => (hourly_used - i64::from(limit)).max(0) + 1,
        };
        let leaving_at = if position <= self.hourly_used {
            usize::try_from(position - self.first)
                .ok()
                .and_then(|index| self.leaving.get(index).copied())
        } else if position <= hourly_used {
            Some(self.now)
        } else {
            None
        };
        quota::decide(
            self.plan,
            Usage {
                now: self.now,
                monthly_used: self.monthly_used + self.created,
                hourly_used,
                hourly_slot_at: leaving_at.map(|at| at + quota::hour()),
            },
        )
    }

    /// Counts one more new job, created at `now`.
    pub fn created_one(&mut self) {
        self.created += 1;
    }
}

/// A user, both counts, the position of the first job of the hour read, and the
/// jobs from there.
type UsageRow = (uuid::Uuid, i64, i64, i64, Option<Vec<DateTime<Utc>>>);

/// The usage count of [`usage`]; public for the test of its plan made on an
/// empty table. Parameters: `$1` the users, `$2` their hourly limits (NULL for
/// none), `$3` how many submissions of each the transaction decides, `$4` the
/// start of the month, `$5` the start of the rolling hour. Per user: both
/// counts, and the part of the hour's jobs (oldest first) whose leaving could
/// free the slot for one of the transaction's submissions: from the
/// (used - limit + 1)-th oldest on (the oldest for an unlimited hour), one per
/// submission.
///
/// `user_id = ANY($1)` rather than a lateral subquery per user: with the
/// batch's arrays as parameters, the planner turned the lateral into a
/// sequential scan and a hash join; this is one index scan, also in the
/// generic plan of a submission transaction (see [`SUBMISSION_PLANNING`]).
#[doc(hidden)]
pub const USAGE: &str = "SELECT q.user_id, coalesce(c.monthly_used, 0), coalesce(c.hourly_used, 0), f.first,
                c.hourly[f.first : f.first + q.submissions - 1]
         FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS q(user_id, hourly_limit, submissions)
         LEFT JOIN (
             SELECT user_id,
                    count(*) FILTER (WHERE created_at >= $4) AS monthly_used,
                    count(*) FILTER (WHERE created_at > $5) AS hourly_used,
                    array_agg(created_at ORDER BY created_at) FILTER (WHERE created_at > $5) AS hourly
             FROM menu_extraction_jobs
             WHERE user_id = ANY($1) AND retry_count = 0 AND created_at >= LEAST($4, $5)
             GROUP BY user_id
         ) AS c ON c.user_id = q.user_id
         CROSS JOIN LATERAL (
             SELECT CASE WHEN q.hourly_limit IS NULL THEN 1
                         ELSE GREATEST(coalesce(c.hourly_used, 0) - q.hourly_limit, 0) + 1 END AS first
         ) AS f";

/// The usage at `now` of each user in `requests`.
pub(crate) async fn usage<'a>(
    conn: &mut PgConnection,
    requests: &[UsageRequest<'a>],
    now: DateTime<Utc>,
) -> Result<HashMap<UserId, Standing<'a>>, StorageError> {
    let (month_start, _) = quota::month_bounds(now);
    let hour_start = now - quota::hour();
    let mut standings: HashMap<UserId, Standing<'a>> = HashMap::new();
    let (requests, unlimited): (Vec<&UsageRequest<'a>>, Vec<&UsageRequest<'a>>) =
        requests.iter().partition(|r| {
            r.report
                || r.plan.monthly_jobs != Limit::Unlimited
                || r.plan.hourly_jobs != Limit::Unlimited
        });
    for request in unlimited {
        standings.insert(request.user_id, Standing::uncounted(request.plan, now));
    }
    if requests.is_empty() {
        return Ok(standings);
    }
    let users: Vec<uuid::Uuid> = requests.iter().map(|r| r.user_id.0).collect();
    let hourly_limits: Vec<Option<i64>> = requests
        .iter()
        .map(|r| match r.plan.hourly_jobs {
            Limit::Unlimited => None,
            Limit::AtMost(n) => Some(i64::from(n)),
        })
        .collect();
    let submissions: Vec<i64> = requests
        .iter()
        .map(|r| i64::try_from(r.submissions.max(1)).unwrap_or(i64::MAX))
        .collect();
    let rows: Vec<UsageRow> = sqlx::query_as(USAGE)
        .bind(users)
        .bind(hourly_limits)
        .bind(submissions)
        .bind(month_start)
        .bind(hour_start)
        .fetch_all(conn)
        .await?;
    let plans: HashMap<UserId, &'a Plan> = requests.iter().map(|r| (r.user_id, r.plan)).collect();
    standings.extend(rows.into_iter().filter_map(
        |(user, monthly_used, hourly_used, first, leaving)| {
            let user_id = UserId(user);
            let standing = Standing {
                plan: plans.get(&user_id)?,
                now,
                monthly_used,
                hourly_used,
                first,
                leaving: leaving.unwrap_or_default(),
                created: 0,
            };
            Some((user_id, standing))
        },
    ));
    Ok(standings)
}

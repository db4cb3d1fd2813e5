//! SubmitJob's transaction, for one submission or a batch of them.
//!
//! A batch is decided exactly as its submissions would be one after another, in
//! order, under their users' locks: a later submission sees the jobs an earlier
//! one created (for deduplication, `request_id` and the limits), and nothing
//! else changes between them because every user of the batch is locked for the
//! whole transaction. The batch costs the same statements as one submission:
//! begin and lock, lookups (with the clock and plans), usage, insert, commit
//! (one NOTIFY); and, when workers are parked, the claim that hands them the
//! new jobs (see [`crate::handoff`]).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, Row};
use uuid::Uuid;

use super::leases;
use super::usage::{self, UsageRequest};
use super::{Storage, StorageError};
use crate::handoff::{Handoff, Taken};
use crate::job::{Job, JobId, NewJob, UserId};
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

/// A decision taken before the insert: the new jobs are only known after it.
enum Decided {
    Done(Box<SubmitOutcome>),
    /// Creates the `n`-th row of the insert.
    Create(usize),
    /// Deduplicated to the `n`-th row of the insert (made by an earlier
    /// submission of the same batch).
    SameAs(usize),
}

fn done(outcome: SubmitOutcome) -> Decided {
    Decided::Done(Box::new(outcome))
}

/// Which submission of a batch a looked-up job belongs to, and how it was found.
struct Found {
    item: i32,
    by_request: bool,
    job: Job,
}

/// What [`lookup`] read: the clock and plans of the locked users, and the jobs
/// found.
struct LookedUp {
    now: DateTime<Utc>,
    plans: HashMap<UserId, String>,
    found: Vec<Found>,
}

/// What identifies a submission for deduplication.
type SubmissionKey<'a> = (UserId, &'a str, &'a str, &'a str);

fn key(new: &NewJob) -> SubmissionKey<'_> {
    (
        new.user_id,
        &new.image_sha256,
        &new.schema_version,
        &new.prompt_version,
    )
}

fn same_submission(job: &Job, new: &NewJob) -> bool {
    job.image_url == new.image_url
        && job.image_sha256.as_deref() == Some(new.image_sha256.as_str())
        && job.schema_version == new.schema_version
        && job.prompt_version == new.prompt_version
}

impl Storage {
    /// Submits one job (see [`Storage::submit_jobs`]).
    pub async fn submit_job(
        &self,
        new: &NewJob,
        plans: &Plans,
    ) -> Result<SubmitOutcome, StorageError> {
        let mut outcomes = self
            .try_submit(std::slice::from_ref(new), plans, None)
            .await?;
        match outcomes.pop() {
            Some(Some(outcome)) => Ok(outcome),
            _ => Err(StorageError::SerializationFailure(sqlx::Error::Protocol(
                "an identical job changed while this submission was deduplicated against it".into(),
            ))),
        }
    }

    /// Submits a batch of jobs in one transaction, under the locks of all their
    /// users (taken in key order, so batches never deadlock): each returns the
    /// live job that matches it (unless `force`; that costs nothing), or is
    /// checked against the rolling hour and then the month of its user's plan
    /// and inserted, or is refused and writes nothing.
    ///
    /// Concurrent identical submissions cannot create two jobs even without the
    /// lock (a legacy writer, say): the unique partial index
    /// `menu_extraction_jobs_live_submission` arbitrates the insert. When a batch
    /// loses such a race, or fails for a reason that is not the database being
    /// unavailable, its submissions are retried one by one, so that one
    /// submission's trouble is never another's.
    ///
    /// A batch that creates jobs also claims them for claims parked in
    /// `handoff`, in its own transaction (see [`crate::handoff`]); the jobs it
    /// answers are then the claimed ones, already processing. Retries one by
    /// one leave the parked claims alone.
    pub async fn submit_jobs(
        &self,
        batch: &[NewJob],
        plans: &Plans,
        handoff: &Handoff,
    ) -> Vec<Result<SubmitOutcome, StorageError>> {
        match self.try_submit(batch, plans, Some(handoff)).await {
            Ok(outcomes) if outcomes.iter().all(Option::is_some) => {
                return outcomes.into_iter().flatten().map(Ok).collect();
            }
            Err(error @ StorageError::Unavailable(_)) => {
                return batch.iter().map(|_| Err(error.shared())).collect();
            }
            Ok(_) | Err(_) => {}
        }
        let mut outcomes = Vec::with_capacity(batch.len());
        for new in batch {
            outcomes.push(self.submit_job(new, plans).await);
        }
        outcomes
    }

    /// One transaction for `batch`, which claims its new jobs for the claims it
    /// takes from `handoff`. An outcome is `None` when its insert lost to an
    /// identical job committed meanwhile by a writer that does not take the
    /// lock; a batch of one then reads that job instead, a larger batch is rolled
    /// back.
    async fn try_submit(
        &self,
        batch: &[NewJob],
        plans: &Plans,
        handoff: Option<&Handoff>,
    ) -> Result<Vec<Option<SubmitOutcome>>, StorageError> {
        let mut users: Vec<UserId> = batch.iter().map(|new| new.user_id).collect();
        users.sort_by_key(|user| user.0);
        users.dedup();
        let mut tx = usage::begin_locked(&self.pool, &users).await?;
        let LookedUp {
            now,
            plans: stored_plans,
            found,
        } = lookup(&mut tx, &users, batch).await?;
        let requests: Vec<UsageRequest> = users
            .iter()
            .map(|&user_id| UsageRequest {
                user_id,
                plan: plans.effective(stored_plans.get(&user_id).map(String::as_str)),
                submissions: batch.iter().filter(|new| new.user_id == user_id).count(),
                report: false,
            })
            .collect();
        let mut usage = usage::usage(&mut tx, &requests, now).await?;

        let mut by_request: HashMap<usize, Job> = HashMap::new();
        let mut live: HashMap<usize, Job> = HashMap::new();
        for Found {
            item,
            by_request: is_request,
            job,
        } in found
        {
            let item = usize::try_from(item).unwrap_or(usize::MAX);
            if is_request {
                by_request.insert(item, job);
            } else {
                live.insert(item, job);
            }
        }

        // Decide in order, as if one after another.
        let mut inserts: Vec<(JobId, &NewJob)> = Vec::new();
        let mut created_by_request: HashMap<(UserId, Uuid), usize> = HashMap::new();
        let mut created_by_key: HashMap<SubmissionKey<'_>, usize> = HashMap::new();
        let mut decided = Vec::with_capacity(batch.len());
        for (item, new) in batch.iter().enumerate() {
            if let Some(request_id) = new.request_id {
                if let Some(&row) = created_by_request.get(&(new.user_id, request_id)) {
                    let (_, earlier) = inserts[row];
                    decided.push(
                        if key(earlier) == key(new) && earlier.image_url == new.image_url {
                            Decided::SameAs(row)
                        } else {
                            done(SubmitOutcome::RequestIdReused)
                        },
                    );
                    continue;
                }
                if let Some(job) = by_request.remove(&item) {
                    decided.push(done(if same_submission(&job, new) {
                        SubmitOutcome::Deduplicated(job)
                    } else {
                        SubmitOutcome::RequestIdReused
                    }));
                    continue;
                }
            }
            if !new.force {
                if let Some(&row) = created_by_key.get(&key(new)) {
                    decided.push(Decided::SameAs(row));
                    continue;
                }
                if let Some(job) = live.remove(&item) {
                    decided.push(done(SubmitOutcome::Deduplicated(job)));
                    continue;
                }
            }
            let standing = usage.get_mut(&new.user_id).ok_or_else(|| {
                StorageError::Other(sqlx::Error::Protocol(format!(
                    "no usage was read for user {}",
                    new.user_id.0
                )))
            })?;
            let status = standing.decide();
            if status.refusal.is_some() {
                decided.push(done(SubmitOutcome::Refused(status)));
                continue;
            }
            standing.created_one();
            let row = inserts.len();
            inserts.push((JobId::generate(), new));
            if let Some(request_id) = new.request_id {
                created_by_request.insert((new.user_id, request_id), row);
            }
            created_by_key.insert(key(new), row);
            decided.push(Decided::Create(row));
        }

        let mut created: HashMap<JobId, Job> = insert(&mut tx, &inserts, now)
            .await?
            .into_iter()
            .map(|job| (job.id, job))
            .collect();
        // Parked claims served by this transaction; dropped unanswered (their
        // claimers look again) unless it commits.
        let taken = match handoff {
            Some(handoff) if !created.is_empty() => handoff.take(created.len()),
            _ => Taken::default(),
        };
        let claimed = if taken.is_empty() {
            Vec::new()
        } else {
            leases::claim(&mut *tx, &taken.requests(), Some(now)).await?
        };
        for claimed in claimed.iter().flatten() {
            if let Some(job) = created.get_mut(&claimed.job.id) {
                *job = claimed.job.clone();
            }
        }
        let mut outcomes = Vec::with_capacity(batch.len());
        for (item, decision) in decided.into_iter().enumerate() {
            let outcome = match decision {
                Decided::Done(outcome) => Some(*outcome),
                Decided::SameAs(row) => created
                    .get(&inserts[row].0)
                    .cloned()
                    .map(SubmitOutcome::Deduplicated),
                Decided::Create(row) => match created.get(&inserts[row].0) {
                    Some(job) => Some(SubmitOutcome::Created(job.clone())),
                    // Lost to a writer outside the lock (ON CONFLICT waited for
                    // it); a fresh statement sees its job.
                    None if batch.len() == 1 => find_live_match(&mut tx, &batch[item])
                        .await?
                        .map(SubmitOutcome::Deduplicated),
                    None => None,
                },
            };
            outcomes.push(outcome);
        }
        if outcomes.iter().all(Option::is_some) {
            tx.commit().await?;
            if !taken.is_empty() {
                taken.answer(self.deliveries(claimed));
            }
        } else {
            tx.rollback().await?;
        }
        Ok(outcomes)
    }
}

/// The value the submission indexes are keyed on (migration 0011), for a row of
/// the jobs table. The lookup and the insert's `ON CONFLICT` compare it rather
/// than the four columns, so that no other index (the user's
/// `(user_id, created_at, id)`, a legacy `user_id` index) can answer them,
/// whatever the statistics their plan was made from.
macro_rules! submission_key {
    () => {
        "jobq_submission_key(user_id, image_hash, schema_version, prompt_version)"
    };
}

/// The predicate of `menu_extraction_jobs_live_submission`: a live job that
/// deduplicates.
macro_rules! live_submission {
    () => {
        "status IN ('queued', 'processing', 'completed') AND NOT dedup_exempt"
    };
}

/// SubmitJob's lookup (see [`lookup`]); public for the tests of its plans made
/// on an empty table. Parameters: `$1` the batch's users; `$2..$4` each
/// submission with a `request_id` (its index, user and request id); `$5..$9`
/// each submission without `force` (its index, user, hash, schema and prompt
/// versions). It runs on a generic plan made once per connection (see
/// [`super::usage::SUBMISSION_PLANNING`]), so its shape must not hang on
/// statistics: each subquery per submission ends in LIMIT, which keeps it a
/// lateral lookup by index for that submission's values, never a join the
/// planner could turn inside out (scanning an index of every job once for the
/// batch, which is what a plan made on an empty table chose), and each names
/// its index's key as one value (see `submission_key!`).
#[doc(hidden)]
pub const LOOKUP: &str = concat!(
    "WITH ",
    submission_head!(),
    " SELECT head.*, found.*
         FROM head LEFT JOIN (
             SELECT q.item, true AS by_request, j.*
             FROM unnest($2::int[], $3::uuid[], $4::uuid[]) AS q(item, user_id, request_id)
             CROSS JOIN LATERAL (
                 SELECT ",
    job_columns!(),
    " FROM menu_extraction_jobs
                 WHERE jobq_request_key(user_id, submit_request_id)
                           = jobq_request_key(q.user_id, q.request_id)
                   AND submit_request_id IS NOT NULL
                 -- At most one (a unique index): the limit keeps the subquery
                 -- a lookup per submission (see LOOKUP).
                 LIMIT 1
             ) AS j
             UNION ALL
             SELECT q.item, false, j.*
             FROM (SELECT item, ",
    submission_key!(),
    " AS key
                   FROM unnest($5::int[], $6::uuid[], $7::text[], $8::text[], $9::text[])
                        AS s(item, user_id, image_hash, schema_version, prompt_version)) AS q
             CROSS JOIN LATERAL (
                 -- The one live job not exempt from deduplication (found by the
                 -- unique index), and the newest exempt one (by the exempt
                 -- jobs' index): the newer of the two.
                 SELECT * FROM (
                     (SELECT ",
    job_columns!(),
    " FROM menu_extraction_jobs
                      WHERE ",
    submission_key!(),
    " = q.key AND ",
    live_submission!(),
    ")
                     UNION ALL
                     (SELECT ",
    job_columns!(),
    " FROM menu_extraction_jobs
                      WHERE ",
    submission_key!(),
    " = q.key
                        AND status IN ('queued', 'processing', 'completed') AND dedup_exempt
                      ORDER BY created_at DESC, id DESC
                      LIMIT 1)
                 ) AS live
                 ORDER BY created_at DESC, id DESC
                 LIMIT 1
             ) AS j
         ) AS found ON true"
);

/// The clock and plans of `users` (see [`submission_head!`]), and for each
/// submission of `batch` (by its index): the job the user submitted earlier with
/// the same `request_id`, and the newest live job of the same user and
/// submission, exempt ones included. The users' locks, held by the caller, keep
/// all of it true until the transaction ends.
async fn lookup(
    conn: &mut PgConnection,
    users: &[UserId],
    batch: &[NewJob],
) -> Result<LookedUp, StorageError> {
    let users: Vec<Uuid> = users.iter().map(|user| user.0).collect();
    let (mut request_items, mut request_users, mut request_ids) = (vec![], vec![], vec![]);
    let (mut live_items, mut live_users) = (vec![], vec![]);
    let (mut hashes, mut schemas, mut prompts) = (vec![], vec![], vec![]);
    for (item, new) in (0_i32..).zip(batch) {
        if let Some(request_id) = new.request_id {
            request_items.push(item);
            request_users.push(new.user_id.0);
            request_ids.push(request_id);
        }
        if !new.force {
            live_items.push(item);
            live_users.push(new.user_id.0);
            hashes.push(new.image_sha256.as_str());
            schemas.push(new.schema_version.as_str());
            prompts.push(new.prompt_version.as_str());
        }
    }
    // One row per job found, each with the head's columns; one row of the head
    // alone (item NULL) when nothing is found.
    let rows = sqlx::query(LOOKUP)
        .bind(users)
        .bind(request_items)
        .bind(request_users)
        .bind(request_ids)
        .bind(live_items)
        .bind(live_users)
        .bind(hashes)
        .bind(schemas)
        .bind(prompts)
        .fetch_all(conn)
        .await?;
    let first = rows
        .first()
        .ok_or_else(|| StorageError::Other(sqlx::Error::RowNotFound))?;
    let (now, plans) = usage::read_head(first)?;
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        if let Some(item) = row.try_get::<Option<i32>, _>("item")? {
            found.push(Found {
                item,
                by_request: row.try_get("by_request")?,
                job: Job::from_row(row)?,
            });
        }
    }
    Ok(LookedUp { now, plans, found })
}

/// The newest live job of the same user and submission, exempt ones included.
async fn find_live_match(
    conn: &mut PgConnection,
    new: &NewJob,
) -> Result<Option<Job>, StorageError> {
    let looked_up = lookup(
        conn,
        &[new.user_id],
        std::slice::from_ref(&NewJob {
            request_id: None,
            force: false,
            ..new.clone()
        }),
    )
    .await?;
    Ok(looked_up.found.into_iter().next().map(|found| found.job))
}

/// Inserts the jobs, created at `now`, in order; returns those inserted. A job
/// is missing when a live identical job (not exempt) got there first.
async fn insert(
    conn: &mut PgConnection,
    inserts: &[(JobId, &NewJob)],
    now: DateTime<Utc>,
) -> Result<Vec<Job>, StorageError> {
    if inserts.is_empty() {
        return Ok(Vec::new());
    }
    let mut ids = Vec::with_capacity(inserts.len());
    let mut users = Vec::with_capacity(inserts.len());
    let mut urls = Vec::with_capacity(inserts.len());
    let mut hashes = Vec::with_capacity(inserts.len());
    let mut schemas = Vec::with_capacity(inserts.len());
    let mut prompts = Vec::with_capacity(inserts.len());
    let mut forced = Vec::with_capacity(inserts.len());
    let mut request_ids = Vec::with_capacity(inserts.len());
    for (id, new) in inserts {
        ids.push(id.0);
        users.push(new.user_id.0);
        urls.push(new.image_url.as_str());
        hashes.push(new.image_sha256.as_str());
        schemas.push(new.schema_version.as_str());
        prompts.push(new.prompt_version.as_str());
        forced.push(new.force);
        request_ids.push(new.request_id);
    }
    let jobs = sqlx::query_as::<_, Job>(concat!(
        "INSERT INTO menu_extraction_jobs
             (id, user_id, image_url, image_hash, schema_version, prompt_version, status, dedup_exempt,
              created_at, updated_at, submit_request_id)
         SELECT id, user_id, image_url, image_hash, schema_version, prompt_version, 'queued', forced,
                $9, $9, request_id
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::bool[], $8::uuid[])
              WITH ORDINALITY
              AS q(id, user_id, image_url, image_hash, schema_version, prompt_version, forced,
                   request_id, n)
         ORDER BY n
         ON CONFLICT ((",
        submission_key!(),
        ")) WHERE ",
        live_submission!(),
        " DO NOTHING
         RETURNING ",
        job_columns!()
    ))
    .bind(ids)
    .bind(users)
    .bind(urls)
    .bind(hashes)
    .bind(schemas)
    .bind(prompts)
    .bind(forced)
    .bind(request_ids)
    .bind(now)
    .fetch_all(conn)
    .await?;
    Ok(jobs)
}

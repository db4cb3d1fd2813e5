//! Group commit decides a batch of submissions exactly as it would decide them
//! one at a time: the same submissions are run as batches on one database and
//! one by one on another, and every outcome must match (which job a duplicate
//! returns, which `request_id` reuse is refused, which limit refuses what, with
//! the same counts), and every rate-limit refusal must name the instant its own
//! database's jobs free a slot.
//!
//! The end-to-end tests (tests/submit.rs, tests/limits.rs) check the semantics
//! themselves over gRPC, with concurrent callers whose calls are batched.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;

use jobq_server::handoff::Handoff;
use jobq_server::job::{JobId, NewJob, UserId};
use jobq_server::plans::Plans;
use jobq_server::quota::Refusal;
use jobq_server::storage::Storage;
use jobq_server::storage::submit::SubmitOutcome;
use proptest::prelude::*;
use sqlx::Connection;
use uuid::Uuid;

use common::TestDb;

const PLANS: &str = "[plans.free]\nmonthly_jobs = 4\nhourly_jobs = 6\n\
                     [plans.pro]\nmonthly_jobs = -1\nhourly_jobs = 3\n";

/// One submission, in terms of a case's three users, photos and request ids.
#[derive(Debug, Clone)]
struct Submission {
    user: usize,
    photo: u8,
    /// Two URLs per photo: reusing a request_id with the other one is refused.
    url: u8,
    force: bool,
    request: Option<u8>,
}

fn submission() -> impl Strategy<Value = Submission> {
    (
        0..3_usize,
        0..3_u8,
        0..2_u8,
        prop::bool::weighted(0.2),
        prop::option::weighted(0.3, 0..3_u8),
    )
        .prop_map(|(user, photo, url, force, request)| Submission {
            user,
            photo,
            url,
            force,
            request,
        })
}

/// A decision, with jobs named by the submission that created them.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    Created,
    Deduplicated(usize),
    Refused {
        rate_limited: bool,
        used: i64,
        limit: i64,
        monthly_used: i64,
        hourly_used: i64,
    },
    RequestIdReused,
}

struct Side {
    db: TestDb,
    storage: Storage,
}

/// Runs `batches` on `side` (as batches, or one by one) for fresh users, and
/// returns each submission's decision.
async fn run(
    side: &Side,
    plans: &Plans,
    batches: &[Vec<Submission>],
    batched: bool,
) -> Vec<Decision> {
    let users: Vec<UserId> = (0..3).map(|_| UserId(Uuid::new_v4())).collect();
    let requests: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    side.storage.set_user_plan(users[2], "pro").await.unwrap();
    let new_job = |s: &Submission| NewJob {
        user_id: users[s.user],
        image_url: format!("https://photos.example/{}-{}.jpg", s.photo, s.url),
        image_sha256: format!("{:064x}", s.photo),
        schema_version: "v1".into(),
        prompt_version: "p1".into(),
        force: s.force,
        request_id: s.request.map(|r| requests[usize::from(r)]),
    };
    let mut outcomes = Vec::new();
    for batch in batches {
        let jobs: Vec<NewJob> = batch.iter().map(new_job).collect();
        if batched {
            for outcome in side
                .storage
                .submit_jobs(&jobs, plans, &Handoff::new())
                .await
            {
                outcomes.push(outcome.expect("no database error"));
            }
        } else {
            for job in &jobs {
                outcomes.push(side.storage.submit_job(job, plans).await.unwrap());
            }
        }
    }
    let mut creator: HashMap<JobId, usize> = HashMap::new();
    let mut decisions = Vec::new();
    for (item, outcome) in outcomes.into_iter().enumerate() {
        decisions.push(match outcome {
            SubmitOutcome::Created(job) => {
                creator.insert(job.id, item);
                Decision::Created
            }
            SubmitOutcome::Deduplicated(job) => Decision::Deduplicated(creator[&job.id]),
            SubmitOutcome::RequestIdReused => Decision::RequestIdReused,
            SubmitOutcome::Refused(status) => {
                let refusal = status.refusal.expect("a refusal says why");
                let (rate_limited, used, limit) = match refusal {
                    Refusal::RateLimited {
                        used,
                        limit,
                        resets_at,
                        ..
                    } => {
                        check_slot(side, &status.plan, &users, used, limit, resets_at).await;
                        (true, used, limit)
                    }
                    Refusal::QuotaExceeded { used, limit, .. } => (false, used, limit),
                };
                Decision::Refused {
                    rate_limited,
                    used,
                    limit,
                    monthly_used: status.monthly.used,
                    hourly_used: status.hourly.used,
                }
            }
        });
    }
    decisions
}

/// Checks that `resets_at` is an hour after the (used - limit + 1)-th oldest
/// job of the refused user (the pro user: the only one rate-limited here).
async fn check_slot(
    side: &Side,
    plan: &str,
    users: &[UserId],
    used: i64,
    limit: i64,
    resets_at: Option<chrono::DateTime<chrono::Utc>>,
) {
    assert_eq!(
        plan, "pro",
        "only the pro plan's hour is smaller than its month"
    );
    let pool = side.db.pool().await;
    let created: Vec<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT created_at FROM menu_extraction_jobs WHERE user_id = $1 AND retry_count = 0
         ORDER BY created_at",
    )
    .bind(users[2].0)
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    let oldest_leaving = usize::try_from(used - limit).unwrap();
    assert_eq!(
        resets_at,
        Some(created[oldest_leaving] + chrono::Duration::hours(1)),
        "used {used}, limit {limit}, jobs {created:?}"
    );
}

#[test]
fn a_batch_decides_as_its_submissions_would_one_by_one() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let side = || {
        runtime.block_on(async {
            let db = TestDb::new();
            let storage = Storage::open(&db.url, 4).await.expect("database");
            Side { db, storage }
        })
    };
    let (batched, one_by_one) = (side(), side());
    let plans = Plans::parse(PLANS).unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = prop::collection::vec(prop::collection::vec(submission(), 1..24), 1..4);
    let result = runner.run(&strategy, |batches| {
        let (as_batches, each_alone) = runtime.block_on(async {
            (
                run(&batched, &plans, &batches, true).await,
                run(&one_by_one, &plans, &batches, false).await,
            )
        });
        prop_assert_eq!(as_batches, each_alone);
        Ok(())
    });
    runtime.block_on(async {
        for side in [batched, one_by_one] {
            side.storage.close().await;
            side.db.drop_database().await;
        }
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

/// A submission abandoned while it waits for its user's lock (its caller gave
/// up) leaves no pooled connection inside a transaction: once the lock is free,
/// every connection of the pool serves the next submissions at once.
#[tokio::test]
async fn a_submission_abandoned_while_waiting_for_the_lock_leaves_the_pool_clean() {
    let db = TestDb::new();
    let storage = Storage::open(&db.url, 2).await.expect("database");
    let plans = Plans::parse(PLANS).unwrap();
    let user = UserId(Uuid::new_v4());
    let new_job = |n: u8| NewJob {
        user_id: user,
        image_url: format!("https://photos.example/{n}.jpg"),
        image_sha256: format!("{n:064x}"),
        schema_version: "v1".into(),
        prompt_version: "p1".into(),
        force: false,
        request_id: None,
    };

    // Another session holds the user's submission lock.
    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut holder = holder.begin().await.unwrap();
    let (high, low) = user.0.as_u64_pair();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(i64::from_ne_bytes((high ^ low).to_ne_bytes()))
        .execute(&mut *holder)
        .await
        .unwrap();
    let abandoned = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        storage.submit_job(&new_job(1), &plans),
    )
    .await;
    assert!(abandoned.is_err(), "it waited for the lock");
    holder.rollback().await.unwrap();

    // A connection left inside the abandoned transaction would hold the lock
    // for good, and the next submissions of the user (on the pool's other
    // connection) would wait for it.
    for n in 2..6 {
        let outcome = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            storage.submit_job(&new_job(n), &plans),
        )
        .await
        .expect("answered once the lock was free")
        .unwrap();
        assert!(matches!(outcome, SubmitOutcome::Created(_)), "{outcome:?}");
    }
    storage.close().await;
    db.drop_database().await;
}

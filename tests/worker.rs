//! The worker protocol: claims that never overlap, long-poll woken by NOTIFY,
//! leases that expire and are renewed, outcomes only under the current lease, and
//! CancelJob.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{TestServer, Watcher, error_info, submission};
use jobq_proto::pb;
use jobq_proto::pb::worker_service_client::WorkerServiceClient;
use jobq_server::job::{JobId, LeaseId, LeaseRef};
use jobq_server::storage::Storage;
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

fn claim(worker: &str, max_jobs: i32, lease: Duration, wait: Duration) -> pb::ClaimJobsRequest {
    pb::ClaimJobsRequest {
        worker_id: worker.to_owned(),
        max_jobs,
        lease_duration: Some(lease.try_into().unwrap()),
        wait: Some(wait.try_into().unwrap()),
    }
}

fn complete(claimed: &pb::ClaimedJob) -> pb::CompleteJobRequest {
    pb::CompleteJobRequest {
        job_id: claimed.job.as_ref().unwrap().id.clone(),
        lease_id: claimed.lease_id.clone(),
        result: Some(prost_types::Struct::default()),
        ..Default::default()
    }
}

fn worker(server: &TestServer) -> WorkerServiceClient<Channel> {
    WorkerServiceClient::new(server.channel())
}

async fn status_of(server: &TestServer, job_id: &str) -> (String, i32) {
    sqlx::query_as("SELECT status, attempt FROM menu_extraction_jobs WHERE id = $1::uuid")
        .bind(job_id)
        .fetch_one(&server.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_thousand_jobs_eight_workers_each_job_claimed_and_completed_once() {
    let server = TestServer::start().await;
    let submitters = (0..20).map(|s| {
        let mut client = server.raw();
        async move {
            for n in 0..100 {
                client
                    .submit_job(submission(Uuid::new_v4(), s * 100 + n))
                    .await
                    .unwrap();
            }
        }
    });
    futures::future::join_all(submitters).await;
    assert_eq!(server.job_count().await, 2000);

    let workers = (0..8).map(|w| {
        let mut client = WorkerServiceClient::new(server.channel());
        tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let claimed = client
                    .claim_jobs(claim(
                        &format!("worker-{w}"),
                        25,
                        Duration::from_secs(300),
                        Duration::ZERO,
                    ))
                    .await
                    .unwrap()
                    .into_inner()
                    .jobs;
                if claimed.is_empty() {
                    return done;
                }
                for job in &claimed {
                    let finished = client
                        .complete_job(complete(job))
                        .await
                        .unwrap()
                        .into_inner()
                        .job
                        .unwrap();
                    assert_eq!(finished.status(), pb::JobStatus::Completed);
                    done.push(finished.id);
                }
            }
        })
    });
    let mut all = Vec::new();
    for worker in futures::future::join_all(workers).await {
        all.extend(worker.unwrap());
    }
    assert_eq!(all.len(), 2000, "2000 completions");
    assert_eq!(
        all.iter().collect::<HashSet<_>>().len(),
        2000,
        "no job completed twice"
    );
    let left: (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status <> 'completed'), count(*) FILTER (WHERE attempt <> 1)
         FROM menu_extraction_jobs",
    )
    .fetch_one(&server.pool)
    .await
    .unwrap();
    assert_eq!(left, (0, 0), "none left, each claimed exactly once");
    server.stop().await;
}

#[tokio::test]
async fn a_parked_worker_is_woken_by_the_notification() {
    // The safety poll is a minute: a pickup within two seconds came from NOTIFY.
    let server = TestServer::start_for_parked_claims().await;
    let mut parked = worker(&server);
    let user = Uuid::new_v4();
    let waiting = tokio::spawn(async move {
        let answer = parked
            .claim_jobs(claim(
                "parked",
                1,
                Duration::from_secs(60),
                Duration::from_secs(10),
            ))
            .await;
        (answer, Instant::now())
    });
    // The job is submitted once the claim has looked at the empty queue.
    server.claim_looked(None).await;
    let mut log = server.raw();
    let mut probe = worker(&server);
    let submitted_at = Instant::now();
    let job = log
        .submit_job(submission(user, 1))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let (answer, woke_at) = waiting.await.unwrap();
    let claimed = answer.unwrap().into_inner().jobs;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].job.as_ref().unwrap().id, job.id);
    let pickup = woke_at - submitted_at;
    assert!(pickup < Duration::from_secs(2), "picked up in {pickup:?}");

    // With nothing queued, the wait ends with an empty list, not an error.
    let started = Instant::now();
    let none = probe
        .claim_jobs(claim(
            "probe",
            1,
            Duration::from_secs(60),
            Duration::from_millis(300),
        ))
        .await
        .unwrap();
    assert!(none.into_inner().jobs.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(300));
    server.stop().await;
}

#[tokio::test]
async fn one_notification_of_five_jobs_wakes_five_parked_claimers() {
    // Five jobs queued in one statement are one notification; it must wake
    // every claimer the work needs, not just one: all five are claimed at once,
    // not at the end of the others' waits (30 s; the safety poll is a minute).
    let server = TestServer::start_for_parked_claims().await;
    // One claim at a time, each parked (its look at the empty queue done)
    // before the next is sent, so that each looked on its own.
    let mut parked = Vec::new();
    let mut looked = None;
    for n in 0..5 {
        let mut client = worker(&server);
        parked.push(tokio::spawn(async move {
            let answer = client
                .claim_jobs(claim(
                    &format!("parked-{n}"),
                    1,
                    Duration::from_secs(60),
                    Duration::from_secs(30),
                ))
                .await;
            (answer.unwrap().into_inner().jobs, Instant::now())
        }));
        looked = Some(server.claim_looked(looked.as_deref()).await);
    }
    let queued: Vec<(Uuid,)> = sqlx::query_as(
        "INSERT INTO menu_extraction_jobs (user_id, image_url, image_hash)
         SELECT gen_random_uuid(), 'https://legacy.example/' || g || '.jpg',
                md5(g::text) || md5(g::text || 'x')
         FROM generate_series(1, 5) AS g
         RETURNING id",
    )
    .fetch_all(&server.pool)
    .await
    .unwrap();
    let inserted_at = Instant::now();
    let mut claimed = HashSet::new();
    for claimer in parked {
        let (jobs, answered_at) = claimer.await.unwrap();
        assert_eq!(jobs.len(), 1);
        claimed.insert(jobs[0].job.as_ref().unwrap().id.clone());
        let after = answered_at - inserted_at;
        assert!(
            after < Duration::from_secs(10),
            "claimed {after:?} after the insert"
        );
    }
    let queued: HashSet<String> = queued.into_iter().map(|(id,)| id.to_string()).collect();
    assert_eq!(claimed, queued);
    server.stop().await;
}

/// A server with one claim, by `worker_id`, parked in it.
async fn with_a_parked_claim(
    worker_id: &str,
) -> (TestServer, tokio::task::JoinHandle<Vec<pb::ClaimedJob>>) {
    let server = TestServer::start_for_parked_claims().await;
    let waiting = parked_claim(&server, worker_id);
    server.claims_parked(1).await;
    (server, waiting)
}

/// `job` was answered queued, and is queued in the table.
async fn assert_queued(server: &TestServer, job: &pb::Job) {
    assert_eq!(job.status, pb::JobStatus::Queued as i32);
    assert_eq!(status_of(server, &job.id).await.0, "queued");
}

/// A claim of one job that waits up to 30 s, started in its own task.
fn parked_claim(
    server: &TestServer,
    worker_id: &str,
) -> tokio::task::JoinHandle<Vec<pb::ClaimedJob>> {
    let mut client = worker(server);
    let request = claim(
        worker_id,
        1,
        Duration::from_secs(60),
        Duration::from_secs(30),
    );
    tokio::spawn(async move { client.claim_jobs(request).await.unwrap().into_inner().jobs })
}

#[tokio::test]
async fn a_job_submitted_while_a_worker_waits_is_handed_to_it_in_the_submissions_commit() {
    let (server, waiting) = with_a_parked_claim("parked").await;
    let user = Uuid::new_v4();
    let mut watcher = Watcher::of_user(&server, user).await;
    let job = server.submit(user, 1).await;

    // The submission answers the job as it was first committed: already
    // processing, under the parked worker's lease, started when it was created
    // (not before), and watchers see it created so.
    assert_eq!(job.status, pb::JobStatus::Processing as i32);
    assert_eq!(job.attempt, 1);
    assert_eq!(job.started_at, job.created_at);
    assert_eq!(job.updated_at, job.created_at);
    let created = watcher.next().await;
    assert_eq!(created.kind(), pb::WatchEventKind::Created);
    assert_eq!(created.job.as_ref(), Some(&job));
    let claimed = waiting.await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].job.as_ref().unwrap(), &job);
    let (worker_id, lease_id): (String, String) = sqlx::query_as(
        "SELECT worker_id, lease_id::text FROM menu_extraction_jobs WHERE id = $1::uuid",
    )
    .bind(&job.id)
    .fetch_one(&server.pool)
    .await
    .unwrap();
    assert_eq!(worker_id, "parked");
    assert_eq!(lease_id, claimed[0].lease_id);
    server.claims_parked(0).await;

    // The lease is the job's own: the worker completes it.
    let done = worker(&server)
        .complete_job(complete(&claimed[0]))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(done.status, pb::JobStatus::Completed as i32);

    // With nobody waiting, a new job is queued.
    assert_queued(&server, &server.submit(user, 2).await).await;
    server.stop().await;
}

#[tokio::test]
async fn a_waiting_worker_is_handed_the_oldest_queued_job_not_the_new_one() {
    let (server, waiting) = with_a_parked_claim("parked").await;
    // A job queued meanwhile by a writer whose notification never came (its
    // triggers off), so the parked claim did not see it.
    let mut legacy = server.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *legacy)
        .await
        .unwrap();
    let (older,): (Uuid,) = sqlx::query_as(
        "INSERT INTO menu_extraction_jobs (user_id, image_url, image_hash, created_at)
         VALUES (gen_random_uuid(), 'https://legacy.example/old.jpg', md5('a') || md5('b'),
                 now() - interval '1 minute')
         RETURNING id",
    )
    .fetch_one(&mut *legacy)
    .await
    .unwrap();
    legacy.commit().await.unwrap();

    let new = server.submit(Uuid::new_v4(), 1).await;
    let claimed = waiting.await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].job.as_ref().unwrap().id, older.to_string());
    assert_queued(&server, &new).await;
    assert_eq!(status_of(&server, &older.to_string()).await.0, "processing");
    server.stop().await;
}

#[tokio::test]
async fn a_claim_whose_caller_left_before_its_answer_gives_its_jobs_back_at_once() {
    // Calls are cut after a second: a claim held up longer is dropped by the
    // server, as the call of a caller who went away is.
    let server = TestServer::start_configured(|config| {
        config.rpc_timeout = Duration::from_secs(1);
    })
    .await;
    let user = Uuid::new_v4();
    let mut watcher = Watcher::of_user(&server, user).await;
    let job = server.submit(user, 1).await;
    assert_eq!(watcher.next().await.job.unwrap().version, job.version);

    // The claim statement waits for a lock the test holds, past the call's end.
    let mut holder = server.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE menu_extraction_jobs IN SHARE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let lease = Duration::from_secs(300);
    let cut = worker(&server)
        .claim_jobs(claim("left", 1, lease, Duration::ZERO))
        .await
        .unwrap_err();
    assert_eq!(cut.code(), Code::DeadlineExceeded, "{cut:?}");
    holder.commit().await.unwrap();

    // The claim went through for nobody; its job is back in the queue at once
    // (its lease had five minutes to run), and that claim is not an attempt.
    watcher
        .until(|view| {
            view[&job.id].status == pb::JobStatus::Queued as i32
                && view[&job.id].version > job.version
        })
        .await;
    let back = &watcher.view[&job.id];
    assert_eq!(back.attempt, 0);
    assert_eq!(back.started_at, None);
    let (claims, worker_id, lease_id, expires): (
        i64,
        Option<String>,
        Option<Uuid>,
        Option<chrono::DateTime<chrono::Utc>>,
    ) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM menu_extraction_jobs WHERE status = 'processing'),
                    worker_id, lease_id, lease_expires_at
             FROM menu_extraction_jobs WHERE id = $1::uuid",
    )
    .bind(&job.id)
    .fetch_one(&server.pool)
    .await
    .unwrap();
    assert_eq!(
        (claims, worker_id, lease_id, expires),
        (0, None, None, None)
    );

    // The next claim has it, as its first attempt.
    let next = worker(&server)
        .claim_jobs(claim("next", 1, lease, Duration::ZERO))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(next.len(), 1);
    let next = next[0].job.as_ref().unwrap();
    assert_eq!((next.id.as_str(), next.attempt), (job.id.as_str(), 1));
    server.stop().await;
}

#[tokio::test]
async fn a_job_given_back_is_cancelled_if_its_owner_asked_and_a_finished_one_is_left_alone() {
    let server = TestServer::start().await;
    let storage = Storage::open(&server.db.url, 1).await.unwrap();
    let user = Uuid::new_v4();
    let lease_of = |claimed: &pb::ClaimedJob| LeaseRef {
        job_id: JobId(claimed.job.as_ref().unwrap().id.parse().unwrap()),
        lease_id: LeaseId(claimed.lease_id.parse().unwrap()),
    };
    let cancelled = server.submit(user, 1).await;
    let finished = server.submit(user, 2).await;
    let claimed = worker(&server)
        .claim_jobs(claim("w", 2, Duration::from_secs(300), Duration::ZERO))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(claimed.len(), 2);
    server
        .raw()
        .cancel_job(pb::CancelJobRequest {
            job_id: cancelled.id.clone(),
            user_id: user.to_string(),
        })
        .await
        .unwrap();
    let done = claimed
        .iter()
        .find(|c| c.job.as_ref().unwrap().id == finished.id)
        .unwrap();
    worker(&server).complete_job(complete(done)).await.unwrap();

    let leases: Vec<LeaseRef> = claimed.iter().map(lease_of).collect();
    assert_eq!(storage.give_back(&leases).await.unwrap(), 1);
    let rows: Vec<(String, String, i32, bool, Option<String>)> = sqlx::query_as(
        "SELECT id::text, status, attempt, completed_at IS NOT NULL, lease_id::text
         FROM menu_extraction_jobs ORDER BY created_at",
    )
    .fetch_all(&server.pool)
    .await
    .unwrap();
    let lease_id = |id: &str| {
        claimed
            .iter()
            .find(|c| c.job.as_ref().unwrap().id == id)
            .map(|c| c.lease_id.clone())
    };
    // Cancelled as an expired lease would be: finished, keeping its lease's id
    // (so that a late report from it hears INVALID_STATUS); the claim is not an
    // attempt. The completed job is untouched.
    assert_eq!(
        rows,
        [
            (
                cancelled.id.clone(),
                "cancelled".into(),
                0,
                true,
                lease_id(&cancelled.id)
            ),
            (
                finished.id.clone(),
                "completed".into(),
                1,
                true,
                lease_id(&finished.id)
            ),
        ]
    );
    // Giving back again changes nothing.
    assert_eq!(storage.give_back(&leases).await.unwrap(), 0);
    storage.close().await;
    server.stop().await;
}

#[tokio::test]
async fn a_worker_that_stopped_waiting_is_handed_nothing() {
    let (server, waiting) = with_a_parked_claim("gone").await;
    // The caller goes away: its call is cancelled and its claim leaves.
    waiting.abort();
    server.claims_parked(0).await;
    assert_queued(&server, &server.submit(Uuid::new_v4(), 1).await).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_submissions_hand_each_waiting_worker_one_job_and_queue_the_rest() {
    // Batches of at most 8 new jobs hand them on (MOST_JOBS_HANDED), so every
    // batch these submissions form may.
    const WORKERS: usize = 6;
    const SUBMISSIONS: u64 = 8;
    let server = TestServer::start_for_parked_claims().await;
    let waiting: Vec<_> = (0..WORKERS)
        .map(|n| parked_claim(&server, &format!("parked-{n}")))
        .collect();
    server.claims_parked(WORKERS).await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(SUBMISSIONS as usize));
    let submitters: Vec<_> = (0..SUBMISSIONS)
        .map(|n| {
            let mut client = server.raw();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                client
                    .submit_job(submission(Uuid::new_v4(), n))
                    .await
                    .unwrap()
                    .into_inner()
                    .job
                    .unwrap()
            })
        })
        .collect();
    let mut answered = Vec::new();
    for submitter in submitters {
        answered.push(submitter.await.unwrap());
    }
    let mut claimed = Vec::new();
    for claimer in waiting {
        let jobs = claimer.await.unwrap();
        assert_eq!(jobs.len(), 1, "each waiting worker gets exactly one job");
        claimed.push(jobs[0].job.clone().unwrap());
    }
    let claimed_ids: HashSet<&str> = claimed.iter().map(|job| job.id.as_str()).collect();
    assert_eq!(claimed_ids.len(), WORKERS, "no job is claimed twice");

    // A submission answered PROCESSING only for a job a worker was handed, and
    // then exactly as that worker got it. The first batch found every worker
    // parked, so some were.
    let mut handed = 0;
    for job in &answered {
        if job.status == pb::JobStatus::Processing as i32 {
            assert!(claimed.contains(job), "{job:?} was answered processing");
            handed += 1;
        } else {
            assert_eq!(job.status, pb::JobStatus::Queued as i32);
        }
    }
    assert!(handed >= 1, "no job was handed to a waiting worker");
    let processing: Vec<(String,)> = sqlx::query_as(
        "SELECT id::text FROM menu_extraction_jobs WHERE status = 'processing' ORDER BY id",
    )
    .fetch_all(&server.pool)
    .await
    .unwrap();
    let processing: HashSet<&str> = processing.iter().map(|(id,)| id.as_str()).collect();
    assert_eq!(processing, claimed_ids);
    assert_eq!(
        server.job_count().await,
        i64::try_from(SUBMISSIONS).unwrap()
    );
    server.claims_parked(0).await;
    server.stop().await;
}

#[tokio::test]
async fn a_vanished_workers_job_is_requeued_and_its_late_completion_refused() {
    let server =
        TestServer::start_configured(|config| config.reaper_interval = Duration::from_millis(100))
            .await;
    let user = Uuid::new_v4();
    let job = server
        .raw()
        .submit_job(submission(user, 1))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();

    let mut vanished = worker(&server);
    let first = vanished
        .claim_jobs(claim("vanished", 1, Duration::from_secs(1), Duration::ZERO))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].job.as_ref().unwrap().attempt, 1);

    // Another worker parks; the expired lease puts the job back and wakes it.
    let mut rescuer = worker(&server);
    let second = rescuer
        .claim_jobs(claim(
            "rescuer",
            1,
            Duration::from_secs(60),
            Duration::from_secs(10),
        ))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(second.len(), 1);
    let second_job = second[0].job.as_ref().unwrap();
    assert_eq!(
        (second_job.id.as_str(), second_job.attempt),
        (job.id.as_str(), 2)
    );
    assert_ne!(second[0].lease_id, first[0].lease_id);
    let done = rescuer
        .complete_job(complete(&second[0]))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(done.status(), pb::JobStatus::Completed);
    let version = done.version;

    // The first worker comes back: refused, and nothing changes.
    let late = vanished
        .complete_job(pb::CompleteJobRequest {
            result: Some(prost_types::Struct {
                fields: [(
                    "stale".to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::BoolValue(true)),
                    },
                )]
                .into(),
            }),
            ..complete(&first[0])
        })
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert_eq!(error_info(&late).0, "LEASE_LOST", "{late:?}");
    let late_fail = vanished
        .fail_job(pb::FailJobRequest {
            job_id: job.id.clone(),
            lease_id: first[0].lease_id.clone(),
            error_message: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error_info(&late_fail).0, "LEASE_LOST");
    // The worker that finished it, reporting again, is told the job is finished.
    let twice = rescuer
        .complete_job(complete(&second[0]))
        .await
        .unwrap_err();
    let (reason, metadata) = error_info(&twice);
    assert_eq!(
        (reason.as_str(), metadata["current_status"].as_str()),
        ("INVALID_STATUS", "JOB_STATUS_COMPLETED")
    );
    let after = server
        .raw()
        .get_job(pb::GetJobRequest {
            job_id: job.id.clone(),
            user_id: user.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(
        (after.status(), after.version),
        (pb::JobStatus::Completed, version)
    );
    assert!(!after.result.unwrap().fields.contains_key("stale"));
    server.stop().await;
}

#[tokio::test]
async fn a_stale_lease_on_a_running_job_is_lease_lost() {
    let server =
        TestServer::start_configured(|config| config.reaper_interval = Duration::from_millis(100))
            .await;
    let user = Uuid::new_v4();
    let job = server
        .raw()
        .submit_job(submission(user, 1))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let mut slow = worker(&server);
    let first = slow
        .claim_jobs(claim("slow", 1, Duration::from_secs(1), Duration::ZERO))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let mut fast = worker(&server);
    let second = fast
        .claim_jobs(claim(
            "fast",
            1,
            Duration::from_secs(60),
            Duration::from_secs(10),
        ))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(second[0].job.as_ref().unwrap().id, job.id);

    // While the second worker runs it, the first worker's lease is lost for every write.
    for status in [
        slow.complete_job(complete(&first[0])).await.unwrap_err(),
        slow.fail_job(pb::FailJobRequest {
            job_id: job.id.clone(),
            lease_id: first[0].lease_id.clone(),
            error_message: "late".into(),
        })
        .await
        .unwrap_err(),
        slow.heartbeat(pb::HeartbeatRequest {
            job_id: job.id.clone(),
            lease_id: first[0].lease_id.clone(),
            extend_by: None,
        })
        .await
        .unwrap_err(),
        slow.complete_job(pb::CompleteJobRequest {
            lease_id: Uuid::new_v4().to_string(),
            ..complete(&first[0])
        })
        .await
        .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(error_info(&status).0, "LEASE_LOST", "{status:?}");
    }
    assert_eq!(
        status_of(&server, &job.id).await,
        ("processing".to_owned(), 2)
    );
    let missing = slow
        .complete_job(pb::CompleteJobRequest {
            job_id: Uuid::new_v4().to_string(),
            ..complete(&first[0])
        })
        .await
        .unwrap_err();
    assert_eq!(error_info(&missing).0, "JOB_NOT_FOUND");
    server.stop().await;
}

#[tokio::test]
async fn after_the_last_allowed_expiry_the_job_fails_and_can_be_retried() {
    let server =
        TestServer::start_configured(|config| config.reaper_interval = Duration::from_millis(100))
            .await;
    let user = Uuid::new_v4();
    let job = server
        .raw()
        .submit_job(submission(user, 1))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let mut client = worker(&server);
    // Three claims whose leases expire; each later claim waits for the requeue.
    for attempt in 1..=3 {
        let claimed = client
            .claim_jobs(claim(
                &format!("doomed-{attempt}"),
                1,
                Duration::from_secs(1),
                Duration::from_secs(10),
            ))
            .await
            .unwrap()
            .into_inner()
            .jobs;
        assert_eq!(claimed[0].job.as_ref().unwrap().attempt, attempt);
    }
    // Wait for the third expiry through the change feed's own channel.
    let mut listener = sqlx::postgres::PgListener::connect(&server.db.url)
        .await
        .unwrap();
    listener.listen("menu_extraction_jobs").await.unwrap();
    while status_of(&server, &job.id).await.0 == "processing" {
        listener.recv().await.unwrap();
    }
    let failed = server
        .raw()
        .get_job(pb::GetJobRequest {
            job_id: job.id.clone(),
            user_id: user.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(
        (failed.status(), failed.attempt),
        (pb::JobStatus::Failed, 3)
    );
    assert!(
        failed
            .error_message
            .contains("lease expired after 3 attempts"),
        "{}",
        failed.error_message
    );
    assert!(
        failed.error_message.contains("doomed-3"),
        "{}",
        failed.error_message
    );

    let retry = server
        .raw()
        .retry_job(pb::RetryJobRequest {
            job_id: job.id.clone(),
            user_id: user.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(
        (retry.status(), retry.attempt, retry.retry_count),
        (pb::JobStatus::Queued, 0, 1)
    );
    server.stop().await;
}

#[tokio::test]
async fn heartbeats_keep_a_long_jobs_lease_alive() {
    let server =
        TestServer::start_configured(|config| config.reaper_interval = Duration::from_millis(100))
            .await;
    let user = Uuid::new_v4();
    let job = server
        .raw()
        .submit_job(submission(user, 1))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let mut client = worker(&server);
    let claimed = client
        .claim_jobs(claim("long", 1, Duration::from_secs(1), Duration::ZERO))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let lease = claimed[0].lease_id.clone();
    let first_expiry = claimed[0].lease_expires_at.unwrap();

    // A job that runs three times its lease, renewing it every 300 ms.
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(300));
    let mut last = first_expiry;
    while started.elapsed() < Duration::from_secs(3) {
        ticks.tick().await;
        let renewed = client
            .heartbeat(pb::HeartbeatRequest {
                job_id: job.id.clone(),
                lease_id: lease.clone(),
                extend_by: None,
            })
            .await
            .expect("the lease is still ours")
            .into_inner();
        assert!(!renewed.cancel_requested);
        last = renewed.lease_expires_at.unwrap();
    }
    assert!(
        (last.seconds, last.nanos) > (first_expiry.seconds + 2, first_expiry.nanos),
        "the lease moved on"
    );
    assert_eq!(
        status_of(&server, &job.id).await,
        ("processing".to_owned(), 1)
    );

    // An explicit extension, then the outcome, still under the first lease.
    let extended = client
        .heartbeat(pb::HeartbeatRequest {
            job_id: job.id.clone(),
            lease_id: lease.clone(),
            extend_by: Some(Duration::from_secs(600).try_into().unwrap()),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(extended.lease_expires_at.unwrap().seconds >= last.seconds + 590);
    let done = client
        .complete_job(complete(&claimed[0]))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!((done.status(), done.attempt), (pb::JobStatus::Completed, 1));
    let processing = done.processing_time.unwrap();
    assert!(
        processing.seconds >= 3,
        "processing_time measured by the server: {processing:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn complete_and_fail_store_what_the_worker_reports() {
    let server = TestServer::start().await;
    let user = Uuid::new_v4();
    let mut jobs = server.raw();
    let a = jobs
        .submit_job(submission(user, 1))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let b = jobs
        .submit_job(submission(user, 2))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let mut client = worker(&server);
    let claimed = client
        .claim_jobs(claim("w", 10, Duration::from_secs(60), Duration::ZERO))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(
        claimed
            .iter()
            .map(|c| c.job.as_ref().unwrap().id.clone())
            .collect::<Vec<_>>(),
        [a.id.clone(), b.id.clone()],
        "oldest first"
    );
    assert!(claimed.iter().all(
        |c| c.job.as_ref().unwrap().status() == pb::JobStatus::Processing
            && c.job.as_ref().unwrap().started_at.is_some()
    ));

    let result = serde_json::json!({"items": [{"name": "Soup", "price": 4.5}], "currency": "EUR"});
    let serde_json::Value::Object(result_object) = result.clone() else {
        unreachable!()
    };
    let done = client
        .complete_job(pb::CompleteJobRequest {
            result: Some(jobq_proto::json::json_to_struct(result_object)),
            token_usage: Some(pb::TokenUsage {
                input_tokens: 1200,
                output_tokens: 340,
                model: "vision-large".into(),
                cost_usd: 0.0123,
                extras: None,
            }),
            confidence: Some(0.87),
            uncertain_items: Some(jobq_proto::json::json_to_list(vec![serde_json::json!(
                "Soup price"
            )])),
            superfluous_text: Some(jobq_proto::json::json_to_list(vec![serde_json::json!(
                "Open daily"
            )])),
            ..complete(&claimed[0])
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(done.status(), pb::JobStatus::Completed);
    assert_eq!(
        jobq_proto::json::struct_to_json(done.result.unwrap()),
        result
    );
    let usage = done.token_usage.unwrap();
    assert_eq!(
        (
            usage.input_tokens,
            usage.output_tokens,
            usage.model.as_str(),
            usage.cost_usd
        ),
        (1200, 340, "vision-large", 0.0123)
    );
    assert_eq!(done.confidence, Some(0.87));
    assert_eq!(done.uncertain_items.unwrap().values.len(), 1);
    assert!(done.completed_at.is_some() && done.processing_time.is_some());

    let failed = client
        .fail_job(pb::FailJobRequest {
            job_id: b.id.clone(),
            lease_id: claimed[1].lease_id.clone(),
            error_message: "the photo is not a menu".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(
        (failed.status(), failed.error_message.as_str()),
        (pb::JobStatus::Failed, "the photo is not a menu")
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_worker_requests_name_the_field_and_change_nothing() {
    let server =
        TestServer::start_configured(|config| config.worker_limits.max_document_bytes = 2048).await;
    let user = Uuid::new_v4();
    server.raw().submit_job(submission(user, 1)).await.unwrap();
    let mut client = worker(&server);
    let ok = claim("w", 1, Duration::from_secs(60), Duration::ZERO);
    let claims = [
        (
            pb::ClaimJobsRequest {
                worker_id: String::new(),
                ..ok.clone()
            },
            "worker_id",
        ),
        (
            pb::ClaimJobsRequest {
                max_jobs: 0,
                ..ok.clone()
            },
            "max_jobs",
        ),
        (
            pb::ClaimJobsRequest {
                max_jobs: 101,
                ..ok.clone()
            },
            "max_jobs",
        ),
        (
            pb::ClaimJobsRequest {
                lease_duration: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 500_000_000,
                }),
                ..ok.clone()
            },
            "lease_duration",
        ),
        (
            pb::ClaimJobsRequest {
                lease_duration: Some(prost_types::Duration {
                    seconds: 7200,
                    nanos: 0,
                }),
                ..ok.clone()
            },
            "lease_duration",
        ),
        (
            pb::ClaimJobsRequest {
                wait: Some(prost_types::Duration {
                    seconds: 31,
                    nanos: 0,
                }),
                ..ok.clone()
            },
            "wait",
        ),
        (
            pb::ClaimJobsRequest {
                wait: Some(prost_types::Duration {
                    seconds: -1,
                    nanos: 0,
                }),
                ..ok.clone()
            },
            "wait",
        ),
    ];
    for (request, field) in claims {
        let status = client.claim_jobs(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
    assert_eq!(
        status_of_all(&server).await,
        ["queued"],
        "nothing was claimed"
    );

    let claimed = client.claim_jobs(ok).await.unwrap().into_inner().jobs;
    let big = prost_types::Struct {
        fields: [(
            "text".to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue("x".repeat(4096))),
            },
        )]
        .into(),
    };
    let completes = [
        (
            pb::CompleteJobRequest {
                result: Some(big),
                ..complete(&claimed[0])
            },
            "result",
        ),
        (
            pb::CompleteJobRequest {
                confidence: Some(1.5),
                ..complete(&claimed[0])
            },
            "confidence",
        ),
        (
            pb::CompleteJobRequest {
                lease_id: "lease".into(),
                ..complete(&claimed[0])
            },
            "lease_id",
        ),
        (
            pb::CompleteJobRequest {
                token_usage: Some(pb::TokenUsage {
                    input_tokens: -1,
                    ..Default::default()
                }),
                ..complete(&claimed[0])
            },
            "token_usage",
        ),
    ];
    for (request, field) in completes {
        let status = client.complete_job(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
    let empty_error = client
        .fail_job(pb::FailJobRequest {
            job_id: claimed[0].job.as_ref().unwrap().id.clone(),
            lease_id: claimed[0].lease_id.clone(),
            error_message: String::new(),
        })
        .await
        .unwrap_err();
    assert!(empty_error.message().contains("error_message"));
    assert_eq!(
        status_of_all(&server).await,
        ["processing"],
        "nothing was completed or failed"
    );
    server.stop().await;
}

async fn status_of_all(server: &TestServer) -> Vec<String> {
    sqlx::query_scalar("SELECT status FROM menu_extraction_jobs ORDER BY created_at")
        .fetch_all(&server.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn cancel_queued_processing_and_finished_jobs() {
    let server = TestServer::start().await;
    let user = Uuid::new_v4();
    let mut jobs = server.raw();
    let queued = jobs
        .submit_job(submission(user, 1))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let cancel = |job_id: &str, user_id: Uuid| pb::CancelJobRequest {
        job_id: job_id.to_owned(),
        user_id: user_id.to_string(),
    };

    // Queued: cancelled at once, never claimed.
    let cancelled = jobs
        .cancel_job(cancel(&queued.id, user))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(cancelled.status(), pb::JobStatus::Cancelled);
    assert!(cancelled.completed_at.is_some());
    let mut client = worker(&server);
    let nothing = client
        .claim_jobs(claim("w", 10, Duration::from_secs(60), Duration::ZERO))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(nothing.is_empty());

    // Processing: marked; the worker sees it on heartbeat; its outcome settles it as cancelled.
    let running = jobs
        .submit_job(submission(user, 2))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let claimed = client
        .claim_jobs(claim("w", 1, Duration::from_secs(60), Duration::ZERO))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let marked = jobs
        .cancel_job(cancel(&running.id, user))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(
        (marked.status(), marked.cancel_requested),
        (pb::JobStatus::Processing, true)
    );
    let beat = client
        .heartbeat(pb::HeartbeatRequest {
            job_id: running.id.clone(),
            lease_id: claimed[0].lease_id.clone(),
            extend_by: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(beat.cancel_requested);
    let settled = client
        .fail_job(pb::FailJobRequest {
            job_id: running.id.clone(),
            lease_id: claimed[0].lease_id.clone(),
            error_message: "stopped: cancel requested".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(settled.status(), pb::JobStatus::Cancelled);

    // A completing worker settles a cancel-requested job as cancelled too.
    let third = jobs
        .submit_job(submission(user, 3))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let claimed = client
        .claim_jobs(claim("w", 1, Duration::from_secs(60), Duration::ZERO))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    jobs.cancel_job(cancel(&third.id, user)).await.unwrap();
    let settled = client
        .complete_job(complete(&claimed[0]))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(settled.status(), pb::JobStatus::Cancelled);

    // Finished: INVALID_STATUS with the status; another user's: NOT_FOUND.
    for finished in [&queued.id, &running.id, &third.id] {
        let status = jobs.cancel_job(cancel(finished, user)).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition);
        let (reason, metadata) = error_info(&status);
        assert_eq!(
            (reason.as_str(), metadata["current_status"].as_str()),
            ("INVALID_STATUS", "JOB_STATUS_CANCELLED")
        );
    }
    let other = jobs
        .submit_job(submission(user, 4))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let status = jobs
        .cancel_job(cancel(&other.id, Uuid::new_v4()))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), error_info(&status).0.as_str()),
        (Code::NotFound, "JOB_NOT_FOUND")
    );
    assert_eq!(status_of(&server, &other.id).await.0, "queued");
    server.stop().await;
}

#[tokio::test]
async fn a_parked_claim_answers_before_the_callers_deadline() {
    let server = TestServer::start().await;
    let mut client = worker(&server);

    // A 10 s wait under a 1 s deadline answers (empty) before the deadline.
    let mut request = tonic::Request::new(claim(
        "hurried",
        1,
        Duration::from_secs(60),
        Duration::from_secs(10),
    ));
    request.set_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let answer = client
        .claim_jobs(request)
        .await
        .expect("an answer, not DEADLINE_EXCEEDED");
    assert!(answer.into_inner().jobs.is_empty());
    assert!(started.elapsed() < Duration::from_secs(1));

    server.stop().await;
}

/// Queues `count` jobs of one new user, oldest first.
async fn queue_jobs(server: &TestServer, count: u64) {
    let user = Uuid::new_v4();
    let mut jobs = server.raw();
    for n in 0..count {
        jobs.submit_job(submission(user, n)).await.unwrap();
    }
}

/// Concurrent completions share statements (a batch): each job must get its own
/// completion's values, and a completion under another job's lease must be
/// refused without touching either job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_completions_each_store_their_own_result() {
    let server = TestServer::start().await;
    queue_jobs(&server, 60).await;
    let claimed = worker(&server)
        .claim_jobs(claim("w", 60, Duration::from_secs(300), Duration::ZERO))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(claimed.len(), 60);

    // Jobs 0..50 are completed under their own lease, each with a result and
    // a confidence naming it; jobs 50..60 swap leases in pairs (50 sends 51's,
    // 51 sends 50's, ...), so each batch may hold both leases, neither under
    // its own job.
    let calls = claimed.iter().enumerate().map(|(n, job)| {
        let mut client = worker(&server);
        let id = job.job.as_ref().unwrap().id.clone();
        let lease_id = if n < 50 {
            job.lease_id.clone()
        } else {
            claimed[n ^ 1].lease_id.clone()
        };
        let serde_json::Value::Object(result) = serde_json::json!({"job": id}) else {
            unreachable!()
        };
        let request = pb::CompleteJobRequest {
            job_id: id,
            lease_id,
            result: Some(jobq_proto::json::json_to_struct(result)),
            confidence: Some(n as f32 / 100.0),
            ..Default::default()
        };
        async move { client.complete_job(request).await }
    });
    let outcomes = futures::future::join_all(calls).await;

    for (n, (outcome, job)) in outcomes.into_iter().zip(&claimed).enumerate() {
        let id = &job.job.as_ref().unwrap().id;
        if n < 50 {
            let done = outcome.unwrap().into_inner().job.unwrap();
            assert_eq!(&done.id, id);
            assert_eq!(done.status(), pb::JobStatus::Completed);
            assert_eq!(done.confidence, Some(n as f32 / 100.0), "job {n}");
        } else {
            let status = outcome.unwrap_err();
            assert_eq!(
                status.code(),
                Code::FailedPrecondition,
                "job {n}: {status:?}"
            );
            assert_eq!(error_info(&status).0, "LEASE_LOST", "job {n}");
        }
    }
    let stored: Vec<(String, String, Option<serde_json::Value>, Option<f32>)> =
        sqlx::query_as("SELECT id::text, status, result, confidence FROM menu_extraction_jobs")
            .fetch_all(&server.pool)
            .await
            .unwrap();
    for (id, status, result, confidence) in stored {
        let n = claimed
            .iter()
            .position(|job| job.job.as_ref().unwrap().id == id)
            .unwrap();
        if n < 50 {
            assert_eq!(status, "completed", "job {n}");
            assert_eq!(result, Some(serde_json::json!({"job": id})), "job {n}");
            assert_eq!(confidence, Some(n as f32 / 100.0), "job {n}");
        } else {
            assert_eq!(
                (status.as_str(), result, confidence),
                ("processing", None, None),
                "job {n}"
            );
        }
    }
    server.stop().await;
}

/// Concurrent claims share statements (a batch): each caller still gets at most
/// its max_jobs, under its own worker id and lease length, oldest first, and no
/// job goes to two callers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_each_get_their_own_share_under_their_own_lease() {
    let server = TestServer::start().await;
    queue_jobs(&server, 150).await;
    // Twenty claimers asking for 1 to 20 jobs (210 in all) with leases of
    // 100 to 119 seconds.
    let calls = (0..20_i32).map(|i| {
        let mut client = worker(&server);
        let request = claim(
            &format!("claimer-{i}"),
            i + 1,
            Duration::from_secs(100 + i as u64),
            Duration::ZERO,
        );
        async move {
            (
                i,
                client.claim_jobs(request).await.unwrap().into_inner().jobs,
            )
        }
    });
    let answers = futures::future::join_all(calls).await;

    let mut seen = HashSet::new();
    for (i, claimed) in &answers {
        assert!(
            claimed.len() <= (*i + 1) as usize,
            "claimer {i} got {}",
            claimed.len()
        );
        let created: Vec<_> = claimed
            .iter()
            .map(|c| {
                let job = c.job.as_ref().unwrap();
                let created = job.created_at.unwrap();
                (created.seconds, created.nanos, job.id.clone())
            })
            .collect();
        let mut sorted = created.clone();
        sorted.sort();
        assert_eq!(created, sorted, "claimer {i}: oldest first");
        for c in claimed {
            assert!(
                seen.insert(c.job.as_ref().unwrap().id.clone()),
                "claimed twice"
            );
        }
    }
    assert_eq!(
        seen.len(),
        150,
        "every queued job claimed, by one caller each"
    );

    // Each job is held under its claimer's worker id and lease length.
    let stored: Vec<(String, Option<String>, Option<i64>, f64)> = sqlx::query_as(
        "SELECT id::text, worker_id, lease_duration_ms,
                EXTRACT(EPOCH FROM lease_expires_at - started_at)::float8
         FROM menu_extraction_jobs",
    )
    .fetch_all(&server.pool)
    .await
    .unwrap();
    for (id, worker_id, lease_ms, lease_seconds) in stored {
        let (i, _) = answers
            .iter()
            .find(|(_, claimed)| claimed.iter().any(|c| c.job.as_ref().unwrap().id == id))
            .unwrap();
        assert_eq!(worker_id.as_deref(), Some(format!("claimer-{i}").as_str()));
        assert_eq!(lease_ms, Some((100 + i64::from(*i)) * 1000));
        assert!(
            (lease_seconds - (100.0 + f64::from(*i))).abs() < 0.01,
            "{lease_seconds}"
        );
    }
    server.stop().await;
}

/// A CompleteJobs result's error as the status a lone CompleteJob would have
/// failed with (code, message and details).
fn result_error(result: &pb::CompleteJobsResult) -> tonic::Status {
    use prost::Message;
    match &result.outcome {
        Some(pb::complete_jobs_result::Outcome::Error(status)) => tonic::Status::with_details(
            status.code.into(),
            status.message.clone(),
            status.encode_to_vec().into(),
        ),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn result_job(result: &pb::CompleteJobsResult) -> &pb::Job {
    match &result.outcome {
        Some(pb::complete_jobs_result::Outcome::Job(job)) => job,
        other => panic!("expected a job, got {other:?}"),
    }
}

fn with_result(
    mut completion: pb::CompleteJobRequest,
    result: serde_json::Value,
) -> pb::CompleteJobRequest {
    let serde_json::Value::Object(result) = result else {
        panic!("a result is an object")
    };
    completion.result = Some(jobq_proto::json::json_to_struct(result));
    completion
}

/// CompleteJobs: each completion is applied or refused on its own, and each
/// refusal is the status CompleteJob would have returned (code, message,
/// ErrorInfo), in the request's order.
#[tokio::test]
async fn complete_jobs_answers_each_completion_on_its_own() {
    let server = TestServer::start().await;
    let user = Uuid::new_v4();
    for n in 0..5 {
        server.raw().submit_job(submission(user, n)).await.unwrap();
    }
    let claimed = worker(&server)
        .claim_jobs(claim("w", 5, Duration::from_secs(300), Duration::ZERO))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(claimed.len(), 5);
    let id = |n: usize| claimed[n].job.as_ref().unwrap().id.clone();
    // Job 0 finished before the batch; job 4's owner asks to cancel it.
    worker(&server)
        .complete_job(complete(&claimed[0]))
        .await
        .unwrap();
    server
        .raw()
        .cancel_job(pb::CancelJobRequest {
            job_id: id(4),
            user_id: user.to_string(),
        })
        .await
        .unwrap();

    let unknown = Uuid::new_v4().to_string();
    let batch = vec![
        complete(&claimed[0]),
        with_result(complete(&claimed[1]), serde_json::json!({"n": 1})),
        pb::CompleteJobRequest {
            lease_id: Uuid::new_v4().to_string(),
            ..complete(&claimed[2])
        },
        pb::CompleteJobRequest {
            job_id: unknown.clone(),
            ..complete(&claimed[3])
        },
        pb::CompleteJobRequest {
            confidence: Some(0.25),
            ..complete(&claimed[3])
        },
        complete(&claimed[4]),
    ];
    let results = worker(&server)
        .complete_jobs(pb::CompleteJobsRequest { completions: batch })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 6);

    let finished = result_error(&results[0]);
    assert_eq!(finished.code(), Code::FailedPrecondition);
    let (reason, metadata) = error_info(&finished);
    assert_eq!(reason, "INVALID_STATUS");
    assert_eq!(metadata["current_status"], "JOB_STATUS_COMPLETED");
    // The same status, message included, as CompleteJob gives for it.
    let alone = worker(&server)
        .complete_job(complete(&claimed[0]))
        .await
        .unwrap_err();
    assert_eq!(
        (alone.code(), alone.message()),
        (finished.code(), finished.message())
    );

    let one = result_job(&results[1]);
    assert_eq!(
        (one.id.clone(), one.status()),
        (id(1), pb::JobStatus::Completed)
    );
    let lost = result_error(&results[2]);
    assert_eq!(
        (lost.code(), error_info(&lost).0.as_str()),
        (Code::FailedPrecondition, "LEASE_LOST")
    );
    let missing = result_error(&results[3]);
    assert_eq!(
        (missing.code(), error_info(&missing).0.as_str()),
        (Code::NotFound, "JOB_NOT_FOUND")
    );
    let three = result_job(&results[4]);
    assert_eq!(
        (three.id.clone(), three.status(), three.confidence),
        (id(3), pb::JobStatus::Completed, Some(0.25))
    );
    let four = result_job(&results[5]);
    assert_eq!(
        (four.id.clone(), four.status()),
        (id(4), pb::JobStatus::Cancelled)
    );

    let stored: Vec<(String, String, Option<serde_json::Value>)> = sqlx::query_as(
        "SELECT id::text, status, result FROM menu_extraction_jobs ORDER BY created_at, id",
    )
    .fetch_all(&server.pool)
    .await
    .unwrap();
    let stored_of = |n: usize| {
        stored
            .iter()
            .find(|(job, _, _)| *job == id(n))
            .map(|(_, status, result)| (status.as_str(), result.clone()))
            .unwrap()
    };
    assert_eq!(
        stored_of(1),
        ("completed", Some(serde_json::json!({"n": 1})))
    );
    assert_eq!(
        stored_of(2),
        ("processing", None),
        "a lost lease changes nothing"
    );
    assert_eq!(stored_of(3).0, "completed");
    assert_eq!(stored_of(4).0, "cancelled");
    assert_eq!(stored.len(), 5, "the unknown job was not created");
    server.stop().await;
}

/// A bad field anywhere in a CompleteJobs call refuses all of it, naming each
/// bad field with its place; nothing is written.
#[tokio::test]
async fn a_bad_completion_refuses_the_whole_batch_and_writes_nothing() {
    let server = TestServer::start().await;
    queue_jobs(&server, 3).await;
    let claimed = worker(&server)
        .claim_jobs(claim("w", 3, Duration::from_secs(300), Duration::ZERO))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let refused = |completions: Vec<pb::CompleteJobRequest>| {
        let mut client = worker(&server);
        async move {
            let status = client
                .complete_jobs(pb::CompleteJobsRequest { completions })
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert_eq!(error_info(&status).0, "INVALID_ARGUMENT");
            use tonic_types::StatusExt;
            let fields: Vec<String> = status
                .get_error_details()
                .bad_request()
                .unwrap()
                .field_violations
                .iter()
                .map(|violation| violation.field.clone())
                .collect();
            fields
        }
    };

    let fields = refused(vec![
        complete(&claimed[0]),
        pb::CompleteJobRequest {
            confidence: Some(2.0),
            ..complete(&claimed[1])
        },
        complete(&claimed[0]),
        pb::CompleteJobRequest {
            lease_id: "not-a-uuid".into(),
            ..complete(&claimed[2])
        },
    ])
    .await;
    assert_eq!(
        fields,
        [
            "completions[1].confidence",
            "completions[2].job_id",
            "completions[3].lease_id"
        ]
    );
    assert_eq!(refused(Vec::new()).await, ["completions"]);
    let too_many = (0..101)
        .map(|_| pb::CompleteJobRequest {
            job_id: Uuid::new_v4().to_string(),
            lease_id: Uuid::new_v4().to_string(),
            ..Default::default()
        })
        .collect();
    assert_eq!(refused(too_many).await, ["completions"]);

    for job in &claimed {
        let (status, _) = status_of(&server, &job.job.as_ref().unwrap().id).await;
        assert_eq!(status, "processing", "nothing written");
    }
    // The valid part alone then goes through.
    let results = worker(&server)
        .complete_jobs(pb::CompleteJobsRequest {
            completions: claimed.iter().map(complete).collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    for result in &results {
        assert_eq!(result_job(result).status(), pb::JobStatus::Completed);
    }
    server.stop().await;
}

/// Eight workers at once each report the same 40 jobs in one CompleteJobs
/// call, each with its own result: every job is completed exactly once, by
/// exactly one of them, and stores that one's result; every other report of
/// it is INVALID_STATUS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_of_the_same_jobs_complete_each_job_once() {
    let server = TestServer::start().await;
    queue_jobs(&server, 40).await;
    let claimed = worker(&server)
        .claim_jobs(claim("w", 40, Duration::from_secs(300), Duration::ZERO))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(claimed.len(), 40);
    // Connected before the race, so that the calls leave together.
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut client = worker(&server);
        client
            .complete_jobs(pb::CompleteJobsRequest::default())
            .await
            .unwrap_err();
        clients.push(client);
    }
    let calls = clients.into_iter().enumerate().map(|(caller, mut client)| {
        let completions = claimed
            .iter()
            .map(|job| with_result(complete(job), serde_json::json!({"caller": caller})))
            .collect();
        tokio::spawn(async move {
            client
                .complete_jobs(pb::CompleteJobsRequest { completions })
                .await
                .unwrap()
                .into_inner()
                .results
        })
    });
    let answers = futures::future::join_all(calls).await;

    let mut winner = vec![None; claimed.len()];
    for (caller, results) in answers.into_iter().enumerate() {
        let results = results.unwrap();
        assert_eq!(results.len(), claimed.len());
        for (n, result) in results.iter().enumerate() {
            match &result.outcome {
                Some(pb::complete_jobs_result::Outcome::Job(job)) => {
                    assert_eq!(job.status(), pb::JobStatus::Completed);
                    assert!(
                        winner[n].replace(caller).is_none(),
                        "job {n} completed twice"
                    );
                }
                _ => assert_eq!(
                    error_info(&result_error(result)).0,
                    "INVALID_STATUS",
                    "job {n}"
                ),
            }
        }
    }
    for (job, winner) in claimed.iter().zip(winner) {
        let winner = winner.expect("every job completed by one caller");
        let stored: serde_json::Value =
            sqlx::query_scalar("SELECT result FROM menu_extraction_jobs WHERE id = $1::uuid")
                .bind(&job.job.as_ref().unwrap().id)
                .fetch_one(&server.pool)
                .await
                .unwrap();
        assert_eq!(stored, serde_json::json!({"caller": winner}));
    }
    server.stop().await;
}

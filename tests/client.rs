//! The client crate against a real server: every typed error decoded from a real
//! answer, and the typed results of CheckQuota, RetryJob and the plan calls.

mod common;

use std::time::{Duration, SystemTime};

use common::{TestServer, set_status, sha};
use jobq_client::{AdminClient, Error, JobQueueClient, JobStatus, SubmitJob};
use jobq_server::plans::Plans;
use uuid::Uuid;

fn photo(user: Uuid, n: u64) -> SubmitJob {
    SubmitJob::new(user, format!("https://storage.example/{n}.jpg"), sha(n))
}

#[tokio::test]
async fn every_typed_error_is_decoded_from_a_real_answer() {
    let plans = Plans::parse("[plans.free]\nmonthly_jobs = 2\nhourly_jobs = 10\n[plans.burst]\nmonthly_jobs = 100\nhourly_jobs = 1\n").unwrap();
    let server = TestServer::start_with_plans(plans).await;
    let client = JobQueueClient::connect(server.url()).await.unwrap();
    let admin = AdminClient::connect(server.url()).await.unwrap();
    let user = Uuid::new_v4();

    // QuotaExceeded
    let first = client.submit_job(photo(user, 1)).await.unwrap().job;
    client.submit_job(photo(user, 2)).await.unwrap();
    let error = client.submit_job(photo(user, 3)).await.unwrap_err();
    let Error::QuotaExceeded {
        used,
        limit,
        resets_at,
    } = error
    else {
        panic!("{error:?}")
    };
    assert_eq!((used, limit), (2, 2));
    let resets_at = resets_at.expect("resets_at");
    assert!(
        resets_at > SystemTime::now()
            && resets_at <= SystemTime::now() + Duration::from_secs(32 * 86_400)
    );

    // RateLimited
    let bursty = Uuid::new_v4();
    assert_eq!(admin.set_user_plan(bursty, "burst").await.unwrap(), "burst");
    assert_eq!(admin.get_user_plan(bursty).await.unwrap(), "burst");
    client.submit_job(photo(bursty, 1)).await.unwrap();
    let error = client.submit_job(photo(bursty, 2)).await.unwrap_err();
    assert_eq!(error.reason(), Some("RATE_LIMIT_EXCEEDED"));
    let Error::RateLimited {
        used,
        limit,
        retry_after,
    } = error
    else {
        panic!("{error:?}")
    };
    assert_eq!((used, limit), (1, 1));
    let retry_after = retry_after.expect("a delay");
    assert!(
        retry_after > Duration::from_secs(3500) && retry_after <= Duration::from_secs(3600),
        "{retry_after:?}"
    );

    // JobNotFound
    let error = client.get_job(Uuid::new_v4(), first.id).await.unwrap_err();
    assert!(matches!(error, Error::JobNotFound), "{error:?}");

    // InvalidStatus
    let error = client.retry_job(user, first.id).await.unwrap_err();
    let Error::InvalidStatus { current } = error else {
        panic!("{error:?}")
    };
    assert_eq!(current, JobStatus::Queued);

    // MaxRetriesExceeded
    set_status(&server.pool, &first.id.to_string(), "failed", 3).await;
    let error = client.retry_job(user, first.id).await.unwrap_err();
    let Error::MaxRetriesExceeded { retry_count } = error else {
        panic!("{error:?}")
    };
    assert_eq!(retry_count, 3);

    // InvalidArgument
    let error = admin.set_user_plan(user, "platinum").await.unwrap_err();
    let Error::InvalidArgument { violations, .. } = error else {
        panic!("{error:?}")
    };
    assert_eq!(violations[0].field, "plan");
    server.stop().await;
}

#[tokio::test]
async fn typed_results_of_quota_and_retry() {
    let server = TestServer::start_with_plans(Plans::builtin()).await;
    let client = JobQueueClient::connect(server.url()).await.unwrap();
    let user = Uuid::new_v4();

    let quota = client.check_quota(user).await.unwrap();
    assert_eq!(
        (quota.plan.as_str(), quota.allowed, quota.reason.as_deref()),
        ("free", true, None)
    );
    assert_eq!((quota.monthly.used, quota.monthly.limit), (0, Some(5)));
    assert!(
        quota.monthly.resets_at.is_some(),
        "the month always has a next start"
    );
    assert_eq!(
        (
            quota.hourly.used,
            quota.hourly.limit,
            quota.hourly.resets_at
        ),
        (0, Some(10), None)
    );

    let job = client.submit_job(photo(user, 1)).await.unwrap().job;
    set_status(&server.pool, &job.id.to_string(), "failed", 0).await;
    let retry = client.retry_job(user, job.id).await.unwrap();
    assert_eq!(
        (retry.retry_count, retry.retry_of_job_id, retry.status),
        (1, Some(job.id), JobStatus::Queued)
    );

    let quota = client.check_quota(user).await.unwrap();
    assert_eq!((quota.monthly.used, quota.hourly.used), (1, 1));
    assert_eq!(
        quota.hourly.resets_at.unwrap(),
        job.created_at + Duration::from_secs(3600),
        "the hour frees when the job leaves it"
    );

    let enterprise = Uuid::new_v4();
    AdminClient::from_channel(server.channel())
        .set_user_plan(enterprise, "enterprise")
        .await
        .unwrap();
    let quota = client.check_quota(enterprise).await.unwrap();
    assert_eq!(
        (quota.plan.as_str(), quota.monthly.limit),
        ("enterprise", None)
    );
    server.stop().await;
}

#[tokio::test]
async fn watch_jobs_and_wait_for_job() {
    use futures::StreamExt;
    use jobq_client::{EventKind, WaitOptions, WatchJobs};
    use jobq_proto::pb;
    use std::sync::{Arc, Mutex};

    let server = TestServer::start().await;
    let client = JobQueueClient::connect(server.url()).await.unwrap();
    let user = Uuid::new_v4();
    let first = client.submit_job(photo(user, 1)).await.unwrap().job;

    let mut events = std::pin::pin!(client.watch_jobs(WatchJobs::user(user)));
    let snapshot = tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .expect("an event within 30 s")
        .unwrap()
        .unwrap();
    assert_eq!(
        (snapshot.kind, snapshot.job.id),
        (EventKind::Snapshot, first.id)
    );
    let second = client.submit_job(photo(user, 2)).await.unwrap().job;
    let created = tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .expect("an event within 30 s")
        .unwrap()
        .unwrap();
    assert_eq!(
        (created.kind, created.job.id, created.job.status),
        (EventKind::Created, second.id, JobStatus::Queued)
    );
    assert!(!created.resume_token.is_empty());

    // wait_for_job follows the job to its end, reporting each state.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (first_state, mut first_state_rx) = tokio::sync::mpsc::unbounded_channel();
    let waiting = {
        let client = client.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            let options = WaitOptions::new(Duration::from_secs(30)).on_update(move |job| {
                seen.lock().unwrap().push(job.status);
                let _ = first_state.send(job.status);
            });
            client.wait_for_job(user, first.id, options).await
        })
    };
    // Drive the job once the waiter has seen it queued.
    assert_eq!(first_state_rx.recv().await, Some(JobStatus::Queued));
    let mut worker = pb::worker_service_client::WorkerServiceClient::new(server.channel());
    let claimed = worker
        .claim_jobs(pb::ClaimJobsRequest {
            worker_id: "w".into(),
            max_jobs: 1,
            lease_duration: None,
            wait: None,
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(claimed[0].job.as_ref().unwrap().id, first.id.to_string());
    worker
        .complete_job(pb::CompleteJobRequest {
            job_id: first.id.to_string(),
            lease_id: claimed[0].lease_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let done = waiting.await.unwrap().unwrap();
    assert_eq!((done.id, done.status), (first.id, JobStatus::Completed));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.first(), Some(&JobStatus::Queued));
    assert_eq!(seen.last(), Some(&JobStatus::Completed));

    // A job that never finishes: a typed timeout with its last status.
    let error = client
        .wait_for_job(
            user,
            second.id,
            WaitOptions::new(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    let Error::Timeout {
        job_id,
        last_status,
    } = error
    else {
        panic!("{error:?}")
    };
    assert_eq!((job_id, last_status), (second.id, JobStatus::Queued));

    // Another user's job is not found, not waited for.
    let error = client
        .wait_for_job(
            Uuid::new_v4(),
            second.id,
            WaitOptions::new(Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, Error::JobNotFound), "{error:?}");
    server.stop().await;
}

/// The original pollJobStatus semantics, for callers that cannot stream:
/// GetJob up to max_attempts times, interval apart, on_update on every read, a
/// typed timeout after the last.
#[tokio::test]
async fn polling_wait_reads_the_job_max_attempts_times() {
    use jobq_client::{ClaimJobs, Completion, WaitOptions};
    use std::sync::{Arc, Mutex};

    let server = TestServer::start().await;
    let client = JobQueueClient::connect(server.url()).await.unwrap();
    let user = Uuid::new_v4();
    let job = client.submit_job(photo(user, 1)).await.unwrap().job;

    let reads = Arc::new(Mutex::new(Vec::new()));
    let seen = reads.clone();
    let options = WaitOptions::polling(3, Duration::from_millis(20))
        .on_update(move |job| seen.lock().unwrap().push(job.status));
    let error = client
        .wait_for_job(user, job.id, options)
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Timeout { job_id, last_status: JobStatus::Queued } if job_id == job.id),
        "{error:?}"
    );
    assert_eq!(*reads.lock().unwrap(), vec![JobStatus::Queued; 3]);

    // Finished jobs end the polling at the first read that sees them.
    let worker = client.worker();
    let claimed = worker
        .claim_jobs(&ClaimJobs::new("poller", 1))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let mut menu = serde_json::Map::new();
    menu.insert("items".into(), serde_json::json!(["soup"]));
    worker
        .complete_job(&claimed[0].lease, Completion::new(menu).confidence(0.5))
        .await
        .unwrap();
    let done = client
        .wait_for_job(
            user,
            job.id,
            WaitOptions::polling(3, Duration::from_millis(20)),
        )
        .await
        .unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.result.unwrap()["items"][0], "soup");
    assert_eq!(done.confidence, Some(0.5));

    // A second report under the same lease changes nothing and says why.
    let again = worker
        .fail_job(&claimed[0].lease, "late")
        .await
        .unwrap_err();
    assert!(
        matches!(
            again,
            Error::InvalidStatus {
                current: JobStatus::Completed
            }
        ),
        "{again:?}"
    );
    server.stop().await;
}

/// CancelJob through the client, and the worker calls' typed errors: a lease that
/// is not the job's current one is LeaseLost; a cancel request reaches Heartbeat.
#[tokio::test]
async fn cancel_and_the_worker_calls_are_typed() {
    use jobq_client::{ClaimJobs, Lease};

    let server = TestServer::start().await;
    let client = JobQueueClient::connect(server.url()).await.unwrap();
    let user = Uuid::new_v4();
    let queued = client.submit_job(photo(user, 1)).await.unwrap().job;
    let cancelled = client.cancel_job(user, queued.id).await.unwrap();
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    let again = client.cancel_job(user, queued.id).await.unwrap_err();
    assert!(
        matches!(
            again,
            Error::InvalidStatus {
                current: JobStatus::Cancelled
            }
        ),
        "{again:?}"
    );
    let missing = client
        .cancel_job(Uuid::new_v4(), queued.id)
        .await
        .unwrap_err();
    assert!(matches!(missing, Error::JobNotFound), "{missing:?}");

    let running = client.submit_job(photo(user, 2)).await.unwrap().job;
    let worker = client.worker();
    let claimed = worker
        .claim_jobs(&ClaimJobs::new("typed", 5).lease(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let lease = &claimed[0].lease;
    assert_eq!(lease.job_id, running.id);
    assert_eq!(claimed[0].job.attempt, 1);
    let renewed = worker.heartbeat(lease, None).await.unwrap();
    assert!(!renewed.cancel_requested);
    assert!(renewed.expires_at > SystemTime::now() + Duration::from_secs(20));

    client.cancel_job(user, running.id).await.unwrap();
    let renewed = worker
        .heartbeat(lease, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(renewed.cancel_requested);

    let forged = Lease {
        lease_id: Uuid::new_v4(),
        ..lease.clone()
    };
    let lost = worker.fail_job(&forged, "not mine").await.unwrap_err();
    assert!(matches!(lost, Error::LeaseLost), "{lost:?}");
    let settled = worker.fail_job(lease, "stopped").await.unwrap();
    assert_eq!(settled.status, JobStatus::Cancelled);

    // Bad claims name the field.
    let bad = worker.claim_jobs(&ClaimJobs::new("", 0)).await.unwrap_err();
    let Error::InvalidArgument { violations, .. } = bad else {
        panic!("{bad:?}")
    };
    let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(fields, ["worker_id", "max_jobs"]);
    server.stop().await;
}

/// CompleteJobs through the client: one outcome per completion, in order, each
/// refusal the typed error CompleteJob would have given; a bad field of any
/// completion is the whole call's InvalidArgument.
#[tokio::test]
async fn complete_jobs_gives_each_completion_its_typed_outcome() {
    use jobq_client::{ClaimJobs, Completion, Lease};

    let server = TestServer::start().await;
    let client = JobQueueClient::connect(server.url()).await.unwrap();
    let user = Uuid::new_v4();
    for n in 0..3 {
        client.submit_job(photo(user, n)).await.unwrap();
    }
    let worker = client.worker();
    let claimed = worker
        .claim_jobs(&ClaimJobs::new("batch", 3))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    let forged = Lease {
        lease_id: Uuid::new_v4(),
        ..claimed[1].lease.clone()
    };
    let never = Lease {
        job_id: Uuid::new_v4(),
        ..claimed[2].lease.clone()
    };
    let menu = |n: u64| {
        let mut menu = serde_json::Map::new();
        menu.insert("n".into(), n.into());
        Completion::new(menu)
    };

    let bad = worker
        .complete_jobs([
            (&claimed[0].lease, menu(0)),
            (&claimed[1].lease, menu(1).confidence(7.0)),
        ])
        .await
        .unwrap_err();
    let Error::InvalidArgument { violations, .. } = bad else {
        panic!("{bad:?}")
    };
    let fields: Vec<_> = violations.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(fields, ["completions[1].confidence"]);

    let outcomes = worker
        .complete_jobs([
            (&claimed[0].lease, menu(0)),
            (&forged, menu(1)),
            (&never, menu(2)),
            (&claimed[2].lease, menu(2).confidence(0.5)),
        ])
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 4);
    let done = outcomes[0].as_ref().unwrap();
    assert_eq!(
        (done.id, done.status),
        (claimed[0].job.id, JobStatus::Completed)
    );
    assert_eq!(done.result, Some(serde_json::json!({"n": 0})));
    assert!(
        matches!(outcomes[1], Err(Error::LeaseLost)),
        "{:?}",
        outcomes[1]
    );
    assert!(
        matches!(outcomes[2], Err(Error::JobNotFound)),
        "{:?}",
        outcomes[2]
    );
    let done = outcomes[3].as_ref().unwrap();
    assert_eq!((done.id, done.confidence), (claimed[2].job.id, Some(0.5)));

    // Reported again: each is now finished under its own lease.
    let again = worker
        .complete_jobs([(&claimed[0].lease, menu(0))])
        .await
        .unwrap();
    assert!(
        matches!(
            again[0],
            Err(Error::InvalidStatus {
                current: JobStatus::Completed
            })
        ),
        "{:?}",
        again[0]
    );
    server.stop().await;
}

/// Every unary call carries the client's deadline; `with_timeout` changes it for
/// one use, and a call past its deadline fails at once instead of hanging (and
/// is not retried).
#[tokio::test]
async fn calls_carry_their_deadline() {
    use sqlx::Connection;

    let server = TestServer::start().await;
    let client = JobQueueClient::builder(server.url())
        .timeout(Duration::from_secs(30))
        .build()
        .await
        .unwrap();
    let user = Uuid::new_v4();
    // Hold the user's submission lock, so that CheckQuota waits on it.
    let mut holder = sqlx::PgConnection::connect(&server.db.url).await.unwrap();
    let mut tx = holder.begin().await.unwrap();
    let (high, low) = user.as_u64_pair();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(i64::from_ne_bytes((high ^ low).to_ne_bytes()))
        .execute(&mut *tx)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let error = client
        .with_timeout(Duration::from_millis(300))
        .check_quota(user)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    let Error::Status(status) = &error else {
        panic!("expected DEADLINE_EXCEEDED, got {error:?} after {elapsed:?}")
    };
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3),
        "one attempt, cut at its deadline: {elapsed:?}"
    );

    tx.rollback().await.unwrap();
    // The original client keeps its own deadline.
    let quota = client.check_quota(user).await.unwrap();
    assert!(quota.allowed);
    server.stop().await;
}

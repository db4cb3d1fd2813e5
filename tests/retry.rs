//! RetryJob: only failed jobs, at most three retries, one retry per failed job even
//! under concurrency, another user's job hidden, and retries free of every limit.

mod common;

use common::{TestServer, all_at_once, error_info, set_status, submission, warm_clients};
use jobq_proto::pb;
use jobq_server::plans::Plans;
use tonic::Code;
use uuid::Uuid;

/// What RetryJob must answer for one job.
enum Expect {
    /// A new queued job with this retry count.
    Retried(i32),
    /// This code and reason, with this `current_status` when given.
    Refused(Code, &'static str, Option<&'static str>),
}

#[tokio::test]
async fn the_retry_table() {
    let server = TestServer::start().await;
    let mut client = server.raw();
    let owner = Uuid::new_v4();
    let stranger = Uuid::new_v4();

    let cases: Vec<(&str, &str, i32, Uuid, Expect)> = vec![
        (
            "queued",
            "queued",
            0,
            owner,
            Expect::Refused(
                Code::FailedPrecondition,
                "INVALID_STATUS",
                Some("JOB_STATUS_QUEUED"),
            ),
        ),
        (
            "processing",
            "processing",
            0,
            owner,
            Expect::Refused(
                Code::FailedPrecondition,
                "INVALID_STATUS",
                Some("JOB_STATUS_PROCESSING"),
            ),
        ),
        (
            "completed",
            "completed",
            0,
            owner,
            Expect::Refused(
                Code::FailedPrecondition,
                "INVALID_STATUS",
                Some("JOB_STATUS_COMPLETED"),
            ),
        ),
        (
            "cancelled",
            "cancelled",
            0,
            owner,
            Expect::Refused(
                Code::FailedPrecondition,
                "INVALID_STATUS",
                Some("JOB_STATUS_CANCELLED"),
            ),
        ),
        ("failed at 0", "failed", 0, owner, Expect::Retried(1)),
        ("failed at 1", "failed", 1, owner, Expect::Retried(2)),
        ("failed at 2", "failed", 2, owner, Expect::Retried(3)),
        (
            "failed at 3",
            "failed",
            3,
            owner,
            Expect::Refused(Code::FailedPrecondition, "MAX_RETRIES_EXCEEDED", None),
        ),
        (
            "another user's failed job",
            "failed",
            0,
            stranger,
            Expect::Refused(Code::NotFound, "JOB_NOT_FOUND", None),
        ),
    ];

    for (n, (name, status, retry_count, job_owner, expect)) in cases.into_iter().enumerate() {
        let job = client
            .submit_job(submission(job_owner, n as u64))
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        set_status(&server.pool, &job.id, status, retry_count).await;
        let before = server.job_count().await;
        let answer = client
            .retry_job(pb::RetryJobRequest {
                job_id: job.id.clone(),
                user_id: owner.to_string(),
            })
            .await;
        match expect {
            Expect::Retried(count) => {
                let retry = answer
                    .unwrap_or_else(|e| panic!("{name}: {e:?}"))
                    .into_inner()
                    .job
                    .unwrap();
                assert_eq!(retry.status(), pb::JobStatus::Queued, "{name}");
                assert_eq!(retry.retry_count, count, "{name}");
                assert_eq!(retry.retry_of_job_id, job.id, "{name}");
                assert_ne!(retry.id, job.id, "{name}");
                assert_eq!(
                    (
                        &retry.user_id,
                        &retry.image_url,
                        &retry.image_sha256,
                        &retry.schema_version,
                        &retry.prompt_version
                    ),
                    (
                        &job.user_id,
                        &job.image_url,
                        &job.image_sha256,
                        &job.schema_version,
                        &job.prompt_version
                    ),
                    "{name}: same parameters"
                );
                assert_eq!(server.job_count().await, before + 1, "{name}");
                // Again: the same retry, nothing new.
                let again = client
                    .retry_job(pb::RetryJobRequest {
                        job_id: job.id.clone(),
                        user_id: owner.to_string(),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .job
                    .unwrap();
                assert_eq!(
                    again.id, retry.id,
                    "{name}: retrying twice returns the first retry"
                );
                assert_eq!(server.job_count().await, before + 1, "{name}");
            }
            Expect::Refused(code, reason, current) => {
                let status = answer.expect_err(name);
                assert_eq!(status.code(), code, "{name}: {status:?}");
                let (got_reason, metadata) = error_info(&status);
                assert_eq!(got_reason, reason, "{name}");
                if let Some(current) = current {
                    assert_eq!(metadata["current_status"], current, "{name}");
                }
                if reason == "MAX_RETRIES_EXCEEDED" {
                    assert_eq!(
                        (
                            metadata["retry_count"].as_str(),
                            metadata["max_retries"].as_str()
                        ),
                        ("3", "3")
                    );
                }
                assert_eq!(server.job_count().await, before, "{name}: nothing written");
            }
        }
    }

    let missing = client
        .retry_job(pb::RetryJobRequest {
            job_id: Uuid::new_v4().to_string(),
            user_id: owner.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (missing.code(), error_info(&missing).0.as_str()),
        (Code::NotFound, "JOB_NOT_FOUND")
    );
    let bad = client
        .retry_job(pb::RetryJobRequest {
            job_id: "x".into(),
            user_id: owner.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn a_chain_of_retries_stops_after_the_third() {
    let server = TestServer::start().await;
    let mut client = server.raw();
    let user = Uuid::new_v4();
    let mut job = client
        .submit_job(submission(user, 1))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    for expected in 1..=3 {
        set_status(&server.pool, &job.id, "failed", job.retry_count).await;
        job = client
            .retry_job(pb::RetryJobRequest {
                job_id: job.id.clone(),
                user_id: user.to_string(),
            })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        assert_eq!(job.retry_count, expected);
    }
    set_status(&server.pool, &job.id, "failed", job.retry_count).await;
    let refused = client
        .retry_job(pb::RetryJobRequest {
            job_id: job.id.clone(),
            user_id: user.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(error_info(&refused).0, "MAX_RETRIES_EXCEEDED");
    assert_eq!(server.job_count().await, 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_retries_of_one_failed_job_make_one_retry() {
    let server = TestServer::start().await;
    let user = Uuid::new_v4();
    let job = server
        .raw()
        .submit_job(submission(user, 1))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    set_status(&server.pool, &job.id, "failed", 0).await;

    let clients = warm_clients(&server, 20).await;
    let job_id = job.id.clone();
    let answers = all_at_once(clients, move |_, mut client| {
        let request = pb::RetryJobRequest {
            job_id: job_id.clone(),
            user_id: user.to_string(),
        };
        async move {
            client
                .retry_job(request)
                .await
                .map(|r| r.into_inner().job.unwrap().id)
        }
    })
    .await;
    let ids: Vec<String> = answers
        .into_iter()
        .map(|a| a.expect("every retry call succeeds"))
        .collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one retry for all callers"
    );
    assert_eq!(server.job_count().await, 2);
    server.stop().await;
}

#[tokio::test]
async fn retries_are_free_even_at_a_full_quota() {
    let server = TestServer::start_with_plans(Plans::builtin()).await;
    let mut client = server.raw();
    let user = Uuid::new_v4();
    let mut jobs = Vec::new();
    for n in 0..5 {
        jobs.push(
            client
                .submit_job(submission(user, n))
                .await
                .unwrap()
                .into_inner()
                .job
                .unwrap(),
        );
    }
    for job in &jobs {
        set_status(&server.pool, &job.id, "failed", 0).await;
    }
    for job in &jobs {
        client
            .retry_job(pb::RetryJobRequest {
                job_id: job.id.clone(),
                user_id: user.to_string(),
            })
            .await
            .expect("a retry is not counted against the quota or the hour");
    }
    let quota = client
        .check_quota(pb::CheckQuotaRequest {
            user_id: user.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (quota.monthly.unwrap().used, quota.hourly.unwrap().used),
        (5, 5)
    );
    assert_eq!(server.job_count().await, 10);

    // A plain resubmission of a photo whose retry is live is deduplicated to the retry.
    let again = client
        .submit_job(submission(user, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(again.deduplicated);
    assert_eq!(again.job.unwrap().retry_of_job_id, jobs[0].id);
    server.stop().await;
}

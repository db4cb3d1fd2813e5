//! SubmitJob: deduplication that cannot race, force, and validation that writes nothing.

mod common;

use std::sync::Arc;

use common::{TestServer, all_at_once, error_info, set_status, sha, submission, warm_clients};
use futures::future::join_all;
use jobq_proto::pb;
use tokio::sync::Barrier;
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_identical_submissions_create_one_job() {
    let server = TestServer::start().await;
    let user = Uuid::new_v4();

    // 50 callers on their own connections, released at once.
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(server.raw_on_new_connection().await);
    }
    // Warm the server's connection pool first, so that the 50 identical calls
    // really run side by side instead of queueing for new database connections.
    let warm_up = clients.iter().enumerate().map(|(n, client)| {
        let mut client = client.clone();
        async move {
            client
                .submit_job(submission(Uuid::new_v4(), n as u64))
                .await
        }
    });
    for answer in join_all(warm_up).await {
        answer.expect("warm-up submission");
    }
    let warm_rows = server.job_count().await;

    let barrier = Arc::new(Barrier::new(50));
    let calls = clients.into_iter().map(|mut client| {
        let barrier = barrier.clone();
        tokio::spawn(async move {
            barrier.wait().await;
            client.submit_job(submission(user, 7)).await
        })
    });
    let answers: Vec<pb::SubmitJobResponse> = join_all(calls)
        .await
        .into_iter()
        .map(|answer| {
            answer
                .expect("task")
                .expect("every identical submission succeeds")
                .into_inner()
        })
        .collect();

    let first_id = &answers[0].job.as_ref().unwrap().id;
    assert!(
        answers
            .iter()
            .all(|a| &a.job.as_ref().unwrap().id == first_id),
        "all answers carry the same job"
    );
    assert_eq!(answers.iter().filter(|a| a.deduplicated).count(), 49);
    assert_eq!(answers.iter().filter(|a| !a.deduplicated).count(), 1);
    assert_eq!(server.job_count().await, warm_rows + 1);
    server.stop().await;
}

#[tokio::test]
async fn identical_submission_returns_the_existing_job_and_records_defaults() {
    let server = TestServer::start().await;
    let client = server.client();
    let user = Uuid::new_v4();
    let upper = sha(1).to_uppercase();

    let first = client
        .submit_job(jobq_client::SubmitJob::new(
            user,
            "https://storage.example/a.jpg",
            upper.clone(),
        ))
        .await
        .unwrap();
    assert!(!first.deduplicated);
    let job = &first.job;
    assert_eq!(job.status, pb::JobStatus::Queued);
    assert_eq!(job.image_sha256, sha(1), "stored lower case");
    assert_eq!(
        (job.schema_version.as_str(), job.prompt_version.as_str()),
        ("stage1", "v1.0")
    );
    assert_eq!(
        (job.retry_count, job.attempt, job.retry_of_job_id),
        (0, 0, None)
    );
    assert_eq!(job.user_id, user);

    // Same photo in lower case, other URL: still the same submission.
    let again = client
        .submit_job(jobq_client::SubmitJob::new(
            user,
            "https://storage.example/b.jpg",
            sha(1),
        ))
        .await
        .unwrap();
    assert!(again.deduplicated);
    assert_eq!(again.job.id, job.id);

    // Another prompt version, or another user, is another submission.
    let other_prompt = client
        .submit_job(
            jobq_client::SubmitJob::new(user, "https://storage.example/a.jpg", sha(1))
                .prompt_version("v2.0"),
        )
        .await
        .unwrap();
    assert!(!other_prompt.deduplicated);
    let other_user = client
        .submit_job(jobq_client::SubmitJob::new(
            Uuid::new_v4(),
            "https://storage.example/a.jpg",
            sha(1),
        ))
        .await
        .unwrap();
    assert!(!other_user.deduplicated);
    assert_eq!(server.job_count().await, 3);
    server.stop().await;
}

#[tokio::test]
async fn force_creates_a_new_job_even_when_a_completed_one_matches() {
    let server = TestServer::start().await;
    let mut client = server.raw();
    let user = Uuid::new_v4();

    let original = client
        .submit_job(submission(user, 3))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    sqlx::query("UPDATE menu_extraction_jobs SET status = 'completed', completed_at = now() WHERE id = $1::uuid")
        .bind(&original.id)
        .execute(&server.pool)
        .await
        .unwrap();

    let deduplicated = client
        .submit_job(submission(user, 3))
        .await
        .unwrap()
        .into_inner();
    assert!(deduplicated.deduplicated);
    assert_eq!(deduplicated.job.unwrap().status(), pb::JobStatus::Completed);

    let forced = client
        .submit_job(pb::SubmitJobRequest {
            force: true,
            ..submission(user, 3)
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!forced.deduplicated);
    let forced_job = forced.job.unwrap();
    assert_ne!(forced_job.id, original.id);
    assert_eq!(forced_job.status(), pb::JobStatus::Queued);

    // A second force makes a third job: force never deduplicates.
    let forced_again = client
        .submit_job(pb::SubmitJobRequest {
            force: true,
            ..submission(user, 3)
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!forced_again.deduplicated);
    assert_eq!(server.job_count().await, 3);

    // Without force, the newest live match is returned.
    let plain = client
        .submit_job(submission(user, 3))
        .await
        .unwrap()
        .into_inner();
    assert!(plain.deduplicated);
    assert_eq!(plain.job.unwrap().id, forced_again.job.unwrap().id);
    server.stop().await;
}

#[tokio::test]
async fn failed_and_cancelled_jobs_do_not_deduplicate() {
    let server = TestServer::start().await;
    let mut client = server.raw();
    let user = Uuid::new_v4();

    for status in ["failed", "cancelled"] {
        let job = client
            .submit_job(submission(user, 9))
            .await
            .unwrap()
            .into_inner();
        assert!(!job.deduplicated);
        sqlx::query("UPDATE menu_extraction_jobs SET status = $1 WHERE id = $2::uuid")
            .bind(status)
            .bind(&job.job.unwrap().id)
            .execute(&server.pool)
            .await
            .unwrap();
    }
    let fresh = client
        .submit_job(submission(user, 9))
        .await
        .unwrap()
        .into_inner();
    assert!(!fresh.deduplicated);
    assert_eq!(server.job_count().await, 3);
    server.stop().await;
}

/// One bad request, and the fields the server must name.
struct Case {
    name: &'static str,
    request: pb::SubmitJobRequest,
    fields: &'static [&'static str],
}

#[tokio::test]
async fn bad_submissions_name_every_bad_field_and_write_nothing() {
    let server = TestServer::start().await;
    let mut client = server.raw();
    let user = Uuid::new_v4();
    let good = || submission(user, 1);
    // One good job first, so "unchanged" is not "still empty".
    client.submit_job(submission(user, 100)).await.unwrap();

    let cases = [
        Case {
            name: "empty user_id",
            request: pb::SubmitJobRequest {
                user_id: String::new(),
                ..good()
            },
            fields: &["user_id"],
        },
        Case {
            name: "user_id not a UUID",
            request: pb::SubmitJobRequest {
                user_id: "user-42".into(),
                ..good()
            },
            fields: &["user_id"],
        },
        Case {
            name: "user_id SQL",
            request: pb::SubmitJobRequest {
                user_id: "'; DROP TABLE menu_extraction_jobs; --".into(),
                ..good()
            },
            fields: &["user_id"],
        },
        Case {
            name: "empty image_url",
            request: pb::SubmitJobRequest {
                image_url: String::new(),
                ..good()
            },
            fields: &["image_url"],
        },
        Case {
            name: "over-long image_url",
            request: pb::SubmitJobRequest {
                image_url: format!("https://x/{}", "a".repeat(2048)),
                ..good()
            },
            fields: &["image_url"],
        },
        Case {
            name: "relative image_url",
            request: pb::SubmitJobRequest {
                image_url: "menus/1.jpg".into(),
                ..good()
            },
            fields: &["image_url"],
        },
        Case {
            name: "image_url with a space",
            request: pb::SubmitJobRequest {
                image_url: "https://x/a b.jpg".into(),
                ..good()
            },
            fields: &["image_url"],
        },
        Case {
            name: "empty hash",
            request: pb::SubmitJobRequest {
                image_sha256: String::new(),
                ..good()
            },
            fields: &["image_sha256"],
        },
        Case {
            name: "hash of 63 chars",
            request: pb::SubmitJobRequest {
                image_sha256: "a".repeat(63),
                ..good()
            },
            fields: &["image_sha256"],
        },
        Case {
            name: "hash of 65 chars",
            request: pb::SubmitJobRequest {
                image_sha256: "a".repeat(65),
                ..good()
            },
            fields: &["image_sha256"],
        },
        Case {
            name: "hash not hex",
            request: pb::SubmitJobRequest {
                image_sha256: "g".repeat(64),
                ..good()
            },
            fields: &["image_sha256"],
        },
        Case {
            name: "hash of 64 multibyte chars",
            request: pb::SubmitJobRequest {
                image_sha256: "é".repeat(32),
                ..good()
            },
            fields: &["image_sha256"],
        },
        Case {
            name: "schema_version over 20",
            request: pb::SubmitJobRequest {
                schema_version: "s".repeat(21),
                ..good()
            },
            fields: &["schema_version"],
        },
        Case {
            name: "schema_version non-ASCII",
            request: pb::SubmitJobRequest {
                schema_version: "étape1".into(),
                ..good()
            },
            fields: &["schema_version"],
        },
        Case {
            name: "prompt_version over 50",
            request: pb::SubmitJobRequest {
                prompt_version: "p".repeat(51),
                ..good()
            },
            fields: &["prompt_version"],
        },
        Case {
            name: "prompt_version with a space",
            request: pb::SubmitJobRequest {
                prompt_version: "v 1".into(),
                ..good()
            },
            fields: &["prompt_version"],
        },
        Case {
            name: "request_id not a UUID",
            request: pb::SubmitJobRequest {
                request_id: "1; DROP TABLE menu_extraction_jobs".into(),
                ..good()
            },
            fields: &["request_id"],
        },
        Case {
            name: "everything wrong",
            request: pb::SubmitJobRequest {
                user_id: "x".into(),
                image_url: String::new(),
                image_sha256: "z".into(),
                schema_version: "s".repeat(21),
                prompt_version: "p".repeat(51),
                force: true,
                request_id: "not-a-uuid".into(),
            },
            fields: &[
                "user_id",
                "image_url",
                "image_sha256",
                "schema_version",
                "prompt_version",
                "request_id",
            ],
        },
    ];
    assert!(cases.len() >= 12);

    for case in cases {
        let before = server.job_count().await;
        let status = client.submit_job(case.request).await.expect_err(case.name);
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{}: {status:?}",
            case.name
        );
        let details = status.get_error_details();
        let named: Vec<_> = details
            .bad_request()
            .unwrap_or_else(|| panic!("{}: no BadRequest", case.name))
            .field_violations
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(named, case.fields, "{}", case.name);
        let info = details
            .error_info()
            .unwrap_or_else(|| panic!("{}: no ErrorInfo", case.name));
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("INVALID_ARGUMENT", "jobq"),
            "{}",
            case.name
        );
        for field in case.fields {
            assert!(
                status.message().contains(field),
                "{}: message names {field}: {}",
                case.name,
                status.message()
            );
        }
        assert_eq!(
            server.job_count().await,
            before,
            "{}: nothing written",
            case.name
        );
    }
    assert_eq!(server.job_count().await, 1);
    server.stop().await;
}

#[tokio::test]
async fn the_client_crate_reads_violations_back() {
    let server = TestServer::start().await;
    let error = server
        .client()
        .submit_job(jobq_client::SubmitJob::new(
            Uuid::new_v4(),
            "https://x/y.jpg",
            "abc",
        ))
        .await
        .expect_err("a short hash is refused");
    let jobq_client::Error::InvalidArgument { violations, .. } = error else {
        panic!("expected InvalidArgument, got {error:?}")
    };
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].field, "image_sha256");
    assert!(violations[0].description.contains("64 hex"));
    server.stop().await;
}

/// SubmitJob's request_id makes a submission safe to send again: a retry after a
/// lost answer (even a forced one, even after the job failed, even at a full
/// quota) returns the first job; reusing a request_id for other parameters is
/// refused; concurrent sends of one request_id make one job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_submission_sent_again_with_its_request_id_returns_the_first_job() {
    let server = TestServer::start().await;
    let mut client = server.raw();
    let user = Uuid::new_v4();
    let request_id = Uuid::new_v4().to_string();
    let forced = pb::SubmitJobRequest {
        force: true,
        request_id: request_id.clone(),
        ..submission(user, 1)
    };

    let first = client
        .submit_job(forced.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(!first.deduplicated);
    let first_job = first.job.unwrap();
    let again = client
        .submit_job(forced.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(
        again.deduplicated,
        "the resend is answered with the first job"
    );
    assert_eq!(again.job.unwrap().id, first_job.id);
    assert_eq!(server.job_count().await, 1);

    // The same key for another photo: refused, naming request_id; nothing written.
    let status = client
        .submit_job(pb::SubmitJobRequest {
            force: true,
            request_id: request_id.clone(),
            ..submission(user, 2)
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("request_id"),
        "{}",
        status.message()
    );
    assert_eq!(error_info(&status).0, "INVALID_ARGUMENT");
    assert_eq!(server.job_count().await, 1);

    // Another user may use the same key: keys are per user.
    let other = client
        .submit_job(pb::SubmitJobRequest {
            request_id: request_id.clone(),
            ..submission(Uuid::new_v4(), 1)
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!other.deduplicated);

    // After the job failed, the resend still returns it (a plain resubmission
    // without the key would make a new job).
    set_status(&server.pool, &first_job.id, "failed", 0).await;
    let after_failure = client
        .submit_job(forced.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(after_failure.deduplicated);
    assert_eq!(after_failure.job.unwrap().status(), pb::JobStatus::Failed);

    // 20 concurrent sends of one new forced submission: one job.
    let concurrent_id = Uuid::new_v4().to_string();
    let before = server.job_count().await;
    let clients = warm_clients(&server, 20).await;
    let answers = all_at_once(clients, |_, mut client| {
        let request = pb::SubmitJobRequest {
            force: true,
            request_id: concurrent_id.clone(),
            ..submission(user, 3)
        };
        async move { client.submit_job(request).await.map(|r| r.into_inner()) }
    })
    .await;
    let answers: Vec<_> = answers
        .into_iter()
        .map(|a| a.expect("every send succeeds"))
        .collect();
    assert_eq!(answers.iter().filter(|a| !a.deduplicated).count(), 1);
    let ids: std::collections::HashSet<_> = answers
        .iter()
        .map(|a| a.job.as_ref().unwrap().id.clone())
        .collect();
    assert_eq!(ids.len(), 1, "all 20 answers carry the same job");
    assert_eq!(server.job_count().await, before + 1);
    server.stop().await;
}

#[tokio::test]
async fn a_resend_is_answered_even_when_the_quota_is_spent() {
    let server = TestServer::start_with_plans(jobq_server::plans::Plans::builtin()).await; // free: 5 a month
    let mut client = server.raw();
    let user = Uuid::new_v4();
    let requests: Vec<_> = (0..5)
        .map(|n| pb::SubmitJobRequest {
            request_id: Uuid::new_v4().to_string(),
            ..submission(user, n)
        })
        .collect();
    for request in &requests {
        client.submit_job(request.clone()).await.unwrap();
    }
    let refused = client.submit_job(submission(user, 99)).await.unwrap_err();
    assert_eq!(error_info(&refused).0, "QUOTA_EXCEEDED");
    let resent = client
        .submit_job(pb::SubmitJobRequest {
            force: true,
            ..requests[0].clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resent.deduplicated);
    assert_eq!(server.job_count().await, 5);
    server.stop().await;
}

//! GetJob and ListJobs: ownership, keyset pagination, page tokens.

mod common;

use std::collections::HashSet;

use common::{TestServer, submission};
use jobq_proto::pb;
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

fn field_of(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn another_users_job_is_not_found_like_a_missing_one() {
    let server = TestServer::start().await;
    let mut client = server.raw();
    let owner = Uuid::new_v4();
    let job = client
        .submit_job(submission(owner, 1))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();

    let mine = client
        .get_job(pb::GetJobRequest {
            job_id: job.id.clone(),
            user_id: owner.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(mine, job);

    let foreign = client
        .get_job(pb::GetJobRequest {
            job_id: job.id.clone(),
            user_id: Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    let missing = client
        .get_job(pb::GetJobRequest {
            job_id: Uuid::new_v4().to_string(),
            user_id: owner.to_string(),
        })
        .await
        .unwrap_err();
    for status in [&foreign, &missing] {
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "JOB_NOT_FOUND"
        );
    }
    assert_eq!(
        foreign.message(),
        missing.message(),
        "nothing tells the two apart"
    );

    // The client crate's typed error.
    let error = server
        .client()
        .get_job(Uuid::new_v4(), job.id.parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(error, jobq_client::Error::JobNotFound),
        "{error:?}"
    );

    let bad = client
        .get_job(pb::GetJobRequest {
            job_id: "42".into(),
            user_id: "me".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(field_of(&bad), ["job_id", "user_id"]);
    server.stop().await;
}

#[tokio::test]
async fn pages_of_20_20_5_newest_first_without_gaps_while_jobs_arrive() {
    let server = TestServer::start().await;
    let mut client = server.raw();
    let user = Uuid::new_v4();
    let neighbour = Uuid::new_v4();

    let mut submitted = Vec::new();
    for n in 0..45 {
        submitted.push(
            client
                .submit_job(submission(user, n))
                .await
                .unwrap()
                .into_inner()
                .job
                .unwrap()
                .id,
        );
        if n % 10 == 0 {
            client.submit_job(submission(neighbour, n)).await.unwrap();
        }
    }

    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut token = String::new();
    let mut extra = 1000;
    loop {
        let page = client
            .list_jobs(pb::ListJobsRequest {
                user_id: user.to_string(),
                page_size: 20,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        sizes.push(page.jobs.len());
        seen.extend(page.jobs);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        // New jobs between pages must neither shift nor repeat what follows.
        for _ in 0..3 {
            client.submit_job(submission(user, extra)).await.unwrap();
            extra += 1;
        }
    }

    assert_eq!(sizes, [20, 20, 5]);
    let ids: Vec<_> = seen.iter().map(|j| j.id.clone()).collect();
    let expected: Vec<_> = submitted.iter().rev().cloned().collect();
    assert_eq!(ids, expected, "exactly the 45 jobs, newest first");
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        45,
        "no duplicates"
    );
    assert!(seen.iter().all(|j| j.user_id == user.to_string()));
    for pair in seen.windows(2) {
        let key = |j: &pb::Job| {
            let t = j.created_at.unwrap();
            (t.seconds, t.nanos, j.id.clone())
        };
        assert!(key(&pair[0]) > key(&pair[1]), "strictly newest first");
    }
    server.stop().await;
}

/// Jobs created by one submission batch share their creation instant, so the
/// id decides their order (newest first means the greater id first) and pages
/// break between them: 45 jobs of one instant, pages of 20, every one seen
/// once, in id order. The id's order is its bytes' (migration 0014 keys the
/// index on them), which is also its text's.
#[tokio::test]
async fn jobs_of_one_instant_page_by_id() {
    let server = TestServer::start().await;
    let user = Uuid::new_v4();
    let mut stored: Vec<String> = sqlx::query_scalar(
        "INSERT INTO menu_extraction_jobs (user_id, image_url, image_hash, created_at)
         SELECT $1, 'https://x/' || g, encode(sha256(g::text::bytea), 'hex'),
                '2026-11-30 12:00:00+00'
         FROM generate_series(1, 45) g
         RETURNING id::text",
    )
    .bind(user)
    .fetch_all(&server.pool)
    .await
    .unwrap();
    stored.sort_unstable_by(|a, b| b.cmp(a));

    let mut client = server.raw();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_jobs(pb::ListJobsRequest {
                user_id: user.to_string(),
                page_size: 20,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.jobs.into_iter().map(|job| job.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, stored);
    server.stop().await;
}

#[tokio::test]
async fn status_filter_and_page_size_bounds() {
    let server = TestServer::start().await;
    let mut client = server.raw();
    let user = Uuid::new_v4();
    for n in 0..5 {
        client.submit_job(submission(user, n)).await.unwrap();
    }
    sqlx::query(
        "UPDATE menu_extraction_jobs SET status = 'failed'
         WHERE id IN (SELECT id FROM menu_extraction_jobs ORDER BY created_at LIMIT 2)",
    )
    .execute(&server.pool)
    .await
    .unwrap();

    let list = |status: pb::JobStatus, page_size: i32| pb::ListJobsRequest {
        user_id: user.to_string(),
        page_size,
        status: status.into(),
        ..Default::default()
    };
    let failed = client
        .list_jobs(list(pb::JobStatus::Failed, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.jobs.len(), 2);
    assert!(
        failed
            .jobs
            .iter()
            .all(|j| j.status() == pb::JobStatus::Failed)
    );
    assert!(failed.next_page_token.is_empty());
    let all = client
        .list_jobs(list(pb::JobStatus::Unspecified, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.jobs.len(), 5);

    // A filtered listing's token does not continue an unfiltered one.
    let first = client
        .list_jobs(list(pb::JobStatus::Queued, 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.jobs.len(), 1);
    let mismatched = client
        .list_jobs(pb::ListJobsRequest {
            page_token: first.next_page_token.clone(),
            ..list(pb::JobStatus::Unspecified, 1)
        })
        .await
        .unwrap_err();
    assert_eq!(mismatched.code(), Code::InvalidArgument);
    assert_eq!(field_of(&mismatched), ["page_token"]);

    for (page_size, status) in [(-1, 0), (101, 0), (20, 99)] {
        let error = client
            .list_jobs(pb::ListJobsRequest {
                user_id: user.to_string(),
                page_size,
                status,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
        let expected = if status == 99 { "status" } else { "page_size" };
        assert_eq!(
            field_of(&error),
            [expected],
            "page_size {page_size}, status {status}"
        );
    }
    let max = client
        .list_jobs(list(pb::JobStatus::Unspecified, 100))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(max.jobs.len(), 5);
    server.stop().await;
}

#[tokio::test]
async fn tampered_garbage_and_foreign_page_tokens_are_invalid_argument() {
    let server = TestServer::start().await;
    let mut client = server.raw();
    let owner = Uuid::new_v4();
    let stranger = Uuid::new_v4();
    for n in 0..3 {
        client.submit_job(submission(owner, n)).await.unwrap();
        client.submit_job(submission(stranger, n)).await.unwrap();
    }
    let request = |user: Uuid, token: &str| pb::ListJobsRequest {
        user_id: user.to_string(),
        page_size: 1,
        page_token: token.to_owned(),
        ..Default::default()
    };
    let token = client
        .list_jobs(request(owner, ""))
        .await
        .unwrap()
        .into_inner()
        .next_page_token;
    assert!(!token.is_empty());
    // The genuine token works for its owner.
    let second = client
        .list_jobs(request(owner, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.jobs.len(), 1);

    let mut tampered = token.clone().into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();

    for (what, user, bad) in [
        ("foreign", stranger, token.as_str()),
        ("tampered", owner, tampered.as_str()),
        ("truncated", owner, &token[..token.len() - 4]),
        ("garbage", owner, "not-a-token"),
        ("json", owner, "{\"offset\":0}"),
    ] {
        let status = client.list_jobs(request(user, bad)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}");
        assert_eq!(field_of(&status), ["page_token"], "{what}");
    }
    server.stop().await;
}

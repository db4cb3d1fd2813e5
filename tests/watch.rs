//! WatchJobs: snapshot then live, in order, gapless through lost notifications,
//! slow readers, disconnects and resumes; caps and shutdown.

mod common;

use std::collections::HashMap;

use common::{TestServer, Watcher, error_info, submission, table_versions};
use jobq_proto::pb;
use jobq_proto::pb::worker_service_client::WorkerServiceClient;
use tonic::Code;
use uuid::Uuid;

fn watch_user(user: Uuid) -> pb::WatchJobsRequest {
    pb::WatchJobsRequest {
        user_id: user.to_string(),
        ..Default::default()
    }
}

fn watch_all() -> pb::WatchJobsRequest {
    pb::WatchJobsRequest::default()
}

fn claim(max_jobs: i32) -> pb::ClaimJobsRequest {
    pb::ClaimJobsRequest {
        worker_id: "watched".into(),
        max_jobs,
        lease_duration: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
        wait: None,
    }
}

#[tokio::test]
async fn snapshot_then_queued_processing_completed_in_order() {
    let server = TestServer::start().await;
    let mut jobs = server.raw();
    let user = Uuid::new_v4();
    let earlier = jobs
        .submit_job(submission(user, 1))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let finished = jobs
        .submit_job(submission(user, 2))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    common::set_status(&server.pool, &finished.id, "completed", 0).await;
    jobs.submit_job(submission(Uuid::new_v4(), 3))
        .await
        .unwrap();

    let mut watcher = Watcher::open(&mut jobs, watch_user(user)).await;
    let first = watcher.next().await;
    assert_eq!(first.kind(), pb::WatchEventKind::Snapshot);
    assert_eq!(
        first.job.unwrap().id,
        earlier.id,
        "the snapshot holds the user's unfinished jobs only"
    );
    assert!(
        !first.resume_token.is_empty(),
        "the snapshot's last event carries a token"
    );

    // Take the earlier job out of the way, then drive a new one through a worker.
    let mut worker = WorkerServiceClient::new(server.channel());
    let earlier_claim = worker.claim_jobs(claim(1)).await.unwrap().into_inner().jobs;
    assert_eq!(
        watcher.next().await.job.unwrap().status(),
        pb::JobStatus::Processing
    );
    worker
        .fail_job(pb::FailJobRequest {
            job_id: earlier.id.clone(),
            lease_id: earlier_claim[0].lease_id.clone(),
            error_message: "x".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        watcher.next().await.job.unwrap().status(),
        pb::JobStatus::Failed
    );

    let job = jobs
        .submit_job(submission(user, 4))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let created = watcher.next().await;
    assert_eq!(created.kind(), pb::WatchEventKind::Created);
    assert_eq!(
        created.job.as_ref().unwrap().status(),
        pb::JobStatus::Queued
    );
    assert_eq!(created.job.unwrap().id, job.id);

    // The other user's older job is claimed too; this watcher does not see it.
    let claimed: Vec<_> = worker
        .claim_jobs(claim(10))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .into_iter()
        .filter(|c| c.job.as_ref().unwrap().id == job.id)
        .collect();
    let processing = watcher.next().await;
    assert_eq!(
        (processing.kind(), processing.job.as_ref().unwrap().status()),
        (pb::WatchEventKind::Updated, pb::JobStatus::Processing)
    );

    // A heartbeat is not an event.
    worker
        .heartbeat(pb::HeartbeatRequest {
            job_id: job.id.clone(),
            lease_id: claimed[0].lease_id.clone(),
            extend_by: None,
        })
        .await
        .unwrap();
    worker
        .complete_job(pb::CompleteJobRequest {
            job_id: job.id.clone(),
            lease_id: claimed[0].lease_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let completed = watcher.next().await;
    assert_eq!(
        completed.job.as_ref().unwrap().status(),
        pb::JobStatus::Completed
    );
    assert_eq!(completed.job.unwrap().id, job.id);
    assert_eq!(
        watcher.versions[&job.id].len(),
        3,
        "queued, processing, completed"
    );

    // Named jobs: their current state, finished or not.
    let mut named = Watcher::open(
        &mut jobs,
        pb::WatchJobsRequest {
            user_id: user.to_string(),
            job_ids: vec![finished.id.clone()],
            ..Default::default()
        },
    )
    .await;
    let snapshot = named.next().await;
    assert_eq!(
        (snapshot.kind(), snapshot.job.unwrap().status()),
        (pb::WatchEventKind::Snapshot, pb::JobStatus::Completed)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_watchers_see_500_jobs_changed_by_concurrent_writers() {
    let server = TestServer::start().await;
    // Twenty watchers, each on its own connection, reading as the changes come.
    // Once the writers are done, each is told the table's final versions and
    // reads until it has seen exactly them.
    let (final_table, final_rx) = tokio::sync::watch::channel(None::<HashMap<String, i64>>);
    let mut readers = Vec::new();
    for _ in 0..20 {
        let mut client = server.raw_on_new_connection().await;
        let mut watcher = Watcher::open(&mut client, watch_all()).await;
        let mut final_rx = final_rx.clone();
        readers.push(tokio::spawn(async move {
            loop {
                let table = final_rx.borrow_and_update().clone();
                if let Some(table) = table {
                    watcher.until_matches(&table).await;
                    return watcher;
                }
                tokio::select! {
                    _ = watcher.next() => {}
                    _ = final_rx.changed() => {}
                }
            }
        }));
    }
    let writers = (0..10).map(|w| {
        let mut client = server.raw();
        let pool = server.pool.clone();
        async move {
            for n in 0..50 {
                let job = client
                    .submit_job(submission(Uuid::new_v4(), w * 50 + n))
                    .await
                    .unwrap()
                    .into_inner()
                    .job
                    .unwrap();
                // Two more changes of the job, each its own statement.
                for status in ["failed", "cancelled"] {
                    sqlx::query("UPDATE menu_extraction_jobs SET status = $1 WHERE id = $2::uuid")
                        .bind(status)
                        .bind(&job.id)
                        .execute(&pool)
                        .await
                        .unwrap();
                }
            }
        }
    });
    futures::future::join_all(writers).await;
    let table = table_versions(&server.pool, None).await;
    assert_eq!(table.len(), 500);
    final_table.send_replace(Some(table));
    for watcher in futures::future::join_all(readers).await {
        let watcher = watcher.unwrap();
        assert_eq!(watcher.view.len(), 500);
        assert!(
            watcher
                .view
                .values()
                .all(|job| job.status() == pb::JobStatus::Cancelled)
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_bulk_insert_reaches_every_stream_and_wakes_a_parked_claimer() {
    // One INSERT of 41,000 rows by a writer that is not jobq notifies 1,025 times
    // (40 jobs each): more than the feed takes in one go before reading the
    // table. Every job must still reach the stream, and the one queued job, the
    // last row and so in the last notification, must wake a parked claimer (the
    // safety poll is a minute, the claim waits 30 s).
    let server = TestServer::start_for_parked_claims().await;
    let mut jobs = server.raw_on_new_connection().await;
    let mut watcher = Watcher::open(&mut jobs, watch_all()).await;
    let mut worker = WorkerServiceClient::new(server.channel());
    let parked = tokio::spawn(async move {
        let answer = worker
            .claim_jobs(pb::ClaimJobsRequest {
                wait: Some(prost_types::Duration {
                    seconds: 30,
                    nanos: 0,
                }),
                ..claim(1)
            })
            .await;
        (answer, std::time::Instant::now())
    });
    // The rows are written once the claim has looked at the empty queue.
    server.claim_looked(None).await;
    let rows = 41_000;
    let queued: Uuid = sqlx::query_scalar(
        "WITH inserted AS (
             INSERT INTO menu_extraction_jobs (user_id, image_url, image_hash, status)
             SELECT gen_random_uuid(), 'https://legacy.example/' || g || '.jpg',
                    md5(g::text) || md5(g::text || 'x'),
                    CASE WHEN g = $1 THEN 'queued' ELSE 'completed' END
             FROM generate_series(1, $1) AS g
             RETURNING id, status)
         SELECT id FROM inserted WHERE status = 'queued'",
    )
    .bind(rows)
    .fetch_one(&server.pool)
    .await
    .unwrap();
    let inserted_at = std::time::Instant::now();
    let (answer, woke_at) = parked.await.unwrap();
    let claimed = answer.unwrap().into_inner().jobs;
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].job.as_ref().unwrap().id, queued.to_string());
    // Not woken, it would have answered at the end of its 30 s wait.
    let pickup = woke_at - inserted_at;
    assert!(
        pickup < std::time::Duration::from_secs(10),
        "picked up {pickup:?} after the insert"
    );

    let mut missing: std::collections::HashSet<String> = table_versions(&server.pool, None)
        .await
        .into_keys()
        .collect();
    assert_eq!(missing.len(), rows as usize);
    while !missing.is_empty() {
        let event = watcher.next().await;
        missing.remove(&event.job.unwrap().id);
    }
    server.stop().await;
}

#[tokio::test]
async fn killing_the_listener_loses_nothing() {
    let server = TestServer::start().await;
    let mut jobs = server.raw();
    let user = Uuid::new_v4();
    let mut watcher = Watcher::open(&mut jobs, watch_user(user)).await;
    let db = server.db.name.clone();
    let pool = server.pool.clone();
    let admin = common::admin_pool().await;

    // A writer commits 200 changes; the change feed's connection is killed three
    // times along the way.
    let writer = {
        let mut client = server.raw();
        tokio::spawn(async move {
            for n in 0..100 {
                let job = client
                    .submit_job(submission(user, n))
                    .await
                    .unwrap()
                    .into_inner()
                    .job
                    .unwrap();
                sqlx::query(
                    "UPDATE menu_extraction_jobs SET status = 'failed' WHERE id = $1::uuid",
                )
                .bind(&job.id)
                .execute(&pool)
                .await
                .unwrap();
            }
        })
    };
    // Kill the feed's connection three times while changes flow: each time ten
    // more events have arrived since the last kill and the feed is connected again.
    let mut kills = 0;
    let mut since_kill = 0;
    while kills < 3 {
        watcher.next().await;
        since_kill += 1;
        if since_kill < 10 {
            continue;
        }
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND application_name = 'jobq-change-feed'",
        )
        .bind(&db)
        .fetch_all(&admin)
        .await
        .unwrap();
        assert!(killed.len() <= 1, "the change feed has one connection");
        if killed == [true] {
            kills += 1;
            since_kill = 0;
        }
    }
    writer.await.unwrap();
    let table = table_versions(&server.pool, Some(user)).await;
    watcher.until_matches(&table).await;
    assert_eq!(watcher.view.len(), 100);
    assert!(
        watcher
            .view
            .values()
            .all(|job| job.status() == pb::JobStatus::Failed)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_that_stops_reading_neither_slows_others_nor_loses_changes() {
    let server = TestServer::start().await;
    let mut jobs = server.raw();
    let user = Uuid::new_v4();
    let mut ids = Vec::new();
    for n in 0..50 {
        ids.push(
            jobs.submit_job(submission(user, n))
                .await
                .unwrap()
                .into_inner()
                .job
                .unwrap()
                .id,
        );
    }
    let mut stalled = Watcher::open(&mut jobs, watch_user(user)).await;
    let mut reader = Watcher::open(&mut jobs, watch_user(user)).await;
    // Both have their snapshot; the stalled one reads nothing more for now.
    let start = table_versions(&server.pool, Some(user)).await;
    stalled.until_matches(&start).await;
    reader.until_matches(&start).await;
    let token_before = stalled.token.clone();

    // 5,000 changes, each its own statement (each a notification and a batch).
    let writers = (0..10).map(|w| {
        let pool = server.pool.clone();
        let ids = ids[w * 5..w * 5 + 5].to_vec();
        async move {
            for round in 0..100 {
                for id in &ids {
                    sqlx::query(
                        "UPDATE menu_extraction_jobs SET error_message = $1 WHERE id = $2::uuid",
                    )
                    .bind(format!("round {round}"))
                    .bind(id)
                    .execute(&pool)
                    .await
                    .unwrap();
                }
            }
        }
    });
    let reading = tokio::spawn(async move {
        let mut reader = reader;
        let mut events = 0;
        // The reader keeps up while the writers write.
        loop {
            reader.next().await;
            events += 1;
            if reader
                .view
                .values()
                .filter(|job| job.error_message == "round 99")
                .count()
                == 50
            {
                return (reader, events);
            }
        }
    });
    futures::future::join_all(writers).await;
    let (reader, events) = reading.await.unwrap();
    let table = table_versions(&server.pool, Some(user)).await;
    assert!(
        reader.view.iter().all(|(id, job)| job.version == table[id]),
        "the reader is current"
    );
    assert!(events >= 50);

    // The stalled watcher now reads: it is caught up, not left with a hole.
    stalled.until_matches(&table).await;
    assert!(
        stalled
            .view
            .values()
            .all(|job| job.error_message == "round 99")
    );

    // And a stream resumed from the token it held before the writes gets the same.
    let mut resumed = Watcher::open(
        &mut jobs,
        pb::WatchJobsRequest {
            resume_token: token_before,
            ..watch_user(user)
        },
    )
    .await;
    resumed.until_matches(&table).await;
    assert!(
        resumed
            .events
            .iter()
            .all(|e| e.kind() != pb::WatchEventKind::Snapshot)
    );
    server.stop().await;
}

#[tokio::test]
async fn resuming_after_a_disconnect_delivers_exactly_what_was_missed() {
    let server = TestServer::start().await;
    let mut jobs = server.raw();
    let user = Uuid::new_v4();
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

    let mut first = Watcher::open(&mut jobs, watch_user(user)).await;
    first
        .until_matches(&table_versions(&server.pool, Some(user)).await)
        .await;
    common::set_status(&server.pool, &a.id, "failed", 0).await;
    first.next().await;
    let token = first.token.clone();
    let seen: HashMap<String, i64> = first
        .view
        .iter()
        .map(|(id, job)| (id.clone(), job.version))
        .collect();
    drop(first);

    // Missed while disconnected: b cancelled, a new job c.
    jobs.cancel_job(pb::CancelJobRequest {
        job_id: b.id.clone(),
        user_id: user.to_string(),
    })
    .await
    .unwrap();
    let c = jobs
        .submit_job(submission(user, 3))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();

    let mut resumed = Watcher::open(
        &mut jobs,
        pb::WatchJobsRequest {
            resume_token: token,
            ..watch_user(user)
        },
    )
    .await;
    let mut missed = table_versions(&server.pool, Some(user)).await;
    missed.remove(&a.id);
    resumed.until_matches(&missed).await;
    let delivered: Vec<(String, pb::JobStatus)> = resumed
        .events
        .iter()
        .map(|e| {
            (
                e.job.as_ref().unwrap().id.clone(),
                e.job.as_ref().unwrap().status(),
            )
        })
        .collect();
    assert_eq!(
        delivered,
        [
            (b.id.clone(), pb::JobStatus::Cancelled),
            (c.id.clone(), pb::JobStatus::Queued)
        ],
        "exactly the missed changes"
    );
    assert!(resumed.events.iter().all(|e| {
        let job = e.job.as_ref().unwrap();
        seen.get(&job.id).is_none_or(|v| job.version > *v)
    }));
    assert_eq!(resumed.events[1].kind(), pb::WatchEventKind::Created);
    server.stop().await;
}

#[tokio::test]
async fn streams_are_capped_validated_and_ended_by_shutdown() {
    let server = TestServer::start_configured(|config| config.max_streams_per_user = 2).await;
    let mut jobs = server.raw();
    let user = Uuid::new_v4();
    let _one = Watcher::open(&mut jobs, watch_user(user)).await;
    let _two = Watcher::open(&mut jobs, watch_user(user)).await;
    let third = jobs.watch_jobs(watch_user(user)).await.unwrap_err();
    assert_eq!(third.code(), Code::ResourceExhausted);
    let (reason, metadata) = error_info(&third);
    assert_eq!(
        (
            reason.as_str(),
            metadata["scope"].as_str(),
            metadata["limit"].as_str()
        ),
        ("TOO_MANY_STREAMS", "user", "2")
    );
    let _other_user = Watcher::open(&mut jobs, watch_user(Uuid::new_v4())).await;

    for (request, field) in [
        (
            pb::WatchJobsRequest {
                user_id: "someone".into(),
                ..Default::default()
            },
            "user_id",
        ),
        (
            pb::WatchJobsRequest {
                job_ids: vec!["42".into()],
                ..Default::default()
            },
            "job_ids",
        ),
        (
            pb::WatchJobsRequest {
                resume_token: "not-a-token".into(),
                ..Default::default()
            },
            "resume_token",
        ),
    ] {
        let status = jobs.watch_jobs(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
    let foreign = jobs
        .submit_job(submission(Uuid::new_v4(), 1))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let status = jobs
        .watch_jobs(pb::WatchJobsRequest {
            user_id: Uuid::new_v4().to_string(),
            job_ids: vec![foreign.id],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // Shutdown ends open streams with UNAVAILABLE, telling them to reconnect.
    let mut open = Watcher::open(&mut jobs, watch_all()).await;
    let ending = tokio::spawn(async move { open.end().await });
    server.stop().await;
    let status = ending.await.unwrap();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(error_info(&status).0, "SERVER_STOPPING");
}

#[tokio::test]
async fn health_reports_an_outage_of_the_change_feed() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel());
    let mut updates = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        use tokio_stream::StreamExt;
        ServingStatus::try_from(updates.next().await.unwrap().unwrap().status).unwrap()
    };
    while next().await != ServingStatus::Serving {}

    // The database stays up for the server's pool, but the change feed loses its
    // connection and cannot get another.
    let admin = common::admin_pool().await;
    let name = server.db.name.clone();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"
    )))
    .execute(&admin)
    .await
    .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND application_name = 'jobq-change-feed'",
    )
    .bind(&name)
    .execute(&admin)
    .await
    .unwrap();
    assert_eq!(next().await, ServingStatus::NotServing);

    // Changes made while the feed is deaf reach a watcher once it is back.
    let user = Uuid::new_v4();
    let mut jobs = server.raw();
    let mut watcher = Watcher::open(&mut jobs, watch_user(user)).await;
    for n in 0..5 {
        jobs.submit_job(submission(user, n)).await.unwrap();
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"
    )))
    .execute(&admin)
    .await
    .unwrap();
    assert_eq!(next().await, ServingStatus::Serving);
    watcher
        .until_matches(&table_versions(&server.pool, Some(user)).await)
        .await;
    assert_eq!(watcher.view.len(), 5);
    drop(updates);
    server.stop().await;
}

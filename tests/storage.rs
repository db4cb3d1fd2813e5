//! The database: legacy upgrade, NOTIFY triggers, and the indexes the queries use.

mod common;

use common::{TestDb, TestServer, sha, submission};
use jobq_proto::pb;
use sqlx::postgres::PgListener;
use uuid::Uuid;

/// The legacy table's shape: the seed's first columns, TIMESTAMP without time
/// zone, no defaults for what jobq added, and no checks of any column.
const LEGACY_OCR_JOBS: &str = "CREATE TABLE ocr_jobs (
    id UUID PRIMARY KEY,
    user_id UUID,
    image_url TEXT NOT NULL,
    image_hash VARCHAR(64),
    status VARCHAR(20) NOT NULL,
    result JSONB,
    created_at TIMESTAMP DEFAULT NOW()
)";

#[tokio::test]
async fn a_legacy_ocr_jobs_table_is_upgraded_in_place_with_every_row_kept() {
    let db = TestDb::new();
    db.create().await;
    let legacy = db.pool().await;
    let user = Uuid::new_v4();
    // The legacy shape, with duplicates the old check-then-insert let in.
    sqlx::raw_sql(LEGACY_OCR_JOBS)
        .execute(&legacy)
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION legacy_notify() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN PERFORM pg_notify('menu_extraction_jobs', NEW.id::text); RETURN NEW; END $$;",
    )
    .execute(&legacy)
    .await
    .unwrap();
    let mut ids = Vec::new();
    for (n, status) in [
        "completed",
        "completed",
        "failed",
        "queued",
        "processing",
        "pending",
    ]
    .iter()
    .enumerate()
    {
        let id = Uuid::new_v4();
        // Rows 0 and 1 are the same submission, both completed.
        let hash = if n < 2 { sha(0) } else { sha(n as u64) };
        sqlx::query(
            "INSERT INTO ocr_jobs (id, user_id, image_url, image_hash, status, result, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, TIMESTAMP '2025-06-01 12:00:00' + $7 * INTERVAL '1 minute')",
        )
        .bind(id)
        .bind(user)
        .bind(format!("https://legacy.example/{n}.jpg"))
        .bind(hash)
        .bind(status)
        .bind((*status == "completed").then(|| serde_json::json!({"items": [{"name": "Soup", "price": 4.5}]})))
        .bind(n as f64)
        .execute(&legacy)
        .await
        .unwrap();
        ids.push(id);
    }
    // A row written with only the seed's five required columns.
    let bare = Uuid::new_v4();
    sqlx::query("INSERT INTO ocr_jobs (id, user_id, image_url, image_hash, status) VALUES ($1, $2, 'https://legacy.example/bare.jpg', NULL, 'queued')")
        .bind(bare)
        .bind(user)
        .execute(&legacy)
        .await
        .unwrap();
    legacy.close().await;

    let server = TestServer::start_on(db).await;
    assert_eq!(server.job_count().await, 7, "every row kept");
    let kind: String =
        sqlx::query_scalar("SELECT relkind::text FROM pg_class WHERE relname = 'ocr_jobs'")
            .fetch_one(&server.pool)
            .await
            .unwrap();
    assert_eq!(kind, "v", "ocr_jobs is now a view");
    let through_view: i64 = sqlx::query_scalar("SELECT count(*) FROM ocr_jobs WHERE user_id = $1")
        .bind(user)
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert_eq!(through_view, 7);
    let created: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT created_at FROM ocr_jobs WHERE id = $1")
            .bind(ids[0])
            .fetch_one(&server.pool)
            .await
            .unwrap();
    assert_eq!(
        created.to_rfc3339(),
        "2025-06-01T12:00:00+00:00",
        "legacy wall-clock times read as UTC"
    );

    // Legacy rows are jobs over gRPC, with the defaults jobq added.
    let mut client = server.raw();
    let job = client
        .get_job(pb::GetJobRequest {
            job_id: ids[1].to_string(),
            user_id: user.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(job.status(), pb::JobStatus::Completed);
    assert_eq!(
        (
            job.schema_version.as_str(),
            job.prompt_version.as_str(),
            job.retry_count
        ),
        ("stage1", "v1.0", 0)
    );
    assert!(job.result.unwrap().fields.contains_key("items"));
    let unknown = client
        .get_job(pb::GetJobRequest {
            job_id: ids[5].to_string(),
            user_id: user.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(
        unknown.status(),
        pb::JobStatus::Unspecified,
        "a status jobq does not know is kept, shown as unspecified"
    );
    let listed = client
        .list_jobs(pb::ListJobsRequest {
            user_id: user.to_string(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), 7);

    // Deduplication works over legacy rows: the newest of the legacy duplicates.
    let again = client
        .submit_job(pb::SubmitJobRequest {
            image_sha256: sha(0),
            ..submission(user, 0)
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.deduplicated);
    assert_eq!(again.job.unwrap().id, ids[1].to_string());

    // Legacy writers can still insert through the view; jobq sees the job.
    let written: Uuid = sqlx::query_scalar(
        "INSERT INTO ocr_jobs (user_id, image_url, image_hash, status) VALUES ($1, 'https://legacy.example/new.jpg', $2, 'queued') RETURNING id",
    )
    .bind(user)
    .bind(sha(77))
    .fetch_one(&server.pool)
    .await
    .unwrap();
    let job = client
        .get_job(pb::GetJobRequest {
            job_id: written.to_string(),
            user_id: user.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(job.status(), pb::JobStatus::Queued);
    server.stop().await;
}

#[tokio::test]
async fn one_notification_per_statement_with_every_changed_job() {
    let server = TestServer::start().await;
    let mut listener = PgListener::connect(&server.db.url).await.unwrap();
    listener.listen("menu_extraction_jobs").await.unwrap();
    let user = Uuid::new_v4();

    let job = server
        .raw()
        .submit_job(submission(user, 1))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let inserted = listener.recv().await.unwrap();
    let payload: serde_json::Value = serde_json::from_str(inserted.payload()).unwrap();
    assert_eq!(
        payload,
        serde_json::json!({"op": "INSERT", "jobs": [[job.id, user.to_string(), "queued", job.version]]})
    );

    // 100 rows in one statement: notifications of at most 40 jobs each, all sent.
    sqlx::query(
        "INSERT INTO menu_extraction_jobs (user_id, image_url, image_hash)
         SELECT $1, 'https://x/' || g, encode(sha256(g::text::bytea), 'hex') FROM generate_series(1, 100) g",
    )
    .bind(user)
    .execute(&server.pool)
    .await
    .unwrap();
    let mut jobs = 0;
    let mut notifications = 0;
    while jobs < 100 {
        let note = listener.recv().await.unwrap();
        let payload: serde_json::Value = serde_json::from_str(note.payload()).unwrap();
        assert_eq!(payload["op"], "INSERT");
        let batch = payload["jobs"].as_array().unwrap().len();
        assert!(batch <= 40);
        assert!(note.payload().len() < 8000);
        jobs += batch;
        notifications += 1;
    }
    assert_eq!((jobs, notifications), (100, 3));

    // An update bumps version and updated_at and notifies with the new version.
    let before: (i64, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT version, updated_at FROM menu_extraction_jobs WHERE id = $1::uuid")
            .bind(&job.id)
            .fetch_one(&server.pool)
            .await
            .unwrap();
    let after: (i64, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "UPDATE menu_extraction_jobs SET status = 'failed' WHERE id = $1::uuid RETURNING version, updated_at",
    )
    .bind(&job.id)
    .fetch_one(&server.pool)
    .await
    .unwrap();
    assert!(after.0 > before.0 && after.1 >= before.1);
    let updated = listener.recv().await.unwrap();
    let payload: serde_json::Value = serde_json::from_str(updated.payload()).unwrap();
    assert_eq!(
        payload,
        serde_json::json!({"op": "UPDATE", "jobs": [[job.id, user.to_string(), "failed", after.0]]})
    );

    // A lease extension alone (what Heartbeat writes) is not a change: same
    // version, no notification. The next notification is the next real change.
    let heartbeat: i64 = sqlx::query_scalar(
        "UPDATE menu_extraction_jobs SET lease_expires_at = now() + INTERVAL '1 minute'
         WHERE id = $1::uuid RETURNING version",
    )
    .bind(&job.id)
    .fetch_one(&server.pool)
    .await
    .unwrap();
    assert_eq!(heartbeat, after.0);
    let cancelled: i64 = sqlx::query_scalar(
        "UPDATE menu_extraction_jobs SET status = 'cancelled' WHERE id = $1::uuid RETURNING version",
    )
    .bind(&job.id)
    .fetch_one(&server.pool)
    .await
    .unwrap();
    let next = listener.recv().await.unwrap();
    let payload: serde_json::Value = serde_json::from_str(next.payload()).unwrap();
    assert_eq!(
        payload,
        serde_json::json!({"op": "UPDATE", "jobs": [[job.id, user.to_string(), "cancelled", cancelled]]})
    );
    server.stop().await;
}

/// The plan Postgres picks for `sql`.
async fn plan(pool: &sqlx::PgPool, sql: &str) -> String {
    let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}")))
        .fetch_all(pool)
        .await
        .unwrap();
    rows.join("\n")
}

#[tokio::test]
async fn the_queries_use_their_indexes() {
    let server = TestServer::start().await;
    // 20,000 jobs of 200 users, each photo submitted under two prompt versions,
    // with statistics, so that the planner chooses as it would in production.
    sqlx::raw_sql(
        "INSERT INTO menu_extraction_jobs (user_id, image_url, image_hash, prompt_version, status, created_at)
         SELECT ('00000000-0000-4000-8000-' || lpad((g % 200)::text, 12, '0'))::uuid,
                'https://x/' || g,
                encode(sha256((g / 2)::text::bytea), 'hex'),
                CASE WHEN g % 2 = 0 THEN 'v1.0' ELSE 'v2.0' END,
                (ARRAY['queued', 'processing', 'completed', 'failed'])[1 + g % 4],
                now() - g * INTERVAL '1 second'
         FROM generate_series(1, 20000) g;
         ANALYZE menu_extraction_jobs;",
    )
    .execute(&server.pool)
    .await
    .unwrap();
    let user = "'00000000-0000-4000-8000-000000000007'::uuid";
    let keyset = plan(
        &server.pool,
        &format!(
            "SELECT * FROM menu_extraction_jobs WHERE user_id = {user}
             AND (created_at, uuid_send(id))
                 < (now() - INTERVAL '1 hour', uuid_send('0190a0a0-0000-7000-8000-000000000000'::uuid))
             ORDER BY created_at DESC, uuid_send(id) DESC LIMIT 21"
        ),
    )
    .await;
    assert!(
        keyset.contains("Index Scan Backward using menu_extraction_jobs_user_created"),
        "{keyset}"
    );
    assert!(
        keyset.contains("ROW(created_at, uuid_send(id)) < ROW("),
        "the keyset is an index condition: {keyset}"
    );
    assert!(!keyset.contains("Sort"), "no sort: {keyset}");

    // SubmitJob's lookup: the live job not exempt from deduplication by the
    // unique index, the newest exempt one by the exempt jobs' index.
    let key = format!(
        "jobq_submission_key(user_id, image_hash, schema_version, prompt_version)
             = jobq_submission_key({user}, encode(sha256('7'::bytea), 'hex'), 'stage1', 'v1.0')
         AND status IN ('queued', 'processing', 'completed')"
    );
    let dedup = plan(
        &server.pool,
        &format!(
            "SELECT * FROM (
                 (SELECT * FROM menu_extraction_jobs WHERE {key} AND NOT dedup_exempt)
                 UNION ALL
                 (SELECT * FROM menu_extraction_jobs WHERE {key} AND dedup_exempt
                  ORDER BY created_at DESC, id DESC LIMIT 1)
             ) AS live
             ORDER BY created_at DESC, id DESC LIMIT 1"
        ),
    )
    .await;
    assert!(
        dedup.contains("using menu_extraction_jobs_live_submission"),
        "{dedup}"
    );
    assert!(
        dedup.contains("using menu_extraction_jobs_exempt_submission"),
        "{dedup}"
    );
    assert!(!dedup.contains("Seq Scan"), "no table scan: {dedup}");

    // ClaimJobs takes the oldest queued jobs from the queue's partial index.
    let claim = plan(
        &server.pool,
        "WITH picked AS (
             SELECT id AS picked_id FROM menu_extraction_jobs WHERE status = 'queued'
             ORDER BY created_at, id LIMIT 25 FOR UPDATE SKIP LOCKED)
         UPDATE menu_extraction_jobs AS j SET status = 'processing'
         FROM picked WHERE j.id = picked.picked_id RETURNING j.id",
    )
    .await;
    assert!(
        claim.contains("Index Scan using menu_extraction_jobs_queue"),
        "{claim}"
    );
    assert!(!claim.contains("Sort"), "no sort: {claim}");

    // Lease expiry finds processing jobs by lease end.
    let expiry = plan(
        &server.pool,
        "SELECT id FROM menu_extraction_jobs WHERE status = 'processing' AND lease_expires_at < now()
         ORDER BY lease_expires_at LIMIT 1000 FOR UPDATE SKIP LOCKED",
    )
    .await;
    assert!(expiry.contains("menu_extraction_jobs_leases"), "{expiry}");
    server.stop().await;
}

#[tokio::test]
async fn a_written_image_hash_is_64_lowercase_hex_digits() {
    let server = TestServer::start().await;
    let insert = |hash: String| {
        let pool = server.pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO menu_extraction_jobs (user_id, image_url, image_hash)
                 VALUES (gen_random_uuid(), 'https://x/check', $1)",
            )
            .bind(hash)
            .execute(&pool)
            .await
        }
    };
    let good = sha(1);
    insert(good.clone()).await.unwrap();
    for bad in [
        good.to_uppercase(),
        good[..63].to_string(),
        format!("{}g", &good[..63]),
        format!("{}é", &good[..62]),
        format!(" {}", &good[..63]),
        format!("{}\n", &good[..63]),
        format!("{}\n{}", &good[..31], &good[32..]),
        String::new(),
    ] {
        let error = insert(bad.clone()).await.unwrap_err();
        assert!(
            error
                .to_string()
                .contains("menu_extraction_jobs_image_hash_hex"),
            "{bad:?}: {error}"
        );
    }
    // A row without a hash is a valid legacy row.
    sqlx::query(
        "INSERT INTO menu_extraction_jobs (user_id, image_url) VALUES (gen_random_uuid(), 'https://x/none')",
    )
    .execute(&server.pool)
    .await
    .unwrap();
    // An update that writes a hash is held to the same rule.
    let error = sqlx::query("UPDATE menu_extraction_jobs SET image_hash = upper(image_hash)")
        .execute(&server.pool)
        .await
        .unwrap_err();
    let error = error.as_database_error().unwrap();
    assert_eq!(
        (error.code().as_deref(), error.constraint()),
        (Some("23514"), Some("menu_extraction_jobs_image_hash_hex"))
    );
    assert_eq!(server.job_count().await, 2);
    let stored: Option<String> = sqlx::query_scalar(
        "SELECT image_hash FROM menu_extraction_jobs WHERE image_hash IS NOT NULL",
    )
    .fetch_one(&server.pool)
    .await
    .unwrap();
    assert_eq!(stored, Some(good), "nothing written");
    server.stop().await;
}

#[tokio::test]
async fn a_legacy_job_whose_hash_jobq_would_refuse_is_still_claimed_and_completed() {
    let db = TestDb::new();
    db.create().await;
    let legacy = db.pool().await;
    // The legacy table checked nothing: an uppercase hash, queued before a
    // well-formed one, so that every claim of the oldest jobs meets it.
    sqlx::raw_sql(LEGACY_OCR_JOBS)
        .execute(&legacy)
        .await
        .unwrap();
    let upper = sha(1).to_uppercase();
    for (n, hash) in [upper.clone(), sha(2)].into_iter().enumerate() {
        sqlx::query(
            "INSERT INTO ocr_jobs (id, user_id, image_url, image_hash, status, created_at)
             VALUES (gen_random_uuid(), gen_random_uuid(), 'https://legacy.example/x.jpg', $1,
                     'queued', TIMESTAMP '2025-06-01 12:00:00' + $2 * INTERVAL '1 minute')",
        )
        .bind(hash)
        .bind(n as f64)
        .execute(&legacy)
        .await
        .unwrap();
    }
    legacy.close().await;
    let server = TestServer::start_on(db).await;

    let claimed = claim_through_server(&server, 10).await;
    let hashes: Vec<String> = claimed
        .iter()
        .map(|c| c.job.as_ref().unwrap().image_sha256.clone())
        .collect();
    assert_eq!(
        hashes,
        [upper.clone(), sha(2)],
        "both claimed, oldest first"
    );
    let mut worker = pb::worker_service_client::WorkerServiceClient::new(server.channel());
    for claimed in &claimed {
        let completed = worker
            .complete_job(pb::CompleteJobRequest {
                job_id: claimed.job.as_ref().unwrap().id.clone(),
                lease_id: claimed.lease_id.clone(),
                result: Some(prost_types::Struct::default()),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        assert_eq!(completed.status(), pb::JobStatus::Completed);
    }
    // Kept as the legacy writer stored it.
    let stored: Vec<(String, String)> =
        sqlx::query_as("SELECT image_hash, status FROM menu_extraction_jobs ORDER BY created_at")
            .fetch_all(&server.pool)
            .await
            .unwrap();
    assert_eq!(
        stored,
        [
            (upper, "completed".to_owned()),
            (sha(2), "completed".to_owned())
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_server_not_yet_upgraded_still_claims_with_the_three_argument_claim() {
    // Migration 0013 added the claim's instant as a fourth argument; a server
    // of the version before calls jobq_claim with three, and must still claim
    // the oldest queued job at its transaction's start.
    let server = TestServer::start().await;
    let job = server.submit(Uuid::new_v4(), 1).await;
    let mut tx = server.pool.begin().await.unwrap();
    let claimed: Vec<(i32, Uuid, String, bool, bool)> = sqlx::query_as(
        "SELECT caller, id, status, started_at = now(), lease_expires_at = now() + interval '1 minute'
         FROM jobq_claim(ARRAY[0], ARRAY['old-server'], ARRAY[60000::bigint])",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        claimed,
        [(
            0,
            job.id.parse().unwrap(),
            "processing".to_owned(),
            true,
            true
        )]
    );
    server.stop().await;
}

/// Up to `max_jobs` jobs claimed through the server by worker `w`, without waiting.
async fn claim_through_server(server: &TestServer, max_jobs: i32) -> Vec<pb::ClaimedJob> {
    pb::worker_service_client::WorkerServiceClient::new(server.channel())
        .claim_jobs(pb::ClaimJobsRequest {
            worker_id: "w".into(),
            max_jobs,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs
}

/// Rows read from the jobs table by every scan of `plan` (EXPLAIN ANALYZE's
/// JSON), those its filters removed included, and whether any was a
/// sequential scan.
fn rows_read(plan: &serde_json::Value) -> (f64, bool) {
    let mut rows = 0.0;
    let mut sequential = plan["Node Type"] == "Seq Scan";
    if plan["Relation Name"] == "menu_extraction_jobs" {
        // Each count is an average per loop.
        let per_loop: f64 = [
            "Actual Rows",
            "Rows Removed by Filter",
            "Rows Removed by Index Recheck",
        ]
        .iter()
        .filter_map(|count| plan[count].as_f64())
        .sum();
        rows += per_loop * plan["Actual Loops"].as_f64().unwrap();
    }
    for child in plan["Plans"].as_array().into_iter().flatten() {
        let (more, seq) = rows_read(child);
        rows += more;
        sequential |= seq;
    }
    (rows, sequential)
}

#[tokio::test]
async fn submission_plans_made_on_an_empty_table_still_read_only_what_they_look_for() {
    use jobq_server::storage::submit::LOOKUP;
    use jobq_server::storage::usage::{SUBMISSION_PLANNING, USAGE};
    let server = TestServer::start().await;
    sqlx::raw_sql("ANALYZE menu_extraction_jobs")
        .execute(&server.pool)
        .await
        .unwrap();
    let mut conn = server.pool.acquire().await.unwrap();
    // As a submission transaction plans it: once, here on the empty table.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN; {SUBMISSION_PLANNING};
         PREPARE lookup(uuid[], int[], uuid[], uuid[], int[], uuid[], text[], text[], text[]) AS {LOOKUP};
         PREPARE usage(uuid[], bigint[], bigint[], timestamptz, timestamptz) AS {USAGE}"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    let execute = |user: Uuid, request: Uuid, hash: &str| {
        format!(
            "EXECUTE lookup('{{{user}}}', '{{0}}', '{{{user}}}', '{{{request}}}',
                            '{{1}}', '{{{user}}}', '{{{hash}}}', '{{stage1}}', '{{v1.0}}')"
        )
    };
    let count = |user: Uuid| {
        format!(
            "EXECUTE usage('{{{user}}}', '{{10}}', '{{1}}', now() - INTERVAL '30 days',
                           now() - INTERVAL '1 hour')"
        )
    };
    let (nobody, nothing) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "{}; {}",
        execute(nobody, nothing, &sha(0)),
        count(nobody)
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    // The table grows to 100,000 jobs, each with a request id (as the client
    // sends them), and nothing analyzes it: the plan made empty is kept.
    let (user, request): (Uuid, Uuid) = sqlx::query_as(
        "WITH made AS (
             INSERT INTO menu_extraction_jobs (user_id, image_url, image_hash, submit_request_id)
             SELECT gen_random_uuid(), 'https://x/' || g, encode(sha256(g::text::bytea), 'hex'),
                    gen_random_uuid()
             FROM generate_series(1, 100000) g
             RETURNING user_id, submit_request_id, image_url)
         SELECT user_id, submit_request_id FROM made WHERE image_url = 'https://x/7'",
    )
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    let hash: String =
        sqlx::query_scalar("SELECT image_hash FROM menu_extraction_jobs WHERE user_id = $1")
            .bind(user)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    let explained: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) {}",
        execute(user, request, &hash)
    )))
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    let plan = &explained[0]["Plan"];
    // The same job, found by its request id and by its photo; nothing else read.
    assert_eq!(plan["Actual Rows"], 2, "{plan:#}");
    let (rows, sequential) = rows_read(plan);
    assert!(!sequential, "{plan:#}");
    assert!(rows <= 2.0, "read {rows} rows: {plan:#}");

    // And the usage count of a user on a limited plan.
    let explained: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, FORMAT JSON) {}",
        count(user)
    )))
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    let plan = &explained[0]["Plan"];
    let (rows, sequential) = rows_read(plan);
    assert!(!sequential, "{plan:#}");
    assert!(
        rows <= 1.0,
        "read {rows} rows for one user's one job: {plan:#}"
    );
    sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.unwrap();
    drop(conn);
    server.stop().await;
}

/// A new connection to the server's database that plans as the server's
/// pooled connections do (its plans are made by its own first executions).
async fn server_like_connection(server: &TestServer) -> sqlx::PgConnection {
    connection_planning_as(server, &jobq_server::storage::PLANNER_SETTINGS).await
}

/// A connection that plans as the server's connections for statements planned
/// once do (the claim's).
async fn planned_once_connection(server: &TestServer) -> sqlx::PgConnection {
    connection_planning_as(server, &jobq_server::storage::PLANNED_ONCE_SETTINGS).await
}

async fn connection_planning_as(
    server: &TestServer,
    settings: &[(&str, &str)],
) -> sqlx::PgConnection {
    use sqlx::ConnectOptions;
    server
        .db
        .url
        .parse::<sqlx::postgres::PgConnectOptions>()
        .unwrap()
        .options(settings.iter().copied())
        .connect()
        .await
        .unwrap()
}

/// A submission transaction's generic plan made while the statistics say the
/// table is empty but it holds a few rows could tie the unique submission
/// index with the user's (user_id, created_at, id) index, both reached by
/// `user_id = ...` and both estimated at one row: planned at 100 rows of one
/// user, the lookup of the live job walked all that user's jobs through the
/// latter (found by auto_explain in a submit benchmark, 4-16 ms a lookup).
/// Since migration 0011 the lookup names each index's key as one value that
/// no other index holds. Planned here at several sizes, then the user has
/// 3,000 jobs and nothing analyzes: each lookup reads only what it returns.
#[tokio::test]
async fn a_submission_lookup_reads_only_what_it_finds_however_many_jobs_its_user_has() {
    use jobq_server::storage::submit::LOOKUP;
    use jobq_server::storage::usage::SUBMISSION_PLANNING;
    use sqlx::Row;
    let server = TestServer::start().await;
    let user = Uuid::new_v4();
    let (request, photo) = (Uuid::new_v4(), sha(7));
    let execute = format!(
        "EXECUTE lookup('{{{user}}}', '{{0}}', '{{{user}}}', '{{{request}}}',
                        '{{0}}', '{{{user}}}', '{{{photo}}}', '{{stage1}}', '{{v1.0}}')"
    );
    for planned_at in [0, 10, 100, 1000] {
        sqlx::raw_sql("TRUNCATE menu_extraction_jobs; ANALYZE menu_extraction_jobs")
            .execute(&server.pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO menu_extraction_jobs (user_id, image_url, image_hash)
             SELECT $1, 'https://x/' || g, encode(sha256(g::text::bytea), 'hex')
             FROM generate_series(1, $2) g",
        )
        .bind(user)
        .bind(planned_at)
        .execute(&server.pool)
        .await
        .unwrap();
        // A new connection, planning as a submission transaction does: the
        // plan is made by the first execution, here.
        let mut conn = server_like_connection(&server).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "BEGIN; {SUBMISSION_PLANNING};
             PREPARE lookup(uuid[], int[], uuid[], uuid[], int[], uuid[], text[], text[], text[]) AS {LOOKUP};
             {execute}"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        // 3,000 more jobs of the user: two older copies of the photo exempt
        // from deduplication, its live job (with the request id), and others.
        let live: Uuid = sqlx::query_scalar(
            "WITH others AS (
                 INSERT INTO menu_extraction_jobs (user_id, image_url, image_hash, created_at)
                 SELECT $1, 'https://y/' || g, encode(sha256(('y' || g)::bytea), 'hex'),
                        now() - INTERVAL '1 day'
                 FROM generate_series(1, 2997) g),
             exempt AS (
                 INSERT INTO menu_extraction_jobs (user_id, image_url, image_hash, dedup_exempt, created_at)
                 SELECT $1, 'https://z/' || g, $3, true, now() - g * INTERVAL '1 hour'
                 FROM generate_series(1, 2) g)
             INSERT INTO menu_extraction_jobs (user_id, image_url, image_hash, submit_request_id)
             VALUES ($1, 'https://z/live', $3, $2)
             RETURNING id",
        )
        .bind(user)
        .bind(request)
        .bind(&photo)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        let explained: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (ANALYZE, FORMAT JSON) {execute}"
        )))
        .fetch_one(&mut conn)
        .await
        .unwrap();
        let plan = &explained[0]["Plan"];
        let (rows, sequential) = rows_read(plan);
        assert!(!sequential, "planned at {planned_at} rows: {plan:#}");
        // The live job by its request id, the live job by its photo and the
        // newest exempt copy (the live job is newer): three rows.
        assert!(
            rows <= 3.0,
            "planned at {planned_at} rows, read {rows}: {plan:#}"
        );
        // And what it finds: the live job, by its request id and by its photo.
        let found: Vec<(bool, Uuid)> = sqlx::raw_sql(sqlx::AssertSqlSafe(execute.clone()))
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get("by_request"), row.get("id")))
            .collect();
        assert_eq!(
            found,
            [(true, live), (false, live)],
            "planned at {planned_at} rows"
        );
        sqlx::raw_sql("ROLLBACK").execute(&mut conn).await.unwrap();
    }
    server.stop().await;
}

/// The submission indexes are keyed on byte strings made from their columns
/// (migration 0011): two jobs share a key exactly when they share every
/// column, whatever the columns hold, and a job without a hash (a legacy
/// writer's) is never a duplicate.
#[tokio::test]
async fn submission_keys_tell_apart_exactly_what_their_columns_do() {
    let server = TestServer::start().await;
    let user = Uuid::new_v4();
    let insert = |schema: &'static str, prompt: &'static str, hash: Option<String>| {
        sqlx::query(
            "INSERT INTO menu_extraction_jobs (user_id, image_url, image_hash, schema_version, prompt_version)
             VALUES ($1, 'https://x/1', $2, $3, $4)",
        )
        .bind(user)
        .bind(hash)
        .bind(schema)
        .bind(prompt)
        .execute(&server.pool)
    };
    // Distinct submissions whose columns would run together if joined.
    let distinct = [
        ("a", "bc"),
        ("ab", "c"),
        ("a\\", "b"),
        ("a", "\\b"),
        ("a\\0", "b"),
        ("a", "0b"),
    ];
    for (schema, prompt) in distinct {
        insert(schema, prompt, Some(sha(1))).await.unwrap();
    }
    // The same again: each is refused by the live submission index.
    for (schema, prompt) in distinct {
        let refused = insert(schema, prompt, Some(sha(1))).await.unwrap_err();
        assert_eq!(
            refused.as_database_error().unwrap().constraint(),
            Some("menu_extraction_jobs_live_submission"),
            "{schema:?} {prompt:?}"
        );
    }
    // Jobs without a hash never collide.
    insert("a", "bc", None).await.unwrap();
    insert("a", "bc", None).await.unwrap();
    // And the same photo and versions for another user is another submission.
    sqlx::query(
        "INSERT INTO menu_extraction_jobs (user_id, image_url, image_hash, schema_version, prompt_version)
         VALUES ($1, 'https://x/1', $2, 'a', 'bc')",
    )
    .bind(Uuid::new_v4())
    .bind(sha(1))
    .execute(&server.pool)
    .await
    .unwrap();
    server.stop().await;
}

/// What the transaction on `conn` has read of `table` so far, from its own
/// statistics: sequential scans, and rows fetched by index.
async fn read_so_far(conn: &mut sqlx::PgConnection, table: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT seq_scan, idx_tup_fetch FROM pg_stat_xact_user_tables WHERE relname = $1",
    )
    .bind(table)
    .fetch_one(conn)
    .await
    .unwrap()
}

/// The indexes of `table` the transaction on `conn` has scanned so far, from
/// its own statistics, by name.
async fn indexes_read_so_far(conn: &mut sqlx::PgConnection, table: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT indexrelid::regclass::text
         FROM pg_index
         WHERE indrelid = $1::regclass AND pg_stat_get_xact_numscans(indexrelid) > 0
         ORDER BY 1",
    )
    .bind(table)
    .fetch_all(conn)
    .await
    .unwrap()
}

/// A server, and a connection planning as its connections for statements
/// planned once do, after `table` was analyzed empty: the plans a test makes
/// on it first are made from statistics that say the table has no rows.
async fn planning_once_on_empty(table: &str) -> (TestServer, sqlx::PgConnection) {
    let server = TestServer::start().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ANALYZE {table}")))
        .execute(&server.pool)
        .await
        .unwrap();
    let conn = planned_once_connection(&server).await;
    (server, conn)
}

/// The API-key lookup runs on connections that plan each statement once: its
/// plan, made here on the empty, analyzed table, still reads only the keys it
/// looks up once 20,000 are stored and nothing analyzes.
#[tokio::test]
async fn a_key_lookup_planned_on_an_empty_table_reads_only_its_keys() {
    use jobq_server::storage::keys::KEY_LOOKUP;
    use sqlx::Connection;
    let (server, mut conn) = planning_once_on_empty("api_keys").await;
    let lookup = |ids: Vec<Uuid>| sqlx::query(KEY_LOOKUP).bind(ids);
    assert!(
        lookup(vec![Uuid::new_v4()])
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .is_empty()
    );
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO api_keys (id, name, role, digest)
         SELECT gen_random_uuid(), 'key ' || g, 'service', sha256(g::text::bytea)
         FROM generate_series(1, 20000) g
         RETURNING id",
    )
    .fetch_all(&server.pool)
    .await
    .unwrap();
    let mut tx = conn.begin().await.unwrap();
    let found = lookup(vec![ids[7], ids[19_000], Uuid::new_v4()])
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(found.len(), 2);
    let (sequential, by_index) = read_so_far(&mut tx, "api_keys").await;
    tx.rollback().await.unwrap();
    assert_eq!((sequential, by_index), (0, 2));
    drop(conn);
    server.stop().await;
}

/// Completions run on the connections that plan once: the completion's plan,
/// made here on the empty, analyzed table, still finds its jobs by primary key
/// once 20,000 are stored and nothing analyzes. Before migration 0014 it was
/// made on the user's jobs index, which then held the id, and would have read
/// all 20,000 entries to complete two jobs.
#[tokio::test]
async fn a_completion_planned_on_an_empty_table_reads_only_its_jobs() {
    use jobq_server::storage::leases::COMPLETE;
    use sqlx::Connection;
    let (server, mut conn) = planning_once_on_empty("menu_extraction_jobs").await;
    let complete = |ids: Vec<Uuid>, leases: Vec<Uuid>| {
        let n = ids.len();
        let none = vec![None::<serde_json::Value>; n];
        sqlx::query(COMPLETE)
            .bind(ids)
            .bind(leases)
            .bind(none.clone())
            .bind(none.clone())
            .bind(vec![None::<f32>; n])
            .bind(none.clone())
            .bind(none)
    };
    let nothing = complete(vec![Uuid::new_v4()], vec![Uuid::new_v4()])
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert!(nothing.is_empty());
    // 20,000 jobs of one user (all of them in one stretch of its index), two
    // of them processing under known leases.
    let user = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO menu_extraction_jobs (user_id, image_url, image_hash)
         SELECT $1, 'https://x/' || g, encode(sha256(g::text::bytea), 'hex')
         FROM generate_series(1, 20000) g",
    )
    .bind(user)
    .execute(&server.pool)
    .await
    .unwrap();
    let (ids, leases): (Vec<Uuid>, Vec<Uuid>) = sqlx::query_as::<_, (Uuid, Uuid)>(
        "UPDATE menu_extraction_jobs
         SET status = 'processing', lease_id = gen_random_uuid(),
             lease_expires_at = now() + INTERVAL '1 minute'
         WHERE image_url IN ('https://x/7', 'https://x/19000')
         RETURNING id, lease_id",
    )
    .fetch_all(&server.pool)
    .await
    .unwrap()
    .into_iter()
    .chain([(Uuid::new_v4(), Uuid::new_v4())])
    .unzip();
    assert_eq!(ids.len(), 3);
    let mut tx = conn.begin().await.unwrap();
    let completed = complete(ids, leases).fetch_all(&mut *tx).await.unwrap();
    assert_eq!(completed.len(), 2);
    let (sequential, by_index) = read_so_far(&mut tx, "menu_extraction_jobs").await;
    // A plan through the user's index would fetch the same two rows, having
    // read every entry of the index to find them: which index was read is
    // the test.
    let indexes = indexes_read_so_far(&mut tx, "menu_extraction_jobs").await;
    tx.rollback().await.unwrap();
    assert_eq!((sequential, by_index), (0, 2));
    assert_eq!(indexes, ["menu_extraction_jobs_pkey"]);
    drop(conn);
    server.stop().await;
}

/// The claim's plan is made on the first claim of a connection and kept. Made
/// here on the empty, analyzed table, then a backlog of 20,000 jobs that
/// nothing analyzes: a claim of 100 still walks the queue index in order and
/// stops after the jobs it claims, and updates each where it lies, instead of
/// reading the whole backlog and sorting it (what Postgres plans for these
/// statistics when bitmap scans are allowed) or scanning a whole index to find
/// the claimed jobs again (the generic plans of the claim before migration
/// 0010). What it read is the transaction's own statistics, so the test holds
/// for any plan that reads no more.
#[tokio::test]
async fn a_claim_reads_the_jobs_it_claims_whatever_the_statistics_say() {
    use jobq_server::storage::leases::CLAIM;
    use sqlx::Connection;
    // A connection that plans as the server's claims do; its first claim, on
    // the empty table, makes the plan.
    let (server, mut conn) = planning_once_on_empty("menu_extraction_jobs").await;
    let claim = |slots: usize| {
        sqlx::query(CLAIM)
            .bind(vec![0_i32; slots])
            .bind(vec!["w"])
            .bind(vec![60_000_i64])
            // At the transaction's start, as ClaimJobs claims.
            .bind(None::<chrono::DateTime<chrono::Utc>>)
    };
    assert!(claim(1).fetch_all(&mut conn).await.unwrap().is_empty());
    sqlx::raw_sql(
        "INSERT INTO menu_extraction_jobs (user_id, image_url, image_hash)
         SELECT gen_random_uuid(), 'https://x/' || g, encode(sha256(g::text::bytea), 'hex')
         FROM generate_series(1, 20000) g",
    )
    .execute(&server.pool)
    .await
    .unwrap();
    let mut tx = conn.begin().await.unwrap();
    let claimed = claim(100).fetch_all(&mut *tx).await.unwrap();
    assert_eq!(claimed.len(), 100);
    let (sequential, by_index) = read_so_far(&mut tx, "menu_extraction_jobs").await;
    tx.rollback().await.unwrap();
    assert_eq!(sequential, 0);
    // The 100 from the queue index (the migration's plan fetches nothing else
    // by index; finding each again by primary key would be 100 more); 20,000
    // or more if it read the backlog or a whole index.
    assert!(
        by_index <= 200,
        "fetched {by_index} rows by index to claim 100"
    );

    // And through the server: the 100 oldest.
    let claimed = claim_through_server(&server, 100).await;
    let oldest: Vec<String> = sqlx::query_scalar(
        "SELECT id::text FROM menu_extraction_jobs ORDER BY created_at, id LIMIT 100",
    )
    .fetch_all(&server.pool)
    .await
    .unwrap();
    let claimed: Vec<String> = claimed.into_iter().map(|c| c.job.unwrap().id).collect();
    assert_eq!(claimed, oldest);
    server.stop().await;
}

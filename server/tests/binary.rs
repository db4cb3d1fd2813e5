//! The `jobq-server` binary: `migrate`, configuration from flags, environment and a
//! plans file, JSON logs with one line per RPC, a clean exit on SIGTERM, and limits
//! that hold across two server processes on one database. It lives in the server
//! package because cargo builds a package's binary only for that package's own
//! integration tests; it shares the end-to-end harness in `tests/common`.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};

use common::{TestDb, error_info, sha, submission};
use jobq_proto::pb;
use jobq_proto::pb::job_queue_service_client::JobQueueServiceClient;
use jobq_proto::pb::worker_service_client::WorkerServiceClient;
use tokio::sync::mpsc::UnboundedReceiver;
use tonic::Code;
use uuid::Uuid;

/// The `jobq-server` binary, built by cargo for this test.
fn server_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jobq-server"))
}

/// A `jobq-server` process serving on a port of its own, logging JSON.
struct ServerProcess {
    child: Child,
    lines: UnboundedReceiver<serde_json::Value>,
    url: String,
}

impl ServerProcess {
    /// Starts the binary with `args` (plus `--listen 127.0.0.1:0` and JSON logs)
    /// and the environment `env`, and waits until it serves.
    async fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(server_binary())
            // Keys are the business of the auth tests; a test that wants them
            // passes --auth required (flags win over the environment).
            .env("JOBQ_AUTH", "disabled")
            .envs(env.iter().copied())
            .env("JOBQ_LOG_FORMAT", "json")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (lines_tx, lines) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let Ok(json) = serde_json::from_str(&line) else {
                    panic!("a log line that is not JSON: {line}")
                };
                if lines_tx.send(json).is_err() {
                    break;
                }
            }
        });
        let mut process = Self {
            child,
            lines,
            url: String::new(),
        };
        let serving = process.wait_for("serving").await;
        process.url = format!(
            "http://{}",
            serving["listen"]
                .as_str()
                .expect("the address it listens on")
        );
        process
    }

    /// The next log line whose message is `message`.
    async fn wait_for(&mut self, message: &str) -> serde_json::Value {
        loop {
            let line = self
                .lines
                .recv()
                .await
                .unwrap_or_else(|| panic!("log ended before {message:?}"));
            if line["message"] == message {
                return line;
            }
        }
    }

    async fn client(&self) -> JobQueueServiceClient<tonic::transport::Channel> {
        JobQueueServiceClient::connect(self.url.clone())
            .await
            .unwrap()
    }

    async fn worker(&self) -> WorkerServiceClient<tonic::transport::Channel> {
        WorkerServiceClient::connect(self.url.clone())
            .await
            .unwrap()
    }

    /// Sends SIGTERM and waits for a clean stop.
    async fn terminate(mut self) -> ExitStatus {
        let kill = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        self.wait_for("shutting down").await;
        self.wait_for("stopped").await;
        let mut child = self.child;
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap()
    }
}

/// A plans file in the temp directory, removed when dropped.
struct PlansFile(PathBuf);

impl PlansFile {
    /// Plans whose default plan (free) has no limits.
    fn unlimited() -> Self {
        let path =
            std::env::temp_dir().join(format!("jobq-plans-{}.toml", Uuid::new_v4().simple()));
        std::fs::write(&path, "[plans.free]\nmonthly_jobs = -1\nhourly_jobs = -1\n").unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for PlansFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Two server processes over `db` (migrated first), with `args` besides the URL.
async fn two_servers(db: &TestDb, args: &[&str]) -> (ServerProcess, ServerProcess) {
    let migrate = Command::new(server_binary())
        .args(["migrate", "--database-url", &db.url])
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let mut all = vec!["--database-url", db.url.as_str()];
    all.extend_from_slice(args);
    (
        ServerProcess::start(&all, &[]).await,
        ServerProcess::start(&all, &[]).await,
    )
}

#[tokio::test]
async fn the_binary_migrates_serves_and_stops_on_sigterm() {
    let db = TestDb::new();

    // `migrate` creates the database and applies the migrations, then exits.
    let migrate = Command::new(server_binary())
        .args(["migrate", "--database-url", &db.url])
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let pool = db.pool().await;
    let migrations: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(migrations >= 2);
    pool.close().await;

    // Environment variables configure it; a flag wins over its variable.
    let mut server = ServerProcess::start(
        &["--database-url", &db.url],
        &[("DATABASE_URL", "postgres://nobody@127.0.0.1:1/never")],
    )
    .await;
    let client = jobq_client::JobQueueClient::connect(server.url.clone())
        .await
        .unwrap();
    client
        .submit_job(jobq_client::SubmitJob::new(
            Uuid::new_v4(),
            "https://storage.example/x.jpg",
            sha(5),
        ))
        .await
        .unwrap();
    let rpc = server.wait_for("rpc").await;
    assert_eq!(rpc["code"], "Ok");
    assert!(rpc["latency_ms"].is_number());
    let status = server.terminate().await;
    assert!(status.success(), "exit status {status}");

    // A bad configuration is a message, not a panic.
    let bad = Command::new(server_binary())
        .args(["--listen", "nowhere"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--listen"));
    db.drop_database().await;
}

#[tokio::test]
async fn a_malformed_plans_file_stops_the_server_at_start_naming_the_problem() {
    let dir = std::env::temp_dir();
    let cases = [
        ("[plans.free]\nmontly_jobs = 3\n", "montly_jobs"),
        (
            "[plans.premium]\nmonthly_jobs = -5\n",
            "plans.premium.monthly_jobs",
        ),
        (
            "[plans.team]\nhourly_jobs = 5\n",
            "a new plan needs monthly_jobs",
        ),
        ("[plans.free\n", "plans file"),
    ];
    for (text, problem) in cases {
        let path = dir.join(format!("jobq-plans-{}.toml", Uuid::new_v4().simple()));
        std::fs::write(&path, text).unwrap();
        let path_text = path.to_str().unwrap();
        // The database is never reached: the plans are checked first.
        let output = Command::new(server_binary())
            .args([
                "--plans",
                path_text,
                "--database-url",
                "postgres://nobody@127.0.0.1:1/never",
            ])
            .output()
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{text:?} was accepted");
        assert!(stderr.contains(problem), "{text:?}: {stderr}");
        assert!(
            stderr.contains(path_text),
            "{text:?}: the file is named: {stderr}"
        );
    }
    let missing = Command::new(server_binary())
        .env("JOBQ_PLANS", "/nonexistent/plans.toml")
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/plans.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_hold_across_two_server_processes() {
    let db = TestDb::new();
    let (first, second) = two_servers(&db, &[]).await;

    // 40 connections, 20 to each process, each warmed by one call.
    let mut clients = Vec::new();
    for n in 0..40 {
        let mut client = if n % 2 == 0 {
            first.client().await
        } else {
            second.client().await
        };
        client
            .check_quota(pb::CheckQuotaRequest {
                user_id: Uuid::new_v4().to_string(),
            })
            .await
            .unwrap();
        clients.push(client);
    }
    let user = Uuid::new_v4();
    let answers = common::all_at_once(clients, move |i, mut client| async move {
        client.submit_job(submission(user, i as u64)).await
    })
    .await;

    assert_eq!(answers.iter().filter(|a| a.is_ok()).count(), 5);
    for status in answers.iter().filter_map(|a| a.as_ref().err()) {
        assert_eq!(status.code(), Code::ResourceExhausted);
        let (reason, metadata) = error_info(status);
        assert_eq!(
            (
                reason.as_str(),
                metadata["used"].as_str(),
                metadata["limit"].as_str()
            ),
            ("QUOTA_EXCEEDED", "5", "5")
        );
    }
    let pool = db.pool().await;
    let jobs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM menu_extraction_jobs WHERE user_id = $1")
            .bind(user)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(jobs, 5);
    pool.close().await;

    assert!(first.terminate().await.success());
    assert!(second.terminate().await.success());
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_on_two_server_processes_never_claim_the_same_job() {
    let db = TestDb::new();
    // Free users submit here, so give the default plan no limits.
    let plans = PlansFile::unlimited();
    let (first, second) = two_servers(&db, &["--plans", plans.path()]).await;

    let mut submitter = first.client().await;
    for n in 0..400 {
        submitter
            .submit_job(submission(Uuid::new_v4(), n))
            .await
            .unwrap();
    }
    let mut workers = Vec::new();
    for w in 0..8 {
        let mut client = if w % 2 == 0 {
            first.worker().await
        } else {
            second.worker().await
        };
        workers.push(tokio::spawn(async move {
            let mut claimed = Vec::new();
            loop {
                let jobs = client
                    .claim_jobs(pb::ClaimJobsRequest {
                        worker_id: format!("worker-{w}"),
                        max_jobs: 10,
                        lease_duration: Some(prost_types::Duration {
                            seconds: 300,
                            nanos: 0,
                        }),
                        wait: None,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .jobs;
                if jobs.is_empty() {
                    return claimed;
                }
                claimed.extend(jobs.into_iter().map(|c| c.job.unwrap().id));
            }
        }));
    }
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.unwrap());
    }
    let distinct: std::collections::HashSet<_> = all.iter().collect();
    assert_eq!(
        (all.len(), distinct.len()),
        (400, 400),
        "every job claimed once, by one worker"
    );

    assert!(first.terminate().await.success());
    assert!(second.terminate().await.success());
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_on_one_server_sees_every_change_made_through_another() {
    let db = TestDb::new();
    // Free users submit here, so give the default plan no limits.
    let plans = PlansFile::unlimited();
    let (a, b) = two_servers(&db, &["--plans", plans.path()]).await;

    let user = Uuid::new_v4();
    let mut on_a = a.client().await;
    let mut watcher = common::Watcher::open(
        &mut on_a,
        pb::WatchJobsRequest {
            user_id: user.to_string(),
            ..Default::default()
        },
    )
    .await;

    // Through B: 20 jobs submitted, claimed, and completed or failed.
    let mut through_b = b.client().await;
    let mut worker = b.worker().await;
    for n in 0..20 {
        through_b.submit_job(submission(user, n)).await.unwrap();
    }
    let claimed = worker
        .claim_jobs(pb::ClaimJobsRequest {
            worker_id: "on-b".into(),
            max_jobs: 20,
            lease_duration: Some(prost_types::Duration {
                seconds: 300,
                nanos: 0,
            }),
            wait: None,
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(claimed.len(), 20);
    for (n, job) in claimed.iter().enumerate() {
        let job_id = job.job.as_ref().unwrap().id.clone();
        if n % 2 == 0 {
            worker
                .complete_job(pb::CompleteJobRequest {
                    job_id,
                    lease_id: job.lease_id.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
        } else {
            worker
                .fail_job(pb::FailJobRequest {
                    job_id,
                    lease_id: job.lease_id.clone(),
                    error_message: "no menu".into(),
                })
                .await
                .unwrap();
        }
    }
    let pool = db.pool().await;
    let table = common::table_versions(&pool, Some(user)).await;
    watcher.until_matches(&table).await;
    assert_eq!(watcher.view.len(), 20);
    // Every job at its final state (versions only ever increased: Watcher checks).
    let completed = watcher
        .view
        .values()
        .filter(|job| job.status() == pb::JobStatus::Completed)
        .count();
    let failed = watcher
        .view
        .values()
        .filter(|job| job.status() == pb::JobStatus::Failed)
        .count();
    assert_eq!((completed, failed), (10, 10));
    pool.close().await;
    drop(watcher);
    assert!(a.terminate().await.success());
    assert!(b.terminate().await.success());
    db.drop_database().await;
}

/// `--auth disabled` is for a developer's own machine: on an address others can
/// reach, the server does not start, and says why.
#[tokio::test]
async fn auth_disabled_on_a_non_loopback_address_refuses_to_start() {
    for listen in ["0.0.0.0:0", "[::]:0"] {
        let output = Command::new(server_binary())
            .args(["--listen", listen, "--auth", "disabled"])
            // Never reached: the check comes first.
            .args(["--database-url", "postgres://nobody@127.0.0.1:1/never"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{listen}: {stderr}");
        assert!(
            stderr.contains("--auth disabled is refused on")
                && stderr.contains("loopback")
                && stderr.contains("keys create"),
            "{listen}: {stderr}"
        );
    }
}

/// `jobq-server keys create|list|revoke` against the database, and the keys at
/// work on a server that requires them.
#[tokio::test]
async fn keys_are_managed_from_the_command_line() {
    let db = TestDb::new();
    let keys = |args: &[&str]| {
        Command::new(server_binary())
            .arg("keys")
            .args(args)
            .args(["--database-url", &db.url])
            .output()
            .unwrap()
    };
    let created = keys(&["create", "--role", "service", "--name", "menu backend"]);
    assert!(created.status.success(), "{created:?}");
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("jobq_"), "only the key on stdout: {key}");
    assert!(String::from_utf8_lossy(&created.stderr).contains("not shown again"));
    let id = Uuid::parse_str(&key[5..37]).unwrap();

    let bad = keys(&["create", "--role", "user", "--name", "no user"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("user_id"),
        "{bad:?}"
    );
    let bad = keys(&["create", "--role", "root", "--name", "x"]);
    assert!(!bad.status.success());

    let listed = String::from_utf8(keys(&["list"]).stdout).unwrap();
    assert!(
        listed.contains(&id.to_string()) && listed.contains("menu backend"),
        "{listed}"
    );
    assert!(!listed.contains(&key[38..]), "no secret in the listing");

    let server =
        ServerProcess::start(&["--auth", "required", "--database-url", &db.url], &[]).await;
    let mut client = server.client().await;
    let quota = |key: &str| {
        let mut request = tonic::Request::new(pb::CheckQuotaRequest {
            user_id: Uuid::new_v4().to_string(),
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        request
    };
    client
        .check_quota(quota(&key))
        .await
        .expect("the new key works");
    let no_key = client
        .check_quota(pb::CheckQuotaRequest {
            user_id: Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(no_key.code(), Code::Unauthenticated);

    let revoked = keys(&["revoke", &id.to_string()]);
    assert!(revoked.status.success(), "{revoked:?}");
    let status = client.check_quota(quota(&key)).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::Unauthenticated,
        "revoked on its next call"
    );
    let missing = keys(&["revoke", &Uuid::new_v4().to_string()]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&keys(&["list"]).stdout)
            .lines()
            .count()
            == 1,
        "only the header: revoked keys are hidden"
    );
    assert!(
        String::from_utf8_lossy(&keys(&["list", "--include-revoked"]).stdout)
            .contains(&id.to_string())
    );

    let status = server.terminate().await;
    assert!(status.success());
    db.drop_database().await;
}

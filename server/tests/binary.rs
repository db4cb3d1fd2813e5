//! The `jobq-server` binary: `migrate`, configuration from flags and environment,
//! JSON logs with one line per RPC, and a clean exit on SIGTERM. It lives in the
//! server package because cargo builds a package's binary only for that package's
//! own integration tests; it shares the end-to-end harness in `tests/common`.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::{TestDb, sha};
use uuid::Uuid;

/// The `jobq-server` binary, built by cargo for this test.
fn server_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jobq-server"))
}

#[tokio::test]
async fn the_binary_migrates_serves_and_stops_on_sigterm() {
    let db = TestDb::new();
    let binary = server_binary();

    // `migrate` creates the database and applies the migrations, then exits.
    let migrate = Command::new(&binary)
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
    assert!(migrations >= 1);
    pool.close().await;

    // Environment variables configure it; a flag wins over its variable.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(&binary)
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/never")
        .env("JOBQ_LOG_FORMAT", "json")
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database-url",
            &db.url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
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
    let wait_for = async |lines: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
                          message: &str| loop {
        let line = lines
            .recv()
            .await
            .unwrap_or_else(|| panic!("log ended before {message:?}"));
        if line["message"] == message {
            return line;
        }
    };
    wait_for(&mut lines, "serving").await;

    let client = jobq_client::JobQueueClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let user = Uuid::new_v4();
    client
        .submit_job(jobq_client::SubmitJob::new(
            user,
            "https://storage.example/x.jpg",
            sha(5),
        ))
        .await
        .unwrap();
    let rpc = wait_for(&mut lines, "rpc").await;
    assert_eq!(rpc["code"], "Ok");
    assert!(rpc["latency_ms"].is_number());

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    wait_for(&mut lines, "shutting down").await;
    wait_for(&mut lines, "stopped").await;
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");

    // The error answer for a bad configuration is a message, not a panic.
    let bad = Command::new(&binary)
        .args(["--listen", "nowhere"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--listen"));
    db.drop_database().await;
}

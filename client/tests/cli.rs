//! The `jobq` binary against a real server over a real database: what it prints,
//! and the exit codes scripts rely on.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::Stdio;
use std::time::Duration;

use chrono::{Datelike, TimeZone, Utc};
use common::{TestServer, sha};
use jobq_client::{ClaimJobs, Completion, SubmitJob, TokenUsage, sha256_hex};
use jobq_server::config::AuthMode;
use jobq_server::plans::Plans;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};
use uuid::Uuid;

/// What one run of `jobq` did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts that the run succeeded; its stdout.
    fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "{self:#?}");
        &self.stdout
    }

    /// Asserts that the run succeeded; its stdout as one JSON document.
    fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("{e}: {self:#?}"))
    }

    /// Asserts that the run failed with `code`, printed nothing on stdout and
    /// exactly one line on stderr; that line.
    fn failed(&self, code: i32) -> &str {
        assert_eq!(self.code, Some(code), "{self:#?}");
        assert_eq!(self.stdout, "", "{self:#?}");
        assert_eq!(self.stderr.lines().count(), 1, "{self:#?}");
        assert!(self.stderr.ends_with('\n'), "{self:#?}");
        self.stderr.trim_end()
    }
}

/// `jobq --url <url>`, unaffected by the environment of the test run.
fn jobq_command(url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jobq"));
    command
        .arg("--url")
        .arg(url)
        .env_remove("JOBQ_URL")
        .env_remove("JOBQ_API_KEY")
        .kill_on_drop(true);
    command
}

/// Runs `jobq --url <url> <args>` to its end.
async fn jobq(url: &str, args: &[&str]) -> Run {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        jobq_command(url).args(args).output(),
    )
    .await
    .expect("jobq exits within 60 s")
    .expect("jobq runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
    }
}

/// The value of `key` in `key: value` output.
fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no `{key}:` in\n{text}"))
}

/// A file in the temporary directory, removed when dropped (even by a failing test).
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(contents: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!("jobq-cli-{}.jpg", Uuid::new_v4()));
        std::fs::write(&path, contents).expect("write a temporary file");
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Best effort: a leftover temporary file harms nothing.
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The ids of a `--json` listing, in order.
fn ids(listing: &Value) -> Vec<&str> {
    listing["jobs"]
        .as_array()
        .expect("a jobs array")
        .iter()
        .map(|job| job["id"].as_str().expect("an id"))
        .collect()
}

/// The first instant of the next UTC month, as the quota error prints it.
fn next_month() -> String {
    let now = Utc::now();
    let (year, month) = match now.month() {
        12 => (now.year() + 1, 1),
        month => (now.year(), month + 1),
    };
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0)
        .single()
        .expect("a valid instant")
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The next line `jobq watch` prints (`None` once it closed stdout).
async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("a line within 30 s")
        .expect("stdout reads")
}

#[tokio::test]
async fn submits_reads_lists_and_cancels_jobs() {
    let server = TestServer::start().await;
    let url = server.url();
    let user = Uuid::new_v4().to_string();
    let photo = b"\xff\xd8\xff\xe0 a photo of a menu";
    let photo_file = TempFile::new(photo);
    let file = photo_file.path();
    let submit_file = [
        "submit",
        "--user",
        &user,
        "--file",
        file,
        "--image-url",
        "https://storage.example/menus/1.jpg",
    ];

    // --file: the hash is the file's.
    let run = jobq(&url, &submit_file).await;
    let text = run.ok();
    assert_eq!(field(text, "image_sha256"), sha256_hex(photo));
    assert_eq!(field(text, "user_id"), user);
    assert_eq!(field(text, "status"), "queued");
    assert_eq!(field(text, "schema_version"), "stage1");
    assert_eq!(field(text, "deduplicated"), "no");
    let first = field(text, "id").to_owned();

    // The same photo again is the same job.
    let again = jobq(&url, &[&submit_file[..], &["--json"]].concat())
        .await
        .json();
    assert_eq!(again["deduplicated"], true);
    assert_eq!(again["job"]["id"], first.as_str());

    // --sha256, forced, with versions; the JSON form of a job.
    let forced = jobq(
        &url,
        &[
            "submit",
            "--user",
            &user,
            "--sha256",
            &sha(2),
            "--image-url",
            "https://storage.example/menus/2.jpg",
            "--force",
            "--schema-version",
            "stage2",
            "--prompt-version",
            "v2.0",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(forced["deduplicated"], false);
    let job = &forced["job"];
    assert_eq!(job["status"], "queued");
    assert_eq!(job["user_id"], user.as_str());
    assert_eq!(job["image_sha256"], sha(2));
    assert_eq!(job["schema_version"], "stage2");
    assert_eq!(job["prompt_version"], "v2.0");
    assert_eq!(job["started_at"], Value::Null);
    assert_eq!(job["result"], Value::Null);
    let created_at = job["created_at"].as_str().expect("created_at");
    chrono::DateTime::parse_from_rfc3339(created_at).expect("created_at is RFC 3339");
    let second = job["id"].as_str().expect("an id").to_owned();

    // get: key: value lines, or the same JSON as the submission printed.
    let text = jobq(&url, &["get", &first, "--user", &user]).await;
    assert_eq!(field(text.ok(), "id"), first);
    assert_eq!(
        field(text.ok(), "image_url"),
        "https://storage.example/menus/1.jpg"
    );
    let got = jobq(&url, &["get", &second, "--user", &user, "--json"])
        .await
        .json();
    assert_eq!(&got, job);

    // list: an aligned table, newest first.
    let run = jobq(&url, &["list", "--user", &user]).await;
    let lines: Vec<&str> = run.ok().lines().collect();
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines[0].starts_with("ID "), "{lines:#?}");
    assert!(lines[1].starts_with(&second), "{lines:#?}");
    assert!(lines[2].starts_with(&first), "{lines:#?}");
    let status_column = lines[0].find("STATUS").expect("a STATUS column");
    let url_column = lines[0].find("IMAGE URL").expect("an IMAGE URL column");
    for line in &lines[1..] {
        assert_eq!(&line[status_column..status_column + 7], "queued ");
        assert!(line[url_column..].starts_with("https://storage.example/menus/"));
    }
    let listing = jobq(&url, &["list", "--user", &user, "--json"])
        .await
        .json();
    assert_eq!(ids(&listing), [second.as_str(), first.as_str()]);
    assert_eq!(listing["next_page_token"], Value::Null);
    assert_eq!(&listing["jobs"][0], job);

    // Pages: one at a time with a token, or --all to the end.
    let page = jobq(
        &url,
        &["list", "--user", &user, "--page-size", "1", "--json"],
    )
    .await
    .json();
    assert_eq!(ids(&page), [second.as_str()]);
    let token = page["next_page_token"].as_str().expect("a next page");
    let rest = jobq(
        &url,
        &[
            "list",
            "--user",
            &user,
            "--page-size",
            "1",
            "--page-token",
            token,
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(ids(&rest), [first.as_str()]);
    let run = jobq(&url, &["list", "--user", &user, "--page-size", "1"]).await;
    let last = run.ok().lines().last().expect("lines");
    assert_eq!(last, format!("more: --page-token {token} (or --all)"));
    let all = jobq(
        &url,
        &[
            "list",
            "--user",
            &user,
            "--page-size",
            "1",
            "--all",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(ids(&all), [second.as_str(), first.as_str()]);
    assert_eq!(all["next_page_token"], Value::Null);

    // cancel, then list by status.
    let cancelled = jobq(&url, &["cancel", &first, "--user", &user]).await;
    assert_eq!(field(cancelled.ok(), "status"), "cancelled");
    let listing = jobq(
        &url,
        &["list", "--user", &user, "--status", "cancelled", "--json"],
    )
    .await
    .json();
    assert_eq!(ids(&listing), [first.as_str()]);
    let none = jobq(&url, &["list", "--user", &user, "--status", "failed"]).await;
    assert_eq!(none.ok(), "no jobs\n");

    // quota: this server's free plan has no limits.
    let run = jobq(&url, &["quota", "--user", &user]).await;
    let text = run.ok();
    assert_eq!(field(text, "plan"), "free");
    assert_eq!(field(text, "allowed"), "yes");
    assert!(
        field(text, "monthly").starts_with("2 used (unlimited), resets "),
        "{text}"
    );

    server.stop().await;
}

#[tokio::test]
async fn prints_a_finished_job_and_retries_a_failed_one() {
    let server = TestServer::start().await;
    let url = server.url();
    let client = server.client();
    let worker = client.worker();
    let user = Uuid::new_v4();
    let user_arg = user.to_string();
    for n in 1..=2 {
        client
            .submit_job(SubmitJob::new(
                user,
                format!("https://storage.example/menus/{n}.jpg"),
                sha(n),
            ))
            .await
            .expect("submit");
    }
    let claimed = worker
        .claim_jobs(&ClaimJobs::new("cli-test", 2))
        .await
        .expect("claim");
    let [done, failed] = &claimed[..] else {
        panic!("two jobs claimed: {claimed:?}");
    };
    let result = json!({ "restaurant": "Chez Test", "items": [{ "name": "Soup", "price": 4.5 }] });
    let Value::Object(result_map) = result.clone() else {
        unreachable!("a JSON object")
    };
    worker
        .complete_job(
            &done.lease,
            Completion::new(result_map)
                .confidence(0.9)
                .token_usage(TokenUsage {
                    input_tokens: 1200,
                    output_tokens: 340,
                    model: "vision-test".into(),
                    cost_usd: 0.0125,
                    extras: serde_json::Map::new(),
                })
                .uncertain_items(vec![json!("Soup of the day")]),
        )
        .await
        .expect("complete");
    worker
        .fail_job(&failed.lease, "the photo is blurred")
        .await
        .expect("fail");

    let job = jobq(
        &url,
        &[
            "get",
            &done.job.id.to_string(),
            "--user",
            &user_arg,
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(job["status"], "completed");
    assert_eq!(job["result"], result);
    assert_eq!(job["confidence"], json!(0.9));
    assert_eq!(
        job["token_usage"],
        json!({
            "input_tokens": 1200,
            "output_tokens": 340,
            "model": "vision-test",
            "cost_usd": 0.0125,
            "extras": {},
        })
    );
    assert_eq!(job["uncertain_items"], json!(["Soup of the day"]));
    assert!(job["processing_time_seconds"].as_f64().is_some(), "{job}");
    for at in ["started_at", "completed_at"] {
        let at = job[at].as_str().unwrap_or_else(|| panic!("{at} in {job}"));
        chrono::DateTime::parse_from_rfc3339(at).expect("RFC 3339");
    }
    let run = jobq(
        &url,
        &["get", &done.job.id.to_string(), "--user", &user_arg],
    )
    .await;
    let text = run.ok();
    assert_eq!(field(text, "status"), "completed");
    assert_eq!(field(text, "confidence"), "0.9");
    assert_eq!(
        field(text, "token_usage"),
        "1200 in, 340 out, vision-test, $0.0125"
    );
    assert_eq!(
        serde_json::from_str::<Value>(field(text, "result")).expect("JSON"),
        result
    );

    let text = jobq(
        &url,
        &["get", &failed.job.id.to_string(), "--user", &user_arg],
    )
    .await;
    assert_eq!(field(text.ok(), "status"), "failed");
    assert_eq!(field(text.ok(), "error_message"), "the photo is blurred");

    // retry prints the new job; a second retry prints the same one.
    let retry = jobq(
        &url,
        &[
            "retry",
            &failed.job.id.to_string(),
            "--user",
            &user_arg,
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(retry["status"], "queued");
    assert_eq!(retry["retry_count"], 1);
    assert_eq!(retry["retry_of_job_id"], failed.job.id.to_string());
    assert_ne!(retry["id"], failed.job.id.to_string());
    let again = jobq(
        &url,
        &["retry", &failed.job.id.to_string(), "--user", &user_arg],
    )
    .await;
    assert_eq!(
        field(again.ok(), "id"),
        retry["id"].as_str().expect("an id")
    );
    assert_eq!(
        field(again.ok(), "retry_of_job_id"),
        failed.job.id.to_string()
    );

    server.stop().await;
}

#[tokio::test]
async fn watch_prints_each_event_as_a_json_line_as_it_comes() {
    let server = TestServer::start().await;
    let client = server.client();
    let user = Uuid::new_v4();
    let mut watch = jobq_command(&server.url())
        .args([
            "watch",
            "--user",
            &user.to_string(),
            "--count",
            "2",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("jobq watch starts");
    let mut lines = BufReader::new(watch.stdout.take().expect("piped stdout")).lines();

    let job = client
        .submit_job(SubmitJob::new(
            user,
            "https://storage.example/menus/1.jpg",
            sha(1),
        ))
        .await
        .expect("submit")
        .job;
    let line = next_line(&mut lines).await.expect("a first event");
    let first: Value = serde_json::from_str(&line).expect("one JSON object per line");
    // The stream may have opened after the submission committed: then the job
    // comes in its initial snapshot instead.
    assert!(
        matches!(first["kind"].as_str(), Some("created" | "snapshot")),
        "{first}"
    );
    assert_eq!(first["job"]["id"], job.id.to_string());
    assert_eq!(first["job"]["status"], "queued");

    client.cancel_job(user, job.id).await.expect("cancel");
    let line = next_line(&mut lines).await.expect("a second event");
    let second: Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(second["kind"], "updated");
    assert_eq!(second["job"]["id"], job.id.to_string());
    assert_eq!(second["job"]["status"], "cancelled");
    assert!(second["job"]["version"].as_i64() > first["job"]["version"].as_i64());
    assert!(
        !second["resume_token"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
    );

    // --count 2: it ends by itself, successfully.
    assert_eq!(next_line(&mut lines).await, None);
    let status = tokio::time::timeout(Duration::from_secs(30), watch.wait())
        .await
        .expect("jobq watch exits")
        .expect("wait");
    assert!(status.success(), "{status}");

    // The human form: time, kind, job id, status.
    let run = jobq(
        &server.url(),
        &[
            "watch",
            "--user",
            &user.to_string(),
            "--job",
            &job.id.to_string(),
            "--count",
            "1",
        ],
    )
    .await;
    let text = run.ok();
    assert_eq!(text.lines().count(), 1, "{text}");
    let words: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(words[1..], ["snapshot", &job.id.to_string(), "cancelled"]);
    chrono::DateTime::parse_from_rfc3339(words[0]).expect("an RFC 3339 time");

    server.stop().await;
}

#[tokio::test]
async fn a_submission_over_the_quota_exits_4_with_one_line() {
    let server = TestServer::start_with_plans(Plans::builtin()).await;
    let url = server.url();
    let user = Uuid::new_v4().to_string();
    let submit = |n: u64| {
        let url = url.clone();
        let user = user.clone();
        async move {
            let image = format!("https://storage.example/menus/{n}.jpg");
            jobq(
                &url,
                &[
                    "submit",
                    "--user",
                    &user,
                    "--sha256",
                    &sha(n),
                    "--image-url",
                    &image,
                ],
            )
            .await
        }
    };
    for n in 1..=5 {
        submit(n).await.ok();
    }

    let quota = jobq(&url, &["quota", "--user", &user, "--json"])
        .await
        .json();
    assert_eq!(quota["plan"], "free");
    assert_eq!(quota["allowed"], false);
    assert_eq!(quota["reason"], "QUOTA_EXCEEDED");
    assert_eq!(quota["monthly"]["used"], 5);
    assert_eq!(quota["monthly"]["limit"], 5);
    assert_eq!(quota["monthly"]["resets_at"], next_month());
    assert_eq!(quota["hourly"]["limit"], 10);
    let text = jobq(&url, &["quota", "--user", &user]).await;
    assert_eq!(field(text.ok(), "allowed"), "no (QUOTA_EXCEEDED)");
    assert_eq!(
        field(text.ok(), "monthly"),
        format!("5 of 5 used, resets {}", next_month())
    );

    let refused = submit(6).await;
    assert_eq!(
        refused.failed(4),
        format!(
            "jobq: quota exceeded: 5 of 5 used this month, resets {}",
            next_month()
        )
    );
    assert_eq!(server.job_count().await, 5);

    // Another plan lifts it.
    let plan = jobq(&url, &["plan", "set", "--user", &user, "premium", "--json"])
        .await
        .json();
    assert_eq!(plan["plan"], "premium");
    assert_eq!(plan["user_id"], user.as_str());
    let plan = jobq(&url, &["plan", "get", "--user", &user]).await;
    assert_eq!(field(plan.ok(), "plan"), "premium");
    submit(6).await.ok();
    let unknown = jobq(&url, &["plan", "set", "--user", &user, "platinum"]).await;
    let line = unknown.failed(5);
    assert!(line.starts_with("jobq: invalid argument: "), "{line}");
    assert!(line.contains("plan"), "{line}");

    server.stop().await;
}

#[tokio::test]
async fn refusals_exit_with_their_code_and_one_line() {
    let server = TestServer::start().await;
    let url = server.url();
    let user = Uuid::new_v4();
    let user_arg = user.to_string();
    let missing = Uuid::new_v4().to_string();

    // Not found: 3.
    for command in ["get", "cancel", "retry"] {
        let run = jobq(&url, &[command, &missing, "--user", &user_arg]).await;
        assert_eq!(run.failed(3), "jobq: job not found", "{command}");
    }

    // Bad input: 5, naming the field.
    let run = jobq(
        &url,
        &[
            "submit",
            "--user",
            &user_arg,
            "--sha256",
            "xyz",
            "--image-url",
            "https://storage.example/menus/1.jpg",
        ],
    )
    .await;
    let line = run.failed(5);
    assert!(line.starts_with("jobq: invalid argument: "), "{line}");
    assert!(line.contains("image_sha256"), "{line}");
    let run = jobq(&url, &["list", "--user", &user_arg, "--page-size", "1000"]).await;
    assert!(run.failed(5).contains("page_size"), "{run:#?}");

    // A refused transition: 5.
    let job = server
        .client()
        .submit_job(SubmitJob::new(
            user,
            "https://storage.example/menus/1.jpg",
            sha(1),
        ))
        .await
        .expect("submit")
        .job;
    let run = jobq(&url, &["retry", &job.id.to_string(), "--user", &user_arg]).await;
    assert_eq!(run.failed(5), "jobq: invalid status: JOB_STATUS_QUEUED");

    // A file that cannot be read: 1.
    let run = jobq(
        &url,
        &[
            "submit",
            "--user",
            &user_arg,
            "--file",
            "/nonexistent/menu.jpg",
            "--image-url",
            "https://storage.example/menus/1.jpg",
        ],
    )
    .await;
    assert!(
        run.failed(1)
            .starts_with("jobq: cannot read /nonexistent/menu.jpg: "),
        "{run:#?}"
    );

    // Usage errors are clap's: 2.
    let job_id = job.id.to_string();
    let sha1 = sha(1);
    for args in [
        &["get", &job_id][..],
        &["get", "not-a-uuid", "--user", &user_arg],
        &[
            "submit",
            "--user",
            &user_arg,
            "--image-url",
            "https://x/1.jpg",
        ],
        &[
            "submit",
            "--user",
            &user_arg,
            "--image-url",
            "https://x/1.jpg",
            "--sha256",
            &sha1,
            "--file",
            "x",
        ],
        &["list", "--user", &user_arg, "--status", "lost"],
        &["--timeout", "soon", "quota", "--user", &user_arg],
        &["watch", "--count", "0"],
    ] {
        let run = jobq(&url, args).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:#?}");
        assert!(run.stderr.starts_with("error: "), "{args:?}: {run:#?}");
    }

    server.stop().await;
}

#[tokio::test]
async fn a_call_without_a_valid_key_exits_7() {
    let server = TestServer::start_configured(|config| config.auth = AuthMode::Required).await;
    let user = Uuid::new_v4().to_string();
    let run = jobq(&server.url(), &["quota", "--user", &user]).await;
    assert!(
        run.failed(7).starts_with("jobq: unauthenticated: "),
        "{run:#?}"
    );

    // The key from the environment, sent as a bearer token.
    let output = jobq_command(&server.url())
        .args(["quota", "--user", &user])
        .env("JOBQ_API_KEY", "jobq_not_a_real_key")
        .output()
        .await
        .expect("jobq runs");
    let stderr = String::from_utf8(output.stderr).expect("UTF-8");
    assert_eq!(output.status.code(), Some(7), "{stderr}");
    assert!(stderr.starts_with("jobq: unauthenticated: "), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // A real key works; a worker key may not read quotas (7 again).
    let storage = jobq_server::storage::Storage::open(&server.db.url, 1)
        .await
        .unwrap();
    let role = |role| jobq_server::auth::create_key(&storage, "cli", Some(role), None);
    let (_, service_key) = role(jobq_server::auth::Role::Service).await.unwrap();
    let (_, worker_key) = role(jobq_server::auth::Role::Worker).await.unwrap();
    storage.close().await;
    let output = jobq_command(&server.url())
        .args(["quota", "--user", &user, "--json"])
        .env("JOBQ_API_KEY", &service_key)
        .output()
        .await
        .expect("jobq runs");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let quota: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(quota["allowed"], true, "{quota}");
    let run = jobq(
        &server.url(),
        &["quota", "--user", &user, "--api-key", &worker_key],
    )
    .await;
    assert!(
        run.failed(7)
            .starts_with("jobq: permission denied: a worker key may not call"),
        "{run:#?}"
    );

    server.stop().await;
}

#[tokio::test]
async fn an_unreachable_server_exits_6() {
    let user = Uuid::new_v4().to_string();
    let run = jobq("http://127.0.0.1:1", &["quota", "--user", &user]).await;
    let line = run.failed(6);
    assert!(line.starts_with("jobq: cannot connect: "), "{line}");

    // A URL that is not one is a usage error.
    let run = jobq("127.0.0.1:50051", &["quota", "--user", &user]).await;
    assert!(
        run.failed(2).starts_with("jobq: invalid server URL: "),
        "{run:#?}"
    );
}

#[tokio::test]
async fn help_documents_the_exit_codes() {
    let run = jobq("http://127.0.0.1:1", &["--help"]).await;
    let help = run.ok();
    assert!(help.contains("Exit codes:"), "{help}");
    for line in [
        "  0  success",
        "  1  other error",
        "  2  usage error",
        "  3  not found",
        "  4  refused by a limit",
        "  5  refused request",
        "  6  server unavailable",
        "  7  unauthenticated or permission denied",
    ] {
        assert!(help.contains(line), "{line}: {help}");
    }
}

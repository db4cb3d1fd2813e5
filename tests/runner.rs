//! The client crate's worker runner against a real server: every job handled and
//! reported once, handler errors become failures, shutdown drains cleanly,
//! cancellation reaches the handler, and a server restart loses and repeats
//! nothing.

mod common;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestServer, sha};
use futures::StreamExt;
use jobq_client::{
    Completion, JobContext, JobQueueClient, JobStatus, RetryPolicy, SubmitJob, Worker, WorkerReport,
};
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

/// Submits `n` distinct jobs for `user` through the client crate, 16 at a time.
async fn submit(client: &JobQueueClient, user: Uuid, n: u64) -> Vec<Uuid> {
    futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            async move {
                let request =
                    SubmitJob::new(user, format!("https://storage.example/{i}.jpg"), sha(i));
                client.submit_job(request).await.expect("submitted").job.id
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

fn menu(job: &JobContext) -> Completion {
    let mut result = serde_json::Map::new();
    result.insert("photo".into(), job.job.image_url.clone().into());
    Completion::new(result)
}

/// Which jobs each handler call saw, and a signal when a count is reached.
#[derive(Clone, Default)]
struct Calls {
    seen: Arc<Mutex<HashMap<Uuid, u32>>>,
    reached: Arc<Notify>,
}

impl Calls {
    fn record(&self, id: Uuid, target: usize) {
        let mut seen = self.seen.lock().unwrap();
        *seen.entry(id).or_default() += 1;
        if seen.len() >= target {
            self.reached.notify_one();
        }
    }

    fn counts(&self) -> HashMap<Uuid, u32> {
        self.seen.lock().unwrap().clone()
    }
}

async fn statuses(server: &TestServer) -> HashMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT status, count(*) FROM menu_extraction_jobs GROUP BY status",
    )
    .fetch_all(&server.pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_jobs_each_handled_and_reported_once() {
    let server = TestServer::start().await;
    let client = server.client();
    let user = Uuid::new_v4();
    let ids = submit(&client, user, 1_000).await;
    assert_eq!(ids.len(), 1_000);

    let calls = Calls::default();
    let handler_calls = calls.clone();
    let done = calls.reached.clone();
    let report = Worker::builder(client.worker())
        .worker_id("runner-test")
        .concurrency(16)
        .lease(Duration::from_secs(10))
        .claim_wait(Duration::from_secs(5))
        .run(
            move |job: JobContext| {
                let calls = handler_calls.clone();
                async move {
                    calls.record(job.job.id, 1_000);
                    // 0-20 ms of "model time".
                    let millis = RandomState::new().hash_one(job.job.id) % 21;
                    tokio::time::sleep(Duration::from_millis(millis)).await;
                    // Every photo numbered 7, 17, 27, ... cannot be read.
                    if job.job.image_url.ends_with("7.jpg") {
                        return Err(format!("cannot read {}", job.job.image_url));
                    }
                    Ok(menu(&job))
                }
            },
            async move { done.notified().await },
        )
        .await
        .expect("the run ends cleanly");

    // Every job handled exactly once.
    let counts = calls.counts();
    assert_eq!(counts.len(), 1_000);
    assert!(counts.values().all(|&n| n == 1), "a job was handled twice");
    assert_eq!(
        report,
        WorkerReport {
            claimed: 1_000,
            completed: 900,
            failed: 100,
            ..WorkerReport::default()
        }
    );
    let by_status = statuses(&server).await;
    assert_eq!(by_status.get("completed"), Some(&900));
    assert_eq!(by_status.get("failed"), Some(&100));
    assert_eq!(by_status.len(), 2, "{by_status:?}");
    // Claimed once each, and the failures carry the handler's message.
    let (max_attempt, wrong_messages): (i32, i64) = sqlx::query_as(
        "SELECT max(attempt), count(*) FILTER (WHERE status = 'failed' AND error_message <> 'cannot read ' || image_url)
         FROM menu_extraction_jobs",
    )
    .fetch_one(&server.pool)
    .await
    .unwrap();
    assert_eq!(max_attempt, 1);
    assert_eq!(wrong_messages, 0);
    let completed = client.get_job(user, ids[0]).await.unwrap();
    if completed.status == JobStatus::Completed {
        assert_eq!(
            completed.result.unwrap()["photo"],
            completed.image_url.as_str()
        );
    }
    server.stop().await;
}

/// Jobs that finish together are reported together (CompleteJobs), and a
/// completion the server refuses (here a confidence above 1) costs only its own
/// job: the call that carried it is refused as a whole, and the runner then
/// sends each of its completions alone. The refused one is failed with the
/// server's reason rather than left for its lease to expire and run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_completion_costs_only_its_own_job() {
    let server = TestServer::start().await;
    let client = server.client();
    let user = Uuid::new_v4();
    submit(&client, user, 60).await;

    let calls = Calls::default();
    let handler_calls = calls.clone();
    let done = calls.reached.clone();
    let report = Worker::builder(client.worker())
        .worker_id("batching-runner")
        .concurrency(60)
        .run(
            move |job: JobContext| {
                let calls = handler_calls.clone();
                async move {
                    calls.record(job.job.id, 60);
                    let completion = menu(&job);
                    // Returns at once, so the 60 completions queue up together.
                    if job.job.image_url.ends_with("/13.jpg") {
                        return Ok::<_, String>(completion.confidence(2.0));
                    }
                    Ok(completion)
                }
            },
            async move { done.notified().await },
        )
        .await
        .expect("the run ends cleanly");

    assert_eq!(
        report,
        WorkerReport {
            claimed: 60,
            completed: 59,
            failed: 1,
            ..WorkerReport::default()
        }
    );
    // 59 completed with their own results; the refused one failed, saying why,
    // after one attempt, with no result.
    type Row = (
        String,
        String,
        Option<serde_json::Value>,
        Option<String>,
        i32,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT image_url, status, result, error_message, attempt
             FROM menu_extraction_jobs ORDER BY image_url",
    )
    .fetch_all(&server.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 60);
    for (url, status, result, error_message, attempt) in rows {
        assert_eq!(attempt, 1, "{url}");
        if url.ends_with("/13.jpg") {
            assert_eq!((status.as_str(), result), ("failed", None));
            let error_message = error_message.unwrap();
            assert!(
                error_message.starts_with("the server refused the handler's completion: ")
                    && error_message.contains("confidence"),
                "{error_message}"
            );
        } else {
            assert_eq!(status, "completed", "{url}");
            assert_eq!(result.unwrap()["photo"], url.as_str());
        }
    }
    server.stop().await;
}

/// Shutdown stops claiming, lets running handlers finish, and leaves nothing
/// PROCESSING; a handler that outlives the grace period is told to stop and its
/// job is failed with a message saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_drains_running_jobs_and_fails_those_past_the_grace_period() {
    let server = TestServer::start().await;
    let client = server.client();
    let user = Uuid::new_v4();
    submit(&client, user, 200).await;

    // Part 1: shutdown after 40 handlers started; they all finish.
    let calls = Calls::default();
    let handler_calls = calls.clone();
    let started = calls.reached.clone();
    let report = Worker::builder(client.worker())
        .concurrency(8)
        .shutdown_grace(Duration::from_secs(30))
        .run(
            move |job: JobContext| {
                let calls = handler_calls.clone();
                async move {
                    calls.record(job.job.id, 40);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, String>(menu(&job))
                }
            },
            async move { started.notified().await },
        )
        .await
        .unwrap();
    let handled = calls.counts().len() as u64;
    assert!(handled >= 40);
    assert_eq!(
        report.completed, handled,
        "every started handler finished: {report:?}"
    );
    assert_eq!(
        report.claimed, handled,
        "nothing claimed was left unhandled"
    );
    let by_status = statuses(&server).await;
    assert_eq!(by_status.get("processing"), None, "{by_status:?}");
    assert_eq!(by_status.get("completed"), Some(&(handled as i64)));
    assert_eq!(by_status.get("queued"), Some(&(200 - handled as i64)));

    // Part 2: handlers that never end by themselves; a 300 ms grace period.
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let (stopped, mut stopped_by_signal) = mpsc::unbounded_channel();
    let shutdown = async move {
        for _ in 0..3 {
            started_rx.recv().await;
        }
    };
    let report = Worker::builder(client.worker())
        .worker_id("slow-worker")
        .concurrency(3)
        .shutdown_grace(Duration::from_millis(300))
        .run(
            move |job: JobContext| {
                let started = started_tx.clone();
                let stopped = stopped.clone();
                async move {
                    // Work handed off to a task of its own stops on the signal;
                    // the handler itself is dropped.
                    let signal = job.cancellation();
                    tokio::spawn(async move {
                        signal.cancelled().await;
                        let _ = stopped.send(());
                    });
                    let _ = started.send(());
                    std::future::pending::<Result<Completion, String>>().await
                }
            },
            shutdown,
        )
        .await
        .unwrap();
    assert_eq!(report.abandoned, 3, "{report:?}");
    assert_eq!(report.claimed, 3);
    // The signal was raised before the jobs were failed: each hand-off sees it.
    for _ in 0..3 {
        stopped_by_signal
            .recv()
            .await
            .expect("a hand-off saw the stop signal");
    }
    let (failed, processing): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'failed'
                                   AND error_message LIKE 'worker slow-worker shut down before the job finished%'),
                count(*) FILTER (WHERE status = 'processing')
         FROM menu_extraction_jobs",
    )
    .fetch_one(&server.pool)
    .await
    .unwrap();
    assert_eq!((failed, processing), (3, 0));
    server.stop().await;
}

/// CancelJob on a running job reaches its handler through the heartbeat, and the
/// job settles as CANCELLED.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_jobs_handler_sees_the_cancellation() {
    let server = TestServer::start().await;
    let client = server.client();
    let user = Uuid::new_v4();
    let job_id = submit(&client, user, 1).await[0];

    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let runner = tokio::spawn({
        let worker = client.worker();
        async move {
            Worker::builder(worker)
                .lease(Duration::from_secs(1)) // renewed every ~333 ms
                .run(
                    move |job: JobContext| {
                        let started = started_tx.clone();
                        let seen = seen_tx.clone();
                        async move {
                            let _ = started.send(job.job.id);
                            job.cancelled().await;
                            let _ = seen.send(job.job.id);
                            Err::<Completion, _>("stopped: its owner cancelled it")
                        }
                    },
                    async move {
                        // Runs until the handler has seen the cancellation.
                        std::future::pending::<()>().await;
                    },
                )
                .await
        }
    });
    assert_eq!(started_rx.recv().await, Some(job_id));
    let cancelling = client.cancel_job(user, job_id).await.unwrap();
    assert_eq!(cancelling.status, JobStatus::Processing);
    assert!(cancelling.cancel_requested);
    assert_eq!(
        seen_rx.recv().await,
        Some(job_id),
        "the handler saw the cancellation"
    );
    let done = client
        .wait_for_job(
            user,
            job_id,
            jobq_client::WaitOptions::new(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert_eq!(done.status, JobStatus::Cancelled);
    runner.abort();
    server.stop().await;
}

/// A job's handler slot is free as soon as its handler ends: while a finished
/// job's report is held up (its row locked in the database, so the completion
/// waits), a runner of one handler slot claims and runs the next job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_finished_jobs_slot_is_free_while_its_report_is_on_its_way() {
    let server = TestServer::start().await;
    let client = server.client();
    let ids = submit(&client, Uuid::new_v4(), 2).await;

    // The first job's handler ends when told to; the second's at once.
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let finish_first = Arc::new(Notify::new());
    let stop = Arc::new(Notify::new());
    let runner = tokio::spawn({
        let worker = client.worker();
        let (finish_first, stop) = (finish_first.clone(), stop.clone());
        let handled = Arc::new(Mutex::new(0));
        async move {
            Worker::builder(worker)
                .worker_id("one-slot")
                .concurrency(1)
                .run(
                    move |job: JobContext| {
                        let started = started_tx.clone();
                        let finish_first = finish_first.clone();
                        let handled = handled.clone();
                        async move {
                            let _ = started.send(job.job.id);
                            let nth = {
                                let mut handled = handled.lock().unwrap();
                                *handled += 1;
                                *handled
                            };
                            if nth == 1 {
                                finish_first.notified().await;
                            }
                            Ok::<_, String>(menu(&job))
                        }
                    },
                    async move { stop.notified().await },
                )
                .await
        }
    });
    let first = started_rx.recv().await.expect("the first job started");
    let second = *ids.iter().find(|&&id| id != first).expect("two jobs");
    // The first job's completion will wait for this lock.
    let mut lock = server.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM menu_extraction_jobs WHERE id = $1 FOR UPDATE")
        .bind(first)
        .execute(&mut *lock)
        .await
        .unwrap();
    finish_first.notify_one();
    let next = tokio::time::timeout(Duration::from_secs(20), started_rx.recv())
        .await
        .expect("the runner claimed the next job while the first one's report waited");
    assert_eq!(next, Some(second));
    let (first_status,): (String,) =
        sqlx::query_as("SELECT status FROM menu_extraction_jobs WHERE id = $1")
            .bind(first)
            .fetch_one(&server.pool)
            .await
            .unwrap();
    assert_eq!(
        first_status, "processing",
        "the first report is still waiting"
    );
    lock.rollback().await.unwrap();
    stop.notify_one();
    let report = runner.await.unwrap().unwrap();
    assert_eq!((report.claimed, report.completed), (2, 2), "{report:?}");
    assert_eq!(statuses(&server).await.get("completed"), Some(&2));
    server.stop().await;
}

/// The server restarts while a submitter and a runner are busy: both carry on
/// once it is back, and no job is created or handled twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_runner_and_submitter_survive_a_server_restart() {
    let server = TestServer::start().await;
    let client = JobQueueClient::builder(server.url())
        .retry(RetryPolicy {
            max_attempts: 50,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
        })
        .build()
        .await
        .unwrap();
    let user = Uuid::new_v4();

    let calls = Calls::default();
    let handler_calls = calls.clone();
    let all_handled = calls.reached.clone();
    let runner = tokio::spawn({
        let worker = client.worker();
        async move {
            Worker::builder(worker)
                .concurrency(4)
                .lease(Duration::from_secs(30))
                .claim_wait(Duration::from_secs(2))
                .run(
                    move |job: JobContext| {
                        let calls = handler_calls.clone();
                        async move {
                            calls.record(job.job.id, 300);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            Ok::<_, String>(menu(&job))
                        }
                    },
                    async move { all_handled.notified().await },
                )
                .await
        }
    });
    // A submitter that forces every submission: only its request_id keeps a
    // retried call from making a second job.
    let (progress_tx, mut progress_rx) = mpsc::unbounded_channel();
    let submitter = tokio::spawn({
        let client = client.clone();
        async move {
            for i in 0..300u64 {
                let request =
                    SubmitJob::new(user, format!("https://storage.example/{i}.jpg"), sha(i))
                        .force(true);
                client
                    .submit_job(request)
                    .await
                    .expect("submitted, retrying through the restart");
                let _ = progress_tx.send(i);
            }
        }
    });
    // Restart once a third of the jobs are in.
    while progress_rx.recv().await.is_some_and(|i| i < 100) {}
    let server = server.restart().await;

    submitter.await.unwrap();
    let report = runner.await.unwrap().expect("the runner ends cleanly");
    assert_eq!(server.job_count().await, 300, "no submission made two jobs");
    let counts = calls.counts();
    assert_eq!(counts.len(), 300);
    assert!(counts.values().all(|&n| n == 1), "a job was handled twice");
    assert_eq!(report.completed, 300, "{report:?}");
    assert_eq!(statuses(&server).await.get("completed"), Some(&300));
    server.stop().await;
}

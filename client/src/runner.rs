//! The worker runner: claims jobs, runs a handler on each, keeps their leases
//! alive and reports each outcome exactly once.

use std::fmt::Display;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::reporter::Reporter;
use crate::{ClaimJobs, ClaimedJob, Completion, Error, Job, JobStatus, Lease, WorkerClient};

/// How long shutdown waits for a claim in flight to return.
const CLAIM_SETTLE: Duration = Duration::from_millis(500);

/// Most bytes of a failure message the server accepts.
const MAX_ERROR_MESSAGE: usize = 8192;

/// Runs jobs: see [`Worker::builder`].
#[derive(Debug)]
pub struct Worker;

impl Worker {
    /// A runner that claims and reports through `client`.
    ///
    /// ```no_run
    /// # async fn example(client: jobq_client::JobQueueClient) -> Result<(), jobq_client::Error> {
    /// use std::time::Duration;
    /// use jobq_client::{Completion, JobContext, Worker};
    ///
    /// let report = Worker::builder(client.worker())
    ///     .worker_id("extractor-1")
    ///     .concurrency(8)
    ///     .lease(Duration::from_secs(60))
    ///     .run(
    ///         |job: JobContext| async move {
    ///             // Fetch job.job.image_url, run the model (stop early if
    ///             // job.is_cancelled()), and return the menu:
    ///             let mut menu = serde_json::Map::new();
    ///             menu.insert("items".into(), serde_json::json!([]));
    ///             Ok::<_, String>(Completion::new(menu))
    ///         },
    ///         async {
    ///             let _ = tokio::signal::ctrl_c().await;
    ///         },
    ///     )
    ///     .await?;
    /// println!("{} completed, {} failed", report.completed, report.failed);
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(client: WorkerClient) -> WorkerBuilder {
        WorkerBuilder {
            client,
            worker_id: format!("jobq-worker-{}", std::process::id()),
            concurrency: 4,
            lease: Duration::from_secs(60),
            claim_wait: Duration::from_secs(20),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Settings of a [`Worker`] run.
#[derive(Debug, Clone)]
pub struct WorkerBuilder {
    client: WorkerClient,
    worker_id: String,
    concurrency: usize,
    lease: Duration,
    claim_wait: Duration,
    shutdown_grace: Duration,
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Jobs claimed.
    pub claimed: u64,
    /// Jobs reported COMPLETED.
    pub completed: u64,
    /// Jobs reported FAILED because their handler returned an error or panicked.
    pub failed: u64,
    /// Jobs that settled as CANCELLED because their owner cancelled them.
    pub cancelled: u64,
    /// Jobs failed at shutdown because their handler outlived the grace period.
    pub abandoned: u64,
    /// Jobs whose lease was lost (it expired; the job went back to the queue or
    /// to another worker): not reported by this worker.
    pub lease_lost: u64,
    /// Jobs whose report could not be delivered (the server stayed unavailable):
    /// their lease expires and the job is queued again.
    pub unreported: u64,
    /// Claims that failed and were retried (the server was unreachable).
    pub claim_errors: u64,
}

/// A signal that the job being run should stop: its owner cancelled it, its
/// lease was lost, or the worker is shutting down past its grace period. Cheap
/// to clone.
#[derive(Debug, Clone)]
pub struct Cancellation(watch::Receiver<bool>);

impl Cancellation {
    /// Whether the job should stop now.
    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when the job should stop (never, if it runs to its end).
    pub async fn cancelled(&self) {
        raised(&mut self.0.clone()).await;
    }
}

/// A job handed to a handler.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The job, PROCESSING under this worker's lease.
    pub job: Job,
    /// The lease the runner renews and reports under.
    pub lease: Lease,
    cancellation: Cancellation,
}

impl JobContext {
    /// Whether the job should stop (see [`Cancellation`]).
    pub fn is_cancelled(&self) -> bool {
        self.cancellation.is_cancelled()
    }

    /// Resolves when the job should stop.
    pub async fn cancelled(&self) {
        self.cancellation.cancelled().await;
    }

    /// The signal, to hand to work the handler spawns.
    pub fn cancellation(&self) -> Cancellation {
        self.cancellation.clone()
    }
}

/// How one job ended, from the runner's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Reported(JobStatus, Ended),
    LeaseLost,
    Unreported,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Handler,
    Abandoned,
}

impl WorkerReport {
    fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Reported(_, Ended::Abandoned) => self.abandoned += 1,
            Outcome::Reported(JobStatus::Completed, _) => self.completed += 1,
            Outcome::Reported(JobStatus::Cancelled, _) => self.cancelled += 1,
            Outcome::Reported(_, _) => self.failed += 1,
            Outcome::LeaseLost => self.lease_lost += 1,
            Outcome::Unreported => self.unreported += 1,
        }
    }
}

impl WorkerBuilder {
    /// Names this worker in the server's logs and on the jobs it claims (1 to 200
    /// characters; default `jobq-worker-<pid>`).
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = id.into();
        self
    }

    /// Most handlers running at once (default 4, at least 1). A job gives its
    /// handler slot back when its handler ends, so the runner claims the next
    /// job while the last one's report is on its way; at most as many finished
    /// jobs wait for their report at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Lease of each claimed job (default 60 s). The runner renews it every third
    /// of its length, so a job is lost only when the worker cannot reach the
    /// server for two thirds of a lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long each claim waits on the server for a job when none is queued
    /// (default 20 s, at most 30 s). It returns as soon as a job is queued.
    pub fn claim_wait(mut self, wait: Duration) -> Self {
        self.claim_wait = wait;
        self
    }

    /// After shutdown is signalled, how long running handlers may still take
    /// (default 30 s). Handlers still running then are dropped (their
    /// [`Cancellation`] is raised first, for work they handed it to), and their
    /// jobs are failed with a message saying the worker shut down.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Runs until `shutdown` resolves: claims jobs in batches (up to the free
    /// handler slots, long-polling when the queue is empty; a slot is free once
    /// its handler has ended, before its job is reported), runs `handler` on
    /// each, renews each lease every third of its length, and reports each job
    /// once: COMPLETED with the handler's [`Completion`], or FAILED with its
    /// error's text (or the panic's), or FAILED with the server's reason when
    /// it refuses the completion as bad input (a confidence above 1, say: it
    /// would be refused again however often the job ran). Completions of jobs that finish while
    /// another completion is on its way are sent together in one CompleteJobs
    /// call (up to 100, and 1 MiB), each with its own outcome; should the
    /// server refuse such a call as a whole (a bad field in one completion,
    /// say), each is sent again alone, so only the bad one is refused.
    /// A job whose owner cancels it has its
    /// [`JobContext::cancelled`] resolve, and settles as CANCELLED when reported.
    ///
    /// On shutdown it claims no more. A claim in flight gets half a second to
    /// return (it answers at once when jobs are queued) and its jobs are run, so
    /// no claimed job is left unhandled; one still parked on an empty queue then
    /// has claimed nothing and is abandoned. Running handlers may finish within
    /// the grace period; the rest are told to stop and their jobs failed. It then
    /// returns what it did.
    ///
    /// While the server is unavailable the runner keeps retrying with jittered
    /// backoff; running jobs keep their handler and report once it is back.
    ///
    /// # Errors
    /// A claim refused for a reason retrying cannot fix ([`Error::InvalidArgument`]
    /// for a bad worker id or lease, [`Error::Unauthenticated`],
    /// [`Error::PermissionDenied`]): the runner stops claiming, lets running jobs
    /// finish as on shutdown, and returns the error.
    pub async fn run<H, Fut, E>(
        self,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> Result<WorkerReport, Error>
    where
        H: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Completion, E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        let handler = Arc::new(handler);
        let reporter = Reporter::spawn(self.client.clone());
        let slots = Arc::new(Semaphore::new(self.concurrency));
        // A job whose handler has ended gives its slot back before it is
        // reported, and waits for its report holding one of these instead:
        // the runner claims again while reports are on their way (with a
        // quick handler, a claim of only the slot the first report freed,
        // then one of the rest, was every other claim), and at most
        // `concurrency` finished jobs wait for their report at once.
        let reporting = Arc::new(Semaphore::new(self.concurrency));
        let (give_up, gave_up) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut report = WorkerReport::default();
        let mut shutdown = std::pin::pin!(shutdown);
        let mut claim_failures = 0u32;
        let policy = crate::RetryPolicy {
            max_attempts: u32::MAX,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        };
        let fatal = loop {
            while let Some(done) = tasks.try_join_next() {
                report.record(joined(done));
            }
            let first = tokio::select! {
                biased;
                () = &mut shutdown => break None,
                permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let mut permits = vec![first];
            while permits.len() < self.concurrency.min(100) {
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            let request = ClaimJobs::new(&self.worker_id, permits.len() as u32)
                .lease(self.lease)
                .wait(self.claim_wait);
            // A claim in flight at shutdown gets a moment to return: when jobs
            // are queued it answers at once, and the jobs it claimed are run like
            // the others (dropped, they would sit PROCESSING until their lease
            // expired). One still waiting after that is parked on an empty queue
            // and has claimed nothing: it is abandoned, and the server drops it.
            let mut stopping = false;
            let claimed = {
                let claim = self.client.claim_jobs(&request);
                let mut claim = std::pin::pin!(claim);
                tokio::select! {
                    biased;
                    claimed = &mut claim => claimed,
                    () = &mut shutdown => {
                        stopping = true;
                        match tokio::time::timeout(CLAIM_SETTLE, claim).await {
                            Ok(claimed) => claimed,
                            Err(_) => break None,
                        }
                    }
                }
            };
            match claimed {
                Ok(jobs) => {
                    claim_failures = 0;
                    report.claimed += jobs.len() as u64;
                    for claimed in jobs {
                        // The server hands out at most max_jobs; should it send
                        // more, they wait for a free slot like any other.
                        let permit = match permits.pop() {
                            Some(permit) => permit,
                            None => slots
                                .clone()
                                .acquire_owned()
                                .await
                                .expect("the semaphore is never closed"),
                        };
                        tasks.spawn(self.job(
                            claimed,
                            Slots {
                                running: permit,
                                reporting: reporting.clone(),
                            },
                            handler.clone(),
                            reporter.clone(),
                            gave_up.clone(),
                        ));
                    }
                    if stopping {
                        break None;
                    }
                }
                Err(_) if stopping => break None,
                Err(error) if transient(&error) => {
                    claim_failures += 1;
                    report.claim_errors += 1;
                    tracing::warn!(worker_id = %self.worker_id, %error, "claim failed; retrying");
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break None,
                        () = tokio::time::sleep(policy.backoff(claim_failures)) => {}
                    }
                }
                Err(error) => break Some(error),
            }
        };
        // Draining: no more claims; running handlers get the grace period.
        let grace = tokio::time::sleep(self.shutdown_grace);
        let mut grace = std::pin::pin!(grace);
        let mut grace_over = false;
        loop {
            tokio::select! {
                done = tasks.join_next() => match done {
                    Some(done) => report.record(joined(done)),
                    None => break,
                },
                () = &mut grace, if !grace_over => {
                    grace_over = true;
                    let _ = give_up.send(true);
                }
            }
        }
        match fatal {
            Some(error) => Err(error),
            None => Ok(report),
        }
    }

    /// Runs one claimed job to its report, in the handler slot `slots.running`
    /// until its handler ends, then in a reporting slot.
    fn job<H, Fut, E>(
        &self,
        claimed: ClaimedJob,
        slots: Slots,
        handler: Arc<H>,
        reporter: Reporter,
        mut gave_up: watch::Receiver<bool>,
    ) -> impl Future<Output = Outcome> + Send + 'static
    where
        H: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Completion, E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        let client = self.client.clone();
        let worker_id = self.worker_id.clone();
        let grace = self.shutdown_grace;
        let renew_every = (self.lease / 3).max(Duration::from_millis(100));
        async move {
            let lease = claimed.lease.clone();
            let mut expires_at = lease.expires_at;
            let (cancel, cancelled) = watch::channel(false);
            let context = JobContext {
                job: claimed.job,
                lease: lease.clone(),
                cancellation: Cancellation(cancelled),
            };
            let mut work = std::pin::pin!(AssertUnwindSafe(handler(context)).catch_unwind());
            let mut renewals =
                tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
            renewals.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (ended, message) = loop {
                tokio::select! {
                    biased;
                    result = &mut work => break match result {
                        Ok(Ok(completion)) => (Ended::Handler, Ok(completion)),
                        Ok(Err(error)) => (Ended::Handler, Err(error.to_string())),
                        Err(panic) => (Ended::Handler, Err(format!("the handler panicked: {}", panic_text(&panic)))),
                    },
                    _ = renewals.tick() => match client.heartbeat(&lease, None).await {
                        Ok(renewed) => {
                            expires_at = renewed.expires_at;
                            if renewed.cancel_requested {
                                let _ = cancel.send(true);
                            }
                        }
                        // Expired and requeued or reclaimed, or settled by a
                        // report this runner never made: not ours any more.
                        Err(Error::LeaseLost | Error::InvalidStatus { .. }) => {
                            let _ = cancel.send(true);
                            return Outcome::LeaseLost;
                        }
                        // Unreachable for now: try again at the next renewal.
                        Err(error) => {
                            tracing::warn!(job_id = %lease.job_id, %error, "lease renewal failed");
                        }
                    },
                    () = raised(&mut gave_up) => {
                        let _ = cancel.send(true);
                        break (
                            Ended::Abandoned,
                            Err(format!(
                                "worker {worker_id} shut down before the job finished (grace period {grace:?})"
                            )),
                        );
                    }
                }
            };
            let Slots { running, reporting } = slots;
            let _reporting = reporting
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            drop(running);
            let completed = message.is_ok();
            let mut reported = report(&client, &reporter, &lease, expires_at, message).await;
            // A completion the server refuses as bad input (a confidence above
            // 1, say) would be refused again however often the job ran: the
            // job fails with the server's reason, instead of waiting for its
            // lease to expire and running its handler again.
            if completed && let Err(refused @ Error::InvalidArgument { .. }) = &reported {
                let why = format!("the server refused the handler's completion: {refused}");
                reported = report(&client, &reporter, &lease, expires_at, Err(why)).await;
            }
            match reported {
                Ok(job) => Outcome::Reported(job.status, ended),
                Err(Error::LeaseLost) => Outcome::LeaseLost,
                // A retried report whose first attempt landed.
                Err(Error::InvalidStatus { current }) => Outcome::Reported(current, ended),
                Err(error) => {
                    tracing::warn!(job_id = %lease.job_id, %error, "could not report the job; its lease will expire");
                    Outcome::Unreported
                }
            }
        }
    }
}

/// A claimed job's hold on the runner's capacity: a handler slot while its
/// handler runs, then a slot among the jobs waiting for their report.
struct Slots {
    running: OwnedSemaphorePermit,
    reporting: Arc<Semaphore>,
}

/// Reports the job (a completion together with those of other jobs that finish
/// meanwhile), trying again while the server is unreachable for as long as the
/// lease lasts (after that the job is not this worker's to report).
async fn report(
    client: &WorkerClient,
    reporter: &Reporter,
    lease: &Lease,
    expires_at: std::time::SystemTime,
    outcome: Result<Completion, String>,
) -> Result<Job, Error> {
    let outcome = outcome.map_err(error_message);
    let mut failures = 0;
    loop {
        let reported = match &outcome {
            Ok(completion) => match reporter
                .complete(completion.clone().into_request(lease))
                .await
            {
                Some(reported) => reported,
                None => client.complete_job(lease, completion.clone()).await,
            },
            Err(text) => client.fail_job(lease, text.clone()).await,
        };
        match reported {
            Err(error) if transient(&error) && std::time::SystemTime::now() < expires_at => {
                failures += 1;
                tokio::time::sleep(crate::connect::jitter(Duration::from_millis(
                    100 * 2u64.pow(failures.min(5)),
                )))
                .await;
            }
            reported => return reported,
        }
    }
}

/// Resolves once `flag` is true; never if its sender is gone first.
async fn raised(flag: &mut watch::Receiver<bool>) {
    if flag.wait_for(|raised| *raised).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Claim failures the runner waits out rather than stopping for.
fn transient(error: &Error) -> bool {
    match error {
        Error::Unavailable { .. } | Error::Connect(_) => true,
        Error::Status(status) => matches!(
            status.code(),
            tonic::Code::DeadlineExceeded
                | tonic::Code::Aborted
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
        ),
        _ => false,
    }
}

fn joined(done: Result<Outcome, tokio::task::JoinError>) -> Outcome {
    // The job future catches its handler's panic; a join error means the runtime
    // is shutting down, and the job's lease will expire.
    done.unwrap_or(Outcome::Unreported)
}

/// A failure message the server accepts: 1 to 8192 bytes.
fn error_message(text: String) -> String {
    if text.is_empty() {
        return "the handler failed without a message".to_owned();
    }
    if text.len() <= MAX_ERROR_MESSAGE {
        return text;
    }
    let mut end = MAX_ERROR_MESSAGE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_messages_fit_the_servers_limit() {
        assert_eq!(
            error_message(String::new()),
            "the handler failed without a message"
        );
        assert_eq!(error_message("bad photo".into()), "bad photo");
        let long = "é".repeat(5000);
        let cut = error_message(long);
        assert!(cut.len() <= MAX_ERROR_MESSAGE && cut.len() > MAX_ERROR_MESSAGE - 2);
    }
}

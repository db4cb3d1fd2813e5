//! Following jobs: a WatchJobs stream that reconnects by itself, and
//! [`JobQueueClient::wait_for_job`].

use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use jobq_proto::pb;
use tonic::Code;
use uuid::Uuid;

use crate::{Error, Job, JobQueueClient};

/// What a stream event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The job's state when the stream started.
    Snapshot,
    /// A job created after the stream started.
    Created,
    /// A change of the job.
    Updated,
}

/// One job state on a watch stream.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    /// The job as committed.
    pub job: Job,
    /// Snapshot, created or updated.
    pub kind: EventKind,
    /// Resumes right after this event (empty inside the initial snapshot).
    pub resume_token: String,
}

/// Which jobs to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchJobs {
    user_id: Option<Uuid>,
    job_ids: Vec<Uuid>,
    resume_token: Option<String>,
}

impl WatchJobs {
    /// One user's jobs.
    pub fn user(user_id: Uuid) -> Self {
        Self {
            user_id: Some(user_id),
            job_ids: Vec::new(),
            resume_token: None,
        }
    }

    /// Every user's jobs (service and admin callers).
    pub fn all() -> Self {
        Self {
            user_id: None,
            job_ids: Vec::new(),
            resume_token: None,
        }
    }

    /// Only these jobs.
    pub fn job_ids(mut self, ids: impl IntoIterator<Item = Uuid>) -> Self {
        self.job_ids = ids.into_iter().collect();
        self
    }

    /// Continue after the event that carried this token.
    pub fn resume_token(mut self, token: impl Into<String>) -> Self {
        self.resume_token = Some(token.into());
        self
    }

    fn to_request(&self) -> pb::WatchJobsRequest {
        pb::WatchJobsRequest {
            user_id: self.user_id.map(|u| u.to_string()).unwrap_or_default(),
            job_ids: self.job_ids.iter().map(Uuid::to_string).collect(),
            resume_token: self.resume_token.clone().unwrap_or_default(),
        }
    }
}

fn event(message: pb::WatchJobsResponse) -> Result<JobEvent, Error> {
    let pb::WatchJobsResponse {
        job,
        kind,
        resume_token,
    } = message;
    let kind = match pb::WatchEventKind::try_from(kind) {
        Ok(pb::WatchEventKind::Snapshot) => EventKind::Snapshot,
        Ok(pb::WatchEventKind::Created) => EventKind::Created,
        _ => EventKind::Updated,
    };
    let job = job
        .ok_or_else(|| Error::Decode("WatchJobsResponse without a job".into()))?
        .try_into()?;
    Ok(JobEvent {
        job,
        kind,
        resume_token,
    })
}

/// Most reconnections in a row without an event before the stream gives up.
const MAX_RECONNECTS: u32 = 10;

fn reconnects(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Aborted
    )
}

struct Follower {
    client: JobQueueClient,
    request: WatchJobs,
    stream: Option<tonic::Streaming<pb::WatchJobsResponse>>,
    failures: u32,
    done: bool,
}

impl Follower {
    async fn next(&mut self) -> Option<Result<JobEvent, Error>> {
        if self.done {
            return None;
        }
        loop {
            let Some(stream) = self.stream.as_mut() else {
                let request = self
                    .client
                    .connection()
                    .request(self.request.to_request(), None);
                match self.client.raw().watch_jobs(request).await {
                    Ok(response) => self.stream = Some(response.into_inner()),
                    Err(status) if reconnects(&status) && self.failures < MAX_RECONNECTS => {
                        self.back_off().await
                    }
                    Err(status) => {
                        self.done = true;
                        return Some(Err(status.into()));
                    }
                }
                continue;
            };
            match stream.message().await {
                Ok(Some(message)) => {
                    self.failures = 0;
                    if !message.resume_token.is_empty() {
                        self.request.resume_token = Some(message.resume_token.clone());
                    }
                    return Some(event(message));
                }
                // The server ended the stream (shutting down, or it fell behind):
                // continue where the last token says, on this or another server.
                Ok(None) => self.stream = None,
                Err(status) if reconnects(&status) && self.failures < MAX_RECONNECTS => {
                    self.stream = None;
                    self.back_off().await;
                }
                Err(status) => {
                    self.done = true;
                    return Some(Err(status.into()));
                }
            }
        }
    }

    async fn back_off(&mut self) {
        self.failures += 1;
        let delay = Duration::from_millis(100 * 2u64.pow(self.failures.min(6)));
        tokio::time::sleep(crate::connect::jitter(delay.min(Duration::from_secs(5)))).await;
    }
}

/// A callback that sees each state of a job being waited for.
type ProgressCallback = Box<dyn FnMut(&Job) + Send>;

/// Options of [`JobQueueClient::wait_for_job`].
pub struct WaitOptions {
    timeout: Duration,
    poll_interval: Duration,
    max_polls: Option<u32>,
    poll_only: bool,
    on_update: Option<ProgressCallback>,
}

impl std::fmt::Debug for WaitOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitOptions")
            .field("timeout", &self.timeout)
            .field("poll_interval", &self.poll_interval)
            .field("max_polls", &self.max_polls)
            .field("poll_only", &self.poll_only)
            .field("on_update", &self.on_update.is_some())
            .finish()
    }
}

impl WaitOptions {
    /// Wait at most `timeout`, following the job with WatchJobs (and polling
    /// only if the server cannot stream).
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            poll_interval: Duration::from_secs(5),
            max_polls: None,
            poll_only: false,
            on_update: None,
        }
    }

    /// The original `pollJobStatus(jobId, userId, { maxAttempts, intervalMs })`:
    /// read the job with GetJob up to `max_attempts` times, `interval` apart
    /// (however long each read takes), and fail with [`Error::Timeout`] if it has
    /// not finished by the last read. For callers that cannot hold a stream open.
    ///
    /// ```no_run
    /// # async fn example(client: jobq_client::JobQueueClient, user: uuid::Uuid, job: uuid::Uuid) -> Result<(), jobq_client::Error> {
    /// use std::time::Duration;
    /// let options = jobq_client::WaitOptions::polling(60, Duration::from_secs(5))
    ///     .on_update(|job| println!("{:?}", job.status));
    /// let done = client.wait_for_job(user, job, options).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn polling(max_attempts: u32, interval: Duration) -> Self {
        Self {
            timeout: interval.saturating_mul(max_attempts),
            poll_interval: interval,
            max_polls: Some(max_attempts.max(1)),
            poll_only: true,
            on_update: None,
        }
    }

    /// How often to poll GetJob when streaming is not available (default 5 s).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Called with every state of the job seen while waiting.
    pub fn on_update(mut self, callback: impl FnMut(&Job) + Send + 'static) -> Self {
        self.on_update = Some(Box::new(callback));
        self
    }
}

fn finished(job: &Job) -> bool {
    matches!(
        job.status,
        pb::JobStatus::Completed | pb::JobStatus::Failed | pb::JobStatus::Cancelled
    )
}

impl JobQueueClient {
    /// Follows jobs: first the current state of the matching unfinished jobs (or
    /// of the named jobs), then every change as it commits. The stream reconnects
    /// by itself with its last resume token when the server ends it or becomes
    /// unavailable (up to 10 times in a row), so it neither misses nor repeats a
    /// change.
    ///
    /// ```no_run
    /// # async fn example(client: jobq_client::JobQueueClient, user: uuid::Uuid) -> Result<(), jobq_client::Error> {
    /// use futures_util::StreamExt;
    /// let mut events = std::pin::pin!(client.watch_jobs(jobq_client::WatchJobs::user(user)));
    /// while let Some(event) = events.next().await {
    ///     let event = event?;
    ///     println!("{} is {:?}", event.job.id, event.job.status);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// Each item is an error when the request is refused ([`Error::InvalidArgument`],
    /// [`Error::JobNotFound`] for a named job that is not the user's) or the
    /// server stayed unavailable; the stream ends after an error.
    pub fn watch_jobs(
        &self,
        request: WatchJobs,
    ) -> impl Stream<Item = Result<JobEvent, Error>> + Send + 'static {
        let follower = Follower {
            client: self.clone(),
            request,
            stream: None,
            failures: 0,
            done: false,
        };
        futures_util::stream::unfold(follower, |mut follower| async move {
            let item = follower.next().await?;
            Some((item, follower))
        })
    }

    /// Waits until `user_id`'s job `job_id` is finished (completed, failed or
    /// cancelled) and returns it: the seed's `pollJobStatus`. It follows the job
    /// with WatchJobs, and polls GetJob every `poll_interval` instead when the
    /// server cannot stream.
    ///
    /// ```no_run
    /// # async fn example(client: jobq_client::JobQueueClient, user: uuid::Uuid, job: uuid::Uuid) -> Result<(), jobq_client::Error> {
    /// use std::time::Duration;
    /// let options = jobq_client::WaitOptions::new(Duration::from_secs(300))
    ///     .on_update(|job| println!("{:?}", job.status));
    /// let done = client.wait_for_job(user, job, options).await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::Timeout`] (with the last status seen) when the job is not finished
    /// in time; [`Error::JobNotFound`] when it is not the user's.
    pub async fn wait_for_job(
        &self,
        user_id: Uuid,
        job_id: Uuid,
        mut options: WaitOptions,
    ) -> Result<Job, Error> {
        let deadline = Instant::now() + options.timeout;
        let mut last = pb::JobStatus::Unspecified;
        let mut seen = |job: &Job, last: &mut pb::JobStatus| {
            *last = job.status;
            if let Some(callback) = options.on_update.as_mut() {
                callback(job);
            }
        };
        if !options.poll_only {
            let mut events =
                std::pin::pin!(self.watch_jobs(WatchJobs::user(user_id).job_ids([job_id])));
            loop {
                let remaining = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(remaining, events.next()).await {
                    Err(_) => {
                        return Err(Error::Timeout {
                            job_id,
                            last_status: last,
                        });
                    }
                    Ok(Some(Ok(event))) => {
                        seen(&event.job, &mut last);
                        if finished(&event.job) {
                            return Ok(event.job);
                        }
                    }
                    Ok(Some(Err(Error::Status(status))))
                        if status.code() == Code::Unimplemented =>
                    {
                        break;
                    }
                    Ok(Some(Err(Error::Unavailable { .. }))) | Ok(None) => break,
                    Ok(Some(Err(error))) => return Err(error),
                }
            }
        }
        // Polling, by choice or because streaming is not available.
        let mut polls = 0;
        loop {
            let job = self.get_job(user_id, job_id).await?;
            polls += 1;
            seen(&job, &mut last);
            if finished(&job) {
                return Ok(job);
            }
            // `polling` counts reads, as the original did (however long each
            // takes); otherwise the deadline decides.
            let remaining = deadline.saturating_duration_since(Instant::now());
            let (done, pause) = match options.max_polls {
                Some(max) => (polls >= max, options.poll_interval),
                None => (remaining.is_zero(), options.poll_interval.min(remaining)),
            };
            if done {
                return Err(Error::Timeout {
                    job_id,
                    last_status: last,
                });
            }
            tokio::time::sleep(pause).await;
        }
    }
}

//! The change feed and WatchJobs streams.
//!
//! One `LISTEN menu_extraction_jobs` connection per server process. A notification
//! is only a hint: the feed then reads, in one query, every job changed since the
//! snapshot it last read at (see [`crate::resume`]), and broadcasts that batch to
//! every stream. The table, not the payload, is the source of truth, so nothing
//! depends on notifications arriving: a reconnection (notifications lost while
//! deaf) is just another "read what changed since".
//!
//! Streams share one bounded ring of batches (`tokio::sync::broadcast`): an idle
//! stream is a cursor in it, with no task, connection or query of its own. A
//! stream whose client reads too slowly falls off the ring (`Lagged`) and catches
//! up with one query of its own from its position; it never blocks the feed or
//! other streams.
//!
//! The feed also wakes parked `ClaimJobs` calls: every notification that mentions
//! a queued job bumps a counter they watch. SubmitJob and RetryJob bump it too
//! once their job is committed, so that a worker parked on the same process does
//! not wait for the notification's round trip through Postgres.
//!
//! While no stream is open, the feed reads no rows: it only moves its position
//! (and tells any stream that subscribes meanwhile to read its own gap).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobq_proto::pb;
use std::str::FromStr;

use futures_util::FutureExt;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::{broadcast, watch};
use tokio_stream::Stream;
use tonic::Status;

use crate::error::Error;
use crate::job::{JobId, UserId};
use crate::resume::{self, Position, Snapshot};
use crate::storage::Storage;
use crate::storage::changes::{ChangedJob, WatchFilter};

/// The channel the job table's triggers notify.
pub const CHANNEL: &str = "menu_extraction_jobs";

/// The `application_name` of the change feed's LISTEN connection.
pub const LISTENER_NAME: &str = "jobq-change-feed";

/// Batches the ring keeps for streams that read slowly.
const RING: usize = 1024;

/// Every this many batches, every stream is woken to read the ring, so that a
/// stream whose jobs did not change does not fall off it.
const SWEEP: u64 = (RING / 4) as u64;

/// At most this many notifications already arrived are handled before the feed
/// reads the table once for all of them.
const BURST: usize = 1024;

/// One job of a batch, converted once for every stream.
#[derive(Debug, Clone)]
pub struct BatchJob {
    /// The job as committed.
    pub job: pb::Job,
    /// Its id, for filters.
    pub id: JobId,
    /// Its owner, for filters.
    pub user_id: Option<UserId>,
    /// The transaction that changed it.
    pub xid: u64,
    /// Its version.
    pub version: u64,
    /// Whether this state is its creation.
    pub created: bool,
}

impl From<ChangedJob> for BatchJob {
    fn from(changed: ChangedJob) -> Self {
        let xid = changed.xid();
        let ChangedJob { job, .. } = changed;
        Self {
            id: job.id,
            user_id: job.user_id,
            xid,
            version: u64::try_from(job.version).unwrap_or_default(),
            created: job.created_at == job.updated_at,
            job: job.into(),
        }
    }
}

/// Every job changed after `from` and visible in `to`, by version.
#[derive(Debug)]
pub struct Batch {
    /// The feed's position before the batch; `None` when the feed has just
    /// started and every stream must check its own position against the table.
    pub from: Option<Snapshot>,
    /// The snapshot the batch was read at.
    pub to: Snapshot,
    /// The changed jobs.
    pub jobs: Vec<BatchJob>,
}

/// In-memory fan-out of the job table's changes.
///
/// Every stream reads every batch of the ring, in order (that is how it knows
/// it missed nothing), but a stream is only *woken* when a batch may concern
/// it: a stream of one user's jobs when a batch has a job of that user, a
/// stream of all users' jobs for every batch, and every stream once every
/// `SWEEP` (256) batches (and when the feed restarts). A batch wakes a handful of
/// streams rather than all 10,000 (issue 8's fan-out profile was those
/// wake-ups); a woken stream then reads all the batches it slept through.
#[derive(Debug, Clone)]
pub struct ChangeFeed {
    queued: watch::Sender<u64>,
    batches: broadcast::Sender<Arc<Batch>>,
    listening: watch::Sender<bool>,
    wakers: Arc<Wakers>,
}

/// Who to wake for a batch.
#[derive(Debug)]
struct Wakers {
    per_user: Mutex<HashMap<UserId, watch::Sender<()>>>,
    every_batch: watch::Sender<()>,
    sweep: watch::Sender<()>,
    sent: std::sync::atomic::AtomicU64,
}

/// What wakes one stream: its own signal, and the sweep.
#[derive(Debug)]
struct StreamWake {
    own: watch::Receiver<()>,
    sweep: watch::Receiver<()>,
}

impl StreamWake {
    /// Marks every wake-up so far as seen.
    fn mark_seen(&mut self) {
        self.own.mark_unchanged();
        self.sweep.mark_unchanged();
    }

    /// Waits for the next wake-up; `false` when the feed is gone.
    async fn changed(&mut self) -> bool {
        tokio::select! {
            own = self.own.changed() => own.is_ok(),
            sweep = self.sweep.changed() => sweep.is_ok(),
        }
    }
}

impl Default for ChangeFeed {
    fn default() -> Self {
        Self::new()
    }
}

impl ChangeFeed {
    /// A feed nobody has fed yet.
    pub fn new() -> Self {
        Self {
            queued: watch::Sender::new(0),
            batches: broadcast::Sender::new(RING),
            listening: watch::Sender::new(false),
            wakers: Arc::new(Wakers {
                per_user: Mutex::new(HashMap::new()),
                every_batch: watch::Sender::new(()),
                sweep: watch::Sender::new(()),
                sent: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// What wakes a stream with `filter`. Take it before reading the ring.
    fn stream_wake(&self, filter: &WatchFilter) -> StreamWake {
        let own = match filter.user_id {
            Some(user) => self
                .wakers
                .per_user
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(user)
                .or_insert_with(|| watch::Sender::new(()))
                .subscribe(),
            None => self.wakers.every_batch.subscribe(),
        };
        StreamWake {
            own,
            sweep: self.wakers.sweep.subscribe(),
        }
    }

    /// Sends `batch` to the ring, then wakes the streams it may concern.
    fn publish(&self, batch: Batch) {
        let sent = self
            .wakers
            .sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let sweep = batch.from.is_none() || sent.is_multiple_of(SWEEP);
        let users: std::collections::HashSet<UserId> = if sweep {
            Default::default()
        } else {
            batch.jobs.iter().filter_map(|job| job.user_id).collect()
        };
        // No receiver is fine: nobody is watching.
        let _ = self.batches.send(Arc::new(batch));
        // After the send: a stream marks its wake-ups seen before it reads the
        // ring, so it either reads this batch or hears this wake-up.
        self.wakers.every_batch.send_replace(());
        let mut per_user = self
            .wakers
            .per_user
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if sweep {
            self.wakers.sweep.send_replace(());
            per_user.retain(|_, sender| sender.receiver_count() > 0);
        } else {
            for user in users {
                if let Some(sender) = per_user.get(&user) {
                    sender.send_replace(());
                }
            }
        }
    }

    /// A receiver that sees every later sign that queued work may exist. Take it
    /// *before* looking at the table, so that work queued in between is not missed.
    pub fn queued_work(&self) -> watch::Receiver<u64> {
        let mut receiver = self.queued.subscribe();
        receiver.mark_unchanged();
        receiver
    }

    /// Signals that queued work may exist.
    pub fn wake_claimers(&self) {
        self.queued.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether the feed's LISTEN connection is up (health reports it).
    pub fn listening(&self) -> watch::Receiver<bool> {
        self.listening.subscribe()
    }

    /// Handles one notification payload (see the migrations for its shape).
    fn on_notification(&self, payload: &str) {
        let mentions_queued = serde_json::from_str::<serde_json::Value>(payload)
            .ok()
            .and_then(|value| {
                let jobs = value.get("jobs")?.as_array()?;
                Some(
                    jobs.iter()
                        .any(|job| job.get(2).and_then(|s| s.as_str()) == Some("queued")),
                )
            })
            // A payload jobq cannot read may still mean work: look.
            .unwrap_or(true);
        if mentions_queued {
            self.wake_claimers();
        }
    }

    /// Reads what changed since `position` and broadcasts it; returns the new
    /// position. The position only ever moves with a broadcast batch that says
    /// where it moved from, so a stream can always tell whether it missed
    /// something (a batch that does not start within its own position).
    async fn refresh(
        &self,
        storage: &Storage,
        position: Option<Snapshot>,
    ) -> Result<Snapshot, crate::storage::StorageError> {
        // With no stream open, nobody needs the rows: move on without reading
        // them (a write burst would otherwise be read back in full). A stream
        // that subscribes meanwhile hears `from: None` and reads its own gap.
        let from = position.filter(|_| self.batches.receiver_count() > 0);
        let Some(from) = from else {
            let to = storage.current_snapshot().await?;
            self.publish(Batch {
                from: None,
                to: to.clone(),
                jobs: Vec::new(),
            });
            return Ok(to);
        };
        let (jobs, to) = storage
            .changes_since(&Position::at(from.clone()), &WatchFilter::default())
            .await?;
        tracing::debug!(jobs = jobs.len(), from = %from, to = %to, streams = self.batches.receiver_count(), "change feed read");
        if !jobs.is_empty() || from != to {
            let batch = Batch {
                from: Some(from),
                to: to.clone(),
                jobs: jobs.into_iter().map(BatchJob::from).collect(),
            };
            self.publish(batch);
        }
        Ok(to)
    }
}

/// Listens on [`CHANNEL`] and feeds `feed` until `stop` turns true, reconnecting
/// with backoff; while it is not listening, health reports NOT_SERVING.
pub async fn listen(
    storage: Storage,
    database_url: String,
    feed: ChangeFeed,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut position: Option<Snapshot> = None;
    loop {
        let connected = async {
            // A connection of its own, named so that operators (and tests) can
            // find it in pg_stat_activity.
            let options =
                PgConnectOptions::from_str(&database_url)?.application_name(LISTENER_NAME);
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await?;
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let connected = tokio::select! {
            result = connected => result,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, retry_ms = backoff.as_millis(), "change feed cannot listen");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|stop| *stop) => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        tracing::info!(channel = CHANNEL, "change feed listening");
        feed.listening.send_replace(true);
        backoff = Duration::from_millis(100);
        // Whatever changed while the feed was deaf is read from the table now.
        feed.wake_claimers();
        let mut dirty = true;
        loop {
            if dirty {
                match feed.refresh(&storage, position.clone()).await {
                    Ok(next) => {
                        position = Some(next);
                        dirty = false;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "change feed cannot read changes; retrying")
                    }
                }
            }
            // After a failed read, try again soon even if nothing is notified.
            let retry = if dirty {
                backoff
            } else {
                Duration::from_secs(3600)
            };
            let received = tokio::select! {
                received = listener.try_recv() => received,
                () = tokio::time::sleep(retry) => continue,
                _ = stop.wait_for(|stop| *stop) => {
                    feed.listening.send_replace(false);
                    return;
                }
            };
            // A burst (a bulk write notifies once per 40 rows) is taken whole:
            // every notification that has already arrived is handled before the
            // table is read once for all of them, at most BURST at a time so
            // that a steady flow of them cannot hold the read back. One read per
            // notification cost a 300,000-row insert 7,500 queries.
            let mut received = Some(received);
            let mut taken = 0;
            let mut failed = false;
            while let Some(result) = received.take() {
                match result {
                    Ok(Some(notification)) => {
                        tracing::trace!(payload = notification.payload(), "notified");
                        feed.on_notification(notification.payload());
                    }
                    Ok(None) => {
                        // The connection was lost and has been re-established
                        // (eager reconnect); what was notified meanwhile is gone,
                        // so read what changed from the table.
                        tracing::warn!(
                            "change feed lost its connection and reconnected; catching up"
                        );
                        feed.wake_claimers();
                    }
                    Err(error) => {
                        tracing::warn!(%error, "change feed failed; reconnecting");
                        failed = true;
                        break;
                    }
                }
                dirty = true;
                taken += 1;
                if taken < BURST {
                    received = listener.try_recv().now_or_never();
                }
            }
            if failed {
                break;
            }
        }
        feed.listening.send_replace(false);
        feed.wake_claimers();
    }
    feed.listening.send_replace(false);
}

/// Caps on open streams, per user (all-users streams count under one key) and in
/// total.
#[derive(Debug)]
pub struct StreamSlots {
    per_user: usize,
    per_key: usize,
    total: usize,
    open: Mutex<OpenStreams>,
}

/// Counts of open streams.
#[derive(Debug, Default)]
struct OpenStreams {
    total: usize,
    per_user: HashMap<Option<UserId>, usize>,
    per_key: HashMap<uuid::Uuid, usize>,
}

/// An open stream's place under the caps; dropping it frees the place.
#[derive(Debug)]
pub struct StreamSlot {
    slots: Arc<StreamSlots>,
    user: Option<UserId>,
    key: Option<uuid::Uuid>,
}

/// Takes one from `map[key]`, forgetting keys that reach zero.
fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(count) = map.get_mut(key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            map.remove(key);
        }
    }
}

impl StreamSlots {
    /// Caps of `per_user` open streams watching one user (all-users streams
    /// share one count), `per_key` opened with one API key, and `total`.
    pub fn new(per_user: usize, per_key: usize, total: usize) -> Arc<Self> {
        Arc::new(Self {
            per_user,
            per_key,
            total,
            open: Mutex::new(OpenStreams::default()),
        })
    }

    /// A place for one more stream of `user`, opened with API key `key`, or why not.
    pub fn acquire(
        self: &Arc<Self>,
        user: Option<UserId>,
        key: Option<uuid::Uuid>,
    ) -> Result<StreamSlot, Error> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.total >= self.total {
            return Err(Error::TooManyStreams {
                scope: "server",
                limit: self.total,
            });
        }
        if open
            .per_user
            .get(&user)
            .is_some_and(|n| *n >= self.per_user)
        {
            return Err(Error::TooManyStreams {
                scope: "user",
                limit: self.per_user,
            });
        }
        if let Some(key) = key
            && open.per_key.get(&key).is_some_and(|n| *n >= self.per_key)
        {
            return Err(Error::TooManyStreams {
                scope: "key",
                limit: self.per_key,
            });
        }
        open.total += 1;
        *open.per_user.entry(user).or_default() += 1;
        if let Some(key) = key {
            *open.per_key.entry(key).or_default() += 1;
        }
        Ok(StreamSlot {
            slots: self.clone(),
            user,
            key,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        release(&mut open.per_user, &self.user);
        if let Some(key) = &self.key {
            release(&mut open.per_key, key);
        }
    }
}

/// One WatchJobs stream.
pub struct WatchStream {
    storage: Storage,
    filter: WatchFilter,
    batches: broadcast::Receiver<Arc<Batch>>,
    wake: StreamWake,
    /// Everything visible here was delivered (or queued in `pending`).
    position: Snapshot,
    pending: VecDeque<pb::WatchJobsResponse>,
    stop: watch::Receiver<bool>,
    ended: bool,
    _slot: StreamSlot,
}

fn event(job: pb::Job, kind: pb::WatchEventKind, resume_token: String) -> pb::WatchJobsResponse {
    pb::WatchJobsResponse {
        job: Some(job),
        kind: kind.into(),
        resume_token,
    }
}

fn change_kind(created: bool) -> pb::WatchEventKind {
    if created {
        pb::WatchEventKind::Created
    } else {
        pb::WatchEventKind::Updated
    }
}

impl WatchStream {
    /// A stream that starts with the current state of the jobs `filter` names (or
    /// its unfinished jobs), then follows every change.
    pub async fn fresh(
        storage: Storage,
        feed: &ChangeFeed,
        filter: WatchFilter,
        slot: StreamSlot,
        stop: watch::Receiver<bool>,
    ) -> Result<Self, Error> {
        // Subscribe first: every batch sent from now on starts at or before the
        // snapshot read below.
        let batches = feed.batches.subscribe();
        let wake = feed.stream_wake(&filter);
        let (jobs, at) = storage.watch_snapshot(&filter).await?;
        if !filter.job_ids.is_empty() && jobs.len() < filter.job_ids.len() {
            return Err(Error::JobNotFound);
        }
        let last = jobs.len();
        let token = resume::encode(&Position::at(at.clone()));
        let pending = jobs
            .into_iter()
            .enumerate()
            .map(|(i, changed)| {
                // A stream cut during its snapshot starts again without a token.
                let resume_token = if i + 1 == last {
                    token.clone()
                } else {
                    String::new()
                };
                event(
                    changed.job.into(),
                    pb::WatchEventKind::Snapshot,
                    resume_token,
                )
            })
            .collect();
        Ok(Self {
            storage,
            filter,
            batches,
            wake,
            position: at,
            pending,
            stop,
            ended: false,
            _slot: slot,
        })
    }

    /// A stream that continues after `from`: every change the client missed, then
    /// every new one.
    pub async fn resumed(
        storage: Storage,
        feed: &ChangeFeed,
        filter: WatchFilter,
        from: Position,
        slot: StreamSlot,
        stop: watch::Receiver<bool>,
    ) -> Result<Self, Error> {
        let batches = feed.batches.subscribe();
        let wake = feed.stream_wake(&filter);
        let mut stream = Self {
            storage,
            filter,
            batches,
            wake,
            position: from.base.clone(),
            pending: VecDeque::new(),
            stop,
            ended: false,
            _slot: slot,
        };
        stream.catch_up(from).await?;
        Ok(stream)
    }

    /// Reads from the table everything after `from` that the filter matches.
    async fn catch_up(&mut self, from: Position) -> Result<(), Error> {
        let (jobs, to) = self.storage.changes_since(&from, &self.filter).await?;
        let jobs: Vec<BatchJob> = jobs.into_iter().map(BatchJob::from).collect();
        self.queue_changes(jobs, &from, &to);
        self.position = to;
        Ok(())
    }

    /// Queues `jobs` (changed after `from`, visible in `to`, by version) with
    /// their resume tokens: each token resumes right after its own event. After
    /// a resume from inside a batch (`from` has `within`), tokens before the last
    /// one repeat `from` (resuming there may repeat some of these events).
    fn queue_changes(&mut self, jobs: Vec<BatchJob>, from: &Position, to: &Snapshot) {
        let last = jobs.len();
        for (i, job) in jobs.into_iter().enumerate() {
            let position = if i + 1 == last {
                Position::at(to.clone())
            } else if from.within.is_none() {
                Position {
                    base: from.base.clone(),
                    within: Some((job.version, to.clone())),
                }
            } else {
                from.clone()
            };
            self.pending.push_back(event(
                job.job,
                change_kind(job.created),
                resume::encode(&position),
            ));
        }
    }

    /// Applies one batch of the feed.
    async fn apply(&mut self, batch: Arc<Batch>) -> Result<(), Error> {
        if !batch
            .from
            .as_ref()
            .is_some_and(|from| from.is_within(&self.position))
        {
            // The feed moved on without this stream seeing it: read the gap.
            return self.catch_up(Position::at(self.position.clone())).await;
        }
        if !self.position.is_within(&batch.to) {
            // A batch from before this stream's position: nothing new in it.
            return Ok(());
        }
        let jobs: Vec<BatchJob> = batch
            .jobs
            .iter()
            .filter(|job| !self.position.sees(job.xid) && self.filter.matches(job.id, job.user_id))
            .cloned()
            .collect();
        let from = Position::at(self.position.clone());
        self.queue_changes(jobs, &from, &batch.to);
        self.position = batch.to.clone();
        Ok(())
    }

    /// The next event, or the status the stream ends with.
    async fn next(&mut self) -> Option<Result<pb::WatchJobsResponse, Status>> {
        if self.ended {
            return None;
        }
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            // Wake-ups are marked seen before the ring is read: one that comes
            // after the read means a batch this read did not see.
            self.wake.mark_seen();
            let outcome = match self.batches.try_recv() {
                Ok(batch) => self.apply(batch).await,
                Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                    tracing::info!(
                        missed,
                        "watch stream fell behind; catching up from the table"
                    );
                    self.catch_up(Position::at(self.position.clone())).await
                }
                Err(broadcast::error::TryRecvError::Closed) => Err(Error::ServerStopping),
                Err(broadcast::error::TryRecvError::Empty) => {
                    let woken = tokio::select! {
                        woken = self.wake.changed() => woken,
                        _ = self.stop.wait_for(|stop| *stop) => false,
                    };
                    if woken {
                        continue;
                    }
                    Err(Error::ServerStopping)
                }
            };
            if let Err(error) = outcome {
                self.ended = true;
                return Some(Err(error.into()));
            }
        }
    }

    /// The stream of events.
    pub fn into_stream(
        self,
    ) -> impl Stream<Item = Result<pb::WatchJobsResponse, Status>> + Send + 'static {
        futures_util::stream::unfold(self, |mut stream| async move {
            let item = stream.next().await?;
            Some((item, stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_queued_jobs_wake_claimers() {
        let feed = ChangeFeed::new();
        let mut seen = feed.queued_work();
        feed.on_notification(r#"{"op":"UPDATE","jobs":[["a","u","completed",3]]}"#);
        assert!(!seen.has_changed().unwrap());
        feed.on_notification(
            r#"{"op":"INSERT","jobs":[["a","u","processing",4],["b","u","queued",5]]}"#,
        );
        assert!(seen.has_changed().unwrap());
        seen.mark_unchanged();
        feed.on_notification("not json");
        assert!(
            seen.has_changed().unwrap(),
            "an unreadable payload makes claimers look"
        );
    }

    fn batch_of(users: &[UserId]) -> Batch {
        let snapshot = Snapshot::parse("10:10:").unwrap();
        Batch {
            from: Some(snapshot.clone()),
            to: snapshot,
            jobs: users
                .iter()
                .map(|&user| BatchJob {
                    job: pb::Job::default(),
                    id: JobId(uuid::Uuid::new_v4()),
                    user_id: Some(user),
                    xid: 10,
                    version: 1,
                    created: true,
                })
                .collect(),
        }
    }

    #[test]
    fn a_batch_wakes_only_the_streams_it_may_concern_and_a_sweep_wakes_all() {
        let feed = ChangeFeed::new();
        let (alice, bob) = (UserId(uuid::Uuid::new_v4()), UserId(uuid::Uuid::new_v4()));
        let _ring = feed.batches.subscribe();
        let of = |user_id| WatchFilter {
            user_id,
            job_ids: Vec::new(),
        };
        let mut alice_wake = feed.stream_wake(&of(Some(alice)));
        let mut bob_wake = feed.stream_wake(&of(Some(bob)));
        let mut all_wake = feed.stream_wake(&of(None));
        feed.publish(batch_of(&[alice]));
        assert!(alice_wake.own.has_changed().unwrap());
        assert!(!bob_wake.own.has_changed().unwrap());
        assert!(!bob_wake.sweep.has_changed().unwrap());
        assert!(all_wake.own.has_changed().unwrap());
        for wake in [&mut alice_wake, &mut bob_wake, &mut all_wake] {
            wake.mark_seen();
        }
        // Bob's stream sleeps through batches of Alice's until the sweep.
        for _ in 1..SWEEP - 1 {
            feed.publish(batch_of(&[alice]));
            assert!(!bob_wake.own.has_changed().unwrap());
            assert!(!bob_wake.sweep.has_changed().unwrap());
        }
        feed.publish(batch_of(&[alice]));
        assert!(bob_wake.sweep.has_changed().unwrap());
        // A restarted feed (no `from`) wakes every stream at once.
        bob_wake.mark_seen();
        let mut restart = batch_of(&[]);
        restart.from = None;
        feed.publish(restart);
        assert!(bob_wake.sweep.has_changed().unwrap());
    }

    #[test]
    fn stream_caps_hold_per_user_per_key_and_in_total() {
        let slots = StreamSlots::new(2, 2, 5);
        let user = || Some(UserId(uuid::Uuid::new_v4()));
        let alice = user();
        let a1 = slots.acquire(alice, None).unwrap();
        let _a2 = slots.acquire(alice, None).unwrap();
        assert!(matches!(
            slots.acquire(alice, None),
            Err(Error::TooManyStreams { scope: "user", .. })
        ));
        // One service key watching other users: two streams, then its cap.
        let key = Some(uuid::Uuid::new_v4());
        let _b1 = slots.acquire(user(), key).unwrap();
        let _c1 = slots.acquire(user(), key).unwrap();
        assert!(matches!(
            slots.acquire(user(), key),
            Err(Error::TooManyStreams { scope: "key", .. })
        ));
        let _all = slots.acquire(None, None).unwrap();
        assert!(matches!(
            slots.acquire(user(), None),
            Err(Error::TooManyStreams {
                scope: "server",
                ..
            })
        ));
        drop(a1);
        assert!(slots.acquire(alice, None).is_ok());
    }
}

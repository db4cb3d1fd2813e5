//! Group commit: concurrent calls that each want one small transaction share one.
//!
//! Every commit of a transaction that notifies takes Postgres's notification
//! queue lock, so notifying commits are serialised (see FACTS.md), and each
//! transaction also costs its own round trips. A [`GroupCommit`] queues the calls
//! it is given and runs them in batches: while a batch is in the database, the
//! calls that arrive meanwhile wait in the queue and go together in the next one.
//! One call alone goes at once, in a batch of one; under load, batches grow by
//! themselves.
//!
//! One batch runs at a time; a batch waits for the one before it, which is what
//! makes batches grow and keeps the database's work per call small. Another
//! batch (up to `in_flight` in all) starts beside it only once it has waited
//! `spare_after`: a slow batch (a lock held elsewhere, a retry one by one) then
//! delays the next by at most that while a spare slot is free, instead of
//! holding every caller until it ends.
//!
//! A caller may queue several items at once ([`GroupCommit::call_many`]): they
//! go in the same batch, never split across two, so they share one
//! statement's fate.
//!
//! A batch function answers every item of its batch, in order. A caller that
//! gives up (its RPC was cancelled) does not take its item out of a batch already
//! formed: the item is still applied, exactly as a call cancelled just after its
//! commit would have been.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};

/// How long a batch waits for the one before it before a spare slot opens.
/// Measured by issue 8's benchmark (submit, 3 runs each way): one batch at a
/// time with spares after 20 ms made 4,909-5,254 submissions/s against
/// 4,070-4,749 with two batches always free to run, with a quarter less
/// server CPU; batches in the benchmark take 1-10 ms, so 20 ms is a stall.
pub const SPARE_AFTER: Duration = Duration::from_millis(20);

/// A caller's items and where their answers go.
type Queued<T, R> = (Vec<T>, oneshot::Sender<Vec<R>>);

/// A queue in front of a batch function; cheap to clone.
#[derive(Debug)]
pub struct GroupCommit<T, R> {
    queue: mpsc::UnboundedSender<Queued<T, R>>,
}

impl<T, R> Clone for GroupCommit<T, R> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

/// The batch task is gone (the runtime is shutting down, or a batch panicked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the group commit of this call was lost")]
pub struct Lost;

impl<T, R> GroupCommit<T, R>
where
    T: Send + 'static,
    R: Send + 'static,
{
    /// Starts the task that forms batches of at most `max_batch` items (or one
    /// caller's items, when they are more) and runs `run` on them: one at a
    /// time, and up to `in_flight` when a batch has waited `spare_after` for a
    /// slot. `run` must return one answer per item, in the items' order.
    pub fn spawn<F, Fut>(max_batch: usize, in_flight: usize, spare_after: Duration, run: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        assert!(max_batch > 0 && in_flight > 0);
        let (queue, mut incoming) = mpsc::unbounded_channel::<Queued<T, R>>();
        let run = Arc::new(run);
        let first_slot = Arc::new(Semaphore::new(1));
        let spare_slots = Arc::new(Semaphore::new(in_flight - 1));
        tokio::spawn(async move {
            // A caller's items that did not fit in the batch before: they
            // start the next one.
            let mut held: Option<Queued<T, R>> = None;
            loop {
                let first = match held.take() {
                    Some(first) => first,
                    None => match incoming.recv().await {
                        Some(first) => first,
                        None => return,
                    },
                };
                // Waiting here is what lets a batch grow: calls keep arriving
                // while the batch before runs.
                let slot = tokio::select! {
                    biased;
                    slot = first_slot.clone().acquire_owned() => slot,
                    slot = async {
                        tokio::time::sleep(spare_after).await;
                        spare_slots.clone().acquire_owned().await
                    } => slot,
                };
                let Ok(slot) = slot else {
                    return;
                };
                let mut items = first.0;
                let mut answers = vec![(items.len(), first.1)];
                while items.len() < max_batch {
                    match incoming.try_recv() {
                        Ok(next) if items.len() + next.0.len() > max_batch => {
                            held = Some(next);
                            break;
                        }
                        Ok((more, answer)) => {
                            answers.push((more.len(), answer));
                            items.extend(more);
                        }
                        Err(_) => break,
                    }
                }
                let run = run.clone();
                tokio::spawn(async move {
                    let expected = items.len();
                    let mut results = run(items).await.into_iter();
                    debug_assert_eq!(results.len(), expected, "one answer per item");
                    for (count, answer) in answers {
                        // A caller that gave up is not an error.
                        let _ = answer.send(results.by_ref().take(count).collect());
                    }
                    drop(slot);
                });
            }
        });
        Self { queue }
    }

    /// Queues `item` and waits for its answer.
    pub async fn call(&self, item: T) -> Result<R, Lost> {
        self.call_many(vec![item]).await?.pop().ok_or(Lost)
    }

    /// Queues `items` to go in one batch together and waits for their
    /// answers, in order.
    pub async fn call_many(&self, items: Vec<T>) -> Result<Vec<R>, Lost> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let (answer, result) = oneshot::channel();
        self.queue.send((items, answer)).map_err(|_| Lost)?;
        result.await.map_err(|_| Lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group of at most `max_batch` items a batch, one batch at a time,
    /// whose batches (reported on the channel as they start) hold until the
    /// gate opens; and a first call, already holding the only slot.
    async fn held_group(
        max_batch: usize,
    ) -> (
        GroupCommit<u32, u32>,
        mpsc::UnboundedReceiver<Vec<u32>>,
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<Result<u32, Lost>>,
    ) {
        let (started, mut batches) = mpsc::unbounded_channel();
        let (release, gate) = tokio::sync::watch::channel(false);
        let group = GroupCommit::spawn(
            max_batch,
            1,
            Duration::from_millis(20),
            move |items: Vec<u32>| {
                started.send(items.clone()).unwrap();
                let mut gate = gate.clone();
                async move {
                    let _ = gate.wait_for(|open| *open).await;
                    items.into_iter().map(|n| n * 10).collect::<Vec<_>>()
                }
            },
        );
        let first = tokio::spawn({
            let group = group.clone();
            async move { group.call(0).await }
        });
        assert_eq!(batches.recv().await, Some(vec![0]));
        (group, batches, release, first)
    }

    #[tokio::test]
    async fn answers_each_call_and_batches_what_arrives_together() {
        let (group, mut batches, release, first) = held_group(8).await;
        // The other 19 queue behind it: a call is queued when first polled.
        let mut rest: Vec<_> = (1..20).map(|n| Box::pin(group.call(n))).collect();
        for call in &mut rest {
            assert!(futures::poll!(call.as_mut()).is_pending());
        }
        release.send(true).unwrap();
        assert_eq!(first.await.unwrap(), Ok(0));
        let answers = futures::future::join_all(rest).await;
        assert_eq!(answers, (1..20).map(|n| Ok(n * 10)).collect::<Vec<_>>());
        // Then the 19 queued calls in batches of at most 8.
        for expected in [8, 8, 3] {
            assert_eq!(
                batches.recv().await.map(|batch| batch.len()),
                Some(expected)
            );
        }
    }

    #[tokio::test]
    async fn a_callers_items_go_in_one_batch_and_are_never_split() {
        let (group, mut batches, release, first) = held_group(5).await;
        // Queued behind it: 1, then the group 2..=4, then the group 5..=7,
        // which would not fit beside them in a batch of 5, then 8.
        let mut one = Box::pin(group.call(1));
        let mut two_to_four = Box::pin(group.call_many(vec![2, 3, 4]));
        let mut five_to_seven = Box::pin(group.call_many(vec![5, 6, 7]));
        let mut eight = Box::pin(group.call(8));
        assert!(futures::poll!(one.as_mut()).is_pending());
        assert!(futures::poll!(two_to_four.as_mut()).is_pending());
        assert!(futures::poll!(five_to_seven.as_mut()).is_pending());
        assert!(futures::poll!(eight.as_mut()).is_pending());
        assert_eq!(group.call_many(Vec::new()).await, Ok(Vec::new()));
        release.send(true).unwrap();
        assert_eq!(first.await.unwrap(), Ok(0));
        assert_eq!(one.await, Ok(10));
        assert_eq!(two_to_four.await, Ok(vec![20, 30, 40]));
        assert_eq!(five_to_seven.await, Ok(vec![50, 60, 70]));
        assert_eq!(eight.await, Ok(80));
        assert_eq!(batches.recv().await, Some(vec![1, 2, 3, 4]));
        assert_eq!(batches.recv().await, Some(vec![5, 6, 7, 8]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_batch_starts_only_when_the_first_keeps_it_waiting() {
        let patience = Duration::from_millis(20);
        let (started, mut starts) = mpsc::unbounded_channel();
        // Batch n (named by its first item) runs until `released` reaches n.
        let (release, released) = tokio::sync::watch::channel(0_u32);
        let group = GroupCommit::spawn(8, 2, patience, move |items: Vec<u32>| {
            started
                .send((items[0], tokio::time::Instant::now()))
                .unwrap();
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|up_to| *up_to >= items[0]).await;
                items
            }
        });
        let t0 = tokio::time::Instant::now();
        let one = tokio::spawn({
            let group = group.clone();
            async move { group.call(1).await }
        });
        assert_eq!(starts.recv().await, Some((1, t0)));
        // Batch 1 holds the first slot: batch 2 waits the patience, then runs
        // beside it.
        let mut two = Box::pin(group.call(2));
        assert!(futures::poll!(two.as_mut()).is_pending());
        assert_eq!(starts.recv().await, Some((2, t0 + patience)));
        // Both slots busy: batch 3 waits, and runs as soon as batch 1 ends,
        // before its own patience is up.
        let mut three = Box::pin(group.call(3));
        assert!(futures::poll!(three.as_mut()).is_pending());
        tokio::time::advance(Duration::from_millis(5)).await;
        release.send_replace(1);
        assert_eq!(
            starts.recv().await,
            Some((3, t0 + patience + Duration::from_millis(5)))
        );
        release.send_replace(3);
        assert_eq!(one.await.unwrap(), Ok(1));
        assert_eq!(two.await, Ok(2));
        assert_eq!(three.await, Ok(3));
    }
}

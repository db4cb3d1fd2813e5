//! Group commit: concurrent calls that each want one small transaction share one.
//!
//! Every commit of a transaction that notifies takes Postgres's notification
//! queue lock, so notifying commits are serialised (see FACTS.md), and each
//! transaction also costs its own round trips. A [`GroupCommit`] queues the calls
//! it is given and runs them in batches: while a batch is in the database, the
//! calls that arrive meanwhile wait in the queue and go together in the next one.
//! One call alone goes at once, in a batch of one; under load, batches grow by
//! themselves. At most `in_flight` batches run at a time.
//!
//! A batch function answers every item of its batch, in order. A caller that
//! gives up (its RPC was cancelled) does not take its item out of a batch already
//! formed: the item is still applied, exactly as a call cancelled just after its
//! commit would have been.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

/// The item and where its answer goes.
type Queued<T, R> = (T, oneshot::Sender<R>);

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
    /// Starts the task that forms batches of at most `max_batch` items and runs
    /// `run` on them, at most `in_flight` at a time. `run` must return one answer
    /// per item, in the items' order.
    pub fn spawn<F, Fut>(max_batch: usize, in_flight: usize, run: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        assert!(max_batch > 0 && in_flight > 0);
        let (queue, mut incoming) = mpsc::unbounded_channel::<Queued<T, R>>();
        let run = Arc::new(run);
        let slots = Arc::new(Semaphore::new(in_flight));
        tokio::spawn(async move {
            while let Some(first) = incoming.recv().await {
                // Waiting here is what lets a batch grow: calls keep arriving
                // while every slot is busy.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < max_batch {
                    match incoming.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                let run = run.clone();
                tokio::spawn(async move {
                    let (items, answers): (Vec<T>, Vec<oneshot::Sender<R>>) =
                        batch.into_iter().unzip();
                    let expected = items.len();
                    let results = run(items).await;
                    debug_assert_eq!(results.len(), expected, "one answer per item");
                    for (answer, result) in answers.into_iter().zip(results) {
                        // A caller that gave up is not an error.
                        let _ = answer.send(result);
                    }
                    drop(slot);
                });
            }
        });
        Self { queue }
    }

    /// Queues `item` and waits for its answer.
    pub async fn call(&self, item: T) -> Result<R, Lost> {
        let (answer, result) = oneshot::channel();
        self.queue.send((item, answer)).map_err(|_| Lost)?;
        result.await.map_err(|_| Lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_each_call_and_batches_what_arrives_together() {
        let (started, mut sizes) = mpsc::unbounded_channel();
        let (release, gate) = tokio::sync::watch::channel(false);
        let group = GroupCommit::spawn(8, 1, move |items: Vec<u32>| {
            started.send(items.len()).unwrap();
            let mut gate = gate.clone();
            async move {
                let _ = gate.wait_for(|open| *open).await;
                items.into_iter().map(|n| n * 10).collect::<Vec<_>>()
            }
        });
        // The first call holds the only slot until released.
        let first = tokio::spawn({
            let group = group.clone();
            async move { group.call(0).await }
        });
        assert_eq!(sizes.recv().await, Some(1));
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
            assert_eq!(sizes.recv().await, Some(expected));
        }
    }
}

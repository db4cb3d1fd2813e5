//! The runner's completions, coalesced: jobs that finish while a report is on
//! its way go together in the next CompleteJobs call instead of one CompleteJob
//! call each. There is no timer: a completion that finds nothing in flight is
//! sent at once, alone, so batching only ever happens when reports would
//! otherwise queue up behind each other.

use std::collections::VecDeque;

use jobq_proto::pb;
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use crate::{Error, Job, WorkerClient};

/// Most completions in one CompleteJobs call (the server's limit).
const MAX_COMPLETIONS: usize = 100;

/// Most encoded bytes of completions in one call, far under the server's
/// default message limit (8 MiB); a completion larger than this goes alone.
const MAX_BYTES: usize = 1 << 20;

/// A completion waiting for its call.
struct Pending {
    request: pb::CompleteJobRequest,
    answer: oneshot::Sender<Option<Result<Job, Error>>>,
}

/// Sends a runner's completions (one task per runner; cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct Reporter {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Reporter {
    /// A reporter calling through `client`; it stops when its last clone is
    /// dropped. Must be called within a Tokio runtime.
    pub(crate) fn spawn(client: WorkerClient) -> Self {
        let (queue, received) = mpsc::unbounded_channel();
        tokio::spawn(run(client, received));
        Self { queue }
    }

    /// Reports one job done: the job as stored, or why its completion was
    /// refused, exactly as CompleteJob would answer. `None` when it was not
    /// reported because the call of its batch failed as a whole (bad input in
    /// any completion, one too large for the server, the server unavailable):
    /// the caller then sends it alone, so that every job gets its own outcome.
    pub(crate) async fn complete(
        &self,
        request: pb::CompleteJobRequest,
    ) -> Option<Result<Job, Error>> {
        let (answer, answered) = oneshot::channel();
        self.queue.send(Pending { request, answer }).ok()?;
        answered.await.ok().flatten()
    }
}

async fn run(client: WorkerClient, mut received: mpsc::UnboundedReceiver<Pending>) {
    let mut pending = VecDeque::new();
    loop {
        if pending.is_empty() {
            match received.recv().await {
                Some(first) => pending.push_back(first),
                None => return,
            }
        }
        while pending.len() < MAX_COMPLETIONS {
            match received.try_recv() {
                Ok(next) => pending.push_back(next),
                Err(_) => break,
            }
        }
        let sizes: Vec<usize> = pending.iter().map(|p| p.request.encoded_len()).collect();
        let batch: Vec<Pending> = pending.drain(..batch_len(&sizes)).collect();
        send(&client, batch).await;
    }
}

/// How many of the completions of encoded `sizes` (oldest first) the next call
/// carries: at least one, at most [`MAX_COMPLETIONS`], and no more than
/// [`MAX_BYTES`] unless the first alone is larger.
fn batch_len(sizes: &[usize]) -> usize {
    let mut bytes = 0;
    let mut len = 0;
    for &size in sizes.iter().take(MAX_COMPLETIONS) {
        bytes += size;
        if len > 0 && bytes > MAX_BYTES {
            break;
        }
        len += 1;
    }
    len
}

async fn send(client: &WorkerClient, mut batch: Vec<Pending>) {
    if batch.len() == 1 {
        let Pending { request, answer } = batch.remove(0);
        let _ = answer.send(Some(client.complete_request(request).await));
        return;
    }
    let (requests, answers): (Vec<_>, Vec<_>) =
        batch.into_iter().map(|p| (p.request, p.answer)).unzip();
    match client.complete_requests(requests).await {
        Ok(outcomes) => {
            for (answer, outcome) in answers.into_iter().zip(outcomes) {
                let _ = answer.send(Some(outcome));
            }
        }
        Err(error) => {
            tracing::debug!(%error, completions = answers.len(), "CompleteJobs failed as a whole; each job is reported alone");
            for answer in answers {
                let _ = answer.send(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_carries_what_fits_and_never_nothing() {
        assert_eq!(batch_len(&[10]), 1);
        assert_eq!(batch_len(&[10; 250]), MAX_COMPLETIONS);
        // Bytes: the completion that would cross the limit waits for the next call.
        assert_eq!(batch_len(&[MAX_BYTES / 2, MAX_BYTES / 2, 1]), 2);
        // One larger than the limit still goes, alone.
        assert_eq!(batch_len(&[MAX_BYTES * 3, 10]), 1);
        assert_eq!(batch_len(&[10, MAX_BYTES * 3]), 1);
    }
}

//! Group commit for small writes that arrive together: callers hand a request to a
//! [`Batcher`] and wait; a background task takes everything queued while the earlier writes
//! ran and writes it as one batch, with at most `max_in_flight` batches being written at
//! once. An idle server writes each request at once (a batch of one); a busy one writes
//! fewer, larger batches instead of queueing a transaction per request behind the database.

use std::future::Future;

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

struct Job<Req, Resp> {
    request: Req,
    reply: oneshot::Sender<Resp>,
}

/// A queue in front of a batch-writing function.
pub struct Batcher<Req, Resp> {
    jobs: mpsc::Sender<Job<Req, Resp>>,
}

impl<Req, Resp> std::fmt::Debug for Batcher<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("queued", &(self.jobs.max_capacity() - self.jobs.capacity()))
            .finish()
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Start the writer task on the current runtime. `write` gets at most `max_batch`
    /// requests and must answer one response per request, in order; up to `max_in_flight`
    /// of its futures run at once (1 for a database with a single writer, more where
    /// concurrent commits share a WAL flush). The task ends when the last [`Batcher`] handle
    /// is dropped.
    pub fn spawn<F, Fut>(max_batch: usize, max_in_flight: usize, mut write: F) -> Self
    where
        F: FnMut(Vec<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Resp>> + Send + 'static,
    {
        let max_batch = max_batch.max(1);
        let (jobs, mut queue) = mpsc::channel::<Job<Req, Resp>>(max_batch * 4);
        let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            loop {
                // Take a slot first: while every slot is busy, requests gather into the next
                // batch.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                if queue.recv_many(&mut batch, max_batch).await == 0 {
                    return;
                }
                let (requests, replies): (Vec<Req>, Vec<oneshot::Sender<Resp>>) =
                    batch.drain(..).map(|job| (job.request, job.reply)).unzip();
                let written = write(requests);
                tokio::spawn(async move {
                    let responses = written.await;
                    drop(slot);
                    for (reply, response) in replies.into_iter().zip(responses) {
                        // The caller may have gone (client disconnected): nothing to do.
                        let _ = reply.send(response);
                    }
                });
            }
        });
        Self { jobs }
    }

    /// Queue one request and wait for its response; `None` if the writer task is gone or
    /// answered fewer responses than requests.
    pub async fn call(&self, request: Req) -> Option<Resp> {
        let (reply, response) = oneshot::channel();
        self.jobs.send(Job { request, reply }).await.ok()?;
        response.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_requests_are_written_together_and_answered_in_order() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = batches.clone();
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
        let batcher = Arc::new(Batcher::spawn(64, 1, move |reqs: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            let mut gate = gate_rx.clone();
            async move {
                // Hold the first batch until everything else has queued behind it.
                let _ = gate.wait_for(|open| *open).await;
                reqs.into_iter().map(|r| r * 10).collect::<Vec<_>>()
            }
        }));
        let first = tokio::spawn({
            let b = batcher.clone();
            async move { b.call(1).await }
        });
        // Wait until the writer holds the first request.
        while batches.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = (2..=20)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { b.call(i).await })
            })
            .collect();
        while batcher.jobs.capacity() > batcher.jobs.max_capacity() - 19 {
            tokio::task::yield_now().await;
        }
        gate_tx.send(true).unwrap();
        assert_eq!(first.await.unwrap(), Some(10));
        for (i, handle) in (2..=20).zip(rest) {
            assert_eq!(handle.await.unwrap(), Some(i * 10));
        }
        // One batch for the first request, one for the 19 queued behind it.
        assert_eq!(batches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_writer_answering_too_few_responses_gives_none_not_a_hang() {
        let batcher = Batcher::spawn(8, 2, |_reqs: Vec<u32>| async { Vec::<u32>::new() });
        assert_eq!(batcher.call(1).await, None);
    }
}

//! The async shell of the work queue: tokio wrappers around the
//! synchronous [`WorkQueue`] of [`crate::queue`]. They run the blocking
//! operation on tokio's blocking pool, so the runtime's workers never wait
//! for `fdatasync`. The queue's storage, codec and state live below, in
//! [`crate::queue`], which does not depend on tokio.

use std::time::Duration;

use crate::queue::{Claimed, DrainReport, Error, NackOutcome, WorkQueue};

impl WorkQueue {
    /// Async [`WorkQueue::enqueue`]: runs on tokio's blocking pool, so the
    /// runtime's workers never wait for `fdatasync`.
    pub async fn enqueue_async(&self, payload: Vec<u8>) -> Result<u64, Error> {
        let q = self.clone();
        blocking(move || q.enqueue(&payload)).await
    }

    /// Async [`WorkQueue::claim`].
    pub async fn claim_async(&self, worker: &str) -> Result<Option<Claimed>, Error> {
        let (q, w) = (self.clone(), worker.to_string());
        blocking(move || q.claim(&w)).await
    }

    /// Async [`WorkQueue::ack`].
    pub async fn ack_async(&self, claimed: &Claimed) -> Result<(), Error> {
        let (q, c) = (self.clone(), claimed.clone());
        blocking(move || q.ack(&c)).await
    }

    /// Async [`WorkQueue::nack`].
    pub async fn nack_async(
        &self,
        claimed: &Claimed,
        delay: Duration,
        error: &str,
    ) -> Result<NackOutcome, Error> {
        let (q, c, e) = (self.clone(), claimed.clone(), error.to_string());
        blocking(move || q.nack(&c, delay, &e)).await
    }

    /// Async [`WorkQueue::drain`].
    pub async fn drain_async(&self, timeout: Duration) -> Result<DrainReport, Error> {
        let q = self.clone();
        blocking(move || q.drain(timeout)).await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(format!("blocking queue task: {e}")))?
}

//! The async shell of the work queue: tokio counterparts of the
//! synchronous [`WorkQueue`] of [`crate::queue`], one per operation.
//!
//! What runs where (see docs/async.md): an operation's check against the
//! queue state and its record, written buffered under the queue's lock,
//! run on tokio's blocking pool for the microseconds they take; the
//! `fdatasync` that makes the record durable is awaited through
//! [`crate::log::Log::wait_durable_async`] (the log's writer thread runs the
//! group commit), so no thread is held while the disk works and no file
//! I/O runs on an executor thread. A compaction that comes due runs on the
//! blocking pool. `open_async`, `drain_async` (it waits on in-flight items
//! with a timeout), `apply_inbox_async` and `compact_async` run whole on
//! the blocking pool. The queue's storage, codec and state live below, in
//! [`crate::queue`], which does not depend on tokio.

use std::path::Path;
use std::time::Duration;

use crate::log::Lsn;
use crate::queue::{Claimed, DrainReport, Error, NackOutcome, QueueOptions, WorkQueue};

impl WorkQueue {
    /// Async [`WorkQueue::open`] (recovery on tokio's blocking pool).
    pub async fn open_async(
        journal_dir: impl AsRef<Path>,
        opts: QueueOptions,
    ) -> Result<WorkQueue, Error> {
        let dir = journal_dir.as_ref().to_path_buf();
        blocking(move || WorkQueue::open(dir, opts)).await
    }

    /// Async [`WorkQueue::enqueue`]: returns the id once the item is durable.
    pub async fn enqueue_async(&self, payload: Vec<u8>) -> Result<u64, Error> {
        self.enqueue_after_async(payload, Duration::ZERO).await
    }

    /// Async [`WorkQueue::enqueue_after`].
    pub async fn enqueue_after_async(
        &self,
        payload: Vec<u8>,
        delay: Duration,
    ) -> Result<u64, Error> {
        let q = self.clone();
        let (id, lsn) = blocking(move || q.enqueue_write(&payload, delay)).await?;
        self.finish_async(lsn).await?;
        Ok(id)
    }

    /// Async [`WorkQueue::enqueue_json`].
    pub async fn enqueue_json_async<T: serde::Serialize>(&self, value: &T) -> Result<u64, Error> {
        self.enqueue_async(serde_json::to_vec(value)?).await
    }

    /// Async [`WorkQueue::claim`]: the claim is durable before it returns.
    pub async fn claim_async(&self, worker: &str) -> Result<Option<Claimed>, Error> {
        let (q, w) = (self.clone(), worker.to_string());
        let (claimed, lsn) = blocking(move || q.claim_write(&w)).await?;
        if let Some(lsn) = lsn {
            self.finish_async(lsn).await?;
        }
        Ok(claimed)
    }

    /// Async [`WorkQueue::ack`].
    pub async fn ack_async(&self, claimed: &Claimed) -> Result<(), Error> {
        let (q, c) = (self.clone(), claimed.clone());
        let lsn = blocking(move || q.ack_write(&c)).await?;
        self.finish_async(lsn).await
    }

    /// Async [`WorkQueue::nack`].
    pub async fn nack_async(
        &self,
        claimed: &Claimed,
        delay: Duration,
        error: &str,
    ) -> Result<NackOutcome, Error> {
        let (q, c, e) = (self.clone(), claimed.clone(), error.to_string());
        let (outcome, lsn) = blocking(move || q.nack_write(&c, delay, &e)).await?;
        self.finish_async(lsn).await?;
        Ok(outcome)
    }

    /// Async [`WorkQueue::redrive`].
    pub async fn redrive_async(&self, ids: &[u64], by: &str) -> Result<Vec<u64>, Error> {
        self.operate_async(ids, by, true).await
    }

    /// Async [`WorkQueue::purge_dead`].
    pub async fn purge_dead_async(&self, ids: &[u64], by: &str) -> Result<Vec<u64>, Error> {
        self.operate_async(ids, by, false).await
    }

    /// Async [`WorkQueue::drain`] (its wait for in-flight items runs on
    /// tokio's blocking pool).
    pub async fn drain_async(&self, timeout: Duration) -> Result<DrainReport, Error> {
        let q = self.clone();
        blocking(move || q.drain(timeout)).await
    }

    /// Async [`WorkQueue::apply_inbox`].
    pub async fn apply_inbox_async(&self) -> Result<usize, Error> {
        let q = self.clone();
        blocking(move || q.apply_inbox()).await
    }

    /// Async [`WorkQueue::compact`].
    pub async fn compact_async(&self) -> Result<Option<Lsn>, Error> {
        let q = self.clone();
        blocking(move || q.compact()).await
    }

    /// Async [`WorkQueue::close`]: the final sync runs on the log's writer
    /// thread.
    pub async fn close_async(self) -> Result<(), Error> {
        self.log().sync_async().await?;
        Ok(())
    }

    async fn operate_async(&self, ids: &[u64], by: &str, redrive: bool) -> Result<Vec<u64>, Error> {
        let (q, ids, by) = (self.clone(), ids.to_vec(), by.to_string());
        let (done, lsn) = blocking(move || q.operate_write(&ids, &by, redrive, None)).await?;
        if let Some(lsn) = lsn {
            self.finish_async(lsn).await?;
        }
        Ok(done)
    }

    /// Async `finish`: the record durable (no thread held), then a
    /// compaction on the blocking pool if one is due.
    async fn finish_async(&self, lsn: Lsn) -> Result<(), Error> {
        self.log().wait_durable_async(lsn).await?;
        if self.compaction_due() {
            let q = self.clone();
            // As in the sync `finish`: the operation is durable; a failed
            // compaction is retried after the next one.
            let _ = blocking(move || q.compact()).await;
        }
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(format!("blocking queue task: {e}")))?
}

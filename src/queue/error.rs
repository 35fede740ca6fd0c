//! Errors of the work-queue layer.

use std::path::PathBuf;

/// What went wrong in the durable work queue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The work queue is draining (shutdown): it accepts no new items and
    /// hands out no new claims.
    #[error("work queue is draining for shutdown: no enqueue or claim accepted")]
    Draining,

    /// No queue item has this id (never enqueued, or acked and compacted away).
    #[error("work queue item {id} does not exist")]
    NotFound {
        /// The item id.
        id: u64,
    },

    /// The claim is no longer valid: its lease expired and another claim
    /// took the item, or the item was released at shutdown. The result of this
    /// attempt must not be recorded as the item's outcome.
    #[error("work queue item {id}: claim (attempt {attempt}) is no longer held{}", current.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    LeaseLost {
        /// The item id.
        id: u64,
        /// The attempt the caller claimed.
        attempt: u32,
        /// What holds the item now, in words.
        current: Option<String>,
    },

    /// A queue record could not be decoded: the file was written by
    /// something else, or a bug wrote an inconsistent history.
    #[error("undecodable record at LSN {lsn} in {}: {reason}", dir.display())]
    BadRecord {
        /// The log directory.
        dir: PathBuf,
        /// The record's LSN (0 for a snapshot).
        lsn: u64,
        /// What is wrong.
        reason: String,
    },

    /// The storage below failed (the queue's log).
    #[error(transparent)]
    Log(#[from] crate::log::Error),

    /// A payload could not be (de)serialized with serde.
    #[error("payload (de)serialization failed: {0}")]
    Serde(#[from] serde_json::Error),

    /// An argument was out of range (empty worker id, oversized string, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A blocking task (an async wrapper's `spawn_blocking`) panicked or was
    /// cancelled.
    #[error("background task failed: {0}")]
    Task(String),
}

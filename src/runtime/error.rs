//! Errors of the runtime layer.

use std::path::PathBuf;

/// What went wrong in the runtime layer (shutdown, work queue, batch, health).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Graceful shutdown has begun: no new unit of work may start. Finish
    /// what is in progress and return.
    #[error("shutdown in progress: no new unit of work may start")]
    ShuttingDown,

    /// The work queue is draining (shutdown): it accepts no new items and
    /// hands out no new claims.
    #[error("work queue is draining for shutdown: no enqueue or claim accepted")]
    Draining,

    /// `SHUTDOWN_TIMEOUT` (or another duration setting) could not be parsed.
    #[error("invalid value {value:?} for {name}: {reason}")]
    InvalidSetting {
        /// The setting (for example `SHUTDOWN_TIMEOUT`).
        name: &'static str,
        /// The value found.
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// `Shutdown::install` was called outside a tokio runtime.
    #[error("no tokio runtime is running: call Shutdown::install from inside a runtime, or use Shutdown::install_thread")]
    NoRuntime,

    /// Installing a signal handler (or starting a helper thread) failed.
    #[error("could not install the {what}: {source}")]
    Install {
        /// What was being installed.
        what: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A blocking task (an async wrapper's `spawn_blocking`) panicked or was
    /// cancelled.
    #[error("background task failed: {0}")]
    Task(String),

    /// The health server could not bind or serve.
    #[error("health server on {addr}: {source}")]
    Http {
        /// The address.
        addr: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The storage below failed (the queue's or the batch cursor's log).
    #[error(transparent)]
    Log(#[from] crate::log::Error),

    /// The journal below failed.
    #[error(transparent)]
    Journal(#[from] crate::journal::Error),

    /// Processing a batch item failed; the batch stopped before it and the
    /// next run retries it.
    #[error("batch {batch:?}, item {index}: {message}")]
    BatchItem {
        /// The batch id.
        batch: String,
        /// The item's index.
        index: u64,
        /// The item's error, as text.
        message: String,
    },

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

    /// A queue or batch record could not be decoded: the file was written by
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

    /// A payload could not be (de)serialized with serde.
    #[error("payload (de)serialization failed: {0}")]
    Serde(#[from] serde_json::Error),

    /// An argument was out of range (empty worker id, oversized string, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

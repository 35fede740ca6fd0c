//! Errors of the runtime layer.

/// What went wrong in the runtime layer (shutdown, queue drain, batch, health).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Graceful shutdown has begun: no new unit of work may start. Finish
    /// what is in progress and return.
    #[error("shutdown in progress: no new unit of work may start")]
    ShuttingDown,

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

    /// The storage below failed (the batch cursor's log).
    #[error(transparent)]
    Log(#[from] crate::log::Error),

    /// The work queue below failed.
    #[error(transparent)]
    Queue(#[from] crate::queue::Error),

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

    /// A payload could not be (de)serialized with serde.
    #[error("payload (de)serialization failed: {0}")]
    Serde(#[from] serde_json::Error),

    /// An argument was out of range (empty worker id, oversized string, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

//! Errors of the log layer. Every variant names the file (and offset) involved.

use std::io;
use std::path::PathBuf;

/// Result type of the log layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the log layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation failed. `op` says which one.
    #[error("I/O error during {op} on {}: {source}", path.display())]
    Io {
        /// The operation (for example "write", "fdatasync", "open").
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// Another process (or another `Log` in this process) owns the directory.
    /// The message tells the two apart: when the recorded holder is this
    /// very process, the directory was opened twice in one program.
    #[error("{}", locked_message(dir, *pid))]
    Locked {
        /// The journal directory.
        dir: PathBuf,
        /// The holder's process id, when it recorded one.
        pid: Option<u32>,
    },

    /// Acknowledged data is damaged. Open refuses to continue rather than
    /// silently dropping records; use `RecoveryMode::Lossy` (or
    /// `wal-inspect repair --lossy`) to truncate at this point deliberately.
    #[error("corruption in segment {} at offset {offset}: {reason}", segment.display())]
    Corruption {
        /// The segment (or snapshot) file.
        segment: PathBuf,
        /// Byte offset of the damaged record or header inside the file.
        offset: u64,
        /// What was found.
        reason: String,
    },

    /// The file is not an agentwal segment or snapshot (bad magic).
    #[error("{} is not an agentwal file (bad magic)", path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
    },

    /// The file was written by a newer, unknown format version.
    #[error("{} has format version {found}, this build reads up to {supported}", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The newest version this build understands.
        supported: u32,
    },

    /// A record is larger than the configured limit. Nothing was written;
    /// retrying the same record will fail again.
    #[error("record of {size} bytes exceeds the limit of {limit} bytes; nothing was written")]
    RecordTooLarge {
        /// Payload size.
        size: u64,
        /// Configured maximum.
        limit: u64,
    },

    /// A previous write or `fdatasync` failed, so the state of unsynced data is unknown.
    /// The log refuses every further write; close it and reopen to recover
    /// from what is on disk.
    #[error("log is poisoned after a failed write or sync ({cause}); close and reopen it")]
    Poisoned {
        /// The original failure.
        cause: String,
    },

    /// The path is not a journal directory (missing, or a file).
    #[error("{} is not a journal directory: {reason}", path.display())]
    NotAJournal {
        /// The path given.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// Invalid options.
    #[error("invalid option: {0}")]
    InvalidOptions(String),

    /// The requested LSN is not in the log (compacted away or not yet written).
    #[error("LSN {lsn} is not available (log holds {first}..={last})")]
    LsnOutOfRange {
        /// Requested.
        lsn: u64,
        /// First LSN held.
        first: u64,
        /// Last LSN held.
        last: u64,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True when retrying the same call cannot succeed (too large, poisoned,
    /// corruption, locked by another owner, bad format).
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Error::Io { .. } | Error::Locked { .. })
    }
}

/// The text of [`Error::Locked`]: "opened twice in this process" when the
/// holder's recorded pid is our own (an `flock` held by a live process with
/// our pid can only be ours), otherwise "another owner (pid N)".
fn locked_message(dir: &std::path::Path, pid: Option<u32>) -> String {
    if pid == Some(std::process::id()) {
        return format!(
            "journal directory {} is already open in this process (pid {}): a second Journal/Log/WorkQueue on one directory is refused; share the first handle (it is cheap to clone) or close it before opening again",
            dir.display(),
            std::process::id()
        );
    }
    format!(
        "journal directory {} is locked by another owner{}; stop that process or open read-only",
        dir.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )
}

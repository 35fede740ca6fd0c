//! Errors of the inspect layer, and the exit code each one maps to.

use std::io;
use std::path::{Path, PathBuf};

/// Result type of the inspect layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What stopped an inspect command. Findings about the journal itself (a torn
/// tail, corruption) are *not* errors: they are part of the reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The path is missing, is a file, is empty, or holds no journal files.
    #[error("{} is not a journal directory: {reason}", path.display())]
    NotAJournal {
        /// The path given.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },

    /// An I/O operation failed (permission denied, disk error, ...).
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done ("list", "read", ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The log layer refused (wrong format version, locked journal, ...).
    #[error("{0}")]
    Log(#[from] crate::log::Error),

    /// The journal's records could not be interpreted (a record kind this
    /// build does not know, a malformed record).
    #[error("cannot interpret the journal's records: {0}")]
    Journal(#[from] crate::journal::Error),

    /// No unit with this id is in the journal.
    #[error("no unit {id:?} in journal {}{hint}", dir.display())]
    UnitNotFound {
        /// The id asked for.
        id: String,
        /// The journal directory.
        dir: PathBuf,
        /// What else is known (compaction, keys of the unit).
        hint: String,
    },

    /// `repair` found damage it will not fix without `--lossy`, or damage
    /// that no repair can fix. Nothing was changed.
    #[error("repair refused for {}: {reason}", dir.display())]
    RepairRefused {
        /// The journal directory.
        dir: PathBuf,
        /// What was found and what the operator can do.
        reason: String,
    },

    /// An operator command (`resolve`, `abort`, `approve`, `queue
    /// --redrive|--purge-dead`) was refused, or the running owner did not
    /// apply it in time. Nothing was changed (unless `pending` says the owner
    /// is still applying it).
    #[error("{message}")]
    OperatorRefused {
        /// Why, in plain words.
        message: String,
    },

    /// The queue layer failed.
    #[error("{0}")]
    Queue(#[from] crate::queue::Error),

    /// Writing the report failed (for example a closed pipe).
    #[error("cannot write the report: {0}")]
    Output(#[source] io::Error),
}

impl Error {
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The process exit code `wal-inspect` uses for this error: 1 when the
    /// journal is damaged (repair refused), 2 for usage, input and I/O errors.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::RepairRefused { .. } | Error::OperatorRefused { .. } => 1,
            _ => 2,
        }
    }
}

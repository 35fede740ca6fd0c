//! The library side of `wal-inspect`: read-only reports over a journal
//! directory, verification and repair. The binary only parses and prints.
//!
//! **Promises.**
//!
//! * Every function except [`repair::repair`] is read-only: it opens the
//!   journal through [`crate::log::LogReader`], takes no lock and writes
//!   nothing, so it can run while the owning process is appending. A tail
//!   being written at that moment is reported as a torn tail, never as
//!   corruption (corruption is confirmed by a second scan, see [`open`]).
//! * Damage is a *finding*, not an error: the reports carry the segment file,
//!   offset and reason of the first corruption and still describe the valid
//!   part of the log.
//! * Bad input (not a directory, an empty or foreign directory, unreadable
//!   files, a newer format) is a typed [`Error`] with one clear message.
//! * [`repair::repair`] takes the owner lock (so it refuses to run while the
//!   owner is alive), cuts only a torn tail unless told `lossy`, saves cut
//!   bytes beside the log and says exactly what it dropped.
//!
//! **Boundaries.** `inspect` reads the `log`, `journal` and `queue` layers and
//! never `runtime` (so a `wal-inspect` built without tokio reads everything).
//! It does not re-derive the log's format: file names, magic numbers and the
//! `LOCK` name come from the log's `format` module, the damage classification
//! from the log's scan ([`crate::log::ScanReport`]), and records of a segment
//! outside the log's order from the log's `probe`.
//!
//! ```
//! use agentwal::inspect::{summary::summary, Inspection};
//! use agentwal::log::{Log, LogOptions};
//! let dir = tempfile::tempdir().unwrap();
//! let opts = LogOptions { segment_size: 1 << 16, max_record_bytes: 1 << 12, ..LogOptions::default() };
//! let log = Log::open(dir.path(), opts).unwrap();
//! log.append(b"hello").unwrap();
//! let report = summary(&Inspection::open(dir.path()).unwrap());
//! assert_eq!((report.records, report.corruption.is_none()), (1, true));
//! ```

pub mod dump;
mod error;
pub mod open;
pub mod operator;
pub mod queue;
pub mod repair;
mod semantics;
pub mod summary;
pub mod text;
pub mod time;
pub mod units;
pub mod verify;

pub use error::{Error, Result};
pub use open::{CorruptionInfo, Findings, Inspection, OpenOptions, TornTailInfo};

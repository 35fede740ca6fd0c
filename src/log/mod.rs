//! The log layer: an append-only, checksummed, segmented write-ahead log.
//!
//! **Promises.** An append acknowledged as [`Durability::Durable`] survives a
//! process kill or power loss. Open never fails on a state a crash can
//! produce: a torn final write is cut (and its bytes saved beside the log);
//! damage to acknowledged data is reported as [`Error::Corruption`] with
//! segment and offset, never skipped (unless [`RecoveryMode::Lossy`]). After
//! a failed write or `fdatasync` every call fails with [`Error::Poisoned`]
//! until the log is reopened. One owner per directory (advisory lock), any
//! number of read-only [`LogReader`]s.
//!
//! **Boundaries.** The log is the bottom layer: it imports nothing from
//! `journal`, `queue`, `runtime` or `inspect`, and knows nothing of units,
//! effects or queues: a record is a kind byte and opaque bytes. Every byte
//! reaches the disk through the [`storage::Storage`] seam.
//!
//! **The format is private.** The record, segment and snapshot codecs and the
//! recovery scan (`record`, `segment`, `snapshot`, `scan`) are crate-private,
//! so the on-disk format is not part of the semver surface; the file names,
//! magic numbers and the `LOCK` name live once, in `format`. Other layers read
//! through [`Log`] and [`LogReader`] (and [`ScanReport`] for the damage a scan
//! classified); `wal-inspect` also uses the crate-private `probe` (one
//! segment read on its own). Snapshots are written only by the owning
//! [`Log::write_snapshot`] (it holds the owner lock). Tests forge files
//! through `testing` (feature `testing`), which also gates the simulator
//! (`SimStorage`) and the fuzz entry points.
//!
//! ```
//! use agentwal::log::{Log, LogOptions};
//! let dir = tempfile::tempdir().unwrap();
//! let opts = LogOptions { segment_size: 1 << 20, max_record_bytes: 64 << 10, ..Default::default() };
//! let log = Log::open(dir.path(), opts).unwrap();
//! let lsn = log.append(b"hello").unwrap();
//! let back: Vec<_> = log.read_from(lsn).unwrap().map(|r| r.unwrap().payload().to_vec()).collect();
//! assert_eq!(back, vec![b"hello".to_vec()]);
//! ```

mod error;
pub(crate) mod format;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod inbox;
pub(crate) mod probe;
mod reader;
pub(crate) mod record;
mod rotation;
pub(crate) mod scan;
pub(crate) mod segment;
pub(crate) mod snapshot;
pub mod storage;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod window;
mod writer;

pub use error::{Error, Result};
pub use reader::{LogIter, LogReader};
pub use record::{Lsn, Record};
pub use scan::{Corruption, ScanReport, SegmentScan, TornTail};
pub use snapshot::Snapshot;
#[cfg(any(test, feature = "testing"))]
pub use storage::SimStorage;
pub use storage::{FsStorage, Storage};
pub use writer::{Durability, Log, LogOptions, OpenReport, RecoveryMode};

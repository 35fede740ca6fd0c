//! # agentwal
//!
//! An embedded write-ahead log that lets AI agents and long-running workers be
//! killed at any moment without losing work or sending a message twice.
//!
//! Layers (dependencies point downward only: `log` ← `journal`, `log` ←
//! `queue` ← `runtime`; `inspect` reads `log`, `journal` and `queue`, never
//! `runtime`):
//!
//! * [`log`] — segmented, checksummed, group-committed storage engine with
//!   crash recovery and a storage seam.
//! * [`journal`] — units of side effects with idempotency keys and replay.
//! * [`queue`] — the durable work queue: codec, state machine, synchronous
//!   API (no tokio).
//! * [`runtime`] (feature `tokio`) — graceful shutdown, checkpointed batches,
//!   the queue's async shell and drain, health endpoints.
//! * [`inspect`] — the library behind the `wal-inspect` operator tool.
//!
//! Test-only code (the fault-injecting `SimStorage`, fuzz entry points, the
//! queue's `ManualClock`) is compiled only with the `testing` feature.
//!
//! The types most programs need are re-exported here, the crate's front door:
//!
//! ```
//! use agentwal::{Effect, Journal, JournalOptions, WorkQueue, QueueOptions};
//! let dir = tempfile::tempdir().unwrap();
//! let journal = Journal::open(dir.path(), JournalOptions::small()).unwrap();
//! let mut unit = journal.begin("order-7", "order", &serde_json::json!({ "id": 7 })).unwrap();
//! let sent: u32 = unit
//!     .run(Effect::retry_same_key("email"), |ctx| {
//!         // ctx.key() goes to the receiver, which de-duplicates on it.
//!         Ok::<_, std::io::Error>(ctx.key().len() as u32)
//!     })
//!     .unwrap();
//! unit.commit().unwrap();
//! assert!(sent > 0);
//!
//! let queue = WorkQueue::open(dir.path(), QueueOptions::default()).unwrap();
//! queue.enqueue(b"order-8").unwrap();
//! ```
//!
//! The on-disk format (record, segment, snapshot encodings and the scan that
//! classifies damage) is private to [`log`]: it is not part of the semver
//! surface. Programs read a log through [`LogReader`] and classify damage
//! through [`log::ScanReport`]; tests forge files through `log::testing`
//! (feature `testing`).
//!
//! See `docs/` for the on-disk format, the recovery algorithm and operations.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod inspect;
pub mod journal;
pub mod log;
pub mod queue;
#[cfg(feature = "tokio")]
pub mod runtime;

// The front door: the handful of types most programs need, so that
// `use agentwal::{Journal, JournalOptions, Effect};` is enough. Everything
// else stays under its layer's module (`agentwal::journal::*`,
// `agentwal::log::*`, `agentwal::queue::*`, `agentwal::runtime::*`).
pub use journal::{
    Compensation, Effect, EffectCtx, Journal, JournalOptions, JournalView, Probe, Retention, Unit,
    UnitState,
};
pub use log::{Durability, Log, LogOptions, LogReader, Lsn, RecoveryMode};
pub use queue::{Claimed, QueueOptions, WorkQueue};
#[cfg(feature = "tokio")]
pub use runtime::{run_batch, run_batch_units, Shutdown};

/// The README's examples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

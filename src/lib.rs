//! # agentwal
//!
//! An embedded write-ahead log that lets AI agents and long-running workers be
//! killed at any moment without losing work or sending a message twice.
//!
//! Layers (dependencies point downward only: runtime → journal → log; inspect
//! reads journal and log):
//!
//! * [`log`] — segmented, checksummed, group-committed storage engine with
//!   crash recovery and a fault-injecting storage seam.
//! * [`engine`] — the replay engine: one replicated state machine over the
//!   log (check before append, infallible apply, versioned snapshots,
//!   amortized compaction), used by the journal and the queue.
//! * [`journal`] — units of side effects with idempotency keys and replay.
//! * [`runtime`] — graceful shutdown, checkpointed batches, work queue, health.
//! * [`inspect`] — the library behind the `wal-inspect` operator tool.
//!
//! See `docs/` for the on-disk format, the recovery algorithm and operations.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod engine;
pub mod inspect;
pub mod journal;
pub mod log;
#[cfg(feature = "tokio")]
pub mod runtime;

/// The README's examples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

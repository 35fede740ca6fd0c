//! # agentwal
//!
//! An embedded write-ahead log that lets AI agents and long-running workers be
//! killed at any moment without losing work or sending a message twice.
//!
//! Work is journaled as **units** of **side effects**: an intent, then for each
//! effect an *effect intent* with an idempotency key that is durable **before**
//! the effect runs, then the effect's outcome, then commit or abort. After a
//! SIGKILL or a power loss, replay hands back recorded results instead of
//! running effects again and repeats an in-doubt effect only as its policy
//! allows, always with the same key.
//!
//! # Quickstart
//!
//! `cargo add agentwal serde_json`, then (this is the README's example and
//! `examples/quickstart.rs`):
//!
//! ```
#![doc = include_str!("../examples/quickstart.rs")]
//! ```
//!
//! A complete agent with graceful shutdown is `examples/batch_agent.rs`
//! (`cargo run --release --example batch_agent -- --journal DIR --sink FILE`).
//!
//! # Guarantees
//!
//! 1. An append acknowledged as durable survives a process kill or power loss; a torn tail is repaired, corruption of acknowledged data is reported with segment and offset.
//! 2. An effect's intent and idempotency key are durable before it runs; an effect whose outcome was recorded never runs again for that key.
//! 3. An in-doubt effect is repeated only under its declared policy ([`Effect::retry_same_key`], [`Effect::reconcile`], [`Effect::never_repeat`]), always with the same key.
//! 4. A graceful shutdown ([`Shutdown`], SIGTERM within `SHUTDOWN_TIMEOUT`) loses no work and repeats no effect; resuming with different effects is a typed error.
//! 5. Cost does not grow with history: O(1) amortized appends, commits and compactions; memory O(live units + retained keys).
//!
//! # Guides
//!
//! The `docs/` folder of the repository: [the journal protocol and
//! policies](https://github.com/agentwal/agentwal/blob/main/docs/journal.md),
//! [operations: shutdown, Kubernetes, metrics, tracing](https://github.com/agentwal/agentwal/blob/main/docs/operations.md),
//! [wal-inspect, the operator's tool](https://github.com/agentwal/agentwal/blob/main/docs/wal-inspect.md),
//! [the recovery algorithm](https://github.com/agentwal/agentwal/blob/main/docs/recovery.md),
//! [the on-disk format](https://github.com/agentwal/agentwal/blob/main/docs/format.md),
//! [testing and the fault model](https://github.com/agentwal/agentwal/blob/main/docs/testing.md),
//! [benchmarks](https://github.com/agentwal/agentwal/blob/main/docs/benchmarks.md).
//!
//! # Features
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `tokio` | yes | [`runtime`]: signals and the shutdown budget, checkpointed batches, the queue's async shell and drain |
//! | `http` | no | `runtime::health`: `/health`, `/ready`, `POST /shutdown` and Prometheus `/metrics` (axum) |
//! | `postgres` | yes | `fleet`: the shared queue and key store on PostgreSQL, and `examples/fleet_agent.rs` |
//! | `testing` | no | the fault-injecting `SimStorage`, fuzz entry points, the queue's `ManualClock` |
//!
//! The library has no CLI dependency: the operator tool `wal-inspect` (clap,
//! indicatif) is its own package in the repository's workspace. The
//! defaults run the demo agents with no feature flags (`postgres` is a
//! default for `examples/fleet_agent.rs`); a library that does not use the
//! fleet depends on `agentwal = { version = "0.1", default-features = false,
//! features = ["tokio"] }` and compiles no tokio-postgres. On docs.rs every
//! feature is on and each gated item carries a badge naming its feature.
//!
//! # Observability
//!
//! The library records its own metrics through the [`metrics`] facade
//! (fsync latency, records per group commit, bytes appended, compactions,
//! units by state, in-doubt effects, queue depth, dead letters, lease
//! expiries) and spans and events through [`tracing`] (a span per unit and
//! per step carrying the idempotency key; events for recovery decisions and
//! shutdown). Both cost one atomic load per call site when nothing listens.
//! With `http`, `GET /metrics` serves them in the Prometheus format. See
//! [`observe`] for every name.
//!
//! # Layers
//!
//! Dependencies point downward only: `log` ← `journal`, `log` ← `queue` ←
//! `runtime`; `inspect` reads `log`, `journal` and `queue`, never `runtime`:
//!
//! * [`log`] — segmented, checksummed, group-committed storage engine with
//!   crash recovery and a storage seam.
//! * [`engine`] — the replay engine: one replicated state machine over the
//!   log (check before append, infallible apply, versioned snapshots,
//!   amortized compaction), used by the journal and the queue.
//! * [`journal`] — units of side effects with idempotency keys and replay.
//! * [`queue`] — the durable work queue: codec, state machine, synchronous
//!   API (no tokio).
//! * [`runtime`] (feature `tokio`) — graceful shutdown, checkpointed batches,
//!   the queue's async shell and drain, health endpoints.
//! * [`inspect`] — the library behind the `wal-inspect` operator tool.
//! * `fleet` (feature `postgres`) — many workers, one shared work queue and
//!   idempotency-key store in PostgreSQL; each worker keeps its local journal.
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
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod engine;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod fleet;
pub mod inspect;
pub mod journal;
pub mod log;
pub mod observe;
pub mod queue;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod runtime;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

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
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub use runtime::{run_batch, run_batch_units, Shutdown};

/// The README's examples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

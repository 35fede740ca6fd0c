//! The runtime layer (tokio): graceful shutdown, checkpointed batches, a
//! durable work queue and Kubernetes health endpoints.
//!
//! **Promises.** A SIGTERM (or SIGINT, or `POST /shutdown`) stops intake,
//! lets the unit in progress finish within the `SHUTDOWN_TIMEOUT` budget and
//! leaves everything else durable and resumable; a second signal exits at once
//! and the journal still opens and replays. See `docs/operations.md` for the
//! shutdown timeline and the Kubernetes deployment.
//!
//! | module | what |
//! | --- | --- |
//! | [`shutdown`] | SIGTERM/SIGINT, the deadline budget, unit guards, second-signal exit |
//! | [`batch`] | checkpointed batches that resume at exactly the next item |
//! | `queue_async` | async (tokio) wrappers of the [`crate::queue::WorkQueue`] operations |
//! | `metrics` (feature `http`) | the library's own metrics ([`crate::observe`]) in the Prometheus text format |
//! | `health` (feature `http`) | `/health`, `/ready`, `POST /shutdown`, `/metrics` |
//!
//! Dependencies point downward only: runtime → queue, journal → log. The
//! durable work queue itself (codec, state, synchronous API) is the
//! [`crate::queue`] layer, which builds without tokio.

pub mod batch;
mod error;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod health;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod metrics;
mod queue_async;
pub mod shutdown;

pub use crate::queue::{QueueOptions, WorkQueue};
pub use batch::{run_batch, run_batch_units, BatchCursor, BatchReport};
pub use error::Error;
#[cfg(feature = "http")]
pub use metrics::Metrics;
pub use shutdown::{Shutdown, ShutdownReason, UnitGuard, UnitsWait};

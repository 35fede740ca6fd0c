//! The runtime layer (tokio): graceful shutdown, checkpointed batches, a
//! durable work queue and Kubernetes health endpoints.
//!
//! **Promises.** A SIGTERM (or SIGINT, or `POST /shutdown`) stops intake,
//! lets the unit in progress finish within the `SHUTDOWN_TIMEOUT` budget and
//! leaves everything else durable and resumable; a second signal exits at once
//! and the journal still opens and replays. See `docs/operations.md` for the
//! shutdown timeline and the Kubernetes deployment.
//!
//! Dependencies point downward only: runtime → journal → log.

mod error;
#[cfg(feature = "http")]
pub mod health;
pub mod metrics;
pub mod queue;
pub mod shutdown;

pub use error::Error;
pub use metrics::Metrics;
pub use shutdown::{Shutdown, ShutdownReason, UnitGuard, UnitsWait};

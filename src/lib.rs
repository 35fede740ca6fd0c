//! # agentwal
//!
//! An embedded write-ahead log that lets AI agents and long-running workers be
//! killed at any moment without losing work or sending a message twice.
//!
//! Layers (dependencies point downward only):
//!
//! * [`log`] — segmented, checksummed, group-committed storage engine with
//!   crash recovery and a fault-injecting storage seam.
//!
//! See `docs/` for the on-disk format, the recovery algorithm and operations.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod log;

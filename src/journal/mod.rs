//! The journal layer: units, side effects, idempotency keys, replay.
//!
//! Built on the public API of [`crate::log`] only; the log knows nothing of units.

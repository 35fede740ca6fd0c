//! The fleet: many workers draining one shared work queue, with one shared
//! idempotency-key store, both in PostgreSQL (feature `postgres`).
//!
//! Layers (each a folder with its own promise):
//!
//! * [`schema`] — embedded, versioned migrations; the SQL functions through
//!   which every state change of an item goes (one round trip each, the
//!   item's row locked first, so fencing cannot be bypassed).
//! * `retry` — the connection pool and the retry policy: connection loss,
//!   server restarts and terminated backends are retried with backoff on a
//!   fresh connection; every retried call is idempotent on the server, so a
//!   lost reply never causes a duplicate.
//! * [`queue`] — enqueue (idempotent by item key), claim with leases
//!   (`FOR UPDATE SKIP LOCKED`, visibility timeout, renewal), ack / nack with
//!   attempts and backoff, dead letters and redrive, fencing tokens.
//! * [`keys`] — the idempotency-key store: the fleet-wide authority on whether
//!   an effect key is settled or in flight. A `never_repeat` or `reconcile`
//!   effect's intent reaches PostgreSQL before the effect runs, so a worker
//!   that comes back with an empty disk, or another worker that takes the item
//!   over, sees it in doubt and never runs it again.
//!
//! The local journal ([`crate::journal`]) stays each worker's fast path:
//! effects that may be repeated with the same key (model calls, messages to a
//! de-duplicating receiver) are journaled locally only; the fleet store sees
//! only the effects that must never run twice. See `docs/fleet.md`.
//!
//! All lease times are PostgreSQL's `now()`: workers' clocks never decide
//! whether a lease expired, so clock skew between workers cannot make two of
//! them believe they hold the same item (and fencing tokens would refuse the
//! stale one anyway).

mod error;
pub mod keys;
pub mod queue;
mod retry;
pub mod schema;

use std::time::Duration;

pub use error::{Error, Result, MAX_KEY_BYTES};
pub use keys::{Intent, KeyRecord, KeyState, OnDoubt};
pub use queue::{Lease, NackOutcome, NewItem, Status};

/// Options of [`Fleet::connect`].
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Visibility timeout: a claimed item becomes claimable by others this
    /// long after its last renewal (PostgreSQL's clock). Default 30 s.
    pub lease: Duration,
    /// Attempts before an item goes to the dead letters (a lease that expires
    /// counts as an attempt). Default 25.
    pub max_attempts: u32,
    /// First retry delay after a nack; doubled per attempt. Default 1 s.
    pub backoff_base: Duration,
    /// Largest retry delay after a nack. Default 5 min.
    pub backoff_max: Duration,
    /// How long a call keeps retrying a lost connection before it fails with
    /// [`Error::Unavailable`]. Default 10 min.
    pub retry_budget: Duration,
    /// Timeout of one attempt (connecting, or one statement). Default 10 s.
    pub statement_timeout: Duration,
    /// Connections in the pool. Default 2 (the work and the lease renewal).
    pub pool_size: usize,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            lease: Duration::from_secs(30),
            max_attempts: 25,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            retry_budget: Duration::from_secs(600),
            statement_timeout: Duration::from_secs(10),
            pool_size: 2,
        }
    }
}

impl FleetOptions {
    fn validate(&self) -> Result<()> {
        if self.lease < Duration::from_millis(100) {
            return Err(Error::InvalidOptions(format!(
                "lease {:?} is below 100 ms",
                self.lease
            )));
        }
        if self.max_attempts == 0 || self.max_attempts > i32::MAX as u32 {
            return Err(Error::InvalidOptions(format!(
                "max_attempts {} must be between 1 and {}",
                self.max_attempts,
                i32::MAX
            )));
        }
        if self.pool_size == 0 {
            return Err(Error::InvalidOptions("pool_size must be at least 1".into()));
        }
        if self.statement_timeout.is_zero() {
            return Err(Error::InvalidOptions(
                "statement_timeout must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// A handle on the fleet's shared state in one PostgreSQL database. Cheap to
/// share behind an `Arc`; every method is safe to call concurrently.
pub struct Fleet {
    conn: retry::Conn,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("options", self.conn.opts())
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Connects (retrying while the server is unreachable, within the retry
    /// budget) and applies the missing schema migrations.
    pub async fn connect(url: &str, opts: FleetOptions) -> Result<Fleet> {
        opts.validate()?;
        let conn = retry::Conn::new(url, opts)?;
        schema::migrate(&conn).await?;
        Ok(Fleet { conn })
    }

    /// The options in force.
    pub fn options(&self) -> &FleetOptions {
        self.conn.opts()
    }

    /// Statements sent to PostgreSQL so far by this handle, retries included
    /// (statement preparation, once per connection, is not counted).
    pub fn round_trips(&self) -> u64 {
        self.conn.round_trips()
    }
}

//! The fleet's typed errors. Every variant names what was being done and, when
//! it applies, which item, key or fence.

use std::time::Duration;

/// An error of the fleet backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The PostgreSQL connection string does not parse.
    #[error("fleet: invalid PostgreSQL URL: {0}")]
    BadUrl(String),
    /// An option is out of range.
    #[error("fleet: invalid options: {0}")]
    InvalidOptions(String),
    /// An item key or effect key is empty or longer than the fleet accepts.
    #[error("fleet: {what} {key:?} is empty or longer than {max} bytes")]
    BadKey {
        /// What the key names ("item key", "effect key").
        what: &'static str,
        /// The key (cut to 80 characters).
        key: String,
        /// The largest accepted length.
        max: usize,
    },
    /// PostgreSQL stayed unreachable (or kept dropping the connection) for the
    /// whole retry budget. Nothing was assumed to have happened: the caller
    /// may retry the same call later.
    #[error(
        "fleet: {what}: PostgreSQL unreachable after {attempts} attempts over {elapsed:?}: {last}"
    )]
    Unavailable {
        /// The operation.
        what: &'static str,
        /// Attempts made.
        attempts: u32,
        /// Time spent retrying.
        elapsed: Duration,
        /// The last connection error.
        last: String,
    },
    /// PostgreSQL refused a statement for a reason retrying cannot fix.
    #[error("fleet: {what}: PostgreSQL error {code}: {message}")]
    Database {
        /// The operation.
        what: &'static str,
        /// The SQLSTATE code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The lease was taken over: another worker holds the item now (or it was
    /// finished, released or marked in doubt). The caller must stop working on
    /// it; nothing it does can commit over its successor.
    #[error("fleet: item {item}: lease with fence {fence} is no longer current (taken over, expired and reclaimed, or finished)")]
    Fenced {
        /// The item key.
        item: String,
        /// The stale fencing token.
        fence: i64,
    },
    /// No item with that key exists.
    #[error("fleet: item {item}: no such item")]
    NoSuchItem {
        /// The item key.
        item: String,
    },
    /// The database's schema is newer than this build knows.
    #[error("fleet: the database has fleet schema version {found}, this build knows up to {known}; upgrade the workers")]
    SchemaTooNew {
        /// The version found.
        found: i32,
        /// The newest version this build has.
        known: i32,
    },
    /// PostgreSQL answered something the fleet did not expect.
    #[error("fleet: {what}: unexpected reply from PostgreSQL: {detail}")]
    Protocol {
        /// The operation.
        what: &'static str,
        /// What was unexpected.
        detail: String,
    },
}

/// Result alias of the fleet.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The largest item or effect key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

pub(crate) fn check_key(what: &'static str, key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(Error::BadKey {
            what,
            key: key.chars().take(80).collect(),
            max: MAX_KEY_BYTES,
        });
    }
    Ok(())
}

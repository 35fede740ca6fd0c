//! The journal layer: units, side effects, idempotency keys, replay.
//!
//! Built on the public API of [`crate::log`] only ([`crate::log::Log`],
//! [`crate::log::LogReader`]); it never decodes the log's format, and it
//! imports nothing from `queue`, `runtime` or `inspect`. The log knows nothing
//! of units.
//!
//! # What it promises
//!
//! * A **unit** (one task) begins with an intent record, contains effects, and
//!   ends with a commit or an abort. After any crash, replay classifies every
//!   unit as committed, aborted or incomplete, and every effect of an
//!   incomplete unit as completed, failed, in doubt or not started.
//! * An **effect's intent is durable before its code runs**; its outcome is
//!   appended after. Resuming a unit ([`Journal::begin`] with the same id)
//!   hands back recorded results of completed effects *without running
//!   them*; an in-doubt effect follows the policy it declared
//!   ([`Effect::retry_same_key`], [`Effect::reconcile`], [`Effect::never_repeat`]).
//!   There is no default policy.
//! * A result is only handed to the effect that recorded it: a different
//!   name, key, order, policy or compensable flag on resume is
//!   [`Error::EffectMismatch`] (the recorded declaration governs), and a
//!   resumed unit that replayed fewer steps than recorded cannot commit
//!   ([`Error::UnreplayedSteps`]).
//! * The **idempotency key index** remembers every settled key with the
//!   effect name it belongs to (for the configured [`Retention`]): an effect
//!   whose key already completed — in any unit — never runs again; its
//!   recorded result is returned to an effect of the same name, and an
//!   effect of another name gets [`Error::KeyConflict`]. Default keys are
//!   injective ([`default_key`]). A key a live unit of this process is
//!   executing is [`Error::KeyBusy`] for the others (retryable).
//! * A recorded result always replays: one whose JSON does not read back as
//!   the same value is recorded as a failure ([`Error::ResultNotReplayable`]).
//! * **Rollback** runs compensations of completed effects in reverse order,
//!   each recorded, then the abort record; an interrupted rollback resumes
//!   where it stopped (each compensation is recorded done exactly once).
//!   Once a compensation is recorded the unit can only finish its rollback
//!   ([`Error::RollingBack`] for `run` and `commit`).
//! * **Compaction** writes the live state (incomplete units, key index,
//!   retained finished ids, cursors, counters) as a snapshot and drops old
//!   segments; recovery is snapshot + log after it. By default it runs when
//!   the log since the last snapshot reaches twice the snapshot's size (at
//!   least 4 MiB), so its cost is O(1) amortized per record and open replays
//!   a bounded tail ([`crate::engine::CompactionPolicy`]).
//! * **Memory is bounded by default**: the [`Retention`] policy (24 h and
//!   1,024 keys / finished ids) bounds the key index and the finished ids;
//!   memory is O(live units + retained keys), whatever the history. A
//!   finished unit whose id retention dropped is refused by
//!   [`Journal::begin`] with [`Error::UnitForgotten`] (for as long again);
//!   long runs track their position with a durable cursor
//!   ([`Journal::set_cursor`]) instead of remembering every finished id.
//! * Every record is **checked against the state before it is appended**
//!   ([`crate::engine::StateMachine::check`]): a refused operation writes
//!   nothing, and a record in the log always replays.
//!
//! # Cost
//!
//! Only the syncs the in-doubt policy needs are paid on a unit's critical
//! path (the rule per policy: docs/journal.md, "Syncs per policy"):
//!
//! * the unit-begin record is buffered (nothing happened yet);
//! * a `never_repeat` or `reconcile` effect's intent is synced before the
//!   effect runs (a crash during the effect must show it in doubt);
//! * a `retry_same_key` effect's intent is buffered: its key is
//!   deterministic, so a re-run after a lost intent uses the same key, as an
//!   in-doubt retry would;
//! * every outcome is buffered; the commit is synced, covering everything
//!   before it.
//!
//! So a unit of retry-same-key effects costs **one** `fdatasync` (the
//! commit's), whatever the number of effects; each `never_repeat` or
//! `reconcile` effect adds one. Concurrent units share syncs through the
//! log's group commit.
//!
//! # Example
//!
//! ```
//! use agentwal::journal::{Effect, Journal, JournalOptions};
//! let dir = tempfile::tempdir().unwrap();
//! let journal = Journal::open(dir.path(), JournalOptions::small()).unwrap();
//!
//! let mut unit = journal.begin("invoice-7", "invoice", &serde_json::json!({"amount": 12})).unwrap();
//! let receipt: String = unit
//!     .run(Effect::retry_same_key("send-mail"), |ctx| {
//!         // Pass ctx.key() to the receiver so that it can de-duplicate.
//!         Ok::<_, std::io::Error>(format!("sent with key {}", ctx.key()))
//!     })
//!     .unwrap();
//! unit.commit().unwrap();
//! assert_eq!(receipt, "sent with key invoice-7/send-mail/0");
//!
//! // Re-opening replays the journal: the unit is committed, the key settled.
//! drop(journal);
//! let journal = Journal::open(dir.path(), JournalOptions::small()).unwrap();
//! assert!(journal.begin("invoice-7", "invoice", &()).is_err()); // already committed
//! ```

mod children;
mod error;
mod operator;
pub(crate) mod record;
mod retry;
mod snapshot;
mod state;
mod unit;
pub mod view;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

#[cfg(feature = "tokio")]
pub use children::ChildFuture;
pub use children::{ChildView, CHILD_RESULT_STEP};
pub use error::{Error, Result};
pub use operator::{
    Approval, OperatorCommand, OperatorReply, OperatorRequest, Resolution, INBOX_POLL,
};
pub use record::{JournalRecord, OperatorAction, Outcome, OutcomeVia, PolicyKind};
pub use retry::{ErrorClass, OnExhausted, RetryPolicy, StepError};
pub use state::{EffectStatus, Retention};
pub use unit::{
    default_key, Attempt, Compensation, Effect, EffectCtx, Probe, RollbackReport, Unit,
};
pub use view::{
    ApprovalView, EffectState, EffectView, JournalView, KeyStatus, KeyView, OperatorView,
    UnitState, UnitView,
};

pub use crate::engine::CompactionPolicy;
use crate::engine::{self, Mode, StateMachine};
use crate::log::{Durability, FsStorage, Log, LogOptions, Storage};
use state::State;

/// When the journal compacts itself (in addition to [`Journal::compact`]).
/// Checked after each commit or abort; `None` disables a trigger; any
/// trigger that is reached compacts.
///
/// Only `tail_ratio` keeps compaction O(1) amortized per record whatever
/// the retained state: a fixed `every_records` / `every_bytes` interval
/// rewrites the whole retained state every interval, which is quadratic
/// when retention is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AutoCompact {
    /// Compact after this many records were appended since the last compaction.
    pub every_records: Option<u64>,
    /// Compact after this many bytes were appended since the last compaction.
    pub every_bytes: Option<u64>,
    /// Compact when the bytes appended since the last snapshot reach a
    /// multiple of that snapshot's size (the default trigger).
    pub tail_ratio: Option<CompactionPolicy>,
}

/// Options of [`Journal::open`].
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// Options of the log below.
    pub log: LogOptions,
    /// Largest encoded caller payload (unit payload, checkpoint state, effect
    /// result, as JSON) accepted; larger ones are refused with
    /// [`Error::PayloadTooLarge`] before anything is written — except an
    /// effect's result, which exists only because the effect ran: it is
    /// recorded as a failed outcome instead ([`Error::ResultTooLarge`]).
    /// Default 16 MiB ([`DEFAULT_MAX_PAYLOAD_BYTES`], sized for real model
    /// outputs). Must be below `log.max_record_bytes` (records add a little
    /// framing): the default options raise the log's limit to
    /// [`DEFAULT_MAX_RECORD_BYTES`].
    pub max_payload_bytes: u64,
    /// How long settled keys and finished unit ids survive compaction.
    /// Default: [`Retention::default`] (24 h, at most 1,024 of each).
    pub retention: Retention,
    /// Automatic compaction. Default: when the log since the last snapshot
    /// is twice the snapshot's size and at least 4 MiB
    /// ([`CompactionPolicy::default`]).
    pub auto_compact: AutoCompact,
    /// Where the running owner reads operator commands (`wal-inspect
    /// resolve|abort|approve` while the agent runs). Default
    /// [`OperatorInbox::Auto`]: the journal directory's inbox for
    /// [`Journal::open`], none for [`Journal::open_with`].
    pub operator_inbox: OperatorInbox,
}

/// Where a journal's owner reads operator commands while it runs
/// ([`JournalOptions::operator_inbox`]). Commands in the inbox are applied
/// at open and every [`INBOX_POLL`] while the journal is open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OperatorInbox {
    /// [`Journal::open`]: `<dir>/inbox` (where `wal-inspect` writes).
    /// [`Journal::open_with`]: none, because a custom [`Storage`] need not
    /// be the real file system (the power-loss simulator is not).
    #[default]
    Auto,
    /// No inbox: operator commands reach the journal only while its owner
    /// is stopped (`wal-inspect` then opens the journal itself).
    Off,
    /// The inbox of this directory on the real file system
    /// (`<path>/inbox`), for [`Journal::open_with`] over a storage that
    /// keeps the journal in a real directory: give that directory, the one
    /// operators pass to `wal-inspect`.
    At(std::path::PathBuf),
}

/// Default [`JournalOptions::max_payload_bytes`]: 16 MiB, so that a long
/// model answer (a few MB of JSON) is recorded rather than refused after the
/// paid call already happened.
pub const DEFAULT_MAX_PAYLOAD_BYTES: u64 = 16 << 20;

/// The log record limit of [`JournalOptions::default`]: the payload limit
/// plus 1 MiB for the record's own fields (unit id, key, error text).
pub const DEFAULT_MAX_RECORD_BYTES: u64 = DEFAULT_MAX_PAYLOAD_BYTES + (1 << 20);

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            log: LogOptions {
                max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
                ..LogOptions::default()
            },
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            retention: Retention::default(),
            auto_compact: AutoCompact {
                every_records: None,
                every_bytes: None,
                tail_ratio: Some(CompactionPolicy::default()),
            },
            operator_inbox: OperatorInbox::Auto,
        }
    }
}

impl JournalOptions {
    /// Options for small journals (tests, examples): 1 MiB segments, 64 KiB
    /// payload limit, compaction every 4096 records.
    pub fn small() -> Self {
        JournalOptions {
            log: LogOptions {
                segment_size: 1 << 20,
                max_record_bytes: 256 << 10,
                ..LogOptions::default()
            },
            max_payload_bytes: 64 << 10,
            retention: Retention::default(),
            auto_compact: AutoCompact {
                every_records: Some(4096),
                every_bytes: None,
                tail_ratio: None,
            },
            operator_inbox: OperatorInbox::Auto,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.max_payload_bytes == 0 || self.max_payload_bytes >= self.log.max_record_bytes {
            return Err(Error::InvalidOptions(format!(
                "max_payload_bytes ({}) must be between 1 and log.max_record_bytes ({})",
                self.max_payload_bytes, self.log.max_record_bytes
            )));
        }
        if self.auto_compact.every_records == Some(0) || self.auto_compact.every_bytes == Some(0) {
            return Err(Error::InvalidOptions(
                "auto_compact thresholds must be positive (use None to disable)".into(),
            ));
        }
        if self.auto_compact.tail_ratio.is_some_and(|p| p.ratio == 0) {
            return Err(Error::InvalidOptions(
                "auto_compact.tail_ratio.ratio must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// What replay found when the journal was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// LSN of the snapshot replay started from (0: none).
    pub snapshot_lsn: u64,
    /// Log records replayed after the snapshot.
    pub records_replayed: u64,
    /// Units committed so far (compacted ones included).
    pub committed: u64,
    /// Units aborted so far (compacted ones included).
    pub aborted: u64,
    /// Incomplete units with their effects, by begin LSN.
    pub incomplete: Vec<UnitView>,
    /// Entries in the idempotency key index.
    pub keys: usize,
    /// Bytes of the snapshot replay started from (0: none).
    pub snapshot_bytes: u64,
}

/// Counters of an open journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Incomplete units in memory.
    pub live_units: usize,
    /// Entries in the key index.
    pub keys: usize,
    /// Finished unit ids remembered.
    pub finished_ids: usize,
    /// Units committed (all time, compacted included).
    pub committed: u64,
    /// Units aborted (all time, compacted included).
    pub aborted: u64,
    /// Records appended since the last compaction.
    pub records_since_compaction: u64,
    /// Bytes appended since the last compaction.
    pub bytes_since_compaction: u64,
    /// Compactions done by this handle.
    pub compactions: u64,
    /// Bytes held by live segment files, and by the spare segment prepared
    /// for the next rotation when one is ready (`Log::disk_bytes`).
    pub disk_bytes: u64,
    /// The last automatic compaction's failure, if it failed.
    pub last_auto_compact_error: Option<String>,
    /// Size of the newest snapshot payload (0: none yet).
    pub snapshot_bytes: u64,
    /// Finished unit ids dropped by retention (all time).
    pub forgotten_units: u64,
    /// Settled keys dropped by retention (all time).
    pub forgotten_keys: u64,
}

/// What [`Journal::compact`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// LSN the snapshot covers.
    pub snapshot_lsn: u64,
    /// Size of the snapshot payload.
    pub snapshot_bytes: u64,
    /// Segment files removed.
    pub segments_removed: usize,
    /// Keys and finished unit ids dropped by the retention policy.
    pub retired: usize,
}

#[derive(Debug, Default)]
struct Counters {
    records: u64,
    bytes: u64,
    compactions: u64,
    auto_error: Option<String>,
    /// Payload size of the newest snapshot.
    snapshot_bytes: u64,
}

#[derive(Debug)]
struct Inner {
    log: Log,
    opts: JournalOptions,
    state: Mutex<State>,
    active: Mutex<HashSet<String>>,
    /// Idempotency keys being executed (or probed) right now by a live unit
    /// of this process, with that unit's id; see [`Error::KeyBusy`].
    running: Mutex<HashMap<String, String>>,
    counters: Mutex<Counters>,
    compacting: Mutex<()>,
    replay: ReplayReport,
    /// Result type checks by effect name (registered by `Unit::run`), for
    /// operator resolutions.
    types: Mutex<HashMap<String, TypeCheck>>,
    /// The operator inbox ([`JournalOptions::operator_inbox`]).
    inbox: Option<crate::log::inbox::Inbox>,
    /// The code version and patches recorded with every new unit.
    code: Mutex<Option<(String, Vec<String>)>>,
}

/// What [`Journal::begin_or_finished`] found.
#[derive(Debug)]
pub enum Begun {
    /// A new or resumed unit, open.
    Open(Unit),
    /// The unit already ended (its id is still retained).
    Finished(FinishedUnit),
}

/// A finished unit remembered by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinishedUnit {
    /// Committed or aborted.
    pub state: UnitState,
    /// LSN of its commit or abort record.
    pub end_lsn: u64,
    /// When it ended (ms since the epoch).
    pub at_ms: u64,
}

/// Checks that a JSON value is a valid result of one effect's Rust type.
type TypeCheck = fn(&serde_json::Value) -> std::result::Result<(), String>;

/// An open journal, exclusively owning its directory. Cheap to clone; safe
/// to share between threads (units on different threads share `fdatasync`s).
///
/// # Example
///
/// A unit that is cut short (here: dropped before its commit, as a kill
/// would leave it) resumes after a reopen: the recorded effect is not run
/// again, its result comes back from the journal.
///
/// ```
/// use agentwal::{Effect, Journal, JournalOptions, UnitState};
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path();
/// let journal = Journal::open(dir, JournalOptions::default())?;
/// let mut unit = journal.begin("invoice-9", "invoice", &serde_json::json!({"amount": 120}))?;
/// let pdf: String = unit.run(Effect::retry_same_key("render"), |_ctx| {
///     Ok::<_, std::io::Error>("invoice-9.pdf".to_string())
/// })?;
/// drop(unit); // no commit: the process "died" here
/// journal.close()?;
///
/// let journal = Journal::open(dir, JournalOptions::default())?;
/// assert_eq!(journal.unit_state("invoice-9"), Some(UnitState::Incomplete));
/// let mut unit = journal.begin("invoice-9", "invoice", &serde_json::json!({"amount": 120}))?;
/// assert!(unit.is_resumed());
/// let mut ran = false;
/// let again: String = unit.run(Effect::retry_same_key("render"), |_ctx| {
///     ran = true;
///     Ok::<_, std::io::Error>(String::new())
/// })?;
/// assert!(!ran, "a recorded effect is not run again");
/// assert_eq!(again, pdf);
/// unit.commit()?;
/// assert_eq!(journal.unit_state("invoice-9"), Some(UnitState::Committed));
/// journal.close()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir` and replays it.
    ///
    /// Operator commands waiting in the directory's inbox (`wal-inspect
    /// resolve|abort|approve` while the owner was running or starting) are
    /// applied before it returns, and then every [`INBOX_POLL`] by a
    /// background thread for as long as the journal is open (unless
    /// [`JournalOptions::operator_inbox`] says otherwise).
    pub fn open(dir: impl AsRef<Path>, opts: JournalOptions) -> Result<Journal> {
        let inbox = match &opts.operator_inbox {
            OperatorInbox::Auto => Some(dir.as_ref().to_path_buf()),
            OperatorInbox::Off => None,
            OperatorInbox::At(p) => Some(p.clone()),
        };
        Self::open_inner(Arc::new(FsStorage), dir, opts, inbox)
    }

    /// Opens the journal through any [`Storage`] (for example the
    /// power-loss simulator) and replays it.
    ///
    /// By default no operator inbox is read: a custom storage need not be
    /// the real file system. For a storage that keeps the journal in a real
    /// directory, set [`JournalOptions::operator_inbox`] to
    /// [`OperatorInbox::At`] that directory: `wal-inspect resolve|abort|approve`
    /// then reach the running owner as with [`Journal::open`].
    pub fn open_with(
        storage: Arc<dyn Storage>,
        dir: impl AsRef<Path>,
        opts: JournalOptions,
    ) -> Result<Journal> {
        let inbox = match &opts.operator_inbox {
            OperatorInbox::Auto | OperatorInbox::Off => None,
            OperatorInbox::At(p) => Some(p.clone()),
        };
        Self::open_inner(storage, dir, opts, inbox)
    }

    /// Opens and replays; with an inbox directory, applies the commands
    /// waiting there and starts the poller.
    fn open_inner(
        storage: Arc<dyn Storage>,
        dir: impl AsRef<Path>,
        opts: JournalOptions,
        inbox_dir: Option<std::path::PathBuf>,
    ) -> Result<Journal> {
        let j = Self::open_replayed(
            storage,
            dir,
            opts,
            inbox_dir.map(crate::log::inbox::Inbox::new),
        )?;
        if j.inner.inbox.is_some() {
            j.apply_inbox()?;
            operator::spawn_inbox_poller(&j);
        }
        Ok(j)
    }

    fn open_replayed(
        storage: Arc<dyn Storage>,
        dir: impl AsRef<Path>,
        opts: JournalOptions,
        inbox: Option<crate::log::inbox::Inbox>,
    ) -> Result<Journal> {
        opts.validate()?;
        let log = Log::open_with(storage, dir, opts.log.clone())?;
        let replayed = engine::open_log::<State>(&log, Mode::Owner)?;
        let mut state = replayed.state;
        // The tail may hold more ids and keys than the retention allows.
        state.apply_retention(&opts.retention, record::now_ms());
        let (snapshot_lsn, records_replayed) = (replayed.snapshot_lsn, replayed.records);
        let mut incomplete: Vec<UnitView> = state.live_units().map(view::unit_view).collect();
        incomplete.sort_by_key(|u| u.begin_lsn);
        let replay = ReplayReport {
            snapshot_lsn,
            records_replayed,
            committed: state.committed,
            aborted: state.aborted,
            incomplete,
            keys: state.keys.len(),
            snapshot_bytes: replayed.snapshot_bytes,
        };
        crate::observe::replayed(&replay);
        Ok(Journal {
            inner: Arc::new(Inner {
                log,
                opts,
                state: Mutex::new(state),
                active: Mutex::new(HashSet::new()),
                running: Mutex::new(HashMap::new()),
                counters: Mutex::new(Counters {
                    records: records_replayed,
                    // Payloads plus record headers, as appends count them.
                    bytes: replayed.record_bytes
                        + records_replayed * crate::log::record::RECORD_HEADER as u64,
                    snapshot_bytes: replayed.snapshot_bytes,
                    ..Counters::default()
                }),
                compacting: Mutex::new(()),
                replay,
                types: Mutex::new(HashMap::new()),
                inbox,
                code: Mutex::new(None),
            }),
        })
    }

    /// The log below (for sync counts, disk usage, inspection).
    pub fn log(&self) -> &Log {
        &self.inner.log
    }

    /// The options the journal was opened with.
    pub fn options(&self) -> &JournalOptions {
        &self.inner.opts
    }

    /// What replay found at open.
    pub fn replay_report(&self) -> &ReplayReport {
        &self.inner.replay
    }

    /// Begins unit `id`, or resumes it if it is incomplete.
    ///
    /// A new unit appends its begin record (buffered: it becomes durable with
    /// the first effect intent or the commit). A resumed unit replays its
    /// recorded effects as the code asks for them again; `kind` and `payload`
    /// are then ignored (read the recorded ones with [`Unit::payload`]).
    /// A unit that already ended fails with [`Error::UnitFinished`] (as long
    /// as its id is retained, see [`Retention`]).
    ///
    /// A unit an operator asked to abort ([`Journal::request_abort`]) is
    /// refused with [`Error::AbortRequested`]: roll it back instead.
    pub fn begin<P: Serialize + ?Sized>(&self, id: &str, kind: &str, payload: &P) -> Result<Unit> {
        self.begin_inner(id, kind, payload, false)
    }

    fn begin_inner<P: Serialize + ?Sized>(
        &self,
        id: &str,
        kind: &str,
        payload: &P,
        for_rollback: bool,
    ) -> Result<Unit> {
        let value = unit_payload(id, payload)?;
        self.check_size(id, "unit payload", &value)?;
        if !self.inner.active.lock().insert(id.to_string()) {
            return Err(Error::UnitBusy {
                unit: id.to_string(),
            });
        }
        // From here on the guard releases the id on every early return.
        let guard = unit::ActiveGuard::new(self.clone(), id.to_string());
        let (existing, abort, forgotten) = {
            let st = self.inner.state.lock();
            let abort = st
                .units
                .get(id)
                .and_then(|u| u.abort_requested.as_ref())
                .map(|n| (n.by.clone(), n.reason.clone()));
            (st.unit_state(id), abort, st.is_forgotten(id))
        };
        match existing {
            None if forgotten => Err(Error::UnitForgotten {
                unit: id.to_string(),
                retention: describe_retention(&self.inner.opts.retention),
            }),
            Some(UnitState::Incomplete) => match abort {
                Some((by, reason)) if !for_rollback => Err(Error::AbortRequested {
                    unit: id.to_string(),
                    by,
                    reason,
                }),
                _ => Ok(Unit::new(guard, true)),
            },
            Some(s @ (UnitState::Committed | UnitState::Aborted)) => Err(Error::UnitFinished {
                unit: id.to_string(),
                state: s.as_str(),
            }),
            None => {
                let rec = JournalRecord::UnitBegin {
                    unit: id.to_string(),
                    kind: kind.to_string(),
                    payload: value,
                    at_ms: record::now_ms(),
                };
                // Buffered: a begin with nothing after it needs no durability
                // (nothing happened yet); the first intent's sync covers it.
                let code = self.inner.code.lock().clone();
                match code {
                    Some((version, patches)) => {
                        let code = JournalRecord::UnitCode {
                            unit: id.to_string(),
                            version,
                            patches,
                        };
                        self.append(id, &[rec, code], Durability::Buffered)?
                    }
                    None => self.append(id, &[rec], Durability::Buffered)?,
                };
                Ok(Unit::new(guard, false))
            }
        }
    }

    /// True when `id` is a finished unit whose id the retention policy
    /// dropped ([`Journal::begin`] refuses it with [`Error::UnitForgotten`]).
    pub fn is_forgotten(&self, id: &str) -> bool {
        self.inner.state.lock().is_forgotten(id)
    }

    /// Records the value of cursor `name` (a durable position, for example
    /// the next item of a batch): one small record, kept across compaction
    /// (the newest value wins). `Buffered` makes it durable with the next
    /// sync; `Durable` waits for it.
    pub fn set_cursor<T: Serialize + ?Sized>(
        &self,
        name: &str,
        value: &T,
        durability: Durability,
    ) -> Result<u64> {
        let rec = self.cursor_record(name, value)?;
        let lsn = self.append(name, &[rec], durability)?;
        self.maybe_auto_compact();
        Ok(lsn)
    }

    /// The record of [`Journal::set_cursor`] (checked: encodable, within
    /// the payload limit).
    fn cursor_record<T: Serialize + ?Sized>(&self, name: &str, value: &T) -> Result<JournalRecord> {
        let value = serde_json::to_value(value).map_err(|e| Error::Encode {
            unit: name.to_string(),
            what: "cursor".into(),
            reason: e.to_string(),
        })?;
        self.check_size(name, "cursor", &value)?;
        Ok(JournalRecord::Cursor {
            name: name.to_string(),
            value,
            at_ms: record::now_ms(),
        })
    }

    /// The newest value of cursor `name`, if it was ever set.
    pub fn cursor<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let v = self
            .inner
            .state
            .lock()
            .cursors
            .get(name)
            .map(|c| c.1.clone());
        v.map(serde_json::from_value)
            .transpose()
            .map_err(|e| Error::InvalidCall {
                unit: name.to_string(),
                reason: format!("recorded cursor does not fit the requested type: {e}"),
            })
    }

    /// Records `version` (free text: a release, a git describe) and the
    /// `patches` this code knows with every unit begun from now on. A
    /// resumed unit whose steps no longer match then names both versions in
    /// [`Error::EffectMismatch`], and [`Unit::patched`] lets new code keep
    /// the old path for units that older code began (see docs/journal.md,
    /// "Changing code with units in flight").
    pub fn set_code(&self, version: &str, patches: &[&str]) {
        *self.inner.code.lock() = Some((
            version.to_string(),
            patches.iter().map(|p| p.to_string()).collect(),
        ));
    }

    /// The code version set by [`Journal::set_code`].
    pub fn code_version(&self) -> Option<String> {
        self.inner.code.lock().as_ref().map(|c| c.0.clone())
    }

    /// Like [`Journal::begin`], but a unit that already ended is not an
    /// error: its recorded end is returned ([`Begun::Finished`]) while its id
    /// is retained, so a caller re-running finished work needs no special case.
    pub fn begin_or_finished<P: Serialize + ?Sized>(
        &self,
        id: &str,
        kind: &str,
        payload: &P,
    ) -> Result<Begun> {
        if let Some(f) = self.finished_unit(id) {
            return Ok(Begun::Finished(f));
        }
        self.begin(id, kind, payload).map(Begun::Open)
    }

    /// How unit `id` ended, while its id is retained.
    pub fn finished_unit(&self, id: &str) -> Option<FinishedUnit> {
        let st = self.inner.state.lock();
        if let Some(u) = st.units.get(id) {
            return u.end.map(|(state, end_lsn)| FinishedUnit {
                state,
                end_lsn,
                at_ms: st.finished.get(id).map_or(0, |f| f.at_ms),
            });
        }
        st.finished.get(id).map(|f| FinishedUnit {
            state: f.state,
            end_lsn: f.lsn,
            at_ms: f.at_ms,
        })
    }

    /// The state of unit `id`: incomplete, or committed / aborted while its id
    /// is retained; `None` if unknown.
    pub fn unit_state(&self, id: &str) -> Option<UnitState> {
        self.inner.state.lock().unit_state(id)
    }

    /// Classification of effect `seq` of incomplete unit `id` (`None` if the
    /// unit is not incomplete). Steps beyond the recorded ones are
    /// [`EffectStatus::NotStarted`].
    pub fn effect_status(&self, id: &str, seq: u32) -> Option<EffectStatus> {
        let st = self.inner.state.lock();
        st.units
            .get(id)
            .filter(|u| u.end.is_none())
            .map(|u| u.effect_status(seq))
    }

    /// Incomplete units now, by begin LSN.
    pub fn incomplete_units(&self) -> Vec<UnitView> {
        let st = self.inner.state.lock();
        let mut v: Vec<UnitView> = st.live_units().map(view::unit_view).collect();
        v.sort_by_key(|u| u.begin_lsn);
        v
    }

    /// The key index entry of `key`, if retained.
    pub fn key_status(&self, key: &str) -> Option<KeyView> {
        self.inner
            .state
            .lock()
            .keys
            .get(key)
            .map(|k| view::key_view(k))
    }

    /// The recorded outcome of a settled key, if retained.
    pub fn key_outcome(&self, key: &str) -> Option<Outcome> {
        self.inner
            .state
            .lock()
            .keys
            .get(key)
            .and_then(|k| k.outcome())
    }

    /// Counters.
    pub fn stats(&self) -> JournalStats {
        let (live_units, keys, finished_ids, committed, aborted, forgotten_units, forgotten_keys) = {
            let st = self.inner.state.lock();
            (
                st.live_units().count(),
                st.keys.len(),
                st.finished.len(),
                st.committed,
                st.aborted,
                st.forgotten.units,
                st.forgotten.keys,
            )
        };
        let c = self.inner.counters.lock();
        JournalStats {
            live_units,
            keys,
            finished_ids,
            committed,
            aborted,
            records_since_compaction: c.records,
            bytes_since_compaction: c.bytes,
            compactions: c.compactions,
            disk_bytes: self.inner.log.disk_bytes(),
            last_auto_compact_error: c.auto_error.clone(),
            snapshot_bytes: c.snapshot_bytes,
            forgotten_units,
            forgotten_keys,
        }
    }

    /// Records the outcome of an in-doubt effect by hand (an operator checked
    /// whether it happened). The unit can then be resumed or rolled back.
    /// Refused with [`Error::UnitBusy`] while the unit is open in this
    /// process: the open unit may be running that very step, and two
    /// outcomes for one step would make the journal unreadable at replay.
    pub fn resolve_in_doubt(&self, id: &str, seq: u32, outcome: Outcome) -> Result<u64> {
        // The id stays held until the outcome is durable.
        let (lsn, _held) = self.resolve_in_doubt_write(id, seq, outcome)?;
        // Durable: the operator's decision must not be lost.
        self.inner.log.wait_durable(lsn)?;
        Ok(lsn)
    }

    /// [`Journal::resolve_in_doubt`]'s checks and its record, written
    /// buffered: the record's LSN and the guard holding unit `id` (no unit
    /// handle can open it until the caller drops the guard).
    fn resolve_in_doubt_write(
        &self,
        id: &str,
        seq: u32,
        outcome: Outcome,
    ) -> Result<(u64, unit::ActiveGuard)> {
        if !self.inner.active.lock().insert(id.to_string()) {
            return Err(Error::UnitBusy {
                unit: id.to_string(),
            });
        }
        // Released on every early return; no unit handle can open `id` meanwhile.
        let guard = unit::ActiveGuard::new(self.clone(), id.to_string());
        let key = {
            let st = self.inner.state.lock();
            let u = st
                .units
                .get(id)
                .filter(|u| u.end.is_none())
                .ok_or_else(|| Error::UnknownUnit {
                    unit: id.to_string(),
                })?;
            match u.effects.get(seq as usize) {
                Some(e) if e.outcome.is_none() => e.key.clone(),
                _ => {
                    return Err(Error::InvalidCall {
                        unit: id.to_string(),
                        reason: format!("step {seq} is not in doubt"),
                    })
                }
            }
        };
        if let Outcome::Ok { value } = &outcome {
            self.check_size(id, "operator outcome", value)?;
        }
        let rec = JournalRecord::EffectOutcome {
            unit: id.to_string(),
            seq,
            key,
            outcome,
            via: OutcomeVia::Operator,
            at_ms: record::now_ms(),
        };
        let lsn = self.append(id, &[rec], Durability::Buffered)?;
        Ok((lsn, guard))
    }

    /// Rolls back incomplete unit `id`: see [`Unit::rollback`].
    pub fn rollback<E, F>(&self, id: &str, reason: &str, compensate: F) -> Result<RollbackReport>
    where
        E: std::fmt::Display,
        F: FnMut(&Compensation) -> std::result::Result<(), E>,
    {
        self.open_for_rollback(id)?.rollback(reason, compensate)
    }

    /// Opens incomplete unit `id` to roll it back (an abort request does
    /// not refuse it); a finished or unknown unit is refused.
    fn open_for_rollback(&self, id: &str) -> Result<Unit> {
        match self.unit_state(id) {
            Some(UnitState::Incomplete) => {}
            Some(s) => {
                return Err(Error::UnitFinished {
                    unit: id.to_string(),
                    state: s.as_str(),
                })
            }
            None => {
                return Err(Error::UnknownUnit {
                    unit: id.to_string(),
                })
            }
        }
        self.begin_inner(id, "", &(), true)
    }

    /// Writes a snapshot of the live state (incomplete units, key index after
    /// retention, finished ids, counters) and removes segments it covers.
    pub fn compact(&self) -> Result<CompactReport> {
        let _one = self.inner.compacting.lock();
        self.compact_timed()
    }

    /// [`Journal::compact_locked`], timed and counted (metrics, tracing).
    fn compact_timed(&self) -> Result<CompactReport> {
        let started = std::time::Instant::now();
        let r = self.compact_locked();
        if let Ok(rep) = &r {
            crate::observe::compacted(started.elapsed(), rep.snapshot_lsn, rep.snapshot_bytes);
        }
        r
    }

    /// [`Journal::compact`] with the `compacting` lock already held.
    fn compact_locked(&self) -> Result<CompactReport> {
        let (lsn, frozen, retired, covered) = {
            // Holding the state lock keeps appends out, so the frozen view
            // is exactly the log up to `lsn`. Only the copy of the retained
            // state happens here; encoding and writing happen outside.
            let mut st = self.inner.state.lock();
            let retired = st.apply_retention(&self.inner.opts.retention, record::now_ms());
            let lsn = self.inner.log.next_lsn() - 1;
            let covered = {
                let c = self.inner.counters.lock();
                (c.records, c.bytes)
            };
            (lsn, st.snapshot(), retired, covered)
        };
        let mut report = CompactReport {
            snapshot_lsn: lsn,
            retired,
            ..CompactReport::default()
        };
        if lsn == 0 {
            return Ok(report);
        }
        // Encoded straight into the file (waiting until `lsn` is durable;
        // tmp, fsync, rename, directory fsync): the payload is never held
        // in memory whole.
        let mut frozen = Some(frozen);
        let (len, removed) = engine::install_snapshot_with(&self.inner.log, lsn, &mut |w| {
            frozen.take().map_or(Ok(()), |f| f.encode_to(w))
        })?;
        report.snapshot_bytes = len;
        report.segments_removed = removed;
        let mut c = self.inner.counters.lock();
        // What was appended while the snapshot was written stays counted.
        c.records = c.records.saturating_sub(covered.0);
        c.bytes = c.bytes.saturating_sub(covered.1);
        c.compactions += 1;
        c.snapshot_bytes = len;
        Ok(report)
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> Result<u64> {
        Ok(self.inner.log.sync()?)
    }

    /// Syncs and closes the journal (the directory lock is released when the
    /// last clone and unit handle are dropped).
    pub fn close(self) -> Result<()> {
        self.inner.log.sync()?;
        Ok(())
    }

    // ---- internals ------------------------------------------------------

    /// The sync shell of a write that returned `(lsn, value)`: waits until
    /// `lsn` is durable (an operator's decision must not be lost once it
    /// is reported), then returns `value`. [`Journal::durably_async`] is
    /// the async shell of the same writes.
    fn durably<T>(&self, written: Result<(u64, T)>) -> Result<T> {
        let (lsn, value) = written?;
        self.inner.log.wait_durable(lsn)?;
        Ok(value)
    }

    fn check_size(&self, unit: &str, what: &str, value: &serde_json::Value) -> Result<()> {
        let limit = self.inner.opts.max_payload_bytes;
        let size = json_size(value);
        if size > limit {
            return Err(Error::PayloadTooLarge {
                unit: unit.to_string(),
                what: what.to_string(),
                size,
                limit,
            });
        }
        Ok(())
    }

    /// Checks records against the state, appends them (one write) and
    /// applies them, under the state lock, then waits for durability
    /// outside it (group commit).
    fn append(&self, unit: &str, recs: &[JournalRecord], durability: Durability) -> Result<u64> {
        let last = {
            let mut st = self.inner.state.lock();
            self.append_locked(&mut st, unit, recs)?
        };
        if durability == Durability::Durable {
            self.inner.log.wait_durable(last)?;
        }
        Ok(last)
    }

    /// Checks and appends `recs` buffered and applies them, with the state
    /// lock held by the caller, so that a decision taken under that lock (a
    /// key is still unknown) and the record acting on it are one atomic
    /// step. A record the state refuses writes nothing. Returns the last
    /// LSN; the caller waits for durability *after* releasing the lock.
    fn append_locked(&self, st: &mut State, unit: &str, recs: &[JournalRecord]) -> Result<u64> {
        let (range, bytes) =
            engine::append_checked(&self.inner.log, st, recs.to_vec()).map_err(|e| match e {
                Error::Log(crate::log::Error::RecordTooLarge { size, limit }) => {
                    Error::PayloadTooLarge {
                        unit: unit.to_string(),
                        what: "journal record".into(),
                        size,
                        limit,
                    }
                }
                e => e,
            })?;
        {
            let mut c = self.inner.counters.lock();
            c.records += recs.len() as u64;
            c.bytes += bytes;
        }
        Ok(*range.end())
    }

    /// Compacts when a trigger is reached; a failure is kept in the stats
    /// (the record that triggered it is already durable).
    fn maybe_auto_compact(&self) {
        self.maybe_trim();
        let due = || self.compaction_due();
        if !due() {
            return;
        }
        // Many threads can cross the threshold together: one compacts, the
        // others go on (they would only write the same snapshot again).
        let Some(_one) = self.inner.compacting.try_lock() else {
            return;
        };
        // Re-check: a compaction that just finished reset the counters.
        if due() {
            let r = self.compact_timed();
            self.inner.counters.lock().auto_error = r.err().map(|e| e.to_string());
        }
    }

    /// Whether an automatic compaction trigger is reached (counters only:
    /// no I/O, no state lock).
    fn compaction_due(&self) -> bool {
        let ac = self.inner.opts.auto_compact;
        let c = self.inner.counters.lock();
        ac.every_records.is_some_and(|n| c.records >= n)
            || ac.every_bytes.is_some_and(|n| c.bytes >= n)
            || ac
                .tail_ratio
                .is_some_and(|p| p.due(c.bytes, c.snapshot_bytes))
    }

    /// Applies the retention count in memory as soon as the key index or
    /// the finished ids exceed it by an eighth: memory stays bounded by the
    /// retention whatever the compaction interval. (Nothing is written: a
    /// restart may bring back, from the log tail, ids and keys dropped here
    /// until the next trim, which only de-duplicates more.) Each trim costs
    /// O(n log n) for n retained entries and happens every n/8 new ones:
    /// O(log n) amortized per record.
    fn maybe_trim(&self) {
        let Some(cap) = self.inner.opts.retention.max_keys else {
            return;
        };
        let high = cap + (cap / 8).max(64);
        let mut st = self.inner.state.lock();
        if st.keys.len() > high || st.finished.len() > high {
            st.apply_retention(&self.inner.opts.retention, record::now_ms());
        }
    }

    fn release(&self, id: &str) {
        self.inner.active.lock().remove(id);
    }

    fn release_key(&self, key: &str) {
        self.inner.running.lock().remove(key);
    }
}

/// The retention policy in words (for error messages).
fn describe_retention(r: &Retention) -> String {
    let count = r.max_keys.map_or("no count limit".to_string(), |n| {
        format!("newest {n} finished ids")
    });
    let age = r.max_age.map_or("no age limit".to_string(), |a| {
        format!("finished within {} s", a.as_secs())
    });
    format!("{count}, {age}")
}

/// Size of a value's JSON encoding, without allocating it.
fn json_size(value: &serde_json::Value) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, value);
    c.0
}

/// The async journal: what runs where (see docs/async.md).
///
/// A journal write is a check against the in-memory state (is the key
/// known? is the unit open?) and an append, under the state mutex, so that
/// two units can never both find a key unknown and both run its effect.
/// The async calls keep that ordering by doing exactly this short locked
/// step — a `pwrite` into the page cache, rarely a segment rotation — on
/// tokio's blocking pool (`blocking`), *buffered*, and then waiting for the
/// `fdatasync` with [`Log::wait_durable_async`], which holds no thread: the
/// log's writer thread (or a sync caller) runs the shared group commit.
/// Routing the append itself through the writer thread would need the state
/// lock held across a channel round trip, or a second ordering mechanism,
/// to keep check-before-append; a blocking-pool hop of microseconds is the
/// simpler correct design. No file I/O and no lock held across I/O is taken
/// on an executor thread.
#[cfg(feature = "tokio")]
impl Journal {
    /// Async [`Journal::open`] (recovery and replay run on tokio's blocking pool).
    pub async fn open_async(dir: impl AsRef<Path>, opts: JournalOptions) -> Result<Journal> {
        let dir = dir.as_ref().to_path_buf();
        blocking(move || Journal::open(dir, opts)).await
    }

    /// Async [`Journal::open_with`] (recovery and replay run on tokio's
    /// blocking pool).
    pub async fn open_with_async(
        storage: Arc<dyn Storage>,
        dir: impl AsRef<Path>,
        opts: JournalOptions,
    ) -> Result<Journal> {
        let dir = dir.as_ref().to_path_buf();
        blocking(move || Journal::open_with(storage, dir, opts)).await
    }

    /// Async [`Journal::set_cursor`]: the record written buffered on the
    /// blocking pool, a `Durable` cursor's `fdatasync` awaited without a
    /// thread, a compaction (when due) on the blocking pool.
    pub async fn set_cursor_async<T: Serialize + ?Sized>(
        &self,
        name: &str,
        value: &T,
        durability: Durability,
    ) -> Result<u64> {
        let rec = self.cursor_record(name, value)?;
        let lsn = self.append_async(name, vec![rec], durability).await?;
        self.upkeep_async().await;
        Ok(lsn)
    }

    /// Async [`Journal::resolve_in_doubt`]: the checks and the buffered
    /// record on the blocking pool, the `fdatasync` awaited without a
    /// thread; the unit id stays held (no unit handle opens it) until the
    /// outcome is durable, as in the sync call.
    pub async fn resolve_in_doubt_async(
        &self,
        id: &str,
        seq: u32,
        outcome: Outcome,
    ) -> Result<u64> {
        let (j, owned) = (self.clone(), id.to_string());
        let (lsn, _held) = blocking(move || j.resolve_in_doubt_write(&owned, seq, outcome)).await?;
        self.wait_durable_async(lsn).await?;
        Ok(lsn)
    }

    /// Async [`Journal::rollback`]: rolls back incomplete unit `id` with
    /// async compensations, see [`Unit::rollback_async`].
    pub async fn rollback_async<E, F, Fut>(
        &self,
        id: &str,
        reason: &str,
        compensate: F,
    ) -> Result<RollbackReport>
    where
        E: std::fmt::Display,
        F: FnMut(Compensation) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<(), E>>,
    {
        let (j, owned) = (self.clone(), id.to_string());
        blocking(move || j.open_for_rollback(&owned))
            .await?
            .rollback_async(reason, compensate)
            .await
    }

    /// Async [`Journal::begin`] (the buffered append runs on tokio's
    /// blocking pool; a begin waits for no sync).
    pub async fn begin_async<P: Serialize + ?Sized>(
        &self,
        id: &str,
        kind: &str,
        payload: &P,
    ) -> Result<Unit> {
        let value = unit_payload(id, payload)?;
        let (j, id, kind) = (self.clone(), id.to_string(), kind.to_string());
        blocking(move || j.begin(&id, &kind, &value)).await
    }

    /// Async [`Journal::begin_or_finished`].
    pub async fn begin_or_finished_async<P: Serialize + ?Sized>(
        &self,
        id: &str,
        kind: &str,
        payload: &P,
    ) -> Result<Begun> {
        let value = unit_payload(id, payload)?;
        let (j, id, kind) = (self.clone(), id.to_string(), kind.to_string());
        blocking(move || j.begin_or_finished(&id, &kind, &value)).await
    }

    /// Async [`Journal::compact`] (the snapshot is written on tokio's
    /// blocking pool).
    pub async fn compact_async(&self) -> Result<CompactReport> {
        let j = self.clone();
        blocking(move || j.compact()).await
    }

    /// Async [`Journal::sync`]: the sync runs on the log's writer thread.
    pub async fn sync_async(&self) -> Result<u64> {
        Ok(self.inner.log.sync_async().await?)
    }

    /// Async [`Journal::close`]: syncs without holding a thread.
    pub async fn close_async(self) -> Result<()> {
        self.inner.log.sync_async().await?;
        Ok(())
    }

    /// The async [`Journal::append`]: the locked check and the buffered
    /// write on the blocking pool, the durability wait on the log's writer
    /// thread.
    pub(crate) async fn append_async(
        &self,
        unit: &str,
        recs: Vec<JournalRecord>,
        durability: Durability,
    ) -> Result<u64> {
        let (j, id) = (self.clone(), unit.to_string());
        let last = blocking(move || j.append(&id, &recs, Durability::Buffered)).await?;
        if durability == Durability::Durable {
            self.wait_durable_async(last).await?;
        }
        Ok(last)
    }

    /// The async shell of a write that returns `(lsn, value)` (the sync
    /// one is [`Journal::durably`]): `write` runs on the blocking pool (a
    /// locked check and a buffered record), then `lsn` is awaited durable
    /// without holding a thread.
    pub(crate) async fn durably_async<T: Send + 'static>(
        &self,
        write: impl FnOnce(&Journal) -> Result<(u64, T)> + Send + 'static,
    ) -> Result<T> {
        let j = self.clone();
        let (lsn, value) = blocking(move || write(&j)).await?;
        self.wait_durable_async(lsn).await?;
        Ok(value)
    }

    /// Completes when `lsn` is durable, holding no thread while it waits.
    pub(crate) async fn wait_durable_async(&self, lsn: u64) -> Result<()> {
        Ok(self.inner.log.wait_durable_async(lsn).await?)
    }

    /// Runs what follows a durable unit end (compaction when due) on the
    /// blocking pool, and only when something is due.
    pub(crate) async fn upkeep_async(&self) {
        if self.compaction_due() {
            let j = self.clone();
            let _ = blocking(move || {
                j.maybe_auto_compact();
                Ok(())
            })
            .await;
        }
    }
}

/// A unit's payload as JSON, or the typed error naming the unit.
fn unit_payload<P: Serialize + ?Sized>(id: &str, payload: &P) -> Result<serde_json::Value> {
    serde_json::to_value(payload).map_err(|e| Error::Encode {
        unit: id.to_string(),
        what: "unit payload".into(),
        reason: e.to_string(),
    })
}

/// Runs blocking journal work on tokio's blocking pool.
#[cfg(feature = "tokio")]
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a record the state refuses used to be appended first and
    /// refused by `apply` after it was durable, leaving a journal whose
    /// replay fails. Now it is checked first: nothing is written, and the
    /// journal reopens.
    #[test]
    fn a_refused_record_writes_nothing_and_the_journal_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), JournalOptions::small()).unwrap();
        let mut u = j.begin("u1", "k", &1).unwrap();
        u.checkpoint(&"step").unwrap();
        let before = j.log().next_lsn();
        // A commit for a unit that is not open, an outcome without an intent.
        for bad in [
            JournalRecord::Commit {
                unit: "nope".into(),
                at_ms: 0,
            },
            JournalRecord::EffectOutcome {
                unit: "u1".into(),
                seq: 3,
                key: "k".into(),
                outcome: Outcome::Ok {
                    value: serde_json::Value::Null,
                },
                via: OutcomeVia::Run,
                at_ms: 0,
            },
        ] {
            let e = j.append("x", &[bad], Durability::Durable).unwrap_err();
            assert!(matches!(e, Error::Inconsistent { .. }), "{e}");
        }
        // A batch whose second record depends on the first: checked in order.
        let intent = JournalRecord::EffectIntent {
            unit: "u1".into(),
            seq: 0,
            name: "e".into(),
            key: "u1/e/0".into(),
            policy: PolicyKind::RetrySameKey,
            compensable: false,
        };
        let wrong_outcome = JournalRecord::EffectOutcome {
            unit: "u1".into(),
            seq: 0,
            key: "other".into(),
            outcome: Outcome::Ok {
                value: serde_json::Value::Null,
            },
            via: OutcomeVia::Run,
            at_ms: 0,
        };
        assert!(j
            .append("u1", &[intent.clone(), wrong_outcome], Durability::Durable)
            .is_err());
        assert_eq!(j.log().next_lsn(), before, "nothing was appended");
        assert_eq!(j.effect_status("u1", 0), Some(EffectStatus::NotStarted));
        drop(u);
        drop(j);
        let j = Journal::open(dir.path(), JournalOptions::small()).unwrap();
        assert_eq!(j.unit_state("u1"), Some(UnitState::Incomplete));
        assert_eq!(j.replay_report().incomplete.len(), 1);
    }

    #[test]
    fn a_finished_unit_dropped_by_retention_is_refused_with_an_explanation() {
        let dir = tempfile::tempdir().unwrap();
        let opts = JournalOptions {
            retention: Retention {
                max_keys: Some(2),
                max_age: None,
            },
            ..JournalOptions::small()
        };
        let j = Journal::open(dir.path(), opts.clone()).unwrap();
        for i in 0..5 {
            j.begin(&format!("u{i}"), "k", &i)
                .unwrap()
                .commit()
                .unwrap();
        }
        j.compact().unwrap();
        assert_eq!(j.stats().finished_ids, 2);
        // u0..u2 were dropped; the hashes of the newest 2 are kept.
        assert!(j.is_forgotten("u2"));
        assert!(!j.is_forgotten("u0"));
        assert!(matches!(
            j.begin("u2", "k", &0).unwrap_err(),
            Error::UnitForgotten { .. }
        ));
        assert!(matches!(
            j.begin("u4", "k", &0).unwrap_err(),
            Error::UnitFinished { .. }
        ));
        // The hashes survive the snapshot.
        drop(j);
        let j = Journal::open(dir.path(), opts).unwrap();
        assert!(matches!(
            j.begin("u1", "k", &0).unwrap_err(),
            Error::UnitForgotten { .. }
        ));
        assert!(j.begin("new", "k", &0).is_ok());
        // Beyond that horizon an id is unknown: it starts a new unit.
        assert!(j.begin("u0", "k", &0).is_ok());
    }

    #[test]
    fn cursors_survive_compaction_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), JournalOptions::small()).unwrap();
        assert_eq!(j.cursor::<u64>("c").unwrap(), None);
        j.set_cursor("c", &7u64, Durability::Buffered).unwrap();
        j.set_cursor("c", &8u64, Durability::Durable).unwrap();
        j.compact().unwrap();
        j.set_cursor("d", &"x", Durability::Durable).unwrap();
        drop(j);
        let j = Journal::open(dir.path(), JournalOptions::small()).unwrap();
        assert_eq!(j.cursor::<u64>("c").unwrap(), Some(8));
        assert_eq!(j.cursor::<String>("d").unwrap().as_deref(), Some("x"));
    }

    #[test]
    fn a_version_1_snapshot_still_opens() {
        // The payload an earlier build wrote: serde of its private state.
        let v1 = serde_json::json!({
            "version": 1,
            "state": {
                "units": {"u": {
                    "id": "u", "kind": "k", "payload": 1, "begin_lsn": 1, "begin_at_ms": 5,
                    "effects": [{"seq": 0, "name": "e", "key": "u/e/0", "policy": "retry_same_key",
                        "compensable": false, "intent_lsn": 2, "outcome": null,
                        "comp_intent": null, "comp_outcome": null}],
                    "checkpoint": null, "end": null, "abort_reason": null}},
                "finished": {"v": {"state": "committed", "lsn": 4, "at_ms": 6}},
                "keys": {"v/e/0": {"key": "v/e/0", "unit": "v", "effect": "e", "status": "completed",
                    "settled_lsn": 3, "outcome": {"status": "ok", "value": 2}, "at_ms": 6}},
                "committed": 1, "aborted": 0, "last_lsn": 4
            }
        });
        let st = State::from_snapshot(4, &serde_json::to_vec(&v1).unwrap(), false).unwrap();
        assert_eq!(st.unit_state("u"), Some(UnitState::Incomplete));
        assert_eq!(st.unit_state("v"), Some(UnitState::Committed));
        assert_eq!(st.keys["v/e/0"].settled_lsn, Some(3));
        // Written back as version 2, it reads the same.
        let v2 = State::encode(st.snapshot());
        let back = State::from_snapshot(4, &v2, false).unwrap();
        assert_eq!(back.units, st.units);
        assert_eq!(back.keys, st.keys);
        assert_eq!(back.finished, st.finished);
        // A newer version is refused with a typed error.
        let v9 = br#"{"version": 9}"#;
        assert!(matches!(
            State::from_snapshot(4, v9, false).unwrap_err(),
            Error::BadSnapshot { .. }
        ));
    }
}

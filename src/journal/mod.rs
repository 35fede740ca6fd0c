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
//!   counters) as a snapshot and drops old segments; recovery is snapshot +
//!   log after it, so memory and disk are bounded by live state.
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

mod error;
mod operator;
pub(crate) mod record;
mod retry;
mod state;
mod unit;
pub mod view;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

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

use crate::log::{Durability, FsStorage, Log, LogOptions, Storage};
use state::State;

/// When the journal compacts itself (in addition to [`Journal::compact`]).
/// Checked after each commit or abort; `None` disables a trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AutoCompact {
    /// Compact after this many records were appended since the last compaction.
    pub every_records: Option<u64>,
    /// Compact after this many bytes were appended since the last compaction.
    pub every_bytes: Option<u64>,
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
    /// Default: the newest 100 000, no age limit.
    pub retention: Retention,
    /// Automatic compaction. Default: every 64 MiB of records.
    pub auto_compact: AutoCompact,
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
            retention: Retention {
                max_keys: Some(100_000),
                max_age: None,
            },
            auto_compact: AutoCompact {
                every_records: None,
                every_bytes: Some(64 << 20),
            },
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
            },
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
    /// Bytes held by live segment files.
    pub disk_bytes: u64,
    /// The last automatic compaction's failure, if it failed.
    pub last_auto_compact_error: Option<String>,
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
    /// The operator inbox (journals on the real file system only).
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
    /// background thread for as long as the journal is open.
    pub fn open(dir: impl AsRef<Path>, opts: JournalOptions) -> Result<Journal> {
        let inbox = crate::log::inbox::Inbox::new(dir.as_ref());
        let j = Self::open_inner(Arc::new(FsStorage), dir, opts, Some(inbox))?;
        j.apply_inbox()?;
        operator::spawn_inbox_poller(&j);
        Ok(j)
    }

    /// Opens the journal through any [`Storage`] (for example the
    /// power-loss simulator) and replays it.
    /// No operator inbox is read (call [`Journal::apply_inbox`] yourself
    /// for a journal on the real file system).
    pub fn open_with(
        storage: Arc<dyn Storage>,
        dir: impl AsRef<Path>,
        opts: JournalOptions,
    ) -> Result<Journal> {
        Self::open_inner(storage, dir, opts, None)
    }

    fn open_inner(
        storage: Arc<dyn Storage>,
        dir: impl AsRef<Path>,
        opts: JournalOptions,
        inbox: Option<crate::log::inbox::Inbox>,
    ) -> Result<Journal> {
        opts.validate()?;
        let log = Log::open_with(storage, dir, opts.log.clone())?;
        let (mut state, snapshot_lsn) = match log.latest_snapshot()? {
            Some(s) => (State::from_snapshot(s.lsn, &s.data, false)?, s.lsn),
            None => (State::new(false), 0),
        };
        let mut records_replayed = 0;
        for rec in log.read_from(snapshot_lsn + 1)? {
            let rec = rec?;
            state.apply_log_record(rec.lsn, rec.kind, rec.payload())?;
            records_replayed += 1;
        }
        let mut incomplete: Vec<UnitView> = state.live_units().map(view::unit_view).collect();
        incomplete.sort_by_key(|u| u.begin_lsn);
        let replay = ReplayReport {
            snapshot_lsn,
            records_replayed,
            committed: state.committed,
            aborted: state.aborted,
            incomplete,
            keys: state.keys.len(),
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
        let value = serde_json::to_value(payload).map_err(|e| Error::Encode {
            unit: id.to_string(),
            what: "unit payload".into(),
            reason: e.to_string(),
        })?;
        self.check_size(id, "unit payload", &value)?;
        if !self.inner.active.lock().insert(id.to_string()) {
            return Err(Error::UnitBusy {
                unit: id.to_string(),
            });
        }
        // From here on the guard releases the id on every early return.
        let guard = unit::ActiveGuard::new(self.clone(), id.to_string());
        let (existing, abort) = {
            let st = self.inner.state.lock();
            let abort = st
                .units
                .get(id)
                .and_then(|u| u.abort_requested.as_ref())
                .map(|n| (n.by.clone(), n.reason.clone()));
            (st.unit_state(id), abort)
        };
        match existing {
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
        self.inner.state.lock().keys.get(key).map(view::key_view)
    }

    /// The recorded outcome of a settled key, if retained.
    pub fn key_outcome(&self, key: &str) -> Option<Outcome> {
        self.inner
            .state
            .lock()
            .keys
            .get(key)
            .and_then(|k| k.outcome.clone())
    }

    /// Counters.
    pub fn stats(&self) -> JournalStats {
        let (live_units, keys, finished_ids, committed, aborted) = {
            let st = self.inner.state.lock();
            (
                st.live_units().count(),
                st.keys.len(),
                st.finished.len(),
                st.committed,
                st.aborted,
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
        }
    }

    /// Records the outcome of an in-doubt effect by hand (an operator checked
    /// whether it happened). The unit can then be resumed or rolled back.
    /// Refused with [`Error::UnitBusy`] while the unit is open in this
    /// process: the open unit may be running that very step, and two
    /// outcomes for one step would make the journal unreadable at replay.
    pub fn resolve_in_doubt(&self, id: &str, seq: u32, outcome: Outcome) -> Result<u64> {
        if !self.inner.active.lock().insert(id.to_string()) {
            return Err(Error::UnitBusy {
                unit: id.to_string(),
            });
        }
        // Released on every return; no unit handle can open `id` meanwhile.
        let _guard = unit::ActiveGuard::new(self.clone(), id.to_string());
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
        // Durable: the operator's decision must not be lost.
        self.append(id, &[rec], Durability::Durable)
    }

    /// Rolls back incomplete unit `id`: see [`Unit::rollback`].
    pub fn rollback<E, F>(&self, id: &str, reason: &str, compensate: F) -> Result<RollbackReport>
    where
        E: std::fmt::Display,
        F: FnMut(&Compensation) -> std::result::Result<(), E>,
    {
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
        self.begin_inner(id, "", &(), true)?
            .rollback(reason, compensate)
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
        let (lsn, data, retired) = {
            // Holding the state lock keeps appends out, so the state is
            // exactly the log up to `lsn`.
            let mut st = self.inner.state.lock();
            let retired = st.apply_retention(&self.inner.opts.retention, record::now_ms());
            let lsn = self.inner.log.next_lsn() - 1;
            (lsn, st.encode_snapshot(), retired)
        };
        let mut report = CompactReport {
            snapshot_lsn: lsn,
            snapshot_bytes: data.len() as u64,
            retired,
            ..CompactReport::default()
        };
        if lsn == 0 {
            return Ok(report);
        }
        // write_snapshot waits until `lsn` is durable, then writes the file
        // atomically (tmp, fsync, rename, directory fsync).
        self.inner.log.write_snapshot(lsn, &data)?;
        report.segments_removed = self.inner.log.truncate_before(lsn + 1)?;
        let mut c = self.inner.counters.lock();
        c.records = 0;
        c.bytes = 0;
        c.compactions += 1;
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

    /// Appends records (one write) and applies them to the state under the
    /// state lock, then waits for durability outside it (group commit).
    fn append(&self, unit: &str, recs: &[JournalRecord], durability: Durability) -> Result<u64> {
        let encoded: Vec<(u8, Vec<u8>)> = recs.iter().map(|r| (r.kind(), r.encode())).collect();
        let last = {
            let mut st = self.inner.state.lock();
            self.append_encoded_locked(&mut st, unit, recs, &encoded)?
        };
        if durability == Durability::Durable {
            self.inner.log.wait_durable(last)?;
        }
        Ok(last)
    }

    /// Appends `recs` buffered and applies them, with the state lock held by
    /// the caller, so that a decision taken under that lock (a key is still
    /// unknown) and the record acting on it are one atomic step. Returns the
    /// last LSN; the caller waits for durability *after* releasing the lock.
    fn append_locked(&self, st: &mut State, unit: &str, recs: &[JournalRecord]) -> Result<u64> {
        let encoded: Vec<(u8, Vec<u8>)> = recs.iter().map(|r| (r.kind(), r.encode())).collect();
        self.append_encoded_locked(st, unit, recs, &encoded)
    }

    fn append_encoded_locked(
        &self,
        st: &mut State,
        unit: &str,
        recs: &[JournalRecord],
        encoded: &[(u8, Vec<u8>)],
    ) -> Result<u64> {
        let refs: Vec<(u8, &[u8])> = encoded.iter().map(|(k, p)| (*k, p.as_slice())).collect();
        let bytes: u64 = encoded.iter().map(|(_, p)| p.len() as u64 + 32).sum();
        let last = {
            let range = self
                .inner
                .log
                .append_batch(&refs, Durability::Buffered)
                .map_err(|e| match e {
                    crate::log::Error::RecordTooLarge { size, limit } => Error::PayloadTooLarge {
                        unit: unit.to_string(),
                        what: "journal record".into(),
                        size,
                        limit,
                    },
                    e => Error::Log(e),
                })?;
            for (lsn, rec) in range.clone().zip(recs) {
                st.apply(lsn, rec)?;
            }
            *range.end()
        };
        {
            let mut c = self.inner.counters.lock();
            c.records += recs.len() as u64;
            c.bytes += bytes;
        }
        Ok(last)
    }

    /// Compacts when a trigger is reached; a failure is kept in the stats
    /// (the record that triggered it is already durable).
    fn maybe_auto_compact(&self) {
        let ac = self.inner.opts.auto_compact;
        let due = || {
            let c = self.inner.counters.lock();
            ac.every_records.is_some_and(|n| c.records >= n)
                || ac.every_bytes.is_some_and(|n| c.bytes >= n)
        };
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

    fn release(&self, id: &str) {
        self.inner.active.lock().remove(id);
    }

    fn release_key(&self, key: &str) {
        self.inner.running.lock().remove(key);
    }
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

#[cfg(feature = "tokio")]
impl Journal {
    /// Async [`Journal::open`] (runs on tokio's blocking pool).
    pub async fn open_async(dir: impl AsRef<Path>, opts: JournalOptions) -> Result<Journal> {
        let dir = dir.as_ref().to_path_buf();
        blocking(move || Journal::open(dir, opts)).await
    }

    /// Async [`Journal::begin`] (the append runs on tokio's blocking pool).
    pub async fn begin_async<P: Serialize + ?Sized>(
        &self,
        id: &str,
        kind: &str,
        payload: &P,
    ) -> Result<Unit> {
        let value = serde_json::to_value(payload).map_err(|e| Error::Encode {
            unit: id.to_string(),
            what: "unit payload".into(),
            reason: e.to_string(),
        })?;
        let (j, id, kind) = (self.clone(), id.to_string(), kind.to_string());
        blocking(move || j.begin(&id, &kind, &value)).await
    }

    /// Async [`Journal::compact`].
    pub async fn compact_async(&self) -> Result<CompactReport> {
        let j = self.clone();
        blocking(move || j.compact()).await
    }

    /// Async [`Journal::sync`].
    pub async fn sync_async(&self) -> Result<u64> {
        let j = self.clone();
        blocking(move || j.sync()).await
    }
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

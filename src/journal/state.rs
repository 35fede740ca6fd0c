//! Replay: the in-memory state rebuilt from a snapshot plus the log after it.
//!
//! [`State`] is the journal's [`StateMachine`]: [`State::check`] is the single
//! place that validates journal records and [`State::apply_checked`] the
//! single place that interprets them; the owning [`super::Journal`] and the
//! read-only [`super::JournalView`] both go through [`crate::engine`], so the
//! operator's view and the process's view cannot disagree.
//!
//! Memory: the journal keeps incomplete units with their effects, the key
//! index, the ids of finished units (both bounded by the retention policy
//! at compaction), named cursors, and the hashes of finished ids retention
//! dropped (as many as it retains ids, so that `begin` on such an id is
//! refused with an explanation). Finished units' effect histories are
//! dropped as soon as the unit ends, unless `keep_finished` is set (the
//! operator's view).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::error::{Error, Result};
use super::record::{JournalRecord, OperatorAction, Outcome, OutcomeVia, PolicyKind};
use super::snapshot;
use super::view::{KeyStatus, UnitState};
use crate::engine::{Mode, StateMachine};
use crate::log::Lsn;

/// One effect of a unit as replayed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EffectRec {
    pub seq: u32,
    pub name: String,
    pub key: String,
    pub policy: PolicyKind,
    pub compensable: bool,
    pub intent_lsn: u64,
    /// Outcome, how it was obtained, and its LSN.
    pub outcome: Option<(Outcome, OutcomeVia, u64)>,
    /// LSN of the compensation intent, if rollback started compensating it.
    pub comp_intent: Option<u64>,
    /// The compensation's outcome and LSN.
    pub comp_outcome: Option<(Outcome, u64)>,
    /// Attempts started after the first (each has a durable attempt-started record).
    pub retries: u32,
    /// The latest transient failure, if it is the latest attempt's.
    pub last_failure: Option<AttemptFailure>,
    /// The attempt at which the retry policy last gave up (a new round of
    /// attempts starts after it).
    pub round_base: u32,
    /// An operator declared that the in-doubt effect did not happen: it may
    /// run again (same key), whatever its policy.
    pub not_happened: Option<OperatorNote>,
    /// The operator who resolved it, when resolved by hand.
    pub resolved_by: Option<OperatorNote>,
}

/// A transient failure of one attempt, recorded durably before the backoff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AttemptFailure {
    pub attempt: u32,
    pub message: String,
    pub not_happened: bool,
    pub retry_at_ms: u64,
    pub deadline_ms: Option<u64>,
    pub gave_up: bool,
}

/// Who did what to a unit, when and why (an operator record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OperatorNote {
    pub what: String,
    pub by: String,
    pub reason: String,
    pub at_ms: u64,
    pub lsn: u64,
}

/// An approval a unit asked for, and the decision once recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ApprovalRec {
    pub payload: Value,
    pub requested_lsn: u64,
    pub requested_at_ms: u64,
    /// Approved?, who, when, LSN.
    pub decision: Option<(bool, OperatorNote)>,
}

/// Classification of one effect position of an incomplete unit after replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectStatus {
    /// Outcome recorded and successful.
    Completed,
    /// Outcome recorded, an error.
    Failed,
    /// Intent durable, no outcome: it may or may not have happened.
    InDoubt,
    /// Completed, then compensated by a rollback.
    Compensated,
    /// No intent recorded: it never started.
    NotStarted,
}

impl EffectRec {
    pub(crate) fn status(&self) -> EffectStatus {
        match (&self.outcome, &self.comp_outcome) {
            (_, Some((o, _))) if o.is_ok() => EffectStatus::Compensated,
            (None, _) if self.not_happened.is_some() => EffectStatus::NotStarted,
            (None, _) => EffectStatus::InDoubt,
            (Some((o, _, _)), _) if o.is_ok() => EffectStatus::Completed,
            (Some(_), _) => EffectStatus::Failed,
        }
    }
}

/// One unit as replayed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UnitRec {
    pub id: String,
    pub kind: String,
    pub payload: Value,
    pub begin_lsn: u64,
    pub begin_at_ms: u64,
    pub effects: Vec<EffectRec>,
    pub checkpoint: Option<(u64, Value)>,
    pub end: Option<(UnitState, u64)>,
    pub abort_reason: Option<String>,
    /// Approvals asked for, by name.
    pub approvals: std::collections::BTreeMap<String, ApprovalRec>,
    /// An operator asked for the unit to be rolled back.
    pub abort_requested: Option<OperatorNote>,
    /// Every operator action on the unit, in order.
    pub operator_log: Vec<OperatorNote>,
    /// The code version that began the unit and the patches it knew.
    pub code: Option<(String, Vec<String>)>,
}

impl UnitRec {
    /// True when a rollback has something to compensate.
    pub(crate) fn needs_compensation(&self) -> bool {
        self.effects.iter().any(|e| {
            e.compensable && matches!(e.status(), EffectStatus::Completed | EffectStatus::InDoubt)
        })
    }
}

impl UnitRec {
    /// Status of effect `seq` (beyond the recorded ones: not started).
    pub(crate) fn effect_status(&self, seq: u32) -> EffectStatus {
        self.effects
            .get(seq as usize)
            .map_or(EffectStatus::NotStarted, EffectRec::status)
    }
}

/// An entry of the idempotency key index.
#[derive(Debug, Clone)]
pub(crate) struct KeyEntry {
    pub key: String,
    pub unit: String,
    pub effect: String,
    pub status: KeyStatus,
    pub settled_lsn: Option<u64>,
    /// The settled outcome, kept as its JSON text: a key index of many
    /// thousands of entries costs a few dozen bytes per outcome instead of
    /// a tree of JSON values. Read it with [`KeyEntry::outcome`].
    pub outcome: Option<Box<RawValue>>,
    pub at_ms: u64,
}

impl PartialEq for KeyEntry {
    fn eq(&self, o: &Self) -> bool {
        (
            &self.key,
            &self.unit,
            &self.effect,
            self.status,
            self.settled_lsn,
            self.at_ms,
        ) == (&o.key, &o.unit, &o.effect, o.status, o.settled_lsn, o.at_ms)
            && self.outcome() == o.outcome()
    }
}

impl KeyEntry {
    /// The settled outcome, decoded.
    pub(crate) fn outcome(&self) -> Option<Outcome> {
        self.outcome
            .as_ref()
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
    }
}

/// The key index entry of `key`, created in doubt (for `unit`'s effect
/// `effect`) when the key is unknown. A settled key stays settled (the
/// first settlement wins); an unknown key is in doubt until its outcome.
fn key_entry<'k>(
    keys: &'k mut HashMap<String, Arc<KeyEntry>>,
    key: &str,
    unit: &str,
    effect: &str,
) -> &'k mut Arc<KeyEntry> {
    keys.entry(key.to_string()).or_insert_with(|| {
        Arc::new(KeyEntry {
            key: key.to_string(),
            unit: unit.to_string(),
            effect: effect.to_string(),
            status: KeyStatus::InDoubt,
            settled_lsn: None,
            outcome: None,
            at_ms: 0,
        })
    })
}

/// Of `entries` (order, id, time in ms), the ids beyond a retention: the
/// oldest in `order` beyond `max`, and every one settled before `min_at`.
fn beyond_retention(
    mut entries: Vec<(u64, &str, u64)>,
    max: Option<usize>,
    min_at: Option<u64>,
) -> Vec<String> {
    entries.sort_unstable();
    let excess = max.map_or(0, |m| entries.len().saturating_sub(m));
    entries
        .iter()
        .enumerate()
        .filter(|(i, (_, _, at_ms))| *i < excess || min_at.is_some_and(|m| *at_ms < m))
        .map(|(_, (_, id, _))| id.to_string())
        .collect()
}

/// An outcome as JSON text.
pub(crate) fn raw_outcome(o: &Outcome) -> Box<RawValue> {
    // An outcome holds a JSON value (finite numbers, string keys): it
    // always serializes, and serde_json's output is valid JSON.
    serde_json::value::to_raw_value(o).expect("outcomes always serialize")
}

/// A finished unit remembered by id only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Finished {
    pub state: UnitState,
    pub lsn: u64,
    pub at_ms: u64,
}

/// How long settled keys and finished unit ids are kept across compactions.
///
/// Retention is applied when the journal compacts: settled keys and finished
/// unit ids beyond it are forgotten (keys in doubt and keys an incomplete
/// unit uses are always kept). A forgotten key no longer de-duplicates: an
/// effect under it runs again. A forgotten finished unit id is remembered as
/// a 64-bit hash for as long again (the same count), and
/// [`super::Journal::begin`] on it fails with
/// [`super::Error::UnitForgotten`]; after that the id is unknown and a
/// `begin` starts a new unit. Keep ids and keys unique over a longer horizon
/// than this (a durable cursor, as [`crate::runtime::batch`] does, never
/// needs them).
///
/// The default is bounded: 24 hours (the horizon Stripe keeps idempotency
/// keys for) and at most [`Retention::DEFAULT_MAX_KEYS`] keys and as many
/// finished unit ids, so memory stays flat whatever the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many settled keys (and as many finished unit ids),
    /// dropping the oldest first. `None`: no count limit.
    pub max_keys: Option<usize>,
    /// Drop settled keys (and finished unit ids) settled longer ago than this.
    /// `None`: no age limit.
    pub max_age: Option<std::time::Duration>,
}

impl Retention {
    /// Default count cap of settled keys (and of finished unit ids).
    pub const DEFAULT_MAX_KEYS: usize = 1024;
    /// Default age cap: 24 hours.
    pub const DEFAULT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

    /// Keep everything forever (memory and snapshots grow with history).
    pub const fn unlimited() -> Retention {
        Retention {
            max_keys: None,
            max_age: None,
        }
    }
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_keys: Some(Self::DEFAULT_MAX_KEYS),
            max_age: Some(Self::DEFAULT_MAX_AGE),
        }
    }
}

/// Hashes of finished unit ids that retention dropped, oldest first, as
/// many as retention keeps ids (so memory stays bounded).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Forgotten {
    pub order: VecDeque<u64>,
    pub set: HashSet<u64>,
    /// Finished unit ids dropped so far (all time).
    pub units: u64,
    /// Settled keys dropped so far (all time).
    pub keys: u64,
}

impl Forgotten {
    pub(crate) fn push(&mut self, hash: u64, cap: usize) {
        if cap == 0 {
            return;
        }
        if self.set.insert(hash) {
            self.order.push_back(hash);
        }
        while self.order.len() > cap {
            if let Some(h) = self.order.pop_front() {
                self.set.remove(&h);
            }
        }
    }
}

/// A stable 64-bit hash of a unit id (FNV-1a; stored in snapshots).
pub(crate) fn id_hash(id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// The replayed state. `PartialEq` so tests can compare snapshot + tail
/// against a full replay.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct State {
    /// Keep finished units' histories (operator view) instead of dropping them.
    pub keep_finished: bool,
    pub units: HashMap<String, UnitRec>,
    /// Finished unit ids (shared with a snapshot's frozen view).
    pub finished: HashMap<Arc<str>, Finished>,
    /// The key index. Entries are shared (`Arc`) so that a snapshot's frozen
    /// view is a list of pointers; an entry changed while a snapshot is
    /// being encoded is copied first.
    pub keys: HashMap<String, Arc<KeyEntry>>,
    /// Named cursors: LSN of the newest value and the value.
    pub cursors: BTreeMap<String, (u64, Value)>,
    /// Finished ids dropped by retention.
    pub forgotten: Forgotten,
    /// Units committed / aborted, in total (including compacted ones).
    pub committed: u64,
    pub aborted: u64,
    /// Highest LSN applied (or covered by the snapshot).
    pub last_lsn: u64,
    /// Committed / aborted counts of the snapshot the state was restored
    /// from (what the operator's view reports as compacted).
    pub snapshot_counts: (u64, u64),
    /// Operator-inbox commands applied, by command id (the newest
    /// [`MAX_APPLIED_COMMANDS`]): a command the owner applied but could not
    /// reply to before a crash is answered from here when it is claimed
    /// again, not applied twice.
    pub commands: BTreeMap<String, AppliedCommand>,
}

/// How many applied operator-inbox command ids the journal remembers.
pub(crate) const MAX_APPLIED_COMMANDS: usize = 1024;

/// An operator-inbox command whose decision is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AppliedCommand {
    /// The command id (inbox file name).
    pub id: String,
    /// What the decision changed.
    pub what: String,
    /// Who decided.
    pub by: String,
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// LSN of the operator record.
    pub lsn: u64,
}

impl State {
    /// Remembers an applied command, forgetting the oldest beyond the cap
    /// (command ids begin with their submission time, so they sort by age).
    pub(crate) fn remember_command(&mut self, c: AppliedCommand) {
        self.commands.insert(c.id.clone(), c);
        while self.commands.len() > MAX_APPLIED_COMMANDS {
            self.commands.pop_first();
        }
    }
}

impl State {
    pub(crate) fn new(keep_finished: bool) -> State {
        State {
            keep_finished,
            ..State::default()
        }
    }

    /// Live (incomplete) units.
    pub(crate) fn live_units(&self) -> impl Iterator<Item = &UnitRec> {
        self.units.values().filter(|u| u.end.is_none())
    }

    /// The state of a unit: live, finished (remembered), or unknown.
    pub(crate) fn unit_state(&self, id: &str) -> Option<UnitState> {
        if let Some(u) = self.units.get(id) {
            return Some(u.end.map_or(UnitState::Incomplete, |e| e.0));
        }
        self.finished.get(id).map(|f| f.state)
    }

    /// True when `id` is a finished unit whose id retention dropped (and
    /// whose hash is still remembered).
    pub(crate) fn is_forgotten(&self, id: &str) -> bool {
        !self.units.contains_key(id)
            && !self.finished.contains_key(id)
            && self.forgotten.set.contains(&id_hash(id))
    }

    /// A copy of the parts of the state `recs` can read or change (their
    /// units, finished ids, keys and cursors): checking on it is checking on
    /// the whole state, at the cost of one unit.
    fn scratch_for(&self, recs: &[JournalRecord]) -> State {
        let mut s = State::new(self.keep_finished);
        for rec in recs {
            let id = rec.unit();
            if let JournalRecord::Cursor { name, .. } = rec {
                if let Some(c) = self.cursors.get(name) {
                    s.cursors.insert(name.clone(), c.clone());
                }
                continue;
            }
            if let Some(u) = self.units.get(id) {
                s.units.entry(id.to_string()).or_insert_with(|| u.clone());
            }
            if let Some(f) = self.finished.get(id) {
                s.finished.insert(Arc::from(id), *f);
            }
            let key = match rec {
                JournalRecord::EffectIntent { key, .. }
                | JournalRecord::EffectOutcome { key, .. } => Some(key),
                _ => None,
            };
            if let Some(k) = key.and_then(|k| self.keys.get(k)) {
                s.keys.insert(k.key.clone(), k.clone());
            }
        }
        s.last_lsn = self.last_lsn;
        s
    }

    /// Checks `recs` (appended in this order from `first_lsn` on) against the
    /// state without changing it: they are applied to a scratch copy of the
    /// part of the state they touch, with the very code that applies them
    /// for real, so check and apply cannot disagree.
    pub(crate) fn check_records(&self, first_lsn: u64, recs: &[JournalRecord]) -> Result<()> {
        let mut scratch = self.scratch_for(recs);
        for (lsn, rec) in (first_lsn..).zip(recs) {
            scratch.apply(lsn, rec)?;
        }
        Ok(())
    }

    fn live_mut(&mut self, lsn: u64, unit: &str, what: &str) -> Result<&mut UnitRec> {
        match self.units.get_mut(unit) {
            Some(u) if u.end.is_none() => Ok(u),
            _ => Err(Error::Inconsistent {
                lsn,
                unit: unit.to_string(),
                reason: format!("{what} for a unit that is not open"),
            }),
        }
    }

    fn effect_mut<'a>(
        u: &'a mut UnitRec,
        lsn: u64,
        seq: u32,
        what: &str,
    ) -> Result<&'a mut EffectRec> {
        let unit = u.id.clone();
        u.effects
            .get_mut(seq as usize)
            .ok_or_else(|| Error::Inconsistent {
                lsn,
                unit,
                reason: format!("{what} for step {seq}, which has no intent"),
            })
    }

    /// Applies one record at `lsn`. Records must come in LSN order.
    pub(crate) fn apply(&mut self, lsn: u64, rec: &JournalRecord) -> Result<()> {
        let bad = |unit: &str, reason: String| Error::Inconsistent {
            lsn,
            unit: unit.to_string(),
            reason,
        };
        match rec {
            JournalRecord::UnitBegin {
                unit,
                kind,
                payload,
                at_ms,
            } => {
                if self.units.get(unit).is_some_and(|u| u.end.is_none()) {
                    return Err(bad(unit, "unit begun twice".into()));
                }
                self.finished.remove(unit.as_str());
                if self.forgotten.set.remove(&id_hash(unit)) {
                    let h = id_hash(unit);
                    self.forgotten.order.retain(|x| *x != h);
                }
                self.units.insert(
                    unit.clone(),
                    UnitRec {
                        id: unit.clone(),
                        kind: kind.clone(),
                        payload: payload.clone(),
                        begin_lsn: lsn,
                        begin_at_ms: *at_ms,
                        effects: Vec::new(),
                        checkpoint: None,
                        end: None,
                        abort_reason: None,
                        approvals: Default::default(),
                        abort_requested: None,
                        operator_log: Vec::new(),
                        code: None,
                    },
                );
            }
            JournalRecord::EffectIntent {
                unit,
                seq,
                name,
                key,
                policy,
                compensable,
            } => {
                let u = self.live_mut(lsn, unit, "effect intent")?;
                if *seq as usize != u.effects.len() {
                    return Err(bad(
                        unit,
                        format!(
                            "effect intent for step {seq}, expected step {}",
                            u.effects.len()
                        ),
                    ));
                }
                u.effects.push(EffectRec {
                    seq: *seq,
                    name: name.clone(),
                    key: key.clone(),
                    policy: *policy,
                    compensable: *compensable,
                    intent_lsn: lsn,
                    outcome: None,
                    comp_intent: None,
                    comp_outcome: None,
                    retries: 0,
                    last_failure: None,
                    round_base: 0,
                    not_happened: None,
                    resolved_by: None,
                });
                key_entry(&mut self.keys, key, unit, name);
            }
            JournalRecord::EffectOutcome {
                unit,
                seq,
                key,
                outcome,
                via,
                at_ms,
            } => {
                let u = self.live_mut(lsn, unit, "effect outcome")?;
                let e = Self::effect_mut(u, lsn, *seq, "effect outcome")?;
                if e.outcome.is_some() {
                    return Err(bad(unit, format!("second outcome for step {seq}")));
                }
                if e.key != *key {
                    return Err(bad(
                        unit,
                        format!("outcome key {key:?} differs from intent key {:?}", e.key),
                    ));
                }
                e.outcome = Some((outcome.clone(), *via, lsn));
                let name = e.name.clone();
                let entry = key_entry(&mut self.keys, key, unit, &name);
                if entry.status == KeyStatus::InDoubt {
                    *entry = Arc::new(KeyEntry {
                        key: key.clone(),
                        unit: unit.clone(),
                        effect: name,
                        status: if outcome.is_ok() {
                            KeyStatus::Completed
                        } else {
                            KeyStatus::Failed
                        },
                        settled_lsn: Some(lsn),
                        outcome: Some(raw_outcome(outcome)),
                        at_ms: *at_ms,
                    });
                }
            }
            JournalRecord::Checkpoint { unit, state } => {
                let u = self.live_mut(lsn, unit, "checkpoint")?;
                u.checkpoint = Some((lsn, state.clone()));
            }
            JournalRecord::Commit { unit, at_ms } => {
                self.live_mut(lsn, unit, "commit")?;
                self.end_unit(unit, UnitState::Committed, lsn, *at_ms, None);
            }
            JournalRecord::Abort {
                unit,
                reason,
                at_ms,
            } => {
                self.live_mut(lsn, unit, "abort")?;
                self.end_unit(unit, UnitState::Aborted, lsn, *at_ms, Some(reason.clone()));
            }
            JournalRecord::CompensationIntent { unit, seq, .. } => {
                let u = self.live_mut(lsn, unit, "compensation intent")?;
                let e = Self::effect_mut(u, lsn, *seq, "compensation intent")?;
                // A failed effect has nothing to undo; an in-doubt one may.
                if matches!(&e.outcome, Some((o, _, _)) if !o.is_ok()) {
                    return Err(bad(
                        unit,
                        format!("compensation of step {seq}, which failed"),
                    ));
                }
                e.comp_intent.get_or_insert(lsn);
            }
            JournalRecord::CompensationOutcome { unit, seq, outcome } => {
                let u = self.live_mut(lsn, unit, "compensation outcome")?;
                let e = Self::effect_mut(u, lsn, *seq, "compensation outcome")?;
                if e.comp_intent.is_none() {
                    return Err(bad(
                        unit,
                        format!("compensation outcome of step {seq} without its intent"),
                    ));
                }
                if matches!(&e.comp_outcome, Some((o, _)) if o.is_ok()) {
                    return Err(bad(unit, format!("step {seq} compensated twice")));
                }
                e.comp_outcome = Some((outcome.clone(), lsn));
                if outcome.is_ok() {
                    let key = e.key.clone();
                    if let Some(k) = self.keys.get_mut(&key) {
                        // Only the settlement this unit made is undone.
                        if k.unit == *unit && k.status == KeyStatus::Completed {
                            Arc::make_mut(k).status = KeyStatus::Compensated;
                        }
                    }
                }
            }
            JournalRecord::Cursor { name, value, .. } => {
                self.cursors.insert(name.clone(), (lsn, value.clone()));
            }
            JournalRecord::AttemptFailed {
                unit,
                seq,
                attempt,
                message,
                not_happened,
                retry_at_ms,
                deadline_ms,
                gave_up,
                ..
            } => {
                let u = self.live_mut(lsn, unit, "attempt failure")?;
                let e = Self::effect_mut(u, lsn, *seq, "attempt failure")?;
                if e.outcome.is_some() || *attempt != e.retries + 1 {
                    return Err(bad(
                        unit,
                        format!(
                            "failure of attempt {attempt} of step {seq}, whose latest attempt is {}{}",
                            e.retries + 1,
                            if e.outcome.is_some() { " and which has an outcome" } else { "" }
                        ),
                    ));
                }
                e.last_failure = Some(AttemptFailure {
                    attempt: *attempt,
                    message: message.clone(),
                    not_happened: *not_happened,
                    retry_at_ms: *retry_at_ms,
                    deadline_ms: *deadline_ms,
                    gave_up: *gave_up,
                });
                if *gave_up {
                    e.round_base = *attempt;
                }
            }
            JournalRecord::AttemptStarted {
                unit, seq, attempt, ..
            } => {
                let u = self.live_mut(lsn, unit, "attempt start")?;
                let e = Self::effect_mut(u, lsn, *seq, "attempt start")?;
                if e.outcome.is_some() || *attempt != e.retries + 2 {
                    return Err(bad(
                        unit,
                        format!(
                            "start of attempt {attempt} of step {seq}, expected attempt {}",
                            e.retries + 2
                        ),
                    ));
                }
                e.retries += 1;
                e.last_failure = None;
                e.not_happened = None;
            }
            JournalRecord::UnitCode {
                unit,
                version,
                patches,
            } => {
                let u = self.live_mut(lsn, unit, "unit code")?;
                u.code = Some((version.clone(), patches.clone()));
            }
            JournalRecord::ApprovalRequest {
                unit,
                name,
                payload,
                at_ms,
            } => {
                let u = self.live_mut(lsn, unit, "approval request")?;
                u.approvals
                    .entry(name.clone())
                    .or_insert_with(|| ApprovalRec {
                        payload: payload.clone(),
                        requested_lsn: lsn,
                        requested_at_ms: *at_ms,
                        decision: None,
                    });
            }
            JournalRecord::Operator {
                unit,
                action,
                by,
                reason,
                at_ms,
                command,
            } => {
                if let Some(id) = command {
                    let what = match action {
                        OperatorAction::Resolve { seq, happened, .. } => format!(
                            "unit {unit:?} step {seq}: resolved as {}",
                            if *happened {
                                "happened"
                            } else {
                                "not happened"
                            }
                        ),
                        OperatorAction::Abort => format!("unit {unit:?}: abort recorded"),
                        OperatorAction::Approve { name, approved } => format!(
                            "unit {unit:?} approval {name:?}: {}",
                            if *approved { "approved" } else { "rejected" }
                        ),
                    };
                    self.remember_command(AppliedCommand {
                        id: id.clone(),
                        what,
                        by: by.clone(),
                        at_ms: *at_ms,
                        lsn,
                    });
                }
                let note = |what: String| OperatorNote {
                    what,
                    by: by.clone(),
                    reason: reason.clone(),
                    at_ms: *at_ms,
                    lsn,
                };
                let u = self.live_mut(lsn, unit, "operator decision")?;
                match action {
                    OperatorAction::Resolve {
                        seq,
                        happened,
                        result,
                    } => {
                        let e = Self::effect_mut(u, lsn, *seq, "operator resolution")?;
                        if e.outcome.is_some() || e.not_happened.is_some() {
                            return Err(bad(unit, format!("step {seq} is not in doubt")));
                        }
                        let what = if *happened {
                            format!("resolved step {seq} ({}) as happened", e.name)
                        } else {
                            format!("resolved step {seq} ({}) as not happened", e.name)
                        };
                        let n = note(what);
                        if *happened {
                            let rec = JournalRecord::EffectOutcome {
                                unit: unit.clone(),
                                seq: *seq,
                                key: e.key.clone(),
                                outcome: Outcome::Ok {
                                    value: result.clone().unwrap_or(Value::Null),
                                },
                                via: OutcomeVia::Operator,
                                at_ms: *at_ms,
                            };
                            e.resolved_by = Some(n.clone());
                            u.operator_log.push(n);
                            return self.apply(lsn, &rec);
                        }
                        e.not_happened = Some(n.clone());
                        u.operator_log.push(n);
                    }
                    OperatorAction::Abort => {
                        if u.abort_requested.is_some() {
                            return Err(bad(unit, "abort requested twice".into()));
                        }
                        let n = note("abort".into());
                        u.operator_log.push(n.clone());
                        if u.needs_compensation() {
                            u.abort_requested = Some(n);
                        } else {
                            let why = format!("operator abort by {by}: {reason}");
                            self.end_unit(unit, UnitState::Aborted, lsn, *at_ms, Some(why));
                        }
                    }
                    OperatorAction::Approve { name, approved } => {
                        let Some(a) = u.approvals.get_mut(name) else {
                            return Err(bad(unit, format!("no approval {name:?} was requested")));
                        };
                        if a.decision.is_some() {
                            return Err(bad(unit, format!("approval {name:?} decided twice")));
                        }
                        let n = note(format!(
                            "{} {name:?}",
                            if *approved { "approved" } else { "rejected" }
                        ));
                        a.decision = Some((*approved, n.clone()));
                        u.operator_log.push(n);
                    }
                }
            }
        }
        self.last_lsn = self.last_lsn.max(lsn);
        Ok(())
    }

    fn end_unit(
        &mut self,
        unit: &str,
        state: UnitState,
        lsn: u64,
        at_ms: u64,
        reason: Option<String>,
    ) {
        match state {
            UnitState::Committed => self.committed += 1,
            UnitState::Aborted => self.aborted += 1,
            UnitState::Incomplete => {}
        }
        if self.keep_finished {
            if let Some(u) = self.units.get_mut(unit) {
                u.end = Some((state, lsn));
                u.abort_reason = reason;
            }
        } else {
            self.units.remove(unit);
        }
        self.finished
            .insert(Arc::from(unit), Finished { state, lsn, at_ms });
    }

    /// Drops settled keys and finished unit ids beyond the retention. Keys
    /// in doubt and keys of incomplete units are always kept.
    pub(crate) fn apply_retention(&mut self, retention: &Retention, now_ms: u64) -> usize {
        let before = self.keys.len() + self.finished.len();
        let min_at = retention
            .max_age
            .map(|age| now_ms.saturating_sub(age.as_millis() as u64));
        let live: std::collections::HashSet<&str> =
            self.live_units().map(|u| u.id.as_str()).collect();
        // Every key an incomplete unit uses, whichever unit settled it: a
        // unit in doubt on a key another unit settled needs that outcome
        // when it resumes.
        let live_keys: std::collections::HashSet<&str> = self
            .live_units()
            .flat_map(|u| u.effects.iter().map(|e| e.key.as_str()))
            .collect();
        // Keys, oldest settlement first (references: no copy of the index).
        let settled: Vec<(u64, &str, u64)> = self
            .keys
            .values()
            .filter(|k| {
                k.status != KeyStatus::InDoubt
                    && !live.contains(k.unit.as_str())
                    && !live_keys.contains(k.key.as_str())
            })
            .map(|k| (k.settled_lsn.unwrap_or(0), k.key.as_str(), k.at_ms))
            .collect();
        let drop_keys = beyond_retention(settled, retention.max_keys, min_at);
        drop(live);
        drop(live_keys);
        self.forgotten.keys += drop_keys.len() as u64;
        for k in drop_keys {
            self.keys.remove(&k);
        }
        // Finished unit ids, oldest end first.
        let fin: Vec<(u64, &str, u64)> = self
            .finished
            .iter()
            .map(|(id, f)| (f.lsn, &**id, f.at_ms))
            .collect();
        let drop_units = beyond_retention(fin, retention.max_keys, min_at);
        // Their hashes are remembered for as long again, so that `begin`
        // on such an id is explained instead of starting the unit anew.
        let cap = retention.max_keys.unwrap_or(1 << 20);
        self.forgotten.units += drop_units.len() as u64;
        for id in drop_units {
            self.finished.remove(id.as_str());
            self.forgotten.push(id_hash(&id), cap);
        }
        before - (self.keys.len() + self.finished.len())
    }

    /// Rebuilds a state from a snapshot payload covering LSNs `..=lsn`.
    pub(crate) fn from_snapshot(lsn: u64, data: &[u8], keep_finished: bool) -> Result<State> {
        snapshot::decode(lsn, data, keep_finished)
    }
}

impl StateMachine for State {
    type Record = JournalRecord;
    type Error = Error;
    type Snapshot = snapshot::Frozen;

    fn empty(mode: Mode) -> Self {
        State::new(mode == Mode::History)
    }

    fn restore(lsn: Lsn, data: &[u8], mode: Mode) -> Result<Self> {
        State::from_snapshot(lsn, data, mode == Mode::History)
    }

    fn decode(lsn: Lsn, kind: u8, payload: &[u8]) -> Result<Option<JournalRecord>> {
        if !JournalRecord::is_journal_kind(kind) {
            return Ok(None);
        }
        JournalRecord::decode(kind, payload)
            .map(Some)
            .map_err(|e| match e {
                Error::BadRecord { kind, reason } => Error::BadRecordAt { lsn, kind, reason },
                e => e,
            })
    }

    fn encode_record(rec: &JournalRecord) -> (u8, Vec<u8>) {
        (rec.kind(), rec.encode())
    }

    fn check(&self, lsn: Lsn, rec: &JournalRecord) -> Result<()> {
        self.check_records(lsn, std::slice::from_ref(rec))
    }

    fn check_batch(&self, first_lsn: Lsn, recs: &[JournalRecord]) -> Result<()> {
        self.check_records(first_lsn, recs)
    }

    fn apply(&mut self, lsn: Lsn, rec: JournalRecord) {
        // Checked against this very state: cannot fail (and changes nothing
        // if it somehow did, since every refusal comes before any change).
        let r = State::apply(self, lsn, &rec);
        debug_assert!(r.is_ok(), "a checked record failed to apply: {r:?}");
    }

    fn check_apply(&mut self, lsn: Lsn, rec: JournalRecord) -> Result<()> {
        // One pass: `State::apply` refuses before it changes anything.
        State::apply(self, lsn, &rec)
    }

    fn snapshot(&self) -> snapshot::Frozen {
        snapshot::Frozen::of(self)
    }

    fn encode(snapshot: snapshot::Frozen) -> Vec<u8> {
        snapshot.encode()
    }
}

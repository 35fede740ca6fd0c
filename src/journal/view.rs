//! A read-only, full-history view of a journal for operators (`wal-inspect`).
//!
//! [`JournalView::load`] works on a [`LogReader`], so it takes no lock and
//! writes nothing: it can run while the owning process appends. It replays
//! the newest snapshot plus every record after it with the same code the
//! journal uses (its private `state` module). Units that finished before the snapshot
//! are only counted ([`JournalView::compacted_committed`],
//! [`JournalView::compacted_aborted`]); incomplete units and the key index
//! are always complete.

use serde::{Deserialize, Serialize};

use super::error::Result;
use super::state::{EffectRec, EffectStatus, KeyEntry, State, UnitRec};
use crate::engine::{self, Mode, Replayed};
use crate::log::LogReader;

/// Where a unit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitState {
    /// Ended with a commit record.
    Committed,
    /// Ended with an abort record (after its compensations).
    Aborted,
    /// Begun, not ended: it will be resumed or rolled back.
    Incomplete,
}

impl UnitState {
    /// `"committed"`, `"aborted"` or `"incomplete"`.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitState::Committed => "committed",
            UnitState::Aborted => "aborted",
            UnitState::Incomplete => "incomplete",
        }
    }
}

impl std::fmt::Display for UnitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an effect stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectState {
    /// Its outcome is recorded and successful.
    Completed,
    /// Its intent is durable but no outcome: it may or may not have happened.
    InDoubt,
    /// It completed and a rollback then compensated it.
    Compensated,
    /// Its outcome is recorded as an error.
    Failed,
    /// Its intent is recorded without outcome, and an operator declared
    /// that it did not happen: a resume runs it again with the same key.
    NotHappened,
}

/// Where an idempotency key stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// An effect with this key started and its outcome is not recorded.
    InDoubt,
    /// Its effect completed; it will never run again under this key.
    Completed,
    /// Its effect failed; the failure is recorded and returned again.
    Failed,
    /// Its effect completed and a rollback of its unit then compensated
    /// (undid) it: the recorded result is no longer handed to anyone, and
    /// another effect asking for the key gets [`super::Error::KeyConflict`]
    /// (use a new key to do it again).
    Compensated,
}

/// One effect of a unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectView {
    /// Position in the unit, from 0.
    pub seq: u32,
    /// Effect name.
    pub name: String,
    /// Idempotency key.
    pub key: String,
    /// In-doubt policy: `"retry_same_key"`, `"reconcile"` or `"never_repeat"`.
    pub policy: String,
    /// State.
    pub state: EffectState,
    /// LSN of the effect intent.
    pub intent_lsn: u64,
    /// LSN of the outcome, when recorded.
    pub outcome_lsn: Option<u64>,
    /// Attempts started (1 + retries; counted durably).
    #[serde(default = "one")]
    pub attempts: u32,
    /// The latest attempt's transient error, while a retry is pending.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The operator decision about this effect (`"<what> by <who>: <why>"`).
    #[serde(default)]
    pub operator: Option<String>,
}

fn one() -> u32 {
    1
}

/// An approval a unit asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalView {
    /// Its name.
    pub name: String,
    /// What the approver is shown (JSON text).
    pub payload: String,
    /// `"pending"`, `"approved"` or `"rejected"`.
    pub status: String,
    /// Who decided.
    pub by: Option<String>,
    /// When it was asked (ms since the epoch).
    pub requested_at_ms: u64,
    /// When it was decided (ms since the epoch).
    pub decided_at_ms: Option<u64>,
}

/// One operator action on a unit (who, when, why).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorView {
    /// What was done.
    pub what: String,
    /// Who did it.
    pub by: String,
    /// Why.
    pub reason: String,
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// LSN of the operator record.
    pub lsn: u64,
}

/// One unit with its effects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitView {
    /// Unit id.
    pub id: String,
    /// Caller-defined kind.
    pub kind: String,
    /// State.
    pub state: UnitState,
    /// Its effects in order.
    pub effects: Vec<EffectView>,
    /// LSN of the unit's begin record.
    pub begin_lsn: u64,
    /// LSN of its commit or abort record.
    pub end_lsn: Option<u64>,
    /// LSN of its latest checkpoint.
    pub last_checkpoint_lsn: Option<u64>,
    /// Approvals asked for, by name.
    #[serde(default)]
    pub approvals: Vec<ApprovalView>,
    /// Operator actions on the unit, in order.
    #[serde(default)]
    pub operator_actions: Vec<OperatorView>,
    /// Who asked for an abort that the agent has not finished (rollback pending).
    #[serde(default)]
    pub abort_requested_by: Option<String>,
    /// The code version that began the unit, when recorded.
    #[serde(default)]
    pub code_version: Option<String>,
}

impl UnitView {
    /// Effects whose outcome is recorded (completed, failed or compensated).
    pub fn effects_done(&self) -> usize {
        self.effects
            .iter()
            .filter(|e| !matches!(e.state, EffectState::InDoubt | EffectState::NotHappened))
            .count()
    }

    /// Effects in doubt (intent without outcome).
    pub fn effects_in_doubt(&self) -> usize {
        self.effects
            .iter()
            .filter(|e| e.state == EffectState::InDoubt)
            .count()
    }
}

/// One entry of the idempotency key index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    /// The key.
    pub key: String,
    /// The unit whose effect settled it (or holds it in doubt).
    pub unit: String,
    /// That effect's name.
    pub effect: String,
    /// Status.
    pub status: KeyStatus,
    /// LSN of the outcome that settled it.
    pub settled_lsn: Option<u64>,
}

/// The whole journal as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalView {
    /// Units known in full, ordered by begin LSN.
    pub units: Vec<UnitView>,
    /// The key index, ordered by key.
    pub keys: Vec<KeyView>,
    /// Committed units compacted into the snapshot (not in `units`).
    pub compacted_committed: u64,
    /// Aborted units compacted into the snapshot (not in `units`).
    pub compacted_aborted: u64,
    /// LSN of the snapshot replay started from (0: none).
    pub snapshot_lsn: u64,
}

pub(crate) fn effect_view(e: &EffectRec) -> EffectView {
    EffectView {
        seq: e.seq,
        name: e.name.clone(),
        key: e.key.clone(),
        policy: e.policy.as_str().to_string(),
        state: match e.status() {
            EffectStatus::Completed => EffectState::Completed,
            EffectStatus::NotStarted => EffectState::NotHappened,
            EffectStatus::Failed => EffectState::Failed,
            EffectStatus::InDoubt => EffectState::InDoubt,
            EffectStatus::Compensated => EffectState::Compensated,
        },
        intent_lsn: e.intent_lsn,
        outcome_lsn: e.outcome.as_ref().map(|o| o.2),
        attempts: e.retries + 1,
        last_error: e.last_failure.as_ref().map(|f| f.message.clone()),
        operator: e
            .resolved_by
            .as_ref()
            .or(e.not_happened.as_ref())
            .map(|n| format!("{} by {} at {} ms: {}", n.what, n.by, n.at_ms, n.reason)),
    }
}

pub(crate) fn unit_view(u: &UnitRec) -> UnitView {
    UnitView {
        id: u.id.clone(),
        kind: u.kind.clone(),
        state: u.end.map_or(UnitState::Incomplete, |e| e.0),
        effects: u.effects.iter().map(effect_view).collect(),
        begin_lsn: u.begin_lsn,
        end_lsn: u.end.map(|e| e.1),
        last_checkpoint_lsn: u.checkpoint.as_ref().map(|c| c.0),
        approvals: u
            .approvals
            .iter()
            .map(|(name, a)| ApprovalView {
                name: name.clone(),
                payload: a.payload.to_string(),
                status: match &a.decision {
                    None => "pending",
                    Some((true, _)) => "approved",
                    Some((false, _)) => "rejected",
                }
                .to_string(),
                by: a.decision.as_ref().map(|d| d.1.by.clone()),
                requested_at_ms: a.requested_at_ms,
                decided_at_ms: a.decision.as_ref().map(|d| d.1.at_ms),
            })
            .collect(),
        operator_actions: u
            .operator_log
            .iter()
            .map(|n| OperatorView {
                what: n.what.clone(),
                by: n.by.clone(),
                reason: n.reason.clone(),
                at_ms: n.at_ms,
                lsn: n.lsn,
            })
            .collect(),
        abort_requested_by: u.abort_requested.as_ref().map(|n| n.by.clone()),
        code_version: u.code.as_ref().map(|c| c.0.clone()),
    }
}

pub(crate) fn key_view(k: &KeyEntry) -> KeyView {
    KeyView {
        key: k.key.clone(),
        unit: k.unit.clone(),
        effect: k.effect.clone(),
        status: k.status,
        settled_lsn: k.settled_lsn,
    }
}

impl JournalView {
    /// Loads the view from a read-only reader: snapshot, then every record
    /// after it up to the last valid record the reader's scan found.
    ///
    /// ```
    /// use agentwal::journal::{Effect, Journal, JournalOptions, JournalView, UnitState};
    /// use agentwal::log::LogReader;
    /// let dir = tempfile::tempdir().unwrap();
    /// let journal = Journal::open(dir.path(), JournalOptions::small()).unwrap();
    /// let mut unit = journal.begin("order-1", "order", &"payload").unwrap();
    /// unit.run(Effect::retry_same_key("charge"), |_ctx| Ok::<_, String>(42)).unwrap();
    /// unit.commit().unwrap();
    ///
    /// let view = JournalView::load(&LogReader::open(dir.path()).unwrap()).unwrap();
    /// assert_eq!(view.units[0].id, "order-1");
    /// assert_eq!(view.units[0].state, UnitState::Committed);
    /// assert_eq!(view.keys[0].key, "order-1/charge/0");
    /// ```
    pub fn load(reader: &LogReader) -> Result<JournalView> {
        let r = engine::open_reader::<State>(reader, Mode::History)?;
        Ok(Self::from_replayed(&r))
    }

    /// The view of a replay; the compacted counts are the snapshot's.
    fn from_replayed(r: &Replayed<State>) -> JournalView {
        let (cc, ca) = r.state.snapshot_counts;
        Self::from_state(&r.state, cc, ca, r.snapshot_lsn)
    }

    /// Replays an optional snapshot payload (`(lsn, data)`) and journal
    /// records `(lsn, kind, payload)` without any log: the entry point for
    /// fuzzing and for tools that already hold the records. Records must be
    /// in LSN order and after the snapshot; kinds outside 1..=31 are skipped.
    ///
    /// ```
    /// use agentwal::journal::{JournalRecord, JournalView, UnitState};
    /// let begin = JournalRecord::UnitBegin {
    ///     unit: "u".into(), kind: "k".into(), payload: serde_json::Value::Null, at_ms: 0,
    /// };
    /// let bytes = begin.encode();
    /// let view = JournalView::replay(None, [(1, begin.kind(), bytes.as_slice())]).unwrap();
    /// assert_eq!(view.units[0].state, UnitState::Incomplete);
    /// assert!(JournalView::replay(None, [(1, 5, &b"{}"[..])]).is_err());
    /// ```
    pub fn replay<'a>(
        snapshot: Option<(u64, &[u8])>,
        records: impl IntoIterator<Item = (u64, u8, &'a [u8])>,
    ) -> Result<JournalView> {
        let r = engine::replay_parts::<State>(snapshot, records, Mode::History)?;
        Ok(Self::from_replayed(&r))
    }

    pub(crate) fn from_state(
        state: &State,
        compacted_committed: u64,
        compacted_aborted: u64,
        snapshot_lsn: u64,
    ) -> JournalView {
        let mut units: Vec<UnitView> = state.units.values().map(unit_view).collect();
        units.sort_by_key(|u| u.begin_lsn);
        let mut keys: Vec<KeyView> = state.keys.values().map(|k| key_view(k)).collect();
        keys.sort_by(|a, b| a.key.cmp(&b.key));
        JournalView {
            units,
            keys,
            compacted_committed,
            compacted_aborted,
            snapshot_lsn,
        }
    }

    /// The unit with this id, if known in full.
    pub fn unit(&self, id: &str) -> Option<&UnitView> {
        self.units.iter().find(|u| u.id == id)
    }

    /// Units in `state`.
    pub fn units_in(&self, state: UnitState) -> impl Iterator<Item = &UnitView> {
        self.units.iter().filter(move |u| u.state == state)
    }

    /// Committed units, compacted ones included.
    pub fn committed_total(&self) -> u64 {
        self.compacted_committed + self.units_in(UnitState::Committed).count() as u64
    }

    /// Aborted units, compacted ones included.
    pub fn aborted_total(&self) -> u64 {
        self.compacted_aborted + self.units_in(UnitState::Aborted).count() as u64
    }

    /// In-doubt effects over all units.
    pub fn in_doubt_effects(&self) -> usize {
        self.units.iter().map(UnitView::effects_in_doubt).sum()
    }
}

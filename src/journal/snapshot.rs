//! The journal's snapshot payload: an explicit, versioned type, independent
//! of the in-memory [`State`] (which may change between releases without
//! changing the format). Specified in `docs/format.md` ("Journal snapshot").
//!
//! * **Version 2** (written by this build): a JSON object with `version`,
//!   the counters, the incomplete units, the key index (oldest settlement
//!   first), the retained finished unit ids (oldest first), the named
//!   cursors, and the hashes of finished ids retention dropped.
//! * **Version 1** (written by earlier builds: `{"version":1,"state":{...}}`
//!   with maps keyed by id) is still read, so existing journals open; the
//!   next compaction rewrites it as version 2.
//!
//! A newer version is refused with [`Error::BadSnapshot`] naming the
//! versions this build reads.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::error::{Error, Result};
use super::record::{Outcome, OutcomeVia, PolicyKind};
use super::state::{
    AppliedCommand, ApprovalRec, AttemptFailure, EffectRec, Finished, Forgotten, KeyEntry,
    OperatorNote, State, UnitRec,
};
use super::view::{KeyStatus, UnitState};

/// The version this build writes.
pub(crate) const VERSION: u32 = 2;

/// One effect of an incomplete unit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapEffect {
    seq: u32,
    name: String,
    key: String,
    policy: PolicyKind,
    compensable: bool,
    intent_lsn: u64,
    outcome: Option<(Outcome, OutcomeVia, u64)>,
    comp_intent: Option<u64>,
    comp_outcome: Option<(Outcome, u64)>,
    #[serde(default)]
    retries: u32,
    #[serde(default)]
    last_failure: Option<AttemptFailure>,
    #[serde(default)]
    round_base: u32,
    #[serde(default)]
    not_happened: Option<OperatorNote>,
    #[serde(default)]
    resolved_by: Option<OperatorNote>,
}

/// One incomplete unit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapUnit {
    id: String,
    kind: String,
    payload: Value,
    begin_lsn: u64,
    begin_at_ms: u64,
    effects: Vec<SnapEffect>,
    checkpoint: Option<(u64, Value)>,
    end: Option<(UnitState, u64)>,
    abort_reason: Option<String>,
    #[serde(default)]
    approvals: BTreeMap<String, ApprovalRec>,
    #[serde(default)]
    abort_requested: Option<OperatorNote>,
    #[serde(default)]
    operator_log: Vec<OperatorNote>,
    #[serde(default)]
    code: Option<(String, Vec<String>)>,
}

/// One key index entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapKey {
    key: String,
    unit: String,
    effect: String,
    status: KeyStatus,
    settled_lsn: Option<u64>,
    outcome: Option<Box<RawValue>>,
    at_ms: u64,
}

/// One retained finished unit id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapFinished {
    id: String,
    state: UnitState,
    lsn: u64,
    at_ms: u64,
}

/// One named cursor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapCursor {
    name: String,
    lsn: u64,
    value: Value,
}

/// A key index entry as written (borrowed from the shared entry).
#[derive(Serialize)]
struct SnapKeyRef<'a> {
    key: &'a str,
    unit: &'a str,
    effect: &'a str,
    status: KeyStatus,
    settled_lsn: Option<u64>,
    outcome: &'a Option<Box<RawValue>>,
    at_ms: u64,
}

/// A finished unit id as written (borrowed).
#[derive(Serialize)]
struct SnapFinishedRef<'a> {
    id: &'a str,
    state: UnitState,
    lsn: u64,
    at_ms: u64,
}

/// Serializes an iterator as a sequence without collecting it.
struct Seq<I>(std::cell::Cell<Option<I>>);

impl<I: Iterator<Item = T>, T: Serialize> Serialize for Seq<I> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.take().into_iter().flatten())
    }
}

/// The frozen view of the state a snapshot is encoded from: taken under the
/// journal's lock, encoded outside it. The key index and the finished ids
/// (the large parts) are lists of shared pointers; incomplete units (few)
/// and cursors are copied.
#[derive(Debug, Clone)]
pub(crate) struct Frozen {
    head: JournalSnapshot,
    keys: Vec<Arc<KeyEntry>>,
    finished: Vec<(Arc<str>, Finished)>,
}

/// The version-2 snapshot payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JournalSnapshot {
    version: u32,
    last_lsn: u64,
    committed: u64,
    aborted: u64,
    units: Vec<SnapUnit>,
    keys: Vec<SnapKey>,
    finished: Vec<SnapFinished>,
    cursors: Vec<SnapCursor>,
    forgotten_ids: Vec<u64>,
    forgotten_units: u64,
    forgotten_keys: u64,
    /// Applied operator-inbox commands (absent in snapshots of earlier builds).
    #[serde(default)]
    commands: Vec<AppliedCommand>,
}

/// Version 1, as earlier builds wrote it.
#[derive(Deserialize)]
struct V1 {
    state: V1State,
}

#[derive(Deserialize)]
struct V1State {
    units: HashMap<String, SnapUnit>,
    finished: HashMap<String, V1Finished>,
    keys: HashMap<String, SnapKey>,
    committed: u64,
    aborted: u64,
    last_lsn: u64,
}

#[derive(Deserialize)]
struct V1Finished {
    state: UnitState,
    lsn: u64,
    at_ms: u64,
}

#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

fn effect_to(e: &EffectRec) -> SnapEffect {
    SnapEffect {
        seq: e.seq,
        name: e.name.clone(),
        key: e.key.clone(),
        policy: e.policy,
        compensable: e.compensable,
        intent_lsn: e.intent_lsn,
        outcome: e.outcome.clone(),
        comp_intent: e.comp_intent,
        comp_outcome: e.comp_outcome.clone(),
        retries: e.retries,
        last_failure: e.last_failure.clone(),
        round_base: e.round_base,
        not_happened: e.not_happened.clone(),
        resolved_by: e.resolved_by.clone(),
    }
}

fn effect_from(e: SnapEffect) -> EffectRec {
    EffectRec {
        seq: e.seq,
        name: e.name,
        key: e.key,
        policy: e.policy,
        compensable: e.compensable,
        intent_lsn: e.intent_lsn,
        outcome: e.outcome,
        comp_intent: e.comp_intent,
        comp_outcome: e.comp_outcome,
        retries: e.retries,
        last_failure: e.last_failure,
        round_base: e.round_base,
        not_happened: e.not_happened,
        resolved_by: e.resolved_by,
    }
}

fn unit_to(u: &UnitRec) -> SnapUnit {
    SnapUnit {
        id: u.id.clone(),
        kind: u.kind.clone(),
        payload: u.payload.clone(),
        begin_lsn: u.begin_lsn,
        begin_at_ms: u.begin_at_ms,
        effects: u.effects.iter().map(effect_to).collect(),
        checkpoint: u.checkpoint.clone(),
        end: u.end,
        abort_reason: u.abort_reason.clone(),
        approvals: u.approvals.clone(),
        abort_requested: u.abort_requested.clone(),
        operator_log: u.operator_log.clone(),
        code: u.code.clone(),
    }
}

fn unit_from(u: SnapUnit) -> UnitRec {
    UnitRec {
        id: u.id,
        kind: u.kind,
        payload: u.payload,
        begin_lsn: u.begin_lsn,
        begin_at_ms: u.begin_at_ms,
        effects: u.effects.into_iter().map(effect_from).collect(),
        checkpoint: u.checkpoint,
        end: u.end,
        abort_reason: u.abort_reason,
        approvals: u.approvals,
        abort_requested: u.abort_requested,
        operator_log: u.operator_log,
        code: u.code,
    }
}

fn key_ref(k: &KeyEntry) -> SnapKeyRef<'_> {
    SnapKeyRef {
        key: &k.key,
        unit: &k.unit,
        effect: &k.effect,
        status: k.status,
        settled_lsn: k.settled_lsn,
        outcome: &k.outcome,
        at_ms: k.at_ms,
    }
}

fn key_from(k: SnapKey) -> std::result::Result<KeyEntry, String> {
    // The outcome must be one (it is handed back to effects): check it now.
    if let Some(raw) = &k.outcome {
        serde_json::from_str::<Outcome>(raw.get())
            .map_err(|e| format!("outcome of key {:?}: {e}", k.key))?;
    }
    Ok(KeyEntry {
        key: k.key,
        unit: k.unit,
        effect: k.effect,
        status: k.status,
        settled_lsn: k.settled_lsn,
        outcome: k.outcome,
        at_ms: k.at_ms,
    })
}

impl Frozen {
    /// The frozen view of `state`'s live part (finished units' histories are
    /// never included). Called under the journal's lock: copies the live
    /// units and finished ids, and one pointer per key.
    pub(crate) fn of(state: &State) -> Frozen {
        let mut units: Vec<SnapUnit> = state.live_units().map(unit_to).collect();
        units.sort_by_key(|u| u.begin_lsn);
        let keys: Vec<Arc<KeyEntry>> = state.keys.values().cloned().collect();
        let finished: Vec<(Arc<str>, Finished)> = state
            .finished
            .iter()
            .map(|(id, f)| (id.clone(), *f))
            .collect();
        let head = JournalSnapshot {
            version: VERSION,
            last_lsn: state.last_lsn,
            committed: state.committed,
            aborted: state.aborted,
            units,
            keys: Vec::new(),
            finished: Vec::new(),
            cursors: state
                .cursors
                .iter()
                .map(|(name, (lsn, value))| SnapCursor {
                    name: name.clone(),
                    lsn: *lsn,
                    value: value.clone(),
                })
                .collect(),
            forgotten_ids: state.forgotten.order.iter().copied().collect(),
            forgotten_units: state.forgotten.units,
            forgotten_keys: state.forgotten.keys,
            commands: state.commands.values().cloned().collect(),
        };
        Frozen {
            head,
            keys,
            finished,
        }
    }

    /// The payload bytes (UTF-8 JSON), the keys oldest settlement first.
    pub(crate) fn encode(self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Writing into a Vec cannot fail.
        self.encode_to(&mut buf)
            .expect("journal snapshots always serialize");
        buf
    }

    /// Writes the payload (UTF-8 JSON) into `w`, the keys oldest settlement
    /// first. Called outside the journal's lock.
    pub(crate) fn encode_to(mut self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.keys.sort_by(|a, b| {
            (a.settled_lsn.unwrap_or(u64::MAX), &a.key)
                .cmp(&(b.settled_lsn.unwrap_or(u64::MAX), &b.key))
        });
        self.finished.sort_unstable_by_key(|f| f.1.lsn);
        let h = &self.head;
        let out = JournalSnapshotRef {
            version: h.version,
            last_lsn: h.last_lsn,
            committed: h.committed,
            aborted: h.aborted,
            units: &h.units,
            keys: Seq(std::cell::Cell::new(Some(
                self.keys.iter().map(|k| key_ref(k)),
            ))),
            finished: Seq(std::cell::Cell::new(Some(self.finished.iter().map(
                |(id, f)| SnapFinishedRef {
                    id,
                    state: f.state,
                    lsn: f.lsn,
                    at_ms: f.at_ms,
                },
            )))),
            cursors: &h.cursors,
            forgotten_ids: &h.forgotten_ids,
            forgotten_units: h.forgotten_units,
            forgotten_keys: h.forgotten_keys,
            commands: &h.commands,
        };
        // Every map key is a string and every number finite: only the
        // writer can fail.
        serde_json::to_writer(w, &out).map_err(std::io::Error::other)
    }
}

/// [`JournalSnapshot`] as written: the same fields, borrowed, the large
/// lists streamed.
#[derive(Serialize)]
struct JournalSnapshotRef<'a, K, F> {
    version: u32,
    last_lsn: u64,
    committed: u64,
    aborted: u64,
    units: &'a [SnapUnit],
    keys: K,
    finished: F,
    cursors: &'a [SnapCursor],
    forgotten_ids: &'a [u64],
    forgotten_units: u64,
    forgotten_keys: u64,
    commands: &'a [AppliedCommand],
}

/// Rebuilds a state from a snapshot payload (version 1 or 2) covering
/// LSNs `..=lsn`. Never panics on bad input.
pub(crate) fn decode(lsn: u64, data: &[u8], keep_finished: bool) -> Result<State> {
    let bad = |reason: String| Error::BadSnapshot { lsn, reason };
    let version = serde_json::from_slice::<VersionOnly>(data)
        .map_err(|e| bad(e.to_string()))?
        .version;
    let mut state = State::new(keep_finished);
    match version {
        1 => {
            let v1: V1 = serde_json::from_slice(data).map_err(|e| bad(e.to_string()))?;
            let s = v1.state;
            // The map key is how replay finds a unit; a unit filed under
            // another id would show up twice (and could be resumed under the
            // wrong id). `min`: the message must not depend on hash order.
            if let Some((k, u)) = s
                .units
                .iter()
                .filter(|(k, u)| **k != u.id)
                .min_by_key(|e| e.0)
            {
                return Err(bad(format!("unit filed under {k:?} has id {:?}", u.id)));
            }
            if let Some((k, e)) = s
                .keys
                .iter()
                .filter(|(k, e)| **k != e.key)
                .min_by_key(|e| e.0)
            {
                return Err(bad(format!(
                    "key entry filed under {k:?} is for key {:?}",
                    e.key
                )));
            }
            state.committed = s.committed;
            state.aborted = s.aborted;
            state.last_lsn = s.last_lsn;
            let mut units: Vec<SnapUnit> = s.units.into_values().collect();
            units.sort_by(|a, b| a.id.cmp(&b.id));
            fill_units(&mut state, units).map_err(bad)?;
            let mut keys: Vec<SnapKey> = s.keys.into_values().collect();
            keys.sort_by(|a, b| a.key.cmp(&b.key));
            fill_keys(&mut state, keys).map_err(bad)?;
            state.finished = s
                .finished
                .into_iter()
                .map(|(id, f)| {
                    (
                        Arc::from(id),
                        Finished {
                            state: f.state,
                            lsn: f.lsn,
                            at_ms: f.at_ms,
                        },
                    )
                })
                .collect();
        }
        VERSION => {
            let v: JournalSnapshot =
                serde_json::from_slice(data).map_err(|e| bad(e.to_string()))?;
            state.committed = v.committed;
            state.aborted = v.aborted;
            state.last_lsn = v.last_lsn;
            fill_units(&mut state, v.units).map_err(bad)?;
            fill_keys(&mut state, v.keys).map_err(bad)?;
            for f in v.finished {
                if state
                    .finished
                    .insert(
                        Arc::from(f.id.as_str()),
                        Finished {
                            state: f.state,
                            lsn: f.lsn,
                            at_ms: f.at_ms,
                        },
                    )
                    .is_some()
                {
                    return Err(bad(format!("finished unit {:?} listed twice", f.id)));
                }
            }
            let mut cursors = BTreeMap::new();
            for c in v.cursors {
                if cursors.insert(c.name.clone(), (c.lsn, c.value)).is_some() {
                    return Err(bad(format!("cursor {:?} listed twice", c.name)));
                }
            }
            state.cursors = cursors;
            let mut forgotten = Forgotten {
                units: v.forgotten_units,
                keys: v.forgotten_keys,
                ..Forgotten::default()
            };
            for h in v.forgotten_ids {
                if forgotten.set.insert(h) {
                    forgotten.order.push_back(h);
                }
            }
            state.forgotten = forgotten;
            for c in v.commands {
                state.remember_command(c);
            }
        }
        other => {
            return Err(bad(format!(
                "payload version {other} is not supported (this build reads 1 and {VERSION}); \
                 open it with the agentwal release that wrote it"
            )))
        }
    }
    if let Some(u) = state
        .units
        .values()
        .filter(|u| u.end.is_some())
        .min_by(|a, b| a.id.cmp(&b.id))
    {
        return Err(bad(format!("snapshot holds a finished unit ({:?})", u.id)));
    }
    state.last_lsn = state.last_lsn.max(lsn);
    state.snapshot_counts = (state.committed, state.aborted);
    Ok(state)
}

fn fill_units(state: &mut State, units: Vec<SnapUnit>) -> std::result::Result<(), String> {
    for u in units {
        let u = unit_from(u);
        if let Some(old) = state.units.insert(u.id.clone(), u) {
            return Err(format!("unit {:?} listed twice", old.id));
        }
    }
    Ok(())
}

fn fill_keys(state: &mut State, keys: Vec<SnapKey>) -> std::result::Result<(), String> {
    for k in keys {
        let k = key_from(k)?;
        if let Some(old) = state.keys.insert(k.key.clone(), Arc::new(k)) {
            return Err(format!("key {:?} listed twice", old.key));
        }
    }
    Ok(())
}

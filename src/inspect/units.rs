//! `units`, `show` and `keys`: the journal's semantics as an operator needs
//! them after an incident: which units are committed, aborted or incomplete,
//! and for each in-doubt effect what may or may not have happened and what a
//! resume will do about it.

use serde::Serialize;

use super::error::{Error, Result};
use super::open::{is_transient_log, Inspection};
use crate::journal::{
    EffectState, EffectView, JournalRecord, JournalView, KeyView, UnitState, UnitView,
};
use crate::log::Lsn;

/// Loads the journal view of an opened journal (snapshot + log after it).
/// A read that races with the owner's compaction (a segment removed under
/// it) is retried on a fresh reader.
pub fn load_view(insp: &Inspection) -> Result<JournalView> {
    let mut attempt = 0;
    let mut result = JournalView::load(insp.reader());
    loop {
        match result {
            Err(crate::journal::Error::Log(ref e)) if is_transient_log(e) && attempt < 3 => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(20 * attempt));
                result = JournalView::load(&insp.fresh_reader()?);
            }
            r => return Ok(r?),
        }
    }
}

/// One row of `units` (one element of the `units --json` array).
#[derive(Debug, Clone, Serialize)]
pub struct UnitRow {
    /// Unit id.
    pub id: String,
    /// Caller-defined kind.
    pub kind: String,
    /// `committed`, `aborted` or `incomplete`.
    pub state: UnitState,
    /// Effects recorded (intent written).
    pub effects: usize,
    /// Effects whose outcome is recorded.
    pub effects_done: usize,
    /// Effects with an intent and no outcome.
    pub effects_in_doubt: usize,
    /// LSN of the latest checkpoint.
    pub last_checkpoint_lsn: Option<Lsn>,
    /// LSN of the begin record.
    pub begin_lsn: Lsn,
    /// LSN of the commit or abort record.
    pub end_lsn: Option<Lsn>,
    /// Approvals asked for and not decided yet.
    pub approvals_pending: usize,
    /// Operator actions recorded for the unit (resolve, abort, approve).
    pub operator_actions: usize,
    /// Who asked for an abort the agent has not finished yet.
    pub abort_requested_by: Option<String>,
}

impl From<&UnitView> for UnitRow {
    fn from(u: &UnitView) -> Self {
        UnitRow {
            id: u.id.clone(),
            kind: u.kind.clone(),
            state: u.state,
            effects: u.effects.len(),
            effects_done: u.effects_done(),
            effects_in_doubt: u.effects_in_doubt(),
            last_checkpoint_lsn: u.last_checkpoint_lsn,
            begin_lsn: u.begin_lsn,
            end_lsn: u.end_lsn,
            approvals_pending: u.approvals.iter().filter(|a| a.status == "pending").count(),
            operator_actions: u.operator_actions.len(),
            abort_requested_by: u.abort_requested_by.clone(),
        }
    }
}

/// The units of a view, optionally only those in `state`, in begin order.
pub fn units(view: &JournalView, state: Option<UnitState>) -> Vec<UnitRow> {
    view.units
        .iter()
        .filter(|u| state.is_none_or(|s| u.state == s))
        .map(UnitRow::from)
        .collect()
}

/// One effect of `show`, with its explanation.
#[derive(Debug, Clone, Serialize)]
pub struct EffectDetail {
    /// The effect as the journal sees it.
    #[serde(flatten)]
    pub effect: EffectView,
    /// True when the effect may or may not have happened.
    pub in_doubt: bool,
    /// What the state means and what a resume will do, in plain words.
    pub explanation: String,
}

/// One record of a unit's history.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    /// LSN of the record.
    pub lsn: Lsn,
    /// Record type (`unit_begin`, `effect_intent`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// The decoded record (with `at` and `age` added next to its `at_ms`).
    pub record: serde_json::Value,
    /// When the record was written (RFC 3339, UTC), from its `at_ms`.
    pub at: Option<String>,
    /// How long before this inspection that was (`3m 12s ago`).
    pub age: Option<String>,
}

/// The `show` report: a unit's full history, effect by effect.
#[derive(Debug, Clone, Serialize)]
pub struct UnitDetail {
    /// Unit id.
    pub id: String,
    /// Caller-defined kind.
    pub kind: String,
    /// `committed`, `aborted` or `incomplete`.
    pub state: UnitState,
    /// LSN of the begin record.
    pub begin_lsn: Lsn,
    /// LSN of the commit or abort record.
    pub end_lsn: Option<Lsn>,
    /// LSN of the latest checkpoint.
    pub last_checkpoint_lsn: Option<Lsn>,
    /// Effects whose outcome is recorded.
    pub effects_done: usize,
    /// Effects with an intent and no outcome.
    pub effects_in_doubt: usize,
    /// The unit's state in plain words.
    pub summary: String,
    /// Every effect, explained.
    pub effects: Vec<EffectDetail>,
    /// Approvals the unit asked for, with their decisions.
    pub approvals: Vec<crate::journal::ApprovalView>,
    /// Operator actions on the unit (who, when, why), in order.
    pub operator_actions: Vec<crate::journal::OperatorView>,
    /// Who asked for an abort the agent has not finished yet.
    pub abort_requested_by: Option<String>,
    /// Every record of the unit still in the log, in LSN order.
    pub history: Vec<HistoryEntry>,
    /// A remark about the history (for example records folded into a snapshot).
    pub note: Option<String>,
}

/// Builds the `show` report for unit `id`.
pub fn show(insp: &Inspection, view: &JournalView, id: &str) -> Result<UnitDetail> {
    let Some(u) = view.units.iter().find(|u| u.id == id) else {
        let compacted = view.compacted_committed + view.compacted_aborted;
        let keys: Vec<&str> = view
            .keys
            .iter()
            .filter(|k| k.unit == id)
            .map(|k| k.key.as_str())
            .collect();
        let hint = if !keys.is_empty() {
            format!(
                ": it finished before the snapshot at LSN {} and was compacted; its settled keys are still known: {} (see `wal-inspect keys`)",
                view.snapshot_lsn,
                keys.join(", ")
            )
        } else if compacted > 0 {
            format!(
                "; {compacted} finished unit(s) were compacted into the snapshot at LSN {} and are only counted; `wal-inspect units` lists the others",
                view.snapshot_lsn
            )
        } else {
            "; `wal-inspect units` lists the ids".to_string()
        };
        return Err(Error::UnitNotFound {
            id: id.to_string(),
            dir: insp.dir().to_path_buf(),
            hint,
        });
    };
    let reader = insp.reader();
    let from = reader.snapshot().map_or(1, |s| s.lsn + 1);
    let mut history = Vec::new();
    let now = super::time::now_ms();
    for rec in reader.iter_from(from) {
        let rec = rec?;
        if !JournalRecord::is_journal_kind(rec.kind) {
            continue;
        }
        // Records this build cannot decode were already rejected by the view.
        let Ok(j) = JournalRecord::decode(rec.kind, rec.payload()) else {
            continue;
        };
        if j.unit() == id {
            let mut record = serde_json::to_value(&j).unwrap_or(serde_json::Value::Null);
            let at_ms = record.get("at_ms").and_then(serde_json::Value::as_u64);
            super::time::annotate(&mut record, now);
            history.push(HistoryEntry {
                lsn: rec.lsn,
                kind: j.type_name().to_string(),
                record,
                at: at_ms.map(super::time::rfc3339),
                age: at_ms.map(|ms| super::time::age(ms, now)),
            });
        }
    }
    let note = (history.first().map(|h| h.lsn) != Some(u.begin_lsn)).then(|| {
        format!(
            "records before LSN {from} are folded into the snapshot; the history shown starts after it"
        )
    });
    Ok(UnitDetail {
        id: u.id.clone(),
        kind: u.kind.clone(),
        state: u.state,
        begin_lsn: u.begin_lsn,
        end_lsn: u.end_lsn,
        last_checkpoint_lsn: u.last_checkpoint_lsn,
        effects_done: u.effects_done(),
        effects_in_doubt: u.effects_in_doubt(),
        summary: unit_summary(u),
        effects: u
            .effects
            .iter()
            .map(|e| EffectDetail {
                effect: e.clone(),
                in_doubt: e.state == EffectState::InDoubt,
                explanation: explain(e),
            })
            .collect(),
        approvals: u.approvals.clone(),
        operator_actions: u.operator_actions.clone(),
        abort_requested_by: u.abort_requested_by.clone(),
        history,
        note,
    })
}

fn unit_summary(u: &UnitView) -> String {
    match u.state {
        UnitState::Committed => format!(
            "committed at LSN {}: every effect is settled; nothing of this unit runs again",
            u.end_lsn.map_or_else(|| "?".into(), |l| l.to_string())
        ),
        UnitState::Aborted => format!(
            "aborted at LSN {}: rolled back (completed effects compensated in reverse order); nothing of this unit runs again",
            u.end_lsn.map_or_else(|| "?".into(), |l| l.to_string())
        ),
        UnitState::Incomplete if u.abort_requested_by.is_some() => format!(
            "ABORT REQUESTED by {}: the agent will not run it again; its rollback (compensations, then the abort record) runs in the agent (Journal::rollback)",
            u.abort_requested_by.as_deref().unwrap_or("?")
        ),
        UnitState::Incomplete => {
            let doubt = u.effects_in_doubt();
            let resume = match u.last_checkpoint_lsn {
                Some(l) => format!("a resume continues from the checkpoint at LSN {l}"),
                None => "a resume runs the unit again from its start".into(),
            };
            format!(
                "INCOMPLETE: began at LSN {}, no commit or abort; {} effect(s) done, {doubt} in doubt; {resume}, \
                 returning recorded results for done effects without running them{}",
                u.begin_lsn,
                u.effects_done(),
                if doubt > 0 {
                    "; in-doubt effects follow their policy (below)"
                } else {
                    ""
                }
            )
        }
    }
}

/// Plain-words explanation of an effect's state and what a resume does.
pub fn explain(e: &EffectView) -> String {
    let outcome = e.outcome_lsn.map_or_else(|| "?".into(), |l| l.to_string());
    match e.state {
        EffectState::Completed => format!(
            "completed: outcome recorded at LSN {outcome}; never runs again under key {}, a resume gets the recorded result",
            e.key
        ),
        EffectState::Failed => format!(
            "failed: the error was recorded at LSN {outcome}; a resume gets the recorded error back (key {})",
            e.key
        ),
        EffectState::Compensated => format!(
            "completed (outcome at LSN {outcome}), then compensated by a rollback; never runs again under key {}",
            e.key
        ),
        EffectState::NotHappened => format!(
            "NOT HAPPENED: in doubt, then an operator declared it did not take effect ({}); a resume runs it again with the same key {}",
            e.operator.as_deref().unwrap_or("?"),
            e.key
        ),
        EffectState::InDoubt if e.last_error.is_some() => format!(
            "RETRYING: attempt {} failed with a transient error ({}) and its retry had not started; a resume waits out the rest of the backoff and runs attempt {} with the same key {}",
            e.attempts,
            e.last_error.as_deref().unwrap_or("?"),
            e.attempts + 1,
            e.key
        ),
        EffectState::InDoubt => {
            // Facts only: the journal knows the name, the key, the policy and
            // that an intent was recorded without an outcome; it does not
            // know what the effect does, so it does not guess from its name.
            let what = format!(
                "IN DOUBT: intent recorded at LSN {}, no outcome: step #{} `{}` may or may not have taken effect (the process stopped after recording its intent and before recording its outcome)",
                e.intent_lsn, e.seq, e.name
            );
            let policy = match e.policy.as_str() {
                "retry_same_key" => format!(
                    "policy retry_same_key will run it again with the same key {} on resume, so a receiver that de-duplicates by key sees it once",
                    e.key
                ),
                "reconcile" => format!(
                    "policy reconcile will first ask the unit's probe whether key {} took effect, record the answer, and run it again only if it did not",
                    e.key
                ),
                "never_repeat" => format!(
                    "policy never_repeat will NOT run it again: resuming fails with an in-doubt error until an operator checks whether key {} took effect and resolves or rolls back the unit",
                    e.key
                ),
                other => format!("policy {other} (unknown to this build) decides on resume; key {}", e.key),
            };
            format!("{what}; {policy}")
        }
    }
}

/// The `keys` report: the idempotency key index.
pub fn keys(view: &JournalView) -> Vec<KeyView> {
    view.keys.clone()
}

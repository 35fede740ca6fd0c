//! The journal's record types and their encoding in log records.
//!
//! Every journal record is one log record: the log's `kind` byte is the
//! record type ([`JournalRecord::kind`], always in `1..=31`, the range the log
//! reserves for the journal) and the payload is the record as UTF-8 JSON,
//! an object whose `"type"` field repeats the type in `snake_case`
//! (`unit_begin`, `effect_intent`, ...). See `docs/journal.md`, section
//! "Journal records", for the byte-level description.
//!
//! Log records of kind `0` or `32..=255` are not the journal's: replay skips
//! them. A kind in `1..=31` that this build does not know is an error
//! ([`Error::UnknownRecordKind`]): it was written by a newer version.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::Error;

/// Record kind of [`JournalRecord::UnitBegin`].
pub const KIND_UNIT_BEGIN: u8 = 1;
/// Record kind of [`JournalRecord::EffectIntent`].
pub const KIND_EFFECT_INTENT: u8 = 2;
/// Record kind of [`JournalRecord::EffectOutcome`].
pub const KIND_EFFECT_OUTCOME: u8 = 3;
/// Record kind of [`JournalRecord::Checkpoint`].
pub const KIND_CHECKPOINT: u8 = 4;
/// Record kind of [`JournalRecord::Commit`].
pub const KIND_COMMIT: u8 = 5;
/// Record kind of [`JournalRecord::Abort`].
pub const KIND_ABORT: u8 = 6;
/// Record kind of [`JournalRecord::CompensationIntent`].
pub const KIND_COMPENSATION_INTENT: u8 = 7;
/// Record kind of [`JournalRecord::CompensationOutcome`].
pub const KIND_COMPENSATION_OUTCOME: u8 = 8;
/// Record kind of [`JournalRecord::Cursor`].
pub const KIND_CURSOR: u8 = 9;
/// Record kind of [`JournalRecord::AttemptFailed`].
pub const KIND_ATTEMPT_FAILED: u8 = 10;
/// Record kind of [`JournalRecord::AttemptStarted`].
pub const KIND_ATTEMPT_STARTED: u8 = 11;
/// Record kind of [`JournalRecord::Operator`].
pub const KIND_OPERATOR: u8 = 12;
/// Record kind of [`JournalRecord::ApprovalRequest`].
pub const KIND_APPROVAL_REQUEST: u8 = 13;
/// Record kind of [`JournalRecord::UnitCode`].
pub const KIND_UNIT_CODE: u8 = 14;
/// Lowest log record kind owned by the journal.
pub const JOURNAL_KIND_MIN: u8 = 1;
/// Highest log record kind owned by the journal.
pub const JOURNAL_KIND_MAX: u8 = 31;

/// What to do with an effect whose intent is durable but whose outcome is
/// not (the process died while it ran, or before its outcome was recorded).
///
/// There is no default: every effect names its policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// Run the effect again with the same idempotency key (at-least-once;
    /// the receiver de-duplicates by key).
    RetrySameKey,
    /// Ask a caller-supplied probe whether the effect happened; record the answer.
    Reconcile,
    /// Never run it again: the unit fails with [`Error::InDoubt`] and stays
    /// incomplete until an operator resolves or rolls it back (at-most-once).
    NeverRepeat,
}

impl PolicyKind {
    /// The policy's name as written in records and shown by `wal-inspect`:
    /// `"retry_same_key"`, `"reconcile"` or `"never_repeat"`.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::RetrySameKey => "retry_same_key",
            PolicyKind::Reconcile => "reconcile",
            PolicyKind::NeverRepeat => "never_repeat",
        }
    }
}

impl std::fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The recorded result of an effect or a compensation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// It succeeded with this (serde JSON) value.
    Ok {
        /// The result.
        value: Value,
    },
    /// It failed; the error's message.
    Err {
        /// The error, as text.
        message: String,
    },
}

impl Outcome {
    /// True for [`Outcome::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok { .. })
    }
}

/// How an effect's outcome was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeVia {
    /// The effect ran once, normally.
    #[default]
    Run,
    /// The effect was in doubt and ran again with the same key (`retry_same_key`,
    /// or `reconcile` when the probe said it had not happened).
    Retry,
    /// The `reconcile` probe reported that the in-doubt effect had happened.
    Reconcile,
    /// The key had already been settled (possibly by another unit): the
    /// recorded result was reused and the effect did not run.
    KeyIndex,
    /// An operator resolved the in-doubt effect by hand.
    Operator,
}

/// What an operator decided ([`JournalRecord::Operator`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum OperatorAction {
    /// An in-doubt effect is settled by hand.
    Resolve {
        /// The step.
        seq: u32,
        /// True: it happened (with `result`); false: it did not happen and
        /// the unit may run it again with the same key.
        happened: bool,
        /// The result handed to the resumed unit when it happened.
        result: Option<Value>,
    },
    /// The unit is to be abandoned; compensations (if any) run in the agent.
    Abort,
    /// A pending approval is decided.
    Approve {
        /// The approval's name.
        name: String,
        /// True: approved; false: rejected.
        approved: bool,
    },
}

/// One journal record. The `unit` field always names the unit it belongs to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JournalRecord {
    /// A unit starts: its intent.
    UnitBegin {
        /// Unit id (chosen by the caller).
        unit: String,
        /// Caller-defined unit kind (for example `"record"`).
        kind: String,
        /// Caller payload describing the work.
        payload: Value,
        /// Wall clock, milliseconds since the Unix epoch.
        at_ms: u64,
    },
    /// An effect is about to run. Durable before the effect's code runs.
    EffectIntent {
        /// Unit id.
        unit: String,
        /// Position of the effect in its unit (0, 1, ...).
        seq: u32,
        /// Effect name.
        name: String,
        /// Idempotency key.
        key: String,
        /// In-doubt policy.
        policy: PolicyKind,
        /// Whether a compensation exists for rollback.
        compensable: bool,
    },
    /// An effect's result (or error), appended after it ran.
    EffectOutcome {
        /// Unit id.
        unit: String,
        /// Position of the effect in its unit.
        seq: u32,
        /// Idempotency key (repeated so the key index needs no lookup).
        key: String,
        /// The result.
        outcome: Outcome,
        /// How the result was obtained.
        #[serde(default)]
        via: OutcomeVia,
        /// Wall clock, milliseconds since the Unix epoch.
        at_ms: u64,
    },
    /// Caller state so that a resumed unit can continue mid-way.
    Checkpoint {
        /// Unit id.
        unit: String,
        /// Caller state.
        state: Value,
    },
    /// The unit finished successfully.
    Commit {
        /// Unit id.
        unit: String,
        /// Wall clock, milliseconds since the Unix epoch.
        at_ms: u64,
    },
    /// The unit was abandoned (after its compensations, if any, ran).
    Abort {
        /// Unit id.
        unit: String,
        /// Why.
        reason: String,
        /// Wall clock, milliseconds since the Unix epoch.
        at_ms: u64,
    },
    /// The compensation of effect `seq` is about to run (rollback).
    CompensationIntent {
        /// Unit id.
        unit: String,
        /// The effect being compensated.
        seq: u32,
        /// Idempotency key of the compensation (`<effect key>/compensate`).
        key: String,
    },
    /// The compensation of effect `seq` ran.
    CompensationOutcome {
        /// Unit id.
        unit: String,
        /// The effect compensated.
        seq: u32,
        /// Its result.
        outcome: Outcome,
    },
    /// A named durable position (for example the next item of a batch),
    /// kept across compaction; the newest value wins. Not a unit.
    Cursor {
        /// The cursor's name.
        name: String,
        /// Its value.
        value: Value,
        /// Wall clock, milliseconds since the Unix epoch.
        at_ms: u64,
    },
    /// Attempt `attempt` of effect `seq` failed with a transient error (or
    /// the step said it did not happen); durable before the backoff.
    AttemptFailed {
        /// Unit id.
        unit: String,
        /// The step.
        seq: u32,
        /// The attempt that failed (1 = the first run).
        attempt: u32,
        /// The error.
        message: String,
        /// True when the step reported that the attempt did not happen.
        not_happened: bool,
        /// The next attempt starts no earlier than this (ms since the epoch).
        retry_at_ms: u64,
        /// No attempt starts after this (ms since the epoch), if bounded.
        deadline_ms: Option<u64>,
        /// True when the policy gave up and left the effect in doubt.
        gave_up: bool,
        /// Wall clock, milliseconds since the Unix epoch.
        at_ms: u64,
    },
    /// Attempt `attempt` (2 or more) of effect `seq` starts; durable before it runs.
    AttemptStarted {
        /// Unit id.
        unit: String,
        /// The step.
        seq: u32,
        /// The attempt number.
        attempt: u32,
        /// Wall clock, milliseconds since the Unix epoch.
        at_ms: u64,
    },
    /// An operator's decision (`wal-inspect resolve|abort|approve` or the
    /// same library calls), attributed.
    Operator {
        /// Unit id.
        unit: String,
        /// What was decided.
        #[serde(flatten)]
        action: OperatorAction,
        /// Who decided.
        by: String,
        /// Why (free text, may be empty).
        reason: String,
        /// Wall clock, milliseconds since the Unix epoch.
        at_ms: u64,
        /// The id of the operator-inbox command that carried the decision
        /// (absent for a direct library call): a command applied again
        /// after the owner crashed before replying is recognized by it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        command: Option<String>,
    },
    /// The code that began the unit: its version and the patches it knows
    /// (written with the unit's begin when [`super::Journal::set_code`] was
    /// called).
    UnitCode {
        /// Unit id.
        unit: String,
        /// The code version (free text, e.g. a git describe).
        version: String,
        /// Patches this code knows ([`super::Unit::patched`]).
        patches: Vec<String>,
    },
    /// The unit asks a human for approval `name`, showing `payload`.
    ApprovalRequest {
        /// Unit id.
        unit: String,
        /// The approval's name (unique within the unit).
        name: String,
        /// What the approver is shown.
        payload: Value,
        /// Wall clock, milliseconds since the Unix epoch.
        at_ms: u64,
    },
}

impl JournalRecord {
    /// The log record kind this record is stored under (`1..=31`).
    pub fn kind(&self) -> u8 {
        match self {
            JournalRecord::UnitBegin { .. } => KIND_UNIT_BEGIN,
            JournalRecord::EffectIntent { .. } => KIND_EFFECT_INTENT,
            JournalRecord::EffectOutcome { .. } => KIND_EFFECT_OUTCOME,
            JournalRecord::Checkpoint { .. } => KIND_CHECKPOINT,
            JournalRecord::Commit { .. } => KIND_COMMIT,
            JournalRecord::Abort { .. } => KIND_ABORT,
            JournalRecord::CompensationIntent { .. } => KIND_COMPENSATION_INTENT,
            JournalRecord::CompensationOutcome { .. } => KIND_COMPENSATION_OUTCOME,
            JournalRecord::Cursor { .. } => KIND_CURSOR,
            JournalRecord::AttemptFailed { .. } => KIND_ATTEMPT_FAILED,
            JournalRecord::AttemptStarted { .. } => KIND_ATTEMPT_STARTED,
            JournalRecord::Operator { .. } => KIND_OPERATOR,
            JournalRecord::ApprovalRequest { .. } => KIND_APPROVAL_REQUEST,
            JournalRecord::UnitCode { .. } => KIND_UNIT_CODE,
        }
    }

    /// The record type as written in the `"type"` field.
    pub fn type_name(&self) -> &'static str {
        match self {
            JournalRecord::UnitBegin { .. } => "unit_begin",
            JournalRecord::EffectIntent { .. } => "effect_intent",
            JournalRecord::EffectOutcome { .. } => "effect_outcome",
            JournalRecord::Checkpoint { .. } => "checkpoint",
            JournalRecord::Commit { .. } => "commit",
            JournalRecord::Abort { .. } => "abort",
            JournalRecord::CompensationIntent { .. } => "compensation_intent",
            JournalRecord::CompensationOutcome { .. } => "compensation_outcome",
            JournalRecord::Cursor { .. } => "cursor",
            JournalRecord::AttemptFailed { .. } => "attempt_failed",
            JournalRecord::AttemptStarted { .. } => "attempt_started",
            JournalRecord::Operator { .. } => "operator",
            JournalRecord::ApprovalRequest { .. } => "approval_request",
            JournalRecord::UnitCode { .. } => "unit_code",
        }
    }

    /// The unit this record belongs to (for a [`JournalRecord::Cursor`],
    /// the cursor's name).
    pub fn unit(&self) -> &str {
        match self {
            JournalRecord::UnitBegin { unit, .. }
            | JournalRecord::EffectIntent { unit, .. }
            | JournalRecord::EffectOutcome { unit, .. }
            | JournalRecord::Checkpoint { unit, .. }
            | JournalRecord::Commit { unit, .. }
            | JournalRecord::Abort { unit, .. }
            | JournalRecord::CompensationIntent { unit, .. }
            | JournalRecord::CompensationOutcome { unit, .. }
            | JournalRecord::AttemptFailed { unit, .. }
            | JournalRecord::AttemptStarted { unit, .. }
            | JournalRecord::Operator { unit, .. }
            | JournalRecord::ApprovalRequest { unit, .. }
            | JournalRecord::UnitCode { unit, .. } => unit,
            JournalRecord::Cursor { name, .. } => name,
        }
    }

    /// True when `kind` belongs to the journal (`1..=31`).
    pub fn is_journal_kind(kind: u8) -> bool {
        (JOURNAL_KIND_MIN..=JOURNAL_KIND_MAX).contains(&kind)
    }

    /// Encodes the record as the payload of a log record of kind
    /// [`JournalRecord::kind`] (UTF-8 JSON).
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these types to JSON cannot fail: every map key is a string.
        serde_json::to_vec(self).expect("journal records always serialize")
    }

    /// Decodes a log record's `kind` and `payload`. Never panics; an unknown
    /// journal kind, invalid JSON or a `"type"` that does not match `kind`
    /// is an error.
    ///
    /// ```
    /// use agentwal::journal::JournalRecord;
    /// let rec = JournalRecord::Commit { unit: "u1".into(), at_ms: 5 };
    /// let back = JournalRecord::decode(rec.kind(), &rec.encode()).unwrap();
    /// assert_eq!(back, rec);
    /// assert!(JournalRecord::decode(6, &rec.encode()).is_err()); // kind mismatch
    /// ```
    pub fn decode(kind: u8, payload: &[u8]) -> Result<JournalRecord, Error> {
        if !(KIND_UNIT_BEGIN..=KIND_CURSOR).contains(&kind)
            && !(KIND_ATTEMPT_FAILED..=KIND_UNIT_CODE).contains(&kind)
        {
            return Err(Error::UnknownRecordKind { kind });
        }
        let rec: JournalRecord = serde_json::from_slice(payload).map_err(|e| Error::BadRecord {
            kind,
            reason: e.to_string(),
        })?;
        if rec.kind() != kind {
            return Err(Error::BadRecord {
                kind,
                reason: format!(
                    "payload is a {} record (kind {}), stored under kind {kind}",
                    rec.type_name(),
                    rec.kind()
                ),
            });
        }
        Ok(rec)
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<JournalRecord> {
        let unit = "u".to_string();
        vec![
            JournalRecord::UnitBegin {
                unit: unit.clone(),
                kind: "k".into(),
                payload: serde_json::json!({"a": 1}),
                at_ms: 1,
            },
            JournalRecord::EffectIntent {
                unit: unit.clone(),
                seq: 0,
                name: "send".into(),
                key: "u/send/0".into(),
                policy: PolicyKind::Reconcile,
                compensable: true,
            },
            JournalRecord::EffectOutcome {
                unit: unit.clone(),
                seq: 0,
                key: "u/send/0".into(),
                outcome: Outcome::Err {
                    message: "no".into(),
                },
                via: OutcomeVia::Retry,
                at_ms: 2,
            },
            JournalRecord::Checkpoint {
                unit: unit.clone(),
                state: serde_json::json!([1, 2]),
            },
            JournalRecord::Commit {
                unit: unit.clone(),
                at_ms: 3,
            },
            JournalRecord::Abort {
                unit: unit.clone(),
                reason: "r".into(),
                at_ms: 4,
            },
            JournalRecord::CompensationIntent {
                unit: unit.clone(),
                seq: 0,
                key: "u/send/0/compensate".into(),
            },
            JournalRecord::CompensationOutcome {
                unit: unit.clone(),
                seq: 0,
                outcome: Outcome::Ok { value: Value::Null },
            },
            JournalRecord::AttemptFailed {
                unit: unit.clone(),
                seq: 0,
                attempt: 1,
                message: "429".into(),
                not_happened: false,
                retry_at_ms: 9,
                deadline_ms: Some(99),
                gave_up: false,
                at_ms: 5,
            },
            JournalRecord::AttemptStarted {
                unit: unit.clone(),
                seq: 0,
                attempt: 2,
                at_ms: 6,
            },
            JournalRecord::Operator {
                unit: unit.clone(),
                action: OperatorAction::Resolve {
                    seq: 0,
                    happened: true,
                    result: Some(serde_json::json!({"id": 3})),
                },
                by: "alice".into(),
                reason: "checked the bank".into(),
                at_ms: 7,
                command: Some("000001764662400000-42-0".into()),
            },
            JournalRecord::UnitCode {
                unit: unit.clone(),
                version: "v2".into(),
                patches: vec!["fraud-check".into()],
            },
            JournalRecord::ApprovalRequest {
                unit,
                name: "refund".into(),
                payload: serde_json::json!({"amount": 5}),
                at_ms: 8,
            },
        ]
    }

    #[test]
    fn every_record_round_trips_under_its_own_kind_only() {
        let all = samples();
        let kinds: std::collections::HashSet<u8> = all.iter().map(|r| r.kind()).collect();
        assert_eq!(kinds.len(), all.len(), "kinds are distinct");
        for rec in &all {
            let bytes = rec.encode();
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["type"], rec.type_name());
            assert_eq!(v["unit"], "u");
            assert_eq!(JournalRecord::decode(rec.kind(), &bytes).unwrap(), *rec);
            for other in 0..=255u8 {
                if other != rec.kind() {
                    assert!(JournalRecord::decode(other, &bytes).is_err());
                }
            }
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for payload in [
            &b""[..],
            b"{",
            b"null",
            b"{\"type\":\"commit\"}",
            &[0xff; 64],
        ] {
            assert!(JournalRecord::decode(KIND_COMMIT, payload).is_err());
        }
        assert!(matches!(
            JournalRecord::decode(20, b"{}"),
            Err(Error::UnknownRecordKind { kind: 20 })
        ));
    }
}

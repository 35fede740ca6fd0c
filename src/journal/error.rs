//! Errors of the journal layer: the semantic cases (mismatch, in doubt,
//! oversized payload, ...) plus the log's errors wrapped unchanged.

/// Result type of the journal layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the journal layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The log below failed (I/O, corruption, poisoned after a failed sync, ...).
    #[error(transparent)]
    Log(#[from] crate::log::Error),

    /// A payload (unit payload, checkpoint state or effect result) is larger
    /// than the configured limit. Nothing was written for it; retrying the
    /// same call fails again.
    #[error("unit {unit:?}: {what} of {size} bytes exceeds the payload limit of {limit} bytes; nothing was written for it")]
    PayloadTooLarge {
        /// The unit.
        unit: String,
        /// Which payload ("unit payload", "checkpoint", "result of effect 'x'").
        what: String,
        /// Its encoded size.
        size: u64,
        /// The configured limit.
        limit: u64,
    },

    /// A caller value could not be encoded as JSON.
    #[error("unit {unit:?}: cannot encode {what} as JSON: {reason}")]
    Encode {
        /// The unit.
        unit: String,
        /// Which value.
        what: String,
        /// The serde error.
        reason: String,
    },

    /// A log record of a journal kind could not be decoded.
    #[error("journal record of kind {kind} is invalid: {reason}")]
    BadRecord {
        /// The log record kind.
        kind: u8,
        /// What is wrong with it.
        reason: String,
    },

    /// The journal record at `lsn` could not be decoded (the log's checksum
    /// was valid, so it was written this way: a bug or a foreign writer).
    #[error("journal record at LSN {lsn} (kind {kind}) is invalid: {reason}")]
    BadRecordAt {
        /// Its LSN.
        lsn: u64,
        /// The log record kind.
        kind: u8,
        /// What is wrong with it.
        reason: String,
    },

    /// A log record has a journal kind (1..=31) this build does not know:
    /// the journal was written by a newer version of agentwal.
    #[error("journal record kind {kind} is unknown to this version; upgrade agentwal to read this journal")]
    UnknownRecordKind {
        /// The kind byte.
        kind: u8,
    },

    /// A record at `lsn` contradicts the journal's history (for example an
    /// outcome for an effect that has no intent).
    #[error("journal history is inconsistent at LSN {lsn} (unit {unit:?}): {reason}")]
    Inconsistent {
        /// LSN of the offending record.
        lsn: u64,
        /// The unit it names.
        unit: String,
        /// What does not fit.
        reason: String,
    },

    /// The journal snapshot payload cannot be read.
    #[error("journal snapshot at LSN {lsn} is invalid: {reason}")]
    BadSnapshot {
        /// The snapshot's LSN.
        lsn: u64,
        /// Why.
        reason: String,
    },

    /// The unit already ended (committed or aborted); it cannot be begun or
    /// changed again.
    #[error("unit {unit:?} already ended ({state}); it will not run again")]
    UnitFinished {
        /// The unit.
        unit: String,
        /// "committed" or "aborted".
        state: &'static str,
    },

    /// The unit finished long enough ago that the retention policy dropped
    /// its id (only a hash of it is left): whether it committed or aborted
    /// is no longer known, and its idempotency keys may be gone too, so
    /// beginning it again could repeat its effects. Use a new id, or keep ids
    /// longer (`JournalOptions::retention`), or track progress with a
    /// durable cursor (`Journal::set_cursor`).
    #[error("unit {unit:?} finished and its id was dropped by the retention policy ({retention}); beginning it again could repeat its effects, so it is refused: use a new unit id, raise the retention, or resume from a durable cursor")]
    UnitForgotten {
        /// The unit.
        unit: String,
        /// The retention in force, described.
        retention: String,
    },

    /// Another handle in this process is working on the unit right now.
    #[error(
        "unit {unit:?} is already open in this process; finish or drop the other handle first"
    )]
    UnitBusy {
        /// The unit.
        unit: String,
    },

    /// No incomplete unit with this id is known.
    #[error("no incomplete unit {unit:?} in the journal")]
    UnknownUnit {
        /// The unit.
        unit: String,
    },

    /// On resume the code asked for a different effect than the journal
    /// recorded at this step. The recorded result is not handed out.
    #[error("unit {unit:?}, step {step}: the code asks for effect {requested:?} but the journal recorded {recorded:?} at this step; the unit's code changed since it started")]
    EffectMismatch {
        /// The unit.
        unit: String,
        /// The step (effect sequence number, from 0).
        step: u32,
        /// What the journal holds (name, and key when the keys differ).
        recorded: String,
        /// What the code asked for.
        requested: String,
    },

    /// An idempotency key is recorded for another effect (another name, in
    /// this unit or another one). A key belongs to one effect: its recorded
    /// result is never handed to a different effect, and nothing runs.
    #[error("unit {unit:?}, step {step}: effect {effect:?} uses idempotency key {key:?}, which the journal records for {recorded}; a key belongs to one effect, so nothing ran and no result is handed over (give the effect its own key)")]
    KeyConflict {
        /// The unit asking.
        unit: String,
        /// Its step.
        step: u32,
        /// The effect name asked for.
        effect: String,
        /// The idempotency key.
        key: String,
        /// The effect the key is recorded for: `effect "<name>" of unit "<id>"`.
        recorded: String,
    },

    /// Another live unit of this process is executing (or probing) the
    /// effect with this idempotency key right now. Nothing was written and
    /// nothing ran; retry once that unit has recorded its outcome (the
    /// result is then reused from the key index).
    #[error("unit {unit:?}, step {step}: idempotency key {key:?} (effect {effect:?}) is being executed by unit {holder:?} in this process right now; nothing ran, retry later")]
    KeyBusy {
        /// The unit asking.
        unit: String,
        /// Its step.
        step: u32,
        /// The effect name asked for.
        effect: String,
        /// The idempotency key.
        key: String,
        /// The live unit executing it.
        holder: String,
    },

    /// The unit is rolling back: a compensation intent is recorded for one
    /// of its effects, so some effect may already be undone. Only finishing
    /// the rollback ([`crate::journal::Unit::rollback`] or
    /// [`crate::journal::Journal::rollback`]) is possible; running effects
    /// and committing are refused.
    #[error("unit {unit:?} is rolling back (a compensation of step {step} is recorded, so it may already be undone): {action} is refused; finish the rollback instead")]
    RollingBack {
        /// The unit.
        unit: String,
        /// The first step with a recorded compensation intent.
        step: u32,
        /// What was refused (`"run"` or `"commit"`).
        action: &'static str,
    },

    /// Commit refused: the journal records more steps for this resumed unit
    /// than the code replayed, so the code would commit over effects it no
    /// longer knows. Replay every recorded step (run them again in order:
    /// their recorded results come back), or roll the unit back.
    #[error("unit {unit:?}: commit refused: the journal records {recorded} steps but the code asked for only {replayed}; steps {replayed}..{recorded} are unknown to the code (it changed since the unit started); replay them or roll the unit back")]
    UnreplayedSteps {
        /// The unit.
        unit: String,
        /// Steps the code asked for.
        replayed: u32,
        /// Steps the journal records.
        recorded: u32,
    },

    /// The effect **ran**, but its result is larger than the payload limit.
    /// A failed outcome carrying this reason was recorded in its place (so
    /// the effect is never run again); the result itself was not saved.
    #[error("unit {unit:?}, step {step}: effect {effect:?} (key {key:?}) ran, but its result of {size} bytes exceeds the payload limit of {limit} bytes; it is recorded as failed with this reason (it will not run again) and the result was not saved; raise JournalOptions::max_payload_bytes")]
    ResultTooLarge {
        /// The unit.
        unit: String,
        /// The step.
        step: u32,
        /// Effect name.
        effect: String,
        /// Idempotency key.
        key: String,
        /// The result's encoded size.
        size: u64,
        /// The configured limit.
        limit: u64,
    },

    /// The effect **ran**, but its result would not replay: its JSON encoding
    /// does not read back as the same value (`f64::NAN` encodes as `null`),
    /// or it cannot be encoded at all. A failed outcome carrying this reason
    /// was recorded in its place (so the effect is never run again).
    #[error("unit {unit:?}, step {step}: effect {effect:?} (key {key:?}) ran, but its result {reason}; it is recorded as failed with this reason instead (it will not run again)")]
    ResultNotReplayable {
        /// The unit.
        unit: String,
        /// The step.
        step: u32,
        /// Effect name.
        effect: String,
        /// Idempotency key.
        key: String,
        /// What would have been recorded (the JSON, clipped) and why it does
        /// not replay, for example `would be recorded as null, which does
        /// not read back as the effect's result type (...)`.
        reason: String,
    },

    /// A `never_repeat` effect is in doubt: it may or may not have happened.
    /// The unit stays incomplete; an operator must resolve or roll it back.
    #[error("unit {unit:?}, step {step}: effect {effect:?} (key {key:?}, policy never_repeat) is in doubt: it may have happened before the crash; it will not run again, resolve it by hand or roll the unit back")]
    InDoubt {
        /// The unit.
        unit: String,
        /// The step.
        step: u32,
        /// Effect name.
        effect: String,
        /// Idempotency key.
        key: String,
    },

    /// The effect failed (now, or in a recorded earlier run); the failure is
    /// recorded and the effect is not run again.
    #[error("unit {unit:?}, step {step}: effect {effect:?} failed: {message}")]
    EffectFailed {
        /// The unit.
        unit: String,
        /// The step.
        step: u32,
        /// Effect name.
        effect: String,
        /// The error's text.
        message: String,
    },

    /// A `reconcile` probe failed; the effect stays in doubt.
    #[error("unit {unit:?}, step {step}: reconcile probe of effect {effect:?} failed: {message}; the effect stays in doubt")]
    ReconcileFailed {
        /// The unit.
        unit: String,
        /// The step.
        step: u32,
        /// Effect name.
        effect: String,
        /// The probe's error.
        message: String,
    },

    /// A compensation failed during rollback; the unit stays incomplete and
    /// the rollback can be retried (compensations already done are not re-run).
    #[error("unit {unit:?}: compensation of step {step} (effect {effect:?}) failed: {message}; rollback stopped, retry it later")]
    CompensationFailed {
        /// The unit.
        unit: String,
        /// The step compensated.
        step: u32,
        /// Effect name.
        effect: String,
        /// The error's text.
        message: String,
    },

    /// A recorded result does not deserialize into the type the code asks for.
    #[error("unit {unit:?}, step {step}: recorded result of effect {effect:?} does not fit the requested type: {reason}")]
    ResultType {
        /// The unit.
        unit: String,
        /// The step.
        step: u32,
        /// Effect name.
        effect: String,
        /// The serde error.
        reason: String,
    },

    /// The call does not fit the unit's state (for example resolving an
    /// effect that is not in doubt).
    #[error("unit {unit:?}: {reason}")]
    InvalidCall {
        /// The unit.
        unit: String,
        /// What was wrong.
        reason: String,
    },

    /// The step reported that it does not know whether its attempt happened
    /// ([`super::ErrorClass::InDoubt`]): nothing was recorded, the effect
    /// stays in doubt, and resuming the unit applies its in-doubt policy.
    #[error("unit {unit:?}, step {step}: effect {effect:?} (key {key:?}) left in doubt: {message}; resume the unit to retry it with the same key")]
    LeftInDoubt {
        /// The unit.
        unit: String,
        /// The step.
        step: u32,
        /// Effect name.
        effect: String,
        /// Idempotency key.
        key: String,
        /// The step's error.
        message: String,
    },

    /// Transient failures used up the retry policy and the policy says
    /// [`super::OnExhausted::LeaveInDoubt`]: the effect stays in doubt (the
    /// failed attempts are recorded) and a resume starts a new round.
    #[error("unit {unit:?}, step {step}: effect {effect:?} (key {key:?}) gave up after attempt {attempts}: {message}; it stays in doubt, resume the unit to try again with the same key")]
    RetriesExhausted {
        /// The unit.
        unit: String,
        /// The step.
        step: u32,
        /// Effect name.
        effect: String,
        /// Idempotency key.
        key: String,
        /// Attempts made so far (all rounds).
        attempts: u32,
        /// The last error and why the policy stopped.
        message: String,
    },

    /// An operator asked for this unit to be aborted; it runs nothing more.
    /// Roll it back ([`super::Journal::rollback`]) to run its compensations.
    #[error("unit {unit:?}: abort requested by {by:?} ({reason}); roll it back to run its compensations")]
    AbortRequested {
        /// The unit.
        unit: String,
        /// Who asked.
        by: String,
        /// Why.
        reason: String,
    },

    /// An operator decision cannot be applied (the step is not in doubt,
    /// the unit is not incomplete, no such approval is pending, a result does
    /// not fit the step's recorded shape, ...). Nothing was written.
    #[error("unit {unit:?}: operator command refused: {reason}")]
    OperatorRefused {
        /// The unit.
        unit: String,
        /// Why.
        reason: String,
    },

    /// A child unit of a fan-out ([`super::Unit::run_children`]) ended
    /// without a result the parent can use: it was rolled back (aborted), or
    /// its recorded result is no longer retained ([`super::Retention`]).
    #[error("unit {unit:?}, step {step}: child unit {child:?} has no usable result: {reason}")]
    ChildUnavailable {
        /// The parent unit.
        unit: String,
        /// The parent's fan-out step.
        step: u32,
        /// The child unit's id.
        child: String,
        /// Why.
        reason: String,
    },

    /// Invalid journal options.
    #[error("invalid journal option: {0}")]
    InvalidOptions(String),

    /// A blocking task of an async call panicked or was cancelled.
    #[error("journal background task failed: {0}")]
    Task(String),
}

impl Error {
    /// True when retrying the same call may succeed (a transient I/O error,
    /// a busy unit or key, a failed probe or compensation). False for oversized
    /// payloads, mismatches, key conflicts, a rolling-back unit, in-doubt `never_repeat` effects, corruption and
    /// a poisoned log.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Log(e) => !e.is_permanent(),
            Error::UnitBusy { .. }
            | Error::KeyBusy { .. }
            | Error::ReconcileFailed { .. }
            | Error::CompensationFailed { .. }
            | Error::LeftInDoubt { .. }
            | Error::RetriesExhausted { .. }
            | Error::Task(_) => true,
            _ => false,
        }
    }
}

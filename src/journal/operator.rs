//! Operator decisions and human approvals: durable, attributed records.
//!
//! Three decisions an operator (or a reviewing human) takes about a unit,
//! each one [`JournalRecord::Operator`] record naming who, when and why:
//!
//! * [`Journal::resolve`]: an in-doubt effect happened (with a result handed
//!   to the resumed unit) or did not (the unit may run it again, same key,
//!   whatever its policy);
//! * [`Journal::request_abort`]: the unit is abandoned — at once when there
//!   is nothing to compensate, otherwise [`Journal::begin`] refuses it with
//!   [`Error::AbortRequested`] and the agent rolls it back
//!   ([`Journal::rollback`]) so its compensations run where they can;
//! * [`Journal::decide_approval`]: a pending approval ([`Unit::approval`])
//!   is approved or rejected.
//!
//! The same decisions reach a journal whose owner is running through the
//! operator inbox ([`crate::log::inbox`]): `wal-inspect resolve|abort|approve`
//! drops an [`OperatorCommand`], the owner applies it (at open, and every
//! [`INBOX_POLL`] while it runs) with the very calls above and replies.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{Error, Result};
use super::record::{now_ms, JournalRecord, OperatorAction, Outcome};
use super::state::{EffectStatus, State};
use super::unit::Unit;
use super::Journal;

/// How often a running owner looks for operator commands in its inbox.
pub const INBOX_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// An operator's answer for an in-doubt effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// It happened; the resumed unit gets this result (`null` if none).
    Happened(Option<Value>),
    /// It did not happen; the unit may run it again with the same key.
    NotHappened,
}

/// One operator command, as carried by the inbox (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorCommand {
    /// Who decides (recorded).
    pub by: String,
    /// Why (recorded; may be empty).
    #[serde(default)]
    pub reason: String,
    /// The decision.
    pub request: OperatorRequest,
}

/// The decision of an [`OperatorCommand`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum OperatorRequest {
    /// [`Journal::resolve`].
    Resolve {
        /// The unit.
        unit: String,
        /// The step.
        step: u32,
        /// The answer.
        resolution: Resolution,
    },
    /// [`Journal::request_abort`].
    Abort {
        /// The unit.
        unit: String,
    },
    /// [`Journal::decide_approval`].
    Approve {
        /// The unit.
        unit: String,
        /// The approval's name.
        name: String,
        /// Approved (true) or rejected.
        approved: bool,
    },
}

/// The owner's reply to an [`OperatorCommand`] (JSON in the inbox).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorReply {
    /// True when the decision was recorded.
    pub ok: bool,
    /// What changed (when `ok`), or why it was refused.
    pub message: String,
}

/// A unit's request for a human decision, as [`Unit::approval`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approval {
    /// No decision yet: the request is recorded (with its payload) for the
    /// approver; ask again later (this call never blocks).
    Pending,
    /// Approved.
    Approved {
        /// Who approved.
        by: String,
        /// Their note.
        reason: String,
        /// When (ms since the epoch).
        at_ms: u64,
    },
    /// Rejected.
    Rejected {
        /// Who rejected.
        by: String,
        /// Their note.
        reason: String,
        /// When (ms since the epoch).
        at_ms: u64,
    },
}

impl Approval {
    /// True for [`Approval::Approved`].
    pub fn is_approved(&self) -> bool {
        matches!(self, Approval::Approved { .. })
    }
    /// True for [`Approval::Pending`].
    pub fn is_pending(&self) -> bool {
        matches!(self, Approval::Pending)
    }
}

/// A JSON value's shape, for checking an operator's result against results
/// recorded for the same effect.
fn shape_mismatch(sample: &Value, v: &Value) -> Option<String> {
    let kind = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    if kind(sample) != kind(v) {
        return Some(format!(
            "it is {}, recorded results of this effect are {}",
            kind(v),
            kind(sample)
        ));
    }
    if let (Value::Object(s), Value::Object(o)) = (sample, v) {
        let missing: Vec<&str> = s
            .keys()
            .filter(|k| !o.contains_key(*k))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Some(format!(
                "it lacks field(s) {missing:?} that recorded results of this effect have"
            ));
        }
    }
    None
}

impl Journal {
    fn refused(unit: &str, reason: impl Into<String>) -> Error {
        Error::OperatorRefused {
            unit: unit.to_string(),
            reason: reason.into(),
        }
    }

    /// Records an operator's resolution of in-doubt step `step` of
    /// incomplete unit `unit`, attributed to `by` with `reason`; returns a
    /// description of the change. Refused ([`Error::OperatorRefused`],
    /// nothing written) when the unit is not incomplete, the step is not in
    /// doubt, its key is being executed right now, or the result does not
    /// fit the step's type: the Rust type when this process ran the effect
    /// (any [`Unit::run`] of that effect name registers it), otherwise the
    /// shape of results recorded for the same effect name (JSON type, object
    /// fields).
    pub fn resolve(
        &self,
        unit: &str,
        step: u32,
        resolution: Resolution,
        by: &str,
        reason: &str,
    ) -> Result<String> {
        self.durably(self.resolve_write(unit, step, resolution, by, reason, None))
    }

    /// [`Journal::resolve`]'s check and record, written buffered under the
    /// state lock (recording the inbox command id that carried it, if any):
    /// the record's LSN, to be made durable before the description is
    /// returned, and the description.
    fn resolve_write(
        &self,
        unit: &str,
        step: u32,
        resolution: Resolution,
        by: &str,
        reason: &str,
        command: Option<&str>,
    ) -> Result<(u64, String)> {
        if let Resolution::Happened(Some(v)) = &resolution {
            self.check_size(unit, "operator result", v)?;
        }
        let (lsn, msg) = {
            let mut st = self.inner.state.lock();
            let u = Self::live(&st, unit)?;
            let e = u
                .effects
                .get(step as usize)
                .ok_or_else(|| Self::refused(unit, format!("step {step} was never started")))?;
            if e.status() != EffectStatus::InDoubt {
                return Err(Self::refused(
                    unit,
                    format!("step {step} ({}) is not in doubt: {:?}", e.name, e.status()),
                ));
            }
            if let Some(holder) = self.inner.running.lock().get(&e.key) {
                return Err(Self::refused(
                    unit,
                    format!(
                        "step {step} ({}, key {:?}) is being executed right now by unit {holder:?}",
                        e.name, e.key
                    ),
                ));
            }
            let mut note = String::new();
            if let Resolution::Happened(v) = &resolution {
                let v = v.clone().unwrap_or(Value::Null);
                if let Some(check) = self.inner.types.lock().get(&e.name) {
                    check(&v).map_err(|why| {
                        Self::refused(
                            unit,
                            format!("result {} for step {step} ({}): it {why}", clip(&v), e.name),
                        )
                    })?;
                    note = " (checked against the effect's Rust type)".into();
                } else if let Some(sample) = Self::sample_result(&st, &e.name) {
                    if let Some(why) = shape_mismatch(&sample, &v) {
                        return Err(Self::refused(
                            unit,
                            format!("result {} for step {step} ({}): {why}", clip(&v), e.name),
                        ));
                    }
                    note = " (checked against the shape of recorded results)".into();
                } else {
                    note = " (type not checked: no recorded result of this effect to compare; a mismatch fails the resumed step with ResultType)".into();
                }
            }
            let (name, key) = (e.name.clone(), e.key.clone());
            let rec = JournalRecord::Operator {
                unit: unit.to_string(),
                action: OperatorAction::Resolve {
                    seq: step,
                    happened: matches!(resolution, Resolution::Happened(_)),
                    result: match &resolution {
                        Resolution::Happened(v) => Some(v.clone().unwrap_or(Value::Null)),
                        Resolution::NotHappened => None,
                    },
                },
                by: by.to_string(),
                reason: reason.to_string(),
                at_ms: now_ms(),
                command: command.map(str::to_string),
            };
            let lsn = self.append_locked(&mut st, unit, &[rec])?;
            let msg = match &resolution {
                Resolution::Happened(v) => format!(
                    "unit {unit:?} step {step} ({name}, key {key:?}): in doubt -> completed with result {}{note}, by {by:?}",
                    clip(&v.clone().unwrap_or(Value::Null))
                ),
                Resolution::NotHappened => format!(
                    "unit {unit:?} step {step} ({name}, key {key:?}): in doubt -> not happened (the resumed unit runs it again with the same key), by {by:?}"
                ),
            };
            (lsn, msg)
        };
        Ok((lsn, msg))
    }

    /// Records an operator's abort of incomplete unit `unit`. With nothing
    /// to compensate the unit ends aborted at once; otherwise it is marked
    /// abort-requested: [`Journal::begin`] refuses it
    /// ([`Error::AbortRequested`]) and [`Journal::rollback`] (in the agent,
    /// which knows the compensations) finishes it. Refused while the unit is
    /// open in this process.
    pub fn request_abort(&self, unit: &str, by: &str, reason: &str) -> Result<String> {
        self.durably(self.request_abort_write(unit, by, reason, None))
    }

    /// [`Journal::request_abort`]'s check and buffered record (with the
    /// inbox command id, if any): its LSN and the description.
    fn request_abort_write(
        &self,
        unit: &str,
        by: &str,
        reason: &str,
        command: Option<&str>,
    ) -> Result<(u64, String)> {
        if self.inner.active.lock().contains(unit) {
            return Err(Self::refused(
                unit,
                "the unit is open in the agent right now; retry when it is not running",
            ));
        }
        let (lsn, msg) = {
            let mut st = self.inner.state.lock();
            let u = Self::live(&st, unit)?;
            if u.abort_requested.is_some() {
                return Err(Self::refused(unit, "an abort is already requested"));
            }
            let compensate = u.needs_compensation();
            let rec = JournalRecord::Operator {
                unit: unit.to_string(),
                action: OperatorAction::Abort,
                by: by.to_string(),
                reason: reason.to_string(),
                at_ms: now_ms(),
                command: command.map(str::to_string),
            };
            let lsn = self.append_locked(&mut st, unit, &[rec])?;
            let msg = if compensate {
                format!("unit {unit:?}: incomplete -> abort requested by {by:?}; the agent runs its compensations (Journal::rollback) and then records the abort")
            } else {
                format!("unit {unit:?}: incomplete -> aborted by {by:?} (nothing to compensate)")
            };
            (lsn, msg)
        };
        Ok((lsn, msg))
    }

    /// Records a human decision for approval `name` of incomplete unit
    /// `unit`, which must have asked for it ([`Unit::approval`]) and not
    /// been decided yet: a decision is bound to that one unit and name,
    /// recorded once.
    pub fn decide_approval(
        &self,
        unit: &str,
        name: &str,
        approved: bool,
        by: &str,
        reason: &str,
    ) -> Result<String> {
        self.durably(self.decide_approval_write(unit, name, approved, by, reason, None))
    }

    /// [`Journal::decide_approval`]'s check and buffered record (with the
    /// inbox command id, if any): its LSN and the description.
    fn decide_approval_write(
        &self,
        unit: &str,
        name: &str,
        approved: bool,
        by: &str,
        reason: &str,
        command: Option<&str>,
    ) -> Result<(u64, String)> {
        let lsn = {
            let mut st = self.inner.state.lock();
            let u = Self::live(&st, unit)?;
            match u.approvals.get(name) {
                None => {
                    let asked: Vec<&String> = u.approvals.keys().collect();
                    return Err(Self::refused(
                        unit,
                        format!("no approval {name:?} was requested (requested: {asked:?})"),
                    ));
                }
                Some(a) if a.decision.is_some() => {
                    let (ok, n) = a.decision.as_ref().expect("checked");
                    return Err(Self::refused(
                        unit,
                        format!(
                            "approval {name:?} was already {} by {:?}",
                            if *ok { "approved" } else { "rejected" },
                            n.by
                        ),
                    ));
                }
                Some(_) => {}
            }
            let rec = JournalRecord::Operator {
                unit: unit.to_string(),
                action: OperatorAction::Approve {
                    name: name.to_string(),
                    approved,
                },
                by: by.to_string(),
                reason: reason.to_string(),
                at_ms: now_ms(),
                command: command.map(str::to_string),
            };
            self.append_locked(&mut st, unit, &[rec])?
        };
        Ok((
            lsn,
            format!(
                "unit {unit:?} approval {name:?}: pending -> {} by {by:?}",
                if approved { "approved" } else { "rejected" }
            ),
        ))
    }

    /// Applies one [`OperatorCommand`] (what the inbox carries).
    pub fn apply_operator(&self, cmd: &OperatorCommand) -> Result<String> {
        self.durably(self.command_write(cmd, None))
    }

    /// Checks and writes `cmd` buffered, recording the inbox command id
    /// `command` with it: the record's LSN and the description.
    fn command_write(&self, cmd: &OperatorCommand, command: Option<&str>) -> Result<(u64, String)> {
        let (by, why) = (&cmd.by, &cmd.reason);
        match &cmd.request {
            OperatorRequest::Resolve {
                unit,
                step,
                resolution,
            } => self.resolve_write(unit, *step, resolution.clone(), by, why, command),
            OperatorRequest::Abort { unit } => self.request_abort_write(unit, by, why, command),
            OperatorRequest::Approve {
                unit,
                name,
                approved,
            } => self.decide_approval_write(unit, name, *approved, by, why, command),
        }
    }

    /// The reply to inbox command `id` if its decision is already recorded
    /// (the owner crashed after recording it, before replying): the command
    /// is answered, not applied a second time.
    fn already_applied(&self, id: &str) -> Option<OperatorReply> {
        let st = self.inner.state.lock();
        st.commands.get(id).map(|c| OperatorReply {
            ok: true,
            message: format!(
                "already applied (command {id}, recorded at LSN {} by {:?} before the owner restarted): {}",
                c.lsn, c.by, c.what
            ),
        })
    }

    /// Applies every command waiting in the journal directory's operator
    /// inbox and replies to each; returns how many were handled. Called at
    /// open and every [`INBOX_POLL`] while the journal is open, when it has
    /// an inbox ([`super::JournalOptions::operator_inbox`]); without one it
    /// returns `Ok(0)`.
    pub fn apply_inbox(&self) -> Result<usize> {
        let Some(inbox) = &self.inner.inbox else {
            return Ok(0);
        };
        // One pass at a time: a command claimed by a concurrent pass (the
        // poller) is `.applying`, which `claim_all` would claim again.
        let _turn = inbox.owner_turn();
        let claimed = inbox.claim_all().map_err(|e| Error::InvalidCall {
            unit: String::new(),
            reason: format!("operator inbox {}: {e}", inbox.dir().display()),
        })?;
        let n = claimed.len();
        for c in claimed {
            let reply = match serde_json::from_slice::<OperatorCommand>(&c.body) {
                Ok(_) if self.already_applied(&c.id).is_some() => self
                    .already_applied(&c.id)
                    .unwrap_or_else(|| unreachable!()),
                // Durable before the reply: a replied decision is never lost.
                Ok(cmd) => match self.durably(self.command_write(&cmd, Some(&c.id))) {
                    Ok(message) => OperatorReply { ok: true, message },
                    Err(e) => OperatorReply {
                        ok: false,
                        message: e.to_string(),
                    },
                },
                Err(e) => OperatorReply {
                    ok: false,
                    message: format!("not an operator command: {e}"),
                },
            };
            let body = serde_json::to_vec(&reply).expect("replies serialize");
            inbox.reply(&c.id, &body).map_err(|e| Error::InvalidCall {
                unit: String::new(),
                reason: format!("operator inbox {}: {e}", inbox.dir().display()),
            })?;
        }
        Ok(n)
    }

    fn live<'s>(st: &'s State, unit: &str) -> Result<&'s super::state::UnitRec> {
        match st.units.get(unit).filter(|u| u.end.is_none()) {
            Some(u) => Ok(u),
            None => Err(Self::refused(
                unit,
                match st.unit_state(unit) {
                    Some(s) => format!("the unit is {s}, not incomplete"),
                    None => "no such unit (unknown, or forgotten by retention)".to_string(),
                },
            )),
        }
    }

    /// A successful result recorded for effect `name` (any unit), if retained.
    fn sample_result(st: &State, name: &str) -> Option<Value> {
        st.units
            .values()
            .flat_map(|u| u.effects.iter())
            .filter(|e| e.name == name)
            .find_map(|e| match &e.outcome {
                Some((Outcome::Ok { value }, _, _)) => Some(value.clone()),
                _ => None,
            })
            .or_else(|| {
                st.keys
                    .values()
                    .filter(|k| k.effect == name)
                    .find_map(|k| match k.outcome() {
                        Some(Outcome::Ok { value }) => Some(value),
                        _ => None,
                    })
            })
    }

    /// Registers the check of effect `name`'s result type (first one wins).
    pub(crate) fn register_type(
        &self,
        name: &str,
        check: fn(&Value) -> std::result::Result<(), String>,
    ) {
        let mut t = self.inner.types.lock();
        if !t.contains_key(name) {
            t.insert(name.to_string(), check);
        }
    }
}

/// The async operator calls: the check and the buffered record on tokio's
/// blocking pool (the same `*_write` as the sync call), the `fdatasync`
/// awaited on the log's writer thread (`Journal::durably_async`).
#[cfg(feature = "tokio")]
impl Journal {
    /// Async [`Journal::resolve`].
    pub async fn resolve_async(
        &self,
        unit: &str,
        step: u32,
        resolution: Resolution,
        by: &str,
        reason: &str,
    ) -> Result<String> {
        let (unit, by, reason) = (unit.to_string(), by.to_string(), reason.to_string());
        self.durably_async(move |j| j.resolve_write(&unit, step, resolution, &by, &reason, None))
            .await
    }

    /// Async [`Journal::request_abort`].
    pub async fn request_abort_async(&self, unit: &str, by: &str, reason: &str) -> Result<String> {
        let (unit, by, reason) = (unit.to_string(), by.to_string(), reason.to_string());
        self.durably_async(move |j| j.request_abort_write(&unit, &by, &reason, None))
            .await
    }

    /// Async [`Journal::decide_approval`].
    pub async fn decide_approval_async(
        &self,
        unit: &str,
        name: &str,
        approved: bool,
        by: &str,
        reason: &str,
    ) -> Result<String> {
        let (unit, name, by, reason) = (
            unit.to_string(),
            name.to_string(),
            by.to_string(),
            reason.to_string(),
        );
        self.durably_async(move |j| {
            j.decide_approval_write(&unit, &name, approved, &by, &reason, None)
        })
        .await
    }

    /// Async [`Journal::apply_operator`].
    pub async fn apply_operator_async(&self, cmd: &OperatorCommand) -> Result<String> {
        let cmd = cmd.clone();
        self.durably_async(move |j| j.command_write(&cmd, None))
            .await
    }

    /// Async [`Journal::apply_inbox`]: the whole pass (claiming the
    /// command files, each decision, each reply file) runs on tokio's
    /// blocking pool — it is file I/O from end to end.
    pub async fn apply_inbox_async(&self) -> Result<usize> {
        let j = self.clone();
        super::blocking(move || j.apply_inbox()).await
    }
}

fn clip(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 120 {
        let mut end = 120;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// Starts the thread that applies inbox commands while the journal is open
/// (it ends within [`INBOX_POLL`] after the last handle is dropped).
pub(crate) fn spawn_inbox_poller(j: &Journal) {
    let weak = std::sync::Arc::downgrade(&j.inner);
    let _ = std::thread::Builder::new()
        .name("agentwal-inbox".into())
        .spawn(move || loop {
            std::thread::sleep(INBOX_POLL);
            let Some(inner) = weak.upgrade() else {
                return;
            };
            let j = Journal { inner };
            // A failure is retried at the next poll (and reported to the
            // tool as a missing reply).
            let _ = j.apply_inbox();
        });
}

impl Unit {
    /// Asks for human approval `name` (unique within the unit) showing
    /// `payload` to the approver, without blocking: the first call records
    /// the request durably and returns [`Approval::Pending`]; once a decision
    /// is recorded ([`Journal::decide_approval`], `wal-inspect approve`)
    /// every call returns it (also after a crash and resume). Drop the unit
    /// (it stays incomplete) and ask again later, or poll.
    ///
    /// ```
    /// use agentwal::journal::{Approval, Journal, JournalOptions};
    /// let dir = tempfile::tempdir().unwrap();
    /// let journal = Journal::open(dir.path(), JournalOptions::small()).unwrap();
    /// let mut unit = journal.begin("refund-9", "refund", &()).unwrap();
    /// assert_eq!(unit.approval("refund", &serde_json::json!({"eur": 40})).unwrap(), Approval::Pending);
    /// drop(unit); // nothing blocks while a person decides
    /// journal.decide_approval("refund-9", "refund", true, "alice", "ok").unwrap();
    /// let mut unit = journal.begin("refund-9", "refund", &()).unwrap();
    /// assert!(unit.approval("refund", &serde_json::json!({"eur": 40})).unwrap().is_approved());
    /// ```
    pub fn approval<P: Serialize + ?Sized>(&mut self, name: &str, payload: &P) -> Result<Approval> {
        let value = self.approval_payload(name, payload)?;
        match Self::approval_prepare(self.journal(), self.id(), name, value)? {
            Ok(a) => Ok(a),
            Err(lsn) => {
                // Durable: the approver must see the request after any crash.
                self.journal().inner.log.wait_durable(lsn)?;
                Ok(Approval::Pending)
            }
        }
    }

    fn approval_payload<P: Serialize + ?Sized>(
        &self,
        name: &str,
        payload: &P,
    ) -> Result<serde_json::Value> {
        serde_json::to_value(payload).map_err(|e| Error::Encode {
            unit: self.id().to_string(),
            what: format!("approval {name:?} payload"),
            reason: e.to_string(),
        })
    }

    /// The decision, or the LSN of the request appended now (to be made
    /// durable before returning `Pending`). Under the state lock, with a
    /// buffered write: the async call runs it on the blocking pool.
    fn approval_prepare(
        j: &Journal,
        id: &str,
        name: &str,
        value: serde_json::Value,
    ) -> Result<std::result::Result<Approval, u64>> {
        j.check_size(id, "approval payload", &value)?;
        let mut st = j.inner.state.lock();
        let u = st
            .units
            .get(id)
            .filter(|u| u.end.is_none())
            .ok_or_else(|| Error::InvalidCall {
                unit: id.to_string(),
                reason: "the unit is not open".into(),
            })?;
        if let Some(a) = u.approvals.get(name) {
            return Ok(Ok(match &a.decision {
                None => Approval::Pending,
                Some((true, n)) => Approval::Approved {
                    by: n.by.clone(),
                    reason: n.reason.clone(),
                    at_ms: n.at_ms,
                },
                Some((false, n)) => Approval::Rejected {
                    by: n.by.clone(),
                    reason: n.reason.clone(),
                    at_ms: n.at_ms,
                },
            }));
        }
        let rec = JournalRecord::ApprovalRequest {
            unit: id.to_string(),
            name: name.to_string(),
            payload: value,
            at_ms: now_ms(),
        };
        Ok(Err(j.append_locked(&mut st, id, &[rec])?))
    }

    /// Async [`Unit::approval`]: never blocks a runtime thread (the
    /// request is written on tokio's blocking pool, its `fdatasync` awaited
    /// on the log's writer thread).
    #[cfg(feature = "tokio")]
    pub async fn approval_async<P: Serialize + ?Sized>(
        &mut self,
        name: &str,
        payload: &P,
    ) -> Result<Approval> {
        let value = self.approval_payload(name, payload)?;
        let (j, id, n) = (
            self.journal().clone(),
            self.id().to_string(),
            name.to_string(),
        );
        let prepared = super::blocking(move || Self::approval_prepare(&j, &id, &n, value)).await?;
        match prepared {
            Ok(a) => Ok(a),
            Err(lsn) => {
                self.journal().wait_durable_async(lsn).await?;
                Ok(Approval::Pending)
            }
        }
    }
}

//! Units and effects: the write protocol and resume.
//!
//! For every effect, [`Unit::run`]:
//!
//! 0. refuses to run anything in a unit that is rolling back (a compensation
//!    intent is recorded): [`Error::RollingBack`];
//! 1. looks the step up in the replayed unit: a recorded outcome is returned
//!    without running anything (a different effect name, key, policy or
//!    compensable flag at this step is [`Error::EffectMismatch`]: the
//!    recorded declaration governs);
//! 2. otherwise looks the key up in the key index: a settled key's recorded
//!    outcome is reused (intent + outcome recorded, nothing runs) if the key
//!    belongs to an effect of the same name ([`Error::KeyConflict`] if not);
//! 3. otherwise appends the **effect intent** — durably (one `fdatasync`,
//!    shared with the buffered unit-begin and previous outcome) for
//!    `never_repeat` and `reconcile`, buffered for `retry_same_key`, whose
//!    deterministic key makes a lost intent harmless (see
//!    [`intent_needs_sync`] for the rule per policy) — runs the closure,
//!    and appends the outcome **buffered** (made durable by the next intent
//!    or by the commit). While the closure runs, the key is held: another
//!    live unit of this process asking for it gets [`Error::KeyBusy`];
//! 4. an effect found *in doubt* (intent, no outcome) follows its policy —
//!    unless another unit has meanwhile recorded an outcome for its key:
//!    that outcome is recorded for the step and returned, nothing runs;
//! 5. a result is recorded only if it replays (its JSON reads back as the
//!    same value) and fits the payload limit; otherwise the effect, which
//!    ran, is recorded as a permanent failure with the reason
//!    ([`Error::ResultNotReplayable`], [`Error::ResultTooLarge`]).

use std::fmt::Display;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::error::{Error, Result};
use super::record::{now_ms, JournalRecord, Outcome, OutcomeVia, PolicyKind};
use super::retry::{classify, jitter_draw, ErrorClass, OnExhausted, RetryPolicy};
use super::state::EffectStatus;
use super::Journal;
use crate::log::Durability;

/// Marks a unit id as open in this process; released on drop.
#[derive(Debug)]
pub(crate) struct ActiveGuard {
    journal: Journal,
    id: String,
}

impl ActiveGuard {
    pub(crate) fn new(journal: Journal, id: String) -> Self {
        ActiveGuard { journal, id }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.journal.release(&self.id);
    }
}

/// Marks an idempotency key as being executed by a live unit of this
/// process (see [`Error::KeyBusy`]); released on drop, after the outcome
/// was appended (or the run gave up).
#[derive(Debug)]
pub(crate) struct KeyGuard {
    journal: Journal,
    key: String,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        self.journal.release_key(&self.key);
    }
}

/// Whether the effect's code runs for the first time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// No earlier attempt is recorded. For a `retry_same_key` effect this
    /// does not prove the effect never happened: its intent is not synced
    /// before it runs, so a crash can take the intent with it and the re-run
    /// is told `First` (with the same key). `never_repeat` and `reconcile`
    /// intents are durable before the effect runs, so for them `First` is
    /// exact.
    First,
    /// An earlier attempt with the same key may have happened (the effect was
    /// in doubt); the receiver must de-duplicate by [`EffectCtx::key`].
    Retry,
}

/// What the effect's code (and a reconcile probe) learns about the effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectCtx {
    unit: String,
    name: String,
    seq: u32,
    key: String,
    attempt: Attempt,
    number: u32,
}

impl EffectCtx {
    /// The context of the attempt after this one (a retry).
    fn next_attempt(&mut self) {
        self.number += 1;
        self.attempt = Attempt::Retry;
    }

    /// The attempt number, from 1, counted durably across crashes (a
    /// transient failure's retry and an in-doubt re-run both count).
    pub fn attempt_number(&self) -> u32 {
        self.number
    }
    /// The unit id.
    pub fn unit(&self) -> &str {
        &self.unit
    }
    /// The effect name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The step (position in the unit, from 0).
    pub fn seq(&self) -> u32 {
        self.seq
    }
    /// The idempotency key: give it to the receiver so it can de-duplicate.
    pub fn key(&self) -> &str {
        &self.key
    }
    /// First attempt or retry of an in-doubt effect. `Retry` is always
    /// right; `First` of a `retry_same_key` effect may follow an unrecorded
    /// attempt lost in a crash (see [`Attempt::First`]): de-duplicate by
    /// [`EffectCtx::key`], never by `attempt`.
    pub fn attempt(&self) -> Attempt {
        self.attempt
    }
}

/// A reconcile probe's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe<T> {
    /// The effect happened, with this result (recorded, returned).
    Happened(T),
    /// It did not happen: run it again with the same key.
    NotHappened,
}

type ProbeFn<'p, T> =
    Box<dyn FnOnce(&EffectCtx) -> std::result::Result<Probe<T>, String> + Send + 'p>;

/// An async reconcile probe ([`Effect::reconcile_async`]).
type AsyncProbeFn<'p, T> = Box<
    dyn FnOnce(
            EffectCtx,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<Output = std::result::Result<Probe<T>, String>> + Send + 'p,
            >,
        > + Send
        + 'p,
>;

enum Policy<'p, T> {
    RetrySameKey,
    NeverRepeat,
    Reconcile(ProbeFn<'p, T>),
    // Only the async path (feature `tokio`) calls the probe; without it the
    // variant still exists (it is built by `Effect::reconcile_async`).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    ReconcileAsync(AsyncProbeFn<'p, T>),
}

impl<T> Policy<'_, T> {
    fn kind(&self) -> PolicyKind {
        match self {
            Policy::RetrySameKey => PolicyKind::RetrySameKey,
            Policy::NeverRepeat => PolicyKind::NeverRepeat,
            Policy::Reconcile(_) | Policy::ReconcileAsync(_) => PolicyKind::Reconcile,
        }
    }
}

/// Description of one effect: a name, an in-doubt policy (required: there
/// is no default), and optionally an explicit key and a compensation flag.
///
/// The default idempotency key is `<unit id>/<escaped effect name>/<step>`,
/// where the effect name has `%` written as `%25` and `/` as `%2F` (see
/// [`default_key`]): no two (unit, name, step) triples share a key.
///
/// # Example
///
/// One unit, the three in-doubt policies:
///
/// ```
/// use agentwal::{Effect, Journal, JournalOptions, Probe};
/// # let tmp = tempfile::tempdir()?;
/// let journal = Journal::open(tmp.path(), JournalOptions::default())?;
/// let mut unit = journal.begin("refund-3", "refund", &serde_json::json!({"order": 3}))?;
///
/// // Safe to repeat: the payment API de-duplicates on the key. Compensable:
/// // a rollback of the unit runs its compensation.
/// let charge: u64 = unit.run(Effect::retry_same_key("refund").compensable(), |ctx| {
///     // payments.refund(order, idempotency_key = ctx.key())
///     Ok::<_, std::io::Error>(ctx.key().len() as u64)
/// })?;
///
/// // No de-duplicating receiver and must not happen twice: if it is in
/// // doubt after a crash, the unit stops with `Error::InDoubt` for an operator.
/// unit.run(Effect::never_repeat("print-cheque"), |_ctx| Ok::<_, std::io::Error>(()))?;
///
/// // In doubt → ask the outside world whether it happened.
/// let ticket: String = unit.run(
///     Effect::reconcile("open-ticket", |_ctx| {
///         // tickets.find(ctx.key()).map(Probe::Happened)
///         Ok::<_, std::io::Error>(Probe::NotHappened)
///     }),
///     |ctx| Ok::<_, std::io::Error>(format!("T-{}", ctx.key().len())),
/// )?;
/// unit.commit()?;
/// assert!(charge > 0 && ticket.starts_with("T-"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Effect<'p, T> {
    name: String,
    key: Option<String>,
    policy: Policy<'p, T>,
    compensable: bool,
    retry: RetryPolicy,
}

impl<T> std::fmt::Debug for Effect<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Effect")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("policy", &self.policy.kind())
            .field("compensable", &self.compensable)
            .field("retry", &self.retry)
            .finish()
    }
}

impl<'p, T> Effect<'p, T> {
    /// In doubt after a crash → run again with the same key (at least once;
    /// the receiver de-duplicates by key).
    pub fn retry_same_key(name: impl Into<String>) -> Self {
        Self::with_policy(name, Policy::RetrySameKey)
    }

    /// In doubt after a crash → never run again: the unit fails with
    /// [`Error::InDoubt`] and waits for an operator (at most once).
    pub fn never_repeat(name: impl Into<String>) -> Self {
        Self::with_policy(name, Policy::NeverRepeat)
    }

    /// In doubt after a crash → ask `probe` whether it happened. `Happened(v)`
    /// records `v` as the outcome; `NotHappened` runs the effect again with
    /// the same key; an error leaves it in doubt ([`Error::ReconcileFailed`]).
    pub fn reconcile<E, P>(name: impl Into<String>, probe: P) -> Self
    where
        E: Display,
        P: FnOnce(&EffectCtx) -> std::result::Result<Probe<T>, E> + Send + 'p,
    {
        Self::with_policy(
            name,
            Policy::Reconcile(Box::new(move |ctx| probe(ctx).map_err(|e| e.to_string()))),
        )
    }

    /// [`Effect::reconcile`] with an async probe (a network lookup, say):
    /// only [`Unit::run_async`] accepts it, and awaits it on the executor
    /// like the effect itself. [`Unit::run`] refuses it with
    /// [`Error::InvalidCall`] before anything is written.
    pub fn reconcile_async<E, P, Fut>(name: impl Into<String>, probe: P) -> Self
    where
        E: Display,
        P: FnOnce(EffectCtx) -> Fut + Send + 'p,
        Fut: std::future::Future<Output = std::result::Result<Probe<T>, E>> + Send + 'p,
    {
        Self::with_policy(
            name,
            Policy::ReconcileAsync(Box::new(move |ctx| {
                Box::pin(async move { probe(ctx).await.map_err(|e| e.to_string()) })
            })),
        )
    }

    fn with_policy(name: impl Into<String>, policy: Policy<'p, T>) -> Self {
        Effect {
            name: name.into(),
            key: None,
            policy,
            compensable: false,
            retry: RetryPolicy::none(),
        }
    }

    /// Retries transient failures under `policy` (see [`RetryPolicy`] and
    /// [`super::ErrorClass`]); the default is one attempt.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Uses an explicit idempotency key instead of the derived one
    /// ([`default_key`]). A key belongs to one effect name: another effect
    /// asking for a key the journal knows gets [`Error::KeyConflict`].
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Declares that a rollback must compensate this effect.
    pub fn compensable(mut self) -> Self {
        self.compensable = true;
        self
    }
}

/// One compensation to run during a rollback.
#[derive(Debug, Clone, PartialEq)]
pub struct Compensation {
    /// The unit.
    pub unit: String,
    /// The step being compensated.
    pub seq: u32,
    /// The effect's name.
    pub effect: String,
    /// The effect's idempotency key.
    pub effect_key: String,
    /// The compensation's own idempotency key (`<effect key>/compensate`).
    pub key: String,
    /// The effect's recorded result (`None` if the effect is in doubt).
    pub result: Option<Value>,
    /// True when the effect is in doubt: it may not have happened at all.
    pub effect_in_doubt: bool,
    /// True when this compensation may already have run (its intent is
    /// recorded without an outcome): de-duplicate by `key`.
    pub retry: bool,
}

/// What a rollback did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollbackReport {
    /// Steps compensated by this call, in the order they ran (reverse step order).
    pub compensated: Vec<u32>,
    /// Steps whose compensation an earlier, interrupted rollback already recorded.
    pub already_compensated: Vec<u32>,
    /// LSN of the abort record.
    pub abort_lsn: u64,
}

enum Prep {
    Recorded(Outcome),
    Reuse(EffectCtx, JournalRecord, Outcome),
    /// This unit's step is in doubt, but its key was settled (by another
    /// unit): record that outcome for the step, run nothing.
    Settled(EffectCtx, Outcome),
    /// Intent appended (buffered) at this LSN: wait durable, then run. The
    /// guard holds the key against other live units until the outcome is in.
    Fresh(EffectCtx, u64, KeyGuard),
    /// In doubt; this unit's intent for the step is at this LSN (recorded
    /// earlier, or appended now because the key is in doubt in another
    /// unit) and must be durable before anything runs.
    InDoubt(EffectCtx, u64, KeyGuard, Resume),
}

/// What a step does ([`Unit::plan`]), for both [`Unit::run`] and
/// [`Unit::run_async`].
enum Plan<'p, T> {
    /// Nothing runs: write these records (buffered; none for a replay)
    /// and return the recorded outcome.
    Replay(Vec<JournalRecord>, Outcome),
    /// Wait until this LSN is durable (if any), then act.
    Act(Option<u64>, Act<'p, T>),
}

/// The action after the durability wait.
enum Act<'p, T> {
    /// Stop with this error (a `never_repeat` effect in doubt).
    Refuse(Error),
    /// Ask the reconcile probe (the policy), then [`Unit::after_probe`].
    Probe(Policy<'p, T>, Start),
    /// Run the effect.
    Run(Start),
}

/// What a reconcile probe's answer leads to.
enum Probed<T> {
    /// It happened: write this outcome record (buffered) and return the
    /// value; the key stays held until it is written.
    Record(JournalRecord, Result<T>, KeyGuard),
    /// It did not: run the effect again.
    Run(Start),
}

/// An effect about to run: its context, how its outcome is recorded, the
/// key held against other live units, its retry round, and for a re-run
/// the time before which it must not start (a durable attempt-start record
/// is written first).
struct Start {
    ctx: EffectCtx,
    via: OutcomeVia,
    held: KeyGuard,
    round: Round,
    rerun_at: Option<u64>,
}

/// Where the attempts of an in-doubt effect stand.
#[derive(Debug, Clone, Copy)]
struct Resume {
    /// The last started attempt is known not to have happened, or failed
    /// transiently and awaits its retry: run again whatever the policy.
    rerun: bool,
    /// Do not start before (ms since the epoch).
    not_before_ms: u64,
    /// The round's base (attempts before the current round).
    round_base: u32,
    /// The round's deadline.
    deadline_ms: Option<u64>,
}

/// The retry round in progress.
#[derive(Debug, Clone, Copy)]
struct Round {
    base: u32,
    deadline_ms: Option<u64>,
}

/// What to do after a failed attempt.
enum Next {
    /// Record this message as the effect's failed outcome.
    Record(String),
    /// Record nothing; return this error (the effect stays in doubt).
    Stop(Error),
    /// Append these records durably (the failure record, then after
    /// `wait` the start record) and run again.
    Retry {
        failed: JournalRecord,
        wait: std::time::Duration,
        started: JournalRecord,
    },
    /// Append the failure record durably and return the error.
    GiveUp(JournalRecord, Error),
}

/// An open unit. Obtained from [`Journal::begin`] (new or resumed); ended
/// with [`Unit::commit`] or [`Unit::rollback`]. Dropping it without ending
/// leaves the unit incomplete (it is resumed by the next `begin`).
#[derive(Debug)]
pub struct Unit {
    guard: ActiveGuard,
    resumed: bool,
    next_seq: u32,
    /// The `unit` tracing span (parent of each step's `effect` span).
    span: tracing::Span,
}

/// The default idempotency key of step `seq`, effect `name`, of unit `unit`:
/// `<unit>/<name with % as %25 and / as %2F>/<seq>`.
///
/// Injective: the step is after the last `/`, the escaped name (which holds
/// no `/`) between the last two, the unit id is everything before — so unit
/// `orders/7` effect `email` (`orders/7/email/0`) and unit `orders` effect
/// `7/email` (`orders/7%2Femail/0`) never share a key. Names without `/` or
/// `%` keep the key earlier versions derived; a resumed unit always uses the
/// key recorded with its intent, whatever scheme derived it.
///
/// ```
/// use agentwal::journal::default_key;
/// assert_eq!(default_key("orders/7", "email", 0), "orders/7/email/0");
/// assert_eq!(default_key("orders", "7/email", 0), "orders/7%2Femail/0");
/// ```
pub fn default_key(unit: &str, name: &str, seq: u32) -> String {
    let mut escaped = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' => escaped.push_str("%25"),
            '/' => escaped.push_str("%2F"),
            c => escaped.push(c),
        }
    }
    format!("{unit}/{escaped}/{seq}")
}

/// Whether a fresh effect's intent must be durable before the effect runs
/// (one `fdatasync` on the unit's critical path), by in-doubt policy:
///
/// * `never_repeat`: **yes**. A crash during the effect must leave it *in
///   doubt* (never run again, surfaced to an operator); a lost intent would
///   make it look never started and it would run a second time.
/// * `reconcile`: **yes**. Only an in-doubt effect is probed; a lost intent
///   would skip the probe and run the effect again blindly.
/// * `retry_same_key`: **no**. Its key is deterministic (derived from unit,
///   name and step, or given explicitly by the same code), so a re-run after
///   a lost intent uses the very key an in-doubt retry would use: the
///   receiver de-duplicates either way. The intent is written (buffered) and
///   becomes durable with the next sync — the next intent that needs one, a
///   checkpoint, or the commit. What is lost is only
///   [`EffectCtx::attempt`]'s knowledge: after a crash that took the intent
///   with it, the re-run is told [`Attempt::First`] although the effect may
///   have happened. `Attempt::Retry` stays reliable (a recorded intent is
///   seen); `Attempt::First` means "no attempt is *recorded*".
///
/// The outcome is always buffered and made durable by the commit (or an
/// earlier sync), before the commit is acknowledged: nothing that depends on
/// it is acknowledged before it is durable.
fn intent_needs_sync(policy: PolicyKind) -> bool {
    match policy {
        PolicyKind::NeverRepeat | PolicyKind::Reconcile => true,
        PolicyKind::RetrySameKey => false,
    }
}

/// Why a result does not replay (`Err(reason)`): its JSON must decode to
/// `T` and re-encode to the very same JSON.
fn check_round_trip<T: Serialize + DeserializeOwned>(
    value: &Value,
) -> std::result::Result<(), String> {
    let back: T = serde_json::from_value(value.clone())
        .map_err(|e| format!("does not read back as the effect's result type ({e})"))?;
    let again = serde_json::to_value(&back)
        .map_err(|e| format!("reads back as a value that cannot be encoded again ({e})"))?;
    if again != *value {
        return Err(format!(
            "reads back as a different value ({})",
            clip(again.to_string(), 200)
        ));
    }
    Ok(())
}

/// Why a recorded key cannot serve the effect asking for it.
#[derive(Clone, Copy)]
enum KeyClash {
    /// The key is recorded for an effect of another name.
    OtherEffect,
    /// The key's effect was compensated by its unit's rollback: its result
    /// no longer holds.
    Compensated,
}

/// The one [`Error::KeyConflict`] for step `step` of unit `unit` asking for
/// effect `effect` under the key that `holder` records.
fn key_conflict(
    unit: &str,
    step: u32,
    effect: &str,
    holder: &super::state::KeyEntry,
    why: KeyClash,
) -> Error {
    let recorded = format!("effect {:?} of unit {:?}", holder.effect, holder.unit);
    Error::KeyConflict {
        unit: unit.to_string(),
        step,
        effect: effect.to_string(),
        key: holder.key.clone(),
        recorded: match why {
            KeyClash::OtherEffect => recorded,
            KeyClash::Compensated => format!(
                "{recorded}, since compensated by that unit's rollback (use a new key to do it again)"
            ),
        },
    }
}

fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

impl Unit {
    pub(crate) fn new(guard: ActiveGuard, resumed: bool) -> Unit {
        let span = tracing::info_span!(target: "agentwal::unit", "unit", unit = %guard.id, resumed);
        crate::observe::unit_begun(resumed);
        if !resumed {
            crate::observe::unit_started();
        }
        Unit {
            guard,
            resumed,
            next_seq: 0,
            span,
        }
    }

    /// The `effect` span of one step: the unit, the step, the effect's name,
    /// its idempotency key (what an operator greps for in the receiver's
    /// logs) and its policy. Events inside the effect's closure carry them.
    fn effect_span(&self, seq: u32, name: &str, policy: PolicyKind, key: &str) -> tracing::Span {
        tracing::info_span!(
            target: "agentwal::unit",
            parent: &self.span,
            "effect",
            unit = %self.id(),
            step = seq,
            effect = %name,
            key = %key,
            policy = ?policy
        )
    }

    /// The key a prepared step runs (or replays) under.
    fn prep_key<'a>(prep: &'a Prep, fallback: &'a str) -> &'a str {
        match prep {
            Prep::Recorded(_) => fallback,
            Prep::Reuse(ctx, ..)
            | Prep::Settled(ctx, _)
            | Prep::Fresh(ctx, ..)
            | Prep::InDoubt(ctx, ..) => ctx.key(),
        }
    }

    /// An in-doubt step met its policy on resume: say what was decided.
    fn in_doubt_decision(ctx: &EffectCtx, decision: &'static str) {
        tracing::warn!(
            target: "agentwal::recovery",
            unit = %ctx.unit,
            step = ctx.seq,
            effect = %ctx.name,
            key = %ctx.key(),
            decision,
            "in-doubt effect on resume"
        );
    }

    fn j(&self) -> &Journal {
        &self.guard.journal
    }

    /// The journal this unit belongs to.
    pub(crate) fn journal(&self) -> &Journal {
        &self.guard.journal
    }

    /// The unit id.
    pub fn id(&self) -> &str {
        &self.guard.id
    }

    /// True when the unit was found incomplete in the journal (resume).
    pub fn is_resumed(&self) -> bool {
        self.resumed
    }

    /// The code version that began this unit ([`Journal::set_code`]), if
    /// recorded.
    pub fn code_version(&self) -> Option<String> {
        let st = self.j().inner.state.lock();
        st.units
            .get(self.id())
            .and_then(|u| u.code.as_ref().map(|c| c.0.clone()))
    }

    /// True when the code that began this unit knew patch `name` (it was in
    /// the patches given to [`Journal::set_code`]). New code branches on it
    /// to keep the old steps for units that older code began:
    /// `if unit.patched("fraud-check") { new steps } else { old steps }`.
    /// Deterministic across crashes: it depends only on the unit's record.
    pub fn patched(&self, name: &str) -> bool {
        let st = self.j().inner.state.lock();
        st.units
            .get(self.id())
            .and_then(|u| u.code.as_ref())
            .is_some_and(|c| c.1.iter().any(|p| p == name))
    }

    /// The step the next [`Unit::run`] will use.
    pub fn next_step(&self) -> u32 {
        self.next_seq
    }

    /// Effects recorded for this unit so far (replayed or new).
    pub fn recorded_effects(&self) -> usize {
        let st = self.j().inner.state.lock();
        st.units.get(self.id()).map_or(0, |u| u.effects.len())
    }

    /// Status of step `seq` of this unit.
    pub fn effect_status(&self, seq: u32) -> EffectStatus {
        self.j()
            .effect_status(self.id(), seq)
            .unwrap_or(EffectStatus::NotStarted)
    }

    /// The payload recorded by the unit's begin record.
    pub fn payload<P: DeserializeOwned>(&self) -> Result<P> {
        let v = {
            let st = self.j().inner.state.lock();
            st.units
                .get(self.id())
                .map(|u| u.payload.clone())
                .unwrap_or(Value::Null)
        };
        serde_json::from_value(v).map_err(|e| Error::InvalidCall {
            unit: self.id().to_string(),
            reason: format!("recorded payload does not fit the requested type: {e}"),
        })
    }

    /// The state saved by the latest [`Unit::checkpoint`], if any.
    pub fn last_checkpoint<S: DeserializeOwned>(&self) -> Result<Option<S>> {
        let v = {
            let st = self.j().inner.state.lock();
            st.units
                .get(self.id())
                .and_then(|u| u.checkpoint.as_ref().map(|c| c.1.clone()))
        };
        v.map(serde_json::from_value)
            .transpose()
            .map_err(|e| Error::InvalidCall {
                unit: self.id().to_string(),
                reason: format!("recorded checkpoint does not fit the requested type: {e}"),
            })
    }

    /// Saves caller state durably so that a resumed unit can continue
    /// mid-way. Returns the checkpoint's LSN.
    pub fn checkpoint<S: Serialize + ?Sized>(&mut self, state: &S) -> Result<u64> {
        let rec = self.checkpoint_record(state)?;
        // Durable: the caller relies on the checkpoint once this returns.
        self.j().append(self.id(), &[rec], Durability::Durable)
    }

    fn checkpoint_record<S: Serialize + ?Sized>(&self, state: &S) -> Result<JournalRecord> {
        let value = serde_json::to_value(state).map_err(|e| Error::Encode {
            unit: self.id().to_string(),
            what: "checkpoint".into(),
            reason: e.to_string(),
        })?;
        self.j().check_size(self.id(), "checkpoint", &value)?;
        Ok(JournalRecord::Checkpoint {
            unit: self.id().to_string(),
            state: value,
        })
    }

    /// Classifies the next step. For an effect that is about to run for
    /// the first time in this unit (fresh, or in doubt elsewhere) the intent
    /// is appended *here*, under the same state lock as the key-index
    /// lookup: otherwise two units could both find a key unknown and both
    /// run it. The returned LSN must be made durable before the effect runs.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        j: &Journal,
        id: &str,
        seq: u32,
        name: &str,
        key: Option<&str>,
        policy: PolicyKind,
        compensable: bool,
    ) -> Result<Prep> {
        let mut st = j.inner.state.lock();
        let u = st
            .units
            .get(id)
            .filter(|u| u.end.is_none())
            .ok_or_else(|| Error::InvalidCall {
                unit: id.to_string(),
                reason: "the unit is not open".into(),
            })?;
        if let Some(e) = u.effects.iter().find(|e| e.comp_intent.is_some()) {
            return Err(Error::RollingBack {
                unit: id.to_string(),
                step: e.seq,
                action: "run",
            });
        }
        let ctx = |key: &str, attempt| EffectCtx {
            unit: id.to_string(),
            name: name.to_string(),
            seq,
            key: key.to_string(),
            attempt,
            number: 1,
        };
        let (was, now) = {
            let recorded = u.code.as_ref().map(|c| c.0.clone());
            let current = j.inner.code.lock().as_ref().map(|c| c.0.clone());
            if recorded != current {
                (
                    format!(
                        " [unit begun by code version {}]",
                        recorded.as_deref().unwrap_or("(not recorded)")
                    ),
                    format!(
                        " [running code version {}]",
                        current.as_deref().unwrap_or("(not set)")
                    ),
                )
            } else {
                (String::new(), String::new())
            }
        };
        if let Some(e) = u.effects.get(seq as usize) {
            let key_differs = key.is_some_and(|k| k != e.key);
            if e.name != name || key_differs {
                let (recorded, requested) = if key_differs {
                    (
                        format!("{} (key {:?})", e.name, e.key),
                        format!("{name} (key {:?})", key.unwrap_or_default()),
                    )
                } else {
                    (e.name.clone(), name.to_string())
                };
                return Err(Error::EffectMismatch {
                    unit: id.to_string(),
                    step: seq,
                    recorded: recorded + &was,
                    requested: requested + &now,
                });
            }
            // The recorded declaration governs: a step recorded
            // `never_repeat` never runs again because new code says
            // `retry_same_key`, and rollback compensates what was recorded.
            if e.policy != policy || e.compensable != compensable {
                let decl = |p: PolicyKind, c: bool| {
                    format!(
                        "{name} (policy {p}, {})",
                        if c { "compensable" } else { "not compensable" }
                    )
                };
                return Err(Error::EffectMismatch {
                    unit: id.to_string(),
                    step: seq,
                    recorded: decl(e.policy, e.compensable) + &was,
                    requested: decl(policy, compensable) + &now,
                });
            }
            let key = e.key.clone();
            return Ok(match &e.outcome {
                Some((o, _, _)) => Prep::Recorded(o.clone()),
                // In doubt here, but another unit has since recorded an
                // outcome for the same key: that outcome stands, nothing runs.
                None => match st.keys.get(&key).and_then(|k| Some(k).zip(k.outcome())) {
                    // Settled for another effect (journals written before
                    // keys were checked against names): never hand it over.
                    Some((k, _)) if k.effect != name => {
                        return Err(key_conflict(id, seq, name, k, KeyClash::OtherEffect))
                    }
                    Some((k, _)) if k.status == super::view::KeyStatus::Compensated => {
                        return Err(key_conflict(id, seq, name, k, KeyClash::Compensated))
                    }
                    Some((_, o)) => Prep::Settled(ctx(&key, Attempt::Retry), o),
                    // Its intent may be in memory only (its sync failed):
                    // the caller waits for `intent_lsn` before running.
                    None => {
                        let intent_lsn = e.intent_lsn;
                        let lf = e.last_failure.as_ref();
                        let resume = Resume {
                            rerun: e.not_happened.is_some()
                                || lf.is_some_and(|f| !f.gave_up || f.not_happened),
                            not_before_ms: lf.map_or(0, |f| f.retry_at_ms),
                            round_base: e.round_base,
                            deadline_ms: lf.filter(|f| !f.gave_up).and_then(|f| f.deadline_ms),
                        };
                        let mut c = ctx(&key, Attempt::Retry);
                        c.number = e.retries + 1;
                        let held = Self::hold_key(j, id, &key, name, seq)?;
                        Prep::InDoubt(c, intent_lsn, held, resume)
                    }
                },
            });
        }
        let key = key.map_or_else(|| default_key(id, name, seq), str::to_string);
        if let Some(k) = st.keys.get(&key) {
            // A compensated key's result was undone: handing it out would
            // report an effect that no longer holds.
            if k.status == super::view::KeyStatus::Compensated {
                return Err(key_conflict(id, seq, name, k, KeyClash::Compensated));
            }
            // A key belongs to one effect: never hand its result (or its
            // in-doubt state) to an effect of another name.
            if k.effect != name {
                return Err(key_conflict(id, seq, name, k, KeyClash::OtherEffect));
            }
        }
        let intent = JournalRecord::EffectIntent {
            unit: id.to_string(),
            seq,
            name: name.to_string(),
            key: key.clone(),
            policy,
            compensable,
        };
        let known = st.keys.get(&key).map(|k| k.outcome());
        Ok(match known {
            Some(Some(outcome)) => Prep::Reuse(ctx(&key, Attempt::First), intent, outcome),
            // Started elsewhere and not settled: it may have happened.
            Some(None) => {
                // Refused before anything is written while a live unit of
                // this process is executing it.
                let held = Self::hold_key(j, id, &key, name, seq)?;
                let lsn = j.append_locked(&mut st, id, &[intent])?;
                let resume = Resume {
                    rerun: false,
                    not_before_ms: 0,
                    round_base: 0,
                    deadline_ms: None,
                };
                Prep::InDoubt(ctx(&key, Attempt::Retry), lsn, held, resume)
            }
            None => {
                let held = Self::hold_key(j, id, &key, name, seq)?;
                let lsn = j.append_locked(&mut st, id, &[intent])?;
                Prep::Fresh(ctx(&key, Attempt::First), lsn, held)
            }
        })
    }

    /// Marks `key` as executed by this unit (called with the state lock
    /// held, so the check and the intent are one step), or
    /// [`Error::KeyBusy`] when another live unit of this process holds it.
    fn hold_key(j: &Journal, id: &str, key: &str, name: &str, seq: u32) -> Result<KeyGuard> {
        let mut running = j.inner.running.lock();
        if let Some(holder) = running.get(key) {
            return Err(Error::KeyBusy {
                unit: id.to_string(),
                step: seq,
                effect: name.to_string(),
                key: key.to_string(),
                holder: holder.clone(),
            });
        }
        running.insert(key.to_string(), id.to_string());
        Ok(KeyGuard {
            journal: j.clone(),
            key: key.to_string(),
        })
    }

    fn decode<T: DeserializeOwned>(&self, seq: u32, name: &str, o: Outcome) -> Result<T> {
        match o {
            Outcome::Ok { value } => serde_json::from_value(value).map_err(|e| Error::ResultType {
                unit: self.id().to_string(),
                step: seq,
                effect: name.to_string(),
                reason: e.to_string(),
            }),
            Outcome::Err { message } => Err(Error::EffectFailed {
                unit: self.id().to_string(),
                step: seq,
                effect: name.to_string(),
                message,
            }),
        }
    }

    fn reuse_records(ctx: &EffectCtx, intent: JournalRecord, o: &Outcome) -> Vec<JournalRecord> {
        vec![intent, Self::key_index_outcome(ctx, o)]
    }

    fn key_index_outcome(ctx: &EffectCtx, o: &Outcome) -> JournalRecord {
        JournalRecord::EffectOutcome {
            unit: ctx.unit.clone(),
            seq: ctx.seq,
            key: ctx.key.clone(),
            outcome: o.clone(),
            via: OutcomeVia::KeyIndex,
            at_ms: now_ms(),
        }
    }

    /// Turns the closure's result into the outcome record and the value to
    /// return. A result that is too large or would not replay (its JSON
    /// does not read back as the same value) is recorded as a failed
    /// outcome carrying the reason — the effect ran, so something must be
    /// recorded or it would run again — and returned as a typed error that
    /// says so.
    fn outcome_of<T: Serialize + DeserializeOwned, E: Display>(
        &self,
        ctx: &EffectCtx,
        r: std::result::Result<T, E>,
        via: OutcomeVia,
    ) -> (JournalRecord, Result<T>) {
        let limit = self.j().inner.opts.max_payload_bytes;
        let not_replayable = |reason: String| {
            let message = clip(
                format!("the effect ran, but its result {reason}; recorded as failed instead"),
                (limit / 2) as usize,
            );
            (
                Outcome::Err { message },
                Err(Error::ResultNotReplayable {
                    unit: ctx.unit.clone(),
                    step: ctx.seq,
                    effect: ctx.name.clone(),
                    key: ctx.key.clone(),
                    reason,
                }),
            )
        };
        let (outcome, ret) = match r {
            Ok(v) => match serde_json::to_value(&v) {
                Ok(value) => {
                    let size = super::json_size(&value);
                    if size > limit {
                        (
                            Outcome::Err {
                                message: format!(
                                    "the effect ran, but its result of {size} bytes exceeds the payload limit of {limit} bytes; the result was not saved"
                                ),
                            },
                            Err(Error::ResultTooLarge {
                                unit: ctx.unit.clone(),
                                step: ctx.seq,
                                effect: ctx.name.clone(),
                                key: ctx.key.clone(),
                                size,
                                limit,
                            }),
                        )
                    } else if let Err(why) = check_round_trip::<T>(&value) {
                        not_replayable(format!(
                            "would be recorded as {}, which {why}",
                            clip(value.to_string(), 200)
                        ))
                    } else {
                        (Outcome::Ok { value }, Ok(v))
                    }
                }
                Err(e) => not_replayable(format!("cannot be encoded as JSON ({e})")),
            },
            Err(e) => {
                let message = clip(e.to_string(), (limit / 2) as usize);
                (
                    Outcome::Err {
                        message: message.clone(),
                    },
                    Err(Error::EffectFailed {
                        unit: ctx.unit.clone(),
                        step: ctx.seq,
                        effect: ctx.name.clone(),
                        message,
                    }),
                )
            }
        };
        let rec = JournalRecord::EffectOutcome {
            unit: ctx.unit.clone(),
            seq: ctx.seq,
            key: ctx.key.clone(),
            outcome,
            via,
            at_ms: now_ms(),
        };
        (rec, ret)
    }

    fn in_doubt_error(&self, ctx: &EffectCtx) -> Error {
        Error::InDoubt {
            unit: ctx.unit.clone(),
            step: ctx.seq,
            effect: ctx.name.clone(),
            key: ctx.key.clone(),
        }
    }

    /// Runs (or replays) one effect. See the module documentation for the
    /// protocol. `f` receives the effect's context (its idempotency key
    /// above all); its error is recorded as the effect's failed outcome and
    /// returned as [`Error::EffectFailed`] (a recorded failure is returned
    /// again on resume, never retried).
    ///
    /// Errors that mean nothing ran and nothing was written:
    /// [`Error::EffectMismatch`] (the step was recorded with another name,
    /// key, policy or compensable flag), [`Error::KeyConflict`] (the key
    /// belongs to an effect of another name), [`Error::KeyBusy`] (retryable:
    /// another live unit of this process is executing the key),
    /// [`Error::RollingBack`] (a rollback of this unit has begun). Errors
    /// that mean the effect ran and a failure was recorded in place of its
    /// result: [`Error::ResultNotReplayable`], [`Error::ResultTooLarge`].
    ///
    /// ```
    /// use agentwal::journal::{Effect, Journal, JournalOptions, Probe};
    /// let dir = tempfile::tempdir().unwrap();
    /// let journal = Journal::open(dir.path(), JournalOptions::small()).unwrap();
    /// let mut unit = journal.begin("u1", "demo", &()).unwrap();
    /// let tokens: u32 = unit
    ///     .run(Effect::reconcile("llm", |_ctx| Ok::<_, String>(Probe::NotHappened)), |_ctx| {
    ///         Ok::<_, String>(1234)
    ///     })
    ///     .unwrap();
    /// assert_eq!(tokens, 1234);
    /// drop(unit); // not committed: resumable
    ///
    /// let mut again = journal.begin("u1", "demo", &()).unwrap();
    /// assert!(again.is_resumed());
    /// let replayed: u32 = again
    ///     .run(Effect::reconcile("llm", |_ctx| Ok::<_, String>(Probe::NotHappened)), |_ctx| {
    ///         unreachable!("completed effects are not run again");
    ///         #[allow(unreachable_code)]
    ///         Ok::<u32, String>(0)
    ///     })
    ///     .unwrap();
    /// assert_eq!(replayed, 1234);
    /// again.commit().unwrap();
    /// ```
    pub fn run<T, E, F>(&mut self, effect: Effect<'_, T>, mut f: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        E: Display + 'static,
        F: FnMut(&EffectCtx) -> std::result::Result<T, E>,
    {
        let Effect {
            name,
            key,
            policy,
            compensable,
            retry,
        } = effect;
        if matches!(policy, Policy::ReconcileAsync(_)) {
            return Err(Error::InvalidCall {
                unit: self.id().to_string(),
                reason: format!("effect {name:?} has an async reconcile probe: use run_async"),
            });
        }
        let seq = self.next_seq;
        let kind = policy.kind();
        // So that an operator's result for this effect is checked against T.
        self.j().register_type(&name, check_round_trip::<T>);
        let prep = Self::prepare(
            self.j(),
            self.id(),
            seq,
            &name,
            key.as_deref(),
            kind,
            compensable,
        )?;
        let j = self.j().clone();
        let id = self.id().to_string();
        let fallback = key.clone().unwrap_or_else(|| default_key(&id, &name, seq));
        let span = self.effect_span(seq, &name, kind, Self::prep_key(&prep, &fallback));
        let _in_span = span.enter();
        let mut start = match self.plan(prep, policy) {
            Plan::Replay(records, o) => {
                if !records.is_empty() {
                    j.append(&id, &records, Durability::Buffered)?;
                }
                return self.replayed(seq, &name, o);
            }
            Plan::Act(wait, act) => {
                if let Some(lsn) = wait {
                    j.inner.log.wait_durable(lsn)?;
                }
                match act {
                    Act::Refuse(e) => return Err(e),
                    Act::Run(start) => start,
                    Act::Probe(policy, start) => {
                        let answer = match policy {
                            Policy::Reconcile(probe) => probe(&start.ctx),
                            _ => unreachable!("refused above: only a sync probe gets here"),
                        };
                        match self.after_probe(start, answer)? {
                            Probed::Run(start) => start,
                            Probed::Record(rec, ret, _held) => {
                                j.append(&id, &[rec], Durability::Buffered)?;
                                return self.recorded(ret, OutcomeVia::Reconcile);
                            }
                        }
                    }
                }
            }
        };
        if let Some(not_before) = start.rerun_at {
            // A re-run is one more attempt: counted durably before it runs.
            let wait = Self::until(not_before);
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            start.ctx.number += 1;
            j.append(
                &id,
                &[Self::started_record(&start.ctx)],
                Durability::Durable,
            )?;
        }
        let (mut ctx, via, _held, mut round) = self.start_round(start, &retry);
        loop {
            let err = match f(&ctx) {
                Ok(v) => return self.finish(&ctx, Ok::<T, String>(v), via),
                Err(e) => e,
            };
            let (class, after) = classify(&err);
            match self.after_failure(
                &ctx,
                kind,
                &retry,
                &mut round,
                class,
                after,
                err.to_string(),
            ) {
                Next::Record(message) => return self.finish(&ctx, Err::<T, String>(message), via),
                Next::Stop(e) => return Err(e),
                Next::GiveUp(rec, e) => {
                    j.append(&id, &[rec], Durability::Durable)?;
                    return Err(e);
                }
                Next::Retry {
                    failed,
                    wait,
                    started,
                } => {
                    Self::retrying(&ctx, wait);
                    // Durable before the backoff: a crash while waiting
                    // neither forgets nor repeats the failed attempt.
                    j.append(&id, &[failed], Durability::Durable)?;
                    std::thread::sleep(wait);
                    j.append(&id, &[started], Durability::Durable)?;
                    ctx.next_attempt();
                }
            }
        }
    }

    /// The one decision of [`Unit::run`] and [`Unit::run_async`]: what the
    /// prepared step does under its policy. The shells only differ in how
    /// they write, wait, probe and sleep.
    fn plan<'p, T>(&self, prep: Prep, policy: Policy<'p, T>) -> Plan<'p, T> {
        match prep {
            Prep::Recorded(o) => {
                crate::observe::effect("replayed");
                Plan::Replay(Vec::new(), o)
            }
            // The key settled earlier: nothing runs; record the reuse so
            // this unit replays on its own.
            Prep::Reuse(ctx, intent, o) => Plan::Replay(Self::reuse_records(&ctx, intent, &o), o),
            Prep::Settled(ctx, o) => Plan::Replay(vec![Self::key_index_outcome(&ctx, &o)], o),
            // Syncs the intent only when the policy needs it
            // ([`intent_needs_sync`]): the sync that makes a crash during
            // the effect visible as "in doubt" instead of "never started".
            Prep::Fresh(ctx, lsn, held) => Plan::Act(
                intent_needs_sync(policy.kind()).then_some(lsn),
                Act::Run(Start {
                    ctx,
                    via: OutcomeVia::Run,
                    held,
                    round: Round {
                        base: 0,
                        deadline_ms: None,
                    },
                    rerun_at: None,
                }),
            ),
            // The intent must be durable before anything is decided: the
            // wait returns at once for a durable intent and fails
            // (poisoned) for one whose sync failed, so nothing runs
            // without it.
            Prep::InDoubt(ctx, intent_lsn, held, resume) => {
                let start = |ctx, rerun_at| Start {
                    ctx,
                    via: OutcomeVia::Retry,
                    held,
                    round: Round {
                        base: resume.round_base,
                        deadline_ms: resume.deadline_ms,
                    },
                    rerun_at: Some(rerun_at),
                };
                let act = if resume.rerun {
                    Self::in_doubt_decision(
                        &ctx,
                        "retry policy: the interrupted attempt runs again with the same key",
                    );
                    Act::Run(start(ctx, resume.not_before_ms))
                } else {
                    match policy {
                        Policy::NeverRepeat => {
                            Self::in_doubt_decision(
                                &ctx,
                                "never_repeat: not run again, waiting for an operator",
                            );
                            Act::Refuse(self.in_doubt_error(&ctx))
                        }
                        Policy::RetrySameKey => {
                            Self::in_doubt_decision(
                                &ctx,
                                "retry_same_key: running it again with the same key",
                            );
                            Act::Run(start(ctx, 0))
                        }
                        probe @ (Policy::Reconcile(_) | Policy::ReconcileAsync(_)) => {
                            Act::Probe(probe, start(ctx, 0))
                        }
                    }
                };
                Plan::Act(Some(intent_lsn), act)
            }
        }
    }

    /// What a reconcile probe's answer means: record its result (it
    /// happened), run the effect again with the same key, or stay in doubt.
    fn after_probe<T: Serialize + DeserializeOwned>(
        &mut self,
        start: Start,
        answer: std::result::Result<Probe<T>, String>,
    ) -> Result<Probed<T>> {
        let ctx = &start.ctx;
        match answer {
            Ok(Probe::Happened(v)) => {
                Self::in_doubt_decision(
                    ctx,
                    "reconcile: the probe says it happened; its answer is recorded",
                );
                self.next_seq += 1;
                let (rec, ret) = self.outcome_of(ctx, Ok::<T, String>(v), OutcomeVia::Reconcile);
                Ok(Probed::Record(rec, ret, start.held))
            }
            Ok(Probe::NotHappened) => {
                Self::in_doubt_decision(
                    ctx,
                    "reconcile: the probe says it did not happen; running it again with the same key",
                );
                Ok(Probed::Run(start))
            }
            Err(message) => Err(Error::ReconcileFailed {
                unit: ctx.unit.clone(),
                step: ctx.seq,
                effect: ctx.name.clone(),
                message,
            }),
        }
    }

    /// A step that runs nothing returns its recorded outcome.
    fn replayed<T: DeserializeOwned>(&mut self, seq: u32, name: &str, o: Outcome) -> Result<T> {
        self.next_seq += 1;
        self.decode(seq, name, o)
    }

    /// The attempts' total deadline starts now (unless a resumed round
    /// carries one), and the step is taken; the parts of `start` the
    /// attempt loop needs.
    fn start_round(
        &mut self,
        start: Start,
        retry: &RetryPolicy,
    ) -> (EffectCtx, OutcomeVia, KeyGuard, Round) {
        let Start {
            ctx,
            via,
            held,
            mut round,
            ..
        } = start;
        if round.deadline_ms.is_none() {
            round.deadline_ms = retry.deadline.map(|d| now_ms() + d.as_millis() as u64);
        }
        self.next_seq += 1;
        (ctx, via, held, round)
    }

    /// How long until `not_before_ms` (zero when past).
    fn until(not_before_ms: u64) -> std::time::Duration {
        std::time::Duration::from_millis(not_before_ms.saturating_sub(now_ms()))
    }

    fn retrying(ctx: &EffectCtx, wait: std::time::Duration) {
        tracing::info!(
            target: "agentwal::unit",
            attempt = ctx.number,
            wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            "transient failure: retrying with the same key"
        );
    }

    fn started_record(ctx: &EffectCtx) -> JournalRecord {
        JournalRecord::AttemptStarted {
            unit: ctx.unit.clone(),
            seq: ctx.seq,
            attempt: ctx.number,
            at_ms: now_ms(),
        }
    }

    /// Decides what follows a failed attempt (see [`super::retry`]).
    #[allow(clippy::too_many_arguments)]
    fn after_failure(
        &self,
        ctx: &EffectCtx,
        kind: PolicyKind,
        retry: &RetryPolicy,
        round: &mut Round,
        class: ErrorClass,
        after: Option<std::time::Duration>,
        message: String,
    ) -> Next {
        let limit = (self.j().inner.opts.max_payload_bytes / 2) as usize;
        let message = clip(message, limit.min(64 << 10));
        let retryable = match class {
            ErrorClass::Permanent => return Next::Record(message),
            ErrorClass::InDoubt => {
                return Next::Stop(Error::LeftInDoubt {
                    unit: ctx.unit.clone(),
                    step: ctx.seq,
                    effect: ctx.name.clone(),
                    key: ctx.key.clone(),
                    message,
                })
            }
            // The attempt may have happened: at most once means no retry.
            ErrorClass::Transient => kind != PolicyKind::NeverRepeat,
            ErrorClass::NotHappened => true,
        };
        if !retryable
            || (retry.max_attempts <= 1 && retry.on_exhausted == OnExhausted::RecordFailure)
        {
            return Next::Record(message);
        }
        let now = now_ms();
        let n = ctx.number;
        let used = n.saturating_sub(round.base);
        let wait = retry
            .delay_before(used + 1, jitter_draw(&ctx.key))
            .max(after.unwrap_or_default());
        let retry_at_ms = now + wait.as_millis() as u64;
        let out_of_attempts = used >= retry.max_attempts;
        let out_of_time = round.deadline_ms.is_some_and(|d| retry_at_ms > d);
        let failed = |gave_up: bool| JournalRecord::AttemptFailed {
            unit: ctx.unit.clone(),
            seq: ctx.seq,
            attempt: n,
            message: message.clone(),
            not_happened: class == ErrorClass::NotHappened,
            retry_at_ms,
            deadline_ms: round.deadline_ms,
            gave_up,
            at_ms: now,
        };
        if out_of_attempts || out_of_time {
            let why = if out_of_attempts {
                format!("{used} attempts used")
            } else {
                "deadline reached".to_string()
            };
            return match retry.on_exhausted {
                OnExhausted::RecordFailure => {
                    Next::Record(format!("{message} (gave up after attempt {n}: {why})"))
                }
                OnExhausted::LeaveInDoubt => Next::GiveUp(
                    failed(true),
                    Error::RetriesExhausted {
                        unit: ctx.unit.clone(),
                        step: ctx.seq,
                        effect: ctx.name.clone(),
                        key: ctx.key.clone(),
                        attempts: n,
                        message: format!("{message} ({why})"),
                    },
                ),
            };
        }
        let mut next = ctx.clone();
        next.number += 1;
        Next::Retry {
            failed: failed(false),
            wait,
            started: Self::started_record(&next),
        }
    }

    fn finish<T: Serialize + DeserializeOwned, E: Display>(
        &self,
        ctx: &EffectCtx,
        r: std::result::Result<T, E>,
        via: OutcomeVia,
    ) -> Result<T> {
        let (rec, ret) = self.outcome_of(ctx, r, via);
        // Buffered: the next intent's or the commit's sync makes it durable.
        // Until then a crash leaves the effect in doubt, handled by its policy.
        self.j().append(self.id(), &[rec], Durability::Buffered)?;
        self.recorded(ret, via)
    }

    /// Metrics and trace of an outcome just recorded; returns it.
    fn recorded<T>(&self, ret: Result<T>, via: OutcomeVia) -> Result<T> {
        crate::observe::effect(if ret.is_ok() { "ok" } else { "failed" });
        tracing::debug!(target: "agentwal::unit", ok = ret.is_ok(), via = ?via, "effect outcome recorded");
        ret
    }

    fn check_committable(&self) -> Result<()> {
        let st = self.j().inner.state.lock();
        if let Some(u) = st.units.get(self.id()) {
            if let Some(e) = u.effects.iter().find(|e| e.comp_intent.is_some()) {
                return Err(Error::RollingBack {
                    unit: self.id().to_string(),
                    step: e.seq,
                    action: "commit",
                });
            }
            if let Some(e) = u.effects.iter().find(|e| e.outcome.is_none()) {
                return Err(Error::InvalidCall {
                    unit: self.id().to_string(),
                    reason: format!(
                        "cannot commit: step {} (effect {:?}) is in doubt; run it again or roll the unit back",
                        e.seq, e.name
                    ),
                });
            }
            let recorded = u.effects.len() as u32;
            if recorded > self.next_seq {
                return Err(Error::UnreplayedSteps {
                    unit: self.id().to_string(),
                    replayed: self.next_seq,
                    recorded,
                });
            }
        }
        Ok(())
    }

    /// Commits the unit durably (one `fdatasync`, which also covers the
    /// buffered outcome before it). Returns the commit's LSN.
    ///
    /// Refused while an effect of the unit is in doubt
    /// ([`Error::InvalidCall`]), once a rollback has recorded a compensation
    /// ([`Error::RollingBack`]: finish the rollback instead), and when the
    /// journal records more steps than this (resumed) handle asked for
    /// ([`Error::UnreplayedSteps`]: code that no longer knows a recorded
    /// effect must not commit over it; replay it or roll the unit back).
    pub fn commit(self) -> Result<u64> {
        let lsn = self.commit_write()?;
        self.j().inner.log.wait_durable(lsn)?;
        self.committed(lsn);
        self.j().maybe_auto_compact();
        Ok(lsn)
    }

    /// The checks and the commit record, buffered (the caller waits for
    /// its sync before reporting the commit).
    fn commit_write(&self) -> Result<u64> {
        self.check_committable()?;
        let rec = JournalRecord::Commit {
            unit: self.id().to_string(),
            at_ms: now_ms(),
        };
        self.j().append(self.id(), &[rec], Durability::Buffered)
    }

    /// Metrics and trace of a durable commit.
    fn committed(&self, lsn: u64) {
        crate::observe::unit_ended("committed");
        tracing::debug!(target: "agentwal::unit", parent: &self.span, lsn, "unit committed");
    }

    /// Rolls the unit back: runs `compensate` for every compensable effect
    /// that completed (or is in doubt), in reverse step order, each between
    /// a durable compensation intent and a recorded outcome, then appends
    /// the abort record durably. Compensations already recorded by an
    /// interrupted earlier rollback are skipped; one whose intent is recorded
    /// without outcome runs again with [`Compensation::retry`] set. A failing
    /// compensation stops the rollback ([`Error::CompensationFailed`]); the
    /// unit stays incomplete and the rollback can be retried.
    ///
    /// ```
    /// use agentwal::journal::{Effect, Journal, JournalOptions, UnitState};
    /// let dir = tempfile::tempdir().unwrap();
    /// let journal = Journal::open(dir.path(), JournalOptions::small()).unwrap();
    /// let mut unit = journal.begin("u", "demo", &()).unwrap();
    /// unit.run(Effect::never_repeat("reserve").compensable(), |_| Ok::<_, String>(1)).unwrap();
    /// unit.run(Effect::never_repeat("charge").compensable(), |_| Ok::<_, String>(2)).unwrap();
    /// let mut undone = Vec::new();
    /// let report = unit
    ///     .rollback("customer cancelled", |c| {
    ///         undone.push(c.effect.clone());
    ///         Ok::<_, String>(())
    ///     })
    ///     .unwrap();
    /// assert_eq!(undone, ["charge", "reserve"]);
    /// assert_eq!(report.compensated, [1, 0]);
    /// assert_eq!(journal.unit_state("u"), Some(UnitState::Aborted));
    /// ```
    pub fn rollback<E, F>(self, reason: &str, mut compensate: F) -> Result<RollbackReport>
    where
        E: Display,
        F: FnMut(&Compensation) -> std::result::Result<(), E>,
    {
        let (todo, mut report) = Self::rollback_plan(self.j(), self.id())?;
        for (c, recorded) in todo {
            let intent = match recorded {
                Some(lsn) => lsn,
                None => self.j().append(
                    self.id(),
                    &[Self::compensation_intent(&c)],
                    Durability::Buffered,
                )?,
            };
            // Durable before the compensation runs, so that an interrupted
            // rollback knows it may have run. An intent recorded earlier may
            // have failed its sync (then this fails, poisoned): never
            // compensate on a non-durable intent.
            self.j().inner.log.wait_durable(intent)?;
            let rec = Self::compensated(&c, compensate(&c))?;
            // Buffered: the next compensation intent or the abort syncs it.
            self.j().append(self.id(), &[rec], Durability::Buffered)?;
            report.compensated.push(c.seq);
        }
        // Durable: the unit is reported aborted.
        report.abort_lsn =
            self.j()
                .append(self.id(), &[self.abort_record(reason)], Durability::Durable)?;
        self.rolled_back(&report, reason);
        self.j().maybe_auto_compact();
        Ok(report)
    }

    /// What a rollback of unit `id` does, for both [`Unit::rollback`] and
    /// [`Unit::rollback_async`]: the compensations to run, in reverse step
    /// order, each with the LSN of its compensation intent when an earlier,
    /// interrupted rollback recorded one (it runs again as a retry), and
    /// the report listing the steps already compensated.
    #[allow(clippy::type_complexity)]
    fn rollback_plan(
        j: &Journal,
        id: &str,
    ) -> Result<(Vec<(Compensation, Option<u64>)>, RollbackReport)> {
        let mut report = RollbackReport::default();
        let st = j.inner.state.lock();
        let u = st
            .units
            .get(id)
            .filter(|u| u.end.is_none())
            .ok_or_else(|| Error::UnknownUnit {
                unit: id.to_string(),
            })?;
        let mut todo = Vec::new();
        for e in u.effects.iter().rev().filter(|e| e.compensable) {
            match e.status() {
                EffectStatus::Compensated => report.already_compensated.push(e.seq),
                EffectStatus::Completed | EffectStatus::InDoubt => {
                    let result = match &e.outcome {
                        Some((Outcome::Ok { value }, _, _)) => Some(value.clone()),
                        _ => None,
                    };
                    todo.push((
                        Compensation {
                            unit: id.to_string(),
                            seq: e.seq,
                            effect: e.name.clone(),
                            effect_key: e.key.clone(),
                            key: format!("{}/compensate", e.key),
                            effect_in_doubt: e.outcome.is_none(),
                            result,
                            retry: e.comp_intent.is_some(),
                        },
                        e.comp_intent,
                    ));
                }
                EffectStatus::Failed | EffectStatus::NotStarted => {}
            }
        }
        Ok((todo, report))
    }

    /// The intent of compensation `c`, to be durable before it runs.
    fn compensation_intent(c: &Compensation) -> JournalRecord {
        JournalRecord::CompensationIntent {
            unit: c.unit.clone(),
            seq: c.seq,
            key: c.key.clone(),
        }
    }

    /// The outcome record of compensation `c` that returned `r`; a failure
    /// stops the rollback ([`Error::CompensationFailed`], nothing recorded:
    /// the intent stays, and the next rollback runs it again as a retry).
    fn compensated<E: Display>(
        c: &Compensation,
        r: std::result::Result<(), E>,
    ) -> Result<JournalRecord> {
        r.map_err(|e| Error::CompensationFailed {
            unit: c.unit.clone(),
            step: c.seq,
            effect: c.effect.clone(),
            message: e.to_string(),
        })?;
        Ok(JournalRecord::CompensationOutcome {
            unit: c.unit.clone(),
            seq: c.seq,
            outcome: Outcome::Ok { value: Value::Null },
        })
    }

    /// The abort record ending a rollback.
    fn abort_record(&self, reason: &str) -> JournalRecord {
        JournalRecord::Abort {
            unit: self.id().to_string(),
            reason: reason.to_string(),
            at_ms: now_ms(),
        }
    }

    /// Metrics and trace of a durable abort.
    fn rolled_back(&self, report: &RollbackReport, reason: &str) {
        crate::observe::unit_ended("aborted");
        tracing::info!(
            target: "agentwal::unit",
            parent: &self.span,
            lsn = report.abort_lsn,
            reason,
            "unit rolled back and aborted"
        );
    }
}

#[cfg(feature = "tokio")]
impl Unit {
    /// Async [`Unit::run`]: `f` returns a future. No file I/O runs on the
    /// executor: the step's locked check and its buffered write (intent,
    /// outcome, attempt records) run on tokio's blocking pool for the
    /// microseconds they take, and every wait for an `fdatasync` is a
    /// future on the log's writer thread ([`crate::log::Log::wait_durable_async`]),
    /// holding no thread. The decision per policy is [`Unit::run`]'s, shared.
    ///
    /// A reconcile probe given with [`Effect::reconcile`] runs inline on
    /// the executor (keep it quick); one given with
    /// [`Effect::reconcile_async`] is awaited.
    pub async fn run_async<T, E, F, Fut>(&mut self, effect: Effect<'_, T>, mut f: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        E: Display + 'static,
        F: FnMut(EffectCtx) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, E>>,
    {
        let Effect {
            name,
            key,
            policy,
            compensable,
            retry,
        } = effect;
        let seq = self.next_seq;
        let kind = policy.kind();
        // So that an operator's result for this effect is checked against T.
        self.j().register_type(&name, check_round_trip::<T>);
        let j = self.j().clone();
        let id = self.id().to_string();
        let prep = {
            let (j, id, name, key) = (j.clone(), id.clone(), name.clone(), key.clone());
            super::blocking(move || {
                Self::prepare(&j, &id, seq, &name, key.as_deref(), kind, compensable)
            })
            .await?
        };
        let write = |recs: Vec<JournalRecord>, d: Durability| j.append_async(&id, recs, d);
        let mut start = match self.plan(prep, policy) {
            Plan::Replay(records, o) => {
                if !records.is_empty() {
                    write(records, Durability::Buffered).await?;
                }
                return self.replayed(seq, &name, o);
            }
            Plan::Act(wait, act) => {
                if let Some(lsn) = wait {
                    j.wait_durable_async(lsn).await?;
                }
                match act {
                    Act::Refuse(e) => return Err(e),
                    Act::Run(start) => start,
                    Act::Probe(policy, start) => {
                        let answer = match policy {
                            Policy::Reconcile(probe) => probe(&start.ctx),
                            Policy::ReconcileAsync(probe) => probe(start.ctx.clone()).await,
                            _ => unreachable!("plan probes only a reconcile policy"),
                        };
                        match self.after_probe(start, answer)? {
                            Probed::Run(start) => start,
                            Probed::Record(rec, ret, _held) => {
                                write(vec![rec], Durability::Buffered).await?;
                                return self.recorded(ret, OutcomeVia::Reconcile);
                            }
                        }
                    }
                }
            }
        };
        if let Some(not_before) = start.rerun_at {
            // A re-run is one more attempt: counted durably before it runs.
            let wait = Self::until(not_before);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            start.ctx.number += 1;
            write(vec![Self::started_record(&start.ctx)], Durability::Durable).await?;
        }
        let (mut ctx, via, _held, mut round) = self.start_round(start, &retry);
        let span = self.effect_span(seq, &name, kind, ctx.key());
        loop {
            let attempt = tracing::Instrument::instrument(f(ctx.clone()), span.clone());
            let r = match retry.attempt_timeout {
                Some(t) => match tokio::time::timeout(t, attempt).await {
                    Ok(r) => r.map_err(|e| (classify(&e), e.to_string())),
                    Err(_) => Err((
                        (ErrorClass::Transient, None),
                        format!("attempt {} timed out after {t:?}", ctx.number),
                    )),
                },
                None => attempt.await.map_err(|e| (classify(&e), e.to_string())),
            };
            let ((class, after), message) = match r {
                Ok(v) => return self.finish_async(&ctx, Ok::<T, String>(v), via).await,
                Err(e) => e,
            };
            match self.after_failure(&ctx, kind, &retry, &mut round, class, after, message) {
                Next::Record(message) => {
                    return self
                        .finish_async(&ctx, Err::<T, String>(message), via)
                        .await
                }
                Next::Stop(e) => return Err(e),
                Next::GiveUp(rec, e) => {
                    write(vec![rec], Durability::Durable).await?;
                    return Err(e);
                }
                Next::Retry {
                    failed,
                    wait,
                    started,
                } => {
                    Self::retrying(&ctx, wait);
                    write(vec![failed], Durability::Durable).await?;
                    tokio::time::sleep(wait).await;
                    write(vec![started], Durability::Durable).await?;
                    ctx.next_attempt();
                }
            }
        }
    }

    /// Async [`Unit::finish`]: the outcome record, buffered.
    async fn finish_async<T: Serialize + DeserializeOwned>(
        &self,
        ctx: &EffectCtx,
        r: std::result::Result<T, String>,
        via: OutcomeVia,
    ) -> Result<T> {
        let (rec, ret) = self.outcome_of(ctx, r, via);
        self.j()
            .append_async(self.id(), vec![rec], Durability::Buffered)
            .await?;
        self.recorded(ret, via)
    }

    /// Async [`Unit::checkpoint`]: the write on the blocking pool, the
    /// sync awaited without a thread.
    pub async fn checkpoint_async<S: Serialize + ?Sized>(&mut self, state: &S) -> Result<u64> {
        let rec = self.checkpoint_record(state)?;
        self.j()
            .append_async(self.id(), vec![rec], Durability::Durable)
            .await
    }

    /// Async [`Unit::rollback`]: `compensate` returns a future (it gets the
    /// [`Compensation`] by value). The same rollback as the sync call
    /// (one shared plan decides, the same records in the same
    /// order, each compensation intent durable before its compensation
    /// runs, the abort durable before this returns), but no file I/O on the
    /// executor: the plan and every buffered write run on tokio's blocking
    /// pool, every `fdatasync` is awaited on the log's writer thread
    /// without holding a thread, and the compensation's future is awaited
    /// on the executor like [`Unit::run_async`]'s effect. A rollback
    /// interrupted here — a crash, a failing compensation, or this future
    /// dropped while a compensation runs — leaves that compensation's
    /// intent without outcome: the next rollback (sync or async) runs it
    /// again with [`Compensation::retry`] set, and [`Unit::run`] /
    /// [`Unit::commit`] (and their async twins) refuse the unit with
    /// [`Error::RollingBack`].
    ///
    /// ```
    /// # #[cfg(feature = "tokio")] {
    /// use agentwal::journal::{Effect, Journal, JournalOptions, UnitState};
    /// let dir = tempfile::tempdir().unwrap();
    /// let journal = Journal::open(dir.path(), JournalOptions::small()).unwrap();
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    /// let report = rt.block_on(async {
    ///     let mut unit = journal.begin_async("u", "demo", &()).await.unwrap();
    ///     unit.run_async(Effect::never_repeat("reserve").compensable(), |_| async {
    ///         Ok::<_, String>(1)
    ///     })
    ///     .await
    ///     .unwrap();
    ///     unit.rollback_async("customer cancelled", |c| async move {
    ///         // inventory.release(c.key).await
    ///         assert_eq!(c.effect, "reserve");
    ///         Ok::<_, String>(())
    ///     })
    ///     .await
    ///     .unwrap()
    /// });
    /// assert_eq!(report.compensated, [0]);
    /// assert_eq!(journal.unit_state("u"), Some(UnitState::Aborted));
    /// # }
    /// ```
    pub async fn rollback_async<E, F, Fut>(
        self,
        reason: &str,
        mut compensate: F,
    ) -> Result<RollbackReport>
    where
        E: Display,
        F: FnMut(Compensation) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<(), E>>,
    {
        let j = self.j().clone();
        let id = self.id().to_string();
        let (todo, mut report) = {
            let (j, id) = (j.clone(), id.clone());
            super::blocking(move || Self::rollback_plan(&j, &id)).await?
        };
        for (c, recorded) in todo {
            let intent = match recorded {
                Some(lsn) => lsn,
                None => {
                    j.append_async(
                        &id,
                        vec![Self::compensation_intent(&c)],
                        Durability::Buffered,
                    )
                    .await?
                }
            };
            // As in `rollback`: durable before the compensation runs.
            j.wait_durable_async(intent).await?;
            let rec = Self::compensated(&c, compensate(c.clone()).await)?;
            j.append_async(&id, vec![rec], Durability::Buffered).await?;
            report.compensated.push(c.seq);
        }
        report.abort_lsn = j
            .append_async(&id, vec![self.abort_record(reason)], Durability::Durable)
            .await?;
        self.rolled_back(&report, reason);
        j.upkeep_async().await;
        Ok(report)
    }

    /// Async [`Unit::commit`]: the checks and the buffered commit record on
    /// the blocking pool, the `fdatasync` awaited without a thread, an
    /// automatic compaction (when due) on the blocking pool again.
    pub async fn commit_async(self) -> Result<u64> {
        let (unit, lsn) = super::blocking(move || {
            let lsn = self.commit_write()?;
            Ok((self, lsn))
        })
        .await?;
        unit.j().wait_durable_async(lsn).await?;
        unit.committed(lsn);
        unit.j().upkeep_async().await;
        Ok(lsn)
    }
}

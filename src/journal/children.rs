//! Parallel steps: a **fan-out** of child units gathered into one step of
//! their parent.
//!
//! A unit's own steps are sequential (`Unit::run` takes `&mut self`), so its
//! replay is a plain list. Parallel work (an agent's parallel tool calls) is
//! a fan-out: [`Unit::run_children`] (threads) or
//! [`Unit::run_children_async`] (one task, children polled concurrently)
//! begins one **child unit** per input, runs them at once, and records the
//! gathered results as **one step** of the parent.
//!
//! # What it promises
//!
//! * **Deterministic ids.** Child `i` of the fan-out recorded at the
//!   parent's step `s` under effect name `name` is the unit
//!   `<step key>/<i>`, where the step key is the parent's idempotency key of
//!   that step ([`default_key`]`(parent, name, s)`): the same code asks for
//!   the same ids after a crash, whatever finished first
//!   ([`Unit::child_id`] predicts them). Each child is an ordinary unit: its
//!   own effects, keys, policies, retries and commit, so every guarantee of
//!   a single unit holds for each child unchanged.
//! * **Order-independent replay.** The parent's step records the results
//!   ordered by child index, never by arrival. Its replay returns that list.
//! * **After a crash**: a recorded fan-out step returns its list without
//!   touching the children; otherwise the fan-out runs again: committed
//!   children return their recorded results (their last step, kept in the
//!   key index under `<child id>/result`) without running, incomplete
//!   ones resume (their recorded effects replay, in-doubt ones follow their
//!   policy), children that never began begin. Nothing repeats beyond its
//!   own policy.
//! * **A failed child** (its body returned an error) leaves the fan-out step
//!   *in doubt* (its intent recorded, no outcome) and the first failure by
//!   index is returned: resume the parent to try again (finished children
//!   are not re-run), or roll it back.
//! * **Rollback of the parent**: the fan-out step is compensable, so
//!   [`Unit::rollback`] calls the compensation function for it (completed or
//!   in doubt). [`Journal::children_of`] lists its children with their state
//!   and recorded result: committed children are undone by the caller (a
//!   committed unit cannot be rolled back: its effects happened), incomplete
//!   ones are rolled back with [`Journal::rollback`] (their own
//!   compensations run). docs/journal.md, "Parallel steps", has the recipe.
//!
//! # Cost
//!
//! The fan-out step is a `retry_same_key` step of the parent (its intent is
//! buffered: any durable write of a child makes it durable too, since the
//! log is one ordered stream). Each child adds its begin record, a result
//! step and a synced commit; children commit concurrently and share
//! `fdatasync`s through group commit.

use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::error::{Error, Result};
use super::record::Outcome;
use super::retry::StepError;
use super::state::State;
use super::unit::{default_key, Compensation, Effect, EffectCtx, Unit};
use super::view::UnitState;
use super::{Begun, Journal};

/// The effect name of a child's last step, which records its result.
pub const CHILD_RESULT_STEP: &str = "child-result";

/// One child of a fan-out, as [`Journal::children_of`] finds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildView {
    /// Its index in the fan-out (its position in the inputs).
    pub index: usize,
    /// Its unit id (`<fan-out step key>/<index>`).
    pub id: String,
    /// Incomplete, committed or aborted.
    pub state: UnitState,
    /// Its recorded result (committed children, while retained).
    pub result: Option<Value>,
}

/// The id of child `index` of the fan-out whose parent step has key
/// `step_key`.
fn child_unit_id(step_key: &str, index: usize) -> String {
    format!("{step_key}/{index}")
}

/// The idempotency key of a child's result step.
fn result_key(child: &str) -> String {
    format!("{child}/result")
}

impl Unit {
    /// The id child `index` of a fan-out named `name` gets when the fan-out
    /// is this unit's next step: `<default_key(unit, name, next_step)>/<index>`.
    ///
    /// ```
    /// use agentwal::journal::{Journal, JournalOptions};
    /// let dir = tempfile::tempdir().unwrap();
    /// let journal = Journal::open(dir.path(), JournalOptions::small()).unwrap();
    /// let unit = journal.begin("task-7", "task", &()).unwrap();
    /// assert_eq!(unit.child_id("tools", 2), "task-7/tools/0/2");
    /// ```
    pub fn child_id(&self, name: &str, index: usize) -> String {
        child_unit_id(&default_key(self.id(), name, self.next_step()), index)
    }

    /// Runs one child unit per input at once (one scoped thread each: meant
    /// for a handful of parallel calls; for many inputs use
    /// [`Unit::run_children_async`], or fan out in batches) and records
    /// their results, ordered by index, as this unit's next step (effect
    /// `name`, `retry_same_key`, compensable). Returns that list.
    ///
    /// `body(index, input, child)` runs the child's effects on the open
    /// (new or resumed) child unit and returns its result; the fan-out then
    /// records the result as the child's last step and commits it. The
    /// child's kind is `name` and its payload the input. A recorded fan-out
    /// step returns its list without running anything; see [docs/journal.md, "Parallel steps"](https://github.com/agentwal/agentwal/blob/main/docs/journal.md#parallel-steps-a-fan-out-of-child-units)
    /// for what happens after a crash, on failure and
    /// on rollback.
    ///
    /// ```
    /// use agentwal::journal::{Effect, Journal, JournalOptions};
    /// let dir = tempfile::tempdir().unwrap();
    /// let journal = Journal::open(dir.path(), JournalOptions::small()).unwrap();
    /// let mut unit = journal.begin("task-1", "task", &()).unwrap();
    /// let queries = ["rust wal", "fsync", "group commit"];
    /// let hits: Vec<usize> = unit
    ///     .run_children("search", &queries, |_i, q, child| {
    ///         child.run(Effect::retry_same_key("call"), |ctx| {
    ///             // Pass ctx.key() to the tool so that it can de-duplicate.
    ///             Ok::<_, std::io::Error>(q.len())
    ///         })
    ///     })
    ///     .unwrap();
    /// assert_eq!(hits, [8, 5, 12]); // by index, whatever finished first
    /// unit.commit().unwrap();
    /// ```
    pub fn run_children<I, T, F>(&mut self, name: &str, inputs: &[I], body: F) -> Result<Vec<T>>
    where
        I: Serialize + Sync,
        T: Serialize + DeserializeOwned + Send,
        F: Fn(usize, &I, &mut Unit) -> Result<T> + Sync,
    {
        let journal = self.journal().clone();
        let (parent, step) = (self.id().to_string(), self.next_step());
        let failure = Mutex::new(None);
        let out = self.run(
            Effect::retry_same_key(name).compensable(),
            |ctx: &EffectCtx| {
                let results: Vec<Result<T>> = std::thread::scope(|s| {
                    let handles: Vec<_> = inputs
                        .iter()
                        .enumerate()
                        .map(|(i, input)| {
                            let (journal, body, parent) = (&journal, &body, &parent);
                            let id = child_unit_id(ctx.key(), i);
                            s.spawn(move || {
                                let mut child = match journal.begin_or_finished(&id, name, input)? {
                                    Begun::Finished(f) => {
                                        return recorded_result(journal, parent, step, &id, f.state)
                                    }
                                    Begun::Open(child) => child,
                                };
                                let value = body(i, input, &mut child)?;
                                let mut slot = Some(value);
                                let value = child.run(result_effect(&id), |_| take(&mut slot))?;
                                child.commit()?;
                                Ok(value)
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                        .collect()
                });
                gather(results, &failure)
            },
        );
        first_failure(out, failure)
    }

    /// Async [`Unit::run_children`]: the children run concurrently on the
    /// calling task (their journal writes on tokio's blocking pool). The
    /// body returns a boxed future borrowing the child:
    /// `|i, input, child| Box::pin(async move { child.run_async(..).await })`.
    #[cfg(feature = "tokio")]
    pub async fn run_children_async<I, T, F>(
        &mut self,
        name: &str,
        inputs: &[I],
        body: F,
    ) -> Result<Vec<T>>
    where
        I: Serialize + Sync,
        T: Serialize + DeserializeOwned + Send + 'static,
        F: for<'a> Fn(usize, &'a I, &'a mut Unit) -> ChildFuture<'a, T> + Sync,
    {
        let journal = self.journal().clone();
        let (parent, step) = (self.id().to_string(), self.next_step());
        let failure = Mutex::new(None);
        let (journal, body, parent, failure_ref) = (&journal, &body, &parent, &failure);
        let out = self
            .run_async(
                Effect::retry_same_key(name).compensable(),
                move |ctx: EffectCtx| async move {
                    let futures: Vec<ChildFuture<'_, T>> = inputs
                        .iter()
                        .enumerate()
                        .map(|(i, input)| {
                            let id = child_unit_id(ctx.key(), i);
                            Box::pin(async move {
                                let payload =
                                    serde_json::to_value(input).map_err(|e| Error::Encode {
                                        unit: id.clone(),
                                        what: "child unit payload".into(),
                                        reason: e.to_string(),
                                    })?;
                                let begun =
                                    journal.begin_or_finished_async(&id, name, &payload).await?;
                                let mut child = match begun {
                                    Begun::Finished(f) => {
                                        return recorded_result(journal, parent, step, &id, f.state)
                                    }
                                    Begun::Open(child) => child,
                                };
                                let value = body(i, input, &mut child).await?;
                                let mut slot = Some(value);
                                let value = child
                                    .run_async(result_effect(&id), move |_| {
                                        std::future::ready(take(&mut slot))
                                    })
                                    .await?;
                                child.commit_async().await?;
                                Ok(value)
                            }) as ChildFuture<'_, T>
                        })
                        .collect();
                    gather(join_all::JoinAll::new(futures).await, failure_ref)
                },
            )
            .await;
        first_failure(out, failure)
    }
}

/// The future a child's body returns in [`Unit::run_children_async`].
#[cfg(feature = "tokio")]
pub type ChildFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send + 'a>>;

/// The child's last step: its result, under a key derived from its id.
fn result_effect<'p, T>(child: &str) -> Effect<'p, T> {
    Effect::retry_same_key(CHILD_RESULT_STEP).key(result_key(child))
}

/// Hands the body's value to the result step (called at most once: a
/// fresh `retry_same_key` step runs its closure once unless it fails).
fn take<T>(slot: &mut Option<T>) -> std::result::Result<T, StepError> {
    slot.take()
        .ok_or_else(|| StepError::permanent("child result already taken"))
}

/// The result of a child that already ended: committed children's
/// recorded result, from the key index.
fn recorded_result<T: DeserializeOwned>(
    journal: &Journal,
    parent: &str,
    step: u32,
    child: &str,
    state: UnitState,
) -> Result<T> {
    let unavailable = |reason: String| Error::ChildUnavailable {
        unit: parent.to_string(),
        step,
        child: child.to_string(),
        reason,
    };
    if state != UnitState::Committed {
        return Err(unavailable(format!(
            "it is {}: it was rolled back; roll the parent back too",
            state.as_str()
        )));
    }
    match journal.key_outcome(&result_key(child)) {
        Some(Outcome::Ok { value }) => serde_json::from_value(value).map_err(|e| {
            unavailable(format!(
                "its recorded result does not read back as the fan-out's result type ({e})"
            ))
        }),
        Some(_) => Err(unavailable("its result step is recorded as failed".into())),
        None => Err(unavailable(
            "its result is no longer retained (retention dropped the key)".into(),
        )),
    }
}

/// The children's results by index, or (when one failed) an in-doubt step
/// error with the first failure kept aside for the caller.
fn gather<T>(
    results: Vec<Result<T>>,
    failure: &Mutex<Option<Error>>,
) -> std::result::Result<Vec<T>, StepError> {
    let n = results.len();
    let mut out = Vec::with_capacity(n);
    let mut failed = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(v) => out.push(v),
            Err(e) => {
                failed.push(format!("child {i}: {e}"));
                let mut first = failure.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert(e);
            }
        }
    }
    if failed.is_empty() {
        Ok(out)
    } else {
        // In doubt, not failed: the finished children's effects happened,
        // so the step must stay visible to a rollback (and resumable).
        Err(StepError::in_doubt(format!(
            "{} of {n} children did not finish ({})",
            failed.len(),
            failed.join("; ")
        )))
    }
}

/// The fan-out's answer: the first child failure (typed, as the child
/// reported it) rather than the parent step's in-doubt summary.
fn first_failure<T>(out: Result<T>, failure: Mutex<Option<Error>>) -> Result<T> {
    match (out, failure.into_inner().unwrap_or_else(|p| p.into_inner())) {
        (Err(_), Some(first)) => Err(first),
        (out, _) => out,
    }
}

impl Journal {
    /// The children of the fan-out step a rollback is compensating, by index:
    /// every child that began (incomplete, or ended while its id is
    /// retained), with its recorded result when committed. Children that
    /// never began are absent (nothing of theirs happened).
    ///
    /// Use it in the compensation function of [`Unit::rollback`] for the
    /// fan-out's step: undo committed children from their results, and roll
    /// incomplete ones back with [`Journal::rollback`].
    pub fn children_of(&self, fan_out: &Compensation) -> Vec<ChildView> {
        let prefix = format!("{}/", fan_out.effect_key);
        let index_of = |id: &str| {
            id.strip_prefix(&prefix)
                .and_then(|rest| rest.parse::<usize>().ok())
        };
        let mut found: Vec<(usize, String, UnitState)> = {
            let st = self.inner.state.lock();
            known_ids(&st)
                .filter_map(|id| Some((index_of(id)?, id.to_string(), st.unit_state(id)?)))
                .collect()
        };
        found.sort_by_key(|c| c.0);
        found.dedup_by_key(|c| c.0);
        found
            .into_iter()
            .map(|(index, id, state)| {
                let result = match (state, self.key_outcome(&result_key(&id))) {
                    (UnitState::Committed, Some(Outcome::Ok { value })) => Some(value),
                    _ => None,
                };
                ChildView {
                    index,
                    id,
                    state,
                    result,
                }
            })
            .collect()
    }
}

impl Journal {
    /// Unit `id` if committed, and every committed unit below it (ids
    /// starting with `<id>/`: its fan-outs' children), while retained.
    #[cfg(feature = "testing")]
    pub(crate) fn committed_under(&self, id: &str) -> Vec<String> {
        let prefix = format!("{id}/");
        let st = self.inner.state.lock();
        let mut out: Vec<String> = known_ids(&st)
            .filter(|u| *u == id || u.starts_with(&prefix))
            .filter(|u| st.unit_state(u) == Some(UnitState::Committed))
            .map(str::to_string)
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Every unit id the state knows: incomplete (or kept) units, then the
/// retained finished ids (an id may appear in both).
fn known_ids(st: &State) -> impl Iterator<Item = &str> {
    let live = st.units.keys().map(String::as_str);
    live.chain(st.finished.keys().map(|id| &**id))
}

#[cfg(feature = "tokio")]
mod join_all {
    //! A minimal `join_all`: polls every child future on the calling task
    //! and returns their outputs in input order (not completion order).

    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub(super) struct JoinAll<'a, T> {
        pending: Vec<Option<super::ChildFuture<'a, T>>>,
        done: Vec<Option<super::Result<T>>>,
    }

    // Nothing is pinned in place: the futures are boxed, the outputs moved.
    impl<T> Unpin for JoinAll<'_, T> {}

    impl<'a, T> JoinAll<'a, T> {
        pub(super) fn new(futures: Vec<super::ChildFuture<'a, T>>) -> Self {
            let done = futures.iter().map(|_| None).collect();
            JoinAll {
                pending: futures.into_iter().map(Some).collect(),
                done,
            }
        }
    }

    impl<T> Future for JoinAll<'_, T> {
        type Output = Vec<super::Result<T>>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.get_mut();
            for (slot, out) in this.pending.iter_mut().zip(this.done.iter_mut()) {
                if let Some(fut) = slot {
                    if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                        *out = Some(v);
                        *slot = None;
                    }
                }
            }
            if this.pending.iter().all(Option::is_none) {
                Poll::Ready(this.done.iter_mut().filter_map(Option::take).collect())
            } else {
                Poll::Pending
            }
        }
    }
}

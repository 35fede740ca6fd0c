//! The async journal and work queue do no file I/O on the executor and holds no thread
//! while it waits for a sync: with a current-thread runtime and a disk whose
//! syncs stall, other tasks keep running while `run_async` (a durable
//! `never_repeat` intent), `checkpoint_async`, `approval_async` and
//! `commit_async` wait, and while `WorkQueue::enqueue_async`, `claim_async`,
//! `ack_async` wait; an async reconcile probe decides an in-doubt effect.
//! The same holds for the operator calls (`resolve_async`,
//! `request_abort_async`, `decide_approval_async`, `apply_operator_async`,
//! `resolve_in_doubt_async`), `set_cursor_async` and `rollback_async`
//! (each test fails, after the watchdog's bound, when the call does its I/O
//! inline). A power cut at every write boundary of an async rollback
//! recovers exactly what the sync rollback's cut recovers, and a workload
//! written through the sync and the async API leaves the same journal
//! (records and sync points). Power loss under the async unit API is also
//! covered by `tests/crash_units.rs`.
#![cfg(feature = "tokio")]

mod async_support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_support::{current_thread, with_stalled_disk};

use agentwal::journal::{
    Approval, Compensation, Effect, EffectCtx, EffectStatus, Error, Journal, JournalOptions,
    JournalRecord, OperatorCommand, OperatorRequest, Outcome, Probe, Resolution, StepError,
    UnitState,
};
use agentwal::log::storage::sim::CrashMode;
use agentwal::log::{Durability, LogReader, SimStorage};
use serde_json::{json, Value};

const DIR: &str = "/sim/journal-async";

fn open(sim: SimStorage) -> Journal {
    Journal::open_with(Arc::new(sim), Path::new(DIR), JournalOptions::small()).unwrap()
}

#[test]
fn unit_steps_wait_for_a_stalled_disk_without_blocking_the_executor() {
    let sim = SimStorage::new();
    let j = open(sim.clone());
    let (stalls, ran) = with_stalled_disk(&sim, async {
        let mut unit = j.begin_async("u1", "demo", &1).await.unwrap();
        let v: u32 = unit
            .run_async(Effect::never_repeat("charge"), |_ctx| async {
                Ok::<_, String>(7)
            })
            .await
            .unwrap();
        assert_eq!(v, 7);
        unit.checkpoint_async(&"half way").await.unwrap();
        assert_eq!(
            unit.approval_async("ship", &"parcel").await.unwrap(),
            Approval::Pending
        );
        unit.commit_async().await.unwrap();
    });
    // At least: the never_repeat intent, the checkpoint, the approval
    // request, the commit.
    assert!(stalls >= 4, "{stalls} syncs stalled");
    assert_eq!(
        ran, stalls,
        "the executor kept running during every stalled sync of the unit"
    );
    drop(j);
    let j = open(sim.crash(CrashMode::DropUnsynced));
    assert_eq!(j.unit_state("u1"), Some(UnitState::Committed));
}

#[test]
fn an_async_probe_reconciles_an_in_doubt_effect() {
    let sim = SimStorage::new();
    let j = open(sim.clone());
    let mut unit = j.begin("u", "demo", &()).unwrap();
    // A power cut while the effect runs: its intent is durable, no outcome.
    let mut image = None;
    unit.run(
        Effect::reconcile("ticket", |_ctx: &EffectCtx| {
            Ok::<_, String>(Probe::NotHappened)
        }),
        |_ctx| {
            image = Some(sim.crash(CrashMode::DropUnsynced));
            Ok::<_, String>("T-1".to_string())
        },
    )
    .unwrap();
    drop((unit, j));
    let j = open(image.unwrap());
    let mut unit = j.begin("u", "demo", &()).unwrap();
    // The sync API refuses an async probe before anything is written.
    let refused = unit.run(
        Effect::reconcile_async("ticket", |_ctx: EffectCtx| async {
            Ok::<_, String>(Probe::<String>::NotHappened)
        }),
        |_ctx| -> Result<String, String> { unreachable!("refused") },
    );
    assert!(
        matches!(refused, Err(Error::InvalidCall { .. })),
        "{refused:?}"
    );
    let probed = Arc::new(AtomicBool::new(false));
    let got: String = current_thread().block_on(async {
        let probed = probed.clone();
        unit.run_async(
            Effect::reconcile_async("ticket", move |ctx: EffectCtx| async move {
                tokio::task::yield_now().await;
                probed.store(true, Ordering::Release);
                assert_eq!(ctx.key(), "u/ticket/0");
                Ok::<_, String>(Probe::Happened("T-1".to_string()))
            }),
            |_ctx| async { Err::<String, String>("must not run: the probe found it".into()) },
        )
        .await
        .unwrap()
    });
    assert!(probed.load(Ordering::Acquire), "the async probe was asked");
    assert_eq!(got, "T-1");
    current_thread().block_on(unit.commit_async()).unwrap();
    assert_eq!(j.unit_state("u"), Some(UnitState::Committed));
}

#[test]
fn queue_operations_wait_for_a_stalled_disk_without_blocking_the_executor() {
    use agentwal::queue::{QueueOptions, WorkQueue};
    let sim = SimStorage::new();
    let q = WorkQueue::open_with(Arc::new(sim.clone()), DIR, QueueOptions::default()).unwrap();
    let (stalls, ran) = with_stalled_disk(&sim, async {
        let id = q.enqueue_async(b"job".to_vec()).await.unwrap();
        let c = q
            .claim_async("w1")
            .await
            .unwrap()
            .expect("the item is ready");
        assert_eq!(c.id, id);
        q.ack_async(&c).await.unwrap();
    });
    assert!(stalls >= 3, "{stalls} syncs stalled (enqueue, claim, ack)");
    assert_eq!(
        ran, stalls,
        "the executor kept running during every stalled sync"
    );
    drop(q);
    let q = WorkQueue::open_with(
        Arc::new(sim.crash(CrashMode::DropUnsynced)),
        DIR,
        QueueOptions::default(),
    )
    .unwrap();
    assert_eq!(q.stats().acked_total, 1, "the acknowledged ack survived");
}

// ---- operator calls, cursors, rollback: no I/O on the executor ----------

/// A journal holding: units `doubt-a` and `doubt-b` whose step 0 (`send`,
/// `never_repeat`) is in doubt, `approve` waiting for approval `ship`,
/// `idle` with nothing to compensate, `idle-b` likewise, and `undo` with
/// two compensable steps done. Written with the sync API, all durable.
fn operator_fixture(sim: &SimStorage) -> Journal {
    let j = open(sim.clone());
    for id in ["doubt-a", "doubt-b"] {
        let mut u = j.begin(id, "demo", &()).unwrap();
        let e = u
            .run(Effect::never_repeat("send"), |_| {
                Err::<u32, _>(StepError::in_doubt("the mail server timed out"))
            })
            .unwrap_err();
        assert!(matches!(e, Error::LeftInDoubt { .. }), "{e}");
    }
    let mut u = j.begin("approve", "demo", &()).unwrap();
    assert_eq!(u.approval("ship", &"parcel").unwrap(), Approval::Pending);
    drop(u);
    for id in ["idle", "idle-b"] {
        let mut u = j.begin(id, "demo", &()).unwrap();
        u.run(Effect::retry_same_key("look"), |_| Ok::<_, String>(1u32))
            .unwrap();
    }
    let mut u = j.begin("undo", "demo", &()).unwrap();
    for i in 0..2u32 {
        u.run(Effect::never_repeat(format!("e{i}")).compensable(), |_| {
            Ok::<_, String>(i)
        })
        .unwrap();
    }
    drop(u);
    j.sync().unwrap();
    j
}

/// Runs `work` on the fixture with every sync stalled ([`with_stalled_disk`]):
/// at least `min` syncs stalled, and the executor ran during each. Returns
/// the journal recovered from the power-loss image taken afterwards.
fn stalled_op<F, Fut>(min: usize, work: F) -> Journal
where
    F: FnOnce(Journal) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let sim = SimStorage::new();
    let j = operator_fixture(&sim);
    let (stalls, ran) = with_stalled_disk(&sim, work(j.clone()));
    assert!(stalls >= min, "{stalls} syncs stalled, expected {min}");
    assert_eq!(
        ran, stalls,
        "the executor kept running during every stalled sync"
    );
    drop(j);
    open(sim.crash(CrashMode::DropUnsynced))
}

#[test]
fn resolve_async_waits_for_a_stalled_disk_without_blocking_the_executor() {
    let j = stalled_op(1, |j| async move {
        let msg = j
            .resolve_async(
                "doubt-a",
                0,
                Resolution::Happened(Some(json!(5))),
                "ops",
                "seen",
            )
            .await
            .unwrap();
        assert!(msg.contains("in doubt -> completed"), "{msg}");
    });
    assert_eq!(j.effect_status("doubt-a", 0), Some(EffectStatus::Completed));
}

#[test]
fn request_abort_async_waits_for_a_stalled_disk_without_blocking_the_executor() {
    let j = stalled_op(1, |j| async move {
        j.request_abort_async("idle", "ops", "stale").await.unwrap();
    });
    assert_eq!(j.unit_state("idle"), Some(UnitState::Aborted));
}

#[test]
fn decide_approval_async_waits_for_a_stalled_disk_without_blocking_the_executor() {
    let j = stalled_op(1, |j| async move {
        j.decide_approval_async("approve", "ship", true, "alice", "ok")
            .await
            .unwrap();
    });
    let mut u = j.begin("approve", "demo", &()).unwrap();
    assert!(u.approval("ship", &"parcel").unwrap().is_approved());
}

#[test]
fn apply_operator_async_waits_for_a_stalled_disk_without_blocking_the_executor() {
    let j = stalled_op(1, |j| async move {
        let cmd = OperatorCommand {
            by: "ops".into(),
            reason: "stale".into(),
            request: OperatorRequest::Abort {
                unit: "idle-b".into(),
            },
        };
        j.apply_operator_async(&cmd).await.unwrap();
    });
    assert_eq!(j.unit_state("idle-b"), Some(UnitState::Aborted));
}

#[test]
fn resolve_in_doubt_async_waits_for_a_stalled_disk_without_blocking_the_executor() {
    let j = stalled_op(1, |j| async move {
        j.resolve_in_doubt_async("doubt-b", 0, Outcome::Ok { value: json!(9) })
            .await
            .unwrap();
    });
    assert_eq!(j.effect_status("doubt-b", 0), Some(EffectStatus::Completed));
}

#[test]
fn set_cursor_async_waits_for_a_stalled_disk_without_blocking_the_executor() {
    let j = stalled_op(1, |j| async move {
        j.set_cursor_async("batch", &41u64, Durability::Durable)
            .await
            .unwrap();
    });
    assert_eq!(j.cursor::<u64>("batch").unwrap(), Some(41));
}

#[test]
fn rollback_async_waits_for_a_stalled_disk_without_blocking_the_executor() {
    let undone = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let seen = undone.clone();
    // Two compensation intents and the abort.
    let j = stalled_op(3, |j| async move {
        let report = j
            .rollback_async("undo", "cancelled", |c: Compensation| {
                let seen = seen.clone();
                async move {
                    tokio::task::yield_now().await;
                    seen.lock().push(c.seq);
                    Ok::<_, String>(())
                }
            })
            .await
            .unwrap();
        assert_eq!(report.compensated, [1, 0]);
    });
    assert_eq!(*undone.lock(), [1, 0]);
    assert_eq!(j.unit_state("undo"), Some(UnitState::Aborted));
}

// ---- rollback_async under power loss: the sync path's recovery ----------

/// Unit `u`: three compensable steps, then one that is not.
fn compensable_unit(j: &Journal) {
    let mut u = j.begin("u", "t", &()).unwrap();
    for i in 0..3u32 {
        u.run(Effect::never_repeat(format!("e{i}")).compensable(), |_| {
            Ok::<_, String>(i)
        })
        .unwrap();
    }
    u.run(Effect::never_repeat("log"), |_| Ok::<_, String>(9))
        .unwrap();
}

/// Every record of the journal in `sim` as (LSN, highest LSN durable when
/// it was written, the record as JSON without its wall-clock times).
fn records(sim: &SimStorage) -> Vec<(u64, u64, Value)> {
    fn strip_times(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("at_ms");
                m.values_mut().for_each(strip_times);
            }
            Value::Array(a) => a.iter_mut().for_each(strip_times),
            _ => {}
        }
    }
    let reader = LogReader::open_with(Arc::new(sim.clone()), DIR).unwrap();
    reader
        .iter_from(1)
        .map(|r| {
            let r = r.unwrap();
            let rec = JournalRecord::decode(r.kind, r.payload()).unwrap();
            let mut v = serde_json::to_value(&rec).unwrap();
            strip_times(&mut v);
            (r.lsn, r.synced_lsn, v)
        })
        .collect()
}

/// What a reopened journal says about unit `u`: its state, the status of
/// each step, and the records on disk.
#[allow(clippy::type_complexity)]
fn recovered(
    sim: &SimStorage,
) -> (
    Option<UnitState>,
    Vec<Option<EffectStatus>>,
    Vec<(u64, u64, Value)>,
) {
    let j = open(sim.clone());
    let summary = (
        j.unit_state("u"),
        (0..4).map(|s| j.effect_status("u", s)).collect(),
    );
    drop(j);
    (summary.0, summary.1, records(sim))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Api {
    Sync,
    Async,
}

/// Rolls unit `u` back through `api`, recording each compensation as
/// (step, retry); the error, if the rollback stopped.
fn roll_back(
    j: &Journal,
    api: Api,
    done: &Arc<parking_lot::Mutex<Vec<(u32, bool)>>>,
) -> Result<(), Error> {
    match api {
        Api::Sync => j
            .rollback("u", "x", |c| {
                done.lock().push((c.seq, c.retry));
                Ok::<_, String>(())
            })
            .map(drop),
        Api::Async => current_thread()
            .block_on(j.rollback_async("u", "x", |c| {
                let done = done.clone();
                async move {
                    tokio::task::yield_now().await;
                    done.lock().push((c.seq, c.retry));
                    Ok::<_, String>(())
                }
            }))
            .map(drop),
    }
}

/// Unit `u` is rolling back: a new step and the commit are refused with
/// `RollingBack`, nothing written.
fn refuses_new_work(j: &Journal, api: Api) {
    let before = j.log().next_lsn();
    let mut u = j.begin("u", "t", &()).unwrap();
    let run = match api {
        Api::Sync => u.run(Effect::retry_same_key("e0"), |_| Ok::<_, String>(0u32)),
        Api::Async => {
            current_thread().block_on(u.run_async(Effect::retry_same_key("e0"), |_| async {
                Ok::<_, String>(0u32)
            }))
        }
    };
    assert!(matches!(run, Err(Error::RollingBack { .. })), "{run:?}");
    let commit = match api {
        Api::Sync => u.commit(),
        Api::Async => current_thread().block_on(u.commit_async()),
    };
    assert!(
        matches!(commit, Err(Error::RollingBack { .. })),
        "{commit:?}"
    );
    assert_eq!(j.log().next_lsn(), before, "nothing written");
}

#[test]
fn an_async_rollback_cut_at_every_write_recovers_as_the_sync_rollback() {
    let base = SimStorage::new();
    {
        let j = open(base.clone());
        compensable_unit(&j);
        j.sync().unwrap();
    }
    // Mutations of a clean rollback, per API: the same writes and syncs.
    let total = |api| {
        let probe = base.crash(CrashMode::KeepAll);
        let j = open(probe.clone());
        let m0 = probe.mutations();
        roll_back(&j, api, &Default::default()).unwrap();
        probe.mutations() - m0
    };
    let n = total(Api::Sync);
    assert_eq!(
        total(Api::Async),
        n,
        "the async rollback writes what the sync one writes"
    );
    for cut in 0..=n {
        for mode in [CrashMode::DropUnsynced, CrashMode::KeepAll] {
            let mut seen = Vec::new();
            for api in [Api::Sync, Api::Async] {
                let s = base.crash(CrashMode::KeepAll);
                let done = Arc::new(parking_lot::Mutex::new(Vec::new()));
                {
                    let j = open(s.clone());
                    s.halt_after(cut);
                    let _ = roll_back(&j, api, &done);
                }
                let image = s.crash(mode);
                let after_cut = recovered(&image);
                // Finish the rollback through the same API.
                let j = open(image.clone());
                if j.unit_state("u") == Some(UnitState::Incomplete) {
                    let rolling_back = after_cut
                        .2
                        .iter()
                        .any(|(_, _, v)| v["type"] == "compensation_intent");
                    if rolling_back {
                        // A recorded compensation intent refuses new work
                        // and the commit, through either API.
                        refuses_new_work(&j, api);
                    }
                    roll_back(&j, api, &done).unwrap();
                }
                assert_eq!(
                    j.unit_state("u"),
                    Some(UnitState::Aborted),
                    "cut {cut} {mode:?} {api:?}"
                );
                drop(j);
                let done = done.lock().clone();
                let mut firsts: Vec<u32> = Vec::new();
                for (seq, retry) in &done {
                    if firsts.contains(seq) {
                        assert!(
                            *retry,
                            "cut {cut} {api:?}: step {seq} compensated twice unflagged: {done:?}"
                        );
                    } else {
                        firsts.push(*seq);
                    }
                }
                assert_eq!(firsts, [2, 1, 0], "cut {cut} {mode:?} {api:?}: {done:?}");
                seen.push((after_cut, done, records(&image)));
            }
            assert_eq!(
                seen[0], seen[1],
                "cut {cut} {mode:?}: the async rollback recovers as the sync one"
            );
        }
    }
}

// ---- parity: the sync and the async API write the same journal ----------

fn in_doubt_err() -> Result<u32, StepError> {
    Err(StepError::in_doubt("timed out"))
}

/// One workload touching every journal call that writes, through the sync API.
fn workload_sync(j: &Journal) {
    let mut u = j.begin("p", "demo", &json!({"n": 1})).unwrap();
    u.run(Effect::retry_same_key("a").compensable(), |_| {
        Ok::<_, String>(1u32)
    })
    .unwrap();
    u.run(Effect::never_repeat("b"), |_| Ok::<_, String>(2u32))
        .unwrap();
    u.checkpoint(&"half").unwrap();
    assert_eq!(u.approval("ok", &"x").unwrap(), Approval::Pending);
    j.decide_approval("p", "ok", true, "alice", "fine").unwrap();
    assert!(u.approval("ok", &"x").unwrap().is_approved());
    u.run(Effect::never_repeat("c"), |_| in_doubt_err())
        .unwrap_err();
    drop(u);
    j.resolve("p", 2, Resolution::Happened(Some(json!(3))), "ops", "seen")
        .unwrap();
    let mut u = j.begin("p", "demo", &()).unwrap();
    for (name, want) in [("a", 1u32), ("b", 2), ("c", 3)] {
        let effect = match name {
            "a" => Effect::retry_same_key(name).compensable(),
            _ => Effect::never_repeat(name),
        };
        let got: u32 = u.run(effect, |_| Ok::<_, String>(0)).unwrap();
        assert_eq!(got, want);
    }
    u.commit().unwrap();
    j.set_cursor("cur", &7u64, Durability::Buffered).unwrap();
    j.set_cursor("cur", &8u64, Durability::Durable).unwrap();
    let mut u = j.begin("q", "demo", &()).unwrap();
    u.run(Effect::never_repeat("d"), |_| in_doubt_err())
        .unwrap_err();
    drop(u);
    j.resolve_in_doubt("q", 0, Outcome::Ok { value: json!(4) })
        .unwrap();
    let mut u = j.begin("r", "demo", &()).unwrap();
    u.run(Effect::never_repeat("e").compensable(), |_| {
        Ok::<_, String>(5u32)
    })
    .unwrap();
    drop(u);
    j.request_abort("r", "ops", "stale").unwrap();
    j.rollback("r", "operator abort", |_| Ok::<_, String>(()))
        .unwrap();
    let mut u = j.begin("s", "demo", &()).unwrap();
    u.run(Effect::never_repeat("f").compensable(), |_| {
        Ok::<_, String>(6u32)
    })
    .unwrap();
    u.rollback("cancelled", |_| Ok::<_, String>(())).unwrap();
    j.begin("t", "demo", &()).unwrap();
    let abort_t = OperatorCommand {
        by: "ops".into(),
        reason: "stale".into(),
        request: OperatorRequest::Abort { unit: "t".into() },
    };
    j.apply_operator(&abort_t).unwrap();
    j.clone().close().unwrap();
}

/// [`workload_sync`] through the async API.
async fn workload_async(j: &Journal) {
    let mut u = j.begin_async("p", "demo", &json!({"n": 1})).await.unwrap();
    u.run_async(Effect::retry_same_key("a").compensable(), |_| async {
        Ok::<_, String>(1u32)
    })
    .await
    .unwrap();
    u.run_async(Effect::never_repeat("b"), |_| async {
        Ok::<_, String>(2u32)
    })
    .await
    .unwrap();
    u.checkpoint_async(&"half").await.unwrap();
    assert_eq!(
        u.approval_async("ok", &"x").await.unwrap(),
        Approval::Pending
    );
    j.decide_approval_async("p", "ok", true, "alice", "fine")
        .await
        .unwrap();
    assert!(u.approval_async("ok", &"x").await.unwrap().is_approved());
    u.run_async(Effect::never_repeat("c"), |_| async { in_doubt_err() })
        .await
        .unwrap_err();
    drop(u);
    j.resolve_async("p", 2, Resolution::Happened(Some(json!(3))), "ops", "seen")
        .await
        .unwrap();
    let mut u = j.begin_async("p", "demo", &()).await.unwrap();
    for (name, want) in [("a", 1u32), ("b", 2), ("c", 3)] {
        let effect = match name {
            "a" => Effect::retry_same_key(name).compensable(),
            _ => Effect::never_repeat(name),
        };
        let got: u32 = u
            .run_async(effect, |_| async { Ok::<_, String>(0) })
            .await
            .unwrap();
        assert_eq!(got, want);
    }
    u.commit_async().await.unwrap();
    j.set_cursor_async("cur", &7u64, Durability::Buffered)
        .await
        .unwrap();
    j.set_cursor_async("cur", &8u64, Durability::Durable)
        .await
        .unwrap();
    let mut u = j.begin_async("q", "demo", &()).await.unwrap();
    u.run_async(Effect::never_repeat("d"), |_| async { in_doubt_err() })
        .await
        .unwrap_err();
    drop(u);
    j.resolve_in_doubt_async("q", 0, Outcome::Ok { value: json!(4) })
        .await
        .unwrap();
    let mut u = j.begin_async("r", "demo", &()).await.unwrap();
    u.run_async(Effect::never_repeat("e").compensable(), |_| async {
        Ok::<_, String>(5u32)
    })
    .await
    .unwrap();
    drop(u);
    j.request_abort_async("r", "ops", "stale").await.unwrap();
    j.rollback_async("r", "operator abort", |_| async { Ok::<_, String>(()) })
        .await
        .unwrap();
    let mut u = j.begin_async("s", "demo", &()).await.unwrap();
    u.run_async(Effect::never_repeat("f").compensable(), |_| async {
        Ok::<_, String>(6u32)
    })
    .await
    .unwrap();
    u.rollback_async("cancelled", |_| async { Ok::<_, String>(()) })
        .await
        .unwrap();
    j.begin_async("t", "demo", &()).await.unwrap();
    let abort_t = OperatorCommand {
        by: "ops".into(),
        reason: "stale".into(),
        request: OperatorRequest::Abort { unit: "t".into() },
    };
    j.apply_operator_async(&abort_t).await.unwrap();
    j.clone().close_async().await.unwrap();
}

#[test]
fn the_sync_and_the_async_api_write_the_same_journal() {
    let (a, b) = (SimStorage::new(), SimStorage::new());
    {
        let j = open(a.clone());
        workload_sync(&j);
    }
    {
        let j = Journal::open_with(Arc::new(b.clone()), Path::new(DIR), JournalOptions::small());
        let j = j.unwrap();
        current_thread().block_on(workload_async(&j));
    }
    let (sync, asynced) = (records(&a), records(&b));
    assert!(sync.len() > 30, "{} records", sync.len());
    assert_eq!(sync, asynced, "same records, same sync points");
    // And what both record reopens the same.
    let (ja, jb) = (
        open(a.crash(CrashMode::DropUnsynced)),
        open(b.crash(CrashMode::DropUnsynced)),
    );
    for id in ["p", "q", "r", "s", "t"] {
        assert_eq!(ja.unit_state(id), jb.unit_state(id), "unit {id}");
    }
    assert_eq!(ja.unit_state("p"), Some(UnitState::Committed));
    assert_eq!(ja.unit_state("r"), Some(UnitState::Aborted));
    assert_eq!(jb.cursor::<u64>("cur").unwrap(), Some(8));
}

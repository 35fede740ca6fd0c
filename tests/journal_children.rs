//! Parallel steps: fan-outs of child units (`Unit::run_children`,
//! `Unit::run_children_async`). Deterministic ids, replay independent of
//! completion order, crashes in the middle of a fan-out, rollback.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;

use agentwal::journal::{Effect, Error, Journal, JournalOptions, StepError, UnitState};
use agentwal::testing::{crash_test, CrashTestOptions, Recorder};

const TOOLS: [&str; 3] = ["search", "weather", "calendar"];

fn open(dir: &std::path::Path) -> Journal {
    Journal::open(dir, JournalOptions::small()).unwrap()
}

/// Runs a fan-out over `TOOLS` where child `i` finishes only after the
/// children listed before it in `finish_order` finished, so that the
/// arrival order is exactly `finish_order`. Returns the gathered results
/// and the arrival order seen.
fn fan_out_in_order(
    unit: &mut agentwal::Unit,
    finish_order: &[usize],
) -> (Vec<String>, Vec<usize>) {
    let arrived = Mutex::new(Vec::new());
    // One "go" channel per child; a child that finishes signals the next.
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..TOOLS.len()).map(|_| mpsc::channel::<()>()).unzip();
    let rxs: Vec<Mutex<mpsc::Receiver<()>>> = rxs.into_iter().map(Mutex::new).collect();
    txs[finish_order[0]].send(()).unwrap();
    let next_of = |i: usize| {
        let pos = finish_order.iter().position(|&c| c == i).unwrap();
        finish_order.get(pos + 1).copied()
    };
    let txs = Mutex::new(txs);
    let out = unit
        .run_children("tools", &TOOLS, |i, tool, child| {
            let r: String = child.run(Effect::retry_same_key("call"), |ctx| {
                Ok::<_, std::io::Error>(format!("{tool}@{}", ctx.key()))
            })?;
            rxs[i].lock().unwrap().recv().unwrap();
            arrived.lock().unwrap().push(i);
            if let Some(n) = next_of(i) {
                txs.lock().unwrap()[n].send(()).unwrap();
            }
            Ok(r)
        })
        .unwrap();
    (out, arrived.into_inner().unwrap())
}

fn expected() -> Vec<String> {
    TOOLS
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{t}@task/tools/0/{i}/call/0"))
        .collect()
}

#[test]
fn child_ids_are_derived_from_the_parent_step_not_from_arrival() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open(tmp.path());
    let mut unit = j.begin("task", "task", &()).unwrap();
    let predicted: Vec<String> = (0..3).map(|i| unit.child_id("tools", i)).collect();
    assert_eq!(
        predicted,
        ["task/tools/0/0", "task/tools/0/1", "task/tools/0/2"]
    );
    let (out, arrived) = fan_out_in_order(&mut unit, &[2, 0, 1]);
    assert_eq!(arrived, [2, 0, 1]);
    assert_eq!(out, expected());
    for id in &predicted {
        assert_eq!(j.unit_state(id), Some(UnitState::Committed), "{id}");
        assert_eq!(
            j.key_status(&format!("{id}/call/0")).map(|k| k.unit),
            Some(id.clone())
        );
    }
    // The next fan-out of the same unit is at step 1: other ids.
    assert_eq!(unit.child_id("tools", 0), "task/tools/1/0");
    unit.commit().unwrap();
}

#[test]
fn gathered_results_are_ordered_by_index_whatever_the_arrival_order() {
    for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
        let tmp = tempfile::tempdir().unwrap();
        let j = open(tmp.path());
        let mut unit = j.begin("task", "task", &()).unwrap();
        let (out, arrived) = fan_out_in_order(&mut unit, &order);
        assert_eq!(arrived, order);
        assert_eq!(out, expected(), "arrival order {order:?}");
        drop(unit); // crash before the commit
        j.close().unwrap();

        // Replay: the recorded step returns the same list, nothing runs.
        let j = open(tmp.path());
        let mut unit = j.begin("task", "task", &()).unwrap();
        let ran = AtomicU32::new(0);
        let again: Vec<String> = unit
            .run_children("tools", &TOOLS, |_, _, _| {
                ran.fetch_add(1, Ordering::SeqCst);
                Ok(String::new())
            })
            .unwrap();
        assert_eq!(again, expected());
        assert_eq!(
            ran.load(Ordering::SeqCst),
            0,
            "a recorded fan-out runs no child"
        );
        unit.commit().unwrap();
    }
}

/// A child fails in the first run: the fan-out step stays in doubt, the
/// finished children are committed. The resume (children finishing in
/// another order) runs only the unfinished child, and gathers by index.
#[test]
fn a_resumed_fan_out_reruns_only_unfinished_children() {
    let tmp = tempfile::tempdir().unwrap();
    let calls = Mutex::new(Vec::new());
    {
        let j = open(tmp.path());
        let mut unit = j.begin("task", "task", &()).unwrap();
        let err = unit
            .run_children("tools", &TOOLS, |i, tool, child| {
                calls.lock().unwrap().push(i);
                if i == 1 {
                    // Killed mid-child: its effect is recorded, the child is not.
                    child.run(Effect::retry_same_key("call"), |_| {
                        Ok::<_, std::io::Error>(format!("{tool}!"))
                    })?;
                    return Err(Error::Task("simulated crash in child 1".into()));
                }
                child.run(Effect::retry_same_key("call"), |_| {
                    Ok::<_, std::io::Error>(format!("{tool}!"))
                })
            })
            .unwrap_err();
        assert!(
            matches!(err, Error::Task(_)),
            "the child's own error: {err}"
        );
        assert_eq!(j.unit_state("task/tools/0/0"), Some(UnitState::Committed));
        assert_eq!(j.unit_state("task/tools/0/1"), Some(UnitState::Incomplete));
        assert_eq!(j.unit_state("task/tools/0/2"), Some(UnitState::Committed));
        assert_eq!(
            unit.effect_status(0),
            agentwal::journal::EffectStatus::InDoubt,
            "a fan-out with a failed child stays in doubt"
        );
        drop(unit);
        j.close().unwrap();
    }
    calls.lock().unwrap().clear();
    let j = open(tmp.path());
    let mut unit = j.begin("task", "task", &()).unwrap();
    let effect_runs = AtomicU32::new(0);
    let out: Vec<String> = unit
        .run_children("tools", &TOOLS, |i, tool, child| {
            calls.lock().unwrap().push(i);
            child.run(Effect::retry_same_key("call"), |_| {
                effect_runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(format!("{tool}!"))
            })
        })
        .unwrap();
    assert_eq!(out, ["search!", "weather!", "calendar!"]);
    assert_eq!(
        *calls.lock().unwrap(),
        [1],
        "committed children do not run again"
    );
    assert_eq!(
        effect_runs.load(Ordering::SeqCst),
        0,
        "child 1's recorded effect replays"
    );
    unit.commit().unwrap();
    assert_eq!(j.unit_state("task"), Some(UnitState::Committed));
}

#[test]
fn the_crash_test_kit_finds_no_repeat_in_a_fan_out() {
    let report = crash_test(
        &["task-1", "task-2"],
        CrashTestOptions {
            stride: 2,
            ..CrashTestOptions::default()
        },
        |j: &Journal, id: &str, svc: &Recorder| {
            let mut unit = j.begin(id, "task", &())?;
            let results: Vec<String> = unit.run_children("tools", &TOOLS, |i, tool, child| {
                // Keyed by the logical call (task, index), not by the child's
                // id: a child id that changed across runs would show here.
                child.run(Effect::never_repeat("pay"), |_| {
                    svc.deliver_once(&format!("{id}/pay-{i}"));
                    Ok::<_, String>(())
                })?;
                child.run(Effect::retry_same_key("call"), |ctx| {
                    svc.deliver(ctx.key());
                    Ok::<_, String>(format!("{tool} done"))
                })
            })?;
            unit.run(Effect::retry_same_key("answer"), |ctx| {
                svc.deliver(ctx.key());
                Ok::<_, String>(results.join(", "))
            })?;
            unit.commit()?;
            Ok(())
        },
    );
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    assert!(report.crash_points > 20, "{report:?}");
    eprintln!(
        "fan-out crash test: {} writes, {} crash points, {} runs, {} in doubt",
        report.writes, report.crash_points, report.runs, report.in_doubt_outcomes
    );
}

/// A hand-rolled fan-out that re-sends for children that already finished
/// (a user bug: `Begun::Finished` treated as "send again"): one re-send per
/// crash under the same key passes the per-key count, but the kit knows the
/// child was committed before the crash and reports it.
#[test]
fn the_crash_test_kit_catches_a_committed_child_that_delivers_again() {
    let report = crash_test(
        &["task-1"],
        CrashTestOptions {
            stride: 3,
            power_loss: false,
            ..CrashTestOptions::default()
        },
        |j: &Journal, id: &str, svc: &Recorder| {
            let mut unit = j.begin(id, "task", &())?;
            for i in 0..3u32 {
                let child = format!("{id}/call-{i}");
                match j.begin_or_finished(&child, "call", &i)? {
                    agentwal::journal::Begun::Finished(_) => {
                        svc.deliver(&format!("{child}/send/0")); // the bug
                    }
                    agentwal::journal::Begun::Open(mut c) => {
                        c.run(Effect::retry_same_key("send"), |ctx| {
                            svc.deliver(ctx.key());
                            Ok::<_, String>(())
                        })?;
                        c.commit()?;
                    }
                }
            }
            unit.run(Effect::retry_same_key("answer"), |_| Ok::<_, String>(()))?;
            unit.commit()?;
            Ok(())
        },
    );
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.contains("unit task-1/call-0 was committed before the crash")),
        "{:#?}",
        report.violations
    );
}

/// Rolling back a parent whose fan-out partly finished: the compensation
/// for the fan-out step lists the children; committed ones are undone from
/// their results, the incomplete one is rolled back (its compensations run).
#[test]
fn rolling_back_the_parent_reaches_every_child() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open(tmp.path());
    let mut unit = j.begin("trip", "trip", &()).unwrap();
    let err = unit
        .run_children("book", &["flight", "hotel", "car"], |i, what, child| {
            let booking: String = child
                .run(Effect::never_repeat("reserve").compensable(), |_| {
                    Ok::<_, String>(format!("{what}-ref"))
                })?;
            if i == 2 {
                child.run(Effect::never_repeat("confirm"), |_| {
                    Err::<String, _>(StepError::permanent("no cars left"))
                })?;
            }
            Ok(booking)
        })
        .unwrap_err();
    assert!(matches!(err, Error::EffectFailed { .. }), "{err}");
    let undone = Mutex::new(Vec::new());
    let report = unit
        .rollback("car unavailable", |c| {
            assert_eq!(c.effect, "book");
            assert!(c.effect_in_doubt, "the fan-out did not finish");
            for child in j.children_of(c) {
                match child.state {
                    UnitState::Committed => undone
                        .lock()
                        .unwrap()
                        .push(format!("cancel {}", child.result.unwrap())),
                    UnitState::Incomplete => {
                        j.rollback(&child.id, "parent rolled back", |cc| {
                            undone
                                .lock()
                                .unwrap()
                                .push(format!("compensate {} of {}", cc.effect, cc.unit));
                            Ok::<_, String>(())
                        })?;
                    }
                    UnitState::Aborted => {}
                }
            }
            Ok::<_, Error>(())
        })
        .unwrap();
    assert_eq!(report.compensated, [0]);
    assert_eq!(
        *undone.lock().unwrap(),
        [
            "cancel \"flight-ref\"",
            "cancel \"hotel-ref\"",
            "compensate reserve of trip/book/0/2"
        ]
    );
    assert_eq!(j.unit_state("trip"), Some(UnitState::Aborted));
    assert_eq!(j.unit_state("trip/book/0/2"), Some(UnitState::Aborted));
}

#[test]
fn a_completed_fan_out_is_compensated_with_its_results() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open(tmp.path());
    let mut unit = j.begin("trip", "trip", &()).unwrap();
    let refs: Vec<u32> = unit
        .run_children("book", &[10u32, 20], |_, n, child| {
            child.run(Effect::never_repeat("reserve"), |_| Ok::<_, String>(n + 1))
        })
        .unwrap();
    assert_eq!(refs, [11, 21]);
    let seen = Mutex::new(None);
    unit.rollback("cancelled", |c| {
        *seen.lock().unwrap() = Some((c.result.clone(), j.children_of(c).len()));
        Ok::<_, String>(())
    })
    .unwrap();
    assert_eq!(
        seen.into_inner().unwrap(),
        Some((Some(serde_json::json!([11, 21])), 2))
    );
}

#[test]
fn an_aborted_child_is_reported_not_rerun() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open(tmp.path());
    let mut unit = j.begin("task", "task", &()).unwrap();
    unit.run_children("tools", &[0u8, 1], |i, _, child| {
        if i == 1 {
            return Err(Error::Task("crash".into()));
        }
        child.run(Effect::retry_same_key("call"), |_| Ok::<_, String>(1u8))
    })
    .unwrap_err();
    drop(unit); // a failed fan-out is retried by resuming the parent
                // An operator (or the code) aborts child 1 instead of finishing it.
    j.rollback("task/tools/0/1", "given up", |_| Ok::<_, String>(()))
        .unwrap();
    let mut unit = j.begin("task", "task", &()).unwrap();
    let err = unit
        .run_children(
            "tools",
            &[0u8, 1],
            |_, _, _| -> agentwal::journal::Result<u8> {
                panic!("no child runs: 0 is committed, 1 aborted")
            },
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::ChildUnavailable { child, step: 0, .. } if child == "task/tools/0/1"),
        "{err}"
    );
}

#[cfg(feature = "tokio")]
mod concurrent {
    use super::*;
    use std::time::Duration;

    async fn fan_out(
        unit: &mut agentwal::Unit,
        delays_ms: [u64; 3],
        ran: &AtomicU32,
    ) -> Vec<String> {
        unit.run_children_async("tools", &TOOLS, |i, tool, child| {
            Box::pin(async move {
                let r: String = child
                    .run_async(Effect::retry_same_key("call"), |ctx| async move {
                        ran.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(delays_ms[i])).await;
                        Ok::<_, std::io::Error>(format!("{tool}@{}", ctx.key()))
                    })
                    .await?;
                Ok(r)
            })
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_children_run_at_once_and_replay_by_index() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::open_async(tmp.path(), JournalOptions::small())
            .await
            .unwrap();
        let mut unit = j.begin_async("task", "task", &()).await.unwrap();
        let ran = AtomicU32::new(0);
        // Child 0 is the slowest: it arrives last.
        let out = fan_out(&mut unit, [60, 20, 1], &ran).await;
        assert_eq!(out, expected());
        assert_eq!(ran.load(Ordering::SeqCst), 3);
        drop(unit);
        j.close().unwrap();

        let j = Journal::open_async(tmp.path(), JournalOptions::small())
            .await
            .unwrap();
        let mut unit = j.begin_async("task", "task", &()).await.unwrap();
        let ran = AtomicU32::new(0);
        let again = fan_out(&mut unit, [1, 20, 60], &ran).await;
        assert_eq!(again, expected());
        assert_eq!(ran.load(Ordering::SeqCst), 0, "replayed, not re-run");
        unit.commit_async().await.unwrap();
    }
}

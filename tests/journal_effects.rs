//! Effects: resume without re-running, each in-doubt policy, rollback,
//! the key index across units, mismatch detection, payload limits, sync cost.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use agentwal::journal::{
    default_key, Attempt, Effect, EffectStatus, Error, Journal, JournalOptions, JournalRecord,
    KeyStatus, Outcome, OutcomeVia, PolicyKind, Probe, Retention, UnitState,
};
use agentwal::log::storage::sim::CrashMode;
use agentwal::log::SimStorage;
use serde_json::json;

mod journal_support;

use journal_support::{begin_rec, intent_rec, write_records, DIR};

fn opts() -> JournalOptions {
    journal_support::opts(Retention::unlimited())
}

fn open(storage: &SimStorage) -> Journal {
    journal_support::open_sim(storage, opts())
}

/// A journal holding unit "u" whose step 0 (`send`, key `k0`) is in doubt
/// under `policy`, written record by record.
fn in_doubt(policy: PolicyKind) -> SimStorage {
    let storage = SimStorage::new();
    write_records(
        &storage,
        &[begin_rec("u"), intent_rec("u", 0, "send", "k0", policy)],
    );
    storage
}

#[test]
fn completed_effects_are_returned_not_rerun_on_resume() {
    let storage = SimStorage::new();
    let runs = Cell::new(0);
    {
        let j = open(&storage);
        let mut u = j.begin("u", "t", &json!({"x": 1})).unwrap();
        for i in 0..3u32 {
            let v: u32 = u
                .run(Effect::retry_same_key(format!("e{i}")), |_| {
                    runs.set(runs.get() + 1);
                    Ok::<_, String>(i * 10)
                })
                .unwrap();
            assert_eq!(v, i * 10);
        }
        u.checkpoint(&json!({"after": 3})).unwrap();
        // Killed here: no commit.
    }
    let j = Journal::open_with(
        Arc::new(storage.crash(CrashMode::DropUnsynced)),
        DIR,
        opts(),
    )
    .unwrap();
    assert_eq!(j.replay_report().incomplete.len(), 1);
    let mut u = j.begin("u", "t", &json!({"x": 1})).unwrap();
    assert!(u.is_resumed());
    assert_eq!(u.payload::<serde_json::Value>().unwrap(), json!({"x": 1}));
    assert_eq!(
        u.last_checkpoint::<serde_json::Value>().unwrap(),
        Some(json!({"after": 3}))
    );
    for i in 0..3u32 {
        let v: u32 = u
            .run(Effect::retry_same_key(format!("e{i}")), |_| {
                runs.set(runs.get() + 100);
                Ok::<_, String>(999)
            })
            .unwrap();
        assert_eq!(v, i * 10, "recorded result returned");
    }
    // A fourth, new effect does run.
    let v: u32 = u
        .run(Effect::retry_same_key("e3"), |c| {
            assert_eq!(c.attempt(), Attempt::First);
            runs.set(runs.get() + 1);
            Ok::<_, String>(30)
        })
        .unwrap();
    assert_eq!(v, 30);
    u.commit().unwrap();
    assert_eq!(runs.get(), 4);
}

#[test]
fn in_doubt_retry_same_key_runs_again_with_the_same_key() {
    let storage = in_doubt(PolicyKind::RetrySameKey);
    let j = open(&storage);
    assert_eq!(j.effect_status("u", 0), Some(EffectStatus::InDoubt));
    let mut u = j.begin("u", "t", &()).unwrap();
    let seen = RefCell::new(Vec::new());
    let v: String = u
        .run(Effect::retry_same_key("send").key("k0"), |c| {
            seen.borrow_mut().push((c.key().to_string(), c.attempt()));
            Ok::<_, String>("sent".into())
        })
        .unwrap();
    assert_eq!(v, "sent");
    assert_eq!(*seen.borrow(), vec![("k0".to_string(), Attempt::Retry)]);
    u.commit().unwrap();
    assert_eq!(j.key_status("k0").unwrap().status, KeyStatus::Completed);
}

#[test]
fn in_doubt_never_repeat_fails_typed_and_waits_for_an_operator() {
    let storage = in_doubt(PolicyKind::NeverRepeat);
    let j = open(&storage);
    let mut u = j.begin("u", "t", &()).unwrap();
    let ran = Cell::new(false);
    let err = u
        .run(Effect::never_repeat("send"), |_| {
            ran.set(true);
            Ok::<_, String>(1)
        })
        .unwrap_err();
    assert!(!ran.get());
    match &err {
        Error::InDoubt {
            unit, step, key, ..
        } => assert_eq!((unit.as_str(), *step, key.as_str()), ("u", 0, "k0")),
        e => panic!("unexpected {e}"),
    }
    assert!(!err.is_retryable());
    // Commit is refused while in doubt.
    assert!(matches!(u.commit(), Err(Error::InvalidCall { .. })));
    assert_eq!(j.unit_state("u"), Some(UnitState::Incomplete));
    // The operator checks the receiver and records that it happened.
    j.resolve_in_doubt("u", 0, Outcome::Ok { value: json!(7) })
        .unwrap();
    drop(j);
    let j = open(&storage);
    let mut u = j.begin("u", "t", &()).unwrap();
    let v: u32 = u
        .run(Effect::never_repeat("send"), |_| -> Result<u32, String> {
            panic!("resolved effects do not run")
        })
        .unwrap();
    assert_eq!(v, 7);
    u.commit().unwrap();
}

#[test]
fn in_doubt_reconcile_records_the_probe_answer() {
    // Happened: the effect does not run; the probe's result is recorded.
    let storage = in_doubt(PolicyKind::Reconcile);
    {
        let j = open(&storage);
        let mut u = j.begin("u", "t", &()).unwrap();
        let v: u32 = u
            .run(
                Effect::reconcile("send", |c| {
                    assert_eq!(c.key(), "k0");
                    Ok::<_, String>(Probe::Happened(5))
                }),
                |_| -> Result<u32, String> { panic!("must not run") },
            )
            .unwrap();
        assert_eq!(v, 5);
    }
    let j = open(&storage);
    assert_eq!(j.effect_status("u", 0), Some(EffectStatus::Completed));
    let mut u = j.begin("u", "t", &()).unwrap();
    let v: u32 = u
        .run(
            Effect::reconcile("send", |_| -> Result<Probe<u32>, String> {
                panic!("not in doubt any more")
            }),
            |_| -> Result<u32, String> { panic!("must not run") },
        )
        .unwrap();
    assert_eq!(v, 5);
    drop(u);

    // NotHappened: run again with the same key.
    let storage = in_doubt(PolicyKind::Reconcile);
    let j = open(&storage);
    let mut u = j.begin("u", "t", &()).unwrap();
    let v: u32 = u
        .run(
            Effect::reconcile("send", |_| Ok::<_, String>(Probe::NotHappened)),
            |c| {
                assert_eq!((c.key(), c.attempt()), ("k0", Attempt::Retry));
                Ok::<_, String>(6)
            },
        )
        .unwrap();
    assert_eq!(v, 6);

    // A failing probe leaves it in doubt.
    let storage = in_doubt(PolicyKind::Reconcile);
    let j = open(&storage);
    let mut u = j.begin("u", "t", &()).unwrap();
    let err = u
        .run(
            Effect::reconcile("send", |_| Err::<Probe<u32>, _>("receiver down")),
            |_| -> Result<u32, String> { panic!("must not run") },
        )
        .unwrap_err();
    assert!(matches!(err, Error::ReconcileFailed { .. }), "{err}");
    assert_eq!(j.effect_status("u", 0), Some(EffectStatus::InDoubt));
}

#[test]
fn different_effect_on_resume_is_a_typed_error_naming_unit_and_step() {
    let storage = SimStorage::new();
    {
        let j = open(&storage);
        let mut u = j.begin("order-9", "t", &()).unwrap();
        u.run(Effect::retry_same_key("reserve"), |_| Ok::<_, String>(1))
            .unwrap();
        u.run(Effect::retry_same_key("charge"), |_| Ok::<_, String>(2))
            .unwrap();
    }
    let j = open(&storage);
    // Same first step, then another name.
    let mut u = j.begin("order-9", "t", &()).unwrap();
    let _: u32 = u
        .run(Effect::retry_same_key("reserve"), |_| Ok::<_, String>(0))
        .unwrap();
    let err = u
        .run(
            Effect::retry_same_key("refund"),
            |_| -> Result<u32, String> { panic!("must not run") },
        )
        .unwrap_err();
    match &err {
        Error::EffectMismatch {
            unit,
            step,
            recorded,
            requested,
        } => {
            assert_eq!((unit.as_str(), *step), ("order-9", 1));
            assert_eq!(
                (recorded.as_str(), requested.as_str()),
                ("charge", "refund")
            );
        }
        e => panic!("unexpected {e}"),
    }
    assert!(err.to_string().contains("order-9") && err.to_string().contains("step 1"));
    drop(u);
    // Order swapped.
    let mut u = j.begin("order-9", "t", &()).unwrap();
    let err = u
        .run(Effect::retry_same_key("charge"), |_| Ok::<u32, String>(0))
        .unwrap_err();
    assert!(
        matches!(err, Error::EffectMismatch { step: 0, .. }),
        "{err}"
    );
    drop(u);
    // Same name, different explicit key.
    let mut u = j.begin("order-9", "t", &()).unwrap();
    let err = u
        .run(Effect::retry_same_key("reserve").key("other"), |_| {
            Ok::<u32, String>(0)
        })
        .unwrap_err();
    assert!(
        matches!(err, Error::EffectMismatch { step: 0, .. }),
        "{err}"
    );
}

#[test]
fn a_key_completed_in_one_unit_is_not_executed_by_another() {
    let storage = SimStorage::new();
    let runs = Cell::new(0);
    {
        let j = open(&storage);
        let mut a = j.begin("a", "t", &()).unwrap();
        let v: String = a
            .run(Effect::retry_same_key("mail").key("mail-42"), |_| {
                runs.set(runs.get() + 1);
                Ok::<_, String>("receipt-1".into())
            })
            .unwrap();
        assert_eq!(v, "receipt-1");
        a.commit().unwrap();
        let mut b = j.begin("b", "t", &()).unwrap();
        let v: String = b
            .run(Effect::retry_same_key("mail").key("mail-42"), |_| {
                runs.set(runs.get() + 1);
                Ok::<_, String>("receipt-2".into())
            })
            .unwrap();
        assert_eq!(v, "receipt-1");
        b.commit().unwrap();
    }
    // Also after a reopen, from a third unit.
    let j = open(&storage);
    let mut c = j.begin("c", "t", &()).unwrap();
    // The key belongs to effect "mail": another name never gets its result.
    let err = c
        .run(Effect::never_repeat("other-name").key("mail-42"), |_| {
            runs.set(runs.get() + 1);
            Ok::<_, String>("receipt-3".to_string())
        })
        .unwrap_err();
    assert!(matches!(err, Error::KeyConflict { .. }), "{err}");
    let v: String = c
        .run(Effect::never_repeat("mail").key("mail-42"), |_| {
            runs.set(runs.get() + 1);
            Ok::<_, String>("receipt-3".into())
        })
        .unwrap();
    assert_eq!(v, "receipt-1");
    c.commit().unwrap();
    assert_eq!(runs.get(), 1);
    let k = j.key_status("mail-42").unwrap();
    assert_eq!((k.unit.as_str(), k.status), ("a", KeyStatus::Completed));
}

#[test]
fn failed_effects_are_recorded_and_not_retried() {
    let storage = SimStorage::new();
    let runs = Cell::new(0);
    {
        let j = open(&storage);
        let mut u = j.begin("u", "t", &()).unwrap();
        let err = u
            .run(Effect::retry_same_key("pay"), |_| {
                runs.set(runs.get() + 1);
                Err::<u32, _>("card declined")
            })
            .unwrap_err();
        assert!(matches!(&err, Error::EffectFailed { message, .. } if message == "card declined"));
    }
    let j = open(&storage);
    assert_eq!(j.effect_status("u", 0), Some(EffectStatus::Failed));
    let mut u = j.begin("u", "t", &()).unwrap();
    let err = u
        .run(Effect::retry_same_key("pay"), |_| {
            runs.set(runs.get() + 1);
            Ok::<u32, String>(1)
        })
        .unwrap_err();
    assert!(matches!(err, Error::EffectFailed { .. }));
    assert_eq!(runs.get(), 1);
}

fn compensable_unit(j: &Journal) {
    let mut u = j.begin("u", "t", &()).unwrap();
    for i in 0..3u32 {
        u.run(Effect::never_repeat(format!("e{i}")).compensable(), |_| {
            Ok::<_, String>(i)
        })
        .unwrap();
    }
    // One effect without compensation: skipped by rollback.
    u.run(Effect::never_repeat("log"), |_| Ok::<_, String>(9))
        .unwrap();
}

#[test]
fn rollback_compensates_in_reverse_once_even_when_interrupted() {
    // Interrupted by a failing compensation, then retried after a reopen.
    let storage = SimStorage::new();
    let calls = RefCell::new(Vec::new());
    {
        let j = open(&storage);
        compensable_unit(&j);
        let err = j
            .rollback("u", "cancel", |c| {
                calls.borrow_mut().push((c.seq, c.retry));
                if c.seq == 1 {
                    Err("refund service down")
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
        assert!(
            matches!(err, Error::CompensationFailed { step: 1, .. }),
            "{err}"
        );
        assert!(err.is_retryable());
    }
    let j = open(&storage);
    assert_eq!(j.unit_state("u"), Some(UnitState::Incomplete));
    assert_eq!(j.effect_status("u", 2), Some(EffectStatus::Compensated));
    let report = j
        .rollback("u", "cancel", |c| {
            calls.borrow_mut().push((c.seq, c.retry));
            assert_eq!(c.key, format!("u/e{}/{}/compensate", c.seq, c.seq));
            assert_eq!(c.result, Some(json!(c.seq)));
            Ok::<_, String>(())
        })
        .unwrap();
    assert_eq!(
        *calls.borrow(),
        vec![(2, false), (1, false), (1, true), (0, false)]
    );
    assert_eq!(report.compensated, vec![1, 0]);
    assert_eq!(report.already_compensated, vec![2]);
    assert_eq!(j.unit_state("u"), Some(UnitState::Aborted));
    // Exactly once: a second rollback is refused, nothing runs.
    assert!(matches!(
        j.rollback("u", "again", |_| -> Result<(), String> { panic!("no") }),
        Err(Error::UnitFinished { .. })
    ));
}

#[test]
fn rollback_interrupted_by_power_loss_at_every_write_completes_exactly_once() {
    let base = SimStorage::new();
    {
        let j = open(&base);
        compensable_unit(&j);
        j.sync().unwrap();
    }
    // Mutations of a clean rollback.
    let probe = base.crash(CrashMode::KeepAll);
    let j = open(&probe);
    let m0 = probe.mutations();
    j.rollback("u", "x", |_| Ok::<_, String>(())).unwrap();
    let total = probe.mutations() - m0;
    drop(j);
    for cut in 0..=total {
        for mode in [CrashMode::DropUnsynced, CrashMode::KeepAll] {
            let s = base.crash(CrashMode::KeepAll);
            let done = RefCell::new(Vec::new());
            {
                let j = open(&s);
                s.halt_after(cut);
                let _ = j.rollback("u", "x", |c| {
                    done.borrow_mut().push((c.seq, c.retry));
                    Ok::<_, String>(())
                });
            }
            let s2 = s.crash(mode);
            let j = open(&s2);
            if j.unit_state("u") == Some(UnitState::Incomplete) {
                j.rollback("u", "x", |c| {
                    done.borrow_mut().push((c.seq, c.retry));
                    Ok::<_, String>(())
                })
                .unwrap();
            }
            assert_eq!(j.unit_state("u"), Some(UnitState::Aborted), "cut {cut}");
            let done = done.into_inner();
            // First executions in reverse order; a repeat only as a flagged retry.
            let mut firsts: Vec<u32> = Vec::new();
            for (seq, retry) in &done {
                if firsts.contains(seq) {
                    assert!(
                        *retry,
                        "cut {cut}: step {seq} compensated twice unflagged: {done:?}"
                    );
                } else {
                    firsts.push(*seq);
                }
            }
            assert_eq!(firsts, vec![2, 1, 0], "cut {cut} {mode:?}: {done:?}");
            assert!(
                done.len() <= 4,
                "cut {cut}: at most one retry per crash: {done:?}"
            );
        }
    }
}

#[test]
fn oversized_payloads_are_refused_before_anything_is_written() {
    let storage = SimStorage::new();
    let j = open(&storage);
    let big = "x".repeat(5 << 10);
    let before = j.log().next_lsn();
    let err = j.begin("u", "t", &big).unwrap_err();
    assert!(matches!(err, Error::PayloadTooLarge { .. }), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(j.log().next_lsn(), before, "nothing written");
    assert_eq!(j.unit_state("u"), None);

    let mut u = j.begin("u", "t", &"small").unwrap();
    let before = j.log().next_lsn();
    assert!(matches!(
        u.checkpoint(&big),
        Err(Error::PayloadTooLarge { .. })
    ));
    assert_eq!(j.log().next_lsn(), before, "nothing written");

    // A result too large to record: the effect ran, so it is recorded as
    // failed (never repeated) and the error is typed and says so.
    let runs = Cell::new(0);
    let err = u
        .run(Effect::retry_same_key("llm"), |_| {
            runs.set(runs.get() + 1);
            Ok::<_, String>(big.clone())
        })
        .unwrap_err();
    assert!(matches!(err, Error::ResultTooLarge { .. }), "{err}");
    drop(u);
    let mut u = j.begin("u", "t", &"small").unwrap();
    let err = u
        .run(Effect::retry_same_key("llm"), |_| {
            runs.set(runs.get() + 1);
            Ok::<_, String>(String::new())
        })
        .unwrap_err();
    assert!(matches!(err, Error::EffectFailed { .. }), "{err}");
    assert_eq!(runs.get(), 1);
}

/// Syncs one unit costs, phase by phase: (begin, each effect, commit).
fn unit_syncs(storage: &SimStorage, j: &Journal, id: &str, policies: &[PolicyKind]) -> Vec<u64> {
    let mut costs = Vec::new();
    let s = storage.syncs();
    let mut u = j.begin(id, "t", &json!({"id": id})).unwrap();
    costs.push(storage.syncs() - s);
    for (i, p) in policies.iter().enumerate() {
        let name = format!("e{i}");
        let effect = match p {
            PolicyKind::RetrySameKey => Effect::retry_same_key(name),
            PolicyKind::NeverRepeat => Effect::never_repeat(name),
            PolicyKind::Reconcile => {
                Effect::reconcile(name, |_| Ok::<_, String>(Probe::NotHappened))
            }
        };
        let s = storage.syncs();
        u.run(effect, |_| Ok::<_, String>(i)).unwrap();
        costs.push(storage.syncs() - s);
    }
    let s = storage.syncs();
    u.commit().unwrap();
    costs.push(storage.syncs() - s);
    costs
}

#[test]
fn a_unit_of_retry_effects_costs_one_sync() {
    let storage = SimStorage::new();
    let j = open(&storage);
    // Warm up (segment creation syncs are not per unit).
    let u = j.begin("w", "t", &()).unwrap();
    u.commit().unwrap();
    for n in 0..3 {
        // The model call and the message of the demo agent: only the commit syncs.
        let retry = [PolicyKind::RetrySameKey, PolicyKind::RetrySameKey];
        assert_eq!(
            unit_syncs(&storage, &j, &format!("u{n}"), &retry),
            [0, 0, 0, 1],
            "begin, effect, effect, commit"
        );
    }
    // The key, the intent and the outcome are all durable after the commit.
    drop(j);
    let j = Journal::open_with(
        Arc::new(storage.crash(CrashMode::DropUnsynced)),
        DIR,
        opts(),
    )
    .unwrap();
    for n in 0..3 {
        assert_eq!(j.unit_state(&format!("u{n}")), Some(UnitState::Committed));
        let key = format!("u{n}/e1/1");
        assert_eq!(
            j.key_status(&key).map(|k| k.status),
            Some(KeyStatus::Completed)
        );
    }
}

#[test]
fn policies_pay_only_the_syncs_they_need() {
    let storage = SimStorage::new();
    let j = open(&storage);
    let u = j.begin("w", "t", &()).unwrap();
    u.commit().unwrap();
    use PolicyKind::{NeverRepeat as N, Reconcile as C, RetrySameKey as R};
    // never_repeat and reconcile intents are synced before the effect runs;
    // retry_same_key intents ride on the next sync.
    assert_eq!(unit_syncs(&storage, &j, "a", &[N]), [0, 1, 1]);
    assert_eq!(unit_syncs(&storage, &j, "b", &[C]), [0, 1, 1]);
    assert_eq!(
        unit_syncs(&storage, &j, "c", &[R, N, R, C]),
        [0, 0, 1, 0, 1, 1]
    );
    assert_eq!(unit_syncs(&storage, &j, "d", &[]), [0, 1]);
}

/// Power loss at every storage boundary of a unit of two retry-same-key
/// effects and a never-repeat one: after each crash image (unsynced writes
/// dropped, or kept/torn at random) the unit resumes; every effect ran with
/// its one key, a key seen completed never runs again, a never-repeat effect
/// ran at most once, and a commit that returned is durable.
#[test]
fn retry_intents_ride_on_the_commit_at_every_power_cut() {
    use std::collections::HashMap;
    const NAMES: [&str; 3] = ["send0", "ledger", "send2"];
    let effect = |i: u32| -> Effect<'static, u32> {
        match i {
            1 => Effect::never_repeat(NAMES[1]),
            _ => Effect::retry_same_key(NAMES[i as usize]),
        }
    };
    let key = |i: u32| default_key("u", NAMES[i as usize], i);
    let run_all = |j: &Journal,
                   execs: &RefCell<HashMap<String, u32>>,
                   completed_before: &[String]|
     -> Result<bool, Error> {
        let mut u = j.begin("u", "t", &())?;
        for i in 0..3 {
            let r = u.run(effect(i), |ctx| {
                assert!(
                    !completed_before.iter().any(|k| k == ctx.key()),
                    "completed key {} ran again",
                    ctx.key()
                );
                assert_eq!(ctx.key(), key(i), "the key is deterministic");
                *execs.borrow_mut().entry(ctx.key().to_string()).or_default() += 1;
                Ok::<_, String>(i)
            });
            match r {
                Ok(v) => assert_eq!(v, i),
                Err(Error::InDoubt { .. }) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        u.commit()?;
        Ok(true)
    };
    let fresh = || {
        let storage = SimStorage::new();
        open(&storage)
            .begin("w", "t", &())
            .unwrap()
            .commit()
            .unwrap();
        storage
    };
    // How many mutating storage operations a whole run takes.
    let total = {
        let storage = fresh();
        let j = open(&storage);
        let m0 = storage.mutations();
        assert!(run_all(&j, &RefCell::default(), &[]).unwrap());
        storage.mutations() - m0
    };
    assert!(total >= 2, "{total}");
    for cut in 0..=total {
        for mode in [
            CrashMode::DropUnsynced,
            CrashMode::KeepAll,
            CrashMode::Random(cut),
        ] {
            let storage = fresh();
            let execs = RefCell::default();
            // First run, power cut after `cut` mutating operations.
            let committed = {
                let j = open(&storage);
                storage.halt_after(cut);
                matches!(run_all(&j, &execs, &[]), Ok(true))
            };
            let image = storage.crash(mode);
            let j = Journal::open_with(Arc::new(image.clone()), DIR, opts()).unwrap();
            if committed {
                assert_eq!(j.unit_state("u"), Some(UnitState::Committed), "cut {cut}");
            }
            let completed: Vec<String> = (0..3)
                .map(key)
                .filter(|k| j.key_status(k).map(|s| s.status) == Some(KeyStatus::Completed))
                .collect();
            let ledger_in_doubt = j.effect_status("u", 1) == Some(EffectStatus::InDoubt);
            let resumed = match j.unit_state("u") {
                Some(UnitState::Committed) => true,
                _ => run_all(&j, &execs, &completed).unwrap(),
            };
            // Only a never-repeat effect in doubt stops the resume.
            assert_eq!(resumed, !ledger_in_doubt, "cut {cut} {mode:?}");
            let execs = execs.into_inner();
            assert!(
                execs.get(&key(1)).copied().unwrap_or(0) <= 1,
                "cut {cut} {mode:?}: never_repeat ran twice"
            );
            for (k, n) in &execs {
                assert!(*n <= 2, "cut {cut} {mode:?}: {k} ran {n} times");
            }
            if resumed {
                drop(j);
                let j =
                    Journal::open_with(Arc::new(image.crash(CrashMode::DropUnsynced)), DIR, opts())
                        .unwrap();
                assert_eq!(j.unit_state("u"), Some(UnitState::Committed), "cut {cut}");
                for i in 0..3 {
                    assert_eq!(
                        j.key_status(&key(i)).map(|s| s.status),
                        Some(KeyStatus::Completed)
                    );
                }
            }
        }
    }
}

#[test]
fn busy_and_finished_units_are_refused() {
    let storage = SimStorage::new();
    let j = open(&storage);
    let u = j.begin("u", "t", &()).unwrap();
    assert!(matches!(
        j.begin("u", "t", &()),
        Err(Error::UnitBusy { .. })
    ));
    u.commit().unwrap();
    assert!(matches!(
        j.begin("u", "t", &()),
        Err(Error::UnitFinished {
            state: "committed",
            ..
        })
    ));
    drop(j);
    let j = open(&storage);
    assert!(matches!(
        j.begin("u", "t", &()),
        Err(Error::UnitFinished { .. })
    ));
}

#[test]
fn operator_resolution_is_recorded_as_such() {
    let storage = in_doubt(PolicyKind::NeverRepeat);
    let j = open(&storage);
    assert!(matches!(
        j.resolve_in_doubt("u", 1, Outcome::Ok { value: json!(1) }),
        Err(Error::InvalidCall { .. })
    ));
    j.resolve_in_doubt(
        "u",
        0,
        Outcome::Err {
            message: "never arrived".into(),
        },
    )
    .unwrap();
    let recs: Vec<_> = j
        .log()
        .read_from(1)
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            JournalRecord::decode(r.kind, r.payload()).unwrap()
        })
        .collect();
    assert!(matches!(
        recs.last(),
        Some(JournalRecord::EffectOutcome {
            via: OutcomeVia::Operator,
            ..
        })
    ));
}

#[test]
fn async_api_runs_effects_without_blocking_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let j = Journal::open_async(dir.path(), opts()).await.unwrap();
        let mut u = j.begin_async("a", "t", &1).await.unwrap();
        let v: u32 = u
            .run_async(Effect::retry_same_key("call"), |ctx| async move {
                assert_eq!(ctx.key(), "a/call/0");
                Ok::<_, String>(41)
            })
            .await
            .unwrap();
        u.checkpoint_async(&"mid").await.unwrap();
        drop(u);
        let mut u = j.begin_async("a", "t", &1).await.unwrap();
        let again: u32 = u
            .run_async(Effect::retry_same_key("call"), |_| async {
                Err::<u32, String>("must not run".into())
            })
            .await
            .unwrap();
        assert_eq!(again, v);
        u.commit_async().await.unwrap();
        j.compact_async().await.unwrap();
        assert_eq!(j.unit_state("a"), Some(UnitState::Committed));
    });
}

#[test]
fn units_on_many_threads_share_the_journal_and_each_effect_runs_once() {
    let storage = SimStorage::new();
    let j = open(&storage);
    let runs = std::sync::atomic::AtomicU32::new(0);
    let s0 = storage.syncs();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (j, runs) = (&j, &runs);
            s.spawn(move || {
                for i in 0..25 {
                    let mut u = j.begin(&format!("t{t}-{i}"), "t", &i).unwrap();
                    let v: u32 = u
                        .run(Effect::retry_same_key("send"), |_| {
                            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            Ok::<_, String>(i)
                        })
                        .unwrap();
                    assert_eq!(v, i);
                    u.commit().unwrap();
                }
            });
        }
    });
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 100);
    // Never more than two syncs per unit (fewer when group commit shares them).
    assert!(storage.syncs() - s0 <= 200);
    drop(j);
    let j = open(&storage);
    assert_eq!(j.replay_report().committed, 100);
    assert!(j.replay_report().incomplete.is_empty());
    assert_eq!(j.stats().keys, 100);
}

#[test]
fn async_units_run_concurrently_in_spawned_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let j = rt
        .block_on(Journal::open_async(dir.path(), opts()))
        .unwrap();
    let tasks: Vec<_> = (0..16u32)
        .map(|i| {
            let j = j.clone();
            rt.spawn(async move {
                let mut u = j.begin_async(&format!("a{i}"), "t", &i).await?;
                let v: u32 = u
                    .run_async(Effect::retry_same_key("call"), |_ctx| async move {
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                        Ok::<_, String>(i * 2)
                    })
                    .await?;
                u.commit_async().await?;
                Ok::<_, Error>(v)
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(rt.block_on(t).unwrap().unwrap(), i as u32 * 2);
    }
    assert_eq!(j.stats().committed, 16);
}

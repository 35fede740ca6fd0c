//! Journal semantics at the edges: injective idempotency keys, a key owned
//! by one effect, an interrupted rollback, the recorded declaration governing
//! a resumed step, keys held by live units, and results that must replay.

use std::cell::Cell;
use std::sync::mpsc;

use agentwal::journal::{
    default_key, Effect, EffectStatus, Error, Journal, JournalOptions, JournalRecord, Outcome,
    OutcomeVia, PolicyKind, Retention, UnitState,
};
use agentwal::log::storage::sim::CrashMode;
use agentwal::log::SimStorage;
use serde_json::json;

mod journal_support;

use journal_support::{begin_rec, intent_rec, write_records};

fn opts() -> JournalOptions {
    journal_support::opts(Retention::default())
}

fn open(storage: &SimStorage) -> Journal {
    journal_support::open_sim(storage, opts())
}

// ---- finding: default keys are injective; a key belongs to one effect ----

#[test]
fn keys_of_different_units_never_collide() {
    let storage = SimStorage::new();
    let j = open(&storage);
    let runs = Cell::new(0);
    let mut a = j.begin("orders/7", "t", &()).unwrap();
    let ka = a
        .run(Effect::retry_same_key("email"), |c| {
            runs.set(runs.get() + 1);
            Ok::<_, String>(c.key().to_string())
        })
        .unwrap();
    a.commit().unwrap();
    let mut b = j.begin("orders", "t", &()).unwrap();
    let kb = b
        .run(Effect::retry_same_key("7/email"), |c| {
            runs.set(runs.get() + 1);
            Ok::<_, String>(c.key().to_string())
        })
        .unwrap();
    b.commit().unwrap();
    assert_eq!(runs.get(), 2, "both effects ran");
    assert_eq!(
        ka, "orders/7/email/0",
        "keys without '/' in the name keep their form"
    );
    assert_eq!(kb, "orders/7%2Femail/0");
    assert_ne!(ka, kb);
    // The escape is injective on names holding the escape character too.
    assert_ne!(default_key("u", "a/b", 0), default_key("u", "a%2Fb", 0));
    assert_ne!(default_key("u/a", "b", 0), default_key("u", "a/b", 0));
}

#[test]
fn a_settled_key_is_never_handed_to_an_effect_of_another_name() {
    let storage = SimStorage::new();
    let j = open(&storage);
    let mut a = j.begin("a", "t", &()).unwrap();
    a.run(Effect::never_repeat("charge").key("K"), |_| {
        Ok::<_, String>(100)
    })
    .unwrap();
    a.commit().unwrap();

    let mut b = j.begin("b", "t", &()).unwrap();
    let before = j.log().next_lsn();
    let ran = Cell::new(false);
    let err = b
        .run(Effect::retry_same_key("email").key("K"), |_| {
            ran.set(true);
            Ok::<u32, String>(1)
        })
        .unwrap_err();
    match &err {
        Error::KeyConflict {
            unit,
            step,
            effect,
            key,
            recorded,
        } => {
            assert_eq!(
                (unit.as_str(), *step, effect.as_str(), key.as_str()),
                ("b", 0, "email", "K")
            );
            assert_eq!(recorded, r#"effect "charge" of unit "a""#);
        }
        e => panic!("expected KeyConflict, got {e}"),
    }
    assert!(!err.is_retryable());
    assert!(!ran.get(), "nothing runs");
    assert_eq!(j.log().next_lsn(), before, "nothing written");
    // The same effect name does reuse the key's recorded result.
    let v: u32 = b
        .run(
            Effect::never_repeat("charge").key("K"),
            |_| -> Result<u32, String> { panic!("a settled key never runs again") },
        )
        .unwrap();
    assert_eq!(v, 100);
}

#[test]
fn an_in_doubt_step_never_takes_the_result_another_effect_settled_for_its_key() {
    // Written by an earlier version, which did not check names: unit "a" is
    // in doubt on key K ("send"), unit "b" settled K as effect "refund".
    let storage = SimStorage::new();
    write_records(
        &storage,
        &[
            begin_rec("a"),
            intent_rec("a", 0, "send", "K", PolicyKind::RetrySameKey),
            begin_rec("b"),
            intent_rec("b", 0, "refund", "K", PolicyKind::RetrySameKey),
            JournalRecord::EffectOutcome {
                unit: "b".into(),
                seq: 0,
                key: "K".into(),
                outcome: Outcome::Ok { value: json!(-5) },
                via: OutcomeVia::Run,
                at_ms: 0,
            },
        ],
    );
    let j = open(&storage);
    let mut a = j.begin("a", "t", &()).unwrap();
    let before = j.log().next_lsn();
    let err = a
        .run(
            Effect::retry_same_key("send").key("K"),
            |_| -> Result<i32, String> { panic!("nothing runs") },
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::KeyConflict { unit, step: 0, recorded, .. }
            if unit == "a" && recorded.contains("refund")),
        "{err}"
    );
    assert_eq!(j.log().next_lsn(), before, "nothing written");
    assert_eq!(j.effect_status("a", 0), Some(EffectStatus::InDoubt));
}

#[test]
fn keys_recorded_by_the_old_scheme_still_replay_on_resume() {
    // Written by an earlier version: effect name "a/b" with the unescaped key.
    let storage = SimStorage::new();
    write_records(
        &storage,
        &[
            begin_rec("u"),
            intent_rec("u", 0, "a/b", "u/a/b/0", PolicyKind::RetrySameKey),
            JournalRecord::EffectOutcome {
                unit: "u".into(),
                seq: 0,
                key: "u/a/b/0".into(),
                outcome: Outcome::Ok { value: json!(5) },
                via: OutcomeVia::Run,
                at_ms: 0,
            },
            intent_rec("u", 1, "c/d", "u/c/d/1", PolicyKind::RetrySameKey),
        ],
    );
    let j = open(&storage);
    let mut u = j.begin("u", "t", &()).unwrap();
    let v: u32 = u
        .run(Effect::retry_same_key("a/b"), |_| -> Result<u32, String> {
            panic!("completed: replayed, not run")
        })
        .unwrap();
    assert_eq!(v, 5);
    // In doubt under its old key: retried with that very key.
    let key = u
        .run(Effect::retry_same_key("c/d"), |c| {
            Ok::<_, String>(c.key().to_string())
        })
        .unwrap();
    assert_eq!(key, "u/c/d/1");
    // A new step gets the new scheme.
    let key = u
        .run(Effect::retry_same_key("e/f"), |c| {
            Ok::<_, String>(c.key().to_string())
        })
        .unwrap();
    assert_eq!(key, "u/e%2Ff/2");
    u.commit().unwrap();
}

// ---- finding: an interrupted rollback cannot be committed ----

#[test]
fn a_unit_whose_rollback_was_interrupted_can_only_finish_its_rollback() {
    let storage = SimStorage::new();
    let refunds = Cell::new(0);
    {
        let j = open(&storage);
        let mut u = j.begin("u", "t", &()).unwrap();
        u.run(Effect::never_repeat("reserve").compensable(), |_| {
            Ok::<_, String>(1)
        })
        .unwrap();
        u.run(Effect::never_repeat("charge").compensable(), |_| {
            Ok::<_, String>(2)
        })
        .unwrap();
        // The refund of step 1 runs, then the process is killed while
        // compensating step 0 (it ran too): no abort record exists.
        let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = u.rollback("cancelled", |c| {
                refunds.set(refunds.get() + 1);
                if c.seq == 0 {
                    panic!("killed after the compensation ran");
                }
                Ok::<_, String>(())
            });
        }));
        assert!(killed.is_err());
    }
    // Power loss: only what was synced survives.
    let s2 = storage.crash(CrashMode::DropUnsynced);
    let j = open(&s2);
    assert_eq!(j.unit_state("u"), Some(UnitState::Incomplete));
    assert_eq!(j.effect_status("u", 1), Some(EffectStatus::Compensated));

    // The normal resume path: replaying the charge is refused...
    let mut u = j.begin("u", "t", &()).unwrap();
    let err = u
        .run(
            Effect::never_repeat("reserve").compensable(),
            |_| -> Result<u32, String> { panic!("never runs") },
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::RollingBack { unit, action: "run", .. } if unit == "u"),
        "{err}"
    );
    assert!(!err.is_retryable());
    // ... and so is committing.
    let err = u.commit().unwrap_err();
    assert!(
        matches!(
            &err,
            Error::RollingBack {
                action: "commit",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(j.unit_state("u"), Some(UnitState::Incomplete));

    // Finishing the rollback works: step 0 again (flagged retry), step 1 not.
    let mut seen = Vec::new();
    let report = j
        .rollback("u", "cancelled", |c| {
            seen.push((c.seq, c.retry));
            Ok::<_, String>(())
        })
        .unwrap();
    assert_eq!(seen, vec![(0, true)]);
    assert_eq!(report.already_compensated, vec![1]);
    assert_eq!(j.unit_state("u"), Some(UnitState::Aborted));
}

// ---- finding: the recorded declaration governs a resumed step ----

#[test]
fn a_recorded_never_repeat_step_never_runs_under_a_redeclared_policy() {
    let storage = SimStorage::new();
    write_records(
        &storage,
        &[
            begin_rec("u"),
            intent_rec("u", 0, "ledger", "k0", PolicyKind::NeverRepeat),
        ],
    );
    let j = open(&storage);
    let mut u = j.begin("u", "t", &()).unwrap();
    let ran = Cell::new(false);
    let err = u
        .run(Effect::retry_same_key("ledger").key("k0"), |_| {
            ran.set(true);
            Ok::<_, String>(())
        })
        .unwrap_err();
    match &err {
        Error::EffectMismatch {
            unit,
            step,
            recorded,
            requested,
        } => {
            assert_eq!((unit.as_str(), *step), ("u", 0));
            assert!(recorded.contains("never_repeat"), "{recorded}");
            assert!(requested.contains("retry_same_key"), "{requested}");
        }
        e => panic!("expected EffectMismatch, got {e}"),
    }
    assert!(!ran.get(), "an in-doubt never_repeat step never runs again");
    // The compensable flag is part of the declaration too.
    let err = u
        .run(
            Effect::never_repeat("ledger").key("k0").compensable(),
            |_| {
                ran.set(true);
                Ok::<_, String>(())
            },
        )
        .unwrap_err();
    match &err {
        Error::EffectMismatch {
            recorded,
            requested,
            ..
        } => {
            assert!(recorded.contains("not compensable"), "{recorded}");
            assert!(!requested.contains("not compensable"), "{requested}");
        }
        e => panic!("expected EffectMismatch, got {e}"),
    }
    assert!(!ran.get());
    // The recorded declaration itself: in doubt, never repeated.
    let err = u
        .run(Effect::never_repeat("ledger").key("k0"), |_| {
            ran.set(true);
            Ok::<_, String>(())
        })
        .unwrap_err();
    assert!(matches!(err, Error::InDoubt { step: 0, .. }), "{err}");
    assert!(!ran.get());
}

#[test]
fn resumed_code_that_asks_for_fewer_steps_cannot_commit_over_the_others() {
    let storage = SimStorage::new();
    {
        let j = open(&storage);
        let mut u = j.begin("u", "t", &()).unwrap();
        for name in ["plan", "send"] {
            u.run(Effect::retry_same_key(name).compensable(), |_| {
                Ok::<_, String>(1)
            })
            .unwrap();
        }
        j.sync().unwrap();
        // Killed before the commit.
    }
    let j = open(&storage.crash(CrashMode::DropUnsynced));
    assert_eq!(j.effect_status("u", 1), Some(EffectStatus::Completed));
    // New code knows only the first step.
    let mut u = j.begin("u", "t", &()).unwrap();
    u.run(Effect::retry_same_key("plan").compensable(), |_| {
        Ok::<_, String>(1)
    })
    .unwrap();
    let err = u.commit().unwrap_err();
    match &err {
        Error::UnreplayedSteps {
            unit,
            replayed,
            recorded,
        } => assert_eq!((unit.as_str(), *replayed, *recorded), ("u", 1, 2)),
        e => panic!("expected UnreplayedSteps, got {e}"),
    }
    assert!(!err.is_retryable());
    assert_eq!(j.unit_state("u"), Some(UnitState::Incomplete));
    // Replaying every recorded step, the commit goes through.
    let mut u = j.begin("u", "t", &()).unwrap();
    for name in ["plan", "send"] {
        u.run(
            Effect::retry_same_key(name).compensable(),
            |_| -> Result<u32, String> { panic!("replayed, not run") },
        )
        .unwrap();
    }
    u.commit().unwrap();
    assert_eq!(j.unit_state("u"), Some(UnitState::Committed));
}

// ---- finding: a key held by a live unit is busy ----

fn key_busy_while_another_unit_executes(policy: PolicyKind) {
    let storage = SimStorage::new();
    let j = open(&storage);
    let effect = |name: &str| match policy {
        PolicyKind::NeverRepeat => Effect::never_repeat(name).key("K"),
        _ => Effect::retry_same_key(name).key("K"),
    };
    let (started_tx, started_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let runs = std::sync::atomic::AtomicU32::new(0);
    std::thread::scope(|s| {
        let (j2, runs2) = (j.clone(), &runs);
        let a = s.spawn(move || {
            let mut a = j2.begin("a", "t", &()).unwrap();
            let v: u32 = a
                .run(effect("send"), |_| {
                    runs2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    started_tx.send(()).unwrap();
                    // Bounded: a failing test must not hang.
                    let _ = go_rx.recv_timeout(std::time::Duration::from_secs(10));
                    Ok::<_, String>(7)
                })
                .unwrap();
            a.commit().unwrap();
            v
        });
        started_rx.recv().unwrap();
        // Unit A is executing K right now.
        let mut b = j.begin("b", "t", &()).unwrap();
        let before = j.log().next_lsn();
        let r = b.run(effect("send"), |_| {
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<u32, String>(8)
        });
        let written = j.log().next_lsn() - before;
        let b_status = j.effect_status("b", 0);
        go_tx.send(()).unwrap();
        let err = r.expect_err("b must not run the key a is executing");
        match &err {
            Error::KeyBusy {
                unit, key, holder, ..
            } => assert_eq!(
                (unit.as_str(), key.as_str(), holder.as_str()),
                ("b", "K", "a")
            ),
            e => panic!("expected KeyBusy, got {e}"),
        }
        assert!(err.is_retryable());
        assert_eq!(written, 0, "nothing written for b");
        assert_eq!(b_status, Some(EffectStatus::NotStarted));
        assert_eq!(a.join().unwrap(), 7);
        // Retried once A recorded its outcome: A's result, nothing runs.
        let v: u32 = b
            .run(effect("send"), |_| {
                runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok::<u32, String>(8)
            })
            .unwrap();
        assert_eq!(v, 7);
        b.commit().unwrap();
    });
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn a_key_executed_by_a_live_unit_is_busy_for_other_units_of_the_process() {
    key_busy_while_another_unit_executes(PolicyKind::RetrySameKey);
}

#[test]
fn a_never_repeat_key_executed_by_a_live_unit_is_busy_not_in_doubt() {
    key_busy_while_another_unit_executes(PolicyKind::NeverRepeat);
}

#[test]
fn a_key_is_released_when_its_effect_panics() {
    let storage = SimStorage::new();
    let j = open(&storage);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut a = j.begin("a", "t", &()).unwrap();
        let _ = a.run(
            Effect::retry_same_key("send").key("K"),
            |_| -> Result<u32, String> { panic!("the effect's code panics") },
        );
    }));
    assert!(r.is_err());
    // Not busy: in doubt, and the policy applies.
    let mut b = j.begin("b", "t", &()).unwrap();
    let v: u32 = b
        .run(Effect::retry_same_key("send").key("K"), |c| {
            assert_eq!(c.attempt(), agentwal::journal::Attempt::Retry);
            Ok::<_, String>(3)
        })
        .unwrap();
    assert_eq!(v, 3);
}

// ---- finding: a result that cannot replay is not recorded as a value ----

#[test]
fn a_result_that_would_not_replay_is_recorded_as_failed_and_never_rerun() {
    let storage = SimStorage::new();
    let runs = Cell::new(0);
    {
        let j = open(&storage);
        let mut u = j.begin("u", "t", &()).unwrap();
        let err = u
            .run(Effect::retry_same_key("score"), |_| {
                runs.set(runs.get() + 1);
                Ok::<f64, String>(f64::NAN)
            })
            .unwrap_err();
        match &err {
            Error::ResultNotReplayable {
                unit,
                step,
                effect,
                reason,
                ..
            } => {
                assert_eq!((unit.as_str(), *step, effect.as_str()), ("u", 0, "score"));
                assert!(reason.contains("would be recorded as null"), "{reason}");
            }
            e => panic!("expected ResultNotReplayable, got {e}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("ran") && msg.contains("recorded as failed"),
            "{msg}"
        );
        assert!(!err.is_retryable());
        // A value that does round-trip is recorded as usual.
        let v: f64 = u
            .run(Effect::retry_same_key("ok"), |_| Ok::<f64, String>(0.1))
            .unwrap();
        assert_eq!(v, 0.1);
        // The failed outcome is buffered; a retry-same-key intent does not
        // sync (syncs per policy), so make it durable as a commit or a
        // never-repeat intent would.
        j.sync().unwrap();
    }
    let j = open(&storage.crash(CrashMode::DropUnsynced));
    assert_eq!(j.effect_status("u", 0), Some(EffectStatus::Failed));
    let mut u = j.begin("u", "t", &()).unwrap();
    let err = u
        .run(Effect::retry_same_key("score"), |_| {
            runs.set(runs.get() + 1);
            Ok::<f64, String>(1.0)
        })
        .unwrap_err();
    assert!(
        matches!(&err, Error::EffectFailed { message, .. } if message.contains("ran")),
        "a permanent failure replays, not a type error: {err}"
    );
    assert_eq!(runs.get(), 1, "the effect never runs again");
}

#[test]
fn an_oversized_result_says_the_effect_ran_and_what_was_recorded() {
    let storage = SimStorage::new();
    let j = open(&storage);
    let mut u = j.begin("u", "t", &()).unwrap();
    let big = "x".repeat(5 << 10);
    let err = u
        .run(Effect::retry_same_key("llm"), |_| {
            Ok::<_, String>(big.clone())
        })
        .unwrap_err();
    assert!(
        matches!(&err, Error::ResultTooLarge { step: 0, limit, .. } if *limit == 4 << 10),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("ran") && msg.contains("recorded as failed"),
        "{msg}"
    );
    assert!(!msg.contains("nothing was written"), "{msg}");
    assert_eq!(j.effect_status("u", 0), Some(EffectStatus::Failed));
}

#[test]
fn a_multi_megabyte_model_answer_is_recorded_under_the_default_options() {
    let dir = tempfile::tempdir().unwrap();
    let answer = "token ".repeat((2 << 20) / 6 + 1); // just over 2 MiB
    assert!(answer.len() > 2 << 20);
    {
        let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        let mut u = j.begin("u", "t", &()).unwrap();
        let got: String = u
            .run(Effect::retry_same_key("llm"), |_| {
                Ok::<_, String>(answer.clone())
            })
            .unwrap();
        assert_eq!(got.len(), answer.len());
        // Killed before the commit.
    }
    let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    let mut u = j.begin("u", "t", &()).unwrap();
    let got: String = u
        .run(
            Effect::retry_same_key("llm"),
            |_| -> Result<String, String> { panic!("the paid call is not repeated") },
        )
        .unwrap();
    assert_eq!(got, answer);
    u.commit().unwrap();
}

//! Review findings in the journal layer: exactly-once across units sharing a
//! key, and an operator resolution racing a running unit.

mod journal_support;

use std::cell::Cell;
use std::sync::Arc;

use agentwal::journal::{
    Effect, Error, Journal, JournalOptions, JournalRecord, Outcome, PolicyKind, Retention,
    UnitState,
};
use agentwal::log::storage::sim::CrashMode;
use agentwal::log::{Durability, Log, SimStorage};
use serde_json::json;

const DIR: &str = "/review/journal";

fn opts() -> JournalOptions {
    journal_support::opts(Retention::unlimited())
}

fn open(storage: &SimStorage) -> Journal {
    Journal::open_with(Arc::new(storage.clone()), DIR, opts()).unwrap()
}

/// Unit `a` whose step 0 (`send`, explicit key `K`) is in doubt: its intent
/// is durable, its outcome never made it (the process died in the effect).
fn a_in_doubt_on_key_k() -> SimStorage {
    let storage = SimStorage::new();
    let log = Log::open_with(Arc::new(storage.clone()), DIR, opts().log).unwrap();
    for r in [
        JournalRecord::UnitBegin {
            unit: "a".into(),
            kind: "t".into(),
            payload: json!(null),
            at_ms: 0,
        },
        JournalRecord::EffectIntent {
            unit: "a".into(),
            seq: 0,
            name: "send".into(),
            key: "K".into(),
            policy: PolicyKind::RetrySameKey,
            compensable: false,
        },
    ] {
        log.append_with(r.kind(), &r.encode(), Durability::Durable)
            .unwrap();
    }
    log.close().unwrap();
    storage
}

/// Unit `a` is in doubt on key `K`. Unit `b` then runs the effect with the
/// same key (its policy allows the retry) and records the outcome: `K` is
/// settled. Resuming `a` must hand back `K`'s recorded outcome, not execute
/// the effect a third time for a key whose outcome is recorded.
#[test]
fn resumed_in_doubt_effect_reuses_an_outcome_another_unit_recorded_for_its_key() {
    let storage = a_in_doubt_on_key_k();
    let runs = Cell::new(0u32);
    let j = open(&storage);

    let mut b = j.begin("b", "t", &()).unwrap();
    let v: u32 = b
        .run(Effect::retry_same_key("send").key("K"), |c| {
            assert_eq!(c.key(), "K");
            runs.set(runs.get() + 1);
            Ok::<_, String>(7)
        })
        .unwrap();
    assert_eq!(v, 7);
    b.commit().unwrap();
    assert_eq!(runs.get(), 1);

    let mut a = j.begin("a", "t", &()).unwrap();
    assert!(a.is_resumed());
    let v: u32 = a
        .run(Effect::retry_same_key("send").key("K"), |_| {
            runs.set(runs.get() + 1);
            Ok::<_, String>(99)
        })
        .unwrap();
    assert_eq!(
        runs.get(),
        1,
        "the effect ran again although key K's outcome was recorded"
    );
    assert_eq!(v, 7, "K's recorded outcome is returned");
    a.commit().unwrap();
    drop(j);

    // The reuse is recorded: after a power loss `a` replays on its own.
    let j = open(&storage.crash(CrashMode::DropUnsynced));
    assert_eq!(j.unit_state("a"), Some(UnitState::Committed));
    assert_eq!(j.unit_state("b"), Some(UnitState::Committed));
}

/// An operator resolving an in-doubt step while the unit is open and running
/// that very step: two outcomes for one step would reach the log, and the
/// journal could never be opened again. The resolution must be refused while
/// the unit is open.
#[test]
fn resolving_a_step_of_an_open_unit_is_refused_and_the_journal_stays_openable() {
    let storage = SimStorage::new();
    let j = open(&storage);
    let mut u = j.begin("u", "t", &()).unwrap();
    let resolved = std::cell::RefCell::new(None);
    let v: u32 = u
        .run(Effect::retry_same_key("send"), |_| {
            // The step is in doubt right now (intent durable, no outcome).
            *resolved.borrow_mut() =
                Some(j.resolve_in_doubt("u", 0, Outcome::Ok { value: json!(1) }));
            Ok::<_, String>(2)
        })
        .unwrap();
    assert_eq!(v, 2);
    let resolved = resolved.into_inner().expect("closure ran");
    assert!(
        matches!(resolved, Err(Error::UnitBusy { ref unit }) if unit == "u"),
        "{resolved:?}"
    );
    u.commit().unwrap();
    drop(j);

    let j = Journal::open_with(Arc::new(storage.clone()), DIR, opts())
        .expect("a journal written through the API must reopen");
    assert_eq!(j.unit_state("u"), Some(UnitState::Committed));
}

/// Two units on different threads run a `never_repeat` effect with the same
/// explicit key. At most one execution may ever happen: the second unit
/// either reuses the recorded outcome or finds the key in doubt and stops.
/// The key-index check and the intent append must be one atomic step, or
/// both units can see the key unknown and both run it.
#[test]
fn two_units_racing_on_one_never_repeat_key_run_it_at_most_once() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Barrier;
    for round in 0..300u32 {
        let storage = SimStorage::new();
        let j = open(&storage);
        let runs = AtomicU32::new(0);
        let barrier = Barrier::new(2);
        let key = format!("shared-{round}");
        std::thread::scope(|s| {
            for t in 0..2 {
                let (j, runs, barrier, key) = (j.clone(), &runs, &barrier, key.clone());
                s.spawn(move || {
                    let mut u = j.begin(&format!("u{t}"), "t", &()).unwrap();
                    barrier.wait();
                    let _ = u.run(Effect::never_repeat("pay").key(key), |_| {
                        runs.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, String>(1u32)
                    });
                });
            }
        });
        assert!(
            runs.load(Ordering::SeqCst) <= 1,
            "round {round}: a never_repeat effect ran twice for one key"
        );
    }
}

/// The fdatasync of an effect's intent fails: the intent is in memory but
/// not on disk (and after "fsyncgate" never will be). A caller that retries
/// `run` (the I/O error is retryable) must not get the effect executed: its
/// intent is still not durable. This holds for the policies whose intent is
/// synced before the effect (`never_repeat`, `reconcile`); see the next test
/// for `retry_same_key`.
#[test]
fn an_effect_never_runs_while_its_intent_is_not_durable_even_on_retry() {
    use agentwal::log::storage::sim::{FaultKind, FaultOp};
    for policy in ["never_repeat", "reconcile"] {
        let storage = SimStorage::new();
        let j = open(&storage);
        let mut u = j.begin("u", "t", &()).unwrap();
        let runs = Cell::new(0u32);
        storage.inject(FaultOp::Sync, 0, FaultKind::Eio);
        for attempt in 0..3 {
            let effect = match policy {
                "never_repeat" => Effect::never_repeat("send"),
                _ => Effect::reconcile("send", |_| {
                    Ok::<_, String>(agentwal::journal::Probe::NotHappened)
                }),
            };
            let r = u.run(effect, |_| {
                runs.set(runs.get() + 1);
                Ok::<_, String>(1u32)
            });
            assert!(r.is_err(), "{policy} attempt {attempt}: {r:?}");
        }
        assert_eq!(
            runs.get(),
            0,
            "{policy}: the effect ran although its intent never became durable"
        );
    }
}

/// A `retry_same_key` intent rides on the commit's sync (syncs per policy):
/// when that sync fails the effect may have run, but the commit is never
/// acknowledged, the log refuses everything after, and a reopened journal
/// shows the step not started or in doubt — the re-run uses the same key.
#[test]
fn a_retry_effect_whose_commit_sync_fails_is_never_acknowledged() {
    use agentwal::log::storage::sim::{FaultKind, FaultOp};
    let storage = SimStorage::new();
    let j = open(&storage);
    let mut u = j.begin("u", "t", &()).unwrap();
    storage.inject(FaultOp::Sync, 0, FaultKind::Eio);
    let v: u32 = u
        .run(Effect::retry_same_key("send"), |ctx| {
            assert_eq!(ctx.key(), "u/send/0");
            Ok::<_, String>(1u32)
        })
        .unwrap();
    assert_eq!(v, 1);
    assert!(
        u.commit().is_err(),
        "a commit whose sync failed is an error"
    );
    let again = j.begin("v", "t", &()).and_then(|u| u.commit());
    assert!(again.is_err(), "the log refuses writes after a failed sync");
    drop(j);
    storage.clear_faults();
    let j = open(&storage.crash(CrashMode::DropUnsynced));
    assert_ne!(j.unit_state("u"), Some(UnitState::Committed));
    let mut u = j.begin("u", "t", &()).unwrap();
    let v: u32 = u
        .run(Effect::retry_same_key("send"), |ctx| {
            assert_eq!(ctx.key(), "u/send/0", "the re-run uses the same key");
            Ok::<_, String>(2u32)
        })
        .unwrap();
    assert_eq!(v, 2);
    u.commit().unwrap();
}

/// Same for compensations: the compensation intent's sync fails; a retried
/// rollback must not run the compensation on an intent that is not durable.
#[test]
fn a_compensation_never_runs_while_its_intent_is_not_durable_even_on_retry() {
    use agentwal::log::storage::sim::{FaultKind, FaultOp};
    let storage = SimStorage::new();
    let j = open(&storage);
    let mut u = j.begin("u", "t", &()).unwrap();
    let _: u32 = u
        .run(Effect::never_repeat("reserve").compensable(), |_| {
            Ok::<_, String>(1)
        })
        .unwrap();
    drop(u);
    let compensations = Cell::new(0u32);
    storage.inject(FaultOp::Sync, 0, FaultKind::Eio);
    for attempt in 0..3 {
        let r = j.rollback("u", "cancel", |_| {
            compensations.set(compensations.get() + 1);
            Ok::<_, String>(())
        });
        assert!(r.is_err(), "attempt {attempt}: {r:?}");
    }
    assert_eq!(
        compensations.get(),
        0,
        "a compensation ran although its intent never became durable"
    );
}

/// Retention keeps "keys of incomplete units". Unit `a` is incomplete and in
/// doubt on key `K`; unit `b` settled `K` and finished. Compaction with the
/// tightest retention must keep `K`: `a` still needs its outcome, or resuming
/// `a` executes an effect whose outcome was recorded.
#[test]
fn compaction_keeps_a_key_an_incomplete_unit_is_in_doubt_on() {
    let storage = a_in_doubt_on_key_k();
    let runs = Cell::new(0u32);
    let tight = JournalOptions {
        retention: Retention {
            max_keys: Some(0),
            max_age: None,
        },
        ..opts()
    };
    let j = Journal::open_with(Arc::new(storage.clone()), DIR, tight.clone()).unwrap();
    let mut b = j.begin("b", "t", &()).unwrap();
    let _: u32 = b
        .run(Effect::retry_same_key("send").key("K"), |_| {
            runs.set(runs.get() + 1);
            Ok::<_, String>(7)
        })
        .unwrap();
    b.commit().unwrap();
    j.compact().unwrap();
    drop(j);

    let j = Journal::open_with(Arc::new(storage.clone()), DIR, tight).unwrap();
    let mut a = j.begin("a", "t", &()).unwrap();
    let v: u32 = a
        .run(Effect::retry_same_key("send").key("K"), |_| {
            runs.set(runs.get() + 1);
            Ok::<_, String>(99)
        })
        .unwrap();
    assert_eq!(
        runs.get(),
        1,
        "K's outcome was dropped while unit a needed it"
    );
    assert_eq!(v, 7);
}

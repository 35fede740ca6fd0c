//! Replay classification: every prefix of every record sequence a unit with
//! three effects can produce, and every power-loss point of the live protocol.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use agentwal::journal::{
    Effect, EffectStatus, Journal, JournalOptions, JournalRecord, JournalView, Outcome, OutcomeVia,
    PolicyKind, Retention, UnitState,
};
use agentwal::log::storage::sim::CrashMode;
use agentwal::log::{Durability, Log, LogOptions, LogReader, SimStorage};
use serde_json::json;

const DIR: &str = "/j";

fn opts() -> JournalOptions {
    JournalOptions {
        log: LogOptions {
            segment_size: 64 << 10,
            max_record_bytes: 16 << 10,
            ..LogOptions::default()
        },
        max_payload_bytes: 8 << 10,
        retention: Retention::unlimited(),
        auto_compact: Default::default(),
        ..JournalOptions::default()
    }
}

fn write_records(storage: &SimStorage, recs: &[JournalRecord]) {
    let log = Log::open_with(Arc::new(storage.clone()), DIR, opts().log).unwrap();
    for r in recs {
        log.append_with(r.kind(), &r.encode(), Durability::Buffered)
            .unwrap();
    }
    log.close().unwrap();
}

/// One scripted step of a unit's history.
#[derive(Clone, Copy, Debug)]
enum Step {
    Intent(u32),
    Outcome(u32, bool),
    Checkpoint,
    CompIntent(u32),
    CompOutcome(u32),
    Commit,
    Abort,
}

fn record(step: Step) -> JournalRecord {
    record_for("u", step)
}

fn record_for(unit: &str, step: Step) -> JournalRecord {
    let prefix = unit;
    let unit = unit.to_string();
    let key = |s: u32| format!("{prefix}/e{s}/{s}");
    match step {
        Step::Intent(s) => JournalRecord::EffectIntent {
            unit,
            seq: s,
            name: format!("e{s}"),
            key: key(s),
            policy: PolicyKind::RetrySameKey,
            compensable: true,
        },
        Step::Outcome(s, ok) => JournalRecord::EffectOutcome {
            unit,
            seq: s,
            key: key(s),
            outcome: if ok {
                Outcome::Ok { value: json!(s) }
            } else {
                Outcome::Err {
                    message: "boom".into(),
                }
            },
            via: OutcomeVia::Run,
            at_ms: 1,
        },
        Step::Checkpoint => JournalRecord::Checkpoint {
            unit,
            state: json!({"at": "middle"}),
        },
        Step::CompIntent(s) => JournalRecord::CompensationIntent {
            unit,
            seq: s,
            key: format!("{}/compensate", key(s)),
        },
        Step::CompOutcome(s) => JournalRecord::CompensationOutcome {
            unit,
            seq: s,
            outcome: Outcome::Ok { value: json!(null) },
        },
        Step::Commit => JournalRecord::Commit { unit, at_ms: 2 },
        Step::Abort => JournalRecord::Abort {
            unit,
            reason: "r".into(),
            at_ms: 2,
        },
    }
}

/// Every history the protocol can write for a unit with 3 effects: each
/// effect succeeds or fails, an optional checkpoint after step 0 or 1, and
/// the unit ends by commit or by rollback (reverse compensations + abort).
fn histories() -> Vec<Vec<Step>> {
    let mut all = Vec::new();
    for oks in 0..8u32 {
        for checkpoint_after in [None, Some(0), Some(1)] {
            for rollback in [false, true] {
                let ok = |s: u32| oks & (1 << s) != 0;
                if !rollback && (0..3).any(|s| !ok(s)) {
                    // A unit with a failed effect may still commit; keep one such case.
                    if oks != 0b011 {
                        continue;
                    }
                }
                let mut h = Vec::new();
                for s in 0..3 {
                    h.push(Step::Intent(s));
                    h.push(Step::Outcome(s, ok(s)));
                    if checkpoint_after == Some(s) {
                        h.push(Step::Checkpoint);
                    }
                }
                if rollback {
                    for s in (0..3).rev().filter(|&s| ok(s)) {
                        h.push(Step::CompIntent(s));
                        h.push(Step::CompOutcome(s));
                    }
                    h.push(Step::Abort);
                } else {
                    h.push(Step::Commit);
                }
                all.push(h);
            }
        }
    }
    all
}

/// The expected classification of a prefix, computed independently.
fn expected(prefix: &[Step]) -> (UnitState, [EffectStatus; 3], bool) {
    let mut st = [EffectStatus::NotStarted; 3];
    let mut unit = UnitState::Incomplete;
    let mut checkpoint = false;
    for s in prefix {
        match *s {
            Step::Intent(i) => st[i as usize] = EffectStatus::InDoubt,
            Step::Outcome(i, ok) => {
                st[i as usize] = if ok {
                    EffectStatus::Completed
                } else {
                    EffectStatus::Failed
                }
            }
            Step::CompOutcome(i) => st[i as usize] = EffectStatus::Compensated,
            Step::Checkpoint => checkpoint = true,
            Step::CompIntent(_) => {}
            Step::Commit => unit = UnitState::Committed,
            Step::Abort => unit = UnitState::Aborted,
        }
    }
    (unit, st, checkpoint)
}

#[test]
fn every_prefix_of_every_history_is_classified_exactly() {
    let begin = JournalRecord::UnitBegin {
        unit: "u".into(),
        kind: "test".into(),
        payload: json!({"n": 1}),
        at_ms: 0,
    };
    let mut cases = 0;
    for h in histories() {
        // Cut 0: not even the begin record survived.
        for cut in 0..=h.len() + 1 {
            let storage = SimStorage::new();
            let mut recs = Vec::new();
            if cut > 0 {
                recs.push(begin.clone());
                recs.extend(h[..cut - 1].iter().map(|s| record(*s)));
            }
            write_records(&storage, &recs);
            let j = Journal::open_with(Arc::new(storage.clone()), DIR, opts()).unwrap();
            if cut == 0 {
                assert_eq!(j.unit_state("u"), None);
                assert!(j.replay_report().incomplete.is_empty());
                continue;
            }
            let (unit, effects, checkpoint) = expected(&h[..cut - 1]);
            assert_eq!(j.unit_state("u"), Some(unit), "history {h:?} cut {cut}");
            let report = j.replay_report();
            match unit {
                UnitState::Incomplete => {
                    assert_eq!(report.incomplete.len(), 1);
                    assert_eq!(
                        report.incomplete[0].last_checkpoint_lsn.is_some(),
                        checkpoint
                    );
                    for (s, want) in effects.iter().enumerate() {
                        assert_eq!(
                            j.effect_status("u", s as u32),
                            Some(*want),
                            "history {h:?} cut {cut} step {s}"
                        );
                    }
                    let in_doubt = effects
                        .iter()
                        .filter(|e| **e == EffectStatus::InDoubt)
                        .count();
                    assert_eq!(report.incomplete[0].effects_in_doubt(), in_doubt);
                }
                _ => {
                    assert!(report.incomplete.is_empty());
                    assert_eq!(j.effect_status("u", 0), None);
                }
            }
            // The read-only operator view agrees with the journal.
            drop(j);
            let view =
                JournalView::load(&LogReader::open_with(Arc::new(storage), DIR).unwrap()).unwrap();
            assert_eq!(view.units.len(), 1);
            assert_eq!(view.units[0].state, unit);
            cases += 1;
        }
    }
    assert!(cases > 200, "generated {cases} cases");
}

#[test]
fn records_out_of_protocol_are_reported_not_applied() {
    let storage = SimStorage::new();
    write_records(
        &storage,
        &[JournalRecord::Commit {
            unit: "ghost".into(),
            at_ms: 0,
        }],
    );
    let err = Journal::open_with(Arc::new(storage), DIR, opts()).unwrap_err();
    assert!(err.to_string().contains("ghost"), "{err}");
}

/// Executions of each effect (by key) across crashes.
type Runs = RefCell<HashMap<String, u32>>;

/// Runs unit "u" with three effects (one per policy) and commits; returns how
/// far it got. Errors (the simulated power cut) stop it.
fn script(j: &Journal, runs: &Runs) -> Result<(), agentwal::journal::Error> {
    let mut unit = j.begin("u", "test", &json!({"n": 1}))?;
    let count = |key: &str| *runs.borrow_mut().entry(key.to_string()).or_default() += 1;
    let a: u32 = unit.run(Effect::retry_same_key("a"), |c| {
        count(c.key());
        Ok::<_, String>(1)
    })?;
    let b: u32 = unit.run(
        Effect::reconcile("b", |_c| {
            Ok::<_, String>(agentwal::journal::Probe::Happened(2))
        }),
        |c| {
            count(c.key());
            Ok::<_, String>(2)
        },
    )?;
    let c: u32 = unit.run(Effect::never_repeat("c"), |c| {
        count(c.key());
        Ok::<_, String>(3)
    })?;
    assert_eq!((a, b, c), (1, 2, 3));
    unit.commit()?;
    Ok(())
}

#[test]
fn power_loss_at_every_write_never_loses_an_intent_or_reruns_a_completed_effect() {
    // Count the mutations a clean run makes.
    let clean = SimStorage::new();
    let j = Journal::open_with(Arc::new(clean.clone()), DIR, opts()).unwrap();
    let before = clean.mutations();
    script(&j, &RefCell::default()).unwrap();
    let total = clean.mutations() - before;
    drop(j);
    assert!(total > 4);

    for mode in [CrashMode::DropUnsynced, CrashMode::KeepAll] {
        for cut in 0..=total {
            let storage = SimStorage::new();
            let j = Journal::open_with(Arc::new(storage.clone()), DIR, opts()).unwrap();
            let runs: Runs = RefCell::default();
            storage.halt_after(cut);
            let first = script(&j, &runs);
            drop(j);
            let after = storage.crash(mode);
            let j = Journal::open_with(Arc::new(after.clone()), DIR, opts()).unwrap();
            // Every effect whose code ran is visible (completed or in doubt).
            for (seq, key) in ["u/a/0", "u/b/1", "u/c/2"].iter().enumerate() {
                if runs.borrow().contains_key(*key) {
                    let st = j.effect_status("u", seq as u32);
                    assert!(
                        st.is_none_or(|s| s != EffectStatus::NotStarted),
                        "cut {cut}: effect {key} ran but replay says {st:?}"
                    );
                }
            }
            if first.is_ok() {
                assert_eq!(j.unit_state("u"), Some(UnitState::Committed), "cut {cut}");
            }
            // Resume to completion; `c` (never_repeat) may be in doubt.
            let done_before: Vec<bool> = (0..3)
                .map(|s| j.effect_status("u", s) == Some(EffectStatus::Completed))
                .collect();
            let before_runs = runs.borrow().clone();
            match j.unit_state("u") {
                Some(UnitState::Committed) => continue,
                _ => match script(&j, &runs) {
                    Ok(()) => {}
                    Err(agentwal::journal::Error::InDoubt { step, .. }) => {
                        assert_eq!(step, 2, "cut {cut}");
                        assert_eq!(j.effect_status("u", 2), Some(EffectStatus::InDoubt));
                        continue;
                    }
                    Err(e) => panic!("cut {cut}: resume failed: {e}"),
                },
            }
            assert_eq!(j.unit_state("u"), Some(UnitState::Committed));
            for (seq, key) in ["u/a/0", "u/b/1", "u/c/2"].iter().enumerate() {
                let n = runs.borrow().get(*key).copied().unwrap_or(0);
                let m = before_runs.get(*key).copied().unwrap_or(0);
                if done_before[seq] {
                    assert_eq!(n, m, "cut {cut}: completed effect {key} ran again");
                }
                // b reconciles (never re-runs once started), c never repeats.
                if seq > 0 {
                    assert!(n <= 1, "cut {cut}: {key} ran {n} times");
                }
                assert!(n <= 2, "cut {cut}: {key} ran {n} times");
            }
            drop(j);
            // The committed result survives another reopen.
            let j = Journal::open_with(Arc::new(after), DIR, opts()).unwrap();
            assert_eq!(j.unit_state("u"), Some(UnitState::Committed));
        }
    }
}

#[test]
fn view_load_works_on_a_directory_owned_by_an_open_journal() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), opts()).unwrap();
    let mut u = j.begin("a", "k", &1).unwrap();
    u.run(Effect::never_repeat("x"), |_| Ok::<_, String>(1))
        .unwrap();
    // Not committed yet; the owner still holds the lock.
    let view = JournalView::load(&LogReader::open(dir.path()).unwrap()).unwrap();
    assert_eq!(view.units[0].state, UnitState::Incomplete);
    assert_eq!(view.units[0].effects_done(), 1);
    u.commit().unwrap();
    let view = JournalView::load(&LogReader::open(Path::new(dir.path())).unwrap()).unwrap();
    assert_eq!(view.units[0].state, UnitState::Committed);
    assert_eq!(view.committed_total(), 1);
}

#[test]
fn an_undecodable_journal_record_is_reported_with_its_lsn() {
    let storage = SimStorage::new();
    let log = Log::open_with(Arc::new(storage.clone()), DIR, opts().log).unwrap();
    log.append_with(0, b"not the journal's", Durability::Durable)
        .unwrap();
    log.append_with(5, b"{\"type\":\"commit\"", Durability::Durable)
        .unwrap();
    drop(log);
    match Journal::open_with(Arc::new(storage.clone()), DIR, opts()) {
        Err(agentwal::journal::Error::BadRecordAt {
            lsn: 2, kind: 5, ..
        }) => {}
        other => panic!("unexpected {other:?}"),
    }
    // A kind reserved for a newer version is refused, not skipped.
    let storage = SimStorage::new();
    let log = Log::open_with(Arc::new(storage.clone()), DIR, opts().log).unwrap();
    log.append_with(17, b"{}", Durability::Durable).unwrap();
    drop(log);
    assert!(matches!(
        Journal::open_with(Arc::new(storage), DIR, opts()),
        Err(agentwal::journal::Error::UnknownRecordKind { kind: 17 })
    ));
}

#[test]
fn two_units_interleaved_are_classified_independently_at_every_cut() {
    let begin = |unit: &str| JournalRecord::UnitBegin {
        unit: unit.into(),
        kind: "test".into(),
        payload: json!(null),
        at_ms: 0,
    };
    let hs = histories();
    let mut rng = agentwal::log::storage::sim::SimRng::new(7);
    let mut checked = 0;
    for round in 0..24 {
        // Two histories (with their begin), merged in a random interleaving.
        let hu = &hs[rng.below(hs.len() as u64) as usize];
        let hv = &hs[rng.below(hs.len() as u64) as usize];
        let mut seq_u: Vec<Option<Step>> = vec![None];
        seq_u.extend(hu.iter().map(|s| Some(*s)));
        let mut seq_v: Vec<Option<Step>> = vec![None];
        seq_v.extend(hv.iter().map(|s| Some(*s)));
        let (mut iu, mut iv) = (0, 0);
        let mut merged: Vec<(&str, Option<Step>)> = Vec::new();
        while iu < seq_u.len() || iv < seq_v.len() {
            let take_u = iv == seq_v.len() || (iu < seq_u.len() && rng.below(2) == 0);
            if take_u {
                merged.push(("u", seq_u[iu]));
                iu += 1;
            } else {
                merged.push(("v", seq_v[iv]));
                iv += 1;
            }
        }
        for cut in 0..=merged.len() {
            let storage = SimStorage::new();
            let recs: Vec<JournalRecord> = merged[..cut]
                .iter()
                .map(|(unit, s)| match s {
                    None => begin(unit),
                    Some(s) => record_for(unit, *s),
                })
                .collect();
            write_records(&storage, &recs);
            let j = Journal::open_with(Arc::new(storage), DIR, opts()).unwrap();
            for unit in ["u", "v"] {
                let mine: Vec<Option<Step>> = merged[..cut]
                    .iter()
                    .filter(|(u, _)| *u == unit)
                    .map(|(_, s)| *s)
                    .collect();
                if mine.is_empty() {
                    assert_eq!(j.unit_state(unit), None);
                    continue;
                }
                let steps: Vec<Step> = mine.into_iter().flatten().collect();
                let (state, effects, _) = expected(&steps);
                assert_eq!(
                    j.unit_state(unit),
                    Some(state),
                    "round {round} cut {cut} {unit}"
                );
                if state == UnitState::Incomplete {
                    for (s, want) in effects.iter().enumerate() {
                        assert_eq!(j.effect_status(unit, s as u32), Some(*want));
                    }
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 300, "{checked}");
}

fn arbitrary_step() -> impl proptest::strategy::Strategy<Value = Option<Step>> {
    use proptest::prelude::*;
    prop_oneof![
        Just(None),
        (0..4u32).prop_map(|s| Some(Step::Intent(s))),
        (0..4u32, any::<bool>()).prop_map(|(s, ok)| Some(Step::Outcome(s, ok))),
        Just(Some(Step::Checkpoint)),
        (0..4u32).prop_map(|s| Some(Step::CompIntent(s))),
        (0..4u32).prop_map(|s| Some(Step::CompOutcome(s))),
        Just(Some(Step::Commit)),
        Just(Some(Step::Abort)),
    ]
}

proptest::proptest! {
    /// Arbitrary (mostly invalid) record sequences: replay never panics; it
    /// either reports the inconsistency or yields a view whose effects are
    /// numbered 0..n and whose keys are all in the key index.
    #[test]
    fn replay_of_arbitrary_sequences_never_panics(
        seq in proptest::collection::vec((proptest::bool::ANY, arbitrary_step()), 0..40)
    ) {
        let recs: Vec<(u64, JournalRecord)> = seq
            .iter()
            .enumerate()
            .map(|(i, (v, s))| {
                let unit = if *v { "v" } else { "u" };
                let r = match s {
                    None => JournalRecord::UnitBegin {
                        unit: unit.into(),
                        kind: "k".into(),
                        payload: json!(null),
                        at_ms: 0,
                    },
                    Some(s) => record_for(unit, *s),
                };
                (i as u64 + 1, r)
            })
            .collect();
        let bytes: Vec<(u64, u8, Vec<u8>)> =
            recs.iter().map(|(l, r)| (*l, r.kind(), r.encode())).collect();
        if let Ok(view) =
            JournalView::replay(None, bytes.iter().map(|(l, k, b)| (*l, *k, b.as_slice())))
        {
            for u in &view.units {
                for (i, e) in u.effects.iter().enumerate() {
                    proptest::prop_assert_eq!(e.seq as usize, i);
                    proptest::prop_assert!(view.keys.iter().any(|k| k.key == e.key));
                }
            }
        }
    }
}

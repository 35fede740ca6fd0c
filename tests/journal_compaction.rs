//! Compaction: the state recovered from snapshot + tail equals the state
//! replayed from the full log (proptest over random operation sequences,
//! checked against a simple model), retention bounds the key index, and
//! auto-compaction bounds the disk in a long run.

use std::collections::HashMap;
use std::sync::Arc;

use agentwal::journal::{
    AutoCompact, Effect, Error, Journal, JournalOptions, JournalView, Retention, Unit, UnitState,
};
use agentwal::log::{LogOptions, LogReader, SimStorage};
use proptest::prelude::*;

const DIR: &str = "/j";
const UNITS: u8 = 4;

fn opts(auto: AutoCompact, retention: Retention) -> JournalOptions {
    JournalOptions {
        log: LogOptions {
            segment_size: 16 << 10,
            max_record_bytes: 4 << 10,
            ..LogOptions::default()
        },
        max_payload_bytes: 2 << 10,
        retention,
        auto_compact: auto,
        ..JournalOptions::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Begin(u8),
    Effect {
        unit: u8,
        name: u8,
        ok: bool,
        shared_key: Option<u8>,
    },
    Checkpoint(u8),
    Commit(u8),
    Rollback(u8),
    /// Drop the handle (the unit stays incomplete, as after a kill).
    Drop(u8),
    Compact,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..UNITS).prop_map(Op::Begin),
        6 => (0..UNITS, 0..3u8, proptest::bool::weighted(0.8), proptest::option::weighted(0.3, 0..3u8))
            .prop_map(|(unit, name, ok, shared_key)| Op::Effect { unit, name, ok, shared_key }),
        1 => (0..UNITS).prop_map(Op::Checkpoint),
        2 => (0..UNITS).prop_map(Op::Commit),
        1 => (0..UNITS).prop_map(Op::Rollback),
        1 => (0..UNITS).prop_map(Op::Drop),
        2 => Just(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

/// One journal and its open unit handles.
struct Side {
    storage: SimStorage,
    journal: Option<Journal>,
    handles: HashMap<u8, Unit>,
    compacts: bool,
}

impl Side {
    fn new(compacts: bool) -> Side {
        let storage = SimStorage::new();
        let journal = Some(open(&storage));
        Side {
            storage,
            journal,
            handles: HashMap::new(),
            compacts,
        }
    }

    fn j(&self) -> &Journal {
        self.journal.as_ref().unwrap()
    }

    /// Applies `op`; returns a comparable summary of what happened.
    fn apply(&mut self, op: &Op) -> String {
        let id = |u: u8| format!("u{u}");
        match op {
            Op::Begin(u) => {
                if self.handles.contains_key(u) {
                    return "already open".into();
                }
                match self.j().begin(&id(*u), "t", &u) {
                    Ok(h) => {
                        let r = format!("ok resumed={}", h.is_resumed());
                        self.handles.insert(*u, h);
                        r
                    }
                    Err(e) => format!("err {e}"),
                }
            }
            Op::Effect {
                unit,
                name,
                ok,
                shared_key,
            } => {
                let Some(h) = self.handles.get_mut(unit) else {
                    return "no handle".into();
                };
                let mut eff = Effect::retry_same_key(format!("e{name}"));
                if let Some(k) = shared_key {
                    eff = eff.key(format!("shared-{k}"));
                }
                let step = h.next_step();
                let r: Result<String, Error> = h.run(eff, |c| {
                    if *ok {
                        Ok(format!("{}#{step}", c.unit()))
                    } else {
                        Err(format!("fail {}", c.key()))
                    }
                });
                match r {
                    Ok(v) => format!("ok {v}"),
                    Err(e) => format!("err {e}"),
                }
            }
            Op::Checkpoint(u) => match self.handles.get_mut(u) {
                Some(h) => format!(
                    "{:?}",
                    h.checkpoint(&format!("cp{}", h.next_step())).is_ok()
                ),
                None => "no handle".into(),
            },
            Op::Commit(u) => match self.handles.remove(u) {
                Some(h) => match h.commit() {
                    Ok(_) => "committed".into(),
                    Err(e) => format!("err {e}"),
                },
                None => "no handle".into(),
            },
            Op::Rollback(u) => match self.handles.remove(u) {
                Some(h) => match h.rollback("test", |_| Ok::<_, String>(())) {
                    Ok(r) => format!("aborted {:?}", r.compensated),
                    Err(e) => format!("err {e}"),
                },
                None => "no handle".into(),
            },
            Op::Drop(u) => {
                self.handles.remove(u);
                "dropped".into()
            }
            Op::Compact => {
                if self.compacts {
                    self.j().compact().unwrap();
                }
                "compacted".into()
            }
            Op::Reopen => {
                self.handles.clear();
                self.journal = None;
                self.journal = Some(open(&self.storage));
                "reopened".into()
            }
        }
    }

    /// Everything observable about the journal's state.
    fn observe(&self) -> String {
        observe(self.j())
    }
}

/// Everything observable about a journal's state (units u0..u3, r0..r199).
fn observe(j: &Journal) -> String {
    let mut out = format!("{:?}\n", j.incomplete_units());
    for u in 0..UNITS {
        out += &format!("u{u}: {:?}\n", j.unit_state(&format!("u{u}")));
    }
    let mut keys: Vec<String> = Vec::new();
    for u in 0..UNITS {
        for step in 0..40 {
            for name in 0..3 {
                keys.push(format!("u{u}/e{name}/{step}"));
            }
        }
    }
    keys.extend((0..3).map(|k| format!("shared-{k}")));
    for k in keys {
        if let Some(s) = j.key_status(&k) {
            out += &format!("{s:?} {:?}\n", j.key_outcome(&k));
        }
    }
    for r in 0..200 {
        let k = format!("r{r}/send/0");
        if let Some(s) = j.key_status(&k) {
            out += &format!(
                "{s:?} {:?} {:?}\n",
                j.key_outcome(&k),
                j.unit_state(&format!("r{r}"))
            );
        }
    }
    let s = j.stats();
    out += &format!("committed {} aborted {}\n", s.committed, s.aborted);
    out
}

fn open(storage: &SimStorage) -> Journal {
    Journal::open_with(
        Arc::new(storage.clone()),
        DIR,
        opts(AutoCompact::default(), Retention::unlimited()),
    )
    .unwrap()
}

/// The simple model: unit states only move Incomplete → Committed/Aborted,
/// and a key's first settled outcome never changes.
#[derive(Default)]
struct Model {
    units: HashMap<String, UnitState>,
    keys: HashMap<String, String>,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn snapshot_plus_tail_equals_full_replay(ops in proptest::collection::vec(op(), 1..60)) {
        let mut a = Side::new(true);
        let mut b = Side::new(false);
        let mut model = Model::default();
        for op in &ops {
            let ra = a.apply(op);
            let rb = b.apply(op);
            prop_assert_eq!(&ra, &rb, "op {:?}", op);
            prop_assert_eq!(a.observe(), b.observe(), "after {:?}", op);
            // Model checks.
            for u in 0..UNITS {
                let id = format!("u{u}");
                let now = a.j().unit_state(&id);
                if let Some(prev) = model.units.get(&id) {
                    if *prev != UnitState::Incomplete {
                        prop_assert_eq!(now, Some(*prev), "{} left its final state", id);
                    }
                }
                if let Some(s) = now {
                    model.units.insert(id, s);
                }
            }
            for k in (0..3).map(|k| format!("shared-{k}")) {
                if let Some(o) = a.j().key_outcome(&k) {
                    let o = format!("{o:?}");
                    let first = model.keys.entry(k.clone()).or_insert_with(|| o.clone());
                    prop_assert_eq!(&*first, &o, "settled key {} changed", k);
                }
            }
        }
        // The operator's read-only view (snapshot + tail) agrees too.
        a.handles.clear();
        b.handles.clear();
        let va = JournalView::load(&LogReader::open_with(Arc::new(a.storage.clone()), DIR).unwrap()).unwrap();
        let vb = JournalView::load(&LogReader::open_with(Arc::new(b.storage.clone()), DIR).unwrap()).unwrap();
        prop_assert_eq!(&va.keys, &vb.keys);
        prop_assert_eq!(va.committed_total(), vb.committed_total());
        prop_assert_eq!(va.aborted_total(), vb.aborted_total());
        let inc = |v: &JournalView| v.units_in(UnitState::Incomplete).cloned().collect::<Vec<_>>();
        prop_assert_eq!(inc(&va), inc(&vb));
        // And a final reopen of both.
        a.apply(&Op::Reopen);
        b.apply(&Op::Reopen);
        prop_assert_eq!(a.j().replay_report().incomplete.clone(), b.j().replay_report().incomplete.clone());
        prop_assert_eq!(a.observe(), b.observe());
    }
}

fn run_units(j: &Journal, from: u32, to: u32) {
    for i in from..to {
        let mut u = j.begin(&format!("r{i}"), "t", &i).unwrap();
        u.run(Effect::retry_same_key("send"), |_| Ok::<_, String>(i))
            .unwrap();
        u.commit().unwrap();
    }
}

#[test]
fn auto_compaction_bounds_disk_and_retention_bounds_keys() {
    let storage = SimStorage::new();
    let o = opts(
        AutoCompact {
            every_records: Some(300),
            every_bytes: None,
            tail_ratio: None,
        },
        Retention {
            max_keys: Some(50),
            max_age: None,
        },
    );
    let j = Journal::open_with(Arc::new(storage.clone()), DIR, o.clone()).unwrap();
    let mut max_segments = 0;
    // An incomplete unit must survive every compaction.
    let mut open = j.begin("long-lived", "t", &()).unwrap();
    let first: u32 = open
        .run(Effect::never_repeat("step"), |_| Ok::<_, String>(7))
        .unwrap();
    drop(open);
    for round in 0..30 {
        run_units(&j, round * 100, (round + 1) * 100);
        max_segments = max_segments.max(j.log().segment_count());
    }
    let stats = j.stats();
    assert!(stats.compactions >= 9, "{stats:?}");
    assert_eq!(stats.last_auto_compact_error, None);
    assert!(max_segments <= 8, "segments grew to {max_segments}");
    assert!(stats.keys <= 50 + 1 + 300, "{stats:?}");
    assert_eq!(stats.committed, 3000);
    drop(j);

    let j = Journal::open_with(Arc::new(storage.clone()), DIR, o).unwrap();
    assert!(j.replay_report().snapshot_lsn > 0);
    assert!(j.replay_report().records_replayed < 400);
    // The incomplete unit is intact; its completed step is not re-run.
    let mut open = j.begin("long-lived", "t", &()).unwrap();
    assert!(open.is_resumed());
    let again: u32 = open
        .run(Effect::never_repeat("step"), |_| Ok::<_, String>(0))
        .unwrap();
    assert_eq!(again, first);
    open.commit().unwrap();
    // Recent keys survive compaction, the oldest are retired.
    assert!(j.key_status("r2999/send/0").is_some());
    assert!(j.key_status("r0/send/0").is_none());
    assert_eq!(j.stats().committed, 3001);
    let view = JournalView::load(&LogReader::open_with(Arc::new(storage), DIR).unwrap()).unwrap();
    assert_eq!(view.committed_total(), 3001);
}

#[test]
fn retention_by_age_retires_old_keys() {
    let storage = SimStorage::new();
    let o = opts(
        AutoCompact::default(),
        Retention {
            max_keys: None,
            max_age: Some(std::time::Duration::from_millis(1)),
        },
    );
    let j = Journal::open_with(Arc::new(storage), DIR, o).unwrap();
    run_units(&j, 0, 5);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let r = j.compact().unwrap();
    assert_eq!(r.retired, 10, "5 keys and 5 finished unit ids: {r:?}");
    assert!(j.key_status("r0/send/0").is_none());
    assert_eq!(j.unit_state("r0"), None);
}

#[test]
fn power_loss_at_every_step_of_compaction_keeps_the_state() {
    use agentwal::log::storage::sim::CrashMode;
    let base = SimStorage::new();
    {
        let j = open(&base);
        run_units(&j, 0, 120); // several 16 KiB segments
        for u in 0..UNITS {
            let mut h = j.begin(&format!("u{u}"), "t", &u).unwrap();
            h.run(Effect::retry_same_key("e0"), |_| Ok::<_, String>(u))
                .unwrap();
        }
        j.sync().unwrap();
    }
    let expected = observe(&open(&base.crash(CrashMode::KeepAll)));
    assert!(expected.contains("Incomplete"));
    // Mutations of a clean compaction.
    let probe = base.crash(CrashMode::KeepAll);
    let j = open(&probe);
    let m0 = probe.mutations();
    let r = j.compact().unwrap();
    assert!(r.segments_removed >= 2, "{r:?}");
    let total = probe.mutations() - m0;
    drop(j);
    for cut in 0..=total {
        for mode in [
            CrashMode::DropUnsynced,
            CrashMode::KeepAll,
            CrashMode::Random(cut),
        ] {
            let s = base.crash(CrashMode::KeepAll);
            {
                let j = open(&s);
                s.halt_after(cut);
                let _ = j.compact();
            }
            let after = s.crash(mode);
            let j = open(&after);
            assert_eq!(observe(&j), expected, "cut {cut} {mode:?}");
            // And it keeps working: compact again, reopen, same state.
            j.compact().unwrap();
            drop(j);
            assert_eq!(
                observe(&open(&after)),
                expected,
                "cut {cut} {mode:?} (second)"
            );
        }
    }
}

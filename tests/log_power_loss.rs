//! Guarantee: an append acknowledged durable survives a power loss at *any*
//! mutating-operation boundary, and recovery never fails on a crash state.
//!
//! A fixed workload (durable and buffered appends, a batch, syncs, rotations
//! into tiny segments, a snapshot and truncation) is cut after exactly `k`
//! mutating storage operations, for every `k`, and the image is crashed in
//! every mode: only synced data (`DropUnsynced`), everything (`KeepAll`, a
//! process kill) and several seeded random mixes of kept, dropped and torn
//! writes and directory operations. With spare segments on (the default),
//! the cut points include every step of preparing a spare (create, zero
//! fill, sync) and of installing it (header, header sync, rename, directory
//! sync), so recovery meets half-written and complete leftover spares.

use std::sync::Arc;

use agentwal::log::storage::sim::{CrashMode, FaultKind, FaultOp};
use agentwal::log::{Durability, Error, Log, LogOptions, SimStorage};

const DIR: &str = "/sim/power-loss/journal";

/// Preallocated segments or growing files; spare segments prepared ahead
/// or created at rotation.
#[derive(Debug, Clone, Copy)]
struct Variant {
    preallocate: bool,
    prepare: bool,
}

impl From<bool> for Variant {
    fn from(preallocate: bool) -> Variant {
        Variant {
            preallocate,
            prepare: true,
        }
    }
}

fn opts(v: impl Into<Variant>) -> LogOptions {
    let v = v.into();
    LogOptions {
        segment_size: 4096,
        max_record_bytes: 2048,
        preallocate: v.preallocate,
        prepare_segments: v.prepare,
        ..LogOptions::default()
    }
}

fn payload(lsn: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (lsn as usize * 13 + i) as u8).collect()
}

/// What the workload got acknowledged before the power went out.
#[derive(Debug, Default)]
struct Outcome {
    /// Every record attempted, by LSN - 1 (acknowledged or not).
    attempted: Vec<Vec<u8>>,
    /// Highest LSN acknowledged durable.
    acked: u64,
    /// Highest snapshot LSN acknowledged.
    snapshot: u64,
}

/// Runs the workload until the first error. Returns what was acknowledged.
fn workload(sim: &SimStorage, preallocate: impl Into<Variant>) -> Outcome {
    let mut out = Outcome::default();
    let Ok(log) = Log::open_with(Arc::new(sim.clone()), DIR, opts(preallocate)) else {
        return out;
    };
    // (payload length, durability); 0 = sync, usize::MAX = snapshot+truncate, batch marked by 1_000_000+n.
    let plan: &[(usize, Option<Durability>)] = &[
        (10, Some(Durability::Durable)),
        (0, Some(Durability::Durable)),
        (300, Some(Durability::Buffered)),
        (17, Some(Durability::Buffered)),
        (0, None),                              // sync
        (1_000_004, Some(Durability::Durable)), // batch of 4
        (1500, Some(Durability::Durable)),
        (1500, Some(Durability::Buffered)),
        (1500, Some(Durability::Durable)), // rotates
        (usize::MAX, None),                // snapshot at 5, truncate
        (2000, Some(Durability::Durable)),
        (700, Some(Durability::Durable)),
        (5, Some(Durability::Buffered)), // never synced
    ];
    for &(len, durability) in plan {
        let next = out.attempted.len() as u64 + 1;
        let ok = match (len, durability) {
            (usize::MAX, _) => match log.write_snapshot(5, b"state at 5") {
                Ok(_) => {
                    out.snapshot = 5;
                    out.acked = out.acked.max(5);
                    log.truncate_before(6).is_ok()
                }
                Err(_) => false,
            },
            (_, None) => log.sync().map(|d| out.acked = out.acked.max(d)).is_ok(),
            (n, Some(d)) if n >= 1_000_000 => {
                let recs: Vec<Vec<u8>> = (0..(n - 1_000_000) as u64)
                    .map(|i| payload(next + i, 40))
                    .collect();
                out.attempted.extend(recs.iter().cloned());
                let refs: Vec<(u8, &[u8])> = recs.iter().map(|r| (1u8, &r[..])).collect();
                match log.append_batch(&refs, d) {
                    Ok(r) => {
                        assert_eq!(*r.start(), next);
                        if d == Durability::Durable {
                            out.acked = *r.end();
                        }
                        true
                    }
                    Err(_) => false,
                }
            }
            (n, Some(d)) => {
                let p = payload(next, n);
                out.attempted.push(p.clone());
                match log.append_with(1, &p, d) {
                    Ok(lsn) => {
                        assert_eq!(lsn, next);
                        if d == Durability::Durable {
                            out.acked = lsn;
                        }
                        true
                    }
                    Err(_) => false,
                }
            }
        };
        if !ok {
            break;
        }
        out.acked = out.acked.max(log.durable_lsn());
    }
    out
}

fn check(image: SimStorage, out: &Outcome, preallocate: impl Into<Variant> + Copy, what: &str) {
    let log = Log::open_with(Arc::new(image.clone()), DIR, opts(preallocate))
        .unwrap_or_else(|e| panic!("{what}: open failed on a crash state: {e}"));
    let snap = log.latest_snapshot().unwrap().map_or(0, |s| s.lsn);
    assert!(snap >= out.snapshot, "{what}: acknowledged snapshot lost");
    let last = log.next_lsn() - 1;
    assert!(
        last >= out.acked,
        "{what}: acknowledged LSN {} lost, log ends at {last}",
        out.acked
    );
    assert!(
        last <= out.attempted.len() as u64,
        "{what}: phantom records (log ends at {last})"
    );
    let mut expect = snap + 1;
    for r in log.read_from(snap + 1).unwrap() {
        let r = r.unwrap_or_else(|e| panic!("{what}: read failed: {e}"));
        assert_eq!(r.lsn, expect, "{what}: LSNs not contiguous");
        assert_eq!(
            r.payload(),
            &out.attempted[(r.lsn - 1) as usize][..],
            "{what}: LSN {} has wrong payload",
            r.lsn
        );
        expect += 1;
    }
    assert_eq!(expect, last + 1, "{what}: gap before the end of the log");
    // Recovery is idempotent: a second crash right after it changes nothing.
    drop(log);
    let again = image.crash(CrashMode::DropUnsynced);
    let log = Log::open_with(Arc::new(again), DIR, opts(preallocate))
        .unwrap_or_else(|e| panic!("{what}: second open failed: {e}"));
    assert_eq!(
        log.next_lsn() - 1,
        last,
        "{what}: recovered records were not durable"
    );
}

fn every_boundary(preallocate: Variant) {
    let dry = SimStorage::new();
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let full = metrics::with_local_recorder(&recorder, || workload(&dry, preallocate));
    // The sweep must cover preparing and installing spares when they are on.
    let installed: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| {
            k.key().name() == "agentwal_segment_rotations_total"
                && k.key().labels().any(|l| l.value() == "used")
        })
        .map(|(.., v)| match v {
            metrics_util::debugging::DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum();
    assert_eq!(
        installed > 0,
        preallocate.preallocate && preallocate.prepare,
        "{preallocate:?}: spares installed in the workload: {installed}"
    );
    let total = dry.mutations();
    assert!(
        full.acked >= 10 && total > 20,
        "workload too small: {full:?} in {total} ops"
    );
    let mut modes = vec![CrashMode::DropUnsynced, CrashMode::KeepAll];
    modes.extend((0..8).map(CrashMode::Random));
    eprintln!(
        "{preallocate:?}: {} crash states ({} boundaries x {} modes)",
        (total + 2) * modes.len() as u64,
        total + 2,
        modes.len()
    );
    for k in 0..=total + 1 {
        let sim = SimStorage::new();
        sim.halt_after(k);
        let out = workload(&sim, preallocate);
        if k > total {
            assert_eq!(
                out.acked, full.acked,
                "without a halt the workload completes"
            );
        }
        for &mode in &modes {
            check(
                sim.crash(mode),
                &out,
                preallocate,
                &format!("halt after {k}/{total}, {mode:?}"),
            );
        }
    }
}

#[test]
fn durable_appends_survive_power_loss_at_every_boundary_preallocated() {
    every_boundary(true.into());
}

/// The rotation that creates its segment inline (no spare ready, or
/// preparation off) at every boundary too.
#[test]
fn durable_appends_survive_power_loss_at_every_boundary_without_spares() {
    every_boundary(Variant {
        preallocate: true,
        prepare: false,
    });
}

#[test]
fn durable_appends_survive_power_loss_at_every_boundary_growing_files() {
    every_boundary(false.into());
}

#[test]
fn unsynced_buffered_records_may_vanish_but_never_corrupt() {
    let sim = SimStorage::new();
    let log = Log::open_with(Arc::new(sim.clone()), DIR, opts(true)).unwrap();
    log.append(b"durable").unwrap();
    log.append_with(0, b"buffered", Durability::Buffered)
        .unwrap();
    drop(log);
    let lost = Log::open_with(
        Arc::new(sim.crash(CrashMode::DropUnsynced)),
        DIR,
        opts(true),
    )
    .unwrap();
    assert_eq!(
        lost.next_lsn(),
        2,
        "the unsynced record is gone after power loss"
    );
    let kept = Log::open_with(Arc::new(sim.crash(CrashMode::KeepAll)), DIR, opts(true)).unwrap();
    assert_eq!(kept.next_lsn(), 3, "a process kill keeps the page cache");
}

/// The journal directory itself is a directory entry: the log must sync the
/// parent of every directory it creates, or a power loss can take the whole
/// journal (and every acknowledged record) away.
#[test]
fn a_new_journal_directory_survives_power_loss() {
    let sim = SimStorage::new();
    let dir = "/sim/fresh/nested/journal";
    let log = Log::open_with(Arc::new(sim.clone()), dir, opts(true)).unwrap();
    assert_eq!(log.append(b"first").unwrap(), 1);
    drop(log);
    for mode in [
        CrashMode::DropUnsynced,
        CrashMode::Random(1),
        CrashMode::Random(2),
    ] {
        let log = Log::open_with(Arc::new(sim.crash(mode)), dir, opts(true)).unwrap();
        assert_eq!(
            log.next_lsn(),
            2,
            "{mode:?}: the journal directory vanished"
        );
    }
}

/// Found by the `recover_dir` fuzz target (empty input): a directory the
/// caller made just before opening the log was never synced into its parent,
/// so a power loss took the journal away. The log now syncs the parent of
/// an existing journal directory at open too.
#[test]
fn a_caller_made_journal_directory_survives_power_loss() {
    use agentwal::log::storage::Storage;
    let sim = SimStorage::new();
    // An existing, durable parent; the caller makes one new directory in it.
    sim.put(std::path::Path::new("/sim/caller/README"), b"");
    let dir = std::path::Path::new("/sim/caller/journal");
    sim.create_dir_all(dir).unwrap();
    let log = Log::open_with(Arc::new(sim.clone()), dir, opts(false)).unwrap();
    assert_eq!(log.append(b"first").unwrap(), 1);
    drop(log);
    let log = Log::open_with(
        Arc::new(sim.crash(CrashMode::DropUnsynced)),
        dir,
        opts(false),
    )
    .unwrap();
    assert_eq!(log.next_lsn(), 2, "the journal directory vanished");
}

/// The `n`-th sync of the workload fails (the process poisons and exits),
/// a new process starts on the same boot (it reads the page cache, pages
/// the failed sync marked clean included), recovers and gets appends
/// acknowledged, then the power fails: everything the second process saw
/// at open or had acknowledged is there, at every failing sync.
#[test]
fn restart_on_the_same_boot_after_a_failed_sync_then_power_loss_keeps_what_the_restart_vouched_for()
{
    for preallocate in [true, false] {
        let dry = SimStorage::new();
        workload(&dry, preallocate);
        let syncs = dry.syncs();
        for n in 0..syncs {
            let sim = SimStorage::new();
            sim.inject(FaultOp::Sync, n, FaultKind::Eio);
            let first = workload(&sim, preallocate);
            let what = format!("sync {n}/{syncs} failed, preallocate {preallocate}");
            let restarted = sim.kill();
            let Ok(log) = Log::open_with(Arc::new(restarted.clone()), DIR, opts(preallocate))
            else {
                panic!("{what}: the restart could not open");
            };
            let seen = log.next_lsn() - 1;
            assert!(
                seen >= first.acked,
                "{what}: restart lost acknowledged data"
            );
            let mut attempted = first.attempted.clone();
            attempted.truncate(seen as usize);
            for i in 0..5 {
                let p = payload(1000 + i, 100);
                let lsn = log.append(&p).unwrap();
                assert_eq!(lsn as usize, attempted.len() + 1);
                attempted.push(p);
            }
            let acked = log.durable_lsn();
            drop(log);
            let out = Outcome {
                attempted,
                acked,
                snapshot: first.snapshot,
            };
            let mut modes = vec![CrashMode::DropUnsynced];
            modes.extend((0..4).map(CrashMode::Random));
            for mode in modes {
                check(
                    restarted.crash(mode),
                    &out,
                    preallocate,
                    &format!("{what}, then {mode:?}"),
                );
            }
        }
    }
}

/// The rotating append syncs neither the new header nor the new name; the
/// first group commit in the new segment does. Power lost before it can
/// leave the renamed segment with its header missing or torn and records
/// after it (kept, dropped or torn independently): that must reopen as a
/// torn creation or tail (never corruption) with every acknowledged record.
#[test]
fn power_lost_before_the_first_group_commit_in_a_new_segment_is_never_corruption() {
    let (sim, attempted) = {
        let sim = SimStorage::new();
        let log = Log::open_with(Arc::new(sim.clone()), DIR, opts(true)).unwrap();
        let mut attempted = Vec::new();
        // Three durable records fill most of the segment (a spare is
        // prepared at the half), the fourth rotates, buffered; two more go
        // into the new segment, never synced.
        for (i, (len, d)) in [
            (1000, Durability::Durable),
            (1000, Durability::Durable),
            (1000, Durability::Durable),
            (1000, Durability::Buffered),
            (100, Durability::Buffered),
            (200, Durability::Buffered),
        ]
        .into_iter()
        .enumerate()
        {
            let p = payload(i as u64 + 1, len);
            assert_eq!(log.append_with(1, &p, d).unwrap(), i as u64 + 1);
            attempted.push(p);
        }
        assert_eq!(log.segment_count(), 2, "the fourth record rotated");
        assert_eq!(log.durable_lsn(), 3);
        (sim, attempted)
    };
    let out = Outcome {
        attempted,
        acked: 3,
        snapshot: 0,
    };
    for seed in 0..300 {
        let mode = CrashMode::Random(seed);
        check(sim.crash(mode), &out, true, &format!("{mode:?}"));
        // A device that tears whole 4 KiB blocks can turn the header into
        // garbage: a typed error then, as for any header (recovery.md, "Torn
        // 4 KiB sectors"); never a panic, never wrong data.
        let mode = CrashMode::TornSectors(seed);
        let image = sim.crash(mode);
        match Log::open_with(Arc::new(image.clone()), DIR, opts(true)) {
            Ok(log) => {
                drop(log);
                check(image, &out, true, &format!("{mode:?}"));
            }
            Err(e) => assert!(
                matches!(e, Error::BadMagic { .. } | Error::Corruption { .. }),
                "{mode:?}: {e}"
            ),
        }
    }
}

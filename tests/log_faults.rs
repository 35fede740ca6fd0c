//! Guarantee: I/O failures get typed errors, never a panic and never a lie.
//! After a failed write or `fdatasync` every call fails with `Poisoned`
//! (no retried sync can pretend lost pages reached the disk), and a reopen
//! recovers everything acknowledged. A full disk is a typed `ENOSPC` error.
//! Oversized records are refused before anything is written, and a huge
//! length field on disk is reported, not allocated.

use std::path::Path;
use std::sync::Arc;

use agentwal::log::storage::sim::{CrashMode, FaultKind, FaultOp};
use agentwal::log::storage::Storage;
use agentwal::log::{Durability, Error, Log, LogOptions, LogReader, SimStorage};

const DIR: &str = "/sim/faults/journal";

fn opts(preallocate: bool) -> LogOptions {
    LogOptions {
        segment_size: 4096,
        max_record_bytes: 1024,
        preallocate,
        ..LogOptions::default()
    }
}

fn open(sim: &SimStorage, preallocate: bool) -> Log {
    Log::open_with(Arc::new(sim.clone()), DIR, opts(preallocate)).unwrap()
}

fn os_error(e: &Error) -> Option<i32> {
    match e {
        Error::Io { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

fn assert_poisoned(log: &Log) {
    let r = log.append(b"x");
    assert!(matches!(r, Err(Error::Poisoned { .. })), "append: {r:?}");
    let r = log.append_with(1, b"x", Durability::Buffered);
    assert!(
        matches!(r, Err(Error::Poisoned { .. })),
        "buffered append: {r:?}"
    );
    let r = log.append_batch(&[(1, b"a"), (2, b"b")], Durability::Durable);
    assert!(matches!(r, Err(Error::Poisoned { .. })), "batch: {r:?}");
    let r = log.sync();
    assert!(matches!(r, Err(Error::Poisoned { .. })), "sync: {r:?}");
    let r = log.write_snapshot(1, b"s");
    assert!(matches!(r, Err(Error::Poisoned { .. })), "snapshot: {r:?}");
    let r = log.truncate_before(1);
    assert!(matches!(r, Err(Error::Poisoned { .. })), "truncate: {r:?}");
    assert!(Error::Poisoned {
        cause: String::new()
    }
    .is_permanent());
}

/// Reopens after `crash` and checks LSNs 1..=acked carry `payload(lsn)`.
fn assert_recovers(sim: &SimStorage, mode: CrashMode, acked: u64, preallocate: bool) {
    let log = Log::open_with(Arc::new(sim.crash(mode)), DIR, opts(preallocate))
        .unwrap_or_else(|e| panic!("reopen after {mode:?}: {e}"));
    assert!(
        log.next_lsn() > acked,
        "{mode:?}: acknowledged records lost"
    );
    for r in log.read_from(1).unwrap() {
        let r = r.unwrap();
        assert_eq!(r.payload(), payload(r.lsn), "{mode:?}: LSN {}", r.lsn);
    }
}

fn payload(lsn: u64) -> Vec<u8> {
    format!("record {lsn}").into_bytes()
}

#[test]
fn failed_fdatasync_poisons_and_reopen_recovers_everything_acknowledged() {
    for preallocate in [true, false] {
        let sim = SimStorage::new();
        let log = open(&sim, preallocate);
        for lsn in 1..=3 {
            log.append(&payload(lsn)).unwrap();
        }
        sim.inject(FaultOp::Sync, 0, FaultKind::Eio);
        let e = log.append(&payload(4)).unwrap_err();
        assert_eq!(os_error(&e), Some(5), "the EIO itself is reported: {e}");
        assert!(e.to_string().contains("fdatasync"), "{e}");
        assert_poisoned(&log);
        assert!(matches!(log.clone().close(), Err(Error::Poisoned { .. })));
        drop(log);
        for mode in [
            CrashMode::KeepAll,
            CrashMode::DropUnsynced,
            CrashMode::Random(7),
        ] {
            assert_recovers(&sim, mode, 3, preallocate);
        }
        // Power loss after the failed sync: record 4 never reached the disk.
        let log = Log::open_with(
            Arc::new(sim.crash(CrashMode::DropUnsynced)),
            DIR,
            opts(preallocate),
        )
        .unwrap();
        assert_eq!(log.next_lsn(), 4);
    }
}

#[test]
fn failed_sync_is_never_retried_into_a_false_success() {
    let sim = SimStorage::new();
    let log = open(&sim, true);
    log.append(&payload(1)).unwrap();
    log.append_with(0, &payload(2), Durability::Buffered)
        .unwrap();
    sim.inject(FaultOp::Sync, 0, FaultKind::Eio);
    assert!(log.sync().is_err());
    // The next sync would succeed on the device, but the log must not try.
    let syncs = sim.syncs();
    assert!(matches!(log.sync(), Err(Error::Poisoned { .. })));
    assert_eq!(sim.syncs(), syncs, "no sync after a failed one");
    assert_eq!(
        log.durable_lsn(),
        1,
        "the failed record is not claimed durable"
    );
}

#[test]
fn failed_write_poisons() {
    let sim = SimStorage::new();
    let log = open(&sim, true);
    log.append(&payload(1)).unwrap();
    sim.inject(FaultOp::Write, 0, FaultKind::Eio);
    let e = log.append(&payload(2)).unwrap_err();
    assert_eq!(os_error(&e), Some(5), "{e}");
    assert_poisoned(&log);
    drop(log);
    assert_recovers(&sim, CrashMode::KeepAll, 1, true);
}

#[test]
fn failed_segment_creation_poisons_and_recovers() {
    // (spare segments prepared ahead, failing operation). Without spares
    // the rotation creates the segment inline (create, fill, sync); with
    // spares it installs one (header, rename), and a failure there poisons
    // like any failed write on the append path. The new name's directory
    // sync is the first group commit's in the new segment: its failure
    // poisons that append, which is not acknowledged.
    let cases = [
        (false, FaultOp::Create),
        (false, FaultOp::SyncDir),
        (true, FaultOp::Rename),
        (true, FaultOp::SyncDir),
    ];
    for (prepare, op) in cases {
        let sim = SimStorage::new();
        let o = LogOptions {
            prepare_segments: prepare,
            ..opts(true)
        };
        let log = Log::open_with(Arc::new(sim.clone()), DIR, o).unwrap();
        // With spares, the first faulted operation of its kind must be the
        // installation's: let the spare be prepared first.
        let mut acked = 0;
        if prepare {
            while log.disk_bytes() <= 4096 {
                acked = log.append(&payload(acked + 1)).unwrap();
            }
        }
        sim.inject(op, 0, FaultKind::Eio);
        let err = loop {
            match log.append(&payload(acked + 1)) {
                Ok(l) => acked = l,
                Err(e) => break e,
            }
            assert!(acked < 10_000, "{op:?}: the fault never fired");
        };
        assert!(matches!(err, Error::Io { .. }), "{op:?}: {err}");
        assert!(acked > 3, "{op:?}: the failure came at rotation");
        let segments = if op == FaultOp::SyncDir { 2 } else { 1 };
        assert_eq!(
            log.segment_count(),
            segments,
            "{op:?}: the failure came at rotation (or the first sync after it)"
        );
        assert_poisoned(&log);
        drop(log);
        for mode in [
            CrashMode::KeepAll,
            CrashMode::DropUnsynced,
            CrashMode::Random(3),
        ] {
            assert_recovers(&sim, mode, acked, true);
        }
    }
}

/// A failure while preparing a spare (here: its creation) is no failure of
/// any append: the rotation creates its segment inline.
#[test]
fn failed_spare_preparation_is_not_an_append_failure() {
    let sim = SimStorage::new();
    let log = open(&sim, true);
    sim.inject(FaultOp::Create, 0, FaultKind::Eio);
    for i in 1..=400u64 {
        assert_eq!(log.append(&payload(i)).unwrap(), i);
    }
    assert!(log.segment_count() >= 3, "the workload rotated");
    drop(log);
    assert_recovers(&sim, CrashMode::DropUnsynced, 400, true);
}

#[test]
fn full_disk_is_a_typed_error_and_reopen_recovers() {
    for preallocate in [true, false] {
        let sim = SimStorage::new();
        let log = open(&sim, preallocate);
        sim.set_capacity(Some(sim.live_bytes() + 3000));
        let mut acked = 0;
        let err = loop {
            match log.append(&[b'x'; 200]) {
                Ok(l) => acked = l,
                Err(e) => break e,
            }
            assert!(acked < 1000, "capacity never enforced");
        };
        assert_eq!(
            os_error(&err),
            Some(28),
            "ENOSPC is reported as such: {err}"
        );
        assert!(
            !err.is_permanent(),
            "an I/O error may succeed after space is freed"
        );
        assert!(matches!(log.append(b"y"), Err(Error::Poisoned { .. })));
        drop(log);
        sim.set_capacity(None);
        let log = Log::open_with(
            Arc::new(sim.crash(CrashMode::DropUnsynced)),
            DIR,
            opts(preallocate),
        )
        .unwrap();
        assert!(log.next_lsn() > acked);
        assert!(log
            .read_from(1)
            .unwrap()
            .all(|r| r.unwrap().payload() == [b'x'; 200]));
        assert!(log.append(b"space again").is_ok());
    }
}

#[test]
fn injected_enospc_on_write_is_typed() {
    let sim = SimStorage::new();
    let log = open(&sim, false);
    log.append(&payload(1)).unwrap();
    sim.inject(FaultOp::Write, 0, FaultKind::NoSpace);
    let e = log.append(&payload(2)).unwrap_err();
    assert_eq!(os_error(&e), Some(28), "{e}");
    drop(log);
    assert_recovers(&sim, CrashMode::Random(11), 1, false);
}

#[test]
fn record_too_large_writes_nothing_and_does_not_poison() {
    let sim = SimStorage::new();
    let log = open(&sim, true);
    assert_eq!(log.append(b"a").unwrap(), 1);
    let before = sim.mutations();
    let e = log.append(&vec![0u8; 1025]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::RecordTooLarge {
                size: 1025,
                limit: 1024
            }
        ),
        "{e}"
    );
    assert!(e.is_permanent(), "retrying the same record cannot succeed");
    // A batch with one oversized record writes none of them.
    let big = vec![1u8; 5000];
    let e = log
        .append_batch(&[(0, b"fits"), (0, &big)], Durability::Durable)
        .unwrap_err();
    assert!(matches!(e, Error::RecordTooLarge { size: 5000, .. }), "{e}");
    assert_eq!(sim.mutations(), before, "nothing was written");
    // Exactly at the limit is fine, and no LSN was consumed.
    assert_eq!(log.append(&vec![2u8; 1024]).unwrap(), 2);
}

#[test]
fn huge_length_field_is_reported_not_allocated() {
    let sim = SimStorage::new();
    let log = open(&sim, false);
    for lsn in 1..=4 {
        log.append(&payload(lsn)).unwrap();
    }
    let second = log.read_from(2).unwrap().next().unwrap().unwrap().offset();
    drop(log);
    let seg = sim
        .list_dir(Path::new(DIR))
        .unwrap()
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .unwrap();
    // LSN 2's length field claims 4 GiB; LSNs 3 and 4 prove 2 was durable.
    sim.poke(&seg, second + 4, &u32::MAX.to_le_bytes()).unwrap();
    match Log::open_with(Arc::new(sim.clone()), DIR, opts(false)) {
        Err(Error::Corruption {
            segment,
            offset,
            reason,
        }) => {
            assert_eq!((segment, offset), (seg.clone(), second), "{reason}");
            assert!(reason.contains("length"), "{reason}");
        }
        other => panic!("expected corruption, got {:?}", other.map(|_| ())),
    }
    let reader = LogReader::open_with(Arc::new(sim.clone()), DIR).unwrap();
    assert_eq!(reader.scan().records(), 1);
    assert_eq!(reader.iter_from(1).count(), 1);

    // A snapshot whose length field is huge.
    let sim = SimStorage::new();
    let log = open(&sim, false);
    log.append(b"one").unwrap();
    let snap = log.write_snapshot(1, b"state").unwrap();
    drop(log);
    sim.poke(&snap, 24, &u64::MAX.to_le_bytes()).unwrap();
    let e = Log::open_with(Arc::new(sim.clone()), DIR, opts(false)).unwrap_err();
    assert!(
        matches!(e, Error::Corruption { ref segment, offset: 24, .. } if *segment == snap),
        "{e}"
    );
}

#[test]
fn halted_storage_never_panics_and_every_error_is_typed() {
    // Power fails at each point of open + a few appends; every call returns.
    for k in 0..30 {
        let sim = SimStorage::new();
        sim.halt_after(k);
        if let Ok(log) = Log::open_with(Arc::new(sim.clone()), DIR, opts(true)) {
            for i in 0..8 {
                if let Err(e) = log.append(&payload(i)) {
                    assert!(
                        matches!(e, Error::Io { .. } | Error::Poisoned { .. }),
                        "{e}"
                    );
                }
            }
        }
    }
}

/// Found by the `crash_workload` fuzz target (seed 18441984287589072384):
/// a failed segment removal in `truncate_before` forgot the segment anyway,
/// so the next call removed a newer one and left a gap on disk that the
/// next open refused as corruption.
#[test]
fn failed_segment_removal_is_retried_oldest_first() {
    let sim = SimStorage::new();
    let log = open(&sim, false);
    for lsn in 1..=40 {
        log.append(&[lsn as u8; 300]).unwrap();
    }
    assert!(log.segment_count() >= 4);
    log.write_snapshot(30, b"state at 30").unwrap();
    sim.inject(FaultOp::Rename, 0, FaultKind::Eio);
    let e = log.truncate_before(31).unwrap_err();
    assert_eq!(os_error(&e), Some(5), "{e}");
    // The retry removes the oldest segment first, then the others.
    let removed = log.truncate_before(31).unwrap();
    drop(log);
    for mode in [
        CrashMode::KeepAll,
        CrashMode::DropUnsynced,
        CrashMode::Random(5),
    ] {
        let log = Log::open_with(Arc::new(sim.crash(mode)), DIR, opts(false))
            .unwrap_or_else(|e| panic!("{mode:?}: open after a failed removal: {e}"));
        assert_eq!(log.next_lsn(), 41);
        assert_eq!(log.read_from(31).unwrap().count(), 10);
    }
    assert_eq!(removed, 2, "both segments before the snapshot are gone");
}

/// Crafted files with LSNs at the end of the u64 range are bad input: a
/// typed error or a working log, never an overflow panic.
#[test]
fn lsns_at_the_end_of_the_range_never_panic() {
    use agentwal::log::testing::{encode_header, segment_name};
    for first in [u64::MAX, u64::MAX - 1] {
        let sim = SimStorage::new();
        sim.put(
            &Path::new(DIR).join(segment_name(first)),
            &encode_header(first, 7),
        );
        let r = Log::open_with(Arc::new(sim.clone()), DIR, opts(false));
        assert!(
            matches!(r, Err(Error::Corruption { offset: 16, .. })),
            "first LSN {first}: {:?}",
            r.map(|_| ())
        );
        if let Ok(r) = LogReader::open_with(Arc::new(sim.clone()), DIR) {
            assert!(r.iter_from(0).count() <= 2);
        }
    }
    let sim = SimStorage::new();
    let snap = agentwal::log::testing::encode_snapshot(u64::MAX, b"s");
    sim.put(
        &Path::new(DIR).join(format!("snap-{:020}.snap", u64::MAX)),
        &snap,
    );
    let r = Log::open_with(Arc::new(sim.clone()), DIR, opts(false));
    assert!(
        matches!(r, Err(Error::Corruption { .. })),
        "{:?}",
        r.map(|_| ())
    );
    assert!(LogReader::open_with(Arc::new(sim.clone()), DIR).is_err());
}

/// A journal of `n` durable records and a torn, never-acknowledged tail.
fn journal_with_torn_tail(n: u64, preallocate: bool) -> SimStorage {
    let sim = SimStorage::new();
    let log = open(&sim, preallocate);
    for lsn in 1..=n {
        assert_eq!(log.append(&payload(lsn)).unwrap(), lsn);
    }
    log.append_with(0, &[9u8; 600], Durability::Buffered)
        .unwrap();
    drop(log);
    let image = sim.crash(CrashMode::KeepAll);
    let mut segs: Vec<_> = image
        .list_dir(Path::new(DIR))
        .unwrap()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segs.sort();
    let last = segs.last().unwrap();
    let bytes = image.read(last).unwrap();
    // Tear the buffered record: garble a byte near its end.
    let end = bytes.iter().rposition(|&b| b != 0).unwrap();
    image.poke(last, end as u64 - 8, &[0xEE]).unwrap();
    image
}

#[test]
fn read_errors_during_recovery_are_typed_and_a_later_open_recovers() {
    for preallocate in [true, false] {
        let base = journal_with_torn_tail(40, preallocate);
        let mut failed_opens = 0;
        for nth in 0..40 {
            let sim = base.crash(CrashMode::KeepAll);
            sim.inject(FaultOp::Read, nth, FaultKind::Eio);
            match Log::open_with(Arc::new(sim.clone()), DIR, opts(preallocate)) {
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(os_error(&e), Some(5), "read {nth}: {e}");
                    failed_opens += 1;
                }
            }
            sim.clear_faults();
            match LogReader::open_with(Arc::new(sim.clone()), DIR) {
                Ok(_) => {}
                Err(e) => panic!("reader after the fault cleared: {e}"),
            }
            sim.inject(FaultOp::Read, 0, FaultKind::Eio);
            let r = LogReader::open_with(Arc::new(sim.clone()), DIR);
            assert!(
                matches!(&r, Err(e) if os_error(e) == Some(5)),
                "the reader reports a read error: {:?}",
                r.map(|_| ())
            );
            sim.clear_faults();
            assert_recovers(&sim, CrashMode::DropUnsynced, 40, preallocate);
        }
        assert!(failed_opens > 0, "some read failed an open");
    }
}

#[test]
fn short_reads_are_continued_by_every_reader() {
    for preallocate in [true, false] {
        let sim = journal_with_torn_tail(60, preallocate);
        sim.set_short_reads(Some(42));
        let reader = LogReader::open_with(Arc::new(sim.clone()), DIR).unwrap();
        assert_eq!(reader.scan().records(), 60);
        assert!(reader.scan().torn_tail.is_some());
        assert_eq!(reader.iter_from(1).filter(|r| r.is_ok()).count(), 60);
        let log = open(&sim, preallocate);
        assert!(log.open_report().torn_tail.is_some());
        let got: Vec<Vec<u8>> = log
            .read_from(1)
            .unwrap()
            .map(|r| r.unwrap().payload().to_vec())
            .collect();
        assert_eq!(got, (1..=60).map(payload).collect::<Vec<_>>());
        assert_eq!(log.append(&payload(61)).unwrap(), 61);
        drop(log);
        sim.set_short_reads(None);
        assert_recovers(&sim, CrashMode::DropUnsynced, 61, preallocate);
    }
}

#[test]
fn a_partial_write_before_enospc_poisons_and_recovery_cuts_it() {
    for preallocate in [true, false] {
        let sim = SimStorage::new();
        let log = open(&sim, preallocate);
        for lsn in 1..=3 {
            log.append(&payload(lsn)).unwrap();
        }
        sim.inject(FaultOp::Write, 0, FaultKind::PartialNoSpace);
        let big = vec![b'p'; 1024];
        let r = log.append(&big);
        assert_eq!(r.as_ref().err().and_then(os_error), Some(28), "{r:?}");
        assert_poisoned(&log);
        drop(log);
        // Half of the record reached the page cache.
        for mode in [
            CrashMode::KeepAll,
            CrashMode::DropUnsynced,
            CrashMode::Random(1),
            CrashMode::Random(2),
        ] {
            assert_recovers(&sim, mode, 3, preallocate);
        }
        let log = Log::open_with(Arc::new(sim.kill()), DIR, opts(preallocate)).unwrap();
        assert!(
            log.open_report().torn_tail.is_some(),
            "the partial record is a torn tail"
        );
        assert_eq!(log.next_lsn(), 4);
    }
}

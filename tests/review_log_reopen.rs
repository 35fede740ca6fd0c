//! Review findings in the log layer: reopening after a *process* kill (the
//! OS, its page cache and its unsynced directory entries survive; power may
//! be lost later).
//!
//! A process kill is modelled by dropping the `Log` and reopening on the same
//! [`SimStorage`]: writes that were never synced stay pending, exactly like
//! dirty pages that outlive the killed process. A power loss afterwards is
//! `crash(..)` on that storage.

use std::sync::Arc;

use agentwal::log::storage::sim::{CrashMode, FaultKind, FaultOp};
use agentwal::log::{Durability, Log, LogOptions, SimStorage};

const DIR: &str = "/review/log";

fn opts() -> LogOptions {
    LogOptions {
        segment_size: 4096,
        max_record_bytes: 1024,
        ..LogOptions::default()
    }
}

fn open(sim: &SimStorage) -> Log {
    Log::open_with(Arc::new(sim.clone()), DIR, opts()).unwrap()
}

fn payloads(log: &Log) -> Vec<Vec<u8>> {
    log.read_from(1)
        .unwrap()
        .map(|r| r.unwrap().payload().to_vec())
        .collect()
}

/// The process is killed after writing records it had not yet synced. The
/// next process finds them in the page cache; `sync()` must then really make
/// them durable before it reports them durable.
#[test]
fn sync_after_reopen_makes_records_of_the_killed_process_durable() {
    let sim = SimStorage::new();
    let log = open(&sim);
    log.append(b"durable").unwrap();
    log.append_with(0, b"buffered-1", Durability::Buffered)
        .unwrap();
    log.append_with(0, b"buffered-2", Durability::Buffered)
        .unwrap();
    drop(log); // process killed: no sync, page cache survives

    let log = open(&sim);
    assert_eq!(payloads(&log).len(), 3);
    let durable = log.sync().unwrap();
    assert_eq!(durable, 3, "sync reports every record durable");
    drop(log);

    let after = sim.crash(CrashMode::DropUnsynced);
    let log = open(&after);
    assert_eq!(
        payloads(&log),
        vec![
            b"durable".to_vec(),
            b"buffered-1".to_vec(),
            b"buffered-2".to_vec()
        ],
        "records reported durable by sync() were lost on power loss"
    );
}

/// The process is killed inside a segment rotation, after the new segment's
/// content was synced but before its directory entry was (the directory
/// sync of the first group commit into it fails). The next process
/// appends durably into that segment; a power loss must not take the
/// acknowledged record away with the never-synced file name.
#[test]
fn durable_append_into_a_segment_whose_creation_was_interrupted_survives() {
    let sim = SimStorage::new();
    let log = open(&sim);
    // The next directory sync (the first group commit's in the new
    // segment) fails: the process stops there, as if killed between the
    // segment's fdatasync and the directory's fsync.
    sim.inject(FaultOp::SyncDir, 0, FaultKind::Eio);
    let mut acked = Vec::new();
    for i in 0..100u32 {
        match log.append(&[i as u8; 200]) {
            Ok(_) => acked.push(vec![i as u8; 200]),
            Err(_) => break,
        }
    }
    assert!(acked.len() < 100, "the rotation failed");
    drop(log);
    sim.clear_faults();

    let log = open(&sim);
    // The failed append's record was written before its sync failed: the
    // restart may find it (a failed append's outcome is unknown, as after a
    // failed fdatasync); every acknowledged one is there, in order.
    let seen = payloads(&log);
    assert!(seen.len() <= acked.len() + 1, "phantom records");
    assert_eq!(seen[..acked.len()], acked[..]);
    let mut acked = seen;
    log.append(b"acknowledged after restart").unwrap();
    acked.push(b"acknowledged after restart".to_vec());
    drop(log);

    let after = sim.crash(CrashMode::DropUnsynced);
    let log = open(&after);
    let got = payloads(&log);
    assert_eq!(got.len(), acked.len(), "an acknowledged append was lost");
    assert!(got == acked, "records differ after the power loss");
}

/// After a process kill, records appended by the next process must not claim
/// (through their `synced_lsn`) that the killed process's unsynced records
/// were durable: a power loss that keeps a new record but drops an old one is
/// a torn tail, and recovery must open it.
#[test]
fn power_loss_after_a_kill_and_buffered_appends_never_fails_open() {
    for seed in 0..64u64 {
        let sim = SimStorage::new();
        let log = open(&sim);
        log.append(b"durable").unwrap();
        log.append_with(0, &[1u8; 600], Durability::Buffered)
            .unwrap();
        drop(log); // process killed

        let log = open(&sim);
        log.append_with(0, &[2u8; 600], Durability::Buffered)
            .unwrap();
        drop(log);

        let image = sim.crash(CrashMode::Random(seed));
        let log = Log::open_with(Arc::new(image), DIR, opts())
            .unwrap_or_else(|e| panic!("seed {seed}: recovery failed on a crash state: {e}"));
        let got = payloads(&log);
        assert_eq!(got[0], b"durable".to_vec(), "seed {seed}");
    }
}

/// `LogReader` (what `wal-inspect` uses) on a journal whose owner keeps
/// compacting: snapshot + truncation between the reader's snapshot read and
/// its scan must never be reported as corruption or as an error.
#[test]
fn reader_never_reports_corruption_while_the_owner_compacts() {
    use agentwal::log::LogReader;
    use std::sync::atomic::{AtomicBool, Ordering};
    let sim = SimStorage::new();
    let log = open(&sim);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut rounds = 0u32;
            while !stop.load(Ordering::Relaxed) && rounds < 3000 {
                for _ in 0..8 {
                    log.append_with(0, &[7u8; 300], Durability::Buffered)
                        .unwrap();
                }
                let last = log.sync().unwrap();
                log.write_snapshot(last, b"state").unwrap();
                log.truncate_before(last + 1).unwrap();
                rounds += 1;
            }
        });
        for i in 0..1500 {
            let r = LogReader::open_with(Arc::new(sim.clone()), DIR);
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    panic!("reader {i}: open failed on a live journal: {e}");
                }
            };
            if let Some(c) = &r.scan().corruption {
                stop.store(true, Ordering::Relaxed);
                panic!("reader {i}: false corruption on a live journal: {c:?}");
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
}

/// "After an fsync/fdatasync error the log refuses further writes": that
/// includes the syncs of compaction (snapshot file, directory after removing
/// segments), not only the segment's own.
#[test]
fn a_failed_sync_during_compaction_poisons_the_log() {
    use agentwal::log::Error;
    for (op, truncate) in [
        (FaultOp::Sync, false),
        (FaultOp::SyncDir, false),
        (FaultOp::SyncDir, true),
    ] {
        let sim = SimStorage::new();
        let log = open(&sim);
        for i in 0..40u32 {
            log.append(&[i as u8; 200]).unwrap();
        }
        let last = log.sync().unwrap();
        if truncate {
            log.write_snapshot(last, b"state").unwrap();
            sim.inject(op, 0, FaultKind::Eio);
            assert!(log.truncate_before(last + 1).is_err(), "{op:?}");
        } else {
            sim.inject(op, 0, FaultKind::Eio);
            assert!(log.write_snapshot(last, b"state").is_err(), "{op:?}");
        }
        assert!(
            matches!(log.append(b"after"), Err(Error::Poisoned { .. })),
            "{op:?} truncate={truncate}: the log accepted a write after a failed sync"
        );
        drop(log);
        // Reopening recovers from what is on disk.
        let log = open(&sim.crash(CrashMode::DropUnsynced));
        assert_eq!(log.next_lsn(), last + 1);
    }
}

//! Guarantee: many threads may append at once. LSNs are unique and
//! contiguous, every acknowledged record reads back after a reopen, group
//! commit shares `fdatasync`s between concurrent writers, and a read-only
//! `LogReader` may run while the owner appends (simulator and real disk).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use agentwal::log::storage::sim::CrashMode;
use agentwal::log::storage::Storage;
use agentwal::log::{FsStorage, Log, LogOptions, LogReader, SimStorage};

const DIR: &str = "/sim/concurrency/journal";

fn payload(thread: usize, i: usize) -> Vec<u8> {
    format!("thread {thread} record {i} ")
        .repeat(1 + i % 5)
        .into_bytes()
}

/// `threads` writers append `per` durable records each; returns lsn -> payload.
fn hammer(log: &Log, threads: usize, per: usize) -> BTreeMap<u64, Vec<u8>> {
    let got: Vec<Vec<(u64, Vec<u8>)>> = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let log = log.clone();
                s.spawn(move || {
                    (0..per)
                        .map(|i| {
                            let p = payload(t, i);
                            (log.append(&p).expect("durable append"), p)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut map = BTreeMap::new();
    for (lsn, p) in got.into_iter().flatten() {
        assert!(map.insert(lsn, p).is_none(), "LSN {lsn} handed out twice");
    }
    let n = (threads * per) as u64;
    assert_eq!(
        map.keys().copied().collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>(),
        "LSNs are 1..={n}"
    );
    map
}

fn check_all(log: &Log, expect: &BTreeMap<u64, Vec<u8>>) {
    let mut n = 0;
    for r in log.read_from(1).unwrap() {
        let r = r.unwrap();
        assert_eq!(
            Some(&r.payload().to_vec()),
            expect.get(&r.lsn),
            "LSN {}",
            r.lsn
        );
        n += 1;
    }
    assert_eq!(n, expect.len());
}

#[test]
fn concurrent_durable_appends_get_unique_contiguous_lsns_and_survive_power_loss() {
    let sim = SimStorage::new();
    let opts = LogOptions {
        segment_size: 8 << 10,
        max_record_bytes: 1024,
        ..LogOptions::default()
    };
    let log = Log::open_with(Arc::new(sim.clone()), DIR, opts.clone()).unwrap();
    let expect = hammer(&log, 8, 60);
    assert!(
        log.segment_count() > 3,
        "the run rotated segments under contention"
    );
    assert_eq!(log.durable_lsn(), 480);
    drop(log);
    // Only what was synced survives, and that is everything acknowledged.
    let log = Log::open_with(Arc::new(sim.crash(CrashMode::DropUnsynced)), DIR, opts).unwrap();
    check_all(&log, &expect);
}

#[test]
fn group_commit_shares_syncs_between_threads() {
    let sim = SimStorage::new();
    // A device where a sync takes time, so writers pile up behind the leader.
    sim.set_sync_delay(Some(Duration::from_millis(1)));
    let opts = LogOptions {
        segment_size: 1 << 20,
        max_record_bytes: 1024,
        ..LogOptions::default()
    };
    let log = Log::open_with(Arc::new(sim.clone()), DIR, opts).unwrap();
    let before = sim.syncs();
    let appends = 8 * 40;
    hammer(&log, 8, 40);
    let syncs = sim.syncs() - before;
    assert!(syncs > 0, "durable appends must sync");
    assert!(
        syncs < appends as u64,
        "{syncs} syncs for {appends} durable appends from 8 threads: group commit did not share any"
    );
}

#[test]
fn concurrent_appends_on_the_real_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_size: 64 << 10,
        max_record_bytes: 1024,
        ..LogOptions::default()
    };
    let log = Log::open(dir.path(), opts.clone()).unwrap();
    let expect = hammer(&log, 4, 40);
    log.close().unwrap();
    let log = Log::open(dir.path(), opts).unwrap();
    check_all(&log, &expect);
}

/// A reader thread re-opens and iterates while the owner appends: it never
/// fails, never sees a record with the wrong content, and sees LSNs in order.
fn reader_while_writing(storage: Arc<dyn Storage>, dir: &Path, opts: LogOptions) {
    let log = Log::open_with(storage.clone(), dir, opts).unwrap();
    let done = AtomicBool::new(false);
    let total = 150usize;
    thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut passes = 0u64;
            let mut max_seen = 0u64;
            loop {
                let finished = done.load(Ordering::Acquire);
                let r = LogReader::open_with(storage.clone(), dir)
                    .expect("read-only open while writing");
                assert!(
                    r.scan().corruption.is_none(),
                    "a concurrent append is never corruption: {:?}",
                    r.scan().corruption
                );
                let mut expect = 1;
                for rec in r.iter_from(1) {
                    let rec = rec.expect("reading a concurrently written log");
                    assert_eq!(rec.lsn, expect);
                    assert_eq!(rec.payload(), &payload(0, (rec.lsn - 1) as usize)[..]);
                    expect += 1;
                }
                max_seen = max_seen.max(expect - 1);
                passes += 1;
                if finished {
                    return (passes, max_seen);
                }
            }
        });
        for i in 0..total {
            assert_eq!(log.append(&payload(0, i)).unwrap(), i as u64 + 1);
        }
        done.store(true, Ordering::Release);
        let (passes, seen) = reader.join().unwrap();
        assert!(passes >= 1);
        assert_eq!(seen, total as u64, "the last pass sees every record");
    });
}

#[test]
fn read_only_reader_while_writer_appends_sim() {
    let opts = LogOptions {
        segment_size: 8 << 10,
        max_record_bytes: 1024,
        ..LogOptions::default()
    };
    reader_while_writing(Arc::new(SimStorage::new()), Path::new(DIR), opts);
}

#[test]
fn read_only_reader_while_writer_appends_real_fs() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_size: 8 << 10,
        max_record_bytes: 1024,
        ..LogOptions::default()
    };
    reader_while_writing(Arc::new(FsStorage), dir.path(), opts);
}

/// Options of the pending-buffer tests: one segment holds every record.
fn one_segment() -> LogOptions {
    LogOptions {
        segment_size: 64 << 10,
        max_record_bytes: 1024,
        ..LogOptions::default()
    }
}

/// Polls `cond` for up to 20 s (the test fails instead of hanging).
fn eventually(cond: impl Fn() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(1));
    }
    false
}

/// With syncs stalled, LSN 1 is durable, LSN 2's leader is stuck in its
/// `fdatasync`, and three followers (LSNs 3..=5) appended durably and wait
/// for the next sync: their records are pending, not yet written. Returns
/// the threads of LSNs 2..=5.
type Waiter = thread::JoinHandle<agentwal::log::Result<u64>>;
fn leader_stuck_and_three_pending(sim: &SimStorage, log: &Log) -> Vec<Waiter> {
    assert_eq!(log.append(b"acknowledged").unwrap(), 1);
    sim.stall_syncs(true);
    let spawn = |p: &'static [u8]| {
        let log = log.clone();
        thread::spawn(move || log.append(p))
    };
    let mut waiting = vec![spawn(b"leader")];
    assert!(eventually(|| sim.stalled_syncs() == 1), "the leader syncs");
    for p in [b"follower a", b"follower b", b"follower c"] {
        waiting.push(spawn(p));
    }
    assert!(eventually(|| log.next_lsn() == 6), "the followers appended");
    waiting
}

fn lsns(log: &Log) -> Vec<u64> {
    log.read_from(1).unwrap().map(|r| r.unwrap().lsn).collect()
}

#[test]
fn records_waiting_for_the_next_sync_are_readable_and_a_crash_keeps_everything_acknowledged() {
    let sim = SimStorage::new();
    let log = Log::open_with(Arc::new(sim.clone()), DIR, one_segment()).unwrap();
    let waiting = leader_stuck_and_three_pending(&sim, &log);
    // A kill or a power loss now: LSN 1 was acknowledged, nothing else.
    // Whatever else survives, recovery finds a clean prefix.
    for mode in [
        CrashMode::KeepAll,
        CrashMode::DropUnsynced,
        CrashMode::Random(7),
        CrashMode::Random(11),
    ] {
        let image = Log::open_with(Arc::new(sim.crash(mode)), DIR, one_segment()).unwrap();
        let got = lsns(&image);
        assert_eq!(got.first(), Some(&1), "{mode:?}: the acknowledged record");
        assert!(
            got.iter().copied().eq(1..=got.len() as u64),
            "{mode:?}: {got:?}"
        );
    }
    // A reader sees every record appended, pending ones included, while
    // the sync that will cover them has not even started.
    assert_eq!(lsns(&log), vec![1, 2, 3, 4, 5]);
    sim.stall_syncs(false);
    let mut acked: Vec<u64> = waiting
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    acked.sort_unstable();
    assert_eq!(acked, vec![2, 3, 4, 5]);
    drop(log);
    let log = Log::open_with(
        Arc::new(sim.crash(CrashMode::DropUnsynced)),
        DIR,
        one_segment(),
    )
    .unwrap();
    assert_eq!(lsns(&log), vec![1, 2, 3, 4, 5], "all acknowledged");
}

/// Who writes the pending records when the write fails.
#[derive(Debug, Clone, Copy)]
enum FailingWrite {
    /// The next group-commit leader, right before its sync.
    NextLeader,
    /// A buffered append, which writes them before its own record.
    BufferedAppend,
}

fn failed_write_of_pending_records_fails_every_waiter(by: FailingWrite) {
    use agentwal::log::storage::sim::{FaultKind, FaultOp};
    use agentwal::log::{Durability, Error};
    let sim = SimStorage::new();
    let log = Log::open_with(Arc::new(sim.clone()), DIR, one_segment()).unwrap();
    let mut waiting = leader_stuck_and_three_pending(&sim, &log);
    sim.inject(FaultOp::Write, 0, FaultKind::Eio);
    let mut errors = Vec::new();
    if let FailingWrite::BufferedAppend = by {
        errors.push(
            log.append_with(0, b"buffered", Durability::Buffered)
                .unwrap_err(),
        );
    }
    sim.stall_syncs(false);
    let leader = waiting.remove(0).join().unwrap();
    match by {
        FailingWrite::NextLeader => assert_eq!(leader.unwrap(), 2, "its sync went through"),
        // Poisoned before its sync returned: it says so (its record is
        // durable all the same, as the reopen shows).
        FailingWrite::BufferedAppend => {
            assert!(matches!(leader, Err(Error::Poisoned { .. })), "{leader:?}")
        }
    }
    errors.extend(waiting.into_iter().map(|t| t.join().unwrap().unwrap_err()));
    let io: Vec<&Error> = errors
        .iter()
        .filter(|e| !matches!(e, Error::Poisoned { .. }))
        .collect();
    assert!(
        matches!(io[..], [Error::Io { source, .. }] if source.raw_os_error() == Some(5)),
        "{by:?}: one caller gets the write's EIO, the others Poisoned: {errors:?}"
    );
    // No sync vouched for the records that were never written.
    assert_eq!(log.durable_lsn(), 2, "{by:?}");
    assert!(matches!(log.append(b"x"), Err(Error::Poisoned { .. })));
    drop(log);
    let log = Log::open_with(
        Arc::new(sim.crash(CrashMode::DropUnsynced)),
        DIR,
        one_segment(),
    )
    .unwrap();
    assert_eq!(lsns(&log), vec![1, 2], "{by:?}");
    assert_eq!(log.append(b"after").unwrap(), 3, "{by:?}: the log goes on");
}

#[test]
fn a_failed_write_of_pending_records_by_the_next_leader_fails_every_waiter() {
    failed_write_of_pending_records_fails_every_waiter(FailingWrite::NextLeader);
}

#[test]
fn a_failed_write_of_pending_records_by_a_buffered_append_fails_every_waiter() {
    failed_write_of_pending_records_fails_every_waiter(FailingWrite::BufferedAppend);
}

/// Holds the next write once armed (its caller keeps the writer lock
/// meanwhile), then fails it with EIO.
#[derive(Debug, Default)]
struct HeldState {
    armed: AtomicBool,
    holding: AtomicBool,
    release: AtomicBool,
}

#[derive(Debug, Clone, Default)]
struct HeldWrite(Arc<HeldState>);

impl agentwal::log::testing::StorageHooks for HeldWrite {
    fn open(
        &self,
        inner: &dyn Storage,
        path: &Path,
        mode: agentwal::log::storage::OpenMode,
    ) -> std::io::Result<Arc<dyn agentwal::log::storage::StorageFile>> {
        Ok(agentwal::log::testing::ForwardingFile::wrap(
            inner.open(path, mode)?,
            self.clone(),
        ))
    }
}

impl agentwal::log::testing::FileHooks for HeldWrite {
    fn write_at(
        &self,
        inner: &dyn agentwal::log::storage::StorageFile,
        offset: u64,
        buf: &[u8],
    ) -> std::io::Result<()> {
        let s = &self.0;
        if !s.armed.swap(false, Ordering::AcqRel) {
            return inner.write_at(offset, buf);
        }
        s.holding.store(true, Ordering::Release);
        assert!(eventually(|| s.release.load(Ordering::Acquire)));
        Err(std::io::Error::other("injected EIO"))
    }
}

/// The leader's write of the pending records fails while another caller
/// waits for the writer lock, having passed the poison check before it:
/// the log is poisoned before the lock is released, so that caller writes
/// nothing at the stale position (a hole before its LSN), and a reopen
/// finds exactly the records acknowledged before, no gap, no corruption.
/// (Before the fix the leader poisoned only after releasing the lock; the
/// window is microseconds, so this test guards the order rather than
/// reproducing every interleaving.)
#[test]
fn a_caller_queued_behind_a_failed_write_finds_the_log_poisoned() {
    let sim = SimStorage::new();
    let hooks = HeldWrite::default();
    let storage = Arc::new(agentwal::log::testing::ForwardingStorage::new(
        sim.clone(),
        hooks.clone(),
    ));
    let dir = Path::new("/j");
    let log = Log::open_with(storage, dir, one_segment()).unwrap();
    assert_eq!(log.append(b"acknowledged").unwrap(), 1);
    hooks.0.armed.store(true, Ordering::Release);
    let leader = {
        let log = log.clone();
        thread::spawn(move || log.append(b"lost with the failed write"))
    };
    assert!(eventually(|| hooks.0.holding.load(Ordering::Acquire)));
    let queued = {
        let log = log.clone();
        thread::spawn(move || {
            log.append_with(0, b"queued behind it", agentwal::log::Durability::Buffered)
        })
    };
    // Give the queued caller time to pass the poison check and block on the
    // writer lock (sequencing only: the assertions hold either way).
    thread::sleep(Duration::from_millis(200));
    hooks.0.release.store(true, Ordering::Release);
    assert!(
        leader.join().unwrap().is_err(),
        "the failed write fails its caller"
    );
    let queued = queued.join().unwrap();
    assert!(
        queued.is_err(),
        "the queued caller wrote behind a lost record: {queued:?}"
    );
    assert_eq!(log.durable_lsn(), 1);
    drop(log);
    let reopened =
        Log::open_with(Arc::new(sim.crash(CrashMode::KeepAll)), dir, one_segment()).unwrap();
    assert_eq!(lsns(&reopened), [1]);
}

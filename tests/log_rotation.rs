//! Guarantee: a rotation installs a segment prepared ahead of time (a
//! zero-filled, synced spare) instead of writing a segment of zeros under
//! the writer lock; a spare is never mistaken for a segment (recovery
//! removes leftovers, readers and `wal-inspect` ignore them); a failed
//! preparation (a full disk) never fails an append; the preparer thread
//! dies with the log and leaves no file behind.
//!
//! Crashes at every step of preparing and installing a spare are swept in
//! tests/log_power_loss.rs (the simulator prepares spares on the appending
//! thread, so a halt point lands on each step).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use agentwal::inspect::summary::summary;
use agentwal::inspect::verify::verify;
use agentwal::inspect::{Inspection, OpenOptions};
use agentwal::log::storage::sim::CrashMode;
use agentwal::log::testing::{ForwardingStorage, StorageHooks};
use agentwal::log::{Durability, Log, LogOptions, LogReader, SimStorage, Storage};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

const SEG: u64 = 4096 * 4;

fn opts() -> LogOptions {
    LogOptions {
        segment_size: SEG,
        max_record_bytes: 1024,
        ..LogOptions::default()
    }
}

fn payload(i: u64) -> Vec<u8> {
    format!("record {i} ")
        .repeat(1 + (i % 40) as usize)
        .into_bytes()
}

fn spares(storage: &dyn Storage, dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = storage
        .list_dir(dir)
        .unwrap()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "spare"))
        .collect();
    v.sort();
    v
}

/// Rotations counted by the `spare` label of `agentwal_segment_rotations_total`
/// while `f` runs on this thread: (installed a spare, created inline).
fn rotations(f: impl FnOnce()) -> (u64, u64) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, f);
    let (mut used, mut none) = (0, 0);
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if key.key().name() != "agentwal_segment_rotations_total" {
            continue;
        }
        let DebugValue::Counter(n) = value else {
            continue;
        };
        match key
            .key()
            .labels()
            .find(|l| l.key() == "spare")
            .map(|l| l.value().to_string())
        {
            Some(v) if v == "used" => used += n,
            _ => none += n,
        }
    }
    (used, none)
}

fn read_all(log: &Log) -> Vec<Vec<u8>> {
    log.read_from(1)
        .unwrap()
        .map(|r| r.unwrap().payload().to_vec())
        .collect()
}

#[test]
fn rotations_install_prepared_spares_and_the_log_reads_back() {
    let sim = SimStorage::new();
    let dir = Path::new("/j");
    let log = Log::open_with(Arc::new(sim.clone()), dir, opts()).unwrap();
    let (used, none) = rotations(|| {
        for i in 1..=600u64 {
            assert_eq!(log.append(&payload(i)).unwrap(), i);
        }
    });
    // Every rotation after the first half of a segment finds its spare.
    assert!(used >= 5, "spares installed: {used}, inline: {none}");
    assert_eq!(none, 0, "no rotation had to create its segment inline");
    // The spare for the next rotation counts in disk_bytes, not in segments.
    assert!(log.disk_bytes() <= (log.segment_count() as u64 + 1) * SEG);
    let want: Vec<Vec<u8>> = (1..=600).map(payload).collect();
    assert_eq!(read_all(&log), want);
    drop(log);
    assert!(spares(&sim, dir).is_empty(), "close removes the spare");
    let log = Log::open_with(Arc::new(sim.crash(CrashMode::DropUnsynced)), dir, opts()).unwrap();
    assert_eq!(read_all(&log), want);
}

#[test]
fn without_preparation_every_rotation_creates_its_segment_inline() {
    let sim = SimStorage::new();
    let o = LogOptions {
        prepare_segments: false,
        ..opts()
    };
    let log = Log::open_with(Arc::new(sim.clone()), "/j", o).unwrap();
    let (used, none) = rotations(|| {
        for i in 1..=300u64 {
            log.append(&payload(i)).unwrap();
        }
    });
    assert_eq!(used, 0);
    assert!(none >= 3);
    assert!(spares(&sim, Path::new("/j")).is_empty());
}

/// A spare that looks exactly like a segment (a copy of one, header and
/// records) must not be read as one, and neither may a half-written one.
#[test]
fn leftover_spares_are_removed_at_open_and_never_read() {
    let sim = SimStorage::new();
    let dir = Path::new("/j");
    {
        let log = Log::open_with(Arc::new(sim.clone()), dir, opts()).unwrap();
        for i in 1..=100u64 {
            log.append(&payload(i)).unwrap();
        }
    }
    let first = sim
        .list_dir(dir)
        .unwrap()
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .unwrap();
    let segment_copy = sim.read(&first).unwrap();
    sim.put(&dir.join("segment-7.spare"), &segment_copy);
    sim.put(&dir.join("segment-8.spare"), &vec![0u8; 1000]);
    sim.put(&dir.join("segment-9.spare"), b"garbage, not zeros");

    // Readers and wal-inspect: no segment more, no corruption, no leftover.
    let reader = LogReader::open_with(Arc::new(sim.clone()), dir).unwrap();
    assert!(reader.scan().corruption.is_none());
    assert!(reader.scan().torn_tail.is_none());
    let segments = reader.scan().segments.len() as u64;
    let insp = Inspection::open_with(Arc::new(sim.clone()), dir, OpenOptions::default()).unwrap();
    let v = verify(&insp).unwrap();
    assert_eq!(v.exit_code(), 0, "verify on a directory with spares: {v:?}");
    assert_eq!(v.segments, segments);
    let s = summary(&insp);
    assert_eq!(s.segments, segments);
    assert_eq!(s.records, 100);
    assert!(s.corruption.is_none() && s.torn_tail.is_none());
    assert!(
        s.leftovers.is_empty(),
        "a spare is not a leftover: {:?}",
        s.leftovers
    );
    drop(insp);

    let log = Log::open_with(Arc::new(sim.clone()), dir, opts()).unwrap();
    assert!(spares(&sim, dir).is_empty(), "open removes leftover spares");
    assert_eq!(read_all(&log), (1..=100).map(payload).collect::<Vec<_>>());
    for i in 101..=400u64 {
        assert_eq!(log.append(&payload(i)).unwrap(), i);
    }
    drop(log);
    let log = Log::open_with(Arc::new(sim.crash(CrashMode::DropUnsynced)), dir, opts()).unwrap();
    assert_eq!(read_all(&log), (1..=400).map(payload).collect::<Vec<_>>());
}

/// A leftover spare with the highest possible number (a stray or hostile
/// file name) is removed at open like any other; numbering new spares after
/// it must not overflow (a panic at open or in the append that asks for
/// the next spare).
#[test]
fn a_leftover_spare_numbered_u64_max_neither_panics_nor_stops_rotation() {
    for n in [u64::MAX, u64::MAX - 1] {
        let sim = SimStorage::new();
        let dir = Path::new("/j");
        sim.put(&dir.join(format!("segment-{n}.spare")), &[0u8; 16]);
        let log = Log::open_with(Arc::new(sim.clone()), dir, opts()).unwrap();
        for i in 1..=300u64 {
            assert_eq!(log.append(&payload(i)).unwrap(), i);
        }
        assert!(log.segment_count() > 1);
        drop(log);
        let log =
            Log::open_with(Arc::new(sim.crash(CrashMode::DropUnsynced)), dir, opts()).unwrap();
        assert_eq!(read_all(&log), (1..=300).map(payload).collect::<Vec<_>>());
    }
}

/// A full disk while preparing: the spare's partial file is removed, the
/// appends go on, and the rotation creates its segment inline once there
/// is room again.
#[test]
fn a_full_disk_while_preparing_never_fails_an_append() {
    let sim = SimStorage::new();
    let dir = Path::new("/j");
    let log = Log::open_with(Arc::new(sim.clone()), dir, opts()).unwrap();
    // Room for half a spare: its preparation runs out of space.
    sim.set_capacity(Some(sim.live_bytes() + SEG / 2));
    let record = [b'r'; 200];
    // 45 records of 200 bytes fill more than half the segment (the spare
    // is asked for) and less than all of it (no rotation yet).
    for i in 1..=45u64 {
        assert_eq!(
            log.append(&record)
                .expect("a failed preparation never fails an append"),
            i
        );
    }
    assert_eq!(log.segment_count(), 1);
    assert!(spares(&sim, dir).is_empty(), "no partial spare left behind");
    assert_eq!(log.disk_bytes(), SEG, "no spare counted");
    // Space is back (an operator freed some): the rotation goes inline.
    sim.set_capacity(None);
    let (used, none) = rotations(|| {
        for i in 46..=100u64 {
            assert_eq!(log.append(&record).unwrap(), i);
        }
    });
    assert_eq!(log.segment_count(), 2);
    assert_eq!(
        (used, none),
        (0, 1),
        "the rotation created its segment inline"
    );
    drop(log);
    let log = Log::open_with(Arc::new(sim.crash(CrashMode::DropUnsynced)), dir, opts()).unwrap();
    assert_eq!(log.next_lsn() - 1, 100);
}

/// On a real file system the spare is prepared by a thread; the thread is
/// joined and its spare removed when the last handle is dropped.
#[test]
fn the_background_preparer_dies_with_the_log_and_leaves_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let o = LogOptions {
        segment_size: 64 << 10,
        max_record_bytes: 1024,
        ..LogOptions::default()
    };
    let want: Vec<Vec<u8>> = (1..=3000).map(payload).collect();
    {
        let log = Log::open(&dir, o.clone()).unwrap();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let log = log.clone();
                let want = &want;
                s.spawn(move || {
                    for i in (t..3000).step_by(4) {
                        log.append_with(0, &want[i as usize], agentwal::log::Durability::Buffered)
                            .unwrap();
                    }
                });
            }
        });
        log.sync().unwrap();
        assert!(
            log.segment_count() >= 10,
            "rotated: {}",
            log.segment_count()
        );
        assert_eq!(read_all(&log).len(), 3000);
        // A reader and inspect while the owner runs (a spare may exist).
        let insp = Inspection::open(&dir).unwrap();
        assert_eq!(verify(&insp).unwrap().exit_code(), 0);
        assert!(summary(&insp).leftovers.is_empty());
    }
    assert_eq!(spare_threads(), 0, "the preparer thread was joined");
    assert!(
        spares(&agentwal::log::FsStorage, &dir).is_empty(),
        "no spare left"
    );
    let log = Log::open(&dir, o).unwrap();
    let mut got = read_all(&log);
    got.sort();
    let mut sorted = want.clone();
    sorted.sort();
    assert_eq!(got, sorted);
}

/// Threads of this process named like the preparer (Linux).
fn spare_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == "agentwal-spare")
        .count()
}

/// A simulator whose big writes (a spare's zero fill) are slow, and which
/// lets the log prepare spares on a thread of its own.
#[derive(Debug)]
struct SlowFill;

impl agentwal::log::testing::StorageHooks for SlowFill {
    fn open(
        &self,
        inner: &dyn Storage,
        p: &Path,
        m: agentwal::log::storage::OpenMode,
    ) -> std::io::Result<Arc<dyn agentwal::log::storage::StorageFile>> {
        Ok(agentwal::log::testing::ForwardingFile::wrap(
            inner.open(p, m)?,
            SlowFill,
        ))
    }
    fn allows_background_io(&self, _: &dyn Storage) -> bool {
        true
    }
}

impl agentwal::log::testing::FileHooks for SlowFill {
    fn write_at(
        &self,
        inner: &dyn agentwal::log::storage::StorageFile,
        offset: u64,
        buf: &[u8],
    ) -> std::io::Result<()> {
        if buf.len() >= 1 << 20 {
            std::thread::sleep(std::time::Duration::from_millis(30));
        }
        inner.write_at(offset, buf)
    }
}

/// Dropping the last handle while the thread is in the middle of a spare's
/// zero fill waits for the thread: when `drop` returns, no spare (partial or
/// whole) is left and nothing writes to the directory any more.
#[test]
fn dropping_the_log_mid_preparation_joins_the_thread_and_removes_the_spare() {
    let sim = SimStorage::new();
    let dir = Path::new("/j");
    let o = LogOptions {
        segment_size: 16 << 20,
        max_record_bytes: 1 << 20,
        ..LogOptions::default()
    };
    let log = Log::open_with(
        Arc::new(agentwal::log::testing::ForwardingStorage::new(
            sim.clone(),
            SlowFill,
        )),
        dir,
        o,
    )
    .unwrap();
    // Past half of the segment in one go: the thread starts the spare's
    // 16 x 1 MiB zero fill (about half a second at 30 ms a write).
    let big = vec![7u8; 1 << 20];
    for _ in 0..9 {
        log.append_with(0, &big, agentwal::log::Durability::Buffered)
            .unwrap();
    }
    // Wait (bounded) until the spare exists: the thread is filling it.
    for _ in 0..5000 {
        if !spares(&sim, dir).is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert_eq!(spares(&sim, dir).len(), 1, "the thread began a spare");
    drop(log);
    assert!(
        spares(&sim, dir).is_empty(),
        "drop waited for the thread and removed the spare"
    );
    let after = sim.mutations();
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(sim.mutations(), after, "nothing writes after drop returned");
}

/// The append that rotates into a spare syncs the new header (one
/// `fdatasync`: a named segment's header is always durable, so recovery
/// can call a damaged header with records after it corruption) and no
/// directory (the writers queued behind it used to wait for that too). The
/// next group commit makes the name durable with one directory sync; the
/// one after syncs the file only.
#[test]
fn the_rotating_append_syncs_only_the_header_and_the_next_group_commit_syncs_the_name_once() {
    let sim = SimStorage::new();
    let log = Log::open_with(Arc::new(sim.clone()), "/j", opts()).unwrap();
    let mut i = 0;
    let (used, none) = rotations(|| loop {
        i += 1;
        // Everything so far durable: the seal is covered, so any sync in
        // the rotating append would be the installation's.
        log.sync().unwrap();
        let (files, dirs) = (sim.syncs(), sim.dir_syncs());
        let segments = log.segment_count();
        log.append_with(0, &payload(i), Durability::Buffered)
            .unwrap();
        if log.segment_count() > segments {
            assert_eq!(
                sim.syncs() - files,
                1,
                "file syncs in the rotating append: the header's"
            );
            assert_eq!(
                sim.dir_syncs() - dirs,
                0,
                "directory syncs in the rotating append"
            );
            break;
        }
    });
    assert_eq!((used, none), (1, 0), "the rotation installed a spare");
    let (files, dirs) = (sim.syncs(), sim.dir_syncs());
    assert_eq!(log.sync().unwrap(), i);
    assert_eq!(
        (sim.syncs() - files, sim.dir_syncs() - dirs),
        (1, 1),
        "the first group commit in the new segment: one fdatasync, one directory sync"
    );
    let (files, dirs) = (sim.syncs(), sim.dir_syncs());
    log.append(&payload(i + 1)).unwrap();
    assert_eq!(
        (sim.syncs() - files, sim.dir_syncs() - dirs),
        (1, 0),
        "the name is durable: later group commits sync the file only"
    );
}

/// A durable append into a segment a rotation just installed (or created
/// inline) returns only once the segment's name is durable: a power loss
/// right after it returns keeps the record. Fails if the group-commit
/// leader publishes `durable_lsn` before the directory sync.
#[test]
fn a_durable_append_into_a_new_segment_survives_power_loss_right_after_it_returns() {
    for prepare_segments in [true, false] {
        let o = LogOptions {
            prepare_segments,
            ..opts()
        };
        let sim = SimStorage::new();
        let log = Log::open_with(Arc::new(sim.clone()), "/j", o.clone()).unwrap();
        let mut checked = 0;
        for i in 1..=300u64 {
            let segments = log.segment_count();
            assert_eq!(log.append(&payload(i)).unwrap(), i);
            if log.segment_count() == segments {
                continue;
            }
            checked += 1;
            let after = Log::open_with(
                Arc::new(sim.crash(CrashMode::DropUnsynced)),
                "/j",
                o.clone(),
            )
            .unwrap();
            assert_eq!(
                after.next_lsn(),
                i + 1,
                "prepare {prepare_segments}: LSN {i}, acknowledged in a new segment, lost"
            );
        }
        assert!(checked >= 3, "rotations checked: {checked}");
    }
}

/// What the hooks below saw and do; `fail` makes every directory sync
/// fail once set.
#[derive(Debug, Default)]
struct Background {
    /// Directory syncs made by the spare thread.
    by_thread: std::sync::atomic::AtomicU64,
    fail: std::sync::atomic::AtomicBool,
}

/// A simulator that allows background I/O, so the spare thread runs.
#[derive(Debug)]
struct Hooks(Arc<Background>);

impl StorageHooks for Hooks {
    fn allows_background_io(&self, _: &dyn Storage) -> bool {
        true
    }
    fn sync_dir(&self, inner: &dyn Storage, dir: &Path) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        if std::thread::current().name() == Some("agentwal-spare") {
            self.0.by_thread.fetch_add(1, Ordering::SeqCst);
        }
        if self.0.fail.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(5));
        }
        inner.sync_dir(dir)
    }
}

/// Appends buffered records until one rotates; returns its LSN.
fn rotate_buffered(log: &Log, from: u64) -> u64 {
    let mut i = from;
    loop {
        i += 1;
        let segments = log.segment_count();
        log.append_with(0, &payload(i), Durability::Buffered)
            .unwrap();
        if log.segment_count() > segments {
            return i;
        }
    }
}

/// Liveness bound for the background thread (not a timing assertion).
fn eventually(cond: impl Fn() -> bool) -> bool {
    for _ in 0..20_000 {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    false
}

/// With background I/O the spare thread makes a new segment's name durable
/// right after the rotation (ahead of the group commit that needs it); a
/// durable append into the segment survives a power loss either way.
#[test]
fn the_spare_thread_syncs_the_new_name_ahead_of_the_group_commit() {
    use std::sync::atomic::Ordering;
    let sim = SimStorage::new();
    let hooks = Arc::new(Background::default());
    let storage = ForwardingStorage::new(sim.clone(), Hooks(hooks.clone()));
    let log = Log::open_with(Arc::new(storage), "/j", opts()).unwrap();
    let mut lsn = 0;
    for _ in 0..3 {
        let before = hooks.by_thread.load(Ordering::SeqCst);
        lsn = rotate_buffered(&log, lsn);
        assert!(
            eventually(|| hooks.by_thread.load(Ordering::SeqCst) > before),
            "the spare thread synced the directory after the rotation"
        );
        lsn = log.append(&payload(lsn + 1)).unwrap();
        let after =
            Log::open_with(Arc::new(sim.crash(CrashMode::DropUnsynced)), "/j", opts()).unwrap();
        assert_eq!(after.next_lsn(), lsn + 1, "LSN {lsn} acknowledged, lost");
    }
}

/// A failed directory sync after a rotation (the spare thread's, then the
/// leader's) acknowledges nothing in the new segment: the durable append
/// fails, the log is poisoned, and a power loss keeps every acknowledged
/// record.
#[test]
fn a_failed_directory_sync_after_a_rotation_acknowledges_nothing_and_poisons() {
    use std::sync::atomic::Ordering;
    let sim = SimStorage::new();
    let hooks = Arc::new(Background::default());
    let storage = ForwardingStorage::new(sim.clone(), Hooks(hooks.clone()));
    let log = Log::open_with(Arc::new(storage), "/j", opts()).unwrap();
    let acked = log.append(&payload(1)).unwrap();
    hooks.fail.store(true, Ordering::SeqCst);
    let lsn = rotate_buffered(&log, acked);
    assert!(eventually(|| hooks.by_thread.load(Ordering::SeqCst) > 0));
    assert!(
        log.sync().is_err(),
        "nothing in the new segment is acknowledged"
    );
    assert!(log.append(&payload(lsn + 1)).is_err(), "poisoned");
    drop(log);
    let after = Log::open_with(Arc::new(sim.crash(CrashMode::DropUnsynced)), "/j", opts()).unwrap();
    assert!(after.next_lsn() > acked);
}

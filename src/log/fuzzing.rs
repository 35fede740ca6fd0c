//! Entry points shared by the fuzz targets (`fuzz/`), the corpus replay test
//! and the crash-consistency suite. Not part of the stable API.
//!
//! **Promises.** Every function here checks the log's guarantees on the
//! input it is given and *panics* (with a message naming the broken
//! guarantee) when one does not hold, so libFuzzer and `cargo test` report
//! it. On a correct log they never panic, never allocate from an untrusted
//! length and finish in time bounded by the input size.
//!
//! * [`decode_record`] — record and header decoding of arbitrary bytes;
//! * [`recover_dir`] — a directory image built from the input, opened by the
//!   owner ([`Log::open_with`]) and read-only ([`LogReader::open_with`]);
//! * [`crash_case`] — a random workload (appends, batches, syncs, rotations,
//!   snapshots, truncation) on [`SimStorage`] that loses power, or hits an
//!   injected I/O error, at random points and checks every recovery against
//!   an in-memory model.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::record::{decode_at, Codec, Decoded, Lsn, ALIGN};
use super::segment::{decode_header, segment_name};
use super::snapshot;
use super::storage::sim::{CrashMode, FaultKind, FaultOp, SimRng};
use super::storage::{FileBytes, SimStorage, Storage};
use super::{Durability, Error, Log, LogOptions, LogReader, RecoveryMode};

/// Largest input the byte-level entry points look at (keeps runs fast).
pub const MAX_INPUT: usize = 1 << 20;

/// Decodes `data` as a segment header, as records at every aligned offset
/// and as a snapshot file. Checks that every valid record lies inside the
/// input and that decoding never panics.
pub fn decode_record(data: &[u8]) {
    let data = &data[..data.len().min(MAX_INPUT)];
    let path = Path::new("fuzz.wal");
    let _ = decode_header(path, data);
    let _ = snapshot::decode(Path::new("fuzz.snap"), data);
    let bytes = FileBytes::new(data.to_vec());
    let salt = data
        .get(12..16)
        .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    for codec in [Codec::V1, Codec::V2 { salt }] {
        decode_records(&bytes, codec);
    }
}

fn decode_records(bytes: &FileBytes, codec: Codec) {
    let data: &[u8] = bytes;
    let mut pos = 0;
    while pos <= data.len() {
        match decode_at(bytes, pos, codec) {
            Decoded::Valid { record, next } => {
                let start = record.offset() as usize;
                assert_eq!(start, pos, "record offset must be where it was decoded");
                assert!(
                    next > pos && next % ALIGN == pos % ALIGN,
                    "next record offset {next} after {pos}"
                );
                assert!(
                    record.payload().len() <= data.len(),
                    "payload larger than the input"
                );
                assert!(
                    record.synced_lsn < record.lsn,
                    "a valid record has synced_lsn < lsn"
                );
            }
            Decoded::Zero | Decoded::Invalid(_) => {}
        }
        pos += ALIGN;
    }
}

/// Directory used inside [`SimStorage`] by the fuzzing entry points.
pub const FUZZ_DIR: &str = "/agentwal-fuzz/journal";

/// Encodes a directory image in the input format of [`recover_dir`]:
/// one options byte, then for every file a tag byte, a name LSN (u64 LE),
/// a length (u32 LE) and the bytes. Used to build seed corpora from real
/// journals.
pub fn encode_dir_image(options: u8, files: &[(u8, Lsn, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![options];
    for (tag, lsn, data) in files {
        out.push(*tag);
        out.extend_from_slice(&lsn.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
    }
    out
}

/// Reads a journal directory of `storage` back into [`encode_dir_image`]
/// form (segments tag 0, snapshots tag 5, anything else skipped).
pub fn dir_image(storage: &SimStorage, dir: &Path, options: u8) -> Vec<u8> {
    let mut files = Vec::new();
    let mut names = storage.list_dir(dir).unwrap_or_default();
    names.sort();
    for p in names {
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(data) = storage.read(&p) else {
            continue;
        };
        if let Some(stem) = name.strip_suffix(".wal") {
            files.push((0, stem.parse().unwrap_or(0), data));
        } else if let Some(stem) = name
            .strip_prefix("snap-")
            .and_then(|s| s.strip_suffix(".snap"))
        {
            files.push((5, stem.parse().unwrap_or(0), data));
        }
    }
    encode_dir_image(options, &files)
}

fn file_name_for(tag: u8, lsn: Lsn, data: &[u8]) -> String {
    match tag % 8 {
        0..=4 => segment_name(lsn),
        5 => format!("snap-{lsn:020}.snap"),
        6 => [
            "LOCK",
            "cut-00000000000000000001-32.bin",
            "snap-1.tmp",
            "x.wal.dropped",
        ][(lsn % 4) as usize]
            .into(),
        _ => {
            // A segment named after the first LSN in its own header.
            let first = data
                .get(16..24)
                .map_or(lsn, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
            segment_name(first)
        }
    }
}

/// Builds the directory image described by `data` (see
/// [`encode_dir_image`]) in a fresh [`SimStorage`]. Returns the storage and
/// the options byte.
pub fn build_dir(data: &[u8]) -> (SimStorage, u8) {
    let sim = SimStorage::new();
    let dir = Path::new(FUZZ_DIR);
    sim.create_dir_all(dir).expect("sim mkdir");
    // An existing journal directory is durable (as after any earlier run).
    for d in dir.ancestors().skip(1) {
        sim.sync_dir(d).expect("sim sync");
    }
    let Some((&options, mut rest)) = data.split_first() else {
        return (sim, 0);
    };
    let mut total = 0usize;
    for _ in 0..16 {
        if rest.len() < 13 || total >= MAX_INPUT {
            break;
        }
        let tag = rest[0];
        let lsn = u64::from_le_bytes(rest[1..9].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(rest[9..13].try_into().expect("4 bytes")) as usize;
        rest = &rest[13..];
        // Never trust the length field: take at most what is there.
        let len = len.min(rest.len()).min(MAX_INPUT - total);
        let (body, tail) = rest.split_at(len);
        rest = tail;
        total += len;
        sim.put(&dir.join(file_name_for(tag, lsn, body)), body);
    }
    (sim, options)
}

fn fuzz_options(options: u8) -> LogOptions {
    LogOptions {
        segment_size: 4096,
        max_record_bytes: 512,
        preallocate: options & 1 == 1,
        recovery: if options & 2 == 2 {
            RecoveryMode::Lossy
        } else {
            RecoveryMode::Strict
        },
        prepare_segments: options & 4 == 4,
    }
}

/// Reads every record of an open log, checking LSNs are contiguous and
/// that nothing fails after a successful open. Returns `(lsn, kind, payload)`.
fn read_all(log: &Log) -> Vec<(Lsn, u8, Vec<u8>)> {
    let from = log.snapshot_lsn() + 1;
    let mut out = Vec::new();
    let mut expect: Option<Lsn> = None;
    for r in log.read_from(from).expect("read_from") {
        let r = r.unwrap_or_else(|e| panic!("reading a log that opened cleanly failed: {e}"));
        if let Some(x) = expect {
            assert_eq!(r.lsn, x, "LSNs must be contiguous");
        }
        expect = Some(r.lsn + 1);
        out.push((r.lsn, r.kind, r.payload().to_vec()));
    }
    if let Some(x) = expect {
        assert_eq!(
            x,
            log.next_lsn(),
            "reading must reach the last recovered record"
        );
    }
    out
}

/// Opens the directory image described by `data` (see [`encode_dir_image`])
/// read-only and as the owner. Any outcome but a panic is acceptable for
/// the open itself, as long as errors are the typed ones a damaged directory
/// deserves; when the owner's open succeeds, every record must read back
/// contiguously, and a new durable append must survive a power loss.
///
/// Options bits: 1 preallocate, 2 lossy, 4 short reads throughout, 8 a read
/// error (`EIO`) at the `options >> 4`-th read of the owner's open, which
/// must then fail with a typed I/O error or succeed; the directory is then
/// opened again without the fault.
pub fn recover_dir(data: &[u8]) {
    let (sim, options) = build_dir(data);
    let storage: Arc<dyn Storage> = Arc::new(sim.clone());
    let dir = Path::new(FUZZ_DIR);
    if options & 4 == 4 {
        sim.set_short_reads(Some(u64::from(options)));
    }

    if let Ok(reader) = LogReader::open_with(storage.clone(), dir) {
        let scan = reader.scan();
        let mut n = 0u64;
        for r in reader.iter_from(0) {
            match r {
                Ok(_) => n += 1,
                Err(_) => break,
            }
        }
        assert!(
            n <= scan.records(),
            "reader returned more records than the scan found"
        );
    }

    let opts = fuzz_options(options);
    if options & 8 == 8 {
        sim.inject(FaultOp::Read, u64::from(options >> 4), FaultKind::Eio);
        match Log::open_with(storage.clone(), dir, opts.clone()) {
            Ok(_)
            | Err(
                Error::Io { .. }
                | Error::Corruption { .. }
                | Error::BadMagic { .. }
                | Error::UnsupportedVersion { .. },
            ) => {}
            Err(e) => panic!("open with a read error failed with an unexpected error: {e}"),
        }
        sim.clear_faults();
    }
    let log = match Log::open_with(storage, dir, opts.clone()) {
        Ok(log) => log,
        Err(
            Error::Corruption { .. } | Error::BadMagic { .. } | Error::UnsupportedVersion { .. },
        ) => return,
        Err(e) => panic!("open failed with an unexpected error: {e}"),
    };
    let before = read_all(&log);
    let next = log.next_lsn();
    let lsn = log
        .append_with(7, b"fuzz-append", Durability::Durable)
        .unwrap_or_else(|e| panic!("append after a clean open failed: {e}"));
    assert_eq!(lsn, next, "append must take the next LSN");
    drop(log);
    let after = sim.crash(CrashMode::DropUnsynced);
    let strict = LogOptions {
        recovery: RecoveryMode::Strict,
        ..opts
    };
    let log = Log::open_with(Arc::new(after), dir, strict)
        .unwrap_or_else(|e| panic!("reopen after a durable append failed: {e}"));
    let again = read_all(&log);
    assert_eq!(
        again.len(),
        before.len() + 1,
        "records before: {}, after: {}",
        before.len(),
        again.len()
    );
    assert_eq!(
        &again[..before.len()],
        &before[..],
        "recovered records changed"
    );
    assert_eq!(
        again.last().map(|r| (r.0, r.1, &r.2[..])),
        Some((lsn, 7, &b"fuzz-append"[..]))
    );
}

/// Runs [`crash_case`] with the seed in the first 8 bytes of `data` and up
/// to `data[8] % 16 + 1` rounds; panics with the seed on a broken invariant.
pub fn crash_workload(data: &[u8]) {
    let mut seed = [0u8; 8];
    let n = data.len().min(8);
    seed[..n].copy_from_slice(&data[..n]);
    let seed = u64::from_le_bytes(seed);
    let rounds = data.get(8).map_or(8, |r| u64::from(r % 16) + 1);
    if let Err(msg) = crash_case(seed, rounds) {
        panic!("{msg} (rounds {rounds})");
    }
    // An odd tenth byte: also a power loss that tears whole 4 KiB blocks.
    if data.get(9).is_some_and(|b| b % 2 == 1) {
        if let Err(msg) = torn_sector_case(seed) {
            panic!("torn sectors: {msg}");
        }
    }
}

/// Seed inputs for the fuzz targets, built from real journals: `(target,
/// bytes)` pairs for `decode_record`, `recover_dir` and `crash_workload`.
pub fn seed_corpus() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    for (preallocate, torn, snapshot) in [
        (false, false, false),
        (false, true, true),
        (true, false, true),
        (true, true, false),
    ] {
        let sim = SimStorage::new();
        let dir = Path::new(FUZZ_DIR);
        let opts = fuzz_options(u8::from(preallocate));
        let log =
            Log::open_with(Arc::new(sim.clone()), dir, opts).expect("open a fresh sim journal");
        for i in 0..24u64 {
            let len = [0usize, 3, 40, 200, 511][(i % 5) as usize];
            let payload: Vec<u8> = (0..len).map(|j| (i as usize * 17 + j) as u8).collect();
            let d = if i % 3 == 2 {
                Durability::Buffered
            } else {
                Durability::Durable
            };
            log.append_with((i % 4) as u8, &payload, d)
                .expect("append to a sim journal");
        }
        if snapshot {
            log.write_snapshot(10, b"seed snapshot").expect("snapshot");
            log.truncate_before(11).expect("truncate");
        }
        if torn {
            log.append_with(
                1,
                b"never synced: torn by the crash below",
                Durability::Buffered,
            )
            .expect("append");
        }
        drop(log);
        let image = if torn {
            sim.crash(CrashMode::Random(7))
        } else {
            sim
        };
        let options = u8::from(preallocate);
        out.push(("recover_dir", dir_image(&image, dir, options)));
        out.push(("recover_dir", dir_image(&image, dir, options | 2)));
        let mut names = image.list_dir(dir).unwrap_or_default();
        names.sort();
        for p in names {
            if let Some(bytes) = image.read(&p) {
                // The file start (header + first records) and windows of records.
                for start in [0usize, 32, 1000, 3000] {
                    if start < bytes.len() {
                        let end = bytes.len().min(start + 2048);
                        out.push(("decode_record", bytes[start..end].to_vec()));
                    }
                }
            }
        }
    }
    for seed in [0u64, 1, 2, 3, 42, 1234, u64::MAX] {
        let mut v = seed.to_le_bytes().to_vec();
        v.push((seed % 16) as u8);
        out.push(("crash_workload", v));
    }
    out
}

// ---------------------------------------------------------------------------
// Random power-loss workloads.
// ---------------------------------------------------------------------------

/// Directory used by [`crash_case`].
pub const CRASH_DIR: &str = "/agentwal-sim/journal";

/// What one [`crash_case`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct CaseStats {
    /// Crash images recovered and checked.
    pub crash_states: u64,
    /// Injected I/O errors observed.
    pub faults: u64,
    /// Successful appends (records).
    pub appended: u64,
}

/// The in-memory model of what the log must hold.
#[derive(Debug, Default)]
pub struct Model {
    /// Every record that may exist, by LSN (index `lsn - 1`): acknowledged
    /// records plus ones whose append failed or was not yet synced.
    records: Vec<(u8, Vec<u8>)>,
    /// Highest LSN acknowledged durable (must survive anything).
    acked: Lsn,
    /// Highest snapshot LSN acknowledged durable.
    snap_acked: Lsn,
}

impl Model {
    fn next(&self) -> Lsn {
        self.records.len() as Lsn + 1
    }
}

fn snap_data(lsn: Lsn) -> Vec<u8> {
    format!("snapshot covering {lsn}").into_bytes()
}

fn payload(rng: &mut SimRng, lsn: Lsn, max: usize) -> Vec<u8> {
    let len = match rng.below(10) {
        0 => 0,
        1..=6 => rng.below(64) as usize,
        7 | 8 => rng.below(600) as usize,
        _ => rng.below(max as u64 + 1) as usize,
    };
    let salt = rng.next_u64();
    (0..len)
        .map(|i| {
            (salt
                .wrapping_add(lsn.wrapping_mul(31))
                .wrapping_add(i as u64 * 7)
                >> 3) as u8
        })
        .collect()
}

/// Checks a freshly recovered log against the model and brings the model
/// in line with what recovery kept. Returns a description of the first
/// broken invariant.
fn verify(log: &Log, model: &mut Model) -> Result<(), String> {
    let snap = log
        .latest_snapshot()
        .map_err(|e| format!("latest_snapshot: {e}"))?;
    let s = snap.as_ref().map_or(0, |s| s.lsn);
    if s < model.snap_acked {
        return Err(format!(
            "acknowledged snapshot {} lost (found {s})",
            model.snap_acked
        ));
    }
    if let Some(snap) = &snap {
        if snap.data != snap_data(s) {
            return Err(format!("snapshot {s} has wrong content"));
        }
    }
    if log.snapshot_lsn() != s {
        return Err(format!(
            "snapshot_lsn {} but newest snapshot is {s}",
            log.snapshot_lsn()
        ));
    }
    let last = log.next_lsn() - 1;
    if last < model.acked {
        return Err(format!(
            "acknowledged LSN {} lost: log ends at {last}",
            model.acked
        ));
    }
    if last < s {
        return Err(format!("log ends at {last}, before its snapshot {s}"));
    }
    if last > model.records.len() as Lsn {
        return Err(format!(
            "phantom records: log ends at {last}, only {} appended",
            model.records.len()
        ));
    }
    if log.durable_lsn() != last {
        return Err(format!(
            "durable_lsn {} after open, log ends at {last}",
            log.durable_lsn()
        ));
    }
    let mut expect = s + 1;
    let iter = log
        .read_from(s + 1)
        .map_err(|e| format!("read_from: {e}"))?;
    for r in iter {
        let r = r.map_err(|e| format!("reading LSN {expect}: {e}"))?;
        if r.lsn != expect {
            return Err(format!("expected LSN {expect}, read {}", r.lsn));
        }
        let (kind, data) = &model.records[(r.lsn - 1) as usize];
        if r.kind != *kind || r.payload() != &data[..] {
            return Err(format!("record {} differs from what was appended", r.lsn));
        }
        expect += 1;
    }
    if expect != last + 1 {
        return Err(format!("read stopped at LSN {expect}, log ends at {last}"));
    }
    // A read-only reader must agree and see neither damage nor a torn tail.
    let reader = LogReader::open_with(log.storage().clone(), log.dir())
        .map_err(|e| format!("LogReader: {e}"))?;
    let scan = reader.scan();
    if scan.corruption.is_some() || scan.torn_tail.is_some() {
        return Err(format!(
            "scan after recovery still finds damage: {:?} {:?}",
            scan.corruption, scan.torn_tail
        ));
    }
    let n = reader.iter_from(s + 1).filter(|r| r.is_ok()).count() as u64;
    if n != last - s {
        return Err(format!(
            "reader sees {n} records after the snapshot, log has {}",
            last - s
        ));
    }
    model.records.truncate(last as usize);
    // Everything recovery kept is on disk now.
    model.acked = last;
    model.snap_acked = s;
    Ok(())
}

/// Checks that an error returned while a fault is pending is one the log
/// may return: an I/O error (the injected one or the halt), or `Poisoned`.
fn expected_error(e: &Error) -> Result<(), String> {
    match e {
        Error::Io { .. } | Error::Poisoned { .. } => Ok(()),
        other => Err(format!("unexpected error kind: {other}")),
    }
}

/// Runs one random workload from `seed`: several rounds of operations, each
/// ended by a power loss (or an injected I/O error followed by a restart),
/// recovery, and a full check against the model; at most `max_rounds`
/// rounds (each is one crash state, or two when power fails during
/// recovery too). Deterministic: the same seed replays the same
/// case.
pub fn crash_case(seed: u64, max_rounds: u64) -> Result<CaseStats, String> {
    let mut rng = SimRng::new(seed);
    // The faults added with the widened fault model draw from their own
    // generator, so the cases the original draws describe (and the corpus
    // regressions built on them) replay unchanged when none of them fires.
    let mut extra = SimRng::new(seed ^ 0x0EDC_BA98_7654_3210);
    let opts = LogOptions {
        segment_size: 4096,
        max_record_bytes: 1024,
        preallocate: rng.below(4) != 0,
        recovery: RecoveryMode::Strict,
        // From the seed, not a draw: existing corpus cases replay the same
        // operations, now with and without spare segments.
        prepare_segments: seed & (1 << 7) == 0,
    };
    let dir = PathBuf::from(CRASH_DIR);
    let mut sim = SimStorage::new();
    let mut model = Model::default();
    let mut stats = CaseStats::default();
    let rounds = 1 + rng.below(max_rounds.max(1));
    for round in 0..rounds {
        let ctx = |msg: String| format!("seed {seed} round {round}: {msg}");
        // Sometimes the power fails again during recovery itself.
        let halt_in_open = rng.below(6) == 0;
        if halt_in_open {
            sim.halt_after(rng.below(6));
        }
        // Short reads for the whole round, like a real `pread` may return.
        let short_reads = extra.below(4) == 0;
        sim.set_short_reads(short_reads.then(|| extra.next_u64()));
        // A reader holding the live segment while the owner recovers it.
        let held = if extra.below(3) == 0 {
            hold_reader(&sim, &dir)
        } else {
            None
        };
        // A read error during recovery: a typed error, then a clean retry.
        let read_fault = !halt_in_open && extra.below(8) == 0;
        if read_fault {
            sim.inject(FaultOp::Read, extra.below(6), FaultKind::Eio);
        }
        let log = match Log::open_with(Arc::new(sim.clone()), &dir, opts.clone()) {
            Ok(log) => log,
            Err(e @ Error::Io { .. }) if read_fault => {
                let _ = e;
                sim.clear_faults();
                Log::open_with(Arc::new(sim.clone()), &dir, opts.clone())
                    .map_err(|e| ctx(format!("open after a read error failed: {e}")))?
            }
            Err(e) if halt_in_open => {
                expected_error(&e).map_err(ctx)?;
                sim = sim.crash(CrashMode::Random(rng.next_u64()));
                stats.crash_states += 1;
                Log::open_with(Arc::new(sim.clone()), &dir, opts.clone())
                    .map_err(|e| ctx(format!("open after a crash during recovery failed: {e}")))?
            }
            Err(e) => return Err(ctx(format!("open failed on a crash state: {e}"))),
        };
        sim.clear_faults();
        if let Some(iter) = held {
            check_held_reader(iter, &model).map_err(ctx)?;
        }
        verify(&log, &mut model).map_err(ctx)?;

        // Arm this round's failure: a power cut or an injected I/O error.
        let fault = rng.below(5) == 0;
        if fault {
            let op = [
                FaultOp::Write,
                FaultOp::Sync,
                FaultOp::SyncDir,
                FaultOp::Create,
                FaultOp::Rename,
            ][rng.below(5) as usize];
            let kind = if rng.below(2) == 0 {
                FaultKind::Eio
            } else if extra.below(2) == 0 {
                // Part of the write went in before the disk filled up.
                FaultKind::PartialNoSpace
            } else {
                FaultKind::NoSpace
            };
            sim.inject(op, rng.below(8), kind);
        } else if rng.below(10) == 0 {
            // A full disk: a little room left.
            sim.set_capacity(Some(sim.live_bytes() + rng.below(3 * opts.segment_size)));
        }
        sim.halt_after(rng.below(40));

        let ops = 1 + rng.below(30);
        let mut failed = false;
        for _ in 0..ops {
            let r = step(&log, &mut rng, &mut model, &opts, failed);
            match r {
                Ok(()) => {}
                Err(Step::Failed(e, poisons)) => {
                    if matches!(e, Error::Io { ref source, .. } if source.raw_os_error().is_some())
                    {
                        stats.faults += 1;
                    }
                    expected_error(&e).map_err(ctx)?;
                    failed |= poisons;
                }
                Err(Step::Broken(msg)) => return Err(ctx(msg)),
            }
            if !failed {
                model.acked = model.acked.max(log.durable_lsn());
            }
        }
        stats.appended = model.records.len() as u64;
        drop(log);
        sim.set_capacity(None);
        sim.clear_faults();
        let mode = match rng.below(8) {
            0 => CrashMode::DropUnsynced,
            // A process kill (or an error and a restart): the page cache survives.
            1 => CrashMode::KeepAll,
            _ => CrashMode::Random(rng.next_u64()),
        };
        // A kill on the same boot: the next process reads the page cache,
        // including pages a failed fdatasync marked clean without writing
        // them, and nothing becomes durable unless that process makes it
        // so. Most likely right after a failed write or sync (the process
        // poisons, exits, and a supervisor restarts it).
        let kill = extra.below(if failed { 2 } else { 6 }) == 0;
        sim = if kill { sim.kill() } else { sim.crash(mode) };
        stats.crash_states += 1;
    }
    // Final recovery of the last crash image.
    let log = Log::open_with(Arc::new(sim.clone()), &dir, opts)
        .map_err(|e| format!("seed {seed} final: open failed on a crash state: {e}"))?;
    verify(&log, &mut model).map_err(|m| format!("seed {seed} final: {m}"))?;
    Ok(stats)
}

/// A reader's iterator held across the owner's recovery, and the records
/// it returned so far.
type HeldReader = (super::LogIter, Vec<(Lsn, Vec<u8>)>);

/// Opens a read-only reader and an iterator that holds the live segment,
/// as `wal-inspect` may while the owner recovers. `None` when the state does
/// not open read-only (the owner's open decides what that means).
fn hold_reader(sim: &SimStorage, dir: &Path) -> Option<HeldReader> {
    let reader = LogReader::open_with(Arc::new(sim.clone()), dir).ok()?;
    let mut iter = reader.iter_from(0);
    let mut seen = Vec::new();
    if let Some(Ok(r)) = iter.next() {
        seen.push((r.lsn, r.payload().to_vec()));
    }
    Some((iter, seen))
}

/// Drains a reader opened before the owner's recovery: every record it
/// returns must be one that was appended (recovery never hands a reader
/// wrong bytes, even as it zeroes a torn tail under it), and every failure
/// a typed error.
fn check_held_reader(held: HeldReader, model: &Model) -> Result<(), String> {
    let (iter, mut seen) = held;
    for r in iter {
        match r {
            Ok(r) => seen.push((r.lsn, r.payload().to_vec())),
            Err(Error::Corruption { .. } | Error::Io { .. } | Error::LsnOutOfRange { .. }) => break,
            Err(e) => return Err(format!("held reader: unexpected error {e}")),
        }
    }
    for (lsn, payload) in seen {
        let want = lsn
            .checked_sub(1)
            .and_then(|i| model.records.get(i as usize));
        if want.map(|w| &w.1) != Some(&payload) {
            return Err(format!("held reader returned wrong bytes for LSN {lsn}"));
        }
    }
    Ok(())
}

/// Like [`crash_case`], but power loss may also tear a whole 4 KiB block
/// around an unsynced write, damaging synced bytes before it in the block
/// ([`CrashMode::TornSectors`]). No log format can keep every promise then;
/// what recovery still promises (see `docs/recovery.md`), and this checks:
/// open never panics and fails only with a typed error (`BadMagic` when the
/// torn block held the segment header); a strict open that succeeds returns
/// only bytes that were appended, contiguously; when it refuses with
/// `Corruption`, a lossy open succeeds and returns a correct prefix, and the
/// log takes new durable appends.
pub fn torn_sector_case(seed: u64) -> Result<(), String> {
    let mut rng = SimRng::new(seed);
    let opts = LogOptions {
        segment_size: 4096 * 4,
        max_record_bytes: 1024,
        preallocate: rng.below(2) == 0,
        recovery: RecoveryMode::Strict,
        prepare_segments: seed & (1 << 7) == 0,
    };
    let dir = PathBuf::from(CRASH_DIR);
    let sim = SimStorage::new();
    let mut model = Model::default();
    let log = Log::open_with(Arc::new(sim.clone()), &dir, opts.clone())
        .map_err(|e| format!("seed {seed}: open: {e}"))?;
    for _ in 0..1 + rng.below(60) {
        match step(&log, &mut rng, &mut model, &opts, false) {
            Ok(()) | Err(Step::Failed(..)) => {}
            Err(Step::Broken(msg)) => return Err(format!("seed {seed}: {msg}")),
        }
    }
    drop(log);
    let image = sim.crash(CrashMode::TornSectors(rng.next_u64()));
    let check = |log: &Log| -> Result<(), String> {
        let from = log.snapshot_lsn() + 1;
        let records = log.read_from(from).map_err(|e| e.to_string())?;
        for (expect, r) in (from..).zip(records) {
            let r = r.map_err(|e| format!("read after a clean open: {e}"))?;
            if r.lsn != expect {
                return Err(format!("expected LSN {expect}, read {}", r.lsn));
            }
            let want = model.records.get(r.lsn as usize - 1);
            if want.map(|w| (w.0, &w.1[..])) != Some((r.kind, r.payload())) {
                return Err(format!("record {} differs from what was appended", r.lsn));
            }
        }
        Ok(())
    };
    let log = match Log::open_with(Arc::new(image.clone()), &dir, opts.clone()) {
        Ok(log) => log,
        Err(Error::Corruption { .. }) => {
            let lossy = LogOptions {
                recovery: RecoveryMode::Lossy,
                ..opts.clone()
            };
            Log::open_with(Arc::new(image.clone()), &dir, lossy)
                .map_err(|e| format!("seed {seed}: lossy open after corruption: {e}"))?
        }
        // The header of the segment itself was in a torn block: the file
        // no longer says it is a segment. Typed, and needs an operator.
        Err(Error::BadMagic { .. } | Error::UnsupportedVersion { .. }) => return Ok(()),
        Err(e) => return Err(format!("seed {seed}: open failed with {e}")),
    };
    check(&log).map_err(|m| format!("seed {seed}: {m}"))?;
    let lsn = log
        .append(b"after a torn sector")
        .map_err(|e| format!("seed {seed}: append after recovery: {e}"))?;
    drop(log);
    let log = Log::open_with(Arc::new(image.crash(CrashMode::DropUnsynced)), &dir, opts)
        .map_err(|e| format!("seed {seed}: reopen after a durable append: {e}"))?;
    if log.next_lsn() != lsn + 1 {
        return Err(format!("seed {seed}: the durable append {lsn} was lost"));
    }
    Ok(())
}

enum Step {
    /// The operation failed; `true` when the failure must poison the log
    /// (a failed append or sync; a failed snapshot or truncation does not).
    Failed(Error, bool),
    Broken(String),
}

/// One random operation. `failed` says an earlier write or sync failed, so
/// appends and syncs must now report `Poisoned`.
fn step(
    log: &Log,
    rng: &mut SimRng,
    model: &mut Model,
    opts: &LogOptions,
    failed: bool,
) -> Result<(), Step> {
    let poisoned_check = |r: &Error| -> Result<(), Step> {
        if failed && !matches!(r, Error::Poisoned { .. }) {
            // A failed snapshot does not poison; later appends may still hit the halt.
            if !matches!(r, Error::Io { .. }) {
                return Err(Step::Broken(format!(
                    "after a failed write expected Poisoned, got {r}"
                )));
            }
        }
        Ok(())
    };
    match rng.below(20) {
        0..=9 => {
            let durability = if rng.below(3) == 0 {
                Durability::Buffered
            } else {
                Durability::Durable
            };
            let next = model.next();
            let kind = rng.below(256) as u8;
            let data = payload(rng, next, opts.max_record_bytes as usize);
            model.records.push((kind, data.clone()));
            match log.append_with(kind, &data, durability) {
                Ok(lsn) => {
                    if failed {
                        return Err(Step::Broken("append succeeded on a poisoned log".into()));
                    }
                    if lsn != next {
                        return Err(Step::Broken(format!(
                            "append got LSN {lsn}, expected {next}"
                        )));
                    }
                    if durability == Durability::Durable {
                        model.acked = model.acked.max(lsn);
                    }
                    Ok(())
                }
                Err(e) => {
                    poisoned_check(&e)?;
                    Err(Step::Failed(e, true))
                }
            }
        }
        10..=13 => {
            let n = 1 + rng.below(6) as usize;
            let durability = if rng.below(2) == 0 {
                Durability::Buffered
            } else {
                Durability::Durable
            };
            let first = model.next();
            let mut batch = Vec::new();
            for i in 0..n {
                let kind = rng.below(256) as u8;
                let data = payload(rng, first + i as Lsn, opts.max_record_bytes as usize);
                model.records.push((kind, data.clone()));
                batch.push((kind, data));
            }
            let refs: Vec<(u8, &[u8])> = batch.iter().map(|(k, d)| (*k, &d[..])).collect();
            match log.append_batch(&refs, durability) {
                Ok(range) => {
                    if failed {
                        return Err(Step::Broken("batch succeeded on a poisoned log".into()));
                    }
                    if *range.start() != first || *range.end() != first + n as Lsn - 1 {
                        return Err(Step::Broken(format!(
                            "batch got {range:?}, expected {first}..={}",
                            first + n as Lsn - 1
                        )));
                    }
                    if durability == Durability::Durable {
                        model.acked = model.acked.max(*range.end());
                    }
                    Ok(())
                }
                Err(e) => {
                    poisoned_check(&e)?;
                    Err(Step::Failed(e, true))
                }
            }
        }
        14..=16 => match log.sync() {
            Ok(d) => {
                if failed {
                    return Err(Step::Broken("sync succeeded on a poisoned log".into()));
                }
                if d != model.next() - 1 {
                    return Err(Step::Broken(format!(
                        "sync returned {d}, log ends at {}",
                        model.next() - 1
                    )));
                }
                model.acked = model.acked.max(d);
                Ok(())
            }
            Err(e) => {
                poisoned_check(&e)?;
                Err(Step::Failed(e, true))
            }
        },
        _ => {
            let next = log.next_lsn();
            let base = log.snapshot_lsn();
            if next <= base + 1 || failed {
                return Ok(());
            }
            let lsn = base + 1 + rng.below(next - base - 1);
            match log.write_snapshot(lsn, &snap_data(lsn)) {
                Ok(_) => {
                    model.snap_acked = model.snap_acked.max(lsn);
                    model.acked = model.acked.max(lsn);
                }
                Err(e) => return Err(Step::Failed(e, false)),
            }
            if rng.below(2) == 0 {
                if let Err(e) = log.truncate_before(lsn + 1) {
                    return Err(Step::Failed(e, false));
                }
            }
            Ok(())
        }
    }
}

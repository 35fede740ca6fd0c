//! Guarantee: recovery follows the decision table of `src/log/scan.rs`, one
//! named test per row. A torn, never-acknowledged tail is cut (and its bytes
//! saved beside the log); damage to acknowledged data is `Corruption` with
//! the right segment and offset; format problems are typed errors; `Lossy`
//! mode truncates deliberately and says what it cut.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use agentwal::log::storage::Storage;
use agentwal::log::testing::encode_header;
use agentwal::log::{Durability, Error, Log, LogOptions, LogReader, RecoveryMode, SimStorage};

const DIR: &str = "/sim/recovery/journal";

fn opts() -> LogOptions {
    LogOptions {
        segment_size: 4096,
        max_record_bytes: 1024,
        preallocate: false,
        ..LogOptions::default()
    }
}

fn lossy() -> LogOptions {
    LogOptions {
        recovery: RecoveryMode::Lossy,
        ..opts()
    }
}

fn payload(lsn: u64) -> Vec<u8> {
    (0..500).map(|i| (lsn * 7 + i) as u8).collect()
}

/// Where a record lives.
#[derive(Debug, Clone)]
struct Loc {
    lsn: u64,
    segment: PathBuf,
    offset: u64,
}

/// A journal of `n` durable 500-byte records over several 4 KiB segments.
fn journal(n: u64) -> (SimStorage, Vec<Loc>) {
    let sim = SimStorage::new();
    let log = Log::open_with(Arc::new(sim.clone()), DIR, opts()).unwrap();
    for lsn in 1..=n {
        assert_eq!(log.append(&payload(lsn)).unwrap(), lsn);
    }
    let segs = segments(&sim);
    let locs = log
        .read_from(1)
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            let segment = segs
                .iter()
                .rev()
                .find(|(first, _)| *first <= r.lsn)
                .unwrap()
                .1
                .clone();
            Loc {
                lsn: r.lsn,
                segment,
                offset: r.offset(),
            }
        })
        .collect();
    (sim, locs)
}

fn segments(sim: &SimStorage) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = sim
        .list_dir(Path::new(DIR))
        .unwrap()
        .into_iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            Some((name.strip_suffix(".wal")?.parse().ok()?, p))
        })
        .collect();
    v.sort();
    v
}

fn open(sim: &SimStorage, o: LogOptions) -> Result<Log, Error> {
    Log::open_with(Arc::new(sim.clone()), DIR, o)
}

fn records(log: &Log) -> Vec<(u64, Vec<u8>)> {
    log.read_from(1)
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            (r.lsn, r.payload().to_vec())
        })
        .collect()
}

fn assert_prefix(log: &Log, n: u64) {
    let recs = records(log);
    assert_eq!(recs.len() as u64, n, "expected records 1..={n}");
    for (lsn, p) in recs {
        assert_eq!(p, payload(lsn), "LSN {lsn} payload");
    }
}

fn flip(sim: &SimStorage, path: &Path, offset: u64) {
    let b = sim.read(path).unwrap()[offset as usize];
    sim.poke(path, offset, &[b ^ 0x10]).unwrap();
}

fn expect_corruption(r: Result<Log, Error>, segment: &Path, offset: u64) -> String {
    match r {
        Err(Error::Corruption {
            segment: s,
            offset: o,
            reason,
        }) => {
            assert_eq!(
                (s.as_path(), o),
                (segment, offset),
                "wrong location ({reason})"
            );
            reason
        }
        Err(e) => panic!(
            "expected corruption at {}:{offset}, got {e}",
            segment.display()
        ),
        Ok(_) => panic!(
            "expected corruption at {}:{offset}, open succeeded",
            segment.display()
        ),
    }
}

#[test]
fn row_clean_end() {
    let (sim, locs) = journal(20);
    assert!(
        segments(&sim).len() >= 3,
        "the journal spans several segments"
    );
    let log = open(&sim, opts()).unwrap();
    let r = log.open_report();
    assert!(r.torn_tail.is_none() && r.cut_saved_to.is_none() && r.lossy_cut.is_none());
    assert_eq!(r.records, 20);
    assert_prefix(&log, locs.len() as u64);
}

#[test]
fn row_torn_tail_is_cut_and_saved() {
    let sim = SimStorage::new();
    let log = open(&sim, opts()).unwrap();
    for lsn in 1..=3 {
        log.append(&payload(lsn)).unwrap();
    }
    // The final, unacknowledged write tears: its second half never lands.
    log.append_with(0, &payload(4), Durability::Buffered)
        .unwrap();
    let at = log.read_from(4).unwrap().next().unwrap().unwrap().offset();
    drop(log);
    let seg = segments(&sim)[0].1.clone();
    let whole = sim.read(&seg).unwrap();
    sim.chop(&seg, at + 300).unwrap();
    let torn = whole[at as usize..at as usize + 300].to_vec();

    let log = open(&sim, opts()).unwrap();
    let r = log.open_report().clone();
    let t = r.torn_tail.expect("torn tail reported");
    assert_eq!(
        (t.segment.as_path(), t.offset, t.whole_segment),
        (seg.as_path(), at, false)
    );
    let saved = r.cut_saved_to.expect("cut bytes saved");
    assert_eq!(saved.parent(), Some(Path::new(DIR)));
    assert_eq!(
        sim.read(&saved).unwrap(),
        torn,
        "the side file holds exactly the cut bytes"
    );
    assert_prefix(&log, 3);
    // The next append takes the cut LSN and survives a reopen.
    assert_eq!(log.append(b"after").unwrap(), 4);
    drop(log);
    let log = open(&sim, opts()).unwrap();
    assert!(
        log.open_report().torn_tail.is_none(),
        "the cut is durable: no torn tail twice"
    );
    assert_eq!(records(&log).last().unwrap(), &(4, b"after".to_vec()));
}

#[test]
fn row_bit_flip_in_acknowledged_data_followed_by_later_records_is_corruption() {
    let (sim, locs) = journal(20);
    let last_seg = segments(&sim).last().unwrap().1.clone();
    let in_last: Vec<&Loc> = locs.iter().filter(|l| l.segment == last_seg).collect();
    assert!(in_last.len() >= 2);
    let victim = in_last[0];
    flip(&sim, &victim.segment, victim.offset + 28 + 100);
    let reason = expect_corruption(open(&sim, opts()), &victim.segment, victim.offset);
    assert!(reason.contains("acknowledged"), "{reason}");
    // The read-only scan reports the same place and opens anyway.
    let reader = LogReader::open_with(Arc::new(sim.clone()), DIR).unwrap();
    let c = reader.scan().corruption.clone().unwrap();
    assert_eq!(
        (c.segment, c.offset, c.expected_lsn),
        (victim.segment.clone(), victim.offset, victim.lsn)
    );
}

#[test]
fn row_damage_in_sealed_segment_is_corruption() {
    let (sim, locs) = journal(20);
    let first_seg = segments(&sim)[0].1.clone();
    // The last record of the sealed segment: no later record in that file vouches for it.
    let victim = locs.iter().rfind(|l| l.segment == first_seg).unwrap();
    flip(&sim, &victim.segment, victim.offset + 40);
    let reason = expect_corruption(open(&sim, opts()), &first_seg, victim.offset);
    assert!(
        reason.contains("sealed") || reason.contains("acknowledged"),
        "{reason}"
    );
    // Garbage after the end of a sealed segment is damage too.
    let (sim, locs) = journal(20);
    let end = {
        let v = locs.iter().rfind(|l| l.segment == first_seg).unwrap();
        v.offset + 528
    };
    sim.poke(&first_seg, end, b"garbage").unwrap();
    expect_corruption(open(&sim, opts()), &first_seg, end);
}

#[test]
fn row_lsn_gap_between_segments_is_corruption() {
    let (sim, _) = journal(20);
    let segs = segments(&sim);
    assert!(segs.len() >= 3);
    sim.remove_file(&segs[1].1).unwrap();
    let reason = expect_corruption(open(&sim, opts()), &segs[2].1, 0);
    assert!(reason.contains("LSN gap"), "{reason}");
}

fn torn_creation(bytes: &[u8]) {
    let (sim, locs) = journal(10);
    let next = locs.len() as u64 + 1;
    let path = Path::new(DIR).join(format!("{next:020}.wal"));
    sim.put(&path, bytes);
    let log = open(&sim, opts()).unwrap();
    let t = log
        .open_report()
        .torn_tail
        .clone()
        .expect("torn creation reported");
    assert!(t.whole_segment && t.segment == path && t.offset == 0);
    assert!(sim.read(&path).is_none(), "the torn segment is removed");
    assert_prefix(&log, 10);
    assert_eq!(log.append(b"next").unwrap(), next);
}

#[test]
fn row_torn_segment_creation_empty_file_is_removed() {
    torn_creation(&[]);
}

#[test]
fn row_torn_segment_creation_zeros_is_removed() {
    torn_creation(&[0u8; 4096]);
}

#[test]
fn row_torn_segment_creation_bad_header_is_removed() {
    let mut h = encode_header(11, 0x1234_5678).to_vec();
    h[24] ^= 0xff; // checksum does not match: the header write tore
    h.resize(4096, 0);
    torn_creation(&h);
    torn_creation(&encode_header(11, 0x1234_5678)[..20]);
}

#[test]
fn row_bad_header_in_sealed_segment_is_corruption() {
    let (sim, _) = journal(20);
    let first = segments(&sim)[0].1.clone();
    flip(&sim, &first, 17); // inside first_lsn: checksum mismatch
    expect_corruption(open(&sim, opts()), &first, 0);
}

#[test]
fn row_bad_header_with_records_after_it_is_corruption() {
    let (sim, _) = journal(20);
    let last = segments(&sim).last().unwrap().1.clone();
    flip(&sim, &last, 26); // header checksum of the last segment, records follow
    expect_corruption(open(&sim, opts()), &last, 0);
}

#[test]
fn row_wrong_magic_is_bad_magic() {
    let (sim, _) = journal(20);
    let seg = segments(&sim)[1].1.clone();
    sim.poke(&seg, 0, b"NOTAWAL!").unwrap();
    match open(&sim, opts()) {
        Err(Error::BadMagic { path }) => assert_eq!(path, seg),
        other => panic!("expected BadMagic, got {:?}", other.map(|_| ())),
    }
    assert!(matches!(
        LogReader::open_with(Arc::new(sim.clone()), DIR),
        Err(Error::BadMagic { .. })
    ));
}

#[test]
fn row_newer_version_is_unsupported() {
    let (sim, _) = journal(20);
    let seg = segments(&sim)[0].1.clone();
    let mut h = encode_header(1, 0);
    h[8..12].copy_from_slice(&3u32.to_le_bytes());
    let crc = crc32fast::hash(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    sim.poke(&seg, 0, &h).unwrap();
    match open(&sim, opts()) {
        Err(Error::UnsupportedVersion {
            path,
            found,
            supported,
        }) => {
            assert_eq!((path, found, supported), (seg, 3, 2));
        }
        other => panic!("expected UnsupportedVersion, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn row_lossy_mode_truncates_and_reports() {
    let (sim, locs) = journal(20);
    let segs = segments(&sim);
    // Damage in the middle of the second segment: later segments are set aside.
    let victim = locs
        .iter()
        .find(|l| l.segment == segs[1].1)
        .unwrap()
        .clone();
    flip(&sim, &victim.segment, victim.offset + 60);
    expect_corruption(open(&sim, opts()), &victim.segment, victim.offset);

    let log = open(&sim, lossy()).unwrap();
    let r = log.open_report().clone();
    let cut = r.lossy_cut.expect("lossy cut reported");
    assert_eq!(
        (cut.segment.as_path(), cut.offset),
        (victim.segment.as_path(), victim.offset)
    );
    let dropped: Vec<PathBuf> = segs[2..].iter().map(|s| s.1.clone()).collect();
    assert_eq!(r.dropped_segments, dropped);
    for d in &dropped {
        assert!(sim.read(d).is_none(), "{} set aside", d.display());
        assert!(
            sim.read(&d.with_extension("wal.dropped")).is_some(),
            "{} kept as .dropped",
            d.display()
        );
    }
    assert!(r.cut_saved_to.is_some(), "the cut bytes are saved");
    assert_prefix(&log, victim.lsn - 1);
    assert_eq!(log.append(b"after lossy").unwrap(), victim.lsn);
    drop(log);
    // After the deliberate cut the journal is clean again for a strict open.
    let log = open(&sim, opts()).unwrap();
    assert_eq!(log.next_lsn(), victim.lsn + 1);
}

/// Found by the `recover_dir` fuzz target: a lossy cut below the snapshot
/// left a log whose next append took an LSN the snapshot covers, so the
/// acknowledged record was invisible after a reopen.
#[test]
fn lossy_cut_below_the_snapshot_continues_after_the_snapshot() {
    let (sim, locs) = journal(20);
    let log = open(&sim, opts()).unwrap();
    log.write_snapshot(15, b"state at 15").unwrap();
    drop(log);
    let victim = locs.iter().find(|l| l.lsn == 12).unwrap().clone();
    flip(&sim, &victim.segment, victim.offset + 50);
    expect_corruption(open(&sim, opts()), &victim.segment, victim.offset);

    let log = open(&sim, lossy()).unwrap();
    assert_eq!(log.snapshot_lsn(), 15);
    let lsn = log.append(b"after the snapshot").unwrap();
    assert_eq!(lsn, 16, "the next LSN follows the snapshot");
    drop(log);
    let log = open(&sim, opts()).unwrap();
    let got: Vec<(u64, Vec<u8>)> = log
        .read_from(16)
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            (r.lsn, r.payload().to_vec())
        })
        .collect();
    assert_eq!(got, vec![(16, b"after the snapshot".to_vec())]);
}

/// Row 9: the first segment after a snapshot must start at or before
/// `snapshot.lsn + 1`; a missing segment there is corruption, not silence.
#[test]
fn row_gap_after_snapshot_is_corruption() {
    let (sim, _) = journal(24);
    let segs = segments(&sim);
    assert!(segs.len() >= 4, "the workload spans several segments");
    {
        let log = open(&sim, opts()).unwrap();
        // Snapshot just before the third segment; compaction keeps it and later ones.
        let third = segs[2].0;
        log.write_snapshot(third - 1, b"state").unwrap();
        log.truncate_before(third).unwrap();
    }
    let left = segments(&sim);
    assert_eq!(
        left[0].0, segs[2].0,
        "segments before the snapshot were removed"
    );
    // Lose the segment right after the snapshot (an operator deleting files).
    sim.remove_file(&left[0].1).unwrap();
    let reason = expect_corruption(open(&sim, opts()), &left[1].1, 0);
    assert!(reason.contains("snapshot"), "{reason}");
}

/// A journal of 10 durable records, then buffered records that rotate into
/// a new segment and go on in it, never synced (as the rotating append
/// leaves them: the name not synced either). Returns the new
/// segment and the LSN of its first record.
fn unsynced_new_segment() -> (SimStorage, PathBuf, u64) {
    let (sim, _) = journal(10);
    let log = open(&sim, opts()).unwrap();
    let before = log.segment_count();
    let mut lsn = 10;
    while log.segment_count() == before {
        lsn = log
            .append_with(0, &payload(lsn + 1), Durability::Buffered)
            .unwrap();
    }
    let first = lsn;
    log.append_with(0, &payload(lsn + 1), Durability::Buffered)
        .unwrap();
    drop(log);
    let path = Path::new(DIR).join(format!("{first:020}.wal"));
    assert!(sim.read(&path).is_some());
    (sim, path, first)
}

/// A rotation syncs the new segment's header before any record goes in,
/// so a last segment whose header is damaged while records follow it is
/// corruption, never a torn creation cut quietly: the header may have been
/// wiped with its salt, and then nothing can tell whether the records were
/// acknowledged. `wal-inspect` and readers see the same decision.
#[test]
fn row_damaged_header_of_a_new_last_segment_with_records_after_it_is_corruption() {
    for (what, damage) in [
        ("header lost", &[0u8; 32][..]),
        ("header checksum torn", &[0xAB, 0xCD][..]),
    ] {
        let (sim, path, _) = unsynced_new_segment();
        let at = if damage.len() == 32 { 0 } else { 24 };
        sim.poke(&path, at, damage).unwrap();
        let scan = LogReader::open_with(Arc::new(sim.clone()), DIR)
            .unwrap()
            .scan()
            .clone();
        assert!(scan.corruption.is_some(), "{what}: {:?}", scan.torn_tail);
        expect_corruption(open(&sim, opts()), &path, 0);
    }
}

/// Row 7: a damaged header of the last segment is corruption when the
/// snapshot covers its first record, as when records follow it.
#[test]
fn row_bad_header_of_a_last_segment_the_snapshot_covers_is_corruption() {
    let (sim, _) = journal(20);
    let log = open(&sim, opts()).unwrap();
    log.write_snapshot(20, b"state").unwrap();
    drop(log);
    let last = segments(&sim).last().unwrap().1.clone();
    sim.poke(&last, 0, &[0u8; 32]).unwrap();
    expect_corruption(open(&sim, opts()), &last, 0);
}

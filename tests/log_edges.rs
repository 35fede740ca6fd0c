//! Guarantees at the edges of the fault model: a restart on the same boot
//! after a failed `fdatasync`, payload bytes that imitate records, a full
//! disk during recovery, `wait_durable` on an LSN never written, damage in
//! record padding, and a read-only reader that holds a segment while the
//! owner recovers it. Each test is named after the behaviour it proves.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use agentwal::log::storage::sim::{CrashMode, FaultKind, FaultOp};
use agentwal::log::storage::Storage;
use agentwal::log::{Durability, Error, FsStorage, Log, LogOptions, LogReader, SimStorage};

const DIR: &str = "/sim/edges/journal";

fn opts(preallocate: bool) -> LogOptions {
    LogOptions {
        segment_size: 4096,
        max_record_bytes: 1024,
        preallocate,
        ..LogOptions::default()
    }
}

fn open(sim: &SimStorage, preallocate: bool) -> Log {
    Log::open_with(Arc::new(sim.clone()), DIR, opts(preallocate)).expect("open")
}

fn payloads(log: &Log) -> Vec<Vec<u8>> {
    log.read_from(1)
        .unwrap()
        .map(|r| r.unwrap().payload().to_vec())
        .collect()
}

fn first_segment(sim: &SimStorage) -> PathBuf {
    let mut v: Vec<PathBuf> = sim
        .list_dir(Path::new(DIR))
        .unwrap()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v.remove(0)
}

fn encoded_len(len: usize) -> u64 {
    (28 + len).div_ceil(8) as u64 * 8
}

/// A record in the layout of format version 1 (no salt): what anyone can
/// put inside a payload without knowing anything about the segment.
fn v1_record(lsn: u64, synced: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 4];
    v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    v.extend_from_slice(&lsn.to_le_bytes());
    v.extend_from_slice(&synced.to_le_bytes());
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(payload);
    let crc = crc32fast::hash(&v[4..]);
    v[..4].copy_from_slice(&crc.to_le_bytes());
    v.resize(encoded_len(payload.len()) as usize, 0);
    v
}

#[test]
fn restart_after_a_failed_sync_then_power_loss_keeps_every_record_the_restart_acknowledged() {
    for preallocate in [true, false] {
        let sim = SimStorage::new();
        let log = open(&sim, preallocate);
        log.append(b"one").unwrap();
        // Process 1: the fdatasync fails; Linux marks the pages clean, so
        // "two" is readable from the page cache but will never be written.
        sim.inject(FaultOp::Sync, 0, FaultKind::Eio);
        assert!(matches!(log.append(b"two"), Err(Error::Io { .. })));
        assert!(matches!(log.append(b"x"), Err(Error::Poisoned { .. })));
        drop(log);

        // Process 2 on the same boot: it sees "two" and vouches for it.
        let restarted = sim.kill();
        let log = open(&restarted, preallocate);
        assert_eq!(payloads(&log), vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(log.durable_lsn(), 2);
        assert_eq!(log.append(b"three").unwrap(), 3);
        drop(log);

        // Power loss: everything process 2 acknowledged must be there.
        let after = restarted.crash(CrashMode::DropUnsynced);
        let log = Log::open_with(Arc::new(after), DIR, opts(preallocate))
            .unwrap_or_else(|e| panic!("preallocate {preallocate}: {e}"));
        assert_eq!(
            payloads(&log),
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()],
            "preallocate {preallocate}"
        );
    }
}

#[test]
fn a_record_imitated_inside_a_torn_payload_is_not_proof_of_acknowledged_data() {
    for preallocate in [true, false] {
        let sim = SimStorage::new();
        let log = open(&sim, preallocate);
        log.append(b"one").unwrap();
        // Record 2's payload carries a well-formed record claiming LSN 3
        // with synced_lsn 2, at an 8-aligned file offset (header 28 + 4).
        let mut evil = vec![0xAA; 4];
        evil.extend_from_slice(&v1_record(3, 2, b"I prove LSN 2 was durable"));
        evil.extend_from_slice(&[0xBB; 64]);
        log.append_with(0, &evil, Durability::Buffered).unwrap();
        drop(log);
        let image = sim.crash(CrashMode::KeepAll);
        let seg = first_segment(&image);
        // Tear record 2 in its payload, before the imitation.
        let rec2 = 32 + encoded_len(3);
        image.poke(&seg, rec2 + 28, &[0x55, 0x55]).unwrap();

        let log = Log::open_with(Arc::new(image.clone()), DIR, opts(preallocate))
            .unwrap_or_else(|e| panic!("preallocate {preallocate}: {e}"));
        let torn = log.open_report().torn_tail.clone().expect("a torn tail");
        assert_eq!(torn.offset, rec2);
        assert_eq!(payloads(&log), vec![b"one".to_vec()]);
    }
}

#[test]
fn wait_durable_on_an_lsn_never_written_is_a_typed_error() {
    let sim = SimStorage::new();
    let log = open(&sim, true);
    log.append(b"one").unwrap();
    log.append_with(0, b"two", Durability::Buffered).unwrap();
    let (tx, rx) = mpsc::channel();
    let l = log.clone();
    std::thread::spawn(move || {
        let _ = tx.send((
            l.wait_durable(3),
            l.wait_durable(1_000_000),
            l.wait_durable(2),
        ));
    });
    let (beyond, far, written) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("wait_durable on an unwritten LSN must return, not spin");
    assert!(
        matches!(beyond, Err(Error::LsnOutOfRange { lsn: 3, .. })),
        "{beyond:?}"
    );
    assert!(matches!(far, Err(Error::LsnOutOfRange { .. })), "{far:?}");
    assert!(written.is_ok(), "a written LSN still becomes durable");
    assert_eq!(log.durable_lsn(), 2);
    // Nothing was poisoned by the refusal.
    assert_eq!(log.append(b"three").unwrap(), 3);
}

#[test]
fn torn_tail_is_cut_on_a_full_disk_and_the_report_says_the_copy_was_not_saved() {
    for preallocate in [true, false] {
        let sim = SimStorage::new();
        let log = open(&sim, preallocate);
        log.append(b"one").unwrap();
        log.append_with(0, &[7u8; 300], Durability::Buffered)
            .unwrap();
        drop(log);
        let image = sim.crash(CrashMode::KeepAll);
        let seg = first_segment(&image);
        let rec2 = 32 + encoded_len(3);
        image.poke(&seg, rec2 + 40, &[1, 2, 3]).unwrap();
        // Not one byte left for the side file.
        image.set_capacity(Some(image.live_bytes()));

        let log = Log::open_with(Arc::new(image.clone()), DIR, opts(preallocate))
            .unwrap_or_else(|e| panic!("preallocate {preallocate}: {e}"));
        let report = log.open_report().clone();
        assert_eq!(report.torn_tail.as_ref().map(|t| t.offset), Some(rec2));
        assert_eq!(report.cut_saved_to, None);
        let why = report.cut_not_saved.expect("the report says why");
        assert!(why.contains("cut"), "{why}");
        let leftovers: Vec<PathBuf> = image
            .list_dir(Path::new(DIR))
            .unwrap()
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("cut-"))
            .collect();
        assert!(leftovers.is_empty(), "partial side files: {leftovers:?}");
        assert_eq!(payloads(&log), vec![b"one".to_vec()]);
        drop(log);
        image.set_capacity(None);
        let log = Log::open_with(
            Arc::new(image.crash(CrashMode::DropUnsynced)),
            DIR,
            opts(preallocate),
        )
        .unwrap();
        assert!(log.open_report().torn_tail.is_none(), "the cut was durable");
    }
}

#[test]
fn a_bit_flip_in_record_padding_is_corruption_with_segment_and_offset() {
    for preallocate in [true, false] {
        let sim = SimStorage::new();
        let log = open(&sim, preallocate);
        // 1-byte payloads: 28 + 1 = 29, three bytes of padding each.
        for i in 0..4u8 {
            log.append(&[i]).unwrap();
        }
        drop(log);
        let seg = first_segment(&sim);
        let rec2 = 32 + encoded_len(1);
        for pad in 29..32 {
            let image = sim.crash(CrashMode::KeepAll);
            image.poke(&seg, rec2 + pad, &[0x08]).unwrap();
            match Log::open_with(Arc::new(image.clone()), DIR, opts(preallocate)) {
                Err(Error::Corruption {
                    segment, offset, ..
                }) => {
                    assert_eq!(segment, seg);
                    assert_eq!(offset, rec2, "padding byte {pad}");
                }
                Err(e) => panic!("padding byte {pad}: expected corruption, got {e}"),
                Ok(_) => panic!("padding byte {pad}: the damaged log opened cleanly"),
            }
            let reader = LogReader::open_with(Arc::new(image), DIR).unwrap();
            let c = reader
                .scan()
                .corruption
                .clone()
                .expect("the scan reports it");
            assert_eq!((c.segment, c.offset), (seg.clone(), rec2));
        }
    }
}

#[test]
fn a_reader_holding_the_live_segment_survives_the_owner_recovering_a_torn_tail() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let o = LogOptions {
        segment_size: 1 << 20,
        max_record_bytes: 4096,
        preallocate: false,
        ..LogOptions::default()
    };
    let log = Log::open(dir, o.clone()).unwrap();
    for i in 0..8u8 {
        log.append(&[i; 1000]).unwrap();
    }
    drop(log);
    let seg = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .unwrap();
    // A torn tail of several pages after the last record.
    let end = std::fs::metadata(&seg).unwrap().len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&vec![0x5A; 5 * 4096]).unwrap();
    }

    // Readers hold the live segment: a raw view and a record iterator.
    let view = FsStorage.map(&seg).unwrap();
    let reader = LogReader::open(dir).unwrap();
    assert_eq!(
        reader.scan().torn_tail.as_ref().map(|t| t.offset),
        Some(end)
    );
    let mut iter = reader.iter_from(1);
    let first = iter.next().unwrap().unwrap();

    // The owner recovers (cuts the torn tail) while they hold it.
    let log = Log::open(dir, o).unwrap();
    assert!(log.open_report().torn_tail.is_some());
    log.append(b"after recovery").unwrap();

    // Touch every byte the readers hold: no SIGBUS, typed results.
    let sum: u64 = view.iter().map(|&b| u64::from(b)).sum();
    assert!(sum > 0);
    assert_eq!(first.payload(), &[0u8; 1000][..]);
    let rest: Vec<_> = iter.collect();
    assert_eq!(rest.len(), 7);
    for r in rest {
        let r = r.expect("records before the cut stay readable");
        assert_eq!(r.payload().len(), 1000);
    }
    let again = LogReader::open(dir).unwrap();
    assert!(again.scan().torn_tail.is_none());
    assert_eq!(again.scan().records(), 9);
}

/// A segment exactly as format version 1 wrote it: unsalted header and
/// records, `records` records of 40 bytes from LSN 1, the last `unsynced`
/// of them not covered by any `synced_lsn`.
fn v1_segment(records: u64, size: usize) -> Vec<u8> {
    use agentwal::log::testing::encode_header_v1;
    use agentwal::log::testing::{encode_record as encode, Codec};
    let mut b = encode_header_v1(1).to_vec();
    for lsn in 1..=records {
        encode(&mut b, Codec::V1, lsn, lsn - 1, 3, &v1_payload(lsn));
    }
    b.resize(size, 0);
    b
}

fn v1_payload(lsn: u64) -> Vec<u8> {
    (0..40).map(|i| (lsn as u8).wrapping_mul(13) ^ i).collect()
}

#[test]
fn a_journal_of_the_previous_format_opens_appends_and_rotates_into_the_new_one() {
    for preallocate in [true, false] {
        let sim = SimStorage::new();
        let seg = Path::new(DIR).join("00000000000000000001.wal");
        let size = if preallocate { 4096 } else { 32 + 5 * 72 };
        sim.put(&seg, &v1_segment(5, size));
        let reader = LogReader::open_with(Arc::new(sim.clone()), DIR).unwrap();
        assert_eq!(reader.scan().segments[0].version, 1);
        assert_eq!(reader.scan().records(), 5);

        let log = open(&sim, preallocate);
        let want: Vec<Vec<u8>> = (1..=5).map(v1_payload).collect();
        assert_eq!(payloads(&log), want);
        // Appends continue the old segment in its own format, then rotate
        // into segments of the current format.
        for i in 0..60u64 {
            log.append(&[i as u8; 100]).unwrap();
        }
        drop(log);
        let log = Log::open_with(
            Arc::new(sim.crash(CrashMode::DropUnsynced)),
            DIR,
            opts(preallocate),
        )
        .unwrap();
        let all = payloads(&log);
        assert_eq!(all.len(), 65);
        assert_eq!(all[..5], want[..]);
        let reader = LogReader::open_with(log.storage().clone(), DIR).unwrap();
        let versions: Vec<u32> = reader.scan().segments.iter().map(|s| s.version).collect();
        assert_eq!(versions[0], 1, "{versions:?}");
        assert!(versions[1..].iter().all(|&v| v == 2), "{versions:?}");
        assert!(versions.len() > 1);
    }
}

#[test]
fn in_a_previous_format_segment_a_record_at_an_implausible_lsn_is_not_proof() {
    // Format version 1 has no salt: the look-ahead at least requires the
    // LSN a record claims to fit its position.
    let sim = SimStorage::new();
    let seg = Path::new(DIR).join("00000000000000000001.wal");
    let mut b = v1_segment(3, 4096);
    let torn_at = 32 + 3 * 72;
    // A torn record 4 whose payload carries a record claiming LSN 900.
    let mut torn = v1_record(4, 3, &[0x11; 200]);
    let fake = v1_record(900, 899, b"fake proof");
    torn[64..64 + fake.len()].copy_from_slice(&fake);
    torn[40] ^= 0xFF; // the tear
    b[torn_at..torn_at + torn.len()].copy_from_slice(&torn);
    sim.put(&seg, &b);
    let log = open(&sim, true);
    let t = log.open_report().torn_tail.clone().expect("a torn tail");
    assert_eq!(t.offset, torn_at as u64);
    assert_eq!(payloads(&log).len(), 3);
}

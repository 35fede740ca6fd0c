//! Guarantee: reading the live segment (a `LogReader`'s scan and iterator,
//! `Log::open`'s recovery) holds one bounded window in memory, not the
//! segment: the largest single read does not grow with the segment size.
//! Records that span window boundaries are read exactly as a whole-segment
//! read would (any record sizes, any window size).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use agentwal::log::storage::sim::CrashMode;
use agentwal::log::storage::{FileBytes, OpenMode, Storage, StorageFile};
use agentwal::log::testing::{
    set_read_chunk, FileHooks, ForwardingFile, ForwardingStorage, StorageHooks,
};
use agentwal::log::{Durability, Log, LogOptions, LogReader, SimStorage};
use proptest::prelude::*;

/// Remembers the largest buffer read at once, through any path
/// (`read_range`, a file's `read_at`); maps (sealed segments, page cache)
/// are not heap reads and are not counted.
#[derive(Debug)]
struct Counting {
    largest: Arc<AtomicU64>,
}

impl StorageHooks for Counting {
    fn open(
        &self,
        inner: &dyn Storage,
        p: &Path,
        m: OpenMode,
    ) -> std::io::Result<Arc<dyn StorageFile>> {
        Ok(ForwardingFile::wrap(
            inner.open(p, m)?,
            Counting {
                largest: self.largest.clone(),
            },
        ))
    }
}

impl FileHooks for Counting {
    fn read_at(
        &self,
        inner: &dyn StorageFile,
        offset: u64,
        buf: &mut [u8],
    ) -> std::io::Result<usize> {
        self.largest.fetch_max(buf.len() as u64, Ordering::Relaxed);
        inner.read_at(offset, buf)
    }
}

fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

/// Fills most of one segment of `segment_size`, reopens through a counting
/// storage (recovery), reads everything back, then scans and reads it with
/// a `LogReader`; returns the largest single read.
fn largest_read(segment_size: u64) -> u64 {
    let sim = SimStorage::new();
    let dir = Path::new("/j");
    let opts = LogOptions {
        segment_size,
        max_record_bytes: 64 << 10,
        ..LogOptions::default()
    };
    let n = segment_size / 2 / 1100;
    {
        let log = Log::open_with(Arc::new(sim.clone()), dir, opts.clone()).unwrap();
        for i in 1..=n {
            log.append_with(
                0,
                &payload(i, 1000 + (i % 100) as usize),
                Durability::Buffered,
            )
            .unwrap();
        }
        log.sync().unwrap();
        assert_eq!(log.segment_count(), 1, "one live segment");
    }
    let largest = Arc::new(AtomicU64::new(0));
    let counting: Arc<dyn Storage> = Arc::new(ForwardingStorage::new(
        sim.crash(CrashMode::KeepAll),
        Counting {
            largest: largest.clone(),
        },
    ));
    {
        let log = Log::open_with(counting.clone(), dir, opts).unwrap();
        let back: Vec<_> = log.read_from(1).unwrap().map(|r| r.unwrap().lsn).collect();
        assert_eq!(back.len() as u64, n);
    }
    let reader = LogReader::open_with(counting, dir).unwrap();
    assert_eq!(reader.scan().records(), n);
    assert_eq!(reader.iter_from(1).map(|r| r.unwrap().lsn).last(), Some(n));
    largest.load(Ordering::Relaxed)
}

#[test]
fn reading_the_live_segment_holds_a_window_not_the_segment() {
    let small = largest_read(4 << 20);
    let big = largest_read(32 << 20);
    eprintln!("largest single read: {small} bytes (4 MiB segment), {big} bytes (32 MiB segment)");
    // One 1 MiB window plus, at most, one record spanning its end.
    let bound = (1 << 20) + (64 << 10) + 64;
    assert!(small > 0 && big > 0, "the wrapper saw the reads");
    assert!(small <= bound, "4 MiB segment: read {small} bytes at once");
    assert!(big <= bound, "32 MiB segment: read {big} bytes at once");
    assert_eq!(
        small, big,
        "the largest read does not grow with the segment"
    );
}

/// Writes records of the given sizes (durable, with a buffered, unsynced
/// tail), crashes in a seeded mode, and returns what a whole-window scan and
/// a `chunk`-byte-window scan and read find.
fn scan_with(sim: &SimStorage, chunk: usize) -> (String, Vec<(u64, Vec<u8>)>) {
    // (A damaged log may end in an error: it is part of what must match.)
    set_read_chunk(chunk);
    let reader = LogReader::open_with(Arc::new(sim.clone()), "/j").unwrap();
    let s = reader.scan();
    let summary = format!(
        "{:?} {:?} {:?} {}",
        s.segments
            .iter()
            .map(|g| (g.first_lsn, g.records, g.end_offset, g.file_len))
            .collect::<Vec<_>>(),
        s.torn_tail,
        s.corruption,
        s.record_bytes
    );
    let records = reader
        .iter_from(1)
        .map_while(|r| r.ok().map(|r| (r.lsn, r.payload().to_vec())))
        .collect();
    set_read_chunk(1 << 20);
    (summary, records)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn records_spanning_window_boundaries_read_as_a_whole(
        sizes in proptest::collection::vec(0usize..3000, 1..60),
        chunk in 1usize..5000,
        tail in 0usize..4,
        seed in any::<u64>(),
        flip in proptest::option::of(any::<u64>()),
    ) {
        let sim = SimStorage::new();
        let opts = LogOptions {
            segment_size: 16 << 10,
            max_record_bytes: 4096,
            ..LogOptions::default()
        };
        let mut want = Vec::new();
        {
            let log = Log::open_with(Arc::new(sim.clone()), "/j", opts.clone()).unwrap();
            for (i, &n) in sizes.iter().enumerate() {
                let p = payload(i as u64, n);
                log.append(&p).unwrap();
                want.push((i as u64 + 1, p));
            }
            for t in 0..tail {
                log.append_with(0, &payload(1000 + t as u64, 500), Durability::Buffered).unwrap();
            }
        }
        let image = sim.crash(CrashMode::Random(seed));
        // Optionally damage one byte of the live segment: the scan then
        // looks past the damage for proof, across windows too.
        if let Some(f) = flip {
            let live = image.list_dir(Path::new("/j")).unwrap().into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "wal")).max().unwrap();
            let bytes = image.read(&live).unwrap();
            let end = bytes.iter().rposition(|&b| b != 0).unwrap_or(0) as u64 + 1;
            let at = 32 + f % end.saturating_sub(32).max(1);
            let old = bytes.get(at as usize).copied().unwrap_or(0);
            image.poke(&live, at, &[old ^ 0x5A]).unwrap();
        }
        let (whole, whole_records) = scan_with(&image, 1 << 20);
        let (windowed, windowed_records) = scan_with(&image, chunk);
        prop_assert_eq!(&whole, &windowed);
        prop_assert_eq!(&whole_records, &windowed_records);
        if flip.is_some() {
            return Ok(());
        }
        prop_assert!(windowed_records.len() >= want.len());
        prop_assert_eq!(&windowed_records[..want.len()], &want[..]);
        // Recovery with small windows finds the same log.
        set_read_chunk(chunk);
        let log = Log::open_with(Arc::new(image), "/j", opts).unwrap();
        let back: Vec<(u64, Vec<u8>)> = log
            .read_from(1)
            .unwrap()
            .map(|r| { let r = r.unwrap(); (r.lsn, r.payload().to_vec()) })
            .collect();
        set_read_chunk(1 << 20);
        prop_assert_eq!(&back, &windowed_records);
    }
}

/// Every re-read of the live segment past its start first lets the owner
/// append two durable records: the reader's windows see the file at
/// different moments, as they do while a real owner appends.
#[derive(Debug)]
struct Racing {
    log: Log,
    appended: AtomicU64,
}

impl StorageHooks for Racing {
    fn read_range(
        &self,
        inner: &dyn Storage,
        p: &Path,
        offset: u64,
        max: u64,
    ) -> std::io::Result<FileBytes> {
        if offset > 0 {
            for _ in 0..2 {
                self.log.append(&payload(7, 200)).unwrap();
                self.appended.fetch_add(1, Ordering::Relaxed);
            }
        }
        inner.read_range(p, offset, max)
    }
}

/// A reader racing the owner's appends never reports the append in
/// progress as corruption: a hole at the tail followed by records written a
/// moment later is looked at again as one snapshot of the file before it is
/// believed (it failed with the windows alone: "zero record header followed
/// by data ... proves LSN .. was acknowledged durable").
#[test]
fn a_reader_racing_the_owners_appends_reports_no_corruption() {
    let sim = SimStorage::new();
    let dir = Path::new("/j");
    let opts = LogOptions {
        segment_size: 4 << 20,
        max_record_bytes: 64 << 10,
        ..LogOptions::default()
    };
    let log = Log::open_with(Arc::new(sim.clone()), dir, opts).unwrap();
    for i in 1..=100 {
        log.append(&payload(i, 300)).unwrap();
    }
    let racing = Arc::new(ForwardingStorage::new(
        sim.clone(),
        Racing {
            log: log.clone(),
            appended: AtomicU64::new(0),
        },
    ));
    let reader = LogReader::open_with(racing.clone(), dir).unwrap();
    assert!(
        racing.hooks().appended.load(Ordering::Relaxed) > 0,
        "the owner appended while the reader read"
    );
    assert!(
        reader.scan().corruption.is_none(),
        "an append in progress is not corruption: {:?}",
        reader.scan().corruption
    );
    assert!(reader.scan().records() >= 100);
}

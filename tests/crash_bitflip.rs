//! Single-bit flips and truncations over a small real journal.
//!
//! Every bit of every file (segments and snapshot) is flipped, and every
//! file is truncated at every offset. Opening must then either report the
//! damage at the right place (segment and record offset) or recover a valid
//! prefix, as a torn tail: it must never hand back wrong data, never lose a
//! record before the damaged one, and never panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use agentwal::log::storage::Storage;
use agentwal::log::{Durability, Error, Log, LogOptions, LogReader, SimStorage};

const DIR: &str = "/sim/bitflip/journal";

fn opts(preallocate: bool) -> LogOptions {
    LogOptions {
        segment_size: 4096,
        max_record_bytes: 2048,
        preallocate,
        ..LogOptions::default()
    }
}

/// A small journal image and what it holds.
struct Journal {
    files: Vec<(PathBuf, Vec<u8>)>,
    records: BTreeMap<u64, Vec<u8>>,
    /// (segment, offset, end of the record with its padding, lsn) of every
    /// record: every byte of it, padding included, is checked.
    locs: Vec<(PathBuf, u64, u64, u64)>,
    /// synced_lsn of every record, by LSN.
    synced: BTreeMap<u64, u64>,
    segments: Vec<PathBuf>,
    snapshot: u64,
    preallocate: bool,
}

fn build(preallocate: bool) -> Journal {
    let sim = SimStorage::new();
    let log = Log::open_with(Arc::new(sim.clone()), DIR, opts(preallocate)).unwrap();
    let mut records = BTreeMap::new();
    let sizes = [
        5usize, 0, 130, 700, 1, 64, 1500, 33, 900, 12, 1200, 8, 300, 77, 40, 1800, 3, 1000, 250,
    ];
    for (i, &n) in sizes.iter().enumerate() {
        let lsn = i as u64 + 1;
        let p: Vec<u8> = (0..n).map(|j| (lsn as usize * 29 + j * 3) as u8).collect();
        let d = if i % 4 == 3 {
            Durability::Buffered
        } else {
            Durability::Durable
        };
        assert_eq!(log.append_with((i % 3) as u8, &p, d).unwrap(), lsn);
        records.insert(lsn, p);
    }
    log.sync().unwrap();
    log.write_snapshot(3, b"snapshot of the first three")
        .unwrap();
    let mut segments: Vec<PathBuf> = sim
        .list_dir(Path::new(DIR))
        .unwrap()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    assert!(
        segments.len() >= 3,
        "the journal spans several segments: {segments:?}"
    );
    let synced = log
        .read_from(1)
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            (r.lsn, r.synced_lsn)
        })
        .collect();
    let locs = log
        .read_from(1)
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            let seg = segments
                .iter()
                .rev()
                .find(|p| {
                    let first: u64 = p.file_stem().unwrap().to_str().unwrap().parse().unwrap();
                    first <= r.lsn
                })
                .unwrap()
                .clone();
            (
                seg,
                r.offset(),
                r.offset() + (28 + r.payload().len() as u64).div_ceil(8) * 8,
                r.lsn,
            )
        })
        .collect();
    drop(log);
    let mut files: Vec<(PathBuf, Vec<u8>)> = sim
        .list_dir(Path::new(DIR))
        .unwrap()
        .into_iter()
        .map(|p| {
            let b = sim.read(&p).unwrap();
            (p, b)
        })
        .collect();
    files.sort();
    Journal {
        files,
        records,
        locs,
        synced,
        segments,
        snapshot: 3,
        preallocate,
    }
}

impl Journal {
    fn image(&self) -> SimStorage {
        let sim = SimStorage::new();
        for (p, b) in &self.files {
            sim.put(p, b);
        }
        sim
    }

    fn is_last(&self, f: &Path) -> bool {
        self.segments.last().map(|p| p.as_path()) == Some(f)
    }

    /// Record whose bytes (header..padding end) contain `offset` of `f`.
    fn record_at(&self, f: &Path, offset: u64) -> Option<&(PathBuf, u64, u64, u64)> {
        self.locs
            .iter()
            .find(|(s, start, end, _)| s == f && (*start..*end).contains(&offset))
    }

    /// True when a later record of the same segment says `lsn` was synced:
    /// damage to it can never be mistaken for a torn tail.
    fn proven(&self, f: &Path, lsn: u64) -> bool {
        self.locs
            .iter()
            .any(|l| l.0 == f && l.3 > lsn && self.synced[&l.3] >= lsn)
    }

    /// Checks an opened log: records after the snapshot read back equal to
    /// what was appended, contiguously, and at least up to `min_last`.
    fn check_ok(&self, log: &Log, min_last: u64, what: &str) {
        let snap = log.latest_snapshot().unwrap().map_or(0, |s| s.lsn);
        assert_eq!(snap, self.snapshot, "{what}: snapshot");
        let last = log.next_lsn() - 1;
        assert!(
            last >= min_last,
            "{what}: log ends at {last}, records up to {min_last} were intact"
        );
        let mut expect = snap + 1;
        for r in log.read_from(snap + 1).unwrap() {
            let r = r.unwrap_or_else(|e| panic!("{what}: read: {e}"));
            assert_eq!(r.lsn, expect, "{what}: contiguous");
            assert_eq!(
                Some(&r.payload().to_vec()),
                self.records.get(&r.lsn),
                "{what}: LSN {} content",
                r.lsn
            );
            expect += 1;
        }
        assert_eq!(expect, last + 1, "{what}: reads reach the end");
    }

    /// The read-only reader never panics and never yields a wrong record.
    fn check_reader(&self, sim: &SimStorage, what: &str) {
        if let Ok(r) = LogReader::open_with(Arc::new(sim.clone()), DIR) {
            for rec in r.iter_from(0).flatten() {
                assert_eq!(
                    Some(&rec.payload().to_vec()),
                    self.records.get(&rec.lsn),
                    "{what}: reader LSN {}",
                    rec.lsn
                );
            }
        }
    }

    fn flip_bit(&self, f: &Path, bit: usize) {
        let byte = (bit / 8) as u64;
        let what = format!("flip bit {bit} of {}", f.display());
        let sim = self.image();
        let old = sim.read(f).unwrap()[byte as usize];
        sim.poke(f, byte, &[old ^ (1 << (bit % 8))]).unwrap();
        self.check_reader(&sim, &what);
        let is_snapshot = f.extension().is_some_and(|e| e == "snap");
        let damaged = self.record_at(f, byte);
        let r = Log::open_with(Arc::new(sim), DIR, opts(self.preallocate));
        match r {
            Ok(log) => {
                // Accepted: the flip hit bits nobody reads (padding, snapshot
                // reserved bytes), or a torn tail was cut in the last segment.
                let min_last = if is_snapshot || !self.is_last(f) {
                    *self.records.keys().last().unwrap()
                } else {
                    damaged.map_or(0, |d| d.3 - 1).max(
                        self.locs
                            .iter()
                            .filter(|l| l.0 != *f)
                            .map(|l| l.3)
                            .max()
                            .unwrap_or(0),
                    )
                };
                let min_last = if !is_snapshot && self.is_last(f) && damaged.is_none() && byte >= 32
                {
                    // Garbage after the end: a torn tail with nothing lost.
                    *self.records.keys().last().unwrap()
                } else {
                    min_last
                };
                if let Some(d) = damaged {
                    assert!(
                        !self.proven(f, d.3),
                        "{what}: damage to LSN {} was cut as a torn tail, but a later record proves it durable",
                        d.3
                    );
                }
                self.check_ok(&log, min_last.max(self.snapshot), &what);
            }
            Err(Error::Corruption {
                segment,
                offset,
                reason,
            }) => {
                assert_eq!(
                    segment, f,
                    "{what}: corruption reported in the wrong file ({reason})"
                );
                if is_snapshot {
                    assert!(
                        [0, 16, 24, 32].contains(&offset),
                        "{what}: snapshot offset {offset}"
                    );
                } else if byte < 32 {
                    assert_eq!(offset, 0, "{what}: header damage ({reason})");
                } else {
                    let start = damaged.map(|d| d.1);
                    // Damage in zeros past the end of a sealed segment is reported there.
                    assert!(
                        start == Some(offset) || (damaged.is_none() && offset <= byte),
                        "{what}: reported at {offset}, damaged record starts at {start:?} ({reason})"
                    );
                }
            }
            Err(Error::BadMagic { path }) => {
                assert_eq!(path, f, "{what}");
                assert!(byte < 8, "{what}: BadMagic for a flip outside the magic");
            }
            Err(Error::UnsupportedVersion { path, .. }) => {
                // The snapshot checks its version before its checksum.
                assert!(
                    is_snapshot && path == f && (8..12).contains(&byte),
                    "{what}: UnsupportedVersion"
                );
            }
            Err(e) => panic!("{what}: unexpected error {e}"),
        }
    }

    fn truncate(&self, f: &Path, len: u64) {
        let what = format!("truncate {} to {len}", f.display());
        let sim = self.image();
        sim.chop(f, len).unwrap();
        self.check_reader(&sim, &what);
        let is_snapshot = f.extension().is_some_and(|e| e == "snap");
        let r = Log::open_with(Arc::new(sim), DIR, opts(self.preallocate));
        if self.is_last(f) {
            // A short last segment is exactly what a torn final write leaves.
            let log = r.unwrap_or_else(|e| panic!("{what}: {e}"));
            let min_last = self
                .locs
                .iter()
                .filter(|l| l.0 != *f || (len >= 32 && l.2 <= len))
                .map(|l| l.3)
                .max()
                .unwrap_or(0);
            self.check_ok(&log, min_last, &what);
            assert_eq!(
                log.next_lsn() - 1,
                min_last,
                "{what}: nothing beyond the cut"
            );
            return;
        }
        let fully_zero_cut = self.files.iter().find(|x| x.0 == f).unwrap().1[len as usize..]
            .iter()
            .all(|&b| b == 0);
        match r {
            Ok(log) => {
                assert!(
                    fully_zero_cut,
                    "{what}: a truncated sealed segment was accepted"
                );
                self.check_ok(&log, *self.records.keys().last().unwrap(), &what);
            }
            Err(Error::Corruption {
                segment,
                offset,
                reason,
            }) => {
                let idx = self.segments.iter().position(|p| p == f);
                let next = idx.and_then(|i| self.segments.get(i + 1));
                assert!(
                    segment == f || (Some(&segment) == next && offset == 0),
                    "{what}: corruption reported at {}:{offset} ({reason})",
                    segment.display()
                );
                let _ = is_snapshot;
            }
            Err(e) => panic!("{what}: unexpected error {e}"),
        }
    }
}

/// Flips bits of every file: every bit of headers (segment, record,
/// snapshot), padding and unused space, and every `payload_stride`-th bit of
/// record payloads (all payload bits are covered alike by the checksum).
/// Only flips whose index is `shard` modulo `shards` run here.
fn flip_sweep(preallocate: bool, payload_stride: usize, shard: usize, shards: usize) {
    let j = build(preallocate);
    let mut n = 0;
    let mut index = 0;
    for (f, bytes) in &j.files {
        for bit in 0..bytes.len() * 8 {
            let byte = (bit / 8) as u64;
            let in_payload = j
                .record_at(f, byte)
                .is_some_and(|r| byte >= r.1 + 28 && byte >= 32);
            if in_payload && bit % payload_stride != 0 {
                continue;
            }
            index += 1;
            if index % shards != shard {
                continue;
            }
            j.flip_bit(f, bit);
            n += 1;
        }
    }
    eprintln!("{n} bit flips (preallocate={preallocate}, shard {shard}/{shards})");
    assert!(n > 1000, "only {n} flips");
}

fn truncation_sweep(preallocate: bool, stride: usize) {
    let j = build(preallocate);
    for (f, bytes) in &j.files {
        let mut len = 0;
        while len < bytes.len() {
            j.truncate(f, len as u64);
            len += stride;
        }
    }
}

// Every header bit and every 5th payload bit, in two halves so the harness
// runs them on two cores.
#[test]
fn bit_flips_of_a_compact_journal_half_0() {
    flip_sweep(false, 5, 0, 2);
}

#[test]
fn bit_flips_of_a_compact_journal_half_1() {
    flip_sweep(false, 5, 1, 2);
}

#[test]
fn bit_flips_of_a_preallocated_journal() {
    // Mostly zeros past the end: sample them.
    flip_sweep(true, 5, 0, 9);
}

#[test]
fn every_truncation_of_a_compact_journal() {
    truncation_sweep(false, 1);
}

#[test]
fn sampled_truncations_of_a_preallocated_journal() {
    truncation_sweep(true, 7);
}

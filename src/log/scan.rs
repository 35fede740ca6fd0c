//! Recovery scan: reads every segment of a directory, checks every header and
//! record, and decides where the log ends and whether damage is a torn tail or
//! corruption. It never modifies anything; [`crate::log::Log::open`] applies
//! the decision, `wal-inspect` reports it.
//!
//! # Decision table (see `docs/recovery.md`)
//!
//! | what is found at the first position that is not a valid next record | decision |
//! |---|---|
//! | only zero bytes up to the end of the file | clean end |
//! | damage in the **last** segment, and no later record proves it was synced | torn tail: cut |
//! | damage anywhere, and a later valid record (salted checksum, LSN plausible for its offset) has `synced_lsn >=` the damaged LSN | corruption |
//! | damage (any non-zero byte past the end) in a **sealed** segment | corruption |
//! | next segment does not start at the expected LSN | corruption (LSN gap) |
//! | bad header in the **last** segment, nothing but zeros after it | torn segment creation: remove |
//! | bad header in a sealed segment, or records after a bad header | corruption |
//! | wrong magic / newer version | typed error |
//!
//! A sealed segment is always fully synced before its successor is created,
//! and a record's `synced_lsn` only counts syncs that completed, which is why
//! these rules never call acknowledged data a torn tail and never call an
//! unacknowledged tail corruption, except in one case no format can decide:
//! damage to the very last synced records with nothing written after them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::{Error, Result};
use super::record::{decode_at, encoded_len, Codec, Decoded, Lsn, ALIGN};
use super::segment::{decode_header, segment_files, HeaderProblem, SEGMENT_HEADER};
use super::storage::{FileBytes, Storage};
use super::window::Source;

/// One segment as found by the scan.
#[derive(Debug, Clone)]
pub struct SegmentScan {
    /// Segment file.
    pub path: PathBuf,
    /// LSN of its first record (from the header).
    pub first_lsn: Lsn,
    /// Number of valid records.
    pub records: u64,
    /// Offset just past the last valid record (where the next append goes).
    pub end_offset: u64,
    /// File length.
    pub file_len: u64,
    /// Segment format version (from the header).
    pub version: u32,
    /// How its records are checksummed (from the header; the format is
    /// private to the log, `version` is the public face of it).
    pub(crate) codec: Codec,
    /// `synced_lsn` of its last valid record (0 when it has none): every
    /// LSN up to it was proven durable by whoever wrote that record.
    pub last_synced_lsn: Lsn,
}

impl SegmentScan {
    /// LSN of its last valid record, if it has any.
    pub fn last_lsn(&self) -> Option<Lsn> {
        (self.records > 0).then(|| self.first_lsn + self.records - 1)
    }
}

/// An unacknowledged, partially written tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Segment file holding it.
    pub segment: PathBuf,
    /// Offset where the valid log ends.
    pub offset: u64,
    /// Non-zero bytes after that offset (what a cut removes).
    pub bytes: u64,
    /// True when the whole segment is a torn creation (bad header, no data).
    pub whole_segment: bool,
}

/// Damage to data that was (or may have been) acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// Segment file.
    pub segment: PathBuf,
    /// Byte offset in it.
    pub offset: u64,
    /// What was found.
    pub reason: String,
    /// LSN that was expected at that place.
    pub expected_lsn: Lsn,
}

impl Corruption {
    /// As a typed error.
    pub fn to_error(&self) -> Error {
        Error::Corruption {
            segment: self.segment.clone(),
            offset: self.offset,
            reason: self.reason.clone(),
        }
    }
}

/// Result of scanning a journal directory.
#[derive(Debug, Clone, Default)]
pub struct ScanReport {
    /// Segments holding the valid log, in LSN order (segments after a
    /// corruption are not included; see `dropped_segments`).
    pub segments: Vec<SegmentScan>,
    /// A torn tail found at the end, if any.
    pub torn_tail: Option<TornTail>,
    /// The first corruption found, if any. The valid log stops before it.
    pub corruption: Option<Corruption>,
    /// Segments after the corruption point (what a lossy repair would remove).
    pub dropped_segments: Vec<PathBuf>,
    /// Bytes in the valid records (headers and padding included).
    pub record_bytes: u64,
}

impl ScanReport {
    /// LSN of the first record, if any.
    pub fn first_lsn(&self) -> Option<Lsn> {
        self.segments
            .iter()
            .find(|s| s.records > 0)
            .map(|s| s.first_lsn)
    }
    /// LSN of the last valid record, if any.
    pub fn last_lsn(&self) -> Option<Lsn> {
        self.segments.iter().rev().find_map(|s| s.last_lsn())
    }
    /// Total valid records.
    pub fn records(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum()
    }
    /// The LSN the next append gets.
    pub fn next_lsn(&self) -> Option<Lsn> {
        self.segments.last().map(|s| s.first_lsn + s.records)
    }
}

/// Offset just past the last non-zero byte at or after `from`, or `from`.
///
/// Compares 4 KiB blocks against a zero block (a `memcmp`), because the tail
/// of a preallocated segment is megabytes of zeros scanned at every open.
pub fn nonzero_end(b: &[u8], from: usize) -> usize {
    const BLOCK: usize = 4096;
    static ZEROS: [u8; BLOCK] = [0; BLOCK];
    let from = from.min(b.len());
    let mut end = b.len();
    while end > from {
        let start = end.saturating_sub(BLOCK).max(from);
        let block = &b[start..end];
        if block != &ZEROS[..block.len()] {
            let last = block
                .iter()
                .rposition(|&x| x != 0)
                .expect("block is not all zeros");
            return start + last + 1;
        }
        end = start;
    }
    from
}

/// Looks past damage at `from` (where LSN `expected` should start) for a
/// valid record proving that `expected` was synced (its `synced_lsn >=
/// expected`). Bounded work on any input.
///
/// A candidate counts only if it cannot be bytes inside an earlier record:
/// its checksum must verify with the segment's `codec` (in a version-2
/// segment that needs the segment's random salt, which payload bytes cannot
/// know), and its LSN must be plausible for its position — records
/// `expected..lsn` need at least `encoded_len(0)` bytes each, so a record at
/// `pos` can hold at most LSN `expected + (pos - from) / encoded_len(0)`.
/// `b` may be the damaged region only; the work budget is that of the whole
/// segment (`segment_len` bytes), so the classification does not depend on
/// how much of the segment was read.
fn acknowledged_after(
    b: &FileBytes,
    from: usize,
    end: usize,
    expected: Lsn,
    codec: Codec,
    segment_len: u64,
) -> Option<(u64, Lsn)> {
    let mut budget: u64 = 2 * segment_len.max(b.len() as u64) + (1 << 20);
    let mut pos = from + ALIGN;
    while pos < end {
        let h = &b[pos..];
        if h.len() >= 24 {
            let len = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")) as u64;
            let lsn = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
            let synced = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
            let most = expected.saturating_add(((pos - from) / encoded_len(0)) as u64);
            if lsn > expected
                && lsn <= most
                && synced >= expected
                && synced < lsn
                && len <= h.len() as u64
            {
                if budget < len {
                    // Too much adversarial data to classify cheaply: treat the
                    // damage as corruption rather than guess it away.
                    return Some((pos as u64, lsn));
                }
                budget -= len;
                if let Decoded::Valid { record, .. } = decode_at(b, pos, codec) {
                    return Some((pos as u64, record.lsn));
                }
            }
        }
        pos += ALIGN;
    }
    None
}

/// Scans the segments of `dir`. `expected_first` is the LSN the log must
/// contain next (one past the snapshot), if a snapshot exists.
pub fn scan_dir(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    expected_first: Option<Lsn>,
) -> Result<ScanReport> {
    let listing = storage
        .list_dir(dir)
        .map_err(|e| Error::io("list directory", dir, e))?;
    let files = segment_files(listing);
    let mut report = ScanReport::default();
    let count = files.len();
    let mut expected: Option<Lsn> = None;

    for (i, (name_lsn, path)) in files.into_iter().enumerate() {
        let last = i + 1 == count;
        if report.corruption.is_some() {
            report.dropped_segments.push(path);
            continue;
        }
        // The last segment is live: the owner appends to it and recovery
        // zeroes its torn tail while we read, so read it with positional
        // reads, one bounded window at a time (a read error is an error,
        // never a SIGBUS; memory does not grow with the segment size).
        // Sealed segments are never shrunk, so mapping them is safe.
        let read = if last {
            Source::live(storage.clone(), &path, u64::MAX)
        } else {
            storage.map(&path).map(Source::Mapped)
        };
        let mut src = match read {
            Ok(b) => b,
            // Removed by the owner's compaction between listing and mapping.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && report.segments.is_empty() => {
                continue
            }
            Err(e) => return Err(Error::io("read segment", &path, e)),
        };
        let io = |e| Error::io("read segment", &path, e);
        let corrupt = |offset: u64, reason: String, expected_lsn: Lsn| Corruption {
            segment: path.clone(),
            offset,
            reason,
            expected_lsn,
        };
        let header = src.bytes(0, SEGMENT_HEADER as u64).map_err(io)?;
        let (first_lsn, codec, version) = match decode_header(&path, header) {
            Ok(h) => (h.first_lsn, h.codec, h.version),
            Err(HeaderProblem::Fatal(e)) => return Err(e),
            Err(HeaderProblem::Damaged(why)) => {
                let header_end = (SEGMENT_HEADER as u64).min(src.len());
                let data_end = src.nonzero_end(header_end).map_err(io)?;
                if last && data_end <= SEGMENT_HEADER as u64 {
                    report.torn_tail = Some(TornTail {
                        segment: path.clone(),
                        offset: 0,
                        bytes: src.count_nonzero(0, header_end).map_err(io)?,
                        whole_segment: true,
                    });
                } else {
                    report.corruption =
                        Some(corrupt(0, why.to_string(), expected.unwrap_or(name_lsn)));
                }
                continue;
            }
        };
        if first_lsn != name_lsn {
            report.corruption = Some(corrupt(
                0,
                format!("header says first LSN {first_lsn}, file name says {name_lsn}"),
                expected.unwrap_or(name_lsn),
            ));
            continue;
        }
        match expected {
            Some(e) if e != first_lsn => {
                report.corruption = Some(corrupt(
                    0,
                    format!("LSN gap: expected the segment to start at LSN {e}, it starts at {first_lsn}"),
                    e,
                ));
                continue;
            }
            None => {
                if let Some(e) = expected_first {
                    if first_lsn > e {
                        report.corruption = Some(corrupt(
                            0,
                            format!("LSN gap after snapshot: expected LSN {e}, first segment starts at {first_lsn}"),
                            e,
                        ));
                        continue;
                    }
                }
            }
            _ => {}
        }

        let mut seg = SegmentScan {
            path: path.clone(),
            first_lsn,
            records: 0,
            end_offset: SEGMENT_HEADER as u64,
            file_len: src.len(),
            version,
            codec,
            last_synced_lsn: 0,
        };
        let mut pos = SEGMENT_HEADER;
        let mut next = first_lsn;
        let stop_reason: Option<String> = loop {
            match src.decode(pos as u64, codec).map_err(io)? {
                Decoded::Valid {
                    record,
                    next: after,
                } if record.lsn == next => {
                    report.record_bytes += (after - pos) as u64;
                    seg.last_synced_lsn = record.synced_lsn;
                    pos = after;
                    next += 1;
                    seg.records += 1;
                }
                Decoded::Valid { record, .. } => {
                    break Some(format!("record has LSN {}, expected {next}", record.lsn));
                }
                Decoded::Zero => break None,
                Decoded::Invalid(why) => break Some(why.to_string()),
            }
        };
        seg.end_offset = pos as u64;
        let data_end = src.nonzero_end(pos as u64).map_err(io)? as usize;
        if data_end > pos {
            let why = stop_reason.unwrap_or_else(|| "zero record header followed by data".into());
            // The look-ahead needs random access: the damaged region only
            // (records are aligned, so offsets relative to `pos` keep the
            // alignment and the plausibility bound).
            // The region ends at the last non-zero byte; the record there may
            // still have zero padding up to the next alignment.
            let padded_end = (data_end.next_multiple_of(ALIGN) as u64).min(src.len());
            let damaged = src.region(pos as u64, padded_end).map_err(io)?;
            let proof = acknowledged_after(&damaged, 0, data_end - pos, next, codec, src.len())
                .map(|(at, lsn)| (at + pos as u64, lsn));
            if let Some((at, lsn)) = proof {
                report.corruption = Some(corrupt(
                    pos as u64,
                    format!("{why}; record LSN {lsn} at offset {at} proves LSN {next} was acknowledged durable"),
                    next,
                ));
            } else if !last {
                report.corruption = Some(corrupt(
                    pos as u64,
                    format!("{why} in a sealed segment (expected LSN {next})"),
                    next,
                ));
            } else {
                report.torn_tail = Some(TornTail {
                    segment: path.clone(),
                    offset: pos as u64,
                    bytes: (data_end - pos) as u64,
                    whole_segment: false,
                });
            }
        }
        expected = Some(next);
        report.segments.push(seg);
    }
    Ok(report)
}

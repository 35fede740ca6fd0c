//! Reading one segment file on its own, by the log's own rules: what
//! `wal-inspect` needs for files the ordered scan ([`super::scan`]) does not
//! read (segments after a corruption) and for the records a lossy cut would
//! lose. Read-only, bounded work on any input, never a panic.
//!
//! Nothing outside the log decodes headers or records: callers get LSNs and
//! [`Record`]s, never offsets into the format.

use std::path::Path;

use super::record::{decode_at, Decoded, Lsn, Record, ALIGN, RECORD_HEADER};
use super::scan::nonzero_end;
use super::segment::{decode_header, SEGMENT_HEADER};
use super::storage::FileBytes;

/// The valid start of one segment: its header and the consecutive valid
/// records after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SegmentPrefix {
    /// First LSN from a valid header; `None` when the header is damaged.
    pub first_lsn: Option<Lsn>,
    /// Consecutive valid records from the start of the segment.
    pub records: u64,
    /// LSN of the last of them.
    pub last_lsn: Option<Lsn>,
}

/// Reads the header of the segment `bytes` (from `path`) and the valid,
/// consecutive records after it.
pub(crate) fn segment_prefix(path: &Path, bytes: &FileBytes) -> SegmentPrefix {
    let mut p = SegmentPrefix::default();
    let Ok(header) = decode_header(path, bytes) else {
        return p;
    };
    p.first_lsn = Some(header.first_lsn);
    let mut pos = SEGMENT_HEADER;
    let mut next = header.first_lsn;
    while let Decoded::Valid {
        record,
        next: after,
    } = decode_at(bytes, pos, header.codec)
    {
        if record.lsn != next {
            break;
        }
        p.records += 1;
        p.last_lsn = Some(next);
        next += 1;
        pos = after;
    }
    p
}

/// Valid records found in a segment at or after a byte offset, skipping
/// damage (what a lossy cut at that offset would lose besides the damaged
/// record).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RecordsAfter {
    /// Valid records found.
    pub records: u64,
    /// LSN of the first of them.
    pub first: Option<Lsn>,
    /// LSN of the last of them.
    pub last: Option<Lsn>,
    /// The search stopped at its work budget: there may be more.
    pub exhausted: bool,
}

/// Looks for valid records in the segment `bytes` that start after byte
/// offset `past` (at every record alignment, skipping damage), calling `each`
/// for every one found. `past = 0` searches the whole segment.
/// Records are checked as the segment's header says; without a readable
/// header none can be trusted, and none is reported. Bounded work on
/// adversarial bytes.
pub(crate) fn records_after(
    bytes: &FileBytes,
    past: u64,
    mut each: impl FnMut(&Record),
) -> RecordsAfter {
    let mut out = RecordsAfter::default();
    let b: &[u8] = bytes;
    let Ok(header) = decode_header(Path::new("segment"), b) else {
        return out;
    };
    // At most this many bytes checksummed.
    let mut budget = 2 * b.len() as u64 + (1 << 20);
    let end = nonzero_end(b, 0);
    let Some(mut pos) = usize::try_from(past)
        .ok()
        .and_then(|p| p.checked_add(1))
        .and_then(|p| p.checked_next_multiple_of(ALIGN))
        .map(|p| p.max(SEGMENT_HEADER))
    else {
        return out;
    };
    while pos.saturating_add(RECORD_HEADER) <= end {
        let len = u32::from_le_bytes(b[pos + 4..pos + 8].try_into().expect("4 bytes")) as u64;
        if (pos + RECORD_HEADER) as u64 + len > b.len() as u64 {
            pos += ALIGN; // cannot be a record: no checksum work
            continue;
        }
        if len > budget {
            out.exhausted = true;
            break;
        }
        budget -= len.min(b.len() as u64);
        match decode_at(bytes, pos, header.codec) {
            Decoded::Valid { record, next } => {
                out.records += 1;
                out.first.get_or_insert(record.lsn);
                out.last = Some(record.lsn);
                each(&record);
                pos = next;
            }
            _ => pos += ALIGN,
        }
    }
    out
}

/// Non-zero bytes at or after `offset` (what a cut there removes).
pub(crate) fn nonzero_bytes_after(bytes: &[u8], offset: u64) -> u64 {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    (nonzero_end(bytes, start) - start) as u64
}

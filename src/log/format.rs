//! The log's on-disk names and magic numbers, in one place: segment and
//! snapshot file names, magic numbers and format version, the owner-lock
//! file, and the names recovery and `repair` leave behind. The log writes
//! them; `wal-inspect` recognises them through this module and nothing else.
//!
//! Byte layouts (headers, records, snapshots) are in [`super::segment`],
//! [`super::record`] and [`super::snapshot`]; `docs/format.md` is the
//! specification of all of it. Crate-private: the format is not part of the
//! public API.

use std::path::{Path, PathBuf};

use super::record::Lsn;

pub(crate) use super::segment::{parse_segment_name, SEGMENT_MAGIC};

/// Magic bytes at the start of every snapshot file.
pub(crate) const SNAPSHOT_MAGIC: &[u8; 8] = b"AGWALSNP";

/// The owner-lock file inside a log directory: `flock`ed by the owning
/// process, holding its pid in ASCII (informational only).
pub(crate) const LOCK_FILE: &str = "LOCK";

/// Snapshot files are `snap-<lsn:020>.snap`.
const SNAPSHOT_PREFIX: &str = "snap-";
const SNAPSHOT_SUFFIX: &str = ".snap";
/// A snapshot being written is `snap-<lsn:020>.tmp` until it is renamed.
const SNAPSHOT_TMP_SUFFIX: &str = ".tmp";
/// Bytes cut from a torn tail are saved as `cut-<segment stem>-<offset>[.n].bin`.
const CUT_PREFIX: &str = "cut-";
const CUT_SUFFIX: &str = ".bin";
/// A segment set aside by a lossy recovery or repair gets this extension
/// (`<first_lsn:020>.wal.dropped`).
pub(crate) const DROPPED_EXT: &str = "wal.dropped";

/// A spare segment being prepared, or ready to become the next segment, is
/// `segment-<n>.spare` (see [`super::rotation`]): zeros only, never a record.
const SPARE_PREFIX: &str = "segment-";
const SPARE_SUFFIX: &str = ".spare";

/// The file name of spare segment number `n`.
pub(crate) fn spare_name(n: u64) -> String {
    format!("{SPARE_PREFIX}{n}{SPARE_SUFFIX}")
}

/// The number of a spare segment's file name, if it is one.
pub(crate) fn parse_spare_name(path: &Path) -> Option<u64> {
    let n = name(path)?
        .strip_prefix(SPARE_PREFIX)?
        .strip_suffix(SPARE_SUFFIX)?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

/// The file name of the snapshot covering the log up to `lsn`.
pub(crate) fn snapshot_name(lsn: Lsn) -> String {
    format!("{SNAPSHOT_PREFIX}{lsn:020}{SNAPSHOT_SUFFIX}")
}

/// The temporary name a snapshot is written under before its rename.
pub(crate) fn snapshot_tmp_name(lsn: Lsn) -> String {
    format!("{SNAPSHOT_PREFIX}{lsn:020}{SNAPSHOT_TMP_SUFFIX}")
}

fn name(p: &Path) -> Option<&str> {
    p.file_name()?.to_str()
}

/// The LSN of a snapshot file name (`snap-<20 digits>.snap`), if it is one.
pub(crate) fn parse_snapshot_name(path: &Path) -> Option<Lsn> {
    let stem = name(path)?
        .strip_prefix(SNAPSHOT_PREFIX)?
        .strip_suffix(SNAPSHOT_SUFFIX)?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

/// True for a segment file name (`<20 digits>.wal`).
pub(crate) fn is_segment_name(p: &Path) -> bool {
    parse_segment_name(p).is_some()
}

/// True for a snapshot file name (`snap-*.snap`).
pub(crate) fn is_snapshot_name(p: &Path) -> bool {
    name(p).is_some_and(|n| n.starts_with(SNAPSHOT_PREFIX) && n.ends_with(SNAPSHOT_SUFFIX))
}

/// True for a snapshot being written, or abandoned mid-write (`snap-*.tmp`).
pub(crate) fn is_snapshot_tmp_name(p: &Path) -> bool {
    name(p).is_some_and(|n| n.starts_with(SNAPSHOT_PREFIX) && n.ends_with(SNAPSHOT_TMP_SUFFIX))
}

/// True for the owner-lock file.
pub(crate) fn is_lock_name(p: &Path) -> bool {
    name(p) == Some(LOCK_FILE)
}

/// True for the files earlier recoveries, repairs and compactions leave
/// behind: saved cuts (`cut-*.bin`), set-aside segments (`*.dropped`) and
/// temporary snapshots (`*.tmp`). Readers ignore them.
pub(crate) fn is_leftover_name(p: &Path) -> bool {
    name(p).is_some_and(|n| {
        (n.starts_with(CUT_PREFIX) && n.ends_with(CUT_SUFFIX))
            || n.ends_with(".dropped")
            || n.ends_with(SNAPSHOT_TMP_SUFFIX)
    })
}

/// Where a segment set aside by a lossy recovery or repair goes.
pub(crate) fn dropped_path(segment: &Path) -> PathBuf {
    segment.with_extension(DROPPED_EXT)
}

/// True when `bytes` start with the segment magic.
pub(crate) fn has_segment_magic(bytes: &[u8]) -> bool {
    bytes.get(..SEGMENT_MAGIC.len()) == Some(&SEGMENT_MAGIC[..])
}

/// True when `bytes` start with the snapshot magic.
pub(crate) fn has_snapshot_magic(bytes: &[u8]) -> bool {
    bytes.get(..SNAPSHOT_MAGIC.len()) == Some(&SNAPSHOT_MAGIC[..])
}

/// True when `bytes` (a lock file's content) are what an owner writes there:
/// its pid in ASCII decimal.
pub(crate) fn is_owner_pid(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|s| s.trim().parse::<u32>().is_ok())
}

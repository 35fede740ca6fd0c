//! `verify`: checks every segment header, every record's checksum, length
//! and LSN order, and the snapshot's checksum. A torn tail is reported but is
//! not corruption (it is what a crash during an unacknowledged append leaves).

use serde::Serialize;

use super::error::{Error, Result};
use super::open::{
    glance_segment, holds_log_files, CorruptionInfo, Inspection, OpenOptions, SegmentGlance,
    SnapshotInfo, TornTailInfo,
};
use super::queue::queue_dir;
use crate::log::Lsn;
use std::path::Path;

/// The `verify` report.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// True when no corruption was found (a torn tail is allowed).
    pub ok: bool,
    /// Segments checked (the valid log).
    pub segments: u64,
    /// Records whose checksum and LSN were checked and found valid.
    pub records: u64,
    /// Bytes of segment files read.
    pub bytes: u64,
    /// First and last valid LSN.
    pub first_lsn: Option<Lsn>,
    /// Last valid LSN.
    pub last_lsn: Option<Lsn>,
    /// The snapshot checked, if any (a damaged one is in `problems`).
    pub snapshot: Option<SnapshotInfo>,
    /// The torn tail, if any (not an error).
    pub torn_tail: Option<TornTailInfo>,
    /// The first corruption found (segment, offset, reason), if any.
    pub corruption: Option<CorruptionInfo>,
    /// Every damaged place found, earliest first.
    pub problems: Vec<CorruptionInfo>,
    /// Segments after the first corruption, read on their own: what they
    /// still hold (what a lossy repair would set aside).
    pub unreachable: Vec<SegmentGlance>,
    /// The work queue's log (`<JOURNAL_DIR>/queue/`), verified the same way,
    /// when the journal has one. Its corruption makes `ok` false too.
    pub queue: Option<Box<VerifyReport>>,
}

impl VerifyReport {
    /// The exit code of `wal-inspect verify`: 0 clean, 1 corruption.
    pub fn exit_code(&self) -> i32 {
        if self.ok {
            0
        } else {
            1
        }
    }
}

/// Verifies an opened journal and, when there is one, its work queue's log.
/// (The scan that [`Inspection::open`] ran already checked every header and
/// record; this collects the verdict and reads the unreachable segments on
/// their own.)
pub fn verify(insp: &Inspection) -> Result<VerifyReport> {
    let mut report = verify_log(insp)?;
    let qdir = queue_dir(insp.dir());
    if insp.storage().is_dir(&qdir).unwrap_or(false) {
        match Inspection::open_with(insp.storage().clone(), &qdir, OpenOptions::default()) {
            Ok(q) => {
                let qr = verify_log(&q)?;
                report.ok &= qr.ok;
                report.queue = Some(Box::new(qr));
            }
            // A queue directory without a log yet: nothing to verify. One
            // whose files are named like a log but none is one is bad input,
            // as `queue` says too.
            Err(Error::NotAJournal { .. }) if !holds_log_files(insp.storage().as_ref(), &qdir) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

fn verify_log(insp: &Inspection) -> Result<VerifyReport> {
    let scan = insp.reader().scan();
    let f = insp.findings();
    let mut unreachable = Vec::new();
    for s in &f.unreachable_segments {
        unreachable.push(glance_segment(insp.storage().as_ref(), Path::new(s))?);
    }
    Ok(VerifyReport {
        ok: f.corruption.is_empty(),
        segments: scan.segments.len() as u64,
        records: scan.records(),
        bytes: scan.segments.iter().map(|s| s.file_len).sum(),
        first_lsn: scan.first_lsn(),
        last_lsn: scan.last_lsn(),
        snapshot: f.snapshot.clone(),
        torn_tail: f.torn_tail.clone(),
        corruption: f.corruption.first().cloned(),
        problems: f.corruption.clone(),
        unreachable,
        queue: None,
    })
}

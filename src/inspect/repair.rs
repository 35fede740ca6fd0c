//! `repair`: the only command that writes. It takes the journal's owner lock
//! (so it refuses to run while the owning process is alive), then lets the
//! log's own recovery do the work:
//!
//! * a **torn tail** (never acknowledged) is cut; the cut bytes are saved in a
//!   side file `cut-<segment>-<offset>.bin` first;
//! * **corruption** of acknowledged data is refused unless `--lossy`; with
//!   `--lossy` the log is truncated at the first damaged record, later
//!   segments are set aside as `*.wal.dropped`, and the report lists exactly
//!   which LSNs, bytes and segments are no longer part of the log;
//! * a damaged **snapshot** is always refused: no repair can rebuild it.
//!
//! `--dry-run` computes the same plan from a read-only scan and changes
//! nothing (it does not even take the lock; it only probes whether the
//! journal is in use).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::error::{Error, Result};
use super::open::{
    display, glance_segment, is_segment, is_snapshot, CorruptionInfo, Inspection, OpenOptions,
    SegmentGlance, TornTailInfo,
};
use super::semantics;
use crate::log::format::{dropped_path, LOCK_FILE};
use crate::log::probe::{nonzero_bytes_after, records_after, RecordsAfter};
use crate::log::storage::LockFailure;
use crate::log::{self, FsStorage, Log, LogOptions, Lsn, RecoveryMode, Storage};
use std::collections::BTreeMap;

/// Options of [`repair`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RepairOptions {
    /// Report what would be done; change nothing.
    pub dry_run: bool,
    /// Allow truncating at mid-log corruption (losing acknowledged records).
    pub lossy: bool,
}

/// What repair did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RepairAction {
    /// The journal is clean.
    NothingToDo,
    /// A torn tail was cut (its bytes saved).
    CutTornTail,
    /// A segment whose creation was torn was removed (its bytes saved).
    RemovedTornSegment,
    /// The log was truncated at corruption (`--lossy`).
    LossyTruncate,
    /// Corruption was found and repair refused to touch it; nothing changed.
    Refused,
}

/// The `repair` report.
#[derive(Debug, Clone, Serialize)]
pub struct RepairReport {
    /// The journal directory.
    pub dir: String,
    /// True when nothing was changed on purpose.
    pub dry_run: bool,
    /// True when `--lossy` was given.
    pub lossy: bool,
    /// What was (or would be) done.
    pub action: RepairAction,
    /// The torn tail found, if any.
    pub torn_tail: Option<TornTailInfo>,
    /// The corruption found, if any.
    pub corruption: Option<CorruptionInfo>,
    /// Where the cut bytes were saved (after a real repair).
    pub cut_saved_to: Option<String>,
    /// With corruption: the first LSN that is (or would be) lost.
    pub dropped_from_lsn: Option<Lsn>,
    /// With corruption: bytes (non-zero) cut from the damaged segment.
    pub dropped_bytes: u64,
    /// With corruption: segments set aside as `*.wal.dropped`, with what
    /// they still held.
    pub dropped_segments: Vec<SegmentGlance>,
    /// With corruption: readable records that are (or would be) lost too,
    /// after the damaged one and in set-aside segments.
    pub readable_records_lost: u64,
    /// With corruption: ids of the units that have readable records in the
    /// part that is (or would be) lost.
    pub lost_units: Vec<String>,
    /// Records in the log after the repair.
    pub records_kept: u64,
    /// Last LSN in the log after the repair.
    pub last_lsn_kept: Option<Lsn>,
    /// Whether the journal verified clean after the repair (None on a dry run).
    pub verified_after: Option<bool>,
    /// Pid of the process holding the journal, when a dry run found it in use.
    pub locked_by: Option<u32>,
    /// What happened, in plain words, one line each.
    pub messages: Vec<String>,
}

impl RepairReport {
    /// Exit code of `wal-inspect repair`: 1 when refused, else 0.
    pub fn exit_code(&self) -> i32 {
        if self.action == RepairAction::Refused {
            1
        } else {
            0
        }
    }
}

/// Repairs the journal in `dir` on the real file system.
pub fn repair(dir: impl AsRef<Path>, opts: RepairOptions) -> Result<RepairReport> {
    let dir = dir.as_ref();
    let mut report = repair_with(Arc::new(FsStorage), dir, opts)?;
    if opts.dry_run {
        if let Some(pid) = probe_lock(dir) {
            report.locked_by = pid.or(Some(0));
            report.messages.push(format!(
                "the journal is in use by another process{}: a real repair would be refused until it stops",
                pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
            ));
        }
    }
    Ok(report)
}

/// Repairs the journal in `dir` through any storage.
pub fn repair_with(
    storage: Arc<dyn Storage>,
    dir: impl AsRef<Path>,
    opts: RepairOptions,
) -> Result<RepairReport> {
    let dir = dir.as_ref().to_path_buf();
    let insp = Inspection::open_with(storage.clone(), &dir, OpenOptions::default())?;
    let mut report = plan(&insp, opts)?;
    if opts.dry_run || report.action == RepairAction::Refused {
        return Ok(report);
    }
    drop(insp);

    // A segment damaged at its header (for example a wrong magic number)
    // makes the log refuse to open even in lossy mode: set it and every
    // later segment aside first, under the owner lock.
    let garbage: Vec<PathBuf> = if report.corruption.as_ref().is_some_and(|c| c.offset == 0) {
        report
            .dropped_segments
            .iter()
            .map(|g| PathBuf::from(&g.segment))
            .collect()
    } else {
        Vec::new()
    };
    if !garbage.is_empty() {
        let lock = storage.lock_dir(&dir).map_err(|f| match f {
            LockFailure::Held { pid } => Error::Log(log::Error::Locked {
                dir: dir.clone(),
                pid,
            }),
            LockFailure::Io(e) => Error::io("lock", &dir.join(LOCK_FILE), e),
        })?;
        for p in &garbage {
            let to = dropped_path(p);
            storage
                .rename(p, &to)
                .map_err(|e| Error::io("set aside", p, e))?;
        }
        // The renames must be durable before the log is reopened and new
        // records may reuse those LSNs.
        storage
            .sync_dir(&dir)
            .map_err(|e| Error::io("sync directory", &dir, e))?;
        drop(lock);
    }

    let lopts = log_options(&insp_segment_sizes(storage.as_ref(), &dir), opts.lossy);
    let log = Log::open_with(storage.clone(), &dir, lopts)?;
    let open = log.open_report().clone();
    report.cut_saved_to = open.cut_saved_to.as_deref().map(display);
    report.records_kept = open.records;
    report.last_lsn_kept = log.next_lsn().checked_sub(1).filter(|&l| l > 0);
    log.close()?;
    if let Some(p) = &report.cut_saved_to {
        report
            .messages
            .push(format!("the cut bytes are saved in {p}"));
    }
    if let Some(why) = &open.cut_not_saved {
        // The cut went ahead (it needs no space); only the forensic copy is missing.
        report.messages.push(format!(
            "the cut was made, but the cut bytes could not be kept: {why}"
        ));
    }
    let after = Inspection::open_with(storage, &dir, OpenOptions::default())?;
    let clean = after.findings().corruption.is_empty() && after.findings().torn_tail.is_none();
    report.verified_after = Some(clean);
    report.messages.push(if clean {
        "the journal verifies clean now".into()
    } else {
        "the journal still has damage after the repair; run `wal-inspect verify`".into()
    });
    Ok(report)
}

fn plan(insp: &Inspection, opts: RepairOptions) -> Result<RepairReport> {
    let f = insp.findings();
    let scan = insp.reader().scan();
    // (cut, remove, truncate, are saved)
    let (cut, remove, truncate, saved) = if opts.dry_run {
        ("would cut", "would remove", "would truncate", "would be")
    } else {
        ("cut", "removed", "truncated", "were")
    };
    let mut r = RepairReport {
        dir: display(insp.dir()),
        dry_run: opts.dry_run,
        lossy: opts.lossy,
        action: RepairAction::NothingToDo,
        torn_tail: f.torn_tail.clone(),
        corruption: f.corruption.first().cloned(),
        cut_saved_to: None,
        dropped_from_lsn: None,
        dropped_bytes: 0,
        dropped_segments: Vec::new(),
        readable_records_lost: 0,
        lost_units: Vec::new(),
        records_kept: scan.records(),
        last_lsn_kept: scan.last_lsn(),
        verified_after: None,
        locked_by: None,
        messages: Vec::new(),
    };
    if let Some(c) = f.corruption.first() {
        if is_snapshot(Path::new(&c.segment)) {
            r.action = RepairAction::Refused;
            r.messages.push(format!(
                "the snapshot {} is damaged at offset {} ({}); the state it holds cannot be rebuilt from the log, restore it from a backup",
                c.segment, c.offset, c.reason
            ));
            return Ok(r);
        }
        r.dropped_from_lsn = c.expected_lsn.or_else(|| scan.next_lsn());
        let mut same_segment = RecordsAfter::default();
        let mut lost_units: BTreeMap<String, u64> = BTreeMap::new();
        if c.offset > 0 {
            let b = insp
                .storage()
                .read_prefix(Path::new(&c.segment), u64::MAX)
                .map_err(|e| Error::io("read", Path::new(&c.segment), e))?;
            r.dropped_bytes = nonzero_bytes_after(&b, c.offset);
            same_segment = records_after(&b, c.offset, |r| count_unit(r, &mut lost_units));
        }
        for s in &f.unreachable_segments {
            let p = Path::new(s);
            r.dropped_segments
                .push(glance_segment(insp.storage().as_ref(), p)?);
            let b = insp.storage().map(p).map_err(|e| Error::io("read", p, e))?;
            records_after(&b, 0, |r| count_unit(r, &mut lost_units));
        }
        r.lost_units = lost_units.keys().cloned().collect();
        let lost_records: u64 = r.dropped_segments.iter().map(|g| g.records).sum();
        let what = format!(
            "corruption in {} at offset {}: {}",
            c.segment, c.offset, c.reason
        );
        r.readable_records_lost = same_segment.records + lost_records;
        let in_seg = if same_segment.records > 0 {
            format!(
                " (the damaged record and {}{} readable record(s) after it, LSN {} .. {})",
                if same_segment.exhausted {
                    "at least "
                } else {
                    ""
                },
                same_segment.records,
                same_segment.first.unwrap_or(0),
                same_segment.last.unwrap_or(0)
            )
        } else {
            String::new()
        };
        let units_desc = match r.lost_units.len() {
            0 => String::new(),
            n => {
                let shown: Vec<&str> = r.lost_units.iter().take(8).map(String::as_str).collect();
                format!(
                    "; {n} unit(s) have records in the lost part and will be seen as the kept log says (a unit whose commit is lost becomes incomplete): {}{}",
                    shown.join(", "),
                    if n > 8 { ", ..." } else { "" }
                )
            }
        };
        let drop_desc = format!(
            "records from LSN {} on are lost: {} bytes cut from {} at offset {}{in_seg}, {} later segment(s) set aside as *.wal.dropped (holding {} readable record(s))",
            r.dropped_from_lsn.map_or_else(|| "?".into(), |l| l.to_string()),
            r.dropped_bytes,
            c.segment,
            c.offset,
            r.dropped_segments.iter().filter(|g| g.segment != c.segment).count(),
            lost_records
        ) + &units_desc;
        if !opts.lossy {
            r.action = RepairAction::Refused;
            r.messages.push(format!("refused: {what}"));
            r.messages.push(
                "this is damage to data that was acknowledged, not a torn tail; nothing was changed".into(),
            );
            r.messages.push(format!("with --lossy: {drop_desc}"));
            return Ok(r);
        }
        r.action = RepairAction::LossyTruncate;
        r.messages.push(what);
        r.messages
            .push(format!("--lossy: {truncate} the log there; {drop_desc}"));
        return Ok(r);
    }
    if let Some(t) = &f.torn_tail {
        if t.whole_segment {
            r.action = RepairAction::RemovedTornSegment;
            r.messages.push(format!(
                "{remove} {}: its header never became durable before a crash (nothing in it was acknowledged); its {} non-zero bytes {saved} saved first",
                t.segment, t.bytes
            ));
        } else {
            r.action = RepairAction::CutTornTail;
            r.messages.push(format!(
                "{cut} a torn tail of {} bytes in {} at offset {} (an append that was never acknowledged); the bytes {saved} saved in a cut-*.bin file first",
                t.bytes, t.segment, t.offset
            ));
        }
        return Ok(r);
    }
    r.messages
        .push("nothing to repair: no torn tail, no corruption".into());
    Ok(r)
}

/// Counts a record lost by a cut against the unit it belongs to.
fn count_unit(record: &log::Record, units: &mut BTreeMap<String, u64>) {
    if let Some(v) = semantics::decode_record(record.kind, record.payload()) {
        if let Some(u) = v.get("unit").and_then(|u| u.as_str()) {
            *units.entry(u.to_string()).or_default() += 1;
        }
    }
}

fn insp_segment_sizes(storage: &dyn Storage, dir: &Path) -> Vec<u64> {
    storage
        .list_dir(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| is_segment(p))
        .filter_map(|p| storage.map(&p).ok().map(|b| b.len() as u64))
        .collect()
}

/// Options matching the journal's existing segments, so that recovery keeps
/// their preallocated size.
fn log_options(sizes: &[u64], lossy: bool) -> LogOptions {
    let d = LogOptions::default();
    let segment_size = sizes
        .iter()
        .copied()
        .max()
        .map_or(d.segment_size, |m| m.max(4096));
    let room = segment_size - 128;
    LogOptions {
        segment_size,
        max_record_bytes: d.max_record_bytes.min(room),
        preallocate: true,
        recovery: if lossy {
            RecoveryMode::Lossy
        } else {
            RecoveryMode::Strict
        },
        prepare_segments: d.prepare_segments,
    }
}

/// Whether another process holds the journal's owner lock, without taking
/// it or writing anything: `Some(pid)` when held.
fn probe_lock(dir: &Path) -> Option<Option<u32>> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::File::open(&path).ok()?;
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            None
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            Some(pid)
        }
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

//! Opening a journal directory for inspection: read-only, without the owner
//! lock, tolerant of a writer appending at the same time, and tolerant of
//! damage (damage becomes a finding, not an error).
//!
//! # How damage and concurrency are handled
//!
//! * A segment with a wrong magic number (a garbage or overwritten file) makes
//!   the log's scan fail outright. The inspector records it as corruption at
//!   offset 0 and hides that segment and every later one from the scan, so
//!   the valid prefix of the log can still be reported.
//! * A damaged newest snapshot is recorded as corruption and hidden, so the
//!   segments can still be read (unit counts are then partial).
//! * A writer appending while the scan runs can make a record look damaged
//!   for an instant. [`LogReader`] reports corruption only when two
//!   consecutive scans find it at the same place; a race shows up as a torn
//!   tail (which is what an in-progress append is) or as nothing at all.
//! * A segment removed by the owner's compaction between listing and reading
//!   makes the open start again (a few times).

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::error::{Error, Result};
use crate::log::format::{
    has_segment_magic, has_snapshot_magic, is_leftover_name, is_lock_name, is_owner_pid,
    is_segment_name, is_snapshot_name, parse_segment_name,
};
use crate::log::probe::segment_prefix;
use crate::log::storage::{DirLock, FileBytes, LockFailure, OpenMode, StorageFile};
use crate::log::{self, FsStorage, LogReader, Lsn, Storage};

/// How many times an open that races with the owner's compaction is retried.
const MAX_OPENS: usize = 4;

/// Damage to data that was (or may have been) acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CorruptionInfo {
    /// The damaged segment (or snapshot) file.
    pub segment: String,
    /// Byte offset of the damaged header or record inside that file.
    pub offset: u64,
    /// What was found.
    pub reason: String,
    /// The LSN that should have been at that place, when known.
    pub expected_lsn: Option<Lsn>,
}

impl CorruptionInfo {
    fn from_scan(c: &log::Corruption) -> Self {
        CorruptionInfo {
            segment: display(&c.segment),
            offset: c.offset,
            reason: c.reason.clone(),
            expected_lsn: Some(c.expected_lsn),
        }
    }
}

/// An unacknowledged, partially written tail (the normal result of a crash
/// during an append, or of an append in progress right now).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TornTailInfo {
    /// Segment file holding it.
    pub segment: String,
    /// Offset where the valid log ends.
    pub offset: u64,
    /// Non-zero bytes after that offset (what `repair` cuts and saves).
    pub bytes: u64,
    /// True when the whole segment is a segment whose creation was torn.
    pub whole_segment: bool,
}

/// The snapshot the log starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// Snapshot file.
    pub path: String,
    /// Last LSN it covers.
    pub lsn: Lsn,
    /// Payload size in bytes.
    pub bytes: u64,
}

/// Everything the scan found besides the valid records.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Findings {
    /// Every damaged place found, earliest first (a damaged snapshot first).
    /// The valid log stops at the first damaged segment.
    pub corruption: Vec<CorruptionInfo>,
    /// The torn tail, if any.
    pub torn_tail: Option<TornTailInfo>,
    /// The snapshot in use, if any (a damaged one is in `corruption` instead).
    pub snapshot: Option<SnapshotInfo>,
    /// Segment files that are not part of the valid log because they come
    /// after the first corruption (what a lossy repair sets aside).
    pub unreachable_segments: Vec<String>,
    /// Files left by earlier repairs or compactions: saved cuts
    /// (`cut-*.bin`), set-aside segments (`*.dropped`), temporary snapshots.
    pub leftovers: Vec<String>,
}

/// Progress callback: `(bytes scanned so far, total bytes to scan)`.
pub type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Options of [`Inspection::open_with`].
#[derive(Clone, Default)]
pub struct OpenOptions {
    /// Called as segments are scanned (for a progress bar).
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions")
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// A journal directory opened read-only for inspection.
#[derive(Debug)]
pub struct Inspection {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    reader: LogReader,
    findings: Findings,
    hidden: BTreeSet<PathBuf>,
}

impl Inspection {
    /// Opens `dir` on the real file system.
    pub fn open(dir: impl AsRef<Path>) -> Result<Inspection> {
        Self::open_with(Arc::new(FsStorage), dir, OpenOptions::default())
    }

    /// Opens `dir` through any storage. Never writes and takes no lock.
    ///
    /// Fails with [`Error::NotAJournal`] for a missing path, a file, an empty
    /// directory or a directory without segment or snapshot files, and with
    /// [`Error::Io`] / [`Error::Log`] when files cannot be read or have a
    /// newer format version. Damage is reported in [`Inspection::findings`].
    pub fn open_with(
        storage: Arc<dyn Storage>,
        dir: impl AsRef<Path>,
        opts: OpenOptions,
    ) -> Result<Inspection> {
        let dir = dir.as_ref().to_path_buf();
        check_journal_dir(storage.as_ref(), &dir)?;
        let mut last_err = None;
        for attempt in 0..MAX_OPENS {
            if attempt > 0 {
                // Give the owner's compaction time to finish what we raced with.
                std::thread::sleep(Duration::from_millis(20 * attempt as u64));
            }
            match open_once(&storage, &dir, &opts) {
                Ok(insp) => return Ok(insp),
                Err(e) if is_transient(&e) => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| Error::NotAJournal {
            path: dir,
            reason: "the journal kept changing while it was scanned".into(),
        }))
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The storage it was read through.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The read-only log reader over the valid part of the log.
    pub fn reader(&self) -> &LogReader {
        &self.reader
    }

    /// Damage, torn tail, snapshot and leftover files found.
    pub fn findings(&self) -> &Findings {
        &self.findings
    }

    /// A new reader over the journal as it is now, hiding the same damaged
    /// files (used to retry a read that raced with the owner's compaction).
    pub fn fresh_reader(&self) -> Result<LogReader> {
        let view = Arc::new(View {
            inner: self.storage.clone(),
            hidden: self.hidden.clone(),
            progress: None,
            counting: AtomicBool::new(false),
            done: AtomicU64::new(0),
            total: 0,
        });
        Ok(LogReader::open_with(view, &self.dir)?)
    }
}

/// True for errors a concurrent compaction of the owner can cause (a
/// segment removed between the scan and the read): worth a retry.
pub(crate) fn is_transient_log(e: &log::Error) -> bool {
    match e {
        log::Error::Io { source, .. } => source.kind() == io::ErrorKind::NotFound,
        log::Error::LsnOutOfRange { .. } => true,
        _ => false,
    }
}

fn is_transient(e: &Error) -> bool {
    // A segment removed by the owner's compaction between listing and reading.
    matches!(e, Error::Log(l) if is_transient_log(l))
}

/// Rejects paths that are not journal directories with one clear reason.
pub(crate) fn check_journal_dir(storage: &dyn Storage, dir: &Path) -> Result<Vec<PathBuf>> {
    match storage.is_dir(dir) {
        Ok(true) => {}
        Ok(false) => {
            let reason = if storage.map(dir).is_ok() {
                "it is a file, not a directory"
            } else {
                "no such directory"
            };
            return Err(Error::NotAJournal {
                path: dir.to_path_buf(),
                reason: reason.into(),
            });
        }
        Err(e) => return Err(Error::io("access", dir, e)),
    }
    let listing = storage
        .list_dir(dir)
        .map_err(|e| Error::io("list directory", dir, e))?;
    if listing.is_empty() {
        return Err(Error::NotAJournal {
            path: dir.to_path_buf(),
            reason: "the directory holds no files (no segments, no snapshot)".into(),
        });
    }
    if !listing.iter().any(|p| is_segment(p) || is_snapshot(p)) {
        let mut names: Vec<String> = listing.iter().map(|p| file_name(p)).collect();
        names.sort();
        let shown = names.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
        let more = if names.len() > 3 { ", ..." } else { "" };
        return Err(Error::NotAJournal {
            path: dir.to_path_buf(),
            reason: format!(
                "no segment (*.wal) or snapshot (snap-*.snap) files, only {shown}{more}"
            ),
        });
    }
    Ok(listing)
}

fn open_once(storage: &Arc<dyn Storage>, dir: &Path, opts: &OpenOptions) -> Result<Inspection> {
    let listing = storage
        .list_dir(dir)
        .map_err(|e| Error::io("list directory", dir, e))?;
    let mut hidden: BTreeSet<PathBuf> = BTreeSet::new();
    let mut problems: Vec<CorruptionInfo> = Vec::new();
    let mut hid_segment = false;
    let total: u64 = if opts.progress.is_some() {
        listing
            .iter()
            .filter(|p| is_segment(p))
            .filter_map(|p| storage.map(p).ok())
            .map(|b| b.len() as u64)
            .sum()
    } else {
        0
    };
    let reader = loop {
        let view = Arc::new(View {
            inner: storage.clone(),
            hidden: hidden.clone(),
            progress: opts.progress.clone(),
            counting: AtomicBool::new(true),
            done: AtomicU64::new(0),
            total,
        });
        match LogReader::open_with(view.clone(), dir) {
            Ok(r) => {
                view.counting.store(false, Ordering::Release);
                if let Some(p) = &opts.progress {
                    p(total, total);
                }
                break r;
            }
            Err(log::Error::BadMagic { path }) if is_segment(&path) && !hidden.contains(&path) => {
                problems.push(CorruptionInfo {
                    segment: display(&path),
                    offset: 0,
                    reason: "bad magic: not an agentwal segment (overwritten or garbage file)"
                        .into(),
                    expected_lsn: None,
                });
                let from = parse_segment_name(&path).unwrap_or(0);
                for p in listing
                    .iter()
                    .filter(|p| parse_segment_name(p).is_some_and(|l| l >= from))
                {
                    hidden.insert(p.clone());
                }
                hid_segment = true;
            }
            Err(log::Error::BadMagic { path }) if is_snapshot(&path) && !hidden.contains(&path) => {
                problems.push(CorruptionInfo {
                    segment: display(&path),
                    offset: 0,
                    reason: "bad magic: not an agentwal snapshot".into(),
                    expected_lsn: None,
                });
                hidden.insert(path);
            }
            Err(log::Error::Corruption {
                segment,
                offset,
                reason,
            }) if is_snapshot(&segment) && !hidden.contains(&segment) => {
                problems.push(CorruptionInfo {
                    segment: display(&segment),
                    offset,
                    reason,
                    expected_lsn: None,
                });
                hidden.insert(segment);
            }
            Err(e) => return Err(e.into()),
        }
    };

    let scan = reader.scan();
    if !problems.is_empty() && scan.segments.is_empty() && reader.snapshot().is_none() {
        // Nothing readable is left once the damaged files are hidden. Unless
        // something here still carries agentwal's structure, this is not a
        // damaged journal but something else: garbage named like segments,
        // or a journal whose every file was overwritten.
        if !carries_agentwal_structure(storage.as_ref(), &listing) {
            return Err(not_a_journal(dir, &listing));
        }
    }
    let mut findings = Findings::default();
    let mut torn = scan.torn_tail.as_ref().map(|t| TornTailInfo {
        segment: display(&t.segment),
        offset: t.offset,
        bytes: t.bytes,
        whole_segment: t.whole_segment,
    });
    let mut seg_problems = Vec::new();
    if let Some(c) = &scan.corruption {
        seg_problems.push(CorruptionInfo::from_scan(c));
    }
    if hid_segment {
        // The scan saw only the segments before the garbage one, so it took
        // its last segment for the active one. It is not: a later segment
        // exists, so this one was sealed and fully synced, and damage in it
        // is corruption, not a torn tail.
        if let Some(t) = torn.take() {
            seg_problems.push(CorruptionInfo {
                segment: t.segment,
                offset: t.offset,
                reason: "damaged record in a sealed segment (a later segment exists)".into(),
                expected_lsn: scan.next_lsn(),
            });
        }
    }
    // Snapshot problems first, then segment problems in file order.
    let (snap_problems, mut later): (Vec<_>, Vec<_>) = problems
        .into_iter()
        .partition(|c| is_snapshot(Path::new(&c.segment)));
    seg_problems.append(&mut later);
    seg_problems.sort_by(|a, b| a.segment.cmp(&b.segment).then(a.offset.cmp(&b.offset)));
    findings.corruption = snap_problems;
    findings.corruption.extend(seg_problems);
    findings.torn_tail = torn;
    findings.snapshot = reader.snapshot().map(|s| SnapshotInfo {
        path: display(&s.path),
        lsn: s.lsn,
        bytes: s.data.len() as u64,
    });
    let mut unreachable: BTreeSet<PathBuf> = scan.dropped_segments.iter().cloned().collect();
    unreachable.extend(hidden.iter().filter(|p| is_segment(p)).cloned());
    for c in &findings.corruption {
        // A segment damaged at offset 0 is unreachable as a whole.
        if c.offset == 0 && is_segment(Path::new(&c.segment)) {
            unreachable.insert(PathBuf::from(&c.segment));
        }
    }
    findings.unreachable_segments = unreachable.iter().map(|p| display(p)).collect();
    findings.leftovers = sorted_names(&listing, is_leftover_name, display);
    Ok(Inspection {
        dir: dir.to_path_buf(),
        storage: storage.clone(),
        reader,
        findings,
        hidden,
    })
}

/// True when `dir` holds a file named like a segment or a snapshot (a log,
/// or something pretending to be one).
pub(crate) fn holds_log_files(storage: &dyn Storage, dir: &Path) -> bool {
    storage
        .list_dir(dir)
        .is_ok_and(|v| v.iter().any(|p| is_segment(p) || is_snapshot(p)))
}

/// True for a segment file name (`<20 digits>.wal`).
pub(crate) fn is_segment(p: &Path) -> bool {
    is_segment_name(p)
}

/// True for a snapshot file name (`snap-*.snap`).
pub(crate) fn is_snapshot(p: &Path) -> bool {
    is_snapshot_name(p)
}

/// True when a file of `listing` still shows agentwal wrote this directory:
/// a segment or snapshot starting with its magic number, or an owner-lock
/// file holding an owner's pid (an owned journal whose segments were
/// overwritten is damage to report with segment and offset, not a wrong
/// path). Files overwritten with garbage carry none of these.
fn carries_agentwal_structure(storage: &dyn Storage, listing: &[PathBuf]) -> bool {
    let starts = |p: &Path, f: fn(&[u8]) -> bool| storage.map(p).is_ok_and(|b| f(&b));
    listing.iter().any(|p| {
        (is_segment(p) && starts(p, has_segment_magic))
            || (is_snapshot(p) && starts(p, has_snapshot_magic))
            || (is_lock_name(p) && starts(p, is_owner_pid))
    })
}

/// The files of `listing` that `pick` selects, shown by `show`, sorted.
fn sorted_names(
    listing: &[PathBuf],
    pick: fn(&Path) -> bool,
    show: fn(&Path) -> String,
) -> Vec<String> {
    let mut v: Vec<String> = listing
        .iter()
        .filter(|p| pick(p))
        .map(|p| show(p))
        .collect();
    v.sort();
    v
}

/// The "not a journal" error for a directory whose segment and snapshot
/// files are all foreign or garbage.
fn not_a_journal(dir: &Path, listing: &[PathBuf]) -> Error {
    let segs = sorted_names(listing, is_segment, file_name);
    let snaps = sorted_names(listing, is_snapshot, file_name);
    let first = |v: &[String]| v.first().cloned().unwrap_or_default();
    let reason = match (segs.is_empty(), snaps.is_empty()) {
        (false, true) => format!(
            "none of its {} segment file(s) is an agentwal segment (bad magic in {})",
            segs.len(),
            first(&segs)
        ),
        (false, false) => format!(
            "none of its {} segment file(s) is an agentwal segment (bad magic in {}), and no snapshot is an agentwal snapshot (bad magic in {})",
            segs.len(),
            first(&segs),
            first(&snaps)
        ),
        _ => format!(
            "none of its {} snapshot file(s) is an agentwal snapshot (bad magic in {}), and it has no segment",
            snaps.len(),
            first(&snaps)
        ),
    };
    Error::NotAJournal {
        path: dir.to_path_buf(),
        reason,
    }
}

pub(crate) fn file_name(p: &Path) -> String {
    p.file_name()
        .map_or_else(|| display(p), |n| n.to_string_lossy().into_owned())
}

pub(crate) fn display(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// What a segment holds when read on its own, outside the log's order (used
/// for segments after a corruption, which the log's scan does not read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SegmentGlance {
    /// Segment file.
    pub segment: String,
    /// File size in bytes.
    pub file_bytes: u64,
    /// First LSN from a valid header; `None` when the header is damaged.
    pub first_lsn: Option<Lsn>,
    /// Consecutive valid records from the start of the segment.
    pub records: u64,
    /// LSN of the last of them.
    pub last_lsn: Option<Lsn>,
}

/// Reads one segment on its own: header and consecutive valid records.
pub fn glance_segment(storage: &dyn Storage, path: &Path) -> Result<SegmentGlance> {
    // Positional reads, not a map: the segment may be the live one, which
    // an owner may be writing while we look.
    let bytes = storage
        .read_prefix(path, u64::MAX)
        .map_err(|e| Error::io("read", path, e))?;
    let prefix = segment_prefix(path, &bytes);
    Ok(SegmentGlance {
        segment: display(path),
        file_bytes: bytes.len() as u64,
        first_lsn: prefix.first_lsn,
        records: prefix.records,
        last_lsn: prefix.last_lsn,
    })
}

/// The storage the log reader sees: the real one minus hidden (damaged)
/// files, counting scanned bytes for the progress bar. Read-only by
/// construction: every mutating call fails.
struct View {
    inner: Arc<dyn Storage>,
    hidden: BTreeSet<PathBuf>,
    progress: Option<ProgressFn>,
    counting: AtomicBool,
    done: AtomicU64,
    total: u64,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("inner", &self.inner)
            .field("hidden", &self.hidden)
            .finish_non_exhaustive()
    }
}

fn read_only() -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        "wal-inspect opens journals read-only",
    )
}

impl Storage for View {
    fn create_dir_all(&self, _: &Path) -> io::Result<()> {
        Err(read_only())
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut v = self.inner.list_dir(dir)?;
        v.retain(|p| !self.hidden.contains(p));
        Ok(v)
    }
    fn is_dir(&self, path: &Path) -> io::Result<bool> {
        self.inner.is_dir(path)
    }
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        match mode {
            OpenMode::ReadOnly => self.inner.open(path, mode),
            _ => Err(read_only()),
        }
    }
    fn rename(&self, _: &Path, _: &Path) -> io::Result<()> {
        Err(read_only())
    }
    fn remove_file(&self, _: &Path) -> io::Result<()> {
        Err(read_only())
    }
    fn sync_dir(&self, _: &Path) -> io::Result<()> {
        Err(read_only())
    }
    fn map(&self, path: &Path) -> io::Result<FileBytes> {
        let b = self.inner.map(path)?;
        self.count(path, &b);
        Ok(b)
    }
    fn read_range(&self, path: &Path, offset: u64, max: u64) -> io::Result<FileBytes> {
        // The live segment is read, not mapped (the owner may be writing it).
        let b = self.inner.read_range(path, offset, max)?;
        self.count(path, &b);
        Ok(b)
    }
    fn lock_dir(&self, _: &Path) -> Result<Box<dyn DirLock>, LockFailure> {
        Err(LockFailure::Io(read_only()))
    }
}

impl View {
    /// Reports progress when the scan moves on to segment `path`.
    fn count(&self, path: &Path, b: &FileBytes) {
        if self.counting.load(Ordering::Acquire) && is_segment(path) {
            if let Some(p) = &self.progress {
                // Called when the scan moves on to this segment: everything
                // mapped before it has been checked.
                let before = self.done.fetch_add(b.len() as u64, Ordering::AcqRel);
                p(before.min(self.total), self.total);
            }
        }
    }
}

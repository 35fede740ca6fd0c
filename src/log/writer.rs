//! The owning writer: open with recovery, append with group commit, rotate,
//! snapshot and truncate.
//!
//! # Where the syncs are, and why
//!
//! 1. **Group commit** (`wait_durable`): one writer at a time becomes the
//!    leader and calls `fdatasync` on the active segment for everything
//!    written so far; the others wait on a condition variable and return when
//!    `durable_lsn` covers their LSN. Segments are preallocated with zeros, so
//!    this `fdatasync` overwrites allocated blocks and never has to commit a
//!    size change (about 40 % cheaper than an appending sync). When the
//!    previous sync served several writers, the new leader first waits (at
//!    most one sync, see `gather`) for them to queue again, so concurrent
//!    writers share one sync instead of alternating between two. A durable
//!    append does not write its record: it encodes it after the *pending*
//!    records (under the writer lock) and waits, and the leader writes every
//!    pending record with one `pwrite` right before its `fdatasync`, so a
//!    group of *n* callers costs one write instead of *n* taken in turn
//!    under the writer lock while the previous sync runs. A record is in
//!    the file before its append returns, as before: a buffered append,
//!    `read_from` and rotation write the pending records first (file order
//!    stays LSN order), and a failed write of them poisons the log, so
//!    every caller whose record was pending gets an error and no sync ever
//!    vouches for them.
//! 2. **Rotation**: the full segment is *sealed* before the next one is
//!    created: `fdatasync`ed, and its name made durable if no directory
//!    sync did yet, so every sealed segment is entirely durable, content and
//!    name (recovery relies on this: damage in a sealed segment is always
//!    corruption, a missing one an LSN gap). The sync is skipped when a
//!    completed group commit already covers every record in it (which then
//!    also made its name durable, see 1). The new segment's zeros were
//!    written and `fsync`ed ahead of time in a spare (see `rotation`), off
//!    the writer lock, when one was ready; installing it writes the header
//!    and `fdatasync`s it (one page, no metadata) *before* the rename and
//!    before any record goes in, so a named segment's header is always
//!    durable and recovery's rule "a damaged header with records after it is
//!    corruption" stays strict (a header wiped together with its salt would
//!    otherwise leave records nothing can check, cut quietly). The rotating
//!    append does **not** sync the directory:
//!    * The new name becomes durable with a directory `fsync` by the
//!      group-commit leader (`sync_active`, shared by `wait_durable` and so
//!      by the async writer thread): a sync whose target lies in a segment
//!      whose name is not known durable (`Inner::named_lsn`) syncs the
//!      directory (once per segment) after the `fdatasync` and before
//!      `durable_lsn` moves, so a crash can never leave acknowledged records
//!      in a file whose name is not durable. The preparer's thread starts
//!      that directory sync in the background right after the rename
//!      (`Preparer::sync_name`), so it overlaps the leader's `fdatasync` and
//!      the leader usually finds the name durable already; the appends
//!      queued behind the rotating one no longer wait for two extra syncs
//!      under the writer lock.
//! 3. **Recovery**: a torn tail is zeroed (never truncated: a reader may
//!    have the file mapped) and `fdatasync`ed before the first new append,
//!    so stale bytes can never reappear behind new records. Then the active
//!    segment's header and every record past the last LSN a previous owner
//!    proved durable (the newest record's `synced_lsn`) are *rewritten* and
//!    the segment and the directory `fsync`ed: what was found may be a
//!    killed process's unsynced pages, or pages a failed `fdatasync` marked
//!    clean without writing them (a restart on the same boot still reads
//!    them from the page cache). A sync alone would not write clean pages;
//!    rewriting the same bytes dirties them again, so the sync makes them
//!    durable before `durable_lsn` and new records' `synced_lsn` vouch for
//!    them.
//! 4. A failed write or sync **poisons** the log: the kernel may have dropped
//!    the dirty pages, so a retry could report success for lost data.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

#[cfg(feature = "tokio")]
mod async_core;

use super::error::{Error, Result};
use super::reader::LogIter;
use super::record::{encode, encoded_len, Codec, Decoded, Lsn, FORMAT_MAX_PAYLOAD, RECORD_HEADER};
use super::rotation::{create_segment, install_spare, remove_leftover_spares, Preparer};
use super::scan::{scan_dir, Corruption, ScanReport, SegmentScan, TornTail};
use super::segment::SEGMENT_HEADER;
use super::snapshot::{self, Snapshot};
use super::storage::{DirLock, FsStorage, LockFailure, OpenMode, Storage, StorageFile};
use super::window::Source;

/// What to do when recovery finds corruption of acknowledged data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Refuse to open (`Error::Corruption` with segment and offset). A torn
    /// tail is still cut. The default.
    #[default]
    Strict,
    /// Truncate at the first damaged record, set later segments aside
    /// (renamed `*.dropped`) and report what was cut in [`OpenReport`].
    Lossy,
}

/// How durable an append must be before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Return after an `fdatasync` covering the record completed.
    #[default]
    Durable,
    /// Return after the `write`; the caller makes it durable later with
    /// [`Log::sync`] or a later durable append. Lost on power loss until then.
    Buffered,
}

/// Options of [`Log::open`].
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Size at which a segment is sealed and a new one started (default 64 MiB).
    pub segment_size: u64,
    /// Largest payload accepted (default 4 MiB). Larger appends fail with
    /// [`Error::RecordTooLarge`] before anything is written.
    pub max_record_bytes: u64,
    /// Fill new segments with zeros up to `segment_size` (default true), so
    /// durable appends overwrite allocated blocks instead of growing the file.
    pub preallocate: bool,
    /// Policy for corruption found at open.
    pub recovery: RecoveryMode,
    /// Prepare the next segment ahead of time (default true; only with
    /// `preallocate`): once the active segment is half full, a background
    /// thread writes and syncs a zero-filled spare file, so the append that
    /// rotates only seals the old segment (usually covered by the last group
    /// commit), writes and syncs the new header and renames the spare,
    /// instead of writing a whole segment of zeros under the writer lock;
    /// the directory is synced in the background or by the next group
    /// commit. Costs one spare
    /// segment of disk. When no spare is ready the rotation creates the
    /// segment inline, as with `false`. On a
    /// storage that allows no background I/O (the simulator) the append that
    /// crosses the half prepares the spare itself.
    pub prepare_segments: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_size: 64 << 20,
            max_record_bytes: 4 << 20,
            preallocate: true,
            recovery: RecoveryMode::Strict,
            prepare_segments: true,
        }
    }
}

impl LogOptions {
    fn validate(&self) -> Result<()> {
        let room = self
            .segment_size
            .saturating_sub((SEGMENT_HEADER + RECORD_HEADER + 8) as u64);
        if self.segment_size < 4096 {
            return Err(Error::InvalidOptions(
                "segment_size must be at least 4096".into(),
            ));
        }
        if self.max_record_bytes > room || self.max_record_bytes > FORMAT_MAX_PAYLOAD {
            return Err(Error::InvalidOptions(format!(
                "max_record_bytes {} does not fit in a segment of {} bytes",
                self.max_record_bytes, self.segment_size
            )));
        }
        Ok(())
    }
}

/// What recovery did when the log was opened.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// A torn (never acknowledged) tail that was cut.
    pub torn_tail: Option<TornTail>,
    /// Where the cut bytes were saved.
    pub cut_saved_to: Option<PathBuf>,
    /// Why the cut bytes could not be saved (for example a full disk). The
    /// torn tail was cut anyway: it was never acknowledged, and cutting it
    /// needs no space. No partial side file is left behind.
    pub cut_not_saved: Option<String>,
    /// In lossy mode: the corruption at which the log was truncated.
    pub lossy_cut: Option<Corruption>,
    /// In lossy mode: segments set aside (renamed to `*.dropped`).
    pub dropped_segments: Vec<PathBuf>,
    /// Valid records found.
    pub records: u64,
}

#[derive(Debug)]
struct WriterState {
    file: Arc<dyn StorageFile>,
    /// First LSN of each live segment and its path; the last one is active.
    segments: Vec<(Lsn, PathBuf)>,
    /// Checksum scheme of the active segment (a segment of the previous
    /// format version is continued in that version until it is sealed).
    codec: Codec,
    /// End of what was written to `file`: `pending` goes there next.
    pos: u64,
    next_lsn: Lsn,
    /// Encoded durable records not written yet (LSNs up to `next_lsn - 1`),
    /// in file order from `pos`. Their callers are blocked in
    /// `wait_durable` until a sync covers them, so the next group-commit
    /// leader writes them all with one `pwrite` just before its
    /// `fdatasync`; anything that needs them in the file first (a buffered
    /// append, `read_from`, rotation) writes them before it goes on.
    pending: Vec<u8>,
    /// A spare was requested for the rotation that ends the active segment.
    spare_requested: bool,
}

/// Group-commit bookkeeping, under `Inner::syncing`.
#[derive(Debug, Default)]
struct SyncState {
    /// A leader is between deciding to sync and publishing the result.
    active: bool,
    /// LSNs of the callers blocked in `wait_durable` whose LSN no completed
    /// sync covers yet (one entry per caller).
    waiters: Vec<Lsn>,
    /// Callers the next sync should wait for: those its predecessor released
    /// plus those still waiting when it completed (see `gather`).
    expected: usize,
    /// Duration of the last `fdatasync`; bounds the gathering delay.
    last_sync: Duration,
    /// Syncs left during which gathering is off after one timed out.
    backoff: u32,
}

/// Longest a leader delays its sync to let released writers rejoin (it
/// also never waits longer than the previous sync took).
const MAX_GATHER: Duration = Duration::from_micros(1000);
/// Syncs without gathering after a gather timed out (writers are busy
/// between appends, so waiting for them only adds latency).
const GATHER_BACKOFF: u32 = 4;

#[derive(Debug)]
struct Inner {
    /// The writer thread of the async calls (started at the first one;
    /// see `async_core`). First field: dropped, and its thread joined,
    /// before the directory lock is released.
    #[cfg(feature = "tokio")]
    core: std::sync::OnceLock<async_core::AsyncCore>,
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    opts: LogOptions,
    writer: Mutex<WriterState>,
    syncing: Mutex<SyncState>,
    synced: Condvar,
    durable_lsn: AtomicU64,
    /// First LSN of the newest segment whose name is known durable (a
    /// directory sync completed after it got its name). The active segment's
    /// name is durable iff its first LSN is `<=` this; only the active one
    /// can be pending (sealing makes a segment's name durable). Shared with
    /// the preparer, whose thread may sync the directory ahead of the leader.
    named_lsn: Arc<AtomicU64>,
    poisoned: AtomicBool,
    poison_cause: Mutex<Option<String>>,
    report: OpenReport,
    snapshot_lsn: AtomicU64,
    /// Prepares spare segments. Declared before `_lock`: dropping it joins
    /// its thread and removes its spare while the directory is still ours.
    preparer: Preparer,
    _lock: Box<dyn DirLock>,
}

/// An open, exclusively owned log. Cheap to clone (shared handle); all
/// methods take `&self` and are safe to call from many threads.
#[derive(Debug, Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

impl Log {
    /// Opens (creating if needed) the log in `dir` on the real file system.
    pub fn open(dir: impl AsRef<Path>, opts: LogOptions) -> Result<Log> {
        Self::open_with(Arc::new(FsStorage), dir, opts)
    }

    /// Opens the log in `dir` through any [`Storage`].
    pub fn open_with(
        storage: Arc<dyn Storage>,
        dir: impl AsRef<Path>,
        opts: LogOptions,
    ) -> Result<Log> {
        opts.validate()?;
        let dir = dir.as_ref().to_path_buf();
        if storage.list_dir(&dir).is_err() {
            let is_file = storage.map(&dir).is_ok();
            if is_file {
                return Err(Error::NotAJournal {
                    path: dir,
                    reason: "it is a file".into(),
                });
            }
            // The directories about to be made, outermost last.
            let created: Vec<PathBuf> = dir
                .ancestors()
                .take_while(|a| !a.as_os_str().is_empty() && !storage.is_dir(a).unwrap_or(false))
                .map(Path::to_path_buf)
                .collect();
            storage
                .create_dir_all(&dir)
                .map_err(|e| Error::io("create directory", &dir, e))?;
            // A new directory's entry is durable only once its parent is
            // synced; without this a power loss could take the journal
            // directory away together with every acknowledged record in it.
            for d in created.iter().rev() {
                let parent = match d.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    Some(_) => Path::new("."),
                    None => continue, // the root exists
                };
                storage
                    .sync_dir(parent)
                    .map_err(|e| Error::io("fsync directory", parent, e))?;
            }
        } else if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            // The directory exists, but the caller may have just made it
            // without syncing its parent. Best effort: a parent we may not
            // read must not stop the log from opening.
            let _ = storage.sync_dir(parent);
        }
        let lock = storage.lock_dir(&dir).map_err(|f| match f {
            LockFailure::Held { pid } => Error::Locked {
                dir: dir.clone(),
                pid,
            },
            LockFailure::Io(e) => Error::io("lock", dir.join(super::format::LOCK_FILE), e),
        })?;
        // A spare left by an earlier owner is zeros at best and half written
        // at worst; never a segment. Only spares this process prepares are
        // installed.
        let spare_ids = remove_leftover_spares(storage.as_ref(), &dir);
        let snap = snapshot::read_latest(storage.as_ref(), &dir)?;
        let snap_lsn = snap.as_ref().map_or(0, |s| s.lsn);
        let scan = scan_dir(&storage, &dir, snap.as_ref().map(|s| s.lsn + 1))?;
        let mut report = OpenReport {
            records: scan.records(),
            ..OpenReport::default()
        };
        let (mut segments, pos) = apply_recovery(&storage, &dir, &opts, scan, &mut report)?;
        report_recovery(&dir, &report);
        // A lossy cut inside records the snapshot already covers leaves a log
        // that ends before the snapshot: the next append would take an LSN the
        // snapshot hides. Those segments are obsolete; set them aside and
        // continue in a fresh segment right after the snapshot.
        if snap.is_some()
            && segments
                .last()
                .is_some_and(|s| s.first_lsn + s.records <= snap_lsn)
        {
            for s in segments.drain(..) {
                let to = super::format::dropped_path(&s.path);
                storage
                    .rename(&s.path, &to)
                    .map_err(|e| Error::io("set aside segment", &s.path, e))?;
                report.dropped_segments.push(s.path);
            }
            storage
                .sync_dir(&dir)
                .map_err(|e| Error::io("fsync directory", &dir, e))?;
        }
        let next_lsn = match segments.last() {
            Some(s) => s.first_lsn + s.records,
            None => snap_lsn + 1,
        };
        if next_lsn <= snap_lsn {
            let (segment, offset) = segments
                .last()
                .map_or((dir.clone(), 0), |s| (s.path.clone(), s.end_offset));
            return Err(Error::Corruption {
                segment,
                offset,
                reason: format!(
                    "the log ends at LSN {} but the snapshot covers up to LSN {snap_lsn}",
                    next_lsn - 1
                ),
            });
        }
        let mut list: Vec<(Lsn, PathBuf)> = segments
            .iter()
            .map(|s| (s.first_lsn, s.path.clone()))
            .collect();
        let (file, pos, codec) = match segments.last() {
            Some(active) => {
                let path = &active.path;
                let f = storage
                    .open(path, OpenMode::ReadWrite)
                    .map_err(|e| Error::io("open segment", path, e))?;
                // The records found may be dirty pages of a killed process
                // (never synced), pages a failed fdatasync marked clean
                // without writing them (a restart on the same boot reads
                // them from the page cache), and the segment's name may never
                // have been made durable (a kill inside `create_segment`).
                // Make all of it durable now, or `durable_lsn` below would be
                // a lie: `sync` would return at once, appends would go into a
                // file whose name a power loss can take away, and new records
                // would carry a `synced_lsn` claiming unsynced ones, turning a
                // later torn tail into "corruption" that refuses to open. A
                // sync does not write clean pages, so first rewrite what no
                // earlier owner proved durable.
                rewrite_unproven(&storage, f.as_ref(), active)?;
                f.sync_all().map_err(|e| Error::io("fsync", path, e))?;
                storage
                    .sync_dir(&dir)
                    .map_err(|e| Error::io("fsync directory", &dir, e))?;
                (f, pos, active.codec)
            }
            None => {
                let (f, path, codec) = create_segment(storage.as_ref(), &dir, &opts, next_lsn)?;
                // The name durable now (not at the first group commit): an
                // open that returned leaves a journal that reopens.
                storage
                    .sync_dir(&dir)
                    .map_err(|e| Error::io("fsync directory", &dir, e))?;
                list.push((next_lsn, path));
                (f, SEGMENT_HEADER as u64, codec)
            }
        };
        // The active segment's name was synced above.
        let named_lsn = Arc::new(AtomicU64::new(list.last().map_or(next_lsn, |s| s.0)));
        let preparer = Preparer::new(
            storage.clone(),
            &dir,
            &opts,
            // A leftover named `segment-<u64::MAX>.spare` must not overflow.
            spare_ids.wrapping_add(1),
            named_lsn.clone(),
        );
        let inner = Inner {
            #[cfg(feature = "tokio")]
            core: std::sync::OnceLock::new(),
            storage,
            dir,
            opts,
            writer: Mutex::new(WriterState {
                file,
                segments: list,
                codec,
                pos,
                next_lsn,
                pending: Vec::new(),
                spare_requested: false,
            }),
            syncing: Mutex::new(SyncState::default()),
            synced: Condvar::new(),
            // Everything recovered is on disk (a torn tail was cut and synced).
            durable_lsn: AtomicU64::new(next_lsn - 1),
            named_lsn,
            poisoned: AtomicBool::new(false),
            poison_cause: Mutex::new(None),
            report,
            snapshot_lsn: AtomicU64::new(snap_lsn),
            preparer,
            _lock: lock,
        };
        Ok(Log {
            inner: Arc::new(inner),
        })
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The storage this log writes through.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.storage
    }

    /// The options it was opened with.
    pub fn options(&self) -> &LogOptions {
        &self.inner.opts
    }

    /// What recovery did at open.
    pub fn open_report(&self) -> &OpenReport {
        &self.inner.report
    }

    /// Highest LSN known durable (0 if none).
    pub fn durable_lsn(&self) -> Lsn {
        self.inner.durable_lsn.load(Ordering::Acquire)
    }

    /// LSN the next append will get.
    pub fn next_lsn(&self) -> Lsn {
        self.inner.writer.lock().next_lsn
    }

    /// LSN covered by the newest snapshot (0 if none).
    pub fn snapshot_lsn(&self) -> Lsn {
        self.inner.snapshot_lsn.load(Ordering::Acquire)
    }

    fn check_poison(&self) -> Result<()> {
        if self.inner.poisoned.load(Ordering::Acquire) {
            let cause = self.inner.poison_cause.lock().clone().unwrap_or_default();
            return Err(Error::Poisoned { cause });
        }
        Ok(())
    }

    fn poison(&self, err: &Error) {
        let mut c = self.inner.poison_cause.lock();
        if c.is_none() {
            *c = Some(err.to_string());
        }
        self.inner.poisoned.store(true, Ordering::Release);
    }

    /// Appends one durable record of kind 0.
    pub fn append(&self, payload: &[u8]) -> Result<Lsn> {
        self.append_with(0, payload, Durability::Durable)
    }

    /// Appends one record of `kind` with the given durability.
    pub fn append_with(&self, kind: u8, payload: &[u8], durability: Durability) -> Result<Lsn> {
        Ok(*self.append_batch(&[(kind, payload)], durability)?.end())
    }

    /// Appends records as one write (and, if durable, one shared sync).
    /// Returns the LSNs assigned. An empty batch is an `InvalidOptions` error.
    pub fn append_batch(
        &self,
        records: &[(u8, &[u8])],
        durability: Durability,
    ) -> Result<RangeInclusive<Lsn>> {
        if records.is_empty() {
            return Err(Error::InvalidOptions("empty batch".into()));
        }
        let limit = self.inner.opts.max_record_bytes;
        for (_, p) in records {
            if p.len() as u64 > limit {
                return Err(Error::RecordTooLarge {
                    size: p.len() as u64,
                    limit,
                });
            }
        }
        self.check_poison()?;
        let range = {
            let mut w = self.inner.writer.lock();
            let r = self.write_locked(&mut w, records, durability);
            if let Err(e) = &r {
                self.poison(e);
            }
            r?
        };
        crate::observe::appended(
            records.len(),
            records.iter().map(|(_, p)| p.len() as u64).sum(),
        );
        if durability == Durability::Durable {
            self.wait_durable(*range.end())?;
        }
        Ok(range)
    }

    /// Encodes `records` after the pending ones. A durable batch stays
    /// pending: its caller waits for a sync anyway, and the leader of that
    /// sync writes every pending record with one `pwrite` (the group's
    /// callers no longer take turns writing under this lock while the
    /// previous sync runs). A buffered batch is written at once, with the
    /// pending records before it (file order is LSN order).
    fn write_locked(
        &self,
        w: &mut WriterState,
        records: &[(u8, &[u8])],
        durability: Durability,
    ) -> Result<RangeInclusive<Lsn>> {
        // Checked again under the writer lock: a caller that passed the
        // check before the lock may find the log poisoned by the holder it
        // waited for (whose failed write dropped records of others).
        self.check_poison()?;
        let first = w.next_lsn;
        let synced = self.durable_lsn();
        for (kind, payload) in records {
            let need = encoded_len(payload.len()) as u64;
            if w.pos + w.pending.len() as u64 + need > self.inner.opts.segment_size {
                self.flush_pending(w)?;
                self.rotate(w)?;
            }
            encode(&mut w.pending, w.codec, w.next_lsn, synced, *kind, payload);
            w.next_lsn += 1;
        }
        if durability != Durability::Durable {
            self.flush_pending(w)?;
        }
        let end = w.pos + w.pending.len() as u64;
        if !w.spare_requested && end >= self.inner.opts.segment_size / 2 {
            // Half full: time to get the next segment ready.
            w.spare_requested = true;
            self.inner.preparer.request();
        }
        Ok(first..=w.next_lsn - 1)
    }

    /// Writes the pending records (one `pwrite`). A failure leaves them
    /// unwritten for good: the caller poisons the log, so no sync can ever
    /// vouch for them. A poisoned log writes nothing more (a failed write
    /// left a hole before these records): they are dropped, and their
    /// callers get `Poisoned` from `wait_durable`.
    fn flush_pending(&self, w: &mut WriterState) -> Result<()> {
        if w.pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.check_poison() {
            w.pending.clear();
            return Err(e);
        }
        let r = w.file.write_at(w.pos, &w.pending);
        let len = w.pending.len() as u64;
        w.pending.clear();
        if let Err(e) = r {
            // Poisoned here, while the writer lock is still held: the lost
            // records' LSNs are taken and `pos` no longer matches them, so no
            // other caller may write at `pos`, rotate or sync (and publish
            // `durable_lsn` over them) once this lock is released.
            let err = Error::io("write", &w.segments.last().expect("active segment").1, e);
            self.poison(&err);
            return Err(err);
        }
        w.pos += len;
        Ok(())
    }

    fn rotate(&self, w: &mut WriterState) -> Result<()> {
        let (first, path) = w.segments.last().expect("active segment").clone();
        // Seal: the whole segment, content and name, must be durable before
        // a successor exists (recovery treats damage in a sealed segment as
        // corruption, and a missing sealed segment as an LSN gap). When a
        // completed group commit already covers every record written into
        // it, the segment is durable (its zeros were synced when it was
        // made, a failed sync poisons, and the leader made its name durable
        // before publishing) and sealing needs no sync of its own.
        if self.durable_lsn() < w.next_lsn - 1 {
            let started = Instant::now();
            w.file
                .sync_data()
                .map_err(|e| Error::io("fdatasync", &path, e))?;
            crate::observe::fsync(started.elapsed());
            self.make_name_durable(first)?;
            // A sync that succeeds after another one failed may vouch for
            // pages the kernel dropped: never publish over a poisoned log.
            self.check_poison()?;
            self.inner
                .durable_lsn
                .fetch_max(w.next_lsn - 1, Ordering::AcqRel);
        }
        let storage = self.inner.storage.as_ref();
        let spare = self.inner.preparer.take();
        crate::observe::rotated(spare.is_some());
        // Both paths make the new header durable; neither syncs the new
        // name: the spare thread or the first group commit into the new
        // segment does (`sync_active`).
        let (file, new_path, codec) = match spare {
            Some(spare) => install_spare(storage, &self.inner.dir, spare, w.next_lsn)?,
            None => create_segment(storage, &self.inner.dir, &self.inner.opts, w.next_lsn)?,
        };
        // The name's directory sync, started now in the background, runs
        // while the first group commit in the new segment is in its
        // fdatasync; the leader then usually finds it done.
        self.inner.preparer.sync_name(w.next_lsn);
        w.file = file;
        w.codec = codec;
        w.segments.push((w.next_lsn, new_path));
        w.pos = SEGMENT_HEADER as u64;
        w.spare_requested = false;
        Ok(())
    }

    /// The group commit's sync of the active segment `file` (`path`, first
    /// LSN `first`): `fdatasync` for its content (and, the first time, its
    /// header), then, if its name is not known durable yet, a directory
    /// `fsync` (see "Where the syncs are"). Only after both may
    /// `durable_lsn` cover records in it. Shared by every group-commit
    /// leader: sync callers and the async writer thread (through
    /// `wait_durable`).
    fn sync_active(&self, file: &dyn StorageFile, path: &Path, first: Lsn) -> Result<()> {
        file.sync_data()
            .map_err(|e| Error::io("fdatasync", path, e))?;
        self.make_name_durable(first)
    }

    /// Makes the name of the segment starting at `first` durable, unless a
    /// directory sync already did: at most one directory `fsync` per
    /// segment. A directory sync makes every earlier rename durable too, so
    /// a leader that syncs for an older segment than the active one is
    /// never wrong, only conservative.
    fn make_name_durable(&self, first: Lsn) -> Result<()> {
        if self.inner.named_lsn.load(Ordering::Acquire) >= first {
            return Ok(());
        }
        let dir = &self.inner.dir;
        if let Some(cause) = self.inner.preparer.name_sync_failure() {
            // The background sync for this name failed: never retried (see 4).
            return Err(Error::io(
                "fsync directory (in the background)",
                dir,
                std::io::Error::other(cause),
            ));
        }
        self.inner
            .storage
            .sync_dir(dir)
            .map_err(|e| Error::io("fsync directory", dir, e))?;
        self.inner.named_lsn.fetch_max(first, Ordering::AcqRel);
        Ok(())
    }

    /// Makes everything written so far durable; returns the durable LSN.
    pub fn sync(&self) -> Result<Lsn> {
        // A poisoned log refuses every call, even when nothing is pending.
        self.check_poison()?;
        let last = self.next_lsn() - 1;
        self.wait_durable(last)?;
        Ok(self.durable_lsn())
    }

    /// Blocks until a sync covering `lsn` completed (group commit: one caller
    /// syncs for everyone waiting).
    ///
    /// An `lsn` that was never written (at or beyond [`Log::next_lsn`]) is
    /// [`Error::LsnOutOfRange`]: no sync could ever cover it.
    pub fn wait_durable(&self, lsn: Lsn) -> Result<()> {
        if self.durable_lsn() >= lsn {
            return Ok(());
        }
        let next = self.next_lsn();
        if lsn >= next {
            return Err(Error::LsnOutOfRange {
                lsn,
                first: self.snapshot_lsn() + 1,
                last: next - 1,
            });
        }
        let inner = &self.inner;
        let mut st = inner.syncing.lock();
        if self.durable_lsn() >= lsn {
            return Ok(());
        }
        st.waiters.push(lsn);
        loop {
            if let Err(e) = self.check_poison() {
                st.waiters.clear();
                return Err(e);
            }
            if self.durable_lsn() >= lsn {
                return Ok(());
            }
            if st.active {
                inner.synced.wait(&mut st);
                continue;
            }
            st.active = true;
            let gather = self.gather_budget(&mut st);
            drop(st);
            if let Some((want, budget)) = gather {
                self.gather(want, budget);
            }
            // The pending records of every caller in the group go into
            // `file` with one write, right before the sync that covers
            // them. Then everything up to `target` is in `file` or in a
            // sealed (already durable, name included) segment, so one
            // fdatasync of `file` (plus, once per segment, a directory
            // sync) covers it. A log poisoned meanwhile (a failed write
            // dropped records below `target`) must not sync: its sync would
            // vouch for records that are not in the file.
            let (file, target, (first, path), written) = {
                let mut w = inner.writer.lock();
                let written = self
                    .check_poison()
                    .and_then(|()| self.flush_pending(&mut w));
                (
                    w.file.clone(),
                    w.next_lsn - 1,
                    w.segments.last().expect("active").clone(),
                    written,
                )
            };
            let started = Instant::now();
            let r = written.and_then(|()| self.sync_active(file.as_ref(), &path, first));
            let took = started.elapsed();
            st = inner.syncing.lock();
            st.active = false;
            match r {
                Ok(()) => {
                    let prev_durable = inner.durable_lsn.fetch_max(target, Ordering::AcqRel);
                    crate::observe::fsync(took);
                    crate::observe::group_commit(target.saturating_sub(prev_durable));
                    // Callers this sync released will most likely append
                    // again at once; with those still waiting they form the
                    // group the next leader gathers.
                    let before = st.waiters.len();
                    st.waiters.retain(|&l| l > target);
                    st.expected = before;
                    st.last_sync = took;
                }
                Err(err) => {
                    // Every caller of the group fails: this one with the
                    // error, the others with `Poisoned`.
                    self.poison(&err);
                    st.waiters.clear();
                    inner.synced.notify_all();
                    return Err(err);
                }
            }
            inner.synced.notify_all();
        }
    }

    /// Whether the new leader should delay its sync, and for how long: only
    /// when the last sync served several callers and fewer of them are back.
    fn gather_budget(&self, st: &mut SyncState) -> Option<(usize, Duration)> {
        if st.backoff > 0 {
            st.backoff -= 1;
            return None;
        }
        (st.expected > 1 && st.waiters.len() < st.expected)
            .then(|| (st.expected, st.last_sync.min(MAX_GATHER)))
    }

    /// Adaptive group commit. Writers released by the previous sync need a
    /// few microseconds (a wake-up and an append) to queue again; syncing
    /// before they do splits the writers into two alternating half-groups,
    /// each waiting two syncs per append. So the leader yields until `want`
    /// callers are queued or `budget` (one sync, at most 1 ms) runs out; a timeout
    /// turns gathering off for a while, so writers that do real work between
    /// appends never pay for it. The delay never weakens durability: a
    /// caller still returns only after a sync that covers its LSN.
    fn gather(&self, want: usize, budget: Duration) {
        let start = Instant::now();
        loop {
            if self.inner.syncing.lock().waiters.len() >= want {
                return;
            }
            if start.elapsed() >= budget {
                self.inner.syncing.lock().backoff = GATHER_BACKOFF;
                return;
            }
            std::thread::yield_now();
        }
    }

    /// Reads records with LSN `>= from` up to the last record written now.
    pub fn read_from(&self, from: Lsn) -> Result<LogIter> {
        let (segments, last, end) = {
            let mut w = self.inner.writer.lock();
            // Every record appended so far is readable, as before pending
            // records existed: a reader never waits for a sync. A poisoned
            // log stays readable up to what was written.
            match self.flush_pending(&mut w) {
                Ok(()) | Err(Error::Poisoned { .. }) => {}
                Err(e) => {
                    self.poison(&e);
                    return Err(e);
                }
            }
            (w.segments.clone(), w.next_lsn - 1, w.pos)
        };
        Ok(LogIter::new(
            self.inner.storage.clone(),
            segments,
            from,
            last,
            end,
        ))
    }

    /// Writes a snapshot covering every record `<= lsn` (atomically and
    /// durably). Call [`Log::truncate_before`] afterwards to drop old segments.
    pub fn write_snapshot(&self, lsn: Lsn, data: &[u8]) -> Result<PathBuf> {
        self.write_snapshot_with(lsn, &mut |w| w.write_all(data))
            .map(|(p, _)| p)
    }

    /// [`Log::write_snapshot`] with the payload written by `fill` into a
    /// writer that streams it to the file in chunks (a large payload is
    /// never held in memory whole). Returns the file and the payload length.
    pub fn write_snapshot_with(
        &self,
        lsn: Lsn,
        fill: &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> Result<(PathBuf, u64)> {
        self.check_poison()?;
        if lsn >= self.next_lsn() {
            return Err(Error::InvalidOptions(format!(
                "snapshot LSN {lsn} is beyond the log"
            )));
        }
        // A snapshot must never cover records that could still vanish.
        self.wait_durable(lsn)?;
        // A failed write or sync here poisons the log like any other: after
        // a failed fsync nothing this handle does next may be trusted.
        let p = snapshot::write_with(self.inner.storage.as_ref(), &self.inner.dir, lsn, fill)
            .inspect_err(|e| self.poison(e))?;
        self.inner.snapshot_lsn.fetch_max(lsn, Ordering::AcqRel);
        Ok(p)
    }

    /// The newest snapshot, if any.
    pub fn latest_snapshot(&self) -> Result<Option<Snapshot>> {
        snapshot::read_latest(self.inner.storage.as_ref(), &self.inner.dir)
    }

    /// Removes whole sealed segments whose records are all `< lsn` and that a
    /// snapshot covers. Returns how many were removed.
    pub fn truncate_before(&self, lsn: Lsn) -> Result<usize> {
        self.check_poison()?;
        let lsn = lsn.min(self.snapshot_lsn() + 1);
        let mut w = self.inner.writer.lock();
        let mut removed = 0;
        // Oldest first, so a crash in between leaves a contiguous log.
        while w.segments.len() > 1 && w.segments[1].0 <= lsn {
            let path = w.segments[0].1.clone();
            // Forget a segment only once it is gone: if its removal fails it
            // stays first in line, so a later call can never remove a newer
            // segment while an older one survives (that gap would make the
            // next open refuse the log as corrupt).
            match self.inner.storage.remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove segment", &path, e)),
            }
            w.segments.remove(0);
            removed += 1;
        }
        drop(w);
        if removed > 0 {
            // The removals are durable only with the directory; a failed
            // directory fsync poisons (no retry of a failed sync).
            self.inner
                .storage
                .sync_dir(&self.inner.dir)
                .map_err(|e| Error::io("fsync directory", &self.inner.dir, e))
                .inspect_err(|e| self.poison(e))?;
        }
        Ok(removed)
    }

    /// Bytes in live segment files (preallocated space included), plus the
    /// spare segment when one is ready (see [`LogOptions::prepare_segments`]).
    pub fn disk_bytes(&self) -> u64 {
        let spare = self.inner.preparer.spare_bytes();
        let w = self.inner.writer.lock();
        let sealed = w.segments.len().saturating_sub(1) as u64;
        let active = if self.inner.opts.preallocate {
            self.inner.opts.segment_size
        } else {
            w.pos
        };
        sealed * self.inner.opts.segment_size + active + spare
    }

    /// Number of live segment files.
    pub fn segment_count(&self) -> usize {
        self.inner.writer.lock().segments.len()
    }

    /// Syncs everything and closes the log (releasing the directory lock once
    /// every clone is dropped).
    pub fn close(self) -> Result<()> {
        if self.inner.poisoned.load(Ordering::Acquire) {
            return self.check_poison();
        }
        self.sync().map(|_| ())
    }
}

/// Physical block size recovery assumes a device may rewrite as a whole
/// (4 KiB sectors; see "Torn 4 KiB sectors" in `docs/recovery.md`).
const DEVICE_BLOCK: u64 = 4096;

/// Rewrites, with the very bytes read back, every record after the last LSN
/// a previous owner proved durable (the newest record's `synced_lsn`), from
/// the 4 KiB block that holds the first of them (the header too when that
/// is the first block). On Linux, pages whose writeback failed are marked
/// clean: they stay readable but a later `fsync` skips them. Writing them
/// again dirties them, so the caller's sync really persists them. Bounded
/// by what was never proven durable (normally the last group of records),
/// never the whole log.
fn rewrite_unproven(
    storage: &Arc<dyn Storage>,
    f: &dyn StorageFile,
    seg: &SegmentScan,
) -> Result<()> {
    let path = &seg.path;
    let read_err = |e| Error::io("read segment", path, e);
    // Read one bounded window at a time (see `window`), not the segment.
    let mut src = Source::live(storage.clone(), path, seg.end_offset).map_err(read_err)?;
    if src.len() < seg.end_offset {
        return Err(Error::io(
            "read segment",
            path,
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "segment is {} bytes, recovery found records up to offset {}",
                    src.len(),
                    seg.end_offset
                ),
            ),
        ));
    }
    let proven = seg.last_synced_lsn;
    let mut pos = SEGMENT_HEADER as u64;
    while pos < seg.end_offset {
        match src.decode(pos, seg.codec).map_err(read_err)? {
            Decoded::Valid { record, next } if record.lsn <= proven => pos = next as u64,
            _ => break,
        }
    }
    let io = |e| Error::io("rewrite unproven bytes", path, e);
    // Rewrite whole device blocks: start at the 4 KiB boundary at or before
    // the first unproven byte (the proven bytes in between are rewritten
    // with what they already hold). A device that stores part of a
    // physical sector by rewriting all of it can destroy the bytes before
    // a write in its block when power fails; a write that starts on the
    // boundary has none. Without this, a power cut during this rewrite
    // could destroy the header (and its salt) of a segment full of
    // acknowledged records, and the next open would refuse the log as
    // corrupt (`log_torn_header`).
    // The header is rewritten only with the first block: a segment with
    // records past its first block had its header synced before the first
    // record went in (creation and spare installation sync it; a failed
    // sync poisons before any record is written), and a separate write at
    // offset 0 would put that block, header and acknowledged records, at
    // the mercy of a torn write.
    let mut pos = pos / DEVICE_BLOCK * DEVICE_BLOCK;
    while pos < seg.end_offset {
        let chunk = src
            .bytes(pos, (seg.end_offset - pos).min(1 << 20))
            .map_err(read_err)?;
        if chunk.is_empty() {
            break;
        }
        f.write_at(pos, chunk).map_err(io)?;
        pos += chunk.len() as u64;
    }
    Ok(())
}

/// Recovery decisions as `tracing` events (target `agentwal::recovery`).
/// Each names the segment file, the offset and (for a torn tail) the byte
/// count as separate fields, so an operator can filter and compare them
/// with `wal-inspect verify` without parsing a Debug dump.
fn report_recovery(dir: &Path, report: &OpenReport) {
    if let Some(t) = &report.torn_tail {
        tracing::warn!(
            target: "agentwal::recovery",
            dir = %dir.display(),
            segment = %t.segment.display(),
            offset = t.offset,
            bytes = t.bytes,
            whole_segment = t.whole_segment,
            saved_to = ?report.cut_saved_to,
            not_saved = ?report.cut_not_saved,
            "torn tail cut at open (a partial, unacknowledged write)"
        );
    }
    if let Some(c) = &report.lossy_cut {
        tracing::error!(
            target: "agentwal::recovery",
            dir = %dir.display(),
            segment = %c.segment.display(),
            offset = c.offset,
            reason = %c.reason,
            expected_lsn = c.expected_lsn,
            dropped_segments = report.dropped_segments.len(),
            "lossy recovery: the log was truncated at corrupt acknowledged data"
        );
    }
}

/// Applies the scan's decision: cut a torn tail (saving the bytes), or in
/// lossy mode cut at corruption; returns the segments and the append offset.
fn apply_recovery(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    opts: &LogOptions,
    scan: ScanReport,
    report: &mut OpenReport,
) -> Result<(Vec<super::scan::SegmentScan>, u64)> {
    let ScanReport {
        segments,
        torn_tail,
        corruption,
        dropped_segments,
        ..
    } = scan;
    let mut cut: Option<(PathBuf, u64)> = None;
    if let Some(c) = corruption {
        if opts.recovery == RecoveryMode::Strict {
            return Err(c.to_error());
        }
        for p in &dropped_segments {
            let to = super::format::dropped_path(p);
            storage
                .rename(p, &to)
                .map_err(|e| Error::io("set aside segment", p, e))?;
        }
        report.dropped_segments = dropped_segments;
        if c.offset == 0 {
            // A whole damaged segment: set it aside too.
            let to = super::format::dropped_path(&c.segment);
            storage
                .rename(&c.segment, &to)
                .map_err(|e| Error::io("set aside segment", &c.segment, e))?;
            report.dropped_segments.insert(0, c.segment.clone());
        } else {
            cut = Some((c.segment.clone(), c.offset));
        }
        report.lossy_cut = Some(c);
        storage
            .sync_dir(dir)
            .map_err(|e| Error::io("fsync directory", dir, e))?;
    } else if let Some(t) = torn_tail.clone() {
        if t.whole_segment {
            save_cut_or_report(storage, dir, &t.segment, 0, report);
            storage
                .remove_file(&t.segment)
                .map_err(|e| Error::io("remove torn segment", &t.segment, e))?;
            storage
                .sync_dir(dir)
                .map_err(|e| Error::io("fsync directory", dir, e))?;
        } else {
            cut = Some((t.segment.clone(), t.offset));
        }
        report.torn_tail = Some(t);
    }
    if let Some((path, offset)) = cut {
        save_cut_or_report(storage, dir, &path, offset, report);
        zero_from(storage.as_ref(), &path, offset)?;
    }
    let pos = segments
        .last()
        .map_or(SEGMENT_HEADER as u64, |s| s.end_offset);
    Ok((segments, pos))
}

/// Saves the bytes a cut removes (see [`save_cut`]); when that fails (a
/// full disk, an I/O error) recovery goes on: the bytes were never
/// acknowledged, and cutting needs no space. The report says why.
fn save_cut_or_report(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    path: &Path,
    offset: u64,
    report: &mut OpenReport,
) {
    match save_cut(storage, dir, path, offset) {
        Ok(saved) => {
            if report.cut_saved_to.is_none() {
                report.cut_saved_to = saved;
            }
        }
        Err(e) => {
            report.cut_not_saved = Some(format!(
                "could not save the cut bytes of {} from offset {offset}: {e}",
                path.display()
            ));
        }
    }
}

/// Copies the bytes of `path` from `offset` to its last non-zero byte into a
/// side file `cut-<segment>-<offset>.bin`, durably.
/// Nothing is saved (`None`) when there is no non-zero byte to keep, so a
/// segment whose creation never got past its zero fill leaves no empty file.
/// On failure the side file is removed again (best effort), so no empty or
/// partial copy is left to be mistaken for the cut bytes.
fn save_cut(
    storage: &Arc<dyn Storage>,
    dir: &Path,
    path: &Path,
    offset: u64,
) -> Result<Option<PathBuf>> {
    // The segment is live (recovery is about to zero part of it): positional
    // reads, not a map, one bounded window at a time.
    let read_err = |e| Error::io("read segment", path, e);
    let mut src = Source::live(storage.clone(), path, u64::MAX).map_err(read_err)?;
    let start = offset.min(src.len());
    let end = src.nonzero_end(start).map_err(read_err)?;
    if end == start {
        return Ok(None);
    }
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("segment");
    let mut side = dir.join(format!("cut-{stem}-{offset}.bin"));
    let mut n = 1;
    while storage.map(&side).is_ok() {
        side = dir.join(format!("cut-{stem}-{offset}.{n}.bin"));
        n += 1;
    }
    let f = storage
        .open(&side, OpenMode::CreateNew)
        .map_err(|e| Error::io("create cut file", &side, e))?;
    let mut copy = || -> Result<()> {
        let mut off = start;
        while off < end {
            let b = src.bytes(off, (end - off).min(1 << 20)).map_err(read_err)?;
            if b.is_empty() {
                break;
            }
            f.write_at(off - start, b)
                .map_err(|e| Error::io("write cut file", &side, e))?;
            off += b.len() as u64;
        }
        Ok(())
    };
    let written = copy()
        .and_then(|()| {
            f.sync_all()
                .map_err(|e| Error::io("fsync cut file", &side, e))
        })
        .and_then(|()| {
            // The copy's name durable too, or a power loss could take the
            // only copy of the cut bytes away.
            storage
                .sync_dir(dir)
                .map_err(|e| Error::io("fsync directory", dir, e))
        });
    if let Err(e) = written {
        drop(f);
        // Best effort: the caller reports `e` either way.
        if storage.remove_file(&side).is_ok() {
            let _ = storage.sync_dir(dir);
        }
        return Err(e);
    }
    Ok(Some(side))
}

/// Overwrites `path` from `offset` to its end with zeros and syncs, so stale
/// bytes can never be mistaken for records written after recovery.
///
/// Never truncates, even without preallocation: a read-only reader
/// (`wal-inspect`, [`crate::log::LogReader`]) may have the file mapped, and
/// touching a mapped page past a shrunk end is a `SIGBUS`. Overwriting in
/// place also needs no free space, so a torn tail is cut on a full disk.
fn zero_from(storage: &dyn Storage, path: &Path, offset: u64) -> Result<()> {
    let f = storage
        .open(path, OpenMode::ReadWrite)
        .map_err(|e| Error::io("open segment", path, e))?;
    let len = f.len().map_err(|e| Error::io("stat segment", path, e))?;
    let chunk = vec![0u8; (len.saturating_sub(offset)).min(1 << 20) as usize];
    let mut off = offset;
    while off < len {
        let n = (len - off).min(chunk.len() as u64) as usize;
        f.write_at(off, &chunk[..n])
            .map_err(|e| Error::io("zero torn tail", path, e))?;
        off += n as u64;
    }
    f.sync_all().map_err(|e| Error::io("fsync", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::segment::segment_name;
    use crate::log::storage::sim::CrashMode;
    use crate::log::SimStorage;

    fn small() -> LogOptions {
        LogOptions {
            segment_size: 4096,
            max_record_bytes: 1024,
            ..LogOptions::default()
        }
    }

    fn payloads(log: &Log, from: Lsn) -> Vec<Vec<u8>> {
        log.read_from(from)
            .unwrap()
            .map(|r| r.unwrap().payload().to_vec())
            .collect()
    }

    #[test]
    fn append_rotate_reopen_and_read_back() {
        let sim = SimStorage::new();
        let dir = Path::new("/j");
        let want: Vec<Vec<u8>> = (0..200u32)
            .map(|i| vec![i as u8; (i % 90) as usize])
            .collect();
        {
            let log = Log::open_with(Arc::new(sim.clone()), dir, small()).unwrap();
            for (i, p) in want.iter().enumerate() {
                assert_eq!(log.append(p).unwrap(), i as u64 + 1);
            }
            assert!(log.segment_count() > 3, "small segments rotate");
            assert_eq!(payloads(&log, 1), want);
        }
        let after = sim.crash(CrashMode::DropUnsynced);
        let log = Log::open_with(Arc::new(after), dir, small()).unwrap();
        assert_eq!(payloads(&log, 1), want);
        assert_eq!(log.next_lsn(), 201);
        assert_eq!(payloads(&log, 150), want[149..].to_vec());
    }

    #[test]
    fn buffered_tail_lost_on_power_loss_but_durable_kept() {
        let sim = SimStorage::new();
        let dir = Path::new("/j");
        let log = Log::open_with(Arc::new(sim.clone()), dir, small()).unwrap();
        log.append(b"durable").unwrap();
        log.append_with(0, b"buffered", Durability::Buffered)
            .unwrap();
        let after = sim.crash(CrashMode::DropUnsynced);
        drop(log);
        let log = Log::open_with(Arc::new(after), dir, small()).unwrap();
        assert_eq!(payloads(&log, 1), vec![b"durable".to_vec()]);
        assert_eq!(log.append(b"next").unwrap(), 2);
    }

    #[test]
    fn torn_tail_is_cut_saved_and_overwritten() {
        let sim = SimStorage::new();
        let dir = Path::new("/j");
        let log = Log::open_with(Arc::new(sim.clone()), dir, small()).unwrap();
        log.append(b"one").unwrap();
        log.append_with(0, b"two-not-synced", Durability::Buffered)
            .unwrap();
        let seg = dir.join(segment_name(1));
        let image = sim.crash(CrashMode::KeepAll);
        drop(log);
        // Tear the second record: keep its header, garble its payload.
        let off = SEGMENT_HEADER as u64 + encoded_len(3) as u64 + 30;
        image.poke(&seg, off, b"XX").unwrap();
        let log = Log::open_with(Arc::new(image.clone()), dir, small()).unwrap();
        let t = log
            .open_report()
            .torn_tail
            .clone()
            .expect("torn tail reported");
        assert_eq!(t.offset, SEGMENT_HEADER as u64 + encoded_len(3) as u64);
        assert!(log.open_report().cut_saved_to.is_some());
        assert_eq!(payloads(&log, 1), vec![b"one".to_vec()]);
        log.append(b"2").unwrap();
        drop(log);
        let log = Log::open_with(Arc::new(image), dir, small()).unwrap();
        assert!(log.open_report().torn_tail.is_none());
        assert_eq!(payloads(&log, 1), vec![b"one".to_vec(), b"2".to_vec()]);
    }

    #[test]
    fn damage_before_a_later_synced_record_is_corruption() {
        let sim = SimStorage::new();
        let dir = Path::new("/j");
        let log = Log::open_with(Arc::new(sim.clone()), dir, small()).unwrap();
        log.append(b"one").unwrap();
        log.append(b"two").unwrap();
        log.append(b"three").unwrap();
        drop(log);
        let seg = dir.join(segment_name(1));
        let off = SEGMENT_HEADER as u64 + encoded_len(3) as u64;
        sim.poke(&seg, off + 29, b"!").unwrap();
        match Log::open_with(Arc::new(sim.clone()), dir, small()) {
            Err(Error::Corruption {
                segment, offset, ..
            }) => {
                assert_eq!(segment, seg);
                assert_eq!(offset, off);
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        let lossy = LogOptions {
            recovery: RecoveryMode::Lossy,
            ..small()
        };
        let log = Log::open_with(Arc::new(sim), dir, lossy).unwrap();
        assert!(log.open_report().lossy_cut.is_some());
        assert_eq!(payloads(&log, 1), vec![b"one".to_vec()]);
    }

    #[test]
    fn poisoned_after_failed_sync_and_reopen_recovers() {
        use crate::log::storage::sim::{FaultKind, FaultOp};
        let sim = SimStorage::new();
        let dir = Path::new("/j");
        let log = Log::open_with(Arc::new(sim.clone()), dir, small()).unwrap();
        log.append(b"ok").unwrap();
        sim.inject(FaultOp::Sync, 0, FaultKind::Eio);
        assert!(matches!(log.append(b"fails"), Err(Error::Io { .. })));
        assert!(matches!(
            log.append(b"refused"),
            Err(Error::Poisoned { .. })
        ));
        drop(log);
        let log =
            Log::open_with(Arc::new(sim.crash(CrashMode::DropUnsynced)), dir, small()).unwrap();
        assert_eq!(payloads(&log, 1), vec![b"ok".to_vec()]);
    }

    #[test]
    fn second_owner_is_locked_out() {
        let sim = SimStorage::new();
        let dir = Path::new("/j");
        let _a = Log::open_with(Arc::new(sim.clone()), dir, small()).unwrap();
        assert!(matches!(
            Log::open_with(Arc::new(sim), dir, small()),
            Err(Error::Locked { .. })
        ));
    }

    #[test]
    fn snapshot_and_truncate_keep_the_tail() {
        let sim = SimStorage::new();
        let dir = Path::new("/j");
        let log = Log::open_with(Arc::new(sim.clone()), dir, small()).unwrap();
        for i in 0..300u32 {
            log.append(&i.to_le_bytes()).unwrap();
        }
        let before = log.segment_count();
        log.write_snapshot(250, b"state").unwrap();
        assert!(log.truncate_before(251).unwrap() > 0);
        assert!(log.segment_count() < before);
        drop(log);
        let log =
            Log::open_with(Arc::new(sim.crash(CrashMode::DropUnsynced)), dir, small()).unwrap();
        let snap = log.latest_snapshot().unwrap().unwrap();
        assert_eq!((snap.lsn, snap.data.as_slice()), (250, &b"state"[..]));
        let tail = payloads(&log, 251);
        assert_eq!(tail.len(), 50);
        assert_eq!(tail[0], 250u32.to_le_bytes().to_vec());
    }

    #[test]
    fn group_commit_shares_syncs_between_threads() {
        let sim = SimStorage::new();
        let dir = Path::new("/j");
        let log = Log::open_with(
            Arc::new(sim.clone()),
            dir,
            LogOptions {
                segment_size: 1 << 20,
                ..small()
            },
        )
        .unwrap();
        let base = sim.syncs();
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let log = log.clone();
                s.spawn(move || {
                    for i in 0..50u8 {
                        log.append(&[t, i]).unwrap();
                    }
                });
            }
        });
        let mut seen: Vec<Vec<u8>> = payloads(&log, 1);
        assert_eq!(seen.len(), 400);
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 400);
        assert!(sim.syncs() - base <= 400);
    }

    #[test]
    fn gathering_leaves_no_waiter_behind_and_a_lone_writer_still_syncs() {
        let sim = SimStorage::new();
        let dir = Path::new("/j");
        let opts = LogOptions {
            segment_size: 1 << 20,
            ..small()
        };
        let log = Log::open_with(Arc::new(sim.clone()), dir, opts.clone()).unwrap();
        // Several writers make the next leaders expect a group…
        std::thread::scope(|s| {
            for t in 0..6u8 {
                let log = log.clone();
                s.spawn(move || {
                    for i in 0..30u8 {
                        log.append(&[t, i]).unwrap();
                    }
                });
            }
        });
        assert!(log.inner.syncing.lock().waiters.is_empty());
        // …then they are gone: a lone writer must still get every append
        // durable (the gather times out or is skipped, never waits forever).
        for i in 0..20u8 {
            let lsn = log.append(&[99, i]).unwrap();
            assert!(log.durable_lsn() >= lsn);
        }
        assert!(log.inner.syncing.lock().waiters.is_empty());
        drop(log);
        let after = sim.crash(CrashMode::DropUnsynced);
        let log = Log::open_with(Arc::new(after), dir, opts).unwrap();
        let seen = payloads(&log, 1);
        assert_eq!(seen.len(), 6 * 30 + 20);
        assert_eq!(seen.last().unwrap(), &vec![99u8, 19]);
    }
}

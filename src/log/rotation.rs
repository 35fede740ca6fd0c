//! Segment creation and rotation off the critical path.
//!
//! **Promises.** A rotation (the append that does not fit in the active
//! segment) never writes a segment's worth of zeros under the writer lock
//! when a *spare* is ready: a file named `segment-<n>.spare`, zero-filled to
//! `segment_size` with real zeros and `fsync`ed, that a background thread
//! prepares while the active segment fills. Installing it costs one page
//! write, one `fdatasync` of that page (the header, durable before the name
//! and before any record, so recovery's rule "a damaged header with records
//! after it is corruption" stays strict) and a rename; no directory sync:
//! the old segment's seal is usually covered by the last group commit, and
//! the new name becomes durable before the first group commit into the new
//! segment acknowledges anything there (its leader syncs the directory if
//! nothing did yet; see "Where the syncs are" in `writer`).
//!
//! **The new name, ahead of the group commit.** Right after a rotation
//! renamed its segment, the same background thread `fsync`s the directory
//! (`Preparer::sync_name`) and publishes the segment's first LSN as named
//! (`named`) once that sync succeeded. It runs while the first group commit
//! in the new segment is still in its `fdatasync`, so the leader usually
//! finds the name durable and issues no directory sync of its own; when it
//! does not (the thread is busy zero-filling, or slow), the leader syncs
//! the directory itself. Sound either way: `named` only moves after a
//! directory sync that *started after the rename returned* succeeded. A
//! failed background sync is never retried: it is kept and poisons the log
//! at the next group commit, as any failed sync does. Without background
//! I/O (the simulator) the leader always syncs the directory itself.
//!
//! When no spare is ready (the preparer is still writing, it
//! failed, for example on a full disk, or preparation is off) the rotation
//! creates the segment inline as before: preparation is an optimisation,
//! never a new way for an append to fail.
//!
//! A spare holds no record and no header until it is installed, so recovery
//! deletes every spare it finds at open (a leftover of a crash, half
//! written or complete) and readers ignore them (`docs/recovery.md`). Only a
//! spare this process prepared and synced is ever installed.
//!
//! **Lifetime.** The preparer thread is started by the first request and
//! belongs to the [`super::Log`]: dropping the last handle stops it (it
//! checks between 1 MiB writes), joins it and removes its spare, before the
//! owner lock is released.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex};

use super::error::{Error, Result};
use super::format::{parse_spare_name, spare_name};
use super::record::{Codec, Lsn};
use super::segment::{encode_header, segment_name, SEGMENT_HEADER};
use super::storage::{OpenMode, Storage, StorageFile};
use super::writer::LogOptions;

/// Size of each zero-filling write.
const FILL_CHUNK: usize = 1 << 20;

/// A prepared, synced, zero-filled file waiting to become the next segment.
#[derive(Debug)]
pub(crate) struct Spare {
    file: Arc<dyn StorageFile>,
    path: PathBuf,
}

/// Writes zeros over `from..to` of `file` in 1 MiB writes; stops early
/// (returning `Ok(false)`) when `stop` says so.
fn zero_fill(
    file: &dyn StorageFile,
    from: u64,
    to: u64,
    stop: &dyn Fn() -> bool,
) -> std::io::Result<bool> {
    let chunk = vec![0u8; FILL_CHUNK.min(to.saturating_sub(from) as usize)];
    let mut off = from;
    while off < to {
        if stop() {
            return Ok(false);
        }
        let n = (to - off).min(chunk.len() as u64) as usize;
        file.write_at(off, &chunk[..n])?;
        off += n as u64;
    }
    Ok(true)
}

/// Creates a new segment inline: header (current format, fresh salt), zero
/// fill, fsync. Its *name* is not synced here: the caller syncs the
/// directory (at open) or leaves it to the first group commit (a rotation).
/// Returns the file, its path and its codec.
pub(crate) fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    opts: &LogOptions,
    first_lsn: Lsn,
) -> Result<(Arc<dyn StorageFile>, PathBuf, Codec)> {
    let path = dir.join(segment_name(first_lsn));
    let file = storage
        .open(&path, OpenMode::CreateNew)
        .map_err(|e| Error::io("create segment", &path, e))?;
    let io = |op, e| Error::io(op, &path, e);
    if opts.preallocate {
        // Real zeros (not fallocate): an unwritten extent would make every
        // later fdatasync commit an extent conversion, as costly as appending.
        zero_fill(
            file.as_ref(),
            SEGMENT_HEADER as u64,
            opts.segment_size,
            &|| false,
        )
        .map_err(|e| io("preallocate", e))?;
    }
    let salt = storage.segment_salt(first_lsn);
    file.write_at(0, &encode_header(first_lsn, salt))
        .map_err(|e| io("write header", e))?;
    // Zeros and size durable now: recovery reads zeros past the last record
    // as the clean end, and without this the first group commit would have
    // to write the zeros and commit the size while appenders wait.
    file.sync_all().map_err(|e| io("fsync", e))?;
    Ok((file, path, Codec::V2 { salt }))
}

/// Turns a prepared spare into the segment starting at `first_lsn`: header,
/// header sync, rename. No directory sync: the name becomes durable with
/// the directory sync the spare thread or the group-commit leader does
/// before a record in it is acknowledged (`writer`). Until then a crash
/// leaves the spare (removed at open, nothing in it was acknowledged) or
/// the renamed segment with a durable header.
/// Returns what [`create_segment`] returns.
pub(crate) fn install_spare(
    storage: &dyn Storage,
    dir: &Path,
    spare: Spare,
    first_lsn: Lsn,
) -> Result<(Arc<dyn StorageFile>, PathBuf, Codec)> {
    let Spare {
        file,
        path: spare_path,
    } = spare;
    let path = dir.join(segment_name(first_lsn));
    let salt = storage.segment_salt(first_lsn);
    file.write_at(0, &encode_header(first_lsn, salt))
        .map_err(|e| Error::io("write header", &spare_path, e))?;
    // The header durable before the name and before any record: a named
    // segment never has a header a power loss can take away, so recovery
    // keeps its strict rule "a damaged header with records after it is
    // corruption" (a header wiped with its salt would otherwise leave
    // acknowledged records that nothing can check, and they would be cut
    // quietly). The zeros and the size were synced when the spare was
    // prepared, so this flushes one page and commits no metadata.
    file.sync_data()
        .map_err(|e| Error::io("fdatasync", &spare_path, e))?;
    storage
        .rename(&spare_path, &path)
        .map_err(|e| Error::io("install spare segment", &spare_path, e))?;
    Ok((file, path, Codec::V2 { salt }))
}

/// Removes every spare in `dir` (leftovers of an earlier owner; see the
/// module docs). Best effort: a spare that cannot be removed is never
/// installed (only spares prepared by this process are), it only takes
/// space until the next open. Returns the highest spare number seen, so new
/// spares never collide with one that could not be removed.
pub(crate) fn remove_leftover_spares(storage: &dyn Storage, dir: &Path) -> u64 {
    let Ok(listing) = storage.list_dir(dir) else {
        return 0;
    };
    let mut highest = 0;
    for p in listing {
        if let Some(n) = parse_spare_name(&p) {
            highest = highest.max(n);
            // No directory sync: if the removal is lost in a crash, the next
            // open removes the spare again.
            if let Err(e) = storage.remove_file(&p) {
                tracing::warn!(
                    target: "agentwal::recovery",
                    spare = %p.display(),
                    error = %e,
                    "could not remove a leftover spare segment"
                );
            }
        }
    }
    highest
}

#[derive(Debug, Default)]
struct SpareState {
    /// A spare was asked for and not yet started.
    wanted: bool,
    /// The ready spare, if any.
    ready: Option<Spare>,
    /// Number of the next spare file.
    next_id: u64,
    /// A rotation asks for the directory to be synced for the segment
    /// starting at this LSN (see the module docs).
    name_wanted: Option<Lsn>,
    /// A background directory sync failed (never retried; see the module docs).
    name_failed: Option<String>,
    /// The log is closing: stop and exit.
    shutdown: bool,
}

#[derive(Debug)]
struct Shared {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    segment_size: u64,
    /// First LSN of the newest segment whose name is known durable (shared
    /// with the log, see `writer`).
    named: Arc<AtomicU64>,
    state: Mutex<SpareState>,
    wake: Condvar,
}

impl Shared {
    /// Prepares one spare numbered `id`: create, zero-fill, `fsync`. On any
    /// failure the partial file is removed (best effort) and `None` returned:
    /// the next rotation then creates its segment inline.
    fn prepare(&self, id: u64) -> Option<Spare> {
        let path = self.dir.join(spare_name(id));
        let stop = || self.state.lock().shutdown;
        let result = self
            .storage
            .open(&path, OpenMode::CreateNew)
            .and_then(|file| {
                let done = zero_fill(file.as_ref(), 0, self.segment_size, &stop)?;
                // Zeros and size durable now, off the critical path: the
                // segment relies on them (recovery reads zeros past the tail
                // as the clean end), and without this sync the first
                // fdatasync after installation would have to write the whole
                // segment's zeros while appenders wait.
                if done {
                    file.sync_all()?;
                }
                Ok(done.then_some(file))
            });
        match result {
            Ok(Some(file)) => Some(Spare { file, path }),
            Ok(None) => {
                let _ = self.storage.remove_file(&path);
                None
            }
            Err(e) => {
                // A full disk or an I/O error: no spare this time. Nothing
                // is poisoned: no record is involved, and the rotation falls
                // back to creating its segment inline.
                tracing::warn!(
                    target: "agentwal::log",
                    spare = %path.display(),
                    error = %e,
                    "could not prepare a spare segment; the next rotation creates one inline"
                );
                let _ = self.storage.remove_file(&path);
                None
            }
        }
    }

    fn run(&self) {
        let mut st = self.state.lock();
        loop {
            if st.shutdown {
                return;
            }
            if let Some(first) = st.name_wanted.take() {
                // Before any zero fill: the next group commit may be waiting.
                drop(st);
                let synced = self.storage.sync_dir(&self.dir);
                st = self.state.lock();
                match synced {
                    Ok(()) => {
                        self.named.fetch_max(first, Ordering::AcqRel);
                    }
                    Err(e) => {
                        tracing::warn!(
                            target: "agentwal::log",
                            dir = %self.dir.display(),
                            error = %e,
                            "background directory sync failed; the log poisons at its next group commit"
                        );
                        st.name_failed.get_or_insert(e.to_string());
                    }
                }
                continue;
            }
            if !st.wanted || st.ready.is_some() {
                st.wanted = false;
                self.wake.wait(&mut st);
                continue;
            }
            st.wanted = false;
            let id = st.next_id;
            st.next_id = id.wrapping_add(1);
            drop(st);
            let spare = self.prepare(id);
            st = self.state.lock();
            if st.shutdown {
                drop(st);
                if let Some(s) = spare {
                    let _ = self.storage.remove_file(&s.path);
                }
                return;
            }
            st.ready = spare;
        }
    }
}

/// Keeps one spare segment ready (see the module docs).
#[derive(Debug)]
pub(crate) struct Preparer {
    shared: Arc<Shared>,
    enabled: bool,
    background: bool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Preparer {
    /// A preparer for the log in `dir`; spares are numbered from `next_id`;
    /// `named` is the log's first LSN of the newest durably named segment.
    pub(crate) fn new(
        storage: Arc<dyn Storage>,
        dir: &Path,
        opts: &LogOptions,
        next_id: u64,
        named: Arc<AtomicU64>,
    ) -> Preparer {
        let background = storage.allows_background_io();
        Preparer {
            shared: Arc::new(Shared {
                storage,
                dir: dir.to_path_buf(),
                segment_size: opts.segment_size,
                named,
                state: Mutex::new(SpareState {
                    next_id,
                    ..SpareState::default()
                }),
                wake: Condvar::new(),
            }),
            enabled: opts.prepare_segments && opts.preallocate,
            background,
            thread: Mutex::new(None),
        }
    }

    /// Asks for a spare to be ready for the next rotation. In the
    /// background (starting the thread on first use), or right here when the
    /// storage allows no background I/O (the simulator: a thread would make
    /// its operation order, and so crash sweeps, irreproducible).
    pub(crate) fn request(&self) {
        if !self.enabled {
            return;
        }
        if !self.background {
            let id = {
                let mut st = self.shared.state.lock();
                if st.ready.is_some() || st.shutdown {
                    return;
                }
                let id = st.next_id;
                st.next_id = id.wrapping_add(1);
                id
            };
            let spare = self.shared.prepare(id);
            self.shared.state.lock().ready = spare;
            return;
        }
        {
            let mut st = self.shared.state.lock();
            if st.ready.is_some() || st.shutdown {
                return;
            }
            st.wanted = true;
        }
        self.wake();
    }

    /// Asks the background thread to make the name of the segment starting
    /// at `first` durable (a directory sync) ahead of the group commit that
    /// needs it (see the module docs). Nothing without background I/O or
    /// with preparation off: the group-commit leader syncs it.
    pub(crate) fn sync_name(&self, first: Lsn) {
        if !self.enabled || !self.background {
            return;
        }
        {
            let mut st = self.shared.state.lock();
            if st.shutdown {
                return;
            }
            st.name_wanted = Some(st.name_wanted.map_or(first, |f| f.max(first)));
        }
        self.wake();
    }

    /// Why a background directory sync failed, if one did.
    pub(crate) fn name_sync_failure(&self) -> Option<String> {
        self.shared.state.lock().name_failed.clone()
    }

    /// Wakes the thread, starting it on first use.
    fn wake(&self) {
        let mut thread = self.thread.lock();
        if thread.is_none() {
            let shared = self.shared.clone();
            match std::thread::Builder::new()
                .name("agentwal-spare".into())
                .spawn(move || shared.run())
            {
                Ok(h) => *thread = Some(h),
                Err(e) => {
                    // No thread, no spare: rotations create segments inline
                    // (and group commits sync the directory themselves).
                    tracing::warn!(target: "agentwal::log", error = %e, "could not start the spare-segment thread");
                    let mut st = self.shared.state.lock();
                    st.wanted = false;
                    st.name_wanted = None;
                    return;
                }
            }
        }
        self.shared.wake.notify_all();
    }

    /// Takes the ready spare, if there is one (never waits for one being
    /// prepared: the caller then creates its segment inline, and the spare
    /// in progress serves the rotation after).
    pub(crate) fn take(&self) -> Option<Spare> {
        self.shared.state.lock().ready.take()
    }

    /// Bytes held by the ready spare (0 or `segment_size`).
    pub(crate) fn spare_bytes(&self) -> u64 {
        if self.shared.state.lock().ready.is_some() {
            self.shared.segment_size
        } else {
            0
        }
    }

    /// Stops and joins the thread and removes the spare (best effort).
    fn shutdown(&self) {
        self.shared.state.lock().shutdown = true;
        self.shared.wake.notify_all();
        if let Some(h) = self.thread.lock().take() {
            let _ = h.join();
        }
        if let Some(s) = self.shared.state.lock().ready.take() {
            drop(s.file);
            let _ = self.shared.storage.remove_file(&s.path);
        }
    }
}

impl Drop for Preparer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

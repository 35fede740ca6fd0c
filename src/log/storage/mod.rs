//! The storage seam: every byte the log writes or reads goes through [`Storage`].
//!
//! Two implementations ship with the crate (the second only with the
//! `testing` feature, never in the default build):
//!
//! * [`FsStorage`] — the real file system (positional `pwrite`, `fdatasync`,
//!   directory `fsync`, `flock`, memmap2 for read-only views);
//! * `SimStorage` (`sim`) — an in-memory file system that keeps *live* and *durable*
//!   images apart, can simulate a power loss (dropping, tearing and reordering
//!   unsynced writes, forgetting directory entries that were never made durable
//!   by a directory sync) and injects I/O errors (EIO, ENOSPC, failed sync).
//!
//! # Contract
//!
//! * `write_at` may be persisted partially or not at all until `sync_data` /
//!   `sync_all` on the same file returns `Ok`.
//! * `sync_data` makes the file's *content* durable (it is `fdatasync`);
//!   it does not make the file's directory entry durable.
//! * A created, renamed or removed directory entry is durable only after
//!   `sync_dir` on its parent directory returned `Ok`.
//! * After a failed `sync_data` the content of unsynced pages is unknown; the
//!   caller must not retry the sync and pretend it succeeded (see "fsyncgate").

#[cfg(any(test, feature = "testing"))]
pub(crate) mod forwarding;
mod fs;
#[cfg(any(test, feature = "testing"))]
pub mod sim;

use std::fmt::Debug;
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use fs::FsStorage;
#[cfg(any(test, feature = "testing"))]
pub use sim::SimStorage;

/// How a file is opened through the seam.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create a new file (owner-only permissions); fails if it exists.
    CreateNew,
    /// Open an existing file for reading and writing.
    ReadWrite,
    /// Open an existing file for reading only.
    ReadOnly,
}

/// An open file handle of a [`Storage`].
///
/// All methods take `&self` so that one thread can `sync_data` while another
/// writes at a later offset (positional I/O, no shared cursor).
pub trait StorageFile: Send + Sync + Debug {
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Makes the file content durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Makes the file content and metadata durable (`fsync`).
    fn sync_all(&self) -> io::Result<()>;
    /// Sets the file length (truncates or extends with zeros).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The current file length.
    fn len(&self) -> io::Result<u64>;
    /// True when the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// A read-only view of a whole file (a memory map on the real file system).
#[derive(Clone)]
pub struct FileBytes(Arc<dyn Deref<Target = [u8]> + Send + Sync>);

impl FileBytes {
    /// Wraps any owned byte container.
    pub fn new<T: Deref<Target = [u8]> + Send + Sync + 'static>(bytes: T) -> Self {
        FileBytes(Arc::new(bytes))
    }
}

impl Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Debug for FileBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileBytes({} bytes)", self.0.len())
    }
}

/// Reads the first `max` bytes of an open file (all of it if shorter) with
/// positional reads, continuing short reads and retrying `EINTR`.
/// Allocates at most the file's current length.
pub fn read_file_prefix(f: &dyn StorageFile, max: u64) -> io::Result<FileBytes> {
    read_file_range(f, 0, max)
}

/// Up to `max` bytes of an open file from `offset`, continuing short reads
/// (fewer when the file ends first, none past its end).
pub fn read_file_range(f: &dyn StorageFile, offset: u64, max: u64) -> io::Result<FileBytes> {
    let len = f.len()?.saturating_sub(offset).min(max);
    let len = usize::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large to read"))?;
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match f.read_at(offset + got as u64, &mut buf[got..]) {
            Ok(0) => break, // the file shrank meanwhile
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(FileBytes::new(buf))
}

/// An exclusive lock on a directory, released when dropped.
pub trait DirLock: Send + Sync + Debug {}

/// Why a directory lock could not be taken.
#[derive(Debug)]
pub enum LockFailure {
    /// Another owner holds the lock; its pid when it wrote one.
    Held {
        /// Process id recorded by the holder, if readable.
        pid: Option<u32>,
    },
    /// An I/O error while taking the lock.
    Io(io::Error),
}

/// The file-system seam. See the module documentation for the contract.
pub trait Storage: Send + Sync + Debug {
    /// Creates a directory and its parents (owner-only, 0700).
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Lists the plain files directly inside `dir` (full paths, any order).
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// True when `path` exists and is a directory.
    fn is_dir(&self, path: &Path) -> io::Result<bool>;
    /// Opens a file.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>>;
    /// Atomically renames `from` to `to` (replacing `to`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries durable (`fsync` on the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// A read-only view of the whole file as it is now (a memory map on the
    /// real file system). Only for files nobody writes any more (sealed
    /// segments, snapshots): an I/O error on a mapped page, or a file
    /// shrunk underneath the map, is a `SIGBUS`, not an error.
    fn map(&self, path: &Path) -> io::Result<FileBytes>;
    /// The first `max` bytes of the file (all of it if shorter), read with
    /// positional reads into memory. For files another process may be
    /// writing (the live segment): every failure is an `io::Error`, short
    /// reads are continued, and a file that shrinks meanwhile yields the
    /// bytes that were there.
    fn read_prefix(&self, path: &Path, max: u64) -> io::Result<FileBytes> {
        self.read_range(path, 0, max)
    }
    /// Up to `max` bytes of the file from `offset` (fewer at its end), read
    /// with positional reads into memory, under the same rules as
    /// [`Storage::read_prefix`] (which is this from offset 0). The log reads
    /// the live segment through this method only, one bounded window at a
    /// time; a wrapper that wants to see those reads overrides this one.
    fn read_range(&self, path: &Path, offset: u64, max: u64) -> io::Result<FileBytes> {
        let f = self.open(path, OpenMode::ReadOnly)?;
        read_file_range(f.as_ref(), offset, max)
    }
    /// The salt for a new segment whose first LSN is `first_lsn` (see
    /// `docs/format.md`): random on a real file system; `SimStorage` (feature `testing`)
    /// derives it from its own state so simulated runs are reproducible.
    fn segment_salt(&self, first_lsn: u64) -> u32 {
        super::segment::new_salt(first_lsn)
    }
    /// Whether the log may do I/O on this storage from a thread of its own
    /// (preparing the next segment while the active one fills; see
    /// `LogOptions::prepare_segments`). True on a real file system.
    /// `SimStorage` says no: a seed or a halt point must replay the same
    /// operations in the same order, so the simulator gets the same
    /// preparation steps on the appending thread instead.
    fn allows_background_io(&self) -> bool {
        true
    }
    /// Takes the exclusive owner lock of `dir` without blocking.
    fn lock_dir(&self, dir: &Path) -> Result<Box<dyn DirLock>, LockFailure>;
}

//! Wrappers that hand every call to another [`Storage`] (or
//! [`StorageFile`]) except the few a test takes over (feature `testing`).

use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{read_file_range, DirLock, FileBytes, LockFailure, OpenMode, Storage, StorageFile};

/// What a [`ForwardingStorage`] does on each call: by default what `inner`
/// (the wrapped storage) does. Override the calls the test is about.
pub trait StorageHooks: Debug + Send + Sync {
    /// [`Storage::create_dir_all`].
    fn create_dir_all(&self, inner: &dyn Storage, path: &Path) -> io::Result<()> {
        inner.create_dir_all(path)
    }
    /// [`Storage::list_dir`].
    fn list_dir(&self, inner: &dyn Storage, dir: &Path) -> io::Result<Vec<PathBuf>> {
        inner.list_dir(dir)
    }
    /// [`Storage::is_dir`].
    fn is_dir(&self, inner: &dyn Storage, path: &Path) -> io::Result<bool> {
        inner.is_dir(path)
    }
    /// [`Storage::open`]; wrap the file in a [`ForwardingFile`] to see its
    /// reads and writes.
    fn open(
        &self,
        inner: &dyn Storage,
        path: &Path,
        mode: OpenMode,
    ) -> io::Result<Arc<dyn StorageFile>> {
        inner.open(path, mode)
    }
    /// [`Storage::rename`].
    fn rename(&self, inner: &dyn Storage, from: &Path, to: &Path) -> io::Result<()> {
        inner.rename(from, to)
    }
    /// [`Storage::remove_file`].
    fn remove_file(&self, inner: &dyn Storage, path: &Path) -> io::Result<()> {
        inner.remove_file(path)
    }
    /// [`Storage::sync_dir`].
    fn sync_dir(&self, inner: &dyn Storage, dir: &Path) -> io::Result<()> {
        inner.sync_dir(dir)
    }
    /// [`Storage::map`].
    fn map(&self, inner: &dyn Storage, path: &Path) -> io::Result<FileBytes> {
        inner.map(path)
    }
    /// [`Storage::read_range`] (and so [`Storage::read_prefix`]). By
    /// default positional reads of a file opened through [`Self::open`],
    /// as the trait's own default does: a hook on the file sees them too.
    fn read_range(
        &self,
        inner: &dyn Storage,
        path: &Path,
        offset: u64,
        max: u64,
    ) -> io::Result<FileBytes> {
        let f = self.open(inner, path, OpenMode::ReadOnly)?;
        read_file_range(f.as_ref(), offset, max)
    }
    /// [`Storage::segment_salt`].
    fn segment_salt(&self, inner: &dyn Storage, first_lsn: u64) -> u32 {
        inner.segment_salt(first_lsn)
    }
    /// [`Storage::allows_background_io`].
    fn allows_background_io(&self, inner: &dyn Storage) -> bool {
        inner.allows_background_io()
    }
    /// [`Storage::lock_dir`].
    fn lock_dir(&self, inner: &dyn Storage, dir: &Path) -> Result<Box<dyn DirLock>, LockFailure> {
        inner.lock_dir(dir)
    }
}

/// A [`Storage`] that hands every call to the one it wraps, through its
/// [`StorageHooks`].
///
/// A test that wants to see or change some calls (count the reads, slow
/// the writes, show a reader a doctored image for an instant) writes only
/// those as hooks; everything else reaches the wrapped storage unchanged:
///
/// ```
/// use std::path::Path;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use agentwal::log::storage::{OpenMode, Storage, StorageFile};
/// use agentwal::log::testing::{ForwardingStorage, StorageHooks};
/// use agentwal::log::{Log, LogOptions, SimStorage};
///
/// /// Counts the files opened.
/// #[derive(Debug, Default)]
/// struct Opens(AtomicU64);
///
/// impl StorageHooks for Opens {
///     fn open(
///         &self,
///         inner: &dyn Storage,
///         path: &Path,
///         mode: OpenMode,
///     ) -> std::io::Result<Arc<dyn StorageFile>> {
///         self.0.fetch_add(1, Ordering::Relaxed);
///         inner.open(path, mode)
///     }
/// }
///
/// let storage = Arc::new(ForwardingStorage::new(SimStorage::new(), Opens::default()));
/// let opts = LogOptions { segment_size: 1 << 20, max_record_bytes: 64 << 10, ..LogOptions::default() };
/// let log = Log::open_with(storage.clone(), Path::new("/j"), opts).unwrap();
/// log.append(b"hello").unwrap();
/// assert!(storage.hooks().0.load(Ordering::Relaxed) > 0);
/// ```
#[derive(Debug)]
pub struct ForwardingStorage<H> {
    inner: Arc<dyn Storage>,
    hooks: H,
}

impl<H: StorageHooks> ForwardingStorage<H> {
    /// Wraps `inner`; `hooks` sees every call.
    pub fn new(inner: impl Storage + 'static, hooks: H) -> Self {
        Self::wrap(Arc::new(inner), hooks)
    }
    /// [`Self::new`] for a storage already shared.
    pub fn wrap(inner: Arc<dyn Storage>, hooks: H) -> Self {
        Self { inner, hooks }
    }
    /// The hooks (and whatever state they keep).
    pub fn hooks(&self) -> &H {
        &self.hooks
    }
}

impl<H: StorageHooks> Storage for ForwardingStorage<H> {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.hooks.create_dir_all(&*self.inner, path)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.hooks.list_dir(&*self.inner, dir)
    }
    fn is_dir(&self, path: &Path) -> io::Result<bool> {
        self.hooks.is_dir(&*self.inner, path)
    }
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        self.hooks.open(&*self.inner, path, mode)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.hooks.rename(&*self.inner, from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.hooks.remove_file(&*self.inner, path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.hooks.sync_dir(&*self.inner, dir)
    }
    fn map(&self, path: &Path) -> io::Result<FileBytes> {
        self.hooks.map(&*self.inner, path)
    }
    fn read_range(&self, path: &Path, offset: u64, max: u64) -> io::Result<FileBytes> {
        self.hooks.read_range(&*self.inner, path, offset, max)
    }
    fn segment_salt(&self, first_lsn: u64) -> u32 {
        self.hooks.segment_salt(&*self.inner, first_lsn)
    }
    fn allows_background_io(&self) -> bool {
        self.hooks.allows_background_io(&*self.inner)
    }
    fn lock_dir(&self, dir: &Path) -> Result<Box<dyn DirLock>, LockFailure> {
        self.hooks.lock_dir(&*self.inner, dir)
    }
}

/// What a [`ForwardingFile`] does on each call: by default what `inner`
/// (the wrapped file) does.
pub trait FileHooks: Debug + Send + Sync {
    /// [`StorageFile::write_at`].
    fn write_at(&self, inner: &dyn StorageFile, offset: u64, buf: &[u8]) -> io::Result<()> {
        inner.write_at(offset, buf)
    }
    /// [`StorageFile::read_at`].
    fn read_at(&self, inner: &dyn StorageFile, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        inner.read_at(offset, buf)
    }
    /// [`StorageFile::sync_data`].
    fn sync_data(&self, inner: &dyn StorageFile) -> io::Result<()> {
        inner.sync_data()
    }
    /// [`StorageFile::sync_all`].
    fn sync_all(&self, inner: &dyn StorageFile) -> io::Result<()> {
        inner.sync_all()
    }
    /// [`StorageFile::set_len`].
    fn set_len(&self, inner: &dyn StorageFile, len: u64) -> io::Result<()> {
        inner.set_len(len)
    }
    /// [`StorageFile::len`].
    fn len(&self, inner: &dyn StorageFile) -> io::Result<u64> {
        inner.len()
    }
}

/// A [`StorageFile`] that hands every call to the one it wraps, through its
/// [`FileHooks`]; what a [`StorageHooks::open`] returns to see a file's I/O.
#[derive(Debug)]
pub struct ForwardingFile<H> {
    inner: Arc<dyn StorageFile>,
    hooks: H,
}

impl<H: FileHooks + 'static> ForwardingFile<H> {
    /// Wraps `inner`, ready to be returned from [`Storage::open`].
    pub fn wrap(inner: Arc<dyn StorageFile>, hooks: H) -> Arc<dyn StorageFile> {
        Arc::new(Self { inner, hooks })
    }
}

impl<H: FileHooks> StorageFile for ForwardingFile<H> {
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.hooks.write_at(&*self.inner, offset, buf)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.hooks.read_at(&*self.inner, offset, buf)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.hooks.sync_data(&*self.inner)
    }
    fn sync_all(&self) -> io::Result<()> {
        self.hooks.sync_all(&*self.inner)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.hooks.set_len(&*self.inner, len)
    }
    fn len(&self) -> io::Result<u64> {
        self.hooks.len(&*self.inner)
    }
}

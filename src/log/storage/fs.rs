//! The real file system behind the [`Storage`] seam.

use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{DirLock, FileBytes, LockFailure, OpenMode, Storage, StorageFile};

use crate::log::format::LOCK_FILE;

/// The operating system's file system (Linux/Unix).
#[derive(Debug, Default, Clone, Copy)]
pub struct FsStorage;

#[derive(Debug)]
struct FsFile(File);

impl StorageFile for FsFile {
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

#[derive(Debug)]
struct FsLock {
    _file: File,
}
impl DirLock for FsLock {}

impl Storage for FsStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        DirBuilder::new().recursive(true).mode(0o700).create(path)
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                out.push(entry.path());
            }
        }
        Ok(out)
    }

    fn is_dir(&self, path: &Path) -> io::Result<bool> {
        match fs::metadata(path) {
            Ok(m) => Ok(m.is_dir()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut o = OpenOptions::new();
        match mode {
            OpenMode::CreateNew => o.read(true).write(true).create_new(true).mode(0o600),
            OpenMode::ReadWrite => o.read(true).write(true),
            OpenMode::ReadOnly => o.read(true),
        };
        Ok(Arc::new(FsFile(o.open(path)?)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        // fsync on a directory handle makes created/renamed/removed entries durable.
        File::open(dir)?.sync_all()
    }

    fn map(&self, path: &Path) -> io::Result<FileBytes> {
        let file = File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Ok(FileBytes::new(Vec::new()));
        }
        // SAFETY: memmap2 requires that the mapped file is not modified or
        // shrunk while mapped; a shrink makes touching the lost pages a SIGBUS.
        // The map is read-only, and agentwal never shrinks a segment or
        // snapshot file: recovery and `repair` zero a cut range in place
        // instead of truncating, compaction unlinks whole files (an unlinked
        // file stays mapped intact), and snapshots are written to a temporary
        // file and renamed. The bytes of the live (last) segment do change
        // while mapped (appends into zeros, recovery zeroing a torn tail), so
        // agentwal itself reads that segment with `read_range` (pread, one window at a time) and
        // maps only sealed segments and snapshots (rewritten only by a lossy
        // recovery zeroing damage in place, which a reader sees as damage,
        // never as a fault). What remains outside this contract: another program
        // truncating the file, or an I/O error on a mapped page, either of
        // which the kernel reports as SIGBUS.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(FileBytes::new(map))
    }

    fn lock_dir(&self, dir: &Path) -> Result<Box<dyn DirLock>, LockFailure> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(LockFailure::Io)?;
        // A few short retries: in a multi-threaded process that spawns
        // children, a child forked between our previous owner's close and its
        // own exec briefly shares the lock's open file description (O_CLOEXEC
        // only closes it at exec), so a just-released lock can look held for
        // a few milliseconds. A real owner still fails after ~200 ms.
        let mut attempt = 0;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if attempt < 20 => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(TryLockError::WouldBlock) => {
                    let mut s = String::new();
                    let _ = file.read_to_string(&mut s);
                    return Err(LockFailure::Held {
                        pid: s.trim().parse().ok(),
                    });
                }
                Err(TryLockError::Error(e)) => return Err(LockFailure::Io(e)),
            }
        }
        // Record our pid for the next would-be owner's error message. Best effort:
        // the lock itself, not this content, is what protects the directory.
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        Ok(Box::new(FsLock { _file: file }))
    }
}

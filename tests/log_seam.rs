//! Guarantee: every byte goes through the `Storage` seam. A full workload
//! (appends, rotation, snapshot, truncation, torn-tail recovery, lossy
//! recovery, read-only reader) runs on a simulator rooted at a path that
//! does not exist on the real disk, through a wrapper that scrambles every
//! byte: if anything bypassed the seam, the real file system would be
//! touched or the log would read back scrambled bytes.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use agentwal::log::storage::{FileBytes, OpenMode, StorageFile};
use agentwal::log::testing::{FileHooks, ForwardingFile, ForwardingStorage, StorageHooks};
use agentwal::log::{Durability, Log, LogOptions, LogReader, RecoveryMode, SimStorage, Storage};

const KEY: u8 = 0x5A;

fn scramble(b: &[u8]) -> Vec<u8> {
    b.iter().map(|x| x ^ KEY).collect()
}

/// XORs every byte on the way in and out, counting calls: the hooks of the
/// storage and of each file it opens.
#[derive(Debug, Clone)]
struct Scrambled {
    calls: Arc<AtomicU64>,
}

impl Scrambled {
    fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

impl FileHooks for Scrambled {
    fn write_at(&self, inner: &dyn StorageFile, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.count();
        inner.write_at(offset, &scramble(buf))
    }
    fn read_at(&self, inner: &dyn StorageFile, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.count();
        let n = inner.read_at(offset, buf)?;
        for b in &mut buf[..n] {
            *b ^= KEY;
        }
        Ok(n)
    }
    fn sync_data(&self, inner: &dyn StorageFile) -> io::Result<()> {
        self.count();
        inner.sync_data()
    }
    fn sync_all(&self, inner: &dyn StorageFile) -> io::Result<()> {
        self.count();
        inner.sync_all()
    }
    fn set_len(&self, inner: &dyn StorageFile, len: u64) -> io::Result<()> {
        // Extending with zeros must read back as zeros: extend by writing.
        self.count();
        let cur = inner.len()?;
        if len > cur {
            inner.write_at(cur, &vec![KEY; (len - cur) as usize])
        } else {
            inner.set_len(len)
        }
    }
}

impl StorageHooks for Scrambled {
    fn create_dir_all(&self, inner: &dyn Storage, path: &Path) -> io::Result<()> {
        self.count();
        inner.create_dir_all(path)
    }
    fn list_dir(&self, inner: &dyn Storage, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.count();
        inner.list_dir(dir)
    }
    fn open(
        &self,
        inner: &dyn Storage,
        path: &Path,
        mode: OpenMode,
    ) -> io::Result<Arc<dyn StorageFile>> {
        self.count();
        Ok(ForwardingFile::wrap(inner.open(path, mode)?, self.clone()))
    }
    fn map(&self, inner: &dyn Storage, path: &Path) -> io::Result<FileBytes> {
        self.count();
        Ok(FileBytes::new(scramble(&inner.map(path)?)))
    }
    fn allows_background_io(&self, _: &dyn Storage) -> bool {
        // As a real file system: spares are prepared on the log's own
        // thread, which must go through the seam too.
        true
    }
}

fn opts(recovery: RecoveryMode) -> LogOptions {
    LogOptions {
        segment_size: 4096,
        max_record_bytes: 1024,
        preallocate: true,
        recovery,
        ..LogOptions::default()
    }
}

fn payload(lsn: u64) -> Vec<u8> {
    format!("seam record {lsn} ").repeat(20).into_bytes()
}

#[test]
fn nothing_bypasses_the_storage_seam() {
    let root = PathBuf::from(format!(
        "/agentwal-seam-test-never-on-disk-{}",
        std::process::id()
    ));
    let dir = root.join("journal");
    assert!(!root.exists());
    let sim = SimStorage::new();
    let calls = Arc::new(AtomicU64::new(0));
    let storage: Arc<dyn Storage> = Arc::new(ForwardingStorage::new(
        sim.clone(),
        Scrambled {
            calls: calls.clone(),
        },
    ));

    let log = Log::open_with(storage.clone(), &dir, opts(RecoveryMode::Strict)).unwrap();
    for lsn in 1..=30 {
        assert_eq!(log.append(&payload(lsn)).unwrap(), lsn);
    }
    assert!(log.segment_count() > 2, "rotation happened");
    log.write_snapshot(12, b"snapshot state").unwrap();
    assert!(log.truncate_before(13).unwrap() > 0);
    log.append_with(0, &payload(31), Durability::Buffered)
        .unwrap();
    let torn_at = log.read_from(31).unwrap().next().unwrap().unwrap().offset();
    drop(log);

    // Tear the last record (in scrambled form, as the disk holds it).
    let last = {
        let mut v: Vec<_> = sim
            .list_dir(&dir)
            .unwrap()
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "wal"))
            .collect();
        v.sort();
        v.pop().unwrap()
    };
    sim.poke(&last, torn_at + 40, &[!KEY; 16]).unwrap();
    let log = Log::open_with(storage.clone(), &dir, opts(RecoveryMode::Strict)).unwrap();
    assert!(
        log.open_report().torn_tail.is_some(),
        "torn tail found through the seam"
    );
    assert_eq!(
        log.latest_snapshot().unwrap().unwrap().data,
        b"snapshot state"
    );
    let got: Vec<(u64, Vec<u8>)> = log
        .read_from(13)
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            (r.lsn, r.payload().to_vec())
        })
        .collect();
    assert_eq!(got, (13..=30).map(|l| (l, payload(l))).collect::<Vec<_>>());
    drop(log);
    let reader = LogReader::open_with(storage.clone(), &dir).unwrap();
    assert_eq!(reader.iter_from(13).count(), 18);
    let log = Log::open_with(storage, &dir, opts(RecoveryMode::Lossy)).unwrap();
    assert_eq!(log.next_lsn(), 31);
    drop(log);

    // Nothing reached the real disk.
    assert!(!root.exists(), "the real file system was touched");
    // Everything is in the simulator, and only in scrambled form.
    let files = sim.list_dir(&dir).unwrap();
    assert!(files
        .iter()
        .any(|p| p.extension().is_some_and(|e| e == "snap")));
    assert!(files
        .iter()
        .any(|p| p.file_name().unwrap().to_string_lossy().starts_with("cut-")));
    let needle = b"seam record 20 ";
    for f in &files {
        let raw = sim.read(f).unwrap();
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle),
            "{} holds plain bytes: a write bypassed the wrapper",
            f.display()
        );
    }
    assert!(calls.load(Ordering::Relaxed) > 100);
}

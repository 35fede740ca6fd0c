//! An in-memory file system that can lose power.
//!
//! [`SimStorage`] keeps, for every file, the bytes a reader sees now (*live*)
//! and the bytes that would survive a power loss (*durable*), plus the list of
//! writes issued since the last `sync_data`. Directory entries are tracked the
//! same way: a create, rename or remove is durable only after `sync_dir` on
//! the parent directory.
//!
//! # Fault model
//!
//! [`SimStorage::crash`] builds the image a real disk may hold after power is
//! cut at this instant, chosen by a seed:
//!
//! * synced data is always kept;
//! * every unsynced write is, independently, kept, dropped, or *torn* at
//!   512-byte sector granularity (some sectors new, some old) — this also
//!   models out-of-order persistence of unsynced writes within a file;
//! * unsynced `set_len` changes are kept or dropped;
//! * directory operations since the parent's last `sync_dir` survive as a
//!   random *prefix* (file systems journal metadata in order), so a file
//!   created or renamed without a directory sync may vanish; this includes
//!   directories made by `create_dir_all` (a new journal directory whose
//!   parent was never synced can vanish with everything in it);
//! * with [`CrashMode::KeepAll`] everything live survives (a process kill:
//!   the page cache outlives the process).
//!
//! * a failed `fdatasync` (injected) loses the file's unsynced writes for
//!   good, as Linux does after a writeback error ("fsyncgate"): they stay
//!   readable until the crash but a later successful sync does not persist
//!   them.
//!
//! Errors are injected with [`SimStorage::inject`] (EIO or ENOSPC on the n-th
//! write, a failing `fdatasync`, …) and [`SimStorage::halt_after`] makes every
//! mutating operation after the n-th fail, which is how tests stop a workload
//! at an exact write boundary before calling `crash`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{DirLock, FileBytes, LockFailure, OpenMode, Storage, StorageFile};

/// Sector size used when tearing unsynced writes.
pub const SECTOR: usize = 512;

/// What survives a simulated crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Only synced data and synced directory entries survive.
    DropUnsynced,
    /// Everything survives (a process kill with the OS still running).
    KeepAll,
    /// A random, seed-determined mix (see the module documentation).
    Random(u64),
    /// As `Random`, and an unsynced write may also damage the bytes that
    /// precede it in its 4 KiB block, synced or not (a device that
    /// rewrites a whole physical sector and tears): they come back as
    /// zeros or garbage. See `docs/recovery.md` for what recovery can
    /// promise then.
    TornSectors(u64),
}

/// Size of the block a torn write may damage in [`CrashMode::TornSectors`].
pub const PHYSICAL_SECTOR: usize = 4096;

/// The operation a fault is injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// `write_at`.
    Write,
    /// `sync_data` or `sync_all` on a file.
    Sync,
    /// `sync_dir`.
    SyncDir,
    /// `open` with [`OpenMode::CreateNew`].
    Create,
    /// `rename` (and `remove_file`).
    Rename,
    /// `read_at` on a file, and `map` (a read of every page). Reads never
    /// count as mutating operations and are not stopped by a halt.
    Read,
}

/// The error an injected fault returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// `EIO`.
    Eio,
    /// `ENOSPC`; a failing write persists nothing.
    NoSpace,
    /// `ENOSPC` after part of the write went in: its first half, rounded
    /// down to whole 512-byte sectors (nothing for a write under two
    /// sectors), reaches the page cache and may be persisted like any other
    /// unsynced write.
    PartialNoSpace,
}

impl FaultKind {
    fn error(self) -> io::Error {
        match self {
            FaultKind::Eio => io::Error::from_raw_os_error(5),
            FaultKind::NoSpace | FaultKind::PartialNoSpace => io::Error::from_raw_os_error(28),
        }
    }
}

#[derive(Debug, Clone)]
struct Fault {
    op: FaultOp,
    countdown: u64,
    kind: FaultKind,
}

#[derive(Debug, Clone)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Clone, Default)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
}

#[derive(Debug, Clone)]
enum DirOp {
    Link(PathBuf, u64),
    Unlink(PathBuf),
    Rename(PathBuf, PathBuf),
    Mkdir(PathBuf),
}

impl DirOp {
    fn parent(&self) -> Option<&Path> {
        match self {
            DirOp::Link(p, _) | DirOp::Unlink(p) | DirOp::Rename(_, p) | DirOp::Mkdir(p) => {
                p.parent()
            }
        }
    }
    fn apply(&self, names: &mut BTreeMap<PathBuf, u64>, dirs: &mut HashSet<PathBuf>) {
        match self {
            DirOp::Mkdir(p) => {
                dirs.insert(p.clone());
            }
            DirOp::Link(p, ino) => {
                names.insert(p.clone(), *ino);
            }
            DirOp::Unlink(p) => {
                names.remove(p);
            }
            DirOp::Rename(from, to) => {
                if let Some(ino) = names.remove(from) {
                    names.insert(to.clone(), ino);
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    dirs: HashSet<PathBuf>,
    /// Directories whose own entry (in their parent) is durable.
    durable_dirs: HashSet<PathBuf>,
    live: BTreeMap<PathBuf, u64>,
    durable: BTreeMap<PathBuf, u64>,
    pending_dir: Vec<DirOp>,
    locks: HashSet<PathBuf>,
    faults: Vec<Fault>,
    halt_after: Option<u64>,
    mutations: u64,
    syncs: u64,
    dir_syncs: u64,
    capacity: Option<u64>,
    sync_delay: Option<std::time::Duration>,
    /// The gate file syncs wait at while it is closed ([`SimStorage::stall_syncs`]).
    stall: Arc<SyncGate>,
    /// When set, `read_at` returns a random, shorter (never empty) prefix.
    short_reads: Option<SimRng>,
}

impl State {
    /// Applies injected read faults (reads are not mutations: no halt, no count).
    fn read_fault(&mut self) -> io::Result<()> {
        self.fire(FaultOp::Read).map_or(Ok(()), |k| Err(k.error()))
    }

    /// Counts down the faults armed for `op`; the kind of one that fires.
    fn fire(&mut self, op: FaultOp) -> Option<FaultKind> {
        for f in &mut self.faults {
            if f.op == op {
                if f.countdown == 0 {
                    let kind = f.kind;
                    f.countdown = u64::MAX;
                    self.faults.retain(|f| f.countdown != u64::MAX);
                    return Some(kind);
                }
                f.countdown -= 1;
            }
        }
        None
    }

    /// Counts a mutating operation and applies halts and injected faults.
    fn mutate(&mut self, op: FaultOp) -> io::Result<()> {
        self.mutate_kind(op).map_err(|(e, _)| e)
    }

    /// As [`State::mutate`], also saying which injected fault fired.
    fn mutate_kind(&mut self, op: FaultOp) -> Result<(), (io::Error, Option<FaultKind>)> {
        if let Some(limit) = self.halt_after {
            if self.mutations >= limit {
                return Err((
                    io::Error::other("simulated power loss: storage halted"),
                    None,
                ));
            }
        }
        self.mutations += 1;
        match self.fire(op) {
            Some(kind) => Err((kind.error(), Some(kind))),
            None => Ok(()),
        }
    }

    /// Bytes held by files that have a name (removed files free their space,
    /// as on a real file system once the last handle is gone).
    fn live_bytes(&self) -> u64 {
        let linked: HashSet<u64> = self.live.values().copied().collect();
        linked
            .iter()
            .map(|i| self.inodes[i].live.len() as u64)
            .sum()
    }
}

/// The "stall until released" knob of [`SimStorage::stall_syncs`]: while
/// `closed`, every file sync waits on `open` (without the simulator's lock,
/// so reads and writes go on), and `waiting` counts the syncs held.
#[derive(Debug, Default)]
struct SyncGate {
    state: Mutex<GateState>,
    open: parking_lot::Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    closed: bool,
    waiting: usize,
    /// Bumped by every release: a sync waits only while the gate is closed
    /// *and* no release happened since it arrived.
    releases: u64,
}

impl SyncGate {
    fn pass(&self) {
        let mut g = self.state.lock();
        if !g.closed {
            return;
        }
        let arrived = g.releases;
        g.waiting += 1;
        while g.closed && g.releases == arrived {
            self.open.wait(&mut g);
        }
        // Only a release ends the wait, and it already uncounted us.
    }

    fn release(&self, keep_closed: bool) {
        let mut g = self.state.lock();
        g.closed = keep_closed;
        g.releases += 1;
        // The syncs held now are no longer stalled, even before they wake,
        // so a test can tell them from the next one.
        g.waiting = 0;
        self.open.notify_all();
    }
}

/// An in-memory, crashable file system. Clones share the same state.
#[derive(Debug, Clone, Default)]
pub struct SimStorage {
    state: Arc<Mutex<State>>,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: not found", path.display()),
    )
}

fn write_into(buf: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let off = offset as usize;
    if buf.len() < off + data.len() {
        buf.resize(off + data.len(), 0);
    }
    buf[off..off + data.len()].copy_from_slice(data);
}

/// A tiny deterministic generator (splitmix64) so crash images depend on the seed only.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        SimRng(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

impl SimStorage {
    /// An empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    /// Injects a fault: the `after`-th next `op` (0 = the very next) fails with `kind`.
    pub fn inject(&self, op: FaultOp, after: u64, kind: FaultKind) {
        self.state.lock().faults.push(Fault {
            op,
            countdown: after,
            kind,
        });
    }

    /// Removes all injected faults and halts.
    pub fn clear_faults(&self) {
        let mut s = self.state.lock();
        s.faults.clear();
        s.halt_after = None;
    }

    /// After `n` more mutating operations every mutating operation fails, as if
    /// the machine lost power at that instant. Use [`SimStorage::crash`] next.
    pub fn halt_after(&self, n: u64) {
        let mut s = self.state.lock();
        s.halt_after = Some(s.mutations + n);
    }

    /// Total bytes the files may hold; writes beyond fail with ENOSPC.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.state.lock().capacity = bytes;
    }

    /// Makes every file sync take at least `delay` (slept without holding the
    /// simulator's lock), like a real device. Lets tests observe group
    /// commit: writers that arrive during a sync share the next one.
    pub fn set_sync_delay(&self, delay: Option<std::time::Duration>) {
        self.state.lock().sync_delay = delay;
    }

    /// With `true`, every file sync (`sync_data`/`sync_all`) from now on
    /// blocks until `stall_syncs(false)` releases it, like a disk that
    /// stopped answering; writes and reads go on. Tests use it to show that
    /// an async caller waiting for durability holds no executor thread.
    /// [`SimStorage::stalled_syncs`] says how many syncs are held.
    pub fn stall_syncs(&self, stalled: bool) {
        let gate = self.state.lock().stall.clone();
        if stalled {
            gate.state.lock().closed = true;
        } else {
            gate.release(false);
        }
    }

    /// Lets the syncs held right now by [`SimStorage::stall_syncs`] go on,
    /// and keeps stalling the ones that come later (one step at a time).
    /// [`SimStorage::stalled_syncs`] drops to 0 at once: a sync counted
    /// after this call is a new one.
    pub fn release_stalled_syncs(&self) {
        let gate = self.state.lock().stall.clone();
        gate.release(true);
    }

    /// Number of file syncs blocked right now by [`SimStorage::stall_syncs`].
    pub fn stalled_syncs(&self) -> usize {
        let gate = self.state.lock().stall.clone();
        let n = gate.state.lock().waiting;
        n
    }

    /// With `Some(seed)`, every `read_at` returns a random shorter (never
    /// empty) part of what was asked, as a real `pread` may; `None` turns
    /// that off. Readers must continue short reads.
    pub fn set_short_reads(&self, seed: Option<u64>) {
        self.state.lock().short_reads = seed.map(SimRng::new);
    }

    /// Number of mutating operations (writes, syncs, creates, renames, removes) so far.
    pub fn mutations(&self) -> u64 {
        self.state.lock().mutations
    }

    /// Bytes the named files hold now (what [`SimStorage::set_capacity`] limits).
    pub fn live_bytes(&self) -> u64 {
        self.state.lock().live_bytes()
    }

    /// Number of successful `sync_data`/`sync_all` calls so far.
    pub fn syncs(&self) -> u64 {
        self.state.lock().syncs
    }

    /// Number of successful `sync_dir` calls so far.
    pub fn dir_syncs(&self) -> u64 {
        self.state.lock().dir_syncs
    }

    /// The live content of a file, if it exists.
    pub fn read(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.state.lock();
        s.live.get(path).map(|ino| s.inodes[ino].live.clone())
    }

    /// Overwrites live *and* durable bytes of a file (for corruption tests).
    pub fn poke(&self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut s = self.state.lock();
        let ino = *s.live.get(path).ok_or_else(|| not_found(path))?;
        let inode = s.inodes.get_mut(&ino).expect("inode of a live name");
        write_into(&mut inode.live, offset, data);
        write_into(&mut inode.durable, offset, data);
        Ok(())
    }

    /// Truncates live and durable content of a file (for corruption tests).
    pub fn chop(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut s = self.state.lock();
        let ino = *s.live.get(path).ok_or_else(|| not_found(path))?;
        let inode = s.inodes.get_mut(&ino).expect("inode of a live name");
        inode.live.truncate(len as usize);
        inode.durable.truncate(len as usize);
        Ok(())
    }

    /// Creates (or replaces) a file whose content is durable at once (for tests
    /// and fuzzing that build a directory image).
    pub fn put(&self, path: &Path, data: &[u8]) {
        let mut s = self.state.lock();
        if let Some(parent) = path.parent() {
            for a in parent.ancestors() {
                s.dirs.insert(a.to_path_buf());
                s.durable_dirs.insert(a.to_path_buf());
            }
        }
        let ino = s.next_ino;
        s.next_ino += 1;
        s.inodes.insert(
            ino,
            Inode {
                live: data.to_vec(),
                durable: data.to_vec(),
                pending: Vec::new(),
            },
        );
        s.live.insert(path.to_path_buf(), ino);
        s.durable.insert(path.to_path_buf(), ino);
    }

    /// The machine as a process that is killed *now* leaves it, on the same
    /// boot: a new, independent file system sharing nothing with this one
    /// (locks released, faults and halts cleared) whose page cache (*live*
    /// bytes), *durable* image and dirty (unsynced) writes are exactly
    /// this one's. Unlike [`CrashMode::KeepAll`] nothing becomes durable:
    /// dirty writes are persisted only by a later successful sync, and
    /// writes a failed sync dropped stay readable but are never persisted
    /// unless rewritten (Linux marks those pages clean). Call
    /// [`SimStorage::crash`] on the result for a power loss after the restart.
    pub fn kill(&self) -> SimStorage {
        let s = self.state.lock();
        let state = State {
            inodes: s.inodes.clone(),
            next_ino: s.next_ino,
            dirs: s.dirs.clone(),
            durable_dirs: s.durable_dirs.clone(),
            live: s.live.clone(),
            durable: s.durable.clone(),
            pending_dir: s.pending_dir.clone(),
            ..State::default()
        };
        SimStorage {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// The image a disk may hold if power were lost now, as a new, independent
    /// file system (locks released, no faults). This storage is left untouched.
    pub fn crash(&self, mode: CrashMode) -> SimStorage {
        let s = self.state.lock();
        let mut rng = match mode {
            CrashMode::Random(seed) | CrashMode::TornSectors(seed) => Some(SimRng::new(seed)),
            _ => None,
        };
        let damage = matches!(mode, CrashMode::TornSectors(_));
        // Directory entries: durable ones plus a prefix of the pending operations.
        let (names, dirs) = match mode {
            CrashMode::KeepAll => (s.live.clone(), s.dirs.clone()),
            CrashMode::DropUnsynced => (s.durable.clone(), s.durable_dirs.clone()),
            CrashMode::Random(_) | CrashMode::TornSectors(_) => {
                let rng = rng.as_mut().expect("rng for random mode");
                let keep = rng.below(s.pending_dir.len() as u64 + 1) as usize;
                let mut names = s.durable.clone();
                let mut dirs = s.durable_dirs.clone();
                for op in &s.pending_dir[..keep] {
                    op.apply(&mut names, &mut dirs);
                }
                (names, dirs)
            }
        };
        // A directory whose entry did not survive takes its whole subtree along.
        let dirs: HashSet<PathBuf> = dirs
            .iter()
            .filter(|d| {
                d.ancestors()
                    .skip(1)
                    .all(|a| a.as_os_str().is_empty() || dirs.contains(a))
            })
            .cloned()
            .collect();
        let names: BTreeMap<PathBuf, u64> = names
            .into_iter()
            .filter(|(p, _)| p.parent().is_none_or(|d| dirs.contains(d)))
            .collect();
        let mut inodes = HashMap::new();
        for ino in names.values() {
            if inodes.contains_key(ino) {
                continue;
            }
            let inode = &s.inodes[ino];
            let content = match mode {
                CrashMode::KeepAll => inode.live.clone(),
                CrashMode::DropUnsynced => inode.durable.clone(),
                CrashMode::Random(_) | CrashMode::TornSectors(_) => {
                    let rng = rng.as_mut().expect("rng for random mode");
                    let mut content = inode.durable.clone();
                    for p in &inode.pending {
                        match p {
                            Pending::SetLen(len) => {
                                if rng.below(2) == 0 {
                                    content.resize(*len as usize, 0);
                                }
                            }
                            Pending::Write { offset, data } => match rng.below(3) {
                                0 => {}
                                1 => write_into(&mut content, *offset, data),
                                _ => {
                                    // Torn: each sector of the write independently.
                                    let mut pos = 0usize;
                                    while pos < data.len() {
                                        let abs = *offset as usize + pos;
                                        let end = ((abs / SECTOR + 1) * SECTOR - *offset as usize)
                                            .min(data.len());
                                        if rng.below(2) == 0 {
                                            write_into(&mut content, abs as u64, &data[pos..end]);
                                        }
                                        pos = end;
                                    }
                                }
                            },
                        }
                        if let (true, Pending::Write { offset, .. }) = (damage, p) {
                            // The device rewrote the whole block and tore:
                            // what preceded the write in it is lost too.
                            let off = *offset as usize;
                            let block = off / PHYSICAL_SECTOR * PHYSICAL_SECTOR;
                            if block < off && off <= content.len() && rng.below(4) == 0 {
                                let garbage = rng.below(2) == 0;
                                for b in &mut content[block..off] {
                                    *b = if garbage { rng.next_u64() as u8 } else { 0 };
                                }
                            }
                        }
                    }
                    content
                }
            };
            inodes.insert(
                *ino,
                Inode {
                    live: content.clone(),
                    durable: content,
                    pending: Vec::new(),
                },
            );
        }
        let state = State {
            inodes,
            next_ino: s.next_ino,
            dirs: dirs.clone(),
            durable_dirs: dirs,
            live: names.clone(),
            durable: names,
            ..State::default()
        };
        SimStorage {
            state: Arc::new(Mutex::new(state)),
        }
    }
}

#[derive(Debug)]
struct SimFile {
    state: Arc<Mutex<State>>,
    ino: u64,
    writable: bool,
}

impl SimFile {
    fn check_writable(&self) -> io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(9)) // EBADF, like a read-only fd
        }
    }
}

impl StorageFile for SimFile {
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.check_writable()?;
        let mut s = self.state.lock();
        let mut buf = buf;
        let mut fail = None;
        match s.mutate_kind(FaultOp::Write) {
            Ok(()) => {}
            Err((e, Some(FaultKind::PartialNoSpace))) if buf.len() >= 2 * SECTOR => {
                // File systems allocate whole blocks: what goes in is a
                // whole number of sectors.
                buf = &buf[..buf.len() / 2 / SECTOR * SECTOR];
                fail = Some(e);
            }
            Err((e, _)) => return Err(e),
        }
        if let Some(cap) = s.capacity {
            let cur = s.inodes[&self.ino].live.len() as u64;
            let used = s.live_bytes();
            let grow = (offset + buf.len() as u64).saturating_sub(cur);
            if used + grow > cap {
                // A real file system fills what it can, then fails: the
                // bytes up to the end of the space left go in.
                let room = (cap.saturating_sub(used) + cur).saturating_sub(offset);
                let room = room as usize / SECTOR * SECTOR;
                buf = &buf[..room.min(buf.len())];
                fail = Some(FaultKind::NoSpace.error());
            }
        }
        if buf.is_empty() {
            return Err(fail.unwrap_or_else(|| FaultKind::NoSpace.error()));
        }
        let inode = s.inodes.get_mut(&self.ino).expect("open inode");
        write_into(&mut inode.live, offset, buf);
        inode.pending.push(Pending::Write {
            offset,
            data: buf.to_vec(),
        });
        fail.map_or(Ok(()), Err)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.state.lock();
        s.read_fault()?;
        let live_len = s.inodes[&self.ino].live.len();
        let start = (offset as usize).min(live_len);
        let mut n = (live_len - start).min(buf.len());
        if let Some(rng) = s.short_reads.as_mut() {
            if n > 1 {
                n = 1 + rng.below(n as u64) as usize;
            }
        }
        let live = &s.inodes[&self.ino].live;
        buf[..n].copy_from_slice(&live[start..start + n]);
        Ok(n)
    }

    fn sync_data(&self) -> io::Result<()> {
        let (delay, gate) = {
            let s = self.state.lock();
            (s.sync_delay, s.stall.clone())
        };
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        gate.pass();
        let mut s = self.state.lock();
        if let Err(e) = s.mutate(FaultOp::Sync) {
            if e.raw_os_error().is_some() {
                // "fsyncgate": after a writeback error Linux marks the dirty
                // pages clean. Readers still see the new bytes (live), but
                // they never reach the disk, not even after a later sync
                // that succeeds.
                s.inodes
                    .get_mut(&self.ino)
                    .expect("open inode")
                    .pending
                    .clear();
            }
            return Err(e);
        }
        s.syncs += 1;
        let inode = s.inodes.get_mut(&self.ino).expect("open inode");
        // Durable = the old durable image plus every write still pending (those
        // dropped by a failed sync stay lost); without a failed sync this is
        // exactly the live image.
        let mut durable = std::mem::take(&mut inode.durable);
        for p in inode.pending.drain(..) {
            match p {
                Pending::SetLen(len) => durable.resize(len as usize, 0),
                Pending::Write { offset, data } => write_into(&mut durable, offset, &data),
            }
        }
        inode.durable = durable;
        Ok(())
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_writable()?;
        let mut s = self.state.lock();
        s.mutate(FaultOp::Write)?;
        let inode = s.inodes.get_mut(&self.ino).expect("open inode");
        inode.live.resize(len as usize, 0);
        inode.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.state.lock().inodes[&self.ino].live.len() as u64)
    }
}

#[derive(Debug)]
struct SimLock {
    state: Arc<Mutex<State>>,
    dir: PathBuf,
}
impl DirLock for SimLock {}
impl Drop for SimLock {
    fn drop(&mut self) {
        self.state.lock().locks.remove(&self.dir);
    }
}

impl Storage for SimStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        // Outermost first, so the pending operations are in creation order.
        let ancestors: Vec<PathBuf> = path.ancestors().map(Path::to_path_buf).collect();
        for a in ancestors.into_iter().rev() {
            if a.as_os_str().is_empty() || !s.dirs.insert(a.clone()) {
                continue;
            }
            if a.parent().is_none() {
                // The root always exists.
                s.durable_dirs.insert(a);
            } else {
                // Durable only once its parent directory is synced.
                s.pending_dir.push(DirOp::Mkdir(a));
            }
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let s = self.state.lock();
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(s.live
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }

    fn is_dir(&self, path: &Path) -> io::Result<bool> {
        Ok(self.state.lock().dirs.contains(path))
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut s = self.state.lock();
        let ino = match mode {
            OpenMode::CreateNew => {
                if s.live.contains_key(path) {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{}: exists", path.display()),
                    ));
                }
                let parent = path.parent().unwrap_or(Path::new(""));
                if !s.dirs.contains(parent) {
                    return Err(not_found(parent));
                }
                s.mutate(FaultOp::Create)?;
                let ino = s.next_ino;
                s.next_ino += 1;
                s.inodes.insert(ino, Inode::default());
                s.live.insert(path.to_path_buf(), ino);
                s.pending_dir.push(DirOp::Link(path.to_path_buf(), ino));
                ino
            }
            OpenMode::ReadWrite | OpenMode::ReadOnly => {
                *s.live.get(path).ok_or_else(|| not_found(path))?
            }
        };
        Ok(Arc::new(SimFile {
            state: self.state.clone(),
            ino,
            writable: mode != OpenMode::ReadOnly,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        if !s.live.contains_key(from) {
            return Err(not_found(from));
        }
        s.mutate(FaultOp::Rename)?;
        let ino = s.live.remove(from).expect("checked above");
        s.live.insert(to.to_path_buf(), ino);
        s.pending_dir
            .push(DirOp::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        if !s.live.contains_key(path) {
            return Err(not_found(path));
        }
        s.mutate(FaultOp::Rename)?;
        s.live.remove(path);
        s.pending_dir.push(DirOp::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        s.mutate(FaultOp::SyncDir)?;
        s.dir_syncs += 1;
        let (now, later): (Vec<DirOp>, Vec<DirOp>) = std::mem::take(&mut s.pending_dir)
            .into_iter()
            .partition(|op| op.parent() == Some(dir));
        let mut durable = std::mem::take(&mut s.durable);
        let mut durable_dirs = std::mem::take(&mut s.durable_dirs);
        for op in &now {
            op.apply(&mut durable, &mut durable_dirs);
        }
        s.durable = durable;
        s.durable_dirs = durable_dirs;
        s.pending_dir = later;
        Ok(())
    }

    fn map(&self, path: &Path) -> io::Result<FileBytes> {
        let mut s = self.state.lock();
        let ino = *s.live.get(path).ok_or_else(|| not_found(path))?;
        // A read error on a mapped page is a SIGBUS on a real system; the
        // simulator reports it as the error the caller would get from a read.
        s.read_fault()?;
        let ino = &ino;
        Ok(FileBytes::new(s.inodes[ino].live.clone()))
    }

    fn segment_salt(&self, first_lsn: u64) -> u32 {
        // Deterministic (a seed replays the same bytes), and still different
        // for every file created: the inode counter only grows.
        let ino = self.state.lock().next_ino;
        SimRng::new(first_lsn ^ ino.rotate_left(32) ^ 0x5A17_5A17).next_u64() as u32
    }

    fn allows_background_io(&self) -> bool {
        // Reproducible runs: every operation on the caller's thread.
        false
    }

    fn lock_dir(&self, dir: &Path) -> Result<Box<dyn DirLock>, LockFailure> {
        let mut s = self.state.lock();
        if !s.locks.insert(dir.to_path_buf()) {
            return Err(LockFailure::Held {
                pid: Some(std::process::id()),
            });
        }
        Ok(Box::new(SimLock {
            state: self.state.clone(),
            dir: dir.to_path_buf(),
        }))
    }
}

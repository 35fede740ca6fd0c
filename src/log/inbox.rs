//! The operator inbox: how a command reaches the process that owns a
//! directory.
//!
//! One process owns a journal (or queue) directory and holds its lock, so an
//! operator tool cannot append to it while the agent runs. Instead the tool
//! drops a command file into `<dir>/inbox/` and waits; the owner picks it up
//! (at open, and by polling while it runs), applies it with the same library
//! call the tool would have used, appends the durable record, and leaves a
//! reply file. The protocol, one file per step, each written atomically
//! (temporary file, `fsync`, `rename`, directory `fsync`), owner-only
//! permissions:
//!
//! 1. the tool writes `<id>.cmd` (the command, opaque bytes to this module);
//! 2. the owner claims it by renaming it to `<id>.applying` (so a tool that
//!    gives up can withdraw a command only if no owner has claimed it);
//! 3. the owner applies it, writes `<id>.reply` and removes `<id>.applying`;
//! 4. the tool reads and removes `<id>.reply`.
//!
//! A crash of the owner between 2 and 3 leaves `<id>.applying`: the next
//! open claims it again. Callers make commands idempotent by id: the owner
//! records the command id with the decision it writes, and a command whose
//! id is already recorded is answered ("already applied", with what the
//! first application changed) instead of being applied a second time.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Name of the inbox directory inside an owned directory.
pub const INBOX_DIR: &str = "inbox";

/// Largest command or reply file read (bigger ones are refused).
pub const MAX_MESSAGE_BYTES: u64 = 32 << 20;

/// The inbox of one owned directory.
#[derive(Debug, Clone)]
pub struct Inbox {
    dir: PathBuf,
    /// Held by the owner across claim, apply and reply (see
    /// [`Inbox::owner_turn`]); shared by clones.
    turn: std::sync::Arc<parking_lot::Mutex<()>>,
}

/// A command waiting in the inbox, claimed by the owner.
#[derive(Debug)]
pub struct Claimed {
    /// The command's id (its file name without extension).
    pub id: String,
    /// The command's bytes.
    pub body: Vec<u8>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut o = fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
        let mut f = o.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    let len = fs::metadata(path)?.len();
    if len > MAX_MESSAGE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is {len} bytes, above the inbox limit of {MAX_MESSAGE_BYTES}",
                path.display()
            ),
        ));
    }
    fs::read(path)
}

/// A crash of the owner between applying a command and replying to it, for
/// tests (feature `testing`): see [`fail_next_reply`].
#[cfg(feature = "testing")]
mod failpoint {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    static ARMED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    pub(super) fn arm(inbox_dir: &Path) {
        ARMED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(inbox_dir.to_path_buf());
    }

    pub(super) fn take(inbox_dir: &Path) -> bool {
        let mut armed = ARMED.lock().unwrap_or_else(|p| p.into_inner());
        match armed.iter().position(|d| d == inbox_dir) {
            Some(i) => {
                armed.swap_remove(i);
                true
            }
            None => false,
        }
    }
}

/// Makes the next [`Inbox::reply`] of the inbox of `owned_dir` fail after
/// the owner applied the command (its durable record written) and before
/// the reply is written, leaving `<id>.applying` behind as an owner crash
/// would (feature `testing`).
#[cfg(feature = "testing")]
pub fn fail_next_reply(owned_dir: impl AsRef<Path>) {
    failpoint::arm(&owned_dir.as_ref().join(INBOX_DIR));
}

impl Inbox {
    /// The inbox of `owned_dir` (`<owned_dir>/inbox`); nothing is created.
    pub fn new(owned_dir: impl AsRef<Path>) -> Inbox {
        Inbox {
            dir: owned_dir.as_ref().join(INBOX_DIR),
            turn: std::sync::Arc::default(),
        }
    }

    /// The owner's turn to claim, apply and reply: held for the whole
    /// pass, so two passes of one owner (its poller and an explicit call)
    /// never claim the same `<id>.applying` and apply it twice.
    pub(crate) fn owner_turn(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.turn.lock()
    }

    /// The inbox directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Drops a command (tool side); returns its id.
    pub fn submit(&self, body: &[u8]) -> io::Result<String> {
        if !self.dir.exists() {
            let mut b = fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
            b.create(&self.dir)?;
            if let Some(parent) = self.dir.parent() {
                sync_dir(parent)?;
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let id = format!(
            "{now:015}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        write_atomic(&self.dir, &format!("{id}.cmd"), body)?;
        Ok(id)
    }

    /// Claims every waiting command (owner side), oldest first: commands an
    /// earlier owner claimed but did not finish, then new ones. Returns
    /// nothing (and creates nothing) when there is no inbox.
    pub fn claim_all(&self) -> io::Result<Vec<Claimed>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".cmd") || n.ends_with(".applying"))
            .collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let (id, claimed) = match name.strip_suffix(".applying") {
                Some(id) => (id.to_string(), self.dir.join(&name)),
                None => {
                    let id = name.trim_end_matches(".cmd").to_string();
                    let to = self.dir.join(format!("{id}.applying"));
                    match fs::rename(self.dir.join(&name), &to) {
                        Ok(()) => (id, to),
                        // Withdrawn by its tool meanwhile.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    }
                }
            };
            let body = read_bounded(&claimed)?;
            out.push(Claimed { id, body });
        }
        Ok(out)
    }

    /// Leaves the reply of a claimed command and removes the command (owner side).
    pub fn reply(&self, id: &str, reply: &[u8]) -> io::Result<()> {
        #[cfg(feature = "testing")]
        if failpoint::take(&self.dir) {
            return Err(io::Error::other(
                "injected crash between the durable record and the reply",
            ));
        }
        write_atomic(&self.dir, &format!("{id}.reply"), reply)?;
        match fs::remove_file(self.dir.join(format!("{id}.applying"))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        sync_dir(&self.dir)
    }

    /// Waits up to `timeout` for the reply of command `id` (tool side),
    /// reading and removing it. `Ok(None)`: no reply in time; the command
    /// was withdrawn if no owner had claimed it (see [`Inbox::withdraw`]).
    pub fn wait_reply(&self, id: &str, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        let path = self.dir.join(format!("{id}.reply"));
        let until = Instant::now() + timeout;
        loop {
            match read_bounded(&path) {
                Ok(b) => {
                    let _ = fs::remove_file(&path);
                    return Ok(Some(b));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            if Instant::now() >= until {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Withdraws command `id` if no owner claimed it yet (tool side): true
    /// when withdrawn (it will never be applied), false when an owner is
    /// applying it (its reply will appear).
    pub fn withdraw(&self, id: &str) -> io::Result<bool> {
        match fs::remove_file(self.dir.join(format!("{id}.cmd"))) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_goes_in_is_claimed_once_and_its_reply_comes_back() {
        let d = tempfile::tempdir().unwrap();
        let inbox = Inbox::new(d.path());
        assert!(inbox.claim_all().unwrap().is_empty());
        let id = inbox.submit(b"resolve").unwrap();
        let c = inbox.claim_all().unwrap();
        assert_eq!(
            (c.len(), c[0].id.as_str(), &c[0].body[..]),
            (1, id.as_str(), &b"resolve"[..])
        );
        // Claimed but not replied (owner crashed): claimed again.
        assert_eq!(inbox.claim_all().unwrap().len(), 1);
        assert!(!inbox.withdraw(&id).unwrap(), "claimed: cannot withdraw");
        inbox.reply(&id, b"done").unwrap();
        assert!(inbox.claim_all().unwrap().is_empty());
        assert_eq!(
            inbox.wait_reply(&id, Duration::ZERO).unwrap().as_deref(),
            Some(&b"done"[..])
        );
        let id2 = inbox.submit(b"x").unwrap();
        assert!(inbox.withdraw(&id2).unwrap());
        assert!(inbox.claim_all().unwrap().is_empty());
    }
}

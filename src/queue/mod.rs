//! A durable work queue: enqueue, claim with a lease, ack, nack with delay,
//! attempt counts, dead letters, drain on shutdown.
//!
//! **Promises.**
//!
//! * Every operation is **one** record appended to the queue's own
//!   [`crate::log::Log`] in `<journal_dir>/queue/` and is durable
//!   (`fdatasync`, shared by concurrent callers through group commit) before
//!   it returns `Ok`. An item whose `enqueue` returned is never lost; an item
//!   whose `ack` returned is never handed out again.
//! * Attempts are counted when an item is **claimed** (the claim record is
//!   durable before the worker sees the payload), so a worker that crashes
//!   mid-item still used up an attempt. After `max_attempts` the item is
//!   dead-lettered instead of being handed out again.
//! * Open rebuilds the state from the newest snapshot plus the records after
//!   it. Items that were in flight belonged to the previous (crashed or
//!   stopped) owner: they are **re-queued** (or dead-lettered when that was
//!   their last attempt), durably, before open returns.
//! * A claim whose lease expired can be taken by another worker; the first
//!   worker's ack then fails with [`Error::LeaseLost`] (its result must not be
//!   recorded as the item's outcome).
//! * [`WorkQueue::drain`] stops intake (enqueue and claim fail with
//!   [`Error::Draining`]), waits up to a timeout for claimed items to be acked
//!   or nacked, and durably releases the rest back to pending.
//! * Memory holds every live item (pending, in flight, dead-lettered) with
//!   its payload; acked items are forgotten at once. The log is compacted
//!   into a snapshot every `compact_after_records` records.
//!
//! **Boundaries.** The queue is its own layer, on the public API of
//! [`crate::log`] only: it imports nothing from `journal`, `runtime` or
//! `inspect`, and it does not need tokio (a `wal-inspect` built without tokio
//! reads a queue through [`queue_view`]). The async wrappers
//! (`enqueue_async`, ...) and drain-on-shutdown wiring live above it, in
//! `runtime` (feature `tokio`). The manual clock for tests is behind the
//! `testing` feature.
//!
//! The record encoding is specified byte by byte in `docs/operations.md`
//! ("Queue records").
//!
//! ```
//! use agentwal::queue::{QueueOptions, WorkQueue};
//! let dir = tempfile::tempdir().unwrap();
//! let q = WorkQueue::open(dir.path(), QueueOptions::default()).unwrap();
//! let id = q.enqueue(b"send the report").unwrap();
//! let job = q.claim("worker-1").unwrap().expect("an item is ready");
//! assert_eq!((job.id, job.attempt, &job.payload[..]), (id, 1, &b"send the report"[..]));
//! q.ack(&job).unwrap();
//! assert!(q.claim("worker-1").unwrap().is_none());
//! ```

mod codec;
mod error;
mod state;
mod view;

use std::fmt;
use std::path::{Path, PathBuf};
#[cfg(any(test, feature = "testing"))]
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::log::{FsStorage, Log, LogOptions, Lsn, Storage};

pub use error::Error;
pub use state::ItemState;
pub use view::{queue_view, QueueItemView, QueueView};

use crate::engine::{self, Mode, StateMachine};
use state::{Op, QueueState, ReplayError};

/// Name of the queue's directory inside a journal directory.
pub const QUEUE_DIR: &str = "queue";
/// Longest accepted worker id, in bytes.
pub const MAX_WORKER_LEN: usize = 256;
/// Error messages recorded by nack are cut to this many bytes.
pub const MAX_ERROR_LEN: usize = 4096;

/// The queue directory of a journal directory: `<journal_dir>/queue`.
pub fn queue_dir(journal_dir: impl AsRef<Path>) -> PathBuf {
    journal_dir.as_ref().join(QUEUE_DIR)
}

/// A source of wall-clock time in milliseconds since the Unix epoch (retry
/// times are stored durably, so they must survive a restart).
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock the test moves by hand (feature `testing`).
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

#[cfg(any(test, feature = "testing"))]
impl ManualClock {
    /// A clock at `ms`.
    pub fn new(ms: u64) -> Self {
        ManualClock(AtomicU64::new(ms))
    }
    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

#[cfg(any(test, feature = "testing"))]
impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Options of [`WorkQueue::open`].
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// Claims allowed per item before it is dead-lettered (default 5, at least 1).
    pub max_attempts: u32,
    /// How long a claim is exclusive (default 5 minutes). After that another
    /// worker may claim the item again (counting a new attempt).
    pub lease: Duration,
    /// Write a snapshot and drop old segments after this many records
    /// (default 10 000; `None` = only on [`WorkQueue::compact`]).
    pub compact_after_records: Option<u64>,
    /// Options of the queue's log (default: 4 MiB segments; the payload limit
    /// is `max_record_bytes` minus a few dozen bytes of record fields).
    pub log: LogOptions,
    /// Wall clock for retry delays and leases.
    pub clock: Arc<dyn Clock>,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            max_attempts: 5,
            lease: Duration::from_secs(300),
            compact_after_records: Some(10_000),
            log: LogOptions {
                segment_size: 4 << 20,
                max_record_bytes: 1 << 20,
                ..LogOptions::default()
            },
            clock: Arc::new(SystemClock),
        }
    }
}

/// An item handed to a worker by [`WorkQueue::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The item's id.
    pub id: u64,
    /// Which attempt this is (1 for the first claim).
    pub attempt: u32,
    /// The worker that holds it.
    pub worker: String,
    /// The payload as enqueued.
    pub payload: Vec<u8>,
}

impl Claimed {
    /// The payload decoded from JSON (see [`WorkQueue::enqueue_json`]).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(serde_json::from_slice(&self.payload)?)
    }
}

/// What [`WorkQueue::nack`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackOutcome {
    /// The item is pending again (not before the delay).
    Retry,
    /// That was the last allowed attempt: the item is dead-lettered.
    DeadLettered,
}

/// What open found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueOpenReport {
    /// Items that were in flight under the previous owner, now pending again.
    pub requeued: Vec<u64>,
    /// Items that were in flight on their last allowed attempt, now dead-lettered.
    pub dead_lettered: Vec<u64>,
}

/// The outcome of [`WorkQueue::drain`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Items that were in flight when the drain began and were acked or
    /// nacked before the timeout.
    pub finished: usize,
    /// Items still in flight at the timeout, released back to pending.
    pub released: Vec<u64>,
    /// Items left pending (durable; the next owner picks them up).
    pub pending: usize,
    /// True when the timeout passed with items still in flight.
    pub timed_out: bool,
}

/// Counts of items by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    /// Waiting to be claimed.
    pub pending: u64,
    /// Claimed, not yet acked.
    pub in_flight: u64,
    /// Gave up.
    pub dead_lettered: u64,
    /// Acked over the queue's whole life.
    pub acked_total: u64,
}

struct Shared {
    state: QueueState,
    draining: bool,
    records_since_snapshot: u64,
}

struct Inner {
    log: Log,
    opts: QueueOptions,
    shared: Mutex<Shared>,
    /// Signalled when an in-flight item is settled (drain waits on it).
    settled: Condvar,
    report: QueueOpenReport,
    /// The operator inbox (`<queue dir>/inbox`; real file system only).
    inbox: Option<crate::log::inbox::Inbox>,
}

/// An operator command for the queue, as carried by its inbox (JSON):
/// what `wal-inspect queue --redrive|--purge-dead` sends to a running owner.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueCommand {
    /// Who decides (recorded).
    pub by: String,
    /// `"redrive"` or `"purge_dead"`.
    pub command: String,
    /// Dead letters to act on; empty: all of them.
    #[serde(default)]
    pub ids: Vec<u64>,
}

/// The owner's reply to a [`QueueCommand`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueReply {
    /// True when applied.
    pub ok: bool,
    /// Items changed.
    #[serde(default)]
    pub ids: Vec<u64>,
    /// What changed, or why it was refused.
    pub message: String,
}

/// How often a running queue owner looks for operator commands.
pub const INBOX_POLL: Duration = Duration::from_millis(200);

/// A durable work queue. Cheap to clone; safe to share between threads.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use agentwal::{QueueOptions, WorkQueue};
/// # let tmp = tempfile::tempdir()?;
/// # let journal_dir = tmp.path();
/// let queue = WorkQueue::open(journal_dir, QueueOptions::default())?;
/// queue.enqueue_json(&serde_json::json!({"url": "https://example.com/a"}))?;
/// queue.enqueue_json(&serde_json::json!({"url": "not a url"}))?;
///
/// while let Some(item) = queue.claim("worker-1")? {
///     let job: serde_json::Value = serde_json::from_slice(&item.payload)?;
///     if job["url"].as_str().is_some_and(|u| u.starts_with("https://")) {
///         queue.ack(&item)?; // done: never handed out again
///     } else {
///         // Failed: back to pending after the delay, dead-lettered after
///         // `max_attempts`; the error is kept for `wal-inspect queue`.
///         queue.nack(&item, Duration::from_secs(30), "bad url")?;
///     }
/// }
/// let stats = queue.stats();
/// assert_eq!((stats.acked_total, stats.pending), (1, 1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct WorkQueue {
    inner: Arc<Inner>,
}

impl fmt::Debug for WorkQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkQueue")
            .field("dir", &self.inner.log.dir())
            .field("stats", &self.stats())
            .finish()
    }
}

fn bad(dir: &Path, lsn: Lsn, reason: String) -> Error {
    Error::BadRecord {
        dir: dir.to_path_buf(),
        lsn,
        reason,
    }
}

fn replay_error(dir: &Path, e: ReplayError) -> Error {
    match e {
        ReplayError::Log(e) => Error::Log(e),
        ReplayError::Bad { lsn, reason } => bad(dir, lsn, reason),
    }
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl WorkQueue {
    /// Opens (creating if needed) the queue of `journal_dir` (in
    /// `<journal_dir>/queue/`) on the real file system.
    ///
    /// Operator commands waiting in the queue's inbox (`wal-inspect queue
    /// --redrive|--purge-dead` against a running owner) are applied before
    /// it returns and then every [`INBOX_POLL`] while the queue is open.
    pub fn open(journal_dir: impl AsRef<Path>, opts: QueueOptions) -> Result<WorkQueue, Error> {
        let inbox = crate::log::inbox::Inbox::new(queue_dir(journal_dir.as_ref()));
        let q = Self::open_inner(Arc::new(FsStorage), journal_dir, opts, Some(inbox))?;
        q.apply_inbox()?;
        let weak = Arc::downgrade(&q.inner);
        let _ = std::thread::Builder::new()
            .name("agentwal-queue-inbox".into())
            .spawn(move || loop {
                std::thread::sleep(INBOX_POLL);
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                // Retried at the next poll on failure.
                let _ = WorkQueue { inner }.apply_inbox();
            });
        Ok(q)
    }

    /// Opens the queue through any storage (e.g. the simulator `SimStorage`,
    /// feature `testing`).
    /// No operator inbox is read.
    pub fn open_with(
        storage: Arc<dyn Storage>,
        journal_dir: impl AsRef<Path>,
        opts: QueueOptions,
    ) -> Result<WorkQueue, Error> {
        Self::open_inner(storage, journal_dir, opts, None)
    }

    fn open_inner(
        storage: Arc<dyn Storage>,
        journal_dir: impl AsRef<Path>,
        opts: QueueOptions,
        inbox: Option<crate::log::inbox::Inbox>,
    ) -> Result<WorkQueue, Error> {
        if opts.max_attempts == 0 {
            return Err(Error::InvalidArgument(
                "max_attempts must be at least 1".into(),
            ));
        }
        let dir = queue_dir(journal_dir);
        let log = Log::open_with(storage, &dir, opts.log.clone())?;
        let r =
            engine::open_log::<QueueState>(&log, Mode::Owner).map_err(|e| replay_error(&dir, e))?;
        let mut state = r.state;
        let mut replayed = r.records;
        // Whatever is in flight belonged to the previous owner (one process
        // owns the directory): give it back, or give up on its last attempt.
        let mut report = QueueOpenReport::default();
        let mut ops = Vec::new();
        for item in state
            .items
            .values()
            .filter(|i| i.state == ItemState::InFlight)
        {
            if item.attempts >= opts.max_attempts {
                report.dead_lettered.push(item.id);
                ops.push(Op::Dead {
                    id: item.id,
                    attempt: item.attempts,
                    error: format!(
                        "owner stopped during attempt {} of {} (worker {})",
                        item.attempts,
                        opts.max_attempts,
                        item.worker.as_deref().unwrap_or("?")
                    ),
                });
            } else {
                report.requeued.push(item.id);
                ops.push(Op::Release {
                    id: item.id,
                    attempt: item.attempts,
                });
            }
        }
        if !ops.is_empty() {
            let n = ops.len() as u64;
            // One write and one fdatasync for all of them: the repair is
            // durable before any new claim can hand these items out.
            let (range, _) =
                engine::append_checked(&log, &mut state, ops).map_err(|e| replay_error(&dir, e))?;
            log.wait_durable(*range.end())?;
            replayed += n;
        }
        Ok(WorkQueue {
            inner: Arc::new(Inner {
                log,
                opts,
                shared: Mutex::new(Shared {
                    state,
                    draining: false,
                    records_since_snapshot: replayed,
                }),
                settled: Condvar::new(),
                report,
                inbox,
            }),
        })
    }

    /// What open repaired (items of the previous owner re-queued or dead-lettered).
    pub fn open_report(&self) -> &QueueOpenReport {
        &self.inner.report
    }

    /// The queue's log (for sync statistics and inspection).
    pub fn log(&self) -> &Log {
        &self.inner.log
    }

    fn now(&self) -> u64 {
        self.inner.opts.clock.now_ms()
    }

    /// Appends `op` (write only) and applies it, under the state lock so the
    /// log order is the state order. The caller waits for durability after
    /// releasing the lock, so concurrent operations share one fdatasync.
    fn write_locked(&self, shared: &mut Shared, op: Op) -> Result<Lsn, Error> {
        self.write_all_locked(shared, vec![op])
    }

    /// Writes `ops` as one batch (one `write` of the log): a process killed
    /// while an operator command is applied leaves all of its records or
    /// none, never some of its items. Returns the last LSN.
    fn write_all_locked(&self, shared: &mut Shared, ops: Vec<Op>) -> Result<Lsn, Error> {
        let dir = self.inner.log.dir();
        let n = ops.len() as u64;
        let (range, _) = engine::append_checked(&self.inner.log, &mut shared.state, ops)
            .map_err(|e| replay_error(dir, e))?;
        shared.records_since_snapshot += n;
        crate::observe::queue_gauges(
            shared.state.pending(),
            shared.state.in_flight,
            shared.state.dead,
        );
        Ok(*range.end())
    }

    /// Makes `lsn` durable and compacts when due.
    fn finish(&self, lsn: Lsn) -> Result<(), Error> {
        // The record must be on disk before the caller acts on the result
        // (hands the payload to a worker, reports an ack, ...).
        self.inner.log.wait_durable(lsn)?;
        if self.compaction_due() {
            // The operation itself is already durable: a failed compaction
            // must not report it as failed. It is retried after the next
            // operation, and a real I/O fault poisons the log, so the next
            // append reports it.
            let _ = self.compact();
        }
        Ok(())
    }

    /// Whether enough records were written since the last snapshot.
    pub(crate) fn compaction_due(&self) -> bool {
        self.inner
            .opts
            .compact_after_records
            .is_some_and(|every| self.inner.shared.lock().records_since_snapshot >= every)
    }

    /// Adds an item ready now; returns its id once it is durable.
    pub fn enqueue(&self, payload: &[u8]) -> Result<u64, Error> {
        self.enqueue_after(payload, Duration::ZERO)
    }

    /// Adds an item that may not be claimed before `delay` has passed.
    pub fn enqueue_after(&self, payload: &[u8], delay: Duration) -> Result<u64, Error> {
        let (id, lsn) = self.enqueue_write(payload, delay)?;
        self.finish(lsn)?;
        Ok(id)
    }

    /// The check and the (buffered) record of an enqueue: its id and LSN.
    pub(crate) fn enqueue_write(
        &self,
        payload: &[u8],
        delay: Duration,
    ) -> Result<(u64, Lsn), Error> {
        let at = self
            .now()
            .saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        let (id, lsn) = {
            let mut sh = self.inner.shared.lock();
            if sh.draining {
                return Err(Error::Draining);
            }
            let id = sh.state.next_id;
            let op = Op::Enqueue {
                id,
                available_at_ms: at,
                payload: payload.to_vec(),
            };
            (id, self.write_locked(&mut sh, op)?)
        };
        Ok((id, lsn))
    }

    /// Adds an item whose payload is `value` as JSON.
    pub fn enqueue_json<T: serde::Serialize>(&self, value: &T) -> Result<u64, Error> {
        self.enqueue(&serde_json::to_vec(value)?)
    }

    /// Claims the next ready item for `worker` (oldest first): a pending item
    /// whose retry time has come, or an in-flight item whose lease expired.
    /// `Ok(None)` when nothing is ready. The claim is durable before this
    /// returns, and counts one attempt. Items that already used
    /// `max_attempts` are dead-lettered on the way. Fails with
    /// [`Error::Draining`] once [`WorkQueue::drain`] began: a worker loop
    /// should stop on that error.
    pub fn claim(&self, worker: &str) -> Result<Option<Claimed>, Error> {
        let (claimed, lsn) = self.claim_write(worker)?;
        if let Some(lsn) = lsn {
            self.finish(lsn)?;
        }
        Ok(claimed)
    }

    /// The (buffered) records of a claim: the item, and the LSN to make
    /// durable before handing it out (also when only dead letters were
    /// written on the way).
    pub(crate) fn claim_write(
        &self,
        worker: &str,
    ) -> Result<(Option<Claimed>, Option<Lsn>), Error> {
        if worker.is_empty() || worker.len() > MAX_WORKER_LEN {
            return Err(Error::InvalidArgument(format!(
                "worker id must be 1..={MAX_WORKER_LEN} bytes"
            )));
        }
        let now = self.now();
        let max = self.inner.opts.max_attempts;
        let mut last_lsn = None;
        let claimed = {
            let mut sh = self.inner.shared.lock();
            if sh.draining {
                return Err(Error::Draining);
            }
            loop {
                let ready = sh
                    .state
                    .ready
                    .first()
                    .filter(|(at, _)| *at <= now)
                    .map(|&(_, id)| id);
                let expired = || {
                    sh.state
                        .leases
                        .first()
                        .filter(|(until, _)| *until <= now)
                        .map(|&(_, id)| id)
                };
                let Some(id) = ready.or_else(expired) else {
                    break None;
                };
                if ready.is_none() {
                    // Taken over from a worker whose lease ran out.
                    crate::observe::lease_expired();
                    tracing::info!(
                        target: "agentwal::queue",
                        item = id,
                        worker = ?sh.state.items[&id].worker,
                        "lease expired: the item is claimed again"
                    );
                }
                let item = &sh.state.items[&id];
                let attempts = item.attempts;
                if attempts >= max {
                    let error = match (&item.last_error, item.state) {
                        (_, ItemState::InFlight) => format!(
                            "lease of worker {} expired on the last allowed attempt ({attempts} of {max})",
                            item.worker.as_deref().unwrap_or("?")
                        ),
                        (Some(e), _) => e.clone(),
                        (None, _) => format!("{attempts} attempts used, max_attempts is {max}"),
                    };
                    last_lsn = Some(self.write_locked(
                        &mut sh,
                        Op::Dead {
                            id,
                            attempt: attempts,
                            error,
                        },
                    )?);
                    continue;
                }
                let lease_until = now.saturating_add(
                    u64::try_from(self.inner.opts.lease.as_millis()).unwrap_or(u64::MAX),
                );
                let op = Op::Claim {
                    id,
                    attempt: attempts + 1,
                    lease_until_ms: lease_until,
                    worker: worker.to_string(),
                };
                last_lsn = Some(self.write_locked(&mut sh, op)?);
                let item = &sh.state.items[&id];
                break Some(Claimed {
                    id,
                    attempt: item.attempts,
                    worker: worker.to_string(),
                    payload: item.payload.clone(),
                });
            }
        };
        Ok((claimed, last_lsn))
    }

    fn held(&self, sh: &Shared, c: &Claimed) -> Result<(), Error> {
        match sh.state.items.get(&c.id) {
            None if c.id < sh.state.next_id => Err(Error::LeaseLost {
                id: c.id,
                attempt: c.attempt,
                current: Some("already acked".into()),
            }),
            None => Err(Error::NotFound { id: c.id }),
            Some(i) if i.state == ItemState::InFlight && i.attempts == c.attempt => Ok(()),
            Some(i) => Err(Error::LeaseLost {
                id: c.id,
                attempt: c.attempt,
                current: Some(match i.state {
                    ItemState::InFlight => format!(
                        "attempt {} by worker {}",
                        i.attempts,
                        i.worker.as_deref().unwrap_or("?")
                    ),
                    s => format!("{s:?} after {} attempts", i.attempts),
                }),
            }),
        }
    }

    /// Marks a claimed item done. Durable before it returns; the item is
    /// never handed out again.
    pub fn ack(&self, claimed: &Claimed) -> Result<(), Error> {
        let lsn = self.ack_write(claimed)?;
        self.finish(lsn)
    }

    /// The check and the (buffered) ack record; its LSN.
    pub(crate) fn ack_write(&self, claimed: &Claimed) -> Result<Lsn, Error> {
        let lsn = {
            let mut sh = self.inner.shared.lock();
            self.held(&sh, claimed)?;
            let op = Op::Ack {
                id: claimed.id,
                attempt: claimed.attempt,
            };
            self.write_locked(&mut sh, op)?
        };
        self.inner.settled.notify_all();
        Ok(lsn)
    }

    /// Gives a claimed item back after a failure: pending again after
    /// `delay`, or dead-lettered if this was attempt `max_attempts`. `error`
    /// is recorded (cut to [`MAX_ERROR_LEN`] bytes) for operators.
    pub fn nack(
        &self,
        claimed: &Claimed,
        delay: Duration,
        error: &str,
    ) -> Result<NackOutcome, Error> {
        let (outcome, lsn) = self.nack_write(claimed, delay, error)?;
        self.finish(lsn)?;
        Ok(outcome)
    }

    /// The check and the (buffered) nack or dead-letter record.
    pub(crate) fn nack_write(
        &self,
        claimed: &Claimed,
        delay: Duration,
        error: &str,
    ) -> Result<(NackOutcome, Lsn), Error> {
        let at = self
            .now()
            .saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        let error = cut(error, MAX_ERROR_LEN);
        let (lsn, outcome) = {
            let mut sh = self.inner.shared.lock();
            self.held(&sh, claimed)?;
            let (op, outcome) = if claimed.attempt >= self.inner.opts.max_attempts {
                (
                    Op::Dead {
                        id: claimed.id,
                        attempt: claimed.attempt,
                        error,
                    },
                    NackOutcome::DeadLettered,
                )
            } else {
                (
                    Op::Nack {
                        id: claimed.id,
                        attempt: claimed.attempt,
                        available_at_ms: at,
                        error,
                    },
                    NackOutcome::Retry,
                )
            };
            (self.write_locked(&mut sh, op)?, outcome)
        };
        self.inner.settled.notify_all();
        Ok((outcome, lsn))
    }

    /// Moves dead letters back to pending with a fresh attempt budget (an
    /// operator's decision, recorded durably with `by` and the time). `ids`
    /// empty: every dead letter. An id that is not a dead letter is refused
    /// ([`Error::InvalidArgument`]) and nothing is written. Returns the ids
    /// moved.
    pub fn redrive(&self, ids: &[u64], by: &str) -> Result<Vec<u64>, Error> {
        self.operate(ids, by, true, None)
    }

    /// Drops dead letters for good (their payloads leave memory and, at the
    /// next compaction, the disk), recorded durably with `by` and the time.
    /// `ids` empty: every dead letter. Returns the ids dropped.
    pub fn purge_dead(&self, ids: &[u64], by: &str) -> Result<Vec<u64>, Error> {
        self.operate(ids, by, false, None)
    }

    /// Redrives or purges, recording the operator-inbox command id
    /// `command` (if any) with every record.
    fn operate(
        &self,
        ids: &[u64],
        by: &str,
        redrive: bool,
        command: Option<&str>,
    ) -> Result<Vec<u64>, Error> {
        let (done, lsn) = self.operate_write(ids, by, redrive, command)?;
        if let Some(lsn) = lsn {
            self.finish(lsn)?;
        }
        Ok(done)
    }

    /// The checks and the (buffered) records of a redrive or purge.
    pub(crate) fn operate_write(
        &self,
        ids: &[u64],
        by: &str,
        redrive: bool,
        command: Option<&str>,
    ) -> Result<(Vec<u64>, Option<Lsn>), Error> {
        let by = cut(by, MAX_WORKER_LEN);
        let at_ms = self.now();
        let (lsn, done) = {
            let mut sh = self.inner.shared.lock();
            let targets: Vec<(u64, u32)> = if ids.is_empty() {
                sh.state
                    .items
                    .values()
                    .filter(|i| i.state == ItemState::DeadLettered)
                    .map(|i| (i.id, i.attempts))
                    .collect()
            } else {
                let mut v = Vec::new();
                let mut seen = std::collections::HashSet::new();
                for id in ids {
                    // The ops of one batch must touch distinct items (each
                    // is checked against the state before the batch).
                    if !seen.insert(*id) {
                        continue;
                    }
                    match sh.state.items.get(id) {
                        Some(i) if i.state == ItemState::DeadLettered => v.push((i.id, i.attempts)),
                        Some(i) => {
                            return Err(Error::InvalidArgument(format!(
                                "item {id} is {}, not dead-lettered; nothing was changed",
                                i.state
                            )))
                        }
                        None => {
                            return Err(Error::InvalidArgument(format!(
                                "item {id} does not exist; nothing was changed"
                            )))
                        }
                    }
                }
                v
            };
            let mut ops = Vec::with_capacity(targets.len());
            for (id, attempt) in &targets {
                ops.push(if redrive {
                    Op::Redrive {
                        id: *id,
                        attempt: *attempt,
                        by: by.clone(),
                        at_ms,
                        command: command.map(str::to_string),
                    }
                } else {
                    Op::Purge {
                        id: *id,
                        attempt: *attempt,
                        by: by.clone(),
                        at_ms,
                        command: command.map(str::to_string),
                    }
                });
            }
            // An inbox command that changes nothing is recorded all the
            // same: re-claimed after an owner crash it must be answered
            // "already applied", not applied again to the dead letters
            // that appeared since.
            if let (true, Some(c)) = (ops.is_empty(), command) {
                ops.push(Op::Command {
                    redrive,
                    by: by.clone(),
                    at_ms,
                    command: c.to_string(),
                });
            }
            // One batch: a kill between per-item writes would leave the
            // command half applied, and its re-application after the restart
            // would answer "already applied" for the items recorded.
            let last = if ops.is_empty() {
                None
            } else {
                Some(self.write_all_locked(&mut sh, ops)?)
            };
            (last, targets.into_iter().map(|t| t.0).collect::<Vec<_>>())
        };
        Ok((done, lsn))
    }

    /// Applies every command waiting in the queue's operator inbox and
    /// replies to each; returns how many were handled.
    pub fn apply_inbox(&self) -> Result<usize, Error> {
        let Some(inbox) = &self.inner.inbox else {
            return Ok(0);
        };
        let io = |e: std::io::Error| {
            Error::InvalidArgument(format!("operator inbox {}: {e}", inbox.dir().display()))
        };
        // One pass at a time: a command claimed by a concurrent pass (the
        // poller) is `.applying`, which `claim_all` would claim again.
        let _turn = inbox.owner_turn();
        let claimed = inbox.claim_all().map_err(io)?;
        let n = claimed.len();
        for c in claimed {
            let already = self.inner.shared.lock().state.commands.get(&c.id).cloned();
            let reply = match serde_json::from_slice::<QueueCommand>(&c.body) {
                // Recorded before the owner crashed without replying: answer
                // with what the first application changed.
                Ok(_) if already.is_some() => {
                    let done = already.unwrap_or_else(|| unreachable!());
                    QueueReply {
                        ok: true,
                        message: format!(
                            "already applied (command {} by {:?}, before the owner restarted): {} {} dead letter(s)",
                            c.id,
                            done.by,
                            if done.redrive { "redrove" } else { "purged" },
                            done.ids.len()
                        ),
                        ids: done.ids,
                    }
                }
                Ok(cmd) => {
                    let id = Some(c.id.as_str());
                    let r = match cmd.command.as_str() {
                        "redrive" => self.operate(&cmd.ids, &cmd.by, true, id),
                        "purge_dead" => self.operate(&cmd.ids, &cmd.by, false, id),
                        other => Err(Error::InvalidArgument(format!(
                            "unknown queue command {other:?}"
                        ))),
                    };
                    match r {
                        Ok(ids) => QueueReply {
                            ok: true,
                            message: format!(
                                "{} {} dead letter(s), by {:?}",
                                if cmd.command == "redrive" {
                                    "redrove"
                                } else {
                                    "purged"
                                },
                                ids.len(),
                                cmd.by
                            ),
                            ids,
                        },
                        Err(e) => QueueReply {
                            ok: false,
                            ids: Vec::new(),
                            message: e.to_string(),
                        },
                    }
                }
                Err(e) => QueueReply {
                    ok: false,
                    ids: Vec::new(),
                    message: format!("not a queue command: {e}"),
                },
            };
            let body = serde_json::to_vec(&reply).expect("replies serialize");
            inbox.reply(&c.id, &body).map_err(io)?;
        }
        Ok(n)
    }

    /// Stops intake and waits up to `timeout` for in-flight items to be acked
    /// or nacked; the rest are durably released back to pending. Use
    /// `shutdown.remaining()` as the timeout to stay within the shutdown budget.
    pub fn drain(&self, timeout: Duration) -> Result<DrainReport, Error> {
        let limit = Instant::now() + timeout;
        let mut sh = self.inner.shared.lock();
        sh.draining = true;
        let at_start = sh.state.in_flight;
        while sh.state.in_flight > 0 {
            if self.inner.settled.wait_until(&mut sh, limit).timed_out() {
                break;
            }
        }
        let left: Vec<(u64, u32)> = sh
            .state
            .items
            .values()
            .filter(|i| i.state == ItemState::InFlight)
            .map(|i| (i.id, i.attempts))
            .collect();
        let mut report = DrainReport {
            finished: at_start.saturating_sub(left.len()),
            timed_out: !left.is_empty(),
            ..DrainReport::default()
        };
        let mut last = None;
        for (id, attempt) in left {
            last = Some(self.write_locked(&mut sh, Op::Release { id, attempt })?);
            report.released.push(id);
        }
        report.pending = sh.state.pending();
        drop(sh);
        if let Some(lsn) = last {
            // Released items must be durable as pending before we report them so.
            self.inner.log.wait_durable(lsn)?;
        }
        Ok(report)
    }

    /// Counts by state.
    pub fn stats(&self) -> QueueStats {
        let sh = self.inner.shared.lock();
        QueueStats {
            pending: sh.state.pending() as u64,
            in_flight: sh.state.in_flight as u64,
            dead_lettered: sh.state.dead as u64,
            acked_total: sh.state.acked_total,
        }
    }

    /// Every live item (pending, in flight, dead-lettered), by id.
    pub fn list(&self) -> Vec<QueueItemView> {
        let sh = self.inner.shared.lock();
        sh.state
            .items
            .values()
            .map(QueueItemView::from_item)
            .collect()
    }

    /// One item, if it is live.
    pub fn get(&self, id: u64) -> Option<QueueItemView> {
        self.inner
            .shared
            .lock()
            .state
            .items
            .get(&id)
            .map(QueueItemView::from_item)
    }

    /// The payload of a live item (e.g. to inspect a dead letter).
    pub fn payload(&self, id: u64) -> Option<Vec<u8>> {
        self.inner
            .shared
            .lock()
            .state
            .items
            .get(&id)
            .map(|i| i.payload.clone())
    }

    /// Writes a snapshot of the live state and removes the segments it
    /// covers. Returns the snapshot's LSN (`None` when there was nothing new).
    pub fn compact(&self) -> Result<Option<Lsn>, Error> {
        let mut sh = self.inner.shared.lock();
        let log = &self.inner.log;
        // Every record is appended under this lock, so the state reflects
        // exactly the records up to `lsn`.
        let lsn = log.next_lsn() - 1;
        if lsn == 0 || lsn <= log.snapshot_lsn() {
            return Ok(None);
        }
        let data = QueueState::encode(sh.state.snapshot());
        log.write_snapshot(lsn, &data)?;
        sh.records_since_snapshot = 0;
        drop(sh);
        log.truncate_before(lsn + 1)?;
        Ok(Some(lsn))
    }

    /// Syncs and closes the queue's log.
    pub fn close(self) -> Result<(), Error> {
        Ok(self.inner.log.sync().map(|_| ())?)
    }
}

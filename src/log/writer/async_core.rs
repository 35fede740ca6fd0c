//! The async core of a [`Log`]: one dedicated writer thread per log, and
//! futures that complete when their LSN is durable.
//!
//! # What runs where
//!
//! * **The executor thread** (the task calling [`Log::append_async`],
//!   [`Log::sync_async`] or [`Log::wait_durable_async`]) only checks the
//!   arguments (payload size, an LSN already durable), sends a request
//!   through a channel and awaits a `tokio::sync::oneshot`. It never takes
//!   the writer mutex, never writes, never syncs: a stalled disk stalls the
//!   future, not the executor.
//! * **The writer thread** (`agentwal-log-writer`, started at the first
//!   async call) takes every request queued, encodes all the appends as
//!   pending records (through the same `write_locked` as
//!   [`Log::append_batch`], so rotation and LSN order are the sync path's;
//!   the sync's leader writes every pending record with one `pwrite`),
//!   then waits for one sync covering the highest LSN any
//!   request needs through [`Log::wait_durable`]: it takes part in the same
//!   group commit as threads calling [`Log::append`] (it may lead the sync
//!   or ride on another caller's). Then it completes each future with its
//!   LSN, or with the error: the failing call's error for the first
//!   request, [`Error::Poisoned`] for the others, exactly what the sync
//!   callers of one failed group see. While it syncs, new requests queue
//!   up and form the next group, so thousands of tasks share one
//!   `fdatasync` without holding a thread each.
//! * **Gathering**: the thread expects the next group to be the requests
//!   it just served plus those that queued meanwhile (counted before it
//!   completes any future). When fewer are queued, it waits for the others
//!   (at most as long as the last group took, capped at `MAX_GATHER`), as
//!   `wait_durable`'s leader does for threads; a timeout turns this off for
//!   a few groups. Without it, tasks released together split into a small
//!   group that syncs at once and a large one that waits a whole sync, and
//!   stay split (each half looks complete). The thread waits for the first
//!   request of a group it expects the same way (yielding, same bound)
//!   before it sleeps on the channel: a profile of 64 tasks showed the
//!   thread idle most of each cycle, waiting for the wake-up chain
//!   (writer → tokio worker → writer), on a loaded 2-CPU machine.
//!
//! # Lifetime
//!
//! The thread holds only a weak reference to the log between groups, so
//! dropping the last [`Log`] handle closes the channel; the handle's drop
//! joins the thread (a few microseconds: it is idle, or it would hold a
//! strong reference). The thread drops its strong reference *before*
//! completing a group's futures, so a task that saw its append complete and
//! dropped its handle can reopen the directory at once. Requests of
//! cancelled futures that were already queued are still written (as a sync
//! caller's write that returned an error on a later sync would be).

use std::ops::RangeInclusive;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Inner, Log, GATHER_BACKOFF, MAX_GATHER};
use crate::log::error::{Error, Result};
use crate::log::record::Lsn;

/// One request to the writer thread.
pub(super) enum Req {
    /// Append these records as one batch, durably; complete with their LSNs.
    Append {
        records: Vec<(u8, Vec<u8>)>,
        done: oneshot::Sender<Result<RangeInclusive<Lsn>>>,
    },
    /// Complete when a sync covers `lsn` (`None`: everything written when
    /// the request is served, as [`Log::sync`]); with the durable LSN.
    Durable {
        lsn: Option<Lsn>,
        done: oneshot::Sender<Result<Lsn>>,
    },
}

/// The writer thread's handle, owned by the log's shared state.
#[derive(Debug)]
pub(super) struct AsyncCore {
    tx: Option<Sender<Req>>,
    thread: Option<JoinHandle<()>>,
    #[cfg(feature = "testing")]
    alive: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Req {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Req::Append { records, .. } => write!(f, "Append({} records)", records.len()),
            Req::Durable { lsn, .. } => write!(f, "Durable({lsn:?})"),
        }
    }
}

#[cfg(any(test, feature = "testing"))]
thread_local! {
    /// Tests: the next writer-thread start on this thread fails.
    static FAIL_NEXT_START: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl AsyncCore {
    /// Starts the writer thread for the log behind `inner`.
    pub(super) fn start(inner: Weak<Inner>) -> std::io::Result<AsyncCore> {
        #[cfg(any(test, feature = "testing"))]
        if FAIL_NEXT_START.with(|f| f.replace(false)) {
            return Err(std::io::Error::other(
                "injected: the writer thread could not be spawned",
            ));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        #[cfg(feature = "testing")]
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        #[cfg(feature = "testing")]
        let flag = alive.clone();
        let thread = std::thread::Builder::new()
            .name("agentwal-log-writer".into())
            .spawn(move || {
                serve_loop(inner, rx);
                #[cfg(feature = "testing")]
                flag.store(false, std::sync::atomic::Ordering::Release);
            })?;
        Ok(AsyncCore {
            tx: Some(tx),
            thread: Some(thread),
            #[cfg(feature = "testing")]
            alive,
        })
    }

    /// Queues a request; `false` when the thread is gone (it exits only
    /// once every handle is dropped, so a live caller never sees that).
    pub(super) fn send(&self, req: Req) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(req).is_ok())
    }

    /// A flag that turns false when the thread has exited (tests).
    #[cfg(feature = "testing")]
    pub(super) fn alive(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.alive.clone()
    }
}

impl Drop for AsyncCore {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        self.tx = None;
        if let Some(t) = self.thread.take() {
            // The last strong reference may be the thread's own (it was
            // serving a group when the last handle went away): it exits by
            // itself right after; joining itself would deadlock.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

/// How many requests the next group should wait for, and how long.
#[derive(Default)]
struct Gather {
    /// The requests the last group served plus those that queued while it
    /// was served: the callers most likely to form the next group.
    expected: usize,
    last_sync: Duration,
    backoff: u32,
}

fn serve_loop(inner: Weak<Inner>, rx: Receiver<Req>) {
    let mut gather = Gather::default();
    let mut carry = Vec::new();
    loop {
        let mut group = std::mem::take(&mut carry);
        if group.is_empty() && gather.expected > 0 && gather.backoff == 0 {
            // Callers just released usually come back at once: wait for
            // the first of them runnable (yielding) rather than asleep on
            // the channel, so its send costs no futex wake-up.
            let deadline = Instant::now() + gather.last_sync.min(MAX_GATHER);
            while Instant::now() < deadline {
                match rx.try_recv() {
                    Ok(r) => {
                        group.push(r);
                        break;
                    }
                    Err(TryRecvError::Empty) => std::thread::yield_now(),
                    Err(TryRecvError::Disconnected) => break,
                }
            }
        }
        if group.is_empty() {
            match rx.recv() {
                Ok(r) => group.push(r),
                Err(_) => return,
            }
        }
        drain(&rx, &mut group);
        if gather.backoff > 0 {
            gather.backoff -= 1;
        } else if gather.expected > 1 && group.len() < gather.expected {
            // Yields instead of sleeping on the channel (as the sync
            // leader's `gather`): the thread stays runnable, so the tasks
            // it waits for get the CPU and no futex wake-up is added to
            // the critical path (on a loaded machine a wake-up can cost
            // more than the sync).
            let deadline = Instant::now() + gather.last_sync.min(MAX_GATHER);
            while group.len() < gather.expected {
                match rx.try_recv() {
                    Ok(r) => {
                        group.push(r);
                        drain(&rx, &mut group);
                    }
                    Err(TryRecvError::Empty) if Instant::now() < deadline => {
                        std::thread::yield_now();
                    }
                    Err(TryRecvError::Empty) => {
                        gather.backoff = GATHER_BACKOFF;
                        break;
                    }
                    Err(TryRecvError::Disconnected) => break,
                }
            }
        }
        let served = group.len();
        let Some(inner) = inner.upgrade() else {
            // Every handle is gone: nobody can await these any more.
            return;
        };
        let log = Log { inner };
        let started = Instant::now();
        let done = log.serve(group);
        gather.last_sync = started.elapsed();
        // Released before the futures complete (see the module docs).
        drop(log);
        // Counted before anyone served here is told (and could queue
        // again): with those, the next group to wait for. Counting only the
        // group just served would let tasks split into two alternating
        // half-groups that each look complete.
        drain(&rx, &mut carry);
        gather.expected = served + carry.len();
        for d in done {
            d.complete();
        }
    }
}

fn drain(rx: &Receiver<Req>, group: &mut Vec<Req>) {
    loop {
        match rx.try_recv() {
            Ok(r) => group.push(r),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
        }
    }
}

/// A request's answer, sent once the thread let go of the log.
enum Done {
    Append(
        oneshot::Sender<Result<RangeInclusive<Lsn>>>,
        Result<RangeInclusive<Lsn>>,
    ),
    Durable(oneshot::Sender<Result<Lsn>>, Result<Lsn>),
}

impl Done {
    fn complete(self) {
        // A dropped receiver is a cancelled future: nothing to tell.
        match self {
            Done::Append(tx, r) => drop(tx.send(r)),
            Done::Durable(tx, r) => drop(tx.send(r)),
        }
    }
}

/// Where a request stands inside one group.
enum Slot {
    Append(
        oneshot::Sender<Result<RangeInclusive<Lsn>>>,
        RangeInclusive<Lsn>,
    ),
    Durable(oneshot::Sender<Result<Lsn>>),
    /// Answered without the sync (refused, or nothing to wait for).
    Failed(Done),
}

impl Slot {
    fn into_failed(self) -> Done {
        match self {
            Slot::Failed(d) => d,
            // Only called when every slot was answered already.
            Slot::Append(tx, _) => Done::Append(tx, Err(poisoned_fallback())),
            Slot::Durable(tx) => Done::Durable(tx, Err(poisoned_fallback())),
        }
    }
}

fn poisoned_fallback() -> Error {
    Error::Poisoned {
        cause: "an earlier request of the same group failed".into(),
    }
}

/// A request waiting for the group's write and sync.
enum Pending {
    /// An append of this many records.
    Append(oneshot::Sender<Result<RangeInclusive<Lsn>>>, u64),
    /// A durability wait (`None`: everything written).
    Durable(oneshot::Sender<Result<Lsn>>, Option<Lsn>),
}

impl Log {
    /// Serves one group: one write for every append, one (shared) sync
    /// for every request, then the answers.
    fn serve(&self, group: Vec<Req>) -> Vec<Done> {
        // A poisoned log writes nothing; its durability requests still get
        // the sync path's answers (already durable, out of range, poisoned).
        let poisoned = self.check_poison().is_err();
        let mut records: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut slots = Vec::with_capacity(group.len());
        let mut pending = Vec::with_capacity(group.len());
        for r in group {
            match r {
                Req::Append { done, .. } if poisoned => {
                    slots.push(Slot::Failed(Done::Append(done, Err(self.poisoned_error()))));
                }
                Req::Durable { lsn: None, done } if poisoned => {
                    slots.push(Slot::Failed(Done::Durable(
                        done,
                        Err(self.poisoned_error()),
                    )));
                }
                Req::Append {
                    records: recs,
                    done,
                } => {
                    pending.push(Pending::Append(done, recs.len() as u64));
                    records.extend(recs);
                }
                Req::Durable { lsn, done } => pending.push(Pending::Durable(done, lsn)),
            }
        }
        let mut first = 0;
        if !records.is_empty() {
            let borrowed: Vec<(u8, &[u8])> =
                records.iter().map(|(k, p)| (*k, p.as_slice())).collect();
            let written = {
                let mut w = self.inner.writer.lock();
                let r = self.write_locked(&mut w, &borrowed, super::Durability::Durable);
                // Poisoned before the writer lock is released, as in
                // `append_batch`: records of other callers may be lost.
                if let Err(e) = &r {
                    self.poison(e);
                }
                r
            };
            match written {
                Ok(range) => {
                    crate::observe::appended(
                        records.len(),
                        records.iter().map(|(_, p)| p.len() as u64).sum(),
                    );
                    first = *range.start();
                }
                Err(e) => {
                    // The log is poisoned (above); the error goes to the
                    // first request, `Poisoned` to the others.
                    let mut err = Some(e);
                    for p in pending {
                        let e = err.take().unwrap_or_else(|| self.poisoned_error());
                        slots.push(Slot::Failed(match p {
                            Pending::Append(done, _) => Done::Append(done, Err(e)),
                            Pending::Durable(done, _) => Done::Durable(done, Err(e)),
                        }));
                    }
                    return slots.into_iter().map(Slot::into_failed).collect();
                }
            }
        }
        let (next, durable) = (self.next_lsn(), self.durable_lsn());
        let mut target = 0;
        for p in pending {
            match p {
                Pending::Append(done, n) => {
                    let range = first..=first + n - 1;
                    first += n;
                    target = target.max(*range.end());
                    slots.push(Slot::Append(done, range));
                }
                Pending::Durable(done, None) => {
                    target = target.max(next - 1);
                    slots.push(Slot::Durable(done));
                }
                Pending::Durable(done, Some(lsn)) => {
                    if lsn <= durable {
                        slots.push(Slot::Failed(Done::Durable(done, Ok(durable))));
                    } else if lsn >= next {
                        // The sync path's answer: no sync can ever cover it.
                        let e = Error::LsnOutOfRange {
                            lsn,
                            first: self.snapshot_lsn() + 1,
                            last: next - 1,
                        };
                        slots.push(Slot::Failed(Done::Durable(done, Err(e))));
                    } else {
                        target = target.max(lsn);
                        slots.push(Slot::Durable(done));
                    }
                }
            }
        }
        let mut err = if target > 0 {
            self.wait_durable(target).err()
        } else {
            None
        };
        let durable = self.durable_lsn();
        slots
            .into_iter()
            .map(|s| match s {
                Slot::Failed(d) => d,
                Slot::Append(tx, range) => match self.outcome(&mut err) {
                    Ok(()) => Done::Append(tx, Ok(range)),
                    Err(e) => Done::Append(tx, Err(e)),
                },
                Slot::Durable(tx) => match self.outcome(&mut err) {
                    Ok(()) => Done::Durable(tx, Ok(durable)),
                    Err(e) => Done::Durable(tx, Err(e)),
                },
            })
            .collect()
    }

    /// The group's result for one more request: the failure itself for
    /// the first, then `Poisoned` (as a sync caller after it would see).
    fn outcome(&self, err: &mut Option<Error>) -> Result<()> {
        match err.take() {
            Some(e) => Err(e),
            None if self
                .inner
                .poisoned
                .load(std::sync::atomic::Ordering::Acquire) =>
            {
                self.check_poison()
            }
            None => Ok(()),
        }
    }

    fn poisoned_error(&self) -> Error {
        self.check_poison().err().unwrap_or_else(poisoned_fallback)
    }

    /// The writer thread, started at the first async call. A failed start
    /// (no thread could be spawned: a resource limit, often transient)
    /// fails that call with `Io` and stores nothing, so the next async call
    /// tries again; it says nothing about the log, which is not poisoned.
    fn core(&self) -> Result<&AsyncCore> {
        if let Some(c) = self.inner.core.get() {
            return Ok(c);
        }
        let c = AsyncCore::start(Arc::downgrade(&self.inner))
            .map_err(|e| Error::io("start writer thread", self.dir(), e))?;
        // Two first calls racing may both have started a thread: one is
        // kept; dropping the other closes its channel, so its thread (idle,
        // waiting for a first request) exits at once and is joined.
        if let Err(lost) = self.inner.core.set(c) {
            drop(lost);
        }
        Ok(self.inner.core.get().expect("set just above"))
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Req,
        what: &'static str,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        let gone = || {
            Error::io(
                what,
                self.dir(),
                std::io::Error::other("the log's writer thread is gone"),
            )
        };
        if !self.core()?.send(make(tx)) {
            return Err(gone());
        }
        rx.await.unwrap_or_else(|_| Err(gone()))
    }

    /// Async durable append of one record of `kind`; returns its LSN once a
    /// sync covers it.
    ///
    /// No file I/O runs on the calling task's thread: the record goes to
    /// the log's writer thread, which writes everything queued as one batch
    /// and shares one `fdatasync` with every other async and sync caller
    /// (group commit). Same errors as [`Log::append`]: `RecordTooLarge`
    /// before anything is written, `Io` for the failing write or sync,
    /// `Poisoned` after one. Dropping the future does not withdraw a record
    /// that was already sent to the writer thread.
    pub async fn append_async(&self, kind: u8, payload: Vec<u8>) -> Result<Lsn> {
        Ok(*self.append_batch_async(vec![(kind, payload)]).await?.end())
    }

    /// Async durable [`Log::append_batch`]: the records get consecutive
    /// LSNs (one write with everything else queued) and the future
    /// completes once one sync covers them all.
    pub async fn append_batch_async(
        &self,
        records: Vec<(u8, Vec<u8>)>,
    ) -> Result<RangeInclusive<Lsn>> {
        if records.is_empty() {
            return Err(Error::InvalidOptions("empty batch".into()));
        }
        let limit = self.inner.opts.max_record_bytes;
        if let Some((_, p)) = records.iter().find(|(_, p)| p.len() as u64 > limit) {
            return Err(Error::RecordTooLarge {
                size: p.len() as u64,
                limit,
            });
        }
        self.check_poison()?;
        self.ask(|done| Req::Append { records, done }, "append")
            .await
    }

    /// Async [`Log::sync`]: everything written so far is durable when it
    /// completes (with the durable LSN). The sync runs on the writer thread
    /// (or in another caller's group commit), never on the executor.
    pub async fn sync_async(&self) -> Result<Lsn> {
        // A poisoned log refuses every call, even when nothing is pending.
        self.check_poison()?;
        self.ask(|done| Req::Durable { lsn: None, done }, "sync")
            .await
    }

    /// Async [`Log::wait_durable`]: completes when a sync covers `lsn`,
    /// without holding a thread while it waits. An LSN never written is
    /// [`Error::LsnOutOfRange`], as in the sync call.
    pub async fn wait_durable_async(&self, lsn: Lsn) -> Result<()> {
        if self.durable_lsn() >= lsn {
            return Ok(());
        }
        self.ask(
            |done| Req::Durable {
                lsn: Some(lsn),
                done,
            },
            "wait for durability",
        )
        .await
        .map(|_| ())
    }

    /// Makes the next start of a log's writer thread attempted on the
    /// calling thread fail, as a failed thread spawn (a resource limit)
    /// would: the async call that needed it returns `Error::Io` (tests).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn fail_next_writer_start() {
        FAIL_NEXT_START.with(|f| f.set(true));
    }

    /// Whether this log's writer thread is still running: the flag turns
    /// false when it exits (tests check that closing leaks no thread).
    /// `None` before the first async call started it.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn writer_thread_alive(&self) -> Option<Arc<std::sync::atomic::AtomicBool>> {
        self.inner.core.get().map(AsyncCore::alive)
    }
}

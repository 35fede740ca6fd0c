//! The async core of the log: no file I/O on an executor thread, group
//! commit shared by any number of tasks, and the sync path's guarantees
//! (durability at every power-loss boundary, poison, `LsnOutOfRange`, no
//! hang or leaked thread when the log is dropped with futures pending).
#![cfg(feature = "tokio")]

mod async_support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_support::{current_thread, eventually};

use agentwal::log::storage::sim::{CrashMode, FaultKind, FaultOp};
use agentwal::log::{Durability, Error, Log, LogOptions, SimStorage};

const DIR: &str = "/sim/async/journal";

fn opts() -> LogOptions {
    LogOptions {
        segment_size: 4096,
        max_record_bytes: 2048,
        ..LogOptions::default()
    }
}

/// Releases the stalled disk only once the executor has shown it runs
/// other tasks while the sync is stuck (the counter advanced by 1000 after
/// the stall was reached); records whether it did. If the async call did
/// its I/O on the executor thread, the counter never moves: the watchdog
/// gives up after a generous bound and releases the disk anyway, so the
/// test fails instead of hanging.
fn release_when_executor_runs(
    sim: SimStorage,
    counter: Arc<AtomicU64>,
    ran: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let stalled = eventually(Duration::from_secs(20), || sim.stalled_syncs() > 0);
        let at = counter.load(Ordering::Acquire);
        let moved = stalled
            && eventually(Duration::from_secs(20), || {
                counter.load(Ordering::Acquire) >= at + 1000
            });
        ran.store(moved && sim.stalled_syncs() > 0, Ordering::Release);
        sim.stall_syncs(false);
    })
}

#[test]
fn a_stalled_disk_does_not_stall_a_current_thread_executor() {
    let sim = SimStorage::new();
    let log = Log::open_with(Arc::new(sim.clone()), DIR, opts()).unwrap();
    log.append(b"before").unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let ran = Arc::new(AtomicBool::new(false));
    sim.stall_syncs(true);
    let watchdog = release_when_executor_runs(sim.clone(), counter.clone(), ran.clone());
    let rt = current_thread();
    let lsn = rt.block_on(async {
        let appender = {
            let log = log.clone();
            tokio::spawn(async move { log.append_async(1, b"waits for the disk".to_vec()).await })
        };
        let ticker = {
            let (counter, log) = (counter.clone(), log.clone());
            tokio::spawn(async move {
                // Runs until the append is durable.
                while log.durable_lsn() < 2 {
                    counter.fetch_add(1, Ordering::AcqRel);
                    tokio::task::yield_now().await;
                }
            })
        };
        let lsn = appender.await.unwrap().unwrap();
        ticker.await.unwrap();
        lsn
    });
    watchdog.join().unwrap();
    assert!(
        ran.load(Ordering::Acquire),
        "the executor ran other tasks while append_async waited on the stalled disk"
    );
    assert_eq!(lsn, 2);
    assert!(log.durable_lsn() >= 2);
    drop(log);
    let log = Log::open_with(Arc::new(sim.crash(CrashMode::DropUnsynced)), DIR, opts()).unwrap();
    assert_eq!(log.next_lsn(), 3, "the acknowledged async append survived");
}

#[test]
fn wait_durable_async_and_sync_async_wait_without_the_executor() {
    let sim = SimStorage::new();
    let log = Log::open_with(Arc::new(sim.clone()), DIR, opts()).unwrap();
    let lsn = log
        .append_with(0, b"buffered", Durability::Buffered)
        .unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let ran = Arc::new(AtomicBool::new(false));
    sim.stall_syncs(true);
    let watchdog = release_when_executor_runs(sim.clone(), counter.clone(), ran.clone());
    current_thread().block_on(async {
        let waiter = {
            let log = log.clone();
            tokio::spawn(async move { log.wait_durable_async(lsn).await })
        };
        let syncer = {
            let log = log.clone();
            tokio::spawn(async move { log.sync_async().await })
        };
        while !(waiter.is_finished() && syncer.is_finished()) {
            counter.fetch_add(1, Ordering::AcqRel);
            tokio::task::yield_now().await;
        }
        waiter.await.unwrap().unwrap();
        assert!(syncer.await.unwrap().unwrap() >= lsn);
    });
    watchdog.join().unwrap();
    assert!(ran.load(Ordering::Acquire), "the executor kept running");
    assert!(log.durable_lsn() >= lsn);
}

#[test]
fn lsn_out_of_range_and_limits_match_the_sync_path() {
    let sim = SimStorage::new();
    let log = Log::open_with(Arc::new(sim), DIR, opts()).unwrap();
    log.append(b"one").unwrap();
    current_thread().block_on(async {
        // Already durable: at once.
        log.wait_durable_async(1).await.unwrap();
        for lsn in [2, 1_000_000] {
            let (sync, asy) = (log.wait_durable(lsn), log.wait_durable_async(lsn).await);
            match (sync, asy) {
                (
                    Err(Error::LsnOutOfRange {
                        lsn: a,
                        first: fa,
                        last: la,
                    }),
                    Err(Error::LsnOutOfRange {
                        lsn: b,
                        first: fb,
                        last: lb,
                    }),
                ) => assert_eq!((a, fa, la), (b, fb, lb)),
                other => panic!("expected LsnOutOfRange from both, got {other:?}"),
            }
        }
        assert!(matches!(
            log.append_async(0, vec![0; 4000]).await,
            Err(Error::RecordTooLarge { .. })
        ));
        assert!(matches!(
            log.append_batch_async(Vec::new()).await,
            Err(Error::InvalidOptions(_))
        ));
    });
    assert_eq!(log.next_lsn(), 2, "refused appends wrote nothing");
}

#[test]
fn many_tasks_share_group_commit_with_sync_threads() {
    let sim = SimStorage::new();
    sim.set_sync_delay(Some(Duration::from_millis(2)));
    let opts = LogOptions {
        segment_size: 1 << 20,
        ..opts()
    };
    let log = Log::open_with(Arc::new(sim.clone()), DIR, opts.clone()).unwrap();
    let base = sim.syncs();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..20u8)
                    .map(|i| (log.append(&[200 + t, i]).unwrap(), vec![200 + t, i]))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked: Vec<(u64, Vec<u8>)> = rt.block_on(async {
        let tasks: Vec<_> = (0..500u32)
            .map(|t| {
                let log = log.clone();
                tokio::spawn(async move {
                    let p = t.to_le_bytes().to_vec();
                    (log.append_async(1, p.clone()).await.unwrap(), p)
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    for t in threads {
        acked.extend(t.join().unwrap());
    }
    let syncs = sim.syncs() - base;
    assert!(
        syncs < 200,
        "580 durable appends took {syncs} syncs: async tasks must share them"
    );
    for (lsn, _) in &acked {
        assert!(log.durable_lsn() >= *lsn);
    }
    drop(log);
    let log = Log::open_with(Arc::new(sim.crash(CrashMode::DropUnsynced)), DIR, opts).unwrap();
    let back: std::collections::HashMap<u64, Vec<u8>> = log
        .read_from(1)
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            (r.lsn, r.payload().to_vec())
        })
        .collect();
    assert_eq!(back.len(), 580);
    for (lsn, p) in acked {
        assert_eq!(back.get(&lsn), Some(&p), "acknowledged LSN {lsn}");
    }
}

#[test]
fn a_failed_sync_fails_every_pending_waiter_and_poisons() {
    let sim = SimStorage::new();
    let log = Log::open_with(Arc::new(sim.clone()), DIR, opts()).unwrap();
    log.append(b"ok").unwrap();
    let buffered = log
        .append_with(0, b"buffered", Durability::Buffered)
        .unwrap();
    sim.stall_syncs(true);
    let results = current_thread().block_on(async {
        let mut tasks = Vec::new();
        for i in 0..10u8 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                log.append_async(1, vec![i; 10]).await.map(|_| ())
            }));
        }
        let l = log.clone();
        tasks.push(tokio::spawn(
            async move { l.wait_durable_async(buffered).await },
        ));
        let l = log.clone();
        tasks.push(tokio::spawn(
            async move { l.sync_async().await.map(|_| ()) },
        ));
        // The first group's sync is at the (stalled) disk: make it fail,
        // then let it go.
        while sim.stalled_syncs() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sim.inject(FaultOp::Sync, 0, FaultKind::Eio);
        sim.stall_syncs(false);
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let io = results
        .iter()
        .filter(|r| matches!(r, Err(Error::Io { .. })))
        .count();
    let poisoned = results
        .iter()
        .filter(|r| matches!(r, Err(Error::Poisoned { .. })))
        .count();
    assert_eq!(io, 1, "one waiter gets the failed sync itself: {results:?}");
    assert_eq!(
        io + poisoned,
        results.len(),
        "every waiter fails: {results:?}"
    );
    current_thread().block_on(async {
        assert!(matches!(
            log.append_async(1, b"after".to_vec()).await,
            Err(Error::Poisoned { .. })
        ));
        assert!(matches!(
            log.sync_async().await,
            Err(Error::Poisoned { .. })
        ));
        // An LSN durable before the failure is still reported durable, as
        // by `wait_durable`.
        log.wait_durable_async(1).await.unwrap();
    });
    drop(log);
    let log = Log::open_with(Arc::new(sim.crash(CrashMode::DropUnsynced)), DIR, opts()).unwrap();
    assert_eq!(
        log.read_from(1).unwrap().count(),
        1,
        "only the acked record"
    );
}

#[test]
fn dropping_the_log_with_futures_pending_neither_hangs_nor_leaks_the_thread() {
    let sim = SimStorage::new();
    let log = Log::open_with(Arc::new(sim.clone()), DIR, opts()).unwrap();
    let rt = current_thread();
    // Idle thread: the last handle's drop joins it.
    rt.block_on(log.append_async(1, b"start".to_vec())).unwrap();
    let alive = log
        .writer_thread_alive()
        .expect("started by the first call");
    drop(log);
    assert!(
        !alive.load(Ordering::Acquire),
        "dropping the last handle joins the writer thread"
    );
    // Busy thread: futures pending on a stalled disk, cancelled, then the
    // last handle dropped; once the disk answers the thread exits and the
    // directory can be opened again.
    let log = Log::open_with(Arc::new(sim.clone()), DIR, opts()).unwrap();
    rt.block_on(log.append_async(1, b"again".to_vec())).unwrap();
    let alive = log.writer_thread_alive().unwrap();
    sim.stall_syncs(true);
    rt.block_on(async {
        let tasks: Vec<_> = (0..8u8)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append_async(1, vec![i]).await })
            })
            .collect();
        while sim.stalled_syncs() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
    });
    drop(log);
    sim.stall_syncs(false);
    assert!(
        eventually(Duration::from_secs(20), || !alive.load(Ordering::Acquire)),
        "the writer thread exits once the last handle is gone"
    );
    let log = Log::open_with(Arc::new(sim.clone()), DIR, opts()).unwrap();
    assert!(log.next_lsn() >= 3);
}

/// What an async workload got acknowledged before the power went out.
#[derive(Debug, Default)]
struct Acked {
    /// Every payload attempted.
    attempted: Vec<Vec<u8>>,
    /// (LSN, payload) of every append acknowledged durable.
    durable: Vec<(u64, Vec<u8>)>,
}

/// Rounds of concurrent `append_async`s (sizes that rotate the 4 KiB
/// segments), a buffered append awaited with `wait_durable_async`, and a
/// `sync_async`, until the first error.
fn async_workload(sim: &SimStorage) -> Acked {
    let mut out = Acked::default();
    let Ok(log) = Log::open_with(Arc::new(sim.clone()), DIR, opts()) else {
        return out;
    };
    current_thread().block_on(async {
        for round in 0..5u32 {
            let payloads: Vec<Vec<u8>> = (0..6u32)
                .map(|t| {
                    let len = [9, 300, 1200, 40, 700, 2000][t as usize];
                    let mut p = vec![(round * 6 + t) as u8; len];
                    p[..4].copy_from_slice(&(round * 6 + t).to_le_bytes());
                    p
                })
                .collect();
            out.attempted.extend(payloads.iter().cloned());
            let tasks: Vec<_> = payloads
                .into_iter()
                .map(|p| {
                    let log = log.clone();
                    tokio::spawn(
                        async move { log.append_async(1, p.clone()).await.map(|l| (l, p)) },
                    )
                })
                .collect();
            let mut failed = false;
            for t in tasks {
                match t.await.unwrap() {
                    Ok(a) => out.durable.push(a),
                    Err(_) => failed = true,
                }
            }
            let extra = format!("buffered {round}").into_bytes();
            out.attempted.push(extra.clone());
            let Ok(lsn) = log.append_with(2, &extra, Durability::Buffered) else {
                return;
            };
            match log.wait_durable_async(lsn).await {
                Ok(()) => out.durable.push((lsn, extra)),
                Err(_) => return,
            }
            if failed || log.sync_async().await.is_err() {
                return;
            }
        }
    });
    out
}

#[test]
fn async_appends_survive_power_loss_at_every_boundary() {
    let dry = SimStorage::new();
    let full = async_workload(&dry);
    let total = dry.mutations();
    assert_eq!(
        full.durable.len(),
        35,
        "the workload completes without a halt"
    );
    let mut modes = vec![CrashMode::DropUnsynced, CrashMode::KeepAll];
    modes.extend((0..4).map(CrashMode::Random));
    for k in 0..=total + 1 {
        let sim = SimStorage::new();
        sim.halt_after(k);
        let out = async_workload(&sim);
        for &mode in &modes {
            let what = format!("halt after {k}/{total}, {mode:?}");
            let log = Log::open_with(Arc::new(sim.crash(mode)), DIR, opts())
                .unwrap_or_else(|e| panic!("{what}: open failed on a crash state: {e}"));
            let back: std::collections::HashMap<u64, Vec<u8>> = log
                .read_from(1)
                .unwrap()
                .map(|r| {
                    let r = r.unwrap_or_else(|e| panic!("{what}: read failed: {e}"));
                    (r.lsn, r.payload().to_vec())
                })
                .collect();
            for (lsn, p) in &out.durable {
                assert_eq!(
                    back.get(lsn),
                    Some(p),
                    "{what}: acknowledged LSN {lsn} lost"
                );
            }
            for p in back.values() {
                assert!(out.attempted.contains(p), "{what}: a phantom record");
            }
            assert_eq!(
                back.len() as u64,
                log.next_lsn() - 1,
                "{what}: LSNs not contiguous"
            );
        }
    }
}

/// The async writer thread leads group commits through the same sync as
/// the sync path: an `append_async` into a segment a rotation just
/// installed completes only once the segment's name is durable, so a power
/// loss right after it completes keeps the record. Fails if the leader
/// publishes `durable_lsn` before the directory sync.
#[test]
fn an_async_append_into_a_new_segment_survives_power_loss_right_after_it_completes() {
    let sim = SimStorage::new();
    let log = Log::open_with(Arc::new(sim.clone()), DIR, opts()).unwrap();
    let mut checked = 0;
    current_thread().block_on(async {
        for i in 0..60u32 {
            let segments = log.segment_count();
            let lsn = log.append_async(1, vec![i as u8; 700]).await.unwrap();
            if log.segment_count() == segments {
                continue;
            }
            checked += 1;
            let after =
                Log::open_with(Arc::new(sim.crash(CrashMode::DropUnsynced)), DIR, opts()).unwrap();
            assert_eq!(
                after.next_lsn(),
                lsn + 1,
                "LSN {lsn}, acknowledged in a new segment, lost"
            );
        }
    });
    assert!(checked >= 3, "rotations checked: {checked}");
}

/// A writer thread that could not be started (a failed spawn: a transient
/// resource limit) fails that one call with `Io`, poisons nothing, and the
/// next async call starts the thread.
#[test]
fn a_failed_writer_thread_start_is_retried_by_the_next_call() {
    let sim = SimStorage::new();
    let log = Log::open_with(Arc::new(sim.clone()), "/sim/async-start", opts()).unwrap();
    current_thread().block_on(async {
        Log::fail_next_writer_start();
        let e = log.append_async(1, b"first".to_vec()).await.unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
        let lsn = log.append_async(1, b"second".to_vec()).await.unwrap();
        assert_eq!(lsn, 1, "nothing was written by the failed call");
        log.sync_async().await.unwrap();
    });
    assert!(log
        .writer_thread_alive()
        .expect("started")
        .load(Ordering::Acquire));
    log.append(b"sync").unwrap();
}

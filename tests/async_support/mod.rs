//! Shared by the async tests: a current-thread runtime, a bounded wait,
//! and a watchdog that steps a stalled disk one sync at a time once the
//! executor has shown it keeps running.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwal::log::SimStorage;

/// A single-threaded runtime: a task that blocks stops every other task.
pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Waits (on this OS thread) until `cond` holds, at most `limit`; `false`
/// on timeout. A liveness bound against a hang, not a timing assertion.
pub fn eventually(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// Stalls every sync; each time one is held, waits until a counter task
/// on the executor advanced by 1000 (proof the executor runs while the disk
/// is stuck), then releases that sync only. Returns (stalls, stalls during
/// which the executor ran). A blocked executor never advances the counter:
/// after a generous bound the sync is released anyway, so the test fails
/// instead of hanging.
pub fn watchdog(
    sim: SimStorage,
    counter: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, usize)> {
    sim.stall_syncs(true);
    std::thread::spawn(move || {
        let (mut stalls, mut ran) = (0, 0);
        loop {
            eventually(Duration::from_secs(20), || {
                sim.stalled_syncs() > 0 || done.load(Ordering::Acquire)
            });
            if sim.stalled_syncs() == 0 {
                break;
            }
            stalls += 1;
            let at = counter.load(Ordering::Acquire);
            if eventually(Duration::from_secs(20), || {
                counter.load(Ordering::Acquire) >= at + 1000
            }) {
                ran += 1;
            }
            sim.release_stalled_syncs();
        }
        sim.stall_syncs(false);
        (stalls, ran)
    })
}

//! The async journal does no file I/O on the executor and holds no thread
//! while it waits for a sync: with a current-thread runtime and a disk whose
//! syncs stall, other tasks keep running while `run_async` (a durable
//! `never_repeat` intent), `checkpoint_async`, `approval_async` and
//! `commit_async` wait; an async reconcile probe decides an in-doubt effect.
//! Power loss under the async API is covered by `tests/crash_units.rs`.
#![cfg(feature = "tokio")]

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwal::journal::{
    Approval, Effect, EffectCtx, Error, Journal, JournalOptions, Probe, UnitState,
};
use agentwal::log::storage::sim::CrashMode;
use agentwal::log::SimStorage;

const DIR: &str = "/sim/journal-async";

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn eventually(limit: Duration, cond: impl Fn() -> bool) -> bool {
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
fn watchdog(
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

#[test]
fn unit_steps_wait_for_a_stalled_disk_without_blocking_the_executor() {
    let sim = SimStorage::new();
    let j = Journal::open_with(
        Arc::new(sim.clone()),
        Path::new(DIR),
        JournalOptions::small(),
    )
    .unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let dog = watchdog(sim.clone(), counter.clone(), done.clone());
    current_thread().block_on(async {
        let ticker = {
            let (counter, done) = (counter.clone(), done.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::Acquire) {
                    counter.fetch_add(1, Ordering::AcqRel);
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut unit = j.begin_async("u1", "demo", &1).await.unwrap();
        let v: u32 = unit
            .run_async(Effect::never_repeat("charge"), |_ctx| async {
                Ok::<_, String>(7)
            })
            .await
            .unwrap();
        assert_eq!(v, 7);
        unit.checkpoint_async(&"half way").await.unwrap();
        assert_eq!(
            unit.approval_async("ship", &"parcel").await.unwrap(),
            Approval::Pending
        );
        unit.commit_async().await.unwrap();
        done.store(true, Ordering::Release);
        ticker.await.unwrap();
    });
    let (stalls, ran) = dog.join().unwrap();
    // At least: the never_repeat intent, the checkpoint, the approval
    // request, the commit.
    assert!(stalls >= 4, "{stalls} syncs stalled");
    assert_eq!(
        ran, stalls,
        "the executor kept running during every stalled sync of the unit"
    );
    drop(j);
    let j = Journal::open_with(
        Arc::new(sim.crash(CrashMode::DropUnsynced)),
        Path::new(DIR),
        JournalOptions::small(),
    )
    .unwrap();
    assert_eq!(j.unit_state("u1"), Some(UnitState::Committed));
}

#[test]
fn an_async_probe_reconciles_an_in_doubt_effect() {
    let sim = SimStorage::new();
    let j = Journal::open_with(
        Arc::new(sim.clone()),
        Path::new(DIR),
        JournalOptions::small(),
    )
    .unwrap();
    let mut unit = j.begin("u", "demo", &()).unwrap();
    // A power cut while the effect runs: its intent is durable, no outcome.
    let mut image = None;
    unit.run(
        Effect::reconcile("ticket", |_ctx: &EffectCtx| {
            Ok::<_, String>(Probe::NotHappened)
        }),
        |_ctx| {
            image = Some(sim.crash(CrashMode::DropUnsynced));
            Ok::<_, String>("T-1".to_string())
        },
    )
    .unwrap();
    drop((unit, j));
    let j = Journal::open_with(
        Arc::new(image.unwrap()),
        Path::new(DIR),
        JournalOptions::small(),
    )
    .unwrap();
    let mut unit = j.begin("u", "demo", &()).unwrap();
    // The sync API refuses an async probe before anything is written.
    let refused = unit.run(
        Effect::reconcile_async("ticket", |_ctx: EffectCtx| async {
            Ok::<_, String>(Probe::<String>::NotHappened)
        }),
        |_ctx| -> Result<String, String> { unreachable!("refused") },
    );
    assert!(
        matches!(refused, Err(Error::InvalidCall { .. })),
        "{refused:?}"
    );
    let probed = Arc::new(AtomicBool::new(false));
    let got: String = current_thread().block_on(async {
        let probed = probed.clone();
        unit.run_async(
            Effect::reconcile_async("ticket", move |ctx: EffectCtx| async move {
                tokio::task::yield_now().await;
                probed.store(true, Ordering::Release);
                assert_eq!(ctx.key(), "u/ticket/0");
                Ok::<_, String>(Probe::Happened("T-1".to_string()))
            }),
            |_ctx| async { Err::<String, String>("must not run: the probe found it".into()) },
        )
        .await
        .unwrap()
    });
    assert!(probed.load(Ordering::Acquire), "the async probe was asked");
    assert_eq!(got, "T-1");
    current_thread().block_on(unit.commit_async()).unwrap();
    assert_eq!(j.unit_state("u"), Some(UnitState::Committed));
}

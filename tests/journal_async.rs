//! The async journal and work queue do no file I/O on the executor and holds no thread
//! while it waits for a sync: with a current-thread runtime and a disk whose
//! syncs stall, other tasks keep running while `run_async` (a durable
//! `never_repeat` intent), `checkpoint_async`, `approval_async` and
//! `commit_async` wait, and while `WorkQueue::enqueue_async`, `claim_async`,
//! `ack_async` wait; an async reconcile probe decides an in-doubt effect.
//! Power loss under the async API is covered by `tests/crash_units.rs`.
#![cfg(feature = "tokio")]

mod async_support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use async_support::{current_thread, watchdog};

use agentwal::journal::{
    Approval, Effect, EffectCtx, Error, Journal, JournalOptions, Probe, UnitState,
};
use agentwal::log::storage::sim::CrashMode;
use agentwal::log::SimStorage;

const DIR: &str = "/sim/journal-async";

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

#[test]
fn queue_operations_wait_for_a_stalled_disk_without_blocking_the_executor() {
    use agentwal::queue::{QueueOptions, WorkQueue};
    let sim = SimStorage::new();
    let q = WorkQueue::open_with(Arc::new(sim.clone()), DIR, QueueOptions::default()).unwrap();
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
        let id = q.enqueue_async(b"job".to_vec()).await.unwrap();
        let c = q
            .claim_async("w1")
            .await
            .unwrap()
            .expect("the item is ready");
        assert_eq!(c.id, id);
        q.ack_async(&c).await.unwrap();
        done.store(true, Ordering::Release);
        ticker.await.unwrap();
    });
    let (stalls, ran) = dog.join().unwrap();
    assert!(stalls >= 3, "{stalls} syncs stalled (enqueue, claim, ack)");
    assert_eq!(
        ran, stalls,
        "the executor kept running during every stalled sync"
    );
    drop(q);
    let q = WorkQueue::open_with(
        Arc::new(sim.crash(CrashMode::DropUnsynced)),
        DIR,
        QueueOptions::default(),
    )
    .unwrap();
    assert_eq!(q.stats().acked_total, 1, "the acknowledged ack survived");
}

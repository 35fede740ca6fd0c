//! The durable work queue: claim/ack/nack semantics, leases, dead letters,
//! drain, compaction, the read-only view, and power loss at every write
//! boundary of a claim/ack workload.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agentwal::log::storage::sim::CrashMode;
use agentwal::log::{LogOptions, LogReader, SimStorage};
use agentwal::queue::Error;
use agentwal::queue::{
    queue_dir, queue_view, Claimed, ItemState, ManualClock, NackOutcome, QueueOptions, WorkQueue,
};

fn opts(clock: &Arc<ManualClock>) -> QueueOptions {
    QueueOptions {
        max_attempts: 3,
        lease: Duration::from_secs(10),
        compact_after_records: None,
        log: LogOptions {
            segment_size: 64 << 10,
            max_record_bytes: 16 << 10,
            ..LogOptions::default()
        },
        clock: clock.clone(),
    }
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(1_000_000))
}

#[test]
fn claim_ack_nack_delay_and_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let q = WorkQueue::open(dir.path(), opts(&c)).unwrap();
    let a = q.enqueue(b"a").unwrap();
    let b = q.enqueue_json(&serde_json::json!({"to": "bob"})).unwrap();
    assert_eq!((a, b), (1, 2));

    let ca = q.claim("w1").unwrap().unwrap();
    assert_eq!(
        (ca.id, ca.attempt, ca.payload.as_slice()),
        (a, 1, &b"a"[..])
    );
    let cb = q.claim("w2").unwrap().unwrap();
    let v: serde_json::Value = cb.json().unwrap();
    assert_eq!(v["to"], "bob");
    assert!(q.claim("w3").unwrap().is_none(), "both items are leased");

    q.ack(&ca).unwrap();
    assert!(
        matches!(q.ack(&ca), Err(Error::LeaseLost { .. })),
        "second ack refused"
    );

    // Retry after a delay: not claimable before it.
    assert_eq!(
        q.nack(&cb, Duration::from_secs(30), "smtp 451").unwrap(),
        NackOutcome::Retry
    );
    assert!(q.claim("w1").unwrap().is_none());
    c.advance(Duration::from_secs(31));
    let cb2 = q.claim("w1").unwrap().unwrap();
    assert_eq!((cb2.id, cb2.attempt), (b, 2));
    assert_eq!(q.get(b).unwrap().last_error.as_deref(), Some("smtp 451"));
    assert_eq!(
        q.nack(&cb2, Duration::ZERO, "again").unwrap(),
        NackOutcome::Retry
    );
    let cb3 = q.claim("w1").unwrap().unwrap();
    assert_eq!(cb3.attempt, 3);
    assert_eq!(
        q.nack(&cb3, Duration::ZERO, "final").unwrap(),
        NackOutcome::DeadLettered
    );
    assert!(
        q.claim("w1").unwrap().is_none(),
        "dead letters are not handed out"
    );

    let item = q.get(b).unwrap();
    assert_eq!(
        (item.state, item.attempts, item.last_error.as_deref()),
        (ItemState::DeadLettered, 3, Some("final"))
    );
    let s = q.stats();
    assert_eq!(
        (s.pending, s.in_flight, s.dead_lettered, s.acked_total),
        (0, 0, 1, 1)
    );
    assert_eq!(
        q.payload(b).unwrap(),
        serde_json::to_vec(&serde_json::json!({"to": "bob"})).unwrap()
    );

    // Same state after reopen.
    drop(q);
    let q = WorkQueue::open(dir.path(), opts(&c)).unwrap();
    assert_eq!(q.stats(), s);
    assert_eq!(q.get(b).unwrap(), item);
    assert!(q.get(a).is_none());
}

#[test]
fn bad_arguments_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let q = WorkQueue::open(dir.path(), opts(&c)).unwrap();
    assert!(matches!(q.claim(""), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        q.claim(&"w".repeat(300)),
        Err(Error::InvalidArgument(_))
    ));
    let big = vec![0u8; 20 << 10];
    assert!(
        matches!(q.enqueue(&big), Err(Error::Log(_))),
        "over the record limit"
    );
    assert_eq!(q.stats().pending, 0, "nothing was enqueued");
    let ghost = Claimed {
        id: 99,
        attempt: 1,
        worker: "w".into(),
        payload: vec![],
    };
    assert!(matches!(q.ack(&ghost), Err(Error::NotFound { id: 99 })));
    let mut o = opts(&c);
    o.max_attempts = 0;
    drop(q);
    assert!(matches!(
        WorkQueue::open(dir.path(), o),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn expired_lease_is_reclaimed_and_the_old_claim_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let q = WorkQueue::open(dir.path(), opts(&c)).unwrap();
    q.enqueue(b"x").unwrap();
    let first = q.claim("slow").unwrap().unwrap();
    assert!(q.claim("fast").unwrap().is_none());
    c.advance(Duration::from_secs(11));
    let second = q.claim("fast").unwrap().unwrap();
    assert_eq!((second.id, second.attempt), (first.id, 2));
    let err = q.ack(&first).unwrap_err();
    assert!(matches!(err, Error::LeaseLost { attempt: 1, .. }), "{err}");
    assert!(err.to_string().contains("fast"), "{err}");
    q.ack(&second).unwrap();
    assert_eq!(q.stats().acked_total, 1);
}

#[test]
fn expired_lease_on_the_last_attempt_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let mut o = opts(&c);
    o.max_attempts = 1;
    let q = WorkQueue::open(dir.path(), o).unwrap();
    let id = q.enqueue(b"x").unwrap();
    q.claim("w").unwrap().unwrap();
    c.advance(Duration::from_secs(11));
    assert!(q.claim("w2").unwrap().is_none());
    let item = q.get(id).unwrap();
    assert_eq!(item.state, ItemState::DeadLettered);
    assert!(item
        .last_error
        .unwrap()
        .contains("lease of worker w expired"));
}

#[test]
fn reopen_requeues_in_flight_items_of_the_previous_owner() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let mut o = opts(&c);
    o.max_attempts = 2;
    let q = WorkQueue::open(dir.path(), o.clone()).unwrap();
    for p in [b"1", b"2", b"3"] {
        q.enqueue(p).unwrap();
    }
    let one = q.claim("w").unwrap().unwrap();
    q.claim("w").unwrap().unwrap();
    // Item 1 already failed once, so this claim is its last attempt.
    q.nack(&one, Duration::ZERO, "first").unwrap();
    let one = q.claim("w").unwrap().unwrap();
    assert_eq!((one.id, one.attempt), (1, 2));
    drop(q); // the owner "crashes" with items 1 and 2 in flight

    let q = WorkQueue::open(dir.path(), o).unwrap();
    assert_eq!(q.open_report().requeued, vec![2]);
    assert_eq!(q.open_report().dead_lettered, vec![1]);
    let again = q.claim("w2").unwrap().unwrap();
    assert_eq!(
        (again.id, again.attempt),
        (2, 2),
        "the crashed claim counted"
    );
    let next = q.claim("w2").unwrap().unwrap();
    assert_eq!((next.id, next.attempt), (3, 1));
    assert_eq!(q.get(1).unwrap().state, ItemState::DeadLettered);
}

#[test]
fn drain_finishes_claimed_items_within_the_timeout_and_releases_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let q = WorkQueue::open(dir.path(), opts(&c)).unwrap();
    for i in 0..5u8 {
        q.enqueue(&[i]).unwrap();
    }
    let quick = q.claim("quick").unwrap().unwrap();
    let stuck = q.claim("stuck").unwrap().unwrap();
    let q2 = q.clone();
    let worker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        q2.ack(&quick)
    });
    let report = q.drain(Duration::from_millis(500)).unwrap();
    worker.join().unwrap().unwrap();
    assert_eq!(report.finished, 1);
    assert_eq!(report.released, vec![stuck.id]);
    assert_eq!(report.pending, 4);
    assert!(report.timed_out);
    assert!(matches!(q.enqueue(b"late"), Err(Error::Draining)));
    assert!(matches!(q.claim("w"), Err(Error::Draining)));
    assert!(matches!(q.ack(&stuck), Err(Error::LeaseLost { .. })));
    drop(q);

    let q = WorkQueue::open(dir.path(), opts(&c)).unwrap();
    assert!(
        q.open_report().requeued.is_empty(),
        "drain left nothing in flight"
    );
    let s = q.stats();
    assert_eq!((s.pending, s.in_flight, s.acked_total), (4, 0, 1));
    let again = q.claim("w").unwrap().unwrap();
    assert_eq!((again.id, again.attempt), (stuck.id, 2));
}

#[test]
fn drain_with_nothing_in_flight_returns_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let q = WorkQueue::open(dir.path(), opts(&c)).unwrap();
    q.enqueue(b"x").unwrap();
    let r = q.drain(Duration::from_secs(60)).unwrap();
    assert_eq!(
        (r.finished, r.released.len(), r.pending, r.timed_out),
        (0, 0, 1, false)
    );
}

#[test]
fn compaction_bounds_the_log_and_keeps_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let mut o = opts(&c);
    o.compact_after_records = Some(50);
    let q = WorkQueue::open(dir.path(), o.clone()).unwrap();
    let payload = vec![7u8; 1000];
    for _ in 0..400 {
        q.enqueue(&payload).unwrap();
        let job = q.claim("w").unwrap().unwrap();
        if job.id.is_multiple_of(10) {
            q.nack(&job, Duration::ZERO, "keep me").unwrap();
        } else {
            q.ack(&job).unwrap();
        }
    }
    // 400 KB of enqueues went through 64 KiB segments: old ones were dropped.
    assert!(
        q.log().segment_count() <= 3,
        "{} segments",
        q.log().segment_count()
    );
    assert!(q.log().snapshot_lsn() > 0);
    let before = (q.stats(), q.list());
    drop(q);
    let q = WorkQueue::open(dir.path(), o).unwrap();
    assert_eq!((q.stats(), q.list()), before);
    let s = q.stats();
    assert_eq!(
        s.acked_total + s.pending + s.in_flight + s.dead_lettered,
        400
    );
    assert!(s.acked_total >= 300, "{s:?}");
}

#[test]
fn the_read_only_view_sees_every_state_beside_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let mut o = opts(&c);
    o.max_attempts = 1;
    let q = WorkQueue::open(dir.path(), o).unwrap();
    for _ in 0..4 {
        q.enqueue(b"x").unwrap();
    }
    let a = q.claim("w-a").unwrap().unwrap();
    q.ack(&a).unwrap();
    let b = q.claim("w-b").unwrap().unwrap();
    q.nack(&b, Duration::ZERO, "broken input").unwrap();
    let _c = q.claim("w-c").unwrap().unwrap();

    // The owner is still running: read without a lock.
    let reader = LogReader::open(queue_dir(dir.path())).unwrap();
    let view = queue_view(&reader).unwrap();
    let got: Vec<_> = view
        .items
        .iter()
        .map(|i| {
            (
                i.id,
                i.state,
                i.attempts,
                i.worker.clone(),
                i.last_error.clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, ItemState::Acked, 1, Some("w-a".to_string()), None),
            (
                2,
                ItemState::DeadLettered,
                1,
                None,
                Some("broken input".to_string())
            ),
            (3, ItemState::InFlight, 1, Some("w-c".to_string()), None),
            (4, ItemState::Pending, 0, None, None),
        ]
    );
    let json = serde_json::to_value(&view).unwrap();
    assert_eq!(json["items"][1]["state"], "dead_lettered");
    assert_eq!(json["items"][2]["state"], "in_flight");
    assert_eq!(json["items"][0]["state"], "acked");
}

#[test]
fn concurrent_workers_ack_every_item_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let q = WorkQueue::open(dir.path(), opts(&c)).unwrap();
    for i in 0..200u32 {
        q.enqueue(&i.to_le_bytes()).unwrap();
    }
    let handles: Vec<_> = (0..4)
        .map(|w| {
            let q = q.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                while let Some(job) = q.claim(&format!("w{w}")).unwrap() {
                    q.ack(&job).unwrap();
                    mine.push(job.id);
                }
                mine
            })
        })
        .collect();
    let mut all: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (1..=200).collect::<Vec<_>>());
    assert_eq!(q.stats().acked_total, 200);
}

// ---------------------------------------------------------------------------
// Power loss at every write boundary.

/// What the workload knew for sure when the storage halted.
#[derive(Default, Debug)]
struct Model {
    /// Ids whose enqueue returned Ok.
    enqueued: BTreeSet<u64>,
    /// Ids whose ack returned Ok.
    acked: BTreeSet<u64>,
    /// Claims that returned Ok, per id.
    claims: BTreeMap<u64, u32>,
    /// The operation that failed (its record may or may not have survived).
    uncertain: Option<&'static str>,
}

const SETUP_ITEMS: u64 = 4;

/// Claims, acks and nacks (and enqueues more) until done or the storage halts.
fn workload(q: &WorkQueue, m: &mut Model) {
    let mut step = 0u32;
    let mut next_extra = SETUP_ITEMS + 1;
    loop {
        step += 1;
        if step.is_multiple_of(4) && next_extra <= SETUP_ITEMS + 2 {
            match q.enqueue(b"extra") {
                Ok(id) => {
                    assert_eq!(id, next_extra);
                    m.enqueued.insert(id);
                    next_extra += 1;
                }
                Err(_) => return m.uncertain = Some("enqueue"),
            }
            continue;
        }
        let job = match q.claim("w") {
            Ok(Some(j)) => j,
            Ok(None) => return,
            Err(_) => return m.uncertain = Some("claim"),
        };
        *m.claims.entry(job.id).or_default() += 1;
        assert_eq!(job.attempt, m.claims[&job.id], "attempt of item {}", job.id);
        // Odd ids fail their first attempt.
        if job.id % 2 == 1 && job.attempt == 1 {
            if q.nack(&job, Duration::ZERO, "first try fails").is_err() {
                return m.uncertain = Some("nack");
            }
        } else {
            match q.ack(&job) {
                Ok(()) => {
                    m.acked.insert(job.id);
                }
                Err(_) => return m.uncertain = Some("ack"),
            }
        }
    }
}

fn sim_opts(clock: &Arc<ManualClock>) -> QueueOptions {
    let mut o = opts(clock);
    o.max_attempts = 5;
    o.log.segment_size = 4096; // rotations happen inside the workload too
    o.log.max_record_bytes = 1024;
    o
}

fn check_after_crash(
    storage: SimStorage,
    dir: &Path,
    m: &Model,
    clock: &Arc<ManualClock>,
    label: &str,
) {
    let q = WorkQueue::open_with(Arc::new(storage), dir, sim_opts(clock))
        .unwrap_or_else(|e| panic!("{label}: reopen failed: {e}"));
    let live: BTreeMap<u64, _> = q.list().into_iter().map(|i| (i.id, i)).collect();
    for id in &m.enqueued {
        let acked = !live.contains_key(id);
        if m.acked.contains(id) {
            assert!(
                acked,
                "{label}: item {id} was acked but came back: {:?}",
                live[id]
            );
        } else if acked {
            assert!(
                m.uncertain == Some("ack"),
                "{label}: item {id} vanished without an ack (model {m:?})"
            );
        }
    }
    for (id, item) in &live {
        assert!(
            m.enqueued.contains(id) || m.uncertain == Some("enqueue"),
            "{label}: unknown item {id}"
        );
        assert_ne!(
            item.state,
            ItemState::InFlight,
            "{label}: reopen must re-queue item {id}"
        );
        assert_ne!(
            item.state,
            ItemState::DeadLettered,
            "{label}: item {id} dead-lettered early"
        );
        let claimed = m.claims.get(id).copied().unwrap_or(0);
        let extra = u32::from(m.uncertain == Some("claim"));
        assert!(
            item.attempts >= claimed && item.attempts <= claimed + extra,
            "{label}: item {id} has {} attempts, {claimed} claims returned (model {m:?})",
            item.attempts
        );
    }
    // Finish the work: every remaining item is acked once, none that was acked before.
    let mut done_now = BTreeSet::new();
    while let Some(job) = q.claim("after").unwrap() {
        assert!(
            !m.acked.contains(&job.id),
            "{label}: acked item {} handed out again",
            job.id
        );
        q.ack(&job).unwrap();
        assert!(
            done_now.insert(job.id),
            "{label}: item {} acked twice",
            job.id
        );
    }
    // Every item that exists (the uncertain enqueue only if it survived) ends acked exactly once.
    let survived_enqueue = live.keys().filter(|id| !m.enqueued.contains(id)).count() as u64;
    assert!(survived_enqueue <= 1, "{label}");
    let s = q.stats();
    assert_eq!(s.pending + s.in_flight + s.dead_lettered, 0, "{label}");
    assert_eq!(
        s.acked_total,
        m.enqueued.len() as u64 + survived_enqueue,
        "{label}: {s:?}"
    );
    assert!(m.acked.is_disjoint(&done_now), "{label}");
}

#[test]
fn power_loss_at_every_write_boundary_loses_nothing_and_never_acks_twice() {
    let dir = Path::new("/j");
    let c = clock();
    // Count the mutations of one complete run.
    let full = {
        let storage = SimStorage::new();
        let q = WorkQueue::open_with(Arc::new(storage.clone()), dir, sim_opts(&c)).unwrap();
        for _ in 0..SETUP_ITEMS {
            q.enqueue(b"setup").unwrap();
        }
        let before = storage.mutations();
        let mut m = Model::default();
        workload(&q, &mut m);
        assert!(m.uncertain.is_none());
        assert_eq!(m.acked.len() as u64, SETUP_ITEMS + 2);
        storage.mutations() - before
    };
    assert!(
        full > 20,
        "workload too small to be interesting: {full} mutations"
    );
    let mut cases = 0;
    for n in 0..=full {
        for seed in [n, n + 1000] {
            let storage = SimStorage::new();
            let q = WorkQueue::open_with(Arc::new(storage.clone()), dir, sim_opts(&c)).unwrap();
            let mut m = Model::default();
            for _ in 0..SETUP_ITEMS {
                m.enqueued.insert(q.enqueue(b"setup").unwrap());
            }
            storage.halt_after(n);
            workload(&q, &mut m);
            drop(q);
            let mode = if seed == n {
                CrashMode::Random(seed)
            } else {
                CrashMode::DropUnsynced
            };
            let label = format!("halt after {n}, {mode:?}");
            check_after_crash(storage.crash(mode), dir, &m, &c, &label);
            cases += 1;
        }
    }
    assert!(cases > 40);
}

#[test]
fn the_queue_lives_inside_a_journal_directory_without_disturbing_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let log = agentwal::log::Log::open(
        dir.path(),
        LogOptions {
            segment_size: 64 << 10,
            max_record_bytes: 16 << 10,
            ..LogOptions::default()
        },
    )
    .unwrap();
    log.append(b"journal record").unwrap();
    let q = WorkQueue::open(dir.path(), opts(&c)).unwrap();
    q.enqueue(b"job").unwrap();
    assert!(queue_dir(dir.path()).is_dir());
    // Both reopen, each with its own records.
    drop((log, q));
    let log = agentwal::log::Log::open(
        dir.path(),
        LogOptions {
            segment_size: 64 << 10,
            max_record_bytes: 16 << 10,
            ..LogOptions::default()
        },
    )
    .unwrap();
    let recs: Vec<_> = log
        .read_from(1)
        .unwrap()
        .map(|r| r.unwrap().payload().to_vec())
        .collect();
    assert_eq!(recs, vec![b"journal record".to_vec()]);
    let q = WorkQueue::open(dir.path(), opts(&c)).unwrap();
    assert_eq!(q.stats().pending, 1);
    // A second owner of the same queue is refused.
    assert!(matches!(
        WorkQueue::open(dir.path(), opts(&c)),
        Err(Error::Log(_))
    ));
}

#[tokio::test]
async fn async_calls_do_not_block_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let c = clock();
    let q = WorkQueue::open(dir.path(), opts(&c)).unwrap();
    let id = q.enqueue_async(b"a".to_vec()).await.unwrap();
    q.enqueue_async(b"b".to_vec()).await.unwrap();
    let job = q.claim_async("w").await.unwrap().unwrap();
    assert_eq!(job.id, id);
    q.ack_async(&job).await.unwrap();
    let job = q.claim_async("w").await.unwrap().unwrap();
    assert_eq!(
        q.nack_async(&job, Duration::ZERO, "x").await.unwrap(),
        NackOutcome::Retry
    );
    let r = q.drain_async(Duration::from_secs(1)).await.unwrap();
    assert_eq!((r.pending, r.timed_out), (1, false));
}

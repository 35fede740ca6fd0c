//! Checkpointed batches: resume at exactly the next item after an error, a
//! shutdown or a power loss at any write.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agentwal::journal::{Effect, Journal, JournalOptions, UnitState};
use agentwal::log::storage::sim::CrashMode;
use agentwal::log::SimStorage;
use agentwal::runtime::batch::{item_unit_id, run_batch, run_batch_units, BatchCursor};
use agentwal::runtime::{Error, Shutdown};

fn items(n: u64) -> Vec<u64> {
    (0..n).map(|i| i * 10).collect()
}

#[test]
fn an_item_error_stops_the_run_and_the_next_run_resumes_at_that_item() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), JournalOptions::small()).unwrap();
    let mut seen = Vec::new();
    let err = run_batch(&j, "b", items(10), None, |i, item| {
        if i == 6 {
            return Err(format!("item {item} is broken"));
        }
        seen.push(i);
        Ok(())
    })
    .unwrap_err();
    assert!(matches!(err, Error::BatchItem { index: 6, .. }), "{err}");
    assert!(err.to_string().contains("item 60 is broken"));
    assert_eq!(seen, (0..6).collect::<Vec<_>>());
    drop(j);

    let j = Journal::open(dir.path(), JournalOptions::small()).unwrap();
    let mut seen = Vec::new();
    let r = run_batch(&j, "b", items(10), None, |i, item| {
        assert_eq!(item, i * 10, "items line up with their index");
        seen.push(i);
        Ok::<_, String>(())
    })
    .unwrap();
    assert_eq!(seen, (6..10).collect::<Vec<_>>());
    assert_eq!(
        (r.resumed_at, r.processed, r.next, r.complete),
        (6, 4, 10, true)
    );

    // Complete: another run does nothing; other batches are independent.
    let r = run_batch(&j, "b", items(10), None, |_, _| Err("must not run")).unwrap();
    assert_eq!((r.processed, r.complete), (0, true));
    let r = run_batch(&j, "other", items(2), None, |_, _| Ok::<_, String>(())).unwrap();
    assert_eq!(r.processed, 2);
}

#[test]
fn shutdown_finishes_the_item_in_progress_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), JournalOptions::small()).unwrap();
    let shutdown = Shutdown::new(Duration::from_secs(5));
    let r = run_batch(&j, "b", items(10), Some(&shutdown), |i, _| {
        if i == 3 {
            shutdown.trigger(); // SIGTERM arrives while item 3 runs
        }
        Ok::<_, String>(())
    })
    .unwrap();
    assert_eq!(
        (r.processed, r.next, r.complete, r.stopped_by_shutdown),
        (4, 4, false, true)
    );
    assert_eq!(shutdown.outstanding_units(), 0);
    let mut seen = Vec::new();
    let r = run_batch(&j, "b", items(10), None, |i, _| {
        seen.push(i);
        Ok::<_, String>(())
    })
    .unwrap();
    assert_eq!(seen.first(), Some(&4), "resumes at exactly the next item");
    assert!(r.complete);
}

#[test]
fn the_cursor_is_one_small_record_per_item_and_cannot_move_back() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), JournalOptions::small()).unwrap();
    let mut c = BatchCursor::open(&j, "manual").unwrap();
    assert_eq!(c.position(), 0);
    let before = j.log().next_lsn();
    for _ in 0..5 {
        c.advance().unwrap();
    }
    assert_eq!(j.log().next_lsn() - before, 5, "one record per item");
    assert!(matches!(c.advance_to(2), Err(Error::InvalidArgument(_))));
    drop(c);
    let c = BatchCursor::open(&j, "manual").unwrap();
    assert_eq!((c.position(), c.resumed_at()), (5, 5));
    c.finish().unwrap();
    assert!(BatchCursor::open(&j, "manual").unwrap().is_finished());
}

#[test]
fn per_item_units_replay_recorded_effects_and_skip_committed_items() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), JournalOptions::small()).unwrap();
    let sends = RefCell::new(BTreeMap::<u64, u32>::new());
    let r = run_batch_units(&j, "u", items(5), None, |i, _, unit| {
        unit.run(Effect::retry_same_key("send"), |_| {
            *sends.borrow_mut().entry(i).or_default() += 1;
            Ok::<_, std::io::Error>(())
        })?;
        if i == 2 {
            // Fail after the effect completed: the unit stays incomplete.
            return Err(agentwal::journal::Error::InvalidCall {
                unit: unit.id().to_string(),
                reason: "simulated failure after the send".into(),
            });
        }
        Ok(())
    })
    .unwrap_err();
    assert!(matches!(r, Error::BatchItem { index: 2, .. }), "{r}");
    assert_eq!(
        j.unit_state(&item_unit_id("u", 2)),
        Some(UnitState::Incomplete)
    );
    let r = run_batch_units(&j, "u", items(5), None, |i, _, unit| {
        unit.run(Effect::retry_same_key("send"), |_| {
            *sends.borrow_mut().entry(i).or_default() += 1;
            Ok::<_, std::io::Error>(())
        })
        .map(|_| ())
    })
    .unwrap();
    assert_eq!((r.resumed_at, r.processed, r.complete), (2, 3, true));
    // Item 2's send was recorded before the failure: replayed, not re-sent.
    assert_eq!(
        sends.into_inner(),
        (0..5).map(|i| (i, 1)).collect::<BTreeMap<_, _>>()
    );
    for i in 0..5 {
        assert_eq!(
            j.unit_state(&item_unit_id("u", i)),
            Some(UnitState::Committed)
        );
    }
}

/// Power loss at every write of a 6-item batch: the rerun starts at the
/// first item whose checkpoint did not survive, never earlier than the last
/// acknowledged checkpoint, and never skips an item.
#[test]
fn power_loss_at_every_write_resumes_at_the_exact_next_item() {
    let dir = Path::new("/j");
    let opts = || {
        let mut o = JournalOptions::small();
        o.log.segment_size = 8192;
        o.log.max_record_bytes = 2048;
        o.max_payload_bytes = 1024;
        o
    };
    let full = {
        let s = SimStorage::new();
        let j = Journal::open_with(Arc::new(s.clone()), dir, opts()).unwrap();
        let before = s.mutations();
        run_batch(&j, "p", items(6), None, |_, _| Ok::<_, String>(())).unwrap();
        s.mutations() - before
    };
    assert!(full >= 6, "{full}");
    for n in 0..=full {
        let s = SimStorage::new();
        let j = Journal::open_with(Arc::new(s.clone()), dir, opts()).unwrap();
        s.halt_after(n);
        let done = RefCell::new(Vec::new());
        let _ = run_batch(&j, "p", items(6), None, |i, _| {
            done.borrow_mut().push(i);
            Ok::<_, String>(())
        });
        drop(j);
        let done = done.into_inner();
        let crashed = s.crash(CrashMode::Random(n));
        let j = Journal::open_with(Arc::new(crashed), dir, opts())
            .unwrap_or_else(|e| panic!("halt after {n}: reopen failed: {e}"));
        let mut again = Vec::new();
        let r = run_batch(&j, "p", items(6), None, |i, _| {
            again.push(i);
            Ok::<_, String>(())
        })
        .unwrap();
        assert!(r.complete, "halt after {n}");
        if r.resumed_at == u64::MAX {
            assert_eq!(
                done.len(),
                6,
                "halt after {n}: complete without doing every item"
            );
            continue;
        }
        let start = r.resumed_at;
        // Every item before `start` ran in the first run; the rerun covers the rest.
        assert!(
            start as usize <= done.len(),
            "halt after {n}: skipped items ({start} > {done:?})"
        );
        assert_eq!(again, (start..6).collect::<Vec<_>>(), "halt after {n}");
        // At most the item in progress at the crash runs twice.
        assert!(
            done.len() - start as usize <= 1,
            "halt after {n}: {done:?} then from {start}"
        );
    }
}

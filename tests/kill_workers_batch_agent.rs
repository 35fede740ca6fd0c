//! End to end with `--workers 4`: four units in flight at once over one
//! journal. SIGKILL at random moments, SIGTERM once, then re-run to
//! completion: every record committed exactly once, every message delivered,
//! re-sends only for sends in doubt at a kill (at most one per worker per
//! kill, none for a SIGTERM), always with the same key and payload.
#![cfg(feature = "tokio")]

mod agent_support;

use std::time::Duration;

use agentwal::journal::{JournalView, UnitState};
use agentwal::log::LogReader;

use agent_support::{
    assert_every_message_delivered, assert_every_record_committed_once, batch_agent, resends,
    signal, sink_by_key, KillRig,
};

const RECORDS: u32 = 2000;
const WORKERS: u32 = 4;

#[test]
fn four_workers_survive_sigkill_and_sigterm_committing_every_record_once() {
    let (records, workers) = (RECORDS.to_string(), WORKERS.to_string());
    let args = [
        "--records",
        &records,
        "--work-ms",
        "5",
        "--workers",
        &workers,
    ];
    let mut rig = KillRig::new(batch_agent(), &args);
    let kills = rig.kill_at_random(5, 80);
    let after_kills = resends(&sink_by_key(&rig.sink));
    assert!(
        after_kills <= kills * WORKERS as usize,
        "{after_kills} re-sends for {kills} kills of {WORKERS} workers"
    );

    // SIGTERM: the units in flight finish and commit, exit 0, no re-send
    // caused by it (a re-run finds nothing in doubt).
    let mut child = rig.command().spawn().unwrap();
    std::thread::sleep(Duration::from_millis(150 + rig.rng.below(300)));
    let termed = child.try_wait().unwrap().is_none();
    if termed {
        assert!(signal(&child, "TERM"));
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM run exited with {status}");
    if termed {
        let view = JournalView::load(&LogReader::open(&rig.journal).unwrap()).unwrap();
        assert_eq!(
            view.units_in(UnitState::Incomplete).count(),
            0,
            "a graceful stop leaves no unit half done"
        );
    }
    let before_final = resends(&sink_by_key(&rig.sink));

    // Run to completion.
    rig.run_to_completion();

    assert_every_record_committed_once(&rig.journal, RECORDS);
    let dups = resends(&assert_every_message_delivered(&rig.sink, RECORDS));
    assert_eq!(
        dups, before_final,
        "the runs after the kills re-sent nothing (SIGTERM and the final run)"
    );
    assert!(
        dups <= kills * WORKERS as usize,
        "{dups} re-sends for {kills} kills of {WORKERS} workers"
    );
}

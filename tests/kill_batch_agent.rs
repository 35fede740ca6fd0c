//! End to end: SIGKILL the demo agent at random moments, re-run it to
//! completion, and check the guarantees on the journal and on the sink:
//! every record committed exactly once, every message delivered, a re-send
//! only for an effect in doubt at a kill (at most one per kill), always with
//! the same idempotency key and payload.
#![cfg(feature = "tokio")]

mod agent_support;

use std::time::Instant;

use agent_support::{
    assert_every_message_delivered, assert_every_record_committed_once, batch_agent, resends,
    KillRig,
};

/// Enough work (>= 4 s at 2 ms a record) that six kills of at most 450 ms
/// each always land, however fast the disk is.
const RECORDS: u32 = 2000;

#[test]
fn sigkill_at_random_points_then_rerun_commits_every_record_exactly_once() {
    let started = Instant::now();
    let records = RECORDS.to_string();
    let mut rig = KillRig::new(batch_agent(), &["--records", &records, "--work-ms", "2"]);
    let kills = rig.kill_at_random(6, 50);
    rig.run_to_completion();

    // Journal: every record committed exactly once, nothing incomplete.
    assert_every_record_committed_once(&rig.journal, RECORDS);

    // Sink: each key at least once; duplicates only for in-doubt sends, at
    // most one per kill, always the same key with the same payload.
    let lines = assert_every_message_delivered(&rig.sink, RECORDS);
    let duplicates = resends(&lines);
    assert!(
        duplicates <= kills,
        "{duplicates} re-sends for {kills} kills"
    );
    // How long the kills took is printed, never asserted: CI machines are
    // shared and a timing assert would fail on a slow disk, not on a bug.
    eprintln!("kill_batch_agent: {kills} kills in {:?}", started.elapsed());
}

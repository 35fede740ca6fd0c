//! End to end with transient failures (`--fail-rate 0.3`): SIGKILL the demo
//! agent at random moments while its retry policy absorbs simulated 429s,
//! re-run it to completion, and check the guarantees on the journal and on
//! the sink:
//! every record committed exactly once, every message delivered, a re-send
//! only for an effect in doubt at a kill (at most one per kill), always with
//! the same idempotency key and payload.
#![cfg(feature = "tokio")]

mod agent_support;

use std::process::Stdio;

use agent_support::{
    assert_every_message_delivered, assert_every_record_committed_once, batch_agent, resends,
    KillRig,
};

/// Enough work (>= 4 s at 2 ms a record) that six kills of at most 450 ms
/// each always land, however fast the disk is.
const RECORDS: u32 = 2000;

#[test]
fn sigkill_with_transient_failures_then_rerun_commits_every_record_exactly_once() {
    let records = RECORDS.to_string();
    let args = [
        "--records",
        &records,
        "--work-ms",
        "2",
        "--fail-rate",
        "0.3",
    ];
    let mut rig = KillRig::new(batch_agent(), &args);
    let kills = rig.kill_at_random(6, 50);

    // Run to completion; the summary counts the retries it absorbed.
    let out = rig.command().stdout(Stdio::piped()).output().unwrap();
    assert!(out.status.success(), "final run exited with {}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let retries: u64 = last
        .split(", ")
        .find_map(|p| p.strip_suffix(" retries (transient model failures absorbed)"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no retry count in the summary line {last:?}"));
    assert!(retries > 0, "{last}");

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
}

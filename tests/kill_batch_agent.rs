//! End to end: SIGKILL the demo agent at random moments, re-run it to
//! completion, and check the guarantees on the journal and on the sink:
//! every record committed exactly once, every message delivered, a re-send
//! only for an effect in doubt at a kill (at most one per kill), always with
//! the same idempotency key and payload.
#![cfg(feature = "tokio")]

mod agent_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use agent_support::{
    assert_every_message_delivered, assert_every_record_committed_once, batch_agent,
    kill_at_random, resends, Rng,
};

/// Enough work (>= 4 s at 2 ms a record) that six kills of at most 450 ms
/// each always land, however fast the disk is.
const RECORDS: u32 = 2000;

fn command(bin: &Path, journal: &Path, sink: &Path) -> Command {
    let mut c = Command::new(bin);
    c.arg("--journal")
        .arg(journal)
        .arg("--sink")
        .arg(sink)
        .args(["--records", &RECORDS.to_string(), "--work-ms", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

#[test]
fn sigkill_at_random_points_then_rerun_commits_every_record_exactly_once() {
    let started = Instant::now();
    let bin = batch_agent();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let sink = dir.path().join("sink.txt");
    let mut rng = Rng::from_env_or_clock();

    let kills = kill_at_random(6, 50, &mut rng, || command(&bin, &journal, &sink));

    // Run to completion.
    let status = command(&bin, &journal, &sink).status().unwrap();
    assert!(status.success(), "final run exited with {status}");

    // Journal: every record committed exactly once, nothing incomplete.
    assert_every_record_committed_once(&journal, RECORDS);

    // Sink: each key at least once; duplicates only for in-doubt sends, at
    // most one per kill, always the same key with the same payload.
    let lines = assert_every_message_delivered(&sink, RECORDS);
    let duplicates = resends(&lines);
    assert!(
        duplicates <= kills,
        "{duplicates} re-sends for {kills} kills"
    );
    // How long the kills took is printed, never asserted: CI machines are
    // shared and a timing assert would fail on a slow disk, not on a bug.
    eprintln!("kill_batch_agent: {kills} kills in {:?}", started.elapsed());
}

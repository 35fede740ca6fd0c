//! End to end with transient failures (`--fail-rate 0.3`): SIGKILL the demo
//! agent at random moments while its retry policy absorbs simulated 429s,
//! re-run it to completion, and check the guarantees on the journal and on
//! the sink:
//! every record committed exactly once, every message delivered, a re-send
//! only for an effect in doubt at a kill (at most one per kill), always with
//! the same idempotency key and payload.
#![cfg(feature = "tokio")]

mod agent_support;

use std::path::Path;
use std::process::{Command, Stdio};

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
        .args(["--fail-rate", "0.3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

#[test]
fn sigkill_with_transient_failures_then_rerun_commits_every_record_exactly_once() {
    let bin = batch_agent();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let sink = dir.path().join("sink.txt");
    let mut rng = Rng::from_env_or_clock();

    let kills = kill_at_random(6, 50, &mut rng, || command(&bin, &journal, &sink));

    // Run to completion; the summary counts the retries it absorbed.
    let out = command(&bin, &journal, &sink)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
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
    assert_every_record_committed_once(&journal, RECORDS);

    // Sink: each key at least once; duplicates only for in-doubt sends, at
    // most one per kill, always the same key with the same payload.
    let lines = assert_every_message_delivered(&sink, RECORDS);
    let duplicates = resends(&lines);
    assert!(
        duplicates <= kills,
        "{duplicates} re-sends for {kills} kills"
    );
}

//! End to end with `--workers 4`: four units in flight at once over one
//! journal. SIGKILL at random moments, SIGTERM once, then re-run to
//! completion: every record committed exactly once, every message delivered,
//! re-sends only for sends in doubt at a kill (at most one per worker per
//! kill, none for a SIGTERM), always with the same key and payload.
#![cfg(feature = "tokio")]

mod agent_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use agentwal::journal::{JournalView, UnitState};
use agentwal::log::LogReader;

use agent_support::{
    assert_every_message_delivered, assert_every_record_committed_once, batch_agent,
    kill_at_random, resends, sink_by_key, Rng,
};

const RECORDS: u32 = 2000;
const WORKERS: u32 = 4;

fn command(bin: &Path, journal: &Path, sink: &Path) -> Command {
    let mut c = Command::new(bin);
    c.arg("--journal")
        .arg(journal)
        .arg("--sink")
        .arg(sink)
        .args(["--records", &RECORDS.to_string(), "--work-ms", "5"])
        .args(["--workers", &WORKERS.to_string()])
        .env_remove("SHUTDOWN_TIMEOUT")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

#[test]
fn four_workers_survive_sigkill_and_sigterm_committing_every_record_once() {
    let bin = batch_agent();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let sink = dir.path().join("sink.txt");
    let mut rng = Rng::from_env_or_clock();

    let kills = kill_at_random(5, 80, &mut rng, || command(&bin, &journal, &sink));
    let after_kills = resends(&sink_by_key(&sink));
    assert!(
        after_kills <= kills * WORKERS as usize,
        "{after_kills} re-sends for {kills} kills of {WORKERS} workers"
    );

    // SIGTERM: the units in flight finish and commit, exit 0, no re-send
    // caused by it (a re-run finds nothing in doubt).
    let mut child = command(&bin, &journal, &sink).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(150 + rng.next() % 300));
    let termed = child.try_wait().unwrap().is_none();
    if termed {
        let pid = child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM run exited with {status}");
    if termed {
        let view = JournalView::load(&LogReader::open(&journal).unwrap()).unwrap();
        assert_eq!(
            view.units_in(UnitState::Incomplete).count(),
            0,
            "a graceful stop leaves no unit half done"
        );
    }
    let before_final = resends(&sink_by_key(&sink));

    // Run to completion.
    let status = command(&bin, &journal, &sink).status().unwrap();
    assert!(status.success(), "final run exited with {status}");

    assert_every_record_committed_once(&journal, RECORDS);
    let dups = resends(&assert_every_message_delivered(&sink, RECORDS));
    assert_eq!(
        dups, before_final,
        "the runs after the kills re-sent nothing (SIGTERM and the final run)"
    );
    assert!(
        dups <= kills * WORKERS as usize,
        "{dups} re-sends for {kills} kills of {WORKERS} workers"
    );
}

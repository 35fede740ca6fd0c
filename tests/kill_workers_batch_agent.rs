//! End to end with `--workers 4`: four units in flight at once over one
//! journal. SIGKILL at random moments, SIGTERM once, then re-run to
//! completion: every record committed exactly once, every message delivered,
//! re-sends only for sends in doubt at a kill (at most one per worker per
//! kill, none for a SIGTERM), always with the same key and payload.
#![cfg(all(feature = "cli", feature = "tokio"))]

mod agent_support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use agent_support::batch_agent;
use agentwal::journal::{JournalView, UnitState};
use agentwal::log::LogReader;

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

/// splitmix64, seeded from the clock (printed so a failure can be replayed).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn sink_lines(sink: &Path) -> HashMap<String, Vec<String>> {
    let text = std::fs::read_to_string(sink).unwrap_or_default();
    let mut lines: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines() {
        let (key, payload) = line.split_once('\t').expect("key<TAB>payload");
        lines
            .entry(key.to_string())
            .or_default()
            .push(payload.to_string());
    }
    lines
}

fn duplicates(lines: &HashMap<String, Vec<String>>) -> usize {
    lines.values().map(|v| v.len() - 1).sum()
}

#[test]
fn four_workers_survive_sigkill_and_sigterm_committing_every_record_once() {
    let bin = batch_agent();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let sink = dir.path().join("sink.txt");
    let seed = std::env::var("KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("KILL_SEED={seed}");
    let mut rng = Rng(seed);

    let mut kills = 0;
    for _ in 0..5 {
        let mut child = command(&bin, &journal, &sink).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(80 + rng.next() % 400));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(
        kills >= 3,
        "only {kills} kills landed; the agent ran too fast"
    );
    let after_kills = duplicates(&sink_lines(&sink));
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
    let before_final = duplicates(&sink_lines(&sink));

    // Run to completion.
    let status = command(&bin, &journal, &sink).status().unwrap();
    assert!(status.success(), "final run exited with {status}");

    let view = JournalView::load(&LogReader::open(&journal).unwrap()).unwrap();
    assert_eq!(view.units_in(UnitState::Incomplete).count(), 0);
    assert_eq!(view.aborted_total(), 0);
    assert_eq!(view.committed_total(), u64::from(RECORDS));
    for u in view.units_in(UnitState::Committed) {
        assert_eq!(u.effects_in_doubt(), 0);
    }

    let lines = sink_lines(&sink);
    for i in 0..RECORDS {
        let key = format!("record-{i:06}/send/1");
        let got = lines
            .get(&key)
            .unwrap_or_else(|| panic!("{key} never sent"));
        assert!(
            got.iter().all(|p| p == &got[0]),
            "{key} re-sent with another payload"
        );
    }
    assert_eq!(lines.len(), RECORDS as usize, "unexpected keys in the sink");
    let dups = duplicates(&lines);
    assert_eq!(
        dups, before_final,
        "the runs after the kills re-sent nothing (SIGTERM and the final run)"
    );
    assert!(
        dups <= kills * WORKERS as usize,
        "{dups} re-sends for {kills} kills of {WORKERS} workers"
    );
}

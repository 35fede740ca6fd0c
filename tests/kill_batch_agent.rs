//! End to end: SIGKILL the demo agent at random moments, re-run it to
//! completion, and check the guarantees on the journal and on the sink:
//! every record committed exactly once, every message delivered, a re-send
//! only for an effect in doubt at a kill (at most one per kill), always with
//! the same idempotency key and payload.
#![cfg(all(feature = "cli", feature = "tokio"))]

mod agent_support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::batch_agent;
use agentwal::journal::{JournalView, UnitState};
use agentwal::log::LogReader;

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

#[test]
fn sigkill_at_random_points_then_rerun_commits_every_record_exactly_once() {
    let started = Instant::now();
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
    for _ in 0..6 {
        let mut child = command(&bin, &journal, &sink).spawn().unwrap();
        let wait = Duration::from_millis(50 + rng.next() % 400);
        std::thread::sleep(wait);
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

    // Run to completion.
    let status = command(&bin, &journal, &sink).status().unwrap();
    assert!(status.success(), "final run exited with {status}");

    // Journal: every record committed exactly once, nothing incomplete.
    let view = JournalView::load(&LogReader::open(&journal).unwrap()).unwrap();
    assert_eq!(view.units_in(UnitState::Incomplete).count(), 0);
    assert_eq!(view.aborted_total(), 0);
    assert_eq!(view.committed_total(), u64::from(RECORDS));
    let mut seen = HashMap::new();
    for u in view.units_in(UnitState::Committed) {
        *seen.entry(u.id.clone()).or_insert(0) += 1;
        assert_eq!(u.effects_in_doubt(), 0);
    }
    for i in 0..RECORDS {
        let id = format!("record-{i:06}");
        assert!(
            seen.get(&id).copied().unwrap_or(0) <= 1,
            "{id} committed twice"
        );
    }

    // Sink: each key at least once; duplicates only for in-doubt sends, at
    // most one per kill, always the same key with the same payload.
    let text = std::fs::read_to_string(&sink).unwrap();
    let mut lines: HashMap<String, Vec<String>> = HashMap::new();
    for line in text.lines() {
        let (key, payload) = line.split_once('\t').expect("key<TAB>payload");
        lines
            .entry(key.to_string())
            .or_default()
            .push(payload.to_string());
    }
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
    let duplicates: usize = lines.values().map(|v| v.len() - 1).sum();
    assert!(
        duplicates <= kills,
        "{duplicates} re-sends for {kills} kills"
    );
    // How long the kills took is printed, never asserted: CI machines are
    // shared and a timing assert would fail on a slow disk, not on a bug.
    eprintln!("kill_batch_agent: {kills} kills in {:?}", started.elapsed());
}

//! End to end: SIGTERM / SIGINT the demo agent at random moments. Each stop
//! must finish the unit in progress and exit 0 (SIGTERM) or 130 (SIGINT)
//! within the budget; the re-run resumes at the next record with no unit
//! redone and no message sent twice. A second signal exits at once and the
//! journal still opens, replays and completes.
#![cfg(feature = "tokio")]

mod agent_support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use agent_support::{batch_agent, signal, sink_by_key, stdout_lines, Rng};
use agentwal::journal::{JournalView, UnitState};
use agentwal::log::LogReader;

const RECORDS: u32 = 300;
/// Generous: the test checks the exit happens within the agent's budget.
const BUDGET_SECS: u64 = 10;

struct Agent {
    child: Child,
    lines: Receiver<String>,
    out: Vec<String>,
}

fn start(bin: &Path, dir: &Path, work_ms: u64, budget: u64) -> Agent {
    let mut child = Command::new(bin)
        .arg("--journal")
        .arg(dir.join("journal"))
        .arg("--sink")
        .arg(dir.join("sink.txt"))
        .args([
            "--records",
            &RECORDS.to_string(),
            "--work-ms",
            &work_ms.to_string(),
        ])
        .env("SHUTDOWN_TIMEOUT", budget.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn batch_agent");
    let (rx, _) = stdout_lines(&mut child);
    let mut a = Agent {
        child,
        lines: rx,
        out: Vec::new(),
    };
    // The first line is printed after the signal handlers are installed.
    a.wait_line("batch_agent:");
    a
}

impl Agent {
    fn wait_line(&mut self, prefix: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no line starting with {prefix:?}; got {:?}", self.out));
            self.out.push(line.clone());
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// Sends a signal; false if the process had already exited.
    fn signal(&mut self, sig: &str) -> bool {
        self.child.try_wait().unwrap().is_none() && signal(&self.child, sig)
    }

    /// Waits for the exit; returns (code, time taken, all output).
    fn wait(mut self, limit: Duration) -> (i32, Duration, Vec<String>) {
        let t = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if t.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "batch_agent did not exit within {limit:?}; output {:?}",
                    self.out
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let took = t.elapsed();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.out.push(l);
        }
        let code = status.code().unwrap_or_else(|| {
            panic!(
                "killed by a signal, not a clean exit: {status:?}; output {:?}",
                self.out
            )
        });
        (code, took, self.out)
    }
}

/// "… (resumed from record X, K units resumed mid-way)" → K
fn resumed_mid_way(out: &[String]) -> u64 {
    let line = out
        .iter()
        .find(|l| l.starts_with("records done:"))
        .unwrap_or_else(|| panic!("no summary in {out:?}"));
    let before = line.split(" units resumed mid-way").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

/// "messages sent: S (re-sends: R)" → R
fn resends(out: &[String]) -> u64 {
    let line = out
        .iter()
        .find(|l| l.starts_with("messages sent:"))
        .unwrap();
    line.rsplit("re-sends: ")
        .next()
        .unwrap()
        .trim_end_matches(')')
        .parse()
        .unwrap()
}

/// The sink's deliveries by key.
fn sink_counts(dir: &Path) -> HashMap<String, Vec<String>> {
    sink_by_key(&dir.join("sink.txt"))
}

fn all_committed(dir: &Path) {
    let reader = LogReader::open(dir.join("journal")).unwrap();
    let view = JournalView::load(&reader).unwrap();
    assert!(
        view.units.iter().all(|u| u.state == UnitState::Committed),
        "every unit committed"
    );
    let listed = view
        .units
        .iter()
        .filter(|u| u.id.starts_with("record-"))
        .count() as u64;
    assert_eq!(listed + view.compacted_committed, u64::from(RECORDS));
}

#[test]
fn sigterm_and_sigint_at_random_moments_lose_nothing_and_repeat_nothing() {
    let bin = batch_agent();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::from_env_or("SIGTERM_SEED", u64::from(std::process::id()));
    let mut stops = 0;
    for round in 0..6 {
        let (sig, want) = if round % 2 == 0 {
            ("TERM", 0)
        } else {
            ("INT", 130)
        };
        let mut agent = start(&bin, dir.path(), 3, BUDGET_SECS);
        std::thread::sleep(Duration::from_millis(rng.below(250)));
        let _ = agent.signal(sig);
        let (code, took, out) = agent.wait(Duration::from_secs(BUDGET_SECS + 20));
        if out.iter().any(|l| l.starts_with("shutdown (")) {
            stops += 1;
            assert_eq!(code, want, "SIG{sig} exit code; output {out:?}");
        } else {
            // Finished the whole batch before the signal landed.
            assert_eq!(code, 0, "{out:?}");
        }
        assert!(
            took < Duration::from_secs(BUDGET_SECS),
            "exit took {took:?}"
        );
        assert_eq!(
            resumed_mid_way(&out),
            0,
            "a graceful stop leaves no unit half done: {out:?}"
        );
        assert_eq!(resends(&out), 0, "{out:?}");
    }
    assert!(
        stops >= 4,
        "signals should have interrupted most runs (stops = {stops})"
    );

    // Finish the batch.
    let agent = start(&bin, dir.path(), 0, BUDGET_SECS);
    let (code, _, out) = agent.wait(Duration::from_secs(120));
    assert_eq!(code, 0, "{out:?}");
    assert_eq!(resumed_mid_way(&out), 0);
    assert_eq!(resends(&out), 0);
    let counts = sink_counts(dir.path());
    assert_eq!(counts.len(), RECORDS as usize, "every message sent");
    let dups: Vec<_> = counts.iter().filter(|(_, v)| v.len() != 1).collect();
    assert!(dups.is_empty(), "keys sent more than once: {dups:?}");
    all_committed(dir.path());
}

#[test]
fn second_signal_exits_at_once_and_the_journal_replays() {
    let bin = batch_agent();
    let dir = tempfile::tempdir().unwrap();
    // Long units and a long budget: only the second signal can end it quickly.
    let mut agent = start(&bin, dir.path(), 20_000, 60);
    std::thread::sleep(Duration::from_millis(300));
    assert!(agent.signal("INT"));
    std::thread::sleep(Duration::from_millis(200));
    assert!(agent.signal("INT"));
    let (code, took, out) = agent.wait(Duration::from_secs(15));
    assert_eq!(code, 130, "{out:?}");
    assert!(took < Duration::from_secs(15));
    assert!(
        !out.iter().any(|l| l.starts_with("records done:")),
        "it did not finish gracefully"
    );

    // The cut unit is incomplete; the journal opens and the re-run completes it.
    let agent = start(&bin, dir.path(), 0, BUDGET_SECS);
    let (code, _, out) = agent.wait(Duration::from_secs(120));
    assert_eq!(code, 0, "{out:?}");
    assert!(resumed_mid_way(&out) <= 1, "{out:?}");
    let counts = sink_counts(dir.path());
    assert_eq!(counts.len(), RECORDS as usize);
    assert!(
        counts.values().all(|v| v.len() == 1),
        "the cut unit had not sent yet: no re-send"
    );
    all_committed(dir.path());
}

//! `wal-inspect` on the demo agent: inspected while it runs (another process
//! appending), then after a SIGKILL, checked against the external truth (the
//! sink file of delivered messages), then after the resumed run.
#![cfg(feature = "tokio")]

mod agent_support;
mod inspect_support;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::batch_agent;
use inspect_support::*;
use serde_json::Value;

const RECORDS: u32 = 250;

fn agent(bin: &Path, journal: &Path, sink: &Path) -> Command {
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

/// Distinct idempotency keys of the sink's delivery lines.
fn sink_keys(sink: &Path) -> HashSet<String> {
    std::fs::read_to_string(sink)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('\t').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn inspect_a_killed_batch_agent_then_the_resumed_one() {
    let bin = batch_agent();
    let d = tempfile::tempdir().unwrap();
    let (journal, sink) = (d.path().join("journal"), d.path().join("sink.txt"));

    let mut child = agent(&bin, &journal, &sink).spawn().unwrap();
    let start = Instant::now();
    let mut inspected_live = 0;
    while sink_keys(&sink).len() < 40 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the agent made no progress"
        );
        if !segments_exist(&journal) {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        // Read-only commands while another process appends.
        let s = inspect_dir("summary", &journal, &["--json"]);
        assert_eq!(s.code, 0, "{s:?}");
        assert!(s.json()["corruption"].is_null(), "live: {}", s.stdout);
        assert!(s.json()["units"]["incomplete"].as_u64().unwrap() <= 1);
        assert_eq!(inspect_dir("verify", &journal, &[]).code, 0);
        inspected_live += 1;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(inspected_live > 0);

    let v = inspect_dir("summary", &journal, &["--json"]).json();
    assert!(v["corruption"].is_null(), "{v}");
    let committed = v["units"]["committed"].as_u64().unwrap();
    let incomplete = v["units"]["incomplete"].as_u64().unwrap();
    assert!(incomplete <= 1, "one unit at most was in progress: {v}");
    assert!(v["in_doubt_effects"].as_u64().unwrap() <= incomplete);
    assert_eq!(v["units"]["aborted"], 0);

    // Against the external truth: every committed unit delivered its
    // message, and a delivery of the interrupted unit may be there too.
    let delivered = sink_keys(&sink);
    let inc = inspect_dir("units", &journal, &["--state", "incomplete", "--json"]).json();
    let inc = inc.as_array().unwrap();
    assert_eq!(inc.len() as u64, incomplete);
    let mut interrupted_delivered = 0;
    for u in inc {
        let id = u["id"].as_str().unwrap();
        let show = inspect_dir("show", &journal, &[id, "--json"]);
        assert_eq!(show.code, 0, "{show:?}");
        let show = show.json();
        for e in show["effects"].as_array().unwrap() {
            let key = e["key"].as_str().unwrap();
            if e["name"] == "send" && delivered.contains(key) {
                interrupted_delivered += 1;
            }
            if e["in_doubt"] == true {
                let why = e["explanation"].as_str().unwrap();
                assert!(why.contains("no outcome"), "{why}");
                assert!(why.contains(&format!("with the same key {key}")), "{why}");
            }
        }
        let text = inspect_dir("show", &journal, &[id]).stdout;
        assert!(text.contains("INCOMPLETE"), "{text}");
    }
    assert_eq!(
        committed + interrupted_delivered,
        delivered.len() as u64,
        "committed units vs messages in the sink"
    );

    // Every delivered key is known to the journal as completed or in doubt.
    let keys = inspect_dir("keys", &journal, &["--json"]).json();
    let keys: Vec<&Value> = keys.as_array().unwrap().iter().collect();
    for k in &delivered {
        let kv = keys
            .iter()
            .find(|x| x["key"] == k.as_str())
            .expect("delivered key is journaled");
        assert!(
            kv["status"] == "completed" || kv["status"] == "in_doubt",
            "{kv}"
        );
    }

    let dry = inspect_dir("repair", &journal, &["--dry-run", "--json"]).json();
    assert_ne!(dry["action"], "refused", "{dry}");

    // Resume to the end: everything committed, nothing in doubt.
    let status = agent(&bin, &journal, &sink).status().unwrap();
    assert!(status.success());
    let v = inspect_dir("summary", &journal, &["--json"]).json();
    assert_eq!(v["units"]["committed"], u64::from(RECORDS), "{v}");
    assert_eq!(v["units"]["incomplete"], 0);
    assert_eq!(v["in_doubt_effects"], 0);
    assert_eq!(inspect_dir("verify", &journal, &[]).code, 0);
    assert_eq!(sink_keys(&sink).len(), RECORDS as usize);
}

fn segments_exist(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut r| {
        r.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "wal")))
    })
}

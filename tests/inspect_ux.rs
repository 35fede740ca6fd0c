//! `wal-inspect` for a person at 3 a.m. (issue 17): times are readable next
//! to every `at_ms` (which the JSON keeps), `summary` shows dead letters and
//! says how many units were compacted into the snapshot (so "317 unit(s)"
//! next to "1000 committed" explains itself), `show` explains an in-doubt
//! step from the journal's facts, never from guessing at the step's name,
//! and opening one journal twice in one process says so instead of blaming
//! "another owner" with our own pid.

mod agent_support;
mod inspect_support;

use std::time::Duration;

use agentwal::journal::{Effect, Journal, JournalOptions, JournalRecord, PolicyKind};
use agentwal::log::{Durability, Log};
use agentwal::queue::{QueueOptions, WorkQueue};
use inspect_support::inspect_dir;
use serde_json::Value;

fn commit_units(j: &Journal, from: u32, n: u32) {
    for i in from..from + n {
        let mut u = j.begin(&format!("u-{i:03}"), "job", &i).unwrap();
        u.run(Effect::retry_same_key("step"), |_| Ok::<_, String>(i))
            .unwrap();
        u.commit().unwrap();
    }
}

#[test]
fn summary_counts_compacted_units_and_dead_letters() {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    commit_units(&j, 0, 6);
    j.compact().unwrap();
    commit_units(&j, 6, 2);
    j.close().unwrap();
    let q = WorkQueue::open(
        d.path(),
        QueueOptions {
            max_attempts: 1,
            ..QueueOptions::default()
        },
    )
    .unwrap();
    q.enqueue(b"poison").unwrap();
    q.enqueue(b"fine").unwrap();
    let c = q.claim("w").unwrap().unwrap();
    q.nack(&c, Duration::ZERO, "boom").unwrap();
    q.close().unwrap();

    let s = inspect_dir("summary", d.path(), &["--json"]);
    assert_eq!(s.code, 0, "{s:?}");
    let v = s.json();
    assert_eq!(v["units"]["committed"], 8, "{v}");
    let compacted = v["units_compacted"]["committed"].as_u64().unwrap();
    assert!((1..=6).contains(&compacted), "{v}");
    assert_eq!(v["dead_letters"], 1, "{v}");
    assert_eq!(v["queue"]["pending"], 1, "{v}");
    assert_eq!(v["queue"]["dead_lettered"], 1, "{v}");

    let text = inspect_dir("summary", d.path(), &[]).stdout;
    assert!(text.contains("compacted into the snapshot"), "{text}");
    assert!(text.contains("dead letters       1"), "{text}");

    let units = inspect_dir("units", d.path(), &[]);
    let listed = 8 - compacted;
    assert!(
        units.stdout.contains(&format!(
            "{listed} unit(s) listed; {compacted} more finished unit(s)"
        )),
        "{}",
        units.stdout
    );
    // JSON stays the fixed array of rows.
    let rows = inspect_dir("units", d.path(), &["--json"]).json();
    assert_eq!(rows.as_array().unwrap().len() as u64, listed);
    // Only incomplete units asked for: nothing was compacted among them.
    let inc = inspect_dir("units", d.path(), &["--state", "incomplete"]);
    assert!(inc.stdout.contains("0 unit(s)\n"), "{}", inc.stdout);
}

#[test]
fn a_journal_without_a_queue_has_zero_dead_letters() {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    commit_units(&j, 0, 1);
    j.close().unwrap();
    let v = inspect_dir("summary", d.path(), &["--json"]).json();
    assert_eq!(v["dead_letters"], 0);
    assert!(v["queue"].is_null());
    assert!(v["units_compacted"]["committed"] == 0, "{v}");
}

#[test]
fn times_are_readable_next_to_at_ms_and_explanations_do_not_guess_from_names() {
    let d = tempfile::tempdir().unwrap();
    // Two units, each killed with one effect in doubt: a begin record and an
    // effect intent with no outcome (what a SIGKILL mid-effect leaves).
    let log = Log::open(d.path(), JournalOptions::small().log).unwrap();
    for name in ["send-email", "zq9"] {
        let unit = format!("u-{name}");
        let begin = JournalRecord::UnitBegin {
            unit: unit.clone(),
            kind: "job".into(),
            payload: serde_json::json!({}),
            at_ms: agentwal::inspect::time::now_ms() - 65_000,
        };
        log.append_with(begin.kind(), &begin.encode(), Durability::Durable)
            .unwrap();
        let intent = JournalRecord::EffectIntent {
            unit: unit.clone(),
            seq: 0,
            name: name.into(),
            key: format!("{unit}/{name}/0"),
            policy: PolicyKind::RetrySameKey,
            compensable: false,
        };
        log.append_with(intent.kind(), &intent.encode(), Durability::Durable)
            .unwrap();
    }
    log.close().unwrap();

    let sh = inspect_dir("show", d.path(), &["u-send-email", "--json"]);
    assert_eq!(sh.code, 0, "{sh:?}");
    let v = sh.json();
    let first = &v["history"][0];
    assert_eq!(first["type"], "unit_begin");
    let at_ms = first["record"]["at_ms"].as_u64().expect("at_ms kept");
    let at = first["at"].as_str().expect("at added");
    assert_eq!(at, agentwal::inspect::time::rfc3339(at_ms));
    assert_eq!(first["record"]["at"], at, "next to at_ms in the record too");
    assert!(first["age"].as_str().unwrap().starts_with("1m "), "{first}");
    let text = inspect_dir("show", d.path(), &["u-send-email"]).stdout;
    assert!(text.contains(&format!("time      began {at}")), "{text}");

    // dump keeps at_ms and adds at next to it.
    let lines = inspect_dir("dump", d.path(), &["--json"]).json_lines();
    let rec = &lines[0]["record"];
    assert!(rec["at_ms"].is_u64() && rec["at"].is_string(), "{rec}");

    // The explanation is the same whatever the step is called.
    let explain = |unit: &str, name: &str| -> Vec<String> {
        let v: Value = inspect_dir("show", d.path(), &[unit, "--json"]).json();
        v["effects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e["explanation"]
                    .as_str()
                    .unwrap()
                    .replace(name, "NAME")
                    .replace(unit, "UNIT")
                    .replace(|c: char| c.is_ascii_digit(), "")
            })
            .collect()
    };
    let a = explain("u-send-email", "send-email");
    let b = explain("u-zq9", "zq9");
    assert_eq!(a, b, "explanations must not depend on the step's name");
    assert!(a[0].contains("IN DOUBT"), "{a:?}");
    assert!(
        a.iter()
            .all(|e| !e.contains("message") && !e.contains("payment")),
        "{a:?}"
    );
}

#[test]
fn opening_a_journal_twice_in_one_process_says_so() {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    let err = Journal::open(d.path(), JournalOptions::small()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("already open in this process"), "{msg}");
    assert!(!msg.contains("another owner"), "{msg}");
    drop(j);
}

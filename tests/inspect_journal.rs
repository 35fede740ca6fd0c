//! `wal-inspect` on journals written by the journal layer: unit counts by
//! state, in-doubt effects explained per policy, the key index, and the same
//! answers after compaction.

mod agent_support;
mod inspect_support;

use std::path::Path;

use agentwal::journal::{Effect, Journal, JournalOptions, JournalRecord, JournalView, PolicyKind};
use agentwal::log::{Durability, Log, LogReader};
use inspect_support::*;
use serde_json::{json, Value};

/// 5 committed units (one with a checkpoint), 1 rolled back, 1 left
/// incomplete with its effect done, then two units whose effect intent is
/// durable but whose outcome is not (in doubt: retry_same_key, never_repeat).
/// Returns the LSN of the in-doubt intents.
fn build(dir: &Path) -> (u64, u64) {
    let j = Journal::open(dir, JournalOptions::small()).unwrap();
    for i in 0..5 {
        let mut u = j
            .begin(&format!("ok-{i}"), "record", &json!({ "n": i }))
            .unwrap();
        if i == 2 {
            u.checkpoint(&json!({ "step": 1 })).unwrap();
        }
        u.run(Effect::retry_same_key("send"), |_| Ok::<_, String>(i))
            .unwrap();
        u.commit().unwrap();
    }
    let mut u = j.begin("rolled", "record", &json!({})).unwrap();
    u.run(Effect::retry_same_key("send").compensable(), |_| {
        Ok::<_, String>(1)
    })
    .unwrap();
    u.rollback("operator asked", |_| Ok::<_, String>(()))
        .unwrap();
    let mut u = j.begin("half", "record", &json!({})).unwrap();
    u.run(Effect::retry_same_key("send"), |_| Ok::<_, String>(7))
        .unwrap();
    drop(u);
    j.close().unwrap();

    // A process killed between the durable intent and the outcome leaves
    // exactly these records.
    let log = Log::open(dir, JournalOptions::small().log).unwrap();
    let mut lsns = Vec::new();
    for (unit, key, policy) in [
        ("doubt-retry", "k-17", PolicyKind::RetrySameKey),
        ("doubt-never", "k-99", PolicyKind::NeverRepeat),
    ] {
        let begin = JournalRecord::UnitBegin {
            unit: unit.into(),
            kind: "record".into(),
            payload: json!({}),
            at_ms: 1,
        };
        log.append_with(begin.kind(), &begin.encode(), Durability::Durable)
            .unwrap();
        let intent = JournalRecord::EffectIntent {
            unit: unit.into(),
            seq: 0,
            name: "send".into(),
            key: key.into(),
            policy,
            compensable: false,
        };
        lsns.push(
            log.append_with(intent.kind(), &intent.encode(), Durability::Durable)
                .unwrap(),
        );
    }
    log.close().unwrap();
    (lsns[0], lsns[1])
}

fn unit<'a>(rows: &'a [Value], id: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no unit {id} in {rows:?}"))
}

#[test]
fn summary_units_show_keys_on_a_real_journal() {
    let d = tempfile::tempdir().unwrap();
    let (retry_lsn, never_lsn) = build(d.path());

    let s = inspect_dir("summary", d.path(), &["--json"]);
    assert_eq!(s.code, 0, "{s:?}");
    let v = s.json();
    assert_eq!(
        v["units"],
        json!({ "committed": 5, "aborted": 1, "incomplete": 3 }),
        "{v}"
    );
    assert_eq!(v["in_doubt_effects"], 2);
    let view = JournalView::load(&LogReader::open(d.path()).unwrap()).unwrap();
    assert_eq!(v["idempotency_keys"], view.keys.len() as u64);
    assert!(
        view.keys.len() >= 9,
        "5 + 1 + 1 completed keys and 2 in doubt"
    );
    assert!(v["journal_error"].is_null());
    assert!(v["corruption"].is_null());

    let u = inspect_dir("units", d.path(), &["--json"]);
    assert_eq!(u.code, 0, "{u:?}");
    let rows: Vec<Value> = u.json().as_array().unwrap().clone();
    assert_eq!(rows.len(), 9);
    for r in &rows {
        for f in [
            "id",
            "state",
            "effects_done",
            "effects_in_doubt",
            "last_checkpoint_lsn",
        ] {
            assert!(r.get(f).is_some(), "units row lacks {f}: {r}");
        }
    }
    assert_eq!(unit(&rows, "ok-0")["state"], "committed");
    assert_eq!(unit(&rows, "ok-0")["effects_done"], 1);
    assert!(unit(&rows, "ok-2")["last_checkpoint_lsn"].is_u64());
    assert!(unit(&rows, "ok-1")["last_checkpoint_lsn"].is_null());
    assert_eq!(unit(&rows, "rolled")["state"], "aborted");
    assert_eq!(unit(&rows, "half")["state"], "incomplete");
    assert_eq!(unit(&rows, "half")["effects_done"], 1);
    assert_eq!(unit(&rows, "half")["effects_in_doubt"], 0);
    assert_eq!(unit(&rows, "doubt-retry")["effects_in_doubt"], 1);
    assert_eq!(unit(&rows, "doubt-retry")["effects_done"], 0);

    let inc = inspect_dir("units", d.path(), &["--state", "incomplete", "--json"]).json();
    let mut ids: Vec<&str> = inc
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["doubt-never", "doubt-retry", "half"]);
    let table = inspect_dir("units", d.path(), &["--state", "committed"]);
    assert_eq!(table.code, 0);
    assert!(
        table.stdout.contains("ok-4") && !table.stdout.contains("half"),
        "{}",
        table.stdout
    );
    assert!(table.stdout.contains("5 unit(s)"));

    // show: in-doubt effects flagged and explained per policy.
    let sh = inspect_dir("show", d.path(), &["doubt-retry"]);
    assert_eq!(sh.code, 0, "{sh:?}");
    assert!(
        sh.stdout
            .contains(&format!("intent recorded at LSN {retry_lsn}, no outcome")),
        "{}",
        sh.stdout
    );
    assert!(
        sh.stdout
            .contains("step #0 `send` may or may not have taken effect"),
        "{}",
        sh.stdout
    );
    assert!(
        sh.stdout
            .contains("retry_same_key will run it again with the same key k-17"),
        "{}",
        sh.stdout
    );
    assert!(sh.stdout.contains("INCOMPLETE"));
    let never = inspect_dir("show", d.path(), &["doubt-never", "--json"]).json();
    assert_eq!(never["effects"][0]["in_doubt"], true);
    assert_eq!(never["effects"][0]["intent_lsn"], never_lsn);
    assert_eq!(never["effects"][0]["policy"], "never_repeat");
    let why = never["effects"][0]["explanation"].as_str().unwrap();
    assert!(
        why.contains("will NOT run it again") && why.contains("k-99"),
        "{why}"
    );
    let types: Vec<&str> = never["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["unit_begin", "effect_intent"]);

    let ok = inspect_dir("show", d.path(), &["ok-2", "--json"]).json();
    assert_eq!(ok["state"], "committed");
    assert_eq!(ok["effects"][0]["in_doubt"], false);
    let types: Vec<&str> = ok["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["type"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"unit_begin"));
    assert!(
        types.contains(&"checkpoint") && types.contains(&"effect_outcome"),
        "{types:?}"
    );
    assert_eq!(types.last(), Some(&"commit"));

    // Arguments in the other order work too.
    let swapped = inspect(&["show".as_ref(), "half".as_ref(), d.path().as_os_str()]);
    assert_eq!(swapped.code, 0, "{swapped:?}");
    assert!(swapped.stdout.contains("unit      half"));
    let missing = inspect_dir("show", d.path(), &["no-such-unit"]);
    assert_clean_failure(&missing, "no unit \"no-such-unit\"");

    // keys: status and settling LSN.
    let keys = inspect_dir("keys", d.path(), &["--json"]).json();
    let keys = keys.as_array().unwrap();
    let k17 = keys.iter().find(|k| k["key"] == "k-17").expect("k-17");
    assert_eq!(k17["status"], "in_doubt");
    assert!(k17["settled_lsn"].is_null());
    let settled: Vec<&Value> = keys.iter().filter(|k| k["unit"] == "ok-3").collect();
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0]["status"], "completed");
    assert!(settled[0]["settled_lsn"].is_u64());
    assert!(inspect_dir("keys", d.path(), &[]).stdout.contains("k-99"));

    // dump decodes journal records.
    let lines = inspect_dir("dump", d.path(), &["--json"]).json_lines();
    assert_eq!(lines[0]["kind_name"], "unit_begin");
    assert_eq!(lines[0]["record"]["unit"], "ok-0");
    let intent = lines.iter().find(|l| l["lsn"] == retry_lsn).unwrap();
    assert_eq!(intent["record"]["type"], "effect_intent");
    assert_eq!(intent["record"]["key"], "k-17");
}

#[test]
fn counts_survive_compaction() {
    let d = tempfile::tempdir().unwrap();
    build(d.path());
    let before = inspect_dir("summary", d.path(), &["--json"]).json();
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    j.compact().unwrap();
    j.close().unwrap();
    let after = inspect_dir("summary", d.path(), &["--json"]).json();
    assert!(after["snapshot_lsn"].is_u64(), "{after}");
    assert_eq!(after["units"], before["units"], "{after}");
    assert_eq!(after["in_doubt_effects"], 2);
    let rows = inspect_dir("units", d.path(), &["--json"]).json();
    assert!(rows
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["id"] == "doubt-retry"));
    assert_eq!(inspect_dir("verify", d.path(), &[]).code, 0);
    let listed = rows.as_array().unwrap().iter().any(|r| r["id"] == "ok-0");
    assert!(
        !listed,
        "compaction folds finished units into counts: {rows}"
    );
    let gone = inspect_dir("show", d.path(), &["ok-0"]);
    assert_clean_failure(&gone, "compacted");
    assert!(
        gone.stderr.contains("ok-0/send/0"),
        "its keys are named: {gone:?}"
    );
    let sh = inspect_dir("show", d.path(), &["doubt-retry", "--json"]);
    assert_eq!(sh.code, 0, "{sh:?}");
    assert_eq!(sh.json()["effects_in_doubt"], 1);
}

#[test]
fn a_journal_kind_this_build_does_not_know_is_reported_not_a_panic() {
    let d = tempfile::tempdir().unwrap();
    build(d.path());
    let log = Log::open(d.path(), JournalOptions::small().log).unwrap();
    log.append_with(30, b"{\"type\":\"from_the_future\"}", Durability::Durable)
        .unwrap();
    drop(log);
    let s = inspect_dir("summary", d.path(), &["--json"]);
    assert_eq!(s.code, 0, "{s:?}");
    assert!(s.json()["journal_error"].is_string(), "{}", s.stdout);
    assert_clean_failure(&inspect_dir("units", d.path(), &[]), "journal");
    assert_eq!(inspect_dir("dump", d.path(), &[]).code, 0);
    assert_eq!(inspect_dir("verify", d.path(), &[]).code, 0);
}

#[test]
fn lossy_repair_names_the_units_that_lose_records() {
    let d = tempfile::tempdir().unwrap();
    build(d.path());
    // LSN 28 is the begin record of unit "half"; 29.. follow it.
    let (seg, off) = locate(d.path(), 28);
    let lines = inspect_dir(
        "dump",
        d.path(),
        &["--from", "28", "--limit", "1", "--json"],
    )
    .json_lines();
    assert_eq!(lines[0]["record"]["unit"], "half");
    flip(&seg, off + 40);
    let r = inspect_dir("repair", d.path(), &["--lossy", "--dry-run", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(v["dropped_from_lsn"], 28);
    assert_eq!(
        v["lost_units"],
        json!(["doubt-never", "doubt-retry", "half"]),
        "{v}"
    );
    let text = inspect_dir("repair", d.path(), &["--lossy", "--dry-run"]).stdout;
    assert!(
        text.contains("3 unit(s) have records in the lost part"),
        "{text}"
    );
    // Units before the damage are untouched by the cut.
    let r = inspect_dir("repair", d.path(), &["--lossy", "--json"]);
    assert_eq!(r.json()["verified_after"], true);
    let s = inspect_dir("summary", d.path(), &["--json"]).json();
    assert_eq!(
        s["units"],
        json!({ "committed": 5, "aborted": 1, "incomplete": 0 }),
        "{s}"
    );
}

//! Operator commands (`wal-inspect resolve|abort|approve|queue
//! --redrive|--purge-dead`) and human approvals: each writes one durable,
//! attributed record, works with the agent stopped (the command opens the
//! journal) and running (the owner applies it from its inbox), and prints
//! what it changed. Includes a SIGKILL test for approvals.

mod agent_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::{dead_letters, inspect, json, text};
use agentwal::journal::{
    Approval, Effect, EffectStatus, Error, Journal, JournalOptions, Resolution, UnitState,
};
use agentwal::queue::{QueueOptions, WorkQueue};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Receipt {
    id: String,
    cents: u64,
}

/// A journal whose unit `pay-1` has a completed step 0 (`quote`) and an
/// in-doubt `never_repeat` step 1 (`charge`), as after a kill.
fn in_doubt_journal(dir: &Path) {
    let j = Journal::open(dir, JournalOptions::small()).unwrap();
    let mut u = j.begin("pay-0", "pay", &()).unwrap();
    let _: Receipt = u
        .run(Effect::never_repeat("charge"), |_| {
            Ok::<_, String>(Receipt {
                id: "r0".into(),
                cents: 5,
            })
        })
        .unwrap();
    u.commit().unwrap();
    let mut u = j.begin("pay-1", "pay", &()).unwrap();
    let _: u32 = u
        .run(Effect::retry_same_key("quote"), |_| Ok::<_, String>(7))
        .unwrap();
    // The step reports it does not know whether the charge went through.
    let e = u
        .run(Effect::never_repeat("charge"), |_| {
            Err::<Receipt, _>(agentwal::journal::StepError::in_doubt("timeout"))
        })
        .unwrap_err();
    assert!(matches!(e, Error::LeftInDoubt { .. }), "{e}");
}

fn resume_charge(j: &Journal) -> Result<Receipt, Error> {
    let mut u = j.begin("pay-1", "pay", &())?;
    let _: u32 = u.run(Effect::retry_same_key("quote"), |_| Ok::<_, String>(7))?;
    let r = u.run(Effect::never_repeat("charge"), |_| {
        Ok::<_, String>(Receipt {
            id: "new".into(),
            cents: 1,
        })
    })?;
    u.commit()?;
    Ok(r)
}

#[test]
fn resolve_happened_while_stopped_hands_the_result_to_the_resumed_unit() {
    let d = tempfile::tempdir().unwrap();
    in_doubt_journal(d.path());
    let o = inspect(
        &[
            "resolve",
            "pay-1",
            "1",
            "--happened",
            "--result",
            r#"{"id":"r1","cents":40}"#,
            "--by",
            "alice",
            "--reason",
            "seen in the bank console",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("in doubt -> completed") && out.contains("alice"),
        "{out}"
    );
    assert!(out.contains("applied directly"), "{out}");
    // Attributed and shown.
    let show = json(&inspect(&["show", "pay-1", "--json"], d.path()));
    assert_eq!(show["operator_actions"][0]["by"], "alice", "{show}");
    assert_eq!(
        show["operator_actions"][0]["reason"],
        "seen in the bank console"
    );
    let units = json(&inspect(&["units", "--json"], d.path()));
    let row = units
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == "pay-1")
        .unwrap();
    assert_eq!(row["operator_actions"], 1, "{row}");
    assert_eq!(row["effects_in_doubt"], 0, "{row}");
    // The resumed unit gets the operator's result; the charge never runs again.
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    assert_eq!(
        resume_charge(&j).unwrap(),
        Receipt {
            id: "r1".into(),
            cents: 40
        }
    );
    // A second resolution of the (now settled) unit is refused.
    drop(j);
    let o = inspect(&["resolve", "pay-1", "1", "--not-happened"], d.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    assert!(
        text(&o.stderr).contains("not incomplete"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn a_result_of_the_wrong_shape_is_refused_at_resolve_time() {
    let d = tempfile::tempdir().unwrap();
    in_doubt_journal(d.path());
    // Stopped: checked against the recorded results of `charge` (pay-0's).
    let o = inspect(
        &["resolve", "pay-1", "1", "--happened", "--result", r#""r1""#],
        d.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("an object"), "{}", text(&o.stderr));
    let o = inspect(
        &[
            "resolve",
            "pay-1",
            "1",
            "--happened",
            "--result",
            r#"{"id":"r1"}"#,
        ],
        d.path(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("cents"), "{}", text(&o.stderr));
    // Running: checked against the Rust type the process ran the effect with.
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    let _ = resume_charge(&j); // registers Receipt for `charge` (in doubt: refused)
    let e = j
        .resolve(
            "pay-1",
            1,
            Resolution::Happened(Some(serde_json::json!({"id": "r1", "cents": -3}))),
            "bob",
            "",
        )
        .unwrap_err();
    assert!(matches!(e, Error::OperatorRefused { .. }), "{e}");
    assert!(
        e.to_string().contains("Rust type") || e.to_string().contains("invalid value"),
        "{e}"
    );
    assert_eq!(j.effect_status("pay-1", 1), Some(EffectStatus::InDoubt));
}

#[test]
fn resolve_not_happened_while_the_agent_runs_is_applied_by_the_owner() {
    let d = tempfile::tempdir().unwrap();
    in_doubt_journal(d.path());
    // This process is the running owner (it holds the lock and polls its inbox).
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    assert!(matches!(resume_charge(&j), Err(Error::InDoubt { .. })));
    let o = inspect(
        &[
            "resolve",
            "pay-1",
            "1",
            "--not-happened",
            "--by",
            "carol",
            "--json",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let r = json(&o);
    assert_eq!(r["applied"], "owner", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("not happened"),
        "{r}"
    );
    // never_repeat runs again (same key) because the operator said it did not happen.
    assert_eq!(resume_charge(&j).unwrap().id, "new");
    assert_eq!(j.unit_state("pay-1"), Some(UnitState::Committed));
}

#[test]
fn abort_with_nothing_to_compensate_ends_the_unit_and_with_compensations_defers_to_the_agent() {
    let d = tempfile::tempdir().unwrap();
    {
        let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
        let mut u = j.begin("plain", "t", &()).unwrap();
        let _: u32 = u
            .run(Effect::retry_same_key("a"), |_| Ok::<_, String>(1))
            .unwrap();
        let mut u = j.begin("comp", "t", &()).unwrap();
        let _: u32 = u
            .run(Effect::never_repeat("reserve").compensable(), |_| {
                Ok::<_, String>(1)
            })
            .unwrap();
    }
    let o = inspect(
        &["abort", "plain", "--reason", "dup", "--by", "dan"],
        d.path(),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("aborted"), "{}", text(&o.stdout));
    let o = inspect(&["abort", "comp", "--by", "dan"], d.path());
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("abort requested"),
        "{}",
        text(&o.stdout)
    );
    let show = text(&inspect(&["show", "comp"], d.path()).stdout);
    assert!(show.contains("ABORT REQUESTED by dan"), "{show}");

    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    assert_eq!(j.unit_state("plain"), Some(UnitState::Aborted));
    assert!(matches!(
        j.begin("comp", "t", &()),
        Err(Error::AbortRequested { ref by, .. }) if by == "dan"
    ));
    let mut undone = Vec::new();
    j.rollback("comp", "operator abort", |c| {
        undone.push(c.effect.clone());
        Ok::<_, String>(())
    })
    .unwrap();
    assert_eq!(undone, ["reserve"]);
    assert_eq!(j.unit_state("comp"), Some(UnitState::Aborted));
}

#[test]
fn approvals_are_bound_to_one_unit_and_name_and_decided_once() {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    let mut u = j.begin("refund-1", "refund", &()).unwrap();
    let payload = serde_json::json!({"eur": 40, "to": "bob"});
    assert_eq!(u.approval("refund", &payload).unwrap(), Approval::Pending);
    assert_eq!(u.approval("refund", &payload).unwrap(), Approval::Pending);
    // Another unit's approval and another name are separate.
    let mut other = j.begin("refund-2", "refund", &()).unwrap();
    assert_eq!(
        other.approval("refund", &payload).unwrap(),
        Approval::Pending
    );
    drop(other);
    // A decision needs a request.
    assert!(j
        .decide_approval("refund-1", "payout", true, "eve", "")
        .is_err());
    // While the agent runs: applied by the owner (this process).
    let o = inspect(
        &[
            "approve", "refund-1", "refund", "--by", "eve", "--reason", "ok",
        ],
        d.path(),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("pending -> approved"),
        "{}",
        text(&o.stdout)
    );
    match u.approval("refund", &payload).unwrap() {
        Approval::Approved { by, reason, .. } => {
            assert_eq!((by.as_str(), reason.as_str()), ("eve", "ok"))
        }
        a => panic!("{a:?}"),
    }
    // Decided once.
    let o = inspect(&["approve", "refund-1", "refund", "--reject"], d.path());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("already approved"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(
        j.unit_state("refund-2"),
        Some(UnitState::Incomplete),
        "the other unit is untouched"
    );
    let mut other = j.begin("refund-2", "refund", &()).unwrap();
    assert!(other.approval("refund", &payload).unwrap().is_pending());
    drop(other);
    let o = inspect(
        &["approve", "refund-2", "refund", "--reject", "--by", "eve"],
        d.path(),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut other = j.begin("refund-2", "refund", &()).unwrap();
    assert!(matches!(
        other.approval("refund", &payload).unwrap(),
        Approval::Rejected { .. }
    ));
    u.commit().unwrap();
    let show = json(&inspect(&["show", "refund-2", "--json"], d.path()));
    assert_eq!(show["approvals"][0]["status"], "rejected", "{show}");
}

#[cfg(feature = "tokio")]
#[tokio::test]
async fn approval_async_does_not_block_the_runtime() {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    let mut u = j.begin("a", "t", &()).unwrap();
    assert!(u.approval_async("go", &1).await.unwrap().is_pending());
    j.decide_approval("a", "go", true, "x", "").unwrap();
    assert!(u.approval_async("go", &1).await.unwrap().is_approved());
}

/// The child of the approval kill test: asks for approval; when approved,
/// runs the refund (one line in the sink) and commits. Exits 3 while pending.
#[test]
fn child_process_for_approval_kill_test() {
    let Ok(dir) = std::env::var("AGENTWAL_APPROVAL_CHILD") else {
        return;
    };
    let dir = Path::new(&dir);
    let j = Journal::open(dir.join("j"), JournalOptions::small()).unwrap();
    let mut u = j.begin("refund-7", "refund", &()).unwrap();
    match u
        .approval("refund", &serde_json::json!({"eur": 12}))
        .unwrap()
    {
        Approval::Pending => {
            // Wait here (the parent kills us).
            std::thread::sleep(Duration::from_secs(60));
            std::process::exit(3);
        }
        Approval::Rejected { .. } => std::process::exit(4),
        Approval::Approved { .. } => {}
    }
    let sink = dir.join("sink");
    u.run(Effect::never_repeat("refund"), |ctx| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&sink)
            .unwrap();
        writeln!(f, "{}", ctx.key()).map_err(|e| e.to_string())
    })
    .unwrap();
    u.commit().unwrap();
}

#[test]
fn sigkill_while_waiting_for_approval_then_approve_then_rerun_refunds_once() {
    if std::env::var("AGENTWAL_APPROVAL_CHILD").is_ok() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let child = || {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_process_for_approval_kill_test",
                "--nocapture",
            ])
            .env("AGENTWAL_APPROVAL_CHILD", d.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let jdir = d.path().join("j");
    let mut c = child();
    // Wait until the request is durable, then SIGKILL.
    let t = Instant::now();
    loop {
        let o = inspect(&["show", "refund-7", "--json"], &jdir);
        if o.status.success() && json(&o)["approvals"][0]["status"] == "pending" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no approval request");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.kill().unwrap();
    c.wait().unwrap();
    // Nothing refunded; the agent is stopped: the command applies it itself.
    assert!(!d.path().join("sink").exists());
    let o = inspect(&["approve", "refund-7", "refund", "--by", "frank"], &jdir);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("applied directly"),
        "{}",
        text(&o.stdout)
    );
    let mut c = child();
    assert!(c.wait().unwrap().success());
    let sink = std::fs::read_to_string(d.path().join("sink")).unwrap();
    assert_eq!(sink.lines().collect::<Vec<_>>(), ["refund-7/refund/0"]);
    let j = Journal::open(&jdir, JournalOptions::small()).unwrap();
    assert_eq!(j.unit_state("refund-7"), Some(UnitState::Committed));
}

#[test]
fn queue_redrive_and_purge_while_stopped_and_while_running() {
    let d = tempfile::tempdir().unwrap();
    // A journal directory with a queue in it.
    drop(Journal::open(d.path(), JournalOptions::small()).unwrap());
    let ids = dead_letters(d.path(), 3);
    // Stopped.
    let o = inspect(
        &["queue", "--redrive", &ids[0].to_string(), "--by", "gil"],
        d.path(),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("1 dead letter"),
        "{}",
        text(&o.stdout)
    );
    // An id that is not dead is refused, nothing changes.
    let o = inspect(&["queue", "--redrive", &ids[0].to_string()], d.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    // Running: this process owns the queue.
    let q = WorkQueue::open(d.path(), QueueOptions::default()).unwrap();
    let o = inspect(
        &["queue", "--purge-dead", "--by", "gil", "--json"],
        d.path(),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let r = json(&o);
    assert_eq!(r["applied"], "owner", "{r}");
    assert_eq!(r["ids"].as_array().unwrap().len(), 2, "{r}");
    let s = q.stats();
    assert_eq!((s.dead_lettered, s.pending), (0, 1), "{s:?}");
    // The redriven item has a fresh budget.
    let c = q.claim("w").unwrap().unwrap();
    assert_eq!((c.id, c.attempt), (ids[0], 1));
    drop(q);
    let listed = json(&inspect(&["queue", "--json"], d.path()));
    assert!(
        !listed.to_string().contains("\"dead_lettered\":2"),
        "{listed}"
    );
}

/// Left by the previous journal fix: after a finished rollback the key index
/// showed the compensated effect's key as `completed`, so another unit using
/// that key got the undone result back.
#[test]
fn a_compensated_key_is_shown_as_such_and_never_hands_out_the_undone_result() {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    let mut u = j.begin("a", "t", &()).unwrap();
    let _: u32 = u
        .run(
            Effect::never_repeat("charge").key("order-1").compensable(),
            |_| Ok::<_, String>(40),
        )
        .unwrap();
    u.rollback("cancelled", |_| Ok::<_, String>(())).unwrap();
    assert_eq!(
        j.key_status("order-1").unwrap().status,
        agentwal::journal::KeyStatus::Compensated
    );
    let mut b = j.begin("b", "t", &()).unwrap();
    let mut ran = false;
    let e = b
        .run(Effect::never_repeat("charge").key("order-1"), |_| {
            ran = true;
            Ok::<u32, String>(1)
        })
        .unwrap_err();
    assert!(!ran);
    assert!(matches!(e, Error::KeyConflict { .. }), "{e}");
    assert!(e.to_string().contains("compensated"), "{e}");
    drop(b);
    drop(j);
    let keys = json(&inspect(&["keys", "--json"], d.path()));
    assert_eq!(keys[0]["status"], "compensated", "{keys}");
}

/// A redrive naming an item twice changes it once: the command is written as
/// one batch whose records must touch distinct items, and the queue reopens.
#[test]
fn a_redrive_naming_an_item_twice_changes_it_once_and_the_queue_reopens() {
    use agentwal::queue::{QueueOptions, WorkQueue};
    let d = tempfile::tempdir().unwrap();
    let ids = dead_letters(d.path(), 3);
    let q = WorkQueue::open(d.path(), QueueOptions::default()).unwrap();
    let done = q.redrive(&[ids[0], ids[0], ids[1]], "alice").unwrap();
    assert_eq!(done, vec![ids[0], ids[1]]);
    assert_eq!(q.stats().dead_lettered, 1);
    drop(q);
    let q = WorkQueue::open(d.path(), QueueOptions::default()).unwrap();
    assert_eq!(q.stats().dead_lettered, 1);
    assert_eq!(
        q.purge_dead(&[ids[2], ids[2]], "bob").unwrap(),
        vec![ids[2]]
    );
    drop(q);
    let q = WorkQueue::open(d.path(), QueueOptions::default()).unwrap();
    assert_eq!(q.stats().dead_lettered, 0);
}

//! An operator command that the owner applied (its durable record written)
//! but did not answer before it crashed is claimed again at the next open.
//! It must be answered "already applied", with what the first application
//! changed — not applied twice, not refused — for each of resolve, abort,
//! approve, queue redrive and queue purge. The crash between the record and
//! the reply is injected with `log::inbox::fail_next_reply` (feature
//! `testing`).
mod agent_support;

use std::path::Path;
use std::time::Duration;

use agent_support::dead_letters;
use agentwal::journal::{
    Approval, Effect, Error, Journal, JournalOptions, JournalRecord, OperatorCommand,
    OperatorReply, OperatorRequest, Resolution, StepError, UnitState,
};
use agentwal::log::inbox::{fail_next_reply, Inbox};
use agentwal::log::LogReader;
use agentwal::queue::{queue_dir, QueueCommand, QueueOptions, QueueReply, WorkQueue};

/// Submits `body` to the inbox of `owned` while `open()` owns it; the owner
/// applies it and "crashes" before replying; a new owner opens. Returns the
/// reply the operator's tool finally reads.
fn across_an_owner_crash<O>(
    owned: &Path,
    body: &[u8],
    open: impl Fn() -> O,
    apply: impl Fn(&O),
) -> Vec<u8> {
    let inbox = Inbox::new(owned);
    let owner = open();
    fail_next_reply(owned);
    let id = inbox.submit(body).unwrap();
    // Applied by this call or by the owner's poller; the reply fails.
    apply(&owner);
    let applying = inbox.dir().join(format!("{id}.applying"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !applying.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(owner); // the crash: the command stays claimed, unanswered
    let owner = open(); // claims it again at open
    let reply = inbox
        .wait_reply(&id, Duration::from_secs(10))
        .unwrap()
        .expect("the new owner replies");
    drop(owner);
    reply
}

/// The reply to command `id`, decoded (the tool's side).
fn reply_to<R: serde::de::DeserializeOwned>(inbox: &Inbox, id: &str) -> R {
    let body = inbox
        .wait_reply(id, Duration::from_secs(10))
        .unwrap()
        .expect("the owner replies");
    serde_json::from_slice(&body).unwrap()
}

fn operator_records(dir: &Path) -> usize {
    let r = LogReader::open(dir).unwrap();
    r.iter_from(1)
        .filter(|rec| {
            let rec = rec.as_ref().unwrap();
            JournalRecord::decode(rec.kind, rec.payload())
                .unwrap()
                .type_name()
                == "operator"
        })
        .count()
}

/// Unit `pay` with an in-doubt `never_repeat` step 0, and unit `refund`
/// waiting for approval `ok`.
fn journal_with_decisions_pending(dir: &Path) {
    let j = Journal::open(dir, JournalOptions::small()).unwrap();
    let mut u = j.begin("pay", "pay", &()).unwrap();
    let e = u
        .run(Effect::never_repeat("charge"), |_| {
            Err::<u32, _>(StepError::in_doubt("timeout"))
        })
        .unwrap_err();
    assert!(matches!(e, Error::LeftInDoubt { .. }), "{e}");
    drop(u);
    let mut u = j.begin("refund", "refund", &()).unwrap();
    assert_eq!(u.approval("ok", &40).unwrap(), Approval::Pending);
    drop(u);
    j.close().unwrap();
}

fn journal_command(request: OperatorRequest) -> (tempfile::TempDir, OperatorReply) {
    let tmp = tempfile::tempdir().unwrap();
    journal_with_decisions_pending(tmp.path());
    let cmd = OperatorCommand {
        by: "alice".into(),
        reason: "incident 7".into(),
        request,
    };
    let body = serde_json::to_vec(&cmd).unwrap();
    let reply = across_an_owner_crash(
        tmp.path(),
        &body,
        || Journal::open(tmp.path(), JournalOptions::small()).unwrap(),
        |j| {
            let _ = j.apply_inbox();
        },
    );
    let reply: OperatorReply = serde_json::from_slice(&reply).unwrap();
    assert!(reply.ok, "{reply:?}");
    assert!(reply.message.contains("already applied"), "{reply:?}");
    assert!(reply.message.contains("\"alice\""), "{reply:?}");
    assert_eq!(operator_records(tmp.path()), 1, "decision recorded once");
    (tmp, reply)
}

#[test]
fn resolve_reapplied_after_an_owner_crash_is_answered_not_refused() {
    let (tmp, reply) = journal_command(OperatorRequest::Resolve {
        unit: "pay".into(),
        step: 0,
        resolution: Resolution::Happened(Some(serde_json::json!(12))),
    });
    assert!(reply.message.contains("resolved as happened"), "{reply:?}");
    let j = Journal::open(tmp.path(), JournalOptions::small()).unwrap();
    let mut u = j.begin("pay", "pay", &()).unwrap();
    let got: u32 = u
        .run(Effect::never_repeat("charge"), |_| Ok::<_, String>(0))
        .unwrap();
    assert_eq!(got, 12);
}

#[test]
fn abort_reapplied_after_an_owner_crash_is_answered_not_refused() {
    let (tmp, reply) = journal_command(OperatorRequest::Abort { unit: "pay".into() });
    assert!(reply.message.contains("abort recorded"), "{reply:?}");
    let j = Journal::open(tmp.path(), JournalOptions::small()).unwrap();
    assert_eq!(j.unit_state("pay"), Some(UnitState::Aborted));
}

#[test]
fn approve_reapplied_after_an_owner_crash_is_answered_not_refused() {
    let (tmp, reply) = journal_command(OperatorRequest::Approve {
        unit: "refund".into(),
        name: "ok".into(),
        approved: true,
    });
    assert!(reply.message.contains("approved"), "{reply:?}");
    let j = Journal::open(tmp.path(), JournalOptions::small()).unwrap();
    let mut u = j.begin("refund", "refund", &()).unwrap();
    assert!(u.approval("ok", &40).unwrap().is_approved());
}

/// The command ids survive a compaction (they are in the snapshot).
#[test]
fn an_applied_command_is_remembered_across_compaction() {
    let tmp = tempfile::tempdir().unwrap();
    journal_with_decisions_pending(tmp.path());
    let inbox = Inbox::new(tmp.path());
    let j = Journal::open(tmp.path(), JournalOptions::small()).unwrap();
    fail_next_reply(tmp.path());
    let cmd = OperatorCommand {
        by: "bob".into(),
        reason: String::new(),
        request: OperatorRequest::Abort { unit: "pay".into() },
    };
    let id = inbox.submit(&serde_json::to_vec(&cmd).unwrap()).unwrap();
    let _ = j.apply_inbox();
    j.compact().unwrap();
    drop(j);
    let _j = Journal::open(tmp.path(), JournalOptions::small()).unwrap();
    let reply: OperatorReply = reply_to(&inbox, &id);
    assert!(
        reply.ok && reply.message.contains("already applied"),
        "{reply:?}"
    );
}

fn queue_command(command: &str, ids: Vec<u64>) -> (tempfile::TempDir, QueueReply) {
    let tmp = tempfile::tempdir().unwrap();
    let dead = dead_letters(tmp.path(), 2);
    let cmd = QueueCommand {
        by: "carol".into(),
        command: command.into(),
        ids,
    };
    let body = serde_json::to_vec(&cmd).unwrap();
    let reply = across_an_owner_crash(
        &queue_dir(tmp.path()),
        &body,
        || WorkQueue::open(tmp.path(), QueueOptions::default()).unwrap(),
        |q| {
            let _ = q.apply_inbox();
        },
    );
    let reply: QueueReply = serde_json::from_slice(&reply).unwrap();
    assert!(reply.ok, "{reply:?}");
    assert!(reply.message.contains("already applied"), "{reply:?}");
    assert_eq!(reply.ids, dead, "what the first application changed");
    (tmp, reply)
}

/// The queue's applied commands survive its compaction (snapshot v2).
#[test]
fn a_queue_command_is_remembered_across_compaction() {
    let tmp = tempfile::tempdir().unwrap();
    let dead = dead_letters(tmp.path(), 2);
    let inbox = Inbox::new(queue_dir(tmp.path()));
    let q = WorkQueue::open(tmp.path(), QueueOptions::default()).unwrap();
    fail_next_reply(queue_dir(tmp.path()));
    let cmd = QueueCommand {
        by: "erin".into(),
        command: "purge_dead".into(),
        ids: Vec::new(),
    };
    let id = inbox.submit(&serde_json::to_vec(&cmd).unwrap()).unwrap();
    let _ = q.apply_inbox();
    assert!(q.compact().unwrap().is_some(), "a snapshot was written");
    drop(q);
    let _q = WorkQueue::open(tmp.path(), QueueOptions::default()).unwrap();
    let reply: QueueReply = reply_to(&inbox, &id);
    assert!(
        reply.ok && reply.message.contains("already applied"),
        "{reply:?}"
    );
    assert_eq!(reply.ids, dead);
}

#[test]
fn redrive_reapplied_after_an_owner_crash_is_answered_not_refused() {
    // Explicit ids: re-applied blindly, they would be refused (not dead).
    let (tmp, reply) = queue_command("redrive", vec![1, 2]);
    assert!(reply.message.contains("redrove 2"), "{reply:?}");
    let q = WorkQueue::open(tmp.path(), QueueOptions::default()).unwrap();
    let s = q.stats();
    assert_eq!((s.dead_lettered, s.pending), (0, 2), "{s:?}");
}

#[test]
fn purge_reapplied_after_an_owner_crash_is_answered_not_refused() {
    // All dead letters: re-applied blindly, it would report 0 purged.
    let (tmp, reply) = queue_command("purge_dead", Vec::new());
    assert!(reply.message.contains("purged 2"), "{reply:?}");
    let q = WorkQueue::open(tmp.path(), QueueOptions::default()).unwrap();
    assert_eq!(q.stats().dead_lettered, 0);
}

/// `Journal::open_with` (custom storage) reads no inbox by default, and the
/// inbox of a real directory with `OperatorInbox::At`; `Journal::open`
/// reads none with `OperatorInbox::Off`.
#[test]
fn the_operator_inbox_follows_the_option_for_custom_storage() {
    use agentwal::journal::OperatorInbox;
    use agentwal::log::FsStorage;
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    journal_with_decisions_pending(tmp.path());
    let inbox = Inbox::new(tmp.path());
    let abort = serde_json::to_vec(&OperatorCommand {
        by: "dave".into(),
        reason: String::new(),
        request: OperatorRequest::Abort { unit: "pay".into() },
    })
    .unwrap();
    let id = inbox.submit(&abort).unwrap();
    let pending = inbox.dir().join(format!("{id}.cmd"));
    let off = JournalOptions {
        operator_inbox: OperatorInbox::Off,
        ..JournalOptions::small()
    };
    type Open<'a> = Box<dyn Fn() -> agentwal::journal::Result<Journal> + 'a>;
    let opens: [(&str, Open); 2] = [
        (
            "open_with, Auto",
            Box::new(|| {
                Journal::open_with(Arc::new(FsStorage), tmp.path(), JournalOptions::small())
            }),
        ),
        (
            "open, Off",
            Box::new(|| Journal::open(tmp.path(), off.clone())),
        ),
    ];
    for (how, open) in opens {
        let j = open();
        let j = j.unwrap();
        assert_eq!(j.apply_inbox().unwrap(), 0, "{how}");
        assert!(pending.exists(), "{how}: the command was not claimed");
        assert_eq!(j.unit_state("pay"), Some(UnitState::Incomplete), "{how}");
    }
    // At the real directory: applied at open.
    let j = Journal::open_with(
        Arc::new(FsStorage),
        tmp.path(),
        JournalOptions {
            operator_inbox: OperatorInbox::At(tmp.path().to_path_buf()),
            ..JournalOptions::small()
        },
    )
    .unwrap();
    assert_eq!(j.unit_state("pay"), Some(UnitState::Aborted));
    let reply: OperatorReply = reply_to(&inbox, &id);
    assert!(reply.ok, "{reply:?}");
}

/// The owner's poller and an explicit `apply_inbox` (or two explicit calls)
/// may run at once. A command claimed by one of them must not be claimed,
/// and applied a second time, by the other: its tool would read the second
/// application's refusal ("already approved") for a command that was
/// applied.
#[test]
fn concurrent_apply_inbox_calls_apply_each_command_once() {
    const N: usize = 24;
    let tmp = tempfile::tempdir().unwrap();
    {
        let j = Journal::open(tmp.path(), JournalOptions::small()).unwrap();
        for i in 0..N {
            let mut u = j.begin(&format!("u{i}"), "refund", &()).unwrap();
            assert_eq!(u.approval("ok", &i).unwrap(), Approval::Pending);
            drop(u);
        }
        j.close().unwrap();
    }
    let j = Journal::open(tmp.path(), JournalOptions::small()).unwrap();
    let inbox = Inbox::new(tmp.path());
    let ids: Vec<String> = (0..N)
        .map(|i| {
            let cmd = OperatorCommand {
                by: "alice".into(),
                reason: "ok".into(),
                request: OperatorRequest::Approve {
                    unit: format!("u{i}"),
                    name: "ok".into(),
                    approved: true,
                },
            };
            inbox.submit(&serde_json::to_vec(&cmd).unwrap()).unwrap()
        })
        .collect();
    let replied = |id: &String| inbox.dir().join(format!("{id}.reply")).exists();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                while !ids.iter().all(replied) && std::time::Instant::now() < deadline {
                    let _ = j.apply_inbox();
                }
            });
        }
    });
    // Let a straggling second application finish before reading.
    std::thread::sleep(Duration::from_millis(200));
    for id in &ids {
        let reply: OperatorReply = reply_to(&inbox, id);
        assert!(reply.ok, "command {id}: {reply:?}");
    }
    drop(j);
    assert_eq!(
        operator_records(tmp.path()),
        N,
        "each decision recorded once"
    );
}

/// A command that changed nothing (no dead letters to purge) is remembered
/// too: re-claimed after an owner crash it is answered "already applied"
/// like any other, not applied a second time (then it would purge the dead
/// letters that appeared since).
#[test]
fn a_command_that_changed_nothing_is_remembered_across_an_owner_crash() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(dead_letters(tmp.path(), 0).is_empty());
    let cmd = QueueCommand {
        by: "dave".into(),
        command: "purge_dead".into(),
        ids: Vec::new(),
    };
    let reply = across_an_owner_crash(
        &queue_dir(tmp.path()),
        &serde_json::to_vec(&cmd).unwrap(),
        || WorkQueue::open(tmp.path(), QueueOptions::default()).unwrap(),
        |q| {
            let _ = q.apply_inbox();
        },
    );
    let reply: QueueReply = serde_json::from_slice(&reply).unwrap();
    assert!(reply.ok, "{reply:?}");
    assert!(reply.message.contains("already applied"), "{reply:?}");
    assert!(reply.message.contains("purged 0"), "{reply:?}");
    assert!(reply.ids.is_empty(), "{reply:?}");
    // A snapshot holding it is written and reopens.
    let q = WorkQueue::open(tmp.path(), QueueOptions::default()).unwrap();
    assert!(q.compact().unwrap().is_some(), "a snapshot was written");
    drop(q);
    let q = WorkQueue::open(tmp.path(), QueueOptions::default()).unwrap();
    assert_eq!(q.stats().dead_lettered, 0);
}

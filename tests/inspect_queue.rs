//! `wal-inspect queue`: work-queue items by state, attempts, worker and last
//! error, read while the queue's owner still holds it.
#![cfg(feature = "tokio")]

mod agent_support;
mod inspect_support;

use std::time::Duration;

use agentwal::queue::{QueueOptions, WorkQueue};
use inspect_support::*;
use serde_json::{json, Value};

#[test]
fn queue_items_by_state_while_the_owner_runs() {
    let d = tempfile::tempdir().unwrap();
    let r = inspect_dir("queue", d.path(), &[]);
    assert_clean_failure(&r, "no files");

    make_log(d.path(), 3, small_opts()); // the journal itself
    let none = inspect_dir("queue", d.path(), &["--json"]);
    assert_eq!(none.code, 0, "{none:?}");
    assert_eq!(none.json()["present"], false);
    assert!(inspect_dir("queue", d.path(), &[])
        .stdout
        .contains("no work queue in this journal"));

    let q = WorkQueue::open(
        d.path(),
        QueueOptions {
            max_attempts: 2,
            ..QueueOptions::default()
        },
    )
    .unwrap();
    let ids: Vec<u64> = (0..5)
        .map(|i| q.enqueue(format!("job {i}").as_bytes()).unwrap())
        .collect();
    let a = q.claim("w1").unwrap().unwrap();
    q.ack(&a).unwrap();
    let held = q.claim("w1").unwrap().unwrap();
    let doomed = q.claim("w2").unwrap().unwrap();
    q.nack(&doomed, Duration::ZERO, "first failure").unwrap();
    let again = loop {
        let c = q.claim("w2").unwrap().unwrap();
        if c.id == doomed.id {
            break c;
        }
        q.nack(&c, Duration::ZERO, "not this one").unwrap();
    };
    q.nack(&again, Duration::ZERO, "boom: upstream 503")
        .unwrap();

    let r = inspect_dir("queue", d.path(), &["--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(v["present"], true);
    assert!(v["corruption"].is_null());
    let items: &Vec<Value> = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 5, "{v}");
    let item = |id: u64| items.iter().find(|i| i["id"] == id).unwrap();
    assert_eq!(item(a.id)["state"], "acked");
    assert_eq!(item(held.id)["state"], "in_flight");
    assert_eq!(item(held.id)["worker"], "w1");
    assert_eq!(item(doomed.id)["state"], "dead_lettered");
    assert_eq!(item(doomed.id)["attempts"], 2);
    assert_eq!(item(doomed.id)["last_error"], "boom: upstream 503");
    let dead = v["counts"]["dead_lettered"].as_u64().unwrap();
    assert_eq!(
        v["counts"],
        json!({
            "pending": 5 - 1 - 1 - dead,
            "in_flight": 1,
            "dead_lettered": dead,
            "acked": 1
        })
    );
    assert!(ids.contains(&doomed.id));

    let text = inspect_dir("queue", d.path(), &[]).stdout;
    assert!(
        text.contains("dead_lettered") && text.contains("boom: upstream 503"),
        "{text}"
    );
    assert!(text.contains("1 in flight"), "{text}");

    // `verify` covers the queue's log too; `dump` reads it raw.
    assert_eq!(
        inspect_dir("verify", d.path(), &["--json"]).json()["queue"]["ok"],
        true
    );
    assert!(!inspect_dir("dump", &d.path().join("queue"), &["--json"])
        .json_lines()
        .is_empty());
    drop(q);
}

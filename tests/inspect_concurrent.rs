//! `wal-inspect` while the owner appends: every read-only command succeeds,
//! never reports corruption for the tail being written, never blocks or
//! harms the writer; `repair` refuses because the journal is locked.

mod agent_support;
mod inspect_support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use agentwal::log::{Durability, Log, LogOptions, LogReader};
use inspect_support::*;

#[test]
fn inspect_while_the_owner_appends() {
    let d = tempfile::tempdir().unwrap();
    // Small segments: the writer rotates often, so the inspector races with
    // segment creation as well as with appends.
    let opts = LogOptions {
        segment_size: 16 << 10,
        max_record_bytes: 4096,
        ..LogOptions::default()
    };
    let log = Log::open(d.path(), opts).unwrap();
    log.append(b"first").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let appended = Arc::new(AtomicU64::new(1));
    let writer = {
        let (log, stop, appended) = (log.clone(), stop.clone(), appended.clone());
        thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let payload = format!("item-{i:06}-{}", "p".repeat((i % 700) as usize));
                if i.is_multiple_of(5) {
                    // A buffered batch, like a unit's begin + intent.
                    let a = payload.clone().into_bytes();
                    let b = payload.into_bytes();
                    log.append_batch(&[(0, &a), (0, &b)], Durability::Buffered)
                        .expect("batch");
                    appended.fetch_add(2, Ordering::Relaxed);
                } else {
                    log.append_with(0, payload.as_bytes(), Durability::Durable)
                        .expect("append");
                    appended.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        })
    };

    let mut last_records = 0;
    for round in 0..8u32 {
        let before = appended.load(Ordering::Relaxed);
        let s = inspect_dir("summary", d.path(), &["--json"]);
        assert_eq!(s.code, 0, "round {round}: {s:?}");
        let v = s.json();
        assert!(
            v["corruption"].is_null(),
            "round {round}: an append in progress is not corruption: {v}"
        );
        let records = v["records"].as_u64().unwrap();
        assert!(
            records >= last_records,
            "records went backwards: {records} < {last_records}"
        );
        assert!(records >= before.min(1), "round {round}");
        last_records = records;

        let r = inspect_dir("verify", d.path(), &["--json"]);
        assert_eq!(r.code, 0, "round {round}: {r:?}");

        let n = inspect_dir("dump", d.path(), &["--json"])
            .json_lines()
            .len() as u64;
        assert!(n >= records, "dump saw {n} records, summary {records}");

        if round.is_multiple_of(4) {
            let rep = inspect_dir("repair", d.path(), &[]);
            assert_clean_failure(&rep, "locked");
            assert!(
                rep.stderr.contains(&std::process::id().to_string()),
                "names the owner pid: {rep:?}"
            );
            let dry = inspect_dir("repair", d.path(), &["--dry-run", "--json"]);
            assert_eq!(dry.code, 0, "{dry:?}");
            assert_eq!(dry.json()["locked_by"], std::process::id());
        }
    }
    // The writer was never blocked by the inspector: it appends past what
    // the last inspection saw. On a loaded machine the inspections may have
    // caught up with a slow writer, so give it time instead of racing it
    // (a writer blocked for good still fails here).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while appended.load(Ordering::Relaxed) <= last_records && std::time::Instant::now() < deadline {
        thread::sleep(std::time::Duration::from_millis(5));
    }
    let during = appended.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("the writer never failed");
    let total = appended.load(Ordering::Relaxed);
    assert!(
        total > last_records,
        "the writer kept appending while inspected"
    );
    assert!(during > 1);
    log.close().unwrap();

    // Nothing was harmed: every record is there, in order, and the journal verifies.
    let reader = LogReader::open(d.path()).unwrap();
    assert_eq!(reader.scan().records(), total);
    assert!(reader.scan().corruption.is_none() && reader.scan().torn_tail.is_none());
    let mut lsn = 0;
    for r in reader.iter_from(1) {
        let r = r.unwrap();
        assert_eq!(r.lsn, lsn + 1);
        lsn = r.lsn;
    }
    assert_eq!(lsn, total);
    assert_eq!(inspect_dir("verify", d.path(), &[]).code, 0);
}

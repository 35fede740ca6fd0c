//! `wal-inspect` on log-level states: clean, torn tail, bit flips,
//! truncations, garbage segments, damaged snapshots; `verify` exit codes,
//! `summary --json` fields, `dump`, and `repair` (dry run, torn tail, lossy).

mod agent_support;
mod inspect_support;

use std::fs;
use std::path::Path;

use agentwal::log::{Log, LogOptions, LogReader};
use inspect_support::*;

const SUMMARY_FIELDS: [&str; 11] = [
    "segments",
    "records",
    "bytes",
    "first_lsn",
    "last_lsn",
    "units",
    "in_doubt_effects",
    "idempotency_keys",
    "torn_tail_bytes",
    "corruption",
    "torn_tail",
];

fn encoded_len(len: u64) -> u64 {
    (28 + len).div_ceil(8) * 8
}

/// End offset of the last record (where a torn tail would start).
fn end_of_log(dir: &Path, last: u64) -> (std::path::PathBuf, u64) {
    let r = inspect_dir("dump", dir, &["--from", &last.to_string(), "--json"]);
    let v = &r.json_lines()[0];
    (
        v["segment"].as_str().unwrap().into(),
        v["offset"].as_u64().unwrap() + encoded_len(v["len"].as_u64().unwrap()),
    )
}

#[test]
fn clean_journal_summary_verify_and_dump() {
    let d = tempfile::tempdir().unwrap();
    make_log(d.path(), 100, small_opts());
    let nseg = segments(d.path()).len();
    assert!(nseg >= 3, "test needs several segments, got {nseg}");

    let s = inspect_dir("summary", d.path(), &["--json"]);
    assert_eq!(s.code, 0, "{s:?}");
    let v = s.json();
    for f in SUMMARY_FIELDS {
        assert!(v.get(f).is_some(), "summary lacks {f}: {v}");
    }
    for f in ["committed", "aborted", "incomplete"] {
        assert!(v["units"][f].is_u64(), "units.{f}: {v}");
    }
    assert_eq!(v["segments"], nseg as u64);
    assert_eq!(v["records"], 100);
    assert_eq!(v["first_lsn"], 1);
    assert_eq!(v["last_lsn"], 100);
    assert!(v["bytes"].as_u64().unwrap() > 100 * 100);
    assert_eq!(v["torn_tail_bytes"], 0);
    assert!(v["corruption"].is_null());

    let t = inspect_dir("summary", d.path(), &[]);
    assert_eq!(t.code, 0);
    assert!(t.stdout.contains("records            100"), "{}", t.stdout);

    let r = inspect_dir("verify", d.path(), &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("OK"));
    let r = inspect_dir("verify", d.path(), &["--json"]);
    assert_eq!(r.code, 0);
    assert_eq!(r.json()["ok"], true);
    assert_eq!(r.json()["records"], 100);

    let all = inspect_dir("dump", d.path(), &["--json"]).json_lines();
    assert_eq!(all.len(), 100);
    for (i, rec) in all.iter().enumerate() {
        assert_eq!(rec["lsn"], i as u64 + 1);
        assert_eq!(rec["kind"], 0);
        let text = rec["payload"].as_str().unwrap();
        assert!(text.starts_with(&format!("record-{i:04} ")), "{rec}");
    }
    let some = inspect_dir(
        "dump",
        d.path(),
        &["--from", "42", "--limit", "5", "--json"],
    )
    .json_lines();
    let lsns: Vec<u64> = some.iter().map(|r| r["lsn"].as_u64().unwrap()).collect();
    assert_eq!(lsns, vec![42, 43, 44, 45, 46]);
    let text = inspect_dir("dump", d.path(), &["--from", "99"]);
    assert_eq!(text.stdout.lines().count(), 2, "{}", text.stdout);
    assert!(text.stdout.contains("record-0098"));
    let none = inspect_dir("dump", d.path(), &["--from", "1000"]);
    assert_eq!((none.code, none.stdout.as_str()), (0, ""));
}

#[test]
fn torn_tail_is_reported_not_corruption_and_repair_cuts_it() {
    let d = tempfile::tempdir().unwrap();
    make_log(d.path(), 50, small_opts());
    let (seg, end) = end_of_log(d.path(), 50);
    let garbage = vec![0xABu8; 40];
    let mut b = fs::read(&seg).unwrap();
    b[end as usize..end as usize + 40].copy_from_slice(&garbage);
    fs::write(&seg, &b).unwrap();

    let v = inspect_dir("summary", d.path(), &["--json"]).json();
    assert_eq!(v["torn_tail_bytes"], 40, "{v}");
    assert_eq!(v["torn_tail"]["offset"], end);
    assert!(v["corruption"].is_null(), "{v}");
    assert_eq!(v["records"], 50);
    let r = inspect_dir("verify", d.path(), &[]);
    assert_eq!(r.code, 0, "a torn tail is not corruption: {r:?}");
    assert!(r.stdout.contains("torn tail: 40 bytes"), "{}", r.stdout);

    // Dry run: reports, changes nothing.
    let before = snapshot_dir(d.path());
    let r = inspect_dir("repair", d.path(), &["--dry-run", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(v["action"], "cut_torn_tail");
    assert_eq!(v["dry_run"], true);
    assert_eq!(
        snapshot_dir(d.path()),
        before,
        "dry run changed the journal"
    );

    // Real repair: cut, saved, clean.
    let r = inspect_dir("repair", d.path(), &["--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(v["action"], "cut_torn_tail");
    assert_eq!(v["verified_after"], true);
    assert_eq!(v["records_kept"], 50);
    let saved = v["cut_saved_to"].as_str().expect("cut file path");
    assert!(saved.contains("cut-"), "{saved}");
    assert_eq!(fs::read(saved).unwrap(), garbage);
    let v = inspect_dir("summary", d.path(), &["--json"]).json();
    assert_eq!(
        (v["torn_tail_bytes"].as_u64(), v["records"].as_u64()),
        (Some(0), Some(50))
    );
    assert!(v["leftovers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l.as_str() == Some(saved)));
    // Nothing more to do.
    let r = inspect_dir("repair", d.path(), &["--json"]);
    assert_eq!(r.json()["action"], "nothing_to_do");
}

#[test]
fn bit_flip_in_sealed_segment_is_corruption_with_segment_and_offset() {
    let d = tempfile::tempdir().unwrap();
    make_log(d.path(), 100, small_opts());
    let (seg, off) = locate(d.path(), 10);
    assert_eq!(seg, segments(d.path())[0]);
    flip(&seg, off + 30); // inside the payload

    let r = inspect_dir("verify", d.path(), &["--json"]);
    assert_eq!(r.code, 1, "{r:?}");
    let v = r.json();
    assert_eq!(v["ok"], false);
    assert_eq!(v["corruption"]["segment"], seg.to_str().unwrap());
    assert_eq!(v["corruption"]["offset"], off);
    assert!(
        v["corruption"]["reason"]
            .as_str()
            .unwrap()
            .contains("checksum"),
        "{v}"
    );
    assert!(
        !v["unreachable"].as_array().unwrap().is_empty(),
        "later segments are unreachable: {v}"
    );

    let t = inspect_dir("verify", d.path(), &[]);
    assert_eq!(t.code, 1);
    assert!(
        t.stdout
            .contains(&format!("{} at offset {off}", seg.display())),
        "{}",
        t.stdout
    );

    let s = inspect_dir("summary", d.path(), &["--json"]);
    assert_eq!(s.code, 0);
    let v = s.json();
    assert_eq!(v["corruption"]["segment"], seg.to_str().unwrap());
    assert_eq!(v["corruption"]["offset"], off);
    assert_eq!(
        v["last_lsn"], 9,
        "the valid log stops before the damage: {v}"
    );
}

#[test]
fn bit_flip_in_header_of_record_followed_by_synced_records_is_corruption() {
    let d = tempfile::tempdir().unwrap();
    make_log(d.path(), 100, small_opts());
    let last_seg = segments(d.path()).pop().unwrap();
    let (seg, off) = locate(d.path(), 99);
    assert_eq!(seg, last_seg, "LSN 99 should be in the active segment");
    flip(&seg, off + 5); // the length field
    let r = inspect_dir("verify", d.path(), &["--json"]);
    assert_eq!(r.code, 1, "LSN 100 proves 99 was acknowledged: {r:?}");
    let v = r.json();
    assert_eq!(v["corruption"]["segment"], seg.to_str().unwrap());
    assert_eq!(v["corruption"]["offset"], off);
    assert!(v["torn_tail"].is_null());
}

#[test]
fn garbage_segment_is_corruption_at_offset_zero() {
    let d = tempfile::tempdir().unwrap();
    make_log(d.path(), 100, small_opts());
    let segs = segments(d.path());
    let mid = &segs[1];
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(mid, junk).unwrap();

    let r = inspect_dir("verify", d.path(), &["--json"]);
    assert_eq!(r.code, 1, "{r:?}");
    let v = r.json();
    assert_eq!(v["corruption"]["segment"], mid.to_str().unwrap());
    assert_eq!(v["corruption"]["offset"], 0);
    assert!(
        v["corruption"]["reason"]
            .as_str()
            .unwrap()
            .contains("magic"),
        "{v}"
    );
    let s = inspect_dir("summary", d.path(), &["--json"]).json();
    assert_eq!(s["corruption"]["segment"], mid.to_str().unwrap());
    let first_seg_records = inspect_dir("dump", d.path(), &["--json"])
        .json_lines()
        .len() as u64;
    assert_eq!(s["records"], first_seg_records);
    assert!(first_seg_records > 0 && first_seg_records < 100);

    // Refused without --lossy, and nothing changes.
    let before = snapshot_dir(d.path());
    let r = inspect_dir("repair", d.path(), &["--json"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.json()["action"], "refused");
    assert_eq!(snapshot_dir(d.path()), before);

    // Lossy: the garbage segment and every later one are set aside.
    let r = inspect_dir("repair", d.path(), &["--lossy", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(v["action"], "lossy_truncate");
    assert_eq!(v["verified_after"], true, "{v}");
    assert_eq!(v["records_kept"], first_seg_records);
    for s in &segs[1..] {
        assert!(!s.exists(), "{} should be set aside", s.display());
        assert!(s.with_extension("wal.dropped").exists());
    }
    assert_eq!(inspect_dir("verify", d.path(), &[]).code, 0);
    // The log opens and appends again.
    let log = Log::open(d.path(), small_opts()).unwrap();
    assert_eq!(log.next_lsn(), first_seg_records + 1);
}

#[test]
fn truncated_sealed_segment_is_corruption() {
    let d = tempfile::tempdir().unwrap();
    make_log(d.path(), 100, small_opts());
    let seg = &segments(d.path())[0];
    let (_, off) = locate(d.path(), 20);
    let f = fs::OpenOptions::new().write(true).open(seg).unwrap();
    f.set_len(off + 50).unwrap(); // mid-record
    drop(f);
    let r = inspect_dir("verify", d.path(), &["--json"]);
    assert_eq!(r.code, 1, "{r:?}");
    let v = r.json();
    assert_eq!(v["corruption"]["segment"], seg.to_str().unwrap());
    assert_eq!(v["corruption"]["offset"], off);
    assert!(!inspect_dir("summary", d.path(), &["--json"]).json()["corruption"].is_null());
}

#[test]
fn lossy_repair_says_exactly_what_is_dropped() {
    let d = tempfile::tempdir().unwrap();
    make_log(d.path(), 100, small_opts());
    let segs = segments(d.path());
    let (seg, off) = locate(d.path(), 10);
    flip(&seg, off + 30);

    let dry = inspect_dir("repair", d.path(), &["--lossy", "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    let v = dry.json();
    assert_eq!(v["action"], "lossy_truncate");
    assert_eq!(v["dropped_from_lsn"], 10);
    let dropped: Vec<&str> = v["dropped_segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["segment"].as_str().unwrap())
        .collect();
    let later: Vec<String> = segs[1..].iter().map(|p| p.display().to_string()).collect();
    assert_eq!(dropped, later);
    let lost_readable: u64 = v["dropped_segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["records"].as_u64().unwrap())
        .sum();
    assert!(lost_readable > 0);
    // LSN 11..=100 are all still readable and all lost with the cut.
    assert_eq!(v["readable_records_lost"], 90, "{v}");
    assert!(v["dropped_bytes"].as_u64().unwrap() > 0);
    let text = inspect_dir("repair", d.path(), &["--lossy", "--dry-run"]).stdout;
    assert!(text.contains("records from LSN 10 on are lost"), "{text}");

    let refused = inspect_dir("repair", d.path(), &[]);
    assert_eq!(refused.code, 1);
    assert!(refused.stdout.contains("REFUSED"), "{}", refused.stdout);
    assert!(refused.stdout.contains("--lossy"), "{}", refused.stdout);

    let r = inspect_dir("repair", d.path(), &["--lossy", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(v["records_kept"], 9);
    assert_eq!(v["last_lsn_kept"], 9);
    assert_eq!(v["verified_after"], true);
    let reader = LogReader::open(d.path()).unwrap();
    assert_eq!(reader.scan().last_lsn(), Some(9));
}

#[test]
fn damaged_snapshot_is_corruption() {
    let d = tempfile::tempdir().unwrap();
    let log = Log::open(d.path(), small_opts()).unwrap();
    for i in 0..60 {
        log.append(format!("r{i}").as_bytes()).unwrap();
    }
    let snap = log.write_snapshot(50, b"journal state at 50").unwrap();
    log.truncate_before(51).unwrap();
    drop(log);
    let v = inspect_dir("summary", d.path(), &["--json"]).json();
    assert_eq!(v["snapshot_lsn"], 50);
    assert!(v["corruption"].is_null());
    assert_eq!(inspect_dir("verify", d.path(), &[]).code, 0);

    flip(&snap, 45);
    let r = inspect_dir("verify", d.path(), &["--json"]);
    assert_eq!(r.code, 1, "{r:?}");
    let v = r.json();
    assert_eq!(v["corruption"]["segment"], snap.to_str().unwrap());
    let s = inspect_dir("summary", d.path(), &["--json"]).json();
    assert_eq!(s["corruption"]["segment"], snap.to_str().unwrap());
    assert_eq!(s["last_lsn"], 60, "segments are still reported: {s}");
    let r = inspect_dir("repair", d.path(), &["--lossy"]);
    assert_eq!(r.code, 1, "a damaged snapshot is never repaired: {r:?}");
    assert!(r.stdout.contains("snapshot"), "{}", r.stdout);
}

#[test]
fn repair_keeps_preallocated_segment_size() {
    let d = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_size: 8192,
        ..small_opts()
    };
    make_log(d.path(), 10, opts);
    let (seg, end) = end_of_log(d.path(), 10);
    let mut b = fs::read(&seg).unwrap();
    b[end as usize] = 7;
    fs::write(&seg, &b).unwrap();
    let r = inspect_dir("repair", d.path(), &["--json"]);
    assert_eq!(r.json()["action"], "cut_torn_tail", "{r:?}");
    assert_eq!(fs::metadata(&seg).unwrap().len(), 8192);
}

#[test]
fn help_has_examples_for_every_command() {
    let top = inspect(&["--help"]);
    assert_eq!(top.code, 0);
    for cmd in [
        "summary", "verify", "units", "show", "dump", "keys", "queue", "repair",
    ] {
        assert!(top.stdout.contains(cmd), "top-level help lists {cmd}");
        let h = inspect(&[cmd, "--help"]);
        assert_eq!(h.code, 0, "{cmd}: {h:?}");
        assert!(
            h.stdout.contains("Examples:"),
            "{cmd} --help has examples: {}",
            h.stdout
        );
        assert!(
            h.stdout.contains(&format!("wal-inspect {cmd}")),
            "{cmd}: {}",
            h.stdout
        );
    }
}

#[test]
fn verify_covers_the_work_queue_log() {
    let d = tempfile::tempdir().unwrap();
    make_log(d.path(), 20, small_opts());
    let q = d.path().join("queue");
    make_log(&q, 30, small_opts());
    let r = inspect_dir("verify", d.path(), &["--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["queue"]["records"], 30);
    assert!(inspect_dir("verify", d.path(), &[])
        .stdout
        .contains("work queue log:"));

    let (seg, off) = locate(&q, 5);
    flip(&seg, off + 40);
    let r = inspect_dir("verify", d.path(), &["--json"]);
    assert_eq!(r.code, 1, "queue corruption fails verify: {r:?}");
    let v = r.json();
    assert_eq!(v["ok"], false);
    assert!(
        v["corruption"].is_null(),
        "the journal itself is clean: {v}"
    );
    assert_eq!(v["queue"]["corruption"]["segment"], seg.to_str().unwrap());
    assert_eq!(v["queue"]["corruption"]["offset"], off);
}

#[test]
fn torn_segment_creation_is_a_torn_tail_and_repair_removes_it() {
    let d = tempfile::tempdir().unwrap();
    make_log(d.path(), 10, small_opts());
    // A crash right after creating the next segment, before its header was durable.
    let torn = d.path().join("00000000000000000011.wal");
    fs::write(&torn, vec![0u8; 4096]).unwrap();
    let v = inspect_dir("summary", d.path(), &["--json"]).json();
    assert!(v["corruption"].is_null(), "{v}");
    assert_eq!(v["torn_tail"]["whole_segment"], true, "{v}");
    assert_eq!(v["records"], 10);
    assert_eq!(inspect_dir("verify", d.path(), &[]).code, 0);
    let r = inspect_dir("repair", d.path(), &["--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["action"], "removed_torn_segment");
    assert_eq!(r.json()["verified_after"], true);
    assert!(!torn.exists());
    let log = Log::open(d.path(), small_opts()).unwrap();
    assert_eq!(log.next_lsn(), 11);
}

#[test]
fn bit_flip_in_record_padding_is_corruption_with_segment_and_offset() {
    let d = tempfile::tempdir().unwrap();
    make_log(d.path(), 100, small_opts());
    let (seg, off) = locate(d.path(), 10);
    assert_eq!(seg, segments(d.path())[0]);
    // 72-byte payloads: header + payload end at 100, padding is 100..104.
    assert_eq!(encoded_len(72), 104);
    flip(&seg, off + 101);

    let r = inspect_dir("verify", d.path(), &["--json"]);
    assert_eq!(r.code, 1, "{r:?}");
    let v = r.json();
    assert_eq!(v["corruption"]["segment"], seg.to_str().unwrap());
    assert_eq!(v["corruption"]["offset"], off);
}

//! Black-box acceptance of `wal-inspect` on journals written by the real
//! `batch_agent`: reading never modifies a journal; a torn or garbage tail is
//! repaired (the cut bytes kept) and the agent resumes; a flipped bit in
//! acknowledged data is corruption named by segment and offset, which the
//! agent and a plain repair refuse without touching anything.
#![cfg(feature = "tokio")]

mod agent_support;

use std::path::Path;

use agent_support::*;
use std::time::Duration;

const SEG: &str = "00000000000000000001.wal";

/// Every file of the directory: name, bytes, mtime.
fn snapshot_dir(dir: &Path) -> Vec<(String, Vec<u8>, std::time::SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            let bytes = if m.is_file() {
                std::fs::read(e.path()).unwrap()
            } else {
                Vec::new()
            };
            (
                e.file_name().to_string_lossy().into_owned(),
                bytes,
                m.modified().unwrap(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Offset and length of the last record, from `dump --json`.
fn last_record(j: &Path) -> (u64, u64) {
    let o = inspect(&["dump", "--json"], j);
    assert!(o.status.success(), "{o:?}");
    let out = text(&o.stdout);
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    (
        last["offset"].as_u64().unwrap(),
        last["len"].as_u64().unwrap(),
    )
}

fn assert_all_sent_once(sink: &Path, n: u32) {
    let keys: std::collections::BTreeSet<String> =
        sink_lines(sink).into_iter().map(|(k, _)| k).collect();
    for i in 0..n {
        assert!(
            keys.contains(&format!("record-{i:06}/send/1")),
            "record {i} never sent"
        );
    }
}

#[test]
fn reading_never_modifies_the_journal() {
    let bin = batch_agent();
    let (_d, j, sink) = agent_dir();
    // Leave an incomplete unit and a torn tail: the states a reader must not "fix".
    assert!(agent(&bin, &j, &sink, 20, 0)
        .output()
        .unwrap()
        .status
        .success());
    let (off, _) = last_record(&j);
    let seg = j.join(SEG);
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(off + 10).unwrap();
    drop(f);
    let before = snapshot_dir(&j);
    std::thread::sleep(Duration::from_millis(20));
    let cmds: &[&[&str]] = &[
        &["summary"],
        &["verify"],
        &["units"],
        &["units", "--state", "incomplete"],
        &["show", "record-000003"],
        &["dump"],
        &["dump", "--from", "5", "--limit", "3"],
        &["keys"],
        &["queue"],
        &["repair", "--dry-run"],
    ];
    for c in cmds {
        for json_flag in [false, true] {
            let mut args = c.to_vec();
            if json_flag {
                args.push("--json");
            }
            let o = inspect(&args, &j);
            assert_eq!(o.status.code(), Some(0), "{args:?}: {o:?}");
            if json_flag && c[0] != "dump" {
                json(&o);
            }
        }
    }
    assert!(
        snapshot_dir(&j) == before,
        "a read-only command changed the journal"
    );
}

#[test]
fn a_torn_or_garbage_tail_is_repaired_with_a_copy_and_the_agent_resumes() {
    let bin = batch_agent();
    let d = tempfile::tempdir().unwrap();
    for damage in ["truncate", "garbage"] {
        let j = d.path().join(damage);
        let sink = d.path().join(format!("{damage}.txt"));
        assert!(agent(&bin, &j, &sink, 20, 0)
            .output()
            .unwrap()
            .status
            .success());
        let (off, len) = last_record(&j);
        let seg = j.join(SEG);
        let mut bytes = std::fs::read(&seg).unwrap();
        if damage == "truncate" {
            bytes.truncate((off + 20) as usize); // mid-record
        } else {
            let at = (off + 28 + len).div_ceil(8) as usize * 8;
            for (i, b) in bytes[at..at + 300].iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(37) | 1;
            }
        }
        std::fs::write(&seg, &bytes).unwrap();

        let v = inspect(&["verify"], &j);
        assert_eq!(v.status.code(), Some(0), "{damage}: {v:?}");
        assert!(text(&v.stdout).contains("torn tail"), "{damage}: {v:?}");
        let s = json(&inspect(&["summary", "--json"], &j));
        assert!(s["corruption"].is_null(), "{s}");
        let torn = s["torn_tail_bytes"].as_u64().unwrap();
        assert!(torn > 0, "{damage}: {s}");

        let r = inspect(&["repair", "--json"], &j);
        assert_eq!(r.status.code(), Some(0), "{damage}: {r:?}");
        let cut = std::fs::read_dir(&j)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("cut-"))
            .unwrap_or_else(|| panic!("{damage}: no cut-*.bin kept"));
        let kept = std::fs::read(&cut).unwrap();
        let rj = json(&r);
        let from = rj["torn_tail"]["offset"].as_u64().unwrap() as usize;
        assert!(
            from as u64 >= off,
            "{damage}: cut before the last record: {rj}"
        );
        assert_eq!(
            kept[..],
            bytes[from..from + kept.len()],
            "{damage}: the copy differs"
        );
        assert_eq!(inspect(&["verify"], &j).status.code(), Some(0));

        let o = agent(&bin, &j, &sink, 25, 0).output().unwrap();
        assert!(o.status.success(), "{damage}: {}", text(&o.stderr));
        let s = json(&inspect(&["summary", "--json"], &j));
        assert_eq!(s["units"]["committed"], 25, "{damage}: {s}");
        assert_eq!(s["units"]["incomplete"], 0, "{damage}: {s}");
        assert_all_sent_once(&sink, 25);
    }
}

#[test]
fn a_flipped_bit_in_acknowledged_data_is_corruption_everyone_refuses() {
    let bin = batch_agent();
    let (_d, j, sink) = agent_dir();
    assert!(agent(&bin, &j, &sink, 30, 0)
        .output()
        .unwrap()
        .status
        .success());
    let seg = j.join(SEG);
    let mut bytes = std::fs::read(&seg).unwrap();
    let (last, _) = last_record(&j);
    let at = (last / 2) as usize;
    bytes[at] ^= 0x10;
    std::fs::write(&seg, &bytes).unwrap();
    // The refused agent may rewrite its pid into LOCK; nothing else may change.
    let unlocked = |v: Vec<(String, Vec<u8>, std::time::SystemTime)>| {
        v.into_iter().filter(|f| f.0 != "LOCK").collect::<Vec<_>>()
    };
    let before = unlocked(snapshot_dir(&j));

    let v = inspect(&["verify"], &j);
    assert_eq!(v.status.code(), Some(1), "{v:?}");
    assert!(
        text(&v.stdout).contains(SEG) && text(&v.stdout).contains("offset"),
        "{v:?}"
    );
    let s = json(&inspect(&["summary", "--json"], &j));
    let c = &s["corruption"];
    assert!(c["segment"].as_str().unwrap().ends_with(SEG), "{s}");
    let off = c["offset"].as_u64().unwrap();
    assert!(off <= at as u64 && at as u64 - off < 512, "{s}");
    assert!(c["reason"].is_string(), "{s}");

    let o = agent(&bin, &j, &sink, 30, 0).output().unwrap();
    assert_clean_error(&o, "corruption");
    let r = inspect(&["repair"], &j);
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    assert!(
        unlocked(snapshot_dir(&j)) == before,
        "a refused open or repair changed the journal"
    );
}

//! Bad input never panics: a missing path, a file, an empty directory, a
//! directory of unrelated files, a newer format, unreadable files. Each is
//! one clear line on stderr and exit code 2, for every command.

mod agent_support;
mod inspect_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use inspect_support::*;

const COMMANDS: [&str; 7] = [
    "summary", "verify", "units", "dump", "keys", "queue", "repair",
];

fn every_command_fails_cleanly(dir: &Path, needle: &str) {
    for cmd in COMMANDS {
        for json in [false, true] {
            let extra: &[&str] = if json { &["--json"] } else { &[] };
            let r = inspect_dir(cmd, dir, extra);
            assert_clean_failure(&r, needle);
        }
    }
    let r = inspect(&["show".as_ref(), dir.as_os_str(), "unit-1".as_ref()]);
    assert_clean_failure(&r, needle);
}

#[test]
fn missing_directory() {
    let d = tempfile::tempdir().unwrap();
    every_command_fails_cleanly(&d.path().join("nope"), "no such directory");
}

#[test]
fn a_file_instead_of_a_directory() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("journal");
    fs::write(&f, b"not a journal").unwrap();
    every_command_fails_cleanly(&f, "it is a file");
    assert_eq!(fs::read(&f).unwrap(), b"not a journal");
}

#[test]
fn empty_directory_is_not_a_journal_and_repair_creates_nothing() {
    let d = tempfile::tempdir().unwrap();
    every_command_fails_cleanly(d.path(), "holds no files");
    assert_eq!(
        fs::read_dir(d.path()).unwrap().count(),
        0,
        "nothing may be created"
    );
}

#[test]
fn directory_of_unrelated_files() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("notes.txt"), b"hello").unwrap();
    fs::write(d.path().join("data.bin"), [0xFFu8; 300]).unwrap();
    fs::write(d.path().join("123.wal"), [0x55u8; 64]).unwrap(); // wrong name pattern
    every_command_fails_cleanly(d.path(), "no segment");
}

#[test]
fn newer_format_version_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    make_log(d.path(), 3, small_opts());
    let seg = &segments(d.path())[0];
    let mut b = fs::read(seg).unwrap();
    b[8..12].copy_from_slice(&9u32.to_le_bytes());
    let crc = crc32fast::hash(&b[0..24]);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    fs::write(seg, b).unwrap();
    for cmd in ["summary", "verify", "dump", "repair"] {
        assert_clean_failure(&inspect_dir(cmd, d.path(), &[]), "format version 9");
    }
}

#[test]
fn garbage_values_in_options_are_usage_errors() {
    let d = tempfile::tempdir().unwrap();
    make_log(d.path(), 3, small_opts());
    for args in [
        vec!["dump", "DIR", "--from", "-4"],
        vec!["dump", "DIR", "--limit", "lots"],
        vec!["units", "DIR", "--state", "sleeping"],
        vec!["frobnicate", "DIR"],
    ] {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if *a == "DIR" {
                    d.path().display().to_string()
                } else {
                    a.to_string()
                }
            })
            .collect();
        let r = inspect(&args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(!r.stderr.contains("panicked"), "{r:?}");
    }
}

fn running_as_root() -> bool {
    let o = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&o.stdout).trim() == "0"
}

/// Runs wal-inspect as an unprivileged user (root reads everything).
fn inspect_unprivileged(args: &[&str]) -> Run {
    let bin = agent_support::wal_inspect();
    let o = if running_as_root() {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin)
            .args(args)
            .output()
            .expect("setpriv")
    } else {
        Command::new(bin).args(args).output().expect("run")
    };
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[test]
fn permission_denied_is_one_line_exit_2() {
    let d = tempfile::tempdir().unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let j = d.path().join("journal");
    make_log(&j, 5, small_opts());

    // The directory itself cannot be listed.
    fs::set_permissions(&j, fs::Permissions::from_mode(0o000)).unwrap();
    let p = j.to_str().unwrap();
    for cmd in ["summary", "verify", "dump", "repair"] {
        let r = inspect_unprivileged(&[cmd, p]);
        assert_clean_failure(&r, "ermission denied");
    }

    // The directory is readable, a segment is not.
    fs::set_permissions(&j, fs::Permissions::from_mode(0o755)).unwrap();
    for s in segments(&j) {
        fs::set_permissions(&s, fs::Permissions::from_mode(0o000)).unwrap();
    }
    for cmd in ["summary", "verify", "dump"] {
        let r = inspect_unprivileged(&[cmd, p]);
        assert_clean_failure(&r, "ermission denied");
    }
    fs::set_permissions(&j, fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn garbage_files_named_like_segments_are_not_a_journal() {
    let d = tempfile::tempdir().unwrap();
    let junk: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    fs::write(d.path().join("00000000000000000001.wal"), &junk).unwrap();
    fs::write(d.path().join("00000000000000000090.wal"), &junk[..100]).unwrap();
    every_command_fails_cleanly(
        d.path(),
        "none of its 2 segment file(s) is an agentwal segment",
    );
    // One real segment among them makes it a damaged journal instead.
    let e = tempfile::tempdir().unwrap();
    make_log(e.path(), 5, small_opts());
    fs::write(e.path().join("00000000000000000090.wal"), &junk).unwrap();
    let r = inspect_dir("verify", e.path(), &[]);
    assert_eq!(r.code, 1, "{r:?}");
}

/// Every file of `dir` (recursively) overwritten with pseudo-random bytes of
/// the same size, as a disk-wiping bug or a wrong `dd` would leave it.
fn overwrite_every_file(dir: &Path, seed: &mut u64) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            overwrite_every_file(&p, seed);
            continue;
        }
        let len = fs::metadata(&p).unwrap().len() as usize;
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                // xorshift64*: deterministic, no dependency.
                *seed ^= *seed >> 12;
                *seed ^= *seed << 25;
                *seed ^= *seed >> 27;
                (seed.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect();
        fs::write(&p, junk).unwrap();
    }
}

#[test]
fn a_journal_whose_files_are_all_garbage_is_not_a_journal() {
    use agentwal::journal::{Effect, Journal, JournalOptions};
    use agentwal::queue::{QueueOptions, WorkQueue};
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    for i in 0..20u64 {
        let mut u = j
            .begin(
                &format!("unit-{i}"),
                "record",
                &serde_json::json!({ "n": i }),
            )
            .unwrap();
        u.run(Effect::retry_same_key("send"), |_| Ok::<_, String>(i))
            .unwrap();
        u.commit().unwrap();
        if i == 10 {
            j.compact().unwrap();
        }
    }
    drop(j);
    let q = WorkQueue::open(d.path(), QueueOptions::default()).unwrap();
    q.enqueue(b"item").unwrap();
    q.close().unwrap();
    // The real journal is fine (and has a LOCK, segments, a snapshot, a queue).
    assert_eq!(inspect_dir("verify", d.path(), &[]).code, 0);
    let names: Vec<String> = fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n == "LOCK"), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with(".snap")), "{names:?}");
    assert!(names.iter().any(|n| n.ends_with(".wal")), "{names:?}");

    for seed in [1u64, 0x9E37_79B9_7F4A_7C15, 42] {
        let copy = tempfile::tempdir().unwrap();
        let mut s = seed;
        copy_dir(d.path(), copy.path());
        overwrite_every_file(copy.path(), &mut s);
        let before = snapshot_dir(copy.path());
        every_command_fails_cleanly(copy.path(), "is not a journal directory");
        // Not even `repair` touched a byte (or created a file).
        assert_eq!(snapshot_dir(copy.path()), before);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let t = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &t);
        } else {
            fs::copy(&p, &t).unwrap();
        }
    }
}

#[test]
fn a_work_queue_whose_files_are_all_garbage_is_bad_input_not_an_empty_queue() {
    use agentwal::queue::{QueueOptions, WorkQueue};
    let d = tempfile::tempdir().unwrap();
    make_log(d.path(), 3, small_opts());
    let q = WorkQueue::open(d.path(), QueueOptions::default()).unwrap();
    q.enqueue(b"item").unwrap();
    q.close().unwrap();
    assert_eq!(inspect_dir("queue", d.path(), &[]).code, 0);
    overwrite_every_file(&d.path().join("queue"), &mut 7);
    for cmd in ["queue", "verify"] {
        let r = inspect_dir(cmd, d.path(), &[]);
        assert_clean_failure(&r, "queue is not a journal directory");
    }
    // The journal itself still reads.
    assert_eq!(inspect_dir("summary", d.path(), &[]).code, 0);
}

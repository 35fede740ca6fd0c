//! Shared helpers of the `inspect_*` integration tests: build journals with
//! the library, damage them, run the `wal-inspect` binary.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use agentwal::log::{Durability, Log, LogOptions};

/// Small segments so a few dozen records span several of them.
pub fn small_opts() -> LogOptions {
    LogOptions {
        segment_size: 4096,
        max_record_bytes: 1024,
        ..LogOptions::default()
    }
}

/// Writes `n` durable records `record-<i>` (kind 0) and closes the log.
pub fn make_log(dir: &Path, n: usize, opts: LogOptions) {
    let log = Log::open(dir, opts).expect("open log");
    for i in 0..n {
        log.append_with(
            0,
            format!("record-{i:04} {}", "x".repeat(60)).as_bytes(),
            Durability::Durable,
        )
        .expect("append");
    }
    log.close().expect("close");
}

/// Segment files of `dir`, sorted.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

/// Result of one `wal-inspect` run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout parsed as one JSON document.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", self.stdout))
    }
    /// stdout parsed as JSON lines.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line ({e}): {l}")))
            .collect()
    }
}

fn to_run(o: Output) -> Run {
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Runs `wal-inspect` with `args`.
pub fn inspect<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    let o = Command::new(crate::agent_support::wal_inspect())
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run wal-inspect");
    to_run(o)
}

/// Runs `wal-inspect <cmd> <dir> [extra...]`.
pub fn inspect_dir(cmd: &str, dir: &Path, extra: &[&str]) -> Run {
    let mut args: Vec<std::ffi::OsString> = vec![cmd.into(), dir.into()];
    args.extend(extra.iter().map(Into::into));
    inspect(&args)
}

/// Asserts the shape of a bad-input failure: exit 2, one line on stderr,
/// nothing on stdout, no panic or backtrace.
pub fn assert_clean_failure(r: &Run, needle: &str) {
    assert_eq!(r.code, 2, "{r:?}");
    assert_eq!(
        r.stderr.lines().count(),
        1,
        "stderr must be one line: {r:?}"
    );
    assert!(r.stdout.is_empty(), "{r:?}");
    assert!(
        !r.stderr.contains("panicked") && !r.stderr.contains("backtrace"),
        "{r:?}"
    );
    assert!(
        r.stderr.contains(needle),
        "stderr should mention {needle:?}: {r:?}"
    );
}

/// Flips one bit at `offset` of `path`.
pub fn flip(path: &Path, offset: u64) {
    let mut b = fs::read(path).unwrap();
    b[offset as usize] ^= 0x10;
    fs::write(path, b).unwrap();
}

/// Offset and segment of record `lsn`, from `dump --json`.
pub fn locate(dir: &Path, lsn: u64) -> (PathBuf, u64) {
    let r = inspect_dir(
        "dump",
        dir,
        &["--from", &lsn.to_string(), "--limit", "1", "--json"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let v = &r.json_lines()[0];
    assert_eq!(v["lsn"], lsn);
    (
        PathBuf::from(v["segment"].as_str().unwrap()),
        v["offset"].as_u64().unwrap(),
    )
}

/// Every file of `dir` with its bytes (to prove nothing changed).
pub fn snapshot_dir(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let b = fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    v
}

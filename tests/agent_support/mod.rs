//! Shared by the tests that run the demo agent (`examples/batch_agent.rs`)
//! as a child process. Each test binary uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Builds the example with the profile and features of this test binary
/// (so the library is not rebuilt) and returns the path of its executable.
pub fn batch_agent() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/kill_batch_agent-<hash>
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The same feature set as this test binary, so the library is not rebuilt.
    let mut features = vec!["cli", "tokio"];
    if cfg!(feature = "http") {
        features.push("http");
    }
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--example", "batch_agent"])
        .args(["--no-default-features", "--features", &features.join(",")])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build --example batch_agent failed");
    let path = profile_dir.join("examples").join("batch_agent");
    assert!(path.exists(), "{} not found", path.display());
    path
}

pub fn agent(bin: &Path, journal: &Path, sink: &Path, records: u32, work_ms: u64) -> Command {
    let mut c = Command::new(bin);
    c.arg("--journal")
        .arg(journal)
        .arg("--sink")
        .arg(sink)
        .args(["--records", &records.to_string()])
        .args(["--work-ms", &work_ms.to_string()])
        .env_remove("SHUTDOWN_TIMEOUT")
        .stdin(Stdio::null());
    c
}

pub fn inspect(args: &[&str], journal: &Path) -> Output {
    let (cmd, rest) = args.split_first().unwrap();
    Command::new(env!("CARGO_BIN_EXE_wal-inspect"))
        .arg(cmd)
        .arg(journal)
        .args(rest)
        .output()
        .unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): stdout {:?} stderr {:?}",
            text(&o.stdout),
            text(&o.stderr)
        )
    })
}

/// A clean failure: exit 2, a one-line `error:` on stderr, no panic.
pub fn assert_clean_error(o: &Output, needle: &str) {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(!err.contains("RUST_BACKTRACE"), "panic: {err}");
    assert!(err.contains(needle), "{needle:?} not in stderr: {err}");
}

pub fn sink_lines(sink: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(sink)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (k, p) = l.split_once('\t').expect("key<TAB>payload");
            (k.to_string(), p.to_string())
        })
        .collect()
}

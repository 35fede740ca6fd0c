//! Shared by the tests that run the demo agent (`examples/batch_agent.rs`)
//! as a child process.

use std::path::PathBuf;
use std::process::Command;

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

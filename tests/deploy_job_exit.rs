//! The demo's exit codes as a Kubernetes Job sees them: by default a SIGTERM
//! exits 0 whether or not the batch was finished (DESIGN's contract); with
//! `--exit-code-unfinished N` / `AGENTWAL_UNFINISHED_EXIT=N` (what
//! `deploy/kubernetes.yaml` sets) a shutdown that leaves records exits N,
//! and a finished batch still exits 0. Also the hand-written argument parser:
//! usage errors exit 2, `--help` exits 0.
#![cfg(feature = "tokio")]

mod agent_support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use agent_support::{agent, batch_agent, text};

/// Starts the agent on a long batch, waits until it is working, SIGTERMs it
/// and returns its exit status.
fn sigterm_mid_batch(bin: &Path, dir: &Path, extra: &[&str], env: Option<&str>) -> ExitStatus {
    let mut cmd = agent(bin, &dir.join("journal"), &dir.join("sink"), 100_000, 5);
    cmd.args(extra)
        .env_remove("AGENTWAL_UNFINISHED_EXIT")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(v) = env {
        cmd.env("AGENTWAL_UNFINISHED_EXIT", v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.starts_with("batch_agent:"), "{first}");
    // Let a few records commit, then stop it as the kubelet would.
    std::thread::sleep(Duration::from_millis(200));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let rest: Vec<String> = out.lines().map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.starts_with("shutdown (SIGTERM)")),
        "{rest:?}"
    );
    status
}

#[test]
fn sigterm_exit_code_is_zero_by_default_and_the_opt_in_code_when_unfinished() {
    let bin = batch_agent();
    let tmp = tempfile::tempdir().unwrap();

    let default = sigterm_mid_batch(&bin, &tmp.path().join("a"), &[], None);
    assert_eq!(default.code(), Some(0), "DESIGN: SIGTERM exits 0");

    let flag = sigterm_mid_batch(
        &bin,
        &tmp.path().join("b"),
        &["--exit-code-unfinished", "75"],
        None,
    );
    assert_eq!(flag.code(), Some(75), "drained, not finished");

    let env = sigterm_mid_batch(&bin, &tmp.path().join("c"), &[], Some("75"));
    assert_eq!(env.code(), Some(75), "AGENTWAL_UNFINISHED_EXIT");
}

#[test]
fn a_finished_batch_exits_zero_even_with_the_opt_in_code() {
    let bin = batch_agent();
    let tmp = tempfile::tempdir().unwrap();
    let out = agent(&bin, &tmp.path().join("j"), &tmp.path().join("s"), 20, 0)
        .env("AGENTWAL_UNFINISHED_EXIT", "75")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("20/20 committed"));
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let bin = batch_agent();
    let help = Command::new(&bin).arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    let usage = text(&help.stdout);
    for flag in [
        "--journal",
        "--sink",
        "--records",
        "--work-ms",
        "--exit-code-unfinished",
    ] {
        assert!(usage.contains(flag), "{flag} missing from --help: {usage}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let j = tmp.path().join("j");
    let s = tmp.path().join("s");
    let bad: [&[&str]; 5] = [
        &["--sink", "x"],
        &["--journal", "x"],
        &["--bogus"],
        &["--records", "many"],
        &["--exit-code-unfinished", "0"],
    ];
    for args in bad {
        let mut cmd = Command::new(&bin);
        if !args.contains(&"--journal") && args.contains(&"--sink") {
            // missing --journal
        } else if !args.contains(&"--journal") {
            cmd.arg("--journal").arg(&j);
        }
        if !args.contains(&"--sink") && args.contains(&"--journal") {
            // missing --sink
        } else if !args.contains(&"--sink") {
            cmd.arg("--sink").arg(&s);
        }
        let out = cmd.args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stderr).contains("error:"), "{args:?}");
    }
    assert!(!j.exists(), "a usage error must not create the journal");
    // `--flag=value` works too.
    let ok = Command::new(&bin)
        .arg(format!("--journal={}", j.display()))
        .arg(format!("--sink={}", s.display()))
        .args(["--records=3", "--work-ms=0"])
        .env_remove("SHUTDOWN_TIMEOUT")
        .env_remove("AGENTWAL_UNFINISHED_EXIT")
        .output()
        .unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
}

#[test]
fn rust_log_traces_on_stderr_and_leaves_stdout_as_it_was() {
    let bin = batch_agent();
    let tmp = tempfile::tempdir().unwrap();
    let out = agent(&bin, &tmp.path().join("j"), &tmp.path().join("s"), 3, 0)
        .env("RUST_LOG", "agentwal=debug")
        .env_remove("AGENTWAL_UNFINISHED_EXIT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("journal replayed"), "{stderr}");
    assert!(stderr.contains("unit committed"), "{stderr}");
    assert!(stderr.contains("key=record-000000/send/1"), "{stderr}");

    // Without RUST_LOG: nothing on stderr.
    let quiet = agent(&bin, &tmp.path().join("j2"), &tmp.path().join("s2"), 3, 0)
        .env_remove("RUST_LOG")
        .env_remove("AGENTWAL_UNFINISHED_EXIT")
        .output()
        .unwrap();
    assert_eq!(quiet.status.code(), Some(0));
    assert_eq!(text(&quiet.stderr), "", "silent without RUST_LOG");
    // stdout has the same lines (up to their numbers) with or without it.
    let shape = |s: &str| -> Vec<String> {
        s.lines()
            .map(|l| l.split(':').next().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(
        shape(&stdout),
        shape(&text(&quiet.stdout)),
        "a log line leaked to stdout:\n{stdout}"
    );
}

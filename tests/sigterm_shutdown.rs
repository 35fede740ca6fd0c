//! Real signals delivered to a real process: the first SIGTERM/SIGINT stops
//! new units and lets the unit in progress finish (exit 0 / 130); a second
//! signal exits at once. The test binary re-runs itself as the child process
//! (selected by an environment variable), so no extra binary is needed.

mod agent_support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::{signal, stdout_lines};
use agentwal::runtime::Shutdown;

const CHILD_ENV: &str = "AGENTWAL_SIGTEST_CHILD";

/// The child's body. Does nothing unless started by the tests below.
#[test]
fn child_main() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let shutdown = Shutdown::install_thread().expect("install signal handlers");
    if mode == "stuck-deadline" {
        shutdown.set_exit_at_deadline(true);
    }
    println!("ready");
    let mut units = 0u64;
    loop {
        let Ok(guard) = shutdown.begin_unit() else {
            break;
        };
        if mode.starts_with("stuck") {
            println!("unit-started");
            // A unit that never finishes: only the second signal ends the process.
            std::thread::sleep(Duration::from_secs(120));
        }
        std::thread::sleep(Duration::from_millis(20));
        units += 1;
        drop(guard);
    }
    let w = shutdown.wait_units_blocking();
    println!("clean units={units} outstanding={}", w.outstanding);
    std::process::exit(shutdown.exit_code());
}

type Lines = std::sync::mpsc::Receiver<String>;

fn spawn(mode: &str, timeout: &str) -> (Child, Lines) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .env("SHUTDOWN_TIMEOUT", timeout)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let (lines, _) = stdout_lines(&mut child);
    if let Err(e) = std::panic::catch_unwind(|| wait_line(&lines, "ready")) {
        let _ = child.kill();
        std::panic::resume_unwind(e);
    }
    (child, lines)
}

fn wait_line(lines: &Lines, want: &str) -> String {
    loop {
        match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.contains(want) => return line,
            Ok(_) => {}
            Err(e) => panic!("child printed no {want:?} ({e})"),
        }
    }
}

fn kill(child: &Child, sig: &str) {
    assert!(signal(child, sig), "kill -{sig} failed");
}

fn wait_exit(child: &mut Child, limit: Duration) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code().expect("exited by itself, not by a signal");
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("child did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigterm_finishes_the_unit_and_exits_0() {
    let (mut child, lines) = spawn("loop", "10");
    std::thread::sleep(Duration::from_millis(100));
    kill(&child, "TERM");
    let clean = wait_line(&lines, "clean");
    assert!(clean.trim_end().ends_with("outstanding=0"), "{clean}");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), 0);
}

#[test]
fn sigint_exits_130() {
    let (mut child, lines) = spawn("loop", "10");
    std::thread::sleep(Duration::from_millis(100));
    kill(&child, "INT");
    let clean = wait_line(&lines, "clean");
    assert!(clean.trim_end().ends_with("outstanding=0"), "{clean}");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), 130);
}

#[test]
fn second_signal_exits_at_once_with_the_first_code() {
    let (mut child, lines) = spawn("stuck", "60");
    wait_line(&lines, "unit-started");
    kill(&child, "INT");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "first signal must wait for the unit"
    );
    kill(&child, "TERM");
    // Far below the 60 s budget and the 120 s unit: the second signal forced it.
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), 130);
}

#[test]
fn exit_at_deadline_ends_a_stuck_unit_within_the_budget() {
    let (mut child, lines) = spawn("stuck-deadline", "0.5");
    wait_line(&lines, "unit-started");
    kill(&child, "INT");
    // The 120 s unit is cut at the 0.5 s deadline, with SIGINT's code.
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), 130);
}

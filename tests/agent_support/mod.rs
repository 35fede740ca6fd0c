//! Shared by the tests that run the example agents (`examples/batch_agent.rs`,
//! `examples/parallel_tools.rs`)
//! as a child process. Each test binary uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Builds `target` (e.g. `["--example", "batch_agent"]`) with cargo, in the
/// profile of this test binary, and returns the path of the executable,
/// `<profile dir>/<subdir>/<name>`. The test binaries run after cargo
/// released its build lock, so a nested `cargo build` is safe.
fn cargo_built(args: &[&str], subdir: &str, name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build {args:?} failed");
    let path = profile_dir.join(subdir).join(name);
    assert!(path.exists(), "{} not found", path.display());
    path
}

/// Builds an example of this package with `features` (plus `http` when this
/// test binary has it, so that the library is not rebuilt for the example)
/// and returns its path.
pub fn example(name: &str, features: &[&str]) -> PathBuf {
    let mut features = features.to_vec();
    if cfg!(feature = "http") {
        features.push("http");
    }
    let features = features.join(",");
    cargo_built(
        &[
            "--example",
            name,
            "--no-default-features",
            "--features",
            &features,
        ],
        "examples",
        name,
    )
}

/// Builds the demo agent, `examples/batch_agent.rs`, and returns its path.
pub fn batch_agent() -> PathBuf {
    example("batch_agent", &["tokio"])
}

/// The operator tool's executable. `wal-inspect` is its own workspace
/// package (so the library has no CLI dependency), so cargo does not build
/// it for this package's tests (no `CARGO_BIN_EXE_wal-inspect` here): it is
/// built once per test binary with `cargo build -p wal-inspect`.
pub fn wal_inspect() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        cargo_built(
            &["-p", "wal-inspect", "--bin", "wal-inspect"],
            "",
            "wal-inspect",
        )
    })
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

/// `bin --journal JOURNAL --sink SINK ARGS...`, output discarded, the
/// shutdown budget the agent's own default (the kill tests' runs).
pub fn quiet_agent(bin: &Path, journal: &Path, sink: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin);
    c.arg("--journal")
        .arg(journal)
        .arg("--sink")
        .arg(sink)
        .args(args)
        .env_remove("SHUTDOWN_TIMEOUT")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// A queue in `dir` (a journal directory) with `n` dead letters (each
/// failed its one attempt); returns their ids.
pub fn dead_letters(dir: &Path, n: usize) -> Vec<u64> {
    use agentwal::queue::{QueueOptions, WorkQueue};
    let q = WorkQueue::open(
        dir,
        QueueOptions {
            max_attempts: 1,
            ..QueueOptions::default()
        },
    )
    .unwrap();
    let ids = (0..n)
        .map(|i| {
            let id = q.enqueue(format!("job {i}").as_bytes()).unwrap();
            let c = q.claim("w").unwrap().unwrap();
            q.nack(&c, std::time::Duration::ZERO, "boom").unwrap();
            id
        })
        .collect();
    assert_eq!(q.stats().dead_lettered, n as u64);
    ids
}

pub fn inspect(args: &[&str], journal: &Path) -> Output {
    let (cmd, rest) = args.split_first().unwrap();
    Command::new(wal_inspect())
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

/// splitmix64 for kill and signal timings (the seed is printed so that a
/// failure can be replayed).
pub struct Rng(u64);

impl Rng {
    /// Seeded from `KILL_SEED` or the clock.
    pub fn from_env_or_clock() -> Rng {
        Rng::from_env_or(
            "KILL_SEED",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        )
    }

    /// Seeded from the environment variable `var`, else `fallback`; prints
    /// `var=seed`.
    pub fn from_env_or(var: &str, fallback: u64) -> Rng {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(fallback);
        eprintln!("{var}={seed}");
        Rng(seed)
    }

    /// Seeded with `seed` (the caller prints it).
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A fresh directory for an agent's runs, with the paths of its `journal`
/// and its `sink.txt` (neither created yet); removed when dropped.
pub fn agent_dir() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (journal, sink) = (dir.path().join("journal"), dir.path().join("sink.txt"));
    (dir, journal, sink)
}

/// Waits for the demo agent's banner, its first line on the (piped)
/// stdout, printed once the journal is open and the signal handlers are
/// installed; returns the rest of the output.
pub fn banner(child: &mut std::process::Child) -> std::io::BufReader<std::process::ChildStdout> {
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout piped"));
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert!(line.starts_with("batch_agent:"), "{line}");
    out
}

/// The prologue of the kill tests: the agent, a fresh directory with its
/// `journal` and `sink.txt`, the arguments of every run, and seeded
/// timings.
pub struct KillRig {
    pub bin: PathBuf,
    pub journal: PathBuf,
    pub sink: PathBuf,
    pub rng: Rng,
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

impl KillRig {
    /// Runs of `bin --journal DIR/journal --sink DIR/sink.txt ARGS...` in a
    /// fresh directory, seeded from `KILL_SEED` or the clock.
    pub fn new(bin: PathBuf, args: &[&str]) -> KillRig {
        let (dir, journal, sink) = agent_dir();
        KillRig {
            bin,
            journal,
            sink,
            rng: Rng::from_env_or_clock(),
            args: args.iter().map(|a| a.to_string()).collect(),
            _dir: dir,
        }
    }

    /// One run, output discarded.
    pub fn command(&self) -> Command {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        quiet_agent(&self.bin, &self.journal, &self.sink, &args)
    }

    /// [`kill_at_random`] over this rig's runs.
    pub fn kill_at_random(&mut self, rounds: usize, base_ms: u64) -> usize {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let (bin, journal, sink) = (&self.bin, &self.journal, &self.sink);
        kill_at_random(rounds, base_ms, &mut self.rng, || {
            quiet_agent(bin, journal, sink, &args)
        })
    }

    /// A last run, which must finish the work and exit 0.
    pub fn run_to_completion(&self) {
        let status = self.command().status().unwrap();
        assert!(status.success(), "final run exited with {status}");
    }
}

/// Sends `kill -SIG` to `child`; false if it failed (the process is gone).
pub fn signal(child: &std::process::Child, sig: &str) -> bool {
    Command::new("kill")
        .args([format!("-{sig}"), child.id().to_string()])
        .stderr(Stdio::null())
        .status()
        .expect("run kill")
        .success()
}

/// The lines `child` prints on its (piped) stdout, read on a thread so
/// that a stuck child fails the test instead of hanging it; the thread ends
/// with the output.
pub fn stdout_lines(
    child: &mut std::process::Child,
) -> (
    std::sync::mpsc::Receiver<String>,
    std::thread::JoinHandle<()>,
) {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (rx, reader)
}

/// Runs `command()` `rounds` times, SIGKILLing each run after
/// `base_ms + rand(0..400)` ms if it is still running. Returns how many
/// kills landed, and fails the test when fewer than 3 did (the agent ran
/// too fast for the test to mean anything).
pub fn kill_at_random(
    rounds: usize,
    base_ms: u64,
    rng: &mut Rng,
    mut command: impl FnMut() -> Command,
) -> usize {
    let mut kills = 0;
    for _ in 0..rounds {
        let mut child = command().spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(base_ms + rng.next() % 400));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(
        kills >= 3,
        "only {kills} kills landed; the agent ran too fast"
    );
    kills
}

/// The sink's deliveries grouped by idempotency key.
pub fn sink_by_key(sink: &Path) -> std::collections::HashMap<String, Vec<String>> {
    let mut by_key: std::collections::HashMap<String, Vec<String>> = Default::default();
    for (key, payload) in sink_lines(sink) {
        by_key.entry(key).or_default().push(payload);
    }
    by_key
}

/// Re-sends in the sink: deliveries beyond the first of each key.
pub fn resends(by_key: &std::collections::HashMap<String, Vec<String>>) -> usize {
    by_key.values().map(|v| v.len() - 1).sum()
}

/// The journal after a run to completion of `records` records: every record
/// committed, none incomplete or aborted, no effect in doubt, none twice.
pub fn assert_every_record_committed_once(journal: &Path, records: u32) {
    use agentwal::journal::{JournalView, UnitState};
    let view = JournalView::load(&agentwal::log::LogReader::open(journal).unwrap()).unwrap();
    assert_eq!(view.units_in(UnitState::Incomplete).count(), 0);
    assert_eq!(view.aborted_total(), 0);
    assert_eq!(view.committed_total(), u64::from(records));
    let mut seen = std::collections::HashMap::new();
    for u in view.units_in(UnitState::Committed) {
        *seen.entry(u.id.clone()).or_insert(0) += 1;
        assert_eq!(
            u.effects_in_doubt(),
            0,
            "{} committed with an effect in doubt",
            u.id
        );
    }
    for (id, n) in seen {
        assert!(n <= 1, "{id} committed {n} times");
    }
}

/// The sink after a run to completion: every record's message delivered
/// under its one key (`record-NNNNNN/send/1`), re-sends always with the same
/// payload, no other key. Returns the sink grouped by key.
pub fn assert_every_message_delivered(
    sink: &Path,
    records: u32,
) -> std::collections::HashMap<String, Vec<String>> {
    let by_key = sink_by_key(sink);
    for i in 0..records {
        let key = format!("record-{i:06}/send/1");
        let got = by_key
            .get(&key)
            .unwrap_or_else(|| panic!("{key} never sent"));
        assert!(
            got.iter().all(|p| p == &got[0]),
            "{key} re-sent with another payload"
        );
    }
    assert_eq!(
        by_key.len(),
        records as usize,
        "unexpected keys in the sink"
    );
    by_key
}

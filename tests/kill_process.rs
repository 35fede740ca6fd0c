//! Real process kills: a workload runs in a child process (this test binary
//! re-executed, the workload picked by `AGENTWAL_KILL_CHILD`), the parent
//! SIGKILLs it at a random moment, reopens what it left behind, checks the
//! guarantees, and starts it again; at the end a last run goes to completion.
//!
//! Three workloads, each in its own test (they run in parallel):
//!
//! * `units`: journal units of 2–3 effects with all three in-doubt policies,
//!   acting on an external "sink" file (one line per execution attempt, with
//!   its idempotency key), checkpoints, planned rollbacks, an operator step
//!   for an in-doubt `never_repeat` effect, and automatic compaction on small
//!   segments (kills land during rotation and compaction).
//! * `queue`: enqueue / claim / ack / nack on the durable work queue.
//! * `log`: raw appends (durable, buffered + sync, batches) whose
//!   acknowledgements the child reports on its stdout after they return,
//!   with snapshots and `truncate_before`.
//!
//! Killed runs make work until they are killed; the last run finishes what
//! the killed ones began.
//!
//! After every kill: open succeeds; for units, a unit reported committed is
//! committed and was committed once, an effect whose outcome was recorded
//! never executes again, a key executes again only if it was in doubt at the
//! kill (at most one per kill, same key), a `never_repeat` key executes at
//! most once; for the queue, no acknowledged enqueue is lost, no item is
//! acked twice or handed out after its ack, attempts never decrease; for the
//! log, every acknowledged LSN is present with its payload, LSNs are
//! contiguous, nothing else was invented. Every few kills `wal-inspect
//! verify` must exit 0 on the state the kill left (a kill never corrupts).
//!
//! `AGENTWAL_KILLS` sets the total number of kills (default 54, split over the
//! workloads), `AGENTWAL_KILL_SEED` the seed (printed on every run).
#![cfg(feature = "tokio")]

mod agent_support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::Rng;
use agentwal::journal::{
    AutoCompact, Effect, EffectState, Error as JError, Journal, JournalOptions, KeyStatus, Outcome,
    Probe, Retention, UnitState,
};
use agentwal::log::{Durability, Log, LogOptions, LogReader};
use agentwal::queue::{queue_dir, queue_view, ItemState, QueueOptions, WorkQueue};

const MODE_ENV: &str = "AGENTWAL_KILL_CHILD";
const DIR_ENV: &str = "AGENTWAL_KILL_DIR";
const NEXT_ENV: &str = "AGENTWAL_KILL_NEXT";
/// Set for the last run: finish the work instead of making more.
const FINAL_ENV: &str = "AGENTWAL_KILL_FINAL";
/// Units the last run must finish (those the killed runs began).
const UNITS_ENV: &str = "AGENTWAL_KILL_UNITS";

/// Killed runs make work until they are killed (never more than this), so
/// a fast machine cannot finish the workload before the kills land.
const CAP: u64 = 1_000_000;

fn is_final() -> bool {
    std::env::var_os(FINAL_ENV).is_some()
}

// ---------------------------------------------------------------- shared

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn seed() -> u64 {
    env_u64("AGENTWAL_KILL_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    })
}

/// Kills per workload: `AGENTWAL_KILLS` (default 54) split 24 / 15 / 15.
fn kills_for(workload: &str) -> usize {
    let total = env_u64("AGENTWAL_KILLS").unwrap_or(54).max(3) as usize;
    let units = total * 4 / 9;
    let rest = total - units;
    match workload {
        "units" => units,
        "queue" => rest / 2,
        _ => rest - rest / 2,
    }
}

/// One line to the parent. Rust's stdout is line-buffered, so the line is in
/// the pipe once this returns: it was printed after the operation returned.
fn report(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("write to the parent");
    out.flush().expect("flush to the parent");
}

/// The child's body: does nothing unless started by a parent below.
#[test]
fn child_main() {
    let Ok(mode) = std::env::var(MODE_ENV) else {
        return;
    };
    let dir = PathBuf::from(std::env::var(DIR_ENV).expect("AGENTWAL_KILL_DIR"));
    match mode.as_str() {
        "units" => units_child(&dir),
        "queue" => queue_child(&dir),
        "log" => log_child(&dir),
        other => panic!("unknown workload {other:?}"),
    }
    report(format_args!("done"));
    std::process::exit(0);
}

/// What a child run left: its stdout lines, and whether the kill landed.
struct Run {
    lines: Vec<String>,
    killed: bool,
}

/// Starts the child; with `kill`, SIGKILLs it that long after it printed
/// `ready` (or, with `early`, that long after the spawn: inside open and
/// recovery). A child that exits by itself must exit 0 after `done`.
fn run_child(
    mode: &str,
    dir: &Path,
    stderr: &Path,
    env: &[(&str, String)],
    kill: Option<(Duration, bool)>,
) -> Run {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
        .env(MODE_ENV, mode)
        .env(DIR_ENV, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn the child");
    let (rx, reader) = agent_support::stdout_lines(&mut child);
    let mut lines = Vec::new();
    let started = Instant::now();
    let mut killed = false;
    if let Some((after, early)) = kill {
        if !early {
            // Wait for `ready` so the kill lands in the workload.
            while let Ok(l) = rx.recv_timeout(Duration::from_secs(60)) {
                let ready = l.ends_with("ready");
                lines.push(l);
                if ready {
                    break;
                }
            }
        }
        let at = Instant::now() + after;
        while Instant::now() < at {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().expect("SIGKILL the child");
            killed = true;
        }
    }
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("{mode} child ran for 2 minutes");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    if !killed {
        assert!(
            status.success() && lines.last().is_some_and(|l| l.ends_with("done")),
            "{mode} child exited by itself with {status}; stderr:\n{}",
            std::fs::read_to_string(stderr).unwrap_or_default()
        );
    }
    Run { lines, killed }
}

/// `wal-inspect verify DIR` must exit 0: a kill never leaves corruption.
fn verify(dir: &Path) {
    let has_files = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten().any(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.ends_with(".wal") || n.contains("snap")
            })
        })
        .unwrap_or(false);
    if !has_files {
        // Killed before the log created its first file: nothing to verify
        // (wal-inspect rightly calls such a directory "not a journal").
        return;
    }
    let out = Command::new(agent_support::wal_inspect())
        .arg("verify")
        .arg(dir)
        .output()
        .expect("run wal-inspect");
    assert_eq!(
        out.status.code(),
        Some(0),
        "wal-inspect verify {} after a kill:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A kill moment: mostly a few ms to ~120 ms into the workload, sometimes
/// right after the spawn (during open and recovery).
fn kill_at(rng: &mut Rng) -> (Duration, bool) {
    if rng.below(8) == 0 {
        (Duration::from_millis(rng.below(25)), true)
    } else {
        (Duration::from_micros(500 + rng.below(250_000)), false)
    }
}

/// The kill loop shared by the workloads: `check` runs after every run.
fn kill_loop(
    mode: &str,
    kills: usize,
    dir: &Path,
    verify_dir: &Path,
    env: &mut dyn FnMut() -> Vec<(&'static str, String)>,
    check: &mut dyn FnMut(&Run, usize),
) -> usize {
    let seed = seed();
    eprintln!("{mode}: AGENTWAL_KILL_SEED={seed} kills={kills}");
    let mut rng = Rng::seeded(seed);
    let stderr = dir.parent().unwrap().join(format!("{mode}.stderr"));
    let started = Instant::now();
    let mut landed = 0;
    let mut runs = 0;
    while landed < kills && runs < kills * 3 {
        runs += 1;
        let run = run_child(mode, dir, &stderr, &env(), Some(kill_at(&mut rng)));
        if run.killed {
            landed += 1;
            if landed % 4 == 1 && verify_dir.exists() {
                verify(verify_dir);
            }
        }
        check(&run, landed);
        if !run.killed {
            // The workload finished before the kill: nothing left to kill.
            break;
        }
    }
    let mut last_env = env();
    last_env.push((FINAL_ENV, "1".into()));
    let last = run_child(mode, dir, &stderr, &last_env, None);
    check(&last, landed);
    verify(verify_dir);
    eprintln!(
        "{mode}: {landed} kills in {runs} runs, {:.1} s (seed {seed})",
        started.elapsed().as_secs_f64()
    );
    assert!(
        landed >= kills,
        "{mode}: only {landed} of {kills} kills landed (seed {seed}); the workload is too short"
    );
    landed
}

// ---------------------------------------------------------------- units

fn unit_opts() -> JournalOptions {
    JournalOptions {
        log: LogOptions {
            segment_size: 8192,
            max_record_bytes: 4096,
            ..LogOptions::default()
        },
        max_payload_bytes: 2048,
        retention: Retention::unlimited(),
        // Small segments and frequent compaction: kills land in rotation,
        // snapshot writing and segment removal.
        auto_compact: AutoCompact {
            every_records: Some(40),
            every_bytes: None,
            tail_ratio: None,
        },
        ..JournalOptions::default()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pol {
    Retry,
    Never,
    Reconcile,
}

impl Pol {
    fn tag(self) -> &'static str {
        match self {
            Pol::Retry => "retry",
            Pol::Never => "never",
            Pol::Reconcile => "reconcile",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Pol::Retry => "send",
            Pol::Never => "charge",
            Pol::Reconcile => "notify",
        }
    }
}

/// The effects of unit `u`: 2 or 3, policies rotated so every order occurs.
fn plan(u: usize) -> Vec<Pol> {
    let all = [Pol::Retry, Pol::Never, Pol::Reconcile];
    (0..2 + u % 2).map(|i| all[(u + i) % 3]).collect()
}

fn unit_id(u: usize) -> String {
    format!("unit-{u:04}")
}

fn key_of(u: usize, seq: usize) -> String {
    format!("{}/{}/{seq}", unit_id(u), plan(u)[seq].name())
}

/// Planned rollbacks.
fn rolls_back(u: usize) -> bool {
    u % 10 == 7
}

/// One sink line: `<key>\t<tag>\t<value>`.
fn sink_append(sink: &Path, key: &str, tag: &str, value: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(sink)
        .unwrap();
    // One write(2) of one short line with O_APPEND. No fsync: the sink
    // stands for an external system, and a SIGKILL keeps the page cache.
    f.write_all(format!("{key}\t{tag}\t{value}\n").as_bytes())
        .unwrap();
}

/// Every sink line as (key, tag, value).
fn sink_lines(sink: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(sink).unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut it = l.splitn(3, '\t');
            let (k, t, v) = (it.next(), it.next(), it.next());
            match (k, t, v) {
                (Some(k), Some(t), Some(v)) => (k.into(), t.into(), v.into()),
                _ => panic!("bad sink line {l:?}"),
            }
        })
        .collect()
}

fn sink_value(sink: &Path, key: &str) -> Option<String> {
    sink_lines(sink)
        .into_iter()
        .rev()
        .find(|(k, t, _)| k == key && t != "compensate")
        .map(|(_, _, v)| v)
}

enum UnitEnd {
    Done,
    /// A never_repeat effect is in doubt: the operator must decide.
    Operator(u32, String),
}

fn units_child(dir: &Path) {
    let journal_dir = dir.join("journal");
    let sink = dir.join("sink.txt");
    let j = Journal::open(&journal_dir, unit_opts()).expect("open the journal");
    report(format_args!("ready"));
    let units = if is_final() {
        env_u64(UNITS_ENV).expect("AGENTWAL_KILL_UNITS")
    } else {
        CAP
    };
    for u in 0..units as usize {
        loop {
            match run_unit(&j, &sink, u) {
                UnitEnd::Done => break,
                UnitEnd::Operator(seq, key) => {
                    // The operator looks at the external system: if the
                    // effect happened its result is recorded; if not, the
                    // unit is rolled back (it must never run twice).
                    let id = unit_id(u);
                    match sink_value(&sink, &key) {
                        Some(v) => {
                            j.resolve_in_doubt(&id, seq, Outcome::Ok { value: v.into() })
                                .expect("resolve in doubt");
                            report(format_args!("resolved {key}"));
                        }
                        None => {
                            j.rollback(&id, "in doubt and did not happen", |c| {
                                sink_append(&sink, &c.key, "compensate", &c.effect_key);
                                Ok::<_, String>(())
                            })
                            .expect("operator rollback");
                            report(format_args!("abort {id} indoubt"));
                            break;
                        }
                    }
                }
            }
        }
    }
}

fn run_unit(j: &Journal, sink: &Path, u: usize) -> UnitEnd {
    let id = unit_id(u);
    let mut unit = match j.begin(&id, "kill-test", &u) {
        Ok(unit) => unit,
        Err(JError::UnitFinished { .. }) => return UnitEnd::Done,
        Err(e) => panic!("{id}: begin: {e}"),
    };
    if unit.is_resumed() {
        // A checkpoint is taken after an effect completed: it never claims
        // more than the journal recorded.
        if let Some(c) = unit.last_checkpoint::<usize>().expect("read checkpoint") {
            assert!(
                c <= unit.recorded_effects(),
                "{id}: checkpoint {c} ahead of {} recorded effects",
                unit.recorded_effects()
            );
        }
    }
    for (seq, pol) in plan(u).into_iter().enumerate() {
        let key = key_of(u, seq);
        let exec = |ctx: &agentwal::journal::EffectCtx| -> Result<String, String> {
            assert_eq!(ctx.key(), key, "{id}: effect ran with another key");
            // Unique per execution: which process, and when.
            let value = format!(
                "{}:{}:{}",
                ctx.key(),
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            );
            // Widen the windows between the durable intent, the execution
            // and the recorded outcome so kills land in each.
            std::thread::sleep(Duration::from_micros(300));
            sink_append(sink, ctx.key(), pol.tag(), &value);
            std::thread::sleep(Duration::from_micros(1500));
            Ok(value)
        };
        let effect = match pol {
            Pol::Retry => Effect::retry_same_key(pol.name()).compensable(),
            Pol::Never => Effect::never_repeat(pol.name()).compensable(),
            Pol::Reconcile => {
                Effect::reconcile(pol.name(), |ctx: &agentwal::journal::EffectCtx| {
                    Ok::<_, String>(match sink_value(sink, ctx.key()) {
                        Some(v) => Probe::Happened(v),
                        None => Probe::NotHappened,
                    })
                })
            }
        };
        match unit.run(effect, exec) {
            Ok(v) => {
                let produced = sink_lines(sink)
                    .iter()
                    .any(|(k, t, val)| *k == key && t != "compensate" && *val == v);
                assert!(produced, "{key}: handed back {v:?}, never produced by it");
            }
            Err(JError::InDoubt { step, key, .. }) => return UnitEnd::Operator(step, key),
            // A kill landed inside a rollback (planned, or the operator's):
            // the unit can only finish it.
            Err(JError::RollingBack { .. }) => {
                unit.rollback("resumed rollback", |c| {
                    sink_append(sink, &c.key, "compensate", &c.effect_key);
                    Ok::<_, String>(())
                })
                .expect("finish the interrupted rollback");
                let why = if rolls_back(u) { "planned" } else { "indoubt" };
                report(format_args!("abort {id} {why}"));
                return UnitEnd::Done;
            }
            Err(e) => panic!("{key}: run: {e}"),
        }
        if u.is_multiple_of(2) {
            unit.checkpoint(&(seq + 1)).expect("checkpoint");
        }
    }
    if rolls_back(u) {
        unit.rollback("planned rollback", |c| {
            sink_append(sink, &c.key, "compensate", &c.effect_key);
            Ok::<_, String>(())
        })
        .expect("rollback");
        report(format_args!("abort {id} planned"));
    } else {
        unit.commit().expect("commit");
        report(format_args!("commit {id}"));
    }
    UnitEnd::Done
}

/// What the parent knows of the units workload across runs.
#[derive(Default)]
struct UnitsModel {
    committed: HashSet<String>,
    aborted_indoubt: HashSet<String>,
    /// Sink count per key at the previous check.
    counts: HashMap<String, usize>,
    /// Keys seen completed at a check, with their count then.
    settled: HashMap<String, usize>,
    /// Keys in doubt at the previous check.
    in_doubt: HashSet<String>,
    reexecuted: usize,
    /// Units the journal knows (the child takes them in order).
    units: usize,
}

fn check_units(m: &mut UnitsModel, dir: &Path, run: &Run, kills: usize, last: bool) {
    for l in &run.lines {
        if let Some(id) = l.strip_prefix("commit ") {
            assert!(m.committed.insert(id.to_string()), "{id} committed twice");
        } else if let Some(rest) = l.strip_prefix("abort ") {
            let (id, why) = rest.split_once(' ').unwrap();
            if why == "indoubt" {
                m.aborted_indoubt.insert(id.to_string());
            }
        }
    }
    let j = Journal::open(dir.join("journal"), unit_opts()).expect("open after a kill");
    for id in &m.committed {
        assert_eq!(
            j.unit_state(id),
            Some(UnitState::Committed),
            "{id} was committed, after the kill it is not"
        );
    }
    while j.unit_state(&unit_id(m.units)).is_some() {
        m.units += 1;
    }
    // The sink: expected keys only, never_repeat at most once, a settled key
    // never again, a re-execution only for a key in doubt at the kill.
    let expected = |key: &str| -> Option<Pol> {
        let (unit, rest) = key.split_once('/')?;
        let u: usize = unit.strip_prefix("unit-")?.parse().ok()?;
        let seq: usize = rest.rsplit_once('/')?.1.parse().ok()?;
        (seq < plan(u).len() && key_of(u, seq) == key).then(|| plan(u)[seq])
    };
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut compensated: HashSet<String> = HashSet::new();
    for (key, tag, value) in sink_lines(&dir.join("sink.txt")) {
        if tag == "compensate" {
            let effect_key = key.strip_suffix("/compensate").expect("compensation key");
            assert_eq!(effect_key, value, "compensation key of another effect");
            let unit = effect_key.split('/').next().unwrap().to_string();
            compensated.insert(unit);
            continue;
        }
        let pol = expected(&key).unwrap_or_else(|| panic!("unexpected key {key:?} in the sink"));
        assert_eq!(pol.tag(), tag, "{key} ran with another policy");
        let unit = key.split('/').next().unwrap();
        assert!(
            j.unit_state(unit).is_some(),
            "{key} ran, its unit is unknown to the journal"
        );
        *counts.entry(key).or_default() += 1;
    }
    let mut again = Vec::new();
    for (key, &n) in &counts {
        if expected(key) == Some(Pol::Never) {
            assert!(n <= 1, "never_repeat key {key} executed {n} times");
        }
        if let Some(&was) = m.settled.get(key) {
            assert_eq!(n, was, "{key}: outcome recorded, yet executed again");
        }
        let before = m.counts.get(key).copied().unwrap_or(0);
        assert!(
            n <= before + 1,
            "{key}: {n} executions, {before} before one run"
        );
        if before > 0 && n > before {
            assert_eq!(
                expected(key),
                Some(Pol::Retry),
                "{key} re-executed under its policy"
            );
            assert!(
                m.in_doubt.contains(key),
                "{key} executed again without being in doubt at the kill"
            );
            again.push(key.clone());
        }
    }
    assert!(
        again.len() <= 1,
        "one kill, several re-executions: {again:?}"
    );
    m.reexecuted += again.len();
    let extras: usize = counts.values().map(|n| n - 1).sum();
    assert!(extras <= kills, "{extras} re-executions for {kills} kills");
    for key in counts.keys() {
        if j.key_status(key).map(|k| k.status) == Some(KeyStatus::Completed) {
            m.settled.entry(key.clone()).or_insert(counts[key]);
        }
    }
    m.in_doubt = j
        .incomplete_units()
        .iter()
        .flat_map(|u| u.effects.iter())
        .filter(|e| e.state == EffectState::InDoubt)
        .map(|e| e.key.clone())
        .collect();
    assert!(
        m.in_doubt.len() <= 1,
        "one kill of a sequential worker, {} effects in doubt",
        m.in_doubt.len()
    );
    for u in &compensated {
        assert_ne!(
            j.unit_state(u),
            Some(UnitState::Committed),
            "{u}: compensated, then committed"
        );
    }
    m.counts = counts;
    if last {
        let mut committed = 0u64;
        for u in 0..m.units {
            let id = unit_id(u);
            let state = j.unit_state(&id);
            // The operator rolls a unit back only when its never_repeat
            // effect was in doubt and did not happen (no sink line); the
            // kill may have come before the child reported it.
            let never_ran = plan(u)
                .iter()
                .position(|p| *p == Pol::Never)
                .is_some_and(|s| !m.counts.contains_key(&key_of(u, s)));
            if state == Some(UnitState::Aborted) && never_ran && !rolls_back(u) {
                m.aborted_indoubt.insert(id.clone());
            }
            if rolls_back(u) || m.aborted_indoubt.contains(&id) {
                assert!(
                    !m.aborted_indoubt.contains(&id) || never_ran,
                    "{id}: rolled back by the operator, yet its never_repeat effect ran"
                );
                assert_eq!(state, Some(UnitState::Aborted), "{id}");
            } else {
                assert_eq!(
                    state,
                    Some(UnitState::Committed),
                    "{id} (never_repeat effect ran: {})",
                    !never_ran
                );
                committed += 1;
                for s in 0..plan(u).len() {
                    let key = key_of(u, s);
                    assert!(
                        m.counts.contains_key(&key),
                        "{id} committed, {key} never ran"
                    );
                }
            }
        }
        assert!(
            m.aborted_indoubt.len() <= kills,
            "{} operator rollbacks for {kills} kills",
            m.aborted_indoubt.len()
        );
        let stats = j.stats();
        assert_eq!(stats.committed, committed, "commits counted once each");
        assert!(m.committed.len() as u64 <= committed);
        assert!(stats.compactions > 0 || j.replay_report().snapshot_lsn > 0);
        eprintln!(
            "units: {committed} committed, {} aborted by the operator, {} re-executions after kills",
            m.aborted_indoubt.len(),
            m.reexecuted
        );
    }
}

#[test]
fn units_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("units");
    std::fs::create_dir(&dir).unwrap();
    let m = std::cell::RefCell::new(UnitsModel::default());
    let kills = kills_for("units");
    let d = dir.clone();
    kill_loop(
        "units",
        kills,
        &dir,
        &dir.join("journal"),
        &mut || vec![(UNITS_ENV, m.borrow().units.to_string())],
        &mut |run, k| check_units(&mut m.borrow_mut(), &d, run, k, !run.killed),
    );
    assert!(m.borrow().units >= kills, "too little work between kills");
}

// ---------------------------------------------------------------- queue

fn queue_opts() -> QueueOptions {
    QueueOptions {
        max_attempts: 1000,
        compact_after_records: Some(25),
        log: LogOptions {
            segment_size: 4096,
            max_record_bytes: 1024,
            ..LogOptions::default()
        },
        ..QueueOptions::default()
    }
}

fn nacks(id: u64, attempt: u32) -> bool {
    (id * 31 + u64::from(attempt) * 17).is_multiple_of(5)
}

fn queue_child(dir: &Path) {
    let mut n = env_u64(NEXT_ENV).unwrap_or(0);
    let q = WorkQueue::open(dir, queue_opts()).expect("open the queue");
    report(format_args!("ready"));
    let last = is_final();
    loop {
        for _ in 0..2 {
            if !last && n < CAP {
                let id = q.enqueue(format!("item-{n}").as_bytes()).expect("enqueue");
                report(format_args!("enq {n} {id}"));
                n += 1;
            }
        }
        match q.claim("w").expect("claim") {
            Some(c) => {
                report(format_args!("claim {} {}", c.id, c.attempt));
                std::thread::sleep(Duration::from_micros(300));
                if nacks(c.id, c.attempt) {
                    q.nack(&c, Duration::ZERO, "flaky").expect("nack");
                    report(format_args!("nack {} {}", c.id, c.attempt));
                } else {
                    q.ack(&c).expect("ack");
                    let payload = String::from_utf8(c.payload.clone()).unwrap();
                    report(format_args!("ack {} {} {payload}", c.id, c.attempt));
                }
            }
            None if last => break,
            None => {}
        }
    }
}

#[derive(Default)]
struct QueueModel {
    /// id -> payload, for every item known to exist.
    items: BTreeMap<u64, String>,
    acked: HashSet<u64>,
    /// Highest attempt seen per id (claims reported, live state).
    attempts: HashMap<u64, u32>,
    next_n: u64,
}

fn check_queue(m: &mut QueueModel, dir: &Path, run: &Run, kills: usize, last: bool) {
    let mut last_claim = None;
    for l in &run.lines {
        let f: Vec<&str> = l.split(' ').collect();
        match f[0] {
            "enq" => {
                let (n, id): (u64, u64) = (f[1].parse().unwrap(), f[2].parse().unwrap());
                let prev = m.items.insert(id, format!("item-{n}"));
                assert!(prev.is_none(), "id {id} handed out by two enqueues");
                m.next_n = m.next_n.max(n + 1);
            }
            "claim" | "ack" | "nack" => {
                let (id, attempt): (u64, u32) = (f[1].parse().unwrap(), f[2].parse().unwrap());
                assert!(!m.acked.contains(&id), "{l}: item {id} was acked before");
                let seen = m.attempts.entry(id).or_default();
                if f[0] == "claim" {
                    assert!(
                        attempt > *seen,
                        "{l}: attempts went from {seen} to {attempt}"
                    );
                    *seen = attempt;
                    last_claim = Some(id);
                } else {
                    assert_eq!(attempt, *seen, "{l}: not the latest claim");
                    last_claim = None;
                }
                if f[0] == "ack" {
                    assert_eq!(
                        m.items.get(&id).map(String::as_str),
                        Some(f[3]),
                        "{l}: payload"
                    );
                    m.acked.insert(id);
                }
            }
            _ => {}
        }
    }
    // What the kill left, read-only (in-flight items still in flight): the
    // owner's open must not lower any attempt count when it re-queues them.
    if queue_dir(dir).exists() {
        let reader = LogReader::open(queue_dir(dir)).expect("read the queue after a kill");
        for item in queue_view(&reader).expect("queue view").items {
            let seen = m.attempts.entry(item.id).or_default();
            assert!(
                item.attempts >= *seen,
                "item {}: {} attempts on disk, {seen} seen",
                item.id,
                item.attempts
            );
            *seen = item.attempts;
        }
    }
    let q = WorkQueue::open(dir, queue_opts()).expect("open the queue after a kill");
    let live: BTreeMap<u64, _> = q.list().into_iter().map(|i| (i.id, i)).collect();
    let mut unreported = 0;
    for (&id, item) in &live {
        assert!(!m.acked.contains(&id), "item {id} live after its ack");
        assert_ne!(
            item.state,
            ItemState::DeadLettered,
            "item {id} dead-lettered"
        );
        let seen = m.attempts.entry(id).or_default();
        // The disk view above already counted an unreported durable claim.
        assert!(
            item.attempts == *seen,
            "item {id}: {} attempts, {seen} seen",
            item.attempts
        );
        *seen = item.attempts;
        if !m.items.contains_key(&id) {
            // An enqueue durable before the kill, not reported.
            unreported += 1;
            let payload = String::from_utf8(q.payload(id).unwrap()).unwrap();
            let n: u64 = payload.strip_prefix("item-").unwrap().parse().unwrap();
            m.next_n = m.next_n.max(n + 1);
            m.items.insert(id, payload);
        }
    }
    assert!(
        unreported <= 1,
        "{unreported} unreported enqueues after one kill"
    );
    let missing: Vec<u64> = m
        .items
        .keys()
        .filter(|id| !m.acked.contains(id) && !live.contains_key(id))
        .copied()
        .collect();
    // Only the item claimed last may be gone without a reported ack: its ack
    // returned, the kill came before the report.
    match missing.as_slice() {
        [] => {}
        [id] if last_claim == Some(*id) && run.killed => {
            m.acked.insert(*id);
        }
        _ => panic!("items lost after a kill: {missing:?} (last claim {last_claim:?})"),
    }
    if last {
        assert!(live.is_empty(), "items left after the final run: {live:?}");
        let done: HashSet<&str> = m.acked.iter().map(|id| m.items[id].as_str()).collect();
        for n in 0..m.next_n {
            assert!(
                done.contains(format!("item-{n}").as_str()),
                "item-{n} never acked"
            );
        }
        assert!(m.items.len() as u64 <= m.next_n + kills as u64);
        eprintln!(
            "queue: {} items enqueued for {} payloads, all acked once",
            m.items.len(),
            m.next_n
        );
    }
}

#[test]
fn queue_survives_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("queue-journal");
    std::fs::create_dir(&dir).unwrap();
    let m = std::cell::RefCell::new(QueueModel::default());
    let kills = kills_for("queue");
    let d = dir.clone();
    kill_loop(
        "queue",
        kills,
        &dir,
        &queue_dir(&dir),
        &mut || vec![(NEXT_ENV, m.borrow().next_n.to_string())],
        &mut |run, k| check_queue(&mut m.borrow_mut(), &d, run, k, !run.killed),
    );
}

// ---------------------------------------------------------------- log

const LOG_KIND: u8 = 40;

fn log_opts() -> LogOptions {
    LogOptions {
        segment_size: 4096,
        max_record_bytes: 1024,
        ..LogOptions::default()
    }
}

/// The payload of LSN `lsn`: varying sizes, content tied to the LSN.
fn payload(lsn: u64) -> Vec<u8> {
    let mut p = format!("lsn-{lsn}:").into_bytes();
    let len = (lsn * 7919 % 700) as usize;
    p.extend(std::iter::repeat_n((lsn % 251) as u8, len));
    p
}

fn log_child(dir: &Path) {
    let log = Log::open(dir, log_opts()).expect("open the log");
    report(format_args!("ready"));
    let limit = if is_final() {
        log.next_lsn() + 300
    } else {
        CAP
    };
    let mut i = 0u64;
    while log.next_lsn() <= limit {
        let next = log.next_lsn();
        match i % 4 {
            _ if i % 64 == 63 => {
                // Compaction of a raw log: a snapshot covering everything
                // durable, then drop the segments it covers but the last
                // ~100 records (kills land in the snapshot's write + rename
                // and in the segment removal).
                let lsn = next - 1;
                log.write_snapshot(lsn, format!("snap-{lsn}").as_bytes())
                    .expect("snapshot");
                log.truncate_before(lsn.saturating_sub(100))
                    .expect("truncate");
                report(format_args!("snap {lsn}"));
            }
            0 | 1 => {
                let lsn = log
                    .append_with(LOG_KIND, &payload(next), Durability::Durable)
                    .expect("append");
                assert_eq!(lsn, next);
                report(format_args!("ack {lsn}"));
            }
            2 => {
                let p: Vec<Vec<u8>> = (next..next + 3).map(payload).collect();
                let batch: Vec<(u8, &[u8])> = p.iter().map(|p| (LOG_KIND, &p[..])).collect();
                let r = log
                    .append_batch(&batch, Durability::Durable)
                    .expect("batch");
                assert_eq!(*r.start(), next);
                report(format_args!("ack {}", r.end()));
            }
            _ => {
                for lsn in next..next + 2 {
                    log.append_with(LOG_KIND, &payload(lsn), Durability::Buffered)
                        .expect("buffered append");
                }
                let durable = log.sync().expect("sync");
                report(format_args!("ack {durable}"));
            }
        }
        i += 1;
    }
}

/// Highest LSN reported durable, highest snapshot reported written.
#[derive(Default)]
struct LogModel {
    acked: u64,
    snap: u64,
}

fn check_log(m: &mut LogModel, dir: &Path, run: &Run, kills: usize, last: bool) {
    for l in &run.lines {
        if let Some(lsn) = l.strip_prefix("ack ") {
            m.acked = m.acked.max(lsn.parse().unwrap());
        } else if let Some(lsn) = l.strip_prefix("snap ") {
            m.snap = m.snap.max(lsn.parse().unwrap());
            m.acked = m.acked.max(m.snap);
        }
    }
    let log = Log::open(dir, log_opts()).expect("open the log after a kill");
    // Records up to the snapshot may be gone; none after it.
    let snap = match log.latest_snapshot().expect("read the snapshot") {
        Some(s) => {
            assert_eq!(
                s.data,
                format!("snap-{}", s.lsn).into_bytes(),
                "snapshot data"
            );
            s.lsn
        }
        None => 0,
    };
    assert!(snap >= m.snap, "snapshot {} written, {snap} found", m.snap);
    let mut expect = None;
    for r in log.read_from(1).expect("read") {
        let r = r.expect("a record");
        let want = *expect.get_or_insert_with(|| {
            assert!(
                r.lsn <= snap + 1,
                "records {} to {} lost (snapshot at {snap})",
                snap + 1,
                r.lsn - 1
            );
            r.lsn
        });
        assert_eq!(r.lsn, want, "LSN gap");
        assert_eq!(r.kind, LOG_KIND, "LSN {}: kind", r.lsn);
        assert!(
            r.payload() == payload(r.lsn),
            "LSN {}: wrong payload",
            r.lsn
        );
        expect = Some(want + 1);
    }
    let end = expect.map_or(snap, |e| e - 1);
    assert!(
        end >= m.acked,
        "acknowledged LSN {} lost: the log ends at {end}",
        m.acked
    );
    if last {
        assert_eq!(end, m.acked, "the final run ended on a durable append");
        assert!(end > 300 + kills as u64, "too little work between kills");
        assert!(m.snap > 0, "no snapshot was written");
        eprintln!("log: {end} records, snapshot at {snap}, every acknowledged one present");
    }
}

#[test]
fn log_survives_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    std::fs::create_dir(&dir).unwrap();
    let mut m = LogModel::default();
    let kills = kills_for("log");
    let d = dir.clone();
    kill_loop("log", kills, &dir, &dir, &mut Vec::new, &mut |run, k| {
        check_log(&mut m, &d, run, k, !run.killed)
    });
}

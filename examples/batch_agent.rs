//! The demo agent: processes N records, each one journaled unit with a
//! simulated model call and one message sent to a "sink" file.
//!
//! ```text
//! batch_agent --journal DIR --sink FILE [--records N] [--work-ms MS] [--fail-rate P] [--workers N]
//! ```
//!
//! `--fail-rate P` makes the simulated model call fail transiently (like an
//! HTTP 429) with probability `P` per attempt: the effect's retry policy
//! absorbs the failures (each attempt counted durably), every record still
//! ends committed, and the final summary line counts the retries.
//!
//! With `--workers N`, N threads run units at once over the one journal and
//! share its group commit (one `fdatasync` covers the commits of every unit
//! waiting); the order of sink lines is then free, and a `SIGKILL` leaves at
//! most N units in flight (so at most N re-sends per kill).
//!
//! Kill it at any moment (even with SIGKILL) and run it again: it resumes at
//! the first record that is not committed, replays recorded model calls
//! instead of paying for them again, and re-sends a message only if its send
//! was in doubt at the kill — always with the same idempotency key, so the
//! receiver can de-duplicate. Each sink line is one delivery attempt:
//! `<idempotency-key>\t<payload>`.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
#[cfg(feature = "http")]
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agentwal::journal::{
    Attempt, Effect, Journal, JournalOptions, OnExhausted, RetryPolicy, StepError, UnitState,
};
use agentwal::log::{Durability, LogOptions};
#[cfg(feature = "http")]
use agentwal::runtime::Metrics;
use agentwal::runtime::Shutdown;
use serde::{Deserialize, Serialize};

#[path = "support/args.rs"]
#[macro_use]
mod args;
use args::ParseExit;

#[path = "support/model.rs"]
mod model;
use model::{fake_model, ModelReply};

/// Process records as journaled units; safe to kill and re-run.
///
/// Parsed by hand (examples/support/args.rs, shared with the fleet
/// examples): the demo needs only the default features, so
/// `cargo run --example batch_agent` works as written in the README and a
/// library user's build never compiles a CLI framework.
#[derive(Debug)]
struct Args {
    /// Journal directory (created if missing).
    journal: PathBuf,
    /// Sink file: one line per message delivery attempt.
    sink: PathBuf,
    /// Number of records in the batch.
    records: u32,
    /// Simulated work per record, in milliseconds.
    work_ms: u64,
    /// Units in flight at once (threads sharing the journal).
    workers: u32,
    /// Probability (0..=1) that one attempt of the simulated model call
    /// fails transiently (like an HTTP 429); the retry policy absorbs it.
    fail_rate: f64,
    /// Exit code when a graceful shutdown (SIGTERM, `POST /shutdown`) stops
    /// the batch before every record is committed; `None`: 0, the contract's
    /// default. For Kubernetes Jobs (see `deploy/kubernetes.yaml`).
    exit_code_unfinished: Option<u8>,
    /// Serve /health, /ready, POST /shutdown and /metrics on this address
    /// (e.g. 127.0.0.1:8080; keep it off public interfaces).
    #[cfg(feature = "http")]
    health: Option<String>,
}

const USAGE: &str = "\
Process records as journaled units; safe to kill and re-run.

Usage: batch_agent --journal DIR --sink FILE [OPTIONS]

Options:
      --journal DIR               Journal directory (created if missing)
      --sink FILE                 Sink file: one line per message delivery attempt
      --records N                 Number of records in the batch [default: 1000]
      --work-ms MS                Simulated work per record, in milliseconds [default: 2]
      --workers N                 Units in flight at once, sharing group commit; the
                                  order of sink lines is then free [default: 1]
      --fail-rate P               Probability (0-1) that one model call attempt fails
                                  transiently (like a 429); retried by the effect's
                                  retry policy [default: 0]
      --exit-code-unfinished N    Exit with N (1-255) instead of 0 when SIGTERM stops the
                                  batch before it is finished (for Kubernetes Jobs);
                                  also AGENTWAL_UNFINISHED_EXIT [default: 0, unset]
      --health ADDR               Serve /health, /ready, POST /shutdown, /metrics on ADDR
                                  (feature `http`; e.g. 127.0.0.1:8080)
  -h, --help                      Print help
  -V, --version                   Print version

Environment: SHUTDOWN_TIMEOUT (seconds, default 25), RUST_LOG (tracing on stderr).
";

/// The environment variable behind `--exit-code-unfinished`.
const UNFINISHED_EXIT_ENV: &str = "AGENTWAL_UNFINISHED_EXIT";

impl Args {
    /// Parses the process's arguments; prints usage and exits 2 on a
    /// mistake, 0 on `--help` / `--version`.
    fn parse() -> Args {
        let env = std::env::var(UNFINISHED_EXIT_ENV).ok();
        let r = Args::try_parse(std::env::args().skip(1), env.as_deref());
        args::or_exit("batch_agent", USAGE, r)
    }

    fn try_parse(
        argv: impl IntoIterator<Item = String>,
        unfinished_env: Option<&str>,
    ) -> Result<Args, ParseExit> {
        fn exit_code(flag: &str, v: &str) -> Result<u8, ParseExit> {
            match args::num::<u8>(flag, v)? {
                0 => Err(ParseExit::Usage(format!(
                    "{flag} must be 1-255 (0 is the code of a finished batch)"
                ))),
                c => Ok(c),
            }
        }
        let f = args::parse(
            argv,
            &[
                "--journal",
                "--sink",
                "--records",
                "--work-ms",
                "--workers",
                "--fail-rate",
                "--exit-code-unfinished",
                #[cfg(feature = "http")]
                "--health",
            ],
            &[],
        )?;
        let records = f.get_or("--records", 1000)?;
        let work_ms = f.get_or("--work-ms", 2)?;
        let workers = f.get_or("--workers", 1)?;
        if workers == 0 || workers > 1024 {
            return Err(ParseExit::Usage("--workers must be 1-1024".into()));
        }
        let fail_rate: f64 = f.get_or("--fail-rate", 0.0)?;
        if !(0.0..=1.0).contains(&fail_rate) {
            return Err(ParseExit::Usage(format!(
                "--fail-rate must be a probability between 0 and 1, not {fail_rate}"
            )));
        }
        let exit_code_unfinished = match f.raw("--exit-code-unfinished") {
            Some(v) => Some(exit_code("--exit-code-unfinished", v)?),
            None => match unfinished_env.filter(|v| !v.trim().is_empty()) {
                Some(v) => Some(exit_code(UNFINISHED_EXIT_ENV, v)?),
                None => None,
            },
        };
        Ok(Args {
            journal: f.required("--journal", "DIR")?,
            sink: f.required("--sink", "FILE")?,
            records,
            work_ms,
            workers,
            fail_rate,
            exit_code_unfinished,
            #[cfg(feature = "http")]
            health: f.get("--health")?,
        })
    }
}

/// A small xorshift generator for the simulated failures.
struct Dice(u64);

impl Dice {
    fn new() -> Dice {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        Dice(seed | 1)
    }
    /// True with probability `p`.
    fn roll(&mut self, p: f64) -> bool {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// The model call's retry policy: transient failures (429s) are retried
/// with a short exponential backoff; if they outlast the budget the call is
/// left in doubt (nothing recorded) and a re-run retries it with the same key.
fn model_retry_policy() -> RetryPolicy {
    RetryPolicy::exponential(10_000)
        .backoff(Duration::from_millis(1), Duration::from_millis(20))
        .jitter(0.5)
        .deadline(Duration::from_secs(120))
        .on_exhausted(OnExhausted::LeaveInDoubt)
}

/// The record's input, kept in the unit's begin record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Input {
    index: u32,
}

#[derive(Debug, Default)]
struct Totals {
    done: u32,
    sent: u64,
    resends: u64,
    model_calls: u64,
    model_replayed: u64,
    tokens_spent: u64,
    tokens_saved: u64,
    resumed_units: u64,
    retries: u64,
}

impl Totals {
    /// Adds another worker's counts (destructured: a new field must be
    /// summed here, the compiler says so).
    fn absorb(&mut self, other: Totals) {
        let Totals {
            done,
            sent,
            resends,
            model_calls,
            model_replayed,
            tokens_spent,
            tokens_saved,
            resumed_units,
            retries,
        } = other;
        self.done += done;
        self.sent += sent;
        self.resends += resends;
        self.model_calls += model_calls;
        self.model_replayed += model_replayed;
        self.tokens_spent += tokens_spent;
        self.tokens_saved += tokens_saved;
        self.resumed_units += resumed_units;
        self.retries += retries;
    }
}

fn unit_id(i: u32) -> String {
    format!("record-{i:06}")
}

/// The journal cursor holding the index of the first record not yet known
/// committed: a re-run resumes there instead of remembering every finished
/// record id (the journal forgets old ids, see `Retention`).
const CURSOR: &str = "batch_agent/next";

/// Whether record `i` was committed by an earlier run: its unit is committed,
/// or it finished long enough ago that retention forgot its id (this demo
/// never aborts a unit, so a forgotten unit was committed).
fn finished_before(journal: &Journal, i: u32) -> bool {
    let id = unit_id(i);
    journal.unit_state(&id) == Some(UnitState::Committed) || journal.is_forgotten(&id)
}

/// The first record not yet committed, and the committed records above it.
/// With N workers at most about N records sit above the frontier, so the
/// set stays small whatever --records is.
struct Frontier {
    next: u32,
    above: std::collections::BTreeSet<u32>,
}

impl Frontier {
    fn new(start: u32) -> Self {
        Frontier {
            next: start,
            above: Default::default(),
        }
    }
    /// Records `i` as committed; returns the new frontier if it moved.
    fn done(&mut self, i: u32) -> Option<u32> {
        if i < self.next {
            return None;
        }
        self.above.insert(i);
        let before = self.next;
        while self.above.remove(&self.next) {
            self.next += 1;
        }
        (self.next != before).then_some(self.next)
    }
}

/// Marks record `i` committed and, when the committed prefix grew, writes
/// the cursor. Buffered: it rides on the next unit's sync. A cursor lost in
/// a crash only lags, and the records between it and the real frontier are
/// recent enough to be retained, so the re-run skips them by id. Written
/// under the frontier lock so that cursor values only grow.
fn advance(
    journal: &Journal,
    frontier: &Mutex<Frontier>,
    i: u32,
) -> Result<(), agentwal::journal::Error> {
    let mut f = frontier.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(next) = f.done(i) {
        journal.set_cursor(CURSOR, &next, Durability::Buffered)?;
    }
    Ok(())
}

/// One record = one unit: model call (journaled), work, send (journaled).
fn process(
    journal: &Journal,
    sink: &mut File,
    i: u32,
    work: Duration,
    fail_rate: f64,
    dice: &mut Dice,
    t: &mut Totals,
) -> Result<(), Box<dyn std::error::Error>> {
    let id = unit_id(i);
    let mut unit = journal.begin(&id, "record", &Input { index: i })?;
    if unit.is_resumed() {
        t.resumed_units += 1;
    }

    // The model call: journaled so that a resumed unit does not pay again.
    // In doubt after a kill it is simply called again (same key).
    // Transient failures (429s) are retried by the effect's policy; only a
    // success is recorded, so a resumed unit never pays for it again. The
    // attempt number is counted durably: retries before a kill count too.
    let mut called = false;
    let mut attempt = 1u32;
    let model = Effect::retry_same_key("model").retry(model_retry_policy());
    let reply: ModelReply = unit.run(model, |ctx| {
        called = true;
        attempt = ctx.attempt_number();
        if dice.roll(fail_rate) {
            return Err(StepError::transient("model: HTTP 429 Too Many Requests"));
        }
        Ok(fake_model(&format!("summarize record {i}")))
    })?;
    if called {
        t.retries += u64::from(attempt.saturating_sub(1));
    }
    if called {
        t.model_calls += 1;
        t.tokens_spent += reply.tokens;
    } else {
        t.model_replayed += 1;
        t.tokens_saved += reply.tokens;
    }

    // The simulated work on the model's answer. A kill here leaves the unit
    // incomplete with its model call recorded: the re-run replays it.
    std::thread::sleep(work);

    // The message: one line per delivery attempt, written before the
    // outcome is recorded. In doubt after a kill → re-sent with the same key.
    unit.run(Effect::retry_same_key("send"), |ctx| {
        let line = format!("{}\t{} {}\n", ctx.key(), id, reply.text);
        // One write(2) of a short line on an O_APPEND file: a kill leaves
        // the whole line or none of it.
        if let Err(e) = sink.write_all(line.as_bytes()) {
            // A failed delivery (disk full, I/O error) may have reached the
            // receiver in part: it is in doubt, not failed. Recording the
            // error would replay it on every re-run and wedge this record
            // forever; an in-doubt error records nothing (the intent is
            // durable already, like after a kill), the agent stops, and a
            // re-run retries the send with the same key.
            return Err(StepError::in_doubt(format!(
                "cannot write to the sink ({e}); record {id} stays in doubt, re-run to retry it with key {}",
                ctx.key()
            )));
        }
        t.sent += 1;
        if ctx.attempt() == Attempt::Retry {
            t.resends += 1;
        }
        Ok(())
    })?;
    unit.commit()?;
    Ok(())
}

/// Logs on stderr as `RUST_LOG` asks (e.g. `RUST_LOG=info`, or
/// `RUST_LOG=agentwal=debug` for a span per unit and step); silent when it is
/// unset. stdout keeps only the demo's own lines.
fn install_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .try_init();
}

fn main() -> ExitCode {
    let args = Args::parse();
    install_tracing();
    // SIGTERM / SIGINT: finish the unit in progress, then exit 0 / 130 within
    // SHUTDOWN_TIMEOUT; a second signal exits at once (the journal replays).
    let shutdown = match Shutdown::install_thread() {
        Ok(s) => s,
        Err(e) => {
            say_err!("batch_agent: error: {e}");
            return ExitCode::from(2);
        }
    };
    // Never outlive the budget: a unit still running at the deadline is cut
    // (it replays as incomplete, like after a SIGKILL).
    shutdown.set_exit_at_deadline(true);
    // Opt-in (Kubernetes Jobs): "drained, not finished" gets its own code;
    // the default stays 0 after SIGTERM whether or not the batch was done.
    shutdown.set_unfinished_exit_code(args.exit_code_unfinished.map(i32::from));
    match run(&args, &shutdown) {
        Ok(true) if shutdown.is_triggered() => ExitCode::from(shutdown.exit_code() as u8),
        Ok(false) if shutdown.is_triggered() => {
            ExitCode::from(shutdown.unfinished_exit_code() as u8)
        }
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            say_err!("batch_agent: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args, shutdown: &Shutdown) -> Result<bool, Box<dyn std::error::Error>> {
    // The library records its own metrics; /metrics renders them.
    #[cfg(feature = "http")]
    if let Some(addr) = &args.health {
        serve_health(addr, shutdown.clone(), Arc::new(Metrics::new()))?;
    }
    // Default retention and compaction: memory and open time stay flat
    // whatever --records is; the cursor below replaces old finished ids.
    let opts = JournalOptions {
        log: LogOptions {
            segment_size: 4 << 20,
            max_record_bytes: 256 << 10,
            ..LogOptions::default()
        },
        max_payload_bytes: 64 << 10,
        ..JournalOptions::default()
    };
    let journal = Journal::open(&args.journal, opts)?;
    let replay = journal.replay_report().clone();
    let sink = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.sink)
        .map_err(|e| format!("cannot open the sink {}: {e}", args.sink.display()))?;

    let n = args.records;
    // The cursor lags the last commit by at most one record (it is written
    // right after the commit, buffered), and that record's id is always
    // retained: skip forward over committed ids from the cursor on.
    let cursor = journal.cursor::<u32>(CURSOR)?.unwrap_or(0).min(n);
    let start = (cursor..n)
        .find(|&i| !finished_before(&journal, i))
        .unwrap_or(n);
    // The committed prefix, advanced as records commit (out of order with
    // --workers) and written as the cursor each time it moves.
    let frontier = Mutex::new(Frontier::new(start));
    let tty = std::io::stderr().is_terminal();
    say!(
        "batch_agent: {n} records, journal {} ({} committed, {} incomplete at open), resuming at record {start}",
        args.journal.display(),
        replay.committed,
        replay.incomplete.len()
    );
    // On a terminal: one progress line on stderr, redrawn at most 10 times a
    // second; otherwise ten "progress:" lines on stdout.
    let bar = tty.then(|| Progress::new(n));

    let work = Duration::from_millis(args.work_ms);
    let began = Instant::now();
    let step = (n / 10).max(1);
    // The next record to claim. A worker claims a record only while it holds
    // a shutdown unit guard, and always finishes (commits) what it claimed,
    // so once the workers are gone every record below `next` is committed.
    // (u64: N workers over-claiming past `n` = u32::MAX must not wrap.)
    let next = AtomicU64::new(u64::from(start));
    let finished = AtomicU32::new(start);
    let failed = AtomicBool::new(false);
    let bar = Mutex::new(bar);
    let worker = |mut sink: File, w: u32| -> Result<Totals, String> {
        let mut t = Totals::default();
        // Each worker rolls its own dice (seeded apart).
        let mut dice = Dice::new();
        dice.0 ^= u64::from(w).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        dice.0 |= 1;
        while !failed.load(Ordering::Acquire) {
            // Refused once shutdown began: no new unit starts, the ones in
            // progress (holding their guards) always finish and commit.
            let Ok(_unit_guard) = shutdown.begin_unit() else {
                break;
            };
            let i = next.fetch_add(1, Ordering::AcqRel);
            let Some(i) = u32::try_from(i).ok().filter(|&i| i < n) else {
                break;
            };
            if finished_before(&journal, i) {
                if let Err(e) = advance(&journal, &frontier, i) {
                    failed.store(true, Ordering::Release);
                    return Err(e.to_string());
                }
                continue;
            }
            if let Err(e) = process(
                &journal,
                &mut sink,
                i,
                work,
                args.fail_rate,
                &mut dice,
                &mut t,
            ) {
                failed.store(true, Ordering::Release);
                return Err(e.to_string());
            }
            if let Err(e) = advance(&journal, &frontier, i) {
                failed.store(true, Ordering::Release);
                return Err(e.to_string());
            }
            t.done += 1;
            let k = finished.fetch_add(1, Ordering::AcqRel) + 1;
            match &mut *bar.lock().unwrap_or_else(|p| p.into_inner()) {
                Some(b) => b.set_position(k.max(b.pos)),
                None if k.is_multiple_of(step) || k == n => say!("progress: {k}/{n} records"),
                None => {}
            }
        }
        Ok(t)
    };
    let results: Vec<Result<Totals, String>> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for w in 0..args.workers {
            // Each worker writes through its own handle of the O_APPEND sink:
            // one write(2) per line, so lines never interleave.
            let sink = sink
                .try_clone()
                .map_err(|e| format!("cannot share the sink: {e}"))?;
            let worker = &worker;
            handles.push(
                std::thread::Builder::new()
                    .name(format!("worker-{w}"))
                    .spawn_scoped(s, move || worker(sink, w))
                    .map_err(|e| format!("cannot start a worker: {e}"))?,
            );
        }
        Ok::<_, String>(
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("a worker panicked".into())))
                .collect(),
        )
    })?;
    let mut t = Totals::default();
    for r in results {
        t.absorb(r?);
    }
    // Where the workers stopped: `n` when they went through every record.
    let stopped_at = next.load(Ordering::Acquire).min(u64::from(n)) as u32;
    if stopped_at < n {
        say!(
            "shutdown ({}): stopped before record {stopped_at}, re-run to resume",
            shutdown
                .reason()
                .map_or("requested".to_string(), |r| r.to_string())
        );
    }
    let mut bar = bar.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(b) = &mut bar {
        b.finish();
    }
    journal.sync()?;
    // Every record before the stop point is committed (the earlier ones by
    // the choice of `start`, the rest by the workers, which return early on
    // any failure and finish every record they claimed). Do not
    // re-count all N ids: after a shutdown the budget is running and N may be
    // huge (counting 4e9 ids took minutes, far past SHUTDOWN_TIMEOUT).
    let committed = stopped_at;
    let stats = journal.stats();
    say!(
        "records done: {} this run, {committed}/{n} committed (resumed from record {start}, {} units resumed mid-way)",
        t.done, t.resumed_units
    );
    say!("messages sent: {} (re-sends: {})", t.sent, t.resends);
    say!(
        "model calls: {} made, {} replayed from the journal; tokens spent {}, saved {}",
        t.model_calls,
        t.model_replayed,
        t.tokens_spent,
        t.tokens_saved
    );
    say!(
        "journal: {} bytes on disk, {} compactions, {:.1}s",
        stats.disk_bytes,
        stats.compactions,
        began.elapsed().as_secs_f64()
    );
    say!(
        "summary: {committed}/{n} committed, {} sent, {} re-sends, {} retries (transient model failures absorbed)",
        t.sent, t.resends, t.retries
    );
    journal.close()?;
    Ok(committed == n)
}

/// A one-line progress display on stderr (a terminal).
struct Progress {
    total: u32,
    pos: u32,
    began: Instant,
    drawn: Option<Instant>,
}

impl Progress {
    fn new(total: u32) -> Progress {
        Progress {
            total,
            pos: 0,
            began: Instant::now(),
            drawn: None,
        }
    }

    fn set_position(&mut self, pos: u32) {
        self.pos = pos;
        if self
            .drawn
            .is_none_or(|d| d.elapsed() >= Duration::from_millis(100))
        {
            self.draw();
        }
    }

    fn draw(&mut self) {
        let (pos, total) = (u64::from(self.pos), u64::from(self.total.max(1)));
        let filled = (pos * 40 / total) as usize;
        let _ = write!(
            std::io::stderr(),
            "\r{}{} {}/{} records {:.0}s",
            "#".repeat(filled),
            "-".repeat(40 - filled.min(40)),
            self.pos,
            self.total,
            self.began.elapsed().as_secs_f64()
        );
        self.drawn = Some(Instant::now());
    }

    fn finish(&mut self) {
        self.draw();
        say_err!("");
    }
}

/// Runs the health server on its own thread and tokio runtime (the agent's
/// loop is synchronous).
#[cfg(feature = "http")]
fn serve_health(
    addr: &str,
    shutdown: Shutdown,
    metrics: Arc<Metrics>,
) -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let server = rt.block_on(agentwal::runtime::health::HealthServer::spawn(
        addr, shutdown, metrics,
    ))?;
    say!("health endpoints on http://{}", server.local_addr());
    std::thread::Builder::new()
        .name("health".into())
        .spawn(move || {
            // Keep the server handle alive: dropping it stops the server.
            let _server = server;
            rt.block_on(std::future::pending::<()>())
        })?;
    Ok(())
}

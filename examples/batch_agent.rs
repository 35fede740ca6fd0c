//! The demo agent: processes N records, each one journaled unit with a
//! simulated model call and one message sent to a "sink" file.
//!
//! ```text
//! batch_agent --journal DIR --sink FILE [--records N] [--work-ms MS] [--fail-rate P]
//! ```
//!
//! `--fail-rate P` makes the simulated model call fail transiently (like an
//! HTTP 429) with probability `P` per attempt: the effect's retry policy
//! absorbs the failures (each attempt counted durably), every record still
//! ends committed, and the final summary line counts the retries.
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentwal::journal::{
    Attempt, AutoCompact, Effect, Journal, JournalOptions, OnExhausted, Retention, RetryPolicy,
    StepError, UnitState,
};
use agentwal::log::LogOptions;
use agentwal::runtime::{Metrics, Shutdown};
use clap::Parser;
use serde::{Deserialize, Serialize};

/// Prints a line on stdout. Output is advisory: a closed pipe
/// (`batch_agent ... | head`) must not stop the agent mid-batch, and
/// `println!` would panic on EPIPE.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Like [`say!`], on stderr.
macro_rules! say_err {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Process records as journaled units; safe to kill and re-run.
#[derive(Parser, Debug)]
#[command(name = "batch_agent", version, about)]
struct Args {
    /// Journal directory (created if missing).
    #[arg(long)]
    journal: PathBuf,
    /// Sink file: one line per message delivery attempt.
    #[arg(long)]
    sink: PathBuf,
    /// Number of records in the batch.
    #[arg(long, default_value_t = 1000)]
    records: u32,
    /// Simulated work per record, in milliseconds.
    #[arg(long, default_value_t = 2)]
    work_ms: u64,
    /// Probability (0..=1) that one attempt of the simulated model call
    /// fails transiently (like an HTTP 429); the retry policy absorbs it.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    fail_rate: f64,
    /// Serve /health, /ready, POST /shutdown and /metrics on this address
    /// (e.g. 127.0.0.1:8080; keep it off public interfaces).
    #[cfg(feature = "http")]
    #[arg(long)]
    health: Option<String>,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not a probability between 0 and 1"))
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

/// What the (fake) model answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ModelReply {
    text: String,
    tokens: u64,
}

/// The record's input, kept in the unit's begin record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Input {
    index: u32,
}

/// A deterministic stand-in for an LLM call: the same prompt always gives
/// the same text and token count.
fn fake_model(prompt: &str) -> ModelReply {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prompt.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    ModelReply {
        text: format!("summary-{:08x}", h as u32),
        tokens: 50 + h % 200,
    }
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

fn unit_id(i: u32) -> String {
    format!("record-{i:06}")
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
    // success is recorded, so a resumed unit never pays for it again.
    let mut called = false;
    // The attempt number is counted durably: retries before a kill count too.
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

fn main() -> ExitCode {
    let args = Args::parse();
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
    match run(&args, &shutdown) {
        Ok(_) if shutdown.is_triggered() => ExitCode::from(shutdown.exit_code() as u8),
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            say_err!("batch_agent: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args, shutdown: &Shutdown) -> Result<bool, Box<dyn std::error::Error>> {
    let metrics = Arc::new(Metrics::new());
    #[cfg(feature = "http")]
    if let Some(addr) = &args.health {
        serve_health(addr, shutdown.clone(), metrics.clone())?;
    }
    let opts = JournalOptions {
        log: LogOptions {
            segment_size: 4 << 20,
            max_record_bytes: 256 << 10,
            ..LogOptions::default()
        },
        max_payload_bytes: 64 << 10,
        // Every finished record id is kept so that a re-run skips it.
        retention: Retention::default(),
        auto_compact: AutoCompact {
            every_records: Some(4096),
            every_bytes: None,
        },
    };
    let journal = Journal::open(&args.journal, opts)?;
    let replay = journal.replay_report().clone();
    let mut sink = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.sink)
        .map_err(|e| format!("cannot open the sink {}: {e}", args.sink.display()))?;

    let n = args.records;
    let start = (0..n)
        .find(|&i| journal.unit_state(&unit_id(i)) != Some(UnitState::Committed))
        .unwrap_or(n);
    let tty = std::io::stderr().is_terminal();
    say!(
        "batch_agent: {n} records, journal {} ({} committed, {} incomplete at open), resuming at record {start}",
        args.journal.display(),
        replay.committed,
        replay.incomplete.len()
    );
    let bar = tty.then(|| {
        let b = indicatif::ProgressBar::new(u64::from(n));
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} records {elapsed} eta {eta}",
            )
            .expect("valid template"),
        );
        b.set_position(u64::from(start));
        b
    });

    let work = Duration::from_millis(args.work_ms);
    let began = Instant::now();
    let mut t = Totals::default();
    let mut dice = Dice::new();
    let step = (n / 10).max(1);
    // Where the loop stopped: `n` when it went through every record.
    let mut stopped_at = n;
    for i in start..n {
        // Refused once shutdown began: no new unit starts, the one in
        // progress (holding its guard) always finishes and commits.
        let Ok(_unit_guard) = shutdown.begin_unit() else {
            say!(
                "shutdown ({}): stopped before record {i}, re-run to resume",
                shutdown
                    .reason()
                    .map_or("requested".to_string(), |r| r.to_string())
            );
            stopped_at = i;
            break;
        };
        if journal.unit_state(&unit_id(i)) == Some(UnitState::Committed) {
            continue;
        }
        process(
            &journal,
            &mut sink,
            i,
            work,
            args.fail_rate,
            &mut dice,
            &mut t,
        )?;
        metrics.unit_committed();
        t.done += 1;
        match &bar {
            Some(b) => b.set_position(u64::from(i + 1)),
            None if (i + 1) % step == 0 || i + 1 == n => {
                say!("progress: {}/{n} records", i + 1)
            }
            None => {}
        }
    }
    if let Some(b) = bar {
        b.finish();
    }
    journal.sync()?;
    // Every record before the stop point is committed (the earlier ones by
    // the choice of `start`, the rest by this loop, which returns early on
    // any failure), and records run in order, so none after it is. Do not
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

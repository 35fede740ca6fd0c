//! The fleet agent: many workers drain one shared queue in PostgreSQL; each
//! keeps its own local journal. See docs/fleet.md.
//!
//! ```text
//! fleet_agent enqueue --pg URL --records N
//! fleet_agent work    --pg URL --journal DIR --sink FILE --ledger FILE [--work-ms MS] [--worker-id ID] [--exit-when-drained]
//! fleet_agent status  --pg URL [--json]
//! ```
//!
//! Each record is one unit: a model call (journaled locally, retried with the
//! same key), the simulated work, a `ledger` effect declared never-repeat
//! (its intent reaches PostgreSQL before the line `<record-key>\t<worker-id>`
//! is appended to the ledger file), and a message (journaled locally, retried
//! with the same key) appending `<idempotency-key>\t<payload>` to the sink.
//! Then the item is acked with its fencing token, settling the ledger key in
//! the same round trip, and the local unit commits.
//!
//! SIGTERM / SIGINT: the unit in progress finishes, the lease is released or
//! acked, and the worker exits 0 / 130 within `SHUTDOWN_TIMEOUT`.
//!
//! Tuning through the environment (the command line is fixed):
//! `AGENTWAL_FLEET_LEASE_MS` (visibility timeout, default 30000),
//! `AGENTWAL_FLEET_MAX_ATTEMPTS` (default 25), `AGENTWAL_FLEET_RETRY_SECS`
//! (how long a lost PostgreSQL is retried, default 600).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentwal::fleet::{Error as FleetError, Fleet, FleetOptions, Intent, Lease, NewItem, OnDoubt};
use agentwal::journal::{Effect, Journal, JournalOptions};
use agentwal::runtime::Shutdown;

#[path = "support/args.rs"]
#[macro_use]
mod args;
use args::ParseExit;

#[path = "support/model.rs"]
mod model;
use model::{fake_model, ModelReply};

const USAGE: &str = "\
Many workers, one queue in PostgreSQL, one local journal each.

Usage:
  fleet_agent enqueue --pg URL --records N
  fleet_agent work    --pg URL --journal DIR --sink FILE --ledger FILE [--work-ms MS] [--worker-id ID] [--exit-when-drained]
  fleet_agent status  --pg URL [--json]

Commands:
  enqueue   Enqueue records record-000000 .. record-(N-1) (idempotent by key)
  work      Work on the shared queue
  status    Print item counts by state

Options:
      --pg URL              PostgreSQL connection URL
      --records N           Number of records (enqueue)
      --journal DIR         Local journal directory (created if missing; may be lost)
      --sink FILE           Sink file: one line per message delivery attempt
      --ledger FILE         Ledger file: one line per ledger effect (never repeated)
      --work-ms MS          Simulated work per record, in milliseconds [default: 2]
      --worker-id ID        This worker's id [default: host name and process id]
      --exit-when-drained   Exit 0 once nothing is pending or in flight
      --json                status: one JSON object {\"pending\",\"in_flight\",\"done\",\"dead\",\"in_doubt\"}
  -h, --help                Print help
  -V, --version             Print version

Environment: AGENTWAL_FLEET_LEASE_MS, AGENTWAL_FLEET_MAX_ATTEMPTS, AGENTWAL_FLEET_RETRY_SECS,
SHUTDOWN_TIMEOUT.
";

/// One command of the fixed command line (see [`USAGE`]).
#[derive(Debug)]
enum Cmd {
    Enqueue {
        pg: String,
        records: u32,
    },
    Work {
        pg: String,
        journal: PathBuf,
        sink: PathBuf,
        ledger: PathBuf,
        work_ms: u64,
        worker_id: Option<String>,
        exit_when_drained: bool,
    },
    Status {
        pg: String,
        json: bool,
    },
}

impl Cmd {
    fn try_parse(argv: impl IntoIterator<Item = String>) -> Result<Cmd, ParseExit> {
        let (cmd, rest) = args::subcommand(argv, &["enqueue", "work", "status"])?;
        Ok(match cmd.as_str() {
            "enqueue" => {
                let f = args::parse(rest, &["--pg", "--records"], &[])?;
                Cmd::Enqueue {
                    pg: f.required("--pg", "URL")?,
                    records: f.required("--records", "N")?,
                }
            }
            "work" => {
                let f = args::parse(
                    rest,
                    &[
                        "--pg",
                        "--journal",
                        "--sink",
                        "--ledger",
                        "--work-ms",
                        "--worker-id",
                    ],
                    &["--exit-when-drained"],
                )?;
                Cmd::Work {
                    pg: f.required("--pg", "URL")?,
                    journal: f.required("--journal", "DIR")?,
                    sink: f.required("--sink", "FILE")?,
                    ledger: f.required("--ledger", "FILE")?,
                    work_ms: f.get_or("--work-ms", 2)?,
                    worker_id: f.get("--worker-id")?,
                    exit_when_drained: f.switch("--exit-when-drained"),
                }
            }
            _ => {
                let f = args::parse(rest, &["--pg"], &["--json"])?;
                Cmd::Status {
                    pg: f.required("--pg", "URL")?,
                    json: f.switch("--json"),
                }
            }
        })
    }
}

fn env_u64(name: &str) -> Result<Option<u64>, String> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|e| format!("{name}={v:?}: {e}")),
        Err(_) => Ok(None),
    }
}

fn options_from_env() -> Result<FleetOptions, String> {
    let mut o = FleetOptions::default();
    if let Some(ms) = env_u64("AGENTWAL_FLEET_LEASE_MS")? {
        o.lease = Duration::from_millis(ms);
    }
    if let Some(n) = env_u64("AGENTWAL_FLEET_MAX_ATTEMPTS")? {
        o.max_attempts =
            u32::try_from(n).map_err(|e| format!("AGENTWAL_FLEET_MAX_ATTEMPTS: {e}"))?;
    }
    if let Some(s) = env_u64("AGENTWAL_FLEET_RETRY_SECS")? {
        o.retry_budget = Duration::from_secs(s);
    }
    Ok(o)
}

fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

type BoxError = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let cmd = args::or_exit(
        "fleet_agent",
        USAGE,
        Cmd::try_parse(std::env::args().skip(1)),
    );
    let shutdown = match Shutdown::install_thread() {
        Ok(s) => s,
        Err(e) => {
            say_err!("fleet_agent: error: {e}");
            return ExitCode::from(2);
        }
    };
    shutdown.set_exit_at_deadline(true);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say_err!("fleet_agent: error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let r = rt.block_on(async {
        match cmd {
            Cmd::Enqueue { pg, records } => enqueue(&pg, records).await,
            Cmd::Status { pg, json } => status(&pg, json).await,
            Cmd::Work {
                pg,
                journal,
                sink,
                ledger,
                work_ms,
                worker_id,
                exit_when_drained,
            } => {
                let w = Worker {
                    worker: worker_id.unwrap_or_else(default_worker_id),
                    work: Duration::from_millis(work_ms),
                    exit_when_drained,
                };
                w.run(&pg, &journal, &sink, &ledger, &shutdown).await
            }
        }
    });
    rt.shutdown_timeout(Duration::from_millis(100));
    match r {
        Ok(()) if shutdown.is_triggered() => ExitCode::from(shutdown.exit_code() as u8),
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say_err!("fleet_agent: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn record_key(i: u32) -> String {
    format!("record-{i:06}")
}

async fn enqueue(pg: &str, records: u32) -> Result<(), BoxError> {
    let fleet = Fleet::connect(pg, options_from_env()?).await?;
    let items: Vec<NewItem> = (0..records)
        .map(|i| NewItem {
            key: record_key(i),
            payload: format!("{{\"index\":{i}}}"),
        })
        .collect();
    let added = fleet.enqueue(&items).await?;
    say!(
        "fleet_agent: enqueued {added} new records ({} already queued)",
        u64::from(records) - added
    );
    Ok(())
}

async fn status(pg: &str, json: bool) -> Result<(), BoxError> {
    let fleet = Fleet::connect(pg, options_from_env()?).await?;
    let s = fleet.status().await?;
    if json {
        say!("{}", serde_json::to_string(&s)?);
    } else {
        say!("pending    {}", s.pending);
        say!("in_flight  {}", s.in_flight);
        say!("done       {}", s.done);
        say!("dead       {}", s.dead);
        say!("in_doubt   {}", s.in_doubt);
    }
    Ok(())
}

struct Worker {
    worker: String,
    work: Duration,
    exit_when_drained: bool,
}

#[derive(Debug, Default)]
struct Totals {
    done: u64,
    in_doubt: u64,
    fenced: u64,
    ledger_reused: u64,
}

/// The effects' stand-ins for external services.
struct Outputs {
    sink: File,
    ledger: File,
}

enum Outcome {
    Done,
    InDoubt,
    Fenced,
}

/// Appends one line with one `write(2)` (a kill leaves all of it or none);
/// a failed write leaves the effect in doubt: stop the worker.
fn append_line(file: &mut File, what: &str, line: &str) {
    if let Err(e) = file.write_all(line.as_bytes()) {
        say_err!("fleet_agent: error: cannot write to the {what} ({e}); stopping with the effect in doubt");
        std::process::exit(2);
    }
}

impl Worker {
    async fn run(
        &self,
        pg: &str,
        journal_dir: &std::path::Path,
        sink: &std::path::Path,
        ledger: &std::path::Path,
        shutdown: &Shutdown,
    ) -> Result<(), BoxError> {
        // Three connections: the work, the claim overlapped with the ack, and
        // the lease renewal.
        let opts = FleetOptions {
            pool_size: 3,
            ..options_from_env()?
        };
        let fleet = Arc::new(Fleet::connect(pg, opts).await?);
        let journal = Journal::open(journal_dir, JournalOptions::small())?;
        let open = |p: &std::path::Path| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("cannot open {}: {e}", p.display()))
        };
        let mut out = Outputs {
            sink: open(sink)?,
            ledger: open(ledger)?,
        };
        say!(
            "fleet_agent: worker {} on journal {} ({} incomplete local units at open)",
            self.worker,
            journal_dir.display(),
            journal.replay_report().incomplete.len()
        );

        // Lease renewal while working: every third of the visibility timeout.
        let held: Arc<Mutex<Option<(String, i64)>>> = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let renewer = {
            let (fleet, held, stop) = (fleet.clone(), held.clone(), stop.clone());
            let every = fleet.options().lease / 3;
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(every).await;
                    let cur = held.lock().map(|g| g.clone()).unwrap_or(None);
                    if let Some(l) = cur {
                        if let Ok(v) = fleet.renew(std::slice::from_ref(&l)).await {
                            if v.is_empty() {
                                say_err!("fleet_agent: lease on {} lost (taken over); the unit will stop at its next step", l.0);
                            }
                        }
                    }
                }
            })
        };

        let began = Instant::now();
        let mut t = Totals::default();
        let rt0 = fleet.round_trips();
        let result = async {
            // The next item, claimed while the previous ack was in flight.
            let mut next: Vec<Lease> = Vec::new();
            loop {
                if shutdown.is_triggered() {
                    for lease in next.drain(..) {
                        fleet.release(&lease).await?;
                    }
                    break;
                }
                let leases = if next.is_empty() {
                    fleet.claim(&self.worker, 1).await?
                } else {
                    std::mem::take(&mut next)
                };
                if leases.is_empty() {
                    if self.exit_when_drained {
                        let s = fleet.status().await?;
                        if s.pending == 0 && s.in_flight == 0 {
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                for lease in leases {
                    let guard = match shutdown.begin_unit() {
                        Ok(g) => g,
                        Err(_) => {
                            fleet.release(&lease).await?;
                            continue;
                        }
                    };
                    if let Ok(mut h) = held.lock() {
                        *h = Some((lease.key.clone(), lease.fence));
                    }
                    let r = self
                        .process(&fleet, &journal, &lease, &mut out, &mut t, shutdown)
                        .await;
                    if let Ok(mut h) = held.lock() {
                        *h = None;
                    }
                    drop(guard);
                    let (outcome, claimed) = r?;
                    next.extend(claimed);
                    match outcome {
                        Outcome::Done => t.done += 1,
                        Outcome::InDoubt => t.in_doubt += 1,
                        Outcome::Fenced => t.fenced += 1,
                    }
                }
            }
            Ok::<(), BoxError>(())
        }
        .await;
        stop.store(true, Ordering::Relaxed);
        renewer.abort();
        let secs = began.elapsed().as_secs_f64();
        let rts = fleet.round_trips() - rt0;
        say!(
            "fleet_agent: worker {}: {} done, {} in doubt, {} taken over, {} ledger results reused; {:.1} items/s; {} PostgreSQL round trips ({:.2} per done unit)",
            self.worker,
            t.done,
            t.in_doubt,
            t.fenced,
            t.ledger_reused,
            t.done as f64 / secs.max(1e-9),
            rts,
            rts as f64 / (t.done.max(1)) as f64
        );
        journal.close()?;
        result
    }

    async fn process(
        &self,
        fleet: &Fleet,
        journal: &Journal,
        lease: &Lease,
        out: &mut Outputs,
        t: &mut Totals,
        shutdown: &Shutdown,
    ) -> Result<(Outcome, Vec<Lease>), BoxError> {
        let key = &lease.key;
        let mut unit = match journal.begin(key, "record", &lease.payload) {
            Ok(u) => u,
            Err(e) => {
                // The local journal cannot take this unit (for example a
                // unit id it already committed): a failed attempt.
                say_err!("fleet_agent: {key}: local journal refused the unit: {e}");
                fleet.nack(lease, &e.to_string()).await?;
                return Ok((Outcome::Fenced, Vec::new()));
            }
        };

        // 1. The model call: local journal only (retry with the same key).
        let reply: ModelReply = unit.run(Effect::retry_same_key("model"), |_ctx| {
            Ok::<_, std::io::Error>(fake_model(&format!("summarize {key}")))
        })?;

        // 2. The work (a slow step: the lease is renewed meanwhile).
        tokio::time::sleep(self.work).await;

        // 3. The ledger: never repeat. Intent in PostgreSQL before the write.
        let ledger_key = format!("{key}/ledger");
        let ledger_result = match fleet
            .intent(lease, &ledger_key, &self.worker, OnDoubt::Surface)
            .await
        {
            Ok(Intent::Fresh) => {
                append_line(
                    &mut out.ledger,
                    "ledger",
                    &format!("{key}\t{}\n", self.worker),
                );
                format!("written by {}", self.worker)
            }
            Ok(Intent::Settled(r)) => {
                t.ledger_reused += 1;
                r.unwrap_or_default()
            }
            Ok(Intent::InDoubt) => {
                say_err!("fleet_agent: {key}: ledger effect {ledger_key} is in doubt (a worker died after recording its intent); left for an operator");
                return Ok((Outcome::InDoubt, Vec::new()));
            }
            Err(FleetError::Fenced { .. }) => return Ok((Outcome::Fenced, Vec::new())),
            Err(e) => return Err(e.into()),
        };

        // 4. The message: local journal only (retry with the same key).
        unit.run(Effect::retry_same_key("send"), |ctx| {
            append_line(
                &mut out.sink,
                "sink",
                &format!("{}\t{key} {}\n", ctx.key(), reply.text),
            );
            Ok::<_, std::io::Error>(())
        })?;

        // 5. Ack with the fence, settling the ledger key: one round trip,
        //    overlapped with the claim of the next item (unless draining).
        let settle = [(ledger_key, ledger_result)];
        let (acked, claimed) = if shutdown.is_triggered() {
            (fleet.ack(lease, &settle).await, Ok(Vec::new()))
        } else {
            tokio::join!(fleet.ack(lease, &settle), fleet.claim(&self.worker, 1))
        };
        let outcome = match acked {
            Ok(()) => {
                unit.commit()?;
                Outcome::Done
            }
            Err(FleetError::Fenced { .. }) => Outcome::Fenced,
            Err(e) => return Err(e.into()),
        };
        Ok((outcome, claimed?))
    }
}

//! The benchmark baseline for the fleet (docs/benchmarks.md, "Fleet"): a
//! plain `FOR UPDATE SKIP LOCKED` queue in PostgreSQL doing the same work as
//! `fleet_agent` (model call, the work, a ledger line, a message line) with
//! no effect journal, no leases, no fencing and no idempotency keys: claim
//! (1 round trip), work, ack (1 round trip). It gives none of the fleet's
//! guarantees — a kill between the ledger line and the ack writes the line
//! again on the retry — and exists only to measure what they cost.
//!
//! ```text
//! fleet_baseline enqueue --pg URL --records N
//! fleet_baseline work    --pg URL --sink FILE --ledger FILE [--work-ms MS] [--worker-id ID]
//! ```
//! `work` exits when nothing is left to claim.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[path = "support/args.rs"]
mod args;
use args::ParseExit;

#[path = "support/model.rs"]
mod model;
use model::fake_model;

const USAGE: &str = "\
A plain SKIP LOCKED queue doing fleet_agent's work with none of its guarantees.

Usage:
  fleet_baseline enqueue --pg URL --records N
  fleet_baseline work    --pg URL --sink FILE --ledger FILE [--work-ms MS] [--worker-id ID]

Options:
      --pg URL          PostgreSQL connection URL
      --records N       Number of records (enqueue)
      --sink FILE       Sink file
      --ledger FILE     Ledger file
      --work-ms MS      Simulated work per record, in milliseconds [default: 2]
      --worker-id ID    Worker id written to the ledger [default: baseline]
  -h, --help            Print help
";

/// One command of the command line (see [`USAGE`]).
#[derive(Debug)]
enum Cmd {
    /// Create the table (if missing) and enqueue N records.
    Enqueue { pg: String, records: u32 },
    /// Drain the queue.
    Work {
        pg: String,
        sink: PathBuf,
        ledger: PathBuf,
        work_ms: u64,
        worker_id: String,
    },
}

impl Cmd {
    fn try_parse(argv: impl IntoIterator<Item = String>) -> Result<Cmd, ParseExit> {
        let (cmd, rest) = args::subcommand(argv, &["enqueue", "work"])?;
        if cmd == "enqueue" {
            let f = args::parse(rest, &["--pg", "--records"], &[])?;
            return Ok(Cmd::Enqueue {
                pg: f.required("--pg", "URL")?,
                records: f.required("--records", "N")?,
            });
        }
        let f = args::parse(
            rest,
            &["--pg", "--sink", "--ledger", "--work-ms", "--worker-id"],
            &[],
        )?;
        Ok(Cmd::Work {
            pg: f.required("--pg", "URL")?,
            sink: f.required("--sink", "FILE")?,
            ledger: f.required("--ledger", "FILE")?,
            work_ms: f.get_or("--work-ms", 2)?,
            worker_id: f.get_or("--worker-id", "baseline".to_string())?,
        })
    }
}

type BoxError = Box<dyn std::error::Error>;

async fn connect(pg: &str) -> Result<tokio_postgres::Client, BoxError> {
    let (client, conn) = tokio_postgres::connect(pg, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn run(cmd: Cmd) -> Result<(), BoxError> {
    match cmd {
        Cmd::Enqueue { pg, records } => {
            let c = connect(&pg).await?;
            c.batch_execute(
                "CREATE TABLE IF NOT EXISTS baseline_items (
                     key text PRIMARY KEY, state text NOT NULL DEFAULT 'pending');
                 CREATE INDEX IF NOT EXISTS baseline_pending ON baseline_items (key)
                     WHERE state = 'pending';",
            )
            .await?;
            let n = i64::from(records);
            c.execute(
                "INSERT INTO baseline_items (key)
                 SELECT 'record-' || lpad(i::text, 6, '0') FROM generate_series(0, $1::bigint - 1) i
                 ON CONFLICT DO NOTHING",
                &[&n],
            )
            .await?;
            Ok(())
        }
        Cmd::Work {
            pg,
            sink,
            ledger,
            work_ms,
            worker_id,
        } => {
            let c = connect(&pg).await?;
            let claim = c
                .prepare(
                    "UPDATE baseline_items SET state = 'in_flight'
                      WHERE key = (SELECT key FROM baseline_items WHERE state = 'pending'
                                    ORDER BY key LIMIT 1 FOR UPDATE SKIP LOCKED)
                      RETURNING key",
                )
                .await?;
            let ack = c
                .prepare("UPDATE baseline_items SET state = 'done' WHERE key = $1")
                .await?;
            let open = |p: &PathBuf| OpenOptions::new().create(true).append(true).open(p);
            let (mut sink, mut ledger) = (open(&sink)?, open(&ledger)?);
            let began = Instant::now();
            let mut done = 0u64;
            while let Some(row) = c.query_opt(&claim, &[]).await? {
                let key: String = row.get(0);
                let reply = fake_model(&format!("summarize {key}")).text;
                tokio::time::sleep(Duration::from_millis(work_ms)).await;
                ledger.write_all(format!("{key}\t{worker_id}\n").as_bytes())?;
                sink.write_all(format!("{key}/send/1\t{key} {reply}\n").as_bytes())?;
                c.execute(&ack, &[&key]).await?;
                done += 1;
            }
            let _ = writeln!(
                std::io::stdout(),
                "fleet_baseline: worker {worker_id}: {done} done; {:.1} items/s; {} PostgreSQL round trips",
                done as f64 / began.elapsed().as_secs_f64().max(1e-9),
                2 * done + 1
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cmd = args::or_exit(
        "fleet_baseline",
        USAGE,
        Cmd::try_parse(std::env::args().skip(1)),
    );
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "fleet_baseline: error: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "fleet_baseline: error: {e}");
            ExitCode::from(2)
        }
    }
}

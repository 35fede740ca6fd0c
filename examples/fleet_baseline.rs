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

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "fleet_baseline", about)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create the table (if missing) and enqueue N records.
    Enqueue {
        /// PostgreSQL connection URL.
        #[arg(long)]
        pg: String,
        /// Number of records.
        #[arg(long)]
        records: u32,
    },
    /// Drain the queue.
    Work {
        /// PostgreSQL connection URL.
        #[arg(long)]
        pg: String,
        /// Sink file.
        #[arg(long)]
        sink: PathBuf,
        /// Ledger file.
        #[arg(long)]
        ledger: PathBuf,
        /// Simulated work per record, in milliseconds.
        #[arg(long, default_value_t = 2)]
        work_ms: u64,
        /// Worker id written to the ledger.
        #[arg(long, default_value = "baseline")]
        worker_id: String,
    },
}

fn fake_model(prompt: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prompt.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    format!("summary-{:08x}", h as u32)
}

type BoxError = Box<dyn std::error::Error>;

async fn connect(pg: &str) -> Result<tokio_postgres::Client, BoxError> {
    let (client, conn) = tokio_postgres::connect(pg, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn run(args: Args) -> Result<(), BoxError> {
    match args.cmd {
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
                let reply = fake_model(&format!("summarize {key}"));
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
    let args = Args::parse();
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
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "fleet_baseline: error: {e}");
            ExitCode::from(2)
        }
    }
}

//! An agent that makes three tool calls **in parallel** per task, journaled
//! as a fan-out of child units (`Unit::run_children_async`).
//!
//! ```text
//! parallel_tools --journal DIR --sink FILE [--tasks N (default 20)] [--work-ms MS (default 20)]
//! ```
//!
//! Each task is one unit. Its first step fans out to three child units, one
//! per tool (`search`, `weather`, `calendar`); each child's tool call is a
//! `retry_same_key` effect that takes a random 1–3 × `--work-ms` (so the
//! children finish in a different order on every run) and appends one line
//! `<idempotency-key>\t<tool>:<task>` to the sink file. The parent then
//! records the gathered results — ordered by tool, never by arrival — and
//! sends its answer (`<key>\tanswer:<results>`), then commits.
//!
//! Kill it at any moment (SIGKILL included) and run it again: committed
//! tasks are skipped, a task cut in the middle of its fan-out resumes with
//! the same child ids, finished tool calls return their recorded results,
//! and a tool call is re-sent only if it was in doubt at the kill, always
//! with the same key. The answer of every task is the same whatever the
//! order its tools finished in.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agentwal::journal::{Begun, Effect, Journal, JournalOptions};

const TOOLS: [&str; 3] = ["search", "weather", "calendar"];

struct Args {
    journal: PathBuf,
    sink: PathBuf,
    tasks: u32,
    work_ms: u64,
}

fn parse() -> Result<Args, String> {
    let (mut journal, mut sink, mut tasks, mut work_ms) = (None, None, 20, 20);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--journal" => journal = Some(PathBuf::from(value()?)),
            "--sink" => sink = Some(PathBuf::from(value()?)),
            "--tasks" => tasks = value()?.parse().map_err(|e| format!("--tasks: {e}"))?,
            "--work-ms" => work_ms = value()?.parse().map_err(|e| format!("--work-ms: {e}"))?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        journal: journal.ok_or("--journal DIR is required")?,
        sink: sink.ok_or("--sink FILE is required")?,
        tasks,
        work_ms,
    })
}

/// One delivery attempt to the simulated external service: one `write`
/// of one line, so a kill never leaves half a line.
fn deliver(sink: &Path, key: &str, payload: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new().create(true).append(true).open(sink)?;
    f.write_all(format!("{key}\t{payload}\n").as_bytes())
}

/// A cheap random delay factor (1..=3): the children's finishing order
/// changes from run to run.
fn jitter() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let x = STATE
        .fetch_add(seed | 1, Ordering::Relaxed)
        .wrapping_add(seed);
    1 + (x ^ (x >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15) % 3
}

async fn run_task(journal: &Journal, args: &Args, task: &str) -> agentwal::journal::Result<bool> {
    let mut unit = match journal.begin_or_finished(task, "task", &task)? {
        Begun::Finished(_) => return Ok(false),
        Begun::Open(unit) => unit,
    };
    let (sink, work_ms) = (args.sink.as_path(), args.work_ms);
    // Three tool calls at once, one child unit each; results by tool index.
    let results: Vec<String> = unit
        .run_children_async("tools", &TOOLS, |_i, tool, child| {
            // The child unit's payload is its input (the tool's name).
            Box::pin(async move {
                child
                    .run_async(Effect::retry_same_key("call"), |ctx| async move {
                        tokio::time::sleep(Duration::from_millis(work_ms * jitter())).await;
                        deliver(sink, ctx.key(), &format!("{tool}:{task}"))?;
                        Ok::<_, std::io::Error>(format!("{tool}={task}"))
                    })
                    .await
            })
        })
        .await?;
    let answer = results.join("|");
    unit.run_async(Effect::retry_same_key("answer"), |ctx| {
        let answer = answer.clone();
        async move {
            deliver(sink, ctx.key(), &format!("answer:{answer}"))?;
            Ok::<_, std::io::Error>(())
        }
    })
    .await?;
    unit.commit_async().await?;
    Ok(true)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("usage: parallel_tools --journal DIR --sink FILE [--tasks N] [--work-ms MS]");
            return ExitCode::from(2);
        }
    };
    let journal = match Journal::open_async(&args.journal, JournalOptions::default()).await {
        Ok(j) => j,
        Err(e) => {
            eprintln!("error: cannot open the journal: {e}");
            return ExitCode::from(1);
        }
    };
    let mut done = 0;
    for i in 0..args.tasks {
        let task = format!("task-{i:04}");
        match run_task(&journal, &args, &task).await {
            Ok(ran) => {
                done += u32::from(ran);
            }
            Err(e) => {
                eprintln!("error: {task}: {e}");
                return ExitCode::from(1);
            }
        }
    }
    if let Err(e) = journal.close() {
        eprintln!("error: closing the journal: {e}");
        return ExitCode::from(1);
    }
    println!(
        "summary: {}/{} tasks committed ({done} this run)",
        args.tasks, args.tasks
    );
    ExitCode::SUCCESS
}

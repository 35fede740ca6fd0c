//! `wal-inspect`: the operator's recovery tool for agentwal journals.
//!
//! Argument parsing and printing only; the logic is in `agentwal::inspect`.
//! Exit codes: 0 success (and `verify` clean), 1 corruption found (`verify`)
//! or repair refused, 2 usage, input or I/O error.

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use agentwal::inspect::dump::{dump, DumpOptions};
use agentwal::inspect::repair::{repair, RepairOptions};
use agentwal::inspect::{self as ins, text, Error, Inspection, OpenOptions};
use agentwal::journal::{OperatorCommand, OperatorRequest, Resolution, UnitState};
use agentwal::log::FsStorage;
use clap::{Parser, Subcommand, ValueEnum};

/// Journals over this size get a progress bar during `verify` (on a TTY).
const PROGRESS_MIN_BYTES: u64 = 256 << 20;

#[derive(Parser, Debug)]
#[command(
    name = "wal-inspect",
    version,
    about = "Inspect, verify and repair an agentwal journal directory.",
    long_about = "Inspect, verify and repair an agentwal journal directory.\n\n\
        Every command except `repair` and the operator commands (`resolve`, `abort`, `approve`, \
        `queue --redrive|--purge-dead`) opens the journal read-only, takes no lock and can run \
        while the owning process is still appending. Operator commands record an attributed \
        decision: directly when the agent is stopped, through the running agent otherwise.\n\n\
        Exit codes: 0 ok, 1 corruption found (verify) or repair refused, 2 usage or I/O error.",
    after_help = "Examples:\n  \
        wal-inspect summary /var/lib/agent/journal\n  \
        wal-inspect verify /var/lib/agent/journal --json\n  \
        wal-inspect units /var/lib/agent/journal --state incomplete\n  \
        wal-inspect show /var/lib/agent/journal record-000017\n  \
        wal-inspect dump /var/lib/agent/journal --from 800 --limit 20\n  \
        wal-inspect repair /var/lib/agent/journal --dry-run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Machine output: one JSON document (JSON lines for `dump`).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Segments, records, bytes, LSN range, units by state, in-doubt effects,
    /// idempotency keys, torn tail, corruption.
    #[command(
        after_help = "Examples:\n  wal-inspect summary ./journal\n  wal-inspect summary ./journal --json | jq .units"
    )]
    Summary {
        /// The journal directory.
        journal_dir: PathBuf,
    },
    /// Check every segment header, record checksum and the snapshot. Exit 0
    /// when clean (a torn tail is not corruption), 1 on corruption, 2 on error.
    #[command(
        after_help = "Examples:\n  wal-inspect verify ./journal && echo clean\n  wal-inspect verify ./journal --json"
    )]
    Verify {
        /// The journal directory.
        journal_dir: PathBuf,
    },
    /// One row per unit: id, state, effects done / in doubt, last checkpoint.
    #[command(
        after_help = "Examples:\n  wal-inspect units ./journal\n  wal-inspect units ./journal --state incomplete --json"
    )]
    Units {
        /// The journal directory.
        journal_dir: PathBuf,
        /// Only units in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
    },
    /// A unit's full history, effect by effect; in-doubt effects explained.
    #[command(
        after_help = "Examples:\n  wal-inspect show ./journal record-000017\n  wal-inspect show ./journal record-000017 --json"
    )]
    Show {
        /// The journal directory.
        journal_dir: PathBuf,
        /// The unit id (as listed by `units`).
        unit_id: String,
    },
    /// Every record, decoded (JSON lines with --json).
    #[command(
        after_help = "Examples:\n  wal-inspect dump ./journal --limit 50\n  wal-inspect dump ./journal --from 812 --limit 1 --json\n  wal-inspect dump ./journal/queue"
    )]
    Dump {
        /// The journal directory (or its `queue` subdirectory).
        journal_dir: PathBuf,
        /// First LSN to show.
        #[arg(long, value_name = "LSN")]
        from: Option<u64>,
        /// Show at most N records.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
    },
    /// Idempotency keys with their status and the LSN that settled them.
    #[command(
        after_help = "Examples:\n  wal-inspect keys ./journal\n  wal-inspect keys ./journal --json"
    )]
    Keys {
        /// The journal directory.
        journal_dir: PathBuf,
    },
    /// Work-queue items: pending, in flight, dead-lettered, attempts. With
    /// --redrive or --purge-dead: an operator command (writes, attributed).
    #[command(
        after_help = "Examples:\n  wal-inspect queue ./journal\n  wal-inspect queue ./journal --json\n  wal-inspect queue ./journal --redrive 17 18 --by alice\n  wal-inspect queue ./journal --purge-dead --by alice"
    )]
    Queue {
        /// The journal directory.
        journal_dir: PathBuf,
        /// Move dead letters (the ITEM_IDs given, or all) back to pending
        /// with fresh attempts.
        #[arg(long, conflicts_with = "purge_dead")]
        redrive: bool,
        /// Drop dead letters (the ITEM_IDs given, or all).
        #[arg(long)]
        purge_dead: bool,
        /// Items to act on (default: every dead letter).
        #[arg(value_name = "ITEM_ID", requires = "redrive")]
        ids: Vec<u64>,
        #[command(flatten)]
        who: Who,
    },
    /// Record an operator's decision for an in-doubt effect: it happened
    /// (with the result the resumed unit gets) or it did not (the unit runs
    /// it again with the same key). Works while the agent runs (its owner
    /// applies it) and while it is stopped.
    #[command(
        after_help = "Examples:\n  wal-inspect resolve ./journal record-000017 1 --happened --result '{\"id\":\"msg-9\"}' --by alice --reason 'seen in the provider console'\n  wal-inspect resolve ./journal record-000017 1 --not-happened --by alice"
    )]
    Resolve {
        /// The journal directory.
        journal_dir: PathBuf,
        /// The unit id.
        unit_id: String,
        /// The step (as shown by `show`, `#N`).
        step: u32,
        /// The effect happened.
        #[arg(
            long,
            conflicts_with = "not_happened",
            required_unless_present = "not_happened"
        )]
        happened: bool,
        /// The effect's result as JSON (with --happened; default null).
        #[arg(long, requires = "happened", value_name = "JSON")]
        result: Option<String>,
        /// The effect did not happen.
        #[arg(long)]
        not_happened: bool,
        #[command(flatten)]
        who: Who,
    },
    /// Record an operator's abort of an incomplete unit: aborted at once if
    /// there is nothing to compensate, otherwise the agent runs its
    /// compensations (rollback) and records the abort.
    #[command(
        after_help = "Examples:\n  wal-inspect abort ./journal record-000017 --reason 'duplicate order' --by alice"
    )]
    Abort {
        /// The journal directory.
        journal_dir: PathBuf,
        /// The unit id.
        unit_id: String,
        #[command(flatten)]
        who: Who,
    },
    /// Record a human decision for a pending approval of a unit.
    #[command(
        after_help = "Examples:\n  wal-inspect approve ./journal refund-42 refund --by alice\n  wal-inspect approve ./journal refund-42 refund --reject --by alice --reason 'over limit'"
    )]
    Approve {
        /// The journal directory.
        journal_dir: PathBuf,
        /// The unit id.
        unit_id: String,
        /// The approval's name (as shown by `show`).
        name: String,
        /// Reject instead of approve.
        #[arg(long)]
        reject: bool,
        #[command(flatten)]
        who: Who,
    },
    /// Cut a torn tail (keeping the cut bytes in cut-*.bin). Takes the owner
    /// lock: refuses while the owning process runs. Refuses mid-log
    /// corruption unless --lossy.
    #[command(
        after_help = "Examples:\n  wal-inspect repair ./journal --dry-run\n  wal-inspect repair ./journal\n  wal-inspect repair ./journal --lossy --dry-run   # what would be lost"
    )]
    Repair {
        /// The journal directory.
        journal_dir: PathBuf,
        /// Report what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Allow truncating at mid-log corruption (acknowledged records are lost).
        #[arg(long)]
        lossy: bool,
    },
}

/// Attribution and patience of an operator command.
#[derive(clap::Args, Debug)]
struct Who {
    /// Who decides (recorded; default $USER).
    #[arg(long, value_name = "WHO")]
    by: Option<String>,
    /// Why (recorded).
    #[arg(long, value_name = "TEXT", default_value = "")]
    reason: String,
    /// How long to wait for a running owner to apply the command, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    wait: u64,
}

impl Who {
    fn by(&self) -> String {
        self.by
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| "operator".into())
    }
    fn wait(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.wait)
    }
}

fn print_operator(
    out: &mut Out,
    json: bool,
    r: &ins::operator::OperatorResult,
) -> Result<(), Error> {
    if json {
        out.json(r)
    } else {
        out.line(&format!(
            "{} ({})",
            r.message,
            if r.applied == "owner" {
                "applied by the running agent"
            } else {
                "applied directly; no agent was running"
            }
        ))
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StateArg {
    Committed,
    Aborted,
    Incomplete,
}

/// Output sink that turns a closed pipe into a quiet exit.
struct Out(io::BufWriter<io::Stdout>);

impl Out {
    fn line(&mut self, s: &str) -> Result<(), Error> {
        writeln!(self.0, "{s}").map_err(Error::Output)
    }
    fn text(&mut self, s: &str) -> Result<(), Error> {
        self.0.write_all(s.as_bytes()).map_err(Error::Output)
    }
    fn json<T: serde::Serialize>(&mut self, v: &T) -> Result<(), Error> {
        let s = serde_json::to_string_pretty(v).map_err(|e| Error::Output(io::Error::other(e)))?;
        self.line(&s)
    }
    fn flush(&mut self) -> Result<(), Error> {
        self.0.flush().map_err(Error::Output)
    }
}

fn open(dir: &Path) -> Result<Inspection, Error> {
    Inspection::open(dir)
}

fn open_with_progress(dir: &Path) -> Result<Inspection, Error> {
    if !io::stderr().is_terminal() {
        return open(dir);
    }
    let bar = indicatif::ProgressBar::hidden();
    let b = bar.clone();
    let progress: ins::open::ProgressFn = Arc::new(move |done, total| {
        if total < PROGRESS_MIN_BYTES {
            return;
        }
        if b.is_hidden() {
            b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            b.set_length(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "verifying {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            ) {
                b.set_style(style);
            }
        }
        b.set_position(done);
    });
    let r = Inspection::open_with(
        Arc::new(FsStorage),
        dir,
        OpenOptions {
            progress: Some(progress),
        },
    );
    bar.finish_and_clear();
    r
}

fn run(cli: Cli, out: &mut Out) -> Result<i32, Error> {
    let json = cli.json;
    match cli.command {
        Command::Summary { journal_dir } => {
            let s = ins::summary::summary(&open(&journal_dir)?);
            if json {
                out.json(&s)?;
            } else {
                out.text(&text::summary(&s))?;
            }
            Ok(0)
        }
        Command::Verify { journal_dir } => {
            let v = ins::verify::verify(&open_with_progress(&journal_dir)?)?;
            if json {
                out.json(&v)?;
            } else {
                out.text(&text::verify(&v))?;
            }
            Ok(v.exit_code())
        }
        Command::Units { journal_dir, state } => {
            let insp = open(&journal_dir)?;
            let view = ins::units::load_view(&insp)?;
            let state = state.map(|s| match s {
                StateArg::Committed => UnitState::Committed,
                StateArg::Aborted => UnitState::Aborted,
                StateArg::Incomplete => UnitState::Incomplete,
            });
            let rows = ins::units::units(&view, state);
            if json {
                out.json(&rows)?;
            } else {
                let compacted = ins::summary::CompactedUnits {
                    committed: view.compacted_committed,
                    aborted: view.compacted_aborted,
                };
                let snapshot = (view.snapshot_lsn > 0).then_some(view.snapshot_lsn);
                out.text(&text::units_with_compacted(
                    &rows, state, compacted, snapshot,
                ))?;
            }
            Ok(0)
        }
        Command::Show {
            journal_dir,
            unit_id,
        } => {
            // Accept `show <UNIT_ID> <JOURNAL_DIR>` too: operators type both.
            let (dir, id) = if !journal_dir.is_dir() && Path::new(&unit_id).is_dir() {
                (
                    PathBuf::from(&unit_id),
                    journal_dir.to_string_lossy().into_owned(),
                )
            } else {
                (journal_dir, unit_id)
            };
            let insp = open(&dir)?;
            let view = ins::units::load_view(&insp)?;
            let d = ins::units::show(&insp, &view, &id)?;
            if json {
                out.json(&d)?;
            } else {
                out.text(&text::show(&d))?;
            }
            Ok(0)
        }
        Command::Keys { journal_dir } => {
            let insp = open(&journal_dir)?;
            let keys = ins::units::keys(&ins::units::load_view(&insp)?);
            if json {
                out.json(&keys)?;
            } else {
                out.text(&text::keys(&keys))?;
            }
            Ok(0)
        }
        Command::Dump {
            journal_dir,
            from,
            limit,
        } => {
            let insp = open(&journal_dir)?;
            for r in dump(&insp, DumpOptions { from, limit }) {
                let r = r?;
                if json {
                    let s = serde_json::to_string(&r)
                        .map_err(|e| Error::Output(io::Error::other(e)))?;
                    out.line(&s)?;
                } else {
                    out.line(&text::dump_line(&r))?;
                }
            }
            Ok(0)
        }
        Command::Queue {
            journal_dir,
            redrive,
            purge_dead,
            ids,
            who,
        } if redrive || purge_dead => {
            let cmd = agentwal::queue::QueueCommand {
                by: who.by(),
                command: if redrive { "redrive" } else { "purge_dead" }.into(),
                ids,
            };
            let r = ins::operator::queue_command(&journal_dir, &cmd, who.wait())?;
            print_operator(out, json, &r)?;
            Ok(0)
        }
        Command::Resolve {
            journal_dir,
            unit_id,
            step,
            happened,
            result,
            not_happened: _,
            who,
        } => {
            let resolution = if happened {
                let v =
                    match result {
                        Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
                            Error::OperatorRefused {
                                message: format!("--result is not valid JSON ({e}): {text}"),
                            }
                        })?),
                        None => None,
                    };
                Resolution::Happened(v)
            } else {
                Resolution::NotHappened
            };
            let cmd = OperatorCommand {
                by: who.by(),
                reason: who.reason.clone(),
                request: OperatorRequest::Resolve {
                    unit: unit_id,
                    step,
                    resolution,
                },
            };
            let r = ins::operator::journal_command(&journal_dir, &cmd, who.wait())?;
            print_operator(out, json, &r)?;
            Ok(0)
        }
        Command::Abort {
            journal_dir,
            unit_id,
            who,
        } => {
            let cmd = OperatorCommand {
                by: who.by(),
                reason: who.reason.clone(),
                request: OperatorRequest::Abort { unit: unit_id },
            };
            let r = ins::operator::journal_command(&journal_dir, &cmd, who.wait())?;
            print_operator(out, json, &r)?;
            Ok(0)
        }
        Command::Approve {
            journal_dir,
            unit_id,
            name,
            reject,
            who,
        } => {
            let cmd = OperatorCommand {
                by: who.by(),
                reason: who.reason.clone(),
                request: OperatorRequest::Approve {
                    unit: unit_id,
                    name,
                    approved: !reject,
                },
            };
            let r = ins::operator::journal_command(&journal_dir, &cmd, who.wait())?;
            print_operator(out, json, &r)?;
            Ok(0)
        }
        Command::Queue { journal_dir, .. } => {
            let q = ins::queue::queue(Arc::new(FsStorage), &journal_dir)?;
            if json {
                out.json(&q)?;
            } else {
                out.text(&text::queue(&q))?;
            }
            Ok(0)
        }
        Command::Repair {
            journal_dir,
            dry_run,
            lossy,
        } => {
            let r = repair(&journal_dir, RepairOptions { dry_run, lossy })?;
            if json {
                out.json(&r)?;
            } else {
                out.text(&text::repair(&r))?;
            }
            Ok(r.exit_code())
        }
    }
}

fn main() -> ExitCode {
    // A bug must still end in one line and exit code 2, never a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("wal-inspect: internal error{at}: {msg} (please report this)");
    }));
    let cli = Cli::parse();
    let mut out = Out(io::BufWriter::new(io::stdout()));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let code = run(cli, &mut out)?;
        out.flush()?;
        Ok::<i32, Error>(code)
    }));
    match result {
        Ok(Ok(code)) => ExitCode::from(code as u8),
        Ok(Err(Error::Output(e))) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            let code = e.exit_code();
            eprintln!("wal-inspect: {}", one_line(&e));
            ExitCode::from(code as u8)
        }
        Err(_) => ExitCode::from(2),
    }
}

/// The error and its causes on one line.
fn one_line(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        src = c.source();
    }
    s.replace('\n', " ")
}

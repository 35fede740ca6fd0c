//! The `observe` phase: what the library's own tracing and metrics cost.
//!
//! The library emits spans/events through `tracing` and records metrics
//! through the `metrics` facade; the promise (lib.rs, docs/operations.md) is
//! that with no subscriber and no recorder installed this costs next to
//! nothing, and that installing them costs little. Each workload runs in a
//! child process either bare (`off`: no subscriber, no recorder, so the
//! facades' fast paths are the ones measured) or with both installed (`on`:
//! a `tracing_subscriber::fmt` subscriber at INFO writing to a sink, as the
//! demo runs with `RUST_LOG=info`, and the Prometheus recorder that
//! `/metrics` renders). Child processes, because a global subscriber or
//! recorder cannot be removed once set, and a scoped one changes the
//! no-subscriber path being measured. Modes alternate round by round so
//! that the machine's load drift hits both alike. Prints ops/s and the ratio
//! on/off; asserts nothing (timing is noisy on shared machines).
//!
//! Workloads: 1-writer buffered appends (the cheapest call, where any
//! per-call overhead shows most), 1-writer durable appends, and journal
//! units (`begin` + one `run(Effect::retry_same_key)` + `commit`, where the
//! unit and effect spans are created).

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use agentwal::journal::{Effect, Journal, JournalOptions};
use agentwal::log::{Durability, Log, LogOptions};

use crate::measure::{child_json, f64_of, median, Res};
use crate::scenarios::PAYLOAD;

/// The workloads, in the order they are reported.
pub const WORKLOADS: [&str; 3] = ["buffered", "durable", "unit"];

/// One workload's figures over every round.
#[derive(Debug, Clone)]
pub struct ObserveRow {
    /// `buffered`, `durable` or `unit`.
    pub workload: &'static str,
    /// Operations per second of each round, nothing installed.
    pub off: Vec<f64>,
    /// Operations per second of each round, subscriber and recorder installed.
    pub on: Vec<f64>,
}

impl ObserveRow {
    /// Median ops/s on / median ops/s off (1.0: no cost).
    pub fn ratio(&self) -> f64 {
        median(&self.on) / median(&self.off)
    }
}

/// Runs the phase: `rounds` rounds, each running every workload in both
/// modes (order alternating) in a child process of its own.
pub fn run(root: &Path, quick: bool) -> Res<Vec<ObserveRow>> {
    let rounds = if quick { 3 } else { 7 };
    let mut rows: Vec<ObserveRow> = WORKLOADS
        .iter()
        .map(|w| ObserveRow {
            workload: w,
            off: Vec::new(),
            on: Vec::new(),
        })
        .collect();
    for round in 0..rounds {
        for row in rows.iter_mut() {
            let modes = if round % 2 == 0 {
                ["off", "on"]
            } else {
                ["on", "off"]
            };
            for mode in modes {
                let dir = root.join(format!("observe-{}-{mode}-{round}", row.workload));
                let what = format!("observe:{}:{mode}:{}", row.workload, u8::from(quick));
                let per_sec = f64_of(&child_json(&dir, &what)?, "per_sec");
                if mode == "on" {
                    row.on.push(per_sec)
                } else {
                    row.off.push(per_sec)
                }
                std::fs::remove_dir_all(&dir).ok();
            }
        }
        eprintln!("  observe: round {}/{rounds} done", round + 1);
    }
    Ok(rows)
}

/// The child: `what` is `<workload>:<on|off>:<quick 0|1>`; runs the
/// workload in `dir` for a fixed time and returns `{"per_sec", "ops"}`.
pub fn child_run(dir: &Path, what: &str) -> Res<serde_json::Value> {
    let mut parts = what.split(':');
    let (Some(workload), Some(mode), Some(quick)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("bad observe child spec {what:?}").into());
    };
    let dur = Duration::from_millis(if quick == "1" { 700 } else { 3000 });
    match mode {
        "off" => {}
        "on" => install()?,
        _ => return Err(format!("bad mode {mode:?}").into()),
    }
    std::fs::create_dir_all(dir)?;
    let (ops, secs) = match workload {
        "buffered" => appends(dir, Durability::Buffered, dur)?,
        "durable" => appends(dir, Durability::Durable, dur)?,
        "unit" => units(dir, dur)?,
        _ => return Err(format!("bad workload {workload:?}").into()),
    };
    Ok(serde_json::json!({ "ops": ops, "per_sec": ops as f64 / secs }))
}

/// A subscriber and a recorder as a production process has them: fmt at
/// INFO (its output discarded, the formatting still done) and Prometheus.
fn install() -> Res {
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::set_global_default(sub)?;
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
    Ok(())
}

fn appends(dir: &Path, durability: Durability, dur: Duration) -> Res<(u64, f64)> {
    let log = Log::open(dir, LogOptions::default())?;
    let payload = vec![0x5Au8; PAYLOAD];
    let (mut ops, start) = (0u64, Instant::now());
    while start.elapsed() < dur {
        log.append_with(1, &payload, durability)?;
        ops += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    log.close()?;
    Ok((ops, secs))
}

fn units(dir: &Path, dur: Duration) -> Res<(u64, f64)> {
    let journal = Journal::open(dir, JournalOptions::default())?;
    let (mut ops, start) = (0u64, Instant::now());
    while start.elapsed() < dur {
        let id = format!("unit-{ops}");
        let mut unit = journal.begin(&id, "bench", &ops)?;
        unit.run(Effect::retry_same_key("send"), |_ctx| {
            Ok::<_, std::io::Error>(())
        })?;
        unit.commit()?;
        ops += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    journal.close()?;
    Ok((ops, secs))
}

/// The phase's section of the report.
pub fn markdown(rows: &[ObserveRow], quick: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### Cost of tracing and metrics (ops/s; median of {} rounds, each mode in its own child process, modes alternating)\n",
        rows.first().map_or(0, |r| r.off.len())
    );
    let _ = writeln!(
        s,
        "| workload | nothing installed | fmt subscriber (INFO) + Prometheus recorder | on / off |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.3} |",
            match r.workload {
                "buffered" => "1 writer, buffered append (256 B)",
                "durable" => "1 writer, durable append (256 B)",
                _ => "journal unit: begin + 1 retry_same_key effect + commit",
            },
            median(&r.off),
            median(&r.on),
            r.ratio()
        );
    }
    let _ = writeln!(
        s,
        "\nRun: `cargo run --release -p agentwal-bench -- {}--only observe --no-write`.",
        if quick { "--quick " } else { "" }
    );
    s
}

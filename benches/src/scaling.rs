//! `--only scaling`: does cost grow with history? Runs the demo agent's
//! workload (`batch_agent --work-ms 0`: one unit per record with a journaled
//! model call and a journaled send to a sink file, the resume cursor after
//! each commit, default journal options) for growing record counts, each
//! run in its own child process so that its peak RSS is its own, then
//! re-opens each journal in another child.
//!
//! Measured per run: records/s over the first and the last 10 % of the run,
//! peak RSS, bytes passed to `write` (log, snapshots and sink; the sink's
//! bytes are subtracted) per record against the log bytes one record
//! appends (the write factor), and the re-open time and RSS.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use agentwal::journal::{Effect, Journal, JournalOptions, UnitState};
use agentwal::log::{Durability, LogOptions};

use crate::measure::{child_json, f64_of, u64_of, Res};

/// One history size.
#[derive(Debug, Clone, Default)]
pub struct ScaleRow {
    /// Records (units) processed.
    pub records: u64,
    /// Whole run, seconds.
    pub secs: f64,
    /// Records/s over the first 10 % of the run.
    pub first_rate: f64,
    /// Records/s over the last 10 % of the run.
    pub last_rate: f64,
    /// Peak RSS of the run.
    pub rss: u64,
    /// Bytes the journal wrote (log + snapshots) per record.
    pub written_per_record: f64,
    /// Log bytes one record appends (its records with headers).
    pub log_per_record: f64,
    /// Compactions during the run.
    pub compactions: u64,
    /// Size of the last snapshot.
    pub snapshot_bytes: u64,
    /// Journal directory size at the end.
    pub dir_bytes: u64,
    /// Re-open time of the finished journal, seconds.
    pub open_secs: f64,
    /// Records replayed at re-open (the tail after the snapshot).
    pub open_replayed: u64,
    /// Peak RSS of the re-open child.
    pub open_rss: u64,
}

impl ScaleRow {
    /// Bytes written per record / log bytes per record.
    pub fn write_factor(&self) -> f64 {
        self.written_per_record / self.log_per_record
    }
    /// Last-10 % / first-10 % throughput.
    pub fn rate_ratio(&self) -> f64 {
        self.last_rate / self.first_rate
    }
}

/// The record counts of a run.
pub fn sizes(quick: bool) -> Vec<u64> {
    if let Some(v) = std::env::var("AGENTWAL_BENCH_SCALE")
        .ok()
        .map(|v| {
            v.split(',')
                .filter_map(|x| x.parse().ok())
                .collect::<Vec<u64>>()
        })
        .filter(|v| !v.is_empty())
    {
        return v;
    }
    if quick {
        vec![1_000, 20_000]
    } else {
        vec![1_000, 10_000, 100_000, 1_000_000]
    }
}

/// Runs every size in children and collects the rows.
pub fn run(root: &Path, quick: bool) -> Res<Vec<ScaleRow>> {
    let mut rows = Vec::new();
    for n in sizes(quick) {
        let d = root.join(format!("scaling-{n}"));
        std::fs::create_dir_all(&d)?;
        let j = child_json(&d, &format!("scale-run:{n}"))?;
        let o = child_json(&d, "scale-open")?;
        let (f, u) = (f64_of, u64_of);
        let row = ScaleRow {
            records: n,
            secs: f(&j, "secs"),
            first_rate: f(&j, "first_rate"),
            last_rate: f(&j, "last_rate"),
            rss: u(&j, "peak_rss"),
            written_per_record: f(&j, "written_per_record"),
            log_per_record: f(&j, "log_per_record"),
            compactions: u(&j, "compactions"),
            snapshot_bytes: u(&j, "snapshot_bytes"),
            dir_bytes: crate::systems::dir_bytes(&d.join("journal"))?,
            open_secs: f(&o, "open_secs"),
            open_replayed: u(&o, "replayed"),
            open_rss: u(&o, "peak_rss"),
        };
        eprintln!(
            "  scaling {n}: {:.0} → {:.0} records/s (×{:.2}), peak RSS {:.1} MiB, write factor {:.2}, \
             re-open {:.3} s ({} records replayed, {:.1} MiB)",
            row.first_rate,
            row.last_rate,
            row.rate_ratio(),
            row.rss as f64 / (1 << 20) as f64,
            row.write_factor(),
            row.open_secs,
            row.open_replayed,
            row.open_rss as f64 / (1 << 20) as f64,
        );
        std::fs::remove_dir_all(&d)?;
        rows.push(row);
    }
    Ok(rows)
}

/// The demo agent's journal options.
fn options() -> JournalOptions {
    JournalOptions {
        log: LogOptions {
            segment_size: 4 << 20,
            max_record_bytes: 256 << 10,
            ..LogOptions::default()
        },
        max_payload_bytes: 64 << 10,
        retention: match std::env::var("AGENTWAL_BENCH_RETAIN_KEYS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            // For exploring the memory / retention trade-off by hand.
            Some(n) => agentwal::journal::Retention {
                max_keys: Some(n),
                ..Default::default()
            },
            None => Default::default(),
        },
        ..JournalOptions::default()
    }
}

/// `wchar` of `/proc/self/io`: bytes passed to write-like system calls.
fn wchar() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("wchar:").map(|v| v.trim().parse().ok()))
                .flatten()
        })
        .unwrap_or(0)
}

/// Child: one `batch_agent --work-ms 0 --records n` equivalent run.
pub fn child_run(dir: &Path, n: u64) -> Res<serde_json::Value> {
    let jdir = dir.join("journal");
    let journal = Journal::open(&jdir, options())?;
    let mut sink = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("sink.txt"))?;
    let decile = (n / 10).max(1);
    let w0 = wchar();
    let mut sink_bytes = 0u64;
    let mut log_per_record = f64::NAN;
    let start = Instant::now();
    let mut marks = Vec::new();
    let mut mark = Instant::now();
    for i in 0..n {
        let id = format!("record-{i:06}");
        if journal.unit_state(&id) == Some(UnitState::Committed) {
            continue;
        }
        let mut unit = journal.begin(&id, "record", &serde_json::json!({ "index": i }))?;
        let reply: serde_json::Value = unit.run(Effect::retry_same_key("model"), |_ctx| {
            Ok::<_, std::io::Error>(serde_json::json!({
                "text": format!("summary-{:08x}", (i as u32).wrapping_mul(2_654_435_761)),
                "tokens": 50 + i % 200,
            }))
        })?;
        unit.run(Effect::retry_same_key("send"), |ctx| {
            let line = format!("{}\t{id} {}\n", ctx.key(), reply["text"]);
            sink_bytes += line.len() as u64;
            sink.write_all(line.as_bytes())
        })?;
        unit.commit()?;
        journal.set_cursor("batch_agent/next", &(i + 1), Durability::Buffered)?;
        if i + 1 == 1000.min(n) {
            // Before the first compaction (at least 4 MiB of log): the
            // bytes one record appends.
            let s = journal.stats();
            if s.compactions == 0 {
                log_per_record = s.bytes_since_compaction as f64 / (i + 1) as f64;
            }
        }
        if (i + 1) % decile == 0 {
            marks.push(mark.elapsed().as_secs_f64());
            mark = Instant::now();
        }
    }
    journal.sync()?;
    let secs = start.elapsed().as_secs_f64();
    let stats = journal.stats();
    journal.close()?;
    let written = wchar().saturating_sub(w0).saturating_sub(sink_bytes);
    let rate = |s: Option<&f64>| s.map_or(f64::NAN, |s| decile as f64 / s);
    Ok(serde_json::json!({
        "secs": secs,
        "first_rate": rate(marks.first()),
        "last_rate": rate(marks.last()),
        "written_per_record": written as f64 / n as f64,
        "log_per_record": log_per_record,
        "compactions": stats.compactions,
        "snapshot_bytes": stats.snapshot_bytes,
    }))
}

/// Child: re-open a finished run's journal (nothing left to do).
pub fn child_open(dir: &Path) -> Res<serde_json::Value> {
    let start = Instant::now();
    let journal = Journal::open(dir.join("journal"), options())?;
    let secs = start.elapsed().as_secs_f64();
    let replayed = journal.replay_report().records_replayed;
    let next: Option<u64> = journal.cursor("batch_agent/next")?;
    drop(journal);
    Ok(serde_json::json!({
        "open_secs": secs,
        "replayed": replayed,
        "cursor": next,
    }))
}

/// The markdown section.
pub fn markdown(rows: &[ScaleRow], quick: bool) -> String {
    let mut s = String::new();
    let cmd = if quick {
        "cargo run --release -p agentwal-bench -- --quick --only scaling"
    } else {
        "cargo run --release -p agentwal-bench -- --only scaling"
    };
    let _ = writeln!(
        s,
        "\n### Cost against history (`batch_agent --work-ms 0` workload, default options)\n\n\
         Run: `{cmd}` (sizes: `AGENTWAL_BENCH_SCALE=1000,1000000`). One child process per run \
         (its own peak RSS); the re-open is another child. Write factor = bytes passed to `write` \
         (log + snapshots, sink excluded) per record / log bytes one record appends.\n"
    );
    let _ = writeln!(
        s,
        "| records | run | records/s first 10 % | last 10 % | last / first | peak RSS | write factor | compactions | last snapshot | directory | re-open | replayed at open | re-open RSS |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {:.1} s | {:.0} | {:.0} | {:.2}× | {} | {:.2}× ({:.0} B / {:.0} B) | {} | {} | {} | {:.3} s | {} | {} |",
            r.records,
            r.secs,
            r.first_rate,
            r.last_rate,
            r.rate_ratio(),
            mib(r.rss),
            r.write_factor(),
            r.written_per_record,
            r.log_per_record,
            r.compactions,
            mib(r.snapshot_bytes),
            mib(r.dir_bytes),
            r.open_secs,
            r.open_replayed,
            mib(r.open_rss),
        );
    }
    s
}

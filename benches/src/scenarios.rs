//! The workloads of the benchmark, in the order they run, and the child
//! processes that measure replay memory.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use agentwal::log::{Durability, FsStorage, Log, LogOptions, LogReader, Storage};

use crate::measure::{self, Latencies, Res, Throughput};
use crate::systems::{self, fresh_dir};
use crate::Opts;

/// Payload of the single-record workloads.
pub const PAYLOAD: usize = 256;

/// One log size of the replay phase.
#[derive(Debug, Clone)]
pub struct ReplayRow {
    /// Bytes of segment files.
    pub log_bytes: u64,
    /// Valid records.
    pub records: u64,
    /// Bytes in valid records (what verify checks).
    pub record_bytes: u64,
    /// `LogReader::open` (full scan, every checksum) seconds.
    pub verify_secs: f64,
    /// Peak RSS of the verify child.
    pub verify_rss: u64,
    /// crc32fast over the same segment files, seconds.
    pub crc_secs: f64,
    /// Bytes hashed by the crc child.
    pub crc_bytes: u64,
    /// Open + iterate every record, seconds.
    pub replay_secs: f64,
    /// Peak RSS of the replay child.
    pub replay_rss: u64,
}

impl ReplayRow {
    /// Verify speed in bytes/s.
    pub fn verify_bps(&self) -> f64 {
        self.record_bytes as f64 / self.verify_secs
    }
    /// crc32fast speed in bytes/s.
    pub fn crc_bps(&self) -> f64 {
        self.crc_bytes as f64 / self.crc_secs
    }
}

/// Steady-state disk use under compaction.
#[derive(Debug, Clone, Default)]
pub struct Compaction {
    /// Records appended in total.
    pub records: u64,
    /// Bytes appended in total (encoded records).
    pub appended_bytes: u64,
    /// Snapshot + truncate cycles.
    pub cycles: u64,
    /// Segment size used.
    pub segment_size: u64,
    /// Records between snapshots.
    pub every: u64,
    /// Largest directory size seen (sampled before each compaction).
    pub peak_dir_bytes: u64,
    /// Directory size per quarter of the run (steadiness).
    pub quarter_dir_bytes: Vec<u64>,
    /// Directory size at the end.
    pub final_dir_bytes: u64,
    /// Elapsed seconds.
    pub secs: f64,
}

/// Everything measured in one run.
#[derive(Debug, Clone, Default)]
pub struct Results {
    /// Quick mode.
    pub quick: bool,
    /// Seconds per throughput cell.
    pub cell_secs: f64,
    /// Interleaved rounds of the single-writer comparison.
    pub rounds: usize,
    /// Raw pwrite+fdatasync on a preallocated file, merged over rounds.
    pub raw_prealloc: Option<Latencies>,
    /// Raw write+fdatasync on an appending file.
    pub raw_append: Option<Latencies>,
    /// agentwal durable append, 1 writer, merged over rounds.
    pub agent1: Option<Latencies>,
    /// Per-round ratio agentwal p50 latency / raw p50 latency.
    pub round_ratios: Vec<f64>,
    /// agentwal durable appends by thread count.
    pub threads: Vec<(usize, Throughput)>,
    /// agentwal `append_async` by task count.
    pub tasks: Vec<(usize, Throughput)>,
    /// Full units (4 records, 2 syncs) by thread count.
    pub units: Vec<(usize, Throughput)>,
    /// JSON checkpoint per item.
    pub json: Option<Throughput>,
    /// SQLite WAL FULL by writers.
    pub sqlite: Vec<(usize, Throughput)>,
    /// okaywal by writers.
    pub okaywal: Vec<(usize, Throughput)>,
    /// Replay/verify by log size.
    pub replay: Vec<ReplayRow>,
    /// Peak RSS of a child that does nothing (the fixed cost of the process).
    pub idle_rss: u64,
    /// Compaction steady state.
    pub compaction: Option<Compaction>,
}

fn wants(opts: &Opts, phase: &str) -> bool {
    opts.only.is_empty() || opts.only.iter().any(|o| phase.contains(o.as_str()))
}

/// Runs every phase.
pub fn run_all(opts: &Opts, root: &Path) -> Res<Results> {
    let q = opts.quick;
    let cell = Duration::from_secs_f64(if q { 1.0 } else { 4.0 });
    let mut r = Results {
        quick: q,
        cell_secs: cell.as_secs_f64(),
        rounds: if q { 7 } else { 11 },
        ..Default::default()
    };
    let record = systems::record_bytes(PAYLOAD);

    if wants(opts, "latency") {
        // Interleaved rounds: raw, agentwal, raw, agentwal, ... so that
        // drift in the machine's load hits both sides alike.
        let round = Duration::from_secs_f64(if q { 0.4 } else { 1.5 });
        let (mut raws, mut agents) = (Vec::new(), Vec::new());
        for i in 0..r.rounds {
            let d = fresh_dir(root, &format!("raw-{i}"))?;
            let raw = measure::latencies(
                round,
                systems::raw_prealloc(&d.join("raw.dat"), record, 64 << 20)?,
            )?;
            std::fs::remove_dir_all(&d)?;
            let d = fresh_dir(root, &format!("agent1-{i}"))?;
            let log = systems::agentwal_open(&d)?;
            let agent = measure::latencies(round, systems::agentwal_writer(log.clone(), PAYLOAD))?;
            log.close()?;
            std::fs::remove_dir_all(&d)?;
            // p50, not mean: the machine is shared, and a neighbour's
            // writeback stall in one round must not decide the ratio.
            let ratio = agent.quantile_us(0.5) / raw.quantile_us(0.5);
            eprintln!(
                "  round {i}: raw p50 {:.0} us, agentwal p50 {:.0} us, p50 ratio {ratio:.3}",
                raw.quantile_us(0.5),
                agent.quantile_us(0.5)
            );
            r.round_ratios.push(ratio);
            raws.push(raw);
            agents.push(agent);
        }
        r.raw_prealloc = Some(Latencies::merge(&raws));
        r.agent1 = Some(Latencies::merge(&agents));
        let d = fresh_dir(root, "raw-append")?;
        r.raw_append = Some(measure::latencies(
            round * r.rounds as u32,
            systems::raw_append(&d.join("raw.dat"), record)?,
        )?);
        std::fs::remove_dir_all(&d)?;
    }

    let counts = [1usize, 4, 8, 16, 64];
    if wants(opts, "writers") {
        for &n in &counts {
            let d = fresh_dir(root, &format!("threads-{n}"))?;
            let log = systems::agentwal_open(&d)?;
            let tp = measure::threads(n, cell, |_| {
                Ok(systems::agentwal_writer(log.clone(), PAYLOAD))
            })?;
            log.close()?;
            std::fs::remove_dir_all(&d)?;
            eprintln!("  agentwal {n:>2} threads: {:>9.0} appends/s", tp.per_sec());
            r.threads.push((n, tp));
        }
    }
    if wants(opts, "tasks") {
        for &n in &counts {
            let d = fresh_dir(root, &format!("tasks-{n}"))?;
            let log = systems::agentwal_open(&d)?;
            let l2 = log.clone();
            let p = systems::payload(PAYLOAD);
            let tp = measure::tokio_tasks(n, cell, move || {
                let (log, p) = (l2.clone(), p.clone());
                async move {
                    log.append_async(1, p).await?;
                    Ok(())
                }
            })?;
            log.close()?;
            std::fs::remove_dir_all(&d)?;
            eprintln!(
                "  agentwal {n:>2} tokio tasks: {:>9.0} appends/s",
                tp.per_sec()
            );
            r.tasks.push((n, tp));
        }
    }
    if wants(opts, "units") {
        for n in [1usize, 8] {
            let d = fresh_dir(root, &format!("units-{n}"))?;
            let log = systems::agentwal_open(&d)?;
            let tp = measure::threads(n, cell, |t| {
                Ok(systems::agentwal_unit_writer(log.clone(), t))
            })?;
            log.close()?;
            std::fs::remove_dir_all(&d)?;
            eprintln!(
                "  agentwal units, {n} threads: {:>9.0} units/s",
                tp.per_sec()
            );
            r.units.push((n, tp));
        }
    }
    if wants(opts, "baselines") {
        let d = fresh_dir(root, "json")?;
        let tp = measure::threads(1, cell, |_| systems::json_checkpoint(&d, PAYLOAD))?;
        std::fs::remove_dir_all(&d)?;
        eprintln!("  JSON checkpoint: {:>9.0} items/s", tp.per_sec());
        r.json = Some(tp);
        for n in [1usize, 8] {
            let d = fresh_dir(root, &format!("sqlite-{n}"))?;
            let db = d.join("bench.db");
            systems::sqlite_setup(&db)?;
            let tp = measure::threads(n, cell, |_| systems::sqlite_writer(&db, PAYLOAD))?;
            std::fs::remove_dir_all(&d)?;
            eprintln!("  SQLite FULL {n} writers: {:>9.0} tx/s", tp.per_sec());
            r.sqlite.push((n, tp));
        }
        for n in [1usize, 8] {
            let d = fresh_dir(root, &format!("okaywal-{n}"))?;
            let wal = systems::okaywal_open(&d)?;
            let tp = measure::threads(n, cell, |_| {
                Ok(systems::okaywal_writer(wal.clone(), PAYLOAD))
            })?;
            wal.shutdown()?;
            std::fs::remove_dir_all(&d)?;
            eprintln!("  okaywal {n} writers: {:>9.0} commits/s", tp.per_sec());
            r.okaywal.push((n, tp));
        }
    }
    if wants(opts, "replay") {
        r.idle_rss = child_json(root, "idle")?["peak_rss"].as_u64().unwrap_or(0);
        let sizes: &[u64] = if q {
            &[32 << 20, 128 << 20, 512 << 20]
        } else {
            &[100 << 20, 1 << 30, 4 << 30]
        };
        let d = fresh_dir(root, "replay")?;
        for &size in sizes {
            grow_log(&d, size)?;
            let row = replay_row(&d)?;
            eprintln!(
                "  replay {} MiB: verify {:.0} MB/s (crc32fast {:.0} MB/s), replay {:.2} s, peak RSS {} MiB",
                row.log_bytes >> 20,
                row.verify_bps() / 1e6,
                row.crc_bps() / 1e6,
                row.replay_secs,
                row.replay_rss >> 20
            );
            r.replay.push(row);
        }
        std::fs::remove_dir_all(&d)?;
    }
    if wants(opts, "compaction") {
        let c = compaction(root, q)?;
        eprintln!(
            "  compaction: {} MiB appended, peak dir {} MiB, final {} MiB",
            c.appended_bytes >> 20,
            c.peak_dir_bytes >> 20,
            c.final_dir_bytes >> 20
        );
        r.compaction = Some(c);
    }
    Ok(r)
}

/// Appends 256-byte records (in batches, buffered, one sync at the end) until
/// the log's segment files hold at least `target` bytes of records.
fn grow_log(dir: &Path, target: u64) -> Res {
    let log = Log::open(dir, LogOptions::default())?;
    let p = systems::payload(PAYLOAD);
    let batch: Vec<(u8, &[u8])> = (0..1024).map(|_| (1u8, p.as_slice())).collect();
    let per = systems::record_bytes(PAYLOAD) as u64 * batch.len() as u64;
    let have = log.next_lsn().saturating_sub(1) * systems::record_bytes(PAYLOAD) as u64;
    let mut written = have;
    while written < target {
        log.append_batch(&batch, Durability::Buffered)?;
        written += per;
    }
    log.close()?;
    Ok(())
}

fn child_json(dir: &Path, what: &str) -> Res<serde_json::Value> {
    let out = Command::new(std::env::current_exe()?)
        .arg("--child")
        .arg(what)
        .arg(dir)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "child {what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn replay_row(dir: &Path) -> Res<ReplayRow> {
    let v = child_json(dir, "verify")?;
    let c = child_json(dir, "crc")?;
    let rp = child_json(dir, "replay")?;
    let u = |j: &serde_json::Value, k: &str| j[k].as_u64().unwrap_or(0);
    let f = |j: &serde_json::Value, k: &str| j[k].as_f64().unwrap_or(f64::NAN);
    if u(&v, "records") != u(&rp, "records") {
        return Err(format!(
            "verify saw {} records, replay {}",
            u(&v, "records"),
            u(&rp, "records")
        )
        .into());
    }
    Ok(ReplayRow {
        log_bytes: u(&c, "bytes"),
        records: u(&v, "records"),
        record_bytes: u(&v, "record_bytes"),
        verify_secs: f(&v, "secs"),
        verify_rss: u(&v, "peak_rss"),
        crc_secs: f(&c, "secs"),
        crc_bytes: u(&c, "bytes"),
        replay_secs: f(&rp, "secs"),
        replay_rss: u(&rp, "peak_rss"),
    })
}

/// The measured part of a child process; prints one JSON object.
pub fn child(what: &str, dir: &Path) -> Res<serde_json::Value> {
    let start = Instant::now();
    let mut out = serde_json::Map::new();
    match what {
        "idle" => {}
        "grow" => {
            // For profiling by hand: `--child grow DIR` (size in
            // AGENTWAL_BENCH_GROW_MIB, default 512).
            let mib: u64 = std::env::var("AGENTWAL_BENCH_GROW_MIB")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(512);
            grow_log(dir, mib << 20)?;
        }
        "verify" => {
            // Verify = the read-only open: it scans every segment and checks
            // every header and every record checksum.
            let reader = LogReader::open(dir)?;
            let scan = reader.scan();
            if let Some(c) = &scan.corruption {
                return Err(format!("corruption: {c:?}").into());
            }
            out.insert("records".into(), scan.records().into());
            out.insert("record_bytes".into(), scan.record_bytes.into());
        }
        "replay" => {
            let reader = LogReader::open(dir)?;
            let first = reader.scan().first_lsn().unwrap_or(1);
            let (mut n, mut bytes, mut acc) = (0u64, 0u64, 0u64);
            for rec in reader.iter_from(first) {
                let rec = rec?;
                let p = rec.payload();
                n += 1;
                bytes += p.len() as u64;
                acc = acc.wrapping_add(u64::from(p.first().copied().unwrap_or(0)));
            }
            out.insert("records".into(), n.into());
            out.insert("payload_bytes".into(), bytes.into());
            out.insert("acc".into(), acc.into());
        }
        "crc" => {
            // The speed limit of verify: crc32fast over the same files,
            // mapped the same way.
            let mut files: Vec<_> = std::fs::read_dir(dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "wal"))
                .collect();
            files.sort();
            let (mut bytes, mut acc) = (0u64, 0u32);
            for f in &files {
                let m = FsStorage.map(f)?;
                acc ^= crc32fast::hash(&m);
                bytes += m.len() as u64;
            }
            out.insert("bytes".into(), bytes.into());
            out.insert("acc".into(), acc.into());
        }
        other => return Err(format!("unknown child phase {other}").into()),
    }
    out.insert("secs".into(), start.elapsed().as_secs_f64().into());
    out.insert(
        "peak_rss".into(),
        measure::peak_rss_bytes().unwrap_or(0).into(),
    );
    Ok(serde_json::Value::Object(out))
}

/// Long run with compaction every `every` records: snapshot at the last LSN,
/// then `truncate_before`. Samples the directory size before each compaction.
fn compaction(root: &Path, quick: bool) -> Res<Compaction> {
    let d = fresh_dir(root, "compaction")?;
    let (segment_size, every, total): (u64, u64, u64) = if quick {
        (4 << 20, 20_000, 200_000)
    } else {
        (16 << 20, 100_000, 2_000_000)
    };
    let log = Log::open(
        &d,
        LogOptions {
            segment_size,
            max_record_bytes: 64 << 10,
            ..Default::default()
        },
    )?;
    let p = systems::payload(PAYLOAD);
    let batch: Vec<(u8, &[u8])> = (0..64).map(|_| (1u8, p.as_slice())).collect();
    let state = systems::payload(4096);
    let mut c = Compaction {
        segment_size,
        every,
        ..Default::default()
    };
    let start = Instant::now();
    let mut since = 0;
    while c.records < total {
        // Durable batches: a realistic steady state (each batch is synced).
        let range = log.append_batch(&batch, Durability::Durable)?;
        c.records += batch.len() as u64;
        since += batch.len() as u64;
        if since >= every {
            since = 0;
            let size = systems::dir_bytes(&d)?;
            c.peak_dir_bytes = c.peak_dir_bytes.max(size);
            let last = *range.end();
            log.write_snapshot(last, &state)?;
            log.truncate_before(last + 1)?;
            c.cycles += 1;
        }
        if c.records % (total / 4) < batch.len() as u64 {
            c.quarter_dir_bytes.push(systems::dir_bytes(&d)?);
        }
    }
    c.secs = start.elapsed().as_secs_f64();
    c.appended_bytes = c.records * systems::record_bytes(PAYLOAD) as u64;
    c.final_dir_bytes = systems::dir_bytes(&d)?;
    log.close()?;
    std::fs::remove_dir_all(&d)?;
    Ok(c)
}

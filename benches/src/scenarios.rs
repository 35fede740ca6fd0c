//! The workloads of the benchmark, in the order they run, and the child
//! processes that measure replay memory.

use std::path::Path;
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
    /// `LogReader::open` (full scan, every checksum) seconds.
    pub verify_secs: f64,
    /// Peak RSS of the verify child.
    pub verify_rss: u64,
    /// crc32fast over the same segment files, seconds.
    pub crc_secs: f64,
    /// Bytes hashed by the crc child.
    pub crc_bytes: u64,
    /// crc32fast called once per record body over the same files, seconds.
    pub crc_records_secs: f64,
    /// Open + iterate every record, seconds.
    pub replay_secs: f64,
    /// Peak RSS of the replay child.
    pub replay_rss: u64,
}

impl ReplayRow {
    /// Verify speed in bytes/s, over the same segment files the crc32fast
    /// baseline hashes (verify reads records and the zero tail alike).
    pub fn verify_bps(&self) -> f64 {
        self.log_bytes as f64 / self.verify_secs
    }
    /// crc32fast speed, one call per record, in bytes/s of segment files.
    pub fn crc_records_bps(&self) -> f64 {
        self.crc_bytes as f64 / self.crc_records_secs
    }
    /// crc32fast speed in bytes/s.
    pub fn crc_bps(&self) -> f64 {
        self.crc_bytes as f64 / self.crc_secs
    }
}

/// Steady-state disk use under compaction.
#[derive(Debug, Clone, Default)]
pub struct Compaction {
    /// Journal units committed.
    pub units: u64,
    /// Records appended in total.
    pub records: u64,
    /// Bytes appended in total (encoded records; estimated from the
    /// average size of the records live at the end).
    pub appended_bytes: u64,
    /// Compactions (snapshot + truncate).
    pub cycles: u64,
    /// Segment size used.
    pub segment_size: u64,
    /// Records between snapshots.
    pub every: u64,
    /// Retention: settled keys kept across compaction.
    pub retained_keys: u64,
    /// Largest directory size seen (sampled every 20 ms).
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
    /// Rounds of the interleaved comparison (and slices of the latency run).
    pub rounds: usize,
    /// Raw pwrite+fdatasync on a preallocated file, merged over rounds.
    pub raw_prealloc: Option<Latencies>,
    /// Raw write+fdatasync on an appending file.
    pub raw_append: Option<Latencies>,
    /// agentwal durable append, 1 writer, merged over rounds.
    pub agent1: Option<Latencies>,
    /// Per-slice ratio agentwal p50 latency / raw p50 latency.
    pub round_ratios: Vec<f64>,
    /// agentwal durable appends by thread count.
    pub threads: Vec<(usize, Throughput)>,
    /// agentwal `append_async` by task count.
    pub tasks: Vec<(usize, Throughput)>,
    /// Journal units by thread count.
    pub units: Vec<(usize, Throughput)>,
    /// Log-emulated units (4 records, 2 syncs) by thread count.
    pub log_units: Vec<(usize, Throughput)>,
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
    /// The `scaling` phase: one row per history size.
    pub scaling: Vec<crate::scaling::ScaleRow>,
    /// The `rotation` phase: one row per mode.
    pub rotation: Vec<crate::rotation::RotationRow>,
    /// The `observe` phase: one row per workload.
    pub observe: Vec<crate::observe::ObserveRow>,
    /// Every round's throughput per cell.
    pub samples: Vec<(Cell, Vec<Throughput>)>,
}

fn wants(opts: &Opts, phase: &str) -> bool {
    opts.only.is_empty() || opts.only.iter().any(|o| phase.contains(o.as_str()))
}

/// One throughput cell of the interleaved comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// agentwal durable appends from N threads.
    Threads(usize),
    /// agentwal `append_async` from N tokio tasks.
    Tasks(usize),
    /// Real journal units (begin + one effect + commit) from N threads.
    Units(usize),
    /// The same unit as 4 raw log records from N threads.
    LogUnits(usize),
    /// JSON checkpoint file, 1 writer.
    Json,
    /// SQLite WAL FULL, N writers.
    Sqlite(usize),
    /// okaywal, N writers.
    Okaywal(usize),
}

/// The systems, opened once and shared by every round.
struct Open {
    log: Log,
    unit_log: Log,
    journal: agentwal::journal::Journal,
    json_dir: std::path::PathBuf,
    db: std::path::PathBuf,
    wal: okaywal::WriteAheadLog,
}

fn run_cell(o: &Open, cell: Cell, dur: Duration) -> Res<Throughput> {
    match cell {
        Cell::Threads(n) => measure::threads(n, dur, |_| {
            Ok(systems::agentwal_writer(o.log.clone(), PAYLOAD))
        }),
        Cell::Tasks(n) => {
            let log = o.log.clone();
            let p = systems::payload(PAYLOAD);
            measure::tokio_tasks(n, dur, move || {
                let (log, p) = (log.clone(), p.clone());
                async move {
                    log.append_async(1, p).await?;
                    Ok(())
                }
            })
        }
        Cell::Units(n) => measure::threads(n, dur, |t| {
            Ok(systems::journal_unit_writer(o.journal.clone(), t))
        }),
        Cell::LogUnits(n) => measure::threads(n, dur, |t| {
            Ok(systems::agentwal_unit_writer(o.unit_log.clone(), t))
        }),
        Cell::Json => measure::threads(1, dur, |_| systems::json_checkpoint(&o.json_dir, PAYLOAD)),
        Cell::Sqlite(n) => measure::threads(n, dur, |_| systems::sqlite_writer(&o.db, PAYLOAD)),
        Cell::Okaywal(n) => measure::threads(n, dur, |_| {
            Ok(systems::okaywal_writer(o.wal.clone(), PAYLOAD))
        }),
    }
}

/// Runs every phase.
pub fn run_all(opts: &Opts, root: &Path) -> Res<Results> {
    let q = opts.quick;
    let cell = Duration::from_secs_f64(if q { 0.1 } else { 0.3 });
    let mut r = Results {
        quick: q,
        cell_secs: cell.as_secs_f64(),
        rounds: opts.rounds.unwrap_or(if q { 9 } else { 15 }),
        ..Default::default()
    };
    let record = systems::record_bytes(PAYLOAD);

    if wants(opts, "latency") {
        // Paired, interleaved per operation: raw preallocated, raw appending,
        // agentwal, raw preallocated, ... on the same disk, so a neighbour's
        // I/O burst hits all three alike.
        let d = fresh_dir(root, "latency")?;
        let mut raw = systems::raw_prealloc(&d.join("raw-prealloc.dat"), record, 64 << 20)?;
        let mut app = systems::raw_append(&d.join("raw-append.dat"), record)?;
        let ld = d.join("agentwal");
        std::fs::create_dir_all(&ld)?;
        let log = systems::agentwal_open(&ld)?;
        let mut agent = systems::agentwal_writer(log.clone(), PAYLOAD);
        let total = Duration::from_secs_f64(if q { 6.0 } else { 30.0 });
        let [a, b, c] = measure::paired_latencies(total, [&mut raw, &mut app, &mut agent])?;
        log.close()?;
        std::fs::remove_dir_all(&d)?;
        // Ratios per slice of the run (drift check), then overall.
        r.round_ratios = a
            .slices(r.rounds)
            .iter()
            .zip(c.slices(r.rounds))
            .map(|(x, y)| y.quantile_us(0.5) / x.quantile_us(0.5))
            .collect();
        eprintln!(
            "  1 writer: raw p50 {:.0} us, raw append p50 {:.0} us, agentwal p50 {:.0} us",
            a.quantile_us(0.5),
            b.quantile_us(0.5),
            c.quantile_us(0.5)
        );
        r.raw_prealloc = Some(a);
        r.raw_append = Some(b);
        r.agent1 = Some(c);
    }

    let mut cells = Vec::new();
    if wants(opts, "writers") {
        cells.extend(opts.writers.iter().map(|&n| Cell::Threads(n)));
    }
    if wants(opts, "tasks") {
        cells.extend(opts.writers.iter().map(|&n| Cell::Tasks(n)));
    }
    if wants(opts, "units") {
        cells.extend([
            Cell::Units(1),
            Cell::Units(8),
            Cell::LogUnits(1),
            Cell::LogUnits(8),
        ]);
    }
    if wants(opts, "baselines") {
        cells.extend([
            Cell::Json,
            Cell::Sqlite(1),
            Cell::Sqlite(8),
            Cell::Okaywal(1),
            Cell::Okaywal(8),
        ]);
    }
    if !cells.is_empty() {
        let d = fresh_dir(root, "compare")?;
        let sub = |n: &str| -> Res<std::path::PathBuf> {
            let p = d.join(n);
            std::fs::create_dir_all(&p)?;
            Ok(p)
        };
        let db = sub("sqlite")?.join("bench.db");
        systems::sqlite_setup(&db)?;
        let o = Open {
            log: systems::agentwal_open(&sub("agentwal")?)?,
            unit_log: systems::agentwal_open(&sub("log-units")?)?,
            journal: systems::journal_open(
                &sub("journal")?,
                agentwal::journal::JournalOptions::default(),
            )?,
            json_dir: sub("json")?,
            db,
            wal: systems::okaywal_open(&sub("okaywal")?)?,
        };
        // Rounds: every cell once per round, in the same order, so slow
        // phases of the shared machine hit every system; medians per cell.
        let mut samples: Vec<Vec<Throughput>> = vec![Vec::new(); cells.len()];
        for round in 0..r.rounds {
            for (i, c) in cells.iter().enumerate() {
                samples[i].push(run_cell(&o, *c, cell)?);
            }
            eprintln!("  round {} of {} done", round + 1, r.rounds);
        }
        o.log.close()?;
        o.unit_log.close()?;
        o.journal.close()?;
        o.wal.shutdown()?;
        std::fs::remove_dir_all(&d)?;
        for (c, v) in cells.iter().zip(samples) {
            r.samples.push((*c, v));
        }
        for &(c, ref v) in &r.samples {
            let m = median_tp(v);
            eprintln!("  {c:?}: {:.0}/s", m.per_sec());
            match c {
                Cell::Threads(n) => r.threads.push((n, m)),
                Cell::Tasks(n) => r.tasks.push((n, m)),
                Cell::Units(n) => r.units.push((n, m)),
                Cell::LogUnits(n) => r.log_units.push((n, m)),
                Cell::Json => r.json = Some(m),
                Cell::Sqlite(n) => r.sqlite.push((n, m)),
                Cell::Okaywal(n) => r.okaywal.push((n, m)),
            }
        }
    }
    if wants(opts, "replay") {
        r.idle_rss = measure::u64_of(&measure::child_json(root, "idle")?, "peak_rss");
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
    if wants(opts, "rotation") {
        r.rotation = crate::rotation::run(root, q)?;
    }
    if wants(opts, "scaling") {
        r.scaling = crate::scaling::run(root, q)?;
    }
    if wants(opts, "observe") {
        r.observe = crate::observe::run(root, q)?;
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

/// The median-throughput sample of a cell.
fn median_tp(v: &[Throughput]) -> Throughput {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.per_sec().total_cmp(&b.per_sec()));
    s[s.len() / 2]
}

/// Median over rounds of the per-round ratio `a / b`.
pub fn round_ratio(r: &Results, a: Cell, b: Cell) -> Option<f64> {
    let get = |c: Cell| r.samples.iter().find(|(k, _)| *k == c).map(|(_, v)| v);
    let (x, y) = (get(a)?, get(b)?);
    let ratios: Vec<f64> = x
        .iter()
        .zip(y)
        .map(|(p, q)| p.per_sec() / q.per_sec())
        .collect();
    Some(measure::median(&ratios))
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

fn replay_row(dir: &Path) -> Res<ReplayRow> {
    let (u, f) = (measure::u64_of, measure::f64_of);
    // CPU-bound and the CPUs are shared: verify and crc alternate three
    // times and the fastest of each counts (the least disturbed run).
    let (mut v, mut c, mut cr) = (
        serde_json::Value::Null,
        serde_json::Value::Null,
        serde_json::Value::Null,
    );
    for _ in 0..3 {
        let n = measure::child_json(dir, "crc-records")?;
        if cr.is_null() || f(&n, "secs") < f(&cr, "secs") {
            cr = n;
        }
        let nv = measure::child_json(dir, "verify")?;
        if v.is_null() || f(&nv, "secs") < f(&v, "secs") {
            v = nv;
        }
        let nc = measure::child_json(dir, "crc")?;
        if c.is_null() || f(&nc, "secs") < f(&c, "secs") {
            c = nc;
        }
    }
    let rp = measure::child_json(dir, "replay")?;
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
        verify_secs: f(&v, "secs"),
        verify_rss: u(&v, "peak_rss"),
        crc_secs: f(&c, "secs"),
        crc_bytes: u(&c, "bytes"),
        crc_records_secs: f(&cr, "secs"),
        replay_secs: f(&rp, "secs"),
        replay_rss: u(&rp, "peak_rss"),
    })
}

/// The measured part of a child process (`--child WHAT DIR`, started by
/// [`measure::child_json`]); prints one JSON object.
pub fn child(what: &str, dir: &Path) -> Res<serde_json::Value> {
    measure::child_report(|| child_phase(what, dir))
}

fn child_phase(what: &str, dir: &Path) -> Res<serde_json::Value> {
    let mut out = serde_json::Map::new();
    if let Some(n) = what.strip_prefix("scale-run:") {
        let n: u64 = n.parse().map_err(|_| format!("bad record count {n:?}"))?;
        return crate::scaling::child_run(dir, n);
    }
    if what == "scale-open" {
        return crate::scaling::child_open(dir);
    }
    if let Some(spec) = what.strip_prefix("observe:") {
        return crate::observe::child_run(dir, spec);
    }
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
        "crc" | "crc-records" => {
            // The speed limit of verify: crc32fast over the same files,
            // mapped the same way — in one call per file ("crc"), or one
            // call per 280-byte record body, as verify must ("crc-records").
            let stride = systems::record_bytes(PAYLOAD);
            let body = 24 + PAYLOAD;
            let mut files: Vec<_> = std::fs::read_dir(dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "wal"))
                .collect();
            files.sort();
            let (mut bytes, mut acc) = (0u64, 0u32);
            for f in &files {
                let m = FsStorage.map(f)?;
                if what == "crc" {
                    acc ^= crc32fast::hash(&m);
                } else {
                    let mut pos = 32;
                    while pos + stride <= m.len() {
                        acc ^= crc32fast::hash(&m[pos + 4..pos + 4 + body]);
                        pos += stride;
                    }
                }
                bytes += m.len() as u64;
            }
            out.insert("bytes".into(), bytes.into());
            out.insert("acc".into(), acc.into());
        }
        other => return Err(format!("unknown child phase {other}").into()),
    }
    Ok(serde_json::Value::Object(out))
}

/// Long run with compaction every `every` records: snapshot at the last LSN,
/// then `truncate_before`. Samples the directory size before each compaction.
fn compaction(root: &Path, quick: bool) -> Res<Compaction> {
    use agentwal::journal::{AutoCompact, JournalOptions};
    use std::sync::atomic::{AtomicU64, Ordering};

    let d = fresh_dir(root, "compaction")?;
    // Retention bounds the snapshot (settled keys survive compaction): the
    // run must outlast it to reach the steady state.
    let (segment_size, every, total, threads, keys): (u64, u64, u64, usize, usize) = if quick {
        (4 << 20, 20_000, 30_000, 8, 5_000)
    } else {
        (16 << 20, 100_000, 300_000, 8, 100_000)
    };
    let opts = JournalOptions {
        log: LogOptions {
            segment_size,
            max_record_bytes: 2 << 20,
            ..Default::default()
        },
        max_payload_bytes: 1 << 20,
        auto_compact: AutoCompact {
            every_records: Some(every),
            every_bytes: None,
            tail_ratio: None,
        },
        retention: agentwal::journal::Retention {
            max_keys: Some(keys),
            max_age: None,
        },
        ..JournalOptions::default()
    };
    let journal = systems::journal_open(&d, opts)?;
    let mut c = Compaction {
        segment_size,
        every,
        retained_keys: keys as u64,
        ..Default::default()
    };
    let done = AtomicU64::new(0);
    let start = Instant::now();
    // Writers run units until `total`; this thread samples the directory.
    std::thread::scope(|s| -> Res {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (journal, done) = (journal.clone(), &done);
                s.spawn(move || -> Res {
                    let mut op = systems::journal_unit_writer(journal, t);
                    while done.fetch_add(1, Ordering::Relaxed) < total {
                        op()?;
                    }
                    Ok(())
                })
            })
            .collect();
        let mut next_quarter = 1;
        while workers.iter().any(|w| !w.is_finished()) {
            let size = systems::dir_bytes(&d)?;
            c.peak_dir_bytes = c.peak_dir_bytes.max(size);
            if done.load(Ordering::Relaxed) >= total * next_quarter / 4 && next_quarter < 4 {
                c.quarter_dir_bytes.push(size);
                next_quarter += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for w in workers {
            w.join().map_err(|_| "a compaction writer panicked")??;
        }
        Ok(())
    })?;
    c.secs = start.elapsed().as_secs_f64();
    let stats = journal.stats();
    c.units = stats.committed;
    c.records = journal.log().next_lsn() - 1;
    c.cycles = stats.compactions;
    c.final_dir_bytes = systems::dir_bytes(&d)?;
    c.quarter_dir_bytes.push(c.final_dir_bytes);
    c.peak_dir_bytes = c.peak_dir_bytes.max(c.final_dir_bytes);
    journal.close()?;
    if std::env::var_os("AGENTWAL_BENCH_LIST").is_some() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            eprintln!(
                "    {} {}",
                e.file_name().to_string_lossy(),
                e.metadata()?.len()
            );
        }
    }
    // Average record size, from the records still live at the end.
    let reader = LogReader::open(&d)?;
    let scan = reader.scan();
    c.appended_bytes = scan.record_bytes * c.records / scan.records().max(1);
    std::fs::remove_dir_all(&d)?;
    Ok(c)
}

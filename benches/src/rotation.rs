//! The `rotation` phase: latency of durable appends at 8 writers across many
//! segment rotations (small segments), with spare segments prepared ahead
//! (`prepare_segments: true`, the default) against rotations that create the
//! segment inline (`false`, the behaviour before), and okaywal at 8 writers,
//! all in the same rounds (modes interleaved) so the machine's load hits
//! every mode alike. Prints p50 / p99 / p99.9 and their ratios; asserts
//! nothing (timing is noisy on shared machines).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use agentwal::log::{Durability, Log, LogOptions};

use crate::measure::{Latencies, Res};
use crate::scenarios::PAYLOAD;
use crate::systems;

/// Writers of the phase.
pub const WRITERS: usize = 8;
/// Segment size of the phase: small, so a round sees dozens of rotations.
pub const SEGMENT: u64 = 1 << 20;

/// What one mode measured over every round.
#[derive(Debug, Clone)]
pub struct RotationRow {
    /// `agentwal, spares`, `agentwal, inline`, or `okaywal`.
    pub mode: &'static str,
    /// Every append's latency.
    pub latencies: Latencies,
    /// Appends per second (median of the rounds).
    pub per_sec: f64,
    /// Segments created (agentwal modes).
    pub segments: usize,
}

/// `n` threads calling `op` until `dur` is over; every call timed.
fn timed_threads<G: FnMut() -> Res>(
    n: usize,
    dur: Duration,
    make: &(dyn Fn() -> G + Sync),
) -> Res<(Vec<u64>, f64)> {
    let barrier = Barrier::new(n + 1);
    let stop = AtomicBool::new(false);
    let all = Mutex::new(Vec::new());
    let first_err: Mutex<Option<String>> = Mutex::new(None);
    let secs = std::thread::scope(|s| {
        for _ in 0..n {
            let (barrier, stop, all, first_err) = (&barrier, &stop, &all, &first_err);
            s.spawn(move || {
                let mut op = make();
                let mut v = Vec::with_capacity(1 << 16);
                barrier.wait();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if let Err(e) = op() {
                        first_err.lock().unwrap().get_or_insert(e.to_string());
                        break;
                    }
                    v.push(t.elapsed().as_nanos() as u64);
                }
                all.lock().unwrap().extend(v);
            });
        }
        barrier.wait();
        let start = Instant::now();
        std::thread::sleep(dur);
        stop.store(true, Ordering::Relaxed);
        start.elapsed().as_secs_f64()
    });
    if let Some(e) = first_err.into_inner().unwrap() {
        return Err(e.into());
    }
    Ok((all.into_inner().unwrap(), secs))
}

/// The modes of the phase, in the order of the rows. "no rotation": one
/// 64 MiB segment that a round never fills, the same appends without any
/// rotation (what the machine's noise alone costs).
const MODES: [&str; 4] = [
    "agentwal, spares",
    "agentwal, inline",
    "agentwal, no rotation",
    "okaywal",
];

/// One round of mode `MODES[i]` in the fresh directory `d`: every append's
/// latency, the seconds they took, and the segments created.
fn one_round(i: usize, d: &Path, dur: Duration) -> Res<(Vec<u64>, f64, usize)> {
    if MODES[i] == "okaywal" {
        let wal = systems::okaywal_open(d)?;
        let (lat, secs) = timed_threads(WRITERS, dur, &|| {
            systems::okaywal_writer(wal.clone(), PAYLOAD)
        })?;
        wal.shutdown()?;
        return Ok((lat, secs, 0));
    }
    let log = Log::open(
        d,
        LogOptions {
            segment_size: if MODES[i] == "agentwal, no rotation" {
                64 << 20
            } else {
                SEGMENT
            },
            max_record_bytes: 64 << 10,
            prepare_segments: MODES[i] == "agentwal, spares",
            ..LogOptions::default()
        },
    )?;
    let p = systems::payload(PAYLOAD);
    let (lat, secs) = timed_threads(WRITERS, dur, &|| {
        let (log, p) = (log.clone(), p.clone());
        move || -> Res {
            log.append_with(1, &p, Durability::Durable)?;
            Ok(())
        }
    })?;
    let segments = log.segment_count();
    log.close()?;
    Ok((lat, secs, segments))
}

impl RotationRow {
    /// p50, p99 and p99.9 in µs, and p99.9 / p50.
    fn quantiles(&self) -> [f64; 4] {
        let q = |x| self.latencies.quantile_us(x);
        [q(0.5), q(0.99), q(0.999), q(0.999) / q(0.5)]
    }
}

/// Runs the phase in `root`.
pub fn run(root: &Path, quick: bool) -> Res<Vec<RotationRow>> {
    let rounds = if quick { 3 } else { 7 };
    let dur = Duration::from_secs_f64(if quick { 1.5 } else { 4.0 });
    let mut rows: Vec<RotationRow> = MODES
        .iter()
        .map(|&mode| RotationRow {
            mode,
            latencies: Latencies::from_samples(Vec::new(), 0.0),
            per_sec: 0.0,
            segments: 0,
        })
        .collect();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); MODES.len()];
    let mut samples: Vec<Vec<u64>> = vec![Vec::new(); MODES.len()];
    for round in 0..rounds {
        for i in 0..MODES.len() {
            let d = systems::fresh_dir(root, &format!("rotation-{i}-{round}"))?;
            let (lat, secs, segments) = one_round(i, &d, dur)?;
            rows[i].segments += segments;
            rates[i].push(lat.len() as f64 / secs);
            samples[i].extend(lat);
            std::fs::remove_dir_all(&d)?;
        }
        eprintln!("  rotation round {} of {rounds} done", round + 1);
    }
    for ((row, mut r), v) in rows.iter_mut().zip(rates).zip(samples) {
        row.latencies = Latencies::from_samples(v, 0.0);
        r.sort_by(f64::total_cmp);
        row.per_sec = r[r.len() / 2];
        let [p50, p99, p999, ratio] = row.quantiles();
        eprintln!(
            "  {}: p50 {p50:.0} us, p99 {p99:.0} us, p99.9 {p999:.0} us (p99.9/p50 {ratio:.2}), {:.0}/s, {} segments",
            row.mode, row.per_sec, row.segments
        );
    }
    Ok(rows)
}

/// The phase's section of the report.
pub fn markdown(rows: &[RotationRow], quick: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n### Durable appends across segment rotations ({WRITERS} writers, {} MiB segments)\n",
        SEGMENT >> 20
    );
    let _ = writeln!(
        s,
        "{} rounds, modes interleaved; every append timed; 256-byte payloads.\n",
        if quick { 3 } else { 7 }
    );
    let _ = writeln!(
        s,
        "| mode | p50 | p99 | p99.9 | p99.9 / p50 | appends/s | segments |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let [p50, p99, p999, ratio] = r.quantiles();
        let _ = writeln!(
            s,
            "| {} | {p50:.0} µs | {p99:.0} µs | {p999:.0} µs | {ratio:.2} | {:.0} | {} |",
            r.mode, r.per_sec, r.segments
        );
    }
    if let [spares, inline, none, okaywal] = rows {
        let _ = writeln!(
            s,
            "\nSpares vs inline: p99.9 {:.2}x, throughput {:.2}x; spares vs no rotation: p99.9 {:.2}x, \
             throughput {:.2}x; spares vs okaywal at {WRITERS} writers: {:.2}x.",
            spares.latencies.quantile_us(0.999) / inline.latencies.quantile_us(0.999),
            spares.per_sec / inline.per_sec,
            spares.latencies.quantile_us(0.999) / none.latencies.quantile_us(0.999),
            spares.per_sec / none.per_sec,
            spares.per_sec / okaywal.per_sec
        );
    }
    s
}

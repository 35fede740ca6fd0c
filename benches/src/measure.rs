//! Measurement primitives: fixed-duration throughput with N threads or N tokio
//! tasks, per-operation latency, peak memory of the current process, and
//! the child processes that measure in a process of their own.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Error type of the harness: any error, with a message for the operator.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Result of one benchmarked operation.
pub type Res<T = ()> = Result<T, BoxError>;

/// Operations completed in a measured time.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Operations that completed.
    pub ops: u64,
    /// Seconds from the common start until the last operation returned.
    pub secs: f64,
}

impl Throughput {
    /// Operations per second.
    pub fn per_sec(&self) -> f64 {
        if self.secs > 0.0 {
            self.ops as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// Runs `n` threads for `dur`. Each thread builds its own operation with
/// `make(thread_index)` (outside the measured time) and calls it in a loop
/// until the deadline. Returns the total count of completed operations over
/// the time until every thread stopped.
pub fn threads<F, G>(n: usize, dur: Duration, make: F) -> Res<Throughput>
where
    F: Fn(usize) -> Res<G> + Sync,
    G: FnMut() -> Res,
{
    let barrier = Barrier::new(n + 1);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|t| {
                let (barrier, stop, make) = (&barrier, &stop, &make);
                s.spawn(move || -> Res<u64> {
                    let op = make(t);
                    barrier.wait();
                    let mut op = op?;
                    let mut count = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        op()?;
                        count += 1;
                    }
                    Ok(count)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        std::thread::sleep(dur);
        stop.store(true, Ordering::Relaxed);
        let mut ops = 0;
        let mut first_err = None;
        for h in handles {
            match h.join() {
                Ok(Ok(c)) => ops += c,
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(_) => first_err = first_err.or(Some("a benchmark thread panicked".into())),
            }
        }
        let secs = start.elapsed().as_secs_f64();
        match first_err {
            Some(e) => Err(e),
            None => Ok(Throughput { ops, secs }),
        }
    })
}

/// Per-operation latencies of one writer, sorted (nanoseconds).
#[derive(Debug, Clone)]
pub struct Latencies {
    sorted_ns: Vec<u64>,
    /// The same samples in the order they were taken.
    in_order: Vec<u64>,
    /// Wall time of the whole run.
    pub secs: f64,
}

impl Latencies {
    /// Latencies from samples in the order they were taken (ns) and the
    /// wall time they took.
    pub fn from_samples(in_order: Vec<u64>, secs: f64) -> Latencies {
        let mut sorted_ns = in_order.clone();
        sorted_ns.sort_unstable();
        Latencies {
            sorted_ns,
            in_order,
            secs,
        }
    }
    /// The `q` quantile (0.0..=1.0) in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.sorted_ns.is_empty() {
            return 0.0;
        }
        let i = ((self.sorted_ns.len() - 1) as f64 * q).round() as usize;
        self.sorted_ns[i] as f64 / 1000.0
    }
    /// Mean in microseconds.
    pub fn mean_us(&self) -> f64 {
        if self.sorted_ns.is_empty() {
            return 0.0;
        }
        self.sorted_ns.iter().sum::<u64>() as f64 / self.sorted_ns.len() as f64 / 1000.0
    }
    /// As throughput.
    pub fn throughput(&self) -> Throughput {
        Throughput {
            ops: self.sorted_ns.len() as u64,
            secs: self.secs,
        }
    }
    /// Splits the run into `n` consecutive slices (to see drift).
    pub fn slices(&self, n: usize) -> Vec<Latencies> {
        let len = self.in_order.len().div_ceil(n.max(1)).max(1);
        self.in_order
            .chunks(len)
            .map(|c| {
                let mut sorted_ns = c.to_vec();
                sorted_ns.sort_unstable();
                Latencies {
                    secs: sorted_ns.iter().sum::<u64>() as f64 / 1e9,
                    sorted_ns,
                    in_order: c.to_vec(),
                }
            })
            .collect()
    }
}

/// Calls the operations in turn (0, 1, 2, 0, 1, 2, ...) on this thread for
/// `dur`, timing every call: a paired comparison that the machine's load
/// drift cannot bias.
pub fn paired_latencies<const N: usize>(
    dur: Duration,
    mut ops: [&mut dyn FnMut() -> Res; N],
) -> Res<[Latencies; N]> {
    let mut v: [Vec<u64>; N] = std::array::from_fn(|_| Vec::with_capacity(1 << 15));
    let mut busy = [0f64; N];
    let deadline = Instant::now() + dur;
    while Instant::now() < deadline {
        for (i, op) in ops.iter_mut().enumerate() {
            let t = Instant::now();
            op()?;
            let e = t.elapsed();
            v[i].push(e.as_nanos() as u64);
            busy[i] += e.as_secs_f64();
        }
    }
    Ok(std::array::from_fn(|i| {
        Latencies::from_samples(std::mem::take(&mut v[i]), busy[i])
    }))
}

/// Runs `n` tokio tasks on a 2-worker multi-thread runtime for `dur`; each
/// task awaits `op()` in a loop.
pub fn tokio_tasks<F, Fut>(n: usize, dur: Duration, op: F) -> Res<Throughput>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Res> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()?;
    let op = Arc::new(op);
    rt.block_on(async move {
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let (stop, op) = (stop.clone(), op.clone());
                tokio::spawn(async move {
                    let mut count = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        op().await?;
                        count += 1;
                    }
                    Ok::<u64, BoxError>(count)
                })
            })
            .collect();
        tokio::time::sleep(dur).await;
        stop.store(true, Ordering::Relaxed);
        let mut ops = 0;
        for t in tasks {
            ops += t.await??;
        }
        Ok(Throughput {
            ops,
            secs: start.elapsed().as_secs_f64(),
        })
    })
}

/// Peak resident set size of this process so far (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The parent side of a child process: runs this executable as
/// `--child WHAT DIR` (see `scenarios::child`) and returns the one JSON
/// object it prints.
pub fn child_json(dir: &Path, what: &str) -> Res<serde_json::Value> {
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

/// The child side: runs `body` and adds what every child reports to the
/// JSON object it returns: its seconds (unless it timed itself) and the
/// peak RSS of its process, `peak_rss`.
pub fn child_report(body: impl FnOnce() -> Res<serde_json::Value>) -> Res<serde_json::Value> {
    let start = Instant::now();
    let mut out = body()?;
    if let Some(o) = out.as_object_mut() {
        o.entry("secs")
            .or_insert(start.elapsed().as_secs_f64().into());
        o.insert("peak_rss".into(), peak_rss_bytes().unwrap_or(0).into());
    }
    Ok(out)
}

/// Field `k` of a child's report as a number (NaN when missing).
pub fn f64_of(j: &serde_json::Value, k: &str) -> f64 {
    j[k].as_f64().unwrap_or(f64::NAN)
}

/// Field `k` of a child's report as a count (0 when missing).
pub fn u64_of(j: &serde_json::Value, k: &str) -> u64 {
    j[k].as_u64().unwrap_or(0)
}

/// Median of a non-empty slice.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return 0.0;
    }
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_quantiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let mut n = 0u64;
        let [l] = paired_latencies(
            Duration::from_millis(20),
            [&mut || {
                n += 1;
                Ok(())
            }],
        )
        .unwrap();
        assert!(n > 0);
        assert_eq!(l.throughput().ops, n);
        assert!(l.quantile_us(0.0) <= l.quantile_us(0.5));
        assert!(l.quantile_us(0.5) <= l.quantile_us(1.0));
        let parts = l.slices(4);
        assert_eq!(parts.iter().map(|p| p.throughput().ops).sum::<u64>(), n);
    }

    #[test]
    fn threads_counts_every_operation_and_propagates_errors() {
        let counted = std::sync::atomic::AtomicU64::new(0);
        let tp = threads(3, Duration::from_millis(20), |_| {
            Ok(|| {
                counted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
        })
        .unwrap();
        assert_eq!(tp.ops, counted.load(Ordering::Relaxed));
        let err = threads(2, Duration::from_millis(5), |_| Ok(|| Err("boom".into())));
        assert!(err.is_err());
    }
}

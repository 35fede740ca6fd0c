//! Counters and gauges the application updates, rendered in the Prometheus
//! text exposition format (version 0.0.4) by `/metrics`.
//!
//! Every field is a plain atomic: updating one costs one relaxed atomic
//! operation and never blocks, so workers can update them on the hot path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::shutdown::Shutdown;

/// Process-wide counters. Share it in an `Arc`; update with the helpers or
/// the atomics directly.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Units committed since start (counter).
    pub units_committed: AtomicU64,
    /// Units aborted since start (counter).
    pub units_aborted: AtomicU64,
    /// Effects currently in doubt (gauge).
    pub effects_in_doubt: AtomicU64,
    /// Work-queue items waiting to be claimed (gauge).
    pub queue_pending: AtomicU64,
    /// Work-queue items claimed and not yet acked (gauge).
    pub queue_in_flight: AtomicU64,
    /// Work-queue items dead-lettered (gauge).
    pub queue_dead_lettered: AtomicU64,
    /// Work-queue items acked since start (counter).
    pub queue_acked: AtomicU64,
    /// `fdatasync` calls timed by the application (counter).
    pub fsyncs: AtomicU64,
    /// Total time spent in those calls, nanoseconds (counter).
    pub fsync_nanos: AtomicU64,
}

impl Metrics {
    /// All zero.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Counts one committed unit.
    pub fn unit_committed(&self) {
        self.units_committed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one aborted unit.
    pub fn unit_aborted(&self) {
        self.units_aborted.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one timed sync.
    pub fn record_fsync(&self, took: Duration) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.fsync_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Sets the work-queue gauges (from `WorkQueue::stats`).
    pub fn set_queue(&self, pending: u64, in_flight: u64, dead_lettered: u64) {
        self.queue_pending.store(pending, Ordering::Relaxed);
        self.queue_in_flight.store(in_flight, Ordering::Relaxed);
        self.queue_dead_lettered
            .store(dead_lettered, Ordering::Relaxed);
    }

    /// The Prometheus text format. With a shutdown controller, also exports
    /// `agentwal_shutting_down` (0/1) and `agentwal_units_in_progress`.
    pub fn render(&self, shutdown: Option<&Shutdown>) -> String {
        let mut out = String::with_capacity(1024);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "agentwal_units_committed_total",
            "counter",
            "Units committed since the process started.",
            get(&self.units_committed).to_string(),
        );
        metric(
            "agentwal_units_aborted_total",
            "counter",
            "Units aborted since the process started.",
            get(&self.units_aborted).to_string(),
        );
        metric(
            "agentwal_effects_in_doubt",
            "gauge",
            "Side effects whose outcome is unknown (intent recorded, outcome not).",
            get(&self.effects_in_doubt).to_string(),
        );
        metric(
            "agentwal_queue_pending",
            "gauge",
            "Work-queue items waiting to be claimed.",
            get(&self.queue_pending).to_string(),
        );
        metric(
            "agentwal_queue_in_flight",
            "gauge",
            "Work-queue items claimed and not yet acked.",
            get(&self.queue_in_flight).to_string(),
        );
        metric(
            "agentwal_queue_dead_lettered",
            "gauge",
            "Work-queue items that exhausted their attempts.",
            get(&self.queue_dead_lettered).to_string(),
        );
        metric(
            "agentwal_queue_acked_total",
            "counter",
            "Work-queue items acked since the process started.",
            get(&self.queue_acked).to_string(),
        );
        metric(
            "agentwal_fsyncs_total",
            "counter",
            "fdatasync calls timed by the application.",
            get(&self.fsyncs).to_string(),
        );
        metric(
            "agentwal_fsync_seconds_total",
            "counter",
            "Seconds spent in those fdatasync calls.",
            format!("{:.9}", get(&self.fsync_nanos) as f64 / 1e9),
        );
        if let Some(s) = shutdown {
            metric(
                "agentwal_shutting_down",
                "gauge",
                "1 once graceful shutdown began.",
                u8::from(s.is_triggered()).to_string(),
            );
            metric(
                "agentwal_units_in_progress",
                "gauge",
                "Units holding a shutdown guard.",
                s.outstanding_units().to_string(),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_reflects_updates() {
        let m = Metrics::new();
        m.unit_committed();
        m.unit_committed();
        m.record_fsync(Duration::from_millis(1500));
        m.set_queue(3, 1, 2);
        let s = Shutdown::new(Duration::from_secs(1));
        s.trigger();
        let text = m.render(Some(&s));
        for line in [
            "agentwal_units_committed_total 2",
            "agentwal_queue_pending 3",
            "agentwal_queue_in_flight 1",
            "agentwal_queue_dead_lettered 2",
            "agentwal_fsyncs_total 1",
            "agentwal_fsync_seconds_total 1.500000000",
            "agentwal_shutting_down 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.contains("# TYPE agentwal_units_committed_total counter"));
    }
}

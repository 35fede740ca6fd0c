//! `/metrics`: the library's own metrics (see [`crate::observe`]) in the
//! Prometheus text exposition format, through the `metrics` facade and
//! `metrics-exporter-prometheus` (feature `http`).
//!
//! Nothing here is counted by hand: the log times its own `fdatasync`s, the
//! journal counts its units and effects, the queue sets its gauges. This
//! module only installs the recorder that collects them and renders it.
//!
//! ```
//! use agentwal::runtime::{Metrics, Shutdown};
//! # use std::time::Duration;
//! let metrics = Metrics::new(); // installs the Prometheus recorder (once per process)
//! let dir = tempfile::tempdir().unwrap();
//! let log = agentwal::Log::open(dir.path(), agentwal::LogOptions::default()).unwrap();
//! log.append(b"x").unwrap();
//! let text = metrics.render(Some(&Shutdown::new(Duration::from_secs(1))));
//! assert!(text.contains("agentwal_fsync_seconds_count"));
//! assert!(text.contains("agentwal_shutting_down 0"));
//! ```

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::shutdown::Shutdown;
use crate::observe;

/// The process-wide recorder: its handle, and whether it is the global
/// `metrics` recorder (false when the application installed another one).
static RECORDER: OnceLock<(PrometheusHandle, bool)> = OnceLock::new();

/// Histogram buckets for durations in seconds: 50 µs .. 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];
/// Histogram buckets for records per group commit.
const COUNT_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// Upkeep interval: drains histogram samples into their buckets so memory
/// stays flat even when nobody scrapes `/metrics`.
const UPKEEP: Duration = Duration::from_secs(5);

fn recorder() -> &'static (PrometheusHandle, bool) {
    RECORDER.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(observe::GROUP_COMMIT_RECORDS.into()),
                    COUNT_BUCKETS,
                )
            })
            .expect("non-empty bucket lists");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let installed = metrics::set_global_recorder(recorder).is_ok();
        if installed {
            observe::describe();
            let upkeep = handle.clone();
            // Best effort: without it histograms keep their raw samples
            // until the next render.
            let _ = std::thread::Builder::new()
                .name("agentwal-metrics".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP);
                    upkeep.run_upkeep();
                });
        } else {
            tracing::warn!(
                target: "agentwal::metrics",
                "a metrics recorder is already installed: agentwal's metrics go to it, /metrics shows none of them"
            );
        }
        (handle, installed)
    })
}

/// The Prometheus view of the library's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
    installed: bool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("installed", &self.installed)
            .finish()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Installs the Prometheus recorder as the process's global `metrics`
    /// recorder (the first call; later calls share it) and returns a view
    /// of it. If the application already installed a recorder of its own,
    /// the library's metrics go there and [`Metrics::render`] says so.
    pub fn new() -> Metrics {
        let (handle, installed) = recorder();
        Metrics {
            handle: handle.clone(),
            installed: *installed,
        }
    }

    /// True when this recorder collects the library's metrics (it is the
    /// global one).
    pub fn is_installed(&self) -> bool {
        self.installed
    }

    /// Every metric in the Prometheus text format (version 0.0.4). With a
    /// shutdown controller, also `agentwal_shutting_down` (0/1) and
    /// `agentwal_units_in_progress`.
    pub fn render(&self, shutdown: Option<&Shutdown>) -> String {
        let mut text = String::new();
        if let Some(s) = shutdown {
            if self.installed {
                metrics::gauge!("agentwal_shutting_down")
                    .set(f64::from(u8::from(s.is_triggered())));
                metrics::gauge!("agentwal_units_in_progress").set(s.outstanding_units() as f64);
            } else {
                // Not ours to set: render them directly.
                text.push_str(&format!(
                    "# TYPE agentwal_shutting_down gauge\nagentwal_shutting_down {}\n# TYPE agentwal_units_in_progress gauge\nagentwal_units_in_progress {}\n",
                    u8::from(s.is_triggered()),
                    s.outstanding_units()
                ));
            }
        }
        if !self.installed {
            text.insert_str(
                0,
                "# agentwal: another metrics recorder is installed; the library's metrics are reported there\n",
            );
            return text;
        }
        self.handle.render() + &text
    }
}

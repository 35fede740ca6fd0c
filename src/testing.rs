//! A crash-test kit for your own agent (feature `testing`).
//!
//! [`crash_test`] runs your unit function under systematic crash injection:
//! a reference run counts the storage writes of the whole workload; then,
//! for every write (or every `stride`-th, see [`CrashTestOptions`]), the
//! workload is run again on the in-memory simulated file system
//! ([`crate::log::storage::SimStorage`]) which stops at that write, as if
//! the process were killed (page cache kept) or the machine lost power
//! (unsynced data lost); then the journal is reopened on what survives and
//! the workload is re-run to completion. Effect boundaries are storage
//! writes (intent, outcome, commit), so every boundary is a crash point.
//!
//! Your external services are replaced by a [`Recorder`] that counts
//! deliveries per idempotency key. After each crash point the kit checks:
//!
//! * units that were committed before the crash never run an effect again
//!   (nor do their child units, `<unit>/...`, committed before it: fan-outs);
//! * a key delivered through [`Recorder::deliver_once`] (your `never_repeat`
//!   effects) was delivered at most once;
//! * a key delivered through [`Recorder::deliver`] (`retry_same_key`) was
//!   delivered at most once more than before the crash (one re-send per
//!   crash, always under its own key);
//! * every unit ends committed or aborted, or incomplete with an effect
//!   visibly in doubt ([`crate::journal::Error::InDoubt`]).
//!
//! ```
//! use agentwal::journal::{Effect, Journal};
//! use agentwal::testing::{crash_test, CrashTestOptions, Recorder};
//! let report = crash_test(&["order-1", "order-2"], CrashTestOptions::default(), |j: &Journal, id: &str, svc: &Recorder| {
//!     let mut unit = j.begin(id, "order", &())?;
//!     unit.run(Effect::never_repeat("charge"), |ctx| {
//!         svc.deliver_once(ctx.key());
//!         Ok::<_, String>(())
//!     })?;
//!     unit.run(Effect::retry_same_key("email"), |ctx| {
//!         svc.deliver(ctx.key());
//!         Ok::<_, String>(())
//!     })?;
//!     unit.commit()?;
//!     Ok(())
//! });
//! assert!(report.violations.is_empty(), "{:#?}", report.violations);
//! assert!(report.crash_points > 10);
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::journal::{Error, Journal, JournalOptions, UnitState};
use crate::log::storage::sim::CrashMode;
use crate::log::storage::SimStorage;

const DIR: &str = "/crashtest/journal";

/// A recording fake for external services: counts deliveries per key.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    inner: Arc<Mutex<RecorderState>>,
}

#[derive(Debug, Default)]
struct RecorderState {
    counts: HashMap<String, u32>,
    once: std::collections::HashSet<String>,
    /// Keys delivered during the current phase (unit id prefix not assumed).
    phase: Vec<String>,
}

impl Recorder {
    /// Records a delivery of an at-least-once effect (`retry_same_key`).
    pub fn deliver(&self, key: &str) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *s.counts.entry(key.to_string()).or_insert(0) += 1;
        s.phase.push(key.to_string());
    }
    /// Records a delivery of an at-most-once effect (`never_repeat`).
    pub fn deliver_once(&self, key: &str) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.once.insert(key.to_string());
        *s.counts.entry(key.to_string()).or_insert(0) += 1;
        s.phase.push(key.to_string());
    }
    /// Deliveries of `key` so far.
    pub fn count(&self, key: &str) -> u32 {
        let s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.counts.get(key).copied().unwrap_or(0)
    }
    fn take_phase(&self) -> Vec<String> {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut s.phase)
    }
    fn snapshot(&self) -> (HashMap<String, u32>, std::collections::HashSet<String>) {
        let s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (s.counts.clone(), s.once.clone())
    }
}

/// Options of [`crash_test`].
#[derive(Debug, Clone)]
pub struct CrashTestOptions {
    /// Try every `stride`-th storage write (1: every one).
    pub stride: u64,
    /// Also simulate a power loss (unsynced data lost), not only a kill.
    pub power_loss: bool,
    /// Journal options of every run.
    pub journal: JournalOptions,
    /// Re-runs allowed after a crash before a unit counts as stuck.
    pub max_reruns: u32,
}

impl Default for CrashTestOptions {
    fn default() -> Self {
        CrashTestOptions {
            stride: 1,
            power_loss: true,
            journal: JournalOptions::small(),
            max_reruns: 3,
        }
    }
}

/// What [`crash_test`] tried and found.
#[derive(Debug, Clone, Default)]
pub struct CrashReport {
    /// Storage writes of the reference run.
    pub writes: u64,
    /// Crash points tried (each with every crash mode).
    pub crash_points: u64,
    /// Crash-and-recover runs done.
    pub runs: u64,
    /// Units left visibly in doubt (a `never_repeat` effect) at some point.
    pub in_doubt_outcomes: u64,
    /// Every guarantee that did not hold, with the crash point and mode.
    pub violations: Vec<String>,
}

fn is_storage_error(e: &Error) -> bool {
    matches!(e, Error::Log(_))
}

/// Runs `workload` for every unit id under crash injection; see the module
/// documentation. `workload` must be deterministic given the journal (it
/// is re-run after each crash, as your agent would be).
pub fn crash_test<F>(units: &[&str], opts: CrashTestOptions, workload: F) -> CrashReport
where
    F: Fn(&Journal, &str, &Recorder) -> Result<(), Error>,
{
    let mut report = CrashReport::default();
    // Reference run: how many writes the whole workload makes.
    let sim = SimStorage::new();
    let before = sim.mutations();
    match Journal::open_with(Arc::new(sim.clone()), Path::new(DIR), opts.journal.clone()) {
        Ok(j) => {
            let rec = Recorder::default();
            for id in units {
                if let Err(e) = workload(&j, id, &rec) {
                    report
                        .violations
                        .push(format!("reference run (no crash): unit {id}: {e}"));
                }
            }
        }
        Err(e) => {
            report
                .violations
                .push(format!("cannot open a journal: {e}"));
            return report;
        }
    }
    report.writes = sim.mutations() - before;
    let stride = opts.stride.max(1);
    let mut k = 0;
    while k <= report.writes {
        report.crash_points += 1;
        let mut modes = vec![("kill", None)];
        if opts.power_loss {
            modes.push(("power loss", Some(CrashMode::DropUnsynced)));
        }
        for (mode_name, mode) in modes {
            report.runs += 1;
            let at = format!("crash at write {k} ({mode_name})");
            run_one(units, &opts, &workload, k, mode, &at, &mut report);
        }
        k += stride;
    }
    report
}

fn run_one<F>(
    units: &[&str],
    opts: &CrashTestOptions,
    workload: &F,
    k: u64,
    mode: Option<CrashMode>,
    at: &str,
    report: &mut CrashReport,
) where
    F: Fn(&Journal, &str, &Recorder) -> Result<(), Error>,
{
    let rec = Recorder::default();
    let sim = SimStorage::new();
    sim.halt_after(k);
    if let Ok(j) = Journal::open_with(Arc::new(sim.clone()), Path::new(DIR), opts.journal.clone()) {
        for id in units {
            match workload(&j, id, &rec) {
                Ok(()) => {}
                Err(e) if is_storage_error(&e) => break,
                Err(_) => {}
            }
        }
    }
    let image = match mode {
        None => sim.kill(),
        Some(m) => sim.crash(m),
    };
    rec.take_phase();
    let (before, _) = rec.snapshot();
    let j = match Journal::open_with(Arc::new(image), Path::new(DIR), opts.journal.clone()) {
        Ok(j) => j,
        Err(e) => {
            report
                .violations
                .push(format!("{at}: recovery failed: {e}"));
            return;
        }
    };
    // The workload's units and their child units (fan-outs: ids below
    // `<unit>/`) committed before the crash.
    let committed_before: Vec<String> = units.iter().flat_map(|id| j.committed_under(id)).collect();
    for id in units {
        let mut runs = 0;
        loop {
            if matches!(
                j.unit_state(id),
                Some(UnitState::Committed | UnitState::Aborted)
            ) {
                break;
            }
            runs += 1;
            match workload(&j, id, &rec) {
                Ok(()) => {}
                Err(Error::InDoubt { .. }) => {
                    report.in_doubt_outcomes += 1;
                    break;
                }
                Err(Error::UnitFinished { .. }) => break,
                Err(e) if runs > opts.max_reruns => {
                    report
                        .violations
                        .push(format!("{at}: unit {id} does not finish: {e}"));
                    break;
                }
                Err(_) => {}
            }
            if runs > opts.max_reruns {
                report.violations.push(format!(
                    "{at}: unit {id} still incomplete after {runs} re-runs"
                ));
                break;
            }
        }
    }
    let rerun = rec.take_phase();
    let (after, once) = rec.snapshot();
    for key in &rerun {
        for c in &committed_before {
            if key.starts_with(&format!("{c}/")) {
                report.violations.push(format!(
                    "{at}: unit {c} was committed before the crash, yet key {key} was delivered again"
                ));
            }
        }
    }
    for (key, n) in &after {
        let was = before.get(key).copied().unwrap_or(0);
        if once.contains(key) && *n > 1 {
            report
                .violations
                .push(format!("{at}: never_repeat key {key} delivered {n} times"));
        } else if *n > was.max(1) + 1 || (was == 0 && *n > 1) {
            report.violations.push(format!(
                "{at}: key {key} delivered {n} times ({was} before the crash): more than one re-send per crash"
            ));
        }
    }
}

//! What the library reports about itself: metrics through the [`metrics`]
//! facade and spans and events through [`tracing`].
//!
//! Both are facades: with no recorder / subscriber installed, every call site
//! costs one relaxed atomic load and records nothing, so the library always
//! reports and the application decides whether anything listens. With the
//! `http` feature, [`crate::runtime::Metrics`] installs a Prometheus recorder
//! and `GET /metrics` serves every metric below; an application can instead
//! install any `metrics` recorder (StatsD, OpenTelemetry, ...) itself.
//!
//! # Metrics
//!
//! | name | type | what |
//! | --- | --- | --- |
//! | `agentwal_fsync_seconds` | histogram | each `fdatasync` of a log segment (group commits and segment seals) |
//! | `agentwal_group_commit_records` | histogram | records made durable by one group-commit `fdatasync` |
//! | `agentwal_segment_rotations_total` | counter | segment rotations, `spare` label: `used` (a prepared spare was installed) / `none` (created inline) |
//! | `agentwal_appended_bytes_total` | counter | payload bytes appended to logs |
//! | `agentwal_appended_records_total` | counter | records appended to logs |
//! | `agentwal_compactions_total` | counter | journal compactions (snapshot written, old segments dropped) |
//! | `agentwal_compaction_seconds` | histogram | duration of each compaction |
//! | `agentwal_units_total` | counter | units that ended, `state` label: `committed` / `aborted` |
//! | `agentwal_units_begun_total` | counter | units begun, `resumed` label: `true` / `false` |
//! | `agentwal_units_incomplete` | gauge | incomplete units of the open journal (set at open, then per begin / end) |
//! | `agentwal_effects_in_doubt` | gauge | in-doubt effects replay found at the last open |
//! | `agentwal_effects_total` | counter | effects settled by running, `outcome` label: `ok` / `failed` / `replayed` |
//! | `agentwal_queue_pending` | gauge | work-queue items waiting to be claimed |
//! | `agentwal_queue_in_flight` | gauge | work-queue items claimed, not yet acked |
//! | `agentwal_queue_dead_letters` | gauge | work-queue items dead-lettered |
//! | `agentwal_queue_lease_expiries_total` | counter | claims taken over because their lease expired |
//! | `agentwal_shutting_down` | gauge | 1 once graceful shutdown began (rendered by `/metrics`) |
//! | `agentwal_units_in_progress` | gauge | units holding a shutdown guard (rendered by `/metrics`) |
//!
//! # Spans and events
//!
//! * span `unit` (`unit`, `kind`, `resumed`) from `Journal::begin` to commit,
//!   abort or drop; span `effect` (`unit`, `step`, `effect`, `key`,
//!   `policy`) around each effect, so every event inside carries the
//!   idempotency key an operator greps for in the receiver's logs;
//! * events (target `agentwal::recovery`) for recovery decisions: a torn tail
//!   cut, a lossy truncation, each incomplete unit and in-doubt effect found
//!   at open, and what a resume does with an in-doubt effect (retry with the
//!   same key, reconcile, stop for an operator);
//! * events (target `agentwal::shutdown`) for shutdown: the signal and the
//!   budget, a second signal's fast exit, the deadline watchdog cutting units.
//!
//! ```
//! // Tests (and applications) can capture the metrics with any recorder:
//! use metrics_util::debugging::DebuggingRecorder;
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! metrics::with_local_recorder(&recorder, || {
//!     let dir = tempfile::tempdir().unwrap();
//!     let log = agentwal::Log::open(dir.path(), agentwal::LogOptions::default()).unwrap();
//!     log.append(b"hello").unwrap();
//! });
//! let names: Vec<String> = snapshotter
//!     .snapshot()
//!     .into_vec()
//!     .into_iter()
//!     .map(|(key, ..)| key.key().name().to_string())
//!     .collect();
//! assert!(names.iter().any(|n| n == "agentwal_fsync_seconds"));
//! ```

use std::time::Duration;

/// Histogram of `fdatasync` durations, seconds.
pub const FSYNC_SECONDS: &str = "agentwal_fsync_seconds";
/// Histogram of records made durable by one group-commit sync.
pub const GROUP_COMMIT_RECORDS: &str = "agentwal_group_commit_records";
/// Counter of segment rotations, label `spare`: `used` (a prepared spare was
/// installed) or `none` (the segment was created inline).
pub const SEGMENT_ROTATIONS: &str = "agentwal_segment_rotations_total";
/// Counter of payload bytes appended.
pub const APPENDED_BYTES: &str = "agentwal_appended_bytes_total";
/// Counter of records appended.
pub const APPENDED_RECORDS: &str = "agentwal_appended_records_total";
/// Counter of compactions.
pub const COMPACTIONS: &str = "agentwal_compactions_total";
/// Histogram of compaction durations, seconds.
pub const COMPACTION_SECONDS: &str = "agentwal_compaction_seconds";
/// Counter of ended units, label `state`.
pub const UNITS: &str = "agentwal_units_total";
/// Counter of begun units, label `resumed`.
pub const UNITS_BEGUN: &str = "agentwal_units_begun_total";
/// Gauge of incomplete units.
pub const UNITS_INCOMPLETE: &str = "agentwal_units_incomplete";
/// Gauge of in-doubt effects found at open.
pub const EFFECTS_IN_DOUBT: &str = "agentwal_effects_in_doubt";
/// Counter of settled effects, label `outcome`.
pub const EFFECTS: &str = "agentwal_effects_total";
/// Gauge of pending queue items.
pub const QUEUE_PENDING: &str = "agentwal_queue_pending";
/// Gauge of in-flight queue items.
pub const QUEUE_IN_FLIGHT: &str = "agentwal_queue_in_flight";
/// Gauge of dead-lettered queue items.
pub const QUEUE_DEAD_LETTERS: &str = "agentwal_queue_dead_letters";
/// Counter of claims taken over after a lease expired.
pub const QUEUE_LEASE_EXPIRIES: &str = "agentwal_queue_lease_expiries_total";

/// Registers the help text of every metric with the installed recorder
/// (shown as `# HELP` by the Prometheus exporter). Called by
/// [`crate::runtime::Metrics::new`]; call it after installing a recorder of
/// your own.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        FSYNC_SECONDS,
        Unit::Seconds,
        "Duration of each fdatasync of a log segment."
    );
    describe_histogram!(
        GROUP_COMMIT_RECORDS,
        Unit::Count,
        "Records made durable by one group-commit fdatasync."
    );
    describe_counter!(
        SEGMENT_ROTATIONS,
        Unit::Count,
        "Segment rotations, by whether a prepared spare segment was installed."
    );
    describe_counter!(
        APPENDED_BYTES,
        Unit::Bytes,
        "Payload bytes appended to the logs."
    );
    describe_counter!(
        APPENDED_RECORDS,
        Unit::Count,
        "Records appended to the logs."
    );
    describe_counter!(COMPACTIONS, Unit::Count, "Journal compactions.");
    describe_histogram!(
        COMPACTION_SECONDS,
        Unit::Seconds,
        "Duration of each journal compaction."
    );
    describe_counter!(
        UNITS,
        Unit::Count,
        "Units that ended, by state (committed, aborted)."
    );
    describe_counter!(
        UNITS_BEGUN,
        Unit::Count,
        "Units begun, by whether they resumed an incomplete unit."
    );
    describe_gauge!(
        UNITS_INCOMPLETE,
        Unit::Count,
        "Incomplete units of the open journal."
    );
    describe_gauge!(
        EFFECTS_IN_DOUBT,
        Unit::Count,
        "In-doubt effects (intent without outcome) found by replay at open."
    );
    describe_counter!(
        EFFECTS,
        Unit::Count,
        "Effects settled, by outcome (ok, failed, replayed)."
    );
    describe_gauge!(
        QUEUE_PENDING,
        Unit::Count,
        "Work-queue items waiting to be claimed."
    );
    describe_gauge!(
        QUEUE_IN_FLIGHT,
        Unit::Count,
        "Work-queue items claimed and not yet acked."
    );
    describe_gauge!(
        QUEUE_DEAD_LETTERS,
        Unit::Count,
        "Work-queue items dead-lettered."
    );
    describe_counter!(
        QUEUE_LEASE_EXPIRIES,
        Unit::Count,
        "Work-queue claims taken over after their lease expired."
    );
}

/// One `fdatasync` of a log segment.
pub(crate) fn fsync(took: Duration) {
    metrics::histogram!(FSYNC_SECONDS).record(took.as_secs_f64());
}

/// One segment rotation; `spare`: a prepared spare was installed (else the
/// segment was created inline).
pub(crate) fn rotated(spare: bool) {
    metrics::counter!(SEGMENT_ROTATIONS, "spare" => if spare { "used" } else { "none" })
        .increment(1);
}

/// One group commit made `records` records durable.
pub(crate) fn group_commit(records: u64) {
    metrics::histogram!(GROUP_COMMIT_RECORDS).record(records as f64);
}

/// Records appended to a log.
pub(crate) fn appended(records: usize, bytes: u64) {
    metrics::counter!(APPENDED_RECORDS).increment(records as u64);
    metrics::counter!(APPENDED_BYTES).increment(bytes);
}

/// One compaction finished: a snapshot covering `lsn`, `bytes` long.
pub(crate) fn compacted(took: Duration, lsn: u64, bytes: u64) {
    metrics::counter!(COMPACTIONS).increment(1);
    metrics::histogram!(COMPACTION_SECONDS).record(took.as_secs_f64());
    tracing::debug!(
        target: "agentwal::compaction",
        snapshot_lsn = lsn,
        snapshot_bytes = bytes,
        seconds = took.as_secs_f64(),
        "journal compacted"
    );
}

/// What replay found at open: gauges, and one event per incomplete unit
/// and per in-doubt effect (the recovery decisions an operator reviews).
pub(crate) fn replayed(r: &crate::journal::ReplayReport) {
    let in_doubt: usize = r.incomplete.iter().map(|u| u.effects_in_doubt()).sum();
    journal_gauges(r.incomplete.len(), Some(in_doubt));
    tracing::info!(
        target: "agentwal::recovery",
        snapshot_lsn = r.snapshot_lsn,
        records_replayed = r.records_replayed,
        committed = r.committed,
        aborted = r.aborted,
        incomplete = r.incomplete.len(),
        in_doubt_effects = in_doubt,
        "journal replayed"
    );
    for u in &r.incomplete {
        tracing::info!(
            target: "agentwal::recovery",
            unit = %u.id,
            kind = %u.kind,
            effects_done = u.effects_done(),
            effects_in_doubt = u.effects_in_doubt(),
            "incomplete unit found: a resume continues it"
        );
        for e in u
            .effects
            .iter()
            .filter(|e| e.state == crate::journal::EffectState::InDoubt)
        {
            tracing::warn!(
                target: "agentwal::recovery",
                unit = %u.id,
                step = e.seq,
                effect = %e.name,
                key = %e.key,
                policy = %e.policy,
                intent_lsn = e.intent_lsn,
                "in-doubt effect found: intent recorded, no outcome; its policy decides on resume"
            );
        }
    }
}

/// A unit began (`resumed`: it continues an incomplete one).
pub(crate) fn unit_begun(resumed: bool) {
    metrics::counter!(UNITS_BEGUN, "resumed" => if resumed { "true" } else { "false" })
        .increment(1);
}

/// A unit ended; `state` is `committed` or `aborted`.
pub(crate) fn unit_ended(state: &'static str) {
    metrics::counter!(UNITS, "state" => state).increment(1);
    metrics::gauge!(UNITS_INCOMPLETE).decrement(1.0);
}

/// A new (not resumed) unit is incomplete until it ends.
pub(crate) fn unit_started() {
    metrics::gauge!(UNITS_INCOMPLETE).increment(1.0);
}

/// The journal's incomplete units and in-doubt effects.
fn journal_gauges(incomplete: usize, in_doubt: Option<usize>) {
    metrics::gauge!(UNITS_INCOMPLETE).set(incomplete as f64);
    if let Some(n) = in_doubt {
        metrics::gauge!(EFFECTS_IN_DOUBT).set(n as f64);
    }
}

/// An effect settled: `ok`, `failed` or `replayed` (recorded result returned).
pub(crate) fn effect(outcome: &'static str) {
    metrics::counter!(EFFECTS, "outcome" => outcome).increment(1);
}

/// The work queue's gauges.
pub(crate) fn queue_gauges(pending: usize, in_flight: usize, dead: usize) {
    metrics::gauge!(QUEUE_PENDING).set(pending as f64);
    metrics::gauge!(QUEUE_IN_FLIGHT).set(in_flight as f64);
    metrics::gauge!(QUEUE_DEAD_LETTERS).set(dead as f64);
}

/// A claim took over an item whose lease expired.
pub(crate) fn lease_expired() {
    metrics::counter!(QUEUE_LEASE_EXPIRIES).increment(1);
}

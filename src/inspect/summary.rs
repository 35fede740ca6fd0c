//! `summary`: one report of the whole journal: log shape, units by state,
//! in-doubt effects, idempotency keys, torn tail and corruption.

use serde::Serialize;

use super::open::{display, CorruptionInfo, Inspection, TornTailInfo};
use super::queue::QueueCounts;
use super::semantics;
use crate::log::Lsn;

/// Units by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UnitCounts {
    /// Units that ended with a commit (compacted ones included).
    pub committed: u64,
    /// Units that ended with an abort (compacted ones included).
    pub aborted: u64,
    /// Units with neither: interrupted work that a resume will continue.
    pub incomplete: u64,
}

/// Finished units folded into the snapshot by compaction: they are counted in
/// [`UnitCounts`] but no longer listed by `units` (their records are gone).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CompactedUnits {
    /// Committed units known only by their count.
    pub committed: u64,
    /// Aborted units known only by their count.
    pub aborted: u64,
}

impl CompactedUnits {
    /// Both together.
    pub fn total(&self) -> u64 {
        self.committed + self.aborted
    }
}

/// The `summary` report. Field names are a fixed interface (`--json`); new
/// fields are only ever added.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The journal directory.
    pub dir: String,
    /// Segment files in the valid log.
    pub segments: u64,
    /// Valid records in the segments (records folded into the snapshot are
    /// not counted).
    pub records: u64,
    /// Bytes of valid log data (segment headers and records).
    pub bytes: u64,
    /// Bytes the segment files occupy (preallocated space included).
    pub disk_bytes: u64,
    /// LSN of the first record held, if any.
    pub first_lsn: Option<Lsn>,
    /// LSN of the last valid record, if any.
    pub last_lsn: Option<Lsn>,
    /// LSN covered by the snapshot, if there is one.
    pub snapshot_lsn: Option<Lsn>,
    /// Units by state.
    pub units: UnitCounts,
    /// Of `units`, the finished ones compacted into the snapshot: counted
    /// above, not listed by `units` or `show`.
    pub units_compacted: CompactedUnits,
    /// Effects whose intent was recorded without an outcome.
    pub in_doubt_effects: u64,
    /// Idempotency keys known to the journal.
    pub idempotency_keys: u64,
    /// Bytes of an unacknowledged torn tail (0 when none).
    pub torn_tail_bytes: u64,
    /// Where the torn tail is, if any.
    pub torn_tail: Option<TornTailInfo>,
    /// The first corruption found, if any.
    pub corruption: Option<CorruptionInfo>,
    /// Why the journal's records could not be interpreted, if they could not
    /// (the log-level fields are still valid).
    pub journal_error: Option<String>,
    /// Files left by earlier repairs (saved cuts, set-aside segments).
    pub leftovers: Vec<String>,
    /// Work-queue items dead-lettered (failed `max_attempts` times): they
    /// wait for an operator (`wal-inspect queue --redrive` / `--purge-dead`).
    /// 0 when the journal has no queue.
    pub dead_letters: u64,
    /// The work queue's items by state, when the journal has a queue.
    pub queue: Option<QueueCounts>,
}

/// Builds the summary of an opened journal.
pub fn summary(insp: &Inspection) -> Summary {
    let scan = insp.reader().scan();
    let f = insp.findings();
    let sem = semantics::stats(insp);
    // The queue's own log, read-only like the journal's. A missing or
    // unreadable queue leaves the journal's summary as it is.
    let queue = super::queue::queue(insp.storage().clone(), insp.dir())
        .ok()
        .filter(|q| q.present)
        .map(|q| q.counts);
    Summary {
        dir: display(insp.dir()),
        segments: scan.segments.len() as u64,
        records: scan.records(),
        bytes: scan.segments.iter().map(|s| s.end_offset).sum(),
        disk_bytes: scan.segments.iter().map(|s| s.file_len).sum(),
        first_lsn: scan.first_lsn(),
        last_lsn: scan.last_lsn(),
        snapshot_lsn: f.snapshot.as_ref().map(|s| s.lsn),
        units: sem.units,
        units_compacted: sem.compacted,
        in_doubt_effects: sem.in_doubt_effects,
        idempotency_keys: sem.idempotency_keys,
        torn_tail_bytes: f.torn_tail.as_ref().map_or(0, |t| t.bytes),
        torn_tail: f.torn_tail.clone(),
        corruption: f.corruption.first().cloned(),
        journal_error: sem.error,
        leftovers: f.leftovers.clone(),
        dead_letters: queue.map_or(0, |q| q.dead_lettered),
        queue,
    }
}

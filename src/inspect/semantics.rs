//! The bridge to the journal layer: unit, effect and key statistics, and the
//! decoding of record payloads for `dump`.

use super::open::Inspection;
use super::summary::UnitCounts;
use crate::journal::{JournalRecord, JournalView, UnitState};

/// Journal-level statistics of an opened journal.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stats {
    pub units: UnitCounts,
    /// Of `units`, those folded into the snapshot (counted, not listed).
    pub compacted: super::summary::CompactedUnits,
    pub in_doubt_effects: u64,
    pub idempotency_keys: u64,
    pub error: Option<String>,
}

/// Unit, effect and key counts. Never fails: a journal whose records cannot
/// be interpreted yields zero counts and the reason in `error`.
pub(crate) fn stats(insp: &Inspection) -> Stats {
    match super::units::load_view(insp) {
        Ok(view) => stats_of(&view),
        Err(e) => Stats {
            error: Some(e.to_string()),
            ..Stats::default()
        },
    }
}

/// Counts of a loaded view (compacted units included).
pub(crate) fn stats_of(view: &JournalView) -> Stats {
    let count = |s: UnitState| view.units.iter().filter(|u| u.state == s).count() as u64;
    Stats {
        units: UnitCounts {
            committed: view.compacted_committed + count(UnitState::Committed),
            aborted: view.compacted_aborted + count(UnitState::Aborted),
            incomplete: count(UnitState::Incomplete),
        },
        compacted: super::summary::CompactedUnits {
            committed: view.compacted_committed,
            aborted: view.compacted_aborted,
        },
        in_doubt_effects: view.units.iter().map(|u| u.effects_in_doubt() as u64).sum(),
        idempotency_keys: view.keys.len() as u64,
        error: None,
    }
}

/// Decodes a record payload into JSON when the journal layer understands it.
pub(crate) fn decode_record(kind: u8, payload: &[u8]) -> Option<serde_json::Value> {
    if !JournalRecord::is_journal_kind(kind) {
        return None;
    }
    let rec = JournalRecord::decode(kind, payload).ok()?;
    let mut v = serde_json::to_value(&rec).ok()?;
    // `at` and `age` next to `at_ms`, for people (nothing renamed).
    super::time::annotate(&mut v, super::time::now_ms());
    Some(v)
}

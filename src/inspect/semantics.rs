//! The bridge to the journal layer: unit, effect and key statistics, and the
//! decoding of record payloads for `dump`.

use super::open::Inspection;
use super::summary::UnitCounts;

/// Journal-level statistics of an opened journal.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stats {
    pub units: UnitCounts,
    pub in_doubt_effects: u64,
    pub idempotency_keys: u64,
    pub error: Option<String>,
}

/// Unit, effect and key counts. Never fails: a journal whose records cannot
/// be interpreted yields zero counts and the reason in `error`.
pub(crate) fn stats(_insp: &Inspection) -> Stats {
    Stats {
        error: Some("this build has no journal layer to interpret records".into()),
        ..Stats::default()
    }
}

/// Decodes a record payload into JSON when the journal layer understands it.
pub(crate) fn decode_record(_kind: u8, _payload: &[u8]) -> Option<serde_json::Value> {
    None
}

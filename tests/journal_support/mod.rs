//! Shared by the journal tests that run on the power-loss simulator
//! (`tests/journal_effects.rs`, `tests/journal_semantics.rs`): small
//! journal options, opening, and writing raw journal records.
#![allow(dead_code)]

use std::sync::Arc;

use agentwal::journal::{Journal, JournalOptions, JournalRecord, PolicyKind, Retention};
use agentwal::log::{Durability, Log, LogOptions, SimStorage};
use serde_json::json;

/// The journal directory inside the simulator.
pub const DIR: &str = "/j";

/// Small segments and payload limits, with `retention`.
pub fn opts(retention: Retention) -> JournalOptions {
    JournalOptions {
        log: LogOptions {
            segment_size: 64 << 10,
            max_record_bytes: 16 << 10,
            ..LogOptions::default()
        },
        max_payload_bytes: 4 << 10,
        retention,
        ..JournalOptions::default()
    }
}

/// Opens the journal in `storage` with `opts`.
pub fn open_sim(storage: &SimStorage, opts: JournalOptions) -> Journal {
    Journal::open_with(Arc::new(storage.clone()), DIR, opts).unwrap()
}

/// Appends `recs` durably to the log below the journal, as a writer that
/// stopped after them would have left it.
pub fn write_records(storage: &SimStorage, recs: &[JournalRecord]) {
    let log = Log::open_with(
        Arc::new(storage.clone()),
        DIR,
        opts(Retention::default()).log,
    )
    .unwrap();
    for r in recs {
        log.append_with(r.kind(), &r.encode(), Durability::Durable)
            .unwrap();
    }
    log.close().unwrap();
}

/// The begin record of unit `unit` (kind `t`, null payload).
pub fn begin_rec(unit: &str) -> JournalRecord {
    JournalRecord::UnitBegin {
        unit: unit.into(),
        kind: "t".into(),
        payload: json!(null),
        at_ms: 0,
    }
}

/// The intent record of step `seq` of `unit` (not compensable).
pub fn intent_rec(
    unit: &str,
    seq: u32,
    name: &str,
    key: &str,
    policy: PolicyKind,
) -> JournalRecord {
    JournalRecord::EffectIntent {
        unit: unit.into(),
        seq,
        name: name.into(),
        key: key.into(),
        policy,
        compensable: false,
    }
}

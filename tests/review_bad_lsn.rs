//! Review findings: crafted files whose LSN fields sit at the end of the
//! `u64` range (valid checksums) must give a typed error or a clean open,
//! never an arithmetic-overflow panic.

use std::path::Path;
use std::sync::Arc;

use agentwal::journal::{Journal, JournalOptions};
use agentwal::log::testing::{encode_header, segment_name};
use agentwal::log::testing::{encode_record, encode_snapshot, Codec};
use agentwal::log::{Log, LogOptions, LogReader, SimStorage};

const DIR: &str = "/review/badlsn";

fn opts() -> LogOptions {
    LogOptions {
        segment_size: 4096,
        max_record_bytes: 1024,
        ..LogOptions::default()
    }
}

fn snapshot_at(lsn: u64) -> SimStorage {
    let sim = SimStorage::new();
    sim.put(
        &Path::new(DIR).join(format!("snap-{lsn:020}.snap")),
        &encode_snapshot(lsn, b"{}"),
    );
    sim
}

fn segment_at(first: u64, records: u64) -> SimStorage {
    let sim = SimStorage::new();
    let mut bytes = encode_header(first, 0xC0FFEE).to_vec();
    for i in 0..records {
        encode_record(
            &mut bytes,
            Codec::V2 { salt: 0xC0FFEE },
            first.wrapping_add(i),
            0,
            0,
            b"x",
        );
    }
    bytes.resize(4096, 0);
    sim.put(&Path::new(DIR).join(segment_name(first)), &bytes);
    sim
}

fn no_panic<T, E: std::fmt::Debug>(what: &str, f: impl FnOnce() -> Result<T, E>) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    assert!(r.is_ok(), "{what} panicked on crafted input");
}

#[test]
fn snapshot_at_the_end_of_the_lsn_range_is_not_a_panic() {
    for lsn in [u64::MAX, u64::MAX - 1] {
        let sim = snapshot_at(lsn);
        no_panic("Log::open", || {
            Log::open_with(Arc::new(sim.clone()), DIR, opts())
        });
        no_panic("LogReader::open", || {
            LogReader::open_with(Arc::new(sim.clone()), DIR)
        });
        no_panic("Journal::open", || {
            Journal::open_with(
                Arc::new(sim.clone()),
                DIR,
                JournalOptions {
                    log: LogOptions {
                        segment_size: 1 << 20,
                        max_record_bytes: 256 << 10,
                        ..LogOptions::default()
                    },
                    ..JournalOptions::small()
                },
            )
        });
    }
}

#[test]
fn segment_at_the_end_of_the_lsn_range_is_not_a_panic() {
    for (first, n) in [
        (u64::MAX, 1),
        (u64::MAX - 1, 2),
        (u64::MAX, 0),
        (0, 0),
        (0, 1),
    ] {
        let sim = segment_at(first, n);
        no_panic("Log::open", || {
            Log::open_with(Arc::new(sim.clone()), DIR, opts())
        });
        no_panic("LogReader::open", || {
            LogReader::open_with(Arc::new(sim.clone()), DIR)
        });
        let sim = segment_at(first, n);
        if let Ok(log) = Log::open_with(Arc::new(sim.clone()), DIR, opts()) {
            no_panic("append", || log.append(b"y"));
        }
    }
}

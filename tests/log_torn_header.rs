//! Guarantee: a torn 4 KiB block that takes the active segment's header
//! with it never makes recovery drop records that were acknowledged durable
//! without saying so: after such damage the log either reopens with every
//! acknowledged record or refuses to open (corruption), never "a torn
//! segment creation" that silently removes them.
//!
//! The way there: records acknowledged by one group commit that no later
//! record vouches for (no record carries a `synced_lsn` covering them), a
//! process kill, then a power loss while the reopening owner rewrites the
//! unproven bytes (header included) in a device that tears whole 4 KiB
//! blocks.

use std::sync::Arc;

use agentwal::log::storage::sim::CrashMode;
use agentwal::log::{Durability, Log, LogOptions, SimStorage};

const DIR: &str = "/sim/torn-header/journal";

fn opts() -> LogOptions {
    LogOptions {
        segment_size: 64 << 10,
        max_record_bytes: 8 << 10,
        ..LogOptions::default()
    }
}

fn payload(i: usize) -> Vec<u8> {
    (0..1000).map(|j| (i * 31 + j) as u8 | 1).collect()
}

#[test]
fn a_torn_header_during_recovery_never_drops_acknowledged_records_quietly() {
    // 20 records of 1 KB, acknowledged by one sync, nothing after them.
    let sim = SimStorage::new();
    {
        let log = Log::open_with(Arc::new(sim.clone()), DIR, opts()).unwrap();
        let payloads: Vec<Vec<u8>> = (0..20).map(payload).collect();
        let records: Vec<(u8, &[u8])> = payloads.iter().map(|p| (1u8, p.as_slice())).collect();
        let range = log.append_batch(&records, Durability::Durable).unwrap();
        assert_eq!(*range.end(), 20);
    }
    // A process kill: the page cache survives.
    let killed = sim.crash(CrashMode::KeepAll);
    let (mut cuts, mut interrupted) = (0, 0);
    for k in 1..40u64 {
        for seed in 0..40u64 {
            let image = killed.crash(CrashMode::KeepAll);
            image.halt_after(k);
            let reopened = Log::open_with(Arc::new(image.clone()), DIR, opts());
            let finished = reopened.is_ok();
            interrupted += u32::from(!finished);
            drop(reopened);
            let after = image.crash(CrashMode::TornSectors(seed));
            match Log::open_with(Arc::new(after), DIR, opts()) {
                Ok(log) => {
                    let got: Vec<Vec<u8>> = log
                        .read_from(1)
                        .unwrap()
                        .map(|r| r.unwrap().payload().to_vec())
                        .collect();
                    assert!(
                        got.len() >= 20,
                        "cut after {k} ops (recovery finished: {finished}), TornSectors({seed}): \
                         reopened with {} of 20 acknowledged records; report {:?}",
                        got.len(),
                        log.open_report()
                    );
                    for (i, p) in got.iter().take(20).enumerate() {
                        assert_eq!(p, &payload(i), "record {}", i + 1);
                    }
                }
                Err(_) => cuts += 1,
            }
            if finished {
                break;
            }
        }
    }
    assert!(interrupted > 0, "no cut fell inside the recovery's rewrite");
    eprintln!("{interrupted} interrupted recoveries, {cuts} images refused to open (loud)");
}

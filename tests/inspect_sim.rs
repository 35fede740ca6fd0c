//! The inspect library on simulated power losses (SimStorage): a crash
//! image is never reported as corruption, `repair` (dry run first) brings it
//! back to a clean log that holds every acknowledged record, and the
//! read-only commands never write.

use std::path::Path;
use std::sync::Arc;

use agentwal::inspect::repair::{repair_with, RepairAction, RepairOptions};
use agentwal::inspect::summary::summary;
use agentwal::inspect::verify::verify;
use agentwal::inspect::{Inspection, OpenOptions};
use agentwal::log::storage::sim::CrashMode;
use agentwal::log::{Durability, Log, LogOptions, LogReader, SimStorage, Storage};

fn opts() -> LogOptions {
    LogOptions {
        segment_size: 4096,
        max_record_bytes: 1024,
        ..LogOptions::default()
    }
}

fn payload(i: u64) -> Vec<u8> {
    format!("rec-{i}-{}", "z".repeat((i * 37 % 300) as usize)).into_bytes()
}

/// Appends until the storage halts; returns the highest LSN acknowledged durable.
fn workload(sim: &SimStorage, dir: &Path, seed: u64) -> u64 {
    let log = Log::open_with(Arc::new(sim.clone()), dir, opts()).unwrap();
    sim.halt_after(40 + seed * 7 % 120);
    let mut acked = 0;
    for i in 1..400u64 {
        let d = if i.is_multiple_of(3) {
            Durability::Buffered
        } else {
            Durability::Durable
        };
        match log.append_with(0, &payload(i), d) {
            Ok(lsn) if d == Durability::Durable => acked = lsn,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    acked
}

fn image_bytes(sim: &SimStorage, dir: &Path) -> Vec<(std::path::PathBuf, Option<Vec<u8>>)> {
    let mut files = sim.list_dir(dir).unwrap();
    files.sort();
    files
        .into_iter()
        .map(|p| (p.clone(), sim.read(&p)))
        .collect()
}

#[test]
fn crash_images_are_never_corruption_and_repair_keeps_every_acknowledged_record() {
    let dir = Path::new("/j");
    let mut torn_seen = 0;
    for seed in 0..60u64 {
        let sim = SimStorage::new();
        let acked = workload(&sim, dir, seed);
        let image = sim.crash(CrashMode::Random(seed));
        let storage: Arc<dyn Storage> = Arc::new(image.clone());

        let before = image_bytes(&image, dir);
        let insp = Inspection::open_with(storage.clone(), dir, OpenOptions::default()).unwrap();
        let s = summary(&insp);
        assert!(
            s.corruption.is_none(),
            "seed {seed}: a crash is not corruption: {:?}",
            s.corruption
        );
        assert!(
            s.last_lsn.unwrap_or(0) >= acked,
            "seed {seed}: acknowledged LSN {acked} missing"
        );
        let v = verify(&insp).unwrap();
        assert!(v.ok && v.exit_code() == 0, "seed {seed}");
        if s.torn_tail_bytes > 0 {
            torn_seen += 1;
        }
        drop(insp);

        let dry = repair_with(
            storage.clone(),
            dir,
            RepairOptions {
                dry_run: true,
                lossy: false,
            },
        )
        .unwrap();
        assert_ne!(dry.action, RepairAction::Refused, "seed {seed}");
        assert_eq!(
            image_bytes(&image, dir),
            before,
            "seed {seed}: read-only commands wrote"
        );

        let r = repair_with(storage.clone(), dir, RepairOptions::default()).unwrap();
        assert_eq!(
            r.action, dry.action,
            "seed {seed}: the dry run predicted the repair"
        );
        assert_eq!(r.verified_after, Some(true), "seed {seed}: {r:?}");
        if matches!(
            r.action,
            RepairAction::CutTornTail | RepairAction::RemovedTornSegment
        ) {
            let saved = r.cut_saved_to.as_deref().expect("cut bytes saved");
            assert!(
                image.read(Path::new(saved)).is_some(),
                "seed {seed}: {saved} missing"
            );
        }
        let reader = LogReader::open_with(storage.clone(), dir).unwrap();
        let mut n = 0;
        for rec in reader.iter_from(1) {
            let rec = rec.unwrap();
            assert_eq!(
                rec.payload(),
                &payload(rec.lsn)[..],
                "seed {seed}: LSN {}",
                rec.lsn
            );
            n = rec.lsn;
        }
        assert!(
            n >= acked,
            "seed {seed}: repair lost acknowledged LSN {acked} (kept up to {n})"
        );
        // And the owner can open and append again.
        let log = Log::open_with(storage, dir, opts()).unwrap();
        assert!(log.open_report().torn_tail.is_none(), "seed {seed}");
        log.append(b"after repair").unwrap();
    }
    assert!(torn_seen > 0, "the seeds should produce some torn tails");
}

#[test]
fn flipped_bit_anywhere_in_the_log_is_found_by_verify() {
    let dir = Path::new("/j");
    let sim = SimStorage::new();
    {
        let log = Log::open_with(Arc::new(sim.clone()), dir, opts()).unwrap();
        for i in 1..=60 {
            log.append(&payload(i)).unwrap();
        }
        log.close().unwrap();
    }
    let storage: Arc<dyn Storage> = Arc::new(sim.clone());
    let clean = Inspection::open_with(storage.clone(), dir, OpenOptions::default()).unwrap();
    let segs: Vec<_> = clean.reader().scan().segments.clone();
    drop(clean);
    // Flip a byte inside each record of every segment (one at a time).
    let mut checked = 0;
    for seg in &segs {
        let reader = LogReader::open_with(storage.clone(), dir).unwrap();
        let recs: Vec<(u64, u64, u64)> = reader
            .iter_from(seg.first_lsn)
            .map(|r| r.unwrap())
            .take_while(|r| r.lsn < seg.first_lsn + seg.records)
            .map(|r| (r.lsn, r.offset(), r.payload().len() as u64))
            .collect();
        for &(lsn, off, len) in recs.iter().step_by(3) {
            let at = off + 28 + len / 2;
            let orig = sim.read(&seg.path).unwrap()[at as usize];
            sim.poke(&seg.path, at, &[orig ^ 0x01]).unwrap();
            let insp = Inspection::open_with(storage.clone(), dir, OpenOptions::default()).unwrap();
            let v = verify(&insp).unwrap();
            let is_last_record =
                lsn == segs.last().unwrap().first_lsn + segs.last().unwrap().records - 1;
            if is_last_record {
                // Nothing after it proves it was acknowledged: a torn tail.
                assert!(v.torn_tail.is_some() || !v.ok, "LSN {lsn}");
            } else {
                assert!(!v.ok, "flip in LSN {lsn} undetected");
                let c = v.corruption.unwrap();
                assert_eq!(
                    (c.segment.as_str(), c.offset),
                    (seg.path.to_str().unwrap(), off),
                    "LSN {lsn}"
                );
            }
            sim.poke(&seg.path, at, &[orig]).unwrap();
            checked += 1;
        }
    }
    assert!(checked >= 20);
}

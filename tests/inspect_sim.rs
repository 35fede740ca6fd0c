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
use agentwal::log::storage::FileBytes;
use agentwal::log::testing::{ForwardingStorage, StorageHooks};
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

#[test]
fn progress_reports_every_segment_and_ends_at_the_total() {
    let dir = Path::new("/j");
    let sim = SimStorage::new();
    {
        let log = Log::open_with(Arc::new(sim.clone()), dir, opts()).unwrap();
        for i in 1..=80 {
            log.append(&payload(i)).unwrap();
        }
        log.close().unwrap();
    }
    let seg_bytes: Vec<u64> = {
        let mut v: Vec<_> = sim
            .list_dir(dir)
            .unwrap()
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "wal"))
            .collect();
        v.sort();
        v.iter()
            .map(|p| sim.read(p).unwrap().len() as u64)
            .collect()
    };
    assert!(seg_bytes.len() >= 3, "{seg_bytes:?}");
    let total: u64 = seg_bytes.iter().sum();
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let c = calls.clone();
    let progress: agentwal::inspect::open::ProgressFn = Arc::new(move |done, total| {
        c.lock().unwrap().push((done, total));
    });
    let insp = Inspection::open_with(
        Arc::new(sim.clone()),
        dir,
        OpenOptions {
            progress: Some(progress),
        },
    )
    .unwrap();
    assert_eq!(insp.reader().scan().records(), 80);
    let calls = calls.lock().unwrap().clone();
    assert!(
        calls.len() > seg_bytes.len(),
        "one call per segment and a final one: {calls:?}"
    );
    assert!(calls.iter().all(|&(_, t)| t == total), "{calls:?}");
    assert!(
        calls.windows(2).all(|w| w[0].0 <= w[1].0),
        "monotonic: {calls:?}"
    );
    assert_eq!(calls.last(), Some(&(total, total)));
    // Before the last segment is scanned, everything before it is counted.
    let before_last: u64 = seg_bytes[..seg_bytes.len() - 1].iter().sum();
    assert!(calls.contains(&(before_last, total)), "{calls:?}");
}

/// The first read of one file returns a doctored image: what a reader
/// racing with the writer could see for an instant.
#[derive(Debug)]
struct RacyOnce {
    path: std::path::PathBuf,
    first: std::sync::Mutex<Option<Vec<u8>>>,
}

impl StorageHooks for RacyOnce {
    fn map(&self, inner: &dyn Storage, p: &Path) -> std::io::Result<FileBytes> {
        if p == self.path {
            if let Some(fake) = self.first.lock().unwrap().take() {
                return Ok(FileBytes::new(fake));
            }
        }
        inner.map(p)
    }
    fn read_range(
        &self,
        inner: &dyn Storage,
        p: &Path,
        offset: u64,
        max: u64,
    ) -> std::io::Result<FileBytes> {
        if p == self.path {
            if let Some(mut fake) = self.first.lock().unwrap().take() {
                fake.drain(..(offset as usize).min(fake.len()));
                fake.truncate(max.min(fake.len() as u64) as usize);
                return Ok(FileBytes::new(fake));
            }
        }
        inner.read_range(p, offset, max)
    }
}

#[test]
fn a_scan_racing_with_the_writer_is_not_reported_as_corruption() {
    let dir = Path::new("/j");
    let sim = SimStorage::new();
    {
        let log = Log::open_with(Arc::new(sim.clone()), dir, opts()).unwrap();
        for i in 1..=10 {
            log.append(&payload(i)).unwrap();
        }
        log.close().unwrap();
    }
    let reader = LogReader::open_with(Arc::new(sim.clone()), dir).unwrap();
    let seg = reader.scan().segments.last().unwrap().clone();
    let last = reader.scan().last_lsn().unwrap();
    let victim = reader.iter_from(last - 1).next().unwrap().unwrap();
    assert_eq!(victim.lsn, last - 1);
    // Record `last - 1` not yet visible, `last` (which proves it durable) already is.
    let mut fake = sim.read(&seg.path).unwrap();
    let start = victim.offset() as usize;
    let len = 28 + victim.payload().len();
    fake[start..start + len].fill(0);

    let racy = || -> Arc<dyn Storage> {
        Arc::new(ForwardingStorage::new(
            sim.clone(),
            RacyOnce {
                path: seg.path.clone(),
                first: std::sync::Mutex::new(Some(fake.clone())),
            },
        ))
    };
    // One scan of that image alone would call it corruption...
    let once = agentwal::log::testing::scan_dir(&racy(), dir, None).unwrap();
    assert!(
        once.corruption.is_some(),
        "the doctored image must look corrupt"
    );
    // ...the inspector scans again and sees the real state.
    let insp = Inspection::open_with(racy(), dir, OpenOptions::default()).unwrap();
    assert!(
        insp.findings().corruption.is_empty(),
        "{:?}",
        insp.findings()
    );
    assert_eq!(summary(&insp).last_lsn, Some(last));

    // Damage that is really there is still reported (two scans agree).
    sim.poke(&seg.path, victim.offset(), &[0u8; 28]).unwrap();
    let insp = Inspection::open_with(Arc::new(sim.clone()), dir, OpenOptions::default()).unwrap();
    let c = &insp.findings().corruption[0];
    assert_eq!(
        (c.segment.as_str(), c.offset),
        (seg.path.to_str().unwrap(), victim.offset())
    );
}

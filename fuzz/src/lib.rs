//! Fuzz entry points for the layers above the log: journal replay and the
//! `wal-inspect` library. Used by the cargo-fuzz targets and, through
//! `#[path]`, by `tests/crash_fuzz_corpus.rs`, so CI replays the corpus with
//! exactly this code on stable Rust. (The log-level entry points live in
//! `agentwal::log::fuzzing`; these cannot, as the log must not depend on the
//! layers above it.)
//!
//! Every function panics only when a guarantee is broken; on any input it
//! returns in time bounded by the input size.

use std::path::Path;
use std::sync::Arc;

use agentwal::inspect::dump::{dump, DumpOptions};
use agentwal::inspect::{self, Inspection, OpenOptions};
use agentwal::journal::{AutoCompact, Effect, Journal, JournalOptions, JournalView, Retention};
use agentwal::log::fuzzing::{build_dir, dir_image, FUZZ_DIR};
use agentwal::log::storage::sim::CrashMode;
use agentwal::log::{Log, LogOptions, SimStorage};

/// Most records a `journal_replay` input may describe.
pub const MAX_RECORDS: usize = 4096;

/// Input of [`journal_replay`]: a flags byte (bit 0: a snapshot follows;
/// bits 1..: its LSN), then, if flagged, a u16 LE length and the snapshot
/// payload, then records as `kind`, u16 LE length, payload (LSNs follow the
/// snapshot).
pub fn encode_replay_input(snapshot: Option<(u8, &[u8])>, records: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    match snapshot {
        Some((lsn, data)) => {
            out.push(1 | (lsn << 1));
            out.extend_from_slice(&(data.len().min(u16::MAX as usize) as u16).to_le_bytes());
            out.extend_from_slice(&data[..data.len().min(u16::MAX as usize)]);
        }
        None => out.push(0),
    }
    for (kind, p) in records {
        let p = &p[..p.len().min(u16::MAX as usize)];
        out.push(*kind);
        out.extend_from_slice(&(p.len() as u16).to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// Replays journal records decoded from `data` (see
/// [`encode_replay_input`]) without any log: typed errors or a view, never
/// a panic, and the same input always gives the same view.
pub fn journal_replay(data: &[u8]) {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let mut snapshot = None;
    let mut lsn = 0u64;
    if flags & 1 == 1 && rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        lsn = u64::from(flags >> 1);
        snapshot = Some((lsn, &rest[2..2 + len]));
        rest = &rest[2 + len..];
    }
    let mut records = Vec::new();
    while rest.len() >= 3 && records.len() < MAX_RECORDS {
        let kind = rest[0];
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        lsn += 1;
        records.push((lsn, kind, &rest[3..3 + len]));
        rest = &rest[3 + len..];
    }
    let first = JournalView::replay(snapshot, records.iter().copied());
    let again = JournalView::replay(snapshot, records.iter().copied());
    match (first, again) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "replay is not deterministic");
            let mut ids: Vec<&str> = a.units.iter().map(|u| u.id.as_str()).collect();
            ids.sort_unstable();
            let n = ids.len();
            ids.dedup();
            assert_eq!(ids.len(), n, "a unit appears twice in the view");
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "replay errors differ"),
        _ => panic!("replay is not deterministic"),
    }
}

/// Runs the inspector's read-only commands (summary, verify, dump, units,
/// keys, show) over the directory image described by `data` (the
/// `recover_dir` format, see `agentwal::log::fuzzing::encode_dir_image`).
pub fn inspect(data: &[u8]) {
    let (sim, _) = build_dir(data);
    let storage = Arc::new(sim.clone());
    let Ok(insp) = Inspection::open_with(storage, FUZZ_DIR, OpenOptions::default()) else {
        return;
    };
    let summary = inspect::summary::summary(&insp);
    let _ = inspect::text::summary(&summary);
    if let Ok(v) = inspect::verify::verify(&insp) {
        let _ = inspect::text::verify(&v);
    }
    let mut shown = 0;
    for r in dump(
        &insp,
        DumpOptions {
            from: None,
            limit: Some(10_000),
        },
    ) {
        match r {
            Ok(rec) => {
                let _ = inspect::text::dump_line(&rec);
                shown += 1;
            }
            Err(_) => break,
        }
    }
    assert!(shown <= 10_000, "dump ignored its limit");
    if let Ok(view) = inspect::units::load_view(&insp) {
        let rows = inspect::units::units(&view, None);
        let _ = inspect::text::units(&rows);
        let _ = inspect::text::keys(&inspect::units::keys(&view));
        for u in view.units.iter().take(32) {
            if let Ok(d) = inspect::units::show(&insp, &view, &u.id) {
                let _ = inspect::text::show(&d);
            }
        }
    }
    // Inspection is read-only: the directory is exactly as it was.
    let (again, _) = build_dir(data);
    for p in agentwal::log::Storage::list_dir(&again, Path::new(FUZZ_DIR)).unwrap_or_default() {
        assert_eq!(
            sim.read(&p),
            again.read(&p),
            "inspection changed {}",
            p.display()
        );
    }
}

fn journal_opts() -> JournalOptions {
    JournalOptions {
        log: LogOptions {
            segment_size: 4096,
            max_record_bytes: 1024,
            preallocate: false,
            ..LogOptions::default()
        },
        max_payload_bytes: 512,
        retention: Retention::unlimited(),
        auto_compact: AutoCompact {
            every_records: None,
            every_bytes: None,
            tail_ratio: None,
        },
        ..JournalOptions::default()
    }
}

/// Seed inputs built from a real journal (units, effects of every policy,
/// a checkpoint, a rollback, an in-doubt effect, a compaction snapshot):
/// `(target, bytes)` for `journal_replay` and `inspect`.
pub fn seed_corpus() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    for compact in [false, true] {
        let sim = SimStorage::new();
        let j =
            Journal::open_with(Arc::new(sim.clone()), FUZZ_DIR, journal_opts()).expect("journal");
        for i in 0..4 {
            let mut u = j.begin(&format!("order-{i}"), "order", &i).expect("begin");
            u.run(Effect::retry_same_key("charge"), |ctx| {
                Ok::<_, String>(ctx.key().to_string())
            })
            .expect("charge");
            u.checkpoint(&format!("step {i}")).expect("checkpoint");
            u.run(Effect::never_repeat("mail").compensable(), |_| {
                Ok::<_, String>(i * 2)
            })
            .expect("mail");
            if i == 2 {
                u.rollback("test", |_| Ok::<_, String>(()))
                    .expect("rollback");
            } else {
                u.commit().expect("commit");
            }
            if compact && i == 1 {
                j.compact().expect("compact");
            }
        }
        // An effect left in doubt.
        let mut u = j.begin("stuck", "order", &()).expect("begin");
        let _ = u.run(Effect::retry_same_key("charge"), |_| {
            Err::<u32, _>("declined")
        });
        drop(u);
        drop(j);
        let image = sim.crash(CrashMode::KeepAll);
        out.push(("inspect", dir_image(&image, Path::new(FUZZ_DIR), 0)));
        let log = Log::open_with(Arc::new(image), FUZZ_DIR, journal_opts().log).expect("log");
        let snap = log.latest_snapshot().expect("snapshot");
        let from = snap.as_ref().map_or(0, |s| s.lsn) + 1;
        let records: Vec<(u8, Vec<u8>)> = log
            .read_from(from)
            .expect("read")
            .map(|r| {
                let r = r.expect("record");
                (r.kind, r.payload().to_vec())
            })
            .collect();
        let snapshot = snap
            .as_ref()
            .map(|s| (s.lsn.min(127) as u8, s.data.as_slice()));
        if snap.as_ref().is_none_or(|s| s.lsn <= 127) {
            out.push(("journal_replay", encode_replay_input(snapshot, &records)));
        }
        out.push(("journal_replay", encode_replay_input(None, &records)));
        for n in [1, 3, 8] {
            out.push((
                "journal_replay",
                encode_replay_input(None, &records[..n.min(records.len())]),
            ));
        }
    }
    out
}

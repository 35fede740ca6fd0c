//! Guarantee: one owner per journal directory (a second opener gets
//! `Error::Locked` with the holder's pid), read-only readers need no lock,
//! and every file and directory the log creates is owner-only (0600/0700).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use agentwal::log::{Error, Log, LogOptions, LogReader, SimStorage};

fn opts() -> LogOptions {
    LogOptions {
        segment_size: 4096,
        max_record_bytes: 1024,
        ..LogOptions::default()
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn second_owner_is_refused_with_the_holders_pid_real_fs() {
    let dir = tempfile::tempdir().unwrap();
    let first = Log::open(dir.path(), opts()).unwrap();
    first.append(b"mine").unwrap();
    match Log::open(dir.path(), opts()) {
        Err(Error::Locked { dir: d, pid }) => {
            assert_eq!(d, dir.path());
            assert_eq!(pid, Some(std::process::id()));
        }
        other => panic!("expected Locked, got {:?}", other.map(|_| ())),
    }
    let e = Log::open(dir.path(), opts()).unwrap_err();
    assert!(
        e.to_string().contains(&std::process::id().to_string()),
        "{e}"
    );
    // A read-only reader needs no lock.
    let reader = LogReader::open(dir.path()).unwrap();
    assert_eq!(reader.scan().records(), 1);
    // The lock goes with the last handle.
    drop(first);
    let again = Log::open(dir.path(), opts()).unwrap();
    assert_eq!(again.next_lsn(), 2);
}

#[test]
fn second_owner_is_refused_in_the_simulator() {
    let sim = SimStorage::new();
    let a = Log::open_with(Arc::new(sim.clone()), "/sim/lock/j", opts()).unwrap();
    let b = Log::open_with(Arc::new(sim.clone()), "/sim/lock/j", opts());
    assert!(matches!(b, Err(Error::Locked { pid: Some(_), .. })));
    drop(a);
    assert!(Log::open_with(Arc::new(sim), "/sim/lock/j", opts()).is_ok());
}

#[test]
fn files_are_owner_only_on_the_real_file_system() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("nested").join("journal");
    let log = Log::open(&dir, opts()).unwrap();
    for i in 0..40u32 {
        log.append(&[i as u8; 300]).unwrap();
    }
    log.write_snapshot(30, b"state").unwrap();
    log.append_with(0, &[9u8; 100], agentwal::log::Durability::Buffered)
        .unwrap();
    let last_seg = {
        let mut v: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "wal"))
            .collect();
        v.sort();
        v.pop().unwrap()
    };
    let end = log.read_from(41).unwrap().next().unwrap().unwrap().offset();
    drop(log);
    // Tear the last record so recovery writes a cut file too.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&last_seg)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xAB; 7], end + 60).unwrap();
    drop(f);
    let log = Log::open(&dir, opts()).unwrap();
    assert!(
        log.open_report().cut_saved_to.is_some(),
        "recovery wrote a cut file"
    );
    drop(log);

    assert_eq!(mode(&dir), 0o700, "journal directory");
    assert_eq!(
        mode(&root.path().join("nested")),
        0o700,
        "created parent directory"
    );
    let mut kinds = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        kinds.insert(if name.ends_with(".wal") {
            "segment"
        } else if name.ends_with(".snap") {
            "snapshot"
        } else if name.starts_with("cut-") {
            "cut"
        } else {
            name.leak()
        });
    }
    for k in ["segment", "snapshot", "cut", "LOCK"] {
        assert!(kinds.contains(k), "no {k} file checked: {kinds:?}");
    }
}

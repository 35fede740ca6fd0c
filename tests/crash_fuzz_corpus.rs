//! Keeps the fuzz targets from rotting without nightly: every file of
//! `fuzz/corpus/<target>/` is replayed through the same library entry point
//! the libFuzzer target calls (`agentwal::log::fuzzing`), and the committed
//! seed corpus must contain the seeds generated from real journals today.
//!
//! Regenerate the seeds after a format change with
//! `AGENTWAL_WRITE_CORPUS=1 cargo test --test crash_fuzz_corpus`.

use std::path::{Path, PathBuf};

use agentwal::log::fuzzing::{crash_workload, decode_record, recover_dir, seed_corpus};

/// The entry points of the targets above the log (`journal_replay`,
/// `inspect`): the fuzz crate's own source, compiled here on stable.
#[path = "../fuzz/src/lib.rs"]
mod upper;

const TARGETS: [&str; 5] = [
    "decode_record",
    "recover_dir",
    "crash_workload",
    "journal_replay",
    "inspect",
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
        .join(target)
}

fn files(target: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
        .map(|rd| {
            rd.map(|e| e.unwrap().path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn run(target: &str, data: &[u8]) {
    match target {
        "decode_record" => decode_record(data),
        "recover_dir" => recover_dir(data),
        "crash_workload" => crash_workload(data),
        "journal_replay" => upper::journal_replay(data),
        "inspect" => upper::inspect(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

fn seed_name(data: &[u8]) -> String {
    format!("seed-{:08x}-{}", crc32fast::hash(data), data.len())
}

#[test]
fn committed_corpus_holds_the_generated_seeds() {
    let write = std::env::var_os("AGENTWAL_WRITE_CORPUS").is_some();
    let mut missing = Vec::new();
    if write {
        // Journal records carry timestamps, so these seeds differ on every
        // run: they are only written on request, never required.
        for (target, data) in upper::seed_corpus() {
            std::fs::create_dir_all(corpus_dir(target)).unwrap();
            std::fs::write(corpus_dir(target).join(seed_name(&data)), &data).unwrap();
        }
    }
    for (target, data) in seed_corpus() {
        let path = corpus_dir(target).join(seed_name(&data));
        if !path.exists() {
            if write {
                std::fs::create_dir_all(corpus_dir(target)).unwrap();
                std::fs::write(&path, &data).unwrap();
            } else {
                missing.push(path);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "seed corpus out of date ({} missing, e.g. {}); run AGENTWAL_WRITE_CORPUS=1 cargo test --test crash_fuzz_corpus",
        missing.len(),
        missing[0].display()
    );
}

#[test]
fn every_corpus_file_replays_cleanly() {
    for target in TARGETS {
        let mut inputs = files(target);
        assert!(
            inputs.len() >= 2,
            "fuzz/corpus/{target} has only {} inputs",
            inputs.len()
        );
        if target == "inspect" {
            // Same input format as recover_dir: inspect those journals too.
            inputs.extend(files("recover_dir"));
        }
        for p in inputs {
            let data = std::fs::read(&p).unwrap();
            let r = std::panic::catch_unwind(|| run(target, &data));
            assert!(r.is_ok(), "{target} failed on {}", p.display());
        }
    }
}

//! The layering rule, checked on the source tree: dependencies point
//! downward only.
//!
//! ```text
//! log  ←  engine  ←  journal
//! log  ←  engine  ←  queue  ←  runtime (tokio)
//! inspect reads log, journal and queue, never runtime
//! ```
//!
//! A layer may not name a layer above it (or beside it) in code: no
//! `crate::<layer>` outside comments. The folder tree under `src/` is the
//! layer list.

use std::fs;
use std::path::Path;

/// (layer, layers it must not use)
const RULES: &[(&str, &[&str])] = &[
    ("log", &["journal", "queue", "runtime", "inspect", "engine"]),
    ("engine", &["journal", "queue", "runtime", "inspect"]),
    ("journal", &["queue", "runtime", "inspect"]),
    ("queue", &["journal", "runtime", "inspect"]),
    ("inspect", &["runtime"]),
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn layers_only_use_the_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for (layer, forbidden) in RULES {
        let mut files = Vec::new();
        rust_files(&src.join(layer), &mut files);
        assert!(!files.is_empty(), "src/{layer}/ has no Rust files");
        for f in files {
            let text = fs::read_to_string(&f).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for other in *forbidden {
                    if code.contains(&format!("crate::{other}")) {
                        violations.push(format!(
                            "{}:{}: layer `{layer}` uses `{other}`: {}",
                            f.display(),
                            n + 1,
                            line.trim()
                        ));
                    }
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_queue_and_inspect_build_without_tokio() {
    // Nothing under src/queue or src/inspect is gated on the runtime's
    // feature: a wal-inspect built without tokio reads a queue. (The queue's
    // async wrappers live in src/runtime.)
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for layer in ["queue", "inspect"] {
        let mut files = Vec::new();
        rust_files(&src.join(layer), &mut files);
        for f in files {
            let text = fs::read_to_string(&f).unwrap();
            assert!(
                !text.contains("feature = \"tokio\"") && !text.contains("tokio::"),
                "{} depends on tokio",
                f.display()
            );
        }
    }
}

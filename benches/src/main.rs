//! `agentwal-bench`: measures agentwal against the physical limit (raw
//! `fdatasync`) and the alternatives (a JSON checkpoint file, SQLite in WAL
//! mode with `synchronous=FULL`, okaywal), all in one run so that the reported
//! **ratios** hold on a noisy, shared machine.
//!
//! ```text
//! cargo run --release -p agentwal-bench -- --quick    # about 2 minutes
//! cargo run --release -p agentwal-bench              # full run (1 GB / 4 GB logs)
//! ```
//!
//! Writes the results table into `docs/benchmarks.md` (between the
//! `BENCH:BEGIN`/`BENCH:END` markers) and SVG plots into `docs/img/`; files
//! under test live in a temporary directory on the file system of the
//! repository (not a tmpfs) and are deleted afterwards.

mod measure;
mod observe;
mod python;
mod report;
mod rotation;
mod scaling;
mod scenarios;
mod systems;

use std::path::PathBuf;

use measure::Res;

/// Command-line options.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Smaller sizes and shorter runs.
    pub quick: bool,
    /// Where benchmark files go (a fresh temporary directory inside it).
    pub work_root: PathBuf,
    /// The markdown file to update (None: print only).
    pub doc: Option<PathBuf>,
    /// Directory for the SVG plots.
    pub img_dir: Option<PathBuf>,
    /// Run only the phases whose name contains one of these.
    pub only: Vec<String>,
    /// Writer counts of the concurrency sweep (default 1, 4, 8, 16, 64).
    pub writers: Vec<usize>,
    /// Rounds of the interleaved comparison (default 9 quick, 15 full).
    pub rounds: Option<usize>,
}

fn usage() -> ! {
    eprintln!(
        "usage: agentwal-bench [--quick] [--dir DIR] [--no-write] [--only PHASE]... [--writers 1,8] [--rounds N]\n\
         phases: latency, writers, tasks, units, baselines, rotation, replay, compaction, scaling, observe\n\
         (--only python: the Python package against a Python + sqlite3 agent, see benches/python)\n\
         (internal: agentwal-bench --child verify|replay|crc|idle|grow|scale-run:N|scale-open DIR)"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        let (Some(what), Some(dir)) = (args.get(1), args.get(2)) else {
            usage()
        };
        match scenarios::child(what, PathBuf::from(dir).as_path()) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("agentwal-bench child {what}: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut opts = Opts {
        quick: false,
        work_root: repo.join("target"),
        doc: Some(repo.join("docs/benchmarks.md")),
        img_dir: Some(repo.join("docs/img")),
        only: Vec::new(),
        writers: vec![1, 4, 8, 16, 64],
        rounds: None,
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--dir" => opts.work_root = it.next().map(PathBuf::from).unwrap_or_else(|| usage()),
            "--no-write" => {
                opts.doc = None;
                opts.img_dir = None;
            }
            "--only" => opts.only.push(it.next().unwrap_or_else(|| usage())),
            "--writers" => {
                let v = it.next().unwrap_or_else(|| usage());
                opts.writers = v
                    .split(',')
                    .map(|x| x.parse().unwrap_or_else(|_| usage()))
                    .collect();
            }
            "--rounds" => {
                opts.rounds = Some(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_else(|| usage()),
                )
            }
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    if let Err(e) = run(&opts) {
        eprintln!("agentwal-bench: {e}");
        std::process::exit(1);
    }
}

fn run(opts: &Opts) -> Res {
    std::fs::create_dir_all(&opts.work_root)?;
    if !opts.only.is_empty() && opts.only.iter().all(|o| o == "python") {
        // Its own report (benches/python/compare.py); the doc table is not touched.
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        return python::run(opts, &repo);
    }
    let tmp = tempfile::Builder::new()
        .prefix("agentwal-bench-")
        .tempdir_in(&opts.work_root)?;
    eprintln!(
        "agentwal-bench: {} run, files in {}",
        if opts.quick { "quick" } else { "full" },
        tmp.path().display()
    );
    let results = scenarios::run_all(opts, tmp.path())?;
    let table = report::markdown(&results);
    println!("{table}");
    if let Some(doc) = &opts.doc {
        report::update_doc(doc, &table)?;
        eprintln!("updated {}", doc.display());
    }
    if let Some(img) = &opts.img_dir {
        for p in report::write_svgs(img, &results)? {
            eprintln!("wrote {}", p.display());
        }
    }
    // `tmp` is removed here, deleting every benchmark file.
    Ok(())
}

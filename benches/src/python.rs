//! `--only python`: the Python package against a plain Python + sqlite3
//! agent (and against the Rust `batch_agent`), by running
//! `benches/python/compare.py` with the interpreter in `PYTHON` (default
//! `python3`), which must have the package installed (`pip install ./python`).
//! Its report is printed as is; docs are not rewritten. The Rust comparison
//! uses `BATCH_AGENT`, else `target/release/examples/batch_agent` (build it
//! with `cargo build --release --example batch_agent`).

use std::path::Path;
use std::process::Command;

use crate::measure::Res;
use crate::Opts;

/// Runs the Python comparison.
pub fn run(opts: &Opts, repo: &Path) -> Res {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let script = repo.join("benches/python/compare.py");
    let (records, rounds) = if opts.quick { (200, 3) } else { (1000, 7) };
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .args(["--records", &records.to_string()])
        .args(["--rounds", &opts.rounds.unwrap_or(rounds).to_string()])
        .arg("--dir")
        .arg(&opts.work_root);
    // BATCH_AGENT, else the release build in CARGO_TARGET_DIR or target/.
    let batch_agent = std::env::var_os("BATCH_AGENT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| repo.join("target"))
                .join("release/examples/batch_agent")
        });
    if batch_agent.exists() {
        cmd.arg("--batch-agent").arg(&batch_agent);
    } else {
        eprintln!(
            "agentwal-bench: {} not built (cargo build --release --example batch_agent): no Rust comparison",
            batch_agent.display()
        );
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {python} {}: {e}", script.display()))?;
    if !status.success() {
        return Err(format!(
            "{python} {} failed ({status}); is the package installed (pip install ./python)?",
            script.display()
        )
        .into());
    }
    Ok(())
}

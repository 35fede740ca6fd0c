//! A user-style agent checked by the crash-test kit (`agentwal::testing`).
//!
//! ```text
//! cargo run --example crashtest_agent
//! ```
//!
//! The agent charges a customer and emails a receipt for each order. The
//! first version has a deliberate bug (the charge is not a journaled effect,
//! so a crash before the commit charges again); the kit crashes it at every
//! storage write, as a kill and as a power loss, re-runs it, and reports the
//! double charge. The fixed version journals the charge as `never_repeat`
//! and passes every crash point. Exits 0 when the kit caught the bug and
//! passed the fix.

use agentwal::journal::{Effect, Error, Journal};
use agentwal::testing::{crash_test, CrashTestOptions, Recorder};

const ORDERS: &[&str] = &["order-1", "order-2", "order-3"];

/// BUG: the charge runs outside the journal.
fn buggy_agent(j: &Journal, id: &str, bank: &Recorder) -> Result<(), Error> {
    let mut unit = j.begin(id, "order", &())?;
    bank.deliver_once(&format!("{id}/charge"));
    unit.run(Effect::retry_same_key("receipt"), |ctx| {
        bank.deliver(ctx.key());
        Ok::<_, String>(())
    })?;
    unit.commit()?;
    Ok(())
}

/// Fixed: the charge is an effect that never repeats, keyed for the bank.
fn fixed_agent(j: &Journal, id: &str, bank: &Recorder) -> Result<(), Error> {
    let mut unit = j.begin(id, "order", &())?;
    unit.run(Effect::never_repeat("charge"), |ctx| {
        bank.deliver_once(ctx.key());
        Ok::<_, String>(())
    })?;
    unit.run(Effect::retry_same_key("receipt"), |ctx| {
        bank.deliver(ctx.key());
        Ok::<_, String>(())
    })?;
    unit.commit()?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let buggy = crash_test(ORDERS, CrashTestOptions::default(), buggy_agent);
    println!(
        "buggy agent: {} crash points x 2 modes, {} runs, {} violation(s)",
        buggy.crash_points,
        buggy.runs,
        buggy.violations.len()
    );
    for v in buggy.violations.iter().take(3) {
        println!("  {v}");
    }
    let fixed = crash_test(ORDERS, CrashTestOptions::default(), fixed_agent);
    println!(
        "fixed agent: {} crash points x 2 modes, {} runs, {} violation(s), {} in-doubt charge(s) surfaced for an operator",
        fixed.crash_points,
        fixed.runs,
        fixed.violations.len(),
        fixed.in_doubt_outcomes
    );
    for v in &fixed.violations {
        println!("  {v}");
    }
    if !buggy.violations.is_empty() && fixed.violations.is_empty() {
        println!("ok: the kit caught the bug and the fix passes");
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

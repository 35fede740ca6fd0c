//! The crash-test kit (`agentwal::testing`) catches an agent bug and passes
//! the fixed agent: a `never_repeat` charge done outside the journal is
//! delivered twice after some crash; journaled, it never is.

use agentwal::journal::{Effect, Error, Journal};
use agentwal::testing::{crash_test, CrashTestOptions, Recorder};

fn buggy(j: &Journal, id: &str, svc: &Recorder) -> Result<(), Error> {
    let mut unit = j.begin(id, "order", &())?;
    // BUG: the charge is not an effect: a crash before the commit re-runs it.
    svc.deliver_once(&format!("{id}/charge"));
    unit.run(Effect::retry_same_key("email"), |ctx| {
        svc.deliver(ctx.key());
        Ok::<_, String>(())
    })?;
    unit.commit()?;
    Ok(())
}

fn fixed(j: &Journal, id: &str, svc: &Recorder) -> Result<(), Error> {
    let mut unit = j.begin(id, "order", &())?;
    unit.run(Effect::never_repeat("charge"), |ctx| {
        svc.deliver_once(ctx.key());
        Ok::<_, String>(())
    })?;
    unit.run(Effect::retry_same_key("email"), |ctx| {
        svc.deliver(ctx.key());
        Ok::<_, String>(())
    })?;
    unit.commit()?;
    Ok(())
}

#[test]
fn the_kit_catches_an_unjournaled_charge() {
    let r = crash_test(&["o1", "o2"], CrashTestOptions::default(), buggy);
    assert!(r.crash_points > 5, "{r:?}");
    assert!(
        r.violations.iter().any(|v| v.contains("charge")),
        "the bug went unnoticed: {r:#?}"
    );
}

#[test]
fn the_fixed_agent_passes_every_crash_point() {
    let r = crash_test(&["o1", "o2", "o3"], CrashTestOptions::default(), fixed);
    assert!(r.violations.is_empty(), "{:#?}", r.violations);
    assert!(r.crash_points >= r.writes, "{r:?}");
    // Some crash lands inside the never_repeat charge: visibly in doubt.
    assert!(r.in_doubt_outcomes > 0, "{r:?}");
}

//! Code versions: the version that began a unit is recorded; a mismatch on
//! resume names both versions and the step; `Unit::patched` keeps the old
//! steps for units older code began; `begin_or_finished` returns a finished
//! unit's end instead of an error.

use agentwal::journal::{Begun, Effect, Error, Journal, JournalOptions, UnitState};

#[test]
fn a_mismatch_names_both_versions_and_the_step() {
    let d = tempfile::tempdir().unwrap();
    {
        let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
        j.set_code("v1", &[]);
        let mut u = j.begin("u", "t", &()).unwrap();
        assert_eq!(u.code_version().as_deref(), Some("v1"));
        let _: u32 = u
            .run(Effect::retry_same_key("search"), |_| Ok::<_, String>(1))
            .unwrap();
    }
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    j.set_code("v2", &[]);
    let mut u = j.begin("u", "t", &()).unwrap();
    let e = u
        .run(Effect::retry_same_key("lookup"), |_| Ok::<_, String>(1u32))
        .unwrap_err();
    assert!(matches!(e, Error::EffectMismatch { step: 0, .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("v1") && msg.contains("v2") && msg.contains("step 0"),
        "{msg}"
    );
}

#[test]
fn patched_keeps_old_steps_for_units_begun_by_old_code() {
    let d = tempfile::tempdir().unwrap();
    {
        let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
        j.set_code("v1", &[]);
        let mut u = j.begin("old", "t", &()).unwrap();
        let _: u32 = u
            .run(Effect::retry_same_key("charge"), |_| Ok::<_, String>(1))
            .unwrap();
        // killed before the send
    }
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    j.set_code("v2", &["fraud-check"]);
    // v2's code: a fraud check before the charge, for units that know it.
    let run = |id: &str| {
        let mut u = j.begin(id, "t", &()).unwrap();
        if u.patched("fraud-check") {
            let _: bool = u
                .run(Effect::retry_same_key("fraud-check"), |_| {
                    Ok::<_, String>(true)
                })
                .unwrap();
        }
        let _: u32 = u
            .run(Effect::retry_same_key("charge"), |_| Ok::<_, String>(1))
            .unwrap();
        let _: u32 = u
            .run(Effect::retry_same_key("send"), |_| Ok::<_, String>(2))
            .unwrap();
        u.commit().unwrap();
    };
    run("old"); // begun by v1: no fraud check step, replays cleanly
    run("new");
    assert_eq!(j.unit_state("old"), Some(UnitState::Committed));
    assert_eq!(j.unit_state("new"), Some(UnitState::Committed));
    assert!(j.key_status("new/fraud-check/0").is_some());
    assert!(j.key_status("old/fraud-check/0").is_none());
}

#[test]
fn begin_or_finished_returns_the_recorded_end() {
    let d = tempfile::tempdir().unwrap();
    let j = Journal::open(d.path(), JournalOptions::small()).unwrap();
    let u = j.begin("u", "t", &()).unwrap();
    let lsn = u.commit().unwrap();
    match j.begin_or_finished("u", "t", &()).unwrap() {
        Begun::Finished(f) => assert_eq!((f.state, f.end_lsn), (UnitState::Committed, lsn)),
        Begun::Open(_) => panic!("a committed unit was opened again"),
    }
    assert!(matches!(
        j.begin_or_finished("v", "t", &()).unwrap(),
        Begun::Open(_)
    ));
}

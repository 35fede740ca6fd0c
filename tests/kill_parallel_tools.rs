//! End to end: SIGKILL the parallel-tools agent (`examples/parallel_tools.rs`:
//! three tool calls per task as a fan-out of child units) at random moments,
//! including in the middle of a fan-out, re-run it to completion, and check:
//! every task and every child committed exactly once, every tool call
//! delivered under its deterministic key, re-sends only with the same key and
//! payload (at most one per child in flight per kill), and every answer
//! gathered in tool order whatever order the tools finished in.
#![cfg(feature = "tokio")]

mod agent_support;

use agent_support::{example, resends, sink_by_key, KillRig};
use agentwal::journal::{JournalView, UnitState};

/// Enough work (about 40 ms a task) that six kills of at most 450 ms land.
const TASKS: u32 = 150;
const TOOLS: [&str; 3] = ["search", "weather", "calendar"];

#[test]
fn sigkill_in_the_middle_of_fan_outs_then_rerun_repeats_nothing() {
    let tasks = TASKS.to_string();
    let args = ["--tasks", &tasks, "--work-ms", "15"];
    let mut rig = KillRig::new(example("parallel_tools", &["tokio"]), &args);
    let kills = rig.kill_at_random(6, 50);
    rig.run_to_completion();

    // Journal: each task and each of its three children committed once.
    let view = JournalView::load(&agentwal::log::LogReader::open(&rig.journal).unwrap()).unwrap();
    assert_eq!(view.units_in(UnitState::Incomplete).count(), 0);
    assert_eq!(view.aborted_total(), 0);
    assert_eq!(view.committed_total(), u64::from(TASKS) * 4);

    // Sink: every tool call and answer under its one key, re-sent only with
    // the same payload; answers in tool order.
    let by_key = sink_by_key(&rig.sink);
    let mut expected = 0;
    for t in 0..TASKS {
        let task = format!("task-{t:04}");
        for (i, tool) in TOOLS.iter().enumerate() {
            let key = format!("{task}/tools/0/{i}/call/0");
            let got = by_key
                .get(&key)
                .unwrap_or_else(|| panic!("{key} never sent"));
            assert!(
                got.iter().all(|p| *p == format!("{tool}:{task}")),
                "{key}: {got:?}"
            );
        }
        let key = format!("{task}/answer/1");
        let got = by_key
            .get(&key)
            .unwrap_or_else(|| panic!("{key} never sent"));
        let answer = format!("answer:search={task}|weather={task}|calendar={task}");
        assert!(got.iter().all(|p| *p == answer), "{key}: {got:?}");
        expected += 4;
    }
    assert_eq!(
        by_key.len(),
        expected,
        "keys outside the tasks' deterministic ones"
    );
    // A kill can catch the three children of one fan-out in flight.
    let duplicates = resends(&by_key);
    assert!(
        duplicates <= 3 * kills,
        "{duplicates} re-sends for {kills} kills"
    );
    eprintln!("kill_parallel_tools: {kills} kills, {duplicates} re-sends");
}

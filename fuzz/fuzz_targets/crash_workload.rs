//! A random power-loss workload whose seed and length come from the input;
//! every recovery is checked against the in-memory model.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    agentwal::log::fuzzing::crash_workload(data);
});

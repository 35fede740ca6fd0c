//! A directory of segment and snapshot files built from the input, opened by
//! the owner (strict or lossy) and read-only; a durable append after a clean
//! open must survive a power loss.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    agentwal::log::fuzzing::recover_dir(data);
});

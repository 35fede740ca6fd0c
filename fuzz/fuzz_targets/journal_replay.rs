//! Journal replay of arbitrary records (and an optional snapshot payload).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    agentwal_fuzz::journal_replay(data);
});

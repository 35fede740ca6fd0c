//! The inspector's read-only commands over an arbitrary directory image.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    agentwal_fuzz::inspect(data);
});

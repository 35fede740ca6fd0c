//! Record, segment-header and snapshot decoding of arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    agentwal::log::fuzzing::decode_record(data);
});

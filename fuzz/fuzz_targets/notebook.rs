#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| codelupe_fuzzing::notebook(data));

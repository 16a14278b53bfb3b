//! Config text → `Config::from_text`: no panic, no hang, and every
//! rejection names at least one problem, each at a real `line:column`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        ec2fleetd_fuzz::check_config("fuzz", text);
    }
});

//! The documents the watcher reads from IMDS (spot instance-action,
//! target lifecycle state, rebalance recommendation, scheduled
//! maintenance), and the notice's time as the lifecycle parses it.
#![no_main]

use ec2fleetd::imds::{is_terminated, maintenance_events, parse_spot_notice, rebalance_time};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(notice) = parse_spot_notice(data) {
        // What `lifecycle` does with it: the deadline, or two minutes.
        let _ = humantime::parse_rfc3339_weak(&notice.time);
    }
    let _ = is_terminated(data);
    let _ = rebalance_time(data);
    if let Some(events) = maintenance_events(data) {
        assert!(!events.is_empty());
    }
    // The time parser on any text, for more of its paths than notices reach.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = humantime::parse_rfc3339_weak(text);
    }
});

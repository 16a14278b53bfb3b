//! User data as IMDS gives it → `decode_user_data` (gzip detection and
//! inflation, bounded) → the config it holds, when it is UTF-8.
#![no_main]

use ec2fleetd::imds::{decode_user_data, ImdsError, MAX_INFLATED_USER_DATA};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode_user_data(data.to_vec()) {
        Ok(text) => {
            assert!(
                text.len() <= MAX_INFLATED_USER_DATA.max(data.len()),
                "inflated past the bound: {} bytes",
                text.len()
            );
            if let Ok(text) = std::str::from_utf8(&text) {
                ec2fleetd_fuzz::check_config("user data", text);
            }
        }
        Err(ImdsError::BadGzip(_) | ImdsError::UserDataTooLarge { .. }) => {}
        Err(e) => panic!("decoding user data is not an IMDS request: {e}"),
    }
});

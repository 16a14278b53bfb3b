//! What fuzzing the config and user-data readers (`scripts/fuzz`, see
//! doc/testbed.md) and the large inputs tried beside it turned up, kept so
//! that it stays fixed: configs whose checking took time out of all
//! proportion to their size, so that user data of a few KiB of gzip held
//! the daemon for many seconds before it said what was wrong. Each bound
//! is some ten times what the check takes in a debug build.

use std::io::Write;
use std::time::{Duration, Instant};

use ec2fleetd::config::{Config, ConfigErrors};
use ec2fleetd::imds::decode_user_data;

const LIMIT: Duration = Duration::from_secs(15);

fn gzip(text: &str) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(text.as_bytes()).unwrap();
    gz.finish().unwrap()
}

/// Checks `text` and says how long it took.
fn timed(text: &str) -> (Result<Config, ConfigErrors>, Duration) {
    let started = Instant::now();
    let result = Config::from_text("fuzz", text);
    (result, started.elapsed())
}

#[test]
fn one_long_line_with_many_problems_is_positioned_in_linear_time() {
    // A minified config: every other argv item a number, on one 8 MiB
    // line. Each problem's column was counted from the line's start, for
    // 200,000 problems.
    let filler = format!("\"{}\"", "a".repeat(40));
    let items = vec![format!("{filler},1"); 200_000].join(",");
    let text = format!(
        r#"{{"domains":{{"d":{{"exec":[{{"lines":[{{"argv":["/bin/x",{items}]}}]}}]}}}}}}"#
    );
    assert!(text.len() > 8_000_000 && !text.contains('\n'));
    let (result, took) = timed(&text);
    let errors = result.unwrap_err();
    assert_eq!(errors.problems.len(), 200_000);
    let last = errors.problems.last().unwrap();
    assert_eq!((last.line, last.column), (1, text.rfind(",1").unwrap() + 2));
    assert!(last.message.contains("expected a string"), "{last:?}");
    assert!(took < LIMIT, "200,000 problems on one line took {took:?}");
}

#[test]
fn user_data_of_a_kib_of_gzip_is_rejected_at_once() {
    // 1 MiB on one line, 500,000 problems: a 1 KiB gzip, well within what
    // EC2 accepts as user data.
    let items = vec!["1"; 500_000].join(",");
    let text = format!(r#"{{"domains":{{"d":{{"exec":[{{"lines":[{{"argv":[{items}]}}]}}]}}}}}}"#);
    let raw = gzip(&text);
    assert!(raw.len() < 4096, "{} bytes of gzip", raw.len());
    let started = Instant::now();
    let inflated = String::from_utf8(decode_user_data(raw).unwrap()).unwrap();
    let errors = Config::from_text("user data", &inflated).unwrap_err();
    let took = started.elapsed();
    assert_eq!(errors.problems.len(), 500_000);
    assert!(errors.problems.iter().all(|p| p.line == 1 && p.column > 1));
    assert!(took < LIMIT, "1 MiB of user data took {took:?}");
}

#[test]
fn many_domains_are_told_apart_in_linear_time() {
    // Each domain's name was compared with every earlier one's.
    let domains: Vec<String> = (0..100_000).map(|i| format!("\"d{i}\":{{}}")).collect();
    let text = format!(r#"{{"domains":{{{}}}}}"#, domains.join(",\n"));
    let (result, took) = timed(&text);
    assert_eq!(result.unwrap().domains.len(), 100_000);
    assert!(took < LIMIT, "100,000 domains took {took:?}");

    // The first name given twice is still the one reported.
    let text = format!(
        r#"{{"domains":{{{},"d7":{{}},"d9":{{}}}}}}"#,
        domains[..10].join(",")
    );
    let errors = Config::from_text("fuzz", &text).unwrap_err().to_string();
    assert!(errors.contains(r#"domain "d7" is given twice"#), "{errors}");
    assert!(!errors.contains("d9"), "{errors}");
}

#[test]
fn many_volumes_are_claimed_in_linear_time() {
    // Each device and volume ID was compared with every earlier one's.
    let volumes: Vec<String> = (0..50_000)
        .map(|i| format!(r#"{{"device":"/dev/x{i}","source":"x","volume-id":"vol-{i:08x}"}}"#))
        .collect();
    let text = format!(
        r#"{{"domains":{{"d":{{"attach-volume":[{}]}}}}}}"#,
        volumes.join(",\n")
    );
    let (result, took) = timed(&text);
    assert_eq!(result.unwrap().domains[0].volumes.len(), 50_000);
    assert!(took < LIMIT, "50,000 volumes took {took:?}");

    // A device used twice is still reported, where it is used again.
    let text = format!(
        r#"{{"domains":{{"d":{{"attach-volume":[{},{}]}}}}}}"#,
        volumes[0],
        volumes[0].replace("vol-00000000", "vol-0000ffff")
    );
    let errors = Config::from_text("fuzz", &text).unwrap_err().to_string();
    assert!(
        errors.contains(r#"["attach-volume"][1].device: /dev/x0 is already used at $.domains.d["attach-volume"][0].device"#),
        "{errors}"
    );
}

#[test]
fn a_long_unknown_name_is_rejected_in_linear_time() {
    // "Did you mean" compared a 1 MiB name with every macro (every key),
    // character by character.
    let long = "a".repeat(1 << 20);
    for (text, expected) in [
        (
            format!(r#"{{"hostname":"{{{long}}}","domains":{{}}}}"#),
            "unknown macro {aaaa",
        ),
        (
            format!(r#"{{"{long}":1,"domains":{{}}}}"#),
            "unknown key \"aaaa",
        ),
    ] {
        let (result, took) = timed(&text);
        let errors = result.unwrap_err();
        assert_eq!(errors.problems.len(), 1, "{:?}", errors.problems);
        let message = &errors.problems[0].message;
        assert!(message.starts_with(expected), "{}", &message[..40]);
        assert!(!message.contains("did you mean"));
        assert!(took < LIMIT, "a 1 MiB name took {took:?}");
    }

    // A near miss still gets its suggestion.
    let errors = Config::from_text("fuzz", r#"{"hostname":"{instance_idx}","domaims":{}}"#)
        .unwrap_err()
        .to_string();
    assert!(errors.contains("did you mean {instance_id}?"), "{errors}");
    assert!(errors.contains("did you mean \"domains\"?"), "{errors}");
}

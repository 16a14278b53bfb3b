//! The systemd units start the daemon the way its command line expects.

use std::process::Command;

use super::common::*;

fn unit(name: &str) -> String {
    std::fs::read_to_string(repo_file(&format!("systemd/{name}"))).unwrap()
}

fn exec_start(text: &str) -> Vec<String> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has ExecStart");
    line.split_whitespace().map(String::from).collect()
}

#[test]
fn units_are_type_notify_and_run_the_daemon() {
    for (name, args) in [
        ("ec2fleetd.service", vec!["run"]),
        (
            "ec2fleetd@.service",
            vec!["run", "--config", "/etc/ec2fleetd/%i.jsonc"],
        ),
    ] {
        let text = unit(name);
        assert!(
            text.lines().any(|l| l == "Type=notify"),
            "{name} is Type=notify"
        );
        let argv = exec_start(&text);
        assert_eq!(argv[0], "/usr/bin/ec2fleetd", "{name}");
        assert_eq!(argv[1..], args, "{name}");
    }
}

/// The template unit's ExecStart, with a real file for %i, is accepted by
/// the command line and reaches config validation (exit 78 on a bad file).
#[test]
fn template_unit_command_line_parses() {
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        "my-app.jsonc",
        "{ \"domains\": { \"a\": { \"notfy\": [] } } }",
    );
    let argv = exec_start(&unit("ec2fleetd@.service"));
    let args: Vec<String> = argv[1..]
        .iter()
        .map(|a| a.replace("/etc/ec2fleetd/%i.jsonc", &config.display().to_string()))
        .collect();
    let out = Command::new(daemon_bin()).args(&args).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("my-app.jsonc:1:"));
}

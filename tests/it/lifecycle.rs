//! Events, deadlines, signals, hook options, the watchdog and the drill.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::common::*;

const REGION: &str = "us-east-1";

/// An instance with a DNS-free config: hooks only.
async fn hooks_only(tb: &Testbed, dir: &Path, exec: &str) -> (SimInstance, std::path::PathBuf) {
    let instance = tb.launch_instance("a", None).await.unwrap();
    let config = write_config(
        dir,
        "hooks.jsonc",
        &format!(r#"{{ "domains": {{ "app": {{ "exec": {exec} }} }} }}"#),
    );
    (instance, config)
}

fn events_of(log: &Path) -> Vec<String> {
    recorded(log).into_iter().map(|c| c[1].clone()).collect()
}

#[tokio::test]
async fn news_runs_hooks_once_and_the_watch_goes_on() {
    let tb = Testbed::start(REGION).await.unwrap();
    let dir = tempdir();
    let log = dir.path().join("hooks.log");
    let hook = recorder(dir.path(), &log).display().to_string();
    let exec = format!(
        r#"[{{ "on": ["rebalance", "maintenance", "interrupted"], "lines": [{{ "argv": ["{hook}", "{{daemon_state}}"] }}] }}]"#
    );
    let (instance, config) = hooks_only(&tb, dir.path(), &exec).await;
    let mut d = spawn_run_with(&tb, &instance, &config, &["--poll-interval", "0.1"]);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    instance.imds.raise_rebalance();
    instance.imds.set_maintenance(
        serde_json::json!([{ "Code": "system-reboot", "EventId": "instance-event-1" }]),
    );
    // Both notices stay up for many polls (news is looked for every 5th
    // and 10th poll): each is still one event.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(events_of(&log), ["rebalance", "maintenance"]);
    // The watch went on: a notice after the news is still seen.
    instance.imds.raise_spot_interruption("terminate", 120);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    assert_eq!(events_of(&log), ["rebalance", "maintenance", "interrupted"]);
}

#[tokio::test]
async fn auto_scaling_termination_runs_the_terminating_hooks() {
    let tb = Testbed::start(REGION).await.unwrap();
    let dir = tempdir();
    let log = dir.path().join("hooks.log");
    let hook = recorder(dir.path(), &log).display().to_string();
    let exec = format!(
        r#"[{{ "on": ["terminating"], "lines": [{{ "argv": ["{hook}", "{{daemon_state}}"] }}] }}]"#
    );
    let (instance, config) = hooks_only(&tb, dir.path(), &exec).await;
    instance.imds.set_target_lifecycle_state("InService");
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    instance.imds.set_target_lifecycle_state("Terminated");
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    assert_eq!(events_of(&log), ["terminating"]);
}

#[tokio::test]
async fn a_notice_during_init_cancels_it() {
    let tb = Testbed::start(REGION).await.unwrap();
    let dir = tempdir();
    let log = dir.path().join("hooks.log");
    let hook = recorder(dir.path(), &log).display().to_string();
    let mark = dir.path().join("starting.mark");
    let exec = format!(
        r#"[{{ "on": ["starting"], "lines": [{{ "argv": ["/bin/sh", "-c", "touch '{mark}'; sleep 60.25; true"] }}] }},
            {{ "on": ["interrupted"], "lines": [{{ "argv": ["{hook}", "{{daemon_state}}", "{{interrupt_action}}"] }}] }}]"#,
        mark = mark.display()
    );
    let (instance, config) = hooks_only(&tb, dir.path(), &exec).await;
    let mut d = spawn_run(&tb, &instance, &config);
    wait_for_file(&mark).await;
    let raised = Instant::now();
    instance.imds.raise_spot_interruption("stop", 120);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    assert!(
        raised.elapsed() < Duration::from_secs(30),
        "init was not cancelled promptly"
    );
    let calls: Vec<Vec<String>> = recorded(&log)
        .into_iter()
        .map(|c| c[1..].to_vec())
        .collect();
    assert_eq!(calls, [["interrupted", "stop"]]);
    assert!(!d.notify.messages().iter().any(|m| m == "READY=1"));
    assert_eq!(
        processes_with("60.25"),
        0,
        "the cancelled hook's child outlived the daemon"
    );
}

#[tokio::test]
async fn the_notice_is_seen_through_token_expiry_and_5xx_bursts() {
    let tb = Testbed::start(REGION).await.unwrap();
    let dir = tempdir();
    let log = dir.path().join("hooks.log");
    let hook = recorder(dir.path(), &log).display().to_string();
    let exec = format!(
        r#"[{{ "on": ["interrupted"], "lines": [{{ "argv": ["{hook}", "{{daemon_state}}"] }}] }}]"#
    );
    let (instance, config) = hooks_only(&tb, dir.path(), &exec).await;
    // Tokens live one second: the watch must renew them as it goes.
    instance.imds.cap_token_ttl(1);
    let mut d = spawn_run_with(&tb, &instance, &config, &["--poll-interval", "0.2"]);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    instance.imds.revoke_tokens();
    // Two polls' worth of failures: an outage the daemon reports.
    instance.imds.fail_next(8);
    tokio::time::sleep(Duration::from_secs(3)).await;
    instance.imds.raise_spot_interruption("terminate", 120);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    assert_eq!(events_of(&log), ["interrupted"]);
    let status = d.notify.messages();
    assert!(
        status
            .iter()
            .any(|m| m.starts_with("STATUS=watching; IMDS unreachable")),
        "{status:?}"
    );
    assert!(
        instance.imds.tokens_issued() >= 3,
        "tokens were not renewed"
    );
}

#[tokio::test]
async fn a_hook_that_hangs_is_cut_at_the_budget_and_the_rest_run() {
    let tb = Testbed::start(REGION).await.unwrap();
    let dir = tempdir();
    let log = dir.path().join("hooks.log");
    let hook = recorder(dir.path(), &log).display().to_string();
    let exec = format!(
        r#"[{{ "on": ["interrupted"], "lines": [
            {{ "argv": ["/bin/sleep", "60"] }},
            {{ "argv": ["{hook}", "{{daemon_state}}"] }} ] }}]"#
    );
    let (instance, config) = hooks_only(&tb, dir.path(), &exec).await;
    let mut d = spawn_run_with(&tb, &instance, &config, &["--shutdown-reserve", "10"]);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    // 14 s of warning less 10 s of reserve: the hooks have about 4 s.
    let raised = Instant::now();
    instance.imds.raise_spot_interruption("terminate", 14);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    let took = raised.elapsed();
    assert!(
        took < Duration::from_secs(14),
        "the hooks ran past the notice's deadline: {took:?}"
    );
    let log_text = d.log();
    assert!(log_text.contains("cutting /bin/sleep after"), "{log_text}");
    assert!(
        log_text.contains("the event's deadline allows no more"),
        "{log_text}"
    );
    assert!(log_text.contains("1 hook(s) failed"), "{log_text}");
    assert_eq!(events_of(&log), ["interrupted"], "the next hook still ran");
}

#[tokio::test]
async fn a_second_signal_hurries_the_hooks() {
    let tb = Testbed::start(REGION).await.unwrap();
    let dir = tempdir();
    let mark = dir.path().join("stopping.mark");
    let exec = format!(
        r#"[{{ "on": ["stopping"], "lines": [{{ "argv": ["/bin/sh", "-c", "touch '{mark}'; sleep 60.5; true"] }}] }}]"#,
        mark = mark.display()
    );
    let (instance, config) = hooks_only(&tb, dir.path(), &exec).await;
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    d.signal(Signal::SIGTERM).unwrap();
    wait_for_file(&mark).await;
    let second = Instant::now();
    d.signal(Signal::SIGTERM).unwrap();
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    assert!(
        second.elapsed() < Duration::from_secs(15),
        "the hook was not hurried"
    );
    assert!(d.log().contains("asked to hurry"), "{}", d.log());
    assert_eq!(
        processes_with("60.5"),
        0,
        "the hurried hook's child outlived it"
    );
}

#[tokio::test]
async fn hooks_run_as_the_user_group_env_and_cwd_given() {
    let tb = Testbed::start(REGION).await.unwrap();
    let dir = tempdir();
    // The hook, run as nobody, writes here.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = dir.path().join("who");
    let numeric = dir.path().join("numeric");
    let exec = format!(
        r#"[{{ "on": ["started"], "lines": [{{
            "argv": ["/bin/sh", "-c", "(id -u; id -g; pwd; echo \"$GREETING\"; echo \"$HOME\"; echo \"$USER $LOGNAME\") > '{out}'"],
            "user": "nobody", "group": "nogroup", "cwd": "{cwd}",
            "env": {{ "GREETING": "hello from {{instance_id}}" }} }},
          {{ "argv": ["/bin/sh", "-c", "(id -g; id -G; echo \"$USER $LOGNAME\") > '{numeric}'"],
             "user": "{uid}" }}] }}]"#,
        out = out.display(),
        numeric = numeric.display(),
        cwd = dir.path().display(),
        uid = nix::unistd::User::from_name("nobody").unwrap().unwrap().uid,
    );
    let (instance, config) = hooks_only(&tb, dir.path(), &exec).await;
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let who = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = who.lines().collect();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap();
    assert_eq!(lines[0], nobody.uid.to_string());
    assert_eq!(lines[1], nogroup.gid.to_string());
    assert_eq!(Path::new(lines[2]), dir.path());
    assert_eq!(
        lines[3],
        format!("hello from {}", instance.meta.instance_id)
    );
    assert_eq!(Path::new(lines[4]), nobody.dir);
    assert_eq!(lines[5], "nobody nobody");
    // A numeric user: its name for USER and LOGNAME, its primary group
    // and only that (none of root's groups stay).
    let numeric = std::fs::read_to_string(&numeric).unwrap();
    let lines: Vec<&str> = numeric.lines().collect();
    assert_eq!(lines[0], nobody.gid.to_string());
    assert_eq!(lines[1], nobody.gid.to_string());
    assert_eq!(lines[2], "nobody nobody");
    stop_cleanly(&mut d).await;
}

#[tokio::test]
async fn the_watchdog_is_fed_and_status_follows_the_states() {
    let tb = Testbed::start(REGION).await.unwrap();
    let dir = tempdir();
    let (instance, config) = hooks_only(&tb, dir.path(), "[]").await;
    let mut env = tb.daemon_env(&instance);
    env.push(("WATCHDOG_USEC".into(), "300000".into()));
    let config = config.display().to_string();
    let mut d = DaemonProcess::spawn(
        &daemon_bin(),
        &["run", "--config", &config, "--keep-hostname"],
        &env,
        false,
    )
    .unwrap();
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    d.notify
        .wait_for("WATCHDOG=1", Duration::from_secs(10))
        .await
        .unwrap();
    stop_cleanly(&mut d).await;
    let status: Vec<String> = d
        .notify
        .messages()
        .into_iter()
        .filter(|m| m.starts_with("STATUS=") || m == "READY=1" || m == "STOPPING=1")
        .collect();
    let expected_order = [
        "STATUS=starting: reading",
        "STATUS=starting: bringing up",
        "READY=1",
        "STOPPING=1",
        "STATUS=stopping",
    ];
    let mut at = 0;
    for m in &status {
        if at < expected_order.len() && m.starts_with(expected_order[at]) {
            at += 1;
        }
    }
    assert_eq!(at, expected_order.len(), "{status:?}");
}

fn drill(config: &Path, deadline: &str, reserve: &str) -> (i32, String) {
    let out = Command::new(daemon_bin())
        .args([
            "drill",
            "--config",
            config.to_str().unwrap(),
            "--deadline",
            deadline,
            "--shutdown-reserve",
            reserve,
        ])
        // No IMDS here: the drill uses stand-in values.
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn drill_times_the_interrupted_hooks_against_the_budget() {
    let dir = tempdir();
    let fits = write_config(
        dir.path(),
        "fits.jsonc",
        r#"{ "domains": { "game": { "exec": [{ "on": ["interrupted"], "lines": [
            { "argv": ["/bin/echo", "saving {domain} before {interrupt_time}"] }, { "argv": ["/bin/sleep", "0.5"] } ] }] } } }"#,
    );
    let (code, text) = drill(&fits, "30", "5");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("hooks get 25s"), "{text}");
    assert!(text.contains("/bin/sleep 0.5  ok"), "{text}");
    assert!(text.contains("fits: the slowest domain needs"), "{text}");

    let slow = write_config(
        dir.path(),
        "slow.jsonc",
        r#"{ "domains": { "game": { "exec": [{ "on": ["interrupted"], "lines": [{ "argv": ["/bin/sleep", "60"] }] }] } } }"#,
    );
    let (code, text) = drill(&slow, "4", "1");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("cut after"), "{text}");
    assert!(text.contains("does NOT fit"), "{text}");

    // The release snapshots and detaches come after the hooks, in the
    // reserve; a reserve too short for them is named.
    let snapshotted = write_config(
        dir.path(),
        "snapshot.jsonc",
        r#"{ "domains": { "mc": { "attach-volume": [
            { "device": "/dev/xvdf", "source": "f", "pool-name": "world",
              "snapshot": { "on": ["interrupted"] }, "detach-on": ["interrupted"] } ] } } }"#,
    );
    let (code, text) = drill(&snapshotted, "30", "2");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("[mc] then, in the 2s reserve: snapshot /dev/xvdf, detach /dev/xvdf"),
        "{text}"
    );
    assert!(text.contains("give --shutdown-reserve 5 or more"), "{text}");
    let (_, text) = drill(&snapshotted, "30", "10");
    assert!(!text.contains("may not fit"), "{text}");
}

//! Auto Scaling lifecycle hooks on the double: a scale-in waits for the
//! `terminating` hooks (heartbeats, then CONTINUE or ABANDON at once), a
//! launch hook is completed after READY or abandoned after a failed init,
//! and without a hook nothing but the look at start is asked of Auto Scaling.
//! Time is scaled down: heartbeat timeouts of a few seconds (the double
//! takes less than AWS's 30) and `--termination-budget` for the budget
//! without a hook.

use std::path::Path;
use std::time::{Duration, SystemTime};

use aws_sdk_autoscaling::Client;
use ec2fleetd_testbed::double::LifecycleAction;
use ec2fleetd_testbed::world::{LAUNCHING, TERMINATING};
use serde_json::{json, Value};

use super::common::*;

const REGION: &str = "us-east-1";
const GROUP: &str = "game";

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A hook line that waits `seconds`, then writes the time it ended to `path`.
fn ends_after(seconds: f64, path: &Path) -> Value {
    json!({ "argv": ["/bin/sh", "-c",
        format!("sleep {seconds}; date +%s.%N > {}", path.display())] })
}

fn read_time(path: &Path) -> f64 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

async fn terminate_in_group(client: &Client, instance_id: &str) {
    client
        .terminate_instance_in_auto_scaling_group()
        .instance_id(instance_id)
        .should_decrement_desired_capacity(true)
        .send()
        .await
        .unwrap();
}

async fn actions(tb: &Testbed) -> Vec<LifecycleAction> {
    tb.double
        .as_ref()
        .unwrap()
        .lifecycle_actions()
        .await
        .unwrap()
}

fn event<'a>(events: &'a [Value], name: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["event"] == name)
        .unwrap_or_else(|| panic!("no {name} event in {events:#?}"))
}

/// The daemon's Auto Scaling calls (the test's own scale-in left out).
async fn autoscaling_calls(tb: &Testbed) -> Vec<String> {
    tb.double
        .as_ref()
        .unwrap()
        .calls()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.service == "autoscaling")
        .map(|c| c.action)
        .filter(|a| a != "TerminateInstanceInAutoScalingGroup")
        .collect()
}

/// An instance in zone a, in the group `GROUP` with one lifecycle hook.
async fn in_group_with_hook(
    tb: &Testbed,
    hook: &str,
    transition: &str,
    heartbeat: i32,
    default_result: &str,
) -> SimInstance {
    let instance = tb.launch_instance("a", None).await.unwrap();
    tb.create_group(GROUP, "a").await.unwrap();
    tb.put_lifecycle_hook(GROUP, hook, transition, heartbeat, default_result)
        .await
        .unwrap();
    tb.join_group(GROUP, &instance).await.unwrap();
    instance
}

/// The budget without a hook is 2 s here; the `terminating` hook takes 5,
/// longer than that and than the heartbeat timeout: heartbeats keep Auto
/// Scaling waiting, the hook finishes, the action is completed with
/// CONTINUE, and the instance leaves Terminating:Wait at once.
#[tokio::test]
async fn a_scale_in_waits_for_the_terminating_hooks_then_continues() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = in_group_with_hook(&tb, "drain", TERMINATING, 2, "ABANDON").await;
    let queue = tb.create_queue("events").await.unwrap();
    let dir = tempdir();
    let done = dir.path().join("drained");
    let config = json_config(
        dir.path(),
        "game",
        json!({ "domains": { "game": {
            "exec": [{ "on": ["terminating"], "lines": [ends_after(5.0, &done)] }],
            "notify": [{ "backend": "aws-sqs", "options": { "queue-url": queue } }] } } }),
    );
    let mut d = spawn_run_with(
        &tb,
        &instance,
        &config,
        &["--termination-budget", "2", "--shutdown-reserve", "1"],
    );
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    terminate_in_group(&tb.autoscaling, &instance.meta.instance_id).await;
    assert_eq!(
        tb.lifecycle_state(&instance.meta.instance_id)
            .await
            .unwrap()
            .as_deref(),
        Some("Terminating:Wait")
    );
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    let log = d.log();
    assert!(done.exists(), "the terminating hook was cut: {log}");
    let hook_end = read_time(&done);

    let all = actions(&tb).await;
    let [action] = all.as_slice() else {
        panic!("one lifecycle action expected: {all:?}");
    };
    assert_eq!(action.transition, TERMINATING);
    assert_eq!(action.result.as_deref(), Some("CONTINUE"), "{log}");
    assert_eq!(action.how.as_deref(), Some("completed"), "{log}");
    // Five seconds of hooks with a two-second heartbeat timeout.
    assert!(action.heartbeats >= 2, "{action:?}\n{log}");
    let ended = action.ended.unwrap();
    assert!(
        ended >= hook_end,
        "completed before the hook ended: {action:?}"
    );
    // At once: long before the timeout the last heartbeat set.
    assert!(
        ended < action.timeout_at - 0.5,
        "completed at the timeout, not at once: {action:?}"
    );
    println!(
        "from the hook's end to the completed action: {:.3}s",
        ended - hook_end
    );
    // Then Auto Scaling lets the instance go.
    assert_eq!(
        tb.lifecycle_state(&instance.meta.instance_id)
            .await
            .unwrap(),
        None
    );
    assert!(
        log.contains("lifecycle hook drain: completed with CONTINUE"),
        "{log}"
    );

    let events = events(&tb, &queue).await;
    let terminating = event(&events, "terminating");
    assert_eq!(terminating["lifecycle_action"]["result"], "CONTINUE");
    assert_eq!(terminating["lifecycle_action"]["hook"], "drain");
    assert_eq!(terminating["lifecycle_action"]["group"], GROUP);
    assert_eq!(terminating["lifecycle_action"]["transition"], TERMINATING);
}

/// A `terminating` hook that fails: the action is completed with ABANDON,
/// and the log and the event say which hook failed.
#[tokio::test]
async fn a_failing_terminating_hook_abandons() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = in_group_with_hook(&tb, "drain", TERMINATING, 2, "ABANDON").await;
    let queue = tb.create_queue("events").await.unwrap();
    let dir = tempdir();
    let config = json_config(
        dir.path(),
        "game",
        json!({ "domains": { "game": {
            "exec": [{ "on": ["terminating"], "lines": [
                { "argv": ["/bin/sh", "-c", "sleep 3; exit 3", "save-world"] }] }],
            "notify": [{ "backend": "aws-sqs", "options": { "queue-url": queue } }] } } }),
    );
    let mut d = spawn_run_with(&tb, &instance, &config, &["--termination-budget", "2"]);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    terminate_in_group(&tb.autoscaling, &instance.meta.instance_id).await;
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    let log = d.log();
    let all = actions(&tb).await;
    let [action] = all.as_slice() else {
        panic!("one lifecycle action expected: {all:?}");
    };
    assert_eq!(action.result.as_deref(), Some("ABANDON"), "{log}");
    assert_eq!(action.how.as_deref(), Some("completed"), "{log}");
    assert!(action.heartbeats >= 1, "{action:?}");
    let line = log
        .lines()
        .find(|l| l.contains("completed with ABANDON"))
        .unwrap_or_else(|| panic!("no ABANDON line: {log}"));
    assert!(
        line.contains("the terminating hooks failed: [game]"),
        "{line}"
    );
    assert!(line.contains("exited with 3"), "{line}");

    let events = events(&tb, &queue).await;
    let reason = &event(&events, "terminating")["lifecycle_action"];
    assert_eq!(reason["result"], "ABANDON");
    assert!(
        reason["reason"].as_str().unwrap().contains("exited with 3"),
        "{reason}"
    );
}

/// A launch hook: the instance waits in Pending:Wait until every domain is
/// up (after the `started` hooks), then is put in service.
#[tokio::test]
async fn a_launch_hook_is_completed_after_ready() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = in_group_with_hook(&tb, "warm-up", LAUNCHING, 30, "ABANDON").await;
    let id = &instance.meta.instance_id;
    assert_eq!(
        tb.lifecycle_state(id).await.unwrap().as_deref(),
        Some("Pending:Wait")
    );
    let dir = tempdir();
    let up = dir.path().join("up");
    let config = json_config(
        dir.path(),
        "game",
        json!({ "auto-scaling": { "launch-hook": "warm-up" },
                "domains": { "game": {
            "exec": [{ "on": ["started"], "lines": [ends_after(1.0, &up)] }] } } }),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let double = tb.double.clone().unwrap();
    until("the launch action completed", || {
        let double = double.clone();
        async move {
            double
                .lifecycle_actions()
                .await
                .unwrap()
                .iter()
                .any(|a| a.ended.is_some())
        }
    })
    .await;
    let all = actions(&tb).await;
    let [action] = all.as_slice() else {
        panic!("one lifecycle action expected: {all:?}");
    };
    assert_eq!(action.transition, LAUNCHING);
    assert_eq!(action.result.as_deref(), Some("CONTINUE"), "{}", d.log());
    assert_eq!(action.how.as_deref(), Some("completed"));
    assert!(
        action.ended.unwrap() >= read_time(&up),
        "completed before the started hooks ended"
    );
    assert_eq!(
        tb.lifecycle_state(id).await.unwrap().as_deref(),
        Some("InService")
    );
    stop_cleanly(&mut d).await;
    // A stop is no termination: nothing more is completed.
    assert_eq!(actions(&tb).await.len(), 1);
}

/// Init fails (a `started` hook): the launch is abandoned, so that Auto
/// Scaling replaces the instance instead of keeping one that serves nothing.
#[tokio::test]
async fn a_failed_init_abandons_the_launch() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = in_group_with_hook(&tb, "warm-up", LAUNCHING, 30, "CONTINUE").await;
    let queue = tb.create_queue("events").await.unwrap();
    let dir = tempdir();
    let config = json_config(
        dir.path(),
        "game",
        json!({ "domains": { "game": {
            "exec": [{ "on": ["started"], "lines": [{ "argv": ["/bin/false"] }] }],
            "notify": [{ "backend": "aws-sqs", "options": { "queue-url": queue } }] } } }),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 1, "{}", d.log());
    let log = d.log();
    let all = actions(&tb).await;
    let launch: Vec<_> = all
        .iter()
        .filter(|a| a.instance_id == instance.meta.instance_id)
        .collect();
    let [action] = launch.as_slice() else {
        panic!("one lifecycle action expected: {all:?}");
    };
    assert_eq!(action.result.as_deref(), Some("ABANDON"), "{log}");
    assert_eq!(action.how.as_deref(), Some("completed"), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("lifecycle hook warm-up: completed with ABANDON"))
        .unwrap_or_else(|| panic!("no ABANDON line: {log}"));
    assert!(
        line.contains("(init failed: started hooks failed"),
        "{line}"
    );
    // An abandoned launch ends the instance.
    assert_eq!(
        tb.instance_state(&instance.meta.instance_id).await.unwrap(),
        "terminated"
    );
    let events = events(&tb, &queue).await;
    let failed = &event(&events, "failed")["lifecycle_action"];
    assert_eq!(failed["result"], "ABANDON");
    assert_eq!(failed["transition"], LAUNCHING);
}

/// No lifecycle hook: the look at start is the only Auto Scaling call; the
/// log says Auto Scaling will not wait, and the hooks get today's budget
/// (here 3 s: a 20 s hook is cut). `"auto-scaling": false` makes no call.
#[tokio::test]
async fn without_a_hook_only_the_look_is_made_and_the_budget_stays() {
    let tb = Testbed::start(REGION).await.unwrap();
    let double = tb.double.clone().unwrap();
    let dir = tempdir();
    let slow = json!({ "domains": { "game": {
        "exec": [{ "on": ["terminating"], "lines": [
            { "argv": ["/bin/sleep", "20"] }] }] } } });

    // In a group without hooks.
    let instance = tb.launch_instance("a", None).await.unwrap();
    tb.create_group(GROUP, "a").await.unwrap();
    tb.join_group(GROUP, &instance).await.unwrap();
    double.clear_calls().await.unwrap();
    let config = json_config(dir.path(), "slow", slow.clone());
    let mut d = spawn_run_with(
        &tb,
        &instance,
        &config,
        &["--termination-budget", "3", "--shutdown-reserve", "1"],
    );
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    // The look at start has seen the group (it runs beside bring-up).
    until("the look", || async {
        d.log().contains("Auto Scaling group game")
    })
    .await;
    let started = std::time::Instant::now();
    terminate_in_group(&tb.autoscaling, &instance.meta.instance_id).await;
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    let log = d.log();
    assert!(started.elapsed() < Duration::from_secs(15), "{log}");
    assert!(
        log.contains("Auto Scaling will not wait for the terminating hooks: the group game has no termination lifecycle hook"),
        "{log}"
    );
    assert!(log.contains("hooks get 2s"), "{log}");
    assert_eq!(
        autoscaling_calls(&tb).await,
        ["DescribeAutoScalingInstances", "DescribeLifecycleHooks"]
    );

    // In no group.
    let instance = tb.launch_instance("a", None).await.unwrap();
    double.clear_calls().await.unwrap();
    let mut d = spawn_run_with(&tb, &instance, &config, &["--termination-budget", "3"]);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    instance.imds.set_target_lifecycle_state("Terminated");
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    assert!(
        d.log()
            .contains("this instance is in no Auto Scaling group"),
        "{}",
        d.log()
    );
    assert_eq!(
        autoscaling_calls(&tb).await,
        ["DescribeAutoScalingInstances"]
    );

    // Turned off.
    let mut off = slow;
    off["auto-scaling"] = json!(false);
    let config = json_config(dir.path(), "off", off);
    let instance = tb.launch_instance("a", None).await.unwrap();
    double.clear_calls().await.unwrap();
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    stop_cleanly(&mut d).await;
    assert_eq!(autoscaling_calls(&tb).await, Vec::<String>::new());
}

/// A spot notice while a long termination hook runs moves the deadline up
/// to the notice's: the hooks are cut by it, not by the hook's timeout.
#[tokio::test]
async fn a_spot_notice_during_a_termination_moves_the_deadline_up() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = in_group_with_hook(&tb, "drain", TERMINATING, 60, "CONTINUE").await;
    let dir = tempdir();
    let begun = dir.path().join("begun");
    let config = json_config(
        dir.path(),
        "game",
        json!({ "domains": { "game": {
            "exec": [{ "on": ["terminating"], "lines": [{ "argv": ["/bin/sh", "-c",
                format!("touch {}; exec sleep 60", begun.display())] }] }] } } }),
    );
    let mut d = spawn_run_with(&tb, &instance, &config, &["--shutdown-reserve", "1"]);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    terminate_in_group(&tb.autoscaling, &instance.meta.instance_id).await;
    wait_for_file(&begun).await;
    let noticed = unix_now();
    instance.imds.raise_spot_interruption("terminate", 4);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    let log = d.log();
    assert!(
        log.contains("the deadline moves up to the spot notice"),
        "{log}"
    );
    assert!(unix_now() - noticed < 20.0, "{log}");
    // The hook was cut: ABANDON, at once.
    let all = actions(&tb).await;
    assert_eq!(all[0].result.as_deref(), Some("ABANDON"), "{log}");
    assert_eq!(all[0].how.as_deref(), Some("completed"), "{log}");
}

/// `drill --event terminating` on an instance whose group has a
/// termination hook: the hook's time is the budget, the hooks are timed
/// against it, and only reads are sent to AWS; in no group, 120 s. The
/// default drill names the budget a termination would give.
#[tokio::test]
async fn drill_reports_the_termination_budget() {
    let tb = Testbed::start(REGION).await.unwrap();
    let double = tb.double.clone().unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    tb.create_group(GROUP, "a").await.unwrap();
    // Global timeout: 100 heartbeat timeouts.
    tb.put_lifecycle_hook(GROUP, "drain", TERMINATING, 6, "CONTINUE")
        .await
        .unwrap();
    tb.join_group(GROUP, &instance).await.unwrap();
    let dir = tempdir();
    let config = json_config(
        dir.path(),
        "game",
        json!({ "domains": { "game": { "exec": [
            { "on": ["terminating"], "lines": [{ "argv": ["/bin/echo", "saving"] }] },
            { "on": ["interrupted"], "lines": [{ "argv": ["/bin/true"] }] }] } } }),
    );
    let config = config.display().to_string();
    let env = tb.daemon_env(&instance);
    double.clear_calls().await.unwrap();
    let (code, out, err) = ec2fleetd_async(
        &["drill", "--config", &config, "--event", "terminating"],
        &env,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(
            "the group game's termination lifecycle hook drain (heartbeat timeout 6s, at most 600s"
        ),
        "{out}"
    );
    assert!(
        out.contains("the instance goes in 600s; hooks get 590s"),
        "{out}"
    );
    assert!(out.contains("fits: the slowest domain"), "{out}");
    assert!(
        err.contains("saving"),
        "the terminating hook did not run: {err}"
    );

    let (code, out, err) = ec2fleetd_async(&["drill", "--config", &config], &env).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("an Auto Scaling termination would give the terminating hooks 590s"),
        "{out}"
    );
    let calls: Vec<String> = double
        .calls()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.action)
        .collect();
    assert!(!calls.is_empty());
    assert!(
        calls.iter().all(|a| a.starts_with("Describe")),
        "the drill changed something: {calls:?}"
    );

    let alone = tb.launch_instance("a", None).await.unwrap();
    let (code, out, err) = ec2fleetd_async(
        &["drill", "--config", &config, "--event", "terminating"],
        &tb.daemon_env(&alone),
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Auto Scaling will not wait: this instance is in no Auto Scaling group): the instance goes in 120s; hooks get 110s"),
        "{out}"
    );
}

/// A heartbeat refused for good (here AccessDenied) brings the deadline up
/// to the moment Auto Scaling stops waiting: the hooks are cut by it, and
/// the action is still completed (ABANDON: a hook was cut).
#[tokio::test]
async fn a_refused_heartbeat_brings_the_deadline_up() {
    let tb = Testbed::start(REGION).await.unwrap();
    // A heartbeat timeout of 5 s and a reserve of 2: room for a loaded
    // machine between the cut hooks and the action's timeout.
    let instance = in_group_with_hook(&tb, "drain", TERMINATING, 5, "ABANDON").await;
    tb.double
        .as_ref()
        .unwrap()
        .configure(json!({ "fail_next": { "RecordLifecycleActionHeartbeat":
            { "count": 1, "status": 400, "code": "AccessDenied" } } }))
        .await
        .unwrap();
    let dir = tempdir();
    let config = json_config(
        dir.path(),
        "game",
        json!({ "domains": { "game": { "exec": [{ "on": ["terminating"], "lines": [
            { "argv": ["/bin/sleep", "30"] }] }] } } }),
    );
    let mut d = spawn_run_with(&tb, &instance, &config, &["--shutdown-reserve", "2"]);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    until("the look", || async {
        d.log().contains("Auto Scaling group game")
    })
    .await;
    let asked = std::time::Instant::now();
    terminate_in_group(&tb.autoscaling, &instance.meta.instance_id).await;
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    let log = d.log();
    // Cut near the five-second timeout, not after the 500 s global one.
    assert!(asked.elapsed() < Duration::from_secs(15), "{log}");
    assert!(log.contains("heartbeat refused (AccessDenied"), "{log}");
    assert!(
        log.contains("the deadline moves up to the lifecycle action's timeout"),
        "{log}"
    );
    let all = actions(&tb).await;
    assert_eq!(all[0].heartbeats, 0, "{all:?}");
    assert_eq!(all[0].how.as_deref(), Some("completed"), "{log}");
    assert_eq!(all[0].result.as_deref(), Some("ABANDON"), "{log}");
}

//! Volume pools in a fleet: races, kills, rollbacks, data that follows its
//! volume. All on the AWS test double.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;

use super::common::*;

const REGION: &str = "us-east-1";

/// No volume of the pool carries a transaction mark.
fn assert_committed(volumes: &[ec2fleetd_testbed::world::PoolVolume]) {
    for v in volumes {
        assert_eq!(
            v.tag("user:ec2fd.transc-id"),
            None,
            "stale transaction mark on {v:?}"
        );
        assert_eq!(
            v.tag("user:ec2fd.in-transit"),
            None,
            "stale in-transit mark on {v:?}"
        );
    }
}

/// 30 instances boot at once against a pool of 10 volumes in zone a and 5
/// in zone b; those left without a pool volume create one.
#[tokio::test]
async fn a_fleet_races_for_a_pool_across_two_zones() {
    let tb = Testbed::start(REGION).await.unwrap();
    let double = tb.double.clone().unwrap();
    double
        .configure(json!({"delays": {"attach": 0.2, "volume_create": 0.2, "device": 0.05}}))
        .await
        .unwrap();
    for _ in 0..10 {
        tb.create_pool_volume("a", "game", "worlds").await.unwrap();
    }
    for _ in 0..5 {
        tb.create_pool_volume("b", "game", "worlds").await.unwrap();
    }
    let fleet = tb.launch_fleet(30, &["a", "b"]).await.unwrap();
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        "game.jsonc",
        r#"{ "domains": { "game": { "attach-volume": [{
            "device": "/dev/xvdf", "source": "pc", "pool-name": "worlds",
            "create": { "Size": 8, "VolumeType": "gp3" } }] } } }"#,
    );
    double.clear_calls().await.unwrap();
    let started = Instant::now();
    let mut daemons: Vec<_> = fleet.iter().map(|i| spawn_run(&tb, i, &config)).collect();
    for d in &mut daemons {
        d.wait_ready(Duration::from_secs(180)).await.unwrap();
    }
    let took = started.elapsed();
    eprintln!("30 daemons up against a pool of 15 in {took:?}");
    // Measured about 5 s on 2 cores; the bound only catches a herd that
    // serialises or retries for minutes.
    assert!(took < Duration::from_secs(90), "{took:?}");

    let volumes = tb.pool_volumes("game", "worlds").await.unwrap();
    assert_eq!(
        volumes.len(),
        30,
        "15 from the pool, 15 created: {volumes:#?}"
    );
    for inst in &fleet {
        let held: Vec<_> = volumes
            .iter()
            .filter(|v| v.attached_to.contains(&inst.meta.instance_id))
            .collect();
        assert_eq!(held.len(), 1, "{} holds {held:?}", inst.meta.instance_id);
        assert_eq!(held[0].zone, inst.meta.zone, "a volume of another zone");
    }
    for v in &volumes {
        assert_eq!(v.attached_to.len(), 1, "{v:?}");
    }
    assert_committed(&volumes);
    let created = |zone: &str| {
        volumes
            .iter()
            .filter(|v| v.zone.ends_with(zone) && v.tag("user:ec2fd.ts-used").is_some())
            .count()
    };
    assert_eq!(
        created("a") + created("b"),
        30,
        "every claim and creation is time-stamped"
    );
    let calls = double.calls().await.unwrap();
    let creates = calls
        .iter()
        .filter(|c| c.action == "CreateVolume" && c.outcome == "answered")
        .count();
    assert_eq!(
        creates, 15,
        "only the instances the pool could not serve created a volume"
    );
    for d in &mut daemons {
        d.signal(Signal::SIGTERM).unwrap();
    }
    for d in &mut daemons {
        assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0);
    }
}

/// With only the pool as a source, the losers fail cleanly and leave no marks.
#[tokio::test]
async fn losers_without_another_source_fail_cleanly() {
    let tb = Testbed::start(REGION).await.unwrap();
    for _ in 0..2 {
        tb.create_pool_volume("a", "node", "chain").await.unwrap();
    }
    let fleet = tb.launch_fleet(4, &["a"]).await.unwrap();
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        "node.jsonc",
        r#"{ "domains": { "node": { "attach-volume": [{ "device": "/dev/xvdf", "source": "p", "pool-name": "chain" }] } } }"#,
    );
    let mut daemons: Vec<_> = fleet.iter().map(|i| spawn_run(&tb, i, &config)).collect();
    let mut codes = Vec::new();
    for d in &mut daemons {
        match d.wait_ready(Duration::from_secs(60)).await {
            Ok(()) => codes.push(0),
            Err(_) => {
                codes.push(d.wait_exit(EXIT_TIMEOUT).await.unwrap());
                assert!(d.log().contains("no free volume"), "{}", d.log());
            }
        }
    }
    codes.sort();
    assert_eq!(codes, [0, 0, 1, 1]);
    let volumes = tb.pool_volumes("node", "chain").await.unwrap();
    assert!(
        volumes.iter().all(|v| v.attached_to.len() == 1),
        "{volumes:?}"
    );
    assert_committed(&volumes);
}

/// SIGKILL at random points of init, 20 times, then a clean run: one volume
/// per domain, no leaked created volume, no stale mark.
#[tokio::test]
async fn killed_runs_converge() {
    let tb = Testbed::start(REGION).await.unwrap();
    tb.double
        .as_ref()
        .unwrap()
        .configure(json!({"delays": {"attach": 0.15, "volume_create": 0.15, "device": 0.05}}))
        .await
        .unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    tb.create_pool_volume("a", "game", "worlds").await.unwrap();
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        "two.jsonc",
        r#"{ "domains": {
            "game": { "attach-volume": [{ "device": "/dev/xvdf", "source": "p", "pool-name": "worlds" }] },
            "db": { "attach-volume": [{ "device": "/dev/xvdg", "source": "c", "pool-name": "data",
                                        "create": { "Size": 4 } }] } } }"#,
    );
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut cleaned_up = 0;
    for trial in 0..20 {
        let mut d = spawn_run(&tb, &instance, &config);
        // Init takes about half a second with these delays.
        let at = Duration::from_millis(rng.u64(0..700));
        tokio::time::sleep(at).await;
        d.signal(Signal::SIGKILL).unwrap();
        let _ = d.wait_exit(EXIT_TIMEOUT).await;
        let ready = d.notify.messages().iter().any(|m| m == "READY=1");
        cleaned_up += usize::from(d.log().contains("interrupted run"));
        eprintln!(
            "trial {trial}: killed after {at:?}{}",
            if ready { ", after READY" } else { "" }
        );
    }
    assert!(
        cleaned_up > 0,
        "no trial left anything to clean up: the kills missed init"
    );
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    d.signal(Signal::SIGTERM).unwrap();
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());

    let id = &instance.meta.instance_id;
    let game = tb.pool_volumes("game", "worlds").await.unwrap();
    assert_eq!(game.len(), 1);
    assert_eq!(game[0].attached_to, vec![id.to_string()]);
    let data = tb.pool_volumes("db", "data").await.unwrap();
    assert_eq!(data.len(), 1, "a created volume leaked: {data:#?}");
    assert_eq!(data[0].attached_to, vec![id.to_string()]);
    assert_committed(&game);
    assert_committed(&data);
}

/// A hook for the data test: prints what the device holds, then writes
/// who had it.
fn data_hook(dir: &Path, log: &Path) -> std::path::PathBuf {
    let path = dir.join("data-hook");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n# $1 = device, $2 = instance\nprintf 'read by %s: %s\\n' \"$2\" \"$(head -c 64 \"$1\" | tr -d '\\000')\" >> '{}'\nprintf 'written by %s' \"$2\" | dd of=\"$1\" conv=notrunc status=none\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The successor boots while its predecessor still holds the only pool
/// volume; the predecessor is interrupted and releases it (`detach-on`);
/// the successor, waiting (`wait-available`), claims it and reads what the
/// predecessor wrote.
#[tokio::test]
async fn data_follows_the_volume_to_a_waiting_successor() {
    let tb = Testbed::start(REGION).await.unwrap();
    let double = tb.double.clone().unwrap();
    double
        .configure(json!({"delays": {"attach": 0.2, "detach": 0.3, "device": 0.1}}))
        .await
        .unwrap();
    let volume = tb.create_pool_volume("a", "mc", "worlds").await.unwrap();
    let fleet = tb.launch_fleet(2, &["a"]).await.unwrap();
    let (old, new) = (&fleet[0], &fleet[1]);
    let dir = tempdir();
    let log = dir.path().join("data.log");
    let hook = data_hook(dir.path(), &log);
    let config = write_config(
        dir.path(),
        "mc.jsonc",
        &format!(
            r#"{{ "domains": {{ "mc": {{ "attach-volume": [{{
                "device": "/dev/xvdf", "source": "p", "pool-name": "worlds",
                "wait-available": 60, "detach-on": ["interrupted"],
                "exec": [{{ "lines": [{{ "argv": ["{hook}", "{{attached_device}}", "{{instance_id}}"] }}] }}] }}],
                "exec": [{{ "on": ["interrupted"], "lines": [{{ "argv": ["/bin/true"] }}] }}] }} }} }}"#,
            hook = hook.display()
        ),
    );
    let mut first = spawn_run(&tb, old, &config);
    first.wait_ready(READY_TIMEOUT).await.unwrap();
    let mut second = spawn_run(&tb, new, &config);
    // The successor waits: the volume is still held.
    for _ in 0..600 {
        if second.log().contains("waiting up to") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(second.log().contains("waiting up to"), "{}", second.log());
    assert!(
        !second.notify.messages().iter().any(|m| m == "READY=1"),
        "{}",
        second.log()
    );

    old.imds.raise_spot_interruption("terminate", 120);
    assert_eq!(
        first.wait_exit(EXIT_TIMEOUT).await.unwrap(),
        0,
        "{}",
        first.log()
    );
    second.wait_ready(READY_TIMEOUT).await.unwrap();

    assert!(
        first.log().contains(&format!("{volume} is detached")),
        "{}",
        first.log()
    );
    let attachments = tb.attachments(&volume).await.unwrap();
    assert_eq!(attachments.len(), 1);
    assert_eq!(attachments[0].0, new.meta.instance_id);
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        lines,
        [
            format!("read by {}: ", old.meta.instance_id),
            format!(
                "read by {}: written by {}",
                new.meta.instance_id, old.meta.instance_id
            ),
        ]
    );
    let forced = double
        .calls()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.action == "DetachVolume" && c.params["Force"] == "true")
        .count();
    assert_eq!(forced, 0, "a volume was force-detached");
    stop_cleanly(&mut second).await;
}

/// If the interrupted hooks fail (the volume may still be mounted), the
/// volume is not released.
#[tokio::test]
async fn failed_hooks_keep_the_volume_attached() {
    let tb = Testbed::start(REGION).await.unwrap();
    let volume = tb.create_pool_volume("a", "mc", "worlds").await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        "mc.jsonc",
        r#"{ "domains": { "mc": {
            "attach-volume": [{ "device": "/dev/xvdf", "source": "p", "pool-name": "worlds", "detach-on": ["interrupted"] }],
            "exec": [{ "on": ["interrupted"], "lines": [{ "argv": ["/bin/false"] }] }] } } }"#,
    );
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    instance.imds.raise_spot_interruption("terminate", 120);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0);
    assert!(d.log().contains("stays attached"), "{}", d.log());
    assert_eq!(tb.attachments(&volume).await.unwrap().len(), 1);
}

/// A critical failure undoes the domain's work (detach, delete what was
/// created); the same failure marked non-critical is tolerated.
#[tokio::test]
async fn critical_failure_rolls_back_and_non_critical_is_tolerated() {
    let tb = Testbed::start(REGION).await.unwrap();
    let double = tb.double.clone().unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let config = |critical: bool| {
        format!(
            r#"{{ "domains": {{ "app": {{ "attach-volume": [
                {{ "device": "/dev/xvdf", "source": "c", "pool-name": "data", "create": {{ "Size": 4 }} }},
                {{ "device": "/dev/xvdg", "source": "x", "volume-id": "vol-0000000000000000f", "critical": {critical} }} ] }} }} }}"#
        )
    };
    let critical = write_config(dir.path(), "critical.jsonc", &config(true));
    let mut d = spawn_run(&tb, &instance, &critical);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 1, "{}", d.log());
    assert!(
        d.log().contains("vol-0000000000000000f does not exist"),
        "{}",
        d.log()
    );
    assert!(
        tb.pool_volumes("app", "data").await.unwrap().is_empty(),
        "the created volume was not deleted"
    );
    let calls = double.calls().await.unwrap();
    let actions: Vec<&str> = calls
        .iter()
        .filter(|c| c.is_mutating())
        .map(|c| c.action.as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "RunInstances",
            "CreateVolume",
            "AttachVolume",
            "DetachVolume",
            "DeleteVolume"
        ]
    );

    let tolerant = write_config(dir.path(), "tolerant.jsonc", &config(false));
    let mut d = spawn_run(&tb, &instance, &tolerant);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    assert!(
        d.log().contains("non-critical volume /dev/xvdg skipped"),
        "{}",
        d.log()
    );
    let data = tb.pool_volumes("app", "data").await.unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(
        data[0].attached_to,
        vec![instance.meta.instance_id.to_string()]
    );
    assert_committed(&data);
    stop_cleanly(&mut d).await;
}

/// A restarted daemon finds the pool volume it holds and changes nothing.
#[tokio::test]
async fn second_run_on_a_pool_changes_nothing_in_ec2() {
    let tb = Testbed::start(REGION).await.unwrap();
    let double = tb.double.clone().unwrap();
    tb.create_pool_volume("a", "mc", "worlds").await.unwrap();
    tb.create_pool_volume("a", "mc", "worlds").await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        "mc.jsonc",
        r#"{ "domains": { "mc": { "attach-volume": [{ "device": "/dev/xvdf", "source": "pc", "pool-name": "worlds",
            "create": { "Size": 4 } }] } } }"#,
    );
    for round in ["first", "second"] {
        double.clear_calls().await.unwrap();
        let mut d = spawn_run(&tb, &instance, &config);
        d.wait_ready(READY_TIMEOUT).await.unwrap();
        d.signal(Signal::SIGTERM).unwrap();
        assert_eq!(
            d.wait_exit(EXIT_TIMEOUT).await.unwrap(),
            0,
            "{round}: {}",
            d.log()
        );
    }
    let changes: Vec<String> = double
        .calls()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.service == "ec2" && c.is_mutating())
        .map(|c| c.action)
        .collect();
    assert!(
        changes.is_empty(),
        "the second run changed EC2: {changes:?}"
    );
    let volumes = tb.pool_volumes("mc", "worlds").await.unwrap();
    assert_eq!(volumes.len(), 2, "nothing was created");
    assert_eq!(
        volumes.iter().filter(|v| !v.attached_to.is_empty()).count(),
        1
    );
}

/// The init timeout cuts a volume hook that hangs: what the domain attached
/// and created is rolled back before the failed path.
#[tokio::test]
async fn init_timeout_rolls_back_the_domain() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let given = tb.create_volume("a", 4).await.unwrap();
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        "slow.jsonc",
        &format!(
            r#"{{ "timeout": 3, "domains": {{ "app": {{ "attach-volume": [
                {{ "device": "/dev/xvdf", "source": "x", "volume-id": "{given}" }},
                {{ "device": "/dev/xvdg", "source": "c", "pool-name": "data", "create": {{ "Size": 4 }},
                   "exec": [{{ "lines": [{{ "argv": ["/bin/sleep", "60"] }}] }}] }} ] }} }} }}"#
        ),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 1, "{}", d.log());
    assert!(d.log().contains("timeout of 3s"), "{}", d.log());
    assert!(
        tb.pool_volumes("app", "data").await.unwrap().is_empty(),
        "the created volume was left: {}",
        d.log()
    );
    assert!(
        tb.attachments(&given).await.unwrap().is_empty(),
        "the given volume stayed attached: {}",
        d.log()
    );
}

/// AttachVolume succeeds but its answer is lost; the SDK's retry is told
/// `VolumeInUse`. The daemon must see the volume is attached here, not go
/// looking for another.
#[tokio::test]
async fn a_lost_attach_answer_is_still_a_win() {
    let tb = Testbed::start(REGION).await.unwrap();
    let double = tb.double.clone().unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let volume = tb.create_pool_volume("a", "mc", "worlds").await.unwrap();
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        "mc.jsonc",
        r#"{ "domains": { "mc": { "attach-volume": [{ "device": "/dev/xvdf", "source": "pc", "pool-name": "worlds",
            "create": { "Size": 4 } }] } } }"#,
    );
    double
        .configure(json!({"lose_answer_next": {"AttachVolume": 1}}))
        .await
        .unwrap();
    double.clear_calls().await.unwrap();
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let calls = double.calls().await.unwrap();
    assert!(
        calls.iter().any(|c| c.outcome == "answer lost"),
        "the fault was not injected"
    );
    assert!(
        !calls.iter().any(|c| c.action == "CreateVolume"),
        "a second volume was created"
    );
    let volumes = tb.pool_volumes("mc", "worlds").await.unwrap();
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0].volume_id, volume);
    assert_eq!(
        volumes[0].attached_to,
        vec![instance.meta.instance_id.to_string()]
    );
    assert_committed(&volumes);
    stop_cleanly(&mut d).await;
}

/// The pool cannot be read (AWS keeps failing): the daemon must not fall
/// through to creating an empty volume while the data volume sits in the pool.
#[tokio::test]
async fn an_aws_error_in_the_pool_does_not_create_an_empty_volume() {
    let tb = Testbed::start(REGION).await.unwrap();
    let double = tb.double.clone().unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    tb.create_pool_volume("a", "mc", "worlds").await.unwrap();
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        "mc.jsonc",
        r#"{ "domains": { "mc": { "attach-volume": [{ "device": "/dev/xvdf", "source": "pc", "pool-name": "worlds",
            "create": { "Size": 4 } }] } } }"#,
    );
    // Reading the pool fails (a missing permission: not retried), then,
    // once it can be read, claiming its volume does.
    for action in ["DescribeVolumes", "AttachVolume"] {
        double
            .configure(json!({"fail_next": {action: {"count": 50, "status": 400, "code": "UnauthorizedOperation"}}}))
            .await
            .unwrap();
        double.clear_calls().await.unwrap();
        let mut d = spawn_run(&tb, &instance, &config);
        assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 1, "{}", d.log());
        assert!(
            d.log().contains("later sources are not tried"),
            "{action}: {}",
            d.log()
        );
        let calls = double.calls().await.unwrap();
        assert!(
            calls
                .iter()
                .any(|c| c.action == action && c.outcome == "UnauthorizedOperation"),
            "{action} never failed: the test shows nothing"
        );
        assert!(
            !calls.iter().any(|c| c.action == "CreateVolume"),
            "{action}: an empty volume was created"
        );
        double
            .configure(json!({"fail_next": {action: {"count": 0}}}))
            .await
            .unwrap();
    }
}

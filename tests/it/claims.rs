//! Promises of the README and of doc/*.md that no other test proved, each
//! test quoting the promise it proves, grouped by the doc it is in.

use std::path::Path;
use std::time::{Duration, Instant};

use ec2fleetd_testbed::double::Call;
use nix::sys::signal::Signal;
use serde_json::json;

use super::common::*;

const REGION: &str = "us-east-1";
const TRANSACTION: &str = "user:ec2fd.transc-id";

/// A hook line that appends `WHAT UNIX_TIME` to `file`.
fn stamp(file: &Path, what: &str) -> serde_json::Value {
    json!({ "argv": ["/bin/sh", "-c", format!("echo {what} $(date +%s.%N) >> '{}'", file.display())] })
}

/// The times `stamp` wrote under `what`, in order.
fn stamps(file: &Path, what: &str) -> Vec<f64> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(w, _)| *w == what)
        .map(|(_, t)| t.trim().parse().unwrap())
        .collect()
}

async fn calls(tb: &Testbed) -> Vec<Call> {
    tb.double.as_ref().unwrap().calls().await.unwrap()
}

/// The calls of `action` (on `volume`, if given).
fn of<'a>(calls: &'a [Call], action: &str, volume: Option<&str>) -> Vec<&'a Call> {
    calls
        .iter()
        .filter(|c| c.action == action)
        .filter(|c| volume.is_none_or(|v| c.params["VolumeId"] == v))
        .collect()
}

/// Attaches `volume` to `holder` as someone else would.
async fn attach_elsewhere(tb: &Testbed, volume: &str, holder: &SimInstance) {
    tb.ec2
        .attach_volume()
        .volume_id(volume)
        .instance_id(&holder.meta.instance_id)
        .device("/dev/sdk")
        .send()
        .await
        .unwrap();
}

// ---------------------------------------------------------------- README.md

/// README: "Every domain (application) is brought up in parallel".
#[tokio::test]
async fn domains_are_brought_up_in_parallel() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let times = dir.path().join("times");
    let slow = |name: &str| {
        json!({ "exec": [{ "on": ["starting"], "lines": [
            stamp(&times, name), { "argv": ["/bin/sleep", "2"] } ] }] })
    };
    let config = json_config(
        dir.path(),
        "two",
        json!({ "domains": { "one": slow("one"), "two": slow("two") } }),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let (one, two) = (stamps(&times, "one"), stamps(&times, "two"));
    assert_eq!((one.len(), two.len()), (1, 1), "{}", d.log());
    // One after the other, the second would start 2 s after the first.
    assert!(
        (one[0] - two[0]).abs() < 1.0,
        "the domains' starting hooks began {:.2}s apart\n{}",
        (one[0] - two[0]).abs(),
        d.log()
    );
    stop_cleanly(&mut d).await;
}

/// README: "`starting` hooks; its volumes attached … then the volumes'
/// hooks (fsck, mount); its Route53 A/AAAA records pointed at the
/// instance", and config.md: "Bring-up order within a domain: `starting`
/// hooks, the volumes in order (each with its hooks), the records."
#[tokio::test]
async fn a_domain_comes_up_hooks_then_volumes_in_order_then_records() {
    let tb = Testbed::start(REGION).await.unwrap();
    let zone = tb.create_hosted_zone("example.com").await.unwrap();
    let first = tb.create_volume("a", 4).await.unwrap();
    let second = tb.create_volume("a", 4).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let times = dir.path().join("times");
    let volume = |device: &str, id: &str, name: &str| {
        json!({ "device": device, "source": "x", "volume-id": id,
                "exec": [{ "lines": [stamp(&times, name)] }] })
    };
    let config = json_config(
        dir.path(),
        "app",
        json!({ "domains": { "app": {
            "exec": [{ "on": ["starting"], "lines": [stamp(&times, "starting")] }],
            "attach-volume": [volume("/dev/xvdf", &first, "first"), volume("/dev/xvdg", &second, "second")],
            "update-route53": [{ "hostedzone": zone, "name": "app.example.com" }] } } }),
    );
    tb.double.as_ref().unwrap().clear_calls().await.unwrap();
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let log = d.log();
    let calls = calls(&tb).await;
    let t = |action: &str, volume: Option<&str>| {
        of(&calls, action, volume)
            .first()
            .unwrap_or_else(|| panic!("no {action} {volume:?}\n{log}"))
            .t
    };
    let stamp1 = |what: &str| {
        let s = stamps(&times, what);
        assert_eq!(s.len(), 1, "{what}: {s:?}\n{log}");
        s[0]
    };
    let starting = stamp1("starting");
    let (hook1, hook2) = (stamp1("first"), stamp1("second"));
    assert!(
        starting < t("AttachVolume", None),
        "a volume was attached before the starting hooks ran\n{log}"
    );
    assert!(
        t("AttachVolume", Some(&first)) < hook1 && hook1 < t("AttachVolume", Some(&second)),
        "the second volume was attached before the first one's hooks ran\n{log}"
    );
    assert!(
        hook2 < t("ChangeResourceRecordSets", None),
        "the records were set before the last volume's hooks ran\n{log}"
    );
    stop_cleanly(&mut d).await;
}

/// README: "`ec2fleetd run` (config from the user data)": user data that
/// is not gzipped is read as it is.
#[tokio::test]
async fn plain_user_data_is_the_config() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let log = dir.path().join("hooks.log");
    let hook = recorder(dir.path(), &log).display().to_string();
    let config = format!(
        r#"{{ // plain JSONC, not gzipped
  "domains": {{ "web": {{ "exec": [{{ "on": ["started"], "lines": [{{ "argv": ["{hook}", "{{daemon_state}}"] }}] }}] }} }} }}"#
    );
    instance.imds.set_user_data(config.into_bytes());
    let mut d = DaemonProcess::spawn(
        &daemon_bin(),
        &["run", "--keep-hostname"],
        &tb.daemon_env(&instance),
        false,
    )
    .unwrap();
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let states: Vec<String> = recorded(&log).into_iter().map(|c| c[1].clone()).collect();
    assert_eq!(states, ["started"], "{}", d.log());
    stop_cleanly(&mut d).await;
}

/// cli.md, exit status 78: user data that is neither UTF-8 text nor gzip
/// is a bad config (`startup.rs`: "neither UTF-8 text nor gzip of it").
#[tokio::test]
async fn user_data_neither_text_nor_gzip_is_a_config_error() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    instance
        .imds
        .set_user_data(vec![b'{', 0xff, 0xfe, 0x80, b'}']);
    let mut d = DaemonProcess::spawn(
        &daemon_bin(),
        &["run", "--keep-hostname"],
        &tb.daemon_env(&instance),
        false,
    )
    .unwrap();
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 78, "{}", d.log());
    assert!(
        d.log().contains("neither UTF-8 text nor gzip"),
        "{}",
        d.log()
    );
    let mutating: Vec<String> = calls(&tb)
        .await
        .into_iter()
        .filter(|c| c.is_mutating() && c.action != "RunInstances")
        .map(|c| c.action)
        .collect();
    assert!(mutating.is_empty(), "{mutating:?}");
}

/// README: "IMDS is polled (every second by default) … less often for a
/// rebalance recommendation (every 5 s) and scheduled maintenance (every
/// 10 s)", and cli.md `--poll-interval`: "a rebalance recommendation is
/// looked for every 5th time, scheduled maintenance every 10th".
#[tokio::test]
async fn imds_is_polled_at_the_documented_cadence() {
    const SPOT: &str = "meta-data/spot/instance-action";
    const PATHS: [&str; 4] = [
        SPOT,
        "meta-data/autoscaling/target-lifecycle-state",
        "meta-data/events/recommendations/rebalance",
        "meta-data/events/maintenance/scheduled",
    ];
    const TICKS: u64 = 40;
    let tb = Testbed::start(REGION).await.unwrap();
    let fleet = tb.launch_fleet(2, &["a"]).await.unwrap();
    let (fast, default) = (&fleet[0], &fleet[1]);
    let dir = tempdir();
    let config = json_config(dir.path(), "app", json!({ "domains": { "app": {} } }));
    let mut a = spawn_run_with(&tb, fast, &config, &["--poll-interval", "0.1"]);
    let mut b = spawn_run(&tb, default, &config);
    a.wait_ready(READY_TIMEOUT).await.unwrap();
    b.wait_ready(READY_TIMEOUT).await.unwrap();
    let counts = |i: &SimInstance| PATHS.map(|p| i.imds.requests_for(p));
    let (a0, b0, t0) = (counts(fast), counts(default), Instant::now());
    let deadline = t0 + Duration::from_secs(30);
    while fast.imds.requests_for(SPOT) < a0[0] + TICKS {
        assert!(Instant::now() < deadline, "{}", a.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (a1, b1, elapsed) = (counts(fast), counts(default), t0.elapsed().as_secs_f64());
    let da: Vec<i64> = (0..4).map(|i| (a1[i] - a0[i]) as i64).collect();
    let want = [TICKS, TICKS, TICKS / 5, TICKS / 10];
    for i in 0..4 {
        assert!(
            (da[i] - want[i] as i64).abs() <= 1,
            "--poll-interval 0.1: {} was asked {} times in {TICKS} ticks, not about {}",
            PATHS[i],
            da[i],
            want[i]
        );
    }
    let spot_b = (b1[0] - b0[0]) as f64;
    assert!(
        (spot_b - elapsed).abs() <= 1.5,
        "by default: {spot_b} spot looks in {elapsed:.1}s, not one a second"
    );
    stop_cleanly(&mut a).await;
    stop_cleanly(&mut b).await;
}

// -------------------------------------------------------------- volumes.md

/// volumes.md: "Only volumes in the instance's Availability Zone are
/// candidates, and only those `available` (not attached, not being
/// created) and not marked `in-transit`."
#[tokio::test]
async fn in_transit_and_creating_volumes_are_not_candidates() {
    use aws_sdk_ec2::types::Tag;
    let tb = Testbed::start(REGION).await.unwrap();
    let double = tb.double.clone().unwrap();
    let plain = tb.create_pool_volume("a", "app", "data").await.unwrap();
    let in_transit = tb.create_pool_volume("a", "app", "data").await.unwrap();
    double
        .configure(json!({ "delays": { "volume_create": 30 } }))
        .await
        .unwrap();
    let creating = tb.create_pool_volume("a", "app", "data").await.unwrap();
    double
        .configure(json!({ "delays": { "volume_create": 0 } }))
        .await
        .unwrap();
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
    tb.ec2
        .create_tags()
        .resources(&in_transit)
        .tags(tag("user:ec2fd.in-transit", "true"))
        .tags(tag(TRANSACTION, "i-0ther-app-1"))
        .send()
        .await
        .unwrap();
    // Least recently used first, and the plain volume was used just now:
    // were the others candidates, they would be tried before it.
    tb.ec2
        .create_tags()
        .resources(&plain)
        .tags(tag("user:ec2fd.ts-used", "4000000000"))
        .send()
        .await
        .unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let config = json_config(
        dir.path(),
        "app",
        json!({ "domains": { "app": { "attach-volume": [{ "device": "/dev/xvdf", "source": "p",
            "pool-name": "data", "pool-pref": "least-recently-used" }] } } }),
    );
    double.clear_calls().await.unwrap();
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let calls = calls(&tb).await;
    let attached: Vec<&str> = of(&calls, "AttachVolume", None)
        .iter()
        .map(|c| c.params["VolumeId"].as_str().unwrap())
        .collect();
    assert_eq!(attached, [plain.as_str()], "{}", d.log());
    assert_eq!(
        tb.attachments(&plain).await.unwrap()[0].0,
        instance.meta.instance_id
    );
    for other in [&in_transit, &creating] {
        assert!(tb.attachments(other).await.unwrap().is_empty(), "{other}");
    }
    stop_cleanly(&mut d).await;
}

/// volumes.md: "`wait-available` (seconds) keeps trying the pool until a
/// volume frees up, with backoff, and says so in the log and in systemd's
/// status line; after it, the next source is tried."
#[tokio::test]
async fn after_wait_available_the_next_source_is_tried() {
    let tb = Testbed::start(REGION).await.unwrap();
    let held = tb.create_pool_volume("a", "app", "data").await.unwrap();
    let fleet = tb.launch_fleet(2, &["a"]).await.unwrap();
    attach_elsewhere(&tb, &held, &fleet[1]).await;
    let dir = tempdir();
    let config = json_config(
        dir.path(),
        "app",
        json!({ "domains": { "app": { "attach-volume": [{ "device": "/dev/xvdf", "source": "pc",
            "pool-name": "data", "wait-available": 2, "create": { "Size": 4 } }] } } }),
    );
    tb.double.as_ref().unwrap().clear_calls().await.unwrap();
    let started = Instant::now();
    let mut d = spawn_run(&tb, &fleet[0], &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(2), "{}", d.log());
    assert!(
        d.notify
            .messages()
            .iter()
            .any(|m| m.starts_with("STATUS=starting: waiting up to")),
        "{:?}",
        d.notify.messages()
    );
    assert!(d.log().contains("waiting up to"), "{}", d.log());
    let calls = calls(&tb).await;
    let created = of(&calls, "CreateVolume", None);
    assert_eq!(created.len(), 1, "{}", d.log());
    // config.md, `create`: "None has a default of its own: a key left out
    // is not sent".
    let params = created[0].params.as_object().unwrap();
    assert_eq!(params["Size"], "4", "{params:?}");
    for key in [
        "VolumeType",
        "Iops",
        "Throughput",
        "Encrypted",
        "SnapshotId",
    ] {
        assert!(!params.contains_key(key), "{key} was sent: {params:?}");
    }
    let looked = of(&calls, "DescribeVolumes", None)[0].t;
    assert!(
        created[0].t - looked >= 2.0,
        "created before the wait was over\n{}",
        d.log()
    );
    assert_eq!(
        tb.attachments(&held).await.unwrap()[0].0,
        fleet[1].meta.instance_id
    );
    stop_cleanly(&mut d).await;
}

/// volumes.md: "When every step of the domain succeeded, the marks are
/// removed (the claim is committed; a claim that cannot be committed,
/// after three tries, fails the domain)."
#[tokio::test]
async fn a_claim_that_cannot_be_committed_fails_the_domain() {
    let tb = Testbed::start(REGION).await.unwrap();
    let double = tb.double.clone().unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let config = json_config(
        dir.path(),
        "app",
        json!({ "domains": { "app": { "attach-volume": [{ "device": "/dev/xvdf", "source": "c",
            "pool-name": "data", "create": { "Size": 4 } }] } } }),
    );
    double
        .configure(json!({ "fail_next": { "DeleteTags":
            { "count": 3, "status": 400, "code": "InvalidParameterValue" } } }))
        .await
        .unwrap();
    double.clear_calls().await.unwrap();
    let mut d = spawn_run(&tb, &instance, &config);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 1, "{}", d.log());
    let log = d.log();
    assert!(log.contains("committing the claim of"), "{log}");
    assert!(!d.notify.messages().iter().any(|m| m == "READY=1"), "{log}");
    let calls = calls(&tb).await;
    let refused = of(&calls, "DeleteTags", None)
        .iter()
        .filter(|c| c.outcome != "answered")
        .count();
    assert_eq!(refused, 3, "{log}");
    assert!(
        tb.pool_volumes("app", "data").await.unwrap().is_empty(),
        "the created volume was not rolled back\n{log}"
    );
}

/// volumes.md: "The `failed` hooks run, with the volumes still attached
/// … Only if they succeeded is the domain undone, newest first: what this
/// run attached and did not commit is detached (never forced), what it
/// created is deleted after that, and the marks go."
#[tokio::test]
async fn a_failing_critical_step_runs_the_failed_hooks_then_undoes_newest_first() {
    let tb = Testbed::start(REGION).await.unwrap();
    let given = tb.create_volume("a", 4).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let times = dir.path().join("times");
    let config = json_config(
        dir.path(),
        "app",
        json!({ "domains": { "app": {
            "exec": [{ "on": ["failed"], "lines": [stamp(&times, "failed")] }],
            "attach-volume": [
                { "device": "/dev/xvdf", "source": "x", "volume-id": given },
                { "device": "/dev/xvdg", "source": "c", "pool-name": "data", "create": { "Size": 4 } },
                { "device": "/dev/xvdh", "source": "x", "volume-id": "vol-0000000000000000f" } ] } } }),
    );
    tb.double.as_ref().unwrap().clear_calls().await.unwrap();
    let mut d = spawn_run(&tb, &instance, &config);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 1, "{}", d.log());
    let log = d.log();
    let calls = calls(&tb).await;
    let created = of(&calls, "CreateVolume", None);
    assert_eq!(created.len(), 1, "{log}");
    let detaches = of(&calls, "DetachVolume", None);
    let order: Vec<&str> = detaches
        .iter()
        .map(|c| c.params["VolumeId"].as_str().unwrap())
        .collect();
    assert_eq!(order.len(), 2, "{order:?}\n{log}");
    assert_eq!(order[1], given, "not newest first: {order:?}\n{log}");
    let made = order[0];
    assert!(
        detaches.iter().all(|c| c.params["Force"] != "true"),
        "a rollback forced a detach: {detaches:?}"
    );
    let failed = stamps(&times, "failed");
    assert_eq!(failed.len(), 1, "{log}");
    assert!(
        failed[0] < detaches[0].t,
        "the failed hooks ran after the first detach\n{log}"
    );
    let deleted = of(&calls, "DeleteVolume", Some(made));
    assert_eq!(deleted.len(), 1, "{log}");
    assert!(tb.pool_volumes("app", "data").await.unwrap().is_empty());
    assert!(deleted[0].t > detaches[0].t, "deleted before detached");
    let described = tb
        .ec2
        .describe_volumes()
        .volume_ids(&given)
        .send()
        .await
        .unwrap();
    let v = &described.volumes()[0];
    assert!(v.attachments().is_empty(), "{v:?}");
    assert!(
        !v.tags().iter().any(|t| t.key() == Some(TRANSACTION)),
        "the mark stayed: {v:?}"
    );
}

/// volumes.md: "The detach is a normal one unless `"force": true`".
#[tokio::test]
async fn force_releases_with_a_forced_detach() {
    let tb = Testbed::start(REGION).await.unwrap();
    let volume = tb.create_pool_volume("a", "app", "data").await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let config = json_config(
        dir.path(),
        "app",
        json!({ "domains": { "app": { "attach-volume": [{ "device": "/dev/xvdf", "source": "p",
            "pool-name": "data", "detach-on": ["interrupted"], "force": true }] } } }),
    );
    let mut d = spawn_run_with(&tb, &instance, &config, &["--poll-interval", "0.1"]);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    instance.imds.raise_spot_interruption("terminate", 120);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    let calls = calls(&tb).await;
    let detaches = of(&calls, "DetachVolume", Some(&volume));
    assert_eq!(detaches.len(), 1, "{}", d.log());
    assert_eq!(detaches[0].params["Force"], "true", "{:?}", detaches[0]);
    // cli.md, the STATUS lines.
    let status = d.notify.messages();
    assert!(
        status
            .iter()
            .any(|m| m == "STATUS=interrupted: running hooks"),
        "{status:?}"
    );
    assert!(tb.attachments(&volume).await.unwrap().is_empty());
}

/// volumes.md: "The next source is tried only when a source found nothing
/// to take here: the given volume is attached to another instance or lies
/// in another Availability Zone".
#[tokio::test]
async fn a_given_volume_held_elsewhere_or_in_another_zone_yields_to_the_next_source() {
    let tb = Testbed::start(REGION).await.unwrap();
    let held = tb.create_volume("a", 4).await.unwrap();
    let away = tb.create_volume("b", 4).await.unwrap();
    let fleet = tb.launch_fleet(2, &["a"]).await.unwrap();
    let (me, holder) = (&fleet[0], &fleet[1]);
    attach_elsewhere(&tb, &held, holder).await;
    let dir = tempdir();
    for (case, given) in [("held", &held), ("away", &away)] {
        let config = json_config(
            dir.path(),
            case,
            json!({ "domains": { case: { "attach-volume": [{ "device": "/dev/xvdf", "source": "xc",
                "volume-id": given, "pool-name": "data", "create": { "Size": 4 } }] } } }),
        );
        tb.double.as_ref().unwrap().clear_calls().await.unwrap();
        let mut d = spawn_run(&tb, me, &config);
        d.wait_ready(READY_TIMEOUT).await.unwrap();
        let calls = calls(&tb).await;
        assert_eq!(
            of(&calls, "CreateVolume", None).len(),
            1,
            "{case}: {}",
            d.log()
        );
        assert!(
            of(&calls, "DetachVolume", None).is_empty(),
            "{case}: {}",
            d.log()
        );
        let mine = tb.pool_volumes(case, "data").await.unwrap();
        assert_eq!(mine.len(), 1, "{case}");
        assert_eq!(mine[0].attached_to, [me.meta.instance_id.as_str()]);
        d.signal(Signal::SIGTERM).unwrap();
        assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0);
        // Free the device name for the next case.
        tb.ec2
            .detach_volume()
            .volume_id(&mine[0].volume_id)
            .send()
            .await
            .unwrap();
    }
    assert_eq!(
        tb.attachments(&held).await.unwrap()[0].0,
        holder.meta.instance_id
    );
    assert!(tb.attachments(&away).await.unwrap().is_empty());
}

/// volumes.md: "transaction IDs are `INSTANCE-CONFIG-TIME`, so
/// `ec2fleetd@a` never touches what `ec2fleetd@b` holds": a run of `b`
/// leaves alone the marks a killed run of `a` left; the next run of `a`
/// cleans them up.
#[tokio::test]
async fn two_configs_on_one_instance_never_touch_each_others_volumes() {
    let tb = Testbed::start(REGION).await.unwrap();
    let double = tb.double.clone().unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let (hung, go) = (dir.path().join("hung"), dir.path().join("go"));
    let config = |name: &str, device: &str, pool: &str| {
        let hook = format!(
            "if test -e '{}'; then :; else touch '{}'; exec sleep 30; fi",
            go.display(),
            hung.display()
        );
        json_config(
            dir.path(),
            name,
            json!({ "domains": { "app": { "attach-volume": [{ "device": device, "source": "c",
                "pool-name": pool, "create": { "Size": 4 },
                "exec": [{ "lines": [{ "argv": ["/bin/sh", "-c", hook] }] }] }] } } }),
        )
    };
    let a = config("a", "/dev/xvdf", "pa");
    let b = config("b", "/dev/xvdg", "pb");
    let mut first = spawn_run(&tb, &instance, &a);
    wait_for_file(&hung).await;
    first.signal(Signal::SIGKILL).unwrap();
    first.child.wait().await.unwrap();
    let left = tb.pool_volumes("app", "pa").await.unwrap();
    assert_eq!(left.len(), 1, "{}", first.log());
    let left = left[0].clone();
    assert!(left.tag(TRANSACTION).is_some(), "{left:?}");

    std::fs::write(&go, "").unwrap();
    double.clear_calls().await.unwrap();
    let mut other = spawn_run(&tb, &instance, &b);
    other.wait_ready(READY_TIMEOUT).await.unwrap();
    let touched: Vec<String> = calls(&tb)
        .await
        .into_iter()
        .filter(|c| c.is_mutating() && c.params.to_string().contains(&left.volume_id))
        .map(|c| c.action)
        .collect();
    assert!(
        touched.is_empty(),
        "b touched a's volume: {touched:?}\n{}",
        other.log()
    );
    let still = &tb.pool_volumes("app", "pa").await.unwrap()[0];
    assert_eq!(still.attached_to, [instance.meta.instance_id.as_str()]);
    assert_eq!(still.tag(TRANSACTION), left.tag(TRANSACTION));
    stop_cleanly(&mut other).await;

    let mut again = spawn_run(&tb, &instance, &a);
    again.wait_ready(READY_TIMEOUT).await.unwrap();
    let pa = tb.pool_volumes("app", "pa").await.unwrap();
    assert!(
        pa.iter().all(|v| v.volume_id != left.volume_id),
        "a did not clean up its own: {pa:?}\n{}",
        again.log()
    );
    let pb = tb.pool_volumes("app", "pb").await.unwrap();
    assert_eq!(pb.len(), 1, "a touched b's volume: {pb:?}");
    assert_eq!(pb[0].attached_to, [instance.meta.instance_id.as_str()]);
    stop_cleanly(&mut again).await;
}

// --------------------------------------------------------------- config.md

/// config.md, `critical` on a record: "`false`: a failure is logged and
/// the domain goes on".
#[tokio::test]
async fn a_non_critical_record_that_fails_is_logged_and_the_domain_goes_on() {
    let tb = Testbed::start(REGION).await.unwrap();
    let zone = tb.create_hosted_zone("example.com").await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let config = json_config(
        dir.path(),
        "app",
        json!({ "domains": { "app": { "update-route53": [
            { "hostedzone": zone, "name": "app.example.com" },
            { "hostedzone": "Z00000000000000000NOPE", "name": "app.example.net", "critical": false } ] } } }),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    assert!(
        d.log().contains("non-critical record skipped"),
        "{}",
        d.log()
    );
    assert_eq!(
        tb.record_values(&zone, "app.example.com", "A")
            .await
            .unwrap(),
        [instance.meta.public_ipv4.clone().unwrap()]
    );
    // config.md, `ttl`: "`60`" by default.
    let sets = tb
        .route53
        .list_resource_record_sets()
        .hosted_zone_id(&zone)
        .send()
        .await
        .unwrap();
    let set = sets
        .resource_record_sets()
        .iter()
        .find(|r| r.name() == "app.example.com." && r.r#type() == &RrType::A)
        .unwrap();
    assert_eq!(set.ttl(), Some(60));
    stop_cleanly(&mut d).await;
}

/// config.md: "An exec block without `on` runs for every event", and
/// "`terminating`, `rebalance` and `maintenance` are new, and an `exec`
/// block without `on` runs at them too."
#[tokio::test]
async fn a_domain_block_without_on_runs_at_every_event() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let log = dir.path().join("hooks.log");
    let hook = recorder(dir.path(), &log).display().to_string();
    let config = json_config(
        dir.path(),
        "app",
        json!({ "domains": { "app": { "exec": [{ "lines": [{ "argv": [hook, "{daemon_state}"] }] }] } } }),
    );
    let states = || -> Vec<String> { recorded(&log).into_iter().map(|c| c[1].clone()).collect() };
    let until_states = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        async move {
            while states().len() < n {
                assert!(Instant::now() < deadline, "{:?}", states());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let mut d = spawn_run_with(&tb, &instance, &config, &["--poll-interval", "0.05"]);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    instance.imds.raise_rebalance();
    until_states(3).await;
    instance
        .imds
        .set_maintenance(json!([{ "Code": "system-reboot", "EventId": "instance-event-1" }]));
    until_states(4).await;
    stop_cleanly(&mut d).await;
    assert_eq!(
        states(),
        [
            "starting",
            "started",
            "rebalance",
            "maintenance",
            "stopping"
        ],
        "{}",
        d.log()
    );
    // cli.md, the STATUS lines: news is handled while the watch goes on.
    let status = d.notify.messages();
    for line in [
        "STATUS=rebalance: running hooks; still watching",
        "STATUS=maintenance: running hooks; still watching",
    ] {
        assert!(status.iter().any(|m| m == line), "{line}: {status:?}");
    }
}

/// config.md: "Commands run directly … with stdin closed; each line of
/// their stdout and stderr goes to the log with the domain, event and
/// program", and "Hooks inherit the daemon's environment except
/// `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`."
#[tokio::test]
async fn hook_output_goes_to_the_log_and_systemds_variables_stay_out() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let env_file = dir.path().join("env");
    let script = format!(
        "echo out-line; echo err-line >&2; if read x; then echo got-input; else echo stdin-eof; fi; env > '{}'",
        env_file.display()
    );
    let config = json_config(
        dir.path(),
        "app",
        json!({ "domains": { "app": { "exec": [{ "on": ["started"],
            "lines": [{ "argv": ["/bin/sh", "-c", script] }] }] } } }),
    );
    let mut env = tb.daemon_env(&instance);
    env.push(("WATCHDOG_USEC".into(), "60000000".into()));
    // Not the daemon's PID: a watchdog meant for another process; still
    // not for the hooks.
    env.push(("WATCHDOG_PID".into(), "1".into()));
    env.push(("EC2FLEETD_CLAIMS_MARK".into(), "kept".into()));
    let config = config.display().to_string();
    let mut d = DaemonProcess::spawn(
        &daemon_bin(),
        &["run", "--config", &config, "--keep-hostname"],
        &env,
        false,
    )
    .unwrap();
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let log = d.log();
    for line in ["out-line", "err-line", "stdin-eof"] {
        assert!(
            log.contains(&format!("[app] started /bin/sh: {line}")),
            "{line}\n{log}"
        );
    }
    let seen = std::fs::read_to_string(&env_file).unwrap();
    assert!(seen.contains("EC2FLEETD_CLAIMS_MARK=kept"), "{seen}");
    for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        assert!(
            !seen.lines().any(|l| l.starts_with(&format!("{name}="))),
            "{name} reached the hook"
        );
    }
    stop_cleanly(&mut d).await;
}

/// config.md, `timeout` of a line: "SIGTERM after this long, SIGKILL 5 s
/// later".
#[tokio::test]
async fn a_lines_timeout_is_sigterm_then_sigkill_five_seconds_later() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let log = dir.path().join("hooks.log");
    let hook = recorder(dir.path(), &log).display().to_string();
    let mark = dir.path().join("begun");
    let stubborn = format!(
        "trap '' TERM; touch '{}'; sleep 30.125; true",
        mark.display()
    );
    let config = json_config(
        dir.path(),
        "app",
        json!({ "domains": { "app": { "exec": [
            { "on": ["started"], "lines": [{ "argv": ["/bin/sh", "-c", stubborn], "timeout": 1 }] },
            { "on": ["failed"], "lines": [{ "argv": [hook, "{error}"] }] } ] } } }),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    wait_for_file(&mark).await;
    let begun = Instant::now();
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 1, "{}", d.log());
    let took = begun.elapsed();
    assert!(
        took >= Duration::from_millis(5500) && took < Duration::from_secs(10),
        "the line ended {took:?} after it began, not 1 s + 5 s\n{}",
        d.log()
    );
    let errors = recorded(&log);
    assert_eq!(errors.len(), 1, "{}", d.log());
    assert!(
        errors[0][1].contains("cut after 1.") && errors[0][1].contains("(its timeout)"),
        "{errors:?}"
    );
    assert_eq!(processes_with("30.125"), 0, "the line outlived its SIGKILL");
}

/// config.md, `timeout`: "deadline for the whole init: bring-up and the
/// `started` hooks. When it passes, what is running is cancelled and the
/// `failed` path is taken … what the domains attached and had not
/// committed undone; the records they set are put back". A `started` hook
/// runs after the commit: the volume stays, the record goes.
#[tokio::test]
async fn the_init_timeout_also_cuts_the_started_hooks() {
    let tb = Testbed::start(REGION).await.unwrap();
    let zone = tb.create_hosted_zone("example.com").await.unwrap();
    let volume = tb.create_volume("a", 4).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let log = dir.path().join("hooks.log");
    let hook = recorder(dir.path(), &log).display().to_string();
    let config = json_config(
        dir.path(),
        "app",
        json!({ "timeout": 2, "domains": { "app": {
            "attach-volume": [{ "device": "/dev/xvdf", "source": "x", "volume-id": volume }],
            "update-route53": [{ "hostedzone": zone, "name": "app.example.com" }],
            "exec": [
                { "on": ["started"], "lines": [{ "argv": ["/bin/sleep", "30.375"] }] },
                { "on": ["failed"], "lines": [{ "argv": [hook, "{error}"] }] } ] } } }),
    );
    let begun = Instant::now();
    let mut d = spawn_run(&tb, &instance, &config);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 1, "{}", d.log());
    assert!(begun.elapsed() < Duration::from_secs(15), "{}", d.log());
    let errors = recorded(&log);
    assert_eq!(errors.len(), 1, "{}", d.log());
    assert!(errors[0][1].contains("timeout of 2s"), "{errors:?}");
    assert!(!d.notify.messages().iter().any(|m| m == "READY=1"));
    assert_eq!(processes_with("30.375"), 0, "the started hook was not cut");
    assert!(
        tb.record_values(&zone, "app.example.com", "A")
            .await
            .unwrap()
            .is_empty(),
        "the record was not put back\n{}",
        d.log()
    );
    let attached = tb.attachments(&volume).await.unwrap();
    assert_eq!(attached.len(), 1, "the committed volume was detached");
    assert_eq!(attached[0].0, instance.meta.instance_id);
}

/// config.md, `update-route53`: "If Route53 refuses the batch … it is
/// planned again from a fresh read, three tries in all; if it is still
/// refused (a bad name, say), each name is tried alone, so that a
/// non-critical record cannot fail a critical one."
#[tokio::test]
async fn a_refused_batch_is_tried_name_by_name() {
    let tb = Testbed::start(REGION).await.unwrap();
    let zone = tb.create_hosted_zone("example.com").await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let config = json_config(
        dir.path(),
        "app",
        json!({ "domains": { "app": { "update-route53": [
            { "hostedzone": zone, "name": "app.example.com" },
            { "hostedzone": zone, "name": "stray.other.org", "critical": false } ] } } }),
    );
    tb.double.as_ref().unwrap().clear_calls().await.unwrap();
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let log = d.log();
    assert!(log.contains("reading the names again"), "{log}");
    assert!(log.contains("trying each name alone"), "{log}");
    assert!(log.contains("non-critical record skipped"), "{log}");
    assert_eq!(
        tb.record_values(&zone, "app.example.com", "A")
            .await
            .unwrap(),
        [instance.meta.public_ipv4.clone().unwrap()]
    );
    let calls = calls(&tb).await;
    let changes = of(&calls, "ChangeResourceRecordSets", None);
    let body = |c: &Call| c.params["body"].as_str().unwrap_or_default().to_string();
    let both = changes
        .iter()
        .filter(|c| body(c).contains("app.example.com") && body(c).contains("stray.other.org"))
        .count();
    let alone = changes
        .iter()
        .filter(|c| body(c).contains("app.example.com") && !body(c).contains("stray.other.org"))
        .count();
    assert_eq!((both, alone), (3, 1), "{changes:#?}");
    stop_cleanly(&mut d).await;
}

/// config.md, `update-route53`: "An instance with no address of the kind
/// asked for fails the record."
#[tokio::test]
async fn an_instance_without_the_address_asked_for_fails_the_record() {
    let tb = Testbed::start(REGION).await.unwrap();
    let zone = tb.create_hosted_zone("example.com").await.unwrap();
    let instance = tb
        .launch_instance_with("a", |m| m.public_ipv4 = None)
        .await
        .unwrap();
    let dir = tempdir();
    let config = json_config(
        dir.path(),
        "app",
        json!({ "domains": { "app": { "update-route53": [
            { "hostedzone": zone, "name": "app.example.com", "address": "public" } ] } } }),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 1, "{}", d.log());
    assert!(
        d.log().contains("has no address of the kind asked for"),
        "{}",
        d.log()
    );
    assert!(tb
        .record_values(&zone, "app.example.com", "A")
        .await
        .unwrap()
        .is_empty());
}

/// A daemon whose domain `app` has the records `records(zone)` (a zone
/// `example.com` made for it), started while the next `failures`
/// ChangeResourceRecordSets calls are answered 503, with the record of
/// calls cleared.
async fn with_failing_changes(
    failures: u32,
    records: impl Fn(&str) -> serde_json::Value,
) -> (
    Testbed,
    SimInstance,
    String,
    DaemonProcess,
    tempfile::TempDir,
) {
    let tb = Testbed::start(REGION).await.unwrap();
    let double = tb.double.clone().unwrap();
    let zone = tb.create_hosted_zone("example.com").await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let config = json_config(
        dir.path(),
        "app",
        json!({ "domains": { "app": { "update-route53": records(&zone) } } }),
    );
    double
        .configure(json!({ "fail_next": { "ChangeResourceRecordSets": failures } }))
        .await
        .unwrap();
    double.clear_calls().await.unwrap();
    let d = spawn_run(&tb, &instance, &config);
    (tb, instance, zone, d, dir)
}

/// config.md, Route53 retries: "Every Route53 call is retried on those,
/// on a 5xx and on no answer: up to 11 retries … Each retry is logged with
/// its count and reason … Other errors (`InvalidChangeBatch`,
/// `AccessDenied`, `NoSuchHostedZone`) are not retried."
#[tokio::test]
async fn route53_5xx_are_retried_and_a_missing_zone_is_not() {
    let (tb, instance, zone, mut d, _dir) = with_failing_changes(2, |zone| {
        json!([
            { "hostedzone": zone, "name": "app.example.com" },
            { "hostedzone": "Z00000000000000000NOPE", "name": "app.example.net", "critical": false } ])
    })
    .await;
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let log = d.log();
    for retry in ["retry 1 of 11", "retry 2 of 11"] {
        assert!(log.contains(retry), "{retry}\n{log}");
    }
    assert_eq!(
        tb.record_values(&zone, "app.example.com", "A")
            .await
            .unwrap(),
        [instance.meta.public_ipv4.clone().unwrap()]
    );
    let calls = calls(&tb).await;
    let to = |action: &str, zone: &str| {
        of(&calls, action, None)
            .into_iter()
            .filter(|c| c.params["path"].as_str().unwrap_or_default().contains(zone))
            .count()
    };
    assert_eq!(to("ChangeResourceRecordSets", &zone), 3, "{log}");
    assert_eq!(
        to("ListResourceRecordSets", "Z00000000000000000NOPE"),
        1,
        "NoSuchHostedZone was retried\n{log}"
    );
    assert_eq!(to("ChangeResourceRecordSets", "Z00000000000000000NOPE"), 0);
    stop_cleanly(&mut d).await;
}

/// config.md: Route53 gives up after 11 retries, the n-th after at least
/// a tenth of 0.25 s × 2ⁿ⁻¹ (at most 8 s); a record that is not critical
/// then fails alone and the domain comes up.
#[tokio::test]
async fn route53_gives_up_after_eleven_retries() {
    let (tb, _instance, zone, mut d, _dir) = with_failing_changes(
        100,
        |zone| json!([{ "hostedzone": zone, "name": "app.example.com", "critical": false }]),
    )
    .await;
    d.wait_ready(Duration::from_secs(120)).await.unwrap();
    let log = d.log();
    assert!(log.contains("retry 11 of 11"), "{log}");
    assert!(!log.contains("retry 12 of"), "{log}");
    let changes: Vec<f64> = of(&calls(&tb).await, "ChangeResourceRecordSets", None)
        .iter()
        .map(|c| c.t)
        .collect();
    assert_eq!(changes.len(), 12, "the first attempt and 11 retries\n{log}");
    for (n, pair) in changes.windows(2).enumerate() {
        let ceiling = (0.25 * f64::powi(2.0, n as i32)).min(8.0);
        assert!(
            pair[1] - pair[0] >= ceiling / 10.0 - 0.01,
            "retry {}: {:.3}s after the last, less than {:.3}s",
            n + 1,
            pair[1] - pair[0],
            ceiling / 10.0
        );
    }
    assert!(tb
        .record_values(&zone, "app.example.com", "A")
        .await
        .unwrap()
        .is_empty());
    stop_cleanly(&mut d).await;
}

/// config.md, `update-route53`: "zones are done in parallel". Each zone's
/// batch is held 1.5 s before Route53 sees it: one zone after the other,
/// the second batch would arrive 1.5 s after the first.
#[tokio::test]
async fn hosted_zones_are_done_in_parallel() {
    let tb = Testbed::start(REGION).await.unwrap();
    let double = tb.double.clone().unwrap();
    let one = tb.create_hosted_zone("example.com").await.unwrap();
    let two = tb.create_hosted_zone("example.org").await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let config = json_config(
        dir.path(),
        "app",
        json!({ "domains": { "app": { "update-route53": [
            { "hostedzone": one, "name": "app.example.com" },
            { "hostedzone": two, "name": "app.example.org" } ] } } }),
    );
    double
        .configure(json!({ "delay_next": { "ChangeResourceRecordSets":
            { "count": 2, "seconds": 1.5, "when": "before" } } }))
        .await
        .unwrap();
    double.clear_calls().await.unwrap();
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let calls = calls(&tb).await;
    let changes = of(&calls, "ChangeResourceRecordSets", None);
    assert_eq!(changes.len(), 2, "{changes:#?}");
    assert!(
        (changes[1].t - changes[0].t).abs() < 1.0,
        "the zones' batches came {:.2}s apart",
        (changes[1].t - changes[0].t).abs()
    );
    for (zone, name) in [(&one, "app.example.com"), (&two, "app.example.org")] {
        assert_eq!(tb.record_values(zone, name, "A").await.unwrap().len(), 1);
    }
    stop_cleanly(&mut d).await;
}

// ------------------------------------------------------------------ cli.md

/// cli.md, exit status 2: "the command line is wrong (an unknown command,
/// option or shell, a missing argument): the error is printed with the
/// usage (for a value not in its list, such as a shell, with the values
/// allowed), nothing is done".
#[test]
fn a_wrong_command_line_exits_2_with_the_usage() {
    for (args, shown) in [
        (&["frobnicate"][..], "Usage: ec2fleetd <COMMAND>"),
        (&["run", "--nope"], "Usage: ec2fleetd run"),
        (&["completions", "tcsh"], "[possible values: bash,"),
        (&["policy"], "Usage: ec2fleetd policy --config <FILE>"),
    ] {
        let out = std::process::Command::new(daemon_bin())
            .args(args)
            .env_remove("AWS_ENDPOINT_URL")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(stderr.contains(shown), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// cli.md, environment: "`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_<SERVICE>`
/// | other endpoints" and "`EC2FLEETD_LOG` | log filter, e.g. `debug`
/// (default `info`)".
#[tokio::test]
async fn a_service_endpoint_overrides_the_general_one_and_the_log_filter_applies() {
    let tb = Testbed::start(REGION).await.unwrap();
    let volume = tb.create_volume("a", 4).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let config = json_config(
        dir.path(),
        "app",
        json!({ "domains": { "app": { "attach-volume": [
            { "device": "/dev/xvdf", "source": "x", "volume-id": volume }] } } }),
    );
    let config = config.display().to_string();
    for (filter, wanted, unwanted) in [("debug", " DEBUG ", ""), ("warn", "", " INFO ")] {
        let mut env = tb.daemon_env(&instance);
        env.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
        env.push(("AWS_ENDPOINT_URL".into(), "http://127.0.0.1:9".into()));
        env.push(("AWS_ENDPOINT_URL_EC2".into(), tb.moto.url.clone()));
        env.push(("EC2FLEETD_LOG".into(), filter.into()));
        let mut d = DaemonProcess::spawn(
            &daemon_bin(),
            &["run", "--config", &config, "--keep-hostname"],
            &env,
            false,
        )
        .unwrap();
        d.wait_ready(READY_TIMEOUT).await.unwrap();
        let log = d.log();
        if !wanted.is_empty() {
            assert!(log.contains(wanted), "{filter}: {log}");
        }
        if !unwanted.is_empty() {
            assert!(!log.contains(unwanted), "{filter}: {log}");
        }
        assert_eq!(
            tb.attachments(&volume).await.unwrap()[0].0,
            instance.meta.instance_id
        );
        stop_cleanly(&mut d).await;
    }
}

/// cli.md, `--poll-interval`: "(0 < s ≤ 3600)"; out of range is a wrong
/// command line, exit 2, before anything is read.
#[test]
fn the_poll_interval_must_lie_in_its_range() {
    for bad in ["0", "3601", "0.0", "a"] {
        let (code, _, stderr) = ec2fleetd_with(
            &[
                "run",
                "--config",
                "/nonexistent.jsonc",
                "--poll-interval",
                bad,
            ],
            &[],
        );
        assert_eq!(code, 2, "--poll-interval {bad}: {stderr}");
        assert!(stderr.contains("--poll-interval"), "{stderr}");
    }
}

/// cli.md, `completions`: "one of `bash`, `zsh`, `fish`, `elvish`,
/// `powershell`; exit 0", and `manpage`: "Exit 0, or 1 when stdout cannot
/// be written".
#[test]
fn every_shell_gets_completions_and_an_unwritable_man_page_is_exit_1() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (code, script, stderr) = ec2fleetd_with(&["completions", shell], &[]);
        assert_eq!(code, 0, "{shell}: {stderr}");
        for word in ["drill", "policy", "poll-interval"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    let full = std::fs::File::options()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = std::process::Command::new(daemon_bin())
        .arg("manpage")
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot write the man page"), "{stderr}");
}

/// cli.md, `drill`: "(default 120, as a spot notice gives), changing
/// nothing in AWS … 78 for a bad config. Off EC2, macros take stand-in
/// values." And `policy`: "`--partition NAME` … `aws-us-gov`", "A config
/// that makes no AWS call … prints a policy with an empty `Statement`
/// list, exit 0, and says so on stderr", "Nothing is sent to AWS".
#[tokio::test]
async fn drill_and_policy_send_nothing_to_aws() {
    let tb = Testbed::start(REGION).await.unwrap();
    let zone = tb.create_hosted_zone("example.com").await.unwrap();
    let volume = tb.create_volume("a", 4).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let double = tb.double.clone().unwrap();
    double.clear_calls().await.unwrap();
    // AWS is reachable, IMDS is not (a closed port): off EC2.
    let mut env = tb.daemon_env(&instance);
    env.retain(|(k, _)| k != "AWS_EC2_METADATA_SERVICE_ENDPOINT");
    env.push((
        "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
        "http://127.0.0.1:9".into(),
    ));
    let dir = tempdir();
    let aws = json_config(
        dir.path(),
        "aws",
        json!({ "domains": { "app": {
            "attach-volume": [{ "device": "/dev/xvdf", "source": "x", "volume-id": volume,
                "detach-on": ["interrupted"] }],
            "update-route53": [{ "hostedzone": zone, "name": "app.example.com",
                "delete-on": ["interrupted"] }],
            "exec": [{ "on": ["interrupted"], "lines": [{ "argv":
                ["/bin/echo", "id={instance_id}", "zone={placement_zone}"] }] }] } } }),
    );
    let aws = aws.display().to_string();
    let (code, out, err) = ec2fleetd_with(&["drill", "--config", &aws], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("the instance goes in 120s; hooks get 110s"),
        "{out}"
    );
    assert!(err.contains("id=i-drill"), "no stand-in instance ID: {err}");

    let hooks = json_config(
        dir.path(),
        "hooks",
        json!({ "auto-scaling": false,
                "domains": { "app": { "exec": [{ "on": ["started"], "lines": [{ "argv": ["/bin/true"] }] }] } } }),
    );
    let hooks = hooks.display().to_string();
    let (code, out, err) = ec2fleetd_with(&["policy", "--config", &hooks], &env);
    assert_eq!(code, 0, "{err}");
    let policy: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(policy["Statement"], json!([]), "{out}");
    assert!(err.contains("makes no AWS call"), "{err}");

    let (code, out, err) = ec2fleetd_with(
        &["policy", "--config", &aws, "--partition", "aws-us-gov"],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let policy: serde_json::Value = serde_json::from_str(&out).unwrap();
    let arns: Vec<&str> = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["Resource"].as_array().unwrap())
        .filter_map(|r| r.as_str())
        .filter(|r| *r != "*")
        .collect();
    assert!(!arns.is_empty(), "{out}");
    for arn in arns {
        assert!(arn.starts_with("arn:aws-us-gov:"), "{arn}");
    }

    let bad = write_config(
        dir.path(),
        "bad.jsonc",
        r#"{ "domains": { "app": { "nope": 1 } } }"#,
    );
    let (code, _, err) = ec2fleetd_with(&["drill", "--config", &bad.display().to_string()], &env);
    assert_eq!(code, 78, "{err}");

    let sent: Vec<String> = double
        .calls()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.action)
        .collect();
    assert!(sent.is_empty(), "drill or policy called AWS: {sent:?}");
}

/// cli.md: "SIGTERM or SIGINT at any time, during init too, ends what is
/// running (hooks in flight during init are killed)".
#[tokio::test]
async fn sigint_during_init_kills_the_hooks_in_flight() {
    a_signal_during_init_kills_the_hooks_in_flight(Signal::SIGINT, "30.75").await;
}

#[tokio::test]
async fn sigterm_during_init_kills_the_hooks_in_flight() {
    a_signal_during_init_kills_the_hooks_in_flight(Signal::SIGTERM, "30.76").await;
}

/// cli.md: SIGTERM or SIGINT during init cuts the hooks in flight and
/// takes the stop path; `sleep SECONDS` names this run's hook.
async fn a_signal_during_init_kills_the_hooks_in_flight(signal: Signal, seconds: &str) {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let log = dir.path().join("hooks.log");
    let hook = recorder(dir.path(), &log).display().to_string();
    let mark = dir.path().join("begun");
    let slow = format!("touch '{}'; sleep {seconds}; true", mark.display());
    let config = json_config(
        dir.path(),
        "app",
        json!({ "domains": { "app": { "exec": [
            { "on": ["starting"], "lines": [{ "argv": ["/bin/sh", "-c", slow] }] },
            { "on": ["stopping"], "lines": [{ "argv": [hook, "{daemon_state}"] }] } ] } } }),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    wait_for_file(&mark).await;
    let signalled = Instant::now();
    d.signal(signal).unwrap();
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "{signal} did not end init"
    );
    assert!(!d.notify.messages().iter().any(|m| m == "READY=1"));
    let states: Vec<String> = recorded(&log).into_iter().map(|c| c[1].clone()).collect();
    assert_eq!(states, ["stopping"], "{}", d.log());
    assert_eq!(
        processes_with(seconds),
        0,
        "the starting hook was not killed"
    );
}

/// cli.md: "A second signal hurries: hooks still running get SIGTERM at
/// once (SIGKILL five seconds later)."
#[tokio::test]
async fn a_second_signal_kills_a_hook_that_ignores_sigterm_five_seconds_later() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let mark = dir.path().join("begun");
    let stubborn = format!(
        "trap '' TERM; touch '{}'; sleep 60.125; true",
        mark.display()
    );
    let config = json_config(
        dir.path(),
        "app",
        json!({ "domains": { "app": { "exec": [
            { "on": ["stopping"], "lines": [{ "argv": ["/bin/sh", "-c", stubborn] }] } ] } } }),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    d.signal(Signal::SIGTERM).unwrap();
    wait_for_file(&mark).await;
    let second = Instant::now();
    d.signal(Signal::SIGTERM).unwrap();
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    let took = second.elapsed();
    assert!(
        took >= Duration::from_millis(4500) && took < Duration::from_secs(9),
        "exit {took:?} after the second signal, not SIGKILL 5 s after it\n{}",
        d.log()
    );
    assert_eq!(processes_with("60.125"), 0, "the hook outlived its SIGKILL");
}

/// cli.md: "the daemon sends `WATCHDOG=1` at half that period".
#[tokio::test]
async fn the_watchdog_is_fed_at_half_its_period() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let config = json_config(dir.path(), "app", json!({ "domains": { "app": {} } }));
    let mut env = tb.daemon_env(&instance);
    env.push(("WATCHDOG_USEC".into(), "1000000".into()));
    let config = config.display().to_string();
    let mut d = DaemonProcess::spawn(
        &daemon_bin(),
        &["run", "--config", &config, "--keep-hostname"],
        &env,
        false,
    )
    .unwrap();
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let fed = |d: &DaemonProcess| {
        d.notify
            .messages()
            .iter()
            .filter(|m| *m == "WATCHDOG=1")
            .count()
    };
    let before = fed(&d);
    // A rate needs a span of time: 3 s, 6 feedings at 0.5 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = fed(&d) - before;
    assert!(
        (5..=7).contains(&n),
        "{n} WATCHDOG=1 in 3 s with a 1 s period"
    );
    stop_cleanly(&mut d).await;
}

/// cli.md, the units: "give the stop phase 120 seconds and send SIGTERM to
/// the daemon only (`KillMode=mixed`) … (`TimeoutStartSec=infinity`) …
/// (`RestrictAddressFamilies`: Unix, IPv4, IPv6, netlink)" and "ours set
/// 60 s, with `Restart=on-watchdog`"; `--stop-timeout` (default 120)
/// matches `TimeoutStopSec`.
#[test]
fn both_units_carry_the_documented_settings() {
    for unit in ["systemd/ec2fleetd.service", "systemd/ec2fleetd@.service"] {
        let text = std::fs::read_to_string(repo_file(unit)).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for setting in [
            "TimeoutStopSec=120",
            "KillMode=mixed",
            "TimeoutStartSec=infinity",
            "WatchdogSec=60",
            "Restart=on-watchdog",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        ] {
            assert!(lines.contains(&setting), "{unit} lacks {setting}");
        }
    }
    let (code, help, _) = ec2fleetd_with(&["run", "--help"], &[]);
    assert_eq!(code, 0);
    let option = |name: &str| {
        help.lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        option("--stop-timeout").contains("[default: 120]"),
        "{help}"
    );
    // cli.md, `--shutdown-reserve`: "`10`".
    assert!(
        option("--shutdown-reserve").contains("[default: 10]"),
        "{help}"
    );
}

/// cli.md: both units pass `systemd-analyze verify` without a word (an
/// unknown key or a wrong value is a warning there, so the test wants
/// silence), with `ExecStart` pointed at the daemon built here.
#[test]
fn the_units_pass_systemd_analyze_verify() {
    let dir = tempdir();
    for unit in ["ec2fleetd.service", "ec2fleetd@.service"] {
        let text = std::fs::read_to_string(repo_file(&format!("systemd/{unit}"))).unwrap();
        assert!(text.contains("ExecStart=/usr/bin/ec2fleetd "), "{unit}");
        let text = text.replace(
            "/usr/bin/ec2fleetd ",
            &format!("{} ", daemon_bin().display()),
        );
        // An instance of the template is what systemd loads.
        let name = unit.replace("@.", "@app.");
        let path = dir.path().join(&name);
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("systemd-analyze runs (Debian's systemd package)");
        let said = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{name}: {said}"
        );
    }
}

/// cli.md: "`ec2fleetd --help` and `ec2fleetd COMMAND --help` list the
/// options".
#[test]
fn help_lists_the_commands() {
    let (code, help, _) = ec2fleetd_with(&["--help"], &[]);
    assert_eq!(code, 0);
    for command in ["run", "check", "drill", "policy", "completions", "manpage"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(command)),
            "--help lacks {command}: {help}"
        );
    }
    let (code, help, _) = ec2fleetd_with(&["drill", "--help"], &[]);
    assert_eq!(code, 0);
    for option in ["--config", "--deadline", "--shutdown-reserve"] {
        assert!(help.contains(option), "drill --help lacks {option}");
    }
}

/// config.md, macros: every macro has its documented value, at `started`
/// and at `interrupted` (with the notice's action and time).
#[tokio::test]
async fn every_macro_has_its_value() {
    use ec2fleetd::config::template::MACROS;
    let tb = Testbed::start("us-east-1").await.unwrap();
    let volume = tb.create_pool_volume("a", "game", "worlds").await.unwrap();
    let instance = tb.launch_instance("a", Some("2001:db8::7")).await.unwrap();
    let dir = tempdir();
    let log = dir.path().join("macros.log");
    let hook = recorder(dir.path(), &log).display().to_string();
    let argv: Vec<String> = std::iter::once(format!("\"{hook}\""))
        .chain(MACROS.iter().map(|m| format!("\"{m}={{{m}}}\"")))
        .chain(std::iter::once("\"ami-i={ami-i}\"".to_string()))
        .collect();
    let config = write_config(
        dir.path(),
        "game.jsonc",
        &format!(
            r#"{{ "domains": {{ "game": {{
  "attach-volume": [{{ "device": "/dev/xvdf", "source": "p", "pool-name": "worlds" }}],
  "exec": [{{ "on": ["started", "interrupted"], "lines": [{{ "argv": [{}] }}] }}] }} }} }}"#,
            argv.join(", ")
        ),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let notice = instance.imds.raise_spot_interruption("stop", 120);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    let calls = recorded(&log);
    assert_eq!(calls.len(), 2, "{calls:?}");
    let values = |call: &Vec<String>| -> std::collections::BTreeMap<String, String> {
        call[1..]
            .iter()
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    };
    let (started, interrupted) = (values(&calls[0]), values(&calls[1]));
    let meta = &instance.meta;
    let ipv4 = meta.public_ipv4.clone().unwrap();
    for (name, want) in [
        ("domain", "game".to_string()),
        ("instance_id", meta.instance_id.clone()),
        ("instance_type", meta.instance_type.clone()),
        ("instance_index", meta.launch_index.to_string()),
        ("ami-i", meta.launch_index.to_string()),
        ("placement_region", "us-east-1".to_string()),
        ("placement_zone", meta.zone.clone()),
        ("primary_public_ipv4", ipv4.clone()),
        ("primary_public_ipv6", "2001:db8::7".to_string()),
        ("primary_private_ipv4", meta.private_ipv4.clone().unwrap()),
        ("attach_source", "p".to_string()),
        ("attach_op", "true".to_string()),
        ("volume_id", volume.clone()),
        ("volume_pool", "worlds".to_string()),
        ("daemon_state", "started".to_string()),
        ("error", String::new()),
        ("interrupt_action", String::new()),
    ] {
        assert_eq!(started[name], want, "{{{name}}} at started: {started:?}");
    }
    assert!(started["public_ipv4_list"].contains(&ipv4), "{started:?}");
    assert!(started["public_ipv6_list"].contains("2001:db8::7"));
    assert!(!started["hypervisor"].is_empty(), "{started:?}");
    let device = std::path::Path::new(&started["attached_device"]);
    assert!(
        device.starts_with(instance.root.path()) && device.exists(),
        "{started:?}"
    );
    assert!(started["transaction_id"].starts_with(&format!("{}-game-", meta.instance_id)));
    assert!(
        humantime::parse_rfc3339_weak(&started["ts"]).is_ok(),
        "{started:?}"
    );
    assert!(started["pid"].parse::<u32>().is_ok(), "{started:?}");
    let all: serde_json::Value = serde_json::from_str(&started["all_json"]).unwrap();
    assert_eq!(all["volume_id"], volume.as_str());
    assert_eq!(all["daemon_state"], "started");
    assert_eq!(interrupted["daemon_state"], "interrupted");
    assert_eq!(interrupted["interrupt_action"], "stop");
    assert_eq!(interrupted["interrupt_time"], notice.time);
    assert_eq!(interrupted["volume_id"], volume);
}

/// README: `examples/` holds the Python ec2fleetd's README configs,
/// unchanged but for IDs (its placeholders become IDs of the right shape,
/// and `REGION` a region).
#[test]
fn the_seed_readmes_configs_are_the_examples_but_for_ids() {
    let seed = std::fs::read_to_string(repo_file("../shared/seeds/ec2fleetd.md"))
        .expect("../shared/seeds/ec2fleetd.md beside the checkout");
    let blocks: Vec<&str> = seed
        .split("```jsonc\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert_eq!(blocks.len(), 2, "the seed README's config blocks");
    let parse = |text: &str| {
        jsonc_parser::parse_to_serde_value::<serde_json::Value>(text, &Default::default()).unwrap()
    };
    for (block, example) in blocks
        .iter()
        .zip(["minecraft.jsonc", "bitcoin-nodes.jsonc"])
    {
        let with_ids = block
            .replace("vol-NNNNNNNNNNNNNNNNN", "vol-0123456789abcdef0")
            .replace("ZZZZZZZZZZZZZZZZZZZZZ", "Z0123456789ABCDEFGHIJ")
            .replace("\"REGION\"", "\"us-east-1\"")
            .replace(
                "TOPIC_ARN",
                "arn:aws:sns:us-east-1:123456789012:fleet-events",
            );
        let ours = std::fs::read_to_string(repo_file(&format!("examples/{example}"))).unwrap();
        assert_eq!(parse(&ours), parse(&with_ids), "examples/{example}");
    }
}

/// cli.md: `--device-root DIR` says where block devices are looked up, and
/// wins over `EC2FLEETD_DEVICE_ROOT`.
#[tokio::test]
async fn the_device_root_flag_wins_over_its_variable() {
    let tb = Testbed::start(REGION).await.unwrap();
    let volume = tb.create_pool_volume("a", "game", "worlds").await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let log = dir.path().join("hooks.log");
    let hook = recorder(dir.path(), &log).display().to_string();
    let config = write_config(
        dir.path(),
        "game.jsonc",
        &format!(
            r#"{{ "domains": {{ "game": {{ "attach-volume": [{{ "device": "/dev/xvdf", "source": "p",
  "pool-name": "worlds", "exec": [{{ "lines": [{{ "argv": ["{hook}", "{{attached_device}}"] }}] }}] }}] }} }} }}"#
        ),
    );
    let mut env = tb.daemon_env(&instance);
    for (k, v) in &mut env {
        if k == "EC2FLEETD_DEVICE_ROOT" {
            *v = dir.path().join("nowhere").display().to_string();
        }
    }
    let root = instance.root.path().display().to_string();
    let config_arg = config.display().to_string();
    let args = [
        "run",
        "--config",
        config_arg.as_str(),
        "--keep-hostname",
        "--device-root",
        root.as_str(),
    ];
    let mut d = DaemonProcess::spawn(&daemon_bin(), &args, &env, false).unwrap();
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let calls = recorded(&log);
    assert_eq!(calls.len(), 1, "{}", d.log());
    assert!(
        std::path::Path::new(&calls[0][1]).starts_with(instance.root.path()),
        "{calls:?}"
    );
    assert!(d.log().contains(&volume), "{}", d.log());
    stop_cleanly(&mut d).await;
}

/// config.md: the checks of names, ranges and sources, one config each:
/// refused with the documented message, or accepted as documented.
#[test]
fn config_ranges_and_names_are_checked_as_documented() {
    use ec2fleetd::config::Config;
    let volume = |extra: &str| {
        format!(r#"{{ "domains": {{ "a": {{ "attach-volume": [{{ {extra} }}] }} }} }}"#)
    };
    let refused = [
        (
            r#"{ "domains": { "a": {}, "a": {} } }"#.to_string(),
            r#"domain "a" is given twice"#,
        ),
        (
            r#"{ "domains": { "": {} } }"#.to_string(),
            "a domain needs a name",
        ),
        (
            r#"{ "timeout": 1, "timeout": 2, "domains": {} }"#.to_string(),
            r#"key "timeout" is given twice"#,
        ),
        (
            r#"{ "timeout": 0, "domains": {} }"#.to_string(),
            "more than 0 and at most 86400",
        ),
        (
            r#"{ "timeout": 86401, "domains": {} }"#.to_string(),
            "more than 0 and at most 86400",
        ),
        (
            volume(r#""device": "xvdf", "source": "p", "pool-name": "p""#),
            "is not a device name",
        ),
        (
            volume(r#""device": "/dev/xvdf", "source": "pp", "pool-name": "p""#),
            "source 'p' is given twice",
        ),
        (
            volume(r#""device": "/dev/xvdf", "source": "x", "volume-id": "vol-xyz""#),
            "is not a volume ID",
        ),
        (
            volume(r#""device": "/dev/xvdf", "source": "c""#),
            r#"source 'c' needs the key "create""#,
        ),
        (
            volume(r#""device": "/dev/xvdf", "source": "c""#),
            r#"source 'c' needs the key "pool-name""#,
        ),
        (
            volume(r#""device": "/dev/xvdf", "source": "p", "pool-name": "p", "wait-available": 86401"#),
            "from 0 to 86400",
        ),
        (
            volume(r#""device": "/dev/xvdf", "source": "p", "pool-name": "p", "wait-available": -1"#),
            "from 0 to 86400",
        ),
        (
            r#"{ "domains": { "a": { "update-route53": [{ "hostedzone": "Z1", "name": "a.example.com", "ttl": 2147483648 }] } } }"#.to_string(),
            "from 0 to 2147483647",
        ),
        (
            r#"{ "domains": { "a": { "update-route53": [{ "hostedzone": "Z1", "name": "a.example.com", "ttl": -1 }] } } }"#.to_string(),
            "from 0 to 2147483647",
        ),
        (
            r#"{ "hostname": "-web.example.com", "domains": {} }"#.to_string(),
            r#"is not a valid hostname (label "-web")"#,
        ),
        (
            r#"{ "hostname": "a..example.com", "domains": {} }"#.to_string(),
            "is not a valid hostname",
        ),
        (
            format!(r#"{{ "hostname": "{}", "domains": {{}} }}"#, "a".repeat(64)),
            "is not a valid hostname",
        ),
        (
            r#"{ "hostname": "web_1.example.com", "domains": {} }"#.to_string(),
            "is not a valid hostname",
        ),
        (
            volume(r#""device": "/dev/xvdf", "source": "c", "pool-name": "p", "create": { "Size": 0 }"#),
            "from 1 to 1048576",
        ),
        (
            volume(r#""device": "/dev/xvdf", "source": "c", "pool-name": "p", "create": { "Size": 8, "Iops": 1048577 }"#),
            "from 1 to 1048576",
        ),
        (
            volume(r#""device": "/dev/xvdf", "source": "c", "pool-name": "p", "create": { "VolumeType": "gp3" }"#),
            r#"needs "Size" or "SnapshotId""#,
        ),
        (
            r#"{ "domains": { "a": { "exec": [{ "lines": [{ "argv": ["/bin/true"], "timeout": 0 }] }] } } }"#.to_string(),
            "more than 0 and at most 86400",
        ),
        (
            r#"{ "domains": { "a": { "exec": [{ "lines": [{ "argv": ["/bin/true"], "timeout": 86401 }] }] } } }"#.to_string(),
            "more than 0 and at most 86400",
        ),
    ];
    for (text, message) in &refused {
        let errors = Config::from_text("test", text).expect_err(text);
        assert!(
            errors.problems.iter().any(|p| p.message.contains(message)),
            "{text}: wanted {message:?}, got {:?}",
            errors.problems
        );
    }
    // `{}` domains: valid, nothing to do; a `/hostedzone/` prefix is
    // accepted; `starting` may be named in a matrix.
    assert!(Config::from_text("test", r#"{ "domains": {} }"#)
        .unwrap()
        .domains
        .is_empty());
    let config = Config::from_text(
        "test",
        r#"{ "domains": { "a": {
  "update-route53": [{ "hostedzone": "/hostedzone/Z1", "name": "a.example.com" }],
  "notify": [{ "backend": "aws-sns", "options": { "topic": "arn:aws:sns:us-east-1:123456789012:t" },
               "matrix": { "starting": { "enabled": false } } }] } } }"#,
    )
    .unwrap();
    assert_eq!(config.domains[0].records[0].hosted_zone, "Z1");
    assert_eq!(config.domains[0].records[0].ttl, 60, "the default TTL");
    // A 63-character label, 64 characters with a trailing dot, the
    // range's ends.
    for ok in [
        format!(r#"{{ "hostname": "{}", "domains": {{}} }}"#, "a".repeat(63)),
        format!(r#"{{ "hostname": "{}.example.com.", "domains": {{}} }}"#, "a".repeat(51)),
        r#"{ "hostname": "web-1.example.com", "domains": {} }"#.to_string(),
        volume(r#""device": "/dev/xvdf", "source": "c", "pool-name": "p", "create": { "Size": 1048576, "Iops": 1 }"#),
        r#"{ "domains": { "a": { "exec": [{ "lines": [{ "argv": ["/bin/true"], "timeout": 86400 }] }] } } }"#.to_string(),
    ] {
        Config::from_text("test", &ok).unwrap_or_else(|e| panic!("{ok}: {:?}", e.problems));
    }
}

/// config.md: a rebalance recommendation runs its hooks once, and a new
/// one (another notice time) runs them again.
#[tokio::test]
async fn a_new_rebalance_recommendation_runs_its_hooks_again() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let log = dir.path().join("hooks.log");
    let hook = recorder(dir.path(), &log).display().to_string();
    let config = write_config(
        dir.path(),
        "app.jsonc",
        &format!(
            r#"{{ "domains": {{ "app": {{ "exec": [{{ "on": ["rebalance"], "lines": [{{ "argv": ["{hook}", "{{daemon_state}}"] }}] }}] }} }} }}"#
        ),
    );
    let mut d = spawn_run_with(&tb, &instance, &config, &["--poll-interval", "0.1"]);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let first = instance.imds.raise_rebalance();
    until("the first rebalance hooks", || async {
        recorded(&log).len() == 1
    })
    .await;
    // Seen on many polls, still one event; then a new recommendation.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(recorded(&log).len(), 1, "{}", d.log());
    let mut second = instance.imds.raise_rebalance();
    while second == first {
        tokio::time::sleep(Duration::from_millis(200)).await;
        second = instance.imds.raise_rebalance();
    }
    until("the second rebalance hooks", || async {
        recorded(&log).len() == 2
    })
    .await;
    stop_cleanly(&mut d).await;
}

/// config.md, `delete-on`: without it, a record set by an init that a
/// signal cut short still points here after the daemon ends.
#[tokio::test]
async fn without_delete_on_a_record_of_a_cut_init_stays() {
    let tb = Testbed::start(REGION).await.unwrap();
    let double = tb.double.clone().unwrap();
    double
        .configure(json!({"delays": {"route53_insync": 60.0}}))
        .await
        .unwrap();
    let zone = tb.create_hosted_zone("example.com").await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        "game.jsonc",
        &format!(
            r#"{{ "domains": {{ "game": {{ "update-route53": [{{ "hostedzone": "{zone}", "name": "play.example.com", "wait-insync": true }}] }} }} }}"#
        ),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    until("the wait for INSYNC", || async {
        let calls = double.calls().await.unwrap();
        calls.iter().any(|c| c.action == "GetChange")
    })
    .await;
    d.signal(Signal::SIGTERM).unwrap();
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    assert_eq!(
        tb.record_values(&zone, "play.example.com", "A")
            .await
            .unwrap(),
        [instance.meta.public_ipv4.clone().unwrap()],
        "{}",
        d.log()
    );
}

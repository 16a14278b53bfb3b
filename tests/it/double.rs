//! The AWS test double enforces what real AWS does and bare moto does not.
//! Each rule is checked on both: it must hold on the double and be missing
//! on bare moto, or the test proves nothing.

use std::time::{Duration, Instant};

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use serde_json::json;

use super::common::*;

const REGION: &str = "us-east-1";

/// The AWS error code of a failed call, or "ok".
fn outcome<T, E: ProvideErrorMetadata>(r: Result<T, E>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.code().unwrap_or("no code").to_string(),
    }
}

async fn attach(tb: &Testbed, volume: &str, instance: &str, device: &str) -> String {
    outcome(
        tb.ec2
            .attach_volume()
            .volume_id(volume)
            .instance_id(instance)
            .device(device)
            .send()
            .await,
    )
}

async fn instance(tb: &Testbed, zone: &str) -> String {
    tb.launch_instance(zone, None)
        .await
        .unwrap()
        .meta
        .instance_id
        .clone()
}

/// Each rule answers as `expected` on the double and otherwise on bare moto.
fn assert_rules(on_double: &[(&str, String)], on_bare: &[(&str, String)], expected: &[&str]) {
    assert_eq!(on_double.len(), expected.len(), "a rule without its answer");
    for (((rule, got), expected), (_, bare_got)) in on_double.iter().zip(expected).zip(on_bare) {
        assert_eq!(got, expected, "double, {rule}");
        assert_ne!(
            bare_got, expected,
            "bare moto already enforces {rule}: the test shows nothing"
        );
    }
}

/// What each EBS rule answers on this server.
async fn ebs_answers(tb: &Testbed) -> Vec<(&'static str, String)> {
    let a1 = instance(tb, "a").await;
    let a2 = instance(tb, "a").await;
    let b1 = instance(tb, "b").await;
    let gone = instance(tb, "a").await;
    tb.ec2
        .terminate_instances()
        .instance_ids(&gone)
        .send()
        .await
        .unwrap();
    let v1 = tb.create_volume("a", 10).await.unwrap();
    let v2 = tb.create_volume("a", 10).await.unwrap();
    let v3 = tb.create_volume("a", 10).await.unwrap();
    assert_eq!(attach(tb, &v1, &a1, "/dev/xvdf").await, "ok");
    vec![
        (
            "attached elsewhere",
            attach(tb, &v1, &a2, "/dev/xvdf").await,
        ),
        ("across zones", attach(tb, &v2, &b1, "/dev/xvdf").await),
        (
            "instance not running",
            attach(tb, &v2, &gone, "/dev/xvdf").await,
        ),
        ("device taken", attach(tb, &v3, &a1, "/dev/xvdf").await),
        (
            "detach unattached",
            outcome(tb.ec2.detach_volume().volume_id(&v2).send().await),
        ),
        (
            "size out of range",
            outcome(
                tb.ec2
                    .create_volume()
                    .availability_zone(tb.zone("a"))
                    .size(20)
                    .volume_type(aws_sdk_ec2::types::VolumeType::St1)
                    .send()
                    .await,
            ),
        ),
        (
            "no such zone",
            outcome(
                tb.ec2
                    .create_volume()
                    .availability_zone(tb.zone("z"))
                    .size(10)
                    .send()
                    .await,
            ),
        ),
    ]
}

#[tokio::test]
async fn ebs_rules() {
    let (double, bare) = tokio::join!(Testbed::start(REGION), Testbed::start_bare(REGION));
    let on_double = ebs_answers(&double.unwrap()).await;
    let on_bare = ebs_answers(&bare.unwrap()).await;
    assert_eq!(on_double.len(), on_bare.len());
    let expected = [
        "VolumeInUse",
        "InvalidVolume.ZoneMismatch",
        "IncorrectInstanceState",
        "InvalidParameterValue",
        "IncorrectState",
        "InvalidParameterValue",
        "InvalidParameterValue",
    ];
    assert_rules(&on_double, &on_bare, &expected);
}

/// (volume state while creating, attachment state right after AttachVolume,
/// attachment state while detaching, snapshot state right after creation).
async fn transitional_states(tb: &Testbed) -> [String; 4] {
    let a = instance(tb, "a").await;
    let v = tb.create_volume("a", 10).await.unwrap();
    let volume = |v: String| async move {
        tb.ec2
            .describe_volumes()
            .volume_ids(v)
            .send()
            .await
            .unwrap()
            .volumes()[0]
            .clone()
    };
    let creating = volume(v.clone())
        .await
        .state()
        .unwrap()
        .as_str()
        .to_string();
    // Wait until available (immediately on bare moto).
    for _ in 0..200 {
        if volume(v.clone()).await.state().unwrap().as_str() == "available" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(attach(tb, &v, &a, "/dev/xvdf").await, "ok");
    let attaching = volume(v.clone()).await.attachments()[0]
        .state()
        .unwrap()
        .as_str()
        .to_string();
    for _ in 0..200 {
        if volume(v.clone()).await.attachments()[0]
            .state()
            .unwrap()
            .as_str()
            == "attached"
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Bare moto answers a DetachVolume without these with an HTML 500.
    tb.ec2
        .detach_volume()
        .volume_id(&v)
        .instance_id(&a)
        .device("/dev/xvdf")
        .send()
        .await
        .unwrap();
    let detaching = volume(v.clone())
        .await
        .attachments()
        .first()
        .and_then(|a| a.state().map(|s| s.as_str().to_string()))
        .unwrap_or_else(|| "none".into());
    let snap = tb.ec2.create_snapshot().volume_id(&v).send().await.unwrap();
    let snapshot = snap.state().unwrap().as_str().to_string();
    [creating, attaching, detaching, snapshot]
}

#[tokio::test]
async fn state_changes_take_time() {
    let (double, bare) = tokio::join!(Testbed::start(REGION), Testbed::start_bare(REGION));
    let (double, bare) = (double.unwrap(), bare.unwrap());
    let delays =
        json!({"delays": {"volume_create": 0.3, "attach": 0.3, "detach": 0.3, "snapshot": 0.3}});
    double
        .double
        .as_ref()
        .unwrap()
        .configure(delays)
        .await
        .unwrap();
    let expected = ["creating", "attaching", "detaching", "pending"];
    assert_eq!(transitional_states(&double).await, expected);
    let on_bare = transitional_states(&bare).await;
    for (got, unexpected) in on_bare.iter().zip(expected) {
        assert_ne!(
            got, unexpected,
            "bare moto already has the {unexpected} state"
        );
    }
}

fn record(name: &str, kind: RrType, value: &str) -> ResourceRecordSet {
    ResourceRecordSet::builder()
        .name(name)
        .r#type(kind)
        .ttl(60)
        .resource_records(ResourceRecord::builder().value(value).build().unwrap())
        .build()
        .unwrap()
}

async fn change(
    tb: &Testbed,
    zone: &str,
    action: ChangeAction,
    set: ResourceRecordSet,
) -> Result<(String, String), String> {
    batch(tb, zone, vec![(action, set)]).await
}

/// One change batch; its change ID and status, or the error code.
async fn batch(
    tb: &Testbed,
    zone: &str,
    changes: Vec<(ChangeAction, ResourceRecordSet)>,
) -> Result<(String, String), String> {
    let mut batch = ChangeBatch::builder();
    for (action, set) in changes {
        batch = batch.changes(
            Change::builder()
                .action(action)
                .resource_record_set(set)
                .build()
                .unwrap(),
        );
    }
    let batch = batch.build().unwrap();
    let out = tb
        .route53
        .change_resource_record_sets()
        .hosted_zone_id(zone)
        .change_batch(batch)
        .send()
        .await
        .map_err(|e| e.code().unwrap_or("no code").to_string())?;
    let info = out.change_info().unwrap();
    Ok((info.id().to_string(), info.status().as_str().to_string()))
}

/// What each Route53 rule answers on this server.
async fn route53_answers(tb: &Testbed) -> Vec<(&'static str, String)> {
    let zone = tb.create_hosted_zone("example.net").await.unwrap();
    let name = "game.example.net";
    let first = change(
        tb,
        &zone,
        ChangeAction::Create,
        record(name, RrType::A, "192.0.2.1"),
    )
    .await
    .unwrap();
    let second = change(
        tb,
        &zone,
        ChangeAction::Upsert,
        record(name, RrType::A, "192.0.2.2"),
    )
    .await
    .unwrap();
    let verdict = |r: Result<(String, String), String>| r.map_or_else(|code| code, |_| "ok".into());
    vec![
        ("first change pending", first.1.clone()),
        (
            "fresh change ID",
            if first.0 == second.0 {
                "same ID".into()
            } else {
                "fresh".into()
            },
        ),
        (
            "create over existing",
            verdict(
                change(
                    tb,
                    &zone,
                    ChangeAction::Create,
                    record(name, RrType::A, "192.0.2.3"),
                )
                .await,
            ),
        ),
        (
            "delete with stale value",
            verdict(
                change(
                    tb,
                    &zone,
                    ChangeAction::Delete,
                    record(name, RrType::A, "192.0.2.1"),
                )
                .await,
            ),
        ),
        (
            "bad A value",
            verdict(
                change(
                    tb,
                    &zone,
                    ChangeAction::Upsert,
                    record("x.example.net", RrType::A, "300.1.1.1"),
                )
                .await,
            ),
        ),
        (
            "IPv4 in AAAA",
            verdict(
                change(
                    tb,
                    &zone,
                    ChangeAction::Upsert,
                    record("x.example.net", RrType::Aaaa, "192.0.2.1"),
                )
                .await,
            ),
        ),
    ]
}

#[tokio::test]
async fn route53_rules() {
    let (double, bare) = tokio::join!(Testbed::start(REGION), Testbed::start_bare(REGION));
    let (double, bare) = (double.unwrap(), bare.unwrap());
    double
        .double
        .as_ref()
        .unwrap()
        .configure(json!({"delays": {"route53_insync": 30}}))
        .await
        .unwrap();
    let on_double = route53_answers(&double).await;
    let on_bare = route53_answers(&bare).await;
    assert_eq!(on_double.len(), on_bare.len());
    let expected = [
        "PENDING",
        "fresh",
        "InvalidChangeBatch",
        "InvalidChangeBatch",
        "InvalidChangeBatch",
        "InvalidChangeBatch",
    ];
    assert_rules(&on_double, &on_bare, &expected);
}

/// A DELETE of a set's exact values and a CREATE of its new ones, in one
/// batch, is a compare-and-swap: each change is checked against the zone as
/// the changes before it left it, and a batch with a stale DELETE changes
/// nothing. Bare moto takes the stale batch and overwrites.
#[tokio::test]
async fn a_batch_is_checked_change_by_change() {
    let (double, bare) = tokio::join!(Testbed::start(REGION), Testbed::start_bare(REGION));
    let (double, bare) = (double.unwrap(), bare.unwrap());
    let name = "cas.example.net";
    let swap = |from: &str, to: &str| {
        vec![
            (ChangeAction::Delete, record(name, RrType::A, from)),
            (ChangeAction::Create, record(name, RrType::A, to)),
        ]
    };
    let mut stale_on = Vec::new();
    for tb in [&double, &bare] {
        let zone = tb.create_hosted_zone("example.net").await.unwrap();
        change(
            tb,
            &zone,
            ChangeAction::Create,
            record(name, RrType::A, "192.0.2.1"),
        )
        .await
        .unwrap();
        assert!(batch(tb, &zone, swap("192.0.2.1", "192.0.2.2"))
            .await
            .is_ok());
        let stale = batch(tb, &zone, swap("192.0.2.1", "192.0.2.3")).await;
        let now = tb.record_values(&zone, name, "A").await.unwrap();
        stale_on.push((stale.map_or_else(|code| code, |_| "ok".into()), now));
    }
    assert_eq!(
        stale_on[0],
        (
            "InvalidChangeBatch".to_string(),
            vec!["192.0.2.2".to_string()]
        ),
        "the double refuses a stale swap whole"
    );
    assert_eq!(
        stale_on[1].0, "ok",
        "bare moto already refuses a stale swap: the test shows nothing"
    );
}

/// EC2 is eventually consistent: a volume just created may be unknown to
/// DescribeVolumes for a moment. Bare moto knows it at once.
#[tokio::test]
async fn a_new_volume_is_briefly_unknown() {
    let (double, bare) = tokio::join!(Testbed::start(REGION), Testbed::start_bare(REGION));
    let (double, bare) = (double.unwrap(), bare.unwrap());
    double
        .double
        .as_ref()
        .unwrap()
        .configure(json!({"delays": {"volume_visible": 1.0}}))
        .await
        .unwrap();
    let describe = |tb: &Testbed, id: String| {
        let ec2 = tb.ec2.clone();
        async move { outcome(ec2.describe_volumes().volume_ids(id).send().await) }
    };
    // Bare moto's first call sets its region up, which takes a while.
    let on_bare = bare.create_volume("a", 10).await.unwrap();
    let on_double = double.create_volume("a", 10).await.unwrap();
    assert_eq!(
        describe(&double, on_double.clone()).await,
        "InvalidVolume.NotFound"
    );
    assert_eq!(
        describe(&bare, on_bare).await,
        "ok",
        "bare moto is already eventually consistent: the test shows nothing"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(describe(&double, on_double).await, "ok", "then it is known");
}

/// `delay_next` with `after`: moto has done the work while the answer is
/// still on its way; with `before`, nothing is done until the wait is over.
#[tokio::test]
async fn delayed_answers_land_first() {
    let tb = Testbed::start(REGION).await.unwrap();
    let control = tb.double.clone().unwrap();
    let a = instance(&tb, "a").await;
    let v = tb.create_volume("a", 10).await.unwrap();
    control
        .configure(
            json!({"delay_next": {"AttachVolume": {"count": 1, "seconds": 1.5, "when": "after"}}}),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let call = tokio::spawn({
        let (tb_ec2, v, a) = (tb.ec2.clone(), v.clone(), a.clone());
        async move {
            tb_ec2
                .attach_volume()
                .volume_id(v)
                .instance_id(a)
                .device("/dev/xvdf")
                .send()
                .await
                .is_ok()
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        tb.attachments(&v).await.unwrap().len(),
        1,
        "attached before the answer came"
    );
    assert!(call.await.unwrap());
    assert!(started.elapsed() >= Duration::from_millis(1400));
    let calls = control.calls().await.unwrap();
    let attach = calls.iter().find(|c| c.action == "AttachVolume").unwrap();
    assert_eq!(attach.outcome, "answered");
}

#[tokio::test]
async fn route53_change_becomes_insync() {
    let tb = Testbed::start(REGION).await.unwrap();
    tb.double
        .as_ref()
        .unwrap()
        .configure(json!({"delays": {"route53_insync": 0.3}}))
        .await
        .unwrap();
    let zone = tb.create_hosted_zone("example.org").await.unwrap();
    let (id, status) = change(
        &tb,
        &zone,
        ChangeAction::Upsert,
        record("a.example.org", RrType::A, "192.0.2.9"),
    )
    .await
    .unwrap();
    assert_eq!(status, "PENDING");
    let mut seen = status;
    for _ in 0..100 {
        let out = tb.route53.get_change().id(&id).send().await.unwrap();
        seen = out.change_info().unwrap().status().as_str().to_string();
        if seen == "INSYNC" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(seen, "INSYNC");
}

/// 30 instances race for 10 volumes at once: AttachVolume is the arbiter.
#[tokio::test]
async fn concurrent_attach_has_exactly_one_winner_per_volume() {
    let tb = Testbed::start(REGION).await.unwrap();
    let fleet = tb.launch_fleet(30, &["a"]).await.unwrap();
    let mut volumes = Vec::new();
    for _ in 0..10 {
        volumes.push(tb.create_volume("a", 10).await.unwrap());
    }
    let attempts = fleet.iter().enumerate().map(|(i, inst)| {
        let volume = volumes[i % volumes.len()].clone();
        let tb = &tb;
        async move {
            (
                volume.clone(),
                attach(tb, &volume, &inst.meta.instance_id, "/dev/xvdf").await,
            )
        }
    });
    let results = futures_util::future::join_all(attempts).await;
    let winners: Vec<_> = results.iter().filter(|(_, r)| r == "ok").collect();
    assert_eq!(winners.len(), 10, "{results:?}");
    for volume in &volumes {
        assert_eq!(
            winners.iter().filter(|(v, _)| v == volume).count(),
            1,
            "{volume}: {results:?}"
        );
        assert_eq!(tb.attachments(volume).await.unwrap().len(), 1);
    }
    assert!(
        results
            .iter()
            .filter(|(_, r)| r != "ok")
            .all(|(_, r)| r == "VolumeInUse"),
        "{results:?}"
    );
}

#[tokio::test]
async fn quotas_throttle_like_aws() {
    let tb = Testbed::start(REGION).await.unwrap();
    let double = tb.double.clone().unwrap();
    double
        .configure(json!({"throttle": {"ec2_mutating": {"rate": 0.1, "burst": 3}, "route53": {"rate": 0.1, "burst": 2}}}))
        .await
        .unwrap();
    // The SDK would retry throttling: count answers without it.
    let ec2 = aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::config::Builder::from(&tb.sdk)
            .retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled())
            .build(),
    );
    let mut answers = Vec::new();
    for _ in 0..5 {
        let r = ec2
            .create_volume()
            .availability_zone(tb.zone("a"))
            .size(1)
            .send()
            .await;
        answers.push(outcome(r));
    }
    assert_eq!(answers[..3], ["ok", "ok", "ok"], "{answers:?}");
    assert!(
        answers[3..].iter().all(|a| a == "RequestLimitExceeded"),
        "{answers:?}"
    );
    // Reads have their own bucket.
    assert_eq!(outcome(ec2.describe_volumes().send().await), "ok");
    let route53 = aws_sdk_route53::Client::from_conf(
        aws_sdk_route53::config::Builder::from(&tb.sdk)
            .retry_config(aws_sdk_route53::config::retry::RetryConfig::disabled())
            .build(),
    );
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(outcome(route53.list_hosted_zones().send().await));
    }
    assert_eq!(answers, ["ok", "ok", "Throttling"]);
    let throttled = double
        .calls()
        .await
        .unwrap()
        .iter()
        .filter(|c| c.outcome == "throttled")
        .count();
    assert_eq!(throttled, 3);
}

#[tokio::test]
async fn latency_errors_and_dropped_connections() {
    let tb = Testbed::start(REGION).await.unwrap();
    let double = tb.double.clone().unwrap();
    let ec2 = aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::config::Builder::from(&tb.sdk)
            .retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled())
            .build(),
    );
    double.configure(json!({"latency_ms": 300})).await.unwrap();
    let started = Instant::now();
    ec2.describe_volumes().send().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));

    double
        .configure(json!({"latency_ms": 0, "error_rate": 1.0}))
        .await
        .unwrap();
    let err = ec2.describe_volumes().send().await.unwrap_err();
    assert_eq!(err.code(), Some("InternalError"));
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(503));

    double
        .configure(json!({"error_rate": 0.0, "drop_rate": 1.0}))
        .await
        .unwrap();
    let err = ec2.describe_volumes().send().await.unwrap_err();
    assert!(
        matches!(
            err,
            aws_sdk_ec2::error::SdkError::DispatchFailure(_)
                | aws_sdk_ec2::error::SdkError::ResponseError(_)
        ),
        "a dropped connection is not an AWS answer: {err:?}"
    );
    let outcomes: Vec<String> = double
        .calls()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.outcome)
        .collect();
    assert_eq!(outcomes, ["answered", "5xx", "dropped"]);
}

/// The double plays the kernel: an attached volume's NVMe device appears
/// under its instance's root, backed by the volume's own file.
#[tokio::test]
async fn data_follows_the_volume_to_its_next_instance() {
    let tb = Testbed::start(REGION).await.unwrap();
    tb.double
        .as_ref()
        .unwrap()
        .configure(json!({"delays": {"attach": 0.2, "device": 0.2}}))
        .await
        .unwrap();
    let fleet = tb.launch_fleet(2, &["a"]).await.unwrap();
    let (first, second) = (&fleet[0], &fleet[1]);
    let volume = tb.create_volume("a", 10).await.unwrap();
    let serial = volume.replace('-', "");

    assert_eq!(
        attach(&tb, &volume, &first.meta.instance_id, "/dev/xvdf").await,
        "ok"
    );
    assert!(
        device_with_serial(first.root.path(), &volume.replace('-', "")).is_none(),
        "the device is there before the attach completes"
    );
    let device = wait_device(first.root.path(), &serial).await;
    std::fs::write(&device, b"the world as the players left it").unwrap();

    tb.ec2
        .detach_volume()
        .volume_id(&volume)
        .send()
        .await
        .unwrap();
    assert!(!device.exists(), "the device stays after the detach");
    assert_eq!(
        attach(&tb, &volume, &second.meta.instance_id, "/dev/xvdg").await,
        "ok"
    );
    let device = wait_device(second.root.path(), &serial).await;
    let data = std::fs::read(&device).unwrap();
    assert!(data.starts_with(b"the world as the players left it"));
}

async fn wait_device(root: &std::path::Path, serial: &str) -> std::path::PathBuf {
    for _ in 0..400 {
        if let Some(name) = device_with_serial(root, serial) {
            return root.join("dev").join(name);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no device with serial {serial} under {}", root.display());
}

fn device_with_serial(root: &std::path::Path, serial: &str) -> Option<String> {
    std::fs::read_dir(root.join("sys/block"))
        .ok()?
        .flatten()
        .find_map(|e| {
            let text = std::fs::read_to_string(e.path().join("device/serial")).ok()?;
            (text.trim() == serial).then(|| e.file_name().to_string_lossy().to_string())
        })
}

#[tokio::test]
async fn calls_are_recorded_in_order_with_their_parameters() {
    let tb = Testbed::start(REGION).await.unwrap();
    let a = instance(&tb, "a").await;
    let v = tb.create_volume("a", 10).await.unwrap();
    let double = tb.double.clone().unwrap();
    double.clear_calls().await.unwrap();
    attach(&tb, &v, &a, "/dev/xvdh").await;
    tb.ec2
        .describe_volumes()
        .volume_ids(&v)
        .send()
        .await
        .unwrap();
    let calls = double.calls().await.unwrap();
    let actions: Vec<&str> = calls.iter().map(|c| c.action.as_str()).collect();
    assert_eq!(actions, ["AttachVolume", "DescribeVolumes"]);
    assert_eq!(calls[0].params["VolumeId"], v.as_str());
    assert_eq!(calls[0].params["InstanceId"], a.as_str());
    assert_eq!(calls[0].params["Device"], "/dev/xvdh");
    assert!(calls[0].is_mutating() && !calls[1].is_mutating());
}

/// What each snapshot rule answers on this server (the snapshot delay is
/// 0.8 s on the double).
async fn snapshot_answers(tb: &Testbed) -> Vec<(&'static str, String)> {
    use aws_sdk_ec2::types::Snapshot;
    let ec2 = &tb.ec2;
    let v = tb.create_volume("a", 10).await.unwrap();
    let snap = |v: &str| {
        let v = v.to_string();
        async move { ec2.create_snapshot().volume_id(v).send().await }
    };
    let look = |id: String| async move {
        ec2.describe_snapshots()
            .snapshot_ids(id)
            .send()
            .await
            .map(|o| o.snapshots().first().cloned())
    };
    let state = |s: &Snapshot| {
        format!(
            "{} {}",
            s.state().map_or("?", |s| s.as_str()),
            s.progress().unwrap_or("?")
        )
    };
    let restore = |snapshot: String, size: Option<i32>| async move {
        outcome(
            ec2.create_volume()
                .availability_zone(tb.zone("a"))
                .snapshot_id(snapshot)
                .set_size(size)
                .send()
                .await,
        )
    };
    let first = snap(&v).await.unwrap();
    let first_id = first.snapshot_id().unwrap().to_string();
    let pending = format!(
        "{} {}",
        first.state().map_or("?", |s| s.as_str()),
        first.progress().unwrap_or("?")
    );
    let restore_pending = restore(first_id.clone(), None).await;
    // The volume grows after the call: the snapshot keeps the size it had.
    ec2.modify_volume()
        .volume_id(&v)
        .size(20)
        .send()
        .await
        .unwrap();
    let mut answers = vec![
        ("pending at first", pending),
        ("restore while pending", restore_pending),
    ];
    for _ in 0..100 {
        if look(first_id.clone())
            .await
            .unwrap()
            .is_some_and(|s| s.state() == Some(&aws_sdk_ec2::types::SnapshotState::Completed))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let size = look(first_id.clone()).await.unwrap().unwrap().volume_size();
    answers.push(("size at the call", format!("{size:?}")));
    answers.push(("restore smaller", restore(first_id.clone(), Some(5)).await));

    // ClientToken: the same call again is the same volume; other parameters
    // are refused.
    let token = |size: i32| async move {
        ec2.create_volume()
            .availability_zone(tb.zone("a"))
            .size(size)
            .client_token("ec2fd-test-token-1")
            .send()
            .await
            .map(|o| o.volume_id().unwrap_or_default().to_string())
    };
    let (once, twice) = (token(8).await.unwrap(), token(8).await.unwrap());
    answers.push(("same token", (once == twice).to_string()));
    answers.push(("same token, other size", outcome(token(9).await)));

    // Five pending snapshots per volume; the sixth is refused.
    let busy = tb.create_volume("a", 10).await.unwrap();
    for _ in 0..5 {
        snap(&busy).await.unwrap();
    }
    answers.push(("sixth pending", outcome(snap(&busy).await)));

    // A snapshot that fails ends in `error` with a message.
    if let Some(d) = &tb.double {
        d.configure(json!({ "snapshot_error_next": { "count": 1, "message": "disk on fire" } }))
            .await
            .unwrap();
    }
    let failing = snap(&v).await.unwrap().snapshot_id().unwrap().to_string();
    // Deleting a pending snapshot takes effect when it completes.
    let doomed = snap(&v).await.unwrap().snapshot_id().unwrap().to_string();
    ec2.delete_snapshot()
        .snapshot_id(&doomed)
        .send()
        .await
        .unwrap();
    let after_delete = look(doomed.clone()).await.map(|s| {
        s.and_then(|s| s.state().map(|s| s.as_str().to_string()))
            .unwrap_or_else(|| "gone".into())
    });
    let after_delete = after_delete.unwrap_or_else(|e| outcome::<(), _>(Err(e)));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let failed = look(failing).await.unwrap().unwrap();
    let later = outcome(look(doomed).await);
    answers.push((
        "deleted while pending",
        format!("{after_delete}, then {later}"),
    ));
    answers.push((
        "failed snapshot",
        format!("{} {:?}", state(&failed), failed.state_message()),
    ));

    // OwnerIds=self: only this account's; pages of MaxResults.
    let own = ec2
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap()
        .snapshots()
        .len();
    answers.push(("owner self", format!("{}", own <= 20)));
    let page = ec2
        .describe_snapshots()
        .owner_ids("self")
        .max_results(5)
        .send()
        .await
        .unwrap();
    answers.push((
        "a page of 5",
        format!("{} {}", page.snapshots().len(), page.next_token().is_some()),
    ));
    answers
}

#[tokio::test]
async fn snapshot_rules() {
    let (double, bare) = tokio::join!(Testbed::start(REGION), Testbed::start_bare(REGION));
    let (double, bare) = (double.unwrap(), bare.unwrap());
    double
        .double
        .as_ref()
        .unwrap()
        .configure(json!({ "delays": { "snapshot": 0.8 } }))
        .await
        .unwrap();
    let on_double = snapshot_answers(&double).await;
    let on_bare = snapshot_answers(&bare).await;
    let expected = [
        "pending 0%",
        "IncorrectState",
        "Some(10)",
        "InvalidParameterValue",
        "true",
        "IdempotentParameterMismatch",
        "ConcurrentSnapshotLimitExceeded",
        "pending, then InvalidSnapshot.NotFound",
        "error 0% Some(\"disk on fire\")",
        "true",
        "5 true",
    ];
    assert_rules(&on_double, &on_bare, &expected);
}

/// A snapshot holds the volume's data as it was at the CreateSnapshot
/// call, and a volume made from it starts with that data.
#[tokio::test]
async fn a_snapshot_holds_the_data_of_its_call() {
    let tb = Testbed::start(REGION).await.unwrap();
    let fleet = tb.launch_fleet(2, &["a", "b"]).await.unwrap();
    let (first, second) = (&fleet[0], &fleet[1]);
    let volume = tb.create_volume("a", 10).await.unwrap();
    assert_eq!(
        attach(&tb, &volume, &first.meta.instance_id, "/dev/xvdf").await,
        "ok"
    );
    let device = wait_device(first.root.path(), &volume.replace('-', "")).await;
    std::fs::write(&device, b"day one").unwrap();
    let snapshot = tb
        .ec2
        .create_snapshot()
        .volume_id(&volume)
        .send()
        .await
        .unwrap()
        .snapshot_id()
        .unwrap()
        .to_string();
    std::fs::write(&device, b"day two").unwrap();
    let restored = tb
        .ec2
        .create_volume()
        .availability_zone(second.meta.zone.clone())
        .snapshot_id(&snapshot)
        .send()
        .await
        .unwrap()
        .volume_id()
        .unwrap()
        .to_string();
    assert_eq!(
        attach(&tb, &restored, &second.meta.instance_id, "/dev/xvdf").await,
        "ok"
    );
    let device = wait_device(second.root.path(), &restored.replace('-', "")).await;
    assert!(std::fs::read(&device).unwrap().starts_with(b"day one"));
}

// ------------------------------------------------ Auto Scaling lifecycle

/// An instance's `LifecycleState` in its group, or "none".
async fn lifecycle_state(tb: &Testbed, instance: &str) -> String {
    tb.lifecycle_state(instance)
        .await
        .unwrap()
        .unwrap_or_else(|| "none".into())
}

async fn ec2_state(tb: &Testbed, instance: &str) -> String {
    tb.instance_state(instance).await.unwrap()
}

async fn complete(tb: &Testbed, group: &str, hook: &str, instance: &str, result: &str) -> String {
    outcome(
        tb.autoscaling
            .complete_lifecycle_action()
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(hook)
            .instance_id(instance)
            .lifecycle_action_result(result)
            .send()
            .await,
    )
}

/// What each lifecycle rule answers on this server (heartbeat timeouts of
/// one and two seconds: the double takes less than AWS's 30).
async fn lifecycle_answers(tb: &Testbed) -> Vec<(&'static str, String)> {
    use ec2fleetd_testbed::world::{LAUNCHING, TERMINATING};
    tb.create_group("g", "a").await.unwrap();
    tb.put_lifecycle_hook("g", "warm-up", LAUNCHING, 2, "CONTINUE")
        .await
        .unwrap();
    tb.put_lifecycle_hook("g", "drain", TERMINATING, 2, "ABANDON")
        .await
        .unwrap();
    tb.create_group("strict", "a").await.unwrap();
    tb.put_lifecycle_hook("strict", "warm-up", LAUNCHING, 1, "ABANDON")
        .await
        .unwrap();
    let first = tb.launch_instance("a", None).await.unwrap();
    let late = tb.launch_instance("a", None).await.unwrap();
    let (i1, i2) = (&first.meta.instance_id, &late.meta.instance_id);
    tb.join_group("g", &first).await.unwrap();
    tb.join_group("strict", &late).await.unwrap();
    let joined = lifecycle_state(tb, i1).await;
    // Three seconds of heartbeats, one a second, against a two-second timeout.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = tb
            .autoscaling
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name("g")
            .lifecycle_hook_name("warm-up")
            .instance_id(i1)
            .send()
            .await;
    }
    let after_heartbeats = lifecycle_state(tb, i1).await;
    let bad_result = complete(tb, "g", "warm-up", i1, "MAYBE").await;
    let unknown_hook = complete(tb, "g", "no-such-hook", i1, "CONTINUE").await;
    let loner = tb.launch_instance("a", None).await.unwrap();
    let not_in_a_group = outcome(
        tb.autoscaling
            .terminate_instance_in_auto_scaling_group()
            .instance_id(&loner.meta.instance_id)
            .should_decrement_desired_capacity(false)
            .send()
            .await,
    );
    let completed = complete(tb, "g", "warm-up", i1, "CONTINUE").await;
    let twice = complete(tb, "g", "warm-up", i1, "CONTINUE").await;
    // The other instance's launch timed out meanwhile, with ABANDON.
    let timed_out = ec2_state(tb, i2).await;
    tb.autoscaling
        .terminate_instance_in_auto_scaling_group()
        .instance_id(i1)
        .should_decrement_desired_capacity(true)
        .send()
        .await
        .unwrap();
    let terminating = lifecycle_state(tb, i1).await;
    let completed_termination = complete(tb, "g", "drain", i1, "CONTINUE").await;
    let left = format!(
        "{terminating}, then {} ({})",
        lifecycle_state(tb, i1).await,
        ec2_state(tb, i1).await
    );
    let hooks = tb
        .autoscaling
        .describe_lifecycle_hooks()
        .auto_scaling_group_name("g")
        .lifecycle_hook_names("drain")
        .send()
        .await
        .unwrap();
    let global = hooks.lifecycle_hooks()[0]
        .global_timeout()
        .unwrap_or_default()
        .to_string();
    vec![
        ("a launch waits for its hook", joined),
        ("heartbeats keep it waiting", after_heartbeats),
        ("a result other than CONTINUE or ABANDON", bad_result),
        ("a hook the group does not have", unknown_hook),
        ("terminating an instance in no group", not_in_a_group),
        ("completing a waiting action", completed),
        ("completing twice", twice),
        ("a timeout completes with the default result", timed_out),
        ("a termination waits for its hook", left),
        ("completing the termination", completed_termination),
        ("the global timeout is 100 heartbeat timeouts", global),
    ]
}

#[tokio::test]
async fn lifecycle_rules() {
    let (double, bare) = tokio::join!(Testbed::start(REGION), Testbed::start_bare(REGION));
    let (double, bare) = (double.unwrap(), bare.unwrap());
    let (on_double, on_bare) = tokio::join!(lifecycle_answers(&double), lifecycle_answers(&bare));
    let expected = [
        "Pending:Wait",
        "Pending:Wait",
        "ValidationError",
        "ValidationError",
        "ValidationError",
        "ok",
        "ValidationError",
        "terminated",
        "Terminating:Wait, then none (terminated)",
        "ok",
        "200",
    ];
    assert_rules(&on_double, &on_bare, &expected);
}

/// What each EC2 Fleet rule answers on this server.
async fn fleet_answers(tb: &Testbed) -> Vec<(&'static str, String)> {
    use aws_sdk_ec2::types::{
        FleetExcessCapacityTerminationPolicy, TargetCapacitySpecificationRequest,
    };
    let (fleet, instance) = tb.launch_in_ec2_fleet("rules").await.unwrap();
    let described = tb
        .ec2
        .describe_instances()
        .instance_ids(&instance.meta.instance_id)
        .send()
        .await
        .unwrap();
    let tag = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .flat_map(|i| i.tags())
        .find(|t| t.key() == Some("aws:ec2:fleet-id"))
        .and_then(|t| t.value())
        .map(String::from);
    let modify = |total: i32| {
        tb.ec2
            .modify_fleet()
            .fleet_id(&fleet)
            .target_capacity_specification(
                TargetCapacitySpecificationRequest::builder()
                    .total_target_capacity(total)
                    .build(),
            )
            .excess_capacity_termination_policy(FleetExcessCapacityTerminationPolicy::NoTermination)
            .send()
    };
    let lowered = outcome(modify(0).await);
    let total = tb.fleet_target_capacity(&fleet).await.unwrap();
    vec![
        (
            "EC2 Fleet tags its instances with its ID",
            if tag.as_deref() == Some(fleet.as_str()) {
                "tagged".to_string()
            } else {
                format!("{tag:?}")
            },
        ),
        ("ModifyFleet of a maintain fleet", lowered),
        ("the fleet's new target capacity", format!("{total:?}")),
    ]
}

/// EC2 Fleet: the double tags a fleet's instances with `aws:ec2:fleet-id`
/// and answers ModifyFleet (an idle end lowers the fleet); bare moto does
/// neither.
#[tokio::test]
async fn fleet_rules() {
    let (double, bare) = tokio::join!(Testbed::start(REGION), Testbed::start_bare(REGION));
    let (double, bare) = (double.unwrap(), bare.unwrap());
    let (on_double, on_bare) = tokio::join!(fleet_answers(&double), fleet_answers(&bare));
    assert_rules(&on_double, &on_bare, &["tagged", "ok", "Some(0)"]);
}

//! Many daemons at once, on the AWS double with AWS's quotas.

use std::time::Duration;

use serde_json::json;

use super::common::*;

/// A dozen instances across two zones boot together, each with its own
/// volume and record in one hosted zone, under the real API quotas: every
/// daemon comes up, every volume is attached to its own instance, every
/// record points at its instance.
#[tokio::test]
async fn a_fleet_boots_together_under_the_quotas() {
    let tb = Testbed::start("us-east-1").await.unwrap();
    let double = tb.double.clone().unwrap();
    double
        .configure(json!({"real_quotas": true, "delays": {"attach": 0.3, "device": 0.1}}))
        .await
        .unwrap();
    let fleet = tb.launch_fleet(12, &["a", "b"]).await.unwrap();
    let zone = tb.create_hosted_zone("fleet.example.com").await.unwrap();

    let dir = tempdir();
    let mut daemons = Vec::new();
    let mut expected = Vec::new();
    for (i, instance) in fleet.iter().enumerate() {
        let volume = tb.create_volume(&instance.meta.zone, 8).await.unwrap();
        let name = format!("node-{i}.fleet.example.com");
        let config = write_config(
            dir.path(),
            &format!("node-{i}.jsonc"),
            &format!(
                r#"{{ "domains": {{ "node": {{
                    "attach-volume": [{{ "device": "/dev/xvdf", "source": "x", "volume-id": "{volume}" }}],
                    "update-route53": [{{ "hostedzone": "{zone}", "name": "{name}" }}] }} }} }}"#
            ),
        );
        expected.push((instance, volume, name, config));
    }
    // AWS's rate for mutating EC2 calls, with the burst a fleet has mostly
    // spent already: the daemons' attaches and tags must be throttled.
    double
        .configure(json!({"throttle": {"ec2_mutating": {"rate": 5, "burst": 8}}}))
        .await
        .unwrap();
    double.clear_calls().await.unwrap();
    for (instance, _, _, config) in &expected {
        let config = config.display().to_string();
        let args = ["run", "--config", config.as_str(), "--keep-hostname"];
        daemons.push(
            DaemonProcess::spawn(&daemon_bin(), &args, &tb.daemon_env(instance), false).unwrap(),
        );
    }
    for daemon in &mut daemons {
        daemon.wait_ready(Duration::from_secs(120)).await.unwrap();
    }
    let throttled = double
        .calls()
        .await
        .unwrap()
        .iter()
        .filter(|c| c.service == "ec2" && c.outcome == "throttled")
        .count();
    assert!(
        throttled > 0,
        "the quota must have bitten for this test to mean anything"
    );
    for (instance, volume, name, _) in &expected {
        let attachments = tb.attachments(volume).await.unwrap();
        assert_eq!(attachments.len(), 1, "{volume}");
        assert_eq!(attachments[0].0, instance.meta.instance_id, "{volume}");
        let ip = instance.meta.public_ipv4.clone().unwrap();
        assert_eq!(
            tb.record_values(&zone, name, "A").await.unwrap(),
            vec![ip],
            "{name}"
        );
    }
    for daemon in &mut daemons {
        daemon.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    }
    for daemon in &mut daemons {
        assert_eq!(
            daemon.wait_exit(EXIT_TIMEOUT).await.unwrap(),
            0,
            "{}",
            daemon.log()
        );
    }
}

/// Forty instances boot at once, each pointing its own name in one hosted
/// zone, under Route53's request quota and with the zone refusing changes
/// that come too close together (PriorRequestNotComplete): every daemon
/// comes up and every name points at its instance.
#[tokio::test]
async fn forty_daemons_upsert_into_one_zone_under_the_quota() {
    const N: usize = 40;
    let tb = Testbed::start("us-east-1").await.unwrap();
    let fleet = tb.launch_fleet(N, &["a", "b", "c"]).await.unwrap();
    let zone = tb.create_hosted_zone("fleet.example.com").await.unwrap();
    let double = tb.double.clone().unwrap();
    double
        .configure(json!({"real_quotas": true, "route53_zone_busy": 0.05}))
        .await
        .unwrap();
    double.clear_calls().await.unwrap();
    let dir = tempdir();
    let started = std::time::Instant::now();
    let mut daemons = Vec::new();
    for (i, instance) in fleet.iter().enumerate() {
        let config = write_config(
            dir.path(),
            &format!("node-{i}.jsonc"),
            &format!(
                r#"{{ "domains": {{ "node": {{ "update-route53": [
                    {{ "hostedzone": "{zone}", "name": "node-{i}.fleet.example.com" }} ] }} }} }}"#
            ),
        );
        daemons.push(spawn_run(&tb, instance, &config));
    }
    for daemon in &mut daemons {
        daemon.wait_ready(Duration::from_secs(180)).await.unwrap();
    }
    let took = started.elapsed();
    let calls = double.calls().await.unwrap();
    let refused = calls
        .iter()
        .filter(|c| c.service == "route53" && c.outcome != "answered")
        .count();
    eprintln!(
        "{N} daemons READY in {:.1}s; {} Route53 calls, {refused} refused (throttled or zone busy)",
        took.as_secs_f64(),
        calls.iter().filter(|c| c.service == "route53").count()
    );
    assert!(
        refused > 0,
        "the quota must have bitten for this test to mean anything"
    );
    double.configure(json!({"reset": true})).await.unwrap();
    for (i, instance) in fleet.iter().enumerate() {
        let name = format!("node-{i}.fleet.example.com");
        assert_eq!(
            tb.record_values(&zone, &name, "A").await.unwrap(),
            vec![instance.meta.public_ipv4.clone().unwrap()],
            "{name}"
        );
    }
    for daemon in &mut daemons {
        stop_cleanly(daemon).await;
    }
    let retried = daemons
        .iter()
        .filter(|d| d.log().contains("; retry 1 of"))
        .count();
    eprintln!("{retried} of {N} daemons retried at least once");
}

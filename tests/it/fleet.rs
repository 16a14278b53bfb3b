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
        let config = config.display().to_string();
        let args = ["run", "--config", config.as_str(), "--keep-hostname"];
        daemons.push(
            DaemonProcess::spawn(&daemon_bin(), &args, &tb.daemon_env(instance), false).unwrap(),
        );
        expected.push((instance, volume, name));
    }
    for daemon in &mut daemons {
        daemon.wait_ready(Duration::from_secs(120)).await.unwrap();
    }
    for (instance, volume, name) in &expected {
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

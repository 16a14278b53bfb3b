//! Route53 records: left cleanly, never taken from a successor, restored
//! when the domain fails.

use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use nix::sys::signal::Signal;

use super::common::*;

const REGION: &str = "us-east-1";

fn record_config(zone: &str, extra_records: &str) -> String {
    format!(
        r#"{{ "domains": {{ "game": {{ "update-route53": [
            {{ "hostedzone": "{zone}", "name": "play.example.com", "ttl": 30, "delete-on": ["stopping", "interrupted"] }}
            {extra_records} ] }} }} }}"#
    )
}

#[tokio::test]
async fn delete_on_leaves_a_successors_record_alone() {
    let tb = Testbed::start(REGION).await.unwrap();
    let zone = tb.create_hosted_zone("example.com").await.unwrap();
    let fleet = tb.launch_fleet(2, &["a"]).await.unwrap();
    let (old, new) = (&fleet[0], &fleet[1]);
    let dir = tempdir();
    let config = write_config(dir.path(), "game.jsonc", &record_config(&zone, ""));
    let ip = |i: &SimInstance| i.meta.public_ipv4.clone().unwrap();

    let mut first = spawn_run(&tb, old, &config);
    first.wait_ready(READY_TIMEOUT).await.unwrap();
    assert_eq!(
        tb.record_values(&zone, "play.example.com", "A")
            .await
            .unwrap(),
        vec![ip(old)]
    );
    let mut second = spawn_run(&tb, new, &config);
    second.wait_ready(READY_TIMEOUT).await.unwrap();
    assert_eq!(
        tb.record_values(&zone, "play.example.com", "A")
            .await
            .unwrap(),
        vec![ip(new)]
    );

    // The old instance leaves: the name is its successor's now.
    first.signal(Signal::SIGTERM).unwrap();
    assert_eq!(
        first.wait_exit(EXIT_TIMEOUT).await.unwrap(),
        0,
        "{}",
        first.log()
    );
    assert!(
        first.log().contains("a successor took it"),
        "{}",
        first.log()
    );
    assert_eq!(
        tb.record_values(&zone, "play.example.com", "A")
            .await
            .unwrap(),
        vec![ip(new)]
    );

    // The successor is interrupted: the record goes with it.
    new.imds.raise_spot_interruption("terminate", 120);
    assert_eq!(
        second.wait_exit(EXIT_TIMEOUT).await.unwrap(),
        0,
        "{}",
        second.log()
    );
    assert!(tb
        .record_values(&zone, "play.example.com", "A")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_failed_domain_puts_the_records_back() {
    let tb = Testbed::start(REGION).await.unwrap();
    let zone = tb.create_hosted_zone("example.com").await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    // What the name pointed at before this instance.
    let before = ResourceRecordSet::builder()
        .name("play.example.com")
        .r#type(RrType::A)
        .ttl(30)
        .resource_records(
            ResourceRecord::builder()
                .value("192.0.2.50")
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    tb.route53
        .change_resource_record_sets()
        .hosted_zone_id(&zone)
        .change_batch(
            ChangeBatch::builder()
                .changes(
                    Change::builder()
                        .action(ChangeAction::Create)
                        .resource_record_set(before)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let dir = tempdir();
    let extra = format!(
        r#", {{ "hostedzone": "{zone}", "name": "new.example.com" }},
            {{ "hostedzone": "Z00000000000000000NOPE", "name": "x.example.org" }}"#
    );
    let config = write_config(dir.path(), "game.jsonc", &record_config(&zone, &extra));
    let mut d = spawn_run(&tb, &instance, &config);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 1, "{}", d.log());
    assert_eq!(
        tb.record_values(&zone, "play.example.com", "A")
            .await
            .unwrap(),
        vec!["192.0.2.50"]
    );
    assert!(tb
        .record_values(&zone, "new.example.com", "A")
        .await
        .unwrap()
        .is_empty());
}

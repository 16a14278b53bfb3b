//! Route53 records: left cleanly, never taken from a successor, restored
//! when the domain fails.

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
    set_record(&tb, &zone, "play.example.com", RrType::A, "192.0.2.50").await;
    let dir = tempdir();
    let extra = format!(
        r#", {{ "hostedzone": "{zone}", "name": "new.example.com" }},
            {{ "hostedzone": "Z00000000000000000NOPE", "name": "x.example.org" }}"#
    );
    let config = write_config(dir.path(), "game.jsonc", &record_config(&zone, &extra));
    let double = tb.double.clone().unwrap();
    double.clear_calls().await.unwrap();
    let mut d = spawn_run(&tb, &instance, &config);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 1, "{}", d.log());
    // The zone that exists was pointed here, then put back.
    let changes = changes_sent(&double).await;
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(changes[0].contains("new.example.com"), "{changes:?}");
    assert_points_back(&tb, &zone).await;
    assert!(tb
        .record_values(&zone, "new.example.com", "A")
        .await
        .unwrap()
        .is_empty());
}

/// The names a domain points, by address mode, in two hosted zones: one
/// change batch per zone; the predecessor's AAAA (this instance has no
/// IPv6) is deleted rather than left pointing at a dead instance.
#[tokio::test]
async fn each_address_mode_in_one_batch_per_zone() {
    let tb = Testbed::start(REGION).await.unwrap();
    let public = tb.create_hosted_zone("example.com").await.unwrap();
    let private = tb.create_hosted_zone("internal.example").await.unwrap();
    let instance = tb
        .launch_instance_with("a", |m| {
            m.secondary_public_ipv4 = vec!["198.51.100.99".into()];
        })
        .await
        .unwrap();
    let (ipv4, private_ipv4) = (
        instance.meta.public_ipv4.clone().unwrap(),
        instance.meta.private_ipv4.clone().unwrap(),
    );
    set_record(&tb, &public, "play.example.com", RrType::A, "192.0.2.50").await;
    set_record(
        &tb,
        &public,
        "play.example.com",
        RrType::Aaaa,
        "2001:db8::50",
    )
    .await;
    let double = tb.double.clone().unwrap();
    double.clear_calls().await.unwrap();
    let dir = tempdir();
    let config = records_config(
        dir.path(),
        &format!(
            r#"{{ "hostedzone": "{public}", "name": "play.example.com" }},
            {{ "hostedzone": "{private}", "name": "game.internal.example", "address": "private" }},
            {{ "hostedzone": "{public}", "name": "all.example.com", "address": "all-public" }}"#
        ),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let values = |zone: &str, name: &str, kind: &str| {
        let (zone, name, kind) = (zone.to_string(), name.to_string(), kind.to_string());
        let tb = &tb;
        async move {
            let mut v = tb.record_values(&zone, &name, &kind).await.unwrap();
            v.sort();
            v
        }
    };
    assert_eq!(
        values(&public, "play.example.com", "A").await,
        std::slice::from_ref(&ipv4)
    );
    assert!(values(&public, "play.example.com", "AAAA").await.is_empty());
    assert_eq!(
        values(&private, "game.internal.example", "A").await,
        [private_ipv4]
    );
    let mut all = vec![ipv4, "198.51.100.99".to_string()];
    all.sort();
    assert_eq!(values(&public, "all.example.com", "A").await, all);
    let changes: Vec<_> = double
        .calls()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.action == "ChangeResourceRecordSets")
        .collect();
    assert_eq!(changes.len(), 2, "one batch per zone: {changes:?}");
    stop_cleanly(&mut d).await;
    assert!(d.log().contains("AAAA deleted"), "{}", d.log());
}

/// With `wait-insync`, READY comes only once Route53 calls the change
/// INSYNC, which the double makes take two seconds.
#[tokio::test]
async fn wait_insync_holds_ready_until_the_change_is_in_sync() {
    let tb = Testbed::start(REGION).await.unwrap();
    let zone = tb.create_hosted_zone("example.com").await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let double = tb.double.clone().unwrap();
    double
        .configure(serde_json::json!({"delays": {"route53_insync": 2.0}}))
        .await
        .unwrap();
    let dir = tempdir();
    let config = records_config(
        dir.path(),
        &format!(
            r#"{{ "hostedzone": "{zone}", "name": "play.example.com", "wait-insync": true }}"#
        ),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let ready_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let calls = double.calls().await.unwrap();
    let changed_at = calls
        .iter()
        .find(|c| c.action == "ChangeResourceRecordSets")
        .expect("the record was changed")
        .t;
    assert!(
        ready_at - changed_at >= 2.0,
        "READY {:.2}s after the change",
        ready_at - changed_at
    );
    assert!(calls.iter().filter(|c| c.action == "GetChange").count() >= 2);
    stop_cleanly(&mut d).await;
    assert!(d.log().contains("INSYNC after"), "{}", d.log());
}

/// Throttling and a busy zone are retried with the count in the log.
#[tokio::test]
async fn refused_route53_calls_are_retried_and_counted() {
    let tb = Testbed::start(REGION).await.unwrap();
    let zone = tb.create_hosted_zone("example.com").await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let refuse =
        |code: &str, count: u32| serde_json::json!({"count": count, "status": 400, "code": code});
    tb.double
        .clone()
        .unwrap()
        .configure(serde_json::json!({"fail_next": {
            "ListResourceRecordSets": refuse("Throttling", 1),
            "ChangeResourceRecordSets": refuse("PriorRequestNotComplete", 2),
        }}))
        .await
        .unwrap();
    let dir = tempdir();
    let config = write_config(dir.path(), "game.jsonc", &record_config(&zone, ""));
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    assert_eq!(
        tb.record_values(&zone, "play.example.com", "A")
            .await
            .unwrap(),
        vec![instance.meta.public_ipv4.clone().unwrap()]
    );
    stop_cleanly(&mut d).await;
    let log = d.log();
    for expected in [
        "ListResourceRecordSets play.example.com: Throttling; retry 1 of 11",
        "PriorRequestNotComplete; retry 2 of 11",
        "ChangeResourceRecordSets play.example.com: succeeded after 2 retries",
    ] {
        assert!(log.contains(expected), "{expected:?} not in:\n{log}");
    }
}

/// A config whose one domain `game` sets `records` (JSON objects, comma-separated).
fn records_config(dir: &std::path::Path, records: &str) -> std::path::PathBuf {
    write_config(
        dir,
        "game.jsonc",
        &format!(r#"{{ "domains": {{ "game": {{ "update-route53": [ {records} ] }} }} }}"#),
    )
}

/// An application that does not start must not get the clients: the
/// records go back to what they held.
#[tokio::test]
async fn failed_started_hooks_put_the_records_back() {
    let tb = Testbed::start(REGION).await.unwrap();
    let zone = tb.create_hosted_zone("example.com").await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    set_record(&tb, &zone, "play.example.com", RrType::A, "192.0.2.50").await;
    let double = tb.double.clone().unwrap();
    double.clear_calls().await.unwrap();
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        "game.jsonc",
        &format!(
            r#"{{ "domains": {{ "game": {{
                "update-route53": [{{ "hostedzone": "{zone}", "name": "play.example.com" }}],
                "exec": [{{ "on": ["started"], "lines": [{{ "argv": ["/bin/false"] }}] }}] }} }} }}"#
        ),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 1, "{}", d.log());
    let changes = changes_sent(&double).await;
    assert_eq!(changes.len(), 2, "pointed here, then put back: {changes:?}");
    assert!(changes[0].contains(instance.meta.public_ipv4.as_deref().unwrap()));
    assert_points_back(&tb, &zone).await;
    assert!(
        d.log()
            .contains("started hooks failed: put back play.example.com A"),
        "{}",
        d.log()
    );
}

/// An init cut short while waiting for INSYNC: by its timeout, the record
/// is put back; by a spot notice, `delete-on` still deletes it.
#[tokio::test]
async fn an_init_cut_short_still_answers_for_its_records() {
    let tb = Testbed::start(REGION).await.unwrap();
    let zone = tb.create_hosted_zone("example.com").await.unwrap();
    let double = tb.double.clone().unwrap();
    double
        .configure(serde_json::json!({"delays": {"route53_insync": 120.0}}))
        .await
        .unwrap();
    set_record(&tb, &zone, "play.example.com", RrType::A, "192.0.2.50").await;
    let dir = tempdir();
    let record = format!(
        r#"{{ "hostedzone": "{zone}", "name": "play.example.com", "wait-insync": true, "delete-on": ["interrupted"] }}"#
    );

    let instance = tb.launch_instance("a", None).await.unwrap();
    let config = write_config(
        dir.path(),
        "timeout.jsonc",
        &format!(
            r#"{{ "timeout": 3, "domains": {{ "game": {{ "update-route53": [ {record} ] }} }} }}"#
        ),
    );
    double.clear_calls().await.unwrap();
    let mut d = spawn_run(&tb, &instance, &config);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 1, "{}", d.log());
    assert_eq!(changes_sent(&double).await.len(), 2, "{}", d.log());
    assert_points_back(&tb, &zone).await;
    assert!(
        d.log()
            .contains("init timed out: put back play.example.com A"),
        "{}",
        d.log()
    );

    let instance = tb.launch_instance("a", None).await.unwrap();
    let config = records_config(dir.path(), &record);
    double.clear_calls().await.unwrap();
    let mut d = spawn_run(&tb, &instance, &config);
    for _ in 0..1200 {
        if !changes_sent(&double).await.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!changes_sent(&double).await.is_empty(), "{}", d.log());
    instance.imds.raise_spot_interruption("terminate", 120);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    assert!(
        tb.record_values(&zone, "play.example.com", "A")
            .await
            .unwrap()
            .is_empty(),
        "{}",
        d.log()
    );
}

/// The bodies of the ChangeResourceRecordSets calls so far.
async fn changes_sent(double: &ec2fleetd_testbed::double::DoubleControl) -> Vec<String> {
    double
        .calls()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.action == "ChangeResourceRecordSets" && c.outcome == "answered")
        .map(|c| c.params["body"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// `play.example.com` holds what it held before the test's instance came.
async fn assert_points_back(tb: &Testbed, zone: &str) {
    assert_eq!(
        tb.record_values(zone, "play.example.com", "A")
            .await
            .unwrap(),
        vec!["192.0.2.50"]
    );
}

//! The IMDSv2 client against the emulator: tokens, 404s, user data.

use std::io::Write;
use std::time::Duration;

use ec2fleetd::imds::{ImdsClient, InstanceFacts};
use ec2fleetd_testbed::imds::{ImdsEmulator, InstanceMeta};

fn meta() -> InstanceMeta {
    InstanceMeta {
        instance_id: "i-0abc".into(),
        instance_type: "m7g.large".into(),
        launch_index: 3,
        region: "eu-west-1".into(),
        zone: "eu-west-1c".into(),
        mac: "02:aa:bb:cc:dd:ee".into(),
        public_ipv4: Some("203.0.113.9".into()),
        secondary_public_ipv4: vec!["203.0.113.10".into()],
        public_ipv6: Some("2001:db8::9".into()),
        private_ipv4: Some("10.1.2.3".into()),
    }
}

#[tokio::test]
async fn facts_come_from_one_reused_token() {
    let emu = ImdsEmulator::start(meta(), 0).await.unwrap();
    let client = ImdsClient::new(&emu.url());
    let facts = InstanceFacts::read(&client).await.unwrap();
    assert_eq!(facts.instance_id, "i-0abc");
    assert_eq!(facts.instance_type, "m7g.large");
    assert_eq!(facts.launch_index, "3");
    assert_eq!(
        (facts.region.as_str(), facts.zone.as_str()),
        ("eu-west-1", "eu-west-1c")
    );
    assert_eq!(facts.public_ipv4, ["203.0.113.9", "203.0.113.10"]);
    assert_eq!(facts.public_ipv6, ["2001:db8::9"]);
    assert_eq!(facts.private_ipv4.as_deref(), Some("10.1.2.3"));
    assert_eq!(facts.hypervisor, "nitro");
    assert_eq!(emu.tokens_issued(), 1, "one token serves every request");
    assert_eq!(emu.unauthorized(), 0);
}

#[tokio::test]
async fn absent_paths_read_as_none() {
    let emu = ImdsEmulator::start(meta(), 0).await.unwrap();
    let client = ImdsClient::new(&emu.url());
    assert_eq!(client.meta("spot/instance-action").await.unwrap(), None);
    assert_eq!(client.user_data().await.unwrap(), None);
    emu.raise_spot_interruption("stop", 120);
    let notice = client.meta("spot/instance-action").await.unwrap().unwrap();
    assert!(notice.contains("\"action\":\"stop\""), "{notice}");
}

#[tokio::test]
async fn revoked_token_is_replaced_after_a_401() {
    let emu = ImdsEmulator::start(meta(), 0).await.unwrap();
    let client = ImdsClient::new(&emu.url());
    assert_eq!(
        client.meta("instance-id").await.unwrap().as_deref(),
        Some("i-0abc")
    );
    emu.revoke_tokens();
    assert_eq!(
        client.meta("instance-id").await.unwrap().as_deref(),
        Some("i-0abc")
    );
    assert_eq!(emu.unauthorized(), 1);
    assert_eq!(emu.tokens_issued(), 2);
}

#[tokio::test]
async fn token_is_refreshed_before_it_expires() {
    let emu = ImdsEmulator::start(meta(), 0).await.unwrap();
    emu.cap_token_ttl(1);
    let client = ImdsClient::new(&emu.url());
    client.meta("instance-id").await.unwrap();
    // Past 3/4 of the granted second, before the token expires.
    tokio::time::sleep(Duration::from_millis(850)).await;
    client.meta("instance-id").await.unwrap();
    assert_eq!(
        emu.tokens_issued(),
        2,
        "a new token before the old one ran out"
    );
    assert_eq!(
        emu.unauthorized(),
        0,
        "no request was sent with an expired token"
    );
}

#[tokio::test]
async fn gzipped_user_data_is_inflated() {
    let emu = ImdsEmulator::start(meta(), 0).await.unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(b"{ \"domains\": {} }").unwrap();
    emu.set_user_data(gz.finish().unwrap());
    let client = ImdsClient::new(&emu.url());
    assert_eq!(
        client.user_data().await.unwrap().unwrap(),
        b"{ \"domains\": {} }"
    );
}

#[tokio::test]
async fn unreachable_service_names_the_endpoint() {
    let client = ImdsClient::new("http://127.0.0.1:9");
    let err = client.meta("instance-id").await.unwrap_err().to_string();
    assert!(
        err.contains("http://127.0.0.1:9") && err.contains("instance-id"),
        "{err}"
    );
}

#[tokio::test]
async fn a_burst_of_5xx_is_retried_through() {
    let emu = ImdsEmulator::start(meta(), 0).await.unwrap();
    let client = ImdsClient::new(&emu.url());
    emu.fail_next(3);
    assert_eq!(
        client.meta("instance-id").await.unwrap().as_deref(),
        Some("i-0abc")
    );
    emu.fail_next(20);
    let err = client.meta("instance-id").await.unwrap_err().to_string();
    assert!(
        err.contains("status 500") && err.contains("after 4 attempts"),
        "{err}"
    );
}

#[tokio::test]
async fn slow_answers_are_cut_by_the_request_timeout() {
    let emu = ImdsEmulator::start(meta(), 0).await.unwrap();
    let client = ImdsClient::new(&emu.url());
    client.meta("instance-id").await.unwrap();
    emu.set_latency(Duration::from_secs(30));
    let started = std::time::Instant::now();
    let err = client.meta("instance-id").await.unwrap_err().to_string();
    assert!(err.contains("timed out"), "{err}");
    // Four attempts of two seconds and the backoff between them, not 30 s.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

//! Notifications: SNS (read through an SQS subscription), SQS and a
//! webhook all get the typed event, valid under its schema; an endpoint
//! that is down or refuses changes nothing about the daemon's outcome.

use std::time::Duration;

use ec2fleetd_testbed::webhook::WebhookReceiver;
use ec2fleetd_testbed::world::{create_queue, drain_queue};

use super::common::*;

const REGION: &str = "us-east-1";

#[tokio::test]
async fn every_backend_gets_the_typed_event() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", Some("2001:db8::5")).await.unwrap();
    let volume = tb.create_volume("a", 8).await.unwrap();
    let zone = tb.create_hosted_zone("example.net").await.unwrap();
    let (topic, topic_inbox) = tb.topic_with_queue("events").await.unwrap();
    let queue = tb.create_queue("direct").await.unwrap();
    let hook = WebhookReceiver::start().await.unwrap();
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        "game.jsonc",
        &format!(
            r#"{{ "domains": {{ "game": {{
  "attach-volume": [{{ "device": "/dev/xvdf", "source": "x", "volume-id": "{volume}" }}],
  "update-route53": [{{ "hostedzone": "{zone}", "name": "play.example.net", "delete-on": ["interrupted"] }}],
  "notify": [
    {{ "backend": "aws-sns", "options": {{ "topic": "{topic}" }} }},
    {{ "backend": "aws-sqs", "options": {{ "queue-url": "{queue}" }} }},
    {{ "backend": "webhook",
       "options": {{ "url": "{url}", "headers": {{ "Authorization": "Bearer t0ken", "X-Instance": "{{instance_id}}" }} }} }}
  ] }} }} }}"#,
            url = hook.url("/fleet")
        ),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let notice = instance.imds.raise_spot_interruption("terminate", 120);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());

    let webhook: Vec<serde_json::Value> = hook
        .wait_for_delivered(2, Duration::from_secs(10))
        .await
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r.path, "/fleet");
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert_eq!(r.header("authorization"), Some("Bearer t0ken"));
            assert_eq!(
                r.header("x-instance"),
                Some(instance.meta.instance_id.as_str())
            );
            r.json()
        })
        .collect();
    let sqs: Vec<serde_json::Value> = tb
        .drain_queue(&queue)
        .await
        .unwrap()
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    let sns: Vec<serde_json::Value> = tb
        .drain_queue(&topic_inbox)
        .await
        .unwrap()
        .iter()
        .map(|b| {
            let envelope: serde_json::Value = serde_json::from_str(b).unwrap();
            assert_eq!(envelope["MessageAttributes"]["domain"]["Value"], "game");
            serde_json::from_str(envelope["Message"].as_str().unwrap()).unwrap()
        })
        .collect();
    for (backend, events) in [("webhook", &webhook), ("sqs", &sqs), ("sns", &sns)] {
        let names: Vec<&str> = events
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["started", "interrupted"], "{backend}");
        for e in events {
            assert_valid_event(e);
        }
        let (started, interrupted) = (&events[0], &events[1]);
        assert_eq!(started["domain"], "game");
        assert_eq!(
            started["instance"]["id"],
            instance.meta.instance_id.as_str()
        );
        assert_eq!(
            started["instance"]["availability_zone"],
            instance.meta.zone.as_str()
        );
        assert_eq!(
            started["instance"]["addresses"]["ipv6"],
            serde_json::json!(["2001:db8::5"])
        );
        assert_eq!(started["volumes"][0]["id"], volume.as_str());
        assert_eq!(started["volumes"][0]["operation"], "attached");
        assert_eq!(started["records"][0]["name"], "play.example.net");
        assert_eq!(started["records"][0]["deleted"], false);
        assert!(started["interruption"].is_null());
        for phase in ["volumes", "records", "started-hooks"] {
            assert!(started["timings"][phase].as_f64().is_some(), "{phase}");
        }
        assert_eq!(interrupted["interruption"]["action"], "terminate");
        assert_eq!(interrupted["interruption"]["time"], notice.time.as_str());
        assert_eq!(interrupted["records"][0]["deleted"], true, "{backend}");
        assert!(interrupted["timings"]["interrupted-hooks"]
            .as_f64()
            .is_some());
        assert_eq!(started["transaction_id"], interrupted["transaction_id"]);
    }
}

/// A webhook that answers 503 twice is retried until it takes the event; a
/// 4xx is not retried (it would fail again); an endpoint with nothing
/// listening and a queue that does not exist cost only log lines.
#[tokio::test]
async fn failing_endpoints_do_not_change_the_outcome() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let flaky = WebhookReceiver::start().await.unwrap();
    flaky.answer_next(&[503, 503]);
    let refusing = WebhookReceiver::start().await.unwrap();
    refusing.answer_next(&[403; 8]);
    // A port that was free a moment ago: nothing listens there.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempdir();
    let marker = dir.path().join("started");
    let config = write_config(
        dir.path(),
        "app.jsonc",
        &format!(
            r#"{{ "domains": {{ "app": {{
  "exec": [{{ "on": ["started"], "lines": [{{ "argv": ["/usr/bin/touch", "{marker}"] }}] }}],
  "notify": [
    {{ "backend": "webhook", "options": {{ "url": "{flaky}", "retries": 3 }} }},
    {{ "backend": "webhook", "options": {{ "url": "{refusing}" }} }},
    {{ "backend": "webhook", "options": {{ "url": "http://127.0.0.1:{closed}/down", "retries": 1, "timeout": 1 }} }},
    {{ "backend": "aws-sqs", "options": {{ "queue-url": "{endpoint}/123456789012/no-such-queue", "retries": 0 }} }}
  ] }} }} }}"#,
            marker = marker.display(),
            flaky = flaky.url("/hook"),
            refusing = refusing.url("/hook"),
            endpoint = tb.moto.url
        ),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    assert!(marker.exists());
    let delivered = flaky
        .wait_for_delivered(1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(delivered[0].json()["event"], "started");
    assert_eq!(flaky.received().len(), 3, "two 503s, then the delivery");
    assert_eq!(refusing.received().len(), 1, "a 403 is not retried");
    stop_cleanly(&mut d).await;
    let log = d.log();
    for expected in [
        "attempt 1 of 4 failed: POST",
        "503 Service Unavailable",
        "notified http",
        "(attempt 3 of 4)",
        "not retried: it would fail again",
        "not delivered after 2 attempt(s) (out of retries)",
        "SQS SendMessage to",
    ] {
        assert!(
            log.contains(expected),
            "{expected:?} not in the log:\n{log}"
        );
    }
}

/// `matrix` turns events off per notification.
#[tokio::test]
async fn the_matrix_turns_events_off() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let all = WebhookReceiver::start().await.unwrap();
    let some = WebhookReceiver::start().await.unwrap();
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        "app.jsonc",
        &format!(
            r#"{{ "domains": {{ "app": {{ "notify": [
  {{ "backend": "webhook", "options": {{ "url": "{all}" }} }},
  {{ "backend": "webhook", "options": {{ "url": "{some}" }},
     "matrix": {{ "started": {{ "enabled": false }} }} }} ] }} }} }}"#,
            all = all.url("/all"),
            some = some.url("/some")
        ),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    stop_cleanly(&mut d).await;
    let events = |r: &WebhookReceiver| -> Vec<String> {
        r.received()
            .iter()
            .map(|m| m.json()["event"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(events(&all), ["started", "stopping"]);
    assert_eq!(events(&some), ["stopping"]);
}

/// An endpoint that takes the connection and never answers holds neither
/// READY nor the init timeout: notifications go out while the watch runs.
#[tokio::test]
async fn a_hanging_endpoint_holds_nothing_up() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    // Connections wait in the backlog: nothing ever reads them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        "app.jsonc",
        &format!(
            r#"{{ "timeout": 3, "domains": {{ "app": {{
  "exec": [{{ "on": ["started"], "lines": [{{ "argv": ["/bin/true"] }}] }}],
  "notify": [{{ "backend": "webhook",
                "options": {{ "url": "http://127.0.0.1:{port}/hook", "timeout": 2, "retries": 2 }} }}] }} }} }}"#
        ),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    // Past the init timeout, with the notification still being tried.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(d.child.try_wait().unwrap().is_none(), "{}", d.log());
    stop_cleanly(&mut d).await;
    assert!(d.log().contains("attempt 1 of 3 failed"), "{}", d.log());
    drop(silent);
}

/// HTTPS: the webhook's certificate must be trusted. A daemon that does not
/// trust its CA delivers nothing (and still comes up); one told to trust it
/// (`SSL_CERT_FILE`) delivers.
#[tokio::test]
async fn webhooks_go_over_verified_https() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let hook = WebhookReceiver::start_tls().await.unwrap();
    assert!(hook.url("/x").starts_with("https://"));
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        "app.jsonc",
        &format!(
            r#"{{ "domains": {{ "app": {{ "notify": [
                {{ "backend": "webhook", "options": {{ "url": "{}", "retries": 0 }},
                   "envelope": {{ "body": {{ "text": "{{domain}} on {{instance_id}}: {{daemon_state}}" }} }} }} ] }} }} }}"#,
            hook.url("/chat")
        ),
    );
    let config = config.display().to_string();
    let args = ["run", "--config", config.as_str(), "--keep-hostname"];

    let mut untrusting =
        DaemonProcess::spawn(&daemon_bin(), &args, &tb.daemon_env(&instance), false).unwrap();
    untrusting.wait_ready(READY_TIMEOUT).await.unwrap();
    stop_cleanly(&mut untrusting).await;
    assert!(hook.received().is_empty());
    assert!(
        untrusting.log().contains("not delivered"),
        "{}",
        untrusting.log()
    );

    let mut env = tb.daemon_env(&instance);
    env.push((
        "SSL_CERT_FILE".into(),
        hook.ca_file().unwrap().display().to_string(),
    ));
    let mut trusting = DaemonProcess::spawn(&daemon_bin(), &args, &env, false).unwrap();
    trusting.wait_ready(READY_TIMEOUT).await.unwrap();
    let got = hook
        .wait_for_delivered(1, Duration::from_secs(10))
        .await
        .unwrap();
    // An envelope body given as JSON: its strings are templates, the
    // result is JSON whatever the values hold.
    assert_eq!(
        got[0].json(),
        serde_json::json!({ "text": format!("app on {}: started", instance.meta.instance_id) })
    );
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    stop_cleanly(&mut trusting).await;

    // SSL_CERT_DIR: a folder of PEM files.
    let certs = tempdir();
    std::fs::copy(hook.ca_file().unwrap(), certs.path().join("fleet-ca.pem")).unwrap();
    let mut env = tb.daemon_env(&instance);
    env.push(("SSL_CERT_DIR".into(), certs.path().display().to_string()));
    let mut by_dir = DaemonProcess::spawn(&daemon_bin(), &args, &env, false).unwrap();
    by_dir.wait_ready(READY_TIMEOUT).await.unwrap();
    hook.wait_for_delivered(2, Duration::from_secs(10))
        .await
        .unwrap();
    stop_cleanly(&mut by_dir).await;
}

/// The example in `doc/events.md` is a valid event.
#[test]
fn the_documented_example_matches_the_schema() {
    let doc = std::fs::read_to_string(repo_file("doc/events.md")).unwrap();
    let example = doc
        .split("```json\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("doc/events.md has a ```json example");
    assert_valid_event(&serde_json::from_str(example).unwrap());
}

/// A domain that fails reports why, with what it had attached released and
/// no records left pointing here.
#[tokio::test]
async fn a_failed_domain_reports_why() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let volume = tb.create_volume("a", 8).await.unwrap();
    let zone = tb.create_hosted_zone("example.net").await.unwrap();
    let hook = WebhookReceiver::start().await.unwrap();
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        "game.jsonc",
        &format!(
            r#"{{ "domains": {{ "game": {{
  "attach-volume": [{{ "device": "/dev/xvdf", "source": "x", "volume-id": "{volume}" }}],
  "update-route53": [{{ "hostedzone": "{zone}", "name": "play.example.net" }},
                     {{ "hostedzone": "Z00000000000000000NOPE", "name": "x.example.org" }}],
  "notify": [{{ "backend": "webhook", "options": {{ "url": "{}" }} }}] }} }} }}"#,
            hook.url("/fleet")
        ),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 1, "{}", d.log());
    let got = hook
        .wait_for_delivered(1, Duration::from_secs(10))
        .await
        .unwrap();
    let event = got[0].json();
    assert_valid_event(&event);
    assert_eq!(event["event"], "failed");
    assert_eq!(event["volumes"][0]["released"], true);
    assert_eq!(event["records"], serde_json::json!([]));
    let errors = event["errors"].to_string();
    assert!(errors.contains("NoSuchHostedZone"), "{errors}");
}

/// config.md: a text body is sent as text unless it parses as JSON; a
/// webhook says who sends it and which event; 408 and 429 are retried, the
/// n-th retry after at least a tenth of 0.5 s × 2ⁿ⁻¹.
#[tokio::test]
async fn webhook_bodies_headers_and_retries_are_as_documented() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let text = WebhookReceiver::start().await.unwrap();
    text.answer_next(&[408, 429]);
    let json = WebhookReceiver::start().await.unwrap();
    let dir = tempdir();
    let config = json_config(
        dir.path(),
        "app",
        serde_json::json!({ "domains": { "app": { "notify": [
            { "backend": "webhook", "options": { "url": text.url("/t"), "retries": 2 },
              "envelope": { "body": "{domain} is {daemon_state}" } },
            { "backend": "webhook", "options": { "url": json.url("/j"), "retries": 0 },
              "envelope": { "body": "{{\"d\": \"{domain}\"}}" } } ] } } }),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let delivered = text
        .wait_for_delivered(1, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(delivered[0].body, "app is started");
    assert_eq!(
        delivered[0].header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(delivered[0].header("x-ec2fleetd-event"), Some("started"));
    let agent = delivered[0].header("user-agent").unwrap_or_default();
    assert_eq!(agent, concat!("ec2fleetd/", env!("CARGO_PKG_VERSION")));
    let tries = text.received();
    let statuses: Vec<u16> = tries.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [408, 429, 200]);
    assert!(tries[1].at - tries[0].at >= Duration::from_millis(50));
    assert!(tries[2].at - tries[1].at >= Duration::from_millis(100));

    let got = json
        .wait_for_delivered(1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    assert_eq!(got[0].json(), serde_json::json!({ "d": "app" }));
    stop_cleanly(&mut d).await;
}

/// config.md: SNS and SQS messages carry `event`, `domain` and
/// `instance_id`; `options.region` names the queue's region, and the
/// daemon's region is `AWS_REGION` before the instance's.
#[tokio::test]
async fn messages_carry_their_attributes_and_go_to_their_region() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let (topic, inbox) = tb.topic_with_queue("events").await.unwrap();
    let home = tb.create_queue("fleet").await.unwrap();
    let away = tb.sqs_in("eu-west-1");
    let away_url = create_queue(&away, "fleet").await.unwrap();
    let dir = tempdir();
    let sqs = |region: Option<&str>| {
        let mut options = serde_json::json!({ "queue-url": away_url, "retries": 0 });
        if let Some(r) = region {
            options["region"] = r.into();
        }
        serde_json::json!({ "backend": "aws-sqs", "options": options,
                            "matrix": { "stopping": { "enabled": false } } })
    };
    // Named region: eu-west-1 while the daemon's is the instance's.
    let config = json_config(
        dir.path(),
        "app",
        serde_json::json!({ "domains": { "app": { "notify": [
            { "backend": "aws-sns", "options": { "topic": topic } },
            sqs(Some("eu-west-1")) ] } } }),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let away_got = std::sync::Mutex::new(Vec::new());
    until("a message in eu-west-1", || async {
        let m = drain_queue(&away, &away_url).await.unwrap();
        away_got.lock().unwrap().extend(m);
        !away_got.lock().unwrap().is_empty()
    })
    .await;
    let away_got = away_got.into_inner().unwrap();
    stop_cleanly(&mut d).await;
    let attribute = |m: &aws_sdk_sqs::types::Message, name: &str| {
        m.message_attributes()
            .and_then(|a| a.get(name))
            .and_then(|v| v.string_value())
            .map(str::to_string)
    };
    let id = instance.meta.instance_id.as_str();
    for (name, value) in [("event", "started"), ("domain", "app"), ("instance_id", id)] {
        assert_eq!(attribute(&away_got[0], name).as_deref(), Some(value));
    }
    let sns: Vec<serde_json::Value> = tb
        .drain_queue(&inbox)
        .await
        .unwrap()
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    let started = sns
        .iter()
        .find(|e| e["MessageAttributes"]["event"]["Value"] == "started")
        .unwrap_or_else(|| panic!("no started message: {sns:?}"));
    assert_eq!(started["MessageAttributes"]["domain"]["Value"], "app");
    assert_eq!(started["MessageAttributes"]["instance_id"]["Value"], id);

    // No region option: AWS_REGION wins over the instance's region.
    let config = json_config(
        dir.path(),
        "app2",
        serde_json::json!({ "domains": { "app": { "notify": [sqs(None)] } } }),
    );
    let config = config.display().to_string();
    let args = ["run", "--config", config.as_str(), "--keep-hostname"];
    let mut env = tb.daemon_env(&instance);
    env.push(("AWS_REGION".into(), "eu-west-1".into()));
    let mut d = DaemonProcess::spawn(&daemon_bin(), &args, &env, false).unwrap();
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    until("a message in AWS_REGION", || async {
        !drain_queue(&away, &away_url).await.unwrap().is_empty()
    })
    .await;
    stop_cleanly(&mut d).await;
    assert!(
        tb.drain_queue(&home).await.unwrap().is_empty(),
        "nothing went to the instance's region"
    );
}

//! `ec2fleetd run` through whole lives of an instance, on moto and the IMDS
//! emulator.

use std::path::Path;

use nix::sys::signal::Signal;

use super::common::*;

const REGION: &str = "us-east-1";
const IPV6: &str = "2001:db8::10";

/// The seed README's Minecraft config, its IDs swapped for the testbed's and
/// its commands for the recorder (which cannot mount or start services here).
struct Minecraft {
    tb: Testbed,
    instance: SimInstance,
    volume: String,
    zone: String,
    queue: String,
    dir: tempfile::TempDir,
    log: std::path::PathBuf,
    config: std::path::PathBuf,
}

async fn minecraft() -> Minecraft {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", Some(IPV6)).await.unwrap();
    let volume = tb.create_volume("a", 20).await.unwrap();
    let zone = tb.create_hosted_zone("my-world.mc").await.unwrap();
    let (topic, queue) = tb.topic_with_queue("fleet-events").await.unwrap();
    let dir = tempdir();
    let log = dir.path().join("hooks.log");
    let hook = recorder(dir.path(), &log);
    let hook = hook.display().to_string();
    let text = std::fs::read_to_string(repo_file("examples/minecraft.jsonc"))
        .unwrap()
        .replace("vol-0123456789abcdef0", &volume)
        .replace("Z0123456789ABCDEFGHIJ", &zone)
        .replace("arn:aws:sns:us-east-1:123456789012:fleet-events", &topic)
        .replace("/bin/mount", &hook)
        .replace("/bin/systemctl", &hook)
        .replace(
            "\"minecraft.service\"",
            "\"minecraft.service\", \"{instance_id}\", \"{attached_device}\", \"{primary_public_ipv4}\", \"{attach_op}\"",
        )
        .replace("\"/path/to/interrupt/script\"", &format!("\"{hook}\", \"interrupted\", \"{{interrupt_action}}\""));
    let config = write_config(dir.path(), "minecraft.jsonc", &text);
    Minecraft {
        tb,
        instance,
        volume,
        zone,
        queue,
        dir,
        log,
        config,
    }
}

/// SNS messages that reached the queue: (subject, message).
/// The notifications waiting in the topic's queue; waits (up to ten
/// seconds) for the first, as they go out once the daemon is up.
async fn sns_messages(tb: &Testbed, queue: &str) -> Vec<(String, serde_json::Value)> {
    let mut bodies = Vec::new();
    for _ in 0..100 {
        bodies = tb.drain_queue(queue).await.unwrap();
        if !bodies.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    bodies
        .iter()
        .map(|body| {
            let envelope: serde_json::Value = serde_json::from_str(body).unwrap();
            let message = envelope["Message"].as_str().unwrap_or_default();
            (
                envelope["Subject"].as_str().unwrap_or_default().to_string(),
                serde_json::from_str(message).unwrap_or(serde_json::Value::String(message.into())),
            )
        })
        .collect()
}

#[tokio::test]
async fn minecraft_example_lives_through_a_spot_interruption() {
    let m = minecraft().await;
    // Attaching takes time, and the device shows up later still: the
    // daemon must wait for both.
    let delays = serde_json::json!({"delays": {"attach": 0.4, "device": 0.3}});
    m.tb.double
        .as_ref()
        .unwrap()
        .configure(delays)
        .await
        .unwrap();
    let own_uts = uts_namespace_available();
    let machine_hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let config = m.config.display().to_string();
    let mut args = vec!["run", "--config", &config];
    if !own_uts {
        args.push("--keep-hostname");
    }
    let mut daemon =
        DaemonProcess::spawn(&daemon_bin(), &args, &m.tb.daemon_env(&m.instance), own_uts).unwrap();
    daemon.wait_ready(READY_TIMEOUT).await.unwrap();
    let id = &m.instance.meta.instance_id;
    let ipv4 = m
        .instance
        .meta
        .public_ipv4
        .clone()
        .expect("moto gives a public IPv4");

    // The volume is attached to this instance, as the config's device.
    assert_eq!(
        m.tb.attachments(&m.volume).await.unwrap(),
        vec![(id.clone(), "attached".to_string(), "/dev/xvdf".to_string())]
    );
    // The records point at this instance.
    assert_eq!(
        m.tb.record_values(&m.zone, "my-world.mc", "A")
            .await
            .unwrap(),
        vec![ipv4.clone()]
    );
    assert_eq!(
        m.tb.record_values(&m.zone, "my-world.mc", "AAAA")
            .await
            .unwrap(),
        vec![IPV6.to_string()]
    );
    // The volume hook (mount) ran, then the started hook with its macros filled in.
    let device = m
        .instance
        .root
        .path()
        .join("dev/nvme1n1")
        .display()
        .to_string();
    let calls = recorded(&m.log);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0][1..], ["/mnt/mc".to_string()]);
    assert_eq!(
        calls[1][1..],
        [
            "start",
            "minecraft.service",
            id.as_str(),
            device.as_str(),
            ipv4.as_str(),
            "true"
        ]
        .map(String::from)
    );
    if own_uts {
        assert_eq!(
            calls[1][0], "my-world.mc",
            "the hostname from the config, in the daemon's namespace"
        );
    }
    // The SNS notification arrived, with the Python daemon's subject and
    // the typed event as its body.
    let messages = sns_messages(&m.tb, &m.queue).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(
        messages[0].0,
        format!("Fleetd my-world.mc on {id} state changed to [started]")
    );
    assert_valid_event(&messages[0].1);
    assert_eq!(messages[0].1["volumes"][0]["id"], m.volume.as_str());
    assert_eq!(messages[0].1["event"], "started");
    // systemd heard READY and a status line.
    let notes = daemon.notify.messages();
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("STATUS=started: 1 domain(s) up")),
        "{notes:?}"
    );

    let notice = m.instance.imds.raise_spot_interruption("terminate", 120);
    assert_eq!(
        daemon.wait_exit(EXIT_TIMEOUT).await.unwrap(),
        0,
        "{}",
        daemon.log()
    );
    let calls = recorded(&m.log);
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert_eq!(
        calls[2][1..],
        ["interrupted", "terminate"].map(String::from)
    );
    let messages = sns_messages(&m.tb, &m.queue).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_valid_event(&messages[0].1);
    assert_eq!(messages[0].1["event"], "interrupted");
    assert_eq!(messages[0].1["interruption"]["time"], notice.time.as_str());
    assert!(daemon.notify.messages().iter().any(|n| n == "STOPPING=1"));
    // The machine's own hostname was never touched.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        machine_hostname
    );
    drop(m.dir);
}

#[tokio::test]
async fn second_run_reuses_the_attached_volume() {
    let m = minecraft().await;
    let config = m.config.display().to_string();
    let env = m.tb.daemon_env(&m.instance);
    let args = ["run", "--config", config.as_str(), "--keep-hostname"];
    let double = m.tb.double.clone().unwrap();
    for round in ["first", "second"] {
        double.clear_calls().await.unwrap();
        let mut daemon = DaemonProcess::spawn(&daemon_bin(), &args, &env, false).unwrap();
        daemon.wait_ready(READY_TIMEOUT).await.unwrap();
        daemon.signal(Signal::SIGTERM).unwrap();
        assert_eq!(
            daemon.wait_exit(EXIT_TIMEOUT).await.unwrap(),
            0,
            "{round}: {}",
            daemon.log()
        );
    }
    let started: Vec<_> = recorded(&m.log)
        .into_iter()
        .filter(|c| c.get(1).is_some_and(|a| a == "start"))
        .collect();
    assert_eq!(started.len(), 2);
    assert_eq!(started[0].last().unwrap(), "true", "the first run attached");
    assert_eq!(
        started[1].last().unwrap(),
        "false",
        "the second found it attached"
    );
    assert_eq!(m.tb.attachments(&m.volume).await.unwrap().len(), 1);
    // The second run changed nothing in EC2 (DNS is upserted again, as before).
    let ec2_changes: Vec<_> = double
        .calls()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.service == "ec2" && c.is_mutating())
        .map(|c| c.action)
        .collect();
    assert!(
        ec2_changes.is_empty(),
        "second run changed EC2: {ec2_changes:?}"
    );
}

#[tokio::test]
async fn bad_config_exits_78_and_touches_nothing() {
    let m = minecraft().await;
    let text = std::fs::read_to_string(&m.config)
        .unwrap()
        .replace("\"ttl\"", "\"tll\"");
    let bad = write_config(m.dir.path(), "bad.jsonc", &text);
    let bad_path = bad.display().to_string();
    let mut daemon = spawn_run(&m.tb, &m.instance, Path::new(&bad_path));
    assert_eq!(daemon.wait_exit(EXIT_TIMEOUT).await.unwrap(), 78);
    let log = daemon.log();
    assert!(
        log.contains(&format!("{bad_path}:"))
            && log.contains("unknown key \"tll\"; did you mean \"ttl\"?"),
        "{log}"
    );
    assert!(
        m.tb.attachments(&m.volume).await.unwrap().is_empty(),
        "volume attached despite a bad config"
    );
    assert!(m
        .tb
        .record_values(&m.zone, "my-world.mc", "A")
        .await
        .unwrap()
        .is_empty());
    assert!(recorded(&m.log).is_empty(), "a hook ran");
    assert_eq!(
        m.instance.imds.requests(),
        0,
        "IMDS was asked before the config was checked"
    );
}

#[tokio::test]
async fn failing_started_hook_takes_the_failed_path() {
    let m = minecraft().await;
    let hook = m.dir.path().join("record-hook").display().to_string();
    let text = std::fs::read_to_string(&m.config)
        .unwrap()
        .replace(
            &format!("\"argv\": [ \"{hook}\", \"start\""),
            "\"argv\": [ \"/bin/false\", \"start\"",
        )
        .replace(
            "\"on\": [ \"interrupted\" ]",
            "\"on\": [ \"interrupted\", \"failed\" ]",
        )
        .replace("\"{interrupt_action}\"", "\"{daemon_state}\", \"{error}\"");
    assert!(
        text.contains("/bin/false"),
        "the test's config edit applies"
    );
    let config = write_config(m.dir.path(), "failing.jsonc", &text);
    let config = config.display().to_string();
    let mut daemon = spawn_run(&m.tb, &m.instance, Path::new(&config));
    assert_eq!(
        daemon.wait_exit(EXIT_TIMEOUT).await.unwrap(),
        1,
        "{}",
        daemon.log()
    );
    assert!(
        !daemon.notify.messages().iter().any(|n| n == "READY=1"),
        "READY after a failed start"
    );
    let calls = recorded(&m.log);
    let failed = calls
        .iter()
        .find(|c| c.get(2).is_some_and(|s| s == "failed"))
        .unwrap_or_else(|| panic!("{calls:?}"));
    assert!(
        failed[3].contains("/bin/false") && failed[3].contains("exited with 1"),
        "{failed:?}"
    );
    let messages = sns_messages(&m.tb, &m.queue).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(messages[0].0.ends_with("[failed]"), "{messages:?}");
    assert!(
        daemon.log().contains("error: started hooks failed"),
        "{}",
        daemon.log()
    );
}

#[tokio::test]
async fn gzipped_user_data_config_and_sigterm() {
    use std::io::Write;
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("b", None).await.unwrap();
    let zone = tb.create_hosted_zone("fleet.example.org").await.unwrap();
    let queue = tb.create_queue("events").await.unwrap();
    let dir = tempdir();
    let log = dir.path().join("hooks.log");
    let hook = recorder(dir.path(), &log);
    let config = format!(
        r#"{{
  // DNS only, from user data
  "domains": {{ "web": {{
    "update-route53": [{{ "hostedzone": "{zone}", "name": "node-{{ami-i}}.fleet.example.org", "ttl": 30 }}],
    "exec": [{{ "on": ["started", "stopping"], "lines": [{{ "argv": ["{hook}", "{{daemon_state}}", "{{placement_zone}}"] }}] }}],
    "notify": [{{ "backend": "ans-sqs", "options": {{ "queue-url": "{queue}" }},
                 "envelope": {{ "subject": "s", "body": "{{domain}} is {{daemon_state}}" }} }}]
  }} }}
}}"#,
        hook = hook.display()
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(config.as_bytes()).unwrap();
    instance.imds.set_user_data(gz.finish().unwrap());

    let mut daemon = DaemonProcess::spawn(
        &daemon_bin(),
        &["run", "--keep-hostname"],
        &tb.daemon_env(&instance),
        false,
    )
    .unwrap();
    daemon.wait_ready(READY_TIMEOUT).await.unwrap();
    let ipv4 = instance.meta.public_ipv4.clone().unwrap();
    let name = format!("node-{}.fleet.example.org", instance.meta.launch_index);
    assert_eq!(
        tb.record_values(&zone, &name, "A").await.unwrap(),
        vec![ipv4]
    );
    daemon.signal(Signal::SIGTERM).unwrap();
    assert_eq!(
        daemon.wait_exit(EXIT_TIMEOUT).await.unwrap(),
        0,
        "{}",
        daemon.log()
    );
    let zone_b = format!("{REGION}b");
    let calls: Vec<Vec<String>> = recorded(&log)
        .into_iter()
        .map(|c| c[1..].to_vec())
        .collect();
    assert_eq!(
        calls,
        vec![
            vec!["started".to_string(), zone_b.clone()],
            vec!["stopping".to_string(), zone_b]
        ]
    );
    assert_eq!(
        tb.drain_queue(&queue).await.unwrap(),
        vec!["web is started", "web is stopping"]
    );
}

#[tokio::test]
async fn unreachable_endpoints_give_one_clear_error() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let volume = tb.create_volume("a", 8).await.unwrap();
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        "c.jsonc",
        &format!(
            r#"{{ "domains": {{ "d": {{ "attach-volume": [{{ "device": "/dev/xvdf", "source": "x", "volume-id": "{volume}" }}] }} }} }}"#
        ),
    );
    let config = config.display().to_string();
    let args = ["run", "--config", config.as_str(), "--keep-hostname"];

    // No IMDS at that address.
    let mut env = tb.daemon_env(&instance);
    env.push((
        "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
        "http://127.0.0.1:9".into(),
    ));
    let mut daemon = DaemonProcess::spawn(&daemon_bin(), &args, &env, false).unwrap();
    assert_eq!(daemon.wait_exit(EXIT_TIMEOUT).await.unwrap(), 1);
    let log = daemon.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains("http://127.0.0.1:9"), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    // No AWS at that address: EC2 calls are tried for up to 40 s (a fleet's
    // throttling must be ridden out), so this takes a while.
    let mut env = tb.daemon_env(&instance);
    env.push(("AWS_ENDPOINT_URL".into(), "http://127.0.0.1:9".into()));
    let mut daemon = DaemonProcess::spawn(&daemon_bin(), &args, &env, false).unwrap();
    assert_eq!(
        daemon
            .wait_exit(std::time::Duration::from_secs(180))
            .await
            .unwrap(),
        1
    );
    let log = daemon.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(
        errors[0].contains("http://127.0.0.1:9") && errors[0].contains(&volume),
        "{log}"
    );
}

/// A config with one domain whose `starting` hook marks a file and then
/// hangs, and whose other events are recorded.
fn hanging_start(
    dir: &std::path::Path,
    timeout: Option<u32>,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let log = dir.join("hooks.log");
    let hook = recorder(dir, &log);
    let mark = dir.join("starting.mark");
    let timeout = timeout.map_or(String::new(), |t| format!("\"timeout\": {t},"));
    let text = format!(
        r#"{{ {timeout} "domains": {{ "app": {{ "exec": [
            {{ "on": ["starting"], "lines": [{{ "argv": ["/bin/sh", "-c", "touch '{mark}'; exec sleep 30"] }}] }},
            {{ "on": ["failed", "stopping"], "lines": [{{ "argv": ["{hook}", "{{daemon_state}}", "{{error}}"] }}] }} ] }} }} }}"#,
        mark = mark.display(),
        hook = hook.display()
    );
    (write_config(dir, "hang.jsonc", &text), log, mark)
}

#[tokio::test]
async fn init_timeout_takes_the_failed_path() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let (config, log, _) = hanging_start(dir.path(), Some(1));
    let mut daemon = spawn_run(&tb, &instance, &config);
    assert_eq!(
        daemon.wait_exit(EXIT_TIMEOUT).await.unwrap(),
        1,
        "{}",
        daemon.log()
    );
    let calls = recorded(&log);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0][1], "failed");
    assert!(calls[0][2].contains("timeout of 1s"), "{calls:?}");
}

#[tokio::test]
async fn sigterm_during_init_takes_the_stopping_path() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let (config, log, mark) = hanging_start(dir.path(), None);
    let mut daemon = spawn_run(&tb, &instance, &config);
    wait_for_file(&mark).await;
    daemon.signal(Signal::SIGTERM).unwrap();
    assert_eq!(
        daemon.wait_exit(EXIT_TIMEOUT).await.unwrap(),
        0,
        "{}",
        daemon.log()
    );
    let calls = recorded(&log);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0][1], "stopping");
    assert!(!daemon.notify.messages().iter().any(|m| m == "READY=1"));
}

#[tokio::test]
async fn missing_user_data_is_a_config_error() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let mut daemon = DaemonProcess::spawn(
        &daemon_bin(),
        &["run", "--keep-hostname"],
        &tb.daemon_env(&instance),
        false,
    )
    .unwrap();
    assert_eq!(
        daemon.wait_exit(EXIT_TIMEOUT).await.unwrap(),
        78,
        "{}",
        daemon.log()
    );
    assert!(daemon.log().contains("no user data"), "{}", daemon.log());
}

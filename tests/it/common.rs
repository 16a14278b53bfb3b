//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use aws_sdk_route53::types::RrType;
pub use ec2fleetd_testbed::daemon::{uts_namespace_available, DaemonProcess};
pub use ec2fleetd_testbed::world::{SimInstance, Testbed};

/// Long enough for a loaded 2-core machine; the tests do not measure speed.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

pub fn daemon_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ec2fleetd"))
}

pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A hook that appends its argv (and the hostname it sees) to `log`, one
/// line per call, so that tests can see what ran with which values.
pub fn recorder(dir: &Path, log: &Path) -> PathBuf {
    let path = dir.join("record-hook");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nprintf '%s|' \"$(hostname)\" \"$@\" >> '{}'\nprintf '\\n' >> '{}'\n",
            log.display(),
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The recorded calls: each is the hostname then the arguments.
pub fn recorded(log: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            l.trim_end_matches('|')
                .split('|')
                .map(String::from)
                .collect()
        })
        .collect()
}

/// Writes a config file into `dir`.
pub fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ec2fleetd-test-")
        .tempdir()
        .unwrap()
}

/// `ec2fleetd run --config CONFIG --keep-hostname` on `instance`.
pub fn spawn_run(tb: &Testbed, instance: &SimInstance, config: &Path) -> DaemonProcess {
    spawn_run_with(tb, instance, config, &[])
}

/// As [`spawn_run`], with more arguments.
pub fn spawn_run_with(
    tb: &Testbed,
    instance: &SimInstance,
    config: &Path,
    extra: &[&str],
) -> DaemonProcess {
    let config = config.display().to_string();
    let mut args = vec!["run", "--config", config.as_str(), "--keep-hostname"];
    args.extend_from_slice(extra);
    DaemonProcess::spawn(&daemon_bin(), &args, &tb.daemon_env(instance), false).unwrap()
}

/// Waits (up to a minute) until a hook has created `path`.
pub async fn wait_for_file(path: &Path) {
    for _ in 0..1200 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{} never appeared", path.display());
}

/// SIGTERM, then the daemon must exit 0.
pub async fn stop_cleanly(daemon: &mut DaemonProcess) {
    daemon.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(
        daemon.wait_exit(EXIT_TIMEOUT).await.unwrap(),
        0,
        "{}",
        daemon.log()
    );
}

/// Fails unless `event` is valid under `schema/event.schema.json`.
pub fn assert_valid_event(event: &serde_json::Value) {
    assert_valid("schema/event.schema.json", event);
}

/// Fails unless `value` is valid under the JSON Schema in file `schema`.
pub fn assert_valid(schema: &str, event: &serde_json::Value) {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_file(schema)).unwrap()).unwrap();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let problems: Vec<String> = validator
        .iter_errors(event)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        problems.is_empty(),
        "the document does not match its schema: {problems:?}\n{event:#}"
    );
}

/// UPSERTs `name` `kind` (TTL 30) to hold `value`, as someone else would.
pub async fn set_record(tb: &Testbed, zone: &str, name: &str, kind: RrType, value: &str) {
    use aws_sdk_route53::types::{
        Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet,
    };
    let set = ResourceRecordSet::builder()
        .name(name)
        .r#type(kind)
        .ttl(30)
        .resource_records(ResourceRecord::builder().value(value).build().unwrap())
        .build()
        .unwrap();
    tb.route53
        .change_resource_record_sets()
        .hosted_zone_id(zone)
        .change_batch(
            ChangeBatch::builder()
                .changes(
                    Change::builder()
                        .action(ChangeAction::Upsert)
                        .resource_record_set(set)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
}

/// Processes whose command line has `arg` as an argument.
pub fn processes_with(arg: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmd| cmd.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
        .count()
}

/// Waits (up to a minute) until `ready` holds.
pub async fn until<F, Fut>(what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1200 {
        if ready().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} never happened");
}

/// Writes `config` (JSON) as `NAME.jsonc` in `dir`.
pub fn json_config(dir: &Path, name: &str, config: serde_json::Value) -> PathBuf {
    write_config(dir, &format!("{name}.jsonc"), &config.to_string())
}

/// `ec2fleetd ARGS…` with `env`: (exit code, stdout, stderr).
pub fn ec2fleetd_with(args: &[&str], env: &[(String, String)]) -> (i32, String, String) {
    let out = std::process::Command::new(daemon_bin())
        .args(args)
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `ec2fleetd ARGS…` off the test's runtime, which serves the IMDS emulator.
pub async fn ec2fleetd_async(args: &[&str], env: &[(String, String)]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env = env.to_vec();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ec2fleetd_with(&args, &env)
    })
    .await
    .unwrap()
}

/// The events the daemon sent to `queue`, each valid under the event schema.
pub async fn events(tb: &Testbed, queue: &str) -> Vec<serde_json::Value> {
    let events: Vec<serde_json::Value> = tb
        .drain_queue(queue)
        .await
        .unwrap()
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    for e in &events {
        assert_valid_event(e);
    }
    events
}

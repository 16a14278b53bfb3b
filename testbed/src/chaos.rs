//! `ec2fleetd-testbed chaos`: a fleet of daemons for a bounded time against
//! the AWS double with faults on (5xx, throttling, dropped connections, lost
//! and late answers), IMDS outages and token revocations, SIGKILLs, SIGTERMs
//! and spot notices at random moments of every phase (bring-up, watch,
//! release). A killed daemon is restarted on its instance (as systemd does);
//! an instance whose daemon ended is terminated and replaced by a successor.
//! Afterwards, and while it runs, the invariants are checked:
//!
//! - no volume is ever attached to two instances;
//! - every notice is answered by its `interrupted` hooks before its deadline;
//! - a daemon that ended cleanly holds no volume (`detach-on`) and no record
//!   points at it (`delete-on`);
//! - at the end no volume carries a transaction mark (`transc-id`,
//!   `in-transit`), and every record is gone or was put back.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use serde_json::json;

use crate::daemon::DaemonProcess;
use crate::world::{SimInstance, Testbed};

const DOMAIN: &str = "game";
const POOL: &str = "worlds";
/// The warning of a notice: short, so that a run sees many.
const WARNING: Duration = Duration::from_secs(15);

/// How to run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub daemon: PathBuf,
    /// How long new lives start; the fleet then winds down.
    pub duration: Duration,
    /// Instances alive at once (each replaced by a successor when it ends).
    pub slots: usize,
    /// Pool volumes to start with (fewer than slots: some are created).
    pub pool: usize,
    pub seed: u64,
}

/// What happened, and what went wrong.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub instances: usize,
    pub daemons: usize,
    pub kills: usize,
    pub kills_in_release: usize,
    pub notices: usize,
    pub stops: usize,
    pub failed_inits: usize,
    pub faults: usize,
    pub samples: usize,
    pub violations: Vec<String>,
}

impl Report {
    fn violation(&mut self, what: String) {
        eprintln!("chaos: VIOLATION: {what}");
        self.violations.push(what);
    }

    pub fn summary(&self) -> String {
        format!(
            "{} instances, {} daemons: {} SIGKILLs ({} during release), {} notices, {} stops, {} failed inits; {} faults injected; {} samples; {} violation(s)",
            self.instances,
            self.daemons,
            self.kills,
            self.kills_in_release,
            self.notices,
            self.stops,
            self.failed_inits,
            self.faults,
            self.samples,
            self.violations.len()
        )
    }
}

/// Runs the chaos and checks the invariants.
pub async fn run(settings: Settings) -> Result<Report> {
    let tb = Arc::new(Testbed::start("us-east-1").await?);
    // The double's own faults are set after the pool and zone exist.
    let double = tb.double.clone().context("the chaos needs the double")?;
    for _ in 0..settings.pool {
        tb.create_pool_volume("a", DOMAIN, POOL).await?;
    }
    let zone = tb.create_hosted_zone("chaos.example.com").await?;
    double
        .configure(json!({
            "delays": {"attach": 0.3, "detach": 0.3, "device": 0.1, "volume_create": 0.3},
            "error_rate": 0.03,
            "drop_rate": 0.01,
            "route53_zone_busy": 0.05,
            "throttle": {"ec2_mutating": {"rate": 20, "burst": 20}, "route53": {"rate": 20, "burst": 20}},
        }))
        .await?;
    let dir = tempfile::Builder::new()
        .prefix("ec2fleetd-chaos-")
        .tempdir()?;
    let answers = dir.path().join("answers.log");
    let report = Arc::new(Mutex::new(Report::default()));
    let logs = Arc::new(Mutex::new(Vec::<String>::new()));
    let end = Instant::now() + settings.duration;

    let sampler = tokio::spawn(sample(tb.clone(), report.clone()));
    let gremlin = tokio::spawn(gremlin(
        tb.clone(),
        report.clone(),
        settings.seed ^ 0x9e37_79b9,
        end,
    ));
    let lives = (0..settings.slots).map(|slot| {
        let config = write_config(dir.path(), slot, &zone, &answers);
        let world = World {
            tb: tb.clone(),
            report: report.clone(),
            logs: logs.clone(),
            daemon: settings.daemon.clone(),
            config,
            answers: answers.clone(),
            zone: zone.clone(),
            name: record_name(slot),
        };
        let seed = settings.seed.wrapping_add(slot as u64 * 7919);
        async move { world.slot(seed, end).await }
    });
    for r in futures_util::future::join_all(lives).await {
        if let Err(e) = r {
            report
                .lock()
                .unwrap()
                .violation(format!("a slot failed: {e:#}"));
        }
    }
    gremlin.abort();
    sampler.abort();
    double
        .configure(json!({"error_rate": 0.0, "drop_rate": 0.0, "throttle": {"ec2_mutating": null, "route53": null}}))
        .await?;

    // At the end: no marks, every record gone or put back.
    let mut r = report.lock().unwrap().clone();
    for v in patiently(|| tb.pool_volumes(DOMAIN, POOL)).await? {
        for tag in ["user:ec2fd.transc-id", "user:ec2fd.in-transit"] {
            if let Some(value) = v.tag(tag) {
                r.violation(format!(
                    "{} still carries {tag}={value} (attached to {:?})",
                    v.volume_id, v.attached_to
                ));
            }
        }
        if !v.attached_to.is_empty() {
            r.violation(format!(
                "{} is still attached to {:?} after every daemon ended",
                v.volume_id, v.attached_to
            ));
        }
    }
    let all_logs = logs.lock().unwrap().join("\n");
    for slot in 0..settings.slots {
        let name = record_name(slot);
        let values = patiently(|| tb.record_values(&zone, &name, "A")).await?;
        if !values.is_empty() && !all_logs.contains(&format!("put back {name}")) {
            r.violation(format!(
                "{name} still points at {values:?}, and was never put back"
            ));
        }
    }
    Ok(r)
}

/// The harness's own reads and writes meet the same faults as the daemons:
/// it tries again, for a few seconds.
pub async fn patiently<T, F, Fut>(mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt >= 15 => return Err(e),
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

fn record_name(slot: usize) -> String {
    format!("slot-{slot}.chaos.example.com")
}

fn write_config(dir: &Path, slot: usize, zone: &str, answers: &Path) -> PathBuf {
    let path = dir.join(format!("slot-{slot}.jsonc"));
    let text = format!(
        r#"{{ "timeout": 90, "domains": {{ "{DOMAIN}": {{
  "attach-volume": [{{ "device": "/dev/xvdf", "source": "pc", "pool-name": "{POOL}",
    "wait-available": 20, "create": {{ "Size": 1 }}, "detach-on": ["interrupted", "stopping"] }}],
  "update-route53": [{{ "hostedzone": "{zone}", "name": "{name}", "ttl": 30,
    "delete-on": ["interrupted", "stopping"] }}],
  "exec": [{{ "on": ["interrupted"], "lines": [{{ "argv": ["/bin/sh", "-c",
    "echo \"$0 $(date +%s.%N)\" >> '{answers}'", "{{instance_id}}"] }}] }}] }} }} }}"#,
        name = record_name(slot),
        answers = answers.display()
    );
    std::fs::write(&path, text).expect("the chaos writes its configs");
    path
}

/// Every quarter second: no volume attached to two instances.
async fn sample(tb: Arc<Testbed>, report: Arc<Mutex<Report>>) {
    loop {
        if let Ok(volumes) = tb.pool_volumes(DOMAIN, POOL).await {
            let mut r = report.lock().unwrap();
            r.samples += 1;
            for v in volumes.iter().filter(|v| v.attached_to.len() > 1) {
                r.violation(format!(
                    "{} attached to {:?} at once",
                    v.volume_id, v.attached_to
                ));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every second or two, a fault in AWS: a lost or late answer, a burst of
/// failures, a busy zone.
async fn gremlin(tb: Arc<Testbed>, report: Arc<Mutex<Report>>, seed: u64, end: Instant) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let double = tb.double.clone().expect("the double");
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(rng.u64(700..2000))).await;
        let fault = match rng.u8(0..5) {
            0 => json!({"lose_answer_next": {"AttachVolume": 1}}),
            1 => {
                json!({"delay_next": {"AttachVolume": {"count": 1, "seconds": 3, "when": "after"}}})
            }
            2 => json!({"lose_answer_next": {"CreateTags": 1, "DetachVolume": 1}}),
            3 => json!({"fail_next": {"DescribeVolumes": 3}}),
            _ => json!({"lose_answer_next": {"ChangeResourceRecordSets": 1}}),
        };
        if double.configure(fault).await.is_ok() {
            report.lock().unwrap().faults += 1;
        }
    }
}

/// What a slot's lives share.
struct World {
    tb: Arc<Testbed>,
    report: Arc<Mutex<Report>>,
    logs: Arc<Mutex<Vec<String>>>,
    daemon: PathBuf,
    config: PathBuf,
    answers: PathBuf,
    zone: String,
    name: String,
}

/// How an instance's life ends.
enum End {
    Notice,
    Stop,
}

impl World {
    fn spawn(&self, instance: &SimInstance) -> Result<DaemonProcess> {
        let config = self.config.display().to_string();
        let args = [
            "run",
            "--config",
            config.as_str(),
            "--keep-hostname",
            "--poll-interval",
            "0.2",
            "--shutdown-reserve",
            "4",
        ];
        self.report.lock().unwrap().daemons += 1;
        DaemonProcess::spawn_with(
            &self.daemon,
            &args,
            &self.tb.daemon_env(instance),
            false,
            false,
        )
    }

    fn keep_log(&self, d: &DaemonProcess) {
        self.logs.lock().unwrap().push(d.log());
    }

    /// Lives one after another until `end`, each instance replaced by a
    /// successor.
    async fn slot(&self, seed: u64, end: Instant) -> Result<()> {
        let mut rng = fastrand::Rng::with_seed(seed);
        while Instant::now() < end {
            let instance = self.tb.launch_instance("a", None).await?;
            self.report.lock().unwrap().instances += 1;
            self.life(&instance, &mut rng, end).await?;
            // AWS detaches what the instance still holds.
            let id = &instance.meta.instance_id;
            patiently(|| async {
                self.tb
                    .ec2
                    .terminate_instances()
                    .instance_ids(id)
                    .send()
                    .await
                    .map(|_| ())
                    .context("TerminateInstances")
            })
            .await?;
        }
        Ok(())
    }

    /// One instance: daemons (restarted after a SIGKILL or a failed init)
    /// until a notice or a stop ends it cleanly.
    async fn life(
        &self,
        instance: &SimInstance,
        rng: &mut fastrand::Rng,
        end: Instant,
    ) -> Result<()> {
        let id = &instance.meta.instance_id;
        loop {
            let mut d = self.spawn(instance)?;
            let wait = Duration::from_millis(rng.u64(0..5000));
            // IMDS trouble now and then.
            match rng.u8(0..6) {
                0 => instance.imds.fail_next(5),
                1 => instance.imds.revoke_tokens(),
                _ => {}
            }
            if let Ok(code) = d.wait_exit(wait).await {
                // Ended by itself: a failed init. systemd starts it again.
                self.keep_log(&d);
                if code != 1 {
                    self.report
                        .lock()
                        .unwrap()
                        .violation(format!("{id}: the daemon exited {code} on its own"));
                }
                self.report.lock().unwrap().failed_inits += 1;
                continue;
            }
            let over = Instant::now() >= end;
            let end_by = match rng.u8(0..10) {
                _ if over => End::Stop,
                0..=2 => {
                    d.signal(Signal::SIGKILL)?;
                    let _ = d.wait_exit(Duration::from_secs(10)).await;
                    self.keep_log(&d);
                    self.report.lock().unwrap().kills += 1;
                    continue;
                }
                3..=6 => End::Notice,
                _ => End::Stop,
            };
            let raised = SystemTime::now();
            match end_by {
                End::Notice => {
                    instance
                        .imds
                        .raise_spot_interruption("terminate", WARNING.as_secs());
                    self.report.lock().unwrap().notices += 1;
                    // Now and then the daemon dies while it releases; the
                    // one systemd starts sees the notice at once.
                    if rng.u8(0..4) == 0 {
                        tokio::time::sleep(Duration::from_millis(rng.u64(0..800))).await;
                        let _ = d.signal(Signal::SIGKILL);
                        let _ = d.wait_exit(Duration::from_secs(10)).await;
                        self.keep_log(&d);
                        {
                            let mut r = self.report.lock().unwrap();
                            r.kills += 1;
                            r.kills_in_release += 1;
                        }
                        d = self.spawn(instance)?;
                    }
                }
                End::Stop => {
                    d.signal(Signal::SIGTERM)?;
                    self.report.lock().unwrap().stops += 1;
                }
            }
            let code = d.wait_exit(WARNING + Duration::from_secs(30)).await;
            self.keep_log(&d);
            let code = match code {
                Ok(c) => c,
                Err(_) => {
                    let _ = d.signal(Signal::SIGKILL);
                    self.report
                        .lock()
                        .unwrap()
                        .violation(format!("{id}: the daemon did not end in time\n{}", d.log()));
                    return Ok(());
                }
            };
            self.check_end(instance, &end_by, raised, code, &d.log())
                .await;
            return Ok(());
        }
    }

    /// After a daemon's last exit on `instance`.
    async fn check_end(
        &self,
        instance: &SimInstance,
        end_by: &End,
        raised: SystemTime,
        code: i32,
        log: &str,
    ) {
        let id = &instance.meta.instance_id;
        let mut violations = Vec::new();
        // A notice's hooks: before its deadline, by a daemon of this
        // instance (an init that failed first may end with 1 before the
        // hooks; then there is nothing to answer with).
        if matches!(end_by, End::Notice) && code == 0 {
            let deadline = raised + WARNING;
            let answered = std::fs::read_to_string(&self.answers)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split_once(' '))
                .filter(|(who, _)| who == id)
                .filter_map(|(_, at)| at.parse::<f64>().ok())
                .map(|at| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(at))
                .any(|at| at <= deadline);
            if !answered {
                violations.push(format!(
                    "{id}: the notice was not answered by its hooks before its deadline"
                ));
            }
        }
        if code == 0 {
            match patiently(|| self.tb.pool_volumes(DOMAIN, POOL)).await {
                Ok(volumes) => {
                    for v in volumes.iter().filter(|v| v.attached_to.contains(id)) {
                        violations.push(format!(
                            "{id} ended cleanly but still holds {}",
                            v.volume_id
                        ));
                    }
                }
                Err(e) => violations.push(format!("reading the pool: {e:#}")),
            }
            if let Some(ip) = &instance.meta.public_ipv4 {
                match patiently(|| self.tb.record_values(&self.zone, &self.name, "A")).await {
                    Ok(values) if values.contains(ip) => violations.push(format!(
                        "{} still points at {id} ({ip}), which ended cleanly",
                        self.name
                    )),
                    Ok(_) => {}
                    Err(e) => violations.push(format!("reading {}: {e:#}", self.name)),
                }
            }
        } else if code != 1 {
            violations.push(format!("{id}: exit status {code}"));
        }
        let mut r = self.report.lock().unwrap();
        for v in violations {
            r.violation(format!("{v}\n--- its daemon's log:\n{log}"));
        }
    }
}

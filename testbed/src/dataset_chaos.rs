//! `ec2fleetd-testbed chaos --dataset`: one dataset (`"source": "fc"`, a
//! release snapshot, `detach-on`) lives on instance after instance, each in
//! a random zone, against the AWS double with faults on (5xx, dropped
//! connections, lost CreateVolume / AttachVolume / CreateSnapshot answers,
//! snapshots that fail or take a while). A life ends by a stop, a spot
//! notice or a SIGKILL at a random moment (during bring-up or after it);
//! some lives are two successors at once in two zones. Each life's volume
//! hook reads the world through the device and adds its own name.
//!
//! Checked while it runs and at the end:
//! - never two instances hold a committed copy of the dataset at once
//!   (sampled every 200 ms), and of two successors at once at most one
//!   comes up;
//! - every life that came up read every write of every life that came up
//!   before it (the newest data always wins, a killed holder loses nothing
//!   that reached its disk);
//! - at the end, after a last clean life: nothing in transit, one copy.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use serde_json::json;

use crate::chaos::patiently;
use crate::daemon::DaemonProcess;
use crate::world::{SimInstance, Testbed};

const DOMAIN: &str = "mc";
const POOL: &str = "world";
const ZONES: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
pub struct Settings {
    pub daemon: PathBuf,
    /// Lives of the dataset, one after another (a race counts as one).
    pub lives: usize,
    pub seed: u64,
}

#[derive(Debug, Default, Clone)]
pub struct Report {
    pub lives: usize,
    pub up: usize,
    pub kills: usize,
    pub races: usize,
    pub moves: usize,
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
            "{} lives ({} up, {} moves across zones), {} SIGKILLs, {} races; {} faults injected; {} samples; {} violation(s)",
            self.lives,
            self.up,
            self.moves,
            self.kills,
            self.races,
            self.faults,
            self.samples,
            self.violations.len()
        )
    }
}

/// The world's hook: `world DEVICE WHO LOG` logs `WHO read OLD`, then
/// writes `OLD` + `WHO;` to the device.
fn write_files(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let hook = dir.join("world");
    std::fs::write(
        &hook,
        "#!/bin/sh\nold=$(tr -d '\\000' < \"$1\")\nprintf '%s read %s\\n' \"$2\" \"$old\" >> \"$3\"\nprintf '%s' \"$old$2;\" | dd of=\"$1\" conv=notrunc status=none\n",
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
    let log = dir.join("reads");
    Ok((hook, log))
}

fn config(dir: &Path, hook: &Path, log: &Path, who: &str) -> Result<PathBuf> {
    let path = dir.join(format!("{who}.jsonc"));
    let text = json!({ "timeout": 120, "domains": { DOMAIN: { "attach-volume": [{
        "device": "/dev/xvdf", "source": "fc", "pool-name": POOL, "create": { "Size": 8 },
        "wait-available": 15,
        "snapshot": { "on": ["interrupted", "stopping"] },
        "detach-on": ["interrupted", "stopping"],
        "exec": [
            { "lines": [{ "argv": [hook, "{attached_device}", who, log] }] },
            { "on": ["interrupted", "stopping"], "lines": [{ "argv": ["/bin/sync"] }] }
        ] }] } } });
    std::fs::write(&path, text.to_string())?;
    Ok(path)
}

/// Every 200 ms: the instances that hold a committed copy.
async fn sample(tb: Arc<Testbed>, report: Arc<Mutex<Report>>) {
    loop {
        if let Ok(volumes) = tb.pool_volumes(DOMAIN, POOL).await {
            let mut holders: Vec<String> = volumes
                .iter()
                .filter(|v| {
                    v.tag("user:ec2fd.in-transit").is_none()
                        && v.tag("user:ec2fd.superseded").is_none()
                        && v.tag("user:ec2fd.transc-id").is_none()
                })
                .flat_map(|v| v.attached_to.clone())
                .collect();
            holders.sort();
            holders.dedup();
            let mut r = report.lock().unwrap();
            r.samples += 1;
            if holders.len() > 1 {
                r.violation(format!("the dataset is held by {holders:?} at once"));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The lives that came up, in order, and the zone of the last.
#[derive(Default)]
struct Lives {
    up: Vec<String>,
    last_zone: String,
}

impl Lives {
    fn came_up(&mut self, who: &str, zone: &str, report: &Mutex<Report>) {
        self.up.push(who.to_string());
        let mut r = report.lock().unwrap();
        r.up += 1;
        if zone != self.last_zone {
            r.moves += 1;
        }
        self.last_zone = zone.to_string();
    }
}

struct Run {
    tb: Arc<Testbed>,
    daemon: PathBuf,
    dir: PathBuf,
    hook: PathBuf,
    log: PathBuf,
}

impl Run {
    async fn launch(&self, zone: &str) -> Result<SimInstance> {
        patiently(|| self.tb.launch_instance(zone, None)).await
    }

    fn spawn(&self, instance: &SimInstance, who: &str) -> Result<DaemonProcess> {
        let config = config(&self.dir, &self.hook, &self.log, who)?;
        DaemonProcess::spawn_with(
            &self.daemon,
            &[
                "run",
                "--config",
                &config.display().to_string(),
                "--keep-hostname",
                "--poll-interval",
                "0.2",
            ],
            &self.tb.daemon_env(instance),
            false,
            false,
        )
    }

    async fn terminate(&self, instance: &SimInstance) -> Result<()> {
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
        .await
    }

    /// What each life read, by name.
    fn reads(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(" read "))
            .map(|(who, old)| (who.to_string(), old.to_string()))
            .collect()
    }
}

pub async fn run(settings: Settings) -> Result<Report> {
    let tb = Arc::new(Testbed::start("us-east-1").await?);
    let double = tb.double.clone().context("the chaos needs the double")?;
    double
        .configure(json!({
            "delays": {"attach": 0.2, "detach": 0.2, "device": 0.1, "volume_create": 0.2, "volume_visible": 0.2},
            "error_rate": 0.02,
            "drop_rate": 0.01,
        }))
        .await?;
    let dir = tempfile::Builder::new()
        .prefix("ec2fleetd-chaos-dataset-")
        .tempdir()?;
    let (hook, log) = write_files(dir.path())?;
    let run = Run {
        tb: tb.clone(),
        daemon: settings.daemon.clone(),
        dir: dir.path().to_path_buf(),
        hook,
        log,
    };
    let report = Arc::new(Mutex::new(Report::default()));
    let sampler = tokio::spawn(sample(tb.clone(), report.clone()));
    let mut rng = fastrand::Rng::with_seed(settings.seed);
    let mut lives = Lives::default();
    for i in 0..=settings.lives {
        let last = i == settings.lives;
        // A fault or two for this life.
        let snapshot_secs = rng.f64() * 2.0;
        let mut faults = json!({ "delays": { "snapshot": snapshot_secs } });
        for _ in 0..rng.u8(0..3) {
            let (key, action) = match rng.u8(0..5) {
                0 => ("lose_answer_next", "CreateVolume"),
                1 => ("lose_answer_next", "AttachVolume"),
                2 => ("lose_answer_next", "CreateSnapshot"),
                3 => ("fail_next", "DescribeSnapshots"),
                _ => ("snapshot_error_next", "count"),
            };
            if key == "snapshot_error_next" {
                faults[key] = json!({ "count": 1, "message": "chaos" });
            } else {
                faults[key][action] = json!(1);
            }
            report.lock().unwrap().faults += 1;
        }
        if last {
            // Nothing left over from the lives before, either.
            faults = json!({ "error_rate": 0.0, "drop_rate": 0.0, "delays": { "snapshot": 0.2 },
                "snapshot_error_next": { "count": 0 },
                "lose_answer_next": { "CreateVolume": 0, "AttachVolume": 0, "CreateSnapshot": 0 },
                "fail_next": { "DescribeSnapshots": 0 } });
        }
        patiently(|| async { double.configure(faults.clone()).await.map(|_| ()) }).await?;
        let fate = if last { 0 } else { rng.u8(0..4) };
        report.lock().unwrap().lives += 1;
        if fate == 3 {
            // Two successors at once, in two zones.
            report.lock().unwrap().races += 1;
            let (z1, z2) = (ZONES[rng.usize(0..3)], ZONES[rng.usize(0..3)]);
            let (i1, i2) = (run.launch(z1).await?, run.launch(z2).await?);
            let (w1, w2) = (format!("life{i}x"), format!("life{i}y"));
            let (mut d1, mut d2) = (run.spawn(&i1, &w1)?, run.spawn(&i2, &w2)?);
            let (r1, r2) = tokio::join!(
                d1.wait_ready(Duration::from_secs(90)),
                d2.wait_ready(Duration::from_secs(90))
            );
            if r1.is_ok() && r2.is_ok() {
                report
                    .lock()
                    .unwrap()
                    .violation(format!("{w1} in {z1} and {w2} in {z2} both came up"));
            }
            for (ok, who, zone, d) in [
                (r1.is_ok(), &w1, z1, &mut d1),
                (r2.is_ok(), &w2, z2, &mut d2),
            ] {
                if ok {
                    lives.came_up(who, zone, &report);
                }
                let _ = d.signal(Signal::SIGTERM);
                let _ = d.wait_exit(Duration::from_secs(90)).await;
            }
            run.terminate(&i1).await?;
            run.terminate(&i2).await?;
            continue;
        }
        let zone = ZONES[rng.usize(0..3)];
        let who = format!("life{i}");
        let instance = run.launch(zone).await?;
        let mut d = run.spawn(&instance, &who)?;
        let came_up = if fate == 2 {
            // SIGKILL at a random moment: during bring-up or after it.
            let at = Duration::from_millis(rng.u64(0..3000));
            let ready = tokio::time::timeout(at, d.wait_ready(Duration::from_secs(90))).await;
            let _ = d.signal(Signal::SIGKILL);
            let _ = d.wait_exit(Duration::from_secs(10)).await;
            report.lock().unwrap().kills += 1;
            matches!(ready, Ok(Ok(())))
        } else {
            let ready = d.wait_ready(Duration::from_secs(90)).await.is_ok();
            if fate == 1 && ready {
                instance.imds.raise_spot_interruption("terminate", 20);
            } else {
                let _ = d.signal(Signal::SIGTERM);
            }
            let _ = d.wait_exit(Duration::from_secs(90)).await;
            if !ready {
                eprintln!("chaos: {who} in {zone} did not come up:\n{}", d.log());
            }
            ready
        };
        if came_up {
            lives.came_up(&who, zone, &report);
        }
        run.terminate(&instance).await?;
        if last && !came_up {
            report.lock().unwrap().violation(format!(
                "the last, clean life ({who} in {zone}) did not come up"
            ));
        }
    }
    sampler.abort();

    // Every life that came up read the writes of all that came up before.
    let mut r = report.lock().unwrap().clone();
    let reads = run.reads();
    let up = &lives.up;
    for (k, who) in up.iter().enumerate() {
        let Some((_, old)) = reads.iter().rev().find(|(w, _)| w == who) else {
            r.violation(format!("{who} came up without reading the world"));
            continue;
        };
        for before in &up[..k] {
            if !old.split(';').any(|w| w == before) {
                r.violation(format!("{who} read {old:?}: {before}'s writes are missing"));
            }
        }
    }
    let volumes = patiently(|| tb.pool_volumes(DOMAIN, POOL)).await?;
    for v in &volumes {
        if let Some(t) = v.tag("user:ec2fd.in-transit") {
            r.violation(format!("{} is still in transit ({t})", v.volume_id));
        }
    }
    let copies: Vec<&String> = volumes
        .iter()
        .filter(|v| v.tag("user:ec2fd.superseded").is_none())
        .map(|v| &v.volume_id)
        .collect();
    if copies.len() != 1 {
        r.violation(format!(
            "the dataset has {} copies at the end: {copies:?}",
            copies.len()
        ));
    }
    Ok(r)
}

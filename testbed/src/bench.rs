//! `ec2fleetd-testbed bench`: the scenarios of `BENCHMARKS.md`, run on the
//! AWS test double and the IMDS emulator, each several times, against
//! ec2fleetd and (where it can run here) the Python daemon it replaces.
//! Prints one Markdown table per scenario: medians and spreads.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::daemon::DaemonProcess;
use crate::double::{Call, DoubleControl};
use crate::world::{SimInstance, Testbed};

const REGION: &str = "us-east-1";
const UP_TIMEOUT: Duration = Duration::from_secs(300);

/// What runs: ec2fleetd, or the Python daemon through its runner script.
#[derive(Debug, Clone)]
pub enum Subject {
    Rust { bin: PathBuf },
    Python { runner: PathBuf },
}

impl Subject {
    pub fn name(&self) -> &'static str {
        match self {
            Subject::Rust { .. } => "ec2fleetd",
            Subject::Python { .. } => "Python ec2fleetd",
        }
    }

    fn spawn(&self, config: &Path, env: &[(String, String)]) -> Result<DaemonProcess> {
        let config = config.display().to_string();
        match self {
            Subject::Rust { bin } => DaemonProcess::spawn_with(
                bin,
                &["run", "--config", &config, "--keep-hostname"],
                env,
                false,
                false,
            ),
            Subject::Python { runner } => {
                DaemonProcess::spawn_with(runner, &["--config", &config], env, false, false)
            }
        }
    }

    /// Waits until the daemon is up: READY=1 for ec2fleetd; for the Python
    /// daemon, its `started` hook having run (`marker` exists).
    async fn wait_up(&self, d: &mut DaemonProcess, marker: &Path) -> Result<()> {
        match self {
            Subject::Rust { .. } => d.wait_ready(UP_TIMEOUT).await,
            Subject::Python { .. } => {
                let end = Instant::now() + UP_TIMEOUT;
                while !marker.exists() {
                    if Instant::now() > end {
                        bail!("not up within {UP_TIMEOUT:?}; log:\n{}", d.log());
                    }
                    if let Ok(Some(status)) = d.child.try_wait() {
                        bail!("exited ({status}) before it was up; log:\n{}", d.log());
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Ok(())
            }
        }
    }
}

/// How the benchmark runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub subjects: Vec<Subject>,
    pub scenarios: Vec<String>,
    pub runs: usize,
    pub domain_counts: Vec<usize>,
    pub trials: usize,
    pub idle: Duration,
    pub fleet: usize,
}

pub async fn run(opts: &Options) -> Result<()> {
    println!("# ec2fleetd benchmarks\n");
    println!("{}\n", machine());
    for scenario in &opts.scenarios {
        match scenario.as_str() {
            "init" => init(opts).await?,
            "reaction" => reaction(opts).await?,
            "idle" => idle(opts).await?,
            "cold" => cold(opts).await?,
            "fleet" => fleet(opts).await?,
            "move" => moves(opts).await?,
            "scale-in" => scale_in(opts).await?,
            "status" => status(opts).await?,
            other => bail!(
                "unknown scenario {other:?} (init, reaction, idle, cold, fleet, move, scale-in, status)"
            ),
        }
    }
    Ok(())
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.to_string()))
        .unwrap_or_default();
    format!(
        "Machine: {cpus} CPUs ({model}); {}",
        mem.replace("MemTotal:", "memory").trim()
    )
}

// ------------------------------------------------------------------ stats

/// Median and spread of a sample.
struct Stats {
    sorted: Vec<f64>,
}

impl Stats {
    fn of(mut values: Vec<f64>) -> Stats {
        values.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        Stats { sorted: values }
    }

    fn quantile(&self, q: f64) -> f64 {
        if self.sorted.is_empty() {
            return f64::NAN;
        }
        let i = ((self.sorted.len() - 1) as f64 * q).round() as usize;
        self.sorted[i]
    }

    fn median(&self) -> f64 {
        self.quantile(0.5)
    }

    fn min(&self) -> f64 {
        self.sorted.first().copied().unwrap_or(f64::NAN)
    }

    fn max(&self) -> f64 {
        self.sorted.last().copied().unwrap_or(f64::NAN)
    }

    /// `median (min–max)` in seconds.
    fn secs(&self) -> String {
        format!(
            "{:.3} s ({:.3}–{:.3})",
            self.median(),
            self.min(),
            self.max()
        )
    }
}

// ----------------------------------------------------------- helpers

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

/// A distinct AttachVolume device name for domain `i` (`/dev/xvdf` …
/// `/dev/xvdz`, then `/dev/xvdba` …).
fn device_name(i: usize) -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    if i < 21 {
        format!("/dev/xvd{}", LETTERS[5 + i] as char)
    } else {
        let j = i - 21;
        format!(
            "/dev/xvd{}{}",
            LETTERS[1 + j / 26] as char,
            LETTERS[j % 26] as char
        )
    }
}

/// A new testbed on a fresh AWS double, with a hosted zone `zone_name`.
async fn fresh_world(zone_name: &str) -> Result<(Testbed, DoubleControl, String)> {
    let tb = Testbed::start(REGION).await?;
    let double = tb
        .double
        .clone()
        .context("the bench needs the AWS double")?;
    let zone = tb.create_hosted_zone(zone_name).await?;
    Ok((tb, double, zone))
}

fn stop(d: &DaemonProcess) {
    let _ = d.signal(nix::sys::signal::Signal::SIGTERM);
}

async fn stop_and_wait(d: &mut DaemonProcess) {
    stop(d);
    let _ = d.wait_exit(Duration::from_secs(60)).await;
}

/// Resident memory now and at its peak, in KiB, and CPU seconds used.
fn usage(pid: u32) -> Option<(u64, u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let cpu = (fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / ticks;
    Some((kib("VmRSS:")?, kib("VmHWM:")?, cpu))
}

/// A process and all its descendants (the Python daemon's runner may be a
/// shell around it).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut tree = Vec::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        tree.push(p);
        let children =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        stack.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    tree
}

/// Anonymous resident memory (heap, stacks: what the process itself holds,
/// as opposed to pages of its executable and libraries), in KiB, summed over
/// the process tree.
fn anon_kib(pid: u32) -> u64 {
    process_tree(pid)
        .into_iter()
        .filter_map(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            status
                .lines()
                .find(|l| l.starts_with("RssAnon:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// Memory and CPU of a process tree.
fn tree_usage(pid: u32) -> (u64, u64, f64) {
    let mut total = (0, 0, 0.0);
    for (rss, hwm, cpu) in process_tree(pid).into_iter().filter_map(usage) {
        total.0 += rss;
        total.1 += hwm;
        total.2 += cpu;
    }
    total
}

// ------------------------------------------------------ 1. init latency

/// Per AWS call, attaching, and the device appearing after `attached`.
const LATENCY: f64 = 0.1;
const ATTACH: f64 = 0.5;
const DEVICE: f64 = 0.2;

/// A config of `n` domains, each with a volume from its own pool, a record
/// and a `started` hook that touches `marker`.
fn init_config(n: usize, pool: &str, zone: &str, marker: &Path) -> String {
    let domains: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#""app-{i}": {{
  "attach-volume": [{{ "device": "{dev}", "source": "p", "pool-name": "{pool}" }}],
  "update-route53": [{{ "hostedzone": "{zone}", "name": "app-{i}.bench.example", "ttl": 60 }}],
  "exec": [{{ "on": ["started"], "lines": [{{ "argv": ["/usr/bin/touch", "{marker}"] }}] }}]
}}"#,
                dev = device_name(i),
                marker = marker.display()
            )
        })
        .collect();
    format!(r#"{{ "domains": {{ {} }} }}"#, domains.join(",\n"))
}

/// The calls one domain waits for, one after another, from a one-domain
/// run's record: every call up to AttachVolume, then those made once the
/// volume is attached and its device has appeared. What it sends while it
/// waits for those (the claim's tags, the polls) costs no time of its own.
/// Returns the chain, each call with its start in ms.
fn chain_calls(calls: &[Call]) -> Vec<String> {
    let calls: Vec<&Call> = calls
        .iter()
        .filter(|c| c.service == "ec2" || c.service == "route53")
        .collect();
    let t0 = calls.first().map_or(0.0, |c| c.t);
    let attach = calls
        .iter()
        .find(|c| c.action == "AttachVolume")
        .map_or(f64::MAX, |c| c.t);
    // A little slack for the double's own answer time.
    let waited = attach + LATENCY + ATTACH + DEVICE - 0.02;
    calls
        .iter()
        .filter(|c| c.t <= attach || c.t >= waited)
        .map(|c| format!("{} +{:.0}ms", c.action, (c.t - t0) * 1000.0))
        .collect()
}

async fn init(opts: &Options) -> Result<()> {
    println!("## 1. Init latency\n");
    println!(
        "N domains, each with a volume from a pool, a Route53 record and a `started` hook; \
         {:.0} ms per AWS call, {:.0} ms `attaching`, {:.0} ms until the device appears. \
         Wall time from process start to READY=1 (the Python daemon: to its last `started` hook); \
         median (min–max) of {} runs.\n",
        LATENCY * 1000.0,
        ATTACH * 1000.0,
        DEVICE * 1000.0,
        opts.runs
    );
    let mut bound = None;
    println!(
        "| subject | N | time to up | critical-path bound | ratio | CPU to up: daemon / AWS double |"
    );
    println!("|---|---|---|---|---|---|");
    for subject in &opts.subjects {
        for &n in &opts.domain_counts {
            let (mut times, mut cpu, mut double_cpus) = (Vec::new(), Vec::new(), Vec::new());
            let mut failures: Vec<String> = Vec::new();
            for run in 0..opts.runs {
                // A fresh AWS double each time: what earlier runs left
                // would make its every query slower.
                let (tb, double, zone) = fresh_world("bench.example").await?;
                let instance = tb.launch_instance("a", None).await?;
                let pool = format!("pool-{}-{n}-{run}", subject.name().len());
                for i in 0..n {
                    tb.create_pool_volume("a", &format!("app-{i}"), &pool)
                        .await?;
                }
                double
                    .configure(json!({"latency_ms": LATENCY * 1000.0,
                        "delays": {"attach": ATTACH, "device": DEVICE}}))
                    .await?;
                let dir = tempfile::tempdir()?;
                let marker = dir.path().join("started");
                let config = write(
                    dir.path(),
                    "bench.jsonc",
                    &init_config(n, &pool, &zone, &marker),
                )?;
                double.clear_calls().await?;
                let double_cpu = tb.moto.pid().map_or(0.0, |p| tree_usage(p).2);
                let started = Instant::now();
                let mut d = subject.spawn(&config, &tb.daemon_env(&instance))?;
                if let Err(e) = subject.wait_up(&mut d, &marker).await {
                    // Reported with the figures; the other runs go on.
                    let why = format!("{e:#}");
                    let line = why
                        .lines()
                        .rev()
                        .find(|l| l.contains("Error") || l.contains("error"))
                        .unwrap_or("did not come up")
                        .trim()
                        .to_string();
                    failures.push(line);
                    stop_and_wait(&mut d).await;
                    continue;
                }
                times.push(started.elapsed().as_secs_f64());
                let pid = d.pid().context("the daemon is gone")?;
                cpu.push(tree_usage(pid).2);
                double_cpus.push(tb.moto.pid().map_or(0.0, |p| tree_usage(p).2) - double_cpu);
                if n == 1 && bound.is_none() && matches!(subject, Subject::Rust { .. }) {
                    let chain = chain_calls(&double.calls().await?);
                    println!("<!-- one domain's chain: {} -->", chain.join(" → "));
                    let chain = chain.len();
                    bound = Some((chain, chain as f64 * LATENCY + ATTACH + DEVICE));
                }
                double.configure(json!({"latency_ms": 0})).await?;
                stop_and_wait(&mut d).await;
            }
            let s = Stats::of(times);
            let (chain, b) = bound.unwrap_or((0, f64::NAN));
            println!(
                "| {} | {n} | {} | {b:.3} s ({chain} calls + attach + device) | {:.2} | {:.2} s / {:.2} s |",
                subject.name(),
                s.secs(),
                s.median() / b,
                Stats::of(cpu).median(),
                Stats::of(double_cpus).median()
            );
            if !failures.is_empty() {
                println!(
                    "| {} | {n} | {} of {} runs failed: {} | | | |",
                    subject.name(),
                    failures.len(),
                    opts.runs,
                    failures[0].replace('|', "/")
                );
            }
        }
    }
    println!();
    Ok(())
}

// ----------------------------------------------------------- 2. reaction

async fn reaction(opts: &Options) -> Result<()> {
    println!("## 2. Reaction to a spot notice\n");
    println!(
        "From the moment the IMDS emulator makes the notice visible to the first `interrupted` \
         hook starting (its own clock: the mtime of the file it touches), at the daemon's default \
         poll interval; the notice comes at a random moment; {} trials.\n",
        opts.trials
    );
    let tb = Testbed::start(REGION).await?;
    println!("| subject | p50 | p99 | max |");
    println!("|---|---|---|---|");
    for subject in &opts.subjects {
        let mut delays = Vec::new();
        for _ in 0..opts.trials {
            let instance = tb.launch_instance("a", None).await?;
            let dir = tempfile::tempdir()?;
            let (marker, hit) = (dir.path().join("started"), dir.path().join("interrupted"));
            let config = write(
                dir.path(),
                "bench.jsonc",
                &format!(
                    r#"{{ "domains": {{ "app": {{ "exec": [
                      {{ "on": ["started"], "lines": [{{ "argv": ["/usr/bin/touch", "{}"] }}] }},
                      {{ "on": ["interrupted"], "lines": [{{ "argv": ["/usr/bin/touch", "{}"] }}] }} ] }} }} }}"#,
                    marker.display(),
                    hit.display()
                ),
            )?;
            let mut d = subject.spawn(&config, &tb.daemon_env(&instance))?;
            subject.wait_up(&mut d, &marker).await?;
            tokio::time::sleep(Duration::from_millis(200 + fastrand_ms(1000))).await;
            let raised = SystemTime::now();
            instance.imds.raise_spot_interruption("terminate", 120);
            let end = Instant::now() + Duration::from_secs(30);
            while !hit.exists() {
                if Instant::now() > end {
                    bail!("no interrupted hook within 30 s; log:\n{}", d.log());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let ran = std::fs::metadata(&hit)?.modified()?;
            delays.push(ran.duration_since(raised).unwrap_or_default().as_secs_f64());
            let _ = d.wait_exit(Duration::from_secs(60)).await;
        }
        let s = Stats::of(delays);
        println!(
            "| {} | {:.0} ms | {:.0} ms | {:.0} ms |",
            subject.name(),
            s.median() * 1000.0,
            s.quantile(0.99) * 1000.0,
            s.max() * 1000.0
        );
    }
    println!();
    Ok(())
}

/// A random number of milliseconds below `max`, from the clock's nanoseconds
/// (enough to spread the notices over the poll interval).
fn fastrand_ms(max: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    (nanos / 1000) % max
}

// --------------------------------------------------------------- 3. idle

async fn idle(opts: &Options) -> Result<()> {
    println!("## 3. Idle cost\n");
    println!(
        "Each subject with 1 and with 50 DNS-only domains, watching for {:.0} s after it is up \
         (all at once); RSS sampled every second (summed over the daemon's process tree).\n",
        opts.idle.as_secs_f64()
    );
    let tb = Testbed::start(REGION).await?;
    let zone = tb.create_hosted_zone("idle.example").await?;
    let mut running = Vec::new();
    for subject in &opts.subjects {
        for n in [1usize, 50] {
            let instance = tb.launch_instance("a", None).await?;
            let dir = tempfile::tempdir()?;
            let marker = dir.path().join("started");
            let domains: Vec<String> = (0..n)
                .map(|i| {
                    format!(
                        r#""app-{i}": {{ "update-route53": [{{ "hostedzone": "{zone}", "name": "app-{i}.idle.example", "ttl": 60 }}],
                          "exec": [{{ "on": ["started"], "lines": [{{ "argv": ["/usr/bin/touch", "{}"] }}] }}] }}"#,
                        marker.display()
                    )
                })
                .collect();
            let config = write(
                dir.path(),
                "bench.jsonc",
                &format!(r#"{{ "domains": {{ {} }} }}"#, domains.join(",")),
            )?;
            let mut d = subject.spawn(&config, &tb.daemon_env(&instance))?;
            subject.wait_up(&mut d, &marker).await?;
            let pid = d.pid().context("the daemon is gone")?;
            running.push((subject.name(), n, d, pid, instance, dir));
        }
    }
    // Let start-up settle before measuring the steady state.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first: Vec<(u64, u64, f64)> = running.iter().map(|r| tree_usage(r.3)).collect();
    let started = Instant::now();
    let mut samples: Vec<Vec<u64>> = vec![Vec::new(); running.len()];
    while started.elapsed() < opts.idle {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (i, r) in running.iter().enumerate() {
            samples[i].push(tree_usage(r.3).0);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "| subject | domains | steady RSS (median) | of which heap and stacks | peak RSS | CPU while watching |"
    );
    println!("|---|---|---|---|---|---|");
    for (i, r) in running.iter().enumerate() {
        let (_, peak, cpu) = tree_usage(r.3);
        let rss = Stats::of(samples[i].iter().map(|&k| k as f64).collect());
        println!(
            "| {} | {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.3} % of a core |",
            r.0,
            r.1,
            rss.median() / 1024.0,
            anon_kib(r.3) as f64 / 1024.0,
            peak as f64 / 1024.0,
            (cpu - first[i].2) / elapsed * 100.0
        );
    }
    for r in &mut running {
        stop_and_wait(&mut r.2).await;
    }
    println!();
    Ok(())
}

// --------------------------------------------------------- 4. cold start

async fn cold(opts: &Options) -> Result<()> {
    println!("## 4. Cold start\n");
    println!(
        "A config with `starting` and `started` hooks and no AWS work: process start to \
         READY=1 (the Python daemon: to its `started` hook); {} runs.\n",
        opts.runs.max(10)
    );
    let tb = Testbed::start(REGION).await?;
    let instance = tb.launch_instance("a", None).await?;
    println!("| subject | process start to up |");
    println!("|---|---|");
    for subject in &opts.subjects {
        let mut times = Vec::new();
        for _ in 0..opts.runs.max(10) {
            let dir = tempfile::tempdir()?;
            let marker = dir.path().join("started");
            let config = write(
                dir.path(),
                "bench.jsonc",
                &format!(
                    r#"{{ "domains": {{ "app": {{ "exec": [
                      {{ "on": ["starting"], "lines": [{{ "argv": ["/bin/true"] }}] }},
                      {{ "on": ["started"], "lines": [{{ "argv": ["/usr/bin/touch", "{}"] }}] }} ] }} }} }}"#,
                    marker.display()
                ),
            )?;
            let started = Instant::now();
            let mut d = subject.spawn(&config, &tb.daemon_env(&instance))?;
            subject.wait_up(&mut d, &marker).await?;
            times.push(started.elapsed().as_secs_f64());
            stop_and_wait(&mut d).await;
        }
        let s = Stats::of(times);
        println!(
            "| {} | {:.1} ms ({:.1}–{:.1}) |",
            subject.name(),
            s.median() * 1000.0,
            s.min() * 1000.0,
            s.max() * 1000.0
        );
    }
    println!();
    Ok(())
}

// ---------------------------------------------------------- 6. moves (f)

/// A dataset's bring-up (`"source": "fc"`, release snapshots on `stopping`):
/// its successor in the same zone, in another zone while the release
/// snapshot is still pending, and in another zone once it completed.
async fn moves(opts: &Options) -> Result<()> {
    let Some(Subject::Rust { bin }) = opts.subjects.first() else {
        bail!("the move scenario runs ec2fleetd only");
    };
    println!(
        "## 6. Moves of a dataset
"
    );
    println!(
        "Process start to READY=1 of a successor of a world (`\"source\": \"fc\"`, a snapshot \
         on `stopping`, `detach-on`), its predecessor just stopped in zone a; the double's \
         snapshots take the time given to complete; {} runs each.\n",
        opts.runs
    );
    println!("| snapshot completes in | same zone | other zone, snapshot pending | other zone, snapshot completed |");
    println!("|---|---|---|---|");
    for snapshot_secs in [0.0, 2.0, 5.0] {
        let mut same = Vec::new();
        let mut pending = Vec::new();
        let mut completed = Vec::new();
        for _ in 0..opts.runs {
            for (zone, wait_first, into) in [
                ("a", false, &mut same),
                ("b", false, &mut pending),
                ("b", true, &mut completed),
            ] {
                let tb = Testbed::start(REGION).await?;
                let double = tb
                    .double
                    .clone()
                    .context("the bench needs the AWS double")?;
                double
                    .configure(json!({ "delays": { "snapshot": snapshot_secs } }))
                    .await?;
                let dir = tempfile::tempdir()?;
                let config = write(
                    dir.path(),
                    "world.jsonc",
                    r#"{ "domains": { "mc": { "attach-volume": [{
                        "device": "/dev/xvdf", "source": "fc", "pool-name": "world",
                        "create": { "Size": 8 }, "snapshot": { "on": ["stopping"] },
                        "detach-on": ["stopping"] }] } } }"#,
                )?;
                let spawn = |i: &SimInstance| {
                    DaemonProcess::spawn_with(
                        bin,
                        &[
                            "run",
                            "--config",
                            &config.display().to_string(),
                            "--keep-hostname",
                        ],
                        &tb.daemon_env(i),
                        false,
                        false,
                    )
                };
                let first = tb.launch_instance("a", None).await?;
                let mut d = spawn(&first)?;
                d.wait_ready(UP_TIMEOUT).await?;
                stop_and_wait(&mut d).await;
                tb.ec2
                    .terminate_instances()
                    .instance_ids(&first.meta.instance_id)
                    .send()
                    .await?;
                if wait_first {
                    tokio::time::sleep(Duration::from_secs_f64(snapshot_secs + 0.2)).await;
                }
                let next = tb.launch_instance(zone, None).await?;
                let started = Instant::now();
                let mut d = spawn(&next)?;
                d.wait_ready(UP_TIMEOUT).await?;
                into.push(started.elapsed().as_secs_f64());
                stop_and_wait(&mut d).await;
            }
        }
        let cell = |v: Vec<f64>| {
            let s = Stats::of(v);
            format!("{:.2} s ({:.2}–{:.2})", s.median(), s.min(), s.max())
        };
        println!(
            "| {snapshot_secs:.0} s | {} | {} | {} |",
            cell(same),
            cell(pending),
            cell(completed)
        );
    }
    println!();
    Ok(())
}

// ------------------------------------------------------------ 7. scale-in

/// A scale-in with a termination lifecycle hook: from the end of the
/// `terminating` hook to the completed lifecycle action (the releases and
/// notifications come between), and from TerminateInstanceInAutoScalingGroup
/// to the instance let go.
async fn scale_in(opts: &Options) -> Result<()> {
    let Some(Subject::Rust { bin }) = opts.subjects.first() else {
        bail!("the scale-in scenario runs ec2fleetd only");
    };
    println!(
        "## 7. Scale-in with a termination lifecycle hook
"
    );
    println!(
        "An instance in an Auto Scaling group with a termination hook (heartbeat timeout 300 s) \
         holding a pool volume (`detach-on`), a Route53 record (`delete-on`) and an SQS \
         notification; TerminateInstanceInAutoScalingGroup, a `terminating` hook of 1 s. From \
         the hook's end (its own clock) to the action's completion as the double records it, \
         and from the scale-in call to the completion; {} runs each, the double adding the \
         latency given to every AWS call.\n",
        opts.runs
    );
    println!(
        "| AWS latency | hook end → completed | scale-in → completed | if nobody completes it |"
    );
    println!("|---|---|---|---|");
    for latency_ms in [0, 100] {
        let (mut after_hook, mut whole) = (Vec::new(), Vec::new());
        for _ in 0..opts.runs {
            let tb = Testbed::start(REGION).await?;
            let double = tb
                .double
                .clone()
                .context("the bench needs the AWS double")?;
            let zone = tb.create_hosted_zone("example.net").await?;
            let queue = tb.create_queue("events").await?;
            tb.create_pool_volume("a", "game", "worlds").await?;
            tb.create_group("game", "a").await?;
            tb.put_lifecycle_hook("game", "drain", crate::world::TERMINATING, 300, "CONTINUE")
                .await?;
            let instance = tb.launch_instance("a", None).await?;
            tb.join_group("game", &instance).await?;
            let dir = tempfile::tempdir()?;
            let ended = dir.path().join("ended");
            let config = write(
                dir.path(),
                "game.jsonc",
                &json!({ "domains": { "game": {
                    "attach-volume": [{ "device": "/dev/xvdf", "source": "p", "pool-name": "worlds",
                                        "detach-on": ["terminating"] }],
                    "update-route53": [{ "hostedzone": zone, "name": "play.example.net",
                                         "delete-on": ["terminating"] }],
                    "exec": [{ "on": ["terminating"], "lines": [{ "argv": ["/bin/sh", "-c",
                        format!("sleep 1; date +%s.%N > {}", ended.display())] }] }],
                    "notify": [{ "backend": "aws-sqs", "options": { "queue-url": queue } }] } } })
                .to_string(),
            )?;
            double
                .configure(json!({ "latency_ms": latency_ms }))
                .await?;
            let mut d = DaemonProcess::spawn_with(
                bin,
                &[
                    "run",
                    "--config",
                    &config.display().to_string(),
                    "--keep-hostname",
                ],
                &tb.daemon_env(&instance),
                false,
                false,
            )?;
            d.wait_ready(UP_TIMEOUT).await?;
            // The look at start has seen the group.
            while !d.log().contains("Auto Scaling group game") {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let asked = unix_now();
            tb.autoscaling
                .terminate_instance_in_auto_scaling_group()
                .instance_id(&instance.meta.instance_id)
                .should_decrement_desired_capacity(true)
                .send()
                .await?;
            let code = d.wait_exit(Duration::from_secs(120)).await?;
            if code != 0 {
                bail!("exit {code}; log:\n{}", d.log());
            }
            let hook_end: f64 = std::fs::read_to_string(&ended)?.trim().parse()?;
            let completed = double
                .lifecycle_actions()
                .await?
                .into_iter()
                .find(|a| a.how.as_deref() == Some("completed"))
                .and_then(|a| a.ended)
                .with_context(|| format!("the action was not completed; log:\n{}", d.log()))?;
            after_hook.push(completed - hook_end);
            whole.push(completed - asked);
        }
        let cell = |v: Vec<f64>| {
            let s = Stats::of(v);
            format!(
                "{:.0} ms ({:.0}–{:.0})",
                s.median() * 1000.0,
                s.min() * 1000.0,
                s.max() * 1000.0
            )
        };
        println!(
            "| {latency_ms} ms | {} | {} | 300 s (the heartbeat timeout) |",
            cell(after_hook),
            cell(whole)
        );
    }
    println!();
    Ok(())
}

// ------------------------------------------------------------ 8. status

/// A Minecraft server answering every Server List Ping with 3 of 20
/// players, for the probe to count.
async fn slp_server() -> Result<(String, tokio::task::JoinHandle<()>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                // The handshake and the status request: each packet's
                // length is one byte here (they are short).
                for _ in 0..2 {
                    let Ok(len) = s.read_u8().await else { return };
                    let mut packet = vec![0; usize::from(len)];
                    if s.read_exact(&mut packet).await.is_err() {
                        return;
                    }
                }
                let status = r#"{"version":{"name":"1.21"},"players":{"online":3,"max":20}}"#;
                let mut out = vec![status.len() as u8 + 2, 0x00, status.len() as u8];
                out.extend_from_slice(status.as_bytes());
                let _ = s.write_all(&out).await;
            });
        }
    });
    Ok((address, task))
}

/// `GET /v1/status` on a unix socket, plain HTTP/1.1 with one request
/// per connection, as `curl --unix-socket` sends it.
async fn get_status(socket: &Path) -> Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(socket).await?;
    s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await?;
    if !answer.starts_with(b"HTTP/1.1 200") {
        bail!(
            "the status socket answered {}",
            String::from_utf8_lossy(&answer)
        );
    }
    Ok(answer)
}

/// The status socket's latency, and what a players probe every 15 s costs
/// a watching daemon: RSS and CPU beside the same daemon without a probe.
async fn status(opts: &Options) -> Result<()> {
    let Some(Subject::Rust { bin }) = opts
        .subjects
        .iter()
        .find(|s| matches!(s, Subject::Rust { .. }))
    else {
        bail!("the status scenario runs ec2fleetd only");
    };
    let subject = Subject::Rust { bin: bin.clone() };
    println!(
        "## 8. Status and a players probe
"
    );
    const REQUESTS: usize = 500;
    println!(
        "One ec2fleetd with a Minecraft players probe every 15 s (against a local Server List \
         Ping server), one without: {REQUESTS} `GET /v1/status` one after the other on the first's \
         socket, a new connection each; then both watch for {:.0} s, RSS sampled every second.\n",
        opts.idle.as_secs_f64()
    );
    let (address, server) = slp_server().await?;
    let tb = Testbed::start(REGION).await?;
    let mut running = Vec::new();
    for probe in [true, false] {
        let instance = tb.launch_instance("a", None).await?;
        let dir = tempfile::tempdir()?;
        let players = if probe {
            json!({ "probe": "minecraft", "address": address, "every": 15 })
        } else {
            serde_json::Value::Null
        };
        let mut domain =
            json!({ "exec": [{ "on": ["started"], "lines": [{ "argv": ["/bin/true"] }] }] });
        if probe {
            domain["players"] = players;
        }
        let config = write(
            dir.path(),
            "game.jsonc",
            &json!({ "domains": { "game": domain } }).to_string(),
        )?;
        let mut d = subject.spawn(&config, &tb.daemon_env(&instance))?;
        subject.wait_up(&mut d, Path::new("/nonexistent")).await?;
        let pid = d.pid().context("the daemon is gone")?;
        let socket = instance.root.path().join("run/ec2fleetd/game.sock");
        running.push((probe, d, pid, instance, dir, socket));
    }
    let mut took = Vec::new();
    let mut size = 0;
    for _ in 0..REQUESTS {
        let t = Instant::now();
        size = get_status(&running[0].5).await?.len();
        took.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let latency = Stats::of(took);
    println!("| requests | median | p99 | max | answer size |");
    println!("|---|---|---|---|---|");
    println!(
        "| {REQUESTS} | {:.2} ms | {:.2} ms | {:.2} ms | {size} bytes |\n",
        latency.median(),
        latency.quantile(0.99),
        latency.max()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first: Vec<(u64, u64, f64)> = running.iter().map(|r| tree_usage(r.2)).collect();
    let started = Instant::now();
    let mut samples: Vec<Vec<u64>> = vec![Vec::new(); running.len()];
    while started.elapsed() < opts.idle {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for (i, r) in running.iter().enumerate() {
            samples[i].push(tree_usage(r.2).0);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("| daemon | steady RSS (median) | peak RSS | CPU while watching |");
    println!("|---|---|---|---|");
    for (i, r) in running.iter().enumerate() {
        let (_, peak, cpu) = tree_usage(r.2);
        let rss = Stats::of(samples[i].iter().map(|&k| k as f64).collect());
        println!(
            "| {} | {:.1} MiB | {:.1} MiB | {:.3} % of a core |",
            if r.0 { "probe every 15 s" } else { "no probe" },
            rss.median() / 1024.0,
            peak as f64 / 1024.0,
            (cpu - first[i].2) / elapsed * 100.0
        );
    }
    for r in &mut running {
        stop_and_wait(&mut r.1).await;
    }
    server.abort();
    println!();
    Ok(())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

// -------------------------------------------------------------- 5. fleet

async fn fleet(opts: &Options) -> Result<()> {
    let n = opts.fleet;
    println!("## 5. Fleet\n");
    println!(
        "{n} daemons start at once, each claiming a volume from one pool of {n} and pointing its \
         own name in one hosted zone, under AWS's API quotas (EC2 mutating 5/s after a burst of \
         50, other EC2 calls 20/s after 100, Route53 10/s after 50); attach 0.5 s, device 0.2 s. \
         Time until all are READY, next to the least time the quotas allow for the calls the \
         daemons made (polls excluded); {} runs.\n",
        opts.runs
    );
    let Some(Subject::Rust { bin }) = opts
        .subjects
        .iter()
        .find(|s| matches!(s, Subject::Rust { .. }))
    else {
        bail!("the fleet scenario runs ec2fleetd only");
    };
    let subject = Subject::Rust { bin: bin.clone() };
    println!("| daemons | all READY | quota bound | ratio |");
    println!("|---|---|---|---|");
    let mut times = Vec::new();
    let mut bounds = Vec::new();
    for run in 0..opts.runs {
        let (tb, double, zone) = fresh_world("fleet.example").await?;
        let fleet: Vec<SimInstance> = tb.launch_fleet(n, &["a"]).await?;
        let pool = format!("fleet-{run}");
        for _ in 0..n {
            tb.create_pool_volume("a", "node", &pool).await?;
        }
        double
            .configure(json!({"real_quotas": true, "delays": {"attach": ATTACH, "device": DEVICE}}))
            .await?;
        double.clear_calls().await?;
        let dir = tempfile::tempdir()?;
        let started = Instant::now();
        let mut daemons = Vec::new();
        for (i, instance) in fleet.iter().enumerate() {
            let config = write(
                dir.path(),
                &format!("node-{i}.jsonc"),
                &format!(
                    r#"{{ "domains": {{ "node": {{
                      "attach-volume": [{{ "device": "/dev/xvdf", "source": "p", "pool-name": "{pool}" }}],
                      "update-route53": [{{ "hostedzone": "{zone}", "name": "node-{i}.fleet.example", "ttl": 60 }}] }} }} }}"#
                ),
            )?;
            daemons.push(subject.spawn(&config, &tb.daemon_env(instance))?);
        }
        for d in &mut daemons {
            d.wait_ready(UP_TIMEOUT).await?;
        }
        times.push(started.elapsed().as_secs_f64());
        bounds.push(quota_bound(&double.calls().await?));
        double.configure(json!({"reset": true})).await?;
        for d in &daemons {
            stop(d);
        }
        for d in &mut daemons {
            let _ = d.wait_exit(Duration::from_secs(60)).await;
        }
    }
    let (s, b) = (Stats::of(times), Stats::of(bounds));
    println!(
        "| {n} | {} | {:.2} s | {:.2} |",
        s.secs(),
        b.median(),
        s.median() / b.median()
    );
    println!();
    Ok(())
}

/// The least time AWS's quotas allow for the calls answered (polls
/// excluded): per bucket, the calls beyond its burst at its rate; plus one
/// domain's attach and device time, which no quota shortens.
fn quota_bound(calls: &[Call]) -> f64 {
    let answered: Vec<&Call> = calls.iter().filter(|c| c.outcome == "answered").collect();
    let count = |pred: &dyn Fn(&Call) -> bool| answered.iter().filter(|c| pred(c)).count() as f64;
    let mutating = count(&|c| c.service == "ec2" && c.is_mutating());
    // DescribeVolumes is mostly polling: left out, which only lowers the bound.
    let other = count(&|c| c.service == "ec2" && !c.is_mutating() && c.action != "DescribeVolumes");
    let route53 = count(&|c| c.service == "route53" && c.action != "GetChange");
    let over = |calls: f64, burst: f64, rate: f64| ((calls - burst).max(0.0)) / rate;
    [
        over(mutating, 50.0, 5.0),
        over(other, 100.0, 20.0),
        over(route53, 50.0, 10.0),
    ]
    .into_iter()
    .fold(0.0, f64::max)
        + ATTACH
        + DEVICE
}

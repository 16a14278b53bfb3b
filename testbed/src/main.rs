//! `ec2fleetd-testbed`: the emulators from the command line, and a demo of a
//! whole instance life with no AWS account.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use ec2fleetd_testbed::bench;
use ec2fleetd_testbed::daemon::DaemonProcess;
use ec2fleetd_testbed::imds::{ImdsEmulator, InstanceMeta};
use ec2fleetd_testbed::world::Testbed;

#[derive(Parser)]
#[command(
    name = "ec2fleetd-testbed",
    about = "Emulators for ec2fleetd: IMDSv2, moto, a simulated instance"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve an IMDSv2 emulator until Ctrl-C. Raise a spot notice with
    /// `curl -X POST http://ADDR/control/spot-interruption`.
    Imds {
        #[arg(long, default_value = "8111")]
        port: u16,
        #[command(flatten)]
        meta: Box<InstanceMeta>,
        /// Serve this file as the user data.
        #[arg(long, value_name = "FILE")]
        user_data: Option<PathBuf>,
    },
    /// Run the benchmarks of BENCHMARKS.md and print their tables.
    Bench {
        /// The ec2fleetd binary (default: next to this one).
        #[arg(long)]
        daemon: Option<PathBuf>,
        /// Also run the Python daemon through this runner script
        /// (bench/python/run-python-daemon).
        #[arg(long)]
        python: Option<PathBuf>,
        /// Scenarios: init, reaction, idle, cold, fleet, move, scale-in, status.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "init,reaction,idle,cold,fleet"
        )]
        scenarios: Vec<String>,
        /// Runs of each measurement.
        #[arg(long, default_value = "5")]
        runs: usize,
        /// Domain counts for the init scenario.
        #[arg(long, value_delimiter = ',', default_value = "1,5,20,50")]
        domains: Vec<usize>,
        /// Trials of the reaction scenario.
        #[arg(long, default_value = "50")]
        trials: usize,
        /// How long the idle scenario watches.
        #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
        idle: Duration,
        /// Daemons in the fleet scenario.
        #[arg(long, default_value = "50")]
        fleet: usize,
    },
    /// A fleet of daemons for a bounded time against the double with faults
    /// on, SIGKILLs, stops and notices at random moments; then the
    /// invariants (doc/testbed.md). Exits 1 on a violation.
    Chaos {
        /// The ec2fleetd binary (default: next to this one).
        #[arg(long)]
        daemon: Option<PathBuf>,
        /// How long new lives start.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Instances alive at once.
        #[arg(long, default_value = "4")]
        slots: usize,
        /// Pool volumes to start with.
        #[arg(long, default_value = "3")]
        pool: usize,
        /// Seed of the random choices (default: from the clock).
        #[arg(long)]
        seed: Option<u64>,
        /// Instead: one dataset (`"source": "fc"`) living on instance after
        /// instance in random zones, `--lives` times.
        #[arg(long)]
        dataset: bool,
        /// Lives of the dataset, with `--dataset`.
        #[arg(long, default_value = "20")]
        lives: usize,
    },
    /// Run the seed Minecraft config through a whole instance life on moto
    /// and the IMDS emulator: boot, attach, DNS, hooks, notice, shutdown.
    Demo {
        /// The ec2fleetd binary (default: next to this one).
        #[arg(long)]
        daemon: Option<PathBuf>,
        /// The config to run (default: examples/minecraft.jsonc).
        #[arg(long)]
        example: Option<PathBuf>,
    },
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Imds {
            port,
            meta,
            user_data,
        } => {
            let emu = ImdsEmulator::start(*meta, port).await?;
            if let Some(file) = user_data {
                emu.set_user_data(
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?,
                );
            }
            println!("IMDSv2 emulator on {}", emu.url());
            println!("  export AWS_EC2_METADATA_SERVICE_ENDPOINT={}", emu.url());
            println!(
                "  curl -X POST {}/control/spot-interruption   # raise a spot notice",
                emu.url()
            );
            tokio::signal::ctrl_c().await?;
            Ok(())
        }
        Command::Demo { daemon, example } => demo(daemon, example).await,
        Command::Chaos {
            daemon,
            duration,
            slots,
            pool,
            seed,
            dataset,
            lives,
        } => {
            let daemon = match daemon {
                Some(d) => d,
                None => std::env::current_exe()?.with_file_name("ec2fleetd"),
            };
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
            if dataset {
                use ec2fleetd_testbed::dataset_chaos;
                println!("chaos: a dataset, {lives} lives, seed {seed}");
                let report = dataset_chaos::run(dataset_chaos::Settings {
                    daemon,
                    lives,
                    seed,
                })
                .await?;
                finish_chaos(&report.summary(), &report.violations);
                return Ok(());
            }
            println!("chaos: {slots} slots, pool of {pool}, {duration:?}, seed {seed}");
            let report = ec2fleetd_testbed::chaos::run(ec2fleetd_testbed::chaos::Settings {
                daemon,
                duration,
                slots,
                pool,
                seed,
            })
            .await?;
            finish_chaos(&report.summary(), &report.violations);
            Ok(())
        }
        Command::Bench {
            daemon,
            python,
            scenarios,
            runs,
            domains,
            trials,
            idle,
            fleet,
        } => {
            let daemon = match daemon {
                Some(d) => d,
                None => std::env::current_exe()?.with_file_name("ec2fleetd"),
            };
            let mut subjects = vec![bench::Subject::Rust { bin: daemon }];
            if let Some(runner) = python {
                subjects.push(bench::Subject::Python { runner });
            }
            let options = bench::Options {
                subjects,
                scenarios,
                runs,
                domain_counts: domains,
                trials,
                idle,
                fleet,
            };
            bench::run(&options).await
        }
    }
}

/// Prints a chaos run's summary and violations; exit 1 if there are any.
fn finish_chaos(summary: &str, violations: &[String]) {
    println!("chaos: {summary}");
    for v in violations {
        println!("VIOLATION: {v}");
    }
    if !violations.is_empty() {
        std::process::exit(1);
    }
}

fn step(text: &str) {
    println!("\n==> {text}");
}

async fn demo(daemon: Option<PathBuf>, example: Option<PathBuf>) -> Result<()> {
    let daemon = match daemon {
        Some(d) => d,
        None => std::env::current_exe()?.with_file_name("ec2fleetd"),
    };
    let example = example.unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/minecraft.jsonc")
    });

    step("starting the AWS test double (moto with AWS's rules and timings, on loopback)");
    let tb = Testbed::start("us-east-1").await?;
    if let Some(double) = &tb.double {
        // Real AWS takes its time; so does the demo.
        double
            .configure(serde_json::json!({"delays": {"attach": 1.0, "device": 0.3, "route53_insync": 2.0}}))
            .await?;
    }
    println!(
        "    at {}: attaching takes 1 s, the device 0.3 s more",
        tb.moto.url
    );

    step("launching a simulated spot instance");
    let instance = tb.launch_instance("a", Some("2001:db8::7")).await?;
    let m = &instance.meta;
    println!(
        "    {} in {}, public {} and {}, IMDS emulator at {}",
        m.instance_id,
        m.zone,
        m.public_ipv4.as_deref().unwrap_or("-"),
        m.public_ipv6.as_deref().unwrap_or("-"),
        instance.imds.url()
    );

    step("creating the data volume, the hosted zone and the notification topic");
    let volume = tb.create_volume("a", 20).await?;
    let zone = tb.create_hosted_zone("my-world.mc").await?;
    let (topic, queue) = tb.topic_with_queue("fleet-events").await?;
    println!(
        "    volume {volume}; the double plays the kernel: once attached, its NVMe device shows up under {}",
        instance.root.path().display()
    );
    println!("    hosted zone {zone} (my-world.mc), topic {topic} → SQS queue");

    let run_dir = tempfile::Builder::new()
        .prefix("ec2fleetd-demo-")
        .tempdir()?;
    let hook = run_dir.path().join("demo-hook");
    std::fs::write(&hook, "#!/bin/sh\necho \"demo hook would run: $*\"\n")?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
    let hook = hook.display().to_string();
    let config = std::fs::read_to_string(&example)
        .with_context(|| format!("reading {}", example.display()))?
        .replace("vol-0123456789abcdef0", &volume)
        .replace("Z0123456789ABCDEFGHIJ", &zone)
        .replace("arn:aws:sns:us-east-1:123456789012:fleet-events", &topic)
        .replace("\"/bin/mount\"", &format!("\"{hook}\", \"mount\", \"{{attached_device}}\""))
        .replace("\"/bin/systemctl\"", &format!("\"{hook}\", \"systemctl\""))
        .replace(
            "\"/path/to/interrupt/script\"",
            &format!("\"{hook}\", \"warn players, save the world, stop the server: {{interrupt_action}} at {{interrupt_time}}\""),
        );
    let config_path = run_dir.path().join("minecraft.jsonc");
    std::fs::write(&config_path, config)?;
    println!(
        "    config: {} with these IDs, its commands replaced by {hook} (which only prints)",
        example.display()
    );

    step("starting ec2fleetd run --config … (its log follows)");
    let config_arg = config_path.display().to_string();
    let mut proc = DaemonProcess::spawn(
        &daemon,
        &["run", "--config", &config_arg, "--keep-hostname"],
        &tb.daemon_env(&instance),
        false,
    )?;
    proc.wait_ready(Duration::from_secs(60)).await?;

    step("ec2fleetd told systemd READY=1; what AWS looks like now");
    for (id, state, dev) in tb.attachments(&volume).await? {
        println!("    {volume}: {state} to {id} as {dev}");
    }
    for kind in ["A", "AAAA"] {
        println!(
            "    my-world.mc {kind} → {}",
            tb.record_values(&zone, "my-world.mc", kind)
                .await?
                .join(", ")
        );
    }

    step("raising a spot interruption notice in the IMDS emulator");
    let notice = instance.imds.raise_spot_interruption("terminate", 120);
    println!(
        "    {{\"action\": \"{}\", \"time\": \"{}\"}}",
        notice.action, notice.time
    );
    let code = proc.wait_exit(Duration::from_secs(60)).await?;

    step(&format!("ec2fleetd exited with status {code}"));
    for body in tb.drain_queue(&queue).await? {
        let envelope: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        println!(
            "    notification: {}",
            envelope["Subject"].as_str().unwrap_or(&body)
        );
    }
    println!("    systemd heard: {}", proc.notify.messages().join(" | "));
    anyhow::ensure!(code == 0, "ec2fleetd did not exit cleanly");
    println!("\nThe whole life of a spot instance, with no AWS account. Done.");
    Ok(())
}

//! The `ec2fleetd` command line: `run` the daemon, `check` configs, `drill`
//! a shutdown, print the IAM `policy` a config needs, and the shell
//! completions and man page made from this definition.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

use ec2fleetd::config::Config;
use ec2fleetd::lifecycle::{self, ConfigSource, Outcome};
use ec2fleetd::policy;
use ec2fleetd::status;

/// EX_CONFIG from sysexits.h: the config is bad.
const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "ec2fleetd",
    version,
    about = "Makes stateful software survive EC2 spot interruptions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bring the domains up, then watch for a spot interruption or a signal.
    Run {
        /// Read the config from FILE instead of the instance's user data.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where block devices are looked up (sys/block, dev/).
        #[arg(
            long,
            value_name = "DIR",
            env = "EC2FLEETD_DEVICE_ROOT",
            default_value = "/"
        )]
        device_root: PathBuf,
        /// Seconds between two looks at the spot interruption notice.
        #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = parse_seconds)]
        poll_interval: Duration,
        /// Leave the machine's hostname alone even when the config sets one.
        #[arg(long)]
        keep_hostname: bool,
        /// Seconds of a notice's warning kept from the hooks for releasing
        /// volumes, DNS and notifications.
        #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
        shutdown_reserve: Duration,
        /// Seconds a stop (SIGTERM) or a failure may take in all, hooks,
        /// releases and notifications: the units' TimeoutStopSec.
        #[arg(long, value_name = "SECONDS", default_value = "120", value_parser = parse_seconds)]
        stop_timeout: Duration,
        /// Seconds an Auto Scaling termination gives the `terminating` hooks,
        /// releases and notifications when the group has no termination
        /// lifecycle hook (with one, the hook's timeout counts).
        #[arg(long, value_name = "SECONDS", default_value = "120", value_parser = parse_seconds)]
        termination_budget: Duration,
        /// The daemon's name: its status socket (`/run/ec2fleetd/NAME.sock`)
        /// and, in multi-part user data, the part named `NAME.jsonc`
        /// (default: the config file's stem, or `ec2fleetd`).
        #[arg(long, value_name = "NAME", value_parser = parse_name)]
        name: Option<String>,
    },
    /// Run the `interrupted` hooks as if a spot notice arrived now (or the
    /// `terminating` hooks, as if Auto Scaling terminated the instance), with
    /// no AWS changes, and time each against the budget.
    Drill {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Which end to rehearse.
        #[arg(long, value_enum, default_value = "interrupted")]
        event: lifecycle::DrillEvent,
        /// Seconds until the instance goes (default: 120 for a spot notice;
        /// for a termination, the group's termination lifecycle hook's
        /// timeout, else 120).
        #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
        deadline: Option<Duration>,
        /// Seconds kept from the hooks, as `run --shutdown-reserve`.
        #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_seconds)]
        shutdown_reserve: Duration,
    },
    /// Validate config files without touching anything.
    Check {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Print the least-privilege IAM policy (JSON) the config needs.
    Policy {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The fleet's region, to narrow EC2 and SQS ARNs (default: any).
        #[arg(long, value_name = "REGION", default_value = "*")]
        region: String,
        /// The fleet's AWS account ID, to narrow EC2 ARNs (default: any).
        #[arg(long, value_name = "ID", default_value = "*")]
        account: String,
        /// The ARN partition: aws, aws-cn, aws-us-gov.
        #[arg(long, value_name = "NAME", default_value = "aws")]
        partition: String,
        /// The Auto Scaling group whose lifecycle actions the instances
        /// complete; `*` wildcards allowed (default: any).
        #[arg(long, value_name = "NAME", default_value = "*")]
        group: String,
    },
    /// Ask the daemons running here (or the one named) how they are: state,
    /// each domain's phase, players, volumes and records held, the notice.
    Status {
        /// Print the status document(s) as JSON (an array without NAME).
        #[arg(long)]
        json: bool,
        /// The daemon's name: `ec2fleetd@NAME`'s (default: every one here).
        name: Option<String>,
    },
    /// Drain a daemon: its `draining` hooks run, it reports `draining`, and
    /// it is ready to close once no player is left.
    Drain {
        /// The daemon's name (default: the only one running here).
        name: Option<String>,
    },
    /// Undo a drain: players may come again.
    Undrain {
        /// The daemon's name (default: the only one running here).
        name: Option<String>,
    },
    /// Print the completion script for a shell.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Manpage,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 3600"
        )),
    }
}

fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        && !s.starts_with('.');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a daemon name: 1 to 64 letters, digits, '-', '_', '.' and '@'"
        ))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Check { files } => check(&files),
        Command::Policy {
            config,
            region,
            account,
            partition,
            group,
        } => print_policy(
            &config,
            &policy::Scope {
                partition,
                region,
                account,
                group,
            },
        ),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "ec2fleetd",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Status { json, name } => block_on_exit(status(name, json)),
        Command::Drain { name } => block_on_exit(control(name, "/v1/drain")),
        Command::Undrain { name } => block_on_exit(control(name, "/v1/undrain")),
        Command::Manpage => {
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: cannot write the man page: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            config,
            device_root,
            poll_interval,
            keep_hostname,
            shutdown_reserve,
            stop_timeout,
            termination_budget,
            name,
        } => {
            let options = lifecycle::Options {
                config: config.map_or(ConfigSource::UserData, ConfigSource::File),
                device_root,
                poll_interval,
                set_hostname: !keep_hostname,
                shutdown_reserve,
                stop_timeout,
                termination_budget,
                name,
            };
            block_on(lifecycle::run(options))
        }
        Command::Drill {
            config,
            event,
            deadline,
            shutdown_reserve,
        } => block_on(lifecycle::drill(&config, event, deadline, shutdown_reserve)),
    }
}

/// The async runtime: two workers for the daemon, one thread for a client
/// command; the exit status when it cannot start.
fn runtime(daemon: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = if daemon {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

/// Runs `outcome` on the async runtime and turns it into the exit status.
fn block_on(outcome: impl std::future::Future<Output = Outcome>) -> ExitCode {
    limit_malloc_arenas();
    let runtime = match runtime(true) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(outcome) {
        Outcome::Clean(_) => ExitCode::SUCCESS,
        Outcome::BadConfig(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Outcome::Failed(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a client command on a small runtime.
fn block_on_exit(f: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match runtime(false) {
        Ok(r) => r,
        Err(code) => return code,
    };
    match runtime.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The sockets `name` picks: that one, or every one here.
fn pick_sockets(name: Option<&str>) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let dir = status::runtime_dir();
    if let Some(name) = name {
        let socket = dir.join(format!("{name}.sock"));
        if !socket.exists() {
            anyhow::bail!(
                "no ec2fleetd named {name:?} runs here ({} does not exist)",
                socket.display()
            );
        }
        return Ok(vec![(name.to_string(), socket)]);
    }
    let found = status::client::sockets(&dir)?;
    if found.is_empty() {
        anyhow::bail!("no ec2fleetd runs here (no socket in {})", dir.display());
    }
    Ok(found)
}

async fn status(name: Option<String>, json: bool) -> anyhow::Result<()> {
    let sockets = pick_sockets(name.as_deref())?;
    let mut documents = Vec::new();
    // A daemon that does not answer (a socket left by one that died) is
    // said; the others are still shown.
    let mut silent = Vec::new();
    for (name, socket) in &sockets {
        match status::client::request(socket, hyper::Method::GET, "/v1/status", None).await {
            Ok((200, doc)) => documents.push(doc),
            Ok((code, doc)) => silent.push(format!("{name}: HTTP {code}: {}", doc["error"])),
            Err(e) => silent.push(format!("{name}: {e:#}")),
        }
    }
    if json {
        let out = match (name, documents.as_slice()) {
            (Some(_), [one]) => one.clone(),
            _ => serde_json::Value::Array(documents),
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for doc in &documents {
            print!("{}", status::client::human(doc));
        }
    }
    if !silent.is_empty() {
        anyhow::bail!("{}", silent.join("\n"));
    }
    Ok(())
}

async fn control(name: Option<String>, path: &str) -> anyhow::Result<()> {
    let sockets = pick_sockets(name.as_deref())?;
    let [(name, socket)] = sockets.as_slice() else {
        let names: Vec<&str> = sockets.iter().map(|(n, _)| n.as_str()).collect();
        anyhow::bail!(
            "several ec2fleetd run here ({}): name one",
            names.join(", ")
        );
    };
    let (code, doc) = status::client::request(socket, hyper::Method::POST, path, None).await?;
    if code != 200 {
        anyhow::bail!("{name}: {}", doc["error"].as_str().unwrap_or("refused"));
    }
    println!(
        "{name}: {}{}",
        doc["state"].as_str().unwrap_or("?"),
        if doc["ready_to_close"] == true {
            ", ready to close"
        } else {
            ""
        }
    );
    Ok(())
}

fn check(files: &[PathBuf]) -> ExitCode {
    let mut bad = 0;
    for file in files {
        match Config::from_file(file) {
            Ok(c) => println!("{}: ok ({} domain(s))", file.display(), c.domains.len()),
            Err(e) => {
                bad += 1;
                eprintln!("error: {e}");
            }
        }
    }
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_CONFIG)
    }
}

/// Two malloc arenas, not one per thread: the blocking threads of a
/// parallel bring-up would each leave an arena of freed memory behind, and
/// the daemon then watches for hours at that size. Before any thread starts.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called while the
    // process has one thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// `policy`: a bad config fails as with `check`.
fn print_policy(file: &std::path::Path, scope: &policy::Scope) -> ExitCode {
    let config = match Config::from_file(file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let document = policy::for_config(&config, scope);
    if document["Statement"]
        .as_array()
        .is_some_and(|s| s.is_empty())
    {
        eprintln!(
            "note: {} makes no AWS call: the instance role needs no permission for ec2fleetd",
            file.display()
        );
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&document).expect("a JSON value serializes")
    );
    ExitCode::SUCCESS
}

/// Logs to stderr; under systemd (journal) without our own timestamps.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("EC2FLEETD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.with_ansi(colour).init();
    }
}

//! Start-up: the config (from a file or user data) and the instance's
//! facts, the AWS clients, then the daemon's loop.

use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{anyhow, Context, Result};

use super::domain::{DomainRun, Shared};
use super::phases::{Daemon, Inputs};
use super::signals::Signals;
use super::{ConfigSource, Options, Outcome};
use futures_util::FutureExt;

use crate::autoscaling::{self, Found};
use crate::aws::{self, Clients};
use crate::config::{Config, ConfigErrors, MacroValues};
use crate::imds::{ImdsClient, InstanceFacts};
use crate::ledger::Ledger;
use crate::status::{self, Board, DomainEntry};
use crate::systemd;

/// Runs the daemon to the end of the instance's life.
pub async fn run(options: Options) -> Outcome {
    let signals = Signals::listen();
    let name = options
        .name
        .clone()
        .unwrap_or_else(|| status_name(&options.config));
    systemd::spawn_watchdog();
    let imds = Arc::new(ImdsClient::from_env());
    systemd::status("starting: reading the config and instance metadata");

    let config = match &options.config {
        ConfigSource::File(path) => match Config::from_file(path) {
            Ok(c) => c,
            Err(e) => return Outcome::BadConfig(e),
        },
        ConfigSource::UserData => match read_user_data_config(&imds, &name).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Outcome::BadConfig(e),
            Err(e) => return Outcome::Failed(e),
        },
    };
    let facts = match InstanceFacts::read(&imds).await {
        Ok(f) => f,
        Err(e) => return Outcome::Failed(anyhow!(e).context("reading instance metadata")),
    };
    tracing::info!(
        "instance {} ({}, {}, launch index {}), public {}",
        facts.instance_id,
        facts.instance_type,
        facts.zone,
        facts.launch_index,
        [facts.public_ipv4.join(", "), facts.public_ipv6.join(", ")]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; ")
    );
    let region = aws::region_from_env().unwrap_or_else(|| facts.region.clone());
    let clients = Clients::load(&region).await;
    // The Auto Scaling group and its hooks, looked up while the domains
    // come up; read when READY is reached, init fails, or a termination comes.
    let group = {
        let (client, id, spec) = (
            clients.autoscaling.clone(),
            facts.instance_id.clone(),
            config.auto_scaling.clone(),
        );
        let look = tokio::spawn(async move { autoscaling::look(&client, &id, &spec).await });
        async move {
            look.await
                .unwrap_or_else(|e| Found::Unknown(format!("the look ended abnormally: {e}")))
        }
        .boxed()
        .shared()
    };
    let transaction_id = transaction_id(&facts.instance_id, &options.config);
    let ledgers: Vec<Arc<Ledger>> = config.domains.iter().map(|_| Arc::default()).collect();
    let (board, controls) = Board::new(
        &name,
        status::Instance {
            id: facts.instance_id.clone(),
            instance_type: facts.instance_type.clone(),
            availability_zone: facts.zone.clone(),
            region: facts.region.clone(),
        },
        config
            .domains
            .iter()
            .zip(&ledgers)
            .map(|(d, ledger)| DomainEntry {
                name: d.name.clone(),
                ledger: ledger.clone(),
                probe: d.players.as_ref().map(|p| p.probe.name()),
                max: d.players.as_ref().and_then(|p| p.max),
            })
            .collect(),
    );
    let served = match serve_status(&board, &config).await {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(e),
    };
    let shared = Arc::new(Shared {
        base_values: base_values(&facts, &transaction_id),
        clients,
        facts,
        device_root: options.device_root.clone(),
        transaction_id,
        board,
    });
    let runs = config
        .domains
        .iter()
        .zip(ledgers)
        .enumerate()
        .map(|(index, (d, ledger))| DomainRun::new(&shared, index, d.clone(), ledger))
        .collect();
    let inputs = Inputs { signals, controls };
    let outcome = Daemon::new(config, shared, options, imds, inputs, runs, group)
        .live()
        .await;
    if let Some(served) = served {
        served.close();
    }
    outcome
}

/// The daemon's name, for its status socket: the config file's stem
/// (`ec2fleetd@NAME` reads `/etc/ec2fleetd/NAME.jsonc`), or `ec2fleetd`
/// for the config in user data.
fn status_name(source: &ConfigSource) -> String {
    match source {
        ConfigSource::UserData => "ec2fleetd".to_string(),
        ConfigSource::File(path) => path.file_stem().map_or_else(
            || "ec2fleetd".to_string(),
            |s| s.to_string_lossy().to_string(),
        ),
    }
}

/// The status socket, and HTTP when the config asks for it. A socket
/// another daemon answers on, or an HTTP endpoint that cannot be served
/// as configured, fails the start (nothing is touched yet); a socket that
/// cannot be made otherwise (no such directory and no right to make it)
/// is logged and the daemon runs without it.
async fn serve_status(
    board: &Arc<Board>,
    config: &Config,
) -> Result<Option<status::server::Served>> {
    let socket = status::runtime_dir().join(format!("{}.sock", board.name()));
    let http = match config.status.listen {
        None => None,
        Some(address) => {
            let token = match &config.status.token_file {
                None => None,
                Some(file) => Some(read_token(file)?),
            };
            Some((address, token))
        }
    };
    match status::server::listen(board.clone(), &socket, http.clone()).await {
        Ok(s) => {
            tracing::info!("status: answering on {}", socket.display());
            Ok(Some(s))
        }
        Err(e) if http.is_some() || socket.exists() => Err(e),
        Err(e) => {
            tracing::error!("status: {e:#}; ec2fleetd status cannot reach this daemon");
            Ok(None)
        }
    }
}

/// The bearer token in `file`: its content, surrounding whitespace trimmed.
fn read_token(file: &std::path::Path) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the status token from {}", file.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(anyhow!("the status token file {} is empty", file.display()));
    }
    Ok(token.as_bytes().to_vec())
}

pub(super) fn base_values(facts: &InstanceFacts, transaction_id: &str) -> MacroValues {
    let mut v = MacroValues::default();
    v.set("instance_id", facts.instance_id.clone());
    v.set("instance_type", facts.instance_type.clone());
    v.set("instance_index", facts.launch_index.clone());
    v.set("placement_region", facts.region.clone());
    v.set("placement_zone", facts.zone.clone());
    v.set("hypervisor", facts.hypervisor.clone());
    v.set(
        "primary_public_ipv4",
        facts.primary_ipv4().unwrap_or_default(),
    );
    v.set(
        "primary_public_ipv6",
        facts.primary_ipv6().unwrap_or_default(),
    );
    v.set(
        "primary_private_ipv4",
        facts.private_ipv4.clone().unwrap_or_default(),
    );
    v.set("public_ipv4_list", facts.public_ipv4.join(", "));
    v.set("public_ipv6_list", facts.public_ipv6.join(", "));
    v.set("pid", std::process::id().to_string());
    v.set("transaction_id", transaction_id);
    v
}

/// Unique per run: `INSTANCE-SCOPE-TIME`. The instance and the config's
/// name (several `ec2fleetd@NAME` may run on one instance) let a later run
/// of the same daemon recognise what an earlier one left.
fn transaction_id(instance_id: &str, source: &ConfigSource) -> String {
    let scope = match source {
        ConfigSource::UserData => "user_data".to_string(),
        ConfigSource::File(path) => path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '@' {
                    c
                } else {
                    '_'
                }
            })
            .collect(),
    };
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{instance_id}-{scope}-{nanos:x}")
}

/// The config from user data; `Ok(Err)` when the user data is not a usable
/// config (missing, not text, invalid), `Err` when IMDS could not be read.
async fn read_user_data_config(
    imds: &ImdsClient,
    name: &str,
) -> Result<Result<Config, ConfigErrors>> {
    let data = imds
        .user_data()
        .await
        .context("reading the config from user data")?;
    let bad = |message: &str| {
        Ok(Err(ConfigErrors {
            source: "user data".into(),
            problems: vec![crate::config::Problem {
                line: 1,
                column: 1,
                path: "$".into(),
                message: message.into(),
            }],
        }))
    };
    let data = data.unwrap_or_default();
    if data.iter().all(u8::is_ascii_whitespace) {
        return bad(
            "this instance has no user data: put the config there, or give it with --config FILE",
        );
    }
    if crate::config::mime::is_mime(&data) {
        return match crate::config::mime::config_part(&data, name) {
            Ok(text) => Ok(Config::from_text("user data (MIME part)", &text)),
            Err(why) => bad(&why),
        };
    }
    match String::from_utf8(data) {
        Ok(text) => Ok(Config::from_text("user data", &text)),
        Err(_) => bad("the user data is neither UTF-8 text nor gzip of it"),
    }
}

//! `ec2fleetd drill`: the `interrupted` hooks as if a spot notice arrived
//! now (or the `terminating` hooks, as if Auto Scaling terminated the
//! instance), with no change to AWS, each hook timed against the budget, so
//! that an operator learns whether shutdown fits before trusting spot with
//! data. On EC2 the instance's Auto Scaling group is looked up (read only)
//! to say what budget a termination gets.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Result;

use super::domain::blocks_for;
use super::startup::base_values;
use super::{now_rfc3339, Outcome, State};
use crate::autoscaling::{self, Found};
use crate::aws::{self, Clients};
use crate::config::{Config, Event};
use crate::hooks::{self, OnFailure, Policy, Scope};
use crate::imds::{ImdsClient, InstanceFacts};

/// The spot notice's warning, and the termination budget without a hook.
const TWO_MINUTES: Duration = Duration::from_secs(120);
/// How long the drill waits for the Auto Scaling look.
const LOOK_LIMIT: Duration = Duration::from_secs(15);

/// Which end the drill rehearses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DrillEvent {
    /// A spot interruption notice.
    Interrupted,
    /// An Auto Scaling termination (scale-in).
    Terminating,
}

impl DrillEvent {
    fn event(self) -> Event {
        match self {
            DrillEvent::Interrupted => Event::Interrupted,
            DrillEvent::Terminating => Event::Terminating,
        }
    }
}

/// Runs the drill; `Clean` when every hook succeeded within the budget.
pub async fn drill(
    config: &Path,
    event: DrillEvent,
    deadline: Option<Duration>,
    reserve: Duration,
) -> Outcome {
    let config = match Config::from_file(config) {
        Ok(c) => c,
        Err(e) => return Outcome::BadConfig(e),
    };
    // Ctrl-C ends the drill; the hooks' process groups go with it.
    let outcome = tokio::select! {
        r = run(&config, event, deadline, reserve) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("drill interrupted")),
    };
    match outcome {
        Ok(true) => Outcome::Clean(State::Interrupted),
        Ok(false) => Outcome::Failed(anyhow::anyhow!(
            "the {} hooks do not fit the deadline, or failed",
            event.event()
        )),
        Err(e) => Outcome::Failed(e),
    }
}

/// The time an Auto Scaling termination gives, and what says so.
fn termination_budget(found: &Found) -> (Duration, String) {
    match found.termination() {
        Some((group, hook)) => (
            hook.global_timeout,
            format!(
                "the group {}'s termination lifecycle hook {hook} keeps it waiting, with heartbeats every {:.0}s",
                group.name,
                autoscaling::heartbeat_interval(hook).as_secs_f64()
            ),
        ),
        None => (
            TWO_MINUTES,
            format!(
                "Auto Scaling will not wait: {}",
                found.why_no_termination_hook()
            ),
        ),
    }
}

/// The instance's group and hooks, read only; off EC2, none.
async fn look(config: &Config, facts: Option<&InstanceFacts>) -> Found {
    let Some(facts) = facts else {
        return Found::Unknown("no instance metadata".into());
    };
    if !config.auto_scaling.enabled {
        return Found::Off;
    }
    let region = aws::region_from_env().unwrap_or_else(|| facts.region.clone());
    let clients = Clients::load(&region).await;
    let looked = autoscaling::look(
        &clients.autoscaling,
        &facts.instance_id,
        &config.auto_scaling,
    );
    tokio::time::timeout(LOOK_LIMIT, looked)
        .await
        .unwrap_or_else(|_| Found::Unknown("Auto Scaling did not answer in time".into()))
}

async fn run(
    config: &Config,
    which: DrillEvent,
    deadline: Option<Duration>,
    reserve: Duration,
) -> Result<bool> {
    let event = which.event();
    let imds = ImdsClient::from_env();
    // Off EC2 the drill still runs, with stand-in facts.
    let read = tokio::time::timeout(Duration::from_secs(5), InstanceFacts::read(&imds)).await;
    let on_ec2 = matches!(read, Ok(Ok(_)));
    let facts = match read {
        Ok(Ok(f)) => f,
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer within 5s".to_string(),
            };
            println!(
                "(no instance metadata at {} ({why}): macros use stand-in values)",
                imds.endpoint()
            );
            InstanceFacts {
                instance_id: "i-drill".into(),
                instance_type: "drill".into(),
                launch_index: "0".into(),
                region: "drill".into(),
                zone: "drill".into(),
                ..InstanceFacts::default()
            }
        }
    };
    let found = look(config, on_ec2.then_some(&facts)).await;
    let (termination, why) = termination_budget(&found);
    let deadline = match which {
        DrillEvent::Interrupted => deadline.unwrap_or(TWO_MINUTES),
        DrillEvent::Terminating => deadline.unwrap_or(termination),
    };
    let budget = deadline.saturating_sub(reserve);
    match which {
        DrillEvent::Interrupted => println!(
            "drill: a spot notice now, the instance goes in {}s; hooks get {}s ({}s kept for releasing and reporting)",
            deadline.as_secs(),
            budget.as_secs(),
            reserve.as_secs()
        ),
        DrillEvent::Terminating => println!(
            "drill: an Auto Scaling termination now ({why}): the instance goes in {}s; hooks get {}s ({}s kept for releasing and reporting)",
            deadline.as_secs(),
            budget.as_secs(),
            reserve.as_secs()
        ),
    }
    let interrupt_time =
        humantime::format_rfc3339_seconds(SystemTime::now() + deadline).to_string();
    let policy = Policy {
        deadline: Some(tokio::time::Instant::now() + budget),
        ..Policy::new(OnFailure::Continue)
    };
    let base = base_values(&facts, &format!("{}-drill", facts.instance_id));
    let runs = config.domains.iter().map(|domain| {
        let mut values = base.clone();
        values.set("domain", domain.name.clone());
        values.set("daemon_state", event.name());
        if which == DrillEvent::Interrupted {
            values.set("interrupt_action", "terminate");
            values.set("interrupt_time", interrupt_time.clone());
        }
        values.set("ts", now_rfc3339());
        let values = values.seal();
        let policy = &policy;
        async move {
            let scope = Scope {
                domain: &domain.name,
                event,
            };
            let blocks = blocks_for(domain, event);
            (
                domain,
                hooks::run_reported(blocks, scope, &values, policy).await,
            )
        }
    });
    let results = futures_util::future::join_all(runs).await;

    let mut ok = true;
    let mut slowest = Duration::ZERO;
    for (domain, reports) in &results {
        let total: Duration = reports.iter().map(|r| r.took).sum();
        slowest = slowest.max(total);
        println!(
            "\n[{}] {} hook(s), {:.1}s",
            domain.name,
            reports.len(),
            total.as_secs_f64()
        );
        let mut elapsed = Duration::ZERO;
        for r in reports {
            elapsed += r.took;
            let verdict = match &r.failure {
                None => "ok".to_string(),
                Some(why) => {
                    ok = false;
                    format!("FAILED: {why}")
                }
            };
            println!(
                "  {:>6.1}s  (at {:>6.1}s of {}s)  {}  {verdict}",
                r.took.as_secs_f64(),
                elapsed.as_secs_f64(),
                budget.as_secs(),
                r.argv.join(" ")
            );
        }
    }
    // What runs after the hooks, in the reserve: the release snapshots
    // (one CreateSnapshot and one CreateTags each), then `detach-on`.
    let mut after = 0;
    for domain in &config.domains {
        let steps: Vec<String> = domain
            .volumes
            .iter()
            .flat_map(|v| {
                let snap = v
                    .snapshot
                    .as_ref()
                    .is_some_and(|s| s.on.contains(&event))
                    .then(|| format!("snapshot {}", v.device));
                let detach = v
                    .detach_on
                    .contains(&event)
                    .then(|| format!("detach {}", v.device));
                snap.into_iter().chain(detach)
            })
            .collect();
        after += steps.iter().filter(|s| s.starts_with("snapshot")).count();
        if !steps.is_empty() {
            println!(
                "[{}] then, in the {}s reserve: {}",
                domain.name,
                reserve.as_secs(),
                steps.join(", ")
            );
        }
    }
    // A snapshot call and its tag take about a second; a detach a few.
    let wanted = Duration::from_secs(2 * after as u64 + 3);
    if after > 0 && reserve < wanted {
        println!(
            "note: {after} snapshot(s) and the releases may not fit a {}s reserve: give --shutdown-reserve {} or more",
            reserve.as_secs(),
            wanted.as_secs()
        );
    }
    let fits = slowest <= budget && !results.iter().flat_map(|(_, r)| r).any(|r| r.over_deadline);
    println!();
    if fits && ok {
        println!(
            "fits: the slowest domain needs {:.1}s of {}s ({:.1}s to spare)",
            slowest.as_secs_f64(),
            budget.as_secs(),
            (budget - slowest).as_secs_f64()
        );
    } else if !fits {
        println!(
            "does NOT fit: hooks were cut at the deadline or need more than the {}s available (the slowest domain took {:.1}s)",
            budget.as_secs(),
            slowest.as_secs_f64()
        );
    } else {
        println!("fits in time, but hooks failed: see above");
    }
    if which == DrillEvent::Interrupted && on_ec2 {
        println!(
            "an Auto Scaling termination would give the terminating hooks {}s ({why}): `--event terminating` times them",
            termination.saturating_sub(reserve).as_secs()
        );
    }
    Ok(fits && ok)
}

//! `ec2fleetd drill`: the `interrupted` hooks as if a spot notice arrived
//! now, with no change to AWS, each hook timed against the budget, so that
//! an operator learns whether shutdown fits before trusting spot with data.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Result;

use super::domain::blocks_for;
use super::startup::base_values;
use super::{now_rfc3339, Outcome, State};
use crate::config::{Config, Event};
use crate::hooks::{self, OnFailure, Policy, Scope};
use crate::imds::{ImdsClient, InstanceFacts};

/// Runs the drill; `Clean` when every hook succeeded within the budget.
pub async fn drill(config: &Path, deadline: Duration, reserve: Duration) -> Outcome {
    let config = match Config::from_file(config) {
        Ok(c) => c,
        Err(e) => return Outcome::BadConfig(e),
    };
    // Ctrl-C ends the drill; the hooks' process groups go with it.
    let outcome = tokio::select! {
        r = run(&config, deadline, reserve) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("drill interrupted")),
    };
    match outcome {
        Ok(true) => Outcome::Clean(State::Interrupted),
        Ok(false) => Outcome::Failed(anyhow::anyhow!(
            "the interrupted hooks do not fit the deadline, or failed"
        )),
        Err(e) => Outcome::Failed(e),
    }
}

async fn run(config: &Config, deadline: Duration, reserve: Duration) -> Result<bool> {
    let imds = ImdsClient::from_env();
    // Off EC2 the drill still runs, with stand-in facts.
    let facts = match tokio::time::timeout(Duration::from_secs(5), InstanceFacts::read(&imds)).await
    {
        Ok(Ok(f)) => f,
        _ => {
            println!(
                "(no instance metadata at {}: macros use stand-in values)",
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
    let budget = deadline.saturating_sub(reserve);
    println!(
        "drill: a spot notice now, the instance goes in {}s; hooks get {}s ({}s kept for releasing and reporting)",
        deadline.as_secs(),
        budget.as_secs(),
        reserve.as_secs()
    );
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
        values.set("daemon_state", Event::Interrupted.name());
        values.set("interrupt_action", "terminate");
        values.set("interrupt_time", interrupt_time.clone());
        values.set("ts", now_rfc3339());
        let values = values.seal();
        let policy = &policy;
        async move {
            let scope = Scope {
                domain: &domain.name,
                event: Event::Interrupted,
            };
            let blocks = blocks_for(domain, Event::Interrupted);
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
                    .is_some_and(|s| s.on.contains(&Event::Interrupted))
                    .then(|| format!("snapshot {}", v.device));
                let detach = v
                    .detach_on
                    .contains(&Event::Interrupted)
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
    Ok(fits && ok)
}

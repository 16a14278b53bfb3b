//! A short chaos run (`ec2fleetd-testbed chaos` runs longer): a small fleet
//! with faults, SIGKILLs, stops and notices at random moments; no invariant
//! may break.

use std::time::Duration;

use ec2fleetd_testbed::chaos;

use super::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_chaos_run_breaks_no_invariant() {
    let report = chaos::run(chaos::Settings {
        daemon: daemon_bin(),
        duration: Duration::from_secs(25),
        slots: 3,
        pool: 2,
        seed: 13,
    })
    .await
    .unwrap();
    no_violation(&report.summary(), &report.violations);
    assert!(
        report.kills + report.notices + report.stops >= 3 && report.faults > 0,
        "the run did too little to mean anything: {}",
        report.summary()
    );
}

/// A short dataset chaos (`ec2fleetd-testbed chaos --dataset` runs longer):
/// a world on instance after instance in random zones, with faults,
/// SIGKILLs, notices and races; never two holders, no write lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_dataset_chaos_run_loses_nothing() {
    use ec2fleetd_testbed::dataset_chaos;
    let report = dataset_chaos::run(dataset_chaos::Settings {
        daemon: daemon_bin(),
        lives: 8,
        seed: 5,
    })
    .await
    .unwrap();
    no_violation(&report.summary(), &report.violations);
    assert!(
        report.up >= 3 && report.moves >= 1,
        "the run did too little to mean anything: {}",
        report.summary()
    );
}

fn no_violation(summary: &str, violations: &[String]) {
    eprintln!("chaos: {summary}");
    assert!(
        violations.is_empty(),
        "{summary}\n{}",
        violations.join("\n\n")
    );
}

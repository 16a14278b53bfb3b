//! Ties the capabilities together in the order of an instance's life:
//! read the config, bring every domain up in parallel, report ready, watch
//! for an interruption or a signal, run the last hooks and report.
//!
//! `startup` reads the config and the instance's facts; `phases` is the
//! daemon's loop, one match on the [`State`], each phase returning the
//! [`Input`] that moves it on; `domain` is one domain's part of each
//! phase, over its record of what it holds ([`crate::ledger`]); `signals`
//! turns SIGTERM and SIGINT into a stop and a hurry.

mod domain;
mod drill;
mod phases;
mod signals;
mod startup;
mod state;

pub use drill::{drill, DrillEvent};
pub use startup::run;
pub use state::{Input, State};

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::config::ConfigErrors;

/// Where the config comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    UserData,
    File(PathBuf),
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: ConfigSource,
    pub device_root: PathBuf,
    pub poll_interval: Duration,
    /// Set the hostname from the config (off for containers and demos).
    pub set_hostname: bool,
    /// Of the time a notice leaves, what the hooks may not use: it is kept
    /// for releasing volumes, DNS and notifications.
    pub shutdown_reserve: Duration,
    /// The time a stop or a failure gets in all (the units'
    /// `TimeoutStopSec`, after which systemd kills what is left).
    pub stop_timeout: Duration,
    /// The time an Auto Scaling termination gets when no termination
    /// lifecycle hook makes Auto Scaling wait.
    pub termination_budget: Duration,
    /// The daemon's name (`--name`): its status socket, and the part of
    /// multi-part user data it reads. Default: the config file's stem, or
    /// `ec2fleetd`.
    pub name: Option<String>,
}

/// How a run ended; `main` maps it to the exit status.
#[derive(Debug)]
pub enum Outcome {
    /// Interrupted or stopped, hooks done: exit 0.
    Clean(State),
    /// The config is bad: exit 78 (EX_CONFIG), nothing touched.
    BadConfig(ConfigErrors),
    /// Init failed: exit 1. The `failed` hooks ran if the failure came after
    /// the config and the instance's facts were read.
    Failed(anyhow::Error),
}

/// The current time for `{ts}`.
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Bring-up is over: gives the heap it freed back to the system, so that
/// the daemon watches for hours at its steady size rather than at the peak
/// of bring-up (glibc keeps freed memory in each thread's arena otherwise).
pub(crate) fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of the allocator's own
    // arenas; it takes no pointers and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

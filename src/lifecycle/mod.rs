//! Ties the capabilities together in the order of an instance's life:
//! read the config, bring every domain up in parallel, report ready, watch
//! for an interruption or a signal, run the last hooks and report.

mod domain;
mod drill;
mod state;

pub use drill::drill;
pub use state::{Input, State};

/// The warning a spot notice gives, assumed when its time does not parse.
const SPOT_WARNING: Duration = Duration::from_secs(120);
/// The time the `terminating` hooks get: Auto Scaling does not say.
const TERMINATION_BUDGET: Duration = Duration::from_secs(120);

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Context, Result};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::aws::{self, Clients};
use crate::config::{Config, ConfigErrors, Event, MacroValues};
use crate::dns;
use crate::hooks::{OnFailure, Policy};
use crate::imds::{ImdsClient, InstanceFacts, Observation, Watcher};
use crate::systemd;
use crate::volumes;
use domain::{DomainRun, Shared};

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

/// Runs the daemon to the end of the instance's life.
pub async fn run(options: Options) -> Outcome {
    let signals = Signals::listen();
    systemd::spawn_watchdog();
    let imds = Arc::new(ImdsClient::from_env());
    systemd::status("starting: reading the config and instance metadata");

    let config = match &options.config {
        ConfigSource::File(path) => match Config::from_file(path) {
            Ok(c) => c,
            Err(e) => return Outcome::BadConfig(e),
        },
        ConfigSource::UserData => match read_user_data_config(&imds).await {
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
    let transaction_id = transaction_id(&facts.instance_id, &options.config);
    let shared = Arc::new(Shared {
        base_values: base_values(&facts, &transaction_id),
        clients,
        facts,
        device_root: options.device_root.clone(),
        transaction_id,
        placed: Default::default(),
    });
    let daemon = Daemon {
        config,
        shared,
        options,
        imds,
        signals,
        started_notes: Default::default(),
    };
    daemon.live().await
}

/// How a guarded phase of init ended.
enum Phase<T> {
    Done(T),
    TimedOut(anyhow::Error),
    Stopped,
    /// A spot notice or a termination arrived first.
    Ended(Observation),
}

struct Daemon {
    config: Config,
    shared: Arc<Shared>,
    options: Options,
    imds: Arc<ImdsClient>,
    signals: Signals,
    /// The `started` notifications, sent while the watch runs.
    started_notes: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// How long the end waits for `started` notifications still being retried.
const STARTED_NOTES_GRACE: Duration = Duration::from_secs(10);

impl Daemon {
    async fn live(self) -> Outcome {
        let started_at = Instant::now();
        let mut state = State::Starting;
        let n = self.config.domains.len();
        systemd::status(&format!("starting: bringing up {n} domain(s)"));
        tracing::info!("starting: bringing up {n} domain(s)");
        // `timeout` covers bring-up and the started hooks.
        let deadline = self.config.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut watcher = Watcher::new(self.imds.clone(), self.options.poll_interval);

        // A config without volumes has none to clean up (and needs no EC2
        // permission at all).
        let has_volumes = self.config.domains.iter().any(|d| !d.volumes.is_empty());
        let bring_up = async {
            let swept = if has_volumes {
                self.sweep(false).await
            } else {
                Ok(0)
            };
            match swept {
                Ok(0) => {}
                Ok(n) => tracing::info!("cleaned up {n} volume(s) left by an interrupted run"),
                // Bring-up still tries: what it needs may be unaffected.
                Err(e) => tracing::error!("cleaning up after an interrupted run: {e:#}"),
            }
            self.bring_up_all().await
        };
        let mut runs = match self.guarded(bring_up, deadline, &mut watcher).await {
            Phase::Done((runs, None)) => runs,
            Phase::Done((runs, Some(e))) => {
                return self.finish(State::Failed, runs, Some(e), None).await
            }
            Phase::TimedOut(e) => {
                self.roll_back_init().await;
                return self
                    .finish(State::Failed, self.fresh_runs(), Some(e), None)
                    .await;
            }
            // Dropping the bring-up ends its hooks (they are killed on drop).
            // The records it set stay with the runs, for `delete-on`.
            Phase::Stopped => {
                return self
                    .finish(State::Stopping, self.runs_after_cut(), None, None)
                    .await
            }
            Phase::Ended(o) => return self.end_by(state, o, self.runs_after_cut()).await,
        };

        self.set_hostname(&runs);
        state = state.next(Input::InitDone).expect("starting → started");
        match self
            .guarded(self.started(&mut runs), deadline, &mut watcher)
            .await
        {
            Phase::Done(Ok(())) => {}
            Phase::Done(Err(e)) | Phase::TimedOut(e) => {
                let failed = state.next(Input::InitFailed).expect("started → failed");
                // Clients must not be sent to an application that did not
                // start. (The volumes stay: the hooks mounted them.)
                self.put_back_records(&mut runs).await;
                return self.finish(failed, runs, Some(e), None).await;
            }
            Phase::Stopped => {
                let stopping = state.next(Input::Signal).expect("started → stopping");
                return self.finish(stopping, runs, None, None).await;
            }
            Phase::Ended(o) => return self.end_by(state, o, runs).await,
        }
        // Notifications go out while the watch begins: a slow or unreachable
        // endpoint holds neither READY nor the watch for a notice.
        let (shared, snapshot) = (self.shared.clone(), runs.clone());
        let notes = tokio::spawn(async move {
            futures_util::future::join_all(
                snapshot
                    .iter()
                    .map(|r| r.notify(&shared, Event::Started, None)),
            )
            .await;
            return_freed_memory();
        });
        *self.started_notes.lock().expect("not poisoned") = Some(notes);
        let took = started_at.elapsed().as_secs_f64();
        let line =
            format!("started: {n} domain(s) up in {took:.2}s; watching for spot interruptions");
        tracing::info!("{line}");
        systemd::ready(&line);

        loop {
            let Some(observation) = watcher.next(&self.signals.stop, false).await else {
                tracing::info!("signal received: stopping");
                let stopping = state.next(Input::Signal).expect("started → stopping");
                return self.finish(stopping, runs, None, None).await;
            };
            if observation.is_final() {
                return self.end_by(state, observation, runs).await;
            }
            state = state
                .next(Input::News)
                .expect("news keeps the daemon started");
            // The news hooks run while the watch goes on: a notice or a signal
            // that comes meanwhile cuts them short and takes over.
            let news_hurry = self.signals.hurry.child_token();
            let mut news = Box::pin(self.news(&runs, observation, news_hurry.clone()));
            let overtaken = tokio::select! {
                _ = &mut news => None,
                o = watcher.next(&self.signals.stop, true) => Some(o),
            };
            if overtaken.is_some() {
                news_hurry.cancel();
                news.as_mut().await;
            }
            drop(news);
            if let Some(o) = overtaken {
                return match o {
                    Some(o) => self.end_by(state, o, runs).await,
                    None => {
                        let stopping = state.next(Input::Signal).expect("started → stopping");
                        self.finish(stopping, runs, None, None).await
                    }
                };
            }
        }
    }

    /// A rebalance recommendation or scheduled maintenance: its hooks and
    /// notifications, then back to watching.
    async fn news(&self, runs: &[DomainRun], observation: Observation, hurry: CancellationToken) {
        let (event, detail) = match &observation {
            Observation::Rebalance(time) => {
                (Event::Rebalance, format!("rebalance recommended at {time}"))
            }
            Observation::Maintenance(events) => (
                Event::Maintenance,
                format!("maintenance scheduled: {events}"),
            ),
            _ => unreachable!("final observations end the watch"),
        };
        tracing::warn!("{detail}");
        systemd::status(&format!("{event}: running hooks; still watching"));
        let policy = Policy {
            hurry,
            ..Policy::new(OnFailure::Continue)
        };
        futures_util::future::join_all(runs.iter().map(|r| r.run_hooks(event, &policy))).await;
        futures_util::future::join_all(runs.iter().map(|r| r.notify(&self.shared, event, None)))
            .await;
        systemd::status("watching for spot interruptions");
    }

    /// A spot notice or an Auto Scaling termination: the last phase, within
    /// the time it leaves.
    async fn end_by(
        &self,
        state: State,
        observation: Observation,
        mut runs: Vec<DomainRun>,
    ) -> Outcome {
        let (input, deadline) = match &observation {
            Observation::Spot(n) => {
                tracing::warn!("spot interruption notice: {} at {}", n.action, n.time);
                for run in &mut runs {
                    run.values.set("interrupt_action", n.action.clone());
                    run.values.set("interrupt_time", n.time.clone());
                }
                let at = humantime::parse_rfc3339_weak(&n.time).unwrap_or_else(|_| {
                    tracing::warn!(
                        "the notice's time {:?} does not parse; assuming two minutes",
                        n.time
                    );
                    SystemTime::now() + SPOT_WARNING
                });
                (Input::Notice, at)
            }
            Observation::Terminating => {
                tracing::warn!("Auto Scaling is terminating this instance");
                (Input::Termination, SystemTime::now() + TERMINATION_BUDGET)
            }
            _ => unreachable!("only final observations end the instance"),
        };
        let next = state
            .next(input)
            .expect("a notice or termination ends starting and started");
        self.finish(next, runs, None, Some(deadline)).await
    }

    fn fresh_runs(&self) -> Vec<DomainRun> {
        self.config
            .domains
            .iter()
            .map(|d| DomainRun::new(&self.shared, d.clone()))
            .collect()
    }

    /// Every domain in parallel. Returns every domain's run (so that the
    /// `failed` hooks see what was attached) and what failed, by domain.
    async fn bring_up_all(&self) -> (Vec<DomainRun>, Option<anyhow::Error>) {
        let mut set = JoinSet::new();
        for (i, domain) in self.config.domains.iter().enumerate() {
            let shared = self.shared.clone();
            let mut run = DomainRun::new(&shared, domain.clone());
            set.spawn(async move {
                let r = run.bring_up(&shared).await;
                (i, run, r)
            });
        }
        let mut done = Vec::new();
        let mut errors = Vec::new();
        while let Some(joined) = set.join_next().await {
            let (i, run, result) = match joined {
                Ok(done) => done,
                Err(e) => {
                    errors.push(format!("a domain's task ended abnormally: {e}"));
                    continue;
                }
            };
            if let Err(e) = result {
                tracing::error!("[{}] bring-up failed: {e:#}", run.domain.name);
                errors.push(format!("domain {:?}: {e:#}", run.domain.name));
            }
            done.push((i, run));
        }
        done.sort_by_key(|(i, _)| *i);
        let runs = done.into_iter().map(|(_, r)| r).collect();
        if errors.is_empty() {
            return (runs, None);
        }
        errors.sort();
        (runs, Some(anyhow!("{}", errors.join("; "))))
    }

    /// Runs a phase of init under the init deadline, giving way to a signal
    /// and to a spot notice or termination (whose deadline matters more).
    async fn guarded<T>(
        &self,
        phase: impl std::future::Future<Output = T>,
        deadline: Option<tokio::time::Instant>,
        watcher: &mut Watcher,
    ) -> Phase<T> {
        let timed = async {
            match deadline {
                Some(d) => match tokio::time::timeout_at(d, phase).await {
                    Ok(v) => Phase::Done(v),
                    Err(_) => Phase::TimedOut(anyhow!(
                        "init did not finish within the timeout of {}s",
                        self.config.timeout.unwrap_or_default().as_secs_f64()
                    )),
                },
                None => Phase::Done(phase.await),
            }
        };
        let ended = async {
            match watcher.next(&self.signals.stop, true).await {
                Some(o) => o,
                // A stop: the branch below answers it.
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            p = timed => p,
            _ = self.signals.stop.cancelled() => Phase::Stopped,
            o = ended => {
                tracing::warn!("a notice arrived during init: cancelling init");
                Phase::Ended(o)
            }
        }
    }

    /// After an init cut short by its timeout: undo what the domains still
    /// held uncommitted (their volumes carry this run's transaction mark).
    async fn roll_back_init(&self) {
        match self.sweep(true).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!("init timed out: rolled back {n} volume(s)"),
            Err(e) => tracing::error!("init timed out; rolling back: {e:#}"),
        }
        self.restore_records(self.shared.take_records(None), "init timed out")
            .await;
    }

    /// Fresh runs that still hold the records an init cut short had set.
    fn runs_after_cut(&self) -> Vec<DomainRun> {
        let mut runs = self.fresh_runs();
        for run in &mut runs {
            run.records = self.shared.take_records(Some(&run.domain.name));
        }
        runs
    }

    /// Every domain's records back to what they held before this instance.
    async fn put_back_records(&self, runs: &mut [DomainRun]) {
        let placed: Vec<_> = runs
            .iter_mut()
            .flat_map(|r| std::mem::take(&mut r.records))
            .collect();
        self.shared.take_records(None);
        self.restore_records(placed, "started hooks failed").await;
    }

    async fn restore_records(&self, placed: Vec<dns::Placed>, why: &str) {
        if placed.is_empty() {
            return;
        }
        match dns::restore(&self.shared.clients.route53, &placed).await {
            Ok(names) => tracing::warn!("{why}: put back {}", names.join(", ")),
            Err(e) => tracing::error!("{why}; putting records back: {e:#}"),
        }
    }

    /// Undoes uncommitted volume work: this run's (`current`), or what
    /// earlier runs of this daemon left.
    async fn sweep(&self, current: bool) -> Result<usize> {
        let s = &self.shared;
        volumes::sweep(
            &s.clients.ec2,
            &s.facts,
            &s.device_root,
            &s.transaction_id,
            current,
        )
        .await
    }

    /// `started` hooks of every domain in parallel.
    async fn started(&self, runs: &mut [DomainRun]) -> Result<()> {
        let policy = &Policy::new(OnFailure::Stop);
        let results = futures_util::future::join_all(runs.iter_mut().map(|r| async move {
            let since = Instant::now();
            let result = r.run_hooks(Event::Started, policy).await;
            r.record_time("started-hooks", since);
            result
        }))
        .await;
        let errors: Vec<String> = runs
            .iter()
            .zip(results)
            .filter_map(|(r, res)| {
                res.err()
                    .map(|f| format!("domain {:?}: {}", r.domain.name, f.join("; ")))
            })
            .collect();
        if !errors.is_empty() {
            return Err(anyhow!("started hooks failed: {}", errors.join("; ")));
        }
        Ok(())
    }

    /// The last phase: hooks of the final state in every domain (sharing
    /// the time until `deadline`, less the reserve), releases, then
    /// notifications.
    async fn finish(
        &self,
        state: State,
        mut runs: Vec<DomainRun>,
        error: Option<anyhow::Error>,
        deadline: Option<SystemTime>,
    ) -> Outcome {
        debug_assert!(state.is_final());
        let event = state.event();
        let error_text = error.as_ref().map(|e| format!("{e:#}")).unwrap_or_default();
        for run in &mut runs {
            run.values.set("error", error_text.clone());
            if error.is_some() && !run.errors.iter().any(|e| error_text.contains(e.as_str())) {
                run.errors.push(error_text.clone());
            }
        }
        let hooks_until = deadline.map(|d| {
            let left = d.duration_since(SystemTime::now()).unwrap_or_default();
            let budget = left.saturating_sub(self.options.shutdown_reserve);
            tracing::info!(
                "{event}: {:.0}s until the deadline; hooks get {:.0}s, {:.0}s kept for releasing and reporting",
                left.as_secs_f64(),
                budget.as_secs_f64(),
                self.options.shutdown_reserve.as_secs_f64()
            );
            tokio::time::Instant::now() + budget
        });
        let line = match &error {
            Some(e) => format!("{event}: {e:#}"),
            None => format!("{event}: running hooks"),
        };
        systemd::stopping(&line);
        tracing::info!("{line}");
        let policy = Policy {
            deadline: hooks_until,
            hurry: self.signals.hurry.clone(),
            ..Policy::new(OnFailure::Continue)
        };
        // Each domain: its hooks, then (if they succeeded) the volumes it
        // was asked to release at this event.
        let shared = &self.shared;
        let policy = &policy;
        let results = futures_util::future::join_all(runs.iter_mut().map(|r| async move {
            // A domain that failed ran its failed hooks before its rollback.
            if event == Event::Failed && r.failed_hooks_ran {
                return Ok(());
            }
            let since = Instant::now();
            let result = r.run_hooks(event, policy).await;
            r.record_time(&format!("{event}-hooks"), since);
            if let Err(failures) = &result {
                r.errors.extend(failures.iter().cloned());
            }
            let since = Instant::now();
            r.release_for(shared, event, result.is_ok()).await;
            r.delete_records_for(shared, event).await;
            r.record_time("release", since);
            result
        }))
        .await;
        let failed_hooks: usize = results
            .iter()
            .map(|r| r.as_ref().err().map_or(0, Vec::len))
            .sum();
        // Notifications end by the deadline: the instance may be gone after.
        let until = deadline.map(|d| {
            tokio::time::Instant::now() + d.duration_since(SystemTime::now()).unwrap_or_default()
        });
        // `started` before this event, for whoever reads them in order.
        self.settle_started_notes(until).await;
        futures_util::future::join_all(runs.iter().map(|r| r.notify(&self.shared, event, until)))
            .await;
        if failed_hooks > 0 {
            tracing::warn!("{event}: {failed_hooks} hook(s) failed");
        }
        match error {
            Some(e) => Outcome::Failed(e),
            None => {
                tracing::info!("{event}: done");
                Outcome::Clean(state)
            }
        }
    }

    /// `started` notifications still being retried get a short grace (at
    /// most until `until`), then are given up: the daemon is about to exit.
    async fn settle_started_notes(&self, until: Option<tokio::time::Instant>) {
        let Some(mut notes) = self.started_notes.lock().expect("not poisoned").take() else {
            return;
        };
        let grace = tokio::time::Instant::now() + STARTED_NOTES_GRACE;
        let until = until.map_or(grace, |u| u.min(grace));
        if tokio::time::timeout_at(until, &mut notes).await.is_err() {
            notes.abort();
            tracing::warn!("started notifications still being retried: given up");
        }
    }

    fn set_hostname(&self, runs: &[DomainRun]) {
        let Some(template) = &self.config.hostname else {
            return;
        };
        // Instance-wide: rendered with the first domain's values, as before.
        let values = runs
            .first()
            .map_or_else(|| self.shared.base_values.clone(), |r| r.values.clone());
        let name = template.render(&values);
        if !self.options.set_hostname {
            tracing::info!("hostname would be {name:?}; left unchanged (--keep-hostname)");
            return;
        }
        match nix::unistd::sethostname(&name) {
            Ok(()) => tracing::info!("hostname set to {name:?}"),
            // Not critical, as in the Python daemon: the application still runs.
            Err(e) => tracing::error!("setting the hostname to {name:?} failed: {e}"),
        }
    }
}

/// Bring-up is over: gives the heap it freed back to the system, so that
/// the daemon watches for hours at its steady size rather than at the peak
/// of bring-up (glibc keeps freed memory in each thread's arena otherwise).
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of the allocator's own
    // arenas; it takes no pointers and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn base_values(facts: &InstanceFacts, transaction_id: &str) -> MacroValues {
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
async fn read_user_data_config(imds: &ImdsClient) -> Result<Result<Config, ConfigErrors>> {
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
    match String::from_utf8(data) {
        Ok(text) => Ok(Config::from_text("user data", &text)),
        Err(_) => bad("the user data is neither UTF-8 text nor gzip of it"),
    }
}

/// SIGTERM and SIGINT: the first stops the daemon (`stopping`), the next
/// hurries it (running hooks get SIGTERM now).
struct Signals {
    stop: CancellationToken,
    hurry: CancellationToken,
}

impl Signals {
    fn listen() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let signals = Signals {
            stop: CancellationToken::new(),
            hurry: CancellationToken::new(),
        };
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot listen for SIGTERM/SIGINT");
            return signals;
        };
        let (stop, hurry) = (signals.stop.clone(), signals.hurry.clone());
        tokio::spawn(async move {
            for token in [stop, hurry] {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM"),
                    _ = int.recv() => tracing::info!("SIGINT"),
                }
                if token.is_cancelled() {
                    continue;
                }
                token.cancel();
            }
            tracing::warn!("second signal: hurrying the hooks");
        });
        signals
    }
}

//! The daemon's loop: one match on the [`State`], each phase returning the
//! [`Input`] (and its cause) that moves the daemon on, until a final state
//! runs its hooks, releases what the domains hold and reports.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::anyhow;
use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::domain::{DomainRun, Shared};
use super::signals::Signals;
use super::{return_freed_memory, Input, Options, Outcome, State};
use crate::autoscaling::{self, Found, Outcome as ActionResult};
use crate::config::{Config, Event, IdleAction, Probe};
use crate::hooks::{OnFailure, Policy};
use crate::imds::{ImdsClient, Observation, Watcher};
use crate::status::{self, Control};
use crate::systemd;
use crate::volumes;
use tokio::sync::mpsc;

/// The warning a spot notice gives, assumed when its time does not parse.
const SPOT_WARNING: Duration = Duration::from_secs(120);
/// How long the end waits for the Auto Scaling look still under way.
const LOOK_WAIT: Duration = Duration::from_secs(10);
/// How long the end waits for a launch hook's completion still under way.
const LAUNCH_COMPLETION_GRACE: Duration = Duration::from_secs(10);
/// How long the end waits for `started` notifications still being retried.
const STARTED_NOTES_GRACE: Duration = Duration::from_secs(10);
/// How long a periodic snapshot under way may take to finish at the end.
const PERIODIC_GRACE: Duration = Duration::from_secs(10);
/// Until a domain's first count, its probe runs at least this often.
const FIRST_PROBE_EVERY: Duration = Duration::from_secs(1);
/// How often a domain still waiting for its first count says so.
const NOT_READY_EVERY: Duration = Duration::from_secs(30);
/// The least time between two `status` notifications (changes between
/// them are sent together).
const STATUS_NOTES_EVERY: Duration = Duration::from_secs(5);
/// How often idleness is looked at.
const IDLE_LOOK_EVERY: Duration = Duration::from_secs(1);
/// How long idle notifications may take before an idle end goes on.
const IDLE_NOTES_LIMIT: Duration = Duration::from_secs(10);
/// How long, after leaving the group, the termination hook's action may
/// take to appear for its completion.
const LEFT_GROUP_COMPLETION: Duration = Duration::from_secs(30);

/// The Auto Scaling look started with the daemon, awaited where needed.
pub(super) type GroupLook = futures_util::future::Shared<BoxFuture<'static, Found>>;

/// The `snapshot.every` tasks, and the switch that stops them.
type Periodic = (
    tokio::sync::watch::Sender<bool>,
    Vec<(DomainRun, usize, JoinHandle<()>)>,
);

/// How a phase ended: the input, and what caused it.
struct Step {
    input: Input,
    error: Option<anyhow::Error>,
    /// Why init failed, for the log lines of the way out.
    why: &'static str,
    observation: Option<Observation>,
}

impl Step {
    fn of(input: Input) -> Step {
        Step {
            input,
            error: None,
            why: "",
            observation: None,
        }
    }

    fn failed(why: &'static str, error: anyhow::Error) -> Step {
        Step {
            error: Some(error),
            why,
            ..Step::of(Input::InitFailed)
        }
    }

    /// A spot notice or a termination.
    fn observed(o: Observation) -> Step {
        let input = match o {
            Observation::Spot(_) => Input::Notice,
            Observation::Terminating => Input::Termination,
            _ => unreachable!("only final observations end a phase"),
        };
        Step {
            observation: Some(o),
            ..Step::of(input)
        }
    }
}

/// What woke the watch.
enum Woke {
    /// IMDS told something, or (`None`) a signal came.
    Observed(Option<Observation>),
    Control(Control),
    /// The idle watch: why the instance is idle.
    Idle(String),
}

/// How a guarded phase of init ended.
enum Phase<T> {
    Done(T),
    TimedOut(anyhow::Error),
    Stopped,
    /// A spot notice or a termination arrived first.
    Ended(Observation),
}

impl<T> Phase<T> {
    /// The step for an init phase cut short.
    fn cut(self) -> Result<T, Step> {
        match self {
            Phase::Done(v) => Ok(v),
            Phase::TimedOut(e) => Err(Step::failed("init timed out", e)),
            Phase::Stopped => Err(Step::of(Input::Signal)),
            Phase::Ended(o) => Err(Step::observed(o)),
        }
    }
}

pub(super) struct Daemon {
    config: Config,
    shared: Arc<Shared>,
    options: Options,
    imds: Arc<ImdsClient>,
    signals: Signals,
    /// Every domain, with its record; bring-up works on clones that share
    /// the record, so that what a cancelled bring-up did is known here.
    runs: Vec<DomainRun>,
    /// The `started` notifications, sent while the watch runs.
    started_notes: Mutex<Option<JoinHandle<()>>>,
    /// Rebalance and maintenance notifications, sent while the watch runs.
    news_notes: Mutex<Vec<(Event, JoinHandle<()>)>>,
    /// `snapshot.every` tasks while the watch runs, and what stops them.
    periodic: Mutex<Option<Periodic>>,
    /// The instance's Auto Scaling group and hooks.
    group: GroupLook,
    /// The launch hook's completion, sent after READY.
    launch_completion: Mutex<Option<JoinHandle<()>>>,
    /// Drain and undrain requests from the status socket.
    controls: tokio::sync::Mutex<mpsc::UnboundedReceiver<Control>>,
    /// Idleness, told by the idle watch (why the instance is idle).
    idle_fires: tokio::sync::Mutex<Option<mpsc::Receiver<String>>>,
    /// The probes, the idle watch and the `status` notifications: stopped
    /// when the end begins.
    background: Mutex<Vec<JoinHandle<()>>>,
    /// The `ready` notifications, sent while the watch runs.
    ready_notes: Mutex<Option<JoinHandle<()>>>,
    /// Set when the daemon ends for idleness: what it does after.
    idle_end: Mutex<Option<IdleAction>>,
}

/// What moves the daemon from outside, besides IMDS: signals, and the
/// requests of the status socket.
pub(super) struct Inputs {
    pub signals: Signals,
    pub controls: mpsc::UnboundedReceiver<Control>,
}

impl Daemon {
    pub fn new(
        config: Config,
        shared: Arc<Shared>,
        options: Options,
        imds: Arc<ImdsClient>,
        inputs: Inputs,
        runs: Vec<DomainRun>,
        group: GroupLook,
    ) -> Daemon {
        let Inputs { signals, controls } = inputs;
        Daemon {
            config,
            shared,
            options,
            imds,
            signals,
            runs,
            started_notes: Mutex::default(),
            news_notes: Mutex::default(),
            periodic: Mutex::default(),
            group,
            launch_completion: Mutex::default(),
            controls: tokio::sync::Mutex::new(controls),
            idle_fires: tokio::sync::Mutex::default(),
            background: Mutex::default(),
            ready_notes: Mutex::default(),
            idle_end: Mutex::default(),
        }
    }

    pub async fn live(self) -> Outcome {
        let started_at = Instant::now();
        let n = self.config.domains.len();
        systemd::status(&format!("starting: bringing up {n} domain(s)"));
        tracing::info!("starting: bringing up {n} domain(s)");
        // `timeout` covers bring-up and the started hooks.
        let deadline = self.config.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut watcher = Watcher::new(self.imds.clone(), self.options.poll_interval);
        let mut state = State::Starting;
        loop {
            let step = match state {
                State::Starting => self.bring_up(deadline, &mut watcher).await,
                State::Started => {
                    self.start_applications(deadline, &mut watcher, started_at)
                        .await
                }
                State::Watching => self.watch(&mut watcher).await,
                State::Failed | State::Stopping | State::Interrupted | State::Terminating => {
                    unreachable!("a final state ends the loop")
                }
            };
            let next = state
                .next(step.input)
                .unwrap_or_else(|| unreachable!("{:?} does not happen in {state:?}", step.input));
            if next.is_final() {
                return self.finish(next, step, state == State::Starting).await;
            }
            state = next;
        }
    }

    /// `Starting`: every domain in parallel, after cleaning up what an
    /// earlier run left. A bring-up cut short (timeout, notice, signal) is
    /// cancelled — its hooks' process groups go with it — before anything
    /// reads the record of what it did.
    async fn bring_up(
        &self,
        deadline: Option<tokio::time::Instant>,
        watcher: &mut Watcher,
    ) -> Step {
        // A config without volumes has none to clean up (and needs no EC2
        // permission at all).
        let has_volumes = self.config.domains.iter().any(|d| !d.volumes.is_empty());
        let mut tasks = JoinSet::new();
        let all = {
            let tasks = &mut tasks;
            async move {
                if has_volumes {
                    let s = &self.shared;
                    match volumes::sweep(
                        &s.clients.ec2,
                        &s.facts,
                        &s.device_root,
                        &s.transaction_id,
                    )
                    .await
                    {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::info!("cleaned up {n} volume(s) left by an interrupted run")
                        }
                        // Bring-up still tries: what it needs may be unaffected.
                        Err(e) => tracing::error!("cleaning up after an interrupted run: {e:#}"),
                    }
                }
                for (i, run) in self.runs.iter().enumerate() {
                    let (shared, run) = (self.shared.clone(), run.clone());
                    tasks.spawn(async move { (i, run.bring_up(&shared).await) });
                }
                // The first domain that fails fails the daemon: the others
                // are cancelled, and every domain unwinds on the way out.
                while let Some(joined) = tasks.join_next().await {
                    match joined {
                        Ok((_, Ok(()))) => {}
                        Ok((i, Err(e))) => {
                            let name = &self.runs[i].domain.name;
                            tracing::error!("[{name}] bring-up failed: {e:#}");
                            if !tasks.is_empty() {
                                tracing::warn!(
                                    "cancelling the bring-up of the other domain(s): the daemon fails"
                                );
                            }
                            return Err(anyhow!("domain {name:?}: {e:#}"));
                        }
                        Err(e) => return Err(anyhow!("a domain's task ended abnormally: {e}")),
                    }
                }
                Ok(())
            }
        };
        let phase = self.guarded(all, deadline, watcher).await;
        tasks.shutdown().await;
        match phase.cut() {
            Ok(Ok(())) => {
                self.set_hostname();
                Step::of(Input::BroughtUp)
            }
            Ok(Err(e)) => Step::failed("bring-up failed", e),
            Err(step) => step,
        }
    }

    /// `Started`: the `started` hooks of every domain; then READY, and the
    /// `started` notifications go out while the watch begins (a slow or
    /// unreachable endpoint holds neither READY nor the watch).
    async fn start_applications(
        &self,
        deadline: Option<tokio::time::Instant>,
        watcher: &mut Watcher,
        started_at: Instant,
    ) -> Step {
        match self
            .guarded(self.started_hooks(), deadline, watcher)
            .await
            .cut()
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Step::failed("started hooks failed", e),
            Err(step) => return step,
        }
        let took = started_at.elapsed().as_secs_f64();
        for r in &self.runs {
            r.ledger.milestone("started-hooks");
            self.shared.board.set_phase(r.index, "started");
        }
        let notes = self.notify_all(Event::Started);
        *self.started_notes.lock().expect("not poisoned") = Some(notes);
        let counted = self.runs.iter().any(|r| r.domain.players.is_some());
        if counted {
            tracing::info!(
                "started: {} domain(s) up in {took:.2}s; waiting for the players probes",
                self.runs.len()
            );
            systemd::status("started: waiting for the players probes");
        }
        self.start_probes();
        match self
            .guarded(self.all_ready(), deadline, watcher)
            .await
            .cut()
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Step::failed("ready failed", e),
            Err(step) => return step,
        }
        let ready = if counted {
            format!(", ready in {:.2}s", started_at.elapsed().as_secs_f64())
        } else {
            String::new()
        };
        let line = format!(
            "started: {} domain(s) up in {took:.2}s{ready}; watching for spot interruptions",
            self.runs.len()
        );
        tracing::info!("{line}");
        systemd::ready(&line);
        let (shared, runs) = (self.shared.clone(), self.runs.clone());
        let notes = tokio::spawn(async move {
            notify_every(&shared, &runs, Event::Ready).await;
            // Bring-up is over: the watch runs at the steady size.
            return_freed_memory();
        });
        *self.ready_notes.lock().expect("not poisoned") = Some(notes);
        self.complete_launch();
        self.start_periodic_snapshots();
        self.start_idle_watch();
        self.start_status_notes();
        Step::of(Input::InitDone)
    }

    /// Every domain's notifications for `event`, in the background.
    fn notify_all(&self, event: Event) -> JoinHandle<()> {
        let (shared, runs) = (self.shared.clone(), self.runs.clone());
        tokio::spawn(async move { notify_every(&shared, &runs, event).await })
    }

    /// A task for each domain with a players probe: until its first count
    /// every second, then every `players.every`, each result on the board.
    fn start_probes(&self) {
        let mut tasks = Vec::new();
        for r in &self.runs {
            let Some(spec) = r.domain.players.clone() else {
                continue;
            };
            if matches!(spec.probe, Probe::Push) {
                continue;
            }
            let board = self.shared.board.clone();
            let values = r.values_for(Event::Ready, &r.ledger.snapshot(), None);
            let (index, name) = (r.index, r.domain.name.clone());
            tasks.push(tokio::spawn(async move {
                let mut last_error: Option<String> = None;
                let mut known = false;
                loop {
                    let result = crate::players::probe(&spec, &values).await;
                    match &result {
                        Ok(_) => {
                            if known && last_error.is_some() {
                                tracing::info!("[{name}] players probe answers again");
                            }
                            known = true;
                            last_error = None;
                        }
                        // Before the first count a failure is the world
                        // still loading; after it, said once.
                        Err(e) if known && last_error.as_ref() != Some(e) => {
                            tracing::warn!(
                                "[{name}] players probe ({}): {e}; the count is unknown",
                                spec.probe.name()
                            );
                            last_error = Some(e.clone());
                        }
                        Err(e) => last_error = Some(e.clone()),
                    }
                    board.counted(index, result);
                    let wait = if known {
                        spec.every
                    } else {
                        spec.every.min(FIRST_PROBE_EVERY)
                    };
                    tokio::time::sleep(wait).await;
                }
            }));
        }
        self.background.lock().expect("not poisoned").extend(tasks);
    }

    /// Every domain ready: its first count (within `ready-timeout`), then
    /// its `ready` hooks; the first failure fails the daemon at once (the
    /// other domains' waits and hooks are cancelled).
    async fn all_ready(&self) -> anyhow::Result<()> {
        futures_util::future::try_join_all(self.runs.iter().map(|r| async move {
            self.ready(r).await.map_err(|e| {
                r.ledger.error(e.clone());
                tracing::error!("[{}] {e}", r.domain.name);
                anyhow!("domain {:?}: {e}", r.domain.name)
            })
        }))
        .await
        .map(|_| ())
    }

    async fn ready(&self, r: &DomainRun) -> Result<(), String> {
        let since = Instant::now();
        let name = &r.domain.name;
        let board = &self.shared.board;
        if let Some(spec) = &r.domain.players {
            let first = async {
                let mut counts = board.counts();
                let mut said = Instant::now();
                loop {
                    if let Some(Ok(c)) = board.count_of(r.index) {
                        return c;
                    }
                    if said.elapsed() >= NOT_READY_EVERY {
                        said = Instant::now();
                        let why = last_error(board, r.index).unwrap_or("no count yet".into());
                        tracing::info!(
                            "[{name}] not ready after {:.0}s: {} probe: {why}",
                            since.elapsed().as_secs_f64(),
                            spec.probe.name()
                        );
                    }
                    let _ = tokio::time::timeout(NOT_READY_EVERY, counts.changed()).await;
                }
            };
            let count = match r.domain.ready_timeout {
                None => first.await,
                Some(limit) => match tokio::time::timeout(limit, first).await {
                    Ok(c) => c,
                    Err(_) => {
                        let why = last_error(board, r.index)
                            .map(|e| format!(": the last probe said {e}"))
                            .unwrap_or_default();
                        return Err(format!(
                            "no players count within the ready-timeout of {}s{why}",
                            limit.as_secs_f64()
                        ));
                    }
                },
            };
            tracing::info!(
                "[{name}] ready in {:.2}s: {} player(s) online{}",
                since.elapsed().as_secs_f64(),
                count.online,
                count.max.map(|m| format!(" of {m}")).unwrap_or_default()
            );
        }
        r.time("ready", since);
        let hooks = r
            .run_hooks(Event::Ready, &Policy::new(OnFailure::Stop))
            .await;
        hooks.map_err(|f| format!("ready hooks failed: {}", f.join("; ")))?;
        r.ledger.milestone("ready");
        board.set_ready(r.index);
        Ok(())
    }

    /// With `idle`: a task that tells the watch when the instance is idle
    /// (no player for `after`, or `after-start` if none came), or, draining
    /// with an action that ends the daemon, when it is ready to close. Told
    /// once per idle spell.
    fn start_idle_watch(&self) {
        let Some(spec) = self.config.idle.clone() else {
            return;
        };
        let (tx, rx) = mpsc::channel(1);
        if let Ok(mut fires) = self.idle_fires.try_lock() {
            *fires = Some(rx);
        }
        let board = self.shared.board.clone();
        let task = tokio::spawn(async move {
            let mut told = false;
            loop {
                tokio::time::sleep(IDLE_LOOK_EVERY).await;
                let (since, had_player) = board.idle();
                let after = if had_player {
                    spec.after
                } else {
                    spec.after_start
                };
                let idle_for = since.and_then(|t| t.elapsed().ok());
                let why = if idle_for.is_some_and(|d| d >= after) {
                    Some(format!(
                        "no player for {:.0}s{}",
                        after.as_secs_f64(),
                        if had_player { "" } else { " since ready" }
                    ))
                } else if spec.action != IdleAction::Notify && board.ready_to_close() {
                    Some("drained and no player left".to_string())
                } else {
                    None
                };
                match why {
                    Some(why) if !told => {
                        told = true;
                        if tx.send(why).await.is_err() {
                            return;
                        }
                    }
                    Some(_) => {}
                    None => told = false,
                }
            }
        });
        self.background.lock().expect("not poisoned").push(task);
    }

    /// `status` notifications on every change of state, readiness or free
    /// capacity, at most one per [`STATUS_NOTES_EVERY`] (the changes in
    /// between are sent together, as they stand).
    fn start_status_notes(&self) {
        let wanted = self
            .runs
            .iter()
            .any(|r| r.domain.notify.iter().any(|n| n.enabled_for(Event::Status)));
        if !wanted {
            return;
        }
        let (shared, runs) = (self.shared.clone(), self.runs.clone());
        let mut changes = shared.board.changes();
        let task = tokio::spawn(async move {
            let mut last: Option<tokio::time::Instant> = None;
            loop {
                if changes.changed().await.is_err() {
                    return;
                }
                if let Some(at) = last {
                    tokio::time::sleep_until(at + STATUS_NOTES_EVERY).await;
                }
                changes.borrow_and_update();
                last = Some(tokio::time::Instant::now());
                notify_every(&shared, &runs, Event::Status).await;
            }
        });
        self.background.lock().expect("not poisoned").push(task);
    }

    /// What the Auto Scaling look found, waiting for it at most `LOOK_WAIT`.
    async fn found(&self) -> Found {
        tokio::time::timeout(LOOK_WAIT, self.group.clone())
            .await
            .unwrap_or_else(|_| {
                Found::Unknown(format!(
                    "the look did not finish within {}s",
                    LOOK_WAIT.as_secs()
                ))
            })
    }

    /// After READY: the launch hook is completed with CONTINUE, so that
    /// Auto Scaling puts the instance in service (in the background: the
    /// watch begins meanwhile).
    fn complete_launch(&self) {
        let (group, shared) = (self.group.clone(), self.shared.clone());
        let task = tokio::spawn(async move {
            let found = group.await;
            let Some((group, hook)) = found.launch() else {
                return;
            };
            let why = "every domain is up";
            complete_action(&shared, group, hook, ActionResult::Continue, why).await;
        });
        *self.launch_completion.lock().expect("not poisoned") = Some(task);
    }

    /// A task for each volume with `snapshot.every`.
    fn start_periodic_snapshots(&self) {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for run in &self.runs {
            for (spec, v) in run.domain.volumes.iter().enumerate() {
                if v.snapshot.as_ref().and_then(|s| s.every).is_none() {
                    continue;
                }
                let (shared, task_run, stopped) =
                    (self.shared.clone(), run.clone(), stopped.clone());
                let task = tokio::spawn(async move {
                    task_run.periodic_snapshots(&shared, spec, stopped).await;
                });
                tasks.push((run.clone(), spec, task));
            }
        }
        if !tasks.is_empty() {
            *self.periodic.lock().expect("not poisoned") = Some((stop, tasks));
        }
    }

    /// Stops the periodic snapshots: one under way may finish (its
    /// `snapshot-end` hooks thaw what `snapshot-begin` froze) for up to
    /// `PERIODIC_GRACE`; then it is cut.
    async fn stop_periodic_snapshots(&self) {
        let Some((stop, tasks)) = self.periodic.lock().expect("not poisoned").take() else {
            return;
        };
        let _ = stop.send(true);
        let until = tokio::time::Instant::now() + PERIODIC_GRACE;
        let ends = tasks.into_iter().map(|(run, spec, mut task)| async move {
            if tokio::time::timeout_at(until, &mut task).await.is_err() {
                task.abort();
                tracing::warn!(
                    "[{}] a periodic snapshot of {} did not finish within {}s: cut; its snapshot-end hooks run now",
                    run.domain.name,
                    run.domain.volumes[spec].device,
                    PERIODIC_GRACE.as_secs()
                );
                // What snapshot-begin froze must not stay frozen for the
                // hooks that unmount.
                run.thaw(spec).await;
            }
        });
        futures_util::future::join_all(ends).await;
    }

    /// `started` hooks of every domain in parallel.
    async fn started_hooks(&self) -> anyhow::Result<()> {
        let policy = &Policy::new(OnFailure::Stop);
        let results = futures_util::future::join_all(self.runs.iter().map(|r| async move {
            let since = Instant::now();
            let result = r.run_hooks(Event::Started, policy).await;
            r.time("started-hooks", since);
            result
        }))
        .await;
        let errors: Vec<String> = self
            .runs
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

    /// `Watching`: the next thing IMDS, a signal, the status socket (drain,
    /// undrain) or the idle watch tells. News runs its hooks while the
    /// watch goes on: a notice or a signal that comes meanwhile cuts them
    /// short and takes over at once; news notifications go out in the
    /// background and never hold a notice up.
    async fn watch(&self, watcher: &mut Watcher) -> Step {
        let woke = {
            let mut controls = self.controls.lock().await;
            let mut idle = self.idle_fires.lock().await;
            let idle_fired = async {
                match idle.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                o = watcher.next(&self.signals.stop, false) => Woke::Observed(o),
                Some(c) = controls.recv() => Woke::Control(c),
                Some(why) = idle_fired => Woke::Idle(why),
            }
        };
        let observation = match woke {
            Woke::Observed(Some(o)) => o,
            Woke::Observed(None) => {
                tracing::info!("signal received: stopping");
                return Step::of(Input::Signal);
            }
            Woke::Control(Control::Drain) => {
                let detail = "drain requested: no new players should come";
                return self.news(watcher, Event::Draining, detail).await;
            }
            Woke::Control(Control::Undrain) => {
                tracing::info!("undrained: players may come again");
                return Step::of(Input::News);
            }
            Woke::Idle(why) => return self.idle(watcher, &why).await,
        };
        if observation.is_final() {
            return Step::observed(observation);
        }
        let (event, detail) = match &observation {
            Observation::Rebalance(time) => {
                self.shared.board.set_notice("rebalance", None);
                (Event::Rebalance, format!("rebalance recommended at {time}"))
            }
            Observation::Maintenance(events) => (
                Event::Maintenance,
                format!("maintenance scheduled: {events}"),
            ),
            _ => unreachable!("final observations end the watch"),
        };
        self.news(watcher, event, &detail).await
    }

    /// News: `event`'s hooks, cut short by anything more urgent, then its
    /// notifications in the background; the watch goes on.
    async fn news(&self, watcher: &mut Watcher, event: Event, detail: &str) -> Step {
        tracing::warn!("{detail}");
        if let Some(step) = self.news_hooks(watcher, event).await {
            return step;
        }
        let notes = self.notify_all(event);
        let mut pending = self.news_notes.lock().expect("not poisoned");
        pending.retain(|(_, h)| !h.is_finished());
        pending.push((event, notes));
        systemd::status("watching for spot interruptions");
        Step::of(Input::News)
    }

    /// `event`'s hooks of every domain while the watch goes on; the step
    /// that cut them short, if something more urgent came.
    async fn news_hooks(&self, watcher: &mut Watcher, event: Event) -> Option<Step> {
        systemd::status(&format!("{event}: running hooks; still watching"));
        let hurry = self.signals.hurry.child_token();
        let policy = Policy {
            hurry: hurry.clone(),
            ..Policy::new(OnFailure::Continue)
        };
        let hooks =
            futures_util::future::join_all(self.runs.iter().map(|r| r.run_hooks(event, &policy)));
        tokio::pin!(hooks);
        let overtaken = tokio::select! {
            _ = &mut hooks => None,
            o = watcher.next(&self.signals.stop, true) => Some(o),
        };
        let o = overtaken?;
        tracing::warn!("{event}: its hooks are cut short: something more urgent came");
        hurry.cancel();
        hooks.await;
        Some(match o {
            Some(o) => Step::observed(o),
            None => Step::of(Input::Signal),
        })
    }

    /// The instance is idle: the `idle` hooks and notifications; then, by
    /// `idle.action`, the watch goes on (`notify`, or a group whose minimum
    /// keeps the instance) or the daemon ends as on a stop.
    async fn idle(&self, watcher: &mut Watcher, why: &str) -> Step {
        let Some(spec) = self.config.idle.clone() else {
            return Step::of(Input::News);
        };
        tracing::warn!("idle: {why} (idle.action {})", spec.action.name());
        if let Some(step) = self.news_hooks(watcher, Event::Idle).await {
            return step;
        }
        let mut action = spec.action;
        if action == IdleAction::Terminate {
            if let Some(kept) = self.kept_by_group().await {
                tracing::warn!("idle: the instance stays up: {kept}; only reporting");
                action = IdleAction::Notify;
            }
        }
        let notes = self.notify_all(Event::Idle);
        if action == IdleAction::Notify {
            let mut pending = self.news_notes.lock().expect("not poisoned");
            pending.retain(|(_, h)| !h.is_finished());
            pending.push((Event::Idle, notes));
            systemd::status("idle; watching for spot interruptions");
            return Step::of(Input::News);
        }
        // The idle notifications go before the end's.
        let mut notes = notes;
        if tokio::time::timeout(IDLE_NOTES_LIMIT, &mut notes)
            .await
            .is_err()
        {
            notes.abort();
            tracing::warn!("idle notifications not delivered yet: given up");
        }
        *self.idle_end.lock().expect("not poisoned") = Some(action);
        Step::of(Input::Idle)
    }

    /// Why the instance stays up rather than end for idleness: its Auto
    /// Scaling group's minimum size keeps it, or whether it is in a group
    /// (or the group's capacity) is unknown — shutting down would then
    /// only make the group launch a replacement.
    async fn kept_by_group(&self) -> Option<String> {
        let found = self.found().await;
        let group = match &found {
            Found::Unknown(why) => {
                return Some(format!("its Auto Scaling group is unknown ({why})"))
            }
            _ => found.group()?,
        };
        match autoscaling::capacity(&self.shared.clients.autoscaling, &group.name).await {
            Ok((min, desired)) => autoscaling::kept_by_minimum(min, desired)
                .map(|why| format!("{why} (group {})", group.name)),
            Err(e) => Some(format!(
                "the capacity of its group {} is unknown ({e})",
                group.name
            )),
        }
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

    /// The last phase: every domain's hooks for the final state (sharing
    /// the time until the deadline, less the reserve), its releases, then
    /// notifications by the deadline. A stop or a failure has the units'
    /// stop timeout; a notice that arrives meanwhile moves the deadline up.
    async fn finish(mut self, state: State, step: Step, cut_init: bool) -> Outcome {
        debug_assert!(state.is_final());
        let event = state.event();
        for task in self.background.lock().expect("not poisoned").drain(..) {
            task.abort();
        }
        let idle_end = *self.idle_end.lock().expect("not poisoned");
        self.give_up_news();
        self.stop_periodic_snapshots().await;
        // The hook this end completes: a termination's, or a failed launch's.
        let found = match state {
            State::Terminating | State::Failed => self.found().await,
            _ => Found::Off,
        };
        let action = match state {
            State::Terminating => found.termination(),
            State::Failed => found.launch(),
            _ => None,
        };
        let deadline = match &step.observation {
            Some(Observation::Spot(n)) => {
                tracing::warn!("spot interruption notice: {} at {}", n.action, n.time);
                for run in &mut self.runs {
                    run.values.set("interrupt_action", n.action.clone());
                    run.values.set("interrupt_time", n.time.clone());
                }
                notice_deadline(&n.time)
            }
            Some(Observation::Terminating) => {
                tracing::warn!("Auto Scaling is terminating this instance");
                match found.termination() {
                    Some((_, hook)) => {
                        tracing::info!(
                            "lifecycle hook {}: Auto Scaling waits up to {}s for the terminating hooks, kept waiting by a heartbeat every {:.0}s",
                            hook.name,
                            hook.global_timeout.as_secs(),
                            autoscaling::heartbeat_interval(hook).as_secs_f64()
                        );
                        // The action began up to a look at IMDS ago.
                        SystemTime::now()
                            + hook
                                .global_timeout
                                .saturating_sub(self.options.poll_interval)
                    }
                    None => {
                        tracing::warn!(
                            "Auto Scaling will not wait for the terminating hooks: {}; they get {}s",
                            found.why_no_termination_hook(),
                            self.options.termination_budget.as_secs()
                        );
                        SystemTime::now() + self.options.termination_budget
                    }
                }
            }
            _ => SystemTime::now() + self.options.stop_timeout,
        };
        let board = &self.shared.board;
        board.set_state(if state == State::Failed {
            status::State::Failed
        } else {
            status::State::Stopping
        });
        let kind = match (&step.observation, state, idle_end) {
            (Some(Observation::Spot(_)), _, _) => "spot-interruption",
            (Some(Observation::Terminating), _, _) => "termination",
            (_, State::Failed, _) => "failure",
            (_, _, Some(_)) => "idle",
            _ => "signal",
        };
        board.set_notice(kind, Some(deadline));
        for r in &self.runs {
            board.set_phase(r.index, event.name());
        }
        let error_text = step
            .error
            .as_ref()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        for run in &mut self.runs {
            run.values.set("error", error_text.clone());
            if step.error.is_some() {
                run.ledger.with(|h| {
                    if !h.errors.iter().any(|e| error_text.contains(e.as_str())) {
                        h.errors.push(error_text.clone());
                    }
                });
            }
        }
        let left = deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let reserve = self.options.shutdown_reserve;
        let (until, until_rx) = watch::channel(tokio::time::Instant::now() + left);
        let until = Arc::new(until);
        // A termination hook waits while heartbeats come; one refused for
        // good brings the deadline up to the hook's timeout.
        let heartbeats = match (state, action) {
            (State::Terminating, Some((group, hook))) => {
                let until = until.clone();
                Some(autoscaling::keep_alive(
                    self.shared.clients.autoscaling.clone(),
                    group.clone(),
                    hook.clone(),
                    self.shared.facts.instance_id.clone(),
                    move |left| move_up(&until, left, "the lifecycle action's timeout"),
                ))
            }
            _ => None,
        };
        let budget = left.saturating_sub(reserve);
        tracing::info!(
            "{event}: {:.0}s until the deadline; hooks get {:.0}s, {:.0}s kept for releasing and reporting",
            left.as_secs_f64(),
            budget.as_secs_f64(),
            reserve.as_secs_f64()
        );
        let line = match &step.error {
            Some(e) => format!("{event}: {e:#}"),
            None => format!("{event}: running hooks"),
        };
        systemd::stopping(&line);
        tracing::info!("{line}");
        let cut = self.signals.hurry.child_token();
        let cutter = cut_when_moved_up(until_rx.clone(), reserve, cut.clone());
        let notice_watch = matches!(state, State::Failed | State::Stopping | State::Terminating)
            .then(|| self.watch_during_end(state, until.clone()));
        let policy = Policy {
            deadline: Some(tokio::time::Instant::now() + budget),
            hurry: cut,
            ..Policy::new(OnFailure::Continue)
        };
        let shared = &self.shared;
        let policy = &policy;
        let results = futures_util::future::join_all(self.runs.iter().map(|r| {
            let until = until_rx.clone();
            async move {
                // The hooks that failed.
                let work = async {
                    if event == Event::Failed {
                        let (ok, failed) = r.unwind(shared, policy, step.why).await;
                        r.release_for(shared, event, ok).await;
                        failed
                    } else {
                        if cut_init {
                            r.adopt_leftovers(shared).await;
                        }
                        // An idle end keeps the records unless `delete-on`
                        // names `idle`.
                        let records_on = if idle_end.is_some() { Event::Idle } else { event };
                        r.end(shared, event, records_on, policy)
                            .await
                            .err()
                            .unwrap_or_default()
                    }
                };
                let failed = tokio::select! {
                    failed = work => failed,
                    _ = passed(until) => {
                        tracing::error!(
                            "[{}] {event}: the deadline passed before everything was released: given up",
                            r.domain.name
                        );
                        r.ledger.error("the deadline passed before everything was released");
                        vec!["the deadline passed before everything was released".to_string()]
                    }
                };
                failed
                    .into_iter()
                    .map(|f| format!("[{}] {f}", r.domain.name))
                    .collect::<Vec<_>>()
            }
        }))
        .await;
        if let Some(w) = notice_watch {
            w.abort();
        }
        cutter.abort();
        let failures: Vec<String> = results.into_iter().flatten().collect();
        // CONTINUE when the hooks succeeded; ABANDON when one failed (for a
        // termination) or init failed (for a launch).
        let decided = action.map(|(group, hook)| {
            let (result, why) = match (state, failures.is_empty()) {
                (State::Failed, _) => (ActionResult::Abandon, format!("init failed: {error_text}")),
                (_, true) => (
                    ActionResult::Continue,
                    format!("the {event} hooks succeeded"),
                ),
                (_, false) => (
                    ActionResult::Abandon,
                    format!("the {event} hooks failed: {}", failures.join("; ")),
                ),
            };
            (group, hook, result, why)
        });
        if let Some((group, hook, result, why)) = &decided {
            let noted = crate::notify::event::LifecycleAction {
                group: group.name.clone(),
                hook: hook.name.clone(),
                transition: if state == State::Failed {
                    autoscaling::LAUNCHING
                } else {
                    autoscaling::TERMINATING
                },
                result: result.as_str(),
                reason: why.clone(),
            };
            for run in &mut self.runs {
                run.lifecycle_action = Some(noted.clone());
            }
        }
        let until = Some(*until_rx.borrow());
        // `started` before this event, for whoever reads them in order.
        self.settle_started_notes(until).await;
        self.settle_ready_notes(until).await;
        futures_util::future::join_all(
            self.runs
                .iter()
                .map(|r| r.notify(&self.shared, event, until)),
        )
        .await;
        if let Some(h) = heartbeats {
            h.abort();
        }
        self.settle_launch_completion().await;
        if let Some((group, hook, result, why)) = &decided {
            complete_action(&self.shared, group, hook, *result, why).await;
        }
        if idle_end == Some(IdleAction::Terminate) {
            self.leave().await;
        }
        if !failures.is_empty() {
            tracing::warn!("{event}: {} hook(s) failed", failures.len());
        }
        match step.error {
            Some(e) => Outcome::Failed(e),
            None => {
                tracing::info!("{event}: done");
                Outcome::Clean(state)
            }
        }
    }

    /// While a stop, a failure or a termination with a lifecycle hook runs
    /// its hooks, IMDS is still watched: a spot notice (or, but in a
    /// termination, a termination) moves the deadline up.
    fn watch_during_end(
        &self,
        state: State,
        until: Arc<watch::Sender<tokio::time::Instant>>,
    ) -> JoinHandle<()> {
        let mut watcher = Watcher::new(self.imds.clone(), self.options.poll_interval);
        let termination_budget = self.options.termination_budget;
        let event = state.event();
        tokio::spawn(async move {
            let never = CancellationToken::new();
            loop {
                match watcher.next(&never, true).await {
                    Some(Observation::Spot(n)) => {
                        tracing::warn!(
                            "spot interruption notice during {event}: {} at {}",
                            n.action,
                            n.time
                        );
                        let left = notice_deadline(&n.time)
                            .duration_since(SystemTime::now())
                            .unwrap_or_default();
                        move_up(&until, left, "the spot notice");
                        return;
                    }
                    // The termination this end is for: IMDS keeps saying it.
                    Some(Observation::Terminating) if state == State::Terminating => {}
                    Some(Observation::Terminating) => {
                        tracing::warn!("Auto Scaling terminates this instance during {event}");
                        move_up(&until, termination_budget, "the termination");
                        return;
                    }
                    _ => return,
                }
            }
        })
    }

    /// News notifications still being retried are given up: a final event
    /// goes first.
    fn give_up_news(&self) {
        for (event, notes) in self.news_notes.lock().expect("not poisoned").drain(..) {
            if !notes.is_finished() {
                notes.abort();
                tracing::warn!("{event} notifications not delivered yet: given up");
            }
        }
    }

    /// The launch hook's completion, if still under way, gets a short grace.
    async fn settle_launch_completion(&self) {
        let Some(mut task) = self.launch_completion.lock().expect("not poisoned").take() else {
            return;
        };
        if tokio::time::timeout(LAUNCH_COMPLETION_GRACE, &mut task)
            .await
            .is_err()
        {
            task.abort();
            tracing::warn!("the launch hook's completion did not finish: given up");
        }
    }

    /// `ready` notifications still being retried, as `started` ones.
    async fn settle_ready_notes(&self, until: Option<tokio::time::Instant>) {
        let notes = self.ready_notes.lock().expect("not poisoned").take();
        settle_notes(notes, until, Event::Ready).await;
    }

    /// `started` notifications still being retried get a short grace (at
    /// most until `until`), then are given up: the daemon is about to exit.
    async fn settle_started_notes(&self, until: Option<tokio::time::Instant>) {
        let notes = self.started_notes.lock().expect("not poisoned").take();
        settle_notes(notes, until, Event::Started).await;
    }

    /// After an idle end with `terminate`: in an Auto Scaling group the
    /// instance leaves it with the desired capacity lowered (and a
    /// termination hook's action, which the end already served, is
    /// completed); elsewhere, or if leaving fails, the OS shuts down, after
    /// an EC2 Fleet of type `maintain` that launched it is lowered by one.
    async fn leave(&self) {
        let found = self.found().await;
        let shared = &self.shared;
        let instance = &shared.facts.instance_id;
        if let Some(group) = found.group() {
            match autoscaling::leave(&shared.clients.autoscaling, instance).await {
                Ok(()) => {
                    tracing::info!(
                        "idle: Auto Scaling terminates this instance and lowers the desired capacity of {}",
                        group.name
                    );
                    if let Some((group, hook)) = found.termination() {
                        self.complete_after_leaving(group, hook).await;
                    }
                    return;
                }
                Err(e) => tracing::error!(
                    "idle: leaving the group {}: {e}; shutting the OS down instead",
                    group.name
                ),
            }
        }
        lower_fleet(shared).await;
        shut_down(shared).await;
    }

    /// The termination hook's action, once Auto Scaling has made it,
    /// completed with CONTINUE: the hooks ran before the instance left.
    async fn complete_after_leaving(&self, group: &autoscaling::Group, hook: &autoscaling::Hook) {
        let shared = &self.shared;
        let until = Instant::now() + LEFT_GROUP_COMPLETION;
        loop {
            let done = autoscaling::complete(
                &shared.clients.autoscaling,
                group,
                hook,
                &shared.facts.instance_id,
                ActionResult::Continue,
            )
            .await;
            match done {
                Ok(()) => {
                    tracing::info!(
                        "lifecycle hook {}: completed with CONTINUE (the stopping hooks ran before the instance left)",
                        hook.name
                    );
                    return;
                }
                Err(e) if Instant::now() >= until => {
                    tracing::error!(
                        "lifecycle hook {}: not completed: {e}; Auto Scaling waits out its timeout",
                        hook.name
                    );
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    }

    fn set_hostname(&self) {
        let Some(template) = &self.config.hostname else {
            return;
        };
        // Instance-wide: rendered with the first domain's values, as before.
        let values = self.runs.first().map_or_else(
            || self.shared.base_values.clone(),
            |r| r.values_for(Event::Starting, &r.ledger.snapshot(), None),
        );
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

/// Every domain's notifications for `event`, all at once.
async fn notify_every(shared: &Arc<Shared>, runs: &[DomainRun], event: Event) {
    futures_util::future::join_all(runs.iter().map(|r| r.notify(shared, event, None))).await;
}

/// Why domain `index`'s count is unknown, if a probe said.
fn last_error(board: &status::Board, index: usize) -> Option<String> {
    match board.count_of(index) {
        Some(Err(e)) => Some(e),
        _ => None,
    }
}

/// Notifications still being retried get a short grace (at most until
/// `until`), then are given up: the daemon is about to exit.
async fn settle_notes(
    notes: Option<JoinHandle<()>>,
    until: Option<tokio::time::Instant>,
    event: Event,
) {
    let Some(mut notes) = notes else {
        return;
    };
    let grace = tokio::time::Instant::now() + STARTED_NOTES_GRACE;
    let until = until.map_or(grace, |u| u.min(grace));
    if tokio::time::timeout_at(until, &mut notes).await.is_err() {
        notes.abort();
        tracing::warn!("{event} notifications still being retried: given up");
    }
}

/// The EC2 Fleet of type `maintain` that launched this instance, if one
/// did, lowered by one, so that it does not replace the instance.
async fn lower_fleet(shared: &super::domain::Shared) {
    let ec2 = &shared.clients.ec2;
    let fleet = match crate::fleet::of_instance(ec2, &shared.facts.instance_id).await {
        Ok(Some(f)) => f,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!("idle: whether an EC2 Fleet launched this instance is unknown: {e}");
            return;
        }
    };
    if fleet.kind != "maintain" {
        tracing::info!(
            "idle: EC2 Fleet {} is of type {}: it launches no replacement",
            fleet.id,
            fleet.kind
        );
        return;
    }
    match crate::fleet::lower(ec2, &fleet).await {
        Ok(total) => tracing::info!(
            "idle: EC2 Fleet {} lowered to a target capacity of {total}, so that it launches no replacement",
            fleet.id
        ),
        Err(e) => tracing::error!(
            "idle: lowering EC2 Fleet {}: {e}; it will launch a replacement",
            fleet.id
        ),
    }
}

/// Shuts the OS down (`$EC2FLEETD_SHUTDOWN_COMMAND`, default `systemctl
/// poweroff`), after saying what the instance does then: terminate, or
/// stop and go on billing its volumes.
async fn shut_down(shared: &super::domain::Shared) {
    let behaviour = shared
        .clients
        .ec2
        .describe_instance_attribute()
        .instance_id(&shared.facts.instance_id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::InstanceInitiatedShutdownBehavior)
        .send()
        .await;
    match behaviour {
        Ok(out) => {
            let b = out
                .instance_initiated_shutdown_behavior()
                .and_then(|v| v.value())
                .unwrap_or("stop");
            if b == "terminate" {
                tracing::info!("idle: shutting the OS down; the instance terminates");
            } else {
                tracing::warn!(
                    "idle: shutting the OS down, but the instance's shutdown behaviour is {b:?}: it stops instead of terminating, and a stopped instance still bills its volumes (set InstanceInitiatedShutdownBehavior to terminate)"
                );
            }
        }
        Err(e) => tracing::warn!(
            "idle: shutting the OS down; the instance's shutdown behaviour is unknown: {}",
            crate::aws::describe(&e)
        ),
    }
    let command = std::env::var("EC2FLEETD_SHUTDOWN_COMMAND")
        .unwrap_or_else(|_| "/usr/bin/systemctl poweroff".to_string());
    let argv: Vec<&str> = command.split_whitespace().collect();
    let Some((program, args)) = argv.split_first() else {
        tracing::error!("idle: EC2FLEETD_SHUTDOWN_COMMAND is empty: the OS stays up");
        return;
    };
    match tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .status()
        .await
    {
        Ok(s) if s.success() => tracing::info!("idle: {command}: done"),
        Ok(s) => tracing::error!("idle: {command}: {s}"),
        Err(e) => tracing::error!("idle: {command}: {e}"),
    }
}

/// When a spot notice's instance goes: its time, or two minutes from now
/// when the time does not parse.
fn notice_deadline(time: &str) -> SystemTime {
    humantime::parse_rfc3339_weak(time).unwrap_or_else(|_| {
        tracing::warn!("the notice's time {time:?} does not parse; assuming two minutes");
        SystemTime::now() + SPOT_WARNING
    })
}

/// Completes the lifecycle action of `hook` with `result`, saying why.
async fn complete_action(
    shared: &super::domain::Shared,
    group: &autoscaling::Group,
    hook: &autoscaling::Hook,
    result: ActionResult,
    why: &str,
) {
    let since = Instant::now();
    let instance = &shared.facts.instance_id;
    match autoscaling::complete(&shared.clients.autoscaling, group, hook, instance, result).await {
        Ok(()) => tracing::info!(
            "lifecycle hook {}: completed with {} in {:.2}s ({why})",
            hook.name,
            result.as_str(),
            since.elapsed().as_secs_f64()
        ),
        Err(e) => tracing::error!(
            "lifecycle hook {}: completing with {} ({why}): {e}",
            hook.name,
            result.as_str()
        ),
    }
}

/// Brings the deadline `until` up to `left` from now, if that is sooner.
fn move_up(until: &watch::Sender<tokio::time::Instant>, left: Duration, why: &str) {
    let sooner = tokio::time::Instant::now() + left;
    if sooner < *until.borrow() {
        until.send_replace(sooner);
        tracing::warn!(
            "the deadline moves up to {why}: {:.0}s left",
            left.as_secs_f64()
        );
    }
}

/// Cuts the hooks (`cut`) by the deadline less the reserve, once the
/// deadline has moved up; the first deadline is the hooks' own.
fn cut_when_moved_up(
    mut until: watch::Receiver<tokio::time::Instant>,
    reserve: Duration,
    cut: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if until.changed().await.is_err() {
            return;
        }
        loop {
            let at = *until.borrow_and_update();
            let left = at.saturating_duration_since(tokio::time::Instant::now());
            let hooks_until = at - reserve.min(left);
            tracing::warn!(
                "hooks cut in {:.0}s",
                left.saturating_sub(reserve).as_secs_f64()
            );
            tokio::select! {
                _ = tokio::time::sleep_until(hooks_until) => {
                    cut.cancel();
                    return;
                }
                changed = until.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep_until(hooks_until).await;
                        cut.cancel();
                        return;
                    }
                }
            }
        }
    })
}

/// Resolves once the deadline `until` holds has passed (it may move up).
async fn passed(mut until: watch::Receiver<tokio::time::Instant>) {
    loop {
        let at = *until.borrow_and_update();
        tokio::select! {
            _ = tokio::time::sleep_until(at) => return,
            changed = until.changed() => {
                if changed.is_err() {
                    // The sender is gone: the deadline stays as it was.
                    tokio::time::sleep_until(at).await;
                    return;
                }
            }
        }
    }
}

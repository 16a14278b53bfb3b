//! What the daemon says of itself while it runs: the [`Board`] every phase
//! and probe writes to, read by the status socket (`/run/ec2fleetd/NAME.sock`,
//! [`server`]), the optional HTTP endpoint, `ec2fleetd status`
//! ([`client`]) and the `status` notifications. Volumes and records come
//! from each domain's ledger, the one record of what it holds.
//!
//! The JSON is documented in `doc/status.md` and described by
//! `schema/status.schema.json`.

pub mod client;
pub mod server;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::ledger::{Ledger, Stage};
use crate::players::Count;

/// The status format's version, `version` in every answer.
pub const VERSION: u32 = 1;

/// Where the sockets are: `$EC2FLEETD_RUNTIME_DIR`, else `/run/ec2fleetd`.
pub fn runtime_dir() -> PathBuf {
    std::env::var_os("EC2FLEETD_RUNTIME_DIR")
        .map_or_else(|| PathBuf::from("/run/ec2fleetd"), PathBuf::from)
}

/// The daemon's state as a manager sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Bringing the domains up, until every one is ready.
    Starting,
    /// Every domain is ready: players may come.
    Ready,
    /// Ready, but drained: no new players should be sent here.
    Draining,
    /// Ending: a stop, an idle end, a spot notice or a termination.
    Stopping,
    /// Init failed; the way out is running.
    Failed,
}

/// What a request on the socket asks of the daemon's loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Drain,
    Undrain,
}

/// The latest notice: the one the daemon ends for, or a rebalance
/// recommendation while it still runs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Notice {
    /// `spot-interruption`, `termination`, `signal`, `idle`, `failure` or
    /// `rebalance`.
    pub kind: String,
    /// When the instance goes, RFC 3339, if known.
    pub deadline: Option<String>,
}

/// One domain on the board.
#[derive(Debug, Clone)]
struct DomainState {
    name: String,
    phase: &'static str,
    ready: bool,
    /// The probe's name, if the domain counts players.
    probe: Option<&'static str>,
    /// The last count, `None` while unknown.
    count: Option<Count>,
    checked: Option<SystemTime>,
    error: Option<String>,
    /// The config's `max`, for pushed counts.
    max: Option<u32>,
    /// Whether a player came since the start.
    had_player: bool,
}

#[derive(Debug)]
struct Inner {
    state: State,
    since: SystemTime,
    draining: bool,
    notice: Option<Notice>,
    domains: Vec<DomainState>,
    /// Since when no domain has had a player (all counts known and 0).
    idle_since: Option<SystemTime>,
}

/// The daemon's shared status.
pub struct Board {
    name: String,
    instance: Instance,
    ledgers: Vec<Arc<Ledger>>,
    inner: Mutex<Inner>,
    /// Bumped on every change of state, readiness or free capacity.
    changed: watch::Sender<u64>,
    /// Bumped on every count or failed probe.
    counts: watch::Sender<u64>,
    control: mpsc::UnboundedSender<Control>,
}

/// The instance, as the status names it.
#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    pub id: String,
    #[serde(rename = "type")]
    pub instance_type: String,
    pub availability_zone: String,
    pub region: String,
}

/// A domain as [`Board::new`] takes it.
pub struct DomainEntry {
    pub name: String,
    pub ledger: Arc<Ledger>,
    pub probe: Option<&'static str>,
    pub max: Option<u32>,
}

impl Board {
    /// A board for the daemon `name` (its socket's name), and the receiver
    /// of what requests ask of the daemon's loop.
    pub fn new(
        name: &str,
        instance: Instance,
        domains: Vec<DomainEntry>,
    ) -> (Arc<Board>, mpsc::UnboundedReceiver<Control>) {
        let (control, requests) = mpsc::unbounded_channel();
        let board = Board {
            name: name.to_string(),
            instance,
            ledgers: domains.iter().map(|d| d.ledger.clone()).collect(),
            inner: Mutex::new(Inner {
                state: State::Starting,
                since: SystemTime::now(),
                draining: false,
                notice: None,
                domains: domains
                    .into_iter()
                    .map(|d| DomainState {
                        name: d.name,
                        phase: "starting",
                        ready: false,
                        probe: d.probe,
                        count: None,
                        checked: None,
                        error: None,
                        max: d.max,
                        had_player: false,
                    })
                    .collect(),
                idle_since: None,
            }),
            changed: watch::channel(0).0,
            counts: watch::channel(0).0,
            control,
        };
        (Arc::new(board), requests)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the board; `status` notifications follow when what a
    /// manager acts on (state, readiness, free capacity) changed.
    fn change(&self, f: impl FnOnce(&mut Inner)) {
        let mut inner = self.lock();
        let before = summary_of(&inner);
        f(&mut inner);
        update_idle(&mut inner);
        let after = summary_of(&inner);
        drop(inner);
        if before != after {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// A receiver that sees every change `status` notifications are for.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn set_state(&self, state: State) {
        self.change(|i| {
            if i.state != state {
                i.state = state;
                i.since = SystemTime::now();
            }
        });
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    pub fn set_notice(&self, kind: &str, deadline: Option<SystemTime>) {
        self.change(|i| {
            i.notice = Some(Notice {
                kind: kind.to_string(),
                deadline: deadline.map(rfc3339),
            });
        });
    }

    /// Domain `index` entered `phase` (an event's name).
    pub fn set_phase(&self, index: usize, phase: &'static str) {
        self.change(|i| i.domains[index].phase = phase);
    }

    pub fn set_ready(&self, index: usize) {
        self.change(|i| {
            let d = &mut i.domains[index];
            d.ready = true;
            d.phase = "ready";
            if i.state == State::Starting && i.domains.iter().all(|d| d.ready) {
                i.state = if i.draining {
                    State::Draining
                } else {
                    State::Ready
                };
                i.since = SystemTime::now();
            }
        });
    }

    /// A probe's result for domain `index`: a count, or why it is unknown.
    /// The domain's first player is a milestone.
    pub fn counted(&self, index: usize, result: Result<Count, String>) {
        let mut first_player = false;
        self.change(|i| {
            let d = &mut i.domains[index];
            d.checked = Some(SystemTime::now());
            match result {
                Ok(c) => {
                    d.count = Some(c);
                    d.error = None;
                    if c.online > 0 {
                        first_player = !d.had_player;
                        d.had_player = true;
                    }
                }
                Err(e) => {
                    d.count = None;
                    d.error = Some(e);
                }
            }
        });
        if first_player {
            self.ledgers[index].milestone("first-player");
        }
        self.counts.send_modify(|n| *n += 1);
    }

    /// Domain `index`'s count, or why it is unknown (`None` before any probe).
    pub fn count_of(&self, index: usize) -> Option<Result<Count, String>> {
        let i = self.lock();
        let d = &i.domains[index];
        match (&d.count, &d.error) {
            (Some(c), _) => Some(Ok(*c)),
            (None, Some(e)) => Some(Err(e.clone())),
            (None, None) => None,
        }
    }

    /// A receiver that sees every count and failed probe.
    pub fn counts(&self) -> watch::Receiver<u64> {
        self.counts.subscribe()
    }

    /// `PUT /v1/players`: counts pushed for a domain whose probe is `push`.
    pub fn push(&self, domain: Option<&str>, online: u32, max: Option<u32>) -> Result<(), String> {
        let (index, cap) = {
            let inner = self.lock();
            let pushed: Vec<usize> = (0..inner.domains.len())
                .filter(|i| inner.domains[*i].probe == Some("push"))
                .collect();
            let index = match domain {
                Some(name) => match inner.domains.iter().position(|d| d.name == name) {
                    None => return Err(format!("no domain {name:?}")),
                    Some(i) if inner.domains[i].probe != Some("push") => {
                        return Err(format!(
                            "domain {name:?} is probed, not pushed to: give it \"players\": {{\"probe\": \"push\"}}"
                        ))
                    }
                    Some(i) => i,
                },
                None => match pushed.as_slice() {
                    [i] => *i,
                    [] => {
                        return Err(
                            "no domain takes pushed counts (\"players\": {\"probe\": \"push\"})"
                                .to_string(),
                        )
                    }
                    _ => return Err("several domains take pushed counts: name the \"domain\"".to_string()),
                },
            };
            (index, inner.domains[index].max)
        };
        self.counted(index, Ok(Count { online, max }.capped(cap)));
        Ok(())
    }

    /// A drain or undrain: the board says it at once; the daemon's loop
    /// runs the `draining` hooks. Asking for the state already in force
    /// changes nothing.
    pub fn request(&self, control: Control) -> Result<(), String> {
        let (state, draining) = {
            let i = self.lock();
            (i.state, i.draining)
        };
        if matches!(state, State::Stopping | State::Failed) {
            return Err(format!("the daemon is {}", state_name(state)));
        }
        let drain = control == Control::Drain;
        if draining == drain {
            return Ok(());
        }
        self.set_draining(drain);
        self.control
            .send(control)
            .map_err(|_| "the daemon is ending".to_string())
    }

    pub fn set_draining(&self, draining: bool) {
        self.change(|i| {
            i.draining = draining;
            let next = match (i.state, draining) {
                (State::Ready, true) => State::Draining,
                (State::Draining, false) => State::Ready,
                (s, _) => s,
            };
            if next != i.state {
                i.state = next;
                i.since = SystemTime::now();
            }
        });
    }

    /// Draining and no player anywhere (every count known): the instance
    /// may go.
    pub fn ready_to_close(&self) -> bool {
        ready_to_close(&self.lock())
    }

    /// Since when the instance has had no player, and whether one came
    /// since ready.
    pub fn idle(&self) -> (Option<SystemTime>, bool) {
        let i = self.lock();
        (i.idle_since, i.domains.iter().any(|d| d.had_player))
    }

    /// The players of domain `index`, for its events.
    pub fn players_of(&self, index: usize) -> Option<Players> {
        let i = self.lock();
        let d = &i.domains[index];
        d.probe.map(|_| players(std::slice::from_ref(d)))
    }

    pub fn summary(&self) -> Summary {
        summary_of(&self.lock())
    }

    /// The whole status, as `GET /v1/status` answers it.
    pub fn document(&self) -> Document {
        let i = self.lock();
        let domains = i
            .domains
            .iter()
            .zip(&self.ledgers)
            .map(|(d, ledger)| {
                let held = ledger.snapshot();
                DomainDoc {
                    name: d.name.clone(),
                    phase: d.phase,
                    ready: d.ready,
                    players: d.probe.map(|probe| DomainPlayers {
                        probe,
                        checked: d.checked.map(rfc3339),
                        error: d.error.clone(),
                        counts: players(std::slice::from_ref(d)),
                    }),
                    volumes: held
                        .volumes
                        .iter()
                        .filter(|v| matches!(v.stage, Stage::Ready))
                        .map(|v| HeldVolumeDoc {
                            id: v.volume_id.clone(),
                            device: v.device_name.clone(),
                            block_device: v.device.as_ref().map(|p| p.display().to_string()),
                        })
                        .collect(),
                    records: held
                        .records
                        .iter()
                        .flat_map(|p| {
                            p.ours.iter().map(|set| HeldRecordDoc {
                                name: p.name.clone(),
                                record_type: set.r#type().as_str().to_string(),
                                values: p.values(set.r#type()),
                            })
                        })
                        .filter(|r| {
                            !held
                                .deleted_records
                                .contains(&format!("{} {}", r.name, r.record_type))
                        })
                        .collect(),
                    timings: held.timings,
                    since_boot: held.since_boot,
                    errors: held.errors,
                }
            })
            .collect();
        let summary = summary_of(&i);
        Document {
            version: VERSION,
            name: self.name.clone(),
            time: rfc3339(SystemTime::now()),
            instance: self.instance.clone(),
            state: i.state,
            since: rfc3339(i.since),
            draining: i.draining,
            ready_to_close: summary.ready_to_close,
            players: summary.players,
            idle_since: i.idle_since.map(rfc3339),
            notice: i.notice.clone(),
            daemon: Daemon {
                version: env!("CARGO_PKG_VERSION"),
                pid: std::process::id(),
            },
            domains,
        }
    }
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Starting => "starting",
        State::Ready => "ready",
        State::Draining => "draining",
        State::Stopping => "stopping",
        State::Failed => "failed",
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(state_name(*self))
    }
}

/// The counts summed over `domains` that count players: unknown if one
/// is unknown.
fn players(domains: &[DomainState]) -> Players {
    let counted: Vec<&DomainState> = domains.iter().filter(|d| d.probe.is_some()).collect();
    if counted.is_empty() {
        return Players {
            online: None,
            max: None,
            free: None,
        };
    }
    let known: Option<Vec<Count>> = counted.iter().map(|d| d.count).collect();
    let online = known
        .as_ref()
        .map(|k| k.iter().map(|c| c.online).sum::<u32>());
    let max = known
        .as_ref()
        .and_then(|k| k.iter().map(|c| c.max).sum::<Option<u32>>());
    Players {
        online,
        max,
        free: online.zip(max).map(|(o, m)| m.saturating_sub(o)),
    }
}

/// Draining (and ready), and no player: with domains that count players,
/// every count known and zero (unknown is never empty).
fn ready_to_close(i: &Inner) -> bool {
    let counted = i.domains.iter().any(|d| d.probe.is_some());
    i.state == State::Draining && (!counted || players(&i.domains).online == Some(0))
}

fn summary_of(i: &Inner) -> Summary {
    Summary {
        state: i.state,
        ready: i.domains.iter().map(|d| d.ready).collect(),
        draining: i.draining,
        ready_to_close: ready_to_close(i),
        players: players(&i.domains),
    }
}

/// Idle: every counted domain's count known and zero, from when that began.
fn update_idle(i: &mut Inner) {
    let counted = i.domains.iter().any(|d| d.probe.is_some());
    let empty =
        counted && i.domains.iter().all(|d| d.ready) && players(&i.domains).online == Some(0);
    match (empty, i.idle_since) {
        (true, None) => i.idle_since = Some(SystemTime::now()),
        (false, Some(_)) => i.idle_since = None,
        _ => {}
    }
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// What `status` notifications follow: a change in any of it sends one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub state: State,
    /// Each domain's readiness, in config order.
    pub ready: Vec<bool>,
    pub draining: bool,
    pub ready_to_close: bool,
    pub players: Players,
}

/// Players online, capacity and free places; `null` when unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Players {
    pub online: Option<u32>,
    pub max: Option<u32>,
    pub free: Option<u32>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct Document {
    pub version: u32,
    /// The daemon's name: its socket's (`ec2fleetd@NAME`).
    pub name: String,
    pub time: String,
    pub instance: Instance,
    pub state: State,
    /// When the state began.
    pub since: String,
    pub draining: bool,
    pub ready_to_close: bool,
    /// Summed over the domains that count players.
    pub players: Players,
    pub idle_since: Option<String>,
    pub notice: Option<Notice>,
    pub daemon: Daemon,
    pub domains: Vec<DomainDoc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Daemon {
    pub version: &'static str,
    pub pid: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct DomainDoc {
    pub name: String,
    /// The event the domain is at: starting, started, ready, stopping, …
    pub phase: &'static str,
    pub ready: bool,
    pub players: Option<DomainPlayers>,
    pub volumes: Vec<HeldVolumeDoc>,
    pub records: Vec<HeldRecordDoc>,
    pub timings: BTreeMap<String, f64>,
    pub since_boot: BTreeMap<String, f64>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DomainPlayers {
    pub probe: &'static str,
    /// When the last probe (or push) answered or failed.
    pub checked: Option<String>,
    /// Why the count is unknown.
    pub error: Option<String>,
    #[serde(flatten)]
    pub counts: Players,
}

#[derive(Debug, Clone, Serialize)]
pub struct HeldVolumeDoc {
    pub id: String,
    pub device: String,
    pub block_device: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HeldRecordDoc {
    pub name: String,
    #[serde(rename = "type")]
    pub record_type: String,
    pub values: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(probes: &[Option<&'static str>]) -> Arc<Board> {
        let domains = probes
            .iter()
            .enumerate()
            .map(|(i, p)| DomainEntry {
                name: format!("d{i}"),
                ledger: Arc::default(),
                probe: *p,
                max: None,
            })
            .collect();
        let instance = Instance {
            id: "i-1".into(),
            instance_type: "t3.micro".into(),
            availability_zone: "us-east-1a".into(),
            region: "us-east-1".into(),
        };
        Board::new("game", instance, domains).0
    }

    fn count(online: u32, max: u32) -> Result<Count, String> {
        Ok(Count {
            online,
            max: Some(max),
        })
    }

    #[test]
    fn ready_when_every_domain_is() {
        let b = board(&[Some("minecraft"), None]);
        b.set_ready(1);
        assert_eq!(b.state(), State::Starting);
        b.set_ready(0);
        assert_eq!(b.state(), State::Ready);
    }

    #[test]
    fn an_unknown_count_is_never_empty() {
        let b = board(&[Some("minecraft"), Some("a2s")]);
        b.set_ready(0);
        b.set_ready(1);
        b.counted(0, count(0, 10));
        assert_eq!(b.summary().players.online, None, "one count unknown");
        assert_eq!(b.idle().0, None);
        b.set_draining(true);
        assert!(!b.ready_to_close());
        b.counted(1, count(0, 8));
        assert_eq!(b.summary().players.free, Some(18));
        assert!(b.idle().0.is_some());
        assert!(b.ready_to_close());
        b.counted(1, Err("no answer".into()));
        assert!(!b.ready_to_close(), "a failed probe is not an empty server");
        assert_eq!(b.idle().0, None);
    }

    #[test]
    fn draining_is_a_state_of_a_ready_server() {
        let b = board(&[None]);
        b.set_draining(true);
        assert_eq!(b.state(), State::Starting);
        b.set_ready(0);
        assert_eq!(b.state(), State::Draining);
        assert!(
            b.ready_to_close(),
            "a domain that counts no players holds nothing back"
        );
        b.set_draining(false);
        assert_eq!(b.state(), State::Ready);
        assert!(!b.ready_to_close());
    }

    #[test]
    fn changes_are_what_a_manager_acts_on() {
        let b = board(&[Some("push")]);
        let mut rx = b.changes();
        b.set_ready(0);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        b.counted(0, count(1, 10));
        assert!(rx.has_changed().unwrap(), "free capacity changed");
        rx.mark_unchanged();
        b.counted(0, count(1, 10));
        assert!(!rx.has_changed().unwrap(), "the same count again");
        b.set_phase(0, "ready");
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn pushed_counts_go_to_the_push_domain() {
        let b = board(&[Some("minecraft"), Some("push")]);
        assert!(b.push(None, 2, Some(4)).is_ok());
        assert_eq!(b.players_of(1).unwrap().free, Some(2));
        assert!(b.push(Some("d0"), 1, None).unwrap_err().contains("probed"));
        assert!(b
            .push(Some("nope"), 1, None)
            .unwrap_err()
            .contains("no domain"));
        let none = board(&[None]);
        assert!(none.push(None, 1, None).is_err());
    }
}

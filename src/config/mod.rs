//! The daemon's configuration, read in stages: JSONC text → a position-aware
//! tree ([`json`]) → validated settings ([`Config`]), with every error named
//! by its JSON path and `line:column`.
//!
//! The format is the Python ec2fleetd's, key for key; see `doc/config.md`.

pub mod exit_codes;
pub mod json;
pub mod mime;
pub mod template;
mod validate;

use std::fmt;
use std::path::Path;
use std::time::Duration;

pub use exit_codes::ExitCodes;
pub use template::{MacroValues, Template};

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `hostname` (or its older spelling `set-hostname`).
    pub hostname: Option<Template>,
    /// `timeout`: the deadline for the whole init.
    pub timeout: Option<Duration>,
    /// `auto-scaling`: the Auto Scaling group's lifecycle hooks.
    pub auto_scaling: AutoScalingSpec,
    /// `idle`: what an instance without players does, and when.
    pub idle: Option<IdleSpec>,
    /// `status`: the status endpoint over HTTP, for a manager elsewhere.
    pub status: StatusSpec,
    /// In the order they appear in the file.
    pub domains: Vec<Domain>,
}

/// `auto-scaling`: which lifecycle hooks of the instance's Auto Scaling
/// group the daemon completes. By default it looks the group and its hooks
/// up at start and uses the one launch and the one termination hook found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoScalingSpec {
    /// `false`: no Auto Scaling call at all, not even the look at start.
    pub enabled: bool,
    /// `launch-hook`: the launch hook to complete, when the group has several.
    pub launch_hook: Option<String>,
    /// `termination-hook`: the termination hook whose time the
    /// `terminating` hooks get.
    pub termination_hook: Option<String>,
}

impl Default for AutoScalingSpec {
    fn default() -> Self {
        AutoScalingSpec {
            enabled: true,
            launch_hook: None,
            termination_hook: None,
        }
    }
}

/// `idle` at the top level: when the instance counts as idle (no player
/// in any domain with a `players` probe), and what it does then.
#[derive(Debug, Clone, PartialEq)]
pub struct IdleSpec {
    /// `after`: seconds without a player, once one came.
    pub after: Duration,
    /// `after-start`: seconds without a player when none ever came since
    /// ready (default: `after`).
    pub after_start: Duration,
    pub action: IdleAction,
}

/// `idle.action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleAction {
    /// Run the `idle` hooks and report; the daemon watches on.
    Notify,
    /// The `idle` hooks, then the stopping path; the daemon exits.
    Stop,
    /// As `stop`, then the instance goes: out of its Auto Scaling group
    /// with the desired capacity lowered, else the OS is shut down.
    Terminate,
}

impl IdleAction {
    pub const NAMES: [&'static str; 3] = ["notify", "stop", "terminate"];

    pub fn name(self) -> &'static str {
        match self {
            IdleAction::Notify => "notify",
            IdleAction::Stop => "stop",
            IdleAction::Terminate => "terminate",
        }
    }
}

/// `status` at the top level: the read-only HTTP endpoint (the unix socket
/// is always on).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusSpec {
    /// `listen`: the address HTTP is served on.
    pub listen: Option<std::net::SocketAddr>,
    /// `token-file`: the bearer token every HTTP request must carry.
    pub token_file: Option<std::path::PathBuf>,
}

/// `players` of a domain: how its players are counted.
#[derive(Debug, Clone)]
pub struct PlayersSpec {
    pub probe: Probe,
    /// `every`: seconds between two probes.
    pub every: Duration,
    /// `timeout`: how long one probe may take.
    pub timeout: Duration,
    /// `max`: the capacity, when the probe does not tell it (or to cap it).
    pub max: Option<u32>,
}

impl PlayersSpec {
    pub const DEFAULT_EVERY: Duration = Duration::from_secs(15);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
}

/// `players.probe`, with what it needs.
#[derive(Debug, Clone)]
pub enum Probe {
    /// Minecraft's Server List Ping over TCP at `host:port`.
    Minecraft(String),
    /// Valve's A2S_INFO query over UDP at `host:port`.
    A2s(String),
    /// Established TCP connections to this port of the instance.
    Tcp(u16),
    /// A command printing `{"online": N, "max": M}`.
    Command(Vec<Template>),
    /// No probe: the counts come from `PUT /v1/players` on the status socket.
    Push,
}

impl Probe {
    pub const NAMES: [&'static str; 5] = ["minecraft", "a2s", "tcp", "command", "push"];

    pub fn name(&self) -> &'static str {
        match self {
            Probe::Minecraft(_) => "minecraft",
            Probe::A2s(_) => "a2s",
            Probe::Tcp(_) => "tcp",
            Probe::Command(_) => "command",
            Probe::Push => "push",
        }
    }
}

/// One application: its volumes, records, hooks and notifications.
#[derive(Debug, Clone)]
pub struct Domain {
    pub name: String,
    pub volumes: Vec<VolumeSpec>,
    pub records: Vec<RecordSpec>,
    pub exec: Vec<ExecBlock>,
    pub notify: Vec<NotifySpec>,
    /// `players`: how players are counted; the domain is ready once a
    /// count is known.
    pub players: Option<PlayersSpec>,
    /// `ready-timeout`: how long after the `started` hooks the first count
    /// may take before the domain fails.
    pub ready_timeout: Option<Duration>,
}

/// One `attach-volume` entry.
#[derive(Debug, Clone)]
pub struct VolumeSpec {
    pub critical: bool,
    /// The AttachVolume device name, e.g. `/dev/xvdf`.
    pub device: String,
    /// `source`, in the order they are tried.
    pub sources: Vec<VolumeSource>,
    pub volume_id: Option<String>,
    pub pool_name: Option<String>,
    /// `create`: CreateVolume parameters in AWS casing.
    pub create: Option<serde_json::Map<String, serde_json::Value>>,
    /// `pool-pref`: which free pool volume to try first.
    pub pool_pref: PoolPref,
    /// `wait-available`: how long to keep trying the pool for a volume that
    /// a predecessor still holds, before the next source.
    pub wait_available: Duration,
    /// `detach-on`: events after whose hooks the volume is released.
    pub detach_on: Vec<Event>,
    /// `force`: release with a forced detach.
    pub force: bool,
    /// `max-loss`: for `f`, how many seconds of writes may be lost by
    /// restoring an older snapshot when the newest copy stays held elsewhere.
    pub max_loss: Option<Duration>,
    /// `snapshot`: when to snapshot the volume and how many to keep.
    pub snapshot: Option<SnapshotSpec>,
    pub exec: Vec<ExecBlock>,
}

/// `snapshot` on an `attach-volume` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotSpec {
    /// After these events' hooks (they unmount), before `detach-on`.
    pub on: Vec<Event>,
    /// Seconds between snapshots while the daemon watches.
    pub every: Option<Duration>,
    /// How many of the pool's snapshots to keep, newest first.
    pub keep: Option<u32>,
}

/// `pool-pref`: the order free pool volumes are tried in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolPref {
    /// The volume at the launch index (as the Python daemon), then the rest.
    Index,
    Random,
    /// Oldest claim first (the `user:ec2fd.ts-used` tag).
    LeastRecentlyUsed,
    /// Newest claim first.
    MostRecentlyUsed,
}

/// Where a volume may come from: the letters of `source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeSource {
    /// `x`: the given `volume-id`.
    Given,
    /// `p`: a free volume of the pool `pool-name` in this AZ.
    Pool,
    /// `c`: a new volume from the `create` parameters.
    Create,
    /// `f`: the newest copy of the dataset in the pool `pool-name`, in any
    /// zone (restored here from a snapshot when it is in another).
    Follow,
}

impl VolumeSource {
    pub fn letter(self) -> char {
        match self {
            VolumeSource::Given => 'x',
            VolumeSource::Pool => 'p',
            VolumeSource::Create => 'c',
            VolumeSource::Follow => 'f',
        }
    }
}

/// One `update-route53` entry.
#[derive(Debug, Clone)]
pub struct RecordSpec {
    pub critical: bool,
    /// The hosted zone ID, without a `/hostedzone/` prefix.
    pub hosted_zone: String,
    pub name: Template,
    pub ttl: i64,
    /// `delete-on`: events after which this instance's records are deleted,
    /// if they still hold its values.
    pub delete_on: Vec<Event>,
    /// `address`: which of the instance's addresses the records hold.
    pub address: AddressMode,
    /// `wait-insync`: READY only once Route53 reports the change `INSYNC`.
    pub wait_insync: bool,
}

/// `address` of an `update-route53` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AddressMode {
    /// The primary interface's primary public IPv4 and its first IPv6.
    #[default]
    Public,
    /// The primary private IPv4 and the first IPv6 (for private hosted zones).
    Private,
    /// Every public IPv4 and every IPv6 of the primary interface.
    AllPublic,
}

impl AddressMode {
    pub const NAMES: [&'static str; 3] = ["public", "private", "all-public"];

    pub fn from_name(name: &str) -> Option<AddressMode> {
        match name {
            "public" => Some(AddressMode::Public),
            "private" => Some(AddressMode::Private),
            "all-public" => Some(AddressMode::AllPublic),
            _ => None,
        }
    }
}

/// The events hooks and notifications are bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Event {
    Starting,
    Started,
    Failed,
    Stopping,
    Interrupted,
    /// Auto Scaling is terminating the instance (`target-lifecycle-state`).
    Terminating,
    /// EC2 recommends moving off this instance; it keeps running for now.
    Rebalance,
    /// A scheduled maintenance event was announced for this instance.
    Maintenance,
    /// Before a periodic snapshot (a volume's blocks only: freeze).
    SnapshotBegin,
    /// After a periodic snapshot, taken or not (a volume's blocks only: thaw).
    SnapshotEnd,
    /// The domain answers: its first players count came (or, without a
    /// probe, its `started` hooks succeeded).
    Ready,
    /// No player for `idle.after` seconds.
    Idle,
    /// The instance is being drained: players are told, no new ones come.
    Draining,
    /// The instance's state, readiness or free capacity changed
    /// (notifications only).
    Status,
}

/// Every event's name, as the config spells it.
pub const EVENT_NAMES: &[&str] = &[
    "starting",
    "started",
    "failed",
    "stopping",
    "interrupted",
    "terminating",
    "rebalance",
    "maintenance",
    "ready",
    "idle",
    "draining",
    "status",
];

impl Event {
    pub const ALL: [Event; 12] = [
        Event::Starting,
        Event::Started,
        Event::Failed,
        Event::Stopping,
        Event::Interrupted,
        Event::Terminating,
        Event::Rebalance,
        Event::Maintenance,
        Event::Ready,
        Event::Idle,
        Event::Draining,
        Event::Status,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Event::Starting => "starting",
            Event::Started => "started",
            Event::Failed => "failed",
            Event::Stopping => "stopping",
            Event::Interrupted => "interrupted",
            Event::Terminating => "terminating",
            Event::Rebalance => "rebalance",
            Event::Maintenance => "maintenance",
            Event::SnapshotBegin => "snapshot-begin",
            Event::SnapshotEnd => "snapshot-end",
            Event::Ready => "ready",
            Event::Idle => "idle",
            Event::Draining => "draining",
            Event::Status => "status",
        }
    }

    /// The events only the blocks that name them run at.
    pub const OPT_IN: [Event; 4] = [Event::Ready, Event::Idle, Event::Draining, Event::Status];

    /// The events only a volume's `exec` blocks may name.
    pub const VOLUME_ONLY: [Event; 2] = [Event::SnapshotBegin, Event::SnapshotEnd];

    pub fn from_name(name: &str) -> Option<Event> {
        Event::ALL
            .into_iter()
            .chain(Event::VOLUME_ONLY)
            .find(|e| e.name() == name)
    }

    /// Whether the daemon exits after this event's hooks (the only moments
    /// `detach-on` and `delete-on` can act).
    pub fn ends_the_daemon(self) -> bool {
        matches!(
            self,
            Event::Failed | Event::Stopping | Event::Interrupted | Event::Terminating
        )
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An `exec` block: lines run in order for the events in `on`.
#[derive(Debug, Clone)]
pub struct ExecBlock {
    /// `None`: every event.
    pub on: Option<Vec<Event>>,
    pub lines: Vec<ExecLine>,
}

impl ExecBlock {
    /// Whether the block runs at `event`. Without `on`: at every event but
    /// the game servers' (`ready`, `idle`, `draining`), which run only the
    /// blocks that name them, so that a config written before them runs
    /// its hooks as often as it did.
    pub fn runs_on(&self, event: Event) -> bool {
        match &self.on {
            Some(on) => on.contains(&event),
            None => !Event::OPT_IN.contains(&event),
        }
    }
}

/// One command: `argv` (`argv[0]` an absolute path), its exit-code spec and
/// how to run it.
#[derive(Debug, Clone, Default)]
pub struct ExecLine {
    pub argv: Vec<Template>,
    pub ec: ExitCodes,
    /// `timeout`: SIGTERM after this long, SIGKILL after a grace period.
    pub timeout: Option<Duration>,
    /// `user`: run as this user (name or numeric ID).
    pub user: Option<String>,
    /// `group`: run with this group; default the user's primary group.
    pub group: Option<String>,
    /// `env`: variables added to the hook's environment (values take macros).
    pub env: Vec<(String, Template)>,
    /// `cwd`: the working directory (absolute).
    pub cwd: Option<String>,
}

/// One `notify` entry.
#[derive(Debug, Clone)]
pub struct NotifySpec {
    pub backend: Backend,
    /// `options.region`; else the daemon's region.
    pub region: Option<String>,
    pub subject: Option<Template>,
    /// `envelope.body`; without it, the typed JSON event.
    pub body: Option<Body>,
    /// Events turned off in `matrix` (and `ready` and `status` for a domain
    /// that counts no players, unless `matrix` names them).
    pub disabled: Vec<Event>,
    /// The events `matrix` names.
    pub chosen: Vec<Event>,
    /// `options.timeout`: how long one attempt may take.
    pub timeout: Duration,
    /// `options.retries`: attempts after the first, for failures that may pass.
    pub retries: u32,
}

impl NotifySpec {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_RETRIES: u32 = 3;

    pub fn enabled_for(&self, event: Event) -> bool {
        !self.disabled.contains(&event)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    Sns {
        topic_arn: String,
    },
    Sqs {
        queue_url: String,
    },
    /// An HTTP(S) POST to `url`, with extra headers (values take macros).
    Webhook {
        url: String,
        headers: Vec<(String, Template)>,
    },
}

impl Backend {
    /// Where it delivers, for logs.
    pub fn target(&self) -> &str {
        match self {
            Backend::Sns { topic_arn } => topic_arn,
            Backend::Sqs { queue_url } => queue_url,
            Backend::Webhook { url, .. } => url,
        }
    }
}

/// `envelope.body`: text with macros, or JSON whose string values are
/// templates (rendered one by one, so that a value with quotes or newlines
/// still makes valid JSON).
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Text(Template),
    Json(JsonTemplate),
}

#[derive(Debug, Clone, PartialEq)]
pub enum JsonTemplate {
    /// `null`, booleans and numbers, as written.
    Plain(serde_json::Value),
    Text(Template),
    Array(Vec<JsonTemplate>),
    Object(Vec<(String, JsonTemplate)>),
}

impl JsonTemplate {
    pub fn render(&self, values: &MacroValues) -> serde_json::Value {
        match self {
            JsonTemplate::Plain(v) => v.clone(),
            JsonTemplate::Text(t) => serde_json::Value::String(t.render(values)),
            JsonTemplate::Array(items) => items.iter().map(|i| i.render(values)).collect(),
            JsonTemplate::Object(members) => members
                .iter()
                .map(|(k, v)| (k.clone(), v.render(values)))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        }
    }
}

/// One problem found in a config, with where it is.
#[derive(Debug, Clone)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    /// JSON path such as `$.domains["web"].exec[0].lines[1].argv[0]`.
    pub path: String,
    pub message: String,
}

/// Every problem found in one config source.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    /// The file name, or `user data`.
    pub source: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} error{} in the config",
            self.source,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(
                f,
                "\n  {}:{}:{}: {}: {}",
                self.source, p.line, p.column, p.path, p.message
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Validates config text; `source` names it in errors.
    pub fn from_text(source: &str, text: &str) -> Result<Config, ConfigErrors> {
        let index = json::LineIndex::new(text);
        let to_errors = |mut raw: Vec<validate::RawProblem>| {
            raw.sort_by_key(|p| p.at);
            let mut position = index.positions(text);
            ConfigErrors {
                source: source.to_string(),
                problems: raw
                    .into_iter()
                    .map(|p| {
                        let (line, column) = position(p.at);
                        Problem {
                            line,
                            column,
                            path: p.path,
                            message: p.message,
                        }
                    })
                    .collect(),
            }
        };
        let root = json::parse(text).map_err(|e| {
            to_errors(vec![validate::RawProblem {
                at: e.at,
                path: "$".into(),
                message: format!("syntax: {}", e.message),
            }])
        })?;
        validate::config(&root).map_err(to_errors)
    }

    /// Reads and validates a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigErrors> {
        let source = path.display().to_string();
        let bad = |message: String| ConfigErrors {
            source: source.clone(),
            problems: vec![Problem {
                line: 1,
                column: 1,
                path: "$".into(),
                message,
            }],
        };
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read the file: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8 text: {e}")))?;
        Config::from_text(&source, &text)
    }
}

#[cfg(test)]
#[test]
fn event_names_match_the_events() {
    assert_eq!(Event::ALL.map(Event::name).as_slice(), EVENT_NAMES);
}

/// The keys validation accepts in each kind of object, by the name of its
/// definition in `schema/config.schema.json` (`""` is the root), so that a
/// test keeps the schema in step with the code.
pub fn known_keys() -> Vec<(&'static str, &'static [&'static str])> {
    use validate::*;
    vec![
        ("", ROOT_KEYS),
        ("auto-scaling", AUTO_SCALING_KEYS),
        ("idle", IDLE_KEYS),
        ("status", STATUS_KEYS),
        ("domain", DOMAIN_KEYS),
        ("players", PLAYERS_KEYS),
        ("volume", VOLUME_KEYS),
        ("create", CREATE_KEYS),
        ("snapshot", SNAPSHOT_KEYS),
        ("record", RECORD_KEYS),
        ("exec", EXEC_KEYS),
        ("line", LINE_KEYS),
        ("notify", NOTIFY_KEYS),
        ("sns-options", SNS_OPTION_KEYS),
        ("sqs-options", SQS_OPTION_KEYS),
        ("webhook-options", WEBHOOK_OPTION_KEYS),
        ("envelope", ENVELOPE_KEYS),
        ("matrix", EVENT_NAMES),
        ("matrix-entry", MATRIX_ENTRY_KEYS),
    ]
}

/// The closest candidate to a misspelt name, for "did you mean".
pub(crate) fn suggest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let len = name.chars().count();
    candidates
        .into_iter()
        // The distance is at least the difference in length: a name far
        // longer than any candidate (a whole config) is not compared.
        .filter(|c| len.abs_diff(c.chars().count()) <= 2.max(c.len() / 3))
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        .filter(|&(d, c)| d <= 2.max(c.len() / 3))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

//! The position-aware tree → [`Config`], collecting every problem instead of
//! stopping at the first.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::json::{Json, Member, Node};
use super::{
    suggest, AddressMode, AutoScalingSpec, Backend, Body, Config, Domain, Event, ExecBlock,
    ExecLine, ExitCodes, IdleAction, IdleSpec, JsonTemplate, NotifySpec, PlayersSpec, PoolPref,
    Probe, RecordSpec, SnapshotSpec, StatusSpec, Template, VolumeSource, VolumeSpec,
};

/// A problem with a byte offset; [`super::Config::from_text`] turns it into
/// `line:column`.
pub(super) struct RawProblem {
    pub at: usize,
    pub path: String,
    pub message: String,
}

/// Keys of each object kind; the JSON Schema is checked against these lists.
pub const ROOT_KEYS: &[&str] = &[
    "$schema",
    "hostname",
    "set-hostname",
    "timeout",
    "auto-scaling",
    "idle",
    "status",
    "domains",
];
pub const AUTO_SCALING_KEYS: &[&str] = &["launch-hook", "termination-hook"];
pub const DOMAIN_KEYS: &[&str] = &[
    "attach-volume",
    "update-route53",
    "exec",
    "notify",
    "players",
    "ready-timeout",
];
pub const PLAYERS_KEYS: &[&str] = &["probe", "address", "argv", "every", "timeout", "max"];
pub const IDLE_KEYS: &[&str] = &["after", "after-start", "action"];
pub const STATUS_KEYS: &[&str] = &["listen", "token-file"];
pub const VOLUME_KEYS: &[&str] = &[
    "critical",
    "device",
    "source",
    "volume-id",
    "pool-name",
    "create",
    "pool-pref",
    "wait-available",
    "detach-on",
    "force",
    "max-loss",
    "snapshot",
    "exec",
];
pub const SNAPSHOT_KEYS: &[&str] = &["on", "every", "keep"];
pub const POOL_PREFS: &[&str] = &[
    "index",
    "random",
    "least-recently-used",
    "most-recently-used",
];
pub const RECORD_KEYS: &[&str] = &[
    "critical",
    "hostedzone",
    "name",
    "ttl",
    "delete-on",
    "address",
    "wait-insync",
];
pub const EXEC_KEYS: &[&str] = &["on", "ec", "lines"];
pub const LINE_KEYS: &[&str] = &["argv", "ec", "timeout", "user", "group", "env", "cwd"];
pub const NOTIFY_KEYS: &[&str] = &["backend", "options", "envelope", "matrix"];
pub const SNS_OPTION_KEYS: &[&str] = &["region", "topic", "timeout", "retries"];
pub const SQS_OPTION_KEYS: &[&str] = &["region", "queue-url", "timeout", "retries"];
pub const WEBHOOK_OPTION_KEYS: &[&str] = &["url", "headers", "timeout", "retries"];
pub const ENVELOPE_KEYS: &[&str] = &["subject", "body"];
pub const MATRIX_ENTRY_KEYS: &[&str] = &["enabled"];
/// CreateVolume's request parameters, as the `create` object spells them.
pub const CREATE_KEYS: &[&str] = &[
    "Size",
    "VolumeType",
    "SnapshotId",
    "Encrypted",
    "KmsKeyId",
    "Iops",
    "Throughput",
    "MultiAttachEnabled",
    "OutpostArn",
    "TagSpecifications",
    "VolumeInitializationRate",
];
pub const BACKENDS: &[&str] = &["aws-sns", "aws-sqs", "ans-sqs", "webhook"];

pub(super) fn config(root: &Node) -> Result<Config, Vec<RawProblem>> {
    let mut v = Validator::default();
    let config = v.root(root);
    match config {
        Some(c) if v.problems.is_empty() => Ok(c),
        _ => Err(v.problems),
    }
}

fn key_path(path: &str, key: &str) -> String {
    let mut chars = key.chars();
    let ident = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ident {
        format!("{path}.{key}")
    } else {
        format!("{path}[{}]", serde_json::Value::String(key.to_string()))
    }
}

fn index_path(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// An object whose keys have been checked.
struct Obj<'n> {
    members: &'n [Member],
}

impl<'n> Obj<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.members
            .iter()
            .rev()
            .find(|m| m.key == key)
            .map(|m| &m.node)
    }
}

#[derive(Default)]
struct Validator {
    problems: Vec<RawProblem>,
    /// Volume IDs and device names already claimed, with where: all domains
    /// share one instance, so each may appear once in the whole config.
    claimed: HashMap<String, String>,
}

impl Validator {
    /// Reports `what` (a volume ID or device) when an earlier volume has it.
    fn claim(&mut self, at: usize, path: &str, what: &str) {
        if let Some(first) = self.claimed.get(what) {
            let message = format!(
                "{what} is already used at {first}: each volume and device may appear once"
            );
            self.problem(at, path, message);
        } else {
            self.claimed.insert(what.to_string(), path.to_string());
        }
    }

    fn problem(&mut self, at: usize, path: &str, message: impl Into<String>) {
        self.problems.push(RawProblem {
            at,
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn expected(&mut self, node: &Node, path: &str, what: &str) {
        let found = node.value.kind();
        self.problem(node.at, path, format!("expected {what}, found {found}"));
    }

    /// An object with only `known` keys (each once).
    fn object<'n>(&mut self, node: &'n Node, path: &str, known: &[&str]) -> Option<Obj<'n>> {
        let Json::Object(members) = &node.value else {
            self.expected(node, path, "an object");
            return None;
        };
        let mut seen = HashSet::new();
        for m in members {
            let p = key_path(path, &m.key);
            let first = seen.insert(m.key.as_str());
            if !known.contains(&m.key.as_str()) {
                let msg = match suggest(&m.key, known.iter().copied()) {
                    Some(s) => format!("unknown key {:?}; did you mean {s:?}?", m.key),
                    None => format!(
                        "unknown key {:?} (expected one of: {})",
                        m.key,
                        known.join(", ")
                    ),
                };
                self.problem(m.key_at, &p, msg);
            } else if !first {
                self.problem(m.key_at, &p, format!("key {:?} is given twice", m.key));
            }
        }
        Some(Obj { members })
    }

    fn required<'n>(
        &mut self,
        obj: &Obj<'n>,
        parent: &Node,
        path: &str,
        key: &str,
    ) -> Option<&'n Node> {
        let node = obj.get(key);
        if node.is_none() {
            self.problem(parent.at, path, format!("missing required key {key:?}"));
        }
        node
    }

    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Json::String(s) => Some(s.clone()),
            _ => {
                self.expected(node, path, "a string");
                None
            }
        }
    }

    fn nonempty_string(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.string(node, path)?;
        if s.trim().is_empty() {
            self.problem(node.at, path, "must not be empty");
            return None;
        }
        Some(s)
    }

    fn boolean(&mut self, node: &Node, path: &str) -> Option<bool> {
        match node.value {
            Json::Bool(b) => Some(b),
            _ => {
                self.expected(node, path, "true or false");
                None
            }
        }
    }

    fn number(&mut self, node: &Node, path: &str) -> Option<f64> {
        let parsed = match &node.value {
            Json::Number(raw) => parse_number(raw),
            _ => None,
        };
        if parsed.is_none() {
            self.expected(node, path, "a number");
        }
        parsed
    }

    fn integer(&mut self, node: &Node, path: &str, lo: i64, hi: i64) -> Option<i64> {
        let n = self.number(node, path)?;
        if n.fract() != 0.0 || n < lo as f64 || n > hi as f64 {
            self.problem(
                node.at,
                path,
                format!("expected a whole number from {lo} to {hi}"),
            );
            return None;
        }
        Some(n as i64)
    }

    fn array<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &node.value {
            Json::Array(items) => Some(items),
            _ => {
                self.expected(node, path, "an array");
                None
            }
        }
    }

    fn template(&mut self, node: &Node, path: &str) -> Option<Template> {
        let s = self.string(node, path)?;
        match Template::parse(&s) {
            Ok(t) => Some(t),
            Err(e) => {
                // +1 for the opening quote; exact unless escapes come first.
                self.problem(node.at + 1 + e.offset, path, e.message);
                None
            }
        }
    }

    fn root(&mut self, node: &Node) -> Option<Config> {
        let obj = self.object(node, "$", ROOT_KEYS)?;
        if let Some(n) = obj.get("$schema") {
            self.string(n, "$.$schema");
        }
        let hostname = match (obj.get("hostname"), obj.get("set-hostname")) {
            (Some(_), Some(n)) => {
                self.problem(
                    n.at,
                    "$.set-hostname",
                    "give either \"hostname\" or its older spelling \"set-hostname\", not both",
                );
                None
            }
            (Some(n), None) => self.hostname(n, "$.hostname"),
            (None, Some(n)) => self.hostname(n, "$[\"set-hostname\"]"),
            (None, None) => None,
        };
        let timeout = obj
            .get("timeout")
            .and_then(|n| self.seconds(n, "$.timeout", 86_400.0));
        let auto_scaling = obj
            .get("auto-scaling")
            .and_then(|n| self.auto_scaling(n, "$.auto-scaling"))
            .unwrap_or_default();
        let idle = obj.get("idle").and_then(|n| self.idle(n, "$.idle"));
        let status = obj
            .get("status")
            .and_then(|n| self.status(n, "$.status"))
            .unwrap_or_default();
        let mut domains = Vec::new();
        if let Some(n) = self.required(&obj, node, "$", "domains") {
            if let Json::Object(members) = &n.value {
                for m in members {
                    let path = key_path("$.domains", &m.key);
                    if m.key.is_empty() {
                        self.problem(m.key_at, &path, "a domain needs a name");
                    }
                    if let Some(d) = self.domain(&m.key, &m.node, &path) {
                        domains.push(d);
                    }
                }
                if let Some(dup) = first_duplicate(members) {
                    self.problem(
                        dup.key_at,
                        "$.domains",
                        format!("domain {:?} is given twice", dup.key),
                    );
                }
            } else {
                self.expected(n, "$.domains", "an object of domains by name");
            }
        }
        if let (Some(n), true) = (obj.get("idle"), idle.is_some()) {
            if !domains.iter().any(|d: &Domain| d.players.is_some()) {
                self.problem(
                    n.at,
                    "$.idle",
                    "no domain counts players (\"players\"): the instance would never be idle",
                );
            }
        }
        Some(Config {
            hostname,
            timeout,
            auto_scaling,
            idle,
            status,
            domains,
        })
    }

    /// `idle`: `after` (required), `after-start`, `action`.
    fn idle(&mut self, node: &Node, path: &str) -> Option<IdleSpec> {
        let obj = self.object(node, path, IDLE_KEYS)?;
        let after = self
            .required(&obj, node, path, "after")
            .and_then(|n| self.seconds(n, &key_path(path, "after"), 2_592_000.0));
        let after_start = obj
            .get("after-start")
            .and_then(|n| self.seconds(n, &key_path(path, "after-start"), 2_592_000.0));
        let action = match obj.get("action") {
            None => Some(IdleAction::Notify),
            Some(n) => {
                let p = key_path(path, "action");
                let name = self.string(n, &p)?;
                let action = match name.as_str() {
                    "notify" => Some(IdleAction::Notify),
                    "stop" => Some(IdleAction::Stop),
                    "terminate" => Some(IdleAction::Terminate),
                    _ => None,
                };
                if action.is_none() {
                    self.one_of(n, &p, &name, &IdleAction::NAMES);
                }
                action
            }
        };
        let after = after?;
        Some(IdleSpec {
            after,
            after_start: after_start.unwrap_or(after),
            action: action?,
        })
    }

    /// Reports `name` as not one of `names`, with a suggestion.
    fn one_of(&mut self, node: &Node, path: &str, name: &str, names: &[&str]) {
        let msg = match suggest(name, names.iter().copied()) {
            Some(s) => format!("unknown value {name:?}; did you mean {s:?}?"),
            None => format!(
                "unknown value {name:?} (expected one of: {})",
                names.join(", ")
            ),
        };
        self.problem(node.at, path, msg);
    }

    /// `status`: `listen` (an IP address and port) and `token-file`; any
    /// address but loopback needs the token.
    fn status(&mut self, node: &Node, path: &str) -> Option<StatusSpec> {
        let obj = self.object(node, path, STATUS_KEYS)?;
        let listen = obj.get("listen").and_then(|n| {
            let p = key_path(path, "listen");
            let text = self.string(n, &p)?;
            match text.parse::<std::net::SocketAddr>() {
                Ok(a) => Some((a, n)),
                Err(_) => {
                    self.problem(
                        n.at,
                        &p,
                        format!("{text:?} is not an IP address and port such as \"0.0.0.0:9358\""),
                    );
                    None
                }
            }
        });
        let token_file = obj.get("token-file").and_then(|n| {
            let p = key_path(path, "token-file");
            let file = self.string(n, &p)?;
            if !file.starts_with('/') {
                self.problem(n.at, &p, format!("{file:?} is not an absolute path"));
                return None;
            }
            Some(std::path::PathBuf::from(file))
        });
        if let Some((a, n)) = listen {
            if token_file.is_none() && obj.get("token-file").is_none() && !a.ip().is_loopback() {
                self.problem(
                    n.at,
                    &key_path(path, "listen"),
                    format!(
                        "{a} is reachable from other hosts: give \"token-file\", or listen on loopback (127.0.0.1)"
                    ),
                );
            }
        }
        if obj.get("token-file").is_some() && listen.is_none() && obj.get("listen").is_none() {
            self.problem(
                node.at,
                path,
                "\"token-file\" without \"listen\": the token guards the HTTP endpoint, give its address",
            );
        }
        Some(StatusSpec {
            listen: listen.map(|(a, _)| a),
            token_file,
        })
    }

    /// `players`: the probe and how often; `address` for the network
    /// probes (a default port for Minecraft and A2S), `argv` for `command`.
    fn players(&mut self, node: &Node, path: &str) -> Option<PlayersSpec> {
        let obj = self.object(node, path, PLAYERS_KEYS)?;
        let kind = self.required(&obj, node, path, "probe").and_then(|n| {
            let p = key_path(path, "probe");
            let name = self.string(n, &p)?;
            if !Probe::NAMES.contains(&name.as_str()) {
                self.one_of(n, &p, &name, &Probe::NAMES);
                return None;
            }
            Some(name)
        });
        let address = obj.get("address").and_then(|n| {
            let p = key_path(path, "address");
            let text = self.nonempty_string(n, &p)?;
            let port = text
                .rsplit_once(':')
                .filter(|(host, _)| !host.is_empty())
                .and_then(|(_, port)| port.parse::<u16>().ok())
                .filter(|port| *port > 0);
            if port.is_none() {
                self.problem(
                    n.at,
                    &p,
                    format!("{text:?} is not a host and port such as \"127.0.0.1:25565\""),
                );
                return None;
            }
            Some((text, n))
        });
        let argv = obj
            .get("argv")
            .and_then(|n| self.argv(n, &key_path(path, "argv")));
        let every = obj
            .get("every")
            .and_then(|n| self.seconds(n, &key_path(path, "every"), 86_400.0))
            .unwrap_or(PlayersSpec::DEFAULT_EVERY);
        // By default a probe may take 5 s, and never longer than `every`.
        let timeout = obj
            .get("timeout")
            .and_then(|n| self.seconds(n, &key_path(path, "timeout"), 3_600.0))
            .unwrap_or(PlayersSpec::DEFAULT_TIMEOUT.min(every));
        if let Some(n) = obj.get("timeout") {
            if timeout > every {
                self.problem(
                    n.at,
                    &key_path(path, "timeout"),
                    "a probe's timeout must not be longer than \"every\"",
                );
            }
        }
        let max = obj
            .get("max")
            .and_then(|n| self.integer(n, &key_path(path, "max"), 0, 1_000_000))
            .map(|m| m as u32);
        let kind = kind?;
        let needs = |what: &str| format!("the {kind:?} probe needs {what:?}");
        let unused = |what: &str| format!("{what:?} is not used by the {kind:?} probe");
        let probe = match kind.as_str() {
            "minecraft" | "a2s" | "tcp" => {
                if let Some(n) = obj.get("argv") {
                    self.problem(n.at, &key_path(path, "argv"), unused("argv"));
                }
                let default_port = match kind.as_str() {
                    "minecraft" => Some(25_565),
                    "a2s" => Some(27_015),
                    _ => None,
                };
                let address = match (address, default_port) {
                    (Some((a, _)), _) => a,
                    (None, Some(port)) => format!("127.0.0.1:{port}"),
                    (None, None) => {
                        if obj.get("address").is_none() {
                            self.problem(node.at, path, needs("address"));
                        }
                        return None;
                    }
                };
                match kind.as_str() {
                    "minecraft" => Probe::Minecraft(address),
                    "a2s" => Probe::A2s(address),
                    _ => {
                        let port = address.rsplit_once(':')?.1.parse().ok()?;
                        Probe::Tcp(port)
                    }
                }
            }
            "command" => {
                if let Some((_, n)) = address {
                    self.problem(n.at, &key_path(path, "address"), unused("address"));
                }
                if obj.get("argv").is_none() {
                    self.problem(node.at, path, needs("argv"));
                }
                Probe::Command(argv?)
            }
            _ => {
                for key in ["address", "argv", "every", "timeout"] {
                    if let Some(n) = obj.get(key) {
                        self.problem(
                            n.at,
                            &key_path(path, key),
                            format!("{key:?} is not used by \"push\": the counts come from PUT /v1/players"),
                        );
                    }
                }
                Probe::Push
            }
        };
        Some(PlayersSpec {
            probe,
            every,
            timeout,
            max,
        })
    }

    /// `auto-scaling`: `true` (the default), `false`, or an object naming
    /// the hooks.
    fn auto_scaling(&mut self, node: &Node, path: &str) -> Option<AutoScalingSpec> {
        if let Json::Bool(enabled) = node.value {
            return Some(AutoScalingSpec {
                enabled,
                ..AutoScalingSpec::default()
            });
        }
        if !matches!(node.value, Json::Object(_)) {
            self.expected(node, path, "true, false or an object");
            return None;
        }
        let obj = self.object(node, path, AUTO_SCALING_KEYS)?;
        let mut hook = |key: &str| {
            let n = obj.get(key)?;
            let p = key_path(path, key);
            let name = self.nonempty_string(n, &p)?;
            // Auto Scaling's own limits on a lifecycle hook's name.
            let ok = name.len() <= 255
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/'));
            if !ok {
                self.problem(
                    n.at,
                    &p,
                    format!(
                        "{name:?} is not a lifecycle hook name: at most 255 letters, digits, '-', '_' and '/'"
                    ),
                );
                return None;
            }
            Some(name)
        };
        let launch_hook = hook("launch-hook");
        let termination_hook = hook("termination-hook");
        Some(AutoScalingSpec {
            enabled: true,
            launch_hook,
            termination_hook,
        })
    }

    fn hostname(&mut self, node: &Node, path: &str) -> Option<Template> {
        let t = self.template(node, path)?;
        if let Some(literal) = t.as_literal() {
            if let Err(why) = check_hostname(literal) {
                self.problem(node.at, path, why);
            }
        }
        Some(t)
    }

    fn domain(&mut self, name: &str, node: &Node, path: &str) -> Option<Domain> {
        let obj = self.object(node, path, DOMAIN_KEYS)?;
        let volumes = self.list(&obj, path, "attach-volume", Self::volume);
        let records = self.list(&obj, path, "update-route53", Self::record);
        let exec = self.list(&obj, path, "exec", Self::exec_block);
        for (i, block) in exec.iter().enumerate() {
            let only = block
                .on
                .iter()
                .flatten()
                .find(|e| Event::VOLUME_ONLY.contains(e));
            if let Some(e) = only {
                self.problem(
                    node.at,
                    &key_path(&index_path(&key_path(path, "exec"), i), "on"),
                    format!("{e:?} is an event of a volume's own exec blocks (its snapshots), not of the domain's", e = e.name()),
                );
            }
        }
        for (i, block) in exec.iter().enumerate() {
            if block.on.iter().flatten().any(|e| *e == Event::Status) {
                self.problem(
                    node.at,
                    &key_path(&index_path(&key_path(path, "exec"), i), "on"),
                    "\"status\" is a notification only: no hook runs for it",
                );
            }
        }
        let mut notify = self.list(&obj, path, "notify", Self::notify);
        let players = obj
            .get("players")
            .and_then(|n| self.players(n, &key_path(path, "players")));
        let ready_timeout = obj
            .get("ready-timeout")
            .and_then(|n| self.seconds(n, &key_path(path, "ready-timeout"), 86_400.0));
        if let (Some(n), None) = (obj.get("ready-timeout"), &players) {
            if obj.get("players").is_none() {
                self.problem(
                    n.at,
                    &key_path(path, "ready-timeout"),
                    "\"ready-timeout\" bounds the wait for the first players count: give \"players\"",
                );
            }
        }
        // `ready` and `status` notifications are for the domains that count
        // players (without a probe, `ready` is `started`), unless a matrix
        // names them.
        for n in &mut notify {
            for e in [Event::Ready, Event::Status] {
                if players.is_none() && !n.chosen.contains(&e) && !n.disabled.contains(&e) {
                    n.disabled.push(e);
                }
            }
        }
        Some(Domain {
            name: name.to_string(),
            volumes,
            records,
            exec,
            notify,
            players,
            ready_timeout,
        })
    }

    /// An optional array under `key`, each item read by `item`.
    fn list<T>(
        &mut self,
        obj: &Obj<'_>,
        path: &str,
        key: &str,
        item: impl Fn(&mut Self, &Node, &str) -> Option<T>,
    ) -> Vec<T> {
        let Some(node) = obj.get(key) else {
            return Vec::new();
        };
        let path = key_path(path, key);
        let Some(items) = self.array(node, &path) else {
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, n)| item(self, n, &index_path(&path, i)))
            .collect()
    }

    fn critical(&mut self, obj: &Obj<'_>, path: &str) -> bool {
        obj.get("critical")
            .and_then(|n| self.boolean(n, &key_path(path, "critical")))
            .unwrap_or(true)
    }

    fn volume(&mut self, node: &Node, path: &str) -> Option<VolumeSpec> {
        let obj = self.object(node, path, VOLUME_KEYS)?;
        let critical = self.critical(&obj, path);
        let device = self.required(&obj, node, path, "device").and_then(|n| {
            let p = key_path(path, "device");
            let d = self.string(n, &p)?;
            if !d.starts_with("/dev/") || d.len() <= 5 {
                self.problem(
                    n.at,
                    &p,
                    format!("{d:?} is not a device name such as \"/dev/xvdf\""),
                );
            }
            self.claim(n.at, &p, &d);
            Some(d)
        });
        let volume_id = obj.get("volume-id").and_then(|n| {
            let p = key_path(path, "volume-id");
            let id = self.string(n, &p)?;
            if !is_volume_id(&id) {
                self.problem(
                    n.at,
                    &p,
                    format!("{id:?} is not a volume ID such as \"vol-0123456789abcdef0\""),
                );
            }
            self.claim(n.at, &p, &id);
            Some(id)
        });
        let pool_name = obj
            .get("pool-name")
            .and_then(|n| self.nonempty_string(n, &key_path(path, "pool-name")));
        let create = obj
            .get("create")
            .and_then(|n| self.create(n, &key_path(path, "create")));
        let sources = self.required(&obj, node, path, "source").and_then(|n| {
            let p = key_path(path, "source");
            let s = self.string(n, &p)?;
            let mut sources = Vec::new();
            for c in s.chars() {
                let source = match c {
                    'x' => VolumeSource::Given,
                    'p' => VolumeSource::Pool,
                    'c' => VolumeSource::Create,
                    'f' => VolumeSource::Follow,
                    other => {
                        self.problem(
                            n.at,
                            &p,
                            format!("unknown volume source {other:?}: use x (volume-id), p (pool-name), c (create), f (follow the pool's dataset)"),
                        );
                        continue;
                    }
                };
                if sources.contains(&source) {
                    self.problem(n.at, &p, format!("source {c:?} is given twice"));
                }
                sources.push(source);
            }
            if s.is_empty() {
                self.problem(n.at, &p, "name at least one source: x, p, c or f");
            }
            let at = |src: VolumeSource| sources.iter().position(|s| *s == src);
            if let (Some(c), Some(f)) = (at(VolumeSource::Create), at(VolumeSource::Follow)) {
                if c < f {
                    self.problem(
                        n.at,
                        &p,
                        "'c' before 'f' would make an empty copy where the dataset belongs: put 'f' first (\"fc\")",
                    );
                }
            }
            if sources.contains(&VolumeSource::Pool) && sources.contains(&VolumeSource::Follow) {
                self.problem(
                    n.at,
                    &p,
                    "'p' and 'f' on one pool: 'p' takes any free volume, 'f' only the dataset's newest copy; use one",
                );
            }
            // A created volume joins the pool, so that the next instance finds it.
            let needs = [
                (VolumeSource::Given, volume_id.is_some(), "volume-id"),
                (VolumeSource::Pool, pool_name.is_some(), "pool-name"),
                (VolumeSource::Create, create.is_some(), "create"),
                (VolumeSource::Create, pool_name.is_some(), "pool-name"),
                (VolumeSource::Follow, pool_name.is_some(), "pool-name"),
            ];
            for (source, present, key) in needs {
                if sources.contains(&source) && !present && obj.get(key).is_none() {
                    self.problem(
                        n.at,
                        &p,
                        format!("source {:?} needs the key {key:?}", source.letter()),
                    );
                }
            }
            Some(sources)
        });
        let pool_pref = obj.get("pool-pref").and_then(|n| {
            let p = key_path(path, "pool-pref");
            let name = self.string(n, &p)?;
            let pref = match name.as_str() {
                "index" => PoolPref::Index,
                "random" => PoolPref::Random,
                "least-recently-used" => PoolPref::LeastRecentlyUsed,
                "most-recently-used" => PoolPref::MostRecentlyUsed,
                _ => {
                    let msg = match suggest(&name, POOL_PREFS.iter().copied()) {
                        Some(s) => format!("unknown pool preference {name:?}; did you mean {s:?}?"),
                        None => format!(
                            "unknown pool preference {name:?} (one of: {})",
                            POOL_PREFS.join(", ")
                        ),
                    };
                    self.problem(n.at, &p, msg);
                    return None;
                }
            };
            Some(pref)
        });
        let wait_available = obj.get("wait-available").and_then(|n| {
            let p = key_path(path, "wait-available");
            let secs = self.number(n, &p)?;
            if !(0.0..=86_400.0).contains(&secs) {
                self.problem(n.at, &p, "expected seconds from 0 to 86400");
                return None;
            }
            Some(Duration::from_secs_f64(secs))
        });
        let detach_on = obj
            .get("detach-on")
            .map(|n| {
                self.final_events(n, &key_path(path, "detach-on"), false)
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        let force = obj
            .get("force")
            .and_then(|n| self.boolean(n, &key_path(path, "force")))
            .unwrap_or(false);
        let max_loss = obj.get("max-loss").and_then(|n| {
            let p = key_path(path, "max-loss");
            let secs = self.number(n, &p)?;
            if !(0.0..=31_536_000.0).contains(&secs) {
                self.problem(n.at, &p, "expected seconds from 0 to 31536000");
                return None;
            }
            Some(Duration::from_secs_f64(secs))
        });
        let snapshot = obj
            .get("snapshot")
            .and_then(|n| self.snapshot(n, &key_path(path, "snapshot")));
        if let (Some(n), None) = (obj.get("snapshot"), &pool_name) {
            self.problem(
                n.at,
                &key_path(path, "snapshot"),
                "snapshots are kept by pool: give the volume a \"pool-name\"",
            );
        }
        if let Some(s) = &sources {
            let follows = s.contains(&VolumeSource::Follow);
            if let Some(n) = obj.get("max-loss").filter(|_| !follows) {
                self.problem(
                    n.at,
                    &key_path(path, "max-loss"),
                    "max-loss is for source 'f' only",
                );
            }
        }
        let exec = self.list(&obj, path, "exec", Self::exec_block);
        Some(VolumeSpec {
            critical,
            device: device?,
            sources: sources?,
            volume_id,
            pool_name,
            create,
            pool_pref: pool_pref.unwrap_or(PoolPref::Index),
            wait_available: wait_available.unwrap_or(Duration::ZERO),
            detach_on,
            force,
            max_loss,
            snapshot,
            exec,
        })
    }

    fn snapshot(&mut self, node: &Node, path: &str) -> Option<SnapshotSpec> {
        let obj = self.object(node, path, SNAPSHOT_KEYS)?;
        let on = obj
            .get("on")
            .map(|n| {
                self.final_events(n, &key_path(path, "on"), false)
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        if on.contains(&Event::Failed) {
            self.problem(
                node.at,
                &key_path(path, "on"),
                "\"failed\" gives the volumes back as they were: there is nothing to snapshot then",
            );
        }
        let every = obj.get("every").and_then(|n| {
            let p = key_path(path, "every");
            let secs = self.number(n, &p)?;
            if !(1.0..=2_592_000.0).contains(&secs) {
                self.problem(n.at, &p, "expected seconds from 1 to 2592000");
                return None;
            }
            Some(Duration::from_secs_f64(secs))
        });
        let keep = obj
            .get("keep")
            .and_then(|n| self.integer(n, &key_path(path, "keep"), 1, 10_000))
            .map(|k| k as u32);
        if on.is_empty() && every.is_none() {
            self.problem(
                node.at,
                path,
                "give \"on\" (events) or \"every\" (seconds): otherwise no snapshot is taken",
            );
        }
        Some(SnapshotSpec { on, every, keep })
    }

    fn create(
        &mut self,
        node: &Node,
        path: &str,
    ) -> Option<serde_json::Map<String, serde_json::Value>> {
        let obj = self.object(node, path, CREATE_KEYS)?;
        for key in ["Size", "Iops", "Throughput", "VolumeInitializationRate"] {
            if let Some(n) = obj.get(key) {
                self.integer(n, &key_path(path, key), 1, 1 << 20);
            }
        }
        for key in ["VolumeType", "SnapshotId", "KmsKeyId", "OutpostArn"] {
            if let Some(n) = obj.get(key) {
                self.nonempty_string(n, &key_path(path, key));
            }
        }
        for key in ["Encrypted", "MultiAttachEnabled"] {
            if let Some(n) = obj.get(key) {
                self.boolean(n, &key_path(path, key));
            }
        }
        if let Some(n) = obj.get("TagSpecifications") {
            let p = key_path(path, "TagSpecifications");
            for (i, spec) in self.array(n, &p).unwrap_or_default().iter().enumerate() {
                let sp = index_path(&p, i);
                let Some(o) = self.object(spec, &sp, &["ResourceType", "Tags"]) else {
                    continue;
                };
                if let Some(t) = o.get("ResourceType") {
                    self.nonempty_string(t, &key_path(&sp, "ResourceType"));
                }
                let tp = key_path(&sp, "Tags");
                for (j, tag) in o
                    .get("Tags")
                    .and_then(|t| self.array(t, &tp))
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                {
                    let tagp = index_path(&tp, j);
                    if let Some(kv) = self.object(tag, &tagp, &["Key", "Value"]) {
                        for k in ["Key", "Value"] {
                            match kv.get(k) {
                                Some(v) => {
                                    self.string(v, &key_path(&tagp, k));
                                }
                                None => self.problem(
                                    tag.at,
                                    &tagp,
                                    format!("missing required key {k:?}"),
                                ),
                            }
                        }
                    }
                }
            }
        }
        if obj.get("Size").is_none() && obj.get("SnapshotId").is_none() {
            self.problem(node.at, path, "needs \"Size\" or \"SnapshotId\"");
        }
        match to_serde(node) {
            serde_json::Value::Object(map) => Some(map),
            _ => None,
        }
    }

    fn record(&mut self, node: &Node, path: &str) -> Option<RecordSpec> {
        let obj = self.object(node, path, RECORD_KEYS)?;
        let critical = self.critical(&obj, path);
        let hosted_zone = self
            .required(&obj, node, path, "hostedzone")
            .and_then(|n| self.nonempty_string(n, &key_path(path, "hostedzone")))
            .map(|z| z.trim_start_matches("/hostedzone/").to_string());
        let name = self.required(&obj, node, path, "name").and_then(|n| {
            let t = self.template(n, &key_path(path, "name"))?;
            if t.as_literal().is_some_and(|l| l.trim().is_empty()) {
                self.problem(
                    n.at,
                    &key_path(path, "name"),
                    "a record name must not be empty",
                );
            }
            Some(t)
        });
        let ttl = obj.get("ttl").map_or(Some(60), |n| {
            self.integer(n, &key_path(path, "ttl"), 0, 2_147_483_647)
        });
        let delete_on = obj
            .get("delete-on")
            .map(|n| {
                self.final_events(n, &key_path(path, "delete-on"), true)
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        let address = obj.get("address").map_or(Some(AddressMode::Public), |n| {
            let p = key_path(path, "address");
            let name = self.string(n, &p)?;
            let mode = AddressMode::from_name(&name);
            if mode.is_none() {
                let msg = match suggest(&name, AddressMode::NAMES) {
                    Some(s) => format!("unknown address {name:?}; did you mean {s:?}?"),
                    None => format!(
                        "unknown address {name:?} (one of: {})",
                        AddressMode::NAMES.join(", ")
                    ),
                };
                self.problem(n.at, &p, msg);
            }
            mode
        });
        let wait_insync = obj.get("wait-insync").map_or(Some(false), |n| {
            self.boolean(n, &key_path(path, "wait-insync"))
        });
        Some(RecordSpec {
            critical,
            hosted_zone: hosted_zone?,
            name: name?,
            ttl: ttl?,
            delete_on,
            address: address?,
            wait_insync: wait_insync?,
        })
    }

    fn ec(&mut self, node: &Node, path: &str) -> Option<ExitCodes> {
        match &node.value {
            Json::Null => Some(ExitCodes::Any),
            Json::String(s) => match ExitCodes::parse(s) {
                Ok(ec) => Some(ec),
                Err(why) => {
                    self.problem(node.at, path, why);
                    None
                }
            },
            Json::Number(_) => {
                let code = self.integer(node, path, 0, 255)?;
                Some(ExitCodes::Ranges(vec![(code as i32, code as i32)]))
            }
            _ => {
                self.expected(
                    node,
                    path,
                    "an exit-code list such as \"0,1\" or \"0-127\", or null",
                );
                None
            }
        }
    }

    /// A list of the events that end the daemon (`detach-on`,
    /// `delete-on`): one that does not would never release anything.
    /// With `idle_ok` (`delete-on`), `idle` too: the records of an idle end
    /// stay unless it is named.
    fn final_events(&mut self, node: &Node, path: &str, idle_ok: bool) -> Option<Vec<Event>> {
        let ends = |e: Event| e.ends_the_daemon() || (idle_ok && e == Event::Idle);
        let events = self.events(node, path)?;
        let items = self.array(node, path)?;
        for (i, item) in items.iter().enumerate() {
            let Json::String(name) = &item.value else {
                continue;
            };
            match Event::from_name(name) {
                Some(e) if !ends(e) => {
                    let ending: Vec<&str> = Event::ALL
                        .into_iter()
                        .filter(|e| ends(*e))
                        .map(Event::name)
                        .collect();
                    self.problem(
                        item.at,
                        &index_path(path, i),
                        format!(
                            "{name:?} does not end the daemon, so nothing would be released then; \
                             the events that do: {}",
                            ending.join(", ")
                        ),
                    );
                }
                _ => {}
            }
        }
        Some(events.into_iter().filter(|e| ends(*e)).collect())
    }

    /// A list of event names.
    fn events(&mut self, node: &Node, path: &str) -> Option<Vec<Event>> {
        let items = self.array(node, path)?;
        let mut events = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ip = index_path(path, i);
            let Some(name) = self.string(item, &ip) else {
                continue;
            };
            match Event::from_name(&name) {
                Some(e) => events.push(e),
                None => {
                    let names = Event::ALL.map(Event::name);
                    let msg = match suggest(&name, names) {
                        Some(s) => format!("unknown event {name:?}; did you mean {s:?}?"),
                        None => format!("unknown event {name:?} (events: {})", names.join(", ")),
                    };
                    self.problem(item.at, &ip, msg);
                }
            }
        }
        Some(events)
    }

    fn exec_block(&mut self, node: &Node, path: &str) -> Option<ExecBlock> {
        let obj = self.object(node, path, EXEC_KEYS)?;
        let on = obj.get("on").and_then(|n| {
            let p = key_path(path, "on");
            let events = self.events(n, &p)?;
            if matches!(&n.value, Json::Array(items) if items.is_empty()) {
                self.problem(
                    n.at,
                    &p,
                    "an empty \"on\" list never runs: name events, or leave \"on\" out to run for every event",
                );
            }
            Some(events)
        });
        let block_ec = match obj.get("ec") {
            Some(n) => self.ec(n, &key_path(path, "ec")),
            None => Some(ExitCodes::default()),
        };
        let lines_path = key_path(path, "lines");
        let lines = self.required(&obj, node, path, "lines").and_then(|n| {
            let items = self.array(n, &lines_path)?;
            let mut lines = Vec::new();
            for (i, item) in items.iter().enumerate() {
                if let Some(line) =
                    self.exec_line(item, &index_path(&lines_path, i), block_ec.clone())
                {
                    lines.push(line);
                }
            }
            Some(lines)
        });
        Some(ExecBlock { on, lines: lines? })
    }

    /// An `argv` array: a literal absolute path, then templates.
    fn argv(&mut self, n: &Node, argv_path: &str) -> Option<Vec<Template>> {
        let items = self.array(n, argv_path)?;
        if items.is_empty() {
            self.problem(
                n.at,
                argv_path,
                "argv needs at least the program's absolute path",
            );
            return None;
        }
        // Every element is checked, so that one run reports every error.
        let argv: Vec<Option<Template>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.template(item, &index_path(argv_path, i)))
            .collect();
        let first = index_path(argv_path, 0);
        match argv[0].as_ref().map(Template::as_literal) {
            Some(Some(p)) if p.starts_with('/') => {}
            Some(Some(p)) => self.problem(
                items[0].at,
                &first,
                format!("{p:?} is not an absolute path: hooks run without a shell or PATH search"),
            ),
            Some(None) => self.problem(
                items[0].at,
                &first,
                "argv[0] must be a literal absolute path, without macros",
            ),
            None => {}
        }
        argv.into_iter().collect::<Option<Vec<_>>>()
    }

    fn exec_line(
        &mut self,
        node: &Node,
        path: &str,
        block_ec: Option<ExitCodes>,
    ) -> Option<ExecLine> {
        let obj = self.object(node, path, LINE_KEYS)?;
        let argv_path = key_path(path, "argv");
        let argv = self
            .required(&obj, node, path, "argv")
            .and_then(|n| self.argv(n, &argv_path));
        let ec = match obj.get("ec") {
            Some(n) => self.ec(n, &key_path(path, "ec")),
            None => block_ec,
        };
        let timeout = obj
            .get("timeout")
            .and_then(|n| self.seconds(n, &key_path(path, "timeout"), 86_400.0));
        let user = obj
            .get("user")
            .and_then(|n| self.nonempty_string(n, &key_path(path, "user")));
        let group = obj
            .get("group")
            .and_then(|n| self.nonempty_string(n, &key_path(path, "group")));
        let cwd = obj.get("cwd").and_then(|n| {
            let p = key_path(path, "cwd");
            let dir = self.string(n, &p)?;
            if !dir.starts_with('/') {
                self.problem(n.at, &p, format!("{dir:?} is not an absolute path"));
            }
            Some(dir)
        });
        let mut env = Vec::new();
        if let Some(n) = obj.get("env") {
            let p = key_path(path, "env");
            match &n.value {
                Json::Object(members) => {
                    for m in members {
                        let vp = key_path(&p, &m.key);
                        let valid = !m.key.is_empty()
                            && !m.key.starts_with(|c: char| c.is_ascii_digit())
                            && m.key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                        if !valid {
                            self.problem(
                                m.key_at,
                                &vp,
                                format!("{:?} is not an environment variable name", m.key),
                            );
                        }
                        if let Some(t) = self.template(&m.node, &vp) {
                            env.push((m.key.clone(), t));
                        }
                    }
                }
                _ => self.expected(n, &p, "an object of variable names and values"),
            }
        }
        Some(ExecLine {
            argv: argv?,
            ec: ec?,
            timeout,
            user,
            group,
            env,
            cwd,
        })
    }

    fn notify(&mut self, node: &Node, path: &str) -> Option<NotifySpec> {
        let obj = self.object(node, path, NOTIFY_KEYS)?;
        let backend_name = self.required(&obj, node, path, "backend").and_then(|n| {
            let p = key_path(path, "backend");
            let name = self.string(n, &p)?;
            if !BACKENDS.contains(&name.as_str()) {
                let msg = match suggest(&name, BACKENDS.iter().copied()) {
                    Some(s) => format!("unknown backend {name:?}; did you mean {s:?}?"),
                    None => {
                        format!("unknown backend {name:?} (backends: aws-sns, aws-sqs, webhook)")
                    }
                };
                self.problem(n.at, &p, msg);
                return None;
            }
            Some(name)
        });
        let options_path = key_path(path, "options");
        let options = self.required(&obj, node, path, "options");
        let mut region = None;
        let mut timeout = Some(NotifySpec::DEFAULT_TIMEOUT);
        let mut retries = Some(NotifySpec::DEFAULT_RETRIES);
        let backend = match (backend_name.as_deref(), options) {
            (Some(name), Some(opts)) => {
                let keys = match name {
                    "aws-sns" => SNS_OPTION_KEYS,
                    "webhook" => WEBHOOK_OPTION_KEYS,
                    _ => SQS_OPTION_KEYS,
                };
                let o = self.object(opts, &options_path, keys)?;
                region = o
                    .get("region")
                    .and_then(|n| self.nonempty_string(n, &key_path(&options_path, "region")));
                if let Some(n) = o.get("timeout") {
                    timeout = self.seconds(n, &key_path(&options_path, "timeout"), 60.0);
                }
                if let Some(n) = o.get("retries") {
                    retries = self
                        .integer(n, &key_path(&options_path, "retries"), 0, 10)
                        .map(|r| r as u32);
                }
                match name {
                    "aws-sns" => self
                        .target(&o, opts, &options_path, "topic")
                        .map(|topic_arn| Backend::Sns { topic_arn }),
                    "webhook" => self.webhook(&o, opts, &options_path),
                    _ => self
                        .target(&o, opts, &options_path, "queue-url")
                        .map(|queue_url| Backend::Sqs { queue_url }),
                }
            }
            _ => None,
        };
        let (mut subject, mut body) = (None, None);
        if let Some(n) = obj.get("envelope") {
            let p = key_path(path, "envelope");
            if let Some(e) = self.object(n, &p, ENVELOPE_KEYS) {
                subject = e
                    .get("subject")
                    .and_then(|s| self.template(s, &key_path(&p, "subject")));
                body = e.get("body").and_then(|b| {
                    let bp = key_path(&p, "body");
                    match &b.value {
                        Json::Object(_) | Json::Array(_) => {
                            self.json_template(b, &bp).map(Body::Json)
                        }
                        _ => self.template(b, &bp).map(Body::Text),
                    }
                });
            }
        }
        let mut disabled = Vec::new();
        let mut chosen = Vec::new();
        if let Some(n) = obj.get("matrix") {
            let p = key_path(path, "matrix");
            let names = Event::ALL.map(Event::name);
            if let Some(m) = self.object(n, &p, &names) {
                for member in m.members {
                    let ep = key_path(&p, &member.key);
                    let Some(event) = Event::from_name(&member.key) else {
                        continue;
                    };
                    chosen.push(event);
                    if let Some(entry) = self.object(&member.node, &ep, MATRIX_ENTRY_KEYS) {
                        let enabled = entry
                            .get("enabled")
                            .and_then(|b| self.boolean(b, &key_path(&ep, "enabled")))
                            .unwrap_or(true);
                        if !enabled {
                            disabled.push(event);
                        }
                    }
                }
            }
        }
        Some(NotifySpec {
            backend: backend?,
            region,
            subject,
            body,
            disabled,
            chosen,
            timeout: timeout?,
            retries: retries?,
        })
    }

    /// A required, non-empty string option.
    fn target(&mut self, o: &Obj, opts: &Node, path: &str, key: &str) -> Option<String> {
        self.required(o, opts, path, key)
            .and_then(|n| self.nonempty_string(n, &key_path(path, key)))
    }

    /// `webhook` options: an http(s) URL and headers with macros.
    fn webhook(&mut self, o: &Obj, opts: &Node, path: &str) -> Option<Backend> {
        let url = self.target(o, opts, path, "url").and_then(|url| {
            let n = o.get("url")?;
            match reqwest::Url::parse(&url) {
                Ok(u) if matches!(u.scheme(), "https" | "http") && u.host().is_some() => Some(url),
                Ok(_) => {
                    self.problem(
                        n.at,
                        &key_path(path, "url"),
                        format!("{url:?} is not an https:// (or http://) URL"),
                    );
                    None
                }
                Err(e) => {
                    self.problem(
                        n.at,
                        &key_path(path, "url"),
                        format!("{url:?} is not a URL: {e}"),
                    );
                    None
                }
            }
        });
        let mut headers = Vec::new();
        if let Some(n) = o.get("headers") {
            let p = key_path(path, "headers");
            match &n.value {
                Json::Object(members) => {
                    for m in members {
                        let hp = key_path(&p, &m.key);
                        if reqwest::header::HeaderName::from_bytes(m.key.as_bytes()).is_err() {
                            self.problem(
                                m.key_at,
                                &hp,
                                format!("{:?} is not an HTTP header name", m.key),
                            );
                        }
                        if let Some(t) = self.template(&m.node, &hp) {
                            headers.push((m.key.clone(), t));
                        }
                    }
                }
                _ => self.expected(n, &p, "an object of header names and values"),
            }
        }
        Some(Backend::Webhook { url: url?, headers })
    }

    /// A JSON body whose strings are templates.
    fn json_template(&mut self, node: &Node, path: &str) -> Option<JsonTemplate> {
        Some(match &node.value {
            Json::Null => JsonTemplate::Plain(serde_json::Value::Null),
            Json::Bool(b) => JsonTemplate::Plain((*b).into()),
            Json::Number(raw) => {
                let n = self.number(node, path)?;
                let v = if n.fract() == 0.0 && n.abs() < 9.0e15 {
                    serde_json::Value::from(n as i64)
                } else {
                    serde_json::Number::from_f64(n).map_or_else(|| raw.clone().into(), Into::into)
                };
                JsonTemplate::Plain(v)
            }
            Json::String(_) => JsonTemplate::Text(self.template(node, path)?),
            Json::Array(items) => JsonTemplate::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.json_template(item, &index_path(path, i)))
                    .collect::<Vec<_>>()
                    .into_iter()
                    .collect::<Option<_>>()?,
            ),
            Json::Object(members) => JsonTemplate::Object(
                members
                    .iter()
                    .map(|m| {
                        let v = self.json_template(&m.node, &key_path(path, &m.key));
                        v.map(|v| (m.key.clone(), v))
                    })
                    .collect::<Vec<_>>()
                    .into_iter()
                    .collect::<Option<_>>()?,
            ),
        })
    }

    /// Seconds, more than 0 and at most `max`.
    fn seconds(&mut self, node: &Node, path: &str, max: f64) -> Option<Duration> {
        let secs = self.number(node, path)?;
        if !(secs > 0.0 && secs <= max) {
            self.problem(
                node.at,
                path,
                format!("expected seconds, more than 0 and at most {max}"),
            );
            return None;
        }
        Some(Duration::from_secs_f64(secs))
    }
}

fn first_duplicate(members: &[Member]) -> Option<&Member> {
    let mut seen = HashSet::new();
    members.iter().find(|m| !seen.insert(m.key.as_str()))
}

fn parse_number(raw: &str) -> Option<f64> {
    let (sign, digits) = match raw.strip_prefix('-') {
        Some(rest) => (-1.0, rest),
        None => (1.0, raw.strip_prefix('+').unwrap_or(raw)),
    };
    let value = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        i64::from_str_radix(hex, 16).ok()? as f64
    } else {
        digits.parse::<f64>().ok()?
    };
    value.is_finite().then_some(sign * value)
}

fn is_volume_id(id: &str) -> bool {
    id.strip_prefix("vol-").is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17) && hex.chars().all(|c| c.is_ascii_hexdigit())
    })
}

fn check_hostname(name: &str) -> Result<(), String> {
    // Linux takes at most 64 bytes (HOST_NAME_MAX).
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "a hostname has 1 to 64 characters; {name:?} has {}",
            name.len()
        ));
    }
    for label in name.trim_end_matches('.').split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{name:?} is not a valid hostname (label {label:?})"
            ));
        }
    }
    Ok(())
}

/// The subtree as plain JSON, for values passed on to AWS as written.
fn to_serde(node: &Node) -> serde_json::Value {
    use serde_json::Value;
    match &node.value {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(raw) => parse_number(raw)
            .map(|f| {
                if f.fract() == 0.0 && f.abs() < 9e15 {
                    Value::from(f as i64)
                } else {
                    Value::from(f)
                }
            })
            .unwrap_or(Value::Null),
        Json::String(s) => Value::String(s.clone()),
        Json::Array(items) => Value::Array(items.iter().map(to_serde).collect()),
        Json::Object(members) => Value::Object(
            members
                .iter()
                .map(|m| (m.key.clone(), to_serde(&m.node)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, Event, IdleAction, MacroValues, PlayersSpec, Probe};
    use std::time::Duration;

    fn problems(text: &str) -> Vec<String> {
        match Config::from_text("t.jsonc", text) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .problems
                .iter()
                .map(|p| format!("{}:{} {} {}", p.line, p.column, p.path, p.message))
                .collect(),
        }
    }

    #[test]
    fn every_error_is_reported_with_path_and_position() {
        let text = r#"{
  "domains": {
    "web": {
      "exec": [{ "on": ["started"], "lines": [{ "argv": ["bin/x"] }] }],
      "notfy": [],
      "update-route53": [{ "hostedzone": "Z1", "name": "{instance_idx}.example.com", "ttl": "60" }]
    }
  }
}"#;
        let p = problems(text);
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(
            p[0].starts_with("4:58 $.domains.web.exec[0].lines[0].argv[0] "),
            "{}",
            p[0]
        );
        assert!(
            p[1].starts_with(
                "5:7 $.domains.web.notfy unknown key \"notfy\"; did you mean \"notify\"?"
            ),
            "{}",
            p[1]
        );
        assert!(
            p.iter()
                .any(|l| l.contains("unknown macro {instance_idx}; did you mean {instance_id}?")),
            "{p:#?}"
        );
        assert!(
            p.iter()
                .any(|l| l.contains(".ttl expected a number, found a string")),
            "{p:#?}"
        );
    }

    #[test]
    fn schema_key_is_ignored_and_old_spellings_accepted() {
        let text = r#"{ "$schema": "x", "set-hostname": "a.example.com", "domains": { "d": {
            "notify": [{ "backend": "ans-sqs", "options": { "queue-url": "https://q" } }] } } }"#;
        let c = Config::from_text("t", text).unwrap();
        assert!(c.hostname.is_some());
        assert!(
            matches!(&c.domains[0].notify[0].backend, super::Backend::Sqs { queue_url } if queue_url == "https://q")
        );
    }

    #[test]
    fn line_inherits_block_ec() {
        let text = r#"{ "domains": { "d": { "exec": [{ "ec": "0-2", "lines": [
            { "argv": ["/bin/true"] }, { "argv": ["/bin/false"], "ec": null } ] }] } } }"#;
        let c = Config::from_text("t", text).unwrap();
        let lines = &c.domains[0].exec[0].lines;
        assert!(lines[0].ec.accepts(2) && !lines[0].ec.accepts(3));
        assert!(lines[1].ec.accepts(3));
    }

    #[test]
    fn source_letters_need_their_keys() {
        let p = problems(
            r#"{ "domains": { "d": { "attach-volume": [{ "device": "/dev/xvdf", "source": "xpq" }] } } }"#,
        );
        let text = p.join("\n");
        assert!(text.contains("unknown volume source 'q'"), "{text}");
        assert!(
            text.contains("source 'x' needs the key \"volume-id\""),
            "{text}"
        );
        assert!(
            text.contains("source 'p' needs the key \"pool-name\""),
            "{text}"
        );
    }

    #[test]
    fn syntax_error_is_positioned() {
        let p = problems("{\n \"domains\": {,}\n}");
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("2:"), "{p:?}");
    }

    #[test]
    fn argv_reports_every_error_in_one_line() {
        let p = problems(
            r#"{ "domains": { "d": { "exec": [{ "lines": [{ "argv": ["bin/x", "{bad}"] }] }] } } }"#,
        );
        assert_eq!(p.len(), 2, "{p:#?}");
        assert!(
            p[0].contains("argv[0]") && p[0].contains("absolute"),
            "{p:#?}"
        );
        assert!(
            p[1].contains("argv[1]") && p[1].contains("unknown macro"),
            "{p:#?}"
        );
    }

    #[test]
    fn empty_on_list_is_rejected() {
        let p = problems(r#"{ "domains": { "d": { "exec": [{ "on": [], "lines": [] }] } } }"#);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("never runs"), "{p:?}");
    }

    #[test]
    fn a_volume_or_device_appears_once_in_the_config() {
        let vol =
            r#"{ "device": "/dev/xvdf", "source": "x", "volume-id": "vol-0123456789abcdef0" }"#;
        let p = problems(&format!(
            r#"{{ "domains": {{ "a": {{ "attach-volume": [{vol}] }}, "b": {{ "attach-volume": [{vol}] }} }} }}"#
        ));
        assert_eq!(p.len(), 2, "{p:#?}");
        assert!(
            p.iter()
                .all(|l| l.contains("already used at $.domains.a[\"attach-volume\"][0]")),
            "{p:#?}"
        );
    }

    #[test]
    fn hostname_fits_the_kernel() {
        let long = format!("{}.example.com", "a".repeat(60));
        let p = problems(&format!(r#"{{ "hostname": "{long}", "domains": {{}} }}"#));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("1 to 64 characters"), "{p:?}");
    }

    #[test]
    fn both_hostname_spellings_conflict() {
        let p = problems(r#"{ "hostname": "a", "set-hostname": "b", "domains": {} }"#);
        assert_eq!(p.len(), 1, "{p:?}");
    }

    #[test]
    fn webhook_and_record_options_are_checked() {
        let p = problems(
            r#"{ "domains": { "d": {
            "update-route53": [{ "hostedzone": "Z1", "name": "a", "address": "pubic", "wait-insync": "yes" }],
            "notify": [
              { "backend": "webhook", "options": { "url": "ftp://x", "headers": { "Bad Header": "v" }, "retries": 11 } },
              { "backend": "webhok", "options": {} },
              { "backend": "aws-sqs", "options": { "queue-url": "https://q", "timeout": 0 } }
            ] } } }"#,
        );
        let text = p.join("\n");
        for expected in [
            "unknown address \"pubic\"; did you mean \"public\"?",
            "[\"wait-insync\"] expected true or false, found a string",
            "is not an https:// (or http://) URL",
            "\"Bad Header\" is not an HTTP header name",
            ".retries expected a whole number from 0 to 10",
            "unknown backend \"webhok\"; did you mean \"webhook\"?",
            ".timeout expected seconds, more than 0 and at most 60",
        ] {
            assert!(text.contains(expected), "{expected:?} not in:\n{text}");
        }
        assert_eq!(p.len(), 7, "{text}");
    }

    #[test]
    fn a_json_body_renders_to_valid_json() {
        let c = Config::from_text(
            "t",
            r#"{ "domains": { "d": { "notify": [{ "backend": "webhook",
                "options": { "url": "https://hooks.example.com/x", "headers": { "X-Domain": "{domain}" } },
                "envelope": { "body": { "text": "{domain}: {error}", "n": 3, "ok": true, "tags": ["{domain}"] } } }] } } }"#,
        )
        .unwrap();
        let spec = &c.domains[0].notify[0];
        let Some(super::Body::Json(body)) = &spec.body else {
            panic!("a JSON body: {:?}", spec.body);
        };
        let mut values = MacroValues::default();
        values.set("domain", "d");
        values.set("error", "said \"no\"\nthen left");
        assert_eq!(
            body.render(&values),
            serde_json::json!({ "text": "d: said \"no\"\nthen left", "n": 3, "ok": true, "tags": ["d"] })
        );
        assert_eq!(spec.retries, 3);
        assert_eq!(spec.timeout, Duration::from_secs(5));
    }

    /// `problems` of one domain `d` with `players` given as `players`.
    fn players_problems(players: &str) -> Vec<String> {
        problems(&format!(
            r#"{{ "domains": {{ "d": {{ "players": {players} }} }} }}"#
        ))
    }

    #[test]
    fn players_probes_are_checked() {
        let ok = Config::from_text(
            "t",
            r#"{ "domains": { "d": { "players": { "probe": "minecraft" } } } }"#,
        )
        .unwrap();
        let spec = ok.domains[0].players.as_ref().unwrap();
        assert!(matches!(&spec.probe, Probe::Minecraft(a) if a == "127.0.0.1:25565"));
        assert_eq!(spec.every, PlayersSpec::DEFAULT_EVERY);
        let p = players_problems(r#"{ "probe": "minecraf" }"#);
        assert!(p[0].contains("did you mean \"minecraft\""), "{p:?}");
        let p = players_problems(r#"{ "probe": "tcp" }"#);
        assert!(
            p[0].contains("the \"tcp\" probe needs \"address\""),
            "{p:?}"
        );
        let p = players_problems(r#"{ "probe": "command" }"#);
        assert!(p[0].contains("needs \"argv\""), "{p:?}");
        let p = players_problems(r#"{ "probe": "command", "argv": ["rcon"] }"#);
        assert!(p[0].contains("absolute path"), "{p:?}");
        let p = players_problems(r#"{ "probe": "a2s", "address": "localhost" }"#);
        assert!(p[0].contains("host and port"), "{p:?}");
        let p = players_problems(r#"{ "probe": "a2s", "every": 5, "timeout": 10 }"#);
        assert!(p[0].contains("not be longer than \"every\""), "{p:?}");
        let p = players_problems(r#"{ "probe": "push", "address": "127.0.0.1:1" }"#);
        assert!(p[0].contains("PUT /v1/players"), "{p:?}");
        let p = players_problems(r#"{ "probe": "minecraft", "argv": ["/bin/true"] }"#);
        assert!(
            p[0].contains("not used by the \"minecraft\" probe"),
            "{p:?}"
        );
        assert!(
            players_problems(r#"{ "probe": "tcp", "address": "0.0.0.0:2456", "max": 10 }"#)
                .is_empty()
        );
    }

    #[test]
    fn idle_needs_players_and_a_known_action() {
        let p = problems(r#"{ "idle": { "after": 60 }, "domains": { "d": {} } }"#);
        assert!(p[0].contains("would never be idle"), "{p:?}");
        let p = problems(
            r#"{ "idle": { "after": 60, "action": "halt" }, "domains": { "d": { "players": { "probe": "push" } } } }"#,
        );
        assert!(p[0].contains("unknown value \"halt\""), "{p:?}");
        let c = Config::from_text(
            "t",
            r#"{ "idle": { "after": 60, "action": "stop" }, "domains": { "d": { "players": { "probe": "push" } } } }"#,
        )
        .unwrap();
        let idle = c.idle.unwrap();
        assert_eq!(
            idle.after_start,
            Duration::from_secs(60),
            "after-start defaults to after"
        );
        assert_eq!(idle.action, IdleAction::Stop);
    }

    #[test]
    fn the_status_endpoint_wants_a_token_off_loopback() {
        let p = problems(r#"{ "status": { "listen": "0.0.0.0:9358" }, "domains": {} }"#);
        assert!(p[0].contains("give \"token-file\""), "{p:?}");
        assert!(
            problems(r#"{ "status": { "listen": "127.0.0.1:9358" }, "domains": {} }"#).is_empty()
        );
        assert!(problems(
            r#"{ "status": { "listen": "[::]:9358", "token-file": "/etc/t" }, "domains": {} }"#
        )
        .is_empty());
        let p = problems(r#"{ "status": { "token-file": "/etc/t" }, "domains": {} }"#);
        assert!(p[0].contains("without \"listen\""), "{p:?}");
        let p = problems(r#"{ "status": { "listen": "game:9358" }, "domains": {} }"#);
        assert!(p[0].contains("not an IP address and port"), "{p:?}");
    }

    #[test]
    fn the_game_events_have_their_places() {
        let p =
            problems(r#"{ "domains": { "d": { "exec": [{ "on": ["status"], "lines": [] }] } } }"#);
        assert!(p[0].contains("notification only"), "{p:?}");
        let rec = |on: &str| {
            problems(&format!(
                r#"{{ "domains": {{ "d": {{ "update-route53": [{{ "hostedzone": "Z1", "name": "a.example", "delete-on": ["{on}"] }}] }} }} }}"#
            ))
        };
        assert!(rec("idle").is_empty(), "{:?}", rec("idle"));
        assert!(rec("ready")[0].contains("does not end the daemon"));
        let vol = problems(
            r#"{ "domains": { "d": { "attach-volume": [{ "device": "/dev/xvdf", "source": "c", "create": { "Size": 1 }, "detach-on": ["idle"] }] } } }"#,
        );
        assert!(
            vol.iter()
                .any(|p| p.contains("\"idle\" does not end the daemon")),
            "{vol:?}"
        );
        // `ready` and `status` notifications are for domains that count
        // players, unless the matrix names them.
        let c = Config::from_text(
            "t",
            r#"{ "domains": {
                "plain": { "notify": [{ "backend": "aws-sqs", "options": { "queue-url": "https://q" } }] },
                "asked": { "notify": [{ "backend": "aws-sqs", "options": { "queue-url": "https://q" },
                           "matrix": { "ready": { "enabled": true } } }] },
                "game": { "players": { "probe": "push" },
                          "notify": [{ "backend": "aws-sqs", "options": { "queue-url": "https://q" } }] } } }"#,
        )
        .unwrap();
        let n = |i: usize| &c.domains[i].notify[0];
        assert!(!n(0).enabled_for(Event::Ready) && !n(0).enabled_for(Event::Status));
        assert!(n(0).enabled_for(Event::Started));
        assert!(n(1).enabled_for(Event::Ready) && !n(1).enabled_for(Event::Status));
        assert!(n(2).enabled_for(Event::Ready) && n(2).enabled_for(Event::Status));
    }
}

//! The typed JSON event: the body of every notification without an
//! `envelope.body`. Documented in `doc/events.md`, described by
//! `schema/event.schema.json`; [`VERSION`] changes with any change to the
//! format (a field added, removed or changed in meaning), as the schema
//! admits no field it does not name.

use std::collections::BTreeMap;

use serde::Serialize;

/// The event format's version, `version` in every event.
pub const VERSION: u32 = 4;

/// One notification's body.
#[derive(Debug, Clone, Serialize)]
pub struct EventBody {
    pub version: u32,
    /// `started`, `ready`, `failed`, `stopping`, `interrupted`,
    /// `terminating`, `rebalance`, `maintenance`, `idle`, `draining` or
    /// `status`.
    pub event: String,
    /// When the event was reported, RFC 3339.
    pub time: String,
    pub domain: String,
    pub transaction_id: String,
    pub daemon: Daemon,
    pub instance: Instance,
    pub volumes: Vec<Volume>,
    pub records: Vec<Record>,
    /// The spot notice, if one arrived.
    pub interruption: Option<Interruption>,
    /// What went wrong in this domain (and, for `failed`, in the daemon).
    pub errors: Vec<String>,
    /// Seconds each phase of this domain took, by phase.
    pub timings: BTreeMap<String, f64>,
    /// When each milestone of this domain was reached, in seconds since
    /// the instance booted.
    pub since_boot: BTreeMap<String, f64>,
    /// This domain's players, if it counts them.
    pub players: Option<crate::status::Players>,
    /// The daemon's state, as the status socket tells it.
    pub status: Status,
    /// The Auto Scaling lifecycle action the daemon completes after this
    /// event (`terminating`, or `failed` with a launch hook).
    pub lifecycle_action: Option<LifecycleAction>,
}

/// The daemon's state when the event was sent.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// `starting`, `ready`, `draining`, `stopping` or `failed`.
    pub state: crate::status::State,
    /// Whether this domain is ready.
    pub ready: bool,
    pub draining: bool,
    pub ready_to_close: bool,
    /// Summed over the instance's domains that count players.
    pub players: crate::status::Players,
}

/// A lifecycle action of the instance's Auto Scaling group and how the
/// daemon completes it.
#[derive(Debug, Clone, Serialize)]
pub struct LifecycleAction {
    pub group: String,
    pub hook: String,
    /// `autoscaling:EC2_INSTANCE_LAUNCHING` or `autoscaling:EC2_INSTANCE_TERMINATING`.
    pub transition: &'static str,
    /// `CONTINUE` or `ABANDON`.
    pub result: &'static str,
    /// Why: the hooks succeeded, which failed, or why init failed.
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Daemon {
    pub name: &'static str,
    pub version: &'static str,
    pub pid: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    pub id: String,
    #[serde(rename = "type")]
    pub instance_type: String,
    pub launch_index: String,
    pub region: String,
    pub availability_zone: String,
    pub addresses: Addresses,
}

#[derive(Debug, Clone, Serialize)]
pub struct Addresses {
    pub public_ipv4: Vec<String>,
    pub ipv6: Vec<String>,
    pub private_ipv4: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Volume {
    pub id: String,
    /// The AttachVolume device name (`/dev/xvdf`).
    pub device: String,
    /// The block device it appeared as (under the device root).
    pub block_device: String,
    /// `volume-id`, `pool`, `create` or `follow`.
    pub source: &'static str,
    pub pool: Option<String>,
    /// `attached` (by this run), `created` (and attached by this run), or
    /// `adopted` (it was attached to this instance already).
    pub operation: &'static str,
    /// This run has detached it again (`detach-on`, or a rollback).
    pub released: bool,
    /// For `f`: the dataset's generation this copy holds.
    pub generation: Option<u64>,
    /// For `f`: restored here from a snapshot, and how long that waited.
    pub restored_from: Option<Restored>,
    /// Snapshots this run took of it.
    pub snapshots: Vec<TakenSnapshot>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub snapshot: String,
    pub waited_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TakenSnapshot {
    pub id: String,
    pub kind: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub hosted_zone: String,
    pub name: String,
    #[serde(rename = "type")]
    pub record_type: String,
    pub values: Vec<String>,
    pub ttl: i64,
    pub change_id: String,
    /// Deleted again by `delete-on`.
    pub deleted: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Interruption {
    /// `terminate`, `stop` or `hibernate`.
    pub action: String,
    /// When the instance will be interrupted, as the notice says.
    pub time: String,
}

impl Daemon {
    pub fn this() -> Daemon {
        Daemon {
            name: "ec2fleetd",
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
        }
    }
}

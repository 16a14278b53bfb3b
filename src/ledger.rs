//! The one record of what a domain holds: the volumes this run attached,
//! created or marked, and the Route53 records it set. Each entry is written
//! the moment its AWS change lands (an AttachVolume *before* it is sent: its
//! answer can be lost while the attachment lands), and every exit path reads
//! it — commit, rollback, the init timeout, an init cut short by a notice or
//! a signal, `detach-on`, `delete-on`, the event body and the hooks' macros.
//!
//! The record is shared between a domain's bring-up task and the daemon, so
//! that what a cancelled bring-up had done is still known after it is gone.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::config::VolumeSource;
use crate::dns::Placed;

/// How far a volume got with this instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Created by this run, not attached.
    Created,
    /// AttachVolume was sent; whether it landed is not known.
    Attaching,
    /// Attached to this instance (by this run, or already before it).
    Attached,
    /// Attached, and its block device found.
    Ready,
    /// Given up again by this run: detached, and deleted if it created it.
    Released,
}

/// One volume of the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldVolume {
    /// Its entry's index in the domain's `attach-volume`.
    pub spec: usize,
    pub volume_id: String,
    pub source: VolumeSource,
    /// The AttachVolume device name.
    pub device_name: String,
    pub stage: Stage,
    /// This run attached it (`{attach_op}` = `true`); false: it already was.
    pub attached_now: bool,
    /// This run created it.
    pub created: bool,
    /// Carries a transaction mark (`transc-id`, and `in-transit` when
    /// created) that commit removes.
    pub marked: bool,
    /// The claim is final: its marks are gone, a rollback leaves it.
    pub committed: bool,
    /// The block device, under the device root, once found.
    pub device: Option<PathBuf>,
    /// For a dataset (`f`): the generation this claim makes (tagged at
    /// commit), or the one the volume holds.
    pub generation: Option<u64>,
    /// Restored from this snapshot, and how long (milliseconds) the
    /// restore waited for it.
    pub restored_from: Option<(String, u64)>,
}

impl HeldVolume {
    /// Whether the volume is (or may be) attached here.
    pub fn on_this_instance(&self) -> bool {
        matches!(
            self.stage,
            Stage::Attaching | Stage::Attached | Stage::Ready
        )
    }
}

/// What one volume needs when the domain ends without committing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Find out whether an AttachVolume whose answer never came landed.
    FindOut,
    Detach,
    Delete,
    /// Remove the transaction marks.
    Unmark,
}

/// How an uncommitted volume is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The domain failed: undo what this run did (detach what it attached,
    /// delete what it created, drop its marks).
    Rollback,
    /// Bring-up was cut short by a notice or a signal: what is attached is
    /// the domain's and stays (its hooks ran on it; `detach-on` may release
    /// it), so its marks go as at commit; a volume created but never
    /// attached is deleted.
    Keep,
}

/// The steps that leave `v` as `ending` asks, in order. A volume still
/// `Attaching` first needs [`Step::FindOut`]; call again once its stage is
/// known. Committed and released volumes need nothing; nor does a volume
/// that was attached before this run (a restart adopts it again).
pub fn steps(v: &HeldVolume, ending: Ending) -> Vec<Step> {
    if v.committed {
        return Vec::new();
    }
    match (v.stage, ending) {
        (Stage::Released, _) => Vec::new(),
        (Stage::Attaching, _) => vec![Step::FindOut],
        (Stage::Created, _) => vec![Step::Delete],
        (Stage::Attached | Stage::Ready, Ending::Rollback) if v.attached_now => {
            if v.created {
                vec![Step::Detach, Step::Delete]
            } else if v.marked {
                vec![Step::Detach, Step::Unmark]
            } else {
                vec![Step::Detach]
            }
        }
        (Stage::Attached | Stage::Ready, _) if v.marked => vec![Step::Unmark],
        (Stage::Attached | Stage::Ready, _) => Vec::new(),
    }
}

/// Everything the record holds, as one value.
#[derive(Debug, Clone, Default)]
pub struct Held {
    /// In the order this run got hold of them.
    pub volumes: Vec<HeldVolume>,
    /// Records set by this run (each knows its index in `update-route53`),
    /// noted as each change is sent; emptied when they are put back.
    pub records: Vec<Placed>,
    /// `name TYPE` of the records `delete-on` deleted.
    pub deleted_records: Vec<String>,
    /// What went wrong in this domain, for the event.
    pub errors: Vec<String>,
    /// Seconds each phase took, for the event.
    pub timings: BTreeMap<String, f64>,
    /// When each milestone was reached, in seconds since the instance
    /// booted (volumes, restore, records, started hooks, ready, first
    /// player), for the event and the status.
    pub since_boot: BTreeMap<String, f64>,
    /// The `failed` hooks ran (before a rollback): whether they succeeded.
    pub failed_hooks_ok: Option<bool>,
    /// Baton volumes this run won (a dataset's move), to give up on rollback.
    pub batons: Vec<String>,
    /// Snapshots this run took: (volume, snapshot, kind).
    pub snapshots: Vec<(String, String, String)>,
}

impl Held {
    pub fn volume(&self, id: &str) -> Option<&HeldVolume> {
        self.volumes.iter().find(|v| v.volume_id == id)
    }

    /// The volume held for spec `spec`, once its device is found.
    pub fn ready_of(&self, spec: usize) -> Option<&HeldVolume> {
        self.ready_volumes().find(|v| v.spec == spec)
    }

    /// The volumes still held, for macros and hooks: found and not released.
    pub fn ready_volumes(&self) -> impl Iterator<Item = &HeldVolume> {
        self.volumes.iter().filter(|v| v.stage == Stage::Ready)
    }
}

/// A domain's record, shared by its bring-up and the daemon.
#[derive(Debug, Default)]
pub struct Ledger {
    held: Mutex<Held>,
}

impl Ledger {
    /// A copy of what is held now.
    pub fn snapshot(&self) -> Held {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // A panic elsewhere must not lose the record: it is still right.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the record.
    pub fn with<T>(&self, f: impl FnOnce(&mut Held) -> T) -> T {
        f(&mut self.lock())
    }

    fn with_volume(&self, id: &str, f: impl FnOnce(&mut HeldVolume)) {
        let mut held = self.lock();
        if let Some(v) = held.volumes.iter_mut().find(|v| v.volume_id == id) {
            f(v);
        }
    }

    /// CreateVolume answered: the volume exists, marked `in-transit`.
    pub fn created(&self, spec: usize, id: &str, source: VolumeSource, device_name: &str) {
        self.lock().volumes.push(HeldVolume {
            spec,
            volume_id: id.to_string(),
            source,
            device_name: device_name.to_string(),
            stage: Stage::Created,
            attached_now: false,
            created: true,
            marked: true,
            committed: false,
            device: None,
            generation: None,
            restored_from: None,
        });
    }

    /// About to send AttachVolume: from now on the volume may be attached.
    pub fn attach_sent(&self, spec: usize, id: &str, source: VolumeSource, device_name: &str) {
        let mut held = self.lock();
        if let Some(v) = held.volumes.iter_mut().find(|v| v.volume_id == id) {
            v.stage = Stage::Attaching;
            v.attached_now = true;
            return;
        }
        held.volumes.push(HeldVolume {
            spec,
            volume_id: id.to_string(),
            source,
            device_name: device_name.to_string(),
            stage: Stage::Attaching,
            attached_now: true,
            created: false,
            marked: false,
            committed: false,
            device: None,
            generation: None,
            restored_from: None,
        });
    }

    /// The volume is known not to be attached here (the attach was refused,
    /// or found not to have landed): a volume this run created stays in the
    /// record to be deleted; any other leaves it.
    pub fn not_attached(&self, id: &str) {
        let mut held = self.lock();
        if let Some(i) = held.volumes.iter().position(|v| v.volume_id == id) {
            if held.volumes[i].created {
                held.volumes[i].stage = Stage::Created;
                held.volumes[i].attached_now = false;
            } else {
                held.volumes.remove(i);
            }
        }
    }

    /// Found attached here before this run touched it.
    pub fn adopted(
        &self,
        spec: usize,
        id: &str,
        source: VolumeSource,
        device_name: &str,
        marked: bool,
    ) {
        let mut held = self.lock();
        held.volumes.retain(|v| v.volume_id != id);
        held.volumes.push(HeldVolume {
            spec,
            volume_id: id.to_string(),
            source,
            device_name: device_name.to_string(),
            stage: Stage::Attached,
            attached_now: false,
            created: false,
            marked,
            committed: false,
            device: None,
            generation: None,
            restored_from: None,
        });
    }

    pub fn attached(&self, id: &str) {
        self.with_volume(id, |v| v.stage = Stage::Attached);
    }

    /// The transaction mark was set on it.
    pub fn marked(&self, id: &str) {
        self.with_volume(id, |v| v.marked = true);
    }

    pub fn unmarked(&self, id: &str) {
        self.with_volume(id, |v| v.marked = false);
    }

    pub fn ready(&self, id: &str, device: PathBuf) {
        self.with_volume(id, |v| {
            v.stage = Stage::Ready;
            v.device = Some(device);
        });
    }

    pub fn committed(&self, id: &str) {
        self.with_volume(id, |v| {
            v.committed = true;
            v.marked = false;
        });
    }

    /// The generation the claim of `id` makes (a dataset's).
    pub fn generation(&self, id: &str, generation: u64) {
        self.with_volume(id, |v| v.generation = Some(generation));
    }

    /// `id` was restored from `snapshot` after waiting `waited` seconds.
    pub fn restored(&self, id: &str, snapshot: &str, waited: std::time::Duration) {
        self.milestone("restore");
        let ms = waited.as_millis() as u64;
        self.with_volume(id, |v| v.restored_from = Some((snapshot.to_string(), ms)));
    }

    /// Detached by this run (and deleted, if it created it).
    pub fn released(&self, id: &str) {
        self.with_volume(id, |v| v.stage = Stage::Released);
    }

    /// A record may be set: its change is being sent, or was taken (then
    /// with its change ID). Replaces what was noted of it before.
    pub fn record_set(&self, placed: &Placed) {
        let mut held = self.lock();
        held.records
            .retain(|p| !(p.index == placed.index && p.name == placed.name));
        held.records.push(placed.clone());
    }

    /// Route53 refused the record's change: it is not set.
    pub fn record_refused(&self, placed: &Placed) {
        self.lock()
            .records
            .retain(|p| !(p.index == placed.index && p.name == placed.name));
    }

    /// The records were put back: they are no longer this instance's.
    pub fn records_put_back(&self, put_back: &[Placed]) {
        self.lock().records.retain(|p| {
            !put_back
                .iter()
                .any(|q| q.index == p.index && q.name == p.name)
        });
    }

    pub fn error(&self, message: impl Into<String>) {
        let message = message.into();
        let mut held = self.lock();
        if !held.errors.contains(&message) {
            held.errors.push(message);
        }
    }

    /// Phase `name` took `seconds`.
    pub fn time(&self, name: &str, seconds: f64) {
        self.lock().timings.insert(name.to_string(), seconds);
    }

    /// Milestone `name` is reached now (the first time counts).
    pub fn milestone(&self, name: &str) {
        if let Some(at) = uptime() {
            self.lock().since_boot.entry(name.to_string()).or_insert(at);
        }
    }
}

/// Seconds since the instance booted (`/proc/uptime`).
pub fn uptime() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some((secs * 1000.0).round() / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(stage: Stage) -> HeldVolume {
        HeldVolume {
            spec: 0,
            volume_id: "vol-1".into(),
            source: VolumeSource::Pool,
            device_name: "/dev/xvdf".into(),
            stage,
            attached_now: true,
            created: false,
            marked: true,
            committed: false,
            device: None,
            generation: None,
            restored_from: None,
        }
    }

    #[test]
    fn a_rollback_undoes_what_this_run_did() {
        let claimed = volume(Stage::Ready);
        assert_eq!(
            steps(&claimed, Ending::Rollback),
            [Step::Detach, Step::Unmark]
        );
        let created = HeldVolume {
            created: true,
            ..volume(Stage::Attached)
        };
        assert_eq!(
            steps(&created, Ending::Rollback),
            [Step::Detach, Step::Delete]
        );
        let never_attached = HeldVolume {
            created: true,
            ..volume(Stage::Created)
        };
        assert_eq!(steps(&never_attached, Ending::Rollback), [Step::Delete]);
    }

    #[test]
    fn an_unanswered_attach_is_found_out_first() {
        for ending in [Ending::Rollback, Ending::Keep] {
            assert_eq!(steps(&volume(Stage::Attaching), ending), [Step::FindOut]);
        }
    }

    #[test]
    fn a_cut_init_keeps_what_is_attached_and_unmarks_it() {
        assert_eq!(steps(&volume(Stage::Ready), Ending::Keep), [Step::Unmark]);
        assert_eq!(
            steps(&volume(Stage::Attached), Ending::Keep),
            [Step::Unmark]
        );
        let created = HeldVolume {
            created: true,
            ..volume(Stage::Created)
        };
        assert_eq!(steps(&created, Ending::Keep), [Step::Delete]);
    }

    #[test]
    fn committed_released_and_adopted_volumes_are_left() {
        let committed = HeldVolume {
            committed: true,
            ..volume(Stage::Ready)
        };
        let adopted = HeldVolume {
            attached_now: false,
            marked: false,
            ..volume(Stage::Ready)
        };
        for ending in [Ending::Rollback, Ending::Keep] {
            assert!(steps(&committed, ending).is_empty());
            assert!(steps(&volume(Stage::Released), ending).is_empty());
            assert!(steps(&adopted, ending).is_empty());
        }
        // An adopted volume still carrying an earlier run's marks stays
        // attached either way (the next run adopts it again), unmarked.
        let adopted_marked = HeldVolume {
            attached_now: false,
            ..volume(Stage::Ready)
        };
        for ending in [Ending::Rollback, Ending::Keep] {
            assert_eq!(steps(&adopted_marked, ending), [Step::Unmark]);
        }
    }

    #[test]
    fn the_record_follows_an_attach() {
        let l = Ledger::default();
        l.attach_sent(0, "vol-1", VolumeSource::Pool, "/dev/xvdf");
        assert_eq!(l.snapshot().volumes[0].stage, Stage::Attaching);
        l.not_attached("vol-1");
        assert!(l.snapshot().volumes.is_empty(), "a lost race holds nothing");
        l.created(1, "vol-2", VolumeSource::Create, "/dev/xvdg");
        l.attach_sent(1, "vol-2", VolumeSource::Create, "/dev/xvdg");
        l.not_attached("vol-2");
        let held = l.snapshot();
        assert_eq!(held.volumes[0].stage, Stage::Created, "still to delete");
        l.attach_sent(1, "vol-2", VolumeSource::Create, "/dev/xvdg");
        l.attached("vol-2");
        l.ready("vol-2", "/dev/nvme1n1".into());
        l.committed("vol-2");
        let v = &l.snapshot().volumes[0];
        assert!(v.committed && !v.marked && v.stage == Stage::Ready);
    }
}

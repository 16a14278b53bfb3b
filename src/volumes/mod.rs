//! `attach-volume`: get each domain's data volumes attached to this instance,
//! from the sources in order (`x` given, `p` pool, `c` create), and find
//! their block devices; undo a domain's half-done work, release volumes on
//! request, and clean up what a killed run left. Talks to EC2.
//!
//! Every volume this run attaches or creates carries its transaction tag
//! until the domain commits; a created one is also `in-transit`. So a run
//! that dies half-way leaves marks the next run on this instance can find.

mod cleanup;
mod create;
mod device;
pub mod follow;
mod pool;
pub mod snapshot;
pub mod tags;

pub use cleanup::sweep;
pub use pool::{order_candidates, Candidate};

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Result};
use aws_sdk_ec2::types::{Tag, Volume, VolumeAttachmentState};
use tokio::time::Instant;

use crate::aws;
use crate::config::{VolumeSource, VolumeSpec};
use crate::imds::InstanceFacts;
use crate::ledger::{self, Ending, Ledger, Step};

/// How long an attachment may stay `attaching`.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the block device may take to appear once attached.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a detach may take before it is reported as stuck.
const DETACH_TIMEOUT: Duration = Duration::from_secs(120);

/// What volume work needs to know.
pub struct Ctx<'a> {
    pub ec2: &'a aws_sdk_ec2::Client,
    pub facts: &'a InstanceFacts,
    pub device_root: &'a Path,
    pub domain: &'a str,
    pub transaction_id: &'a str,
    /// The domain's record: every change is noted there as it lands.
    pub ledger: &'a Ledger,
}

/// A volume a source got hold of.
#[derive(Debug)]
pub struct Claim {
    pub volume_id: String,
}

/// Why an AttachVolume did not happen.
pub enum AttachError {
    /// Someone else has it, or it is not `available` (`VolumeInUse`,
    /// `IncorrectState`): try another.
    Taken(String),
    Failed(anyhow::Error),
}

/// Tries the spec's sources in order; the first that succeeds wins.
/// `index` is the spec's place in the domain's `attach-volume`. Returns the
/// volume ID; the record holds the rest.
pub async fn attach(ctx: &Ctx<'_>, index: usize, spec: &VolumeSpec) -> Result<String> {
    let mut failures = Vec::new();
    for &source in &spec.sources {
        let at = At {
            index,
            source,
            device: &spec.device,
        };
        let outcome = match source {
            VolumeSource::Given => attach_given(ctx, &at, spec).await,
            // One look at the pool in this zone tells both whether a volume
            // of it is attached here already and which are free.
            VolumeSource::Pool | VolumeSource::Create => match pool::in_zone(ctx, spec).await {
                Err(e) => Err(SourceError::Failed(e)),
                Ok(in_zone) => match held_here(ctx, &at, spec, &in_zone).await {
                    Ok(Some(held)) => Ok(held),
                    Ok(None) if source == VolumeSource::Pool => {
                        match pool::claim(ctx, &at, spec, in_zone).await {
                            Ok(Some(claim)) => Ok(claim),
                            Ok(None) => Err(SourceError::Unavailable("no free volume".into())),
                            Err(e) => Err(SourceError::Failed(e)),
                        }
                    }
                    Ok(None) => {
                        let first = spec.sources.contains(&VolumeSource::Follow);
                        let baton = if first {
                            follow::take_first_baton(ctx, spec).await
                        } else {
                            Ok(true)
                        };
                        match baton {
                            Ok(true) => create::create(ctx, &at, spec, first)
                                .await
                                .map_err(SourceError::Failed),
                            // Another instance made the first copy: follow it.
                            Ok(false) => match follow::follow(ctx, &at, spec).await {
                                Ok(Some(claim)) => Ok(claim),
                                Ok(None) => Err(SourceError::Failed(anyhow!(
                                    "the first copy of pool {:?} went away again",
                                    spec.pool_name.as_deref().unwrap_or_default()
                                ))),
                                Err(e) => Err(SourceError::Failed(e)),
                            },
                            Err(e) => Err(SourceError::Failed(e)),
                        }
                    }
                    Err(e) => Err(SourceError::Failed(e)),
                },
            },
            VolumeSource::Follow => match follow::follow(ctx, &at, spec).await {
                Ok(Some(claim)) => Ok(claim),
                Ok(None) => Err(SourceError::Unavailable(
                    "the pool holds no data yet".into(),
                )),
                Err(e) => Err(SourceError::Failed(e)),
            },
        };
        let claim = match outcome {
            Ok(c) => c,
            Err(SourceError::Unavailable(why)) => {
                tracing::info!(
                    "[{}] volume source {:?} for {}: {why}",
                    ctx.domain,
                    source.letter(),
                    spec.device
                );
                failures.push(format!("{}: {why}", source.letter()));
                continue;
            }
            Err(SourceError::Failed(e)) => {
                return Err(e.context(format!(
                    "volume source {:?} for {} failed (later sources are not tried: they could put an empty volume in its place)",
                    source.letter(),
                    spec.device
                )));
            }
        };
        let id = claim.volume_id;
        match device::wait_for(ctx.device_root, &id, &spec.device, DEVICE_TIMEOUT).await {
            Ok(path) => {
                let held = ctx.ledger.snapshot();
                let v = held.volume(&id).expect("a claim is in the record");
                tracing::info!(
                    "[{}] {id} is at {} (source {}, {})",
                    ctx.domain,
                    path.display(),
                    source.letter(),
                    if v.created {
                        "created"
                    } else if v.attached_now {
                        "attached now"
                    } else {
                        "already attached"
                    }
                );
                ctx.ledger.ready(&id, path);
                return Ok(id);
            }
            Err(e) => {
                if let Err(undo) = settle_one(ctx, &id, Ending::Rollback).await {
                    tracing::error!("[{}] rollback of {id} incomplete: {undo:#}", ctx.domain);
                }
                return Err(e);
            }
        }
    }
    bail!(
        "no volume source worked for {}: {}",
        spec.device,
        failures.join("; ")
    )
}

/// Which spec and source a claim is for, as the record notes it.
pub(crate) struct At<'a> {
    pub index: usize,
    pub source: VolumeSource,
    pub device: &'a str,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A pool volume of this domain already attached here (a restarted daemon).
async fn held_here(
    ctx: &Ctx<'_>,
    at: &At<'_>,
    spec: &VolumeSpec,
    in_zone: &[Volume],
) -> Result<Option<Claim>> {
    let pool = spec
        .pool_name
        .as_deref()
        .expect("validated: p and c have a pool-name");
    for volume in in_zone {
        let id = volume.volume_id().unwrap_or_default();
        let Some(att) = volume
            .attachments()
            .iter()
            .find(|a| a.instance_id() == Some(&ctx.facts.instance_id))
        else {
            continue;
        };
        if att.device() != Some(spec.device.as_str()) {
            // Another volume spec of this domain may use it under that name.
            continue;
        }
        tracing::info!(
            "[{}] {id} of pool {pool:?} is already attached here as {}",
            ctx.domain,
            spec.device
        );
        ctx.ledger
            .adopted(at.index, id, at.source, at.device, is_marked(volume));
        wait_attached(ctx, id).await?;
        return Ok(Some(Claim {
            volume_id: id.to_string(),
        }));
    }
    Ok(None)
}

/// Whether a volume carries a run's marks.
pub(crate) fn is_marked(volume: &Volume) -> bool {
    tags::value(volume, tags::TRANSACTION).is_some()
        || tags::value(volume, tags::IN_TRANSIT).is_some()
}

/// Why a source gave no volume.
enum SourceError {
    /// Nothing to be had here: the next source may try.
    Unavailable(String),
    /// Something went wrong (AWS unreachable, a call refused): trying the
    /// next source could put an empty volume where the data volume belongs.
    Failed(anyhow::Error),
}

/// Source `x`: attach the given volume, or find it already attached here.
/// A volume ID that does not exist is an error, not a reason to try the
/// next source: a new volume in its place would be an empty world.
async fn attach_given(ctx: &Ctx<'_>, at: &At<'_>, spec: &VolumeSpec) -> Result<Claim, SourceError> {
    let id = spec
        .volume_id
        .as_deref()
        .expect("validated: x has a volume-id");
    let device = spec.device.as_str();
    let volume = match describe_opt(ctx.ec2, id).await {
        Ok(Some(v)) => v,
        Ok(None) => {
            return Err(SourceError::Failed(anyhow!(
                "volume {id} does not exist in {} (is the region right? AWS_REGION or the instance's region picks it)",
                ctx.facts.region
            )))
        }
        Err(e) => return Err(SourceError::Failed(e)),
    };
    let zone = volume.availability_zone().unwrap_or_default();
    if zone != ctx.facts.zone {
        return Err(SourceError::Unavailable(format!(
            "{id} is in {zone}, this instance in {}: a volume attaches only within its zone",
            ctx.facts.zone
        )));
    }
    // A volume without multi-attach has at most one attachment.
    if let Some(att) = volume.attachments().first() {
        let holder = att.instance_id().unwrap_or_default();
        if holder == ctx.facts.instance_id {
            if att.device() != Some(device) {
                return Err(SourceError::Failed(anyhow!(
                    "{id} is already attached here as {}, not {device}",
                    att.device().unwrap_or("?")
                )));
            }
            tracing::info!("[{}] {id} is already attached here as {device}", ctx.domain);
            ctx.ledger
                .adopted(at.index, id, at.source, at.device, is_marked(&volume));
            wait_attached(ctx, id).await.map_err(SourceError::Failed)?;
            return Ok(Claim {
                volume_id: id.to_string(),
            });
        }
        return Err(SourceError::Unavailable(format!(
            "{id} is attached to {holder}: it is not free"
        )));
    }
    match attach_call(ctx, at, id, claim_marks(ctx, false)).await {
        Ok(()) => Ok(Claim {
            volume_id: id.to_string(),
        }),
        Err(AttachError::Taken(code)) => Err(SourceError::Unavailable(format!(
            "{id} is not free ({code})"
        ))),
        Err(AttachError::Failed(e)) => Err(SourceError::Failed(e)),
    }
}

/// Whether `id` is attached (or attaching) to this instance now.
async fn attached_here(ctx: &Ctx<'_>, id: &str) -> Result<bool> {
    Ok(describe_opt(ctx.ec2, id).await?.is_some_and(|v| {
        v.attachments()
            .iter()
            .any(|a| a.instance_id() == Some(&ctx.facts.instance_id))
    }))
}

/// AttachVolume; then `marks` on the volume at once (so that an interrupted
/// run leaves a trace), then wait until the attachment reads `attached`.
/// The record hears of the attach before it is sent: an answer can be lost
/// (or the bring-up cancelled) while the attachment lands.
pub(crate) async fn attach_call(
    ctx: &Ctx<'_>,
    at: &At<'_>,
    id: &str,
    marks: Vec<Tag>,
) -> Result<(), AttachError> {
    tracing::info!(
        "[{}] attaching {id} to {} as {}",
        ctx.domain,
        ctx.facts.instance_id,
        at.device
    );
    ctx.ledger.attach_sent(at.index, id, at.source, at.device);
    let sent = ctx
        .ec2
        .attach_volume()
        .volume_id(id)
        .instance_id(&ctx.facts.instance_id)
        .device(at.device)
        .send()
        .await;
    if let Err(e) = sent {
        let code = aws::code(&e).map(String::from);
        let failed = ec2_error("AttachVolume", id, &e);
        // A retried call whose first answer was lost finds the volume
        // attached here: that is a win, not a loss. A look that fails is
        // neither: the record keeps the attach for the exit paths to find out.
        match (code.as_deref(), attached_here(ctx, id).await) {
            (_, Err(look)) => {
                return Err(AttachError::Failed(
                    failed.context(format!("and looking at {id} failed: {look:#}")),
                ))
            }
            (_, Ok(true)) => {
                tracing::info!("[{}] {id} turned out attached here after all", ctx.domain);
            }
            (Some(code @ ("VolumeInUse" | "IncorrectState")), Ok(false)) => {
                ctx.ledger.not_attached(id);
                return Err(AttachError::Taken(code.to_string()));
            }
            (_, Ok(false)) => {
                ctx.ledger.not_attached(id);
                return Err(AttachError::Failed(failed));
            }
        }
    }
    ctx.ledger.attached(id);
    let settled = async {
        if !marks.is_empty() {
            // Noted first: the tags can land while their answer is lost (or
            // the bring-up cancelled), and removing absent tags is harmless.
            ctx.ledger.marked(id);
            tags::set(ctx.ec2, id, marks).await?;
        }
        wait_attached(ctx, id).await
    };
    if let Err(e) = settled.await {
        // Not ours after all: give it back rather than hold it unmarked.
        if let Err(undo) = settle_one(ctx, id, Ending::Rollback).await {
            tracing::error!(
                "[{}] {id} could not be released after a failed attach: {undo:#}",
                ctx.domain
            );
        }
        return Err(AttachError::Failed(e));
    }
    Ok(())
}

/// The marks a claim by this run carries until commit.
pub(crate) fn claim_marks(ctx: &Ctx<'_>, pool: bool) -> Vec<Tag> {
    let mut marks = vec![tags::tag(tags::TRANSACTION, ctx.transaction_id)];
    if pool {
        marks.push(tags::tag(tags::LAST_USED, &unix_now().to_string()));
    }
    marks
}

/// Domain success: the claims in the record are final, their marks go.
/// Tried three times: a volume left marked `in-transit` would be deleted by
/// the next run's clean-up, so a commit that cannot be made fails the domain.
pub async fn commit(ctx: &Ctx<'_>) -> Result<()> {
    let held = ctx.ledger.snapshot();
    for v in held
        .volumes
        .iter()
        .filter(|v| !v.committed && v.on_this_instance())
    {
        if !(v.attached_now || v.marked) {
            ctx.ledger.committed(&v.volume_id);
            continue;
        }
        // The dataset's next generation, before the marks go: a copy
        // unmarked but of the old generation would look older than it is.
        keep_generation(ctx, v).await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match unmark(ctx, &v.volume_id).await {
                Ok(()) => break,
                Err(e) if attempt >= 3 => {
                    return Err(e.context(format!("committing the claim of {}", v.volume_id)))
                }
                Err(e) => {
                    tracing::warn!(
                        "[{}] committing {}: {e:#}; trying again",
                        ctx.domain,
                        v.volume_id
                    );
                    tokio::time::sleep(Duration::from_secs(attempt)).await;
                }
            }
        }
        ctx.ledger.committed(&v.volume_id);
    }
    Ok(())
}

/// After a commit: an `f` pool moves on (older copies superseded, see
/// `follow::after_commit`), and `keep` trims the pools' snapshots. Only
/// logged when it fails: the domain is up.
pub async fn after_commit(ctx: &Ctx<'_>, specs: &[VolumeSpec]) {
    let held = ctx.ledger.snapshot();
    for v in held.volumes.iter().filter(|v| v.committed) {
        let spec = &specs[v.spec];
        if let (Some(generation), true) =
            (v.generation, spec.sources.contains(&VolumeSource::Follow))
        {
            let pool = spec.pool_name.as_deref().unwrap_or_default();
            follow::after_commit(ctx, pool, &v.volume_id, generation).await;
        }
    }
    for spec in specs {
        if let (Some(keep), Some(pool)) = (
            spec.snapshot.as_ref().and_then(|s| s.keep),
            spec.pool_name.as_deref(),
        ) {
            if let Err(e) = snapshot::retain(ctx, pool, keep).await {
                tracing::warn!(
                    "[{}] keeping {keep} snapshots of pool {pool:?}: {e:#}",
                    ctx.domain
                );
            }
        }
    }
}

/// At `event` (one that ends the daemon), after its hooks: a snapshot of
/// each held volume whose `snapshot.on` names it, before `detach-on`
/// releases it. CreateSnapshot is point-in-time at the call: the instance
/// may go while it is pending. When the event's hooks ran and succeeded
/// (`unmounted`: they unmount) the snapshot is the copy's last state, and
/// the copy says so (`last-snapshot`) for a successor in another zone;
/// otherwise it is crash-consistent, and a successor snapshots the
/// released copy itself. Returns what failed.
pub async fn release_snapshots(
    ctx: &Ctx<'_>,
    specs: &[VolumeSpec],
    event: crate::config::Event,
    unmounted: bool,
) -> Vec<String> {
    let hooks_ok = unmounted;
    let held = ctx.ledger.snapshot();
    let mut errors = Vec::new();
    for v in held.volumes.iter().filter(|v| v.on_this_instance()) {
        let spec = &specs[v.spec];
        let (Some(s), Some(pool)) = (spec.snapshot.as_ref(), spec.pool_name.as_deref()) else {
            continue;
        };
        if !s.on.contains(&event) {
            continue;
        }
        let consistency = if hooks_ok {
            snapshot::Consistency::Unmounted
        } else {
            snapshot::Consistency::CrashConsistent
        };
        let req = snapshot::Request {
            volume_id: &v.volume_id,
            zone: &ctx.facts.zone,
            pool,
            generation: v.generation.unwrap_or(0),
            kind: snapshot::Kind::Release,
            event: event.name(),
            consistency,
        };
        let taken = async {
            let id = snapshot::take(ctx, &req).await?;
            if hooks_ok {
                tags::set(
                    ctx.ec2,
                    &v.volume_id,
                    vec![tags::tag(tags::LAST_SNAPSHOT, &id)],
                )
                .await?;
            }
            anyhow::Ok(id)
        };
        if let Err(e) = taken.await {
            tracing::error!(
                "[{}] snapshot of {} at {event}: {e:#}",
                ctx.domain,
                v.volume_id
            );
            errors.push(format!("snapshot of {} at {event}: {e:#}", v.volume_id));
        }
    }
    errors
}

/// Tags a dataset's claim (`f`, or its first copy) with the generation it
/// makes; nothing for other volumes.
async fn keep_generation(ctx: &Ctx<'_>, v: &ledger::HeldVolume) -> Result<()> {
    let Some(generation) = v.generation else {
        return Ok(());
    };
    tags::set(
        ctx.ec2,
        &v.volume_id,
        vec![tags::tag(tags::GENERATION, &generation.to_string())],
    )
    .await
    .map_err(|e| {
        e.context(format!(
            "tagging generation {generation} on {}",
            v.volume_id
        ))
    })
}

/// Removes both transaction marks.
async fn unmark(ctx: &Ctx<'_>, id: &str) -> Result<()> {
    tags::remove(ctx.ec2, id, &[tags::TRANSACTION, tags::IN_TRANSIT]).await?;
    ctx.ledger.unmarked(id);
    Ok(())
}

/// Leaves every uncommitted volume of the record as `ending` asks, newest
/// first. Returns what could not be done (also logged); what is left marked
/// the next run's clean-up finds.
pub async fn settle(ctx: &Ctx<'_>, ending: Ending) -> Vec<String> {
    let held = ctx.ledger.snapshot();
    let ids: Vec<String> = held
        .volumes
        .iter()
        .rev()
        .map(|v| v.volume_id.clone())
        .collect();
    let mut errors = Vec::new();
    if ending == Ending::Keep {
        // A dataset's claim kept attached is the domain's: its copy holds
        // the next generation, as at commit (its release snapshot says so).
        for v in held
            .volumes
            .iter()
            .filter(|v| !v.committed && v.on_this_instance() && v.attached_now)
        {
            if let Err(e) = keep_generation(ctx, v).await {
                tracing::error!("[{}] keeping {}: {e:#}", ctx.domain, v.volume_id);
                errors.push(format!("keeping {}: {e:#}", v.volume_id));
            }
        }
    }
    for id in ids {
        if let Err(e) = settle_one(ctx, &id, ending).await {
            let what = match ending {
                Ending::Rollback => "rollback",
                Ending::Keep => "keeping",
            };
            tracing::error!("[{}] {what} of {id} incomplete: {e:#}", ctx.domain);
            errors.push(format!("{what} of {id} incomplete: {e:#}"));
        }
    }
    errors
}

/// A cut init on an instance where an earlier run of this daemon was
/// killed: the volume of spec `index` attached here at its device is the
/// domain's, though this run never claimed it. Noted as adopted (with its
/// device, if it is there), so that the hooks, `detach-on` and the marks
/// see it. Changes nothing in EC2.
pub async fn adopt_attached(ctx: &Ctx<'_>, index: usize, spec: &VolumeSpec) -> Result<()> {
    use aws_sdk_ec2::types::Filter;
    let f = |name: &str, value: &str| Filter::builder().name(name).values(value).build();
    let out = ctx
        .ec2
        .describe_volumes()
        .filters(f("attachment.instance-id", &ctx.facts.instance_id))
        .filters(f("attachment.device", &spec.device))
        .send()
        .await
        .map_err(|e| ec2_error("DescribeVolumes (attached here)", &spec.device, &e))?;
    let Some(volume) = out.volumes().first() else {
        return Ok(());
    };
    let id = volume.volume_id().unwrap_or_default();
    let source = if spec.volume_id.as_deref() == Some(id) {
        VolumeSource::Given
    } else if tags::value(volume, tags::IN_TRANSIT).is_some() {
        VolumeSource::Create
    } else {
        VolumeSource::Pool
    };
    tracing::info!(
        "[{}] {id} is attached here as {}: held for this domain though this run did not claim it",
        ctx.domain,
        spec.device
    );
    ctx.ledger
        .adopted(index, id, source, &spec.device, is_marked(volume));
    if let Ok(path) =
        device::wait_for(ctx.device_root, id, &spec.device, Duration::from_secs(2)).await
    {
        ctx.ledger.ready(id, path);
    }
    Ok(())
}

/// Finds out, for every AttachVolume of the record whose answer never
/// came (a lost answer, a cancelled bring-up), whether it landed, so that
/// hooks and releases see what is really attached.
pub async fn find_out(ctx: &Ctx<'_>) {
    let unanswered: Vec<String> = ctx
        .ledger
        .snapshot()
        .volumes
        .iter()
        .filter(|v| v.stage == ledger::Stage::Attaching)
        .map(|v| v.volume_id.clone())
        .collect();
    for id in unanswered {
        if let Err(e) = find_out_one(ctx, &id).await {
            tracing::error!(
                "[{}] cannot tell whether {id} is attached here: {e:#}",
                ctx.domain
            );
        }
    }
}

async fn find_out_one(ctx: &Ctx<'_>, id: &str) -> Result<()> {
    if attached_here(ctx, id).await? {
        tracing::info!(
            "[{}] {id}: its AttachVolume landed though no answer came",
            ctx.domain
        );
        wait_attached(ctx, id).await?;
        ctx.ledger.attached(id);
    } else {
        ctx.ledger.not_attached(id);
    }
    Ok(())
}

/// One volume of [`settle`].
async fn settle_one(ctx: &Ctx<'_>, id: &str, ending: Ending) -> Result<()> {
    loop {
        let Some(v) = ctx.ledger.snapshot().volume(id).cloned() else {
            return Ok(());
        };
        let steps = ledger::steps(&v, ending);
        if steps.is_empty() {
            return Ok(());
        }
        if steps == [Step::FindOut] {
            find_out_one(ctx, id).await?;
            continue;
        }
        if ending == Ending::Rollback {
            tracing::warn!("[{}] rolling back: releasing {id}", ctx.domain);
        }
        for step in steps {
            match step {
                Step::FindOut => unreachable!("found out above"),
                Step::Detach => {
                    detach_and_wait(ctx, id, false).await?;
                    ctx.ledger.released(id);
                }
                Step::Delete => {
                    delete_volume(ctx, id).await?;
                    ctx.ledger.released(id);
                }
                Step::Unmark => unmark(ctx, id).await?,
            }
        }
        return Ok(());
    }
}

/// `detach-on`: give the volume up so that a successor can attach it.
pub async fn release(ctx: &Ctx<'_>, id: &str, force: bool) -> Result<()> {
    tracing::info!(
        "[{}] releasing {id} ({}detach)",
        ctx.domain,
        if force { "forced " } else { "" }
    );
    detach_and_wait(ctx, id, force).await?;
    ctx.ledger.released(id);
    Ok(())
}

async fn detach_and_wait(ctx: &Ctx<'_>, id: &str, force: bool) -> Result<()> {
    let sent = ctx
        .ec2
        .detach_volume()
        .volume_id(id)
        .instance_id(&ctx.facts.instance_id)
        .force(force)
        .send()
        .await;
    if let Err(e) = sent {
        // Not attached (any more): nothing to wait for.
        if aws::code(&e) != Some("IncorrectState") {
            return Err(ec2_error("DetachVolume", id, &e));
        }
    }
    let deadline = Instant::now() + DETACH_TIMEOUT;
    let mut pause = Duration::from_millis(200);
    loop {
        let volume = describe(ctx.ec2, id).await?;
        let still_here = volume
            .attachments()
            .iter()
            .any(|a| a.instance_id() == Some(&ctx.facts.instance_id));
        // Done once it is off this instance: a waiting successor may have
        // attached it already.
        if !still_here {
            tracing::info!("[{}] {id} is detached", ctx.domain);
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{id} was still detaching after {}s (is it still mounted?)",
                DETACH_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Deletes a volume this run created (it must be detached).
pub(crate) async fn delete_volume(ctx: &Ctx<'_>, id: &str) -> Result<()> {
    ctx.ec2
        .delete_volume()
        .volume_id(id)
        .send()
        .await
        .map_err(|e| ec2_error("DeleteVolume", id, &e))?;
    tracing::info!("[{}] deleted {id}", ctx.domain);
    Ok(())
}

/// The volume, or `None` when EC2 says it does not exist
/// (`InvalidVolume.NotFound`).
pub(crate) async fn describe_opt(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<Option<Volume>> {
    match ec2.describe_volumes().volume_ids(id).send().await {
        Ok(out) => Ok(out.volumes().first().cloned()),
        Err(e) if aws::code(&e) == Some("InvalidVolume.NotFound") => Ok(None),
        Err(e) => Err(ec2_error("DescribeVolumes", id, &e)),
    }
}

pub(crate) async fn describe(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<Volume> {
    describe_opt(ec2, id)
        .await?
        .ok_or_else(|| anyhow!("volume {id} does not exist in this region"))
}

/// Polls until the attachment to this instance reads `attached`.
pub(crate) async fn wait_attached(ctx: &Ctx<'_>, id: &str) -> Result<()> {
    let instance = &ctx.facts.instance_id;
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    let mut pause = Duration::from_millis(200);
    loop {
        let volume = describe(ctx.ec2, id).await?;
        let state = volume
            .attachments()
            .iter()
            .find(|a| a.instance_id() == Some(instance))
            .and_then(|a| a.state().cloned());
        match state {
            Some(VolumeAttachmentState::Attached) => return Ok(()),
            Some(VolumeAttachmentState::Attaching) => {}
            other => bail!(
                "{id} stopped attaching to {instance}: attachment state is {}",
                other.map_or("gone".to_string(), |s| s.as_str().to_string())
            ),
        }
        if Instant::now() >= deadline {
            bail!(
                "{id} was still attaching to {instance} after {}s",
                ATTACH_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(pause).await;
        // Gently: an attach takes a second or two, and a look that just
        // misses it should not cost much more than that.
        pause = (pause * 3 / 2).min(Duration::from_secs(1));
    }
}

/// An EC2 call's failure, naming the call, its subject and the endpoint.
pub(crate) fn ec2_error<E>(
    call: &str,
    subject: &str,
    e: &aws_sdk_ec2::error::SdkError<E>,
) -> anyhow::Error
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    anyhow!(
        "{call} {subject} failed ({}): {}",
        aws::endpoint_of("EC2"),
        aws::describe(e)
    )
}

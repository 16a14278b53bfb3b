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
mod pool;
mod tags;

pub use cleanup::{clean_up_leftovers, roll_back_transaction};
pub use pool::{order_candidates, Candidate};

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Result};
use aws_sdk_ec2::types::{Volume, VolumeAttachmentState, VolumeState};
use tokio::time::Instant;

use crate::aws;
use crate::config::{VolumeSource, VolumeSpec};
use crate::imds::InstanceFacts;

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
}

/// A volume a source got hold of.
#[derive(Debug)]
pub struct Claim {
    pub volume_id: String,
    pub attached_now: bool,
    pub created: bool,
}

/// A volume held by this instance for a domain.
#[derive(Debug, Clone)]
pub struct AttachedVolume {
    pub volume_id: String,
    pub source: VolumeSource,
    /// This run attached it (`{attach_op}` = `true`); false: it already was.
    pub attached_now: bool,
    /// This run created it.
    pub created: bool,
    /// The AttachVolume device name.
    pub device_name: String,
    /// The block device, under the device root.
    pub device: PathBuf,
    /// Still detached by this run (on request or on rollback).
    pub released: bool,
}

/// Why an AttachVolume did not happen.
pub enum AttachError {
    /// Someone else has it, or it is not `available` (`VolumeInUse`,
    /// `IncorrectState`): try another.
    Taken(String),
    Failed(anyhow::Error),
}

/// Tries the spec's sources in order; the first that succeeds wins.
pub async fn attach(ctx: &Ctx<'_>, spec: &VolumeSpec) -> Result<AttachedVolume> {
    let mut failures = Vec::new();
    for &source in &spec.sources {
        let outcome = match source {
            VolumeSource::Given => attach_given(ctx, spec).await.map(Some),
            VolumeSource::Pool | VolumeSource::Create => match held_here(ctx, spec).await {
                Ok(Some(held)) => Ok(Some(held)),
                Ok(None) if source == VolumeSource::Pool => pool::claim(ctx, spec).await,
                Ok(None) => create::create(ctx, spec).await.map(Some),
                Err(e) => Err(e),
            },
        };
        let claim = match outcome {
            Ok(Some(c)) => c,
            Ok(None) => {
                failures.push(format!("{}: no free volume", source.letter()));
                continue;
            }
            Err(e) => {
                tracing::warn!(
                    "[{}] volume source {:?} for {}: {e:#}",
                    ctx.domain,
                    source.letter(),
                    spec.device
                );
                failures.push(format!("{}: {e:#}", source.letter()));
                continue;
            }
        };
        let attached = AttachedVolume {
            volume_id: claim.volume_id.clone(),
            source,
            attached_now: claim.attached_now,
            created: claim.created,
            device_name: spec.device.clone(),
            device: PathBuf::new(),
            released: false,
        };
        // Mark the claim as this run's until the domain commits. A created
        // volume was tagged when it was made.
        if claim.attached_now && !claim.created {
            let mut marks = vec![tags::tag(tags::TRANSACTION, ctx.transaction_id)];
            if source == VolumeSource::Pool {
                marks.push(tags::tag(tags::LAST_USED, &unix_now().to_string()));
            }
            if let Err(e) = tags::set(ctx.ec2, &claim.volume_id, marks).await {
                undo(ctx, &attached).await;
                return Err(e);
            }
        }
        match device::wait_for(
            ctx.device_root,
            &claim.volume_id,
            &spec.device,
            DEVICE_TIMEOUT,
        )
        .await
        {
            Ok(path) => {
                tracing::info!(
                    "[{}] {} is at {} (source {}, {})",
                    ctx.domain,
                    claim.volume_id,
                    path.display(),
                    source.letter(),
                    if claim.created {
                        "created"
                    } else if claim.attached_now {
                        "attached now"
                    } else {
                        "already attached"
                    }
                );
                return Ok(AttachedVolume {
                    device: path,
                    ..attached
                });
            }
            Err(e) => {
                undo(ctx, &attached).await;
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A pool volume of this domain already attached here (a restarted daemon).
async fn held_here(ctx: &Ctx<'_>, spec: &VolumeSpec) -> Result<Option<Claim>> {
    let pool = spec
        .pool_name
        .as_deref()
        .expect("validated: p and c have a pool-name");
    let held = pool::pool_query(
        ctx,
        pool,
        ("attachment.instance-id", &ctx.facts.instance_id),
        "DescribeVolumes (held here)",
    )
    .await?;
    for volume in &held {
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
        wait_attached(ctx, id).await?;
        return Ok(Some(Claim {
            volume_id: id.to_string(),
            attached_now: false,
            created: false,
        }));
    }
    Ok(None)
}

/// Source `x`: attach the given volume, or find it already attached here.
async fn attach_given(ctx: &Ctx<'_>, spec: &VolumeSpec) -> Result<Claim> {
    let id = spec
        .volume_id
        .as_deref()
        .expect("validated: x has a volume-id");
    let device = spec.device.as_str();
    let volume = describe(ctx.ec2, id).await?;
    let zone = volume.availability_zone().unwrap_or_default();
    if zone != ctx.facts.zone {
        bail!(
            "{id} is in {zone}, this instance in {}: a volume attaches only within its zone",
            ctx.facts.zone
        );
    }
    // A volume without multi-attach has at most one attachment.
    if let Some(att) = volume.attachments().first() {
        let holder = att.instance_id().unwrap_or_default();
        if holder == ctx.facts.instance_id {
            if att.device() != Some(device) {
                bail!(
                    "{id} is already attached here as {}, not {device}",
                    att.device().unwrap_or("?")
                );
            }
            tracing::info!("[{}] {id} is already attached here as {device}", ctx.domain);
            wait_attached(ctx, id).await?;
            return Ok(Claim {
                volume_id: id.to_string(),
                attached_now: false,
                created: false,
            });
        }
        bail!("{id} is attached to {holder}: it is not free (VolumeInUse)");
    }
    match attach_call(ctx, id, device).await {
        Ok(()) => Ok(Claim {
            volume_id: id.to_string(),
            attached_now: true,
            created: false,
        }),
        Err(AttachError::Taken(code)) => bail!("{id} is not free ({code})"),
        Err(AttachError::Failed(e)) => Err(e),
    }
}

/// AttachVolume, then wait until the attachment reads `attached`.
pub(crate) async fn attach_call(ctx: &Ctx<'_>, id: &str, device: &str) -> Result<(), AttachError> {
    tracing::info!(
        "[{}] attaching {id} to {} as {device}",
        ctx.domain,
        ctx.facts.instance_id
    );
    let sent = ctx
        .ec2
        .attach_volume()
        .volume_id(id)
        .instance_id(&ctx.facts.instance_id)
        .device(device)
        .send()
        .await;
    if let Err(e) = sent {
        return match aws::code(&e) {
            Some(code @ ("VolumeInUse" | "IncorrectState")) => {
                Err(AttachError::Taken(code.to_string()))
            }
            _ => Err(AttachError::Failed(ec2_error("AttachVolume", id, &e))),
        };
    }
    wait_attached(ctx, id).await.map_err(AttachError::Failed)
}

/// Domain success: the claims are final, their transaction marks go.
pub async fn commit(ctx: &Ctx<'_>, volumes: &[AttachedVolume]) -> Result<()> {
    for v in volumes.iter().filter(|v| v.attached_now) {
        let keys: &[&str] = if v.created {
            &[tags::TRANSACTION, tags::IN_TRANSIT]
        } else {
            &[tags::TRANSACTION]
        };
        tags::remove(ctx.ec2, &v.volume_id, keys).await?;
    }
    Ok(())
}

/// Domain failure: undo what this run did, newest first. Errors are logged;
/// what could not be undone is left for the next run's clean-up.
pub async fn rollback(ctx: &Ctx<'_>, volumes: &[AttachedVolume]) {
    for v in volumes.iter().rev() {
        undo(ctx, v).await;
    }
}

/// Undoes one volume's claim: detach what this run attached, delete what
/// it created, drop the transaction mark.
async fn undo(ctx: &Ctx<'_>, v: &AttachedVolume) {
    if !v.attached_now {
        return;
    }
    tracing::warn!("[{}] rolling back: releasing {}", ctx.domain, v.volume_id);
    let result = async {
        detach_and_wait(ctx, &v.volume_id, false).await?;
        if v.created {
            delete_volume(ctx, &v.volume_id).await
        } else {
            tags::remove(ctx.ec2, &v.volume_id, &[tags::TRANSACTION]).await
        }
    };
    if let Err(e) = result.await {
        tracing::error!(
            "[{}] rollback of {} incomplete: {e:#}",
            ctx.domain,
            v.volume_id
        );
    }
}

/// `detach-on`: give the volume up so that a successor can attach it.
pub async fn release(ctx: &Ctx<'_>, v: &AttachedVolume, force: bool) -> Result<()> {
    tracing::info!(
        "[{}] releasing {} ({}detach)",
        ctx.domain,
        v.volume_id,
        if force { "forced " } else { "" }
    );
    detach_and_wait(ctx, &v.volume_id, force).await
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
        if !still_here && volume.state() == Some(&VolumeState::Available) {
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

pub(crate) async fn describe(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<Volume> {
    let out = ec2
        .describe_volumes()
        .volume_ids(id)
        .send()
        .await
        .map_err(|e| {
            if aws::code(&e) == Some("InvalidVolume.NotFound") {
                anyhow!("volume {id} does not exist in this region")
            } else {
                ec2_error("DescribeVolumes", id, &e)
            }
        })?;
    out.volumes()
        .first()
        .cloned()
        .ok_or_else(|| anyhow!("volume {id} does not exist in this region"))
}

/// Polls until the attachment to this instance reads `attached`.
async fn wait_attached(ctx: &Ctx<'_>, id: &str) -> Result<()> {
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
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// An EC2 call's failure, naming the call, its subject and the endpoint.
pub(crate) fn ec2_error<E>(
    call: &str,
    subject: &str,
    e: &aws_sdk_ec2::error::SdkError<E>,
) -> anyhow::Error
where
    E: std::error::Error + 'static,
{
    anyhow!(
        "{call} {subject} failed ({}): {}",
        aws::endpoint_of("EC2"),
        aws::describe(e)
    )
}

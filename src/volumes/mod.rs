//! `attach-volume`: get the domain's data volume attached to this instance
//! and find its block device. Talks to EC2.

mod device;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_ec2::types::{Volume, VolumeAttachmentState};
use tokio::time::Instant;

use crate::aws;
use crate::config::{VolumeSource, VolumeSpec};
use crate::imds::InstanceFacts;

/// How long an attachment may stay `attaching`.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the block device may take to appear once attached.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(120);

/// A volume held by this instance.
#[derive(Debug, Clone)]
pub struct AttachedVolume {
    pub volume_id: String,
    pub source: VolumeSource,
    /// True when this run attached it; false when it already was attached here.
    pub attached_now: bool,
    /// The block device, under the device root.
    pub device: PathBuf,
}

/// Tries the spec's sources in order; the first that succeeds wins.
pub async fn attach(
    ec2: &aws_sdk_ec2::Client,
    facts: &InstanceFacts,
    spec: &VolumeSpec,
    device_root: &Path,
) -> Result<AttachedVolume> {
    let mut failures = Vec::new();
    for &source in &spec.sources {
        let outcome = match source {
            VolumeSource::Given => {
                let id = spec
                    .volume_id
                    .as_deref()
                    .expect("validated: x has a volume-id");
                attach_given(ec2, facts, id, &spec.device).await
            }
            VolumeSource::Pool | VolumeSource::Create => Err(anyhow!(
                "volume source {:?} is not supported by this version of ec2fleetd",
                source.letter()
            )),
        };
        match outcome {
            Ok((volume_id, attached_now)) => {
                let device =
                    device::wait_for(device_root, &volume_id, &spec.device, DEVICE_TIMEOUT).await?;
                tracing::info!(
                    "{volume_id} is at {} (source {})",
                    device.display(),
                    source.letter()
                );
                return Ok(AttachedVolume {
                    volume_id,
                    source,
                    attached_now,
                    device,
                });
            }
            Err(e) => {
                tracing::warn!(
                    "volume source {:?} for {}: {e:#}",
                    source.letter(),
                    spec.device
                );
                failures.push(format!("{}: {e:#}", source.letter()));
            }
        }
    }
    bail!(
        "no volume source worked for {}: {}",
        spec.device,
        failures.join("; ")
    )
}

/// Source `x`: attach the given volume, or find it already attached here.
/// Returns the volume ID and whether this call attached it.
async fn attach_given(
    ec2: &aws_sdk_ec2::Client,
    facts: &InstanceFacts,
    id: &str,
    device: &str,
) -> Result<(String, bool)> {
    let volume = describe(ec2, id).await?;
    let zone = volume.availability_zone().unwrap_or_default();
    if zone != facts.zone {
        bail!(
            "{id} is in {zone}, this instance in {}: a volume attaches only within its zone",
            facts.zone
        );
    }
    // A volume without multi-attach has at most one attachment.
    if let Some(att) = volume.attachments().first() {
        let holder = att.instance_id().unwrap_or_default();
        if holder == facts.instance_id {
            if att.device() != Some(device) {
                bail!(
                    "{id} is already attached here as {}, not {device}",
                    att.device().unwrap_or("?")
                );
            }
            tracing::info!("{id} is already attached here as {device}");
            wait_attached(ec2, id, &facts.instance_id).await?;
            return Ok((id.to_string(), false));
        }
        bail!("{id} is attached to {holder}: it is not free (VolumeInUse)");
    }
    tracing::info!("attaching {id} to {} as {device}", facts.instance_id);
    ec2.attach_volume()
        .volume_id(id)
        .instance_id(&facts.instance_id)
        .device(device)
        .send()
        .await
        .map_err(|e| {
            anyhow!(
                "AttachVolume {id} to {} failed ({}): {}",
                facts.instance_id,
                aws::endpoint_of("EC2"),
                aws::describe(&e)
            )
        })?;
    wait_attached(ec2, id, &facts.instance_id).await?;
    Ok((id.to_string(), true))
}

async fn describe(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<Volume> {
    let out = ec2
        .describe_volumes()
        .volume_ids(id)
        .send()
        .await
        .map_err(|e| {
            if aws::code(&e) == Some("InvalidVolume.NotFound") {
                anyhow!("volume {id} does not exist in this region")
            } else {
                anyhow!(
                    "DescribeVolumes {id} failed ({}): {}",
                    aws::endpoint_of("EC2"),
                    aws::describe(&e)
                )
            }
        })?;
    out.volumes()
        .first()
        .cloned()
        .with_context(|| format!("volume {id} does not exist in this region"))
}

/// Polls until the attachment to `instance` reads `attached`.
async fn wait_attached(ec2: &aws_sdk_ec2::Client, id: &str, instance: &str) -> Result<()> {
    let deadline = Instant::now() + ATTACH_TIMEOUT;
    let mut pause = Duration::from_millis(200);
    loop {
        let volume = describe(ec2, id).await?;
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

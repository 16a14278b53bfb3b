//! Volumes marked with a transaction that never committed: what a killed
//! run left. Only this instance's own runs of the same config are cleaned
//! up (their transaction IDs start with the instance ID and the config's
//! name). What the current run holds is in its record ([`crate::ledger`]),
//! not found by tag.

use anyhow::Result;
use aws_sdk_ec2::types::Filter;

use super::{detach_and_wait, tags, Ctx};
use crate::imds::InstanceFacts;
use crate::ledger::Ledger;

/// Undoes volume work that earlier runs of this daemon on this instance
/// never committed: volumes they created are detached if attached here and
/// deleted; stale marks are dropped, and a claimed volume still attached
/// here is adopted by this run's sources. Returns how many volumes were
/// touched.
pub async fn sweep(
    ec2: &aws_sdk_ec2::Client,
    facts: &InstanceFacts,
    device_root: &std::path::Path,
    transaction_id: &str,
) -> Result<usize> {
    let out = ec2
        .describe_volumes()
        .filters(
            Filter::builder()
                .name("tag-key")
                .values(tags::TRANSACTION)
                .build(),
        )
        .send()
        .await
        .map_err(|e| {
            super::ec2_error("DescribeVolumes (leftovers)", "with a transaction tag", &e)
        })?;
    // Transaction IDs are `INSTANCE-SCOPE-TIME`: this daemon's runs share
    // `INSTANCE-SCOPE-` (other daemons on the instance have other scopes).
    let ours = &transaction_id[..=transaction_id.rfind('-').unwrap_or(0)];
    let mut touched = 0;
    for volume in out.volumes() {
        let Some(tx) = tags::value(volume, tags::TRANSACTION) else {
            continue;
        };
        if !tx.starts_with(ours) || tx == transaction_id {
            continue;
        }
        let id = volume.volume_id().unwrap_or_default();
        let domain = tags::value(volume, tags::DOMAIN).unwrap_or("-");
        let ledger = Ledger::default();
        let ctx = Ctx {
            ec2,
            facts,
            device_root,
            domain,
            transaction_id,
            ledger: &ledger,
        };
        let attached_here = volume
            .attachments()
            .iter()
            .any(|a| a.instance_id() == Some(&facts.instance_id));
        if tags::value(volume, tags::IN_TRANSIT) == Some("true") {
            tracing::warn!("[{domain}] {id} was created by an interrupted run ({tx}) and never used: deleting it");
            if attached_here {
                detach_and_wait(&ctx, id, false).await?;
            }
            super::delete_volume(&ctx, id).await?;
        } else {
            tracing::warn!(
                "[{domain}] {id} still carries the mark of an interrupted run ({tx}): removing it"
            );
            tags::remove(ec2, id, &[tags::TRANSACTION]).await?;
        }
        touched += 1;
    }
    Ok(touched)
}

//! The resource tags pools and transactions are kept in. They are the Python
//! ec2fleetd's, so that pools made for it work unchanged.

use anyhow::Result;
use aws_sdk_ec2::types::{Tag, Volume};

/// The domain a pool volume belongs to.
pub const DOMAIN: &str = "user:ec2fd.domain";
/// The pool a volume belongs to.
pub const POOL_NAME: &str = "user:ec2fd.pool-name";
/// The transaction (run) that attached or created the volume and has not
/// yet committed.
pub const TRANSACTION: &str = "user:ec2fd.transc-id";
/// `true` on a volume created by a run that has not yet committed.
pub const IN_TRANSIT: &str = "user:ec2fd.in-transit";
/// Unix time of the last claim, for `least-` and `most-recently-used`.
pub const LAST_USED: &str = "user:ec2fd.ts-used";

// Datasets (`f`) and snapshots.

/// The dataset generation a copy or snapshot holds; each committed claim of
/// an `f` pool makes the next one.
pub const GENERATION: &str = "user:ec2fd.generation";
/// `ec2fleetd` on the volumes and snapshots ec2fleetd made (and may delete).
pub const MADE_BY: &str = "user:ec2fd.made-by";
pub const MADE_BY_US: &str = "ec2fleetd";
/// On a copy a newer generation replaced: no source picks it (a snapshot
/// tagged so by the operator is skipped too). The value is the generation
/// that replaced it.
pub const SUPERSEDED: &str = "user:ec2fd.superseded";
/// On a released copy: the snapshot that holds its last state (taken after
/// the hooks unmounted it). Removed before anyone attaches the copy again.
pub const LAST_SNAPSHOT: &str = "user:ec2fd.last-snapshot";
/// On a snapshot: the volume it was taken of, and that volume's zone.
pub const SOURCE_VOLUME: &str = "user:ec2fd.source-volume";
pub const SOURCE_ZONE: &str = "user:ec2fd.source-zone";
/// On a snapshot: `release` (at an event, after the hooks), `periodic`
/// (`every`), or `takeover` (of a released copy by its successor).
pub const SNAPSHOT_KIND: &str = "user:ec2fd.snapshot-kind";
/// On a snapshot: the instance and the event that made it.
pub const INSTANCE: &str = "user:ec2fd.instance";
pub const EVENT: &str = "user:ec2fd.event";
/// On a snapshot: `unmounted` (hooks ran), `frozen` (`snapshot-begin`
/// hooks ran), or `crash-consistent`.
pub const CONSISTENCY: &str = "user:ec2fd.consistency";
/// On a snapshot: `TRANSACTION/N`, so that a CreateSnapshot whose answer
/// was lost is found again instead of taken twice.
pub const TAKEN_BY: &str = "user:ec2fd.taken-by";
/// On a restored copy: the snapshot it was made from.
pub const RESTORED_FROM: &str = "user:ec2fd.restored-from";
/// On a baton volume: `DOMAIN/POOL`, the generation and item it moves on
/// from (`G:ID`), its epoch, and the instance that holds it.
pub const BATON_OF: &str = "user:ec2fd.baton-of";
pub const BATON_FOR: &str = "user:ec2fd.baton-for";
pub const BATON_EPOCH: &str = "user:ec2fd.baton-epoch";
pub const HOLDER: &str = "user:ec2fd.holder";
/// On a baton whose move was rolled back: it holds nothing any more.
pub const ABANDONED: &str = "user:ec2fd.abandoned";

/// The value of the tag `key` among `tags`.
pub fn find<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// The value of the tag `key` on the volume.
pub fn value<'a>(volume: &'a Volume, key: &str) -> Option<&'a str> {
    find(volume.tags(), key)
}

pub fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// Adds or replaces tags on a volume (or a snapshot).
pub async fn set(ec2: &aws_sdk_ec2::Client, volume_id: &str, tags: Vec<Tag>) -> Result<()> {
    ec2.create_tags()
        .resources(volume_id)
        .set_tags(Some(tags))
        .send()
        .await
        .map_err(|e| super::ec2_error("CreateTags on", volume_id, &e))?;
    Ok(())
}

/// Removes tags (whatever their values) from a volume (or a snapshot).
pub async fn remove(ec2: &aws_sdk_ec2::Client, volume_id: &str, keys: &[&str]) -> Result<()> {
    let tags = keys
        .iter()
        .map(|k| Tag::builder().key(*k).build())
        .collect();
    ec2.delete_tags()
        .resources(volume_id)
        .set_tags(Some(tags))
        .send()
        .await
        .map_err(|e| super::ec2_error("DeleteTags on", volume_id, &e))?;
    Ok(())
}

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

/// The value of the tag `key` on the volume.
pub fn value<'a>(volume: &'a Volume, key: &str) -> Option<&'a str> {
    volume
        .tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

pub fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// Adds or replaces tags on a volume.
pub async fn set(ec2: &aws_sdk_ec2::Client, volume_id: &str, tags: Vec<Tag>) -> Result<()> {
    ec2.create_tags()
        .resources(volume_id)
        .set_tags(Some(tags))
        .send()
        .await
        .map_err(|e| super::ec2_error("CreateTags on", volume_id, &e))?;
    Ok(())
}

/// Removes tags (whatever their values) from a volume.
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

//! Source `c`: a new volume from the `create` parameters, in this zone,
//! tagged into the pool so that the next instance can claim it.

use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Result};
use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification, VolumeState, VolumeType};
use serde_json::Value;
use tokio::time::Instant;

use super::{attach_call, describe_opt, settle_one, tags, At, AttachError, Claim, Ctx};
use crate::config::VolumeSpec;
use crate::ledger::Ending;

const CREATE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a volume just created may still be unknown to DescribeVolumes:
/// EC2's API is eventually consistent, and `InvalidVolume.NotFound` right
/// after CreateVolume means "not yet", not "gone".
const VISIBLE_WITHIN: Duration = Duration::from_secs(60);

/// Creates, waits until `available`, attaches. A volume that cannot be
/// attached is deleted again. `first_of_dataset`: the first copy of an `f`
/// pool's dataset (generation 1).
pub(crate) async fn create(
    ctx: &Ctx<'_>,
    at: &At<'_>,
    spec: &VolumeSpec,
    first_of_dataset: bool,
) -> Result<Claim> {
    let params = spec.create.as_ref().expect("validated: c has create");
    let mut ours = our_tags(ctx, spec);
    if first_of_dataset {
        ours.push(tags::tag(tags::GENERATION, "1"));
    }
    let text = |k: &str| params.get(k).and_then(Value::as_str).map(String::from);
    let snapshot = match text("SnapshotId").as_deref() {
        Some("latest") => latest(ctx, spec).await?,
        other => other.map(String::from),
    };
    // AWS takes an initialization rate only for a volume made from a
    // snapshot: an empty first copy goes without it.
    let rate = params
        .get("VolumeInitializationRate")
        .and_then(Value::as_i64);
    let req = with_params(ctx, params, ours)
        .set_volume_initialization_rate(rate.filter(|_| snapshot.is_some()).map(|r| r as i32))
        .set_snapshot_id(snapshot);
    let claim = create_and_attach(ctx, at, spec, req).await?;
    if first_of_dataset {
        ctx.ledger.generation(&claim.volume_id, 1);
    }
    Ok(claim)
}

/// What `f` restores from.
pub(crate) struct Restore<'a> {
    pub snapshot_id: &'a str,
    /// GiB: the new volume is at least this large.
    pub snapshot_size: i32,
    pub generation: u64,
    /// CreateVolume's client token: a retry whose first answer was lost
    /// gets the same volume.
    pub token: &'a str,
}

/// A new copy of the dataset from a snapshot, here; `create` (if given)
/// names its type and performance, and `Size` grows to the snapshot's.
pub(crate) async fn restore(
    ctx: &Ctx<'_>,
    at: &At<'_>,
    spec: &VolumeSpec,
    r: &Restore<'_>,
) -> Result<Claim> {
    let empty = serde_json::Map::new();
    let params = spec.create.as_ref().unwrap_or(&empty);
    let mut ours = our_tags(ctx, spec);
    ours.push(tags::tag(tags::GENERATION, &r.generation.to_string()));
    ours.push(tags::tag(tags::RESTORED_FROM, r.snapshot_id));
    let size = params
        .get("Size")
        .and_then(Value::as_i64)
        .map_or(r.snapshot_size, |s| (s as i32).max(r.snapshot_size));
    let mut req = with_params(ctx, params, ours)
        .snapshot_id(r.snapshot_id)
        .size(size)
        .client_token(r.token);
    if !params.contains_key("VolumeType") {
        req = req.volume_type(VolumeType::Gp3);
    }
    create_and_attach(ctx, at, spec, req).await
}

/// The tags every volume this run creates carries (ours win over the
/// user's).
fn our_tags(ctx: &Ctx<'_>, spec: &VolumeSpec) -> Vec<Tag> {
    let pool = spec
        .pool_name
        .as_deref()
        .expect("validated: c and f have a pool-name");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    vec![
        tags::tag(tags::DOMAIN, ctx.domain),
        tags::tag(tags::POOL_NAME, pool),
        tags::tag(tags::TRANSACTION, ctx.transaction_id),
        tags::tag(tags::IN_TRANSIT, "true"),
        tags::tag(tags::LAST_USED, &now.to_string()),
        tags::tag(tags::MADE_BY, tags::MADE_BY_US),
    ]
}

/// CreateVolume in this zone with the `create` parameters (but its
/// `SnapshotId`) and tags.
fn with_params(
    ctx: &Ctx<'_>,
    params: &serde_json::Map<String, Value>,
    ours: Vec<Tag>,
) -> aws_sdk_ec2::operation::create_volume::builders::CreateVolumeFluentBuilder {
    let int = |k: &str| params.get(k).and_then(Value::as_i64).map(|v| v as i32);
    let text = |k: &str| params.get(k).and_then(Value::as_str).map(String::from);
    let flag = |k: &str| params.get(k).and_then(Value::as_bool);
    ctx.ec2
        .create_volume()
        .availability_zone(&ctx.facts.zone)
        .set_tag_specifications(Some(tag_specifications(
            params.get("TagSpecifications"),
            ours,
        )))
        .set_size(int("Size"))
        .set_iops(int("Iops"))
        .set_throughput(int("Throughput"))
        .set_volume_initialization_rate(int("VolumeInitializationRate"))
        .set_kms_key_id(text("KmsKeyId"))
        .set_outpost_arn(text("OutpostArn"))
        .set_encrypted(flag("Encrypted"))
        .set_multi_attach_enabled(flag("MultiAttachEnabled"))
        .set_volume_type(text("VolumeType").map(|t| VolumeType::from(t.as_str())))
}

/// `"SnapshotId": "latest"`: the pool's newest completed snapshot, or none
/// (an empty volume of `Size`) when it has none.
async fn latest(ctx: &Ctx<'_>, spec: &VolumeSpec) -> Result<Option<String>> {
    let pool = spec
        .pool_name
        .as_deref()
        .expect("validated: c has a pool-name");
    let all = super::snapshot::query(ctx.ec2, ctx.domain, pool, None).await?;
    let newest = all
        .iter()
        .filter(|s| s.state() == Some(&aws_sdk_ec2::types::SnapshotState::Completed))
        .filter(|s| tags::find(s.tags(), tags::SUPERSEDED).is_none())
        .max_by_key(|s| (super::snapshot::generation(s), super::snapshot::started(s)));
    match newest {
        Some(s) => {
            let id = s.snapshot_id().unwrap_or_default().to_string();
            tracing::info!("[{}] creating from {id}, the newest snapshot of pool {pool:?}", ctx.domain);
            Ok(Some(id))
        }
        None if spec.create.as_ref().is_some_and(|c| c.contains_key("Size")) => {
            tracing::info!("[{}] pool {pool:?} has no completed snapshot: creating an empty volume", ctx.domain);
            Ok(None)
        }
        None => bail!("\"SnapshotId\": \"latest\": pool {pool:?} has no completed snapshot, and create has no Size for an empty volume"),
    }
}

async fn create_and_attach(
    ctx: &Ctx<'_>,
    at: &At<'_>,
    spec: &VolumeSpec,
    req: aws_sdk_ec2::operation::create_volume::builders::CreateVolumeFluentBuilder,
) -> Result<Claim> {
    let pool = spec.pool_name.as_deref().unwrap_or_default();
    let out = req.send().await.map_err(|e| {
        super::ec2_error(
            "CreateVolume",
            &format!("pool {pool:?} in {}", ctx.facts.zone),
            &e,
        )
    })?;
    let volume_id = out.volume_id().unwrap_or_default().to_string();
    ctx.ledger
        .created(at.index, &volume_id, at.source, at.device);
    tracing::info!(
        "[{}] created {volume_id} for pool {pool:?} in {}",
        ctx.domain,
        ctx.facts.zone
    );
    let attached = async {
        wait_available(ctx, &volume_id).await?;
        attach_call(ctx, at, &volume_id, Vec::new())
            .await
            .map_err(|e| match e {
                AttachError::Taken(code) => {
                    anyhow!("{volume_id}, just created, could not be attached: {code}")
                }
                AttachError::Failed(e) => e,
            })
    };
    if let Err(e) = attached.await {
        // Nothing uses it yet: do not leave it behind.
        if let Err(del) = settle_one(ctx, &volume_id, Ending::Rollback).await {
            tracing::error!(
                "[{}] {volume_id} could not be deleted after a failed create: {del:#}",
                ctx.domain
            );
        }
        return Err(e);
    }
    Ok(Claim { volume_id })
}

/// The user's tag specifications with ours added to the `volume` one.
fn tag_specifications(user: Option<&Value>, ours: Vec<Tag>) -> Vec<TagSpecification> {
    let mut specs = Vec::new();
    let mut volume_tags = ours;
    for spec in user.and_then(Value::as_array).into_iter().flatten() {
        let kind = spec
            .get("ResourceType")
            .and_then(Value::as_str)
            .unwrap_or("volume");
        let user_tags: Vec<Tag> = spec
            .get("Tags")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| {
                Some(tags::tag(
                    t.get("Key")?.as_str()?,
                    t.get("Value")?.as_str()?,
                ))
            })
            .collect();
        if kind == "volume" {
            // Ours win: the pool and transaction tags must be right.
            let ours_keys: Vec<String> = volume_tags
                .iter()
                .filter_map(|t| t.key().map(String::from))
                .collect();
            volume_tags.extend(
                user_tags
                    .into_iter()
                    .filter(|t| !ours_keys.iter().any(|k| Some(k.as_str()) == t.key())),
            );
        } else {
            specs.push(
                TagSpecification::builder()
                    .resource_type(ResourceType::from(kind))
                    .set_tags(Some(user_tags))
                    .build(),
            );
        }
    }
    specs.insert(
        0,
        TagSpecification::builder()
            .resource_type(ResourceType::Volume)
            .set_tags(Some(volume_tags))
            .build(),
    );
    specs
}

async fn wait_available(ctx: &Ctx<'_>, volume_id: &str) -> Result<()> {
    let started = Instant::now();
    let deadline = started + CREATE_TIMEOUT;
    let mut pause = Duration::from_millis(250);
    loop {
        match describe_opt(ctx.ec2, volume_id).await? {
            Some(volume) => match volume.state() {
                Some(VolumeState::Available) => return Ok(()),
                Some(VolumeState::Creating) => {}
                other => bail!("{volume_id} did not become available: it is {other:?}"),
            },
            None if started.elapsed() < VISIBLE_WITHIN => tracing::debug!(
                "[{}] {volume_id} not visible yet (EC2 is eventually consistent)",
                ctx.domain
            ),
            None => bail!(
                "{volume_id} was created but DescribeVolumes still does not know it after {}s",
                VISIBLE_WITHIN.as_secs()
            ),
        }
        if Instant::now() >= deadline {
            bail!(
                "{volume_id} was still being created after {}s",
                CREATE_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_tags_join_the_users_volume_tags() {
        let user = serde_json::json!([
            { "ResourceType": "volume", "Tags": [{ "Key": "Name", "Value": "world" }, { "Key": "user:ec2fd.pool-name", "Value": "wrong" }] },
            { "ResourceType": "snapshot", "Tags": [{ "Key": "x", "Value": "y" }] }
        ]);
        let specs = tag_specifications(Some(&user), vec![tags::tag(tags::POOL_NAME, "mc")]);
        assert_eq!(specs.len(), 2);
        let volume: Vec<_> = specs[0]
            .tags()
            .iter()
            .map(|t| (t.key().unwrap(), t.value().unwrap()))
            .collect();
        assert_eq!(volume, [("user:ec2fd.pool-name", "mc"), ("Name", "world")]);
        assert_eq!(specs[1].resource_type(), Some(&ResourceType::Snapshot));
    }
}

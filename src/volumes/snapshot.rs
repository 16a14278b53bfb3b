//! EBS snapshots of a pool's volumes: taken after an event's hooks (they
//! unmount), periodically while the daemon watches, and by a successor that
//! brings a released copy to another zone; looked up by their tags (this
//! account's only); kept to `keep`.
//!
//! CreateSnapshot has no client token. Each call carries a `taken-by` tag
//! naming the run and the call, so that one whose answer was lost is found
//! again instead of taken twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Result};
use aws_sdk_ec2::types::{Filter, ResourceType, Snapshot, SnapshotState, TagSpecification};
use tokio::time::Instant;

use super::{ec2_error, tags, Ctx};
use crate::aws;

/// Why a snapshot was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// After an event's hooks, before the volume is released.
    Release,
    /// `every`, while the daemon watches.
    Periodic,
    /// Of a released copy, by the successor that restores it elsewhere.
    Takeover,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Release => "release",
            Kind::Periodic => "periodic",
            Kind::Takeover => "takeover",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        [Kind::Release, Kind::Periodic, Kind::Takeover]
            .into_iter()
            .find(|k| k.name() == name)
    }
}

/// What the file system was like at the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// The event's hooks ran (they unmount).
    Unmounted,
    /// `snapshot-begin` hooks ran (they freeze).
    Frozen,
    /// Nothing was asked of the file system: as after a power cut.
    CrashConsistent,
}

impl Consistency {
    pub fn name(self) -> &'static str {
        match self {
            Consistency::Unmounted => "unmounted",
            Consistency::Frozen => "frozen",
            Consistency::CrashConsistent => "crash-consistent",
        }
    }
}

/// One snapshot to take.
pub struct Request<'a> {
    pub volume_id: &'a str,
    pub zone: &'a str,
    pub pool: &'a str,
    pub generation: u64,
    pub kind: Kind,
    /// The event that asked for it (`periodic` for `every`).
    pub event: &'a str,
    pub consistency: Consistency,
}

/// Calls of this process, for the `taken-by` tag.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// How long a snapshot just taken may be missing from DescribeSnapshots
/// (EC2's API is eventually consistent).
const VISIBLE_WITHIN: Duration = Duration::from_secs(60);

/// Takes the snapshot; returns its ID. A refused call for too many pending
/// snapshots of the volume backs off and tries again; a call whose answer
/// was lost is looked up by its tags before another is made.
pub async fn take(ctx: &Ctx<'_>, req: &Request<'_>) -> Result<String> {
    let taken_by = format!(
        "{}/{}",
        ctx.transaction_id,
        CALLS.fetch_add(1, Ordering::Relaxed)
    );
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let snapshot_tags = vec![
        tags::tag(tags::DOMAIN, ctx.domain),
        tags::tag(tags::POOL_NAME, req.pool),
        tags::tag(tags::GENERATION, &req.generation.to_string()),
        tags::tag(tags::SOURCE_VOLUME, req.volume_id),
        tags::tag(tags::SOURCE_ZONE, req.zone),
        tags::tag(tags::SNAPSHOT_KIND, req.kind.name()),
        tags::tag(tags::INSTANCE, &ctx.facts.instance_id),
        tags::tag(tags::EVENT, req.event),
        tags::tag(tags::CONSISTENCY, req.consistency.name()),
        tags::tag(tags::MADE_BY, tags::MADE_BY_US),
        tags::tag(tags::TAKEN_BY, &taken_by),
        tags::tag(tags::LAST_USED, &now.to_string()),
    ];
    let description = format!(
        "ec2fleetd {} of {} ({} {} generation {}, {})",
        req.kind.name(),
        req.volume_id,
        ctx.domain,
        req.pool,
        req.generation,
        req.event
    );
    let mut pause = Duration::from_secs(1);
    for attempt in 1..=8 {
        let sent = ctx
            .ec2
            .create_snapshot()
            .volume_id(req.volume_id)
            .description(&description)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Snapshot)
                    .set_tags(Some(snapshot_tags.clone()))
                    .build(),
            )
            .customize()
            // Not the SDK's own retries: a retry after a lost answer would
            // take a second snapshot.
            .config_override(
                aws_sdk_ec2::config::Builder::default()
                    .retry_config(aws_config::retry::RetryConfig::disabled()),
            )
            .send()
            .await;
        match sent {
            Ok(out) => {
                let id = out.snapshot_id().unwrap_or_default().to_string();
                tracing::info!(
                    "[{}] took snapshot {id} of {} ({}, {}, generation {})",
                    ctx.domain,
                    req.volume_id,
                    req.kind.name(),
                    req.consistency.name(),
                    req.generation
                );
                ctx.ledger.with(|h| {
                    h.snapshots.push((
                        req.volume_id.to_string(),
                        id.clone(),
                        req.kind.name().to_string(),
                    ))
                });
                return Ok(id);
            }
            Err(e) if aws::code(&e) == Some("ConcurrentSnapshotLimitExceeded") && attempt < 8 => {
                tracing::warn!(
                    "[{}] {}: too many pending snapshots; trying again in {}s",
                    ctx.domain,
                    req.volume_id,
                    pause.as_secs()
                );
            }
            Err(e) if aws::is_transient(&e) && attempt < 8 => {
                if let Some(id) = find_taken(ctx, req.pool, &taken_by).await {
                    tracing::info!(
                        "[{}] snapshot {id} of {} was taken though its answer was lost",
                        ctx.domain,
                        req.volume_id
                    );
                    return Ok(id);
                }
                tracing::warn!(
                    "[{}] CreateSnapshot of {}: {}; trying again in {}s",
                    ctx.domain,
                    req.volume_id,
                    aws::describe(&e),
                    pause.as_secs()
                );
            }
            Err(e) => return Err(ec2_error("CreateSnapshot of", req.volume_id, &e)),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(15));
    }
    unreachable!("the last attempt returns")
}

/// The snapshot a lost CreateSnapshot made, if it shows within a few
/// seconds.
async fn find_taken(ctx: &Ctx<'_>, pool: &str, taken_by: &str) -> Option<String> {
    for _ in 0..3 {
        if let Ok(found) = query(ctx.ec2, ctx.domain, pool, Some((tags::TAKEN_BY, taken_by))).await
        {
            if let Some(id) = found.first().and_then(|s| s.snapshot_id()) {
                return Some(id.to_string());
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    None
}

/// This account's snapshots of the pool (and of `domain`), with one more
/// tag to match if given; every page.
pub async fn query(
    ec2: &aws_sdk_ec2::Client,
    domain: &str,
    pool: &str,
    also: Option<(&str, &str)>,
) -> Result<Vec<Snapshot>> {
    let f = |name: &str, value: &str| Filter::builder().name(name).values(value).build();
    let mut req = ec2
        .describe_snapshots()
        // Without it, AWS lists public snapshots too.
        .owner_ids("self")
        .filters(f(&format!("tag:{}", tags::DOMAIN), domain))
        .filters(f(&format!("tag:{}", tags::POOL_NAME), pool));
    if let Some((key, value)) = also {
        req = req.filters(f(&format!("tag:{key}"), value));
    }
    let mut pages = req.into_paginator().page_size(1000).send();
    let mut all = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| ec2_error("DescribeSnapshots of pool", pool, &e))?;
        all.extend(page.snapshots().iter().cloned());
    }
    Ok(all)
}

/// The snapshot, or `None` if EC2 does not know it.
pub async fn describe(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<Option<Snapshot>> {
    match ec2.describe_snapshots().snapshot_ids(id).send().await {
        Ok(out) => Ok(out.snapshots().first().cloned()),
        Err(e) if aws::code(&e) == Some("InvalidSnapshot.NotFound") => Ok(None),
        Err(e) => Err(ec2_error("DescribeSnapshots", id, &e)),
    }
}

/// Waits until the snapshot is `completed`, showing its progress; fails if
/// it ends in `error` (with EC2's message) or disappears.
pub async fn wait_completed(ctx: &Ctx<'_>, id: &str) -> Result<Snapshot> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(250);
    let mut last_line = None;
    loop {
        match describe(ctx.ec2, id).await? {
            Some(s) => match s.state() {
                Some(SnapshotState::Completed) => return Ok(s),
                Some(SnapshotState::Pending) => {
                    let line = format!(
                        "starting: waiting for snapshot {id} ({})",
                        s.progress().unwrap_or("?")
                    );
                    if last_line.as_ref() != Some(&line) {
                        tracing::info!("[{}] {line}", ctx.domain);
                        crate::systemd::status(&line);
                        last_line = Some(line);
                    }
                }
                Some(SnapshotState::Error) => bail!(
                    "snapshot {id} failed: {}",
                    s.state_message().unwrap_or("EC2 gave no reason")
                ),
                other => bail!("snapshot {id} is {other:?}, not usable"),
            },
            None if started.elapsed() < VISIBLE_WITHIN => {}
            None => bail!("snapshot {id} does not exist"),
        }
        tokio::time::sleep(pause).await;
        // Every 2 s for the first minute (a small incremental snapshot is
        // done in seconds), then every 10 s (a large one takes hours).
        let cap = if started.elapsed() < Duration::from_secs(60) {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(10)
        };
        pause = (pause * 2).min(cap);
    }
}

/// Unix seconds of the snapshot's start.
pub fn started(s: &Snapshot) -> i64 {
    s.start_time().map_or(0, |t| t.secs())
}

/// The generation a snapshot holds (0 when untagged: an operator's).
pub fn generation(s: &Snapshot) -> u64 {
    tags::find(s.tags(), tags::GENERATION)
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

pub fn made_by_us(s: &Snapshot) -> bool {
    tags::find(s.tags(), tags::MADE_BY) == Some(tags::MADE_BY_US)
}

/// `keep`: the pool's `keep` newest completed snapshots stay (all of them
/// count, whoever made them); older ones ec2fleetd made are deleted, but
/// never a pending one, one that holds a copy's last state, or one a
/// successor is restoring. Returns the IDs deleted.
pub async fn retain(ctx: &Ctx<'_>, pool: &str, keep: u32) -> Result<Vec<String>> {
    let all = query(ctx.ec2, ctx.domain, pool, None).await?;
    let mut completed: Vec<(super::follow::Item, &Snapshot)> = all
        .iter()
        .filter(|s| s.state() == Some(&SnapshotState::Completed))
        .filter_map(|s| super::follow::snap_of(s).map(|i| (i, s)))
        .collect();
    completed.sort_by_key(|c| std::cmp::Reverse(c.0.key()));
    let mut protected = protected(ctx, pool).await?;
    // The newest of the newest generation, whatever `keep` says.
    protected.extend(completed.first().map(|(i, _)| i.id().to_string()));
    let mut deleted = Vec::new();
    for (item, s) in completed.iter().skip(keep as usize) {
        let id = item.id();
        if !made_by_us(s) || protected.iter().any(|p| p == id) {
            continue;
        }
        match ctx.ec2.delete_snapshot().snapshot_id(id).send().await {
            Ok(_) => {
                tracing::info!(
                    "[{}] deleted snapshot {id} of pool {pool:?} (keep {keep})",
                    ctx.domain
                );
                deleted.push(id.to_string());
            }
            Err(e) => tracing::warn!("[{}] {}", ctx.domain, ec2_error("DeleteSnapshot", id, &e)),
        }
    }
    Ok(deleted)
}

/// Snapshots retention must leave: those named as a copy's last state and
/// those a successor restores from.
async fn protected(ctx: &Ctx<'_>, pool: &str) -> Result<Vec<String>> {
    let of = format!("{}/{pool}", ctx.domain);
    let (copies, batons) = tokio::try_join!(
        super::follow::pool_volumes(ctx, pool),
        super::follow::batons(ctx, &of, None)
    )?;
    Ok(copies
        .iter()
        .chain(&batons)
        .flat_map(|v| {
            [tags::LAST_SNAPSHOT, tags::RESTORED_FROM]
                .into_iter()
                .filter_map(|k| tags::value(v, k).map(String::from))
        })
        .collect())
}

//! Source `f`: the pool holds one dataset (a world, a chain), in copies
//! (volumes) and snapshots across zones. `f` attaches its newest copy: in
//! this zone, as `p` claims a volume; in another, restored here from the
//! snapshot that holds the copy's last state. Each commit makes a new
//! generation; nothing older than the newest data is ever attached.
//!
//! Exactly one instance moves the dataset on from a generation: the one
//! that wins its *baton*, a 1 GiB volume created with a client token that
//! names the generation and the item it moves on from, in that item's zone.
//! See `doc/volumes.md` ("One holder") for the argument.

use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_ec2::types::{
    Filter, ResourceType, Snapshot, SnapshotState, TagSpecification, Volume, VolumeState,
    VolumeType,
};
use tokio::time::Instant;

use super::snapshot::{self, Consistency, Kind};
use super::{attach_call, claim_marks, create, describe_opt, ec2_error, tags, At, AttachError};
use super::{Claim, Ctx};
use crate::aws;
use crate::config::VolumeSpec;

/// Where a copy is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    Free,
    /// Attached (or attaching, detaching) to this instance.
    AttachedTo(String),
    /// Not `available` for another reason (creating, deleting, error).
    Busy(String),
}

/// A copy of the dataset: a volume of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub volume_id: String,
    pub zone: String,
    pub holding: Holding,
    /// The snapshot that holds its last state (its holder took it on release).
    pub last_snapshot: Option<String>,
}

/// A snapshot of the dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    pub snapshot_id: String,
    pub source_zone: Option<String>,
    pub completed: bool,
    /// `None`: not ec2fleetd's (an operator's backup).
    pub kind: Option<Kind>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    Copy(Copy),
    Snap(Snap),
}

/// A copy or a snapshot, with what orders them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub what: What,
    pub generation: u64,
    /// Unix seconds: a snapshot's start, a copy's last claim.
    pub time: i64,
}

impl Item {
    pub fn id(&self) -> &str {
        match &self.what {
            What::Copy(c) => &c.volume_id,
            What::Snap(s) => &s.snapshot_id,
        }
    }

    /// Newest first: generation, then a copy above its own snapshots, then
    /// a release (or takeover) snapshot above a periodic or foreign one,
    /// then time.
    pub fn key(&self) -> (u64, u8, i64) {
        let rank = match &self.what {
            What::Copy(_) => 3,
            What::Snap(Snap {
                kind: Some(Kind::Release | Kind::Takeover),
                ..
            }) => 2,
            What::Snap(_) => 1,
        };
        (self.generation, rank, self.time)
    }
}

/// The newest item: what `f` must attach or restore.
pub fn newest(items: &[Item]) -> Option<&Item> {
    items
        .iter()
        .max_by(|a, b| a.key().cmp(&b.key()).then_with(|| b.id().cmp(a.id())))
}

/// The pool as `f` sees it.
struct View {
    items: Vec<Item>,
    /// Volumes of the pool: copies, superseded ones and moves in flight.
    volumes: Vec<Volume>,
}

fn copy_of(v: &Volume) -> Option<Item> {
    if tags::value(v, tags::SUPERSEDED).is_some() || tags::value(v, tags::IN_TRANSIT).is_some() {
        return None;
    }
    let holding = match (v.state(), v.attachments().first()) {
        (_, Some(a)) => Holding::AttachedTo(a.instance_id().unwrap_or("?").to_string()),
        (Some(VolumeState::Available), None) => Holding::Free,
        (state, None) => Holding::Busy(state.map_or("unknown".into(), |s| s.as_str().to_string())),
    };
    if matches!(
        v.state(),
        Some(VolumeState::Deleting | VolumeState::Deleted | VolumeState::Error)
    ) {
        return None;
    }
    Some(Item {
        generation: tags::value(v, tags::GENERATION)
            .and_then(|g| g.parse().ok())
            .unwrap_or(0),
        time: tags::value(v, tags::LAST_USED)
            .and_then(|t| t.parse().ok())
            .unwrap_or(0),
        what: What::Copy(Copy {
            volume_id: v.volume_id().unwrap_or_default().to_string(),
            zone: v.availability_zone().unwrap_or_default().to_string(),
            holding,
            last_snapshot: tags::value(v, tags::LAST_SNAPSHOT).map(String::from),
        }),
    })
}

pub(crate) fn snap_of(s: &Snapshot) -> Option<Item> {
    let completed = match s.state() {
        Some(SnapshotState::Completed) => true,
        Some(SnapshotState::Pending) => false,
        _ => return None,
    };
    if tags::find(s.tags(), tags::SUPERSEDED).is_some() {
        return None;
    }
    Some(Item {
        generation: snapshot::generation(s),
        time: snapshot::started(s),
        what: What::Snap(Snap {
            snapshot_id: s.snapshot_id().unwrap_or_default().to_string(),
            source_zone: tags::find(s.tags(), tags::SOURCE_ZONE).map(String::from),
            completed,
            kind: tags::find(s.tags(), tags::SNAPSHOT_KIND).and_then(Kind::from_name),
        }),
    })
}

/// Every volume of the pool (and of this domain), in every zone.
pub(crate) async fn pool_volumes(ctx: &Ctx<'_>, pool: &str) -> Result<Vec<Volume>> {
    let f = |name: &str, value: &str| Filter::builder().name(name).values(value).build();
    let mut pages = ctx
        .ec2
        .describe_volumes()
        .filters(f(&format!("tag:{}", tags::DOMAIN), ctx.domain))
        .filters(f(&format!("tag:{}", tags::POOL_NAME), pool))
        .into_paginator()
        .page_size(500)
        .send();
    let mut all = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| ec2_error("DescribeVolumes (dataset)", pool, &e))?;
        all.extend(page.volumes().iter().cloned());
    }
    Ok(all)
}

async fn read(ctx: &Ctx<'_>, pool: &str) -> Result<View> {
    let (volumes, snapshots) = tokio::try_join!(
        pool_volumes(ctx, pool),
        snapshot::query(ctx.ec2, ctx.domain, pool, None)
    )?;
    let mut items: Vec<Item> = volumes.iter().filter_map(copy_of).collect();
    items.extend(snapshots.iter().filter_map(snap_of));
    Ok(View { items, volumes })
}

fn pool_of(spec: &VolumeSpec) -> &str {
    spec.pool_name
        .as_deref()
        .expect("validated: f has a pool-name")
}

/// Source `f`. `Ok(None)`: the pool holds no data (a first boot): the next
/// source may make the first copy. An error fails the domain: an `f` that
/// found data never falls through to an empty or older disk.
pub(crate) async fn follow(ctx: &Ctx<'_>, at: &At<'_>, spec: &VolumeSpec) -> Result<Option<Claim>> {
    let pool = pool_of(spec);
    let deadline = Instant::now() + spec.wait_available;
    let mut pause = Duration::from_millis(500);
    loop {
        let view = read(ctx, pool).await?;
        let Some(newest) = newest(&view.items).cloned() else {
            tracing::info!("[{}] pool {pool:?} holds no data yet", ctx.domain);
            return Ok(None);
        };
        let waiting = match &newest.what {
            What::Copy(c) => match &c.holding {
                Holding::AttachedTo(i) if *i == ctx.facts.instance_id => {
                    return adopt(ctx, at, &view, c, &newest).await.map(Some);
                }
                Holding::AttachedTo(i) => Some(format!(
                    "its newest copy {} (generation {}) is attached to {i}",
                    c.volume_id, newest.generation
                )),
                Holding::Busy(state) => Some(format!(
                    "its newest copy {} (generation {}) is {state}",
                    c.volume_id, newest.generation
                )),
                Holding::Free => None,
            },
            What::Snap(_) => None,
        };
        let why = match waiting {
            None => match take_baton(ctx, pool, &newest).await? {
                Baton::Won(baton) => {
                    return move_on(ctx, at, spec, &newest, &baton).await.map(Some);
                }
                Baton::Held(holder) => format!(
                    "{holder} is taking it on from generation {}",
                    newest.generation
                ),
            },
            Some(why) => why,
        };
        let now = Instant::now();
        if now >= deadline {
            if let Some(max_loss) = spec.max_loss {
                if let Some(older) = within_loss(&view.items, &newest, max_loss) {
                    tracing::warn!(
                        "[{}] pool {pool:?}: {why}; max-loss allows {}, at most {}s older",
                        ctx.domain,
                        older.id(),
                        max_loss.as_secs()
                    );
                    if let Baton::Won(baton) = take_baton(ctx, pool, &newest).await? {
                        return move_on(ctx, at, spec, &older, &baton).await.map(Some);
                    }
                }
            }
            bail!(
                "the dataset of pool {pool:?}: {why}, still after {}s (wait-available); nothing older is attached in its place{}",
                spec.wait_available.as_secs(),
                if spec.max_loss.is_some() {
                    " (no snapshot within max-loss)"
                } else {
                    " (max-loss allows an older snapshot)"
                }
            );
        }
        let line = format!(
            "starting: waiting up to {}s for the dataset of pool {pool:?}: {why}",
            (deadline - now).as_secs()
        );
        tracing::info!("[{}] {line}", ctx.domain);
        crate::systemd::status(&line);
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// A completed snapshot of the newest item's generation taken at most
/// `max_loss` before now, when the newest copy stays held elsewhere.
fn within_loss(items: &[Item], newest: &Item, max_loss: Duration) -> Option<Item> {
    let now = unix_now();
    items
        .iter()
        .filter(|i| {
            matches!(&i.what, What::Snap(s) if s.completed)
                && i.generation == newest.generation
                && now - i.time <= max_loss.as_secs() as i64
        })
        .max_by_key(|i| i.key())
        .cloned()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The newest copy is attached here already (the daemon restarted).
async fn adopt(ctx: &Ctx<'_>, at: &At<'_>, view: &View, c: &Copy, item: &Item) -> Result<Claim> {
    let volume = view
        .volumes
        .iter()
        .find(|v| v.volume_id() == Some(&c.volume_id))
        .expect("the copy came from these volumes");
    let device = volume.attachments().first().and_then(|a| a.device());
    if device != Some(at.device) {
        bail!(
            "{} is attached here as {}, not {}",
            c.volume_id,
            device.unwrap_or("?"),
            at.device
        );
    }
    tracing::info!(
        "[{}] {} (generation {}) is attached here already",
        ctx.domain,
        c.volume_id,
        item.generation
    );
    let marked = super::is_marked(volume);
    ctx.ledger
        .adopted(at.index, &c.volume_id, at.source, at.device, marked);
    // An earlier run's claim that never committed: this commit makes the
    // next generation; a committed one keeps its own.
    let generation = item.generation + u64::from(marked);
    ctx.ledger.generation(&c.volume_id, generation);
    super::wait_attached(ctx, &c.volume_id).await?;
    Ok(Claim {
        volume_id: c.volume_id.clone(),
    })
}

/// Brings `item` here as the next generation; this run holds its baton.
async fn move_on(
    ctx: &Ctx<'_>,
    at: &At<'_>,
    spec: &VolumeSpec,
    item: &Item,
    baton: &str,
) -> Result<Claim> {
    let next = item.generation + 1;
    match &item.what {
        What::Copy(c) if c.zone == ctx.facts.zone => {
            // Before the attach: from now on its last snapshot may be older.
            if c.last_snapshot.is_some() {
                tags::remove(ctx.ec2, &c.volume_id, &[tags::LAST_SNAPSHOT]).await?;
            }
            attach_call(ctx, at, &c.volume_id, claim_marks(ctx, true))
                .await
                .map_err(|e| match e {
                    AttachError::Taken(code) => anyhow!(
                        "{} was taken though this instance holds its baton ({code}): is another daemon using pool {:?} with a source other than 'f'?",
                        c.volume_id,
                        pool_of(spec)
                    ),
                    AttachError::Failed(e) => e,
                })?;
            ctx.ledger.generation(&c.volume_id, next);
            tracing::info!(
                "[{}] claimed {} of pool {:?}: generation {next}",
                ctx.domain,
                c.volume_id,
                pool_of(spec)
            );
            Ok(Claim {
                volume_id: c.volume_id.clone(),
            })
        }
        What::Copy(c) => {
            let started = Instant::now();
            let mut source = None;
            if let Some(id) = last_state_of(ctx, c, item.generation).await? {
                match completed(ctx, baton, &id).await {
                    Ok(s) => source = Some(s),
                    Err(e) => tracing::warn!(
                        "[{}] {e:#}; taking a snapshot of the released copy instead",
                        ctx.domain
                    ),
                }
            }
            let source = match source {
                Some(s) => s,
                None => takeover(ctx, spec, c, item.generation, baton).await?,
            };
            restore(ctx, at, spec, &source, next, started).await
        }
        What::Snap(s) => {
            let started = Instant::now();
            let source = completed(ctx, baton, &s.snapshot_id)
                .await
                .map_err(|e| cannot(ctx, spec, e))?;
            restore(ctx, at, spec, &source, next, started).await
        }
    }
}

/// A snapshot of the released copy `c`, taken by its successor, once
/// completed. One that fails is taken again, once: EBS reports a failed
/// snapshot for trouble of its own, and the copy is still there.
async fn takeover(
    ctx: &Ctx<'_>,
    spec: &VolumeSpec,
    c: &Copy,
    generation: u64,
    baton: &str,
) -> Result<Snapshot> {
    tracing::info!(
        "[{}] {} in {} has no snapshot of its last state: taking one",
        ctx.domain,
        c.volume_id,
        c.zone
    );
    let req = snapshot::Request {
        volume_id: &c.volume_id,
        zone: &c.zone,
        pool: pool_of(spec),
        generation,
        kind: Kind::Takeover,
        event: "takeover",
        consistency: Consistency::CrashConsistent,
    };
    let id = snapshot::take(ctx, &req).await?;
    match completed(ctx, baton, &id).await {
        Ok(s) => Ok(s),
        Err(e) => {
            tracing::warn!("[{}] {e:#}; taking another", ctx.domain);
            let id = snapshot::take(ctx, &req).await?;
            completed(ctx, baton, &id)
                .await
                .map_err(|e| cannot(ctx, spec, e))
        }
    }
}

fn cannot(ctx: &Ctx<'_>, spec: &VolumeSpec, e: anyhow::Error) -> anyhow::Error {
    e.context(format!(
        "the dataset of pool {:?} cannot be brought to {}",
        pool_of(spec),
        ctx.facts.zone
    ))
}

/// Waits for the snapshot to complete, the baton naming it meanwhile (a
/// successor restoring it: retention leaves it alone).
async fn completed(ctx: &Ctx<'_>, baton: &str, snapshot_id: &str) -> Result<Snapshot> {
    tags::set(
        ctx.ec2,
        baton,
        vec![tags::tag(tags::RESTORED_FROM, snapshot_id)],
    )
    .await?;
    snapshot::wait_completed(ctx, snapshot_id).await
}

/// The snapshot named as the copy's last state, if it is one: of this copy,
/// of its generation, not failed.
async fn last_state_of(ctx: &Ctx<'_>, c: &Copy, generation: u64) -> Result<Option<String>> {
    let Some(id) = &c.last_snapshot else {
        return Ok(None);
    };
    let Some(s) = snapshot::describe(ctx.ec2, id).await? else {
        return Ok(None);
    };
    let of_it = tags::find(s.tags(), tags::SOURCE_VOLUME) == Some(c.volume_id.as_str())
        && snapshot::generation(&s) == generation
        && matches!(
            s.state(),
            Some(SnapshotState::Pending | SnapshotState::Completed)
        );
    Ok(of_it.then(|| id.clone()))
}

/// Creates the next generation's copy here from the completed snapshot,
/// and attaches it.
async fn restore(
    ctx: &Ctx<'_>,
    at: &At<'_>,
    spec: &VolumeSpec,
    s: &Snapshot,
    generation: u64,
    started: Instant,
) -> Result<Claim> {
    let snapshot_id = s.snapshot_id().unwrap_or_default();
    let waited = started.elapsed();
    let claim = create::restore(
        ctx,
        at,
        spec,
        &create::Restore {
            snapshot_id,
            snapshot_size: s.volume_size().unwrap_or(1),
            generation,
            token: &token(&["restore", ctx.transaction_id, snapshot_id, &ctx.facts.zone]),
        },
    )
    .await?;
    ctx.ledger.generation(&claim.volume_id, generation);
    ctx.ledger.restored(&claim.volume_id, snapshot_id, waited);
    tracing::info!(
        "[{}] restored {snapshot_id} as {} in {} (generation {generation}; waited {:.1}s for the snapshot)",
        ctx.domain,
        claim.volume_id,
        ctx.facts.zone,
        waited.as_secs_f64()
    );
    Ok(claim)
}

/// A client token (at most 64 characters) from `parts` (FNV-1a, 64 bits).
fn token(parts: &[&str]) -> String {
    let h = parts.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, p| {
        p.bytes()
            .chain(std::iter::once(0))
            .fold(h, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
    });
    format!("ec2fd-{}-{h:016x}", parts[0])
}

/// Whether this run may move the dataset on.
enum Baton {
    /// The baton volume's ID: this instance holds it.
    Won(String),
    /// Another, living instance holds it.
    Held(String),
}

/// The zone a baton for `item` lives in: the item's own, so that every
/// contender asks for the same volume.
async fn baton_zone(ctx: &Ctx<'_>, item: Option<&Item>) -> Result<String> {
    match item.map(|i| &i.what) {
        Some(What::Copy(c)) => Ok(c.zone.clone()),
        Some(What::Snap(Snap {
            source_zone: Some(z),
            ..
        })) => Ok(z.clone()),
        // A first copy, or an operator's snapshot: the first zone of the
        // region (by name) that this account has available, the same for
        // every contender.
        _ => first_zone(ctx).await,
    }
}

async fn first_zone(ctx: &Ctx<'_>) -> Result<String> {
    let out = ctx
        .ec2
        .describe_availability_zones()
        .filters(Filter::builder().name("state").values("available").build())
        .send()
        .await
        .map_err(|e| ec2_error("DescribeAvailabilityZones", &ctx.facts.region, &e))?;
    out.availability_zones()
        .iter()
        .filter(|z| z.zone_type().is_none_or(|t| t == "availability-zone"))
        .filter_map(|z| z.zone_name())
        .min()
        .map(String::from)
        .ok_or_else(|| anyhow!("the region {} has no available zone", ctx.facts.region))
}

/// Takes the baton for moving on from `item` (the generation it holds).
async fn take_baton(ctx: &Ctx<'_>, pool: &str, item: &Item) -> Result<Baton> {
    let zone = baton_zone(ctx, Some(item)).await?;
    baton(ctx, pool, item.generation, item.id(), &zone).await
}

/// The baton for a pool's first copy (`c` after `f` found nothing).
/// `Ok(true)`: this run makes the first copy; `Ok(false)`: another
/// instance made it meanwhile, and `f` must follow it instead.
pub(crate) async fn take_first_baton(ctx: &Ctx<'_>, spec: &VolumeSpec) -> Result<bool> {
    let pool = pool_of(spec);
    let deadline = Instant::now() + spec.wait_available;
    let zone = baton_zone(ctx, None).await?;
    loop {
        match baton(ctx, pool, 0, "first", &zone).await? {
            Baton::Won(_) => return Ok(true),
            Baton::Held(holder) if Instant::now() >= deadline => bail!(
                "{holder} is making the first copy of pool {pool:?}'s dataset: this instance does not make a second"
            ),
            Baton::Held(holder) => {
                let line = format!(
                    "starting: {holder} is making the first copy of pool {pool:?}; waiting"
                );
                tracing::info!("[{}] {line}", ctx.domain);
                crate::systemd::status(&line);
                tokio::time::sleep(Duration::from_secs(2)).await;
                // Its copy may be there now: then `f` must take it, not `c`.
                if newest(&read(ctx, pool).await?.items).is_some() {
                    tracing::info!(
                        "[{}] pool {pool:?} got its first copy from {holder} meanwhile: following it",
                        ctx.domain
                    );
                    return Ok(false);
                }
            }
        }
    }
}

async fn baton(
    ctx: &Ctx<'_>,
    pool: &str,
    generation: u64,
    item: &str,
    zone: &str,
) -> Result<Baton> {
    let of = format!("{}/{pool}", ctx.domain);
    let from = format!("{generation}:{item}");
    for _ in 0..4 {
        let batons = batons(ctx, &of, Some(&from)).await?;
        let top = batons.iter().max_by_key(|b| epoch(b));
        let next = match top {
            None => 0,
            Some(b) => {
                let holder = tags::value(b, tags::HOLDER).unwrap_or("?").to_string();
                let id = b.volume_id().unwrap_or_default().to_string();
                if holder == ctx.facts.instance_id {
                    ctx.ledger.with(|h| h.batons.push(id.clone()));
                    return Ok(Baton::Won(id));
                }
                if tags::value(b, tags::ABANDONED).is_none() && alive(ctx, &holder).await? {
                    return Ok(Baton::Held(holder));
                }
                epoch(b) + 1
            }
        };
        let t = token(&["baton", &of, &from, &next.to_string()]);
        let marks = vec![
            tags::tag(tags::BATON_OF, &of),
            tags::tag(tags::BATON_FOR, &from),
            tags::tag(tags::BATON_EPOCH, &next.to_string()),
            tags::tag(tags::HOLDER, &ctx.facts.instance_id),
            tags::tag(tags::MADE_BY, tags::MADE_BY_US),
        ];
        let sent = ctx
            .ec2
            .create_volume()
            .availability_zone(zone)
            .size(1)
            .volume_type(VolumeType::Gp3)
            .client_token(&t)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Volume)
                    .set_tags(Some(marks))
                    .build(),
            )
            .send()
            .await;
        let id = match sent {
            Ok(out) => out.volume_id().unwrap_or_default().to_string(),
            // Another took this epoch's token first (or its baton is gone):
            // read again, once what it made can be seen.
            Err(e) if aws::code(&e) == Some("IdempotentParameterMismatch") => {
                tokio::time::sleep(Duration::from_millis(500 + fastrand::u64(0..500))).await;
                continue;
            }
            Err(e) => return Err(ec2_error("CreateVolume (baton)", &of, &e)),
        };
        let volume = visible(ctx, &id).await?;
        let holder = tags::value(&volume, tags::HOLDER)
            .unwrap_or("?")
            .to_string();
        if holder == ctx.facts.instance_id {
            tracing::info!(
                "[{}] holds the baton {id} for pool {pool:?} (generation {generation}, epoch {next})",
                ctx.domain
            );
            ctx.ledger.with(|h| h.batons.push(id.clone()));
            return Ok(Baton::Won(id));
        }
        return Ok(Baton::Held(holder));
    }
    // Someone holds it whom the reads do not show yet: wait as for a holder.
    Ok(Baton::Held("another instance".into()))
}

fn epoch(v: &Volume) -> u64 {
    tags::value(v, tags::BATON_EPOCH)
        .and_then(|e| e.parse().ok())
        .unwrap_or(0)
}

/// The batons of `DOMAIN/POOL`, those for `from` (`G:ITEM`) if given.
pub(crate) async fn batons(ctx: &Ctx<'_>, of: &str, from: Option<&str>) -> Result<Vec<Volume>> {
    let f = |name: &str, value: &str| Filter::builder().name(name).values(value).build();
    let mut req = ctx
        .ec2
        .describe_volumes()
        .filters(f(&format!("tag:{}", tags::BATON_OF), of));
    if let Some(from) = from {
        req = req.filters(f(&format!("tag:{}", tags::BATON_FOR), from));
    }
    let out = req
        .send()
        .await
        .map_err(|e| ec2_error("DescribeVolumes (batons)", of, &e))?;
    Ok(out.volumes().to_vec())
}

/// The volume just created, once DescribeVolumes shows it.
async fn visible(ctx: &Ctx<'_>, id: &str) -> Result<Volume> {
    let started = Instant::now();
    loop {
        if let Some(v) = describe_opt(ctx.ec2, id).await? {
            return Ok(v);
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("{id} was created but DescribeVolumes does not know it after 60s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether the instance may still act: anything but terminated, shutting
/// down or unknown.
async fn alive(ctx: &Ctx<'_>, instance: &str) -> Result<bool> {
    match ctx
        .ec2
        .describe_instances()
        .instance_ids(instance)
        .send()
        .await
    {
        Ok(out) => {
            let state = out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .find_map(|i| {
                    i.state()
                        .and_then(|s| s.name())
                        .map(|n| n.as_str().to_string())
                });
            Ok(!matches!(
                state.as_deref(),
                None | Some("terminated" | "shutting-down")
            ))
        }
        Err(e) if aws::code(&e) == Some("InvalidInstanceID.NotFound") => Ok(false),
        Err(e) => Err(ec2_error("DescribeInstances", instance, &e)),
    }
}

/// After this run committed `volume_id` as `generation` of the pool: older
/// copies are superseded (deleted when ec2fleetd made them and nothing
/// holds them, else tagged so that no source picks them), moves that died
/// are cleaned up, and batons two generations old go.
pub(crate) async fn after_commit(ctx: &Ctx<'_>, pool: &str, volume_id: &str, generation: u64) {
    if let Err(e) = supersede(ctx, pool, volume_id, generation).await {
        tracing::warn!(
            "[{}] cleaning up pool {pool:?} after generation {generation}: {e:#}",
            ctx.domain
        );
    }
}

async fn supersede(ctx: &Ctx<'_>, pool: &str, mine: &str, generation: u64) -> Result<()> {
    let volumes = pool_volumes(ctx, pool).await?;
    for v in &volumes {
        let id = v.volume_id().unwrap_or_default();
        if id == mine {
            continue;
        }
        let gen: u64 = tags::value(v, tags::GENERATION)
            .and_then(|g| g.parse().ok())
            .unwrap_or(0);
        let ours = tags::value(v, tags::MADE_BY) == Some(tags::MADE_BY_US);
        let free = v.state() == Some(&VolumeState::Available) && v.attachments().is_empty();
        let leftover = tags::value(v, tags::IN_TRANSIT).is_some()
            && tags::value(v, tags::TRANSACTION) != Some(ctx.transaction_id);
        if gen >= generation && !leftover {
            continue;
        }
        if leftover && gen > generation {
            continue;
        }
        if ours && free {
            tracing::info!(
                "[{}] {id} is superseded by generation {generation} ({mine}): deleting it",
                ctx.domain
            );
            super::delete_volume(ctx, id).await?;
        } else if tags::value(v, tags::SUPERSEDED).is_none() && !leftover {
            tags::set(
                ctx.ec2,
                id,
                vec![tags::tag(tags::SUPERSEDED, &generation.to_string())],
            )
            .await?;
            tracing::info!(
                "[{}] {id} is superseded by generation {generation} ({mine}); kept{}",
                ctx.domain,
                if ours {
                    " (it is attached)"
                } else {
                    " (ec2fleetd did not make it)"
                }
            );
        }
    }
    let of = format!("{}/{pool}", ctx.domain);
    for b in batons(ctx, &of, None).await? {
        let from_gen: u64 = tags::value(&b, tags::BATON_FOR)
            .and_then(|f| f.split(':').next())
            .and_then(|g| g.parse().ok())
            .unwrap_or(0);
        if from_gen + 1 < generation {
            let id = b.volume_id().unwrap_or_default();
            if let Err(e) = ctx.ec2.delete_volume().volume_id(id).send().await {
                tracing::warn!(
                    "[{}] {}",
                    ctx.domain,
                    ec2_error("DeleteVolume (baton)", id, &e)
                );
            }
        }
    }
    Ok(())
}

/// A rolled-back move: its batons hold nothing any more.
pub(crate) async fn abandon_batons(ctx: &Ctx<'_>) {
    let batons = ctx.ledger.with(|h| std::mem::take(&mut h.batons));
    for id in batons {
        if let Err(e) = tags::set(ctx.ec2, &id, vec![tags::tag(tags::ABANDONED, "true")])
            .await
            .with_context(|| format!("giving up the baton {id}"))
        {
            tracing::warn!("[{}] {e:#}", ctx.domain);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(id: &str, generation: u64, time: i64) -> Item {
        Item {
            what: What::Copy(Copy {
                volume_id: id.into(),
                zone: "us-east-1a".into(),
                holding: Holding::Free,
                last_snapshot: None,
            }),
            generation,
            time,
        }
    }

    fn snap(id: &str, generation: u64, kind: Option<Kind>, time: i64) -> Item {
        Item {
            what: What::Snap(Snap {
                snapshot_id: id.into(),
                source_zone: None,
                completed: true,
                kind,
            }),
            generation,
            time,
        }
    }

    #[test]
    fn the_generation_decides_first() {
        let items = [
            copy("vol-old", 1, 900),
            snap("snap-new", 2, Some(Kind::Periodic), 100),
        ];
        assert_eq!(newest(&items).unwrap().id(), "snap-new");
    }

    #[test]
    fn a_copy_is_above_its_own_snapshots() {
        let items = [
            snap("snap-release", 3, Some(Kind::Release), 900),
            copy("vol-3", 3, 100),
        ];
        assert_eq!(newest(&items).unwrap().id(), "vol-3");
    }

    #[test]
    fn a_release_snapshot_is_above_a_periodic_one_then_time() {
        let items = [
            snap("snap-periodic", 4, Some(Kind::Periodic), 900),
            snap("snap-release", 4, Some(Kind::Release), 100),
            snap("snap-foreign", 4, None, 950),
        ];
        assert_eq!(newest(&items).unwrap().id(), "snap-release");
        let items = [
            snap("snap-a", 4, Some(Kind::Periodic), 100),
            snap("snap-b", 4, Some(Kind::Periodic), 200),
        ];
        assert_eq!(newest(&items).unwrap().id(), "snap-b");
        assert!(newest(&[]).is_none());
    }

    #[test]
    fn max_loss_takes_a_recent_snapshot_of_the_newest_generation_only() {
        let now = unix_now();
        let newest = copy("vol-5", 5, now);
        let items = [
            newest.clone(),
            snap("snap-recent", 5, Some(Kind::Periodic), now - 300),
            snap("snap-old", 5, Some(Kind::Periodic), now - 3000),
            snap("snap-older-gen", 4, Some(Kind::Release), now - 10),
        ];
        let got = within_loss(&items, &newest, Duration::from_secs(600)).unwrap();
        assert_eq!(got.id(), "snap-recent");
        assert!(within_loss(&items, &newest, Duration::from_secs(100)).is_none());
    }

    #[test]
    fn tokens_are_short_and_differ() {
        let a = token(&["baton", "mc/worlds", "3:vol-1", "0"]);
        let b = token(&["baton", "mc/worlds", "3:vol-1", "1"]);
        assert_ne!(a, b);
        assert!(a.len() <= 64 && a.starts_with("ec2fd-baton-"));
        assert_eq!(a, token(&["baton", "mc/worlds", "3:vol-1", "0"]));
    }
}

//! Source `p`: claim a free volume of the pool in this instance's zone.
//! AttachVolume is the arbiter: a volume someone else won is skipped.

use std::time::Duration;

use anyhow::Result;
use aws_sdk_ec2::types::{Filter, Volume, VolumeState};
use tokio::time::Instant;

use super::{attach_call, claim_marks, tags, At, AttachError, Claim, Ctx};
use crate::config::{PoolPref, VolumeSpec};

/// A free pool volume, as ordering sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub volume_id: String,
    /// The `user:ec2fd.ts-used` tag, Unix seconds.
    pub last_used: Option<u64>,
}

/// A number that differs between instances and stays the same for one, so
/// that instances booting together spread over the pool (FNV-1a).
fn spread(instance_id: &str) -> u64 {
    instance_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn rotate<T>(items: &mut [T], by: u64) {
    if !items.is_empty() {
        let n = items.len();
        items.rotate_left((by % n as u64) as usize);
    }
}

/// The order to try free volumes in. With `index`, the volume at the launch
/// index comes first, as in the Python daemon; after the preferred one(s),
/// and within ties, the order is rotated by the instance ID, so that the
/// losers of a race do not all chase the same next volume.
pub fn order_candidates(
    mut free: Vec<Candidate>,
    pref: PoolPref,
    launch_index: u64,
    instance_id: &str,
) -> Vec<String> {
    free.sort_by(|a, b| a.volume_id.cmp(&b.volume_id));
    let by = spread(instance_id);
    match pref {
        PoolPref::Index => {
            if !free.is_empty() {
                let first = (launch_index % free.len() as u64) as usize;
                let chosen = free.remove(first);
                rotate(&mut free, by);
                free.insert(0, chosen);
            }
        }
        PoolPref::Random => {
            let mut rng = fastrand::Rng::with_seed(by ^ u64::from(std::process::id()));
            rng.shuffle(&mut free);
        }
        PoolPref::LeastRecentlyUsed | PoolPref::MostRecentlyUsed => {
            let recent_first = pref == PoolPref::MostRecentlyUsed;
            free.sort_by(|a, b| {
                let (a, b) = (a.last_used.unwrap_or(0), b.last_used.unwrap_or(0));
                if recent_first {
                    b.cmp(&a)
                } else {
                    a.cmp(&b)
                }
            });
            // Rotate each run of equal timestamps.
            let mut start = 0;
            while start < free.len() {
                let t = free[start].last_used;
                let end = free[start..]
                    .iter()
                    .position(|c| c.last_used != t)
                    .map_or(free.len(), |p| start + p);
                rotate(&mut free[start..end], by);
                start = end;
            }
        }
    }
    free.into_iter().map(|c| c.volume_id).collect()
}

/// The volumes of this domain's pool `pool` that also match `filter`
/// (`name`, `value`); `what` names the query in errors.
pub(super) async fn pool_query(
    ctx: &Ctx<'_>,
    pool: &str,
    filter: (&str, &str),
    what: &str,
) -> Result<Vec<Volume>> {
    let f = |name: &str, value: &str| Filter::builder().name(name).values(value).build();
    let out = ctx
        .ec2
        .describe_volumes()
        .filters(f(&format!("tag:{}", tags::DOMAIN), ctx.domain))
        .filters(f(&format!("tag:{}", tags::POOL_NAME), pool))
        .filters(f(filter.0, filter.1))
        .send()
        .await
        .map_err(|e| super::ec2_error(what, pool, &e))?;
    Ok(out.volumes().to_vec())
}

/// The volumes of the spec's pool (and of this domain) in this zone.
pub async fn in_zone(ctx: &Ctx<'_>, spec: &VolumeSpec) -> Result<Vec<Volume>> {
    let pool = spec
        .pool_name
        .as_deref()
        .expect("validated: p and c have a pool-name");
    pool_query(
        ctx,
        pool,
        ("availability-zone", &ctx.facts.zone),
        "DescribeVolumes (pool)",
    )
    .await
}

/// Claims a free volume of `volumes` (the pool as [`in_zone`] found it),
/// looking again until `wait-available` has passed. `Ok(None)` when the
/// pool had nothing free: the next source is tried.
pub(crate) async fn claim(
    ctx: &Ctx<'_>,
    at: &At<'_>,
    spec: &VolumeSpec,
    mut volumes: Vec<Volume>,
) -> Result<Option<Claim>> {
    let pool = spec
        .pool_name
        .as_deref()
        .expect("validated: p has a pool-name");
    let deadline = Instant::now() + spec.wait_available;
    let mut pause = Duration::from_millis(500);
    loop {
        let free: Vec<Candidate> = volumes
            .iter()
            .filter(|v| {
                v.state() == Some(&VolumeState::Available)
                    && tags::value(v, tags::IN_TRANSIT).is_none()
                    && tags::value(v, tags::SUPERSEDED).is_none()
            })
            .map(|v| Candidate {
                volume_id: v.volume_id().unwrap_or_default().to_string(),
                last_used: tags::value(v, tags::LAST_USED).and_then(|t| t.parse().ok()),
            })
            .collect();
        let launch_index = ctx.facts.launch_index.parse().unwrap_or(0);
        let order = order_candidates(free, spec.pool_pref, launch_index, &ctx.facts.instance_id);
        let tried = order.len();
        for volume_id in order {
            match attach_call(ctx, at, &volume_id, claim_marks(ctx, true)).await {
                Ok(()) => {
                    tracing::info!("[{}] claimed {volume_id} from pool {pool:?}", ctx.domain);
                    return Ok(Some(Claim { volume_id }));
                }
                Err(AttachError::Taken(code)) => {
                    tracing::info!("[{}] {volume_id} of pool {pool:?} was taken first ({code}); trying the next", ctx.domain);
                }
                Err(AttachError::Failed(e)) => return Err(e),
            }
        }
        let now = Instant::now();
        if now >= deadline {
            tracing::info!(
                "[{}] pool {pool:?} has no free volume in {} ({} volume(s), {tried} tried)",
                ctx.domain,
                ctx.facts.zone,
                volumes.len()
            );
            return Ok(None);
        }
        let line = format!(
            "starting: waiting up to {}s for a free volume of pool {pool:?} ({} held)",
            (deadline - now).as_secs(),
            volumes.len()
        );
        tracing::info!("[{}] {line}", ctx.domain);
        crate::systemd::status(&line);
        let jitter = Duration::from_millis(fastrand::u64(0..250));
        tokio::time::sleep((pause + jitter).min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_secs(5));
        volumes = in_zone(ctx, spec).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                volume_id: format!("vol-{i:02}"),
                last_used: None,
            })
            .collect()
    }

    #[test]
    fn index_takes_the_launch_index_first() {
        let order = order_candidates(pool(4), PoolPref::Index, 6, "i-a");
        assert_eq!(order[0], "vol-02");
        assert_eq!(order.len(), 4);
    }

    #[test]
    fn losers_spread_over_the_rest() {
        // Many instances with the same launch index: their second choices differ.
        let seconds: std::collections::HashSet<String> = (0..20)
            .map(|i| {
                order_candidates(pool(10), PoolPref::Index, 0, &format!("i-{i:017x}"))[1].clone()
            })
            .collect();
        assert!(seconds.len() >= 4, "{seconds:?}");
    }

    #[test]
    fn least_and_most_recently_used() {
        let mut p = pool(3);
        p[0].last_used = Some(300);
        p[1].last_used = Some(100);
        p[2].last_used = Some(200);
        assert_eq!(
            order_candidates(p.clone(), PoolPref::LeastRecentlyUsed, 0, "i-a"),
            ["vol-01", "vol-02", "vol-00"]
        );
        assert_eq!(
            order_candidates(p, PoolPref::MostRecentlyUsed, 0, "i-a"),
            ["vol-00", "vol-02", "vol-01"]
        );
    }

    #[test]
    fn never_used_counts_as_oldest() {
        let mut p = pool(2);
        p[0].last_used = Some(5);
        assert_eq!(
            order_candidates(p, PoolPref::LeastRecentlyUsed, 0, "i-a"),
            ["vol-01", "vol-00"]
        );
    }

    #[test]
    fn random_keeps_every_volume() {
        let mut order = order_candidates(pool(8), PoolPref::Random, 0, "i-a");
        order.sort();
        assert_eq!(
            order,
            pool(8).into_iter().map(|c| c.volume_id).collect::<Vec<_>>()
        );
    }
    #[test]
    fn ties_under_recently_used_spread_over_the_instances() {
        // volumes.md: "among volumes with the same timestamp, the order is
        // rotated by a hash of the instance ID".
        for pref in [PoolPref::LeastRecentlyUsed, PoolPref::MostRecentlyUsed] {
            let mut tied = pool(10);
            for c in &mut tied {
                c.last_used = Some(1_000);
            }
            let mut firsts = std::collections::HashSet::new();
            for i in 0..20 {
                let order = order_candidates(tied.clone(), pref, 0, &format!("i-{i:017x}"));
                firsts.insert(order[0].clone());
                let mut sorted = order.clone();
                sorted.sort();
                assert_eq!(
                    sorted,
                    pool(10)
                        .into_iter()
                        .map(|c| c.volume_id)
                        .collect::<Vec<_>>(),
                    "{pref:?} lost or repeated a volume: {order:?}"
                );
            }
            assert!(firsts.len() >= 4, "{pref:?}: {firsts:?}");
        }
    }

    #[test]
    fn ties_rotate_only_among_themselves() {
        // The timestamp still decides first; only equal ones are rotated.
        let mut p = pool(5);
        for (c, t) in p
            .iter_mut()
            .zip([Some(50), Some(10), Some(10), Some(10), None])
        {
            c.last_used = t;
        }
        for i in 0..20 {
            let order = order_candidates(
                p.clone(),
                PoolPref::LeastRecentlyUsed,
                0,
                &format!("i-{i:017x}"),
            );
            assert_eq!(order[0], "vol-04", "never used is oldest: {order:?}");
            assert_eq!(order[4], "vol-00", "{order:?}");
            let mut middle = order[1..4].to_vec();
            middle.sort();
            assert_eq!(middle, ["vol-01", "vol-02", "vol-03"], "{order:?}");
        }
    }
}

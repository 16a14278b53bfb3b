//! `update-route53`: point the domain's records at this instance's public
//! addresses, put back what was there when the domain fails, and delete
//! them when asked, but only while they still point here. Talks to Route53.

use anyhow::{anyhow, bail, Result};
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};

use crate::aws;

/// What to point one name at.
#[derive(Debug, Clone)]
pub struct RecordTarget<'a> {
    pub hosted_zone: &'a str,
    pub name: &'a str,
    pub ttl: i64,
    pub ipv4: Option<&'a str>,
    pub ipv6: Option<&'a str>,
}

/// Records this instance set, and what they replaced.
#[derive(Debug, Clone)]
pub struct Placed {
    pub hosted_zone: String,
    pub name: String,
    /// The sets as this instance wrote them.
    pub ours: Vec<ResourceRecordSet>,
    /// The sets of the same name and types before (to restore on rollback).
    pub previous: Vec<ResourceRecordSet>,
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// The current A and AAAA sets of `name`.
async fn current(
    route53: &aws_sdk_route53::Client,
    zone: &str,
    name: &str,
) -> Result<Vec<ResourceRecordSet>> {
    let out = route53
        .list_resource_record_sets()
        .hosted_zone_id(zone)
        .start_record_name(name)
        .max_items(4)
        .send()
        .await
        .map_err(|e| route53_error("ListResourceRecordSets", name, zone, &e))?;
    let want = fqdn(name);
    Ok(out
        .resource_record_sets()
        .iter()
        .filter(|r| r.name() == want && matches!(r.r#type(), RrType::A | RrType::Aaaa))
        .cloned()
        .collect())
}

fn route53_error<E>(
    call: &str,
    name: &str,
    zone: &str,
    e: &aws_sdk_route53::error::SdkError<E>,
) -> anyhow::Error
where
    E: std::error::Error + 'static,
{
    anyhow!(
        "{call} {name} in zone {zone} failed ({}): {}",
        aws::endpoint_of("ROUTE_53"),
        aws::describe(e)
    )
}

async fn change(
    route53: &aws_sdk_route53::Client,
    zone: &str,
    name: &str,
    changes: Vec<Change>,
) -> Result<String> {
    let batch = ChangeBatch::builder()
        .set_changes(Some(changes))
        .comment("ec2fleetd")
        .build()?;
    let out = route53
        .change_resource_record_sets()
        .hosted_zone_id(zone)
        .change_batch(batch)
        .send()
        .await
        .map_err(|e| route53_error("ChangeResourceRecordSets", name, zone, &e))?;
    Ok(out
        .change_info()
        .map(|c| c.id().to_string())
        .unwrap_or_default())
}

fn change_of(action: ChangeAction, set: ResourceRecordSet) -> Result<Change> {
    Ok(Change::builder()
        .action(action)
        .resource_record_set(set)
        .build()?)
}

/// UPSERTs the A and AAAA records in one batch, remembering what they
/// replaced.
pub async fn upsert(
    route53: &aws_sdk_route53::Client,
    target: &RecordTarget<'_>,
) -> Result<Placed> {
    let mut ours = Vec::new();
    for (kind, value) in [(RrType::A, target.ipv4), (RrType::Aaaa, target.ipv6)] {
        let Some(value) = value else { continue };
        ours.push(
            ResourceRecordSet::builder()
                .name(target.name)
                .r#type(kind)
                .ttl(target.ttl)
                .resource_records(ResourceRecord::builder().value(value).build()?)
                .build()?,
        );
    }
    if ours.is_empty() {
        bail!(
            "{} cannot point at this instance: it has no public IPv4 or IPv6 address",
            target.name
        );
    }
    let previous: Vec<ResourceRecordSet> = current(route53, target.hosted_zone, target.name)
        .await?
        .into_iter()
        .filter(|p| ours.iter().any(|o| o.r#type() == p.r#type()))
        .collect();
    let changes = ours
        .iter()
        .map(|s| change_of(ChangeAction::Upsert, s.clone()))
        .collect::<Result<Vec<_>>>()?;
    let id = change(route53, target.hosted_zone, target.name, changes).await?;
    tracing::info!(
        "{} → {} (zone {}, ttl {}, change {id})",
        target.name,
        [target.ipv4, target.ipv6]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(", "),
        target.hosted_zone,
        target.ttl
    );
    Ok(Placed {
        hosted_zone: target.hosted_zone.to_string(),
        name: target.name.to_string(),
        ours,
        previous,
    })
}

/// Whether two sets hold the same values and TTL.
fn same(a: &ResourceRecordSet, b: &ResourceRecordSet) -> bool {
    let values = |s: &ResourceRecordSet| {
        let mut v: Vec<String> = s
            .resource_records()
            .iter()
            .map(|r| r.value().to_string())
            .collect();
        v.sort();
        v
    };
    a.r#type() == b.r#type() && a.ttl() == b.ttl() && values(a) == values(b)
}

/// Rollback: what was there before comes back; a name that did not exist
/// is deleted. Only sets that still hold this instance's values are touched.
pub async fn restore(route53: &aws_sdk_route53::Client, placed: &Placed) -> Result<()> {
    let now = current(route53, &placed.hosted_zone, &placed.name).await?;
    let mut changes = Vec::new();
    for set in &placed.ours {
        let Some(live) = now.iter().find(|l| same(l, set)) else {
            continue;
        };
        match placed.previous.iter().find(|p| p.r#type() == set.r#type()) {
            Some(before) => changes.push(change_of(ChangeAction::Upsert, before.clone())?),
            None => changes.push(change_of(ChangeAction::Delete, live.clone())?),
        }
    }
    if !changes.is_empty() {
        change(route53, &placed.hosted_zone, &placed.name, changes).await?;
        tracing::info!("{}: put back what it held before", placed.name);
    }
    Ok(())
}

/// `delete-on`: deletes this instance's sets of the name, each only if it
/// still holds this instance's values; a successor's record stays.
pub async fn delete_if_ours(route53: &aws_sdk_route53::Client, placed: &Placed) -> Result<()> {
    let now = current(route53, &placed.hosted_zone, &placed.name).await?;
    let mut changes = Vec::new();
    for set in &placed.ours {
        match now.iter().find(|l| l.r#type() == set.r#type()) {
            Some(live) if same(live, set) => {
                changes.push(change_of(ChangeAction::Delete, live.clone())?)
            }
            Some(_) => tracing::info!(
                "{} {}: now points elsewhere (a successor took it); leaving it",
                placed.name,
                set.r#type().as_str()
            ),
            None => {}
        }
    }
    if !changes.is_empty() {
        change(route53, &placed.hosted_zone, &placed.name, changes).await?;
        tracing::info!("{}: deleted this instance's records", placed.name);
    }
    Ok(())
}

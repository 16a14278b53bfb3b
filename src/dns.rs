//! `update-route53`: point the domain's records at this instance's public
//! addresses. Talks to Route53.

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

/// UPSERTs the A and AAAA records in one batch; returns the change ID.
pub async fn upsert(
    route53: &aws_sdk_route53::Client,
    target: &RecordTarget<'_>,
) -> Result<String> {
    let mut changes = Vec::new();
    for (kind, value) in [(RrType::A, target.ipv4), (RrType::Aaaa, target.ipv6)] {
        let Some(value) = value else { continue };
        let set = ResourceRecordSet::builder()
            .name(target.name)
            .r#type(kind)
            .ttl(target.ttl)
            .resource_records(ResourceRecord::builder().value(value).build()?)
            .build()?;
        changes.push(
            Change::builder()
                .action(ChangeAction::Upsert)
                .resource_record_set(set)
                .build()?,
        );
    }
    if changes.is_empty() {
        bail!(
            "{} cannot point at this instance: it has no public IPv4 or IPv6 address",
            target.name
        );
    }
    let batch = ChangeBatch::builder()
        .set_changes(Some(changes))
        .comment("ec2fleetd")
        .build()?;
    let out = route53
        .change_resource_record_sets()
        .hosted_zone_id(target.hosted_zone)
        .change_batch(batch)
        .send()
        .await
        .map_err(|e| {
            anyhow!(
                "ChangeResourceRecordSets UPSERT {} in zone {} failed ({}): {}",
                target.name,
                target.hosted_zone,
                aws::endpoint_of("ROUTE_53"),
                aws::describe(&e)
            )
        })?;
    let id = out
        .change_info()
        .map(|c| c.id().to_string())
        .unwrap_or_default();
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
    Ok(id)
}

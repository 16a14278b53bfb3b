//! `update-route53`: point the domain's records at this instance, one change
//! batch per hosted zone; put back what was there when the domain fails;
//! delete them when asked, but only while they still point here. Every
//! Route53 call rides out throttling with logged, jittered retries.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord, ResourceRecordSet, RrType,
};

use crate::aws;
use crate::config::AddressMode;
use crate::imds::InstanceFacts;
use crate::retry::Backoff;

/// Route53 allows about ten requests a second per account, and one change
/// at a time per zone: a fleet that boots together is refused, and each
/// daemon waits up to about a minute in all.
const BACKOFF: Backoff = Backoff {
    attempts: 12,
    base: Duration::from_millis(250),
    cap: Duration::from_secs(8),
};

/// How often `wait-insync` asks, at most.
const INSYNC_POLL_CAP: Duration = Duration::from_secs(10);
/// How long `wait-insync` waits in all (Route53 is usually in sync within a
/// minute); the init `timeout` may cut it sooner.
const INSYNC_TIMEOUT: Duration = Duration::from_secs(600);

/// What to point one name at.
#[derive(Debug, Clone)]
pub struct RecordTarget {
    /// The entry's index in the domain's `update-route53`.
    pub index: usize,
    pub name: String,
    pub ttl: i64,
    pub ipv4: Vec<String>,
    pub ipv6: Vec<String>,
    pub wait_insync: bool,
}

/// The IPv4 and IPv6 values `mode` asks for, from what IMDS told.
pub fn addresses(facts: &InstanceFacts, mode: AddressMode) -> (Vec<String>, Vec<String>) {
    let first = |v: &[String]| v.first().cloned().into_iter().collect::<Vec<_>>();
    match mode {
        AddressMode::Public => (first(&facts.public_ipv4), first(&facts.public_ipv6)),
        AddressMode::Private => (
            facts.private_ipv4.clone().into_iter().collect(),
            first(&facts.public_ipv6),
        ),
        AddressMode::AllPublic => (facts.public_ipv4.clone(), facts.public_ipv6.clone()),
    }
}

/// Records this instance set, and what they replaced.
#[derive(Debug, Clone)]
pub struct Placed {
    pub index: usize,
    pub hosted_zone: String,
    pub name: String,
    /// The sets as this instance wrote them.
    pub ours: Vec<ResourceRecordSet>,
    /// The A and AAAA sets of the name before: replaced by ours, or deleted
    /// because this instance has no address of their type.
    pub previous: Vec<ResourceRecordSet>,
    pub change_id: String,
}

impl Placed {
    /// `TYPE value value …` of each set, for logs and events.
    pub fn values(&self, kind: &RrType) -> Vec<String> {
        self.ours
            .iter()
            .filter(|s| s.r#type() == kind)
            .flat_map(|s| s.resource_records().iter().map(|r| r.value().to_string()))
            .collect()
    }
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// A name as Route53 matches it: without regard to case, and with `*`
/// however it comes back (Route53 answers a wildcard as `\052`).
fn comparable(name: &str) -> String {
    fqdn(&name.replace("\\052", "*").to_ascii_lowercase())
}

const TYPES: [RrType; 2] = [RrType::A, RrType::Aaaa];

/// The current A and AAAA sets of `name`.
async fn current(
    route53: &aws_sdk_route53::Client,
    zone: &str,
    name: &str,
) -> Result<Vec<ResourceRecordSet>> {
    let what = format!("ListResourceRecordSets {name}");
    let out = aws::with_retries(&what, BACKOFF, || {
        route53
            .list_resource_record_sets()
            .hosted_zone_id(zone)
            .start_record_name(name)
            .max_items(4)
            .send()
    })
    .await
    .map_err(|e| route53_error("ListResourceRecordSets", name, zone, &e))?;
    let want = comparable(name);
    Ok(out
        .resource_record_sets()
        .iter()
        .filter(|r| comparable(r.name()) == want && TYPES.contains(r.r#type()))
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
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    anyhow!(
        "{call} {name} in zone {zone} failed ({}): {}",
        aws::endpoint_of("ROUTE_53"),
        aws::describe(e)
    )
}

/// A change batch that failed, and whether splitting it could help (the
/// batch was refused, rather than Route53 being out of reach).
struct ChangeFailed {
    error: anyhow::Error,
    refused: bool,
}

/// Sends one change batch; returns its change ID.
async fn change(
    route53: &aws_sdk_route53::Client,
    zone: &str,
    names: &str,
    changes: Vec<Change>,
) -> Result<String, ChangeFailed> {
    let batch = ChangeBatch::builder()
        .set_changes(Some(changes))
        .comment("ec2fleetd")
        .build()
        .map_err(|e| ChangeFailed {
            error: e.into(),
            refused: true,
        })?;
    let what = format!("ChangeResourceRecordSets {names}");
    let out = aws::with_retries(&what, BACKOFF, || {
        route53
            .change_resource_record_sets()
            .hosted_zone_id(zone)
            .change_batch(batch.clone())
            .send()
    })
    .await
    .map_err(|e| ChangeFailed {
        refused: !aws::is_transient(&e),
        error: route53_error("ChangeResourceRecordSets", names, zone, &e),
    })?;
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

/// The sets this instance writes for `target`.
fn our_sets(target: &RecordTarget) -> Result<Vec<ResourceRecordSet>> {
    let mut ours = Vec::new();
    for (kind, values) in [(RrType::A, &target.ipv4), (RrType::Aaaa, &target.ipv6)] {
        if values.is_empty() {
            continue;
        }
        let mut set = ResourceRecordSet::builder()
            .name(&target.name)
            .r#type(kind)
            .ttl(target.ttl);
        for v in values {
            set = set.resource_records(ResourceRecord::builder().value(v).build()?);
        }
        ours.push(set.build()?);
    }
    Ok(ours)
}

/// The changes that make `name` point here: UPSERT ours, DELETE an A or
/// AAAA this instance cannot fill (a predecessor's, which would send
/// clients to a dead address).
fn changes_for(placed: &Placed) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    for set in &placed.ours {
        changes.push(change_of(ChangeAction::Upsert, set.clone())?);
    }
    for stale in &placed.previous {
        if !placed.ours.iter().any(|o| o.r#type() == stale.r#type()) {
            changes.push(change_of(ChangeAction::Delete, stale.clone())?);
        }
    }
    Ok(changes)
}

/// What [`upsert_zone`] tells of a record as it goes.
pub enum Noted<'a> {
    /// Its change is about to be sent: from now on it may be set.
    Sending(&'a Placed),
    /// Route53 refused it: not set.
    Refused(&'a Placed),
    /// Route53 took it (with its change ID).
    Sent(&'a Placed),
}

/// What became of one target of [`upsert_zone`].
pub struct Outcome {
    pub index: usize,
    /// Set: it must be put back if the domain fails.
    pub placed: Option<Placed>,
    /// Not set, or set but never `INSYNC`.
    pub error: Option<anyhow::Error>,
}

fn outcome_of(index: usize, r: Result<Placed>) -> Outcome {
    match r {
        Ok(p) => Outcome {
            index,
            placed: Some(p),
            error: None,
        },
        Err(e) => Outcome {
            index,
            placed: None,
            error: Some(e),
        },
    }
}

/// Points a domain's names in one hosted zone at this instance: a read of
/// each name, then one change batch for them all. If Route53 refuses the
/// batch, each name is tried alone, so that one bad record fails only
/// itself. With `wait_insync` on a target, waits for its change to be
/// `INSYNC`. `note` hears of each name before its change is sent (a change
/// can land while its answer is lost, or bring-up is cancelled), of a
/// change Route53 refused, and of one it took, so that what is cut short
/// can still be put back. Returns each target's outcome, in order.
pub async fn upsert_zone(
    route53: &aws_sdk_route53::Client,
    zone: &str,
    targets: &[RecordTarget],
    note: &(dyn Fn(Noted<'_>) + Sync),
) -> Vec<Outcome> {
    let mut attempt = 1;
    let (mut results, mut ready, names, outcome) = loop {
        let (results, ready) = prepare(route53, zone, targets).await;
        let batch: Result<Vec<Change>> =
            ready
                .iter()
                .map(|(_, p)| changes_for(p))
                .try_fold(Vec::new(), |mut all, c| {
                    all.extend(c?);
                    Ok(all)
                });
        let names = ready
            .iter()
            .map(|(t, _)| t.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let outcome = match batch {
            Ok(changes) if !ready.is_empty() => {
                let placed: Vec<&Placed> = ready.iter().map(|(_, p)| p).collect();
                noted_change(route53, zone, &names, changes, &placed, note).await
            }
            Ok(_) => return results,
            Err(e) => Err(ChangeFailed {
                error: e,
                refused: true,
            }),
        };
        match outcome {
            // What was read may have changed before the batch came (a
            // predecessor's record deleted by value): read again.
            Err(f) if f.refused && attempt < REREADS => {
                tracing::warn!(
                    "Route53 refused the batch for {names} in zone {zone} ({:#}); reading the names again",
                    f.error
                );
                attempt += 1;
            }
            outcome => break (results, ready, names, outcome),
        }
    };
    match outcome {
        Ok(id) => {
            for (_, p) in &mut ready {
                p.change_id = id.clone();
            }
        }
        Err(f) if f.refused && ready.len() > 1 => {
            tracing::warn!(
                "Route53 refused the batch for {names} in zone {zone} ({:#}); trying each name alone",
                f.error
            );
            for (t, p) in std::mem::take(&mut ready) {
                let single = changes_for(&p).map_err(|e| ChangeFailed {
                    error: e,
                    refused: true,
                });
                let outcome = match single {
                    Ok(c) => noted_change(route53, zone, &t.name, c, &[&p], note).await,
                    Err(f) => Err(f),
                };
                match outcome {
                    Ok(id) => ready.push((t, Placed { change_id: id, ..p })),
                    Err(f) => results.push(outcome_of(t.index, Err(f.error))),
                }
            }
        }
        Err(f) => {
            let e = format!("{:#}", f.error);
            results.extend(
                ready
                    .iter()
                    .map(|(t, _)| outcome_of(t.index, Err(anyhow!("{e}")))),
            );
            return results;
        }
    }
    for (_, p) in &ready {
        note(Noted::Sent(p));
    }
    for (t, p) in ready {
        log_placed(&p, t.ttl);
        let synced = if t.wait_insync {
            wait_insync(route53, &p.change_id, &p.name).await
        } else {
            Ok(())
        };
        results.push(Outcome {
            index: t.index,
            placed: Some(p),
            error: synced.err(),
        });
    }
    results.sort_by_key(|o| o.index);
    results
}

/// [`change`], with `note` told before it is sent and when it is refused.
async fn noted_change(
    route53: &aws_sdk_route53::Client,
    zone: &str,
    names: &str,
    changes: Vec<Change>,
    placed: &[&Placed],
    note: &(dyn Fn(Noted<'_>) + Sync),
) -> Result<String, ChangeFailed> {
    for p in placed {
        note(Noted::Sending(p));
    }
    let outcome = change(route53, zone, names, changes).await;
    if let Err(f) = &outcome {
        if f.refused {
            for p in placed {
                note(Noted::Refused(p));
            }
        }
    }
    outcome
}

/// How many times a refused batch is planned again from a fresh read: a
/// name may change between the read and the batch (a successor, a
/// predecessor's last change), and the batch then no longer fits.
const REREADS: u32 = 3;

/// Reads each target's name: the targets ready to change, and the outcomes
/// of those that cannot be.
async fn prepare<'t>(
    route53: &aws_sdk_route53::Client,
    zone: &str,
    targets: &'t [RecordTarget],
) -> (Vec<Outcome>, Vec<(&'t RecordTarget, Placed)>) {
    let prepared = futures_util::future::join_all(targets.iter().map(|t| async move {
        let ours = our_sets(t)?;
        if ours.is_empty() {
            return Err(anyhow!(
                "{} cannot point at this instance: it has no address of the kind asked for",
                t.name
            ));
        }
        let previous = current(route53, zone, &t.name).await?;
        Ok(Placed {
            index: t.index,
            hosted_zone: zone.to_string(),
            name: t.name.clone(),
            ours,
            previous,
            change_id: String::new(),
        })
    }))
    .await;
    let mut results = Vec::new();
    let mut ready = Vec::new();
    for (t, p) in targets.iter().zip(prepared) {
        match p {
            Ok(p) => ready.push((t, p)),
            Err(e) => results.push(outcome_of(t.index, Err(e))),
        }
    }
    (results, ready)
}

fn log_placed(p: &Placed, ttl: i64) {
    let mut parts: Vec<String> = p
        .ours
        .iter()
        .map(|s| format!("{} {}", s.r#type().as_str(), p.values(s.r#type()).join(" ")))
        .collect();
    for stale in &p.previous {
        if !p.ours.iter().any(|o| o.r#type() == stale.r#type()) {
            parts.push(format!(
                "{} deleted (this instance has no such address)",
                stale.r#type().as_str()
            ));
        }
    }
    tracing::info!(
        "{} → {} (zone {}, ttl {ttl}, change {})",
        p.name,
        parts.join("; "),
        p.hosted_zone,
        p.change_id
    );
}

/// Polls GetChange until Route53 reports the change `INSYNC` on all its
/// name servers, logging progress every ten seconds or so.
async fn wait_insync(route53: &aws_sdk_route53::Client, change_id: &str, name: &str) -> Result<()> {
    let started = Instant::now();
    let mut next_note = Duration::from_secs(10);
    let mut pause = Duration::from_millis(500);
    loop {
        let what = format!("GetChange {change_id}");
        let out = aws::with_retries(&what, BACKOFF, || route53.get_change().id(change_id).send())
            .await
            .map_err(|e| {
                anyhow!(
                    "GetChange {change_id} for {name} failed ({}): {}",
                    aws::endpoint_of("ROUTE_53"),
                    aws::describe(&e)
                )
            })?;
        let status = out.change_info().map(|c| c.status().clone());
        if status == Some(ChangeStatus::Insync) {
            tracing::info!(
                "{name}: change {change_id} INSYNC after {:.1}s",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if started.elapsed() >= INSYNC_TIMEOUT {
            anyhow::bail!(
                "{name}: change {change_id} still not INSYNC after {}s",
                INSYNC_TIMEOUT.as_secs()
            );
        }
        if started.elapsed() >= next_note {
            tracing::info!(
                "{name}: waiting for change {change_id} to be INSYNC ({:.0}s so far)",
                started.elapsed().as_secs_f64()
            );
            next_note += Duration::from_secs(10);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 3 / 2).min(INSYNC_POLL_CAP);
    }
}

/// The targets whose names already hold exactly what this instance would
/// write (an earlier run of it set them): as placed records, with what they
/// replaced unknown. Changes nothing.
pub async fn find_ours(
    route53: &aws_sdk_route53::Client,
    zone: &str,
    targets: &[RecordTarget],
) -> Result<Vec<Placed>> {
    let mut found = Vec::new();
    for t in targets {
        let ours = our_sets(t)?;
        if ours.is_empty() {
            continue;
        }
        let live = current(route53, zone, &t.name).await?;
        if ours.iter().all(|o| live.iter().any(|l| same(l, o))) {
            found.push(Placed {
                index: t.index,
                hosted_zone: zone.to_string(),
                name: t.name.clone(),
                ours,
                previous: Vec::new(),
                change_id: String::new(),
            });
        }
    }
    Ok(found)
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

/// Rollback: what each name held before comes back; a name that did not
/// exist is deleted. A set that no longer holds this instance's values (or,
/// for one this instance deleted, that someone has set again) is left.
/// Compare-and-swap: ours goes by a DELETE of its exact values and what was
/// there comes back by a CREATE, in one batch, so that a successor's change
/// made after the read makes Route53 refuse the batch rather than be
/// overwritten; a refused batch is planned again from a fresh read.
/// One batch per hosted zone.
pub async fn restore(route53: &aws_sdk_route53::Client, placed: &[Placed]) -> Result<Vec<String>> {
    per_zone(
        route53,
        placed,
        "put back what they held before",
        |p, now| {
            let mut changes = Vec::new();
            for kind in &TYPES {
                let ours = p.ours.iter().find(|s| s.r#type() == kind);
                let before = p.previous.iter().find(|s| s.r#type() == kind);
                let live = now.iter().find(|s| s.r#type() == kind);
                match (ours, before, live) {
                    (Some(o), Some(b), Some(l)) if same(l, o) => {
                        changes.push(change_of(ChangeAction::Delete, l.clone())?);
                        changes.push(change_of(ChangeAction::Create, b.clone())?);
                    }
                    (Some(o), None, Some(l)) if same(l, o) => {
                        changes.push(change_of(ChangeAction::Delete, l.clone())?)
                    }
                    (None, Some(b), None) => {
                        changes.push(change_of(ChangeAction::Create, b.clone())?)
                    }
                    _ => {}
                }
            }
            Ok(changes)
        },
    )
    .await
}

/// `delete-on`: deletes this instance's sets, each only if it still holds
/// this instance's values; a successor's record stays, and the log says so.
/// One batch per hosted zone.
pub async fn delete_if_ours(
    route53: &aws_sdk_route53::Client,
    placed: &[Placed],
) -> Result<Vec<String>> {
    per_zone(
        route53,
        placed,
        "deleted this instance's records",
        |p, now| {
            let mut changes = Vec::new();
            for set in &p.ours {
                match now.iter().find(|l| l.r#type() == set.r#type()) {
                    Some(live) if same(live, set) => {
                        changes.push(change_of(ChangeAction::Delete, live.clone())?)
                    }
                    Some(_) => tracing::info!(
                        "{} {}: now points elsewhere (a successor took it); leaving it",
                        p.name,
                        set.r#type().as_str()
                    ),
                    None => {}
                }
            }
            Ok(changes)
        },
    )
    .await
}

/// Reads each name's sets now, asks `plan` for the changes, and sends them
/// in one batch per hosted zone. Every zone is tried; returns `name TYPE`
/// of each set changed, or the first error.
async fn per_zone(
    route53: &aws_sdk_route53::Client,
    placed: &[Placed],
    done: &str,
    plan: impl Fn(&Placed, &[ResourceRecordSet]) -> Result<Vec<Change>>,
) -> Result<Vec<String>> {
    let mut zones: Vec<&str> = placed.iter().map(|p| p.hosted_zone.as_str()).collect();
    zones.sort();
    zones.dedup();
    let mut changed = Vec::new();
    let mut first_error = None;
    for zone in zones {
        let in_zone: Vec<&Placed> = placed.iter().filter(|p| p.hosted_zone == zone).collect();
        let mut attempt = 1;
        loop {
            let mut changes = Vec::new();
            let mut names = Vec::new();
            let mut sets = Vec::new();
            for p in &in_zone {
                let planned = match current(route53, zone, &p.name).await {
                    Ok(now) => plan(p, &now),
                    Err(e) => Err(e),
                };
                match planned {
                    Ok(c) if c.is_empty() => {}
                    Ok(c) => {
                        for one in &c {
                            if let Some(set) = one.resource_record_set() {
                                let set = format!("{} {}", p.name, set.r#type().as_str());
                                if !sets.contains(&set) {
                                    sets.push(set);
                                }
                            }
                        }
                        changes.extend(c);
                        names.push(p.name.as_str());
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            if changes.is_empty() {
                break;
            }
            let names = names.join(", ");
            match change(route53, zone, &names, changes).await {
                Ok(_) => {
                    tracing::info!("{names}: {done}");
                    changed.extend(sets);
                }
                // A name changed after it was read: read again.
                Err(f) if f.refused && attempt < REREADS => {
                    tracing::warn!(
                        "{names}: Route53 refused the change ({:#}); reading again",
                        f.error
                    );
                    attempt += 1;
                    continue;
                }
                Err(f) => {
                    first_error.get_or_insert(f.error);
                }
            }
            break;
        }
    }
    first_error.map_or(Ok(changed), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> InstanceFacts {
        InstanceFacts {
            public_ipv4: vec!["198.51.100.7".into(), "198.51.100.8".into()],
            public_ipv6: vec!["2001:db8::7".into()],
            private_ipv4: Some("10.0.0.7".into()),
            ..InstanceFacts::default()
        }
    }

    #[test]
    fn names_compare_as_route53_matches_them() {
        assert_eq!(
            comparable("Play.Example.COM"),
            comparable("play.example.com.")
        );
        assert_eq!(
            comparable("\\052.example.com."),
            comparable("*.example.com")
        );
        assert_ne!(comparable("a.example.com"), comparable("b.example.com"));
    }

    #[test]
    fn address_modes_pick_their_values() {
        let f = facts();
        assert_eq!(
            addresses(&f, AddressMode::Public),
            (vec!["198.51.100.7".into()], vec!["2001:db8::7".into()])
        );
        assert_eq!(
            addresses(&f, AddressMode::Private),
            (vec!["10.0.0.7".into()], vec!["2001:db8::7".into()])
        );
        assert_eq!(addresses(&f, AddressMode::AllPublic).0.len(), 2);
        let bare = InstanceFacts::default();
        assert_eq!(
            addresses(&bare, AddressMode::Public),
            (Vec::new(), Vec::new())
        );
    }

    #[test]
    fn a_type_this_instance_cannot_fill_is_deleted() {
        let target = RecordTarget {
            index: 0,
            name: "play.example.com".into(),
            ttl: 60,
            ipv4: vec!["198.51.100.7".into()],
            ipv6: Vec::new(),
            wait_insync: false,
        };
        let ours = our_sets(&target).unwrap();
        let stale = ResourceRecordSet::builder()
            .name("play.example.com.")
            .r#type(RrType::Aaaa)
            .ttl(60)
            .resource_records(
                ResourceRecord::builder()
                    .value("2001:db8::1")
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let placed = Placed {
            index: 0,
            hosted_zone: "Z1".into(),
            name: target.name.clone(),
            ours,
            previous: vec![stale],
            change_id: String::new(),
        };
        let changes = changes_for(&placed).unwrap();
        let summary: Vec<_> = changes
            .iter()
            .map(|c| {
                let set = c.resource_record_set().unwrap();
                (
                    c.action().as_str().to_string(),
                    set.r#type().as_str().to_string(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("UPSERT".into(), "A".into()),
                ("DELETE".into(), "AAAA".into())
            ]
        );
    }
}

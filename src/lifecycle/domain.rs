//! One domain's part of each phase: bring-up (volumes, records, hooks), the
//! way out (failed hooks before a rollback; hooks, release and record
//! deletion at the end), the hooks and notifications of every event. What
//! the domain holds is in its [`Ledger`], shared with the daemon.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Result};

use crate::aws::Clients;
use crate::config::{Domain, Event, ExecBlock, MacroValues, VolumeSource};
use crate::dns::{self, RecordTarget};
use crate::hooks::{self, OnFailure, Policy, Scope};
use crate::imds::InstanceFacts;
use crate::ledger::{Ending, Held, HeldVolume, Ledger, Stage};
use crate::notify;
use crate::volumes;

/// How long the way out waits to learn whether unanswered attaches landed
/// before the hooks run.
const FIND_OUT_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What every domain shares.
pub struct Shared {
    pub clients: Clients,
    pub facts: InstanceFacts,
    pub device_root: PathBuf,
    /// Instance facts and run-wide values; each domain adds its own.
    pub base_values: MacroValues,
    /// This run's transaction ID, marked on what it attaches until commit.
    pub transaction_id: String,
    /// What the daemon says of itself: state, readiness, players.
    pub board: Arc<crate::status::Board>,
}

/// The blocks that run at `event` before any volume's: the domain's own.
fn domain_blocks(domain: &Domain, event: Event) -> Vec<&ExecBlock> {
    if Event::VOLUME_ONLY.contains(&event) {
        return Vec::new();
    }
    domain.exec.iter().filter(|b| b.runs_on(event)).collect()
}

/// The blocks of volume `spec` that name `event` (a volume's blocks
/// without `on` run only after its device appears, at `starting`).
fn volume_blocks(domain: &Domain, spec: usize, event: Event) -> Vec<&ExecBlock> {
    domain.volumes[spec]
        .exec
        .iter()
        .filter(|b| b.on.as_ref().is_some_and(|on| on.contains(&event)))
        .collect()
}

/// Every block that may run at `event`: the domain's, then its volumes'
/// (for the drill, which holds no volume).
pub fn blocks_for(domain: &Domain, event: Event) -> Vec<&ExecBlock> {
    let mut blocks = domain_blocks(domain, event);
    for spec in 0..domain.volumes.len() {
        blocks.extend(volume_blocks(domain, spec, event));
    }
    blocks
}

/// A volume's own macros: `{volume_id}`, `{attached_device}`, …
fn set_volume_values(values: &mut MacroValues, domain: &Domain, v: &HeldVolume) {
    values.set("volume_id", v.volume_id.clone());
    values.set(
        "attached_device",
        v.device
            .as_ref()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
    );
    values.set("attach_source", v.source.letter().to_string());
    values.set("attach_op", if v.attached_now { "true" } else { "false" });
    values.set(
        "volume_pool",
        domain.volumes[v.spec].pool_name.clone().unwrap_or_default(),
    );
}

/// A domain and the record of what it holds. Clones share the record.
#[derive(Clone)]
pub struct DomainRun {
    /// The domain's place in the config (and on the status board).
    pub index: usize,
    pub domain: Domain,
    /// Instance and domain values, and those the end sets (`{error}`,
    /// `{interrupt_action}`); volume values come from the record.
    pub values: MacroValues,
    pub ledger: Arc<Ledger>,
    /// The lifecycle action the end completes, for the final event.
    pub lifecycle_action: Option<notify::event::LifecycleAction>,
}

impl DomainRun {
    pub fn new(shared: &Shared, index: usize, domain: Domain, ledger: Arc<Ledger>) -> DomainRun {
        let mut values = shared.base_values.clone();
        values.set("domain", domain.name.clone());
        DomainRun {
            index,
            domain,
            values,
            ledger,
            lifecycle_action: None,
        }
    }

    pub fn volume_ctx<'a>(&'a self, shared: &'a Shared) -> volumes::Ctx<'a> {
        volumes::Ctx {
            ec2: &shared.clients.ec2,
            facts: &shared.facts,
            device_root: &shared.device_root,
            domain: &self.domain.name,
            transaction_id: &shared.transaction_id,
            ledger: &self.ledger,
        }
    }

    /// The macro values for `event`, with `all_json` filled in: the volume
    /// values are `volume`'s, or for the domain's own blocks those of the
    /// last volume it holds (as in the Python daemon).
    pub fn values_for(
        &self,
        event: Event,
        held: &Held,
        volume: Option<&HeldVolume>,
    ) -> MacroValues {
        let mut v = self.values.clone();
        if let Some(volume) = volume.or_else(|| held.ready_volumes().last()) {
            set_volume_values(&mut v, &self.domain, volume);
        }
        v.set("daemon_state", event.name());
        v.set("ts", super::now_rfc3339());
        v.seal()
    }

    /// `starting` hooks, volumes and their hooks, DNS records: all or
    /// nothing. On success the claims are committed; on a critical failure
    /// the error is noted and returned: the daemon fails, and the way out
    /// ([`DomainRun::unwind`]) runs for every domain, under the stop deadline.
    pub async fn bring_up(&self, shared: &Shared) -> Result<()> {
        let mut result = self.bring_up_steps(shared).await;
        if result.is_ok() {
            let ctx = self.volume_ctx(shared);
            result = volumes::commit(&ctx).await;
            if result.is_ok() {
                volumes::after_commit(&ctx, &self.domain.volumes).await;
            }
        }
        if let Err(e) = &result {
            self.ledger.error(format!("{e:#}"));
        }
        result
    }

    async fn bring_up_steps(&self, shared: &Shared) -> Result<()> {
        let since = Instant::now();
        let held = self.ledger.snapshot();
        let starting = hooks::run(
            domain_blocks(&self.domain, Event::Starting),
            self.scope(Event::Starting),
            &self.values_for(Event::Starting, &held, None),
            &Policy::new(OnFailure::Stop),
        )
        .await;
        self.time("starting-hooks", since);
        starting.map_err(|f| anyhow!("{}", f.join("; ")))?;

        let since = Instant::now();
        let result = self.attach_volumes(shared).await;
        self.time("volumes", since);
        result?;
        if !self.domain.volumes.is_empty() {
            self.ledger.milestone("volumes");
        }

        let since = Instant::now();
        let result = self.set_records(shared).await;
        self.time("records", since);
        result?;
        if !self.domain.records.is_empty() {
            self.ledger.milestone("records");
        }
        Ok(())
    }

    fn scope(&self, event: Event) -> Scope<'_> {
        Scope {
            domain: &self.domain.name,
            event,
        }
    }

    /// The domain's volumes in order, each followed by its hooks.
    async fn attach_volumes(&self, shared: &Shared) -> Result<()> {
        let name = &self.domain.name;
        for (index, spec) in self.domain.volumes.iter().enumerate() {
            let id = match volumes::attach(&self.volume_ctx(shared), index, spec).await {
                Ok(id) => id,
                Err(e) if spec.critical => return Err(e),
                Err(e) => {
                    tracing::warn!(
                        "[{name}] non-critical volume {} skipped: {e:#}",
                        spec.device
                    );
                    self.ledger.error(format!(
                        "non-critical volume {} skipped: {e:#}",
                        spec.device
                    ));
                    continue;
                }
            };
            let held = self.ledger.snapshot();
            let volume = held
                .volume(&id)
                .expect("an attached volume is in the record");
            // As in the Python daemon, a volume's blocks without "on" run
            // once, after its device appears.
            let blocks = spec
                .exec
                .iter()
                .filter(|b| b.on.as_ref().is_none_or(|on| on.contains(&Event::Starting)))
                .collect();
            if let Err(f) = hooks::run(
                blocks,
                self.scope(Event::Starting),
                &self.values_for(Event::Starting, &held, Some(volume)),
                &Policy::new(OnFailure::Stop),
            )
            .await
            {
                let e = anyhow!("volume hooks of {}: {}", spec.device, f.join("; "));
                if spec.critical {
                    return Err(e);
                }
                tracing::warn!("[{name}] non-critical: {e}");
                self.ledger.error(format!("non-critical: {e}"));
            }
        }
        Ok(())
    }

    /// The domain's records, one change batch per hosted zone, the zones
    /// in parallel. Each record is in the ledger as soon as its change is
    /// sent, before any wait for INSYNC.
    async fn set_records(&self, shared: &Shared) -> Result<()> {
        let mut zones: Vec<&str> = Vec::new();
        for r in &self.domain.records {
            if !zones.contains(&r.hosted_zone.as_str()) {
                zones.push(&r.hosted_zone);
            }
        }
        let batches = zones.iter().map(|zone| {
            let targets = self.record_targets(shared, zone);
            let route53 = &shared.clients.route53;
            async move {
                let note = |n: dns::Noted<'_>| match n {
                    dns::Noted::Sending(p) | dns::Noted::Sent(p) => self.ledger.record_set(p),
                    dns::Noted::Refused(p) => self.ledger.record_refused(p),
                };
                dns::upsert_zone(route53, zone, &targets, &note).await
            }
        });
        let outcomes = futures_util::future::join_all(batches).await;
        let mut critical_error = None;
        for outcome in outcomes.into_iter().flatten() {
            match outcome.error {
                None => {}
                Some(e) if self.domain.records[outcome.index].critical => {
                    critical_error.get_or_insert(e);
                }
                Some(e) => {
                    tracing::warn!("[{}] non-critical record skipped: {e:#}", self.domain.name);
                    self.ledger
                        .error(format!("non-critical record skipped: {e:#}"));
                }
            }
        }
        critical_error.map_or(Ok(()), Err)
    }

    /// What the domain's records in `zone` point at from this instance.
    fn record_targets(&self, shared: &Shared, zone: &str) -> Vec<RecordTarget> {
        let values = self.values_for(Event::Starting, &self.ledger.snapshot(), None);
        self.domain
            .records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.hosted_zone == zone)
            .map(|(index, r)| {
                let (ipv4, ipv6) = dns::addresses(&shared.facts, r.address);
                RecordTarget {
                    index,
                    name: r.name.render(&values),
                    ttl: r.ttl,
                    ipv4,
                    ipv6,
                    wait_insync: r.wait_insync,
                }
            })
            .collect()
    }

    /// Before the end of a cut init: what an earlier, killed run of this
    /// daemon left on this instance and this run had not reached yet —
    /// volumes attached here at a spec's device, records that hold exactly
    /// this instance's values — joins the record, so that the hooks,
    /// `detach-on` and `delete-on` act on it. Bounded: the hooks come first.
    pub async fn adopt_leftovers(&self, shared: &Shared) {
        let work = async {
            let ctx = self.volume_ctx(shared);
            let held = self.ledger.snapshot();
            for (index, spec) in self.domain.volumes.iter().enumerate() {
                if held.volumes.iter().any(|v| v.spec == index) {
                    continue;
                }
                if let Err(e) = volumes::adopt_attached(&ctx, index, spec).await {
                    tracing::warn!("[{}] {e:#}", self.domain.name);
                }
            }
            let mut zones: Vec<&str> = self
                .domain
                .records
                .iter()
                .enumerate()
                .filter(|(i, _)| !held.records.iter().any(|p| p.index == *i))
                .map(|(_, r)| r.hosted_zone.as_str())
                .collect();
            zones.dedup();
            for zone in zones {
                let targets: Vec<RecordTarget> = self
                    .record_targets(shared, zone)
                    .into_iter()
                    .filter(|t| !held.records.iter().any(|p| p.index == t.index))
                    .collect();
                match dns::find_ours(&shared.clients.route53, zone, &targets).await {
                    Ok(found) => {
                        for p in found {
                            tracing::info!(
                                "[{}] {} points here already: held for this domain",
                                self.domain.name,
                                p.name
                            );
                            self.ledger.record_set(&p);
                        }
                    }
                    Err(e) => tracing::warn!("[{}] {e:#}", self.domain.name),
                }
            }
        };
        if tokio::time::timeout(FIND_OUT_LIMIT, work).await.is_err() {
            tracing::warn!(
                "[{}] looking for what an earlier run left took too long; the hooks run now",
                self.domain.name
            );
        }
    }

    /// The way out of a failed domain: what an unanswered attach did is
    /// found out; the `failed` hooks run (once: they unmount); only if they
    /// succeeded is what this run attached detached and what it created
    /// deleted (a volume still in use stays attached, and the next run's
    /// clean-up finds its marks); the records are put back. Returns whether
    /// the failed hooks succeeded, and those that failed now.
    pub async fn unwind(&self, shared: &Shared, policy: &Policy, why: &str) -> (bool, Vec<String>) {
        let ctx = self.volume_ctx(shared);
        self.find_out(&ctx).await;
        let ran = self.ledger.snapshot().failed_hooks_ok;
        let mut failed_now = Vec::new();
        let hooks_ok = match ran {
            Some(ok) => ok,
            None => {
                let since = Instant::now();
                let result = self.run_hooks(Event::Failed, policy).await;
                self.time("failed-hooks", since);
                if let Err(failures) = &result {
                    failed_now.clone_from(failures);
                    for f in failures {
                        self.ledger.error(f.clone());
                    }
                }
                self.ledger
                    .with(|h| h.failed_hooks_ok = Some(result.is_ok()));
                result.is_ok()
            }
        };
        if hooks_ok {
            for e in volumes::settle(&ctx, Ending::Rollback).await {
                self.ledger.error(e);
            }
            volumes::follow::abandon_batons(&ctx).await;
        } else {
            let held = self.ledger.snapshot();
            for v in held
                .volumes
                .iter()
                .filter(|v| !v.committed && v.on_this_instance())
            {
                tracing::warn!(
                    "[{}] {} stays attached: the failed hooks failed, so it may still be in use",
                    self.domain.name,
                    v.volume_id
                );
            }
        }
        self.put_back_records(shared, why).await;
        (hooks_ok, failed_now)
    }

    /// The records back to what they held before this instance.
    pub async fn put_back_records(&self, shared: &Shared, why: &str) {
        let placed = self.ledger.snapshot().records;
        if placed.is_empty() {
            return;
        }
        let restored = dns::restore(&shared.clients.route53, &placed).await;
        if restored.is_ok() {
            self.ledger.records_put_back(&placed);
        }
        match restored {
            Ok(names) if names.is_empty() => tracing::info!(
                "[{}] {why}: no record to put back (none points here any more)",
                self.domain.name
            ),
            Ok(names) => tracing::warn!(
                "[{}] {why}: put back {}",
                self.domain.name,
                names.join(", ")
            ),
            Err(e) => {
                tracing::error!("[{}] {why}; putting records back: {e:#}", self.domain.name);
                self.ledger.error(format!("putting records back: {e:#}"));
            }
        }
    }

    /// The end of a domain that did not fail (`stopping`, `interrupted`,
    /// `terminating`): what an unanswered attach did is found out, the
    /// hooks run on what is held, an uncommitted claim is kept (its marks
    /// go), then `detach-on` and `delete-on`. Returns the hooks' failures.
    pub async fn end(
        &self,
        shared: &Shared,
        event: Event,
        records_on: Event,
        policy: &Policy,
    ) -> Result<(), Vec<String>> {
        let ctx = self.volume_ctx(shared);
        self.find_out(&ctx).await;
        let since = Instant::now();
        let result = self.run_hooks(event, policy).await;
        self.time(&format!("{event}-hooks"), since);
        if let Err(failures) = &result {
            for f in failures {
                self.ledger.error(f.clone());
            }
        }
        let since = Instant::now();
        // Hooks that ran and succeeded unmounted; no hooks unmounted nothing.
        let unmounted = result.is_ok() && !blocks_for(&self.domain, event).is_empty();
        for e in volumes::release_snapshots(&ctx, &self.domain.volumes, event, unmounted).await {
            self.ledger.error(e);
        }
        for e in volumes::settle(&ctx, Ending::Keep).await {
            self.ledger.error(e);
        }
        self.release_for(shared, event, result.is_ok()).await;
        self.delete_records_for(shared, records_on).await;
        self.time("release", since);
        result
    }

    /// Finds out what unanswered attaches did, for a short while only: the
    /// hooks must not wait for an EC2 that does not answer (what is still
    /// unknown stays in the record for the steps after them).
    async fn find_out(&self, ctx: &volumes::Ctx<'_>) {
        if tokio::time::timeout(FIND_OUT_LIMIT, volumes::find_out(ctx))
            .await
            .is_err()
        {
            tracing::warn!(
                "[{}] EC2 did not say within {}s whether unanswered attaches landed; the hooks run now",
                self.domain.name,
                FIND_OUT_LIMIT.as_secs()
            );
        }
    }

    /// `delete-on`: after `event`, delete the records that ask for it, each
    /// only while it still points here.
    pub async fn delete_records_for(&self, shared: &Shared, event: Event) {
        let leaving: Vec<dns::Placed> = self
            .ledger
            .snapshot()
            .records
            .into_iter()
            .filter(|p| self.domain.records[p.index].delete_on.contains(&event))
            .collect();
        if leaving.is_empty() {
            return;
        }
        match dns::delete_if_ours(&shared.clients.route53, &leaving).await {
            Ok(deleted) => self.ledger.with(|h| h.deleted_records.extend(deleted)),
            Err(e) => {
                tracing::error!("[{}] deleting records: {e:#}", self.domain.name);
                self.ledger.error(format!("deleting records: {e:#}"));
            }
        }
    }

    /// Runs the hooks bound to `event`: the domain's blocks, then each held
    /// volume's blocks that name it, each volume's with its own macros. A
    /// volume not held has nothing for its hooks to act on: they are left
    /// out. The policy says whether to stop at the first failure and how
    /// long they may take.
    pub async fn run_hooks(&self, event: Event, policy: &Policy) -> Result<(), Vec<String>> {
        let held = self.ledger.snapshot();
        let mut groups = vec![(
            domain_blocks(&self.domain, event),
            self.values_for(event, &held, None),
        )];
        for spec in 0..self.domain.volumes.len() {
            let blocks = volume_blocks(&self.domain, spec, event);
            if blocks.is_empty() {
                continue;
            }
            let volume = held
                .volumes
                .iter()
                .find(|v| v.spec == spec && v.on_this_instance());
            match volume {
                Some(v) => groups.push((blocks, self.values_for(event, &held, Some(v)))),
                None => tracing::info!(
                    "[{}] {event}: the hooks of volume {} are left out: no volume is held for it",
                    self.domain.name,
                    self.domain.volumes[spec].device
                ),
            }
        }
        let mut failures = Vec::new();
        for (blocks, values) in groups {
            if let Err(f) = hooks::run(blocks, self.scope(event), &values, policy).await {
                failures.extend(f);
                if policy.on_failure == OnFailure::Stop {
                    break;
                }
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures)
        }
    }

    /// `snapshot.every` of volume `spec`, while the daemon watches: every so
    /// many seconds the `snapshot-begin` hooks (freeze), a snapshot, the
    /// `snapshot-end` hooks (thaw, whatever happened), then `keep`. Skipped
    /// while an earlier snapshot of the volume is pending. Ends when `stop`
    /// turns true, between snapshots: a snapshot under way finishes first,
    /// so that a frozen file system is always thawed.
    pub async fn periodic_snapshots(
        &self,
        shared: &Shared,
        spec: usize,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let Some(every) = self.domain.volumes[spec]
            .snapshot
            .as_ref()
            .and_then(|s| s.every)
        else {
            return;
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if *stop.borrow() {
                return;
            }
            if let Err(e) = self.periodic_snapshot(shared, spec).await {
                tracing::warn!(
                    "[{}] periodic snapshot of {}: {e:#}",
                    self.domain.name,
                    self.domain.volumes[spec].device
                );
            }
        }
    }

    /// The `snapshot-end` hooks of volume `spec`, after a periodic snapshot
    /// was cut between them and `snapshot-begin`.
    pub async fn thaw(&self, spec: usize) {
        let held = self.ledger.snapshot();
        let Some(v) = held.ready_of(spec) else {
            return;
        };
        if let Err(e) = self.snapshot_end(&held, v).await {
            tracing::error!("[{}] {e:#}", self.domain.name);
        }
    }

    /// The `snapshot-end` hooks of `v`: every line, whatever happened.
    async fn snapshot_end(&self, held: &Held, v: &HeldVolume) -> Result<()> {
        let end = volume_blocks(&self.domain, v.spec, Event::SnapshotEnd);
        let values = self.values_for(Event::SnapshotEnd, held, Some(v));
        hooks::run(
            end,
            self.scope(Event::SnapshotEnd),
            &values,
            &Policy::new(OnFailure::Continue),
        )
        .await
        .map_err(|f| anyhow!("snapshot-end hooks failed: {}", f.join("; ")))
    }

    async fn periodic_snapshot(&self, shared: &Shared, spec: usize) -> Result<()> {
        let ctx = self.volume_ctx(shared);
        let vspec = &self.domain.volumes[spec];
        let pool = vspec.pool_name.as_deref().unwrap_or_default();
        let held = self.ledger.snapshot();
        let Some(v) = held.ready_of(spec) else {
            return Ok(());
        };
        let pending = volumes::snapshot::query(
            ctx.ec2,
            &self.domain.name,
            pool,
            Some((volumes::tags::SOURCE_VOLUME, &v.volume_id)),
        )
        .await?
        .into_iter()
        .any(|s| s.state() == Some(&aws_sdk_ec2::types::SnapshotState::Pending));
        if pending {
            tracing::info!(
                "[{}] periodic snapshot of {} skipped: the last one is still pending",
                self.domain.name,
                v.volume_id
            );
            return Ok(());
        }
        let policy = Policy::new(OnFailure::Stop);
        let begin = volume_blocks(&self.domain, spec, Event::SnapshotBegin);
        let values = self.values_for(Event::SnapshotBegin, &held, Some(v));
        let frozen = hooks::run(
            begin.clone(),
            self.scope(Event::SnapshotBegin),
            &values,
            &policy,
        )
        .await;
        let taken = match &frozen {
            Ok(()) => {
                let req = volumes::snapshot::Request {
                    volume_id: &v.volume_id,
                    zone: &shared.facts.zone,
                    pool,
                    generation: v.generation.unwrap_or(0),
                    kind: volumes::snapshot::Kind::Periodic,
                    event: "periodic",
                    consistency: if begin.is_empty() {
                        volumes::snapshot::Consistency::CrashConsistent
                    } else {
                        volumes::snapshot::Consistency::Frozen
                    },
                };
                volumes::snapshot::take(&ctx, &req).await.map(|_| ())
            }
            Err(f) => Err(anyhow!("snapshot-begin hooks failed: {}", f.join("; "))),
        };
        let thawed = self.snapshot_end(&held, v).await;
        taken?;
        thawed?;
        if let Some(keep) = vspec.snapshot.as_ref().and_then(|s| s.keep) {
            volumes::snapshot::retain(&ctx, pool, keep).await?;
        }
        Ok(())
    }

    /// `detach-on`: after `event`'s hooks, release the volumes that ask for
    /// it, so that a successor can attach them while this instance is still
    /// running. Only when the hooks succeeded (they unmount): otherwise the
    /// volume stays attached and the log says why.
    pub async fn release_for(&self, shared: &Shared, event: Event, hooks_ok: bool) {
        let ctx = self.volume_ctx(shared);
        let held = self.ledger.snapshot();
        for v in &held.volumes {
            let spec = &self.domain.volumes[v.spec];
            if !v.on_this_instance() || !spec.detach_on.contains(&event) {
                continue;
            }
            if !hooks_ok {
                tracing::warn!(
                    "[{}] {} stays attached: the {event} hooks failed, so it may still be in use",
                    ctx.domain,
                    v.volume_id
                );
                continue;
            }
            if let Err(e) = volumes::release(&ctx, &v.volume_id, spec.force).await {
                tracing::error!("[{}] releasing {}: {e:#}", ctx.domain, v.volume_id);
                self.ledger
                    .error(format!("releasing {}: {e:#}", v.volume_id));
            }
        }
    }

    /// Notes that phase `name` ran from `since` until now.
    pub fn time(&self, name: &str, since: Instant) {
        self.ledger.time(name, since.elapsed().as_secs_f64());
    }

    /// The typed event for `event` (see `doc/events.md`), from the record.
    pub fn event_body(&self, shared: &Shared, event: Event) -> notify::event::EventBody {
        use notify::event::*;
        let facts = &shared.facts;
        let held = self.ledger.snapshot();
        let volumes = held
            .volumes
            .iter()
            .filter(|v| v.stage != Stage::Attaching)
            .map(|v| Volume {
                id: v.volume_id.clone(),
                device: v.device_name.clone(),
                block_device: v
                    .device
                    .as_ref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default(),
                source: match v.source {
                    VolumeSource::Given => "volume-id",
                    VolumeSource::Pool => "pool",
                    VolumeSource::Create => "create",
                    VolumeSource::Follow => "follow",
                },
                pool: self.domain.volumes[v.spec]
                    .pool_name
                    .clone()
                    .filter(|_| matches!(v.source, VolumeSource::Pool | VolumeSource::Follow)),
                operation: match (v.attached_now, v.created) {
                    (_, true) => "created",
                    (true, false) => "attached",
                    (false, false) => "adopted",
                },
                released: v.stage == Stage::Released,
                generation: v.generation.filter(|_| {
                    self.domain.volumes[v.spec]
                        .sources
                        .contains(&VolumeSource::Follow)
                }),
                restored_from: v.restored_from.as_ref().map(|(s, ms)| Restored {
                    snapshot: s.clone(),
                    waited_seconds: *ms as f64 / 1000.0,
                }),
                snapshots: held
                    .snapshots
                    .iter()
                    .filter(|(vol, _, _)| *vol == v.volume_id)
                    .map(|(_, id, kind)| TakenSnapshot {
                        id: id.clone(),
                        kind: kind.clone(),
                    })
                    .collect(),
            })
            .collect();
        let records = held
            .records
            .iter()
            .flat_map(|p| {
                p.ours.iter().map(|set| {
                    let kind = set.r#type().as_str().to_string();
                    Record {
                        hosted_zone: p.hosted_zone.clone(),
                        name: p.name.clone(),
                        deleted: held.deleted_records.contains(&format!("{} {kind}", p.name)),
                        record_type: kind,
                        values: p.values(set.r#type()),
                        ttl: set.ttl().unwrap_or_default(),
                        change_id: p.change_id.clone(),
                    }
                })
            })
            .collect();
        let interruption = Some(self.values.get("interrupt_action"))
            .filter(|a| !a.is_empty())
            .map(|action| Interruption {
                action: action.to_string(),
                time: self.values.get("interrupt_time").to_string(),
            });
        EventBody {
            version: VERSION,
            event: event.name().to_string(),
            time: super::now_rfc3339(),
            domain: self.domain.name.clone(),
            transaction_id: shared.transaction_id.clone(),
            daemon: Daemon::this(),
            instance: Instance {
                id: facts.instance_id.clone(),
                instance_type: facts.instance_type.clone(),
                launch_index: facts.launch_index.clone(),
                region: facts.region.clone(),
                availability_zone: facts.zone.clone(),
                addresses: Addresses {
                    public_ipv4: facts.public_ipv4.clone(),
                    ipv6: facts.public_ipv6.clone(),
                    private_ipv4: facts.private_ipv4.clone(),
                },
            },
            volumes,
            records,
            interruption,
            errors: held.errors.clone(),
            timings: held.timings.clone(),
            since_boot: held.since_boot.clone(),
            players: shared.board.players_of(self.index),
            status: {
                let s = shared.board.summary();
                Status {
                    state: s.state,
                    ready: s.ready.get(self.index).copied().unwrap_or_default(),
                    draining: s.draining,
                    ready_to_close: s.ready_to_close,
                    players: s.players,
                }
            },
            lifecycle_action: self.lifecycle_action.clone(),
        }
    }

    /// Sends every notification enabled for `event`, all at once; none is
    /// retried past `until`.
    pub async fn notify(
        &self,
        shared: &Arc<Shared>,
        event: Event,
        until: Option<tokio::time::Instant>,
    ) {
        let values = self.values_for(event, &self.ledger.snapshot(), None);
        let specs: Vec<_> = self
            .domain
            .notify
            .iter()
            .filter(|n| n.enabled_for(event))
            .collect();
        if specs.is_empty() {
            return;
        }
        let body =
            serde_json::to_value(self.event_body(shared, event)).expect("the event serializes");
        let sends = specs.into_iter().map(|spec| {
            let message = notify::Message::render(spec, event, &self.domain.name, &values, &body);
            let values = &values;
            async move { notify::send(&shared.clients, spec, values, &message, until).await }
        });
        for result in futures_util::future::join_all(sends).await {
            // Already logged by `notify::send`; a notification never fails the run.
            let _ = result;
        }
    }
}

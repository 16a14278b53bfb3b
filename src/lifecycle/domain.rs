//! One domain's part of each phase: bring-up (volumes, records, hooks) and
//! the hooks and notifications of every later event.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Result};

use crate::aws::Clients;
use crate::config::{Domain, Event, ExecBlock, MacroValues, VolumeSource};
use crate::dns::{self, RecordTarget};
use crate::hooks::{self, OnFailure, Policy, Scope};
use crate::imds::InstanceFacts;
use crate::notify;
use crate::volumes::{self, AttachedVolume};

/// What every domain shares.
pub struct Shared {
    pub clients: Clients,
    pub facts: InstanceFacts,
    pub device_root: PathBuf,
    /// Instance facts and run-wide values; each domain adds its own.
    pub base_values: MacroValues,
    /// This run's transaction ID, marked on what it attaches until commit.
    pub transaction_id: String,
    /// Records set by this run, by domain, noted as each change is sent:
    /// what an init cut short (timeout, notice, signal) still holds.
    pub placed: std::sync::Mutex<Vec<(String, dns::Placed)>>,
}

impl Shared {
    /// Takes what the run noted as set for `domain` (every domain: `None`).
    pub fn take_records(&self, domain: Option<&str>) -> Vec<dns::Placed> {
        let mut placed = self.placed.lock().expect("not poisoned");
        let (taken, kept) = std::mem::take(&mut *placed)
            .into_iter()
            .partition(|(d, _)| domain.is_none_or(|want| want == d));
        *placed = kept;
        taken.into_iter().map(|(_, p)| p).collect()
    }

    /// The domain's records were put back: nothing of it to undo later.
    pub fn forget_records(&self, domain: &str) {
        self.take_records(Some(domain));
    }

    pub fn volume_ctx<'a>(&'a self, domain: &'a str) -> volumes::Ctx<'a> {
        volumes::Ctx {
            ec2: &self.clients.ec2,
            facts: &self.facts,
            device_root: &self.device_root,
            domain,
            transaction_id: &self.transaction_id,
        }
    }
}

/// The blocks that run at `event`: the domain's, then those of its volumes
/// that name the event (a volume's blocks without `on` run only after its
/// device appears).
pub fn blocks_for(domain: &Domain, event: Event) -> Vec<&ExecBlock> {
    let domain_blocks = domain.exec.iter().filter(|b| b.runs_on(event));
    let volume_blocks = domain
        .volumes
        .iter()
        .flat_map(|v| v.exec.iter())
        .filter(|b| b.on.as_ref().is_some_and(|on| on.contains(&event)));
    domain_blocks.chain(volume_blocks).collect()
}

/// A domain and what it holds.
#[derive(Clone)]
pub struct DomainRun {
    pub domain: Domain,
    pub values: MacroValues,
    pub volumes: Vec<AttachedVolume>,
    /// The `failed` hooks already ran (before a rollback).
    pub failed_hooks_ran: bool,
    /// Records set (each knows its index in the domain's `update-route53`).
    pub records: Vec<dns::Placed>,
    /// `name TYPE` of the records `delete-on` deleted.
    pub deleted_records: Vec<String>,
    /// What went wrong in this domain, for the event.
    pub errors: Vec<String>,
    /// Seconds each phase took, for the event.
    pub timings: BTreeMap<String, f64>,
}

impl DomainRun {
    pub fn new(shared: &Shared, domain: Domain) -> DomainRun {
        let mut values = shared.base_values.clone();
        values.set("domain", domain.name.clone());
        DomainRun {
            domain,
            values,
            volumes: Vec::new(),
            failed_hooks_ran: false,
            records: Vec::new(),
            deleted_records: Vec::new(),
            errors: Vec::new(),
            timings: BTreeMap::new(),
        }
    }

    /// The macro values for `event`, with `all_json` filled in.
    pub fn values_for(&self, event: Event) -> MacroValues {
        let mut v = self.values.clone();
        v.set("daemon_state", event.name());
        v.set("ts", super::now_rfc3339());
        v.seal()
    }

    /// `starting` hooks, volumes and their hooks, DNS records: all or
    /// nothing. On a critical failure the domain's `failed` hooks run first
    /// (they unmount), then what this run attached is detached and what it
    /// created deleted; on success the claims are committed.
    pub async fn bring_up(&mut self, shared: &Shared) -> Result<()> {
        let mut result = self.bring_up_steps(shared).await;
        let ctx = shared.volume_ctx(&self.domain.name);
        if result.is_ok() {
            result = volumes::commit(&ctx, &self.volumes).await;
        }
        if let Err(e) = &result {
            self.errors.push(format!("{e:#}"));
            if self.volumes.iter().any(|v| v.attached_now) {
                self.values.set("error", format!("{e:#}"));
                let _ = self
                    .run_hooks(Event::Failed, &Policy::new(OnFailure::Continue))
                    .await;
                self.failed_hooks_ran = true;
            }
            match dns::restore(&shared.clients.route53, &self.records).await {
                // The names are no longer this instance's.
                Ok(_) => {
                    self.records.clear();
                    shared.forget_records(&self.domain.name);
                }
                Err(e) => tracing::error!("[{}] putting records back: {e:#}", self.domain.name),
            }
            volumes::rollback(&ctx, &self.volumes).await;
            for v in &mut self.volumes {
                v.released |= v.attached_now;
            }
        }
        result
    }

    async fn bring_up_steps(&mut self, shared: &Shared) -> Result<()> {
        let name = self.domain.name.clone();
        let scope = Scope {
            domain: &name,
            event: Event::Starting,
        };
        let blocks = self
            .domain
            .exec
            .iter()
            .filter(|b| b.runs_on(Event::Starting))
            .collect();
        let since = Instant::now();
        let starting = hooks::run(
            blocks,
            scope,
            &self.values_for(Event::Starting),
            &Policy::new(OnFailure::Stop),
        )
        .await;
        self.record_time("starting-hooks", since);
        starting.map_err(|f| anyhow!("{}", f.join("; ")))?;

        let since = Instant::now();
        let result = self.attach_volumes(shared).await;
        self.record_time("volumes", since);
        result?;

        let since = Instant::now();
        let result = self.set_records(shared).await;
        self.record_time("records", since);
        result
    }

    /// The domain's volumes in order, each followed by its hooks.
    async fn attach_volumes(&mut self, shared: &Shared) -> Result<()> {
        let name = self.domain.name.clone();
        let scope = Scope {
            domain: &name,
            event: Event::Starting,
        };
        for spec in self.domain.volumes.clone() {
            let attached = match volumes::attach(&shared.volume_ctx(&name), &spec).await {
                Ok(a) => a,
                Err(e) if spec.critical => return Err(e),
                Err(e) => {
                    tracing::warn!(
                        "[{name}] non-critical volume {} skipped: {e:#}",
                        spec.device
                    );
                    self.errors.push(format!(
                        "non-critical volume {} skipped: {e:#}",
                        spec.device
                    ));
                    continue;
                }
            };
            self.values.set("volume_id", attached.volume_id.clone());
            self.values
                .set("attached_device", attached.device.display().to_string());
            self.values
                .set("attach_source", attached.source.letter().to_string());
            self.values.set(
                "attach_op",
                if attached.attached_now {
                    "true"
                } else {
                    "false"
                },
            );
            self.values
                .set("volume_pool", spec.pool_name.clone().unwrap_or_default());
            self.volumes.push(attached);
            // As in the Python daemon, a volume's blocks without "on" run
            // once, after its device appears.
            let blocks = spec
                .exec
                .iter()
                .filter(|b| b.on.as_ref().is_none_or(|on| on.contains(&Event::Starting)))
                .collect();
            if let Err(f) = hooks::run(
                blocks,
                scope,
                &self.values_for(Event::Starting),
                &Policy::new(OnFailure::Stop),
            )
            .await
            {
                let e = anyhow!("volume hooks of {}: {}", spec.device, f.join("; "));
                if spec.critical {
                    return Err(e);
                }
                tracing::warn!("[{name}] non-critical: {e}");
                self.errors.push(format!("non-critical: {e}"));
            }
        }

        Ok(())
    }

    /// The domain's records, one change batch per hosted zone, the zones
    /// in parallel.
    async fn set_records(&mut self, shared: &Shared) -> Result<()> {
        let mut zones: Vec<&str> = Vec::new();
        for r in &self.domain.records {
            if !zones.contains(&r.hosted_zone.as_str()) {
                zones.push(&r.hosted_zone);
            }
        }
        let batches = zones.iter().map(|zone| {
            let targets: Vec<RecordTarget> = self
                .domain
                .records
                .iter()
                .enumerate()
                .filter(|(_, r)| r.hosted_zone == *zone)
                .map(|(index, r)| {
                    let (ipv4, ipv6) = dns::addresses(&shared.facts, r.address);
                    RecordTarget {
                        index,
                        name: r.name.render(&self.values),
                        ttl: r.ttl,
                        ipv4,
                        ipv6,
                        wait_insync: r.wait_insync,
                    }
                })
                .collect();
            let route53 = &shared.clients.route53;
            let domain = &self.domain.name;
            async move {
                let note = |p: &dns::Placed| {
                    let mut placed = shared.placed.lock().expect("not poisoned");
                    placed.push((domain.clone(), p.clone()));
                };
                dns::upsert_zone(route53, zone, &targets, &note).await
            }
        });
        let outcomes = futures_util::future::join_all(batches).await;
        let mut critical_error = None;
        for outcome in outcomes.into_iter().flatten() {
            if let Some(placed) = outcome.placed {
                self.records.push(placed);
            }
            match outcome.error {
                None => {}
                Some(e) if self.domain.records[outcome.index].critical => {
                    critical_error.get_or_insert(e);
                }
                Some(e) => {
                    tracing::warn!("[{}] non-critical record skipped: {e:#}", self.domain.name);
                    self.errors
                        .push(format!("non-critical record skipped: {e:#}"));
                }
            }
        }
        critical_error.map_or(Ok(()), Err)
    }

    /// `delete-on`: after `event`, delete the records that ask for it, each
    /// only while it still points here.
    pub async fn delete_records_for(&mut self, shared: &Shared, event: Event) {
        let leaving: Vec<dns::Placed> = self
            .records
            .iter()
            .filter(|p| self.domain.records[p.index].delete_on.contains(&event))
            .cloned()
            .collect();
        if leaving.is_empty() {
            return;
        }
        match dns::delete_if_ours(&shared.clients.route53, &leaving).await {
            Ok(deleted) => self.deleted_records.extend(deleted),
            Err(e) => {
                tracing::error!("[{}] deleting records: {e:#}", self.domain.name);
                self.errors.push(format!("deleting records: {e:#}"));
            }
        }
    }

    /// Runs the hooks bound to `event` (see [`blocks_for`]); the policy
    /// says whether to stop at the first failure and how long they may take.
    pub async fn run_hooks(&self, event: Event, policy: &Policy) -> Result<(), Vec<String>> {
        let values = self.values_for(event);
        let scope = Scope {
            domain: &self.domain.name,
            event,
        };
        hooks::run(blocks_for(&self.domain, event), scope, &values, policy).await
    }

    /// `detach-on`: after `event`'s hooks, release the volumes that ask for
    /// it, so that a successor can attach them while this instance is still
    /// running. Only when the hooks succeeded (they unmount): otherwise the
    /// volume stays attached and the log says why.
    pub async fn release_for(&mut self, shared: &Shared, event: Event, hooks_ok: bool) {
        let specs = self.specs_of_volumes();
        let ctx = shared.volume_ctx(&self.domain.name);
        for (v, spec) in self.volumes.iter_mut().zip(specs) {
            if v.released || !spec.detach_on.contains(&event) {
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
            match volumes::release(&ctx, v, spec.force).await {
                Ok(()) => v.released = true,
                Err(e) => {
                    tracing::error!("[{}] releasing {}: {e:#}", ctx.domain, v.volume_id);
                    self.errors
                        .push(format!("releasing {}: {e:#}", v.volume_id));
                }
            }
        }
    }

    /// The spec of each held volume, in the same order.
    fn specs_of_volumes(&self) -> Vec<crate::config::VolumeSpec> {
        self.volumes
            .iter()
            .map(|v| {
                self.domain
                    .volumes
                    .iter()
                    .find(|s| s.device == v.device_name)
                    .cloned()
                    .expect("every held volume comes from a spec")
            })
            .collect()
    }

    /// Records that phase `name` ran from `since` until now.
    pub fn record_time(&mut self, name: &str, since: Instant) {
        self.timings
            .insert(name.to_string(), since.elapsed().as_secs_f64());
    }

    /// The typed event for `event` (see `doc/events.md`).
    pub fn event_body(&self, shared: &Shared, event: Event) -> notify::event::EventBody {
        use notify::event::*;
        let facts = &shared.facts;
        let volumes = self
            .volumes
            .iter()
            .map(|v| Volume {
                id: v.volume_id.clone(),
                device: v.device_name.clone(),
                block_device: v.device.display().to_string(),
                source: match v.source {
                    VolumeSource::Given => "volume-id",
                    VolumeSource::Pool => "pool",
                    VolumeSource::Create => "create",
                },
                pool: self
                    .domain
                    .volumes
                    .iter()
                    .find(|s| s.device == v.device_name)
                    .and_then(|s| s.pool_name.clone())
                    .filter(|_| v.source == VolumeSource::Pool),
                operation: match (v.attached_now, v.created) {
                    (_, true) => "created",
                    (true, false) => "attached",
                    (false, false) => "adopted",
                },
                released: v.released,
            })
            .collect();
        let records = self
            .records
            .iter()
            .flat_map(|p| {
                p.ours.iter().map(|set| {
                    let kind = set.r#type().as_str().to_string();
                    Record {
                        hosted_zone: p.hosted_zone.clone(),
                        name: p.name.clone(),
                        deleted: self.deleted_records.contains(&format!("{} {kind}", p.name)),
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
            errors: self.errors.clone(),
            timings: self.timings.clone(),
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
        let values = self.values_for(event);
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

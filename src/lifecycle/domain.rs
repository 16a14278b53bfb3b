//! One domain's part of each phase: bring-up (volumes, records, hooks) and
//! the hooks and notifications of every later event.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Result};

use crate::aws::Clients;
use crate::config::{Domain, Event, ExecBlock, MacroValues};
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
}

impl Shared {
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
pub struct DomainRun {
    pub domain: Domain,
    pub values: MacroValues,
    pub volumes: Vec<AttachedVolume>,
    /// The `failed` hooks already ran (before a rollback).
    pub failed_hooks_ran: bool,
    /// Records set, by index in the domain's `update-route53`.
    pub records: Vec<(usize, dns::Placed)>,
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
            if self.volumes.iter().any(|v| v.attached_now) {
                self.values.set("error", format!("{e:#}"));
                let _ = self
                    .run_hooks(Event::Failed, &Policy::new(OnFailure::Continue))
                    .await;
                self.failed_hooks_ran = true;
            }
            for (_, placed) in self.records.iter().rev() {
                if let Err(e) = dns::restore(&shared.clients.route53, placed).await {
                    tracing::error!("[{}] restoring {}: {e:#}", self.domain.name, placed.name);
                }
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
        hooks::run(
            blocks,
            scope,
            &self.values_for(Event::Starting),
            &Policy::new(OnFailure::Stop),
        )
        .await
        .map_err(|f| anyhow!("{}", f.join("; ")))?;

        for spec in self.domain.volumes.clone() {
            let attached = match volumes::attach(&shared.volume_ctx(&name), &spec).await {
                Ok(a) => a,
                Err(e) if spec.critical => return Err(e),
                Err(e) => {
                    tracing::warn!(
                        "[{name}] non-critical volume {} skipped: {e:#}",
                        spec.device
                    );
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
            }
        }

        for (i, record) in self.domain.records.iter().enumerate() {
            let record_name = record.name.render(&self.values);
            let target = RecordTarget {
                hosted_zone: &record.hosted_zone,
                name: &record_name,
                ttl: record.ttl,
                ipv4: shared.facts.primary_ipv4(),
                ipv6: shared.facts.primary_ipv6(),
            };
            match dns::upsert(&shared.clients.route53, &target).await {
                Ok(placed) => self.records.push((i, placed)),
                Err(e) if record.critical => return Err(e),
                Err(e) => tracing::warn!("[{name}] non-critical record skipped: {e:#}"),
            }
        }
        Ok(())
    }

    /// `delete-on`: after `event`, delete the records that ask for it, each
    /// only while it still points here.
    pub async fn delete_records_for(&self, shared: &Shared, event: Event) {
        for (i, placed) in &self.records {
            if !self.domain.records[*i].delete_on.contains(&event) {
                continue;
            }
            if let Err(e) = dns::delete_if_ours(&shared.clients.route53, placed).await {
                tracing::error!("[{}] deleting {}: {e:#}", self.domain.name, placed.name);
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
                Err(e) => tracing::error!("[{}] releasing {}: {e:#}", ctx.domain, v.volume_id),
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

    /// Sends every notification enabled for `event`, all at once.
    pub async fn notify(&self, shared: &Arc<Shared>, event: Event) {
        let values = self.values_for(event);
        let sends = self
            .domain
            .notify
            .iter()
            .filter(|n| n.enabled_for(event))
            .map(|n| notify::send(&shared.clients, n, &self.domain.name, &values));
        for result in futures_util::future::join_all(sends).await {
            // Already logged by `notify::send`; a notification never fails the run.
            let _ = result;
        }
    }
}

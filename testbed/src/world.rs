//! A simulated corner of AWS: the AWS test double (or bare moto) for the
//! APIs, and for each instance an IMDS emulator and a device root of its own.

use anyhow::{anyhow, Context, Result};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::types::{Placement, VolumeType};

use crate::double::DoubleControl;
use crate::imds::{ImdsEmulator, InstanceMeta};
use crate::moto::{Flavour, Moto};

/// The AWS emulator plus clients aimed at it.
pub struct Testbed {
    pub moto: Moto,
    /// The double's control interface; `None` on bare moto.
    pub double: Option<DoubleControl>,
    pub region: String,
    pub sdk: SdkConfig,
    pub ec2: aws_sdk_ec2::Client,
    pub route53: aws_sdk_route53::Client,
    pub sns: aws_sdk_sns::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
}

/// `LifecycleTransition` of a launch hook.
pub const LAUNCHING: &str = "autoscaling:EC2_INSTANCE_LAUNCHING";
/// `LifecycleTransition` of a termination hook.
pub const TERMINATING: &str = "autoscaling:EC2_INSTANCE_TERMINATING";

/// A pool volume as a test sees it.
#[derive(Debug, Clone)]
pub struct PoolVolume {
    pub volume_id: String,
    pub zone: String,
    pub attached_to: Vec<String>,
    pub tags: Vec<(String, String)>,
}

impl PoolVolume {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// One emulated instance: it exists in moto, has its own IMDS and device root.
pub struct SimInstance {
    pub meta: InstanceMeta,
    pub imds: ImdsEmulator,
    pub root: tempfile::TempDir,
}

/// moto's credentials are never checked; these keep the SDK from looking
/// for real ones.
const TEST_KEY: &str = "testing";

impl Testbed {
    /// On the AWS test double: what every test uses.
    pub async fn start(region: &str) -> Result<Testbed> {
        Testbed::start_with(region, Flavour::Double).await
    }

    /// On moto as it comes, to show what the double adds.
    pub async fn start_bare(region: &str) -> Result<Testbed> {
        Testbed::start_with(region, Flavour::Bare).await
    }

    pub async fn start_with(region: &str, flavour: Flavour) -> Result<Testbed> {
        let moto = Moto::start(flavour).await?;
        let double = (flavour == Flavour::Double).then(|| DoubleControl::new(&moto.url));
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .endpoint_url(&moto.url)
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                TEST_KEY, TEST_KEY, None, None, "testbed",
            ))
            .load()
            .await;
        Ok(Testbed {
            ec2: aws_sdk_ec2::Client::new(&sdk),
            route53: aws_sdk_route53::Client::new(&sdk),
            sns: aws_sdk_sns::Client::new(&sdk),
            sqs: aws_sdk_sqs::Client::new(&sdk),
            autoscaling: aws_sdk_autoscaling::Client::new(&sdk),
            region: region.to_string(),
            sdk,
            moto,
            double,
        })
    }

    /// Launches an instance in `zone` (a letter such as "a" or a full zone
    /// name) and starts its IMDS emulator. `ipv6` adds a public IPv6.
    pub async fn launch_instance(&self, zone: &str, ipv6: Option<&str>) -> Result<SimInstance> {
        self.launch_instance_with(zone, |m| m.public_ipv6 = ipv6.map(String::from))
            .await
    }

    /// Like [`Testbed::launch_instance`], with `shape` changing what IMDS
    /// tells of the instance (its addresses, say) before the emulator starts.
    pub async fn launch_instance_with(
        &self,
        zone: &str,
        shape: impl FnOnce(&mut InstanceMeta),
    ) -> Result<SimInstance> {
        let zone = self.zone(zone);
        let out = self
            .ec2
            .run_instances()
            .image_id("ami-03cf127a")
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
            .min_count(1)
            .max_count(1)
            .placement(Placement::builder().availability_zone(&zone).build())
            .send()
            .await
            .context("RunInstances on moto")?;
        let i = out
            .instances()
            .first()
            .ok_or_else(|| anyhow!("moto launched no instance"))?;
        self.simulate(i, zone, shape).await
    }

    /// The simulated instance (IMDS emulator, device root) of an instance
    /// moto launched, in `zone`.
    async fn simulate(
        &self,
        i: &aws_sdk_ec2::types::Instance,
        zone: String,
        shape: impl FnOnce(&mut InstanceMeta),
    ) -> Result<SimInstance> {
        let meta = InstanceMeta {
            instance_id: i.instance_id().unwrap_or_default().to_string(),
            instance_type: "t3.micro".into(),
            launch_index: i.ami_launch_index().unwrap_or(0) as u32,
            region: self.region.clone(),
            zone,
            mac: i
                .network_interfaces()
                .first()
                .and_then(|n| n.mac_address())
                .unwrap_or("02:00:00:00:00:01")
                .to_string(),
            public_ipv4: i.public_ip_address().map(String::from),
            secondary_public_ipv4: Vec::new(),
            public_ipv6: None,
            private_ipv4: i.private_ip_address().map(String::from),
        };
        let mut meta = meta;
        shape(&mut meta);
        let imds = ImdsEmulator::start(meta.clone(), 0).await?;
        let root = tempfile::Builder::new()
            .prefix("ec2fleetd-root-")
            .tempdir()?;
        std::fs::create_dir_all(root.path().join("dev"))?;
        std::fs::create_dir_all(root.path().join("sys/block"))?;
        if let Some(double) = &self.double {
            double
                .register_instance(&meta.instance_id, root.path())
                .await?;
        }
        Ok(SimInstance { meta, imds, root })
    }

    /// An EC2 Fleet of type `maintain` with a target capacity of one, and
    /// the instance it launched (tagged `aws:ec2:fleet-id` by the double).
    pub async fn launch_in_ec2_fleet(&self, name: &str) -> Result<(String, SimInstance)> {
        use aws_sdk_ec2::types::{
            DefaultTargetCapacityType, FleetLaunchTemplateConfigRequest,
            FleetLaunchTemplateSpecificationRequest, FleetType, RequestLaunchTemplateData,
            TargetCapacitySpecificationRequest,
        };
        self.ec2
            .create_launch_template()
            .launch_template_name(name)
            .launch_template_data(
                RequestLaunchTemplateData::builder()
                    .image_id("ami-03cf127a")
                    .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
                    .build(),
            )
            .send()
            .await
            .context("CreateLaunchTemplate")?;
        let out = self
            .ec2
            .create_fleet()
            .r#type(FleetType::Maintain)
            .launch_template_configs(
                FleetLaunchTemplateConfigRequest::builder()
                    .launch_template_specification(
                        FleetLaunchTemplateSpecificationRequest::builder()
                            .launch_template_name(name)
                            .version("$Latest")
                            .build(),
                    )
                    .build(),
            )
            .target_capacity_specification(
                TargetCapacitySpecificationRequest::builder()
                    .total_target_capacity(1)
                    .on_demand_target_capacity(1)
                    .default_target_capacity_type(DefaultTargetCapacityType::OnDemand)
                    .build(),
            )
            .send()
            .await
            .context("CreateFleet")?;
        let fleet = out
            .fleet_id()
            .context("CreateFleet gave no ID")?
            .to_string();
        let listed = self
            .ec2
            .describe_fleet_instances()
            .fleet_id(&fleet)
            .send()
            .await
            .context("DescribeFleetInstances")?;
        let id = listed
            .active_instances()
            .first()
            .and_then(|a| a.instance_id())
            .context("the fleet launched no instance")?
            .to_string();
        let described = self
            .ec2
            .describe_instances()
            .instance_ids(&id)
            .send()
            .await
            .context("DescribeInstances")?;
        let i = described
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .next()
            .context("the fleet's instance is not described")?;
        let zone = i
            .placement()
            .and_then(|p| p.availability_zone())
            .map_or_else(|| self.zone("a"), String::from);
        Ok((fleet, self.simulate(i, zone, |_| {}).await?))
    }

    /// An EC2 Fleet's total target capacity now.
    pub async fn fleet_target_capacity(&self, fleet: &str) -> Result<Option<i32>> {
        let out = self
            .ec2
            .describe_fleets()
            .fleet_ids(fleet)
            .send()
            .await
            .context("DescribeFleets")?;
        Ok(out
            .fleets()
            .first()
            .and_then(|f| f.target_capacity_specification())
            .and_then(|t| t.total_target_capacity()))
    }

    /// `n` instances, spread over `zones` (letters or names) in turn, launched
    /// concurrently; each with its IMDS emulator and device root.
    pub async fn launch_fleet(&self, n: usize, zones: &[&str]) -> Result<Vec<SimInstance>> {
        anyhow::ensure!(!zones.is_empty(), "a fleet needs at least one zone");
        let launches = (0..n).map(|i| self.launch_instance(zones[i % zones.len()], None));
        futures_util::future::try_join_all(launches).await
    }

    /// An Auto Scaling group `name` in `zone`, empty (minimum and desired
    /// capacity 0, at most 10): instances join it with [`Testbed::join_group`].
    pub async fn create_group(&self, name: &str, zone: &str) -> Result<()> {
        self.autoscaling
            .create_launch_configuration()
            .launch_configuration_name(name)
            .image_id("ami-03cf127a")
            .instance_type("t3.micro")
            .send()
            .await
            .context("CreateLaunchConfiguration")?;
        self.autoscaling
            .create_auto_scaling_group()
            .auto_scaling_group_name(name)
            .launch_configuration_name(name)
            .availability_zones(self.zone(zone))
            .min_size(0)
            .max_size(10)
            .desired_capacity(0)
            .send()
            .await
            .context("CreateAutoScalingGroup")?;
        Ok(())
    }

    /// A lifecycle hook on `group`: `transition` is [`LAUNCHING`] or
    /// [`TERMINATING`]; `heartbeat` its heartbeat timeout in seconds (the
    /// double takes less than AWS's 30, so that tests scale time down).
    pub async fn put_lifecycle_hook(
        &self,
        group: &str,
        hook: &str,
        transition: &str,
        heartbeat: i32,
        default_result: &str,
    ) -> Result<()> {
        self.autoscaling
            .put_lifecycle_hook()
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(hook)
            .lifecycle_transition(transition)
            .heartbeat_timeout(heartbeat)
            .default_result(default_result)
            .send()
            .await
            .context("PutLifecycleHook")?;
        Ok(())
    }

    /// `instance` joins `group` (AttachInstances), and its IMDS's target
    /// lifecycle state follows the group from now on.
    pub async fn join_group(&self, group: &str, instance: &SimInstance) -> Result<()> {
        self.autoscaling
            .attach_instances()
            .auto_scaling_group_name(group)
            .instance_ids(&instance.meta.instance_id)
            .send()
            .await
            .context("AttachInstances")?;
        instance.imds.follow_group(&self.moto.url);
        Ok(())
    }

    /// The instance's `LifecycleState` in its group, `None` when in none.
    pub async fn lifecycle_state(&self, instance_id: &str) -> Result<Option<String>> {
        let out = self
            .autoscaling
            .describe_auto_scaling_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .context("DescribeAutoScalingInstances")?;
        Ok(out
            .auto_scaling_instances()
            .first()
            .and_then(|i| i.lifecycle_state())
            .map(String::from))
    }

    /// An instance's EC2 state (`running`, `terminated`, …).
    pub async fn instance_state(&self, instance_id: &str) -> Result<String> {
        let out = self
            .ec2
            .describe_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .context("DescribeInstances")?;
        Ok(out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find_map(|i| i.state().and_then(|s| s.name()))
            .map_or("unknown".into(), |n| n.as_str().to_string()))
    }

    /// A full zone name from a letter.
    pub fn zone(&self, zone: &str) -> String {
        if zone.len() == 1 {
            format!("{}{zone}", self.region)
        } else {
            zone.to_string()
        }
    }

    pub async fn create_volume(&self, zone: &str, size: i32) -> Result<String> {
        let out = self
            .ec2
            .create_volume()
            .availability_zone(self.zone(zone))
            .size(size)
            .volume_type(VolumeType::Gp3)
            .send()
            .await
            .context("CreateVolume on moto")?;
        Ok(out.volume_id().unwrap_or_default().to_string())
    }

    /// A volume of the pool `pool` of `domain`, tagged as ec2fleetd (and the
    /// Python daemon) find pool volumes.
    pub async fn create_pool_volume(&self, zone: &str, domain: &str, pool: &str) -> Result<String> {
        use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
        let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
        let out = self
            .ec2
            .create_volume()
            .availability_zone(self.zone(zone))
            .size(8)
            .volume_type(VolumeType::Gp3)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Volume)
                    .tags(tag("user:ec2fd.domain", domain))
                    .tags(tag("user:ec2fd.pool-name", pool))
                    .build(),
            )
            .send()
            .await
            .context("CreateVolume (pool) on moto")?;
        Ok(out.volume_id().unwrap_or_default().to_string())
    }

    /// Every volume of a pool: (volume ID, zone, attached instance, tags).
    pub async fn pool_volumes(&self, domain: &str, pool: &str) -> Result<Vec<PoolVolume>> {
        use aws_sdk_ec2::types::Filter;
        let out = self
            .ec2
            .describe_volumes()
            .filters(
                Filter::builder()
                    .name("tag:user:ec2fd.domain")
                    .values(domain)
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name("tag:user:ec2fd.pool-name")
                    .values(pool)
                    .build(),
            )
            .send()
            .await?;
        Ok(out
            .volumes()
            .iter()
            .map(|v| PoolVolume {
                volume_id: v.volume_id().unwrap_or_default().to_string(),
                zone: v.availability_zone().unwrap_or_default().to_string(),
                attached_to: v
                    .attachments()
                    .iter()
                    .filter_map(|a| a.instance_id().map(String::from))
                    .collect(),
                tags: key_values(v.tags()),
            })
            .collect())
    }

    /// Creates a public hosted zone; returns its ID without `/hostedzone/`.
    pub async fn create_hosted_zone(&self, name: &str) -> Result<String> {
        let out = self
            .route53
            .create_hosted_zone()
            .name(name)
            .caller_reference(format!("testbed-{name}"))
            .send()
            .await
            .context("CreateHostedZone on moto")?;
        let id = out
            .hosted_zone()
            .map(|z| z.id().to_string())
            .unwrap_or_default();
        Ok(id.trim_start_matches("/hostedzone/").to_string())
    }

    /// An SNS topic with an SQS queue subscribed: returns (topic ARN, queue URL).
    pub async fn topic_with_queue(&self, name: &str) -> Result<(String, String)> {
        let topic = self
            .sns
            .create_topic()
            .name(name)
            .send()
            .await
            .context("CreateTopic")?;
        let topic_arn = topic.topic_arn().unwrap_or_default().to_string();
        let queue_url = self.create_queue(&format!("{name}-inbox")).await?;
        let attrs = self
            .sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .context("GetQueueAttributes")?;
        let queue_arn = attrs
            .attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::QueueArn))
            .cloned()
            .unwrap_or_default();
        self.sns
            .subscribe()
            .topic_arn(&topic_arn)
            .protocol("sqs")
            .endpoint(queue_arn)
            .send()
            .await
            .context("Subscribe")?;
        Ok((topic_arn, queue_url))
    }

    pub async fn create_queue(&self, name: &str) -> Result<String> {
        create_queue(&self.sqs, name).await
    }

    /// An SQS client for another region than the testbed's.
    pub fn sqs_in(&self, region: &str) -> aws_sdk_sqs::Client {
        let config = aws_sdk_sqs::config::Builder::from(&self.sdk)
            .region(Region::new(region.to_string()))
            .build();
        aws_sdk_sqs::Client::from_conf(config)
    }

    /// Takes every message waiting in the queue; returns their bodies.
    pub async fn drain_queue(&self, queue_url: &str) -> Result<Vec<String>> {
        Ok(drain_queue(&self.sqs, queue_url)
            .await?
            .into_iter()
            .map(|m| m.body().unwrap_or_default().to_string())
            .collect())
    }
}

/// Tags as (key, value) pairs.
fn key_values(tags: &[aws_sdk_ec2::types::Tag]) -> Vec<(String, String)> {
    tags.iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// A snapshot as a test sees it.
#[derive(Debug, Clone)]
pub struct SeenSnapshot {
    pub snapshot_id: String,
    pub state: String,
    pub tags: Vec<(String, String)>,
}

impl SeenSnapshot {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl Testbed {
    /// This account's snapshots, those of the pool `pool` if given.
    pub async fn snapshots(&self, pool: Option<&str>) -> Result<Vec<SeenSnapshot>> {
        use aws_sdk_ec2::types::Filter;
        let mut req = self.ec2.describe_snapshots().owner_ids("self");
        if let Some(pool) = pool {
            req = req.filters(
                Filter::builder()
                    .name("tag:user:ec2fd.pool-name")
                    .values(pool)
                    .build(),
            );
        }
        let out = req.send().await.context("DescribeSnapshots")?;
        Ok(out
            .snapshots()
            .iter()
            .map(|s| SeenSnapshot {
                snapshot_id: s.snapshot_id().unwrap_or_default().to_string(),
                state: s
                    .state()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
                tags: key_values(s.tags()),
            })
            .collect())
    }
}

/// Creates the queue `name` with `sqs`; returns its URL.
pub async fn create_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> Result<String> {
    let out = sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .context("CreateQueue")?;
    Ok(out.queue_url().unwrap_or_default().to_string())
}

/// Takes every message waiting in the queue, with its message attributes.
pub async fn drain_queue(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
) -> Result<Vec<aws_sdk_sqs::types::Message>> {
    let mut taken = Vec::new();
    loop {
        let out = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .send()
            .await
            .context("ReceiveMessage")?;
        let messages = out.messages();
        if messages.is_empty() {
            return Ok(taken);
        }
        for m in messages {
            if let Some(h) = m.receipt_handle() {
                sqs.delete_message()
                    .queue_url(queue_url)
                    .receipt_handle(h)
                    .send()
                    .await?;
            }
            taken.push(m.clone());
        }
    }
}

impl Testbed {
    /// The values of the record `name`/`kind` in the zone, if it exists.
    pub async fn record_values(
        &self,
        zone_id: &str,
        name: &str,
        kind: &str,
    ) -> Result<Vec<String>> {
        let want = format!("{}.", name.trim_end_matches('.'));
        let out = self
            .route53
            .list_resource_record_sets()
            .hosted_zone_id(zone_id)
            .send()
            .await
            .context("ListResourceRecordSets")?;
        Ok(out
            .resource_record_sets()
            .iter()
            .filter(|r| r.name() == want && r.r#type().as_str() == kind)
            .flat_map(|r| r.resource_records().iter().map(|v| v.value().to_string()))
            .collect())
    }

    /// (instance ID, attachment state, device) of each attachment of a volume.
    pub async fn attachments(&self, volume_id: &str) -> Result<Vec<(String, String, String)>> {
        let out = self
            .ec2
            .describe_volumes()
            .volume_ids(volume_id)
            .send()
            .await?;
        Ok(out
            .volumes()
            .iter()
            .flat_map(|v| v.attachments())
            .map(|a| {
                (
                    a.instance_id().unwrap_or_default().to_string(),
                    a.state()
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                    a.device().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }

    /// The environment that aims an ec2fleetd process at this testbed and
    /// at `instance`.
    pub fn daemon_env(&self, instance: &SimInstance) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.moto.url.clone()),
            ("AWS_ACCESS_KEY_ID".into(), TEST_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), TEST_KEY.into()),
            (
                "AWS_EC2_METADATA_SERVICE_ENDPOINT".into(),
                instance.imds.url(),
            ),
            (
                "EC2FLEETD_DEVICE_ROOT".into(),
                instance.root.path().display().to_string(),
            ),
            // The status sockets, in the instance's own tree.
            (
                "EC2FLEETD_RUNTIME_DIR".into(),
                instance
                    .root
                    .path()
                    .join("run/ec2fleetd")
                    .display()
                    .to_string(),
            ),
            // Keep the host's AWS files out of the daemon's view.
            ("AWS_CONFIG_FILE".into(), "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE".into(), "/dev/null".into()),
        ]
    }
}

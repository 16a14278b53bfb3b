//! `ec2fleetd policy`: the least-privilege IAM policy for a config. Only the
//! actions its domains need, each on the resources the config names: volumes
//! by ID or by their pool tag, Route53 by hosted zone and record name, SNS
//! topics and SQS queues by ARN. `doc/iam.md` explains every statement.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::config::{Backend, Config, VolumeSource};
use crate::volumes::tags;

/// Where the fleet runs; each part narrows the ARNs (`*`: any).
#[derive(Debug, Clone)]
pub struct Scope {
    pub partition: String,
    pub region: String,
    pub account: String,
    /// The Auto Scaling group (or a pattern of names) whose lifecycle
    /// actions the instances complete.
    pub group: String,
}

impl Default for Scope {
    fn default() -> Self {
        Scope {
            partition: "aws".into(),
            region: "*".into(),
            account: "*".into(),
            group: "*".into(),
        }
    }
}

/// What the config asks of AWS, gathered over every domain.
#[derive(Default)]
struct Needs {
    given: BTreeSet<String>,
    pools: BTreeSet<String>,
    created_pools: BTreeSet<String>,
    snapshots: BTreeSet<String>,
    /// `f` pools, as `DOMAIN/POOL` (batons) and by pool name.
    follows: BTreeSet<String>,
    follow_pools: BTreeSet<String>,
    /// Pools whose volumes are snapshotted (`snapshot`, `f`) or restored
    /// from their snapshots (`f`, `"SnapshotId": "latest"`).
    snapshot_pools: BTreeSet<String>,
    restore_pools: BTreeSet<String>,
    /// Given volumes (`x`) with `snapshot`: they may not carry the pool tag.
    snapshot_given: BTreeSet<String>,
    /// Hosted zone → normalized record names (macros as `*`).
    zones: BTreeMap<String, BTreeSet<String>>,
    wait_insync: bool,
    topics: BTreeSet<String>,
    queues: BTreeSet<String>,
}

impl Needs {
    fn of(config: &Config, scope: &Scope) -> Needs {
        let mut n = Needs::default();
        for d in &config.domains {
            for v in &d.volumes {
                for source in &v.sources {
                    match source {
                        VolumeSource::Given => n.given.extend(v.volume_id.clone()),
                        VolumeSource::Pool => n.pools.extend(v.pool_name.clone()),
                        VolumeSource::Create | VolumeSource::Follow => {
                            // Created volumes join the pool: claimed, tagged
                            // and released like its other volumes.
                            n.pools.extend(v.pool_name.clone());
                            n.created_pools.extend(v.pool_name.clone());
                            let snapshot = v.create.as_ref().and_then(|c| c.get("SnapshotId"));
                            match snapshot.and_then(Value::as_str) {
                                Some("latest") => n.restore_pools.extend(v.pool_name.clone()),
                                other => n.snapshots.extend(other.map(String::from)),
                            }
                        }
                    }
                }
                if v.sources.contains(&VolumeSource::Follow) {
                    if let Some(pool) = &v.pool_name {
                        n.follows.insert(format!("{}/{pool}", d.name));
                        n.follow_pools.insert(pool.clone());
                        n.snapshot_pools.insert(pool.clone());
                        n.restore_pools.insert(pool.clone());
                    }
                }
                if v.snapshot.is_some() {
                    n.snapshot_pools.extend(v.pool_name.clone());
                    if v.sources.contains(&VolumeSource::Given) {
                        n.snapshot_given.extend(v.volume_id.clone());
                    }
                }
            }
            for r in &d.records {
                n.zones
                    .entry(r.hosted_zone.clone())
                    .or_default()
                    .insert(normalized_name(&r.name.wildcard()));
                n.wait_insync |= r.wait_insync;
            }
            for spec in &d.notify {
                match &spec.backend {
                    Backend::Sns { topic_arn } => {
                        n.topics.insert(topic_arn.clone());
                    }
                    Backend::Sqs { queue_url } => {
                        n.queues
                            .insert(queue_arn(queue_url, spec.region.as_deref(), scope));
                    }
                    Backend::Webhook { .. } => {}
                }
            }
        }
        n
    }
}

/// The name as Route53's condition keys see it: lower case, no final dot.
fn normalized_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The ARN of the queue at `url`. The region comes from the URL's host
/// (`sqs.REGION.amazonaws.com`, `REGION.queue.amazonaws.com`, or the old
/// `queue.amazonaws.com` of us-east-1), else `options.region`, else the
/// scope's; the account and name from its path.
pub fn queue_arn(url: &str, region: Option<&str>, scope: &Scope) -> String {
    let parsed = reqwest::Url::parse(url).ok();
    let host = parsed
        .as_ref()
        .and_then(|u| u.host_str())
        .unwrap_or_default()
        .to_string();
    let path: Vec<String> = parsed
        .as_ref()
        .and_then(|u| u.path_segments())
        .map(|s| s.filter(|p| !p.is_empty()).map(String::from).collect())
        .unwrap_or_default();
    let labels: Vec<&str> = host.split('.').collect();
    let from_host = match labels.as_slice() {
        ["sqs", region, "amazonaws", ..] => Some(region.to_string()),
        [region, "queue", "amazonaws", ..] => Some(region.to_string()),
        ["queue", "amazonaws", ..] => Some("us-east-1".to_string()),
        _ => None,
    };
    let partition = if host.ends_with(".amazonaws.com.cn") {
        "aws-cn"
    } else {
        scope.partition.as_str()
    };
    let region = from_host
        .or(region.map(String::from))
        .unwrap_or_else(|| scope.region.clone());
    let (account, name) = match path.as_slice() {
        [account, name] => (account.as_str(), name.as_str()),
        _ => ("*", "*"),
    };
    format!("arn:{partition}:sqs:{region}:{account}:{name}")
}

fn statement(sid: &str, actions: &[&str], resources: Vec<String>) -> Value {
    json!({ "Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources })
}

fn with_condition(mut statement: Value, condition: Value) -> Value {
    statement["Condition"] = condition;
    statement
}

/// The policy document for `config`.
pub fn for_config(config: &Config, scope: &Scope) -> Value {
    let n = Needs::of(config, scope);
    let Scope {
        partition: p,
        region: r,
        account: a,
        group,
    } = scope;
    let volume_arn = |id: &str| format!("arn:{p}:ec2:{r}:{a}:volume/{id}");
    let pool_tag = format!("aws:ResourceTag/{}", tags::POOL_NAME);
    let list = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>();
    let mut statements = Vec::new();

    let uses_volumes = !n.given.is_empty() || !n.pools.is_empty();
    if uses_volumes {
        statements.push(statement(
            "FindVolumes",
            &["ec2:DescribeVolumes"],
            vec!["*".into()],
        ));
        statements.push(statement(
            "AttachToInstances",
            &["ec2:AttachVolume", "ec2:DetachVolume"],
            vec![format!("arn:{p}:ec2:{r}:{a}:instance/*")],
        ));
    }
    // Claims are marked and unmarked with these tags only: never
    // `in-transit`, which would make a volume deletable.
    let marks = json!({ "ForAllValues:StringEquals": { "aws:TagKeys":
        [tags::TRANSACTION, tags::LAST_USED, tags::IN_TRANSIT] } });
    let set_marks = json!({ "ForAllValues:StringEquals": { "aws:TagKeys":
        [tags::TRANSACTION, tags::LAST_USED] } });
    const ATTACH: [&str; 2] = ["ec2:AttachVolume", "ec2:DetachVolume"];
    let mut holding = |sid: &str, resources: Vec<String>, scope: Option<Value>| {
        let scoped = |s: Value, extra: Value| {
            let mut condition = scope.clone().unwrap_or_else(|| json!({}));
            for (k, v) in extra.as_object().expect("an object") {
                condition[k] = v.clone();
            }
            if condition.as_object().is_some_and(|c| c.is_empty()) {
                s
            } else {
                with_condition(s, condition)
            }
        };
        statements.push(scoped(
            statement(sid, &ATTACH, resources.clone()),
            json!({}),
        ));
        statements.push(scoped(
            statement(
                &format!("{sid}Mark"),
                &["ec2:CreateTags"],
                resources.clone(),
            ),
            set_marks.clone(),
        ));
        statements.push(scoped(
            statement(&format!("{sid}Unmark"), &["ec2:DeleteTags"], resources),
            marks.clone(),
        ));
    };
    if !n.given.is_empty() {
        holding(
            "GivenVolumes",
            n.given.iter().map(|id| volume_arn(id)).collect(),
            None,
        );
    }
    if !n.pools.is_empty() {
        holding(
            "PoolVolumes",
            vec![volume_arn("*")],
            Some(json!({ "StringEquals": { &pool_tag: list(&n.pools) } })),
        );
    }
    if !n.created_pools.is_empty() {
        statements.push(with_condition(
            statement(
                "CreateIntoPools",
                &["ec2:CreateVolume"],
                vec![volume_arn("*")],
            ),
            json!({ "StringEquals": {
                format!("aws:RequestTag/{}", tags::POOL_NAME): list(&n.created_pools) } }),
        ));
        if !n.snapshots.is_empty() {
            statements.push(statement(
                "CreateFromSnapshots",
                &["ec2:CreateVolume"],
                n.snapshots
                    .iter()
                    .map(|s| format!("arn:{p}:ec2:{r}::snapshot/{s}"))
                    .collect(),
            ));
        }
        statements.push(with_condition(
            statement("TagOnCreate", &["ec2:CreateTags"], vec![volume_arn("*")]),
            json!({ "StringEquals": { "ec2:CreateAction": "CreateVolume" } }),
        ));
        statements.push(with_condition(
            statement(
                "DeleteUncommittedVolumes",
                &["ec2:DeleteVolume"],
                vec![volume_arn("*")],
            ),
            json!({ "StringEquals": {
                &pool_tag: list(&n.created_pools),
                format!("aws:ResourceTag/{}", tags::IN_TRANSIT): "true" } }),
        ));
    }

    let snapshot_arn = format!("arn:{p}:ec2:{r}::snapshot/*");
    let pools_of = |set: &BTreeSet<String>| json!({ &pool_tag: list(set) });
    if !n.snapshot_pools.is_empty() || !n.restore_pools.is_empty() {
        statements.push(statement(
            "FindSnapshots",
            &["ec2:DescribeSnapshots"],
            vec!["*".into()],
        ));
    }
    if !n.snapshot_pools.is_empty() {
        // The pool's volumes, into snapshots tagged for the pool at creation.
        statements.push(with_condition(
            statement(
                "SnapshotPoolVolumes",
                &["ec2:CreateSnapshot"],
                vec![volume_arn("*")],
            ),
            json!({ "StringEquals": pools_of(&n.snapshot_pools) }),
        ));
        if !n.snapshot_given.is_empty() {
            // A given volume need not carry the pool's tag: named by its ARN.
            let given: Vec<String> = n.snapshot_given.iter().map(|id| volume_arn(id)).collect();
            statements.push(statement(
                "SnapshotGivenVolumes",
                &["ec2:CreateSnapshot"],
                given.clone(),
            ));
            statements.push(with_condition(
                statement(
                    "MarkGivenLastSnapshot",
                    &["ec2:CreateTags", "ec2:DeleteTags"],
                    given,
                ),
                json!({ "ForAllValues:StringEquals": { "aws:TagKeys": [tags::LAST_SNAPSHOT] } }),
            ));
        }
        statements.push(with_condition(
            statement(
                "SnapshotsOfPools",
                &["ec2:CreateSnapshot"],
                vec![snapshot_arn.clone()],
            ),
            json!({ "StringEquals": {
                format!("aws:RequestTag/{}", tags::POOL_NAME): list(&n.snapshot_pools) } }),
        ));
        statements.push(with_condition(
            statement(
                "TagSnapshotsOnCreate",
                &["ec2:CreateTags"],
                vec![snapshot_arn.clone()],
            ),
            json!({ "StringEquals": { "ec2:CreateAction": "CreateSnapshot" } }),
        ));
        // `keep`: only what ec2fleetd made, only of these pools.
        statements.push(with_condition(
            statement(
                "DeleteOwnSnapshots",
                &["ec2:DeleteSnapshot"],
                vec![snapshot_arn.clone()],
            ),
            json!({ "StringEquals": {
                &pool_tag: list(&n.snapshot_pools),
                format!("aws:ResourceTag/{}", tags::MADE_BY): tags::MADE_BY_US } }),
        ));
        statements.push(with_condition(
            statement(
                "MarkLastSnapshot",
                &["ec2:CreateTags", "ec2:DeleteTags"],
                vec![volume_arn("*")],
            ),
            json!({ "StringEquals": pools_of(&n.snapshot_pools),
                    "ForAllValues:StringEquals": { "aws:TagKeys": [tags::LAST_SNAPSHOT] } }),
        ));
    }
    if !n.restore_pools.is_empty() {
        statements.push(with_condition(
            statement(
                "RestoreFromPoolSnapshots",
                &["ec2:CreateVolume"],
                vec![snapshot_arn.clone()],
            ),
            json!({ "StringEquals": pools_of(&n.restore_pools) }),
        ));
    }
    if !n.follows.is_empty() {
        let baton_tag = format!("aws:ResourceTag/{}", tags::BATON_OF);
        statements.push(statement(
            "SeeBatonHolders",
            &["ec2:DescribeInstances", "ec2:DescribeAvailabilityZones"],
            vec!["*".into()],
        ));
        statements.push(with_condition(
            statement("CreateBatons", &["ec2:CreateVolume"], vec![volume_arn("*")]),
            json!({ "StringEquals": {
                format!("aws:RequestTag/{}", tags::BATON_OF): list(&n.follows) } }),
        ));
        statements.push(with_condition(
            statement("TagBatons", &["ec2:CreateTags"], vec![volume_arn("*")]),
            json!({ "StringEquals": { &baton_tag: list(&n.follows) },
                    "ForAllValues:StringEquals": { "aws:TagKeys": [tags::RESTORED_FROM, tags::ABANDONED] } }),
        ));
        statements.push(with_condition(
            statement("DeleteBatons", &["ec2:DeleteVolume"], vec![volume_arn("*")]),
            json!({ "StringEquals": { &baton_tag: list(&n.follows) } }),
        ));
        statements.push(with_condition(
            statement("CommitGenerations", &["ec2:CreateTags"], vec![volume_arn("*")]),
            json!({ "StringEquals": pools_of(&n.follow_pools),
                    "ForAllValues:StringEquals": { "aws:TagKeys": [tags::GENERATION, tags::SUPERSEDED] } }),
        ));
        statements.push(with_condition(
            statement(
                "DeleteSupersededCopies",
                &["ec2:DeleteVolume"],
                vec![volume_arn("*")],
            ),
            json!({ "StringEquals": {
                &pool_tag: list(&n.follow_pools),
                format!("aws:ResourceTag/{}", tags::MADE_BY): tags::MADE_BY_US } }),
        ));
    }

    let zone_arn = |z: &str| format!("arn:{p}:route53:::hostedzone/{z}");
    for (i, (zone, names)) in n.zones.iter().enumerate() {
        statements.push(with_condition(
            statement(
                &format!("Records{}", i + 1),
                &["route53:ChangeResourceRecordSets"],
                vec![zone_arn(zone)],
            ),
            json!({
                "ForAllValues:StringLike": {
                    "route53:ChangeResourceRecordSetsNormalizedRecordNames": list(names) },
                "ForAllValues:StringEquals": {
                    "route53:ChangeResourceRecordSetsRecordTypes": ["A", "AAAA"],
                    "route53:ChangeResourceRecordSetsActions": ["CREATE", "UPSERT", "DELETE"] }
            }),
        ));
    }
    if !n.zones.is_empty() {
        statements.push(statement(
            "ReadRecords",
            &["route53:ListResourceRecordSets"],
            n.zones.keys().map(|z| zone_arn(z)).collect(),
        ));
    }
    if n.wait_insync {
        statements.push(statement(
            "WaitInSync",
            &["route53:GetChange"],
            vec![format!("arn:{p}:route53:::change/*")],
        ));
    }
    if !n.topics.is_empty() {
        statements.push(statement("Publish", &["sns:Publish"], list(&n.topics)));
    }
    if !n.queues.is_empty() {
        statements.push(statement(
            "SendMessages",
            &["sqs:SendMessage"],
            list(&n.queues),
        ));
    }
    let leaves_when_idle = config
        .idle
        .as_ref()
        .is_some_and(|i| i.action == crate::config::IdleAction::Terminate);
    if config.auto_scaling.enabled {
        // The look at start (and, for an idle end, the group's capacity);
        // none of these calls takes a resource.
        let mut find = vec![
            "autoscaling:DescribeAutoScalingInstances",
            "autoscaling:DescribeLifecycleHooks",
        ];
        if leaves_when_idle {
            find.push("autoscaling:DescribeAutoScalingGroups");
        }
        statements.push(statement("FindAutoScalingGroup", &find, vec!["*".into()]));
        statements.push(statement(
            "CompleteLifecycleActions",
            &[
                "autoscaling:CompleteLifecycleAction",
                "autoscaling:RecordLifecycleActionHeartbeat",
            ],
            vec![format!(
                "arn:{p}:autoscaling:{r}:{a}:autoScalingGroup:*:autoScalingGroupName/{group}"
            )],
        ));
        if leaves_when_idle {
            statements.push(statement(
                "LeaveGroupWhenIdle",
                &["autoscaling:TerminateInstanceInAutoScalingGroup"],
                vec![format!(
                    "arn:{p}:autoscaling:{r}:{a}:autoScalingGroup:*:autoScalingGroupName/{group}"
                )],
            ));
        }
    }
    if leaves_when_idle {
        // Before shutting the OS down: does the instance terminate or stop?
        statements.push(statement(
            "ShutdownBehaviour",
            &["ec2:DescribeInstanceAttribute"],
            vec![format!("arn:{p}:ec2:{r}:{a}:instance/*")],
        ));
        // The EC2 Fleet that launched the instance; neither Describe takes
        // a resource.
        statements.push(statement(
            "FindFleet",
            &["ec2:DescribeInstances", "ec2:DescribeFleets"],
            vec!["*".into()],
        ));
        statements.push(statement(
            "LowerFleetWhenIdle",
            &["ec2:ModifyFleet"],
            vec![format!("arn:{p}:ec2:{r}:{a}:fleet/*")],
        ));
    }
    json!({ "Version": "2012-10-17", "Statement": statements })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy for `text`, without the Auto Scaling statements (every
    /// config has them; `lifecycle_actions_are_limited_to_the_group` tests them).
    fn policy(text: &str) -> Value {
        let mut config = Config::from_text("test", text).expect("valid config");
        config.auto_scaling.enabled = false;
        for_config(&config, &Scope::default())
    }

    fn sids(p: &Value) -> Vec<&str> {
        p["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["Sid"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn a_config_without_aws_work_needs_nothing() {
        let p = policy(r#"{ "auto-scaling": false, "domains": { "a": { "exec": [] } } }"#);
        assert_eq!(p["Statement"], json!([]));
    }

    #[test]
    fn lifecycle_actions_are_limited_to_the_group() {
        let config = Config::from_text("test", r#"{ "domains": { "a": {} } }"#).unwrap();
        let scope = Scope {
            group: "game-*".into(),
            account: "123456789012".into(),
            ..Scope::default()
        };
        let p = for_config(&config, &scope);
        assert_eq!(
            sids(&p),
            ["FindAutoScalingGroup", "CompleteLifecycleActions"]
        );
        assert_eq!(
            p["Statement"][1]["Resource"],
            json!([
                "arn:aws:autoscaling:*:123456789012:autoScalingGroup:*:autoScalingGroupName/game-*"
            ])
        );
    }

    #[test]
    fn an_idle_end_that_terminates_may_leave_the_group_and_read_the_shutdown_behaviour() {
        let text = r#"{ "idle": { "after": 60, "action": "terminate" },
            "domains": { "g": { "players": { "probe": "push" } } } }"#;
        let config = Config::from_text("test", text).expect("valid config");
        let scope = Scope {
            group: "game".into(),
            ..Scope::default()
        };
        let p = for_config(&config, &scope);
        assert_eq!(
            sids(&p),
            [
                "FindAutoScalingGroup",
                "CompleteLifecycleActions",
                "LeaveGroupWhenIdle",
                "ShutdownBehaviour",
                "FindFleet",
                "LowerFleetWhenIdle"
            ]
        );
        assert!(p["Statement"][0]["Action"]
            .as_array()
            .unwrap()
            .contains(&json!("autoscaling:DescribeAutoScalingGroups")));
        assert_eq!(
            p["Statement"][2]["Resource"],
            json!(["arn:aws:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/game"])
        );
        // Only reporting needs nothing more.
        let notify = text.replace("terminate", "notify");
        let config = Config::from_text("test", &notify).expect("valid config");
        assert_eq!(
            sids(&for_config(&config, &scope)),
            ["FindAutoScalingGroup", "CompleteLifecycleActions"]
        );
    }

    #[test]
    fn a_given_volume_is_named_by_its_arn_and_nothing_is_created() {
        let p = policy(
            r#"{ "domains": { "a": { "attach-volume": [
                { "device": "/dev/xvdf", "source": "x", "volume-id": "vol-0123456789abcdef0" } ] } } }"#,
        );
        assert_eq!(
            sids(&p),
            [
                "FindVolumes",
                "AttachToInstances",
                "GivenVolumes",
                "GivenVolumesMark",
                "GivenVolumesUnmark"
            ]
        );
        assert_eq!(
            p["Statement"][3]["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"],
            json!(["user:ec2fd.transc-id", "user:ec2fd.ts-used"])
        );
        assert_eq!(
            p["Statement"][2]["Resource"],
            json!(["arn:aws:ec2:*:*:volume/vol-0123456789abcdef0"])
        );
        assert!(!p.to_string().contains("CreateVolume"));
        assert!(!p.to_string().contains("DeleteVolume"));
    }

    #[test]
    fn a_dataset_deletes_only_what_ec2fleetd_made_of_its_pool() {
        let p = policy(
            r#"{ "domains": { "mc": { "attach-volume": [
                { "device": "/dev/xvdf", "source": "fc", "pool-name": "world", "create": { "Size": 8 },
                  "snapshot": { "on": ["interrupted"], "keep": 3 } },
                { "device": "/dev/xvdg", "source": "c", "pool-name": "chain",
                  "create": { "Size": 8, "SnapshotId": "latest" } } ] } } }"#,
        );
        let by_sid = |sid: &str| {
            p["Statement"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["Sid"] == sid)
                .unwrap_or_else(|| panic!("no {sid}: {p:#}"))
                .clone()
        };
        // "latest" is no snapshot ID: no statement names it.
        assert!(!p.to_string().contains("snapshot/latest"));
        assert_eq!(
            by_sid("RestoreFromPoolSnapshots")["Condition"]["StringEquals"]
                ["aws:ResourceTag/user:ec2fd.pool-name"],
            json!(["chain", "world"])
        );
        let delete = by_sid("DeleteOwnSnapshots")["Condition"]["StringEquals"].clone();
        assert_eq!(delete["aws:ResourceTag/user:ec2fd.made-by"], "ec2fleetd");
        assert_eq!(
            delete["aws:ResourceTag/user:ec2fd.pool-name"],
            json!(["world"])
        );
        let copies = by_sid("DeleteSupersededCopies")["Condition"]["StringEquals"].clone();
        assert_eq!(copies["aws:ResourceTag/user:ec2fd.made-by"], "ec2fleetd");
        assert_eq!(
            by_sid("CreateBatons")["Condition"]["StringEquals"]
                ["aws:RequestTag/user:ec2fd.baton-of"],
            json!(["mc/world"])
        );
        assert_eq!(
            by_sid("CommitGenerations")["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"],
            json!(["user:ec2fd.generation", "user:ec2fd.superseded"])
        );
        // A given volume with `snapshot` is named by its ARN.
        let given = policy(
            r#"{ "domains": { "db": { "attach-volume": [
                { "device": "/dev/xvdf", "source": "x", "volume-id": "vol-0123456789abcdef0",
                  "pool-name": "backups", "snapshot": { "on": ["stopping"] } } ] } } }"#,
        );
        let named = given["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Sid"] == "SnapshotGivenVolumes")
            .unwrap()
            .clone();
        assert_eq!(
            named["Resource"],
            json!(["arn:aws:ec2:*:*:volume/vol-0123456789abcdef0"])
        );
        // A pool without `f` or `snapshot` gets no snapshot rights.
        assert_eq!(
            by_sid("SnapshotsOfPools")["Condition"]["StringEquals"]
                ["aws:RequestTag/user:ec2fd.pool-name"],
            json!(["world"])
        );
    }

    #[test]
    fn pools_are_scoped_by_their_tag_and_only_created_volumes_may_be_deleted() {
        let p = policy(
            r#"{ "domains": { "a": { "attach-volume": [
                { "device": "/dev/xvdf", "source": "p", "pool-name": "worlds" },
                { "device": "/dev/xvdg", "source": "pc", "pool-name": "chains",
                  "create": { "Size": 10, "SnapshotId": "snap-0abc" } } ] } } }"#,
        );
        let s = &p["Statement"];
        assert_eq!(
            sids(&p),
            [
                "FindVolumes",
                "AttachToInstances",
                "PoolVolumes",
                "PoolVolumesMark",
                "PoolVolumesUnmark",
                "CreateIntoPools",
                "CreateFromSnapshots",
                "TagOnCreate",
                "DeleteUncommittedVolumes"
            ]
        );
        assert_eq!(
            s[2]["Condition"]["StringEquals"]["aws:ResourceTag/user:ec2fd.pool-name"],
            json!(["chains", "worlds"])
        );
        // Marking keeps the pool scope and may not set `in-transit`.
        assert_eq!(
            s[3]["Condition"]["StringEquals"]["aws:ResourceTag/user:ec2fd.pool-name"],
            json!(["chains", "worlds"])
        );
        assert!(!s[3]["Condition"].to_string().contains("in-transit"));
        assert_eq!(
            s[5]["Condition"]["StringEquals"]["aws:RequestTag/user:ec2fd.pool-name"],
            json!(["chains"])
        );
        assert_eq!(
            s[6]["Resource"],
            json!(["arn:aws:ec2:*::snapshot/snap-0abc"])
        );
        assert_eq!(
            s[8]["Condition"]["StringEquals"]["aws:ResourceTag/user:ec2fd.in-transit"],
            "true"
        );
    }

    #[test]
    fn records_are_scoped_by_zone_and_name_with_macros_as_wildcards() {
        let p = policy(
            r#"{ "domains": { "a": { "update-route53": [
                { "hostedzone": "Z1", "name": "Node-{instance_index}.Example.com." },
                { "hostedzone": "Z1", "name": "www.example.com", "wait-insync": true },
                { "hostedzone": "Z2", "name": "b.example.org" } ] } } }"#,
        );
        assert_eq!(
            sids(&p),
            ["Records1", "Records2", "ReadRecords", "WaitInSync"]
        );
        let s = &p["Statement"];
        assert_eq!(s[0]["Resource"], json!(["arn:aws:route53:::hostedzone/Z1"]));
        assert_eq!(
            s[0]["Condition"]["ForAllValues:StringLike"]
                ["route53:ChangeResourceRecordSetsNormalizedRecordNames"],
            json!(["node-*.example.com", "www.example.com"])
        );
        assert_eq!(s[2]["Resource"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn queue_urls_become_arns() {
        let any = Scope::default();
        let cases = [
            (
                "https://sqs.eu-west-1.amazonaws.com/123456789012/jobs",
                None,
                "arn:aws:sqs:eu-west-1:123456789012:jobs",
            ),
            (
                "https://us-west-2.queue.amazonaws.com/123456789012/jobs",
                None,
                "arn:aws:sqs:us-west-2:123456789012:jobs",
            ),
            (
                "https://queue.amazonaws.com/123456789012/jobs",
                None,
                "arn:aws:sqs:us-east-1:123456789012:jobs",
            ),
            (
                "https://sqs.cn-north-1.amazonaws.com.cn/123456789012/jobs",
                None,
                "arn:aws-cn:sqs:cn-north-1:123456789012:jobs",
            ),
            (
                "http://127.0.0.1:5000/123456789012/jobs",
                Some("ap-south-1"),
                "arn:aws:sqs:ap-south-1:123456789012:jobs",
            ),
            (
                "http://127.0.0.1:5000/123456789012/jobs",
                None,
                "arn:aws:sqs:*:123456789012:jobs",
            ),
        ];
        for (url, region, arn) in cases {
            assert_eq!(queue_arn(url, region, &any), arn, "{url}");
        }
    }
}

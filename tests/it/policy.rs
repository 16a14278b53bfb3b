//! `ec2fleetd policy`: every AWS call the daemon really makes, as the AWS
//! double records it, must be allowed by the policy printed for its config
//! (action, resource ARN and the conditions on tags, record names, types
//! and change actions), judged by a small IAM evaluator here.

use std::collections::BTreeMap;
use std::process::Command;

use aws_sdk_ec2::types::Volume;
use serde_json::Value;

use super::common::*;
use ec2fleetd_testbed::double::Call;

const REGION: &str = "us-east-1";
/// moto's account.
const ACCOUNT: &str = "123456789012";

fn ec2fleetd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(daemon_bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn policy_for(config: &std::path::Path) -> Value {
    policy_with(config, &[])
}

fn policy_with(config: &std::path::Path, extra: &[&str]) -> Value {
    let path = config.display().to_string();
    let mut args = vec![
        "policy",
        "--config",
        &path,
        "--region",
        REGION,
        "--account",
        ACCOUNT,
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = ec2fleetd(&args);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// An Auto Scaling group's ARN, as IAM sees it (the group's ID made up).
fn group_arn(name: &str) -> String {
    format!(
        "arn:aws:autoscaling:{REGION}:{ACCOUNT}:autoScalingGroup:6d2a-4f1e-b0c9:autoScalingGroupName/{name}"
    )
}

// ------------------------------------------------------- the evaluator

/// Condition keys and their values in one request, for one resource.
type Context = BTreeMap<String, Vec<String>>;

/// What IAM authorizes for one call: the action on each resource it
/// touches, each with the context its conditions see.
struct Request {
    action: String,
    resources: Vec<(String, Context)>,
}

/// `*` and `?` wildcards, as StringLike and resource ARNs take them.
fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(String::from))
            .collect(),
        Value::String(s) => vec![s.clone()],
        _ => vec![],
    }
}

fn condition_holds(condition: Option<&Value>, ctx: &Context) -> bool {
    let Some(Value::Object(ops)) = condition else {
        return true;
    };
    ops.iter().all(|(op, keys)| {
        keys.as_object().unwrap().iter().all(|(key, wanted)| {
            let wanted = strings(wanted);
            let have = ctx.get(key).cloned().unwrap_or_default();
            let matches = |v: &String, like: bool| {
                wanted
                    .iter()
                    .any(|w| if like { glob(w, v) } else { w == v })
            };
            match op.as_str() {
                "StringEquals" => have.len() == 1 && matches(&have[0], false),
                "StringLike" => have.len() == 1 && matches(&have[0], true),
                "ForAllValues:StringEquals" => have.iter().all(|v| matches(v, false)),
                "ForAllValues:StringLike" => have.iter().all(|v| matches(v, true)),
                other => panic!("the evaluator does not know {other}"),
            }
        })
    })
}

/// Whether some Allow statement grants `action` on `arn` in `ctx`.
fn allowed(policy: &Value, action: &str, arn: &str, ctx: &Context) -> bool {
    policy["Statement"].as_array().unwrap().iter().any(|s| {
        s["Effect"] == "Allow"
            && strings(&s["Action"]).iter().any(|a| a == action)
            && strings(&s["Resource"]).iter().any(|r| glob(r, arn))
            && condition_holds(s.get("Condition"), ctx)
    })
}

fn denied(policy: &Value, request: &Request) -> Vec<String> {
    request
        .resources
        .iter()
        .filter(|(arn, ctx)| !allowed(policy, &request.action, arn, ctx))
        .map(|(arn, ctx)| format!("{} on {arn} {ctx:?}", request.action))
        .collect()
}

// ------------------------------------------- calls into IAM requests

/// Tags of every volume, as the calls change them.
#[derive(Default)]
struct VolumeTags {
    by_id: BTreeMap<String, BTreeMap<String, String>>,
    /// The tags the last CreateVolume asked for: a volume ID first seen
    /// after it is that volume (a run's volumes are each used first right
    /// after their CreateVolume).
    created: BTreeMap<String, String>,
    /// Tags of every snapshot that existed before or after the calls.
    snapshots: BTreeMap<String, BTreeMap<String, String>>,
    /// The tags the last CreateSnapshot asked for: a snapshot made and
    /// deleted between the two looks (`keep` after a periodic one) had
    /// those (a run's snapshots of one pool differ only in their times).
    created_snapshot: BTreeMap<String, String>,
}

impl VolumeTags {
    fn snapshot_context(&self, id: &str) -> Context {
        self.snapshots
            .get(id)
            .unwrap_or(&self.created_snapshot)
            .iter()
            .map(|(k, v)| (format!("aws:ResourceTag/{k}"), vec![v.clone()]))
            .collect()
    }

    fn context(&mut self, id: &str) -> Context {
        let tags = self
            .by_id
            .entry(id.to_string())
            .or_insert_with(|| self.created.clone());
        tags.iter()
            .map(|(k, v)| (format!("aws:ResourceTag/{k}"), vec![v.clone()]))
            .collect()
    }
}

fn param<'a>(call: &'a Call, key: &str) -> &'a str {
    call.params[key].as_str().unwrap_or_default()
}

/// `Prefix.N.Key`/`Prefix.N.Value` pairs of an EC2 form.
fn form_tags(call: &Call, prefix: &str) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::new();
    for n in 1.. {
        let key = &call.params[format!("{prefix}.{n}.Key")];
        let Some(key) = key.as_str() else { break };
        let value = call.params[format!("{prefix}.{n}.Value")]
            .as_str()
            .unwrap_or_default();
        tags.insert(key.to_string(), value.to_string());
    }
    tags
}

/// Every `<tag>…</tag>` text in a Route53 XML body.
fn xml_all(body: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    body.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(v, _)| v.to_string()))
        .collect()
}

fn request_of(call: &Call, tags: &mut VolumeTags) -> Vec<Request> {
    let ec2 = |kind: &str, id: &str| format!("arn:aws:ec2:{REGION}:{ACCOUNT}:{kind}/{id}");
    let none = Context::new;
    let one = |action: &str, resources: Vec<(String, Context)>| Request {
        action: action.to_string(),
        resources,
    };
    match (call.service.as_str(), call.action.as_str()) {
        (
            "ec2",
            a @ ("DescribeVolumes"
            | "DescribeSnapshots"
            | "DescribeInstances"
            | "DescribeAvailabilityZones"),
        ) => {
            vec![one(&format!("ec2:{a}"), vec![("*".into(), none())])]
        }
        ("ec2", "CreateSnapshot") => {
            let volume = param(call, "VolumeId");
            let requested = form_tags(call, "TagSpecification.1.Tag");
            tags.created_snapshot = requested.clone();
            let mut ctx: Context = requested
                .iter()
                .map(|(k, v)| (format!("aws:RequestTag/{k}"), vec![v.clone()]))
                .collect();
            let snapshot = format!("arn:aws:ec2:{REGION}::snapshot/snap-new");
            let resources = vec![
                (ec2("volume", volume), tags.context(volume)),
                (snapshot.clone(), ctx.clone()),
            ];
            ctx.insert("ec2:CreateAction".into(), vec!["CreateSnapshot".into()]);
            vec![
                one("ec2:CreateSnapshot", resources),
                one("ec2:CreateTags", vec![(snapshot, ctx)]),
            ]
        }
        ("ec2", "DeleteSnapshot") => {
            let id = param(call, "SnapshotId");
            vec![one(
                "ec2:DeleteSnapshot",
                vec![(
                    format!("arn:aws:ec2:{REGION}::snapshot/{id}"),
                    tags.snapshot_context(id),
                )],
            )]
        }
        ("ec2", a @ ("AttachVolume" | "DetachVolume")) => {
            let volume = param(call, "VolumeId");
            let mut resources = vec![(ec2("volume", volume), tags.context(volume))];
            if !param(call, "InstanceId").is_empty() {
                resources.push((ec2("instance", param(call, "InstanceId")), none()));
            }
            vec![one(&format!("ec2:{a}"), resources)]
        }
        ("ec2", a @ ("CreateTags" | "DeleteTags")) => {
            let volume = param(call, "ResourceId.1");
            let changed = form_tags(call, "Tag");
            let mut ctx = tags.context(volume);
            ctx.insert("aws:TagKeys".into(), changed.keys().cloned().collect());
            let held = tags.by_id.get_mut(volume).unwrap();
            for (k, v) in &changed {
                if a == "CreateTags" {
                    held.insert(k.clone(), v.clone());
                } else {
                    held.remove(k);
                }
            }
            vec![one(&format!("ec2:{a}"), vec![(ec2("volume", volume), ctx)])]
        }
        ("ec2", "DeleteVolume") => {
            let volume = param(call, "VolumeId");
            let ctx = tags.context(volume);
            vec![one("ec2:DeleteVolume", vec![(ec2("volume", volume), ctx)])]
        }
        ("ec2", "CreateVolume") => {
            let requested = form_tags(call, "TagSpecification.1.Tag");
            tags.created = requested.clone();
            let mut ctx: Context = requested
                .iter()
                .map(|(k, v)| (format!("aws:RequestTag/{k}"), vec![v.clone()]))
                .collect();
            let mut resources = vec![(ec2("volume", "vol-new"), ctx.clone())];
            let snapshot = param(call, "SnapshotId");
            if !snapshot.is_empty() {
                resources.push((
                    format!("arn:aws:ec2:{REGION}::snapshot/{snapshot}"),
                    tags.snapshot_context(snapshot),
                ));
            }
            // Tags given on creation are authorized as CreateTags too.
            ctx.insert("ec2:CreateAction".into(), vec!["CreateVolume".into()]);
            vec![
                one("ec2:CreateVolume", resources),
                one("ec2:CreateTags", vec![(ec2("volume", "vol-new"), ctx)]),
            ]
        }
        ("route53", a @ ("ChangeResourceRecordSets" | "ListResourceRecordSets")) => {
            let path = call.params["path"].as_str().unwrap();
            let zone = path.split('/').nth(3).unwrap();
            let body = call.params["body"].as_str().unwrap_or_default();
            let normalized: Vec<String> = xml_all(body, "Name")
                .iter()
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                .collect();
            let ctx: Context = if a == "ChangeResourceRecordSets" {
                [
                    (
                        "route53:ChangeResourceRecordSetsNormalizedRecordNames",
                        normalized,
                    ),
                    (
                        "route53:ChangeResourceRecordSetsRecordTypes",
                        xml_all(body, "Type"),
                    ),
                    (
                        "route53:ChangeResourceRecordSetsActions",
                        xml_all(body, "Action"),
                    ),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
            } else {
                none()
            };
            vec![one(
                &format!("route53:{a}"),
                vec![(format!("arn:aws:route53:::hostedzone/{zone}"), ctx)],
            )]
        }
        ("route53", "GetChange") => {
            let id = call.params["path"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap();
            vec![one(
                "route53:GetChange",
                vec![(format!("arn:aws:route53:::change/{id}"), none())],
            )]
        }
        ("ec2", "DescribeFleets") => vec![one("ec2:DescribeFleets", vec![("*".into(), none())])],
        ("ec2", "ModifyFleet") => vec![one(
            "ec2:ModifyFleet",
            vec![(ec2("fleet", param(call, "FleetId")), none())],
        )],
        ("ec2", "DescribeInstanceAttribute") => vec![one(
            "ec2:DescribeInstanceAttribute",
            vec![(ec2("instance", param(call, "InstanceId")), none())],
        )],
        // The call names the instance; IAM checks the group it is in, which
        // in these tests is always `game`.
        ("autoscaling", "TerminateInstanceInAutoScalingGroup") => vec![one(
            "autoscaling:TerminateInstanceInAutoScalingGroup",
            vec![(group_arn("game"), none())],
        )],
        (
            "autoscaling",
            a @ ("DescribeAutoScalingInstances"
            | "DescribeLifecycleHooks"
            | "DescribeAutoScalingGroups"),
        ) => {
            vec![one(&format!("autoscaling:{a}"), vec![("*".into(), none())])]
        }
        ("autoscaling", a @ ("CompleteLifecycleAction" | "RecordLifecycleActionHeartbeat")) => {
            vec![one(
                &format!("autoscaling:{a}"),
                vec![(group_arn(param(call, "AutoScalingGroupName")), none())],
            )]
        }
        ("sns", "Publish") => vec![one(
            "sns:Publish",
            vec![(param(call, "TopicArn").to_string(), none())],
        )],
        ("sqs", "SendMessage") => {
            let url = param(call, "QueueUrl");
            let mut path = url.rsplit('/');
            let (name, account) = (path.next().unwrap(), path.next().unwrap());
            vec![one(
                "sqs:SendMessage",
                vec![(format!("arn:aws:sqs:{REGION}:{account}:{name}"), none())],
            )]
        }
        (service, action) => panic!("the daemon called {service}:{action}, unknown to this test"),
    }
}

async fn all_volume_tags(tb: &Testbed) -> VolumeTags {
    let ec2 = aws_sdk_ec2::Client::new(&tb.sdk);
    let out = ec2.describe_volumes().send().await.unwrap();
    let tags_of = |v: &Volume| {
        v.tags()
            .iter()
            .map(|t| {
                (
                    t.key().unwrap_or_default().to_string(),
                    t.value().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    VolumeTags {
        by_id: out
            .volumes()
            .iter()
            .map(|v| (v.volume_id().unwrap_or_default().to_string(), tags_of(v)))
            .collect(),
        created: BTreeMap::new(),
        snapshots: snapshot_tags(tb).await,
        created_snapshot: BTreeMap::new(),
    }
}

/// This account's snapshots and their tags.
async fn snapshot_tags(tb: &Testbed) -> BTreeMap<String, BTreeMap<String, String>> {
    tb.snapshots(None)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.snapshot_id, s.tags.into_iter().collect()))
        .collect()
}

/// Checks each call against the policy; returns the IAM actions called.
fn assert_allowed(policy: &Value, calls: &[Call], mut tags: VolumeTags) -> Vec<String> {
    check_calls(policy, calls, &mut tags)
}

fn check_calls(policy: &Value, calls: &[Call], tags: &mut VolumeTags) -> Vec<String> {
    let mut actions = Vec::new();
    let mut problems = Vec::new();
    for call in calls.iter().filter(|c| c.outcome == "answered") {
        for request in request_of(call, tags) {
            problems.extend(denied(policy, &request));
            actions.push(request.action);
        }
    }
    assert!(
        problems.is_empty(),
        "the policy lacks:\n{}\npolicy:\n{policy:#}",
        problems.join("\n")
    );
    actions.sort();
    actions.dedup();
    actions
}

// ------------------------------------------------------------- tests

#[tokio::test]
async fn the_policy_allows_every_call_the_daemon_makes() {
    let tb = Testbed::start(REGION).await.unwrap();
    let double = tb.double.clone().unwrap();
    let zone = tb.create_hosted_zone("example.net").await.unwrap();
    let (topic, _inbox) = tb.topic_with_queue("events").await.unwrap();
    let queue = tb.create_queue("direct").await.unwrap();
    let given = tb.create_volume("a", 8).await.unwrap();
    tb.create_pool_volume("a", "game", "worlds").await.unwrap();
    // Another pool's volume, free in the same zone: never to be touched.
    tb.create_pool_volume("a", "game", "someone-else")
        .await
        .unwrap();
    let dir = tempdir();
    let volumes = format!(
        r#""attach-volume": [
            {{ "device": "/dev/xvdf", "source": "x", "volume-id": "{given}", "detach-on": ["interrupted"] }},
            {{ "device": "/dev/xvdg", "source": "p", "pool-name": "worlds", "detach-on": ["interrupted"] }},
            {{ "device": "/dev/xvdh", "source": "c", "pool-name": "fresh",
               "create": {{ "Size": 1, "VolumeType": "gp3" }}, "detach-on": ["interrupted"] }} ]"#
    );
    let records = format!(
        r#""update-route53": [
            {{ "hostedzone": "{zone}", "name": "Play.example.net", "wait-insync": true, "delete-on": ["interrupted"] }},
            {{ "hostedzone": "{zone}", "name": "node-{{instance_index}}.example.net" }} ]"#
    );
    let notify = format!(
        r#""notify": [
            {{ "backend": "aws-sns", "options": {{ "topic": "{topic}" }} }},
            {{ "backend": "aws-sqs", "options": {{ "queue-url": "{queue}" }} }} ]"#
    );
    let mut called = Vec::new();

    // A whole life: up, interrupted, volumes released, records deleted.
    let instance = tb.launch_instance("a", None).await.unwrap();
    let config = write_config(
        dir.path(),
        "life.jsonc",
        &format!(r#"{{ "domains": {{ "game": {{ {volumes}, {records}, {notify} }} }} }}"#),
    );
    let policy = policy_for(&config);
    let tags = all_volume_tags(&tb).await;
    double.clear_calls().await.unwrap();
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    instance.imds.raise_spot_interruption("terminate", 120);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    called.extend(assert_allowed(
        &policy,
        &double.calls().await.unwrap(),
        tags,
    ));

    // A domain whose volume hook fails: rolled back, the volume it
    // created detached and deleted.
    let instance = tb.launch_instance("a", None).await.unwrap();
    let config = write_config(
        dir.path(),
        "failing.jsonc",
        &format!(
            r#"{{ "domains": {{ "game": {{
                "attach-volume": [{{ "device": "/dev/xvdf", "source": "c", "pool-name": "fresh",
                                    "create": {{ "Size": 1 }},
                                    "exec": [{{ "lines": [{{ "argv": ["/bin/false"] }}] }}] }}],
                {records} }} }} }}"#
        ),
    );
    let policy = policy_for(&config);
    let tags = all_volume_tags(&tb).await;
    double.clear_calls().await.unwrap();
    let mut d = spawn_run(&tb, &instance, &config);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 1, "{}", d.log());
    called.extend(assert_allowed(
        &policy,
        &double.calls().await.unwrap(),
        tags,
    ));

    called.sort();
    called.dedup();
    // Each path above was really taken: the check was not vacuous.
    for action in [
        "ec2:AttachVolume",
        "ec2:CreateTags",
        "ec2:CreateVolume",
        "ec2:DeleteTags",
        "ec2:DeleteVolume",
        "ec2:DescribeVolumes",
        "ec2:DetachVolume",
        "route53:ChangeResourceRecordSets",
        "route53:GetChange",
        "route53:ListResourceRecordSets",
        "sns:Publish",
        "sqs:SendMessage",
    ] {
        assert!(
            called.iter().any(|c| c == action),
            "{action} never called: {called:?}"
        );
    }
}

/// `f`, `snapshot` and `"SnapshotId": "latest"`: six lives of a dataset
/// (the first copy, moves across zones with release, periodic and takeover
/// snapshots and `keep`, a rolled-back move, a move whose holder was
/// killed) make only calls the policy allows.
#[tokio::test]
async fn the_policy_allows_what_a_dataset_does() {
    let tb = Testbed::start(REGION).await.unwrap();
    let double = tb.double.clone().unwrap();
    let dir = tempdir();
    let world = |extra: &str| {
        format!(
            r#"{{ "domains": {{ "mc": {{ "attach-volume": [
            {{ "device": "/dev/xvdf", "source": "fc", "pool-name": "world", "create": {{ "Size": 8 }},
               "snapshot": {{ "on": ["interrupted"], "every": 1, "keep": 1 }},
               "detach-on": ["interrupted"] {extra} }},
            {{ "device": "/dev/xvdg", "source": "c", "pool-name": "spare",
               "create": {{ "Size": 2, "SnapshotId": "latest" }}, "detach-on": ["interrupted"] }} ] }} }} }}"#
        )
    };
    let mut called = Vec::new();
    let life = |zone: &'static str, extra: &'static str, end: &'static str| {
        let (tb, double, dir) = (&tb, &double, dir.path().to_path_buf());
        let config = world(extra);
        async move {
            let instance = tb.launch_instance(zone, None).await.unwrap();
            let config = write_config(&dir, &format!("life-{zone}-{end}.jsonc"), &config);
            let policy = policy_for(&config);
            let mut tags = all_volume_tags(tb).await;
            double.clear_calls().await.unwrap();
            let mut d = spawn_run(tb, &instance, &config);
            match end {
                "notice" => {
                    d.wait_ready(READY_TIMEOUT).await.unwrap();
                    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
                    instance.imds.raise_spot_interruption("terminate", 120);
                    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
                }
                "fails" => assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 1, "{}", d.log()),
                _ => {
                    until("the move under way", || async {
                        d.log().contains("holds the baton")
                    })
                    .await;
                    d.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
                    let _ = d.wait_exit(EXIT_TIMEOUT).await;
                }
            }
            let calls = double.calls().await.unwrap();
            tb.ec2
                .terminate_instances()
                .instance_ids(&instance.meta.instance_id)
                .send()
                .await
                .unwrap();
            tags.snapshots.extend(snapshot_tags(tb).await);
            check_calls(&policy, &calls, &mut tags)
        }
    };
    called.extend(life("a", "", "notice").await);
    called.extend(life("b", "", "notice").await);
    called.extend(life("a", "", "notice").await);
    called.extend(
        life(
            "c",
            r#", "exec": [{ "lines": [{ "argv": ["/bin/false"] }] }]"#,
            "fails",
        )
        .await,
    );
    called.extend(life("b", "", "killed").await);
    called.extend(life("c", "", "notice").await);
    called.sort();
    called.dedup();
    for action in [
        "ec2:CreateSnapshot",
        "ec2:DeleteSnapshot",
        "ec2:DescribeSnapshots",
        "ec2:DescribeInstances",
        "ec2:DescribeAvailabilityZones",
        "ec2:CreateVolume",
        "ec2:DeleteVolume",
        "ec2:CreateTags",
        "ec2:DeleteTags",
    ] {
        assert!(
            called.iter().any(|c| c == action),
            "{action} never called: {called:?}"
        );
    }
}

/// A group with a launch and a termination hook: the look, the launch's
/// completion, the heartbeats and the termination's completion are all
/// allowed by `policy --group game`, and not by a policy for another group.
#[tokio::test]
async fn the_policy_allows_the_lifecycle_hooks_of_its_group() {
    use ec2fleetd_testbed::world::{LAUNCHING, TERMINATING};
    let tb = Testbed::start(REGION).await.unwrap();
    let double = tb.double.clone().unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    tb.create_group("game", "a").await.unwrap();
    tb.put_lifecycle_hook("game", "warm-up", LAUNCHING, 30, "ABANDON")
        .await
        .unwrap();
    tb.put_lifecycle_hook("game", "drain", TERMINATING, 1, "ABANDON")
        .await
        .unwrap();
    tb.join_group("game", &instance).await.unwrap();
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        "game.jsonc",
        r#"{ "domains": { "game": { "exec": [{ "on": ["terminating"], "lines": [
            { "argv": ["/bin/sleep", "2"] }] }] } } }"#,
    );
    double.clear_calls().await.unwrap();
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    until("the launch completed", || async {
        d.log().contains("lifecycle hook warm-up: completed")
    })
    .await;
    tb.autoscaling
        .terminate_instance_in_auto_scaling_group()
        .instance_id(&instance.meta.instance_id)
        .should_decrement_desired_capacity(true)
        .send()
        .await
        .unwrap();
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    let calls: Vec<Call> = double
        .calls()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.action != "TerminateInstanceInAutoScalingGroup")
        .collect();
    let policy = policy_with(&config, &["--group", "game"]);
    let mut called = assert_allowed(&policy, &calls, VolumeTags::default());
    called.sort();
    assert_eq!(
        called,
        [
            "autoscaling:CompleteLifecycleAction",
            "autoscaling:DescribeAutoScalingInstances",
            "autoscaling:DescribeLifecycleHooks",
            "autoscaling:RecordLifecycleActionHeartbeat",
        ]
    );
    let other = policy_with(&config, &["--group", "other-*"]);
    let refused: Vec<String> = calls
        .iter()
        .filter(|c| c.outcome == "answered")
        .flat_map(|c| request_of(c, &mut VolumeTags::default()))
        .flat_map(|r| denied(&other, &r))
        .collect();
    assert!(
        refused
            .iter()
            .any(|r| r.starts_with("autoscaling:CompleteLifecycleAction")),
        "{refused:?}"
    );
    assert!(
        !refused
            .iter()
            .any(|r| r.starts_with("autoscaling:Describe")),
        "{refused:?}"
    );
}

/// An idle end with `terminate`: the group's capacity, leaving it, and (in
/// no group) the shutdown behaviour are all allowed by `policy --group game`.
#[tokio::test]
async fn the_policy_allows_an_idle_end_that_leaves_its_group() {
    let tb = Testbed::start(REGION).await.unwrap();
    let double = tb.double.clone().unwrap();
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        "game.jsonc",
        r#"{ "idle": { "after": 1, "action": "terminate" },
            "domains": { "game": { "players": { "probe": "push" } } } }"#,
    );
    let policy = policy_with(&config, &["--group", "game"]);
    let push = |instance: &SimInstance| {
        let socket = instance.root.path().join("run/ec2fleetd/game.sock");
        async move {
            wait_for_file(&socket).await;
            let body = serde_json::json!({ "online": 0 });
            let (code, _) = ec2fleetd::status::client::request(
                &socket,
                hyper::Method::PUT,
                "/v1/players",
                Some(body),
            )
            .await
            .unwrap();
            assert_eq!(code, 200);
        }
    };
    let mut all = Vec::new();
    // In the group: it leaves; alone: it reads the shutdown behaviour.
    for in_group in [true, false] {
        let instance = tb.launch_instance("a", None).await.unwrap();
        if in_group {
            tb.create_group("game", "a").await.unwrap();
            tb.join_group("game", &instance).await.unwrap();
        }
        double.clear_calls().await.unwrap();
        let mut env = tb.daemon_env(&instance);
        env.push(("EC2FLEETD_SHUTDOWN_COMMAND".into(), "/bin/true".into()));
        let config = config.display().to_string();
        let args = ["run", "--config", config.as_str(), "--keep-hostname"];
        let mut d = DaemonProcess::spawn(&daemon_bin(), &args, &env, false).unwrap();
        push(&instance).await;
        assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
        all.extend(double.calls().await.unwrap());
    }
    let mut called = assert_allowed(&policy, &all, VolumeTags::default());
    called.sort();
    called.dedup();
    assert_eq!(
        called,
        [
            "autoscaling:DescribeAutoScalingGroups",
            "autoscaling:DescribeAutoScalingInstances",
            "autoscaling:DescribeLifecycleHooks",
            "autoscaling:TerminateInstanceInAutoScalingGroup",
            "ec2:DescribeInstanceAttribute",
            "ec2:DescribeInstances",
        ]
    );
}

#[test]
fn the_evaluator_refuses_what_the_policy_does_not_grant() {
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        "pool.jsonc",
        r#"{ "domains": { "game": {
            "attach-volume": [{ "device": "/dev/xvdf", "source": "p", "pool-name": "worlds" }],
            "update-route53": [{ "hostedzone": "Z1", "name": "play.example.net" }] } } }"#,
    );
    let policy = policy_for(&config);
    let volume = "arn:aws:ec2:us-east-1:123456789012:volume/vol-1";
    let pool = |name: &str| -> Context {
        [(
            "aws:ResourceTag/user:ec2fd.pool-name".to_string(),
            vec![name.to_string()],
        )]
        .into()
    };
    assert!(allowed(
        &policy,
        "ec2:AttachVolume",
        volume,
        &pool("worlds")
    ));
    assert!(!allowed(
        &policy,
        "ec2:AttachVolume",
        volume,
        &pool("other")
    ));
    assert!(!allowed(
        &policy,
        "ec2:DeleteVolume",
        volume,
        &pool("worlds")
    ));
    assert!(!allowed(
        &policy,
        "ec2:CreateVolume",
        volume,
        &Context::new()
    ));
    let change = |name: &str| -> Context {
        [
            (
                "route53:ChangeResourceRecordSetsNormalizedRecordNames",
                name,
            ),
            ("route53:ChangeResourceRecordSetsRecordTypes", "A"),
            ("route53:ChangeResourceRecordSetsActions", "UPSERT"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
        .collect()
    };
    let zone = "arn:aws:route53:::hostedzone/Z1";
    let rrsets = "route53:ChangeResourceRecordSets";
    assert!(allowed(&policy, rrsets, zone, &change("play.example.net")));
    assert!(!allowed(&policy, rrsets, zone, &change("mail.example.net")));
    assert!(!allowed(
        &policy,
        rrsets,
        "arn:aws:route53:::hostedzone/Z2",
        &change("play.example.net")
    ));
}

#[test]
fn policy_fails_on_a_bad_config_as_check_does() {
    let dir = tempdir();
    let config = write_config(
        dir.path(),
        "bad.jsonc",
        r#"{ "domains": { "game": { "update-route53": [{ "hostedzone": "Z1", "nmae": "x" }] } } }"#,
    );
    let path = config.display().to_string();
    let (code, out, err) = ec2fleetd(&["policy", "--config", &path]);
    let (check_code, _, check_err) = ec2fleetd(&["check", &path]);
    assert_eq!((code, check_code), (78, 78));
    assert!(out.is_empty(), "{out}");
    assert_eq!(err, check_err);
    assert!(err.contains("did you mean"), "{err}");
}

#[test]
fn every_example_has_a_policy() {
    for entry in std::fs::read_dir(repo_file("examples")).unwrap() {
        let path = entry.unwrap().path();
        // The fleet manager's directory holds a script, not a config.
        if path.extension().is_none_or(|e| e != "jsonc") {
            continue;
        }
        let policy = policy_for(&path);
        assert!(
            !policy["Statement"].as_array().unwrap().is_empty(),
            "{}",
            path.display()
        );
        for statement in policy["Statement"].as_array().unwrap() {
            let actions = strings(&statement["Action"]);
            assert!(!actions.is_empty(), "{}: {statement}", path.display());
            assert!(
                actions.iter().all(|a| a != "*" && !a.ends_with(":*")),
                "{}: a wildcard action in {statement}",
                path.display()
            );
        }
    }
}

#[test]
fn completions_and_the_man_page_come_from_the_cli() {
    let (code, bash, _) = ec2fleetd(&["completions", "bash"]);
    assert_eq!(code, 0);
    for word in [
        "run",
        "check",
        "drill",
        "policy",
        "--config",
        "--poll-interval",
    ] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    let (code, man, _) = ec2fleetd(&["manpage"]);
    assert_eq!(code, 0);
    assert!(
        man.starts_with(".ie") || man.contains(".TH ec2fleetd"),
        "{man}"
    );
    assert!(man.contains("policy"), "{man}");
}

#[test]
fn the_documented_example_is_what_policy_prints() {
    let doc = std::fs::read_to_string(repo_file("doc/iam.md")).unwrap();
    let example = doc.split("## Example").nth(1).unwrap();
    let json = example.split("```json\n").nth(1).unwrap();
    let json = json.split("```").next().unwrap();
    let documented: Value = serde_json::from_str(json).unwrap();
    assert_eq!(
        documented,
        policy_for(&repo_file("examples/pool-game-server.jsonc")),
        "doc/iam.md's example is out of date"
    );
}

//! Auto Scaling lifecycle hooks, worked from the instance itself, with no
//! queue: the instance's group and its hooks are looked up once at start
//! (`DescribeAutoScalingInstances`, `DescribeLifecycleHooks`); a launch hook
//! is completed once every domain is up (`CONTINUE`) or when init failed
//! (`ABANDON`); a termination hook gives the `terminating` hooks its time,
//! kept alive by `RecordLifecycleActionHeartbeat`, and is completed once
//! everything is released and reported. An instance in no group makes no
//! Auto Scaling call after the look.

use std::fmt;
use std::time::Duration;

use aws_sdk_autoscaling::Client;
use tokio::task::JoinHandle;

use crate::aws;
use crate::config::AutoScalingSpec;

/// `LifecycleTransition` of a launch hook.
pub const LAUNCHING: &str = "autoscaling:EC2_INSTANCE_LAUNCHING";
/// `LifecycleTransition` of a termination hook.
pub const TERMINATING: &str = "autoscaling:EC2_INSTANCE_TERMINATING";

/// One lifecycle hook of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub name: String,
    /// How long Auto Scaling waits for a heartbeat or the completion.
    pub heartbeat_timeout: Duration,
    /// How long it waits at most, heartbeats or not.
    pub global_timeout: Duration,
    /// What a timeout completes the action with.
    pub default_result: String,
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (heartbeat timeout {}s, at most {}s, default {})",
            self.name,
            self.heartbeat_timeout.as_secs(),
            self.global_timeout.as_secs(),
            self.default_result
        )
    }
}

/// The instance's Auto Scaling group and the hooks the daemon completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    /// The instance's `LifecycleState` at the look (`Pending:Wait`, `InService`, …).
    pub state: String,
    pub launch: Option<Hook>,
    pub termination: Option<Hook>,
}

/// What the look at start found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// `"auto-scaling": false`: no look.
    Off,
    /// The instance is in no Auto Scaling group.
    NoGroup,
    /// The look failed (no permission, no answer): why.
    Unknown(String),
    InGroup(Group),
}

impl Found {
    pub fn group(&self) -> Option<&Group> {
        match self {
            Found::InGroup(g) => Some(g),
            _ => None,
        }
    }

    /// The group and its termination hook, if the daemon completes one.
    pub fn termination(&self) -> Option<(&Group, &Hook)> {
        self.group()
            .and_then(|g| g.termination.as_ref().map(|h| (g, h)))
    }

    /// The group and its launch hook, if the instance waits on it: it was
    /// in `Pending:Wait` at the look (a daemon restarted later finds it in
    /// service and leaves the hook alone).
    pub fn launch(&self) -> Option<(&Group, &Hook)> {
        self.group()
            .filter(|g| g.state.ends_with("Pending:Wait"))
            .and_then(|g| g.launch.as_ref().map(|h| (g, h)))
    }

    /// Why Auto Scaling will not wait for the `terminating` hooks.
    pub fn why_no_termination_hook(&self) -> String {
        match self {
            Found::Off => "\"auto-scaling\" is false in the config".into(),
            Found::NoGroup => "this instance is in no Auto Scaling group".into(),
            Found::Unknown(why) => format!("the group could not be looked up ({why})"),
            Found::InGroup(g) => format!(
                "the group {} has no termination lifecycle hook for ec2fleetd",
                g.name
            ),
        }
    }
}

/// `CompleteLifecycleAction`'s result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    Abandon,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Continue => "CONTINUE",
            Outcome::Abandon => "ABANDON",
        }
    }
}

/// The look at start: the instance's group, then its hooks. Never fails:
/// what cannot be seen is logged and reported as [`Found::Unknown`].
pub async fn look(client: &Client, instance_id: &str, spec: &AutoScalingSpec) -> Found {
    if !spec.enabled {
        return Found::Off;
    }
    let found = match look_up(client, instance_id, spec).await {
        Ok(f) => f,
        Err(why) => {
            tracing::warn!(
                "cannot tell whether this instance is in an Auto Scaling group: {why}; no lifecycle hook will be completed (see `ec2fleetd policy` for the permissions)"
            );
            return Found::Unknown(why);
        }
    };
    match &found {
        Found::NoGroup => {
            tracing::info!("not in an Auto Scaling group: no lifecycle hook to complete");
            for (key, named) in [
                ("launch-hook", &spec.launch_hook),
                ("termination-hook", &spec.termination_hook),
            ] {
                if let Some(name) = named {
                    tracing::warn!(
                        "auto-scaling.{key} names {name:?}, but this instance is in no Auto Scaling group"
                    );
                }
            }
        }
        Found::InGroup(g) => {
            let say = |h: &Option<Hook>| h.as_ref().map_or("none".to_string(), Hook::to_string);
            tracing::info!(
                "Auto Scaling group {} (this instance: {}): launch hook {}; termination hook {}",
                g.name,
                g.state,
                say(&g.launch),
                say(&g.termination)
            );
            if let (Some(hook), None) = (&g.launch, found.launch()) {
                tracing::info!(
                    "lifecycle hook {}: not to be completed: the instance is {}, not waiting for it",
                    hook.name,
                    g.state
                );
            }
        }
        Found::Off | Found::Unknown(_) => {}
    }
    found
}

async fn look_up(
    client: &Client,
    instance_id: &str,
    spec: &AutoScalingSpec,
) -> Result<Found, String> {
    let instances = client
        .describe_auto_scaling_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .map_err(|e| format!("DescribeAutoScalingInstances: {}", aws::describe(&e)))?;
    let Some(me) = instances
        .auto_scaling_instances()
        .iter()
        .find(|i| i.instance_id() == Some(instance_id))
    else {
        return Ok(Found::NoGroup);
    };
    let name = me.auto_scaling_group_name().unwrap_or_default().to_string();
    // Not paginated: a group has at most 50 hooks.
    let hooks = client
        .describe_lifecycle_hooks()
        .auto_scaling_group_name(&name)
        .send()
        .await
        .map_err(|e| format!("DescribeLifecycleHooks of {name}: {}", aws::describe(&e)))?
        .lifecycle_hooks
        .unwrap_or_default();
    let of = |transition: &str, named: &Option<String>, key: &str| {
        choose(&name, &hooks, transition, named.as_deref())
            .map_err(|why| tracing::error!("auto-scaling.{key}: {why}"))
            .ok()
            .flatten()
    };
    Ok(Found::InGroup(Group {
        launch: of(LAUNCHING, &spec.launch_hook, "launch-hook"),
        termination: of(TERMINATING, &spec.termination_hook, "termination-hook"),
        state: me.lifecycle_state().unwrap_or_default().to_string(),
        name,
    }))
}

/// The hook for `transition`: the one named, else the group's only one.
/// Several and none named, a name the group does not have, or a hook of the
/// other transition: an error that says what the group has.
pub fn choose(
    group: &str,
    hooks: &[aws_sdk_autoscaling::types::LifecycleHook],
    transition: &str,
    named: Option<&str>,
) -> Result<Option<Hook>, String> {
    let of_transition: Vec<_> = hooks
        .iter()
        .filter(|h| h.lifecycle_transition() == Some(transition))
        .collect();
    let names = |hs: &[&aws_sdk_autoscaling::types::LifecycleHook]| {
        hs.iter()
            .filter_map(|h| h.lifecycle_hook_name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let hook = match named {
        Some(name) => match hooks.iter().find(|h| h.lifecycle_hook_name() == Some(name)) {
            Some(h) if h.lifecycle_transition() == Some(transition) => h,
            Some(h) => {
                return Err(format!(
                    "the hook {name} of the group {group} is for {}, not {transition}",
                    h.lifecycle_transition().unwrap_or("no transition")
                ))
            }
            None => {
                let all: Vec<_> = hooks.iter().collect();
                return Err(format!(
                    "the group {group} has no lifecycle hook {name} (its hooks: {})",
                    if all.is_empty() { "none".into() } else { names(&all) }
                ));
            }
        },
        None => match of_transition.as_slice() {
            [] => return Ok(None),
            [one] => one,
            several => {
                return Err(format!(
                    "the group {group} has {} hooks for {transition} ({}): name the one ec2fleetd completes",
                    several.len(),
                    names(several)
                ))
            }
        },
    };
    let secs = |s: Option<i32>, default: u64| {
        Duration::from_secs(s.and_then(|s| u64::try_from(s).ok()).unwrap_or(default))
    };
    // Auto Scaling's defaults: an hour; at most 100 heartbeats or 48 hours.
    let heartbeat_timeout = secs(hook.heartbeat_timeout(), 3600);
    let global_timeout = secs(
        hook.global_timeout(),
        (100 * heartbeat_timeout.as_secs()).min(172_800),
    );
    Ok(Some(Hook {
        name: hook.lifecycle_hook_name().unwrap_or_default().to_string(),
        heartbeat_timeout,
        global_timeout,
        default_result: hook.default_result().unwrap_or("ABANDON").to_string(),
    }))
}

/// `CompleteLifecycleAction` for this instance. An error says why (an
/// action no longer waiting is one: completed, or timed out).
pub async fn complete(
    client: &Client,
    group: &Group,
    hook: &Hook,
    instance_id: &str,
    outcome: Outcome,
) -> Result<(), String> {
    client
        .complete_lifecycle_action()
        .auto_scaling_group_name(&group.name)
        .lifecycle_hook_name(&hook.name)
        .instance_id(instance_id)
        .lifecycle_action_result(outcome.as_str())
        .send()
        .await
        .map(|_| ())
        .map_err(|e| aws::describe(&e))
}

/// How often a heartbeat goes: three chances within the heartbeat timeout.
pub fn heartbeat_interval(hook: &Hook) -> Duration {
    (hook.heartbeat_timeout / 3).max(Duration::from_millis(100))
}

/// Sends `RecordLifecycleActionHeartbeat` every [`heartbeat_interval`] until
/// aborted. A heartbeat refused for good (the action is gone, or no
/// permission) ends the task: `on_lost` is told when Auto Scaling will give
/// up waiting, counted from the last heartbeat that landed.
pub fn keep_alive(
    client: Client,
    group: Group,
    hook: Hook,
    instance_id: String,
    on_lost: impl FnOnce(Duration) + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let every = heartbeat_interval(&hook);
        let mut sent = 0u64;
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(every).await;
            let r = client
                .record_lifecycle_action_heartbeat()
                .auto_scaling_group_name(&group.name)
                .lifecycle_hook_name(&hook.name)
                .instance_id(&instance_id)
                .send()
                .await;
            match r {
                Ok(_) => {
                    sent += 1;
                    last = tokio::time::Instant::now();
                    tracing::debug!("lifecycle hook {}: heartbeat {sent}", hook.name);
                }
                Err(e) if aws::is_transient(&e) => tracing::warn!(
                    "lifecycle hook {}: a heartbeat failed ({}); the next in {:.0}s",
                    hook.name,
                    aws::describe(&e),
                    every.as_secs_f64()
                ),
                Err(e) => {
                    let left = hook.heartbeat_timeout.saturating_sub(last.elapsed());
                    tracing::error!(
                        "lifecycle hook {}: heartbeat refused ({}); Auto Scaling stops waiting in {:.0}s",
                        hook.name,
                        aws::describe(&e),
                        left.as_secs_f64()
                    );
                    on_lost(left);
                    return;
                }
            }
        }
    })
}

/// The group's minimum size and desired capacity now
/// (`DescribeAutoScalingGroups`).
pub async fn capacity(client: &Client, group: &str) -> Result<(i32, i32), String> {
    let out = client
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(group)
        .send()
        .await
        .map_err(|e| aws::describe(&e))?;
    let g = out
        .auto_scaling_groups()
        .first()
        .ok_or_else(|| format!("the group {group} is gone"))?;
    Ok((
        g.min_size().unwrap_or_default(),
        g.desired_capacity().unwrap_or_default(),
    ))
}

/// Why the group's minimum keeps the instance, if it does: leaving with
/// the desired capacity lowered needs room above the minimum.
pub fn kept_by_minimum(min: i32, desired: i32) -> Option<String> {
    (desired - 1 < min).then(|| {
        format!("the group's desired capacity {desired} cannot go below its minimum size {min}")
    })
}

/// `TerminateInstanceInAutoScalingGroup` with the desired capacity
/// lowered: Auto Scaling terminates the instance and launches none for it.
pub async fn leave(client: &Client, instance_id: &str) -> Result<(), String> {
    client
        .terminate_instance_in_auto_scaling_group()
        .instance_id(instance_id)
        .should_decrement_desired_capacity(true)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| aws::describe(&e))
}

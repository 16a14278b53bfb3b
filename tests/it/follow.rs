//! Source `f`: one dataset that follows its instance to any zone. Each
//! instance's hook reads the world through the simulated device and adds
//! its own line, so a successor shows what it got.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::common::*;

const REGION: &str = "us-east-1";
const DOMAIN: &str = "mc";
const POOL: &str = "world";

/// A hook: `world DEVICE WHO LOG` appends `WHO read OLD` to LOG, then
/// writes `OLD` + `WHO;` to the device.
fn world_hook(dir: &Path) -> PathBuf {
    let path = dir.join("world");
    std::fs::write(
        &path,
        "#!/bin/sh\nold=$(tr -d '\\000' < \"$1\")\nprintf '%s read %s\\n' \"$2\" \"$old\" >> \"$3\"\nprintf '%s' \"$old$2;\" | dd of=\"$1\" conv=notrunc status=none\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The world's config: `f` then `c`, a snapshot at the end, released at
/// the end; `extra` is merged into the volume entry.
fn world_config(dir: &Path, who: &str, extra: serde_json::Value) -> PathBuf {
    let hook = world_hook(dir);
    let log = dir.join("reads");
    let mut volume = json!({
        "device": "/dev/xvdf", "source": "fc", "pool-name": POOL,
        "create": { "Size": 8 },
        "snapshot": { "on": ["interrupted", "stopping"] },
        "detach-on": ["interrupted", "stopping"],
        "exec": [{ "lines": [{ "argv": [hook, "{attached_device}", who, log] }] }]
    });
    for (k, v) in extra.as_object().unwrap() {
        volume[k] = v.clone();
    }
    json_config(
        dir,
        who,
        json!({ "domains": { DOMAIN: { "attach-volume": [volume] } } }),
    )
}

/// What each instance read, in order.
fn reads(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("reads"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

async fn terminate(tb: &Testbed, instance: &SimInstance) {
    tb.ec2
        .terminate_instances()
        .instance_ids(&instance.meta.instance_id)
        .send()
        .await
        .unwrap();
}

/// One life: up, then stopped (its release snapshot taken), terminated.
async fn live(tb: &Testbed, dir: &Path, zone: &str, who: &str) -> SimInstance {
    let instance = tb.launch_instance(zone, None).await.unwrap();
    let config = world_config(dir, who, json!({}));
    let mut d = spawn_run(tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    stop_cleanly(&mut d).await;
    terminate(tb, &instance).await;
    instance
}

fn generation(v: &ec2fleetd_testbed::world::PoolVolume) -> Option<u64> {
    v.tag("user:ec2fd.generation").and_then(|g| g.parse().ok())
}

/// volumes.md: a world moves a → b → a; each successor reads every write
/// of its predecessors, the generation grows by one a move, and the stale
/// first copy in zone a is never attached again (ec2fleetd made it: it is
/// deleted once the copy in b is committed).
#[tokio::test]
async fn a_world_moves_a_to_b_to_a_and_keeps_every_write() {
    let tb = Testbed::start(REGION).await.unwrap();
    let double = tb.double.clone().unwrap();
    double
        .configure(json!({ "delays": { "snapshot": 1.0 } }))
        .await
        .unwrap();
    let dir = tempdir();
    live(&tb, dir.path(), "a", "first").await;
    let after_first = tb.pool_volumes(DOMAIN, POOL).await.unwrap();
    assert_eq!(after_first.len(), 1, "{after_first:?}");
    let first_copy = after_first[0].volume_id.clone();
    assert_eq!(generation(&after_first[0]), Some(1));
    assert!(after_first[0].tag("user:ec2fd.last-snapshot").is_some());

    live(&tb, dir.path(), "b", "second").await;
    live(&tb, dir.path(), "a", "third").await;
    assert_eq!(
        reads(dir.path()),
        [
            "first read ",
            "second read first;",
            "third read first;second;"
        ]
    );
    let copies = tb.pool_volumes(DOMAIN, POOL).await.unwrap();
    assert_eq!(copies.len(), 1, "superseded copies are deleted: {copies:?}");
    assert_eq!(generation(&copies[0]), Some(3));
    assert_eq!(copies[0].zone, tb.zone("a"));
    assert_ne!(copies[0].volume_id, first_copy);
    let attaches: Vec<_> = double
        .calls()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.action == "AttachVolume" && c.params["VolumeId"] == first_copy.as_str())
        .collect();
    assert_eq!(attaches.len(), 1, "the first copy was attached again");
}

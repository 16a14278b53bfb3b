//! Source `f`: one dataset that follows its instance to any zone. Each
//! instance's hook reads the world through the simulated device and adds
//! its own line, so a successor shows what it got.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::common::*;
use ec2fleetd_testbed::world::SeenSnapshot;

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
    world_config_with(dir, who, extra, json!({}))
}

/// As [`world_config`], with `domain` merged into the domain.
fn world_config_with(
    dir: &Path,
    who: &str,
    extra: serde_json::Value,
    domain: serde_json::Value,
) -> PathBuf {
    let hook = world_hook(dir);
    let log = dir.join("reads");
    let mut volume = json!({
        "device": "/dev/xvdf", "source": "fc", "pool-name": POOL,
        "create": { "Size": 8 },
        "snapshot": { "on": ["interrupted", "stopping"] },
        "detach-on": ["interrupted", "stopping"],
        "exec": [
            { "lines": [{ "argv": [hook, "{attached_device}", who, log] }] },
            // What an unmount would be: the release snapshot then holds the
            // copy's last state.
            { "on": ["interrupted", "stopping"], "lines": [{ "argv": ["/bin/sync"] }] }
        ]
    });
    for (k, v) in extra.as_object().unwrap() {
        volume[k] = v.clone();
    }
    let mut d = json!({ "attach-volume": [volume] });
    for (k, v) in domain.as_object().unwrap() {
        d[k] = v.clone();
    }
    json_config(dir, who, json!({ "domains": { DOMAIN: d } }))
}

/// What each instance read, in order.
fn reads(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("reads"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// Terminates the instance (riding out the faults a test set).
async fn terminate(tb: &Testbed, instance: &SimInstance) {
    for attempt in 1.. {
        let sent = tb
            .ec2
            .terminate_instances()
            .instance_ids(&instance.meta.instance_id)
            .send()
            .await;
        match sent {
            Ok(_) => return,
            Err(e) if attempt < 20 => {
                eprintln!("TerminateInstances: {e}; again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("TerminateInstances: {e}"),
        }
    }
}

/// One life: up, then stopped (its release snapshot taken), terminated.
async fn live(tb: &Testbed, dir: &Path, zone: &str, who: &str) -> SimInstance {
    live_with(tb, dir, zone, who, json!({})).await
}

async fn live_with(
    tb: &Testbed,
    dir: &Path,
    zone: &str,
    who: &str,
    extra: serde_json::Value,
) -> SimInstance {
    let (instance, mut d) = up(tb, dir, zone, who, extra).await;
    stop_cleanly(&mut d).await;
    terminate(tb, &instance).await;
    instance
}

/// A daemon that is up (READY) on a new instance in `zone`.
async fn up(
    tb: &Testbed,
    dir: &Path,
    zone: &str,
    who: &str,
    extra: serde_json::Value,
) -> (SimInstance, DaemonProcess) {
    let instance = tb.launch_instance(zone, None).await.unwrap();
    let config = world_config(dir, who, extra);
    let mut d = spawn_run(tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    (instance, d)
}

/// The pool's snapshots.
async fn snapshots(tb: &Testbed) -> Vec<SeenSnapshot> {
    tb.snapshots(Some(POOL)).await.unwrap()
}

/// A testbed whose snapshots take `seconds` to complete.
async fn with_snapshots_taking(seconds: f64) -> Testbed {
    let tb = Testbed::start(REGION).await.unwrap();
    tb.double
        .as_ref()
        .unwrap()
        .configure(json!({ "delays": { "snapshot": seconds } }))
        .await
        .unwrap();
    tb
}

/// A snapshot of `volume` with `tags`, as an operator would take one;
/// returns its ID.
async fn take_snapshot(tb: &Testbed, volume: &str, tags: &[(&str, &str)]) -> String {
    use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
    let spec = tags.iter().fold(
        TagSpecification::builder().resource_type(ResourceType::Snapshot),
        |b, (k, v)| b.tags(Tag::builder().key(*k).value(*v).build()),
    );
    tb.ec2
        .create_snapshot()
        .volume_id(volume)
        .tag_specifications(spec.build())
        .send()
        .await
        .unwrap()
        .snapshot_id()
        .unwrap()
        .to_string()
}

/// The second and third lives of a world whose first was in zone a: in b,
/// then in a again; each reads what came before.
async fn b_then_a(tb: &Testbed, dir: &Path) {
    live(tb, dir, "b", "second").await;
    live(tb, dir, "a", "third").await;
    assert_eq!(
        reads(dir),
        [
            "first read ",
            "second read first;",
            "third read first;second;"
        ]
    );
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
    let tb = with_snapshots_taking(1.0).await;
    let double = tb.double.clone().unwrap();
    let dir = tempdir();
    live(&tb, dir.path(), "a", "first").await;
    let after_first = tb.pool_volumes(DOMAIN, POOL).await.unwrap();
    assert_eq!(after_first.len(), 1, "{after_first:?}");
    let first_copy = after_first[0].volume_id.clone();
    assert_eq!(generation(&after_first[0]), Some(1));
    assert!(after_first[0].tag("user:ec2fd.last-snapshot").is_some());

    b_then_a(&tb, dir.path()).await;
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

/// volumes.md: a predecessor killed before its release snapshot (SIGKILL,
/// then its instance terminated) loses nothing that reached its disk: its
/// successor in another zone snapshots the released copy itself.
#[tokio::test]
async fn a_killed_predecessors_writes_reach_a_successor_in_another_zone() {
    let tb = Testbed::start(REGION).await.unwrap();
    let dir = tempdir();
    let (first, d) = up(&tb, dir.path(), "a", "first", json!({})).await;
    d.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    terminate(&tb, &first).await;
    assert!(
        snapshots(&tb).await.is_empty(),
        "a killed daemon took a snapshot"
    );

    live(&tb, dir.path(), "b", "second").await;
    assert_eq!(reads(dir.path())[1], "second read first;");
    let taken = snapshots(&tb).await;
    let kinds: Vec<_> = taken
        .iter()
        .filter_map(|s| s.tag("user:ec2fd.snapshot-kind"))
        .collect();
    assert!(kinds.contains(&"takeover"), "{taken:?}");
    let takeover = taken
        .iter()
        .find(|s| s.tag("user:ec2fd.snapshot-kind") == Some("takeover"))
        .unwrap();
    assert_eq!(
        takeover.tag("user:ec2fd.consistency"),
        Some("crash-consistent")
    );
    assert_eq!(takeover.tag("user:ec2fd.generation"), Some("1"));
}

/// volumes.md, "One holder": two successors at once in two other zones;
/// exactly one comes up with the dataset, the other fails cleanly (exit 1,
/// nothing of the pool attached to it).
#[tokio::test]
async fn of_two_successors_at_once_exactly_one_holds_the_dataset() {
    let tb = with_snapshots_taking(0.5).await;
    let dir = tempdir();
    live(&tb, dir.path(), "a", "first").await;
    let b = tb.launch_instance("b", None).await.unwrap();
    let c = tb.launch_instance("c", None).await.unwrap();
    // Both see no baton yet and ask for it together: the token decides.
    tb.double
        .as_ref()
        .unwrap()
        .configure(json!({ "delay_next": { "CreateVolume": { "count": 2, "seconds": 3.0, "when": "before" } } }))
        .await
        .unwrap();
    let (cb, cc) = (
        world_config(dir.path(), "in-b", json!({})),
        world_config(dir.path(), "in-c", json!({})),
    );
    let (mut db, mut dc) = (spawn_run(&tb, &b, &cb), spawn_run(&tb, &c, &cc));
    let (rb, rc) = tokio::join!(db.wait_ready(READY_TIMEOUT), dc.wait_ready(READY_TIMEOUT));
    assert!(
        rb.is_ok() != rc.is_ok(),
        "exactly one must come up: b {rb:?}, c {rc:?}"
    );
    let (winner, loser) = if rb.is_ok() {
        (&mut db, &mut dc)
    } else {
        (&mut dc, &mut db)
    };
    assert_eq!(
        loser.wait_exit(EXIT_TIMEOUT).await.unwrap(),
        1,
        "{}",
        loser.log()
    );
    assert!(
        loser.log().contains("is taking it on from generation 1"),
        "{}",
        loser.log()
    );
    // Both asked for the baton at once, with the same token.
    let asked: Vec<String> = tb
        .double
        .as_ref()
        .unwrap()
        .calls()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.action == "CreateVolume" && c.params["Size"] == "1")
        .filter_map(|c| c.params["ClientToken"].as_str().map(String::from))
        .collect();
    assert!(
        asked.len() >= 3 && asked[asked.len() - 1] == asked[asked.len() - 2],
        "the baton was not raced for: {asked:?}"
    );
    let held: Vec<_> = tb
        .pool_volumes(DOMAIN, POOL)
        .await
        .unwrap()
        .into_iter()
        .filter(|v| !v.attached_to.is_empty())
        .collect();
    assert_eq!(held.len(), 1, "{held:?}");
    let reads = reads(dir.path());
    assert_eq!(reads.len(), 2, "{reads:?}");
    assert!(reads[1].ends_with("read first;"), "{reads:?}");
    stop_cleanly(winner).await;
}

/// volumes.md: a release snapshot still pending is waited for (never `c`
/// in its place); one that ends in `error` is replaced by the successor's
/// own snapshot of the released copy.
#[tokio::test]
async fn a_pending_release_snapshot_is_waited_for_and_a_failed_one_replaced() {
    let tb = with_snapshots_taking(3.0).await;
    let double = tb.double.clone().unwrap();
    let dir = tempdir();
    live(&tb, dir.path(), "a", "first").await;
    let (_, mut d) = up(&tb, dir.path(), "b", "second", json!({})).await;
    assert!(d.log().contains("waiting for snapshot"), "{}", d.log());
    stop_cleanly(&mut d).await;
    assert_eq!(reads(dir.path())[1], "second read first;");

    // The next release snapshot fails.
    double
        .configure(json!({ "delays": { "snapshot": 0.5 },
                           "snapshot_error_next": { "count": 1, "message": "internal error" } }))
        .await
        .unwrap();
    let (third, mut d) = up(&tb, dir.path(), "a", "third", json!({})).await;
    stop_cleanly(&mut d).await;
    terminate(&tb, &third).await;
    let (_, mut d) = up(&tb, dir.path(), "c", "fourth", json!({})).await;
    assert!(
        d.log()
            .contains("has no snapshot of its last state: taking one"),
        "{}",
        d.log()
    );
    stop_cleanly(&mut d).await;
    assert_eq!(reads(dir.path())[3], "fourth read first;second;third;");
}

/// volumes.md: the newest copy attached to a predecessor that keeps
/// running past `wait-available` fails the domain; nothing older is
/// attached, nothing is created. With `max-loss`, a recent enough snapshot
/// of it is restored instead.
#[tokio::test]
async fn a_copy_held_past_wait_available_fails_closed_unless_max_loss_allows() {
    let tb = Testbed::start(REGION).await.unwrap();
    let dir = tempdir();
    // An older generation's snapshot exists: it must not be taken.
    live(&tb, dir.path(), "a", "first").await;
    let (_, mut holder) = up(&tb, dir.path(), "a", "second", json!({})).await;
    let b = tb.launch_instance("b", None).await.unwrap();
    let config = world_config(dir.path(), "third", json!({ "wait-available": 2 }));
    let mut d = spawn_run(&tb, &b, &config);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 1, "{}", d.log());
    assert!(d.log().contains("is attached to"), "{}", d.log());
    assert!(
        d.log().contains("nothing older is attached in its place"),
        "{}",
        d.log()
    );
    let volumes = tb.pool_volumes(DOMAIN, POOL).await.unwrap();
    assert!(
        volumes.iter().all(|v| v.zone == tb.zone("a")),
        "a volume was made in b: {volumes:?}"
    );
    assert_eq!(reads(dir.path()).len(), 2);

    // A periodic-like snapshot of the held copy: max-loss may take it.
    let held = volumes.iter().find(|v| !v.attached_to.is_empty()).unwrap();
    let generation = held.tag("user:ec2fd.generation").unwrap();
    take_snapshot(
        &tb,
        &held.volume_id,
        &[
            ("user:ec2fd.domain", DOMAIN),
            ("user:ec2fd.pool-name", POOL),
            ("user:ec2fd.generation", generation),
        ],
    )
    .await;
    let config = world_config(
        dir.path(),
        "fourth",
        json!({ "wait-available": 1, "max-loss": 600 }),
    );
    let mut d = spawn_run(&tb, &b, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    assert!(d.log().contains("max-loss allows"), "{}", d.log());
    stop_cleanly(&mut d).await;
    stop_cleanly(&mut holder).await;
}

/// config.md, `snapshot`: `every` takes periodic snapshots between the
/// volume's `snapshot-begin` and `snapshot-end` hooks; `keep` leaves the
/// newest, deletes older ones ec2fleetd made and never an operator's.
#[tokio::test]
async fn periodic_snapshots_freeze_thaw_and_keep_their_number() {
    let tb = Testbed::start(REGION).await.unwrap();
    let dir = tempdir();
    // An operator's backup, tagged into the pool.
    let other = tb.create_volume("a", 8).await.unwrap();
    let foreign = take_snapshot(
        &tb,
        &other,
        &[
            ("user:ec2fd.domain", DOMAIN),
            ("user:ec2fd.pool-name", POOL),
        ],
    )
    .await;
    let log = dir.path().join("freeze");
    let mark = |what: &str| json!({ "argv": ["/bin/sh", "-c", format!("echo {what} >> '{}'", log.display())] });
    let hook = world_hook(dir.path());
    let extra = json!({
        "snapshot": { "on": ["stopping"], "every": 1, "keep": 2 },
        "exec": [
            { "lines": [{ "argv": [hook, "{attached_device}", "first", dir.path().join("reads")] }] },
            { "on": ["snapshot-begin"], "lines": [mark("begin {volume_id}")] },
            { "on": ["snapshot-end"], "lines": [mark("end")] }
        ]
    });
    let (_, mut d) = up(&tb, dir.path(), "a", "first", extra).await;
    until("three periodic snapshots", || async {
        snapshots(&tb)
            .await
            .iter()
            .filter(|s| s.tag("user:ec2fd.snapshot-kind") == Some("periodic"))
            .count()
            >= 2
            && std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .count()
                >= 6
    })
    .await;
    stop_cleanly(&mut d).await;
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let copy = &tb.pool_volumes(DOMAIN, POOL).await.unwrap()[0].volume_id;
    for pair in lines.chunks(2).filter(|p| p.len() == 2) {
        assert_eq!(pair, [format!("begin {copy}"), "end".to_string()]);
    }
    let all = snapshots(&tb).await;
    assert!(
        all.iter().any(|s| s.snapshot_id == foreign),
        "the operator's snapshot was deleted"
    );
    let periodic: Vec<_> = all
        .iter()
        .filter(|s| s.tag("user:ec2fd.snapshot-kind") == Some("periodic"))
        .collect();
    assert!(periodic.len() <= 2, "keep 2: {all:?}");
    for s in &periodic {
        assert_eq!(s.tag("user:ec2fd.consistency"), Some("frozen"));
        assert_eq!(s.tag("user:ec2fd.event"), Some("periodic"));
    }
    let taken = tb
        .double
        .as_ref()
        .unwrap()
        .calls()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.action == "CreateSnapshot")
        .count();
    assert!(
        taken >= 4,
        "three periodic snapshots and the release one: {taken}"
    );
    assert!(all
        .iter()
        .any(|s| s.tag("user:ec2fd.snapshot-kind") == Some("release")));
}

/// volumes.md: a successor killed at any point of a move (waiting for the
/// snapshot, right after its restore's CreateVolume, in its hooks before
/// commit) and terminated, then a clean run in a third zone: the dataset
/// is whole and held once, nothing is left in transit.
#[tokio::test]
async fn a_move_killed_at_any_point_is_taken_over_whole() {
    for point in ["waiting for snapshot", "created vol-", "sleep 30.5"] {
        let tb = with_snapshots_taking(2.0).await;
        let dir = tempdir();
        live(&tb, dir.path(), "a", "first").await;
        let b = tb.launch_instance("b", None).await.unwrap();
        let hook = world_hook(dir.path());
        let marker = dir.path().join("in-hooks");
        let extra = json!({ "exec": [{ "lines": [
            { "argv": [hook, "{attached_device}", "killed", dir.path().join("reads")] },
            { "argv": ["/bin/sh", "-c", format!("touch '{}'; sleep 30.5", marker.display())] } ] }] });
        let config = world_config(dir.path(), "killed", extra);
        let d = spawn_run(&tb, &b, &config);
        until(point, || async {
            d.log().contains(point) || (point.starts_with("sleep") && marker.exists())
        })
        .await;
        d.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
        terminate(&tb, &b).await;

        live(&tb, dir.path(), "c", "clean").await;
        let reads = reads(dir.path());
        assert_eq!(
            reads.last().unwrap(),
            "clean read first;",
            "{point}: {reads:?}"
        );
        let volumes = tb.pool_volumes(DOMAIN, POOL).await.unwrap();
        assert!(
            volumes
                .iter()
                .all(|v| v.tag("user:ec2fd.in-transit").is_none()),
            "{point}: {volumes:?}"
        );
        assert_eq!(volumes.len(), 1, "{point}: held once: {volumes:?}");
        assert_eq!(generation(&volumes[0]), Some(2), "{point}");
    }
}

/// Faults on the snapshot calls: 5xx and throttling are ridden out, and a
/// CreateSnapshot whose answer was lost is found by its tags, not taken
/// twice.
#[tokio::test]
async fn snapshot_calls_ride_out_faults_and_a_lost_answer() {
    let tb = Testbed::start(REGION).await.unwrap();
    let double = tb.double.clone().unwrap();
    let dir = tempdir();
    let (first, mut d) = up(&tb, dir.path(), "a", "first", json!({})).await;
    double
        .configure(json!({ "lose_answer_next": { "CreateSnapshot": 1 } }))
        .await
        .unwrap();
    stop_cleanly(&mut d).await;
    terminate(&tb, &first).await;
    let releases: Vec<_> = snapshots(&tb)
        .await
        .into_iter()
        .filter(|s| s.tag("user:ec2fd.snapshot-kind") == Some("release"))
        .collect();
    assert_eq!(
        releases.len(),
        1,
        "a lost answer made a second snapshot: {releases:?}"
    );
    assert!(
        d.log().contains("was taken though its answer was lost"),
        "{}",
        d.log()
    );

    let b = tb.launch_instance("b", None).await.unwrap();
    double
        .configure(json!({
            "fail_next": { "CreateSnapshot": 2, "DescribeSnapshots": 3 },
            "throttle": { "ec2_mutating": { "rate": 2, "burst": 3 } } }))
        .await
        .unwrap();
    let mut d = spawn_run(&tb, &b, &world_config(dir.path(), "second", json!({})));
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    stop_cleanly(&mut d).await;
    assert_eq!(reads(dir.path())[1], "second read first;");
    let throttled = double
        .calls()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.outcome == "throttled" || c.outcome == "5xx")
        .count();
    assert!(throttled >= 5, "the faults did not happen: {throttled}");
}

/// events.md: a restored copy's event names its source `follow`, its
/// generation and the snapshot it came from (and how long that took); the
/// last event lists the release snapshot.
#[tokio::test]
async fn events_tell_the_generation_the_restore_and_the_snapshots() {
    use ec2fleetd_testbed::webhook::WebhookReceiver;
    let tb = Testbed::start(REGION).await.unwrap();
    let dir = tempdir();
    live(&tb, dir.path(), "a", "first").await;
    let release = snapshots(&tb).await[0].snapshot_id.clone();
    let hook = WebhookReceiver::start().await.unwrap();
    let b = tb.launch_instance("b", None).await.unwrap();
    let config = world_config_with(
        dir.path(),
        "second",
        json!({}),
        json!({ "notify": [{ "backend": "webhook", "options": { "url": hook.url("/e") } }] }),
    );
    let mut d = spawn_run(&tb, &b, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    stop_cleanly(&mut d).await;
    let events: Vec<serde_json::Value> = hook
        .wait_for_delivered(2, Duration::from_secs(10))
        .await
        .unwrap()
        .iter()
        .map(|r| r.json())
        .collect();
    for e in &events {
        assert_valid_event(e);
    }
    let started = &events[0]["volumes"][0];
    assert_eq!(started["source"], "follow");
    assert_eq!(started["pool"], POOL);
    assert_eq!(started["generation"], 2);
    assert_eq!(started["restored_from"]["snapshot"], release.as_str());
    assert!(started["restored_from"]["waited_seconds"]
        .as_f64()
        .is_some());
    let stopping = &events[1]["volumes"][0];
    assert_eq!(stopping["snapshots"][0]["kind"], "release");
    assert!(stopping["snapshots"][0]["id"]
        .as_str()
        .unwrap()
        .starts_with("snap-"));
}

/// config.md, `create`: `"SnapshotId": "latest"` creates from the pool's
/// newest completed snapshot; with none, an empty volume of `Size`.
#[tokio::test]
async fn create_from_the_latest_snapshot_of_the_pool() {
    let tb = Testbed::start(REGION).await.unwrap();
    let double = tb.double.clone().unwrap();
    let dir = tempdir();
    let config = json_config(
        dir.path(),
        "chain",
        json!({ "domains": { "btc": { "attach-volume": [{
            "device": "/dev/xvdf", "source": "c", "pool-name": "chain",
            "create": { "Size": 8, "SnapshotId": "latest" }, "detach-on": ["stopping"] }] } } }),
    );
    let created_from = |calls: Vec<ec2fleetd_testbed::double::Call>| {
        calls
            .into_iter()
            .filter(|c| c.action == "CreateVolume")
            .map(|c| {
                c.params["SnapshotId"]
                    .as_str()
                    .unwrap_or("none")
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    // No snapshot yet: an empty volume.
    let first = tb.launch_instance("a", None).await.unwrap();
    let mut d = spawn_run(&tb, &first, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    stop_cleanly(&mut d).await;
    assert_eq!(created_from(double.calls().await.unwrap()), ["none"]);

    let source = tb.create_volume("a", 8).await.unwrap();
    let mut taken = Vec::new();
    for _ in 0..2 {
        let id = take_snapshot(
            &tb,
            &source,
            &[
                ("user:ec2fd.domain", "btc"),
                ("user:ec2fd.pool-name", "chain"),
            ],
        )
        .await;
        taken.push(id);
        // Start times are whole seconds apart.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    double.clear_calls().await.unwrap();
    let second = tb.launch_instance("b", None).await.unwrap();
    let mut d = spawn_run(&tb, &second, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    stop_cleanly(&mut d).await;
    assert_eq!(
        created_from(double.calls().await.unwrap()),
        [taken[1].clone()]
    );
}

/// volumes.md: a copy the operator made (no `made-by` tag) is taken as the
/// dataset, and once a newer generation elsewhere replaces it, it is kept,
/// tagged `superseded`, and never attached again.
#[tokio::test]
async fn an_operators_copy_is_kept_when_superseded_and_never_picked_again() {
    let tb = Testbed::start(REGION).await.unwrap();
    let dir = tempdir();
    let theirs = tb.create_pool_volume("a", DOMAIN, POOL).await.unwrap();
    live(&tb, dir.path(), "a", "first").await;
    b_then_a(&tb, dir.path()).await;
    let volumes = tb.pool_volumes(DOMAIN, POOL).await.unwrap();
    let kept = volumes
        .iter()
        .find(|v| v.volume_id == theirs)
        .expect("the operator's copy was deleted");
    assert_eq!(kept.tag("user:ec2fd.superseded"), Some("2"), "{kept:?}");
    let attaches = tb
        .double
        .as_ref()
        .unwrap()
        .calls()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.action == "AttachVolume" && c.params["VolumeId"] == theirs.as_str())
        .count();
    assert_eq!(attaches, 1, "only the first life attaches it");
}

/// volumes.md, "The first copy": two instances boot on an empty pool at
/// once; one makes the first copy, the other waits for it and follows it
/// (once released), never making a second world.
#[tokio::test]
async fn two_first_boots_make_one_world() {
    let tb = Testbed::start(REGION).await.unwrap();
    tb.double
        .as_ref()
        .unwrap()
        .configure(json!({ "delay_next": { "CreateVolume": { "count": 2, "seconds": 1.0, "when": "before" } } }))
        .await
        .unwrap();
    let dir = tempdir();
    let (a, b) = (
        tb.launch_instance("a", None).await.unwrap(),
        tb.launch_instance("b", None).await.unwrap(),
    );
    let extra = json!({ "wait-available": 30 });
    let (ca, cb) = (
        world_config(dir.path(), "in-a", extra.clone()),
        world_config(dir.path(), "in-b", extra),
    );
    let (mut da, mut db) = (spawn_run(&tb, &a, &ca), spawn_run(&tb, &b, &cb));
    let a_first = tokio::select! {
        r = da.wait_ready(READY_TIMEOUT) => { r.unwrap(); true }
        r = db.wait_ready(READY_TIMEOUT) => { r.unwrap(); false }
    };
    let (first, second, first_name) = if a_first {
        (&mut da, &mut db, "in-a")
    } else {
        (&mut db, &mut da, "in-b")
    };
    stop_cleanly(first).await;
    second.wait_ready(READY_TIMEOUT).await.unwrap();
    assert!(
        second.log().contains("meanwhile: following it"),
        "{}",
        second.log()
    );
    stop_cleanly(second).await;
    let reads = reads(dir.path());
    assert_eq!(reads.len(), 2, "{reads:?}");
    assert_eq!(reads[0], format!("{first_name} read "));
    assert!(
        reads[1].ends_with(&format!("read {first_name};")),
        "{reads:?}"
    );
}

/// config.md, `snapshot`: a given volume (`x`) is snapshotted too, into the
/// entry's pool, and names its last snapshot.
#[tokio::test]
async fn a_given_volume_gets_its_release_snapshot() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let volume = tb.create_volume("a", 8).await.unwrap();
    let dir = tempdir();
    let config = json_config(
        dir.path(),
        "db",
        json!({ "domains": { "db": {
            "attach-volume": [{ "device": "/dev/xvdf", "source": "x", "volume-id": volume,
                "pool-name": "backups", "snapshot": { "on": ["stopping"] } }],
            "exec": [{ "on": ["stopping"], "lines": [{ "argv": ["/bin/sync"] }] }] } } }),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    stop_cleanly(&mut d).await;
    let snaps = tb.snapshots(Some("backups")).await.unwrap();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(
        snaps[0].tag("user:ec2fd.source-volume"),
        Some(volume.as_str())
    );
    assert_eq!(snaps[0].tag("user:ec2fd.snapshot-kind"), Some("release"));
    assert_eq!(snaps[0].tag("user:ec2fd.consistency"), Some("unmounted"));
    let described = tb
        .ec2
        .describe_volumes()
        .volume_ids(&volume)
        .send()
        .await
        .unwrap();
    let last = described.volumes()[0]
        .tags()
        .iter()
        .find(|t| t.key() == Some("user:ec2fd.last-snapshot"))
        .and_then(|t| t.value())
        .map(String::from);
    assert_eq!(last, Some(snaps[0].snapshot_id.clone()));
}

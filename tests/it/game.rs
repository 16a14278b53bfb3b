//! Game servers a fleet manager can see, on the double: a players probe
//! that holds `ready` back until the world answers, status on the socket
//! and over HTTP behind a token, `status` events as players come and go,
//! an idle end that takes the instance out of its Auto Scaling group with
//! the desired capacity lowered, drain and `ready_to_close`, pushed counts,
//! and the config in multi-part MIME user data.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::common::*;

const REGION: &str = "us-east-1";
const GROUP: &str = "game";

/// A Minecraft server for the daemon's probe: it answers the Server List
/// Ping with `online` of 20 while `answering`, and hangs up before that
/// (a world still loading).
struct FakeMinecraft {
    address: String,
    online: Arc<AtomicU32>,
    answering: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeMinecraft {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_varint(s: &mut tokio::net::TcpStream) -> std::io::Result<u32> {
    let mut v = 0u32;
    for i in 0..5 {
        let b = s.read_u8().await?;
        v |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            break;
        }
    }
    Ok(v)
}

fn varint(mut v: u32, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

async fn fake_minecraft() -> FakeMinecraft {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let online = Arc::new(AtomicU32::new(0));
    let answering = Arc::new(AtomicBool::new(false));
    let (o, a) = (online.clone(), answering.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            if !a.load(Ordering::SeqCst) {
                continue;
            }
            let online = o.load(Ordering::SeqCst);
            tokio::spawn(async move {
                // The handshake, then the status request, each a packet.
                for _ in 0..2 {
                    let Ok(len) = read_varint(&mut s).await else {
                        return;
                    };
                    let mut packet = vec![0; len as usize];
                    if s.read_exact(&mut packet).await.is_err() {
                        return;
                    }
                }
                let status =
                    json!({ "version": { "name": "1.21" }, "players": { "online": online, "max": 20 } })
                        .to_string();
                let mut body = vec![0x00];
                varint(status.len() as u32, &mut body);
                body.extend_from_slice(status.as_bytes());
                let mut out = Vec::new();
                varint(body.len() as u32, &mut out);
                out.extend_from_slice(&body);
                let _ = s.write_all(&out).await;
            });
        }
    });
    FakeMinecraft {
        address,
        online,
        answering,
        task,
    }
}

/// The daemon's status socket on `instance`.
fn socket(instance: &SimInstance, name: &str) -> PathBuf {
    instance
        .root
        .path()
        .join("run/ec2fleetd")
        .join(format!("{name}.sock"))
}

/// One request on the socket: the status code and the JSON.
async fn ask(socket: &Path, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    ec2fleetd::status::client::request(socket, method, path, body)
        .await
        .unwrap()
}

/// `GET /v1/status`, checked against `schema/status.schema.json`.
async fn status(socket: &Path) -> Value {
    let (code, doc) = ask(socket, Method::GET, "/v1/status", None).await;
    assert_eq!(code, 200, "{doc}");
    assert_valid_status(&doc);
    doc
}

fn assert_valid_status(doc: &Value) {
    assert_valid("schema/status.schema.json", doc);
}

/// Waits until the status satisfies `want`.
async fn status_until(socket: &Path, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..600 {
        if socket.exists() {
            let doc = status(socket).await;
            if want(&doc) {
                return doc;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the status never showed {what}");
}

fn marker(path: &Path) -> Value {
    json!({ "argv": ["/usr/bin/touch", path.display().to_string()] })
}

/// `ec2fleetd run --config CONFIG` on `instance`, with `shutdown` as the
/// command that shuts the OS down.
fn spawn_with_shutdown(
    tb: &Testbed,
    instance: &SimInstance,
    config: &Path,
    shutdown: &str,
) -> DaemonProcess {
    let mut env = tb.daemon_env(instance);
    env.push(("EC2FLEETD_SHUTDOWN_COMMAND".into(), shutdown.to_string()));
    let args = [
        "run",
        "--config",
        config.to_str().unwrap(),
        "--keep-hostname",
    ];
    DaemonProcess::spawn(&daemon_bin(), &args, &env, false).unwrap()
}

/// `ec2fleetd ARGS` for `instance` (its runtime directory), off the
/// runtime that serves IMDS.
async fn cli(tb: &Testbed, instance: &SimInstance, args: &[&str]) -> (i32, String, String) {
    ec2fleetd_async(args, &tb.daemon_env(instance)).await
}

/// Waits for the started phase of a daemon whose domain takes pushed
/// counts, then pushes `online` (which makes it ready).
async fn push_first(sock: &Path, online: u32) {
    status_until(sock, "the started phase", |d| {
        d["domains"][0]["phase"] == "started"
    })
    .await;
    let (code, doc) = ask(
        sock,
        Method::PUT,
        "/v1/players",
        Some(json!({ "online": online })),
    )
    .await;
    assert_eq!(code, 200, "{doc}");
}

/// A whole life: the world not answering holds `ready` back; once it
/// answers, `ready` comes with its timing; players come and go and the
/// status and `status` events follow; empty for `idle.after`, the `idle`
/// hooks run, then the stopping path, and the instance leaves its Auto
/// Scaling group with the desired capacity lowered.
#[tokio::test]
async fn a_game_server_life_from_loading_to_idle() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    tb.create_group(GROUP, "a").await.unwrap();
    tb.join_group(GROUP, &instance).await.unwrap();
    let queue = tb.create_queue("events").await.unwrap();
    let world = fake_minecraft().await;
    let dir = tempdir();
    let (ready, idle, stopped) = (
        dir.path().join("ready"),
        dir.path().join("idle"),
        dir.path().join("stopped"),
    );
    let config = json_config(
        dir.path(),
        "game",
        json!({
            "idle": { "after": 2, "after-start": 60, "action": "terminate" },
            "domains": { "game": {
                "players": { "probe": "minecraft", "address": world.address, "every": 1, "timeout": 1 },
                "exec": [
                    { "on": ["ready"], "lines": [marker(&ready)] },
                    { "on": ["idle"], "lines": [marker(&idle)] },
                    { "on": ["stopping"], "lines": [marker(&stopped)] }
                ],
                "notify": [{ "backend": "aws-sqs", "options": { "queue-url": queue } }] } } }),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    let sock = socket(&instance, "game");
    // Started, but the world does not answer: not ready.
    let doc = status_until(&sock, "the started phase", |d| {
        d["domains"][0]["phase"] == "started"
    })
    .await;
    assert_eq!(doc["state"], "starting", "{doc:#}");
    assert_eq!(doc["players"]["online"], Value::Null, "unknown, not empty");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let doc = status(&sock).await;
    assert_eq!(doc["state"], "starting", "{doc:#}\n{}", d.log());
    assert!(doc["domains"][0]["players"]["error"].is_string(), "{doc:#}");
    assert!(!ready.exists(), "ready hooks ran before the world answered");

    world.answering.store(true, Ordering::SeqCst);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    assert!(ready.exists(), "{}", d.log());
    let doc = status(&sock).await;
    assert_eq!(doc["state"], "ready");
    assert_eq!(
        doc["players"],
        json!({ "online": 0, "max": 20, "free": 20 })
    );
    let marks = &doc["domains"][0]["since_boot"];
    assert!(
        marks["started-hooks"].as_f64().unwrap() <= marks["ready"].as_f64().unwrap(),
        "{marks}"
    );
    // The `ready` timing: from the started hooks to the first count, the
    // two seconds of not answering at least.
    assert!(
        doc["domains"][0]["timings"]["ready"].as_f64().unwrap() >= 2.0,
        "{doc:#}"
    );

    // Two players come: the status and a `status` event follow.
    world.online.store(2, Ordering::SeqCst);
    status_until(&sock, "two players", |d| d["players"]["online"] == 2).await;
    let (code, out, _) = cli(&tb, &instance, &["status", "game"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("game: ready") && out.contains("2/20 players (18 free)"),
        "{out}"
    );
    // They leave: two seconds later the instance is idle.
    world.online.store(0, Ordering::SeqCst);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    let log = d.log();
    assert!(idle.exists() && stopped.exists(), "{log}");
    assert!(log.contains("idle: no player for 2s"), "{log}");
    assert!(
        log.contains(
            "Auto Scaling terminates this instance and lowers the desired capacity of game"
        ),
        "{log}"
    );
    assert!(!sock.exists(), "the socket is removed at the end");

    let calls = tb.double.as_ref().unwrap().calls().await.unwrap();
    let leave = calls
        .iter()
        .find(|c| c.action == "TerminateInstanceInAutoScalingGroup")
        .unwrap_or_else(|| panic!("no TerminateInstanceInAutoScalingGroup: {log}"));
    assert_eq!(
        leave.params["ShouldDecrementDesiredCapacity"], "true",
        "{leave:?}"
    );
    let group = tb
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(GROUP)
        .send()
        .await
        .unwrap();
    assert_eq!(
        group.auto_scaling_groups()[0].desired_capacity(),
        Some(0),
        "the desired capacity is lowered"
    );

    let events = events(&tb, &queue).await;
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    let at = |n: &str| {
        names
            .iter()
            .position(|e| *e == n)
            .unwrap_or_else(|| panic!("no {n}: {names:?}"))
    };
    assert!(at("started") < at("ready"), "{names:?}");
    assert!(
        at("ready") < at("idle") && at("idle") < at("stopping"),
        "{names:?}"
    );
    let ready_event = &events[at("ready")];
    assert!(
        ready_event["since_boot"]["ready"].is_number(),
        "{ready_event:#}"
    );
    assert_eq!(ready_event["status"]["state"], "ready");
    let full = events.iter().any(|e| {
        e["event"] == "status" && e["players"]["online"] == 2 && e["players"]["free"] == 18
    });
    assert!(full, "no status event with the two players: {names:?}");
    let stopping = &events[at("stopping")];
    assert!(
        stopping["since_boot"]["first-player"].as_f64().unwrap()
            >= stopping["since_boot"]["ready"].as_f64().unwrap(),
        "{stopping:#}"
    );
}

/// A probe that never answers: `ready-timeout` fails the domain like any
/// critical step.
#[tokio::test]
async fn the_ready_timeout_fails_the_domain() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let world = fake_minecraft().await;
    let dir = tempdir();
    let failed = dir.path().join("failed");
    let config = json_config(
        dir.path(),
        "game",
        json!({ "domains": { "game": {
            "players": { "probe": "minecraft", "address": world.address, "every": 1, "timeout": 1 },
            "ready-timeout": 2,
            "exec": [{ "on": ["failed"], "lines": [marker(&failed)] }] } } }),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 1);
    let log = d.log();
    assert!(failed.exists(), "{log}");
    assert!(
        log.contains("no players count within the ready-timeout of 2s"),
        "{log}"
    );
}

/// Drain with pushed counts: `draining` hooks run, `ready_to_close` turns
/// true once the last player leaves; with `idle.action` notify the daemon
/// stays; undrain brings it back to ready.
#[tokio::test]
async fn a_drained_server_is_ready_to_close_once_empty() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let draining = dir.path().join("draining");
    let config = json_config(
        dir.path(),
        "arena",
        json!({
            "idle": { "after": 600 },
            "domains": { "arena": {
                "players": { "probe": "push", "max": 8 },
                "exec": [{ "on": ["draining"], "lines": [marker(&draining)] }] } } }),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    let sock = socket(&instance, "arena");
    // Not ready until the game pushes its first count.
    push_first(&sock, 3).await;
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let doc = status(&sock).await;
    assert_eq!(doc["players"], json!({ "online": 3, "max": 8, "free": 5 }));

    let (code, out, err) = cli(&tb, &instance, &["drain"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("arena: draining"), "{out}");
    wait_for_file(&draining).await;
    let doc = status(&sock).await;
    assert_eq!(doc["state"], "draining");
    assert_eq!(doc["ready_to_close"], false, "three players are still on");

    let (code, doc) = ask(
        &sock,
        Method::PUT,
        "/v1/players",
        Some(json!({ "domain": "arena", "online": 0 })),
    )
    .await;
    assert_eq!(code, 200, "{doc}");
    assert_eq!(doc["ready_to_close"], true, "{doc:#}");
    // Bad pushes are refused, with why.
    let (code, doc) = ask(
        &sock,
        Method::PUT,
        "/v1/players",
        Some(json!({ "online": -1 })),
    )
    .await;
    assert_eq!(code, 400, "{doc}");
    let (code, doc) = ask(
        &sock,
        Method::PUT,
        "/v1/players",
        Some(json!({ "domain": "nope", "online": 1 })),
    )
    .await;
    assert_eq!(code, 409, "{doc}");

    let (code, _, err) = cli(&tb, &instance, &["undrain", "arena"]).await;
    assert_eq!(code, 0, "{err}");
    let doc = status(&sock).await;
    assert_eq!(doc["state"], "ready");
    assert_eq!(doc["ready_to_close"], false);
    let (code, out, _) = cli(&tb, &instance, &["status", "--json", "arena"]).await;
    assert_eq!(code, 0);
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_valid_status(&doc);
    assert_eq!(doc["name"], "arena");
    stop_cleanly(&mut d).await;
}

/// The HTTP endpoint: a missing or wrong token is refused, the right one
/// answers; writes are refused there (they are the socket's).
#[tokio::test]
async fn the_http_status_wants_the_token() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = json_config(
        dir.path(),
        "game",
        json!({
            "status": { "listen": format!("127.0.0.1:{port}"), "token-file": token.display().to_string() },
            "domains": { "game": {} } }),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/status");
    let get = |auth: Option<&'static str>| {
        let mut r = http.get(&url);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    assert_eq!(get(None).await.unwrap().status(), 401);
    assert_eq!(get(Some("Bearer wrong")).await.unwrap().status(), 401);
    assert_eq!(
        get(Some("Bearer s3cret-token2")).await.unwrap().status(),
        401
    );
    let ok = get(Some("Bearer s3cret-token")).await.unwrap();
    assert_eq!(ok.status(), 200);
    let doc: Value = serde_json::from_str(&ok.text().await.unwrap()).unwrap();
    assert_valid_status(&doc);
    assert_eq!(doc["state"], "ready");
    assert_eq!(
        doc["players"]["online"],
        Value::Null,
        "no domain counts players"
    );
    let drain = http
        .post(format!("http://127.0.0.1:{port}/v1/drain"))
        .header("authorization", "Bearer s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(drain.status(), 403, "HTTP is read-only");
    stop_cleanly(&mut d).await;
}

/// `check` refuses HTTP on an address other hosts reach without a token.
#[test]
fn an_open_status_address_needs_a_token() {
    let dir = tempdir();
    let config = json_config(
        dir.path(),
        "game",
        json!({ "status": { "listen": "0.0.0.0:9358" }, "domains": { "game": {} } }),
    );
    let (code, _, err) = ec2fleetd_with(&["check", &config.display().to_string()], &[]);
    assert_eq!(code, 78);
    assert!(
        err.contains("reachable from other hosts: give \"token-file\""),
        "{err}"
    );
}

/// A `terminate` idle end on an instance in no group shuts the OS down; a
/// group at its minimum keeps the instance up, and it says so.
#[tokio::test]
async fn an_idle_end_outside_a_group_shuts_down_and_a_minimum_keeps_it() {
    let tb = Testbed::start(REGION).await.unwrap();
    let dir = tempdir();
    let shut = dir.path().join("shut-down");
    let config = json_config(
        dir.path(),
        "game",
        json!({
            "idle": { "after": 1, "action": "terminate" },
            "domains": { "game": { "players": { "probe": "push" } } } }),
    );
    let shutdown = format!("/usr/bin/touch {}", shut.display());

    // At its minimum: the group keeps the instance; the daemon only reports.
    let kept = tb.launch_instance("a", None).await.unwrap();
    tb.create_group(GROUP, "a").await.unwrap();
    tb.join_group(GROUP, &kept).await.unwrap();
    tb.autoscaling
        .update_auto_scaling_group()
        .auto_scaling_group_name(GROUP)
        .min_size(1)
        .send()
        .await
        .unwrap();
    let mut d = spawn_with_shutdown(&tb, &kept, &config, &shutdown);
    let sock = socket(&kept, "game");
    push_first(&sock, 0).await;
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    until("the group to keep the instance", || {
        let log = d.log();
        async move { log.contains("idle: the instance stays up") }
    })
    .await;
    assert!(
        d.log()
            .contains("desired capacity 1 cannot go below its minimum size 1"),
        "{}",
        d.log()
    );
    stop_cleanly(&mut d).await;
    assert!(!shut.exists());

    // In no group: the OS shuts down, after saying how the instance ends.
    let alone = tb.launch_instance("a", None).await.unwrap();
    let mut d = spawn_with_shutdown(&tb, &alone, &config, &shutdown);
    let sock = socket(&alone, "game");
    push_first(&sock, 0).await;
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    assert!(shut.exists(), "{}", d.log());
    assert!(
        d.log().contains("idle: shutting the OS down"),
        "{}",
        d.log()
    );
}

/// The config in multi-part MIME user data beside a cloud-config part; user
/// data with no part of ours is refused, listing the parts.
#[tokio::test]
async fn the_config_comes_from_mime_user_data() {
    let tb = Testbed::start(REGION).await.unwrap();
    let mime = |ours: bool| {
        let mut m = String::from(
            "Content-Type: multipart/mixed; boundary=\"XX\"\nMIME-Version: 1.0\n\n\
             --XX\nContent-Type: text/cloud-config; charset=\"us-ascii\"\n\
             Content-Disposition: attachment; filename=\"cloud-config.yaml\"\n\n\
             #cloud-config\npackages: [jq]\n",
        );
        if ours {
            m.push_str(
                "--XX\nContent-Type: application/x-ec2fleetd\n\
                 Content-Disposition: attachment; filename=\"game.jsonc\"\n\n\
                 { \"domains\": { \"game\": {} } } // ours\n",
            );
        }
        m.push_str("--XX--\n");
        m
    };
    let instance = tb.launch_instance("a", None).await.unwrap();
    instance.imds.set_user_data(mime(true).into_bytes());
    let mut d = DaemonProcess::spawn(
        &daemon_bin(),
        &["run", "--keep-hostname"],
        &tb.daemon_env(&instance),
        false,
    )
    .unwrap();
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let doc = status(&socket(&instance, "ec2fleetd")).await;
    assert_eq!(doc["domains"][0]["name"], "game");
    stop_cleanly(&mut d).await;

    let other = tb.launch_instance("a", None).await.unwrap();
    other.imds.set_user_data(mime(false).into_bytes());
    let mut d = DaemonProcess::spawn(
        &daemon_bin(),
        &["run", "--keep-hostname"],
        &tb.daemon_env(&other),
        false,
    )
    .unwrap();
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 78);
    assert!(
        d.log().contains("no part of type application/x-ec2fleetd or named ec2fleetd.jsonc; its parts: text/cloud-config (cloud-config.yaml)"),
        "{}",
        d.log()
    );
}

/// The example fleet manager (`examples/fleet-manager/manager.py`) against
/// three game servers of a group, each with its status over HTTP: with 27
/// free places it names the emptiest server to drain; once that one is
/// drained and empty, it names it to retire.
#[tokio::test]
async fn the_example_fleet_manager_drains_then_retires_the_surplus() {
    let tb = Testbed::start(REGION).await.unwrap();
    tb.create_group(GROUP, "a").await.unwrap();
    let dir = tempdir();
    let token = dir.path().join("token");
    std::fs::write(&token, "fleet-token").unwrap();
    let mut servers = Vec::new();
    for online in [3, 0, 0] {
        let instance = tb.launch_instance("a", None).await.unwrap();
        tb.join_group(GROUP, &instance).await.unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = json_config(
            dir.path(),
            &format!("game-{port}"),
            json!({
                "status": { "listen": format!("127.0.0.1:{port}"), "token-file": token.display().to_string() },
                "domains": { "game": { "players": { "probe": "push", "max": 10 } } } }),
        );
        let mut d = spawn_run_with(&tb, &instance, &config, &["--name", "game"]);
        let sock = socket(&instance, "game");
        push_first(&sock, online).await;
        d.wait_ready(READY_TIMEOUT).await.unwrap();
        servers.push((instance, d, port, sock));
    }
    let env = tb.daemon_env(&servers[0].0);
    let endpoint = env
        .iter()
        .find(|(k, _)| k == "AWS_ENDPOINT_URL")
        .map(|(_, v)| v.clone())
        .unwrap();
    let manage = || {
        let mut args = vec![
            repo_file("examples/fleet-manager/manager.py")
                .display()
                .to_string(),
            "--group".into(),
            GROUP.into(),
            "--region".into(),
            REGION.into(),
            "--endpoint-url".into(),
            endpoint.clone(),
            "--token-file".into(),
            token.display().to_string(),
            "--once".into(),
            "--json".into(),
        ];
        for (instance, _, port, _) in &servers {
            args.push("--url".into());
            args.push(format!(
                "{}=http://127.0.0.1:{port}",
                instance.meta.instance_id
            ));
        }
        let python = ec2fleetd_testbed::moto::server_path().with_file_name("python");
        let env = env.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(python)
                .args(&args)
                .envs(env)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<Value>(&out.stdout).unwrap()
        })
    };
    let round = manage().await.unwrap();
    assert_eq!(round["free"], 27, "{round:#}");
    let emptiest = servers[1..]
        .iter()
        .map(|s| s.0.meta.instance_id.clone())
        .min()
        .unwrap();
    assert_eq!(
        round["actions"],
        json!([{ "action": "drain", "instance": emptiest }]),
        "{round:#}"
    );
    // Drained on the instance, as the manager says: then it is retired.
    let drained = servers
        .iter()
        .find(|s| s.0.meta.instance_id == emptiest)
        .unwrap();
    let (code, doc) = ask(&drained.3, Method::POST, "/v1/drain", None).await;
    assert_eq!(code, 200, "{doc}");
    assert_eq!(doc["ready_to_close"], true);
    let round = manage().await.unwrap();
    assert_eq!(round["free"], 17, "{round:#}");
    assert_eq!(
        round["actions"],
        json!([{ "action": "retire", "instance": emptiest }]),
        "{round:#}"
    );
    for (_, d, _, _) in &mut servers {
        stop_cleanly(d).await;
    }
}

/// With `idle.action` stop, a drained server ends as on idle once its last
/// player leaves, without waiting for `idle.after`.
#[tokio::test]
async fn a_drained_server_ends_once_empty_when_idle_stops_it() {
    let tb = Testbed::start(REGION).await.unwrap();
    let instance = tb.launch_instance("a", None).await.unwrap();
    let dir = tempdir();
    let (idle, stopped) = (dir.path().join("idle"), dir.path().join("stopped"));
    let config = json_config(
        dir.path(),
        "arena",
        json!({
            "idle": { "after": 3600, "action": "stop" },
            "domains": { "arena": {
                "players": { "probe": "push", "max": 8 },
                "exec": [
                    { "on": ["idle"], "lines": [marker(&idle)] },
                    { "on": ["stopping"], "lines": [marker(&stopped)] }
                ] } } }),
    );
    let mut d = spawn_run(&tb, &instance, &config);
    let sock = socket(&instance, "arena");
    push_first(&sock, 2).await;
    d.wait_ready(READY_TIMEOUT).await.unwrap();
    let (code, doc) = ask(&sock, Method::POST, "/v1/drain", None).await;
    assert_eq!((code, &doc["state"]), (200, &json!("draining")), "{doc}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!stopped.exists(), "two players are still on: {}", d.log());
    ask(
        &sock,
        Method::PUT,
        "/v1/players",
        Some(json!({ "online": 0 })),
    )
    .await;
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    let log = d.log();
    assert!(log.contains("idle: drained and no player left"), "{log}");
    assert!(idle.exists() && stopped.exists(), "{log}");
}

/// An idle end with `terminate` on an instance an EC2 Fleet of type
/// `maintain` launched: the fleet's target capacity is lowered first (with
/// no instance terminated for it), then the OS shuts down.
#[tokio::test]
async fn an_idle_end_lowers_the_ec2_fleet_that_launched_it() {
    let tb = Testbed::start(REGION).await.unwrap();
    let (fleet, instance) = tb.launch_in_ec2_fleet("game").await.unwrap();
    let dir = tempdir();
    let shut = dir.path().join("shut-down");
    let config = json_config(
        dir.path(),
        "game",
        json!({
            "idle": { "after": 1, "action": "terminate" },
            "domains": { "game": { "players": { "probe": "push" } } } }),
    );
    let mut d = spawn_with_shutdown(
        &tb,
        &instance,
        &config,
        &format!("/usr/bin/touch {}", shut.display()),
    );
    push_first(&socket(&instance, "game"), 0).await;
    assert_eq!(d.wait_exit(EXIT_TIMEOUT).await.unwrap(), 0, "{}", d.log());
    let log = d.log();
    assert!(
        log.contains(&format!(
            "EC2 Fleet {fleet} lowered to a target capacity of 0"
        )),
        "{log}"
    );
    assert!(shut.exists(), "{log}");
    assert_eq!(tb.fleet_target_capacity(&fleet).await.unwrap(), Some(0));
    let calls = tb.double.as_ref().unwrap().calls().await.unwrap();
    let modify = calls.iter().find(|c| c.action == "ModifyFleet").unwrap();
    assert_eq!(
        modify.params["ExcessCapacityTerminationPolicy"],
        "no-termination"
    );
}

//! The players probes against small servers written here, on 127.0.0.1:
//! Minecraft's Server List Ping (TCP), Valve's A2S_INFO (UDP), the kernel's
//! table of established TCP connections, and a command printing JSON. A
//! probe answers the count it was told, or an error within its timeout:
//! a server that says nothing useful is never taken for an empty one.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ec2fleetd::config::{MacroValues, PlayersSpec, Probe, Template};
use ec2fleetd::players::{probe, Count};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use super::common::tempdir;

/// The timeout of the probes whose servers answer.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The timeout of the probes whose servers are slow or silent.
const SHORT: Duration = Duration::from_millis(500);
/// How much longer than its timeout a probe may take to return.
const SLACK: Duration = Duration::from_secs(1);

fn count(online: u32, max: Option<u32>) -> Count {
    Count { online, max }
}

fn spec(probe: Probe, timeout: Duration) -> PlayersSpec {
    PlayersSpec {
        probe,
        every: PlayersSpec::DEFAULT_EVERY,
        timeout,
        max: None,
    }
}

/// One probe of `spec`, which must return within its timeout.
async fn probed_with(spec: &PlayersSpec, values: &MacroValues) -> Result<Count, String> {
    let start = Instant::now();
    let result = probe(spec, values).await;
    let took = start.elapsed();
    assert!(
        took < spec.timeout + SLACK,
        "the probe took {took:?} with a timeout of {:?}: {result:?}",
        spec.timeout
    );
    result
}

async fn probed(probe: Probe, timeout: Duration) -> Result<Count, String> {
    probed_with(&spec(probe, timeout), &MacroValues::default()).await
}

// Minecraft.

/// 128 bytes or more, so that both of its lengths are two-byte VarInts.
const GOOD_STATUS: &str = r#"{"version":{"name":"1.21","protocol":767},"players":{"max":20,"online":3,"sample":[{"name":"alex","id":"4566e69f-c907-48ee-8d71-d7ba5aa00d20"}]},"description":{"text":"hi"}}"#;

fn varint(mut value: u32) -> Vec<u8> {
    let mut out = Vec::new();
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
    out
}

async fn read_varint(from: &mut (impl AsyncRead + Unpin)) -> u32 {
    let mut value = 0;
    for shift in (0..35).step_by(7) {
        let byte = from.read_u8().await.expect("a VarInt");
        value |= u32::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("a VarInt longer than 5 bytes");
}

/// One packet: its VarInt length, then that many bytes (ID and data).
async fn read_packet(stream: &mut TcpStream) -> Vec<u8> {
    let length = read_varint(stream).await;
    let mut packet = vec![0; length as usize];
    stream
        .read_exact(&mut packet)
        .await
        .expect("the whole packet");
    packet
}

/// The status response: length, packet 0, then `json` as a string.
fn status_packet(json: &str) -> Vec<u8> {
    let mut body = vec![0x00];
    body.extend(varint(json.len() as u32));
    body.extend_from_slice(json.as_bytes());
    let mut packet = varint(body.len() as u32);
    packet.extend(body);
    packet
}

/// Reads the client's handshake and status request, panicking at anything
/// but a status ping of this server.
async fn read_status_request(stream: &mut TcpStream) {
    let handshake = read_packet(stream).await;
    let mut fields = handshake.as_slice();
    assert_eq!(read_varint(&mut fields).await, 0x00, "the handshake's ID");
    let _protocol = read_varint(&mut fields).await;
    let mut host = vec![0; read_varint(&mut fields).await as usize];
    fields.read_exact(&mut host).await.expect("the host");
    assert_eq!(host, b"127.0.0.1");
    let port = fields.read_u16().await.expect("the port");
    assert_eq!(port, stream.local_addr().unwrap().port());
    assert_eq!(read_varint(&mut fields).await, 1, "next state: status");
    assert!(fields.is_empty(), "the handshake has more: {fields:?}");
    assert_eq!(read_packet(stream).await, [0x00], "the status request");
}

/// Serves one connection on an ephemeral port with `serve`.
async fn tcp_server<F, Fut>(serve: F) -> (String, JoinHandle<()>)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        serve(stream).await;
    });
    (address, server)
}

/// A probe of a Minecraft server that checks the client's request, then
/// `answer`s; the server's own checks must have passed.
async fn minecraft<F, Fut>(timeout: Duration, answer: F) -> Result<Count, String>
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (address, server) = tcp_server(move |mut stream| async move {
        read_status_request(&mut stream).await;
        answer(stream).await;
    })
    .await;
    let result = probed(Probe::Minecraft(address), timeout).await;
    tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .expect("the server ends once the client has gone")
        .expect("the server read a status ping");
    result
}

async fn send(mut stream: TcpStream, bytes: Vec<u8>) {
    stream.write_all(&bytes).await.unwrap();
}

/// Sends `bytes` in small pieces with pauses; the first piece is one byte,
/// so that even the length arrives split.
async fn send_slowly(mut stream: TcpStream, bytes: Vec<u8>) {
    stream.set_nodelay(true).unwrap();
    let (first, rest) = bytes.split_at(1);
    for piece in std::iter::once(first).chain(rest.chunks(16)) {
        stream.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Keeps the connection open, saying nothing, until the client closes it.
async fn hold(mut stream: TcpStream) {
    let _ = stream.read_to_end(&mut Vec::new()).await;
}

#[tokio::test]
async fn minecraft_status_gives_online_and_max() {
    let answer = status_packet(GOOD_STATUS);
    let got = minecraft(TIMEOUT, |s| send(s, answer)).await;
    assert_eq!(got, Ok(count(3, Some(20))));
}

#[tokio::test]
async fn minecraft_status_in_small_pieces_is_read_whole() {
    assert!(GOOD_STATUS.len() >= 128, "two-byte lengths");
    let answer = status_packet(GOOD_STATUS);
    let got = minecraft(TIMEOUT, |s| send_slowly(s, answer)).await;
    assert_eq!(got, Ok(count(3, Some(20))));
}

#[tokio::test]
async fn minecraft_status_without_players_is_an_error() {
    let answer =
        status_packet(r#"{"version":{"name":"1.21","protocol":767},"description":{"text":"hi"}}"#);
    let e = minecraft(TIMEOUT, |s| send(s, answer)).await.unwrap_err();
    assert!(e.contains("players.online"), "{e}");
}

#[tokio::test]
async fn minecraft_status_that_is_not_json_is_an_error() {
    let answer = status_packet("Welcome to my server!");
    let e = minecraft(TIMEOUT, |s| send(s, answer)).await.unwrap_err();
    assert!(e.contains("not JSON"), "{e}");
}

#[tokio::test]
async fn minecraft_status_cut_short_is_an_error() {
    let mut answer = status_packet(GOOD_STATUS);
    answer.truncate(answer.len() / 2);
    let e = minecraft(TIMEOUT, |s| send(s, answer)).await.unwrap_err();
    assert!(e.contains("ended early"), "{e}");
}

#[tokio::test]
async fn minecraft_server_that_never_answers_is_no_answer() {
    let e = minecraft(SHORT, hold).await.unwrap_err();
    assert!(e.contains("no answer"), "{e}");
}

#[tokio::test]
async fn minecraft_huge_declared_length_fails_at_once() {
    let huge: u32 = 100 << 20;
    let start = Instant::now();
    let e = minecraft(TIMEOUT, move |mut s| async move {
        s.write_all(&varint(huge)).await.unwrap();
        hold(s).await;
    })
    .await
    .unwrap_err();
    assert!(e.contains(&huge.to_string()), "{e}");
    assert!(start.elapsed() < Duration::from_secs(1), "{e}");
}

#[tokio::test]
async fn minecraft_with_nothing_listening_is_an_error() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let e = probed(Probe::Minecraft(closed.to_string()), TIMEOUT)
        .await
        .unwrap_err();
    assert!(e.contains("connecting"), "{e}");
}

// A2S_INFO.

const A2S_INFO: &[u8] = b"\xFF\xFF\xFF\xFFTSource Engine Query\0";
const CHALLENGE: [u8; 4] = [0x4b, 0xa1, 0x03, 0x7e];

/// S2C_CHALLENGE.
fn challenge() -> Vec<u8> {
    [b"\xFF\xFF\xFF\xFFA".as_slice(), &CHALLENGE].concat()
}

/// The request sent again with the challenge.
fn answered_request() -> Vec<u8> {
    [A2S_INFO, &CHALLENGE].concat()
}

/// A Source engine info answer.
fn info(players: u8, max: u8, bots: u8) -> Vec<u8> {
    // The header, 'I', then protocol 17.
    let mut answer = b"\xFF\xFF\xFF\xFFI\x11".to_vec();
    for text in ["A test server", "de_dust2", "csgo", "Counter-Strike"] {
        answer.extend_from_slice(text.as_bytes());
        answer.push(0);
    }
    answer.extend_from_slice(&730u16.to_le_bytes());
    answer.extend_from_slice(&[players, max, bots, b'd', b'l', 0, 1]);
    answer
}

/// Answers every datagram on an ephemeral port with `answer` (nothing for
/// `None`), and logs what it received.
async fn udp_server<F>(mut answer: F) -> (String, Arc<Mutex<Vec<Vec<u8>>>>)
where
    F: FnMut(&[u8]) -> Option<Vec<u8>> + Send + 'static,
{
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap().to_string();
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&received);
    tokio::spawn(async move {
        let mut buf = [0; 1500];
        loop {
            let (n, from) = socket.recv_from(&mut buf).await.unwrap();
            log.lock().unwrap().push(buf[..n].to_vec());
            if let Some(reply) = answer(&buf[..n]) {
                socket.send_to(&reply, from).await.unwrap();
            }
        }
    });
    (address, received)
}

/// A probe of an A2S server that `answer`s, and the requests it received.
async fn a2s<F>(timeout: Duration, answer: F) -> (Result<Count, String>, Vec<Vec<u8>>)
where
    F: FnMut(&[u8]) -> Option<Vec<u8>> + Send + 'static,
{
    let (address, received) = udp_server(answer).await;
    let result = probed(Probe::A2s(address), timeout).await;
    let requests = received.lock().unwrap().clone();
    (result, requests)
}

#[tokio::test]
async fn a2s_answers_the_challenge_and_leaves_out_bots() {
    let (got, requests) = a2s(TIMEOUT, |request| {
        // Only the request carrying this very challenge is answered.
        Some(if request == answered_request().as_slice() {
            info(5, 10, 1)
        } else {
            challenge()
        })
    })
    .await;
    assert_eq!(got, Ok(count(4, Some(10))));
    assert_eq!(requests, [A2S_INFO.to_vec(), answered_request()]);
}

#[tokio::test]
async fn a2s_without_a_challenge_is_answered_at_once() {
    let (got, requests) = a2s(TIMEOUT, |_| Some(info(7, 16, 0))).await;
    assert_eq!(got, Ok(count(7, Some(16))));
    assert_eq!(requests, [A2S_INFO.to_vec()]);
}

#[tokio::test]
async fn a2s_garbage_is_an_error() {
    let (got, _) = a2s(TIMEOUT, |_| Some(b"hello, world".to_vec())).await;
    let e = got.unwrap_err();
    assert!(e.contains("not an A2S answer"), "{e}");
}

#[tokio::test]
async fn a2s_truncated_info_is_an_error() {
    let mut truncated = info(5, 10, 1);
    // Ends after the app ID, players and max: no bots.
    truncated.truncate(truncated.len() - 5);
    let (got, _) = a2s(TIMEOUT, move |_| Some(truncated.clone())).await;
    let e = got.unwrap_err();
    assert!(e.contains("player counts"), "{e}");
}

#[tokio::test]
async fn a2s_server_that_challenges_forever_is_an_error() {
    let (got, requests) = a2s(TIMEOUT, |_| Some(challenge())).await;
    let e = got.unwrap_err();
    assert!(e.contains("challenge"), "{e}");
    assert_eq!(requests, [A2S_INFO.to_vec(), answered_request()]);
}

#[tokio::test]
async fn a2s_server_that_never_answers_is_no_answer() {
    let (got, requests) = a2s(SHORT, |_| None).await;
    let e = got.unwrap_err();
    assert!(e.contains("no answer"), "{e}");
    // UDP may lose a packet: the request is sent three times in the timeout.
    assert_eq!(requests, vec![A2S_INFO.to_vec(); 3]);
}

#[tokio::test]
async fn a2s_lost_packet_is_sent_again() {
    let mut first = true;
    let (got, requests) = a2s(TIMEOUT, move |_| {
        // The first answer is lost.
        let answer = (!first).then(|| info(2, 8, 0));
        first = false;
        answer
    })
    .await;
    assert_eq!(got.unwrap().online, 2);
    assert_eq!(requests.len(), 2);
}

// TCP connections.

/// The tcp probe's count of `port`, once it is `expected` or after 2 s: the
/// kernel's table follows closed sockets a moment later.
async fn tcp_count(port: u16, expected: u32) -> Count {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let got = probed(Probe::Tcp(port), TIMEOUT).await.unwrap();
        if got.online == expected || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn tcp_counts_established_connections_to_the_port() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut connections = Vec::new();
    for _ in 0..3 {
        let client = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (served, _) = listener.accept().await.unwrap();
        connections.push((client, served));
    }
    // The clients' ends, on ephemeral ports, and the listener are not
    // counted.
    assert_eq!(tcp_count(port, 3).await, count(3, None));
    connections.truncate(1);
    assert_eq!(tcp_count(port, 1).await, count(1, None));
    drop(connections);
}

#[tokio::test]
async fn tcp_port_without_a_listener_counts_none() {
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert_eq!(tcp_count(port, 0).await, count(0, None));
}

// Commands.

/// `/bin/sh -c script sh args…`: the script is literal, the arguments
/// are templates.
fn sh_with(script: &str, args: &[&str]) -> Probe {
    let shell = ["/bin/sh", "-c", script, "sh"].map(Template::literal);
    let args = args.iter().map(|a| Template::parse(a).unwrap());
    Probe::Command(shell.into_iter().chain(args).collect())
}

fn sh(script: &str) -> Probe {
    sh_with(script, &[])
}

#[tokio::test]
async fn command_prints_the_counts() {
    let got = probed(sh(r#"echo '{"online": 2, "max": 8}'"#), TIMEOUT).await;
    assert_eq!(got, Ok(count(2, Some(8))));
}

#[tokio::test]
async fn command_argv_macros_are_rendered() {
    let mut values = MacroValues::default();
    values.set("instance_index", "6");
    let printing = sh_with(r#"printf '{"online": %s}' "$1""#, &["{instance_index}"]);
    let got = probed_with(&spec(printing, TIMEOUT), &values).await;
    assert_eq!(got, Ok(count(6, None)));
}

#[tokio::test]
async fn command_counts_are_capped_and_filled_in_by_max() {
    for (script, expected) in [
        (r#"echo '{"online": 2, "max": 8}'"#, count(2, Some(5))),
        (r#"echo '{"online": 2, "max": 4}'"#, count(2, Some(4))),
        (r#"echo '{"online": 2}'"#, count(2, Some(5))),
    ] {
        let capped = PlayersSpec {
            max: Some(5),
            ..spec(sh(script), TIMEOUT)
        };
        let got = probed_with(&capped, &MacroValues::default()).await;
        assert_eq!(got, Ok(expected), "{script}");
    }
}

#[tokio::test]
async fn command_printing_no_json_is_an_error() {
    let e = probed(sh("echo three"), TIMEOUT).await.unwrap_err();
    assert!(e.contains("JSON"), "{e}");
}

#[tokio::test]
async fn command_failing_is_an_error_with_its_message() {
    let script = "echo 'the world is still loading' >&2; exit 3";
    let e = probed(sh(script), TIMEOUT).await.unwrap_err();
    assert!(e.contains("the world is still loading"), "{e}");
    assert!(e.contains("exit status: 3"), "{e}");
}

/// Whether process `pid` is gone, or dead and not yet reaped.
fn dead(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

#[tokio::test]
async fn command_that_hangs_is_killed_at_the_timeout() {
    let dir = tempdir();
    let pid_file = dir.path().join("pid");
    let script = format!("echo $$ > '{}'; exec sleep 10", pid_file.display());
    let e = probed(sh(&script), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(e.contains("no answer"), "{e}");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let pid = pid.trim();
    let deadline = Instant::now() + Duration::from_secs(2);
    while !dead(pid) {
        assert!(Instant::now() < deadline, "the command {pid} still runs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn command_that_does_not_exist_is_an_error() {
    let missing = Probe::Command(vec![Template::literal("/nonexistent")]);
    let e = probed(missing, TIMEOUT).await.unwrap_err();
    assert!(e.contains("/nonexistent"), "{e}");
}

#[tokio::test]
async fn push_is_not_probed() {
    let e = probed(Probe::Push, TIMEOUT).await.unwrap_err();
    assert!(e.contains("pushed"), "{e}");
}

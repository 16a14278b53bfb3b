//! Counting a game server's players (`players` in the config): Minecraft's
//! Server List Ping, Valve's A2S_INFO, established TCP connections, or a
//! command. Each probe answers a [`Count`] or says why it could not: an
//! unknown count is never taken for an empty server.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{MacroValues, PlayersSpec, Probe, Template};

/// The largest Minecraft status response read (its JSON carries the
/// server's icon, a few KiB of base64).
const MINECRAFT_MAX_RESPONSE: usize = 1 << 20;
/// The most a command probe may print.
const COMMAND_MAX_OUTPUT: usize = 64 * 1024;

/// Players online, and the server's capacity when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub online: u32,
    pub max: Option<u32>,
}

impl Count {
    /// With the config's `max`: the capacity when the probe told none, and
    /// a cap on the one it told.
    pub fn capped(self, max: Option<u32>) -> Count {
        let max = match (self.max, max) {
            (Some(told), Some(cap)) => Some(told.min(cap)),
            (told, cap) => told.or(cap),
        };
        Count { max, ..self }
    }

    /// Free places, when the capacity is known.
    pub fn free(self) -> Option<u32> {
        self.max.map(|m| m.saturating_sub(self.online))
    }
}

/// One probe of `spec`, within its timeout; `values` render a command's
/// argv.
pub async fn probe(spec: &PlayersSpec, values: &MacroValues) -> Result<Count, String> {
    let timeout = spec.timeout;
    let probed = async {
        match &spec.probe {
            Probe::Minecraft(address) => minecraft(address).await,
            Probe::A2s(address) => a2s(address, timeout).await,
            Probe::Tcp(port) => tcp(*port).await,
            Probe::Command(argv) => command(argv, values).await,
            Probe::Push => Err("the counts are pushed, not probed".to_string()),
        }
    };
    match tokio::time::timeout(timeout, probed).await {
        Ok(result) => result.map(|c| c.capped(spec.max)),
        Err(_) => Err(format!("no answer within {:.1}s", timeout.as_secs_f64())),
    }
}

// Minecraft: the Server List Ping of Java Edition. A handshake (packet 0:
// protocol version, server address, port, next state 1 = status), a status
// request (packet 0, empty), and the response (packet 0: a JSON string with
// `players.online` and `players.max`). Packets are a VarInt length, a
// VarInt packet ID, then the data; strings are a VarInt length and UTF-8.

fn put_varint(buf: &mut Vec<u8>, value: i32) {
    let mut v = value as u32;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf.push(byte);
            return;
        }
        buf.push(byte | 0x80);
    }
}

async fn read_varint(stream: &mut (impl AsyncReadExt + Unpin)) -> Result<i32, String> {
    let mut value: u32 = 0;
    for i in 0..5 {
        let byte = stream
            .read_u8()
            .await
            .map_err(|e| format!("the answer ended early: {e}"))?;
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value as i32);
        }
    }
    Err("a VarInt longer than 5 bytes".to_string())
}

fn varint_from(bytes: &[u8]) -> Result<(i32, usize), String> {
    let mut value: u32 = 0;
    for (i, byte) in bytes.iter().take(5).enumerate() {
        value |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value as i32, i + 1));
        }
    }
    Err("a truncated or over-long VarInt".to_string())
}

fn minecraft_request(host: &str, port: u16) -> Vec<u8> {
    let mut handshake = Vec::new();
    put_varint(&mut handshake, 0x00);
    // Any protocol version is answered; -1 is the convention for a ping.
    put_varint(&mut handshake, -1);
    put_varint(&mut handshake, host.len() as i32);
    handshake.extend_from_slice(host.as_bytes());
    handshake.extend_from_slice(&port.to_be_bytes());
    put_varint(&mut handshake, 1);
    let mut out = Vec::new();
    put_varint(&mut out, handshake.len() as i32);
    out.extend_from_slice(&handshake);
    // The status request: length 1, packet 0.
    out.extend_from_slice(&[0x01, 0x00]);
    out
}

async fn minecraft(address: &str) -> Result<Count, String> {
    let (host, port) = split_address(address)?;
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| format!("connecting to {address}: {e}"))?;
    stream
        .write_all(&minecraft_request(host, port))
        .await
        .map_err(|e| format!("sending the status request: {e}"))?;
    let length = read_varint(&mut stream).await?;
    let length = usize::try_from(length)
        .ok()
        .filter(|l| (1..=MINECRAFT_MAX_RESPONSE).contains(l))
        .ok_or_else(|| format!("a status response of {length} bytes"))?;
    let mut packet = vec![0; length];
    stream
        .read_exact(&mut packet)
        .await
        .map_err(|e| format!("the status response ended early: {e}"))?;
    minecraft_status(&packet)
}

/// The status response packet (after its length): ID 0, then the JSON.
fn minecraft_status(packet: &[u8]) -> Result<Count, String> {
    let (id, used) = varint_from(packet)?;
    if id != 0 {
        return Err(format!("packet {id:#x} instead of the status response"));
    }
    let rest = &packet[used..];
    let (len, used) = varint_from(rest)?;
    let json = usize::try_from(len)
        .ok()
        .and_then(|len| rest.get(used..used + len))
        .ok_or("the status JSON is cut short")?;
    let status: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("the status is not JSON: {e}"))?;
    let number = |key: &str| {
        status["players"][key]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
    };
    let online = number("online").ok_or("the status has no players.online")?;
    Ok(Count {
        online,
        max: number("max"),
    })
}

// A2S_INFO: a UDP packet of -1 (four 0xFF), 'T' and "Source Engine
// Query\0". The server may answer S2C_CHALLENGE ('A' and four bytes): the
// request is sent again with those bytes appended. The answer is 'I'
// (Source: protocol, name, map, folder, game, app ID, players, max, bots…)
// or 'm' (GoldSource: address, name, map, folder, game, players, max…).

const A2S_INFO: &[u8] = b"\xFF\xFF\xFF\xFFTSource Engine Query\0";

async fn a2s(address: &str, timeout: Duration) -> Result<Count, String> {
    let target = tokio::net::lookup_host(address)
        .await
        .map_err(|e| format!("resolving {address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address} resolves to no address"))?;
    let local = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = tokio::net::UdpSocket::bind(local)
        .await
        .map_err(|e| format!("opening a UDP socket: {e}"))?;
    socket
        .connect(target)
        .await
        .map_err(|e| format!("connecting to {address}: {e}"))?;
    let mut request = A2S_INFO.to_vec();
    let mut buf = vec![0; 1500];
    // UDP may lose a packet: three tries within the timeout.
    let wait = timeout / 3;
    let mut challenges = 0;
    let mut tries = 0;
    loop {
        socket
            .send(&request)
            .await
            .map_err(|e| format!("sending A2S_INFO: {e}"))?;
        let n = match tokio::time::timeout(wait, socket.recv(&mut buf)).await {
            Ok(r) => r.map_err(|e| format!("receiving the answer: {e}"))?,
            Err(_) => {
                tries += 1;
                if tries == 3 {
                    return Err("no answer".to_string());
                }
                continue;
            }
        };
        match a2s_answer(&buf[..n])? {
            // At most one challenge: a server that keeps asking is not
            // answering.
            A2sAnswer::Challenge(_) if challenges == 1 => {
                return Err("the server answered a second challenge".to_string())
            }
            A2sAnswer::Challenge(c) => {
                challenges += 1;
                request = A2S_INFO.to_vec();
                request.extend_from_slice(&c);
            }
            A2sAnswer::Info(count) => return Ok(count),
        }
    }
}

enum A2sAnswer {
    Challenge([u8; 4]),
    Info(Count),
}

fn a2s_answer(packet: &[u8]) -> Result<A2sAnswer, String> {
    let body = match packet.get(..4) {
        Some([0xFF, 0xFF, 0xFF, 0xFF]) => &packet[4..],
        Some([0xFE, 0xFF, 0xFF, 0xFF]) => {
            return Err("a split answer: not an A2S_INFO reply".to_string())
        }
        _ => return Err("not an A2S answer (no -1 header)".to_string()),
    };
    let (&kind, mut rest) = body.split_first().ok_or("an empty A2S answer")?;
    // Skips a NUL-terminated string.
    fn cstring(rest: &mut &[u8]) -> Result<(), String> {
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or("a string without its end")?;
        *rest = &rest[end + 1..];
        Ok(())
    }
    match kind {
        b'A' => {
            let c: [u8; 4] = rest
                .get(..4)
                .and_then(|c| c.try_into().ok())
                .ok_or("a challenge shorter than 4 bytes")?;
            Ok(A2sAnswer::Challenge(c))
        }
        b'I' => {
            // The protocol version, then the strings.
            rest = rest.get(1..).ok_or("the answer ends after its type")?;
            for _ in 0..4 {
                cstring(&mut rest)?; // name, map, folder, game
            }
            // The app ID (a short), then players, max and bots.
            let [_, _, players, max, bots, ..] = rest else {
                return Err("the answer ends before the player counts".to_string());
            };
            Ok(A2sAnswer::Info(Count {
                // Bots are counted in `players`; they are not players.
                online: u32::from(players.saturating_sub(*bots)),
                max: Some(u32::from(*max)),
            }))
        }
        b'm' => {
            for _ in 0..5 {
                cstring(&mut rest)?; // address, name, map, folder, game
            }
            let [players, max, ..] = rest else {
                return Err("the answer ends before the player counts".to_string());
            };
            Ok(A2sAnswer::Info(Count {
                online: u32::from(*players),
                max: Some(u32::from(*max)),
            }))
        }
        other => Err(format!("answer type {other:#x}, not A2S_INFO's")),
    }
}

// TCP: the connections in ESTABLISHED state (01) whose local port is the
// game's, from the kernel's tables (/proc/net/tcp and tcp6: `sl`,
// `local_address` as HEXIP:HEXPORT, `rem_address`, `st`, …).

async fn tcp(port: u16) -> Result<Count, String> {
    let mut online = 0;
    let mut read_any = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match tokio::fs::read_to_string(table).await {
            Ok(text) => {
                read_any = true;
                online += established_on(&text, port);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("reading {table}: {e}")),
        }
    }
    if !read_any {
        return Err("neither /proc/net/tcp nor /proc/net/tcp6 exists".to_string());
    }
    Ok(Count { online, max: None })
}

/// The established connections to local `port` in one kernel table.
fn established_on(table: &str, port: u16) -> u32 {
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let (Some(local), Some(_remote), Some(state)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return false;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            state == "01" && local_port == Some(port)
        })
        .count() as u32
}

// Command: argv run without a shell (as the hooks are), printing one JSON
// object `{"online": N, "max": M}` (`max` optional).

async fn command(argv: &[Template], values: &MacroValues) -> Result<Count, String> {
    let argv: Vec<String> = argv.iter().map(|t| t.render(values)).collect();
    if argv.is_empty() {
        return Err("the command probe has no argv".to_string());
    }
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", argv[0]))?;
    let (mut stdout, mut stderr) = (
        child.stdout.take().expect("piped"),
        child.stderr.take().expect("piped"),
    );
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut stdout = (&mut stdout).take(COMMAND_MAX_OUTPUT as u64 + 1);
    let mut stderr = (&mut stderr).take(COMMAND_MAX_OUTPUT as u64);
    let _ = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
    if out.len() > COMMAND_MAX_OUTPUT {
        // It would block on a full pipe: it has said too much already.
        let _ = child.start_kill();
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("waiting for {}: {e}", argv[0]))?;
    if !status.success() {
        let said = String::from_utf8_lossy(&err);
        let said = said.trim();
        return Err(format!(
            "{} {status}{}",
            argv[0],
            if said.is_empty() {
                String::new()
            } else {
                format!(": {}", said.lines().last().unwrap_or_default())
            }
        ));
    }
    if out.len() > COMMAND_MAX_OUTPUT {
        return Err(format!(
            "{} printed more than {COMMAND_MAX_OUTPUT} bytes",
            argv[0]
        ));
    }
    command_output(&out).map_err(|why| format!("{}: {why}", argv[0]))
}

fn command_output(out: &[u8]) -> Result<Count, String> {
    let value: serde_json::Value = serde_json::from_slice(out)
        .map_err(|e| format!("did not print JSON such as {{\"online\": 3, \"max\": 10}}: {e}"))?;
    let number = |key: &str| -> Result<Option<u32>, String> {
        match &value[key] {
            serde_json::Value::Null => Ok(None),
            v => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| format!("{key:?} is {v}, not a whole number")),
        }
    };
    let online = number("online")?.ok_or("printed no \"online\"")?;
    Ok(Count {
        online,
        max: number("max")?,
    })
}

/// `host:port` into its parts (the config checked the form).
fn split_address(address: &str) -> Result<(&str, u16), String> {
    address
        .rsplit_once(':')
        .and_then(|(h, p)| {
            Some((
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse().ok()?,
            ))
        })
        .ok_or_else(|| format!("{address:?} is not host:port"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [0, 1, 127, 128, 255, 25565, 2_097_151, i32::MAX, -1] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert!(buf.len() <= 5);
            assert_eq!(varint_from(&buf), Ok((v, buf.len())), "{v}");
        }
        // -1 is five bytes, as the protocol spells it.
        let mut buf = Vec::new();
        put_varint(&mut buf, -1);
        assert_eq!(buf, [0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(varint_from(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]).is_err());
        assert!(varint_from(&[0x80]).is_err());
    }

    #[test]
    fn the_handshake_asks_for_the_status() {
        let r = minecraft_request("localhost", 25565);
        // length, packet 0, protocol -1 (5 bytes), "localhost", port, state 1
        assert_eq!(r[0] as usize, r.len() - 3, "{r:?}");
        assert_eq!(&r[1..7], &[0x00, 0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(r[7], 9);
        assert_eq!(&r[8..17], b"localhost");
        assert_eq!(&r[17..19], &25565u16.to_be_bytes());
        assert_eq!(r[19], 1, "next state: status");
        assert_eq!(&r[20..], &[0x01, 0x00], "then the status request");
    }

    fn status_packet(json: &str) -> Vec<u8> {
        let mut p = vec![0x00];
        put_varint(&mut p, json.len() as i32);
        p.extend_from_slice(json.as_bytes());
        p
    }

    #[test]
    fn the_minecraft_status_gives_the_counts() {
        let p = status_packet(r#"{"version":{"name":"1.21"},"players":{"max":20,"online":3}}"#);
        assert_eq!(
            minecraft_status(&p),
            Ok(Count {
                online: 3,
                max: Some(20)
            })
        );
        assert!(minecraft_status(&status_packet(r#"{"players":{}}"#)).is_err());
        assert!(minecraft_status(&status_packet("not json")).is_err());
        let mut cut = status_packet(r#"{"players":{"online":1}}"#);
        cut.truncate(cut.len() - 3);
        assert!(minecraft_status(&cut).unwrap_err().contains("cut short"));
        let mut other = status_packet("{}");
        other[0] = 0x01;
        assert!(minecraft_status(&other).unwrap_err().contains("packet 0x1"));
    }

    fn info(players: u8, max: u8, bots: u8) -> Vec<u8> {
        let mut p = b"\xFF\xFF\xFF\xFFI\x11name\0map\0folder\0game\0".to_vec();
        p.extend_from_slice(&[0x10, 0x00, players, max, bots, b'd', b'l', 0, 1]);
        p
    }

    #[test]
    fn a2s_answers_are_read() {
        match a2s_answer(&info(5, 16, 2)) {
            Ok(A2sAnswer::Info(c)) => assert_eq!(
                c,
                Count {
                    online: 3,
                    max: Some(16)
                }
            ),
            _ => panic!("an info answer"),
        }
        match a2s_answer(b"\xFF\xFF\xFF\xFFA\x01\x02\x03\x04") {
            Ok(A2sAnswer::Challenge(c)) => assert_eq!(c, [1, 2, 3, 4]),
            _ => panic!("a challenge"),
        }
        let gold = b"\xFF\xFF\xFF\xFFm1.2.3.4:27015\0name\0map\0folder\0game\0\x07\x20\x30";
        match a2s_answer(gold) {
            Ok(A2sAnswer::Info(c)) => assert_eq!(c.online, 7),
            _ => panic!("a GoldSource answer"),
        }
        assert!(a2s_answer(b"\xFF\xFF\xFF\xFFA\x01").is_err());
        assert!(a2s_answer(b"\xFE\xFF\xFF\xFF\x00").is_err());
        assert!(a2s_answer(b"garbage").is_err());
        assert!(a2s_answer(&info(1, 2, 0)[..20]).is_err());
        assert!(a2s_answer(b"\xFF\xFF\xFF\xFFI\x11name").is_err());
    }

    #[test]
    fn established_connections_are_counted_by_local_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:63DD 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:63DD 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0100007F:D431 0100007F:63DD 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 0100007F:63DD 0100007F:D433 06 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1
   4: 0100007F:63DD 0100007F:D435 01 00000000:00000000 00:00000000 00000000     0        0 5 1 0 20 4 30 10 -1";
        // 0x63DD = 25565: two established, one listening, one TIME_WAIT,
        // and the client's end of a connection.
        assert_eq!(established_on(table, 25565), 2);
        assert_eq!(established_on(table, 80), 0);
    }

    #[test]
    fn command_output_is_json_counts() {
        assert_eq!(
            command_output(br#"{"online": 2, "max": 8}"#),
            Ok(Count {
                online: 2,
                max: Some(8)
            })
        );
        assert_eq!(
            command_output(b"{\"online\": 0}\n"),
            Ok(Count {
                online: 0,
                max: None
            })
        );
        assert!(command_output(b"").is_err());
        assert!(command_output(br#"{"online": -1}"#).is_err());
        assert!(command_output(br#"{"max": 3}"#).is_err());
        assert!(command_output(b"3 players").is_err());
    }

    #[test]
    fn the_config_max_fills_in_and_caps() {
        let c = Count {
            online: 4,
            max: None,
        };
        assert_eq!(c.capped(Some(10)).max, Some(10));
        assert_eq!(c.capped(None).free(), None);
        let told = Count {
            online: 4,
            max: Some(20),
        };
        assert_eq!(told.capped(Some(10)).free(), Some(6));
        assert_eq!(
            Count {
                online: 12,
                max: Some(10)
            }
            .free(),
            Some(0)
        );
    }
}

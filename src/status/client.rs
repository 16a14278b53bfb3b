//! `ec2fleetd status`, `drain` and `undrain`: one request on a daemon's
//! status socket.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

/// The sockets of the daemons running here, by name.
pub fn sockets(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(anyhow!("reading {}: {e}", dir.display())),
    };
    let mut found: Vec<(String, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .filter_map(|p| Some((p.file_stem()?.to_string_lossy().to_string(), p)))
        .collect();
    found.sort();
    Ok(found)
}

/// One request; the status code and the JSON answered.
pub async fn request(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(u16, serde_json::Value)> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("starting HTTP on the socket")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let body = body.map_or_else(Vec::new, |b| b.to_string().into_bytes());
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid request");
    let response = sender
        .send_request(req)
        .await
        .with_context(|| format!("asking {}", socket.display()))?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .context("reading the answer")?
        .to_bytes();
    let value = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "the answer is not JSON: {}",
            String::from_utf8_lossy(&bytes)
        )
    })?;
    Ok((status, value))
}

/// A status document for people: a few lines per daemon.
pub fn human(doc: &serde_json::Value) -> String {
    use std::fmt::Write;
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => "?".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let players = |p: &serde_json::Value| {
        format!(
            "{}/{} players ({} free)",
            text(&p["online"]),
            text(&p["max"]),
            text(&p["free"])
        )
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "{}: {} since {}",
        text(&doc["name"]),
        text(&doc["state"]),
        text(&doc["since"])
    );
    if doc["ready_to_close"] == true {
        out.push_str(", ready to close");
    }
    let _ = writeln!(
        out,
        " (instance {}, {})",
        text(&doc["instance"]["id"]),
        text(&doc["instance"]["availability_zone"])
    );
    if doc["players"]["online"] != serde_json::Value::Null
        || doc["players"]["max"] != serde_json::Value::Null
    {
        let _ = writeln!(out, "  {}", players(&doc["players"]));
    }
    if !doc["idle_since"].is_null() {
        let _ = writeln!(out, "  idle since {}", text(&doc["idle_since"]));
    }
    if !doc["notice"].is_null() {
        let _ = writeln!(
            out,
            "  notice: {} (deadline {})",
            text(&doc["notice"]["kind"]),
            text(&doc["notice"]["deadline"])
        );
    }
    for d in doc["domains"].as_array().into_iter().flatten() {
        let _ = write!(out, "  [{}] {}", text(&d["name"]), text(&d["phase"]));
        if !d["players"].is_null() {
            let p = &d["players"];
            let _ = write!(out, ", {} by {}", players(p), text(&p["probe"]));
            if !p["error"].is_null() {
                let _ = write!(out, ": {}", text(&p["error"]));
            }
        }
        out.push('\n');
        for v in d["volumes"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "      volume {} at {} ({})",
                text(&v["id"]),
                text(&v["device"]),
                text(&v["block_device"])
            );
        }
        for r in d["records"].as_array().into_iter().flatten() {
            let values: Vec<String> = r["values"]
                .as_array()
                .into_iter()
                .flatten()
                .map(text)
                .collect();
            let _ = writeln!(
                out,
                "      record {} {} {}",
                text(&r["name"]),
                text(&r["type"]),
                values.join(", ")
            );
        }
        if let Some(m) = d["since_boot"].as_object().filter(|m| !m.is_empty()) {
            let marks: Vec<String> = m.iter().map(|(k, v)| format!("{k} {}s", text(v))).collect();
            let _ = writeln!(out, "      since boot: {}", marks.join(", "));
        }
    }
    out
}

//! An IMDSv2 emulator: session tokens (PUT, TTL, 401 on a bad or expired
//! token), the metadata paths ec2fleetd reads, user data, and a control
//! interface to raise a spot interruption notice.
//!
//! Control interface (plain HTTP, no token):
//! - `POST /control/spot-interruption` with optional JSON
//!   `{"action": "terminate", "in_seconds": 120, "visible_after_seconds": 0}`
//! - `DELETE /control/spot-interruption`
//! - `PUT /control/user-data` with the raw user data as the body
//! - `GET /control/requests`: how many metadata requests were served
//! - `GET /control/requests/paths`: the same per path, as a JSON object
//!   (`{"meta-data/spot/instance-action": 12, …}`)
//! - `POST /control/rebalance`: a rebalance recommendation, noticed now
//! - `PUT /control/target-lifecycle-state` with `InService` or `Terminated`
//!   as the body (Auto Scaling); or [`ImdsEmulator::follow_group`]: the
//!   state follows the instance's Auto Scaling group in the AWS double
//! - `PUT /control/maintenance` with the JSON list of scheduled events
//! - `POST /control/faults` with JSON `{"latency_ms": 0, "fail_next": 0}`:
//!   delay every answer, or answer the next N requests (token requests too)
//!   with 500

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

/// The instance the emulator describes (also the `imds` command's options).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
pub struct InstanceMeta {
    #[arg(long, default_value = "i-0123456789abcdef0")]
    pub instance_id: String,
    #[arg(long, default_value = "t3.micro")]
    pub instance_type: String,
    #[arg(long, default_value = "0")]
    pub launch_index: u32,
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    #[arg(long, default_value = "us-east-1a")]
    pub zone: String,
    #[arg(long, default_value = "02:00:00:00:00:01")]
    pub mac: String,
    #[arg(long, default_value = "198.51.100.7")]
    pub public_ipv4: Option<String>,
    /// More public IPv4 addresses of the primary interface (`public-ipv4s`).
    #[arg(long = "secondary-public-ipv4")]
    #[serde(default)]
    pub secondary_public_ipv4: Vec<String>,
    #[arg(long)]
    pub public_ipv6: Option<String>,
    #[arg(long, default_value = "10.0.0.7")]
    #[serde(default)]
    pub private_ipv4: Option<String>,
}

/// A spot interruption notice as IMDS shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Notice {
    pub action: String,
    pub time: String,
}

struct Emu {
    meta: InstanceMeta,
    user_data: Option<Vec<u8>>,
    notice: Option<(Notice, Instant)>,
    rebalance: Option<String>,
    lifecycle_state: Option<String>,
    /// The AWS double's URL: the target lifecycle state is read from the
    /// instance's group there.
    group_source: Option<String>,
    maintenance: String,
    tokens: HashMap<String, Instant>,
    /// Grant at most this TTL, whatever is asked (to exercise refreshes).
    token_ttl_cap: Option<u64>,
    latency: Duration,
    /// Answer this many of the next requests with 500.
    fail_next: u32,
    issued: u64,
    unauthorized: u64,
    requests: u64,
    /// Metadata requests served, per path under `/latest/`.
    by_path: HashMap<String, u64>,
}

/// A running emulator; stops when dropped.
pub struct ImdsEmulator {
    addr: SocketAddr,
    state: Arc<Mutex<Emu>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ImdsEmulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Shared = Arc<Mutex<Emu>>;

impl ImdsEmulator {
    /// Serves `meta` on `127.0.0.1:port` (0 picks a free port).
    pub async fn start(meta: InstanceMeta, port: u16) -> std::io::Result<ImdsEmulator> {
        let state = Arc::new(Mutex::new(Emu {
            meta,
            user_data: None,
            notice: None,
            rebalance: None,
            lifecycle_state: None,
            group_source: None,
            maintenance: "[]".into(),
            tokens: HashMap::new(),
            token_ttl_cap: None,
            latency: Duration::ZERO,
            fail_next: 0,
            issued: 0,
            unauthorized: 0,
            requests: 0,
            by_path: HashMap::new(),
        }));
        let app = Router::new()
            .route("/latest/api/token", put(token))
            .route("/latest/{*path}", get(metadata))
            .route("/control/spot-interruption", post(raise).delete(clear))
            .route("/control/user-data", put(set_user_data))
            .route("/control/requests", get(requests))
            .route("/control/requests/paths", get(requests_by_path))
            .route("/control/rebalance", post(rebalance))
            .route("/control/target-lifecycle-state", put(lifecycle_state))
            .route("/control/maintenance", put(maintenance))
            .route("/control/faults", post(faults))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(ImdsEmulator { addr, state, task })
    }

    /// The base URL for `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_user_data(&self, data: Vec<u8>) {
        self.state.lock().unwrap().user_data = Some(data);
    }

    /// Makes a notice visible now, for an action `in_seconds` from now.
    pub fn raise_spot_interruption(&self, action: &str, in_seconds: u64) -> Notice {
        let notice = Notice {
            action: action.to_string(),
            time: rfc3339(SystemTime::now() + Duration::from_secs(in_seconds)),
        };
        self.state.lock().unwrap().notice = Some((notice.clone(), Instant::now()));
        notice
    }

    /// Metadata requests served (any answer).
    pub fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
    }

    /// Metadata requests served (any answer) for `path` under `/latest/`,
    /// e.g. `meta-data/spot/instance-action`.
    pub fn requests_for(&self, path: &str) -> u64 {
        let emu = self.state.lock().unwrap();
        emu.by_path.get(path).copied().unwrap_or(0)
    }

    /// A rebalance recommendation, noticed now.
    pub fn raise_rebalance(&self) -> String {
        let time = rfc3339(SystemTime::now());
        self.state.lock().unwrap().rebalance = Some(time.clone());
        time
    }

    /// `autoscaling/target-lifecycle-state` follows the instance's
    /// lifecycle state in its group on the AWS double at `double_url`:
    /// `InService` while it is pending or in service, `Terminated` from the
    /// moment it is terminating (`Terminating:Wait` too), as EC2 shows it.
    pub fn follow_group(&self, double_url: &str) {
        self.state.lock().unwrap().group_source = Some(double_url.to_string());
    }

    /// Auto Scaling's target lifecycle state (`InService`, `Terminated`).
    pub fn set_target_lifecycle_state(&self, state: &str) {
        self.state.lock().unwrap().lifecycle_state = Some(state.to_string());
    }

    /// The scheduled maintenance events, as the JSON list IMDS serves.
    pub fn set_maintenance(&self, events: serde_json::Value) {
        self.state.lock().unwrap().maintenance = events.to_string();
    }

    /// Tokens handed out so far.
    pub fn tokens_issued(&self) -> u64 {
        self.state.lock().unwrap().issued
    }

    /// Requests refused with 401.
    pub fn unauthorized(&self) -> u64 {
        self.state.lock().unwrap().unauthorized
    }

    /// Every token stops working now, as after an IMDS restart.
    pub fn revoke_tokens(&self) {
        self.state.lock().unwrap().tokens.clear();
    }

    /// Delays every answer by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.state.lock().unwrap().latency = latency;
    }

    /// Answers the next `n` requests with 500 Internal Server Error.
    pub fn fail_next(&self, n: u32) {
        self.state.lock().unwrap().fail_next = n;
    }

    /// Grants tokens of at most `seconds`, whatever the client asks for.
    pub fn cap_token_ttl(&self, seconds: u64) {
        self.state.lock().unwrap().token_ttl_cap = Some(seconds);
    }
}

/// The target lifecycle state of `instance_id` from its Auto Scaling
/// lifecycle state on the AWS double; `None` when it is in no group (or the
/// double does not answer).
async fn group_state(double_url: &str, instance_id: &str) -> Option<String> {
    let url = format!("{double_url}/_double/autoscaling/instances/{instance_id}");
    let text = reqwest::get(url).await.ok()?.text().await.ok()?;
    let seen: serde_json::Value = serde_json::from_str(&text).ok()?;
    let state = seen["state"].as_str()?;
    Some(target_of(state).to_string())
}

/// What `autoscaling/target-lifecycle-state` shows for a lifecycle state:
/// where the instance is headed.
pub fn target_of(state: &str) -> &str {
    match state {
        "Pending" | "Pending:Wait" | "Pending:Proceed" | "InService" => "InService",
        "Terminating" | "Terminating:Wait" | "Terminating:Proceed" | "Terminated" => "Terminated",
        "Detaching" | "Detached" => "Detached",
        "EnteringStandby" | "Standby" => "Standby",
        warmed => warmed,
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Applies the latency and failure knobs; `Some` is the failure to answer.
async fn faults_for(s: &Shared) -> Option<Response> {
    let (latency, fail) = {
        let mut emu = s.lock().unwrap();
        let fail = emu.fail_next > 0;
        if fail {
            emu.fail_next -= 1;
        }
        (emu.latency, fail)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    fail.then(|| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[derive(Deserialize)]
struct FaultsRequest {
    latency_ms: Option<u64>,
    fail_next: Option<u32>,
}

async fn faults(State(s): State<Shared>, Json(req): Json<FaultsRequest>) -> StatusCode {
    let mut emu = s.lock().unwrap();
    if let Some(ms) = req.latency_ms {
        emu.latency = Duration::from_millis(ms);
    }
    if let Some(n) = req.fail_next {
        emu.fail_next = n;
    }
    StatusCode::NO_CONTENT
}

async fn token(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(failure) = faults_for(&s).await {
        return failure;
    }
    let ttl = headers
        .get("x-aws-ec2-metadata-token-ttl-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(ttl) = ttl.filter(|t| (1..=21_600).contains(t)) else {
        return (
            StatusCode::BAD_REQUEST,
            "missing or invalid X-aws-ec2-metadata-token-ttl-seconds",
        )
            .into_response();
    };
    let mut emu = s.lock().unwrap();
    let ttl = emu.token_ttl_cap.map_or(ttl, |cap| ttl.min(cap));
    emu.issued += 1;
    let value = format!("emu-token-{}-{}", emu.issued, std::process::id());
    emu.tokens
        .insert(value.clone(), Instant::now() + Duration::from_secs(ttl));
    (
        [("x-aws-ec2-metadata-token-ttl-seconds", ttl.to_string())],
        value,
    )
        .into_response()
}

async fn metadata(
    State(s): State<Shared>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    if path == "meta-data/autoscaling/target-lifecycle-state" {
        let source = {
            let emu = s.lock().unwrap();
            emu.group_source
                .clone()
                .map(|url| (url, emu.meta.instance_id.clone()))
        };
        if let Some((url, id)) = source {
            let state = group_state(&url, &id).await;
            s.lock().unwrap().lifecycle_state = state;
        }
    }
    if let Some(failure) = faults_for(&s).await {
        let mut emu = s.lock().unwrap();
        emu.requests += 1;
        *emu.by_path.entry(path).or_default() += 1;
        return failure;
    }
    let mut emu = s.lock().unwrap();
    emu.requests += 1;
    *emu.by_path.entry(path.clone()).or_default() += 1;
    let token = headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok());
    let valid = token
        .and_then(|t| emu.tokens.get(t))
        .is_some_and(|expiry| Instant::now() < *expiry);
    if !valid {
        emu.unauthorized += 1;
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if path == "user-data" {
        return match &emu.user_data {
            Some(d) => d.clone().into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }
    let Some(key) = path.strip_prefix("meta-data/") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let m = &emu.meta;
    let macs = format!("network/interfaces/macs/{}/", m.mac);
    let value = match key {
        "instance-id" => Some(m.instance_id.clone()),
        "instance-type" => Some(m.instance_type.clone()),
        "ami-launch-index" => Some(m.launch_index.to_string()),
        "placement/region" => Some(m.region.clone()),
        "placement/availability-zone" => Some(m.zone.clone()),
        "system" => Some("nitro".to_string()),
        "mac" => Some(m.mac.clone()),
        "public-ipv4" => m.public_ipv4.clone(),
        "local-ipv4" => m.private_ipv4.clone(),
        "autoscaling/target-lifecycle-state" => emu.lifecycle_state.clone(),
        "events/recommendations/rebalance" => emu
            .rebalance
            .as_ref()
            .map(|t| serde_json::json!({ "noticeTime": t }).to_string()),
        "events/maintenance/scheduled" => Some(emu.maintenance.clone()),
        "spot/instance-action" => emu
            .notice
            .as_ref()
            .filter(|(_, visible)| Instant::now() >= *visible)
            .map(|(n, _)| serde_json::to_string(n).expect("a notice serializes")),
        k if k == format!("{macs}public-ipv4s") => m.public_ipv4.clone().map(|first| {
            std::iter::once(first)
                .chain(m.secondary_public_ipv4.iter().cloned())
                .collect::<Vec<_>>()
                .join("\n")
        }),
        k if k == format!("{macs}local-ipv4s") => m.private_ipv4.clone(),
        k if k == format!("{macs}ipv6s") => m.public_ipv6.clone(),
        _ => None,
    };
    match value {
        Some(v) => v.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[derive(Deserialize, Default)]
struct RaiseRequest {
    action: Option<String>,
    in_seconds: Option<u64>,
    visible_after_seconds: Option<f64>,
}

async fn raise(State(s): State<Shared>, body: Bytes) -> Response {
    let req: RaiseRequest = if body.is_empty() {
        RaiseRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return (StatusCode::BAD_REQUEST, format!("bad JSON: {e}")).into_response(),
        }
    };
    let action = req.action.unwrap_or_else(|| "terminate".into());
    if !["terminate", "stop", "hibernate"].contains(&action.as_str()) {
        return (
            StatusCode::BAD_REQUEST,
            "action is terminate, stop or hibernate",
        )
            .into_response();
    }
    let in_seconds = req.in_seconds.unwrap_or(120);
    let visible =
        Instant::now() + Duration::from_secs_f64(req.visible_after_seconds.unwrap_or(0.0).max(0.0));
    let notice = Notice {
        action,
        time: rfc3339(SystemTime::now() + Duration::from_secs(in_seconds)),
    };
    s.lock().unwrap().notice = Some((notice.clone(), visible));
    Json(notice).into_response()
}

async fn rebalance(State(s): State<Shared>) -> String {
    let time = rfc3339(SystemTime::now());
    s.lock().unwrap().rebalance = Some(time.clone());
    time
}

async fn lifecycle_state(State(s): State<Shared>, body: String) -> StatusCode {
    s.lock().unwrap().lifecycle_state = Some(body.trim().to_string());
    StatusCode::NO_CONTENT
}

async fn maintenance(State(s): State<Shared>, body: String) -> StatusCode {
    if serde_json::from_str::<Vec<serde_json::Value>>(&body).is_err() {
        return StatusCode::BAD_REQUEST;
    }
    s.lock().unwrap().maintenance = body;
    StatusCode::NO_CONTENT
}

async fn clear(State(s): State<Shared>) -> StatusCode {
    s.lock().unwrap().notice = None;
    StatusCode::NO_CONTENT
}

async fn set_user_data(State(s): State<Shared>, body: Bytes) -> StatusCode {
    s.lock().unwrap().user_data = Some(body.to_vec());
    StatusCode::NO_CONTENT
}

async fn requests(State(s): State<Shared>) -> String {
    s.lock().unwrap().requests.to_string()
}

async fn requests_by_path(State(s): State<Shared>) -> Json<HashMap<String, u64>> {
    Json(s.lock().unwrap().by_path.clone())
}

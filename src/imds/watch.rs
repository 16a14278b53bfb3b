//! Watches IMDS for what the instance is told about its future: a spot
//! interruption notice, an Auto Scaling termination, a rebalance
//! recommendation, scheduled maintenance. Each is reported once.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{ImdsClient, ImdsError};

/// `spot/instance-action`: what will happen to the instance, and when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct SpotNotice {
    pub action: String,
    pub time: String,
}

/// Something IMDS says about the instance's future.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// A spot interruption notice.
    Spot(SpotNotice),
    /// `autoscaling/target-lifecycle-state` reads `Terminated`.
    Terminating,
    /// `events/recommendations/rebalance`: its `noticeTime`.
    Rebalance(String),
    /// `events/maintenance/scheduled`: the events, as IMDS gives them (JSON).
    Maintenance(String),
}

impl Observation {
    /// Spot notices and terminations end the instance's life; the others
    /// are news.
    pub fn is_final(&self) -> bool {
        matches!(self, Observation::Spot(_) | Observation::Terminating)
    }
}

pub struct Watcher {
    imds: Arc<ImdsClient>,
    interval: Duration,
    /// Informational notices already reported, so that a notice that stays
    /// up is one event.
    seen: Vec<Observation>,
    failing: bool,
    /// Looks for news so far: news is looked for on some of them only.
    looks: u64,
}

/// A spot notice or a termination is looked for at every tick; news, which
/// leaves minutes to days, less often: every 5th tick a rebalance
/// recommendation, every 10th scheduled maintenance. Fewer requests while the
/// daemon watches for hours.
const REBALANCE_EVERY: u64 = 5;
const MAINTENANCE_EVERY: u64 = 10;

const SPOT: &str = "/latest/meta-data/spot/instance-action";
const LIFECYCLE: &str = "/latest/meta-data/autoscaling/target-lifecycle-state";
const REBALANCE: &str = "/latest/meta-data/events/recommendations/rebalance";
const MAINTENANCE: &str = "/latest/meta-data/events/maintenance/scheduled";

impl Watcher {
    pub fn new(imds: Arc<ImdsClient>, interval: Duration) -> Watcher {
        Watcher {
            imds,
            interval,
            seen: Vec::new(),
            failing: false,
            looks: 0,
        }
    }

    /// Waits for the next observation; `None` when `cancel` fires. With
    /// `final_only`, news is not looked for (during init). IMDS failures are
    /// logged and shown in systemd's status; the watch goes on.
    pub async fn next(
        &mut self,
        cancel: &CancellationToken,
        final_only: bool,
    ) -> Option<Observation> {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = ticker.tick() => {}
            }
            // A request retrying through an outage must not delay a stop.
            let polled = tokio::select! {
                _ = cancel.cancelled() => return None,
                r = self.poll(final_only) => r,
            };
            match polled {
                Ok(found) => {
                    if self.failing {
                        tracing::info!("instance metadata service answers again");
                        crate::systemd::status("watching for spot interruptions");
                        self.failing = false;
                    }
                    if let Some(o) = found {
                        return Some(o);
                    }
                }
                Err(e) => {
                    if !self.failing {
                        tracing::warn!("watching IMDS: {e}; still trying");
                        crate::systemd::status(&format!("watching; IMDS unreachable: {e}"));
                    }
                    self.failing = true;
                }
            }
        }
    }

    /// One look at every path; the first new observation, final ones first.
    async fn poll(&mut self, final_only: bool) -> Result<Option<Observation>, ImdsError> {
        if let Some(body) = self.imds.get(SPOT).await? {
            match parse_spot_notice(&body) {
                Ok(notice) => return Ok(Some(Observation::Spot(notice))),
                Err(e) => tracing::warn!(
                    "ignoring a spot notice that does not parse ({e}): {}",
                    String::from_utf8_lossy(&body)
                ),
            }
        }
        if let Some(state) = self.imds.get(LIFECYCLE).await? {
            if is_terminated(&state) {
                return Ok(Some(Observation::Terminating));
            }
        }
        if final_only {
            return Ok(None);
        }
        let look = self.looks;
        self.looks += 1;
        let mut news = Vec::new();
        let rebalance = if look % REBALANCE_EVERY == 0 {
            self.imds.get(REBALANCE).await?
        } else {
            None
        };
        if let Some(body) = rebalance {
            news.push(Observation::Rebalance(rebalance_time(&body)));
        }
        let maintenance = if look % MAINTENANCE_EVERY == 0 {
            self.imds.get(MAINTENANCE).await?
        } else {
            None
        };
        if let Some(events) = maintenance.as_deref().and_then(maintenance_events) {
            news.push(Observation::Maintenance(events));
        }
        for o in news {
            if !self.seen.contains(&o) {
                self.seen.push(o.clone());
                return Ok(Some(o));
            }
        }
        Ok(None)
    }
}

/// `spot/instance-action`: `{"action": "terminate", "time": "…"}`.
pub fn parse_spot_notice(body: &[u8]) -> Result<SpotNotice, serde_json::Error> {
    serde_json::from_slice(body)
}

/// Whether `autoscaling/target-lifecycle-state` reads `Terminated`.
pub fn is_terminated(state: &[u8]) -> bool {
    String::from_utf8_lossy(state).trim() == "Terminated"
}

/// `events/recommendations/rebalance`: its `noticeTime`, else the whole body
/// as text.
pub fn rebalance_time(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["noticeTime"].as_str().map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

/// `events/maintenance/scheduled`: the events as IMDS gives them, or `None`
/// when there are none (an empty body or an empty JSON array).
pub fn maintenance_events(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body).trim().to_string();
    let empty = serde_json::from_str::<Vec<serde_json::Value>>(&text).is_ok_and(|v| v.is_empty());
    (!empty && !text.is_empty()).then_some(text)
}

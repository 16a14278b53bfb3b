//! Polls IMDS for a spot interruption notice.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::ImdsClient;

/// `spot/instance-action`: what will happen to the instance, and when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct SpotNotice {
    pub action: String,
    pub time: String,
}

pub struct Watcher {
    imds: Arc<ImdsClient>,
    interval: Duration,
}

impl Watcher {
    pub fn new(imds: Arc<ImdsClient>, interval: Duration) -> Watcher {
        Watcher { imds, interval }
    }

    /// Returns the first notice, or `None` when `cancel` fires. IMDS
    /// failures are logged and the watch goes on.
    pub async fn next_notice(&self, cancel: &CancellationToken) -> Option<SpotNotice> {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = ticker.tick() => {}
            }
            match self
                .imds
                .get("/latest/meta-data/spot/instance-action")
                .await
            {
                Ok(None) => {}
                Ok(Some(body)) => match serde_json::from_slice::<SpotNotice>(&body) {
                    Ok(notice) => return Some(notice),
                    Err(e) => tracing::warn!(
                        "ignoring a spot notice that does not parse ({e}): {}",
                        String::from_utf8_lossy(&body)
                    ),
                },
                Err(e) => {
                    if !failing {
                        tracing::warn!("watching for spot notices: {e}; still trying");
                        crate::systemd::status(&format!("watching; IMDS unreachable: {e}"));
                    }
                    failing = true;
                    continue;
                }
            }
            if failing {
                tracing::info!("instance metadata service answers again");
                crate::systemd::status("watching for spot interruptions");
                failing = false;
            }
        }
    }
}

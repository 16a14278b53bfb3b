//! Tells systemd how the daemon is doing (`Type=notify`): READY, STATUS,
//! STOPPING, and WATCHDOG pings when the unit sets `WatchdogSec`. Without
//! `NOTIFY_SOCKET` every call is a no-op.

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify failed: {e}");
    }
}

/// One line for `systemctl status`.
pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

/// Init is done and the applications are started.
pub fn ready(text: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(text)]);
}

/// Shutdown has begun.
pub fn stopping(text: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(text)]);
}

/// Pings the watchdog at half its period, for as long as the daemon runs,
/// when the unit asks for it (`WatchdogSec=`).
pub fn spawn_watchdog() {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    tracing::info!("systemd watchdog: pinging every {:?}", period / 2);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period / 2);
        loop {
            ticker.tick().await;
            send(&[NotifyState::Watchdog]);
        }
    });
}

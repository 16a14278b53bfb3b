//! SIGTERM and SIGINT: the first stops the daemon, the next hurries it.

use tokio_util::sync::CancellationToken;

/// SIGTERM and SIGINT: the first stops the daemon (`stopping`), the next
/// hurries it (running hooks get SIGTERM now).
pub struct Signals {
    pub stop: CancellationToken,
    pub hurry: CancellationToken,
}

impl Signals {
    pub fn listen() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let signals = Signals {
            stop: CancellationToken::new(),
            hurry: CancellationToken::new(),
        };
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot listen for SIGTERM/SIGINT");
            return signals;
        };
        let (stop, hurry) = (signals.stop.clone(), signals.hurry.clone());
        tokio::spawn(async move {
            for token in [stop, hurry] {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM"),
                    _ = int.recv() => tracing::info!("SIGINT"),
                }
                if token.is_cancelled() {
                    continue;
                }
                token.cancel();
            }
            tracing::warn!("second signal: hurrying the hooks");
        });
        signals
    }
}

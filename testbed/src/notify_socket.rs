//! A systemd notify socket owned by the test: collects what the daemon sends
//! (`READY=1`, `STATUS=…`, `STOPPING=1`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::net::UnixDatagram;

pub struct NotifySocket {
    pub path: PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
    changed: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NotifySocket {
    pub fn bind(dir: &Path) -> Result<NotifySocket> {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path)?;
        let messages = Arc::new(Mutex::new(Vec::new()));
        let changed = Arc::new(tokio::sync::Notify::new());
        let (m, c) = (messages.clone(), changed.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok(n) = socket.recv(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                m.lock().unwrap().extend(text.lines().map(String::from));
                c.notify_waiters();
            }
        });
        Ok(NotifySocket {
            path,
            messages,
            changed,
            task,
        })
    }

    /// Every line received so far (`READY=1`, `STATUS=…`).
    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits until a line equal to `line` arrives.
    pub async fn wait_for(&self, line: &str, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Registered before the check, so no message slips between them.
            notified.as_mut().enable();
            if self.messages().iter().any(|m| m == line) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!("no {line:?} within {timeout:?}; got {:?}", self.messages());
            }
        }
    }
}

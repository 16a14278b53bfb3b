//! Runs an ec2fleetd process against a testbed: environment, a notify
//! socket of the test's own, its log kept for assertions.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::notify_socket::NotifySocket;

pub struct DaemonProcess {
    pub child: Child,
    readers: Vec<tokio::task::JoinHandle<()>>,
    pub notify: NotifySocket,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

/// Whether this machine lets us give the daemon a UTS namespace of its own,
/// so that it can set a hostname without touching the machine's.
pub fn uts_namespace_available() -> bool {
    std::process::Command::new("unshare")
        .args(["--uts", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl DaemonProcess {
    /// Starts `bin args…` with `env`; with `own_uts` in a new UTS namespace.
    /// Its output is kept and echoed to stderr.
    pub fn spawn(
        bin: &Path,
        args: &[&str],
        env: &[(String, String)],
        own_uts: bool,
    ) -> Result<DaemonProcess> {
        Self::spawn_with(bin, args, env, own_uts, true)
    }

    /// As [`DaemonProcess::spawn`]; `echo` false keeps the output without
    /// printing it (benchmarks run dozens at once).
    pub fn spawn_with(
        bin: &Path,
        args: &[&str],
        env: &[(String, String)],
        own_uts: bool,
        echo: bool,
    ) -> Result<DaemonProcess> {
        let dir = tempfile::Builder::new()
            .prefix("ec2fleetd-run-")
            .tempdir()?;
        let notify = NotifySocket::bind(dir.path())?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .env_remove("AWS_PROFILE")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("NOTIFY_SOCKET", &notify.path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if own_uts {
            // SAFETY: unshare(2) is async-signal-safe and touches no memory
            // shared with the parent.
            unsafe {
                cmd.pre_exec(|| {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if echo {
                        eprintln!("  | {line}");
                    }
                    log.lock().unwrap().push(line);
                }
            }));
        }
        Ok(DaemonProcess {
            child,
            readers,
            notify,
            log,
            _dir: dir,
        })
    }

    /// Everything the daemon printed so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        let pid = self.pid().context("the daemon has exited")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)?;
        Ok(())
    }

    /// Waits for READY=1.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        tokio::select! {
            r = self.notify.wait_for("READY=1", timeout) => r.with_context(|| format!("log:\n{}", self.log())),
            status = self.child.wait() => bail!("the daemon exited before READY=1 ({:?}); log:\n{}", status?, self.log()),
        }
    }

    /// Waits for the process to exit; returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<i32> {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| {
                format!(
                    "the daemon did not exit within {timeout:?}; log:\n{}",
                    self.log()
                )
            })??;
        // The output ends with the process (hooks are done by then): take
        // the last lines in.
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        status.code().context("the daemon was killed by a signal")
    }
}

//! Starts moto's server on a free loopback port and stops it on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

/// A running `moto_server`.
pub struct Moto {
    pub url: String,
    child: Child,
}

/// Where `moto_server` is: `EC2FLEETD_MOTO_SERVER`, else the project's `.venv`
/// (made by `scripts/test` and `scripts/demo`).
pub fn server_path() -> PathBuf {
    if let Some(p) = std::env::var_os("EC2FLEETD_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server")
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Moto {
    pub async fn start() -> Result<Moto> {
        let path = server_path();
        if !path.exists() {
            bail!(
                "{} not found: run scripts/test (it installs moto into .venv) or set EC2FLEETD_MOTO_SERVER",
                path.display()
            );
        }
        let mut last = None;
        // A port picked free can be taken before moto binds it: try again.
        for _ in 0..3 {
            let port = free_port()?;
            let child = Command::new(&path)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", path.display()))?;
            let mut moto = Moto {
                url: format!("http://127.0.0.1:{port}"),
                child,
            };
            match moto.wait_ready().await {
                Ok(()) => return Ok(moto),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried at least once"))
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let http = reqwest::Client::new();
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait()? {
                bail!("moto_server exited early: {status}");
            }
            if let Ok(r) = http.get(format!("{}/moto-api/", self.url)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("moto_server did not answer at {} within 15 s", self.url)
    }
}

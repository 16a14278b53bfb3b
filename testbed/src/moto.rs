//! Starts the AWS test double (moto with real rules, `testbed/aws_double.py`)
//! or bare moto on loopback, and stops it on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Which server: the double, or moto as it comes (to show what the double adds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Double,
    Bare,
}

/// A running AWS emulator.
pub struct Moto {
    pub url: String,
    pub flavour: Flavour,
    child: Child,
    /// Volume contents of the double.
    _data: tempfile::TempDir,
}

impl Moto {
    /// The emulator's process, to see what it costs the machine.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Where `moto_server` is: `EC2FLEETD_MOTO_SERVER`, else the project's `.venv`
/// (made by `scripts/setup-emulators`). The double runs on the Python beside it.
pub fn server_path() -> PathBuf {
    if let Some(p) = std::env::var_os("EC2FLEETD_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server")
}

fn double_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("aws_double.py")
}

const START_TIMEOUT: Duration = Duration::from_secs(30);

impl Moto {
    pub async fn start(flavour: Flavour) -> Result<Moto> {
        let server = server_path();
        if !server.exists() {
            bail!(
                "{} not found: run scripts/setup-emulators (it installs moto into .venv) or set EC2FLEETD_MOTO_SERVER",
                server.display()
            );
        }
        match flavour {
            Flavour::Double => Moto::start_double(&server).await,
            Flavour::Bare => Moto::start_bare(&server).await,
        }
    }

    /// The double binds port 0 and names the port it got: no race with
    /// other tests for a free port.
    async fn start_double(server: &std::path::Path) -> Result<Moto> {
        let data = tempfile::Builder::new().prefix("aws-double-").tempdir()?;
        let mut child = Command::new(server.with_file_name("python"))
            .arg(double_script())
            .args(["--host", "127.0.0.1", "--port", "0", "--data-dir"])
            .arg(data.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting the AWS test double")?;
        let stdout = child.stdout.take().context("the double's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(START_TIMEOUT, lines.next_line())
            .await
            .context("the AWS test double did not start in time")??
            .context("the AWS test double exited before it listened")?;
        let addr = first
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected first line from the double: {first:?}"))?
            .to_string();
        // Keep reading so that the pipe never fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let mut moto = Moto {
            url: format!("http://{addr}"),
            flavour: Flavour::Double,
            child,
            _data: data,
        };
        moto.wait_ready().await?;
        Ok(moto)
    }

    /// moto_server takes a port number: pick a free one, and make sure the
    /// server that answers is ours (another test may race for the port).
    async fn start_bare(server: &std::path::Path) -> Result<Moto> {
        let mut last = None;
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port()
                .to_string();
            let child = Command::new(server)
                .args(["-H", "127.0.0.1", "-p", &port])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("starting moto_server")?;
            let mut moto = Moto {
                url: format!("http://127.0.0.1:{port}"),
                flavour: Flavour::Bare,
                child,
                _data: tempfile::Builder::new().prefix("moto-").tempdir()?,
            };
            let ready = moto.wait_ready().await;
            // A server that lost the port to another exits soon after.
            tokio::time::sleep(Duration::from_millis(500)).await;
            match (ready, moto.child.try_wait()?) {
                (Ok(()), None) => return Ok(moto),
                (Ok(()), Some(status)) => {
                    last = Some(anyhow::anyhow!("moto_server exited: {status}"))
                }
                (Err(e), _) => last = Some(e),
            }
        }
        Err(last.expect("tried at least once"))
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("the AWS emulator exited early: {status}");
            }
            if let Ok(r) = http.get(format!("{}/moto-api/", self.url)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "the AWS emulator did not answer at {} within {START_TIMEOUT:?}",
            self.url
        )
    }
}

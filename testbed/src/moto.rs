//! Starts the AWS test double (moto with real rules, `testbed/aws_double.py`)
//! or bare moto on a free loopback port, and stops it on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
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

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Moto {
    pub async fn start(flavour: Flavour) -> Result<Moto> {
        let server = server_path();
        if !server.exists() {
            bail!(
                "{} not found: run scripts/setup-emulators (it installs moto into .venv) or set EC2FLEETD_MOTO_SERVER",
                server.display()
            );
        }
        let mut data = tempfile::Builder::new().prefix("aws-double-").tempdir()?;
        let mut last = None;
        // A port picked free can be taken before the server binds it: try again.
        for _ in 0..3 {
            let port = free_port()?.to_string();
            let mut cmd = match flavour {
                Flavour::Bare => {
                    let mut c = Command::new(&server);
                    c.args(["-H", "127.0.0.1", "-p", &port]);
                    c
                }
                Flavour::Double => {
                    let mut c = Command::new(server.with_file_name("python"));
                    c.arg(double_script())
                        .args(["--host", "127.0.0.1", "--port", &port, "--data-dir"])
                        .arg(data.path());
                    c
                }
            };
            let child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting the {flavour:?} AWS emulator"))?;
            let mut moto = Moto {
                url: format!("http://127.0.0.1:{port}"),
                flavour,
                child,
                _data: data,
            };
            match moto.wait_ready().await {
                Ok(()) => return Ok(moto),
                Err(e) => {
                    last = Some(e);
                    data = tempfile::Builder::new().prefix("aws-double-").tempdir()?;
                }
            }
        }
        Err(last.expect("tried at least once"))
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let http = reqwest::Client::new();
        for _ in 0..400 {
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
            "the AWS emulator did not answer at {} within 20 s",
            self.url
        )
    }
}

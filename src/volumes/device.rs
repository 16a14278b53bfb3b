//! Finds the block device of an attached volume under the device root:
//! by NVMe serial (Nitro: `sys/block/*/device/serial` holds the volume ID
//! without its dash), else at the configured name (Xen), also in its
//! `/dev/xvd*` spelling.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::time::Instant;

const POLL: Duration = Duration::from_millis(50);

/// Waits until the device of `volume_id` shows up, for at most `timeout`.
pub async fn wait_for(
    root: &Path,
    volume_id: &str,
    device: &str,
    timeout: Duration,
) -> Result<PathBuf> {
    let deadline = Instant::now() + timeout;
    loop {
        let (root2, vid, dev) = (
            root.to_path_buf(),
            volume_id.to_string(),
            device.to_string(),
        );
        let (found, seen) = tokio::task::spawn_blocking(move || find(&root2, &vid, &dev)).await?;
        if let Some(path) = found {
            return Ok(path);
        }
        if Instant::now() >= deadline {
            let seen = if seen.is_empty() {
                "no NVMe devices with a serial".to_string()
            } else {
                format!("NVMe serials seen: {}", seen.join(", "))
            };
            bail!(
                "the block device of {volume_id} did not appear within {}s under {} \
                 (looked for NVMe serial {} and {device}; {seen})",
                timeout.as_secs(),
                root.display(),
                volume_id.replace('-', ""),
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The device path, and the serials seen (for the error when there is none).
fn find(root: &Path, volume_id: &str, device: &str) -> (Option<PathBuf>, Vec<String>) {
    let serial = volume_id.replace('-', "");
    let mut seen = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root.join("sys/block")) {
        for entry in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path().join("device/serial")) else {
                continue;
            };
            let text = text.trim().to_string();
            if text == serial {
                let node = root.join("dev").join(entry.file_name());
                if node.exists() {
                    return (Some(node), seen);
                }
            }
            seen.push(format!("{}={text}", entry.file_name().to_string_lossy()));
        }
    }
    for name in device_names(device) {
        let node = root.join(name.trim_start_matches('/'));
        if node.exists() {
            return (Some(node), seen);
        }
    }
    (None, seen)
}

/// `/dev/sdf` shows up as `/dev/xvdf` on Xen instances.
fn device_names(device: &str) -> Vec<String> {
    let mut names = vec![device.to_string()];
    if let Some(rest) = device.strip_prefix("/dev/sd") {
        names.push(format!("/dev/xvd{rest}"));
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ec2fleetd-device-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("dev")).unwrap();
        dir
    }

    #[test]
    fn nvme_serial_wins() {
        let r = root();
        std::fs::create_dir_all(r.join("sys/block/nvme1n1/device")).unwrap();
        std::fs::write(
            r.join("sys/block/nvme1n1/device/serial"),
            "vol0123456789abcdef0  \n",
        )
        .unwrap();
        std::fs::write(r.join("dev/nvme1n1"), "").unwrap();
        let (found, _) = find(&r, "vol-0123456789abcdef0", "/dev/xvdf");
        assert_eq!(found, Some(r.join("dev/nvme1n1")));
    }

    #[test]
    fn xen_name_and_sd_alias() {
        let r = root();
        std::fs::write(r.join("dev/xvdg"), "").unwrap();
        let (found, seen) = find(&r, "vol-0123456789abcdef0", "/dev/sdg");
        assert_eq!(found, Some(r.join("dev/xvdg")));
        assert!(seen.is_empty());
    }

    #[tokio::test]
    async fn missing_device_names_what_was_seen() {
        let r = root();
        std::fs::create_dir_all(r.join("sys/block/nvme2n1/device")).unwrap();
        std::fs::write(r.join("sys/block/nvme2n1/device/serial"), "vol0aaa").unwrap();
        let err = wait_for(&r, "vol-0bbb", "/dev/xvdf", Duration::from_millis(100))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("vol-0bbb") && text.contains("nvme2n1=vol0aaa"),
            "{text}"
        );
    }
}

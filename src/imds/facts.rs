//! What the daemon knows about the instance it runs on, read once from IMDS.

use super::{ImdsClient, ImdsError};

#[derive(Debug, Clone, Default)]
pub struct InstanceFacts {
    pub instance_id: String,
    pub instance_type: String,
    /// `ami-launch-index`.
    pub launch_index: String,
    pub region: String,
    pub zone: String,
    /// `nitro` or `xen` where IMDS tells (`system`).
    pub hypervisor: String,
    /// Public IPv4 addresses of the primary interface, the primary first.
    pub public_ipv4: Vec<String>,
    /// IPv6 addresses of the primary interface (all are public on EC2).
    pub public_ipv6: Vec<String>,
    /// The primary private IPv4 address (`local-ipv4`).
    pub private_ipv4: Option<String>,
}

impl InstanceFacts {
    /// Reads every fact in parallel; absent optional ones stay empty.
    pub async fn read(imds: &ImdsClient) -> Result<InstanceFacts, ImdsError> {
        let required = |path: &'static str| async move {
            imds.meta(path).await?.ok_or_else(|| ImdsError::Status {
                endpoint: imds.endpoint().to_string(),
                path: format!("/latest/meta-data/{path}"),
                status: 404,
            })
        };
        let optional = |path: &'static str| async move {
            Ok::<_, ImdsError>(imds.meta(path).await?.unwrap_or_default())
        };
        let (
            instance_id,
            instance_type,
            launch_index,
            region,
            zone,
            hypervisor,
            mac,
            primary_v4,
            private_v4,
        ) = tokio::try_join!(
            required("instance-id"),
            required("instance-type"),
            optional("ami-launch-index"),
            required("placement/region"),
            required("placement/availability-zone"),
            optional("system"),
            optional("mac"),
            optional("public-ipv4"),
            optional("local-ipv4"),
        )?;
        let (mut public_ipv4, public_ipv6) = if mac.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            let v4 = format!("network/interfaces/macs/{mac}/public-ipv4s");
            let v6 = format!("network/interfaces/macs/{mac}/ipv6s");
            let (v4, v6) = tokio::try_join!(imds.meta(&v4), imds.meta(&v6))?;
            (lines(v4), lines(v6))
        };
        // The primary public address leads the list.
        if !primary_v4.is_empty() {
            public_ipv4.retain(|a| *a != primary_v4);
            public_ipv4.insert(0, primary_v4);
        }
        Ok(InstanceFacts {
            instance_id,
            instance_type,
            launch_index: if launch_index.is_empty() {
                "0".into()
            } else {
                launch_index
            },
            region,
            zone,
            hypervisor,
            public_ipv4,
            public_ipv6,
            private_ipv4: Some(private_v4).filter(|a| !a.is_empty()),
        })
    }

    pub fn primary_ipv4(&self) -> Option<&str> {
        self.public_ipv4.first().map(String::as_str)
    }

    pub fn primary_ipv6(&self) -> Option<&str> {
        self.public_ipv6.first().map(String::as_str)
    }
}

fn lines(text: Option<String>) -> Vec<String> {
    text.unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

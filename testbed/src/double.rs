//! Talks to the AWS test double's control interface (`/_double/*`): its
//! knobs, the record of calls, the instances whose block devices it plays.

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// One AWS call the double answered (or refused), in arrival order.
#[derive(Debug, Clone, Deserialize)]
pub struct Call {
    /// Unix time of arrival.
    pub t: f64,
    /// `ec2`, `route53`, `sns`, `sqs`, …
    pub service: String,
    /// `AttachVolume`, `ChangeResourceRecordSets`, …
    pub action: String,
    /// The request's parameters: form fields for EC2 and SNS, the JSON body
    /// for SQS, `path`/`query`/`body` for Route53.
    pub params: serde_json::Value,
    /// `answered` (by moto, success or error), `throttled`, `5xx` or `dropped`.
    pub outcome: String,
}

impl Call {
    /// Whether the call changes something in AWS.
    pub fn is_mutating(&self) -> bool {
        const READS: [&str; 3] = ["Describe", "List", "Get"];
        !READS.iter().any(|r| self.action.starts_with(r))
            && !["ReceiveMessage"].contains(&self.action.as_str())
    }
}

/// A lifecycle action of an Auto Scaling group, as the double played it.
#[derive(Debug, Clone, Deserialize)]
pub struct LifecycleAction {
    pub instance_id: String,
    pub group: String,
    pub hook: String,
    /// `autoscaling:EC2_INSTANCE_LAUNCHING` or `…_TERMINATING`.
    pub transition: String,
    /// Unix times: the start, the timeout now (heartbeats move it), the end.
    pub started: f64,
    pub timeout_at: f64,
    pub ended: Option<f64>,
    pub heartbeats: u32,
    /// `CONTINUE` or `ABANDON`, once ended.
    pub result: Option<String>,
    /// `completed` (CompleteLifecycleAction) or `timeout`.
    pub how: Option<String>,
}

#[derive(Clone)]
pub struct DoubleControl {
    url: String,
    http: reqwest::Client,
}

impl DoubleControl {
    pub fn new(base_url: &str) -> DoubleControl {
        DoubleControl {
            url: format!("{base_url}/_double"),
            http: reqwest::Client::new(),
        }
    }

    async fn post(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
        let r = self
            .http
            .post(format!("{}/{path}", self.url))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body)?)
            .send()
            .await
            .with_context(|| format!("POST {}/{path}", self.url))?;
        let status = r.status();
        let text = r.text().await?;
        if !status.is_success() {
            bail!("POST {}/{path}: {status}: {text}", self.url);
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// Merges `settings` into the knobs: `delays` (seconds: `volume_create`,
    /// `attach`, `detach`, `snapshot`, `route53_insync`, `device`),
    /// `latency_ms`, `error_rate`, `drop_rate`, `throttle`
    /// (`ec2_mutating`/`ec2_other`/`route53`: `{"rate", "burst"}`);
    /// `{"real_quotas": true}` sets AWS's quotas, `{"reset": true}` the defaults.
    pub async fn configure(&self, settings: serde_json::Value) -> Result<serde_json::Value> {
        self.post("config", &settings).await
    }

    /// Every call so far, in order.
    pub async fn calls(&self) -> Result<Vec<Call>> {
        let text = self
            .http
            .get(format!("{}/calls", self.url))
            .send()
            .await?
            .text()
            .await?;
        Ok(serde_json::from_str(&text)?)
    }

    pub async fn clear_calls(&self) -> Result<()> {
        self.http
            .delete(format!("{}/calls", self.url))
            .send()
            .await?;
        Ok(())
    }

    /// Every lifecycle action so far, in the order they began.
    pub async fn lifecycle_actions(&self) -> Result<Vec<LifecycleAction>> {
        let text = self
            .http
            .get(format!("{}/autoscaling/actions", self.url))
            .send()
            .await?
            .text()
            .await?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Block devices of volumes attached to `instance_id` appear under `root`.
    pub async fn register_instance(&self, instance_id: &str, root: &std::path::Path) -> Result<()> {
        let body = serde_json::json!({ "instance_id": instance_id, "device_root": root });
        self.post("instances", &body).await.map(|_| ())
    }
}

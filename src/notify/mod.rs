//! `notify`: tell a fleet manager what happened, over SNS or SQS. A failed
//! notification is logged and never fails the daemon.

use anyhow::{anyhow, Result};

use crate::aws::{self, Clients};
use crate::config::{Backend, MacroValues, NotifySpec, Template};

/// The Python daemon's defaults, kept so existing subscribers keep parsing.
const DEFAULT_SUBJECT: &str = "Fleetd {domain} on {instance_id} state changed to [{daemon_state}]";
const DEFAULT_BODY: &str = "{all_json}";

/// Sends one notification; errors are logged and returned for the caller's
/// summary, never fatal.
pub async fn send(
    clients: &Clients,
    spec: &NotifySpec,
    domain: &str,
    values: &MacroValues,
) -> Result<()> {
    let subject = render(spec.subject.as_ref(), DEFAULT_SUBJECT, values);
    let body = render(spec.body.as_ref(), DEFAULT_BODY, values);
    let result = match &spec.backend {
        Backend::Sns { topic_arn } => clients
            .sns(spec.region.as_deref())
            .publish()
            .topic_arn(topic_arn)
            .subject(sns_subject(&subject))
            .message(body)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                anyhow!(
                    "SNS Publish to {topic_arn} failed ({}): {}",
                    aws::endpoint_of("SNS"),
                    aws::describe(&e)
                )
            }),
        Backend::Sqs { queue_url } => clients
            .sqs(spec.region.as_deref())
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                anyhow!(
                    "SQS SendMessage to {queue_url} failed ({}): {}",
                    aws::endpoint_of("SQS"),
                    aws::describe(&e)
                )
            }),
    };
    match &result {
        Ok(()) => tracing::info!("[{domain}] notified {}", target(&spec.backend)),
        Err(e) => tracing::warn!("[{domain}] notification not delivered: {e}"),
    }
    result
}

fn target(backend: &Backend) -> &str {
    match backend {
        Backend::Sns { topic_arn } => topic_arn,
        Backend::Sqs { queue_url } => queue_url,
    }
}

fn render(template: Option<&Template>, default: &str, values: &MacroValues) -> String {
    match template {
        Some(t) => t.render(values),
        None => Template::parse(default)
            .expect("the default templates parse")
            .render(values),
    }
}

/// SNS subjects are at most 100 printable ASCII characters on one line.
fn sns_subject(subject: &str) -> String {
    subject
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(100)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_is_made_fit_for_sns() {
        let s = sns_subject(&format!("über\nline {}", "x".repeat(200)));
        assert!(s.len() == 100 && s.starts_with("?ber?line"));
    }

    #[test]
    fn default_templates_parse() {
        assert!(Template::parse(DEFAULT_SUBJECT).is_ok() && Template::parse(DEFAULT_BODY).is_ok());
    }
}

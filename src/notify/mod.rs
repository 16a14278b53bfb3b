//! `notify`: tell a fleet manager what happened, over SNS, SQS or an
//! HTTP(S) webhook. Each attempt has a time limit; a failure that may pass
//! (throttling, a 5xx, no answer) is retried a bounded number of times with
//! jittered backoff, each retry logged. A notification that cannot be
//! delivered is logged and never fails the daemon.

pub mod event;

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::anyhow;
use aws_sdk_sns::types::MessageAttributeValue;

use crate::aws::{self, Clients};
use crate::config::{Backend, Body, Event, MacroValues, NotifySpec, Template};
use crate::retry::Backoff;

/// The Python daemon's default subject, kept so existing subscribers keep
/// filtering on it.
const DEFAULT_SUBJECT: &str = "Fleetd {domain} on {instance_id} state changed to [{daemon_state}]";

const BACKOFF: Backoff = Backoff {
    attempts: 0, // from the spec
    base: Duration::from_millis(500),
    cap: Duration::from_secs(5),
};

/// One notification, rendered.
#[derive(Debug, Clone)]
pub struct Message {
    pub subject: String,
    pub body: String,
    pub content_type: &'static str,
    pub event: Event,
    pub domain: String,
    pub instance_id: String,
}

impl Message {
    /// Renders `spec`'s envelope; without a body template, the body is
    /// `event_json`, the typed event.
    pub fn render(
        spec: &NotifySpec,
        event: Event,
        domain: &str,
        values: &MacroValues,
        event_json: &serde_json::Value,
    ) -> Message {
        let subject = spec.subject.as_ref().map_or_else(
            || {
                Template::parse(DEFAULT_SUBJECT)
                    .expect("the default subject parses")
                    .render(values)
            },
            |t| t.render(values),
        );
        let (body, content_type) = match &spec.body {
            None => (event_json.to_string(), JSON),
            Some(Body::Json(t)) => (t.render(values).to_string(), JSON),
            Some(Body::Text(t)) => {
                let text = t.render(values);
                let is_json = serde_json::from_str::<serde_json::Value>(&text).is_ok();
                (text, if is_json { JSON } else { TEXT })
            }
        };
        Message {
            subject,
            body,
            content_type,
            event,
            domain: domain.to_string(),
            instance_id: values.get("instance_id").to_string(),
        }
    }
}

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// Why one attempt failed, and whether another may succeed.
struct Failure {
    message: String,
    transient: bool,
}

/// Sends one notification: attempts each cut at the spec's `timeout`, up to
/// `retries` more after failures that may pass, none started after
/// `until`. Errors are logged and returned for the caller's summary, never
/// fatal.
pub async fn send(
    clients: &Clients,
    spec: &NotifySpec,
    values: &MacroValues,
    message: &Message,
    until: Option<tokio::time::Instant>,
) -> anyhow::Result<()> {
    let domain = &message.domain;
    let target = spec.backend.target();
    let attempts = spec.retries + 1;
    let mut attempt = 1;
    loop {
        let outcome =
            match tokio::time::timeout(spec.timeout, deliver(clients, spec, values, message)).await
            {
                Ok(r) => r,
                Err(_) => Err(Failure {
                    message: format!("no answer within {:.1}s", spec.timeout.as_secs_f64()),
                    transient: true,
                }),
            };
        let failure = match outcome {
            Ok(()) => {
                let retried = if attempt > 1 {
                    format!(" (attempt {attempt} of {attempts})")
                } else {
                    String::new()
                };
                tracing::info!("[{domain}] notified {target} of {}{retried}", message.event);
                return Ok(());
            }
            Err(f) => f,
        };
        let wait = BACKOFF.delay(attempt);
        let out_of_time =
            until.is_some_and(|u| tokio::time::Instant::now() + wait + spec.timeout > u);
        if !failure.transient || attempt >= attempts || out_of_time {
            let why = if !failure.transient {
                "not retried: it would fail again"
            } else if out_of_time {
                "no time left to retry"
            } else {
                "out of retries"
            };
            tracing::warn!(
                "[{domain}] {} notification to {target} not delivered after {attempt} attempt(s) ({why}): {}",
                message.event,
                failure.message
            );
            return Err(anyhow!("{}", failure.message));
        }
        tracing::warn!(
            "[{domain}] {} notification to {target}: attempt {attempt} of {attempts} failed: {}; retrying in {:.1}s",
            message.event,
            failure.message,
            wait.as_secs_f64()
        );
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

async fn deliver(
    clients: &Clients,
    spec: &NotifySpec,
    values: &MacroValues,
    message: &Message,
) -> Result<(), Failure> {
    match &spec.backend {
        Backend::Sns { topic_arn } => {
            let attr = |v: &str| {
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(v)
                    .build()
                    .expect("data type and value are set")
            };
            clients
                .sns(spec.region.as_deref())
                .publish()
                .topic_arn(topic_arn)
                .subject(sns_subject(&message.subject))
                .message(&message.body)
                .message_attributes("event", attr(message.event.name()))
                .message_attributes("domain", attr(&message.domain))
                .message_attributes("instance_id", attr(&message.instance_id))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| aws_failure(&format!("SNS Publish to {topic_arn}"), "SNS", &e))
        }
        Backend::Sqs { queue_url } => {
            use aws_sdk_sqs::types::MessageAttributeValue as Attr;
            let attr = |v: &str| {
                Attr::builder()
                    .data_type("String")
                    .string_value(v)
                    .build()
                    .expect("data type and value are set")
            };
            clients
                .sqs(spec.region.as_deref())
                .send_message()
                .queue_url(queue_url)
                .message_body(&message.body)
                .message_attributes("event", attr(message.event.name()))
                .message_attributes("domain", attr(&message.domain))
                .message_attributes("instance_id", attr(&message.instance_id))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| aws_failure(&format!("SQS SendMessage to {queue_url}"), "SQS", &e))
        }
        Backend::Webhook { url, headers } => {
            let mut request = http()
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, message.content_type)
                .header("X-Ec2fleetd-Event", message.event.name())
                .body(message.body.clone());
            for (name, value) in headers {
                request = request.header(name, value.render(values));
            }
            match request.send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    let text: String = text.trim().chars().take(200).collect();
                    let text = if text.is_empty() {
                        String::new()
                    } else {
                        format!(": {text}")
                    };
                    Err(Failure {
                        // Worth another try: the server's trouble, or "not now".
                        transient: status.is_server_error()
                            || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                            || status == reqwest::StatusCode::REQUEST_TIMEOUT,
                        message: format!("POST {url}: {status}{text}"),
                    })
                }
                Err(e) => Err(Failure {
                    transient: true,
                    message: format!("POST {url}: {}", crate::imds::describe_http(&e)),
                }),
            }
        }
    }
}

/// An AWS call's failure; `service` as in [`aws::endpoint_of`].
fn aws_failure<E>(what: &str, service: &str, e: &aws_sdk_sns::error::SdkError<E>) -> Failure
where
    E: aws_sdk_sns::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    Failure {
        transient: aws::is_transient(e),
        message: format!(
            "{what} failed ({}): {}",
            aws::endpoint_of(service),
            aws::describe(e)
        ),
    }
}

/// One HTTP client for every webhook: connections are reused.
fn http() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .user_agent(concat!("ec2fleetd/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(3))
            .build()
            .expect("the webhook HTTP client builds")
    })
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
    fn default_subject_parses() {
        assert!(Template::parse(DEFAULT_SUBJECT).is_ok());
    }
}

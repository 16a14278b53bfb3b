//! The one place AWS SDK clients are configured: region, retries, timeouts.
//! Endpoints and credentials follow the standard SDK environment
//! (`AWS_ENDPOINT_URL[_SERVICE]`, the default credential chain).

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

use crate::retry::Backoff;

/// Clients for every service the daemon calls.
#[derive(Clone)]
pub struct Clients {
    pub sdk: SdkConfig,
    pub ec2: aws_sdk_ec2::Client,
    pub route53: aws_sdk_route53::Client,
    /// Lifecycle hooks: retried as EC2 calls are.
    pub autoscaling: aws_sdk_autoscaling::Client,
}

impl Clients {
    pub async fn load(region: &str) -> Clients {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(10))
            .operation_timeout(Duration::from_secs(40))
            .build();
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .timeout_config(timeouts)
            // EC2: a fleet booting together meets RequestLimitExceeded on
            // the mutating calls (5 a second after a burst of 50) for tens
            // of seconds: retried up to 20 times, 5 s apart at most, within the
            // 40 s each call may take (so an endpoint that is not there fails too).
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(20)
                    .with_max_backoff(Duration::from_secs(5)),
            )
            .load()
            .await;
        Clients {
            ec2: aws_sdk_ec2::Client::new(&sdk),
            autoscaling: aws_sdk_autoscaling::Client::new(&sdk),
            // Route53 calls retry through `with_retries`, which logs each one.
            route53: aws_sdk_route53::Client::from_conf(
                aws_sdk_route53::config::Builder::from(&sdk)
                    .retry_config(RetryConfig::disabled())
                    .build(),
            ),
            sdk,
        }
    }

    /// An SNS client, in `region` when a notification names one.
    pub fn sns(&self, region: Option<&str>) -> aws_sdk_sns::Client {
        // Notifications retry in `notify::send`, which logs each retry.
        let mut b =
            aws_sdk_sns::config::Builder::from(&self.sdk).retry_config(RetryConfig::disabled());
        if let Some(r) = region {
            b = b.region(Region::new(r.to_string()));
        }
        aws_sdk_sns::Client::from_conf(b.build())
    }

    pub fn sqs(&self, region: Option<&str>) -> aws_sdk_sqs::Client {
        let mut b =
            aws_sdk_sqs::config::Builder::from(&self.sdk).retry_config(RetryConfig::disabled());
        if let Some(r) = region {
            b = b.region(Region::new(r.to_string()));
        }
        aws_sdk_sqs::Client::from_conf(b.build())
    }
}

/// The region from `AWS_REGION` (or `AWS_DEFAULT_REGION`), if set.
pub fn region_from_env() -> Option<String> {
    ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

/// Where calls to `service` go, for error messages. `service` is the SDK's
/// service ID as its endpoint variable spells it (`EC2`, `ROUTE_53`, `SNS`, `SQS`).
pub fn endpoint_of(service: &str) -> String {
    let specific = format!("AWS_ENDPOINT_URL_{service}");
    std::env::var(&specific)
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .unwrap_or_else(|_| format!("the default {} endpoint", service.replace('_', "")))
}

/// An SDK error as one line: the AWS error code and message with the HTTP
/// status for an error AWS answered, else what kept the call from an answer.
pub fn describe<E>(err: &aws_sdk_ec2::error::SdkError<E>) -> String
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_ec2::error::{DisplayErrorContext, SdkError};
    match err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            format!("no answer: {}", DisplayErrorContext(err))
        }
        SdkError::ServiceError(ctx) => {
            use aws_sdk_ec2::error::ProvideErrorMetadata;
            let status = ctx.raw().status().as_u16();
            match (err.code(), err.message()) {
                (Some(code), Some(message)) => format!("{code}: {message} (HTTP {status})"),
                (Some(code), None) => format!("{code} (HTTP {status})"),
                _ => format!("HTTP {status}: {}", DisplayErrorContext(err)),
            }
        }
        _ => DisplayErrorContext(err).to_string(),
    }
}

/// The AWS error code (`VolumeInUse`, `Throttling`, …) of an SDK error.
pub fn code<E>(err: &aws_sdk_ec2::error::SdkError<E>) -> Option<&str>
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata,
{
    use aws_sdk_ec2::error::ProvideErrorMetadata;
    ProvideErrorMetadata::code(err)
}

/// Whether an AWS call that failed this way may succeed if tried again:
/// throttling, a busy hosted zone, a 5xx, or no answer at all.
pub fn is_transient<E>(err: &aws_sdk_ec2::error::SdkError<E>) -> bool
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata,
{
    use aws_sdk_ec2::error::SdkError;
    const CODES: [&str; 8] = [
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "PriorRequestNotComplete",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "RequestThrottled",
    ];
    match err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(ctx) => {
            code(err).is_some_and(|c| CODES.contains(&c)) || ctx.raw().status().is_server_error()
        }
        _ => false,
    }
}

/// Runs `call` until it succeeds, fails for good, or `backoff` runs out,
/// logging each retry with its count and reason; `what` names the call in
/// those lines. For clients built with the SDK's own retries off, so that
/// every retry is counted here.
pub async fn with_retries<T, E, F, Fut>(
    what: &str,
    backoff: Backoff,
    mut call: F,
) -> Result<T, aws_sdk_ec2::error::SdkError<E>>
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, aws_sdk_ec2::error::SdkError<E>>>,
{
    let mut retries = 0;
    loop {
        match call().await {
            Ok(v) => {
                if retries > 0 {
                    tracing::info!(
                        "{what}: succeeded after {retries} retr{}",
                        if retries == 1 { "y" } else { "ies" }
                    );
                }
                return Ok(v);
            }
            Err(e) if retries + 1 < backoff.attempts && is_transient(&e) => {
                retries += 1;
                let wait = backoff.delay(retries);
                let why = code(&e).map_or_else(|| describe(&e), String::from);
                tracing::warn!(
                    "{what}: {why}; retry {retries} of {} in {:.1}s",
                    backoff.attempts - 1,
                    wait.as_secs_f64()
                );
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

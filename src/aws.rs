//! The one place AWS SDK clients are configured: region, retries, timeouts.
//! Endpoints and credentials follow the standard SDK environment
//! (`AWS_ENDPOINT_URL[_SERVICE]`, the default credential chain).

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

/// Clients for every service the daemon calls.
#[derive(Clone)]
pub struct Clients {
    pub sdk: SdkConfig,
    pub ec2: aws_sdk_ec2::Client,
    pub route53: aws_sdk_route53::Client,
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
            .retry_config(RetryConfig::standard().with_max_attempts(4))
            .load()
            .await;
        Clients {
            ec2: aws_sdk_ec2::Client::new(&sdk),
            route53: aws_sdk_route53::Client::new(&sdk),
            sdk,
        }
    }

    /// An SNS client, in `region` when a notification names one.
    pub fn sns(&self, region: Option<&str>) -> aws_sdk_sns::Client {
        let mut b = aws_sdk_sns::config::Builder::from(&self.sdk);
        if let Some(r) = region {
            b = b.region(Region::new(r.to_string()));
        }
        aws_sdk_sns::Client::from_conf(b.build())
    }

    pub fn sqs(&self, region: Option<&str>) -> aws_sdk_sqs::Client {
        let mut b = aws_sdk_sqs::config::Builder::from(&self.sdk);
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

/// An SDK error as one line with its causes, and its AWS error code if any.
pub fn describe<E>(err: &aws_sdk_ec2::error::SdkError<E>) -> String
where
    E: std::error::Error + 'static,
{
    use aws_sdk_ec2::error::{DisplayErrorContext, SdkError};
    match err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            format!("no answer: {}", DisplayErrorContext(err))
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

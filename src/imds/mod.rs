//! The instance metadata service, IMDSv2 only: a session token fetched with
//! PUT, reused until shortly before it expires, dropped on 401; every request
//! under a timeout with bounded retries; 404 read as "not there".
//!
//! Hand-rolled over a plain HTTP client rather than `aws_config::imds`,
//! because user data may be gzip (binary) and the watcher needs 404, 401 and
//! outages told apart.

mod facts;
mod watch;

pub use facts::InstanceFacts;
pub use watch::{
    is_terminated, maintenance_events, parse_spot_notice, rebalance_time, Observation, SpotNotice,
    Watcher,
};

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// The standard IMDS address.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// Asked-for token lifetime (the IMDS maximum).
const TOKEN_TTL: Duration = Duration::from_secs(21_600);
/// A token is replaced this long before it expires (or at 3/4 of a shorter life).
const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(120);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const ATTEMPTS: u32 = 4;
/// The most gzipped user data may inflate to: 64 times the 16 KiB EC2 allows
/// raw, so that a gzip bomb is refused instead of filling memory.
pub const MAX_INFLATED_USER_DATA: usize = 64 * 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("instance metadata service at {endpoint} is unreachable ({path}): {reason}")]
    Unreachable {
        endpoint: String,
        path: String,
        reason: String,
    },
    #[error("instance metadata service at {endpoint} answered {status} for {path}")]
    Status {
        endpoint: String,
        path: String,
        status: u16,
    },
    #[error("instance metadata service at {endpoint} refused a session token ({status}): IMDS may be disabled for this instance")]
    TokenRefused { endpoint: String, status: u16 },
    #[error("the user data looks gzipped but does not inflate: {0}")]
    BadGzip(String),
    #[error("the gzipped user data inflates to more than {limit} bytes: a config is far smaller, so this is not one")]
    UserDataTooLarge { limit: usize },
}

/// Why a token could not be had: worth retrying, or final.
enum TokenError {
    Retry(String),
    Refused(u16),
}

struct Token {
    value: String,
    refresh_at: Instant,
}

/// An IMDSv2 client; cheap to share behind an `Arc`.
pub struct ImdsClient {
    endpoint: String,
    http: reqwest::Client,
    token: Mutex<Option<Token>>,
}

impl ImdsClient {
    /// `endpoint` is a base URL such as `http://169.254.169.254`.
    pub fn new(endpoint: &str) -> ImdsClient {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            .no_proxy()
            .build()
            .expect("a plain HTTP client always builds");
        ImdsClient {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            http,
            token: Mutex::new(None),
        }
    }

    /// The endpoint from `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else the standard one.
    pub fn from_env() -> ImdsClient {
        let endpoint = std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        ImdsClient::new(&endpoint)
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `latest/meta-data/PATH`, or `None` when IMDS says 404.
    pub async fn meta(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let bytes = self.get(&format!("/latest/meta-data/{path}")).await?;
        Ok(bytes.map(|b| String::from_utf8_lossy(&b).trim().to_string()))
    }

    /// The user data, inflated when it is gzip; `None` when there is none.
    pub async fn user_data(&self) -> Result<Option<Vec<u8>>, ImdsError> {
        match self.get("/latest/user-data").await? {
            Some(raw) => decode_user_data(raw).map(Some),
            None => Ok(None),
        }
    }

    /// GET with the session token, retrying 5xx, timeouts and refused
    /// connections with backoff, and a 401 once with a fresh token.
    pub async fn get(&self, path: &str) -> Result<Option<Vec<u8>>, ImdsError> {
        let mut last = String::new();
        let mut backoff = Duration::from_millis(100);
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            let token = match self.token().await {
                Ok(t) => t,
                Err(TokenError::Retry(reason)) => {
                    last = reason;
                    continue;
                }
                Err(TokenError::Refused(status)) => {
                    return Err(ImdsError::TokenRefused {
                        endpoint: self.endpoint.clone(),
                        status,
                    })
                }
            };
            let url = format!("{}{}", self.endpoint, path);
            let response = self
                .http
                .get(&url)
                .header("X-aws-ec2-metadata-token", &token)
                .send()
                .await;
            let response = match response {
                Ok(r) => r,
                Err(e) => {
                    last = describe_http(&e);
                    continue;
                }
            };
            match response.status().as_u16() {
                200 => match response.bytes().await {
                    Ok(b) => return Ok(Some(b.to_vec())),
                    Err(e) => last = describe_http(&e),
                },
                404 => return Ok(None),
                401 => {
                    // Expired or revoked: the next attempt fetches a new one,
                    // unless another request already has.
                    let mut slot = self.token.lock().await;
                    if slot.as_ref().is_some_and(|t| t.value == token) {
                        *slot = None;
                    }
                    last = "401 Unauthorized (token refused)".into();
                }
                s if s >= 500 || s == 429 => last = format!("status {s}"),
                status => {
                    return Err(ImdsError::Status {
                        endpoint: self.endpoint.clone(),
                        path: path.to_string(),
                        status,
                    })
                }
            }
        }
        Err(ImdsError::Unreachable {
            endpoint: self.endpoint.clone(),
            path: path.to_string(),
            reason: format!("{last} (after {ATTEMPTS} attempts)"),
        })
    }

    async fn token(&self) -> Result<String, TokenError> {
        let mut slot = self.token.lock().await;
        if let Some(t) = slot.as_ref() {
            if Instant::now() < t.refresh_at {
                return Ok(t.value.clone());
            }
        }
        let started = Instant::now();
        let response = self
            .http
            .put(format!("{}/latest/api/token", self.endpoint))
            .header(
                "X-aws-ec2-metadata-token-ttl-seconds",
                TOKEN_TTL.as_secs().to_string(),
            )
            .send()
            .await
            .map_err(|e| {
                TokenError::Retry(format!("token request failed: {}", describe_http(&e)))
            })?;
        let status = response.status().as_u16();
        match status {
            200 => {}
            s if s >= 500 || s == 429 => {
                return Err(TokenError::Retry(format!("token request answered {s}")))
            }
            s => return Err(TokenError::Refused(s)),
        }
        // The service may grant less than asked: honour what it says.
        let ttl = response
            .headers()
            .get("X-aws-ec2-metadata-token-ttl-seconds")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(TOKEN_TTL, Duration::from_secs)
            .min(TOKEN_TTL);
        let value = response.text().await.map_err(|e| {
            TokenError::Retry(format!("token body unreadable: {}", describe_http(&e)))
        })?;
        *slot = Some(Token {
            value: value.clone(),
            refresh_at: started + ttl - TOKEN_REFRESH_MARGIN.min(ttl / 4),
        });
        Ok(value)
    }
}

/// User data as IMDS gives it → the text it holds: inflated when it starts
/// with the gzip magic (members concatenated, as `gzip -c a b` writes),
/// else as it is. Inflation stops past [`MAX_INFLATED_USER_DATA`].
pub fn decode_user_data(raw: Vec<u8>) -> Result<Vec<u8>, ImdsError> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    use std::io::Read;
    let limit = MAX_INFLATED_USER_DATA as u64;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(&raw[..])
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| ImdsError::BadGzip(e.to_string()))?;
    if out.len() as u64 > limit {
        return Err(ImdsError::UserDataTooLarge {
            limit: MAX_INFLATED_USER_DATA,
        });
    }
    Ok(out)
}

/// An HTTP error with its root cause, which reqwest keeps in `source()`.
pub(crate) fn describe_http(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn plain_user_data_is_kept_and_gzip_members_are_inflated() {
        assert_eq!(decode_user_data(b"{}".to_vec()).unwrap(), b"{}");
        let mut two = gzip(b"{ \"domains\": ");
        two.extend(gzip(b"{} }"));
        assert_eq!(decode_user_data(two).unwrap(), b"{ \"domains\": {} }");
    }

    #[test]
    fn gzip_that_does_not_inflate_is_an_error() {
        let mut bad = gzip(b"{ \"domains\": {} }");
        bad.truncate(bad.len() - 6);
        assert!(matches!(decode_user_data(bad), Err(ImdsError::BadGzip(_))));
    }

    #[test]
    fn a_gzip_bomb_is_refused_past_the_limit() {
        let at_limit = gzip(&vec![b' '; MAX_INFLATED_USER_DATA]);
        assert_eq!(
            decode_user_data(at_limit).unwrap().len(),
            MAX_INFLATED_USER_DATA
        );
        // 8 MiB of spaces: some 8 KiB of gzip, user data EC2 accepts.
        let bomb = gzip(&vec![b' '; 8 * MAX_INFLATED_USER_DATA]);
        assert!(bomb.len() <= 16 * 1024, "{} bytes", bomb.len());
        let err = decode_user_data(bomb).unwrap_err();
        assert!(
            matches!(err, ImdsError::UserDataTooLarge { limit } if limit == MAX_INFLATED_USER_DATA),
            "{err}"
        );
        assert!(err.to_string().contains("1048576 bytes"), "{err}");
    }
}

//! A webhook receiver on loopback: records every POST (headers and body)
//! and answers with the statuses a test queues, 200 when none is queued.
//! Over plain HTTP, or HTTPS with a certificate from a throwaway CA whose
//! PEM file the daemon is told to trust (`SSL_CERT_FILE`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;

/// One request the receiver got, and what it answered.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub status: u16,
    /// When it arrived.
    pub at: std::time::Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("webhook body is not JSON ({e}): {}", self.body))
    }
}

#[derive(Default)]
struct Inbox {
    received: Vec<Received>,
    answers: VecDeque<u16>,
}

type Shared = Arc<Mutex<Inbox>>;

pub struct WebhookReceiver {
    addr: SocketAddr,
    inbox: Shared,
    task: tokio::task::JoinHandle<()>,
    /// With TLS: the CA certificate that signed the receiver's.
    ca: Option<tempfile::NamedTempFile>,
}

impl WebhookReceiver {
    /// A receiver over plain HTTP.
    pub async fn start() -> Result<WebhookReceiver> {
        let inbox = Shared::default();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let app = router(&inbox);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(WebhookReceiver {
            addr,
            inbox,
            task,
            ca: None,
        })
    }

    /// A receiver over HTTPS, its certificate (for 127.0.0.1 and
    /// localhost) signed by a CA made for it; see [`WebhookReceiver::ca_file`].
    pub async fn start_tls() -> Result<WebhookReceiver> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ec2fleetd test CA");
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?
            .signed_by(&key, &issuer)?;
        let mut ca = tempfile::Builder::new()
            .prefix("webhook-ca-")
            .suffix(".pem")
            .tempfile()?;
        std::io::Write::write_all(&mut ca, ca_cert.pem().as_bytes())?;

        use tokio_rustls::rustls;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let inbox = Shared::default();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let app = router(&inbox);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(WebhookReceiver {
            addr,
            inbox,
            task,
            ca: Some(ca),
        })
    }

    /// The URL of `path` (e.g. `/hook`) on this receiver.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    /// With TLS, the PEM file of the CA that signed the receiver's
    /// certificate: give it to the daemon as `SSL_CERT_FILE`.
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.ca.as_ref().map(|f| f.path())
    }

    /// The next requests get these statuses, in order.
    pub fn answer_next(&self, statuses: &[u16]) {
        self.inbox
            .lock()
            .unwrap()
            .answers
            .extend(statuses.iter().copied());
    }

    pub fn received(&self) -> Vec<Received> {
        self.inbox.lock().unwrap().received.clone()
    }

    /// Waits until `n` requests were answered 2xx; returns those.
    pub async fn wait_for_delivered(&self, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            let ok: Vec<Received> = self
                .received()
                .into_iter()
                .filter(|r| (200..300).contains(&r.status))
                .collect();
            if ok.len() >= n {
                return Ok(ok);
            }
            if tokio::time::Instant::now() >= end {
                bail!(
                    "{} of {n} webhook deliveries within {timeout:?}; received: {:?}",
                    ok.len(),
                    self.received()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn router(inbox: &Shared) -> Router {
    Router::new()
        .route("/{*path}", post(receive))
        .with_state(inbox.clone())
}

async fn receive(
    State(inbox): State<Shared>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let mut inbox = inbox.lock().unwrap();
    let status = inbox.answers.pop_front().unwrap_or(200);
    inbox.received.push(Received {
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_string()))
            .collect(),
        body,
        status,
        at: std::time::Instant::now(),
    });
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

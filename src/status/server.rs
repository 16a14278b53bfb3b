//! The status endpoints: the unix socket (always on; status, drain,
//! undrain, pushed player counts) and the optional read-only HTTP listener
//! for a manager on another host, behind a bearer token.
//!
//! HTTP/1.1 by hyper; the routes are few enough for one match.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;

use super::{Board, Control};

/// The largest request body read (`PUT /v1/players`).
const MAX_BODY: usize = 16 * 1024;

/// Who is asking: the socket may change things; HTTP may only read.
#[derive(Clone)]
enum Access {
    Socket,
    Http { token: Option<Arc<Vec<u8>>> },
}

/// The listeners, until [`Served::close`].
pub struct Served {
    socket: PathBuf,
    tasks: Vec<JoinHandle<()>>,
}

impl Served {
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops answering and removes the socket.
    pub fn close(self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Listens on `socket` (mode 0660; its directory is made if missing) and,
/// with `http`, on that address. A socket another daemon still answers
/// on is an error; one left by a daemon that died is replaced.
pub async fn listen(
    board: Arc<Board>,
    socket: &Path,
    http: Option<(SocketAddr, Option<Vec<u8>>)>,
) -> Result<Served> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("making the status socket's directory {}", dir.display()))?;
    }
    if socket.exists() {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Err(anyhow!(
                "another ec2fleetd answers on {}: one daemon per name",
                socket.display()
            ));
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("removing the stale socket {}", socket.display()))?;
    }
    let unix = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting the mode of {}", socket.display()))?;
    let mut tasks = Vec::new();
    let b = board.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            match unix.accept().await {
                Ok((stream, _)) => serve(stream, b.clone(), Access::Socket),
                Err(e) => {
                    tracing::warn!("status socket: accepting a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }));
    if let Some((address, token)) = http {
        let tcp = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("listening for status requests on {address}"))?;
        let access = Access::Http {
            token: token.map(Arc::new),
        };
        tracing::info!(
            "status: answering GET /v1/status on http://{address}{}",
            match &access {
                Access::Http { token: Some(_) } => " (bearer token required)",
                _ => "",
            }
        );
        tasks.push(tokio::spawn(async move {
            loop {
                match tcp.accept().await {
                    Ok((stream, _)) => serve(stream, board.clone(), access.clone()),
                    Err(e) => {
                        tracing::warn!("status over HTTP: accepting a connection: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        }));
    }
    Ok(Served {
        socket: socket.to_path_buf(),
        tasks,
    })
}

fn serve<S>(stream: S, board: Arc<Board>, access: Access)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req| {
            let (board, access) = (board.clone(), access.clone());
            async move { Ok::<_, Infallible>(answer(&board, &access, req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service);
        // A client that hangs up early is not the daemon's problem.
        let _ = conn.await;
    });
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).expect("the status serializes");
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message }))
}

/// Whether the request carries `Authorization: Bearer TOKEN`, compared in
/// constant time.
fn authorized(req: &Request<Incoming>, token: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    let Some(given) = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    given.ct_eq(token).into()
}

async fn answer(board: &Board, access: &Access, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Access::Http { token: Some(token) } = access {
        if !authorized(&req, token) {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "a valid \"Authorization: Bearer TOKEN\" header is required",
            );
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
    }
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let writes = matches!(path.as_str(), "/v1/drain" | "/v1/undrain" | "/v1/players");
    if writes && matches!(access, Access::Http { .. }) {
        return error(
            StatusCode::FORBIDDEN,
            "the HTTP endpoint is read-only: drain and push counts on the status socket",
        );
    }
    match (method, path.as_str()) {
        (Method::GET, "/v1/status") => json(StatusCode::OK, &board.document()),
        (Method::POST, "/v1/drain") => control(board, Control::Drain),
        (Method::POST, "/v1/undrain") => control(board, Control::Undrain),
        (Method::PUT, "/v1/players") => players(board, req).await,
        (_, "/v1/status" | "/v1/drain" | "/v1/undrain" | "/v1/players") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET /v1/status, POST /v1/drain or /v1/undrain, PUT /v1/players",
        ),
        _ => error(StatusCode::NOT_FOUND, "no such path: try GET /v1/status"),
    }
}

fn control(board: &Board, c: Control) -> Response<Full<Bytes>> {
    match board.request(c) {
        Ok(()) => json(StatusCode::OK, &board.document()),
        Err(e) => error(StatusCode::CONFLICT, &e),
    }
}

/// `PUT /v1/players` with `{"domain": NAME, "online": N, "max": M}`
/// (`domain` may be left out when one domain takes pushed counts).
async fn players(board: &Board, req: Request<Incoming>) -> Response<Full<Bytes>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Pushed {
        domain: Option<String>,
        online: u32,
        max: Option<u32>,
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")),
    };
    let pushed: Pushed = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"domain\": NAME, \"online\": N, \"max\": M}}: {e}"),
            )
        }
    };
    match board.push(pushed.domain.as_deref(), pushed.online, pushed.max) {
        Ok(_) => json(StatusCode::OK, &board.document()),
        Err(e) => error(StatusCode::CONFLICT, &e),
    }
}

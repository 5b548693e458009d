//! The emulator's HTTP face: routes, its own accept loop (plain or TLS, with
//! the connection-level faults), and the `emulator` subcommand.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::assume::Answer;
use super::{Association, Emulator, Faults, MintRequest, RawResponse};
use crate::cli::EmulatorArgs;
use crate::issuer::{Issuer, IssuerError, TokenSpec, uuid};

type Resp = Response<Full<Bytes>>;

fn json_body(status: StatusCode, v: &impl Serialize) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(v).expect("JSON values serialize"),
    )));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

fn raw_body(raw: RawResponse) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(raw.body)));
    *resp.status_mut() = StatusCode::from_u16(raw.status).unwrap_or(StatusCode::OK);
    let headers = raw
        .content_type
        .map(|ct| ("content-type".to_owned(), ct))
        .into_iter()
        .chain(raw.headers);
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            resp.headers_mut().insert(name, value);
        }
    }
    resp
}

/// A JSON request body, or the 400 to answer.
async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Resp> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    serde_json::from_slice(&body)
        .map_err(|e| json_body(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})))
}

impl Emulator {
    /// `None`: close the connection without answering.
    async fn route(self: Arc<Self>, req: Request<Incoming>) -> Option<Resp> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        Some(match (&method, segments.as_slice()) {
            (&Method::POST, ["clusters", cluster, "assume-role-for-pod-identity"]) => {
                let cluster = (*cluster).to_owned();
                let (parts, body) = req.into_parts();
                let Ok(body) = Limited::new(body, 64 * 1024).collect().await else {
                    return Some(text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"));
                };
                let mut resp = match self.assume(&parts, &body.to_bytes(), &cluster).await {
                    Answer::Drop => return None,
                    Answer::Raw(raw) => return Some(raw_body(raw)),
                    Answer::Ok(v) => json_body(StatusCode::OK, &v),
                    Answer::Err(e) => {
                        let mut r =
                            json_body(e.status, &json!({"__type": e.code, "message": e.message}));
                        r.headers_mut()
                            .insert("x-amzn-errortype", HeaderValue::from_static(e.code));
                        r
                    }
                };
                resp.headers_mut().insert(
                    "x-amzn-requestid",
                    HeaderValue::from_str(&uuid()).expect("a uuid is a valid header value"),
                );
                resp
            }
            (&Method::GET, [".well-known", "openid-configuration"]) => {
                self.key_requests.fetch_add(1, Ordering::SeqCst);
                let base = self.base_url.read().expect("emulator lock").clone();
                json_body(
                    StatusCode::OK,
                    &self.issuer.discovery(&format!("{base}/openid/v1/jwks")),
                )
            }
            (&Method::GET, ["openid", "v1", "jwks"]) => {
                self.key_requests.fetch_add(1, Ordering::SeqCst);
                if !self.keys_authorized(&req) {
                    return Some(json_body(
                        StatusCode::UNAUTHORIZED,
                        &json!({"kind":"Status","code":401,"message":"Unauthorized"}),
                    ));
                }
                let mut r = json_body(StatusCode::OK, &self.issuer.jwks());
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/jwk-set+json"),
                );
                r
            }
            (&Method::GET, ["_emulator", "stats"]) => json_body(StatusCode::OK, &self.stats()),
            (&Method::GET, ["_emulator", "calls-per-second"]) => {
                json_body(StatusCode::OK, &self.calls_per_second())
            }
            (&Method::POST, ["_emulator", "faults"]) => match read_json::<Faults>(req).await {
                Ok(f) => {
                    self.set_faults(f.clone());
                    json_body(StatusCode::OK, &f)
                }
                Err(resp) => resp,
            },
            (&Method::POST, ["_emulator", "mint"]) => {
                let m: MintRequest = match read_json(req).await {
                    Ok(m) => m,
                    Err(resp) => return Some(resp),
                };
                let mut spec = TokenSpec::pod(
                    &m.namespace,
                    &m.service_account,
                    m.pod.as_deref().unwrap_or("pod"),
                );
                if let Some(uid) = m.pod_uid {
                    spec.pod_uid = uid;
                }
                if let Some(l) = m.lifetime_s {
                    spec.lifetime = Duration::from_secs(l);
                }
                spec.issued_at = Some(self.now_secs());
                match self.issuer.mint(&spec) {
                    Ok(t) => text(StatusCode::OK, t),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        })
    }

    fn keys_authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(expected) = self.bearer.read().expect("emulator lock").clone() else {
            return true;
        };
        req.headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            == Some(expected.as_str())
    }
}

/// A running emulator on loopback; stops when dropped.
pub struct RunningEmulator {
    pub emulator: Arc<Emulator>,
    pub addr: SocketAddr,
    scheme: &'static str,
    tasks: JoinSet<()>,
}

impl RunningEmulator {
    /// Serves `emulator` on `listener` over plain HTTP.
    pub fn start(emulator: Arc<Emulator>, listener: TcpListener) -> Self {
        Self::serve(emulator, listener, None)
    }

    /// Serves `emulator` on `listener` over TLS (HTTPS key sources, a
    /// private CA for EKS Auth).
    pub fn start_tls(
        emulator: Arc<Emulator>,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
    ) -> Self {
        Self::serve(
            emulator,
            listener,
            Some(tokio_rustls::TlsAcceptor::from(tls)),
        )
    }

    fn serve(
        emulator: Arc<Emulator>,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let scheme = if tls.is_some() { "https" } else { "http" };
        if tls.is_none() {
            emulator.set_base_url(&format!("http://{addr}"));
        }
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(emulator.clone(), listener, tls));
        Self {
            emulator,
            addr,
            scheme,
            tasks,
        }
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

async fn accept_loop(
    emulator: Arc<Emulator>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    // Connection tasks live in this set, so stopping the loop ends them too.
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next() => continue,
        };
        let emulator = emulator.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let _ = stream.set_nodelay(true);
            match tls {
                None => serve_connection(emulator, stream).await,
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve_connection(emulator, stream).await;
                    }
                }
            }
        });
    }
}

async fn serve_connection<S>(emulator: Arc<Emulator>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // A handler that answers nothing (the drop fault) trips this, and the
    // connection is closed with no response.
    let hang_up = Arc::new(Notify::new());
    let service = {
        let hang_up = hang_up.clone();
        hyper::service::service_fn(move |req| {
            let (emulator, hang_up) = (emulator.clone(), hang_up.clone());
            async move {
                match emulator.route(req).await {
                    Some(resp) => Ok::<_, std::convert::Infallible>(resp),
                    None => {
                        hang_up.notify_one();
                        std::future::pending().await
                    }
                }
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        _ = hang_up.notified() => {}
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path}: {source}")]
    KeyFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Issuer(#[from] IssuerError),
    #[error("{0}")]
    Association(String),
}

/// The `emulator` subcommand: serves until `shutdown` resolves.
pub async fn run_standalone(
    args: EmulatorArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StandaloneError> {
    let bind_err = |source| StandaloneError::Bind {
        addr: args.listen,
        source,
    };
    let listener = TcpListener::bind(args.listen).await.map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    let url = format!("http://{addr}");
    let issuer_url = args.issuer.clone().unwrap_or_else(|| url.clone());
    let issuer = match &args.key_file {
        Some(path) if path.exists() => {
            let pem = std::fs::read_to_string(path).map_err(|source| StandaloneError::KeyFile {
                path: path.clone(),
                source,
            })?;
            Issuer::from_pem(issuer_url, &pem)?
        }
        Some(path) => {
            let issuer = Issuer::generate(issuer_url)?;
            let pem = issuer.private_key_pem().expect("generated keys are RSA");
            std::fs::write(path, pem).map_err(|source| StandaloneError::KeyFile {
                path: path.clone(),
                source,
            })?;
            issuer
        }
        None => Issuer::generate(issuer_url)?,
    };
    let emulator = Arc::new(Emulator::new(Arc::new(issuer)));
    for spec in &args.associations {
        emulator.associate(Association::parse(spec).map_err(StandaloneError::Association)?);
    }
    emulator.set_credential_lifetime(args.credential_lifetime);
    emulator.set_faults(Faults {
        latency_ms: args.latency.as_millis() as u64,
        ..Default::default()
    });
    let running = RunningEmulator::start(emulator, listener);
    println!("{url}");
    if let Some(path) = &args.ready_file {
        let tmp = path.with_extension("tmp");
        let _ = std::fs::write(&tmp, format!("{url}\n"));
        let _ = std::fs::rename(&tmp, path);
    }
    tracing::info!(%url, "EKS Auth emulator and token issuer listening");
    shutdown.await;
    running.stop().await;
    Ok(())
}

//! The emulator's HTTP face: routes, loopback and TLS serving, and the
//! `emulator` subcommand.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::json;

use super::{Association, Emulator, Faults, MintRequest};
use crate::issuer::{Issuer, TokenSpec, uuid};
use crate::serve::{Handler, HttpResponse};

fn json_body(status: StatusCode, v: &impl Serialize) -> HttpResponse {
    let mut resp = hyper::Response::new(Full::new(Bytes::from(
        serde_json::to_vec(v).expect("JSON values serialize"),
    )));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn raw_body(raw: super::RawResponse) -> HttpResponse {
    let mut resp = hyper::Response::new(Full::new(Bytes::from(raw.body)));
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
async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, HttpResponse> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    serde_json::from_slice(&body)
        .map_err(|e| json_body(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})))
}

impl Handler for Emulator {
    async fn handle(self: Arc<Self>, req: Request<Incoming>, _peer: SocketAddr) -> HttpResponse {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::POST, ["clusters", cluster, "assume-role-for-pod-identity"]) => {
                let cluster = (*cluster).to_owned();
                let request_id = uuid();
                let mut resp = match self.assume(req, cluster).await {
                    Ok(v) => json_body(StatusCode::OK, &v),
                    Err(super::ApiError { raw: Some(raw), .. }) => raw_body(*raw),
                    Err(e) => {
                        let mut r =
                            json_body(e.status, &json!({"__type": e.code, "message": e.message}));
                        r.headers_mut()
                            .insert("x-amzn-errortype", HeaderValue::from_static(e.code));
                        r
                    }
                };
                resp.headers_mut().insert(
                    "x-amzn-requestid",
                    HeaderValue::from_str(&request_id).expect("uuid is a valid header value"),
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
                    return json_body(
                        StatusCode::UNAUTHORIZED,
                        &json!({"kind":"Status","code":401,"message":"Unauthorized"}),
                    );
                }
                let mut r = json_body(StatusCode::OK, &self.issuer.jwks());
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/jwk-set+json"),
                );
                r
            }
            (&Method::GET, ["_emulator", "stats"]) => json_body(StatusCode::OK, &self.stats()),
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
                    Err(resp) => return resp,
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
                match self.issuer.mint(&spec) {
                    Ok(t) => crate::server::text_response(StatusCode::OK, t),
                    Err(e) => crate::server::text_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        e.to_string(),
                    ),
                }
            }
            _ => crate::server::text_response(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

/// A running emulator on loopback.
pub struct RunningEmulator {
    pub emulator: Arc<Emulator>,
    pub addr: SocketAddr,
    server: Option<crate::serve::Server<Emulator>>,
}

impl RunningEmulator {
    /// Serves `emulator` on `listener` (plain HTTP).
    pub fn start(emulator: Arc<Emulator>, listener: tokio::net::TcpListener) -> Self {
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        emulator.set_base_url(&format!("http://{addr}"));
        let server = crate::serve::Server::new(
            emulator.clone(),
            crate::serve::ConnLimits {
                max_connections: 65_536,
                ..Default::default()
            },
            None,
        );
        server.add_listener(listener);
        Self {
            emulator,
            addr,
            server: Some(server),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.drain(Duration::from_secs(1)).await;
        }
    }
}

/// Serves `emulator` over TLS (tests of HTTPS key sources). Runs until the
/// returned task is aborted.
pub fn serve_tls(
    emulator: Arc<Emulator>,
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> tokio::task::JoinHandle<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let emulator = emulator.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let emulator = emulator.clone();
                    async move { Ok::<_, std::convert::Infallible>(emulator.handle(req, peer).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    })
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
    Issuer(#[from] crate::issuer::IssuerError),
    #[error("{0}")]
    Association(String),
}

/// The `emulator` subcommand.
pub async fn run_standalone(
    args: crate::cli::EmulatorArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StandaloneError> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| StandaloneError::Bind {
            addr: args.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StandaloneError::Bind {
            addr: args.listen,
            source,
        })?;
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

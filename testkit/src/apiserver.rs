//! A fake kube-apiserver over TLS, as the agent sees one from a pod: the
//! service-account issuer discovery endpoints (`/.well-known/openid-configuration`
//! with the issuer's `issuer`, `/openid/v1/jwks`), each requiring the
//! ServiceAccount's bearer token like RBAC-enforcing API servers do (401
//! without it), and a knob to refuse the keys (403: the ClusterRole not
//! bound). [`FakeApiServer::write_service_account`] lays out what the
//! kubelet mounts in a pod (`token`, `ca.crt`, `namespace`).
//!
//! Its own code throughout: it serves the [`Issuer`]'s documents, it does
//! not parse tokens.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::issuer::Issuer;
use crate::tls::TestCa;

type Resp = Response<Full<Bytes>>;

struct State {
    issuer: Arc<Issuer>,
    bearer: RwLock<String>,
    /// 0: serve the keys; else answer the discovery endpoints with this status.
    refuse: AtomicU16,
    requests: AtomicU64,
}

pub struct FakeApiServer {
    state: Arc<State>,
    addr: SocketAddr,
    ca_pem: String,
    tasks: JoinSet<()>,
}

impl FakeApiServer {
    /// Listens on 127.0.0.1 with a certificate from a CA of its own; the
    /// ServiceAccount token it accepts is `bearer`.
    pub async fn start(issuer: Arc<Issuer>, bearer: &str) -> Self {
        let ca = TestCa::new();
        let tls = ca.server_config(&["127.0.0.1", "kubernetes.default.svc"]);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake API server");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let state = Arc::new(State {
            issuer,
            bearer: RwLock::new(bearer.to_owned()),
            refuse: AtomicU16::new(0),
            requests: AtomicU64::new(0),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_loop(
            state.clone(),
            listener,
            tokio_rustls::TlsAcceptor::from(tls),
        ));
        Self {
            state,
            addr,
            ca_pem: ca.pem().to_owned(),
            tasks,
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The PEM of the CA its certificate chains to.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The environment of a pod: `KUBERNETES_SERVICE_HOST`/`PORT`.
    pub fn service_env(&self) -> [(&'static str, String); 2] {
        [
            ("KUBERNETES_SERVICE_HOST", self.addr.ip().to_string()),
            ("KUBERNETES_SERVICE_PORT", self.addr.port().to_string()),
        ]
    }

    /// Writes `token`, `ca.crt` and `namespace` into `dir`, as the kubelet
    /// mounts a ServiceAccount.
    pub fn write_service_account(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("token"),
            self.state.bearer.read().expect("bearer lock").as_bytes(),
        )?;
        std::fs::write(dir.join("ca.crt"), &self.ca_pem)?;
        std::fs::write(dir.join("namespace"), "kube-system")
    }

    /// Answer the discovery endpoints with `status` (403: RBAC refuses),
    /// or serve them again (`None`).
    pub fn refuse(&self, status: Option<u16>) {
        self.state
            .refuse
            .store(status.unwrap_or(0), Ordering::SeqCst);
    }

    /// The bearer token accepted from now on.
    pub fn set_bearer(&self, token: &str) {
        *self.state.bearer.write().expect("bearer lock") = token.to_owned();
    }

    /// Requests to the discovery endpoints so far, answered or not.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

fn json_body(status: StatusCode, v: &serde_json::Value) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(v.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Kubernetes' `Status` error document.
fn status(code: StatusCode, reason: &str) -> Resp {
    json_body(
        code,
        &json!({"kind":"Status","apiVersion":"v1","status":"Failure",
            "message": reason, "reason": reason, "code": code.as_u16()}),
    )
}

fn route(state: &State, req: &Request<Incoming>) -> Resp {
    let path = req.uri().path();
    let discovery = path == "/.well-known/openid-configuration" || path == "/openid/v1/jwks";
    if !discovery {
        return status(StatusCode::NOT_FOUND, "NotFound");
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    let expected = format!("Bearer {}", state.bearer.read().expect("bearer lock"));
    let presented = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
    if presented != Some(expected.as_bytes()) {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    match state.refuse.load(Ordering::SeqCst) {
        0 => {}
        code => {
            return status(
                StatusCode::from_u16(code).unwrap_or(StatusCode::FORBIDDEN),
                "Forbidden",
            );
        }
    }
    if path == "/openid/v1/jwks" {
        return json_body(StatusCode::OK, &state.issuer.jwks());
    }
    // kube-apiserver names the public issuer and its own JWKS path.
    json_body(
        StatusCode::OK,
        &json!({
            "issuer": state.issuer.url(),
            "jwks_uri": format!("{}/openid/v1/jwks", state.issuer.url()),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        }),
    )
}

async fn accept_loop(state: Arc<State>, listener: TcpListener, tls: tokio_rustls::TlsAcceptor) {
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            Some(_) = connections.join_next() => continue,
        };
        let (state, tls) = (state.clone(), tls.clone());
        connections.spawn(async move {
            let Ok(stream) = tls.accept(stream).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let resp = route(&state, &req);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

//! The agent's one HTTPS client: every outbound connection goes through
//! [`HttpsClient`]: EKS Auth (and STS or SSO if the SDK's credential chain
//! uses them), the OIDC issuer URL and the Kubernetes API server. One place
//! decides the trust store, the proxy and the timeouts.
//!
//! Contract:
//! - **Trust** ([`Trust`]): the system roots plus `--ca-bundle <file>` /
//!   `AWS_CA_BUNDLE` (ISO partitions, TLS-intercepting proxies), plus
//!   `--jwks-ca-file` for key fetches; the API server is trusted through its
//!   own CA alone (the ServiceAccount's `ca.crt`), as in-cluster clients do.
//!   A bundle file is PEM; every `CERTIFICATE` block is added (not instead
//!   of the system's roots), other blocks are ignored; certificates rustls
//!   cannot use as trust anchors are skipped with a warning; a file with
//!   none left, unreadable or not PEM stops the agent at start.
//! - **Proxy** ([`proxy_from`]): `HTTPS_PROXY` for `https://` URLs,
//!   `HTTP_PROXY` for `http://` ones, `ALL_PROXY` for both, `NO_PROXY`
//!   bypasses (upper or lower case, the upper one wins), read from the
//!   environment the agent was given.
//! - **Timeouts**: the SDK's own for EKS Auth (from its config); for
//!   [`HttpsClient::get`], connect [`GET_CONNECT_TIMEOUT`], the whole fetch
//!   [`GET_TIMEOUT`], bodies capped at [`GET_MAX_BYTES`].
//!
//! The AWS SDKs for Go, Python and Java read `AWS_CA_BUNDLE` themselves; the
//! Rust SDK does not, so the agent loads the file and hands the SDK this
//! client (the SDK's own rustls/aws-lc connector, built with our trust and
//! proxy).

mod proxy;
mod trust;

pub use proxy::proxy_from;
pub use trust::{CaBundle, CaBundleError, ENV, Trust};

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aws_smithy_async::rt::sleep::SharedAsyncSleep;
use aws_smithy_http_client::Connector;
pub use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::rustls_provider::CryptoMode;
use aws_smithy_http_client::tls::{Provider, TlsContext};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::{
    RuntimeComponents, RuntimeComponentsBuilder,
};
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::timeout::TimeoutConfig;
use bytes::Bytes;

/// [`HttpsClient::get`]: connect timeout.
pub const GET_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// [`HttpsClient::get`]: the whole fetch, body included.
pub const GET_TIMEOUT: Duration = Duration::from_secs(5);
/// [`HttpsClient::get`]: largest body read (a JWKS or discovery document).
pub const GET_MAX_BYTES: usize = 1 << 20;

/// Why a [`HttpsClient::get`] failed. Never quotes the body (a key source
/// that answers with something else could echo a bearer token).
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("fetching {url}: {source}")]
    Request {
        url: String,
        #[source]
        source: BoxError,
    },
    #[error("fetching {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("fetching {url}: timed out")]
    Timeout { url: String },
    #[error("fetching {url}: the answer is larger than {GET_MAX_BYTES} bytes")]
    TooLarge { url: String },
}

impl GetError {
    /// The HTTP status the server answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            GetError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Connect and read timeouts: the SDK asks for a connector per setting.
type TimeoutKey = (Option<Duration>, Option<Duration>);

/// The HTTPS client (see the module contract): the SDK's own connector
/// (rustls with aws-lc, one connection pool per timeout setting) built with
/// our trust store and proxy, for the SDK ([`HttpsClient::shared`]) and for
/// plain GETs ([`HttpsClient::get`]).
///
/// Unlike the SDK's default client, it sets TLS up when the SDK client is
/// built (the SDK's `validate_base_client_config` hook, called by
/// `Client::from_conf`): the root store (reading and parsing every system
/// root, ~150 certificates, milliseconds of CPU) is built before the agent
/// is ready, instead of inside the first EKS Auth calls on a fresh node.
#[derive(Debug, Clone)]
pub struct HttpsClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tls: TlsContext,
    proxy: ProxyConfig,
    connectors: RwLock<HashMap<TimeoutKey, SharedHttpConnector>>,
    built: AtomicUsize,
}

impl HttpsClient {
    pub fn new(trust: &Trust, proxy: ProxyConfig) -> Self {
        let tls = TlsContext::builder()
            .with_trust_store(trust.store())
            .build()
            .expect("building a TLS context from a trust store cannot fail");
        Self {
            inner: Arc::new(Inner {
                tls,
                proxy,
                connectors: RwLock::new(HashMap::new()),
                built: AtomicUsize::new(0),
            }),
        }
    }

    pub fn shared(&self) -> SharedHttpClient {
        SharedHttpClient::new(self.clone())
    }

    /// Connectors built so far (one per timeout setting asked for).
    pub fn connectors_built(&self) -> usize {
        self.inner.built.load(Ordering::Relaxed)
    }

    fn connector(
        &self,
        key: TimeoutKey,
        settings: &HttpConnectorSettings,
        sleep: Option<SharedAsyncSleep>,
    ) -> SharedHttpConnector {
        if let Some(c) = self
            .inner
            .connectors
            .read()
            .expect("connector cache lock")
            .get(&key)
        {
            return c.clone();
        }
        let mut connectors = self.inner.connectors.write().expect("connector cache lock");
        connectors
            .entry(key)
            .or_insert_with(|| {
                let mut builder = Connector::builder()
                    .connector_settings(settings.clone())
                    .proxy_config(self.inner.proxy.clone());
                builder.set_sleep_impl(sleep);
                let connector = builder
                    .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
                    .tls_context(self.inner.tls.clone())
                    .build();
                self.inner.built.fetch_add(1, Ordering::Relaxed);
                SharedHttpConnector::new(connector)
            })
            .clone()
    }

    /// `GET url` (JSON), with `Authorization: Bearer <bearer>` if given:
    /// the body of a 2xx answer, at most [`GET_MAX_BYTES`], within
    /// [`GET_TIMEOUT`].
    pub async fn get(&self, url: &str, bearer: Option<&str>) -> Result<Bytes, GetError> {
        use http_body_util::BodyExt;
        let request_err = |source: BoxError| GetError::Request {
            url: url.to_owned(),
            source,
        };
        let settings = HttpConnectorSettings::builder()
            .connect_timeout(GET_CONNECT_TIMEOUT)
            .read_timeout(GET_TIMEOUT)
            .build();
        let connector = self.connector(
            (settings.connect_timeout(), settings.read_timeout()),
            &settings,
            Some(
                aws_smithy_async::rt::sleep::default_async_sleep().ok_or_else(|| {
                    request_err("no async sleep implementation (tokio runtime)".into())
                })?,
            ),
        );
        let mut req = http::Request::get(url).header(http::header::ACCEPT, "application/json");
        if let Some(token) = bearer {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(SdkBody::empty())
            .map_err(|e| request_err(e.into()))?;
        let req = HttpRequest::try_from(req).map_err(|e| request_err(e.into()))?;
        let fetch = async {
            let resp = connector
                .call(req)
                .await
                .map_err(|e| request_err(e.into()))?;
            let status = resp.status().as_u16();
            if !(200..300).contains(&status) {
                return Err(GetError::Status {
                    url: url.to_owned(),
                    status,
                });
            }
            http_body_util::Limited::new(resp.into_body(), GET_MAX_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        GetError::TooLarge {
                            url: url.to_owned(),
                        }
                    } else {
                        request_err(e)
                    }
                })
        };
        tokio::time::timeout(GET_TIMEOUT, fetch)
            .await
            .map_err(|_| GetError::Timeout {
                url: url.to_owned(),
            })?
    }
}

/// The settings the SDK's orchestrator derives from a `TimeoutConfig` when
/// it asks for a connector (aws-smithy-runtime, `try_attempt`).
fn settings_from(timeouts: Option<&TimeoutConfig>) -> HttpConnectorSettings {
    let mut builder = HttpConnectorSettings::builder();
    if let Some(t) = timeouts {
        builder.set_connect_timeout(t.connect_timeout());
        builder.set_read_timeout(t.read_timeout());
    }
    builder.build()
}

impl HttpClient for HttpsClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        let key = (settings.connect_timeout(), settings.read_timeout());
        self.connector(key, settings, components.sleep_impl())
    }

    fn validate_base_client_config(
        &self,
        components: &RuntimeComponentsBuilder,
        cfg: &ConfigBag,
    ) -> Result<(), BoxError> {
        let settings = settings_from(cfg.load::<TimeoutConfig>());
        let key = (settings.connect_timeout(), settings.read_timeout());
        self.connector(key, &settings, components.sleep_impl());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connector the first EKS Auth call uses is the one built with the
    /// SDK client (same timeout key), not a new one built inside the call.
    #[tokio::test]
    async fn tls_is_set_up_with_the_client_for_the_timeouts_calls_use() {
        use aws_credential_types::Credentials;
        use aws_credential_types::provider::SharedCredentialsProvider;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (answered, mut calls) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = answered.send(());
            }
        });
        let client = HttpsClient::new(&Trust::system(), ProxyConfig::disabled());
        let eksauth = crate::eksauth::EksAuth::with_http_client(
            crate::eksauth::EksAuthConfig {
                cluster_name: "c".into(),
                endpoint: Some(format!("http://{addr}")),
                region: Some("us-west-2".into()),
                connect_timeout: Duration::from_secs(5),
                request_timeout: Duration::from_secs(30),
                max_attempts: 1,
                credentials: Some(SharedCredentialsProvider::new(Credentials::new(
                    "AKIDTEST", "secret", None, None, "test",
                ))),
            },
            Some(client.shared()),
            std::sync::Arc::new(crate::metrics::Metrics::new()),
        )
        .await;
        assert_eq!(client.connectors_built(), 1, "TLS set up with the client");
        assert!(eksauth.assume("t").await.is_err());
        calls.recv().await.expect("the call reached the listener");
        assert_eq!(
            client.connectors_built(),
            1,
            "the call used the connector built at start"
        );
    }
}

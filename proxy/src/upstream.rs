//! The client the proxy calls AI providers with: hyper-util's pooled client
//! (HTTP/1.1 and HTTP/2, what reqwest is built on) over TLS. TLS is rustls
//! with ring (the rustls and ring async-nats already builds) and Mozilla's
//! root certificates (`webpki-roots`), so `https://api.openai.com` is
//! verified the same way on every machine, with or without a system CA
//! bundle. Certificates of a private authority (an OpenAI-compatible server
//! inside a company network) are added with `TOLLGATE_UPSTREAM_CA_FILE`.
//! Plain `http://` stays allowed for local servers and tests.
//!
//! Behind an egress proxy, `HTTPS_PROXY` (or `ALL_PROXY`, lower case too)
//! names an `http://` proxy that `https://` calls tunnel through with
//! `CONNECT`, except to hosts in `NO_PROXY`, as curl reads them
//! ([`Egress::from_env`]). Plain `http://` calls always go direct.
//!
//! Errors are described from their causes only: no URL (Gemini's may carry
//! a key) and no header ever appears in them.

use crate::providers::UpstreamRequest;
use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyDataStream, BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
pub use rustls::pki_types::CertificateDer;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// How long a connection to a provider may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle pooled connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// What the proxy calls itself: some provider front ends refuse requests
/// without any user agent.
const USER_AGENT: &str = concat!("tollgate/", env!("CARGO_PKG_VERSION"));

/// A provider's answer: status, headers, and a body read as it arrives.
pub type Response = hyper::Response<Incoming>;

/// Cheap to clone; one per HTTP thread.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<hyper_rustls::HttpsConnector<EgressConnector>, Full<Bytes>>,
}

/// Which `https://` calls go through an egress proxy, and which one.
#[derive(Clone, Default)]
pub struct Egress(Option<Arc<Matcher>>);

impl Egress {
    /// Direct connections only.
    pub fn direct() -> Egress {
        Egress(None)
    }

    /// From `HTTPS_PROXY`/`ALL_PROXY`/`NO_PROXY` (either case), as curl reads them.
    pub fn from_env() -> Egress {
        Egress(Some(Arc::new(Matcher::from_env())))
    }

    /// Every `https://` call through the `http://` proxy at `proxy_url`.
    pub fn via(proxy_url: &str) -> Egress {
        Egress(Some(Arc::new(Matcher::builder().https(proxy_url).build())))
    }

    /// The proxy a call to `dst` goes through, if any.
    fn intercept(
        &self,
        dst: &hyper::Uri,
    ) -> Option<(hyper::Uri, Option<hyper::header::HeaderValue>)> {
        if dst.scheme_str() != Some("https") {
            return None;
        }
        let intercept = self.0.as_ref()?.intercept(dst)?;
        Some((intercept.uri().clone(), intercept.basic_auth().cloned()))
    }
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The matcher's own Debug would print proxy credentials.
        f.write_str(if self.0.is_some() {
            "Egress(proxy rules)"
        } else {
            "Egress(direct)"
        })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Opens the TCP connection under TLS: straight to the provider, or a
/// `CONNECT` tunnel through the egress proxy.
#[derive(Clone)]
pub struct EgressConnector {
    http: HttpConnector,
    egress: Egress,
}

impl tower_service::Service<hyper::Uri> for EgressConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: hyper::Uri) -> Self::Future {
        let mut http = self.http.clone();
        let intercept = self.egress.intercept(&dst);
        Box::pin(async move {
            let Some((proxy, auth)) = intercept else {
                return http.call(dst).await.map_err(Into::into);
            };
            let mut tunnel = Tunnel::new(proxy, http);
            if let Some(auth) = auth {
                tunnel = tunnel.with_auth(auth);
            }
            std::future::poll_fn(|cx| tunnel.poll_ready(cx)).await?;
            tunnel
                .call(dst)
                .await
                .map_err(|e| BoxError::from(format!("through the egress proxy (HTTPS_PROXY): {e}")))
        })
    }
}

/// Why a provider could not be called or read, with every cause.
#[derive(Debug, thiserror::Error)]
#[error("{text}")]
pub struct UpstreamError {
    text: String,
    /// The request may have reached the provider (it failed after the
    /// connection was made), so the provider may have done the work.
    may_have_reached: bool,
}

impl UpstreamError {
    /// Nothing was sent: no connection to the provider was made.
    fn not_sent(text: impl Into<String>) -> UpstreamError {
        UpstreamError {
            text: text.into(),
            may_have_reached: false,
        }
    }

    /// Whether the provider may have received the request, and so may
    /// bill for it: anything but a failure to connect (DNS, refused, TLS,
    /// the egress proxy's tunnel).
    pub fn may_have_reached(&self) -> bool {
        self.may_have_reached
    }

    fn from_chain(err: &(dyn std::error::Error + 'static)) -> UpstreamError {
        let mut text = err.to_string();
        let mut source = err.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        UpstreamError {
            text,
            may_have_reached: true,
        }
    }
}

impl UpstreamClient {
    /// Trusts Mozilla's roots and `extra_roots`; connects as `egress` says.
    pub fn new(
        extra_roots: &[CertificateDer<'static>],
        egress: Egress,
    ) -> anyhow::Result<UpstreamClient> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(extra_roots)?)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(EgressConnector { http, egress });
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .build(https);
        Ok(UpstreamClient { client })
    }

    /// Sends `req`; returns once the provider's status and headers arrived.
    pub async fn send(&self, req: &UpstreamRequest) -> Result<Response, UpstreamError> {
        let uri: hyper::Uri = req
            .url
            .parse()
            .map_err(|_| UpstreamError::not_sent("the provider's base URL is not a valid URL"))?;
        let mut request = hyper::Request::new(Full::new(req.body.clone()));
        *request.method_mut() = req.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = req.headers.clone();
        request
            .headers_mut()
            .entry(hyper::header::USER_AGENT)
            .or_insert(hyper::header::HeaderValue::from_static(USER_AGENT));
        self.client.request(request).await.map_err(|e| {
            let connect = e.is_connect();
            let mut err = UpstreamError::from_chain(&e);
            err.may_have_reached = !connect;
            err
        })
    }
}

/// The whole body of a (JSON) answer.
pub async fn read_all(response: Response) -> Result<Bytes, UpstreamError> {
    response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| UpstreamError::from_chain(&e))
}

/// The body of a (streamed) answer, chunk by chunk as it arrives.
pub fn body_stream(response: Response) -> BodyDataStream<Incoming> {
    BodyDataStream::new(response.into_body())
}

/// Mozilla's roots plus `extra_roots`, with ring. ALPN is set by the
/// connector (HTTP/2, then HTTP/1.1).
fn tls_config(extra_roots: &[CertificateDer<'static>]) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra_roots {
        roots
            .add(cert.clone())
            .context("an extra root certificate is not a usable authority")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Every certificate in the PEM file at `path` (`TOLLGATE_UPSTREAM_CA_FILE`);
/// an error names the file.
pub fn read_roots(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{}: not a PEM certificate file: {e}", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{}: no certificate (-----BEGIN CERTIFICATE-----) found",
        path.display()
    );
    tls_config(&certs).with_context(|| path.display().to_string())?;
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusts_the_public_authorities() {
        assert!(webpki_roots::TLS_SERVER_ROOTS.len() > 100);
        tls_config(&[]).unwrap();
    }

    #[test]
    fn a_file_without_certificates_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("tollgate-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("empty.pem");
        std::fs::write(&file, "not a certificate\n").unwrap();
        let err = format!("{:#}", read_roots(&file).unwrap_err());
        assert!(
            err.contains("empty.pem") && err.contains("no certificate"),
            "{err}"
        );
        let err = format!("{:#}", read_roots(&dir.join("missing.pem")).unwrap_err());
        assert!(err.contains("missing.pem"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

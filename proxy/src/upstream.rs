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
//! With `TOLLGATE_PRIVATE_UPSTREAMS=deny` ([`Reach::Public`]), a call to a
//! base URL a project set (a custom provider, or its own URL for a built-in
//! one) is refused when its host is, or resolves to, a loopback, private,
//! link-local or other non-public address: on a shared deployment, whoever
//! holds a project's secret key could otherwise make the proxy call the
//! operator's internal services or a cloud metadata endpoint. The check is
//! made on the addresses the connection is then made to, so a name that
//! resolves differently the second time (DNS rebinding) gains nothing. The
//! operator's own base URLs (`TOLLGATE_*_BASE_URL`, by host and port) may
//! be anywhere. Behind an egress proxy only a literal address can be
//! checked; the egress proxy resolves names.
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
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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

/// Which addresses provider calls may reach (`TOLLGATE_PRIVATE_UPSTREAMS`).
#[derive(Clone, Debug, Default)]
pub enum Reach {
    /// Any address: a model server on the same machine or network is a
    /// common custom provider.
    #[default]
    Any,
    /// Public addresses only, except for these `host:port` (the operator's
    /// own base URLs), which may be anywhere.
    Public { trusted: Arc<[(String, u16)]> },
}

impl Reach {
    /// Public addresses only, except for the hosts and ports of `base_urls`.
    pub fn public_except(base_urls: &crate::providers::BaseUrls) -> Reach {
        let trusted = [
            &base_urls.openai,
            &base_urls.anthropic,
            &base_urls.gemini,
            &base_urls.xai,
        ]
        .into_iter()
        .filter_map(|url| url.parse::<hyper::Uri>().ok())
        .filter_map(|uri| host_and_port(&uri))
        .collect();
        Reach::Public { trusted }
    }

    /// Whether a call to `dst` may only reach public addresses.
    fn checks(&self, dst: &hyper::Uri) -> bool {
        match self {
            Reach::Any => false,
            Reach::Public { trusted } => {
                host_and_port(dst).is_none_or(|authority| !trusted.contains(&authority))
            }
        }
    }
}

/// A URI's host (lower case, without an IPv6 address's brackets) and port
/// (the scheme's default if none is written).
fn host_and_port(uri: &hyper::Uri) -> Option<(String, u16)> {
    let host = uri.host()?.trim_matches(|c| c == '[' || c == ']');
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    Some((host.to_ascii_lowercase(), port))
}

/// Whether `ip` is an address on the public internet: not loopback,
/// private, link-local (cloud metadata endpoints), shared (carrier NAT),
/// multicast, reserved, documentation or benchmarking space, nor an IPv6
/// address that embeds such an IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)
            };
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            // IPv4-compatible (::a.b.c.d, deprecated), NAT64 (64:ff9b::/96),
            // 6to4 (2002::/16): the IPv4 address inside decides.
            if s[..6] == [0; 6] {
                return !v6.is_unspecified()
                    && !v6.is_loopback()
                    && is_public_v4(embedded(s[6], s[7]));
            }
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public_v4(embedded(s[6], s[7]));
            }
            if s[0] == 0x2002 {
                return is_public_v4(embedded(s[1], s[2]));
            }
            !(v6.is_multicast()
                || v6.is_unique_local()
                || v6.is_unicast_link_local()
                || s[0] & 0xffc0 == 0xfec0 // site-local, deprecated
                || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network"
        || a == 10
        || a == 127
        || a >= 224 // multicast, reserved, broadcast
        || (a == 100 && (64..128).contains(&b)) // shared (carrier NAT)
        || (a == 169 && b == 254) // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 192 && b == 0 && (c == 0 || c == 2)) // protocol assignments, documentation
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113))
}

/// A call [`Reach::Public`] refused. The address is logged, not told to
/// the client: it would map the operator's network for whoever probes it.
#[derive(Debug, thiserror::Error)]
#[error("the provider's base URL leads to a loopback, private or link-local address, which this server does not call for base URLs a project sets (TOLLGATE_PRIVATE_UPSTREAMS=deny)")]
pub struct AddressRefused;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Opens the TCP connection under TLS: straight to the provider, or a
/// `CONNECT` tunnel through the egress proxy.
#[derive(Clone)]
pub struct EgressConnector {
    http: HttpConnector,
    egress: Egress,
    reach: Reach,
}

/// Refuses a literal address that `allowed` refuses.
fn check_literal(host: &str, allowed: fn(IpAddr) -> bool) -> Result<(), BoxError> {
    match host.parse::<IpAddr>() {
        Ok(ip) if !allowed(ip) => {
            tracing::warn!(address = %ip, "refused a provider call to a non-public address (TOLLGATE_PRIVATE_UPSTREAMS=deny)");
            Err(Box::new(AddressRefused))
        }
        _ => Ok(()),
    }
}

/// Resolves `dst`'s host, refuses it if `allowed` refuses any of its
/// addresses ([`is_public`]), and connects to the addresses it checked (not
/// to a second resolution).
async fn connect_checked(
    mut http: HttpConnector,
    dst: hyper::Uri,
    allowed: fn(IpAddr) -> bool,
) -> Result<TokioIo<TcpStream>, BoxError> {
    use tower_service::Service as _;
    let Some((host, port)) = host_and_port(&dst) else {
        return Err("the provider's base URL has no host".into());
    };
    check_literal(&host, allowed)?;
    if host.parse::<IpAddr>().is_ok() {
        return http.call(dst).await.map_err(Into::into);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| BoxError::from(format!("dns error: {e}")))?
        .collect();
    if let Some(bad) = addrs.iter().find(|a| !allowed(a.ip())) {
        tracing::warn!(host = %host, address = %bad.ip(), "refused a provider call to a non-public address (TOLLGATE_PRIVATE_UPSTREAMS=deny)");
        return Err(Box::new(AddressRefused));
    }
    let mut last: BoxError = format!("dns error: {host} has no address").into();
    for addr in addrs {
        let uri: hyper::Uri = format!("http://{addr}").parse()?;
        match http.call(uri).await {
            Ok(io) => return Ok(io),
            Err(e) => last = e.into(),
        }
    }
    Err(last)
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
        let checked = self.reach.checks(&dst);
        Box::pin(async move {
            let Some((proxy, auth)) = intercept else {
                if checked {
                    return connect_checked(http, dst, is_public).await;
                }
                return http.call(dst).await.map_err(Into::into);
            };
            if checked {
                // The egress proxy resolves names; a literal is checked here.
                let host = host_and_port(&dst).map(|(host, _)| host);
                check_literal(&host.unwrap_or_default(), is_public)?;
            }
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
    /// Refused by [`Reach::Public`]: the base URL leads to a non-public address.
    refused: bool,
}

impl UpstreamError {
    /// Nothing was sent: no connection to the provider was made.
    fn not_sent(text: impl Into<String>) -> UpstreamError {
        UpstreamError {
            text: text.into(),
            may_have_reached: false,
            refused: false,
        }
    }

    /// Whether [`Reach::Public`] refused the call's address (nothing was sent).
    pub fn address_refused(&self) -> bool {
        self.refused
    }

    /// Whether the provider may have received the request, and so may
    /// bill for it: anything but a failure to connect (DNS, refused, TLS,
    /// the egress proxy's tunnel).
    pub fn may_have_reached(&self) -> bool {
        self.may_have_reached
    }

    fn from_chain(err: &(dyn std::error::Error + 'static)) -> UpstreamError {
        let mut text = err.to_string();
        let mut refused = false;
        let mut source = err.source();
        while let Some(cause) = source {
            refused |= cause.is::<AddressRefused>();
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
            refused,
        }
    }
}

impl UpstreamClient {
    /// Trusts Mozilla's roots and `extra_roots`; connects as `egress` says,
    /// to the addresses `reach` allows.
    pub fn new(
        extra_roots: &[CertificateDer<'static>],
        egress: Egress,
        reach: Reach,
    ) -> anyhow::Result<UpstreamClient> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(extra_roots)?)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(EgressConnector {
                http,
                egress,
                reach,
            });
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

    #[test]
    fn public_addresses_are_told_from_the_rest() {
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.0.1",
            "172.32.0.1",
            "192.169.0.1",
            "198.20.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        for private in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "10.0.0.5",
            "100.64.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:a00:1::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
    }

    #[test]
    fn the_operators_own_base_urls_are_trusted_by_host_and_port() {
        let reach = Reach::public_except(&crate::providers::BaseUrls {
            openai: "http://127.0.0.1:4000/v1".to_owned(),
            anthropic: "https://LLM.internal".to_owned(),
            gemini: "http://[::1]:9000".to_owned(),
            ..crate::providers::BaseUrls::default()
        });
        let checks = |url: &str| reach.checks(&url.parse().unwrap());
        assert!(!checks("http://127.0.0.1:4000/v1/chat/completions"));
        assert!(checks("http://127.0.0.1:4001/v1"), "another port");
        assert!(checks("http://127.0.0.1/v1"), "port 80");
        assert!(!checks("https://llm.internal/v1/messages"));
        assert!(!checks("https://llm.internal:443/v1/messages"));
        assert!(checks("http://llm.internal/v1"), "port 80, not 443");
        assert!(!checks("http://[::1]:9000/v1beta"));
        assert!(!checks("https://api.x.ai/v1/chat/completions"));
        assert!(checks("https://api.together.xyz/v1"));
        assert!(!Reach::Any.checks(&"http://10.0.0.1/v1".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_name_is_refused_by_what_it_resolves_to_and_reached_by_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let err = connect_checked(
            http.clone(),
            format!("http://localhost:{port}").parse().unwrap(),
            is_public,
        )
        .await
        .unwrap_err();
        assert!(err.is::<AddressRefused>(), "{err}");
        let err = connect_checked(
            http.clone(),
            format!("http://127.0.0.1:{port}").parse().unwrap(),
            is_public,
        )
        .await
        .unwrap_err();
        assert!(err.is::<AddressRefused>(), "{err}");
        // Allowed: connected to an address it resolved ("localhost" may
        // resolve to ::1 first, where nothing listens, then 127.0.0.1).
        let allowed = connect_checked(
            http,
            format!("https://localhost:{port}").parse().unwrap(),
            |_| true,
        );
        let (io, accepted) = tokio::join!(allowed, listener.accept());
        let (io, (conn, _)) = (io.unwrap(), accepted.unwrap());
        assert_eq!(io.inner().local_addr().unwrap(), conn.peer_addr().unwrap());
    }
}

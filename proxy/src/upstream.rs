//! The client the proxy calls AI providers with: hyper-util's pooled client
//! (HTTP/1.1 and HTTP/2, what reqwest is built on) over TLS. TLS is rustls
//! with ring (the rustls and ring async-nats already builds) and Mozilla's
//! root certificates (`webpki-roots`), so `https://api.openai.com` is
//! verified the same way on every machine, with or without a system CA
//! bundle. Certificates of a private authority (an OpenAI-compatible server
//! inside a company network) are added with `TOLLGATE_UPSTREAM_CA_FILE`.
//! Plain `http://` stays allowed for local servers and tests; those calls go
//! through the proxy's own HTTP/1.1 client (`proxy/src/h1.rs`), which reads a
//! streamed answer straight from the socket instead of one HTTP chunk per
//! task turn, over the same connectors (and so the same address checks),
//! with pools of its own.
//!
//! Behind an egress proxy, `HTTPS_PROXY` (or `ALL_PROXY`, lower case too)
//! names an `http://` proxy that `https://` calls tunnel through with
//! `CONNECT`, except to hosts in `NO_PROXY`, as curl reads them
//! ([`Egress::from_env`]). Plain `http://` calls always go direct.
//!
//! With `TOLLGATE_PRIVATE_UPSTREAMS=deny`, a call to a base URL a project
//! set (a custom provider, or its own URL for a built-in one) goes through
//! a second client, with its own pool, that refuses a host that is, or
//! resolves to, a loopback, private, link-local or other non-public address
//! ([`is_public`]): on a shared deployment, whoever holds a project's
//! secret key could otherwise make the proxy call the operator's internal
//! services or a cloud metadata endpoint. Names are checked by the resolver
//! the connector then connects with (`PublicOnly`), so a name that
//! resolves elsewhere a second time (DNS rebinding) gains nothing. Hosts
//! some resolvers read as an IPv4 number (`2130706433`, `127.1`) are
//! refused. The operator's own base URLs (`TOLLGATE_*_BASE_URL`) may be
//! anywhere. Behind an egress proxy, which resolves names itself, the
//! check is best effort: literals and numeric hosts are refused, and a
//! name is checked by what it resolves to here, when it resolves here at
//! all; the egress proxy must apply its own rules.
//!
//! Errors are described from their causes only: no URL (Gemini's may carry
//! a key) and no header ever appears in them.

use crate::providers::UpstreamRequest;
use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyDataStream, BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
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
/// How long a name a call goes through the egress proxy for is looked up
/// here too, for `TOLLGATE_PRIVATE_UPSTREAMS=deny`.
const LOCAL_LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);
/// How many of those lookups run at once, process-wide.
const LOCAL_LOOKUPS: usize = 16;
/// How long an idle pooled connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// What the proxy calls itself: some provider front ends refuse requests
/// without any user agent.
const USER_AGENT: &str = concat!("tollgate/", env!("CARGO_PKG_VERSION"));

/// A provider's answer: status, headers, and a body read as it arrives.
pub type Response = hyper::Response<Body>;

/// A provider's answer body: from hyper's client (`https://`) or read
/// straight from the socket (`http://`, `proxy/src/h1.rs`).
pub enum Body {
    Hyper(Incoming),
    Raw(crate::h1::RawBody),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Body::Raw(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Hyper(b) => b.is_end_stream(),
            Body::Raw(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Body::Hyper(b) => b.size_hint(),
            Body::Raw(b) => b.size_hint(),
        }
    }
}

/// Cheap to clone; one per HTTP thread.
#[derive(Clone)]
pub struct UpstreamClient {
    open: Client<hyper_rustls::HttpsConnector<EgressConnector>, Full<Bytes>>,
    /// For base URLs a project set, with `TOLLGATE_PRIVATE_UPSTREAMS=deny`.
    checked: Option<Client<hyper_rustls::HttpsConnector<EgressConnector<PublicOnly>>, Full<Bytes>>>,
    /// `http://` calls: the same connectors, each with its own pool.
    plain: Plain<EgressConnector>,
    plain_checked: Option<Plain<EgressConnector<PublicOnly>>>,
}

#[derive(Clone)]
struct Plain<C> {
    connect: C,
    pool: Arc<crate::h1::Pool>,
}

impl<C> Plain<C>
where
    C: tower_service::Service<
            hyper::Uri,
            Response = TokioIo<TcpStream>,
            Error = BoxError,
            Future = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>,
        > + Clone,
{
    fn new(connect: C) -> Plain<C> {
        Plain {
            connect,
            pool: crate::h1::Pool::new(IDLE_TIMEOUT),
        }
    }

    async fn send(&self, req: crate::h1::Request<'_>) -> Result<Response, UpstreamError> {
        let mut connect = self.connect.clone();
        let response = crate::h1::send(
            &self.pool,
            move |dst| async move {
                std::future::poll_fn(|cx| connect.poll_ready(cx)).await?;
                Ok(connect.call(dst).await?.into_inner())
            },
            req,
        )
        .await?;
        Ok(response.map(Body::Raw))
    }
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

/// Whether `ip` is an address on the public internet: inside `2000::/3`
/// for IPv6, and for both families not loopback, private, link-local
/// (cloud metadata endpoints), shared (carrier NAT), multicast, reserved,
/// documentation or benchmarking space, nor an IPv6 form that embeds such
/// an IPv4 address.
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
            // NAT64 (64:ff9b::/96): the IPv4 address inside decides.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public_v4(embedded(s[6], s[7]));
            }
            // 6to4 (2002::/16) likewise.
            if s[0] == 0x2002 {
                return is_public_v4(embedded(s[1], s[2]));
            }
            // Global unicast only, less Teredo (2001::/32, which tunnels
            // to an IPv4 address), benchmarking (2001:2::/48) and
            // documentation (2001:db8::/32, and 3fff::/20 inside the
            // unallocated 3ff0::/12 refused here whole).
            s[0] & 0xe000 == 0x2000
                && !(s[0] == 0x2001 && (s[1] == 0 || s[1] == 0x0db8 || (s[1] == 2 && s[2] == 0)))
                && s[0] & 0xfff0 != 0x3ff0
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

/// A call to a base URL a project set, refused by
/// `TOLLGATE_PRIVATE_UPSTREAMS=deny`. The address is logged, not told to
/// the client: it would map the operator's network for whoever probes it.
#[derive(Debug, thiserror::Error)]
#[error("the provider's base URL leads to a loopback, private or link-local address, which this server does not call for base URLs a project sets (TOLLGATE_PRIVATE_UPSTREAMS=deny)")]
pub struct AddressRefused;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn refused(host: &str, address: IpAddr) -> BoxError {
    tracing::warn!(host = %host, address = %address, "refused a provider call to a non-public address (TOLLGATE_PRIVATE_UPSTREAMS=deny)");
    Box::new(AddressRefused)
}

/// Refuses `addrs` (what `host` resolved to) if `allowed` refuses any.
fn check_all(
    host: &str,
    addrs: &[SocketAddr],
    allowed: fn(IpAddr) -> bool,
) -> Result<(), BoxError> {
    match addrs.iter().find(|a| !allowed(a.ip())) {
        Some(bad) => Err(refused(host, bad.ip())),
        None => Ok(()),
    }
}

/// A host as a URL names it: an IP literal (IPv6 without its brackets) or a
/// name.
fn host_of(dst: &hyper::Uri) -> &str {
    dst.host()
        .unwrap_or_default()
        .trim_matches(|c| c == '[' || c == ']')
}

/// Whether a host that is not a standard IP literal would still be read
/// as an IPv4 address by some resolvers (`2130706433`, `0x7f.1`, `0177.0.0.1`,
/// `127.1`): its last label is a number (the URL standard's rule).
fn looks_numeric(host: &str) -> bool {
    let last = host
        .trim_end_matches('.')
        .rsplit('.')
        .next()
        .unwrap_or_default();
    !last.is_empty()
        && (last.bytes().all(|b| b.is_ascii_digit())
            || last
                .strip_prefix("0x")
                .or_else(|| last.strip_prefix("0X"))
                .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit())))
}

/// Resolves names like the default resolver, and refuses a name if any of
/// its addresses is not public ([`is_public`]); the connector then connects
/// to the addresses checked here, not to a second resolution, so a name
/// that resolves elsewhere the next time (DNS rebinding) gains nothing.
#[derive(Clone)]
struct PublicOnly {
    gai: GaiResolver,
    allowed: fn(IpAddr) -> bool,
}

impl tower_service::Service<Name> for PublicOnly {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.gai.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = name.as_str().to_owned();
        let resolving = self.gai.call(name);
        let allowed = self.allowed;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = resolving.await?.collect();
            check_all(&host, &addrs, allowed)?;
            Ok(addrs.into_iter())
        })
    }
}

/// Opens the TCP connection under TLS: straight to the provider, or a
/// `CONNECT` tunnel through the egress proxy. `R` resolves the providers'
/// names: the system's resolver, or `PublicOnly` for base URLs a project
/// set when `TOLLGATE_PRIVATE_UPSTREAMS=deny`.
#[derive(Clone)]
pub struct EgressConnector<R = GaiResolver> {
    http: HttpConnector<R>,
    /// What reaches the egress proxy, which is the operator's, and may be
    /// on a private address.
    to_proxy: HttpConnector,
    egress: Egress,
    /// Refuse literal addresses that `allowed` refuses, and names that some
    /// resolvers read as one.
    checks: Option<fn(IpAddr) -> bool>,
}

impl EgressConnector<PublicOnly> {
    /// Reaching only addresses `allowed` allows ([`is_public`]), the
    /// egress proxy excepted.
    fn checked(egress: Egress, allowed: fn(IpAddr) -> bool) -> Self {
        EgressConnector {
            http: connector(PublicOnly {
                gai: GaiResolver::new(),
                allowed,
            }),
            to_proxy: connector(GaiResolver::new()),
            egress,
            checks: Some(allowed),
        }
    }
}

impl<R> EgressConnector<R> {
    /// The checks made before connecting to `dst`, beyond the resolver's.
    async fn check(&self, dst: &hyper::Uri, tunnelled: bool) -> Result<(), BoxError> {
        let Some(allowed) = self.checks else {
            return Ok(());
        };
        let host = host_of(dst);
        if let Ok(ip) = host.parse::<IpAddr>() {
            // A literal: no resolver sees it.
            return if allowed(ip) {
                Ok(())
            } else {
                Err(refused(host, ip))
            };
        }
        if looks_numeric(host) {
            // Refused whatever it would resolve to: no provider is named so.
            tracing::warn!(host = %host, "refused a provider call to a numeric host (TOLLGATE_PRIVATE_UPSTREAMS=deny)");
            return Err(Box::new(AddressRefused));
        }
        if tunnelled {
            // The egress proxy resolves the name itself, so this is best
            // effort: the name is checked by what it resolves to here, if
            // it does (the egress proxy may resolve it differently; it must
            // apply its own rules). Sending it the checked address instead
            // of the name would break egress allowlists kept by name.
            // Bounded in time (the machine's own resolver may not answer
            // at all behind an egress proxy) and in number (a lookup that
            // timed out still holds a blocking thread until it ends).
            static LOOKUPS: std::sync::LazyLock<tokio::sync::Semaphore> =
                std::sync::LazyLock::new(|| tokio::sync::Semaphore::new(LOCAL_LOOKUPS));
            if let Ok(_permit) = LOOKUPS.try_acquire() {
                let port = dst.port_u16().unwrap_or(443);
                let lookup = tokio::net::lookup_host((host, port));
                if let Ok(Ok(addrs)) = tokio::time::timeout(LOCAL_LOOKUP_TIMEOUT, lookup).await {
                    check_all(host, &addrs.collect::<Vec<_>>(), allowed)?;
                }
            }
        }
        Ok(())
    }
}

impl<R> tower_service::Service<hyper::Uri> for EgressConnector<R>
where
    R: Clone + Send + Sync + 'static,
    HttpConnector<R>: tower_service::Service<hyper::Uri, Response = TokioIo<TcpStream>>,
    <HttpConnector<R> as tower_service::Service<hyper::Uri>>::Error: Into<BoxError>,
    <HttpConnector<R> as tower_service::Service<hyper::Uri>>::Future: Send,
{
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: hyper::Uri) -> Self::Future {
        let this = self.clone();
        let intercept = self.egress.intercept(&dst);
        Box::pin(async move {
            this.check(&dst, intercept.is_some()).await?;
            let Some((proxy, auth)) = intercept else {
                let mut http = this.http;
                return http.call(dst).await.map_err(Into::into);
            };
            let mut tunnel = Tunnel::new(proxy, this.to_proxy);
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
    /// Refused by `TOLLGATE_PRIVATE_UPSTREAMS=deny`: the base URL leads to
    /// a non-public address.
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

    /// No connection could be made (DNS, refused, the address check).
    pub(crate) fn not_connected(err: &(dyn std::error::Error + 'static)) -> UpstreamError {
        let mut e = UpstreamError::from_chain(err);
        e.may_have_reached = false;
        e
    }

    /// Reading or writing a connection failed; `may_have_reached` if any
    /// of the request was written.
    pub(crate) fn io(err: &std::io::Error, may_have_reached: bool) -> UpstreamError {
        let mut e = UpstreamError::from_chain(err);
        e.may_have_reached = may_have_reached;
        e
    }

    /// Whether `TOLLGATE_PRIVATE_UPSTREAMS=deny` refused the call's address
    /// (nothing was sent).
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
        let mut refused = err.is::<AddressRefused>();
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

/// A connection's TCP options, resolving names with `resolver`.
fn connector<R>(resolver: R) -> HttpConnector<R> {
    let mut http = HttpConnector::new_with_resolver(resolver);
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http
}

/// The pooled client over `connect`.
fn client<R>(
    tls: rustls::ClientConfig,
    connect: EgressConnector<R>,
) -> Client<hyper_rustls::HttpsConnector<EgressConnector<R>>, Full<Bytes>>
where
    EgressConnector<R>: tower_service::Service<
            hyper::Uri,
            Response = TokioIo<TcpStream>,
            Error = BoxError,
            Future = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>,
        > + Clone
        + Send
        + Sync
        + 'static,
{
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(connect);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .build(https)
}

impl UpstreamClient {
    /// Trusts Mozilla's roots and `extra_roots`; connects as `egress` says.
    /// With `deny_private`, calls to base URLs a project set reach public
    /// addresses only (`TOLLGATE_PRIVATE_UPSTREAMS=deny`).
    pub fn new(
        extra_roots: &[CertificateDer<'static>],
        egress: Egress,
        deny_private: bool,
    ) -> anyhow::Result<UpstreamClient> {
        Self::with_check(extra_roots, egress, deny_private.then_some(is_public))
    }

    fn with_check(
        extra_roots: &[CertificateDer<'static>],
        egress: Egress,
        allowed: Option<fn(IpAddr) -> bool>,
    ) -> anyhow::Result<UpstreamClient> {
        let tls = tls_config(extra_roots)?;
        // The checked client has its own pools: a connection is never
        // shared with the operator's calls to the same host.
        let open_connect = EgressConnector {
            http: connector(GaiResolver::new()),
            to_proxy: connector(GaiResolver::new()),
            egress: egress.clone(),
            checks: None,
        };
        let open = client(tls.clone(), open_connect.clone());
        let checked_connect = allowed.map(|allowed| EgressConnector::checked(egress, allowed));
        Ok(UpstreamClient {
            open,
            checked: checked_connect.clone().map(|c| client(tls, c)),
            plain: Plain::new(open_connect),
            plain_checked: checked_connect.map(Plain::new),
        })
    }

    /// Sends `req`; returns once the provider's status and headers arrived.
    /// `set_by_project`: the base URL is the project's own (a custom
    /// provider, or its URL for a built-in one), not the operator's.
    pub async fn send(
        &self,
        req: &UpstreamRequest,
        set_by_project: bool,
    ) -> Result<Response, UpstreamError> {
        let uri: hyper::Uri = req
            .url
            .parse()
            .map_err(|_| UpstreamError::not_sent("the provider's base URL is not a valid URL"))?;
        let mut headers = req.headers.clone();
        headers
            .entry(hyper::header::USER_AGENT)
            .or_insert(hyper::header::HeaderValue::from_static(USER_AGENT));
        if uri.scheme() == Some(&http::uri::Scheme::HTTP) {
            let plain = crate::h1::Request {
                method: &req.method,
                uri: &uri,
                headers: &headers,
                body: &req.body,
            };
            return match (&self.plain_checked, set_by_project) {
                (Some(checked), true) => checked.send(plain).await,
                _ => self.plain.send(plain).await,
            };
        }
        let mut request = hyper::Request::new(Full::new(req.body.clone()));
        *request.method_mut() = req.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let sent = match (&self.checked, set_by_project) {
            (Some(checked), true) => checked.request(request).await,
            _ => self.open.request(request).await,
        };
        sent.map(|r| r.map(Body::Hyper)).map_err(|e| {
            let connect = e.is_connect();
            let mut err = UpstreamError::from_chain(&e);
            err.may_have_reached = !connect;
            err
        })
    }
}

/// The whole body of a (JSON) answer.
pub async fn read_all(response: Response) -> Result<Bytes, UpstreamError> {
    http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| UpstreamError::from_chain(e.as_ref()))
}

/// Largest answer read whole from a provider (a JSON answer; a streamed
/// one's events are bounded by [`crate::providers::MAX_SSE_EVENT_BYTES`]).
/// Base URLs are the projects' to set, so an endless or enormous body must
/// not fill the memory every project shares; real answers, images in them
/// included, are far smaller.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// The body of a (streamed) answer, chunk by chunk as it arrives.
pub fn body_stream(response: Response) -> BodyDataStream<Body> {
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
            "2001::1",
            "2001:2::1",
            "3fff::1",
            "100::1",
            "64:ff9b:1::a00:1",
            "::ffff:0:7f00:1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
    }

    #[test]
    fn hosts_some_resolvers_read_as_numbers_are_told() {
        for numeric in [
            "2130706433",
            "0177.0.0.1",
            "127.1",
            "0x7f.1",
            "0X7F000001",
            "a.0x10",
            "x.0x",
            "1.2.3.4.",
        ] {
            assert!(looks_numeric(numeric), "{numeric}");
        }
        for name in ["localhost", "api.openai.com", "1.2.3.com", "0xzz", "x.0xg"] {
            assert!(!looks_numeric(name), "{name}");
        }
    }

    fn checked(egress: Egress, allowed: fn(IpAddr) -> bool) -> EgressConnector<PublicOnly> {
        EgressConnector::checked(egress, allowed)
    }

    fn was_refused(err: &BoxError) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err.as_ref());
        while let Some(e) = cause {
            if e.is::<AddressRefused>() {
                return true;
            }
            cause = e.source();
        }
        false
    }

    async fn connect(
        mut connector: EgressConnector<PublicOnly>,
        url: &str,
    ) -> Result<TokioIo<TcpStream>, BoxError> {
        use tower_service::Service as _;
        let dst: hyper::Uri = url.parse().unwrap();
        tokio::time::timeout(Duration::from_secs(10), connector.call(dst))
            .await
            .expect("connecting timed out")
    }

    #[tokio::test]
    async fn a_project_url_is_refused_by_what_it_names_or_resolves_to() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        for host in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "[::1]",
            "[::ffff:127.0.0.1]",
            "2130706433",
            "0177.0.0.1",
            "127.1",
            "0x7f.1",
        ] {
            for scheme in ["http", "https"] {
                let url = format!("{scheme}://{host}:{port}/v1");
                let err = connect(checked(Egress::direct(), is_public), &url)
                    .await
                    .unwrap_err();
                assert!(was_refused(&err), "{url}: {err}");
            }
        }
        // Allowed, the name is reached at an address it resolved to
        // ("localhost" may resolve to ::1 first, where nothing listens).
        let url = format!("https://localhost:{port}");
        let io = connect(checked(Egress::direct(), |_| true), &url);
        let (io, accepted) = tokio::join!(io, listener.accept());
        let (io, (conn, _)) = (io.unwrap(), accepted.unwrap());
        assert_eq!(io.inner().local_addr().unwrap(), conn.peer_addr().unwrap());
    }

    #[tokio::test]
    async fn behind_an_egress_proxy_literals_numbers_and_local_names_are_refused() {
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let egress = Egress::via(&format!("http://{}", proxy.local_addr().unwrap()));
        for url in [
            "https://127.0.0.1/v1",
            "https://[fd00::1]/v1",
            "https://2130706433/v1",
            "https://169.254.169.254/v1",
            "https://localhost/v1",
        ] {
            let err = connect(checked(egress.clone(), is_public), url)
                .await
                .unwrap_err();
            assert!(was_refused(&err), "{url}: {err}");
        }
        // A name this machine cannot resolve is left to the egress proxy,
        // which the operator runs, on a private address here.
        let asked = tokio::spawn(async move {
            let (mut conn, _) = proxy.accept().await.unwrap();
            let mut head = vec![0u8; 256];
            let n = tokio::io::AsyncReadExt::read(&mut conn, &mut head)
                .await
                .unwrap_or(0);
            String::from_utf8_lossy(&head[..n]).into_owned()
        });
        let tunnel = connect(
            checked(egress, is_public),
            "https://only-the-egress-proxy-knows.invalid/v1",
        )
        .await;
        assert!(tunnel.is_err(), "the egress proxy hung up");
        let head = asked.await.unwrap();
        assert!(
            head.starts_with("CONNECT only-the-egress-proxy-knows.invalid:443"),
            "{head}"
        );
    }
}

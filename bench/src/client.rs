//! One load-generator worker's HTTP client: one keep-alive HTTP/1.1
//! connection on the worker's own runtime, as wrk keeps one per connection.

use anyhow::{bail, Context as _};
use axum::http::header::CONTENT_TYPE;
use bytes::Bytes;

/// A keep-alive HTTP/1.1 connection of one load-generator worker.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>,
}

impl Conn {
    async fn open(addr: &str) -> anyhow::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender })
    }
}

/// One load-generator worker's HTTP client: a single keep-alive connection
/// (opened on first use, on the worker's runtime; reopened after an error)
/// with fixed headers, posting JSON and reading the whole answer.
pub struct Client {
    addr: String,
    conn: Option<Conn>,
    headers: Vec<(axum::http::HeaderName, axum::http::HeaderValue)>,
}

impl Client {
    /// `base` is `http://host:port`; `headers` go on every request.
    pub fn new(
        base: &str,
        headers: Vec<(axum::http::HeaderName, axum::http::HeaderValue)>,
    ) -> anyhow::Result<Client> {
        Ok(Client {
            addr: base
                .strip_prefix("http://")
                .context("the bench talks plain http")?
                .trim_end_matches('/')
                .to_owned(),
            conn: None,
            headers,
        })
    }

    /// Posts `body` to `path`; the whole answer, or an error for a non-2xx.
    pub async fn post(&mut self, path: &str, body: Bytes) -> anyhow::Result<Bytes> {
        use http_body_util::BodyExt as _;
        if self.conn.is_none() {
            self.conn = Some(Conn::open(&self.addr).await?);
        }
        let conn = self.conn.as_mut().context("connection")?;
        let mut request = axum::http::Request::post(path)
            .header(axum::http::header::HOST, self.addr.as_str())
            .header(CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(body))?;
        for (name, value) in &self.headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        let response = match conn.sender.send_request(request).await {
            Ok(r) => r,
            Err(e) => {
                self.conn = None; // reconnect on the next call
                return Err(e.into());
            }
        };
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("{path}: {status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(bytes)
    }
}

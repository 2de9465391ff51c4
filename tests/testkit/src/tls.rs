//! HTTPS in front of a plain loopback server: [`TlsFront`] terminates TLS
//! with a test certificate for `localhost` and `127.0.0.1` (issued by the
//! test authority in `tests/testkit/tls/ca.pem`, valid until 2126) and
//! forwards the bytes to the server behind it. Tests use it to check that a
//! client really speaks TLS to a provider and verifies its certificate.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The PEM file of the test certificate authority.
pub fn ca_file() -> PathBuf {
    crate::repo_root()
        .join("tests")
        .join("testkit")
        .join("tls")
        .join("ca.pem")
}

/// A running TLS front; stops when dropped.
pub struct TlsFront {
    addr: SocketAddr,
    task: JoinHandle<()>,
    handshakes: Arc<AtomicUsize>,
}

impl TlsFront {
    /// Listens on a free loopback port and forwards every connection, once
    /// its TLS handshake succeeded, to `backend` in plain text. Offers
    /// HTTP/1.1 only.
    pub async fn start(backend: SocketAddr) -> anyhow::Result<TlsFront> {
        Self::start_offering(backend, &[b"http/1.1"]).await
    }

    /// Like [`TlsFront::start`], offering HTTP/2 first and HTTP/1.1 (ALPN),
    /// as the providers' front ends do. `backend` must then speak both
    /// (the mocks do: `axum::serve` tells them apart by the HTTP/2 preface).
    pub async fn start_h2(backend: SocketAddr) -> anyhow::Result<TlsFront> {
        Self::start_offering(backend, &[b"h2", b"http/1.1"]).await
    }

    async fn start_offering(backend: SocketAddr, alpn: &[&[u8]]) -> anyhow::Result<TlsFront> {
        let dir = ca_file().with_file_name("");
        let certs = CertificateDer::pem_file_iter(dir.join("server.pem"))?
            .collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(dir.join("server.key"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counter = handshakes.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, counter) = (acceptor.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return; // the client refused our certificate, or spoke no TLS
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut plain) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Ok(TlsFront {
            addr,
            task,
            handshakes,
        })
    }

    /// `https://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// How many connections completed their TLS handshake so far.
    pub fn connections(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A minimal egress proxy: answers `CONNECT host:port` with 200 and then
/// relays bytes both ways, remembering every target it was asked for.
pub struct ConnectProxy {
    addr: SocketAddr,
    targets: Arc<parking_lot::Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl ConnectProxy {
    pub async fn start() -> anyhow::Result<ConnectProxy> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let targets = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let seen = targets.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut client = BufReader::new(stream);
                    let mut line = String::new();
                    if client.read_line(&mut line).await.is_err() {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let (Some("CONNECT"), Some(target)) = (parts.next(), parts.next()) else {
                        let _ = client
                            .get_mut()
                            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                            .await;
                        return;
                    };
                    let target = target.to_owned();
                    // The rest of the request head.
                    loop {
                        let mut header = String::new();
                        match client.read_line(&mut header).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) if header == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    seen.lock().push(target.clone());
                    let Ok(mut upstream) = TcpStream::connect(&target).await else {
                        let _ = client
                            .get_mut()
                            .write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                            .await;
                        return;
                    };
                    if client
                        .get_mut()
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        });
        Ok(ConnectProxy {
            addr,
            targets,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`, what `HTTPS_PROXY` would say.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every `host:port` a client asked to be connected to.
    pub fn targets(&self) -> Vec<String> {
        self.targets.lock().clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! Ingest: the ledger's HTTP API for apps that call their AI provider
//! themselves. Reserve before the AI call, then commit the actual usage or
//! release the hold; record usage that had no hold; read the limits view.
//!
//! Layers: [`http`] extracts and answers, [`ledger::gate`] decides and
//! appends, [`ledger::control`] knows projects and plans. Handlers hold no
//! SQL and no business rules.

pub mod error;
pub mod http;
pub mod threads;

use axum::serve::ListenerExt as _;
use ledger::control::ControlCache;
use ledger::Gate;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

pub use http::router;

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub gate: Gate,
    pub control: ControlCache,
}

/// Default listen address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8081";

/// Serves the ingest API on `addr` until `shutdown`, then drains in-flight requests.
pub async fn serve(
    state: AppState,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding ingest to {addr}: {e}"))?;
    tracing::info!(%addr, "ingest listening");
    serve_on(state, listener, shutdown).await
}

pub async fn serve_on(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_router(router(state), listener, shutdown).await
}

/// Serves `router` on `listener` (with TCP_NODELAY) until `shutdown`, then
/// drains in-flight requests. Shared by the ingest API and the proxy.
pub async fn serve_router(
    router: axum::Router,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener.tap_io(no_delay), router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

/// Small writes (SSE events, short JSON answers) go out at once: without
/// TCP_NODELAY, Nagle's algorithm and delayed ACKs hold them for ~40 ms.
fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
}

//! The HTTP load generator (reserve → commit against the ingest API) and the
//! reference server: an empty axum handler answering the same routes with a
//! canned body, so the same client code measures bare HTTP cost.

use crate::drive::Pair;
use anyhow::{bail, Context as _};
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::routing::post;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// What a client sends: a hold of 1,000 tokens and 1 cent, then the actual usage.
pub fn reserve_body(identity: &str) -> String {
    json!({
        "identity": identity,
        "model": crate::env::MODEL,
        "amounts": {"tokens": 1000, "usd": "0.01"},
    })
    .to_string()
}

pub fn commit_body() -> String {
    json!({"amounts": {"tokens": 420, "usd": "0.0042"}}).to_string()
}

/// One keep-alive connection per worker.
pub fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .http1_only()
        .build()?)
}

#[derive(Deserialize)]
struct Reserved {
    reservation_id: String,
}

/// A client reserving then committing for its own identity.
pub struct IngestPair {
    http: reqwest::Client,
    reservations: String,
    auth: String,
    reserve: Bytes,
    commit: Bytes,
    pending: Option<String>,
}

impl IngestPair {
    pub fn new(base: &str, secret: &str, identity: &str) -> anyhow::Result<IngestPair> {
        Ok(IngestPair {
            http: client()?,
            reservations: format!("{base}/v1/reservations"),
            auth: format!("Bearer {secret}"),
            reserve: Bytes::from(reserve_body(identity)),
            commit: Bytes::from(commit_body()),
            pending: None,
        })
    }

    async fn post(&self, url: &str, body: Bytes) -> anyhow::Result<Bytes> {
        let response = self
            .http
            .post(url)
            .header(AUTHORIZATION, &self.auth)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        if !status.is_success() {
            bail!("{url}: {status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(bytes)
    }
}

impl Pair for IngestPair {
    async fn first(&mut self) -> anyhow::Result<()> {
        let bytes = self.post(&self.reservations, self.reserve.clone()).await?;
        let r: Reserved = serde_json::from_slice(&bytes).context("reserve response")?;
        self.pending = Some(r.reservation_id);
        Ok(())
    }

    async fn second(&mut self) -> anyhow::Result<()> {
        let id = self.pending.take().context("no reservation to commit")?;
        let url = format!("{}/{id}/commit", self.reservations);
        self.post(&url, self.commit.clone()).await?;
        Ok(())
    }
}

/// Serves `POST /v1/reservations` and `…/{id}/commit` with `canned` (a real
/// reserve response, so sizes match) and nothing else: no auth, no parsing.
pub async fn serve_empty(
    canned: Bytes,
    shutdown: CancellationToken,
) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    async fn answer(
        State(canned): State<Bytes>,
        _body: Bytes,
    ) -> impl axum::response::IntoResponse {
        ([(CONTENT_TYPE, "application/json")], canned)
    }
    let router = axum::Router::new()
        .route("/v1/reservations", post(answer))
        .route("/v1/reservations/{id}/commit", post(answer))
        .with_state(canned);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok((base, task))
}

/// One real reserve + commit, returning the reserve response body.
pub async fn sample_response(base: &str, secret: &str) -> anyhow::Result<Bytes> {
    let mut pair = IngestPair::new(base, secret, "bench-sample")?;
    let bytes = pair.post(&pair.reservations, pair.reserve.clone()).await?;
    let r: Reserved = serde_json::from_slice(&bytes)?;
    pair.pending = Some(r.reservation_id);
    pair.second().await?;
    Ok(bytes)
}

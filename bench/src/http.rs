//! The HTTP load generator (reserve → commit against the ingest API) and the
//! reference server: an empty axum handler answering the same routes with a
//! canned body, so the same client code measures bare HTTP cost.

use crate::client::Client;
use crate::drive::Pair;
use anyhow::Context as _;
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

#[derive(Deserialize)]
struct Reserved {
    reservation_id: String,
}

/// A client reserving then committing for its own identity, on its own
/// connection (opened on first use, on the load generator's runtime).
pub struct IngestPair {
    client: Client,
    reserve: Bytes,
    commit: Bytes,
    pending: Option<String>,
}

impl IngestPair {
    pub fn new(base: &str, secret: &str, identity: &str) -> anyhow::Result<IngestPair> {
        Ok(IngestPair {
            client: Client::new(
                base,
                vec![(AUTHORIZATION, format!("Bearer {secret}").parse()?)],
            )?,
            reserve: Bytes::from(reserve_body(identity)),
            commit: Bytes::from(commit_body()),
            pending: None,
        })
    }
}

impl Pair for IngestPair {
    async fn first(&mut self) -> anyhow::Result<()> {
        let bytes = self
            .client
            .post("/v1/reservations", self.reserve.clone())
            .await?;
        let r: Reserved = serde_json::from_slice(&bytes).context("reserve response")?;
        self.pending = Some(r.reservation_id);
        Ok(())
    }

    async fn second(&mut self) -> anyhow::Result<()> {
        let id = self.pending.take().context("no reservation to commit")?;
        let path = format!("/v1/reservations/{id}/commit");
        let body = self.commit.clone();
        self.client.post(&path, body).await?;
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
    // Served as the ingest service is (`ingest::threads`), so the row
    // isolates what the handlers and the gate add.
    let setup = move |_: ingest::threads::Worker| {
        let router = router.clone();
        async move { Ok(vec![router]) }
    };
    let served = ingest::threads::serve(
        vec![listener],
        tollgate_bench::http_threads(),
        tollgate_bench::busy_poll(),
        setup,
        shutdown,
    )
    .await?;
    Ok((base, tokio::spawn(served)))
}

/// One real reserve + commit, returning the reserve response body.
pub async fn sample_response(base: &str, secret: &str) -> anyhow::Result<Bytes> {
    let mut pair = IngestPair::new(base, secret, "bench-sample")?;
    let body = pair.reserve.clone();
    let bytes = pair.client.post("/v1/reservations", body).await?;
    let r: Reserved = serde_json::from_slice(&bytes)?;
    pair.pending = Some(r.reservation_id);
    pair.second().await?;
    Ok(bytes)
}

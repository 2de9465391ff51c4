//! The ingest benchmark: the HTTP rows at each client count, then the
//! reference rows (gate in-process, raw JetStream append, empty axum handler)
//! at the same client counts.

use crate::drive::{self, Outcome};
use crate::env::Services;
use crate::http::{self, IngestPair};
use crate::refs::{self, AppendPair, GatePair};
use crate::IngestArgs;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const HTTP_ROW: &str = "ingest over HTTP: reserve → commit";
pub const GATE_ROW: &str = "reference: Gate in-process (no HTTP)";
pub const APPEND_ROW: &str = "reference: raw JetStream append ×2";
pub const EMPTY_ROW: &str = "reference: HTTP round trip to an empty axum handler ×2";

#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: &'static str,
    pub outcome: Outcome,
    /// Projection lag when the run ended, and how long catching up took.
    pub lag: Option<(u64, Duration)>,
}

pub struct IngestReport {
    pub rows: Vec<Row>,
    pub consumers: bool,
    pub pg_version: String,
}

pub async fn run(args: &IngestArgs) -> anyhow::Result<IngestReport> {
    let services = Services::start(!args.no_consumers).await?;
    let result = run_on(&services, args).await;
    let pg_version = sqlx::query_scalar::<_, String>("SHOW server_version")
        .fetch_one(services.db.pool())
        .await
        .unwrap_or_else(|_| "unknown".into());
    services.stop().await?;
    Ok(IngestReport {
        rows: result?,
        consumers: !args.no_consumers,
        pg_version,
    })
}

async fn run_on(services: &Services, args: &IngestArgs) -> anyhow::Result<Vec<Row>> {
    let warmup = Duration::from_secs(args.warmup);
    let measure = Duration::from_secs(args.seconds.max(1));
    let probe = services.probe();
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let mut rows = Vec::new();
    let lag = |l: (u64, Duration)| services.consumers.then_some(l);

    for &clients in &args.clients {
        eprintln!("ingest: {clients} client(s) over HTTP…");
        let (base, secret) = (services.base.clone(), services.secret.clone());
        let id = run_id.clone();
        let outcome = drive::drive_on_loadgen(
            args.loadgen_threads,
            clients,
            move |i| IngestPair::new(&base, &secret, &format!("bench-{id}-c{clients}-w{i}")),
            warmup,
            measure,
            &probe,
        )
        .await?;
        let settled = services.settle_projections().await?;
        rows.push(Row {
            scenario: HTTP_ROW,
            outcome,
            lag: lag(settled),
        });
    }
    if args.no_references {
        return Ok(rows);
    }

    let gate = ledger::Gate::new(
        services.client.clone(),
        Arc::new(ledger::SystemClock),
        Some(services.db.pool().clone()),
    )
    .await?;
    for &clients in &args.clients {
        eprintln!("reference: gate in-process, {clients} worker(s)…");
        let workers = (0..clients)
            .map(|i| {
                let identity = format!("gate-{run_id}-c{clients}-w{i}");
                GatePair::new(
                    gate.clone(),
                    services.project_id,
                    identity,
                    services.tier.clone(),
                )
            })
            .collect();
        let outcome = drive::drive(workers, warmup, measure, &probe).await?;
        let settled = services.settle_projections().await?;
        rows.push(Row {
            scenario: GATE_ROW,
            outcome,
            lag: lag(settled),
        });
    }

    let js = ledger::stream::jetstream(services.client.clone());
    refs::ensure_ref_stream(&js).await?;
    for &clients in &args.clients {
        eprintln!("reference: raw JetStream appends, {clients} worker(s)…");
        let workers = (0..clients)
            .map(|i| {
                AppendPair::new(
                    js.clone(),
                    services.project_id,
                    &format!("r{run_id}c{clients}w{i}"),
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let outcome = drive::drive(workers, warmup, measure, &probe).await?;
        rows.push(Row {
            scenario: APPEND_ROW,
            outcome,
            lag: None,
        });
    }

    let canned = http::sample_response(&services.base, &services.secret).await?;
    let stop_empty = CancellationToken::new();
    let (empty_base, empty_task) = http::serve_empty(canned, stop_empty.clone()).await?;
    for &clients in &args.clients {
        eprintln!("reference: empty axum handler, {clients} client(s)…");
        let base = empty_base.clone();
        let outcome = drive::drive_on_loadgen(
            args.loadgen_threads,
            clients,
            move |i| IngestPair::new(&base, "sk_unused", &format!("empty-w{i}")),
            warmup,
            measure,
            &probe,
        )
        .await?;
        rows.push(Row {
            scenario: EMPTY_ROW,
            outcome,
            lag: None,
        });
    }
    stop_empty.cancel();
    let _ = empty_task.await;
    Ok(rows)
}

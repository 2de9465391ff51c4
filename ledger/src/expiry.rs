//! Hold expiry (invariant 4): a hold neither committed nor released within
//! its TTL is released by the ledger, exactly once, even if the process that
//! took it crashed. Candidates come from the `reservations` table; each one is
//! expired through the gate, whose conditional append on the account's latest
//! state makes a second expiry (another sweeper, a restart, a lagging table)
//! a no-op.

use crate::gate::Gate;
use futures::StreamExt;
use schemas::{Account, ProjectId, ReservationId};
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Most holds expired per sweep.
const SWEEP_BATCH: i64 = 1_000;
/// Expirations in flight at once.
const SWEEP_PARALLELISM: usize = 32;

/// One sweep: expires every open hold past its TTL. Returns how many it expired.
pub async fn sweep(pool: &PgPool, gate: &Gate) -> anyhow::Result<usize> {
    let now = gate.now();
    let due: Vec<(uuid::Uuid, String, uuid::Uuid)> = sqlx::query_as(
        "SELECT project_id, identity, reservation_id FROM reservations
         WHERE status = 'open' AND expires_at <= $1 ORDER BY expires_at LIMIT $2",
    )
    .bind(now)
    .bind(SWEEP_BATCH)
    .fetch_all(pool)
    .await?;
    let results: Vec<_> = futures::stream::iter(due)
        .map(|(project, identity, id)| async move {
            let account = Account::Identity { identity };
            gate.expire(ProjectId(project), &account, ReservationId(id))
                .await
        })
        .buffer_unordered(SWEEP_PARALLELISM)
        .collect()
        .await;
    let mut expired = 0;
    for r in results {
        match r {
            Ok(true) => expired += 1,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not expire a hold; will retry next sweep"),
        }
    }
    Ok(expired)
}

/// Sweeps every `interval` until `shutdown`.
pub async fn run(pool: PgPool, gate: Gate, interval: Duration, shutdown: CancellationToken) {
    loop {
        match sweep(&pool, &gate).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "expired holds past their TTL"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "expiry sweep failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

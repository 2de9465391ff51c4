//! `tollgate replay`: rebuilds every projection from the start of the stream.
//!
//! Runs in one PostgreSQL transaction that first locks every projection's
//! checkpoint row, so live consumers wait, then sees the tables swap from the
//! old contents to the rebuilt ones at commit. Events are read with an
//! ordered consumer and applied in large batches.

use crate::projection::LedgerProjection;
use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull};
use projector::consumer::{
    decode_batch, lock_checkpoint, next_batch, store_checkpoint, Projection, Raw,
};
use projector::service::CountersProjection;
use schemas::subjects;
use sqlx::PgPool;
use std::time::{Duration, Instant};

/// Events per replay transaction step: large, so each counter row is
/// rewritten once per step rather than once per few events.
const REPLAY_BATCH: usize = 50_000;
const REPLAY_WINDOW: Duration = Duration::from_millis(200);

#[derive(Clone, Debug)]
pub struct ReplayReport {
    pub events: u64,
    pub elapsed: Duration,
}

/// Every projection the services maintain.
pub fn all_projections() -> Vec<Box<dyn Projection>> {
    vec![Box::new(LedgerProjection), Box::new(CountersProjection)]
}

/// Rebuilds all projections; `progress(done, total)` is called after each batch.
pub async fn replay(
    js: &jetstream::Context,
    pool: &PgPool,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<ReplayReport> {
    let started = Instant::now();
    let mut stream = crate::stream::ensure_ledger_stream(js).await?;
    let info = stream.info().await.context("reading stream info")?;
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let total = info.state.messages;
    let projections = all_projections();
    let mut tx = pool.begin().await?;
    for p in &projections {
        lock_checkpoint(&mut tx, p.name()).await?;
        p.reset(&mut tx).await?;
        sqlx::query("DELETE FROM dead_letters WHERE projection = $1")
            .bind(p.name())
            .execute(&mut *tx)
            .await?;
    }
    let mut done = 0u64;
    if total > 0 && last >= first {
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subjects::ledger_all(),
                ..Default::default()
            })
            .await
            .context("creating replay consumer")?;
        let mut messages = consumer.messages().await.context("reading the stream")?;
        let mut seen = 0u64;
        while seen < last {
            let batch = next_batch(&mut messages, REPLAY_BATCH, REPLAY_WINDOW);
            let chunk = tokio::time::timeout(Duration::from_secs(10), batch)
                .await
                .context("stream stalled during replay")?;
            if chunk.is_empty() {
                break;
            }
            let mut raws = Vec::with_capacity(chunk.len());
            for msg in chunk {
                let msg = msg.map_err(|e| anyhow::anyhow!("replay read: {e}"))?;
                let seq = msg
                    .info()
                    .map_err(|e| anyhow::anyhow!("message info: {e}"))?
                    .stream_sequence;
                if seq <= last {
                    raws.push(Raw {
                        seq,
                        subject: msg.subject.to_string(),
                        payload: msg.payload.clone(),
                    });
                }
                seen = seen.max(seq);
            }
            for p in &projections {
                let batch = decode_batch(&mut tx, p.name(), &raws, 0).await?;
                p.apply(&mut tx, &batch).await?;
            }
            done += raws.len() as u64;
            progress(done, total);
        }
    }
    for p in &projections {
        store_checkpoint(&mut tx, p.name(), last).await?;
    }
    tx.commit().await?;
    Ok(ReplayReport {
        events: done,
        elapsed: started.elapsed(),
    })
}

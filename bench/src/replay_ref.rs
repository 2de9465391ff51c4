//! Reference for replay: the ledger stream read and decoded the way replay
//! reads it, without folding or SQL.

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use schemas::{subjects, Envelope};
use std::time::Duration;

const CHUNK: usize = 10_000;

/// Reads the whole ledger stream as replay does, calling `each` per event.
pub async fn read_stream(
    js: &jetstream::Context,
    mut each: impl FnMut(u64, Envelope),
) -> anyhow::Result<u64> {
    let mut stream = ledger::stream::ensure_ledger_stream(js).await?;
    let last = stream.info().await?.state.last_sequence;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subjects::ledger_all(),
            ..Default::default()
        })
        .await?;
    let mut chunks = consumer.messages().await?.ready_chunks(CHUNK);
    let (mut seen, mut count) = (0u64, 0u64);
    while seen < last {
        let chunk = tokio::time::timeout(Duration::from_secs(10), chunks.next())
            .await
            .context("stream stalled")?;
        let Some(chunk) = chunk else { break };
        for msg in chunk {
            let msg = msg.map_err(|e| anyhow::anyhow!("read: {e}"))?;
            let seq = msg
                .info()
                .map_err(|e| anyhow::anyhow!("info: {e}"))?
                .stream_sequence;
            each(seq, Envelope::from_slice(&msg.payload)?);
            count += 1;
            seen = seen.max(seq);
        }
    }
    Ok(count)
}

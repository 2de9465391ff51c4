//! `tollgate audit`: an account's events, in stream order, straight from
//! the stream (the source of truth), with their stream sequence.

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull, stream::DirectGetErrorKind};
use futures::StreamExt;
use schemas::events::Envelope;
use schemas::{subjects, Account, ProjectId};
use std::time::Duration;

/// Calls `each(seq, envelope)` for every event of the account, oldest first.
pub async fn audit(
    js: &jetstream::Context,
    project: ProjectId,
    account: &Account,
    mut each: impl FnMut(u64, &Envelope) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let stream = js
        .get_stream(subjects::LEDGER_STREAM)
        .await
        .context("ledger stream missing")?;
    let subject = subjects::account_subject(project, account);
    let last = match stream.direct_get_last_for_subject(&subject).await {
        Ok(m) => m.sequence,
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(anyhow::anyhow!("reading the account's last event: {e}")),
    };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject,
            ..Default::default()
        })
        .await
        .context("creating audit consumer")?;
    let mut messages = consumer.messages().await.context("reading the stream")?;
    let mut count = 0;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .context("stream stalled")?;
        let Some(msg) = msg else { break };
        let msg = msg.map_err(|e| anyhow::anyhow!("audit read: {e}"))?;
        let seq = msg
            .info()
            .map_err(|e| anyhow::anyhow!("message info: {e}"))?
            .stream_sequence;
        let envelope = Envelope::from_slice(&msg.payload)
            .with_context(|| format!("event at sequence {seq}"))?;
        each(seq, &envelope)?;
        count += 1;
        if seq >= last {
            break;
        }
    }
    Ok(count)
}

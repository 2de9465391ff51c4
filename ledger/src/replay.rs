//! `tollgate replay`: rebuilds every projection from the start of the stream.
//!
//! Runs in one PostgreSQL transaction that first locks every projection's
//! checkpoint row, so live consumers wait, then sees the tables swap from the
//! old contents to the rebuilt ones at commit. Three stages run at once: a
//! reader takes the stream with an ordered consumer, a folder decodes and
//! folds it in memory on a blocking thread, and the writer streams each
//! reservation row into `COPY` as soon as it is final (settled); balances,
//! counters and still-open reservations are copied at the end. Every row is
//! written once, so the cost is linear in the stream and mostly overlapped.

use crate::projection::{LedgerProjection, LedgerRebuild, BALANCE_COLUMNS, RESERVATION_COLUMNS};
use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull};
use futures::{FutureExt as _, StreamExt as _};
use projector::consumer::{lock_checkpoint, store_checkpoint, Projection};
use projector::copy::copy_into;
use projector::pg_text::pg_string;
use projector::rebuild::{Accounts, CountersRebuild, COUNTER_COLUMNS};
use projector::service::CountersProjection;
use schemas::events::Envelope;
use schemas::subjects;
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Messages the reader hands over at a time.
const READ_CHUNK: usize = 4_096;
/// Bytes of reservation rows the folder collects before handing them to COPY.
const COPY_CHUNK: usize = 1 << 20;
/// A stream that sends nothing for this long while events are missing has stalled.
const STALL: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct ReplayReport {
    pub events: u64,
    pub elapsed: Duration,
    /// Where `elapsed` went.
    pub phases: ReplayPhases,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ReplayPhases {
    /// Locking the projections' checkpoints (waiting for live consumers)
    /// and emptying their tables.
    pub setup: Duration,
    /// Reading and folding the stream, the settled reservations copied as
    /// they come.
    pub stream: Duration,
    /// The still-open reservations, the balances and counters, the checkpoints.
    pub final_copies: Duration,
    pub commit: Duration,
}

/// Every projection the services maintain.
pub fn all_projections() -> Vec<Box<dyn Projection>> {
    vec![Box::new(LedgerProjection), Box::new(CountersProjection)]
}

/// One message as read.
struct Raw {
    seq: u64,
    subject: async_nats::Subject,
    payload: bytes::Bytes,
}

/// What the folder sends the writer.
enum Folded {
    /// Rows of settled reservations (COPY text), and events folded so far.
    Rows(Vec<u8>, u64),
    Progress(u64),
}

/// What the folder has at the end.
struct FoldEnd {
    events: u64,
    /// Open reservations, balances and counters (COPY text).
    open_reservations: Vec<u8>,
    balances: Vec<u8>,
    counters: Vec<u8>,
    /// (seq, subject, error) of messages that are not events.
    undecodable: Vec<(u64, String, String)>,
}

/// Rebuilds all projections; `progress(done, total)` is called as it goes.
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
    let mut phases = ReplayPhases {
        setup: started.elapsed(),
        ..ReplayPhases::default()
    };
    if total > 0 && last >= first {
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subjects::ledger_all(),
                ..Default::default()
            })
            .await
            .context("creating replay consumer")?;
        let messages = consumer.messages().await.context("reading the stream")?;
        let (raw_tx, raw_rx) = mpsc::channel(8);
        let (out_tx, mut out_rx) = mpsc::channel(8);
        let reader = tokio::spawn(read(messages, last, raw_tx));
        let folder = tokio::task::spawn_blocking(move || fold(raw_rx, out_tx));

        let mut copy = tx
            .copy_in_raw(&format!(
                "COPY reservations ({RESERVATION_COLUMNS}) FROM STDIN"
            ))
            .await?;
        while let Some(folded) = out_rx.recv().await {
            match folded {
                Folded::Rows(rows, events) => {
                    copy.send(rows).await?;
                    progress(events, total);
                }
                Folded::Progress(events) => progress(events, total),
            }
        }
        // The folder is done (its sender is gone): a failed read must not
        // commit a partial rebuild.
        reader.await.context("replay reader")??;
        let end = folder.await.context("replay folder")?;
        phases.stream = started.elapsed().saturating_sub(phases.setup);
        copy.send(end.open_reservations).await?;
        copy.finish().await?;
        copy_into(&mut tx, "account_balances", BALANCE_COLUMNS, end.balances).await?;
        copy_into(&mut tx, "usage_counters", COUNTER_COLUMNS, end.counters).await?;
        for (seq, subject, error) in &end.undecodable {
            tracing::error!(
                seq,
                subject,
                error,
                "undecodable event recorded as dead letter and skipped"
            );
            for p in &projections {
                sqlx::query("INSERT INTO dead_letters (projection, seq, subject, error) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                    .bind(p.name())
                    .bind(i64::try_from(*seq).unwrap_or(i64::MAX))
                    .bind(pg_string(subject))
                    .bind(pg_string(error))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        done = end.events;
        progress(done, total);
    }
    for p in &projections {
        store_checkpoint(&mut tx, p.name(), last).await?;
    }
    let committing = Instant::now();
    phases.final_copies = committing
        .duration_since(started)
        .saturating_sub(phases.setup + phases.stream);
    tx.commit().await?;
    phases.commit = committing.elapsed();
    Ok(ReplayReport {
        events: done,
        elapsed: started.elapsed(),
        phases,
    })
}

/// Reads every message up to `last` and hands them over in chunks.
async fn read(
    mut messages: pull::Ordered,
    last: u64,
    out: mpsc::Sender<Vec<Raw>>,
) -> anyhow::Result<()> {
    let mut seen = 0u64;
    let mut chunk = Vec::with_capacity(READ_CHUNK);
    while seen < last {
        // Hand over what is there before waiting for more.
        let msg = match messages.next().now_or_never() {
            Some(msg) => msg,
            None => {
                if !chunk.is_empty() && out.send(std::mem::take(&mut chunk)).await.is_err() {
                    return Ok(());
                }
                tokio::time::timeout(STALL, messages.next())
                    .await
                    .context("stream stalled during replay")?
            }
        };
        let Some(msg) = msg else { break };
        let msg = msg.map_err(|e| anyhow::anyhow!("replay read: {e}"))?;
        let seq = match msg.reply.as_deref().and_then(stream_sequence) {
            Some(seq) => seq,
            None => {
                msg.info()
                    .map_err(|e| anyhow::anyhow!("message info: {e}"))?
                    .stream_sequence
            }
        };
        seen = seen.max(seq);
        if seq <= last {
            chunk.push(Raw {
                seq,
                subject: msg.subject.clone(),
                payload: msg.payload.clone(),
            });
        }
        if chunk.len() >= READ_CHUNK && out.send(std::mem::take(&mut chunk)).await.is_err() {
            return Ok(());
        }
    }
    if seen < last {
        anyhow::bail!("the stream ended at sequence {seen} before {last}");
    }
    if !chunk.is_empty() {
        let _ = out.send(chunk).await;
    }
    Ok(())
}

/// The stream sequence in a JetStream delivery's reply subject, read the
/// way async-nats' `Message::info` reads it but without parsing the other
/// fields (that parse was ≈ 3 % of replay's CPU). The ordered consumer has
/// already checked the whole subject with `info` before handing the message
/// over: `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.…` (7 tokens
/// after the prefix), or with a domain and account hash first and a token
/// last (10 or more). `None` for any other shape, which `info` then reports.
fn stream_sequence(reply: &str) -> Option<u64> {
    let rest = reply.strip_prefix("$JS.ACK.")?;
    let mut tokens = [""; 10];
    let mut n = 0;
    for token in rest.split('.') {
        if n == tokens.len() {
            break;
        }
        tokens[n] = token;
        n += 1;
    }
    let at = match n {
        7 => 3,
        n if n >= 10 => 5,
        _ => return None,
    };
    tokens[at].parse().ok()
}

/// Decodes and folds every event (on a blocking thread).
fn fold(mut input: mpsc::Receiver<Vec<Raw>>, out: mpsc::Sender<Folded>) -> FoldEnd {
    let mut accounts = Accounts::default();
    let mut ledger = LedgerRebuild::default();
    let mut counters = CountersRebuild::default();
    let mut undecodable = Vec::new();
    let mut events = 0u64;
    while let Some(chunk) = input.blocking_recv() {
        for raw in chunk {
            match Envelope::from_slice(&raw.payload) {
                Ok(env) => {
                    let account = accounts.id(&env);
                    ledger.add(&accounts, account, raw.seq, &env);
                    counters.add(account, &env);
                    events += 1;
                }
                Err(err) => undecodable.push((raw.seq, raw.subject.to_string(), err.to_string())),
            }
        }
        let sent = if ledger.final_rows.len_bytes() >= COPY_CHUNK {
            out.blocking_send(Folded::Rows(ledger.final_rows.take(), events))
        } else {
            out.blocking_send(Folded::Progress(events))
        };
        if sent.is_err() {
            break; // the writer failed; it reports why
        }
    }
    let (mut open, mut balances) = ledger.finish(&accounts);
    FoldEnd {
        events,
        open_reservations: open.take(),
        balances: balances.take(),
        counters: counters.finish(&accounts).take(),
        undecodable,
    }
}

#[cfg(test)]
mod tests {
    use super::stream_sequence;

    #[test]
    fn stream_sequences_read_like_async_nats() {
        // The shapes async-nats' `Message::info` reads: without, and with a
        // domain (`_` for none) and account hash, and a trailing token.
        let old = "$JS.ACK.LEDGER.c1.1.4242.17.1700000000000000000.9";
        let new = "$JS.ACK._.ACCHASH.LEDGER.c1.1.4242.17.1700000000000000000.9.tok";
        let domain = "$JS.ACK.dom.ACCHASH.LEDGER.c1.2.77.18.1700000000000000000.0.tok";
        for (reply, seq) in [(old, 4242), (new, 4242), (domain, 77)] {
            assert_eq!(stream_sequence(reply), Some(seq), "{reply}");
        }
        // Nine tokens: `info` finds no trailing token and refuses it; so do we.
        let nine = "$JS.ACK.dom.ACCHASH.LEDGER.c1.2.77.18.1700000000000000000.0";
        assert_eq!(stream_sequence(nine), None);
        assert_eq!(stream_sequence("$JS.ACK.a.b.c"), None);
        assert_eq!(stream_sequence("_INBOX.x.y.z.1.2.3.4"), None);
        assert_eq!(stream_sequence("$JS.ACK.S.C.1.notanumber.1.1.0"), None);
    }
}

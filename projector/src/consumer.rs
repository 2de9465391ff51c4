//! Applying the ledger stream to PostgreSQL projections, exactly once.
//!
//! A [`Projection`] turns a batch of decoded events into SQL inside one
//! transaction. [`apply_batch`] runs it together with the projection's
//! checkpoint (last applied stream sequence) in that same transaction and
//! skips anything at or below the checkpoint, so redeliveries and replays
//! change nothing (invariant 2). [`run`] is the durable consumer loop: it acks
//! only after the transaction committed, and backs off on transient failures.
//! A message that can never decode is recorded in `dead_letters` and skipped.

use crate::pg_text::pg_string;
use anyhow::Context as _;
use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
    AckKind,
};
use futures::future::BoxFuture;
use futures::StreamExt;
use schemas::events::Envelope;
use schemas::subjects;
use sqlx::{PgConnection, PgPool};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One event as read from the stream.
#[derive(Clone, Debug)]
pub struct Decoded {
    pub seq: u64,
    pub envelope: Envelope,
}

/// A PostgreSQL projection of the ledger stream.
pub trait Projection: Send + Sync {
    /// Name of its checkpoint row (and of its durable consumer).
    fn name(&self) -> &'static str;
    /// Applies events (all above the checkpoint, in stream order).
    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        batch: &'a [Decoded],
    ) -> BoxFuture<'a, sqlx::Result<()>>;
    /// Empties the projection's tables (before a replay).
    fn reset<'a>(&'a self, conn: &'a mut PgConnection) -> BoxFuture<'a, sqlx::Result<()>>;
}

/// A raw message of the stream: its sequence and bytes.
pub struct Raw {
    pub seq: u64,
    pub subject: String,
    pub payload: bytes::Bytes,
}

/// Locks and reads the checkpoint of `name` inside the caller's transaction.
pub async fn lock_checkpoint(conn: &mut PgConnection, name: &str) -> sqlx::Result<u64> {
    sqlx::query(
        "INSERT INTO checkpoints (projection, last_seq) VALUES ($1, 0) ON CONFLICT DO NOTHING",
    )
    .bind(name)
    .execute(&mut *conn)
    .await?;
    let last: i64 =
        sqlx::query_scalar("SELECT last_seq FROM checkpoints WHERE projection = $1 FOR UPDATE")
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
    Ok(u64::try_from(last).unwrap_or(0))
}

pub async fn store_checkpoint(conn: &mut PgConnection, name: &str, seq: u64) -> sqlx::Result<()> {
    sqlx::query("UPDATE checkpoints SET last_seq = $2, updated_at = now() WHERE projection = $1")
        .bind(name)
        .bind(i64::try_from(seq).unwrap_or(i64::MAX))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Decodes raw messages above the lowest of `after` (one per projection,
/// by name); an undecodable one is recorded as a dead letter for every
/// projection that had not applied it yet.
pub async fn decode_batch(
    conn: &mut PgConnection,
    after: &[(&str, u64)],
    raws: &[Raw],
) -> sqlx::Result<Vec<Decoded>> {
    let lowest = after.iter().map(|a| a.1).min().unwrap_or(0);
    let mut out = Vec::with_capacity(raws.len());
    for raw in raws.iter().filter(|r| r.seq > lowest) {
        match Envelope::from_slice(&raw.payload) {
            Ok(envelope) => out.push(Decoded {
                seq: raw.seq,
                envelope,
            }),
            Err(err) => {
                for (projection, _) in after.iter().filter(|a| raw.seq > a.1) {
                    tracing::error!(seq = raw.seq, subject = %raw.subject, projection, error = %err, "undecodable event recorded as dead letter and skipped");
                    sqlx::query("INSERT INTO dead_letters (projection, seq, subject, error) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                        .bind(projection)
                        .bind(i64::try_from(raw.seq).unwrap_or(i64::MAX))
                        .bind(pg_string(&raw.subject))
                        .bind(pg_string(&err.to_string()))
                        .execute(&mut *conn)
                        .await?;
                }
            }
        }
    }
    Ok(out)
}

/// Why a batch was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The batch starts after a sequence this projection has not applied:
    /// applying it would skip events. (Only one process should be applying
    /// a projection; see [`run`].)
    #[error("{projection}: events {after_next}..{first} are missing before this batch")]
    Gap {
        projection: &'static str,
        after_next: u64,
        first: u64,
    },
}

/// The step function: applies one batch of raw messages of a stream that
/// starts at sequence 1, exactly once. Returns how many events took effect
/// (0 when all were already applied).
pub async fn apply_batch(
    pool: &PgPool,
    projection: &dyn Projection,
    raws: &[Raw],
) -> Result<usize, ApplyError> {
    apply_batch_to(pool, &[projection], raws, 1).await
}

/// The first sequence a projection that has applied up to `applied` must
/// be given next, when the stream's first message is `stream_first`.
///
/// Normally the one after its checkpoint, also from checkpoint 0: a batch
/// starting later would skip events for good, since acking it acks them.
/// Events a purge removed from the stream before they were applied no
/// longer exist, so nothing can be waited for there: the projection goes
/// on from the stream's first event, which is also where `tollgate replay`
/// starts, so live and replay stay equal.
pub fn next_expected(applied: u64, stream_first: u64) -> u64 {
    (applied + 1).max(stream_first)
}

/// [`apply_batch`] for several projections at once, on a stream whose
/// first message (after any purge) is `stream_first`: each event is decoded
/// once, and every projection gets the events above its own checkpoint, all
/// in one transaction. Returns how many events took effect in at least one.
pub async fn apply_batch_to(
    pool: &PgPool,
    projections: &[&dyn Projection],
    raws: &[Raw],
    stream_first: u64,
) -> Result<usize, ApplyError> {
    let (Some(min_seq), Some(max_seq)) = (
        raws.iter().map(|r| r.seq).min(),
        raws.iter().map(|r| r.seq).max(),
    ) else {
        return Ok(0);
    };
    let mut tx = pool.begin().await?;
    let mut after = Vec::with_capacity(projections.len());
    for projection in projections {
        let name = projection.name();
        let applied = lock_checkpoint(&mut tx, name).await?;
        // A batch must continue exactly where each checkpoint stands.
        let next = next_expected(applied, stream_first);
        if min_seq > next {
            return Err(ApplyError::Gap {
                projection: name,
                after_next: next,
                first: min_seq,
            });
        }
        if next > applied + 1 {
            tracing::warn!(
                projection = name,
                applied,
                stream_first,
                "events after this projection's checkpoint were purged from the stream before it applied them; going on from the stream's first event"
            );
        }
        after.push((name, applied));
    }
    if after.iter().all(|a| max_seq <= a.1) {
        return Ok(0);
    }
    let batch = decode_batch(&mut tx, &after, raws).await?;
    for (projection, (name, applied)) in projections.iter().zip(&after) {
        if max_seq <= *applied {
            continue;
        }
        let from = batch.partition_point(|d| d.seq <= *applied);
        projection.apply(&mut tx, &batch[from..]).await?;
        store_checkpoint(&mut tx, name, max_seq).await?;
    }
    tx.commit().await?;
    Ok(batch.len())
}

/// Tries to take the advisory lock that makes this process the one applying
/// projection `name`, on `conn` (a session lock: held until released or the
/// connection closes).
async fn try_lead(conn: &mut PgConnection, name: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
        .bind(name)
        .fetch_one(conn)
        .await
}

/// Waits until this process leads at least one of `names`: a PostgreSQL
/// session advisory lock per projection, all held on one connection taken
/// out of the pool. If the process dies its connection closes and another
/// process takes over. Returns the connection and the indexes of the names
/// it leads; `None` on shutdown.
async fn lead_some(
    pool: &PgPool,
    names: &[&str],
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<(PgConnection, Vec<usize>)>> {
    let mut conn = pool
        .acquire()
        .await
        .context("connection for the projection lock")?
        .detach();
    let mut announced = false;
    loop {
        let mut led = Vec::new();
        for (i, name) in names.iter().enumerate() {
            if try_lead(&mut conn, name).await? {
                led.push(i);
            }
        }
        if !led.is_empty() {
            return Ok(Some((conn, led)));
        }
        if !announced {
            tracing::info!(
                projections = ?names,
                "another process is applying these projections; standing by"
            );
            announced = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Most events a live consumer applies in one transaction.
pub const LIVE_BATCH_MAX: usize = 5_000;

/// How long a live consumer waits by default before fetching again after a
/// batch that was not full. Events accumulate on the server meanwhile and
/// arrive in one burst per fetch, so the consumer wakes (and PostgreSQL
/// commits) once per window instead of once per event, and each batch
/// rewrites every counter row its accounts touched (6 windows × units) only
/// once. The reporting tables lag by about this much; enforcement never reads
/// them. Each burst of projection work slows the few requests that arrive
/// while it runs, so fewer, larger bursts keep the request tail short: at
/// 1 client, reserve p99 was 1.1–1.8 ms with 100 ms and 0.43–0.57 ms with
/// 1 s (`bench/README.md`).
pub const LIVE_BATCH_WINDOW: Duration = Duration::from_millis(1000);

/// The durable pull consumer that feeds the projections `names` (one
/// consumer per set, so a set's position never runs ahead of a projection
/// it does not feed). Created at the first event not applied by all of them.
pub async fn durable_consumer(
    js: &jetstream::Context,
    names: &[&str],
    start: u64,
) -> anyhow::Result<jetstream::consumer::PullConsumer> {
    let stream = js
        .get_stream(subjects::LEDGER_STREAM)
        .await
        .context("ledger stream missing")?;
    let name = names.join("__");
    let deliver_policy = if start > 1 {
        DeliverPolicy::ByStartSequence {
            start_sequence: start,
        }
    } else {
        DeliverPolicy::All
    };
    let config = pull::Config {
        durable_name: Some(name.clone()),
        deliver_policy,
        ack_policy: AckPolicy::All,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 100_000,
        ..Default::default()
    };
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(&name, config.clone())
        .await
        .context("creating durable consumer")?;
    let acked = consumer.cached_info().ack_floor.stream_sequence;
    if acked < start {
        return Ok(consumer);
    }
    // The consumer has acknowledged events the checkpoints say were never
    // applied (the database was emptied or restored, the stream kept): it
    // would never deliver them again. Start it over at the checkpoints.
    tracing::warn!(
        consumer = %name,
        acked,
        first_unapplied = start,
        "durable consumer is ahead of the projections' checkpoints; recreating it"
    );
    stream
        .delete_consumer(&name)
        .await
        .context("deleting a durable consumer that ran ahead")?;
    stream
        .create_consumer(config)
        .await
        .context("recreating durable consumer")
}

/// The sequence of the ledger stream's first message (1 unless purged).
async fn stream_first_sequence(js: &jetstream::Context) -> anyhow::Result<u64> {
    let mut stream = js
        .get_stream(subjects::LEDGER_STREAM)
        .await
        .context("ledger stream missing")?;
    let info = stream.info().await.context("reading ledger stream info")?;
    Ok(info.state.first_sequence.max(1))
}

/// Fetches what the consumer has pending now, at most `max` (no waiting).
async fn fetch_pending(
    consumer: &jetstream::consumer::PullConsumer,
    max: usize,
) -> anyhow::Result<Vec<jetstream::Message>> {
    let mut messages = consumer
        .fetch()
        .max_messages(max)
        .messages()
        .await
        .context("fetching from consumer")?;
    let mut out = Vec::new();
    while let Some(msg) = messages.next().await {
        out.push(msg.map_err(|e| anyhow::anyhow!("receiving from consumer: {e}"))?);
    }
    Ok(out)
}

/// Consumes the ledger stream into `projections` until `shutdown`, fetching
/// once per `window` while there is less than a full batch pending. One
/// fetch and one decode serve all the projections this process leads; a
/// projection another process leads is taken over when that one stops.
pub async fn run(
    js: jetstream::Context,
    pool: PgPool,
    projections: &[&dyn Projection],
    window: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        match run_once(&js, &pool, projections, window, &shutdown).await {
            Ok(()) => return Ok(()),
            Err(err) => {
                let names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
                tracing::warn!(projections = ?names, error = %format!("{err:#}"), backoff_ms = backoff.as_millis() as u64, "projection consumer failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    Ok(())
}

async fn run_once(
    js: &jetstream::Context,
    pool: &PgPool,
    all: &[&dyn Projection],
    window: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let names: Vec<&str> = all.iter().map(|p| p.name()).collect();
    let Some((mut lock, mut led)) = lead_some(pool, &names, shutdown).await? else {
        return Ok(());
    };
    // Each turn feeds the projections led so far; a new turn starts when
    // this process takes over one more (the locks stay held throughout).
    'led: loop {
        let projections: Vec<&dyn Projection> = led.iter().map(|&i| all[i]).collect();
        let led_names: Vec<&str> = led.iter().map(|&i| names[i]).collect();
        let mut start = u64::MAX;
        for name in &led_names {
            let applied: Option<i64> =
                sqlx::query_scalar("SELECT last_seq FROM checkpoints WHERE projection = $1")
                    .bind(name)
                    .fetch_optional(&mut lock)
                    .await?;
            start = start.min(applied.and_then(|s| u64::try_from(s).ok()).unwrap_or(0) + 1);
        }
        let consumer = durable_consumer(js, &led_names, start).await?;
        // Read once per turn: a purge while running makes the next batch
        // look like a gap, the turn fails and the next one reads it again.
        let stream_first = stream_first_sequence(js).await?;
        tracing::info!(projections = ?led_names, "applying projections");
        let mut lock_checked = std::time::Instant::now();
        loop {
            if lock_checked.elapsed() > Duration::from_secs(1) {
                // The locks live as long as their connection: make sure it is
                // still there, and take over any projection whose leader left.
                sqlx::query("SELECT 1")
                    .execute(&mut lock)
                    .await
                    .context("projection lock connection lost")?;
                lock_checked = std::time::Instant::now();
                let before = led.len();
                for (i, name) in names.iter().enumerate() {
                    if !led.contains(&i) && try_lead(&mut lock, name).await? {
                        led.push(i);
                    }
                }
                if led.len() > before {
                    led.sort_unstable();
                    continue 'led;
                }
            }
            let chunk = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                chunk = fetch_pending(&consumer, LIVE_BATCH_MAX) => chunk?,
            };
            let full = chunk.len() >= LIVE_BATCH_MAX;
            if !chunk.is_empty() {
                let mut raws = Vec::with_capacity(chunk.len());
                for msg in &chunk {
                    let seq = msg
                        .info()
                        .map_err(|e| anyhow::anyhow!("message info: {e}"))?
                        .stream_sequence;
                    raws.push(Raw {
                        seq,
                        subject: msg.subject.to_string(),
                        payload: msg.payload.clone(),
                    });
                }
                if let Err(e) = apply_batch_to(pool, &projections, &raws, stream_first).await {
                    // Nothing of the batch was applied (one transaction): ask
                    // for it again now rather than after the 30 s ack wait, so
                    // the retry reads it instead of the events after it.
                    for msg in &chunk {
                        let _ = msg.ack_with(AckKind::Nak(None)).await;
                    }
                    return Err(anyhow::Error::new(e).context("applying batch"));
                }
                if let Some(msg) = chunk.last() {
                    // AckPolicy::All: acking the newest acks the whole batch, after the commit.
                    msg.ack_with(AckKind::Ack)
                        .await
                        .map_err(|e| anyhow::anyhow!("ack: {e}"))?;
                }
            }
            if !full {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(window) => {}
                }
            }
        }
    }
}

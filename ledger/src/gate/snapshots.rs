//! Snapshots of account states in PostgreSQL (`account_snapshots`), so that
//! reading back an account a gate does not hold in memory (after a restart,
//! or after [`super::Gate::forget_idle`]) costs the events since the
//! snapshot, not the account's whole history.
//!
//! A snapshot is only a shortcut: it is used only when the stream still
//! holds, at the snapshot's sequence and on the account's subject, the event
//! the snapshot says it ends with; otherwise (another stream, a restored
//! database, another format, unreadable bytes) it is deleted and the
//! account is folded from its events, as without snapshots.

use super::{Counters, GateError};
use async_nats::jetstream::{self, stream::DirectGetErrorKind};
use projector::snapshot::SNAPSHOT_FORMAT;
use projector::AccountState;
use schemas::events::Envelope;
use schemas::ProjectId;
use sqlx::PgPool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A row of `account_snapshots`.
#[derive(sqlx::FromRow)]
pub(super) struct Stored {
    seq: i64,
    event_id: Uuid,
    format: i32,
    state: Vec<u8>,
}

/// Why a stored snapshot was not used.
pub(super) enum Unusable {
    /// It does not match the stream or cannot be read: delete it.
    Invalid(String),
    /// The stream could not be asked; the snapshot may be fine.
    Unavailable(GateError),
}

pub(super) async fn read(pool: &PgPool, subject: &str) -> sqlx::Result<Option<Stored>> {
    sqlx::query_as("SELECT seq, event_id, format, state FROM account_snapshots WHERE subject = $1")
        .bind(subject)
        .fetch_optional(pool)
        .await
}

/// The state `stored` holds, if the stream agrees with it. `last` is the
/// subject's last message (most snapshots end with it, which saves a read).
pub(super) async fn restore(
    stream: &jetstream::stream::Stream,
    subject: &str,
    stored: &Stored,
    last: &jetstream::message::StreamMessage,
) -> Result<AccountState, Unusable> {
    let invalid = |why: &str| Unusable::Invalid(why.to_owned());
    if stored.format != SNAPSHOT_FORMAT {
        return Err(invalid("written in another format"));
    }
    let seq = u64::try_from(stored.seq).map_err(|_| invalid("negative sequence"))?;
    if seq > last.sequence {
        return Err(invalid("ends after the subject's last event"));
    }
    let fetched;
    let at = if seq == last.sequence {
        last
    } else {
        fetched = match stream.direct_get(seq).await {
            Ok(msg) => msg,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => {
                return Err(invalid("its last event is not in the stream"))
            }
            Err(e) => return Err(Unusable::Unavailable(GateError::Unavailable(e.to_string()))),
        };
        &fetched
    };
    if at.subject.as_str() != subject {
        return Err(invalid("its sequence holds another account's event"));
    }
    let event =
        Envelope::from_slice(&at.payload).map_err(|_| invalid("its last event cannot be read"))?;
    if event.event_id.0 != stored.event_id {
        return Err(invalid("its sequence holds another event"));
    }
    let state = AccountState::from_snapshot(&stored.state)
        .map_err(|e| Unusable::Invalid(format!("unreadable state: {e}")))?;
    if state.last_seq != seq || state.last_event() != Some(event.event_id) {
        return Err(invalid("its state does not end with its event"));
    }
    Ok(state)
}

/// States with up to this many entries are encoded where they are saved;
/// larger ones on the blocking pool, with [`Encode::OffThread`]. A state
/// keeps every settlement of the last day, so a busy account's is megabytes
/// (21 MB at 100,000 requests a day, `bench/README.md` "Sixth pass"), and
/// encoding it on the HTTP thread whose request triggered the save stalled
/// every other request on that thread for as long.
const ENCODE_INLINE_UP_TO: usize = 256;

/// Where [`write`] encodes a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Encode {
    /// On the calling thread (one that serves no requests).
    Here,
    /// Above [`ENCODE_INLINE_UP_TO`] entries, on the blocking pool.
    OffThread,
}

/// How many saves may wait for the [`Writer`]; more are dropped (the
/// account is then read back from an older snapshot and more events).
const WRITER_QUEUE: usize = 64;

/// How much lower than the rest of the process the writer's thread runs.
const WRITER_NICE: i32 = crate::consumers::NICE;

/// A thread that saves the snapshots requests make due, one at a time and
/// at a lower CPU priority than the request path, with its own PostgreSQL
/// connection. Encoding a state costs CPU in proportion to its size (one
/// entry per settled request of the last day), and on the runtime of the
/// HTTP thread that made the save due (as saves were made before), or on
/// its blocking pool, it ran at the priority of requests and slowed the
/// ones that came while it ran. The thread stops when the gate is dropped.
pub(super) struct Writer {
    queue: tokio::sync::mpsc::Sender<(ProjectId, String, AccountState)>,
}

impl Writer {
    /// Starts the thread (`None`, logged, if it could not be started).
    pub(super) fn start(pool: &PgPool, counters: Arc<Counters>) -> Option<Writer> {
        let (queue, mut saves) =
            tokio::sync::mpsc::channel::<(ProjectId, String, AccountState)>(WRITER_QUEUE);
        let options = (*pool.connect_options()).clone();
        let started = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .and_then(|runtime| {
                std::thread::Builder::new()
                    .name("tg-snapshots".to_owned())
                    .spawn(move || {
                        crate::consumers::lower_priority(WRITER_NICE, "snapshot writer");
                        runtime.block_on(async move {
                            // Its own connection, made on this thread's runtime.
                            let pool = sqlx::postgres::PgPoolOptions::new()
                                .max_connections(1)
                                .acquire_timeout(Duration::from_secs(5))
                                .connect_lazy_with(options);
                            while let Some((project, subject, state)) = saves.recv().await {
                                save(&pool, &counters, project, &subject, state, Encode::Here)
                                    .await;
                            }
                            pool.close().await;
                        });
                    })
            });
        match started {
            Ok(_) => Some(Writer { queue }),
            Err(e) => {
                tracing::warn!(error = %e, "could not start the snapshot writer; snapshots are saved only when the process stops");
                None
            }
        }
    }

    /// Queues a save; drops it if the queue is full.
    pub(super) fn save(&self, project: ProjectId, subject: String, state: AccountState) {
        if self.queue.try_send((project, subject, state)).is_err() {
            tracing::debug!("snapshot writer behind; a save was skipped");
        }
    }
}

/// [`write`], counted in `counters`; `None` if it failed (logged).
pub(super) async fn save(
    pool: &PgPool,
    counters: &Counters,
    project: ProjectId,
    subject: &str,
    state: AccountState,
    encode: Encode,
) -> Option<bool> {
    match write(pool, project, subject, state, encode).await {
        Ok(written) => {
            if written {
                counters.snapshots_saved.fetch_add(1, Ordering::Relaxed);
            }
            Some(written)
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "could not save an account snapshot");
            None
        }
    }
}

/// Stores `state` as the snapshot of `subject` unless a later one is stored.
/// Returns whether it was stored.
pub(super) async fn write(
    pool: &PgPool,
    project: ProjectId,
    subject: &str,
    state: AccountState,
    encode: Encode,
) -> anyhow::Result<bool> {
    let Some(event) = state.last_event() else {
        return Ok(false);
    };
    let last_seq = i64::try_from(state.last_seq)?;
    let bytes = if encode == Encode::Here || state.entries() <= ENCODE_INLINE_UP_TO {
        state.to_snapshot()?
    } else {
        tokio::task::spawn_blocking(move || state.to_snapshot())
            .await
            .map_err(|e| anyhow::anyhow!("encoding a snapshot failed: {e}"))??
    };
    let written = sqlx::query(
        "INSERT INTO account_snapshots (subject, project_id, seq, event_id, format, state, saved_at)
         VALUES ($1, $2, $3, $4, $5, $6, now())
         ON CONFLICT (subject) DO UPDATE
            SET seq = EXCLUDED.seq, event_id = EXCLUDED.event_id, format = EXCLUDED.format,
                state = EXCLUDED.state, saved_at = EXCLUDED.saved_at
          WHERE account_snapshots.seq < EXCLUDED.seq OR account_snapshots.format <> EXCLUDED.format",
    )
    .bind(subject)
    .bind(project.0)
    .bind(last_seq)
    .bind(event.0)
    .bind(SNAPSHOT_FORMAT)
    .bind(bytes)
    .execute(pool)
    .await?;
    Ok(written.rows_affected() == 1)
}

/// Deletes the snapshot of `subject` if it is still the one at `seq`.
pub(super) async fn delete(pool: &PgPool, subject: &str, seq: i64) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM account_snapshots WHERE subject = $1 AND seq = $2")
        .bind(subject)
        .bind(seq)
        .execute(pool)
        .await?;
    Ok(())
}

impl Stored {
    pub(super) fn seq(&self) -> i64 {
        self.seq
    }
}

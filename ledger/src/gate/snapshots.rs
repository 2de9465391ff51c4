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

use super::{Counters, GateError, SaveUndo};
use async_nats::jetstream::{self, stream::DirectGetErrorKind};
use projector::snapshot::SNAPSHOT_FORMAT;
use projector::{AccountState, SnapshotCopy};
use schemas::events::Envelope;
use schemas::ProjectId;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
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
    if !projector::snapshot::readable(stored.format) {
        return Err(invalid("written in a format this version does not read"));
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
    let state = AccountState::from_snapshot(stored.format, &stored.state)
        .map_err(|e| Unusable::Invalid(format!("unreadable state: {e}")))?;
    if state.last_seq != seq || state.last_event() != Some(event.event_id) {
        return Err(invalid("its state does not end with its event"));
    }
    Ok(state)
}

/// States with up to this many entries are encoded where they are saved;
/// larger ones on the blocking pool, with [`Encode::OffThread`]. A state
/// keeps every settlement of the last day, so a busy account's is megabytes
/// (4.2 MB at 100,000 requests a day, 21 MB in the JSON of format 2;
/// `bench/README.md` "Sixth pass" and "Fourteenth pass"), and
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

/// How many saves may wait for the [`Writer`]. A save that finds the queue
/// full is not made and its account is not marked saved, so it is made due
/// again by the account's next event (or the next idle sweep).
const WRITER_QUEUE: usize = 64;

/// How much lower than the rest of the process the writer's thread runs.
const WRITER_NICE: i32 = crate::consumers::NICE;

/// What the [`Writer`] is asked to do.
enum Job {
    /// A save, and how to mark its account unsaved again if it fails.
    Save(ProjectId, String, Box<SnapshotCopy>, Option<SaveUndo>),
    /// Answer once every save queued before this one is done.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// A thread that saves the snapshots requests make due, one at a time and
/// at a lower CPU priority than the request path, with its own PostgreSQL
/// connection. Encoding a state costs CPU in proportion to its size (one
/// entry per settled request of the last day), and on the runtime of the
/// HTTP thread that made the save due (as saves were made before), or on
/// its blocking pool, it ran at the priority of requests and slowed the
/// ones that came while it ran. The thread ends once every handle of its
/// gate is dropped and the saves queued before are done.
pub(super) struct Writer {
    queue: tokio::sync::mpsc::Sender<Job>,
    /// Whether the thread was found gone (warned about once).
    gone: AtomicBool,
}

/// Why a save cannot be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NoPlace {
    /// The queue is full for now.
    Full,
    /// Snapshots are off, or the writer could not be started or has stopped.
    Off,
}

/// A place in the [`Writer`]'s queue, taken before the state is copied.
pub(super) struct Place<'a>(tokio::sync::mpsc::Permit<'a, Job>);

impl Place<'_> {
    pub(super) fn save(
        self,
        project: ProjectId,
        subject: String,
        state: SnapshotCopy,
        undo: Option<SaveUndo>,
    ) {
        self.0
            .send(Job::Save(project, subject, Box::new(state), undo));
    }
}

impl Writer {
    /// Starts the thread (`None`, logged, if it could not be started).
    pub(super) fn start(pool: &PgPool, counters: Arc<Counters>) -> Option<Writer> {
        let (queue, mut jobs) = tokio::sync::mpsc::channel::<Job>(WRITER_QUEUE);
        let options = (*pool.connect_options()).clone();
        let started = std::thread::Builder::new()
            .name("tg-snapshots".to_owned())
            .spawn(move || {
                crate::consumers::lower_priority(WRITER_NICE, "snapshot writer");
                // Built here: a runtime must not be dropped on a runtime's thread.
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not start the snapshot writer's runtime; snapshots are saved only when the process stops");
                        return;
                    }
                };
                runtime.block_on(async move {
                    // Its own connection, made on this thread's runtime.
                    let pool = sqlx::postgres::PgPoolOptions::new()
                        .max_connections(1)
                        .acquire_timeout(Duration::from_secs(5))
                        .connect_lazy_with(options);
                    while let Some(job) = jobs.recv().await {
                        match job {
                            Job::Save(project, subject, state, undo) => {
                                let saved =
                                    save(&pool, &counters, project, &subject, *state, Encode::Here)
                                        .await;
                                if let (None, Some(undo)) = (saved, undo) {
                                    undo.apply().await;
                                }
                            }
                            Job::Flush(done) => {
                                let _ = done.send(());
                            }
                        }
                    }
                    pool.close().await;
                });
            });
        match started {
            Ok(_) => Some(Writer {
                queue,
                gone: AtomicBool::new(false),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "could not start the snapshot writer; snapshots are saved only when the process stops");
                None
            }
        }
    }

    /// A place for one save, if the queue has one.
    pub(super) fn place(&self) -> Result<Place<'_>, NoPlace> {
        match self.queue.try_reserve() {
            Ok(permit) => Ok(Place(permit)),
            Err(tokio::sync::mpsc::error::TrySendError::Full(())) => {
                tracing::debug!(
                    "snapshot writer behind; a save waits for the account's next event"
                );
                Err(NoPlace::Full)
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(())) => {
                if !self.gone.swap(true, Ordering::Relaxed) {
                    tracing::warn!("the snapshot writer has stopped; snapshots are saved only when the process stops");
                }
                Err(NoPlace::Off)
            }
        }
    }

    /// Waits until every save queued so far is done (or the writer is gone).
    pub(super) async fn flush(&self) {
        let (done, finished) = tokio::sync::oneshot::channel();
        if self.queue.send(Job::Flush(done)).await.is_ok() {
            let _ = finished.await;
        }
    }
}

/// [`write`], counted in `counters`; `None` if it failed (logged).
pub(super) async fn save(
    pool: &PgPool,
    counters: &Counters,
    project: ProjectId,
    subject: &str,
    state: SnapshotCopy,
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
    state: SnapshotCopy,
    encode: Encode,
) -> anyhow::Result<bool> {
    let Some(event) = state.last_event() else {
        return Ok(false);
    };
    let last_seq = i64::try_from(state.last_seq())?;
    let bytes = if encode == Encode::Here || state.entries() <= ENCODE_INLINE_UP_TO {
        state.to_snapshot()
    } else {
        tokio::task::spawn_blocking(move || state.to_snapshot())
            .await
            .map_err(|e| anyhow::anyhow!("encoding a snapshot failed: {e}"))?
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

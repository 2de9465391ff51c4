//! The gate's stream I/O: loading an account from its subject, catching up
//! on events appended by other processes, and the conditional append.

use super::GateError;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::{
    self, consumer::pull, context::Publish, context::PublishErrorKind, stream::DirectGetErrorKind,
};
use futures::StreamExt;
use projector::AccountState;
use schemas::events::Envelope;
use schemas::{subjects, Account, EventId, ProjectId, ReservationId};
use sqlx::PgPool;
use std::time::Duration;

/// Events read one by one before switching to a consumer when loading an account.
pub(super) const SHORT_HISTORY: usize = 32;

#[derive(Clone, Debug)]
pub(super) enum AppendError {
    /// Another process appended to the subject first (or, for an append
    /// chained behind another, the stream moved on past that one).
    Conflict,
    Unavailable(String),
}

/// What an append is conditioned on.
#[derive(Clone, Copy, Debug)]
pub(super) enum After {
    /// The subject's last stream sequence is this one (0: it has none).
    SubjectSeq(u64),
    /// The stream's last message is this event, sent as a tail
    /// (`Nats-Msg-Id` set to its id) and not acknowledged yet: an append
    /// chained behind it (`Nats-Expected-Last-Msg-Id`). nats-server keeps
    /// the id of the last message it stored, whether or not it had one, so
    /// this holds only if that event was stored and nothing at all after
    /// it; the event's own condition held, so the subject is then exactly
    /// what the state knew plus that event. (Stricter than the subject's
    /// sequence: any append to the stream in between, on any subject,
    /// refuses the chained one, which then catches up as after a conflict.)
    Event(EventId),
}

/// An append's acknowledgement: the stream sequence it was stored at.
pub(super) type Ack = futures::future::BoxFuture<'static, Result<u64, AppendError>>;

fn unavailable(e: impl std::fmt::Display) -> GateError {
    GateError::Unavailable(e.to_string())
}

fn decode(seq: u64, bytes: &[u8]) -> Result<Envelope, GateError> {
    Envelope::from_slice(bytes).map_err(|e| {
        GateError::Internal(anyhow::anyhow!(
            "event at stream sequence {seq} cannot be read: {e}"
        ))
    })
}

/// Sends `envelope` on its condition; the returned future is its
/// acknowledgement (a refusal comes with it), the error why it could not
/// be handed to the connection. Appends sent over one connection are
/// stored in the order they were sent.
///
/// No `Nats-Msg-Id` but on a `tail` (see [`After::Event`]): the expected
/// sequence already makes an append happen at most once (a second copy of
/// an event that landed finds the subject moved on and is refused), and
/// every attempt is a new event with a new id, so the server's duplicate
/// window never matched anything while costing nats-server ~15% of its CPU
/// per event (bench/README.md).
pub(super) async fn send(
    js: &jetstream::Context,
    subject: &str,
    envelope: &Envelope,
    after: After,
    tail: bool,
) -> Result<Ack, String> {
    let payload = envelope
        .to_vec()
        .map_err(|e| format!("encoding event: {e}"))?;
    let mut publish = Publish::build().payload(payload.into());
    publish = match after {
        After::SubjectSeq(seq) => publish.expected_last_subject_sequence(seq),
        After::Event(id) => publish.expected_last_message_id(id.to_string()),
    };
    if tail {
        publish = publish.message_id(envelope.event_id.to_string());
    }
    if let Some(request_id) = &envelope.request_id {
        publish = publish.header("x-request-id", request_id.as_str());
    }
    let ack = js
        .send_publish(subject.to_owned(), publish)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Box::pin(async move {
        ack.await
            .map(|ack| ack.sequence)
            .map_err(|e| classify(e.kind(), e.to_string()))
    }))
}

fn classify(kind: PublishErrorKind, e: String) -> AppendError {
    match kind {
        PublishErrorKind::WrongLastSequence | PublishErrorKind::WrongLastMessageId => {
            AppendError::Conflict
        }
        _ => AppendError::Unavailable(e),
    }
}

/// Applies every event on `subject` after `state.last_seq`; returns how many.
pub(super) async fn catch_up(
    stream: &jetstream::stream::Stream,
    subject: &str,
    state: &mut AccountState,
) -> Result<usize, GateError> {
    catch_up_at_most(stream, subject, state, usize::MAX).await
}

/// Like [`catch_up`], reading at most `limit` events.
async fn catch_up_at_most(
    stream: &jetstream::stream::Stream,
    subject: &str,
    state: &mut AccountState,
    limit: usize,
) -> Result<usize, GateError> {
    let mut applied = 0;
    while applied < limit {
        let msg = match stream
            .direct_get_next_for_subject(subject, Some(state.last_seq + 1))
            .await
        {
            Ok(msg) => msg,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(applied),
            Err(e) => return Err(unavailable(e)),
        };
        if let Some(status) = msg.status {
            if status != async_nats::StatusCode::OK {
                // e.g. 503 "no responders" while a restarted server recovers the stream.
                return Err(GateError::Unavailable(format!(
                    "direct get answered {status} {:?}",
                    msg.description
                )));
            }
        }
        let seq = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_SEQUENCE))
            .and_then(|v| v.as_str().parse::<u64>().ok())
            .ok_or_else(|| {
                GateError::Internal(anyhow::anyhow!("direct get answered without Nats-Sequence"))
            })?;
        let envelope = decode(seq, &msg.payload)?;
        state.apply(seq, &envelope);
        applied += 1;
    }
    Ok(applied)
}

/// The last message on `subject`, `None` if it has none.
pub(super) async fn last_message(
    stream: &jetstream::stream::Stream,
    subject: &str,
) -> Result<Option<jetstream::message::StreamMessage>, GateError> {
    match stream.direct_get_last_for_subject(subject).await {
        Ok(msg) => Ok(Some(msg)),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(e) => Err(unavailable(e)),
    }
}

/// Folds the events of `subject` after `state.last_seq` into `state`, up to
/// `last` at least (and whatever was appended meanwhile); returns how many.
pub(super) async fn fold_to(
    stream: &jetstream::stream::Stream,
    subject: &str,
    state: &mut AccountState,
    last: u64,
) -> Result<usize, GateError> {
    // A short history is cheaper to read with direct gets than with a consumer.
    let mut applied = catch_up_at_most(stream, subject, state, SHORT_HISTORY).await?;
    if state.last_seq >= last {
        return Ok(applied);
    }
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: state.last_seq + 1,
            },
            ..Default::default()
        })
        .await
        .map_err(unavailable)?;
    let mut messages = consumer.messages().await.map_err(unavailable)?;
    while state.last_seq < last {
        let next = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .map_err(|_| unavailable("timed out loading account history"))?;
        let Some(msg) = next else { break };
        let msg = msg.map_err(unavailable)?;
        let seq = msg.info().map_err(unavailable)?.stream_sequence;
        let envelope = decode(seq, &msg.payload)?;
        state.apply(seq, &envelope);
        applied += 1;
    }
    // Events appended while loading are picked up too.
    applied += catch_up(stream, subject, state).await?;
    Ok(applied)
}

/// The account whose hold `id` is, as far as the ledger has projected.
pub(super) async fn owner_in_ledger(
    pool: &PgPool,
    project: ProjectId,
    id: ReservationId,
) -> Result<Option<Account>, GateError> {
    Ok(in_ledger(pool, project, id).await?.map(|row| row.owner))
}

/// A reservation as the ledger's `reservations` table has it.
pub(super) struct LedgerRow {
    pub owner: Account,
    /// `open`, `committed`, `released` or `expired`.
    pub status: &'static str,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

pub(super) async fn in_ledger(
    pool: &PgPool,
    project: ProjectId,
    id: ReservationId,
) -> Result<Option<LedgerRow>, GateError> {
    let row: Option<(String, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT identity, status, expires_at FROM reservations \
         WHERE project_id = $1 AND reservation_id = $2",
    )
    .bind(project.0)
    .bind(id.0)
    .fetch_optional(pool)
    .await
    .map_err(unavailable)?;
    Ok(row.map(|(identity, status, expires_at)| LedgerRow {
        owner: Account::Identity { identity },
        status: match status.as_str() {
            "open" => "open",
            "committed" => "committed",
            "released" => "released",
            // The table allows no other value.
            _ => "expired",
        },
        expires_at,
    }))
}

/// Finds the account of a reservation taken by another process, via the
/// ledger's `reservations` table; waits (bounded) while the ledger lags.
pub(super) async fn locate_in_ledger(
    pool: &PgPool,
    stream: &jetstream::stream::Stream,
    project: ProjectId,
    id: ReservationId,
) -> Result<Account, GateError> {
    let mut stream = stream.clone();
    let target = stream
        .info()
        .await
        .map_err(unavailable)?
        .state
        .last_sequence;
    for _ in 0..100 {
        if let Some(account) = owner_in_ledger(pool, project, id).await? {
            return Ok(account);
        }
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT last_seq FROM checkpoints WHERE projection = $1")
                .bind(subjects::LEDGER_CONSUMER)
                .fetch_optional(pool)
                .await
                .map_err(unavailable)?;
        if applied.and_then(|a| u64::try_from(a).ok()).unwrap_or(0) >= target {
            return Err(GateError::NotFound);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(GateError::Unavailable("the ledger is behind; retry".into()))
}

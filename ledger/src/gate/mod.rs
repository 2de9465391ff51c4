//! The gate: every change to an account is a conditional append to the
//! account's one subject, decided on the account's latest state.
//!
//! Within a process, one task at a time works on an account (a per-account
//! mutex); across processes, `Nats-Expected-Last-Subject-Sequence` rejects an
//! append made on a stale view, and the loser catches up on the subject and
//! decides again. So admission is linearizable per account (invariant 1) and
//! each hold is settled at most once. If the append cannot be made durably the
//! caller gets [`GateError::Unavailable`] and nothing is forwarded (invariant 7).

pub mod decide;
mod interference;
mod io;
pub mod message;
mod snapshots;

use crate::clock::Clock;
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use decide::{ReserveDecision, ReserveRequest, SettleDecision, Violation};
use futures::future::{FutureExt as _, Shared as SharedFuture};
use projector::{AccountState, LimitView, Settlement};
use schemas::events::{Envelope, Event, UsageRecorded};
use schemas::plan::Tier;
use schemas::{subjects, Account, Amounts, EventId, ProjectId, ReservationId, SCHEMA_VERSION};
use sqlx::PgPool;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::Mutex;

/// How many times a decision is retried after losing a race to another process.
const MAX_ATTEMPTS: usize = 64;
/// Most reservation → account entries remembered in memory before starting over.
const MAX_INDEX_ENTRIES: usize = 1_000_000;
/// By default an account's state is saved as a snapshot (when the gate has
/// a database) after this many events folded since its last one, or as
/// many as it had entries then if that is more ([`save_due`]), and when
/// it is forgotten or the process stops with at least
/// [`io::SHORT_HISTORY`] events unsaved (fewer are as cheap to read again).
pub const SNAPSHOT_EVERY: u64 = 1_000;

/// Whether a state with `unsaved` events folded since its last snapshot,
/// which then had `saved_entries` entries ([`AccountState::entries`]), is
/// saved now, snapshots being taken every `every` events (0: never).
///
/// A save costs time in proportion to the state's size, and the state of a
/// busy account keeps every settlement of the last day (a 21 MB snapshot at
/// 100,000 events a day, 750 ms to save). An event adds at most one entry,
/// so waiting for at least as many events as the last snapshot had entries
/// bounds what saving costs per event (at most two entries serialized,
/// amortized) however big the state grows, where a fixed interval would
/// cost in proportion to the state's size; an account read back still
/// folds at most that many events after its snapshot.
pub fn save_due(unsaved: u64, every: u64, saved_entries: u64) -> bool {
    every > 0 && unsaved >= every.max(saved_entries)
}
/// How long reading an account back waits for its snapshot.
const SNAPSHOT_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("the ledger is unavailable: {0}")]
    Unavailable(String),
    /// The event was sent but its acknowledgement did not arrive: it may or
    /// may not be stored (the ledger is unavailable all the same).
    #[error("the ledger is unavailable: {0}")]
    Unconfirmed(String),
    #[error("reservation not found")]
    NotFound,
    #[error("reservation is already {status}")]
    Conflict { status: &'static str },
    /// The reservation id names a hold of another account of the project.
    #[error("reservation id is already used by another account of this project")]
    ReservationIdInUse,
    #[error("account is too contended; retry")]
    Contention,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

#[derive(Clone, Debug)]
pub struct Admitted {
    pub reservation_id: ReservationId,
    pub expires_at: DateTime<Utc>,
    /// `open`, or how it was settled when this is a repeated request.
    pub status: &'static str,
    pub replayed: bool,
    pub limits: Vec<LimitView>,
    /// Output tokens allowed (lowered to fit the budget) when the request was flexible.
    pub output_tokens: Option<u64>,
    /// What is held.
    pub held: Amounts,
}

#[derive(Clone, Debug)]
pub struct Denied {
    pub violation: Violation,
    pub retry_after: Option<DateTime<Utc>>,
    pub limits: Vec<LimitView>,
}

#[derive(Clone, Debug)]
pub enum ReserveOutcome {
    Admitted(Admitted),
    Denied(Denied),
}

#[derive(Clone, Debug)]
pub struct SettleOutcome {
    pub reservation_id: ReservationId,
    pub settlement: Settlement,
    /// The same settlement was made before; nothing changed now.
    pub replayed: bool,
    /// Committed after the hold had expired: recorded as usage.
    pub late: bool,
}

/// A decision's result: done, or an event to append then a result to build.
enum Step<T> {
    Done(T),
    /// Answer only if the view is fresh (a denial or "not found" on a stale
    /// view would be a false answer): refresh and decide again otherwise.
    DoneIfFresh(T),
    Append(Event, Box<dyn FnOnce(&AccountState) -> T + Send>),
}

struct Slot {
    project: ProjectId,
    state: Option<AccountState>,
    /// When a task last took this slot (the gate's clock).
    touched: DateTime<Utc>,
    saves: Saves,
    /// The last append sent as a tail ([`Keep::UntilSent`]) whose
    /// acknowledgement is not taken in yet: `state` has its event applied
    /// already, without its stream sequence.
    tail: Option<Tail>,
    /// Counts the times `state` was dropped, so a tail's late answer can
    /// tell whether it still concerns the state in the slot.
    epoch: u64,
}

impl Slot {
    fn new(project: ProjectId) -> Slot {
        Slot {
            project,
            state: None,
            touched: DateTime::<Utc>::MIN_UTC,
            saves: Saves::default(),
            tail: None,
            epoch: 0,
        }
    }

    /// Drops the state (it is read back on next use), with any tail it assumed.
    fn forget_state(&mut self) {
        self.state = None;
        self.tail = None;
        self.epoch += 1;
    }

    /// Takes the answer to `tail`'s append in: its stream sequence if it is
    /// still the account's tail (else the append chained behind it brings
    /// a later one); if it was refused or went unanswered, the state that
    /// assumed it is dropped, unless that was done already.
    fn take_ack(&mut self, tail: &Tail, answer: &Result<u64, io::AppendError>) {
        if self.epoch != tail.epoch {
            return;
        }
        match answer {
            Ok(seq) => {
                if self
                    .tail
                    .as_ref()
                    .is_some_and(|t| t.event_id == tail.event_id)
                {
                    self.tail = None;
                    if let Some(state) = self.state.as_mut() {
                        state.confirm(*seq, tail.event_id);
                    }
                }
            }
            Err(_) => self.forget_state(),
        }
    }

    /// Takes the tail's answer in if it has come.
    fn take_ack_if_answered(&mut self) {
        if let Some(tail) = self.tail.clone() {
            if let Some(answer) = tail.ack.clone().now_or_never() {
                self.take_ack(&tail, &answer);
            }
        }
    }
}

/// An account's append sent but not acknowledged, that later appends over
/// the same connection are chained behind ([`io::After::Event`]).
#[derive(Clone)]
struct Tail {
    event_id: EventId,
    /// The connection it was sent over ([`Io::id`]): nats-server stores a
    /// connection's appends in the order they were sent, so only an append
    /// over the same one can follow it without waiting for its answer.
    io: u64,
    /// [`Slot::epoch`] when it was sent.
    epoch: u64,
    ack: SharedFuture<io::Ack>,
}

pub use interference::{
    LIMIT_PERCENT as CHAINS_REFUSED_LIMIT_PERCENT, PROBE_EVERY as CHAIN_PROBE_EVERY,
};

/// When a settlement may be sent as a tail ([`Keep::UntilSent`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chaining {
    /// Never: every settlement keeps its account until acknowledged.
    Off,
    /// When the process has no other append in flight, unless what was
    /// chained behind tails has lately been refused too often (the default).
    Adaptive,
    /// Whenever the process has no other append in flight, however often
    /// that is refused (to measure what the adaptive rule saves).
    Always,
}

/// How long an append keeps its account to itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Keep {
    /// Until it is acknowledged (a hold is durable before its request goes on).
    UntilAcked,
    /// Settlements: only until it is sent, if no other append of this
    /// process is in flight. The account's next request, often right behind
    /// (a user's next call comes as soon as the last one's answer), then
    /// decides on the state with this event applied and appends chained
    /// behind it, instead of waiting a round trip to nats-server for its
    /// acknowledgement first. A busy process keeps the account until the
    /// acknowledgement, as every append did before: chaining costs
    /// nats-server a `Nats-Msg-Id` per tail, and any append to the stream
    /// in between refuses the chained one (see [`io::After::Event`]), which
    /// is then decided and sent again. Where that happens often (other
    /// processes appending to the stream), settlements keep their account
    /// until acknowledged again but for a few that keep measuring
    /// ([`interference`]).
    UntilSent,
}

/// How far an account's state is from its last snapshot.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Saves {
    /// Events folded into the state since it was last saved as, or read
    /// from, a snapshot.
    unsaved: u64,
    /// How many entries the state had then ([`AccountState::entries`]).
    saved_entries: u64,
}

impl Saves {
    /// The state is being saved (or was just read back) with `entries`
    /// entries. Returns what to give [`Saves::save_failed`] if the save fails.
    fn mark_saved(&mut self, entries: usize) -> Saves {
        std::mem::replace(
            self,
            Saves {
                unsaved: 0,
                saved_entries: entries as u64,
            },
        )
    }

    /// The save marked when it said `before` failed: the events it covered
    /// are unsaved again (with any folded since), so a later event or stop
    /// saves them.
    fn save_failed(&mut self, before: Saves) {
        self.unsaved = self.unsaved.saturating_add(before.unsaved);
        self.saved_entries = before.saved_entries;
    }
}

/// An account's slot and what it said before a save, to undo the marking
/// if the save fails.
pub(super) struct SaveUndo {
    slot: Arc<Mutex<Slot>>,
    before: Saves,
}

impl SaveUndo {
    pub(super) async fn apply(self) {
        self.slot.lock().await.saves.save_failed(self.before);
    }
}

/// How this process's gate has been reading accounts back from the stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Accounts read into memory (first use, after being forgotten, or
    /// after a failed append).
    pub loads: u64,
    /// Of those, how many started from a snapshot.
    pub from_snapshot: u64,
    /// Events read from the stream while loading.
    pub events_read: u64,
    /// Snapshots written.
    pub snapshots_saved: u64,
    /// Appends chained behind an account's unacknowledged settlement
    /// ([`Keep::UntilSent`]) rather than waiting for its acknowledgement.
    pub appends_chained: u64,
    /// Of those, how many were refused because another append reached the
    /// stream between the settlement and them (another process, or another
    /// connection of this one), and were sent again.
    pub chains_refused: u64,
    /// The share of chained appends refused that way lately, in percent (a
    /// moving average): at [`CHAINS_REFUSED_LIMIT_PERCENT`] or more, settlements
    /// wait for their acknowledgement again, but for one in
    /// [`CHAIN_PROBE_EVERY`] that keeps measuring.
    pub chains_refused_lately: u32,
}

#[derive(Default)]
pub(super) struct Counters {
    loads: AtomicU64,
    from_snapshot: AtomicU64,
    events_read: AtomicU64,
    snapshots_saved: AtomicU64,
    appends_chained: AtomicU64,
    chains_refused: AtomicU64,
}

/// What every handle of one process's gate shares.
struct Shared {
    clock: Arc<dyn Clock>,
    accounts: DashMap<String, Arc<Mutex<Slot>>, foldhash::fast::RandomState>,
    index: DashMap<(ProjectId, ReservationId), Account, foldhash::fast::RandomState>,
    pool: Option<PgPool>,
    /// See [`SNAPSHOT_EVERY`]; 0 turns snapshots off.
    snapshot_every: AtomicU64,
    counters: Arc<Counters>,
    /// The thread that saves snapshots in the background, started with the
    /// first such save (`None`: it could not be started).
    writer: OnceLock<Option<snapshots::Writer>>,
    /// Appends sent and not yet answered, over every handle.
    appending: AtomicUsize,
    /// [`Chaining`], as its index.
    chaining: AtomicU8,
    /// How often what was chained behind a tail was refused.
    interference: interference::Interference,
}

/// Counts an append in flight in [`Shared::appending`] while it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(count: &'a AtomicUsize) -> InFlight<'a> {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The NATS connection one handle appends and reads over.
struct Io {
    /// Tells connections apart (see [`Tail::io`]).
    id: u64,
    /// Whether settlements may be sent as tails: only on a stream of one
    /// replica. The check behind chaining is the id of the last message a
    /// server stored, kept in each replica's memory; whether a replica that
    /// caught up from its peers keeps it right is not something to rely on.
    chains: bool,
    client: async_nats::Client,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
}

/// Cheap to clone; one per process, or one handle per runtime thread sharing
/// the same accounts (see [`Gate::on_this_thread`]).
#[derive(Clone)]
pub struct Gate {
    shared: Arc<Shared>,
    io: Arc<Io>,
}

impl Io {
    async fn new(client: async_nats::Client) -> anyhow::Result<Io> {
        let js = crate::stream::jetstream(client.clone());
        let stream = crate::stream::ensure_ledger_stream(&js).await?;
        static IDS: AtomicU64 = AtomicU64::new(0);
        Ok(Io {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            chains: stream.cached_info().config.num_replicas <= 1,
            client,
            js,
            stream,
        })
    }
}

impl Gate {
    /// `pool` lets the gate find reservations taken by other processes,
    /// and keep snapshots of account states (`account_snapshots`).
    pub async fn new(
        client: async_nats::Client,
        clock: Arc<dyn Clock>,
        pool: Option<PgPool>,
    ) -> anyhow::Result<Gate> {
        let shared = Shared {
            clock,
            accounts: DashMap::with_hasher(Default::default()),
            index: DashMap::with_hasher(Default::default()),
            pool,
            snapshot_every: AtomicU64::new(SNAPSHOT_EVERY),
            counters: Arc::default(),
            writer: OnceLock::new(),
            appending: AtomicUsize::new(0),
            chaining: AtomicU8::new(Chaining::Adaptive as u8),
            interference: interference::Interference::default(),
        };
        Ok(Gate {
            shared: Arc::new(shared),
            io: Arc::new(Io::new(client).await?),
        })
    }

    /// The same gate (accounts, holds, reservation index) appending over a
    /// new connection to `nats_url`, made on the calling thread. A
    /// thread-per-core server gives each thread such a handle, so a request,
    /// its append and the append's ack are handled on one thread with no
    /// cross-thread wake-up. Per-account order is unchanged: every handle
    /// locks the same account slot.
    pub async fn on_this_thread(&self, nats_url: &str) -> anyhow::Result<Gate> {
        let client = crate::stream::connect(nats_url).await?;
        Ok(Gate {
            shared: self.shared.clone(),
            io: Arc::new(Io::new(client).await?),
        })
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.shared.clock.now()
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.io.js
    }

    /// Saves an account's snapshot after `every` events folded since its
    /// last one (default [`SNAPSHOT_EVERY`]), or more for a big state
    /// ([`save_due`]); 0 turns snapshots off, both saving and reading them.
    /// For every handle of this gate.
    pub fn set_snapshot_every(&self, every: u64) {
        self.shared.snapshot_every.store(every, Ordering::Relaxed);
    }

    /// When a settlement may free its account once sent (see
    /// [`Keep::UntilSent`]); [`Chaining::Adaptive`] by default. For every
    /// handle of this gate.
    pub fn set_chaining(&self, chaining: Chaining) {
        self.shared
            .chaining
            .store(chaining as u8, Ordering::Relaxed);
    }

    /// Whether this settlement may be sent as a tail, the process having no
    /// other append in flight. Asked again if it is decided again.
    fn may_send_as_tail(&self) -> bool {
        match self.shared.chaining.load(Ordering::Relaxed) {
            c if c == Chaining::Always as u8 => true,
            c if c == Chaining::Adaptive as u8 => self.shared.interference.allows_tail(),
            _ => false,
        }
    }

    /// How accounts have been read back so far (all handles of this gate).
    pub fn load_stats(&self) -> LoadStats {
        let c = &self.shared.counters;
        LoadStats {
            loads: c.loads.load(Ordering::Relaxed),
            from_snapshot: c.from_snapshot.load(Ordering::Relaxed),
            events_read: c.events_read.load(Ordering::Relaxed),
            snapshots_saved: c.snapshots_saved.load(Ordering::Relaxed),
            appends_chained: c.appends_chained.load(Ordering::Relaxed),
            chains_refused: c.chains_refused.load(Ordering::Relaxed),
            chains_refused_lately: self.shared.interference.percent_refused(),
        }
    }

    /// The database snapshots are kept in, if they are on.
    fn snapshot_pool(&self) -> Option<&PgPool> {
        match self.shared.snapshot_every.load(Ordering::Relaxed) {
            0 => None,
            _ => self.shared.pool.as_ref(),
        }
    }

    /// Reads an account into memory: from its snapshot, if there is a usable
    /// one, then the events after it. Returns the state and how many events
    /// were read.
    async fn load(&self, subject: &str) -> Result<(AccountState, u64), GateError> {
        let counters = &self.shared.counters;
        counters.loads.fetch_add(1, Ordering::Relaxed);
        let Some(last) = io::last_message(&self.io.stream, subject).await? else {
            return Ok((AccountState::new(), 0));
        };
        let Some(pool) = self.snapshot_pool() else {
            return self
                .fold_from(subject, AccountState::new(), last.sequence)
                .await;
        };
        // Asked only once the account is known to have events (a new
        // account never waits for PostgreSQL), and not for long: without
        // its snapshot an account is read whole, as before.
        let stored = match tokio::time::timeout(
            SNAPSHOT_READ_TIMEOUT,
            snapshots::read(pool, subject),
        )
        .await
        {
            Ok(Ok(stored)) => stored,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read account snapshots; reading the whole history");
                None
            }
            Err(_) => {
                tracing::warn!(
                    "account snapshots did not answer in time; reading the whole history"
                );
                None
            }
        };
        let mut state = AccountState::new();
        if let Some(stored) = stored {
            match snapshots::restore(&self.io.stream, subject, &stored, &last).await {
                Ok(restored) => {
                    state = restored;
                    counters.from_snapshot.fetch_add(1, Ordering::Relaxed);
                }
                Err(snapshots::Unusable::Invalid(why)) => {
                    tracing::info!(subject, why, "account snapshot not usable; deleted");
                    if let Err(e) = snapshots::delete(pool, subject, stored.seq()).await {
                        tracing::warn!(error = %e, "could not delete an unusable account snapshot");
                    }
                }
                Err(snapshots::Unusable::Unavailable(e)) => return Err(e),
            }
        }
        self.fold_from(subject, state, last.sequence).await
    }

    /// Folds the events of `subject` after `state` up to `last` at least.
    async fn fold_from(
        &self,
        subject: &str,
        mut state: AccountState,
        last: u64,
    ) -> Result<(AccountState, u64), GateError> {
        let read = io::fold_to(&self.io.stream, subject, &mut state, last).await? as u64;
        self.shared
            .counters
            .events_read
            .fetch_add(read, Ordering::Relaxed);
        Ok((state, read))
    }

    /// A place in the snapshot writer's queue ([`snapshots::Writer`]) for
    /// one save in the background. Without one the account stays unsaved,
    /// so a later event makes its save due again.
    fn snapshot_place(&self) -> Result<snapshots::Place<'_>, snapshots::NoPlace> {
        let pool = self.snapshot_pool().ok_or(snapshots::NoPlace::Off)?;
        self.shared
            .writer
            .get_or_init(|| snapshots::Writer::start(pool, self.shared.counters.clone()))
            .as_ref()
            .ok_or(snapshots::NoPlace::Off)?
            .place()
    }

    /// Saves a snapshot of every account in memory with at least
    /// [`io::SHORT_HISTORY`] events unsaved, so that the next process reads
    /// less (as `serve` does when it stops). Returns how many were saved.
    pub async fn save_snapshots(&self) -> usize {
        let Some(pool) = self.snapshot_pool() else {
            return 0;
        };
        // Saves already queued count their accounts as saved: finish them.
        if let Some(Some(writer)) = self.shared.writer.get() {
            writer.flush().await;
        }
        let slots: Vec<(String, Arc<Mutex<Slot>>)> = self
            .shared
            .accounts
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        let mut saved = 0;
        for (subject, handle) in slots {
            let (project, state, before) = {
                let mut slot = handle.lock().await;
                slot.take_ack_if_answered();
                match &slot.state {
                    Some(state)
                        if slot.tail.is_none()
                            && slot.saves.unsaved >= io::SHORT_HISTORY as u64 =>
                    {
                        let state = state.snapshot_copy();
                        let before = slot.saves.mark_saved(state.entries());
                        (slot.project, state, before)
                    }
                    _ => continue,
                }
            };
            match snapshots::save(
                pool,
                &self.shared.counters,
                project,
                &subject,
                state,
                snapshots::Encode::OffThread,
            )
            .await
            {
                Some(true) => saved += 1,
                Some(false) => {}
                None => {
                    handle.lock().await.saves.save_failed(before);
                    break;
                }
            }
        }
        saved
    }

    /// Takes a hold if every limit of `tier` allows it. For a reservation
    /// id this gate made (fresh, so never used before); see
    /// [`Gate::reserve_client_id`] for one a client chose.
    pub async fn reserve(
        &self,
        project: ProjectId,
        account: &Account,
        tier: &Tier,
        req: ReserveRequest,
        request_id: Option<String>,
    ) -> Result<ReserveOutcome, GateError> {
        self.reserve_as(project, account, tier, req, request_id, false)
            .await
    }

    /// [`Gate::reserve`] for a reservation id the client chose, which it
    /// may have used before, for any account. Reservations are named by
    /// (project, id): settling one without naming its account finds it by
    /// that pair alone. So an id that already names a hold of another
    /// account of the project is refused ([`GateError::ReservationIdInUse`])
    /// rather than becoming a second hold under the same name. Besides this
    /// process's own index, the ledger's `reservations` table is asked (for
    /// ids other processes took, and for ids of this account its state has
    /// forgotten, which are answered as repeats); an id another process
    /// took so recently that the ledger has not projected it yet is not
    /// seen there.
    pub async fn reserve_client_id(
        &self,
        project: ProjectId,
        account: &Account,
        tier: &Tier,
        req: ReserveRequest,
        request_id: Option<String>,
    ) -> Result<ReserveOutcome, GateError> {
        self.reserve_as(project, account, tier, req, request_id, true)
            .await
    }

    async fn reserve_as(
        &self,
        project: ProjectId,
        account: &Account,
        tier: &Tier,
        req: ReserveRequest,
        request_id: Option<String>,
        client_id: bool,
    ) -> Result<ReserveOutcome, GateError> {
        let key = (project, req.reservation_id);
        // Claimed before deciding, so two requests of this process naming
        // the same id for different accounts cannot both take a hold.
        let claimed = self.claim_id(key, account)?;
        let outcome = match self
            .reserve_claimed(project, account, tier, req, request_id, client_id)
            .await
        {
            Ok(outcome @ ReserveOutcome::Admitted(_)) => {
                if !claimed {
                    // (An entry cleared meanwhile is put back.)
                    self.shared.index.insert(key, account.clone());
                }
                return Ok(outcome);
            }
            other => other,
        };
        if claimed {
            self.shared
                .index
                .remove_if(&key, |_, owner| owner == account);
        }
        outcome
    }

    /// Records that `account` is taking reservation `key`; `Ok(true)` if
    /// this call made the entry, `Ok(false)` if it was already there.
    fn claim_id(
        &self,
        key: (ProjectId, ReservationId),
        account: &Account,
    ) -> Result<bool, GateError> {
        if self.shared.index.len() >= MAX_INDEX_ENTRIES {
            self.shared.index.clear();
        }
        match self.shared.index.entry(key) {
            dashmap::Entry::Occupied(owner) if owner.get() != account => {
                Err(GateError::ReservationIdInUse)
            }
            dashmap::Entry::Occupied(_) => Ok(false),
            dashmap::Entry::Vacant(slot) => {
                slot.insert(account.clone());
                Ok(true)
            }
        }
    }

    async fn reserve_claimed(
        &self,
        project: ProjectId,
        account: &Account,
        tier: &Tier,
        req: ReserveRequest,
        request_id: Option<String>,
        client_id: bool,
    ) -> Result<ReserveOutcome, GateError> {
        // What the ledger knows of a client's id: a hold of another account
        // refuses it; one of this account that its state no longer holds
        // (settlements are forgotten a day on, `IDEMPOTENCY_HORIZON_HOURS`)
        // is answered as a repeat, never taken again: a second `reserved`
        // under the id would not be projected (the ledger keeps the first
        // row), so no sweep would ever expire it.
        let mut in_ledger = None;
        if client_id {
            if let Some(pool) = &self.shared.pool {
                if let Some(row) =
                    Box::pin(io::in_ledger(pool, project, req.reservation_id)).await?
                {
                    if row.owner != *account {
                        return Err(GateError::ReservationIdInUse);
                    }
                    in_ledger = Some((row.status, row.expires_at));
                }
            }
        }
        let tier = tier.clone();
        self.with_account(
            project,
            account,
            request_id,
            Keep::UntilAcked,
            move |state, now| {
                // An id the state has forgotten but the ledger has is a repeat.
                let decision = match (decide::decide_reserve(state, &tier, &req, now), in_ledger) {
                    (ReserveDecision::Admit { .. }, Some((status, expires_at))) => {
                        ReserveDecision::Existing { expires_at, status }
                    }
                    (decision, _) => decision,
                };
                match decision {
                    ReserveDecision::Existing { expires_at, status } => {
                        Step::Done(ReserveOutcome::Admitted(Admitted {
                            reservation_id: req.reservation_id,
                            expires_at,
                            status,
                            replayed: true,
                            limits: decide::views(state, &tier, now),
                            output_tokens: None,
                            held: state
                                .open_hold(&req.reservation_id)
                                .map(|h| h.amounts.clone())
                                .unwrap_or_default(),
                        }))
                    }
                    ReserveDecision::Deny {
                        violation,
                        retry_after,
                    } => Step::DoneIfFresh(ReserveOutcome::Denied(Denied {
                        violation,
                        retry_after,
                        limits: decide::views(state, &tier, now),
                    })),
                    ReserveDecision::Admit {
                        event,
                        output_tokens,
                    } => {
                        let (id, expires_at, tier) =
                            (req.reservation_id, req.expires_at, tier.clone());
                        Step::Append(
                            event,
                            Box::new(move |state: &AccountState| {
                                let held = state
                                    .open_hold(&id)
                                    .map(|h| h.amounts.clone())
                                    .unwrap_or_default();
                                ReserveOutcome::Admitted(Admitted {
                                    reservation_id: id,
                                    expires_at,
                                    status: "open",
                                    replayed: false,
                                    limits: decide::views(state, &tier, now),
                                    output_tokens,
                                    held,
                                })
                            }),
                        )
                    }
                }
            },
        )
        .await
    }

    /// Settles a hold with the actual usage (units left out are committed as held).
    pub async fn commit(
        &self,
        project: ProjectId,
        id: ReservationId,
        account: Option<&Account>,
        actual: Amounts,
        request_id: Option<String>,
    ) -> Result<SettleOutcome, GateError> {
        let account = self.locate(project, id, account).await?;
        self.settle(project, &account, id, request_id, move |state| {
            decide::decide_commit(state, id, &actual)
        })
        .await
    }

    /// Gives a hold back.
    pub async fn release(
        &self,
        project: ProjectId,
        id: ReservationId,
        account: Option<&Account>,
        reason: Option<String>,
        request_id: Option<String>,
    ) -> Result<SettleOutcome, GateError> {
        let account = self.locate(project, id, account).await?;
        self.settle(project, &account, id, request_id, move |state| {
            decide::decide_release(state, id, reason.clone())
        })
        .await
    }

    /// Releases a hold whose TTL has passed; `Ok(false)` if it was not (or no longer) open and due.
    pub async fn expire(
        &self,
        project: ProjectId,
        account: &Account,
        id: ReservationId,
    ) -> Result<bool, GateError> {
        self.with_account(
            project,
            account,
            None,
            Keep::UntilAcked,
            move |state, now| match state.open_hold(&id) {
                Some(hold) if hold.expires_at <= now => {
                    let event = Event::Expired(schemas::events::Expired {
                        hold: hold.hold_ref(id),
                        expires_at: hold.expires_at,
                    });
                    Step::Append(event, Box::new(|_: &AccountState| true))
                }
                Some(_) => Step::Done(false),
                None => Step::DoneIfFresh(false),
            },
        )
        .await
    }

    /// Records usage that had no hold. Returns false if `usage_id` was recorded before.
    /// Records usage that had no hold; returns whether it was new (false: `usage_id`
    /// was recorded before) and the limits view of `tier` after it.
    pub async fn record_usage(
        &self,
        project: ProjectId,
        account: &Account,
        tier: &Tier,
        usage: UsageRecorded,
        request_id: Option<String>,
    ) -> Result<(bool, Vec<LimitView>), GateError> {
        let tier = tier.clone();
        self.with_account(
            project,
            account,
            request_id,
            Keep::UntilAcked,
            move |state, now| match decide::decide_usage(
                state,
                usage.usage_id,
                usage.model.clone(),
                usage.amounts.clone(),
            ) {
                Some(event) => {
                    let tier = tier.clone();
                    Step::Append(
                        event,
                        Box::new(move |state: &AccountState| {
                            (true, decide::views(state, &tier, now))
                        }),
                    )
                }
                None => Step::DoneIfFresh((false, decide::views(state, &tier, now))),
            },
        )
        .await
    }

    /// The limits view of an account, read fresh from the stream.
    pub async fn view(
        &self,
        project: ProjectId,
        account: &Account,
        tier: &Tier,
    ) -> Result<Vec<LimitView>, GateError> {
        let tier = tier.clone();
        self.with_account(
            project,
            account,
            None,
            Keep::UntilAcked,
            move |state, now| Step::DoneIfFresh(decide::views(state, &tier, now)),
        )
        .await
    }

    async fn settle(
        &self,
        project: ProjectId,
        account: &Account,
        id: ReservationId,
        request_id: Option<String>,
        decide: impl Fn(&AccountState) -> SettleDecision + Send,
    ) -> Result<SettleOutcome, GateError> {
        self.with_account(
            project,
            account,
            request_id,
            Keep::UntilSent,
            move |state, _| match decide(state) {
                SettleDecision::Append(event) => {
                    let late = matches!(event, Event::UsageRecorded(_));
                    Step::Append(
                        event,
                        Box::new(move |state: &AccountState| {
                            let settlement = state
                                .settled(&id)
                                .map(|s| s.settlement.clone())
                                .unwrap_or(Settlement::Expired);
                            Ok(SettleOutcome {
                                reservation_id: id,
                                settlement,
                                replayed: false,
                                late,
                            })
                        }),
                    )
                }
                SettleDecision::Repeat(settlement) => {
                    let late = matches!(settlement, Settlement::Expired);
                    Step::Done(Ok(SettleOutcome {
                        reservation_id: id,
                        settlement,
                        replayed: true,
                        late,
                    }))
                }
                SettleDecision::Conflict { status } => {
                    Step::Done(Err(GateError::Conflict { status }))
                }
                SettleDecision::NotFound => Step::DoneIfFresh(Err(GateError::NotFound)),
            },
        )
        .await?
    }

    /// Runs `decide` on the account's latest state, appending what it asks for.
    async fn with_account<T: Send + 'static>(
        &self,
        project: ProjectId,
        account: &Account,
        request_id: Option<String>,
        keep: Keep,
        mut decide: impl FnMut(&AccountState, DateTime<Utc>) -> Step<T> + Send,
    ) -> Result<T, GateError> {
        let subject = subjects::account_subject(project, account);
        let handle = self
            .shared
            .accounts
            .entry(subject.clone())
            .or_insert_with(|| Arc::new(Mutex::new(Slot::new(project))))
            .clone();
        let mut guard = handle.lock().await;
        guard.touched = self.shared.clock.now();
        if self.io.client.connection_state() != async_nats::connection::State::Connected {
            guard.forget_state();
            return Err(GateError::Unavailable("not connected to NATS".into()));
        }
        let mut fresh = false;
        for _ in 0..MAX_ATTEMPTS {
            let slot = &mut *guard;
            slot.take_ack_if_answered();
            let state = match slot.state.as_mut() {
                Some(state) => state,
                None => {
                    fresh = true;
                    // Boxed, as below: rare paths whose futures would otherwise
                    // make every call's future (moved on each spawn) kilobytes larger.
                    let (state, read) = Box::pin(self.load(&subject)).await?;
                    slot.saves.mark_saved(state.entries());
                    slot.saves.unsaved = read;
                    slot.state.insert(state)
                }
            };
            let now = self.shared.clock.now();
            let step = decide(state, now);
            // Only an append over the tail's own connection goes on before
            // the tail is answered; anything else waits for the answer and
            // decides again.
            let chain = match &slot.tail {
                None => None,
                Some(tail) if matches!(step, Step::Append(..)) && tail.io == self.io.id => {
                    Some(tail.clone())
                }
                Some(tail) => {
                    let tail = tail.clone();
                    let answer = tail.ack.clone().await;
                    slot.take_ack(&tail, &answer);
                    continue;
                }
            };
            match step {
                Step::Done(t) => return Ok(t),
                Step::DoneIfFresh(t) => {
                    if fresh {
                        return Ok(t);
                    }
                    let read = Box::pin(io::catch_up(&self.io.stream, &subject, state)).await?;
                    slot.saves.unsaved += read as u64;
                    if read == 0 {
                        return Ok(t);
                    }
                    fresh = true;
                }
                Step::Append(event, finish) => {
                    let envelope = Envelope {
                        event_id: EventId::new(),
                        schema_version: SCHEMA_VERSION,
                        occurred_at: now,
                        project_id: project,
                        account: account.clone(),
                        request_id: request_id.clone(),
                        event,
                    };
                    let as_tail = keep == Keep::UntilSent
                        && self.io.chains
                        && self.shared.appending.load(Ordering::Relaxed) == 0
                        && self.may_send_as_tail();
                    let after = match &chain {
                        Some(tail) => io::After::Event(tail.event_id),
                        None => io::After::SubjectSeq(state.last_seq),
                    };
                    let in_flight = InFlight::new(&self.shared.appending);
                    let sent = io::send(&self.io.js, &subject, &envelope, after, as_tail).await;
                    let ack = match sent {
                        Ok(ack) => ack,
                        Err(why) => {
                            // It may or may not have gone out: read the account back next time.
                            slot.forget_state();
                            return Err(GateError::Unconfirmed(why));
                        }
                    };
                    if chain.is_some() {
                        self.shared
                            .counters
                            .appends_chained
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    if as_tail {
                        // The account is free for the next task once the
                        // event is applied; its answer is taken in below, or
                        // by whichever task needs it first.
                        state.apply(0, &envelope);
                        slot.saves.unsaved += 1;
                        let done = finish(state);
                        let tail = Tail {
                            event_id: envelope.event_id,
                            io: self.io.id,
                            epoch: slot.epoch,
                            ack: ack.shared(),
                        };
                        slot.tail = Some(tail.clone());
                        drop(guard);
                        let answer = tail.ack.clone().await;
                        drop(in_flight);
                        guard = handle.lock().await;
                        guard.take_ack(&tail, &answer);
                        if let Some(before) = &chain {
                            // The tail before is answered by now, its answer
                            // having come first over this connection; if not
                            // (lost across a reconnect), this one goes uncounted
                            // rather than keep the account waiting for it.
                            let before_stored = before.ack.clone().now_or_never();
                            match (&answer, before_stored) {
                                (Ok(_), _) => self.chain_answered(true, false),
                                (Err(io::AppendError::Conflict), Some(Ok(_))) => {
                                    self.chain_answered(false, true)
                                }
                                _ => {}
                            }
                        }
                        match answer {
                            Ok(_) => {
                                self.save_if_due(&handle, &mut guard, &subject);
                                return Ok(done);
                            }
                            // Decided on a stale view: the state was dropped; read it back and decide again.
                            Err(io::AppendError::Conflict) => fresh = false,
                            Err(io::AppendError::Unavailable(why)) => {
                                return Err(GateError::Unconfirmed(why))
                            }
                        }
                        continue;
                    }
                    let mut behind_stored_tail = false;
                    if let Some(tail) = &chain {
                        let answer = tail.ack.clone().await;
                        behind_stored_tail = answer.is_ok();
                        slot.take_ack(tail, &answer);
                    }
                    let answer = ack.await;
                    drop(in_flight);
                    if chain.is_some() {
                        let refused =
                            behind_stored_tail && matches!(answer, Err(io::AppendError::Conflict));
                        self.chain_answered(answer.is_ok(), refused);
                    }
                    match answer {
                        Ok(seq) => {
                            let Some(state) = slot.state.as_mut() else {
                                // The tail this append was chained behind went
                                // unanswered, so the state was dropped, yet this
                                // append (and so the tail) landed: read the
                                // account back up to this event at least. Until
                                // that works the caller is told it may or may
                                // not be stored, as for any unanswered append.
                                let unconfirmed = |why: String| {
                                    GateError::Unconfirmed(format!(
                                        "stored at {seq}, but the account could not be read back: {why}"
                                    ))
                                };
                                let (state, read) = Box::pin(self.load(&subject))
                                    .await
                                    .map_err(|e| unconfirmed(e.to_string()))?;
                                if state.last_seq < seq {
                                    return Err(unconfirmed("read back behind it".into()));
                                }
                                slot.saves.mark_saved(state.entries());
                                slot.saves.unsaved = read;
                                return Ok(finish(slot.state.insert(state)));
                            };
                            state.apply(seq, &envelope);
                            slot.saves.unsaved += 1;
                            let done = finish(state);
                            self.save_if_due(&handle, slot, &subject);
                            return Ok(done);
                        }
                        // Behind a tail that was stored, the state is exact
                        // and the refusal may come from an append to any
                        // other subject (see `io::After::Event`): decide
                        // again and append on the subject's sequence, which
                        // catches up only if this subject moved.
                        Err(io::AppendError::Conflict) if behind_stored_tail => {}
                        Err(io::AppendError::Conflict) => {
                            // Without a state (the tail it followed was
                            // refused) the account is read back next turn.
                            if let Some(state) = slot.state.as_mut() {
                                let read = Box::pin(io::catch_up(&self.io.stream, &subject, state))
                                    .await?;
                                slot.saves.unsaved += read as u64;
                                fresh = true;
                            }
                        }
                        Err(io::AppendError::Unavailable(why)) => {
                            // The event may or may not be stored: forget the view, reload next time.
                            slot.forget_state();
                            return Err(GateError::Unconfirmed(why));
                        }
                    }
                }
            }
        }
        Err(GateError::Contention)
    }

    /// Takes in the answer to an append chained behind a tail: `refused`
    /// if another append reached the stream between them (the tail was
    /// stored); neither when it was refused with its tail, or unanswered.
    fn chain_answered(&self, stored: bool, refused: bool) {
        if refused {
            self.shared
                .counters
                .chains_refused
                .fetch_add(1, Ordering::Relaxed);
        }
        if stored || refused {
            self.shared.interference.record(refused);
        }
    }

    /// Queues a snapshot of the account if one is due and its state is
    /// exact (no tail unanswered).
    fn save_if_due(&self, handle: &Arc<Mutex<Slot>>, slot: &mut Slot, subject: &str) {
        let every = self.shared.snapshot_every.load(Ordering::Relaxed);
        if slot.tail.is_some() || !save_due(slot.saves.unsaved, every, slot.saves.saved_entries) {
            return;
        }
        let Some(state) = slot.state.as_ref() else {
            return;
        };
        if let Ok(place) = self.snapshot_place() {
            let undo = SaveUndo {
                slot: handle.clone(),
                before: slot.saves.mark_saved(state.entries()),
            };
            place.save(
                slot.project,
                subject.to_owned(),
                state.snapshot_copy(),
                Some(undo),
            );
        }
    }

    /// Forgets the accounts no task has used for `idle` and that hold
    /// nothing still within its TTL, so memory follows the accounts in use
    /// rather than every account this process ever saw. A forgotten account
    /// is read back from its subject on its next use, as after a restart, so
    /// no decision changes; with a database, an account with at least
    /// [`io::SHORT_HISTORY`] events unsaved is saved as a snapshot first, so
    /// reading it back is short (kept for a later sweep while the snapshot
    /// writer's queue is full). (An open hold past its TTL does not keep
    /// its account: the ledger expires it, possibly from another process,
    /// and this copy would not see that until its next use anyway.)
    /// Returns how many accounts were forgotten.
    pub fn forget_idle(&self, idle: chrono::Duration) -> usize {
        let now = self.shared.clock.now();
        let horizon = now
            .checked_sub_signed(idle)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let mut forgotten = 0;
        self.shared.accounts.retain(|subject, slot| {
            // Tasks clone a slot only under its shard's lock, which `retain`
            // holds: a single reference means nobody uses it or waits for it.
            if Arc::strong_count(slot) > 1 {
                return true;
            }
            let Ok(mut slot) = slot.try_lock() else {
                return true;
            };
            // A tail's answer not taken in yet (its task was dropped) is
            // taken in here; one still on its way keeps the account.
            slot.take_ack_if_answered();
            if slot.tail.is_some() {
                return true;
            }
            let keep = match &slot.state {
                None => false,
                Some(state) => {
                    slot.touched > horizon
                        || state.open_holds().any(|(_, hold)| hold.expires_at > now)
                }
            };
            if keep {
                return true;
            }
            if slot.saves.unsaved >= io::SHORT_HISTORY as u64 && slot.state.is_some() {
                // Worth a snapshot: forgotten only if it can be saved (else
                // kept until a later sweep finds room in the writer's queue).
                match self.snapshot_place() {
                    Ok(place) => {
                        if let Some(state) = slot.state.take() {
                            // (Forgotten: nothing is left to mark unsaved.)
                            place.save(slot.project, subject.clone(), state.into(), None);
                        }
                    }
                    Err(snapshots::NoPlace::Full) => return true,
                    Err(snapshots::NoPlace::Off) => {}
                }
            }
            forgotten += 1;
            false
        });
        forgotten
    }

    /// How many accounts this process keeps in memory.
    pub fn cached_accounts(&self) -> usize {
        self.shared.accounts.len()
    }

    /// Runs [`Gate::forget_idle`] every `every` until `shutdown`.
    pub async fn forget_idle_every(
        self,
        every: std::time::Duration,
        idle: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let idle = chrono::Duration::from_std(idle).unwrap_or(chrono::Duration::MAX);
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let forgotten = self.forget_idle(idle);
            tracing::debug!(
                forgotten,
                kept = self.cached_accounts(),
                "forgot idle accounts"
            );
        }
    }

    /// Which account holds reservation `id`.
    async fn locate(
        &self,
        project: ProjectId,
        id: ReservationId,
        hint: Option<&Account>,
    ) -> Result<Account, GateError> {
        if let Some(account) = hint {
            return Ok(account.clone());
        }
        if let Some(account) = self.shared.index.get(&(project, id)) {
            return Ok(account.clone());
        }
        match &self.shared.pool {
            Some(pool) => Box::pin(io::locate_in_ledger(pool, &self.io.stream, project, id)).await,
            None => Err(GateError::NotFound),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::save_due;

    #[test]
    fn snapshots_wait_for_as_many_events_as_the_last_one_had_entries() {
        assert!(!save_due(5_000, 0, 0), "0 turns snapshots off");
        assert!(!save_due(999, 1_000, 10));
        assert!(save_due(1_000, 1_000, 10));
        assert!(!save_due(1_000, 1_000, 50_000));
        assert!(!save_due(49_999, 1_000, 50_000));
        assert!(save_due(50_000, 1_000, 50_000));
    }

    /// The worst case: a state that keeps one more entry per event (every
    /// event a new usage id, within the day they are kept). All its saves
    /// together serialize at most two entries per event folded, where a
    /// save every 10 events would serialize about n² / 20.
    #[test]
    fn saving_costs_at_most_two_entries_per_event() {
        let (every, events) = (10, 100_000u64);
        let (mut unsaved, mut saved_entries) = (0, 0);
        let (mut serialized, mut saves) = (0, 0);
        for entries in 1..=events {
            unsaved += 1;
            if save_due(unsaved, every, saved_entries) {
                serialized += entries;
                saves += 1;
                unsaved = 0;
                saved_entries = entries;
            }
        }
        assert!(serialized <= 2 * events, "{serialized} entries serialized");
        // Each save waits twice as long as the one before: 10, 20, 40, …, 81,920.
        assert_eq!(saves, 14, "{saves} saves");
    }
}

//! One account's state, folded from its events: open holds, recent
//! settlements (for idempotent retries) and per-period usage counters.
//!
//! This is the enforcement view every gate process keeps in memory. It is a
//! pure function of the account's events: `apply` never looks at a clock.
//! Settlements and usage ids are remembered for [`IDEMPOTENCY_HORIZON_HOURS`]
//! of event time; counters of periods that have ended are dropped.

use crate::deltas::{for_each_usage_delta, CounterKey};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use schemas::events::{Envelope, Event, HoldRef};
use schemas::{Amounts, EventId, ReservationId};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;

mod prune;

/// The maps an account's state keeps. Every reserve and settlement hashes
/// a few dozen keys (a counter per window and unit), so the hasher is
/// foldhash, not std's SipHash (about 6 % of the instructions a proxied
/// call runs on its serving thread; bench/README.md, twenty-sixth pass); it
/// is randomly seeded per process, as hashbrown's default is.
pub type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub(crate) use prune::PruneOrder;

/// How long settled reservations and usage ids are remembered for retries.
pub const IDEMPOTENCY_HORIZON_HOURS: i64 = 24;

/// A hold that is neither committed, released nor expired.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenHold {
    pub reserved_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub model: Option<String>,
    pub amounts: Amounts,
    pub tier: Option<String>,
}

impl OpenHold {
    pub fn hold_ref(&self, reservation_id: ReservationId) -> HoldRef {
        HoldRef {
            reservation_id,
            reserved_at: self.reserved_at,
            model: self.model.clone(),
            held: self.amounts.clone(),
        }
    }
}

/// How a reservation ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Settlement {
    Committed { actual: Amounts, overage: Amounts },
    Released { reason: Option<String> },
    Expired,
}

impl Settlement {
    pub fn status(&self) -> &'static str {
        match self {
            Settlement::Committed { .. } => "committed",
            Settlement::Released { .. } => "released",
            Settlement::Expired => "expired",
        }
    }
}

/// A reservation that was settled, kept for idempotent answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settled {
    pub hold: HoldRef,
    pub expires_at: DateTime<Utc>,
    pub settled_at: DateTime<Utc>,
    pub settlement: Settlement,
    /// For an expired hold: the usage a commit after its expiry recorded
    /// (`usage_recorded` with the reservation id as usage id), so a repeat
    /// of that commit is told from a different one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_actual: Option<Amounts>,
}

/// What applying one event did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    Changed,
    /// The event repeats something already applied (same reservation opened
    /// twice, a hold settled twice, a usage id seen before): no effect.
    Duplicate,
    /// The event is older than this state (`seq` not above `last_seq`).
    AlreadyApplied,
}

#[derive(Clone, Debug, Default)]
pub struct AccountState {
    /// Stream sequence of the last event applied (0: none).
    pub last_seq: u64,
    /// Id of the event at `last_seq` (what a snapshot is checked against).
    pub(crate) last_event: Option<EventId>,
    pub(crate) open: Map<ReservationId, OpenHold>,
    /// Shared, not copied, when the state is copied to be saved as a
    /// snapshot while the account goes on: a busy account keeps a day of
    /// them.
    pub(crate) settled: Map<ReservationId, Arc<Settled>>,
    pub(crate) usage_ids: Map<Uuid, DateTime<Utc>>,
    pub(crate) used: Map<CounterKey, Decimal>,
    pub(crate) latest_at: Option<DateTime<Utc>>,
    pub(crate) applied_since_prune: u32,
    /// Where pruning starts; derived from `settled` and `usage_ids`.
    pub(crate) prune_order: PruneOrder,
}

impl PartialEq for AccountState {
    fn eq(&self, other: &Self) -> bool {
        // Destructured, so a new field cannot be left out by mistake.
        let AccountState {
            last_seq,
            last_event,
            open,
            settled,
            usage_ids,
            used,
            latest_at,
            applied_since_prune,
            prune_order: _,
        } = self;
        *last_seq == other.last_seq
            && *last_event == other.last_event
            && *open == other.open
            && *settled == other.settled
            && *usage_ids == other.usage_ids
            && *used == other.used
            && *latest_at == other.latest_at
            && *applied_since_prune == other.applied_since_prune
    }
}

impl AccountState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn open_hold(&self, id: &ReservationId) -> Option<&OpenHold> {
        self.open.get(id)
    }

    pub fn settled(&self, id: &ReservationId) -> Option<&Settled> {
        self.settled.get(id).map(|s| &**s)
    }

    pub fn has_usage_id(&self, id: &Uuid) -> bool {
        self.usage_ids.contains_key(id)
    }

    pub fn open_holds(&self) -> impl Iterator<Item = (&ReservationId, &OpenHold)> {
        self.open.iter()
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    pub fn used(&self) -> impl Iterator<Item = (&CounterKey, &Decimal)> {
        self.used.iter()
    }

    /// How many entries the state keeps (open holds, settled holds, usage
    /// ids and counters): what its size, and its snapshot's, grows with.
    pub fn entries(&self) -> usize {
        self.open.len() + self.settled.len() + self.usage_ids.len() + self.used.len()
    }

    /// Id of the event at [`AccountState::last_seq`] (None before any event
    /// with a stream sequence).
    pub fn last_event(&self) -> Option<EventId> {
        self.last_event
    }

    /// Applies the event stored at stream sequence `seq`.
    pub fn apply(&mut self, seq: u64, env: &Envelope) -> Applied {
        self.apply_pruning_with(seq, env, Self::prune)
    }

    /// Records that `event`, applied without a stream sequence while its
    /// append was not yet acknowledged (the gate's tail), was stored at
    /// `seq`: the state is then exactly the subject up to `seq`.
    pub fn confirm(&mut self, seq: u64, event: EventId) {
        if seq > self.last_seq {
            self.last_seq = seq;
            self.last_event = Some(event);
        }
    }

    /// [`AccountState::apply`] with the prune to run (tests compare two).
    fn apply_pruning_with(&mut self, seq: u64, env: &Envelope, prune: fn(&mut Self)) -> Applied {
        if seq != 0 && seq <= self.last_seq {
            return Applied::AlreadyApplied;
        }
        if seq != 0 {
            self.last_seq = seq;
            self.last_event = Some(env.event_id);
        }
        self.latest_at = Some(
            self.latest_at
                .map_or(env.occurred_at, |t| t.max(env.occurred_at)),
        );
        let outcome = self.apply_event(env);
        if outcome == Applied::Changed {
            let used = &mut self.used;
            for_each_usage_delta(env, |key, amount| match used.get_mut(key) {
                Some(sum) => *sum += amount,
                None => {
                    used.insert(key.clone(), amount);
                }
            });
        }
        self.applied_since_prune += 1;
        if self.applied_since_prune >= 256 {
            prune(self);
        }
        outcome
    }

    fn apply_event(&mut self, env: &Envelope) -> Applied {
        match &env.event {
            Event::Reserved(r) => {
                if self.open.contains_key(&r.reservation_id)
                    || self.settled.contains_key(&r.reservation_id)
                {
                    return Applied::Duplicate;
                }
                let hold = OpenHold {
                    reserved_at: env.occurred_at,
                    expires_at: r.expires_at,
                    model: r.model.clone(),
                    amounts: r.amounts.clone(),
                    tier: r.tier.clone(),
                };
                self.open.insert(r.reservation_id, hold);
                Applied::Changed
            }
            Event::Committed(c) => self.settle(
                env,
                &c.hold,
                Settlement::Committed {
                    actual: c.actual.clone(),
                    overage: c.overage.clone(),
                },
            ),
            Event::Released(r) => self.settle(
                env,
                &r.hold,
                Settlement::Released {
                    reason: r.reason.clone(),
                },
            ),
            Event::Expired(e) => self.settle(env, &e.hold, Settlement::Expired),
            Event::UsageRecorded(u) => {
                // A repeat changes nothing, not even the time it is kept from.
                match self.usage_ids.entry(u.usage_id) {
                    std::collections::hash_map::Entry::Occupied(_) => return Applied::Duplicate,
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(env.occurred_at);
                    }
                }
                self.prune_order
                    .usage_ids
                    .insert((env.occurred_at, u.usage_id));
                if let Some(settled) = self.settled.get_mut(&ReservationId(u.usage_id)) {
                    if settled.settlement == Settlement::Expired && settled.late_actual.is_none() {
                        Arc::make_mut(settled).late_actual = Some(u.amounts.clone());
                    }
                }
                Applied::Changed
            }
        }
    }

    fn settle(&mut self, env: &Envelope, hold: &HoldRef, settlement: Settlement) -> Applied {
        let Some(open) = self.open.remove(&hold.reservation_id) else {
            return Applied::Duplicate;
        };
        let settled = Settled {
            hold: hold.clone(),
            expires_at: open.expires_at,
            settled_at: env.occurred_at,
            settlement,
            late_actual: None,
        };
        self.settled.insert(hold.reservation_id, Arc::new(settled));
        self.prune_order
            .settled
            .insert((env.occurred_at, hold.reservation_id));
        Applied::Changed
    }
}

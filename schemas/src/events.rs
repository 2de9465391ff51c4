//! The ledger stream's event envelope and every event.
//!
//! Reservations are two-phase transfers: `reserved`, then exactly one of
//! `committed`, `released` or `expired`. Settling events carry the hold they
//! settle ([`HoldRef`]), so every event's effect on counters can be computed
//! from the event alone: folds are order-insensitive sums, which is what makes
//! replay equality (invariant 3) easy to keep.
//!
//! Evolution rules: no `deny_unknown_fields`; an added optional field needs no
//! version bump; a rename, removal or re-tag bumps [`SCHEMA_VERSION`] and adds an
//! upcaster in [`Envelope::from_slice`]. Golden files of every published
//! version live in `schemas/golden/`.

use crate::ids::{EventId, ProjectId, ReservationId};
use crate::units::Amounts;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The version writers stamp on new events.
pub const SCHEMA_VERSION: u32 = 1;

/// The ledger key a set of policies is tracked on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Account {
    /// One end user of a project, as named by `x-identity`.
    Identity { identity: String },
}

/// Every event on the stream, wrapped once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Envelope {
    /// UUID v7 chosen by the producer, reused on retry; also the `Nats-Msg-Id`.
    pub event_id: EventId,
    pub schema_version: u32,
    pub occurred_at: DateTime<Utc>,
    pub project_id: ProjectId,
    pub account: Account,
    /// The `x-request-id` of the HTTP call that caused this event, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub event: Event,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Reserved(Reserved),
    Committed(Committed),
    Released(Released),
    Expired(Expired),
    UsageRecorded(UsageRecorded),
}

/// A hold was admitted: `amounts` are held against the account until settled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Reserved {
    pub reservation_id: ReservationId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub amounts: Amounts,
    pub expires_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

/// The hold a settling event settles, copied from its `reserved` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HoldRef {
    pub reservation_id: ReservationId,
    /// When the hold was taken: usage is counted in the periods of this instant.
    pub reserved_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub held: Amounts,
}

/// The hold was settled with the actual usage. `overage` is the part of
/// `actual` above `held` (recorded in full, never refused after the fact).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Committed {
    pub hold: HoldRef,
    pub actual: Amounts,
    #[serde(default, skip_serializing_if = "Amounts::is_empty")]
    pub overage: Amounts,
}

/// The hold was given back by its owner (upstream error, client gone, …).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Released {
    pub hold: HoldRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The hold outlived its TTL and was released by the ledger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Expired {
    pub hold: HoldRef,
    pub expires_at: DateTime<Utc>,
}

/// Usage that had no hold (a commit without reservation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UsageRecorded {
    /// Client-chosen idempotency key.
    pub usage_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub amounts: Amounts,
}

impl Event {
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::Reserved(_) => "reserved",
            Event::Committed(_) => "committed",
            Event::Released(_) => "released",
            Event::Expired(_) => "expired",
            Event::UsageRecorded(_) => "usage_recorded",
        }
    }
}

/// Why stored bytes could not be read as an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not an event envelope: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "schema_version {0} is newer than this reader ({SCHEMA_VERSION}); upgrade readers first"
    )]
    TooNew(u32),
}

impl Envelope {
    /// Reads any published version, upcasting older ones to the current shape.
    pub fn from_slice(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let envelope: Envelope = serde_json::from_slice(bytes)?;
        if envelope.schema_version > SCHEMA_VERSION {
            return Err(DecodeError::TooNew(envelope.schema_version));
        }
        // Version 1 is the only version so far: nothing to upcast.
        Ok(envelope)
    }

    pub fn to_vec(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn identity(&self) -> &str {
        match &self.account {
            Account::Identity { identity } => identity,
        }
    }
}

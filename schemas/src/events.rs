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
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use uuid::Uuid;

/// The version writers stamp on new events.
pub const SCHEMA_VERSION: u32 = 1;

/// The ledger key a set of policies is tracked on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Account {
    /// One end user of a project, as named by `x-identity`.
    Identity { identity: String },
}

/// Every event on the stream, wrapped once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Envelope {
    /// UUID v7 chosen by the producer, new for every event appended.
    pub event_id: EventId,
    pub schema_version: u32,
    #[serde(with = "crate::timestamp")]
    #[schemars(with = "DateTime<Utc>")]
    pub occurred_at: DateTime<Utc>,
    pub project_id: ProjectId,
    pub account: Account,
    /// The `x-request-id` of the HTTP call that caused this event, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub event: Event,
}

#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
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
    #[serde(with = "crate::timestamp")]
    #[schemars(with = "DateTime<Utc>")]
    pub expires_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

/// The hold a settling event settles, copied from its `reserved` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HoldRef {
    pub reservation_id: ReservationId,
    /// When the hold was taken: usage is counted in the periods of this instant.
    #[serde(with = "crate::timestamp")]
    #[schemars(with = "DateTime<Utc>")]
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
    #[serde(with = "crate::timestamp")]
    #[schemars(with = "DateTime<Utc>")]
    pub expires_at: DateTime<Utc>,
}

/// Usage that had no hold (a commit without reservation), or whose hold
/// had expired (a late commit, `usage_id` the reservation's id).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UsageRecorded {
    /// Client-chosen idempotency key.
    pub usage_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub amounts: Amounts,
    /// A late commit's hold's `reserved_at`: the usage counts in that
    /// instant's periods, as a commit in time does (it was admitted against
    /// them), not in those of when it landed. Absent: the event's
    /// `occurred_at`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::timestamp::option"
    )]
    #[schemars(with = "Option<DateTime<Utc>>")]
    pub reserved_at: Option<DateTime<Utc>>,
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

// Decoding of the two internally tagged enums. serde's derived code buffers
// the whole object into an intermediate tree before it knows the variant
// (about half of an event's decoding time). Every writer puts the tag first
// (serde's serializer does), so the fast path reads the tag, then the rest of
// the object straight into the variant; an object whose tag comes later still
// decodes, through a `serde_json::Value`.

/// Decodes an internally tagged object whose tag key is `tag`.
fn decode_tagged<'de, A, T>(
    mut map: A,
    tag: &'static str,
    variant: impl Fn(&str, de::value::MapAccessDeserializer<A>) -> Result<T, A::Error>,
    from_value: impl Fn(&str, serde_json::Value) -> Result<T, serde_json::Error>,
) -> Result<T, A::Error>
where
    A: MapAccess<'de>,
{
    let Some(first) = map.next_key::<Cow<'de, str>>()? else {
        return Err(de::Error::missing_field(tag));
    };
    if first == tag {
        let name: Cow<'de, str> = map.next_value()?;
        return variant(&name, de::value::MapAccessDeserializer::new(map));
    }
    let mut object = serde_json::Map::new();
    object.insert(first.into_owned(), map.next_value()?);
    while let Some((k, v)) = map.next_entry::<String, serde_json::Value>()? {
        object.insert(k, v);
    }
    let name = match object.remove(tag) {
        Some(serde_json::Value::String(name)) => name,
        Some(_) => return Err(de::Error::custom(format_args!("`{tag}` must be a string"))),
        None => return Err(de::Error::missing_field(tag)),
    };
    from_value(&name, serde_json::Value::Object(object)).map_err(de::Error::custom)
}

const EVENT_TYPES: &[&str] = &[
    "reserved",
    "committed",
    "released",
    "expired",
    "usage_recorded",
];

macro_rules! event_variant {
    ($name:expr, $src:expr, $decode:path) => {
        match $name {
            "reserved" => $decode($src).map(Event::Reserved),
            "committed" => $decode($src).map(Event::Committed),
            "released" => $decode($src).map(Event::Released),
            "expired" => $decode($src).map(Event::Expired),
            "usage_recorded" => $decode($src).map(Event::UsageRecorded),
            other => Err(de::Error::unknown_variant(other, EVENT_TYPES)),
        }
    };
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Event;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an event object with a `type`")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Event, A::Error> {
                decode_tagged(
                    map,
                    "type",
                    |name, rest| event_variant!(name, rest, Deserialize::deserialize),
                    |name, value| event_variant!(name, value, serde_json::from_value),
                )
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for Account {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct IdentityFields {
            identity: String,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Account;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an account object with a `kind`")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Account, A::Error> {
                decode_tagged(
                    map,
                    "kind",
                    |name, rest| match name {
                        "identity" => {
                            IdentityFields::deserialize(rest).map(|f| Account::Identity {
                                identity: f.identity,
                            })
                        }
                        other => Err(de::Error::unknown_variant(other, &["identity"])),
                    },
                    |name, value| match name {
                        "identity" => serde_json::from_value::<IdentityFields>(value).map(|f| {
                            Account::Identity {
                                identity: f.identity,
                            }
                        }),
                        other => Err(de::Error::unknown_variant(other, &["identity"])),
                    },
                )
            }
        }
        d.deserialize_map(V)
    }
}

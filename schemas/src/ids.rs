//! Typed ids. Every id is a UUID; event ids are UUID v7 (time ordered), a
//! new one for every event appended.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered (v7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// One customer app.
    ProjectId
);
uuid_id!(
    /// One hold (two-phase transfer). Chosen by the client or by Tollgate.
    ReservationId
);
uuid_id!(
    /// One event on the ledger stream.
    EventId
);

/// Longest identity accepted, in bytes.
pub const MAX_IDENTITY_BYTES: usize = 256;

/// Why an identity string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_IDENTITY_BYTES} bytes")]
    TooLong,
    #[error("must not contain control characters")]
    ControlCharacter,
}

/// Checks an identity (`x-identity`, or `identity` in the ingest API).
pub fn validate_identity(identity: &str) -> Result<(), IdentityError> {
    if identity.is_empty() {
        return Err(IdentityError::Empty);
    }
    if identity.len() > MAX_IDENTITY_BYTES {
        return Err(IdentityError::TooLong);
    }
    if identity.chars().any(char::is_control) {
        return Err(IdentityError::ControlCharacter);
    }
    Ok(())
}

//! An [`AccountState`] as bytes, so a gate can start from a stored state and
//! fold only the events after it instead of the account's whole history.
//!
//! A snapshot holds everything the state holds, including when it last
//! pruned, so restoring it and applying the events after it gives a state
//! equal to folding every event (`tests/fold_props.rs`). Every collection is
//! written sorted, so identical states give identical bytes (equal ones may
//! not: a state compares amounts by value, `1.0` equal to `1`, and format 3
//! keeps their scale). States are written in
//! [`SNAPSHOT_FORMAT`] 3, a compact binary layout ([`binary`]); format 2,
//! JSON with field names, is still read, so snapshots saved by an older
//! version spare their accounts a fold of their whole history after an
//! upgrade (processes of a version before format 3 do not read it: in a
//! rolling upgrade they fold such accounts from their events, correct but
//! slower, until they are replaced). A change to what the state holds or to
//! how it is laid out must bump [`SNAPSHOT_FORMAT`];
//! snapshots of a format not read are not used (the account is folded from
//! its events instead).

mod binary;

use crate::deltas::CounterKey;
use crate::fold::{AccountState, OpenHold, PruneOrder, Settled};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use schemas::{EventId, ReservationId};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;

/// The layout of [`AccountState::to_snapshot`]'s bytes.
/// 2: JSON; settled holds carry `late_actual`.
/// 3: the same fields, binary ([`binary`]).
pub const SNAPSHOT_FORMAT: i32 = 3;

/// Format 2: JSON, as [`AccountState::to_json_snapshot`] writes it.
pub const JSON_SNAPSHOT_FORMAT: i32 = 2;

/// Whether [`AccountState::from_snapshot`] reads snapshots of `format`.
pub fn readable(format: i32) -> bool {
    format == SNAPSHOT_FORMAT || format == JSON_SNAPSHOT_FORMAT
}

/// Why stored bytes could not be read back as a state.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot format {0} is not read by this version")]
    Format(i32),
    #[error(transparent)]
    Binary(#[from] binary::Malformed),
    #[error("JSON snapshot: {0}")]
    Json(#[from] serde_json::Error),
}

/// What [`AccountState::from_snapshot`] reads in format 2.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    last_seq: u64,
    last_event: Option<EventId>,
    open: Vec<(ReservationId, OpenHold)>,
    settled: Vec<(ReservationId, Settled)>,
    usage_ids: Vec<(Uuid, DateTime<Utc>)>,
    used: Vec<(CounterKey, Decimal)>,
    latest_at: Option<DateTime<Utc>>,
    applied_since_prune: u32,
}

/// [`Stored`] as format 2 writes it: the state's entries borrowed, not
/// cloned. The same fields in the same order, so the same bytes.
#[derive(Serialize)]
struct StoredRef<'a> {
    last_seq: u64,
    last_event: Option<EventId>,
    open: Vec<(&'a ReservationId, &'a OpenHold)>,
    settled: Vec<(&'a ReservationId, &'a Settled)>,
    usage_ids: Vec<(&'a Uuid, &'a DateTime<Utc>)>,
    used: Vec<(&'a CounterKey, &'a Decimal)>,
    latest_at: Option<DateTime<Utc>>,
    applied_since_prune: u32,
}

fn sorted<'a, K: Ord, V>(map: impl Iterator<Item = (&'a K, &'a V)>) -> Vec<(&'a K, &'a V)> {
    let mut v: Vec<(&K, &V)> = map.collect();
    v.sort_unstable_by(|a, b| a.0.cmp(b.0));
    v
}

/// A state to save as a snapshot. [`AccountState::snapshot_copy`] copies
/// its entries without its [`PruneOrder`], which a snapshot does not hold
/// (restoring rebuilds it); a state given up whole keeps it, unread.
/// Saving copies a busy account's state under the account's lock: at
/// 200,000 settled holds this copy takes 2.9–3.4 ms, a whole clone with the
/// order 16–17 ms (`fold-bench`).
#[derive(Debug)]
pub struct SnapshotCopy(AccountState);

impl SnapshotCopy {
    pub fn last_seq(&self) -> u64 {
        self.0.last_seq
    }

    pub fn last_event(&self) -> Option<EventId> {
        self.0.last_event
    }

    pub fn entries(&self) -> usize {
        self.0.entries()
    }

    /// The state in [`SNAPSHOT_FORMAT`], as [`AccountState::to_snapshot`].
    pub fn to_snapshot(&self) -> Vec<u8> {
        self.0.to_snapshot()
    }
}

/// A state given up to be saved (its order goes along, to be freed with it
/// wherever the save runs).
impl From<AccountState> for SnapshotCopy {
    fn from(state: AccountState) -> SnapshotCopy {
        SnapshotCopy(state)
    }
}

impl AccountState {
    /// A copy of this state to save (see [`SnapshotCopy`]).
    pub fn snapshot_copy(&self) -> SnapshotCopy {
        SnapshotCopy(AccountState {
            last_seq: self.last_seq,
            last_event: self.last_event,
            open: self.open.clone(),
            settled: self.settled.clone(),
            usage_ids: self.usage_ids.clone(),
            used: self.used.clone(),
            latest_at: self.latest_at,
            applied_since_prune: self.applied_since_prune,
            prune_order: PruneOrder::default(),
        })
    }

    /// This state in [`SNAPSHOT_FORMAT`].
    pub fn to_snapshot(&self) -> Vec<u8> {
        binary::encode(self)
    }

    /// This state in [`JSON_SNAPSHOT_FORMAT`], as versions before format 3
    /// saved it (for tests of reading old snapshots, and `fold-bench`'s
    /// comparison).
    pub fn to_json_snapshot(&self) -> serde_json::Result<Vec<u8>> {
        let stored = StoredRef {
            last_seq: self.last_seq,
            last_event: self.last_event,
            open: sorted(self.open.iter()),
            settled: sorted(self.settled.iter().map(|(id, s)| (id, &**s))),
            usage_ids: sorted(self.usage_ids.iter()),
            used: sorted(self.used.iter()),
            latest_at: self.latest_at,
            applied_since_prune: self.applied_since_prune,
        };
        serde_json::to_vec(&stored)
    }

    /// The state [`AccountState::to_snapshot`] (format 3) or
    /// [`AccountState::to_json_snapshot`] (format 2) wrote.
    pub fn from_snapshot(format: i32, bytes: &[u8]) -> Result<AccountState, SnapshotError> {
        match format {
            SNAPSHOT_FORMAT => Ok(binary::decode(bytes)?),
            JSON_SNAPSHOT_FORMAT => Ok(AccountState::from_json_snapshot(bytes)?),
            other => Err(SnapshotError::Format(other)),
        }
    }

    fn from_json_snapshot(bytes: &[u8]) -> serde_json::Result<AccountState> {
        let stored: Stored = serde_json::from_slice(bytes)?;
        let settled = stored
            .settled
            .into_iter()
            .map(|(id, s)| (id, Arc::new(s)))
            .collect();
        let usage_ids = stored.usage_ids.into_iter().collect();
        Ok(AccountState {
            last_seq: stored.last_seq,
            last_event: stored.last_event,
            open: stored.open.into_iter().collect(),
            prune_order: PruneOrder::of(&settled, &usage_ids),
            settled,
            usage_ids,
            used: stored.used.into_iter().collect(),
            latest_at: stored.latest_at,
            applied_since_prune: stored.applied_since_prune,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_other_layouts_are_refused() {
        for format in [JSON_SNAPSHOT_FORMAT, SNAPSHOT_FORMAT] {
            assert!(AccountState::from_snapshot(format, b"not a state").is_err());
            assert!(AccountState::from_snapshot(format, b"").is_err());
        }
        let json = |state: &AccountState| state.to_json_snapshot().unwrap();
        assert!(AccountState::from_snapshot(2, br#"{"last_seq": 3}"#).is_err());
        let mut extra: serde_json::Value =
            serde_json::from_slice(&json(&AccountState::new())).unwrap();
        extra["new_field"] = serde_json::json!(1);
        assert!(AccountState::from_snapshot(2, &serde_json::to_vec(&extra).unwrap()).is_err());
        // Each format's bytes are read as that format only.
        let state = AccountState::new();
        assert!(AccountState::from_snapshot(SNAPSHOT_FORMAT, &json(&state)).is_err());
        assert!(AccountState::from_snapshot(2, &state.to_snapshot()).is_err());
        assert!(matches!(
            AccountState::from_snapshot(1, &state.to_snapshot()),
            Err(SnapshotError::Format(1))
        ));
    }

    #[test]
    fn an_empty_state_round_trips() {
        let state = AccountState::new();
        let binary = AccountState::from_snapshot(SNAPSHOT_FORMAT, &state.to_snapshot()).unwrap();
        assert_eq!(binary, state);
        let json = AccountState::from_snapshot(2, &state.to_json_snapshot().unwrap()).unwrap();
        assert_eq!(json, state);
    }
}

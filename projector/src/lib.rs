//! The fold: ledger events → per-period counters and account state.
//!
//! [`deltas`] says what one event changes, computed from the event alone;
//! [`fold::AccountState`] applies those deltas (plus the open holds) in
//! memory for admission decisions; [`service`] applies the same deltas to
//! PostgreSQL tables for reporting, exactly once per stream sequence.

pub mod consumer;
pub mod copy;
pub mod deltas;
pub mod fold;
pub mod pg_text;
pub mod rebuild;
pub mod service;
pub mod snapshot;
pub mod view;

pub use fold::{AccountState, Applied, OpenHold, Settlement};
pub use snapshot::SnapshotCopy;
pub use view::LimitView;

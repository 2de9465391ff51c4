//! The ledger: the only writer of the ledger stream's rules and the keeper of
//! authoritative balances.
//!
//! - [`gate`]: reserve / commit / release / expire / record usage as
//!   conditional appends to one subject per account (invariant 1: admission
//!   is linearizable per account across any number of processes).
//! - [`projection`]: the `reservations` and `account_balances` tables.
//! - [`consumers`]: the projection consumers on their own thread.
//! - [`expiry`]: releases holds past their TTL, exactly once (invariant 4).
//! - [`control`]: projects, keys and plans in PostgreSQL.
//! - [`replay`], [`checksum`], [`audit`]: rebuild, compare and read the stream.

pub mod audit;
pub mod checksum;
pub mod clock;
pub mod consumers;
pub mod control;
pub mod expiry;
pub mod gate;
pub mod projection;
pub mod replay;
pub mod stream;

pub use clock::{Clock, ManualClock, SystemClock};
pub use gate::{Gate, GateError};

/// The schema migrations of the top-level `migrations/` folder, embedded.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

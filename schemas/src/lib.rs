//! Tollgate's wire formats and domain vocabulary, as pure serde types.
//!
//! Everything that crosses a process boundary is defined here and nowhere else:
//! the event envelope and every event ([`events`]), the JetStream stream and
//! subject names ([`subjects`]), typed ids ([`ids`]), exact money ([`money`]),
//! units and amounts ([`units`]), calendar windows and the one period-key
//! function ([`window`]) and plans ([`plan`]).
//!
//! This crate depends on no runtime (no tokio, sqlx, axum or async-nats).

pub mod events;
pub mod ids;
pub mod money;
pub mod plan;
pub mod subjects;
pub mod timestamp;
pub mod units;
pub mod window;

pub use events::{Account, Envelope, Event, SCHEMA_VERSION};
pub use ids::{EventId, ProjectId, ReservationId};
pub use money::{round_usd, Rounding};
pub use units::{Amounts, Unit};
pub use window::{period, Period, Window};

//! Ingest: the ledger's HTTP API for apps that call their AI provider
//! themselves. Reserve before the AI call, then commit the actual usage or
//! release the hold; record usage that had no hold; read the limits view.
//!
//! Layers: [`http`] extracts and answers, [`ledger::gate`] decides and
//! appends, [`ledger::control`] knows projects and plans. Handlers hold no
//! SQL and no business rules.

pub mod alloc;
pub mod busy_poll;
pub mod error;
pub mod http;
pub mod threads;

use ledger::control::ControlCache;
use ledger::Gate;

pub use http::router;

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub gate: Gate,
    pub control: ControlCache,
}

/// Default listen address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8081";

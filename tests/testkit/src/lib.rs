//! Test harness shared by every Tollgate crate: real servers, no mocks of them.
//!
//! - [`nats::NatsServer`]: one private `nats-server -js` per test, on a free port
//!   with a temporary store; it can be stopped and restarted on the same port and store.
//! - [`pg::fresh_database`]: a new, migrated PostgreSQL database per test, on the
//!   cluster named by `TOLLGATE_TEST_DATABASE_URL` (what `scripts/test.sh` sets) or on
//!   a private cluster this process starts once through `scripts/pg.sh`.
//! - [`tls::TlsFront`]: HTTPS in front of a plain server (a mock provider), with a
//!   test certificate authority the client under test must be told to trust;
//!   [`tls::ConnectProxy`], an egress proxy that tunnels `CONNECT` requests.
//! - [`ports::free_port`] and [`wait::until`]: free loopback ports and bounded polling
//!   (tests wait for conditions, never for a fixed sleep).
//!
//! Servers are found the same way as by `scripts/deps.sh`; run it when one is missing.

pub mod mock_providers;
pub mod nats;
pub mod pg;
pub mod ports;
pub mod tls;
pub mod wait;

use std::path::PathBuf;

/// Root of the Cargo workspace (this crate lives in `tests/testkit`).
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = here.join("..").join("..");
    root.canonicalize().unwrap_or(root)
}

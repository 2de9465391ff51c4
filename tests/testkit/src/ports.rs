//! Free TCP ports on 127.0.0.1 for servers a test starts.
//!
//! The port is found by binding port 0 and releasing it, so another process may
//! take it before the caller binds it; callers that spawn servers retry on a bind
//! failure (see `nats::NatsServer::start`).

use std::net::{Ipv4Addr, TcpListener};

/// A port on 127.0.0.1 that was free a moment ago.
pub fn try_free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// A port on 127.0.0.1 that was free a moment ago.
///
/// # Panics
/// If the loopback interface cannot bind at all (then no test could run anyway).
#[allow(clippy::panic)] // test-support code: a broken loopback is not recoverable
pub fn free_port() -> u16 {
    match try_free_port() {
        Ok(port) => port,
        Err(e) => panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"),
    }
}

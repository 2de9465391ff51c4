//! What both benchmark binaries share: the closed-loop driver on
//! load-generator threads, its HTTP client, and the CPU accounting.

pub mod client;
pub mod cpu;
pub mod drive;

/// `TOLLGATE_HTTP_THREADS`, else one per core: the HTTP threads `tollgate`
/// serves on, which both benches serve on too.
pub fn http_threads() -> usize {
    std::env::var("TOLLGATE_HTTP_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(ingest::threads::default_threads)
}

/// `TOLLGATE_BUSY_POLL_US`, else the default: how `tollgate`'s HTTP threads
/// poll while the process is nearly idle (`ingest::busy_poll`).
pub fn busy_poll() -> ingest::threads::BusyPoll {
    std::env::var("TOLLGATE_BUSY_POLL_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(
            ingest::threads::BusyPoll::DEFAULT,
            ingest::threads::BusyPoll::from_micros,
        )
}

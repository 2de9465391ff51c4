//! The projection consumers, on their own thread.
//!
//! Projections are for reporting and for finding expired holds; admission
//! never reads them (the gate folds the stream itself). So the consumers'
//! work (fetching thousands of events, decoding them, building and sending
//! the SQL) runs on one OS thread with its own single-threaded runtime, its
//! own NATS connection and its own small PostgreSQL pool, at a lower CPU
//! priority than the request path. A batch then never occupies a tokio
//! worker that a reserve's connection or the gate's NATS connection is
//! queued on. Measured at 64 clients on 2 cores with a 1 s window: 5,107 /
//! 3,997 pairs/s with the consumers on the shared runtime, 5,485 / 5,623 on
//! their own thread (`bench/README.md`). One consumer feeds all the
//! projections the process leads (`projector::consumer::run`).

use projector::consumer::Projection;
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How much lower than the rest of the process the consumer thread runs
/// (a Linux nice increment).
pub const NICE: i32 = 10;

/// What the consumer thread runs.
pub struct Consumers {
    pub nats_url: String,
    pub database_url: String,
    pub projections: Vec<Box<dyn Projection>>,
    /// See [`projector::consumer::LIVE_BATCH_WINDOW`].
    pub window: Duration,
}

impl Consumers {
    /// Every projection, fetched once per the default window (as `tollgate up` runs them).
    pub fn all(nats_url: impl Into<String>, database_url: impl Into<String>) -> Consumers {
        Consumers {
            nats_url: nats_url.into(),
            database_url: database_url.into(),
            projections: crate::replay::all_projections(),
            window: projector::consumer::LIVE_BATCH_WINDOW,
        }
    }
}

/// Starts the consumers on their own thread; they stop on `shutdown`. The
/// returned task finishes when the thread has.
pub fn spawn(
    consumers: Consumers,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    on_own_thread("tg-projections", NICE, move || run(consumers, shutdown))
}

async fn run(consumers: Consumers, shutdown: CancellationToken) {
    let Consumers {
        nats_url,
        database_url,
        projections,
        window,
    } = consumers;
    // The leadership locks' connection, the batch's transaction, a spare.
    let connections = 3;
    let mut backoff = Duration::from_millis(100);
    let pool = loop {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&database_url)
            .await;
        match pool {
            Ok(pool) => break pool,
            Err(err) => {
                tracing::warn!(error = %err, backoff_ms = backoff.as_millis() as u64, "projection consumers cannot reach PostgreSQL; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    let client = tokio::select! {
        _ = shutdown.cancelled() => return,
        client = crate::stream::connect(&nats_url) => client,
    };
    let js = match client {
        Ok(client) => crate::stream::jetstream(client),
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "projection consumers cannot connect to NATS");
            return;
        }
    };
    let projections: Vec<&dyn Projection> = projections.iter().map(|p| p.as_ref()).collect();
    if let Err(err) = projector::consumer::run(js, pool, &projections, window, shutdown).await {
        tracing::error!(error = %format!("{err:#}"), "projection consumer stopped");
    }
}

/// Runs `make()` to completion on a new thread `name` with its own
/// current-thread runtime, `nice` steps below the calling thread. Whatever
/// the future opens is driven by that runtime.
fn on_own_thread<F, Fut>(
    name: &str,
    nice: i32,
    make: F,
) -> std::io::Result<tokio::task::JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = name.to_owned();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_priority(nice, &thread);
            // Built here: a runtime must not be dropped on a runtime's thread,
            // as it would be if the spawn failed after building it there.
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(make()),
                Err(err) => {
                    tracing::error!(error = %err, thread, "could not build the thread's runtime")
                }
            }
            let _ = done_tx.send(());
        })?;
    Ok(tokio::spawn(async move {
        let _ = done_rx.await;
    }))
}

/// Lowers this thread's CPU priority (on Linux the nice value is per
/// thread); `what` names the thread in the warning if it cannot.
pub(crate) fn lower_priority(nice: i32, what: &str) {
    #[cfg(target_os = "linux")]
    {
        let tid = rustix::thread::gettid();
        let lowered = rustix::process::getpriority_process(Some(tid))
            .and_then(|now| rustix::process::setpriority_process(Some(tid), now + nice));
        if let Err(err) = lowered {
            tracing::warn!(error = %err, thread = what, "could not lower a background thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (nice, what);
}

//! Bounded polling: wait for a condition with a deadline, never a fixed sleep.
//!
//! Each check is itself cut off at the deadline, so a hanging check cannot make a
//! test hang; the helpers return an error naming the timeout instead.

use std::future::Future;
use std::time::Duration;

use anyhow::bail;
use tokio::time::{sleep, timeout, Instant};

/// Calls `condition` every `interval` until it returns `true`; errors after `limit`.
pub async fn until<F, Fut>(
    limit: Duration,
    interval: Duration,
    mut condition: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(true) = timeout(left, condition()).await {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("condition not met within {limit:?}");
        }
        sleep(interval.min(left)).await;
    }
}

/// Calls `attempt` every `interval` until it succeeds and returns its value;
/// after `limit`, returns the last error (with context saying it timed out).
pub async fn until_ok<T, F, Fut>(
    limit: Duration,
    interval: Duration,
    mut attempt: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let last = match timeout(left, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => e,
            Err(_) => anyhow::anyhow!("attempt still running at the deadline"),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(last.context(format!("no success within {limit:?}")));
        }
        sleep(interval.min(left)).await;
    }
}

//! Connecting to NATS and declaring the ledger stream.
//!
//! The stream keeps every event forever (limits retention, file storage)
//! and allows direct gets so a gate can catch up on one account's subject
//! cheaply. Appends are made at most once by their expected last subject
//! sequence, not by `Nats-Msg-Id` (`gate::io::append`); the two-minute
//! duplicate window is kept for publishers that set one.

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};
use schemas::subjects;
use std::time::Duration;

/// How long a publish waits for the stream's acknowledgement.
pub const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest wait between two attempts to reconnect to NATS.
///
/// Every HTTP thread has its own connection, and while it is down its
/// requests are refused (invariant 7). async-nats doubles the wait after
/// each failed attempt up to 4 s, so after an outage of a few seconds a
/// thread could keep refusing for up to 4 s once NATS was back, while
/// another thread's connection already served (seen as a rare failure of
/// `ingest/tests/outage.rs`). An attempt costs one TCP connect to a server
/// that is usually near, so the wait stops doubling at 100 ms.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// How long to wait before reconnect attempt `attempts`: at once for the
/// first, then 2, 4, 8 … ms up to [`MAX_RECONNECT_DELAY`].
pub fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts - 1).unwrap_or(u32::MAX).min(63);
    Duration::from_millis(2u64.saturating_pow(exp)).min(MAX_RECONNECT_DELAY)
}

pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name("tollgate")
        .retry_on_initial_connect()
        .reconnect_delay_callback(reconnect_delay)
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(PUBLISH_ACK_TIMEOUT))
        .connect(url)
        .await
        .with_context(|| format!("connecting to NATS at {}", without_credentials(url)))
}

/// `url` with any user, password or token before an `@` left out: a
/// `NATS_URL` may carry them, and errors are printed and logged.
pub fn without_credentials(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let (scheme, rest) = one.split_once("://").unwrap_or(("", one));
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            if scheme.is_empty() {
                rest.to_owned()
            } else {
                format!("{scheme}://{rest}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod credentials_tests {
    #[test]
    fn urls_are_shown_without_their_credentials() {
        for (url, shown) in [
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            (
                "nats://user:p%40ss@nats.internal:4222",
                "nats://nats.internal:4222",
            ),
            (
                "tls://s3cr3tt0ken@a:4222,nats://u:p@b:4222",
                "tls://a:4222,nats://b:4222",
            ),
            ("token@localhost", "localhost"),
        ] {
            assert_eq!(super::without_credentials(url), shown);
        }
    }
}

pub fn jetstream(client: async_nats::Client) -> jetstream::Context {
    let mut js = jetstream::new(client);
    js.set_timeout(PUBLISH_ACK_TIMEOUT);
    js
}

pub fn ledger_stream_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: subjects::LEDGER_STREAM.to_owned(),
        description: Some(
            "Tollgate ledger: every reservation, commit, release and usage event".to_owned(),
        ),
        subjects: vec![subjects::ledger_all()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: Duration::from_secs(120),
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// Creates the ledger stream, or checks the existing one, and returns it.
pub async fn ensure_ledger_stream(js: &jetstream::Context) -> anyhow::Result<stream::Stream> {
    let config = ledger_stream_config(1);
    match js.get_stream(subjects::LEDGER_STREAM).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .context("reading ledger stream info")?;
            if !info.config.allow_direct {
                let mut updated = info.config.clone();
                updated.allow_direct = true;
                js.update_stream(updated)
                    .await
                    .context("enabling direct get on the ledger stream")?;
            }
            Ok(existing)
        }
        Err(_) => js
            .get_or_create_stream(config)
            .await
            .context("creating the ledger stream"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnecting_waits_at_most_a_tenth_of_a_second() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(2));
        assert_eq!(reconnect_delay(5), Duration::from_millis(16));
        assert_eq!(reconnect_delay(8), Duration::from_millis(100));
        assert_eq!(reconnect_delay(usize::MAX), MAX_RECONNECT_DELAY);
    }
}

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

pub async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name("tollgate")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(PUBLISH_ACK_TIMEOUT))
        .connect(url)
        .await
        .with_context(|| format!("connecting to NATS at {url}"))
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

//! Replay speed: N valid events (reserved + committed pairs over many
//! accounts) are published straight to the ledger stream with many acks in
//! flight, then `ledger::replay::replay` rebuilds every projection from them.
//! A reference pass reads and decodes the same stream without any SQL
//! (`replay_ref`), so the reader sees what NATS and decoding alone cost.

use crate::cpu;
use crate::env;
use anyhow::{bail, Context as _};
use async_nats::jetstream;
use schemas::{subjects, Account};
use std::future::IntoFuture;
use std::time::{Duration, Instant};

/// Publishes whose acks are awaited together.
const PUBLISH_WINDOW: usize = 4_096;

#[derive(Clone, Debug)]
pub struct ReplayResult {
    pub events: u64,
    pub accounts: u64,
    pub generate: Duration,
    pub read_only: Duration,
    pub read_only_cpu: cpu::Usage,
    /// None when replay did not finish within the time limit.
    pub replay: Option<Duration>,
    /// Where the replay's time went, when it finished.
    pub phases: Option<ledger::replay::ReplayPhases>,
    pub limit: Duration,
    /// (events applied, time since replay started) after each batch.
    pub progress: Vec<(u64, Duration)>,
    pub replay_cpu: cpu::Usage,
    /// Balances checksum and (reservations, committed) rows, when replay finished.
    pub checksum: Option<(String, i64, i64)>,
}

impl ReplayResult {
    /// Events per second of the finished replay, or of what was done before the limit.
    pub fn events_per_sec(&self) -> f64 {
        match (self.replay, self.progress.last()) {
            (Some(t), _) => self.events as f64 / t.as_secs_f64().max(1e-9),
            (None, Some((done, t))) => *done as f64 / t.as_secs_f64().max(1e-9),
            (None, None) => 0.0,
        }
    }
}

/// Publishes `pairs` reserved+committed pairs round-robin over `accounts`.
async fn generate(
    js: &jetstream::Context,
    project: schemas::ProjectId,
    pairs: u64,
    accounts: u64,
) -> anyhow::Result<()> {
    let accounts: Vec<(Account, String)> = (0..accounts.max(1))
        .map(|k| {
            let account = Account::Identity {
                identity: format!("replay-user-{k}"),
            };
            let subject = subjects::account_subject(project, &account);
            (account, subject)
        })
        .collect();
    // Events span the last `pairs` milliseconds, a few minutes for a million.
    let start = chrono::Utc::now()
        - chrono::Duration::milliseconds(i64::try_from(pairs).unwrap_or(i64::MAX));
    let mut acks = Vec::with_capacity(PUBLISH_WINDOW);
    for i in 0..pairs {
        let Some((account, subject)) = accounts.get((i % accounts.len() as u64) as usize) else {
            bail!("account index out of range");
        };
        let at = start + chrono::Duration::milliseconds(i64::try_from(i).unwrap_or(0));
        let (reserved, committed) = crate::refs::event_pair(project, account, at);
        for event in [reserved, committed] {
            let ack = js
                .publish(subject.clone(), event.to_vec()?.into())
                .await
                .context("publishing a generated event")?;
            acks.push(ack);
        }
        if acks.len() >= PUBLISH_WINDOW {
            futures::future::try_join_all(acks.drain(..).map(IntoFuture::into_future))
                .await
                .context("waiting for publish acks")?;
        }
    }
    futures::future::try_join_all(acks.drain(..).map(IntoFuture::into_future)).await?;
    Ok(())
}

pub async fn run(events: u64, accounts: u64, limit: Duration) -> anyhow::Result<ReplayResult> {
    let (nats, db) = env::backends().await?;
    let probe = cpu::Probe {
        nats_port: Some(nats.port()),
        db_name: Some(db.name().to_owned()),
    };
    let client = ledger::stream::connect(&nats.url()).await?;
    let js = ledger::stream::jetstream(client.clone());
    ledger::stream::ensure_ledger_stream(&js).await?;
    let project = ledger::control::create_project(db.pool(), "replay-bench").await?;

    eprintln!("replay: publishing {events} events over {accounts} accounts…");
    let t = Instant::now();
    generate(&js, project.project_id, events / 2, accounts).await?;
    let generate_time = t.elapsed();
    let events = events / 2 * 2;

    eprintln!("replay: reading the stream without SQL (reference)…");
    let before = cpu::snapshot(&probe);
    let t = Instant::now();
    let decoded = crate::replay_ref::read_stream(&js, |_, _| {}).await?;
    let read_time = t.elapsed();
    let read_cpu = cpu::usage(&before, &cpu::snapshot(&probe));
    if decoded != events {
        bail!("read {decoded} events, expected {events}");
    }

    eprintln!(
        "replay: ledger::replay::replay (at most {} s)…",
        limit.as_secs()
    );
    let mut progress = Vec::new();
    let before = cpu::snapshot(&probe);
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        limit,
        ledger::replay::replay(&js, db.pool(), |done, total| {
            progress.push((done, started.elapsed()));
            if done % 100_000 < 10_000 {
                eprintln!(
                    "replay: {done}/{total} after {:.1} s",
                    started.elapsed().as_secs_f64()
                );
            }
        }),
    )
    .await;
    let replay_cpu = cpu::usage(&before, &cpu::snapshot(&probe));
    let mut phases = None;
    let (replay_time, checksum) = match outcome {
        Ok(report) => {
            let report = report?;
            if report.events != events {
                bail!("replay applied {} events, expected {events}", report.events);
            }
            phases = Some(report.phases);
            let checksum = ledger::checksum::checksum(db.pool()).await?;
            let (reservations, committed): (i64, i64) = sqlx::query_as(
                "SELECT count(*), count(*) FILTER (WHERE status = 'committed') FROM reservations",
            )
            .fetch_one(db.pool())
            .await?;
            (
                Some(report.elapsed),
                Some((checksum.to_string(), reservations, committed)),
            )
        }
        Err(_) => {
            eprintln!(
                "replay: stopped after {} s (its transaction rolls back)",
                limit.as_secs()
            );
            (None, None)
        }
    };

    client.flush().await.ok();
    drop(nats);
    Ok(ReplayResult {
        events,
        accounts,
        generate: generate_time,
        read_only: read_time,
        read_only_cpu: read_cpu,
        replay: replay_time,
        phases,
        limit,
        progress,
        replay_cpu,
        checksum,
    })
}

//! Cold account loads: how long a gate takes to read back an account it does
//! not hold in memory (its first use after a restart, or after forgetting it
//! while idle), by the length of the account's history, with and without a
//! snapshot (`ledger/src/gate/snapshots.rs`).
//!
//! For each history length H, H events of one account (reserved + committed
//! pairs, spread evenly over the last `days` days) are published to a fresh
//! ledger stream, interleaved with `noise` events of other accounts per event
//! of this one, as a busy stream would hold them. Then fresh gates (no
//! account in memory) answer a limits view of the account: without
//! snapshots (the whole history is read), from a snapshot at the last event,
//! and from a snapshot with 100 events after it.

use crate::env::{PLAN, TIER};
use anyhow::{bail, Context as _};
use async_nats::jetstream;
use ledger::{Gate, SystemClock};
use schemas::plan::{Plan, Tier};
use schemas::{subjects, Account, ProjectId};
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Publishes whose acks are awaited together.
const PUBLISH_WINDOW: usize = 4_096;
/// Events appended after the snapshot in the third measurement.
const TAIL: u64 = 100;
/// Cold loads timed per measurement (the median is printed).
const RUNS: usize = 5;

pub struct Row {
    pub history: u64,
    pub stream_events: u64,
    pub full: Duration,
    pub snapshot: Duration,
    pub snapshot_tail: Duration,
    pub snapshot_bytes: i64,
    pub save: Duration,
}

/// Publishes `events` events of `who` (pairs), each after `noise` events of other accounts.
async fn publish(
    js: &jetstream::Context,
    project: ProjectId,
    who: &Account,
    events: u64,
    noise: u64,
    days: u64,
) -> anyhow::Result<u64> {
    let subject = subjects::account_subject(project, who);
    let others: Vec<(Account, String)> = (0..1000)
        .map(|k| {
            let account = Account::Identity {
                identity: format!("noise-{k}"),
            };
            let subject = subjects::account_subject(project, &account);
            (account, subject)
        })
        .collect();
    let span = chrono::Duration::days(i64::try_from(days.max(1))?);
    let start = chrono::Utc::now() - span;
    let step = span / i32::try_from((events / 2).max(1))?;
    let mut acks = Vec::with_capacity(PUBLISH_WINDOW);
    let mut published = 0u64;
    for i in 0..events / 2 {
        let at = start + step * i32::try_from(i)?;
        let mut batch = Vec::new();
        for n in 0..noise * 2 {
            let (account, subject) = &others[((i * noise * 2 + n) % 1000) as usize];
            let (reserved, _) = crate::refs::event_pair(project, account, at);
            batch.push((subject.clone(), reserved));
        }
        let (reserved, committed) = crate::refs::event_pair(project, who, at);
        batch.push((subject.clone(), reserved));
        batch.push((subject.clone(), committed));
        for (subject, event) in batch {
            acks.push(js.publish(subject, event.to_vec()?.into()).await?);
            published += 1;
        }
        if acks.len() >= PUBLISH_WINDOW {
            futures::future::try_join_all(acks.drain(..).map(IntoFuture::into_future)).await?;
        }
    }
    futures::future::try_join_all(acks.drain(..).map(IntoFuture::into_future)).await?;
    Ok(published)
}

/// The median time a fresh gate takes to answer a view of `who`, and what it read.
async fn cold_view(
    nats_url: &str,
    pool: Option<&sqlx::PgPool>,
    project: ProjectId,
    who: &Account,
    tier: &Tier,
) -> anyhow::Result<(Duration, ledger::gate::LoadStats)> {
    let mut times = Vec::with_capacity(RUNS);
    let mut stats = ledger::gate::LoadStats::default();
    for _ in 0..RUNS {
        let client = ledger::stream::connect(nats_url).await?;
        let gate = Gate::new(client, Arc::new(SystemClock), pool.cloned()).await?;
        let t = Instant::now();
        gate.view(project, who, tier)
            .await
            .context("cold view of the account")?;
        times.push(t.elapsed());
        stats = gate.load_stats();
    }
    times.sort();
    Ok((times[RUNS / 2], stats))
}

pub async fn run(histories: &[u64], noise: u64, days: u64) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &history in histories {
        let (nats, db) = crate::env::backends().await?;
        let client = ledger::stream::connect(&nats.url()).await?;
        let js = ledger::stream::jetstream(client);
        ledger::stream::ensure_ledger_stream(&js).await?;
        let project = ledger::control::create_project(db.pool(), "load-bench")
            .await?
            .project_id;
        let tier = Plan::from_yaml(PLAN)?
            .tiers
            .get(TIER)
            .cloned()
            .context("bench tier")?;
        let who = Account::Identity {
            identity: format!("history-{history}"),
        };
        eprintln!("load: publishing {history} events of one account, {noise} others' per event…");
        let stream_events = publish(&js, project, &who, history, noise, days).await?;

        let (full, stats) = cold_view(&nats.url(), None, project, &who, &tier).await?;
        if stats.events_read != history || stats.from_snapshot != 0 {
            bail!("without snapshots, expected {history} events read: {stats:?}");
        }

        // One process saves the account's snapshot (as when it forgets it or stops).
        let gate = Gate::new(
            ledger::stream::connect(&nats.url()).await?,
            Arc::new(SystemClock),
            Some(db.pool().clone()),
        )
        .await?;
        gate.view(project, &who, &tier).await?;
        let t = Instant::now();
        if gate.save_snapshots().await != 1 {
            bail!("the snapshot was not saved");
        }
        let save = t.elapsed();
        let snapshot_bytes: i64 =
            sqlx::query_scalar("SELECT octet_length(state)::bigint FROM account_snapshots")
                .fetch_one(db.pool())
                .await?;

        let (snapshot, stats) =
            cold_view(&nats.url(), Some(db.pool()), project, &who, &tier).await?;
        if stats.from_snapshot != 1 || stats.events_read != 0 {
            bail!("from the snapshot, expected no event read: {stats:?}");
        }

        publish(&js, project, &who, TAIL, noise, 1).await?;
        let (snapshot_tail, stats) =
            cold_view(&nats.url(), Some(db.pool()), project, &who, &tier).await?;
        if stats.from_snapshot != 1 || stats.events_read != TAIL {
            bail!("from the snapshot, expected {TAIL} events read: {stats:?}");
        }
        rows.push(Row {
            history,
            stream_events,
            full,
            snapshot,
            snapshot_tail,
            snapshot_bytes,
            save,
        });
    }
    Ok(rows)
}

#[allow(clippy::print_stdout)]
pub fn report(rows: &[Row], noise: u64, days: u64) {
    println!(
        "cold account load: a fresh gate's first limits view of one account, median of {RUNS}; \
         its events spread over {days} days, {noise} other accounts' events per event of it"
    );
    println!(
        "{:>9} {:>13} | {:>12} | {:>13} {:>16} | {:>14} {:>9}",
        "history",
        "stream events",
        "no snapshot",
        "snapshot",
        "snapshot + 100",
        "snapshot bytes",
        "save"
    );
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1e3);
    for r in rows {
        println!(
            "{:>9} {:>13} | {:>12} | {:>13} {:>16} | {:>14} {:>9}",
            r.history,
            r.stream_events,
            ms(r.full),
            ms(r.snapshot),
            ms(r.snapshot_tail),
            r.snapshot_bytes,
            ms(r.save)
        );
    }
}

//! Account snapshots: a gate reading back an account it does not hold in
//! memory starts from the account's snapshot and reads only the events after
//! it, and decides exactly as if it had folded the whole history; a snapshot
//! the stream does not agree with is deleted and never used.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use projector::snapshot::{JSON_SNAPSHOT_FORMAT, SNAPSHOT_FORMAT};
use rust_decimal::Decimal;
use schemas::plan::Tier;
use schemas::{subjects, Account, Amounts, ProjectId, ReservationId, Unit};
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use testkit::nats::NatsServer;
use testkit::pg::{fresh_database, TestDb};
use tollgate_ledger::gate::decide::ReserveRequest;
use tollgate_ledger::gate::{Admitted, LoadStats};
use tollgate_ledger::{Clock, Gate, ManualClock};

const PLAN: &str = "default_tier: free\ntiers:\n  free:\n    limits:\n      - { unit: requests, window: day, cap: 50 }\n      - { unit: tokens, window: lifetime, cap: 1000000 }\n";

mod support;
use support::{account, expires_exactly_once, gate, reserve_and_commit};

fn tier() -> Tier {
    support::tier(PLAN)
}

fn request(expires_at: DateTime<Utc>) -> ReserveRequest {
    support::request(
        expires_at,
        Amounts::new()
            .with(Unit::Requests, Decimal::ONE)
            .with(Unit::Tokens, Decimal::from(100)),
    )
}

async fn admit(gate: &Gate, project: ProjectId, who: &Account, req: ReserveRequest) -> Admitted {
    support::admit(gate, project, who, &tier(), req).await
}

fn used_tokens(n: i64) -> Amounts {
    Amounts::new()
        .with(Unit::Requests, Decimal::ONE)
        .with(Unit::Tokens, Decimal::from(n))
}

/// `pairs` reserve → commit pairs on `who`; returns the first reservation.
async fn pairs(
    gate: &Gate,
    clock: &ManualClock,
    project: ProjectId,
    who: &Account,
    pairs: usize,
) -> ReservationId {
    let mut first = None;
    for i in 0..pairs {
        let a = admit(
            gate,
            project,
            who,
            request(clock.now() + Duration::minutes(1)),
        )
        .await;
        gate.commit(
            project,
            a.reservation_id,
            Some(who),
            used_tokens(i as i64 + 1),
            None,
        )
        .await
        .unwrap();
        first.get_or_insert(a.reservation_id);
    }
    first.unwrap()
}

async fn view_json(gate: &Gate, project: ProjectId, who: &Account) -> serde_json::Value {
    serde_json::to_value(gate.view(project, who, &tier()).await.unwrap()).unwrap()
}

async fn last_seq(gate: &Gate, subject: &str) -> u64 {
    gate.jetstream()
        .get_stream(subjects::LEDGER_STREAM)
        .await
        .unwrap()
        .direct_get_last_for_subject(subject)
        .await
        .unwrap()
        .sequence
}

async fn snapshot_seq(pool: &PgPool, subject: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT seq FROM account_snapshots WHERE subject = $1")
        .bind(subject)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// A nats-server, a fresh database and the clock every test here starts from.
async fn backends() -> (NatsServer, TestDb, ManualClock) {
    let nats = NatsServer::start().await.unwrap();
    let db = fresh_database().await.unwrap();
    let clock = ManualClock::new("2026-03-10T12:00:00Z".parse().unwrap());
    (nats, db, clock)
}

/// Waits (bounded) until `gate` has saved `n` snapshots in all.
async fn saved(gate: &Gate, n: u64) {
    for _ in 0..500 {
        if gate.load_stats().snapshots_saved >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{n} snapshots were not saved: {:?}", gate.load_stats());
}

/// Nice values of this process's threads named `name`, and of the calling thread.
fn nice_of_threads(name: &str) -> (Vec<i64>, i64) {
    let nice = |stat: &str| -> i64 {
        let after_name = &stat[stat.rfind(')').unwrap() + 1..];
        // Fields from the third (state) on; nice is the 19th.
        after_name
            .split_whitespace()
            .nth(16)
            .unwrap()
            .parse()
            .unwrap()
    };
    let mut named = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue; // the thread has exited
        };
        if comm.trim_end() == name {
            named.push(nice(&stat));
        }
    }
    let own = nice(&std::fs::read_to_string("/proc/thread-self/stat").unwrap());
    (named, own)
}

fn delta(after: LoadStats, before: LoadStats) -> (u64, u64, u64) {
    (
        after.loads - before.loads,
        after.from_snapshot - before.from_snapshot,
        after.events_read - before.events_read,
    )
}

#[tokio::test]
async fn a_forgotten_account_comes_back_from_its_snapshot_and_the_events_after_it() {
    let (nats, db, clock) = backends().await;
    let gate_a = gate(&nats, &clock, Some(db.pool())).await;
    let project = ProjectId::new();
    let who = account("long-history");
    let subject = subjects::account_subject(project, &who);

    // 40 settled holds and one whose one-minute TTL will have passed: 81 events.
    let first = pairs(&gate_a, &clock, project, &who, 40).await;
    let stale = admit(
        &gate_a,
        project,
        &who,
        request(clock.now() + Duration::minutes(1)),
    )
    .await;
    clock.advance(Duration::minutes(11));
    assert_eq!(gate_a.forget_idle(Duration::minutes(10)), 1);
    saved(&gate_a, 1).await;
    let at = last_seq(&gate_a, &subject).await;
    assert_eq!(
        snapshot_seq(db.pool(), &subject).await,
        Some(at as i64),
        "saved when forgotten, at the subject's last event"
    );

    // Another process appends three events after the snapshot.
    let gate_b = gate(&nats, &clock, Some(db.pool())).await;
    let other = admit(
        &gate_b,
        project,
        &who,
        request(clock.now() + Duration::minutes(1)),
    )
    .await;
    gate_b
        .commit(
            project,
            other.reservation_id,
            Some(&who),
            used_tokens(7),
            None,
        )
        .await
        .unwrap();
    admit(
        &gate_b,
        project,
        &who,
        request(clock.now() + Duration::minutes(30)),
    )
    .await;

    // Back in process A: the snapshot plus the three events, nothing more.
    let before = gate_a.load_stats();
    let view = view_json(&gate_a, project, &who).await;
    assert_eq!(delta(gate_a.load_stats(), before), (1, 1, 3));

    // A process without snapshots folds all 84 events and sees the same.
    let gate_c = gate(&nats, &clock, None).await;
    assert_eq!(view_json(&gate_c, project, &who).await, view);
    assert_eq!(delta(gate_c.load_stats(), LoadStats::default()), (1, 0, 84));
    let requests = view
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["unit"] == "requests")
        .unwrap();
    assert_eq!(
        (&requests["used"], &requests["held"]),
        (&serde_json::json!("41"), &serde_json::json!("2")),
        "41 committed; the stale hold and the new one held"
    );

    // Settlements came back with it: a repeated commit is a replay, a
    // different one a conflict; the stale hold expires exactly once.
    let again = gate_a
        .commit(project, first, Some(&who), used_tokens(1), None)
        .await
        .unwrap();
    assert!(again.replayed);
    assert!(gate_a
        .commit(project, first, Some(&who), used_tokens(2), None)
        .await
        .is_err());
    expires_exactly_once(&gate_a, &gate_c, project, &who, stale.reservation_id).await;
}

#[tokio::test]
async fn long_histories_are_saved_every_n_events() {
    let (nats, db, clock) = backends().await;
    let gate_a = gate(&nats, &clock, Some(db.pool())).await;
    gate_a.set_snapshot_every(50);
    let project = ProjectId::new();
    let who = account("busy");
    let subject = subjects::account_subject(project, &who);

    // 45 pairs = 90 events: saved after the 50th, never forgotten.
    pairs(&gate_a, &clock, project, &who, 45).await;
    saved(&gate_a, 1).await;
    assert_eq!(gate_a.cached_accounts(), 1);
    // By the snapshot writer's thread, below the requests' priority (19
    // is the lowest there is).
    let (writers, own) = nice_of_threads("tg-snapshots");
    assert!(
        !writers.is_empty() && writers.iter().all(|&n| n > own || n == 19),
        "writer threads' nice {writers:?}, this thread's {own}"
    );

    // A restarted process reads the 40 events after the 50th.
    let gate_b = gate(&nats, &clock, Some(db.pool())).await;
    let view = view_json(&gate_b, project, &who).await;
    assert_eq!(delta(gate_b.load_stats(), LoadStats::default()), (1, 1, 40));
    assert_eq!(view, view_json(&gate_a, project, &who).await);

    // Stopping saves what is left, so the next one reads nothing.
    assert_eq!(gate_a.save_snapshots().await, 1);
    assert_eq!(gate_a.save_snapshots().await, 0, "nothing new to save");
    assert_eq!(
        snapshot_seq(db.pool(), &subject).await,
        Some(last_seq(&gate_a, &subject).await as i64)
    );
    let gate_c = gate(&nats, &clock, Some(db.pool())).await;
    assert_eq!(view_json(&gate_c, project, &who).await, view);
    assert_eq!(delta(gate_c.load_stats(), LoadStats::default()), (1, 1, 0));

    // Turned off, snapshots are neither read nor written.
    let gate_d = gate(&nats, &clock, Some(db.pool())).await;
    gate_d.set_snapshot_every(0);
    assert_eq!(view_json(&gate_d, project, &who).await, view);
    assert_eq!(delta(gate_d.load_stats(), LoadStats::default()), (1, 0, 90));
    assert_eq!(gate_d.save_snapshots().await, 0);
}

/// A save queued for the writer counts its account as saved, so stopping
/// (`save_snapshots`) waits for the queue rather than skip that account.
#[tokio::test]
async fn stopping_waits_for_the_saves_already_queued() {
    let (nats, db, clock) = backends().await;
    let gate = gate(&nats, &clock, Some(db.pool())).await;
    gate.set_snapshot_every(50);
    let project = ProjectId::new();
    let who = account("queued");
    let subject = subjects::account_subject(project, &who);

    // 25 pairs: the 50th event queues a save and leaves nothing unsaved.
    pairs(&gate, &clock, project, &who, 25).await;
    assert_eq!(gate.save_snapshots().await, 0, "nothing unsaved left");
    assert_eq!(
        snapshot_seq(db.pool(), &subject).await,
        Some(last_seq(&gate, &subject).await as i64),
        "the queued save was written before save_snapshots returned"
    );
}

/// A save that fails leaves its account unsaved, whether the writer made it
/// (due after 50 events) or stopping did, so the next chance saves it.
#[tokio::test]
async fn a_failed_save_leaves_the_account_unsaved() {
    let (nats, db, clock) = backends().await;
    let gate = gate(&nats, &clock, Some(db.pool())).await;
    gate.set_snapshot_every(50);
    let project = ProjectId::new();
    let who = account("unlucky");
    let subject = subjects::account_subject(project, &who);
    let table = |from: &str, to: &str| format!("ALTER TABLE {from} RENAME TO {to}");

    // Every write fails while the table is away.
    sqlx::query(&table("account_snapshots", "snapshots_away"))
        .execute(db.pool())
        .await
        .unwrap();
    pairs(&gate, &clock, project, &who, 25).await; // the 50th event queues a save
    assert_eq!(
        gate.save_snapshots().await,
        0,
        "the writer's and its own save fail"
    );
    sqlx::query(&table("snapshots_away", "account_snapshots"))
        .execute(db.pool())
        .await
        .unwrap();
    assert_eq!(snapshot_seq(db.pool(), &subject).await, None);

    assert_eq!(
        gate.save_snapshots().await,
        1,
        "still unsaved, so saved now"
    );
    assert_eq!(
        snapshot_seq(db.pool(), &subject).await,
        Some(last_seq(&gate, &subject).await as i64)
    );
}

/// A busy account's state (more entries than are encoded inline, so encoded
/// on the blocking pool) is saved and read back the same.
#[tokio::test]
async fn a_busy_accounts_large_state_is_saved_and_read_back() {
    let (nats, db, clock) = backends().await;
    let gate_a = gate(&nats, &clock, Some(db.pool())).await;
    // Saved only when asked, so the one save below holds all 300 settlements.
    gate_a.set_snapshot_every(1_000_000);
    let project = ProjectId::new();
    let who = account("busy-day");
    let busy = support::tier(
        "default_tier: busy\ntiers:\n  busy:\n    limits:\n      - { unit: requests, window: day, cap: 1000 }\n",
    );
    for _ in 0..300 {
        let req = request(clock.now() + Duration::minutes(1));
        assert!(reserve_and_commit(&gate_a, project, &who, &busy, req, used_tokens(1)).await);
    }
    assert_eq!(gate_a.save_snapshots().await, 1);

    let gate_b = gate(&nats, &clock, Some(db.pool())).await;
    let view = |g: Gate| {
        let (who, busy) = (who.clone(), busy.clone());
        async move { serde_json::to_value(g.view(project, &who, &busy).await.unwrap()).unwrap() }
    };
    assert_eq!(view(gate_b.clone()).await, view(gate_a.clone()).await);
    assert_eq!(delta(gate_b.load_stats(), LoadStats::default()), (1, 1, 0));
}

/// Replaces the snapshot of `subject` with `row` (seq, event id, state).
async fn put_snapshot(
    pool: &PgPool,
    subject: &str,
    project: ProjectId,
    row: &(i64, uuid::Uuid, Vec<u8>),
) {
    put_snapshot_as(
        pool,
        subject,
        project,
        row,
        projector::snapshot::SNAPSHOT_FORMAT,
    )
    .await;
}

/// [`put_snapshot`] with the state in `format`.
async fn put_snapshot_as(
    pool: &PgPool,
    subject: &str,
    project: ProjectId,
    row: &(i64, uuid::Uuid, Vec<u8>),
    format: i32,
) {
    sqlx::query("DELETE FROM account_snapshots WHERE subject = $1")
        .bind(subject)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO account_snapshots (subject, project_id, seq, event_id, format, state) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(subject)
        .bind(project.0)
        .bind(row.0)
        .bind(row.1)
        .bind(format)
        .bind(&row.2)
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn snapshots_the_stream_does_not_agree_with_are_deleted_and_not_used() {
    let (nats, db, clock) = backends().await;
    let pool = db.pool();
    let gate_a = gate(&nats, &clock, Some(pool)).await;
    let project = ProjectId::new();
    let who = account("checked");
    let subject = subjects::account_subject(project, &who);
    // Another account's event, earlier in the stream.
    pairs(&gate_a, &clock, project, &account("neighbour"), 1).await;
    pairs(&gate_a, &clock, project, &who, 20).await;
    let neighbour_seq = last_seq(
        &gate_a,
        &subjects::account_subject(project, &account("neighbour")),
    )
    .await as i64;
    assert_eq!(gate_a.save_snapshots().await, 1);
    let view = view_json(&gate_a, project, &who).await;
    let good: (i64, uuid::Uuid, Vec<u8>) =
        sqlx::query_as("SELECT seq, event_id, state FROM account_snapshots WHERE subject = $1")
            .bind(&subject)
            .fetch_one(pool)
            .await
            .unwrap();

    // The last spoiler below gives a state that reads, and ends elsewhere.
    let mut elsewhere = good.2.clone();
    elsewhere[1] ^= 1;
    let read = projector::AccountState::from_snapshot(SNAPSHOT_FORMAT, &elsewhere).unwrap();
    assert_ne!(read.last_seq as i64, good.0);

    let spoilers = [
        (
            "another event id",
            "UPDATE account_snapshots SET event_id = gen_random_uuid()",
        ),
        (
            "another account's sequence",
            "UPDATE account_snapshots SET seq = $1",
        ),
        (
            "past the stream's end",
            "UPDATE account_snapshots SET seq = $1 + 1000",
        ),
        (
            "an unknown format",
            "UPDATE account_snapshots SET format = 99",
        ),
        (
            "unreadable state",
            "UPDATE account_snapshots SET state = '\\x7b7d'::bytea",
        ),
        (
            "a state that ends elsewhere",
            // The low bit of the first byte of `last_seq` (after the format byte).
            "UPDATE account_snapshots SET state = set_byte(state, 1, get_byte(state, 1) # 1)",
        ),
    ];
    for (what, spoil) in spoilers {
        put_snapshot(pool, &subject, project, &good).await;
        let query = sqlx::query(spoil);
        let query = if spoil.contains("$1") {
            query.bind(neighbour_seq)
        } else {
            query
        };
        query.execute(pool).await.unwrap();

        let fresh = gate(&nats, &clock, Some(pool)).await;
        assert_eq!(view_json(&fresh, project, &who).await, view, "{what}");
        assert_eq!(
            delta(fresh.load_stats(), LoadStats::default()),
            (1, 0, 40),
            "{what}: the whole history was read"
        );
        assert_eq!(snapshot_seq(pool, &subject).await, None, "{what}: deleted");
    }

    // The unspoiled snapshot is used.
    put_snapshot(pool, &subject, project, &good).await;
    let fresh = gate(&nats, &clock, Some(pool)).await;
    assert_eq!(view_json(&fresh, project, &who).await, view);
    assert_eq!(delta(fresh.load_stats(), LoadStats::default()), (1, 1, 0));

    // So is the same state as a version before format 3 saved it (JSON),
    // and the next save writes the current format.
    let state = projector::AccountState::from_snapshot(SNAPSHOT_FORMAT, &good.2).unwrap();
    let json = (good.0, good.1, state.to_json_snapshot().unwrap());
    put_snapshot_as(pool, &subject, project, &json, JSON_SNAPSHOT_FORMAT).await;
    let fresh = gate(&nats, &clock, Some(pool)).await;
    assert_eq!(view_json(&fresh, project, &who).await, view);
    assert_eq!(delta(fresh.load_stats(), LoadStats::default()), (1, 1, 0));
    pairs(&fresh, &clock, project, &who, 20).await;
    assert_eq!(fresh.save_snapshots().await, 1);
    let format: i32 = sqlx::query_scalar("SELECT format FROM account_snapshots WHERE subject = $1")
        .bind(&subject)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(format, SNAPSHOT_FORMAT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_saved_all_the_time_never_change_admission() {
    let (nats, db, clock) = backends().await;
    // Two processes on one account, each saving a snapshot every 3 events
    // (or as many as its last snapshot had entries) and forgetting the
    // account whenever it is not in use.
    let gates = [
        gate(&nats, &clock, Some(db.pool())).await,
        gate(&nats, &clock, Some(db.pool())).await,
    ];
    for g in &gates {
        g.set_snapshot_every(3);
    }
    let project = ProjectId::new();
    let who = account("hot");
    let stop = Arc::new(AtomicBool::new(false));
    let sweepers: Vec<_> = gates
        .iter()
        .map(|g| {
            let (gate, stop) = (g.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    gate.forget_idle(Duration::zero());
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            })
        })
        .collect();
    // Four waves of 40 reserve → commit pairs against a cap of 50 requests.
    let mut admitted = 0;
    for _ in 0..4 {
        let outcomes: Vec<bool> = futures::stream::iter(0..40)
            .map(|i| {
                let (gate, who) = (gates[i % 2].clone(), who.clone());
                let expires_at = clock.now() + Duration::minutes(1);
                async move {
                    let req = request(expires_at);
                    reserve_and_commit(&gate, project, &who, &tier(), req, used_tokens(1)).await
                }
            })
            .buffer_unordered(40)
            .collect()
            .await;
        admitted += outcomes.iter().filter(|a| **a).count();
    }
    stop.store(true, Ordering::Relaxed);
    for s in sweepers {
        s.await.unwrap();
    }
    assert_eq!(admitted, 50, "exactly the cap");
    // Each gate reads the account back once more, from a snapshot (on a busy
    // machine the sweepers may never have caught it idle during the waves).
    // Saving first empties the writer's queue, which a sweep that finds it
    // full waits for before forgetting an account with events unsaved.
    for g in &gates {
        g.save_snapshots().await;
        g.forget_idle(Duration::zero());
        let view = g.view(project, &who, &tier()).await.unwrap();
        let requests = view.iter().find(|l| l.unit == Unit::Requests).unwrap();
        assert_eq!(
            (requests.used, requests.held),
            (Decimal::from(50), Decimal::ZERO)
        );
    }
    let stats: Vec<LoadStats> = gates.iter().map(|g| g.load_stats()).collect();
    assert!(
        stats.iter().all(|s| s.from_snapshot > 0),
        "snapshots were used: {stats:?}"
    );
    let info = gates[0]
        .jetstream()
        .get_stream(subjects::LEDGER_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.state.messages, 100);
}

#[tokio::test]
async fn without_a_reachable_database_the_whole_history_is_read() {
    let (nats, db, clock) = backends().await;
    let gate_a = gate(&nats, &clock, Some(db.pool())).await;
    let project = ProjectId::new();
    let who = account("offline");
    pairs(&gate_a, &clock, project, &who, 20).await;
    assert_eq!(gate_a.save_snapshots().await, 1);
    let view = view_json(&gate_a, project, &who).await;

    // Nothing listens on this port, and the pool would keep trying for an
    // hour: admission must not wait for it.
    let unreachable = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(3600))
        .connect_lazy(&format!(
            "postgres://postgres@127.0.0.1:{}/none",
            testkit::ports::free_port()
        ))
        .unwrap();
    let fresh = gate(&nats, &clock, Some(&unreachable)).await;
    assert_eq!(view_json(&fresh, project, &who).await, view);
    assert_eq!(delta(fresh.load_stats(), LoadStats::default()), (1, 0, 40));
}

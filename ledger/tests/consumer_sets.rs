//! One consumer applies every projection its process leads, with one fetch
//! and one decode per event, and takes over a projection whose leader stops.
//! Real nats-server and PostgreSQL; the rows must equal a replay's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use projector::consumer::{self, Projection};
use projector::service::CountersProjection;
use schemas::events::{Account, Envelope};
use schemas::{subjects, ProjectId};
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tollgate_ledger::projection::LedgerProjection;

const WINDOW: Duration = Duration::from_millis(50);

/// Publishes `n` reserve → commit pairs (ids from `from`) over a few identities.
async fn publish_pairs(js: &async_nats::jetstream::Context, project: ProjectId, from: u32, n: u32) {
    for k in from..from + n {
        let identity = format!("user-{}", k % 5);
        let id = format!("019aa5c2-7f3e-7c41-9a6e-{k:012}");
        let held = json!({"requests": "1", "tokens": "1000", "usd": "0.05"});
        let events = [
            json!({"type": "reserved", "reservation_id": id, "model": "gpt-4o-mini", "amounts": held, "expires_at": "2026-11-21T20:16:03Z", "tier": "free"}),
            json!({"type": "committed",
                   "hold": {"reservation_id": id, "reserved_at": "2026-11-21T20:15:03.123456Z", "model": "gpt-4o-mini", "held": held},
                   "actual": {"requests": "1", "tokens": (300 + k).to_string(), "usd": "0.0042"}, "overage": {}}),
        ];
        for (i, event) in events.into_iter().enumerate() {
            let envelope = Envelope::from_slice(
                &serde_json::to_vec(&json!({
                    "event_id": format!("019aa5c2-8000-7c41-9a6e-{:012}", k * 2 + i as u32),
                    "schema_version": 1,
                    "occurred_at": "2026-11-21T20:15:04.5Z",
                    "project_id": project.0.to_string(),
                    "account": {"kind": "identity", "identity": identity},
                    "event": event,
                }))
                .unwrap(),
            )
            .unwrap();
            let account = Account::Identity {
                identity: identity.clone(),
            };
            js.publish(
                subjects::account_subject(project, &account),
                envelope.to_vec().unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    }
}

async fn checkpoint(pool: &PgPool, name: &str) -> u64 {
    let seq: Option<i64> =
        sqlx::query_scalar("SELECT last_seq FROM checkpoints WHERE projection = $1")
            .bind(name)
            .fetch_optional(pool)
            .await
            .unwrap();
    seq.map_or(0, |s| s as u64)
}

async fn caught_up(pool: &PgPool, name: &str, last: u64) {
    testkit::wait::until(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async { checkpoint(pool, name).await == last },
    )
    .await
    .unwrap_or_else(|e| panic!("{name} never reached {last}: {e:#}"));
}

async fn all_rows(pool: &PgPool) -> Vec<String> {
    testkit::pg::projection_rows(pool).await.unwrap()
}

async fn durable_exists(js: &async_nats::jetstream::Context, name: &str) -> bool {
    let stream = js.get_stream(subjects::LEDGER_STREAM).await.unwrap();
    stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(name)
        .await
        .is_ok()
}

/// The live projections hold one row per reservation (`reservations` of
/// them) and equal what a replay of the stream rebuilds.
async fn live_equals_replay(
    js: &async_nats::jetstream::Context,
    pool: &PgPool,
    reservations: usize,
) {
    let live = all_rows(pool).await;
    assert_eq!(
        live.iter()
            .filter(|r| r.starts_with("reservations: "))
            .count(),
        reservations,
        "one row per reservation"
    );
    tollgate_ledger::replay::replay(js, pool, |_, _| {})
        .await
        .unwrap();
    let replayed = all_rows(pool).await;
    let only_live: Vec<&String> = live.iter().filter(|r| !replayed.contains(r)).collect();
    let only_replayed: Vec<&String> = replayed.iter().filter(|r| !live.contains(r)).collect();
    assert!(
        only_live.is_empty() && only_replayed.is_empty(),
        "live rows differ from replayed rows:\nonly live: {only_live:#?}\nonly replayed: {only_replayed:#?}"
    );
}

/// A consumer process applying `projections`, until stopped.
struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(
    js: &async_nats::jetstream::Context,
    pool: &PgPool,
    projections: &'static [&'static (dyn Projection + 'static)],
) -> Running {
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (js, pool, stop) = (js.clone(), pool.clone(), stop.clone());
        async move {
            consumer::run(js, pool, projections, WINDOW, stop)
                .await
                .unwrap()
        }
    });
    Running { stop, task }
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

/// A nats-server with the ledger stream, a fresh database, a JetStream context.
async fn backends() -> (
    testkit::nats::NatsServer,
    testkit::pg::TestDb,
    async_nats::jetstream::Context,
) {
    let nats = testkit::nats::NatsServer::start().await.unwrap();
    let db = testkit::pg::fresh_database().await.unwrap();
    let js = tollgate_ledger::stream::jetstream(
        tollgate_ledger::stream::connect(&nats.url()).await.unwrap(),
    );
    tollgate_ledger::stream::ensure_ledger_stream(&js)
        .await
        .unwrap();
    (nats, db, js)
}

static LEDGER_ONLY: [&dyn Projection; 1] = [&LedgerProjection];
static COUNTERS_ONLY: [&dyn Projection; 1] = [&CountersProjection];
static BOTH: [&dyn Projection; 2] = [&LedgerProjection, &CountersProjection];

#[tokio::test]
async fn one_consumer_feeds_what_it_leads_and_takes_over_the_rest() {
    let (_nats, db, js) = backends().await;
    let pool = db.pool().clone();
    let project = ProjectId::new();
    let both = format!(
        "{}__{}",
        subjects::LEDGER_CONSUMER,
        subjects::PROJECTOR_CONSUMER
    );
    let (ledger, counters) = (subjects::LEDGER_CONSUMER, subjects::PROJECTOR_CONSUMER);

    // Process A applies the ledger projection alone; B runs both but can
    // only lead the counters while A is there.
    publish_pairs(&js, project, 0, 40).await;
    let a = start(&js, &pool, &LEDGER_ONLY);
    caught_up(&pool, ledger, 80).await;
    let b = start(&js, &pool, &BOTH);
    caught_up(&pool, counters, 80).await;
    publish_pairs(&js, project, 40, 10).await;
    caught_up(&pool, ledger, 100).await;
    caught_up(&pool, counters, 100).await;
    assert!(
        !durable_exists(&js, &both).await,
        "B fed the ledger projection while A led it"
    );

    // A stops while B runs: B takes the ledger over.
    a.stop().await;
    publish_pairs(&js, project, 50, 10).await;
    caught_up(&pool, ledger, 120).await;
    caught_up(&pool, counters, 120).await;
    assert!(
        durable_exists(&js, &both).await,
        "B should feed both projections from one consumer once it leads both"
    );
    b.stop().await;

    // Checkpoints apart (ledger 140, counters 120, the stream at 160): one
    // consumer for both starts at 121 and must not apply 121..=140 to the
    // ledger projection a second time.
    publish_pairs(&js, project, 60, 10).await;
    let a = start(&js, &pool, &LEDGER_ONLY);
    caught_up(&pool, ledger, 140).await;
    a.stop().await;
    publish_pairs(&js, project, 70, 10).await;
    assert_eq!(checkpoint(&pool, counters).await, 120);
    let b = start(&js, &pool, &BOTH);
    caught_up(&pool, ledger, 160).await;
    caught_up(&pool, counters, 160).await;
    b.stop().await;
    // And the other way round: counters ahead of the ledger.
    publish_pairs(&js, project, 80, 5).await;
    let c = start(&js, &pool, &COUNTERS_ONLY);
    caught_up(&pool, counters, 170).await;
    c.stop().await;
    let b = start(&js, &pool, &BOTH);
    caught_up(&pool, ledger, 170).await;
    b.stop().await;

    live_equals_replay(&js, &pool, 85).await;
}

#[tokio::test]
async fn an_emptied_database_is_filled_again_from_the_stream() {
    let (_nats, db, js) = backends().await;
    let pool = db.pool().clone();
    publish_pairs(&js, ProjectId::new(), 0, 20).await;
    let (ledger, counters) = (subjects::LEDGER_CONSUMER, subjects::PROJECTOR_CONSUMER);
    let b = start(&js, &pool, &BOTH);
    caught_up(&pool, ledger, 40).await;
    caught_up(&pool, counters, 40).await;
    b.stop().await;
    let before = all_rows(&pool).await;

    // The database is emptied (or restored from an old backup); the stream
    // and the consumer that acknowledged all 40 events are kept.
    sqlx::query("TRUNCATE reservations, account_balances, usage_counters, checkpoints")
        .execute(&pool)
        .await
        .unwrap();
    let b = start(&js, &pool, &BOTH);
    caught_up(&pool, ledger, 40).await;
    caught_up(&pool, counters, 40).await;
    b.stop().await;
    assert_eq!(
        all_rows(&pool).await,
        before,
        "every row rebuilt from the stream"
    );
}

#[tokio::test]
async fn a_batch_the_database_refuses_is_applied_once_it_is_accepted() {
    let (_nats, db, js) = backends().await;
    let pool = db.pool().clone();
    let project = ProjectId::new();
    publish_pairs(&js, project, 0, 10).await;
    let (ledger, counters) = (subjects::LEDGER_CONSUMER, subjects::PROJECTOR_CONSUMER);
    let b = start(&js, &pool, &BOTH);
    caught_up(&pool, ledger, 20).await;
    // The database refuses one identity's reservations (a full disk, a
    // constraint, an operator's lock would do the same), then accepts again.
    sqlx::query(
        "ALTER TABLE reservations ADD CONSTRAINT refuse_user_3 CHECK (identity <> 'user-3') NOT VALID",
    )
    .execute(&pool)
    .await
    .unwrap();
    publish_pairs(&js, project, 10, 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        checkpoint(&pool, ledger).await < 40,
        "the refused batch must not count as applied"
    );
    sqlx::query("ALTER TABLE reservations DROP CONSTRAINT refuse_user_3")
        .execute(&pool)
        .await
        .unwrap();
    caught_up(&pool, ledger, 40).await;
    caught_up(&pool, counters, 40).await;
    b.stop().await;
    // Every event applied exactly once: the rows equal a replay's.
    live_equals_replay(&js, &pool, 20).await;
}

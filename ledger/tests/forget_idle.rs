//! A gate forgets accounts nobody uses, so a process's memory follows the
//! accounts in use, and forgetting never changes a decision: a forgotten
//! account is read back from its subject, settled holds and usage included.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use rust_decimal::Decimal;
use schemas::plan::Tier;
use schemas::{Account, Amounts, ProjectId, Unit};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use testkit::nats::NatsServer;
use tollgate_ledger::gate::decide::ReserveRequest;
use tollgate_ledger::gate::Admitted;
use tollgate_ledger::{Clock, Gate, ManualClock};

const PLAN: &str = "default_tier: free\ntiers:\n  free:\n    limits:\n      - { unit: requests, window: day, cap: 50 }\n";

mod support;
use support::{account, expires_exactly_once, reserve_and_commit};

async fn gate(nats: &NatsServer, clock: &ManualClock) -> Gate {
    support::gate(nats, clock, None).await
}

fn tier() -> Tier {
    support::tier(PLAN)
}

fn request(expires_at: DateTime<Utc>) -> ReserveRequest {
    support::request(
        expires_at,
        Amounts::new().with(Unit::Requests, Decimal::ONE),
    )
}

async fn admit(gate: &Gate, project: ProjectId, who: &Account, req: ReserveRequest) -> Admitted {
    support::admit(gate, project, who, &tier(), req).await
}

fn requests_used_held(a: &Admitted) -> (Decimal, Decimal) {
    let view = a
        .limits
        .iter()
        .find(|l| l.unit == Unit::Requests)
        .expect("a requests limit");
    (view.used, view.held)
}

#[tokio::test]
async fn idle_accounts_are_forgotten_and_read_back_unchanged() {
    let nats = NatsServer::start().await.unwrap();
    let clock = ManualClock::new("2026-03-10T12:00:00Z".parse().unwrap());
    let gate = gate(&nats, &clock).await;
    let project = ProjectId::new();
    let (done, open, stale) = (account("done"), account("open"), account("stale"));

    // `done` has a settled hold, `open` a hold for 30 minutes, `stale` a
    // hold whose one-minute TTL will have passed.
    let first = admit(
        &gate,
        project,
        &done,
        request(clock.now() + Duration::minutes(1)),
    )
    .await;
    let actual = Amounts::new().with(Unit::Requests, Decimal::ONE);
    let committed = gate
        .commit(
            project,
            first.reservation_id,
            Some(&done),
            actual.clone(),
            None,
        )
        .await
        .unwrap();
    assert!(!committed.replayed);
    admit(
        &gate,
        project,
        &open,
        request(clock.now() + Duration::minutes(30)),
    )
    .await;
    let stale_hold = admit(
        &gate,
        project,
        &stale,
        request(clock.now() + Duration::minutes(1)),
    )
    .await;
    assert_eq!(gate.cached_accounts(), 3);

    assert_eq!(
        gate.forget_idle(Duration::minutes(10)),
        0,
        "every account was used just now"
    );
    clock.advance(Duration::minutes(11));
    assert_eq!(
        gate.forget_idle(Duration::minutes(10)),
        2,
        "`done` and `stale` are idle and hold nothing within its TTL"
    );
    assert_eq!(gate.cached_accounts(), 1, "`open` still holds 30 minutes");

    // Read back from the stream: the settled commit repeats as a replay, and
    // the day's usage still counts it.
    let again = gate
        .commit(project, first.reservation_id, Some(&done), actual, None)
        .await
        .unwrap();
    assert!(again.replayed, "the settlement was read back");
    let second = admit(
        &gate,
        project,
        &done,
        request(clock.now() + Duration::minutes(1)),
    )
    .await;
    assert_eq!(
        requests_used_held(&second),
        (Decimal::ONE, Decimal::ONE),
        "one committed before forgetting, one held now"
    );
    // The stale hold was read back open, and expires exactly once.
    expires_exactly_once(&gate, &gate, project, &stale, stale_hold.reservation_id).await;
    assert_eq!(gate.cached_accounts(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_all_the_time_never_changes_admission() {
    let nats = NatsServer::start().await.unwrap();
    let clock = ManualClock::new("2026-03-10T12:00:00Z".parse().unwrap());
    let gate = gate(&nats, &clock).await;
    let project = ProjectId::new();
    let who = account("hot");

    // A sweeper that forgets every account not in use at that very moment.
    let stop = Arc::new(AtomicBool::new(false));
    let sweeper = {
        let (gate, stop) = (gate.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                gate.forget_idle(Duration::zero());
                tokio::task::yield_now().await;
            }
        })
    };
    // Five waves of 30 reserve → commit pairs on one account with a cap of
    // 50 requests; between waves the account is surely forgotten, so each
    // wave starts from the stream.
    let mut admitted = 0;
    for wave in 0..5 {
        let outcomes: Vec<bool> = futures::stream::iter(0..30)
            .map(|_| {
                let (gate, who) = (gate.clone(), who.clone());
                let expires_at = clock.now() + Duration::minutes(1);
                async move {
                    let actual = Amounts::new().with(Unit::Requests, Decimal::ONE);
                    let req = request(expires_at);
                    reserve_and_commit(&gate, project, &who, &tier(), req, actual).await
                }
            })
            .buffer_unordered(30)
            .collect()
            .await;
        admitted += outcomes.iter().filter(|a| **a).count();
        let now_forgotten = gate.forget_idle(Duration::zero());
        assert!(
            now_forgotten == 1 || (now_forgotten == 0 && gate.cached_accounts() == 0),
            "wave {wave}: the idle account stayed in memory"
        );
    }
    stop.store(true, Ordering::Relaxed);
    sweeper.await.unwrap();

    assert_eq!(
        admitted, 50,
        "exactly the cap, wherever the account was forgotten"
    );
    // The stream holds exactly 50 holds and 50 commits for it.
    let last = gate.view(project, &who, &tier()).await.unwrap();
    let requests = last.iter().find(|l| l.unit == Unit::Requests).unwrap();
    assert_eq!(
        (requests.used, requests.held),
        (Decimal::from(50), Decimal::ZERO)
    );
    let info = gate
        .jetstream()
        .get_stream(schemas::subjects::LEDGER_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.state.messages, 100);
}

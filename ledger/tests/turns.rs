//! A settlement's turn ([`Gate::settle_turn`]): taken when the settlement is
//! due, it makes every later decision on the account wait for the
//! settlement, so none is made as if the hold were still open, however late
//! the settlement runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use chrono::Utc;
use rust_decimal::Decimal;
use schemas::{Amounts, ProjectId, Unit};
use std::time::Duration;
use support::{account, gate, request, tier};
use testkit::nats::NatsServer;
use tollgate_ledger::gate::ReserveOutcome;
use tollgate_ledger::{Clock, ManualClock};

/// One dollar a day: a hold of 0.90 leaves no room for another of 0.50.
const PLAN: &str = "default_tier: free\ntiers:\n  free:\n    limits:\n      - { unit: usd, window: day, cap: \"1.00\" }\n";

fn usd(cents: i64) -> Amounts {
    Amounts::new().with(Unit::Usd, Decimal::new(cents, 2))
}

#[tokio::test]
async fn a_decision_after_a_turn_is_taken_waits_for_the_settlement() {
    let nats = NatsServer::start().await.unwrap();
    let clock = ManualClock::new(Utc::now());
    let expires = clock.now() + chrono::Duration::minutes(5);
    let g = gate(&nats, &clock, None).await;
    let (project, who, tier) = (ProjectId::new(), account("user"), tier(PLAN));

    let (first, slot) = g
        .reserve_keeping_slot(project, &who, &tier, request(expires, usd(90)), None)
        .await
        .unwrap();
    let ReserveOutcome::Admitted(first) = first else {
        panic!("the first hold is denied: {first:?}");
    };
    // While the hold is open, there is no room for a second one: what the
    // turn is there to prevent.
    let early = g
        .reserve(project, &who, &tier, request(expires, usd(50)), None)
        .await
        .unwrap();
    assert!(
        matches!(early, ReserveOutcome::Denied(_)),
        "a hold of 0.50 beside one of 0.90 under a cap of 1.00: {early:?}"
    );

    // The settlement is due: its turn is taken, the settlement itself runs later.
    let turn = g.settle_turn(&slot).expect("nobody else has the account");
    // Nobody can take the turn twice.
    assert!(g.settle_turn(&slot).is_none());
    let next = tokio::spawn({
        let (g, who, tier) = (g.clone(), who.clone(), tier.clone());
        async move {
            g.reserve(project, &who, &tier, request(expires, usd(50)), None)
                .await
                .unwrap()
        }
    });
    // The next decision waits for the settlement, however long it takes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!next.is_finished(), "decided before the settlement");
    let settled = g
        .commit_in_turn(turn, project, first.reservation_id, &who, usd(10), None)
        .await
        .unwrap();
    assert!(!settled.replayed);
    // Then it decides on the settled account: 0.10 used, room for 0.50.
    let next = next.await.unwrap();
    assert!(
        matches!(next, ReserveOutcome::Admitted(_)),
        "denied although the first hold was settled at 0.10: {next:?}"
    );
    // The turn is given back with the settlement: the account goes on.
    let views = g.view(project, &who, &tier).await.unwrap();
    assert_eq!(
        (views[0].used, views[0].held),
        (Decimal::new(10, 2), Decimal::new(50, 2))
    );
}

#[tokio::test]
async fn a_release_in_turn_gives_the_hold_back_and_a_stale_turn_is_harmless() {
    let nats = NatsServer::start().await.unwrap();
    let clock = ManualClock::new(Utc::now());
    let expires = clock.now() + chrono::Duration::minutes(5);
    let g = gate(&nats, &clock, None).await;
    let (project, who, tier) = (ProjectId::new(), account("user"), tier(PLAN));
    let (first, slot) = g
        .reserve_keeping_slot(project, &who, &tier, request(expires, usd(90)), None)
        .await
        .unwrap();
    let ReserveOutcome::Admitted(first) = first else {
        panic!("denied: {first:?}");
    };
    let turn = g.settle_turn(&slot).unwrap();
    let released = g
        .release_in_turn(
            turn,
            project,
            first.reservation_id,
            &who,
            Some("upstream_error".into()),
            None,
        )
        .await
        .unwrap();
    assert!(!released.replayed);
    let views = g.view(project, &who, &tier).await.unwrap();
    assert_eq!(
        (views[0].used, views[0].held),
        (Decimal::ZERO, Decimal::ZERO)
    );

    // A turn on another account's slot guards nothing and is not used: the
    // settlement still finds its own account and waits its turn there.
    let other = account("other");
    let (second, _) = g
        .reserve_keeping_slot(project, &other, &tier, request(expires, usd(20)), None)
        .await
        .unwrap();
    let ReserveOutcome::Admitted(second) = second else {
        panic!("denied: {second:?}");
    };
    let wrong = g.settle_turn(&slot).unwrap();
    let committed = g
        .commit_in_turn(wrong, project, second.reservation_id, &other, usd(5), None)
        .await
        .unwrap();
    assert!(!committed.replayed);
    let views = g.view(project, &other, &tier).await.unwrap();
    assert_eq!(
        (views[0].used, views[0].held),
        (Decimal::new(5, 2), Decimal::ZERO)
    );
    // And the first account was free all along.
    assert!(g.settle_turn(&slot).is_some());
}

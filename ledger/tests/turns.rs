//! A settlement's turn ([`Gate::settle_turn`]): taken when the settlement is
//! due, it makes every later decision on the account wait for the
//! settlement, so none is made as if the hold were still open, however late
//! the settlement runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use schemas::plan::Tier;
use schemas::{Account, Amounts, ProjectId, Unit};
use std::sync::Arc;
use std::time::Duration;
use support::{account, gate, request, tier};
use testkit::nats::NatsServer;
use tollgate_ledger::gate::{AccountSlot, Admitted, ReserveOutcome};
use tollgate_ledger::{Clock, Gate, ManualClock};

/// One dollar a day: a hold of 0.90 leaves no room for another of 0.50.
const PLAN: &str = "default_tier: free\ntiers:\n  free:\n    limits:\n      - { unit: usd, window: day, cap: \"1.00\" }\n";

fn usd(cents: i64) -> Amounts {
    Amounts::new().with(Unit::Usd, Decimal::new(cents, 2))
}

/// One account on its own nats-server with a hold of 0.90 open, and the
/// account's slot kept for settling it.
struct Case {
    _nats: NatsServer,
    g: Gate,
    project: ProjectId,
    who: Account,
    tier: Tier,
    expires: DateTime<Utc>,
    first: Admitted,
    slot: AccountSlot,
}

impl Case {
    async fn start() -> Case {
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
        Case {
            _nats: nats,
            g,
            project,
            who,
            tier,
            expires,
            first,
            slot,
        }
    }

    /// A hold of `cents` for `who`, with that account's slot.
    async fn reserve(&self, who: &Account, cents: i64) -> (ReserveOutcome, AccountSlot) {
        let req = request(self.expires, usd(cents));
        self.g
            .reserve_keeping_slot(self.project, who, &self.tier, req, None)
            .await
            .unwrap()
    }

    /// Dollars used and held by `who`.
    async fn dollars(&self, who: &Account) -> (Decimal, Decimal) {
        let views = self.g.view(self.project, who, &self.tier).await.unwrap();
        (views[0].used, views[0].held)
    }
}

#[tokio::test]
async fn a_decision_after_a_turn_is_taken_waits_for_the_settlement() {
    let c = Arc::new(Case::start().await);
    // While the hold is open, there is no room for a second one: what the
    // turn is there to prevent.
    let (early, _) = c.reserve(&c.who, 50).await;
    assert!(
        matches!(early, ReserveOutcome::Denied(_)),
        "a hold of 0.50 beside one of 0.90 under a cap of 1.00: {early:?}"
    );

    // The settlement is due: its turn is taken, the settlement itself runs later.
    let turn =
        c.g.settle_turn(&c.slot)
            .expect("nobody else has the account");
    // Nobody can take the turn twice.
    assert!(c.g.settle_turn(&c.slot).is_none());
    let next = tokio::spawn({
        let c = c.clone();
        async move { c.reserve(&c.who, 50).await.0 }
    });
    // The next decision waits for the settlement, however long it takes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!next.is_finished(), "decided before the settlement");
    let settled =
        c.g.commit_in_turn(
            turn,
            c.project,
            c.first.reservation_id,
            &c.who,
            usd(10),
            None,
        )
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
    assert_eq!(
        c.dollars(&c.who).await,
        (Decimal::new(10, 2), Decimal::new(50, 2))
    );
}

#[tokio::test]
async fn a_release_in_turn_gives_the_hold_back_and_a_stale_turn_is_harmless() {
    let c = Case::start().await;
    let turn = c.g.settle_turn(&c.slot).unwrap();
    let reason = Some("upstream_error".to_owned());
    let released =
        c.g.release_in_turn(
            turn,
            c.project,
            c.first.reservation_id,
            &c.who,
            reason,
            None,
        )
        .await
        .unwrap();
    assert!(!released.replayed);
    assert_eq!(c.dollars(&c.who).await, (Decimal::ZERO, Decimal::ZERO));

    // A turn on another account's slot guards nothing and is not used: the
    // settlement still finds its own account and waits its turn there.
    let other = account("other");
    let (ReserveOutcome::Admitted(second), _) = c.reserve(&other, 20).await else {
        panic!("a hold of 0.20 for another account is denied");
    };
    let wrong = c.g.settle_turn(&c.slot).unwrap();
    let committed =
        c.g.commit_in_turn(
            wrong,
            c.project,
            second.reservation_id,
            &other,
            usd(5),
            None,
        )
        .await
        .unwrap();
    assert!(!committed.replayed);
    assert_eq!(c.dollars(&other).await, (Decimal::new(5, 2), Decimal::ZERO));
    // And the first account was free all along.
    assert!(c.g.settle_turn(&c.slot).is_some());
}

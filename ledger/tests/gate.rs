//! Two gates (as two processes would) racing on one account through one
//! nats-server: the conditional append makes them agree exactly, and each
//! catches up on the other's events.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::Duration;
use futures::StreamExt;
use rust_decimal::Decimal;
use schemas::plan::Plan;
use schemas::{Account, Amounts, ProjectId, ReservationId, Unit};
use std::sync::Arc;
use testkit::nats::NatsServer;
use tollgate_ledger::gate::decide::ReserveRequest;
use tollgate_ledger::gate::ReserveOutcome;
use tollgate_ledger::{Gate, SystemClock};

async fn gate(nats: &NatsServer) -> Gate {
    Gate::new(
        tollgate_ledger::stream::connect(&nats.url()).await.unwrap(),
        Arc::new(SystemClock),
        None,
    )
    .await
    .unwrap()
}

fn request(gate: &Gate, usd: Decimal) -> ReserveRequest {
    ReserveRequest {
        reservation_id: ReservationId::new(),
        model: Some("gpt-4o".into()),
        amounts: Amounts::new()
            .with(Unit::Requests, Decimal::ONE)
            .with(Unit::Usd, usd),
        expires_at: gate.now() + Duration::minutes(5),
        tier: "free".into(),
        flex: None,
    }
}

#[tokio::test]
async fn two_gates_racing_on_one_account_admit_exactly_the_cap() {
    let nats = NatsServer::start().await.unwrap();
    let (a, b) = (gate(&nats).await, gate(&nats).await);
    let plan = Plan::from_yaml("default_tier: free\ntiers:\n  free:\n    limits:\n      - { unit: requests, window: day, cap: 50 }\n      - { unit: usd, window: day, cap: \"3.00\" }\n").unwrap();
    let tier = plan.tier(None).unwrap().1.clone();
    let project = ProjectId::new();
    let account = Account::Identity {
        identity: "hot".into(),
    };
    let outcomes: Vec<(usize, ReserveOutcome)> = futures::stream::iter(0..300usize)
        .map(|i| {
            let g = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (tier, account) = (tier.clone(), account.clone());
            // Amounts from 0.01 to 0.10: the dollar cap binds before the request cap.
            let usd = Decimal::new(1 + (i as i64 % 10), 2);
            async move {
                (
                    i,
                    g.reserve(project, &account, &tier, request(&g, usd), None)
                        .await
                        .unwrap(),
                )
            }
        })
        .buffer_unordered(300)
        .collect()
        .await;
    let mut admitted_usd = Decimal::ZERO;
    let mut admitted = 0;
    for (_, o) in &outcomes {
        if let ReserveOutcome::Admitted(a) = o {
            admitted += 1;
            admitted_usd += a.held.get(&Unit::Usd);
        }
    }
    assert!(
        admitted_usd <= Decimal::from(3),
        "held {admitted_usd} > cap"
    );
    assert!(admitted <= 50);
    // Both gates now see the same account: their views agree with what was admitted.
    for g in [&a, &b] {
        let views = g.view(project, &account, &tier).await.unwrap();
        assert_eq!(views[0].held, Decimal::from(admitted));
        assert_eq!(views[1].held, admitted_usd);
    }
    // A third, cold gate loads the whole history (more than a short read: the consumer path).
    let c = gate(&nats).await;
    let views = c.view(project, &account, &tier).await.unwrap();
    assert!(
        admitted > 32,
        "the history must be long enough to exercise the consumer path"
    );
    assert_eq!(
        (views[0].held, views[1].held),
        (Decimal::from(admitted), admitted_usd)
    );
    // Nearly full: the smallest remaining request either fits exactly or is refused.
    let room = Decimal::from(3) - admitted_usd;
    assert!(
        room < Decimal::new(10, 2) || admitted == 50,
        "a 0.10 request would still have fit: room {room}"
    );
}

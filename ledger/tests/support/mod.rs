//! Helpers shared by the gate's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use chrono::{DateTime, Utc};
use schemas::plan::{Plan, Tier};
use schemas::{Account, Amounts, ProjectId, ReservationId};
use sqlx::PgPool;
use std::sync::Arc;
use testkit::nats::NatsServer;
use tollgate_ledger::gate::decide::ReserveRequest;
use tollgate_ledger::gate::{Admitted, ReserveOutcome};
use tollgate_ledger::{Gate, ManualClock};

/// A gate on `nats` with `clock`, keeping snapshots in `pool` if given.
pub async fn gate(nats: &NatsServer, clock: &ManualClock, pool: Option<&PgPool>) -> Gate {
    Gate::new(
        tollgate_ledger::stream::connect(&nats.url()).await.unwrap(),
        Arc::new(clock.clone()),
        pool.cloned(),
    )
    .await
    .unwrap()
}

/// The default tier of `plan` (YAML).
pub fn tier(plan: &str) -> Tier {
    Plan::from_yaml(plan).unwrap().tier(None).unwrap().1.clone()
}

pub fn account(name: &str) -> Account {
    Account::Identity {
        identity: name.into(),
    }
}

/// A reservation of `amounts` for gpt-4o in tier `free`.
pub fn request(expires_at: DateTime<Utc>, amounts: Amounts) -> ReserveRequest {
    ReserveRequest {
        reservation_id: ReservationId::new(),
        model: Some("gpt-4o".into()),
        amounts,
        expires_at,
        tier: "free".into(),
        flex: None,
    }
}

/// Reserves, and fails the test if it is denied.
pub async fn admit(
    gate: &Gate,
    project: ProjectId,
    who: &Account,
    tier: &Tier,
    req: ReserveRequest,
) -> Admitted {
    match gate.reserve(project, who, tier, req, None).await.unwrap() {
        ReserveOutcome::Admitted(a) => a,
        ReserveOutcome::Denied(d) => panic!("denied: {d:?}"),
    }
}

/// Hold `id` of `who` expires on `first`, and expiring it again on `again`
/// (the same gate, or another process's) does nothing.
pub async fn expires_exactly_once(
    first: &Gate,
    again: &Gate,
    project: ProjectId,
    who: &Account,
    id: ReservationId,
) {
    assert!(first.expire(project, who, id).await.unwrap(), "expired");
    assert!(
        !again.expire(project, who, id).await.unwrap(),
        "expired only once"
    );
}

/// Reserves `req`; if admitted, commits `actual` and returns true.
pub async fn reserve_and_commit(
    gate: &Gate,
    project: ProjectId,
    who: &Account,
    tier: &Tier,
    req: ReserveRequest,
    actual: Amounts,
) -> bool {
    match gate.reserve(project, who, tier, req, None).await.unwrap() {
        ReserveOutcome::Admitted(a) => {
            gate.commit(project, a.reservation_id, Some(who), actual, None)
                .await
                .unwrap();
            true
        }
        ReserveOutcome::Denied(_) => false,
    }
}

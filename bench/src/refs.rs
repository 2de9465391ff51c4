//! In-process reference workers, to split the HTTP numbers by layer:
//! - the gate called directly (everything the ingest handler does below HTTP:
//!   per-account state, the decision, the conditional JetStream append);
//! - a raw JetStream append, the same publish the gate makes (message id,
//!   expected last subject sequence, a real envelope as payload), to a
//!   separate stream so nothing consumes it.

use crate::drive::Pair;
use crate::env::{MODEL, TIER};
use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, context::Publish};
use bytes::Bytes;
use chrono::Duration;
use ledger::gate::decide::ReserveRequest;
use ledger::gate::ReserveOutcome;
use ledger::Gate;
use rust_decimal::Decimal;
use schemas::events::{Committed, Event, HoldRef, Reserved};
use schemas::plan::Tier;
use schemas::{Account, Amounts, Envelope, EventId, ProjectId, ReservationId, Unit};

/// The stream the raw append reference writes to.
pub const REF_STREAM: &str = "TOLLGATE_BENCH_REF";

pub fn held() -> Amounts {
    Amounts::new()
        .with(Unit::Requests, Decimal::ONE)
        .with(Unit::Tokens, Decimal::from(1000))
        .with(Unit::Usd, Decimal::new(1, 2))
}

pub fn actual() -> Amounts {
    Amounts::new()
        .with(Unit::Tokens, Decimal::from(420))
        .with(Unit::Usd, Decimal::new(42, 4))
}

/// A `reserved` and its `committed` event, as the gate would write them.
pub fn event_pair(
    project: ProjectId,
    account: &Account,
    at: chrono::DateTime<chrono::Utc>,
) -> (Envelope, Envelope) {
    let reservation_id = ReservationId::new();
    let envelope = |event, occurred_at| Envelope {
        event_id: EventId::new(),
        schema_version: schemas::SCHEMA_VERSION,
        occurred_at,
        project_id: project,
        account: account.clone(),
        request_id: None,
        event,
    };
    let reserved = Event::Reserved(Reserved {
        reservation_id,
        model: Some(MODEL.into()),
        amounts: held(),
        expires_at: at + Duration::seconds(60),
        tier: Some(TIER.into()),
    });
    let committed = Event::Committed(Committed {
        hold: HoldRef {
            reservation_id,
            reserved_at: at,
            model: Some(MODEL.into()),
            held: held(),
        },
        actual: actual().with(Unit::Requests, Decimal::ONE),
        overage: Amounts::new(),
    });
    (
        envelope(reserved, at),
        envelope(committed, at + Duration::milliseconds(300)),
    )
}

/// Calls the gate directly: reserve, then commit with the actual usage.
pub struct GatePair {
    gate: Gate,
    project: ProjectId,
    account: Account,
    tier: Tier,
    pending: Option<ReservationId>,
}

impl GatePair {
    pub fn new(gate: Gate, project: ProjectId, identity: String, tier: Tier) -> GatePair {
        GatePair {
            gate,
            project,
            account: Account::Identity { identity },
            tier,
            pending: None,
        }
    }
}

/// Reserves [`held`] on `account`, which the bench's caps always admit.
pub async fn reserve_held(
    gate: &Gate,
    project: ProjectId,
    account: &Account,
    tier: &Tier,
) -> anyhow::Result<ReservationId> {
    let req = ReserveRequest {
        reservation_id: ReservationId::new(),
        model: Some(MODEL.into()),
        amounts: held(),
        expires_at: gate.now() + Duration::seconds(60),
        tier: TIER.into(),
        flex: None,
    };
    match gate.reserve(project, account, tier, req, None).await? {
        ReserveOutcome::Admitted(a) => Ok(a.reservation_id),
        ReserveOutcome::Denied(d) => bail!("gate denied: {:?}", d.violation),
    }
}

impl Pair for GatePair {
    async fn first(&mut self) -> anyhow::Result<()> {
        let id = reserve_held(&self.gate, self.project, &self.account, &self.tier).await?;
        self.pending = Some(id);
        Ok(())
    }

    async fn second(&mut self) -> anyhow::Result<()> {
        let id = self.pending.take().context("no reservation to commit")?;
        self.gate
            .commit(self.project, id, Some(&self.account), actual(), None)
            .await?;
        Ok(())
    }
}

/// The reference stream: the ledger stream's settings under another name.
pub async fn ensure_ref_stream(js: &jetstream::Context) -> anyhow::Result<()> {
    let mut config = ledger::stream::ledger_stream_config(1);
    config.name = REF_STREAM.into();
    config.subjects = vec!["tollgate.benchref.>".into()];
    config.description = Some("tollgate-bench reference appends".into());
    js.get_or_create_stream(config)
        .await
        .context("creating the reference stream")?;
    Ok(())
}

/// Two conditional appends per pair on the worker's own subject.
pub struct AppendPair {
    js: jetstream::Context,
    subject: String,
    payloads: (Bytes, Bytes),
    last: u64,
}

impl AppendPair {
    pub fn new(js: jetstream::Context, project: ProjectId, name: &str) -> anyhow::Result<Self> {
        let account = Account::Identity {
            identity: name.into(),
        };
        let (r, c) = event_pair(project, &account, chrono::Utc::now());
        Ok(AppendPair {
            js,
            subject: format!("tollgate.benchref.{name}"),
            payloads: (Bytes::from(r.to_vec()?), Bytes::from(c.to_vec()?)),
            last: 0,
        })
    }

    async fn append(&mut self, payload: Bytes) -> anyhow::Result<()> {
        let publish = Publish::build()
            .payload(payload)
            .expected_last_subject_sequence(self.last);
        let ack = self
            .js
            .send_publish(self.subject.clone(), publish)
            .await?
            .await?;
        self.last = ack.sequence;
        Ok(())
    }
}

impl Pair for AppendPair {
    async fn first(&mut self) -> anyhow::Result<()> {
        self.append(self.payloads.0.clone()).await
    }

    async fn second(&mut self) -> anyhow::Result<()> {
        self.append(self.payloads.1.clone()).await
    }
}

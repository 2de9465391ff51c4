//! Reference for replay: the same stream folded in memory first (counters and
//! balances are plain sums, a reservation's settlement is known before its
//! row is written), then each row written exactly once with batched UNNEST
//! inserts, in one transaction, into copies of the projection tables
//! (`LIKE … INCLUDING ALL`: same keys and indexes, WAL-logged). It shows what
//! a replay that never updates a row twice in its transaction achieves here.

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use projector::deltas::{balance_deltas, usage_deltas};
use rust_decimal::Decimal;
use schemas::events::Event;
use schemas::{subjects, Envelope};
use serde_json::Value;
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

const CHUNK: usize = 10_000;

/// Reads the whole ledger stream as replay does, calling `each` per event.
pub async fn read_stream(
    js: &jetstream::Context,
    mut each: impl FnMut(u64, Envelope),
) -> anyhow::Result<u64> {
    let mut stream = ledger::stream::ensure_ledger_stream(js).await?;
    let last = stream.info().await?.state.last_sequence;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: subjects::ledger_all(),
            ..Default::default()
        })
        .await?;
    let mut chunks = consumer.messages().await?.ready_chunks(CHUNK);
    let (mut seen, mut count) = (0u64, 0u64);
    while seen < last {
        let chunk = tokio::time::timeout(Duration::from_secs(10), chunks.next())
            .await
            .context("stream stalled")?;
        let Some(chunk) = chunk else { break };
        for msg in chunk {
            let msg = msg.map_err(|e| anyhow::anyhow!("read: {e}"))?;
            let seq = msg
                .info()
                .map_err(|e| anyhow::anyhow!("info: {e}"))?
                .stream_sequence;
            each(seq, Envelope::from_slice(&msg.payload)?);
            count += 1;
            seen = seen.max(seq);
        }
    }
    Ok(count)
}

struct Res {
    token: String,
    identity: String,
    model: Option<String>,
    tier: Option<String>,
    status: &'static str,
    held: Value,
    actual: Option<Value>,
    overage: Option<Value>,
    reason: Option<String>,
    reserved_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    settled_at: Option<DateTime<Utc>>,
    reserved_seq: i64,
    settled_seq: Option<i64>,
}

type CounterKey = (Uuid, String, String, &'static str, i64, String, String);
type BalanceKey = (Uuid, String, String, String);

#[derive(Default)]
struct Fold {
    reservations: HashMap<(Uuid, Uuid), Res>,
    counters: HashMap<CounterKey, Decimal>,
    balances: HashMap<BalanceKey, [Decimal; 3]>,
}

fn json(v: &impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

impl Fold {
    fn apply(&mut self, seq: u64, env: Envelope) {
        let p = env.project_id.0;
        let token = subjects::account_token(env.project_id, &env.account);
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        for (k, amount) in usage_deltas(&env) {
            let key = (
                p,
                token.clone(),
                env.identity().to_owned(),
                k.window.as_str(),
                k.period_start,
                k.unit.to_string(),
                k.model.unwrap_or_default(),
            );
            *self.counters.entry(key).or_default() += amount;
        }
        for (unit, d) in balance_deltas(&env) {
            let b = self
                .balances
                .entry((
                    p,
                    token.clone(),
                    env.identity().to_owned(),
                    unit.to_string(),
                ))
                .or_default();
            b[0] += d.committed;
            b[1] += d.held;
            b[2] += d.overage;
        }
        let (hold, status, actual, overage, reason) = match &env.event {
            Event::Reserved(r) => {
                let row = Res {
                    token,
                    identity: env.identity().to_owned(),
                    model: r.model.clone(),
                    tier: r.tier.clone(),
                    status: "open",
                    held: json(&r.amounts),
                    actual: None,
                    overage: None,
                    reason: None,
                    reserved_at: env.occurred_at,
                    expires_at: r.expires_at,
                    settled_at: None,
                    reserved_seq: seq,
                    settled_seq: None,
                };
                self.reservations
                    .entry((p, r.reservation_id.0))
                    .or_insert(row);
                return;
            }
            Event::Committed(c) => (
                &c.hold,
                "committed",
                Some(json(&c.actual)),
                Some(json(&c.overage)),
                None,
            ),
            Event::Released(x) => (&x.hold, "released", None, None, x.reason.clone()),
            Event::Expired(x) => (&x.hold, "expired", None, None, Some("expired".to_owned())),
            Event::UsageRecorded(_) => return,
        };
        if let Some(row) = self.reservations.get_mut(&(p, hold.reservation_id.0)) {
            if row.status == "open" {
                (row.status, row.actual, row.overage, row.reason) =
                    (status, actual, overage, reason);
                (row.settled_at, row.settled_seq) = (Some(env.occurred_at), Some(seq));
            }
        }
    }
}

async fn write(tx: &mut sqlx::PgConnection, fold: Fold) -> anyhow::Result<usize> {
    let mut rows = 0;
    let mut it = fold.reservations.into_iter().peekable();
    while it.peek().is_some() {
        let chunk: Vec<_> = it.by_ref().take(CHUNK).collect();
        rows += chunk.len();
        let (mut p, mut id, mut token, mut identity, mut model, mut tier) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut status, mut held, mut actual, mut overage, mut reason) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut at, mut exp, mut settled, mut rseq, mut sseq) =
            (vec![], vec![], vec![], vec![], vec![]);
        for ((project, reservation), r) in chunk {
            p.push(project);
            id.push(reservation);
            token.push(r.token);
            identity.push(r.identity);
            model.push(r.model);
            tier.push(r.tier);
            status.push(r.status.to_owned());
            held.push(r.held);
            actual.push(r.actual);
            overage.push(r.overage);
            reason.push(r.reason);
            at.push(r.reserved_at);
            exp.push(r.expires_at);
            settled.push(r.settled_at);
            rseq.push(r.reserved_seq);
            sseq.push(r.settled_seq);
        }
        sqlx::query(
            "INSERT INTO ref_reservations (project_id, reservation_id, account_token, identity, model, tier, status, held, actual, overage, reason, reserved_at, expires_at, settled_at, reserved_seq, settled_seq)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::jsonb[], $9::jsonb[], $10::jsonb[], $11::text[], $12::timestamptz[], $13::timestamptz[], $14::timestamptz[], $15::int8[], $16::int8[])",
        )
        .bind(p).bind(id).bind(token).bind(identity).bind(model).bind(tier).bind(status).bind(held)
        .bind(actual).bind(overage).bind(reason).bind(at).bind(exp).bind(settled).bind(rseq).bind(sseq)
        .execute(&mut *tx)
        .await?;
    }
    let mut it = fold.counters.into_iter().peekable();
    while it.peek().is_some() {
        let chunk: Vec<_> = it.by_ref().take(CHUNK).collect();
        rows += chunk.len();
        let (mut p, mut a, mut i, mut w, mut s, mut u, mut m, mut v) = (
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
        );
        for ((project, token, identity, window, start, unit, model), amount) in chunk {
            p.push(project);
            a.push(token);
            i.push(identity);
            w.push(window.to_owned());
            s.push(DateTime::<Utc>::from_timestamp(start, 0).unwrap_or_default());
            u.push(unit);
            m.push(model);
            v.push(amount);
        }
        sqlx::query(
            "INSERT INTO ref_usage_counters (project_id, account_token, identity, window_kind, period_start, unit, model, amount)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::text[], $8::numeric[])",
        )
        .bind(p).bind(a).bind(i).bind(w).bind(s).bind(u).bind(m).bind(v)
        .execute(&mut *tx)
        .await?;
    }
    let mut it = fold.balances.into_iter().peekable();
    while it.peek().is_some() {
        let chunk: Vec<_> = it.by_ref().take(CHUNK).collect();
        rows += chunk.len();
        let (mut p, mut a, mut i, mut u, mut c, mut h, mut o) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for ((project, token, identity, unit), [committed, held, overage]) in chunk {
            p.push(project);
            a.push(token);
            i.push(identity);
            u.push(unit);
            c.push(committed);
            h.push(held);
            o.push(overage);
        }
        sqlx::query(
            "INSERT INTO ref_account_balances (project_id, account_token, identity, unit, committed, held, overage)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::numeric[], $6::numeric[], $7::numeric[])",
        )
        .bind(p).bind(a).bind(i).bind(u).bind(c).bind(h).bind(o)
        .execute(&mut *tx)
        .await?;
    }
    Ok(rows)
}

/// What the reference did.
#[derive(Clone, Debug, Default)]
pub struct FoldReport {
    pub events: u64,
    pub rows: usize,
    /// Reading, decoding and folding.
    pub fold: Duration,
    /// Writing every row and committing.
    pub write: Duration,
}

/// Reads, folds and writes each row once.
pub async fn fold_then_write(js: &jetstream::Context, pool: &PgPool) -> anyhow::Result<FoldReport> {
    for table in ["reservations", "usage_counters", "account_balances"] {
        sqlx::raw_sql(&format!(
            "DROP TABLE IF EXISTS ref_{table}; CREATE TABLE ref_{table} (LIKE {table} INCLUDING ALL)"
        ))
        .execute(pool)
        .await?;
    }
    let started = Instant::now();
    let mut fold = Fold::default();
    let events = read_stream(js, |seq, env| fold.apply(seq, env)).await?;
    let fold_time = started.elapsed();
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    let rows = write(&mut tx, fold).await?;
    tx.commit().await?;
    Ok(FoldReport {
        events,
        rows,
        fold: fold_time,
        write: started.elapsed(),
    })
}

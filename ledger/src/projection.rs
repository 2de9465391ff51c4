//! The ledger's PostgreSQL projection: one row per reservation (status,
//! held, actual) and each account's lifetime balance per unit. Written by
//! the ledger's durable consumer through [`projector::consumer::apply_batch`],
//! so each event takes effect exactly once.

use futures::future::BoxFuture;
use projector::consumer::{Decoded, Projection};
use projector::deltas::balance_deltas;
use rust_decimal::Decimal;
use schemas::events::Event;
use schemas::subjects::{account_token, LEDGER_CONSUMER};
use sqlx::PgConnection;
use std::collections::HashMap;
use uuid::Uuid;

pub struct LedgerProjection;

/// (project, account token, identity, unit) of one balance row.
type BalanceKey = (Uuid, String, String, String);

fn json(v: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// Columns of new `reservations` rows, for one UNNEST insert.
#[derive(Default)]
struct ReservedRows {
    project: Vec<Uuid>,
    id: Vec<Uuid>,
    token: Vec<String>,
    identity: Vec<String>,
    model: Vec<Option<String>>,
    tier: Vec<Option<String>>,
    held: Vec<serde_json::Value>,
}

async fn insert_reservations(conn: &mut PgConnection, batch: &[Decoded]) -> sqlx::Result<()> {
    let mut cols = ReservedRows::default();
    let (mut at, mut exp, mut seq) = (Vec::new(), Vec::new(), Vec::new());
    for d in batch {
        let env = &d.envelope;
        if let Event::Reserved(r) = &env.event {
            cols.project.push(env.project_id.0);
            cols.id.push(r.reservation_id.0);
            cols.token.push(account_token(env.project_id, &env.account));
            cols.identity.push(env.identity().to_owned());
            cols.model.push(r.model.clone());
            cols.tier.push(r.tier.clone());
            cols.held.push(json(&r.amounts));
            at.push(env.occurred_at);
            exp.push(r.expires_at);
            seq.push(i64::try_from(d.seq).unwrap_or(i64::MAX));
        }
    }
    if cols.project.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO reservations (project_id, reservation_id, account_token, identity, model, tier, held, reserved_at, expires_at, reserved_seq, status)
         SELECT p, r, a, i, m, t, h, ra, ea, s, 'open'
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[], $8::timestamptz[], $9::timestamptz[], $10::int8[])
              AS u(p, r, a, i, m, t, h, ra, ea, s)
         ON CONFLICT (project_id, reservation_id) DO NOTHING",
    )
    .bind(cols.project)
    .bind(cols.id)
    .bind(cols.token)
    .bind(cols.identity)
    .bind(cols.model)
    .bind(cols.tier)
    .bind(cols.held)
    .bind(at)
    .bind(exp)
    .bind(seq)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn settle_reservations(conn: &mut PgConnection, batch: &[Decoded]) -> sqlx::Result<()> {
    let (mut p, mut r, mut status, mut actual, mut overage, mut reason, mut at, mut seq) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for d in batch {
        let env = &d.envelope;
        let (hold, st, act, over, why) = match &env.event {
            Event::Committed(c) => (
                &c.hold,
                "committed",
                Some(json(&c.actual)),
                Some(json(&c.overage)),
                None,
            ),
            Event::Released(x) => (&x.hold, "released", None, None, x.reason.clone()),
            Event::Expired(x) => (&x.hold, "expired", None, None, Some("expired".to_owned())),
            Event::Reserved(_) | Event::UsageRecorded(_) => continue,
        };
        p.push(env.project_id.0);
        r.push(hold.reservation_id.0);
        status.push(st.to_owned());
        actual.push(act);
        overage.push(over);
        reason.push(why);
        at.push(env.occurred_at);
        seq.push(i64::try_from(d.seq).unwrap_or(i64::MAX));
    }
    if p.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE reservations r SET status = u.st, actual = u.act, overage = u.ov, reason = u.why, settled_at = u.at, settled_seq = u.s
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::jsonb[], $5::jsonb[], $6::text[], $7::timestamptz[], $8::int8[])
              AS u(p, rid, st, act, ov, why, at, s)
         WHERE r.project_id = u.p AND r.reservation_id = u.rid AND r.status = 'open'",
    )
    .bind(p)
    .bind(r)
    .bind(status)
    .bind(actual)
    .bind(overage)
    .bind(reason)
    .bind(at)
    .bind(seq)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn update_balances(conn: &mut PgConnection, batch: &[Decoded]) -> sqlx::Result<()> {
    let mut sums: HashMap<BalanceKey, (Decimal, Decimal, Decimal)> = HashMap::new();
    for d in batch {
        let env = &d.envelope;
        let token = account_token(env.project_id, &env.account);
        for (unit, delta) in balance_deltas(env) {
            let e = sums
                .entry((
                    env.project_id.0,
                    token.clone(),
                    env.identity().to_owned(),
                    unit.to_string(),
                ))
                .or_default();
            e.0 += delta.committed;
            e.1 += delta.held;
            e.2 += delta.overage;
        }
    }
    if sums.is_empty() {
        return Ok(());
    }
    let (mut p, mut a, mut i, mut u, mut c, mut h, mut o) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for ((project, token, identity, unit), (committed, held, overage)) in sums {
        p.push(project);
        a.push(token);
        i.push(identity);
        u.push(unit);
        c.push(committed);
        h.push(held);
        o.push(overage);
    }
    sqlx::query(
        "INSERT INTO account_balances AS b (project_id, account_token, identity, unit, committed, held, overage)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::numeric[], $6::numeric[], $7::numeric[])
         ON CONFLICT (project_id, account_token, unit) DO UPDATE
         SET committed = b.committed + EXCLUDED.committed, held = b.held + EXCLUDED.held, overage = b.overage + EXCLUDED.overage",
    )
    .bind(p)
    .bind(a)
    .bind(i)
    .bind(u)
    .bind(c)
    .bind(h)
    .bind(o)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Projection for LedgerProjection {
    fn name(&self) -> &'static str {
        LEDGER_CONSUMER
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        batch: &'a [Decoded],
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(async move {
            // Inserts first, so a hold reserved and settled within one batch is settled.
            insert_reservations(conn, batch).await?;
            settle_reservations(conn, batch).await?;
            update_balances(conn, batch).await
        })
    }

    fn reset<'a>(&'a self, conn: &'a mut PgConnection) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(async move {
            sqlx::query("TRUNCATE reservations, account_balances")
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }
}

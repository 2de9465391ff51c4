//! The projector's PostgreSQL projection: per-period usage counters for
//! reporting and dashboards (`usage_counters`). Each batch is folded in
//! memory into one increment per counter and written with one statement.

use crate::consumer::{Decoded, Projection};
use crate::deltas::usage_deltas;
use crate::pg_text::pg_string;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use rust_decimal::Decimal;
use schemas::subjects::{account_token, PROJECTOR_CONSUMER};
use sqlx::PgConnection;
use std::collections::HashMap;
use uuid::Uuid;

/// `usage_counters`, fed by the projector's durable consumer.
pub struct CountersProjection;

type Key = (Uuid, String, String, &'static str, i64, String, String);

impl Projection for CountersProjection {
    fn name(&self) -> &'static str {
        PROJECTOR_CONSUMER
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        batch: &'a [Decoded],
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(async move {
            let mut sums: HashMap<Key, Decimal> = HashMap::new();
            for d in batch {
                let env = &d.envelope;
                let token = account_token(env.project_id, &env.account);
                for (k, amount) in usage_deltas(env) {
                    let key = (
                        env.project_id.0,
                        token.clone(),
                        pg_string(env.identity()),
                        k.window.as_str(),
                        k.period_start,
                        k.unit.to_string(),
                        // As stored: two names that differ only where a NUL
                        // was replaced must add to one row, not conflict.
                        k.model.as_deref().map(pg_string).unwrap_or_default(),
                    );
                    *sums.entry(key).or_default() += amount;
                }
            }
            if sums.is_empty() {
                return Ok(());
            }
            let n = sums.len();
            let (mut p, mut a, mut i, mut w, mut s, mut u, mut m, mut v) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for ((project, token, identity, window, start, unit, model), amount) in sums {
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
                "INSERT INTO usage_counters AS c (project_id, account_token, identity, window_kind, period_start, unit, model, amount)
                 SELECT p, a, i, w, s, u, m, trim_scale(v)
                 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::text[], $8::numeric[]) AS t(p, a, i, w, s, u, m, v)
                 ON CONFLICT (project_id, account_token, window_kind, period_start, unit, model)
                 DO UPDATE SET amount = trim_scale(c.amount + EXCLUDED.amount)",
            )
            .bind(p)
            .bind(a)
            .bind(i)
            .bind(w)
            .bind(s)
            .bind(u)
            .bind(m)
            .bind(v)
            .execute(&mut *conn)
            .await?;
            Ok(())
        })
    }

    fn reset<'a>(&'a self, conn: &'a mut PgConnection) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(async move {
            sqlx::query("TRUNCATE usage_counters")
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
    }
}

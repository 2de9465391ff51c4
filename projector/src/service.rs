//! The projector's PostgreSQL projection: per-period usage counters for
//! reporting and dashboards (`usage_counters`). Each batch is folded in
//! memory into one increment per counter, as `tollgate replay` folds the
//! whole stream ([`CountersRebuild`]), and written with one statement.

use crate::consumer::{Decoded, Projection};
use crate::deltas::attributed_usage;
use crate::pg_text::pg_string;
use crate::rebuild::{Accounts, CountersRebuild};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use rust_decimal::Decimal;
use schemas::subjects::PROJECTOR_CONSUMER;
use sqlx::PgConnection;
use uuid::Uuid;

/// `usage_counters`, fed by the projector's durable consumer.
pub struct CountersProjection;

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
            let mut accounts = Accounts::default();
            let mut sums = CountersRebuild::default();
            for d in batch {
                if attributed_usage(&d.envelope).is_some() {
                    sums.add(accounts.id(&d.envelope), &d.envelope);
                }
            }
            #[allow(clippy::type_complexity)] // the bind arrays, one per column
            let (mut p, mut a, mut i, mut w, mut s, mut u, mut m, mut v): (
                Vec<Uuid>,
                Vec<String>,
                Vec<String>,
                Vec<&str>,
                Vec<DateTime<Utc>>,
                Vec<String>,
                Vec<String>,
                Vec<Decimal>,
            ) = Default::default();
            sums.for_each_counter(|account, model, window, start, unit, amount| {
                let row = accounts.get(account);
                p.push(row.project);
                a.push(row.token.clone());
                i.push(pg_string(&row.identity));
                w.push(window.as_str());
                s.push(DateTime::<Utc>::from_timestamp(start, 0).unwrap_or_default());
                u.push(unit.as_str().to_owned());
                m.push(model.to_owned());
                v.push(amount);
            });
            if p.is_empty() {
                return Ok(());
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

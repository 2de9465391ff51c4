//! A checksum of every balance and counter, for comparing live projections
//! with a replay (invariant 3). Decimals are normalised so `0.50` and `0.5`
//! hash alike.

use futures::TryStreamExt;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checksum {
    pub balances: u64,
    pub counters: u64,
    pub sha256: String,
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sha256:{} ({} balances, {} counters)",
            self.sha256, self.balances, self.counters
        )
    }
}

fn n(d: Decimal) -> String {
    d.normalize().to_string()
}

pub async fn checksum(pool: &PgPool) -> sqlx::Result<Checksum> {
    let mut h = Sha256::new();
    let (mut balances, mut counters) = (0u64, 0u64);
    let mut rows = sqlx::query(
        "SELECT project_id::text, account_token, unit, committed, held, overage FROM account_balances
         WHERE committed <> 0 OR held <> 0 OR overage <> 0 ORDER BY 1, 2, 3",
    )
    .fetch(pool);
    while let Some(row) = rows.try_next().await? {
        let line = format!(
            "b|{}|{}|{}|{}|{}|{}\n",
            row.try_get::<String, _>(0)?,
            row.try_get::<String, _>(1)?,
            row.try_get::<String, _>(2)?,
            n(row.try_get(3)?),
            n(row.try_get(4)?),
            n(row.try_get(5)?)
        );
        h.update(line.as_bytes());
        balances += 1;
    }
    drop(rows);
    let mut rows = sqlx::query(
        "SELECT project_id::text, account_token, window_kind, extract(epoch from period_start)::bigint, unit, model, amount
         FROM usage_counters WHERE amount <> 0 ORDER BY 1, 2, 3, 4, 5, 6",
    )
    .fetch(pool);
    while let Some(row) = rows.try_next().await? {
        let line = format!(
            "c|{}|{}|{}|{}|{}|{}|{}\n",
            row.try_get::<String, _>(0)?,
            row.try_get::<String, _>(1)?,
            row.try_get::<String, _>(2)?,
            row.try_get::<i64, _>(3)?,
            row.try_get::<String, _>(4)?,
            row.try_get::<String, _>(5)?,
            n(row.try_get(6)?)
        );
        h.update(line.as_bytes());
        counters += 1;
    }
    Ok(Checksum {
        balances,
        counters,
        sha256: hex::encode(h.finalize()),
    })
}

//! The ledger's PostgreSQL projection: one row per reservation (status,
//! held, actual) and each account's lifetime balance per unit. Written by
//! the ledger's durable consumer through [`projector::consumer::apply_batch`],
//! so each event takes effect exactly once. Text taken from events is
//! stored through [`pg_string`], as `tollgate replay`'s COPY rows store it.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use projector::consumer::{Decoded, Projection};
use projector::copy::{copy_into, CopyRows};
use projector::deltas::balance_deltas;
use projector::pg_text::pg_string;
use projector::rebuild::Accounts;
use rust_decimal::Decimal;
use schemas::events::{Envelope, Event, HoldRef};
use schemas::subjects::LEDGER_CONSUMER;
use schemas::{Amounts, Unit};
use sqlx::types::Json;
use sqlx::PgConnection;
use std::collections::HashMap;
use uuid::Uuid;

pub struct LedgerProjection;

/// How a reservation was settled, as its row records it (borrowed from the event).
#[derive(Clone, Copy)]
struct Settled<'a> {
    status: &'static str,
    actual: Option<&'a Amounts>,
    overage: Option<&'a Amounts>,
    reason: Option<&'a str>,
    at: DateTime<Utc>,
    seq: u64,
}

/// The hold an event settles and how, or `None` for `reserved` and `usage_recorded`.
fn settled(seq: u64, env: &Envelope) -> Option<(&HoldRef, Settled<'_>)> {
    let (hold, status, actual, overage, reason) = match &env.event {
        Event::Committed(c) => (
            &c.hold,
            "committed",
            Some(&c.actual),
            Some(&c.overage),
            None,
        ),
        Event::Released(x) => (&x.hold, "released", None, None, x.reason.as_deref()),
        Event::Expired(x) => (&x.hold, "expired", None, None, Some("expired")),
        Event::Reserved(_) | Event::UsageRecorded(_) => return None,
    };
    let at = env.occurred_at;
    Some((
        hold,
        Settled {
            status,
            actual,
            overage,
            reason,
            at,
            seq,
        },
    ))
}

/// Adds what `env` changes in its account's balances to `sums` (committed,
/// held and overage per account and unit).
fn add_balance_deltas(sums: &mut HashMap<(u32, Unit), [Decimal; 3]>, account: u32, env: &Envelope) {
    for (unit, d) in balance_deltas(env) {
        let b = sums.entry((account, unit)).or_default();
        b[0] += d.committed;
        b[1] += d.held;
        b[2] += d.overage;
    }
}

fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// A reservation first reserved in this batch, settled in it or not.
struct NewRow<'a> {
    env: &'a Envelope,
    reserved: &'a schemas::events::Reserved,
    account: u32,
    seq: u64,
    settled: Option<Settled<'a>>,
}

impl<'a> NewRow<'a> {
    fn row(&self) -> ReservationRow<'a> {
        ReservationRow {
            account: self.account,
            model: self.reserved.model.as_deref(),
            tier: self.reserved.tier.as_deref(),
            held: &self.reserved.amounts,
            reserved_at: self.env.occurred_at,
            expires_at: self.reserved.expires_at,
            reserved_seq: self.seq,
        }
    }
}

/// Applies a batch's reservation events: an UPDATE of the rows earlier
/// batches created that this one settles, and one COPY of the rows it
/// creates (or, if one of those exists already, an INSERT that skips it and
/// an UPDATE settling it if it is still open). Under load a hold is usually
/// reserved and settled within one batch; folding the batch first writes
/// such a row once, already settled, instead of inserting it and then
/// updating it. The outcome is the same as applying the events one by one:
/// the first `reserved` of an id creates its row, and only the first
/// settlement of an open row counts.
async fn write_reservations(
    conn: &mut PgConnection,
    batch: &[Decoded],
    accounts: &mut Accounts,
) -> sqlx::Result<()> {
    let mut new_rows: Vec<NewRow<'_>> = Vec::new();
    let mut new_index: HashMap<(Uuid, Uuid), usize> = HashMap::new();
    // Settlements of rows from earlier batches: the first per id.
    let mut updates: Vec<((Uuid, Uuid), Settled<'_>)> = Vec::new();
    let mut updated: std::collections::HashSet<(Uuid, Uuid)> = std::collections::HashSet::new();
    for d in batch {
        let project = d.envelope.project_id.0;
        if let Event::Reserved(r) = &d.envelope.event {
            let key = (project, r.reservation_id.0);
            if let std::collections::hash_map::Entry::Vacant(slot) = new_index.entry(key) {
                slot.insert(new_rows.len());
                new_rows.push(NewRow {
                    env: &d.envelope,
                    reserved: r,
                    account: accounts.id(&d.envelope),
                    seq: d.seq,
                    settled: None,
                });
            }
            continue;
        }
        let Some((hold, settled)) = settled(d.seq, &d.envelope) else {
            continue;
        };
        let key = (project, hold.reservation_id.0);
        match new_index.get(&key) {
            Some(&i) => {
                if new_rows[i].settled.is_none() {
                    new_rows[i].settled = Some(settled);
                }
            }
            None => {
                if updated.insert(key) {
                    updates.push((key, settled));
                }
            }
        }
    }
    // Settlements of earlier rows first: a `reserved` later in the batch
    // must not be what they settle.
    settle_rows(conn, updates).await?;
    if new_rows.is_empty() {
        return Ok(());
    }
    if copy_rows(conn, &new_rows, accounts).await? {
        return Ok(());
    }
    let inserted: Vec<(Uuid, Uuid)> = insert_rows(conn, &new_rows, accounts).await?;
    if inserted.len() < new_rows.len() {
        // An id that already had a row (a repeated `reserved`): its
        // settlement in this batch applies to that row, if still open.
        let inserted: std::collections::HashSet<(Uuid, Uuid)> = inserted.into_iter().collect();
        let late: Vec<_> = new_rows
            .iter()
            .filter_map(|row| {
                let key = (row.env.project_id.0, row.reserved.reservation_id.0);
                match (&row.settled, inserted.contains(&key)) {
                    (Some(settled), false) => Some((key, *settled)),
                    _ => None,
                }
            })
            .collect();
        settle_rows(conn, late).await?;
    }
    Ok(())
}

/// A reservation id the batch reserves was reserved before (a repeated
/// `reserved`, which the stream may hold): COPY cannot skip its row.
const UNIQUE_VIOLATION: &str = "23505";

/// Writes `rows` with COPY, cheaper for PostgreSQL than an INSERT (about
/// half the time per row), if none of them exists yet. Returns false, with
/// nothing written, if one does; [`insert_rows`] then skips those.
async fn copy_rows(
    conn: &mut PgConnection,
    rows: &[NewRow<'_>],
    accounts: &Accounts,
) -> sqlx::Result<bool> {
    let mut data = CopyRows::new();
    for row in rows {
        let id = row.reserved.reservation_id.0;
        write_reservation(&mut data, accounts, id, &row.row(), row.settled);
    }
    sqlx::query("SAVEPOINT reservations_copy")
        .execute(&mut *conn)
        .await?;
    match copy_into(conn, "reservations", RESERVATION_COLUMNS, data.take()).await {
        Ok(()) => {
            sqlx::query("RELEASE SAVEPOINT reservations_copy")
                .execute(&mut *conn)
                .await?;
            Ok(true)
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNIQUE_VIOLATION) => {
            sqlx::query("ROLLBACK TO SAVEPOINT reservations_copy")
                .execute(&mut *conn)
                .await?;
            sqlx::query("RELEASE SAVEPOINT reservations_copy")
                .execute(&mut *conn)
                .await?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

async fn insert_rows(
    conn: &mut PgConnection,
    rows: &[NewRow<'_>],
    accounts: &Accounts,
) -> sqlx::Result<Vec<(Uuid, Uuid)>> {
    let n = rows.len();
    let mut project = Vec::with_capacity(n);
    let mut id = Vec::with_capacity(n);
    let mut token = Vec::with_capacity(n);
    let mut identity = Vec::with_capacity(n);
    let mut model = Vec::with_capacity(n);
    let mut tier = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut held = Vec::with_capacity(n);
    let mut actual = Vec::with_capacity(n);
    let mut overage = Vec::with_capacity(n);
    let mut reason = Vec::with_capacity(n);
    let mut reserved_at = Vec::with_capacity(n);
    let mut expires_at = Vec::with_capacity(n);
    let mut settled_at = Vec::with_capacity(n);
    let mut reserved_seq = Vec::with_capacity(n);
    let mut settled_seq = Vec::with_capacity(n);
    for row in rows {
        let (env, r) = (row.env, row.reserved);
        let a = accounts.get(row.account);
        project.push(env.project_id.0);
        id.push(r.reservation_id.0);
        token.push(a.token.clone());
        identity.push(pg_string(&a.identity));
        model.push(r.model.as_deref().map(pg_string));
        tier.push(r.tier.as_deref().map(pg_string));
        held.push(Json(&r.amounts));
        reserved_at.push(env.occurred_at);
        expires_at.push(r.expires_at);
        reserved_seq.push(seq_i64(row.seq));
        let s = row.settled.as_ref();
        status.push(s.map_or("open", |s| s.status));
        actual.push(s.and_then(|s| s.actual).map(Json));
        overage.push(s.and_then(|s| s.overage).map(Json));
        reason.push(s.and_then(|s| s.reason).map(pg_string));
        settled_at.push(s.map(|s| s.at));
        settled_seq.push(s.map(|s| seq_i64(s.seq)));
    }
    sqlx::query_as(
        "INSERT INTO reservations (project_id, reservation_id, account_token, identity, model, tier, status, held, actual, overage, reason, reserved_at, expires_at, settled_at, reserved_seq, settled_seq)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::jsonb[], $9::jsonb[], $10::jsonb[], $11::text[], $12::timestamptz[], $13::timestamptz[], $14::timestamptz[], $15::int8[], $16::int8[])
         ON CONFLICT (project_id, reservation_id) DO NOTHING
         RETURNING project_id, reservation_id",
    )
    .bind(project)
    .bind(id)
    .bind(token)
    .bind(identity)
    .bind(model)
    .bind(tier)
    .bind(status)
    .bind(held)
    .bind(actual)
    .bind(overage)
    .bind(reason)
    .bind(reserved_at)
    .bind(expires_at)
    .bind(settled_at)
    .bind(reserved_seq)
    .bind(settled_seq)
    .fetch_all(&mut *conn)
    .await
}

async fn settle_rows(
    conn: &mut PgConnection,
    updates: Vec<((Uuid, Uuid), Settled<'_>)>,
) -> sqlx::Result<()> {
    if updates.is_empty() {
        return Ok(());
    }
    let n = updates.len();
    let (mut p, mut r, mut status, mut actual, mut overage, mut reason, mut at, mut seq) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for ((project, id), s) in updates {
        p.push(project);
        r.push(id);
        status.push(s.status);
        actual.push(s.actual.map(Json));
        overage.push(s.overage.map(Json));
        reason.push(s.reason.map(pg_string));
        at.push(s.at);
        seq.push(seq_i64(s.seq));
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

async fn update_balances(
    conn: &mut PgConnection,
    batch: &[Decoded],
    accounts: &mut Accounts,
) -> sqlx::Result<()> {
    let mut sums: HashMap<(u32, Unit), [Decimal; 3]> = HashMap::new();
    for d in batch {
        let account = accounts.id(&d.envelope);
        add_balance_deltas(&mut sums, account, &d.envelope);
    }
    if sums.is_empty() {
        return Ok(());
    }
    #[allow(clippy::type_complexity)] // the bind arrays, one per column
    let (mut p, mut a, mut i, mut u, mut c, mut h, mut o): (
        Vec<Uuid>,
        Vec<String>,
        Vec<String>,
        Vec<String>,
        Vec<Decimal>,
        Vec<Decimal>,
        Vec<Decimal>,
    ) = Default::default();
    for ((account, unit), [committed, held, overage]) in sums {
        let row = accounts.get(account);
        p.push(row.project);
        a.push(row.token.clone());
        i.push(pg_string(&row.identity));
        u.push(unit.as_str().to_owned());
        c.push(committed);
        h.push(held);
        o.push(overage);
    }
    sqlx::query(
        "INSERT INTO account_balances AS b (project_id, account_token, identity, unit, committed, held, overage)
         SELECT p, a, i, u, trim_scale(c), trim_scale(h), trim_scale(o)
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::numeric[], $6::numeric[], $7::numeric[]) AS t(p, a, i, u, c, h, o)
         ON CONFLICT (project_id, account_token, unit) DO UPDATE
         SET committed = trim_scale(b.committed + EXCLUDED.committed), held = trim_scale(b.held + EXCLUDED.held), overage = trim_scale(b.overage + EXCLUDED.overage)",
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
            let mut accounts = Accounts::default();
            write_reservations(conn, batch, &mut accounts).await?;
            update_balances(conn, batch, &mut accounts).await
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

/// The ledger projection rebuilt in memory for `tollgate replay`: a
/// reservation's row is written once, when it is settled (or at the end while
/// still open); balances are summed and written at the end.
#[derive(Default)]
pub struct LedgerRebuild {
    open: HashMap<(Uuid, Uuid), OpenRow>,
    /// Settled reservations: a later event for one of them changes nothing,
    /// as the live projection's `status = 'open'` condition ensures.
    settled: std::collections::HashSet<(Uuid, Uuid)>,
    balances: HashMap<(u32, Unit), [Decimal; 3]>,
    /// Rows of settled reservations not yet handed to COPY.
    pub final_rows: CopyRows,
}

struct OpenRow {
    account: u32,
    model: Option<String>,
    tier: Option<String>,
    held: Amounts,
    reserved_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    reserved_seq: u64,
}

impl OpenRow {
    fn row(&self) -> ReservationRow<'_> {
        ReservationRow {
            account: self.account,
            model: self.model.as_deref(),
            tier: self.tier.as_deref(),
            held: &self.held,
            reserved_at: self.reserved_at,
            expires_at: self.expires_at,
            reserved_seq: self.reserved_seq,
        }
    }
}

/// What a reservation's row says about its `reserved` event.
struct ReservationRow<'a> {
    account: u32,
    model: Option<&'a str>,
    tier: Option<&'a str>,
    held: &'a Amounts,
    reserved_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    reserved_seq: u64,
}

pub const RESERVATION_COLUMNS: &str = "project_id, reservation_id, account_token, identity, model, tier, status, held, actual, overage, reason, reserved_at, expires_at, settled_at, reserved_seq, settled_seq";
pub const BALANCE_COLUMNS: &str =
    "project_id, account_token, identity, unit, committed, held, overage";

impl LedgerRebuild {
    /// Folds one event (stream order) of account `account`.
    pub fn add(&mut self, accounts: &Accounts, account: u32, seq: u64, env: &Envelope) {
        add_balance_deltas(&mut self.balances, account, env);
        let project = env.project_id.0;
        if let Event::Reserved(r) = &env.event {
            let key = (project, r.reservation_id.0);
            if !self.settled.contains(&key) {
                self.open.entry(key).or_insert_with(|| OpenRow {
                    account,
                    model: r.model.clone(),
                    tier: r.tier.clone(),
                    held: r.amounts.clone(),
                    reserved_at: env.occurred_at,
                    expires_at: r.expires_at,
                    reserved_seq: seq,
                });
            }
            return;
        }
        let Some((hold, settled)) = settled(seq, env) else {
            return;
        };
        let key = (project, hold.reservation_id.0);
        if let Some(row) = self.open.remove(&key) {
            self.settled.insert(key);
            write_reservation(
                &mut self.final_rows,
                accounts,
                key.1,
                &row.row(),
                Some(settled),
            );
        }
    }

    /// The open reservations' rows and every balance row, in COPY text format.
    pub fn finish(mut self, accounts: &Accounts) -> (CopyRows, CopyRows) {
        let mut open = std::mem::take(&mut self.final_rows);
        for ((_, id), row) in &self.open {
            write_reservation(&mut open, accounts, *id, &row.row(), None);
        }
        let mut balances = CopyRows::new();
        for ((account, unit), [committed, held, overage]) in self.balances {
            let a = accounts.get(account);
            balances
                .display(a.project)
                .text(&a.token)
                .text(&a.identity)
                .text(unit.as_str())
                .decimal(committed)
                .decimal(held)
                .decimal(overage);
            balances.end_row();
        }
        (open, balances)
    }
}

fn write_reservation(
    rows: &mut CopyRows,
    accounts: &Accounts,
    id: Uuid,
    row: &ReservationRow<'_>,
    settled: Option<Settled<'_>>,
) {
    let a = accounts.get(row.account);
    rows.display(a.project)
        .display(id)
        .text(&a.token)
        .text(&a.identity)
        .opt_text(row.model)
        .opt_text(row.tier)
        .text(settled.as_ref().map_or("open", |s| s.status))
        .json(row.held);
    match &settled.as_ref().and_then(|s| s.actual) {
        Some(actual) => rows.json(actual),
        None => rows.null(),
    };
    match &settled.as_ref().and_then(|s| s.overage) {
        Some(overage) => rows.json(overage),
        None => rows.null(),
    };
    rows.opt_text(settled.as_ref().and_then(|s| s.reason))
        .timestamp(row.reserved_at)
        .timestamp(row.expires_at)
        .opt_timestamp(settled.as_ref().map(|s| s.at))
        .display(row.reserved_seq);
    match settled {
        Some(s) => rows.display(s.seq),
        None => rows.null(),
    };
    rows.end_row();
}

//! Rebuilding projections from the whole stream (`tollgate replay`): the
//! stream is folded in memory and every row is written once with `COPY`,
//! instead of being updated once per batch. The results equal what the live
//! consumers write (checked by the replay-equality tests).

use crate::copy::CopyRows;
use crate::deltas::attributed_usage;
use crate::pg_text::pg_text;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use schemas::events::Envelope;
use schemas::subjects::account_token;
use schemas::{period, Unit, Window};
use std::collections::HashMap;
use uuid::Uuid;

/// An account's identifying columns, computed once per account.
pub struct AccountRow {
    pub project: Uuid,
    pub token: String,
    pub identity: String,
}

/// Accounts met during a rebuild, numbered in order of appearance.
#[derive(Default)]
pub struct Accounts {
    by_project: HashMap<Uuid, HashMap<String, u32>>,
    rows: Vec<AccountRow>,
}

impl Accounts {
    /// The number of the event's account.
    pub fn id(&mut self, env: &Envelope) -> u32 {
        let identities = self.by_project.entry(env.project_id.0).or_default();
        if let Some(&id) = identities.get(env.identity()) {
            return id;
        }
        let id = u32::try_from(self.rows.len()).unwrap_or(u32::MAX);
        self.rows.push(AccountRow {
            project: env.project_id.0,
            token: account_token(env.project_id, &env.account),
            identity: env.identity().to_owned(),
        });
        identities.insert(env.identity().to_owned(), id);
        id
    }

    pub fn get(&self, id: u32) -> &AccountRow {
        &self.rows[id as usize]
    }
}

/// `usage_counters` summed in memory, for a rebuild (the whole stream) or
/// a live batch. Usage is summed per account, model, unit and minute; the
/// other windows are unions of whole UTC minutes, so they are rolled up
/// from the minutes at the end (one hash update per unit of an event rather
/// than one per window).
#[derive(Default)]
pub struct CountersRebuild {
    models: HashMap<String, u32>,
    model_names: Vec<String>,
    minutes: HashMap<(u32, u32, i64, Unit), Decimal>,
}

pub const COUNTER_COLUMNS: &str =
    "project_id, account_token, identity, window_kind, period_start, unit, model, amount";

impl CountersRebuild {
    /// Folds one event of account `account` (see [`crate::deltas::usage_deltas`]).
    pub fn add(&mut self, account: u32, env: &Envelope) {
        let Some((at, model, amounts)) = attributed_usage(env) else {
            return;
        };
        // The live projection keys a counter without model by '', and by
        // the model as stored (a NUL replaced), so two names that store
        // alike share a row there too.
        let name = pg_text(model.as_deref().unwrap_or(""));
        let name: &str = &name;
        let model = match self.models.get(name) {
            Some(&id) => id,
            None => {
                let id = u32::try_from(self.model_names.len()).unwrap_or(u32::MAX);
                self.models.insert(name.to_owned(), id);
                self.model_names.push(name.to_owned());
                id
            }
        };
        let minute = period(Window::Minute, at).key();
        for (unit, amount) in amounts.iter() {
            if amount.is_zero() {
                continue;
            }
            *self
                .minutes
                .entry((account, model, minute, unit.clone()))
                .or_default() += amount;
        }
    }

    /// Every counter's sum, rolled up from the minutes to all windows: `f`
    /// gets the account, the model as stored, the window, the period's
    /// start (Unix seconds), the unit and the amount.
    pub fn for_each_counter(self, mut f: impl FnMut(u32, &str, Window, i64, &Unit, Decimal)) {
        let mut sums: HashMap<(u32, u32, Window, i64, Unit), Decimal> = HashMap::new();
        let mut starts: HashMap<(Window, i64), i64> = HashMap::new();
        for ((account, model, minute, unit), amount) in self.minutes {
            for window in Window::ALL {
                let start = *starts.entry((window, minute)).or_insert_with(|| {
                    let at = DateTime::<Utc>::from_timestamp(minute, 0).unwrap_or_default();
                    period(window, at).key()
                });
                *sums
                    .entry((account, model, window, start, unit.clone()))
                    .or_default() += amount;
            }
        }
        for ((account, model, window, start, unit), amount) in sums {
            f(
                account,
                &self.model_names[model as usize],
                window,
                start,
                &unit,
                amount,
            );
        }
    }

    /// Every counter row, in COPY text format.
    pub fn finish(self, accounts: &Accounts) -> CopyRows {
        let mut rows = CopyRows::new();
        self.for_each_counter(|account, model, window, start, unit, amount| {
            let a = accounts.get(account);
            rows.display(a.project)
                .text(&a.token)
                .text(&a.identity)
                .text(window.as_str())
                .timestamp(DateTime::<Utc>::from_timestamp(start, 0).unwrap_or_default())
                .text(unit.as_str())
                .text(model)
                .decimal(amount);
            rows.end_row();
        });
        rows
    }
}

//! The limits view: for each policy of a tier, what is used, held and left in
//! the current period. Admission decisions and API responses both read it.

use crate::fold::AccountState;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use schemas::plan::{scope_matches, Limit};
use schemas::{period, round_usd, Rounding, Unit, Window};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LimitView {
    pub unit: Unit,
    pub window: Window,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(with = "rust_decimal::serde::str")]
    pub cap: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub used: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub held: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub remaining: Decimal,
    /// When the current period ends; absent for `lifetime`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "schemas::timestamp::option::serialize"
    )]
    pub resets_at: Option<DateTime<Utc>>,
}

impl AccountState {
    /// Used (committed) amount of `limit`'s unit in the period containing `now`.
    pub fn used_in_period(&self, limit: &Limit, now: DateTime<Utc>) -> Decimal {
        let start = period(limit.window, now).key();
        self.used()
            .filter(|(k, _)| {
                k.window == limit.window && k.period_start == start && k.unit == limit.unit
            })
            .filter(|(k, _)| scope_matches(limit.model.as_ref(), k.model.as_deref()))
            .map(|(_, v)| *v)
            .sum()
    }

    /// Held amount of open holds taken in the period containing `now`.
    pub fn held_in_period(&self, limit: &Limit, now: DateTime<Utc>) -> Decimal {
        let current = period(limit.window, now).key();
        self.open_holds()
            .filter(|(_, h)| period(limit.window, h.reserved_at).key() == current)
            .filter(|(_, h)| scope_matches(limit.model.as_ref(), h.model.as_deref()))
            .map(|(_, h)| h.amounts.get(&limit.unit))
            .sum()
    }

    pub fn limit_view(&self, limit: &Limit, now: DateTime<Utc>) -> LimitView {
        let used = self.used_in_period(limit, now);
        let held = self.held_in_period(limit, now);
        let cap = limit.cap.0;
        let mut remaining = (cap - used - held).max(Decimal::ZERO);
        if limit.unit == Unit::Usd {
            remaining = round_usd(remaining, Rounding::Refund);
        }
        LimitView {
            unit: limit.unit.clone(),
            window: limit.window,
            model: limit.model.as_ref().map(|m| m.0.clone()),
            cap,
            used,
            held,
            remaining,
            resets_at: period(limit.window, now).end,
        }
    }
}

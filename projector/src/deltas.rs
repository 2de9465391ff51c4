//! What one event changes, computed from the event alone (no state): the
//! per-period usage counters and the account's running balances.
//!
//! Because settling events carry their hold, every effect here is a plain sum,
//! so folding events in any order that keeps each hold's `reserved` before
//! its settlement gives the same counters (invariant 3).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use schemas::events::{Envelope, Event};
use schemas::{period, Amounts, Unit, Window};

/// One per-period usage counter of an account.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct CounterKey {
    pub window: Window,
    /// Unix seconds of the period start (see [`schemas::window::period`]).
    pub period_start: i64,
    pub unit: Unit,
    pub model: Option<String>,
}

/// Counter increments caused by an event: committed or recorded usage, in the
/// periods of the instant the usage is attributed to (the hold's `reserved_at`).
pub fn usage_deltas(env: &Envelope) -> Vec<(CounterKey, Decimal)> {
    let mut out = Vec::new();
    for_each_usage_delta(env, |key, amount| out.push((key.clone(), amount)));
    out
}

/// The usage an event adds to the counters: the instant it is attributed
/// to, its model and its amounts (`None` for events that add none).
pub fn attributed_usage(env: &Envelope) -> Option<(DateTime<Utc>, &Option<String>, &Amounts)> {
    match &env.event {
        Event::Committed(c) => Some((c.hold.reserved_at, &c.hold.model, &c.actual)),
        Event::UsageRecorded(u) => Some((
            u.reserved_at.unwrap_or(env.occurred_at),
            &u.model,
            &u.amounts,
        )),
        Event::Reserved(_) | Event::Released(_) | Event::Expired(_) => None,
    }
}

/// [`usage_deltas`] without building a key per increment: `f` sees one key,
/// changed in place (the model is cloned once per event, not once per
/// window and unit; an account's fold applies 30 increments per commit).
pub fn for_each_usage_delta(env: &Envelope, mut f: impl FnMut(&CounterKey, Decimal)) {
    let Some((at, model, amounts)) = attributed_usage(env) else {
        return;
    };
    let mut key: Option<CounterKey> = None;
    for window in Window::ALL {
        let period_start = period(window, at).key();
        for (unit, amount) in amounts.iter() {
            if amount.is_zero() {
                continue;
            }
            let key = match &mut key {
                Some(key) => {
                    key.window = window;
                    key.period_start = period_start;
                    if key.unit != *unit {
                        key.unit = unit.clone();
                    }
                    key
                }
                None => key.insert(CounterKey {
                    window,
                    period_start,
                    unit: unit.clone(),
                    model: model.clone(),
                }),
            };
            f(key, amount);
        }
    }
}

/// Change of an account's lifetime balance in one unit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BalanceDelta {
    pub committed: Decimal,
    pub held: Decimal,
    pub overage: Decimal,
}

/// Balance changes per unit caused by an event.
pub fn balance_deltas(env: &Envelope) -> Vec<(Unit, BalanceDelta)> {
    let mut out: Vec<(Unit, BalanceDelta)> = Vec::new();
    let mut add = |unit: &Unit, f: &dyn Fn(&mut BalanceDelta)| {
        if let Some((_, d)) = out.iter_mut().find(|(u, _)| u == unit) {
            f(d);
        } else {
            let mut d = BalanceDelta::default();
            f(&mut d);
            out.push((unit.clone(), d));
        }
    };
    match &env.event {
        Event::Reserved(r) => r.amounts.iter().for_each(|(u, a)| add(u, &|d| d.held += a)),
        Event::Committed(c) => {
            c.hold
                .held
                .iter()
                .for_each(|(u, a)| add(u, &|d| d.held -= a));
            c.actual
                .iter()
                .for_each(|(u, a)| add(u, &|d| d.committed += a));
            c.overage
                .iter()
                .for_each(|(u, a)| add(u, &|d| d.overage += a));
        }
        Event::Released(r) => r
            .hold
            .held
            .iter()
            .for_each(|(u, a)| add(u, &|d| d.held -= a)),
        Event::Expired(e) => e
            .hold
            .held
            .iter()
            .for_each(|(u, a)| add(u, &|d| d.held -= a)),
        Event::UsageRecorded(u) => u
            .amounts
            .iter()
            .for_each(|(unit, a)| add(unit, &|d| d.committed += a)),
    }
    out
}

//! Pure admission and settlement decisions over one account's state.
//!
//! **Admission rule** (invariant 1): a hold is admitted only if, for every
//! limit of the tier that applies to it (the limit's model scope matches and
//! the request names the limit's unit), `used + held + requested ≤ cap` in the
//! current period; a request for zero of a unit is refused once nothing of
//! that unit remains. Units a request does not name are not checked. The
//! tier's `concurrency` caps the number of open holds.
//!
//! **Settlement rule**: a commit's units that the caller leaves out are
//! committed as held; actual above held is recorded in full as overage.

use chrono::{DateTime, Utc};
use projector::{AccountState, LimitView, Settlement};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use schemas::events::{Committed, Event, Released, Reserved, UsageRecorded};
use schemas::plan::{scope_matches, Limit, Tier};
use schemas::{round_usd, Amounts, ReservationId, Rounding, Unit};
use uuid::Uuid;

/// When to retry a request refused only because holds in flight fill a
/// limit that what is used still leaves room in: such holds settle as
/// their calls end, usually within seconds, not at the period's end.
pub const HOLDS_RETRY: chrono::Duration = chrono::Duration::seconds(1);

/// A reservation request, already validated.
#[derive(Clone, Debug)]
pub struct ReserveRequest {
    pub reservation_id: ReservationId,
    pub model: Option<String>,
    pub amounts: Amounts,
    pub expires_at: DateTime<Utc>,
    pub tier: String,
    /// The output part of `amounts` may shrink to fit what limits leave.
    pub flex: Option<OutputFlex>,
}

/// How a request's output can shrink: `amounts` hold the cost of
/// `max_output_tokens` for each of `choices` answers; the gate may lower it
/// (never below `min_output_tokens`) so the hold fits the remaining budget
/// (the proxy then clamps `max_tokens` upstream, which caps each choice).
#[derive(Clone, Debug, PartialEq)]
pub struct OutputFlex {
    pub input_tokens: u64,
    /// Output cap of one choice.
    pub max_output_tokens: u64,
    pub min_output_tokens: u64,
    /// How many answers the provider writes (OpenAI's `n`), each up to the cap.
    pub choices: u64,
    /// USD of the input part (already inside `amounts.usd`).
    pub input_usd: Decimal,
    pub usd_per_output_token: Decimal,
}

impl OutputFlex {
    /// The amounts for `output` tokens of output per choice.
    pub fn amounts_for(&self, base: &Amounts, output: u64) -> Amounts {
        let mut a = base.clone();
        let out = Decimal::from(output) * Decimal::from(self.choices.max(1));
        if a.contains(&Unit::OutputTokens) {
            a.set(Unit::OutputTokens, out);
        }
        if a.contains(&Unit::Tokens) {
            a.set(Unit::Tokens, Decimal::from(self.input_tokens) + out);
        }
        if a.contains(&Unit::Usd) {
            a.set(
                Unit::Usd,
                round_usd(
                    self.input_usd + out * self.usd_per_output_token,
                    Rounding::Charge,
                ),
            );
        }
        a
    }

    /// Most output tokens that `limit`'s room affords, if the limit constrains output.
    fn affordable(&self, limit: &Limit, room: Decimal) -> Option<u64> {
        let room_for_output = match limit.unit {
            Unit::OutputTokens => room,
            Unit::Tokens => room - Decimal::from(self.input_tokens),
            Unit::Usd if self.usd_per_output_token > Decimal::ZERO => {
                // A room so large (a cap used as "unlimited") that the
                // quotient overflows a decimal affords any output.
                match (room - self.input_usd).checked_div(self.usd_per_output_token) {
                    Some(tokens) => tokens,
                    None => return Some(u64::MAX),
                }
            }
            _ => return None,
        };
        Some(
            (room_for_output / Decimal::from(self.choices.max(1)))
                .floor()
                .max(Decimal::ZERO)
                .to_u64()
                .unwrap_or(u64::MAX),
        )
    }
}

/// Lowers the request's output to what every applicable limit leaves, if it can.
fn fit_output(
    state: &AccountState,
    tier: &Tier,
    req: &ReserveRequest,
    now: DateTime<Utc>,
) -> Option<(Amounts, u64)> {
    let flex = req.flex.as_ref()?;
    let mut output = flex.max_output_tokens;
    for limit in &tier.limits {
        if !req.amounts.contains(&limit.unit)
            || !scope_matches(limit.model.as_ref(), req.model.as_deref())
        {
            continue;
        }
        let room =
            limit.cap.0 - state.used_in_period(limit, now) - state.held_in_period(limit, now);
        if let Some(affordable) = flex.affordable(limit, room) {
            output = output.min(affordable);
        }
    }
    (output >= flex.min_output_tokens).then(|| (flex.amounts_for(&req.amounts, output), output))
}

/// Why a hold was refused.
#[derive(Clone, Debug, PartialEq)]
pub enum Violation {
    /// `limits[index]` would be exceeded.
    Limit { index: usize, requested: Decimal },
    /// Too many holds open at once.
    Concurrency { max: u32 },
}

#[derive(Clone, Debug, PartialEq)]
pub enum ReserveDecision {
    /// The reservation id is known: answer with its first outcome.
    Existing {
        expires_at: DateTime<Utc>,
        status: &'static str,
    },
    Deny {
        violation: Violation,
        retry_after: Option<DateTime<Utc>>,
    },
    /// Admit: append this event. `output_tokens` is the (possibly lowered) output allowed.
    Admit {
        event: Event,
        output_tokens: Option<u64>,
    },
}

pub fn views(state: &AccountState, tier: &Tier, now: DateTime<Utc>) -> Vec<LimitView> {
    tier.limits
        .iter()
        .map(|l| state.limit_view(l, now))
        .collect()
}

pub fn decide_reserve(
    state: &AccountState,
    tier: &Tier,
    req: &ReserveRequest,
    now: DateTime<Utc>,
) -> ReserveDecision {
    if let Some(open) = state.open_hold(&req.reservation_id) {
        return ReserveDecision::Existing {
            expires_at: open.expires_at,
            status: "open",
        };
    }
    if let Some(settled) = state.settled(&req.reservation_id) {
        return ReserveDecision::Existing {
            expires_at: settled.expires_at,
            status: settled.settlement.status(),
        };
    }
    if let Some(max) = tier.concurrency {
        let open_now = state.open_holds().count();
        if open_now >= usize::try_from(max).unwrap_or(usize::MAX) {
            let soonest = state.open_holds().map(|(_, h)| h.expires_at).min();
            return ReserveDecision::Deny {
                violation: Violation::Concurrency { max },
                retry_after: soonest,
            };
        }
    }
    let (amounts, output_tokens) = match fit_output(state, tier, req, now) {
        Some((amounts, output)) => (amounts, Some(output)),
        None => (
            req.amounts.clone(),
            req.flex.as_ref().map(|f| f.max_output_tokens),
        ),
    };
    let mut worst: Option<(usize, Decimal, Option<DateTime<Utc>>)> = None;
    for (index, limit) in tier.limits.iter().enumerate() {
        if !amounts.contains(&limit.unit)
            || !scope_matches(limit.model.as_ref(), req.model.as_deref())
        {
            continue;
        }
        let view = state.limit_view(limit, now);
        let requested = amounts.get(&limit.unit);
        let fits = view.used + view.held + requested <= view.cap
            && (requested > Decimal::ZERO || view.used + view.held < view.cap);
        if !fits {
            // When it frees up: if what is used leaves room and only holds
            // in flight fill it, as soon as one settles (usually within
            // seconds; [`HOLDS_RETRY`]), else when the period resets.
            let frees_at = if view.used + requested <= view.cap && requested > Decimal::ZERO {
                Some(now + HOLDS_RETRY)
            } else {
                view.resets_at
            };
            // Report the violated limit that frees up last: retrying earlier is pointless.
            let later = match &worst {
                None => true,
                Some((_, _, at)) => match (frees_at, at) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(a), Some(b)) => a > *b,
                },
            };
            if later {
                worst = Some((index, requested, frees_at));
            }
        }
    }
    if let Some((index, requested, resets_at)) = worst {
        return ReserveDecision::Deny {
            violation: Violation::Limit { index, requested },
            retry_after: resets_at,
        };
    }
    let event = Event::Reserved(Reserved {
        reservation_id: req.reservation_id,
        model: req.model.clone(),
        amounts,
        expires_at: req.expires_at,
        tier: Some(req.tier.clone()),
    });
    ReserveDecision::Admit {
        event,
        output_tokens,
    }
}

/// What settling a reservation should do.
#[derive(Clone, Debug, PartialEq)]
pub enum SettleDecision {
    Append(Event),
    /// Same settlement as before: answer as the first time, change nothing.
    Repeat(Settlement),
    /// A different settlement already happened.
    Conflict {
        status: &'static str,
    },
    NotFound,
}

/// Fills units the caller left out with the held amount.
pub fn complete_actual(held: &Amounts, actual: &Amounts) -> Amounts {
    let mut out = actual.clone();
    for (unit, amount) in held.iter() {
        if !out.contains(unit) {
            out.set(unit.clone(), amount);
        }
    }
    out
}

pub fn decide_commit(state: &AccountState, id: ReservationId, actual: &Amounts) -> SettleDecision {
    if let Some(open) = state.open_hold(&id) {
        let actual = complete_actual(&open.amounts, actual);
        let overage = actual.saturating_sub(&open.amounts);
        return SettleDecision::Append(Event::Committed(Committed {
            hold: open.hold_ref(id),
            actual,
            overage,
        }));
    }
    match state.settled(&id) {
        Some(s) => match &s.settlement {
            Settlement::Committed { actual: first, .. }
                if *first == complete_actual(&s.hold.held, actual) =>
            {
                SettleDecision::Repeat(s.settlement.clone())
            }
            Settlement::Expired if state.has_usage_id(&id.0) => match &s.late_actual {
                // Committed late before with other amounts.
                Some(first) if *first != complete_actual(&s.hold.held, actual) => {
                    SettleDecision::Conflict {
                        status: "committed_late",
                    }
                }
                _ => SettleDecision::Repeat(s.settlement.clone()),
            },
            Settlement::Expired => {
                // The hold timed out but the usage happened: record it, never bill $0.
                SettleDecision::Append(Event::UsageRecorded(UsageRecorded {
                    usage_id: id.0,
                    model: s.hold.model.clone(),
                    amounts: complete_actual(&s.hold.held, actual),
                    reserved_at: Some(s.hold.reserved_at),
                }))
            }
            other => SettleDecision::Conflict {
                status: other.status(),
            },
        },
        None if state.has_usage_id(&id.0) => SettleDecision::Repeat(Settlement::Expired),
        None => SettleDecision::NotFound,
    }
}

pub fn decide_release(
    state: &AccountState,
    id: ReservationId,
    reason: Option<String>,
) -> SettleDecision {
    if let Some(open) = state.open_hold(&id) {
        return SettleDecision::Append(Event::Released(Released {
            hold: open.hold_ref(id),
            reason,
        }));
    }
    match state.settled(&id) {
        Some(s) => match &s.settlement {
            Settlement::Released { .. } => SettleDecision::Repeat(s.settlement.clone()),
            other => SettleDecision::Conflict {
                status: other.status(),
            },
        },
        None => SettleDecision::NotFound,
    }
}

pub fn decide_usage(
    state: &AccountState,
    usage_id: Uuid,
    model: Option<String>,
    amounts: Amounts,
) -> Option<Event> {
    if state.has_usage_id(&usage_id) {
        return None;
    }
    Some(Event::UsageRecorded(UsageRecorded {
        usage_id,
        model,
        amounts,
        reserved_at: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flex(usd_per_output_token: Decimal) -> OutputFlex {
        OutputFlex {
            input_tokens: 10,
            max_output_tokens: 1_000,
            min_output_tokens: 1,
            choices: 1,
            input_usd: Decimal::new(1, 5),
            usd_per_output_token,
        }
    }

    fn usd_limit(cap: Decimal) -> Limit {
        Limit {
            unit: Unit::Usd,
            window: schemas::Window::Month,
            cap: schemas::units::Quantity(cap),
            model: None,
        }
    }

    #[test]
    fn a_huge_dollar_room_affords_any_output_instead_of_overflowing() {
        // 7.9e28 / 1e-7 does not fit a decimal: this divided with `/` and panicked.
        let f = flex(Decimal::new(1, 7));
        let limit = usd_limit(Decimal::MAX);
        assert_eq!(f.affordable(&limit, Decimal::MAX), Some(u64::MAX));
        // An ordinary room still divides: (0.01 - 0.00001) / 0.0000001.
        assert_eq!(f.affordable(&limit, Decimal::new(1, 2)), Some(99_900));
    }
}

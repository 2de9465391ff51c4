//! Property tests of the fold: any interleaving of accounts' events, any
//! permutation of whole events for the counter sums, and redeliveries, all
//! give the same counters and balances (invariants 2 and 3); a snapshot taken
//! anywhere, restored and folded on, gives the same state as the whole fold.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;
use schemas::events::{Committed, Envelope, Event, Expired, Released, Reserved, UsageRecorded};
use schemas::{Account, Amounts, EventId, ProjectId, ReservationId, Unit, SCHEMA_VERSION};
use std::collections::{BTreeMap, HashMap};
use tollgate_projector::deltas::{balance_deltas, usage_deltas, CounterKey};
use tollgate_projector::snapshot::{JSON_SNAPSHOT_FORMAT, SNAPSHOT_FORMAT};
use tollgate_projector::AccountState;

#[derive(Clone, Debug)]
enum Op {
    Reserve {
        account: u8,
        tokens: u32,
        usd_cents: u32,
    },
    Commit {
        nth_open: u8,
        tokens: u32,
        usd_cents: u32,
    },
    Release {
        nth_open: u8,
    },
    Expire {
        nth_open: u8,
    },
    Usage {
        account: u8,
        images: u8,
    },
    /// A commit after the hold expired: usage under the reservation's id.
    LateCommit {
        nth_expired: u8,
        tokens: u32,
    },
    Tick {
        minutes: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, 0u32..5000, 0u32..500).prop_map(|(account, tokens, usd_cents)| Op::Reserve { account, tokens, usd_cents }),
        3 => (any::<u8>(), 0u32..6000, 0u32..600).prop_map(|(nth_open, tokens, usd_cents)| Op::Commit { nth_open, tokens, usd_cents }),
        1 => any::<u8>().prop_map(|nth_open| Op::Release { nth_open }),
        1 => any::<u8>().prop_map(|nth_open| Op::Expire { nth_open }),
        1 => (0u8..3, 0u8..5).prop_map(|(account, images)| Op::Usage { account, images }),
        1 => (any::<u8>(), 0u32..6000).prop_map(|(nth_expired, tokens)| Op::LateCommit { nth_expired, tokens }),
        1 => (0u16..3000).prop_map(|minutes| Op::Tick { minutes }),
    ]
}

fn amounts(tokens: u32, usd_cents: u32) -> Amounts {
    Amounts::new()
        .with(Unit::Requests, Decimal::ONE)
        .with(Unit::Tokens, Decimal::from(tokens))
        .with(Unit::Usd, Decimal::new(i64::from(usd_cents), 2))
}

/// Builds a valid event history (what the gate would have appended) from ops.
fn history(ops: &[Op]) -> Vec<Envelope> {
    let project = ProjectId::new();
    let mut now: DateTime<Utc> = DateTime::from_timestamp(1_790_000_000, 0).unwrap();
    let mut open: Vec<(u8, schemas::events::HoldRef)> = Vec::new();
    let mut expired: Vec<(u8, schemas::events::HoldRef)> = Vec::new();
    let mut out = Vec::new();
    let env = |account: u8, at: DateTime<Utc>, event: Event| Envelope {
        event_id: EventId::new(),
        schema_version: SCHEMA_VERSION,
        occurred_at: at,
        project_id: project,
        account: Account::Identity {
            identity: format!("user-{account}"),
        },
        request_id: None,
        event,
    };
    for op in ops {
        now += Duration::seconds(7);
        match op {
            Op::Tick { minutes } => now += Duration::minutes(i64::from(*minutes)),
            Op::Reserve {
                account,
                tokens,
                usd_cents,
            } => {
                let r = Reserved {
                    reservation_id: ReservationId::new(),
                    model: Some("gpt-4o".into()),
                    amounts: amounts(*tokens, *usd_cents),
                    expires_at: now + Duration::seconds(60),
                    tier: None,
                };
                open.push((
                    *account,
                    schemas::events::HoldRef {
                        reservation_id: r.reservation_id,
                        reserved_at: now,
                        model: r.model.clone(),
                        held: r.amounts.clone(),
                    },
                ));
                out.push(env(*account, now, Event::Reserved(r)));
            }
            Op::Commit {
                nth_open,
                tokens,
                usd_cents,
            } if !open.is_empty() => {
                let (account, hold) = open.remove(usize::from(*nth_open) % open.len());
                let actual = amounts(*tokens, *usd_cents);
                let overage = actual.saturating_sub(&hold.held);
                out.push(env(
                    account,
                    now,
                    Event::Committed(Committed {
                        hold,
                        actual,
                        overage,
                    }),
                ));
            }
            Op::Release { nth_open } if !open.is_empty() => {
                let (account, hold) = open.remove(usize::from(*nth_open) % open.len());
                out.push(env(
                    account,
                    now,
                    Event::Released(Released { hold, reason: None }),
                ));
            }
            Op::Expire { nth_open } if !open.is_empty() => {
                let (account, hold) = open.remove(usize::from(*nth_open) % open.len());
                expired.push((account, hold.clone()));
                out.push(env(
                    account,
                    now,
                    Event::Expired(Expired {
                        expires_at: hold.reserved_at + Duration::seconds(60),
                        hold,
                    }),
                ));
            }
            Op::LateCommit {
                nth_expired,
                tokens,
            } if !expired.is_empty() => {
                let (account, hold) = expired.remove(usize::from(*nth_expired) % expired.len());
                out.push(env(
                    account,
                    now,
                    Event::UsageRecorded(UsageRecorded {
                        usage_id: hold.reservation_id.0,
                        model: hold.model,
                        amounts: Amounts::new().with(Unit::Tokens, Decimal::from(*tokens)),
                        // Counted in the hold's periods, as the gate writes it.
                        reserved_at: Some(hold.reserved_at),
                    }),
                ));
            }
            Op::Usage { account, images } => {
                let amounts =
                    Amounts::new().with(Unit::Custom("images".into()), Decimal::from(*images));
                out.push(env(
                    *account,
                    now,
                    Event::UsageRecorded(UsageRecorded {
                        usage_id: uuid::Uuid::now_v7(),
                        model: None,
                        amounts,
                        reserved_at: None,
                    }),
                ));
            }
            _ => {}
        }
    }
    out
}

type Totals = (
    BTreeMap<(String, CounterKey), Decimal>,
    BTreeMap<(String, String), (Decimal, Decimal, Decimal)>,
);

fn totals<'a>(events: impl Iterator<Item = &'a Envelope>) -> Totals {
    let mut counters = BTreeMap::new();
    let mut balances = BTreeMap::new();
    for e in events {
        for (k, v) in usage_deltas(e) {
            *counters
                .entry((e.identity().to_owned(), k))
                .or_insert(Decimal::ZERO) += v;
        }
        for (u, d) in balance_deltas(e) {
            let b = balances
                .entry((e.identity().to_owned(), u.to_string()))
                .or_insert((Decimal::ZERO, Decimal::ZERO, Decimal::ZERO));
            b.0 += d.committed;
            b.1 += d.held;
            b.2 += d.overage;
        }
    }
    counters.retain(|_, v| !v.is_zero());
    (counters, balances)
}

fn fold_states(events: &[(u64, Envelope)]) -> HashMap<String, AccountState> {
    let mut states: HashMap<String, AccountState> = HashMap::new();
    for (seq, e) in events {
        states
            .entry(e.identity().to_owned())
            .or_default()
            .apply(*seq, e);
    }
    states
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn counter_sums_do_not_depend_on_event_order(ops in proptest::collection::vec(op(), 1..120), seed in any::<u64>()) {
        let events = history(&ops);
        let mut shuffled = events.clone();
        let mut rng = seed;
        for i in (1..shuffled.len()).rev() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (rng >> 33) as usize % (i + 1));
        }
        prop_assert_eq!(totals(events.iter()), totals(shuffled.iter()));
    }

    #[test]
    fn interleavings_and_redeliveries_give_the_same_account_state(ops in proptest::collection::vec(op(), 1..120), seed in any::<u64>()) {
        let events: Vec<(u64, Envelope)> = history(&ops).into_iter().enumerate().map(|(i, e)| (i as u64 + 1, e)).collect();
        // Another interleaving of accounts: stable-sort by a per-account key keeps each account's order.
        let mut interleaved = events.clone();
        interleaved.sort_by_key(|(_, e)| (e.identity().len() as u64 ^ seed) % 3);
        // Redelivery: every event applied twice.
        let redelivered: Vec<(u64, Envelope)> = events.iter().flat_map(|x| [x.clone(), x.clone()]).collect();
        let a = fold_states(&events);
        for other in [fold_states(&interleaved), fold_states(&redelivered)] {
            for (id, sa) in &a {
                let sb = &other[id];
                let mut ua: Vec<_> = sa.used().map(|(k, v)| (k.clone(), *v)).collect();
                let mut ub: Vec<_> = sb.used().map(|(k, v)| (k.clone(), *v)).collect();
                ua.sort();
                ub.sort();
                prop_assert_eq!(ua, ub);
                prop_assert_eq!(sa.open_count(), sb.open_count());
            }
        }
        // Held balance equals what the open holds hold.
        let (_, balances) = totals(events.iter().map(|(_, e)| e));
        for (id, state) in &a {
            let open_tokens: Decimal = state.open_holds().map(|(_, h)| h.amounts.get(&Unit::Tokens)).sum();
            let held = balances.get(&(id.clone(), "tokens".to_string())).map(|b| b.1).unwrap_or_default();
            prop_assert_eq!(open_tokens, held);
        }
    }

}

proptest! {
    // Long histories, so that states prune (every 256 events) on both sides of the cut.
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_snapshot_then_the_rest_folds_to_the_same_state(ops in proptest::collection::vec(op(), 1..900), cut in any::<proptest::sample::Index>()) {
        let events: Vec<(u64, Envelope)> = history(&ops).into_iter().enumerate().map(|(i, e)| (i as u64 + 1, e)).collect();
        let whole = fold_states(&events);
        let cut = cut.index(events.len() + 1);
        let mut resumed: HashMap<String, AccountState> = fold_states(&events[..cut])
            .into_iter()
            .map(|(id, state)| {
                let bytes = state.to_snapshot();
                let back = AccountState::from_snapshot(SNAPSHOT_FORMAT, &bytes).unwrap();
                assert_eq!(back.to_snapshot(), bytes, "equal states give equal bytes");
                // What an older version saved is read back to the same state.
                let json = state.to_json_snapshot().unwrap();
                let old = AccountState::from_snapshot(JSON_SNAPSHOT_FORMAT, &json).unwrap();
                // (Equal, not the same bytes: JSON wrote amounts normalized, `1.0` as `1`.)
                assert_eq!(&old, &back);
                (id, back)
            })
            .collect();
        // The event at the cut is delivered again, as a catch-up racing a snapshot would.
        for (seq, e) in events[cut.saturating_sub(1)..].iter() {
            resumed.entry(e.identity().to_owned()).or_default().apply(*seq, e);
        }
        prop_assert_eq!(whole.len(), resumed.len());
        for (id, state) in &whole {
            let other = &resumed[id];
            prop_assert_eq!(state, other);
            prop_assert_eq!(state.to_snapshot(), other.to_snapshot());
            prop_assert_eq!(state.last_event(), events.iter().rev().find(|(_, e)| e.identity() == id.as_str()).map(|(_, e)| e.event_id));
        }
    }
}

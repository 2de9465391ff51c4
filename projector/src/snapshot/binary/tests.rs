//! The binary layout's pieces and its refusals; whole states round-trip in
//! `tests/fold_props.rs` too.

use super::*;

fn decimal_round_trip(d: Decimal) {
    let mut w = Writer(Vec::new());
    w.decimal(&d);
    let back = Reader(&w.0).decimal().unwrap();
    assert_eq!(
        (back, back.scale(), back.is_sign_negative()),
        (d, d.scale(), d.is_sign_negative())
    );
}

#[test]
fn decimals_keep_their_exact_representation() {
    for text in [
        "0",
        "1.0",
        "1.00",
        "0.000123",
        "-3.5",
        "123456789.123456789",
    ] {
        decimal_round_trip(text.parse().unwrap());
    }
    decimal_round_trip(Decimal::MAX);
    decimal_round_trip(Decimal::MIN);
    let mut negative_zero = Decimal::new(0, 3);
    negative_zero.set_sign_negative(true);
    decimal_round_trip(negative_zero);
}

#[test]
fn integers_round_trip_and_overlong_ones_are_refused() {
    let mut w = Writer(Vec::new());
    for v in [0, 1, -1, i64::MAX, i64::MIN, 1_700_000_000] {
        w.signed(v);
    }
    w.varint(u64::MAX);
    let mut r = Reader(&w.0);
    for v in [0, 1, -1, i64::MAX, i64::MIN, 1_700_000_000] {
        assert_eq!(r.signed().unwrap(), v);
    }
    assert_eq!(r.varint().unwrap(), u64::MAX);
    // 2^64 does not fit.
    let too_big = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02];
    assert!(Reader(&too_big).varint().is_err());
    assert!(Reader(&[0x80; 30]).varint().is_err());
}

fn at(secs: i64, nanos: u32) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, nanos).unwrap()
}

/// Every variant and option the fold's property test leaves out.
#[test]
fn every_kind_of_entry_round_trips() {
    let usd = |text: &str| Amounts::new().with(Unit::Usd, text.parse().unwrap());
    let images = Amounts::new()
        .with(Unit::Custom("images".into()), Decimal::from(3))
        .with(Unit::Requests, Decimal::ONE);
    let hold = |id: ReservationId, model: Option<&str>| HoldRef {
        reservation_id: id,
        reserved_at: at(1_700_000_000, 999_999_999),
        model: model.map(str::to_owned),
        held: usd("0.0100"),
    };
    let settled = |s: Settlement, late: Option<Amounts>, own: ReservationId| Settled {
        hold: hold(own, None),
        expires_at: at(1_700_000_300, 0),
        settled_at: at(1_700_000_100, 1),
        settlement: s,
        late_actual: late,
    };
    let mut state = AccountState::new();
    state.last_seq = u64::MAX;
    state.last_event = Some(EventId(Uuid::from_u128(7)));
    state.open.insert(
        ReservationId(Uuid::from_u128(1)),
        OpenHold {
            reserved_at: at(-86_400, 5),
            expires_at: at(0, 0),
            model: None,
            amounts: images.clone(),
            tier: Some("free".into()),
        },
    );
    let ids: Vec<ReservationId> = (10..14)
        .map(|i| ReservationId(Uuid::from_u128(i)))
        .collect();
    let kinds = [
        settled(
            Settlement::Committed {
                actual: usd("0.02"),
                overage: usd("0.01"),
            },
            None,
            ids[0],
        ),
        settled(
            Settlement::Released {
                reason: Some("client_gone".into()),
            },
            None,
            ids[1],
        ),
        settled(Settlement::Released { reason: None }, None, ids[2]),
        // A hold whose own id is not its key, and late usage after expiry.
        settled(
            Settlement::Expired,
            Some(images.clone()),
            ReservationId(Uuid::from_u128(99)),
        ),
    ];
    for (id, s) in ids.iter().zip(kinds) {
        state.settled.insert(*id, Arc::new(s));
    }
    state
        .usage_ids
        .insert(Uuid::from_u128(20), at(1_700_000_200, 3));
    for (window, period_start, unit, model) in [
        (Window::Minute, -60, Unit::Usd, Some("gpt-4o")),
        (Window::Lifetime, 0, Unit::Custom("images".into()), None),
    ] {
        let key = CounterKey {
            window,
            period_start,
            unit,
            model: model.map(str::to_owned),
        };
        state.used.insert(key, "-1.50".parse().unwrap());
    }
    state.latest_at = Some(at(1_700_000_200, 3));
    state.applied_since_prune = u32::MAX;

    let bytes = encode(&state);
    let back = decode(&bytes).unwrap();
    assert_eq!(back, state);
    assert_eq!(encode(&back), bytes);
    let own = |s: &AccountState| s.settled[&ids[3]].hold.reservation_id;
    assert_eq!(own(&back), ReservationId(Uuid::from_u128(99)));
}

#[test]
fn a_truncated_or_extended_state_is_refused() {
    let mut state = AccountState::new();
    state.last_seq = 7;
    state.latest_at = Some(DateTime::from_timestamp(1_700_000_000, 5).unwrap());
    let bytes = encode(&state);
    assert_eq!(decode(&bytes).unwrap(), state);
    for cut in 0..bytes.len() {
        assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(decode(&longer).is_err());
}

#[test]
fn a_huge_count_does_not_allocate_for_it() {
    // Format byte, last_seq 0, no last event, then 2^62 open holds.
    let mut w = Writer(vec![SNAPSHOT_FORMAT as u8, 0, 0]);
    w.varint(1 << 62);
    assert_eq!(decode(&w.0), Err(Malformed("ends early")));
}

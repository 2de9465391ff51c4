//! The binary layout's pieces, a golden file of it, and its refusals; whole
//! states from random histories round-trip in `tests/fold_props.rs` too.

use super::*;
use crate::snapshot::JSON_SNAPSHOT_FORMAT;
use proptest::prelude::*;

/// A state of every entry kind and option, in format 3 (hex) and format 2
/// (JSON). Written once from `rich_state` and checked in: a change to the
/// layout that encode and decode both make would round-trip, but not read
/// these.
const GOLDEN_V3: &str = include_str!("golden_v3.hex");
const GOLDEN_V2: &str = include_str!("golden_v2.json");

fn at(secs: i64, nanos: u32) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, nanos).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    let text: String = text.split_whitespace().collect();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// Every variant and option the fold's property test leaves out.
fn rich_state() -> AccountState {
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
        hold: hold(own, Some("gpt-4o-mini")),
        expires_at: at(1_700_000_300, 0),
        settled_at: at(1_700_000_100, 1),
        settlement: s,
        late_actual: late,
    };
    let mut state = AccountState::new();
    state.last_seq = u64::MAX;
    state.last_event = Some(EventId(Uuid::from_u128(7)));
    for (id, tier) in [(1, Some("free")), (2, None)] {
        let hold = OpenHold {
            reserved_at: at(-86_400, 5),
            // A leap second.
            expires_at: at(1_699_999_979, 1_500_000_000),
            model: None,
            amounts: images.clone(),
            tier: tier.map(str::to_owned),
        };
        state.open.insert(ReservationId(Uuid::from_u128(id)), hold);
    }
    let ids: Vec<ReservationId> = (10..14)
        .map(|i| ReservationId(Uuid::from_u128(i)))
        .collect();
    let mut negative_zero = Decimal::new(0, 2);
    negative_zero.set_sign_negative(true);
    let kinds = [
        settled(
            Settlement::Committed {
                actual: usd("0.02").with(Unit::Tokens, Decimal::from(1_300)),
                overage: Amounts::new().with(Unit::Usd, negative_zero),
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
    state
        .usage_ids
        .insert(Uuid::from_u128(21), at(1_700_000_201, 0));
    for (window, period_start, unit, model) in [
        (Window::Minute, -60, Unit::Usd, Some("gpt-4o")),
        (Window::Lifetime, 0, Unit::Custom("images".into()), None),
        (Window::Day, 1_699_920_000, Unit::Tokens, None),
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
    state
}

#[test]
fn every_kind_of_entry_round_trips() {
    let state = rich_state();
    let bytes = encode(&state);
    let back = decode(&bytes).unwrap();
    assert_eq!(back, state);
    assert_eq!(encode(&back), bytes);
    let own = |s: &AccountState| {
        s.settled[&ReservationId(Uuid::from_u128(13))]
            .hold
            .reservation_id
    };
    assert_eq!(own(&back), ReservationId(Uuid::from_u128(99)));
}

#[test]
fn the_golden_files_read_as_the_state_they_were_written_from() {
    let state = rich_state();
    let golden = unhex(GOLDEN_V3);
    assert_eq!(
        hex(&encode(&state)),
        hex(&golden),
        "format 3 changed: bump SNAPSHOT_FORMAT and keep reading this one"
    );
    assert_eq!(decode(&golden).unwrap(), state);
    let json = AccountState::from_snapshot(JSON_SNAPSHOT_FORMAT, GOLDEN_V2.trim().as_bytes());
    assert_eq!(json.unwrap(), state);
}

/// Whatever a reader accepts encodes back to the same bytes, so a byte
/// changed anywhere in a state is either refused or a state of its own.
#[test]
fn a_changed_byte_is_refused_or_reads_as_what_it_says() {
    let bytes = encode(&rich_state());
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..bytes.len() {
        let original = bytes[i];
        for b in [
            0,
            1,
            2,
            5,
            6,
            0x1c,
            0x1d,
            0x7f,
            0x80,
            0x81,
            0xff,
            original ^ 1,
            original ^ 0x80,
        ] {
            let mut changed = bytes.clone();
            changed[i] = b;
            match decode(&changed) {
                Ok(state) => {
                    accepted += 1;
                    assert_eq!(
                        hex(&encode(&state)),
                        hex(&changed),
                        "byte {i} set to {b:#x}"
                    );
                }
                Err(_) => refused += 1,
            }
        }
    }
    // Both happen: ids and amounts take any value, tags and lengths do not.
    assert!(
        accepted > 0 && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut bytes = vec![SNAPSHOT_FORMAT as u8];
        bytes.extend(tail);
        if let Ok(state) = decode(&bytes) {
            prop_assert_eq!(encode(&state), bytes);
        }
    }
}

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
fn integers_round_trip() {
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
}

/// Each piece refuses what a writer never writes, with its reason.
#[test]
fn pieces_refuse_what_a_writer_never_writes() {
    let refused =
        |bytes: &[u8], read: fn(&mut Reader) -> Result<()>| read(&mut Reader(bytes)).unwrap_err().0;
    let varint: fn(&mut Reader) -> Result<()> = |r| r.varint().map(drop);
    // 2^64, and more groups than 64 bits take.
    let too_big = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02];
    assert_eq!(refused(&too_big, varint), "integer out of range");
    assert_eq!(refused(&[0x80; 30], varint), "integer out of range");
    assert_eq!(refused(&[0x80, 0x00], varint), "overlong integer");
    assert_eq!(refused(&[0x81], varint), "ends early");

    let decimal: fn(&mut Reader) -> Result<()> = |r| r.decimal().map(drop);
    assert_eq!(
        refused(&[29, 1], decimal),
        "decimal out of range",
        "scale 29"
    );
    let mut two_to_96 = vec![0];
    two_to_96.extend([0x80; 13]);
    two_to_96.push(0x20); // 1 << 96: 13 groups of 7 bits (91), then bit 5 of the next.
    assert_eq!(refused(&two_to_96, decimal), "integer out of range");

    let unit: fn(&mut Reader) -> Result<()> = |r| r.unit().map(drop);
    assert_eq!(refused(&[6], unit), "unknown unit");
    assert_eq!(
        refused(&[5, 3, b'u', b's', b'd'], unit),
        "bad custom unit name"
    );
    assert_eq!(refused(&[5, 2, b'A', b'!'], unit), "bad custom unit name");
    assert_eq!(window_of(6), Err(Malformed("unknown window")));

    let units_out_of_order = [2, 4, 0, 1, 0, 0, 1];
    let amounts: fn(&mut Reader) -> Result<()> = |r| r.amounts().map(drop);
    assert_eq!(
        refused(&units_out_of_order, amounts),
        "units out of order or repeated"
    );
    assert_eq!(
        refused(&[2, 0, 0, 1, 0, 0, 1], amounts),
        "units out of order or repeated"
    );

    let option: fn(&mut Reader) -> Result<()> = |r| r.option(Reader::byte).map(drop);
    assert_eq!(refused(&[2, 0], option), "bad option tag");
    let string: fn(&mut Reader) -> Result<()> = |r| r.string().map(drop);
    assert_eq!(refused(&[2, 0xc3, 0x28], string), "text is not UTF-8");
    let time: fn(&mut Reader) -> Result<()> = |r| r.time().map(drop);
    let mut w = Writer(Vec::new());
    w.signed(1_700_000_000);
    w.varint(2_000_000_000);
    assert_eq!(refused(&w.0, time), "bad timestamp");
}

#[test]
fn a_state_refuses_keys_out_of_order_and_a_written_own_id() {
    let state = rich_state();
    let bytes = encode(&state);
    // The two open holds' ids are the 16 bytes after the format byte,
    // last_seq (10 bytes for u64::MAX), the last event (1 + 16) and the count.
    let first = 1 + 10 + 17 + 1;
    let second = bytes[first + 16..]
        .windows(16)
        .position(|w| w == Uuid::from_u128(2).as_bytes())
        .map(|p| first + 16 + p)
        .unwrap();
    let mut swapped = bytes.clone();
    swapped[first..first + 16].copy_from_slice(Uuid::from_u128(2).as_bytes());
    swapped[second..second + 16].copy_from_slice(Uuid::from_u128(1).as_bytes());
    assert_eq!(
        decode(&swapped),
        Err(Malformed("keys out of order or repeated"))
    );
    swapped[second..second + 16].copy_from_slice(Uuid::from_u128(2).as_bytes());
    assert_eq!(
        decode(&swapped),
        Err(Malformed("keys out of order or repeated"))
    );

    // The settled hold 13 whose own id is 99: its own id written as 13.
    let key = ReservationId(Uuid::from_u128(13));
    let at = bytes
        .windows(17)
        .position(|w| w[0] == 1 && w[1..] == *Uuid::from_u128(99).as_bytes())
        .unwrap();
    let mut written = bytes.clone();
    written[at + 1..at + 17].copy_from_slice(key.0.as_bytes());
    assert_eq!(
        decode(&written),
        Err(Malformed(
            "a settled hold's own id written though it is its key"
        ))
    );
}

#[test]
fn a_truncated_or_extended_state_is_refused() {
    let bytes = encode(&rich_state());
    for cut in 0..bytes.len() {
        assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(decode(&longer), Err(Malformed("bytes after the state")));
}

#[test]
fn a_count_the_bytes_cannot_hold_is_refused_before_reserving_for_it() {
    // Format byte, last_seq 0, no last event, then open holds: as many as
    // a megabyte of zeros could hold at 23 bytes each, plus one.
    let zeros = 1 << 20;
    let mut w = Writer(vec![SNAPSHOT_FORMAT as u8, 0, 0]);
    w.varint((zeros / MIN_OPEN + 1) as u64);
    w.0.extend(std::iter::repeat_n(0, zeros));
    assert_eq!(decode(&w.0), Err(Malformed("ends early")));
    let mut w = Writer(vec![SNAPSHOT_FORMAT as u8, 0, 0]);
    w.varint(1 << 62);
    w.0.extend(std::iter::repeat_n(0, zeros));
    assert_eq!(decode(&w.0), Err(Malformed("ends early")));
}

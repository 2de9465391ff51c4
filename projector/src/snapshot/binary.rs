//! [`SNAPSHOT_FORMAT`] 3: an [`AccountState`] in a compact binary layout.
//!
//! A busy account's state keeps every settlement of the last day, and a
//! save encodes all of them. As JSON with field names (format 2) that was
//! 420–500 bytes per settled hold, every timestamp, id and amount formatted
//! as text, and the snapshot thread alone took 3.3 % of all samples in a
//! profile of `proxy-bench`'s streamed row at 16 clients (1.2 % with this
//! layout; `bench/README.md`, "Fourteenth pass"). Here ids are their 16
//! bytes, timestamps and amounts integers, and nothing is named: 98 bytes
//! per settled hold.
//!
//! Layout: the byte `3`, then the state's fields in declaration order.
//! Integers are LEB128 varints (signed ones zigzagged first); a collection
//! is its length then its entries in increasing order of key, so identical
//! states give identical bytes; an `Option` is a byte 0 or 1 then the
//! value. A timestamp is its Unix seconds (signed) and nanoseconds; a
//! decimal one byte of sign (bit 7) and scale, then its mantissa's
//! magnitude, which keeps its exact representation (`1.0` stays `1.0`).
//! Windows and units are tags fixed by the `match`es below, not by any
//! list's order, so a new variant does not compile until it has one.
//!
//! A reader takes only the bytes a writer would write: anything else
//! (truncated, trailing bytes, an overlong integer, keys out of order or
//! repeated, an unknown tag) is refused, without panicking or reserving
//! more memory than the input could hold. So any bytes it accepts encode
//! back to themselves (`binary/tests.rs` checks that for every one-byte
//! change of a state's bytes, and against a golden file).

use super::SNAPSHOT_FORMAT;
use crate::deltas::CounterKey;
use crate::fold::{AccountState, Map, OpenHold, PruneOrder, Settled, Settlement};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use schemas::events::HoldRef;
use schemas::window::Window;
use schemas::{Amounts, EventId, ReservationId, Unit};
use std::sync::Arc;
use uuid::Uuid;

/// Why bytes are not a format-3 state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("binary snapshot: {0}")]
pub struct Malformed(&'static str);

type Result<T> = std::result::Result<T, Malformed>;

/// A rough guess of the encoded size, to allocate once.
const BYTES_PER_ENTRY: usize = 96;

pub(super) fn encode(state: &AccountState) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(16 + state.entries() * BYTES_PER_ENTRY));
    w.byte(SNAPSHOT_FORMAT as u8);
    w.varint(state.last_seq);
    w.option(state.last_event.as_ref(), |w, id| w.uuid(&id.0));
    w.entries(super::sorted(state.open.iter()), |w, (id, hold)| {
        w.uuid(&id.0);
        w.time(&hold.reserved_at);
        w.time(&hold.expires_at);
        w.option(hold.model.as_ref(), |w, m| w.str(m));
        w.amounts(&hold.amounts);
        w.option(hold.tier.as_ref(), |w, t| w.str(t));
    });
    let settled = super::sorted(state.settled.iter().map(|(id, s)| (id, &**s)));
    w.entries(settled, |w, (id, s)| {
        w.uuid(&id.0);
        // The hold's own id is the key's but for a state built otherwise.
        w.option(
            Some(&s.hold.reservation_id).filter(|own| *own != id),
            |w, own| w.uuid(&own.0),
        );
        w.time(&s.hold.reserved_at);
        w.option(s.hold.model.as_ref(), |w, m| w.str(m));
        w.amounts(&s.hold.held);
        w.time(&s.expires_at);
        w.time(&s.settled_at);
        match &s.settlement {
            Settlement::Committed { actual, overage } => {
                w.byte(0);
                w.amounts(actual);
                w.amounts(overage);
            }
            Settlement::Released { reason } => {
                w.byte(1);
                w.option(reason.as_ref(), |w, r| w.str(r));
            }
            Settlement::Expired => w.byte(2),
        }
        w.option(s.late_actual.as_ref(), |w, a| w.amounts(a));
    });
    w.entries(super::sorted(state.usage_ids.iter()), |w, (id, at)| {
        w.uuid(id);
        w.time(at);
    });
    w.entries(super::sorted(state.used.iter()), |w, (key, amount)| {
        w.byte(window_tag(key.window));
        w.signed(key.period_start);
        w.unit(&key.unit);
        w.option(key.model.as_ref(), |w, m| w.str(m));
        w.decimal(amount);
    });
    w.option(state.latest_at.as_ref(), |w, at| w.time(at));
    w.varint(u64::from(state.applied_since_prune));
    w.0
}

pub(super) fn decode(bytes: &[u8]) -> Result<AccountState> {
    let mut r = Reader(bytes);
    if r.byte()? != SNAPSHOT_FORMAT as u8 {
        return Err(Malformed("not format 3"));
    }
    let last_seq = r.varint()?;
    let last_event = r.option(|r| r.uuid().map(EventId))?;
    let open: Map<ReservationId, OpenHold> = r.entries(MIN_OPEN, |r| {
        let id = ReservationId(r.uuid()?);
        let hold = OpenHold {
            reserved_at: r.time()?,
            expires_at: r.time()?,
            model: r.option(Reader::string)?,
            amounts: r.amounts()?,
            tier: r.option(Reader::string)?,
        };
        Ok((id, hold))
    })?;
    let settled: Map<ReservationId, Arc<Settled>> = r.entries(MIN_SETTLED, |r| {
        let id = ReservationId(r.uuid()?);
        let own = r.option(|r| r.uuid().map(ReservationId))?;
        if own == Some(id) {
            return Err(Malformed(
                "a settled hold's own id written though it is its key",
            ));
        }
        let hold = HoldRef {
            reservation_id: own.unwrap_or(id),
            reserved_at: r.time()?,
            model: r.option(Reader::string)?,
            held: r.amounts()?,
        };
        let expires_at = r.time()?;
        let settled_at = r.time()?;
        let settlement = match r.byte()? {
            0 => Settlement::Committed {
                actual: r.amounts()?,
                overage: r.amounts()?,
            },
            1 => Settlement::Released {
                reason: r.option(Reader::string)?,
            },
            2 => Settlement::Expired,
            _ => return Err(Malformed("unknown settlement")),
        };
        let settled = Settled {
            hold,
            expires_at,
            settled_at,
            settlement,
            late_actual: r.option(Reader::amounts)?,
        };
        Ok((id, Arc::new(settled)))
    })?;
    let usage_ids: Map<Uuid, DateTime<Utc>> =
        r.entries(MIN_USAGE_ID, |r| Ok((r.uuid()?, r.time()?)))?;
    let used: Map<CounterKey, Decimal> = r.entries(MIN_COUNTER, |r| {
        let key = CounterKey {
            window: window_of(r.byte()?)?,
            period_start: r.signed()?,
            unit: r.unit()?,
            model: r.option(Reader::string)?,
        };
        Ok((key, r.decimal()?))
    })?;
    let latest_at = r.option(Reader::time)?;
    let applied_since_prune =
        u32::try_from(r.varint()?).map_err(|_| Malformed("prune counter out of range"))?;
    if !r.0.is_empty() {
        return Err(Malformed("bytes after the state"));
    }
    Ok(AccountState {
        last_seq,
        last_event,
        open,
        prune_order: PruneOrder::of(&settled, &usage_ids),
        settled,
        usage_ids,
        used,
        latest_at,
        applied_since_prune,
    })
}

/// The fewest bytes an entry of each collection takes (every field at its
/// shortest), which bounds how many entries the bytes left can hold.
const MIN_OPEN: usize = 16 + 2 + 2 + 1 + 1 + 1;
const MIN_SETTLED: usize = 16 + 1 + 2 + 1 + 1 + 2 + 2 + 1 + 1;
const MIN_USAGE_ID: usize = 16 + 2;
const MIN_COUNTER: usize = 1 + 1 + 1 + 1 + 2;

fn window_tag(window: Window) -> u8 {
    match window {
        Window::Minute => 0,
        Window::Hour => 1,
        Window::Day => 2,
        Window::Week => 3,
        Window::Month => 4,
        Window::Lifetime => 5,
    }
}

fn window_of(tag: u8) -> Result<Window> {
    Ok(match tag {
        0 => Window::Minute,
        1 => Window::Hour,
        2 => Window::Day,
        3 => Window::Week,
        4 => Window::Month,
        5 => Window::Lifetime,
        _ => return Err(Malformed("unknown window")),
    })
}

/// A custom unit's tag, followed by its name.
const CUSTOM_UNIT: u8 = 5;

fn unit_tag(unit: &Unit) -> u8 {
    match unit {
        Unit::Requests => 0,
        Unit::Tokens => 1,
        Unit::InputTokens => 2,
        Unit::OutputTokens => 3,
        Unit::Usd => 4,
        Unit::Custom(_) => CUSTOM_UNIT,
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn byte(&mut self, b: u8) {
        self.0.push(b);
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn signed(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }

    fn len(&mut self, n: usize) {
        self.varint(n as u64);
    }

    fn uuid(&mut self, id: &Uuid) {
        self.0.extend_from_slice(id.as_bytes());
    }

    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.0.extend_from_slice(s.as_bytes());
    }

    fn time(&mut self, t: &DateTime<Utc>) {
        self.signed(t.timestamp());
        self.varint(u64::from(t.timestamp_subsec_nanos()));
    }

    // The `as u8` casts here and in `varint` take the low seven bits of a
    // group (the rest is shifted out next), never a value's whole amount.
    fn decimal(&mut self, d: &Decimal) {
        let sign = if d.is_sign_negative() { 0x80 } else { 0 };
        // Scale is at most 28 (rust_decimal's limit), so it fits the low bits.
        self.byte(sign | d.scale() as u8);
        let mut m = d.mantissa().unsigned_abs();
        while m >= 0x80 {
            self.0.push(m as u8 | 0x80);
            m >>= 7;
        }
        self.0.push(m as u8);
    }

    fn unit(&mut self, unit: &Unit) {
        self.byte(unit_tag(unit));
        if let Unit::Custom(name) = unit {
            self.str(name);
        }
    }

    fn amounts(&mut self, amounts: &Amounts) {
        // Counted, not collected: three amounts per settled hold.
        self.len(amounts.iter().count());
        for (unit, amount) in amounts.iter() {
            self.unit(unit);
            self.decimal(&amount);
        }
    }

    fn option<T>(&mut self, v: Option<T>, write: impl FnOnce(&mut Self, T)) {
        match v {
            None => self.byte(0),
            Some(v) => {
                self.byte(1);
                write(self, v);
            }
        }
    }

    fn entries<T>(&mut self, items: Vec<T>, mut write: impl FnMut(&mut Self, T)) {
        self.len(items.len());
        for item in items {
            write(self, item);
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.0.len() < n {
            return Err(Malformed("ends early"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn wide_varint(&mut self, max_bits: u32) -> Result<u128> {
        let mut v: u128 = 0;
        let mut shift = 0;
        loop {
            let b = self.byte()?;
            let chunk = u128::from(b & 0x7f);
            if shift >= max_bits || chunk >> (max_bits - shift) != 0 {
                return Err(Malformed("integer out of range"));
            }
            v |= chunk << shift;
            if b & 0x80 == 0 {
                // A last group of 0 after others is a longer way to write a
                // shorter number, which a writer never does.
                if b == 0 && shift > 0 {
                    return Err(Malformed("overlong integer"));
                }
                return Ok(v);
            }
            shift += 7;
        }
    }

    fn varint(&mut self) -> Result<u64> {
        Ok(self.wide_varint(64)? as u64)
    }

    fn signed(&mut self) -> Result<i64> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn len(&mut self) -> Result<usize> {
        usize::try_from(self.varint()?).map_err(|_| Malformed("length out of range"))
    }

    fn uuid(&mut self) -> Result<Uuid> {
        let mut bytes = [0; 16];
        bytes.copy_from_slice(self.take(16)?);
        Ok(Uuid::from_bytes(bytes))
    }

    fn string(&mut self) -> Result<String> {
        let n = self.len()?;
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| Malformed("text is not UTF-8"))
    }

    fn time(&mut self) -> Result<DateTime<Utc>> {
        let secs = self.signed()?;
        let nanos = u32::try_from(self.varint()?).map_err(|_| Malformed("bad timestamp"))?;
        DateTime::from_timestamp(secs, nanos).ok_or(Malformed("bad timestamp"))
    }

    fn decimal(&mut self) -> Result<Decimal> {
        let head = self.byte()?;
        let (negative, scale) = (head & 0x80 != 0, u32::from(head & 0x7f));
        // rust_decimal's mantissa is 96 bits.
        let magnitude = self.wide_varint(96)?;
        let m = i128::try_from(magnitude).map_err(|_| Malformed("decimal out of range"))?;
        let mut d = Decimal::try_from_i128_with_scale(m, scale)
            .map_err(|_| Malformed("decimal out of range"))?;
        d.set_sign_negative(negative);
        Ok(d)
    }

    fn unit(&mut self) -> Result<Unit> {
        Ok(match self.byte()? {
            0 => Unit::Requests,
            1 => Unit::Tokens,
            2 => Unit::InputTokens,
            3 => Unit::OutputTokens,
            4 => Unit::Usd,
            CUSTOM_UNIT => match self.string()?.parse() {
                Ok(custom @ Unit::Custom(_)) => custom,
                // A built-in unit's name is written as its tag.
                _ => return Err(Malformed("bad custom unit name")),
            },
            _ => return Err(Malformed("unknown unit")),
        })
    }

    /// Units in increasing order, as [`Amounts::iter`] gives them; each is
    /// then appended.
    fn amounts(&mut self) -> Result<Amounts> {
        let n = self.len()?;
        let mut amounts = Amounts::new();
        let mut last: Option<Unit> = None;
        for _ in 0..n {
            let unit = self.unit()?;
            if last.as_ref().is_some_and(|last| *last >= unit) {
                return Err(Malformed("units out of order or repeated"));
            }
            amounts.set(unit.clone(), self.decimal()?);
            last = Some(unit);
        }
        Ok(amounts)
    }

    fn option<T>(&mut self, read: impl FnOnce(&mut Self) -> Result<T>) -> Result<Option<T>> {
        match self.byte()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            _ => Err(Malformed("bad option tag")),
        }
    }

    /// A collection of `K → V` whose entries take at least `min_bytes`
    /// each, refused unless its keys increase (as a writer sorts them).
    fn entries<K: std::hash::Hash + Ord + Clone, V>(
        &mut self,
        min_bytes: usize,
        mut read: impl FnMut(&mut Self) -> Result<(K, V)>,
    ) -> Result<Map<K, V>> {
        let n = self.len()?;
        if n > self.0.len() / min_bytes {
            return Err(Malformed("ends early"));
        }
        let mut map = Map::with_capacity_and_hasher(n, Default::default());
        let mut last: Option<K> = None;
        for _ in 0..n {
            let (k, v) = read(self)?;
            if last.as_ref().is_some_and(|last| *last >= k) {
                return Err(Malformed("keys out of order or repeated"));
            }
            last = Some(k.clone());
            map.insert(k, v);
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests;

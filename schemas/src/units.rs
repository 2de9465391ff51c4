//! Units of usage and the amounts measured in them.
//!
//! An amount is an exact, non-negative `Decimal`. Counting units (requests,
//! tokens, custom units) hold whole numbers; `usd` holds dollars to
//! [`crate::money::USD_SCALE`] places. On the wire amounts are JSON strings;
//! readers also accept JSON numbers, converted from their text, never through
//! binary floating point arithmetic.

use crate::money::{round_usd, Rounding};
use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A unit of usage: the five built-in ones or a custom name such as `images`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    Requests,
    Tokens,
    InputTokens,
    OutputTokens,
    Usd,
    Custom(String),
}

/// Largest amount accepted for any unit (a sanity bound, not a business cap).
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    #[error("unit `{0}` is not valid: use requests, tokens, input_tokens, output_tokens, usd, or a custom name of 1-32 lowercase letters, digits or `_` starting with a letter")]
    BadName(String),
}

impl Unit {
    pub fn as_str(&self) -> &str {
        match self {
            Unit::Requests => "requests",
            Unit::Tokens => "tokens",
            Unit::InputTokens => "input_tokens",
            Unit::OutputTokens => "output_tokens",
            Unit::Usd => "usd",
            Unit::Custom(name) => name,
        }
    }

    /// Whether amounts of this unit must be whole numbers.
    pub fn is_counting(&self) -> bool {
        !matches!(self, Unit::Usd)
    }
}

impl FromStr for Unit {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "requests" => Unit::Requests,
            "tokens" => Unit::Tokens,
            "input_tokens" => Unit::InputTokens,
            "output_tokens" => Unit::OutputTokens,
            "usd" => Unit::Usd,
            other => {
                let mut chars = other.chars();
                let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
                let rest_ok =
                    chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !first_ok || !rest_ok || other.len() > 32 {
                    return Err(UnitError::BadName(other.to_owned()));
                }
                Unit::Custom(other.to_owned())
            }
        })
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Unit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Unit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Unit::from_str(&s).map_err(de::Error::custom)
    }
}

impl JsonSchema for Unit {
    fn schema_name() -> String {
        "Unit".into()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        let mut schema = schemars::schema::SchemaObject {
            instance_type: Some(schemars::schema::InstanceType::String.into()),
            ..Default::default()
        };
        schema.string().pattern = Some("^[a-z][a-z0-9_]{0,31}$".into());
        schema.into()
    }
}

/// An exact quantity: a JSON string on the wire, a string or number on input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Quantity(pub Decimal);

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.normalize().to_string())
    }
}

struct QuantityVisitor;

/// Significant digits every decimal keeps through a binary float (`f64`).
const EXACT_FLOAT_DIGITS: usize = 15;

/// Significant digits of a plain decimal text (`-0.00120` has 2).
fn significant_digits(text: &str) -> usize {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    digits.trim_start_matches('0').trim_end_matches('0').len()
}

impl Visitor<'_> for QuantityVisitor {
    type Value = Quantity;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number or a decimal string such as \"0.05\"")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
        let d = Decimal::from_str_exact(v.trim())
            .or_else(|_| Decimal::from_scientific(v.trim()))
            .map_err(|_| E::custom(format!("`{v}` is not a decimal number")))?;
        Ok(Quantity(d))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
        Ok(Quantity(Decimal::from(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
        Ok(Quantity(Decimal::from(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
        if !v.is_finite() {
            return Err(E::custom("amount must be a finite number"));
        }
        // The shortest text that reads back as this number: the text the
        // sender wrote if it had at most 15 significant digits (every such
        // decimal survives the trip through a binary float). With more, the
        // sender's digits may be lost already (`123456789.0123456789`
        // arrives as `123456789.01234567`): refused rather than guessed.
        let text = v.to_string();
        if significant_digits(&text) > EXACT_FLOAT_DIGITS {
            return Err(E::custom(format!(
                "`{text}` has more significant digits than a JSON number carries exactly \
                 ({EXACT_FLOAT_DIGITS}); send it as a string, e.g. \"{text}\""
            )));
        }
        self.visit_str(&text)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(QuantityVisitor)
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> String {
        "Quantity".into()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        let mut schema = schemars::schema::SchemaObject {
            instance_type: Some(schemars::schema::InstanceType::String.into()),
            ..Default::default()
        };
        schema.string().pattern = Some(r"^-?[0-9]+(\.[0-9]+)?$".into());
        schema.into()
    }
}

/// Amounts per unit. Missing units are zero.
///
/// On the wire a JSON object by unit (`{"tokens":"1200","usd":"0.05"}`). In
/// memory a vector sorted by unit, each unit once: an amount names a few of a
/// handful of units, and a `BTreeMap` allocated a 512-byte node for each
/// (half the memory of a settled hold a state keeps for a day; `fold-bench`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Amounts(Vec<(Unit, Quantity)>);

impl fmt::Debug for Amounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(u, q)| (u, q)))
            .finish()
    }
}

impl Serialize for Amounts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(u, q)| (u, q)))
    }
}

struct AmountsVisitor;

impl<'de> Visitor<'de> for AmountsVisitor {
    type Value = Amounts;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of amounts by unit")
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Amounts, A::Error> {
        let hint = map.size_hint().unwrap_or(4).min(8);
        let mut entries: Vec<(Unit, Quantity)> = Vec::with_capacity(hint);
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        // A unit named twice keeps its last amount, as a map would.
        entries.reverse();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, kept| later.0 == kept.0);
        Ok(Amounts(entries))
    }
}

impl<'de> Deserialize<'de> for Amounts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(AmountsVisitor)
    }
}

/// The schema of the map it is on the wire (inlined where used, as before).
impl JsonSchema for Amounts {
    fn is_referenceable() -> bool {
        <BTreeMap<Unit, Quantity>>::is_referenceable()
    }
    fn schema_name() -> String {
        <BTreeMap<Unit, Quantity>>::schema_name()
    }
    fn schema_id() -> std::borrow::Cow<'static, str> {
        <BTreeMap<Unit, Quantity>>::schema_id()
    }
    fn json_schema(generator: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        <BTreeMap<Unit, Quantity>>::json_schema(generator)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AmountError {
    #[error("amount for `{0}` must not be negative")]
    Negative(Unit),
    #[error("amount for `{0}` is too large (at most {MAX_AMOUNT})")]
    TooLarge(Unit),
    #[error("amount for `{0}` must be a whole number")]
    NotWhole(Unit),
}

impl Amounts {
    pub fn new() -> Self {
        Self::default()
    }

    fn find(&self, unit: &Unit) -> Result<usize, usize> {
        self.0.binary_search_by(|(u, _)| u.cmp(unit))
    }

    pub fn get(&self, unit: &Unit) -> Decimal {
        self.find(unit).map(|i| self.0[i].1 .0).unwrap_or_default()
    }

    pub fn contains(&self, unit: &Unit) -> bool {
        self.find(unit).is_ok()
    }

    pub fn set(&mut self, unit: Unit, amount: Decimal) {
        match self.find(&unit) {
            Ok(i) => self.0[i].1 = Quantity(amount),
            Err(i) => self.0.insert(i, (unit, Quantity(amount))),
        }
    }

    pub fn with(mut self, unit: Unit, amount: Decimal) -> Self {
        self.set(unit, amount);
        self
    }

    /// By unit, in the order of [`Unit`].
    pub fn iter(&self) -> impl Iterator<Item = (&Unit, Decimal)> {
        self.0.iter().map(|(u, q)| (u, q.0))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks bounds and whole-number units; rounds USD charges up (see [`crate::money`]).
    pub fn validated_charge(mut self) -> Result<Self, AmountError> {
        for (unit, q) in &mut self.0 {
            if q.0.is_sign_negative() && !q.0.is_zero() {
                return Err(AmountError::Negative(unit.clone()));
            }
            if q.0 > Decimal::from(MAX_AMOUNT) {
                return Err(AmountError::TooLarge(unit.clone()));
            }
            if unit.is_counting() {
                if q.0.fract() != Decimal::ZERO {
                    return Err(AmountError::NotWhole(unit.clone()));
                }
                q.0 = q.0.normalize();
            } else {
                q.0 = round_usd(q.0, Rounding::Charge);
            }
        }
        Ok(self)
    }

    /// `tokens` defaults to `input_tokens + output_tokens` when only those are given.
    pub fn with_derived_tokens(mut self) -> Self {
        if !self.contains(&Unit::Tokens)
            && (self.contains(&Unit::InputTokens) || self.contains(&Unit::OutputTokens))
        {
            // Saturating: amounts not validated yet may be near `Decimal`'s
            // bounds, and validation then refuses the total.
            let total = self
                .get(&Unit::InputTokens)
                .saturating_add(self.get(&Unit::OutputTokens));
            self.set(Unit::Tokens, total);
        }
        self
    }

    /// Per-unit `self - other`, clamped at zero (what a smaller commit gives back).
    pub fn saturating_sub(&self, other: &Amounts) -> Amounts {
        let mut out = Amounts::new();
        for (unit, amount) in self.iter() {
            let rest = amount - other.get(unit);
            if rest > Decimal::ZERO {
                out.set(unit.clone(), rest);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn json_numbers_are_taken_only_as_far_as_they_are_exact() {
        let read = |json: &str| serde_json::from_str::<Quantity>(json).map(|q| q.0);
        assert_eq!(read("0.1").unwrap(), dec!(0.1));
        assert_eq!(read("123456789.012345").unwrap(), dec!(123456789.012345));
        assert_eq!(read("1e20").unwrap(), dec!(100000000000000000000));
        assert_eq!(read("0.000000000000123").unwrap(), dec!(0.000000000000123));
        // More digits than a float keeps: the sender's may already be gone.
        let err = read("123456789.0123456789").unwrap_err().to_string();
        assert!(err.contains("send it as a string"), "{err}");
        assert!(read("0.12345678901234567").is_err());
        // As strings, every digit counts.
        assert_eq!(
            read(r#""123456789.0123456789""#).unwrap(),
            dec!(123456789.0123456789)
        );
        assert_eq!(significant_digits("-0.00120"), 2);
    }

    #[test]
    fn numbers_and_strings_read_exactly() {
        let a: Amounts =
            serde_json::from_str(r#"{"usd":0.05,"tokens":1200,"requests":"1"}"#).unwrap();
        assert_eq!(a.get(&Unit::Usd), dec!(0.05));
        assert_eq!(a.get(&Unit::Tokens), dec!(1200));
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"requests":"1","tokens":"1200","usd":"0.05"}"#
        );
    }

    #[test]
    fn amounts_read_in_any_order_and_a_repeated_unit_keeps_its_last_amount() {
        let a: Amounts =
            serde_json::from_str(r#"{"images":2,"usd":"1","tokens":5,"usd":"0.5","requests":1}"#)
                .unwrap();
        let b = Amounts::new()
            .with(Unit::Usd, dec!(0.5))
            .with(Unit::Custom("images".into()), dec!(2))
            .with(Unit::Requests, dec!(1))
            .with(Unit::Tokens, dec!(5));
        assert_eq!(a, b, "equal whatever order they were read or set in");
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"requests":"1","tokens":"5","usd":"0.5","images":"2"}"#
        );
        let units: Vec<&Unit> = a.iter().map(|(u, _)| u).collect();
        assert_eq!(
            units,
            [
                &Unit::Requests,
                &Unit::Tokens,
                &Unit::Usd,
                &Unit::Custom("images".into())
            ]
        );
        let mut c = b.clone();
        c.set(Unit::Tokens, dec!(6));
        assert_eq!(c.get(&Unit::Tokens), dec!(6));
        assert_eq!(c.get(&Unit::InputTokens), Decimal::ZERO);
        assert!(!c.contains(&Unit::InputTokens));
        assert_ne!(c, b);
        assert!(serde_json::from_str::<Amounts>("[]").is_err());
    }

    #[test]
    fn validation_names_the_unit() {
        let a: Amounts = serde_json::from_str(r#"{"tokens":-3}"#).unwrap();
        assert_eq!(
            a.validated_charge(),
            Err(AmountError::Negative(Unit::Tokens))
        );
        let a: Amounts = serde_json::from_str(r#"{"requests":"1.5"}"#).unwrap();
        assert_eq!(
            a.validated_charge(),
            Err(AmountError::NotWhole(Unit::Requests))
        );
        let a: Amounts = serde_json::from_str(r#"{"images":1e20}"#).unwrap();
        assert_eq!(
            a.validated_charge(),
            Err(AmountError::TooLarge(Unit::Custom("images".into())))
        );
        assert!(serde_json::from_str::<Amounts>(r#"{"Bad Unit":1}"#).is_err());
    }
}

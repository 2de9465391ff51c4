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
        // The shortest text that reads back as this number: the text the sender wrote.
        if !v.is_finite() {
            return Err(E::custom("amount must be a finite number"));
        }
        self.visit_str(&v.to_string())
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Amounts(pub BTreeMap<Unit, Quantity>);

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

    pub fn get(&self, unit: &Unit) -> Decimal {
        self.0.get(unit).map(|q| q.0).unwrap_or_default()
    }

    pub fn contains(&self, unit: &Unit) -> bool {
        self.0.contains_key(unit)
    }

    pub fn set(&mut self, unit: Unit, amount: Decimal) {
        self.0.insert(unit, Quantity(amount));
    }

    pub fn with(mut self, unit: Unit, amount: Decimal) -> Self {
        self.set(unit, amount);
        self
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Unit, Decimal)> {
        self.0.iter().map(|(u, q)| (u, q.0))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks bounds and whole-number units; rounds USD charges up (see [`crate::money`]).
    pub fn validated_charge(mut self) -> Result<Self, AmountError> {
        for (unit, q) in self.0.iter_mut() {
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
            let total = self.get(&Unit::InputTokens) + self.get(&Unit::OutputTokens);
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

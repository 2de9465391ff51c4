//! Event timestamps on the wire: the exact text chrono's serde gives a
//! `DateTime<Utc>` (`2026-11-21T20:15:03.123456Z`: no fraction, or 3, 6 or 9
//! digits, whichever is shortest and exact), written and read without
//! chrono's general formatter and parser.
//!
//! Every event carries one to three timestamps, and chrono's generic paths
//! (a formatter writing through serde's escaping adapter character by
//! character; an RFC 3339 parser with offsets and leap seconds) were about a
//! tenth of encoding and decoding an event. This module handles the shape
//! Tollgate writes and hands anything else (offsets, other precisions, leap
//! seconds, years outside 0–9999) to chrono, so it reads everything chrono
//! reads, to the same instant. Use as `#[serde(with = "crate::timestamp")]`.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serializer};
use std::borrow::Cow;

/// The text chrono's serde would write for `t`.
pub fn format(t: &DateTime<Utc>, out: &mut String) {
    use chrono::Datelike;
    let (year, nanos) = (t.year(), t.nanosecond());
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        // Outside the fast shape (leap second, far years): chrono's own text.
        out.push_str(&format!("{t:?}"));
        return;
    }
    let mut buf = [0u8; 30];
    let mut put = |at: usize, value: u32, digits: usize| {
        let mut v = value;
        for i in (0..digits).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year as u32, 4);
    put(5, t.month(), 2);
    put(8, t.day(), 2);
    put(11, t.hour(), 2);
    put(14, t.minute(), 2);
    put(17, t.second(), 2);
    let len = if nanos == 0 {
        19
    } else if nanos % 1_000_000 == 0 {
        put(20, nanos / 1_000_000, 3);
        23
    } else if nanos % 1_000 == 0 {
        put(20, nanos / 1_000, 6);
        26
    } else {
        put(20, nanos, 9);
        29
    };
    buf[4] = b'-';
    buf[7] = b'-';
    buf[10] = b'T';
    buf[13] = b':';
    buf[16] = b':';
    if len > 19 {
        buf[19] = b'.';
    }
    buf[len] = b'Z';
    // Only ASCII digits and separators were written.
    out.push_str(std::str::from_utf8(&buf[..=len]).unwrap_or_default());
}

/// Reads the shape [`format`] writes; `None` for anything else.
fn parse_fast(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    let digits = |from: usize, n: usize| -> Option<u32> {
        let mut v = 0u32;
        for &c in b.get(from..from + n)? {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(c - b'0');
        }
        Some(v)
    };
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if b.last() != Some(&b'Z') || separators.iter().any(|&(i, c)| b.get(i) != Some(&c)) {
        return None;
    }
    let nanos = match b.len() {
        20 => 0,
        24 | 27 | 30 if b[19] == b'.' => {
            let n = b.len() - 21;
            digits(20, n)? * 10u32.pow(9 - n as u32)
        }
        _ => return None,
    };
    let date = NaiveDate::from_ymd_opt(digits(0, 4)? as i32, digits(5, 2)?, digits(8, 2)?)?;
    let time = NaiveTime::from_hms_nano_opt(digits(11, 2)?, digits(14, 2)?, digits(17, 2)?, nanos)?;
    // A second of 60 is a leap second: chrono's parser decides those.
    if time.second() > 59 {
        return None;
    }
    Some(NaiveDateTime::new(date, time).and_utc())
}

/// Parses what chrono's serde accepts for a `DateTime<Utc>`.
pub fn parse(s: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    match parse_fast(s) {
        Some(t) => Ok(t),
        None => s.parse::<DateTime<Utc>>(),
    }
}

pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    let mut text = String::with_capacity(30);
    format(t, &mut text);
    s.serialize_str(&text)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let text = Cow::<'de, str>::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// An `Option<DateTime<Utc>>` (`null` when absent), in the same format.
pub mod option {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::borrow::Cow;

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Option::<Cow<'de, str>>::deserialize(d)?
            .map(|text| super::parse(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn chrono_text(t: &DateTime<Utc>) -> String {
        serde_json::to_value(t)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    }

    proptest! {
        #[test]
        fn writes_what_chrono_writes_and_reads_it_back(
            secs in -62_135_596_800i64..253_402_300_799,
            nanos in prop_oneof![Just(0u32), 0u32..1000, (0u32..1000).prop_map(|m| m * 1_000_000), (0u32..1_000_000).prop_map(|u| u * 1000), 0u32..1_000_000_000],
        ) {
            let t = DateTime::from_timestamp(secs, nanos).unwrap();
            let mut ours = String::new();
            format(&t, &mut ours);
            prop_assert_eq!(&ours, &chrono_text(&t));
            prop_assert_eq!(parse(&ours).unwrap(), t);
            prop_assert_eq!(parse_fast(&ours), Some(t));
        }
    }

    #[test]
    fn other_shapes_go_to_chrono_and_mean_the_same_instant() {
        for text in [
            "2026-11-21T20:15:03+02:00",
            "2026-11-21T20:15:03.5Z",
            "2026-11-21t20:15:03z",
            "2026-11-21T20:15:03.123456789012Z",
            "2016-12-31T23:59:60Z",
            "2026-11-21 20:15:03Z",
        ] {
            let ours = parse(text).map_err(|e| e.to_string());
            let chrono = text.parse::<DateTime<Utc>>().map_err(|e| e.to_string());
            assert_eq!(ours, chrono, "{text}");
        }
        for bad in [
            "2026-02-30T00:00:00Z",
            "2026-11-21T24:00:00Z",
            "2026-11-21T20:15:03",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
            assert!(
                bad.parse::<DateTime<Utc>>().is_err(),
                "chrono accepts {bad}"
            );
        }
    }
}

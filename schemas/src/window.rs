//! Fixed calendar windows in UTC and **the** period-key function.
//!
//! [`period`] is the only place that decides which window instance ("period")
//! an instant belongs to. Weeks start on Monday; months on the 1st;
//! `lifetime` is one period that never resets.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Lifetime,
}

impl Window {
    pub const ALL: [Window; 6] = [
        Window::Minute,
        Window::Hour,
        Window::Day,
        Window::Week,
        Window::Month,
        Window::Lifetime,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Week => "week",
            Window::Month => "month",
            Window::Lifetime => "lifetime",
        }
    }

    pub fn parse(s: &str) -> Option<Window> {
        Window::ALL.into_iter().find(|w| w.as_str() == s)
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One instance of a window: `[start, end)`. `end` is `None` for `lifetime`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Period {
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
}

impl Period {
    /// Seconds since the Unix epoch of the start: the compact period key.
    pub fn key(&self) -> i64 {
        self.start.timestamp()
    }
}

fn midnight(date: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).unwrap_or_default())
}

/// The period of `window` that contains `at`.
pub fn period(window: Window, at: DateTime<Utc>) -> Period {
    let date = at.date_naive();
    let (start, end) = match window {
        Window::Minute => {
            let s = at
                - Duration::seconds(i64::from(at.second()))
                - Duration::nanoseconds(i64::from(at.nanosecond()));
            (s, Some(s + Duration::minutes(1)))
        }
        Window::Hour => {
            let s = midnight(date) + Duration::hours(i64::from(at.hour()));
            (s, Some(s + Duration::hours(1)))
        }
        Window::Day => {
            let s = midnight(date);
            (s, Some(s + Duration::days(1)))
        }
        Window::Week => {
            let s =
                midnight(date) - Duration::days(i64::from(date.weekday().num_days_from_monday()));
            (s, Some(s + Duration::days(7)))
        }
        Window::Month => {
            let first = date.with_day(1).unwrap_or(date);
            let next = if first.month() == 12 {
                NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
            } else {
                NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
            };
            (midnight(first), next.map(midnight))
        }
        Window::Lifetime => (DateTime::<Utc>::UNIX_EPOCH, None),
    };
    Period { start, end }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn periods_are_calendar_windows_in_utc() {
        let at = t("2026-11-22T23:59:59.999Z"); // a Sunday
        assert_eq!(period(Window::Minute, at).start, t("2026-11-22T23:59:00Z"));
        assert_eq!(
            period(Window::Minute, at).end,
            Some(t("2026-11-23T00:00:00Z"))
        );
        assert_eq!(period(Window::Hour, at).start, t("2026-11-22T23:00:00Z"));
        assert_eq!(period(Window::Day, at).end, Some(t("2026-11-23T00:00:00Z")));
        assert_eq!(period(Window::Week, at).start, t("2026-11-16T00:00:00Z"));
        assert_eq!(
            period(Window::Week, t("2026-11-23T00:00:00Z")).start,
            t("2026-11-23T00:00:00Z")
        );
        assert_eq!(
            period(Window::Month, t("2026-12-31T12:00:00Z")).end,
            Some(t("2027-01-01T00:00:00Z"))
        );
        assert_eq!(period(Window::Month, at).start, t("2026-11-01T00:00:00Z"));
        assert_eq!(period(Window::Lifetime, at).end, None);
    }

    proptest::proptest! {
        #[test]
        fn every_instant_lies_in_its_period(secs in 0i64..4_102_444_800, nanos in 0u32..1_000_000_000) {
            let at = DateTime::from_timestamp(secs, nanos).unwrap();
            for w in Window::ALL {
                let p = period(w, at);
                proptest::prop_assert!(p.start <= at);
                if let Some(end) = p.end {
                    proptest::prop_assert!(at < end);
                    proptest::prop_assert_eq!(period(w, end).start, end);
                }
            }
        }
    }
}

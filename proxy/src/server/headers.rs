//! OpenAI-style rate-limit headers for the tightest limit of each kind:
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use chrono::{DateTime, Utc};
use projector::LimitView;
use rust_decimal::Decimal;
use schemas::plan::glob_matches;
use schemas::Unit;

/// OpenAI's reset format: `1s`, `6m0s`, `2h3m4s`.
fn duration(secs: i64) -> String {
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// Of the limits that apply to `model` (unscoped, or scoped to a glob it
/// matches), the one of a kind with the smallest share left (a zero cap
/// has none left), then the fewest left.
fn tightest<'a>(
    limits: &'a [LimitView],
    model: &str,
    of_kind: impl Fn(&Unit) -> bool,
) -> Option<&'a LimitView> {
    limits
        .iter()
        .filter(|l| of_kind(&l.unit))
        .filter(|l| {
            l.model
                .as_deref()
                .is_none_or(|glob| glob_matches(glob, model))
        })
        .map(|l| {
            let share = if l.cap.is_zero() {
                Decimal::ZERO
            } else {
                l.remaining.checked_div(l.cap).unwrap_or(Decimal::MAX)
            };
            (share, l.remaining, l)
        })
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)))
        .map(|(_, _, l)| l)
}

/// The headers of each kind: limit, remaining, reset.
const REQUEST_HEADERS: [&str; 3] = [
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
];
const TOKEN_HEADERS: [&str; 3] = [
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
];

/// The headers for a call of `model` (as limits name it).
pub fn rate_limit_headers(
    headers: &mut HeaderMap,
    limits: &[LimitView],
    model: &str,
    now: DateTime<Utc>,
) {
    let requests = tightest(limits, model, |u| *u == Unit::Requests);
    let tokens = tightest(limits, model, |u| {
        matches!(u, Unit::Tokens | Unit::InputTokens | Unit::OutputTokens)
    });
    for (names, limit) in [(REQUEST_HEADERS, requests), (TOKEN_HEADERS, tokens)] {
        let Some(l) = limit else {
            continue;
        };
        // Whole seconds rounded up, as `Retry-After` is: 0.6 s left is
        // "1s", not a "0s" that says to retry now. A lifetime limit never
        // resets: no reset header, rather than a value no client parses.
        let reset = l
            .resets_at
            .map(|at| duration(((at - now).num_milliseconds().max(0) + 999) / 1000));
        let values = [
            Some(l.cap.normalize().to_string()),
            Some(l.remaining.normalize().to_string()),
            reset,
        ];
        for (name, value) in names.into_iter().zip(values) {
            let Some(value) = value else {
                headers.remove(name);
                continue;
            };
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(unit: Unit, cap: i64, remaining: i64) -> LimitView {
        LimitView {
            unit,
            window: schemas::Window::Day,
            model: None,
            cap: Decimal::from(cap),
            used: Decimal::from(cap - remaining),
            held: Decimal::ZERO,
            remaining: Decimal::from(remaining),
            resets_at: None,
        }
    }

    fn headers(limits: &[LimitView]) -> HeaderMap {
        let mut h = HeaderMap::new();
        rate_limit_headers(&mut h, limits, "gpt-4o-mini", Utc::now());
        h
    }

    #[test]
    fn only_limits_that_apply_to_the_calls_model_are_shown() {
        let scoped = |glob: &str, cap, remaining| LimitView {
            model: Some(glob.to_owned()),
            ..limit(Unit::Requests, cap, remaining)
        };
        // gpt-4o's own limit is used up; it says nothing about gpt-4o-mini.
        let h = headers(&[
            limit(Unit::Requests, 1000, 900),
            scoped("gpt-4o", 10, 0),
            scoped("claude-*", 5, 1),
        ]);
        assert_eq!(h["x-ratelimit-limit-requests"], "1000");
        assert_eq!(h["x-ratelimit-remaining-requests"], "900");
        // A glob the model matches counts.
        let h = headers(&[limit(Unit::Requests, 1000, 900), scoped("gpt-4o*", 10, 3)]);
        assert_eq!(h["x-ratelimit-limit-requests"], "10");
        assert_eq!(h["x-ratelimit-remaining-requests"], "3");
    }

    #[test]
    fn the_tightest_limit_of_each_kind_is_shown() {
        let h = headers(&[
            limit(Unit::Requests, 100, 50),
            limit(Unit::Requests, 10, 4),
            limit(Unit::Tokens, 1000, 900),
            limit(Unit::OutputTokens, 200, 150),
            limit(Unit::Usd, 1, 0),
        ]);
        assert_eq!(h["x-ratelimit-limit-requests"], "10");
        assert_eq!(h["x-ratelimit-remaining-requests"], "4");
        assert_eq!(h["x-ratelimit-limit-tokens"], "200", "75 % left beats 90 %");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "150");
        assert!(
            !h.contains_key("x-ratelimit-reset-tokens"),
            "no reset for a limit that never resets"
        );
        let h = headers(&[limit(Unit::Tokens, 1000, 10), limit(Unit::Tokens, 0, 0)]);
        assert_eq!(
            h["x-ratelimit-limit-tokens"], "0",
            "a zero cap has nothing left"
        );
        assert!(!h.contains_key("x-ratelimit-limit-requests"));
        let h = headers(&[limit(Unit::Requests, 100, 50), limit(Unit::Requests, 10, 5)]);
        assert_eq!(
            h["x-ratelimit-limit-requests"], "10",
            "same share: fewest left"
        );
    }

    #[test]
    fn a_reset_under_a_second_away_is_one_second_not_zero() {
        let now = Utc::now();
        let mut soon = limit(Unit::Requests, 10, 0);
        soon.resets_at = Some(now + chrono::Duration::milliseconds(600));
        let mut h = HeaderMap::new();
        rate_limit_headers(&mut h, &[soon.clone()], "gpt-4o", now);
        assert_eq!(h["x-ratelimit-reset-requests"], "1s");
        soon.resets_at = Some(now + chrono::Duration::milliseconds(60_001));
        rate_limit_headers(&mut h, &[soon], "gpt-4o", now);
        assert_eq!(h["x-ratelimit-reset-requests"], "1m1s");
    }

    #[test]
    fn reset_durations_read_like_openai() {
        assert_eq!(super::duration(1), "1s");
        assert_eq!(super::duration(360), "6m0s");
        assert_eq!(super::duration(7384), "2h3m4s");
    }
}

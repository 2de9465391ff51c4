//! OpenAI-style rate-limit headers for the tightest limit of each kind:
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`.

use axum::http::{HeaderMap, HeaderValue};
use chrono::{DateTime, Utc};
use projector::LimitView;
use rust_decimal::Decimal;
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

fn tightest<'a>(limits: &'a [LimitView], units: &[Unit]) -> Option<&'a LimitView> {
    limits
        .iter()
        .filter(|l| units.contains(&l.unit))
        .min_by(|a, b| {
            let ratio = |l: &LimitView| {
                if l.cap.is_zero() {
                    Decimal::ZERO
                } else {
                    l.remaining / l.cap
                }
            };
            ratio(a).cmp(&ratio(b)).then(a.remaining.cmp(&b.remaining))
        })
}

pub fn rate_limit_headers(headers: &mut HeaderMap, limits: &[LimitView], now: DateTime<Utc>) {
    let kinds = [
        ("requests", vec![Unit::Requests]),
        (
            "tokens",
            vec![Unit::Tokens, Unit::InputTokens, Unit::OutputTokens],
        ),
    ];
    for (suffix, units) in kinds {
        let Some(l) = tightest(limits, &units) else {
            continue;
        };
        let reset = l
            .resets_at
            .map(|at| duration((at - now).num_seconds().max(0)))
            .unwrap_or_else(|| "never".into());
        for (name, value) in [
            ("limit", l.cap.normalize().to_string()),
            ("remaining", l.remaining.normalize().to_string()),
            ("reset", reset),
        ] {
            if let (Ok(n), Ok(v)) = (
                format!("x-ratelimit-{name}-{suffix}").parse::<axum::http::HeaderName>(),
                HeaderValue::from_str(&value),
            ) {
                headers.insert(n, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reset_durations_read_like_openai() {
        assert_eq!(super::duration(1), "1s");
        assert_eq!(super::duration(360), "6m0s");
        assert_eq!(super::duration(7384), "2h3m4s");
    }
}

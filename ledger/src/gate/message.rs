//! What a caller is told when a hold is refused: the limit message (the
//! tier's template or the default) and when to retry. Shared by ingest and
//! the proxy so both say the same thing.

use super::decide::Violation;
use super::Denied;
use chrono::{DateTime, SecondsFormat, Utc};
use projector::LimitView;
use rust_decimal::{Decimal, RoundingStrategy};
use schemas::plan::{template_pieces, Piece};
use schemas::Unit;

/// Seconds until a retry can succeed, at least one.
pub fn retry_after_secs(at: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    let ms = (at - now).num_milliseconds().max(0);
    ((ms + 999) / 1000).max(1)
}

pub fn denial_message(tier: &schemas::plan::Tier, d: &Denied) -> String {
    match &d.violation {
        Violation::Concurrency { max } => {
            format!("too many requests in flight: at most {max} at once")
        }
        Violation::Limit { index, requested } => {
            let Some(view) = d.limits.get(*index) else {
                return "limit exceeded".into();
            };
            let base = render(tier.message.as_deref(), view, tier.deep_link.as_deref());
            if tier.message.is_some() {
                return base;
            }
            format!(
                "{base} (this request needs {})",
                amount(
                    *requested,
                    &view.unit,
                    view.cap,
                    RoundingStrategy::AwayFromZero
                )
            )
        }
    }
}

const DEFAULT_MESSAGE: &str = "limit exceeded: {{usage}} of {{limit}} {{unit}} per {{window}} used or held{{scope}}; resets at {{resets_at}}";
const DEFAULT_LIFETIME_MESSAGE: &str =
    "limit exceeded: {{usage}} of {{limit}} {{unit}} used or held in total{{scope}}; this limit does not reset";

/// Fills a tier's message template (its `{{placeholders}}`,
/// [`schemas::plan::MESSAGE_PLACEHOLDERS`]), or the default message. One
/// pass: a value is never read as a template itself. A name the plan check
/// would now refuse (a plan stored before it) stays as written.
pub fn render(template: Option<&str>, v: &LimitView, deep_link: Option<&str>) -> String {
    let template = template.unwrap_or(if v.resets_at.is_some() {
        DEFAULT_MESSAGE
    } else {
        DEFAULT_LIFETIME_MESSAGE
    });
    let mut out = String::with_capacity(template.len() + 64);
    for piece in template_pieces(template) {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Placeholder(name) => match name {
                "usage" => out.push_str(&amount(
                    v.used + v.held,
                    &v.unit,
                    v.cap,
                    RoundingStrategy::AwayFromZero,
                )),
                "limit" => out.push_str(&amount(v.cap, &v.unit, v.cap, RoundingStrategy::ToZero)),
                "remaining" => out.push_str(&amount(
                    v.remaining,
                    &v.unit,
                    v.cap,
                    RoundingStrategy::ToZero,
                )),
                "unit" => out.push_str(v.unit.as_str()),
                "window" => out.push_str(v.window.as_str()),
                "resets_at" => match v.resets_at {
                    Some(at) => out.push_str(&at.to_rfc3339_opts(SecondsFormat::Secs, true)),
                    None => out.push_str("never"),
                },
                "scope" => {
                    if let Some(model) = &v.model {
                        out.push_str(" for ");
                        out.push_str(model);
                    }
                }
                "deep_link" => out.push_str(deep_link.unwrap_or_default()),
                unknown => {
                    out.push_str("{{");
                    out.push_str(unknown);
                    out.push_str("}}");
                }
            },
        }
    }
    out
}

/// An amount as a person reads it: counted units whole, dollars to the cent
/// (or to the cap's own precision, for caps below a cent's resolution),
/// rounded `strategy`: what is used up, what is left down.
fn amount(value: Decimal, unit: &Unit, cap: Decimal, strategy: RoundingStrategy) -> String {
    if *unit != Unit::Usd {
        return value.normalize().to_string();
    }
    let places = cap.normalize().scale().max(2);
    let mut shown = value.round_dp_with_strategy(places, strategy);
    shown.rescale(places);
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;
    use schemas::Window;

    fn view(unit: Unit, window: Window, cap: Decimal, used: Decimal, held: Decimal) -> LimitView {
        LimitView {
            unit,
            window,
            model: None,
            cap,
            used,
            held,
            remaining: (cap - used - held).max(Decimal::ZERO),
            resets_at: (window != Window::Lifetime)
                .then(|| "2026-12-01T00:00:00Z".parse().unwrap()),
        }
    }

    #[test]
    fn dollars_read_to_the_cent_counts_whole() {
        let v = view(
            Unit::Usd,
            Window::Month,
            dec!(5),
            dec!(4.991234),
            dec!(0.004),
        );
        assert_eq!(
            render(
                Some("{{usage}} of ${{limit}}, ${{remaining}} left"),
                &v,
                None
            ),
            "5.00 of $5.00, $0.00 left"
        );
        let v = view(
            Unit::Usd,
            Window::Day,
            dec!(0.005),
            dec!(0.0012345),
            dec!(0),
        );
        assert_eq!(
            render(Some("{{usage}}/{{limit}} {{remaining}}"), &v, None),
            "0.002/0.005 0.003",
            "a cap finer than a cent keeps its precision"
        );
        let v = view(Unit::Tokens, Window::Day, dec!(1000), dec!(990), dec!(20));
        assert_eq!(
            render(
                Some("{{ usage }}/{{limit}} {{unit}} per {{window}}"),
                &v,
                None
            ),
            "1010/1000 tokens per day"
        );
    }

    #[test]
    fn a_lifetime_limit_does_not_say_it_resets() {
        let v = view(Unit::Requests, Window::Lifetime, dec!(3), dec!(3), dec!(0));
        assert_eq!(
            render(None, &v, None),
            "limit exceeded: 3 of 3 requests used or held in total; this limit does not reset"
        );
        let v = view(Unit::Requests, Window::Day, dec!(3), dec!(3), dec!(0));
        assert_eq!(
            render(None, &v, None),
            "limit exceeded: 3 of 3 requests per day used or held; resets at 2026-12-01T00:00:00Z"
        );
    }

    #[test]
    fn values_are_not_read_as_templates() {
        let mut v = view(Unit::Requests, Window::Day, dec!(3), dec!(3), dec!(0));
        v.model = Some("{{unit}}*".into());
        assert_eq!(
            render(
                Some("used{{scope}}: {{deep_link}} {{old}}"),
                &v,
                Some("app://{{limit}}")
            ),
            "used for {{unit}}*: app://{{limit}} {{old}}"
        );
    }
}

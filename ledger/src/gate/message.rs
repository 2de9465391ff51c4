//! What a caller is told when a hold is refused: the limit message (the
//! tier's template or the default) and when to retry. Shared by ingest and
//! the proxy so both say the same thing.

use super::decide::Violation;
use super::Denied;
use chrono::{DateTime, Utc};
use projector::LimitView;

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
            let base = render(tier.message.as_deref(), view);
            if tier.message.is_some() {
                return base;
            }
            format!("{base} (this request needs {requested})")
        }
    }
}

/// Fills a tier's message template, or the default message.
pub fn render(template: Option<&str>, v: &LimitView) -> String {
    let resets = v
        .resets_at
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "never".into());
    let scope = v
        .model
        .as_ref()
        .map(|m| format!(" for {m}"))
        .unwrap_or_default();
    let template = template.unwrap_or("limit exceeded: {{usage}} of {{limit}} {{unit}} per {{window}} used or held{{scope}}; resets at {{resets_at}}");
    template
        .replace("{{usage}}", &(v.used + v.held).normalize().to_string())
        .replace("{{limit}}", &v.cap.normalize().to_string())
        .replace("{{unit}}", v.unit.as_str())
        .replace("{{window}}", v.window.as_str())
        .replace("{{resets_at}}", &resets)
        .replace("{{scope}}", &scope)
}

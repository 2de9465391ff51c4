//! Plans: a project's tiers and the policies (limits) of each tier, as written
//! by users in YAML and stored as JSON in the control plane.
//!
//! Parsing validates everything and names the offending line, so a bad plan
//! is refused before it can reach enforcement.

use crate::units::{Quantity, Unit};
use crate::window::Window;
use rust_decimal::Decimal;
use serde::{de, Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

/// A project's plan: its tiers and which one applies when a caller names none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub default_tier: String,
    pub tiers: BTreeMap<String, Tier>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Most holds open at once per identity.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "positive_u32"
    )]
    pub concurrency: Option<u32>,
    /// Models this tier may call (globs); absent means any model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<ModelGlob>>,
    /// Template shown when a limit is hit, with the [`MESSAGE_PLACEHOLDERS`]
    /// (`{{usage}}`, `{{limit}}`…) filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Where the app should send a user who hit a limit (an upgrade page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deep_link: Option<String>,
    #[serde(default)]
    pub limits: Vec<Limit>,
}

/// One policy: at most `cap` of `unit` per `window`, for models matching `model`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub unit: Unit,
    pub window: Window,
    #[serde(deserialize_with = "non_negative")]
    pub cap: Quantity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelGlob>,
}

/// A model name or glob (`*` any run of characters, `?` one character).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ModelGlob(pub String);

impl<'de> Deserialize<'de> for ModelGlob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() || s.len() > 200 || s.chars().any(char::is_control) {
            return Err(de::Error::custom(
                "model must be a model name or glob of 1-200 printable characters",
            ));
        }
        Ok(ModelGlob(s))
    }
}

impl ModelGlob {
    pub fn matches(&self, model: &str) -> bool {
        glob_match(self.0.as_bytes(), model.as_bytes())
    }
}

/// Whether `model` matches the glob `pattern` (as [`ModelGlob::matches`],
/// for a glob held as text, such as a limits view's `model`).
pub fn glob_matches(pattern: &str, model: &str) -> bool {
    glob_match(pattern.as_bytes(), model.as_bytes())
}

/// Whether a policy scoped to `scope` applies to usage of `model`.
pub fn scope_matches(scope: Option<&ModelGlob>, model: Option<&str>) -> bool {
    match (scope, model) {
        (None, _) => true,
        (Some(glob), Some(model)) => glob.matches(model),
        (Some(_), None) => false,
    }
}

fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((bp, bt)) => {
                    p = bp + 1;
                    t = bt + 1;
                    backtrack = Some((bp, bt + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

fn positive_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let v = u32::deserialize(d)?;
    if v == 0 {
        return Err(de::Error::custom("concurrency must be at least 1"));
    }
    Ok(Some(v))
}

fn non_negative<'de, D: Deserializer<'de>>(d: D) -> Result<Quantity, D::Error> {
    let q = Quantity::deserialize(d)?;
    if q.0 < Decimal::ZERO {
        return Err(de::Error::custom("cap must not be negative"));
    }
    Ok(q)
}

/// What a tier's `message` may name, as `{{name}}` (spaces inside the braces
/// allowed), and what each becomes (`ledger::gate::message::render`): the
/// amount used or held in the limit's period, its cap, what is left of it,
/// its unit, its window, when it resets (RFC 3339, `never` for a lifetime
/// limit), the model scope it applies to (` for gpt-4o*`, empty for every
/// model), and the tier's `deep_link` (empty if it has none).
pub const MESSAGE_PLACEHOLDERS: [&str; 8] = [
    "usage",
    "limit",
    "remaining",
    "unit",
    "window",
    "resets_at",
    "scope",
    "deep_link",
];

/// Longest `message` a tier may have, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// A template's pieces: literal text, and the names between `{{` and `}}`
/// (trimmed). A `{{` without its `}}` is literal text.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    Placeholder(&'a str),
}

/// Splits `template` into [`Piece`]s, in order.
pub fn template_pieces(template: &str) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(first_open) = rest.find("{{") {
        let Some(close) = rest[first_open + 2..]
            .find("}}")
            .map(|c| first_open + 2 + c)
        else {
            break;
        };
        // The `{{` nearest the `}}` opens the name: an earlier one left
        // unclosed (`{{ a {{usage}}`) or a third brace (`{{{usage}}}`) is text.
        let open = first_open + rest[first_open..close].rfind("{{").unwrap_or(0);
        if open > 0 {
            pieces.push(Piece::Text(&rest[..open]));
        }
        pieces.push(Piece::Placeholder(rest[open + 2..close].trim()));
        rest = &rest[close + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    pieces
}

/// A plan that cannot be used, with the line it comes from when known.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{message}")]
pub struct PlanError {
    pub message: String,
}

/// The prefixes that pick a built-in provider explicitly (`xai/grok-2`):
/// the call is limited, recorded and priced under the bare id (`grok-2`).
pub const BUILT_IN_PREFIXES: [&str; 5] = ["openai", "anthropic", "gemini", "google", "xai"];

fn line_of(text: &str, needle: &str) -> String {
    match text.lines().position(|l| l.contains(needle)) {
        Some(i) => format!("line {}: ", i + 1),
        None => String::new(),
    }
}

/// "line N: " of the second limit of tier `tier` whose line names both
/// `unit` and `window` (a repeated limit), else of the tier's header.
fn line_of_repeat(text: &str, tier: &str, unit: &str, window: &str) -> String {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let lines: Vec<&str> = text.lines().collect();
    let header = lines.iter().position(|l| {
        let t = l.trim_start();
        t.strip_prefix(tier)
            .is_some_and(|rest| rest.trim_start().starts_with(':'))
    });
    let Some(header) = header else {
        return String::new();
    };
    let mut names = lines[header + 1..]
        .iter()
        .enumerate()
        .take_while(|(_, l)| l.trim().is_empty() || indent(l) > indent(lines[header]))
        .filter(|(_, l)| {
            let words: Vec<&str> = l
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
                .collect();
            words.contains(&unit) && words.contains(&window)
        })
        .map(|(i, _)| header + 1 + i);
    let line = names.nth(1).unwrap_or(header);
    format!("line {}: ", line + 1)
}

/// A tier's message: bounded, and naming only [`MESSAGE_PLACEHOLDERS`] (a
/// misspelt one would reach users as written).
fn check_message(text: &str, tier: &str, message: &str) -> Result<(), PlanError> {
    if message.len() > MAX_MESSAGE_BYTES {
        return Err(PlanError {
            message: format!(
                "{}tier `{tier}`: message is {} bytes; at most {MAX_MESSAGE_BYTES}",
                line_of(text, "message"),
                message.len()
            ),
        });
    }
    for piece in template_pieces(message) {
        if let Piece::Placeholder(name) = piece {
            if !MESSAGE_PLACEHOLDERS.contains(&name) {
                return Err(PlanError {
                    message: format!(
                        "{}tier `{tier}`: message names `{{{{{name}}}}}`, which is not one of {}",
                        line_of(text, if name.is_empty() { "{{" } else { name }),
                        MESSAGE_PLACEHOLDERS
                            .iter()
                            .map(|p| format!("{{{{{p}}}}}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
    }
    Ok(())
}

impl Plan {
    /// Parses and validates a YAML plan.
    pub fn from_yaml(text: &str) -> Result<Plan, PlanError> {
        let plan: Plan = serde_yaml::from_str(text).map_err(|e| PlanError {
            message: e.to_string(),
        })?;
        plan.validate(text)?;
        Ok(plan)
    }

    fn validate(&self, text: &str) -> Result<(), PlanError> {
        if !self.tiers.contains_key(&self.default_tier) {
            return Err(PlanError {
                message: format!(
                    "{}default_tier `{}` is not one of the tiers ({})",
                    line_of(text, "default_tier"),
                    self.default_tier,
                    self.tiers.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        }
        for (name, tier) in &self.tiers {
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid_name {
                return Err(PlanError {
                    message: format!(
                        "{}tier name `{name}` must be 1-64 letters, digits, `_` or `-`",
                        line_of(text, name)
                    ),
                });
            }
            if let Some(message) = &tier.message {
                check_message(text, name, message)?;
            }
            if let Some(link) = &tier.deep_link {
                if link.is_empty() || link.len() > 2048 || link.chars().any(char::is_control) {
                    return Err(PlanError {
                        message: format!(
                            "{}tier `{name}`: deep_link must be 1-2048 printable characters",
                            line_of(text, "deep_link")
                        ),
                    });
                }
            }
            let mut seen = std::collections::HashSet::new();
            for limit in &tier.limits {
                if limit.unit.is_counting() && !limit.cap.0.fract().is_zero() {
                    return Err(PlanError {
                        message: format!(
                            "{}tier `{name}`: a cap on {} must be a whole number, not {}",
                            line_of(text, &limit.cap.0.to_string()),
                            limit.unit,
                            limit.cap.0
                        ),
                    });
                }
                if let Some(glob) = &limit.model {
                    if let Some((prefix, rest)) = glob
                        .0
                        .split_once('/')
                        .filter(|(prefix, _)| BUILT_IN_PREFIXES.contains(prefix))
                    {
                        return Err(PlanError {
                            message: format!(
                                "{}tier `{name}`: limits name a built-in provider's models by \
                                 their bare id: `model: \"{rest}\"`, not `{prefix}/{rest}` (the \
                                 prefix would match no call, and the limit apply to none); \
                                 custom providers' models keep theirs (`groq/*`)",
                                line_of(text, &glob.0),
                            ),
                        });
                    }
                }
                if !seen.insert((&limit.unit, limit.window, limit.model.as_ref())) {
                    return Err(PlanError {
                        message: format!(
                            "{}tier `{name}`: two limits on {} per {}{}; keep one",
                            line_of_repeat(
                                text,
                                name,
                                &limit.unit.to_string(),
                                &limit.window.to_string()
                            ),
                            limit.unit,
                            limit.window,
                            limit
                                .model
                                .as_ref()
                                .map(|m| format!(" for model {}", m.0))
                                .unwrap_or_default()
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// The tier named `requested`, or the default tier.
    pub fn tier(&self, requested: Option<&str>) -> Option<(&str, &Tier)> {
        let name = requested.unwrap_or(&self.default_tier);
        self.tiers.get_key_value(name).map(|(k, v)| (k.as_str(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
default_tier: free
tiers:
  free:
    concurrency: 2
    limits:
      - { unit: requests, window: minute, cap: 5 }
      - { unit: requests, window: day, cap: 50 }
      - { unit: tokens, window: day, cap: 20000, model: "gpt-4o*" }
      - { unit: usd, window: month, cap: "2.50" }
  pro:
    limits:
      - { unit: images, window: lifetime, cap: 3 }
"#;

    #[test]
    fn the_documented_plan_parses() {
        let plan = Plan::from_yaml(GOOD).unwrap();
        let (name, free) = plan.tier(None).unwrap();
        assert_eq!(name, "free");
        assert_eq!(free.concurrency, Some(2));
        assert_eq!(free.limits[3].cap.0.to_string(), "2.50");
        assert_eq!(
            plan.tier(Some("pro")).unwrap().1.limits[0].unit,
            Unit::Custom("images".into())
        );
    }

    #[test]
    fn caps_of_counting_units_are_whole_and_scopes_name_built_in_models_bare() {
        let bad = GOOD.replace("cap: 50 }", "cap: 2.5 }");
        let err = Plan::from_yaml(&bad).unwrap_err().message;
        assert!(
            err.contains("whole number") && err.contains("line 8"),
            "{err}"
        );
        // Dollars may have cents.
        assert!(Plan::from_yaml(&GOOD.replace("\"2.50\"", "\"2.55\"")).is_ok());
        for prefixed in ["xai/*", "openai/gpt-4o*", "google/gemini-*"] {
            let bad = GOOD.replace("\"gpt-4o*\"", &format!("\"{prefixed}\""));
            let err = Plan::from_yaml(&bad).unwrap_err().message;
            assert!(
                err.contains("bare id") && err.contains("line 9"),
                "{prefixed}: {err}"
            );
        }
        assert!(Plan::from_yaml(&GOOD.replace("\"gpt-4o*\"", "\"groq/*\"")).is_ok());
    }

    #[test]
    fn bad_plans_name_the_line() {
        let bad = GOOD.replace("cap: 50 }", "cap: -50 }");
        let err = Plan::from_yaml(&bad).unwrap_err().message;
        assert!(
            err.contains("cap must not be negative") && err.contains("line 8"),
            "{err}"
        );
        let bad = GOOD.replace("window: day, cap: 50", "window: fortnight, cap: 50");
        let err = Plan::from_yaml(&bad).unwrap_err().message;
        assert!(err.contains("fortnight") && err.contains("line 8"), "{err}");
        let bad = GOOD.replace("default_tier: free", "default_tier: gold");
        let err = Plan::from_yaml(&bad).unwrap_err().message;
        assert!(err.starts_with("line 2:") && err.contains("gold"), "{err}");
        let bad = GOOD.replace("concurrency: 2", "concurency: 2");
        assert!(Plan::from_yaml(&bad)
            .unwrap_err()
            .message
            .contains("line 5"));
        // A repeated limit: the line of the repeat.
        let bad = GOOD.replace("window: minute, cap: 5", "window: day, cap: 5");
        let err = Plan::from_yaml(&bad).unwrap_err().message;
        assert!(
            err.starts_with("line 8:") && err.contains("two limits on requests per day"),
            "{err}"
        );
    }

    #[test]
    fn globs_match_models() {
        let g = ModelGlob("gpt-4o*".into());
        assert!(g.matches("gpt-4o") && g.matches("gpt-4o-mini"));
        assert!(!g.matches("gpt-4") && !g.matches("xgpt-4o"));
        assert!(ModelGlob("claude-?-*".into()).matches("claude-3-opus"));
        assert!(scope_matches(None, None));
        assert!(!scope_matches(Some(&g), None));
    }

    fn with_message(message: &str) -> String {
        format!(
            "default_tier: free\ntiers:\n  free:\n    deep_link: \"app://upgrade\"\n    message: {}\n    limits:\n      - {{ unit: requests, window: day, cap: 5 }}\n",
            serde_json::to_string(message).unwrap()
        )
    }

    #[test]
    fn a_message_names_only_known_placeholders() {
        let every = MESSAGE_PLACEHOLDERS
            .iter()
            .map(|p| format!("{{{{{p}}}}}"))
            .collect::<Vec<_>>()
            .join(" ");
        Plan::from_yaml(&with_message(&every)).unwrap();
        Plan::from_yaml(&with_message("{{ usage }}/{{limit}}; no braces {{ here")).unwrap();
        let err = Plan::from_yaml(&with_message("only {{remaning}} left"))
            .unwrap_err()
            .message;
        assert!(err.starts_with("line 5: tier `free`"), "{err}");
        assert!(err.contains("`{{remaning}}`"), "{err}");
        assert!(err.contains("{{remaining}}"), "lists the known ones: {err}");
        let err = Plan::from_yaml(&with_message("{{}}")).unwrap_err().message;
        assert!(err.contains("`{{}}`"), "{err}");
        let err = Plan::from_yaml(&with_message(&"x".repeat(MAX_MESSAGE_BYTES + 1)))
            .unwrap_err()
            .message;
        assert!(err.contains("at most 2048"), "{err}");
        let bad_link = with_message("over").replace("app://upgrade", "app://up\\ngrade");
        let err = Plan::from_yaml(&bad_link).unwrap_err().message;
        assert!(err.contains("deep_link"), "{err}");
    }

    #[test]
    fn templates_split_into_text_and_placeholders() {
        use Piece::{Placeholder as P, Text as T};
        assert_eq!(
            template_pieces("used {{ usage }} of {{limit}}{{unit}}!"),
            vec![
                T("used "),
                P("usage"),
                T(" of "),
                P("limit"),
                P("unit"),
                T("!")
            ]
        );
        assert_eq!(template_pieces("{{ open"), vec![T("{{ open")]);
        assert_eq!(template_pieces(""), vec![]);
        assert_eq!(template_pieces("}}{{x}}"), vec![T("}}"), P("x")]);
        assert_eq!(
            template_pieces("{{{usage}}}"),
            vec![T("{"), P("usage"), T("}")]
        );
        assert_eq!(
            template_pieces("a {{ b {{usage}}"),
            vec![T("a {{ b "), P("usage")]
        );
    }
}

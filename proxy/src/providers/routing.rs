//! Which provider serves a model: the client's model id in, a [`Route`] out.
//!
//! Rules, first match wins:
//! 1. `provider/model` picks the provider explicitly: `openai/`, `anthropic/`,
//!    `gemini/` (or `google/`), `xai/`, or the name of a custom
//!    OpenAI-compatible provider registered by the project. The prefix is
//!    stripped from the upstream model (`together/meta-llama/Llama-3` sends
//!    `meta-llama/Llama-3`).
//! 2. Otherwise by family: `gpt-*`, `o1*`, `o3*`, `o4*`, `chatgpt-*`, `ft:*` →
//!    OpenAI; `claude-*` → Anthropic; `gemini-*` → Gemini; `grok-*` → xAI.
//! 3. Anything else is refused with a message telling how to prefix it.
//!
//! Base URLs come from [`BaseUrls`]; the library never reads the environment
//! itself ([`BaseUrls::from_env`] is for the binary's start-up).

use serde::{Deserialize, Serialize};

/// Which wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
    Gemini,
    Xai,
    /// A project-registered OpenAI-compatible provider.
    Custom,
}

impl ProviderKind {
    /// True for providers that take OpenAI's request and answer as they are.
    pub fn is_openai_compatible(self) -> bool {
        matches!(
            self,
            ProviderKind::OpenAi | ProviderKind::Xai | ProviderKind::Custom
        )
    }
}

/// A project's OpenAI-compatible provider (Together, Groq, a self-hosted vLLM, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomProvider {
    /// The prefix clients use: `name/model`.
    pub name: String,
    /// Base URL including its version path, e.g. `https://api.together.xyz/v1`;
    /// requests go to `{base_url}/chat/completions`.
    pub base_url: String,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub kind: ProviderKind,
    /// `openai`, `anthropic`, `gemini`, `xai`, or the custom provider's name.
    /// Also the prefix tried first when looking up prices.
    pub provider: String,
    /// The model id to send upstream (prefix stripped).
    pub upstream_model: String,
    /// Base URL without a trailing slash.
    pub base_url: String,
}

/// Why no provider could be chosen. Maps to HTTP 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("model is empty")]
    EmptyModel,
    #[error("model '{model}' has no model name after '{prefix}/'")]
    EmptyUpstreamModel { model: String, prefix: String },
    #[error("unknown provider '{prefix}' in model '{model}': use openai/, anthropic/, gemini/, xai/ or a custom provider registered for this project")]
    UnknownProvider { model: String, prefix: String },
    #[error("cannot tell which provider serves model '{model}': prefix it with the provider, e.g. 'openai/{model}'")]
    UnknownModel { model: String },
}

/// Base URLs of the built-in providers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseUrls {
    /// Includes `/v1`.
    pub openai: String,
    /// Bare host; `/v1/messages` is appended.
    pub anthropic: String,
    /// Bare host; `/v1beta/models/…` is appended.
    pub gemini: String,
    /// Includes `/v1`.
    pub xai: String,
}

impl Default for BaseUrls {
    fn default() -> Self {
        BaseUrls {
            openai: "https://api.openai.com/v1".to_owned(),
            anthropic: "https://api.anthropic.com".to_owned(),
            gemini: "https://generativelanguage.googleapis.com".to_owned(),
            xai: "https://api.x.ai/v1".to_owned(),
        }
    }
}

impl BaseUrls {
    /// Names of the variables [`BaseUrls::from_env`] reads.
    pub const ENV_OPENAI: &'static str = "TOLLGATE_OPENAI_BASE_URL";
    pub const ENV_ANTHROPIC: &'static str = "TOLLGATE_ANTHROPIC_BASE_URL";
    pub const ENV_GEMINI: &'static str = "TOLLGATE_GEMINI_BASE_URL";
    pub const ENV_XAI: &'static str = "TOLLGATE_XAI_BASE_URL";

    /// Defaults, overridden by `TOLLGATE_{OPENAI,ANTHROPIC,GEMINI,XAI}_BASE_URL`.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Defaults, overridden by whatever `lookup` returns for each variable
    /// name (empty values are ignored). Testable stand-in for the environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let pick = |name: &str, default: String| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .unwrap_or(default)
        };
        let d = BaseUrls::default();
        BaseUrls {
            openai: pick(Self::ENV_OPENAI, d.openai),
            anthropic: pick(Self::ENV_ANTHROPIC, d.anthropic),
            gemini: pick(Self::ENV_GEMINI, d.gemini),
            xai: pick(Self::ENV_XAI, d.xai),
        }
    }

    fn for_kind(&self, kind: ProviderKind) -> Option<&str> {
        match kind {
            ProviderKind::OpenAi => Some(&self.openai),
            ProviderKind::Anthropic => Some(&self.anthropic),
            ProviderKind::Gemini => Some(&self.gemini),
            ProviderKind::Xai => Some(&self.xai),
            ProviderKind::Custom => None,
        }
    }
}

/// Chooses the provider for `model` (see the module doc for the rules).
pub fn route(
    model: &str,
    custom: &[CustomProvider],
    base_urls: &BaseUrls,
) -> Result<Route, RouteError> {
    let model = model.trim();
    if model.is_empty() {
        return Err(RouteError::EmptyModel);
    }
    if let Some((prefix, rest)) = model.split_once('/') {
        return explicit(model, prefix, rest, custom, base_urls);
    }
    let kind = family(model).ok_or_else(|| RouteError::UnknownModel {
        model: model.to_owned(),
    })?;
    Ok(builtin(kind, model, base_urls))
}

fn explicit(
    model: &str,
    prefix: &str,
    rest: &str,
    custom: &[CustomProvider],
    base_urls: &BaseUrls,
) -> Result<Route, RouteError> {
    // The same names as `schemas::plan::BUILT_IN_PREFIXES`, whose models
    // plans name bare (a test below keeps the two together).
    let kind = match prefix {
        "openai" => Some(ProviderKind::OpenAi),
        "anthropic" => Some(ProviderKind::Anthropic),
        "gemini" | "google" => Some(ProviderKind::Gemini),
        "xai" => Some(ProviderKind::Xai),
        _ => None,
    };
    let custom = custom.iter().find(|c| c.name == prefix);
    if (kind.is_some() || custom.is_some()) && rest.trim().is_empty() {
        return Err(RouteError::EmptyUpstreamModel {
            model: model.to_owned(),
            prefix: prefix.to_owned(),
        });
    }
    match (kind, custom) {
        (Some(kind), _) => Ok(builtin(kind, rest, base_urls)),
        (None, Some(c)) => Ok(Route {
            kind: ProviderKind::Custom,
            provider: c.name.clone(),
            upstream_model: rest.to_owned(),
            base_url: trim_base(&c.base_url),
        }),
        (None, None) => Err(RouteError::UnknownProvider {
            model: model.to_owned(),
            prefix: prefix.to_owned(),
        }),
    }
}

fn family(model: &str) -> Option<ProviderKind> {
    const OPENAI: [&str; 6] = ["gpt-", "o1", "o3", "o4", "chatgpt-", "ft:"];
    if OPENAI.iter().any(|p| model.starts_with(p)) {
        Some(ProviderKind::OpenAi)
    } else if model.starts_with("claude-") {
        Some(ProviderKind::Anthropic)
    } else if model.starts_with("gemini-") {
        Some(ProviderKind::Gemini)
    } else if model.starts_with("grok-") {
        Some(ProviderKind::Xai)
    } else {
        None
    }
}

fn builtin(kind: ProviderKind, upstream_model: &str, base_urls: &BaseUrls) -> Route {
    let provider = match kind {
        ProviderKind::OpenAi => "openai",
        ProviderKind::Anthropic => "anthropic",
        ProviderKind::Gemini => "gemini",
        ProviderKind::Xai => "xai",
        ProviderKind::Custom => "custom",
    };
    Route {
        kind,
        provider: provider.to_owned(),
        upstream_model: upstream_model.to_owned(),
        base_url: trim_base(base_urls.for_kind(kind).unwrap_or_default()),
    }
}

fn trim_base(url: &str) -> String {
    url.trim().trim_end_matches('/').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefixes_plans_refuse_are_the_built_in_ones() {
        for prefix in schemas::plan::BUILT_IN_PREFIXES {
            let r = route(&format!("{prefix}/m"), &[], &BaseUrls::default()).unwrap();
            assert_ne!(r.kind, ProviderKind::Custom, "{prefix}");
            assert_eq!(r.upstream_model, "m", "{prefix}");
        }
    }

    fn kind_and_model(model: &str) -> Option<(ProviderKind, String)> {
        let custom = [CustomProvider {
            name: "together".to_owned(),
            base_url: "https://api.together.xyz/v1/".to_owned(),
        }];
        route(model, &custom, &BaseUrls::default())
            .ok()
            .map(|r| (r.kind, r.upstream_model))
    }

    #[test]
    fn families() {
        for m in [
            "gpt-4o",
            "gpt-5",
            "o1",
            "o1-mini",
            "o3-mini",
            "o4-mini",
            "chatgpt-4o-latest",
        ] {
            assert_eq!(
                kind_and_model(m),
                Some((ProviderKind::OpenAi, m.to_owned())),
                "{m}"
            );
        }
        assert_eq!(
            kind_and_model("claude-3-5-sonnet-20240620").map(|r| r.0),
            Some(ProviderKind::Anthropic)
        );
        assert_eq!(
            kind_and_model("gemini-2.0-flash").map(|r| r.0),
            Some(ProviderKind::Gemini)
        );
        assert_eq!(
            kind_and_model("grok-3").map(|r| r.0),
            Some(ProviderKind::Xai)
        );
    }

    #[test]
    fn explicit_prefixes_are_stripped() {
        assert_eq!(
            kind_and_model("openai/my-finetune"),
            Some((ProviderKind::OpenAi, "my-finetune".to_owned()))
        );
        assert_eq!(
            kind_and_model("anthropic/claude-x"),
            Some((ProviderKind::Anthropic, "claude-x".to_owned()))
        );
        assert_eq!(
            kind_and_model("gemini/gemini-2.5-pro"),
            Some((ProviderKind::Gemini, "gemini-2.5-pro".to_owned()))
        );
        assert_eq!(
            kind_and_model("xai/grok-4"),
            Some((ProviderKind::Xai, "grok-4".to_owned()))
        );
        assert_eq!(
            kind_and_model("together/meta-llama/Llama-3-70b"),
            Some((ProviderKind::Custom, "meta-llama/Llama-3-70b".to_owned()))
        );
    }

    #[test]
    fn base_urls_default_and_custom() {
        let custom = [CustomProvider {
            name: "together".to_owned(),
            base_url: "https://api.together.xyz/v1/".to_owned(),
        }];
        let urls = BaseUrls::default();
        let base = |m: &str| route(m, &custom, &urls).map(|r| r.base_url).ok();
        assert_eq!(base("gpt-4o").as_deref(), Some("https://api.openai.com/v1"));
        assert_eq!(base("grok-3").as_deref(), Some("https://api.x.ai/v1"));
        assert_eq!(
            base("claude-3-haiku").as_deref(),
            Some("https://api.anthropic.com")
        );
        assert_eq!(
            base("gemini-2.0-flash").as_deref(),
            Some("https://generativelanguage.googleapis.com")
        );
        assert_eq!(
            base("together/x").as_deref(),
            Some("https://api.together.xyz/v1")
        );
        let urls = BaseUrls::from_lookup(|name| {
            (name == BaseUrls::ENV_ANTHROPIC).then(|| "http://127.0.0.1:9/".to_owned())
        });
        assert_eq!(
            route("claude-3", &[], &urls)
                .map(|r| r.base_url)
                .ok()
                .as_deref(),
            Some("http://127.0.0.1:9")
        );
    }

    #[test]
    fn refusals() {
        let urls = BaseUrls::default();
        assert_eq!(route("", &[], &urls), Err(RouteError::EmptyModel));
        assert!(matches!(
            route("llama-3", &[], &urls),
            Err(RouteError::UnknownModel { .. })
        ));
        assert!(matches!(
            route("groq/llama-3", &[], &urls),
            Err(RouteError::UnknownProvider { .. })
        ));
        assert!(matches!(
            route("openai/", &[], &urls),
            Err(RouteError::EmptyUpstreamModel { .. })
        ));
    }
}

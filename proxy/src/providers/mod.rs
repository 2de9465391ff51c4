//! The provider layer: everything between the client's OpenAI-shaped request
//! and the provider's own wire format, as pure functions (no I/O).
//!
//! Flow for one call:
//! 1. [`parse_request`] — body bytes → [`ChatRequest`], or a [`RequestError`]
//!    naming the field (answer 400 with [`RequestError::to_openai`]).
//! 2. [`route`] — model id → [`Route`] (provider kind, upstream model, base URL).
//! 3. [`prepare_upstream`] — → [`UpstreamRequest`] (method, URL, headers with
//!    the key marked sensitive, body bytes, the output cap actually sent).
//! 4. Send it with any HTTP client, then either
//!    - non-stream: [`translate_response`] → OpenAI `chat.completion` bytes +
//!      [`Usage`], or a [`ProviderError`] with the provider's status and an
//!      OpenAI-shaped error body;
//!    - stream, 2xx: feed body chunks to [`StreamTranslator::push`], send what
//!      it returns, call [`StreamTranslator::finish`] at the end; read
//!      [`StreamTranslator::usage_so_far`] at any time (e.g. on cancel);
//!    - stream, non-2xx: the body is a plain error, use [`translate_error`].
//!
//! OpenAI, xAI and custom providers are passed through; Anthropic and Gemini
//! are translated both ways.

mod anthropic;
mod gemini;
pub mod openai;
mod passthrough;
mod response;
mod routing;
mod sse;
pub use sse::MAX_SSE_EVENT_BYTES;
mod stream;
mod upstream;
mod usage;
mod validate;

pub(crate) use anthropic::sends_tools as anthropic_sends_tools;
pub use anthropic::{ANTHROPIC_VERSION, DEFAULT_MAX_TOKENS as ANTHROPIC_DEFAULT_MAX_TOKENS};
pub use openai::{ChatRequest, ErrorBody};
pub use response::{
    translate_error, translate_response, translate_response_with, ProviderError, ResponseMeta,
};
pub use routing::{route, BaseUrls, CustomProvider, ProviderKind, Route, RouteError};
pub use stream::StreamTranslator;
pub use upstream::{prepare_upstream, PrepareError, ProviderKey, UpstreamRequest};
pub use usage::{estimate_output_tokens, Usage};
pub use validate::{parse_request, validate_request, RequestError};

/// Whether the model answers this request without reasoning although it
/// may reason: `reasoning_effort: "none"` where the provider can turn it
/// off (OpenAI's GPT-5.1 and later, Gemini before 3), or no effort named
/// to a model whose default is none (GPT-5.1 and later but their Codex
/// and Pro models; Gemini 2.5 Flash-Lite). Never for a custom provider: a
/// router may drop or remap the field, or take its own (`reasoning`).
pub fn reasoning_turned_off(route: &Route, request: &ChatRequest) -> bool {
    let effort = request
        .extra
        .get("reasoning_effort")
        .and_then(|e| e.as_str());
    match route.kind {
        ProviderKind::Gemini => gemini::thinking_off(&route.upstream_model, effort),
        ProviderKind::Anthropic | ProviderKind::Custom => false,
        ProviderKind::OpenAi | ProviderKind::Xai => match effort {
            Some(effort) => effort == "none",
            None => defaults_to_no_reasoning(&route.upstream_model),
        },
    }
}

/// GPT-5.1 and later point releases (`gpt-5.1`, `gpt-5.2-…`), whose
/// `reasoning_effort` defaults to `none`; not GPT-5 itself, nor the Codex
/// and Pro models, which reason by default.
fn defaults_to_no_reasoning(model: &str) -> bool {
    let model = model.rsplit('/').next().unwrap_or(model);
    if model.contains("codex") || model.contains("-pro") {
        return false;
    }
    model
        .strip_prefix("gpt-5.")
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|minor| minor.parse::<u32>().ok())
        .is_some_and(|minor| minor >= 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasoning_is_off_when_asked_or_by_the_models_default() {
        let off = |model: &str, effort: Option<&str>| {
            let custom = [CustomProvider {
                name: "groq".to_owned(),
                base_url: "https://api.groq.com/openai/v1".to_owned(),
            }];
            let route = route(model, &custom, &BaseUrls::default()).unwrap();
            let mut request = ChatRequest::default();
            if let Some(effort) = effort {
                request
                    .extra
                    .insert("reasoning_effort".into(), effort.into());
            }
            reasoning_turned_off(&route, &request)
        };
        assert!(off("o3", Some("none")));
        assert!(!off("o3", Some("low")));
        assert!(!off("o3", None));
        assert!(!off("gpt-5", None));
        assert!(off("gpt-5.1", None));
        assert!(off("gpt-5.2-2025-12-11", None));
        assert!(!off("gpt-5.1", Some("medium")));
        assert!(off("gemini-2.5-flash", Some("none")));
        assert!(!off("gemini-3-pro-preview", Some("none")));
        assert!(!off("claude-sonnet-4-5", Some("none")));
        assert!(!off("gpt-5.1-codex", None));
        assert!(!off("gpt-5.2-pro", None));
        assert!(
            !off("groq/gpt-5.1", None),
            "a router may ignore the default"
        );
        assert!(!off("groq/o3", Some("none")));
        assert!(off("gemini-2.5-flash-lite", None));
        assert!(!off("gemini-2.5-flash", None));
        assert!(!off("gemini-flash-latest", Some("none")), "may be Gemini 3");
    }
}

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

/// Whether the request turns the model's reasoning off
/// (`reasoning_effort: "none"`, where the provider can: OpenAI's GPT-5.1
/// and later, Gemini before 3).
pub fn reasoning_turned_off(route: &Route, request: &ChatRequest) -> bool {
    let effort = request
        .extra
        .get("reasoning_effort")
        .and_then(|e| e.as_str());
    match route.kind {
        ProviderKind::Gemini => gemini::thinking_off(&route.upstream_model, effort),
        ProviderKind::Anthropic => false,
        ProviderKind::OpenAi | ProviderKind::Xai | ProviderKind::Custom => effort == Some("none"),
    }
}

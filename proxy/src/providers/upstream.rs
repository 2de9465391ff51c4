//! Building the HTTP request to send upstream: URL, headers and body for the
//! routed provider, independent of any HTTP client.
//!
//! Invariants: the provider key only ever leaves through a header marked
//! sensitive (so `Debug` of the request prints `Sensitive`), and
//! [`ProviderKey`] itself prints `***`. The output cap actually sent is
//! returned in [`UpstreamRequest::max_output_tokens`] so the caller can size
//! its hold from the same number.

use super::openai::{ChatRequest, FunctionCall, FunctionDefinition, StreamOptions, Tool, ToolCall};
use super::routing::{ProviderKind, Route};
use super::{anthropic, gemini};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Method};
use std::fmt;

/// A provider API key. Never printed: `Debug` shows `***` and there is no
/// `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderKey(String);

impl ProviderKey {
    pub fn new(key: impl Into<String>) -> Self {
        ProviderKey(key.into())
    }

    /// The secret itself, for building the request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProviderKey(***)")
    }
}

/// A request ready for any HTTP client (`crate::upstream` sends these `http` types).
/// `Debug` shows the body's size only: it holds the prompt.
#[derive(Clone)]
pub struct UpstreamRequest {
    pub method: Method,
    pub url: String,
    /// The key header is marked sensitive.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Whether the answer will be SSE (feed it to a `StreamTranslator`).
    pub stream: bool,
    /// The output cap sent upstream, if any.
    pub max_output_tokens: Option<u64>,
}

impl fmt::Debug for UpstreamRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &self.headers)
            .field("body_bytes", &self.body.len())
            .field("stream", &self.stream)
            .field("max_output_tokens", &self.max_output_tokens)
            .finish()
    }
}

/// Why a request could not be translated for its provider. All but
/// `Encode` are the client's to fix (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("'{field}' is not supported for {provider} models: {reason}")]
    Unsupported {
        provider: &'static str,
        field: String,
        reason: String,
    },
    #[error("invalid '{field}': {reason}")]
    InvalidField { field: String, reason: String },
    #[error("the provider key contains characters not allowed in an HTTP header")]
    InvalidKey,
    #[error("could not encode the upstream request")]
    Encode(#[from] serde_json::Error),
}

/// A conversation of system messages only, which OpenAI answers and
/// Anthropic and Gemini refuse (no `messages` / `contents` left once the
/// system prompt is taken out).
pub(crate) fn only_system(provider: &'static str) -> PrepareError {
    PrepareError::Unsupported {
        provider,
        field: "messages".to_owned(),
        reason:
            "at least one user or assistant message is needed besides system and developer messages"
                .to_owned(),
    }
}

/// Translates `request` for `route`'s provider.
///
/// `max_tokens` is the proxy's ceiling on output tokens (a budget clamp or the
/// model's limit): the upstream gets the smaller of it and the client's own
/// `max_completion_tokens`/`max_tokens`; when the client set neither, it is
/// sent as is. Anthropic requires a value: with neither, it gets
/// [`anthropic::DEFAULT_MAX_TOKENS`].
///
/// OpenAI, xAI and custom providers get the client's body unchanged except
/// for `model` (prefix stripped), the clamp, and, when streaming,
/// `stream_options.include_usage: true` so usage is always measured.
pub fn prepare_upstream(
    route: &Route,
    request: &ChatRequest,
    key: &ProviderKey,
    max_tokens: Option<u64>,
) -> Result<UpstreamRequest, PrepareError> {
    let stream = request.is_stream();
    let cap = match (request.requested_max_tokens(), max_tokens) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let (url, body, sent_cap) = match route.kind {
        ProviderKind::OpenAi | ProviderKind::Xai | ProviderKind::Custom => {
            if !key.expose().is_empty() {
                insert_secret(
                    &mut headers,
                    AUTHORIZATION,
                    &format!("Bearer {}", key.expose()),
                )?;
            }
            let body = openai_body(route, request, cap)?;
            (format!("{}/chat/completions", route.base_url), body, cap)
        }
        ProviderKind::Anthropic => {
            insert_secret(
                &mut headers,
                HeaderName::from_static("x-api-key"),
                key.expose(),
            )?;
            headers.insert(
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static(anthropic::ANTHROPIC_VERSION),
            );
            if let Some(beta) = request
                .anthropic_beta
                .as_deref()
                .and_then(|b| HeaderValue::from_str(b).ok())
            {
                headers.insert(HeaderName::from_static("anthropic-beta"), beta);
            }
            let cap = cap.unwrap_or(anthropic::DEFAULT_MAX_TOKENS);
            let body = anthropic::build_body(request, &route.upstream_model, cap, stream)?;
            (format!("{}/v1/messages", route.base_url), body, Some(cap))
        }
        ProviderKind::Gemini => {
            insert_secret(
                &mut headers,
                HeaderName::from_static("x-goog-api-key"),
                key.expose(),
            )?;
            let model = gemini_model_path(&route.upstream_model)?;
            let action = if stream {
                "streamGenerateContent?alt=sse"
            } else {
                "generateContent"
            };
            let body = gemini::build_body(request, &route.upstream_model, cap)?;
            (
                format!("{}/v1beta/models/{model}:{action}", route.base_url),
                body,
                cap,
            )
        }
    };
    Ok(UpstreamRequest {
        method: Method::POST,
        url,
        headers,
        body: Bytes::from(body),
        stream,
        max_output_tokens: sent_cap,
    })
}

/// The declaration of `tools[i]`, for a provider that only has function tools.
pub(crate) fn function_tool<'a>(
    tool: &'a Tool,
    i: usize,
    provider: &'static str,
) -> Result<&'a FunctionDefinition, PrepareError> {
    tool.function
        .as_ref()
        .ok_or_else(|| PrepareError::Unsupported {
            provider,
            field: format!("tools[{i}]"),
            reason: format!(
                "tools of type '{}' cannot be translated (function tools can)",
                tool.kind
            ),
        })
}

/// The function of `messages[i].tool_calls[j]`, for a provider that only has function calls.
pub(crate) fn function_call<'a>(
    call: &'a ToolCall,
    (i, j): (usize, usize),
    provider: &'static str,
) -> Result<&'a FunctionCall, PrepareError> {
    call.function
        .as_ref()
        .ok_or_else(|| PrepareError::Unsupported {
            provider,
            field: format!("messages[{i}].tool_calls[{j}]"),
            reason: format!(
                "tool calls of type '{}' cannot be translated (function calls can)",
                call.kind
            ),
        })
}

/// The error for a `tool_choice` other than a mode or a named function.
pub(crate) fn unsupported_tool_choice(provider: &'static str) -> PrepareError {
    PrepareError::Unsupported {
        provider,
        field: "tool_choice".to_owned(),
        reason: "only \"none\", \"auto\", \"required\" or a named function can be translated"
            .to_owned(),
    }
}

/// OpenAI's `response_format`, read for a provider that has to translate it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ResponseFormat<'a> {
    /// Absent, `null` or `{"type": "text"}`.
    Text,
    /// `json_object`: any JSON object.
    JsonObject,
    /// `json_schema`: JSON following `schema` (a JSON Schema object).
    JsonSchema {
        name: Option<&'a str>,
        description: Option<&'a str>,
        schema: &'a serde_json::Value,
    },
}

/// Reads `request.response_format` for `provider`: a `json_schema` without
/// a schema object, or a type missing or unknown, is a 400 naming the field.
pub(crate) fn response_format<'a>(
    request: &'a ChatRequest,
    provider: &'static str,
) -> Result<ResponseFormat<'a>, PrepareError> {
    use serde_json::Value;
    let Some(format) = request
        .extra
        .get("response_format")
        .filter(|f| !f.is_null())
    else {
        return Ok(ResponseFormat::Text);
    };
    let invalid = |field: &str, reason: &str| PrepareError::InvalidField {
        field: format!("response_format{field}"),
        reason: reason.to_owned(),
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let spec = format.get("json_schema");
            let text = |key: &str| spec.and_then(|s| s.get(key)).and_then(Value::as_str);
            let schema = spec
                .and_then(|s| s.get("schema"))
                .filter(|s| s.is_object())
                .ok_or_else(|| invalid(".json_schema.schema", "must be a JSON Schema object"))?;
            Ok(ResponseFormat::JsonSchema {
                name: text("name"),
                description: text("description"),
                schema,
            })
        }
        Some(other) => Err(PrepareError::Unsupported {
            provider,
            field: "response_format.type".to_owned(),
            reason: format!("'{other}' cannot be translated (text, json_object, json_schema can)"),
        }),
        None => Err(invalid(
            ".type",
            "must be 'text', 'json_object' or 'json_schema'",
        )),
    }
}

fn insert_secret(
    headers: &mut HeaderMap,
    name: HeaderName,
    value: &str,
) -> Result<(), PrepareError> {
    let mut value = HeaderValue::from_str(value).map_err(|_| PrepareError::InvalidKey)?;
    value.set_sensitive(true);
    headers.insert(name, value);
    Ok(())
}

/// Fields of routers behind a custom provider (OpenRouter's) that make a
/// call cost what the model it names does not: fallback models, answered
/// and billed as another model, and plugins and web search billed per use.
const UNPRICED_ROUTER_FIELDS: [(&str, &str); 3] = [
    (
        "models",
        "fallback models would be billed as another model than the one the call is priced as",
    ),
    ("plugins", "their fees are not in the price table"),
    (
        "web_search_options",
        "a search is billed per call, priced for OpenAI's own models only",
    ),
];

/// Output caps some OpenAI-compatible servers read besides `max_tokens`
/// (llama.cpp's `n_predict`, which wins over it; TGI's `max_new_tokens`):
/// held to the call's cap like `max_tokens`.
const OTHER_OUTPUT_CAPS: [&str; 2] = ["n_predict", "max_new_tokens"];

fn openai_body(
    route: &Route,
    request: &ChatRequest,
    cap: Option<u64>,
) -> Result<Vec<u8>, PrepareError> {
    let mut body = request.clone();
    body.model = route.upstream_model.clone();
    if route.kind == ProviderKind::Custom {
        if let Some((field, reason)) = UNPRICED_ROUTER_FIELDS
            .iter()
            .find(|(field, _)| body.extra.get(*field).is_some_and(|v| !v.is_null()))
        {
            return Err(PrepareError::Unsupported {
                provider: "custom",
                field: (*field).to_owned(),
                reason: (*reason).to_owned(),
            });
        }
        if let Some(cap) = cap {
            for field in OTHER_OUTPUT_CAPS {
                if let Some(value) = body.extra.get_mut(field) {
                    // Negative (llama.cpp's -1: until the context is full)
                    // or not a number: the cap.
                    let sent = value.as_u64().map_or(cap, |v| v.min(cap));
                    *value = sent.into();
                }
            }
        }
    }
    for message in &mut body.messages {
        if let Some(id) = &mut message.tool_call_id {
            gemini::strip_thought_signature(id);
        }
        for call in message.tool_calls.iter_mut().flatten() {
            gemini::strip_thought_signature(&mut call.id);
        }
    }
    if let Some(cap) = cap {
        match (
            body.max_completion_tokens.is_some(),
            body.max_tokens.is_some(),
        ) {
            (false, false) if route.kind == ProviderKind::Custom => body.max_tokens = Some(cap),
            (false, false) => body.max_completion_tokens = Some(cap),
            _ => {
                body.max_completion_tokens = body.max_completion_tokens.map(|v| v.min(cap));
                body.max_tokens = body.max_tokens.map(|v| v.min(cap));
            }
        }
    }
    if body.is_stream() {
        body.stream_options
            .get_or_insert_with(StreamOptions::default)
            .include_usage = Some(true);
    }
    Ok(serde_json::to_vec(&body)?)
}

/// The model goes into the URL path: allow only characters model ids use.
fn gemini_model_path(model: &str) -> Result<&str, PrepareError> {
    let ok = !model.is_empty()
        && model
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if ok {
        Ok(model)
    } else {
        Err(PrepareError::InvalidField {
            field: "model".to_owned(),
            reason: "Gemini model ids may only contain letters, digits, '-', '.' and '_'"
                .to_owned(),
        })
    }
}

/// An inline image from a `data:<mime>;base64,<data>` URL.
pub(crate) struct DataUrl<'a> {
    pub media_type: &'a str,
    pub data: &'a str,
}

pub(crate) fn parse_data_url(url: &str) -> Option<DataUrl<'_>> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?;
    Some(DataUrl { media_type, data })
}

/// The JSON object a tool call's `arguments` text holds (`""` means `{}`),
/// as Anthropic's `tool_use.input` and Gemini's `functionCall.args` must
/// be: arguments that are JSON but not an object (`[]`, `"x"`) are refused
/// here, as those providers would.
pub(crate) fn tool_arguments(
    arguments: &str,
    field: impl FnOnce() -> String,
) -> Result<serde_json::Value, PrepareError> {
    if arguments.trim().is_empty() {
        return Ok(serde_json::Value::Object(serde_json::Map::new()));
    }
    match serde_json::from_str(arguments) {
        Ok(object @ serde_json::Value::Object(_)) => Ok(object),
        _ => Err(PrepareError::InvalidField {
            field: field(),
            reason: "tool call arguments must be the text of a JSON object".to_owned(),
        }),
    }
}

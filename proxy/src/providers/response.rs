//! Non-streamed answers and provider errors, translated into OpenAI's shapes.
//!
//! Success: a `chat.completion` body plus normalised [`Usage`]. Failure: a
//! [`ProviderError`] carrying the provider's HTTP status and an OpenAI-shaped
//! error body (`{"error":{"message","type","param","code"}}`) to relay.
//! An error answer costs nothing: no usage is returned with it.

use super::openai::{ErrorBody, ErrorDetail};
use super::routing::ProviderKind;
use super::usage::Usage;
use super::{anthropic, gemini, passthrough};
use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;

/// What a translated answer says about itself when the provider does not:
/// its id, creation time and model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseMeta {
    /// Used when the provider gives no id.
    pub id: String,
    pub created_unix_s: i64,
    /// Used when the provider names no model.
    pub model: String,
}

impl ResponseMeta {
    /// A fresh `chatcmpl-<uuid v7>` id, created now.
    pub fn new(model: impl Into<String>) -> Self {
        ResponseMeta {
            id: format!("chatcmpl-{}", uuid::Uuid::now_v7().simple()),
            created_unix_s: chrono::Utc::now().timestamp(),
            model: model.into(),
        }
    }
}

/// A provider answer that is not a usable completion.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider refused or failed (non-2xx); relay `status` and `body`.
    #[error("the provider answered with status {status}")]
    Upstream { status: StatusCode, body: ErrorBody },
    /// A 2xx answer the proxy could not read. Relay as 502.
    #[error("the provider's answer could not be read: {reason}")]
    Malformed { reason: String },
}

impl ProviderError {
    /// The status to answer the client with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProviderError::Upstream { status, .. } => *status,
            ProviderError::Malformed { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The OpenAI-shaped error to answer the client with.
    pub fn to_openai(&self) -> ErrorBody {
        match self {
            ProviderError::Upstream { body, .. } => body.clone(),
            ProviderError::Malformed { .. } => ErrorBody::new(
                "server_error",
                "the provider returned an answer the proxy could not read",
            ),
        }
    }

    /// [`ProviderError::to_openai`] as JSON bytes.
    pub fn body_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(&self.to_openai()).unwrap_or_default())
    }
}

/// Translates a non-streamed answer (see [`translate_response_with`]); `model`
/// is reported if the provider names none.
pub fn translate_response(
    kind: ProviderKind,
    status: StatusCode,
    body: &[u8],
    model: &str,
) -> Result<(Bytes, Usage), ProviderError> {
    translate_response_with(kind, status, body, &ResponseMeta::new(model))
}

/// Translates a non-streamed answer into a `chat.completion` body and its
/// usage. OpenAI-compatible bodies are returned byte for byte.
pub fn translate_response_with(
    kind: ProviderKind,
    status: StatusCode,
    body: &[u8],
    meta: &ResponseMeta,
) -> Result<(Bytes, Usage), ProviderError> {
    if !status.is_success() {
        return Err(translate_error(kind, status, body));
    }
    let malformed = |err: serde_json::Error| ProviderError::Malformed {
        reason: json_error_position(&err),
    };
    if kind.is_openai_compatible() {
        let usage = passthrough::response_usage(body).map_err(malformed)?;
        return Ok((Bytes::copy_from_slice(body), usage));
    }
    let (response, usage) = match kind {
        ProviderKind::Anthropic => anthropic::translate(body, meta),
        _ => gemini::translate(body, meta),
    }
    .map_err(malformed)?;
    let json = serde_json::to_vec(&response).map_err(malformed)?;
    Ok((Bytes::from(json), usage))
}

/// A provider's error answer (any shape, even not JSON) as a
/// [`ProviderError::Upstream`] with OpenAI's error shape and the same status.
pub fn translate_error(kind: ProviderKind, status: StatusCode, body: &[u8]) -> ProviderError {
    let value: Option<Value> = serde_json::from_slice(body).ok();
    let error = value.as_ref().and_then(|v| v.get("error"));
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    // OpenAI-compatible servers differ: {"error":{"message"}}, {"error":
    // "…"}, a flat {"object":"error","message"} (older vLLM), or FastAPI's
    // {"detail": "…" or [{…}]}.
    let top = |name: &str| value.as_ref().and_then(|v| v.get(name));
    let message = text(error.and_then(|e| e.get("message")))
        .or_else(|| text(error))
        .or_else(|| text(top("message")))
        .or_else(|| top("detail").map(|d| text(Some(d)).unwrap_or_else(|| d.to_string())))
        .unwrap_or_else(|| format!("the provider answered with status {}", status.as_u16()));
    let kind_by_status = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    let detail = match kind {
        // {"error":{"message","type","param","code"}}; code may be a number.
        ProviderKind::OpenAi | ProviderKind::Xai | ProviderKind::Custom => ErrorDetail {
            message,
            kind: text(error.and_then(|e| e.get("type")))
                .unwrap_or_else(|| kind_by_status.to_owned()),
            param: text(error.and_then(|e| e.get("param"))),
            code: error.and_then(|e| e.get("code")).and_then(code_text),
        },
        // {"type":"error","error":{"type","message"}}
        ProviderKind::Anthropic => ErrorDetail {
            message,
            kind: text(error.and_then(|e| e.get("type")))
                .unwrap_or_else(|| kind_by_status.to_owned()),
            param: None,
            code: None,
        },
        // {"error":{"code":400,"message","status":"INVALID_ARGUMENT"}}
        ProviderKind::Gemini => ErrorDetail {
            message,
            kind: kind_by_status.to_owned(),
            param: None,
            code: text(error.and_then(|e| e.get("status"))),
        },
    };
    ProviderError::Upstream {
        status,
        body: ErrorBody { error: detail },
    }
}

/// Where and what kind of JSON error, without serde's message: that can
/// quote values from the answer, i.e. completion text.
pub(crate) fn json_error_position(err: &serde_json::Error) -> String {
    format!(
        "{:?} error at line {} column {}",
        err.classify(),
        err.line(),
        err.column()
    )
}

fn code_text(code: &Value) -> Option<String> {
    match code {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

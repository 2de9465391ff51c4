//! Google Gemini API (`POST {base}/v1beta/models/{model}:generateContent`, and
//! `:streamGenerateContent?alt=sse`): request translation from OpenAI's shape,
//! and answer translation (JSON and SSE) back into it.
//!
//! The `Content`/`Part` types serve both directions; unknown part kinds
//! (`executableCode`, `fileData`, …) are ignored when reading answers.

mod request;
mod response;
mod schema;
mod stream;

pub(crate) use request::{build_body, thinking_off};
pub(crate) use response::translate;
pub(crate) use stream::StreamHandler;

use super::openai::FinishReason;
use super::usage::GeminiUsage;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Content {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default)]
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Part {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Set on thought-summary parts; those are not shown to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_data: Option<Blob>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_call: Option<FunctionCallPart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_response: Option<FunctionResponsePart>,
    /// Gemini 3 signs its reasoning on a `functionCall` part and refuses the
    /// next turn unless the signature comes back on that part: it travels
    /// in the OpenAI tool call's id ([`tool_call_id`], [`split_tool_call_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought_signature: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Blob {
    pub mime_type: String,
    pub data: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FunctionCallPart {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub args: Value,
}

impl FunctionCallPart {
    /// The arguments as OpenAI sends them: a JSON object string, `{}` when
    /// Gemini left `args` out (it is optional) rather than `null`.
    pub fn arguments(&self) -> String {
        match &self.args {
            Value::Null => "{}".to_owned(),
            args => args.to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FunctionResponsePart {
    pub name: String,
    pub response: Value,
}

/// One answer (the whole non-streamed body, or one streamed event).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GenerateContentResponse {
    #[serde(default)]
    pub candidates: Vec<Candidate>,
    #[serde(default)]
    pub usage_metadata: Option<GeminiUsage>,
    #[serde(default)]
    pub model_version: Option<String>,
    #[serde(default)]
    pub response_id: Option<String>,
    #[serde(default)]
    pub prompt_feedback: Option<PromptFeedback>,
    /// Present when a stream fails midway.
    #[serde(default)]
    pub error: Option<ErrorInfo>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Candidate {
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PromptFeedback {
    #[serde(default)]
    pub block_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ErrorInfo {
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub status: Option<String>,
}

/// `finishReason` to OpenAI's `finish_reason`; a normal stop that made tool
/// calls is `tool_calls`, as with OpenAI.
pub(crate) fn finish_reason(reason: &str, made_tool_calls: bool) -> FinishReason {
    match reason {
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            FinishReason::ContentFilter
        }
        _ if made_tool_calls => FinishReason::ToolCalls,
        // STOP, OTHER, MALFORMED_FUNCTION_CALL, FINISH_REASON_UNSPECIFIED, …
        _ => FinishReason::Stop,
    }
}

/// Gemini call ids are optional: name the `index`-th call of an answer.
pub(crate) fn tool_call_id(
    part: &Part,
    call: &FunctionCallPart,
    answer_id: &str,
    index: u32,
) -> String {
    let id = call
        .id
        .clone()
        .unwrap_or_else(|| format!("call_{}_{index}", answer_id.trim_start_matches("chatcmpl-")));
    match &part.thought_signature {
        Some(signature) => format!("{id}{THOUGHT_SIGNATURE}{signature}"),
        None => id,
    }
}

/// Between a tool call's id and the thought signature it carries.
const THOUGHT_SIGNATURE: &str = "__thought__";

/// A tool call id made by [`tool_call_id`]: the id and the thought
/// signature to send back, if any.
pub(crate) fn split_tool_call_id(id: &str) -> (&str, Option<&str>) {
    match id.split_once(THOUGHT_SIGNATURE) {
        Some((id, signature)) if !signature.is_empty() => (id, Some(signature)),
        _ => (id, None),
    }
}

/// Drops a Gemini thought signature from a tool call id sent to another
/// provider (a conversation that changed model): Anthropic allows only
/// `[a-zA-Z0-9_-]` in ids and OpenAI limits their length.
pub(crate) fn strip_thought_signature(id: &mut String) {
    if let (plain, Some(_)) = split_tool_call_id(id) {
        *id = plain.to_owned();
    }
}

//! Anthropic Messages API (`POST {base}/v1/messages`): request translation
//! from OpenAI's shape, and answer translation (JSON and SSE) back into it.
//!
//! The wire types here are lenient readers of Anthropic's answers: unknown
//! block and event types are skipped, never an error, so a new Anthropic
//! feature degrades to "not shown" rather than a failed call.

mod request;
mod response;
mod stream;

pub(crate) use request::{build_body, sends_tools};
pub(crate) use response::translate;
pub(crate) use stream::StreamHandler;

use super::openai::FinishReason;
use serde::Deserialize;
use serde_json::Value;

/// Value of the `anthropic-version` header Tollgate speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The tool an OpenAI `response_format` becomes, since Claude has no JSON
/// mode: the request declares it with the format's schema and forces it
/// (`tool_choice`), and the answer's call to it comes back as the message's
/// text, as if the model had written that JSON. Reserved: a client tool
/// cannot take this name.
pub(crate) const RESPONSE_FORMAT_TOOL: &str = "tollgate_json_output";

/// `max_tokens` sent when neither the client nor the caller gave one
/// (Anthropic requires the field).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// A content block of an answer (non-stream `content[]`, stream
/// `content_block_start.content_block`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum AnswerBlock {
    Text {
        #[serde(default)]
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    Thinking {
        #[serde(default)]
        thinking: String,
    },
    #[serde(other)]
    Other,
}

/// `stop_reason` to OpenAI's `finish_reason`. A `tool_use` stop that called
/// none of the client's tools (only [`RESPONSE_FORMAT_TOOL`], whose input is
/// the answer) is a plain `stop`.
pub(crate) fn finish_reason(stop_reason: &str, client_tool_calls: bool) -> FinishReason {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" if client_tool_calls => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        // end_turn, stop_sequence, pause_turn and anything new.
        _ => FinishReason::Stop,
    }
}
